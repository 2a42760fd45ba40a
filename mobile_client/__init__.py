"""The device runtime: frame sources, the controller and its estimators, the gRPC client, sinks."""

from mobile_client.controller import Controller, Decision, ModeCosts, predict_latencies
from mobile_client.edge_client import EdgeClient, EdgeUnavailable
from mobile_client.estimators import BandwidthEstimator, LinkEstimator, RttEstimator
from mobile_client.runtime import DeviceRuntime, RuntimeOptions
from mobile_client.sources import Frame, SourceError, open_source

__all__ = [
    "BandwidthEstimator",
    "Controller",
    "Decision",
    "DeviceRuntime",
    "EdgeClient",
    "EdgeUnavailable",
    "Frame",
    "LinkEstimator",
    "ModeCosts",
    "RttEstimator",
    "RuntimeOptions",
    "SourceError",
    "open_source",
    "predict_latencies",
]

"""The device: frame sources, the session driver, the controller and its parts, the gRPC client, runtimes, sinks."""

from mobile_client.controller import Controller
from mobile_client.decision import Decision
from mobile_client.costs import ModeCosts, predict_latencies
from mobile_client.edge_client import EdgeClient
from mobile_client.errors import EdgeUnavailable
from mobile_client.session import Session
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
    "Session",
    "SourceError",
    "open_source",
    "predict_latencies",
]

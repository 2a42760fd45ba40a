"""The edge gRPC server: model registry, request validation, health, measured latencies."""

from edge_server.registry import ModelRegistry, ServedModel
from edge_server.server import DEFAULT_MAX_MESSAGE_BYTES, serve
from edge_server.service import SplitEdgeServicer

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "ModelRegistry", "ServedModel", "SplitEdgeServicer", "serve"]

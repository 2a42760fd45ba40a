"""The edge gRPC server: validation at the door, auth (TLS, tokens), model registry, scheduling and
batching, limits, health, metrics."""

from edge_server.registry import ModelRegistry, ServedModel
from edge_server.scheduler import BatchOptions
from edge_server.server import DEFAULT_MAX_MESSAGE_BYTES, EdgeServer, ServerOptions, serve
from edge_server.service import Limits, SplitEdgeServicer

__all__ = ["BatchOptions", "DEFAULT_MAX_MESSAGE_BYTES", "EdgeServer", "Limits", "ModelRegistry", "ServedModel", "ServerOptions",
           "SplitEdgeServicer", "serve"]

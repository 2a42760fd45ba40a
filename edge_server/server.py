"""Assemble and run the edge server: the SplitEdge service plus grpc.health.v1."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from protos import splitedge_pb2 as pb
from protos import splitedge_pb2_grpc as pb_grpc

from edge_server.registry import ModelRegistry
from edge_server.service import SplitEdgeServicer

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "serve"]

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SplitEdge"].full_name
log = logging.getLogger("splitedge.server")


async def serve(registry: ModelRegistry, host: str, port: int,
                max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, ready=None) -> None:
    """Serve until SIGINT/SIGTERM. `ready(port)` is called once listening (port 0 = any free)."""
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    server = grpc.aio.server(options=options)
    servicer = SplitEdgeServicer(registry, max_message_bytes)
    pb_grpc.add_SplitEdgeServicer_to_server(servicer, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(bound)
    await stop.wait()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace=1.0)
    servicer.close()

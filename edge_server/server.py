"""Assemble and run the edge server: the SplitEdge service, grpc.health.v1, TLS, limits, metrics.

Health reports ``SERVING`` for ``""`` and ``splitedge.v1.SplitEdge`` only when every model asked
for was loaded (one per model too: ``splitedge.v1.SplitEdge/MODEL``); a model that failed to load
is ``NOT_SERVING`` and so is the server as a whole. On SIGTERM or SIGINT the server drains:
health turns ``NOT_SERVING``, new calls are refused (``UNAVAILABLE``), each stream stops reading
and ends after the frames it holds, frames in flight are answered (up to ``drain_s``), then it stops.

Keepalive: the server pings a quiet connection every ``keepalive_s`` and drops it when the ping
is not answered in 10 s (a device that vanished without closing); a connection with no call
for ``connection_idle_s`` is closed; clients may ping every 10 s or slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from edge_server.auth import TokenTable, check_listen, server_credentials
from edge_server.metrics import Metrics, log_event
from edge_server.registry import ModelRegistry
from edge_server.scheduler import BatchOptions
from edge_server.service import SERVICE_NAME, Limits, SplitEdgeServicer

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "EdgeServer", "ServerOptions", "serve"]

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
log = logging.getLogger("splitedge.server")
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 50051
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None
    token_file: str | None = None
    insecure: bool = False
    limits: Limits = Limits()
    batching: BatchOptions = BatchOptions()
    keepalive_s: float = 30.0
    connection_idle_s: float = 600.0
    drain_s: float = 10.0
    metrics_port: int | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def grpc_options(self) -> list[tuple[str, int]]:
        return [("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.keepalive_time_ms", int(self.keepalive_s * 1000)),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.max_ping_strikes", 3),
                ("grpc.max_connection_idle_ms", int(self.connection_idle_s * 1000))]


class EdgeServer:
    """One server: ``await start()`` (returns the bound port), then ``await stop()`` drains and stops."""

    def __init__(self, registry: ModelRegistry, options: ServerOptions = ServerOptions(),
                 failed: dict[str, str] | None = None) -> None:
        check_listen(options.host, options.tls, options.insecure)
        if options.tls and not options.tls_key:
            raise ValueError("--tls-cert needs --tls-key")
        if options.client_ca and not options.tls:
            raise ValueError("--client-ca needs --tls-cert and --tls-key")
        self.options = options
        self.failed = dict(failed or {})  # model name -> why it did not load
        self.metrics = Metrics()
        tokens = TokenTable.read(options.token_file) if options.token_file else None
        self.servicer = SplitEdgeServicer(registry, options.max_message_bytes, options.limits, tokens, self.metrics,
                                          options.batching)
        self.health = HealthServicer()
        self._server = grpc.aio.server(options=options.grpc_options())
        self._server.add_generic_rpc_handlers((self.servicer.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.port = 0
        self.metrics_port: int | None = None

    async def start(self) -> int:
        o = self.options
        address = f"{o.host}:{o.port}"
        if o.tls:
            self.port = self._server.add_secure_port(address, server_credentials(o.tls_cert, o.tls_key, o.client_ca))
        else:
            self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        await self._server.start()
        ok = not self.failed
        for name in ("", SERVICE_NAME):
            await self.health.set(name, SERVING if ok else NOT_SERVING)
        for name in self.servicer.registry.names:
            await self.health.set(f"{SERVICE_NAME}/{name}", SERVING)
        for name in self.failed:
            await self.health.set(f"{SERVICE_NAME}/{name}", NOT_SERVING)
        if o.metrics_port is not None:
            self.metrics_port = self.metrics.serve(o.host, o.metrics_port)
        log_event("listening", host=o.host, port=self.port, tls=o.tls, mutual_tls=bool(o.client_ca),
                  tokens=bool(o.token_file), metrics_port=self.metrics_port, failed_models=sorted(self.failed))
        return self.port

    async def stop(self) -> None:
        """Drain (health NOT_SERVING, refuse new calls, answer frames in flight), then stop."""
        await self.health.enter_graceful_shutdown()
        log_event("draining", streams=self.servicer.streams_open, timeout_s=self.options.drain_s)
        drained = await self.servicer.drain(self.options.drain_s)
        await self._server.stop(grace=1.0)
        self.servicer.close()
        log_event("stopped", drained=drained)


async def serve(registry: ModelRegistry, options: ServerOptions, ready=None, failed: dict[str, str] | None = None,
                beside: Callable[[EdgeServer], AbstractAsyncContextManager[Any]] | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then drain and stop. `ready(port, metrics_port)` is called once listening
    (port 0 = any free; metrics_port None without metrics). `beside(server)`: what runs with the server, entered
    after `ready` and left before the drain (the browser page, `edge_server.web.serve_with_web`)."""
    server = EdgeServer(registry, options, failed)
    port = await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(port, server.metrics_port)
    async with beside(server) if beside is not None else contextlib.nullcontext():
        await stop.wait()
    await server.stop()

"""Test helpers for the edge server: a real grpc.aio server in this process, certificates, memory readings."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path

from edge_server import EdgeServer, ModelRegistry, ServedModel, ServerOptions
from edge_server.certs import make_certs  # noqa: F401  (the tests' certificates)
from split.recipes import build, get_recipe

MODEL = "ssdlite320_mobilenet_v3_large"
_BUILT: dict[str, ServedModel] = {}


def served_model(name: str = MODEL) -> ServedModel:
    """One ServedModel per recipe per test process (building one takes seconds); not warmed up."""
    if name not in _BUILT:
        model, source = build(name)
        _BUILT[name] = ServedModel(model, source, get_recipe(name).builder)
    return _BUILT[name]


class InProcessServer:
    """An EdgeServer on its own event loop in a thread, on 127.0.0.1 and a free port."""

    def __init__(self, options: ServerOptions = ServerOptions(), models: list[ServedModel] | None = None,
                 failed: dict[str, str] | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-edge-server", daemon=True)
        self._thread.start()
        options = replace(options, host="127.0.0.1", port=0)
        registry = ModelRegistry(models if models is not None else [served_model()])

        async def start() -> EdgeServer:
            server = EdgeServer(registry, options, failed)
            await server.start()
            return server

        self.server = self.run(start())
        self.port = self.server.port
        self.target = f"127.0.0.1:{self.port}"

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_running():
            self.run(self.server.stop())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def __enter__(self) -> InProcessServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def rss_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    """A process's resident memory (VmRSS) or its peak (VmHWM), MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux: write 5 to clear_refs); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False

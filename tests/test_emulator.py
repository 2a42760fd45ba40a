"""The user-space link emulator: real sockets on 127.0.0.1 shaped by a Link.

Acceptance criterion: the time to move a known number of bytes through the
emulator matches the Link model's prediction within 10%.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from simulators.cli import main as cli_main
from simulators.emulator import LinkEmulator, time_uploads
from simulators.links import Link

REPO = Path(__file__).resolve().parents[1]
LOCAL = "127.0.0.1"


# -- tiny servers -------------------------------------------------------------


async def start_echo() -> tuple[asyncio.base_events.Server, int]:
    """Echoes everything; on EOF it half-closes back, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, LOCAL, 0)
    return server, server.sockets[0].getsockname()[1]


# -- acceptance: emulator vs model (the figures: scripts/emulator_agreement.py) ---


@pytest.mark.parametrize("spec", ["const:2", "steps:0.3@4,0.3@1"])
def test_upload_time_matches_link_model(spec: str) -> None:
    nbytes, delay_ms = 250_000, 20.0
    timing = asyncio.run(time_uploads(spec, nbytes, delay_ms))
    print(f"emulator {spec}, {delay_ms:g} ms delay, {nbytes} B: measured {timing.measured_s[0] * 1e3:.1f} ms, "
          f"Link model {timing.predicted_s * 1e3:.1f} ms ({timing.error:+.1%})")
    assert abs(timing.error) < 0.10


def test_upload_over_real_mahimahi_trace_matches_model() -> None:
    data = Path(os.environ.get("SPLITEDGE_DATA", REPO.parent / "shared" / "data"))
    path = data / "traces" / "mahimahi" / "Verizon-LTE-short.up"
    if not path.is_file():
        pytest.skip(f"real mahimahi trace not found at {path} (set SPLITEDGE_DATA)")
    timing = asyncio.run(time_uploads(f"mahimahi:{path}", 250_000, 10.0))
    print(f"emulator {path.name}: measured {timing.measured_s[0] * 1e3:.1f} ms, "
          f"Link model {timing.predicted_s * 1e3:.1f} ms ({timing.error:+.1%})")
    assert abs(timing.error) < 0.10


def test_concurrent_connections_share_the_bottleneck() -> None:
    n_conns, each = 4, 60_000
    timing = asyncio.run(time_uploads("const:2", each, 10.0, connections=n_conns))
    times = timing.measured_s
    print(f"{n_conns} concurrent uploads of {each} B: last done {max(times) * 1e3:.1f} ms, "
          f"model {timing.predicted_s * 1e3:.1f} ms")
    assert max(times) == pytest.approx(timing.predicted_s, rel=0.10)
    assert min(times) < 0.8 * max(times)  # one bottleneck, not one per connection


# -- correctness of the byte stream -------------------------------------------


def test_echo_with_half_close_preserves_bytes_and_order() -> None:
    payload = os.urandom(200_000)

    async def run() -> tuple[bytes, float, float]:
        server, port = await start_echo()
        up, down = Link("const:8", delay_ms=5, jitter_ms=2, seed=1), Link("const:16", delay_ms=5)
        emu = LinkEmulator((LOCAL, 0), (LOCAL, port), up, down)
        async with server, emu:
            reader, writer = await asyncio.open_connection(LOCAL, emu.bound_port)
            t0 = time.monotonic()
            writer.write(payload)
            writer.write_eof()
            got = await asyncio.wait_for(reader.read(), timeout=10)  # until the echo's EOF
            elapsed = time.monotonic() - t0
            writer.close()
        lower = Link("const:8", delay_ms=5).send(len(payload), 0.0).arrival_s + 0.005
        return got, elapsed, lower

    got, elapsed, lower = asyncio.run(run())
    assert got == payload
    assert elapsed >= 0.95 * lower  # shaped both ways, never faster than the uplink alone


def test_the_upstream_name_is_resolved_once_and_again_when_its_address_stops_answering() -> None:
    """The upstream's name is looked up for the first connection only (a container network's DNS
    stalled every connect in compose-test); when that address refuses, the name is looked up again."""

    async def echo_once(port: int) -> bytes:
        reader, writer = await asyncio.open_connection(LOCAL, port)
        writer.write(b"ping")
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
        return got

    async def run() -> list:
        server, port = await start_echo()
        emu = LinkEmulator((LOCAL, 0), ("localhost", port), Link(None), Link(None))
        seen = []
        async with server, emu:
            seen.append(await echo_once(emu.bound_port))
            seen.append(emu._resolved)  # the name's address, kept
            emu._resolved = "127.0.0.2"  # an address where nothing listens on that port
            seen.append(await echo_once(emu.bound_port))
            seen.append(emu._resolved)  # looked up again after the refusal
        return seen

    first, kept, second, again = asyncio.run(run())
    assert first == second == b"ping"
    assert kept in ("127.0.0.1", "::1") and again in ("127.0.0.1", "::1")


def test_unreachable_upstream_closes_client() -> None:
    async def run() -> bytes:
        with socket.socket() as s:  # a port nobody listens on
            s.bind((LOCAL, 0))
            dead = s.getsockname()[1]
        emu = LinkEmulator((LOCAL, 0), (LOCAL, dead), Link("const:10"), Link(None))
        async with emu:
            reader, writer = await asyncio.open_connection(LOCAL, emu.bound_port)
            try:
                data = await asyncio.wait_for(reader.read(), timeout=5)
            except ConnectionResetError:
                data = b""
            writer.close()
            return data

    assert asyncio.run(run()) == b""


def test_stop_tears_down_open_connections_promptly() -> None:
    async def run() -> float:
        server, port = await start_echo()
        emu = LinkEmulator((LOCAL, 0), (LOCAL, port), Link("const:1", delay_ms=50), Link(None, delay_ms=50))
        async with server:
            await emu.start()
            reader, writer = await asyncio.open_connection(LOCAL, emu.bound_port)
            writer.write(bytes(500_000))  # 4 s worth of data queued in the emulator
            await asyncio.sleep(0.2)
            assert emu.connections == 1
            t0 = time.monotonic()
            await emu.stop()
            took = time.monotonic() - t0
            await emu.stop()  # idempotent
            writer.close()
            return took

    assert asyncio.run(run()) < 1.0


# -- the CLI ------------------------------------------------------------------


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


def test_cli_subprocess_emulates_and_exits_on_sigterm() -> None:
    upstream = socketserver.ThreadingTCPServer((LOCAL, 0), _Echo)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    code = "import sys; from simulators.cli import main; sys.exit(main('emulate', sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--trace", "const:20", "--delay-ms", "5", "--listen", f"{LOCAL}:0",
         "--upstream", f"{LOCAL}:{upstream.server_address[1]}", "--loss", "bernoulli:0.01"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = _readline_with_timeout(proc, 20)
        assert line.startswith("emulating on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        with socket.create_connection((LOCAL, port), timeout=5) as s:
            s.sendall(b"hello through the link")
            got = b""
            while len(got) < 22:
                got += s.recv(100)
        assert got == b"hello through the link"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        upstream.shutdown()
        upstream.server_close()


def _readline_with_timeout(proc: subprocess.Popen[str], timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    if not result:
        raise AssertionError(f"emulator printed nothing in {timeout} s")
    return result[0].strip()


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--trace", "const:nope", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1"], "rate must be a number"),
        (["--trace", "mahimahi:/no/such", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1"], "/no/such"),
        (["--trace", "const:1", "--loss", "bernoulli:2", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1"],
         "Bernoulli"),
        (["--trace", "const:1", "--listen", "localhost", "--upstream", "127.0.0.1:1"], "HOST:PORT"),
    ],
)
def test_cli_bad_spec_is_one_line_error(argv: list[str], match: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main("emulate", argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("splitedge emulate: error: ")
    assert match in err


def test_cli_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main("teleport", []) == 2
    assert "unknown command" in capsys.readouterr().err

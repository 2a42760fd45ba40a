"""User-space link emulator: a TCP proxy that makes a real connection behave
like a :class:`~simulators.links.Link`.

There is no netem/mahimahi in the containers this runs in, so the emulator
sits between the client and the real server as a plain asyncio proxy::

    client ──▶ [listen] ── up Link ──▶ upstream server
    client ◀── [listen] ◀── down Link ── upstream server

How it shapes, and why:

* Every chunk read from a socket is cut into packets of ``link.mss`` bytes and
  each packet is passed to ``link.send(size, t)``, with ``t`` the emulator's
  clock (seconds since :meth:`LinkEmulator.start`, which is also time 0 of the
  trace).  The packet is written to the other side at its modelled arrival
  time.  Packets whose arrivals fall within ``coalesce_ms`` of each other are
  written together, because asyncio's timers are only ~1 ms precise anyway
  and a write per packet would cost more CPU than the link is worth at
  100 Mbit/s.  Nothing is ever written before its arrival time, and each
  direction of a connection is written strictly in order.
* One ``Link`` per direction is shared by all connections, as a real cell's
  bottleneck is: concurrent connections queue behind each other.
* Flow control: a direction stops reading from its source while more than
  ``max_buffer_bytes`` are waiting to be delivered, so a fast sender is held
  back by TCP (its socket buffers fill) instead of by unbounded proxy memory.
  The bound is large (4 MiB) so it never throttles below the modelled rate.
* Loss in the model shows up as retransmission delay and used capacity (the
  payload is TCP), never as dropped bytes: the proxy is a reliable pipe.
* Half-close is forwarded: EOF from one side becomes ``write_eof`` on the
  other once all earlier data was delivered; the connection is closed when
  both directions have finished, or torn down when either side resets.
  Connection setup is not delayed (the proxy accepts locally).

How well it follows the model is measured, not assumed: :func:`time_uploads`
moves a known payload through a real emulator on 127.0.0.1 and times it
against the Link model's answer for the same exchange
(``scripts/emulator_agreement.py`` writes ``results/emulator/agreement.json``
with it; ``tests/test_emulator.py`` asserts the agreement with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import struct
import sys
import time
from dataclasses import dataclass
from typing import Callable, Union

from .links import Link, parse_loss
from .trace_files import load_trace

__all__ = ["LinkEmulator", "run_emulator", "make_links", "parse_hostport", "UploadTiming", "time_uploads"]

HostPort = tuple[str, int]
_READ_SIZE = 64 * 1024
log = logging.getLogger("splitedge.emulator")


def parse_hostport(value: Union[str, HostPort]) -> HostPort:
    """``"HOST:PORT"`` (or a tuple) -> ``(host, port)``; ValueError otherwise."""
    if isinstance(value, tuple):
        host, port = value
        return str(host), int(port)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


class _Direction:
    """One direction of one proxied connection: a reader that stamps data with
    its modelled arrival time and a writer that releases it on time."""

    def __init__(self, link: Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                 clock: Callable[[], float], max_buffer_bytes: int, coalesce_s: float) -> None:
        self.link = link
        self.src = src
        self.dst = dst
        self.clock = clock
        self.max_buffer = max_buffer_bytes
        self.coalesce_s = coalesce_s
        self.queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        self.buffered = 0
        self.room = asyncio.Event()
        self.room.set()
        self.last_arrival = 0.0
        self.total = 0  # bytes read from the source so far

    async def read_loop(self) -> None:
        while True:
            data = await self.src.read(_READ_SIZE)
            now = self.clock()
            self.total += len(data)
            if not data:
                # The FIN travels the link too: after the data, one delay later.
                fin_at = max(self.last_arrival, now + self.link.delay_s)
                self.queue.put_nowait((fin_at, None))
                return
            self._schedule(data, now)
            self.buffered += len(data)
            if self.buffered > self.max_buffer:
                self.room.clear()
                await self.room.wait()

    def _schedule(self, data: bytes, now: float) -> None:
        mss = self.link.mss
        group_start = 0
        group_first = group_last = None
        for off in range(0, len(data), mss):
            size = min(mss, len(data) - off)
            arrival = self.link.send(size, now).arrival_s
            if group_first is not None and arrival - group_first > self.coalesce_s:
                self.queue.put_nowait((group_last, data[group_start:off]))
                group_start, group_first = off, None
            if group_first is None:
                group_first = arrival
            group_last = arrival
        self.queue.put_nowait((group_last, data[group_start:]))
        self.last_arrival = max(self.last_arrival, group_last)

    async def write_loop(self) -> None:
        while True:
            arrival, piece = await self.queue.get()
            wait = arrival - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            if piece is None:
                if self.dst.can_write_eof():
                    self.dst.write_eof()
                return
            self.dst.write(piece)
            await self.dst.drain()
            self.buffered -= len(piece)
            if self.buffered <= self.max_buffer:
                self.room.set()


class LinkEmulator:
    """Asyncio TCP proxy shaping ``listen -> upstream`` with ``up`` and
    ``upstream -> listen`` with ``down`` (see module docstring)."""

    def __init__(self, listen: Union[str, HostPort], upstream: Union[str, HostPort], up: Link, down: Link,
                 *, max_buffer_bytes: int = 4 * 1024 * 1024, coalesce_ms: float = 1.0) -> None:
        self.listen = parse_hostport(listen)
        self.upstream = parse_hostport(upstream)
        self.up = up
        self.down = down
        self.max_buffer_bytes = max_buffer_bytes
        self.coalesce_s = coalesce_ms / 1000.0
        self._server: asyncio.base_events.Server | None = None
        self._t0 = 0.0
        self._clock_started = False
        self._conns: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._resolved: str | None = None  # the upstream's address, from the last connection by name

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful with ``listen`` port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("emulator is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self._conns)

    def now(self) -> float:
        """Emulator clock, the time axis of the traces: seconds since the first connection.

        Starting the trace with the first connection (not with `start`) means a client that
        takes a while to start up still meets the trace from its beginning."""
        return time.monotonic() - self._t0

    async def start(self) -> None:
        self.up.reset()
        self.down.reset()
        self._t0 = time.monotonic()
        self._clock_started = False
        self._server = await asyncio.start_server(self._on_connect, *self.listen)

    async def stop(self) -> None:
        """Stop listening and tear down live connections; idempotent."""
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> "LinkEmulator":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _on_connect(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if not self._clock_started:
            self._clock_started = True
            self.up.reset()
            self.down.reset()
            self._t0 = time.monotonic()
        self._conns.add(task)
        try:
            await self._proxy(c_reader, c_writer)
        except asyncio.CancelledError:
            # stop() cancels live connections after _proxy tore them down;
            # ending "cancelled" would make asyncio's stream callback log an
            # error for each one.
            pass
        finally:
            self._conns.discard(task)

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new upstream connection, to the address the last one by name resolved to.

        Why: resolving the name for every connection put the container network's DNS on every
        connect. In `make compose-test`, after the health check had resolved `edge` in 3 ms, each of
        the device's connects waited 18-30 s for it and timed out. The address is looked up again
        when it stops answering (a restarted upstream may have another)."""
        host, port = self.upstream
        if self._resolved is not None:
            try:
                return await asyncio.open_connection(self._resolved, port)
            except OSError:
                self._resolved = None
        reader, writer = await asyncio.open_connection(host, port)
        peer = writer.get_extra_info("peername")
        if peer:
            self._resolved = str(peer[0])
        return reader, writer

    async def _proxy(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        """Pipe one client connection to a new upstream one. Each connection is logged when it opens and
        when it ends, with the bytes each way (`splitedge emulate` prints them): a client that cannot get
        through then shows which hop held it (the upstream connect, or the bytes that never came back)."""
        n, peer, t0 = next(self._ids), c_writer.get_extra_info("peername"), time.monotonic()
        host, port = self.upstream
        try:
            u_reader, u_writer = await self._connect_upstream()
        except OSError as exc:
            log.warning("connection %d from %s: cannot reach the upstream %s:%d (%s); closed", n, _peer(peer), host,
                        port, exc.strerror or exc)
            c_writer.transport.abort()
            return
        log.info("connection %d from %s: upstream %s:%d connected in %.0f ms", n, _peer(peer), host, port,
                 (time.monotonic() - t0) * 1e3)
        dirs = (
            _Direction(self.up, c_reader, u_writer, self.now, self.max_buffer_bytes, self.coalesce_s),
            _Direction(self.down, u_reader, c_writer, self.now, self.max_buffer_bytes, self.coalesce_s),
        )
        tasks = [asyncio.create_task(coro) for d in dirs for coro in (d.read_loop(), d.write_loop())]
        clean = False
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            clean = all(t.done() and not t.cancelled() and t.exception() is None for t in tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in (c_writer, u_writer):
                if clean:
                    w.close()
                else:
                    w.transport.abort()
            for w in (c_writer, u_writer):
                with contextlib.suppress(Exception):
                    await w.wait_closed()
            log.info("connection %d closed after %.1f s (%s): %d bytes up, %d down", n, time.monotonic() - t0,
                     "clean" if clean else "reset", dirs[0].total, dirs[1].total)


def _peer(peer: object) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)


def make_links(trace_spec: str, delay_ms: float = 0.0, loss: str | None = None,
               down_trace_spec: str | None = None, jitter_ms: float = 0.0, seed: int = 0) -> tuple[Link, Link]:
    """The (up, down) pair the CLI emulates: the uplink follows the trace,
    the downlink its own trace or, by default, no rate limit (cellular
    downlinks are much faster than uplinks and carry only results); both
    get the delay and the loss (with independent random streams).  Raises
    ``ValueError`` (incl. ``TraceError``) on a bad spec, before any socket
    is opened."""
    up = Link(load_trace(trace_spec), delay_ms=delay_ms, jitter_ms=jitter_ms,
              loss=parse_loss(loss, seed=seed + 1), seed=seed)
    down_trace = load_trace(down_trace_spec) if down_trace_spec else None
    down = Link(down_trace, delay_ms=delay_ms, jitter_ms=jitter_ms,
                loss=parse_loss(loss, seed=seed + 3), seed=seed + 2)
    return up, down


def run_emulator(trace_spec: str, listen: Union[str, HostPort], upstream: Union[str, HostPort],
                 delay_ms: float = 0.0, loss: str | None = None, down_trace_spec: str | None = None,
                 *, jitter_ms: float = 0.0, seed: int = 0) -> None:
    """Blocking entry point for a subprocess: prints ``emulating on HOST:PORT``
    (flushed) once listening, so a parent can wait for that line, then a line as each connection
    opens and ends (`LinkEmulator._proxy`), and returns
    cleanly on SIGTERM or SIGINT.  Bad specs raise ``ValueError`` first."""
    up, down = make_links(trace_spec, delay_ms, loss, down_trace_spec, jitter_ms, seed)
    emulator = LinkEmulator(listen, upstream, up, down)
    handler = logging.StreamHandler(sys.stdout)  # with the "emulating on" line, in order
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    asyncio.run(_serve(emulator))


async def _serve(emulator: LinkEmulator) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await emulator.start()
    try:
        print(f"emulating on {emulator.listen[0]}:{emulator.bound_port}", flush=True)
        await stop.wait()
    finally:
        await emulator.stop()
        sys.stdout.flush()


# -- agreement with the Link model ---------------------------------------------

_LOOPBACK = "127.0.0.1"
_ACK = b"ok"


@dataclass(frozen=True)
class UploadTiming:
    """Uploads through the emulator, timed, beside the Link model's answer for the same exchange."""

    measured_s: tuple[float, ...]  # each connection's time from its first byte written to the sink's ack
    predicted_s: float  # the model's time for the last of them (all uploads queue on the one uplink)

    @property
    def error(self) -> float:
        """Relative error of the slowest measured upload against the model (+: the emulator was slower)."""
        return max(self.measured_s) / self.predicted_s - 1


async def time_uploads(trace_spec: str, nbytes: int, delay_ms: float, connections: int = 1) -> UploadTiming:
    """Send ``nbytes`` on each of ``connections`` concurrent connections through an emulator of
    ``trace_spec`` (downlink: no rate limit; both ways ``delay_ms``) to a sink that answers a 2-byte
    ack, all on 127.0.0.1, and time each until its ack; the model's answer: ``connections - 1``
    payloads ahead on the uplink, then this one, then the ack on the downlink."""
    if nbytes < 4 or connections < 1:
        raise ValueError(f"need nbytes >= 4 and connections >= 1, got {nbytes}, {connections}")
    sink = await asyncio.start_server(_sink, _LOOPBACK, 0)
    emulator = LinkEmulator((_LOOPBACK, 0), (_LOOPBACK, sink.sockets[0].getsockname()[1]),
                            Link(trace_spec, delay_ms=delay_ms), Link(None, delay_ms=delay_ms))
    async with sink, emulator:
        t_send = emulator.now()
        measured = await asyncio.gather(*(_timed_upload(emulator.bound_port, nbytes) for _ in range(connections)))
    up, down = Link(trace_spec, delay_ms=delay_ms), Link(None, delay_ms=delay_ms)
    for _ in range(connections - 1):
        up.send(nbytes, t_send)
    at_sink = up.send(nbytes, t_send).arrival_s
    return UploadTiming(tuple(measured), down.send(len(_ACK), at_sink).arrival_s - t_send)


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads a 4-byte length then that many bytes, answers the ack, waits for EOF."""
    try:
        (n,) = struct.unpack("!I", await reader.readexactly(4))
        await reader.readexactly(n)
        writer.write(_ACK)
        await writer.drain()
        await reader.read()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _timed_upload(port: int, nbytes: int) -> float:
    """Send a length-prefixed payload of ``nbytes`` in all to the emulator and wait for the ack; seconds."""
    reader, writer = await asyncio.open_connection(_LOOPBACK, port)
    t0 = time.monotonic()
    writer.write(struct.pack("!I", nbytes - 4) + bytes(nbytes - 4))
    await writer.drain()
    if await reader.readexactly(len(_ACK)) != _ACK:
        raise RuntimeError("the sink behind the emulator answered something other than its ack")
    elapsed = time.monotonic() - t0
    writer.close()
    await writer.wait_closed()
    return elapsed

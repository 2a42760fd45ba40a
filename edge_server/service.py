"""The gRPC servicer: validation at the door, compute in the scheduler, limits on what a client can hold.

A stream reads frames ahead of its results: up to ``max_stream_in_flight`` of its frames are
in flight at once, so a device can keep the edge busy across the network's round trip, and
frames from every stream meet in :class:`edge_server.scheduler.BatchScheduler`, which batches
them per model on a pool of workers. Batches finish in any order; each stream answers in the
order it read, so a frame's ``Result.queue_ms`` is its whole wait on the edge: in the
scheduler's queue and behind its own stream's earlier frames (its arrival to its answer, less
``server_ms``, the compute of the batch it was in). The asyncio loop stays free for health
checks and `Describe` while frames compute. A link probe (``Frame.probe``) is answered as soon
as it is read, with nothing computed, but in stream order: it never overtakes the results of
its stream's earlier frames (the device probes with nothing of its own in flight, and then
times its uplink, not this server).

What a client can make the server hold is bounded:

* ``Infer`` requests arrive as bytes and are parsed here, one at a time: a message that does not
  parse is an ``INVALID_ARGUMENT`` result for that frame (its ``frame_id`` read as far as the
  bytes allow) and the stream goes on; every parsed frame is checked by
  :func:`edge_server.validation.check_payload` before it is queued.
* A stream reads its next frame only while fewer than ``max_stream_in_flight`` of its frames are
  unanswered, so a client that sends and never reads is held back by HTTP/2 flow control (the
  results it does not read fill its window; then the server stops reading from it).
* ``max_streams`` streams at once and ``max_in_flight`` frames queued or computing, server-wide;
  beyond them ``RESOURCE_EXHAUSTED``, naming the limit (a whole stream; one frame).
* A stream that sends nothing for ``stream_idle_s`` with nothing in flight is closed
  (``UNAVAILABLE``); once the server drains every stream stops reading and ends after answering
  the frames it holds.

An unexpected failure is ``INTERNAL`` with a reference into the server's log, never the
exception's text.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator

import grpc

from protos import splitedge_pb2 as pb
from split import PayloadMismatch
from split.adapters import Outputs
from split.detections import detection_rows

from edge_server.auth import OPEN, Grant, TokenTable
from edge_server.metrics import Metrics, log_event
from edge_server.registry import ModelRegistry
from edge_server.scheduler import BatchOptions, BatchScheduler
from edge_server.validation import ModelLimits, check_payload, frame_id_of

__all__ = ["Limits", "SplitEdgeServicer", "VERSION"]

# The protocol's revision, in DescribeResponse.version:
#   3: a Payload carries no image_size or batch_size (the edge derives them from original_size), a Tensor
#      no dtype, and only the 8-bit codec sends a scale and zero point;
#   2: the entropy codec's bytes are constriction's ANS; ModelInfo.bottleneck_digest.
VERSION = "3"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SplitEdge"].full_name
log = logging.getLogger("splitedge.server")
Code = grpc.StatusCode


@dataclass(frozen=True)
class Limits:
    max_streams: int = 64
    max_in_flight: int = 32
    stream_idle_s: float = 300.0
    max_stream_in_flight: int = 4  # a stream's frames read and not yet answered


def _detections(out: Outputs, family: str) -> list[pb.Detection]:
    """The wire form of `split.detections.detection_rows`."""
    return [_detection(*row) for row in detection_rows(out, family)]


def _detection(box: list[float] | None, label: int, score: float) -> pb.Detection:
    if box is None:  # a classifier's label
        return pb.Detection(label=label, score=score)
    x1, y1, x2, y2 = box
    return pb.Detection(x1=x1, y1=y1, x2=x2, y2=y2, label=label, score=score)


@dataclass
class _Pending:
    """A frame read from a stream and not yet answered. ``kind``: "frame" (computed: its queue_ms
    and metrics are set when it is answered), "probe", or "error" (its result is final)."""

    arrived: float
    result: asyncio.Future  # of a pb.Result; done at once for probes and refused frames
    model: str
    kind: str


class _Window:
    """One stream reading ahead of its results: at most ``max_stream_in_flight`` frames read and not
    yet answered, answered in the order read.

    :meth:`step` waits for whichever comes first (the next request, the oldest frame's result, the
    server draining, ``stream_idle_s`` with nothing in flight) and returns the bytes of a request
    it read, else None. Once reading has ended (``ended`` says why) the frames held are still answered."""

    def __init__(self, requests: AsyncIterator[bytes], draining: asyncio.Event, limits: Limits) -> None:
        self._reader = requests.__aiter__()
        self._drain = asyncio.ensure_future(draining.wait())
        self._read: asyncio.Future | None = None
        self._pending: deque[_Pending] = deque()
        self._bound, self._idle_s = limits.max_stream_in_flight, limits.stream_idle_s
        self._quiet_since = time.monotonic()
        self.ended = ""  # why reading stopped: "client closed", "draining" or "idle"

    @property
    def finished(self) -> bool:
        return bool(self.ended) and not self._pending

    def add(self, pending: _Pending) -> None:
        self._pending.append(pending)

    def pop_answered(self) -> _Pending | None:
        """The oldest frame, if its result is ready (a later frame's never goes first)."""
        if not self._pending or not self._pending[0].result.done():
            return None
        self._quiet_since = time.monotonic()
        return self._pending.popleft()

    async def step(self) -> bytes | None:
        if not self.ended and self._drain.done():
            self.ended = "draining"
        if self.finished:
            return None
        if not self.ended and self._read is None and len(self._pending) < self._bound:
            self._read = asyncio.ensure_future(self._reader.__anext__())
            self._read.add_done_callback(_retrieve)  # a read left behind (idle, draining, cancelled) ends quietly
        waits = set() if self.ended else {f for f in (self._read, self._drain) if f is not None}
        if self._pending:
            waits.add(self._pending[0].result)
        idle_left = None if self._pending else self._quiet_since + self._idle_s - time.monotonic()
        done, _ = await asyncio.wait(waits, timeout=idle_left, return_when=asyncio.FIRST_COMPLETED)
        if self._read is not None and self._read in done:
            raw, self._read = _read_result(self._read), None
            self._quiet_since = time.monotonic()
            if raw is None:
                self.ended = "client closed"
            return raw
        if not done and not self._pending:
            self.ended = "idle"
        return None

    def close(self) -> None:
        """The call is over: stop reading, and drop the frames still queued (their client is gone)."""
        self._drain.cancel()
        if self._read is not None and not self._read.done():
            self._read.cancel()
        for pending in self._pending:
            pending.result.cancel()


class _Refused(Exception):
    """A frame that gets an error result: its code and the message naming why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class SplitEdgeServicer:
    def __init__(self, registry: ModelRegistry, max_message_bytes: int, limits: Limits = Limits(),
                 tokens: TokenTable | None = None, metrics: Metrics | None = None,
                 batching: BatchOptions = BatchOptions()) -> None:
        self.registry = registry
        self.max_message_bytes = max_message_bytes
        self.limits = limits
        self.tokens = tokens
        self.metrics = metrics or Metrics()
        self._model_limits = {s.model.name: ModelLimits.of(s.model) for s in registry}
        self.scheduler = BatchScheduler(batching, self.metrics)
        self._streams = 0
        self._in_flight = 0
        self._draining = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's handlers. ``Infer`` takes raw bytes (no request deserializer), so that a
        message that does not parse fails its frame and not the stream."""
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Infer": grpc.stream_stream_rpc_method_handler(
                self.Infer, request_deserializer=None, response_serializer=pb.Result.SerializeToString),
            "Describe": grpc.unary_unary_rpc_method_handler(
                self.Describe, request_deserializer=pb.DescribeRequest.FromString,
                response_serializer=pb.DescribeResponse.SerializeToString),
        })

    # -- calls -------------------------------------------------------------------------------
    async def Describe(self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext) -> pb.DescribeResponse:
        grant = await self._admit(context)
        models = []
        for served in self.registry:
            if not grant.allows(served.model.name):
                continue
            d = served.model.describe()
            models.append(pb.ModelInfo(
                name=served.model.name, family=d["family"], architecture=served.architecture,
                split_point=d["split_point"], codec=d["codec"], bottleneck_channels=d["bottleneck_channels"],
                weights=served.weights, latency_ms=served.medians(), bottleneck_digest=d["bottleneck_digest"]))
        return pb.DescribeResponse(models=models, max_message_bytes=self.max_message_bytes, version=VERSION)

    async def Infer(self, request_iterator: AsyncIterator[bytes],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Result]:
        grant = await self._admit(context)
        if self._streams >= self.limits.max_streams:
            await self._refuse(context, Code.RESOURCE_EXHAUSTED,
                               f"the server is at its limit of {self.limits.max_streams} concurrent streams (max_streams)")
        client = {"client": context.peer(), "token": grant.label}
        self._streams += 1
        self.metrics.streams.set(self._streams)
        log_event("stream_open", **client, streams=self._streams)
        window = _Window(request_iterator, self._draining, self.limits)
        frames = 0
        try:
            while not window.finished:
                while (answered := window.pop_answered()) is not None:
                    yield self.deliver(answered)
                raw = await window.step()
                if raw is not None:
                    frames += 1
                    window.add(self.submit(raw, grant, client))
        finally:
            window.close()
            self._streams -= 1
            self.metrics.streams.set(self._streams)
            log_event("stream_close", **client, frames=frames, reason=window.ended or "cancelled")
        if window.ended == "idle":
            await context.abort(Code.UNAVAILABLE, f"no frame for {self.limits.stream_idle_s:g} s: stream closed")

    # -- draining ----------------------------------------------------------------------------
    @property
    def streams_open(self) -> int:
        return self._streams

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new calls, end every stream after the frames it holds, wait for frames in flight.
        True when all were answered within ``timeout_s``."""
        self._draining.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    def close(self) -> None:
        self.scheduler.close()

    # -- steps -------------------------------------------------------------------------------
    async def _admit(self, context: grpc.aio.ServicerContext) -> Grant:
        if self._draining.is_set():
            await self._refuse(context, Code.UNAVAILABLE, "the server is draining; connect to another or retry")
        if self.tokens is None:
            return OPEN
        grant = self.tokens.grant(context.invocation_metadata())
        if grant is None:
            await self._refuse(context, Code.UNAUTHENTICATED, "missing or unknown bearer token "
                                                              "(metadata 'authorization: Bearer TOKEN')")
        return grant

    async def _refuse(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> None:
        self.metrics.refused(code.name)
        log_event("call_refused", logging.WARNING, client=context.peer(), code=code.name, error=message)
        await context.abort(code, message)

    def submit(self, raw: bytes, grant: Grant, client: dict) -> _Pending:
        """Parse, check and admit one frame (on the loop, at once); its compute goes to the scheduler.
        Public for a second transport: the browser's data channel (`edge_server.webrtc`) admits its
        frames here, so they pass the same validation, grants, bounds and metrics as gRPC's."""
        arrived = time.perf_counter()
        try:
            frame = pb.Frame.FromString(raw)
        except Exception:  # protobuf's DecodeError; any parse failure is the same to us
            error = self.error_result(frame_id_of(raw), "", Code.INVALID_ARGUMENT,
                                f"a {len(raw)}-byte message that does not parse as a splitedge.v1.Frame", client)
            return _Pending(arrived, _done(error), "", "error")
        # A client's name for a model is a metrics label only if it is a served model's: labels must stay bounded.
        frame_id, model = frame.frame_id, frame.payload.model if frame.payload.model in self.registry.names else ""
        if frame.probe and not frame.HasField("payload"):  # a link probe: answered at once, nothing computed
            return _Pending(arrived, _done(pb.Result(frame_id=frame_id, code=0)), model, "probe")
        try:
            served = self._admit_frame(frame, grant)
        except _Refused as exc:
            return _Pending(arrived, _done(self.error_result(frame_id, model, exc.code, str(exc), client)), model, "error")
        self._hold()
        task = asyncio.ensure_future(self._compute(served, frame, client))
        task.add_done_callback(self._release)  # also when cancelled before it ran
        return _Pending(arrived, task, served.model.name, "frame")

    def deliver(self, pending: _Pending) -> pb.Result:
        """The answer to a frame at the head of its stream: its wait measured now, as it leaves."""
        result = pending.result.result()
        waited_ms = (time.perf_counter() - pending.arrived) * 1e3
        if pending.kind == "probe":
            result.queue_ms = waited_ms
        elif pending.kind == "frame" and result.code == 0:
            result.queue_ms = max(waited_ms - result.server_ms, 0.0)
            self.metrics.frame(pending.model, "OK", result.queue_ms / 1e3, result.server_ms / 1e3)
        return result

    def _admit_frame(self, frame: pb.Frame, grant: Grant):
        """The served model for this frame, once the frame is known to fit it; else _Refused."""
        if frame.probe:
            raise _Refused(Code.INVALID_ARGUMENT, "a frame carries a payload or a probe, not both")
        served = self.registry.get(frame.payload.model)
        if served is None:
            raise _Refused(Code.NOT_FOUND, f"unknown model {frame.payload.model[:64]!r}; "
                                           f"served: {', '.join(self.registry.names)}")
        if not grant.allows(served.model.name):
            raise _Refused(Code.PERMISSION_DENIED, f"this token may not use model {served.model.name!r}")
        try:
            check_payload(frame.payload, self._model_limits[served.model.name])
        except PayloadMismatch as exc:
            raise _Refused(Code.INVALID_ARGUMENT, str(exc)) from None
        if self._in_flight >= self.limits.max_in_flight:
            raise _Refused(Code.RESOURCE_EXHAUSTED, f"the server is at its limit of {self.limits.max_in_flight} "
                                                    "frames in flight (max_in_flight); retry later")
        return served

    async def _compute(self, served, frame: pb.Frame, client: dict) -> pb.Result:
        name = served.model.name
        try:
            out, ms = await self.scheduler.run(served, frame.payload)
            detections = _detections(out, served.model.family)
        except PayloadMismatch as exc:
            return self.error_result(frame.frame_id, name, Code.INVALID_ARGUMENT, str(exc), client)
        except Exception:  # a frame must never take the stream or the server down, nor tell what broke inside
            ref = uuid.uuid4().hex[:12]
            log.exception("internal error ref=%s model=%s", ref, name)
            return self.error_result(frame.frame_id, name, Code.INTERNAL, f"internal error (server log reference {ref})",
                               client)
        return pb.Result(frame_id=frame.frame_id, code=0, server_ms=ms, detections=detections)

    def _hold(self) -> None:
        self._in_flight += 1
        self._idle.clear()
        self.metrics.in_flight.set(self._in_flight)

    def _release(self, _: asyncio.Future) -> None:
        self._in_flight -= 1
        self.metrics.in_flight.set(self._in_flight)
        if self._in_flight == 0:
            self._idle.set()

    def error_result(self, frame_id: int, model: str, code: grpc.StatusCode, message: str, client: dict) -> pb.Result:
        """A frame's error answer, counted and logged (every transport's refusals go through here)."""
        self.metrics.frame(model, code.name)
        log_event("frame_error", **client, model=model, frame_id=frame_id, code=code.name, error=message[:300])
        return pb.Result(frame_id=frame_id, code=code.value[0], error=f"frame {frame_id}: {message}")


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


def _read_result(read: asyncio.Future) -> bytes | None:
    """A finished read's bytes; None when the client closed its side."""
    try:
        return read.result()
    except StopAsyncIteration:
        return None


def _done(result: pb.Result) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_result(result)
    return future

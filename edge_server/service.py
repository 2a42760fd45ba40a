"""The gRPC servicer: validation at the door, compute off the event loop, limits on what a client can hold.

Model compute runs in a single worker thread: torch already uses every core for one frame,
and one worker keeps frames in order. The asyncio loop stays free for health checks and
`Describe` while a frame computes. A link probe (``Frame.probe``) is answered as soon as it is
read, with nothing computed, so the device times its uplink and not this server. Results keep
stream order, so a probe read behind a frame still computing would wait for it; the device
probes only with nothing of its own in flight.

What a client can make the server hold is bounded:

* ``Infer`` requests arrive as bytes and are parsed here, one at a time: a message that does not
  parse is an ``INVALID_ARGUMENT`` result for that frame (its ``frame_id`` read as far as the
  bytes allow) and the stream goes on; every parsed frame is checked by
  :func:`edge_server.validation.check_payload` before it is queued.
* A stream reads its next frame only once the previous result is written, so it holds at most
  one frame, and a client that sends and never reads is held back by HTTP/2 flow control
  (the results it does not read fill its window; then the server stops reading from it).
* ``max_streams`` streams at once and ``max_in_flight`` frames queued or computing, server-wide;
  beyond them ``RESOURCE_EXHAUSTED``, naming the limit (a whole stream; one frame).
* A stream that sends nothing for ``stream_idle_s`` is closed (``UNAVAILABLE``), as is every
  stream once the server drains (after the frame it is computing).

An unexpected failure is ``INTERNAL`` with a reference into the server's log, never the
exception's text.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
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
from edge_server.validation import ModelLimits, check_payload, frame_id_of

__all__ = ["Limits", "SplitEdgeServicer", "VERSION"]

VERSION = "1"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SplitEdge"].full_name
log = logging.getLogger("splitedge.server")
Code = grpc.StatusCode


@dataclass(frozen=True)
class Limits:
    max_streams: int = 64
    max_in_flight: int = 32
    stream_idle_s: float = 300.0


def _detections(out: Outputs, family: str) -> list[pb.Detection]:
    """The wire form of `split.detections.detection_rows`."""
    return [_detection(*row) for row in detection_rows(out, family)]


def _detection(box: list[float] | None, label: int, score: float) -> pb.Detection:
    if box is None:  # a classifier's label
        return pb.Detection(label=label, score=score)
    x1, y1, x2, y2 = box
    return pb.Detection(x1=x1, y1=y1, x2=x2, y2=y2, label=label, score=score)


class _Refused(Exception):
    """A frame that gets an error result: its code and the message naming why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class SplitEdgeServicer:
    def __init__(self, registry: ModelRegistry, max_message_bytes: int, limits: Limits = Limits(),
                 tokens: TokenTable | None = None, metrics: Metrics | None = None) -> None:
        self.registry = registry
        self.max_message_bytes = max_message_bytes
        self.limits = limits
        self.tokens = tokens
        self.metrics = metrics or Metrics()
        self._model_limits = {s.model.name: ModelLimits.of(s.model) for s in registry}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="splitedge-compute")
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
                weights=served.weights, latency_ms=served.medians()))
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
        frames, why = 0, "cancelled"
        try:
            reader = request_iterator.__aiter__()
            while True:
                raw, end = await self._next(reader)
                if raw is None:
                    why = end
                    break
                frames += 1
                yield await self._answer(raw, grant, client)
                if self._draining.is_set():
                    why = "draining"
                    break
        finally:
            self._streams -= 1
            self.metrics.streams.set(self._streams)
            log_event("stream_close", **client, frames=frames, reason=why)
        if why == "idle":
            await context.abort(Code.UNAVAILABLE, f"no frame for {self.limits.stream_idle_s:g} s: stream closed")

    # -- draining ----------------------------------------------------------------------------
    @property
    def streams_open(self) -> int:
        return self._streams

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new calls, end every stream after its current frame, wait for frames in flight.
        True when all were answered within ``timeout_s``."""
        self._draining.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

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

    async def _next(self, reader) -> tuple[bytes | None, str]:
        """The next request's bytes, or None and why not (the client closed, the server drains, idle)."""
        read = asyncio.ensure_future(reader.__anext__())
        read.add_done_callback(_retrieve)  # a read left behind (idle, draining, call cancelled) ends quietly
        drain = asyncio.ensure_future(self._draining.wait())
        try:
            done, _ = await asyncio.wait({read, drain}, timeout=self.limits.stream_idle_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            drain.cancel()
            if not read.done():
                read.cancel()
        if read in done:
            try:
                return read.result(), ""
            except StopAsyncIteration:
                return None, "client closed"
        return None, "draining" if self._draining.is_set() else "idle"

    async def _answer(self, raw: bytes, grant: Grant, client: dict) -> pb.Result:
        arrived = time.perf_counter()
        try:
            frame = pb.Frame.FromString(raw)
        except Exception:  # protobuf's DecodeError; any parse failure is the same to us
            return self._error(frame_id_of(raw), "", Code.INVALID_ARGUMENT,
                               f"a {len(raw)}-byte message that does not parse as a splitedge.v1.Frame", client)
        # A client's name for a model is a metrics label only if it is a served model's: labels must stay bounded.
        frame_id, model = frame.frame_id, frame.payload.model if frame.payload.model in self.registry.names else ""
        try:
            if frame.probe and not frame.HasField("payload"):  # a link probe: answered at once, nothing computed
                return pb.Result(frame_id=frame_id, code=0, queue_ms=(time.perf_counter() - arrived) * 1e3)
            served = self._admit_frame(frame, grant)
            model = served.model.name
            out, ms = await self._compute(served, frame.payload)
        except _Refused as exc:
            return self._error(frame_id, model, exc.code, str(exc), client)
        queue_ms = max((time.perf_counter() - arrived) * 1e3 - ms, 0.0)
        self.metrics.frame(model, "OK", queue_ms / 1e3, ms / 1e3)
        return pb.Result(frame_id=frame_id, code=0, server_ms=ms, queue_ms=queue_ms,
                         detections=_detections(out, served.model.family))

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

    async def _compute(self, served, payload: pb.Payload) -> tuple[Outputs, float]:
        self._in_flight += 1
        self._idle.clear()
        self.metrics.in_flight.set(self._in_flight)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, served.run, payload)
        except PayloadMismatch as exc:
            raise _Refused(Code.INVALID_ARGUMENT, str(exc)) from None
        except Exception:  # a frame must never take the stream or the server down, nor tell what broke inside
            ref = uuid.uuid4().hex[:12]
            log.exception("internal error ref=%s model=%s", ref, served.model.name)
            raise _Refused(Code.INTERNAL, f"internal error (server log reference {ref})") from None
        finally:
            self._in_flight -= 1
            self.metrics.in_flight.set(self._in_flight)
            if self._in_flight == 0:
                self._idle.set()

    def _error(self, frame_id: int, model: str, code: grpc.StatusCode, message: str, client: dict) -> pb.Result:
        self.metrics.frame(model, code.name)
        log_event("frame_error", **client, model=model, frame_id=frame_id, code=code.name, error=message[:300])
        return pb.Result(frame_id=frame_id, code=code.value[0], error=f"frame {frame_id}: {message}")


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()

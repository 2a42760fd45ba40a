"""The live device: the session driver (:mod:`mobile_client.session`) on the real clock, gRPC and a device (torch or ONNX).

One frame in, exactly one result record out, whatever failed. The order of
calls into the controller is the session driver's; this module supplies its
:class:`LiveIO`: :class:`~mobile_client.edge_client.EdgeClient` for the edge
(one ``Infer`` stream; results of frames given up on, and link probes'
answers, come back through its late queue) and
:class:`~mobile_client.device.TorchDevice` for compute (or `mobile_client.onnx_device.OnnxDevice`), including a hedged
frame's race between the edge's result and the local run, checked at every
stage boundary. ``timeout_s`` is only how long a silent server is given
before it is presumed gone; a frame's own deadline is the controller's.
A server that refuses link probes (one that predates them answers with an
error) turns them off for the run, with a warning. Pipelined
(``RuntimeOptions.pipeline``, ``splitedge run --pipeline``): :meth:`LiveIO.submit`
puts a payload on the stream and the device computes the next frame while the
client's reader thread takes the result off it (docs/pipeline.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from protos import splitedge_pb2 as pb
from split.detections import to_detections

from mobile_client.controller import Controller
from mobile_client.edge_client import DeadlineExceeded, EdgeClient, LateResult
from mobile_client.errors import EdgeUnavailable, ServedModelMismatch
from mobile_client.session import Arrival, Encoded, Outcome, Session
from mobile_client.sources import Frame

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Device", "DeviceRuntime", "RuntimeOptions", "LiveIO", "SlowedCompute"]


class SlowedCompute:
    """Timing of device compute, for both devices: with ``device_slowdown`` K > 1 (standing for a slower
    device) each compute is stretched by waiting K-1 times as long again."""

    device_slowdown: float = 1.0

    def compute(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        """Run device compute, stretched by the slowdown. Returns (out, seconds)."""
        t = time.perf_counter()
        out = fn(*args)
        s = time.perf_counter() - t
        if self.device_slowdown > 1:
            time.sleep(s * (self.device_slowdown - 1))
            s *= self.device_slowdown
        return out, s


class Device(Protocol):
    """The device's compute, as the live IO uses it: `mobile_client.device.TorchDevice` (torch) or
    `mobile_client.onnx_device.OnnxDevice` (onnxruntime, no torch). `model` has `name` and `family`;
    `image` turns a captured RGB frame into what the other methods take."""

    model: Any
    device_slowdown: float

    def image(self, rgb: Any) -> Any: ...
    def expects(self) -> dict[str, str]: ...
    def run_local(self, image: Any) -> tuple[Any, float]: ...
    def encode(self, image: Any, mode: str, hedge: bool) -> tuple[pb.Payload | None, float, Any]: ...
    def local_steps(self, image: Any, payload: pb.Payload, features: Any) -> "Iterator[None]": ...


@dataclass
class RuntimeOptions:
    jpeg_quality: int = 90
    timeout_s: float = 30.0  # a server silent this long is presumed gone (a frame's own deadline is the controller's)
    rtt_pings: int = 3  # one-byte link probes sent at connect: their round trips are the controller's RTT (0: none)
    connect_timeout_s: float = 5.0  # the most opening the connection may take (at most one local run in auto)
    min_score: float = 0.0
    device_slowdown: float = 1.0  # > 1 stands for a slower device: each compute is stretched by K
    pipeline: bool = False  # the next frame's device part overlaps this one's network/edge stage


def _remote_detections(result: pb.Result, family: str, min_score: float) -> list[dict[str, Any]]:
    ds = result.detections
    wire = {"boxes": [[d.x1, d.y1, d.x2, d.y2] for d in ds], "labels": [d.label for d in ds],
            "scores": [d.score for d in ds]}
    return to_detections(wire, family, min_score)


class LiveIO:
    """The session's IO on this machine: ``time.perf_counter`` since creation, an EdgeClient, a device."""

    def __init__(self, client: EdgeClient | None, device: Device, options: RuntimeOptions, *,
                 clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client, self.device, self.options = client, device, options
        self.has_edge = client is not None
        self.check_split = False  # connect() compares the edge's split with this device's (set when split may run)
        self._clock, self._sleep = clock, sleep  # the client's clock (its send and arrival times) and a wait on it
        self._t0 = clock()
        self._sent: dict[int, float] = {}  # pipelined frames in flight: id -> when sent (the client's clock)
        self._early: dict[int, LateResult] = {}  # ... and a result that arrivals() met before collect() asked

    def now(self) -> float:
        return self._clock() - self._t0

    def connected(self) -> bool:
        return self.client is not None and self.client.connected

    def connect(self, timeout_s: float) -> dict[str, float]:
        """Open the stream; the edge's latencies of this model. With `check_split`, ServedModelMismatch when
        the edge serves it under another split than this device's (a field it does not report is not checked)."""
        description = self.client.connect(timeout_s)
        info = next((m for m in description.models if m.name == self.device.model.name), None)
        if info is not None and self.check_split:
            theirs = {"split_point": info.split_point, "codec": info.codec, "bottleneck_digest": info.bottleneck_digest}
            differ = [f"{k} {theirs[k]!r} (this device: {v!r})" for k, v in self.device.expects().items()
                      if theirs[k] and v != theirs[k]]
            if differ:
                self.client.close()
                raise ServedModelMismatch(
                    f"{self.client.target} serves {info.name} with {', '.join(differ)}: this device's split payloads "
                    "would not decode there; serve the checkpoint the device runs (or export the bundle from the "
                    "served one), or run --mode offload or local")
        return dict(info.latency_ms) if info is not None else {}

    def close(self) -> None:
        self.client.close()
        self._sent.clear()
        self._early.clear()

    def send_probe(self, nbytes: int) -> int:
        return self.client.send_probe(nbytes)[0]

    def arrivals(self) -> list[Arrival]:
        out = []
        for late in self.client.take_late(self.options.timeout_s):
            if late.frame_id in self._sent:  # a pipelined frame's own result, come early: kept for collect()
                self._early[late.frame_id] = late
            else:
                out.append(self._arrival(late))
        return out

    def _arrival(self, late: LateResult) -> Arrival:
        r = late.result
        return Arrival(late.frame_id, late.seconds, _server_s(r), late.arrived - self._t0, r.code,
                       f"{_code_name(r.code)}: {r.error}" if r.code else "")

    def run_local(self, image: Any) -> tuple[list[dict[str, Any]], float]:
        out, s = self.device.run_local(image)
        return self._detections(out), s

    def encode(self, image: Any, mode: str, hedge: bool) -> Encoded:
        payload, s, features = self.device.encode(image, mode, hedge)
        return Encoded(payload, payload.ByteSize() if payload is not None else 0, s, features)

    def remote(self, frame_id: int, image: Any, mode: str, encoded: Encoded, deadline_s: float | None,
               hedge: bool) -> Outcome:
        message = pb.Frame(frame_id=frame_id, payload=encoded.payload)
        try:
            if hedge:
                sent = self.client.send(message)
            else:
                # The deadline is on the session's clock, from the frame's start: what is left of it after the head.
                wait_s = None if deadline_s is None else max(0.0, deadline_s - self.now())
                result, seconds = self.client.infer(message, self.options.timeout_s, deadline_s=wait_s)
        except DeadlineExceeded as exc:  # the stream stays up; the result, if it comes, is late
            return Outcome("deadline", self.now(), seconds=exc.waited_s, network_s=exc.waited_s)
        except EdgeUnavailable as exc:
            return Outcome("lost", self.now(), error=str(exc))
        except ValueError as exc:  # e.g. over the server's message limit
            return Outcome("refused", self.now(), error=str(exc))
        return self._race(message.frame_id, sent, image, encoded) if hedge else self._result(result, seconds)

    def submit(self, frame_id: int, mode: str, encoded: Encoded) -> Outcome | None:
        """Put a pipelined frame on the stream without waiting for its result."""
        try:
            self._sent[frame_id] = self.client.send(pb.Frame(frame_id=frame_id, payload=encoded.payload))
        except EdgeUnavailable as exc:
            return Outcome("lost", self.now(), error=str(exc))
        except ValueError as exc:  # e.g. over the server's message limit
            return Outcome("refused", self.now(), error=str(exc))
        return None

    def collect(self, frame_id: int, image: Any, mode: str, encoded: Encoded, deadline_s: float | None,
                hedge: bool) -> Outcome:
        """A pipelined frame's end, from now: its result if already there, else the hedged race or the wait."""
        sent = self._sent.pop(frame_id)
        early = self._early.pop(frame_id, None)
        if early is not None:
            return self._result(early.result, early.seconds)
        until = math.inf if deadline_s is None else self._t0 + deadline_s
        try:
            got = self.client.wait(frame_id, sent, self.options.timeout_s, self._clock() if hedge else until)
        except EdgeUnavailable as exc:
            return Outcome("lost", self.now(), error=str(exc))
        if got is not None:
            return self._result(*got)
        if hedge:
            return self._race(frame_id, sent, image, encoded)
        waited = self._clock() - sent  # the deadline passed (maybe while the device ran the next frame)
        return Outcome("deadline", self.now(), seconds=waited, network_s=waited)

    def _result(self, result: pb.Result, seconds: float) -> Outcome:
        server_s = _server_s(result)
        error = f"{_code_name(result.code)}: {result.error}" if result.code else None
        outputs = [] if result.code else _remote_detections(result, self.device.model.family, self.options.min_score)
        return Outcome("result", self.now(), seconds, server_s, network_s=max(seconds - server_s, 0.0),
                       compute_s=result.server_ms / 1e3, outputs=outputs, code=result.code, error=error)

    def _race(self, frame_id: int, sent: float, image: Any, encoded: Encoded) -> Outcome:
        """A hedged frame's payload is out: run the frame locally meanwhile, end with whichever finishes first."""
        steps = self.device.local_steps(image, encoded.payload, encoded.extra)
        slow = max(self.device.device_slowdown, 1.0) - 1.0
        got, out, local_s, lost, lost_at = None, None, 0.0, None, 0.0
        while True:
            t = self._clock()
            try:
                next(steps)
            except StopIteration as stop:
                out = stop.value
            s = self._clock() - t
            local_s += s * (1.0 + slow)
            until = self._clock() + s * slow  # the rest of this stage on the emulated device
            if lost is None:
                try:
                    got = self.client.wait(frame_id, sent, self.options.timeout_s, until)
                except EdgeUnavailable as exc:  # the local run goes on and serves the frame
                    lost, lost_at = exc, self.now()
                    self.client.close()
            if got is None and (lost is not None or out is not None):
                self._sleep(max(0.0, until - self._clock()))
            if got is not None or out is not None:
                break
        steps.close()
        if got is not None:  # the edge won: the local run is dropped at this stage boundary
            return self._result(*got)
        waited = self._clock() - sent
        outputs, device_s = self._detections(out), encoded.device_s + local_s
        if lost is not None:
            return Outcome("lost", lost_at, device_s=device_s, outputs=outputs, error=str(lost))
        return Outcome("hedge", self.now(), seconds=waited, network_s=waited, device_s=device_s, outputs=outputs)

    def _detections(self, out: Any) -> list[dict[str, Any]]:
        return to_detections(out, self.device.model.family, self.options.min_score)


class DeviceRuntime:
    """A controller, a model and an edge client as one device: :meth:`connect`, then :meth:`process` per frame."""

    def __init__(self, model: Any, controller: Controller, client: EdgeClient | None,
                 options: RuntimeOptions | None = None, *, device: Device | None = None,
                 clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep) -> None:
        """`model`: a `split.SplitModel`, run by a TorchDevice unless `device` is given (then its model)."""
        self.model, self.controller, self.client = model, controller, client
        self.options = options or RuntimeOptions()
        if device is None:
            from mobile_client.device import TorchDevice

            device = TorchDevice(model, jpeg_quality=self.options.jpeg_quality,
                                 device_slowdown=self.options.device_slowdown)
        self.device = device
        self.io = LiveIO(client, self.device, self.options, clock=clock, sleep=sleep)
        self.session = Session(controller, self.io, rtt_pings=self.options.rtt_pings,
                               connect_timeout_s=self.options.connect_timeout_s, pipeline=self.options.pipeline)

        self._pending: dict[int, tuple[str, float | None]] = {}  # pipelined: frame id -> (source, captured)

    @property
    def warnings(self) -> list[str]:
        return self.session.warnings

    @property
    def busy(self) -> bool:
        """A pipelined frame is on the network/edge stage: :meth:`flush` settles it."""
        return self.session.busy

    def connect(self) -> bool:
        """Try the server once; on failure the controller starts its backoff."""
        return self.session.connect()

    def process(self, frame: Frame, captured: float | None = None) -> dict[str, Any]:
        """Serve one frame; its JSON record (see the README's ``splitedge run``). ``captured``: when a real-time
        camera captured it (perf_counter), for the record's ``age_ms`` (capture to result)."""
        start = self.io.now()
        served = self.session.step(frame.index, self.device.image(frame.rgb))
        return _record(frame.index, frame.source, served, self.io.now() - start, captured)

    def submit(self, frame: Frame, captured: float | None = None) -> list[dict[str, Any]]:
        """Start one frame; the records finished meanwhile, in frame order (:meth:`process`'s, one, unpipelined).
        Pipelined, a record has ``wait_ms`` (its payload waiting for the frame before) and ``remote_ms`` (send to
        result); call :meth:`flush` before waiting for a frame that is not there yet, and at the end."""
        if not self.options.pipeline:
            return [self.process(frame, captured)]
        self._pending[frame.index] = (frame.source, captured)
        return self._records(self.session.feed(frame.index, self.device.image(frame.rgb)))

    def flush(self) -> list[dict[str, Any]]:
        """Settle the pipelined frame in flight, if any: its record."""
        return self._records(self.session.flush())

    def _records(self, done: list) -> list[dict[str, Any]]:
        out = []
        for served in done:
            source, captured = self._pending.pop(served.frame_id)
            record = _record(served.frame_id, source, served, served.done_s - served.start_s, captured)
            stages = {"wait_ms": round(served.wait_s * 1e3, 3), "remote_ms": round(served.remote_s * 1e3, 3)}
            out.append(record | stages)
        return out


def _record(frame_id: int, source: str, served, e2e_s: float, captured: float | None) -> dict[str, Any]:
    """A frame's JSON record (see the README's ``splitedge run``). ``captured``: when a real-time camera captured it
    (perf_counter), for the record's ``age_ms`` (capture to result)."""
    age = {} if captured is None else {"age_ms": round((time.perf_counter() - captured) * 1e3, 3)}
    return {"frame_id": frame_id, "source": source, "t_s": round(served.start_s, 3), "mode": served.mode,
            "reason": served.reason, "payload_bytes": served.payload_bytes,
            "head_ms": round(served.device_s * 1e3, 3), "network_ms": round(served.network_s * 1e3, 3),
            "server_ms": round(served.server_s * 1e3, 3), "e2e_ms": round(e2e_s * 1e3, 3),
            "detections": served.outputs or [], "error": served.error, "fallback": served.fallback,
            "filtered": served.filtered, "probe_bytes": served.probe_bytes, "skipped": False, **age}


def _server_s(result: pb.Result) -> float:
    """Seconds the edge held a frame (queue + compute): what the link did not take of its round trip."""
    return (result.server_ms + result.queue_ms) / 1e3


def _code_name(code: int) -> str:
    import grpc

    for c in grpc.StatusCode:
        if c.value[0] == code:
            return c.name
    return str(code)

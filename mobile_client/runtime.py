"""The device runtime: one frame in, exactly one result record out, whatever failed.

Per frame the controller picks a mode; split and offload go to the edge over the `Infer`
stream, local runs the whole model here. A server that is unreachable or stops answering
sends the frame (and the following ones, while the controller's backoff runs) to local.
A frame the server rejects (bad payload) gets an error record, not a silent drop.

A remote frame whose result is not back by the controller's deadline (``Decision.deadline_s``)
is served locally from that moment (record: ``mode`` local, ``reason`` "deadline",
``fallback``), and the controller is told :meth:`~mobile_client.controller.Controller.missed`;
the stream stays up, and if that result still arrives it is reported with
:meth:`~mobile_client.controller.Controller.observe_late` (at its arrival time) before the next
decision. ``timeout_s`` is only how long a silent server is given before it is presumed gone.
When it connects, the runtime times ``rtt_pings`` `Describe` calls and gives the fastest to the
controller as an RTT (:meth:`~mobile_client.controller.Controller.observe_rtt`), so it knows the
round trip before the first frame. The trace-driven simulator (``simulators/experiment.py``)
does the same, step for step.

**Hedged frames** (``Decision.hedge``, the controller's default wherever local may serve a
frame): once the payload is sent, the otherwise idle device goes on with the frame itself —
for split, the original model from the split point's features *before* the bottleneck (the
head computed them anyway; a forward hook on the head's stage chain keeps them), for offload
the whole model — as a chain of stages, looking for the edge's result between stages. The
first to finish serves the frame: a result that comes first cancels the local run at the next
stage boundary (with an emulated device slowdown, the emulated part of a stage is a wait that
the result ends at once); a local run that finishes first serves the frame (record: ``mode``
local, ``reason`` "hedge", ``fallback``), the controller is told
:meth:`~mobile_client.controller.Controller.missed`, and the remote result, when it comes, is
reported late like a missed deadline's. So a hedged frame never takes much longer than its head
plus a local run, whatever the link does; the deadline is then moot (the local run is done
before it). A server that drops out during the race does not stop the local run: it serves the
frame. Where the split head is a distilled copy (not the original model's modules), its
features do not fit the original model's later stages, and split frames are continued from the
image with the whole model instead. The local run's extra CPU time and energy are not counted
anywhere (not in the records, not by the controller).

**Link probes** (``Decision.probe_bytes``, on local frames): before running the frame, the
runtime puts a probe of that many filler bytes on the stream
(:meth:`~mobile_client.edge_client.EdgeClient.send_probe`); the server answers it at once, and
the answer is handed to :meth:`~mobile_client.controller.Controller.observe_probe` before a
later decision, like a late result. The frame's own latency does not change: the device was
going to run it locally anyway, and the uplink was idle. A server that refuses probes (one
that predates them answers with an error) turns them off for the run, with a warning: the
controller then probes with remote frames as before.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from protos import splitedge_pb2 as pb
from split import SplitModel
from split.adapters import ImageBatch, Outputs, Stage

from mobile_client.controller import Controller
from mobile_client.edge_client import DeadlineExceeded, EdgeClient, EdgeUnavailable, LateResult
from mobile_client.sources import Frame

__all__ = ["DeviceRuntime", "RuntimeOptions", "to_tensor"]


@dataclass
class RuntimeOptions:
    jpeg_quality: int = 90
    timeout_s: float = 30.0  # a server silent this long is presumed gone (a frame's own deadline is the controller's)
    rtt_pings: int = 3  # Describe calls timed at connect; the fastest is the controller's first RTT (0: none)
    connect_timeout_s: float = 5.0
    min_score: float = 0.0
    device_slowdown: float = 1.0  # > 1 stands for a slower device: each compute is stretched by K


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)


def _local_detections(out: Outputs, family: str, min_score: float) -> list[dict[str, Any]]:
    labels, scores = out["labels"].tolist(), out["scores"].tolist()
    boxes = out["boxes"].tolist() if family == "detector" else [None] * len(labels)
    return [{"box": [round(v, 2) for v in b] if b is not None else None, "label": int(l), "score": round(float(s), 5)}
            for b, l, s in zip(boxes, labels, scores) if s >= min_score]


def _remote_detections(result: pb.Result, family: str, min_score: float) -> list[dict[str, Any]]:
    return [{"box": [round(d.x1, 2), round(d.y1, 2), round(d.x2, 2), round(d.y2, 2)] if family == "detector" else None,
             "label": d.label, "score": round(d.score, 5)}
            for d in result.detections if d.score >= min_score]


class DeviceRuntime:
    def __init__(self, model: SplitModel, controller: Controller, client: EdgeClient | None,
                 options: RuntimeOptions | None = None) -> None:
        self.model, self.controller, self.client = model, controller, client
        self.options = options or RuntimeOptions()
        self._t0 = time.perf_counter()
        self.warnings: list[str] = []
        self._abandoned: dict[int, tuple[str, int]] = {}  # frame id -> (mode, payload bytes) of frames given up on
        self._probes: dict[int, int] = {}  # link probe id -> its bytes, until answered
        self._stages: list[Stage] | None = None  # the original model as a stage chain (hedged local runs)
        self._resumable = False  # whether the split head is made of those stages' own modules

    def _now(self) -> float:
        return time.perf_counter() - self._t0

    def _compute(self, fn, *args):
        """Run device compute; with a device slowdown K, wait (K-1) times as long again."""
        t = time.perf_counter()
        out = fn(*args)
        ms = (time.perf_counter() - t) * 1e3
        if self.options.device_slowdown > 1:
            time.sleep(ms * (self.options.device_slowdown - 1) / 1e3)
            ms *= self.options.device_slowdown
        return out, ms

    def connect(self) -> bool:
        """Try the server once; on failure the controller starts its backoff."""
        if self.client is None:
            return False
        try:
            self.client.connect(self.options.connect_timeout_s)
        except EdgeUnavailable as exc:
            self._edge_lost(exc)
            return False
        self.controller.server_ok(self._now())
        self._adopt_edge_latencies()
        self._abandoned.clear()
        self._probes.clear()
        self._measure_rtt()
        return self._connect_probe()

    def _connect_probe(self) -> bool:
        """Send the link probe the controller asks for at connect, and wait a connect timeout for its answer.

        So the first frame is chosen knowing the link (the controller's "Initial
        choice"); an answer that takes longer is handed over when it comes.
        False if the stream broke meanwhile (the controller's backoff then runs).
        """
        nbytes = self.controller.connect_probe(self._now())
        if not nbytes:
            return True
        try:
            probe_id, sent = self.client.send_probe(nbytes)
            self._probes[probe_id] = nbytes
            got = self.client.wait(probe_id, sent, self.options.timeout_s, sent + self.options.connect_timeout_s)
        except EdgeUnavailable as exc:
            self._edge_lost(exc)
            return False
        except ValueError as exc:  # over the server's message limit: no probe, the frames will tell
            self.controller.probe_lost(self._now())
            self.warnings.append(f"link probe at connect not sent: {exc}")
            return True
        if got is not None:
            result, seconds = got
            del self._probes[probe_id]
            self._probe_answered(LateResult(probe_id, result, seconds, sent + seconds), nbytes)
        return True

    def _give_up(self, frame_id: int, mode: str, nbytes: int, waited_s: float) -> None:
        """Stop waiting for a remote frame's result (served locally instead); its result, if it comes, is late.

        Registered before collecting what arrived meanwhile, so that the frame's own result, if it has just
        come, is not dropped as a stranger's: the controller counts given-up payloads until their results are
        back. What arrived while waiting is older news than this miss, which the controller ignores as such.
        """
        self._abandoned[frame_id] = (mode, nbytes)
        self.controller.missed(mode, nbytes, waited_s, self._now())
        self._report_late()

    def _edge_lost(self, exc: EdgeUnavailable) -> None:
        """The server cannot be reached or stopped answering: local from now on, reconnect after the backoff."""
        self.client.close()
        backoff = self.controller.server_failed(self._now())
        self.warnings.append(f"edge unavailable ({exc}); local mode, retry in {backoff:.1f} s")

    def _measure_rtt(self) -> None:
        """Time a few tiny round trips on the fresh channel; the fastest is what the link adds to any message."""
        rtts = []
        for _ in range(max(0, self.options.rtt_pings)):
            try:
                rtts.append(self.client.ping(self.options.connect_timeout_s))
            except EdgeUnavailable:
                break
        if rtts:
            self.controller.observe_rtt(min(rtts), self._now())

    def _report_late(self) -> None:
        """Results of frames given up on that have arrived since: the link delivers again (see the controller)."""
        if self.client is None or not self.client.connected:
            return
        try:
            lates = self.client.take_late(self.options.timeout_s)
        except EdgeUnavailable as exc:  # found while running locally: the stream broke or went silent
            self._edge_lost(exc)
            return
        for late in lates:
            nbytes = self._probes.pop(late.frame_id, None)
            if nbytes is not None:
                self._probe_answered(late, nbytes)
                continue
            abandoned = self._abandoned.pop(late.frame_id, None)
            if abandoned is not None:
                mode, nbytes = abandoned
                self.controller.observe_late(mode, nbytes, late.seconds, _server_s(late.result),
                                             late.arrived - self._t0)

    def _probe_answered(self, late: LateResult, nbytes: int) -> None:
        at = late.arrived - self._t0
        if late.result.code != 0:  # a server without link probes: probe with frames instead
            self.controller.probe_lost(at)
            self.controller.link_probes = False
            self.warnings.append(f"the edge refused a link probe ({_code_name(late.result.code)}: "
                                 f"{late.result.error}); probing with frames instead")
            return
        self.controller.observe_probe(nbytes, late.seconds, _server_s(late.result), at)

    def _send_probe(self, nbytes: int, record: dict[str, Any]) -> None:
        """Put a link probe on the stream beside a local frame (see the module docstring)."""
        if not self._connected():
            self.controller.probe_lost(self._now())
            return
        try:
            self._probes[self.client.send_probe(nbytes)[0]] = nbytes
        except (EdgeUnavailable, ValueError) as exc:  # not sent: the frame goes on locally all the same
            self.controller.probe_lost(self._now())
            self.warnings.append(f"link probe not sent: {exc}")
            return
        record["probe_bytes"] = nbytes

    def _adopt_edge_latencies(self) -> None:
        """Plan with the edge's own measured times (from `Describe`) instead of the device's."""
        info = next((m for m in self.client.description.models if m.name == self.model.name), None)
        if info is None:
            return
        lat = info.latency_ms
        if "tail" in lat and "offload_edge" in lat:
            self.controller.costs = replace(self.controller.costs, t_tail_edge_ms=lat["tail"],
                                            t_full_edge_ms=lat["offload_edge"])

    def _connected(self) -> bool:
        return self.client is not None and self.client.connected

    def process(self, frame: Frame) -> dict[str, Any]:
        start = time.perf_counter()
        now = start - self._t0
        if self.client is not None and not self.client.connected and self.controller.should_reconnect(now):
            self.connect()
        self._report_late()
        decision = self.controller.choose(now)
        image = to_tensor(frame.rgb)
        record: dict[str, Any] = {"frame_id": frame.index, "source": frame.source, "t_s": round(now, 3),
                                  "mode": decision.mode,
                                  "reason": decision.reason, "payload_bytes": 0, "head_ms": 0.0,
                                  "network_ms": 0.0, "server_ms": 0.0, "e2e_ms": 0.0, "detections": [],
                                  "error": None, "fallback": False, "filtered": False, "probe_bytes": 0}
        if decision.reason == "no-server" or (decision.mode != "local" and not self._connected()):
            record["fallback"] = True  # the frame wanted the edge; local serves it meanwhile
            self._run_local(image, record, now)
        elif decision.mode == "local":
            if decision.probe_bytes > 0:
                self._send_probe(decision.probe_bytes, record)
            self._run_local(image, record, now)
        else:
            self._run_remote(decision.mode, frame, image, record, now, decision.deadline_s, decision.hedge)
        record["e2e_ms"] = round((time.perf_counter() - start) * 1e3, 3)
        return record

    def _run_local(self, image: torch.Tensor, record: dict[str, Any], now: float) -> None:
        out, ms = self._compute(self.model.full, image)
        self.controller.observe_local(ms / 1e3, now)
        record.update(mode="local", head_ms=round(ms, 3),
                      detections=_local_detections(out, self.model.family, self.options.min_score))

    def _run_remote(self, mode: str, frame: Frame, image: torch.Tensor, record: dict[str, Any], now: float,
                    deadline_s: float | None = None, hedge: bool = False) -> None:
        features: list[torch.Tensor] = []
        if mode == "split":
            hook = None
            if hedge and self._original_stages() and self._resumable:  # keep the features before the bottleneck
                hook = self.model.head.chain.register_forward_hook(lambda _m, _i, out: features.append(out))
            try:
                payload, head_ms = self._compute(self.model.encode_message, image)
            finally:
                if hook is not None:
                    hook.remove()
        else:
            payload, head_ms = self._compute(self.model.encode_image, image, self.options.jpeg_quality)
        record["head_ms"] = round(head_ms, 3)
        if payload is None:  # the prefilter found nothing of interest: send nothing
            record["filtered"] = True
            return
        record["payload_bytes"] = payload.ByteSize()
        if hedge:
            self._run_hedged(mode, frame, image, payload, features[-1] if features else None, record, now, head_ms)
            return
        # The deadline is on the controller's clock, from the frame's start: what is left of it after the head.
        wait_s = None if deadline_s is None else max(0.0, deadline_s - self._now())
        try:
            result, seconds = self.client.infer(pb.Frame(frame_id=frame.index, payload=payload), self.options.timeout_s,
                                                deadline_s=wait_s)
        except DeadlineExceeded as exc:
            # Not a server failure: the stream stays up, the result (if it comes) is reported as late.
            self._give_up(frame.index, mode, record["payload_bytes"], exc.waited_s)
            record.update(fallback=True, reason="deadline", network_ms=round(exc.waited_s * 1e3, 3))
            self._run_local(image, record, now)
            record["head_ms"] = round(record["head_ms"] + head_ms, 3)
            return
        except (EdgeUnavailable, ValueError) as exc:
            self._fall_back(exc, image, record, now, head_ms)
            return
        server_s = _server_s(result)
        self._report_late()  # late results that arrived while waiting came first
        self.controller.observe(mode, record["payload_bytes"], seconds, server_s, self._now())
        record.update(network_ms=round(max(seconds - server_s, 0.0) * 1e3, 3), server_ms=round(result.server_ms, 3))
        if result.code != 0:
            record["error"] = f"{_code_name(result.code)}: {result.error}"
            return
        record["detections"] = _remote_detections(result, self.model.family, self.options.min_score)

    # -------------------------------------------------------------- hedged frames
    def _original_stages(self) -> list[Stage]:
        """The original model's stage chain (once), and whether the split head shares its modules."""
        if self._stages is None:
            self._stages = self.model.adapter.stages()
            k = next((i for i, st in enumerate(self._stages) if st.name == self.model.at), None)
            head = list(self.model.head.chain.blocks)
            self._resumable = k is not None and len(head) == k + 1 and all(
                a is st.module for a, st in zip(head, self._stages[: k + 1]))
        return self._stages

    def _local_steps(self, image: torch.Tensor, payload: pb.Payload,
                     features: torch.Tensor | None) -> Iterator[None]:
        """The original model on this frame as a chain of stages, yielding between them; returns its outputs.

        With the split point's features (before the bottleneck), it starts right after the split point,
        with the image sizes the payload carries; without, from the image.
        """
        stages = self._original_stages()
        adapter = self.model.adapter
        taps: OrderedDict[str, torch.Tensor] = OrderedDict()
        with torch.inference_mode():
            if features is not None:
                k = next(i for i, st in enumerate(stages) if st.name == self.model.at)
                batch = (int(payload.batch_size.height), int(payload.batch_size.width))
                sizes = ImageBatch(torch.empty(0, 3, *batch),
                                   (int(payload.image_size.height), int(payload.image_size.width)),
                                   (int(payload.original_size.height), int(payload.original_size.width)))
                x = features
                if stages[k].tap is not None:
                    taps[stages[k].tap] = x
                rest = stages[k + 1:]
            else:
                sizes = adapter.preprocess(image)
                x, rest = sizes.tensor, stages
                yield
            for st in rest:
                x = st.module(x)
                if st.tap is not None:
                    taps[st.tap] = st.tap_fn(x) if st.tap_fn is not None else x
                yield
            return adapter.finish(taps, x, sizes)

    def _fall_back(self, exc: Exception, image: torch.Tensor, record: dict[str, Any], now: float,
                   head_ms: float) -> None:
        """The edge failed this frame (unreachable, or the payload was refused): run it here."""
        if isinstance(exc, EdgeUnavailable):
            self.client.close()
            self.controller.server_failed(self._now())
        record.update(fallback=True, error=str(exc))
        self._run_local(image, record, now)
        record["head_ms"] = round(record["head_ms"] + head_ms, 3)

    def _run_hedged(self, mode: str, frame: Frame, image: torch.Tensor, payload: pb.Payload,
                    features: torch.Tensor | None, record: dict[str, Any], now: float, head_ms: float) -> None:
        """Send the payload, run the frame locally meanwhile, serve it from whichever finishes first."""
        nbytes = record["payload_bytes"]
        try:
            sent = self.client.send(pb.Frame(frame_id=frame.index, payload=payload))
        except (EdgeUnavailable, ValueError) as exc:
            self._fall_back(exc, image, record, now, head_ms)
            return
        steps = self._local_steps(image, payload, features)
        slow = max(self.options.device_slowdown, 1.0) - 1.0
        got, out, local_ms, lost_server = None, None, 0.0, None
        while True:
            t = time.perf_counter()
            try:
                next(steps)
            except StopIteration as stop:
                out = stop.value
            ms = (time.perf_counter() - t) * 1e3
            local_ms += ms * (1.0 + slow)
            until = time.perf_counter() + ms * slow / 1e3  # the rest of this stage on the emulated device
            if lost_server is None:
                try:
                    got = self.client.wait(frame.index, sent, self.options.timeout_s, until)
                except EdgeUnavailable as exc:  # the local run goes on and serves the frame
                    lost_server = exc
                    self.client.close()
                    self.controller.server_failed(self._now())
            if got is None and (lost_server is not None or out is not None):
                time.sleep(max(0.0, until - time.perf_counter()))
            if got is not None or out is not None:
                break
        steps.close()
        if got is not None:  # the edge won: the local run is dropped at this stage boundary
            result, seconds = got
            server_s = _server_s(result)
            self._report_late()  # late results that arrived while waiting came first
            self.controller.observe(mode, nbytes, seconds, server_s, self._now())
            record.update(network_ms=round(max(seconds - server_s, 0.0) * 1e3, 3), server_ms=round(result.server_ms, 3))
            if result.code != 0:
                record["error"] = f"{_code_name(result.code)}: {result.error}"
                return
            record["detections"] = _remote_detections(result, self.model.family, self.options.min_score)
            return
        waited = time.perf_counter() - sent
        record.update(mode="local", fallback=True, head_ms=round(head_ms + local_ms, 3),
                      detections=_local_detections(out, self.model.family, self.options.min_score))
        if lost_server is not None:
            record["error"] = str(lost_server)
            return
        # The local run won: like a missed deadline, the stream stays up and the result is reported late.
        self._give_up(frame.index, mode, nbytes, waited)
        record.update(reason="hedge", network_ms=round(waited * 1e3, 3))


def _server_s(result: pb.Result) -> float:
    """Seconds the edge held a frame (queue + compute): what the link did not take of its round trip."""
    return (result.server_ms + result.queue_ms) / 1e3


def _code_name(code: int) -> str:
    import grpc

    for c in grpc.StatusCode:
        if c.value[0] == code:
            return c.name
    return str(code)

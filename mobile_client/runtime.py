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
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from protos import splitedge_pb2 as pb
from split import SplitModel
from split.adapters import Outputs

from mobile_client.controller import Controller
from mobile_client.edge_client import DeadlineExceeded, EdgeClient, EdgeUnavailable
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
            backoff = self.controller.server_failed(self._now())
            self.warnings.append(f"edge unavailable ({exc}); local mode, retry in {backoff:.1f} s")
            return False
        self.controller.server_ok(self._now())
        self._adopt_edge_latencies()
        self._abandoned.clear()
        self._measure_rtt()
        return True

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
        for late in self.client.take_late():
            abandoned = self._abandoned.pop(late.frame_id, None)
            if abandoned is not None:
                mode, nbytes = abandoned
                server_s = (late.result.server_ms + late.result.queue_ms) / 1e3
                self.controller.observe_late(mode, nbytes, late.seconds, server_s, late.arrived - self._t0)

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
                                  "error": None, "fallback": False, "filtered": False}
        if decision.reason == "no-server" or (decision.mode != "local" and not self._connected()):
            record["fallback"] = True  # the frame wanted the edge; local serves it meanwhile
            self._run_local(image, record, now)
        elif decision.mode == "local":
            self._run_local(image, record, now)
        else:
            self._run_remote(decision.mode, frame, image, record, now, decision.deadline_s)
        record["e2e_ms"] = round((time.perf_counter() - start) * 1e3, 3)
        return record

    def _run_local(self, image: torch.Tensor, record: dict[str, Any], now: float) -> None:
        out, ms = self._compute(self.model.full, image)
        self.controller.observe_local(ms / 1e3, now)
        record.update(mode="local", head_ms=round(ms, 3),
                      detections=_local_detections(out, self.model.family, self.options.min_score))

    def _run_remote(self, mode: str, frame: Frame, image: torch.Tensor, record: dict[str, Any], now: float,
                    deadline_s: float | None = None) -> None:
        if mode == "split":
            payload, head_ms = self._compute(self.model.encode_message, image)
        else:
            payload, head_ms = self._compute(self.model.encode_image, image, self.options.jpeg_quality)
        record["head_ms"] = round(head_ms, 3)
        if payload is None:  # the prefilter found nothing of interest: send nothing
            record["filtered"] = True
            return
        record["payload_bytes"] = payload.ByteSize()
        # The deadline is on the controller's clock, from the frame's start: what is left of it after the head.
        wait_s = None if deadline_s is None else max(0.0, deadline_s - self._now())
        try:
            result, seconds = self.client.infer(pb.Frame(frame_id=frame.index, payload=payload), self.options.timeout_s,
                                                deadline_s=wait_s)
        except DeadlineExceeded as exc:
            # Not a server failure: the stream stays up, the result (if it comes) is reported as late.
            self._report_late()  # what arrived while waiting is older news than this miss
            self._abandoned[frame.index] = (mode, record["payload_bytes"])
            self.controller.missed(mode, record["payload_bytes"], exc.waited_s, self._now())
            record.update(fallback=True, reason="deadline", network_ms=round(exc.waited_s * 1e3, 3))
            self._run_local(image, record, now)
            record["head_ms"] = round(record["head_ms"] + head_ms, 3)
            return
        except (EdgeUnavailable, ValueError) as exc:
            if isinstance(exc, EdgeUnavailable):
                self.client.close()
                self.controller.server_failed(self._now())
            record.update(fallback=True, error=str(exc))
            self._run_local(image, record, now)
            record["head_ms"] = round(record["head_ms"] + head_ms, 3)
            return
        server_s = (result.server_ms + result.queue_ms) / 1e3
        self._report_late()  # late results that arrived while waiting came first
        self.controller.observe(mode, record["payload_bytes"], seconds, server_s, self._now())
        record.update(network_ms=round(max(seconds - server_s, 0.0) * 1e3, 3), server_ms=round(result.server_ms, 3))
        if result.code != 0:
            record["error"] = f"{_code_name(result.code)}: {result.error}"
            return
        record["detections"] = _remote_detections(result, self.model.family, self.options.min_score)


def _code_name(code: int) -> str:
    import grpc

    for c in grpc.StatusCode:
        if c.value[0] == code:
            return c.name
    return str(code)

"""The shared edge of ``splitedge fleet``: one queue per model part, batches priced by a measured curve.

Why a model of its own: N devices on one edge meet in its scheduler, and their frames wait there
before compute; that wait is what makes a fleet different from N single devices. The model is
``edge_server.scheduler``'s policy (repeated, not imported: DESIGN.md §2), in virtual time:

* One FIFO per model part: split tails and full-model runs of offloaded JPEGs do not share a batch.
* ``workers`` workers (one by default: the edge profile's times are one accelerator's). When one is
  free, the part whose oldest frame has waited longest goes, if it holds ``batch_size`` frames or
  that frame has waited ``batch_wait_ms``; it takes up to ``batch_size`` frames. A lone frame on a
  quiet edge therefore waits ``batch_wait_ms``, as on the real server.
* A batch of ``b`` takes the profile's one-frame time times ``ms(b) / ms(1)`` of the curve
  (:class:`EdgeCurve`): a shape, so that a curve measured on another model or machine (the one
  ``bench/throughput.py --curve`` writes is of the default recipe's tail) still prices this
  profile's frames, and batch 1 is always the profile's time. No curve: no batching gain (linear),
  and the output says so.
* Each device's answers leave in the order its messages came (one stream per device, link probes
  among them), as the servicer keeps stream order. A result reports its ``queue`` (the wait before
  compute and behind its own stream) and its ``compute`` (its batch's time), as ``Result.queue_ms``
  and ``server_ms`` do.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from mobile_client.costs import ModeCosts

from .sim_io import PROBE_REPLY_BYTES, mode_table

__all__ = ["EdgeCurve", "EdgeConfig", "Entry", "SharedEdge", "load_edge_curve", "default_edge_curve",
           "DEFAULT_CURVE_FILE", "DEFAULT_BATCH_SIZE", "DEFAULT_BATCH_WAIT_MS", "EDGE_EVENT", "RESULT_EVENT"]

# edge_server.scheduler's defaults, repeated: the simulators may not import the server (DESIGN.md §2);
# tests/test_fleet.py checks that the two agree.
DEFAULT_BATCH_SIZE = 4
DEFAULT_BATCH_WAIT_MS = 0.0
DEFAULT_CURVE_FILE = Path(__file__).resolve().parents[1] / "results" / "throughput" / "curve.json"
PARTS = {"split": "tail", "offload": "full"}
EDGE_EVENT, RESULT_EVENT = 0, 1  # at one instant the edge acts first, then answers reach devices


class _Clock(Protocol):
    now: float

    def at(self, t: float, prio: int, fn: Callable[..., None], *args: Any) -> None: ...

@dataclass(frozen=True)
class EdgeCurve:
    """ms of a batch of ``b`` frames over ms of one frame, per part; a shape, so that a curve measured on another
    model or machine still prices this profile's frames (batch 1 is always the profile's time)."""

    relative: dict[str, dict[int, float]]  # part ("tail", "full") -> {batch size: ms(b) / ms(1)}
    source: str  # where it came from, said in the output

    @classmethod
    def linear(cls, why: str = "no measured curve") -> EdgeCurve:
        return cls({"tail": {1: 1.0}, "full": {1: 1.0}}, f"linear: no batching gain ({why})")

    def factor(self, part: str, b: int) -> float:
        """Linear between measured sizes; beyond the largest, that batch's per-frame cost (no gain claimed)."""
        pts = self.relative[part]
        if b in pts:
            return pts[b]
        sizes = sorted(pts)
        if b > sizes[-1]:
            return pts[sizes[-1]] * b / sizes[-1]
        lo = max(s for s in sizes if s < b)
        hi = min(s for s in sizes if s > b)
        return pts[lo] + (pts[hi] - pts[lo]) * (b - lo) / (hi - lo)


def _shape(ms: dict[Any, Any], where: str) -> dict[int, float]:
    try:
        pts = {int(b): float(v) for b, v in ms.items()}
    except (TypeError, ValueError):
        raise ValueError(f"{where}: batch sizes must be integers and times numbers") from None
    if any(b < 1 for b in pts) or not all(math.isfinite(v) and v > 0 for v in pts.values()):
        raise ValueError(f"{where}: batch sizes must be >= 1 and times positive")
    if 1 not in pts:
        raise ValueError(f"{where}: needs the time of a batch of 1")
    return {b: v / pts[1] for b, v in sorted(pts.items())}


def load_edge_curve(path: str | Path) -> EdgeCurve:
    """A batch-throughput curve from JSON; ValueError with one line naming the file otherwise.

    ``{"batch_ms": {"1": ms, "2": ms, ...}}`` (the tail's; full-model runs get the same shape), or
    ``{"batch_ms": {"tail": {...}, "full": {...}}}``, or what ``bench/throughput.py --curve`` writes
    (``{"points": [{"batch": b, "fps_1_worker": f}, ...]}``, read as ``ms = 1000 b / f``).
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"edge curve {p} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"edge curve {p} is not readable JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("points"), list):
        try:
            ms = {int(pt["batch"]): 1000.0 * int(pt["batch"]) / float(pt["fps_1_worker"]) for pt in data["points"]}
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            raise ValueError(f"edge curve {p}: each point needs 'batch' and a positive 'fps_1_worker'") from None
        tail = _shape(ms, str(p))
        model = data.get("model", "?")
        return EdgeCurve({"tail": tail, "full": tail},
                         f"measured: {p} ({model}'s tail, 1 worker; its shape scales this profile's times)")
    batch_ms = data.get("batch_ms") if isinstance(data, dict) else None
    if not isinstance(batch_ms, dict) or not batch_ms:
        raise ValueError(f"edge curve {p}: expected {{\"batch_ms\": {{\"1\": ms, \"2\": ms, ...}}}}")
    if set(batch_ms) <= set(PARTS.values()):
        parts = {k: _shape(v, f"{p} [{k}]") for k, v in batch_ms.items() if isinstance(v, dict)}
        if len(parts) != len(batch_ms):
            raise ValueError(f"edge curve {p}: 'tail' and 'full' must map batch sizes to ms")
        tail = parts.get("tail", parts.get("full"))
        return EdgeCurve({"tail": tail, "full": parts.get("full", tail)}, f"given: {p} (its shape)")
    tail = _shape(batch_ms, str(p))
    return EdgeCurve({"tail": tail, "full": tail}, f"given: {p} (its shape, for tails and full runs)")


def default_edge_curve() -> EdgeCurve:
    """The measured curve of ``bench/throughput.py --curve`` if this checkout has one, else no batching gain."""
    shown = DEFAULT_CURVE_FILE.relative_to(DEFAULT_CURVE_FILE.parents[2])
    if DEFAULT_CURVE_FILE.is_file():
        try:
            return load_edge_curve(shown if shown.is_file() else DEFAULT_CURVE_FILE)
        except ValueError as exc:
            return EdgeCurve.linear(f"unreadable {shown}: {exc}")
    return EdgeCurve.linear(f"no {shown}")


@dataclass(frozen=True)
class EdgeConfig:
    """The shared edge: batching as ``splitedge serve``'s scheduler (bounded batch size and wait)."""

    curve: EdgeCurve = field(default_factory=EdgeCurve.linear)
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS
    workers: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.workers < 1:
            raise ValueError("--batch-size and the edge's workers must be at least 1")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise ValueError("--batch-wait-ms must be in 0..10000")


@dataclass(eq=False)
class Entry:
    """A frame or link probe on its way through the edge, in its device's stream."""

    dev: Any  # the fleet's device: .stream, .down, .answered()
    msg_id: int
    mode: str  # "split", "offload" or "probe"
    sent: float
    at_edge: float
    ready: bool = False
    started: float = 0.0
    done_at: float = 0.0
    compute_s: float = 0.0


class SharedEdge:
    """One queue per model part, ``workers`` workers, batches priced by the curve; per-device stream order."""

    def __init__(self, loop: _Clock, config: EdgeConfig, costs: ModeCosts, result_bytes: int) -> None:
        self.loop, self.cfg, self.result_bytes = loop, config, result_bytes
        self.edge_s = {m: mode_table(costs)[m][2] for m in PARTS}
        self.queues: dict[str, deque[Entry]] = {m: deque() for m in PARTS}
        self.wait_s = config.batch_wait_ms / 1e3
        self.busy, self.busy_s, self.batches = 0, 0.0, 0
        self.waits: list[float] = []  # per computed frame: its queue (s), as its Result reports it
        self._armed: set[float] = set()

    def arrive(self, entry: Entry) -> None:
        entry.dev.stream.append(entry)
        if entry.mode == "probe":  # answered at once, but in its stream's order
            entry.ready, entry.done_at = True, entry.at_edge
            self._flush(entry.dev)
            return
        self.queues[entry.mode].append(entry)
        self._pump()

    def _due(self, now: float) -> str | None:
        best, oldest = None, math.inf
        for mode, q in self.queues.items():
            if q and (len(q) >= self.cfg.batch_size or now >= q[0].at_edge + self.wait_s) and q[0].at_edge < oldest:
                best, oldest = mode, q[0].at_edge
        return best

    def _pump(self) -> None:
        now = self.loop.now
        while self.busy < self.cfg.workers and (mode := self._due(now)) is not None:
            q = self.queues[mode]
            batch = [q.popleft() for _ in range(min(len(q), self.cfg.batch_size))]
            seconds = self.edge_s[mode] * self.cfg.curve.factor(PARTS[mode], len(batch))
            self.busy, self.busy_s, self.batches = self.busy + 1, self.busy_s + seconds, self.batches + 1
            for e in batch:
                e.started = now
            self.loop.at(now + seconds, EDGE_EVENT, self._finished, batch, seconds)
        if self.busy < self.cfg.workers:  # wake up when the oldest waiting frame has waited long enough
            heads = [q[0].at_edge + self.wait_s for q in self.queues.values() if q]
            if heads and min(heads) not in self._armed:
                self._armed.add(min(heads))
                self.loop.at(min(heads), EDGE_EVENT, self._timer, min(heads))

    def _timer(self, t: float) -> None:
        self._armed.discard(t)
        self._pump()

    def _finished(self, batch: list[Entry], seconds: float) -> None:
        self.busy -= 1
        for e in batch:
            e.ready, e.done_at, e.compute_s = True, self.loop.now, seconds
        for dev in dict.fromkeys(e.dev for e in batch):
            self._flush(dev)
        self._pump()

    def _flush(self, dev: Any) -> None:
        """Answer the head of a device's stream while it is ready: results leave in the order frames came."""
        now = self.loop.now
        while dev.stream and dev.stream[0].ready:
            e = dev.stream.popleft()
            if e.mode == "probe":
                answered = dev.down.send(PROBE_REPLY_BYTES, now).arrival_s
                self.loop.at(answered, RESULT_EVENT, dev.answered, e, answered, now - e.at_edge, 0.0)
                continue
            queue_s = (e.started - e.at_edge) + (now - e.done_at)  # (exactly 0 when nothing waited)
            self.waits.append(queue_s)
            arrived = dev.down.send(self.result_bytes, now).arrival_s
            self.loop.at(arrived, RESULT_EVENT, dev.answered, e, arrived, queue_s + e.compute_s, e.compute_s)

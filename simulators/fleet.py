"""Many devices on one edge (``splitedge fleet``): when does the shared edge saturate, and does the controller notice?

A single-device simulation (:mod:`simulators.experiment`) gives the edge to one device, so the
edge never queues. Here N devices share it, and each one is the real device logic: a
:class:`~mobile_client.session.Session` driving a :class:`~mobile_client.controller.Controller`, with
its own trace-driven uplink (:class:`~simulators.links.Link`), as in ``splitedge simulate``.

The model, and why:

* **One virtual clock, one event heap.** The session driver is synchronous (``io.remote()`` returns
  the frame's outcome), but with a shared edge that outcome depends on frames other devices have not
  sent yet. So each device runs on its own thread, and a baton makes the run sequential and
  deterministic: exactly one thread runs at a time, the loop pops the earliest event and hands the
  baton to the device it concerns, which gives it back when it must wait (for a result, or for the
  clock to reach the moment it looks at what came back). A device with nothing at the edge runs
  ahead on its own clock without waiting, since nothing from the edge can concern it; only what it
  reads from the edge has to wait for the loop to get there. At one instant, edge events come before
  results, results before timers (a result on the hedge's instant wins, as in
  :class:`~simulators.sim_io.SimIO`), timers before devices looking at their arrivals.
* **The edge** batches as ``splitedge serve``'s scheduler does, with batch times from a measured
  curve, and answers each device in its stream's order, reporting each result's queue and compute
  as ``Result.queue_ms`` and ``server_ms`` do (:mod:`simulators.edge_queue`).
* **A mix of traces.** Device ``i`` gets trace ``i mod T`` and, but for the first, a random starting
  point in it and a random camera phase in one frame interval, so devices on one trace are not in
  lockstep and frames do not reach the edge all at once. For ``N < T`` the sweep runs ``ceil(T/N)``
  separate fleets of ``N`` (fleet ``r`` on traces ``r*N ...``) and pools them, so every trace counts
  at every N; N = 1 is then every trace alone, which is ``splitedge simulate``'s ``auto`` (with the
  edge's batch wait, which a lone frame pays).
* **What is not modelled**: device compute jitter, edge compute jitter and warm-up, an edge that
  refuses frames (``max_in_flight``), replicas. The first frames of all devices start within one
  frame interval of each other, as a fleet switched on at once.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from mobile_client.controller import Controller
from mobile_client.costs import ModeCosts, hedge_local_ms
from mobile_client.session import Arrival, Encoded, Outcome, Session

from .edge_queue import EDGE_EVENT as _EDGE, EdgeConfig, Entry, SharedEdge
from .experiment import RESULT_BYTES, RTT_PINGS
from .links import Link
from .sim_io import PROBE_REPLY_BYTES, mode_table
from .traces import Trace

__all__ = ["FleetConfig", "FleetRow", "simulate_fleet", "sweep_fleet", "devices_simulated", "knee"]

_TIMER, _WAKE = 2, 3  # after the edge's events and answers at one instant (see the module docstring)


@dataclass(frozen=True)
class FleetConfig:
    """Everything but the traces and N. ``costs`` are the simulated device's (already scaled);
    ``controller_factory(costs, feedback)`` builds each device's controller (default: the live client's,
    with the edge-load feedback on or off)."""

    costs: ModeCosts
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    fps: float = 1.0
    frames: int = 120
    delay_ms: float = 20.0
    result_bytes: int = RESULT_BYTES
    seed: int = 0
    controller_factory: Callable[[ModeCosts, bool], Controller] | None = None

    def __post_init__(self) -> None:
        if not (self.fps > 0 and math.isfinite(self.fps)) or self.frames < 1 or self.delay_ms < 0:
            raise ValueError("fps must be positive, frames >= 1 and delay_ms >= 0")


class _Loop:
    """The event heap and the baton: the loop's thread and the device threads never run at the same time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.main = threading.Semaphore(0)
        self.error: BaseException | None = None
        self._heap: list[tuple[float, int, int, Callable[..., None], tuple]] = []
        self._seq = itertools.count()

    def at(self, t: float, prio: int, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._heap, (t, prio, next(self._seq), fn, args))

    def run(self) -> float:
        while self._heap:
            t, _, _, fn, args = heapq.heappop(self._heap)
            self.now = t
            fn(*args)
            if self.error is not None:
                raise self.error
        return self.now


class _Device:
    """One device: its links, its Session and Controller, a :class:`SessionIO` on the fleet's clock, a thread."""

    has_edge = True

    def __init__(self, loop: _Loop, edge: SharedEdge, trace: Trace, phase_s: float, config: FleetConfig,
                 feedback: bool, progress: Callable[[], None] | None) -> None:
        self.loop, self.edge, self.progress = loop, edge, progress
        self.up = Link(trace, delay_ms=config.delay_ms, seed=config.seed)
        self.down = Link(None, delay_ms=config.delay_ms, seed=config.seed + 1000)
        self.costs, self.table = config.costs, mode_table(config.costs)
        self.phase_s, self.fps, self.frames = phase_s, config.fps, config.frames
        self.clock = self._start = phase_s
        self.outstanding = 0  # frames and probes sent whose answer has not reached this device
        self.stream: deque[Entry] = deque()  # its messages at the edge, in order (the edge's side)
        self.pending: list[tuple[float, int, Arrival]] = []  # answers nobody waits for, by arrival
        self.e2e_ms: list[float] = []
        self.modes: list[str] = []
        self._seq = itertools.count()
        self._probe_seq = 0
        self._waiting: tuple[int, str, float, float] | None = None  # (frame id, timer kind, sent, start)
        self._outcome: Outcome | None = None
        self._sem = threading.Semaphore(0)
        self.thread: threading.Thread | None = None
        factory = config.controller_factory or (lambda costs, fb: Controller(costs, edge_load=fb))
        self.session = Session(factory(config.costs, feedback), self, rtt_pings=RTT_PINGS)

    # -- the baton -----------------------------------------------------------------------------
    def start(self) -> None:  # on the loop's thread
        self.thread = threading.Thread(target=self._body, daemon=True)
        self.thread.start()
        self.loop.main.acquire()

    def _resume(self) -> None:  # on the loop's thread: run the device until it waits again
        self._sem.release()
        self.loop.main.acquire()

    def _block(self) -> None:  # on the device's thread
        self.loop.main.release()
        self._sem.acquire()

    def _body(self) -> None:
        try:
            self.session.connect()
            for i in range(self.frames):
                captured = self.phase_s + i / self.fps
                self.begin(captured)
                served = self.session.step(i, None)
                self.e2e_ms.append((served.done_s - captured) * 1e3)
                self.modes.append(served.mode)
                if self.progress is not None:
                    self.progress()
        except BaseException as exc:  # a bug: stop the whole run with it
            self.loop.error = exc
        finally:
            self.loop.main.release()

    # -- what the edge tells it (on the loop's thread) -----------------------------------------
    def answered(self, e: Entry, at: float, server_s: float, compute_s: float) -> None:
        self.outstanding -= 1
        if self._waiting is not None and self._waiting[0] == e.msg_id and e.mode != "probe":
            start = self._waiting[3]
            self._waiting, self.clock = None, at
            self._outcome = Outcome("result", at, seconds=at - start - self.table[e.mode][0], server_s=server_s,
                                    network_s=at - e.sent - server_s, compute_s=compute_s)
            self._resume()
            return
        heapq.heappush(self.pending, (at, next(self._seq), Arrival(e.msg_id, at - e.sent, server_s, at)))

    def _timeout(self, frame_id: int, at: float) -> None:
        if self._waiting is None or self._waiting[0] != frame_id:
            return  # its result came first
        _, kind, sent, start = self._waiting
        self._waiting, self.clock = None, at
        if kind == "hedge":
            self._outcome = Outcome("hedge", at, seconds=at - sent, network_s=at - sent, device_s=at - start)
        else:
            self._outcome = Outcome("deadline", at, seconds=at - sent, network_s=at - sent)
        self._resume()

    # -- SessionIO (on the device's thread) ----------------------------------------------------
    def now(self) -> float:
        return self.clock

    def begin(self, at_s: float) -> None:
        self.clock = self._start = at_s if at_s > self.clock else self.clock

    def connected(self) -> bool:
        return True

    def connect(self, timeout_s: float) -> dict[str, float]:
        return {}  # plan with the profile, as the single-device simulator (Describe is only called at connect)

    def close(self) -> None:
        pass

    def send_probe(self, nbytes: int) -> int:
        self._probe_seq += 1
        entry = Entry(self, -self._probe_seq, "probe", self.clock, self.up.send(nbytes, self.clock).arrival_s)
        if self.outstanding:  # behind its own frames at the edge: the edge answers it in stream order
            self.outstanding += 1
            self.loop.at(entry.at_edge, _EDGE, self.edge.arrive, entry)
        else:  # nothing of its own there: answered at once, as SimIO does
            answered = self.down.send(PROBE_REPLY_BYTES, entry.at_edge).arrival_s
            heapq.heappush(self.pending, (answered, next(self._seq),
                                          Arrival(entry.msg_id, answered - self.clock, 0.0, answered)))
        return entry.msg_id

    def arrivals(self) -> list[Arrival]:
        if self.outstanding:  # an answer may be on its way: let the loop catch up with this clock first
            self.loop.at(self.clock, _WAKE, self._resume)
            self._block()
        out = []
        while self.pending and self.pending[0][0] <= self.clock:
            out.append(heapq.heappop(self.pending)[2])
        return out

    def run_local(self, frame: Any) -> tuple[Any, float]:
        dev_s = self.table["local"][0]
        self.clock = self.clock + dev_s
        return None, dev_s

    def encode(self, frame: Any, mode: str, hedge: bool) -> Encoded:
        dev_s, nbytes, _ = self.table[mode]
        self.clock = self._start + dev_s
        return Encoded(True, nbytes, dev_s)

    def remote(self, frame_id: int, frame: Any, mode: str, encoded: Encoded, deadline_s: float | None,
               hedge: bool) -> Outcome:
        sent = self.clock
        entry = Entry(self, frame_id, mode, sent, self.up.send(self.table[mode][1], sent).arrival_s)
        self.outstanding += 1
        self.loop.at(entry.at_edge, _EDGE, self.edge.arrive, entry)
        self._waiting = (frame_id, "hedge" if hedge else "deadline", sent, self._start)
        if hedge:  # the local continuation's end: whichever comes first serves the frame
            limit: float | None = sent + hedge_local_ms(self.costs, mode) / 1e3
        else:  # given up at the deadline, at once if the head outlasted it (as SimIO)
            limit = None if deadline_s is None else max(deadline_s, sent)
        if limit is not None:
            self.loop.at(limit, _TIMER, self._timeout, frame_id, limit)
        self._block()
        assert self._outcome is not None
        return self._outcome


@dataclass(frozen=True)
class FleetRow:
    """One point of the sweep (a row of ``fleet.csv``): N devices, feedback on or off."""

    devices: int
    feedback: bool
    median_e2e_ms: float
    p95_e2e_ms: float
    mean_e2e_ms: float
    share_local: float
    share_split: float
    share_offload: float
    edge_utilization: float
    median_queue_ms: float  # over the frames the edge computed (nan: none reached it)
    edge_frames: int
    mean_batch: float
    fleets: int  # separate fleets of N pooled into the row (N < number of traces)

    CSV_COLUMNS = ("devices", "feedback", "median_e2e_ms", "p95_e2e_ms", "mean_e2e_ms", "share_local", "share_split",
                   "share_offload", "edge_utilization", "median_queue_ms", "edge_frames", "mean_batch", "fleets")

    def csv_row(self) -> list[str]:
        return [str(self.devices), "on" if self.feedback else "off", f"{self.median_e2e_ms:.3f}",
                f"{self.p95_e2e_ms:.3f}", f"{self.mean_e2e_ms:.3f}", f"{self.share_local:.4f}",
                f"{self.share_split:.4f}", f"{self.share_offload:.4f}", f"{self.edge_utilization:.4f}",
                f"{self.median_queue_ms:.3f}", str(self.edge_frames), f"{self.mean_batch:.3f}", str(self.fleets)]


def _fleet_plan(n: int, traces: int, seed: int) -> list[list[tuple[int, float, float]]]:
    """Per fleet, per device: (trace index, start in the trace as a fraction of its period, camera phase as a
    fraction of a frame interval); the first device of each fleet starts at 0, 0."""
    fleets = []
    for r in range(math.ceil(traces / n) if n < traces else 1):
        rng = np.random.default_rng([seed, n, r])
        draws = rng.random((n, 2))
        fleets.append([((r * n + i) % traces, 0.0 if i == 0 else float(draws[i, 0]),
                        0.0 if i == 0 else float(draws[i, 1])) for i in range(n)])
    return fleets


class _Shifted(Trace):
    """A trace started ``offset_s`` into its loop, so devices on one trace do not see the same moment."""

    def __init__(self, trace: Trace, offset_s: float) -> None:
        super().__init__(f"{trace.name}@{offset_s:.1f}s")
        self._trace, self._off = trace, offset_s
        self._c0 = float(trace.cumulative_bytes(offset_s))

    @property
    def period_s(self) -> float:
        return self._trace.period_s

    @property
    def bytes_per_period(self) -> float:
        return self._trace.bytes_per_period

    def cumulative_bytes(self, t: Any) -> Any:
        c = self._trace.cumulative_bytes(np.maximum(t, 0.0) + self._off) - self._c0
        return np.maximum(c, 0.0) if isinstance(c, np.ndarray) else max(float(c), 0.0)

    def time_at_cumulative(self, b: Any) -> Any:
        t = self._trace.time_at_cumulative(np.maximum(b, 0.0) + self._c0) - self._off
        return np.maximum(t, 0.0) if isinstance(t, np.ndarray) else max(float(t), 0.0)


def simulate_fleet(traces: Sequence[Trace], n: int, config: FleetConfig, feedback: bool = True,
                   progress: Callable[[], None] | None = None) -> FleetRow:
    """N devices on one edge over a mix of traces (pooled over ``ceil(T/N)`` fleets when N < T)."""
    if n < 1 or not traces:
        raise ValueError("a fleet needs at least one device and one trace")
    e2e: list[float] = []
    modes: list[str] = []
    waits: list[float] = []
    busy = horizon = 0.0
    batches = 0
    old_stack = threading.stack_size(512 * 1024)  # a thousand device threads need little stack each
    try:
        plan = _fleet_plan(n, len(traces), config.seed)
        for fleet in plan:
            loop = _Loop()
            edge = SharedEdge(loop, config.edge, config.costs, config.result_bytes)
            devices = []
            for index, start, phase in fleet:
                trace = traces[index]
                shifted = _Shifted(trace, start * trace.period_s) if start > 0 else trace
                dev = _Device(loop, edge, shifted, phase / config.fps, config, feedback, progress)
                loop.at(dev.phase_s, _WAKE, dev.start)
                devices.append(dev)
            end = loop.run()
            for dev in devices:
                if dev.thread is not None:
                    dev.thread.join()
                if len(dev.e2e_ms) != config.frames:
                    raise RuntimeError("a simulated device stopped before its last frame")  # a bug, not an input
                e2e += dev.e2e_ms
                modes += dev.modes
            waits += edge.waits
            busy, horizon, batches = busy + edge.busy_s, horizon + end * config.edge.workers, batches + edge.batches
    finally:
        threading.stack_size(old_stack)
    x = np.asarray(e2e)
    share = {m: modes.count(m) / len(modes) for m in ("local", "split", "offload")}
    return FleetRow(n, feedback, float(np.median(x)), float(np.percentile(x, 95)), float(x.mean()), share["local"],
                    share["split"], share["offload"], busy / horizon if horizon > 0 else 0.0,
                    float(np.median(waits)) * 1e3 if waits else math.nan, len(waits),
                    len(waits) / batches if batches else 0.0, len(plan))


def sweep_fleet(traces: Sequence[Trace], ns: Sequence[int], config: FleetConfig,
                feedbacks: Sequence[bool] = (True, False),
                progress: Callable[[], None] | None = None) -> list[FleetRow]:
    """Every N with the feedback on and off: the rows of ``fleet.csv``, in that order."""
    return [simulate_fleet(traces, n, config, fb, progress) for n in ns for fb in feedbacks]


def devices_simulated(n: int, traces: int) -> int:
    """How many devices :func:`simulate_fleet` runs for N devices over T traces (``progress`` is called once per
    frame of each)."""
    return n * (math.ceil(traces / n) if n < traces else 1)


def knee(rows: Sequence[FleetRow], feedback: bool) -> dict[str, Any]:
    """The smallest N where the median e2e reaches twice the N = 1 median (the smallest N's, if 1 was not swept),
    interpolated on log N between the two sweep points around the crossing; None beyond the largest N."""
    pts = sorted((r.devices, r.median_e2e_ms) for r in rows if r.feedback == feedback)
    if not pts:
        raise ValueError("no rows for this feedback setting")
    base_n, base = pts[0]
    target = 2.0 * base
    out: dict[str, Any] = {"feedback": feedback, "base_devices": base_n, "base_median_e2e_ms": round(base, 3),
                           "target_median_e2e_ms": round(target, 3)}
    for (n0, m0), (n1, m1) in zip(pts, pts[1:]):
        if m1 >= target:
            frac = (target - m0) / (m1 - m0) if m1 > m0 else 1.0
            knee_n = math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0)))
            return out | {"knee_devices": round(knee_n, 1), "between": [n0, n1],
                          "note": f"interpolated on log N between the sweep points {n0} and {n1}"}
    return out | {"knee_devices": None, "between": None,
                  "note": f"beyond the largest N ({pts[-1][0]}): the median e2e never reached 2x the N={base_n} median"}

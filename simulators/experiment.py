"""Socket-free, trace-driven simulation of the device's policies (``splitedge simulate``).

The point of this module is to answer "which mode, and is the controller any
good?" for a link that is not on the desk: it replays a bandwidth trace
through the same :class:`~simulators.links.Link` the emulator uses and runs
the live device's session driver (:class:`~mobile_client.session.Session`)
and controller on a virtual clock (:class:`~simulators.sim_io.SimIO`), so a
simulated figure and a live run (``splitedge run`` behind ``splitedge
emulate``) follow the same rules step for step.

Model, and why each choice was made:

* **Session start.**  Frame ``i`` is captured at ``i / fps`` for every
  policy; ``auto``'s session connects at 0
  (:meth:`~mobile_client.session.Session.connect`): its :data:`RTT_PINGS`
  one-byte pings (and, unhedged, the connect probe) go out then and are
  answered in the background while the first frames run, as live.
* **Frames and queueing.**  The device serves one frame at a time and waits
  for a frame's result before starting the next, like the live device, so a
  frame starts at ``max(arrival, previous done)`` and ``e2e = done -
  arrival`` includes the time spent waiting behind earlier frames.  A policy
  whose per-frame time exceeds the frame interval therefore pays for it in
  every later frame (files and videos). With ``realtime`` (a live camera)
  the device takes the newest frame each time it is free and the older ones
  are skipped (records with mode ``"skipped"``), so results stay fresh.
* **Modes** (DESIGN.md §1/§3), with compute times from measured profiles:
  ``local`` the device's full model; ``split`` the device head, uplink
  ``bytes_split``, edge tail, downlink result; ``offload`` the device JPEG
  encode, uplink ``bytes_jpeg``, edge full model (the profile's
  ``offload_edge`` already includes the JPEG decode), downlink result. The
  result (detections, ~300 bytes) travels on a separate downlink
  :class:`Link` with the same one-way delay and no rate limit unless a
  downlink trace is given, so with a constant uplink a remote frame takes
  exactly DESIGN.md's ``compute + wire_bytes * 8 / B + RTT`` (``RTT = 2 *
  delay``; wire bytes include the link's TCP/IP headers).
* **Device slowdown** ``K`` multiplies the device-side times with
  :func:`mobile_client.costs.scaled` (the stand-in for a phone or a
  Raspberry Pi).  The controller is given the *scaled* costs, i.e. a profile
  measured on that device, as ``splitedge profile --device-slowdown K``
  would write it.
* **Policies.**  ``auto`` is the session driver with the live client's
  controller: deadlines, hedging, link probes and late results as
  :mod:`simulators.sim_io` models them. A hedged split frame's local
  continuation costs ``ModeCosts.t_resume_device_ms``, which ``splitedge
  profile`` does not measure on its own:
  :func:`mobile_client.costs.costs_from_profiles` prices it as the device's
  tail time. The speculative run's CPU time and energy are not modelled.
  ``local``, ``split``, ``offload`` always use one mode, and ``oracle``
  knows the future channel: for every frame it :meth:`Link.peek`\\ s each
  mode's actual completion time and commits the earliest. They have no
  deadline and never hedge: they are the yardsticks. Because the device
  waits for each result, the uplink is idle again when the next frame
  starts, so the only state carried from frame to frame is the time the
  device becomes free; finishing every frame as early as possible is then
  also optimal for all later frames, and the greedy oracle is the best any
  policy can do (the yardstick for ``auto``). With jitter or loss this holds
  only approximately: which mode ran changes which random draws later frames
  get.
* **Pipelined** (``SimConfig.pipeline``, ``splitedge simulate
  --pipeline``): the session driver's pipelined form
  (:meth:`~mobile_client.session.Session.feed`), for ``auto`` and for the
  fixed modes alike (these then run as the live ``splitedge run --mode M
  --pipeline`` does: a one-mode controller, no deadline, no hedge, no
  pings); a frame's device part overlaps the network/edge stage of the
  frame before when it was already waiting, and the pipeline empties when
  no frame is waiting. The greedy oracle is no longer a bound there (a
  frame's mode changes when the next may start), so it is not run.
* **Compute times are deterministic** (the profile's medians): the
  variation under study is the network's, and a deterministic device keeps
  the oracle exact and the runs replayable.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from mobile_client.controller import Controller
from mobile_client.costs import ModeCosts
from mobile_client.session import Session

from .links import HEADER_BYTES, Link
from .sim_io import SimIO, mode_table
from .traces import ConstantTrace, Trace

__all__ = [
    "POLICIES",
    "FIXED_POLICIES",
    "RESULT_BYTES",
    "FrameRecord",
    "Summary",
    "SimConfig",
    "simulate",
    "summarize",
    "run_experiment",
    "sweep",
    "write_summary_csv",
    "split_wins_ranges",
    "expected_fixed_ms",
]

POLICIES: tuple[str, ...] = ("local", "split", "offload", "auto", "oracle")
FIXED_POLICIES: tuple[str, ...] = ("local", "split", "offload")
RESULT_BYTES = 300  # a handful of detections in a protobuf Result
RTT_PINGS = 3  # one-byte link probes sent at connect, as mobile_client.runtime.RuntimeOptions.rtt_pings


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """One simulated frame: what ran, when, and where the time went (times in s, durations in ms)."""

    frame: int
    mode: str
    reason: str          # the controller's reason for auto, the policy name otherwise
    arrival_s: float
    start_s: float
    done_s: float
    device_ms: float     # head / JPEG encode / full model on the device
    network_ms: float    # uplink + downlink, queueing and delay included
    edge_ms: float
    payload_bytes: int
    probe_bytes: int = 0  # a link probe sent beside this (local) frame (auto only)

    @property
    def e2e_ms(self) -> float:
        """Arrival to result: what the user waits, queueing behind earlier frames included."""
        return (self.done_s - self.arrival_s) * 1e3

    @property
    def queue_ms(self) -> float:
        return (self.start_s - self.arrival_s) * 1e3

    @property
    def skipped(self) -> bool:
        """A real-time camera dropped it (a newer frame was waiting when the device got free)."""
        return self.mode == "skipped"


@dataclass(frozen=True)
class Summary:
    """Per-(trace, policy) statistics; the first seven fields are ``summary.csv``'s columns."""

    trace: str
    policy: str
    frames: int
    mean_e2e_ms: float
    p50_e2e_ms: float
    p95_e2e_ms: float
    mean_bytes: float
    mode_share: dict[str, float] = field(default_factory=dict)
    served: int = 0  # frames served (the others a real-time camera skipped)
    served_fps: float = 0.0
    p50_service_ms: float = 0.0  # from the device picking the frame up to its result
    p95_service_ms: float = 0.0

    CSV_COLUMNS = ("trace", "policy", "frames", "mean_e2e_ms", "p50_e2e_ms", "p95_e2e_ms", "mean_bytes")
    REALTIME_COLUMNS = ("served", "served_fps", "p50_service_ms", "p95_service_ms")

    def csv_row(self, realtime: bool = False) -> list[str]:
        row = [self.trace, self.policy, str(self.frames), f"{self.mean_e2e_ms:.3f}", f"{self.p50_e2e_ms:.3f}",
               f"{self.p95_e2e_ms:.3f}", f"{self.mean_bytes:.1f}"]
        if realtime:
            row += [str(self.served), f"{self.served_fps:.3f}", f"{self.p50_service_ms:.3f}",
                    f"{self.p95_service_ms:.3f}"]
        return row


@dataclass(frozen=True)
class SimConfig:
    """Everything but the uplink trace and the policy: one config runs a whole sweep.

    ``costs`` are the costs *on the simulated device* (already scaled by the
    device slowdown). ``controller_factory`` builds the ``auto`` policy's
    controller from them (default: ``Controller(costs)``, the live client's
    defaults), so an experiment can vary its settings without touching this
    module.
    """

    costs: ModeCosts
    fps: float = 10.0
    frames: int = 600
    delay_ms: float = 20.0
    result_bytes: int = RESULT_BYTES
    down_trace: Trace | None = None
    jitter_ms: float = 0.0
    loss: str | None = None
    seed: int = 0
    controller_factory: Callable[[ModeCosts], Controller] | None = None
    realtime: bool = False  # a live camera: the device takes the newest frame, skipping stale ones
    pipeline: bool = False  # the next frame's device part overlaps this one's network/edge stage (docs/pipeline.md)

    def __post_init__(self) -> None:
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be a positive number, got {self.fps}")
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay_ms and jitter_ms must be >= 0")
        if self.result_bytes < 0:
            raise ValueError(f"result_bytes must be >= 0, got {self.result_bytes}")

    def links(self, trace: Trace) -> tuple[Link, Link]:
        """Fresh uplink and downlink (same delay; independent, seeded jitter/loss streams)."""
        up = Link(trace, delay_ms=self.delay_ms, jitter_ms=self.jitter_ms, loss=self.loss, seed=self.seed)
        down = Link(self.down_trace, delay_ms=self.delay_ms, jitter_ms=self.jitter_ms, loss=self.loss,
                    seed=self.seed + 1000)
        return up, down


class _Camera:
    """Frame ``i`` is captured at ``i / fps``; which one the device takes next when it is free.

    Every-frame semantics (files, videos): the next in order, whenever it
    came. Real-time semantics (a live camera, DESIGN.md §3): the newest one
    captured by then, the older ones not yet taken being skipped (or, if
    none is waiting, the next one when it comes).
    """

    def __init__(self, config: SimConfig) -> None:
        self.fps, self.frames, self.realtime = config.fps, config.frames, config.realtime
        self._next = 0

    def arrival(self, i: int) -> float:
        return i / self.fps

    def waiting(self, at_s: float) -> bool:
        """Whether a frame not yet taken has been captured by ``at_s``."""
        return self._next < self.frames and self.arrival(self._next) <= at_s

    def take(self, free_at: float) -> tuple[int, list[int]] | None:
        """(frame to serve, frames skipped before it), or None when every frame has been handled."""
        i = self._next
        if i >= self.frames:
            return None
        if self.realtime:
            newest = min(self.frames - 1, int(free_at * self.fps) + 1)  # int() may round n - 1e-12 down
            while newest > i and self.arrival(newest) > free_at:
                newest -= 1
            i = max(i, newest)
        skipped = list(range(self._next, i))
        self._next = i + 1
        return i, skipped


def simulate(trace: Trace, policy: str, config: SimConfig) -> list[FrameRecord]:
    """Run ``config.frames`` frames of one policy over one uplink trace; one record per frame, in order.

    ``auto``'s session connects at 0 (its pings and connect probe answered in
    the background, as live), when the first frame is captured.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
    if policy == "oracle" and config.pipeline:
        raise ValueError("the oracle has no pipelined form (see simulators/experiment.py); leave it out")
    up, down = config.links(trace)
    if policy != "auto" and not config.pipeline:
        return _fixed(policy, up, down, config)
    io = SimIO(up, down, config.costs, config.result_bytes)
    if policy == "auto":
        controller, pings = (config.controller_factory or Controller)(config.costs), RTT_PINGS
    else:  # a fixed mode, pipelined: as `splitedge run --mode M --pipeline`, without its pings
        controller, pings = Controller(config.costs, modes=(policy,)), 0
    session = Session(controller, io, rtt_pings=pings, pipeline=config.pipeline)
    session.connect()
    return _drive(session, io, _Camera(config))


def _drive(session: Session, io: SimIO, camera: _Camera) -> list[FrameRecord]:
    """Feed the camera's frames to the session as the device gets free; one record per frame, in order."""
    records: list[FrameRecord] = []

    def add(done: list) -> None:
        records.extend(FrameRecord(s.frame_id, s.mode, s.reason, camera.arrival(s.frame_id), s.start_s, s.done_s,
                                   s.device_s * 1e3, s.network_s * 1e3, s.server_s * 1e3, s.payload_bytes,
                                   s.probe_bytes) for s in done)

    while True:
        if session.busy and not camera.waiting(io.now()):  # nothing to overlap: settle before waiting
            add(session.flush())
        if (taken := camera.take(io.now())) is None:
            break
        i, skipped = taken
        records.extend(_skipped(k, camera.arrival(k)) for k in skipped)
        io.begin(camera.arrival(i))
        add(session.feed(i, None))
    add(session.flush())
    records.sort(key=lambda r: r.frame)  # pipelined, a frame's record may come after the next one's skips
    return records


def _skipped(i: int, arrival: float) -> FrameRecord:
    """A frame a real-time camera dropped: a newer one was waiting when the device got free."""
    return FrameRecord(i, "skipped", "skipped", arrival, arrival, arrival, 0.0, 0.0, 0.0, 0)


def _fixed(policy: str, up: Link, down: Link, config: SimConfig) -> list[FrameRecord]:
    """The yardsticks: one mode throughout, or the oracle's best mode per frame in hindsight; no deadlines."""
    table = mode_table(config.costs)

    def run(mode: str, start: float, commit: bool) -> tuple[float, float, float]:
        """(done s, device s, network s) of ``mode`` started at ``start``; ``commit=False`` only peeks."""
        dev_s, nbytes, edge_s = table[mode]
        sent = start + dev_s
        if mode == "local":
            return sent, dev_s, 0.0
        send_up = up.send if commit else up.peek
        send_down = down.send if commit else down.peek
        at_edge = send_up(nbytes, sent).arrival_s
        done = send_down(config.result_bytes, at_edge + edge_s).arrival_s
        return done, dev_s, done - sent - edge_s

    camera, records = _Camera(config), []
    free_at = 0.0
    while (taken := camera.take(free_at)) is not None:
        i, skipped = taken
        records.extend(_skipped(k, camera.arrival(k)) for k in skipped)
        arrival = camera.arrival(i)
        start = arrival if arrival > free_at else free_at
        mode = policy
        if policy == "oracle":  # earliest completion in hindsight; ties go to the mode that sends fewer bytes
            mode = min(FIXED_POLICIES, key=lambda m: (run(m, start, commit=False)[0], table[m][1]))
        done, dev_s, net_s = run(mode, start, commit=True)
        records.append(FrameRecord(i, mode, policy, arrival, start, done, dev_s * 1e3, net_s * 1e3,
                                   table[mode][2] * 1e3, table[mode][1]))
        free_at = done
    return records


def summarize(trace_name: str, policy: str, records: Sequence[FrameRecord]) -> Summary:
    """Over the served frames: mean/median/95th percentile of e2e (capture to result), mean bytes sent per frame
    (payloads and link probes), how often each mode ran; and the served frames' rate and service times
    (start to result: what the frame took once the device had picked it)."""
    served = [r for r in records if not r.skipped]
    e2e = np.fromiter((r.e2e_ms for r in served), dtype=float, count=len(served))
    service = np.fromiter((r.e2e_ms - r.queue_ms for r in served), dtype=float, count=len(served))
    nbytes = np.fromiter((r.payload_bytes + r.probe_bytes for r in served), dtype=float, count=len(served))
    share = {m: sum(r.mode == m for r in served) / len(served) for m in FIXED_POLICIES}
    span = max(r.done_s for r in served) - min(r.arrival_s for r in records)
    return Summary(trace_name, policy, len(records), float(e2e.mean()), float(np.percentile(e2e, 50)),
                   float(np.percentile(e2e, 95)), float(nbytes.mean()), share, len(served),
                   len(served) / span if span > 0 else math.inf, float(np.percentile(service, 50)),
                   float(np.percentile(service, 95)))


def write_summary_csv(path: Path, summaries: Sequence[Summary], realtime: bool = False,
                      first_column: str = "trace") -> None:
    """``summary.csv`` (or, with ``first_column="mbps"``, ``sweep.csv``): :attr:`Summary.CSV_COLUMNS`, and the
    real-time ones with ``realtime``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow((first_column,) + Summary.CSV_COLUMNS[1:] + (Summary.REALTIME_COLUMNS if realtime else ()))
        w.writerows(s.csv_row(realtime) for s in summaries)


def run_experiment(
    traces: Sequence[tuple[str, Trace]],
    policies: Sequence[str],
    config: SimConfig,
    progress: Callable[[], None] | None = None,
) -> tuple[dict[tuple[str, str], list[FrameRecord]], list[Summary]]:
    """Every policy on every (label, trace); per-frame records keyed by (label, policy), and summaries in order.

    ``progress`` is called once per finished run (the CLI's tqdm bar).
    """
    records: dict[tuple[str, str], list[FrameRecord]] = {}
    summaries: list[Summary] = []
    for label, trace in traces:
        for policy in policies:
            recs = simulate(trace, policy, config)
            records[(label, policy)] = recs
            summaries.append(summarize(label, policy, recs))
            if progress is not None:
                progress()
    return records, summaries


def sweep(
    mbps: Iterable[float],
    policies: Sequence[str],
    config: SimConfig,
    progress: Callable[[], None] | None = None,
) -> list[Summary]:
    """Each policy on a constant uplink at each rate: the "where does split win" figure.

    The summaries' ``trace`` is the rate formatted with ``repr`` so it parses back exactly.
    """
    out = []
    for rate in mbps:
        trace = ConstantTrace(rate)
        for policy in policies:
            out.append(summarize(repr(float(rate)), policy, simulate(trace, policy, config)))
            if progress is not None:
                progress()
    return out


def _split_margin(mbps: float, config: SimConfig) -> float:
    """min(local, offload) - split mean e2e (ms) on a constant link: > 0 where split wins."""
    trace = ConstantTrace(mbps)
    mean = {p: summarize("", p, simulate(trace, p, config)).mean_e2e_ms for p in FIXED_POLICIES}
    return min(mean["local"], mean["offload"]) - mean["split"]


def split_wins_ranges(
    sweep_rows: Sequence[Summary],
    config: SimConfig | None = None,
    refine_steps: int = 12,
) -> list[tuple[float, float]]:
    """Bandwidth ranges (Mbps, inclusive) where split's mean e2e beats both local and offload.

    First the grid points of the sweep where split wins, grouped into
    contiguous runs; then, if ``config`` is given, each inner edge is moved
    to the crossing by bisection in log-bandwidth between the last winning
    and the first losing grid point (``refine_steps`` halvings: a 1.33x
    grid step becomes ~0.01 %), because a figure's caption should not quote
    the grid spacing as a result. Edges at the ends of the sweep stay there:
    the range may extend beyond what was swept.
    """
    by_rate: dict[float, dict[str, float]] = {}
    for row in sweep_rows:
        by_rate.setdefault(float(row.trace), {})[row.policy] = row.mean_e2e_ms
    rates = sorted(r for r, m in by_rate.items() if all(p in m for p in FIXED_POLICIES))
    wins = [by_rate[r]["split"] < min(by_rate[r]["local"], by_rate[r]["offload"]) for r in rates]

    def crossing(win: float, lose: float) -> float:
        if config is None:
            return win
        lo, hi = math.log(win), math.log(lose)
        for _ in range(refine_steps):
            mid = 0.5 * (lo + hi)
            if _split_margin(math.exp(mid), config) > 0:
                lo = mid
            else:
                hi = mid
        return math.exp(lo)

    ranges = []
    i = 0
    while i < len(rates):
        if not wins[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(rates) and wins[j + 1]:
            j += 1
        lo = crossing(rates[i], rates[i - 1]) if i > 0 else rates[i]
        hi = crossing(rates[j], rates[j + 1]) if j + 1 < len(rates) else rates[j]
        ranges.append((lo, hi))
        i = j + 1
    return ranges


def expected_fixed_ms(costs: ModeCosts, mode: str, mbps: float, delay_ms: float, mss: int = 1460) -> float:
    """DESIGN.md §3's latency of a fixed mode on a constant, idle uplink, with the link's wire bytes.

    ``compute + wire_bytes * 8 / B + 2 * delay`` where wire bytes add the
    40-byte TCP/IP header of every ``mss``-byte packet: what the simulator
    must reproduce when no frame waits behind another (the tests' reference).
    """
    dev, nbytes, edge = mode_table(costs)[mode]
    if mode == "local":
        return dev * 1e3
    packets = -(-nbytes // mss)
    wire = nbytes + HEADER_BYTES * packets
    return (dev + edge) * 1e3 + wire * 8 / (mbps * 1e6) * 1e3 + 2 * delay_ms

"""Per-frame choice among local, split and offload (DESIGN.md §3); the rules and why: docs/controller.md.

Pure decision logic, no sockets, no clock (time is passed in): the live client and the simulator
drive the very same object through the one session driver (:mod:`mobile_client.session`), whose
order of calls is the contract (docs/controller.md, "Contract with the caller"). Built from parts:
the cost model (:mod:`~mobile_client.costs`), the link estimate and two-size RTT identification
(:mod:`~mobile_client.estimators`), the probe scheduler (:mod:`~mobile_client.probes`), the stall
tracker, deadlines and server backoff (:mod:`~mobile_client.stalls`), and, for a pipelined session, the frame
on the network/edge stage (:mod:`~mobile_client.pipeline`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .decision import Decision
from .costs import (MODES, REMOTE_MODES, ComputeRatios, ModeCosts, first_mode, neutral_rtt, payload_bytes,
                    predict_latencies, rtt_probe_mode, winnable)
from .estimators import EdgeLoad, LinkEstimator, TransferLog
from .pipeline import StageClock
from .probes import ProbeScheduler
from .stalls import DEADLINE_FACTOR, DEADLINE_SLACK, Deadlines, ServerBackoff, StallTracker

__all__ = ["Controller"]


@dataclass(frozen=True)
class _View:
    """The link and costs as one decision sees them (computed once per :meth:`Controller.choose`)."""

    now_s: float
    costs: ModeCosts
    bps: float | None
    rtt: float | None
    rtt_or_0: float
    raw: dict[str, float]  # predictions with RTT = 0 where unknown
    predicted: dict[str, float]  # shown modes; remote ones only with a bandwidth estimate
    delivering: dict[str, float]  # during a stall: predictions from the link as it was while it delivered
    local_allowed: bool  # local may serve a frame (it is a mode and meets the accuracy constraint)
    occupancy: dict[str, float]  # what the choice compares: ``predicted``, or per-frame stage occupancy when a
    # pipelined session is throughput-bound (mobile_client/pipeline.py)


class Controller:
    """Chooses a mode per frame from measured costs and the link as seen so far.

    ``accuracy`` maps a mode to its accuracy (any scale consistent with ``min_accuracy``); omitted modes count 1.0."""

    def __init__(self, costs: ModeCosts, *, modes: tuple[str, ...] = MODES, accuracy: Mapping[str, float] | None = None,
                 min_accuracy: float = 0.0, hysteresis: float = 0.15, probe_interval_s: float = 5.0,
                 estimator: LinkEstimator | None = None, backoff_initial_s: float = 0.5, backoff_max_s: float = 8.0,
                 backoff_jitter: float = 0.25, edge_load: bool = True,
                 adapt_compute: bool = True, compute_window: int = 9, deadline_factor: float | None = DEADLINE_FACTOR,
                 deadline_slack: float = DEADLINE_SLACK, hedge: bool = True, link_probes: bool = True) -> None:
        modes = tuple(modes)
        if not modes:
            raise ValueError("modes must not be empty")
        if any(m not in MODES for m in modes) or len(set(modes)) != len(modes):
            raise ValueError(f"modes must be distinct values among {MODES}, got {modes}")
        if not 0 <= hysteresis < 1:
            raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis}")
        unknown = sorted(set(accuracy or {}) - set(MODES))
        if unknown:
            raise ValueError(f"unknown mode(s) in accuracy: {unknown}")
        self.costs, self.modes = costs, modes
        self.accuracy: dict[str, float] = {m: 1.0 for m in MODES} | dict(accuracy or {})
        self.min_accuracy, self.hysteresis, self.probe_interval_s = min_accuracy, hysteresis, probe_interval_s
        # Default estimator: samples expire after one probe interval, so that a single probe after a quiet spell
        # is enough to notice a recovered link.
        self.estimator = estimator if estimator is not None else LinkEstimator(max_age_s=probe_interval_s)
        self.adapt_compute = adapt_compute
        self._deadlines = Deadlines(deadline_factor, deadline_slack)
        self.hedge, self.link_probes = hedge, link_probes
        self._backoff = ServerBackoff(backoff_initial_s, backoff_max_s, backoff_jitter)
        self._probes = ProbeScheduler(probe_interval_s)
        self._stalls = StallTracker()
        self._transfers = TransferLog(probe_interval_s)
        self._current: str | None = None
        self._held_against: str | None = None  # the better-predicted mode hysteresis is holding off, and since when
        self._held_since = 0.0
        self._measured, self._load = ComputeRatios(compute_window), EdgeLoad(enabled=edge_load)  # docs: "Edge load"
        self._stages = StageClock()  # a pipelined session's frame on the network/edge (docs/pipeline.md)

    @property
    def mode(self) -> str | None:
        """The steady mode (what hysteresis compares against); probes do not change it."""
        return self._current

    @property
    def failures(self) -> int:
        """Consecutive server failures since the server last delivered something (a result, an answer)."""
        return self._backoff.failures

    def backoff_s(self) -> float:
        """Length of the current backoff; 0 while the server is considered up."""
        return self._backoff.backoff_s()

    def effective_costs(self) -> ModeCosts:
        """Profiled costs corrected by the measured/profiled ratios (median of the recent frames)."""
        return self._measured.apply(self.costs) if self.adapt_compute else self.costs

    def choose(self, now_s: float) -> Decision:
        """Decide the mode of the frame starting at ``now_s``; the decision is assumed to be carried out."""
        self._probes.start(now_s)
        view = self._view(now_s)
        if self._backoff.waiting(now_s):
            self._current = "local"
            return self._decide(view, "local", "no-server")
        eligible, nothing_meets = self._eligible()
        remote = [m for m in eligible if m in REMOTE_MODES]
        # A stall: remote modes only as probes. Only a frame with a deadline can miss it, so local is eligible.
        stalled = self._stalls.stalled and "local" in eligible
        if view.bps is None and remote and not stalled:
            return self._choose_without_estimate(view, eligible, remote)
        best, reason = self._fastest(view, eligible, nothing_meets, stalled)
        chosen, reason = self._hold(view, best, reason, eligible)
        self._probes.note_choice(chosen)
        if self._probes.outstanding and view.local_allowed:
            # A link probe is unanswered: its answer is the newest news, and a payload sent now would queue behind it.
            return self._decide(view, "local", reason if chosen == "local" else "probing")
        if chosen in REMOTE_MODES:
            return self._remote_probe_or(view, chosen, best, reason, remote)
        return self._local_probe_or(view, best, reason, remote, stalled)

    def _view(self, now_s: float) -> _View:
        costs = self._load.apply(self.effective_costs(), now_s)
        bps, rtt = self.estimator.bandwidth_bps(), self.estimator.rtt_s()
        rtt_or_0 = rtt if rtt is not None else 0.0
        raw = predict_latencies(costs, bps if bps is not None else math.nan, rtt_or_0)
        neutral = raw
        if bps is not None and rtt is None and self._transfers:
            neutral = neutral_rtt(raw, costs, self._transfers.last_bytes, self._transfers.fastest_s)
        delivering: dict[str, float] = {}
        if self._stalls.stalled:
            try:
                bps_before = self.estimator.bandwidth_bps(bounded=False)
            except TypeError:  # an estimator without bounds (see LinkEstimator.observe_unfinished)
                bps_before = bps
            if bps_before is not None:
                delivering = predict_latencies(costs, bps_before, rtt_or_0)
        shown = set(self.modes) | {"local"}
        predicted = {m: v for m, v in neutral.items() if m in shown and (m == "local" or bps is not None)}
        predicted, delivering, occupancy = self._stages.views(predicted, delivering, costs, now_s)
        return _View(now_s, costs, bps, rtt, rtt_or_0, raw, predicted, delivering, "local" in self._accurate_enough(),
                     occupancy)

    def _decide(self, view: _View, mode: str, reason: str, probe_bytes: int = 0) -> Decision:
        """The decision record; a remote mode gets a deadline and a hedge only where local may serve the frame."""
        deadline, hedge = None, False
        if probe_bytes:
            self._probes.link_probe_sent(view.now_s)
        if mode in REMOTE_MODES and view.local_allowed:
            hedge = self.hedge
            if self._deadlines.factor is not None:
                deadline = view.now_s + self.deadline_budget_s(self._deadline_prediction(view, mode),
                                                               view.costs.t_full_device_ms)
        return Decision(mode, view.predicted, reason, view.bps, view.rtt, deadline, hedge, int(probe_bytes))

    def _deadline_prediction(self, view: _View, mode: str) -> float:
        """The prediction a deadline is set from: during a stall the link as it delivered (a probe asks "back?")."""
        if self._stalls.stalled and mode in view.delivering:
            return view.delivering[mode]
        if mode in view.predicted:
            return view.predicted[mode]
        return predict_latencies(view.costs, math.inf, view.rtt_or_0)[mode]  # no estimate: compute and RTT alone

    def _accurate_enough(self) -> list[str]:
        return [m for m in self.modes if self.accuracy[m] >= self.min_accuracy]

    def _eligible(self) -> tuple[list[str], bool]:
        """Modes meeting the accuracy constraint (else the most accurate one), and whether none met it."""
        eligible = self._accurate_enough()
        if eligible:
            return eligible, False
        return [max(self.modes, key=lambda m: self.accuracy[m])], True

    def _fastest(self, view: _View, eligible: list[str], nothing_meets: bool, stalled: bool) -> tuple[str, str]:
        """The fastest eligible mode (local during a stall) and the reason it is chosen."""
        best = min(["local"] if stalled else eligible, key=lambda m: view.occupancy[m])
        fastest = min((m for m in self.modes if m in view.occupancy), key=lambda m: view.occupancy[m])
        if stalled:
            return best, "stalled"
        return best, "accuracy" if nothing_meets or fastest not in eligible else "best"

    def _hold(self, view: _View, best: str, reason: str, eligible: list[str]) -> tuple[str, str]:
        """Hysteresis with a time-to-trigger: keep the current mode unless ``best`` is clearly or lastingly faster."""
        chosen, cur = best, self._current
        if cur is not None and cur != best and cur in eligible \
                and view.occupancy[best] >= (1.0 - self.hysteresis) * view.occupancy[cur]:
            if self._held_against != best:
                self._held_against, self._held_since = best, view.now_s
            if view.now_s - self._held_since < self.probe_interval_s:
                chosen, reason = cur, "hysteresis"
        if chosen != cur or reason != "hysteresis":
            self._held_against = None
        self._current = chosen
        return chosen, reason

    def _remote_probe_or(self, view: _View, chosen: str, best: str, reason: str, remote: list[str]) -> Decision:
        """A remote choice: a one-off frame of the other size while the RTT is unknown, or the runner-up probe."""
        if view.rtt is None:  # RTT not yet told apart from serialization: measure the other size
            other = self._rtt_probe_mode(view, remote, view.predicted[chosen])  # (at most an interval apart)
            return self._probe_frame_or(view, chosen, reason, other, 0.0, self.probe_interval_s)
        if reason == "hysteresis" and best in REMOTE_MODES:  # too close to call: measure the runner-up
            return self._probe_frame_or(view, chosen, reason, best, self.probe_interval_s)
        return self._decide(view, chosen, reason)

    def _local_probe_or(self, view: _View, best: str, reason: str, remote: list[str], stalled: bool) -> Decision:
        """A local choice: a probe after a stall's late result, on schedule, or during a hysteresis hold."""
        size, now = payload_bytes(view.costs), view.now_s
        stall_mode, may_win = self._stall_probe_mode(view, remote) if stalled and self._stalls.link_back \
            else (None, False)
        if stall_mode is not None and (self._stalls.evidence_probe_ok(now, self._probes.last_s, self.probe_interval_s)
                                       or (self._stalls.near_miss and may_win)):
            self._stalls.link_back = False
            if self.link_probes and not may_win:  # a hedged frame would most likely cost its head for nothing
                self._probes.sent(now)
                return self._decide(view, "local", reason, probe_bytes=size[stall_mode])
            return self._probe_frame_or(view, "local", reason, stall_mode, 0.0, 0.0)
        if remote and self._probes.due(now, self.estimator.age_s(now)) and not self._stalls.abandoned:
            other = self._rtt_probe_mode(view, remote, view.predicted["local"]) if view.rtt is None else None
            other = other or min(remote, key=lambda m: view.predicted.get(m, math.inf))
            if not self.link_probes:
                return self._probe_frame_or(view, "local", reason, other, self.probe_interval_s,
                                            self._probes.local_cap_s())
            if not self._probes.may_probe(now, 0.0, self.probe_interval_s):
                return self._decide(view, "local", reason)
            self._probes.sent(now)
            return self._decide(view, "local", reason, probe_bytes=size[other])
        if reason == "hysteresis" and best in REMOTE_MODES and self.link_probes and not self._stalls.abandoned \
                and self._probes.hold_probe_due(now):
            # Local frames measure nothing: a free probe keeps the estimate fresh, so the hold ends on evidence.
            self._probes.hold_probe_sent(now)
            return self._decide(view, "local", reason, probe_bytes=size[best])
        return self._decide(view, "local", reason)

    def _rtt_probe_mode(self, view: _View, remote: list[str], to_beat_ms: float) -> str | None:
        t = self._transfers
        return rtt_probe_mode(view.costs, remote, view.raw, to_beat_ms, t.last_bytes, t.fastest_s) if t else None

    def _probe_frame_or(self, view: _View, chosen: str, reason: str, other: str | None, min_spacing_s: float,
                        cap_s: float = math.inf) -> Decision:
        """Send ``other`` as a probe frame if the spacing rules allow it, else carry out ``chosen``."""
        excess = view.predicted.get(other, math.inf) - view.predicted[chosen]  # (no prediction: a stall before any
        if other is not None and other != chosen \
                and self._probes.may_probe(view.now_s, excess, min_spacing_s, cap_s):  # bandwidth estimate)
            self._probes.sent(view.now_s, instead_of_local=chosen == "local")
            return self._decide(view, other, "probe")
        return self._decide(view, chosen, reason)

    def _stall_probe_mode(self, view: _View, remote: list[str]) -> tuple[str | None, bool]:
        """The mode a stall probe would use if the link is back, and whether it may beat local: predicted from the
        link as it delivered (the stalled payload's bound favours the smallest, not the fastest), else from the
        rate the late payload achieved."""
        if not remote:
            return None, False
        size = payload_bytes(view.costs)
        mode = min(remote, key=lambda m: (view.delivering.get(m, view.predicted.get(m, math.inf)), size[m]))
        hint = view.delivering.get(mode)
        if hint is None and self._stalls.late_bps:
            hint = predict_latencies(view.costs, self._stalls.late_bps, view.rtt_or_0)[mode]
        return mode, hint is not None and hint < view.predicted["local"]

    def _choose_without_estimate(self, view: _View, eligible: list[str], remote: list[str]) -> Decision:
        """No bandwidth estimate yet: local if no remote mode could win on any link, else measure it once."""
        costs, now = view.costs, view.now_s
        local_ok = "local" in eligible
        if local_ok and self._probes.outstanding:  # a link probe's answer comes first
            self._current = "local"
            return self._decide(view, "local", "no-estimate")
        if local_ok:
            could_win = winnable(costs, remote, view.rtt_or_0)
            if not could_win:
                self._current = "local"
                return self._recheck_rtt(view, remote)
            remote = could_win
        may_measure = self._probes.may_measure(now)
        if may_measure or not local_ok:
            if may_measure:
                self._probes.sent(now)
            return self._decide(view, first_mode(costs, remote, self.hedge and local_ok, view.rtt_or_0), "no-estimate")
        self._current = "local"
        return self._decide(view, "local", "no-estimate")

    def _recheck_rtt(self, view: _View, remote: list[str]) -> Decision:
        """Compute alone rules remote out for good; where only the measured RTT does (a ping at connect may have
        met a stall), one probe per interval."""
        could = winnable(view.costs, remote, 0.0)
        if not (could and view.rtt_or_0 > 0 and self._probes.due_without_estimate(view.now_s)):
            return self._decide(view, "local", "best")
        self._probes.sent(view.now_s)
        nbytes, bound = payload_bytes(view.costs), predict_latencies(view.costs, math.inf, view.rtt_or_0)
        probe_mode = min(could, key=lambda m: (nbytes[m], bound[m]))
        if self.link_probes:
            return self._decide(view, "local", "best", probe_bytes=nbytes[probe_mode])
        return self._decide(view, probe_mode, "probe")

    def connect_probe(self, now_s: float) -> int:
        """Bytes of a link probe to send while connecting, the first frame's would-be payload; 0: none (link probes
        off, a bandwidth prior, no remote mode could win, or a hedged first frame, which measures the link itself
        at worst its device part plus a local run, where waiting for a probe's answer would hold it local)."""
        if not self.link_probes or self.estimator.bandwidth_bps() is not None or self._probes.outstanding:
            return 0
        eligible = self._accurate_enough()  # no fallback to the most accurate: none qualifying, no probe
        remote = [m for m in eligible if m in REMOTE_MODES]
        costs = self.effective_costs()
        rtt_s = self.estimator.rtt_s() or 0.0
        local_ok = "local" in eligible
        if local_ok and self.hedge:
            return 0
        if local_ok:
            remote = winnable(costs, remote, rtt_s)
        if not remote:
            return 0
        nbytes = int(payload_bytes(costs)[first_mode(costs, remote, self.hedge and local_ok, rtt_s)])
        if nbytes > 0:
            self._probes.sent(now_s)
            self._probes.link_probe_sent(now_s)
        return nbytes

    def deadline_budget_s(self, predicted_ms: float, local_ms: float) -> float:
        """How long after its start a remote frame predicted to take ``predicted_ms`` is waited for."""
        return self._deadlines.budget_s(predicted_ms, local_ms)

    # ------------------------------------------------------------ observation
    def observe(self, mode: str, nbytes: int, total_s: float, server_s: float, now_s: float,
                compute_s: float = 0.0) -> None:
        """Report a finished remote frame: bytes, send-to-result time, the edge's time (queue + compute), compute."""
        if mode not in REMOTE_MODES:
            raise ValueError(f"observe() is for remote modes {REMOTE_MODES}; use observe_local() for {mode!r}")
        if self._stalls.stalled and mode in self.modes:  # a probe came back in time: the steady mode is the one that
            self._current = mode  # just delivered (hysteresis is not for coming back)
        self._stalls.in_time()
        self._backoff.delivered()
        if math.isfinite(total_s) and math.isfinite(server_s) and nbytes >= 0:
            self._transfers.observe(nbytes, max(0.0, total_s - server_s), now_s, self.estimator)
        self.estimator.observe_transfer(nbytes, total_s, server_s, now_s)
        self._measured.edge(self._load.observe(server_s, compute_s, now_s), self.costs.edge_ms(mode))

    def missed(self, mode: str, nbytes: int, waited_s: float, now_s: float) -> None:
        """Report a remote frame given up on (deadline passed, or its hedged local run won), ``waited_s`` after it
        was sent. News about the link, not a server failure: the estimator gets a bound, the steady mode becomes
        local, and until a remote frame comes back in time remote modes are used only as probes."""
        if mode not in REMOTE_MODES:
            raise ValueError(f"missed() is for remote modes {REMOTE_MODES}, got {mode!r}")
        self._stalls.missed(now_s)
        self._current, self._held_against = "local", None
        observe_unfinished = getattr(self.estimator, "observe_unfinished", None)
        if observe_unfinished is not None and math.isfinite(waited_s):
            observe_unfinished(nbytes, waited_s, self._load.edge_s(self.effective_costs(), mode, now_s), now_s)

    def observe_late(self, mode: str, nbytes: int, total_s: float, server_s: float, now_s: float) -> None:
        """Report the late result of a frame given up on: not a bandwidth sample (its time includes the stall);
        what it says is that the link delivers again."""
        if mode not in REMOTE_MODES:
            raise ValueError(f"observe_late() is for remote modes {REMOTE_MODES}, got {mode!r}")
        self._backoff.delivered()
        self._stalls.late(nbytes, total_s - server_s, now_s, self.effective_costs().t_full_device_ms / 1000.0)
        self._load.observe_late(server_s, self.effective_costs().edge_ms(mode) / 1000.0, now_s)

    def observe_probe(self, nbytes: int, total_s: float, server_s: float, now_s: float) -> None:
        """Report a link probe's answer: a bandwidth sample like a remote frame's, and the newest news about the
        link. An answer to an older probe, given up on (sent at ``now_s - total_s``), does not end the wait."""
        self._probes.answered(now_s, total_s)
        self._backoff.delivered()
        if not (math.isfinite(total_s) and math.isfinite(server_s) and nbytes > 0):
            return
        self._stalls.probe_answered(now_s - total_s)
        self._transfers.observe(nbytes, max(0.0, total_s - server_s), now_s)
        self.estimator.observe_transfer(nbytes, total_s, server_s, now_s)

    def probe_lost(self, now_s: float) -> None:
        """Report that the link probe will not be answered (not sent, refused, or the stream dropped)."""
        self._probes.lost()

    def observe_local(self, seconds: float, now_s: float) -> None:
        """Report a finished local frame's compute time, so a throttled device is noticed."""
        self._measured.device(seconds, self.costs.t_full_device_ms)

    def observe_rtt(self, rtt_s: float, now_s: float) -> None:
        """Report a payload-free round trip (ping, health check): the cleanest RTT sample."""
        self._transfers.observe_ping(rtt_s)
        self._backoff.delivered()
        self.estimator.observe_rtt(rtt_s, now_s)

    def server_failed(self, now_s: float) -> float:
        """Record a failed connect or a stream that stopped answering; return the backoff (s) now in force."""
        backoff = self._backoff.failed(now_s)
        self._probes.lost()  # the stream that carried it is gone
        self._stalls.stream_lost()  # ... and the results of frames given up on with it
        self._current = "local"
        return backoff

    def server_ok(self, now_s: float) -> None:
        """Record a (re)connection; the backoff starts again from ``backoff_initial_s`` once it delivers."""
        self._backoff.ok()
        self._probes.lost()  # a fresh stream: nothing sent on the old one will be answered
        self._stalls.stream_lost()
        if self._backoff.failures and hasattr(self.estimator, "new_path"):  # a reconnect: maybe another replica
            self.estimator.new_path()

    def pipeline_sent(self, mode: str, at_s: float) -> None:
        """A pipelined session's remote payload left at ``at_s``: the next frame starts behind it."""
        self._stages.sent(mode, at_s)

    def pipeline_settled(self, now_s: float) -> None:
        """The frame that left last has settled (its result, or its end, is about to be reported)."""
        self._stages.settled()

    def should_reconnect(self, now_s: float) -> bool:
        """Whether the server is down and its backoff has expired, so a reconnect should be tried now."""
        return self._backoff.should_reconnect(now_s)

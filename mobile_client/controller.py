"""Per-frame choice among local, split and offload (DESIGN.md §3).

Pure decision logic: no sockets, no clock. Time is always passed in, so the
live client and the trace-driven simulator drive the very same object and a
simulated figure can be compared with a live run.

Contract with the caller: call :meth:`Controller.choose` once per frame and
execute the returned mode; report each finished remote frame with
:meth:`Controller.observe` (and local ones with
:meth:`Controller.observe_local`); report connection trouble with
:meth:`Controller.server_failed` / :meth:`Controller.server_ok`. A remote
decision may carry a deadline (``Decision.deadline_s``): if the result is
not back by then, serve the frame locally and report
:meth:`Controller.missed`; if that result arrives later after all, report
:meth:`Controller.observe_late`. Tiny round trips timed at connect go to
:meth:`Controller.observe_rtt`. A local decision may ask for a link probe
(``Decision.probe_bytes``): send that many filler bytes to the server beside
the frame and report its answer with :meth:`Controller.observe_probe` (or
:meth:`Controller.probe_lost`).

Decisions, and why:

* **Latency model** — exactly DESIGN.md §3, in :func:`predict_latencies`.
  Compute times come from measured profiles (:class:`ModeCosts`). They are
  corrected online by the median ratio measured/profiled (device time from
  local frames, edge time from the ``server_s`` each result reports), so a
  loaded server or a throttled phone is noticed — the server-load input of
  Neurosurgeon — without guessing. ``adapt_compute=False`` turns that off.
* **Choice** — the fastest predicted mode whose accuracy meets
  ``min_accuracy``. If none does, the most accurate mode (reason
  ``"accuracy"``); reason ``"accuracy"`` is also given when the constraint
  is what ruled out the fastest mode, so logs show what it cost.
* **Hysteresis** — leave the current mode only for one predicted faster by
  more than ``hysteresis`` (relative: ``new < (1 - h) * current``). The
  estimates are noisy; without it two close modes would alternate frame by
  frame, and each switch has hidden costs (cold caches, a different payload
  size distorting the next estimate).
* **Initial choice (no bandwidth estimate yet)** — if no remote mode could
  beat local even on an infinitely fast link (its compute plus the known RTT
  already exceeds local), pick local: no measurement is needed (if it is the
  measured RTT, not the compute, that rules remote out, one frame per
  ``probe_interval_s`` re-checks it: a ping at connect may have met a
  stall — the first delivery of a mahimahi trace can be 0.8 s in). Otherwise
  send *one* frame with an eligible remote mode (reason ``"no-estimate"``)
  and run locally until its result arrives; if none arrives, try again after
  ``probe_interval_s``. Unhedged, that is the mode with the fewest bytes (the
  cheapest way to learn B). Hedged, a frame costs at most its device part
  plus its local continuation whatever the link, so it is the mode with the
  lowest such worst case (offload: a JPEG encode, then the whole model), which
  is also the right first guess on a fast link.
  With link probes (the default) that frame's payload is measured before
  the first frame instead: the client sends a link probe of its size while
  it connects (:meth:`Controller.connect_probe`, after the RTT pings) and
  waits a connect timeout for the answer, so the first frame is chosen
  knowing the link (on ``5294_www.youtube.com`` the hedged first offload
  had cost its JPEG encode for nothing: local wins every frame there).
  A prior can be given instead: ``LinkEstimator(initial_bps=..., initial_rtt_s=...)``.
  The default estimator expires samples older than ``probe_interval_s``
  (relative to the newest), so one probe after a quiet spell replaces a
  stale estimate instead of being averaged with it.
* **Probing** — besides the remote-to-remote probes described below, the
  link is probed from a local frame (with a *link probe*, below; with
  ``link_probes=False`` by sending the frame remotely, reason ``"probe"``)
  only when all of these hold: the mode chosen for it is local (a remote choice measures the
  link anyway), a remote mode is eligible and the server is up, the
  bandwidth estimate has had no sample for ``probe_interval_s``, the
  controller has been running for ``probe_interval_s`` (a prior is trusted
  that long), and the last probe was at least ``probe_interval_s`` ago
  (longer when probes are expensive, see *Probe cost*). So: at most one
  probe per interval, one frame each. The probe uses the remote mode with
  the lowest predicted latency — the one we would switch to, and by the
  model's own account the cheapest (while the RTT is unknown, the other
  payload size, see below). Its cost is bounded by one frame per interval;
  the client's usual per-frame timeout and local fallback bound that frame
  too.
* **Link probes** (``link_probes=True``, the default) — a local frame
  measures nothing, and a remote frame sent only to measure costs latency
  whenever local was the better choice: on a trace where local wins
  throughout (``5294_www.youtube.com``, Faster R-CNN at K = 8) the hedged
  split probes, each 63 ms dearer than a local run, made auto 1.2 % slower
  than local. So the local frame stays local and the decision asks for a
  link probe of the payload size of the remote mode it stands for: filler
  bytes the server answers at once (``Frame.probe``), sent as the local run
  starts. The device is busy with the frame either way and the uplink is
  idle, so the probe costs bytes, not latency; its answer is a bandwidth
  sample like a frame's. While one is unanswered nothing remote is sent
  wherever local may serve the frame (its answer is the newest news, and a
  payload would queue behind it;
  reason ``"probing"`` where the steady mode is remote); an answer that
  has not come after :data:`LINK_PROBE_TIMEOUT_INTERVALS` probe intervals is
  given up on. Link probes also end a hysteresis hold of local against a
  remote mode on evidence: local frames would leave the estimate frozen
  until the time-to-trigger, so while the hold lasts a probe goes out at
  most :data:`HOLD_PROBES_PER_INTERVAL` times per interval. Remote-to-remote
  probes stay frames: there the uplink is busy with the steady mode's
  payloads, so a probe beside them would not be free.
* **Telling RTT from serialization** — the runtime times whole frames, so
  with one payload size ``bytes/B + RTT`` has two unknowns, and the
  estimator's fallback (RTT = 0) is exact for that size only: it overstates
  a larger payload by ``(n/s - 1) * RTT`` (180 ms for a 27 KB JPEG after
  5 KB split payloads on a 40 ms path), so a controller that started on
  split would never leave it for offload. Found and checked with the
  trace-driven simulator (``splitedge simulate``), hence:

  - *two-size RTT*: a remote frame whose payload differs >= 1.5x from the
    previous one, less than ``probe_interval_s`` later, gives the intercept
    of the line through the two (the previous size as the estimator's
    smoothed view when its last frames all had that size). Intercepts
    outside ``[0, fastest recent network time]`` are dropped (the link
    changed between the two, e.g. both met an outage); the median of the
    last :data:`RTT_PAIRS` goes to the estimator as an RTT sample, so it
    outlives the bandwidth samples (the propagation RTT hardly moves);
  - *RTT probe*: while no RTT is known, a frame of the other payload size
    is sent (reason ``"probe"``) if it could win for some RTT consistent
    with what was seen, spaced by its predicted cost (see below) but at
    most ``probe_interval_s`` apart; meanwhile predictions put the unknown
    RTT at the middle of its feasible range ``[0, fastest network time
    seen]`` rather than at 0, so neither size is favoured.

* **Hysteresis is for noise, not for ever** — when hysteresis alone keeps
  the current remote mode (the other remote mode is predicted faster, by
  less than the margin), the next probe slot sends one frame of the other
  (*runner-up probe*), and if the same mode has been predicted faster on
  every decision for ``probe_interval_s``, the controller switches (a
  time-to-trigger, as in cellular handover): a 14 % gain is not noise when
  it persists, and a 15 % margin must not cost 15 % for good. Estimates
  that alternate frame by frame still never switch.
* **Probe cost** — every probe is spaced from the previous one by at least
  its predicted extra time divided by :data:`PROBE_BUDGET` (2 %), so on a
  link where a split payload takes seconds probing does not cost more than
  it can find. Because that prediction comes from the last, possibly stale,
  estimate (right after an outage it says "seconds" for a link that has
  long recovered), the wait of a probe sent instead of a local frame is
  capped at ``probe_interval_s``, doubled for each such probe in a row
  after which local was still the choice, up to ``16 * probe_interval_s``
  (:data:`PROBE_MAX_DOUBLINGS`): right after a collapse the link is
  re-checked after 5, 10, 20, 40 s, and a link that stays bad costs at
  most the budget.

* **RTT from pings** — the live client times a few ``Describe`` calls when
  it connects (the simulator the same tiny messages on its links) and gives
  the fastest to :meth:`Controller.observe_rtt`, so the RTT is known before
  the first frame and no frame is spent telling it apart from
  serialization. Once an RTT has been measured that way, the two-size
  identification above is no longer used: it assumes the rate held still
  between the two transfers, and on cellular traces it gave RTTs half the
  measured one, which made a 5 KB split payload's timing say 1.7 Mbit/s on a
  10 Mbit/s link and kept the controller off offload (found with the
  simulator on the TMobile trace).
* **Deadlines** — a remote frame is waited for until ``max(deadline_factor
  * p, p + deadline_slack * local)`` after its start (``p``: its predicted
  latency, capped at local's; defaults 2 and 1, i.e. ``max(2p, p + local)``,
  see :meth:`Controller.deadline_budget_s`), then served locally. Why that
  long: a frame still in flight at ``t`` either finishes soon (the
  prediction was a little short) or is caught in a stall of unknown length;
  giving up costs a whole local run. Waiting ``local`` beyond the prediction
  before paying ``local`` is the ski-rental rule (never more than about
  twice the better of the two choices in hindsight), and the factor 2
  keeps tiny predictions from giving up on ordinary jitter. Measured on the
  24 shared traces (``splitedge simulate``, K=8, 2 fps): with slack 0.5, 22
  of 47 abandoned frames had their result back less than a local run after
  the deadline (waiting would have been faster); with 1.0, 12 of 32; with
  1.5, 10 of 26, but the worst auto/oracle was highest with 1.5 (2.11
  against 1.84 with 1.0, and 1.26 against 1.20 at 10 fps) and 0.5 was
  worse than 1.0 at 10 fps (1.27) and for auto/best-fixed. Before deadlines
  a frame sent into a 5 s outage cost 5 s plus everything queued behind
  it. Only where local may serve the frame (it is in ``modes`` and meets
  the accuracy constraint): otherwise there is no deadline.
* **Stalls** — a missed deadline is news about the link, not a server
  failure: the estimator gets a *bound* (the payload took longer than the
  wait; :meth:`~mobile_client.estimators.LinkEstimator.observe_unfinished`),
  the steady mode becomes local, and until a remote frame comes back in
  time remote modes are used only as probes (reason ``"stalled"`` for the
  local frames). Without that rule the bound alone reproduces the missed
  deadline, which can still beat local, so hysteresis would send the next
  frame into the same stall (and behind the abandoned payload, which TCP
  is still sending). The stall ends as it began, with evidence: the late
  result of the abandoned frame (:meth:`Controller.observe_late`) shows the
  link delivers again, and the next frame is a probe at once; if that probe
  misses too, later late results trigger probes only ``probe_interval_s *
  2**(k-2) / 2`` after the previous one (k-th miss of the stall), so on a
  link that stays too slow they thin out; and the usual probe schedule
  runs meanwhile. A probe's deadline comes from the link as it was while
  it delivered (the estimate without the bound), since the question it
  asks is "is it back?"; so does the choice of the probe triggered by a
  late result: the mode the link as it delivered favours (the bound, set
  by the stalled payload's size, would favour whatever is smallest, and the
  controller would come back from every outage on the wrong mode; found
  with the simulator on the AT&T traces). Refinements, each found with the
  simulator on the shared traces:

  - *Only when the last given-up payload is in*: a late result while
    another given-up payload is still on its way triggers nothing, since a
    probe would queue behind that payload and time the queue.
  - *A hedged probe only where it may win*: if even the link as it
    delivered (or, with no sample yet, the rate the late payload itself
    achieved) says local beats the probe's mode, the probe is a link probe
    instead: a hedged frame would most likely pay its head for nothing
    (``5294_www.youtube.com``, where a split payload takes ~49 s).
  - *A near miss is not an outage*: a late result that came less than a
    local run after its frame was given up on (a hedged offload that lost
    by 25 ms on a slow patch, say) lifts the probe back-off where the link
    as it delivered says the probe's mode beats local, so a link that is
    slow but delivering is probed again at once instead of 2.5 s later
    (Norway bus/metro traces).
  - *Back where it was*: a remote frame that comes back in time ends the
    stall and makes its mode the steady one, so hysteresis, which is there
    against noise, does not hold the controller on local for the interval
    after every stall. (A link probe that ends a stall leaves the steady
    mode local: the next decision weighs its sample as usual.)
  - *Nothing queued behind a given-up payload*: no link probe either, on
    schedule or during a hysteresis hold, while one is still on its way.
* **Hedging** (``hedge=True``, the default) — while a remote frame is in
  flight the device has nothing to do (it serves one frame at a time), so
  wherever local may serve the frame (the same condition as for a deadline)
  the decision says ``hedge``: once the payload is sent, the device goes on
  with the frame itself — for split the original model from the split
  point's features *before* the bottleneck (:func:`hedge_local_ms`), for
  offload the whole model — and the frame is served by whichever finishes
  first; the other is dropped (the local run at its next stage boundary; a
  remote result that comes after the local run is reported late, as a
  missed deadline's). A hedged frame therefore never costs much more than
  its head plus a local run, whatever the link does, and the deadline never
  binds (``max(2p, p + local)`` is later than head + local). A frame that
  the local run won is reported with :meth:`Controller.missed` (the wait
  being its payload's time in flight): it is the same news — the link did
  not deliver in a local run's time — so the controller goes local outright
  during a long outage (a stall, below) instead of paying the hedge's head
  on every frame, and probes to come back (hedged probes, so a probe into a
  dead link costs only its head). Measured with ``splitedge simulate`` on
  the 24 shared traces (K = 8, 1 fps): the AT&T LTE traces, whose uplink
  stops for seconds at a time, went from 1.42 / 1.21 x the oracle to 1.15 /
  1.07 x (hedging with the stall probe's choice above; without hedging that
  choice alone gives 1.39 / 1.21, hedging alone 1.19 / 1.07). The fixed policies and the oracle are never hedged: they
  are the yardsticks. Not modelled or counted: the CPU time and energy of
  the speculative local run (on a phone, hedging buys latency with
  battery); ``hedge=False`` restores the deadline-only behaviour.
* **No server** — after :meth:`Controller.server_failed` every frame is local
  until the backoff expires (``backoff_initial_s`` doubling per consecutive
  failure up to ``backoff_max_s``); then remote modes are allowed again and
  :meth:`Controller.should_reconnect` says it is time to retry. Local is the
  fallback even if ``local`` is not in ``modes`` or misses ``min_accuracy``:
  a degraded result beats none, and every frame must get a result.
  :meth:`Controller.observe` does *not* imply :meth:`Controller.server_ok`:
  results of frames sent before a failure may still arrive after it.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from statistics import median

from .estimators import LinkEstimator

__all__ = [
    "MODES",
    "REMOTE_MODES",
    "REASONS",
    "ModeCosts",
    "Decision",
    "Controller",
    "predict_latencies",
    "scaled",
    "hedge_local_ms",
    "LINK_PROBE_TIMEOUT_INTERVALS",
]

MODES: tuple[str, ...] = ("local", "split", "offload")
REMOTE_MODES: tuple[str, ...] = ("split", "offload")
# Two payloads must differ at least this much in size for their times to separate RTT from
# serialization (the same threshold as LinkEstimator's intercept fit).
RTT_FIT_SIZE_RATIO = 1.5
# How many recent remote transfers bound the RTT from above (none can be faster than the RTT).
RTT_BOUND_TRANSFERS = 32
# The RTT given to the estimator is the median of the last RTT_PAIRS two-size identifications:
# each one is noisy on a bursty link, the propagation RTT they measure hardly moves.
RTT_PAIRS = 9
# Probes are spaced so that their predicted extra time is at most this fraction of the time.
PROBE_BUDGET = 0.02
# ... but a probe sent instead of a local frame waits at most 2**PROBE_MAX_DOUBLINGS probe intervals.
PROBE_MAX_DOUBLINGS = 4
# A remote frame's result is waited for at most max(DEADLINE_FACTOR * P, P + DEADLINE_SLACK * local) after the
# frame started, P its predicted latency capped at local's (see Controller.deadline_budget_s).
DEADLINE_FACTOR = 2.0
DEADLINE_SLACK = 1.0
# "deadline" is not a decision's reason but a frame's: a remote frame whose result missed its deadline and was
# served locally (the runtime's and the simulator's records say so).
# "hedge" likewise: a hedged remote frame whose local continuation finished before its result came back.
# A link probe unanswered this many probe intervals after it was sent is given up on (see "Link probes").
LINK_PROBE_TIMEOUT_INTERVALS = 16
# A probe answer whose send time (arrival - total) is this much before the awaited probe's is an older probe's:
# the caller's clocks for the decision and for the send differ by the time it takes to put the probe on the wire.
PROBE_CLOCK_SLACK_S = 0.05
# While hysteresis holds local against a remote mode, link probes go out at most this many times per interval.
HOLD_PROBES_PER_INTERVAL = 5
# "probing" is a local frame's reason when the steady mode is remote but a link probe is still unanswered.
REASONS: frozenset[str] = frozenset({"best", "hysteresis", "probe", "no-server", "no-estimate", "accuracy",
                                     "stalled", "deadline", "hedge", "probing"})


@dataclass(frozen=True)
class ModeCosts:
    """Measured compute times (ms) and payload sizes (bytes) of one model on one device/edge pair.

    These come from ``splitedge profile`` JSON, not guesses: the controller is
    only as good as these numbers. ``bytes_split`` and ``bytes_jpeg`` are
    typical (median) payloads per frame.
    """

    t_full_device_ms: float
    t_head_device_ms: float
    t_tail_edge_ms: float
    t_full_edge_ms: float
    t_jpeg_encode_ms: float
    bytes_split: int
    bytes_jpeg: int
    t_jpeg_decode_edge_ms: float = 0.0
    # Device time to finish the *original* model from the split point's features before the bottleneck
    # (a hedged split frame's local continuation, see Controller's "Hedging"); 0: not measured, then
    # the whole model is assumed (:func:`hedge_local_ms`).
    t_resume_device_ms: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"ModeCosts.{f.name} must be a finite non-negative number, got {v!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> ModeCosts:
        """Build from a profile's JSON object, naming any unknown or missing key (a typo must not pass)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown ModeCosts key(s) {unknown}; expected some of {sorted(names)}")
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"missing ModeCosts key(s) {missing}")
        return cls(**data)


def predict_latencies(costs: ModeCosts, bandwidth_bps: float, rtt_s: float) -> dict[str, float]:
    """Predicted end-to-end latency (ms) of each mode, DESIGN.md §3 verbatim.

    ``local = T_full(device)``;
    ``split = T_head(device) + bytes_split*8/B + RTT + T_tail(edge)``;
    ``offload = T_jpeg + bytes_jpeg*8/B + RTT + T_jpeg_decode(edge) + T_full(edge)``
    (the decode term defaults to 0). A non-positive or NaN bandwidth makes
    the remote modes infinitely slow rather than raising, so a dead link is
    just a very bad link.
    """
    rtt_ms = rtt_s * 1000.0
    if not (bandwidth_bps > 0):  # also catches NaN
        send = lambda nbytes: math.inf  # noqa: E731
    else:
        send = lambda nbytes: nbytes * 8.0 / bandwidth_bps * 1000.0  # noqa: E731
    return {
        "local": costs.t_full_device_ms,
        "split": costs.t_head_device_ms + send(costs.bytes_split) + rtt_ms + costs.t_tail_edge_ms,
        "offload": costs.t_jpeg_encode_ms
        + send(costs.bytes_jpeg)
        + rtt_ms
        + costs.t_jpeg_decode_edge_ms
        + costs.t_full_edge_ms,
    }


def scaled(costs: ModeCosts, device_slowdown: float, *, edge_slowdown: float = 1.0) -> ModeCosts:
    """Costs of the same model on a device ``device_slowdown`` times slower (and optionally a slower edge).

    Profiles are measured on the machines at hand; this stands for a phone
    (or a loaded server) without re-profiling, scaling every time spent on
    that side — for the device, full model, head and JPEG encode.
    """
    if not (device_slowdown > 0 and edge_slowdown > 0):
        raise ValueError(f"slowdowns must be positive, got {device_slowdown}, {edge_slowdown}")
    return dataclasses.replace(
        costs,
        t_full_device_ms=costs.t_full_device_ms * device_slowdown,
        t_head_device_ms=costs.t_head_device_ms * device_slowdown,
        t_jpeg_encode_ms=costs.t_jpeg_encode_ms * device_slowdown,
        t_tail_edge_ms=costs.t_tail_edge_ms * edge_slowdown,
        t_full_edge_ms=costs.t_full_edge_ms * edge_slowdown,
        t_jpeg_decode_edge_ms=costs.t_jpeg_decode_edge_ms * edge_slowdown,
        t_resume_device_ms=costs.t_resume_device_ms * device_slowdown,
    )


def _payload_bytes(costs: ModeCosts) -> dict[str, int]:
    """Bytes each remote mode sends per frame: what a probe standing for that mode carries."""
    return {"split": costs.bytes_split, "offload": costs.bytes_jpeg}


def _winnable(costs: ModeCosts, remote: list[str], rtt_s: float) -> list[str]:
    """The remote modes that could beat local on an infinitely fast link (compute and ``rtt_s`` alone)."""
    bound = predict_latencies(costs, math.inf, rtt_s)
    return [m for m in remote if bound[m] < costs.t_full_device_ms]


def hedge_local_ms(costs: ModeCosts, mode: str) -> float:
    """Device time of a hedged remote frame's local continuation, started once its payload is sent.

    ``split``: the original model from the split point's features before the
    bottleneck (``t_resume_device_ms``; the whole model if that was not
    measured); ``offload``: the whole model (the JPEG is no use locally).
    """
    if mode == "split" and costs.t_resume_device_ms > 0:
        return costs.t_resume_device_ms
    if mode not in REMOTE_MODES:
        raise ValueError(f"only remote modes are hedged, got {mode!r}")
    return costs.t_full_device_ms


@dataclass(frozen=True)
class Decision:
    """What to do with one frame, and why — enough to log and to plot a run afterwards."""

    mode: str
    predicted_ms: dict[str, float] = field(default_factory=dict)
    reason: str = "best"
    bandwidth_bps: float | None = None
    rtt_s: float | None = None
    # Remote modes: when (on the clock of ``choose``'s ``now_s``) to stop waiting for the result and serve the
    # frame locally, then report :meth:`Controller.missed`. ``None``: wait (local, or local not allowed).
    deadline_s: float | None = None
    # Remote modes: also run the frame locally on the idle device while its result is awaited, and take
    # whichever finishes first (see the module docstring, "Hedging"); set wherever local may serve the frame.
    hedge: bool = False
    # Local frames: also send a link probe of this many filler bytes (the payload size of the remote mode it
    # stands for) and report its answer with :meth:`Controller.observe_probe` (see "Link probes"). 0: none.
    probe_bytes: int = 0


class Controller:
    """Chooses a mode per frame from measured costs and the link as seen so far.

    See the module docstring for the rules (initial choice, probing,
    hysteresis, backoff). ``accuracy`` maps a mode to its accuracy (any scale,
    e.g. mAP, consistent with ``min_accuracy``); modes it omits count as 1.0.
    """

    def __init__(
        self,
        costs: ModeCosts,
        *,
        modes: tuple[str, ...] = MODES,
        accuracy: Mapping[str, float] | None = None,
        min_accuracy: float = 0.0,
        hysteresis: float = 0.15,
        probe_interval_s: float = 5.0,
        estimator: LinkEstimator | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 8.0,
        adapt_compute: bool = True,
        compute_window: int = 9,
        deadline_factor: float | None = DEADLINE_FACTOR,
        deadline_slack: float = DEADLINE_SLACK,
        hedge: bool = True,
        link_probes: bool = True,
    ) -> None:
        modes = tuple(modes)
        if not modes:
            raise ValueError("modes must not be empty")
        bad = [m for m in modes if m not in MODES]
        if bad or len(set(modes)) != len(modes):
            raise ValueError(f"modes must be distinct values among {MODES}, got {modes}")
        if not 0 <= hysteresis < 1:
            raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis}")
        if probe_interval_s <= 0:
            raise ValueError(f"probe_interval_s must be positive, got {probe_interval_s}")
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError(f"need 0 < backoff_initial_s <= backoff_max_s, got {backoff_initial_s}, {backoff_max_s}")
        if compute_window < 1:
            raise ValueError(f"compute_window must be >= 1, got {compute_window}")
        if deadline_factor is not None and not (deadline_factor >= 1 and deadline_slack >= 0):
            raise ValueError(f"need deadline_factor >= 1 (or None: no deadline) and deadline_slack >= 0, "
                             f"got {deadline_factor}, {deadline_slack}")
        unknown = sorted(set(accuracy or {}) - set(MODES))
        if unknown:
            raise ValueError(f"unknown mode(s) in accuracy: {unknown}")
        self.costs = costs
        self.modes = modes
        self.accuracy: dict[str, float] = {m: 1.0 for m in MODES} | dict(accuracy or {})
        self.min_accuracy = min_accuracy
        self.hysteresis = hysteresis
        self.probe_interval_s = probe_interval_s
        # Default estimator: samples expire after one probe interval, so that a
        # single probe after a quiet spell is enough to notice a recovered link.
        self.estimator = estimator if estimator is not None else LinkEstimator(max_age_s=probe_interval_s)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.adapt_compute = adapt_compute
        self.deadline_factor = deadline_factor
        self.deadline_slack = deadline_slack
        self.hedge = hedge
        self.link_probes = link_probes

        self._current: str | None = None
        self._held_against: str | None = None  # the better-predicted mode hysteresis is holding off, and since when
        self._held_since = 0.0
        self._probed_from_local = False  # the last frame was a probe sent instead of a local frame
        self._probe_misses = 0  # local probes in a row after which local was still the choice
        self._pinged = False  # an RTT was measured with a payload-free round trip (observe_rtt)
        self._stall_misses = 0  # deadline misses since the last remote frame that came back in time
        self._link_back = False  # during a stall, a late result arrived: the link delivers again
        self._near_miss = False  # ... and it came less than a local run after the frame was given up on
        self._abandoned = 0  # frames given up on whose results have not come back yet
        self._late_bps = 0.0  # the rate the last late result's payload achieved, stall included (a lower bound)
        self._last_miss_s = -math.inf
        self._started_s: float | None = None
        self._last_probe_s: float | None = None
        self._probe_out_s: float | None = None  # when the unanswered link probe was sent
        self._last_hold_probe_s = -math.inf
        self._failures = 0
        self._retry_at_s = -math.inf
        self._device_ratios: deque[float] = deque(maxlen=compute_window)
        self._edge_ratios: deque[float] = deque(maxlen=compute_window)
        # Recent remote transfers (at_s, payload bytes, network_s), for the two-size RTT (see observe).
        self._transfers: deque[tuple[float, int, float]] = deque(maxlen=RTT_BOUND_TRANSFERS)
        self._pair_rtts: deque[float] = deque(maxlen=RTT_PAIRS)  # RTTs identified from two sizes

    # ------------------------------------------------------------------ state
    @property
    def mode(self) -> str | None:
        """The steady mode (what hysteresis compares against); probes do not change it."""
        return self._current

    @property
    def failures(self) -> int:
        """Consecutive server failures since the last :meth:`server_ok`."""
        return self._failures

    def backoff_s(self) -> float:
        """Length of the current backoff; 0 while the server is considered up."""
        if self._failures == 0:
            return 0.0
        return min(self.backoff_initial_s * 2.0 ** (self._failures - 1), self.backoff_max_s)

    def effective_costs(self) -> ModeCosts:
        """Profiled costs corrected by the measured/profiled ratios (median of the recent frames)."""
        if not self.adapt_compute:
            return self.costs
        dev = median(self._device_ratios) if self._device_ratios else 1.0
        edge = median(self._edge_ratios) if self._edge_ratios else 1.0
        if dev == 1.0 and edge == 1.0:
            return self.costs
        return scaled(self.costs, dev, edge_slowdown=edge)

    # --------------------------------------------------------------- decision
    def choose(self, now_s: float) -> Decision:
        """Decide the mode of the frame starting at ``now_s``; the decision is assumed to be carried out."""
        if self._started_s is None:
            self._started_s = now_s
        if self._probe_out_s is not None \
                and now_s - self._probe_out_s > LINK_PROBE_TIMEOUT_INTERVALS * self.probe_interval_s:
            self.probe_lost(now_s)
        costs = self.effective_costs()
        bps = self.estimator.bandwidth_bps()
        rtt = self.estimator.rtt_s()
        rtt_or_0 = rtt if rtt is not None else 0.0

        all_pred = predict_latencies(costs, bps if bps is not None else math.nan, rtt_or_0)
        raw_pred = all_pred
        if bps is not None:
            if rtt is None:
                all_pred = self._neutral_rtt(all_pred, costs)
        shown = set(self.modes) | {"local"}
        delivering: dict[str, float] = {}  # during a stall: predictions from the link as it was while it delivered
        if self._stall_misses:
            try:
                bps_before = self.estimator.bandwidth_bps(bounded=False)
            except TypeError:  # an estimator without bounds (see LinkEstimator.observe_unfinished)
                bps_before = bps
            if bps_before is not None:
                delivering = predict_latencies(costs, bps_before, rtt_or_0)
        # A remote frame gets a deadline only where local may serve it (DESIGN.md: local is the fallback when
        # the server is down, but a mode the accuracy constraint excludes must not replace a late result).
        local_allowed = "local" in self.modes and self.accuracy["local"] >= self.min_accuracy
        predicted = {m: v for m, v in all_pred.items() if m in shown and (m == "local" or bps is not None)}

        def decide(mode: str, reason: str, probe_bytes: int = 0) -> Decision:
            deadline, hedge = None, False
            if probe_bytes:
                self._probe_out_s = now_s
            if mode in REMOTE_MODES and local_allowed:
                hedge = self.hedge
            if mode in REMOTE_MODES and local_allowed and self.deadline_factor is not None:
                p_ms = predicted.get(mode)
                if self._stall_misses and mode in delivering:  # a probe asks "does it deliver again?"
                    p_ms = delivering[mode]
                if p_ms is None:  # no bandwidth estimate yet: the frame's compute and RTT on a perfect link
                    p_ms = predict_latencies(costs, math.inf, rtt_or_0)[mode]
                deadline = now_s + self.deadline_budget_s(p_ms, costs.t_full_device_ms)
            return Decision(mode, predicted, reason, bps, rtt, deadline, hedge, int(probe_bytes))

        if self._failures and now_s < self._retry_at_s:
            self._current = "local"
            return decide("local", "no-server")

        eligible = [m for m in self.modes if self.accuracy[m] >= self.min_accuracy]
        nothing_meets = not eligible
        if nothing_meets:
            eligible = [max(self.modes, key=lambda m: self.accuracy[m])]
        remote = [m for m in eligible if m in REMOTE_MODES]
        # A stall (a remote frame missed its deadline, none came back in time since): remote modes only as probes.
        # Only a frame with a deadline can miss it, so local is eligible here.
        stalled = self._stall_misses > 0 and "local" in eligible

        if bps is None and remote and not stalled:
            return self._choose_without_estimate(now_s, costs, eligible, remote, rtt_or_0, decide)

        best = min(["local"] if stalled else eligible, key=lambda m: predicted[m])
        fastest = min((m for m in self.modes if m in predicted), key=lambda m: predicted[m])
        reason = "accuracy" if nothing_meets or fastest not in eligible else "best"
        if stalled:
            reason = "stalled"
        chosen = best
        cur = self._current
        if (
            cur is not None
            and cur != best
            and cur in eligible
            and predicted[best] >= (1.0 - self.hysteresis) * predicted[cur]
        ):
            if self._held_against != best:
                self._held_against, self._held_since = best, now_s
            if now_s - self._held_since < self.probe_interval_s:
                chosen, reason = cur, "hysteresis"
        if chosen != cur or reason != "hysteresis":
            self._held_against = None
        self._current = chosen

        if self._probed_from_local:  # the previous frame was a probe sent instead of a local frame
            self._probed_from_local = False
            self._probe_misses = self._probe_misses + 1 if chosen == "local" else 0
        if self._probe_out_s is not None and local_allowed:
            # A link probe is unanswered: its answer is the newest news about the link, and a payload sent now
            # would queue behind it. Nothing remote until it is in (see "Link probes").
            return decide("local", reason if chosen == "local" else "probing")
        size = _payload_bytes(costs)
        other, min_spacing_s, cap_s = None, self.probe_interval_s, math.inf
        stall_mode, stall_may_win = None, False
        if chosen == "local" and remote and stalled and self._link_back:
            # The mode a stall probe would use if the link is back: predicted from the link as it was while it
            # delivered (the bound from the stalled payload favours whatever is smallest, not what is fastest).
            stall_mode = min(remote, key=lambda m: (delivering.get(m, predicted.get(m, math.inf)), size[m]))
            hint = delivering.get(stall_mode)
            if hint is None and self._late_bps:  # no sample yet: the rate the late payload itself achieved
                hint = predict_latencies(costs, self._late_bps, rtt_or_0)[stall_mode]
            stall_may_win = hint is not None and hint < predicted["local"]
        if chosen in REMOTE_MODES:
            if rtt is None:  # RTT not yet told apart from serialization: measure the other size
                other = self._rtt_probe_mode(remote, costs, raw_pred, predicted[chosen])
                # A one-off until the RTT is known: spaced by its cost, but never more than an interval.
                min_spacing_s, cap_s = 0.0, self.probe_interval_s
            elif reason == "hysteresis" and best in REMOTE_MODES:  # too close to call: measure the runner-up
                other = best
        elif stall_mode is not None and (self._stall_probe_ok(now_s) or (self._near_miss and stall_may_win)):
            # A late result arrived: the link delivers again. Probe now (bounded by its deadline); probes that
            # keep missing back off (see _stall_probe_ok) unless the miss was a near one on a link that delivered
            # fast enough, and without that evidence the usual schedule applies.
            self._link_back = False
            other = stall_mode
            if self.link_probes and not stall_may_win:
                # Even the link as it delivered says local: a hedged frame would most likely cost its head for
                # nothing, and a free probe asks the same question.
                self._last_probe_s = now_s
                return decide(chosen, reason, probe_bytes=size[other])
            min_spacing_s, cap_s = 0.0, 0.0
        elif chosen == "local" and remote and self._probe_due(now_s) and not self._abandoned:
            other = self._rtt_probe_mode(remote, costs, raw_pred, predicted["local"]) if rtt is None else None
            other = other or min(remote, key=lambda m: predicted.get(m, math.inf))
            if self.link_probes:  # free: the frame stays local, a probe of that mode's size times the link
                if not self._may_probe(now_s, 0.0, self.probe_interval_s):
                    return decide(chosen, reason)
                self._last_probe_s = now_s
                return decide(chosen, reason, probe_bytes=size[other])
            cap_s = self.probe_interval_s * 2.0 ** min(self._probe_misses, PROBE_MAX_DOUBLINGS)
        elif chosen == "local" and reason == "hysteresis" and best in REMOTE_MODES and self.link_probes \
                and not self._abandoned \
                and now_s - self._last_hold_probe_s >= self.probe_interval_s / HOLD_PROBES_PER_INTERVAL:
            # Hysteresis holds local against a remote mode, and local frames measure nothing: a free probe keeps
            # the estimate fresh, so the hold ends on evidence rather than on the time-to-trigger.
            self._last_hold_probe_s = now_s
            return decide(chosen, reason, probe_bytes=size[best])
        # (A remote mode has no prediction only in a stall met before any bandwidth estimate.)
        if other is not None and other != chosen \
                and self._may_probe(now_s, predicted.get(other, math.inf) - predicted[chosen], min_spacing_s, cap_s):
            self._last_probe_s = now_s
            self._probed_from_local = chosen == "local"
            return decide(other, "probe")
        return decide(chosen, reason)

    def _choose_without_estimate(
        self,
        now_s: float,
        costs: ModeCosts,
        eligible: list[str],
        remote: list[str],
        rtt_s: float,
        decide: Callable[..., Decision],
    ) -> Decision:
        # Lower bound of each remote mode: its compute and the RTT on an infinitely fast link.
        bound = predict_latencies(costs, math.inf, rtt_s)
        local_ok = "local" in eligible
        nbytes = _payload_bytes(costs)
        if local_ok and self._probe_out_s is not None:  # a link probe's answer comes first (see "Link probes")
            self._current = "local"
            return decide("local", "no-estimate")
        if local_ok:
            winnable = _winnable(costs, remote, rtt_s)
            if not winnable:
                self._current = "local"
                # Compute alone rules remote out for good; an RTT is a measurement (one ping at connect may have
                # met a stall), so where only the RTT does, one frame per probe interval checks it.
                could = _winnable(costs, remote, 0.0)
                if could and rtt_s > 0 and self._probe_due_without_estimate(now_s):
                    self._last_probe_s = now_s
                    probe_mode = min(could, key=lambda m: (nbytes[m], bound[m]))
                    if self.link_probes:
                        return decide("local", "best", probe_bytes=nbytes[probe_mode])
                    return decide(probe_mode, "probe")
                return decide("local", "best")
            remote = winnable
        may_measure = self._last_probe_s is None or now_s - self._last_probe_s >= self.probe_interval_s
        if may_measure or not local_ok:
            if may_measure:
                self._last_probe_s = now_s
            return decide(self._first_mode(costs, remote, local_ok, rtt_s), "no-estimate")
        self._current = "local"
        return decide("local", "no-estimate")

    def _first_mode(self, costs: ModeCosts, remote: list[str], local_ok: bool, rtt_s: float) -> str:
        """The remote mode to measure an unknown link with (see "Initial choice")."""
        bound = predict_latencies(costs, math.inf, rtt_s)
        nbytes = _payload_bytes(costs)
        device_ms = {"split": costs.t_head_device_ms, "offload": costs.t_jpeg_encode_ms}

        def key(m: str) -> tuple[float, ...]:
            if self.hedge and local_ok:  # the cheapest worst case
                return (device_ms[m] + hedge_local_ms(costs, m), nbytes[m], bound[m])
            return (nbytes[m], bound[m])

        return min(remote, key=key)

    def connect_probe(self, now_s: float) -> int:
        """Bytes of a link probe to send now, while connecting, before the first frame; 0: none.

        See "Initial choice": the payload of the mode the first frame would
        otherwise be sent with to learn the link. 0 if link probes are off,
        the bandwidth is already known (a prior), or no remote mode could win
        on any link. A probe asked for is unanswered until
        :meth:`observe_probe` or :meth:`probe_lost`.
        """
        if not self.link_probes or self.estimator.bandwidth_bps() is not None or self._probe_out_s is not None:
            return 0
        eligible = [m for m in self.modes if self.accuracy[m] >= self.min_accuracy]
        remote = [m for m in eligible if m in REMOTE_MODES]
        costs = self.effective_costs()
        rtt_s = self.estimator.rtt_s() or 0.0
        local_ok = "local" in eligible
        if local_ok:
            remote = _winnable(costs, remote, rtt_s)
        if not remote:
            return 0
        nbytes = int(_payload_bytes(costs)[self._first_mode(costs, remote, local_ok, rtt_s)])
        if nbytes > 0:
            self._probe_out_s = self._last_probe_s = now_s
        return nbytes

    def _may_probe(self, now_s: float, excess_ms: float, min_spacing_s: float, cap_s: float = math.inf) -> bool:
        """At most one probe per ``min_spacing_s``, and fewer when probes are expensive.

        A probe predicted to take ``excess_ms`` longer than the frame would
        have taken otherwise waits ``excess / PROBE_BUDGET`` after the
        previous one if that is longer, so probing costs at most
        :data:`PROBE_BUDGET` of the time: on a link so slow that a split
        payload takes seconds, probing every 5 s would cost more than it
        could ever find. That wait is capped by ``cap_s``: the prediction
        comes from the last, possibly stale, estimate — right after an outage
        it says "seconds" for a link that has long recovered — so local
        probes wait at most ``probe_interval_s``, doubled for each probe in
        a row that found the link still not worth using.
        """
        if self._last_probe_s is None:
            return True
        spacing = max(min_spacing_s, min(max(0.0, excess_ms) / 1000.0 / PROBE_BUDGET, cap_s))
        return now_s - self._last_probe_s >= spacing

    def _stall_probe_ok(self, now_s: float) -> bool:
        """During a stall, whether a late result may trigger a probe: the first at once, then backing off.

        The k-th miss of a stall allows the next evidence-triggered probe
        ``probe_interval_s * 2**(k-2) / 2`` after the previous probe (none
        for k = 1): on a link that recovers, the probe comes as soon as the
        late result says so; on a link that stays too slow for remote (whose
        late results keep arriving), the failed probes thin out.
        """
        if self._stall_misses <= 1 or self._last_probe_s is None:
            return True
        wait = 0.5 * self.probe_interval_s * 2.0 ** min(self._stall_misses - 2, PROBE_MAX_DOUBLINGS)
        return now_s - self._last_probe_s >= wait

    def _probe_due_without_estimate(self, now_s: float) -> bool:
        if self._started_s is None or now_s - self._started_s < self.probe_interval_s:
            return False
        return self._last_probe_s is None or now_s - self._last_probe_s >= self.probe_interval_s

    def _probe_due(self, now_s: float) -> bool:
        if self._started_s is None or now_s - self._started_s < self.probe_interval_s:
            return False
        return self.estimator.age_s(now_s) >= self.probe_interval_s

    def _rtt_probe_mode(self, remote: list[str], costs: ModeCosts, raw_ms: Mapping[str, float],
                        to_beat_ms: float) -> str | None:
        """The remote mode whose payload would tell RTT apart from serialization, if one is worth a frame.

        That is one whose payload size differs enough from the last remote
        transfer's for a two-size fit (:data:`RTT_FIT_SIZE_RATIO`) and that
        could beat ``to_beat_ms`` for *some* RTT consistent with what was
        seen: ``raw_ms`` are the predictions with RTT = 0, and an RTT of up
        to the fastest network time seen, ``t``, takes ``(n/s - 1) * t`` off
        a payload ``n`` larger than the one measured, ``s``. So a probe that
        cannot win whatever the RTT (a JPEG on a link that takes seconds for
        the split payload) is never sent. The most promising if several.
        """
        if not self._transfers:
            return None
        seen = self._transfers[-1][1]
        fastest_s = min(t for _, _, t in self._transfers)
        nbytes = _payload_bytes(costs)
        optimistic = {m: raw_ms[m] - max(0.0, nbytes[m] / max(seen, 1) - 1.0) * fastest_s * 1000.0 for m in remote}
        candidates = [
            m for m in remote
            if optimistic[m] < to_beat_ms
            and max(nbytes[m], seen) >= RTT_FIT_SIZE_RATIO * max(min(nbytes[m], seen), 1)
        ]
        return min(candidates, key=lambda m: optimistic[m]) if candidates else None

    # ------------------------------------------------------------ observation
    def observe(self, mode: str, nbytes: int, total_s: float, server_s: float, now_s: float) -> None:
        """Report a finished remote frame: payload bytes, send-to-result time, and the server's own time."""
        if mode not in REMOTE_MODES:
            raise ValueError(f"observe() is for remote modes {REMOTE_MODES}; use observe_local() for {mode!r}")
        if self._stall_misses and mode in self.modes:  # a probe came back in time: the stall is over, and the
            self._current = mode  # steady mode is the one that just delivered (hysteresis is not for coming back)
        self._stall_misses, self._link_back = 0, False  # a result in time: the stall, if any, is over
        if math.isfinite(total_s) and math.isfinite(server_s) and nbytes >= 0:
            network_s = max(0.0, total_s - server_s)
            rtt = None if self._pinged else self._two_size_rtt(nbytes, network_s, now_s)
            if rtt is not None:  # before the transfer, so its bandwidth sample already uses it
                self._pair_rtts.append(rtt)
                self.estimator.observe_rtt(median(self._pair_rtts), now_s)
            self._transfers.append((now_s, int(nbytes), network_s))
        self.estimator.observe_transfer(nbytes, total_s, server_s, now_s)
        if mode == "split":
            expected_ms = self.costs.t_tail_edge_ms
        else:
            expected_ms = self.costs.t_jpeg_decode_edge_ms + self.costs.t_full_edge_ms
        if expected_ms > 0 and math.isfinite(server_s) and server_s > 0:
            self._edge_ratios.append(server_s * 1000.0 / expected_ms)

    def _neutral_rtt(self, predicted: dict[str, float], costs: ModeCosts) -> dict[str, float]:
        """Predictions with the unidentified RTT at the middle of its feasible range instead of at 0.

        With no RTT the estimator counts the whole network time as
        serialization (RTT = 0), which is exact for the payload size it saw
        but overstates a larger payload by ``(n/s - 1) * RTT`` and understates
        a smaller one: the choice would lean towards the smaller payload. The
        RTT lies in ``[0, fastest network time seen]``; its midpoint favours
        neither size until a two-size measurement tells.
        """
        if not self._transfers:
            return predicted
        seen = self._transfers[-1][1]
        guess_s = 0.5 * min(t for _, _, t in self._transfers)
        if seen <= 0:
            return predicted
        out = dict(predicted)
        floor = predict_latencies(costs, math.inf, 0.0)
        for m, n in _payload_bytes(costs).items():
            out[m] = max(floor[m], out[m] - (n / seen - 1.0) * guess_s * 1000.0)
        return out

    def _two_size_rtt(self, nbytes: int, network_s: float, now_s: float) -> float | None:
        """RTT from this transfer and the previous one when their sizes differ enough (see the module docstring).

        Two points of ``network = RTT + bytes * 8 / B`` taken less than
        ``probe_interval_s`` apart. The intercept must lie in ``[0, fastest
        network time of the last RTT_BOUND_TRANSFERS transfers]`` (no
        transfer beats the RTT): one outside it, or a slope that is not
        positive, means the link changed between the two (e.g. both met an
        outage), and the pair is dropped rather than clamped, since a wrong
        RTT would bias every bandwidth sample after it.
        """
        if not self._transfers:
            return None
        at, n1, t1 = self._transfers[-1]
        n2, t2 = int(nbytes), network_s
        if now_s - at >= self.probe_interval_s or min(n1, n2) <= 0:
            return None
        if max(n1, n2) < RTT_FIT_SIZE_RATIO * min(n1, n2):
            return None
        bps, rtt_now = self.estimator.bandwidth_bps(), self.estimator.rtt_s()
        if bps is not None and bps > 0 and all(n == n1 for _, n, _ in list(self._transfers)[-3:]):
            # The previous size as the estimator sees it (smoothed over its window), not one noisy sample.
            t1 = n1 * 8.0 / bps + (rtt_now or 0.0)
        slope = (t2 - t1) / (n2 - n1)
        if slope <= 0:
            return None
        rtt = t1 - slope * n1
        bound = min(t2, min(t for _, _, t in self._transfers))
        return rtt if 0.0 <= rtt <= bound else None

    def deadline_budget_s(self, predicted_ms: float, local_ms: float) -> float:
        """How long after its start a remote frame predicted to take ``predicted_ms`` is waited for.

        ``max(deadline_factor * p, p + deadline_slack * local_ms)`` with ``p =
        min(predicted_ms, local_ms)``: the prediction plus a margin for its
        noise that scales with what giving up costs (the local run that then
        serves the frame). ``p`` is capped at local's time because a remote
        frame is only worth waiting for while it can still beat local; a
        probe predicted from a stale, pessimistic estimate would otherwise
        get an unbounded deadline. ``inf`` with ``deadline_factor=None``.
        """
        if self.deadline_factor is None:
            return math.inf
        p = min(max(predicted_ms, 0.0), local_ms)
        return max(self.deadline_factor * p, p + self.deadline_slack * local_ms) / 1000.0

    def missed(self, mode: str, nbytes: int, waited_s: float, now_s: float) -> None:
        """Report a remote frame whose result had not arrived at its deadline (it was then served locally).

        ``waited_s``: from sending the payload to giving up. This is news
        about the link, not a server failure: the estimator gets a bound on
        the bandwidth (the payload took longer than that), the steady mode
        becomes local, and until a remote frame comes back in time remote
        modes are used only as probes (reason ``"stalled"``; see the module
        docstring). A result that arrives after all goes to
        :meth:`observe_late`.
        """
        if mode not in REMOTE_MODES:
            raise ValueError(f"missed() is for remote modes {REMOTE_MODES}, got {mode!r}")
        self._stall_misses += 1
        self._abandoned += 1
        self._link_back = False
        self._last_miss_s = now_s
        self._current = "local"
        self._held_against = None
        costs = self.effective_costs()
        edge_ms = costs.t_tail_edge_ms if mode == "split" else costs.t_jpeg_decode_edge_ms + costs.t_full_edge_ms
        observe_unfinished = getattr(self.estimator, "observe_unfinished", None)
        if observe_unfinished is not None and math.isfinite(waited_s):
            observe_unfinished(nbytes, waited_s, edge_ms / 1000.0, now_s)

    def observe_late(self, mode: str, nbytes: int, total_s: float, server_s: float, now_s: float) -> None:
        """Report the result of a frame that had missed its deadline, arriving ``total_s`` after it was sent.

        Its time includes the stall, so it is not a bandwidth sample (a stall
        is not a rate, see :mod:`mobile_client.estimators`); what it says is
        that the link delivers again, so during a stall the next frame is a
        probe (once per stall).
        """
        if mode not in REMOTE_MODES:
            raise ValueError(f"observe_late() is for remote modes {REMOTE_MODES}, got {mode!r}")
        self._abandoned = max(0, self._abandoned - 1)
        network_s = total_s - server_s
        if math.isfinite(network_s) and network_s > 0 and nbytes > 0:
            self._late_bps = nbytes * 8.0 / network_s
        # Older news says nothing about the latest stall; and while another given-up payload is still on its way,
        # a probe would queue behind it and time that queue, not the link.
        if self._stall_misses and now_s >= self._last_miss_s and not self._abandoned:
            self._link_back = True
            self._near_miss = now_s - self._last_miss_s < self.effective_costs().t_full_device_ms / 1000.0

    def observe_probe(self, nbytes: int, total_s: float, server_s: float, now_s: float) -> None:
        """Report the answer to a link probe (``Decision.probe_bytes``): its bytes, send-to-answer and server time.

        A bandwidth sample like a remote frame's (the probe carried as many
        bytes as the payload it stands for), and the newest news about the
        link: a stall met before the probe was sent is over (if the link is
        still slow, the sample says so). The send time is ``now_s -
        total_s``: an answer to an older probe, given up on, is a sample too,
        but does not end the wait for the newer one.
        """
        sent_s = self._probe_out_s
        if sent_s is not None and not now_s - total_s < sent_s - PROBE_CLOCK_SLACK_S:
            self._probe_out_s = None  # the answer to the probe awaited (not to an older one given up on)
        if not (math.isfinite(total_s) and math.isfinite(server_s) and nbytes > 0):
            return
        if now_s - total_s >= self._last_miss_s - PROBE_CLOCK_SLACK_S:
            self._stall_misses, self._link_back = 0, False
        self._transfers.append((now_s, int(nbytes), max(0.0, total_s - server_s)))
        self.estimator.observe_transfer(nbytes, total_s, server_s, now_s)

    def probe_lost(self, now_s: float) -> None:
        """Report that the link probe will not be answered (not sent, refused, or the stream dropped)."""
        self._probe_out_s = None

    def observe_local(self, seconds: float, now_s: float) -> None:
        """Report a finished local frame's compute time, so a throttled device is noticed."""
        if self.costs.t_full_device_ms > 0 and math.isfinite(seconds) and seconds > 0:
            self._device_ratios.append(seconds * 1000.0 / self.costs.t_full_device_ms)

    def observe_rtt(self, rtt_s: float, now_s: float) -> None:
        """Report a payload-free round trip (ping, health check): the cleanest RTT sample.

        Once one is given, RTTs are no longer inferred from pairs of payload
        sizes (see the module docstring): those assume the rate did not move
        between the two transfers, which a cellular link does not promise.
        """
        if math.isfinite(rtt_s) and rtt_s >= 0:
            self._pinged = True
        self.estimator.observe_rtt(rtt_s, now_s)

    # ---------------------------------------------------------------- server
    def server_failed(self, now_s: float) -> float:
        """Record a failed connect or a stream that stopped answering; return the backoff (s) now in force."""
        self._failures += 1
        self._probe_out_s = None  # the stream that carried it is gone
        self._abandoned = 0  # ... and the results of frames given up on with it
        backoff = self.backoff_s()
        self._retry_at_s = now_s + backoff
        self._current = "local"
        return backoff

    def server_ok(self, now_s: float) -> None:
        """Record a successful (re)connection: the backoff starts again from ``backoff_initial_s``."""
        self._failures = 0
        self._retry_at_s = -math.inf
        self._probe_out_s = None  # a fresh stream: nothing sent on the old one will be answered
        self._abandoned = 0

    def should_reconnect(self, now_s: float) -> bool:
        """Whether the server is down and its backoff has expired, so a reconnect should be tried now."""
        return self._failures > 0 and now_s >= self._retry_at_s

"""Per-frame choice among local, split and offload (DESIGN.md §3).

Pure decision logic: no sockets, no clock. Time is always passed in, so the
live client and the trace-driven simulator drive the very same object and a
simulated figure can be compared with a live run.

Contract with the caller: call :meth:`Controller.choose` once per frame and
execute the returned mode; report each finished remote frame with
:meth:`Controller.observe` (and local ones with
:meth:`Controller.observe_local`); report connection trouble with
:meth:`Controller.server_failed` / :meth:`Controller.server_ok`.

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
  already exceeds local), pick local: no measurement is needed. Otherwise
  send *one* frame with the eligible remote mode with the fewest bytes
  (cheapest way to learn B, reason ``"no-estimate"``) and run locally until
  its result arrives; if none arrives, try again after ``probe_interval_s``.
  A prior can be given instead: ``LinkEstimator(initial_bps=..., initial_rtt_s=...)``.
  The default estimator expires samples older than ``probe_interval_s``
  (relative to the newest), so one probe after a quiet spell replaces a
  stale estimate instead of being averaged with it.
* **Probing** — a frame is sent remotely as a probe (reason ``"probe"``) only
  when all of these hold: the mode chosen for it is local (a remote choice
  measures the link anyway), a remote mode is eligible and the server is up,
  the bandwidth estimate has had no sample for ``probe_interval_s``, the
  controller has been running for ``probe_interval_s`` (a prior is trusted
  that long), and the last probe was at least ``probe_interval_s`` ago. So:
  at most one probe per interval, one frame each. The probe uses the remote
  mode with the lowest predicted latency — the one we would switch to, and
  by the model's own account the cheapest. Its cost is bounded by one frame
  per interval; the client's usual per-frame timeout and local fallback
  bound that frame too.
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
]

MODES: tuple[str, ...] = ("local", "split", "offload")
REMOTE_MODES: tuple[str, ...] = ("split", "offload")
REASONS: frozenset[str] = frozenset({"best", "hysteresis", "probe", "no-server", "no-estimate", "accuracy"})


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
    )


@dataclass(frozen=True)
class Decision:
    """What to do with one frame, and why — enough to log and to plot a run afterwards."""

    mode: str
    predicted_ms: dict[str, float] = field(default_factory=dict)
    reason: str = "best"
    bandwidth_bps: float | None = None
    rtt_s: float | None = None


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

        self._current: str | None = None
        self._started_s: float | None = None
        self._last_probe_s: float | None = None
        self._failures = 0
        self._retry_at_s = -math.inf
        self._device_ratios: deque[float] = deque(maxlen=compute_window)
        self._edge_ratios: deque[float] = deque(maxlen=compute_window)

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
        costs = self.effective_costs()
        bps = self.estimator.bandwidth_bps()
        rtt = self.estimator.rtt_s()
        rtt_or_0 = rtt if rtt is not None else 0.0

        all_pred = predict_latencies(costs, bps if bps is not None else math.nan, rtt_or_0)
        shown = set(self.modes) | {"local"}
        predicted = {m: v for m, v in all_pred.items() if m in shown and (m == "local" or bps is not None)}

        def decide(mode: str, reason: str) -> Decision:
            return Decision(mode, predicted, reason, bps, rtt)

        if self._failures and now_s < self._retry_at_s:
            self._current = "local"
            return decide("local", "no-server")

        eligible = [m for m in self.modes if self.accuracy[m] >= self.min_accuracy]
        nothing_meets = not eligible
        if nothing_meets:
            eligible = [max(self.modes, key=lambda m: self.accuracy[m])]
        remote = [m for m in eligible if m in REMOTE_MODES]

        if bps is None and remote:
            return self._choose_without_estimate(now_s, costs, eligible, remote, rtt_or_0, decide)

        best = min(eligible, key=lambda m: predicted[m])
        fastest = min((m for m in self.modes if m in predicted), key=lambda m: predicted[m])
        reason = "accuracy" if nothing_meets or fastest not in eligible else "best"
        chosen = best
        cur = self._current
        if (
            cur is not None
            and cur != best
            and cur in eligible
            and predicted[best] >= (1.0 - self.hysteresis) * predicted[cur]
        ):
            chosen, reason = cur, "hysteresis"
        self._current = chosen

        if chosen == "local" and remote and self._probe_due(now_s):
            self._last_probe_s = now_s
            return decide(min(remote, key=lambda m: predicted[m]), "probe")
        return decide(chosen, reason)

    def _choose_without_estimate(
        self,
        now_s: float,
        costs: ModeCosts,
        eligible: list[str],
        remote: list[str],
        rtt_s: float,
        decide: Callable[[str, str], Decision],
    ) -> Decision:
        # Lower bound of each remote mode: its compute and the RTT on an infinitely fast link.
        bound = predict_latencies(costs, math.inf, rtt_s)
        local_ok = "local" in eligible
        if local_ok:
            remote = [m for m in remote if bound[m] < costs.t_full_device_ms]
            if not remote:
                self._current = "local"
                return decide("local", "best")
        may_measure = self._last_probe_s is None or now_s - self._last_probe_s >= self.probe_interval_s
        if may_measure or not local_ok:
            if may_measure:
                self._last_probe_s = now_s
            nbytes = {"split": costs.bytes_split, "offload": costs.bytes_jpeg}
            return decide(min(remote, key=lambda m: (nbytes[m], bound[m])), "no-estimate")
        self._current = "local"
        return decide("local", "no-estimate")

    def _probe_due(self, now_s: float) -> bool:
        if self._started_s is None or now_s - self._started_s < self.probe_interval_s:
            return False
        if self.estimator.age_s(now_s) < self.probe_interval_s:
            return False
        return self._last_probe_s is None or now_s - self._last_probe_s >= self.probe_interval_s

    # ------------------------------------------------------------ observation
    def observe(self, mode: str, nbytes: int, total_s: float, server_s: float, now_s: float) -> None:
        """Report a finished remote frame: payload bytes, send-to-result time, and the server's own time."""
        if mode not in REMOTE_MODES:
            raise ValueError(f"observe() is for remote modes {REMOTE_MODES}; use observe_local() for {mode!r}")
        self.estimator.observe_transfer(nbytes, total_s, server_s, now_s)
        if mode == "split":
            expected_ms = self.costs.t_tail_edge_ms
        else:
            expected_ms = self.costs.t_jpeg_decode_edge_ms + self.costs.t_full_edge_ms
        if expected_ms > 0 and math.isfinite(server_s) and server_s > 0:
            self._edge_ratios.append(server_s * 1000.0 / expected_ms)

    def observe_local(self, seconds: float, now_s: float) -> None:
        """Report a finished local frame's compute time, so a throttled device is noticed."""
        if self.costs.t_full_device_ms > 0 and math.isfinite(seconds) and seconds > 0:
            self._device_ratios.append(seconds * 1000.0 / self.costs.t_full_device_ms)

    def observe_rtt(self, rtt_s: float, now_s: float) -> None:
        """Report a payload-free round trip (ping, health check): the cleanest RTT sample."""
        self.estimator.observe_rtt(rtt_s, now_s)

    # ---------------------------------------------------------------- server
    def server_failed(self, now_s: float) -> float:
        """Record a failed connect or a stream that stopped answering; return the backoff (s) now in force."""
        self._failures += 1
        backoff = self.backoff_s()
        self._retry_at_s = now_s + backoff
        self._current = "local"
        return backoff

    def server_ok(self, now_s: float) -> None:
        """Record a successful (re)connection: the backoff starts again from ``backoff_initial_s``."""
        self._failures = 0
        self._retry_at_s = -math.inf

    def should_reconnect(self, now_s: float) -> bool:
        """Whether the server is down and its backoff has expired, so a reconnect should be tried now."""
        return self._failures > 0 and now_s >= self._retry_at_s

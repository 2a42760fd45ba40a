"""Link estimators: how fast the uplink is (B) and how long a round trip takes (RTT).

The controller predicts a remote mode as ``bytes * 8 / B + RTT + compute``
(DESIGN.md §3), so it needs the two network terms *separately*. What the
client can time, though, is one number per frame: from "request sent" to
"result received". These classes turn those timings into B and RTT.

Decisions, and why:

* **Bandwidth = harmonic mean of the last few throughput samples**
  (:class:`BandwidthEstimator`), as Pensieve and FESTIVE do. A harmonic mean
  is dominated by the *slow* samples, so one lucky burst (a transfer that
  landed in a buffer) cannot make the controller believe in a link it does
  not have, while a single slow sample pulls it down only as much as it
  really cost. Mistaking a slow link for a fast one costs a whole frame of
  waiting; the opposite only costs a missed opportunity, so the asymmetry is
  wanted.
* **Tiny transfers are not bandwidth samples.** Below ``min_bytes`` a
  transfer's time is almost all RTT, and ``bytes / time`` would then measure
  latency, not rate. Such transfers are RTT samples instead.
* **RTT = median of the last few samples** (:class:`RttEstimator`). A
  min-filter (TCP/BBR style) estimates the *propagation* delay, which is the
  right thing for congestion control but too optimistic for predicting when
  a frame's result comes back: the frame will also meet the usual queueing
  and server scheduling delay. The median tracks that typical delay and
  ignores isolated spikes (a retransmission, a GC pause) in either direction.
* **Old samples expire** (``max_age_s``, off by default): a sample more
  than ``max_age_s`` older than the newest one is ignored. While frames
  stream, the window spans well under a second and this never triggers; it
  matters after a quiet spell (the controller ran locally for a while and
  then sends one probe). Without it a harmonic mean of four stale slow
  samples and one fresh fast one would still read "slow", and recovery
  would take ``window`` probes; with it the probe speaks for the link now.
* **A transfer that did not finish is a bound, not a sample**
  (:meth:`BandwidthEstimator.bound`). When a remote frame misses its
  deadline (the runtime then serves it locally), all that is known is that
  its bytes took *longer* than the time waited: the rate is *at most*
  ``bytes / waited``. Averaging that censored value with the others as if it
  were a measurement is wrong both ways: it understates how slow the link
  is now (one such value among four good ones leaves the harmonic mean high
  enough to send the next frame into the same stall, and the next), and,
  once the link is back, it drags the mean down for ``window`` transfers,
  because a stall is not a slow rate but a pause of unknown length that no
  rate average represents. So it caps the estimate (``min(mean, bound)``)
  until the next transfer that does finish in time, and never enters the
  mean. Stalls are the deadline's business; the mean describes the link
  while it delivers.
* **Separating RTT from serialization** (:class:`LinkEstimator`, and
  :class:`TransferLog` for the controller's two-size identification): see
  their docstrings and docs/controller.md ("Telling RTT from
  serialization"). Both need two payload sizes at least
  :data:`RTT_FIT_SIZE_RATIO` apart (:func:`sizes_tell_rtt`).

Nothing here reads a clock: every observation carries its own timestamp, so
the same code runs live and in a trace-driven simulator with a fake clock.
"""

from __future__ import annotations

import math
from collections import deque
from statistics import median
from typing import TypeVar

from .edge_load import EdgeLoad  # the edge's queue, the one estimate here not of the link (its own module)

_T = TypeVar("_T")

__all__ = ["BandwidthEstimator", "RttEstimator", "LinkEstimator", "TransferLog", "EdgeLoad", "RTT_FIT_SIZE_RATIO",
           "sizes_tell_rtt"]

# Two payloads must differ at least this much in size for their times to separate RTT from serialization.
RTT_FIT_SIZE_RATIO = 1.5
# How many recent remote transfers bound the RTT from above (none can be faster than the RTT).
RTT_BOUND_TRANSFERS = 32
# The RTT a TransferLog identifies is the median of its last RTT_PAIRS two-size identifications: each one is
# noisy on a bursty link, the propagation RTT they measure hardly moves.
RTT_PAIRS = 9


def _finite_nonneg(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x >= 0


def _check_max_age(max_age_s: float | None) -> None:
    if max_age_s is not None and not max_age_s > 0:
        raise ValueError(f"max_age_s must be positive or None, got {max_age_s}")


def sizes_tell_rtt(a: float, b: float) -> bool:
    """Whether transfers of ``a`` and ``b`` bytes differ enough in size for their times to separate RTT from rate."""
    return max(a, b) >= RTT_FIT_SIZE_RATIO * min(a, b)


def _recent(samples: deque[tuple[float, _T]], max_age_s: float | None) -> list[_T]:
    """Values of the samples taken less than ``max_age_s`` before the newest one."""
    if not samples:
        return []
    if max_age_s is None:
        return [v for _, v in samples]
    newest = samples[-1][0]
    return [v for at, v in samples if newest - at < max_age_s]


class _Sampled:
    """What both estimators count: accepted samples, and when the newest was taken."""

    def __init__(self, window: int, max_age_s: float | None) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        _check_max_age(max_age_s)
        self.window, self.max_age_s = window, max_age_s
        self._samples = 0
        self._last_at: float | None = None

    @property
    def samples(self) -> int:
        """How many samples have been accepted since creation (not only those in the window)."""
        return self._samples

    @property
    def last_at(self) -> float | None:
        """When the newest accepted sample was taken; ``None`` before any."""
        return self._last_at

    def age_s(self, now_s: float) -> float:
        """Seconds since the last accepted sample; ``inf`` before any, so "stale" needs no special case."""
        if self._last_at is None:
            return math.inf
        return max(0.0, now_s - self._last_at)


class BandwidthEstimator(_Sampled):
    """Uplink rate from timed transfers: harmonic mean of the recent throughputs.

    ``window`` is kept small (5, like Pensieve) so that the estimate follows a
    link that changes: after a step, it is made only of new samples once
    ``window`` transfers have been seen. ``initial_bps`` is a prior returned
    until the first sample; it is not mixed into the mean, because a guess
    should not dilute measurements. ``max_age_s``: see the module docstring.
    """

    def __init__(
        self,
        window: int = 5,
        min_bytes: int = 1000,
        initial_bps: float | None = None,
        max_age_s: float | None = None,
    ) -> None:
        super().__init__(window, max_age_s)
        if min_bytes < 0:
            raise ValueError(f"min_bytes must be >= 0, got {min_bytes}")
        if initial_bps is not None and not (math.isfinite(initial_bps) and initial_bps > 0):
            raise ValueError(f"initial_bps must be a positive number, got {initial_bps}")
        self.min_bytes = min_bytes
        self.initial_bps = initial_bps
        self._rates: deque[tuple[float, float]] = deque(maxlen=window)
        self._bound: tuple[float, float] | None = None  # (at_s, bps): a transfer that did not finish

    def observe(self, nbytes: int, seconds: float, at_s: float) -> bool:
        """Record that ``nbytes`` took ``seconds`` to serialize; return whether it was used.

        Transfers below ``min_bytes``, and non-positive or non-finite durations
        (clock glitches, a server time larger than the total), are dropped
        rather than clamped: a made-up sample would be worse than none.
        """
        if nbytes < self.min_bytes or not math.isfinite(seconds) or seconds <= 0:
            return False
        self._rates.append((at_s, nbytes * 8.0 / seconds))
        self._samples += 1
        self._last_at = at_s if self._last_at is None else max(self._last_at, at_s)
        if self._bound is not None and at_s >= self._bound[0]:
            self._bound = None  # a transfer finished after the one that did not: the link delivers again
        return True

    def bound(self, nbytes: int, seconds: float, at_s: float) -> bool:
        """Record that ``nbytes`` had *not* gone through after ``seconds``: the rate is at most ``nbytes/seconds``.

        The estimate is capped by that rate until a transfer observed at or
        after ``at_s`` finishes (see the module docstring); it never enters
        the mean. A later bound replaces an earlier one. Counts for
        :meth:`age_s` (it is news about the link), not for :attr:`samples`.
        """
        if nbytes <= 0 or not math.isfinite(seconds) or seconds <= 0:
            return False
        self._bound = (at_s, nbytes * 8.0 / seconds)
        self._last_at = at_s if self._last_at is None else max(self._last_at, at_s)
        return True

    @property
    def bounded(self) -> bool:
        """Whether a transfer that did not finish caps the estimate now."""
        return self._bound is not None

    def estimate_bps(self, *, bounded: bool = True) -> float | None:
        """Harmonic mean of the window (bits/s), capped by a pending bound; the prior before any sample, else ``None``.

        ``bounded=False``: the mean alone, i.e. the link as it was while it delivered.
        """
        rates = _recent(self._rates, self.max_age_s)
        mean = len(rates) / sum(1.0 / r for r in rates) if rates else self.initial_bps
        if self._bound is None or not bounded:
            return mean
        return self._bound[1] if mean is None else min(mean, self._bound[1])



class RttEstimator(_Sampled):
    """Round-trip time as the median of the recent samples (see the module docstring for why)."""

    def __init__(self, window: int = 10, initial_s: float | None = None, max_age_s: float | None = None) -> None:
        super().__init__(window, max_age_s)
        if initial_s is not None and not _finite_nonneg(initial_s):
            raise ValueError(f"initial_s must be a non-negative number, got {initial_s}")
        self.initial_s = initial_s
        self._rtts: deque[tuple[float, float]] = deque(maxlen=window)

    def observe(self, rtt_s: float, at_s: float) -> bool:
        """Record one round trip; negative or non-finite values are dropped, not clamped."""
        if not _finite_nonneg(rtt_s):
            return False
        self._rtts.append((at_s, float(rtt_s)))
        self._samples += 1
        self._last_at = at_s
        return True

    def estimate_s(self) -> float | None:
        """Median of the window, the prior before any sample, else ``None``."""
        rtts = _recent(self._rtts, self.max_age_s)
        if not rtts:
            return self.initial_s
        return float(median(rtts))


class LinkEstimator:
    """B and RTT from whole-frame timings, kept consistent with the ``bytes/B + RTT`` model.

    For each remote frame the client knows ``total_s`` (send to result) and
    the server reports ``server_s`` (its own compute). Then::

        network_s = total_s - server_s ≈ nbytes * 8 / B + RTT

    Taking ``nbytes / network_s`` as the rate would count the RTT twice (once
    inside that "rate", once again in the model) and underestimate B badly on
    small payloads: 20 KB over 2 Mbit/s with 40 ms RTT takes 120 ms, which
    reads as 1.33 Mbit/s. So:

    1. **RTT samples** come from tiny messages (``nbytes < min_bytes``: empty
       or near-empty frames, or pings given to :meth:`observe_rtt`), whose
       network time is essentially the RTT.
    2. If there are none, the RTT is the **intercept** of a least-squares line
       ``network_s = RTT + nbytes * 8 / B`` over the last ``fit_window`` large
       transfers — usable when their sizes differ (split vs. JPEG payloads, or
       frames of varying content): at least 1.5× between the smallest and
       largest (:data:`RTT_FIT_SIZE_RATIO`), and a positive slope. The intercept is clamped to
       ``[0, min network_s]``, because no transfer can be faster than the RTT.
    3. **B samples** come from large transfers as
       ``nbytes / (network_s - RTT)``. When the serialization part is lost in
       the noise (less than ``min_serialization_fraction`` of the network
       time), the divisor is floored at that fraction: the sample then says
       "at least this fast", a bounded value, rather than being dropped
       (dropping would freeze an old, low estimate on a link that got fast)
       or exploding towards infinity.
    4. With no RTT known at all, RTT is taken as 0 and the whole network time
       counts as serialization. B is then conservative, and the pair
       (B, 0) still reproduces the observed time for that payload size, so
       predictions stay self-consistent until an RTT is known.

    The response message (detections) is small and is folded into the RTT.
    ``max_age_s`` applies to all three (B, RTT, fit); see the module docstring.
    """

    def __init__(
        self,
        window: int = 5,
        rtt_window: int = 10,
        min_bytes: int = 1000,
        initial_bps: float | None = None,
        initial_rtt_s: float | None = None,
        min_serialization_fraction: float = 0.1,
        fit_window: int = 8,
        max_age_s: float | None = None,
    ) -> None:
        if not 0 < min_serialization_fraction <= 1:
            raise ValueError(f"min_serialization_fraction must be in (0, 1], got {min_serialization_fraction}")
        if fit_window < 2:
            raise ValueError(f"fit_window must be >= 2, got {fit_window}")
        self.min_bytes = min_bytes
        self.min_serialization_fraction = min_serialization_fraction
        self.max_age_s = max_age_s
        self.bandwidth = BandwidthEstimator(
            window=window, min_bytes=min_bytes, initial_bps=initial_bps, max_age_s=max_age_s
        )
        self.rtt = RttEstimator(window=rtt_window, initial_s=initial_rtt_s, max_age_s=max_age_s)
        # (at_s, (nbytes, network_s)) of recent large transfers, for the intercept fit.
        self._fit: deque[tuple[float, tuple[int, float]]] = deque(maxlen=fit_window)

    def observe_transfer(self, nbytes: int, total_s: float, server_s: float, at_s: float) -> None:
        """Feed one remote frame: ``nbytes`` sent, ``total_s`` until its result, ``server_s`` on the server."""
        if not (_finite_nonneg(total_s) and _finite_nonneg(server_s)) or nbytes < 0:
            return
        network_s = max(0.0, total_s - server_s)
        if nbytes < self.min_bytes:
            self.rtt.observe(network_s, at_s)
            return
        self._fit.append((at_s, (nbytes, network_s)))
        rtt = self.rtt_s() or 0.0
        floor = self.min_serialization_fraction * network_s
        self.bandwidth.observe(nbytes, max(network_s - rtt, floor), at_s)

    def observe_unfinished(self, nbytes: int, waited_s: float, server_s: float, at_s: float) -> None:
        """Feed a remote frame whose result had not come back after ``waited_s`` (its deadline passed).

        Its network time is at least ``waited_s - server_s`` (``server_s``:
        what the server would have needed), so the rate is at most
        ``nbytes / (that - RTT)``: a bound on the bandwidth
        (:meth:`BandwidthEstimator.bound`), not a sample, and not a point for
        the intercept fit.
        """
        if not (_finite_nonneg(waited_s) and _finite_nonneg(server_s)) or nbytes < self.min_bytes:
            return
        network_s = max(0.0, waited_s - server_s)
        rtt = self.rtt_s() or 0.0
        floor = self.min_serialization_fraction * network_s
        self.bandwidth.bound(nbytes, max(network_s - rtt, floor), at_s)

    def observe_rtt(self, rtt_s: float, at_s: float) -> None:
        """Feed an explicit round trip with no payload (a ping, a health check)."""
        self.rtt.observe(rtt_s, at_s)

    def new_path(self) -> None:
        """A new connection, perhaps to another replica: forget the RTT samples and the transfers that bound
        and fit it (the connect's pings measure it again); the bandwidth samples, of the device's own uplink,
        stay."""
        self.rtt = RttEstimator(window=self.rtt.window, initial_s=self.rtt.initial_s, max_age_s=self.rtt.max_age_s)
        self._fit.clear()

    def bandwidth_bps(self, *, bounded: bool = True) -> float | None:
        """The bandwidth estimate; ``bounded=False`` ignores a pending bound (see :meth:`observe_unfinished`)."""
        return self.bandwidth.estimate_bps(bounded=bounded)

    def rtt_s(self) -> float | None:
        """Measured RTT if any, else the fitted intercept, else the prior, else ``None``.

        A measured RTT is capped by the network time of the fastest recent
        large transfer: no message is faster than the round trip, so a transfer
        that took less proves the RTT is at most that. Without the cap, pings
        timed while the link was dead (a device leaving a tunnel) would keep
        the RTT at seconds for good, and with it every remote prediction: link
        probes measure the bandwidth, and nothing else would ever correct the
        RTT (docs/controller.md, "No absorbing states").
        """
        if self.rtt.samples:
            measured, bound = self.rtt.estimate_s(), self._transfer_bound()
            return measured if bound is None or measured is None else min(measured, bound)
        fitted = self._intercept()
        if fitted is not None:
            return fitted
        return self.rtt.estimate_s()

    def age_s(self, now_s: float) -> float:
        """Age of the *bandwidth* estimate: that is what goes stale when no remote mode is used."""
        return self.bandwidth.age_s(now_s)

    def _transfer_bound(self) -> float | None:
        """The fastest network time of the large transfers taken less than ``max_age_s`` before the newest news
        (transfer or RTT sample); ``None`` without one."""
        if not self._fit:
            return None
        rtt_at = getattr(self.rtt, "last_at", None)  # a replaced RTT estimator may not say
        newest = max(self._fit[-1][0], rtt_at if rtt_at is not None else -math.inf)
        recent = [t for at, (_, t) in self._fit if self.max_age_s is None or newest - at < self.max_age_s]
        return min(recent) if recent else None

    def _intercept(self) -> float | None:
        pts = _recent(self._fit, self.max_age_s)
        if len(pts) < 2:
            return None
        xs = [float(n) for n, _ in pts]
        ys = [t for _, t in pts]
        if min(xs) <= 0 or not sizes_tell_rtt(min(xs), max(xs)):
            return None
        xbar = sum(xs) / len(xs)
        ybar = sum(ys) / len(ys)
        sxx = sum((x - xbar) ** 2 for x in xs)
        slope = sum((x - xbar) * (y - ybar) for x, y in zip(xs, ys)) / sxx
        if slope <= 0:
            return None  # the link changed inside the window: sizes no longer explain times
        return min(max(0.0, ybar - slope * xbar), min(ys))


class TransferLog:
    """Recent remote transfers, and the RTT that pairs of them identify (docs/controller.md, "Telling RTT ...").

    The controller's own identification, beside :class:`LinkEstimator`'s
    intercept fit: a transfer whose payload differs at least
    :data:`RTT_FIT_SIZE_RATIO` from the previous one, less than
    ``max_gap_s`` later, gives the intercept of the line through the two. The
    median of the last :data:`RTT_PAIRS` goes to the estimator as an RTT
    sample, so it outlives the bandwidth samples. Once a payload-free round
    trip has been timed (:meth:`observe_ping`), pairs are no longer used: they
    assume the rate held still between the two transfers, which a cellular
    link does not promise.
    """

    def __init__(self, max_gap_s: float) -> None:
        self.max_gap_s = max_gap_s
        self.pinged = False  # an RTT was measured with a payload-free round trip
        self._transfers: deque[tuple[float, int, float]] = deque(maxlen=RTT_BOUND_TRANSFERS)
        self._pair_rtts: deque[float] = deque(maxlen=RTT_PAIRS)

    def __bool__(self) -> bool:
        return bool(self._transfers)

    @property
    def last_bytes(self) -> int:
        """The payload size of the newest transfer (the log must not be empty)."""
        return self._transfers[-1][1]

    @property
    def fastest_s(self) -> float:
        """The fastest network time of the recent transfers: an upper bound of the RTT."""
        return min(t for _, _, t in self._transfers)

    def observe_ping(self, rtt_s: float) -> None:
        if math.isfinite(rtt_s) and rtt_s >= 0:
            self.pinged = True

    def observe(self, nbytes: int, network_s: float, now_s: float, link: LinkEstimator | None = None) -> None:
        """Log a transfer; with ``link``, first give it the RTT this transfer and the previous one identify.

        Before the transfer's own bandwidth sample, so that sample already uses the new RTT.
        """
        rtt = None if link is None or self.pinged else self._two_size_rtt(nbytes, network_s, now_s, link)
        if rtt is not None:
            self._pair_rtts.append(rtt)
            link.observe_rtt(median(self._pair_rtts), now_s)
        self._transfers.append((now_s, int(nbytes), network_s))

    def _two_size_rtt(self, nbytes: int, network_s: float, now_s: float, link: LinkEstimator) -> float | None:
        """RTT from this transfer and the previous one when their sizes differ enough.

        Two points of ``network = RTT + bytes * 8 / B``. The intercept must
        lie in ``[0, fastest network time of the last RTT_BOUND_TRANSFERS
        transfers]`` (no transfer beats the RTT): one outside it, or a slope
        that is not positive, means the link changed between the two (e.g.
        both met an outage), and the pair is dropped rather than clamped,
        since a wrong RTT would bias every bandwidth sample after it.
        """
        if not self._transfers:
            return None
        at, n1, t1 = self._transfers[-1]
        n2, t2 = int(nbytes), network_s
        if now_s - at >= self.max_gap_s or min(n1, n2) <= 0:
            return None
        if not sizes_tell_rtt(n1, n2):
            return None
        bps, rtt_now = link.bandwidth_bps(), link.rtt_s()
        if bps is not None and bps > 0 and all(n == n1 for _, n, _ in list(self._transfers)[-3:]):
            # The previous size as the estimator sees it (smoothed over its window), not one noisy sample.
            t1 = n1 * 8.0 / bps + (rtt_now or 0.0)
        slope = (t2 - t1) / (n2 - n1)
        if slope <= 0:
            return None
        rtt = t1 - slope * n1
        bound = min(t2, self.fastest_s)
        return rtt if 0.0 <= rtt <= bound else None

"""When the controller may measure the link, and what of its link probes is still out.

The controller's probing rules (docs/controller.md: "Probing", "Link probes",
"Probe cost", "Runner-up probes and time-to-trigger") keep the cost of
learning the link bounded: at most one probe per interval, spaced further
when probes are expensive, and never a payload queued behind an unanswered
link probe. This object holds the timestamps those rules read; the
controller decides. No clock: every call carries its time.
"""

from __future__ import annotations

import math

__all__ = ["ProbeScheduler", "PROBE_BUDGET", "PROBE_MAX_DOUBLINGS", "LINK_PROBE_TIMEOUT_INTERVALS",
           "PROBE_CLOCK_SLACK_S", "HOLD_PROBES_PER_INTERVAL"]

# Probes are spaced so that their predicted extra time is at most this fraction of the time.
PROBE_BUDGET = 0.02
# ... but a probe sent instead of a local frame waits at most 2**PROBE_MAX_DOUBLINGS probe intervals.
PROBE_MAX_DOUBLINGS = 4
# A link probe unanswered this many probe intervals after it was sent is given up on.
LINK_PROBE_TIMEOUT_INTERVALS = 16
# A probe answer whose send time (arrival - total) is this much before the awaited probe's is an older probe's:
# the caller's clocks for the decision and for the send differ by the time it takes to put the probe on the wire.
PROBE_CLOCK_SLACK_S = 0.05
# While hysteresis holds local against a remote mode, link probes go out at most this many times per interval.
HOLD_PROBES_PER_INTERVAL = 5


class ProbeScheduler:
    """Probe timestamps and the spacing rules built on them, for one probe interval ``interval_s``."""

    def __init__(self, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"probe_interval_s must be positive, got {interval_s}")
        self.interval_s = interval_s
        self.started_s: float | None = None  # the first decision: a prior is trusted one interval from then
        self.last_s: float | None = None  # the last probe of any kind
        self.out_s: float | None = None  # when the unanswered link probe was sent
        self._last_hold_s = -math.inf
        self._from_local = False  # the last frame was a probe sent instead of a local frame
        self._misses = 0  # such probes in a row after which local was still the choice

    def start(self, now_s: float) -> None:
        """Called at every decision: remember the first, and give up on a link probe unanswered for too long."""
        if self.started_s is None:
            self.started_s = now_s
        if self.out_s is not None and now_s - self.out_s > LINK_PROBE_TIMEOUT_INTERVALS * self.interval_s:
            self.out_s = None

    @property
    def outstanding(self) -> bool:
        """A link probe is unanswered: its answer is the newest news, and a payload now would queue behind it."""
        return self.out_s is not None

    def sent(self, now_s: float, *, instead_of_local: bool | None = None) -> None:
        """A probe goes out now; a probe *frame* says whether it was sent instead of a local frame."""
        self.last_s = now_s
        if instead_of_local is not None:
            self._from_local = instead_of_local

    def link_probe_sent(self, now_s: float) -> None:
        """A link probe goes out now: nothing remote until it is answered (or given up on)."""
        self.out_s = now_s

    def answered(self, now_s: float, total_s: float) -> None:
        """A link probe's answer came; it ends the wait only if it answers the awaited probe, not an older one."""
        if self.out_s is not None and not now_s - total_s < self.out_s - PROBE_CLOCK_SLACK_S:
            self.out_s = None

    def lost(self) -> None:
        """The link probe will not be answered (not sent, refused, or the stream dropped)."""
        self.out_s = None

    def note_choice(self, chosen: str) -> None:
        """After a probe sent instead of a local frame: count it as a miss if local is still the choice."""
        if self._from_local:
            self._from_local = False
            self._misses = self._misses + 1 if chosen == "local" else 0

    def local_cap_s(self) -> float:
        """How long a probe sent instead of a local frame may wait at most: doubled per miss in a row."""
        return self.interval_s * 2.0 ** min(self._misses, PROBE_MAX_DOUBLINGS)

    def may_probe(self, now_s: float, excess_ms: float, min_spacing_s: float, cap_s: float = math.inf) -> bool:
        """At most one probe per ``min_spacing_s``, and fewer when probes are expensive ("Probe cost").

        A probe predicted to take ``excess_ms`` longer than the frame would
        have taken otherwise waits ``excess / PROBE_BUDGET`` after the
        previous one if that is longer, so probing costs at most
        :data:`PROBE_BUDGET` of the time. That wait is capped by ``cap_s``:
        the prediction comes from the last, possibly stale, estimate.
        """
        if self.last_s is None:
            return True
        spacing = max(min_spacing_s, min(max(0.0, excess_ms) / 1000.0 / PROBE_BUDGET, cap_s))
        return now_s - self.last_s >= spacing

    def due(self, now_s: float, estimate_age_s: float) -> bool:
        """The bandwidth estimate has had no sample for an interval, and the session is an interval old."""
        if self.started_s is None or now_s - self.started_s < self.interval_s:
            return False
        return estimate_age_s >= self.interval_s

    def due_without_estimate(self, now_s: float) -> bool:
        """With no estimate at all: one probe per interval, once the session is an interval old."""
        if self.started_s is None or now_s - self.started_s < self.interval_s:
            return False
        return self.last_s is None or now_s - self.last_s >= self.interval_s

    def may_measure(self, now_s: float) -> bool:
        """Whether a frame may be sent to learn an unknown link: the first, then one per interval."""
        return self.last_s is None or now_s - self.last_s >= self.interval_s

    def hold_probe_due(self, now_s: float) -> bool:
        """During a hysteresis hold of local: a link probe at most HOLD_PROBES_PER_INTERVAL times per interval."""
        return now_s - self._last_hold_s >= self.interval_s / HOLD_PROBES_PER_INTERVAL

    def hold_probe_sent(self, now_s: float) -> None:
        self._last_hold_s = now_s

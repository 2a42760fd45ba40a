"""Stalls and hedges: what the controller knows of remote frames it gave up on (docs/controller.md, "Stalls").

A missed deadline, or a hedged frame whose local run won, is news about the
link, not a server failure. This object counts those misses since the last
remote frame that came back in time, the given-up payloads still on their way,
and what their late results said (the link delivers again; was it a near
miss; how fast the late payload went). The controller reads it to decide when
a stall is over and when to probe. No clock: every call carries its time.
"""

from __future__ import annotations

import math
import random

from .probes import PROBE_CLOCK_SLACK_S, PROBE_MAX_DOUBLINGS

__all__ = ["StallTracker", "ServerBackoff", "Deadlines", "DEADLINE_FACTOR", "DEADLINE_SLACK"]

# A remote frame's result is waited for at most max(DEADLINE_FACTOR * P, P + DEADLINE_SLACK * local) after the
# frame started, P its predicted latency capped at local's (see Deadlines.budget_s).
DEADLINE_FACTOR = 2.0
DEADLINE_SLACK = 1.0


class Deadlines:
    """How long a remote frame is waited for before the device serves it (docs/controller.md, "Deadlines")."""

    def __init__(self, factor: float | None = DEADLINE_FACTOR, slack: float = DEADLINE_SLACK) -> None:
        if factor is not None and not (factor >= 1 and slack >= 0):
            raise ValueError(f"need deadline_factor >= 1 (or None: no deadline) and deadline_slack >= 0, "
                             f"got {factor}, {slack}")
        self.factor, self.slack = factor, slack

    def budget_s(self, predicted_ms: float, local_ms: float) -> float:
        """``max(factor * p, p + slack * local_ms)`` with ``p = min(predicted_ms, local_ms)``; ``inf`` without.

        The prediction plus a margin for its noise that scales with what giving
        up costs (the local run that then serves the frame); ``p`` is capped at
        local's time because a remote frame is only worth waiting for while it
        can still beat local (a probe predicted from a stale, pessimistic
        estimate would otherwise get an unbounded deadline).
        """
        if self.factor is None:
            return math.inf
        p = min(max(predicted_ms, 0.0), local_ms)
        return max(self.factor * p, p + self.slack * local_ms) / 1000.0


class StallTracker:
    """Misses since the last remote frame in time, given-up payloads in flight, and their late results."""

    def __init__(self) -> None:
        self.misses = 0  # deadline misses (or lost hedges) since the last remote frame that came back in time
        self.link_back = False  # during a stall, a late result arrived: the link delivers again
        self.near_miss = False  # ... and it came less than a local run after the frame was given up on
        self.abandoned = 0  # frames given up on whose results have not come back yet
        self.late_bps = 0.0  # the rate the last late result's payload achieved, stall included (a lower bound)
        self.last_miss_s = -math.inf

    @property
    def stalled(self) -> bool:
        return self.misses > 0

    def missed(self, now_s: float) -> None:
        """A remote frame was given up on at ``now_s``; its payload is still on its way."""
        self.misses += 1
        self.abandoned += 1
        self.link_back = False
        self.last_miss_s = now_s

    def in_time(self) -> None:
        """A remote frame came back in time: the stall, if any, is over."""
        self.misses, self.link_back = 0, False

    def late(self, nbytes: int, network_s: float, now_s: float, local_s: float) -> None:
        """A given-up frame's result arrived at ``now_s`` after ``network_s`` on the link.

        Older news says nothing about the latest stall; and while another
        given-up payload is still on its way, a probe would queue behind it
        and time that queue, not the link, so then the link is not "back".
        """
        self.abandoned = max(0, self.abandoned - 1)
        if math.isfinite(network_s) and network_s > 0 and nbytes > 0:
            self.late_bps = nbytes * 8.0 / network_s
        if self.misses and now_s >= self.last_miss_s and not self.abandoned:
            self.link_back = True
            self.near_miss = now_s - self.last_miss_s < local_s

    def probe_answered(self, sent_s: float) -> None:
        """A link probe sent at ``sent_s`` was answered: a stall met before it was sent is over."""
        if sent_s >= self.last_miss_s - PROBE_CLOCK_SLACK_S:
            self.in_time()

    def stream_lost(self) -> None:
        """The stream is gone, and the results of the frames given up on with it."""
        self.abandoned = 0

    def evidence_probe_ok(self, now_s: float, last_probe_s: float | None, interval_s: float) -> bool:
        """Whether a late result may trigger a probe now: the first at once, then backing off.

        The k-th miss of a stall allows the next evidence-triggered probe
        ``interval_s * 2**(k-2) / 2`` after the previous probe (none for
        k = 1): on a link that recovers, the probe comes as soon as the late
        result says so; on a link that stays too slow, the failed probes thin
        out.
        """
        if self.misses <= 1 or last_probe_s is None:
            return True
        wait = 0.5 * interval_s * 2.0 ** min(self.misses - 2, PROBE_MAX_DOUBLINGS)
        return now_s - last_probe_s >= wait


class ServerBackoff:
    """Exponential backoff after server failures: ``initial_s`` doubling per failure in a row, up to ``max_s``.

    Each wait is shortened by a random fraction of up to ``jitter`` of it, so that devices that lost the same
    server at the same moment do not all come back at the same moment (they would knock it over again). A
    failure counts as "in a row" until the server has *delivered* something on a new connection (a ping's
    or a probe's answer, a result), not merely accepted it: a server that answers the connect and then
    refuses or drops every stream (one at its stream limit) would otherwise be retried every
    ``initial_s`` for ever.
    """

    def __init__(self, initial_s: float, max_s: float, jitter: float = 0.25, seed: int | None = None) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError(f"need 0 < backoff_initial_s <= backoff_max_s, got {initial_s}, {max_s}")
        if not 0 <= jitter < 1:
            raise ValueError(f"backoff jitter must be in [0, 1), got {jitter}")
        self.initial_s, self.max_s, self.jitter = initial_s, max_s, jitter
        self._random = random.Random(seed)
        self.failures = 0
        self._connected = True  # until the first failure: the server is presumed up
        self._backoff_s = 0.0
        self._retry_at_s = -math.inf

    def backoff_s(self) -> float:
        """Length of the current backoff; 0 while the server is considered up."""
        return 0.0 if self._connected else self._backoff_s

    def failed(self, now_s: float) -> float:
        self.failures += 1
        self._connected = False
        base = self.initial_s * 2.0 ** min(self.failures - 1, 62)  # capped exponent: no overflow after hours down
        self._backoff_s = min(base, self.max_s) * (1.0 - self.jitter * self._random.random())
        self._retry_at_s = now_s + self._backoff_s
        return self._backoff_s

    def ok(self) -> None:
        """Connected again; the failures in a row end only once the server delivers (:meth:`delivered`)."""
        self._connected = True
        self._retry_at_s = -math.inf

    def delivered(self) -> None:
        self.failures = 0

    def waiting(self, now_s: float) -> bool:
        """The server is down and its backoff has not expired: every frame is local."""
        return not self._connected and now_s < self._retry_at_s

    def should_reconnect(self, now_s: float) -> bool:
        return not self._connected and now_s >= self._retry_at_s

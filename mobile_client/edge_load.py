"""The edge's load as this device sees it: the queueing its results report, added to the remote modes' cost.

Why: DESIGN.md §3's formula prices a remote frame with the edge's *compute* time, but an edge shared
by many devices also makes frames wait in its scheduler before compute. Every result says how long
(``Result.queue_ms``: the session hands the controller ``server_s`` = queue + compute and
``compute_s`` = compute), so a device sees a saturating edge without asking anyone and shifts to
local before its frames pile up there. ``Describe``'s latencies cannot tell: they are the server's
compute medians, and a device asks for them only when it connects.

The rule, and why each part (docs/controller.md, "Edge load"): a sample per in-time result
(``server_s - compute_s``) and per late result that the edge clearly queued (inferred, since a
late ``Arrival`` has no compute time); the median of the recent ones, added to both remote modes
(one queue serves tails and full runs alike); samples that expire, so a device that went local
comes back (no absorbing state), with a lifetime that doubles with each late result and resets
with an in-time one (exponential backoff, so that a thousand devices do not keep a saturated edge
saturated with tries); and the compute ratio given ``compute_s`` instead of ``server_s``, so the
queue is counted once. Off (``enabled=False``) the ratio sees ``server_s`` as before and nothing
here acts. With one device and no queueing every sample is 0 and :meth:`apply` returns the very
costs it was given: predictions are unchanged to the bit.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from statistics import median
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .costs import ModeCosts

__all__ = ["EdgeLoad", "LATE_QUEUE_FACTOR"]

LATE_QUEUE_FACTOR = 2.0  # a late result counts as load only if the edge held it this many times its compute


class EdgeLoad:
    """Recent edge queueing (s) from results, as an additive cost on both remote modes."""

    def __init__(self, enabled: bool = True, window: int = 8, max_age_s: float = 5.0,
                 max_hold_s: float = 160.0) -> None:
        if window < 1:
            raise ValueError(f"edge load window must be >= 1, got {window}")
        if not 0 < max_age_s <= max_hold_s:
            raise ValueError(f"edge load needs 0 < max_age_s <= max_hold_s, got {max_age_s}, {max_hold_s}")
        self.enabled, self.max_age_s, self.max_hold_s = enabled, max_age_s, max_hold_s
        self.hold_s = max_age_s  # how long a sample counts now
        self._samples: deque[tuple[float, float]] = deque(maxlen=window)  # (at_s, queue_s)

    def observe(self, server_s: float, compute_s: float, now_s: float) -> float:
        """Record a result that came in time; return the edge time the compute ratio should see.

        ``compute_s <= 0`` means the IO did not say (a scripted test, an old edge): no sample, and the
        ratio sees ``server_s`` as it always did.
        """
        if not (self.enabled and compute_s > 0 and math.isfinite(compute_s) and math.isfinite(server_s)):
            return server_s
        self._samples.append((now_s, max(0.0, server_s - compute_s)))
        self.hold_s = self.max_age_s  # the edge was worth a frame again
        return compute_s

    def observe_late(self, server_s: float, expected_compute_s: float, now_s: float) -> None:
        """Record a late result, which says only ``server_s``: a sample when the edge clearly queued it."""
        if not (self.enabled and math.isfinite(server_s) and expected_compute_s > 0):
            return
        if server_s > LATE_QUEUE_FACTOR * expected_compute_s:
            if self.load_s(now_s) == 0.0:  # a try after a quiet spell, and the edge was not worth it: try later
                self.hold_s = min(2.0 * self.hold_s, self.max_hold_s)
            self._samples.append((now_s, server_s - expected_compute_s))

    def load_s(self, now_s: float) -> float:
        """The queueing a frame sent now is expected to meet (s); 0 with no recent sample."""
        recent = [q for at, q in self._samples if now_s - at < self.hold_s]
        return float(median(recent)) if recent else 0.0

    def apply(self, costs: ModeCosts, now_s: float) -> ModeCosts:
        """``costs`` with the load added to each remote mode's edge time; the same object when there is none."""
        load_ms = self.load_s(now_s) * 1e3 if self.enabled else 0.0
        if load_ms <= 0.0:
            return costs
        return dataclasses.replace(costs, t_tail_edge_ms=costs.t_tail_edge_ms + load_ms,
                                   t_full_edge_ms=costs.t_full_edge_ms + load_ms)

    def edge_s(self, costs: ModeCosts, mode: str, now_s: float) -> float:
        """What the edge is expected to hold a frame of ``mode`` sent now (s): its compute and the load."""
        return self.apply(costs, now_s).edge_ms(mode) / 1000.0

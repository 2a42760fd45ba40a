"""Bandwidth traces: how many bytes a cellular link can carry, and when.

Every format (mahimahi packet-delivery logs, Pensieve ``time_s Mbps`` files,
CSV with named columns, synthetic constants and steps) is reduced to one
object, a :class:`Trace`, described by a single function: the *cumulative
capacity* ``C(t)``, the number of bytes the link could have delivered in
``[0, t)``.  Everything else is derived from it:

* ``bytes_delivered(t0, t1) = C(t1) - C(t0)``;
* ``finish_time(start, n)`` is the earliest time ``t`` by which the link has
  delivered ``C(start) + n`` bytes (its inverse, :meth:`time_at_cumulative`).

Why a cumulative function rather than a rate: a FIFO link (``links.Link``)
only has to remember how many bytes of capacity it has consumed; queueing,
idle periods that waste capacity, and mahimahi's discrete delivery
opportunities (shared by small packets, as in mahimahi's byte-level queue)
all fall out of ``max(C(t), consumed)`` with no special cases.  Both
functions are a binary search over precomputed cumulative arrays of one
period, so a simulator sweep can call them ~10^5 times per second; they also
accept numpy arrays.

Conventions (chosen to match the tools the traces come from):

* Time 0 is the start of the trace; times before 0 carry nothing.
* Every trace loops forever with period :attr:`Trace.period_s`, as mahimahi
  and Pensieve's simulator do.
* Rates are in bits per second where a name says ``bps`` and 1 Mbps = 10^6
  bit/s (Pensieve's convention); capacities and sizes are in bytes.
* A malformed input is a :class:`TraceError` (a ``ValueError``) with a single
  line ``FILE:LINE: what is wrong``, so a CLI can print it as is.

This module holds the model (:class:`Trace`, the piecewise-constant rate
traces, the synthetic ones); reading the file formats and the one-string
spec of :func:`~simulators.trace_files.load_trace` is in
:mod:`simulators.trace_files`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Sequence, Union

import numpy as np

__all__ = ["Trace", "TraceError", "ConstantTrace", "PiecewiseTrace"]

ArrayLike = Union[float, np.ndarray]


class TraceError(ValueError):
    """A trace file or spec that cannot be used; the message is one line."""


class Trace(ABC):
    """Delivery capacity of a link over time, looping forever past its end."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def name(self) -> str:
        """Short label for plots and logs (file name or the spec)."""
        return self._name

    @property
    @abstractmethod
    def period_s(self) -> float:
        """Length of one loop of the trace, in seconds."""

    @property
    @abstractmethod
    def bytes_per_period(self) -> float:
        """Bytes one full loop of the trace carries."""

    @abstractmethod
    def cumulative_bytes(self, t: ArrayLike) -> ArrayLike:
        """Bytes the link could deliver in ``[0, t)``: the one primitive the
        rest is built on (see module docstring)."""

    @abstractmethod
    def time_at_cumulative(self, b: ArrayLike) -> ArrayLike:
        """Earliest time by which ``b`` bytes in total have left the link
        (the moment the ``b``-th byte departs)."""

    # Derived API -----------------------------------------------------------

    def bytes_delivered(self, t0: float, t1: float) -> float:
        """Bytes the link can carry in ``[t0, t1)`` if it is never idle."""
        return float(self.cumulative_bytes(t1) - self.cumulative_bytes(t0))

    def finish_time(self, start_s: ArrayLike, nbytes: ArrayLike) -> ArrayLike:
        """Time when ``nbytes`` offered at ``start_s`` on an otherwise idle
        link have all left the bottleneck (serialization only, no delay)."""
        if isinstance(start_s, np.ndarray) or isinstance(nbytes, np.ndarray):
            start = np.asarray(start_s, dtype=float)
            n = np.asarray(nbytes, dtype=float)
            t = self.time_at_cumulative(self.cumulative_bytes(start) + np.maximum(n, 0.0))
            return np.where(n > 0, np.maximum(t, start), start)
        if nbytes <= 0:
            return float(start_s)
        t = self.time_at_cumulative(self.cumulative_bytes(start_s) + nbytes)
        return max(float(t), float(start_s))

    def mean_rate_bps(self, t0: float = 0.0, t1: float | None = None) -> float:
        """Average capacity in bit/s over ``[t0, t1)``; ``t1=None`` gives the
        long-run mean (one loop's bytes over its period), which is what a
        figure caption should quote for a trace."""
        if t1 is None:
            return 8.0 * self.bytes_per_period / self.period_s
        if t1 <= t0:
            raise ValueError(f"mean_rate_bps needs t1 > t0, got [{t0}, {t1})")
        return 8.0 * self.bytes_delivered(t0, t1) / (t1 - t0)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, period_s={self.period_s:g}, "
            f"mean={self.mean_rate_bps() / 1e6:.3g} Mbps)"
        )


# ---------------------------------------------------------------------------
# Piecewise-constant rate traces (constant, steps; Pensieve and CSV files)
# ---------------------------------------------------------------------------


class _RateTrace(Trace):
    """A looping piecewise-constant rate; cumulative capacity is piecewise
    linear, so both directions are a binary search plus a division."""

    def __init__(self, name: str, durations_s: Sequence[float], rates_bps: Sequence[float],
                 source: str) -> None:
        super().__init__(name)
        durations = np.asarray(durations_s, dtype=float)
        rates = np.asarray(rates_bps, dtype=float)
        if durations.size == 0:
            raise TraceError(f"{source}: trace has no samples")
        if np.any(~np.isfinite(durations)) or np.any(durations <= 0):
            raise TraceError(f"{source}: segment durations must be positive and finite")
        if np.any(~np.isfinite(rates)) or np.any(rates < 0):
            raise TraceError(f"{source}: rates must be non-negative and finite")
        self._edges = np.concatenate(([0.0], np.cumsum(durations)))
        self._rate_Bps = rates / 8.0
        self._cum = np.concatenate(([0.0], np.cumsum(durations * self._rate_Bps)))
        self._period = float(self._edges[-1])
        self._total = float(self._cum[-1])
        if self._total <= 0:
            raise TraceError(f"{source}: trace delivers no bytes (all rates are 0)")
        self._nseg = durations.size
        self._cum_list = self._cum.tolist()
        self._edges_list = self._edges.tolist()
        self._rate_list = self._rate_Bps.tolist()

    @property
    def bytes_per_period(self) -> float:
        return self._total

    @property
    def period_s(self) -> float:
        return self._period

    def cumulative_bytes(self, t: ArrayLike) -> ArrayLike:
        if not isinstance(t, np.ndarray):
            if t <= 0:
                return 0.0
            q = math.floor(t / self._period)
            r = t - q * self._period
            i = int(np.searchsorted(self._edges, r, "right")) - 1
            i = min(max(i, 0), self._nseg - 1)
            return q * self._total + self._cum_list[i] + self._rate_list[i] * (r - self._edges_list[i])
        t = np.maximum(t, 0.0)
        q = np.floor(t / self._period)
        r = t - q * self._period
        i = np.clip(np.searchsorted(self._edges, r, "right") - 1, 0, self._nseg - 1)
        return q * self._total + self._cum[i] + self._rate_Bps[i] * (r - self._edges[i])

    def time_at_cumulative(self, b: ArrayLike) -> ArrayLike:
        if not isinstance(b, np.ndarray):
            return self._time_at_cumulative_scalar(float(b))
        b = np.maximum(np.asarray(b, dtype=float), 0.0)
        q = np.floor(b / self._total)
        rb = b - q * self._total
        # A target on a period boundary was reached at the end of the previous
        # period, possibly before it if the trace ends with a zero-rate gap.
        wrap = (rb <= 0) & (q > 0)
        q = q - wrap
        rb = np.where(wrap, self._total, rb)
        i = np.clip(np.searchsorted(self._cum, rb, "left"), 0, self._nseg)
        exact = self._cum[i] == rb
        seg = np.clip(i - 1, 0, self._nseg - 1)
        rate = self._rate_Bps[seg]
        with np.errstate(divide="ignore", invalid="ignore"):
            inside = self._edges[seg] + (rb - self._cum[seg]) / np.where(rate > 0, rate, 1.0)
        return q * self._period + np.where(exact, self._edges[i], inside)

    def _time_at_cumulative_scalar(self, b: float) -> float:
        # Same as the array path without numpy's per-call overhead, which
        # dominates a simulator sweep of single transfers.
        if b <= 0:
            return 0.0
        q = math.floor(b / self._total)
        rb = b - q * self._total
        if rb <= 0 and q > 0:
            q -= 1
            rb = self._total
        i = min(int(np.searchsorted(self._cum, rb, "left")), self._nseg)
        cum = self._cum_list
        if cum[i] == rb:
            return q * self._period + self._edges_list[i]
        seg = max(i - 1, 0)
        return q * self._period + self._edges_list[seg] + (rb - cum[seg]) / self._rate_list[seg]


class ConstantTrace(_RateTrace):
    """A fixed-rate link, for sanity checks and the emulator's unit tests."""

    def __init__(self, mbps: float) -> None:
        mbps = float(mbps)
        if not math.isfinite(mbps) or mbps <= 0:
            raise TraceError(f"const: rate must be a positive number of Mbps, got {mbps!r}")
        super().__init__(f"const:{mbps:g}", [1.0], [mbps * 1e6], source="const")


class PiecewiseTrace(_RateTrace):
    """Rate steps ``[(duration_s, Mbps), ...]``, looping: the controlled
    input for testing how estimators and controllers react to a change."""

    def __init__(self, segments: Sequence[tuple[float, float]], name: str | None = None) -> None:
        segs = list(segments)
        if not segs:
            raise TraceError("steps: need at least one DUR@MBPS segment")
        label = name or "steps:" + ",".join(f"{d:g}@{m:g}" for d, m in segs)
        super().__init__(label, [d for d, _ in segs], [m * 1e6 for _, m in segs], source="steps")

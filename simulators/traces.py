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
"""

from __future__ import annotations

import csv
import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence, Union

import numpy as np

__all__ = [
    "Trace",
    "TraceError",
    "MahimahiTrace",
    "PensieveTrace",
    "CsvTrace",
    "ConstantTrace",
    "PiecewiseTrace",
    "load_trace",
]

ArrayLike = Union[float, np.ndarray]

MAHIMAHI_PACKET_BYTES = 1500
_UNITS = {"bps": 1.0, "kbps": 1e3, "Mbps": 1e6}
# Opportunities within this many seconds of a start time count as "at" it:
# times are reconstructed as period*k + offset in floating point, which can
# land one ulp either side of the exact value.
_EPS_S = 1e-9


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
# Piecewise-constant rate traces (Pensieve, CSV, constant, steps)
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


class PensieveTrace(_RateTrace):
    """Pensieve/FCC/Norway-3G ``time_s  Mbps`` traces.

    Each sample holds until the next; the last one holds for the median
    sampling interval, which then closes the loop (period = last time +
    median interval), so a trace sampled every second loops after N seconds
    rather than N-1.  Times are shifted so that the first sample is at 0.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        times: list[float] = []
        rates: list[float] = []
        for lineno, line in _read_lines(path):
            parts = line.split()
            if len(parts) != 2:
                raise TraceError(f"{path}:{lineno}: expected 'time_s Mbps', got {line.strip()!r}")
            try:
                t, r = float(parts[0]), float(parts[1])
            except ValueError:
                raise TraceError(f"{path}:{lineno}: expected two numbers, got {line.strip()!r}") from None
            if not (math.isfinite(t) and math.isfinite(r)) or r < 0:
                raise TraceError(f"{path}:{lineno}: time must be finite and rate >= 0, got {line.strip()!r}")
            if times and t <= times[-1]:
                raise TraceError(f"{path}:{lineno}: time {t:g} does not increase (previous {times[-1]:g})")
            times.append(t)
            rates.append(r)
        if len(times) < 2:
            raise TraceError(f"{path}: need at least 2 samples to know the sampling interval")
        t_arr = np.asarray(times)
        gaps = np.diff(t_arr)
        durations = np.append(gaps, np.median(gaps))
        super().__init__(path.name, durations, np.asarray(rates) * 1e6, source=str(path))


class CsvTrace(_RateTrace):
    """A CSV with a header, one row per fixed interval, the rate in a named
    column (so exports from drive-test tools work without editing)."""

    def __init__(self, path: str | os.PathLike[str], rate_column: str, unit: str = "Mbps",
                 interval_s: float = 1.0) -> None:
        path = Path(path)
        if unit not in _UNITS:
            raise TraceError(f"{path}: unit must be one of {', '.join(_UNITS)}, got {unit!r}")
        if not (interval_s > 0 and math.isfinite(interval_s)):
            raise TraceError(f"{path}: interval_s must be positive, got {interval_s!r}")
        scale = _UNITS[unit]
        rates: list[float] = []
        try:
            with path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames is None:
                    raise TraceError(f"{path}:1: empty CSV, expected a header row")
                fields = [f.strip() for f in reader.fieldnames]
                if rate_column not in fields:
                    raise TraceError(
                        f"{path}:1: no column {rate_column!r}; columns are {', '.join(fields)}")
                reader.fieldnames = fields
                for row in reader:
                    cell = (row.get(rate_column) or "").strip()
                    if not cell and all(not (v or "").strip() for v in row.values() if isinstance(v, str)):
                        continue  # blank line
                    try:
                        value = float(cell)
                    except ValueError:
                        raise TraceError(
                            f"{path}:{reader.line_num}: column {rate_column!r} is not a number: {cell!r}"
                        ) from None
                    if not math.isfinite(value) or value < 0:
                        raise TraceError(f"{path}:{reader.line_num}: rate must be >= 0, got {cell!r}")
                    rates.append(value * scale)
        except OSError as exc:
            raise TraceError(f"{path}: cannot read trace: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise TraceError(f"{path}: not a text file") from None
        if not rates:
            raise TraceError(f"{path}: CSV has a header but no rows")
        super().__init__(path.name, [interval_s] * len(rates), rates, source=str(path))


# ---------------------------------------------------------------------------
# Mahimahi packet-delivery traces
# ---------------------------------------------------------------------------


class MahimahiTrace(Trace):
    """mahimahi's format: each line is the millisecond timestamp of one
    1500-byte delivery opportunity; equal timestamps are several packets in
    that millisecond.  The schedule repeats with period = last timestamp, as
    in mahimahi's ``LinkQueue`` (so an opportunity at the last timestamp
    ``T`` and one at ``0`` of the next loop coincide at time ``T``).

    Capacity comes in whole opportunities: ``finish_time(start, n)`` is the
    time of the ``ceil(n/1500)``-th opportunity at or after ``start``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        ms = _parse_mahimahi(path)
        super().__init__(path.name)
        period_ms = int(ms[-1])
        if period_ms <= 0:
            raise TraceError(f"{path}: last timestamp is 0, so the trace has no period (mahimahi needs > 0)")
        # Opportunities at the last timestamp T coincide with "time 0 of the
        # next loop": store them as offset 0 so one period is [0, T), and
        # remember that the very first loop has no such opportunities at 0.
        n_at_end = int(np.count_nonzero(ms == period_ms))
        offsets_ms = np.concatenate((np.zeros(n_at_end, dtype=np.int64), ms[: ms.size - n_at_end]))
        self._offsets = offsets_ms / 1000.0
        self._skip = n_at_end
        self._per_period = int(ms.size)
        self._period = period_ms / 1000.0
        self._timestamps_ms = ms

    @property
    def period_s(self) -> float:
        return self._period

    @property
    def bytes_per_period(self) -> float:
        return float(MAHIMAHI_PACKET_BYTES * self._per_period)

    def _count_before(self, t: ArrayLike) -> ArrayLike:
        """Number of opportunities strictly before ``t`` (minus a tolerance)."""
        if not isinstance(t, np.ndarray):
            t = t - _EPS_S
            if t <= 0:
                return 0
            q = math.floor(t / self._period)
            r = t - q * self._period
            n = q * self._per_period + int(np.searchsorted(self._offsets, r, "left")) - self._skip
            return max(n, 0)
        t = np.asarray(t, dtype=float) - _EPS_S
        q = np.floor(np.maximum(t, 0.0) / self._period)
        r = t - q * self._period
        n = q * self._per_period + np.searchsorted(self._offsets, r, "left") - self._skip
        return np.where(t <= 0, 0, np.maximum(n, 0)).astype(np.int64)

    def cumulative_bytes(self, t: ArrayLike) -> ArrayLike:
        n = self._count_before(t)
        return MAHIMAHI_PACKET_BYTES * n if isinstance(n, np.ndarray) else float(MAHIMAHI_PACKET_BYTES * n)

    def time_at_cumulative(self, b: ArrayLike) -> ArrayLike:
        if not isinstance(b, np.ndarray):
            k = math.ceil(b / MAHIMAHI_PACKET_BYTES)  # 1-based index of the opportunity
            if k <= 0:
                return 0.0
            j = k - 1 + self._skip
            q, i = divmod(j, self._per_period)
            return q * self._period + float(self._offsets[i])
        k = np.ceil(np.asarray(b, dtype=float) / MAHIMAHI_PACKET_BYTES).astype(np.int64)
        j = np.maximum(k, 1) - 1 + self._skip
        q, i = np.divmod(j, self._per_period)
        return np.where(k <= 0, 0.0, q * self._period + self._offsets[i])


def _parse_mahimahi(path: Path) -> np.ndarray:
    text = _read_text(path)
    tokens = text.split()
    try:
        ms = np.array([int(tok) for tok in tokens], dtype=np.int64)
        ok = ms.size > 0 and len(tokens) == len(text.splitlines()) - _blank_lines(text)
    except ValueError:
        ok = False
    if not ok:
        # Slow path only to name the offending line.
        for lineno, line in _read_lines(path, text):
            tok = line.strip()
            if not tok.lstrip("-").isdigit() or len(line.split()) != 1:
                raise TraceError(f"{path}:{lineno}: expected one integer millisecond timestamp, got {tok!r}")
        raise TraceError(f"{path}: no timestamps in mahimahi trace")
    if ms[0] < 0:
        raise TraceError(f"{path}:1: timestamps must be >= 0, got {ms[0]}")
    bad = np.flatnonzero(np.diff(ms) < 0)
    if bad.size:
        idx = int(bad[0]) + 1
        lineno = _nth_nonblank_lineno(text, idx)
        raise TraceError(f"{path}:{lineno}: timestamp {ms[idx]} is before the previous one ({ms[idx - 1]})")
    return ms


# ---------------------------------------------------------------------------
# File helpers
# ---------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read trace: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not a text file") from None


def _read_lines(path: Path, text: str | None = None):
    """Yield ``(lineno, line)`` for non-blank lines, 1-based like editors."""
    if text is None:
        text = _read_text(path)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield lineno, line


def _blank_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if not line.strip())


def _nth_nonblank_lineno(text: str, idx: int) -> int:
    seen = -1
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            seen += 1
            if seen == idx:
                return lineno
    return idx + 1


# ---------------------------------------------------------------------------
# Spec parsing
# ---------------------------------------------------------------------------

_SPEC_HELP = ("const:MBPS, steps:DUR@MBPS,..., mahimahi:PATH, pensieve:PATH, "
              "csv:PATH#rate=COLUMN,unit=bps|kbps|Mbps[,interval_s=S], or a bare PATH")


def load_trace(spec: str) -> Trace:
    """Build a trace from a one-string spec, so every CLI flag and config
    field that names a link accepts the same syntax (see ``_SPEC_HELP``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise TraceError(f"empty trace spec; expected {_SPEC_HELP}")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if sep and kind in _LOADERS:
        if not rest:
            raise TraceError(f"trace spec {spec!r} is missing its argument; expected {_SPEC_HELP}")
        return _LOADERS[kind](rest)
    if Path(spec).exists():
        return _guess_file(Path(spec))
    if sep and "/" not in kind and "\\" not in kind:
        raise TraceError(f"unknown trace kind {kind!r} in {spec!r}; expected {_SPEC_HELP}")
    raise TraceError(f"{spec}: no such trace file")


def _const(arg: str) -> Trace:
    try:
        mbps = float(arg)
    except ValueError:
        raise TraceError(f"const:{arg}: rate must be a number of Mbps") from None
    return ConstantTrace(mbps)


def _steps(arg: str) -> Trace:
    segments = []
    for part in arg.split(","):
        dur, at, mbps = part.strip().partition("@")
        try:
            if not at:
                raise ValueError
            segments.append((float(dur), float(mbps)))
        except ValueError:
            raise TraceError(f"steps:{arg}: segment {part!r} is not DURATION_S@MBPS") from None
    return PiecewiseTrace(segments)


def _csv(arg: str) -> Trace:
    path, _, opts = arg.partition("#")
    if not opts:
        raise TraceError(f"csv:{arg}: missing '#rate=COLUMN,unit=bps|kbps|Mbps'")
    kwargs: dict[str, str] = {}
    for item in opts.split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in ("rate", "unit", "interval_s"):
            raise TraceError(f"csv:{arg}: unknown option {item!r}; expected rate=, unit=, interval_s=")
        kwargs[key] = value.strip()
    if "rate" not in kwargs or "unit" not in kwargs:
        raise TraceError(f"csv:{arg}: both rate=COLUMN and unit=bps|kbps|Mbps are required")
    try:
        interval = float(kwargs.get("interval_s", "1"))
    except ValueError:
        raise TraceError(f"csv:{arg}: interval_s must be a number") from None
    return CsvTrace(path, kwargs["rate"], kwargs["unit"], interval)


def _guess_file(path: Path) -> Trace:
    """Tell mahimahi from Pensieve by the shape of the first lines, the only
    formats that come without a header."""
    text = _read_text(path)
    first = [line.split() for _, line in zip(range(50), (l for l in text.splitlines() if l.strip()))]
    if not first:
        raise TraceError(f"{path}: empty trace file")
    if all(len(p) == 1 and p[0].isdigit() for p in first):
        return MahimahiTrace(path)
    if all(len(p) == 2 and _is_number(p[0]) and _is_number(p[1]) for p in first):
        return PensieveTrace(path)
    raise TraceError(
        f"{path}: cannot tell the trace format (neither one integer nor two numbers per line); "
        "name it as mahimahi:, pensieve: or csv:PATH#rate=...,unit=...")


def _is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


_LOADERS = {
    "const": _const,
    "steps": _steps,
    "mahimahi": MahimahiTrace,
    "pensieve": PensieveTrace,
    "csv": _csv,
}

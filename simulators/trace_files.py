"""Trace files and specs: mahimahi, Pensieve and CSV traces read from disk,
and :func:`load_trace`, the one-string spec every CLI flag and config field
that names a link accepts.

The conventions (time 0, looping, units, one-line :class:`TraceError`
messages) are those of :mod:`simulators.traces`, which holds the
:class:`~simulators.traces.Trace` model these classes implement.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from .traces import ArrayLike, ConstantTrace, PiecewiseTrace, Trace, TraceError, _RateTrace

__all__ = ["MahimahiTrace", "PensieveTrace", "CsvTrace", "load_trace", "trace_files_in", "load_trace_file"]

MAHIMAHI_PACKET_BYTES = 1500
_UNITS = {"bps": 1.0, "kbps": 1e3, "Mbps": 1e6}
# Opportunities within this many seconds of a start time count as "at" it:
# times are reconstructed as period*k + offset in floating point, which can
# land one ulp either side of the exact value.
_EPS_S = 1e-9


# ---------------------------------------------------------------------------
# Rate-sample files (Pensieve, CSV)
# ---------------------------------------------------------------------------


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


def trace_files_in(folder: Path) -> list[Path]:
    """The trace files under ``folder``, sorted by path: mahimahi ``*.down`` files are left out (traces here
    are uplinks) and so are hidden files and folders, so a README or a ``.git`` beside the traces is no trace."""
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix != ".down"
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts))


def load_trace_file(path: Path) -> Trace:
    """One file of :func:`trace_files_in`: ``*.up`` as mahimahi, any other by its shape."""
    return load_trace(f"mahimahi:{path}" if path.suffix == ".up" else str(path))

"""Trace loaders: parsing, looping, and finish_time against hand-computed values."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from simulators.trace_files import CsvTrace, MahimahiTrace, PensieveTrace, load_trace
from simulators.traces import ConstantTrace, PiecewiseTrace, TraceError


def data_dir() -> Path:
    env = os.environ.get("SPLITEDGE_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def trace_dir(kind: str) -> Path:
    d = data_dir() / "traces" / kind
    if not d.is_dir():
        pytest.skip(f"real {kind} traces not found at {d} (set SPLITEDGE_DATA to the shared data dir)")
    return d


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# -- mahimahi -----------------------------------------------------------------

# Opportunities at 1 ms (x2), 3 ms, 10 ms; period 10 ms, so the schedule is
# 1,1,3,10, 11,11,13,20, 21,21,23,30, ...
TINY = "1\n1\n3\n10\n"


@pytest.fixture
def tiny(tmp_path: Path) -> MahimahiTrace:
    return MahimahiTrace(write(tmp_path, "tiny.up", TINY))


@pytest.mark.parametrize(
    "start,nbytes,expected",
    [
        (0.0, 1, 0.001),        # first opportunity
        (0.0, 1500, 0.001),     # exactly one packet
        (0.0, 1501, 0.001),     # two packets, both at 1 ms
        (0.0, 3001, 0.003),     # third opportunity
        (0.0, 6000, 0.010),     # fourth = last line of the file
        (0.0, 6001, 0.011),     # fifth: the loop restarts (10 + 1 ms)
        (0.002, 1, 0.003),      # next opportunity after start
        (0.003, 1, 0.003),      # "at or after start" includes start
        (0.010, 1, 0.010),
        (0.010, 1501, 0.011),
        (0.0101, 1, 0.011),
        (0.0105, 4500, 0.013),  # 11, 11, 13 in the second loop
        (1.0001, 1, 1.001),     # 100 loops later
        (0.5, 0, 0.5),          # nothing to send
    ],
)
def test_mahimahi_finish_time_hand_computed(tiny: MahimahiTrace, start: float, nbytes: int,
                                            expected: float) -> None:
    assert tiny.finish_time(start, nbytes) == pytest.approx(expected, abs=1e-9)


def test_mahimahi_looping_and_rates(tiny: MahimahiTrace) -> None:
    assert tiny.period_s == pytest.approx(0.010)
    assert tiny.name == "tiny.up"
    assert tiny.bytes_delivered(0.0, 0.010) == 3 * 1500          # [0, 10 ms) excludes the one at 10
    assert tiny.bytes_delivered(0.0, 0.0101) == 4 * 1500
    assert tiny.bytes_delivered(0.0, 0.020) == 7 * 1500          # 1,1,3,10,11,11,13
    assert tiny.bytes_delivered(0.010, 0.020) == 4 * 1500        # every later loop holds 4
    assert tiny.bytes_delivered(1.0, 2.0) == 400 * 1500
    assert tiny.mean_rate_bps() == pytest.approx(4 * 1500 * 8 / 0.010)
    # Vectorised calls agree with scalar ones.
    starts = np.array([0.0, 0.002, 0.0105, 1.0001])
    sizes = np.array([6001, 1, 4500, 1])
    expected = [tiny.finish_time(float(s), int(n)) for s, n in zip(starts, sizes)]
    assert np.allclose(tiny.finish_time(starts, sizes), expected)


@pytest.mark.parametrize(
    "text,match",
    [
        ("0\n0\n", "last timestamp is 0"),
        ("1\n5\n3\n", r"tiny:3: timestamp 3 is before"),
        ("1\n2\nabc\n", r"tiny:3: expected one integer"),
        ("1\n2.5\n", r"tiny:2: expected one integer"),
        ("", "no timestamps"),
    ],
)
def test_mahimahi_malformed(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(TraceError, match=match) as info:
        MahimahiTrace(write(tmp_path, "tiny", text))
    assert "\n" not in str(info.value)


def test_real_mahimahi_mean_rate_plausible() -> None:
    d = trace_dir("mahimahi")
    for path in sorted(d.iterdir()):
        trace = load_trace(f"mahimahi:{path}")
        mbps = trace.mean_rate_bps() / 1e6
        print(f"{path.name}: {mbps:.2f} Mbps over {trace.period_s:.0f} s")
        assert 0.1 < mbps < 100, path.name


def test_finish_time_is_fast_and_consistent() -> None:
    """A sweep calls finish_time ~1e5 times: it must stay in microseconds."""
    d = trace_dir("mahimahi")
    trace = load_trace(str(d / "Verizon-LTE-short.up"))  # bare path -> mahimahi guessed
    assert isinstance(trace, MahimahiTrace)
    rng = np.random.default_rng(1)
    starts = rng.uniform(0, 3 * trace.period_s, 20_000).tolist()
    sizes = rng.integers(1, 300_000, 20_000).tolist()
    t0 = time.perf_counter()
    finishes = [trace.finish_time(s, n) for s, n in zip(starts, sizes)]
    elapsed = time.perf_counter() - t0
    print(f"20k finish_time calls: {elapsed * 1e3:.0f} ms")
    assert elapsed < 2.0
    for s, n, f in list(zip(starts, sizes, finishes))[:500]:
        assert f >= s
        assert trace.bytes_delivered(s, f + 1e-6) >= n > trace.bytes_delivered(s, f - 1e-6)


# -- rate traces --------------------------------------------------------------


def test_pensieve_parsing_and_looping(tmp_path: Path) -> None:
    p = write(tmp_path, "pen", "0.0\t8\n1.0\t16\n2.0\t0\n")  # 1 MB/s, 2 MB/s, nothing
    trace = PensieveTrace(p)
    assert trace.period_s == pytest.approx(3.0)                # last time + median interval
    assert trace.bytes_delivered(0, 3) == pytest.approx(3e6)
    assert trace.mean_rate_bps() == pytest.approx(8e6)
    assert trace.finish_time(0.0, 1.5e6) == pytest.approx(1.25)
    assert trace.finish_time(2.5, 1) == pytest.approx(3.0 + 1e-6)  # waits out the gap, next loop
    assert trace.finish_time(0.5, 0) == 0.5
    assert load_trace(str(p)).period_s == pytest.approx(3.0)  # bare path -> pensieve guessed


@pytest.mark.parametrize(
    "text,match",
    [
        ("0 1\n1 x\n", r"pen:2: expected two numbers"),
        ("0 1\n0 2\n", r"pen:2: time 0 does not increase"),
        ("0 1 2\n", r"pen:1: expected 'time_s Mbps'"),
        ("0 1\n", "at least 2 samples"),
        ("0 0\n1 0\n", "delivers no bytes"),
    ],
)
def test_pensieve_malformed(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(TraceError, match=match):
        PensieveTrace(write(tmp_path, "pen", text))


def test_real_pensieve_traces_parse() -> None:
    d = trace_dir("pensieve")
    for path in sorted(d.iterdir()):
        trace = load_trace(f"pensieve:{path}")
        assert 0.01 < trace.mean_rate_bps() / 1e6 < 1000, path.name


def test_csv_trace(tmp_path: Path) -> None:
    p = write(tmp_path, "bw.csv", "t,bw_kbps,rsrp\n0,1000,-90\n1,2000,-95\n\n")
    trace = CsvTrace(p, "bw_kbps", "kbps")
    assert trace.period_s == pytest.approx(2.0)
    assert trace.mean_rate_bps() == pytest.approx(1.5e6)
    spec = load_trace(f"csv:{p}#rate=bw_kbps,unit=kbps,interval_s=0.5")
    assert spec.period_s == pytest.approx(1.0)
    assert spec.finish_time(0.0, 1000e3 / 8 * 0.5) == pytest.approx(0.5)


def test_csv_errors(tmp_path: Path) -> None:
    p = write(tmp_path, "bw.csv", "t,bw\n0,5\n1,oops\n")
    with pytest.raises(TraceError, match=r"bw.csv:3: column 'bw' is not a number"):
        CsvTrace(p, "bw", "Mbps")
    with pytest.raises(TraceError, match=r"no column 'rate'; columns are t, bw"):
        CsvTrace(p, "rate", "Mbps")
    with pytest.raises(TraceError, match="unit must be one of"):
        load_trace(f"csv:{p}#rate=bw,unit=gbps")
    with pytest.raises(TraceError, match="rate=COLUMN and unit"):
        load_trace(f"csv:{p}#rate=bw")


def test_constant_and_steps() -> None:
    c = load_trace("const:8")
    assert isinstance(c, ConstantTrace)
    assert c.mean_rate_bps() == pytest.approx(8e6)
    assert c.finish_time(12.3, 1e6) == pytest.approx(13.3)
    s = load_trace("steps:1@2,1@0,1@4")
    assert isinstance(s, PiecewiseTrace)
    assert s.period_s == pytest.approx(3.0)
    # 0.5 s at 2 Mbps (125 kB), 1 s of nothing, then 125 kB at 4 Mbps (0.25 s).
    assert s.finish_time(0.5, 250_000) == pytest.approx(2.25)
    assert s.finish_time(3.5, 250_000) == pytest.approx(5.25)  # one loop later
    assert PiecewiseTrace([(1.0, 2.0), (1.0, 4.0)]).mean_rate_bps() == pytest.approx(3e6)


@pytest.mark.parametrize(
    "spec,match",
    [
        ("", "empty trace spec"),
        ("const:abc", "rate must be a number"),
        ("const:-1", "positive"),
        ("const:", "missing its argument"),
        ("steps:1@2,x", "is not DURATION_S@MBPS"),
        ("steps:0@2", "durations must be positive"),
        ("nope:whatever", "unknown trace kind 'nope'"),
        ("mahimahi:/no/such/file", r"/no/such/file: cannot read trace"),
        ("pensieve:/no/such/file", r"/no/such/file: cannot read trace"),
        ("/no/such/file", r"/no/such/file: no such trace file"),
    ],
)
def test_load_trace_spec_errors(spec: str, match: str) -> None:
    with pytest.raises(TraceError, match=match) as info:
        load_trace(spec)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_bare_path_that_is_neither_format(tmp_path: Path) -> None:
    p = write(tmp_path, "odd.txt", "a b c\n")
    with pytest.raises(TraceError, match="cannot tell the trace format"):
        load_trace(str(p))

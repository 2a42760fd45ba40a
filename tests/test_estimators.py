"""Estimators against links whose answers are known analytically (no sockets, no clock)."""

from __future__ import annotations

import math

import pytest

from mobile_client.estimators import BandwidthEstimator, LinkEstimator, RttEstimator

MBPS = 1e6


def step_link(t_step: float, before_bps: float, after_bps: float):
    """Serialization time of ``nbytes`` sent at ``t`` over a link whose rate steps at ``t_step``."""

    def serialize_s(nbytes: int, t: float) -> float:
        bits = nbytes * 8.0
        if t >= t_step:
            return bits / after_bps
        before = (t_step - t) * before_bps  # bits that fit before the step
        if bits <= before:
            return bits / before_bps
        return (t_step - t) + (bits - before) / after_bps

    return serialize_s


# --------------------------------------------------------------- bandwidth
def test_harmonic_mean_resists_an_outlier_the_arithmetic_mean_does_not():
    est = BandwidthEstimator(window=5, min_bytes=0)
    rates = [1 * MBPS] * 4 + [100 * MBPS]  # one transfer landed in a buffer
    for i, r in enumerate(rates):
        est.observe(100_000, 100_000 * 8 / r, at_s=float(i))
    arithmetic = sum(rates) / len(rates)
    assert est.estimate_bps() == pytest.approx(5 / (4 / MBPS + 1 / (100 * MBPS)))
    assert abs(est.estimate_bps() - MBPS) / MBPS < 0.25
    assert arithmetic > 20 * MBPS  # the arithmetic mean would believe in a 20 Mbit/s link


def test_bandwidth_ignores_tiny_and_bad_transfers_and_reports_age():
    est = BandwidthEstimator(window=3, min_bytes=1000, initial_bps=2 * MBPS)
    assert est.estimate_bps() == 2 * MBPS and est.samples == 0
    assert est.age_s(10.0) == math.inf
    assert not est.observe(500, 0.04, at_s=1.0)  # latency-dominated
    assert not est.observe(10_000, 0.0, at_s=1.0)
    assert not est.observe(10_000, -1.0, at_s=1.0)
    assert not est.observe(10_000, math.nan, at_s=1.0)
    assert est.samples == 0 and est.estimate_bps() == 2 * MBPS
    assert est.observe(10_000, 0.08, at_s=3.0)  # 1 Mbit/s; the prior is no longer used
    assert est.estimate_bps() == pytest.approx(MBPS)
    assert est.samples == 1 and est.age_s(4.5) == pytest.approx(1.5)


def test_bandwidth_window_forgets_old_samples():
    est = BandwidthEstimator(window=3, min_bytes=0)
    for i in range(3):
        est.observe(10_000, 10_000 * 8 / (4 * MBPS), at_s=i)
    for i in range(3, 6):
        est.observe(10_000, 10_000 * 8 / MBPS, at_s=i)
    assert est.estimate_bps() == pytest.approx(MBPS)
    assert est.samples == 6


def test_bandwidth_max_age_lets_a_fresh_sample_replace_stale_ones():
    est = BandwidthEstimator(window=5, min_bytes=0, max_age_s=5.0)
    for i in range(4):
        est.observe(10_000, 10_000 * 8 / (0.2 * MBPS), at_s=float(i))
    est.observe(10_000, 10_000 * 8 / (5 * MBPS), at_s=20.0)  # a probe after a quiet spell
    assert est.estimate_bps() == pytest.approx(5 * MBPS)
    no_expiry = BandwidthEstimator(window=5, min_bytes=0)
    for i in range(4):
        no_expiry.observe(10_000, 10_000 * 8 / (0.2 * MBPS), at_s=float(i))
    no_expiry.observe(10_000, 10_000 * 8 / (5 * MBPS), at_s=20.0)
    assert no_expiry.estimate_bps() < 0.3 * MBPS  # why expiry exists


# --------------------------------------------------------------------- rtt
def test_rtt_median_ignores_spikes_and_starts_empty():
    est = RttEstimator(window=5)
    assert est.estimate_s() is None
    for i, r in enumerate([0.040, 0.041, 0.500, 0.039, 0.040]):  # one retransmission
        est.observe(r, at_s=float(i))
    assert est.estimate_s() == pytest.approx(0.040)
    assert not est.observe(-0.01, at_s=6.0)
    assert est.samples == 5
    assert RttEstimator(initial_s=0.05).estimate_s() == 0.05


# -------------------------------------------------------------------- link
RTT = 0.040
SERVER_S = 0.030


def run_trace(est: LinkEstimator, duration_s: float, pings: bool):
    """Frames every second alternating 20 KB / 50 KB, 2 Mbit/s until t=10 then 0.5 Mbit/s, RTT 40 ms.

    Returns ``[(t, estimate_bps, rtt_estimate_s, naive_bps)]`` after each frame, where
    ``naive_bps`` is what bytes / network time would give.
    """
    serialize_s = step_link(10.0, 2 * MBPS, 0.5 * MBPS)
    out = []
    t = 0.0
    k = 0
    while t < duration_s:
        if pings and k % 2 == 0:
            est.observe_transfer(200, serialize_s(200, t) + RTT + 0.001, 0.001, at_s=t)
        nbytes = 20_000 if k % 2 == 0 else 50_000
        network_s = serialize_s(nbytes, t) + RTT
        total_s = network_s + SERVER_S
        est.observe_transfer(nbytes, total_s, SERVER_S, at_s=t + total_s)
        out.append((t, est.bandwidth_bps(), est.rtt_s(), nbytes * 8 / network_s))
        t += 1.0
        k += 1
    return out


@pytest.mark.parametrize("pings", [True, False], ids=["rtt-from-pings", "rtt-from-intercept"])
def test_link_estimate_tracks_a_step_within_ten_percent(pings):
    est = LinkEstimator(window=5, rtt_window=10, fit_window=8)
    trace = run_trace(est, 40.0, pings)
    # Before the step: converged to 2 Mbit/s once the RTT is known.
    settle_before = 2.0 if pings else 8.0
    for t, bps, rtt, naive in trace:
        if settle_before <= t < 10.0:
            assert bps == pytest.approx(2 * MBPS, rel=0.10), (t, bps, rtt)
            assert naive < 0.85 * 2 * MBPS  # ignoring the RTT would be > 15 % off
    # After the step: within 10 % of 0.5 Mbit/s once the windows hold only new samples
    # (B window of 5; the intercept fit needs its 8 points from the new link first).
    settle_after = 10.0 + 5 if pings else 10.0 + 8 + 5
    after = [(t, bps, rtt) for t, bps, rtt, _ in trace if t >= settle_after]
    assert after
    for t, bps, rtt in after:
        assert bps == pytest.approx(0.5 * MBPS, rel=0.10), (t, bps, rtt)
        assert rtt == pytest.approx(RTT, rel=0.15, abs=0.004)


def test_link_without_rtt_counts_everything_as_serialization():
    est = LinkEstimator()
    est.observe_transfer(20_000, 0.120 + 0.030, 0.030, at_s=1.0)  # 2 Mbit/s + 40 ms, one size only
    assert est.rtt_s() is None
    # Conservative, and (B, RTT=0) reproduces the observed network time for this size.
    assert est.bandwidth_bps() == pytest.approx(20_000 * 8 / 0.120)


def test_link_floors_serialization_so_a_fast_link_gives_a_bounded_sample():
    est = LinkEstimator(min_serialization_fraction=0.1)
    est.observe_rtt(0.050, at_s=0.0)
    est.observe_transfer(10_000, 0.045, 0.0, at_s=1.0)  # faster than the RTT estimate: jitter
    assert est.bandwidth_bps() == pytest.approx(10_000 * 8 / 0.0045)
    assert math.isfinite(est.bandwidth_bps())


def test_link_ignores_garbage_timings():
    est = LinkEstimator()
    est.observe_transfer(10_000, math.nan, 0.0, at_s=0.0)
    est.observe_transfer(10_000, -1.0, 0.0, at_s=0.0)
    assert est.bandwidth_bps() is None and est.rtt_s() is None
    assert est.age_s(5.0) == math.inf


# ------------------------------------------------------- unfinished transfers
def test_an_unfinished_transfer_caps_the_estimate_and_never_enters_the_mean():
    est = LinkEstimator()
    est.observe_rtt(RTT, at_s=0.0)
    for i in range(4):
        est.observe_transfer(20_000, 20_000 * 8 / (2 * MBPS) + RTT, 0.0, at_s=float(i))
    assert est.bandwidth_bps() == pytest.approx(2 * MBPS)
    # A 20 KB payload still not through after 1 s (its deadline passed): the rate is at most
    # 20 KB / (1 s - RTT), whatever the mean of the earlier transfers says.
    est.observe_unfinished(20_000, 1.0, 0.0, at_s=5.0)
    assert est.bandwidth_bps() == pytest.approx(20_000 * 8 / (1.0 - RTT))
    assert est.bandwidth_bps(bounded=False) == pytest.approx(2 * MBPS)  # the link as it was while it delivered
    assert est.age_s(5.5) == pytest.approx(0.5)  # it is news about the link
    # The next transfer that finishes lifts the bound, and the stall has not dragged the mean down
    # (as a sample of 1/6 Mbit/s it would have: the harmonic mean of 2, 2, 2, 2 and 1/6 Mbit/s is 0.625).
    est.observe_transfer(20_000, 20_000 * 8 / (2 * MBPS) + RTT, 0.0, at_s=6.0)
    assert est.bandwidth_bps() == pytest.approx(2 * MBPS)
    dragged = BandwidthEstimator()
    for r in (2, 2, 2, 2, 1 / 6):
        dragged.observe(20_000, 20_000 * 8 / (r * MBPS), at_s=0.0)
    assert dragged.estimate_bps() == pytest.approx(0.625 * MBPS)


def test_a_bound_alone_is_an_estimate_and_garbage_is_ignored():
    bw = BandwidthEstimator()
    assert not bw.bound(0, 1.0, 0.0) and not bw.bound(1000, math.nan, 0.0) and not bw.bound(1000, 0.0, 0.0)
    assert bw.estimate_bps() is None and not bw.bounded
    assert bw.bound(10_000, 2.0, at_s=1.0) and bw.bounded
    assert bw.estimate_bps() == pytest.approx(40_000)  # nothing else known: the bound is the estimate
    assert bw.samples == 0
    bw.bound(10_000, 4.0, at_s=2.0)  # a later bound replaces the earlier one
    assert bw.estimate_bps() == pytest.approx(20_000)
    bw.observe(10_000, 0.5, at_s=1.5)  # finished, but before the bound was set: still capped
    assert bw.estimate_bps() == pytest.approx(20_000)
    bw.observe(10_000, 0.5, at_s=3.0)
    assert not bw.bounded and bw.estimate_bps() == pytest.approx(160_000)
    est = LinkEstimator()
    est.observe_unfinished(500, 1.0, 0.0, at_s=0.0)  # a tiny message is not about bandwidth
    est.observe_unfinished(20_000, -1.0, 0.0, at_s=0.0)
    assert est.bandwidth_bps() is None


def test_a_new_path_forgets_the_rtt_but_keeps_the_bandwidth():
    est = LinkEstimator()
    est.observe_rtt(0.040, 0.0)
    est.observe_transfer(50_000, 0.040 + 0.200, 0.0, 1.0)  # 2 Mbit/s after the 40 ms RTT
    bps = est.bandwidth_bps()
    est.new_path()  # reconnected, perhaps to a farther replica
    assert est.rtt_s() is None and est.bandwidth_bps() == bps
    est.observe_rtt(0.120, 2.0)
    assert est.rtt_s() == 0.120  # not capped by the old path's transfers

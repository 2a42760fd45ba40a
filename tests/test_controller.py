"""Controller decisions with a fake clock and analytic links (no sockets, no wall time).

Probes, deadlines and stalls are in test_controller_probes.py; both take their costs, fake link
and drivers from controller_helpers.py.
"""

from __future__ import annotations

import math

import pytest

from mobile_client.controller import Controller
from mobile_client.costs import ModeCosts, predict_latencies, scaled
from mobile_client.decision import REASONS, Decision
from mobile_client.estimators import LinkEstimator
from tests.controller_helpers import COSTS, MBPS, RTT, FakeLink, measured, simulate


# ------------------------------------------------------------------ model
def test_predict_latencies_is_the_design_formula():
    p = predict_latencies(COSTS, 1 * MBPS, RTT)
    assert p["local"] == pytest.approx(300.0)
    assert p["split"] == pytest.approx(20 + 10_000 * 8 / 1e6 * 1000 + 20 + 30)
    assert p["offload"] == pytest.approx(2 + 60_000 * 8 / 1e6 * 1000 + 20 + 15)
    with_decode = ModeCosts(**{**COSTS.__dict__, "t_jpeg_decode_edge_ms": 4.0})
    assert predict_latencies(with_decode, 1 * MBPS, RTT)["offload"] == pytest.approx(p["offload"] + 4)
    dead = predict_latencies(COSTS, 0.0, RTT)
    assert dead["local"] == 300.0 and math.isinf(dead["split"]) and math.isinf(dead["offload"])


def test_scaled_multiplies_device_times_only():
    s = scaled(COSTS, 3.0)
    assert (s.t_full_device_ms, s.t_head_device_ms, s.t_jpeg_encode_ms) == (900.0, 60.0, 6.0)
    assert (s.t_tail_edge_ms, s.t_full_edge_ms, s.bytes_split, s.bytes_jpeg) == (30.0, 15.0, 10_000, 60_000)
    assert scaled(COSTS, 1.0, edge_slowdown=2.0).t_full_edge_ms == 30.0


def test_mode_costs_validate_and_load_from_profile_dicts():
    assert ModeCosts.from_dict(dict(COSTS.__dict__)) == COSTS
    with pytest.raises(ValueError, match="t_ful_device_ms"):
        ModeCosts.from_dict({**COSTS.__dict__, "t_ful_device_ms": 1.0})
    with pytest.raises(ValueError, match="bytes_jpeg"):
        ModeCosts.from_dict({k: v for k, v in COSTS.__dict__.items() if k != "bytes_jpeg"})
    with pytest.raises(ValueError):
        ModeCosts(**{**COSTS.__dict__, "t_full_device_ms": -1.0})


# ------------------------------------------------------------ basic choice
@pytest.mark.parametrize(
    "bps, expected",
    [(0.1 * MBPS, "local"), (1 * MBPS, "split"), (1000 * MBPS, "offload")],
)
def test_picks_the_fastest_mode_for_the_link(bps, expected):
    ctl = Controller(COSTS, estimator=measured(bps))
    d = ctl.choose(0.1)
    assert isinstance(d, Decision)
    assert d.mode == expected and d.reason == "best"
    assert min(d.predicted_ms, key=d.predicted_ms.get) == expected
    # Where serialization is lost in the RTT (1 Gbit/s: 0.16 ms vs 20 ms), the estimator
    # reports the bounded "at least" rate (serialization floored at 10 % of the network time).
    bound = min(bps, 20_000 * 8 / (0.1 * (20_000 * 8 / bps + RTT)))
    assert d.bandwidth_bps == pytest.approx(bound, rel=0.01)
    assert d.rtt_s == pytest.approx(RTT)


def test_slower_device_moves_the_choice_to_the_edge():
    # At 0.1 Mbit/s local wins on this device, but not on one 4x slower (1200 ms > split 870).
    ctl = Controller(scaled(COSTS, 4.0), estimator=measured(0.1 * MBPS))
    assert ctl.choose(0.1).mode == "split"


def test_accuracy_constraint_excludes_a_mode():
    acc = {"local": 0.37, "split": 0.30, "offload": 0.37}
    ctl = Controller(COSTS, accuracy=acc, min_accuracy=0.35, estimator=FakeLink(1 * MBPS))
    d = ctl.choose(0.0)
    assert d.mode == "local"  # split would be fastest (150 ms) but is not accurate enough
    assert d.reason == "accuracy"
    assert "split" in d.predicted_ms  # still predicted, for the log
    # Nothing meets the constraint: the most accurate mode, flagged.
    ctl = Controller(COSTS, accuracy=acc, min_accuracy=0.9, estimator=FakeLink(1 * MBPS))
    d = ctl.choose(0.0)
    assert d.mode in ("local", "offload") and d.reason == "accuracy"


def test_modes_restricts_the_choice():
    ctl = Controller(COSTS, modes=("local", "offload"), estimator=FakeLink(1 * MBPS))
    d = ctl.choose(0.0)
    assert d.mode == "local" and set(d.predicted_ms) == {"local", "offload"}
    with pytest.raises(ValueError):
        Controller(COSTS, modes=("local", "teleport"))


# -------------------------------------------------------------- hysteresis
def _count_switches(hysteresis: float) -> tuple[int, list[Decision]]:
    # local 100 ms; split = 20 + 80000/B ms: B alternating 0.95 / 1.06 Mbit/s puts split at
    # 104 / 95.5 ms, i.e. within 5 % of local either way.
    costs = ModeCosts(100.0, 10.0, 10.0, 10.0, 1.0, 10_000, 1_000_000)
    link = FakeLink(None, rtt_s=0.0)
    ctl = Controller(costs, hysteresis=hysteresis, estimator=link)
    decisions = []
    for i in range(40):
        link.bps = 0.95 * MBPS if i % 2 == 0 else 1.06 * MBPS
        decisions.append(ctl.choose(i * 0.1))
    modes = [d.mode for d in decisions]
    return sum(a != b for a, b in zip(modes, modes[1:])), decisions


def test_hysteresis_prevents_flapping_between_close_modes():
    flaps, _ = _count_switches(hysteresis=0.0)
    assert flaps >= 30  # without it, every noisy estimate flips the mode
    switches, decisions = _count_switches(hysteresis=0.15)
    assert switches == 0
    assert {d.reason for d in decisions} <= {"best", "hysteresis"}
    assert "hysteresis" in {d.reason for d in decisions}


def test_hysteresis_still_switches_for_a_large_gain():
    link = FakeLink(1 * MBPS)
    ctl = Controller(COSTS, estimator=link)
    assert ctl.choose(0.0).mode == "split"
    link.bps = 1000 * MBPS  # offload 37.5 ms vs split 70.1 ms: far beyond 15 %
    d = ctl.choose(0.1)
    assert d.mode == "offload" and d.reason == "best" and ctl.mode == "offload"


# ------------------------------------------------------ closed loop on a link
def test_switches_when_the_link_steps_down_and_back_up():
    # 5 Mbit/s (split 86 ms best) for 10 s, 0.2 Mbit/s (local best) for 10 s, 5 Mbit/s again.
    link = lambda t: 5 * MBPS if t < 10 or t >= 20 else 0.2 * MBPS  # noqa: E731
    ctl = Controller(COSTS)
    trace = simulate(ctl, link, 40.0)
    steady = {t: d.mode for t, d in trace if d.reason != "probe"}
    assert all(m == "split" for t, m in steady.items() if 2 <= t < 10)
    # Down: the harmonic mean reacts within a handful of frames.
    assert all(m == "local" for t, m in steady.items() if 11 <= t < 20)
    # Up: nothing is sent while local, so only a probe can notice; one probe is enough
    # because stale samples expire, so the link is back in use within one probe interval.
    back = min(t for t, m in steady.items() if t >= 20 and m == "split")
    assert back <= 20 + ctl.probe_interval_s + 0.5
    assert all(m == "split" for t, m in steady.items() if t >= back)


def test_starts_by_measuring_with_the_cheapest_remote_mode_once():
    # Hedged (the default), a first frame costs at most its device part plus a local run on any
    # link: offload's 2 ms JPEG + 300 ms beats split's 20 ms head + 300 ms.
    first = Controller(COSTS).choose(0.0)
    assert first.mode == "offload" and first.reason == "no-estimate"
    ctl = Controller(COSTS, hedge=False)  # no estimate, no prior
    d0 = ctl.choose(0.0)
    assert d0.mode == "split" and d0.reason == "no-estimate"  # fewer bytes than the JPEG
    # Its result has not come back yet: the following frames run locally, no flood of guesses.
    assert [ctl.choose(0.1 * i).mode for i in range(1, 10)] == ["local"] * 9
    # If it never comes back, one more try per probe interval.
    assert ctl.choose(5.0).reason == "no-estimate" and ctl.choose(5.0).mode == "local"
    ctl.observe("split", COSTS.bytes_split, 10_000 * 8 / MBPS + RTT + 0.03, 0.03, 5.2)
    d = ctl.choose(5.3)
    assert d.reason in ("best", "hysteresis") and d.bandwidth_bps is not None


def test_no_measurement_when_remote_cannot_win_even_on_a_perfect_link():
    fast_device = scaled(COSTS, 0.1)  # local 30 ms < split compute 20*0.1 + 30 + 20 RTT
    link = FakeLink(None, rtt_s=RTT)
    d = Controller(fast_device, estimator=link).choose(0.0)
    assert d.mode == "local" and d.reason == "best"


def test_a_prior_gives_an_estimate_from_the_first_frame():
    ctl = Controller(COSTS, estimator=LinkEstimator(initial_bps=1 * MBPS, initial_rtt_s=RTT))
    d = ctl.choose(0.0)
    assert d.mode == "split" and d.reason == "best"


# ----------------------------------------------------------- server failure
def test_server_failure_means_local_with_doubling_capped_backoff():
    ctl = Controller(COSTS, estimator=FakeLink(1000 * MBPS), backoff_initial_s=0.5, backoff_max_s=8.0,
                     backoff_jitter=0.0)
    assert ctl.choose(0.0).mode == "offload"
    assert not ctl.should_reconnect(0.0)
    t = 1.0
    backoffs = []
    for _ in range(7):
        b = ctl.server_failed(t)
        backoffs.append(b)
        d = ctl.choose(t + b / 2)
        assert d.mode == "local" and d.reason == "no-server"
        assert not ctl.should_reconnect(t + b - 1e-6)
        assert ctl.should_reconnect(t + b)
        t += b  # the reconnect attempt at expiry fails again
    assert backoffs == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    ctl.server_ok(t)
    assert not ctl.should_reconnect(t)
    d = ctl.choose(t + 0.01)
    assert d.mode == "offload"
    # Connected is not yet delivering: a server that accepts and then drops the stream keeps the backoff growing.
    assert ctl.server_failed(t + 1) == 8.0
    ctl.server_ok(t + 9)
    ctl.observe_rtt(0.02, t + 9.1)  # a ping's answer: the server delivers
    assert ctl.failures == 0 and ctl.server_failed(t + 10) == 0.5  # reset after success


def test_backoffs_are_jittered_within_a_quarter_below_the_doubling():
    ctl = Controller(COSTS, estimator=FakeLink(1000 * MBPS), backoff_initial_s=0.5, backoff_max_s=8.0)
    backoffs = [ctl.server_failed(0.0) for _ in range(6)]
    for b, base in zip(backoffs, [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]):
        assert 0.75 * base <= b <= base
    assert len(set(backoffs[-2:])) == 2  # two devices failing together do not retry in step


def test_remote_allowed_again_once_backoff_expires():
    ctl = Controller(COSTS, estimator=FakeLink(1000 * MBPS), backoff_jitter=0.0)
    ctl.server_failed(0.0)
    assert ctl.choose(0.4).mode == "local"
    assert ctl.choose(0.5).mode == "offload"  # this frame is the retry


def test_local_is_the_fallback_even_when_not_a_listed_mode():
    ctl = Controller(COSTS, modes=("split", "offload"), estimator=FakeLink(1 * MBPS))
    assert ctl.choose(0.0).mode == "split"
    ctl.server_failed(1.0)
    assert ctl.choose(1.1).mode == "local"


# ------------------------------------------------------------- observation
def test_observe_feeds_the_estimator_and_learns_edge_load():
    link = FakeLink(1 * MBPS)
    ctl = Controller(COSTS, estimator=link)
    for i in range(9):  # the server now takes 3x its profiled tail time
        ctl.observe("split", 10_000, 0.2, 3 * COSTS.t_tail_edge_ms / 1000, float(i))
    assert link.transfers[0] == (10_000, 0.2, 0.09, 0.0)
    assert ctl.effective_costs().t_tail_edge_ms == pytest.approx(90.0)
    assert ctl.choose(10.0).predicted_ms["split"] == pytest.approx(20 + 80 + 20 + 90)
    with pytest.raises(ValueError):
        ctl.observe("local", 0, 0.1, 0.0, 1.0)
    fixed = Controller(COSTS, estimator=FakeLink(1 * MBPS), adapt_compute=False)
    fixed.observe("split", 10_000, 0.2, 0.09, 0.0)
    assert fixed.effective_costs() == COSTS


def test_observe_local_learns_a_throttled_device():
    ctl = Controller(COSTS, estimator=FakeLink(0.1 * MBPS))
    assert ctl.choose(0.0).mode == "local"
    for i in range(9):
        ctl.observe_local(1.2, float(i))  # 4x the profile: now split (870 ms) beats local (1200 ms)
    assert ctl.choose(10.0).mode == "split"


def test_reasons_are_from_the_documented_set():
    link = lambda t: 5 * MBPS if t < 5 else 0.1 * MBPS  # noqa: E731
    ctl = Controller(COSTS)
    trace = simulate(ctl, link, 20.0)
    ctl.server_failed(20.0)
    trace.append((20.1, ctl.choose(20.1)))
    assert {d.reason for _, d in trace} <= REASONS


# ------------------------------------------------------------------ hedging
def test_remote_frames_are_hedged_exactly_where_local_may_serve_them():
    d = Controller(COSTS, estimator=FakeLink(1 * MBPS)).choose(0.0)
    assert d.mode == "split" and d.hedge  # the default
    assert not Controller(COSTS, hedge=False, estimator=FakeLink(1 * MBPS)).choose(0.0).hedge
    local = Controller(COSTS, estimator=FakeLink(0.01 * MBPS)).choose(0.0)
    assert local.mode == "local" and not local.hedge
    # No local to fall back on (not a mode, or below the accuracy floor): nothing to race against.
    assert not Controller(COSTS, modes=("split",), estimator=FakeLink(1 * MBPS)).choose(0.0).hedge
    strict = Controller(COSTS, accuracy={"local": 0.5}, min_accuracy=0.6, estimator=FakeLink(1 * MBPS))
    assert not strict.choose(0.0).hedge
    # Hedging does not depend on deadlines being on.
    assert Controller(COSTS, deadline_factor=None, estimator=FakeLink(1 * MBPS)).choose(0.0).hedge


def test_hedge_local_time_is_the_rest_of_the_model_from_the_split_point():
    from mobile_client.costs import hedge_local_ms

    assert hedge_local_ms(COSTS, "offload") == 300.0
    assert hedge_local_ms(COSTS, "split") == 300.0  # not measured: the whole model
    resume = ModeCosts(**{**COSTS.__dict__, "t_resume_device_ms": 280.0})
    assert hedge_local_ms(resume, "split") == 280.0 and hedge_local_ms(resume, "offload") == 300.0
    assert scaled(resume, 4.0).t_resume_device_ms == pytest.approx(1120.0)
    assert ModeCosts.from_dict({**COSTS.__dict__, "t_resume_device_ms": 280.0}) == resume
    with pytest.raises(ValueError):
        hedge_local_ms(COSTS, "local")


def test_costs_from_profiles_price_the_split_continuation_as_the_device_tail():
    from mobile_client.costs import costs_from_profiles

    prof = {"default_size": "s", "sizes": {"s": {"ms": {"full": 70.0, "head": 29.0, "tail": 46.0,
                                                        "jpeg_encode": 2.7, "offload_edge": 75.0},
                                                 "bytes": {"split": 4930, "jpeg": 27267}}}}
    edge = {"default_size": "s", "sizes": {"s": {"ms": {"full": 7.0, "head": 2.9, "tail": 4.6,
                                                        "jpeg_encode": 0.3, "offload_edge": 7.5},
                                                 "bytes": {"split": 4930, "jpeg": 27267}}}}
    costs = costs_from_profiles(prof, edge)
    assert costs.t_resume_device_ms == 46.0 and costs.t_tail_edge_ms == 4.6

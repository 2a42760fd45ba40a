"""Controller probes, deadlines and stalls: how it measures a link it is not using, gives up on a
frame the link stopped delivering, and finds out when the link is back (fake clock, no sockets)."""

from __future__ import annotations

import math

import pytest

from mobile_client.controller import Controller
from mobile_client.costs import ModeCosts, scaled
from mobile_client.decision import Decision
from mobile_client.estimators import LinkEstimator
from tests.controller_helpers import COSTS, MBPS, RTT, FakeLink


# ---------------------------------------------------------------- probing
def _is_probe(d: Decision) -> bool:
    """A probe of either kind: a remote frame sent to measure (reason "probe") or a link probe beside a local one."""
    return d.reason == "probe" or d.probe_bytes > 0


@pytest.mark.parametrize("link_probes", [True, False])
def test_probes_at_most_once_per_interval_while_the_estimate_is_stale(link_probes):
    link = FakeLink(0.1 * MBPS, age_s=math.inf)  # local is best; nothing refreshes the estimate
    ctl = Controller(COSTS, probe_interval_s=5.0, estimator=link, link_probes=link_probes)
    probes = []
    for i in range(30 * 30):
        t = i / 30
        d = ctl.choose(t)
        if _is_probe(d):
            probes.append(t)
            if link_probes:  # free: the frame itself stays local; the probe is answered 0.9 s later
                assert d.mode == "local" and d.probe_bytes == COSTS.bytes_split and not d.hedge
                ctl.observe_probe(d.probe_bytes, 0.9, 0.0, t + 0.9)
            else:
                assert d.mode == "split" and d.probe_bytes == 0
    assert 1 <= len(probes) <= 30 / 5
    assert all(b - a >= 5.0 - 1e-9 for a, b in zip(probes, probes[1:]))
    assert probes[0] >= 5.0  # a fresh controller trusts its estimate (or prior) for one interval
    assert ctl.mode == "local"  # a probe is a one-off, not a switch


@pytest.mark.parametrize("link_probes", [True, False])
def test_probe_uses_the_most_promising_remote_mode_and_stops_when_fresh(link_probes):
    link = FakeLink(0.1 * MBPS, age_s=math.inf)
    ctl = Controller(COSTS, probe_interval_s=5.0, estimator=link, link_probes=link_probes)
    ctl.choose(0.0)
    d = ctl.choose(6.0)
    # split 870 ms < offload 4837 ms: a split frame, or a link probe of a split payload's size.
    assert (d.mode, d.probe_bytes) == (("local", COSTS.bytes_split) if link_probes else ("split", 0))
    if link_probes:
        ctl.observe_probe(d.probe_bytes, 0.9, 0.0, 6.9)
        assert link.transfers[-1] == (COSTS.bytes_split, 0.9, 0.0, 6.9)  # a bandwidth sample like a frame's
    link.age = 1.0  # the probe's result refreshed the estimate
    assert not any(_is_probe(ctl.choose(11.0 + i)) for i in range(3))


def test_nothing_remote_while_a_link_probe_is_unanswered():
    # The probe's answer is the newest news, and a payload sent now would queue behind it.
    link = FakeLink(0.1 * MBPS, age_s=math.inf)
    ctl = Controller(COSTS, probe_interval_s=5.0, estimator=link)
    ctl.choose(0.0)
    assert ctl.choose(6.0).probe_bytes == COSTS.bytes_split
    link.bps = 1000 * MBPS  # the estimate now says offload, but the probe is still out
    d = ctl.choose(7.0)
    assert d.mode == "local" and d.reason == "probing" and d.probe_bytes == 0
    ctl.observe_probe(COSTS.bytes_split, 1.2, 0.0, 7.2)
    assert ctl.choose(8.0).mode == "offload"
    # An answer that never comes (a lost stream) holds nothing up for ever: given up after 16 intervals.
    link.bps, link.age = 0.1 * MBPS, math.inf
    d = ctl.choose(20.0)
    assert d.probe_bytes > 0
    link.bps = 1000 * MBPS
    assert ctl.choose(20.0 + 16 * 5.0 - 1).reason == "probing"
    assert ctl.choose(20.0 + 16 * 5.0 + 1).mode == "offload"
    # The answer to a probe given up on, coming after a newer one went out, is a sample but not that one's answer.
    link.bps = 0.1 * MBPS
    newer = ctl.choose(120.0)
    assert newer.probe_bytes > 0
    ctl.observe_probe(COSTS.bytes_split, 100.5, 0.0, 120.5)  # sent at t = 20
    link.bps = 1000 * MBPS
    assert ctl.choose(121.0).reason == "probing"
    ctl.observe_probe(COSTS.bytes_split, 1.2, 0.0, 121.2)  # sent at t = 120: the one awaited
    assert ctl.choose(122.0).mode == "offload"


class LastSampleLink(FakeLink):
    """A link estimate that is simply the last transfer's rate (RTT 0): what a probe's answer says, it says."""

    def observe_transfer(self, nbytes, total_s, server_s, at_s):
        super().observe_transfer(nbytes, total_s, server_s, at_s)
        self.bps = nbytes * 8 / (total_s - server_s)


@pytest.mark.parametrize("link_probes", [True, False])
def test_a_link_probe_ends_a_hysteresis_hold_on_evidence(link_probes):
    # Hysteresis holds local against split (predicted 13 % faster); local frames measure nothing, so only link
    # probes (a few per interval) can refresh the estimate and end the hold as soon as they show a clear gain.
    costs = ModeCosts(100.0, 10.0, 10.0, 10.0, 1.0, 10_000, 1_000_000)  # split = 20 + 80000/B ms
    link = LastSampleLink(0.9 * MBPS, rtt_s=0.0)  # split 109 ms > local 100 ms
    ctl = Controller(costs, estimator=link, link_probes=link_probes)
    assert ctl.choose(0.0).mode == "local"
    link.bps = 1.2 * MBPS  # split 87 ms: faster, but by less than 15 %
    d = ctl.choose(0.1)
    assert d.mode == "local" and d.reason == "hysteresis"
    if not link_probes:  # nothing measures the link: the hold ends by the time-to-trigger only, 5 s on
        assert d.probe_bytes == 0
        held = [ctl.choose(0.1 + 0.1 * i) for i in range(1, 49)]
        assert all(h.mode == "local" and h.probe_bytes == 0 for h in held)
        assert ctl.choose(5.2).mode == "split"
        return
    assert d.probe_bytes == costs.bytes_split
    waiting = ctl.choose(0.2)  # its answer is awaited: no second probe
    assert waiting.mode == "local" and waiting.probe_bytes == 0
    ctl.observe_probe(costs.bytes_split, 0.02, 0.0, 0.25)  # 10 KB in 20 ms: 4 Mbit/s, split 40 ms
    assert link.bps == pytest.approx(4 * MBPS)
    assert ctl.choose(0.3).mode == "split"  # the hold ended on the probe's evidence, 0.2 s after it began


def test_no_probe_while_a_remote_mode_is_in_use():
    link = FakeLink(1 * MBPS, age_s=math.inf)
    ctl = Controller(COSTS, estimator=link)
    assert all(ctl.choose(i * 0.5).reason != "probe" for i in range(40))


# ------------------------------------------------------- deadlines and stalls
def test_deadline_is_the_prediction_plus_a_local_run_and_only_where_local_may_serve():
    ctl = Controller(COSTS, estimator=FakeLink(1 * MBPS))
    d = ctl.choose(10.0)
    assert d.mode == "split" and d.predicted_ms["split"] == pytest.approx(150.0)
    # max(2p, p + local), p = min(prediction, local): 150 + 300 ms after the frame's start.
    assert d.deadline_s == pytest.approx(10.0 + 0.450)
    assert ctl.deadline_budget_s(50.0, 300.0) == pytest.approx(0.350)
    assert ctl.deadline_budget_s(250.0, 300.0) == pytest.approx(0.550)  # 2p wins
    assert ctl.deadline_budget_s(5000.0, 300.0) == pytest.approx(0.600)  # p capped at local's time
    local = Controller(COSTS, estimator=FakeLink(0.01 * MBPS)).choose(0.0)
    assert local.mode == "local" and local.deadline_s is None
    # No local to fall back on (not a mode, or below the accuracy floor), or deadlines off: wait.
    assert Controller(COSTS, modes=("split",), estimator=FakeLink(1 * MBPS)).choose(0.0).deadline_s is None
    strict = Controller(COSTS, accuracy={"local": 0.5}, min_accuracy=0.6, estimator=FakeLink(1 * MBPS))
    assert strict.choose(0.0).deadline_s is None
    assert Controller(COSTS, deadline_factor=None, estimator=FakeLink(1 * MBPS)).choose(0.0).deadline_s is None
    with pytest.raises(ValueError):
        Controller(COSTS, deadline_factor=0.5)


def _streaming(bps: float = 1 * MBPS) -> tuple[Controller, float]:
    """A controller that has been using split on a steady ``bps`` link for 2 s; returns it and the time."""
    ctl = Controller(COSTS)
    ctl.observe_rtt(RTT, 0.0)
    t = 0.0
    for i in range(21):
        if i:  # (frame 0 is a split transfer timed before: a first frame with no estimate goes offload)
            assert ctl.choose(t).mode == "split"
        total = COSTS.bytes_split * 8 / bps + RTT + COSTS.t_tail_edge_ms / 1000
        ctl.observe("split", COSTS.bytes_split, total, COSTS.t_tail_edge_ms / 1000, t + 0.02 + total)
        t += 0.2
    return ctl, t


def test_a_missed_deadline_is_a_stall_local_until_the_link_shows_it_delivers_again():
    ctl, t = _streaming()
    d = ctl.choose(t)
    assert d.mode == "split" and d.deadline_s is not None
    ctl.missed("split", COSTS.bytes_split, d.deadline_s - t - 0.02, d.deadline_s)
    assert ctl.failures == 0  # not a server failure
    stalled = [ctl.choose(t + 0.5 + 0.3 * i) for i in range(5)]
    assert all(s.mode == "local" and s.reason == "stalled" for s in stalled)
    # The estimate is capped by what the abandoned payload showed: it took longer than the wait, so the
    # bound reproduces the missed deadline (450 ms), not the 1 Mbit/s mean of the frames before.
    assert stalled[0].bandwidth_bps < 0.25 * MBPS
    assert stalled[0].predicted_ms["split"] == pytest.approx(450.0)
    # The abandoned frame's result arrives: the link delivers again, so the next frame probes at once,
    # with a deadline from the link as it was before the stall (150 ms + local), not from the bound.
    ctl.observe_late("split", COSTS.bytes_split, 2.0, 0.03, t + 2.0)
    probe = ctl.choose(t + 2.1)
    assert probe.mode == "split" and probe.reason == "probe"
    assert probe.deadline_s - (t + 2.1) == pytest.approx(0.450, rel=0.05)
    assert ctl.choose(t + 2.15).reason == "stalled"  # one probe per late result, not a flood
    # It comes back in time: the stall is over, the bound lifted, split again at once.
    total = COSTS.bytes_split * 8 / MBPS + RTT + 0.03
    ctl.observe("split", COSTS.bytes_split, total, 0.03, t + 2.12 + total)
    after = ctl.choose(t + 2.5)
    assert after.mode == "split" and after.reason == "best"
    assert after.bandwidth_bps == pytest.approx(1 * MBPS, rel=0.01)  # the stall did not drag the mean


@pytest.mark.parametrize("near", [False, True])
def test_probes_during_a_long_stall_back_off_unless_the_miss_was_a_near_one(near):
    ctl, t = _streaming()
    d = ctl.choose(t)
    ctl.missed("split", COSTS.bytes_split, 0.4, d.deadline_s)
    ctl.observe_late("split", COSTS.bytes_split, 1.0, 0.03, t + 1.0)
    probe = ctl.choose(t + 1.1)
    assert probe.reason == "probe"
    ctl.missed("split", COSTS.bytes_split, 0.4, probe.deadline_s)  # the link died again
    if near:
        # Its result comes 0.1 s after it was given up on, under a local run (0.3 s): a slow patch, not an
        # outage, and split at the rate the link delivered before (150 ms) beats local: no back-off.
        ctl.observe_late("split", COSTS.bytes_split, 0.5, 0.03, probe.deadline_s + 0.1)
        again = ctl.choose(probe.deadline_s + 0.15)
        assert again.mode == "split" and again.reason == "probe" and again.hedge
        return
    ctl.observe_late("split", COSTS.bytes_split, 0.8, 0.03, t + 1.9)
    # The second miss of the stall: a late result may trigger a probe only probe_interval/2 after the last.
    soon = [ctl.choose(t + 2.0 + 0.1 * i) for i in range(10)]
    assert all(s.mode == "local" for s in soon)
    assert ctl.choose(t + 1.1 + ctl.probe_interval_s / 2).reason == "probe"


def test_no_stall_probe_while_another_given_up_payload_is_still_on_its_way():
    # A probe would queue behind it and time that queue, not the link.
    ctl, t = _streaming()
    d = ctl.choose(t)
    ctl.missed("split", COSTS.bytes_split, 0.4, d.deadline_s)
    ctl.missed("split", COSTS.bytes_split, 0.4, t + 0.9)  # (a second frame given up on: a test shortcut)
    # Not on schedule either: the estimate is 6 s old, but a link probe would time the queue too.
    quiet = ctl.choose(t + 6.0)
    assert quiet.reason == "stalled" and quiet.probe_bytes == 0
    ctl.observe_late("split", COSTS.bytes_split, 6.0, 0.03, t + 6.5)
    assert ctl.choose(t + 6.6).reason == "stalled"
    ctl.observe_late("split", COSTS.bytes_split, 6.0, 0.03, t + 6.7)
    assert ctl.choose(t + 6.8).reason == "probe"


def test_the_probe_that_ends_a_stall_makes_its_mode_the_steady_one_again():
    # offload = 2 + 480000/B + 20 + 15 ms; local 300 ms (split left out: it would be faster than both).
    link = FakeLink(1000 * MBPS)
    ctl = Controller(COSTS, modes=("local", "offload"), estimator=link)
    assert ctl.choose(0.0).mode == "offload"
    ctl.missed("offload", COSTS.bytes_jpeg, 0.3, 0.3)
    ctl.observe_late("offload", COSTS.bytes_jpeg, 0.6, 0.015, 0.6)
    probe = ctl.choose(0.7)
    assert probe.mode == "offload" and probe.reason == "probe"
    ctl.observe("offload", COSTS.bytes_jpeg, 0.25, 0.015, 0.95)
    assert ctl.mode == "offload"
    link.bps = 1.975 * MBPS  # offload 280 ms: faster than local, by less than the 15 % hysteresis
    d = ctl.choose(1.0)
    assert d.mode == "offload" and d.reason == "best"  # not held on local, where the stall had put it


def test_the_connect_probe_measures_the_first_frames_payload_before_it():
    ctl = Controller(COSTS, hedge=False)
    ctl.observe_rtt(RTT, 0.0)
    # Unhedged, the first frame would measure the link with the fewest bytes: split.
    assert ctl.connect_probe(0.1) == COSTS.bytes_split
    assert ctl.connect_probe(0.1) == 0  # one at a time
    assert ctl.choose(0.2).mode == "local"  # unanswered yet: nothing remote
    ctl.observe_probe(COSTS.bytes_split, COSTS.bytes_split * 8 / (1000 * MBPS) + RTT, 0.0, 0.3)
    first = ctl.choose(0.4)
    assert first.mode == "offload" and first.reason == "best"  # chosen knowing the link
    assert Controller(COSTS, link_probes=False).connect_probe(0.0) == 0
    assert Controller(COSTS, estimator=LinkEstimator(initial_bps=MBPS, initial_rtt_s=RTT)).connect_probe(0.0) == 0
    assert Controller(scaled(COSTS, 0.05)).connect_probe(0.0) == 0  # local 15 ms: no remote mode can win
    # Hedged, none: the first frame measures the link itself, at worst its device part plus a local run.
    hedged = Controller(COSTS)
    assert hedged.connect_probe(0.0) == 0
    d = hedged.choose(0.0)
    assert d.mode == "offload" and d.reason == "no-estimate" and d.hedge  # hedged worst case 2 + 300 < 20 + 300


def test_an_rtt_from_pings_is_not_overridden_by_two_size_guesses():
    ctl = Controller(COSTS)
    ctl.observe_rtt(0.040, 0.0)
    # Two payload sizes whose times lie on a line with a 10 ms intercept (the link sped up in between).
    ctl.observe("split", 10_000, 0.010 + 0.080 + 0.03, 0.03, 1.0)
    ctl.observe("offload", 60_000, 0.010 + 0.480 + 0.015, 0.015, 1.5)
    assert ctl.choose(2.0).rtt_s == pytest.approx(0.040)
    unpinged = Controller(COSTS)  # without a ping the pair is all there is, and it is used
    unpinged.observe("split", 10_000, 0.010 + 0.080 + 0.03, 0.03, 1.0)
    unpinged.observe("offload", 60_000, 0.010 + 0.480 + 0.015, 0.015, 1.5)
    assert unpinged.choose(2.0).rtt_s == pytest.approx(0.010, abs=0.001)


@pytest.mark.parametrize("link_probes", [True, False])
def test_a_long_rtt_at_connect_is_checked_again_by_a_probe(link_probes):
    # A ping caught in a stall (0.5 s) says remote cannot win even on a perfect link; compute alone
    # says it could, so one frame per probe interval checks the link instead of trusting it forever.
    ctl = Controller(COSTS, probe_interval_s=5.0, link_probes=link_probes)
    ctl.observe_rtt(0.5, 0.0)
    decisions = [(i * 0.1, ctl.choose(i * 0.1)) for i in range(80)]
    probes = [t for t, d in decisions if _is_probe(d)]
    assert probes and probes[0] == pytest.approx(5.0)
    assert all(d.mode == "local" for t, d in decisions if link_probes or t not in probes)
    assert all(b - a >= 5.0 - 1e-9 for a, b in zip(probes, probes[1:]))  # one per interval at most
    fast_device = scaled(COSTS, 0.05)  # local 15 ms < offload 15.1 ms of edge compute alone: no probe ever
    never = Controller(fast_device, probe_interval_s=5.0)
    never.observe_rtt(0.5, 0.0)
    assert all(never.choose(i * 0.5).mode == "local" for i in range(40))


@pytest.mark.parametrize("late_s, hedged", [(1.0, False), (0.1, True)])
def test_a_stall_before_any_estimate_with_a_plain_estimator_still_works(late_s, hedged):
    # An estimator without bounds (FakeLink): the stall rule alone keeps remote out until the link is back.
    ctl = Controller(COSTS, estimator=FakeLink(None))
    d = ctl.choose(0.0)
    assert d.reason == "no-estimate" and d.deadline_s is not None
    ctl.missed(d.mode, COSTS.bytes_split, 0.3, d.deadline_s)
    assert [ctl.choose(t).reason for t in (0.5, 1.0)] == ["stalled", "stalled"]
    ctl.observe_late("split", COSTS.bytes_split, late_s, 0.03, 1.2)
    probe = ctl.choose(1.3)
    # The smaller payload, nothing being known. At the rate the late payload achieved (10 KB in 0.97 s: split
    # 890 ms vs local 300), a hedged frame would only cost its head: a link probe asks instead. At 10 KB in 70 ms
    # (split 142 ms), a hedged split frame, which can serve this very frame.
    if hedged:
        assert probe.mode == "split" and probe.reason == "probe" and probe.hedge
    else:
        assert probe.mode == "local" and probe.probe_bytes == COSTS.bytes_split


def test_a_hedge_lost_to_local_is_a_stall_and_its_probe_is_the_mode_of_the_delivering_link():
    # Offload on a fast link; its frame is beaten by the local run (the link stopped): a stall, as a missed
    # deadline. The late result shows the link is back; the probe is the mode the link as it was favours
    # (offload), not the smallest payload the bound from the stalled JPEG makes look best.
    ctl = Controller(COSTS)
    ctl.observe_rtt(RTT, 0.0)
    t, bps = 0.0, 100 * MBPS
    for _ in range(20):
        d = ctl.choose(t)
        total = COSTS.bytes_jpeg * 8 / bps + RTT + COSTS.t_full_edge_ms / 1000
        ctl.observe(d.mode, COSTS.bytes_jpeg if d.mode == "offload" else COSTS.bytes_split, total,
                    COSTS.t_full_edge_ms / 1000, t + 0.002 + total)
        t += 0.2
    d = ctl.choose(t)
    assert d.mode == "offload" and d.hedge
    ctl.missed("offload", COSTS.bytes_jpeg, 0.300, t + 0.302)  # the local continuation finished first
    assert ctl.choose(t + 0.4).reason == "stalled"
    ctl.observe_late("offload", COSTS.bytes_jpeg, 1.5, 0.015, t + 1.5)
    probe = ctl.choose(t + 1.6)
    assert probe.reason == "probe" and probe.mode == "offload" and probe.hedge

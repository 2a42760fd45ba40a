"""Link model: FIFO queueing, delay, jitter, loss and the peek oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simulators.links import BernoulliLoss, Delivery, GilbertElliottLoss, Link, parse_loss
from simulators.trace_files import MahimahiTrace
from simulators.traces import ConstantTrace, PiecewiseTrace


def test_fifo_queueing_and_delay() -> None:
    # 8 Mbps = 1e6 B/s; 14600 B = 10 full packets = 15000 wire bytes = 15 ms.
    link = Link(ConstantTrace(8), delay_ms=10)
    a = link.send(14_600, 0.0)
    assert (a.packets, a.wire_bytes, a.lost_packets) == (10, 15_000, 0)
    assert a.departed_s == pytest.approx(0.015)
    assert a.arrival_s == pytest.approx(0.025)
    b = link.send(14_600, 0.0)            # queued behind a
    assert b.departed_s == pytest.approx(0.030)
    assert b.latency_s == pytest.approx(0.040)
    c = link.send(14_600, 0.020)          # still queued (link busy until 30 ms)
    assert c.departed_s == pytest.approx(0.045)
    d = link.send(14_600, 1.0)            # idle link: capacity meanwhile is not banked
    assert d.departed_s == pytest.approx(1.015)
    assert link.busy_until == pytest.approx(1.015)
    link.reset()
    assert link.send(14_600, 0.0).departed_s == pytest.approx(0.015)


def test_delivery_is_frozen() -> None:
    d = Link(ConstantTrace(1)).send(100, 0.0)
    assert isinstance(d, Delivery)
    with pytest.raises(AttributeError):
        d.arrival_s = 0.0  # type: ignore[misc]


def test_packetization_and_partial_packet() -> None:
    link = Link(ConstantTrace(8), mtu=1500)
    d = link.send(1461, 0.0)                  # one full 1460-byte segment + 1 byte
    assert d.packets == 2 and d.wire_bytes == 1461 + 80
    assert link.send(0, 5.0).departed_s == 5.0


def test_rate_step_is_followed() -> None:
    link = Link(PiecewiseTrace([(1.0, 1.0), (1.0, 4.0)]))
    # 1460 kB payload = 1000 packets = 1.5 MB wire: 125 kB in the first
    # second (1 Mbps), the other 1.375 MB at 4 Mbps (0.5 MB/s) take 2.75 s but
    # only 1 s of 4 Mbps per loop, so it finishes inside the third loop.
    d = link.send(1_460_000, 0.0)
    assert d.wire_bytes == 1_500_000
    assert link.trace.bytes_delivered(0.0, d.departed_s) == pytest.approx(1_500_000)
    assert d.departed_s == pytest.approx(2 * 2.0 + 1.0 + (1_500_000 - 2 * 625_000 - 125_000) / 500_000)


def test_mahimahi_small_sends_share_an_opportunity(tmp_path: Path) -> None:
    p = tmp_path / "t"
    p.write_text("5\n10\n")
    link = Link(MahimahiTrace(p))
    # Two 500-byte wire packets fit in the single 1500-byte opportunity at 5 ms.
    assert link.send(460, 0.0).departed_s == pytest.approx(0.005)
    assert link.send(460, 0.0).departed_s == pytest.approx(0.005)
    assert link.send(1000, 0.0).departed_s == pytest.approx(0.010)  # spills into the next one
    # Stand-alone finish_time counts whole opportunities from an idle link.
    assert link.transfer_time(460, 0.021) == pytest.approx(0.004)  # next one at 25 ms


@pytest.mark.parametrize("loss", ["bernoulli:0.2", "ge:0.1,0.3,0.01,0.8"])
def test_transfer_time_does_not_mutate(loss: str) -> None:
    link = Link(ConstantTrace(8), delay_ms=20, jitter_ms=5, loss=loss, seed=3)
    link.send(100_000, 0.0)
    before = (link.busy_until, link.served_bytes)
    predicted = link.peek(50_000, 0.01)
    assert link.transfer_time(50_000, 0.01) == pytest.approx(predicted.latency_s)
    assert (link.busy_until, link.served_bytes) == before
    actual = link.send(50_000, 0.01)        # the oracle saw the same random draws
    assert actual == predicted
    assert actual.lost_packets > 0


def test_jitter_nonnegative_and_in_order() -> None:
    link = Link(ConstantTrace(100), delay_ms=10, jitter_ms=5, seed=1)
    arrivals = []
    for i in range(2000):
        d = link.send(1000, i * 0.0001)
        assert d.arrival_s >= d.departed_s + 0.010
        arrivals.append(d.arrival_s)
    assert np.all(np.diff(arrivals) >= 0)
    extra = np.array(arrivals) - 0.010
    assert extra.mean() > 0  # jitter actually happened


def test_bernoulli_loss_costs_capacity() -> None:
    p = 0.1
    clean = Link(ConstantTrace(10)).send(10_000_000, 0.0)
    lossy = Link(ConstantTrace(10), delay_ms=20, loss=BernoulliLoss(p, seed=7)).send(10_000_000, 0.0)
    ratio = lossy.wire_bytes / clean.wire_bytes
    print(f"Bernoulli p={p}: wire bytes x{ratio:.4f} (1/(1-p) = {1 / (1 - p):.4f})")
    assert ratio == pytest.approx(1 / (1 - p), rel=0.01)
    assert lossy.lost_packets > 0
    # Departure accounts for the retransmitted bytes; arrival adds recovery rounds.
    assert lossy.departed_s == pytest.approx(lossy.wire_bytes / 1.25e6, rel=1e-6)
    rounds = (lossy.arrival_s - lossy.departed_s - 0.020) / 0.050  # rto = 2*20+10 ms
    assert rounds == pytest.approx(round(rounds)) and round(rounds) >= 1


def test_loss_is_seeded_and_reset_replays() -> None:
    link = Link(ConstantTrace(10), loss="bernoulli:0.05", jitter_ms=2, seed=11)
    first = [link.send(50_000, i * 0.1) for i in range(20)]
    link.reset()
    again = [link.send(50_000, i * 0.1) for i in range(20)]
    assert first == again


def test_gilbert_elliott_long_run_loss() -> None:
    p_gb, p_bg = 0.02, 0.2
    ge = GilbertElliottLoss(p_gb, p_bg, seed=5)
    drops = np.concatenate([ge.lost_many(1000) for _ in range(500)])
    expected = p_gb / (p_gb + p_bg)
    print(f"Gilbert-Elliott: loss {drops.mean():.4f}, expected {expected:.4f}")
    assert drops.mean() == pytest.approx(expected, abs=0.01)
    assert ge.mean_loss == pytest.approx(expected)
    # Bursty: a drop is much more likely right after a drop than on average.
    after_drop = drops[1:][drops[:-1]].mean()
    assert after_drop > 5 * expected
    # The one-step API follows the same process.
    ge2 = GilbertElliottLoss(p_gb, p_bg, seed=6)
    steps = np.array([ge2.lost() for _ in range(30_000)])
    assert steps.mean() == pytest.approx(expected, abs=0.02)


def test_parse_loss() -> None:
    assert parse_loss(None) is None and parse_loss("none") is None
    b = parse_loss("bernoulli:0.01")
    assert isinstance(b, BernoulliLoss) and b.p == 0.01
    g = parse_loss("ge:0.01,0.1")
    assert isinstance(g, GilbertElliottLoss) and (g.loss_good, g.loss_bad) == (0.0, 1.0)
    g4 = parse_loss("ge:0.01,0.1,0.001,0.5")
    assert isinstance(g4, GilbertElliottLoss) and g4.loss_bad == 0.5
    for bad in ("bernoulli:x", "bernoulli:1.5", "bernoulli:1", "ge:0.1", "ge:0.1,0.2,0.3", "drop:0.1",
                "ge:0.1,0,0,1"):
        with pytest.raises(ValueError):
            parse_loss(bad)


def test_unshaped_link_only_delays() -> None:
    link = Link(None, delay_ms=15)
    d = link.send(10_000_000, 2.0)
    assert d.departed_s == 2.0 and d.arrival_s == pytest.approx(2.015)

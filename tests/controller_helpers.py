"""What the controller tests share: the costs of a made-up model, a link the test sets by hand,
a measured estimator, and a frame-by-frame driver over an analytic link."""

from __future__ import annotations

from mobile_client.controller import Controller
from mobile_client.costs import ModeCosts
from mobile_client.estimators import LinkEstimator

MBPS = 1e6
RTT = 0.020

# A device 10x slower than the edge; split sends 10 KB, offload a 60 KB JPEG.
# local 300 ms; split = 20 + 30 + 20 (RTT) + 80000/B; offload = 2 + 15 + 20 + 480000/B. So:
#   0.1 Mbit/s: local 300 < split 870 < offload 4837      -> local
#   1 Mbit/s:   split 150 < local 300 < offload 517       -> split
#   1 Gbit/s:   offload 37.5 < split 70.1 < local 300     -> offload
COSTS = ModeCosts(
    t_full_device_ms=300.0,
    t_head_device_ms=20.0,
    t_tail_edge_ms=30.0,
    t_full_edge_ms=15.0,
    t_jpeg_encode_ms=2.0,
    bytes_split=10_000,
    bytes_jpeg=60_000,
)


class FakeLink:
    """An estimator whose answers the test sets directly, to test decisions in isolation."""

    def __init__(self, bps: float | None, rtt_s: float | None = RTT, age_s: float = 0.0) -> None:
        self.bps, self.rtt, self.age = bps, rtt_s, age_s
        self.transfers: list[tuple] = []

    def bandwidth_bps(self):
        return self.bps

    def rtt_s(self):
        return self.rtt

    def age_s(self, now_s):
        return self.age

    def observe_transfer(self, nbytes, total_s, server_s, at_s):
        self.transfers.append((nbytes, total_s, server_s, at_s))

    def observe_rtt(self, rtt_s, at_s):
        pass


def measured(bps: float, t: float = 0.0) -> LinkEstimator:
    """A real estimator that has seen a few pings and transfers over a ``bps`` link with RTT 20 ms."""
    est = LinkEstimator()
    for i in range(5):
        est.observe_rtt(RTT, at_s=t)
        est.observe_transfer(20_000, 20_000 * 8 / bps + RTT, 0.0, at_s=t)
    return est


def simulate(ctl: Controller, link_bps, duration_s: float, fps: float = 10.0):
    """Drive ``ctl`` frame by frame over a link ``link_bps(t)`` with RTT 20 ms; return decisions."""
    out = []
    for k in range(int(duration_s * fps)):
        t = k / fps
        d = ctl.choose(t)
        if d.mode == "split":
            nbytes, server_s = COSTS.bytes_split, COSTS.t_tail_edge_ms / 1000
        elif d.mode == "offload":
            nbytes, server_s = COSTS.bytes_jpeg, COSTS.t_full_edge_ms / 1000
        else:
            ctl.observe_local(COSTS.t_full_device_ms / 1000, t + 0.3)
            if d.probe_bytes:  # a link probe: the server answers at once
                probe_s = d.probe_bytes * 8 / link_bps(t) + RTT
                ctl.observe_probe(d.probe_bytes, probe_s, 0.0, t + probe_s)
            out.append((t, d))
            continue
        total_s = nbytes * 8 / link_bps(t) + RTT + server_s
        if k % 10 == 0:
            ctl.observe_rtt(RTT, t)
        ctl.observe(d.mode, nbytes, total_s, server_s, t + total_s)
        out.append((t, d))
    return out

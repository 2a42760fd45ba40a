"""No state of the controller it cannot leave (issue 14, item 1), checked through the session driver.

Generated traces (rate steps, on/off outages of random length, ramps, a dead start) are run by
``simulate(..., "auto", ...)``, which drives the live device's session driver and controller
on the simulator's clock, with the shipped detector's profile at K = 8 and 1 fps, with and
without hedging and link probes. Two properties, with the bounds docs/controller.md states
("No absorbing states"):

* a link that becomes fast (100 Mbit/s) and stays fast brings a remote mode back within
  ``recovery_frames`` frames, and every frame after that is served remotely;
* a link that dies brings local within one frame's deadline: every frame that starts once a
  deadline's worth of time has passed after the link died is served locally.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobile_client.controller import Controller
from mobile_client.costs import costs_from_profiles, read_profile, scaled
from mobile_client.probes import PROBE_MAX_DOUBLINGS
from simulators.experiment import SimConfig, simulate
from simulators.traces import PiecewiseTrace

PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "fasterrcnn_mobilenet_v2_320_fpn.json"
COSTS = scaled(costs_from_profiles(read_profile(PROFILE), read_profile(PROFILE)), 8.0)
FPS, INTERVAL_S, FAST_MBPS = 1.0, 5.0, 100.0
FLAGS = [(True, True), (True, False), (False, True), (False, False)]  # (hedge, link probes)
EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def recovery_frames(link_probes: bool) -> int:
    """The bound: link probes go out once the estimate is a probe interval old, and the answer's sample is
    used at the next decision: two intervals cover a probe in flight when the link turned fast. Without them,
    probes are frames spaced by at most 2**PROBE_MAX_DOUBLINGS intervals."""
    intervals = 2 if link_probes else 2 ** PROBE_MAX_DOUBLINGS + 2
    return math.ceil(intervals * INTERVAL_S * FPS) + 3


def run(segments: list[tuple[float, float]], hedge: bool, link_probes: bool, frames: int):
    config = SimConfig(COSTS, fps=FPS, frames=frames,
                       controller_factory=lambda c: Controller(c, probe_interval_s=INTERVAL_S, hedge=hedge,
                                                               link_probes=link_probes))
    return simulate(PiecewiseTrace(segments), "auto", config)


segment = st.tuples(st.floats(0.5, 20.0), st.sampled_from([0.0, 0.0005, 0.05, 0.3, 1.0, 5.0, 30.0]))
steps = st.lists(segment, min_size=1, max_size=6)
on_off = st.lists(st.tuples(st.floats(0.5, 8.0), st.floats(0.5, 15.0)), min_size=1, max_size=4).map(
    lambda pairs: [seg for on, off in pairs for seg in ((on, 20.0), (off, 0.0))])
ramp = st.tuples(st.floats(0.01, 1.0), st.integers(2, 8), st.floats(1.0, 6.0)).map(
    lambda r: [(r[2], r[0] * (FAST_MBPS / r[0]) ** (i / r[1])) for i in range(r[1])])
dead_start = st.floats(0.5, 30.0).map(lambda d: [(d, 0.0005)])
prefixes = st.one_of(steps, on_off, ramp, dead_start)


@pytest.mark.parametrize("hedge,link_probes", FLAGS)
@EXAMPLES
@given(prefix=prefixes)
def test_a_link_that_becomes_fast_brings_a_remote_mode_back(prefix, hedge, link_probes):
    fast_at = sum(d for d, _ in prefix)
    bound = recovery_frames(link_probes)
    frames = math.ceil(fast_at * FPS) + bound + 20
    records = run(prefix + [(10_000.0, FAST_MBPS)], hedge, link_probes, frames)
    # Frames still in flight when the link turned fast may end late (their payloads queued on the dead link);
    # the bound counts from the first frame started once those are through.
    settled = next(r.start_s for r in records if r.start_s >= fast_at and all(
        q.done_s <= r.start_s for q in records if q.start_s < fast_at))
    after = [r for r in records if r.start_s >= settled + bound / FPS]
    assert after, "the run is too short to check the bound"
    assert all(r.mode in ("split", "offload") for r in after), [(r.frame, r.mode, r.reason) for r in after[:5]]


@pytest.mark.parametrize("hedge,link_probes", FLAGS)
@EXAMPLES
@given(prefix=prefixes, dead_after=st.floats(5.0, 40.0))
def test_a_link_that_dies_brings_local_within_a_frames_deadline(prefix, dead_after, hedge, link_probes):
    # Any history, then fast for a while, then dead for good.
    segments = prefix + [(dead_after, FAST_MBPS), (10_000.0, 0.0)]
    dies_at = sum(d for d, _ in segments[:-1])
    frames = math.ceil(dies_at * FPS) + 40
    records = run(segments, hedge, link_probes, frames)
    local_s = COSTS.t_full_device_ms / 1e3
    deadline_s = 2 * local_s  # Deadlines.budget_s caps the prediction at local's: at most max(2, 1 + 1) x local
    first = next(r for r in records if r.start_s >= dies_at)
    assert first.done_s - first.start_s <= deadline_s + local_s + 1e-6  # the frame in flight: local by its deadline
    later = [r for r in records if r.start_s >= first.done_s]
    assert later and all(r.mode == "local" for r in later), [(r.frame, r.mode, r.reason) for r in later[:5]]

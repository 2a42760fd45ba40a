"""The pipelined device (issue 16, item 2): frame n+1's device part overlaps frame n's network/edge stage.

The session driver on a fake IO and a virtual clock (order kept, one record per frame, the overlap happens:
n x max(stage), not n x sum), the same rules live and simulated, the controller weighing stage occupancy when
throughput-bound, and the real client against the real server on loopback with ``--pipeline``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobile_client.controller import Controller
from mobile_client.costs import ModeCosts
from mobile_client.decision import Decision
from mobile_client.errors import EdgeUnavailable
from mobile_client.pipeline import StageClock, behind, occupancy
from mobile_client.runtime import DeviceRuntime, RuntimeOptions
from mobile_client.session import Encoded, Outcome, Session
from mobile_client.sources import Frame
from simulators.experiment import SimConfig, simulate, summarize
from simulators.traces import ConstantTrace
from tests import test_session as scripted

ROOT = Path(__file__).resolve().parents[1]
HEAD_S, LOCAL_S = 0.030, 0.200


# ------------------------------------------------------------------------------------------ a fake IO
class FakeIO:
    """Fixed device times and, per frame, a fixed network/edge stage, on a virtual clock; logs every call."""

    has_edge = True

    def __init__(self, stage_s, *, resume_s: float = LOCAL_S, lose_at: int | None = None) -> None:
        self.stage_s = stage_s if callable(stage_s) else (lambda _i: stage_s)
        self.resume_s, self.lose_at = resume_s, lose_at  # lose_at: the stream breaks while that frame is away
        self.t, self.up = 0.0, False
        self.flight: dict[int, tuple[float, float]] = {}
        self.log: list[tuple[str, int, float]] = []  # (event, frame, time)
        self.in_flight_max = 0

    def now(self) -> float:
        return self.t

    def connected(self) -> bool:
        return self.up

    def connect(self, timeout_s: float) -> dict[str, float]:
        self.up = True
        return {}

    def close(self) -> None:
        self.up = False
        self.flight.clear()

    def send_probe(self, nbytes: int) -> int:
        raise AssertionError("no probes in these scripts")

    def arrivals(self) -> list:
        if self.lose_at in self.flight and self.up:
            raise EdgeUnavailable("the stream broke")
        return []

    def run_local(self, frame):
        self.log.append(("local", frame, self.t))
        self.t += LOCAL_S
        return ("local", frame), LOCAL_S

    def encode(self, frame, mode, hedge):
        self.log.append(("head", frame, self.t))
        self.t += HEAD_S
        return Encoded(("payload", frame), 1_000, HEAD_S)

    def remote(self, frame_id, frame, mode, encoded, deadline_s, hedge):
        assert self.submit(frame_id, mode, encoded) is None
        return self.collect(frame_id, frame, mode, encoded, deadline_s, hedge)

    def submit(self, frame_id, mode, encoded):
        self.flight[frame_id] = (self.t, self.t + self.stage_s(frame_id))
        self.in_flight_max = max(self.in_flight_max, len(self.flight))
        self.log.append(("send", frame_id, self.t))
        return None

    def collect(self, frame_id, frame, mode, encoded, deadline_s, hedge):
        sent, arrives = self.flight.pop(frame_id)
        self.log.append(("collect", frame_id, self.t))
        if hedge and self.t + self.resume_s < arrives:
            self.t += self.resume_s
            return Outcome("hedge", self.t, seconds=self.t - sent, device_s=HEAD_S + self.resume_s,
                           outputs=("hedged", frame_id))
        if deadline_s is not None and arrives > deadline_s:
            self.t = max(self.t, deadline_s)
            return Outcome("deadline", self.t, seconds=self.t - sent)
        self.t = max(self.t, arrives)
        return Outcome("result", self.t, seconds=arrives - sent, outputs=("edge", frame_id))


class ScriptedController:
    """The calls a session makes into a controller, with decisions from ``decide(frame number, now)``; logs them.
    After a miss, the next frame is local (as a stall makes it)."""

    link_probes = True
    costs = ModeCosts(LOCAL_S * 1e3, HEAD_S * 1e3, 0, 0, 0, 0, 0)

    def __init__(self, decide=lambda i, now_s: Decision("split")) -> None:
        self.decide, self.calls, self.frames, self.down, self.stalled = decide, [], 0, False, False
        self.reconnect = False  # whether the backoff lets a lost server be tried again

    def choose(self, now_s):
        self.frames += 1
        self.calls.append(("choose", now_s))
        if self.down:
            return Decision("local", reason="no-server")
        if self.stalled:
            self.stalled = False
            return Decision("local", reason="stalled")
        return self.decide(self.frames - 1, now_s)

    def missed(self, *args):
        self.calls.append(("missed", *args))
        self.stalled = True

    def effective_costs(self):
        return self.costs

    def connect_probe(self, now_s):
        return 0

    def server_failed(self, now_s):
        self.down = True
        self.calls.append(("server_failed", now_s))
        return 1.0

    def should_reconnect(self, now_s):
        return self.down and self.reconnect

    def server_ok(self, now_s):
        self.calls.append(("server_ok", now_s))
        self.down = False

    def __getattr__(self, name):  # observe, missed, pipeline_sent, ...: logged
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, *args))


def run(io, controller, frames: int, pipeline: bool = True):
    session = Session(controller, io, rtt_pings=0, pipeline=pipeline)
    assert session.connect()
    records = [r for i in range(frames) for r in session.feed(i, i)] + session.flush()
    return records


def check_one_record_each_in_order(records, frames: int) -> None:
    assert [r.frame_id for r in records] == list(range(frames))
    assert all(r.done_s >= r.start_s for r in records)


@pytest.mark.parametrize("stage_s", [0.050, 0.020], ids=["network-bound", "device-bound"])
def test_a_pipelined_session_serves_a_frame_every_slowest_stage_in_order(stage_s):
    n = 40
    records = run(FakeIO(stage_s), ScriptedController(), n)
    check_one_record_each_in_order(records, n)
    assert all(r.outputs == ("edge", r.frame_id) and r.mode == "split" for r in records)  # each its own result
    slowest, first = max(HEAD_S, stage_s), min(HEAD_S, stage_s)
    total = records[-1].done_s
    assert total == pytest.approx(n * slowest + first)  # n x max(stage) (+ the pipeline's fill), not n x sum
    unpipelined = run(FakeIO(stage_s), ScriptedController(), n, pipeline=False)
    check_one_record_each_in_order(unpipelined, n)
    assert unpipelined[-1].done_s == pytest.approx(n * (HEAD_S + stage_s))
    assert [r.outputs for r in unpipelined] == [r.outputs for r in records]


def test_the_next_head_runs_while_a_frame_is_away_and_at_most_one_is_away():
    io, controller = FakeIO(0.050), ScriptedController()
    run(io, controller, 10)
    at = {(event, frame): t for event, frame, t in io.log}
    for k in range(1, 10):
        assert at[("send", k - 1)] <= at[("head", k)] < at[("send", k - 1)] + 0.050  # overlap
        assert at[("send", k)] >= at[("collect", k - 1)]  # the payload leaves once the frame before settled
    assert io.in_flight_max == 1
    # The controller hears of each payload leaving and settling, and each frame's result after it settled.
    names = [c[0] for c in controller.calls if c[0] in ("pipeline_sent", "pipeline_settled", "observe")]
    assert names == ["pipeline_sent"] + ["pipeline_settled", "observe", "pipeline_sent"] * 9 + \
        ["pipeline_settled", "observe"]


def test_a_missed_deadline_is_served_on_the_device_in_its_place():
    slow = 3
    io = FakeIO(lambda i: 1.0 if i == slow else 0.050)
    controller = ScriptedController(lambda i, now: Decision("split", deadline_s=now + 0.25))
    records = run(io, controller, 9)
    check_one_record_each_in_order(records, 9)
    for k in (slow, slow + 1):  # the frame behind waited for that one's deadline and local run: past its own
        r = records[k]
        assert (r.mode, r.reason, r.fallback, r.outputs) == ("local", "deadline", True, ("local", k))
    assert [c[0] for c in controller.calls].count("missed") == 2
    assert [(r.mode, r.reason) for r in records[slow + 2:slow + 4]] == [("local", "stalled")] * 2
    at = {(event, frame): t for event, frame, t in io.log}
    assert at[("collect", slow)] == pytest.approx(at[("head", slow + 1)] + HEAD_S)
    assert records[slow].done_s == pytest.approx(records[slow].start_s + 0.25 + LOCAL_S)  # gave up at its deadline
    assert all(x.mode == "split" and x.outputs == ("edge", x.frame_id) for x in records if x.frame_id not in
               range(slow, slow + 4))


def test_a_hedged_frame_races_on_the_device_once_the_next_head_is_done():
    slow = 2
    io = FakeIO(lambda i: 1.0 if i == slow else 0.050)
    records = run(io, ScriptedController(lambda i, now: Decision("split", hedge=True)), 6)
    check_one_record_each_in_order(records, 6)
    r = records[slow]
    assert (r.mode, r.reason, r.outputs) == ("local", "hedge", ("hedged", slow))
    at = {(event, frame): t for event, frame, t in io.log}
    assert at[("collect", slow)] == pytest.approx(at[("head", slow + 1)] + HEAD_S)  # after the next head
    assert r.done_s == pytest.approx(at[("collect", slow)] + LOCAL_S)


def test_a_stream_lost_while_a_frame_is_away_still_gives_that_frame_its_record():
    io, controller = FakeIO(0.050, lose_at=4), ScriptedController()
    records = run(io, controller, 9)
    check_one_record_each_in_order(records, 9)
    assert [c[0] for c in controller.calls].count("server_failed") == 1
    lost = records[4]  # away when frame 5's feed found the stream broken
    assert lost.mode == "local" and lost.fallback and "edge unavailable" in lost.error
    assert all(r.mode == "split" for r in records[:4])
    assert all(r.mode == "local" for r in records[5:])


def test_after_a_lost_stream_the_session_reconnects_and_pipelines_again():
    io, controller = FakeIO(0.050, lose_at=4), ScriptedController()
    session = Session(controller, io, rtt_pings=0, pipeline=True)
    assert session.connect()
    records = [r for i in range(6) for r in session.feed(i, i)]
    controller.reconnect = True  # the backoff is over
    records += [r for i in range(6, 12) for r in session.feed(i, i)] + session.flush()
    check_one_record_each_in_order(records, 12)
    assert [r.mode for r in records] == ["split"] * 4 + ["local"] * 2 + ["split"] * 6
    assert [c[0] for c in controller.calls].count("server_ok") == 2
    assert io.in_flight_max == 1


def test_local_frames_between_remote_ones_keep_their_place():
    modes = ["split", "local", "split", "split", "local", "local", "split"]
    io = FakeIO(0.100)
    records = run(io, ScriptedController(lambda i, now: Decision(modes[i])), len(modes))
    check_one_record_each_in_order(records, len(modes))
    assert [r.mode for r in records] == modes
    at = {(event, frame): t for event, frame, t in io.log}
    assert at[("local", 1)] == pytest.approx(at[("send", 0)])  # the local run overlaps frame 0's stage


def test_pipelining_needs_an_io_that_can_submit_and_collect():
    class Plain:
        has_edge = False

    with pytest.raises(TypeError, match="cannot pipeline"):
        Session(ScriptedController(), Plain(), pipeline=True)


# ------------------------------------------------------------------------------- the controller's view
def test_stage_views_add_the_wait_and_compare_occupancy():
    costs = ModeCosts(200.0, 80.0, 10.0, 10.0, 5.0, 1_000, 1_000)
    predicted = {"local": 200.0, "split": 100.0, "offload": 95.0}  # network/edge parts: split 20, offload 90
    assert occupancy(predicted, costs) == {"local": 200.0, "split": 80.0, "offload": 90.0}
    assert behind(predicted, costs, 50.0) == {"local": 200.0, "split": 100.0, "offload": 140.0}
    clock = StageClock()
    assert clock.views(predicted, {}, costs, 1.0) == (predicted, {}, predicted)  # nothing away: unchanged
    clock.sent("offload", 1.0)  # 90 ms of network/edge stage from 1.0 s
    latency, _, occ = clock.views(predicted, {}, costs, 1.04)
    assert latency["split"] == pytest.approx(80.0 + 20.0) and latency["offload"] == pytest.approx(50.0 + 90.0)
    assert min(occ, key=occ.get) == "split" and min(predicted, key=predicted.get) == "offload"


# Offload: 5 ms encode, ~90 ms away (latency 95); split: 80 ms head, ~25 ms away (latency 105). Without
# pipelining offload is faster per frame; pipelined and throughput-bound, split serves a frame every 80 ms
# and offload every 90.
PIPE_COSTS = ModeCosts(400.0, 80.0, 5.0, 60.0, 5.0, 2_500, 2_500)


def _sim(policy: str, pipeline: bool, **kw) -> list:
    config = SimConfig(PIPE_COSTS, fps=kw.pop("fps", 1e6), frames=kw.pop("frames", 300), delay_ms=10.0,
                       pipeline=pipeline, **kw)
    return simulate(ConstantTrace(2.0), policy, config)


def test_simulated_pipelined_split_reaches_the_slowest_stage_rate():
    for pipeline in (False, True):
        records = _sim("split", pipeline)
        assert [r.frame for r in records] == list(range(300))
    stages = (80.0, 2_500 * 8 / 2e6 * 1e3 + 20.0 + 5.0)  # head; transfer + RTT + tail (plus header bytes)
    off, on = summarize("", "split", _sim("split", False)), summarize("", "split", _sim("split", True))
    assert off.served_fps == pytest.approx(1e3 / sum(stages), rel=0.05)
    assert on.served_fps >= 0.9 * 1e3 / max(stages)


def test_throughput_bound_auto_weighs_stage_occupancy():
    off, on = _sim("auto", False), _sim("auto", True)
    share = {k: summarize("", "auto", r).mode_share for k, r in (("off", off), ("on", on))}
    assert share["off"]["offload"] > 0.8 and share["on"]["split"] > 0.8
    fps = {k: summarize("", "auto", r).served_fps for k, r in (("off", off), ("on", on))}
    assert fps["on"] > 1.1 * fps["off"]
    assert [r.frame for r in on] == list(range(300))


def test_a_slow_camera_is_not_pipelined():
    # 2 fps, a frame takes ~110 ms: nothing is ever waiting, so pipelining changes nothing.
    assert _sim("auto", True, fps=2.0, frames=60) == _sim("auto", False, fps=2.0, frames=60)


def test_a_realtime_camera_with_pipelining_keeps_one_record_per_frame():
    for policy in ("split", "auto", "local"):
        records = _sim(policy, True, fps=30.0, frames=200, realtime=True)
        assert [r.frame for r in records] == list(range(200))
        assert any(r.skipped for r in records) or policy != "local"
    served = {p: summarize("", "split", _sim("split", p, fps=30.0, frames=200, realtime=True)).served
              for p in (False, True)}
    assert served[True] > 1.2 * served[False]


def test_the_oracle_has_no_pipelined_form():
    with pytest.raises(ValueError, match="oracle"):
        _sim("oracle", True)


# ---------------------------------------------------------------------- live and simulated, pipelined
def live_pipelined(scenario: str, hedge: bool) -> list[tuple[str, str, int, int]]:
    clock = scripted.Clock()
    runtime = DeviceRuntime(None, scripted.controller(hedge), scripted.ScriptedClient(clock, scenario),
                            RuntimeOptions(rtt_pings=3, pipeline=True), device=scripted.FixedDevice(clock),
                            clock=clock, sleep=clock.sleep)
    assert runtime.connect()
    rgb = np.zeros((1, 1, 3), np.uint8)
    records = [r for i in range(scripted.FRAMES) for r in runtime.submit(Frame(i, "scripted", rgb))]
    records += runtime.flush()
    assert [r["frame_id"] for r in records] == list(range(scripted.FRAMES))
    return [(r["mode"], r["reason"], r["payload_bytes"], r["probe_bytes"]) for r in records]


def simulated_pipelined(scenario: str, hedge: bool) -> list[tuple[str, str, int, int]]:
    class ScriptedConfig(SimConfig):
        def links(self, trace):
            return scripted.links(scenario)

    config = ScriptedConfig(scripted.COSTS, fps=1e6, frames=scripted.FRAMES, pipeline=True,
                            controller_factory=lambda c: scripted.controller(hedge))
    return [(r.mode, r.reason, r.payload_bytes, r.probe_bytes) for r in simulate(ConstantTrace(1.0), "auto", config)]


@pytest.mark.parametrize("scenario", ["outage", "slow start"])
@pytest.mark.parametrize("hedge", [True, False], ids=["hedged", "deadlines"])
def test_live_and_simulated_pipelined_sessions_decide_alike(scenario, hedge):
    live = live_pipelined(scenario, hedge)
    assert live == simulated_pipelined(scenario, hedge)
    assert {m for m, *_ in live} >= {"local"} and {m for m, *_ in live} - {"local"}


# ------------------------------------------------------------------------------ command lines, loopback
def test_simulate_pipeline_flag(tmp_path):
    profile = str(ROOT / "profiles" / "ssdlite320_mobilenet_v3_large.json")
    base = [sys.executable, "-m", "split.dispatch", "simulate", "--model", "ssdlite320_mobilenet_v3_large",
            "--device-profile", profile, "--edge-profile", profile, "--trace", "const:5", "--fps", "10",
            "--frames", "60", "--device-slowdown", "8", "--sweep-mbps", "1,10,2", "--out", str(tmp_path / "o")]
    proc = subprocess.run(base + ["--pipeline"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "o" / "run.json").read_text())["pipeline"] is True
    header = (tmp_path / "o" / "summary.csv").read_text().splitlines()
    assert {line.split(",")[1] for line in header[1:]} == {"local", "split", "offload", "auto"}
    proc = subprocess.run(base + ["--pipeline", "--policies", "auto,oracle"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "oracle" in proc.stderr


def test_pipelined_client_against_a_real_server_gives_one_result_per_frame_in_order(server, tmp_path):
    from tests.test_client import MODEL, read_jsonl, run_client

    common = ("--server", server.target, "--model", MODEL, "--source", str(ROOT / "samples" / "coco"),
              "--loop", "2", "--device-slowdown", "2")
    results = {}
    for name, flags in (("off", ("--mode", "split")), ("on", ("--mode", "split", "--pipeline")),
                        ("auto", ("--mode", "auto", "--pipeline", "--device-profile",
                                  str(ROOT / "profiles" / "ssdlite320_mobilenet_v3_large.json")))):
        out = tmp_path / f"{name}.jsonl"
        proc = run_client(*common, *flags, "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        results[name] = read_jsonl(out)
    n = len(results["off"])
    assert n == 12
    for name, records in results.items():
        assert [r["frame_id"] for r in records] == list(range(n)), name
        assert all(r["error"] is None for r in records), name
    on = results["on"]
    assert all(r["mode"] == "split" and not r["fallback"] and r["remote_ms"] > 0 for r in on)
    assert sum(r["wait_ms"] > 0 for r in on) >= 1  # a payload did wait for the frame before: the stages overlapped
    for a, b in zip(results["off"], on):  # each frame got its own detections, not a neighbour's
        assert [d["label"] for d in a["detections"]] == [d["label"] for d in b["detections"]]
        assert all(math.isclose(x, y, abs_tol=1e-3) for da, db in zip(a["detections"], b["detections"])
                   for x, y in zip(da["box"], db["box"]))

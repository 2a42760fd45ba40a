"""N devices on one edge (`splitedge fleet`), and the edge-load feedback of the controller.

Synthetic profiles and constant traces, a few seconds in all: the fleet with one device is the
single-device simulator, a slow edge queues, the feedback sends less to a saturated edge, the
EdgeLoad estimator's rules one by one, the batch curve's formats, the knee, and the CLI's errors.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mobile_client.controller import Controller
from mobile_client.costs import ModeCosts
from mobile_client.estimators import EdgeLoad
from simulators.edge_queue import EdgeConfig, EdgeCurve, load_edge_curve
from simulators.experiment import SimConfig, simulate, summarize
from simulators.fleet import FleetConfig, FleetRow, knee, simulate_fleet
from simulators.traces import ConstantTrace
from split.dispatch import main as splitedge

from .test_simulate import _profile

# Local 300 ms; offload 5 ms JPEG + 20 KB + a 50 ms full model on the edge (~111 ms at 10 Mbit/s, 20 ms
# each way); split 100 ms head + 5 KB + 30 ms tail. One edge worker serves 20 offloads a second.
COSTS = ModeCosts(t_full_device_ms=300.0, t_head_device_ms=100.0, t_tail_edge_ms=30.0, t_full_edge_ms=50.0,
                  t_jpeg_encode_ms=5.0, bytes_split=5_000, bytes_jpeg=20_000)
LINK = ConstantTrace(10.0)


def _fleet(n: int, feedback: bool = True, frames: int = 40, fps: float = 2.0, batch_size: int = 1,
           hedge: bool = True, traces=(LINK,)) -> FleetRow:
    config = FleetConfig(COSTS, EdgeConfig(batch_size=batch_size, batch_wait_ms=0.0), fps=fps, frames=frames,
                         controller_factory=lambda c, fb: Controller(c, hedge=hedge, edge_load=fb))
    return simulate_fleet(list(traces), n, config, feedback)


# ------------------------------------------------------------------ the fleet
@pytest.mark.parametrize("trace", [ConstantTrace(10.0), ConstantTrace(0.8)])
def test_one_device_is_the_single_device_simulators_auto(trace):
    single = summarize("x", "auto", simulate(trace, "auto", SimConfig(COSTS, fps=2.0, frames=40)))
    row = _fleet(1, traces=(trace,))
    assert row.mean_e2e_ms == single.mean_e2e_ms  # exactly: the same session, controller and link
    assert row.median_e2e_ms == single.p50_e2e_ms
    assert row.share_local == single.mode_share["local"] and row.share_offload == single.mode_share["offload"]


def test_one_device_with_the_feedback_on_or_off_is_the_same():
    on, off = _fleet(1, True).__dict__, _fleet(1, False).__dict__
    assert on.pop("feedback") and not off.pop("feedback") and on == off


def test_a_slow_edge_queues_and_e2e_rises_with_the_fleet():
    rows = [_fleet(n, feedback=False, frames=30) for n in (1, 6, 12)]
    assert rows[0].median_queue_ms == 0.0
    assert rows[1].median_queue_ms > 0.0 and rows[2].median_queue_ms > rows[1].median_queue_ms
    assert rows[0].mean_e2e_ms < rows[1].mean_e2e_ms < rows[2].mean_e2e_ms
    assert rows[2].edge_utilization > rows[0].edge_utilization


def test_batching_follows_the_curve():
    curve = EdgeCurve({"tail": {1: 1.0, 8: 2.0}, "full": {1: 1.0, 8: 2.0}}, "test")
    assert curve.factor("full", 8) == 2.0 and curve.factor("full", 16) == 4.0
    assert curve.factor("tail", 4) == pytest.approx(1.0 + 3 / 7)
    config = FleetConfig(COSTS, EdgeConfig(curve, batch_size=8, batch_wait_ms=5.0), fps=2.0, frames=30)
    linear = FleetConfig(COSTS, EdgeConfig(EdgeCurve.linear(), batch_size=8, batch_wait_ms=5.0), fps=2.0, frames=30)
    gain, none = (simulate_fleet([LINK], 30, c, False) for c in (config, linear))
    assert gain.mean_batch > 1.5 and gain.median_queue_ms < none.median_queue_ms


def test_under_overload_the_feedback_sends_less_to_the_edge_and_waits_less_there():
    """With the feedback a device sees the queue its results report and stays local; without, each frame given up
    on is taken for a link stall, and the link probes that follow find the link fine, so it tries again."""
    on, off = _fleet(40, True, hedge=False), _fleet(40, False, hedge=False)
    assert on.edge_frames < off.edge_frames
    assert on.median_queue_ms < 0.5 * off.median_queue_ms
    assert on.mean_e2e_ms < off.mean_e2e_ms and on.p95_e2e_ms < off.p95_e2e_ms
    assert on.median_e2e_ms <= off.median_e2e_ms


# ------------------------------------------------------------------ the estimator
def test_edge_load_without_queueing_changes_nothing():
    load = EdgeLoad()
    for t in range(20):
        assert load.observe(0.05, 0.05, float(t)) == 0.05
    assert load.load_s(20.0) == 0.0
    assert load.apply(COSTS, 20.0) is COSTS  # the very object: predictions unchanged to the bit


def test_edge_load_adds_the_median_queue_to_both_remote_modes():
    load = EdgeLoad()
    for t, queue in enumerate([0.1, 0.3, 0.2]):
        assert load.observe(0.05 + queue, 0.05, float(t)) == 0.05  # the compute ratio sees the compute alone
    costs = load.apply(COSTS, 3.0)
    assert costs.edge_ms("split") == pytest.approx(COSTS.t_tail_edge_ms + 200.0)
    assert costs.edge_ms("offload") == pytest.approx(COSTS.t_full_edge_ms + 200.0)
    assert costs.t_full_device_ms == COSTS.t_full_device_ms
    assert load.edge_s(COSTS, "offload", 3.0) == pytest.approx(0.25)


def test_edge_load_expires_so_a_device_comes_back():
    load = EdgeLoad(max_age_s=5.0)
    load.observe(1.05, 0.05, 0.0)
    assert load.load_s(4.9) == pytest.approx(1.0)
    assert load.load_s(5.1) == 0.0 and load.apply(COSTS, 5.1) is COSTS


def test_edge_load_backs_off_when_a_try_after_a_quiet_spell_comes_late():
    load = EdgeLoad(max_age_s=5.0, max_hold_s=20.0)
    load.observe_late(0.09, 0.05, 0.0)  # under twice the compute: noise, not load
    assert load.load_s(0.0) == 0.0 and load.hold_s == 5.0
    for k, t in enumerate([0.0, 30.0, 60.0, 90.0]):  # each a try after the last sample expired
        load.observe_late(2.05, 0.05, t)
        assert load.hold_s == min(5.0 * 2 ** (k + 1), 20.0)
        assert load.load_s(t) == pytest.approx(2.0)
    assert load.load_s(90.0 + 19.9) == pytest.approx(2.0) and load.load_s(90.0 + 20.1) == 0.0
    load.observe_late(2.05, 0.05, 120.0 + 0.5)  # (a late result right after the last: no further doubling)
    load.observe(0.06, 0.05, 121.0)  # in time: the hold is back to the start
    assert load.hold_s == 5.0


def test_edge_load_off_or_without_a_compute_time_is_the_old_behaviour():
    off = EdgeLoad(enabled=False)
    assert off.observe(1.05, 0.05, 0.0) == 1.05  # the ratio sees server_s, queue included, as before
    off.observe_late(3.0, 0.05, 0.0)
    assert off.apply(COSTS, 0.0) is COSTS
    on = EdgeLoad()
    assert on.observe(1.05, 0.0, 0.0) == 1.05 and on.load_s(0.0) == 0.0  # an IO that does not say


def test_the_controller_plans_with_the_queue_its_results_report():
    on, off = Controller(COSTS), Controller(COSTS, edge_load=False)
    for ctl in (on, off):
        ctl.observe_rtt(0.04, 0.0)
        for k in range(6):
            ctl.observe("offload", COSTS.bytes_jpeg, 0.056 + 0.45, 0.45, 0.1 + k, compute_s=0.05)
    queued = on.choose(6.5).predicted_ms["offload"]
    assert queued > COSTS.t_jpeg_encode_ms + COSTS.t_full_edge_ms + 400.0
    assert off.effective_costs().t_full_edge_ms == pytest.approx(450.0)  # the old ratio: (queue + compute) / compute
    assert on.effective_costs().t_full_edge_ms == pytest.approx(50.0)  # compute alone; the queue is the load's
    assert on.choose(60.0).predicted_ms["offload"] < 150.0  # expired: the edge is worth a try again


# ------------------------------------------------------------------ curve files, the knee
def test_edge_curve_formats(tmp_path):
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"batch_ms": {"1": 10, "2": 15, "4": 25}}))
    curve = load_edge_curve(flat)
    assert curve.relative["tail"] == {1: 1.0, 2: 1.5, 4: 2.5} and curve.relative["full"] == curve.relative["tail"]
    parts = tmp_path / "parts.json"
    parts.write_text(json.dumps({"batch_ms": {"tail": {"1": 10, "8": 40}, "full": {"1": 20, "8": 100}}}))
    assert load_edge_curve(parts).relative == {"tail": {1: 1.0, 8: 4.0}, "full": {1: 1.0, 8: 5.0}}
    bench = tmp_path / "curve.json"
    bench.write_text(json.dumps({"model": "m", "points": [{"batch": 1, "fps_1_worker": 20.0},
                                                          {"batch": 4, "fps_1_worker": 40.0}]}))
    assert load_edge_curve(bench).relative["tail"] == {1: 1.0, 4: 2.0}
    for bad in ({"batch_ms": {"2": 10}}, {"batch_ms": {"1": -1}}, {"batch_ms": {"x": 1}}, {"ms": 1}):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="bad.json"):
            load_edge_curve(tmp_path / "bad.json")


def _row(n: int, median: float, feedback: bool = True) -> FleetRow:
    return FleetRow(n, feedback, median, median, median, 0, 0, 0, 0, 0, 0, 0, 1)


def test_knee_interpolates_on_log_n_or_says_it_is_beyond():
    rows = [_row(1, 100.0), _row(10, 150.0), _row(100, 250.0), _row(1000, 300.0)]
    k = knee(rows, True)
    assert k["between"] == [10, 100] and k["knee_devices"] == pytest.approx(10 ** 1.5, rel=1e-3)
    flat = [_row(1, 100.0, False), _row(10, 150.0, False)]
    assert knee(flat, False)["knee_devices"] is None and "beyond" in knee(flat, False)["note"]


# ------------------------------------------------------------------ CLI
def _args(tmp_path: Path, *extra: str) -> list[str]:
    prof = _profile(tmp_path / "p.json", costs=COSTS)
    return ["fleet", "--devices", "1,4", "--trace", "const:10", "--trace", "const:2", "--device-profile", str(prof),
            "--edge-profile", str(prof), "--fps", "2", "--frames", "10", "--out", str(tmp_path / "out"), *extra]


def test_cli_writes_the_csv_the_plot_and_the_knee(tmp_path, capsys):
    assert splitedge(_args(tmp_path, "--edge-curve", str(_curve(tmp_path)))) == 0
    out = tmp_path / "out"
    with open(out / "fleet.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["devices"], r["feedback"]) for r in rows] == [("1", "on"), ("1", "off"), ("4", "on"), ("4", "off")]
    assert {"median_e2e_ms", "p95_e2e_ms", "mean_e2e_ms", "share_local", "share_split", "share_offload",
            "edge_utilization", "median_queue_ms"} <= set(rows[0])
    assert (out / "fleet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    knees = json.loads((out / "knee.json").read_text())
    assert set(knees["knee"]) == {"on", "off"} and knees["edge_curve"].startswith("given")
    printed = capsys.readouterr()
    assert "knee, feedback on" in printed.out and "fleet" in printed.err


def _curve(tmp_path: Path) -> Path:
    (tmp_path / "c.json").write_text(json.dumps({"batch_ms": {"1": 10, "8": 40}}))
    return tmp_path / "c.json"


def test_cli_one_feedback_setting_only(tmp_path):
    assert splitedge(_args(tmp_path, "--no-edge-load-feedback")) == 0
    with open(tmp_path / "out" / "fleet.csv", newline="") as fh:
        assert {r["feedback"] for r in csv.DictReader(fh)} == {"off"}


@pytest.mark.parametrize("change, message", [
    (("--devices", "0,10"), "--devices"),
    (("--devices", "ten"), "--devices"),
    (("--edge-curve", "/nonexistent/c.json"), "does not exist"),
    (("--batch-size", "0"), "--batch-size"),
    (("--batch-wait-ms", "-1"), "--batch-wait-ms"),
    (("--fps", "0"), "--fps"),
    (("--model", "other"), "not --model 'other'"),
    (("--trace", "bogus:1"), "unknown trace kind"),
    (("--frames", "many"), "invalid int value"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, change, message):
    assert splitedge(_args(tmp_path, *change)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("splitedge fleet: error:") and message in err[0]
    assert not (tmp_path / "out" / "fleet.csv").exists()


def test_the_fleet_is_a_splitedge_command():
    from split.dispatch import COMMANDS

    assert COMMANDS["fleet"][0] == "simulators.cli"


def test_the_simulated_edge_batches_as_the_server_does_by_default():
    from edge_server import scheduler
    from simulators import edge_queue

    assert edge_queue.DEFAULT_BATCH_SIZE == scheduler.DEFAULT_BATCH_SIZE
    assert edge_queue.DEFAULT_BATCH_WAIT_MS == scheduler.DEFAULT_BATCH_WAIT_MS

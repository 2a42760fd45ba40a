"""The socket-free simulator and `splitedge simulate`: DESIGN.md's formula, the oracle, the controller, the CLI.

Everything here runs on synthetic profiles and `const:`/`steps:` traces, in a few seconds; the
real traces of ../shared/data are used by one test only, skipped when they are absent.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from mobile_client.controller import Controller
from mobile_client.decision import REASONS
from mobile_client.costs import ModeCosts, predict_latencies
from simulators.experiment import (
    FIXED_POLICIES,
    POLICIES,
    SimConfig,
    expected_fixed_ms,
    simulate,
    split_wins_ranges,
    summarize,
    sweep,
)
from simulators.trace_files import load_trace
from split.dispatch import main as splitedge

from .conftest import shared_data

# A device 10x slower than the edge: local 300 ms; split 40 + 30 ms compute and 10 KB;
# offload 5 + 20 ms compute and a 50 KB JPEG. With a 40 ms RTT (20 ms each way), split beats
# local above ~0.43 Mbit/s and offload below ~7.3 Mbit/s (wire bytes include TCP/IP headers).
COSTS = ModeCosts(t_full_device_ms=300.0, t_head_device_ms=40.0, t_tail_edge_ms=30.0, t_full_edge_ms=20.0,
                  t_jpeg_encode_ms=5.0, bytes_split=10_000, bytes_jpeg=50_000)
DELAY_MS = 20.0


def _mean(trace: str, policy: str, config: SimConfig) -> float:
    return summarize(trace, policy, simulate(load_trace(trace), policy, config)).mean_e2e_ms


# ------------------------------------------------------------------ fixed policies
@pytest.mark.parametrize("mbps", [0.5, 5.0, 50.0])
@pytest.mark.parametrize("mode", FIXED_POLICIES)
def test_fixed_policies_match_the_design_formula_on_a_constant_link(mode, mbps):
    config = SimConfig(COSTS, fps=0.5, frames=8, delay_ms=DELAY_MS)  # 2 s apart: no frame waits
    records = simulate(load_trace(f"const:{mbps}"), mode, config)
    exact = expected_fixed_ms(COSTS, mode, mbps, DELAY_MS)
    for r in records:
        assert r.mode == mode and r.queue_ms == 0.0
        assert r.e2e_ms == pytest.approx(exact, rel=1e-9)
    # DESIGN.md §3 counts payload bytes; the link also carries 40 header bytes per 1460: < 3 % apart.
    design = predict_latencies(COSTS, mbps * 1e6, 2 * DELAY_MS / 1e3)[mode]
    assert records[0].e2e_ms == pytest.approx(design, rel=0.03)


def test_frames_queue_behind_each_other_when_the_device_is_busy():
    config = SimConfig(COSTS, fps=10.0, frames=20)  # local takes 300 ms, frames come every 100 ms
    records = simulate(load_trace("const:1"), "local", config)
    for prev, cur in zip(records, records[1:]):
        assert cur.start_s == pytest.approx(prev.done_s)
    assert [round(r.queue_ms) for r in records[:4]] == [0, 200, 400, 600]
    assert records[-1].e2e_ms == pytest.approx(300 + 19 * 200)


# ------------------------------------------------------------------ oracle and auto
@pytest.mark.parametrize("trace", ["const:0.3", "const:3", "steps:4@0.15,4@8", "steps:3@0.02,3@2,3@40"])
def test_the_oracle_is_never_worse_than_a_fixed_policy(trace):
    config = SimConfig(COSTS, fps=5.0, frames=150)
    oracle = _mean(trace, "oracle", config)
    for mode in FIXED_POLICIES:
        assert oracle <= _mean(trace, mode, config) + 1e-6


@pytest.mark.parametrize("mbps, best", [(0.05, "local"), (1.0, "split"), (100.0, "offload")])
def test_auto_finds_the_best_fixed_policy_on_constant_links(mbps, best):
    config = SimConfig(COSTS, fps=5.0, frames=600)
    trace = load_trace(f"const:{mbps}")
    means = {p: summarize("", p, simulate(trace, p, config)).mean_e2e_ms for p in POLICIES}
    assert min(FIXED_POLICIES, key=means.get) == best
    auto = summarize("", "auto", simulate(trace, "auto", config))
    assert auto.mode_share[best] >= 0.95
    # The price of not knowing the link: one measuring frame at the start, then probes.
    assert means["auto"] <= 1.05 * means[best]
    assert means["oracle"] <= means["auto"] + 1e-6
    if best == "local":
        # A split payload takes 1.7 s here, and every probe is a link probe beside a local frame: free. What is
        # left is the first frame's hedged offload, which cost its JPEG encode (and, the device being
        # overloaded at 5 fps, every later frame waits that much longer too).
        assert means["auto"] <= means["local"] + COSTS.t_jpeg_encode_ms + 1e-6
        # Probing with hedged remote frames instead cost ~2 % here.
        remote_probes = replace(config, controller_factory=lambda c: Controller(c, link_probes=False))
        probed = summarize("", "auto", simulate(trace, "auto", remote_probes))
        assert probed.mean_e2e_ms > means["local"] + 5 * COSTS.t_jpeg_encode_ms


def test_auto_drives_the_live_controller_and_follows_a_step():
    # 40 s at 0.1 Mbit/s (local 300 ms beats split 930 ms), then 60 s at 50 Mbit/s (offload 73 ms).
    config = SimConfig(COSTS, fps=5.0, frames=1000)
    records = simulate(load_trace("steps:40@0.1,60@50"), "auto", config)
    assert {r.reason for r in records} <= REASONS
    # Down: within a few frames. Up: only a probe can tell, and probes back off (5, 10, 20 s, then
    # their 2 % budget: 630 ms extra each, so ~32 s) while they keep finding the link bad.
    late_in_slow = [r.mode for r in records if 10 <= r.start_s % 100 < 40]
    late_in_fast = [r.mode for r in records if 80 <= r.start_s % 100 < 100]
    assert late_in_slow.count("local") >= 0.8 * len(late_in_slow)
    assert late_in_fast.count("offload") >= 0.8 * len(late_in_fast)


def test_device_slowdown_moves_the_choice_to_the_edge():
    from mobile_client.costs import scaled

    fast = SimConfig(COSTS, fps=1.0, frames=200)
    slow = SimConfig(scaled(COSTS, 8.0), fps=0.25, frames=60)
    assert summarize("", "auto", simulate(load_trace("const:0.2"), "auto", fast)).mode_share["local"] > 0.9
    assert summarize("", "auto", simulate(load_trace("const:0.2"), "auto", slow)).mode_share["split"] > 0.9


# ------------------------------------------------------------------ sweep
def test_sweep_finds_where_split_beats_local_and_offload():
    config = SimConfig(COSTS, fps=1.0, frames=10, delay_ms=DELAY_MS)
    rows = sweep([0.1, 0.3, 1.0, 3.0, 10.0, 30.0], FIXED_POLICIES, config)
    [(lo, hi)] = split_wins_ranges(rows, config)
    # Analytic crossings with wire bytes: split == local and split == offload.
    split_wire = (COSTS.bytes_split + 40 * 7) * 8
    jpeg_wire = (COSTS.bytes_jpeg + 40 * 35) * 8
    lo_exact = split_wire / (300.0 - 40 - 30 - 40) / 1e3
    hi_exact = (jpeg_wire - split_wire) / ((40 + 30) - (5 + 20)) / 1e3
    assert lo == pytest.approx(lo_exact, rel=0.01) and hi == pytest.approx(hi_exact, rel=0.01)
    assert split_wins_ranges(rows) == [(1.0, 3.0)]  # without refinement: the grid points


# ------------------------------------------------------------------ CLI
def _profile(path: Path, model: str = "tiny", costs: ModeCosts = COSTS) -> Path:
    path.write_text(json.dumps({
        "model": model, "split_point": "x", "device_slowdown": 1.0, "default_size": "480x640",
        "sizes": {"480x640": {
            "ms": {"full": costs.t_full_device_ms, "head": costs.t_head_device_ms, "tail": costs.t_tail_edge_ms,
                   "jpeg_encode": costs.t_jpeg_encode_ms, "offload_edge": costs.t_full_edge_ms},
            "bytes": {"split": costs.bytes_split, "jpeg": costs.bytes_jpeg}}},
    }))
    return path


def _args(tmp_path: Path, *extra: str, traces: tuple[str, ...] = ("const:2", "steps:3@0.3,3@4")) -> list[str]:
    prof = _profile(tmp_path / "p.json")
    out = ["simulate", "--model", "tiny", "--device-profile", str(prof), "--edge-profile", str(prof),
           "--fps", "5", "--frames", "30", "--out", str(tmp_path / "out"), "--sweep-mbps", "0.1,100,6"]
    for t in traces:
        out += ["--trace", t]
    return out + list(extra)


def test_cli_writes_the_summary_the_sweep_and_both_plots(tmp_path, capsys):
    assert splitedge(_args(tmp_path)) == 0
    out = tmp_path / "out"
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["trace", "policy", "frames", "mean_e2e_ms", "p50_e2e_ms", "p95_e2e_ms", "mean_bytes"]
    assert {(r[0], r[1]) for r in rows[1:]} == {(t, p) for t in ("const:2", "steps:3@0.3,3@4") for p in POLICIES}
    assert all(r[2] == "30" and float(r[3]) > 0 for r in rows[1:])
    with open(out / "sweep.csv", newline="") as fh:
        sweep_rows = list(csv.reader(fh))
    assert sweep_rows[0][0] == "mbps" and len(sweep_rows) == 1 + 6 * len(POLICIES)
    for name in ("sweep.png", "cdf.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "run.json").read_text())["split_wins_mbps"]
    printed = capsys.readouterr()
    assert "auto/oracle" in printed.out and "split beats local and offload" in printed.out
    assert "simulate" in printed.err  # the progress bar


def test_cli_expands_a_trace_directory_skipping_downlinks_and_non_traces(tmp_path, capsys):
    traces = tmp_path / "traces"
    (traces / "cell").mkdir(parents=True)
    (traces / "cell" / "link.up").write_text("".join(f"{ms}\n" for ms in range(1, 400, 2)))
    (traces / "cell" / "link.down").write_text("".join(f"{ms}\n" for ms in range(1, 400)))
    (traces / "bus").write_text("0 1.5\n1 0.8\n2 2.0\n")
    (traces / "README.md").write_text("# not a trace\n")
    assert splitedge(_args(tmp_path, "--policies", "auto,oracle", traces=(str(traces),))) == 0
    with open(tmp_path / "out" / "summary.csv", newline="") as fh:
        labels = {r["trace"] for r in csv.DictReader(fh)}
    assert labels == {"link.up", "bus"}
    assert "skipping" in capsys.readouterr().err


def test_cli_on_the_shared_traces(tmp_path):
    folder = shared_data() / "traces" / "mahimahi"
    if not folder.is_dir():
        pytest.skip(f"no shared traces at {folder} (set SPLITEDGE_DATA to the data folder)")
    assert splitedge(_args(tmp_path, "--policies", "offload,auto,oracle", traces=(str(folder),))) == 0
    with open(tmp_path / "out" / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ups = sorted(p.name for p in folder.glob("*.up"))
    assert sorted({r["trace"] for r in rows}) == ups
    by = {(r["trace"], r["policy"]): float(r["mean_e2e_ms"]) for r in rows}
    assert all(by[(t, "oracle")] <= by[(t, "offload")] + 1e-6 for t in ups)


@pytest.mark.parametrize("change, message", [
    (("--device-profile", "/nonexistent/p.json"), "does not exist"),
    (("--trace", "bogus:1"), "unknown trace kind"),
    (("--trace", "/nonexistent/trace"), "no such trace file"),
    (("--model", "other"), "measured for model 'tiny'"),
    (("--policies", "auto,psychic"), "psychic"),
    (("--sweep-mbps", "100,0.1,5"), "--sweep-mbps"),
    (("--fps", "0"), "--fps"),
    (("--frames", "many"), "invalid int value"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, change, message):
    args = _args(tmp_path)
    flag, value = change
    if flag in args and flag != "--trace":
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert splitedge(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("splitedge simulate: error:") and message in err[0]
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_cli_missing_required_flag_is_one_line(tmp_path, capsys):
    assert splitedge(["simulate", "--trace", "const:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("splitedge simulate: error:") and "--model" in err[0]


def test_split_wins_range_is_open_ended_at_the_sweep_edges():
    config = SimConfig(COSTS, fps=1.0, frames=5)
    rows = sweep([1.0, 2.0], FIXED_POLICIES, config)
    assert split_wins_ranges(rows, config) == [(1.0, 2.0)]  # split wins on the whole grid: edges stay
    assert split_wins_ranges(sweep([20.0, 50.0], FIXED_POLICIES, config), config) == []


def test_cli_policy_names_are_the_experiments():
    from simulators import cli

    assert cli.POLICIES == POLICIES  # repeated in the CLI so that `emulate` starts without torch


# ------------------------------------------------------------------ deadlines and the connect-time RTT
def test_auto_gives_up_on_a_frame_caught_in_an_outage_and_comes_back_when_the_link_does():
    # 20 Mbit/s (offload ~47 ms best), nothing at all for 3 s, 20 Mbit/s again. Unhedged: the deadline path.
    from mobile_client.controller import Controller

    config = SimConfig(COSTS, fps=5.0, frames=150, delay_ms=DELAY_MS,
                       controller_factory=lambda costs: Controller(costs, hedge=False))
    trace = load_trace("steps:10@20,3@0,17@20")
    auto = simulate(trace, "auto", config)
    assert {r.reason for r in auto} <= REASONS
    missed = [r for r in auto if r.reason == "deadline"]
    assert len(missed) == 1  # one frame finds the outage; the next ones are not sent into it
    [m] = missed
    assert m.mode == "local" and m.payload_bytes == COSTS.bytes_jpeg  # sent, then served here
    # Given up at max(2p, p + local) after its start, then the local run: not the 3 s outage.
    assert m.e2e_ms - m.queue_ms < 2 * 300 + 120
    # Local while stalled, back on the edge right after the outage: the abandoned frame's result
    # arrives (at ~13 s) and the next frame probes.
    back = min(r.start_s for r in auto if r.start_s > m.start_s and r.mode != "local")
    assert 13.0 <= back <= 13.6
    assert all(r.mode == "local" for r in auto if m.start_s < r.start_s < 13.0)
    means = {p: summarize("", p, simulate(trace, p, config)).mean_e2e_ms for p in POLICIES}
    assert means["auto"] < min(means[p] for p in FIXED_POLICIES)  # offload waits the outage out
    # What it costs against hindsight is the wait until the deadline, once (at 5 fps a local frame
    # takes 1.5 intervals, so that delay stays in the queue until the link is back).
    oracle = simulate(trace, "oracle", config)
    lag = max(a.done_s - o.done_s for a, o in zip(auto, oracle))
    assert lag <= m.e2e_ms / 1e3 - m.queue_ms / 1e3 - 0.300 + 0.01
    assert all(r.reason != "deadline" for p in FIXED_POLICIES for r in simulate(trace, p, config))


def test_hedged_auto_wins_the_outage_frame_locally_and_its_worst_frame_is_about_a_local_run():
    # The same outage, hedged (the default): the frame sent into it is also run on the idle device and
    # served by that run, so it costs its head plus a local run instead of a deadline wait plus one.
    from mobile_client.controller import Controller
    from mobile_client.costs import hedge_local_ms

    trace = load_trace("steps:10@20,3@0,17@20")
    hedged = SimConfig(COSTS, fps=5.0, frames=150, delay_ms=DELAY_MS)
    auto = simulate(trace, "auto", hedged)
    assert {r.reason for r in auto} <= REASONS and not any(r.reason == "deadline" for r in auto)
    won = [r for r in auto if r.reason == "hedge"]
    assert len(won) == 1
    [h] = won
    assert h.mode == "local" and h.payload_bytes == COSTS.bytes_jpeg  # sent, and served by the device
    assert h.e2e_ms - h.queue_ms == pytest.approx(COSTS.t_jpeg_encode_ms + hedge_local_ms(COSTS, "offload"))
    # Local while stalled, back on the edge once the abandoned payload's result shows the link delivers.
    back = min(r.start_s for r in auto if r.start_s > h.start_s and r.mode != "local")
    assert 13.0 <= back <= 13.6
    # Against hindsight it lags by at most one local run (the one under way when the link comes back,
    # before the late result says so) and the head it ran before the hedged one.
    oracle = simulate(trace, "oracle", hedged)
    lag = max(a.done_s - o.done_s for a, o in zip(auto, oracle))
    assert lag <= (COSTS.t_jpeg_encode_ms + COSTS.t_full_device_ms) / 1e3 + 1e-6
    unhedged = SimConfig(COSTS, fps=5.0, frames=150, delay_ms=DELAY_MS,
                         controller_factory=lambda costs: Controller(costs, hedge=False))
    assert _mean("steps:10@20,3@0,17@20", "auto", hedged) < _mean("steps:10@20,3@0,17@20", "auto", unhedged)


@pytest.mark.parametrize("mode", ["split", "offload"])
def test_hedging_bounds_the_worst_frame_by_about_a_local_run_on_a_link_with_outages(mode):
    # A link that delivers 20 Mbit/s but stops (0.001 Mbit/s) for 4 s every 10 s; one frame a second,
    # so no frame queues behind another: each frame's e2e is what serving it cost.
    from mobile_client.controller import Controller

    spec = "steps:6@20,4@0.001"
    only = (mode, "local")
    costs = ModeCosts(**{**COSTS.__dict__, "t_resume_device_ms": 270.0})  # the original model from the split point
    local_ms = costs.t_full_device_ms
    head_ms = costs.t_head_device_ms if mode == "split" else costs.t_jpeg_encode_ms
    worst = {}
    for hedge in (True, False):
        config = SimConfig(costs, fps=1.0, frames=60, delay_ms=DELAY_MS,
                           controller_factory=lambda c, h=hedge: Controller(c, modes=only, hedge=h))
        records = simulate(load_trace(spec), "auto", config)
        assert max(r.queue_ms for r in records) == 0.0
        worst[hedge] = max(r.e2e_ms for r in records)
        assert any(r.reason == ("hedge" if hedge else "deadline") for r in records)
    # Hedged: the head, then the rest of the model on the device (for split, from the split point's features).
    bound = head_ms + (costs.t_resume_device_ms if mode == "split" else local_ms)
    assert worst[True] <= bound + 1e-6 and worst[True] <= 1.15 * local_ms
    # Unhedged: a frame caught in the outage waits for its deadline, then runs locally: about twice as long.
    assert worst[False] > 1.8 * local_ms


@pytest.mark.parametrize("hedge", [True, False])
def test_the_session_connects_without_holding_the_first_frame(hedge):
    # Three one-byte pings go out at 0, when the first frame is captured, and are answered in the background.
    # Hedged, the first frame measures the link itself (offload: its hedged worst case, 5 + 300 ms, is below
    # split's 40 + 300 ms), costing at most its device part plus a local run; unhedged, a connect probe goes out
    # and the first frame runs locally meanwhile. Either way it is not held.
    from mobile_client.controller import Controller

    seen = []

    class Recording(Controller):
        def observe_rtt(self, rtt_s, now_s):
            seen.append(("rtt", rtt_s, now_s))
            super().observe_rtt(rtt_s, now_s)

        def observe_probe(self, nbytes, total_s, server_s, now_s):
            seen.append(("probe", nbytes, now_s))
            super().observe_probe(nbytes, total_s, server_s, now_s)

    config = SimConfig(COSTS, fps=5.0, frames=3, delay_ms=DELAY_MS,
                       controller_factory=lambda c: Recording(c, hedge=hedge))
    trace = load_trace("const:20")
    records = simulate(trace, "auto", config)
    assert [kind for kind, *_ in seen] == ["rtt", "rtt", "rtt"] + ([] if hedge else ["probe"])
    for _, rtt, _ in seen[:3]:
        assert rtt == pytest.approx(2 * DELAY_MS / 1e3, rel=0.05)  # a tiny message each way: the propagation RTT
    assert records[0].arrival_s == 0.0 and records[0].reason == "no-estimate"
    if hedge:
        assert records[0].mode == "offload"
        assert records[0].e2e_ms <= COSTS.t_jpeg_encode_ms + COSTS.t_full_device_ms
    else:
        _, nbytes, answered = seen[3]  # unhedged, the payload with the fewest bytes (split) measures the link
        assert nbytes == COSTS.bytes_split
        assert answered == pytest.approx(10_280 * 8 / 20e6 + 2 * DELAY_MS / 1e3, rel=0.05)
        assert records[0].mode == "local" and records[0].e2e_ms == pytest.approx(COSTS.t_full_device_ms)
    assert records[1].reason == "best" and records[1].mode != "local"  # the next frame knows the link
    assert [r.arrival_s for r in simulate(trace, "local", config)] == [r.arrival_s for r in records]


def test_the_shipped_detector_meets_both_controller_targets_on_every_shared_trace(tmp_path):
    # The controller's targets (issue 14), as the README measures them: the shipped Faster R-CNN profile, a
    # Raspberry Pi 4 (K = 8), 1 fps, 600 frames, every uplink trace in traces/ (in-sample: the rules were found
    # on them; scripts/controller_eval.py reports the held-out part): auto <= 1.10 x the oracle on each, <= the
    # best fixed policy on 90 % of them and never above 1.02 x it. Deterministic (no jitter or loss), so any change in the figures shows here.
    folder = shared_data() / "traces"
    if not folder.is_dir():
        pytest.skip(f"no shared traces at {folder} (set SPLITEDGE_DATA to the data folder)")
    profile = str(Path(__file__).resolve().parents[1] / "profiles" / "fasterrcnn_mobilenet_v2_320_fpn.json")
    out = tmp_path / "out"
    assert splitedge(["simulate", "--model", "fasterrcnn_mobilenet_v2_320_fpn", "--device-profile", profile,
                      "--edge-profile", profile, "--trace", str(folder), "--policies",
                      "local,split,offload,auto,oracle", "--fps", "1", "--frames", "600", "--device-slowdown", "8",
                      "--sweep-mbps", "0.1,100,4", "--out", str(out)]) == 0
    means: dict[str, dict[str, float]] = {}
    with open(out / "summary.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            means.setdefault(row["trace"], {})[row["policy"]] = float(row["mean_e2e_ms"])
    assert len(means) >= 20
    best_fixed = {trace: min(m["local"], m["split"], m["offload"]) for trace, m in means.items()}
    for trace, m in means.items():
        assert m["auto"] <= 1.10 * m["oracle"], (trace, m)
        assert m["auto"] <= 1.02 * best_fixed[trace], (trace, m)
    assert sum(m["auto"] <= best_fixed[t] + 1e-9 for t, m in means.items()) >= 0.9 * len(means)


def test_the_simulated_connect_is_the_live_clients():
    # The simulator repeats the runtime's connect settings; they must stay the runtime's defaults.
    from mobile_client.runtime import RuntimeOptions
    from simulators.experiment import RTT_PINGS

    assert RTT_PINGS == RuntimeOptions().rtt_pings

"""Real-time camera semantics (DESIGN.md §3): the newest frame, stale ones skipped, one line per input frame."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mobile_client.costs import ModeCosts
from simulators.experiment import SimConfig, simulate, summarize
from simulators.traces import ConstantTrace

ROOT = Path(__file__).resolve().parents[1]
# A device 400 ms per local frame, a fast link: offload 120 ms, split 160 ms; a camera at 5 fps outruns local.
COSTS = ModeCosts(400.0, 60.0, 40.0, 60.0, 10.0, 8_000, 30_000)


def test_a_realtime_camera_skips_stale_frames_and_keeps_results_fresh():
    config = SimConfig(COSTS, fps=5.0, frames=100, realtime=True)
    every = SimConfig(COSTS, fps=5.0, frames=100)
    slow = ConstantTrace(0.05)  # remote hopeless: local (400 ms) serves every frame, the camera gives 200 ms
    records = simulate(slow, "local", config)
    assert [r.frame for r in records] == list(range(100))  # one record per input frame, in order
    served = [r for r in records if not r.skipped]
    assert 0 < len(served) < len(records) and all(r.mode == "local" for r in served)
    summary = summarize("", "local", records)
    # Each served frame waited at most one frame interval: e2e <= interval + service; without real time the queue
    # grows for ever.
    assert summary.p95_e2e_ms <= 200.0 + 400.0 + 1e-6 and summary.served == len(served)
    assert summary.served_fps == pytest.approx(2.5, rel=0.05)  # one every 400 ms
    assert summarize("", "local", simulate(slow, "local", every)).p95_e2e_ms > 10_000


def test_auto_in_real_time_is_bounded_by_its_slowest_mode():
    records = simulate(ConstantTrace(0.05), "auto", SimConfig(COSTS, fps=5.0, frames=200, realtime=True))
    summary = summarize("", "auto", records)
    assert summary.p95_e2e_ms <= 2 * COSTS.t_full_device_ms


def test_splitedge_run_realtime_writes_one_line_per_input_frame(tmp_path):
    out = tmp_path / "rt.jsonl"
    proc = subprocess.run([sys.executable, "-m", "split.dispatch", "run", "--mode", "local", "--source",
                           str(ROOT / "samples" / "coco"), "--out", str(out), "--realtime", "--fps", "30",
                           "--device-slowdown", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame_id"] for r in records] == list(range(len(records))) and len(records) >= 5
    served = [r for r in records if not r["skipped"]]
    assert served and any(r["skipped"] for r in records)  # 30 fps outruns a local run at K = 2
    assert all(r["age_ms"] >= r["e2e_ms"] - 1.0 for r in served)  # capture to result includes the wait
    assert "real time:" in proc.stdout

"""Benchmark: the issue's "a sweep over all traces finishes in under two minutes", checked, printed as JSON.

Runs ``splitedge simulate`` exactly as the README's results do (the shipped Faster R-CNN profile,
K = 8, 1 fps, 600 frames, every policy, every trace in ``../shared/data/traces``, plus the
constant-bandwidth sweep and the plots) ``--repeat`` times in a fresh process each, and prints
the wall times, their median, and its ratio to the 120 s target. A benchmark, not a test: this
machine is shared, so a timed unit test would flake.

    .venv/bin/python bench/simulate_sweep.py [--repeat 3] [--traces ../shared/data/traces]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 120.0
PROFILE = ROOT / "profiles" / "fasterrcnn_mobilenet_v2_320_fpn.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--traces", default=str(ROOT.parent / "shared" / "data" / "traces"))
    args = parser.parse_args()
    traces = Path(args.traces)
    if not traces.is_dir():
        print(f"bench/simulate_sweep.py: {traces}: no trace folder (the shared data is needed)", file=sys.stderr)
        return 2
    times = []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(max(1, args.repeat)):
            cmd = [sys.executable, "-m", "split.dispatch", "simulate", "--model", "fasterrcnn_mobilenet_v2_320_fpn",
                   "--device-profile", str(PROFILE), "--edge-profile", str(PROFILE), "--trace", str(traces),
                   "--policies", "local,split,offload,auto,oracle", "--fps", "1", "--frames", "600",
                   "--device-slowdown", "8", "--out", out]
            started = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            times.append(time.perf_counter() - started)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
        run = json.loads((Path(out) / "run.json").read_text())
    median = statistics.median(times)
    print(json.dumps({
        "benchmark": "simulate_sweep",
        "traces": len(run["first_frame_over_local"]),
        "frames_per_trace": 600,
        "policies": 5,
        "wall_s": [round(t, 2) for t in times],
        "median_wall_s": round(median, 2),
        "simulation_s": run["elapsed_s"],  # inside the process: the runs and the sweep, without start-up and plots
        "target_s": TARGET_S,
        "median_over_target": round(median / TARGET_S, 4),
        "within_target": median < TARGET_S,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

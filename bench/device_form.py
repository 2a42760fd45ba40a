"""A torch device in its form against the plain network: `python bench/device_form.py [--rounds 2]`.

Why: the split region (the constant-uplink bandwidths where split beats both local and offload at
K = 8) rests on the device's head and whole-model times, and this machine's run-to-run noise moves
those by up to a third, so one profile of each form says little. Each round runs `splitedge
profile --threads 1 --repeat 20` of the default recipe once with ``--plain-model`` and once in the
device's form (`split.fusion.device_form`, what `splitedge run` runs), in alternating order, and
then `splitedge simulate`'s constant-uplink sweep (0.01-100 Mbit/s, 41 points, K = 8, 1 fps, the
profile as both device and edge, as the README's command) on each. Printed as one JSON object and
written to ``--out`` (default ``results/device-form/device-form.json``)::

    {"rounds": [{"plain": {"ms": {...}, "head_share": ..., "split_wins_mbps": [[lo, hi]], "decades": ...},
                 "device": {...}}, ...], "median": {...}}

``head_share`` is ``ms.head / ms.full`` (issue 13's device-cost measure); ``decades`` is
log10(hi / lo) of the widest range. The profiles and simulations go to a temporary folder; the
committed profile is the README's command's.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "device-form" / "device-form.json"
MODEL = "ssdlite300_mobilenet_v2_person"
SPLITEDGE = [sys.executable, "-m", "split.dispatch"]


def _call(cmd: list[str]) -> None:
    """Run one splitedge command; on failure, stop with its own error output."""
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"device_form: {cmd[3]} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def _one(form: str, tmp: Path, k: int) -> dict:
    prof = tmp / f"{form}-{k}.json"
    cmd = [*SPLITEDGE, "profile", "--model", MODEL, "--threads", "1", "--repeat", "20", "--out", str(prof)]
    _call(cmd + (["--plain-model"] if form == "plain" else []))
    sim = tmp / f"sim-{form}-{k}"
    _call([*SPLITEDGE, "simulate", "--model", MODEL, "--device-profile", str(prof), "--edge-profile", str(prof),
           "--trace", "const:1", "--policies", "local,split,offload", "--fps", "1", "--frames", "60",
           "--device-slowdown", "8", "--sweep-mbps", "0.01,100,41", "--out", str(sim)])
    p = json.loads(prof.read_text())
    ms = p["sizes"][p["default_size"]]["ms"]
    wins = json.loads((sim / "run.json").read_text())["split_wins_mbps"]
    widest = max((hi / lo for lo, hi in wins), default=1.0)
    row = {"ms": ms, "head_share": round(ms["head"] / ms["full"], 3),
           "split_wins_mbps": [[round(lo, 4), round(hi, 4)] for lo, hi in wins],
           "decades": round(math.log10(widest), 3) if wins else 0.0}
    print(json.dumps({"round": k, "form": form, **row}), file=sys.stderr, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="rounds of one profile per form (alternating order)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if not 1 <= args.rounds <= 10:
        p.error("--rounds must be in 1..10")
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            order = ("plain", "device") if k % 2 == 0 else ("device", "plain")
            rounds.append({form: _one(form, Path(tmp), k) for form in order})
    median = {form: {"head_ms": statistics.median(r[form]["ms"]["head"] for r in rounds),
                     "full_ms": statistics.median(r[form]["ms"]["full"] for r in rounds),
                     "head_share": statistics.median(r[form]["head_share"] for r in rounds),
                     "decades": statistics.median(r[form]["decades"] for r in rounds)}
              for form in ("plain", "device")}
    result = {"model": MODEL, "command": "python bench/device_form.py " + " ".join(argv or sys.argv[1:]),
              "rounds": rounds, "median": median}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

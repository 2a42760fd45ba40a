"""The accuracy constraint on the command line (issue 14, item 5): --modes and --accuracy/--min-accuracy."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from split.cli_util import parse_accuracy, parse_modes

ROOT = Path(__file__).resolve().parents[1]
PROFILE = str(ROOT / "profiles" / "fasterrcnn_mobilenet_v2_320_fpn.json")


def _auto_modes(tmp_path: Path, *flags: str) -> set[str]:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "split.dispatch", "simulate", "--model",
                           "fasterrcnn_mobilenet_v2_320_fpn", "--device-profile", PROFILE, "--edge-profile", PROFILE,
                           "--trace", "steps:20@0.1,20@50", "--policies", "auto", "--fps", "1", "--frames", "40",
                           "--device-slowdown", "8", "--sweep-mbps", "1,10,2", "--out", str(out), *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with open(out / "frames.csv", newline="") as fh:
        return {row["mode"] for row in csv.DictReader(fh)}


def test_auto_uses_only_the_allowed_or_accurate_enough_modes(tmp_path):
    assert _auto_modes(tmp_path) >= {"local", "offload"}
    assert "offload" not in _auto_modes(tmp_path, "--modes", "local,split")
    # The shipped eval: original mAP 0.051, split 0.056, JPEG q90 0.052; at 0.055 only split qualifies, and a
    # frame served locally is the fallback of a remote one (a hedge or a deadline), never a choice.
    assert _auto_modes(tmp_path, "--accuracy", str(ROOT / "results" / "detector-fasterrcnn" / "eval.json"),
                       "--min-accuracy", "0.055") <= {"split", "local"}


def test_bad_mode_flags_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="--modes"):
        parse_modes("local,fast")
    with pytest.raises(ValueError, match="--accuracy"):
        parse_accuracy("local=high")
    assert parse_accuracy(str(ROOT / "results" / "detector-fasterrcnn" / "eval.json"))["split"] == pytest.approx(0.0564, abs=1e-4)

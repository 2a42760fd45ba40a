"""`splitedge run --mode auto` through the link emulator on a trace whose rate steps down and up.

Real server, real emulator (a shaping TCP proxy), real client, all CLI subprocesses on
loopback. The device stands for a 4x slower one, so offload wins on the fast link and local
wins when the link collapses: the controller must leave the remote mode when the rate steps
down and come back when it steps up.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

from tests.conftest import ENV, ROOT, SAMPLES, splitedge

TRACE = "steps:8@20,8@0.05,120@20"  # seconds@Mbps: fast, collapsed, fast again


def _runs(modes: list[str]) -> list[tuple[str, int]]:
    runs: list[tuple[str, int]] = []
    for m in modes:
        if runs and runs[-1][0] == m:
            runs[-1] = (m, runs[-1][1] + 1)
        else:
            runs.append((m, 1))
    return runs


def test_auto_switches_at_the_rate_steps(server, tmp_path):
    emu = subprocess.Popen(splitedge("emulate", "--trace", TRACE, "--listen", "127.0.0.1:0",
                                     "--upstream", server.target, "--delay-ms", "10"),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=ENV)
    try:
        line = emu.stdout.readline()
        m = re.search(r"emulating on (127\.0\.0\.1:\d+)", line)
        assert m, f"emulator did not start: {line}"
        started = time.monotonic()
        out = tmp_path / "auto.jsonl"
        proc = subprocess.run(
            splitedge("run", "--server", m.group(1), "--mode", "auto", "--source", str(SAMPLES), "--loop", "20",
                      "--limit", "110", "--device-slowdown", "4", "--probe-interval", "2", "--timeout", "20",
                      "--out", str(out)),
            capture_output=True, text=True, cwd=ROOT, timeout=300, env=ENV)
        elapsed = time.monotonic() - started
    finally:
        emu.terminate()
        emu.wait(10)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(l) for l in out.read_text().splitlines()]
    assert all(r["error"] is None for r in records)
    assert elapsed > 16, "the run must outlast the collapsed segment"
    steady = [("local" if r["mode"] == "local" else "remote") for r in records if r["reason"] != "probe"]
    runs = _runs(steady)
    print("mode runs:", runs)
    # remote on the fast link, a long local stretch while it is collapsed, remote again after
    first_remote = next(i for i, (m, n) in enumerate(runs) if m == "remote" and n >= 5)
    local = next(i for i, (m, n) in enumerate(runs) if i > first_remote and m == "local" and n >= 5)
    assert any(m == "remote" and n >= 5 for m, n in runs[local + 1:]), runs
    remote_modes = {r["mode"] for r in records if r["mode"] != "local"}
    assert "offload" in remote_modes

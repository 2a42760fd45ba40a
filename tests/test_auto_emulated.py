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
import threading
import time

from tests.conftest import ENV, ROOT, SAMPLES, splitedge

MODEL = "ssdlite320_mobilenet_v3_large"  # what the `server` fixture serves
TRACE = "steps:8@20,8@0.05,120@20"  # seconds@Mbps: fast, collapsed, fast again


def _runs(modes: list[str]) -> list[tuple[str, int]]:
    runs: list[tuple[str, int]] = []
    for m in modes:
        if runs and runs[-1][0] == m:
            runs[-1] = (m, runs[-1][1] + 1)
        else:
            runs.append((m, 1))
    return runs


def run_auto(server, trace: str, out, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """`splitedge run --mode auto` through `splitedge emulate --trace trace`; (the run, its seconds)."""
    emu = subprocess.Popen(splitedge("emulate", "--trace", trace, "--listen", "127.0.0.1:0",
                                     "--upstream", server.target, "--delay-ms", "10"),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=ENV)
    try:
        line = emu.stdout.readline()
        m = re.search(r"emulating on (127\.0\.0\.1:\d+)", line)
        assert m, f"emulator did not start: {line}"
        threading.Thread(target=emu.stdout.read, daemon=True).start()  # its lines per connection: keep the pipe drained
        started = time.monotonic()
        proc = subprocess.run(
            splitedge("run", "--server", m.group(1), "--model", MODEL, "--mode", "auto", "--source", str(SAMPLES),
                      "--device-slowdown", "4", "--probe-interval", "2", "--out", str(out), *args),
            capture_output=True, text=True, cwd=ROOT, timeout=300, env=ENV)
        return proc, time.monotonic() - started
    finally:
        emu.terminate()
        emu.wait(10)


def test_auto_switches_at_the_rate_steps(server, tmp_path):
    out = tmp_path / "auto.jsonl"
    proc, elapsed = run_auto(server, TRACE, out, "--loop", "20", "--limit", "110", "--timeout", "20")
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


STALL = "steps:4@20,60@0"  # seconds@Mbps: a fast link, then nothing gets through


def test_a_hedged_frame_is_served_by_the_device_when_the_link_stalls(server, tmp_path):
    # Frames go to the edge while the link is up; the one in flight when it stops is run on the device
    # meanwhile (hedged), and that run serves it: no deadline wait, about a local run's time.
    out = tmp_path / "hedged.jsonl"
    proc, _ = run_auto(server, STALL, out, "--loop", "7", "--timeout", "30")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(records) >= 35 and all(r["error"] is None and r["detections"] for r in records)
    assert not any(r["reason"] == "deadline" for r in records)  # hedging supersedes the deadline
    remote = [i for i, r in enumerate(records) if r["mode"] != "local"]
    assert len(remote) >= 5, "the link was up for the first seconds"
    # The frame in flight when the link stops is served by its local run (on this shared machine a slow
    # server may also lose a race now and then before that).
    stalled_from = remote[-1] + 1
    first = records[stalled_from]
    assert first["reason"] == "hedge", [(r["mode"], r["reason"]) for r in records]
    assert first["mode"] == "local" and first["fallback"] and first["payload_bytes"] > 0
    # After it, the controller runs locally (a stall). No probe of any kind goes out while that frame's payload is
    # still on its way (it would only queue behind it), so no frame pays for probing a dead link.
    after = records[stalled_from + 1:]
    assert len(after) >= 5 and any(r["reason"] == "stalled" for r in after)
    assert all(r["mode"] == "local" and r["reason"] in ("stalled", "hedge") for r in after)
    assert not any(r["probe_bytes"] for r in after)
    won = [r for r in records if r["reason"] == "hedge"]
    # A hedged frame costs its head plus the device's run: about a local frame, not a deadline plus one.
    local_ms = sorted(r["e2e_ms"] for r in after if r["reason"] == "stalled")
    typical = local_ms[len(local_ms) // 2]
    assert all(r["e2e_ms"] < 1.8 * typical + 100 for r in won), ([r["e2e_ms"] for r in won], typical)

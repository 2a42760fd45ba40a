"""Faults, nothing lost (issue 15, item 4): SIGKILL and restart a real `splitedge serve` during a
60-frame `splitedge run`, then account for every frame in the JSONL.

Every input frame has exactly one line, in order, with no gap and no duplicate; each says which
mode served it; frames while the server is gone are served on the device (``fallback``), and
frames after it is back are served remotely again.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import pytest

from tests.conftest import ENV, ROOT, SAMPLES, ServerProcess, splitedge

MODEL = "ssdlite320_mobilenet_v3_large"
FRAMES = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lines(path) -> list[dict]:
    """The complete lines so far: the client may be half-way through writing the last one."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines() if line.strip()]


def _wait_lines(path, n: int, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(_lines(path)) < n:
        assert proc.poll() is None, "the client exited early"
        assert time.monotonic() < deadline, f"fewer than {n} lines after {timeout} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_and_restart_mid_run_loses_no_frame(tmp_path):
    port = _free_port()
    server = ServerProcess("--model", MODEL, "--no-warmup", "--port", str(port))
    out = tmp_path / "run.jsonl"
    run = subprocess.Popen(splitedge("run", "--server", f"127.0.0.1:{port}", "--model", MODEL, "--mode", "split",
                                     "--source", str(SAMPLES), "--loop", "10", "--limit", str(FRAMES),
                                     "--device-slowdown", "6", "--timeout", "2", "--out", str(out)),
                           cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    restarted = None
    try:
        _wait_lines(out, 8, run)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        killed_after = len(_lines(out))
        _wait_lines(out, killed_after + 4, run)  # served on the device meanwhile
        restarted = ServerProcess("--model", MODEL, "--no-warmup", "--port", str(port))
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, output
    finally:
        for p in (server, restarted):
            if p is not None:
                p.stop()
        if run.poll() is None:
            run.kill()
    lines = _lines(out)
    assert [r["frame_id"] for r in lines] == list(range(FRAMES))  # one per frame, in order, no gap or duplicate
    assert all(r["mode"] in ("local", "split") for r in lines)
    before = lines[:killed_after - 1]
    assert before and all(r["mode"] == "split" and not r["fallback"] and not r["error"] for r in before)
    down = [r for r in lines if r["fallback"]]
    assert len(down) >= 4 and all(r["mode"] == "local" and r["detections"] is not None for r in down)
    last_down = max(r["frame_id"] for r in down)
    back = [r for r in lines if r["frame_id"] > last_down]
    assert back and all(r["mode"] == "split" and not r["fallback"] for r in back), "never returned to split"

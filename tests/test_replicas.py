"""Replicas behind client-side round-robin (issue 16, item 5): two real `splitedge serve` processes behind one
``--server IP:PORT,IP:PORT`` target; the replica holding the device's stream is SIGKILLed mid-run.

Frames reach both replicas (the one killed before, the other after the reconnect, counted from each
server's Prometheus metrics) and every input frame still gets exactly one JSONL line, in order.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import urllib.request

import pytest

from mobile_client.edge_client import channel_target
from tests.conftest import ENV, ROOT, SAMPLES, ServerProcess, splitedge
from tests.test_faults import MODEL, _lines, _wait_lines

FRAMES = 60  # the 6 sample images, 10 times (as tests/test_faults.py)


def _metrics_port(server: ServerProcess) -> int:
    return int(re.search(r"metrics on 127\.0\.0\.1:(\d+)", "".join(server.lines)).group(1))


def _counts(port: int) -> tuple[float, float]:
    """(frames answered OK, streams open) from a server's metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    frames = sum(float(v) for v in re.findall(r'^splitedge_frames_total\{[^}]*code="OK"[^}]*\} (\S+)$', text, re.M))
    streams = float(re.search(r"^splitedge_streams_open (\S+)$", text, re.M).group(1))
    return frames, streams


def test_targets_for_replicas():
    assert channel_target("127.0.0.1:50051") == ("127.0.0.1:50051", [])
    target, options = channel_target("dns:///edge:50051")
    assert target == "dns:///edge:50051" and ("grpc.lb_policy_name", "round_robin") in options
    target, options = channel_target("127.0.0.1:1, 127.0.0.1:2")
    assert target == "ipv4:127.0.0.1:1,127.0.0.1:2" and ("grpc.lb_policy_name", "round_robin") in options
    assert channel_target("[::1]:1,[::1]:2")[0] == "ipv6:[::1]:1,[::1]:2"
    for bad in ("edge:1,edge:2", "127.0.0.1:1,[::1]:2", "127.0.0.1,127.0.0.1:2"):
        with pytest.raises(ValueError, match="--server"):
            channel_target(bad)


@pytest.mark.slow
def test_a_replica_killed_mid_run_loses_no_frame(tmp_path):
    servers = [ServerProcess("--model", MODEL, "--no-warmup", "--metrics-port", "0") for _ in range(2)]
    ports = [_metrics_port(s) for s in servers]
    out = tmp_path / "run.jsonl"
    run = subprocess.Popen(splitedge("run", "--server", ",".join(s.target for s in servers), "--model", MODEL,
                                     "--mode", "split", "--source", str(SAMPLES), "--loop", "10",
                                     "--limit", str(FRAMES), "--device-slowdown", "4", "--timeout", "2",
                                     "--out", str(out)),
                           cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_lines(out, 5, run)
        # The stream sticks to one replica: the one with a stream open and frames answered is the one to kill.
        deadline = time.monotonic() + 30
        while True:
            counts = [_counts(p) for p in ports]
            busy = [i for i, (frames, streams) in enumerate(counts) if streams >= 1 and frames >= 3]
            if busy:
                break
            assert time.monotonic() < deadline, f"no replica holds the stream: {counts}"
            time.sleep(0.05)
        victim, survivor = busy[0], 1 - busy[0]
        served_by_victim = counts[victim][0]
        servers[victim].proc.send_signal(signal.SIGKILL)
        servers[victim].proc.wait(10)
        killed_after = len(_lines(out))
        output, _ = run.communicate(timeout=180)
        assert run.returncode == 0, output
        served_by_survivor = _counts(ports[survivor])[0]
    finally:
        for s in servers:
            s.stop()
        if run.poll() is None:
            run.kill()
    lines = _lines(out)
    assert [r["frame_id"] for r in lines] == list(range(FRAMES))  # one per frame, in order, no gap or duplicate
    assert served_by_victim >= 3 and served_by_survivor >= 3, (served_by_victim, served_by_survivor)
    assert all(r["mode"] == "split" and not r["fallback"] for r in lines[:killed_after - 1])
    assert all(r["mode"] == "local" and r["detections"] is not None for r in lines if r["fallback"])
    assert lines[-1]["mode"] == "split" and not lines[-1]["fallback"], "never went back to a live replica"

"""The real client CLI against the real server CLI, on loopback, in all three modes."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from tests.conftest import ENV, ROOT, SAMPLES, splitedge

RECORD_KEYS = {"frame_id", "source", "mode", "payload_bytes", "head_ms", "network_ms", "server_ms", "e2e_ms",
               "detections"}
MODEL = "ssdlite320_mobilenet_v3_large"  # what the `server` fixture serves


def run_client(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(splitedge("run", *args), capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=ENV)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("mode", ["local", "split", "offload"])
def test_modes_end_to_end(server, tmp_path, mode):
    out = tmp_path / "r.jsonl"
    annotated = tmp_path / "ann"
    proc = run_client("--server", server.target, "--model", MODEL, "--mode", mode,
                      "--source", str(SAMPLES), "--out", str(out),
                      "--limit", "3", "--save-annotated", str(annotated), "--jpeg-quality", "80")
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(out)
    assert [r["frame_id"] for r in records] == [0, 1, 2]
    for r in records:
        assert RECORD_KEYS <= set(r)
        assert r["mode"] == mode and r["error"] is None and not r["fallback"]
        assert r["detections"] and all(len(d["box"]) == 4 for d in r["detections"])
        if mode == "local":
            assert r["payload_bytes"] == 0 and r["server_ms"] == 0
        else:
            assert r["payload_bytes"] > 0 and r["server_ms"] > 0
    assert len(list(annotated.glob("*.jpg"))) == 3
    assert "median e2e ms" in proc.stdout and mode in proc.stdout  # the summary table


def test_split_without_bottleneck_gives_the_local_detections(server, tmp_path):
    results = {}
    for mode in ("local", "split"):
        out = tmp_path / f"{mode}.jsonl"
        proc = run_client("--server", server.target, "--model", "ssdlite320_mobilenet_v3_large_raw", "--mode", mode,
                          "--source", str(SAMPLES), "--out", str(out), "--limit", "2")
        assert proc.returncode == 0, proc.stderr
        results[mode] = read_jsonl(out)
    for local, remote in zip(results["local"], results["split"]):
        assert remote["payload_bytes"] > 40 * 40 * 40 * 4  # raw float32 features
        assert len(local["detections"]) == len(remote["detections"]) > 0
        for a, b in zip(local["detections"], remote["detections"]):
            assert a["label"] == b["label"]
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)
            assert a["box"] == pytest.approx(b["box"], abs=0.02)


def test_unreadable_source_is_exit_2_with_one_line(tmp_path):
    missing = tmp_path / "nope"
    proc = run_client("--model", MODEL, "--mode", "local", "--source", str(missing), "--out", str(tmp_path / "r.jsonl"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "no such file" in lines[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_client("--model", MODEL, "--mode", "local", "--source", str(empty), "--out", str(tmp_path / "r.jsonl"))
    assert proc.returncode == 2 and "no image files" in proc.stderr


def test_unknown_model_is_exit_2(tmp_path):
    proc = run_client("--model", "nope", "--source", str(SAMPLES), "--out", str(tmp_path / "r.jsonl"))
    assert proc.returncode == 2 and "unknown model 'nope'" in proc.stderr


def test_no_server_falls_back_to_local(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "r.jsonl"
    proc = run_client("--server", f"127.0.0.1:{port}", "--model", MODEL, "--mode", "split",
                      "--source", str(SAMPLES), "--out", str(out),
                      "--limit", "2", "--timeout", "2")
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(out)
    assert len(records) == 2
    assert all(r["mode"] == "local" and r["fallback"] and r["detections"] for r in records)
    assert "edge unavailable" in proc.stderr


@pytest.mark.parametrize("name", ["ssdlite320_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large_raw"])
def test_a_hedged_local_run_gives_the_whole_models_outputs(name):
    # What a hedged frame's local run computes, stage by stage: from the split point's features before the
    # bottleneck (split) or from the image (offload), it is the original model, not the bottlenecked one.
    import torch

    from mobile_client.controller import Controller
    from mobile_client.costs import ModeCosts
    from mobile_client.device import to_tensor
    from mobile_client.runtime import DeviceRuntime
    from mobile_client.sources import open_source
    from split.recipes import build

    model, _ = build(name)
    runtime = DeviceRuntime(model, Controller(ModeCosts(1, 1, 1, 1, 1, 1, 1)), None)
    image = to_tensor(next(iter(open_source(str(SAMPLES), 1))).rgb)
    features = []
    hook = model.head.chain.register_forward_hook(lambda _m, _i, out: features.append(out))
    payload = model.encode_message(image)
    hook.remove()
    assert runtime.device.resumable()  # the split head is the original model's own modules
    expected = model.full(image)
    for start in (features[0], None):
        steps = runtime.device.local_steps(image, payload, start)
        n = 0
        with pytest.raises(StopIteration) as stop:
            while True:
                next(steps)
                n += 1
        out = stop.value.value
        assert n > 5  # cancellable between stages
        for key in ("boxes", "labels", "scores"):
            assert torch.allclose(out[key].float(), expected[key].float(), atol=1e-4), key


def test_link_probes_go_beside_local_frames_and_their_answers_reach_the_controller(server):
    # A controller that asks for a link probe with every local frame: the frame is served locally as asked, the
    # probe goes through the real server, and its answer comes back as a bandwidth sample of the probe's size.
    from mobile_client.controller import Controller
    from mobile_client.decision import Decision
    from mobile_client.costs import ModeCosts
    from mobile_client.edge_client import EdgeClient
    from mobile_client.runtime import DeviceRuntime, RuntimeOptions
    from mobile_client.sources import open_source
    from split.recipes import build

    class ProbingController(Controller):
        def choose(self, now_s: float) -> Decision:
            super().choose(now_s)
            return Decision("local", reason="best", probe_bytes=20_000)

        def observe_probe(self, nbytes, total_s, server_s, now_s):
            self.answers.append((nbytes, total_s, server_s, now_s))
            super().observe_probe(nbytes, total_s, server_s, now_s)

    model, _ = build(MODEL)
    # A device 5 s per frame: remote could win whatever the server's Describe says its own times are.
    ctl = ProbingController(ModeCosts(5000, 10, 10, 10, 1, 20_000, 60_000))
    ctl.answers = []
    client = EdgeClient(server.target)
    runtime = DeviceRuntime(model, ctl, client, RuntimeOptions(rtt_pings=1))
    try:
        assert runtime.connect()
        records = [runtime.process(frame) for frame in open_source(str(SAMPLES), 3)]
    finally:
        client.close()
    assert [r["mode"] for r in records] == ["local"] * 3 and all(r["detections"] for r in records)
    assert [r["probe_bytes"] for r in records] == [20_000] * 3
    # First the one-byte RTT ping sent while connecting (an RTT sample, not a probe's), then one probe per frame,
    # each answered while its frame runs and handed over before the next decision. (Hedged, no connect probe:
    # the first frame measures the link itself.)
    assert [a[0] for a in ctl.answers][:2] == [20_000, 20_000]
    assert ctl.estimator.rtt_s() is not None and ctl.estimator.rtt.samples >= 1  # the ping's round trip
    for nbytes, total_s, server_s, now_s in ctl.answers:
        assert 0 < total_s < 5 and 0 <= server_s < total_s and now_s > 0
    assert ctl.estimator.bandwidth_bps() is not None  # the answers became bandwidth samples
    assert not runtime.warnings


def test_a_server_that_refuses_link_probes_turns_them_off_with_a_warning():
    # A server from before link probes answers one as a frame for model '' (NOT_FOUND): the runtime stops asking
    # for them, and the controller probes with remote frames again.
    import time

    from mobile_client.controller import Controller
    from mobile_client.costs import ModeCosts
    from mobile_client.edge_client import PROBE_ID_BASE, LateResult
    from mobile_client.runtime import DeviceRuntime
    from protos import splitedge_pb2 as pb
    from split.recipes import build

    probe_id = PROBE_ID_BASE + 1

    class OldServerClient:
        connected = True

        def take_late(self, timeout_s):
            refused = pb.Result(frame_id=probe_id, code=5, error="unknown model ''; served: x")
            return [LateResult(probe_id, refused, 0.01, time.perf_counter())]

    ctl = Controller(ModeCosts(100, 10, 10, 10, 1, 20_000, 60_000))
    runtime = DeviceRuntime(build(MODEL)[0], ctl, OldServerClient())
    runtime.session._probes[probe_id] = 20_000
    runtime.session._collect()
    assert not ctl.link_probes and ctl.estimator.bandwidth_bps() is None
    assert runtime.warnings == ["the edge refused a link probe (NOT_FOUND: unknown model ''; served: x); "
                                "probing with frames instead"]


def test_a_stream_found_dead_while_running_locally_starts_the_backoff():
    # Link probes are collected, not waited for: the runtime learns of a dead stream from take_late.
    from mobile_client.controller import Controller
    from mobile_client.costs import ModeCosts
    from mobile_client.edge_client import EdgeUnavailable
    from mobile_client.runtime import DeviceRuntime
    from split.recipes import build

    class DeadStreamClient:
        connected, closed = True, False

        def take_late(self, timeout_s):
            raise EdgeUnavailable("127.0.0.1:1: the server closed the stream")

        def close(self):
            self.closed = True

    ctl = Controller(ModeCosts(100, 10, 10, 10, 1, 20_000, 60_000), backoff_jitter=0.0)
    client = DeadStreamClient()
    runtime = DeviceRuntime(build(MODEL)[0], ctl, client)
    runtime.session._collect()
    assert client.closed and ctl.failures == 1
    assert runtime.warnings == ["edge unavailable (127.0.0.1:1: the server closed the stream); local mode, "
                                "retry in 0.5 s"]

"""The Ray Serve backend (issue 16, item 5b; docs/ray.md): `splitedge serve --backend ray --replicas N`.

The slow tests start one real `splitedge serve --backend ray --replicas 2` process, which starts a
local Ray cluster of its own and stops it when the server stops (SIGTERM); its answers are
compared with an in-process server's for the same frames. They skip, with a message, where Ray
Serve is not installed (`pip install -e '.[ray]'`; `make install` does it). The others need no
Ray: the command line's errors, the import rule (importing the edge server never loads Ray), and
how a replica's failures become a frame's error result (a stand-in for the deployment handle).
"""

from __future__ import annotations

import glob
import importlib.util
import re
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
import torch

from edge_server import BatchOptions, ServedModel, ServerOptions
from edge_server.cli import _options, _parser
from edge_server.ray_backend import ModelSpec, RayBackend, RayOptions, RayServedModel, ReplicaError, _Batch, _reply, _Reply
from protos import splitedge_pb2 as pb
from protos import splitedge_pb2_grpc as pb_grpc
from split import PayloadMismatch
from split.images import load_image
from split.recipes import build, default_recipe

from tests.conftest import ENV, ROOT, splitedge
from tests.edge_helpers import InProcessServer

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray Serve is not installed: pip install -e '.[ray]'")
MODEL = default_recipe().name
OK, INVALID_ARGUMENT, NOT_FOUND, INTERNAL = 0, 3, 5, 13


@pytest.fixture(scope="module")
def served() -> ServedModel:
    model, source = build(MODEL)
    return ServedModel(model, source, default_recipe().builder)


@pytest.fixture(scope="module")
def frames(served) -> list[pb.Frame]:
    """Split frames of the sample people, an offload (JPEG) frame, and one for a model not served."""
    model = served.model
    images = [load_image(p) for p in sorted(glob.glob(str(ROOT / "samples" / "people" / "*.jpg")))]
    payloads = [model.encode_message(im) for im in images] + [model.encode_image(images[0], 80)]
    payloads.insert(2, pb.Payload(model="no_such_model"))
    return [pb.Frame(frame_id=i, payload=p) for i, p in enumerate(payloads)]


# -- no Ray needed ------------------------------------------------------------------------------------
def test_replicas_need_the_ray_backend():
    with pytest.raises(ValueError, match="--replicas needs --backend ray"):
        _options(_parser().parse_args(["--replicas", "2"]))
    with pytest.raises(ValueError, match="--replicas must be in"):
        _options(_parser().parse_args(["--backend", "ray", "--replicas", "0"]))
    assert _options(_parser().parse_args(["--backend", "ray", "--replicas", "2"])).batching.batch_size >= 1


def test_the_ray_backend_without_ray_is_one_line_and_exit_2():
    code = ("import sys; sys.modules['ray'] = None; from edge_server.cli import main; "
            "sys.exit(main('serve', ['--backend', 'ray']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("splitedge serve: error: --backend ray needs Ray Serve"), done.stderr


def test_importing_the_edge_server_loads_no_ray():
    code = ("import sys, edge_server, edge_server.cli, edge_server.ray_backend; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


class _FakeDeployment:
    """Stands for `serve.deployment(TailReplica)`: records the options `RayBackend` gives it."""

    def __init__(self) -> None:
        self.options_given: dict = {}

    def options(self, **kw):
        self.options_given = kw
        return self


def test_the_scheduler_keeps_one_batch_in_flight_per_replica_thread():
    """One batch per replica thread (two measured no faster side by side, docs/ray.md): the server's
    scheduler sends that many, and the replicas together admit twice that, so a batch waits in the
    caller only when Serve's router piles more than two per thread on one replica."""
    for replicas, threads in ((1, 2), (2, 1), (3, 4)):
        backend = RayBackend([ModelSpec(MODEL)], RayOptions(replicas=replicas, threads=threads))
        deployment = _FakeDeployment()
        serve = type("Serve", (), {"deployment": staticmethod(lambda cls: deployment)})
        ray = type("Ray", (), {"cluster_resources": staticmethod(lambda: {"CPU": 2.0})})
        backend._deployment(serve, ray)
        sent = backend.server_options(ServerOptions()).batching.workers
        assert sent == backend.workers == replicas * threads
        assert deployment.options_given["num_replicas"] == replicas
        assert deployment.options_given["max_ongoing_requests"] >= threads  # one replica can take all its threads' batches
        assert replicas * deployment.options_given["max_ongoing_requests"] >= 2 * sent
        assert f"{sent} batches in flight" in backend.describe()


def test_a_replica_reports_each_frames_failure_as_its_own():
    assert _reply(PayloadMismatch("cut at x")).error == "mismatch"
    failed = _reply(RuntimeError("out of memory"))
    assert (failed.error, failed.message, failed.outputs) == ("error", "RuntimeError: out of memory", None)
    assert _reply({"scores": torch.ones(1)}).error == ""


@needs_ray
def test_a_replica_serves_the_form_the_server_was_told(frames):
    """A replica builds its own model from a `ModelSpec`: `--plain-model` (edge_form False) must reach it.
    Built here, outside a cluster (`serve.batch` only wraps the method); its answers are the plain model's."""
    from edge_server.ray_backend import ModelSpec, TailReplica

    def norms(replica: TailReplica) -> int:
        return sum(isinstance(m, torch.nn.BatchNorm2d) for m in replica._served.model.tail.chain.modules())

    plain = TailReplica(ModelSpec(MODEL, edge_form=False), threads=1, batch_size=4, batch_wait_s=0.0)
    assert norms(plain) > 0 and norms(TailReplica(ModelSpec(MODEL), threads=1, batch_size=4, batch_wait_s=0.0)) == 0
    reference, _ = build(MODEL)
    payload = frames[0].payload
    want, got = reference.decode_message(payload), plain._served.run(payload)[0]
    assert all(torch.equal(want[k], got[k]) for k in want)


class _Handle:
    """A stand-in for a deployment handle: call n's `_Batch` is ``answer(payloads_bytes, n)``, when its result is read."""

    def __init__(self, answer) -> None:
        self.answer, self.calls = answer, 0

    def remote(self, raw: list[bytes]) -> _Response:
        self.calls += 1
        return _Response(self.answer, raw, self.calls)


class _Response:
    def __init__(self, answer, raw: list[bytes], n: int) -> None:
        self.answer, self.raw, self.n = answer, raw, n

    def result(self, timeout_s: float | None = None) -> _Batch:
        return self.answer(self.raw, self.n)


def _on_handle(served: ServedModel, handle: _Handle) -> RayServedModel:
    return RayServedModel(served.model, served.weights, served.architecture, handle=handle)


def test_a_failure_in_a_replica_is_that_frames_internal_error(served, frames):
    """A call that raises (a replica that died) and a replica's own error: INTERNAL for that frame only;
    a payload mismatch found in the replica: INVALID_ARGUMENT with its message; the stream goes on."""
    good = [f for f in frames if f.payload.model == MODEL][:3]

    def answer(raw: list[bytes], n: int) -> _Batch:
        if n == 2:
            raise RuntimeError("the replica died")
        if n == 3:
            return _Batch([_Reply(None, "error", "RuntimeError: boom")], 1.0)
        if n == 4:
            return _Batch([_Reply(None, "mismatch", "payload codec 'x', this model expects 'y'")], 1.0)
        return _Batch([_Reply(served.model.decode_message(pb.Payload.FromString(r))) for r in raw], 1.0)

    sent = [pb.Frame(frame_id=i, payload=good[i % len(good)].payload) for i in range(5)]
    options = ServerOptions(batching=BatchOptions(batch_size=1, workers=1))  # one call per frame, in order
    with InProcessServer(options, models=[_on_handle(served, _Handle(answer))]) as srv, \
            grpc.insecure_channel(srv.target) as ch:
        results = list(pb_grpc.SplitEdgeStub(ch).Infer(iter(sent), timeout=60))
    assert [r.frame_id for r in results] == list(range(5))
    assert [r.code for r in results] == [OK, INTERNAL, INTERNAL, INVALID_ARGUMENT, OK]
    assert "server log reference" in results[1].error and "boom" not in results[2].error
    assert "payload codec 'x'" in results[3].error


def test_a_batch_sent_to_a_replica_keeps_each_frames_outcome(served, frames):
    """`RayServedModel.run_batch` sends one call per batch; per frame its outputs or its exception."""
    payloads = [f.payload for f in frames if f.payload.model == MODEL][:3]

    def answer(raw: list[bytes], n: int) -> _Batch:
        assert n == 1 and len(raw) == 3  # the batch is one call
        return _Batch([_Reply({"scores": torch.ones(1)}), _Reply(None, "mismatch", "cut at x"),
                       _Reply(None, "error", "boom")], 7.5)

    outs, ms = _on_handle(served, _Handle(answer)).run_batch(payloads)
    assert ms == 7.5 and isinstance(outs[0], dict)
    assert isinstance(outs[1], PayloadMismatch) and "cut at x" in str(outs[1])
    assert isinstance(outs[2], ReplicaError) and "boom" in str(outs[2])


# -- a real Ray cluster ---------------------------------------------------------------------------
class _RayServer:
    """`splitedge serve --backend ray` in its own process; its output read (and drained) by a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(splitedge("serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
                                               "--backend", "ray", *args),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=ENV)
        self.lines: list[str] = []
        self.listening = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.listening.wait(240):
            self.stop()
            pytest.fail("the Ray server did not start:\n" + "".join(self.lines[-40:]))
        line = next(ln for ln in self.lines if "listening on" in ln)
        port, metrics_port = re.search(r"listening on 127\.0\.0\.1:(\d+) .*metrics on 127\.0\.0\.1:(\d+)", line).groups()
        self.target, self.metrics = f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "listening on" in line:
                self.listening.set()

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.poll()


@pytest.fixture(scope="module")
def ray_server():
    if not HAVE_RAY:
        pytest.skip("Ray Serve is not installed: pip install -e '.[ray]'")
    srv = _RayServer("--replicas", "2")
    yield srv
    srv.stop()


def _infer(target: str, frames: list[pb.Frame]) -> list[pb.Result]:
    with grpc.insecure_channel(target) as ch:
        return list(pb_grpc.SplitEdgeStub(ch).Infer(iter(frames), timeout=120))


@needs_ray
@pytest.mark.slow
def test_the_ray_backend_answers_as_the_in_process_server(ray_server, served, frames):
    """Same frames, same results: order, codes, and detections (labels exactly, boxes and scores to
    float tolerance: a batch's outputs equal the one-frame ones to 1e-5, and batches differ by timing)."""
    with InProcessServer(models=[served]) as local:
        expected = _infer(local.target, frames)
    got = _infer(ray_server.target, frames)
    assert [r.frame_id for r in got] == [f.frame_id for f in frames]
    assert [r.code for r in got] == [r.code for r in expected]
    assert got[2].code == NOT_FOUND and got[2].error == expected[2].error  # refused at the door, as in process
    computed = [i for i, r in enumerate(got) if r.code == OK]
    assert len(computed) == len(frames) - 1
    assert any(len(got[i].detections) for i in computed)
    for i in computed:
        a, b = got[i].detections, expected[i].detections
        assert [d.label for d in a] == [d.label for d in b]
        assert [d.score for d in a] == pytest.approx([d.score for d in b], abs=1e-4)
        assert [v for d in a for v in (d.x1, d.y1, d.x2, d.y2)] == \
            pytest.approx([v for d in b for v in (d.x1, d.y1, d.x2, d.y2)], abs=1e-2)
        assert got[i].server_ms > 0


@needs_ray
@pytest.mark.slow
def test_the_ray_backend_batches_frames_from_several_streams(ray_server, frames):
    """Four streams of 8 frames, 4 in flight each, at once: every frame answered OK, in each stream's
    order, and the replicas' @serve.batch ran some frames together (the server's batch histogram)."""
    split_frames = [f for f in frames if f.payload.model == MODEL and f.payload.tensor.codec != "jpeg"]
    streams = [[pb.Frame(frame_id=i, payload=split_frames[i % len(split_frames)].payload) for i in range(8)]
               for _ in range(4)]
    before = _batch_counts(ray_server.metrics)
    outs: list[list[pb.Result]] = [[] for _ in streams]
    threads = [threading.Thread(target=lambda k=k: outs[k].extend(_infer(ray_server.target, streams[k])))
               for k in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    for out in outs:
        assert [r.frame_id for r in out] == list(range(8)) and {r.code for r in out} == {OK}
    frames_run, batches_run = (a - b for a, b in zip(_batch_counts(ray_server.metrics), before))
    assert frames_run == 32 and batches_run < 32, (frames_run, batches_run)


@needs_ray
@pytest.mark.slow
def test_describe_and_a_clean_stop(ray_server):
    """Describe names the model with latencies measured by the replicas; SIGTERM drains, stops the Ray
    cluster the server started, and exits 0 (this test runs last in the module)."""
    with grpc.insecure_channel(ray_server.target) as ch:
        d = pb_grpc.SplitEdgeStub(ch).Describe(pb.DescribeRequest(), timeout=30)
    assert [m.name for m in d.models] == [MODEL] and d.models[0].latency_ms["tail"] > 0
    assert any("scheduling: Ray Serve, 2 replica(s)" in ln for ln in ray_server.lines), ray_server.lines
    started = time.monotonic()
    assert ray_server.stop() == 0, "".join(ray_server.lines[-30:])
    assert time.monotonic() - started < 60


def _batch_counts(url: str) -> tuple[float, float]:
    """(frames, batches) from the server's splitedge_batch_frames histogram."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    total = [sum(float(v) for v in re.findall(rf"^splitedge_batch_frames_{f}{{[^}}]*}} (\S+)$", text, re.M))
             for f in ("sum", "count")]
    return total[0], total[1]

"""The edge's scheduler: batches across streams, per-stream order and bounds, the wait a frame reports.

Batched compute is checked against one-by-one compute on the default recipe and a classifier.
The server tests run a real in-process server on 127.0.0.1; where timing matters, the served
model's batch call is wrapped by a `_Gate` that holds the worker until the test releases it, so
what queues behind it (and so what forms a batch) is decided by the test, not by the machine.
"""

from __future__ import annotations

import glob
import queue
import re
import threading
import time
import urllib.request

import grpc
import pytest
import torch

from edge_server import BatchOptions, Limits, ServedModel, ServerOptions
from edge_server.cli import _options, _parser
from protos import splitedge_pb2 as pb
from protos import splitedge_pb2_grpc as pb_grpc
from split.images import load_image
from split.recipes import build, default_recipe

from tests.conftest import ROOT
from tests.edge_helpers import InProcessServer, served_model

OK = 0


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-5, atol=1e-5), k


@pytest.mark.parametrize("recipe", ["ssdlite300_mobilenet_v2_person", "mobilenet_v2"])
def test_a_batch_decodes_as_its_frames_one_by_one(recipe):
    """Frames of different original sizes, split and offload: `decode_batch` equals `decode_message` each."""
    model, _ = build(recipe)
    images = [load_image(p) for p in sorted(glob.glob(str(ROOT / "samples" / "people" / "*.jpg")))]
    images.append(torch.rand(3, 200, 150, generator=torch.Generator().manual_seed(1)))
    payloads = [model.encode_message(im) for im in images] + [model.encode_image(im, 80) for im in images]
    batched = model.decode_batch(payloads)
    assert len(batched) == len(payloads)
    for p, out in zip(payloads, batched):
        _assert_same(model.decode_message(p), out)


# -- a real server --------------------------------------------------------------------------------
class _Stream:
    """An Infer stream fed from a queue, its results read into another."""

    def __init__(self, channel) -> None:
        self.requests: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        self.call = pb_grpc.SplitEdgeStub(channel).Infer(iter(self.requests.get, None))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for r in self.call:
                self.results.put(r)
        except grpc.RpcError as exc:
            self.results.put(exc)

    def send(self, *frames: pb.Frame) -> None:
        for f in frames:
            self.requests.put(f)

    def next(self, timeout: float = 30) -> pb.Result:
        return self.results.get(timeout=timeout)

    def close(self) -> None:
        self.requests.put(None)


class _Gate:
    """Wraps a served model's `run_batch`: records each batch (size, kind) and, while closed, holds the worker."""

    def __init__(self, served, delay_jpeg_s: float = 0.0) -> None:
        self.real = served.run_batch
        self.opened = threading.Event()
        self.delay_jpeg_s = delay_jpeg_s
        self.started: list[int] = []
        self.finished: list[str] = []

    def __call__(self, payloads):
        self.started.append(len(payloads))
        self.opened.wait(20)
        kind = "jpeg" if payloads[0].tensor.codec == "jpeg" else "tail"
        t0 = time.perf_counter()
        if kind == "jpeg":
            time.sleep(self.delay_jpeg_s)
        outs, _ = self.real(payloads)
        self.finished.append(kind)
        return outs, (time.perf_counter() - t0) * 1e3


@pytest.fixture(scope="module")
def payloads():
    model = served_model().model
    images = [torch.rand(3, 120, 160, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    return [model.encode_message(im) for im in images], model.encode_image(images[0], 75)


@pytest.fixture
def gated(monkeypatch):
    served = served_model()
    gate = _Gate(served)
    monkeypatch.setattr(served, "run_batch", gate)
    return served, gate


def _server(served, batch_size=4, wait_ms=0.0, workers=1, per_stream=4, **options) -> InProcessServer:
    return InProcessServer(ServerOptions(limits=Limits(max_stream_in_flight=per_stream),
                                         batching=BatchOptions(batch_size, wait_ms, workers), **options),
                           models=[served])


def _until(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting")
        time.sleep(0.005)


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert m, f"{name} not in metrics"
    return float(m.group(1))


def test_frames_from_several_streams_form_one_batch(gated, payloads):
    served, gate = gated
    split_payloads, _ = payloads
    with _server(served, batch_size=4, workers=1, metrics_port=0) as srv, grpc.insecure_channel(srv.target) as ch:
        scheduler = srv.server.servicer.scheduler
        streams = [_Stream(ch) for _ in range(5)]
        streams[0].send(pb.Frame(frame_id=0, payload=split_payloads[0]))
        _until(lambda: len(gate.started) == 1)  # the lone frame took the free worker
        for i, s in enumerate(streams[1:], 1):
            s.send(pb.Frame(frame_id=i, payload=split_payloads[i % 3]))
        _until(lambda: scheduler.queued == 4)  # the other four wait behind it, together
        gate.opened.set()
        results = [s.next() for s in streams]
        text = urllib.request.urlopen(f"http://127.0.0.1:{srv.server.metrics_port}/metrics", timeout=10).read().decode()
        for s in streams:
            s.close()
    assert [r.code for r in results] == [OK] * 5 and [r.frame_id for r in results] == list(range(5))
    assert gate.started == [1, 4] and dict(scheduler.batches) == {1: 1, 4: 1}
    assert _metric(text, "splitedge_batch_frames_count") == 2 and _metric(text, "splitedge_batch_frames_sum") == 5
    assert _metric(text, "splitedge_queue_depth") == 0
    batched = results[1:]
    assert len({r.server_ms for r in batched}) == 1  # one batch: one compute time for its four frames
    for r, p in zip(batched, [split_payloads[i % 3] for i in range(1, 5)]):  # equal to the frame computed alone
        alone = served.model.decode_message(p)
        assert len(r.detections) == len(alone["scores"])
        assert [d.score for d in r.detections] == pytest.approx(alone["scores"].tolist(), rel=1e-5, abs=1e-5)


def test_a_stream_keeps_its_order_with_several_in_flight(monkeypatch, payloads):
    """A slow offload frame first, then split frames, a bad frame and a probe: the split frames finish first
    on the second worker, and the results still come in the order sent."""
    served = served_model()
    gate = _Gate(served, delay_jpeg_s=0.5)
    gate.opened.set()
    monkeypatch.setattr(served, "run_batch", gate)
    split_payloads, jpeg = payloads
    bad = pb.Payload()
    bad.CopyFrom(split_payloads[0])
    bad.tensor.shape[1] = 5
    frames = [pb.Frame(frame_id=10, payload=jpeg), pb.Frame(frame_id=11, payload=split_payloads[0]),
              pb.Frame(frame_id=12, payload=bad), pb.Frame(frame_id=13, payload=split_payloads[1]),
              pb.Frame(frame_id=14, probe=b"x"), pb.Frame(frame_id=15, payload=split_payloads[2])]
    with _server(served, batch_size=4, workers=2, per_stream=4) as srv, grpc.insecure_channel(srv.target) as ch:
        results = list(pb_grpc.SplitEdgeStub(ch).Infer(iter(frames), timeout=60))
    assert [r.frame_id for r in results] == [10, 11, 12, 13, 14, 15]
    assert [r.code for r in results] == [OK, OK, grpc.StatusCode.INVALID_ARGUMENT.value[0], OK, OK, OK]
    assert gate.finished[0] == "tail" and "jpeg" in gate.finished  # computed out of order, answered in order
    assert results[1].queue_ms >= 300  # a split frame's wait includes the offload frame ahead of it


def test_a_stream_holds_at_most_its_in_flight_bound(gated, payloads):
    served, gate = gated
    split_payloads, _ = payloads
    with _server(served, batch_size=8, workers=1, per_stream=3) as srv, grpc.insecure_channel(srv.target) as ch:
        servicer = srv.server.servicer
        s = _Stream(ch)
        s.send(*[pb.Frame(frame_id=i, payload=split_payloads[i % 3]) for i in range(10)])
        _until(lambda: servicer._in_flight == 3)
        time.sleep(0.3)  # the other seven stay with the client (HTTP/2 flow control), not in the server
        assert servicer._in_flight == 3 and s.results.empty()
        gate.opened.set()
        results = [s.next() for _ in range(10)]
        s.close()
    assert [r.frame_id for r in results] == list(range(10)) and all(r.code == OK for r in results)
    assert max(gate.started) <= 3  # never more of one stream's frames in the server than its bound


def test_queue_ms_is_the_wait_including_behind_its_own_stream(monkeypatch, payloads):
    """No batching, one worker, each batch made to take >= 150 ms: the third frame of a stream sent at once
    waits for the first two, and says so."""
    served = served_model()
    real = served.run_batch

    def slow(payloads):
        t0 = time.perf_counter()
        time.sleep(0.15)
        outs, _ = real(payloads)
        return outs, (time.perf_counter() - t0) * 1e3

    monkeypatch.setattr(served, "run_batch", slow)
    split_payloads, _ = payloads
    frames = [pb.Frame(frame_id=i, payload=split_payloads[i]) for i in range(3)]
    with _server(served, batch_size=1, workers=1) as srv, grpc.insecure_channel(srv.target) as ch:
        t0 = time.perf_counter()
        results = list(pb_grpc.SplitEdgeStub(ch).Infer(iter(frames), timeout=60))
        wall_ms = (time.perf_counter() - t0) * 1e3
    assert all(r.code == OK and r.server_ms >= 150 for r in results)
    assert results[0].queue_ms < 100
    assert results[1].queue_ms >= 0.9 * results[0].server_ms
    assert results[2].queue_ms >= 0.9 * (results[0].server_ms + results[1].server_ms)
    assert results[2].queue_ms + results[2].server_ms <= wall_ms


def test_a_probe_waits_for_its_streams_earlier_frames_only(gated, payloads):
    served, gate = gated
    split_payloads, _ = payloads
    with _server(served) as srv, grpc.insecure_channel(srv.target) as ch:
        busy, other = _Stream(ch), _Stream(ch)
        busy.send(pb.Frame(frame_id=1, payload=split_payloads[0]), pb.Frame(frame_id=2, probe=b"x"))
        _until(lambda: len(gate.started) == 1)
        other.send(pb.Frame(frame_id=7, probe=b"x"))  # a stream with nothing in flight: answered at once
        assert other.next(timeout=5).frame_id == 7
        time.sleep(0.3)
        assert busy.results.empty()  # the probe does not overtake the frame ahead of it
        gate.opened.set()
        first, probe = busy.next(), busy.next()
        for s in (busy, other):
            s.close()
    assert (first.frame_id, first.code) == (1, OK)
    assert (probe.frame_id, probe.code, probe.server_ms, len(probe.detections)) == (2, OK, 0, 0)
    assert probe.queue_ms >= 250


def test_frames_of_a_stream_that_went_away_are_not_computed(gated, payloads):
    served, gate = gated
    split_payloads, _ = payloads
    with _server(served, batch_size=1, workers=1) as srv, grpc.insecure_channel(srv.target) as ch:
        servicer = srv.server.servicer
        s = _Stream(ch)
        s.send(*[pb.Frame(frame_id=i, payload=split_payloads[0]) for i in range(4)])
        _until(lambda: servicer._in_flight == 4 and len(gate.started) == 1)
        s.call.cancel()
        _until(lambda: servicer.streams_open == 0)
        gate.opened.set()
        _until(lambda: servicer._in_flight == 0 and servicer.scheduler.queued == 0)
        time.sleep(0.2)
    assert gate.started == [1]  # the three queued behind the one computing were dropped


def test_batch_size_one_is_no_batching(gated, payloads):
    served, gate = gated
    split_payloads, _ = payloads
    with _server(served, batch_size=1, workers=1) as srv, grpc.insecure_channel(srv.target) as ch:
        streams = [_Stream(ch) for _ in range(4)]
        for i, s in enumerate(streams):
            s.send(pb.Frame(frame_id=i, payload=split_payloads[i % 3]))
        _until(lambda: srv.server.servicer._in_flight == 4)
        gate.opened.set()
        results = [s.next() for s in streams]
        for s in streams:
            s.close()
        assert dict(srv.server.servicer.scheduler.batches) == {1: 4}
    assert gate.started == [1, 1, 1, 1] and [r.code for r in results] == [OK] * 4
    for r, i in zip(results, range(4)):
        alone = served.model.decode_message(split_payloads[i % 3])
        assert [d.score for d in r.detections] == pytest.approx(alone["scores"].tolist(), rel=1e-5, abs=1e-5)


def test_serve_flags_set_the_scheduler():
    o = _options(_parser().parse_args(["--batch-size", "16", "--batch-wait-ms", "2.5", "--workers", "3",
                                       "--max-stream-in-flight", "2"]))
    assert o.batching == BatchOptions(16, 2.5, 3) and o.limits.max_stream_in_flight == 2
    assert _options(_parser().parse_args([])).batching == BatchOptions()
    for bad in (["--batch-size", "0"], ["--batch-wait-ms", "-1"], ["--workers", "-1"], ["--max-stream-in-flight", "0"]):
        with pytest.raises(ValueError, match=bad[0]):
            _options(_parser().parse_args(bad))


def test_the_default_recipe_is_served_in_batches():
    """The default recipe (its TF-ported transform has one square size) passes validation and is batched."""
    model, source = build(default_recipe().name)
    served = ServedModel(model, source, default_recipe().builder)
    images = [load_image(p) for p in sorted(glob.glob(str(ROOT / "samples" / "people" / "*.jpg")))]
    frames = [pb.Frame(frame_id=i, payload=model.encode_message(im)) for i, im in enumerate(images)]
    frames.append(pb.Frame(frame_id=len(frames), payload=model.encode_image(images[0], 80)))
    with _server(served, batch_size=4, wait_ms=200.0, workers=1) as srv, grpc.insecure_channel(srv.target) as ch:
        results = list(pb_grpc.SplitEdgeStub(ch).Infer(iter(frames), timeout=60))
        batches = dict(srv.server.servicer.scheduler.batches)
    assert [r.code for r in results] == [OK] * len(frames), [r.error for r in results]
    assert batches == {3: 1, 1: 1}  # the three split frames waited for each other; the offload frame alone
    for r, f in zip(results, frames):
        alone = model.decode_message(f.payload)
        assert [d.score for d in r.detections] == pytest.approx(alone["scores"].tolist(), rel=1e-5, abs=1e-5)

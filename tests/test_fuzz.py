"""Property-based fuzzing (issue 15, item 2): hostile Frames at a real in-process grpc.aio server, and
random bytes at every codec's decoder.

The claims checked on every example:

* the server answers every message with one result, in order, with a code from the protocol's set
  (never ``INTERNAL``: each failure is one validation foresaw), the stream stays up, and health
  stays ``SERVING``; a message that takes more than 30 s is a hang;
* a decoder returns a tensor or raises ``ValueError`` (``CodecError`` is one), never anything else;
* memory: the process's peak RSS grows by less than ``RSS_BOUND_MB`` over the whole run (the
  server's steady state plus one legitimate frame; a JPEG header claiming 16000 x 16000 px cost
  1.4 GB before validation).

`make test` runs a few hundred examples (``FUZZ_EXAMPLES``, default 100 per property);
`make fuzz` runs 10,000 per property (``-m fuzz``).
"""

from __future__ import annotations

import math
import os
import queue
import threading

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bottlenecks import CODEC_NAMES, EncodedTensor, get_codec
from edge_server.validation import jpeg_size
from protos import splitedge_pb2 as pb
from split import PayloadMismatch

from tests.edge_helpers import MODEL, InProcessServer, reset_peak_rss, rss_mb, served_model
from tests.test_validation import jpeg_claiming

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
RSS_BOUND_MB = 300
CODES = {c.value[0] for c in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)}
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
_STOP = object()


class Stream:
    """One long-lived Infer stream over raw bytes: send a message, read its result (30 s: else a hang)."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 16 * 2**20)])
        self.requests: queue.Queue = queue.Queue()
        infer = self.channel.stream_stream("/splitedge.v1.SplitEdge/Infer", request_serializer=None,
                                           response_deserializer=pb.Result.FromString)
        self.call = infer(iter(self.requests.get, _STOP))
        self.results: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for r in self.call:
                self.results.put(r)
        except grpc.RpcError as exc:
            self.results.put(exc)

    def send(self, raw: bytes) -> pb.Result:
        self.requests.put(raw)
        result = self.results.get(timeout=30)
        assert isinstance(result, pb.Result), f"the stream ended: {result}"
        return result

    def healthy(self) -> bool:
        check = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        return check.status == health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        self.requests.put(_STOP)
        self.channel.close()


@pytest.fixture(scope="module")
def fuzz_server():
    with InProcessServer() as srv:
        stream = Stream(srv.target)
        yield srv, stream
        stream.close()


@pytest.fixture(scope="module")
def seeds():
    model = served_model().model
    image = torch.rand(3, 120, 160, generator=torch.Generator().manual_seed(2))
    return model.encode_message(image), model.encode_image(image, 75)


@pytest.fixture(scope="module")
def memory(fuzz_server, seeds):
    """Peak RSS over every fuzz test in this module, from after one legitimate frame of each kind."""
    _, stream = fuzz_server
    for i, p in enumerate(seeds):
        assert stream.send(pb.Frame(frame_id=i, payload=p).SerializeToString()).code == 0
    reset_peak_rss()
    start = rss_mb(field="VmHWM")
    yield lambda: rss_mb(field="VmHWM") - start


sizes = st.one_of(st.integers(-3, 5000), st.sampled_from([0, 320, 2**31 - 1, -2**31, 16000]))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1e300, 5e-324]))
strings = st.one_of(st.sampled_from(["", "uint8", "float32", "float16", "jpeg", "int64", MODEL,
                                     "backbone.features.0.6", "no_such_model"]), st.text(max_size=20))


def _set_size(size: pb.Size, hw) -> None:
    size.height, size.width = hw


@st.composite
def mutated_payloads(draw, seeds):
    """A valid split or offload payload with a few fields changed to hostile values."""
    msg = pb.Payload()
    msg.CopyFrom(seeds[draw(st.integers(0, 1))])
    for _ in range(draw(st.integers(1, 4))):
        field = draw(st.sampled_from(["original_size", "split_size", "shape", "data", "codec", "scale", "zero_point",
                                      "model", "split_point", "header"]))
        if field.endswith("_size"):
            _set_size(getattr(msg, field), (draw(sizes), draw(sizes)))
        elif field == "shape":
            del msg.tensor.shape[:]
            msg.tensor.shape.extend(draw(st.lists(st.one_of(sizes, st.integers(-2**63, 2**63 - 1)), max_size=6)))
        elif field == "data":
            data = msg.tensor.data
            cut = draw(st.integers(0, len(data)))
            msg.tensor.data = draw(st.sampled_from([data[:cut], data + draw(st.binary(max_size=64)),
                                                    data[:cut] + draw(st.binary(min_size=1, max_size=64))
                                                    + data[cut + 1:]]))
        elif field == "codec":
            setattr(msg.tensor, field, draw(strings))
        elif field in ("scale", "zero_point"):
            setattr(msg.tensor, field, draw(floats))
        elif field == "header":  # a JPEG that claims another size
            msg.tensor.data = jpeg_claiming(draw(st.integers(1, 65535)), draw(st.integers(1, 65535)))
        else:
            setattr(msg, field, draw(strings))
    return msg


def _check(result: pb.Result, frame_id: int | None) -> None:
    assert result.code in CODES, f"code {result.code}: {result.error}"
    if frame_id is not None:
        assert result.frame_id == frame_id
    if result.code:
        assert result.error.startswith(f"frame {result.frame_id}: ")


@pytest.mark.parametrize("kind", ["mutated", "bytes", "bitflip"])
def test_hostile_frames_get_a_result_and_the_stream_goes_on(fuzz_server, seeds, memory, kind):
    _, stream = fuzz_server
    good = [pb.Frame(frame_id=7, payload=p).SerializeToString() for p in seeds]

    @FUZZ
    @given(data=st.data())
    def run(data):
        if kind == "mutated":
            frame_id = data.draw(st.integers(0, 2**64 - 1))
            raw = pb.Frame(frame_id=frame_id, payload=data.draw(mutated_payloads(seeds))).SerializeToString()
        elif kind == "bytes":
            frame_id, raw = None, data.draw(st.binary(max_size=4096))
        else:
            frame_id, raw = None, bytearray(good[data.draw(st.integers(0, 1))])
            for _ in range(data.draw(st.integers(1, 8))):
                raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
            raw = bytes(raw)
        _check(stream.send(raw), frame_id)

    run()
    assert stream.send(good[0]).code == 0 and stream.healthy()
    grew = memory()
    assert grew < RSS_BOUND_MB, f"peak RSS grew by {grew:.0f} MiB"


def _encoded(draw, codec: str) -> EncodedTensor:
    shape = tuple(draw(st.lists(st.one_of(st.integers(-4, 64), st.integers(-2**63, 2**63 - 1)), max_size=5)))
    if codec == "jpeg" and draw(st.booleans()):
        data = jpeg_claiming(draw(st.integers(1, 2048)), draw(st.integers(1, 2048)))
        data = data[:draw(st.integers(0, len(data)))] + draw(st.binary(max_size=64))
    else:
        data = draw(st.binary(max_size=4096))
    return EncodedTensor(codec, draw(strings), shape, data, draw(floats), draw(floats))


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_decoders_raise_value_errors_on_random_bytes(codec):
    decoder = get_codec(codec)
    reset_peak_rss()
    start = rss_mb(field="VmHWM")

    @FUZZ
    @given(data=st.data())
    def run(data):
        enc = _encoded(data.draw, codec)
        try:
            out = decoder.decode(enc)
        except ValueError:
            return
        assert isinstance(out, torch.Tensor)
        if codec == "uint8" and out.numel() and math.isfinite(enc.scale) and math.isfinite(enc.zero_point):
            assert out.dtype == torch.float32

    run()
    assert rss_mb(field="VmHWM") - start < RSS_BOUND_MB


@FUZZ
@given(data=st.binary(max_size=2048))
def test_jpeg_header_reader_reads_or_refuses(data):
    try:
        h, w = jpeg_size(data)
    except PayloadMismatch:
        return
    assert 0 < h < 65536 and 0 < w < 65536


@FUZZ
@given(h=st.integers(1, 65535), w=st.integers(1, 65535))
def test_jpeg_header_reader_reads_what_opencv_reads(h, w):
    data = jpeg_claiming(h, w)
    assert jpeg_size(data) == (h, w)
    if h * w <= 64 * 64:
        img = cv2_decode(data)
        assert img is None or img.shape[:2] == (h, w)


def cv2_decode(data: bytes):
    import cv2

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


pytestmark = pytest.mark.fuzz

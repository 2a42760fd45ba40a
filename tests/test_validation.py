"""Validation at the door (issue 15): each hole found in the server, reproduced against the real server.

Every test here sends what an attacker would to the `splitedge serve` subprocess of `conftest.server`
and checks that the frame is refused, naming the field, before anything is allocated or computed
from the number it carries, and that the stream and the server go on.
"""

from __future__ import annotations

import time

import cv2
import grpc
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_server.validation import ModelLimits
from protos import splitedge_pb2 as pb
from protos import splitedge_pb2_grpc as pb_grpc
from split.recipes import build

from tests.edge_helpers import rss_mb

MODEL = "ssdlite320_mobilenet_v3_large"
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def jpeg_claiming(height: int, width: int) -> bytes:
    """A tiny real JPEG whose frame header (SOF0) is rewritten to claim `height` x `width`."""
    ok, buf = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 50])
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@pytest.fixture(scope="module")
def channel(server):
    ch = grpc.insecure_channel(server.target)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def payloads():
    model = build(MODEL)[0]
    image = torch.rand(3, 120, 160, generator=torch.Generator().manual_seed(1))
    return model.encode_message(image), model.encode_image(image, 75)


def _copy(payload: pb.Payload) -> pb.Payload:
    out = pb.Payload()
    out.CopyFrom(payload)
    return out


def _infer(channel, payloads: list[pb.Payload], timeout: float = 60) -> list[pb.Result]:
    stub = pb_grpc.SplitEdgeStub(channel)
    return list(stub.Infer(iter(pb.Frame(frame_id=i, payload=p) for i, p in enumerate(payloads)), timeout=timeout))


def test_jpeg_bomb_is_refused_from_its_header_before_decoding(channel, server, payloads):
    """Hole 1: a 16000 x 16000 px claim in a few hundred bytes made cv2.imdecode allocate ~1.4 GB."""
    _, jpeg = payloads
    bomb = _copy(jpeg)
    bomb.tensor.data = jpeg_claiming(16000, 16000)
    assert len(bomb.tensor.data) < 1000
    before = rss_mb(server.proc.pid, "VmHWM")
    results = _infer(channel, [bomb, bomb, jpeg])
    grew = rss_mb(server.proc.pid, "VmHWM") - before
    assert grew < 200, f"the server's peak memory grew by {grew:.0f} MiB"
    assert [r.code for r in results] == [INVALID, INVALID, 0]
    assert "jpeg" in results[0].error and "16000" in results[0].error and "resizes" in results[0].error


@pytest.mark.parametrize("height,width", [(4096, 4096), (2000, 320)])
def test_claimed_batch_sizes_are_not_read(channel, server, payloads, height, width):
    """Hole 2: a claimed batch_size made the head run on zeros of that size before any shape check.
    Protocol 3 sends none (the edge computes it from original_size): a sender that still writes the
    old fields 5 and 6 (image_size, batch_size) gets its frame run at the model's own sizes."""
    split_payload, _ = payloads
    claim = pb.Size(height=height, width=width).SerializeToString()
    stale = pb.Payload.FromString(split_payload.SerializeToString() + b"".join(
        bytes([field << 3 | 2, len(claim)]) + claim for field in (5, 6)))  # kept as unknown fields
    assert stale.ByteSize() == split_payload.ByteSize() + 2 * (2 + len(claim))
    before = rss_mb(server.proc.pid, "VmHWM")
    t0 = time.perf_counter()
    results = _infer(channel, [stale, split_payload])
    took, grew = time.perf_counter() - t0, rss_mb(server.proc.pid, "VmHWM") - before
    assert took < 5.0 and grew < 200, f"{took:.1f} s, the server's peak memory grew by {grew:.0f} MiB"
    assert [r.code for r in results] == [0, 0]
    assert list(results[0].detections) == list(results[1].detections)


def test_a_message_that_does_not_parse_fails_that_frame_only(channel, payloads):
    """Hole 3: a message that is not a Frame ended the whole stream (UNKNOWN, protobuf DecodeError)."""
    split_payload, _ = payloads
    raw = channel.stream_stream("/splitedge.v1.SplitEdge/Infer", request_serializer=None,
                                response_deserializer=pb.Result.FromString)
    good = pb.Frame(frame_id=1, payload=split_payload).SerializeToString()
    frame_id_then_garbage = pb.Frame(frame_id=2).SerializeToString() + b"\x12\xff\xff\xff\xff\x0f"
    results = list(raw(iter([good, b"\xff\xff\xff", frame_id_then_garbage,
                             pb.Frame(frame_id=4, payload=split_payload).SerializeToString()]), timeout=60))
    assert [r.code for r in results] == [0, INVALID, INVALID, 0]
    assert [r.frame_id for r in results] == [1, 0, 2, 4]  # what could be read of a broken message's id
    assert "does not parse" in results[1].error


@pytest.mark.parametrize("field,value", [("zero_point", float("nan")), ("zero_point", float("inf")),
                                         ("zero_point", -1e300), ("scale", float("nan"))])
def test_quantization_parameters_must_be_finite(channel, payloads, field, value):
    """Hole 3: zero_point was never checked (NaN or Inf went into the tail)."""
    split_payload, _ = payloads
    bad = _copy(split_payload)
    setattr(bad.tensor, field, value)
    results = _infer(channel, [bad, split_payload])
    assert [r.code for r in results] == [INVALID, 0]
    assert field in results[0].error


@pytest.mark.parametrize("kind,mutate,match", [
    ("split", lambda m: m.tensor.shape.extend([1] * 1000), "tensor shape"),
    ("split", lambda m: m.tensor.shape.__setitem__(2, 2**62), "tensor shape"),
    ("split", lambda m: setattr(m.tensor, "data", m.tensor.data + b"\0"), "bytes"),
    ("split", lambda m: setattr(m.original_size, "height", -5), "original_size"),
    ("split", lambda m: setattr(m.split_size, "height", 2**31 - 1), "split_size"),
    ("split", lambda m: setattr(m.tensor, "codec", "jpeg"), "jpeg"),
    ("offload", lambda m: setattr(m.tensor, "data", jpeg_claiming(320, 300)), "resizes original_size"),
    ("offload", lambda m: setattr(m.tensor, "data", b"\x89PNG\r\n\x1a\n" + bytes(100)), "not a JPEG"),
    ("offload", lambda m: m.tensor.shape.__setitem__(0, 1), "tensor shape"),
    ("offload", lambda m: setattr(m.original_size, "height", 5000), "original_size"),
])
def test_payload_fields_are_checked_exactly(channel, payloads, kind, mutate, match):
    good = payloads[0] if kind == "split" else payloads[1]
    bad = _copy(good)
    mutate(bad)
    results = _infer(channel, [bad, good])
    assert [r.code for r in results] == [INVALID, 0]
    assert match in results[0].error


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(h=st.integers(1, 2000), w=st.integers(1, 2000))
def test_sizes_follow_the_transform_exactly(h, w):
    """ModelLimits' arithmetic equals what torchvision's transform does, for a resizing (not fixed) transform."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    transform = GeneralizedRCNNTransform(320, 640, [0.5] * 3, [0.5] * 3, size_divisible=32).eval()
    limits = ModelLimits("m", "x", "uint8", 3, 0, min_size=320, max_size=640, size_divisible=32)
    image = limits.image_size((h, w))
    if min(image) < 1:  # the transform itself cannot resize this one
        return
    images, _ = transform([torch.zeros(3, h, w)])
    assert tuple(images.image_sizes[0]) == image
    assert tuple(images.tensors.shape[-2:]) == limits.batch_size(image)


@pytest.mark.parametrize("recipe", [MODEL, "fasterrcnn_mobilenet_v2_320_fpn", "mobilenet_v2"])
def test_what_the_device_sends_passes(recipe):
    """The device's own payloads, split and offload, for frames of odd sizes, pass the door."""
    from edge_server.validation import check_payload

    model = build(recipe)[0]
    limits = ModelLimits.of(model)
    for i, (h, w) in enumerate([(120, 160), (333, 500), (480, 640), (1000, 37)]):
        image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(i))
        check_payload(model.encode_message(image), limits)
        check_payload(model.encode_image(image, 90), limits)

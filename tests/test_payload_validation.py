"""A payload that does not fit the model is rejected with a message naming the mismatch."""

import pytest
import torch

from protos import splitedge_pb2 as pb
from split import PayloadMismatch
from split.recipes import build


@pytest.fixture(scope="module")
def model():
    return build("ssdlite320_mobilenet_v3_large")[0]


@pytest.fixture(scope="module")
def good(model):
    return model.encode_message(torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0)))


def _bad(good, mutate):
    msg = pb.Payload()
    msg.CopyFrom(good)
    mutate(msg)
    return msg


@pytest.mark.parametrize("mutate,match", [
    (lambda m: setattr(m, "model", "resnet50"), "payload is for model 'resnet50'"),
    (lambda m: setattr(m, "split_point", "backbone.features.0.3"), "this model splits at 'backbone.features.0.6'"),
    (lambda m: setattr(m.tensor, "codec", "float16"), "payload codec 'float16', this model expects 'uint8'"),
    (lambda m: m.tensor.shape.__setitem__(1, 6), r"tensor shape \[1, 6, 40, 40\].*expects \[1, 3, 40, 40\]"),
    (lambda m: setattr(m.tensor, "data", m.tensor.data[:10]), "needs 4800 bytes, got 10"),
    (lambda m: setattr(m.tensor, "scale", 0.0), "scale must be a positive"),
    (lambda m: setattr(m.split_size, "height", 48),
     r"split_size \[48, 40\] does not match original_size \[96, 128\] \(padded batch \[320, 320\]\): expected \[40, 40\]"),
    (lambda m: setattr(m.original_size, "width", 0), r"original_size \[96, 0\] is outside"),
])
def test_mismatch_is_named(model, good, mutate, match):
    with pytest.raises(PayloadMismatch, match=match):
        model.decode_message(_bad(good, mutate))


def test_good_payload_decodes(model, good):
    assert model.decode_message(good)["boxes"].shape[-1] == 4


def test_the_sizes_after_the_resize_are_the_models_not_the_senders(model, good):
    """Protocol 3 sends no image or batch size: a sender that still writes the old fields 5 and 6
    (here claiming a 4000 x 4000 batch) is read as if it had not, and gets the same result."""
    big = pb.Size(height=4000, width=4000).SerializeToString()
    stale = good.SerializeToString() + b"".join(bytes([field << 3 | 2, len(big)]) + big for field in (5, 6))
    want = model.decode_message(good)
    got = model.decode(stale)
    assert torch.equal(got["boxes"], want["boxes"]) and torch.equal(got["scores"], want["scores"])


def test_garbage_bytes(model):
    with pytest.raises(PayloadMismatch, match="not a splitedge.v1.Payload"):
        model.decode(b"\xff\xff\xff")

"""Codec output to wire messages and back: the one conversion, for the torch and the ONNX device.

Torch-free, so that `split.api` (torch) and `mobile_client.onnx_device` (a
lean device) fill a `Payload` the same way."""

from __future__ import annotations

from collections.abc import Sequence

from bottlenecks.wire import EncodedTensor
from protos import splitedge_pb2 as pb

__all__ = ["IMAGE_CODECS", "from_message", "size_message", "tensor_message"]


def size_message(hw: Sequence[int]) -> pb.Size:
    """(height, width) as the wire's `Size`."""
    return pb.Size(height=int(hw[0]), width=int(hw[1]))


# Codecs whose bytes are an image (uint8 pixels): "jpeg", which the edge serves, and "webp", which only
# `splitedge rd` measures. Every other codec decodes to float32 features.
IMAGE_CODECS = frozenset({"jpeg", "webp"})


def tensor_message(enc: EncodedTensor) -> pb.Tensor:
    """The wire tensor: no dtype (the codec implies it: 9 bytes), and a scale and zero point only for
    the 8-bit codec that reads them (9 more bytes for every other codec; issue 13's framing)."""
    t = pb.Tensor(codec=enc.codec, shape=list(enc.shape), data=enc.data)
    if enc.codec == "uint8":
        t.scale, t.zero_point = enc.scale, enc.zero_point
    return t


def from_message(t: pb.Tensor) -> EncodedTensor:
    """The codec's input for a wire tensor: its dtype from the codec, and a scale of 1 where none is sent."""
    dtype = "uint8" if t.codec in IMAGE_CODECS else "float32"
    scale, zero_point = (t.scale, t.zero_point) if t.codec == "uint8" else (1.0, 0.0)
    return EncodedTensor(t.codec, dtype, tuple(int(d) for d in t.shape), t.data, scale, zero_point)

"""Codec output to wire messages and back: the one conversion, for the torch and the ONNX device.

Torch-free, so that `split.api` (torch) and `mobile_client.onnx_device` (a
lean device) fill a `Payload` the same way."""

from __future__ import annotations

from collections.abc import Sequence

from bottlenecks.wire import EncodedTensor
from protos import splitedge_pb2 as pb

__all__ = ["from_message", "size_message", "tensor_message"]


def size_message(hw: Sequence[int]) -> pb.Size:
    return pb.Size(height=int(hw[0]), width=int(hw[1]))


def tensor_message(enc: EncodedTensor) -> pb.Tensor:
    return pb.Tensor(codec=enc.codec, dtype=enc.dtype, shape=list(enc.shape), scale=enc.scale,
                     zero_point=enc.zero_point, data=enc.data)


def from_message(t: pb.Tensor) -> EncodedTensor:
    return EncodedTensor(t.codec, t.dtype, tuple(int(d) for d in t.shape), t.data, t.scale, t.zero_point)

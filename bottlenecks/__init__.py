"""Learned bottlenecks and codecs: the only package that knows how tensors become bytes."""

from bottlenecks.codecs import (
    CODEC_NAMES,
    CodecError,
    EncodedTensor,
    Float16Codec,
    Float32Codec,
    JpegCodec,
    TensorCodec,
    Uint8Codec,
    get_codec,
)
from bottlenecks.modules import BOTTLENECK_KINDS, Bottleneck, BottleneckSpecError

__all__ = [
    "BOTTLENECK_KINDS",
    "Bottleneck",
    "BottleneckSpecError",
    "CODEC_NAMES",
    "CodecError",
    "EncodedTensor",
    "Float16Codec",
    "Float32Codec",
    "JpegCodec",
    "TensorCodec",
    "Uint8Codec",
    "get_codec",
]

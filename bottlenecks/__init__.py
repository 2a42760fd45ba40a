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
    WebpCodec,
    get_codec,
)
from bottlenecks.entropic import ENCODER_INPUTS, ENTROPIC_PRIORS, EntropicStudent, EntropyCodec
from bottlenecks.modules import BOTTLENECK_KINDS, Bottleneck, BottleneckSpecError, bottleneck_from_spec

__all__ = [
    "BOTTLENECK_KINDS",
    "Bottleneck",
    "BottleneckSpecError",
    "CODEC_NAMES",
    "CodecError",
    "ENCODER_INPUTS",
    "ENTROPIC_PRIORS",
    "EncodedTensor",
    "EntropicStudent",
    "EntropyCodec",
    "Float16Codec",
    "Float32Codec",
    "JpegCodec",
    "TensorCodec",
    "Uint8Codec",
    "WebpCodec",
    "get_codec",
]

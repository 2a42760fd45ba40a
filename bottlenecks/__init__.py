"""Learned bottlenecks and codecs: the only package that knows how tensors become bytes.

Its names are imported on first use (`bottlenecks.lazy`), so that a lean device's `bottlenecks.wire`
(numpy and constriction only) does not import torch with the package."""

from bottlenecks.lazy import lazy_exports

_CODECS = ("CODEC_NAMES", "Float16Codec", "Float32Codec", "JpegCodec", "TensorCodec", "Uint8Codec", "WebpCodec",
           "get_codec")
_EXPORTS = {**{n: "bottlenecks.codecs" for n in _CODECS}, "CodecError": "bottlenecks.wire",
            "EncodedTensor": "bottlenecks.wire",
            **{n: "bottlenecks.entropic" for n in ("ENCODER_INPUTS", "ENTROPIC_PRIORS", "EntropicStudent", "EntropyCodec")},
            **{n: "bottlenecks.modules" for n in ("BOTTLENECK_KINDS", "Bottleneck", "BottleneckSpecError",
                                                  "bottleneck_from_spec")}}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

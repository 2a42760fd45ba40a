"""Entropic students: a light learned encoder that *replaces* the head, with a learned entropy model.

The hnd-ghnd bottlenecks (`bottlenecks.modules`) sit after the backbone's first blocks, so
those blocks still run on the device (62 % of the pedestrian SSDLite), and the 8-bit codec
spends 8 bits on every value, however predictable. sc2bench's entropic student does both
differently: a small encoder of strided convolutions with GDN maps the *image* straight to a
latent of `channels` channels at the split point's stride, a learned prior gives each
quantized latent value a probability, and a range coder spends -log2 p bits on it; on the
edge a decoder rebuilds the teacher's features at the split point and the rest of the
network runs unchanged. Rate-distortion distillation (`split.train.rate_distortion`) trains
encoder, prior and decoder together, λ trading bytes for fidelity. With `encoder_from="split"`
the backbone's first blocks stay on the device and the prior codes the hnd-ghnd conv
bottleneck's latent instead: the shipped default (docs/entropic.md).

Sized for this device, not for ResNet-50: sc2bench's two 5x5 convolutions at 192 channels
would cost more than MobileNetV2's whole backbone, so here the first layer is a 5x5 stride-2
convolution to `hidden // 2` channels and every later stride-2 step is depthwise-separable
(5x5 depthwise, 1x1 pointwise), each followed by GDN; `stride_log2` steps reach the split
point's stride (3 for MobileNetV2's features.6, stride 8). The decoder (edge side) is wider
(`decoder_hidden`): three 3x3 convolutions with inverse GDN, then a 1x1 to the split point's
channels.

Two priors, compressai's:

- `"factorized"` (default): `EntropyBottleneck`, one learned density per channel. Its CDF
  indexes are the channel numbers, so the device and the edge agree on them by construction:
  the bytes decode bit-exactly wherever they were made.
- `"hyperprior"`: a scale hyperprior (`GaussianConditional` for the latent, an
  `EntropyBottleneck` for the side information z). Fewer bits when the scene varies, but the
  CDF index of each value comes from a convolution the device and the edge both compute: two
  runtimes (torch on the edge, ONNX Runtime on a lean device) may round one scale across a
  table boundary and the stream then decodes into garbage. Kept for the rate curve.

The codec (`EntropyCodec`) codes with `bottlenecks.wire.TableCoder` (constriction's ANS, numpy
only, so that a device without torch writes the same bytes) on compressai's quantized CDF
tables, which `prepare()` computes once (after training, or at load when a checkpoint holds
none) and the state dict carries, so no frame ever recomputes them. A checkpoint records the
compressai version that made its tables; another version refuses it with a message
(`BottleneckSpecError`), since it may compute other tables from the same densities.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bottlenecks.codecs import CodecError, EncodedTensor, TensorCodec
from bottlenecks.wire import TableCoder, channel_indexes
from bottlenecks.modules import BottleneckSpecError, build_from_spec, check_spec_keys

__all__ = ["ENCODER_INPUTS", "ENTROPIC_PRIORS", "EntropicStudent", "EntropyCodec", "SPLIT_KINDS"]

ENTROPIC_PRIORS = ("factorized", "hyperprior")
ENCODER_INPUTS = ("image", "split")
SPLIT_KINDS = ("conv", "block")  # the hnd-ghnd kinds whose latent an `encoder_from="split"` prior codes
def _compressai_version() -> str:
    import compressai

    return str(compressai.__version__)


def _gdn(channels: int, inverse: bool = False) -> nn.Module:
    from compressai.layers import GDN

    return GDN(channels, inverse=inverse)


def _separable(cin: int, cout: int) -> nn.Sequential:
    """A 5x5 depthwise stride-2 convolution and a 1x1 pointwise one: a stride-2 step for little compute."""
    return nn.Sequential(nn.Conv2d(cin, cin, 5, stride=2, padding=2, groups=cin), nn.Conv2d(cin, cout, 1))


def _encoder(channels: int, hidden: int, stride_log2: int) -> nn.Sequential:
    first = max(8, hidden // 2)
    layers: list[nn.Module] = [nn.Conv2d(3, first, 5, stride=2, padding=2), _gdn(first)]
    width = first
    for _ in range(stride_log2 - 1):
        layers += [_separable(width, hidden), _gdn(hidden)]
        width = hidden
    layers += [nn.Conv2d(width, channels, 3, padding=1)]
    return nn.Sequential(*layers)


def _decoder(channels: int, out_channels: int, wide: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, wide, 3, padding=1), _gdn(wide, inverse=True),
        nn.Conv2d(wide, wide, 3, padding=1), _gdn(wide, inverse=True),
        nn.Conv2d(wide, wide, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(wide, out_channels, 1),
    )


class _Hyperprior(nn.Module):
    """Scale hyperprior: z = h_a(|y|) coded with a factorized prior, scales = h_s(ẑ) for y."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        from compressai.entropy_models import EntropyBottleneck, GaussianConditional

        n = max(8, channels)
        self.h_a = nn.Sequential(nn.Conv2d(channels, n, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(n, n, 5, stride=2, padding=2), nn.ReLU(inplace=True),
                                 nn.Conv2d(n, n, 5, stride=2, padding=2))
        self.h_s = nn.Sequential(nn.ConvTranspose2d(n, n, 4, stride=2, padding=1), nn.ReLU(inplace=True),
                                 nn.ConvTranspose2d(n, n, 4, stride=2, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(n, channels, 3, padding=1))
        self.z_prior = EntropyBottleneck(n)
        self.y_prior = GaussianConditional(None)

    def scales(self, z_hat: Tensor, size: tuple[int, int]) -> Tensor:
        s = self.h_s(z_hat)[..., : size[0], : size[1]]
        return torch.exp(s.clamp(-10.0, 10.0))  # positive; clamped so a hostile z cannot overflow

    def forward(self, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = self.h_a(torch.abs(y))
        z_hat, z_lik = self.z_prior(z)
        y_hat, y_lik = self.y_prior(y, self.scales(z_hat, tuple(y.shape[-2:])))
        return y_hat, [y_lik, z_lik]


class EntropicStudent(nn.Module):
    """Image -> latent (device) -> learned prior and ANS bytes -> features at the split point (edge).

    The `Bottleneck` contract where it applies (`encoder`, `decoder`, `channels`,
    `in_channels` = the split point's channels, `downsample`: halvings past the split point's
    stride, 0 but for a block latent, `spec()` / `from_spec`), plus `codec()`, which `split.SplitModel` uses
    instead of the recipe's codec, and `replaces_head`: with `encoder_from="image"` the
    encoder takes the preprocessed image instead of the backbone's first blocks' output.
    `encoder_from="split"` keeps those blocks on the device and puts the learned prior on the
    hnd-ghnd bottleneck's latent instead (`split_kind` "conv", `hidden` its width, or "block", the
    transform coder of `downsample` halvings that the classifier ships): an 8-bit
    checkpoint's encoder and decoder start it (`split.train.rate_distortion`), so it costs a few
    CPU-minutes to train where a student from the image needs far more than this project had.
    """

    def __init__(self, in_channels: int, channels: int = 24, hidden: int = 32, stride_log2: int = 3,
                 prior: str = "factorized", decoder_hidden: int = 64, encoder_from: str = "image",
                 kind: str = "entropic", split_kind: str = "conv", downsample: int = 0) -> None:
        super().__init__()
        if kind != "entropic":
            raise ValueError(f"EntropicStudent is kind 'entropic', got {kind!r}")
        if channels < 1 or in_channels < 1 or min(hidden, decoder_hidden) < 4 or not 1 <= stride_log2 <= 5:
            raise ValueError(f"entropic student needs channels, in_channels >= 1, hidden and decoder_hidden >= 4, "
                             f"stride_log2 in 1..5; got {channels}, {in_channels}, {hidden}, {decoder_hidden}, {stride_log2}")
        if prior not in ENTROPIC_PRIORS:
            raise ValueError(f"unknown prior {prior!r}; known: {', '.join(ENTROPIC_PRIORS)}")
        if encoder_from not in ENCODER_INPUTS:
            raise ValueError(f"encoder_from must be one of {', '.join(ENCODER_INPUTS)}, got {encoder_from!r}")
        if split_kind not in SPLIT_KINDS or downsample < 0 or (encoder_from == "image" and (split_kind, downsample) != ("conv", 0)):
            raise ValueError(f"split_kind must be one of {', '.join(SPLIT_KINDS)} and downsample >= 0; a student "
                             f"from the image takes neither (conv, 0); got {split_kind!r}, {downsample} with "
                             f"encoder_from {encoder_from!r}")
        from compressai.entropy_models import EntropyBottleneck

        self.in_channels, self.channels, self.hidden, self.decoder_hidden = in_channels, channels, hidden, decoder_hidden
        self.stride_log2, self.prior, self.kind = stride_log2, prior, kind
        self.encoder_from, self.split_kind, self.downsample = encoder_from, split_kind, downsample
        self.replaces_head = encoder_from == "image"
        if self.replaces_head:
            self.encoder = _encoder(channels, hidden, stride_log2)
            self.decoder = _decoder(channels, in_channels, decoder_hidden)
        else:  # the hnd-ghnd conv bottleneck's layers, after the backbone's first blocks
            from bottlenecks.modules import Bottleneck

            coder = Bottleneck(in_channels, channels, hidden, downsample, split_kind)
            self.encoder, self.decoder = coder.encoder, coder.decoder
        self._coders: dict[str, TableCoder] = {}  # built from the tables once (`table_coder`)
        if prior == "factorized":
            self.entropy: nn.Module = EntropyBottleneck(channels)
        else:
            self.entropy = _Hyperprior(channels)

    # -- training -----------------------------------------------------------------------------
    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Image -> decoded features and the likelihoods (uniform noise in training mode)."""
        y = self.encoder(x)
        y_hat, likelihoods = self.entropy(y) if self.prior == "hyperprior" else self._factorized(y)
        return self.decode(y_hat, tuple(x.shape[-2:])), likelihoods

    def decode(self, y_hat: Tensor, size: tuple[int, int]) -> Tensor:
        """The decoder's features, cropped (`encoder_from="split"`) to the encoder input's `size`: a block
        latent covers the split tensor padded to whole blocks (`split.api.Tail` crops the same way)."""
        out = self.decoder(y_hat)
        return out if self.replaces_head else out[..., : size[0], : size[1]]

    def _factorized(self, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        y_hat, lik = self.entropy(y)
        return y_hat, [lik]

    def quantized(self, y: Tensor) -> Tensor:
        """The latent the edge will decode (hard rounding around the medians/means), for the second
        training stage, which tunes the decoder on exactly what it will receive."""
        if self.prior == "factorized":
            return self.entropy.quantize(y, "dequantize", self.entropy._get_medians())
        return torch.round(y)

    def aux_loss(self) -> Tensor:
        """compressai's quantile loss of every factorized prior (fits the CDF tables' range)."""
        priors = [self.entropy] if self.prior == "factorized" else [self.entropy.z_prior]
        return sum(p.loss() for p in priors)

    @staticmethod
    def bits(likelihoods: list[Tensor]) -> Tensor:
        """-log2 of the likelihoods, summed per sample: the coder's own estimate of the bits."""
        return sum((-torch.log2(lik)).flatten(1).sum(1) for lik in likelihoods)

    @torch.no_grad()
    def estimated_bytes(self, x: Tensor) -> float:
        """The prior's estimate of the bytes of one frame, from the encoder's input [1, C, H, W] (the
        preprocessed image, or with `encoder_from="split"` the head's features), hard-quantized."""
        was = self.training
        self.eval()
        try:
            _, lik = self.forward(x)
        finally:
            self.train(was)
        return float(self.bits(lik).sum()) / 8.0

    # -- the codec ----------------------------------------------------------------------------
    def prepare(self, force: bool = False) -> None:
        """Compute the quantized CDF tables (once: after training or when a checkpoint holds none)."""
        self._coders.clear()
        if self.prior == "factorized":
            self.entropy.update(force=force)
            return
        from compressai.models.base import get_scale_table

        self.entropy.z_prior.update(force=force)
        self.entropy.y_prior.update_scale_table(get_scale_table(), force=force)

    def prepared(self) -> bool:
        priors = [self.entropy] if self.prior == "factorized" else [self.entropy.z_prior, self.entropy.y_prior]
        return all(p._offset.numel() > 0 for p in priors)

    def codec(self) -> "EntropyCodec":
        return EntropyCodec(self)

    def compress(self, y: Tensor) -> bytes:
        """The coder's bytes of one latent [1, C, h, w] (the hyperprior's: z's length and bytes, then y's)."""
        if self.prior == "factorized":
            return self.table_coder().encode(self.symbols(y), channel_indexes(y.shape))
        hp = self.entropy
        z = hp.h_a(torch.abs(y))
        z_symbols = hp.z_prior.quantize(z, "symbols", hp.z_prior._get_medians())
        z_string = self.table_coder("z").encode(z_symbols.numpy(), channel_indexes(z.shape))
        z_hat = self._dequantized(z_symbols.numpy(), hp.z_prior)
        indexes = hp.y_prior.build_indexes(hp.scales(z_hat, tuple(y.shape[-2:])))
        y_string = self.table_coder("y").encode(hp.y_prior.quantize(y, "symbols").numpy(), indexes.numpy())
        return struct.pack("<I", len(z_string)) + z_string + y_string

    def symbols(self, y: Tensor) -> np.ndarray:
        """The integers a factorized prior codes for latent y: round half to even of y - medians[c]
        (what a lean device computes from the ONNX head's output, in numpy; the bundle's manifest)."""
        return self.entropy.quantize(y, "symbols", self.entropy._get_medians()).numpy()

    def decompress(self, data: bytes, size: tuple[int, int]) -> Tensor:
        """The quantized latent [1, C, h, w] of `compress`'s bytes, bit-exactly."""
        h, w = size
        if self.prior == "factorized":
            symbols = self.table_coder().decode(data, channel_indexes((1, self.channels, h, w)))
            return self._dequantized(symbols, self.entropy)
        hp = self.entropy
        if len(data) < 4:
            raise CodecError(f"entropy-hyperprior: {len(data)} bytes hold no side-information length")
        (nz,) = struct.unpack("<I", data[:4])
        if nz > len(data) - 4:
            raise CodecError(f"entropy-hyperprior: side information claims {nz} bytes, {len(data) - 4} follow")
        zh, zw = math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2)
        z_channels = hp.z_prior._quantized_cdf.shape[0]
        z_symbols = self.table_coder("z").decode(data[4 : 4 + nz], channel_indexes((1, z_channels, zh, zw)))
        indexes = hp.y_prior.build_indexes(hp.scales(self._dequantized(z_symbols, hp.z_prior), (h, w)))
        return torch.from_numpy(self.table_coder("y").decode(data[4 + nz :], indexes.numpy())).float()

    def table_coder(self, which: str = "y") -> TableCoder:
        """The coder over one prior's tables (`y`: the latent's; `z`: the hyperprior's side
        information), built once from the prepared tables and kept until they change."""
        if not self.prepared():
            raise CodecError("entropy tables are not prepared: call prepare() once after training or loading")
        coder = self._coders.get(which)
        if coder is None:
            prior = self.entropy if self.prior == "factorized" else getattr(self.entropy, f"{which}_prior")
            coder = TableCoder(prior._quantized_cdf.numpy(), prior._cdf_length.numpy(), prior._offset.numpy())
            self._coders[which] = coder
        return coder

    @staticmethod
    def _dequantized(symbols: np.ndarray, prior: nn.Module) -> Tensor:
        return torch.from_numpy(symbols).float() + prior._get_medians().detach().reshape(1, -1, 1, 1)

    # -- checkpoints --------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Size the CDF buffers (empty until `prepare`) to the checkpoint's before loading them."""
        self._coders.clear()
        for name, buf in list(self.named_buffers()):
            key = prefix + name
            if name.rsplit(".", 1)[-1] in ("_quantized_cdf", "_offset", "_cdf_length", "scale_table") and key in state_dict:
                owner = self.get_submodule(name.rsplit(".", 1)[0]) if "." in name else self
                owner.register_buffer(name.rsplit(".", 1)[-1], torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def spec(self) -> dict[str, Any]:
        """The constructor's arguments; `split_kind` and `downsample` only where they differ from a conv
        latent's, so that the specs of checkpoints made before the block latent stay what they were."""
        spec = {"kind": self.kind, "channels": self.channels, "hidden": self.hidden, "stride_log2": self.stride_log2,
                "prior": self.prior, "decoder_hidden": self.decoder_hidden, "encoder_from": self.encoder_from,
                "compressai": _compressai_version()}
        if (self.split_kind, self.downsample) != ("conv", 0):
            spec.update(split_kind=self.split_kind, downsample=self.downsample)
        return spec

    @classmethod
    def from_spec(cls, in_channels: int, spec: dict[str, Any]) -> "EntropicStudent":
        """Rebuild from `spec()`; BottleneckSpecError for unknown keys or another compressai version."""
        known = {"kind", "channels", "hidden", "stride_log2", "prior", "decoder_hidden", "encoder_from", "compressai",
                 "split_kind", "downsample"}
        check_spec_keys(spec, known, "entropic")
        made_with, here = spec.get("compressai"), _compressai_version()
        if made_with != here:
            raise BottleneckSpecError(f"entropy tables were made with compressai {made_with}, this is {here}: its coder "
                                      f"may read them differently; install compressai=={made_with} or retrain")
        args = {k: v for k, v in spec.items() if k != "compressai"}
        return build_from_spec(cls, in_channels, args, spec, "entropic")

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, channels={self.channels}, hidden={self.hidden}, "
                f"stride_log2={self.stride_log2}, prior={self.prior!r}, decoder_hidden={self.decoder_hidden}, "
                f"encoder_from={self.encoder_from!r}, split_kind={self.split_kind!r}, downsample={self.downsample}")


class EntropyCodec(TensorCodec):
    """The latent as ANS bytes under the student's prior; `decode` restores the quantized latent exactly.

    `encode` takes the encoder's output y (unquantized) and codes round(y) around the prior's
    medians; `decode` gives that quantized latent. The wire tensor's `shape` is the latent's,
    `data` the coder's bytes (variable length: validation bounds it by `max_bytes`).
    """

    lossless = False

    def __init__(self, student: EntropicStudent) -> None:
        self.student = student
        self.name = "entropy" if student.prior == "factorized" else "entropy-hyperprior"  # type: ignore[misc]

    def encode(self, x: Tensor) -> EncodedTensor:
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != self.student.channels:
            raise CodecError(f"{self.name}: expects a latent [1, {self.student.channels}, h, w], got {list(x.shape)}")
        return EncodedTensor(self.name, "float32", tuple(int(d) for d in x.shape), self.student.compress(x))

    def decode(self, enc: EncodedTensor) -> Tensor:
        if enc.codec != self.name:
            raise CodecError(f"codec mismatch: payload is {enc.codec!r}, decoder is {self.name!r}")
        shape = tuple(enc.shape)
        if len(shape) != 4 or shape[0] != 1 or shape[1] != self.student.channels or min(shape) < 1:
            raise CodecError(f"{self.name}: shape {list(shape)} is not a latent [1, {self.student.channels}, h, w]")
        if not 0 < len(enc.data) <= self.max_bytes(shape):
            raise CodecError(f"{self.name}: {len(enc.data)} bytes for shape {list(shape)}; expected 1..{self.max_bytes(shape)}")
        return self.student.decompress(enc.data, (int(shape[2]), int(shape[3])))

    @staticmethod
    def max_bytes(shape: tuple[int, ...]) -> int:
        """The most bytes a latent of `shape` may take: twice its 8-bit size plus room for side
        information, far above what the coder writes, so that a hostile length is refused before
        any decoding."""
        return 2 * math.prod(shape) + 4096

    def __repr__(self) -> str:
        return f"EntropyCodec({self.student.prior})"

"""Learned bottlenecks inserted at a split point.

The shape follows hnd-ghnd: a small convolutional *encoder* squeezes the split point's
C_in channels down to `channels` (default 3) on the device, and a *decoder* on the edge
restores the C_in-channel tensor the tail expects, so the rest of the network is untouched.
Both keep the spatial size by default (`downsample=0`); `downsample=k` halves it k times in
the encoder and restores it with transposed convolutions, for 4**k fewer values on the wire.

Two kinds share that contract:

- `"conv"` (default): conv/BatchNorm/ReLU, as in hnd-ghnd.
- `"gdn"`: conv/GDN in the encoder and conv/inverse-GDN in the decoder, as in sc2bench's
  entropic student. GDN normalizes each value by its neighbours' energy, which decorrelates
  the channels and keeps the latent's range compact: that is what an 8-bit per-tensor
  quantizer needs, and what the plain conv kind lacked in the quick trial of issue 3. It has
  no batch statistics, so it trains the same at batch 8 as at batch 64.

`spec()` gives the constructor arguments as a plain dict; a checkpoint stores it (as
"bottleneck_spec") so that a bottleneck of another shape than the recipe's default can be
rebuilt from the checkpoint alone (`Bottleneck.from_spec`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["BOTTLENECK_KINDS", "Bottleneck", "BottleneckSpecError"]

BOTTLENECK_KINDS = ("conv", "gdn")


class BottleneckSpecError(ValueError):
    """A bottleneck spec (e.g. from a checkpoint) that cannot be built; the message says why."""


def _conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _conv_gdn(cin: int, cout: int, k: int = 3, stride: int = 1, inverse: bool = False) -> nn.Sequential:
    from compressai.layers import GDN  # imported here: only the gdn kind needs compressai

    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), GDN(cout, inverse=inverse))


def _deconv_gdn(cin: int, cout: int) -> nn.Sequential:
    from compressai.layers import GDN

    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), GDN(cout, inverse=True))


class Bottleneck(nn.Module):
    """Encoder on the device, decoder on the edge; `forward` runs both (used in training)."""

    def __init__(
        self, in_channels: int, channels: int = 3, hidden: int = 64, downsample: int = 0, kind: str = "conv"
    ) -> None:
        super().__init__()
        if channels < 1 or in_channels < 1:
            raise ValueError(f"bottleneck channels must be >= 1, got {channels} (in {in_channels})")
        if hidden < 2 or downsample < 0:
            raise ValueError(f"bottleneck hidden must be >= 2 and downsample >= 0, got {hidden}, {downsample}")
        if kind not in BOTTLENECK_KINDS:
            raise ValueError(f"unknown bottleneck kind {kind!r}; known: {', '.join(BOTTLENECK_KINDS)}")
        self.in_channels, self.channels, self.downsample = in_channels, channels, downsample
        self.hidden, self.kind = hidden, kind
        if kind == "conv":
            self.encoder, self.decoder = self._conv_layers(in_channels, channels, hidden, downsample)
        else:
            self.encoder, self.decoder = self._gdn_layers(in_channels, channels, hidden, downsample)

    @staticmethod
    def _conv_layers(cin: int, c: int, hidden: int, downsample: int) -> tuple[nn.Sequential, nn.Sequential]:
        enc: list[nn.Module] = [_conv_bn_relu(cin, hidden)]
        enc += [_conv_bn_relu(hidden, hidden, stride=2) for _ in range(downsample)]
        enc += [_conv_bn_relu(hidden, hidden // 2), nn.Conv2d(hidden // 2, c, 1)]
        dec: list[nn.Module] = [_conv_bn_relu(c, hidden // 2, k=1), _conv_bn_relu(hidden // 2, hidden)]
        for _ in range(downsample):
            dec += [
                nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
            ]
        dec += [nn.Conv2d(hidden, cin, 3, padding=1)]
        return nn.Sequential(*enc), nn.Sequential(*dec)

    @staticmethod
    def _gdn_layers(cin: int, c: int, hidden: int, downsample: int) -> tuple[nn.Sequential, nn.Sequential]:
        # Encoder: light (it runs on the device). Decoder: one more layer (it runs on the edge).
        enc: list[nn.Module] = [_conv_gdn(cin, hidden)]
        enc += [_conv_gdn(hidden, hidden, k=5, stride=2) for _ in range(downsample)]
        enc += [nn.Conv2d(hidden, c, 3, padding=1)]
        dec: list[nn.Module] = [_conv_gdn(c, hidden, inverse=True)]
        dec += [_deconv_gdn(hidden, hidden) for _ in range(downsample)]
        dec += [_conv_gdn(hidden, hidden, inverse=True), nn.Conv2d(hidden, cin, 3, padding=1)]
        return nn.Sequential(*enc), nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """`size` crops the decoder output back to the split point's size after odd downsampling."""
        y = self.decoder(z)
        if size is not None and tuple(y.shape[-2:]) != tuple(size):
            y = y[..., : size[0], : size[1]]
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), tuple(x.shape[-2:]))

    def spec(self) -> dict[str, Any]:
        """The shape as plain values (channels, hidden, downsample, kind), for checkpoints."""
        return {"channels": self.channels, "hidden": self.hidden, "downsample": self.downsample, "kind": self.kind}

    @classmethod
    def from_spec(cls, in_channels: int, spec: dict[str, Any]) -> "Bottleneck":
        """Rebuild a bottleneck from `spec()`'s dict; a bad spec raises BottleneckSpecError."""
        if not isinstance(spec, dict):
            raise BottleneckSpecError(f"bottleneck spec must be a dict, got {type(spec).__name__}")
        known = {"channels", "hidden", "downsample", "kind"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise BottleneckSpecError(f"bottleneck spec has unknown key {unknown[0]!r}; known: {', '.join(sorted(known))}")
        try:
            return cls(in_channels, **spec)
        except (TypeError, ValueError) as exc:
            raise BottleneckSpecError(f"bottleneck spec {spec} cannot be built: {exc}") from None

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, channels={self.channels}, hidden={self.hidden}, "
                f"downsample={self.downsample}, kind={self.kind!r}")

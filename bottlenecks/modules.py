"""Learned bottlenecks inserted at a split point.

The shape follows hnd-ghnd: a small convolutional *encoder* squeezes the split point's
C_in channels down to `channels` (default 3) on the device, and a *decoder* on the edge
restores the C_in-channel tensor the tail expects, so the rest of the network is untouched.
Both keep the spatial size by default (`downsample=0`); `downsample=k` halves it k times in
the encoder and restores it with transposed convolutions, for 4**k fewer values on the wire.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Bottleneck"]


def _conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Bottleneck(nn.Module):
    """Encoder on the device, decoder on the edge; `forward` runs both (used in training)."""

    def __init__(
        self, in_channels: int, channels: int = 3, hidden: int = 64, downsample: int = 0
    ) -> None:
        super().__init__()
        if channels < 1 or in_channels < 1:
            raise ValueError(f"bottleneck channels must be >= 1, got {channels} (in {in_channels})")
        self.in_channels, self.channels, self.downsample = in_channels, channels, downsample
        enc: list[nn.Module] = [_conv_bn_relu(in_channels, hidden)]
        enc += [_conv_bn_relu(hidden, hidden, stride=2) for _ in range(downsample)]
        enc += [_conv_bn_relu(hidden, hidden // 2), nn.Conv2d(hidden // 2, channels, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [_conv_bn_relu(channels, hidden // 2, k=1), _conv_bn_relu(hidden // 2, hidden)]
        for _ in range(downsample):
            dec += [
                nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
            ]
        dec += [nn.Conv2d(hidden, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

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

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, channels={self.channels}, downsample={self.downsample}"

"""What a served model accepts, as arithmetic on sizes: the edge's door and the model's own decode share it.

Why here and not only at the edge's door: since protocol version 3 a payload no longer carries
the sizes after the model's resize and padding (they follow from ``original_size`` and the
transform, and a client that sent others could only be refused), so `split.SplitModel`
computes them when it decodes a payload, with the same arithmetic that
`edge_server.validation` checks a frame against before it is queued.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from split.api import SplitModel

__all__ = ["ModelLimits", "Size"]

Size = tuple[int, int]


@dataclass(frozen=True)
class ModelLimits:
    """What a served model accepts, read once from the model: its transform, split point and codec.

    ``fixed_size`` / ``min_size`` / ``max_size`` / ``size_divisible`` are torchvision's
    ``GeneralizedRCNNTransform`` (eval mode: the last ``min_size``); the TF-ported SSDLite's
    transform resizes every image to one square ``size``, unpadded; a classifier's transform is
    a resize then a centre crop, so every image is ``crop`` x ``crop``.
    """

    name: str
    split_point: str
    codec: str
    wire_channels: int
    downsample: int
    fixed_size: Size | None = None
    min_size: int = 0
    max_size: int = 0
    size_divisible: int = 1
    crop: int = 0

    @classmethod
    def of(cls, model: SplitModel) -> ModelLimits:
        """Read from the model's transform (a classifier's crop, SSDLite's one size, an R-CNN's rule)."""
        common = dict(name=model.name, split_point=model.at, codec=model.codec.name,
                      wire_channels=model.wire_channels,
                      downsample=model.bottleneck.downsample if model.bottleneck else 0)
        if model.family == "classifier":
            return cls(**common, crop=int(model.adapter.crop_size))
        t = model.adapter.model.transform
        if not hasattr(t, "min_size"):  # one square size, no padding: split.models.SSDLiteTF's TFTransform
            return cls(**common, fixed_size=(int(t.size), int(t.size)))
        fixed = (int(t.fixed_size[0]), int(t.fixed_size[1])) if t.fixed_size is not None else None
        return cls(**common, fixed_size=fixed, min_size=int(t.min_size[-1]), max_size=int(t.max_size),
                   size_divisible=int(t.size_divisible))

    def image_size(self, original: Size) -> Size:
        """The transform's resize of an image of ``original`` size (torchvision's arithmetic, exactly)."""
        if self.crop:
            return self.crop, self.crop
        if self.fixed_size is not None:
            return self.fixed_size[1], self.fixed_size[0]  # torchvision reads fixed_size as (w, h)
        h, w = original
        scale = min(self.min_size / min(h, w), self.max_size / max(h, w))
        return int(h * scale), int(w * scale)

    def batch_size(self, image: Size) -> Size:
        """The padded batch: each side rounded up to ``size_divisible``."""
        d = self.size_divisible
        return math.ceil(image[0] / d) * d, math.ceil(image[1] / d) * d

    def wire_size(self, split_size: Size) -> Size:
        """The latent's spatial size for a split size: halved (rounding up) `downsample` times."""
        h, w = split_size
        for _ in range(self.downsample):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        return h, w

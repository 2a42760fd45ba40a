"""Class names for what models output: COCO category ids (detectors) and ImageNet indices
(classifiers), from torchvision's own weight metadata, which ships with torchvision and
needs no download."""

from __future__ import annotations

from functools import cache

__all__ = ["coco_category", "coco_names", "label_names"]


@cache
def coco_names() -> tuple[str, ...]:
    """Index = COCO category id, as torchvision's detectors number them ("N/A" for the gaps)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return tuple(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


@cache
def _imagenet_names() -> tuple[str, ...]:
    from torchvision.models import MobileNet_V2_Weights

    return tuple(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def coco_category(token: str) -> int:
    """A COCO category id from an id or a name ("person" -> 1)."""
    token = token.strip()
    if token.isdigit():
        return int(token)
    if token in coco_names():
        return coco_names().index(token)
    raise ValueError(f"unknown COCO category {token!r}")


def label_names(family: str, classes: dict[int, str] | None = None) -> dict[int, str]:
    """{label: name} for a model's outputs; `classes` (a fine-tuned subset) wins when given."""
    if classes:
        return dict(classes)
    names = coco_names() if family == "detector" else _imagenet_names()
    return {i: n for i, n in enumerate(names) if n not in ("N/A", "__background__")}

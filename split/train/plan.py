"""What a distillation run trains: the stages that are frozen and cached, trained, and scored.

`Plan` reads a recipe's stage chain (`Adapter.stages()`) and the training config: which head
stages stay frozen (`freeze_through`: their outputs are cached, not recomputed), which are
trained, at which stages the loss compares student and teacher (HND: the split point; GHND:
`ghnd_stages`, or `default_ghnd_stages`), and how far the student must run. The helpers give
the model's input for a batch and the deterministic validation view of an image.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from split.adapters import ClassifierAdapter, Stage
from split.api import SplitModel
from split.train.config import ConfigError, DistillConfig

__all__ = ["Plan", "center_view", "default_ghnd_stages", "model_size", "normalize_batch", "stage_shapes", "unresized_input"]


def stage_shapes(stages: list[Stage], size: int, adapter: Any) -> list[tuple[int, ...]]:
    """Each stage's output shape (without the batch dimension) for a `size` x `size` input."""
    x = normalize_batch(adapter, torch.zeros(1, 3, size, size))
    out = []
    with torch.inference_mode():
        for s in stages:
            x = s.module(x)
            out.append(tuple(x.shape[1:]))
    return out


def default_ghnd_stages(stages: list[Stage], k: int, shapes: list[tuple[int, ...]]) -> list[str]:
    """GHND's stages when a config names none: the split point, then the end of every later
    resolution level (for ResNet: layer1..layer4, as hnd-ghnd) and every tapped output (FPN
    levels, SSD heads), i.e. the tensors the rest of the network is built on."""
    names = [stages[k].name]
    for i in range(k + 1, len(stages)):
        if len(shapes[i]) != 3 or _is_pooling(stages[i].module):
            break  # pooled: the classifier's end
        nxt = shapes[i + 1] if i + 1 < len(shapes) else ()
        level_end = len(nxt) != 3 or nxt[1:] != shapes[i][1:]
        if stages[i].tap is not None or level_end:
            names.append(stages[i].name)
    return names


def _is_pooling(module: nn.Module) -> bool:
    return isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.Flatten))


def normalize_batch(adapter: Any, images: Tensor) -> Tensor:
    """The model's input for a batch of same-sized images in [0, 1] (already at model size)."""
    if isinstance(adapter, ClassifierAdapter):
        mean = torch.tensor(adapter.mean).view(1, 3, 1, 1)
        std = torch.tensor(adapter.std).view(1, 3, 1, 1)
        return (images - mean) / std
    return torch.cat([adapter.preprocess(im).tensor for im in images])


def unresized_input(adapter: Any, images: Tensor) -> Tensor:
    """The model's normalization of a batch in [0, 1] without its resize: a fully convolutional
    student (an entropic encoder) trains on crops smaller than the model's input, which costs a
    fraction of the CPU; teacher and student must then both see the crop as it is."""
    if isinstance(adapter, ClassifierAdapter):
        return normalize_batch(adapter, images)
    return adapter.model.transform.normalize(images)


def model_size(adapter: Any) -> int:
    if isinstance(adapter, ClassifierAdapter):
        return adapter.crop_size
    transform = adapter.model.transform
    return int(transform.fixed_size[0] if getattr(transform, "fixed_size", None) else transform.min_size[0])


def center_view(image: Tensor, size: int, adapter: Any) -> Tensor:
    """The deterministic validation view: the classifier's own resize + center crop, or a
    center square at the training size for detectors (so that samples stack into batches)."""
    from torchvision.transforms.v2 import functional as TF

    if isinstance(adapter, ClassifierAdapter):
        short = round(size * adapter.resize_size / adapter.crop_size)
    else:
        short = size
    x = TF.resize(image, [short], antialias=True)
    return TF.center_crop(x, [size, size]).clamp(0, 1)


class Plan:
    """Which stages are frozen and cached, which train, which the loss reads."""

    def __init__(self, cfg: DistillConfig, student: SplitModel, stages: list[Stage], size: int) -> None:
        names = [s.name for s in stages]
        self.k = names.index(student.at)
        t = cfg.train
        if not t.trainable_head:
            self.frozen = self.k + 1
        elif t.freeze_through is None:
            self.frozen = 0
        else:
            if t.freeze_through not in names[: self.k + 1]:
                raise ConfigError(f"{cfg.source}: train.freeze_through {t.freeze_through!r} is not a stage at or "
                                  f"before the split point {student.at!r}; head stages: {', '.join(names[: self.k + 1])}")
            self.frozen = names.index(t.freeze_through) + 1
        self.shapes = stage_shapes(stages, size, student.adapter)
        if t.loss == "hnd":
            self.loss_stages = [student.at]
        elif t.ghnd_stages:
            feature = [n for n, st, sh in zip(names[self.k:], stages[self.k:], self.shapes[self.k:])
                       if len(sh) == 3 and not _is_pooling(st.module)]
            bad = [s for s in t.ghnd_stages if s not in feature]
            if bad:
                later = feature
                raise ConfigError(f"{cfg.source}: train.ghnd_stages entry {bad[0]!r} is not a feature stage at or "
                                  f"after the split point; valid: {', '.join(later)}")
            self.loss_stages = list(dict.fromkeys(t.ghnd_stages))
        else:
            self.loss_stages = default_ghnd_stages(stages, self.k, self.shapes)
        self.classifier = student.family == "classifier"
        if t.kd_weight > 0 and not self.classifier:
            raise ConfigError(f"{cfg.source}: train.kd_weight applies to classifiers; {cfg.recipe!r} is a detector")
        self.kd = t.kd_weight > 0
        last_loss = max(names.index(s) for s in self.loss_stages)
        self.run_to = len(stages) - 1 if self.kd else last_loss  # the student runs no further than needed
        self.names = names
        self.input_is_image = self.frozen == 0


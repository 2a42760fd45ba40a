"""Weights loading that never downloads.

torchvision's `weights=` reads the torch hub cache first and downloads on a miss; on a
machine without internet that download hangs or fails deep in urllib. We look the file up
in the cache ourselves first and fail with one line naming the missing file instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

__all__ = ["WeightsError", "cached_weights", "hub_checkpoint_dir", "load_checkpoint"]


class WeightsError(RuntimeError):
    """Weights that cannot be had without a download, or a checkpoint that does not fit."""


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_weights(builder: str, enum_name: str) -> Any:
    """The torchvision weights enum member `enum_name` of `builder`, if its file is cached."""
    try:
        enum = torchvision.models.get_model_weights(builder)
    except (ValueError, KeyError):
        raise WeightsError(f"torchvision has no weights for model {builder!r}") from None
    try:
        weights = enum[enum_name]
    except KeyError:
        names = ", ".join(m.name for m in enum)
        raise WeightsError(f"{builder} has no weights {enum_name!r}; known: DEFAULT, {names}") from None
    path = hub_checkpoint_dir() / os.path.basename(weights.url)
    if not path.is_file():
        raise WeightsError(
            f"weights {enum.__name__}.{weights.name} are not in the torch hub cache ({path}); "
            "no download is attempted offline: copy the file there (see `make weights`) or pass --checkpoint"
        )
    return weights


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A splitedge checkpoint: {"recipe": name, "model"?, "head"?, "bottleneck"?, "prefilter"?}.

    "model" replaces the whole network (e.g. a fine-tuned detector); "head" is a distilled copy
    of the layers before the split point, used on the device side only."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"checkpoint {p} does not exist")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise WeightsError(f"checkpoint {p} cannot be read: {type(exc).__name__}: {exc}") from None
    if not isinstance(ckpt, dict) or not ({"model", "head", "bottleneck", "prefilter"} & set(ckpt)):
        raise WeightsError(f"checkpoint {p} is not a splitedge checkpoint "
                           "(needs 'model', 'head', 'bottleneck' and/or 'prefilter')")
    return ckpt


def load_state(module: nn.Module, state: dict[str, Any], what: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise WeightsError(f"{what} does not fit: {first[1].strip() if len(first) > 1 else first[0]}") from None

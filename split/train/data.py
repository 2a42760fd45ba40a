"""Image datasets for distillation and evaluation: labeled folders, splits, augmentations (COCO: `coco`).

Why these and not torchvision.datasets: the data here is a flat folder of a few hundred
images whose class index is a numeric file-name prefix (`NNN_...`, as in
`shared/data/images/imagenet-samples`, one image per class) or a CSV `file,label`, and a
COCO folder with one annotation JSON. `ImageFolder` wants one directory per class and
`CocoDetection` returns PIL images and raw annotation lists; both would need a wrapper anyway.

Images are returned as float tensors [3, H, W] in [0, 1], RGB (`split.images.load_image`), which
is what every adapter's `preprocess`/`resize` takes.

The train/validation split is deterministic from the sorted file names and a seed, so that
`splitedge train` and `splitedge eval --val-only` (two processes, possibly days apart) agree
on which images were held out without writing the split anywhere.

Distillation needs no labels, only many distinct inputs: `DistillAugment` makes a few
hundred images yield thousands of different crops (random resized crop, flip, color jitter,
via torchvision.transforms.v2), each reproducible from (seed, sample index) alone, so the
teacher's outputs for them can be cached and a resumed run sees the same samples.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from split.images import load_image

__all__ = ["IMAGE_EXTENSIONS", "DataError", "DistillAugment", "LabeledImages", "list_images", "read_labels",
           "train_val_split"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_PREFIX = re.compile(r"^(\d+)[_\-.]")


class DataError(ValueError):
    """Data that cannot be used as asked (missing folder, unlabeled file, bad CSV); one line."""


def list_images(root: str | os.PathLike[str]) -> list[Path]:
    """Image files directly in `root`, sorted by name (the order every split is defined on)."""
    p = Path(root)
    if not p.is_dir():
        raise DataError(f"image folder {p} does not exist")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"image folder {p} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def read_labels(spec: str, files: list[Path]) -> list[int]:
    """Class indices for `files`: `spec` is "prefix" (numeric file-name prefix) or a CSV path.

    The CSV has a header `file,label` (or no header: first column file name, second label);
    file names are matched by base name. A file without a label is an error naming it, because a
    silently unlabeled image would make top-1 wrong without anyone noticing.
    """
    if spec == "prefix":
        labels = []
        for f in files:
            m = _PREFIX.match(f.name)
            if m is None:
                raise DataError(f"--labels prefix: {f.name} has no numeric prefix like 'NNN_'")
            labels.append(int(m.group(1)))
        return labels
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist (use 'prefix' or a CSV file,label)")
    table: dict[str, int] = {}
    with path.open(newline="") as fh:
        for i, row in enumerate(csv.reader(fh)):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise DataError(f"{path}:{i + 1}: expected 'file,label', got {','.join(row)!r}")
            name, label = row[0].strip(), row[1].strip()
            if i == 0 and not label.lstrip("-").isdigit():
                continue  # header
            try:
                table[Path(name).name] = int(label)
            except ValueError:
                raise DataError(f"{path}:{i + 1}: label {label!r} is not an integer") from None
    missing = [f.name for f in files if f.name not in table]
    if missing:
        raise DataError(f"{path} has no label for {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return [table[f.name] for f in files]


def train_val_split(names: list[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (into `names`) of the training and validation parts, both sorted.

    Defined on the *sorted* names and a seeded permutation, so it depends only on which files
    exist, not on the order a directory listing returns them. `val_fraction` 0 keeps all for
    training; otherwise at least one image is held out.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = sorted(range(len(names)), key=lambda i: names[i])
    n_val = 0 if val_fraction == 0 else max(1, int(round(val_fraction * len(names))))
    perm = np.random.RandomState(seed).permutation(len(order))
    val = sorted(order[i] for i in perm[:n_val])
    val_set = set(val)
    train = [i for i in range(len(names)) if i not in val_set]
    return train, val


@dataclass
class LabeledImages:
    """A flat image folder, with optional class labels (`labels`: "prefix" or a CSV path)."""

    root: Path
    files: list[Path]
    labels: list[int] | None

    @classmethod
    def from_folder(cls, root: str | os.PathLike[str], labels: str | None = None) -> "LabeledImages":
        files = list_images(root)
        return cls(Path(root), files, read_labels(labels, files) if labels else None)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int | None]:
        return load_image(self.files[i]), (self.labels[i] if self.labels is not None else None)

    def subset(self, indices: list[int]) -> "LabeledImages":
        return LabeledImages(self.root, [self.files[i] for i in indices],
                             [self.labels[i] for i in indices] if self.labels is not None else None)


class DistillAugment:
    """Random resized crop + horizontal flip + color jitter, reproducible per sample index.

    `sample(image, index)` seeds torch's RNG from (seed, index) and restores it afterwards, so
    sample k is the same crop whichever order, process or resumed run asks for it. The output
    is float [3, size, size] in [0, 1]: the model's own input size, so no further resize.
    """

    def __init__(self, size: int | tuple[int, int], seed: int = 0, scale: tuple[float, float] = (0.25, 1.0),
                 flip: bool = True, jitter: float = 0.3) -> None:
        from torchvision.transforms import v2

        hw = (size, size) if isinstance(size, int) else tuple(size)
        steps: list[Any] = [v2.RandomResizedCrop(hw, scale=scale, antialias=True)]
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        if jitter > 0:
            # No hue shift: it costs 5x the rest of the pipeline on CPU and ImageNet-style
            # features are least sensitive to it.
            steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
        self.transform = v2.Compose(steps)
        self.seed = seed
        self.size = hw

    def sample(self, image: Tensor, index: int) -> Tensor:
        state = torch.get_rng_state()
        try:
            torch.manual_seed((self.seed * 1_000_003 + index) % (2**63 - 1))
            return self.transform(image).clamp(0, 1)
        finally:
            torch.set_rng_state(state)

"""Image datasets for distillation and evaluation: labeled folders, COCO, splits, augmentations.

Why these and not torchvision.datasets: the data here is a flat folder of a few hundred
images whose class index is a numeric file-name prefix (`NNN_...`, as in
`shared/data/images/imagenet-samples`, one image per class) or a CSV `file,label`, and a
COCO folder with one annotation JSON. `ImageFolder` wants one directory per class and
`CocoDetection` returns PIL images and raw annotation lists; both would need a wrapper anyway.

Images are returned as float tensors [3, H, W] in [0, 1], RGB, which is what every adapter's
`preprocess`/`resize` takes.

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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "CocoImages",
    "DataError",
    "DistillAugment",
    "LabeledImages",
    "list_images",
    "load_image",
    "read_labels",
    "train_val_split",
]

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


def load_image(path: str | os.PathLike[str]) -> Tensor:
    """An RGB image as float [3, H, W] in [0, 1]; grayscale and RGBA files become RGB.

    torchvision's decoder is tried first (fast, no PIL round trip); OpenCV reads what it cannot
    (e.g. CMYK JPEGs, which ImageNet has a few of).
    """
    from torchvision.io import ImageReadMode, decode_image

    try:
        data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
        with warnings.catch_warnings():  # torchvision >= 0.29 flags its image IO as deprecated; it works
            warnings.simplefilter("ignore", DeprecationWarning)
            img = decode_image(data, mode=ImageReadMode.RGB)
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except (RuntimeError, ValueError):
        import cv2

        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError(f"image {path} cannot be decoded") from None
        img = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1)
    return img.float() / 255.0


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


class CocoImages:
    """COCO images with their annotations: image + target {boxes (xyxy), labels (category ids)}.

    Only images that are both in the JSON and in the folder are kept (coco128 ships 128 of the
    5000 val2017 images, say). `coco` is the pycocotools object, for COCOeval.
    """

    def __init__(self, images: str | os.PathLike[str], annotations: str | os.PathLike[str]) -> None:
        from pycocotools.coco import COCO

        ann = Path(annotations)
        if not ann.is_file():
            raise DataError(f"annotations {ann} do not exist")
        try:
            with _quiet():
                self.coco = COCO(str(ann))
        except (ValueError, KeyError) as exc:
            raise DataError(f"annotations {ann} are not COCO JSON: {exc}") from None
        on_disk = {f.name: f for f in list_images(images)}
        entries = sorted(self.coco.dataset.get("images", []), key=lambda e: e["file_name"])
        self.image_ids: list[int] = [e["id"] for e in entries if Path(e["file_name"]).name in on_disk]
        self.files: list[Path] = [on_disk[Path(e["file_name"]).name] for e in entries if Path(e["file_name"]).name in on_disk]
        if not self.files:
            raise DataError(f"none of the images in {ann} are in {images}")
        self.root = Path(images)

    def __len__(self) -> int:
        return len(self.files)

    def target(self, i: int) -> dict[str, Tensor]:
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[self.image_ids[i]], iscrowd=None))
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
                "iscrowd": torch.tensor([a.get("iscrowd", 0) for a in anns], dtype=torch.int64),
                "image_id": torch.tensor(self.image_ids[i])}

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        return load_image(self.files[i]), self.target(i)

    def subset(self, indices: list[int]) -> "CocoImages":
        out = object.__new__(CocoImages)
        out.coco, out.root = self.coco, self.root
        out.image_ids = [self.image_ids[i] for i in indices]
        out.files = [self.files[i] for i in indices]
        return out


class _quiet:
    """pycocotools prints progress lines to stdout; a JSON-writing command wants them gone."""

    def __enter__(self) -> None:
        import contextlib
        import io

        self._cm = contextlib.redirect_stdout(io.StringIO())
        self._cm.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)


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

"""COCO annotations: the one reader (`CocoAnnotations`), and the images they describe (`CocoImages`).

Every offline tool that takes a COCO JSON reads it here: evaluation (mAP via pycocotools),
prefilter labels, fine-tuning targets. The file is read once into plain dicts; `index` is the
pycocotools object COCOeval needs, built on demand and without the progress lines pycocotools
prints on stdout (a JSON-writing command wants them gone). `coco_index` builds that object
from any dataset dict (evaluation makes ground truth of its own, e.g. the original model's
detections).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from split.images import load_image
from split.train.data import DataError, list_images

__all__ = ["CocoAnnotations", "CocoImages", "coco_index"]


def coco_index(dataset: dict[str, Any]) -> Any:
    """A pycocotools `COCO` over `dataset` (images, annotations, categories), built quietly."""
    from pycocotools.coco import COCO

    coco = COCO()  # COCO(path) would print its progress on stdout
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoAnnotations:
    """A COCO annotation file or dict: `images` and `categories` by id, annotations per image."""

    def __init__(self, dataset: dict[str, Any], source: str = "<dict>") -> None:
        if not isinstance(dataset, dict):
            raise DataError(f"annotations {source} are not COCO JSON: not an object")
        self.dataset, self.source = dataset, source
        try:
            self.images: dict[int, dict[str, Any]] = {int(im["id"]): im for im in dataset.get("images", [])}
            self.categories: dict[int, str] = {int(c["id"]): c["name"] for c in dataset.get("categories", [])}
            self.by_image: dict[int, list[dict[str, Any]]] = {i: [] for i in self.images}
            for a in dataset.get("annotations", []):
                self.by_image.setdefault(int(a["image_id"]), []).append(a)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"annotations {source} are not COCO JSON: {exc!r}") from None

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> "CocoAnnotations":
        p = Path(path)
        if not p.is_file():
            raise DataError(f"annotations {p} do not exist")
        try:
            dataset = json.loads(p.read_text())
        except ValueError as exc:
            raise DataError(f"annotations {p} are not COCO JSON: {exc}") from None
        return cls(dataset, str(p))

    @classmethod
    def of(cls, annotations: "str | os.PathLike[str] | dict[str, Any] | CocoAnnotations") -> "CocoAnnotations":
        """Annotations from a path, a dict, or as they are."""
        if isinstance(annotations, CocoAnnotations):
            return annotations
        return cls(annotations) if isinstance(annotations, dict) else cls.read(annotations)

    @cached_property
    def ids_by_name(self) -> dict[str, int]:
        """Image id by the base name of its `file_name`."""
        return {Path(im["file_name"]).name: i for i, im in self.images.items()}

    @cached_property
    def index(self) -> Any:
        """The pycocotools object (for COCOeval)."""
        return coco_index(self.dataset)

    def boxes(self, image_id: int, classes: list[int] | None = None) -> list[tuple[list[float], int]]:
        """(xyxy box, category id) of the image's non-crowd annotations at least 1 px wide and
        tall, of `classes` only when given: what a detector is trained on."""
        out = []
        for a in self.by_image.get(image_id, []):
            if a.get("iscrowd", 0) or (classes is not None and a["category_id"] not in classes):
                continue
            x, y, w, h = a["bbox"]
            if w >= 1 and h >= 1:
                out.append(([x, y, x + w, y + h], a["category_id"]))
        return out


class CocoImages:
    """COCO images with their annotations: image + target {boxes (xyxy), labels (category ids)}.

    Only images that are both in the JSON and in the folder are kept (coco128 ships 128 of the
    5000 val2017 images, say), sorted by file name. `annotations.index` is for COCOeval.
    """

    def __init__(self, images: str | os.PathLike[str], annotations: str | os.PathLike[str]) -> None:
        self.annotations = CocoAnnotations.read(annotations)
        on_disk = {f.name: f for f in list_images(images)}
        entries = sorted(self.annotations.images.values(), key=lambda e: e["file_name"])
        kept = [e for e in entries if Path(e["file_name"]).name in on_disk]
        self.image_ids: list[int] = [int(e["id"]) for e in kept]
        self.files: list[Path] = [on_disk[Path(e["file_name"]).name] for e in kept]
        if not self.files:
            raise DataError(f"none of the images in {annotations} are in {images}")
        self.root = Path(images)

    def __len__(self) -> int:
        return len(self.files)

    def target(self, i: int) -> dict[str, Tensor]:
        anns = self.annotations.by_image.get(self.image_ids[i], [])
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
                "iscrowd": torch.tensor([a.get("iscrowd", 0) for a in anns], dtype=torch.int64),
                "image_id": torch.tensor(self.image_ids[i])}

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        return load_image(self.files[i]), self.target(i)

    def subset(self, indices: list[int]) -> "CocoImages":
        out = object.__new__(CocoImages)
        out.annotations, out.root = self.annotations, self.root
        out.image_ids = [self.image_ids[i] for i in indices]
        out.files = [self.files[i] for i in indices]
        return out

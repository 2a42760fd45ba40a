"""Supervised fine-tuning of a detector on COCO-format data (`splitedge finetune`).

The split is distilled from a teacher; the teacher itself must first detect something. With
only the ImageNet backbone available offline, the detection heads start random and learn
here from the bundled COCO annotations. The validation part is chosen by file name with the
same rule as `splitedge train` and `splitedge eval --val-only` (`split.train.data.train_val_split`),
so distillation and evaluation hold out exactly the images fine-tuning never saw; the ids are
stored in the checkpoint too.

Why a class subset (`classes`): COCO128 holds 188 person boxes but at most ~30 of any other
class, too few to learn 80 classes from. Labels stay COCO category ids (a person-only model has
`num_classes` 2), so nothing downstream remaps them.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from split.images import load_image
from split.train.coco import CocoAnnotations, CocoImages
from split.train.data import train_val_split
from split.train.evaluation import coco_map, coco_results

__all__ = ["CocoDetection", "category_ids", "coco_split", "detection_map", "finetune_detector"]


def coco_split(images_dir: str | Path, annotations: str | Path, val_fraction: float,
               seed: int) -> tuple[list[int], list[int]]:
    """(train, val) image ids: `train_val_split` on the file names of the annotated images
    present in `images_dir`, the rule `splitedge train`/`eval --val-only` apply to the folder."""
    data = CocoImages(images_dir, annotations)
    train, val = train_val_split([f.name for f in data.files], val_fraction, seed)
    return sorted(data.image_ids[i] for i in train), sorted(data.image_ids[i] for i in val)


def category_ids(annotations: str | Path, names: list[str] | None) -> dict[int, str]:
    """{COCO category id: name} for `names` (all categories when None); unknown names raise."""
    cats = CocoAnnotations.read(annotations).categories
    if names is None:
        return cats
    by_name = {v: k for k, v in cats.items()}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise KeyError(f"unknown COCO categories {', '.join(map(repr, unknown))}")
    return {by_name[n]: n for n in names}


def detection_map(model: nn.Module, images_dir: str | Path, annotations: str | Path, image_ids: list[int],
                  classes: list[int] | None = None) -> tuple[float, float]:
    """(mAP@[.5:.95], mAP@.5) of `model` on `image_ids`, over `classes` only when given
    (a person detector is not scored on the 79 classes it never learned)."""
    data = CocoImages(images_dir, annotations)
    keep = [i for i, image_id in enumerate(data.image_ids) if image_id in set(image_ids)]
    data = data.subset(keep)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        outputs = [model([data[i][0]])[0] for i in range(len(data))]
    model.train(was_training)
    return coco_map(data.annotations.index, coco_results(outputs, data.image_ids), data.image_ids, classes)


class CocoDetection(torch.utils.data.Dataset):
    """COCO images with boxes as torchvision detectors take them (xyxy, category ids)."""

    def __init__(self, images_dir: str | Path, annotations: str | Path, ids: list[int] | None = None,
                 train: bool = False, classes: list[int] | None = None) -> None:
        coco = CocoAnnotations.read(annotations)
        self.images_dir = Path(images_dir)
        self.images = coco.images
        self.ids = sorted(ids if ids is not None else self.images)
        self.boxes: dict[int, list[tuple[list[float], int]]] = {i: coco.boxes(i, classes) for i in self.images}
        self.train = train

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        info = self.images[self.ids[k]]
        image = load_image(self.images_dir / info["file_name"])
        items = self.boxes[info["id"]]
        boxes = torch.tensor([b for b, _ in items], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([c for _, c in items], dtype=torch.int64)
        if self.train and random.random() < 0.5:  # horizontal flip
            image = image.flip(-1)
            w = image.shape[-1]
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        return image, {"boxes": boxes, "labels": labels, "image_id": torch.tensor(info["id"])}


def finetune_detector(model: nn.Module, train_set: CocoDetection, *, epochs: int = 30, batch_size: int = 4,
                      lr: float = 0.005, weight_decay: float = 1e-4, seed: int = 0,
                      scales: tuple[int, ...] = (256, 288, 320, 352),
                      on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """SGD with warm-up and cosine decay; returns the mean loss per epoch.

    `on_epoch(epoch, mean_loss)` runs after each epoch (e.g. a validation mAP every few)."""
    random.seed(seed)
    torch.manual_seed(seed)
    eval_sizes = model.transform.min_size
    model.transform.min_size = scales  # torchvision picks one at random per image in training
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, collate_fn=lambda b: tuple(zip(*b)),
                                         generator=torch.Generator().manual_seed(seed))
    total = epochs * len(loader)
    warmup = min(50, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: (it + 1) / warmup if it < warmup else 0.5 * (1 + math.cos(math.pi * (it - warmup) / max(total - warmup, 1))))
    history = []
    skipped = bad_in_a_row = 0
    model.train()
    bar = tqdm(total=total, desc="finetune", unit="batch")
    for epoch in range(epochs):
        losses = []
        for images, targets in loader:
            loss_dict = model(list(images), list(targets))
            loss = sum(loss_dict.values())
            opt.zero_grad()
            if not torch.isfinite(loss):  # a rare degenerate batch: skip it; a diverging run: stop
                skipped += 1
                bad_in_a_row += 1
                if bad_in_a_row >= 5:
                    raise FloatingPointError(f"loss is {loss.item()} for 5 batches in a row at epoch {epoch}: "
                                             "lower the learning rate")
                tqdm.write(f"finetune: non-finite loss at epoch {epoch}, batch skipped ({skipped} so far)")
                bar.update()
                continue
            bad_in_a_row = 0
            loss.backward()
            nn.utils.clip_grad_norm_(params, 10.0)  # random-init heads give a few huge early gradients
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses):.3f}")
            bar.update()
        history.append(float(np.mean(losses)))
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
            model.transform.min_size = scales
            model.train()
    bar.close()
    model.transform.min_size = eval_sizes
    model.eval()
    return history

"""Supervised fine-tuning of a detector on COCO-format data (`splitedge finetune`).

The split is distilled from a teacher; the teacher itself must first detect something. With
only the ImageNet backbone available offline, the detection heads start random and learn
here from the bundled COCO annotations. The validation part is chosen by image id and
stored in the checkpoint, so evaluation holds out exactly the images training never saw.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

__all__ = ["CocoDetection", "finetune_detector", "split_ids"]


def split_ids(image_ids: list[int], val_every: int = 4) -> tuple[list[int], list[int]]:
    """Deterministic train/val split: every `val_every`-th image (by sorted id) is held out."""
    ids = sorted(image_ids)
    val = [i for k, i in enumerate(ids) if k % val_every == 0]
    return [i for i in ids if i not in set(val)], val


class CocoDetection(torch.utils.data.Dataset):
    """COCO images with boxes as torchvision detectors take them (xyxy, category ids)."""

    def __init__(self, images_dir: str | Path, annotations: str | Path, ids: list[int] | None = None,
                 train: bool = False) -> None:
        data = json.loads(Path(annotations).read_text())
        self.images_dir = Path(images_dir)
        self.images = {im["id"]: im for im in data["images"]}
        self.ids = sorted(ids if ids is not None else self.images)
        self.boxes: dict[int, list[tuple[list[float], int]]] = {i: [] for i in self.images}
        for a in data["annotations"]:
            if a.get("iscrowd", 0) or a["image_id"] not in self.boxes:
                continue
            x, y, w, h = a["bbox"]
            if w >= 1 and h >= 1:
                self.boxes[a["image_id"]].append(([x, y, x + w, y + h], a["category_id"]))
        self.train = train

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        info = self.images[self.ids[k]]
        bgr = cv2.imread(str(self.images_dir / info["file_name"]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot read {self.images_dir / info['file_name']}")
        image = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1).float() / 255
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
                      scales: tuple[int, ...] = (256, 288, 320, 352)) -> list[float]:
    """SGD with warm-up and cosine decay; returns the mean loss per epoch."""
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
    model.train()
    bar = tqdm(total=total, desc="finetune", unit="batch")
    for epoch in range(epochs):
        losses = []
        for images, targets in loader:
            loss_dict = model(list(images), list(targets))
            loss = sum(loss_dict.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}: lower the learning rate")
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 10.0)  # random-init heads give a few huge early gradients
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses):.3f}")
            bar.update()
        history.append(float(np.mean(losses)))
    bar.close()
    model.transform.min_size = eval_sizes
    model.eval()
    return history

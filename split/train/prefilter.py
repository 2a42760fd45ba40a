"""Training the prefilter (`split.prefilter`): labels, features, the threshold, the metrics.

Choices, and why:

- **Binary cross-entropy with class balancing** (`pos_weight`) on the one logit: rare target
  classes weigh as much as the empty frames.
- **Features computed once**: the backbone is frozen, so each training image and three
  augmented views of it (mirror, two mild crops) go through the head once and are pooled to the
  filter's grid; the epochs touch only the small filter.
- **Adam instead of hnd-ghnd's SGD**: the same lr (1e-3) and epochs (30); with only a few
  hundred feature maps (what a CPU budget allows) 30 epochs are a few hundred steps, and
  Adam converges in that while plain SGD at 1e-3 would barely move (not measured here).
- **Threshold from the validation ROC at a minimum recall** (default 0.9), as hnd-ghnd: the
  ROC point with the highest threshold that still keeps `target_recall` of the validation
  positives; within the score gap that gives that same point, the threshold sits at the
  middle (in log-odds) rather than at the last kept positive, see `select_threshold`. The
  figures in the training report are measured on that same validation part, so they are
  optimistic; `auc` does not depend on the threshold.

What to expect: on a synthetic task (smooth empty frames against pasted objects, the tests)
even a random-init head's features give a perfect filter. On real COCO scenes the filter is
only as good as the features and the data: with 72 training images of COCO128 it ranks
"person present" at ROC-AUC about 0.5 on random-init features and 0.6-0.87 on ImageNet
MobileNetV2 features at its stride-8 split point; hnd-ghnd trains on all of COCO.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from split.api import SplitModel
from split.detections import detection_rows
from split.images import ImageLike, load_image
from split.prefilter import Prefilter, head_features
from split.train.coco import CocoAnnotations

__all__ = ["heldout_report", "labels_from_coco", "labels_from_teacher", "prefilter_metrics", "roc_auc",
           "select_threshold", "train_prefilter"]


# -- labels -----------------------------------------------------------------------------------
def labels_from_coco(annotation_json: str | os.PathLike[str] | dict[str, Any] | CocoAnnotations,
                     images: Sequence[int | str | os.PathLike[str]],
                     target_classes: Iterable[int] | None = None, min_area: float = 0) -> list[int]:
    """1 where an image has at least one non-crowd annotation of a target class, else 0.

    `images` are COCO image ids or file names/paths (matched by base name to `file_name`).
    `target_classes` are COCO category ids (None: any); `min_area` ignores annotations whose
    area (in pixels of the original image) is smaller, for "objects the detector can see".
    Crowd regions do not count: they are not objects a detector is scored on.
    """
    coco = CocoAnnotations.of(annotation_json)
    by_name = coco.ids_by_name
    targets = {int(c) for c in target_classes} if target_classes is not None else None
    out: list[int] = []
    for item in images:
        if isinstance(item, (int, np.integer)):
            image_id = int(item)
            if image_id not in coco.images:
                raise KeyError(f"image id {image_id} is not in the annotations")
        else:
            name = Path(item).name
            if name not in by_name:
                raise KeyError(f"image {name!r} is not in the annotations")
            image_id = by_name[name]
        anns = coco.by_image.get(image_id, [])
        hit = any(not a.get("iscrowd", 0) and (targets is None or int(a["category_id"]) in targets)
                  and float(a.get("area", math.inf)) >= min_area for a in anns)
        out.append(int(hit))
    return out


@torch.no_grad()
def labels_from_teacher(split_model: SplitModel, images: Sequence[ImageLike], score: float = 0.5,
                        target_classes: Iterable[int] | None = None, progress: bool = True) -> list[int]:
    """1 where the original (unsplit) model finds a target class with score >= `score`.

    No annotations needed: the filter then learns to predict "the edge would find something",
    which is exactly the decision it makes. For classifiers the top-k softmax scores count.
    """
    targets = {int(c) for c in target_classes} if target_classes is not None else None
    out: list[int] = []
    for image in tqdm(images, desc="teacher labels", disable=not progress, leave=False):
        rows = detection_rows(split_model.full(load_image(image)), split_model.family)
        out.append(int(any(s >= score and (targets is None or label in targets) for _, label, s in rows)))
    return out


# -- metrics ----------------------------------------------------------------------------------
def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN with one class."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    uniq, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    group_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each tie group
    ranks = group_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def select_threshold(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
                     target_recall: float = 0.9, midpoint: bool = True) -> float:
    """A threshold on P(object) at the ROC point with the highest threshold whose recall
    (fraction of positives with P >= t) is at least `target_recall`, as hnd-ghnd picks it.

    That point is set by the k-th highest positive score, k = ceil(target_recall * positives).
    Every t between the next lower validation score and that positive score gives the same
    decisions on validation (same recall, precision, drop rate). With `midpoint` (the default)
    t is placed halfway between the two in log-odds, so a new positive that scores a little
    below the last kept validation positive is not lost; this matters when the validation
    classes are separated by a wide gap, where the literal highest threshold sits at the gap's
    top edge. Without it, t is the k-th positive score itself (lowered by a hair, so the same
    frame recomputed in another batch with last-bit float differences is still kept).
    """
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    pos = np.sort(s[y])[::-1]
    if pos.size == 0:
        raise ValueError("cannot choose a threshold for a recall without positive frames")
    k = max(1, math.ceil(target_recall * pos.size - 1e-9))
    top = float(pos[k - 1])
    hair = top - 1e-6 * max(abs(top), 1e-6)
    below = s[s < top]
    if not midpoint or below.size == 0:
        return float(min(max(hair, 0.0), 1.0))
    eps = 1e-12
    lo, hi = float(np.clip(below.max(), eps, 1 - eps)), float(np.clip(top, eps, 1 - eps))
    mid_logit = 0.5 * (math.log(lo / (1 - lo)) + math.log(hi / (1 - hi)))
    return float(min(1.0 / (1.0 + math.exp(-mid_logit)), hair))


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else x


def _metrics(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float | None]:
    kept = probs >= threshold
    y = labels.astype(bool)
    tp = int((kept & y).sum())
    return {
        "recall": tp / int(y.sum()) if y.any() else None,
        "precision": tp / int(kept.sum()) if kept.any() else None,
        "drop_rate": float((~kept).mean()) if kept.size else None,
    }


def prefilter_metrics(prefilter: Prefilter, features_list: Sequence[Tensor],
                      labels: Sequence[int]) -> dict[str, float | None]:
    """recall (positives kept), precision (kept frames that are positive), drop_rate (frames
    filtered) at the prefilter's own threshold. A value that is undefined (no positives, no
    kept frame) is None rather than NaN so the dict goes into strict JSON as is."""
    if len(features_list) != len(labels):
        raise ValueError(f"{len(features_list)} feature maps but {len(labels)} labels")
    probs = np.array([float(prefilter.probability(f).item()) for f in features_list], dtype=np.float64)
    return _metrics(probs, np.asarray(labels, dtype=np.int64), float(prefilter.threshold))


@torch.no_grad()
def heldout_report(split_model: SplitModel, prefilter: Prefilter, images: Sequence[ImageLike], score: float = 0.5,
                   target_classes: Iterable[int] | None = None, progress: bool = True) -> dict[str, Any]:
    """The prefilter on images no training step, epoch choice or threshold saw, labelled by the
    teacher as in training: recall, precision, drop_rate at its threshold, and ROC-AUC.

    The training report's figures come from the part that chose the threshold (optimistic);
    these are the ones to quote."""
    labels = labels_from_teacher(split_model, images, score=score, target_classes=target_classes, progress=progress)
    probs = np.array([float(prefilter.probability(head_features(split_model, im)).item()) for im in images])
    y = np.asarray(labels, dtype=np.int64)
    return {**_metrics(probs, y, float(prefilter.threshold)), "auc": _none_if_nan(roc_auc(probs, y)),
            "images": int(y.size), "positive": int(y.sum())}


# -- training ---------------------------------------------------------------------------------
def _views(image: Tensor, augment: bool, rng: np.random.Generator) -> list[Tensor]:
    """The image, its mirror and two random crops (80-95 % of each side, mirrored or not).

    Crops are mild so an object present in the frame stays (mostly) in it and the frame's
    label still holds; mirrors never change the label.
    """
    if not augment:
        return [image]
    views = [image, image.flip(-1)]
    h, w = image.shape[-2:]
    for flip in (False, True):
        fh, fw = rng.uniform(0.8, 0.95, size=2)
        ch, cw = max(8, int(h * fh)), max(8, int(w * fw))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = image[..., top:top + ch, left:left + cw]
        views.append(crop.flip(-1) if flip else crop)
    return views


def _split(labels: np.ndarray, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation split by image: each class gives its share to validation
    (at least one frame when it has two or more), so the ROC has both classes when it can."""
    val: list[int] = []
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n = int(round(val_fraction * idx.size))
        if val_fraction > 0 and idx.size >= 2:
            n = min(max(n, 1), idx.size - 1)
        val.extend(idx[:n].tolist())
    val_idx = np.array(sorted(val), dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(labels.size), val_idx)
    return train_idx, val_idx


def train_prefilter(split_model: SplitModel, images: Sequence[ImageLike], labels: Sequence[int], *,
                    val_fraction: float = 0.25, epochs: int = 30, lr: float = 1e-3, seed: int = 0,
                    target_recall: float = 0.9, augment: bool = True,
                    target_classes: Iterable[int] | None = None, hidden: int = 32, grid: int = 32,
                    batch_size: int = 32, progress: bool = True) -> tuple[Prefilter, dict[str, Any]]:
    """Train a prefilter on frozen head features; returns it (threshold set) and a report.

    Features are computed once (the backbone is frozen), for each training image and three
    augmented views of it, then pooled to the grid, so the 30 epochs touch only the small
    filter. Validation uses the plain images. The epoch with the best validation ROC-AUC is
    kept (ties and one-class validation: lowest validation loss), then the threshold is set at
    the validation ROC point with the highest threshold reaching `target_recall`
    (`select_threshold`). `target_classes` only stamps the filter (labels are already made).
    The report holds recall, precision, drop_rate, threshold and auc on the validation part
    (optimistic: the threshold was chosen there), the sizes and the split's indices.
    Labels and images are matched by position; the split is stratified and seeded.
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    if len(images) != y.size:
        raise ValueError(f"{len(images)} images but {y.size} labels")
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise ValueError("labels must be 0 (nothing to send) or 1 (object of a target class)")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    train_idx, val_idx = _split(y, val_fraction, rng)
    if y[train_idx].min(initial=1) == 1 or y[train_idx].max(initial=0) == 0:
        raise ValueError(f"training part needs frames of both classes; labels have {int(y.sum())} positive "
                         f"and {int((1 - y).sum())} negative frames")

    train_x: list[Tensor] = []
    train_y: list[int] = []
    val_x: list[Tensor] = []
    probe = Prefilter(split_model.split_channels, hidden=hidden, grid=grid)
    order = [(int(i), True) for i in train_idx] + [(int(i), False) for i in val_idx]
    for i, is_train in tqdm(order, desc="prefilter features", disable=not progress, leave=False):
        image = load_image(images[i])
        for view in _views(image, augment and is_train, rng):
            pooled = probe.pool(head_features(split_model, view))
            (train_x if is_train else val_x).append(pooled)
            if is_train:
                train_y.append(int(y[i]))
    xt = torch.cat(train_x)
    yt = torch.tensor(train_y, dtype=torch.float32)
    xv = torch.cat(val_x) if val_x else torch.empty(0, *xt.shape[1:])
    yv = y[val_idx]

    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's RNG
        torch.manual_seed(seed)
        pf = Prefilter(split_model.split_channels, hidden=hidden, target_classes=target_classes, grid=grid)
        pf.feature_mean.copy_(xt.mean(dim=(0, 2, 3)))
        std = xt.std(dim=(0, 2, 3))
        pf.feature_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))
        n_pos = float(yt.sum())
        n_neg = float(yt.numel() - n_pos)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(n_neg / n_pos))
        opt = torch.optim.Adam(pf.parameters(), lr=lr, weight_decay=1e-4)
        gen = torch.Generator().manual_seed(seed)
        best: tuple[float, float] = (-math.inf, -math.inf)
        best_state: dict[str, Tensor] = copy.deepcopy(pf.state_dict())
        best_epoch = 0
        bar = tqdm(range(1, epochs + 1), desc="prefilter training", disable=not progress, leave=False)
        for epoch in bar:
            pf.train()
            perm = torch.randperm(xt.shape[0], generator=gen)
            for b in range(0, perm.numel(), batch_size):
                idx = perm[b:b + batch_size]
                loss = loss_fn(pf.forward_pooled(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            pf.eval()
            with torch.no_grad():
                if len(yv):
                    logits = pf.forward_pooled(xv)
                    val_loss = float(loss_fn(logits, torch.tensor(yv, dtype=torch.float32)))
                    auc = roc_auc(torch.sigmoid(logits).numpy(), yv)
                else:  # no validation part: select on the training views
                    logits = pf.forward_pooled(xt)
                    val_loss = float(loss_fn(logits, yt))
                    auc = roc_auc(torch.sigmoid(logits).numpy(), yt.numpy())
            key = (auc if not math.isnan(auc) else -math.inf, -val_loss)
            if key > best:
                best, best_state, best_epoch = key, copy.deepcopy(pf.state_dict()), epoch
            bar.set_postfix(auc=f"{auc:.3f}", val_loss=f"{val_loss:.3f}")
        pf.load_state_dict(best_state)
    pf.eval()

    with torch.no_grad():
        if len(yv) and yv.any():
            sel_probs, sel_labels, on = torch.sigmoid(pf.forward_pooled(xv)).numpy(), yv, "validation"
        else:  # no validation positives: the threshold can only come from the training views
            sel_probs, sel_labels, on = torch.sigmoid(pf.forward_pooled(xt)).numpy(), yt.numpy().astype(np.int64), "train"
    pf.threshold.fill_(select_threshold(sel_probs, sel_labels, target_recall))
    threshold = float(pf.threshold)  # the stored (float32) value is the one `keep` compares with
    report: dict[str, Any] = {
        **_metrics(sel_probs.astype(np.float64), sel_labels, threshold),
        "threshold": threshold,
        "auc": _none_if_nan(roc_auc(sel_probs, sel_labels)),
        "measured_on": on,
        "target_recall": target_recall,
        "best_epoch": best_epoch,
        "epochs": epochs,
        "n_train": int(train_idx.size),
        "n_val": int(val_idx.size),
        "n_train_views": int(xt.shape[0]),
        "train_positive": int(y[train_idx].sum()),
        "val_positive": int(yv.sum()),
        "train_idx": train_idx.tolist(),
        "val_idx": val_idx.tolist(),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return pf, report

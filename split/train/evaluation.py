"""`splitedge eval`: accuracy of the original, the split and the JPEG offload paths, side by side.

DESIGN.md §4: a split model's accuracy is only meaningful beside the original model's on the
same images, and its bytes beside a JPEG of the same input. So every image goes through

- **original**: the unsplit model (`SplitModel.full`), 0 bytes;
- **split**: head + bottleneck + 8-bit codec on the device, the serialized `Payload` message
  (what really crosses the network, header included) decoded by the edge (`SplitModel.decode`);
  one entry per `--checkpoint`, to draw a bytes/accuracy curve;
- **offload.qNN**: JPEG at quality NN of the model's *own* input (`encode_image`: the
  classifier's 256-resize + 224 center crop, the detector's resize), decoded on the edge and
  run through the full model — the fair baseline, since JPEG of the camera frame would pay for
  pixels the model throws away.

Accuracy: classifiers report `top1` (against labels, when given) and `top1_agreement` (against
the original's top-1 on the same image); detectors report COCO `map` and `map50` via
pycocotools (torchvision's COCO label ids are COCO category ids, so no remapping; a detector
fine-tuned on a class subset, e.g. person only, is scored on those classes only), and
`map_vs_original`: the original's detections with score >= 0.5 taken as ground truth, which
measures what the split loses without needing labels.

`prefilter`: when the (first) checkpoint holds a "prefilter" state, its recall/precision/drop
rate and ROC-AUC on these images, against the labels it was trained on: the original model's
detections at the score `splitedge prefilter` recorded (or when there are no annotations), else
the COCO annotations; otherwise null. The split's accuracy
is measured on every frame, the prefilter switched off, so the two figures stay separate.

JSON layout (documented in issue 3, item 4; extra keys are additions, never renames):

```
{"model", "checkpoints", "weights", "images", "family",
 "original": {"payload_bytes_median": 0, "top1"|"map","map50", "top1_agreement"?},
 "split": {"payload_bytes_median", <accuracy>, "top1_agreement" | "map_vs_original", "checkpoint", "bottleneck"},
 "curve": [<one "split" entry per checkpoint>],
 "offload": {"q50": {...}, "q75": {...}, "q90": {...}},
 "prefilter": {"recall", "precision", "drop_rate", "auc", "positive", "labels"} | null}
```
With `--bootstrap N`, detector split/offload entries also hold `map_ratio_ci95`: [lo, hi].
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from split.api import SplitModel
from split.detections import detection_rows
from split.images import load_image
from split.prefilter import head_features, load_prefilter
from split.train.coco import CocoImages, coco_index
from split.train.data import DataError, LabeledImages, train_val_split
from split.train.prefilter import labels_from_coco, labels_from_teacher, prefilter_metrics, roc_auc
from split.weights import load_checkpoint

__all__ = ["DEFAULT_QUALITIES", "EvalImages", "coco_map", "coco_results", "detached", "evaluate", "format_summary",
           "map_ratio_ci", "measure_accuracy", "plot"]

DEFAULT_QUALITIES = (50, 75, 90)
GT_SCORE = 0.5  # the original's detections at or above this score are the ground truth of map_vs_original


# -- accuracy ---------------------------------------------------------------------------------
def _top1(outputs: list[dict[str, Tensor]]) -> list[int]:
    return [int(o["labels"][0]) for o in outputs]


def _classifier_accuracy(preds: list[int], labels: list[int] | None, reference: list[int]) -> dict[str, float | None]:
    n = len(preds)
    out: dict[str, float | None] = {"top1": None}
    if labels is not None and n:
        out["top1"] = sum(p == y for p, y in zip(preds, labels)) / n
    out["top1_agreement"] = sum(p == r for p, r in zip(preds, reference)) / n if n else None
    return out


def coco_results(outputs: list[dict[str, Tensor]], image_ids: list[int]) -> list[dict[str, Any]]:
    res = []
    for out, image_id in zip(outputs, image_ids):
        for (x0, y0, x1, y1), label, score in detection_rows(out, "detector"):
            res.append({"image_id": int(image_id), "category_id": int(label),
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
    return res


def coco_map(gt: Any, results: list[dict[str, Any]], image_ids: list[int],
             classes: list[int] | None = None) -> tuple[float, float]:
    """(mAP@[.5:.95], mAP@.5) of `results` against the COCO object `gt`, on `image_ids` only,
    and on the category ids `classes` only when given (the classes the detector was trained on)."""
    from pycocotools.cocoeval import COCOeval

    if not results or not gt.dataset.get("annotations"):
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = list(image_ids)
        if classes is not None:
            ev.params.catIds = sorted(classes)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [0.0 if s < 0 else float(s) for s in ev.stats[:2]]  # -1: no ground truth in the selection
    return stats[0], stats[1]


def _gt_from_outputs(outputs: list[dict[str, Tensor]], image_ids: list[int], sizes: list[tuple[int, int]]) -> Any:
    """A pycocotools COCO object whose ground truth is the original's confident detections."""
    anns, cats = [], set()
    for out, image_id in zip(outputs, image_ids):
        for (x0, y0, x1, y1), label, score in detection_rows(out, "detector"):
            if score < GT_SCORE:
                continue
            anns.append({"id": len(anns) + 1, "image_id": int(image_id), "category_id": int(label),
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": max(0.0, (x1 - x0) * (y1 - y0)), "iscrowd": 0})
            cats.add(int(label))
    return coco_index({"images": [{"id": int(i), "height": h, "width": w} for i, (h, w) in zip(image_ids, sizes)],
                       "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in sorted(cats)]})


def _resampled_gt(gt: Any, source_ids: list[int]) -> Any:
    """`gt` over `source_ids` (repeats allowed), renumbered 1..n: one bootstrap replicate."""
    images, anns = [], []
    for new_id, sid in enumerate(source_ids, 1):
        images.append({**gt.imgs[sid], "id": new_id})
        anns += [{**a, "id": len(anns) + k + 1, "image_id": new_id} for k, a in enumerate(gt.imgToAnns[sid])]
    return coco_index({"images": images, "annotations": anns, "categories": gt.dataset["categories"]})


def map_ratio_ci(gt: Any, image_ids: list[int], reference: list[dict[str, Tensor]],
                 candidates: dict[str, list[dict[str, Tensor]]], classes: list[int] | None = None,
                 replicates: int = 200, seed: int = 0) -> dict[str, list[float] | None]:
    """95 % bootstrap interval of mAP(candidate) / mAP(reference), images resampled with
    replacement and the same resamples for every candidate (paired).

    With a few dozen held-out images a split's mAP ratio moves by tens of percent from one
    image draw to another; the interval says whether "≥ 0.9 × original" is a finding or luck.
    Replicates where the reference scores 0 are skipped; None when none is left.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    ratios: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(replicates):
        idx = rng.integers(0, len(image_ids), len(image_ids)).tolist()
        sample = _resampled_gt(gt, [image_ids[i] for i in idx])
        new_ids = list(range(1, len(idx) + 1))
        ref = coco_map(sample, coco_results([reference[i] for i in idx], new_ids), new_ids, classes)[0]
        if ref <= 0:
            continue
        for name, outputs in candidates.items():
            got = coco_map(sample, coco_results([outputs[i] for i in idx], new_ids), new_ids, classes)[0]
            ratios[name].append(got / ref)
    return {name: ([round(float(np.percentile(r, 2.5)), 3), round(float(np.percentile(r, 97.5)), 3)] if r else None)
            for name, r in ratios.items()}


# -- the run ----------------------------------------------------------------------------------
class EvalImages:
    """What eval iterates: images, and labels (classifier) or COCO targets (detector)."""

    def __init__(self, images: str, annotations: str | None, labels: str | None) -> None:
        self.coco: CocoImages | None = None
        self.folder: LabeledImages | None = None
        if annotations:
            self.coco = CocoImages(images, annotations)
            self.files = self.coco.files
        else:
            self.folder = LabeledImages.from_folder(images, labels)
            self.files = self.folder.files

    def keep(self, indices: list[int]) -> None:
        if self.coco is not None:
            self.coco = self.coco.subset(indices)
            self.files = self.coco.files
        else:
            assert self.folder is not None
            self.folder = self.folder.subset(indices)
            self.files = self.folder.files

    @property
    def labels(self) -> list[int] | None:
        return self.folder.labels if self.folder is not None else None

    @property
    def image_ids(self) -> list[int]:
        return self.coco.image_ids if self.coco is not None else list(range(1, len(self.files) + 1))


def measure_accuracy(outputs: list[dict[str, Tensor]], originals: list[dict[str, Tensor]], data: EvalImages,
                     base: SplitModel, sizes: list[tuple[int, int]], vs_original: bool) -> dict[str, Any]:
    """The accuracy entry of `outputs` on `data`'s images (in order): classifiers `top1`, `top1_agreement`
    with `originals`; detectors `map`, `map50` (on `base.classes` only, when it has a subset) and, with
    `vs_original`, `map_vs_original`. `sizes`: each image's (height, width)."""
    if base.family == "classifier":
        return _classifier_accuracy(_top1(outputs), data.labels, _top1(originals))
    acc: dict[str, Any] = {"map": None, "map50": None}
    ids = data.image_ids
    if data.coco is not None:
        classes = sorted(base.classes) if base.classes is not None else None
        acc["map"], acc["map50"] = coco_map(data.coco.annotations.index, coco_results(outputs, ids), ids, classes)
    if vs_original:
        gt = _gt_from_outputs(originals, ids, sizes)
        acc["map_vs_original"] = coco_map(gt, coco_results(outputs, ids), ids)[0] if gt.dataset["annotations"] else None
    return acc


def _median(values: list[int]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _prefilter_section(checkpoint: str | None, model: SplitModel, data: EvalImages,
                       images: list[Tensor]) -> dict[str, float | None] | None:
    """The checkpoint's prefilter on these images; null unless it holds a "prefilter" state."""
    if checkpoint is None:
        return None
    ckpt = load_checkpoint(checkpoint)
    state = ckpt.get("prefilter")
    if state is None:
        return None
    pf = load_prefilter(state, model.split_channels)
    # Scored against what it learned: the teacher's detections when those were its labels
    # (`splitedge prefilter` without --annotations records the score), else the annotations.
    trained_on = (ckpt.get("prefilter_report") or {}).get("labels") or {}
    if trained_on.get("source") == "teacher" or data.coco is None:
        score = float(trained_on.get("score", 0.5))
        labels = labels_from_teacher(model, images, score=score, target_classes=pf.classes, progress=False)
        source = f"teacher, score >= {score:g}"
    else:
        labels = labels_from_coco(data.coco.annotations, data.coco.image_ids, target_classes=pf.classes)
        source = "annotations"
    feats = [head_features(model, img) for img in images]
    m = prefilter_metrics(pf, feats, labels)
    probs = [float(pf.probability(f).item()) for f in feats]
    auc = roc_auc(probs, labels)
    return {"recall": m.get("recall"), "precision": m.get("precision"), "drop_rate": m.get("drop_rate"),
            "auc": None if auc != auc else auc, "positive": int(sum(labels)), "labels": source}


def evaluate(model: str, images: str | os.PathLike[str], checkpoints: list[str] | None = None,
             weights: str | None = None, annotations: str | None = None, labels: str | None = None,
             val_only: tuple[float, int] | None = None, qualities: tuple[int, ...] = DEFAULT_QUALITIES,
             limit: int | None = None, progress: bool = True, bootstrap: int = 0, part: str = "val",
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run original, split (one per checkpoint) and JPEG offload on the images; the JSON dict.

    `val_only` = (val_fraction, seed) keeps only the held-out part of a training split (the
    same rule as `splitedge train`, see `split.train.data.train_val_split`); with `part` "train", the
    part it trained on instead (where checkpoints may be compared). `limit` keeps the first
    N images (after the split), for quick looks. With several checkpoints, "original" and
    "offload" use the first checkpoint's network (they differ only if a checkpoint replaces
    the whole model, e.g. a fine-tuned detector). `bootstrap` = N > 0 adds, for a detector with
    annotations, `map_ratio_ci95` (`map_ratio_ci`, N replicates) to each split and offload entry.
    """
    from tqdm import tqdm

    from split.recipes import build

    log = log or (lambda s: print(s, file=sys.stderr))
    data = EvalImages(str(images), annotations, labels)
    if val_only is not None:
        if part not in ("train", "val"):
            raise ValueError(f"part must be 'train' or 'val', got {part!r}")
        train_idx, val_idx = train_val_split([f.name for f in data.files], val_only[0], val_only[1])
        data.keep(val_idx if part == "val" else train_idx)
    if limit is not None:
        data.keep(list(range(min(limit, len(data.files)))))
    if not data.files:
        raise DataError("no images left to evaluate")
    ckpts: list[str | None] = list(checkpoints) if checkpoints else [None]
    models: list[tuple[SplitModel, str]] = [build(model, weights=weights, checkpoint=c) for c in ckpts]
    for sm, _ in models:
        sm.prefilter = None  # the split is scored on every frame; the prefilter on its own below
    base = models[0][0]
    family = base.family
    if family == "detector" and data.coco is None and annotations is None:
        log("eval: a detector without --annotations reports only map_vs_original")
    log(f"eval {model} on {len(data.files)} images: " + "; ".join(src for _, src in models))

    originals: list[dict[str, Tensor]] = []
    splits: list[list[dict[str, Tensor]]] = [[] for _ in models]
    split_bytes: list[list[int]] = [[] for _ in models]
    offload: dict[int, list[dict[str, Tensor]]] = {q: [] for q in qualities}
    offload_bytes: dict[int, list[int]] = {q: [] for q in qualities}
    sizes: list[tuple[int, int]] = []
    loaded: list[Tensor] = []
    began = time.monotonic()
    keep_images = ckpts[0] is not None and "prefilter" in load_checkpoint(ckpts[0])  # only the prefilter needs them

    for path in tqdm(data.files, desc="eval", unit="image", file=sys.stderr, disable=not progress, mininterval=5):
        img = load_image(path)
        sizes.append((int(img.shape[-2]), int(img.shape[-1])))
        with torch.inference_mode():
            originals.append(detached(base.full(img)))
            for i, (sm, _) in enumerate(models):
                payload = sm.encode([img])[0]
                split_bytes[i].append(len(payload))
                splits[i].append(detached(sm.decode(payload)))
            for q in qualities:
                payload = base.encode_image(img, q).SerializeToString()
                offload_bytes[q].append(len(payload))
                offload[q].append(detached(base.decode(payload)))
        if keep_images:
            loaded.append(img)

    def accuracy(outputs: list[dict[str, Tensor]], vs_original: bool) -> dict[str, Any]:
        return measure_accuracy(outputs, originals, data, base, sizes, vs_original)

    result: dict[str, Any] = {
        "model": model, "family": family, "weights": weights, "images": len(data.files),
        "classes": sorted(base.classes.values()) if base.classes is not None else None,
        "image_dir": str(images), "val_only": val_only is not None and part == "val",
        "part": (part if val_only is not None else "all"),
        "checkpoints": [c for c in ckpts if c is not None],
        "original": {"payload_bytes_median": 0, **accuracy(originals, False)},
    }
    curve = []
    for (sm, _), outs, nbytes, ckpt in zip(models, splits, split_bytes, ckpts):
        entry = {"payload_bytes_median": _median(nbytes), **accuracy(outs, True),
                 "checkpoint": ckpt, "bottleneck": sm.bottleneck.spec() if sm.bottleneck is not None else None,
                 "split_point": sm.at, "codec": sm.codec.name}
        curve.append(entry)
    result["split"] = curve[0]
    result["curve"] = curve
    result["offload"] = {f"q{q}": {"payload_bytes_median": _median(offload_bytes[q]), **accuracy(offload[q], True)}
                         for q in qualities}
    if bootstrap > 0 and family == "detector" and data.coco is not None:
        entries = {f"split{i}": e for i, e in enumerate(curve)} | {f"q{q}": result["offload"][f"q{q}"] for q in qualities}
        outputs = {f"split{i}": o for i, o in enumerate(splits)} | {f"q{q}": offload[q] for q in qualities}
        classes = sorted(base.classes) if base.classes is not None else None
        intervals = map_ratio_ci(data.coco.annotations.index, data.image_ids, originals, outputs, classes, replicates=bootstrap)
        for name, entry in entries.items():
            entry["map_ratio_ci95"] = intervals[name]
    result["prefilter"] = _prefilter_section(ckpts[0], models[0][0], data, loaded) if ckpts[0] else None
    result["wall_s"] = round(time.monotonic() - began, 1)
    return result


def detached(out: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in out.items() if k in ("boxes", "labels", "scores")}


# -- the figure -------------------------------------------------------------------------------
def _metric(result: dict[str, Any]) -> tuple[str, str]:
    if result["family"] == "classifier":
        return ("top1", "top-1") if result["original"].get("top1") is not None else ("top1_agreement", "top-1 agreement with original")
    return ("map", "mAP") if result["original"].get("map") is not None else ("map_vs_original", "mAP vs original's detections")


def plot(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Accuracy against bytes per frame: split points (one per checkpoint) vs JPEG offload,
    with the original as a horizontal line (it sends nothing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, label = _metric(result)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    orig = result["original"].get(key)
    if orig is None and key == "map_vs_original":
        orig = 1.0
    if orig is None and key == "top1_agreement":
        orig = 1.0
    if orig is not None:
        ax.axhline(orig, color="gray", linestyle="--", label=f"original ({orig:.3f})")
    jpeg = sorted(((v["payload_bytes_median"], v.get(key), q) for q, v in result["offload"].items()))
    ax.plot([b for b, _, _ in jpeg], [a for _, a, _ in jpeg], "s-", color="tab:orange", label="offload: JPEG of the model input")
    for b, a, q in jpeg:
        if a is not None:
            ax.annotate(q, (b, a), textcoords="offset points", xytext=(4, -10), fontsize=8)
    pts = sorted(((e["payload_bytes_median"], e.get(key), e.get("bottleneck")) for e in result["curve"]),
                 key=lambda t: t[0])
    ax.plot([b for b, _, _ in pts], [a for _, a, _ in pts], "o-", color="tab:blue",
            label=f"split at {result['split']['split_point']} (8-bit bottleneck)")
    for b, a, spec in pts:
        if a is not None and spec:
            ax.annotate(f"{spec['channels']} ch" + (f", 1/{2 ** spec['downsample']} res" if spec.get("downsample") else ""),
                        (b, a), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("payload bytes per frame (median)")
    ax.set_ylabel(label)
    ax.set_title(f"{result['model']}: {result['images']} images" + (" (held out)" if result.get("val_only") else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal: each path's bytes and accuracy."""
    key, _ = _metric(result)

    def acc(e: dict[str, Any]) -> str:
        v = e.get(key)
        extra = ""
        if "top1_agreement" in e and key != "top1_agreement" and e["top1_agreement"] is not None:
            extra = f" (agreement {e['top1_agreement']:.3f})"
        if e.get("map_vs_original") is not None and key != "map_vs_original":
            extra = f" (vs original {e['map_vs_original']:.3f})"
        if e.get("map_ratio_ci95"):
            lo, hi = e["map_ratio_ci95"]
            extra += f", mAP/original 95% CI {lo:.2f}-{hi:.2f}"
        return ("n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}") + extra

    rows = [f"original            0 B  {key} {acc(result['original'])}"]
    for e in result["curve"]:
        name = Path(e["checkpoint"]).stem if e["checkpoint"] else "split (no checkpoint)"
        rows.append(f"{name:<18} {e['payload_bytes_median']:>6.0f} B  {key} {acc(e)}")
    for q, e in result["offload"].items():
        rows.append(f"{'jpeg ' + q:<18} {e['payload_bytes_median']:>6.0f} B  {key} {acc(e)}")
    return "\n".join(rows)

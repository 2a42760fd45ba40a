"""`splitedge rd`: the rate–accuracy curve, accuracy against the bytes a frame costs on the wire.

Every image goes through each method as one `Frame` message (`protos`: `Frame(frame_id=i,
payload=...)`, `i` the image's index, as a file source numbers its frames), and the edge's
outputs for it are scored:

- **each `--checkpoint`**: the split model `split.recipes.build` makes of it, `encode_message`
  then `decode` of the serialized payload. Method: the codec's kind (`8bit` for uint8), or
  `entropy` for a bottleneck with its own entropy coder, recognised by its `estimated_bytes(x)`
  (the coder's estimate from the likelihoods, reported beside the real bytes as
  `estimate_bytes_median`); setting: the file's stem.
- **JPEG at each quality**: `SplitModel.encode_image` then `decode`, the real offload path.
- **WebP at each quality**: the same resized input (`adapter.resize`) through
  `bottlenecks.WebpCodec`, in a `Payload` with JPEG's fields (to count its bytes: the edge
  serves no WebP), decoded here and run through `adapter.full_on_resized`, which is what
  `decode` does with a JPEG.

Accuracy is `splitedge eval`'s (`evaluation.measure_accuracy`, the same images, the first
checkpoint's network as the original). The `accuracy` column is the primary metric: `map`
(detectors with `--annotations`) else `map_vs_original`; `top1` (classifiers with `--labels`)
else `top1_agreement`. The original sends nothing, so it is not a row: its accuracy is a line on
the plot and a key of rd.json (1.0 when the metric is agreement with it).

Bytes: the whole serialized Frame, median and mean over the images; `payload_data_bytes_median`
is the tensor's (or image file's) data alone, so the difference is the framing.

`--val-only` keeps the images a training run held out (`train_val_split`, as `eval --val-only`):
the rule (val_fraction, seed) comes from `--config`, else from the training config the
checkpoints record, which must agree.

Importing `protos` here for `Frame` goes one message beyond `split`'s exception in DESIGN.md §2
(`Payload`): the curve's bytes are the stream's, and only `protos` knows that framing.
"""

from __future__ import annotations

import csv
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bottlenecks import TensorCodec, WebpCodec
from protos import splitedge_pb2 as pb
from split.api import SplitModel
from split.images import load_image
from split.messages import from_message, size_message, tensor_message
from split.train.config import ConfigError, DataConfig, load_config
from split.train.data import DataError, train_val_split
from split.train.evaluation import EvalImages, detached, measure_accuracy
from split.weights import load_checkpoint

__all__ = ["COLUMNS", "DEFAULT_QUALITIES", "held_out_rule", "plot", "rate_accuracy", "write_csv"]

DEFAULT_QUALITIES = (10, 25, 50, 75, 90, 95)
COLUMNS = ("method", "setting", "bytes_median", "bytes_mean", "accuracy", "accuracy_metric", "map", "map50",
           "map_vs_original", "top1", "top1_agreement", "payload_data_bytes_median", "estimate_bytes_median",
           "source")
_ACCURACY_KEYS = ("map", "map50", "map_vs_original", "top1", "top1_agreement")
_CODEC_METHODS = {"uint8": "8bit", "float16": "float16", "float32": "float32"}
_METRIC_LABELS = {"map": "mAP (COCO, pycocotools)", "map_vs_original": "mAP vs the original's detections",
                  "top1": "top-1", "top1_agreement": "top-1 agreement with the original"}


@dataclass
class _Series:
    """One method at one setting: per image, the Frame's bytes, its data bytes, the coder's
    estimate (entropy-coded checkpoints only) and the outputs the edge computed."""

    method: str
    setting: str
    source: str
    frame_bytes: list[int] = field(default_factory=list)
    data_bytes: list[int] = field(default_factory=list)
    estimates: list[float] = field(default_factory=list)
    outputs: list[dict[str, Tensor]] = field(default_factory=list)

    def add(self, frame_id: int, payload: pb.Payload, outputs: dict[str, Tensor], estimate: float | None) -> None:
        self.frame_bytes.append(len(pb.Frame(frame_id=frame_id, payload=payload).SerializeToString()))
        self.data_bytes.append(len(payload.tensor.data))
        if estimate is not None:
            self.estimates.append(estimate)
        self.outputs.append(detached(outputs))


# -- one frame per method -------------------------------------------------------------------------
def method_of(sm: SplitModel) -> str:
    """The curve a checkpoint belongs to: its codec's kind, or "entropy" when its bottleneck
    entropy-codes (unless the codec's own name says more than a plain 8-bit/float one)."""
    codec = sm.codec.name
    if getattr(sm.bottleneck, "estimated_bytes", None) is not None:
        return "entropy" if codec in _CODEC_METHODS else codec
    return _CODEC_METHODS.get(codec, codec)


def _split_frame(sm: SplitModel, image: Tensor) -> tuple[pb.Payload, dict[str, Tensor], float | None]:
    msg = sm.encode_message(image)  # never None: the prefilter is off
    outputs = sm.decode(msg.SerializeToString())
    estimate = getattr(sm.bottleneck, "estimated_bytes", None)
    if estimate is None:
        return msg, outputs, None
    with torch.inference_mode():  # the encoder's input: the head's features (the image, for a student that replaces it)
        return msg, outputs, float(estimate(sm.head.chain(sm.adapter.preprocess(image).tensor)))


def _jpeg_frame(base: SplitModel, image: Tensor, quality: int) -> tuple[pb.Payload, dict[str, Tensor], None]:
    msg = base.encode_image(image, quality)
    return msg, base.decode(msg.SerializeToString()), None


def _image_frame(base: SplitModel, image: Tensor, codec: TensorCodec) -> tuple[pb.Payload, dict[str, Tensor], None]:
    """Offload through an image codec the edge does not serve: `encode_image`'s message with
    `codec`'s bytes, then what `decode` does with a JPEG (the codec's decode of the message's
    tensor, the full model on it). With `JpegCodec` it equals `_jpeg_frame` (a test checks)."""
    resized = base.adapter.resize(image)
    enc = codec.encode(resized)
    msg = pb.Payload(model=base.name, tensor=tensor_message(enc), original_size=size_message(image.shape[-2:]))
    decoded = codec.decode(from_message(msg.tensor))
    original = (int(msg.original_size.height), int(msg.original_size.width))
    return msg, base.adapter.full_on_resized(decoded, original), None


# -- the run ----------------------------------------------------------------------------------
def held_out_rule(config: str | os.PathLike[str] | None, checkpoints: list[str]) -> tuple[float, int]:
    """(val_fraction, seed) of the training split `--val-only` keeps the held-out part of:
    `config`'s, else the one the checkpoints' recorded training configs agree on."""
    if config is not None:
        cfg = load_config(config)
        return cfg.data.val_fraction, cfg.data.seed
    rules: dict[str, tuple[float, int]] = {}
    for path in checkpoints:
        data = (load_checkpoint(path).get("config") or {}).get("data")
        if isinstance(data, dict):
            rules[path] = (float(data.get("val_fraction", DataConfig.val_fraction)),
                           int(data.get("seed", DataConfig.seed)))
    if not rules:
        raise ConfigError("--val-only needs --config (the training recipe that held the images out): "
                          "no checkpoint records its training config")
    if len(set(rules.values())) > 1:
        found = ", ".join(f"{Path(p).name}: val_fraction {f:g}, seed {s}" for p, (f, s) in rules.items())
        raise ConfigError(f"--val-only: the checkpoints held out different images ({found}); choose one with --config")
    return next(iter(rules.values()))


def _primary_metric(family: str, data: EvalImages) -> str:
    if family == "classifier":
        return "top1" if data.labels is not None else "top1_agreement"
    return "map" if data.coco is not None else "map_vs_original"


def _median(values: list[int] | list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def rate_accuracy(model: str, images: str | os.PathLike[str], checkpoints: list[str], weights: str | None = None,
                  annotations: str | None = None, labels: str | None = None,
                  val_only: tuple[float, int] | None = None, qualities: tuple[int, ...] = DEFAULT_QUALITIES,
                  limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Every checkpoint, JPEG and WebP at every quality, on the images: the rd.json dict, whose
    "rows" are rd.csv's. `val_only` = (val_fraction, seed): the held-out part only; `limit`: the
    first N images (after the split)."""
    from tqdm import tqdm

    from split.recipes import build

    if not checkpoints:
        raise DataError("at least one --checkpoint is needed")
    data = EvalImages(str(images), annotations, labels)
    if val_only is not None:
        data.keep(train_val_split([f.name for f in data.files], val_only[0], val_only[1])[1])
    if limit is not None:
        data.keep(list(range(min(limit, len(data.files)))))
    if not data.files:
        raise DataError("no images left to measure")
    built = [build(model, weights=weights, checkpoint=c) for c in checkpoints]
    print(f"rd {model} on {len(data.files)} images: " + "; ".join(src for _, src in built), file=sys.stderr)
    models = [sm for sm, _ in built]
    for sm in models:
        sm.prefilter = None  # every frame is sent and scored
    base = models[0]  # the original and the offload paths run on the first checkpoint's network
    splits = [_Series(method_of(sm), Path(c).stem, str(c)) for sm, c in zip(models, checkpoints)]
    jpeg = {q: _Series("jpeg", f"q{q}", "SplitModel.encode_image") for q in qualities}
    webp = {q: _Series("webp", f"q{q}", "WebpCodec of adapter.resize") for q in qualities}
    originals: list[dict[str, Tensor]] = []
    sizes: list[tuple[int, int]] = []
    began = time.monotonic()
    for frame_id, path in enumerate(tqdm(data.files, desc="rd", unit="image", file=sys.stderr,
                                         disable=not progress, mininterval=5)):
        img = load_image(path)
        sizes.append((int(img.shape[-2]), int(img.shape[-1])))
        with torch.inference_mode():
            originals.append(detached(base.full(img)))
            for sm, series in zip(models, splits):
                series.add(frame_id, *_split_frame(sm, img))
            for q in qualities:
                jpeg[q].add(frame_id, *_jpeg_frame(base, img, q))
                webp[q].add(frame_id, *_image_frame(base, img, WebpCodec(q)))

    metric = _primary_metric(base.family, data)
    original = measure_accuracy(originals, originals, data, base, sizes, vs_original=False)
    original_accuracy = original.get(metric, 1.0 if metric == "map_vs_original" else None)

    def row(s: _Series) -> dict[str, Any]:
        acc = measure_accuracy(s.outputs, originals, data, base, sizes, vs_original=True)
        return {"method": s.method, "setting": s.setting, "bytes_median": _median(s.frame_bytes),
                "bytes_mean": float(statistics.fmean(s.frame_bytes)), "accuracy": acc.get(metric),
                "accuracy_metric": metric, **{k: acc.get(k) for k in _ACCURACY_KEYS},
                "payload_data_bytes_median": _median(s.data_bytes), "estimate_bytes_median": _median(s.estimates),
                "source": s.source}

    return {"model": model, "family": base.family, "images": len(data.files), "image_dir": str(images),
            "annotations": annotations, "val_only": val_only is not None, "checkpoints": list(checkpoints),
            "qualities": list(qualities), "accuracy_metric": metric,
            "original": {"accuracy": original_accuracy, **{k: v for k, v in original.items() if k in _ACCURACY_KEYS}},
            "rows": [row(s) for s in (*splits, *jpeg.values(), *webp.values())],
            "wall_s": round(time.monotonic() - began, 1)}


# -- the files --------------------------------------------------------------------------------
def _cell(column: str, value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}" if "bytes" in column else f"{value:.4f}"
    return value


def write_csv(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """rd.csv: one line per row, the columns `COLUMNS` (bytes to 0.1 B, accuracies to 4 decimals,
    empty where a value does not apply)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in result["rows"]:
            w.writerow([_cell(c, r.get(c)) for c in COLUMNS])


def _common_prefix(names: list[str]) -> str:
    """What a method's settings share up to an underscore ("ssdlite_person_"), left off the labels."""
    if len(names) < 2:
        return ""
    prefix = os.path.commonprefix(names)
    return prefix[: prefix.rfind("_") + 1]


def plot(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """rd.png: accuracy against KB per frame (log x), one line per method, the original dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    for method in methods:
        pts = sorted((r["bytes_median"] / 1000, r["accuracy"], r["setting"]) for r in result["rows"]
                     if r["method"] == method and r["accuracy"] is not None)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=method)
        common = _common_prefix([p[2] for p in pts])
        for kb, acc, setting in pts:
            ax.annotate(setting[len(common):], (kb, acc), textcoords="offset points", xytext=(4, 3), fontsize=7)
    orig = result["original"]["accuracy"]
    if orig is not None:
        ax.axhline(orig, color="gray", linestyle="--", label=f"original ({orig:.3f}, sends nothing)")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "2357" else ""))
    ax.set_xlabel("KB per frame (median serialized Frame; 1 KB = 1000 B)")
    ax.set_ylabel(_METRIC_LABELS.get(result["accuracy_metric"], result["accuracy_metric"]))
    ax.set_title(f"{result['model']}: {result['images']} images" + (" (held out)" if result["val_only"] else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""Distillation of a split model's head and bottleneck from the original model (HND, GHND).

The teacher is the original network, frozen. The student is the same network cut at the
recipe's split point (`SplitModel(..., own_head=True)`) with a bottleneck inserted: a trainable
copy of the head layers, the bottleneck encoder and decoder, then the teacher's own frozen
later layers. No labels are needed: the student learns to make the tail see what it sees in
the original.

- **HND** (head network distillation): MSE between the decoded features and the teacher's
  output at the split point.
- **GHND** (generalized HND, Matsubara & Levorato): the sum of MSEs at several stages at and
  after the split point. The student's later stages *are* the teacher's frozen ones, fed by
  the decoded features, so errors that the tail amplifies are penalized where they matter.
  Optionally `kd_weight` x KL(teacher || student) on a classifier's logits. With
  `normalize_stages` each stage's MSE is divided by the teacher's variance there: in the
  pedestrian SSDLite the split point's values are ~50 x the later stages' in energy, and the
  plain sum trained as if it were HND (see configs/ssdlite_person_*.yaml).

Why a teacher cache (`split.train.teacher_cache`): on this CPU the frozen teacher costs more
per step than the student, so it runs once per augmented sample and epochs read its outputs.
Which stages are frozen, trained and scored is the run's `Plan` (`split.train.plan`).

Why simulate the codec: the wire carries 8-bit per-tensor quantized values, so training
quantizes the latent the same way (min/max per sample, 255 steps) with a straight-through
gradient; the decoder learns on what it will receive.

Determinism: the bottleneck's initialization, each augmented sample, and each epoch's order
derive from `train.seed`; the lr schedule is a function of the epoch. A checkpoint written
after every epoch holds the optimizer state, so `--resume` continues as if never stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bottlenecks import Bottleneck
from split.api import SplitModel
from split.images import load_image
from split.numerics import flush_denormals
from split.train.config import ConfigError, DistillConfig, config_from_dict, load_config
from split.train.data import DataError, DistillAugment, LabeledImages, train_val_split
from split.train.plan import Plan, center_view, model_size, normalize_batch
from split.train.teacher_cache import TeacherCache
from split.weights import WeightsError, load_checkpoint

__all__ = ["Distiller", "TrainResult", "config_of_checkpoint", "fake_quantize", "train", "train_from_file"]

LOGITS = "logits"


@dataclass
class TrainResult:
    """What a run did: the checkpoint written, the epochs run now, per-epoch metrics, time."""

    checkpoint: Path
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    cache_s: float = 0.0


def fake_quantize(z: Tensor) -> Tensor:
    """Per-sample min/max 8-bit quantization, as `bottlenecks.Uint8Codec` does on the wire.

    Forward: the values the edge will decode. Backward: identity (straight-through), since
    rounding has no useful gradient.
    """
    dims = tuple(range(1, z.ndim))
    lo = z.amin(dim=dims, keepdim=True)
    hi = z.amax(dim=dims, keepdim=True)
    scale = ((hi - lo) / 255.0).clamp_min(1e-12)
    q = torch.round((z - lo) / scale) * scale + lo
    return z + (q - z).detach()


class Distiller:
    """One distillation run: teacher, student, caches, optimizer; `run()` trains and saves."""

    def __init__(self, cfg: DistillConfig, progress: bool = True, log: Callable[[str], None] | None = None) -> None:
        from split.recipes import build, get_recipe

        self.cfg, self.progress = cfg, progress
        self.log = log or (lambda s: print(s, file=sys.stderr))
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        flush_denormals()  # denormal floats slow CPU convolutions many-fold
        # The recipe's split, codec, name; the teacher is the shipped network itself (`weights: null`:
        # the recipe's own, `Recipe.checkpoint` or its cached `Recipe.weights`), never a previously
        # distilled split of it (`Recipe.split_checkpoint`).
        recipe = get_recipe(cfg.recipe)
        self.weights = cfg.weights or recipe.default_weights()
        shipped = None if self.weights else recipe.default_checkpoint()
        recipe_sm, self.weights_source = build(cfg.recipe, weights=self.weights, checkpoint=shipped)
        self.model = recipe_sm.model.eval()  # the teacher: the original network, frozen below
        torch.manual_seed(t.seed)
        b = cfg.bottleneck
        at = cfg.split_point or recipe_sm.at
        try:
            channels = SplitModel(self.model, at, None, codec=recipe_sm.codec).split_channels
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{cfg.source}: split_point: {exc}") from None
        self.bottleneck = self._make_bottleneck(channels)
        self.student = SplitModel(self.model, at, self.bottleneck, codec=recipe_sm.codec,
                                  name=recipe_sm.name, own_head=t.trainable_head)
        self.model.requires_grad_(False)
        self.teacher_stages = self.student.adapter.stages()
        self.size = t.input_size or model_size(self.student.adapter)
        self.plan = Plan(cfg, self.student, self.teacher_stages, self.size)
        p = self.plan
        self.head_blocks = list(self.student.head.chain.blocks)
        self.trainable_head = nn.ModuleList(self.head_blocks[p.frozen : p.k + 1])
        self.trainable_head.requires_grad_(True)
        self.params = [q for q in list(self.trainable_head.parameters()) + list(self.bottleneck.parameters())
                       if q.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=t.lr)
        self.stage_scale: dict[str, float] = {}  # loss stage -> divisor (normalize_stages)
        self._load_data()

    def _make_bottleneck(self, channels: int) -> nn.Module:
        b = self.cfg.bottleneck
        return Bottleneck(channels, b.channels, b.hidden, b.downsample, b.kind)

    def model_input(self, views: Tensor) -> Tensor:
        """The network's input for a batch of training views in [0, 1] (the teacher's and the student's)."""
        return normalize_batch(self.student.adapter, views)

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole run (a rate-distortion run adds its second stage's)."""
        return self.cfg.train.epochs

    # -- data and caches ------------------------------------------------------------------------
    def _load_data(self) -> None:
        d = self.cfg.data
        try:
            self.images = LabeledImages.from_folder(d.dir, d.labels)
        except DataError as exc:
            raise DataError(f"{self.cfg.source}: data: {exc}") from None
        train_idx, val_idx = train_val_split([f.name for f in self.images.files], d.val_fraction, d.seed)
        self.train_set = self.images.subset(train_idx)
        self.val_set = self.images.subset(val_idx)
        self.train_files = list(self.train_set.files)
        for extra in d.extra_dirs:
            try:
                files = LabeledImages.from_folder(extra).files
            except DataError as exc:
                raise DataError(f"{self.cfg.source}: data.extra_dirs: {exc}") from None
            if d.hold_out_extra:
                keep, _ = train_val_split([f.name for f in files], d.val_fraction, d.seed)
                files = [files[i] for i in keep]
            self.train_files += files

    def _teacher_fn(self, with_logits: bool) -> Callable[[Tensor], dict[str, Tensor]]:
        p = self.plan
        wanted = set(p.loss_stages) | ({p.names[p.k]} if with_logits else set())

        def run(views: Tensor) -> dict[str, Tensor]:
            x = self.model_input(views)
            out: dict[str, Tensor] = {}
            if p.input_is_image:
                out["input"] = (views * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)
            last = len(self.teacher_stages) - 1 if with_logits else p.run_to
            for i, s in enumerate(self.teacher_stages[: last + 1]):
                x = s.module(x)
                if i + 1 == p.frozen:
                    out["input"] = x.half()
                if s.name in wanted:
                    out[s.name] = x.half()
            if with_logits and p.classifier:
                out[LOGITS] = x.float()
            return out

        return run

    def _teacher_digest(self) -> str | None:
        """The shipped network's file digest: a re-fine-tuned detector is another teacher."""
        from split.recipes import get_recipe

        path = None if self.weights else get_recipe(self.cfg.recipe).default_checkpoint()
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path is not None else None

    def _cache_key(self, part: str, files: list[Path], n: int) -> str:
        t, p = self.cfg.train, self.plan
        # "v" versions what is not in the config (DistillAugment's settings, the stored dtypes):
        # bump it when those change, or a stale cache would be reused.
        ident = {"part": part, "recipe": self.cfg.recipe, "weights": self.weights, "size": self.size,
                 "files": [f"{f.name}:{f.stat().st_size}" for f in files], "n": n, "seed": t.seed,
                 "frozen": p.frozen, "stages": p.loss_stages, "run_to": p.run_to, "teacher": self._teacher_digest(),
                 "v": 1}
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.cfg.recipe}-{part}-{digest}"

    def _caches(self) -> tuple[TeacherCache, TeacherCache | None]:
        t = self.cfg.train
        directory = Path(os.path.expanduser(t.cache_dir)) if t.cache_dir else None
        files = self.train_files
        n = len(files) * t.augment_repeats
        augment = DistillAugment(self.size, seed=t.seed)
        decoded: dict[int, Tensor] = {}  # uint8, decoded once: a few hundred small images

        def train_view(i: int) -> Tensor:  # sample i = augmentation (i // n_files) of image (i % n_files)
            j = i % len(files)
            if j not in decoded:
                decoded[j] = (load_image(files[j]) * 255.0).round().to(torch.uint8)
            return augment.sample(decoded[j].float() / 255.0, i)

        per_sample = self._bytes_per_sample()
        self.log(f"teacher cache: {n} training samples ({len(files)} images x {t.augment_repeats}), "
                 f"~{n * per_sample / 2**20:.0f} MiB" + (f" under {directory}" if directory else " in memory"))
        train = TeacherCache.build(n, train_view, self._teacher_fn(self.plan.kd), directory,
                             self._cache_key("train", files, n), t.batch_size, "teacher", self.progress)
        val = None
        if len(self.val_set):
            vfiles = self.val_set.files
            val = TeacherCache.build(len(vfiles), lambda i: center_view(load_image(vfiles[i]), self.size, self.student.adapter),
                               self._teacher_fn(True), directory, self._cache_key("val", vfiles, len(vfiles)),
                               t.batch_size, "teacher (val)", self.progress)
        return train, val

    def _bytes_per_sample(self) -> int:
        p = self.plan
        total = 3 * self.size * self.size if p.input_is_image else 2 * math.prod(self.plan.shapes[p.frozen - 1])
        total += sum(2 * math.prod(p.shapes[p.names.index(s)]) for s in p.loss_stages)
        return total + (4 * math.prod(p.shapes[-1]) if p.kd else 0)

    # -- the student ----------------------------------------------------------------------------
    def student_forward(self, batch: dict[str, Tensor], quantize: bool) -> dict[str, Tensor]:
        """Trainable head stages -> encoder -> (8-bit) -> decoder -> frozen later stages."""
        p = self.plan
        x = batch["input"]
        x = normalize_batch(self.student.adapter, x.float() / 255.0) if p.input_is_image else x.float()
        for block in self.trainable_head:
            x = block(x)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        z = self.bottleneck.encode(x)
        if quantize:
            z = fake_quantize(z)
        return self.through_tail(self.bottleneck.decode(z, size))

    def through_tail(self, x: Tensor) -> dict[str, Tensor]:
        """Decoded split-point features through the teacher's frozen later stages, as far as the
        loss needs: the outputs at the loss stages (and the logits, for KL)."""
        p = self.plan
        out: dict[str, Tensor] = {}
        if p.names[p.k] in p.loss_stages:
            out[p.names[p.k]] = x
        for i in range(p.k + 1, p.run_to + 1):
            x = self.teacher_stages[i].module(x)
            if p.names[i] in p.loss_stages:
                out[p.names[i]] = x
        if p.kd:
            out[LOGITS] = x
        return out

    def _stage_scales(self, cache: TeacherCache, max_samples: int = 512) -> None:
        """Each loss stage's teacher variance (on a strided subsample of the cache), for
        `normalize_stages`: the loss becomes a sum of relative MSEs, each stage weighing alike."""
        step = max(1, cache.n // max_samples)
        for s in self.plan.loss_stages:
            x = np.asarray(cache.arrays[s][::step], dtype=np.float32)
            self.stage_scale[s] = max(float(x.var()), 1e-12)
        self.log("normalize_stages: teacher variance " + ", ".join(f"{k} {v:.3g}" for k, v in self.stage_scale.items()))

    def loss(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        scale = self.stage_scale
        parts = {s: F.mse_loss(out[s], batch[s].float()) / scale.get(s, 1.0) for s in self.plan.loss_stages}
        total = sum(parts.values())
        if self.plan.kd:
            kl = F.kl_div(out[LOGITS].log_softmax(-1), batch[LOGITS].float().log_softmax(-1),
                          reduction="batchmean", log_target=True)
            parts["kl"] = kl
            total = total + self.cfg.train.kd_weight * kl
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def _train_mode(self, training: bool) -> None:
        self.model.eval()
        self.student.head.eval()  # the copied head keeps the teacher's BatchNorm statistics
        self.bottleneck.train(training)

    @torch.no_grad()
    def validate(self, cache: TeacherCache) -> dict[str, float]:
        """Split-point relative MSE (error energy / teacher variance) and, for classifiers,
        top-1 agreement with the teacher and top-1 against labels, on held-out images."""
        self._train_mode(False)
        p, bs = self.plan, self.cfg.train.batch_size
        split_name = p.names[p.k]
        err = var = 0.0
        agree = correct = total = 0
        labels = self.val_set.labels
        for start in range(0, cache.n, bs):
            idx = list(range(start, min(cache.n, start + bs)))
            batch = cache.batch(idx)
            x = batch["input"]
            x = normalize_batch(self.student.adapter, x.float() / 255.0) if p.input_is_image else x.float()
            for block in self.trainable_head:
                x = block(x)
            size = (int(x.shape[-2]), int(x.shape[-1]))
            x = self.bottleneck.decode(fake_quantize(self.bottleneck.encode(x)), size)
            target = batch[split_name].float() if split_name in batch else None
            if target is not None:
                err += float(((x - target) ** 2).sum())
                var += float(((target - target.mean(dim=(0, 2, 3), keepdim=True)) ** 2).sum())
            if p.classifier and LOGITS in batch:
                for i in range(p.k + 1, len(self.teacher_stages)):
                    x = self.teacher_stages[i].module(x)
                pred = x.argmax(-1)
                agree += int((pred == batch[LOGITS].argmax(-1)).sum())
                if labels is not None:
                    correct += int((pred == torch.tensor([labels[i] for i in idx])).sum())
                total += len(idx)
        out = {"val_rel_mse": err / var if var else float("nan")}
        if total:
            out["val_top1_agreement"] = agree / total
            if labels is not None:
                out["val_top1"] = correct / total
        return out

    def _pca_init(self, cache: TeacherCache, max_samples: int = 2048) -> None:
        """Start a "block" bottleneck from the block PCA of the teacher's split-point features."""
        split_name = self.plan.names[self.plan.k]
        if split_name not in cache.arrays:
            raise ConfigError(f"{self.cfg.source}: train.pca_init needs the split point {split_name!r} among the "
                              "loss stages (train.ghnd_stages)")
        step = max(1, cache.n // max_samples)
        # np.array copies: the cache is a read-only memmap, which torch will not wrap.
        feats = torch.from_numpy(np.array(cache.arrays[split_name][::step], dtype=np.float32))
        kept = self.bottleneck.pca_init(feats)
        self.log(f"pca_init: {self.bottleneck.channels} components of {split_name}'s "
                 f"{2 ** self.bottleneck.downsample}x{2 ** self.bottleneck.downsample} blocks keep "
                 f"{100 * kept:.1f} % of the variance ({len(feats)} samples)")

    def _init_from(self, path: str, cache: TeacherCache) -> None:
        """Load the bottleneck (and a trained head copy) of an earlier run of the same shape."""
        ckpt = load_checkpoint(path)
        if ckpt.get("bottleneck_spec") != self.bottleneck.spec() or ckpt.get("split_point") != self.student.at:
            raise ConfigError(f"{self.cfg.source}: train.init_from {path} holds bottleneck {ckpt.get('bottleneck_spec')} "
                              f"at {ckpt.get('split_point')!r}; this run trains {self.bottleneck.spec()} at {self.student.at!r}")
        self.bottleneck.load_state_dict(ckpt["bottleneck"])
        if "head" in ckpt and self.cfg.train.trainable_head:
            self.student.head.chain.load_state_dict(ckpt["head"])
        self.log(f"init_from: bottleneck{' and head' if 'head' in ckpt else ''} of {path} (epoch {ckpt.get('epoch')})")

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint(self, epoch: int, history: list[dict[str, float]]) -> dict[str, Any]:
        ckpt: dict[str, Any] = {
            "recipe": self.cfg.recipe,
            "bottleneck": self.bottleneck.state_dict(),
            "bottleneck_spec": self.bottleneck.spec(),
            "split_point": self.student.at,
            "config": self.cfg.to_dict(),
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "history": history,
            "weights": self.weights,
        }
        if self.cfg.train.trainable_head:
            ckpt["head"] = self.student.head.chain.state_dict()
        return ckpt

    def save(self, epoch: int, history: list[dict[str, float]]) -> Path:
        out = Path(self.cfg.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".partial")
        torch.save(self.checkpoint(epoch, history), tmp)
        tmp.replace(out)  # a crash mid-save leaves the previous epoch's checkpoint intact
        return out

    def resume(self) -> tuple[int, list[dict[str, float]]]:
        """Load head, bottleneck and optimizer from the output checkpoint; returns its epoch."""
        path = Path(self.cfg.output)
        ckpt = load_checkpoint(path)
        saved = ckpt.get("config")
        if ckpt.get("recipe") != self.cfg.recipe or not isinstance(saved, dict):
            raise WeightsError(f"{path} was not written by `splitedge train` for {self.cfg.recipe!r}; cannot resume")
        mine = self.cfg.to_dict()
        defaults = DistillConfig().to_dict()  # keys added since the checkpoint was written take their defaults
        for section in ("weights", "split_point", "data", "bottleneck"):
            theirs = saved.get(section)
            if isinstance(theirs, dict):
                theirs = {**defaults[section], **theirs}
            if theirs != mine.get(section):
                raise WeightsError(f"cannot resume {path}: its {section} {theirs} differs from "
                                   f"{self.cfg.source}'s {mine.get(section)}")
        for key in ("trainable_head", "freeze_through", "seed", "augment_repeats", "loss", "ghnd_stages",
                    "normalize_stages"):
            was = saved["train"].get(key, defaults["train"][key])  # a key added since: its default
            if was != mine["train"].get(key):
                raise WeightsError(f"cannot resume {path}: train.{key} was {was!r}, "
                                   f"{self.cfg.source} says {mine['train'].get(key)!r}")
        self.bottleneck.load_state_dict(ckpt["bottleneck"])
        if "head" in ckpt:
            self.student.head.chain.load_state_dict(ckpt["head"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        return int(ckpt.get("epoch", 0)), list(ckpt.get("history", []))

    # -- the loop -------------------------------------------------------------------------------
    def step(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """One optimizer step on one batch; returns the loss and its parts."""
        loss, parts = self.loss(self.student_forward(batch, self.cfg.train.quantize), batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss, parts

    def begin_epoch(self, epoch: int) -> None:
        """Called before each epoch (0-based): sets the learning rate."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(epoch)

    def lr_at(self, epoch: int) -> float:
        t = self.cfg.train
        return t.lr * t.gamma ** sum(1 for m in t.milestones if epoch >= m)

    def run(self, resume: bool = False) -> TrainResult:
        from tqdm import tqdm

        t = self.cfg.train
        total = self.total_epochs
        start, history = self.resume() if resume else (0, [])
        out = Path(self.cfg.output)
        if start >= total:
            self.log(f"{out} already holds epoch {start} of {total}; nothing to do")
            return TrainResult(out, 0, history)
        began = time.monotonic()
        train_cache, val_cache = self._caches()
        cache_s = time.monotonic() - began
        if t.normalize_stages:
            self._stage_scales(train_cache)
        if start == 0 and t.pca_init:
            self._pca_init(train_cache)
        if start == 0 and t.init_from:
            self._init_from(t.init_from, train_cache)
        if start == 0 and val_cache is not None:
            self.log("before training: " + ", ".join(f"{k} {v:.4g}" for k, v in self.validate(val_cache).items()))
        self.log(f"distilling {self.cfg.recipe} at {self.student.at} ({self.weights_source}); bottleneck "
                 f"{self.bottleneck.spec()}; loss {t.loss} on {', '.join(self.plan.loss_stages)}"
                 + (f" + {t.kd_weight} x KL" if self.plan.kd else "")
                 + f"; trainable: {len(self.trainable_head)} head stages + bottleneck, "
                 f"{sum(q.numel() for q in self.params)} parameters; epochs {start + 1}..{total}")
        for epoch in range(start, total):
            self.begin_epoch(epoch)
            order = torch.randperm(train_cache.n, generator=torch.Generator().manual_seed(t.seed * 7919 + epoch))
            self._train_mode(True)
            bar = tqdm(total=train_cache.n, desc=f"epoch {epoch + 1}/{total}", unit="sample",
                       file=sys.stderr, disable=not self.progress, mininterval=5)
            sums: dict[str, float] = {}
            steps = 0
            for b in range(0, train_cache.n, t.batch_size):
                batch = train_cache.batch(order[b : b + t.batch_size].tolist())
                loss, parts = self.step(batch)
                steps += 1
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.update(len(batch["input"]))
                bar.set_postfix(loss=f"{sums['loss'] / steps:.4f}")
            bar.close()
            record: dict[str, float] = {"epoch": epoch + 1, "lr": self.lr_at(epoch),
                                        **{k: v / max(steps, 1) for k, v in sums.items()}}
            if val_cache is not None:
                record.update(self.validate(val_cache))
            record["elapsed_s"] = round(time.monotonic() - began, 1)
            history.append(record)
            self.save(epoch + 1, history)
            self.log("epoch {epoch}: ".format(epoch=epoch + 1) + ", ".join(
                f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch",)) + f" -> {out}")
        wall = time.monotonic() - began
        return TrainResult(out, total - start, history, wall, cache_s)


def train(cfg: DistillConfig, resume: bool = False, progress: bool = True,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Distill `cfg`'s recipe; writes `cfg.output` after every epoch. See the module docstring."""
    if cfg.bottleneck.kind == "entropic":
        from split.train.rate_distortion import RateDistortionDistiller

        return RateDistortionDistiller(cfg, progress=progress, log=log).run(resume=resume)
    return Distiller(cfg, progress=progress, log=log).run(resume=resume)


def train_from_file(path: str | os.PathLike[str], resume: bool = False, progress: bool = True,
                    log: Callable[[str], None] | None = None) -> TrainResult:
    """`splitedge train --config FILE`: load and validate the YAML, then `train`."""
    return train(load_config(path), resume=resume, progress=progress, log=log)


def config_of_checkpoint(path: str | os.PathLike[str]) -> DistillConfig:
    """The training config a checkpoint was made with (for `eval --val-only`)."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("config"), dict):
        raise WeightsError(f"{path} holds no training config")
    return config_from_dict(ckpt["config"], str(path))


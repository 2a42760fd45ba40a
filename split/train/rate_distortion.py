"""Rate-distortion distillation of an entropic student (`bottlenecks.entropic.EntropicStudent`).

sc2bench's two stages, on the distillation machinery of `split.train.distill` (the same
teacher cache, GHND stages, seeded order, per-epoch checkpoints and `--resume`):

1. **Rate-distortion** (`train.epochs`): encoder, prior and decoder together; loss =
   GHND distortion on the teacher's features + `lmbda` x the prior's estimate of the frame's
   size in KB (-log2 likelihoods under uniform quantization noise). The entropy bottleneck's
   quantiles, which bound its CDF tables, learn from compressai's auxiliary loss with their
   own optimizer (`aux_lr`), as compressai's examples do.
2. **Decoder fine-tuning** (`train.stage2_epochs`): encoder and prior frozen, the latent
   hard-rounded exactly as the codec rounds it, distortion only (`stage2_lr`): the decoder
   learns what it will really receive, not the noisy training proxy.

Training crops (`train.input_size`) may be smaller than the model's input: encoder and decoder
are fully convolutional, teacher and student both see the crop unresized (`model_input`), and
a 160 px crop costs a third of a 300 px frame's CPU. The rate term is scaled to a frame of the
model's size (bits grow with the area), so λ means the same at any crop size.

Why KB per frame as the rate unit: it is what the README and the controller count, so λ reads
as "one KB (1,024 bytes) is worth this much distortion". The CDF tables are computed (`prepare(force=True)`)
before each checkpoint is written, so every checkpoint decodes with the tables it carries.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bottlenecks import EntropicStudent
from bottlenecks.entropic import SPLIT_KINDS
from split.train.distill import Distiller
from split.train.plan import model_size, unresized_input
from split.train.teacher_cache import TeacherCache
from split.train.config import ConfigError
from split.recipes import get_recipe
from split.weights import load_checkpoint

__all__ = ["RateDistortionDistiller"]

_BITS_PER_KB = 8 * 1024


def _is_quantile(name: str) -> bool:
    return name.endswith("quantiles")


class RateDistortionDistiller(Distiller):
    """A `Distiller` whose student is an entropic student: rate in the loss, two stages."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        t = self.cfg.train
        named = list(self.bottleneck.named_parameters())
        prior = [p for n, p in named if n.startswith("entropy.") and not _is_quantile(n)]
        rest = list(self.trainable_head.parameters()) + [p for n, p in named
                                                         if not n.startswith("entropy.") and not _is_quantile(n)]
        self.params = rest + prior
        # The prior's parameters (the factorized densities; a hyperprior's networks too) may learn faster
        # than the network (`train.prior_lr`): compressai fits them
        # over ~1e5 steps; a run of a few hundred steps at the network's rate leaves them near their
        # initial shape, and the rate term then measures the misfit, not the latent.
        self.prior_lr_scale = (t.prior_lr or t.lr) / t.lr
        self.optimizer = torch.optim.Adam([{"params": rest}, {"params": prior, "prior": True}], lr=t.lr)
        self.aux_optimizer = torch.optim.Adam([p for n, p in named if _is_quantile(n)], lr=t.aux_lr)
        self.stage = 1
        # Rate per frame of the model's own size, estimated from a crop's: bits scale with the area.
        self.rate_scale = (model_size(self.student.adapter) / self.size) ** 2

    def _make_bottleneck(self, channels: int) -> nn.Module:
        b = self.cfg.bottleneck
        return EntropicStudent(channels, b.channels, b.hidden, b.stride_log2, b.prior, b.decoder_hidden, b.encoder_from,
                               split_kind=b.split_kind, downsample=b.downsample)

    @property
    def total_epochs(self) -> int:
        return self.cfg.train.epochs + self.cfg.train.stage2_epochs

    # -- stages -------------------------------------------------------------------------------
    def _enter_stage2(self) -> None:
        """Freeze encoder and prior; a fresh optimizer for the decoder alone."""
        if self.stage == 2:
            return
        self.stage = 2
        self.bottleneck.encoder.requires_grad_(False)
        self.bottleneck.entropy.requires_grad_(False)
        self.trainable_head.requires_grad_(False)
        self.params = list(self.bottleneck.decoder.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=self.cfg.train.stage2_lr)
        self.log(f"stage 2: decoder only ({sum(p.numel() for p in self.params)} parameters), hard-quantized latents")

    def begin_epoch(self, epoch: int) -> None:
        if epoch >= self.cfg.train.epochs:
            self._enter_stage2()
        super().begin_epoch(epoch)
        for group in self.optimizer.param_groups:
            if group.get("prior"):
                group["lr"] *= self.prior_lr_scale

    def lr_at(self, epoch: int) -> float:
        return self.cfg.train.stage2_lr if epoch >= self.cfg.train.epochs else super().lr_at(epoch)

    # -- the student --------------------------------------------------------------------------
    def model_input(self, views: Tensor) -> Tensor:
        return unresized_input(self.student.adapter, views)  # fully convolutional: crops as they are

    def _encoder_input(self, cached: Tensor) -> Tensor:
        """What the student's encoder reads: the image, or (encoder_from "split") the output of the
        trainable head copies on the cached frozen prefix's."""
        if self.plan.input_is_image:
            x = self.model_input(cached.float() / 255.0)
        else:
            x = cached.float()
        for block in self.trainable_head:
            x = block(x)
        return x

    def _features(self, cached: Tensor) -> tuple[Tensor, Tensor]:
        """Decoded split-point features and the bits per sample (stage 2: of the hard-rounded latent)."""
        st: EntropicStudent = self.bottleneck
        if self.stage == 1:
            features, likelihoods = st(self._encoder_input(cached))
            return features, st.bits(likelihoods)
        with torch.no_grad():
            x = self._encoder_input(cached)
            y_hat = st.quantized(st.encoder(x))
        return st.decode(y_hat, tuple(x.shape[-2:])), torch.zeros(len(cached))

    def student_forward(self, batch: dict[str, Tensor], quantize: bool) -> dict[str, Tensor]:
        x, bits = self._features(batch["input"])
        return {**self.through_tail(x), "bits": bits}

    def loss(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        distortion, parts = super().loss(out, batch)
        if self.stage == 2:  # the rate is fixed (encoder and prior frozen): distortion only
            return distortion, parts
        kb = out["bits"].mean() * self.rate_scale / _BITS_PER_KB
        parts["kb"] = float(kb.detach())
        return distortion + self.cfg.train.lmbda * kb, parts

    def step(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        loss, parts = super().step(batch)
        if self.stage == 1:
            aux = self.bottleneck.aux_loss()
            self.aux_optimizer.zero_grad(set_to_none=True)
            aux.backward()
            self.aux_optimizer.step()
            parts["aux"] = float(aux.detach())
        return loss, parts

    @torch.no_grad()
    def validate(self, cache: TeacherCache) -> dict[str, float]:
        """Split-point relative MSE on the hard-rounded latent, and the prior's KB per frame."""
        self._train_mode(False)
        st: EntropicStudent = self.bottleneck
        p, bs = self.plan, self.cfg.train.batch_size
        split_name = p.names[p.k]
        err = var = kb = 0.0
        for start in range(0, cache.n, bs):
            batch = cache.batch(list(range(start, min(cache.n, start + bs))))
            features, likelihoods = st(self._encoder_input(batch["input"]))
            kb += float(st.bits(likelihoods).sum()) * self.rate_scale / _BITS_PER_KB
            target = batch[split_name].float()
            err += float(((features - target) ** 2).sum())
            var += float(((target - target.mean(dim=(0, 2, 3), keepdim=True)) ** 2).sum())
        return {"val_rel_mse": err / var if var else float("nan"), "val_kb": kb / max(cache.n, 1)}

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint(self, epoch: int, history: list[dict[str, float]]) -> dict[str, Any]:
        self.bottleneck.prepare(force=True)  # the tables this checkpoint's bytes decode with
        ckpt = super().checkpoint(epoch, history)
        if self.bottleneck.replaces_head:
            ckpt.pop("head", None)  # the encoder replaces the head: no original layer was trained
        ckpt["aux_optimizer"] = self.aux_optimizer.state_dict()
        return ckpt

    @torch.no_grad()
    def _init_from(self, path: str, cache: TeacherCache) -> None:
        """An 8-bit conv or block checkpoint starts an `encoder_from: split` student of its kind: its
        head copies, encoder and decoder, with the latent scaled so that one integer step (the prior's
        quantizer) is `train.init_step` x the 8-bit codec's median step on the training samples; else the base
        rule (same shape)."""
        ckpt = load_checkpoint(path)
        spec, st = ckpt.get("bottleneck_spec") or {}, self.bottleneck
        if not (spec.get("kind") in SPLIT_KINDS and not st.replaces_head):
            return super()._init_from(path, cache)
        at = ckpt.get("split_point") or get_recipe(ckpt.get("recipe", self.cfg.recipe)).split_point
        if (spec.get("kind"), spec.get("channels"), spec.get("hidden"), spec.get("downsample"), at) != (
                st.split_kind, st.channels, st.hidden, st.downsample, self.student.at):
            raise ConfigError(f"{self.cfg.source}: train.init_from {path} holds {spec} at {at!r}; this encoder_from "
                              f"split student needs kind {st.split_kind}, channels {st.channels}, hidden {st.hidden}, "
                              f"downsample {st.downsample} at {self.student.at!r}")
        coder = {k.split(".", 1)[1]: v for k, v in ckpt["bottleneck"].items() if k.startswith("encoder.")}
        st.encoder.load_state_dict(coder)
        st.decoder.load_state_dict({k.split(".", 1)[1]: v for k, v in ckpt["bottleneck"].items() if k.startswith("decoder.")})
        if "head" in ckpt:
            self.student.head.chain.load_state_dict(ckpt["head"])
        self._train_mode(False)
        batch = cache.batch(list(range(0, cache.n, max(1, cache.n // 64))))
        y = st.encoder(self._encoder_input(batch["input"]))
        step = float(((y.amax(dim=(1, 2, 3)) - y.amin(dim=(1, 2, 3))) / 255.0).median()) * self.cfg.train.init_step
        last = st.encoder[-1]
        first = next(m for m in st.decoder.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
        last.weight.mul_(1.0 / step)
        last.bias.mul_(1.0 / step)
        first.weight.mul_(step)
        self.log(f"init_from: head, encoder and decoder of {path} (8-bit {st.split_kind}); latent scaled by 1/{step:.4g} "
                 f"({self.cfg.train.init_step:g} x its median 8-bit step becomes one integer step)")

    def resume(self) -> tuple[int, list[dict[str, float]]]:
        ckpt = load_checkpoint(self.cfg.output)
        if int(ckpt.get("epoch", 0)) >= self.cfg.train.epochs:
            self._enter_stage2()  # its optimizer state is the decoder's
        epoch, history = super().resume()
        if self.stage == 1 and "aux_optimizer" in ckpt:
            self.aux_optimizer.load_state_dict(ckpt["aux_optimizer"])
        return epoch, history

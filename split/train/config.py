"""Distillation recipes as YAML files, validated into dataclasses.

Why strict validation: a misspelled key in a training recipe (`epoch: 30`, `lr_milestones`)
would otherwise be ignored silently and the run would train with a default nobody asked for,
found out tens of CPU-minutes later. Every unknown key, wrong type or out-of-range value is a
`ConfigError` whose one-line message names the file and the key, as torchdistill's recipes
do. Relative paths in a file are taken relative to the current directory (the repo root,
where `splitedge` is run), so a recipe means the same from the CLI and from the tests.

Layout (every section optional except `recipe` and `data.dir`):

```yaml
recipe: mobilenet_v2          # a name from `splitedge models`
weights: IMAGENET1K_V1        # torchvision weights enum of the teacher (null: the recipe's shipped
                              # network, or its default weights when cached; else random init)
split_point: features.6       # null: the recipe's; the checkpoint carries it
output: checkpoints/x.pt      # where the checkpoint goes (written after every epoch)
data:   {dir: ..., labels: prefix|FILE.csv|null, val_fraction: 0.2, seed: 0,
         extra_dirs: [...],   # unlabeled folders for training: distillation needs no labels
         hold_out_extra: false}  # true: hold out their share too, by the same rule
bottleneck: {channels: 128, hidden: 64, downsample: 2, kind: block}   # kind: conv | gdn | block | entropic
# kind entropic (bottlenecks.entropic): an encoder from the image replaces the head; also
#   prior: factorized | hyperprior, stride_log2: 3 (the split point's stride, as a power of 2),
#   decoder_hidden: 64 (the edge-side decoder's width), encoder_from: image | split (a learned prior on
#   an 8-bit bottleneck's latent after the first blocks, started from its checkpoint: init_from),
#   split_kind: conv | block (with encoder_from split: the 8-bit kind whose latent the prior codes)
train:
  epochs: 10
  batch_size: 32
  lr: 0.001
  milestones: [5, 8]          # epochs at which lr is multiplied by gamma
  gamma: 0.1
  loss: ghnd                  # hnd: MSE at the split point; ghnd: sum of MSEs at ghnd_stages
  ghnd_stages: [features.6, features.10, features.13, features.17]
  kd_weight: 0.0              # + kd_weight * KL(teacher || student) on classifier logits
  normalize_stages: false     # each stage's MSE over the teacher's variance there
  trainable_head: true        # train a copy of the layers before the split point too
  freeze_through: features.3  # ...except these first ones (their outputs are cached)
  augment_repeats: 8          # augmented samples per training image (cached once)
  input_size: 224             # training crop size (null: the model's own input size)
  quantize: true              # simulate the 8-bit codec in training (straight-through)
  pca_init: false             # "block" bottlenecks: start from the teacher features' block PCA
  seed: 0
  cache_dir: ~/.cache/splitedge/distill   # null: keep the teacher cache in memory only
  threads: null               # torch threads (null: torch's default)
  # rate-distortion (bottleneck.kind entropic; split.train.rate_distortion):
  lmbda: 1.0                  # loss = distortion + lmbda x KB per frame (the prior's estimate)
  init_from: null             # start from this checkpoint's bottleneck (same shape; e.g. another lmbda's)
  init_step: 1.0              # entropic split student from an 8-bit init_from: its integer step, in 8-bit steps
  aux_lr: 0.001               # the entropy model's quantile (auxiliary) loss
  prior_lr: null              # the prior's densities in stage 1 (null: train.lr), with the same schedule
  stage2_epochs: 2            # then: the decoder alone, encoder and prior frozen, on hard-quantized latents
  stage2_lr: 0.0001
```
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

__all__ = ["BottleneckConfig", "ConfigError", "DataConfig", "DistillConfig", "TrainConfig", "config_from_dict", "load_config"]


class ConfigError(ValueError):
    """A recipe file that cannot be used; the message names the file and the key."""


@dataclass
class DataConfig:
    dir: str = ""
    labels: str | None = None
    val_fraction: float = 0.2
    seed: int = 0
    # More images for the student to match the teacher on (every one trains; none is held out), so
    # a detector fine-tuned on a few dozen labeled frames can be distilled on hundreds more.
    extra_dirs: list[str] = field(default_factory=list)
    # Hold out each extra folder's share by the same rule (val_fraction, seed, on its sorted names),
    # so that `eval --val-only` on that folder sees only images no training step used.
    hold_out_extra: bool = False


@dataclass
class BottleneckConfig:
    channels: int = 3
    hidden: int = 64
    downsample: int = 0
    kind: str = "conv"
    prior: str = "factorized"  # kind entropic only
    stride_log2: int = 3  # kind entropic only
    decoder_hidden: int = 64  # kind entropic only: the edge-side decoder's width
    # kind entropic only: "image" (the encoder replaces the head) or "split" (a learned prior on an 8-bit
    # bottleneck's latent after the backbone's first blocks, split_kind; init_from its checkpoint)
    encoder_from: str = "image"
    # kind entropic, encoder_from split only: the 8-bit kind whose latent the prior codes, "conv" or
    # "block" (with downsample, e.g. the classifier's block code at 1/4 of the split point's size)
    split_kind: str = "conv"


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    loss: str = "hnd"
    ghnd_stages: list[str] = field(default_factory=list)
    kd_weight: float = 0.0
    # Divide each GHND stage's MSE by the teacher's variance there: stages whose values are ten
    # times larger (a linear bottleneck block's output against a ReLU6 one) otherwise own the loss.
    normalize_stages: bool = False
    trainable_head: bool = True
    freeze_through: str | None = None
    augment_repeats: int = 4
    input_size: int | None = None
    quantize: bool = True
    pca_init: bool = False
    seed: int = 0
    cache_dir: str | None = None
    threads: int | None = None
    lmbda: float = 0.0
    # Start the bottleneck (and a trained head copy) from this checkpoint of the same shape, e.g. another
    # λ's run: a rate-distortion sweep then costs a few epochs per point instead of a whole run.
    init_from: str | None = None
    # An entropic split student started from an 8-bit checkpoint: its latent's integer step, in the 8-bit
    # codec's median steps (1: the 8-bit resolution; larger: coarser, fewer bytes from the first step).
    init_step: float = 1.0
    aux_lr: float = 1e-3
    prior_lr: float | None = None  # the learned prior's densities (stage 1); None: train.lr
    stage2_epochs: int = 0
    stage2_lr: float = 1e-4


@dataclass
class DistillConfig:
    recipe: str = ""
    weights: str | None = None
    # Where to cut (a stage name of `splitedge stages`); null: the recipe's own split point. The
    # checkpoint carries it, so one recipe name serves bottlenecks at several points.
    split_point: str | None = None
    output: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    bottleneck: BottleneckConfig = field(default_factory=BottleneckConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    source: str = ""  # the file it came from (not a YAML key)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, so a checkpoint can hold it and `torch.load(weights_only=True)` reads it."""
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


_SECTIONS = {"data": DataConfig, "bottleneck": BottleneckConfig, "train": TrainConfig}


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    args = get_args(hint)
    if origin is not None and type(None) in args:  # X | None
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {hint}")  # pragma: no cover - a bug in this file


def _fill(cls: type, raw: Any, file: str, section: str) -> Any:
    if raw is None:
        raw = {}
    label = f"section {section!r}" if section else "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: {label} must be a mapping, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(f"{file}: unknown key {key!r} in {label}; known: {', '.join(names)}")
        where = f"{file}: {section + '.' if section else ''}{key}"
        if not section and key in _SECTIONS:
            kwargs[key] = _fill(_SECTIONS[key], value, file, key)
        else:
            kwargs[key] = _check_type(value, hints[key], where)
    return cls(**kwargs)


def _validate(cfg: DistillConfig, file: str) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{file}: {key} {why}")

    if not cfg.recipe:
        raise bad("recipe", "is required (a name from `splitedge models`)")
    if not cfg.output:
        raise bad("output", "is required (the checkpoint path to write)")
    if not cfg.data.dir:
        raise bad("data.dir", "is required (a folder of training images)")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise bad("data.val_fraction", f"must be in [0, 1), got {cfg.data.val_fraction}")
    b, t = cfg.bottleneck, cfg.train
    if b.channels < 1 or b.hidden < 2 or b.downsample < 0:
        raise bad("bottleneck", f"needs channels >= 1, hidden >= 2, downsample >= 0; got {dataclasses.asdict(b)}")
    if b.kind not in ("conv", "gdn", "block", "entropic"):
        raise bad("bottleneck.kind", f"must be conv, gdn, block or entropic, got {b.kind!r}")
    if b.kind == "entropic":
        _validate_entropic(cfg, bad)
    elif t.lmbda or t.stage2_epochs:
        raise bad("train.lmbda", "and train.stage2_epochs apply to bottleneck.kind entropic only")
    if cfg.train.pca_init and b.kind != "block":
        raise bad("train.pca_init", f"needs bottleneck.kind block, got {b.kind!r}")
    if t.epochs < 1 or t.batch_size < 1 or t.augment_repeats < 1:
        raise bad("train", "needs epochs, batch_size and augment_repeats >= 1")
    if t.lr <= 0 or t.gamma <= 0:
        raise bad("train.lr", "and train.gamma must be positive")
    if t.loss not in ("hnd", "ghnd"):
        raise bad("train.loss", f"must be hnd or ghnd, got {t.loss!r}")
    if t.kd_weight < 0:
        raise bad("train.kd_weight", f"must be >= 0, got {t.kd_weight}")
    if sorted(t.milestones) != t.milestones:
        raise bad("train.milestones", f"must be increasing, got {t.milestones}")
    if t.input_size is not None and t.input_size < 16:
        raise bad("train.input_size", f"must be >= 16, got {t.input_size}")
    if t.init_from is not None and not Path(t.init_from).is_file():
        raise bad("train.init_from", f"{t.init_from} is not a file")
    if t.threads is not None and t.threads < 1:
        raise bad("train.threads", f"must be >= 1, got {t.threads}")


def _validate_entropic(cfg: DistillConfig, bad: Any) -> None:
    b, t = cfg.bottleneck, cfg.train
    if b.prior not in ("factorized", "hyperprior"):
        raise bad("bottleneck.prior", f"must be factorized or hyperprior, got {b.prior!r}")
    if b.encoder_from not in ("image", "split"):
        raise bad("bottleneck.encoder_from", f"must be image or split, got {b.encoder_from!r}")
    if b.split_kind not in ("conv", "block") or (b.encoder_from == "image" and b.split_kind != "conv"):
        raise bad("bottleneck.split_kind", f"must be conv or block, and block only with encoder_from split; got "
                                           f"{b.split_kind!r} with {b.encoder_from!r}")
    if not 1 <= b.stride_log2 <= 5 or b.downsample < 0 or (b.downsample and b.encoder_from != "split"):
        raise bad("bottleneck", f"entropic needs stride_log2 in 1..5 and downsample 0 (> 0 only with encoder_from "
                                f"split); got {dataclasses.asdict(b)}")
    if b.encoder_from == "image" and (not t.trainable_head or t.freeze_through is not None):
        raise bad("train.freeze_through", "must be null with trainable_head true: an entropic encoder replaces the head")
    if t.prior_lr is not None and not t.prior_lr > 0:
        raise bad("train.prior_lr", f"must be > 0 (or null: train.lr), got {t.prior_lr}")
    if not t.init_step > 0:
        raise bad("train.init_step", f"must be > 0, got {t.init_step}")
    if t.lmbda < 0 or t.aux_lr <= 0 or t.stage2_lr <= 0 or t.stage2_epochs < 0:
        raise bad("train", f"needs lmbda >= 0, aux_lr and stage2_lr > 0, stage2_epochs >= 0; got lmbda {t.lmbda}, "
                           f"aux_lr {t.aux_lr}, stage2_lr {t.stage2_lr}, stage2_epochs {t.stage2_epochs}")
    if t.pca_init or t.quantize is False:
        raise bad("train.quantize", "must stay true and pca_init false for an entropic student")


def load_config(path: str | os.PathLike[str]) -> DistillConfig:
    """Read and validate a recipe file; any problem is a one-line ConfigError naming file and key."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    cfg = _fill(DistillConfig, raw, str(p), "")
    cfg.source = str(p)
    _validate(cfg, str(p))
    return cfg


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> DistillConfig:
    """The same validation for a dict (a checkpoint's "config", or a test's)."""
    cfg = _fill(DistillConfig, raw, source, "")
    cfg.source = source
    _validate(cfg, source)
    return cfg

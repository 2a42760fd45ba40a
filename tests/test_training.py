"""Distillation: the loss goes down, checkpoints round-trip through `build`, `--resume`
continues exactly, and a bad recipe file fails with one line naming the key.

Everything runs on a random-init MobileNetV2 at 64 px on a handful of generated images, so
each test takes seconds on two cores.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from split.recipes import build, get_recipe
from split.train.cli import main as split_cli
from split.train.config import ConfigError, load_config
from split.train.data import DataError
from split.train.distill import Distiller, fake_quantize, train
from split.train.plan import default_ghnd_stages, stage_shapes
from split.weights import WeightsError

pytestmark = pytest.mark.usefixtures("no_cached_weights")  # random init whatever the machine has cached


def make_images(folder: Path, n: int = 6, size: tuple[int, int] = (72, 96), seed: int = 0) -> Path:
    """Smooth random RGB images named `NNN_x.png` (label = prefix), like imagenet-samples."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        low = torch.rand(1, 3, 6, 8, generator=g)
        img = F.interpolate(low, size=size, mode="bilinear", align_corners=False)[0]
        arr = (img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{i:03d}_img.png"), arr[:, :, ::-1])
    return folder


def write_config(tmp_path: Path, **over: dict) -> Path:
    cfg = {
        "recipe": "mobilenet_v2",
        "weights": None,
        "output": str(tmp_path / "ckpt.pt"),
        "data": {"dir": str(make_images(tmp_path / "images")), "labels": "prefix", "val_fraction": 0.34, "seed": 0},
        "bottleneck": {"channels": 2, "hidden": 8, "downsample": 0, "kind": "gdn"},
        "train": {"epochs": 3, "batch_size": 8, "lr": 0.01, "loss": "hnd", "trainable_head": True,
                  "freeze_through": "features.3", "augment_repeats": 4, "input_size": 64, "seed": 0},
    }
    for section, values in over.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_short_distillation_lowers_the_loss(tmp_path):
    cfg = load_config(write_config(tmp_path, train={"epochs": 4}))
    result = train(cfg, progress=False, log=lambda s: None)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 4 and result.epochs_run == 4
    assert losses[-1] < 0.8 * losses[0], losses
    assert "val_rel_mse" in result.history[-1] and "val_top1_agreement" in result.history[-1]
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert {"recipe", "head", "bottleneck", "config", "epoch", "optimizer", "bottleneck_spec"} <= set(ckpt)
    assert ckpt["epoch"] == 4 and ckpt["bottleneck_spec"] == {"channels": 2, "hidden": 8, "downsample": 0, "kind": "gdn"}


def test_checkpoint_round_trips_through_build(tmp_path):
    cfg = load_config(write_config(tmp_path, train={"epochs": 1}))
    d = Distiller(cfg, progress=False, log=lambda s: None)
    d.run()
    sm, source = build("mobilenet_v2", checkpoint=cfg.output)
    assert "head, bottleneck" in source
    assert sm.bottleneck.spec() == d.bottleneck.spec()  # rebuilt from the checkpoint, not the recipe's 3-ch default
    for k, v in sm.bottleneck.state_dict().items():
        assert torch.equal(v, d.bottleneck.state_dict()[k]), k
    for k, v in sm.head.chain.state_dict().items():
        assert torch.equal(v, d.student.head.chain.state_dict()[k]), k
    img = torch.rand(3, 80, 100)
    msg = sm.encode_message(img)
    assert list(msg.tensor.shape) == [1, 2, 28, 28] and len(msg.tensor.data) == 2 * 28 * 28
    out = sm.decode(msg.SerializeToString())
    assert out["logits"].shape == (1000,)
    # the student's forward (fake quantization) and the wire path (uint8 codec) agree
    with torch.no_grad():
        x = sm.adapter.preprocess(img).tensor
        ref = d.student_forward({"input": d.head_blocks[3](d.head_blocks[2](d.head_blocks[1](d.head_blocks[0](x))))},
                                quantize=True)
        tail_in = ref["features.6"]
    with torch.inference_mode():
        z = sm.head(x)[0]
        wire = sm.bottleneck.decode(sm.codec.decode(sm.codec.encode(z)), (28, 28))
    torch.testing.assert_close(wire, tail_in, rtol=1e-3, atol=1e-3 * float(tail_in.abs().max()))


def test_resume_continues_where_it_stopped(tmp_path):
    whole_head = {"freeze_through": None}  # the cache then holds the augmented images themselves
    straight = load_config(write_config(tmp_path / "a", train={"epochs": 2, **whole_head}))
    train(straight, progress=False, log=lambda s: None)
    first = load_config(write_config(tmp_path / "b", train={"epochs": 1, **whole_head}))
    train(first, progress=False, log=lambda s: None)
    assert torch.load(first.output, weights_only=True)["epoch"] == 1
    more = load_config(write_config(tmp_path / "b", train={"epochs": 2, **whole_head}))
    resumed = train(more, resume=True, progress=False, log=lambda s: None)
    assert resumed.epochs_run == 1 and [h["epoch"] for h in resumed.history] == [1, 2]
    a = torch.load(straight.output, weights_only=True)
    b = torch.load(more.output, weights_only=True)
    assert b["epoch"] == 2
    for k, v in a["bottleneck"].items():  # deterministic: resuming equals never stopping
        torch.testing.assert_close(b["bottleneck"][k], v, rtol=1e-4, atol=1e-6, msg=k)
    done = train(more, resume=True, progress=False, log=lambda s: None)
    assert done.epochs_run == 0
    changed = load_config(write_config(tmp_path / "b", bottleneck={"channels": 3}, train={"epochs": 3, **whole_head}))
    with pytest.raises(WeightsError, match="cannot resume .* its bottleneck"):
        train(changed, resume=True, progress=False, log=lambda s: None)


def test_unknown_config_key_is_one_clear_error(tmp_path, capsys):
    path = write_config(tmp_path, train={"epoch": 3})
    with pytest.raises(ConfigError, match=r"distill\.yaml: unknown key 'epoch' in section 'train'; known: epochs"):
        load_config(path)
    assert split_cli("train", ["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'epoch'" in err[0] and str(path) in err[0]
    top = write_config(tmp_path, colour="blue")
    with pytest.raises(ConfigError, match="unknown key 'colour' in the top level"):
        load_config(top)
    typed = write_config(tmp_path, train={"lr": "fast"})
    with pytest.raises(ConfigError, match="train.lr must be a number"):
        load_config(typed)
    stage = write_config(tmp_path, train={"loss": "ghnd", "ghnd_stages": ["features.2"]})
    with pytest.raises(ConfigError, match="ghnd_stages entry 'features.2'.*valid: features.6"):
        Distiller(load_config(stage), progress=False, log=lambda s: None)


def test_ghnd_with_kd_and_pca_init_uses_a_disk_cache_once(tmp_path):
    cache = tmp_path / "cache"
    path = write_config(tmp_path, train={"epochs": 1, "loss": "ghnd", "kd_weight": 1.0, "cache_dir": str(cache),
                                         "trainable_head": False, "freeze_through": None, "pca_init": True},
                        bottleneck={"kind": "block", "channels": 16, "downsample": 1})
    cfg = load_config(path)
    logs: list[str] = []
    result = train(cfg, progress=False, log=logs.append)
    text = "\n".join(logs)
    assert "pca_init: 16 components of features.6's 2x2 blocks" in text and "before training: val_rel_mse" in text
    assert "loss ghnd on features.6, features.13, features.18 + 1.0 x KL" in text  # default GHND stages
    assert {"features.6", "kl"} <= set(result.history[0])
    metas = sorted(cache.rglob("meta.json"))
    assert len(metas) == 2  # train and val parts
    stamp = [m.stat().st_mtime_ns for m in metas]
    cfg.train.epochs = 2
    train(cfg, resume=True, progress=False, log=lambda s: None)
    assert [m.stat().st_mtime_ns for m in metas] == stamp  # reused, not rebuilt
    assert "head" not in torch.load(cfg.output, weights_only=True)  # frozen head: nothing to ship


def test_default_ghnd_stages_follow_resolution_levels():
    import torchvision

    from split.adapters import adapter_for

    model = torchvision.models.resnet18(weights=None).eval()
    adapter = adapter_for(model)
    stages = adapter.stages()
    names = [s.name for s in stages]
    shapes = stage_shapes(stages, 64, adapter)
    assert default_ghnd_stages(stages, names.index("layer1"), shapes) == ["layer1", "layer2", "layer3", "layer4"]


def test_fake_quantize_matches_the_uint8_codec():
    from bottlenecks import Uint8Codec

    z = torch.randn(1, 3, 9, 9) * 4 + 1
    codec = Uint8Codec()
    torch.testing.assert_close(fake_quantize(z), codec.decode(codec.encode(z)), rtol=0, atol=1e-5)
    z.requires_grad_(True)
    fake_quantize(z).sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # straight-through


def test_block_bottleneck_pca_init_is_exact_at_full_rank():
    from bottlenecks import Bottleneck

    feats = torch.randn(8, 4, 12, 10) + torch.arange(4.0).view(1, 4, 1, 1)
    full = Bottleneck(4, 16, hidden=4, downsample=1, kind="block")
    assert full.pca_init(feats) == pytest.approx(1.0)
    torch.testing.assert_close(full(feats), feats, rtol=1e-4, atol=1e-4)  # refinements start as identity
    small = Bottleneck(4, 3, hidden=4, downsample=1, kind="block")
    assert 0.0 < small.pca_init(feats) < 1.0
    odd = torch.randn(1, 4, 7, 9)
    z = small.encode(odd)
    assert z.shape == (1, 3, 4, 5) and small.decode(z, (7, 9)).shape == (1, 4, 7, 9)  # ceil, then cropped back
    with pytest.raises(ValueError, match="needs a 'block' bottleneck"):
        Bottleneck(4, 3, kind="gdn").pca_init(feats)


def test_bad_bottleneck_spec_in_a_checkpoint_is_a_weights_error(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"recipe": "mobilenet_v2", "bottleneck": {}, "bottleneck_spec": {"channels": 2, "colour": 1}}, path)
    with pytest.raises(WeightsError, match="unknown key 'colour'"):
        build("mobilenet_v2", checkpoint=path)


def test_extra_dirs_add_unlabeled_training_images_and_a_bad_one_is_named(tmp_path):
    extra = make_images(tmp_path / "unlabeled", n=5, seed=1)
    for f in extra.iterdir():
        f.rename(f.with_name(f"frame_{f.name}"))  # no label prefix: these need none
    cfg = load_config(write_config(tmp_path, data={"extra_dirs": [str(extra)]}, train={"epochs": 1}))
    logs: list[str] = []
    distiller = Distiller(cfg, progress=False, log=logs.append)
    assert len(distiller.train_files) == len(distiller.train_set) + 5  # every extra image trains
    assert len(distiller.val_set) == 2  # the held-out part is the labeled folder's own
    distiller.run()
    assert any("training samples (9 images x 4)" in line for line in logs)
    bad = load_config(write_config(tmp_path, data={"extra_dirs": [str(tmp_path / "nope")]}))
    with pytest.raises(DataError, match=r"data\.extra_dirs: .*nope"):
        Distiller(bad, progress=False, log=lambda s: None)


def test_hold_out_extra_keeps_each_folders_share_out_of_training(tmp_path):
    from split.train.data import train_val_split

    extra = make_images(tmp_path / "unlabeled", n=8, seed=1)
    cfg = load_config(write_config(tmp_path, data={"extra_dirs": [str(extra)], "hold_out_extra": True}))
    distiller = Distiller(cfg, progress=False, log=lambda s: None)
    files = sorted(extra.iterdir())
    _, held = train_val_split([f.name for f in files], 0.34, 0)  # the config's rule, on the extra folder
    assert len(held) == 3
    used = {f.resolve() for f in distiller.train_files}
    assert not used & {files[i].resolve() for i in held}
    assert len(distiller.train_files) == len(distiller.train_set) + 8 - 3


def test_split_point_of_the_config_travels_in_the_checkpoint(tmp_path):
    # The recipe cuts mobilenet_v2 at features.6; this bottleneck sits at features.3 (24 channels).
    cfg = load_config(write_config(tmp_path, split_point="features.3", train={"epochs": 1, "freeze_through": "features.1"}))
    train(cfg, progress=False, log=lambda s: None)
    ckpt = torch.load(cfg.output, weights_only=True)
    assert ckpt["split_point"] == "features.3"
    sm, _ = build("mobilenet_v2", checkpoint=cfg.output)
    assert sm.at == "features.3" and sm.bottleneck.in_channels == 24
    image = torch.rand(3, 64, 64)
    assert sm.decode(sm.encode([image])[0])["logits"].shape[-1] == 1000  # a payload cut there decodes
    bad = load_config(write_config(tmp_path, split_point="features.99"))
    with pytest.raises(ConfigError, match=r"split_point: .*features\.99"):
        Distiller(bad, progress=False, log=lambda s: None)


def test_normalize_stages_divides_each_stage_by_the_teachers_variance(tmp_path):
    stages = ["features.6", "features.10"]
    cfg = load_config(write_config(tmp_path, train={"epochs": 2, "loss": "ghnd", "ghnd_stages": stages,
                                                      "normalize_stages": True}))
    d = Distiller(cfg, progress=False, log=lambda s: None)
    result = d.run()
    assert set(d.stage_scale) == set(stages) and all(v > 0 for v in d.stage_scale.values())
    out = {s: torch.zeros(2, 3) for s in stages}
    _, parts = d.loss(out, {s: torch.full((2, 3), 2.0) for s in stages})
    for s in stages:  # MSE 4 over each stage's own variance
        assert parts[s] == pytest.approx(4.0 / d.stage_scale[s], rel=1e-5)
    assert all(np.isfinite(h["loss"]) for h in result.history)


def test_a_checkpoint_from_before_a_new_config_key_still_resumes(tmp_path):
    first = load_config(write_config(tmp_path, train={"epochs": 1}))
    train(first, progress=False, log=lambda s: None)
    ckpt = torch.load(first.output, weights_only=True)
    del ckpt["config"]["data"]["extra_dirs"]  # written before data.extra_dirs existed
    torch.save(ckpt, first.output)
    more = load_config(write_config(tmp_path, train={"epochs": 2}))
    assert train(more, resume=True, progress=False, log=lambda s: None).epochs_run == 1


SHIPPED_CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_recipe_validates_and_names_a_known_model(path):
    """The README's training commands point at these files; a key renamed in code must not break them."""
    cfg = load_config(path)
    assert get_recipe(cfg.recipe).name == cfg.recipe
    assert cfg.output.endswith(".pt") and cfg.train.epochs > 0

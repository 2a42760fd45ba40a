"""Checkpoints round-trip through `build`; a distilled head leaves the original model intact."""

import pytest
import torch

from split.recipes import build
from split.weights import WeightsError


def test_head_and_bottleneck_checkpoint_round_trip(tmp_path):
    sm, _ = build("ssdlite320_mobilenet_v3_large")
    original = {k: v.clone() for k, v in sm.model.state_dict().items()}
    head_state = {k: v + 0.01 if v.is_floating_point() else v for k, v in sm.head.chain.state_dict().items()}
    bn_state = {k: v * 0.5 if v.is_floating_point() else v for k, v in sm.bottleneck.state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"recipe": sm.name, "head": head_state, "bottleneck": bn_state}, path)
    loaded, source = build("ssdlite320_mobilenet_v3_large", checkpoint=path)
    assert "checkpoint" in source and "head, bottleneck" in source
    for k, v in loaded.head.chain.state_dict().items():
        assert torch.equal(v, head_state[k])
    for k, v in loaded.bottleneck.state_dict().items():
        assert torch.equal(v, bn_state[k])
    for k, v in loaded.model.state_dict().items():  # local/offload still run the original network
        assert torch.equal(v, original[k]), k


def test_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build("ssdlite320_mobilenet_v3_large", checkpoint=tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot be read"):
        build("ssdlite320_mobilenet_v3_large", checkpoint=bad)
    other = tmp_path / "other.pt"
    torch.save({"recipe": "resnet50", "bottleneck": {}}, other)
    with pytest.raises(WeightsError, match="is for model 'resnet50'"):
        build("ssdlite320_mobilenet_v3_large", checkpoint=other)
    wrong = tmp_path / "wrong.pt"
    torch.save({"recipe": "ssdlite320_mobilenet_v3_large", "bottleneck": {"nope": torch.zeros(1)}}, wrong)
    with pytest.raises(WeightsError, match="does not fit"):
        build("ssdlite320_mobilenet_v3_large", checkpoint=wrong)


def test_missing_cached_weights_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="not in the torch hub cache.*no download is attempted"):
        build("ssdlite320_mobilenet_v3_large", weights="COCO_V1")
    with pytest.raises(WeightsError, match="has no weights 'NOPE'"):
        build("mobilenet_v2", weights="NOPE")


def test_a_recipe_builds_its_shipped_network_and_split_by_name(tmp_path, monkeypatch):
    """`Recipe.checkpoint` + `Recipe.split_checkpoint`: by name, the shipped network with its
    class subset and the distilled head/bottleneck; an explicit checkpoint still wins."""
    import dataclasses

    import split.recipes as recipes
    from split.builders import fasterrcnn_mobilenet_v2_320_fpn

    torch.manual_seed(0)
    net = fasterrcnn_mobilenet_v2_320_fpn(num_classes=2).eval()
    (tmp_path / "checkpoints").mkdir()
    torch.save({"recipe": "fasterrcnn_mobilenet_v2_320_fpn", "model": net.state_dict(), "classes": {1: "person"},
                "builder_kwargs": {"num_classes": 2}}, tmp_path / "checkpoints" / "net.pt")
    sm, _ = build("fasterrcnn_mobilenet_v2_320_fpn", checkpoint=tmp_path / "checkpoints" / "net.pt")
    head = {k: v + 0.01 if v.is_floating_point() else v for k, v in sm.head.chain.state_dict().items()}
    torch.save({"recipe": sm.name, "head": head, "bottleneck": sm.bottleneck.state_dict()},
               tmp_path / "checkpoints" / "split.pt")
    base = recipes.get_recipe("fasterrcnn_mobilenet_v2_320_fpn")
    shipped = dataclasses.replace(base, checkpoint="checkpoints/net.pt", split_checkpoint="checkpoints/split.pt")
    monkeypatch.setattr(recipes, "get_recipe", lambda name: shipped)
    monkeypatch.setattr(recipes, "_shipped", lambda rel: tmp_path / rel if rel and (tmp_path / rel).is_file() else None)

    by_name, source = build("fasterrcnn_mobilenet_v2_320_fpn")
    assert "split.pt" in source and by_name.classes == {1: "person"}
    assert all(torch.equal(v, head[k]) for k, v in by_name.head.chain.state_dict().items())
    for k, v in by_name.model.state_dict().items():  # local/offload run the shipped network
        assert torch.equal(v, net.state_dict()[k]), k
    plain, source = build("fasterrcnn_mobilenet_v2_320_fpn", checkpoint=tmp_path / "checkpoints" / "net.pt")
    key = next(k for k, v in head.items() if v.is_floating_point())
    assert "split.pt" not in source and not torch.equal(plain.head.chain.state_dict()[key], head[key])


def test_a_recipe_builds_its_default_weights_when_cached_and_says_so(tmp_path, monkeypatch):
    """`Recipe.weights`: by name, mobilenet_v2 is the ImageNet network (when `make weights` put it in
    the hub cache) under its shipped 128-channel split (entropy-coded); without the file the line says why it is
    random init; asked for weights explicitly, it builds exactly those."""
    import os

    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _, source = build("mobilenet_v2")
    assert source.startswith("random init") and "IMAGENET1K_V1 weights are not in the torch hub cache" in source
    net = torchvision.models.mobilenet_v2(weights=None)  # stands for the ImageNet file
    cached = tmp_path / "hub" / "checkpoints" / os.path.basename(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url)
    cached.parent.mkdir(parents=True)
    torch.save(net.state_dict(), cached)
    sm, source = build("mobilenet_v2")
    assert "mobilenet_v2_esb_l01_s16p_e8.pt (head, bottleneck) over torchvision MobileNet_V2_Weights.IMAGENET1K_V1" in source
    assert sm.bottleneck.spec()["channels"] == 128 and sm.codec.name == "entropy"
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in sm.model.state_dict().items())
    plain, source = build("mobilenet_v2", weights="IMAGENET1K_V1")
    assert source == "torchvision MobileNet_V2_Weights.IMAGENET1K_V1" and plain.bottleneck.spec()["channels"] == 3

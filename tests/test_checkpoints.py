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

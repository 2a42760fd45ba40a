"""A torch device's form of a model (`split.fusion.device_form`): the edge's fold, on the device's side too.

The device runs its head and its local model with each BatchNorm folded and channels-last
(docs/device-form.md). What must hold: the same outputs to float tolerance, payloads an edge
decodes as the plain head's, the bottleneck's digest the edge checks unchanged, a hedged run that
still resumes at the split, and `splitedge run` / `splitedge profile` in that form unless told
`--plain-model`."""

from __future__ import annotations

import glob
import json

import pytest
import torch

from split.fusion import device_form
from split.images import load_image
from split.recipes import build

from tests.conftest import ROOT
from tests.test_fusion import NORMS, _close

IMAGES = sorted(glob.glob(str(ROOT / "samples" / "people" / "*.jpg")))[:2]


def _norms(module: torch.nn.Module) -> int:
    return sum(isinstance(m, NORMS) for m in module.modules())


@pytest.mark.parametrize("recipe", ["ssdlite300_mobilenet_v2_person", "mobilenet_v2"])
def test_the_device_form_computes_what_the_plain_model_does(recipe):
    plain, _ = build(recipe)
    model, _ = build(recipe)
    digest = model.bottleneck_digest()
    assert _norms(model.head.chain) > 0 and _norms(model.model) > 0
    assert device_form(model) > 0
    assert device_form(model) == 0  # once is all
    assert _norms(model.head.chain) == 0 and _norms(model.model) == 0 and _norms(model.tail.chain) == 0
    assert model.bottleneck_digest() == digest  # the edge still serves the bottleneck this device splits for
    for image in map(load_image, IMAGES):
        _close(plain.full(image), model.full(image), "local")
        want, sent = plain.encode_message(image), model.encode_message(image)
        if recipe == "ssdlite300_mobilenet_v2_person":  # docs/device-form.md: the default's bytes, unchanged here
            assert sent.tensor.data == want.tensor.data
        # what the device sends decodes on a plain edge as the plain head's payload does; its own tail agrees
        _close(plain.decode_message(want), plain.decode_message(sent), "split frame")
        _close(plain.decode_message(want), model.decode_message(sent), "device-form tail")


def test_a_head_of_the_networks_own_layers_folds_with_it_and_a_hedged_run_still_resumes():
    """Without a checkpoint the head is the network's own modules; folded in place, it stays them."""
    from mobile_client.device import TorchDevice

    model, _ = build("ssdlite320_mobilenet_v3_large")
    image = load_image(IMAGES[0])
    want = model.full(image)
    assert TorchDevice(model).resumable()
    assert device_form(model) > 0 and _norms(model.head.chain) == 0
    device = TorchDevice(model)
    assert device.resumable()  # a hedged frame's local run can start from the split point's features
    payload, _, features = device.encode(image, "split", hedge=True)
    steps = device.local_steps(image, payload, features)
    with pytest.raises(StopIteration) as stop:
        while True:
            next(steps)
    _close(want, stop.value.value, "resumed local run")


def test_run_and_profile_use_the_device_form_unless_told_plain(tmp_path, capsys):
    from mobile_client.cli import _auto_costs, _device, _parser
    from split.cli import _profile

    base = ["--source", str(ROOT / "samples" / "people"), "--out", str(tmp_path / "r.jsonl"), "--model", "mobilenet_v2"]
    folded, _, _ = _device(_parser().parse_args(base))
    plain, _, where = _device(_parser().parse_args([*base, "--plain-model"]))
    assert _norms(folded.model) == 0 and _norms(plain.model) > 0 and "as built" in where
    with pytest.raises(ValueError, match="--plain-model is the torch runtime's"):
        _device(_parser().parse_args([*base, "--plain-model", "--runtime", "onnx", "--bundle", str(tmp_path)]))
    for extra, form in (([], "device"), (["--plain-model"], "plain")):
        out = tmp_path / f"{form}.json"
        assert _profile(["--model", "mobilenet_v2", "--repeat", "1", "--sizes", "96x128", "--out", str(out),
                         "--images", str(ROOT / "samples" / "people"), *extra]) == 0
        assert json.loads(out.read_text())["form"] == form
    # a profile of the other form is read, with a warning that its times are about 2x off
    args = _parser().parse_args([*base, "--mode", "auto", "--device-profile", str(tmp_path / "plain.json")])
    _auto_costs(folded, None, args, iter([]))
    assert "timed the plain form, this device runs the device form" in capsys.readouterr().err
    args = _parser().parse_args([*base, "--mode", "auto", "--device-profile", str(tmp_path / "device.json")])
    _auto_costs(folded, None, args, iter([]))
    assert "warning" not in capsys.readouterr().err

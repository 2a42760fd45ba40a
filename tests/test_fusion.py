"""The edge's form of a model (`split.fusion.edge_form`) computes what the plain model does.

Folding a BatchNorm into its convolution and laying weights out channels-last change rounding,
not the function: every served family's outputs (split and offload frames, one by one and in a
batch) agree with the plain model's to float tolerance."""

from __future__ import annotations

import glob

import pytest
import torch

from torchvision.ops import FrozenBatchNorm2d

from split.fusion import edge_form, fold_batchnorm, fold_chain
from split.images import load_image
from split.recipes import build

from tests.conftest import ROOT


NORMS = (torch.nn.BatchNorm2d, FrozenBatchNorm2d)


def _moved_statistics(net: torch.nn.Module, scale: bool = False) -> torch.nn.Module:
    """Every norm's running statistics (and with `scale` its weight) away from the identity a fresh
    norm is, so that a fold that drops or misplaces one shows in the outputs."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, NORMS):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                if scale:
                    m.weight.uniform_(0.5, 1.5)
    return net


def _close(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert a[k].shape == b[k].shape, (what, k)
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-3), (what, k, (a[k] - b[k]).abs().max())
        else:
            assert torch.equal(a[k], b[k]), (what, k)


@pytest.mark.parametrize("recipe", ["ssdlite300_mobilenet_v2_person", "mobilenet_v2", "fasterrcnn_mobilenet_v2_320_fpn",
                                    "ssdlite320_mobilenet_v3_large", "mobilenet_v3_large", "resnet50"])
def test_the_edge_form_computes_what_the_plain_model_does(recipe):
    model, _ = build(recipe)
    images = [load_image(p) for p in sorted(glob.glob(str(ROOT / "samples" / "people" / "*.jpg")))[:2]]
    payloads = [model.encode_message(im) for im in images] + [model.encode_image(im, 80) for im in images]
    plain = [model.decode_message(p) for p in payloads]
    digest = model.bottleneck_digest()
    assert edge_form(model) > 0
    assert edge_form(model) == 0  # once is all: a second call finds nothing left to fold
    assert model.bottleneck_digest() == digest  # a device still finds the bottleneck it splits for
    for im, p in zip(images, payloads):  # the head stays the plain network: this process sends a device's bytes
        assert model.encode_message(im).tensor.data == p.tensor.data
    assert not any(isinstance(m, NORMS) for m in model.tail.chain.modules())  # pairs the stages cut apart too
    for i, (p, want) in enumerate(zip(payloads, plain)):
        _close(want, model.decode_message(p), f"frame {i}")
    for i, (want, got) in enumerate(zip(plain, model.decode_batch(payloads))):
        _close(want, got, f"batched frame {i}")


def test_only_a_norm_that_follows_a_convolution_in_eval_mode_is_folded():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    trained = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(4))
    assert fold_batchnorm(torch.nn.Sequential(trained)) == 0  # training mode: its statistics still move
    norm_first = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Conv2d(3, 4, 1)).eval()
    assert fold_batchnorm(torch.nn.Sequential(norm_first)) == 0
    net = _moved_statistics(torch.nn.Sequential(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1),
                                                                    torch.nn.BatchNorm2d(4))).eval())
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    want = net(x)
    assert fold_batchnorm(net) == 1
    assert isinstance(net[0][1], torch.nn.Identity)
    assert torch.allclose(net(x), want, atol=1e-5)


def test_resnet_pairs_fold_and_a_returned_layer_keeps_its_output():
    """ResNet's blocks name their pairs (`conv1`/`bn1`); a detection body returns some layers' outputs."""
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter

    net = _moved_statistics(torchvision.models.resnet18(num_classes=10).eval())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    want = net(x)
    assert fold_batchnorm(net) == 20  # the stem, two per block of eight, three downsamples
    assert not any(isinstance(m, NORMS) for m in net.modules())
    assert torch.allclose(net(x), want, atol=1e-4)

    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    body = IntermediateLayerGetter(torch.nn.Sequential(conv, torch.nn.BatchNorm2d(4)).eval(), {"0": "conv"})
    assert fold_batchnorm(body) == 0 and body["0"] is conv  # the body returns the convolution's own output

    # a detection backbone's body: FrozenBatchNorm2d, two returned layers; the stem's pair is its children
    net = _moved_statistics(torchvision.models.resnet18(norm_layer=FrozenBatchNorm2d).eval(), scale=True)
    body = IntermediateLayerGetter(net, {"layer1": "0", "layer3": "1"})
    want = body(x)
    assert fold_batchnorm(body) == 1 + 2 * 6 + 2 and not any(isinstance(m, NORMS) for m in body.modules())
    got = body(x)
    assert all(torch.allclose(got[k], want[k], atol=1e-4) for k in want)


def test_a_pair_the_stages_cut_apart_folds_unless_the_convolution_is_tapped():
    def chain():
        return _moved_statistics(torch.nn.ModuleList([torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                                      torch.nn.ReLU()]).eval())

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    run = lambda net: net[2](net[1](net[0](x)))  # noqa: E731
    net = chain()
    want = run(net)
    assert fold_chain(net, [None, None, None]) == 1 and isinstance(net[1], torch.nn.Identity)
    assert torch.allclose(run(net), want, atol=1e-5)
    assert fold_chain(chain(), ["C4", None, None]) == 0  # the tap reads the convolution's own output


def test_a_head_that_shares_its_layers_with_the_network_stays_plain():
    """`split()` without `own_head` gives the head the network's own layers; the fold must not reach them."""
    import torchvision

    from split import split

    net = _moved_statistics(torchvision.models.mobilenet_v2(num_classes=10).eval())
    model = split(net, "features.3")  # float32 on the wire: any change to the head's arithmetic shows in the bytes
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0))
    want, plain = model.encode_message(image), model.full(image)
    assert edge_form(model) > 0
    assert model.encode_message(image).tensor.data == want.tensor.data
    _close(plain, model.decode_message(want), "split frame")


def test_the_server_serves_the_edge_form_unless_told_plain():
    """`ServedModel` puts what it serves in the edge's form; `serve --plain-model` keeps the network as built."""
    from edge_server import ServedModel
    from edge_server.cli import _parser

    assert _parser().parse_args(["--plain-model"]).plain_model and not _parser().parse_args([]).plain_model
    image = load_image(sorted(glob.glob(str(ROOT / "samples" / "people" / "*.jpg")))[0])
    plain_model, source = build("mobilenet_v2")
    payload = plain_model.encode_message(image)
    want = plain_model.decode_message(payload)
    served_plain = ServedModel(plain_model, source, "mobilenet_v2", edge_form=False)
    got, _ = served_plain.run(payload)
    assert all(torch.equal(want[k], got[k]) for k in want)  # untouched: bit-equal
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain_model.model.modules())
    folded, _ = build("mobilenet_v2")
    served = ServedModel(folded, source, "mobilenet_v2")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.model.modules())
    _close(want, served.run(payload)[0], "served")


def test_the_per_recipe_bench_prints_its_json_and_refuses_an_unknown_recipe(capsys, monkeypatch):
    """`bench/edge_form.py` (docs/scheduler.md's per-recipe table): one JSON object on stdout."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("edge_form_bench", ROOT / "bench" / "edge_form.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    assert bench.main(["--recipes", "mobilenet_v3_large", "--repeat", "1"]) == 0
    assert torch.get_num_threads() == threads  # the bench's one thread is not left behind
    out = json.loads(capsys.readouterr().out)
    (row,) = out["recipes"]
    assert row["recipe"] == "mobilenet_v3_large" and row["folded"] == 46 and out["torch_threads"] == 1
    assert row["weights"].startswith("random init")  # the recipe names no weights: the row says so
    assert all(row[k]["plain_ms"] > 0 and row[k]["edge_ms"] > 0 for k in ("tail", "offload"))
    with pytest.raises(SystemExit) as exc:
        bench.main(["--recipes", "mobilenet_v3_large,nope"])  # refused before anything is built
    assert exc.value.code == 2 and "unknown model 'nope'" in capsys.readouterr().err

    import split.recipes
    from split.weights import WeightsError

    def broken(name, **kw):
        raise WeightsError("checkpoints/x.pt was made with another compressai")

    monkeypatch.setattr(split.recipes, "build", broken)
    with pytest.raises(SystemExit) as exc:
        bench.main(["--recipes", "mobilenet_v3_large"])  # fails after the bench took one thread
    assert exc.value.code == 2 and "mobilenet_v3_large: checkpoints/x.pt was made" in capsys.readouterr().err
    assert torch.get_num_threads() == threads

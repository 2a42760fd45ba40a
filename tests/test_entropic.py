"""Entropic students: the entropy-coded codec round-trips bit-exactly, tables are the checkpoint's and are
never recomputed per frame, another compressai version is refused, hostile bytes never crash the
decoder, and rate-distortion distillation trains, resumes and builds through the recipe names.

Random-init models at 64 px on generated images: seconds on two cores.
"""

from __future__ import annotations

import random

import pytest
import torch

from bottlenecks import BottleneckSpecError, CodecError, EntropicStudent, bottleneck_from_spec
from bottlenecks.codecs import EncodedTensor
from edge_server.validation import ModelLimits, check_payload
from protos import splitedge_pb2 as pb
from split import PayloadMismatch
from split.api import SplitModel
from split.recipes import build
from split.train.config import ConfigError, load_config
from split.train.distill import train
from tests.test_training import write_config

pytestmark = pytest.mark.usefixtures("no_cached_weights")


def _student(prior: str = "factorized", seed: int = 0) -> EntropicStudent:
    torch.manual_seed(seed)
    st = EntropicStudent(32, channels=6, hidden=8, stride_log2=3, prior=prior, decoder_hidden=8).eval()
    st.prepare()
    return st


@pytest.mark.parametrize("prior", ["factorized", "hyperprior"])
def test_decompress_restores_the_quantized_latent_bit_exactly(prior):
    st = _student(prior)
    y = 3 * torch.randn(1, 6, 9, 11)
    data = st.compress(y)
    expected = st.quantized(y) if prior == "factorized" else torch.round(y)
    assert torch.equal(st.decompress(data, (9, 11)), expected)
    # A student rebuilt from the state dict (the checkpoint) decodes the same bytes the same way.
    again = EntropicStudent.from_spec(32, st.spec())
    again.load_state_dict(st.state_dict())
    assert again.prepared() and torch.equal(again.eval().decompress(data, (9, 11)), expected)


def test_tables_are_prepared_once_not_per_frame(monkeypatch):
    st = _student()
    calls = []
    monkeypatch.setattr(st.entropy, "update", lambda *a, **k: calls.append(1))
    codec = st.codec()
    for _ in range(3):
        codec.decode(codec.encode(torch.randn(1, 6, 5, 5)))
    assert calls == []
    fresh = EntropicStudent(32, channels=6, hidden=8, decoder_hidden=8)
    with pytest.raises(CodecError, match="not prepared"):
        fresh.compress(torch.zeros(1, 6, 4, 4))


def test_another_compressai_version_is_refused_with_a_message():
    spec = {**_student().spec(), "compressai": "0.0.1"}
    with pytest.raises(BottleneckSpecError, match=r"made with compressai 0\.0\.1, this is .*install compressai==0\.0\.1"):
        bottleneck_from_spec(32, spec)
    with pytest.raises(BottleneckSpecError, match="unknown key 'bogus'"):
        bottleneck_from_spec(32, {**_student().spec(), "bogus": 1})


@pytest.mark.parametrize("prior", ["factorized", "hyperprior"])
def test_hostile_bytes_give_an_error_or_a_latent_never_a_crash(prior):
    st = _student(prior)
    codec = st.codec()
    r = random.Random(1)
    for n in [1, 2, 3, 4, 5, 8, 17, 100, 900]:
        for _ in range(20):
            data = bytes(r.getrandbits(8) for _ in range(n))
            try:
                out = codec.decode(EncodedTensor(codec.name, "float32", (1, 6, 12, 12), data))
            except CodecError:
                continue
            assert out.shape == (1, 6, 12, 12)
    for bad in [b"", bytes(codec.max_bytes((1, 6, 12, 12)) + 1)]:
        with pytest.raises(CodecError, match="bytes for shape"):
            codec.decode(EncodedTensor(codec.name, "float32", (1, 6, 12, 12), bad))
    with pytest.raises(CodecError, match="not a latent"):
        codec.decode(EncodedTensor(codec.name, "float32", (1, 5, 12, 12), b"x"))


def test_split_model_runs_the_student_instead_of_the_head_and_the_edge_validates_it():
    sm, _ = build("mobilenet_v2")
    st = _student()
    model = SplitModel(sm.model, "features.6", st, codec="uint8", name="mobilenet_v2")
    assert model.codec.name == "entropy" and len(model.head.chain.names) == 0
    image = torch.rand(3, 80, 96)
    payload = model.encode_message(image)
    assert payload.tensor.codec == "entropy" and list(payload.tensor.shape) == [1, 6, 28, 28]
    assert (payload.split_size.height, payload.split_size.width) == model._expected_split_size((224, 224))
    out = model.decode(payload.SerializeToString())
    assert out["logits"].shape[-1] == 1000
    limits = ModelLimits.of(model)
    check_payload(payload, limits)  # a real payload passes the door
    bad = pb.Payload()
    bad.CopyFrom(payload)
    bad.tensor.data = bytes(2 * 6 * 28 * 28 + 5000)
    with pytest.raises(PayloadMismatch, match=r"entropy: tensor shape \[1, 6, 28, 28\] takes 1\.\.\d+ bytes"):
        check_payload(bad, limits)
    with pytest.raises(ValueError, match="no split-point features for a prefilter"):
        model.prefilter = torch.nn.Identity()


def _rd_config(tmp_path, **train_over):
    return write_config(
        tmp_path, split_point="features.6",
        bottleneck={"channels": 4, "hidden": 8, "kind": "entropic", "prior": "factorized", "stride_log2": 3,
                    "decoder_hidden": 8, "downsample": 0},
        train={"epochs": 2, "stage2_epochs": 1, "lmbda": 1.0, "freeze_through": None, "augment_repeats": 2,
               **train_over})


def test_rate_distortion_training_two_stages_resume_and_build(tmp_path):
    cfg = load_config(_rd_config(tmp_path, epochs=1))
    first = train(cfg, progress=False, log=lambda s: None)
    assert first.epochs_run == 2 and "kb" in first.history[0] and "aux" in first.history[0]
    assert first.history[1]["lr"] == cfg.train.stage2_lr and "aux" not in first.history[1]
    ckpt = torch.load(first.checkpoint, weights_only=True)
    assert "head" not in ckpt and ckpt["bottleneck_spec"]["kind"] == "entropic"
    # Resume: a longer stage 2 continues from the stored epoch.
    longer = load_config(_rd_config(tmp_path, epochs=1, stage2_epochs=2))
    more = train(longer, resume=True, progress=False, log=lambda s: None)
    assert more.epochs_run == 1 and [h["epoch"] for h in more.history] == [1, 2, 3]
    sm, source = build("mobilenet_v2", checkpoint=first.checkpoint)
    assert sm.codec.name == "entropy" and "bottleneck" in source
    image = torch.rand(3, 70, 90)
    payload = sm.encode([image])[0]
    again, _ = build("mobilenet_v2", checkpoint=first.checkpoint)  # the edge's copy: the same tables
    assert torch.allclose(again.decode(payload)["logits"], sm.decode(payload)["logits"])


def test_rate_distortion_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="freeze_through must be null"):
        load_config(_rd_config(tmp_path, freeze_through="features.3"))
    with pytest.raises(ConfigError, match=r"train\.prior_lr must be > 0"):
        load_config(_rd_config(tmp_path, freeze_through=None, prior_lr=0))
    with pytest.raises(ConfigError, match=r"train\.init_step must be > 0, got 0"):
        load_config(_rd_config(tmp_path, freeze_through=None, init_step=0))
    with pytest.raises(ConfigError, match=r"train\.lmbda and train\.stage2_epochs apply to bottleneck\.kind entropic"):
        load_config(write_config(tmp_path, train={"lmbda": 1.0}))


def test_init_from_starts_another_lambda_from_a_finished_run(tmp_path):
    first = train(load_config(_rd_config(tmp_path, epochs=1, stage2_epochs=0)), progress=False, log=lambda s: None)
    other = tmp_path / "other"
    other.mkdir()
    cfg = load_config(_rd_config(other, epochs=1, stage2_epochs=0, lmbda=3.0, init_from=str(first.checkpoint)))
    logs: list[str] = []
    train(cfg, progress=False, log=logs.append)
    assert any(line.startswith("init_from: bottleneck of") for line in logs)
    wrong = load_config(write_config(tmp_path / "w", train={"epochs": 1, "init_from": str(first.checkpoint)}))
    with pytest.raises(ConfigError, match="init_from .* holds bottleneck"):
        train(wrong, progress=False, log=lambda s: None)


def _prior_on_8bit(tmp_path, kind: str, channels: int, downsample: int, **train_over):
    """An 8-bit `kind` bottleneck trained for an epoch, then a learned prior on its latent started from
    it: (the prior's config, its bottleneck spec, the training log)."""
    eight = load_config(write_config(tmp_path, split_point="features.6", train={"epochs": 1}, bottleneck={
        "channels": channels, "hidden": 8, "downsample": downsample, "kind": kind}))
    train(eight, progress=False, log=lambda s: None)
    other = tmp_path / "prior"
    other.mkdir()
    spec = {"channels": channels, "hidden": 8, "downsample": downsample, "kind": "entropic", "encoder_from": "split",
            "split_kind": kind}
    cfg = load_config(write_config(other, split_point="features.6", bottleneck=spec, train={
        "epochs": 1, "stage2_epochs": 1, "lmbda": 1.0, "init_from": eight.output, **train_over}))
    logs: list[str] = []
    train(cfg, progress=False, log=logs.append)
    return cfg, spec, logs


def test_a_learned_prior_on_an_8bit_bottleneck_starts_from_its_checkpoint(tmp_path):
    cfg, _, logs = _prior_on_8bit(tmp_path, "conv", 2, 0)
    assert any("latent scaled by" in line for line in logs)
    sm, _ = build("mobilenet_v2", checkpoint=cfg.output)
    assert sm.codec.name == "entropy" and len(sm.head.chain.names) == 7  # features.0-6 stay on the device
    image = torch.rand(3, 70, 90)
    assert sm.decode(sm.encode([image])[0])["logits"].shape[-1] == 1000


def test_a_learned_prior_on_an_8bit_block_code_starts_from_its_checkpoint(tmp_path):
    """The classifier's shipped 8-bit kind: a block code at 1/4 of features.6's size; the prior codes
    its 7 x 7 latent, the decoder's padded blocks are cropped back to the split point's size."""
    cfg, spec, logs = _prior_on_8bit(tmp_path, "block", 8, 2, init_step=2, prior_lr=0.05)
    assert any("(8-bit block); latent scaled by" in line and "(2 x its median 8-bit step" in line for line in logs)
    sm, _ = build("mobilenet_v2", checkpoint=cfg.output)
    assert sm.codec.name == "entropy" and len(sm.head.chain.names) == 7
    payload = sm.encode_message(torch.rand(3, 70, 90))
    assert list(payload.tensor.shape) == [1, 8, 7, 7]
    check_payload(payload, ModelLimits.of(sm))
    assert sm.decode_message(payload)["logits"].shape[-1] == 1000
    torch.manual_seed(0)
    st = EntropicStudent(32, 8, 8, encoder_from="split", split_kind="block", downsample=2).eval()
    out, _ = st(torch.rand(1, 32, 30, 30))  # 30 is not whole blocks: 8 x 8 latent, cropped back
    assert out.shape == (1, 32, 30, 30)
    assert bottleneck_from_spec(32, st.spec()).spec() == st.spec()
    with pytest.raises(ValueError, match="split_kind must be one of"):
        EntropicStudent(32, 8, 8, split_kind="block", downsample=2)  # encoder_from image has no 8-bit kind
    with pytest.raises(ConfigError, match=r"downsample 0 \(> 0 only with encoder_from split\)"):
        load_config(write_config(tmp_path / "w", split_point="features.6", bottleneck={
            **spec, "split_kind": "conv", "encoder_from": "image"}, train={"lmbda": 1.0, "freeze_through": None}))


def test_the_priors_densities_learn_at_their_own_rate(tmp_path):
    """train.prior_lr: the prior's densities (not its quantiles, not the network) get it, on the schedule."""
    from split.train.rate_distortion import RateDistortionDistiller

    cfg = load_config(_rd_config(tmp_path, freeze_through=None, lr=0.01, prior_lr=0.5, milestones=[1], gamma=0.1))
    d = RateDistortionDistiller(cfg, progress=False, log=lambda s: None)
    d.begin_epoch(1)
    prior_ids = {id(p) for n, p in d.bottleneck.named_parameters() if n.startswith("entropy.") and "quantiles" not in n}
    lrs = {g.get("prior", False): (g["lr"], {id(p) for p in g["params"]}) for g in d.optimizer.param_groups}
    assert lrs[True][1] == prior_ids and lrs[True][0] == pytest.approx(0.05) and lrs[False][0] == pytest.approx(0.001)

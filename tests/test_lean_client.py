"""The lean device (`pip install splitedge[client]`, `splitedge run --runtime onnx --bundle DIR`).

- Parity, in this process: from an ONNX bundle of the default detector, numpy's preprocessing
  is torch's to float rounding (measured: at most 1.2e-7 on the sample frames), the lean
  device's entropy symbols are the torch device's on every value, its payload has the same
  bytes, and the edge's torch tail gives the same detections from it. Both runtimes code with
  `bottlenecks.wire`; what could differ is only the head's arithmetic (torch vs onnxruntime).
- A fresh venv with only `[client]`: no torch, no torchvision; the lean client serves local,
  split, offload and auto against a real server (this venv's `splitedge serve`) on loopback;
  a torch-only command there fails with one line naming the extra to install.

The fresh venv installs from PyPI (about a minute with pip's cache): skipped when pip cannot
reach an index. The default detector's weights come from `make weights`: skipped without them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[dev])")
pytest.importorskip("onnx", reason="onnx is not installed (pip install -e .[dev])")

from mobile_client.device import to_tensor  # noqa: E402
from mobile_client.onnx_device import OnnxDevice  # noqa: E402
from split.bundle import preprocess  # noqa: E402
from split.export import export_onnx  # noqa: E402
from split.images import read_rgb  # noqa: E402
from split.models.convert_tf import cached_checkpoint  # noqa: E402
from split.recipes import build, default_recipe  # noqa: E402

from tests.conftest import ENV, ROOT, ServerProcess  # noqa: E402

FRAMES = sorted((ROOT / "samples").glob("*/*.jpg"))
PREPROCESS_ATOL = 1e-5  # measured <= 1.2e-7

pytestmark = pytest.mark.skipif(cached_checkpoint() is None,
                                reason="the default detector's converted weights are not cached (`make weights`)")


@pytest.fixture(scope="module")
def person():
    model, _ = build(default_recipe().name)
    model.prefilter = None  # the bundle has none (not exported)
    return model


@pytest.fixture(scope="module")
def bundle(person, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_onnx(person, out)
    finally:
        torch.set_num_threads(saved)
    return out


def test_the_lean_device_sends_what_the_torch_device_sends(person, bundle):
    device = OnnxDevice(bundle)
    student = person.codec.student
    for path in FRAMES:
        rgb = read_rgb(path)
        image = to_tensor(rgb)
        batch = person.adapter.preprocess(image)
        assert np.abs(preprocess(rgb, device.manifest) - batch.tensor.numpy()).max() <= PREPROCESS_ATOL, path
        lean, torch_payload = device.split_payload(rgb), person.encode_message(image)
        with torch.no_grad():
            y, _ = person.head(batch.tensor)
        c, h, w = y.shape[1:]
        decoded = student.table_coder().decode(lean.tensor.data, np.broadcast_to(np.arange(c).reshape(c, 1, 1), (c, h, w)))
        assert np.array_equal(decoded.reshape(-1), student.symbols(y).reshape(-1)), path  # every symbol, bit-exactly
        assert lean.tensor.data == torch_payload.tensor.data, path
        lean_fields = {k: v for k, v in lean.ListFields() if k.name != "tensor"}
        torch_fields = {k: v for k, v in torch_payload.ListFields() if k.name != "tensor"}
        assert lean_fields == torch_fields, path
        ours, theirs = person.decode_message(lean), person.decode_message(torch_payload)
        assert torch.equal(ours["boxes"], theirs["boxes"]) and torch.equal(ours["scores"], theirs["scores"]), path


def test_the_lean_local_run_gives_the_torch_detections(person, bundle):
    device = OnnxDevice(bundle, threads=1)
    for path in FRAMES[:4]:
        rgb = read_rgb(path)
        ours, theirs = device.full(rgb), person.full(to_tensor(rgb))
        keep = int((theirs["scores"] > 0.3).sum())
        assert int((ours["scores"] > 0.3).sum()) == keep, path
        assert np.abs(ours["boxes"][:keep] - theirs["boxes"][:keep].numpy()).max(initial=0.0) < 0.05, path


# -- a fresh venv with only [client] -------------------------------------------------------------
@pytest.fixture(scope="module")
def lean_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("lean") / "venv"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "lean_venv.py"), str(venv)], capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        if "Could not find a version" in done.stderr or "NewConnectionError" in done.stderr:
            pytest.skip(f"pip cannot reach a package index: {done.stderr.strip().splitlines()[-1]}")
        raise AssertionError(done.stderr)
    return venv


def _lean(venv: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**ENV, "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    # Run from a folder outside the checkout: the installed package, not the source tree, is imported.
    return subprocess.run([str(venv / "bin" / "splitedge"), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=venv.parent)


@pytest.mark.slow
def test_a_client_only_venv_has_no_torch_and_serves_every_mode(lean_venv, bundle, tmp_path):
    python = str(lean_venv / "bin" / "python")
    for name in ("torch", "torchvision", "compressai"):
        probe = subprocess.run([python, "-c", f"import {name}"], capture_output=True, text=True, cwd=tmp_path)
        assert probe.returncode != 0 and "No module named" in probe.stderr, name
    source = ROOT / "samples" / "people"
    server = ServerProcess()  # the default model, this (full) venv
    try:
        for mode in ("local", "split", "offload", "auto"):
            out = tmp_path / f"{mode}.jsonl"
            done = _lean(lean_venv, "run", "--runtime", "onnx", "--bundle", str(bundle), "--server", server.target,
                         "--mode", mode, "--source", str(source), "--out", str(out))
            assert done.returncode == 0, done.stderr
            records = [json.loads(line) for line in out.read_text().splitlines()]
            assert len(records) == len(list(source.glob("*.jpg"))), mode
            assert all(r["error"] is None for r in records), records
            if mode != "auto":
                assert {r["mode"] for r in records} == {mode}
            if mode in ("split", "offload"):
                assert all(r["payload_bytes"] > 0 and r["server_ms"] > 0 for r in records), records
            assert any(d["label"] == 1 for r in records for d in r["detections"]), mode  # people are found
    finally:
        server.stop()
    torch_only = _lean(lean_venv, "run", "--server", "127.0.0.1:1", "--mode", "local", "--source", str(source),
                       "--out", str(tmp_path / "x.jsonl"))
    assert torch_only.returncode == 2 and "pip install 'splitedge[edge]'" in torch_only.stderr, torch_only.stderr
    assert len(torch_only.stderr.strip().splitlines()) == 1, torch_only.stderr
    serve = _lean(lean_venv, "serve")
    assert serve.returncode == 2 and "pip install 'splitedge[edge]'" in serve.stderr, serve.stderr


def test_a_bundle_names_what_is_missing_and_a_device_needs_only_its_graphs(bundle, tmp_path):
    import json as _json
    import shutil

    from split.bundle import BundleError, load_manifest

    device_only = tmp_path / "device-only"
    shutil.copytree(bundle, device_only)
    shutil.rmtree(device_only / "edge")  # a device carries no edge graph
    assert OnnxDevice(device_only).model.name == default_recipe().name
    with pytest.raises(BundleError, match=r"edge/tail\.onnx \(tail\): listed in the manifest but missing"):
        load_manifest(device_only)  # every file, when no roles are named
    manifest = _json.loads((bundle / "manifest.json").read_text())
    del manifest["payload"]["split_size"]
    (device_only / "manifest.json").write_text(_json.dumps(manifest))
    with pytest.raises(BundleError, match=r"no 'payload\.split_size'"):
        OnnxDevice(device_only)
    assert manifest["classes"] == {"1": "person"} and manifest["split"]["bottleneck_digest"]


@pytest.mark.slow
def test_a_device_refuses_to_split_against_an_edge_with_another_bottleneck(bundle, tmp_path):
    """The 8-bit checkpoint served, the entropy-coded bundle on the device: one line, exit 2, before any frame;
    offload needs only the model and goes on."""
    from tests.conftest import splitedge

    server = ServerProcess("--checkpoint", str(ROOT / "checkpoints" / "ssdlite_person_f6_c6.pt"))
    try:
        common = ["--runtime", "onnx", "--bundle", str(bundle), "--server", server.target, "--source",
                  str(ROOT / "samples" / "people"), "--limit", "2"]
        split = subprocess.run(splitedge("run", *common, "--mode", "split", "--out", str(tmp_path / "s.jsonl")),
                               capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
        assert split.returncode == 2, split.stderr
        line = split.stderr.strip().splitlines()[-1]
        assert "splitedge run: error:" in line and "bottleneck_digest" in line and "codec 'uint8'" in line, line
        offload = subprocess.run(splitedge("run", *common, "--mode", "offload", "--out", str(tmp_path / "o.jsonl")),
                                 capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
        assert offload.returncode == 0, offload.stderr
        assert all(json.loads(r)["error"] is None for r in (tmp_path / "o.jsonl").read_text().splitlines())
    finally:
        server.stop()

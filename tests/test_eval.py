"""`splitedge eval`: the JSON has the documented layout for classifiers and detectors, the
plot is written, `--val-only` keeps exactly the training run's held-out images, and the
prefilter hook reports when a checkpoint carries one.

Small and self-contained: generated images (and a generated COCO file) in tmp_path and
random-init models, so nothing depends on shared data or weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from split.train.cli import main as split_cli
from split.train.data import train_val_split
from tests.test_training import make_images

pytestmark = pytest.mark.usefixtures("no_cached_weights")  # random init whatever the machine has cached

ACCURACY_KEYS_CLASSIFIER = {"payload_bytes_median", "top1", "top1_agreement"}


def run_eval(*args: str) -> dict:
    assert split_cli("eval", [*args, "--no-progress"]) == 0
    out = Path(args[list(args).index("--json") + 1])
    return json.loads(out.read_text())


def test_classifier_json_has_the_documented_keys(tmp_path):
    images = make_images(tmp_path / "images", n=2, size=(120, 160))
    result = run_eval("--model", "mobilenet_v2", "--images", str(images), "--labels", "prefix",
                      "--json", str(tmp_path / "out.json"), "--plot", str(tmp_path / "out.png"))
    assert {"original", "split", "offload", "prefilter"} <= set(result)
    assert result["images"] == 2 and result["family"] == "classifier"
    assert result["original"]["payload_bytes_median"] == 0
    assert ACCURACY_KEYS_CLASSIFIER <= set(result["original"])
    assert result["original"]["top1_agreement"] == 1.0
    assert ACCURACY_KEYS_CLASSIFIER <= set(result["split"])
    assert set(result["offload"]) == {"q50", "q75", "q90"}
    for q in ("q50", "q75", "q90"):
        assert ACCURACY_KEYS_CLASSIFIER <= set(result["offload"][q])
    b = result["offload"]
    assert 0 < b["q50"]["payload_bytes_median"] < b["q75"]["payload_bytes_median"] < b["q90"]["payload_bytes_median"]
    # the recipe's split: 3 channels x 28 x 28 at 8 bits, plus the message's header
    assert 3 * 28 * 28 < result["split"]["payload_bytes_median"] < 3 * 28 * 28 + 200
    assert result["prefilter"] is None
    assert (tmp_path / "out.png").stat().st_size > 1000


def _coco_fixture(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "coco"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(2):
        img = np.full((96, 128, 3), 90, np.uint8)
        cv2.rectangle(img, (20 + 10 * i, 20), (70 + 10 * i, 80), (200, 40, 40), -1)
        img = np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{i:012d}.jpg"), img)
        images.append({"id": i + 1, "file_name": f"{i:012d}.jpg", "height": 96, "width": 128})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [20 + 10 * i, 20, 50, 60],
                     "area": 3000, "iscrowd": 0})
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}))
    return folder, ann


def test_detector_json_has_map_and_map_vs_original(tmp_path):
    folder, ann = _coco_fixture(tmp_path)
    result = run_eval("--model", "ssdlite320_mobilenet_v3_large", "--images", str(folder), "--annotations", str(ann),
                      "--json", str(tmp_path / "det.json"), "--qualities", "50,75,90")
    assert result["family"] == "detector" and result["images"] == 2
    for entry in (result["original"], result["split"], *result["offload"].values()):
        assert {"payload_bytes_median", "map", "map50"} <= set(entry)
        assert 0.0 <= entry["map"] <= 1.0 and 0.0 <= entry["map50"] <= 1.0
    assert "map_vs_original" in result["split"]
    assert result["original"]["payload_bytes_median"] == 0
    assert result["prefilter"] is None


def test_val_only_uses_the_training_split(tmp_path):
    images = make_images(tmp_path / "images", n=5, size=(60, 80))
    cfg = {"recipe": "mobilenet_v2", "output": str(tmp_path / "x.pt"),
           "data": {"dir": str(images), "labels": "prefix", "val_fraction": 0.4, "seed": 3}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = run_eval("--model", "mobilenet_v2", "--val-only", "--config", str(tmp_path / "c.yaml"),
                      "--json", str(tmp_path / "v.json"))
    _, val = train_val_split([f"{i:03d}_img.png" for i in range(5)], 0.4, 3)
    assert result["images"] == len(val) == 2 and result["val_only"] is True
    assert split_cli("eval", ["--model", "mobilenet_v2", "--val-only", "--images", str(images),
                              "--json", str(tmp_path / "w.json")]) == 2


def test_several_checkpoints_make_a_curve_and_the_prefilter_hook_reports(tmp_path):
    from split.prefilter import Prefilter
    from split.recipes import build

    sm, _ = build("mobilenet_v2")
    ckpts = []
    for c in (2, 4):
        from bottlenecks import Bottleneck

        bn = Bottleneck(sm.split_channels, c, hidden=8, kind="gdn")
        path = tmp_path / f"c{c}.pt"
        state = {"recipe": "mobilenet_v2", "bottleneck": bn.state_dict(), "bottleneck_spec": bn.spec()}
        if c == 2:
            # threshold 1: every frame is dropped, yet the split is still scored on every frame
            state["prefilter"] = Prefilter(sm.split_channels, hidden=4, threshold=1.0).state_dict()
        torch.save(state, path)
        ckpts += ["--checkpoint", str(path)]
    images = make_images(tmp_path / "images", n=2, size=(60, 80))
    result = run_eval("--model", "mobilenet_v2", "--images", str(images), *ckpts, "--qualities", "50",
                      "--json", str(tmp_path / "curve.json"), "--plot", str(tmp_path / "curve.png"))
    sizes = [e["payload_bytes_median"] for e in result["curve"]]
    assert len(sizes) == 2 and sizes[0] < sizes[1]
    assert [e["bottleneck"]["channels"] for e in result["curve"]] == [2, 4]
    assert result["split"] == result["curve"][0]
    assert set(result["prefilter"]) == {"recall", "precision", "drop_rate", "auc", "positive", "labels"}
    assert result["prefilter"]["labels"] == "teacher, score >= 0.5"  # no annotations: the original's outputs
    assert result["prefilter"]["drop_rate"] == 1.0
    assert result["split"]["top1_agreement"] is not None and result["split"]["payload_bytes_median"] > 0


def test_map_ratio_interval_is_paired_and_sees_a_loss():
    # Ten images with one box each; the reference finds all; one candidate is the reference itself,
    # the other misses the box on half the images: the paired interval is exactly 1 for the first
    # and lies wholly below 1 for the second.
    from pycocotools.coco import COCO

    from split.train.evaluation import map_ratio_ci

    ids = list(range(101, 111))
    gt = COCO()
    gt.dataset = {"images": [{"id": i, "height": 100, "width": 100} for i in ids],
                  "annotations": [{"id": k + 1, "image_id": i, "category_id": 1, "bbox": [10, 10, 40, 40],
                                   "area": 1600, "iscrowd": 0} for k, i in enumerate(ids)],
                  "categories": [{"id": 1, "name": "person"}]}
    gt.createIndex()
    found = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]), "labels": torch.tensor([1]),
             "scores": torch.tensor([0.9])}
    missed = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
    reference = [found] * 10
    half = [found if k % 2 else missed for k in range(10)]
    ci = map_ratio_ci(gt, ids, reference, {"same": reference, "half": half}, classes=[1], replicates=40)
    assert ci["same"] == [1.0, 1.0]
    lo, hi = ci["half"]
    assert 0.0 < lo <= hi < 1.0

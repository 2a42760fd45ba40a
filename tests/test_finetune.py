"""Supervised fine-tuning: the loss falls on real COCO images, the held-out part matches the
distillation/eval rule, a class subset keeps only its boxes, and the checkpoint rebuilds."""

import json

import pytest
import torch

from split.builders import fasterrcnn_mobilenet_v2_320_fpn
from split.recipes import build
from split.train.coco import CocoImages
from split.train.data import train_val_split
from split.train.finetune import CocoDetection, category_ids, coco_split, finetune_detector
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def coco():
    root = shared_data() / "images" / "coco128"
    if not root.is_dir():
        pytest.skip(f"COCO sample data not found at {root} (set SPLITEDGE_DATA)")
    return root / "train2017", root / "annotations" / "instances_train2017.json"


def test_coco_split_holds_out_what_train_and_eval_hold_out(coco):
    images, ann = coco
    train, val = coco_split(images, ann, 0.25, 0)
    data = CocoImages(images, ann)
    _, val_idx = train_val_split([f.name for f in data.files], 0.25, 0)  # the rule of `splitedge train`/eval
    assert val == sorted(data.image_ids[i] for i in val_idx)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(data.files)
    assert coco_split(images, ann, 0.25, 0) == (train, val)


def test_class_subset_keeps_only_its_boxes(coco):
    images, ann = coco
    classes = category_ids(ann, ["person"])
    assert classes == {1: "person"}
    with pytest.raises(KeyError, match="persn"):
        category_ids(ann, ["persn"])
    every = CocoDetection(images, ann)
    people = CocoDetection(images, ann, classes=sorted(classes))
    assert sum(len(b) for b in people.boxes.values()) < sum(len(b) for b in every.boxes.values())
    assert all(c == 1 for boxes in people.boxes.values() for _, c in boxes)


def test_finetune_lowers_the_loss(coco):
    images, ann = coco
    ids = sorted(im["id"] for im in json.loads(ann.read_text())["images"])[:2]
    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v2_320_fpn(min_size=160, max_size=224, num_classes=2)  # person only
    data = CocoDetection(images, ann, ids, classes=[1])
    history = finetune_detector(model, data, epochs=8, batch_size=2, lr=0.02, scales=(160,))
    assert history[-1] < 0.95 * history[0]  # seeds 0 and 1: -11 %
    assert not model.training and model.transform.min_size == (160,)


def test_a_subset_checkpoint_rebuilds_with_its_classes(tmp_path):
    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v2_320_fpn(num_classes=2).eval()
    path = tmp_path / "person.pt"
    torch.save({"recipe": "fasterrcnn_mobilenet_v2_320_fpn", "model": model.state_dict(),
                "builder_kwargs": {"num_classes": 2}, "classes": {1: "person"}}, path)
    sm, source = build("fasterrcnn_mobilenet_v2_320_fpn", checkpoint=path)
    assert sm.classes == {1: "person"} and str(path) in source
    assert sm.model.roi_heads.box_predictor.cls_score.out_features == 2
    x = torch.rand(3, 96, 128)
    with torch.inference_mode():
        assert torch.equal(sm.full(x)["boxes"], model([x])[0]["boxes"])

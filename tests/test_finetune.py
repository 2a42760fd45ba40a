"""Supervised fine-tuning lowers the detection loss on a few real COCO images."""

import json

import pytest
import torch

from split.builders import fasterrcnn_mobilenet_v2_320_fpn
from split.finetune import CocoDetection, finetune_detector, split_ids
from tests.conftest import shared_data


def test_split_ids_is_deterministic_and_disjoint():
    train, val = split_ids(list(range(10, 0, -1)), val_every=4)
    assert val == [1, 5, 9] and set(train).isdisjoint(val) and len(train) + len(val) == 10


def test_finetune_lowers_the_loss():
    coco = shared_data() / "images" / "coco128"
    if not coco.is_dir():
        pytest.skip(f"COCO sample data not found at {coco} (set SPLITEDGE_DATA)")
    ann = coco / "annotations" / "instances_train2017.json"
    ids = sorted(im["id"] for im in json.loads(ann.read_text())["images"])[:2]
    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v2_320_fpn(min_size=160, max_size=224)
    data = CocoDetection(coco / "train2017", ann, ids)
    history = finetune_detector(model, data, epochs=6, batch_size=2, lr=0.005, scales=(160,))
    assert history[-1] < history[0]
    assert not model.training and model.transform.min_size == (160,)

"""With bottleneck=None, every family's split outputs equal the original model's."""

import pytest
import torch
import torchvision

from bottlenecks import Bottleneck
from split import split

SMALL = {"min_size": 128, "max_size": 160}
DETECTORS = [
    ("fasterrcnn_resnet50_fpn", "backbone.body.layer1", {**SMALL, "num_classes": 5, "box_score_thresh": 0.0}),
    ("fasterrcnn_mobilenet_v3_large_fpn", "backbone.body.6", {**SMALL, "num_classes": 5, "box_score_thresh": 0.0}),
    ("fasterrcnn_mobilenet_v3_large_320_fpn", "backbone.body.3", {"num_classes": 5, "box_score_thresh": 0.0}),
    ("maskrcnn_resnet50_fpn", "backbone.body.layer1",
     {**SMALL, "num_classes": 5, "box_score_thresh": 0.0, "box_detections_per_img": 10}),
    ("keypointrcnn_resnet50_fpn", "backbone.body.layer1",
     {**SMALL, "box_score_thresh": 0.0, "box_detections_per_img": 10}),
    ("retinanet_resnet50_fpn", "backbone.body.layer2", {**SMALL, "score_thresh": 0.0, "num_classes": 5}),
    ("fcos_resnet50_fpn", "backbone.body.layer1", {**SMALL, "score_thresh": 0.0, "num_classes": 5}),
    ("ssdlite320_mobilenet_v3_large", "backbone.features.0.6", {}),
    ("ssd300_vgg16", "backbone.features.9", {"num_classes": 5}),
]


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, 120, 160, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("builder,at,kwargs", DETECTORS, ids=[d[0] for d in DETECTORS])
def test_detector_split_equals_original(builder, at, kwargs, image):
    torch.manual_seed(0)
    model = torchvision.models.get_model(builder, weights=None, weights_backbone=None, **kwargs).eval()
    with torch.inference_mode():
        expected = model([image])[0]
    got = split(model, at)([image])[0]
    assert len(expected["boxes"]) > 0, "the test needs detections to compare"
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.parametrize("builder,at", [("resnet18", "layer1"), ("resnet50", "layer2"),
                                        ("mobilenet_v2", "features.6"), ("mobilenet_v3_large", "features.4"),
                                        ("mobilenet_v3_small", "features.2")])
def test_classifier_split_equals_original(builder, at, image):
    torch.manual_seed(0)
    model = torchvision.models.get_model(builder, weights=None).eval()
    sm = split(model, at)
    with torch.inference_mode():
        expected = model(sm.adapter.preprocess(image).tensor)[0]
    got = sm([image])[0]
    torch.testing.assert_close(got["logits"], expected)
    torch.testing.assert_close(got["scores"], expected.softmax(-1).topk(5).values)  # labels may tie


def test_split_with_bottleneck_changes_the_wire_shape(image):
    torch.manual_seed(0)
    model = torchvision.models.get_model("ssdlite320_mobilenet_v3_large", weights=None, weights_backbone=None).eval()
    with pytest.warns(UserWarning, match="bottleneck=3 builds an untrained bottleneck"):
        sm = split(model, "backbone.features.0.6", bottleneck=3, codec="uint8")
    msg = sm.encode_message(image)
    assert list(msg.tensor.shape) == [1, 3, 40, 40] and msg.tensor.codec == "uint8"
    assert len(msg.tensor.data) == 3 * 40 * 40
    assert (msg.original_size.height, msg.original_size.width) == (120, 160)
    out = sm.decode(msg.SerializeToString())
    assert out["boxes"].shape[1] == 4
    assert out["boxes"][:, 2].max() <= 160 + 1e-3  # boxes come back in original pixels


def test_bad_split_points_say_what_is_valid():
    model = torchvision.models.get_model("resnet18", weights=None).eval()
    with pytest.raises(ValueError, match="valid split points: conv1, bn1"):
        split(model, "layer9")
    det = torchvision.models.get_model("fasterrcnn_resnet50_fpn", weights=None, weights_backbone=None).eval()
    with pytest.raises(ValueError, match="also needs the output of 'backbone.body.layer1'"):
        split(det, "backbone.body.layer2")
    with pytest.raises(TypeError, match="no split adapter for Linear"):
        split(torch.nn.Linear(2, 2), "x")


def test_unknown_options_raise_for_every_family():
    det = torchvision.models.get_model("ssdlite320_mobilenet_v3_large", weights=None, weights_backbone=None).eval()
    with pytest.raises(TypeError, match="unknown option 'codc' for SSD: split\\(\\) takes codec, name, own_head$"):
        split(det, "backbone.features.0.6", codc="uint8")
    clf = torchvision.models.get_model("resnet18", weights=None).eval()
    with pytest.raises(TypeError, match="unknown option 'top_k'.*for a classifier, resize_size, crop_size, topk"):
        split(clf, "layer1", top_k=3)
    assert split(clf, "layer1", topk=3).adapter.topk == 3


def test_tail_registers_only_what_it_runs(image):
    torch.manual_seed(0)
    model = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights=None,
                                         weights_backbone=None, num_classes=5).eval()
    bottleneck = Bottleneck(40, 3)
    sm = split(model, "backbone.body.6", bottleneck=bottleneck)
    head = {id(p) for p in sm.head.parameters()}
    tail = {id(p) for p in sm.tail.parameters()}
    assert not head & tail
    assert head | tail == {id(p) for p in [*model.parameters(), *bottleneck.parameters()]}
    assert {id(p) for p in bottleneck.encoder.parameters()} <= head
    assert {id(p) for p in bottleneck.decoder.parameters()} <= tail
    assert {id(p) for p in model.rpn.parameters()} <= tail


def test_filtered_frame_encodes_to_nothing_and_decodes_to_nothing_detected(image):
    class DropAll(torch.nn.Module):
        def keep(self, features):
            return False

    torch.manual_seed(0)
    model = torchvision.models.get_model("resnet18", weights=None).eval()
    sm = split(model, "layer1")
    sm.prefilter = DropAll()
    assert sm.head.prefilter is sm.prefilter
    assert sm.encode([image]) == [b""] and sm.encode_message(image) is None
    out = sm.decode(b"")
    assert out.keys() == sm([image])[0].keys() and len(out["labels"]) == 0


def test_split_size_cache_is_per_model_and_bounded():
    import gc
    import weakref

    from split import api

    model = torchvision.models.get_model("resnet18", weights=None).eval()
    sm = split(model, "layer1")
    for side in range(64, 64 + api._SPLIT_SIZES + 8):
        sm._expected_split_size((side, side))
    assert len(sm._split_sizes) == api._SPLIT_SIZES
    assert sm._expected_split_size((224, 224)) == (56, 56)
    ref = weakref.ref(sm)
    del sm
    gc.collect()
    assert ref() is None  # nothing module-level keeps a model alive

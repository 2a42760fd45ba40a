"""With bottleneck=None, every family's split outputs equal the original model's."""

import pytest
import torch
import torchvision

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

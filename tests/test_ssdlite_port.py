"""The PyTorch port of the pedestrian SSDLite (`split.models`) against TensorFlow's own outputs.

`tests/data/ssdlite_tf_reference.npz` was made once with real TensorFlow by
`scripts/make_tf_reference.py` (its docstring has the command). The tests that need the
converted weights skip when they are not cached: `make weights` converts them (`make test`
does not run it, so that it stays offline; see README "Pretrained detector (port)").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from split import split
from split.images import _decode, load_image
from split.models import SSDLiteTF
from split.models.convert_tf import cached_checkpoint, checkpoint_path
from split.models.ssdlite_tf import SamePadConv2d, first_kept, tf_legacy_resize
from torchvision.ops import nms

ROOT = Path(__file__).resolve().parents[1]
REF = np.load(ROOT / "tests" / "data" / "ssdlite_tf_reference.npz")
COCO = ROOT.parent / "shared" / "data" / "images" / "coco128"
IMAGES = COCO / "train2017"
MAP_SHAPES = [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
TF_PERSON_AP = 0.1956  # pycocotools, catIds=[1], TF's own detections on the 96 images

needs_images = pytest.mark.skipif(not IMAGES.is_dir(), reason=f"shared COCO images not at {IMAGES}")
needs_weights = pytest.mark.skipif(cached_checkpoint() is None,
                                   reason=f"converted SSDLite weights not cached ({checkpoint_path()}): run `make weights`")


@pytest.fixture(scope="module")
def port() -> SSDLiteTF:
    model = SSDLiteTF().eval()
    model.load_state_dict(torch.load(cached_checkpoint(), map_location="cpu", weights_only=True)["model"])
    return model


@pytest.fixture(scope="module")
def port_detections(port: SSDLiteTF) -> list[dict[str, torch.Tensor]]:
    with torch.inference_mode():  # ~5 s for the 96 images
        return [port([load_image(IMAGES / name)])[0] for name in REF["names"]]


def test_anchors_are_tfs():
    anchors = SSDLiteTF().anchor_generator.normalized(MAP_SHAPES)
    assert anchors.shape == (1917, 4)
    np.testing.assert_allclose(anchors.numpy(), REF["anchors"], atol=1e-6)


@pytest.mark.parametrize("spread", [0.0, 0.02, 0.2, 1.0])
def test_first_kept_is_nms_cut_to_the_limit(spread: float):
    """Exact on crowds where almost every box is suppressed (the best k doubles up to all of them),
    on scattered ones where the first 4 x limit decide, and on tied scores."""
    g = torch.Generator().manual_seed(int(spread * 100))
    centre = torch.rand(1917, 2, generator=g) * spread * 300 + 100
    size = torch.rand(1917, 2, generator=g) * 40 + 10
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    for scores in (torch.rand(1917, generator=g), torch.randint(0, 50, (1917,), generator=g).float() / 50):
        for limit in (1, 100, 600):
            assert first_kept(boxes, scores, 0.6, limit).tolist() == nms(boxes, scores, 0.6)[:limit].tolist()


def test_same_padding_depends_on_parity():
    conv = SamePadConv2d(1, 1, 3, stride=2, bias=False)
    conv.weight.data.fill_(1.0)
    even, odd = torch.ones(1, 1, 4, 4), torch.ones(1, 1, 5, 5)
    assert conv(even)[0, 0, 0].tolist() == [9.0, 6.0]  # (0 before, 1 after): only the last window pads
    assert conv(odd)[0, 0, 0].tolist() == [4.0, 6.0, 4.0]  # (1, 1)
    with torch.inference_mode():
        maps = SSDLiteTF().eval().backbone(torch.zeros(1, 3, 300, 300))
    assert [tuple(m.shape[-2:]) for m in maps.values()] == MAP_SHAPES


def test_legacy_resize_has_no_half_pixel_centres():
    row = torch.tensor([[[0.0, 10.0]]])
    assert tf_legacy_resize(row, (1, 4)).flatten().tolist() == [0.0, 5.0, 10.0, 10.0]  # source = dst * in/out
    img = torch.arange(16.0).view(1, 4, 4)
    assert tf_legacy_resize(img, (2, 2)).flatten().tolist() == [0.0, 2.0, 8.0, 10.0]


def test_split_without_bottleneck_equals_the_model():
    torch.manual_seed(0)
    model = SSDLiteTF().eval()
    image = torch.rand(3, 120, 160)
    sm = split(model, "backbone.features.6", codec="float32")
    with torch.inference_mode():
        ours, theirs = sm([image])[0], model([image])[0]
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(ours[key], theirs[key]), key
    late = split(model, "backbone.features.14.conv.0", codec="float32")  # the first tap itself
    assert torch.equal(late([image])[0]["boxes"], theirs["boxes"])
    with pytest.raises(ValueError, match="also needs the output of 'backbone.features.14.conv.0'"):
        split(model, "backbone.features.15")


@needs_weights
def test_converted_weights_are_the_graphs(port: SSDLiteTF):
    values = sum(v.numel() for k, v in port.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert values == 3_095_878  # every float Const of the graph's weights


@needs_images
def test_decoder_gives_tfs_pixels():
    sums = [int(_decode(IMAGES / name).long().sum()) for name in REF["raw_names"]]
    assert sums == REF["pixel_sums"][: len(sums)].tolist()


@needs_images
@needs_weights
def test_raw_outputs_match_tf(port: SSDLiteTF):
    for i, name in enumerate(REF["raw_names"]):
        with torch.inference_mode():
            images, _ = port.transform([load_image(IMAGES / name)])
            head = port.head(list(port.backbone(images.tensors).values()))
        np.testing.assert_allclose(head["cls_logits"][0].numpy(), REF["class_logits"][i], atol=1e-3, err_msg=name)
        encodings = head["bbox_regression"][0].numpy()[:, [1, 0, 3, 2]]  # ours (dx, dy, dw, dh), TF (ty, tx, th, tw)
        np.testing.assert_allclose(encodings, REF["box_encodings"][i], atol=1e-3, err_msg=name)


def _tf_detections(i: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """TF's detections of image i: boxes (x1, y1, x2, y2) in original pixels, scores."""
    n = int(REF["det_count"][i])
    boxes = REF["det_boxes"][i, :n][:, [1, 0, 3, 2]] * np.array([width, height, width, height])
    return boxes, REF["det_scores"][i, :n]


@needs_images
@needs_weights
def test_same_detections_as_tf(port_detections, coco):
    """Same count, and each TF detection has its own port detection with the same score and box
    (order may differ only among equal scores)."""
    for i, (name, det) in enumerate(zip(REF["names"], port_detections)):
        h, w = _size(coco, name)
        boxes, scores = _tf_detections(i, h, w)
        assert len(det["scores"]) == len(scores), name
        if not len(scores):
            continue
        scale = np.array([w, h, w, h])
        dist = np.abs(boxes[:, None] / scale - det["boxes"].numpy()[None] / scale).max(-1) \
            + np.abs(scores[:, None] - det["scores"].numpy()[None])
        match = dist.argmin(1)
        assert len(set(match.tolist())) == len(scores), name
        assert dist[np.arange(len(scores)), match].max() < 1e-3, name
        assert (det["labels"] == 1).all()


@pytest.fixture(scope="module")
def coco():
    from split.train.coco import CocoAnnotations

    return CocoAnnotations.read(COCO / "annotations" / "instances_train2017.json")


def _size(coco, name: str) -> tuple[int, int]:
    image = coco.images[coco.ids_by_name[name]]
    return int(image["height"]), int(image["width"])


@needs_images
@needs_weights
def test_person_ap_matches_tf(port_detections, coco):
    from split.train.evaluation import coco_map, coco_results

    ids = [coco.ids_by_name[name] for name in REF["names"]]
    tf_outputs = []
    for i, det in enumerate(port_detections):
        h, w = _size(coco, REF["names"][i])
        boxes, scores = _tf_detections(i, h, w)
        tf_outputs.append({"boxes": torch.from_numpy(boxes).float(), "scores": torch.from_numpy(scores),
                           "labels": torch.ones(len(scores), dtype=torch.int64)})
    tf_ap = coco_map(coco.index, coco_results(tf_outputs, ids), ids, [1])[0]
    port_ap = coco_map(coco.index, coco_results(port_detections, ids), ids, [1])[0]
    assert abs(tf_ap - TF_PERSON_AP) < 5e-4
    assert abs(port_ap - tf_ap) < 0.003


def test_graph_proto_module_is_fresh(tmp_path):
    from grpc_tools import protoc

    models = ROOT / "split" / "models"
    assert protoc.main(["grpc_tools.protoc", f"-I{models}", f"--python_out={tmp_path}", str(models / "tf_graph.proto")]) == 0
    assert (tmp_path / "tf_graph_pb2.py").read_text() == (models / "tf_graph_pb2.py").read_text(), \
        "split/models/tf_graph_pb2.py is stale: regenerate it (see tf_graph.proto)"

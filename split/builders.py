"""Detector builders torchvision does not ship, on the one pretrained backbone we have offline.

torchvision's detection builders use MobileNetV3 or ResNet backbones, whose ImageNet weights
cannot be downloaded here; MobileNetV2's can be seeded offline (`make weights`). This builds
the MobileNetV3-320-FPN Faster R-CNN recipe on a MobileNetV2 backbone instead.
"""

from __future__ import annotations

from typing import Any

from torchvision.models import MobileNet_V2_Weights
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone

from split.models import ssdlite300_mobilenet_v2_person

__all__ = ["BUILDERS", "fasterrcnn_mobilenet_v2_320_fpn"]


def fasterrcnn_mobilenet_v2_320_fpn(*, weights: Any = None, weights_backbone: Any = None, num_classes: int = 91,
                                    trainable_backbone_layers: int = 3, representation_size: int = 256,
                                    **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN, MobileNetV2-FPN backbone, 320 px: the light detector of the demo.

    `weights` is unused (there are no published weights for it: ours come from a checkpoint);
    `weights_backbone` may be "IMAGENET1K_V1" or the enum member, read from the hub cache.
    The box head is 256 wide (torchvision uses 1024): a quarter of the parameters, so a
    fine-tuned checkpoint stays small enough to ship in the repository.
    """
    if weights is not None:
        raise ValueError("fasterrcnn_mobilenet_v2_320_fpn has no published weights; use a splitedge checkpoint")
    if isinstance(weights_backbone, str):
        weights_backbone = MobileNet_V2_Weights[weights_backbone]
    backbone = mobilenet_backbone(backbone_name="mobilenet_v2", weights=weights_backbone, fpn=True,
                                  trainable_layers=trainable_backbone_layers)
    # One octave smaller than torchvision's 320 recipe: at 320 px a median COCO person is ~20 px
    # tall-by-wide (COCO128), below the 32 px anchors' IoU reach.
    anchor_sizes = ((16, 32, 64, 128, 256),) * 3
    aspect_ratios = ((0.5, 1.0, 2.0),) * len(anchor_sizes)
    # Test-time proposal counts as torchvision's 320 recipe. Training samples fewer proposals and
    # RoIs than the 800 px defaults (600/300, 128 per image): at 320 px there are few objects per
    # image, and it makes a fine-tuning step about 3x faster on a CPU.
    defaults = {"min_size": 320, "max_size": 640, "rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150,
                "rpn_score_thresh": 0.05, "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
                "box_batch_size_per_image": 128}
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, representation_size)
    return FasterRCNN(backbone, None, rpn_anchor_generator=AnchorGenerator(anchor_sizes, aspect_ratios),
                      box_head=box_head, box_predictor=FastRCNNPredictor(representation_size, num_classes),
                      **{**defaults, **kwargs})


BUILDERS = {"fasterrcnn_mobilenet_v2_320_fpn": fasterrcnn_mobilenet_v2_320_fpn,
            "ssdlite300_mobilenet_v2_person": ssdlite300_mobilenet_v2_person}

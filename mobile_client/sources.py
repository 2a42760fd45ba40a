"""Frame sources: a folder of images (`split.images.read_rgb`), a video file or a camera (OpenCV).

Every source yields RGB uint8 frames with a stable name, so a result line can say which
image or which video frame it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from split.images import ImageError, read_rgb

__all__ = ["Frame", "FrameSource", "SourceError", "open_source"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class SourceError(RuntimeError):
    """A source that cannot be opened or read; the message names it."""


@dataclass
class Frame:
    index: int
    source: str  # file path, or "video.mp4#12", or "camera:0#12"
    rgb: np.ndarray  # H x W x 3, uint8


class FrameSource:
    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def __len__(self) -> int:
        """Number of frames when known in advance, else 0 (a camera)."""
        return 0


class ImageFolder(FrameSource):
    def __init__(self, folder: Path, limit: int | None = None) -> None:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"cannot read source {str(folder)!r}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.files = files[:limit] if limit else files

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[Frame]:
        for i, path in enumerate(self.files):
            try:
                rgb = read_rgb(path)
            except ImageError:
                raise SourceError(f"cannot read source {str(path)!r}: not a decodable image") from None
            yield Frame(i, str(path), rgb)


class VideoSource(FrameSource):
    def __init__(self, spec: str, device: int | None = None, limit: int | None = None) -> None:
        self.spec, self.limit = spec, limit
        self.capture = cv2.VideoCapture(device if device is not None else spec)
        if not self.capture.isOpened():
            raise SourceError(f"cannot read source {spec!r}: OpenCV cannot open it")
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT)) if device is None else 0
        self.count = min(count, limit) if limit and count else (limit or max(count, 0))

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Frame]:
        i = 0
        try:
            while self.limit is None or i < self.limit:
                ok, bgr = self.capture.read()
                if not ok:
                    break
                yield Frame(i, f"{self.spec}#{i}", np.ascontiguousarray(bgr[:, :, ::-1]))
                i += 1
        finally:
            self.capture.release()


def open_source(spec: str, limit: int | None = None) -> FrameSource:
    """`DIR` (images, sorted by name), `VIDEO` (any file OpenCV reads) or `camera:N`."""
    if spec.startswith("camera:"):
        try:
            device = int(spec.split(":", 1)[1])
        except ValueError:
            raise SourceError(f"cannot read source {spec!r}: camera index must be an integer, e.g. camera:0") from None
        return VideoSource(spec, device=device, limit=limit)
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"cannot read source {spec!r}: no such file or directory")
    if path.is_dir():
        return ImageFolder(path, limit)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _SingleImage(path)
    return VideoSource(spec, limit=limit)


class _SingleImage(ImageFolder):
    def __init__(self, path: Path) -> None:
        self.files = [path]

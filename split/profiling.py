"""Latency profiles measured on the machine that runs them (`splitedge profile`).

The controller plans with these numbers, so they are medians of repeated runs on real
frames, per input size, never guesses. Per-stage times and output sizes price every split
point of the chain without building it. A profile measured here can stand for a slower
device with `device_slowdown` (every time multiplied by K), e.g. a Raspberry Pi 4.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch

from split.api import SplitModel, _Chain
from split.images import ImageError, read_rgb

__all__ = ["PROFILE_KEYS", "profile_model", "scale_profile", "load_images"]

PROFILE_KEYS = ("full", "head", "tail", "jpeg_encode", "offload_edge")


def _median_ms(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    out = fn()  # warm-up: first calls pay allocator and kernel-selection costs
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), out


def load_images(folder: str | Path | None, size: tuple[int, int], count: int = 4) -> list[torch.Tensor]:
    """Real frames resized to `size` (payload sizes depend on content); noise when no folder."""
    images = []
    if folder is not None and Path(folder).is_dir():
        for path in sorted(Path(folder).iterdir())[: count * 3]:
            try:
                rgb = cv2.resize(read_rgb(path), (size[1], size[0]), interpolation=cv2.INTER_AREA)
            except ImageError:
                continue
            images.append(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255)
            if len(images) == count:
                break
    if not images:
        g = torch.Generator().manual_seed(0)
        images = [torch.rand(3, *size, generator=g) for _ in range(count)]
    return images


def _layers(model: SplitModel, image: torch.Tensor, repeat: int) -> list[dict[str, Any]]:
    x = model.adapter.preprocess(image).tensor
    rows = []
    with torch.inference_mode():
        for stage in model.adapter.stages():
            chain = _Chain([stage])
            ms, y = _median_ms(lambda: chain(x, OrderedDict()), repeat)
            rows.append({"name": stage.name, "ms": round(ms, 4), "out_shape": list(y.shape),
                         "out_bytes_uint8": int(y.numel())})
            x = y
    return rows


def profile_model(model: SplitModel, sizes: list[tuple[int, int]], images_dir: str | Path | None = None,
                  repeat: int = 10, jpeg_quality: int = 90, progress: Callable[[str], None] | None = None,
                  images: list[torch.Tensor] | None = None, layers: bool = True) -> dict[str, Any]:
    """Medians per input size; `images` (all of one size) replaces `sizes`/`images_dir`,
    which is how the client profiles itself on its own first frame."""
    if images is not None:
        sizes = [(int(images[0].shape[-2]), int(images[0].shape[-1]))]
    prefilter, model.prefilter = model.prefilter, None  # price every frame as sent
    try:
        return _profile(model, sizes, images_dir, repeat, jpeg_quality, progress, images, layers)
    finally:
        model.prefilter = prefilter


def _profile(model: SplitModel, sizes: list[tuple[int, int]], images_dir: str | Path | None, repeat: int,
             jpeg_quality: int, progress: Callable[[str], None] | None, images: list[torch.Tensor] | None,
             layers: bool) -> dict[str, Any]:
    by_size: dict[str, Any] = {}
    for size in sizes:
        frames = images if images is not None else load_images(images_dir, size)
        per: dict[str, list[float]] = {k: [] for k in PROFILE_KEYS}
        nbytes: dict[str, list[int]] = {"split": [], "jpeg": []}
        for image in frames:
            if progress:
                progress(f"{size[0]}x{size[1]}")
            per["full"].append(_median_ms(lambda: model.full(image), repeat)[0])
            ms, payload = _median_ms(lambda: model.encode_message(image), repeat)
            per["head"].append(ms)
            per["tail"].append(_median_ms(lambda: model.decode_message(payload), repeat)[0])
            ms, jpeg = _median_ms(lambda: model.encode_image(image, jpeg_quality), repeat)
            per["jpeg_encode"].append(ms)
            per["offload_edge"].append(_median_ms(lambda: model.decode_message(jpeg), repeat)[0])
            nbytes["split"].append(payload.ByteSize())
            nbytes["jpeg"].append(jpeg.ByteSize())
        by_size[f"{size[0]}x{size[1]}"] = {
            "ms": {k: round(statistics.median(v), 4) for k, v in per.items()},
            "bytes": {k: int(statistics.median(v)) for k, v in nbytes.items()},
        }
    return {
        "model": model.name,
        "split_point": model.at,
        "host": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "device_slowdown": 1.0,
        "repeat": repeat,
        "jpeg_quality": jpeg_quality,
        "default_size": f"{sizes[0][0]}x{sizes[0][1]}",
        "sizes": by_size,
        "layers": _layers(model, (images or load_images(images_dir, sizes[0], 1))[0], repeat) if layers else [],
    }


def scale_profile(profile: dict[str, Any], factor: float) -> dict[str, Any]:
    """The same profile on a device `factor` times slower (all compute times multiplied)."""
    if factor <= 0:
        raise ValueError(f"slowdown must be positive, got {factor}")
    out = dict(profile)
    out["device_slowdown"] = profile.get("device_slowdown", 1.0) * factor
    out["sizes"] = {s: {"ms": {k: v * factor for k, v in d["ms"].items()}, "bytes": dict(d["bytes"])}
                    for s, d in profile["sizes"].items()}
    out["layers"] = [{**row, "ms": row["ms"] * factor} for row in profile.get("layers", [])]
    return out

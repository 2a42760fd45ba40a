"""Reading an ONNX bundle (`splitedge export --format onnx`) and doing what its manifest says, without torch.

The exporter (`split.export`, torch) writes the graphs and a manifest; a lean device
(`mobile_client.onnx_device`) reads them here with numpy and OpenCV only: the digests, the
model's own preprocessing (`preprocess`), the resize offload sends as JPEG (`resized`) and
the codec on the head's output (`BundleCodec`). Each rule is the manifest's (docs/export.md);
where a rule is torch's own arithmetic it is written out here in numpy, so that the lean
device's input is the torch device's to float rounding (tests/test_lean_client.py measures it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bottlenecks.wire import EncodedTensor, TableCoder, channel_indexes, uint8_encode

__all__ = ["BUNDLE_FORMAT", "MANIFEST", "BundleCodec", "BundleError", "load_manifest", "preprocess", "resized",
           "sha256"]

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "splitedge-onnx-bundle/1"
RESIZE_RULES = ("tf_legacy_bilinear", "shorter_side_then_center_crop")


class BundleError(ValueError):
    """A bundle that cannot be used as its manifest says (missing or changed file); names the file."""


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# What a runtime reads of a manifest: refused by name when missing, not met later as a bare KeyError.
_REQUIRED = ("model", "family", "input.shape", "input.resize.rule", "input.normalization.rule", "split.point",
             "payload.split_point", "payload.split_size", "codec.name",
             "outputs", "files")


def load_manifest(directory: str | os.PathLike[str], roles: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The bundle's manifest, after checking its files against their sha256 (BundleError naming the file
    that is missing, outside the bundle or changed since export, or the field the manifest lacks).

    `roles` (e.g. `("head", "full")`): check only those files, all there must be; a device need not carry
    the edge's graph, nor hash it at every start. None: every file listed."""
    root = Path(directory).resolve()
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: no {MANIFEST}; is {directory} a bundle written by `splitedge export`?")
    try:
        manifest = json.loads(path.read_text())
        entries = manifest["files"].items()
    except (ValueError, KeyError, AttributeError) as exc:
        raise BundleError(f"{path}: not a bundle manifest ({exc})") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: format {manifest.get('format')!r}, this reads {BUNDLE_FORMAT!r}")
    for key in _REQUIRED:
        node: Any = manifest
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            raise BundleError(f"{path}: the manifest has no {key!r}; export the bundle again with `splitedge export`")
    if roles is not None:
        missing = [r for r in roles if r not in manifest["files"]]
        if missing:
            raise BundleError(f"{path}: the bundle has no {', '.join(missing)} graph (it lists {', '.join(manifest['files'])})")
        entries = [(r, manifest["files"][r]) for r in roles]
    for role, entry in entries:
        file = (root / entry["path"]).resolve()
        if root not in file.parents:
            raise BundleError(f"{entry['path']} ({role}): outside the bundle directory {root}")
        if not file.is_file():
            raise BundleError(f"{entry['path']} ({role}): listed in the manifest but missing from {root}")
        digest = sha256(file)
        if digest != entry["sha256"]:
            raise BundleError(f"{entry['path']} ({role}): sha256 {digest} does not match the manifest's "
                              f"{entry['sha256']}: the file changed after export; export the bundle again")
    return manifest


# -- preprocessing ------------------------------------------------------------------------------
def resized(rgb: np.ndarray, manifest: dict[str, Any]) -> np.ndarray:
    """The model's resize of an H x W x 3 uint8 RGB frame, as float32 H' x W' x 3 in [0, 1]: what the
    head's normalization takes, and what offload sends as JPEG (the model's own input size)."""
    rule = manifest["input"]["resize"]
    x = rgb.astype(np.float32) / np.float32(255.0)
    if rule["rule"] == "tf_legacy_bilinear":
        h, w = rule["size"]
        if x.shape[:2] == (h, w):
            return x
        return _tf_legacy_resize(x * np.float32(255.0), (h, w)) / np.float32(255.0)
    if rule["rule"] == "shorter_side_then_center_crop":
        # torchvision's antialiased bilinear resize has no exact OpenCV twin: INTER_AREA when shrinking (an
        # average over the footprint, as antialiasing is) and INTER_LINEAR when growing; docs/lean-client.md.
        size, crop = int(rule["resize_size"]), int(rule["crop_size"])
        ih, iw = x.shape[:2]
        oh, ow = (size, int(size * iw / ih)) if ih <= iw else (int(size * ih / iw), size)
        x = cv2.resize(x, (ow, oh), interpolation=cv2.INTER_AREA if oh < ih else cv2.INTER_LINEAR)
        top, left = int(round((oh - crop) / 2.0)), int(round((ow - crop) / 2.0))
        return np.clip(x[top: top + crop, left: left + crop], 0.0, 1.0)
    raise BundleError(f"the lean runtime knows the resize rules {', '.join(RESIZE_RULES)}; this bundle's model "
                      f"{manifest['model']!r} uses {rule['rule']!r}: run it with the torch runtime")


def preprocess(rgb: np.ndarray, manifest: dict[str, Any]) -> np.ndarray:
    """The head's and the full graph's input [1, 3, H, W] float32 for one RGB frame."""
    x = resized(rgb, manifest)
    norm = manifest["input"]["normalization"]
    if norm["rule"] == "tf":  # x255 * 2/255 - 1, as split.models.ssdlite_tf computes it
        x = x * np.float32(255.0) * np.float32(2.0 / 255.0) - np.float32(1.0)
    else:
        x = (x - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)
    if list(x.shape) != manifest["input"]["shape"]:
        raise BundleError(f"a {list(rgb.shape[:2])} frame preprocesses to {list(x.shape)}; the bundle's graphs take "
                          f"{manifest['input']['shape']}: export the bundle for this frame size (--size)")
    return x


def _tf_legacy_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """split.models.ssdlite_tf.tf_legacy_resize on H x W x C: source = destination * in / out, the
    top-left neighbour at floor, clamped at the border; float32 throughout, the same operations."""
    h, w = image.shape[:2]

    def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.arange(n_out, dtype=np.float32) * np.float32(n_in / n_out)
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), (src - lo).astype(np.float32)

    y0, y1, wy = taps(h, size[0])
    x0, x1, wx = taps(w, size[1])
    rows = image[np.concatenate([y0, y1])]  # each source row gathered once, as the torch resize does
    left, right = rows[:, x0], rows[:, x1]
    across = left + (right - left) * wx[None, :, None]
    top, bottom = across[: size[0]], across[size[0]:]
    return top + (bottom - top) * wy[:, None, None]


# -- the codec ----------------------------------------------------------------------------------
class BundleCodec:
    """The manifest's codec on the head's output: the same bytes as the torch codec of that name."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.name = spec["name"]
        self._coder: TableCoder | None = None
        if self.name == "entropy":
            self._medians = np.asarray(spec["medians"], np.float32).reshape(1, -1, 1, 1)
            self._coder = TableCoder(np.asarray(spec["quantized_cdf"]), np.asarray(spec["cdf_length"]),
                                     np.asarray(spec["offset"]))
        elif self.name not in ("uint8", "float32", "float16"):
            raise BundleError(f"codec {self.name!r}: the lean runtime codes uint8, entropy, float32 and float16")

    def encode(self, wire: np.ndarray) -> EncodedTensor:
        shape = tuple(int(d) for d in wire.shape)
        if self.name == "uint8":
            return uint8_encode(wire, self.name)
        if self._coder is not None:
            symbols = np.rint(wire.astype(np.float32) - self._medians).astype(np.int32)  # compressai's "symbols"
            return EncodedTensor(self.name, "float32", shape, self._coder.encode(symbols, channel_indexes(shape)))
        wire_dtype = "<f4" if self.name == "float32" else "<f2"
        return EncodedTensor(self.name, "float32", shape, wire.astype(wire_dtype).tobytes())

"""Export the two halves of a split model with `torch.export`, for frames of one size.

`export_head(model, image)` gives the device half: the preprocessed frame [1, 3, H, W] in, the
wire tensor and the split size out. `export_tail(model, image)` gives the edge half: the wire
tensor and the sizes of the frame in (`Tail.forward`'s arguments), the outputs dict out.
Preprocessing (the model's own resize and normalization) stays outside both, as in `encode`.

Why per size: the sizes are Python ints that shape the anchors, the clipping and the map back
to original pixels, so torch.export specializes them; an exported half serves frames of the
example's size and refuses others with a guard error that names the size.

Why a context around the export: torchvision 0.29's detection code branches in Python on sizes
that depend on the data (how many boxes survive a threshold or NMS), which torch.export cannot
trace. `_export_safe_torchvision` swaps, for the duration of the export only, the three spots
for equivalents without those branches, as torchvision's open PR #9395 does upstream:
`batched_nms` (an empty-safe offset instead of `if boxes.numel() == 0`), `_multiscale_roi_align`
(`rois.shape[0]` instead of `len(rois)`) and `BoxCoder.decode` (no `if box_sum > 0`). It also
registers a fake `torchvision::nms` that allows 0 or 1 kept boxes (torchvision's claims at
least 2, which the exported program then asserts at run time). The exported program is the
eager tail's computation op for op; the test checks its outputs equal the eager ones for the
default detector and the classifier. One difference remains where eager torchvision picks its
NMS by the number of boxes (a per-class loop above 4000 coordinates on CPU, which cannot be
traced): when that number is not bounded below 4000 at export (SSD, RetinaNet, FCOS, many
classes), the exported tail runs the coordinate trick, which keeps the same boxes but may order
boxes of exactly equal score differently, and so cut a different one at `detections_per_img`.

`export_onnx(model, out_dir)` writes the ONNX bundle a device without torch runs (onnxruntime):
`device/head.onnx` (preprocessed frame -> the wire tensor *before* the codec), `device/full.onnx`
(preprocessed frame -> outputs: local mode), `edge/tail.onnx` (decoded wire tensor -> outputs) and
`manifest.json` (preprocessing, split point and sizes, the codec and its tables, opset, versions,
sha256 of every file); `load_manifest(dir)` checks those digests. Why the codec stays outside the
graphs, what the manifest's fields mean and the measured parity: docs/export.md. The exporter is
torch.onnx's TorchScript one (the dynamo one needs onnxscript), under the same context as
torch.export plus two ONNX-only changes: `argsort(stable=True)` becomes ONNX TopK (stable: ties
keep index order), and `batched_nms` always takes the coordinate trick (a trace would freeze the
per-class loop's classes). A detector's graphs take `original_size` (int64 [2], h w) as an input and
map boxes back to it, so one bundle serves every frame whose preprocessed size is the manifest's.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.export import ExportedProgram
from torch.fx.experimental.symbolic_shapes import guard_or_false
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import boxes as box_ops
from torchvision.ops import poolers

from bottlenecks import EntropyCodec, Float16Codec, Float32Codec, Uint8Codec
from protos import splitedge_pb2 as pb
from split.adapters import ImageBatch, Outputs, Size
from split.api import SplitModel
from split.labels import label_names
from split.messages import from_message, tensor_message
from split.bundle import BUNDLE_FORMAT, MANIFEST, BundleError, load_manifest, sha256
from split.models.ssdlite_tf import TFTransform

__all__ = ["BundleError", "export_head", "export_onnx", "export_tail", "load_manifest", "tail_inputs", "verify_onnx"]


def export_head(model: SplitModel, image: Tensor) -> ExportedProgram:
    """The head as an ExportedProgram for frames of `image`'s size ([3, H, W] in [0, 1])."""
    if model.head.prefilter is not None:
        raise ValueError("a head with a prefilter does not export: its keep/drop decision is data-dependent "
                         "control flow; export it with `model.prefilter = None` and run the prefilter beside it")
    with torch.no_grad():
        return torch.export.export(model.head, (model.adapter.preprocess(image).tensor,))


def export_tail(model: SplitModel, image: Tensor) -> ExportedProgram:
    """The tail as an ExportedProgram for frames of `image`'s size; call it with `tail_inputs`."""
    with torch.no_grad(), _export_safe_torchvision():
        return torch.export.export(model.tail, tail_inputs(model, image))


def tail_inputs(model: SplitModel, image: Tensor) -> tuple[Tensor, Size, Size, Size, Size]:
    """`Tail.forward`'s arguments for one frame: the wire tensor before the codec, then the split,
    padded batch, resized and original sizes, as the edge derives them from a payload."""
    with torch.no_grad():
        batch = model.adapter.preprocess(image)
        z, split_size = model.head(batch.tensor)
    return z, split_size, batch.batch_size, batch.image_size, batch.original_size


# -- torchvision without data-dependent branches, while exporting ------------------------------
def _batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's `batched_nms`; the coordinate trick's offset is empty-safe instead of branching."""
    if guard_or_false(boxes.numel() > (4000 if boxes.device.type == "cpu" else 100_000)):
        return box_ops._batched_nms_vanilla(boxes, scores, idxs, iou_threshold)
    return _batched_nms_offset(boxes, scores, idxs, iou_threshold)


def _batched_nms_offset(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """The coordinate trick for any number of boxes (what a trace needs: the per-class loop's
    classes would be frozen into it)."""
    # max(boxes, 0): the same offset for the clipped (non-negative) boxes detectors pass, and 0 for none.
    max_coordinate = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return box_ops.nms(boxes + offsets[:, None], scores, iou_threshold)


def _multiscale_roi_align(x_filtered: list[Tensor], boxes: list[Tensor], output_size: list[int],
                          sampling_ratio: int, scales: list[float] | None,
                          mapper: poolers.LevelMapper | None) -> Tensor:
    """torchvision's `_multiscale_roi_align` with the RoI count read as a symbolic size."""
    if scales is None or mapper is None:
        raise ValueError("scales and mapper should not be None")
    rois = poolers._convert_to_roi_format(boxes)
    if len(x_filtered) == 1:
        return poolers.roi_align(x_filtered[0], rois, output_size=output_size, spatial_scale=scales[0],
                                 sampling_ratio=sampling_ratio)
    levels = mapper(boxes)
    first = x_filtered[0]
    result = torch.zeros((rois.shape[0], first.shape[1], *output_size), dtype=first.dtype, device=first.device)
    for level, (feature, scale) in enumerate(zip(x_filtered, scales)):
        idx_in_level = torch.where(levels == level)[0]
        pooled = poolers.roi_align(feature, rois[idx_in_level], output_size=output_size, spatial_scale=scale,
                                   sampling_ratio=sampling_ratio)
        result[idx_in_level] = pooled.to(result.dtype)
    return result


def _decode(self: det_utils.BoxCoder, rel_codes: Tensor, boxes: list[Tensor]) -> Tensor:
    """`BoxCoder.decode` with explicit reshape sizes instead of `if box_sum > 0`."""
    box_sum = sum(b.size(0) for b in boxes)
    rel_codes = rel_codes.reshape(box_sum, rel_codes.shape[-1])
    pred_boxes = self.decode_single(rel_codes, torch.cat(boxes, dim=0))
    return pred_boxes.reshape(box_sum, rel_codes.shape[-1] // 4, 4)


_nms_fake_registered = False


def _register_nms_fake() -> None:
    """A fake `torchvision::nms` whose kept count may be 0 or 1 (torchvision's says >= 2)."""
    global _nms_fake_registered
    if _nms_fake_registered:
        return

    @torch.library.register_fake("torchvision::nms")
    def _nms_fake(dets: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
        torch._check(dets.dim() == 2 and dets.size(1) == 4, lambda: f"boxes must be [N, 4], got {list(dets.shape)}")
        torch._check(scores.dim() == 1 and scores.size(0) == dets.size(0), lambda: "one score per box")
        return dets.new_empty(torch.library.get_ctx().new_dynamic_size(min=0), dtype=torch.long)

    _nms_fake_registered = True


@contextlib.contextmanager
def _export_safe_torchvision(batched_nms: Callable[..., Tensor] = _batched_nms) -> Iterator[None]:
    _register_nms_fake()
    saved = box_ops.batched_nms, poolers._multiscale_roi_align, det_utils.BoxCoder.decode
    box_ops.batched_nms, poolers._multiscale_roi_align = batched_nms, _multiscale_roi_align
    det_utils.BoxCoder.decode = _decode
    try:
        yield
    finally:
        box_ops.batched_nms, poolers._multiscale_roi_align, det_utils.BoxCoder.decode = saved


# -- the ONNX bundle ----------------------------------------------------------------------------
ONNX_OPSET = 17
_DETECTIONS = ("boxes", "scores", "labels")


def export_onnx(model: SplitModel, out_dir: str | os.PathLike[str], frame_size: Size = (480, 640),
                opset: int = ONNX_OPSET, source: str = "") -> dict[str, Any]:
    """Write `model`'s ONNX bundle into `out_dir` and return its manifest (also `manifest.json`).

    The graphs serve frames whose preprocessed size is that of a `frame_size` frame (every frame
    for the fixed-size resizes of SSD and of classifiers). A head's prefilter is not exported
    (data-dependent control flow): the bundle's head sends every frame, and the manifest says so."""
    out = Path(out_dir)
    image = torch.full((3, *frame_size), 0.5)
    with torch.no_grad():
        batch = model.adapter.preprocess(image)
        features = model.head.chain(batch.tensor)  # Head.forward without the prefilter, which might drop this frame
        z = model.head.encoder(features)
        split_size = _hw(features if model.head.chain.names else z)  # an entropic student's latent is at the split stride
        eager = model.tail(z, split_size, batch.batch_size, batch.image_size, batch.original_size)
    names = _output_names(model, eager)
    sizes = (split_size, batch.batch_size, batch.image_size)
    detector = model.family == "detector"
    unsplit = SplitModel(model.model, model.at, None, name=model.name,
                         **{k: getattr(model.adapter, k) for k in model.adapter.options})
    original = (torch.tensor(frame_size, dtype=torch.int64),) if detector else ()
    image_in = [_io("image", batch.tensor)]
    size_in = [{"name": "original_size", "shape": [2], "dtype": "int64"}] if detector else []
    graphs = {
        "head": ("device/head.onnx", _HeadGraph(model.head), (batch.tensor,), image_in, ["wire"]),
        "full": ("device/full.onnx", _OutputsGraph(_Unsplit(unsplit), sizes, names, detector),
                 (batch.tensor, *original), image_in + size_in, names),
        "tail": ("edge/tail.onnx", _OutputsGraph(model.tail, sizes, names, detector), (z, *original),
                 [_io("wire", z)] + size_in, names),
    }
    files: dict[str, Any] = {}
    for role, (relative, graph, args, inputs, outputs) in graphs.items():
        path = out / relative
        seconds = _onnx_export(graph, args, path, [i["name"] for i in inputs], outputs, opset)
        files[role] = {"path": relative, "inputs": inputs, "outputs": outputs, "bytes": path.stat().st_size,
                       "sha256": sha256(path), "export_seconds": round(seconds, 2)}
    manifest = _manifest(model, batch, split_size, z, names, files, opset, source)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def verify_onnx(model: SplitModel, directory: str | os.PathLike[str], images: list[Tensor],
                min_score: float = 0.05) -> dict[str, Any]:
    """Run the bundle with onnxruntime on `images` beside PyTorch; the worst differences seen.

    `codes_*`: the device's codec on the ONNX head's tensor against PyTorch's payload (8-bit codes
    one step off, or entropy symbols that differ); `edge`: PyTorch's tail on the ONNX payload
    against PyTorch's own; `tail`, `full`: the ONNX graphs against PyTorch (on PyTorch's payload,
    and on the frame). Detector differences are of the boxes scoring above `min_score`, in pixels."""
    import onnxruntime as ort

    if model.prefilter is not None:
        raise ValueError("the bundle's head has no prefilter: verify the model with `model.prefilter = None`")
    manifest = load_manifest(directory)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    run = {role: ort.InferenceSession(str(Path(directory) / e["path"]), options, providers=["CPUExecutionProvider"])
           for role, e in manifest["files"].items()}
    key = "boxes" if model.family == "detector" else "logits"
    worst = {"frames": len(images), "codes_differing": 0, "codes_total": 0, "codes_max_diff": 0, "wire": 0.0,
             "edge": 0.0, "tail": 0.0, "full": 0.0, "count_mismatches": 0}

    def compare(name: str, got: dict[str, Any], expected: Outputs) -> None:
        keep = int((expected["scores"] > min_score).sum()) if key == "boxes" else len(expected[key])
        if key == "boxes" and int((torch.as_tensor(got["scores"]) > min_score).sum()) != keep:
            worst["count_mismatches"] += 1
            return
        diff = (torch.as_tensor(got[key])[:keep] - expected[key][:keep]).abs()
        worst[name] = max(worst[name], float(diff.max()) if diff.numel() else 0.0)

    for image in images:
        batch = model.adapter.preprocess(image)
        if list(batch.tensor.shape) != manifest["input"]["shape"]:
            raise ValueError(f"a {list(image.shape[-2:])} frame preprocesses to {list(batch.tensor.shape)}, the bundle "
                             f"serves {manifest['input']['shape']}: verify with frames of the exported size")
        sizes = {"original_size": np.array(batch.original_size, np.int64)} if key == "boxes" else {}
        wire = run["head"].run(None, {"image": batch.tensor.numpy()})[0]
        msg = model.encode_message(image)
        with torch.no_grad():
            z, _ = model.head(batch.tensor)
        worst["wire"] = max(worst["wire"], float(np.abs(wire - z.numpy()).max()))
        ours, theirs = _codes(model, torch.from_numpy(wire)), _codes(model, z)
        worst["codes_differing"] += int((ours != theirs).sum())
        worst["codes_total"] += ours.size
        worst["codes_max_diff"] = max(worst["codes_max_diff"], np.abs(ours - theirs).max().item())
        expected = model.decode_message(msg)
        onnx_msg, enc = pb.Payload(), model.codec.encode(torch.from_numpy(wire))
        onnx_msg.CopyFrom(msg)
        onnx_msg.tensor.CopyFrom(tensor_message(enc))
        compare("edge", model.decode_message(onnx_msg), expected)
        t = msg.tensor
        decoded = model.codec.decode(from_message(t)).numpy()
        compare("tail", dict(zip(manifest["outputs"], run["tail"].run(None, {"wire": decoded, **sizes}))), expected)
        full = run["full"].run(None, {"image": batch.tensor.numpy(), **sizes})
        compare("full", dict(zip(manifest["outputs"], full)), model.full(image))
    return worst


def _codes(model: SplitModel, z: Tensor) -> np.ndarray:
    """What the codec sends for `z`: 8-bit codes or entropy symbols as integers, else the values."""
    codec = model.codec
    if isinstance(codec, EntropyCodec):
        return codec.student.symbols(z).astype(np.int64)
    if isinstance(codec, Uint8Codec):
        return np.frombuffer(codec.encode(z).data, np.uint8).astype(np.int64)
    return z.numpy().astype(np.float64)


class _HeadGraph(nn.Module):
    """The head for ONNX: preprocessed frame -> the wire tensor before the codec (no prefilter;
    the split size is a constant of the export, in the manifest)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head.encoder(self.head.chain(x))


class _OutputsGraph(nn.Module):
    """A tail-shaped module (`(x, split, batch, image, original) -> Outputs`) for ONNX: the sizes
    are the export's constants, the outputs a tuple in `names` order; a detector's boxes are
    mapped from the resized frame to `original_size` as `transform.postprocess` does."""

    def __init__(self, tail: nn.Module, sizes: tuple[Size, Size, Size], names: list[str], detector: bool) -> None:
        super().__init__()
        self.tail, self.sizes, self.names, self.detector = tail, sizes, names, detector

    def forward(self, x: Tensor, original_size: Tensor | None = None) -> tuple[Tensor, ...]:
        split_size, batch_size, image_size = self.sizes
        out = self.tail(x, split_size, batch_size, image_size, image_size)
        if self.detector:
            ratio = original_size.to(torch.float32) / torch.tensor(image_size, dtype=torch.float32)
            out["boxes"] = out["boxes"] * torch.stack([ratio[1], ratio[0], ratio[1], ratio[0]])
        return tuple(out[k] for k in self.names)


class _Unsplit(nn.Module):
    """The original model, unsplit, in the tail's signature: its first layers then the rest."""

    def __init__(self, unsplit: SplitModel) -> None:
        super().__init__()
        self.head, self.tail = unsplit.head, unsplit.tail

    def forward(self, x: Tensor, split_size: Size, batch_size: Size, image_size: Size, original_size: Size) -> Outputs:
        features, split_size = self.head(x)
        return self.tail(features, split_size, batch_size, image_size, original_size)


def _output_names(model: SplitModel, outputs: Outputs) -> list[str]:
    names = list(outputs)
    if model.family == "detector" and set(names) != set(_DETECTIONS):
        extra = sorted(set(names) - set(_DETECTIONS))
        raise ValueError(f"{model.name or model.at}: ONNX bundles carry boxes, scores and labels; "
                         f"this detector also gives {', '.join(extra)}, which are not exported")
    return list(_DETECTIONS) if model.family == "detector" else names


def _hw(t: Tensor) -> Size:
    return int(t.shape[-2]), int(t.shape[-1])


def _io(name: str, t: Tensor) -> dict[str, Any]:
    return {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def _onnx_export(graph: nn.Module, args: tuple[Tensor, ...], path: Path, inputs: list[str], outputs: list[str],
                 opset: int) -> float:
    """torch.onnx's TorchScript exporter on `graph` (in eval mode: the exporter restores the mode it
    found, and a fresh wrapper would put the model's own modules in training mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    graph.eval()
    start = time.perf_counter()
    with torch.no_grad(), _onnx_safe_torchvision(opset), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on every size it freezes, and the exporter's deprecation
        torch.onnx.export(graph, args, str(path), dynamo=False, opset_version=opset, input_names=inputs,
                          output_names=outputs, do_constant_folding=True)
    return time.perf_counter() - start


def _argsort_symbolic(g: Any, x: Any, *args: Any) -> Any:
    """`aten::argsort(x, dim, descending)` and `.stable(x, stable, dim, descending)` as ONNX TopK over
    the whole axis, which breaks ties by index (a stable sort); torch's own symbolic refuses `.stable`."""
    from torch.onnx import symbolic_helper

    dim = symbolic_helper._get_const(args[-2], "i", "dim")
    descending = symbolic_helper._get_const(args[-1], "b", "descending")
    axis = g.op("Constant", value_t=torch.tensor([dim], dtype=torch.int64))
    count = g.op("Gather", g.op("Shape", x), axis, axis_i=0)
    _, indices = g.op("TopK", x, count, axis_i=dim, largest_i=int(descending), sorted_i=1, outputs=2)
    return indices


@contextlib.contextmanager
def _onnx_safe_torchvision(opset: int) -> Iterator[None]:
    torch.onnx.register_custom_op_symbolic("aten::argsort", _argsort_symbolic, opset)
    try:
        with _export_safe_torchvision(_batched_nms_offset):
            yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::argsort", opset)


# -- what the manifest says -------------------------------------------------------------------
def _manifest(model: SplitModel, batch: ImageBatch, split_size: Size, z: Tensor, names: list[str],
              files: dict[str, Any], opset: int, source: str) -> dict[str, Any]:
    import onnx
    import torchvision

    return {
        "format": BUNDLE_FORMAT, "model": model.name, "family": model.family, "weights": source,
        # Every label's name, so that a device without torchvision (whose weight metadata holds COCO's and
        # ImageNet's) can name what it draws.
        "classes": {str(k): v for k, v in label_names(model.family, model.classes).items()},
        "input": {"shape": list(batch.tensor.shape), "dtype": "float32", "layout": "NCHW", "color": "RGB",
                  "example_frame_size": list(batch.original_size), **_preprocessing(model)},
        "split": {"point": model.at, "size": list(split_size), "wire_shape": list(z.shape), "wire_dtype": "float32",
                  "bottleneck_digest": model.bottleneck_digest(),
                  "prefilter": "not exported: the head sends every frame" if model.prefilter is not None else None},
        # What the device puts in a Payload beside the coded tensor (protos/splitedge.proto): model, split_point,
        # split_size and the frame's original_size. image_size and batch_size record the sizes the graphs were
        # exported for; protocol 3 does not send them (the edge computes them from original_size).
        "payload": {"model": model.name, "split_point": model.at, "image_size": list(batch.image_size),
                    "batch_size": list(batch.batch_size), "split_size": list(split_size),
                    "original_size": "the frame as captured, [h, w]"},
        "codec": _codec_spec(model),
        "outputs": names,
        "files": files,
        "opset": opset, "exporter": "torch.onnx (TorchScript)",
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "onnx": onnx.__version__},
    }


def _preprocessing(model: SplitModel) -> dict[str, Any]:
    """The resize and normalization the device runs before the head (`adapter.preprocess`)."""
    transform = getattr(model.model, "transform", None)
    if isinstance(transform, TFTransform):
        return {"resize": {"rule": "tf_legacy_bilinear", "size": [transform.size, transform.size],
                           "detail": "tf.image.resize_bilinear(align_corners=False, half_pixel_centers=False) of "
                                     "the 0..255 RGB frame: source = destination * in / out, clamped at the border; "
                                     "a frame already that size is not resampled (split.models.ssdlite_tf)"},
                "normalization": {"rule": "tf", "formula": "x255 * 2 / 255 - 1 after the resize",
                                  "mean": [0.5] * 3, "std": [0.5] * 3, "on": "RGB in [0, 1]"}}
    if isinstance(transform, GeneralizedRCNNTransform):
        return {"resize": {"rule": "torchvision_detection", "min_size": list(transform.min_size),
                           "max_size": transform.max_size, "fixed_size": transform.fixed_size,
                           "size_divisible": transform.size_divisible, "interpolation": "bilinear",
                           "detail": "torchvision GeneralizedRCNNTransform: the graphs serve frames that resize "
                                     "to input.shape"},
                "normalization": {"rule": "mean_std", "mean": list(transform.image_mean),
                                  "std": list(transform.image_std), "on": "RGB in [0, 1]"}}
    adapter = model.adapter
    return {"resize": {"rule": "shorter_side_then_center_crop", "resize_size": adapter.resize_size,
                       "crop_size": adapter.crop_size, "interpolation": "bilinear, antialias"},
            "normalization": {"rule": "mean_std", "mean": list(adapter.mean), "std": list(adapter.std),
                              "on": "RGB in [0, 1]"}}


def _codec_spec(model: SplitModel) -> dict[str, Any]:
    """The codec the device runs on the head's output, with what it needs (its tables)."""
    codec = model.codec
    if isinstance(codec, Uint8Codec):
        return {"name": codec.name, "levels": codec.levels, "rule": "per-tensor min/max affine",
                "encode": "float32: lo, hi = min(z), max(z); scale = (hi - lo) / levels if hi > lo else 1; "
                          "zero_point = -lo / scale; q = uint8(clip(round_half_even(z / scale + zero_point), 0, levels))",
                "decode": "z = (q - zero_point) * scale", "bytes": "q, C order",
                "payload": "Tensor{codec, shape, scale, zero_point, data}"}
    if isinstance(codec, EntropyCodec):
        return _entropy_spec(codec)
    if isinstance(codec, (Float32Codec, Float16Codec)):
        return {"name": codec.name, "bytes": f"the wire tensor as {codec.wire} values, C order"}
    raise ValueError(f"codec {codec.name!r} has no ONNX bundle description")


def _entropy_spec(codec: EntropyCodec) -> dict[str, Any]:
    student = codec.student
    if student.prior != "factorized":
        raise ValueError(f"{codec.name}: the hyperprior's CDF indexes come from a convolution that torch and "
                         "onnxruntime may round across a table boundary (bottlenecks/entropic.py); only the "
                         "factorized prior exports")
    if not student.prepared():
        raise ValueError(f"{codec.name}: entropy tables are not prepared: call prepare() before exporting")
    prior = student.entropy
    return {"name": codec.name, "coder": "ANS, constriction; bottlenecks.wire.TableCoder on these tables",
            "compressai": student.spec()["compressai"], "precision": int(prior.entropy_coder_precision),
            "symbols": "int32(round_half_even(y - medians[c])) for every value of channel c, C order",
            "indexes": "the channel number c of every value",
            "decode": "y_hat = symbols + medians[c] (the tail's input)",
            "medians": prior._get_medians().detach().flatten().tolist(),
            "quantized_cdf": prior._quantized_cdf.tolist(), "cdf_length": prior._cdf_length.tolist(),
            "offset": prior._offset.tolist()}

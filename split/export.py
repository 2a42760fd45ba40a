"""Export the two halves of a split model with `torch.export`, for frames of one size.

`export_head(model, image)` gives the device half: the preprocessed frame [1, 3, H, W] in, the
wire tensor and the split size out. `export_tail(model, image)` gives the edge half: the wire
tensor and the sizes a payload carries in (`Tail.forward`'s arguments), the outputs dict out.
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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.export import ExportedProgram
from torch.fx.experimental.symbolic_shapes import guard_or_false
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import boxes as box_ops
from torchvision.ops import poolers

from split.adapters import Size
from split.api import SplitModel

__all__ = ["export_head", "export_tail", "tail_inputs"]


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
    padded batch, resized and original sizes, as a payload carries them."""
    with torch.no_grad():
        batch = model.adapter.preprocess(image)
        z, split_size = model.head(batch.tensor)
    return z, split_size, batch.batch_size, batch.image_size, batch.original_size


# -- torchvision without data-dependent branches, while exporting ------------------------------
def _batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's `batched_nms`; the coordinate trick's offset is empty-safe instead of branching."""
    if guard_or_false(boxes.numel() > (4000 if boxes.device.type == "cpu" else 100_000)):
        return box_ops._batched_nms_vanilla(boxes, scores, idxs, iou_threshold)
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
def _export_safe_torchvision() -> Iterator[None]:
    _register_nms_fake()
    saved = box_ops.batched_nms, poolers._multiscale_roi_align, det_utils.BoxCoder.decode
    box_ops.batched_nms, poolers._multiscale_roi_align = _batched_nms, _multiscale_roi_align
    det_utils.BoxCoder.decode = _decode
    try:
        yield
    finally:
        box_ops.batched_nms, poolers._multiscale_roi_align, det_utils.BoxCoder.decode = saved

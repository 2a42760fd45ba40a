"""The device's compute with torch: the whole model, the split head or JPEG encode, and hedged local runs.

A *hedged* remote frame (``Decision.hedge``) is also run here while its
result is awaited: for split, the original model from the split point's
features *before* the bottleneck (the head computed them anyway; a forward
hook on the head's stage chain keeps them), for offload the whole model, as a
chain of stages so that the run can stop at a stage boundary when the edge's
result comes first. Where the split head is a distilled copy (not the
original model's modules), its features do not fit the original model's later
stages, and split frames are continued from the image with the whole model.

``device_slowdown`` K > 1 stands for a slower device: each compute is
stretched by waiting K-1 times as long again (the emulated part of a hedged
stage is a wait that the edge's result ends at once).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from protos import splitedge_pb2 as pb
from split import SplitModel
from split.adapters import ImageBatch, Outputs, Stage

from mobile_client.runtime import SlowedCompute

__all__ = ["TorchDevice", "to_tensor"]


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)


class TorchDevice(SlowedCompute):
    """Runs one :class:`~split.SplitModel`'s device side, timing each compute (with the emulated slowdown)."""

    def __init__(self, model: SplitModel, *, jpeg_quality: int = 90, device_slowdown: float = 1.0) -> None:
        self.model, self.jpeg_quality, self.device_slowdown = model, jpeg_quality, device_slowdown
        self._stages: list[Stage] | None = None  # the original model as a stage chain (hedged local runs)
        self._resumable = False  # whether the split head is made of those stages' own modules

    def expects(self) -> dict[str, str]:
        """What the edge must serve for this device's split payloads (`ModelInfo`'s fields)."""
        d = self.model.describe()
        return {"split_point": d["split_point"], "codec": d["codec"], "bottleneck_digest": d["bottleneck_digest"]}

    @staticmethod
    def image(rgb: np.ndarray) -> torch.Tensor:
        """A captured H x W x 3 uint8 RGB frame as what the model takes."""
        return to_tensor(rgb)

    def run_local(self, image: torch.Tensor) -> tuple[Outputs, float]:
        return self.compute(self.model.full, image)

    def encode(self, image: torch.Tensor, mode: str, hedge: bool) -> tuple[pb.Payload | None, float, Any]:
        """The payload of a remote mode (None: filtered), its device seconds, and what a hedged run resumes from."""
        if mode != "split":
            payload, s = self.compute(self.model.encode_image, image, self.jpeg_quality)
            return payload, s, None
        features: list[torch.Tensor] = []
        hook = None
        if hedge and self.resumable():  # keep the features before the bottleneck
            hook = self.model.head.chain.register_forward_hook(lambda _m, _i, out: features.append(out))
        try:
            payload, s = self.compute(self.model.encode_message, image)
        finally:
            if hook is not None:
                hook.remove()
        return payload, s, features[-1] if features else None

    def resumable(self) -> bool:
        """Whether the split head is the original model's own modules, so a hedged run can start at the split."""
        if self._stages is None:
            self._stages = self.model.adapter.stages()
            k = next((i for i, st in enumerate(self._stages) if st.name == self.model.at), None)
            head = list(self.model.head.chain.blocks)
            self._resumable = k is not None and len(head) == k + 1 and all(
                a is st.module for a, st in zip(head, self._stages[: k + 1]))
        return self._resumable

    def local_steps(self, image: torch.Tensor, payload: pb.Payload,
                    features: torch.Tensor | None) -> Iterator[None]:
        """The original model on this frame as a chain of stages, yielding between them; returns its outputs.

        With the split point's features (before the bottleneck), it starts right after the split point,
        with the sizes the transform makes of the payload's original size; without, from the image.
        """
        self.resumable()
        stages, adapter = self._stages, self.model.adapter
        taps: OrderedDict[str, torch.Tensor] = OrderedDict()
        with torch.inference_mode():
            if features is not None:
                k = next(i for i, st in enumerate(stages) if st.name == self.model.at)
                original = (int(payload.original_size.height), int(payload.original_size.width))
                image = self.model.limits.image_size(original)
                sizes = ImageBatch(torch.empty(0, 3, *self.model.limits.batch_size(image)), image, original)
                x = features
                if stages[k].tap is not None:
                    taps[stages[k].tap] = x
                rest = stages[k + 1:]
            else:
                sizes = adapter.preprocess(image)
                x, rest = sizes.tensor, stages
                yield
            for st in rest:
                x = st.module(x)
                if st.tap is not None:
                    taps[st.tap] = st.tap_fn(x) if st.tap_fn is not None else x
                yield
            return adapter.finish(taps, x, sizes)

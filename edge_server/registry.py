"""The models an edge server serves, and the latencies it measured for them."""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from split import SplitModel
from split import fusion
from split.adapters import Outputs

__all__ = ["ModelRegistry", "ServedModel"]


@dataclass
class ServedModel:
    """A split model plus where its weights came from and a window of measured latencies.

    Latencies are kept under the keys of `splitedge profile` ("tail"; "offload_edge": JPEG
    decode + full model), so `Describe` reports a profile the device's controller plans with.
    The model is put in the edge's form (`split.fusion.edge_form`: BatchNorms folded, channels-last),
    in place, unless `edge_form` is False: the server it is given to runs only its edge side.
    """

    model: SplitModel
    weights: str
    architecture: str
    window: int = 200
    latencies: dict[str, deque[float]] = field(default_factory=dict)
    edge_form: bool = True

    def __post_init__(self) -> None:
        if self.edge_form:
            fusion.edge_form(self.model)

    def record(self, kind: str, ms: float) -> None:
        self.latencies.setdefault(kind, deque(maxlen=self.window)).append(ms)

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in self.latencies.items() if v}

    def run(self, payload) -> tuple[Outputs, float]:
        """Decode one payload and run the tail (or the full model); returns outputs and ms."""
        t0 = time.perf_counter()
        out = self.model.decode_message(payload)
        ms = (time.perf_counter() - t0) * 1e3
        self.record(_kind(payload), ms)
        return out, ms

    def run_batch(self, payloads: list) -> tuple[list[Outputs | Exception], float]:
        """Decode payloads of one batch key as one batch (`SplitModel.decode_batch`); per payload its
        outputs or the exception it raised, and the batch's ms (what each of its frames spent computing).

        One payload is `run` (the path it always took). A batch that fails is decoded again one frame
        at a time, so that only the frame at fault gets an error and the others their results. The
        latency recorded is the batch's: it is what a frame waits for in compute at this load."""
        if len(payloads) == 1:
            t0 = time.perf_counter()
            try:
                out, ms = self.run(payloads[0])
                return [out], ms
            except Exception as exc:  # the scheduler hands it to the frame's waiter
                return [exc], (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        try:
            outs: list[Outputs | Exception] = list(self.model.decode_batch(payloads))
        except Exception:
            outs = [self._one(p) for p in payloads]
        ms = (time.perf_counter() - t0) * 1e3
        self.record(_kind(payloads[0]), ms)
        return outs, ms

    def _one(self, payload) -> Outputs | Exception:
        try:
            return self.model.decode_message(payload)
        except Exception as exc:
            return exc

    def warm_up(self, height: int = 480, width: int = 640) -> None:
        """One frame of each kind: pays the first-call costs and seeds the latency medians."""
        image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
        self.run(self.model.encode_message(image))
        self.run(self.model.encode_image(image))


def _kind(payload) -> str:
    return "offload_edge" if payload.tensor.codec == "jpeg" else "tail"


class ModelRegistry:
    """Name -> served model; the error for an unknown name lists what is served."""

    def __init__(self, models: list[ServedModel]) -> None:
        self._models = {m.model.name: m for m in models}

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def __iter__(self):
        return iter(self._models.values())

    def get(self, name: str) -> ServedModel | None:
        if not name and len(self._models) == 1:
            return next(iter(self._models.values()))
        return self._models.get(name)

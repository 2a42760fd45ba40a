"""The device's compute from an ONNX bundle: onnxruntime, numpy and OpenCV, no torch.

What a Raspberry Pi or a phone installs (`pip install splitedge[client]`, docs/lean-client.md)
to run `splitedge run --runtime onnx --bundle DIR`: the bundle's `device/head.onnx` (split),
`device/full.onnx` (local, and the local run of a hedged frame) and the manifest's
preprocessing and codec (`split.bundle`), the payload the torch device would send. The
interface is `mobile_client.device.TorchDevice`'s, so the session driver, the controller and
the gRPC client are the same code for both runtimes.

Two differences from the torch device, both from what a bundle holds:
- a hedged split frame's local run starts from the image (the head graph gives only the
  wire tensor, not the split point's features), so `local_steps` is preprocess, then the
  whole graph: the edge's result can end the race only between the two;
- the bundle's head has no prefilter (not exported), so every frame is sent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import cv2
import numpy as np

from protos import splitedge_pb2 as pb
from bottlenecks.wire import EncodedTensor
from split.bundle import BundleCodec, BundleError, load_manifest, preprocess, resized
from split.messages import size_message, tensor_message

from mobile_client.runtime import SlowedCompute

__all__ = ["BundleModel", "OnnxDevice"]


@dataclass(frozen=True)
class BundleModel:
    """What the device runtime and the sinks read of a model: its name, family and label map."""

    name: str
    family: str
    at: str
    classes: dict[int, str] | None


class OnnxDevice(SlowedCompute):
    """One bundle's device side, timing each compute (with the emulated slowdown, as TorchDevice)."""

    def __init__(self, bundle: str | os.PathLike[str], *, jpeg_quality: int = 90, device_slowdown: float = 1.0,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        self.manifest = m = load_manifest(bundle, roles=("head", "full"))
        self.jpeg_quality, self.device_slowdown = jpeg_quality, device_slowdown
        classes = {int(k): v for k, v in m["classes"].items()} if m.get("classes") else None
        self.model = BundleModel(m["model"], m["family"], m["split"]["point"], classes)
        self.codec = BundleCodec(m["codec"])
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        root = Path(bundle)
        self._sessions = {role: ort.InferenceSession(str(root / m["files"][role]["path"]), options,
                                                     providers=["CPUExecutionProvider"]) for role in ("head", "full")}
        self._detector = m["family"] == "detector"
        self._payload = m["payload"]

    # -- what LiveIO calls --------------------------------------------------------------------
    def expects(self) -> dict[str, str]:
        """What the edge must serve for this bundle's split payloads (`ModelInfo`'s fields)."""
        split = self.manifest["split"]
        return {"split_point": split["point"], "codec": self.codec.name,
                "bottleneck_digest": split.get("bottleneck_digest", "")}

    @staticmethod
    def image(rgb: np.ndarray) -> np.ndarray:
        """A captured frame stays the H x W x 3 uint8 RGB array: every step here takes it."""
        return rgb

    def run_local(self, rgb: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        return self.compute(self.full, rgb)

    def encode(self, rgb: np.ndarray, mode: str, hedge: bool) -> tuple[pb.Payload, float, None]:
        fn = self.split_payload if mode == "split" else self.offload_payload
        payload, s = self.compute(fn, rgb)
        return payload, s, None

    def local_steps(self, rgb: np.ndarray, payload: pb.Payload, features: None) -> Iterator[None]:
        """The whole graph on this frame, in two steps (preprocess, run); returns its outputs."""
        x = preprocess(rgb, self.manifest)
        yield
        return self._run_full(x, rgb.shape[:2])

    # -- the computations ---------------------------------------------------------------------
    def full(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        """Local mode: the unsplit model's outputs, by the manifest's output names."""
        return self._run_full(preprocess(rgb, self.manifest), rgb.shape[:2])

    def _run_full(self, x: np.ndarray, original: tuple[int, int]) -> dict[str, np.ndarray]:
        feeds = {"image": x, **self._sizes(original)}
        return dict(zip(self.manifest["outputs"], self._sessions["full"].run(None, feeds)))

    def wire(self, rgb: np.ndarray) -> np.ndarray:
        """The head graph's output for one frame: the tensor before the codec."""
        return self._sessions["head"].run(None, {"image": preprocess(rgb, self.manifest)})[0]

    def split_payload(self, rgb: np.ndarray) -> pb.Payload:
        """Preprocess, the head graph, the codec: what `SplitModel.encode_message` sends for the frame."""
        p, enc = self._payload, self.codec.encode(self.wire(rgb))
        return pb.Payload(model=self.model.name, split_point=p["split_point"], tensor=tensor_message(enc),
                          original_size=size_message(rgb.shape[:2]), split_size=size_message(p["split_size"]))

    def offload_payload(self, rgb: np.ndarray) -> pb.Payload:
        """Offload: the model's own resize, then JPEG (what `SplitModel.encode_image` sends)."""
        x = resized(rgb, self.manifest)
        rgb8 = (np.clip(x, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb8[:, :, ::-1]),
                               [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise BundleError("OpenCV failed to encode the frame as JPEG")
        hw = rgb8.shape[:2]
        enc = tensor_message(EncodedTensor("jpeg", "uint8", (3, *hw), buf.tobytes()))
        return pb.Payload(model=self.model.name, tensor=enc, original_size=size_message(rgb.shape[:2]))

    def _sizes(self, original: tuple[int, int]) -> dict[str, np.ndarray]:
        return {"original_size": np.asarray(original, np.int64)} if self._detector else {}

    # -- the controller's costs ---------------------------------------------------------------
    def profile(self, rgb: np.ndarray, repeat: int = 3) -> dict[str, Any]:
        """This device's times and bytes on one frame, as a `splitedge profile` file has them (the
        fields `mobile_client.costs.costs_from_profiles` reads): median of `repeat` runs after one
        warm-up. The device's `tail` is its whole model's time, what a hedged split frame's local
        run costs here (from the image); the edge's own times replace the edge terms at connect."""
        times: dict[str, float] = {}
        sizes: dict[str, int] = {}
        for name, fn in (("full", self.full), ("head", self.split_payload), ("jpeg_encode", self.offload_payload)):
            out = fn(rgb)
            runs = []
            for _ in range(repeat):
                t = time.perf_counter()
                out = fn(rgb)
                runs.append((time.perf_counter() - t) * 1e3)
            times[name] = median(runs)
            if isinstance(out, pb.Payload):
                sizes["split" if name == "head" else "jpeg"] = out.ByteSize()
        key = "x".join(str(d) for d in rgb.shape[:2])
        ms = {**times, "tail": times["full"], "offload_edge": times["full"]}
        return {"model": self.model.name, "runtime": "onnx", "default_size": key,
                "sizes": {key: {"ms": ms, "bytes": sizes}}}

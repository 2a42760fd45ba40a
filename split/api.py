"""`split(model, at, bottleneck=None)`: cut a torchvision model into a device head and an edge tail.

The device calls `encode(images) -> list[bytes]`, the edge calls `decode(payload) -> outputs`;
`split_model(images)` is `decode(encode(images))`. With `bottleneck=None` and the lossless
float32 codec, the outputs equal the original model's. `.head` and `.tail` are plain modules
that take tensors and sizes and return tensors, so `split.export` exports each with
torch.export; `encode` and `decode` wrap them with preprocessing, the codec and the payload.

The payload is the protocol's `Payload` message (a protobuf, not a hand-made header): that is
why `split` imports `protos` for that one message, the single exception to DESIGN.md's import
table, since `encode` must return the bytes the edge will read. Tensor byte layouts stay in
`bottlenecks`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bottlenecks import Bottleneck, CodecError, EncodedTensor, JpegCodec, TensorCodec, get_codec
from protos import splitedge_pb2 as pb
from split.messages import from_message, size_message, tensor_message
from split.adapters import Outputs, Size, Stage, adapter_for
from split.limits import ModelLimits

__all__ = ["Head", "PayloadMismatch", "SplitModel", "Tail", "split"]

MAX_SIDE = 4096  # a payload claiming a larger image is rejected before any compute
_SPLIT_SIZES = 64  # padded batch sizes whose split size a model remembers


class PayloadMismatch(ValueError):
    """A payload that does not fit the model it was sent to; the message names the mismatch."""


class _Chain(nn.Module):
    """Runs a slice of the stage chain; given a `taps` dict, fills in the tapped outputs the
    later parts need (the head passes none: what it taps, the tail recomputes from its input)."""

    def __init__(self, stages: list[Stage]) -> None:
        super().__init__()
        self.names = [s.name for s in stages]
        self.taps = [s.tap for s in stages]
        self.blocks = nn.ModuleList([s.module for s in stages])
        self.tap_fns = nn.ModuleList([s.tap_fn or nn.Identity() for s in stages])

    def forward(self, x: Tensor, taps: dict[str, Tensor] | None = None) -> Tensor:
        for block, tap, tap_fn in zip(self.blocks, self.taps, self.tap_fns):
            x = block(x)
            if tap is not None and taps is not None:
                taps[tap] = tap_fn(x)
        return x


class Head(nn.Module):
    """Device side: the backbone up to the split point, the prefilter's gate, the bottleneck encoder.

    `forward` takes the preprocessed frame [1, 3, H, W] and returns the tensor to send and the
    split point's spatial size (which the tail needs to undo the bottleneck's downsampling);
    torch.export keeps the size as a constant of the exported program. A frame the prefilter
    drops gives an empty tensor: nothing is sent for it, as `encode` gives `b""`. The prefilter
    sits here, between the chain and the encoder, so a dropped frame costs only its few convs;
    its decision is data-dependent, so a head exports without one (`split.export`).
    """

    def __init__(self, stages: list[Stage], encoder: nn.Module | None) -> None:
        super().__init__()
        self.chain = _Chain(stages)
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.prefilter: nn.Module | None = None  # anything with .keep(features) -> bool

    def forward(self, x: Tensor) -> tuple[Tensor, Size]:
        features = self.chain(x)
        if not self.chain.names:  # an entropic student's encoder replaces the head: its latent is at the split stride
            z = self.encoder(features)
            return z, (int(z.shape[-2]), int(z.shape[-1]))
        split_size = (int(features.shape[-2]), int(features.shape[-1]))
        if self.prefilter is not None and not self.prefilter.keep(features):
            return features.new_empty(0), split_size
        return self.encoder(features), split_size


class Tail(nn.Module):
    """Edge side: the bottleneck decoder, the rest of the backbone, the family's finisher.

    It registers only what it runs (not the head's stages nor the bottleneck's encoder), and
    takes the wire tensor and the sizes the payload carries as plain values, so it exports:
    torch.export specializes the sizes, and the exported tail serves frames of that size.
    """

    def __init__(self, split_tap: str | None, stages: list[Stage], decoder: nn.Module | None,
                 finisher: nn.Module) -> None:
        super().__init__()
        self.split_tap = split_tap
        self.decoder = decoder if decoder is not None else nn.Identity()
        self.chain = _Chain(stages)
        self.finisher = finisher

    def forward(self, z: Tensor, split_size: Size, batch_size: Size, image_size: Size,
                original_size: Size) -> Outputs:
        x = self.decoder(z)[..., : split_size[0], : split_size[1]]  # crops odd sizes after downsampling
        taps: dict[str, Tensor] = {self.split_tap: x} if self.split_tap is not None else {}
        x = self.chain(x, taps)
        return self.finisher(taps, x, batch_size, image_size, original_size)

    def forward_batch(self, z: Tensor, split_size: Size, batch_size: Size, image_sizes: list[Size],
                      original_sizes: list[Size]) -> list[Outputs]:
        """`forward` of frames stacked on dim 0 that share the padded sizes (their original and
        resized sizes may differ); one output per frame, each equal to its own `forward`'s."""
        x = self.decoder(z)[..., : split_size[0], : split_size[1]]
        taps: dict[str, Tensor] = {self.split_tap: x} if self.split_tap is not None else {}
        x = self.chain(x, taps)
        return self.finisher.forward_batch(taps, x, batch_size, image_sizes, original_sizes)


def _hw(size: pb.Size) -> Size:
    return int(size.height), int(size.width)


@dataclass
class _Decoded:
    """One payload, checked against the model and decoded: the wire tensor (or offload image)
    and the frame's sizes (sent, or derived from its original size). Frames with equal `key`s stack
    into one batch."""

    tensor: Tensor  # [1, C, h, w] for the tail; [3, H, W] for the full model
    jpeg: bool
    split_size: Size
    batch_size: Size
    image_size: Size
    original_size: Size

    @property
    def key(self) -> Hashable:
        return self.jpeg, tuple(self.tensor.shape), self.split_size, self.batch_size


class SplitModel:
    """A model cut at `at`: `.head` and `.tail` are plain modules; a payload carries the frame's
    original size and the split size, and the sizes between follow from the transform (`limits`)."""

    def __init__(self, model: nn.Module, at: str, bottleneck: Bottleneck | int | None = None,
                 codec: TensorCodec | str = "float32", name: str = "", own_head: bool = False,
                 **adapter_options: Any) -> None:
        self.model = model.eval()
        self.adapter = adapter_for(model, **adapter_options)
        self.family = self.adapter.family
        self.at = at
        self.name = name
        self.codec = get_codec(codec) if isinstance(codec, str) else codec
        if self.codec.name == "jpeg":
            raise ValueError("jpeg is an image codec for offload; pick float32, float16 or uint8 for features")
        stages = self.adapter.stages()
        k = _split_index(stages, at, type(model).__name__)
        self.split_channels = self._probe_channels(stages[: k + 1])
        self.bottleneck = self._bottleneck(bottleneck)
        head_stages = stages[: k + 1]
        self._size_chain = _Chain(head_stages)  # the original's first layers: the split size of a batch size
        if hasattr(self.bottleneck, "codec"):  # an entropic student's learned prior brings its own codec
            self.codec = self.bottleneck.codec()
        if getattr(self.bottleneck, "replaces_head", False):
            head_stages = []  # its encoder takes the image: the device runs none of the original layers
        elif own_head:  # a trainable copy: distillation changes it, the original model stays intact
            head_stages = [Stage(s.name, copy.deepcopy(s.module), s.tap, s.tap_fn) for s in head_stages]
        self.head = Head(head_stages, self.bottleneck.encoder if self.bottleneck else None).eval()
        self.tail = Tail(stages[k].tap, stages[k + 1 :], self.bottleneck.decoder if self.bottleneck else None,
                         self.adapter.finisher).eval()
        self.wire_channels = self.bottleneck.channels if self.bottleneck else self.split_channels
        self.classes: dict[int, str] | None = None  # a fine-tuned detector's label subset (recipes.build)
        self._jpeg = JpegCodec()
        # Split size per padded batch size, measured; per model (it dies with it) and bounded.
        self._split_sizes: OrderedDict[Size, Size] = OrderedDict()
        self._split_sizes_lock = threading.Lock()  # the edge decodes on several worker threads

    @functools.cached_property
    def limits(self) -> ModelLimits:
        """The sizes this model's transform makes of a frame (`split.limits`), made once on first use."""
        return ModelLimits.of(self)

    def _bottleneck(self, bottleneck: Bottleneck | int | None) -> Bottleneck | None:
        if isinstance(bottleneck, int):
            warnings.warn(f"bottleneck={bottleneck} builds an untrained bottleneck: what the tail sees is noise "
                          "until it is trained (`splitedge train`) or loaded from a checkpoint "
                          "(`split.recipes.build(name, checkpoint=...)`)", UserWarning, stacklevel=_caller_level())
            bottleneck = Bottleneck(self.split_channels, bottleneck)
        if bottleneck is not None and bottleneck.in_channels != self.split_channels:
            raise ValueError(f"bottleneck expects {bottleneck.in_channels} channels, "
                             f"split point {self.at!r} has {self.split_channels}")
        return bottleneck.eval() if bottleneck is not None else None

    @property
    def prefilter(self) -> nn.Module | None:
        """The head's gate (anything with `.keep(features) -> bool`), or None: every frame is sent."""
        return self.head.prefilter

    @prefilter.setter
    def prefilter(self, prefilter: nn.Module | None) -> None:
        if prefilter is not None and not self.head.chain.names:
            raise ValueError("an entropic student's head has no split-point features for a prefilter to read")
        self.head.prefilter = prefilter

    # -- device side -------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, images: list[Tensor]) -> list[bytes]:
        """Head + bottleneck encoder + codec; one self-contained payload per image.

        A frame the prefilter drops gives `b""`: nothing is sent for it (`decode(b"")` gives
        its result, nothing detected)."""
        out = []
        for img in images:
            msg = self.encode_message(img)
            out.append(msg.SerializeToString() if msg is not None else b"")
        return out

    @torch.inference_mode()
    def encode_message(self, image: Tensor) -> pb.Payload | None:
        """The payload of one frame, or None when the prefilter finds nothing of interest.

        Preprocess, then `Head.forward` (the exported head computes the same), then the codec."""
        sizes = self.adapter.preprocess(image)
        z, split_size = self.head(sizes.tensor)
        if z.numel() == 0:  # the prefilter dropped the frame
            return None
        return pb.Payload(model=self.name, split_point=self.at, tensor=tensor_message(self.codec.encode(z)),
                          original_size=size_message(sizes.original_size), split_size=size_message(split_size))

    @torch.inference_mode()
    def encode_image(self, image: Tensor, quality: int = 90) -> pb.Payload:
        """Offload: the model's own resize, then JPEG; the edge runs the whole model."""
        resized = self.adapter.resize(image)
        enc = JpegCodec(quality).encode(resized)
        return pb.Payload(model=self.name, tensor=tensor_message(enc), original_size=size_message(image.shape[-2:]))

    @torch.inference_mode()
    def full(self, image: Tensor) -> Outputs:
        """Local mode: the original model, unsplit."""
        return self.adapter.full(image)

    # -- edge side ---------------------------------------------------------------------------
    def decode(self, payload: bytes) -> Outputs:
        """The outputs for one payload from `encode`; `b""` (a frame the prefilter dropped) gives
        `empty_outputs()`, so that `decode(encode(...))` holds for every frame."""
        if not payload:
            return self.empty_outputs()
        msg = pb.Payload()
        try:
            msg.ParseFromString(payload)
        except Exception as exc:  # protobuf raises DecodeError; any parse failure is the same to us
            raise PayloadMismatch(f"payload is not a splitedge.v1.Payload message: {exc}") from None
        return self.decode_message(msg)

    @torch.inference_mode()
    def decode_message(self, msg: pb.Payload) -> Outputs:
        """The outputs for one parsed payload: the tail on its tensor, or for a JPEG the full model."""
        d = self._checked(msg)
        if d.jpeg:
            return self.adapter.full_on_resized(d.tensor, d.original_size)
        return self.tail(d.tensor, d.split_size, d.batch_size, d.image_size, d.original_size)

    @torch.inference_mode()
    def decode_batch(self, msgs: Sequence[pb.Payload]) -> list[Outputs]:
        """`decode_message` of each payload, in order, with frames of one size run as one batch.

        Frames group by `batch_key` (kind, tensor shape and padded size: what must match to
        stack without padding anything the one-frame path does not pad); each output equals the
        one-frame call's to float tolerance. One payload that does not fit raises
        PayloadMismatch for the call (the edge then decodes that batch one by one)."""
        decoded = [self._checked(m) for m in msgs]
        groups: dict[Hashable, list[int]] = {}
        for i, d in enumerate(decoded):
            groups.setdefault(d.key, []).append(i)
        out: list[Outputs | None] = [None] * len(decoded)
        for members in groups.values():
            for i, o in zip(members, self._run_group([decoded[i] for i in members])):
                out[i] = o
        return out  # type: ignore[return-value]  (every index is in one group)

    def batch_key(self, msg: pb.Payload) -> Hashable:
        """What a payload's frame must share with others to be batched with them, read from its
        (validated) fields before decoding: the scheduler groups by it, `decode_batch` by the same."""
        t = msg.tensor
        shape = tuple(int(d) for d in t.shape)
        if t.codec == "jpeg":  # an offload image is not padded: its batch size is its (resized) size
            return True, shape, (0, 0), shape[-2:]
        batch = self.limits.batch_size(self.limits.image_size(_hw(msg.original_size)))
        return False, shape, _hw(msg.split_size), batch

    def _run_group(self, group: list[_Decoded]) -> list[Outputs]:
        first = group[0]
        if first.jpeg:
            return self.adapter.full_on_resized_batch([d.tensor for d in group], [d.original_size for d in group])
        z = torch.cat([d.tensor for d in group]) if len(group) > 1 else first.tensor
        return self.tail.forward_batch(z, first.split_size, first.batch_size, [d.image_size for d in group],
                                       [d.original_size for d in group])

    def _checked(self, msg: pb.Payload) -> _Decoded:
        """The payload checked against this model (PayloadMismatch naming the field) and decoded."""
        if msg.model and self.name and msg.model != self.name:
            raise PayloadMismatch(f"payload is for model {msg.model!r}, this is {self.name!r}")
        original = _hw(msg.original_size)
        if not (0 < original[0] <= MAX_SIDE and 0 < original[1] <= MAX_SIDE):
            raise PayloadMismatch(f"original_size {list(original)} is outside 1..{MAX_SIDE}")
        image_size = self.limits.image_size(original)  # not sent: the transform's, from original_size
        if min(image_size) < 1:
            raise PayloadMismatch(f"original_size {list(original)} resizes to {list(image_size)}: nothing left to run on")
        enc = from_message(msg.tensor)
        if enc.codec == "jpeg":
            if msg.split_point:
                raise PayloadMismatch(f"a jpeg payload is a whole image; it must not name split point {msg.split_point!r}")
            image = self._decode_tensor(self._jpeg, enc)
            if tuple(image.shape[-2:]) != image_size:
                raise PayloadMismatch(f"jpeg image is {image.shape[-2]}x{image.shape[-1]} px; the model resizes "
                                      f"original_size {list(original)} to {image_size[0]}x{image_size[1]}")
            return _Decoded(image, True, (0, 0), image_size, image_size, original)
        if msg.split_point != self.at:
            raise PayloadMismatch(f"payload was cut at {msg.split_point or '(none)'!r}, this model splits at {self.at!r}")
        if enc.codec != self.codec.name:
            raise PayloadMismatch(f"payload codec {enc.codec!r}, this model expects {self.codec.name!r}")
        batch = self.limits.batch_size(image_size)
        split_size = self._expected_split_size(batch)
        if _hw(msg.split_size) != split_size:
            raise PayloadMismatch(f"split_size {list(_hw(msg.split_size))} does not match original_size "
                                  f"{list(original)} (padded batch {list(batch)}): expected {list(split_size)}")
        expected = (1, self.wire_channels, *self.limits.wire_size(split_size))
        if tuple(enc.shape) != expected:
            raise PayloadMismatch(f"tensor shape {list(enc.shape)}, model {self.name or self.at!r} expects {list(expected)}")
        return _Decoded(self._decode_tensor(self.codec, enc), False, split_size, batch, image_size, original)

    def __call__(self, images: list[Tensor]) -> list[Outputs]:
        return [self.decode(p) for p in self.encode(images)]

    def empty_outputs(self) -> Outputs:
        """The result of a filtered frame: nothing detected."""
        if self.family == "detector":
            return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
        return {"labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _decode_tensor(codec: TensorCodec, enc: EncodedTensor) -> Tensor:
        try:
            return codec.decode(enc)
        except CodecError as exc:
            raise PayloadMismatch(str(exc)) from None

    def _probe_channels(self, stages: list[Stage]) -> int:
        with torch.inference_mode():
            x = _Chain(stages)(torch.zeros(1, 3, 64, 64))
        return int(x.shape[1])

    def _expected_split_size(self, batch: Size) -> Size:
        """Spatial size at the split point for a padded batch size, measured once per size.

        Measuring (on zeros) rather than computing from strides is what keeps this right for every
        backbone's padding and ceil-mode pooling. The cache is this model's own and keeps the
        `_SPLIT_SIZES` most recent sizes: a client sending many sizes cannot grow it, and a
        model no longer used is not kept alive by it.
        """
        with self._split_sizes_lock:
            size = self._split_sizes.get(batch)
            if size is not None:
                self._split_sizes.move_to_end(batch)
                return size
        with torch.inference_mode():
            x = self._size_chain(torch.zeros(1, 3, *batch))
        size = (int(x.shape[-2]), int(x.shape[-1]))
        with self._split_sizes_lock:
            self._split_sizes[batch] = size
            if len(self._split_sizes) > _SPLIT_SIZES:
                self._split_sizes.popitem(last=False)
        return size

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "split_point": self.at, "codec": self.codec.name,
                "bottleneck_channels": self.bottleneck.channels if self.bottleneck else 0,
                "split_channels": self.split_channels, "bottleneck_digest": self.bottleneck_digest()}

    def bottleneck_digest(self) -> str:
        """sha256 (16 hex digits) of the bottleneck's state (weights, and an entropy prior's tables); "" without one.

        Why: a device's split payload decodes only under the same bottleneck (its decoder, its tables), and
        two checkpoints of one recipe have the same codec and shapes. The edge reports it in `Describe`, a
        bundle's manifest carries it, and the device refuses to split against another (docs/lean-client.md)."""
        if self.bottleneck is None:
            return ""
        digest = hashlib.sha256()
        for name, value in sorted(self.bottleneck.state_dict().items()):
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def _caller_level() -> int:
    """The `stacklevel` of the first frame outside this module: a warning names the user's line."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


def _split_index(stages: list[Stage], at: str, model_name: str) -> int:
    """The index of stage `at`, if the model can be cut there (else ValueError saying why)."""
    names = [s.name for s in stages]
    if at not in names:
        raise ValueError(f"split point {at!r} is not a stage of {model_name}; valid split points: {', '.join(names)}")
    k = names.index(at)
    early = [s.name for s in stages[:k] if s.tap is not None]
    if early:
        raise ValueError(f"cannot split at {at!r}: the tail also needs the output of {early[0]!r}, "
                         "which comes before it; split at or before that stage")
    if stages[k].tap_fn is not None:
        raise ValueError(f"cannot split at {at!r}: its tapped output is transformed; split one stage earlier")
    return k


def split(model: nn.Module, at: str, bottleneck: Bottleneck | int | None = None, **opts: Any) -> SplitModel:
    """Cut `model` at the dotted module path `at`.

    `bottleneck` is None (send the split point's tensor as is), a channel count (a fresh,
    untrained `Bottleneck` to that many channels: it warns, since its outputs mean nothing until
    trained) or a `Bottleneck`. Options: `codec` ("float32", "float16", "uint8"), `name` (the
    recipe name stamped on payloads), `own_head` (the head is a copy of the original's layers,
    so it can be trained), and for classifiers `resize_size`, `crop_size`, `topk`. Any other
    option raises TypeError, for every family: a misspelled `codec` must not send float32.
    A trained split comes by recipe name from `split.recipes.build`.
    """
    return SplitModel(model, at, bottleneck, **opts)

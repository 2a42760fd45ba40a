"""Validation at the door: a frame is checked against its model's own limits before it is queued.

Every number a client sends is checked before anything is allocated or computed from it
(DESIGN.md §3, "Edge service"). The checks are cheap and run on the event loop:

* ``original_size`` is bounded; the sizes after the model's resize and padding are not sent but
  computed from it (`split.limits.ModelLimits`, the transform's arithmetic), so the head never
  runs on a size a client made up;
* the tensor's split point, codec, shape and byte length match the model exactly (an
  entropy-coded latent's length is variable: at most ``EntropyCodec.max_bytes`` of its shape), and
  its quantization parameters are finite (the 8-bit scale positive);
* a JPEG's dimensions are read from its frame header (SOF) and must equal the resized image's
  before OpenCV decodes it: a few hundred bytes cannot make the decoder allocate gigabytes.

What stays for the compute worker is the one check that needs the model: ``split_size`` against
the size measured at the split point for the padded batch, which is one of the few sizes the
transform can produce. A check that fails raises :class:`split.PayloadMismatch` naming the field
(``INVALID_ARGUMENT`` for that frame only).
"""

from __future__ import annotations

import math

from bottlenecks import EntropyCodec
from protos import splitedge_pb2 as pb
from split import PayloadMismatch
from split.api import MAX_SIDE
from split.limits import ModelLimits, Size

__all__ = ["ModelLimits", "check_payload", "jpeg_size", "frame_id_of"]

_ITEMSIZE = {"float32": 4, "float16": 2, "uint8": 1}
# SOF markers: 0xC0..0xCF but DHT (C4), JPG (C8) and DAC (CC); standalone markers carry no length.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])
_FLOAT32_MAX = 3.4028234663852886e38


# Bounds of the two pure-Python walks over a client's bytes, which run on the event loop.
JPEG_MAX_MARKERS = 1024
FRAME_ID_MAX_FIELDS = 16

def _hw(size: pb.Size) -> Size:
    return int(size.height), int(size.width)


def _check_shape(t: pb.Tensor, want: tuple[int, ...]) -> None:
    if len(t.shape) != len(want) or tuple(t.shape) != want:
        shown = list(t.shape[:8]) + (["..."] if len(t.shape) > 8 else [])
        raise PayloadMismatch(f"tensor shape {shown}, this model expects {list(want)}")


def _check_quantization(t: pb.Tensor) -> None:
    for name in ("scale", "zero_point"):
        value = getattr(t, name)
        if not math.isfinite(value):
            raise PayloadMismatch(f"tensor {name} must be finite, got {value}")
    if t.codec != "uint8":
        return
    if t.scale <= 0:
        raise PayloadMismatch(f"uint8 tensor scale must be positive, got {t.scale}")
    if (255 + abs(t.zero_point)) * t.scale >= _FLOAT32_MAX or abs(t.zero_point) >= _FLOAT32_MAX:
        raise PayloadMismatch(f"uint8 tensor zero_point {t.zero_point} with scale {t.scale} decodes past float32's range")


def check_payload(msg: pb.Payload, limits: ModelLimits) -> None:
    """Raise :class:`PayloadMismatch` (naming the field) unless ``msg`` fits the model exactly."""
    original = _hw(msg.original_size)
    if not (0 < original[0] <= MAX_SIDE and 0 < original[1] <= MAX_SIDE):
        raise PayloadMismatch(f"original_size {list(original)} is outside 1..{MAX_SIDE}")
    image = limits.image_size(original)
    if min(image) < 1:
        raise PayloadMismatch(f"original_size {list(original)} resizes to {list(image)}: nothing left to run on")
    t = msg.tensor
    _check_quantization(t)
    if t.codec == "jpeg":
        _check_offload(msg, image)
    else:
        _check_split(msg, image, limits)


def _check_offload(msg: pb.Payload, image: Size) -> None:
    t = msg.tensor
    if msg.split_point:
        raise PayloadMismatch(f"a jpeg payload is a whole image; it must not name split point {msg.split_point!r}")
    _check_shape(t, (3, *image))
    header = jpeg_size(t.data)
    if header != image:
        raise PayloadMismatch(f"jpeg header says {header[0]}x{header[1]} px; the model resizes original_size "
                              f"{list(_hw(msg.original_size))} to {image[0]}x{image[1]}")


def _check_split(msg: pb.Payload, image: Size, limits: ModelLimits) -> None:
    t = msg.tensor
    if msg.split_point != limits.split_point:
        raise PayloadMismatch(f"payload was cut at {msg.split_point or '(none)'!r}, "
                              f"this model splits at {limits.split_point!r}")
    if t.codec != limits.codec:
        raise PayloadMismatch(f"payload codec {t.codec!r}, this model expects {limits.codec!r}")
    batch = limits.batch_size(image)
    split_size = _hw(msg.split_size)
    if not (0 < split_size[0] <= batch[0] and 0 < split_size[1] <= batch[1]):
        raise PayloadMismatch(f"split_size {list(split_size)} is outside 1..{list(batch)}, the padded batch of "
                              f"original_size {list(_hw(msg.original_size))}")
    _check_shape(t, (1, limits.wire_channels, *limits.wire_size(split_size)))
    if t.codec not in _ITEMSIZE:  # an entropy-coded latent: variable length, bounded before any decoding
        most = EntropyCodec.max_bytes(tuple(t.shape))
        if not 0 < len(t.data) <= most:
            raise PayloadMismatch(f"{t.codec}: tensor shape {list(t.shape)} takes 1..{most} bytes, got {len(t.data)}")
        return
    need = math.prod(t.shape) * _ITEMSIZE[t.codec]
    if len(t.data) != need:
        raise PayloadMismatch(f"{t.codec}: tensor shape {list(t.shape)} needs {need} bytes, got {len(t.data)}")


def jpeg_size(data: bytes) -> Size:
    """(height, width) from a JPEG's frame header, read without decoding; PayloadMismatch if none.

    Walks the marker segments from SOI to the first SOF by their lengths, so every step reads
    bytes that are there and the walk ends at the end of the data; at most
    :data:`JPEG_MAX_MARKERS` steps (fill bytes count), since it runs on the event loop and a
    hostile 16 MiB of fill bytes or tiny segments would otherwise hold it for a second (an
    encoder writes its frame header within the first few segments).
    """
    if data[:2] != b"\xff\xd8":
        raise PayloadMismatch(f"jpeg: {len(data)} bytes are not a decodable image: not a JPEG (no start-of-image marker)")
    i, n, steps = 2, len(data), 0
    while i + 4 <= n and steps < JPEG_MAX_MARKERS:  # bounded: this runs on the event loop
        steps += 1
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data, before any frame header
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF:
            if length < 8 or i + 9 > n:
                break
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            if height == 0 or width == 0:
                raise PayloadMismatch(f"jpeg: frame header says {height}x{width} px")
            return height, width
        if length < 2:
            break
        i += 2 + length
    raise PayloadMismatch(f"jpeg: {len(data)} bytes are not a decodable image: no readable JPEG frame header (SOF)")


def frame_id_of(raw: bytes) -> int:
    """The ``frame_id`` of a serialized Frame that does not parse, as far as its fields can be read (else 0).

    Reads top-level fields (varint tags; varint, 64-bit, length-delimited and 32-bit values) until
    the bytes stop making sense, at most :data:`FRAME_ID_MAX_FIELDS` of them (it runs on the event
    loop: a hostile 16 MiB of tiny fields would otherwise hold it for seconds; protobuf writes
    ``frame_id``, field 1, first); the last ``frame_id`` seen wins, as protobuf's own parser would.
    """
    i, n, found, fields = 0, len(raw), 0, 0
    while i < n and fields < FRAME_ID_MAX_FIELDS:
        fields += 1
        tag, i = _varint(raw, i)
        if tag is None:
            break
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(raw, i)
            if value is None:
                break
            if field == 1:
                found = value & (2**64 - 1)
        elif wire == 1:
            i += 8
        elif wire == 2:
            length, i = _varint(raw, i)
            if length is None:
                break
            i += length
        elif wire == 5:
            i += 4
        else:
            break
    return found


def _varint(raw: bytes, i: int) -> tuple[int | None, int]:
    value = 0
    for shift in range(0, 70, 7):
        if i >= len(raw):
            return None, i
        b = raw[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
    return None, i

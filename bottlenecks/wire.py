"""What a device needs to put tensors on the wire, without torch: numpy, and constriction's coder.

A lean device (`pip install splitedge[client]`, `splitedge run --runtime onnx`) runs the head
in onnxruntime and then has a numpy array to send; the torch codecs (`bottlenecks.codecs`,
`bottlenecks.entropic`) call the same functions here on the tensor's numpy view, so the two
runtimes write the same bytes by construction, not by a test's luck. Nothing in this module
imports torch (tests/test_imports.py checks it).

Why constriction and not compressai's own rANS (`compressai.ans`): that coder comes only with
the compressai package, which imports torch; a device without torch could not write bytes the
edge reads. constriction is a compiled, numpy-only coder (ANS), and it codes with the very
tables compressai computes (`EntropyBottleneck.update()` / `GaussianConditional.update_scale_table`):
the quantized CDF of every table, its length and its offset, which the checkpoint and the ONNX
bundle's manifest carry. So compressai still owns the entropy *model* (training, likelihoods,
tables); this module owns the *bytes*.

The stream (`TableCoder.encode`): every value v of table t is coded as index v - offset[t] under
table t's probabilities when it lies inside the table, else as the table's last symbol (the
overflow symbol compressai reserves) and, after all values, how far it lies beyond the table's
edge, as compressai's own coder does (below: 2d - 1, above: 2d, for a distance d >= 0 past the
edge), in an Elias-gamma code of uniform symbols: the bit length n of that number + 1, then its
n - 1 low bits (in two parts of at most 16). A fixed 32-bit word per overflow cost the λ 0.3
checkpoint 5 % more bytes (85 overflows a frame); this costs ~10 bits for the usual few steps.
First of all (decoded first), the number of values modulo 2^16, as one uniform symbol: a check
that the stream was coded for this latent's size, and what makes every stream at least one word. Values are grouped by
table (a factorized prior's tables are the channels, contiguous in C order), so each group is
one call into the coder with one model built once at load. The bytes are the ANS words,
little-endian; `decode` refuses a stream that does not end exactly where the latent does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["CodecError", "EncodedTensor", "TableCoder", "UINT8_LEVELS", "channel_indexes", "uint8_decode", "uint8_encode"]

UINT8_LEVELS = 255
_PART_BITS = 16  # an overflow's low bits go as uniform symbols of at most this many bits each
_MAX_LENGTH = 33  # bit lengths 1..33: distances past a table's edge below 2^32


class CodecError(ValueError):
    """Bytes that cannot be decoded as claimed (wrong length, wrong codec, corrupt image)."""


@dataclass(frozen=True)
class EncodedTensor:
    """A tensor as bytes plus what is needed to read them back.

    `zero_point` is a float: `x = (q - zero_point) * scale`. Keeping it unrounded is what
    bounds the 8-bit error by half a quantization step over the whole [min, max] range.
    """

    codec: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes
    scale: float = 1.0
    zero_point: float = 0.0
    meta: dict[str, float] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return len(self.data)


def uint8_encode(x: np.ndarray, name: str = "uint8") -> EncodedTensor:
    """Per-tensor min/max affine quantization to 8 bits (hnd-ghnd's), of a float32 array.

    The arithmetic is float32 on the values and float64 on the two parameters, the same in
    every runtime that calls this; round half to even."""
    t = np.ascontiguousarray(x, dtype=np.float32)
    lo, hi = (float(t.min()), float(t.max())) if t.size else (0.0, 0.0)
    scale = (hi - lo) / UINT8_LEVELS if hi > lo else 1.0
    zero_point = -lo / scale
    q = np.clip(np.rint(t / np.float32(scale) + np.float32(zero_point)), 0, UINT8_LEVELS).astype(np.uint8)
    return EncodedTensor(name, "float32", tuple(int(d) for d in t.shape), q.tobytes(), scale, zero_point)


def uint8_decode(enc: EncodedTensor) -> np.ndarray:
    """The float32 values of `uint8_encode`'s bytes (CodecError for a wrong length or scale)."""
    expected = int(np.prod(enc.shape, dtype=np.int64))
    if len(enc.data) != expected:
        raise CodecError(f"{enc.codec}: shape {list(enc.shape)} needs {expected} bytes, got {len(enc.data)}")
    if not np.isfinite(enc.scale) or enc.scale <= 0:
        raise CodecError(f"{enc.codec}: scale must be a positive finite number, got {enc.scale}")
    q = np.frombuffer(enc.data, dtype=np.uint8).reshape(enc.shape)
    return np.asarray((q.astype(np.float32) - np.float32(enc.zero_point)) * np.float32(enc.scale))  # 0-d stays an array


def channel_indexes(shape: tuple[int, ...]) -> np.ndarray:
    """A factorized prior's table of every value of a latent [1, C, h, w] (or [C, h, w]): its channel."""
    c, h, w = (int(d) for d in shape[-3:])
    return np.broadcast_to(np.arange(c, dtype=np.int64).reshape(c, 1, 1), (c, h, w))


class TableCoder:
    """compressai's quantized CDF tables, coded with constriction's ANS; models built once, here."""

    def __init__(self, quantized_cdf: np.ndarray, cdf_length: np.ndarray, offset: np.ndarray) -> None:
        import constriction

        cdf = np.asarray(quantized_cdf, dtype=np.int64)
        self.cdf_length = np.asarray(cdf_length, dtype=np.int64).reshape(-1)
        self.offset = np.asarray(offset, dtype=np.int64).reshape(-1)
        if cdf.ndim != 2 or not len(cdf) == len(self.cdf_length) == len(self.offset) or len(cdf) == 0:
            raise CodecError(f"entropy tables: {list(cdf.shape)} CDFs, {len(self.cdf_length)} lengths and "
                             f"{len(self.offset)} offsets do not describe one set of tables")
        if (self.cdf_length < 3).any() or (self.cdf_length > cdf.shape[1]).any():
            raise CodecError("entropy tables: a CDF length lies outside its table (the tables are not prepared)")
        model = constriction.stream.model
        # Symbols 0 .. length-2 of table t; the last is the overflow symbol.
        self._models = [model.Categorical(np.diff(row[:n]).astype(np.float64), perfect=False)
                        for row, n in zip(cdf, self.cdf_length)]
        self._count = model.Uniform(1 << _PART_BITS)  # the number of values, modulo 2^16
        self._lengths = model.Uniform(_MAX_LENGTH)  # an overflow's bit length - 1
        self._bits = model.Uniform()  # its low bits, each symbol's own range (2^bits)
        self._coder = constriction.stream.stack.AnsCoder

    @property
    def tables(self) -> int:
        return len(self._models)

    def encode(self, symbols: np.ndarray, indexes: np.ndarray) -> bytes:
        """The bytes of integer `symbols` (any shape), each under the table its `indexes` names."""
        values, tables = self._flat(symbols, indexes)
        top = self.cdf_length[tables] - 2  # the overflow symbol's index in each value's table
        index = values - self.offset[tables]
        over = (index < 0) | (index >= top)
        index = np.where(over, top, index).astype(np.int32)
        encoder = self._coder()
        beyond = values - self.offset[tables]  # the index, from which the distance past the edge
        distance = np.where(beyond < 0, -2 * beyond - 1, 2 * (beyond - top))[over]
        if distance.size:
            if distance.max() >= (1 << (_MAX_LENGTH - 1)) - 1:
                raise CodecError(f"entropy: a value {int(distance.max())} steps past its table does not fit the "
                                 f"{_MAX_LENGTH - 1}-bit overflow code")
            v = distance + 1
            n = np.frexp(v.astype(np.float64))[1].astype(np.int64)  # bit lengths, exact below 2^53
            rest = v - (np.int64(1) << (n - 1))
            lo_bits, hi_bits = _parts(n)
            # Pushed first, decoded last, in reverse of the decoding order: high parts, low parts, lengths.
            for bits, part in ((hi_bits, rest >> lo_bits), (lo_bits, rest & ((np.int64(1) << lo_bits) - 1))):
                keep = bits > 0
                if keep.any():
                    encoder.encode_reverse(part[keep].astype(np.int32), self._bits,
                                           (np.int64(1) << bits[keep]).astype(np.int32))
            encoder.encode_reverse((n - 1).astype(np.int32), self._lengths)
        for t in np.unique(tables)[::-1]:
            encoder.encode_reverse(index[tables == t], self._models[int(t)])
        encoder.encode_reverse(np.array([tables.size % (1 << _PART_BITS)], np.int32), self._count)
        return encoder.get_compressed().astype("<u4").tobytes()

    def decode(self, data: bytes, indexes: np.ndarray) -> np.ndarray:
        """The integer symbols `encode` coded, shaped as `indexes` (CodecError when the bytes do not
        hold exactly that many values)."""
        tables = self._tables(indexes)
        if not data or len(data) % 4:
            raise CodecError(f"entropy: {len(data)} bytes are not whole 32-bit coder words (at least one)")
        index = np.empty(tables.size, dtype=np.int64)
        try:
            decoder = self._coder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
            count = int(decoder.decode(self._count, 1)[0])
            if count != tables.size % (1 << _PART_BITS):
                raise CodecError(f"entropy: the bytes were coded for another number of values than {tables.size}")
            for t in np.unique(tables):
                where = tables == t
                index[where] = decoder.decode(self._models[int(t)], int(where.sum()))
            top = self.cdf_length[tables] - 2
            over = index == top
            values = index + self.offset[tables]
            if over.any():
                n = decoder.decode(self._lengths, int(over.sum())).astype(np.int64) + 1
                lo_bits, hi_bits = _parts(n)
                rest = np.zeros(n.size, np.int64)
                for bits, shift in ((lo_bits, 0), (hi_bits, lo_bits)):
                    keep = bits > 0
                    if keep.any():
                        got = decoder.decode(self._bits, (np.int64(1) << bits[keep]).astype(np.int32)).astype(np.int64)
                        rest[keep] |= got << (shift[keep] if isinstance(shift, np.ndarray) else shift)
                distance = (np.int64(1) << (n - 1)) + rest - 1
                edge = np.where(distance % 2 == 1, -(distance + 1) // 2, top[over] + distance // 2)
                values[over] = edge + self.offset[tables][over]
        except CodecError:
            raise
        except Exception as exc:  # constriction raises its own kinds on a stream it cannot read
            raise CodecError(f"entropy: the bytes do not decode ({exc})") from None
        except BaseException as exc:  # a Rust panic reaches Python as pyo3's PanicException, not an Exception
            if type(exc).__name__ != "PanicException":
                raise
            raise CodecError(f"entropy: the bytes do not decode (the coder refused them: {exc})") from None
        if not decoder.is_empty():
            raise CodecError(f"entropy: {len(data)} bytes do not end where a latent of {tables.size} values does: "
                             "corrupt, cut, or coded for another shape or other tables")
        return values.astype(np.int32).reshape(np.shape(indexes))

    def _tables(self, indexes: np.ndarray) -> np.ndarray:
        tables = _integers(indexes, "table indexes")
        if tables.size and (tables.min() < 0 or tables.max() >= self.tables):
            raise CodecError(f"entropy: table index outside 0..{self.tables - 1}")
        return tables

    def _flat(self, symbols: np.ndarray, indexes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = _integers(symbols, "symbols")
        tables = self._tables(indexes)
        if values.shape != tables.shape:
            raise CodecError(f"entropy: {values.size} symbols but {tables.size} table indexes")
        return values, tables


def _integers(a: np.ndarray, what: str) -> np.ndarray:
    """`a` flattened as int64; CodecError for anything but integers (a float would be cast silently)."""
    a = np.asarray(a)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise CodecError(f"entropy: {what} must be integers, got {a.dtype}")
    return a.reshape(-1).astype(np.int64)


def _parts(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The low and high part sizes, in bits, of the n - 1 bits an overflow of bit length n sends."""
    lo = np.minimum(n - 1, _PART_BITS)
    return lo, n - 1 - lo

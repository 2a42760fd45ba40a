"""`bottlenecks.wire`: the torch-free coder and 8-bit quantization both runtimes use.

- TableCoder round-trips any integers, far outside the tables too (the overflow path), under
  tables shaped as compressai makes them; a stream of another length, or garbage, is refused
  with CodecError or decodes to values of the right shape, never crashes.
- uint8_encode gives the codes torch's ops give, and is what Uint8Codec sends.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bottlenecks import Uint8Codec
from bottlenecks.wire import CodecError, TableCoder, uint8_encode


def _tables(seed: int, n: int = 3, precision: int = 16) -> TableCoder:
    """n tables as compressai lays them out: a quantized CDF from 0 to 2^precision over the table's
    symbols plus the overflow symbol, its length (symbols + 2) and the offset of symbol 0."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 12, size=n)
    cdf = np.zeros((n, int(lengths.max()) + 2), np.int64)
    for i, k in enumerate(lengths):
        pmf = rng.random(k + 1) + 1e-3
        counts = np.maximum(1, np.floor(pmf / pmf.sum() * (1 << precision))).astype(np.int64)
        counts[np.argmax(counts)] += (1 << precision) - counts.sum()
        cdf[i, 1: k + 2] = np.cumsum(counts)
    return TableCoder(cdf, lengths + 2, -(lengths // 2))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), values=st.lists(st.integers(-(2**20), 2**20), min_size=1, max_size=300),
       small=st.booleans())
def test_any_integers_round_trip(seed, values, small):
    coder = _tables(seed)
    symbols = np.asarray(values, np.int64)
    if small:  # mostly inside the tables, as real latents are
        symbols = symbols % 7 - 3
    indexes = np.arange(len(symbols)) % coder.tables
    data = coder.encode(symbols, indexes)
    assert len(data) % 4 == 0
    np.testing.assert_array_equal(coder.decode(data, indexes), symbols)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), garbage=st.binary(max_size=400), count=st.integers(1, 500))
def test_garbage_is_refused_or_decodes_to_the_shape_asked(seed, garbage, count):
    coder = _tables(seed)
    indexes = np.arange(count) % coder.tables
    try:
        out = coder.decode(garbage, indexes)
    except CodecError:
        return
    assert out.shape == indexes.shape


def test_a_stream_cut_or_padded_is_refused():
    coder = _tables(1)
    indexes = np.arange(200) % coder.tables
    data = coder.encode(np.arange(200) % 5 - 2, indexes)
    with pytest.raises(CodecError, match="whole 32-bit"):
        coder.decode(data[:-1], indexes)
    with pytest.raises(CodecError, match="do not decode"):  # the coder's words never end in a zero word
        coder.decode(data + bytes(8), indexes)
    with pytest.raises(CodecError, match="do not end where a latent of 200 values does"):
        coder.decode(b"\x01\x00\x00\x00" + data, indexes)
    with pytest.raises(CodecError, match="at least one"):
        coder.decode(b"", indexes)
    with pytest.raises(CodecError, match="must be integers"):
        coder.encode(np.arange(200) / 2, indexes)
    with pytest.raises(CodecError, match="table index"):
        coder.decode(data, indexes + coder.tables)


def test_a_value_too_large_for_the_overflow_word_is_refused():
    coder = _tables(2)
    with pytest.raises(CodecError, match="32-bit overflow code"):
        coder.encode(np.array([2**40]), np.array([0]))
    np.testing.assert_array_equal(coder.decode(coder.encode(np.array([2**30, -2**30]), np.array([0, 1])), np.array([0, 1])),
                                  [2**30, -2**30])  # far past the tables, still within the code


@pytest.mark.parametrize("seed", range(5))
def test_uint8_encode_is_torchs_arithmetic(seed):
    """The numpy quantization gives the codes torch's own ops give (what Uint8Codec computed before it
    called this function), so bytes made before and after, in either runtime, agree."""
    x = torch.randn(1, 6, 19, 23, generator=torch.Generator().manual_seed(seed)) * (seed + 1)
    lo, hi = float(x.min()), float(x.max())
    scale = (hi - lo) / 255
    torch_codes = torch.clamp(torch.round(x / scale + (-lo / scale)), 0, 255).to(torch.uint8).numpy().tobytes()
    ours = uint8_encode(x.numpy())
    assert (ours.data, ours.scale, ours.zero_point) == (torch_codes, scale, -lo / scale)
    assert Uint8Codec().encode(x) == ours

import numpy as np
import pytest
import torch

from bottlenecks import (CODEC_NAMES, CodecError, EncodedTensor, Float16Codec, Float32Codec, JpegCodec, Uint8Codec,
                         WebpCodec, get_codec)


@pytest.fixture
def features():
    return torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(0)) * 3 + 1


def test_float32_round_trip_is_exact(features):
    codec = Float32Codec()
    enc = codec.encode(features)
    assert enc.nbytes == features.numel() * 4
    assert torch.equal(codec.decode(enc), features)


def test_float16_round_trip_is_close(features):
    codec = Float16Codec()
    enc = codec.encode(features)
    assert enc.nbytes == features.numel() * 2
    assert torch.allclose(codec.decode(enc), features, rtol=1e-3, atol=1e-3)


def test_uint8_error_is_bounded_by_half_a_step(features):
    codec = Uint8Codec()
    enc = codec.encode(features)
    assert enc.nbytes == features.numel()
    step = (features.max() - features.min()).item() / 255
    assert enc.scale == pytest.approx(step)
    err = (codec.decode(enc) - features).abs().max().item()
    assert err <= step / 2 + 1e-6
    # the extremes of the range are representable
    dec = codec.decode(enc)
    assert dec.min().item() == pytest.approx(features.min().item(), abs=1e-5)
    assert dec.max().item() == pytest.approx(features.max().item(), abs=1e-5)


def test_uint8_constant_tensor():
    x = torch.full((1, 2, 3, 3), 4.5)
    codec = Uint8Codec()
    assert torch.allclose(codec.decode(codec.encode(x)), x)


def test_jpeg_round_trip_keeps_the_image():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=g), size=(96, 128), mode="bilinear")[0]
    for q, min_psnr in ((90, 32.0), (50, 27.0)):
        codec = JpegCodec(q)
        enc = codec.encode(smooth)
        dec = codec.decode(enc)
        assert dec.shape == smooth.shape
        mse = torch.mean((dec - smooth) ** 2).item()
        assert 10 * np.log10(1 / mse) > min_psnr
    assert len(JpegCodec(30).encode(smooth).data) < len(JpegCodec(95).encode(smooth).data)


def test_wrong_length_and_codec_are_rejected(features):
    enc = Uint8Codec().encode(features)
    short = EncodedTensor(enc.codec, enc.dtype, enc.shape, enc.data[:-1], enc.scale, enc.zero_point)
    with pytest.raises(CodecError, match="needs 4800 bytes, got 4799"):
        Uint8Codec().decode(short)
    with pytest.raises(CodecError, match="codec mismatch"):
        Float32Codec().decode(enc)
    with pytest.raises(CodecError, match="not a decodable image"):
        JpegCodec().decode(EncodedTensor("jpeg", "uint8", (3, 2, 2), b"not a jpeg"))


def test_get_codec_names_the_known_ones():
    assert isinstance(get_codec("jpeg", quality=75), JpegCodec)
    with pytest.raises(ValueError, match="known: float32, float16, uint8, jpeg"):
        get_codec("png")
    with pytest.raises(ValueError, match="1..100"):
        JpegCodec(0)


def test_webp_round_trip_keeps_the_image():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=g), size=(96, 128), mode="bilinear")[0]
    for q, min_psnr in ((90, 32.0), (50, 27.0)):
        codec = WebpCodec(q)
        enc = codec.encode(smooth)
        assert enc.codec == "webp" and enc.shape == (3, 96, 128) and enc.data[8:12] == b"WEBP"
        dec = codec.decode(enc)
        assert dec.shape == smooth.shape and dec.dtype == torch.float32
        mse = torch.mean((dec - smooth) ** 2).item()
        assert 10 * np.log10(1 / mse) > min_psnr
    assert len(WebpCodec(30).encode(smooth).data) < len(WebpCodec(95).encode(smooth).data)


def test_webp_rejects_what_it_cannot_read():
    smooth = torch.full((3, 20, 24), 0.5)
    enc = WebpCodec(75).encode(smooth)
    with pytest.raises(CodecError, match="not a decodable image"):
        WebpCodec().decode(EncodedTensor("webp", "uint8", (3, 2, 2), b"not a webp"))
    with pytest.raises(CodecError, match=r"payload says shape \[3, 10, 24\]"):
        WebpCodec().decode(EncodedTensor("webp", "uint8", (3, 10, 24), enc.data))
    with pytest.raises(CodecError, match="codec mismatch"):
        JpegCodec().decode(enc)
    with pytest.raises(ValueError, match="WebP quality must be in 1..100"):
        WebpCodec(101)  # OpenCV would read it as lossless
    assert "webp" not in CODEC_NAMES  # not a feature codec a SplitModel accepts

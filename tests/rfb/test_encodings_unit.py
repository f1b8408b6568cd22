"""Encoder building blocks and invariants: settings, Tight's compact length and JPEG mapping, rectangle
coverage, and Tight's choice of compression per content (its bytes read back by hand from the spec)."""

from __future__ import annotations

import itertools
import threading
import zlib

import numpy as np
import pytest
import simplejpeg
from hypothesis import given, settings
from hypothesis import strategies as st

from vkmsremote.frame import Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.convert import BGR233
from vkmsremote.rfb.encodings import SUPPORTED, EncoderSettings, make_encoder, samples, tight
from vkmsremote.rfb.encodings.tight import MAX_WIDTH, compact_length, jpeg_parameters
from vkmsremote.rfb.encodings.zrle import pack_indices
from vkmsremote.rfb.pixelformat import NATIVE, PixelFormat

RGB565 = PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0)


def read_compact_length(data: bytes) -> tuple[int, int]:
    """(value, bytes used), decoded as rfbproto describes (7 + 7 + 8 bits)."""
    value = data[0] & 0x7F
    if data[0] & 0x80:
        value |= (data[1] & 0x7F) << 7
        if data[1] & 0x80:
            return value | data[2] << 14, 3
        return value, 2
    return value, 1


@pytest.mark.parametrize(("n", "wire"), [
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (10000, b"\x90\x4e"),  # the spec's example
    (16383, b"\xff\x7f"), (16384, b"\x80\x80\x01"), (4194303, b"\xff\xff\xff"),
])
def test_compact_length(n: int, wire: bytes) -> None:
    assert compact_length(n) == wire
    assert read_compact_length(wire) == (n, len(wire))


def test_compact_length_limit() -> None:
    with pytest.raises(ValueError, match="out of range"):
        compact_length(4194304)


def test_settings_from_encodings() -> None:
    got = EncoderSettings.from_encodings([Encoding.TIGHT, -26, -250, -30, -420, -766, Encoding.ZRLE])
    assert got == EncoderSettings(quality_level=6, compress_level=6, fine_quality=92, subsampling=2)
    assert EncoderSettings.from_encodings([Encoding.RAW]) == EncoderSettings()


def test_jpeg_parameters_follow_tigervnc() -> None:
    assert jpeg_parameters(EncoderSettings(), NATIVE) is None  # no quality asked: lossless only
    assert jpeg_parameters(EncoderSettings(quality_level=0), NATIVE) == (15, "420")
    assert jpeg_parameters(EncoderSettings(quality_level=4), NATIVE) == (62, "422")
    assert jpeg_parameters(EncoderSettings(quality_level=9), RGB565) == (100, "444")
    assert jpeg_parameters(EncoderSettings(quality_level=5, fine_quality=90), NATIVE) == (90, "422")
    assert jpeg_parameters(EncoderSettings(fine_quality=70, subsampling=3), NATIVE) == (70, "Gray")
    assert jpeg_parameters(EncoderSettings(quality_level=9), BGR233) is None  # JPEG needs 16 or 32 bpp


def test_registry() -> None:
    assert {Encoding.RAW, Encoding.RRE, Encoding.HEXTILE, Encoding.ZLIB, Encoding.TIGHT, Encoding.ZRLE} == SUPPORTED
    for encoding in SUPPORTED:
        encoder = make_encoder(encoding, EncoderSettings())
        assert encoder is not None
        assert encoder.settings == EncoderSettings()
    assert make_encoder(Encoding.COPY_RECT, EncoderSettings()) is None
    assert make_encoder(12345, EncoderSettings()) is None
    a, b = make_encoder(Encoding.ZRLE, EncoderSettings()), make_encoder(Encoding.ZRLE, EncoderSettings())
    assert a is not b  # a connection's zlib stream is its own


def test_pack_indices_pads_each_row() -> None:
    rows = np.array([[1, 0, 1], [0, 1, 1]], dtype=np.uint8)
    assert pack_indices(rows, 1).tobytes() == bytes((0b10100000, 0b01100000))
    assert pack_indices(np.array([[3, 2, 1]], dtype=np.uint8), 2).tobytes() == bytes((0b11100100,))
    assert pack_indices(np.array([[15, 1, 7]], dtype=np.uint8), 4).tobytes() == bytes((0xF1, 0x70))


@settings(max_examples=40, deadline=None)
@given(encoding=st.sampled_from(sorted(SUPPORTED)), x=st.integers(0, 40), y=st.integers(0, 30),
       w=st.integers(1, 90), h=st.integers(1, 70), quality=st.sampled_from([None, 3]))
def test_output_rectangles_tile_the_request(encoding: int, x: int, y: int, w: int, h: int,
                                            quality: int | None) -> None:
    frame = samples.text_like(100, 130)
    frame[20:60, 30:100] = samples.photo_like(40, 70)
    rect = Rect(x, y, w, h).clip(130, 100)
    assert rect is not None
    encoder = make_encoder(encoding, EncoderSettings(quality_level=quality))
    assert encoder is not None
    out = encoder.encode(frame, rect, NATIVE)
    covered = np.zeros((100, 130), dtype=np.int64)
    for r, enc, payload in out:
        assert enc in (encoding, Encoding.RAW)
        assert payload
        covered[r.y:r.y + r.h, r.x:r.x + r.w] += 1
        assert r.x >= rect.x and r.y >= rect.y and r.x + r.w <= rect.x + rect.w and r.y + r.h <= rect.y + rect.h
    assert covered.sum() == rect.area and covered.max() == 1


def _tight_one(frame: np.ndarray, pf: PixelFormat = NATIVE, **kw: int) -> bytes:
    encoder = make_encoder(Encoding.TIGHT, EncoderSettings(**kw))
    assert encoder is not None
    out = encoder.encode(frame, Rect(0, 0, frame.shape[1], frame.shape[0]), pf)
    assert len(out) == 1
    return out[0][2]


def test_tight_fill() -> None:
    payload = _tight_one(samples.solid(40, 50, (1, 2, 3, 0)))
    assert payload == bytes((0x80, 3, 2, 1))  # FillCompression, TPIXEL R, G, B
    assert _tight_one(samples.solid(4, 5, (255, 255, 255, 0)), RGB565) == bytes((0x80, 0xFF, 0xFF))


def test_tight_two_colours_use_the_mono_stream() -> None:
    frame = samples.solid(16, 20, (255, 255, 255, 0))
    frame[3:9, 2:15] = (0, 0, 0, 0)
    payload = _tight_one(frame)
    assert payload[:3] == bytes((0x50, 1, 1))  # stream 1, filter id follows; PaletteFilter; 2 colours
    assert payload[3:9] == bytes((0, 0, 0, 255, 255, 255))  # the palette, sorted by pixel value
    length, used = read_compact_length(payload[9:])
    bits = zlib.decompressobj().decompress(payload[9 + used:9 + used + length])
    rows = np.unpackbits(np.frombuffer(bits, dtype=np.uint8).reshape(16, 3), axis=1)[:, :20]
    assert np.array_equal(rows, (frame[..., 0] == 255).astype(np.uint8))


def test_tight_small_data_is_not_compressed() -> None:
    frame = samples.solid(2, 3, (255, 255, 255, 0))
    frame[0, 0] = (0, 0, 0, 0)
    payload = _tight_one(frame)
    # 2 rows of 1 byte: under 12 bytes, so sent as is with no length (rfbproto, BasicCompression)
    assert payload == bytes((0x50, 1, 1, 0, 0, 0, 255, 255, 255, 0b01100000, 0b11100000))


def test_tight_many_colours_lossless_uses_stream_0() -> None:
    frame = samples.noise(20, 30)
    payload = _tight_one(frame)
    assert payload[0] == 0x00  # BasicCompression, stream 0, CopyFilter
    length, used = read_compact_length(payload[1:])
    data = zlib.decompressobj().decompress(payload[1 + used:1 + used + length])
    assert data == frame[..., 2::-1].tobytes()  # TPIXELs R, G, B


@pytest.mark.parametrize(("quality", "floor_db"), [(1, 26.0), (5, 31.0), (8, 36.0)])
def test_tight_jpeg_psnr(quality: int, floor_db: float) -> None:
    frame = samples.photo_like(120, 200, t=3)
    payload = _tight_one(frame, quality_level=quality)
    assert payload[0] == 0x90
    length, used = read_compact_length(payload[1:])
    assert len(payload) == 1 + used + length
    decoded = simplejpeg.decode_jpeg(payload[1 + used:], colorspace="BGR")
    mse = np.mean((decoded.astype(np.float64) - frame[..., :3].astype(np.float64)) ** 2)
    assert 10 * np.log10(255.0 ** 2 / mse) >= floor_db


def test_tight_merges_photo_bands_into_one_jpeg_per_strip() -> None:
    frame = samples.photo_like(300, 1000)  # two strips of 500 columns, three 65536-pixel bands each
    encoder = make_encoder(Encoding.TIGHT, EncoderSettings(quality_level=6))
    assert encoder is not None
    out = encoder.encode(frame, Rect(0, 0, 1000, 300), NATIVE)
    assert [(r, p[0]) for r, _, p in out] == [(Rect(0, 0, 500, 300), 0x90), (Rect(500, 0, 500, 300), 0x90)]


def test_tight_keeps_ui_beside_a_video_lossless() -> None:
    frame = samples.text_like(400, 1200)
    frame[100:300, 400:800] = samples.photo_like(200, 400)
    encoder = make_encoder(Encoding.TIGHT, EncoderSettings(quality_level=6))
    assert encoder is not None
    out = encoder.encode(frame, Rect(0, 0, 1200, 400), NATIVE)
    jpeg_area = sum(r.area for r, _, p in out if p[0] == 0x90)
    assert 200 * 400 <= jpeg_area <= 2 * 200 * 400


def test_tight_strips_are_at_most_2048_wide() -> None:
    frame = samples.text_like(4, 4100)
    encoder = make_encoder(Encoding.TIGHT, EncoderSettings())
    assert encoder is not None
    out = encoder.encode(frame, Rect(0, 0, 4100, 4), NATIVE)
    assert max(r.w for r, _, _ in out) <= MAX_WIDTH
    xs = sorted({(r.x, r.w) for r, _, _ in out})
    assert xs[0][0] == 0 and all(a + w == b for (a, w), (b, _) in itertools.pairwise(xs))
    assert xs[-1][0] + xs[-1][1] == 4100


@pytest.mark.parametrize("encoding", [Encoding.RRE, Encoding.ZRLE, Encoding.TIGHT], ids=lambda e: e.name)
def test_x_byte_does_not_change_the_encoding(encoding: int) -> None:
    # sources need not zero the X byte of XRGB8888; encoders that analyse colours must ignore it
    frame = samples.text_like(40, 70)
    noisy = frame.copy()
    noisy[..., 3] = np.random.default_rng(1).integers(0, 256, size=noisy.shape[:2], dtype=np.uint8)
    a = make_encoder(encoding, EncoderSettings())
    b = make_encoder(encoding, EncoderSettings())
    assert a is not None and b is not None
    assert a.encode(frame, Rect(0, 0, 70, 40), NATIVE) == b.encode(noisy, Rect(0, 0, 70, 40), NATIVE)


def test_tight_parallel_jpeg_gives_the_same_rectangles_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = samples.text_like(720, 1920)
    frame[:, 480:] = samples.photo_like(720, 1440)  # UI in the first strip, video in the other three
    rect = Rect(0, 0, 1920, 720)
    threads: list[str] = []
    encode_jpeg = simplejpeg.encode_jpeg

    def recording(*args: object, **kwargs: object) -> bytes:
        threads.append(threading.current_thread().name)
        return encode_jpeg(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tight.simplejpeg, "encode_jpeg", recording)
    outputs = []
    for n in (1, 3):
        monkeypatch.setattr(tight, "JPEG_THREADS", n)
        threads.clear()
        encoder = make_encoder(Encoding.TIGHT, EncoderSettings(quality_level=8, compress_level=6))
        assert encoder is not None
        outputs.append(encoder.encode(frame, rect, NATIVE))
        assert any(name.startswith("vkmsremote-jpeg") for name in threads) == (n > 1)
    assert outputs[0] == outputs[1]
    assert sum(p[0] == 0x90 for _, _, p in outputs[0]) >= 3 and any(p[0] != 0x90 for _, _, p in outputs[0])

"""Format conversion to B, G, R, X, checked against pixels built by hand from the drm_fourcc.h layouts."""

from __future__ import annotations

import numpy as np
import pytest

from vkmsremote.capture.convert import check_readable, convert_to_xrgb
from vkmsremote.drm.fourcc import DrmFormat, fourcc
from vkmsremote.drm.framebuffer import FramebufferInfo
from vkmsremote.errors import UnsupportedFormatError

# Three reference colours as (R, G, B).
COLOURS = [(0xFF, 0x00, 0x00), (0x12, 0x34, 0x56), (0xFF, 0xFF, 0xFF)]
EXPECTED = np.array([[[b, g, r] for r, g, b in COLOURS]], np.uint8)  # (1, 3, 3) B, G, R


def _strided(packed: bytes, w: int, bpp: int, pitch: int, h: int = 2) -> np.ndarray:
    """h rows of ``packed`` (one row's pixels) in a buffer with ``pitch`` bytes per row, padding = 0xEE."""
    raw = np.full(h * pitch, 0xEE, np.uint8)
    for y in range(h):
        raw[y * pitch: y * pitch + len(packed)] = np.frombuffer(packed, np.uint8)
    return np.lib.stride_tricks.as_strided(raw, shape=(h, w, bpp), strides=(pitch, bpp, 1))


@pytest.mark.parametrize(("fmt", "pack"), [
    (DrmFormat.XRGB8888, lambda r, g, b: bytes([b, g, r, 0x77])),
    (DrmFormat.ARGB8888, lambda r, g, b: bytes([b, g, r, 0x80])),
    (DrmFormat.XBGR8888, lambda r, g, b: bytes([r, g, b, 0x77])),
    (DrmFormat.ABGR8888, lambda r, g, b: bytes([r, g, b, 0x80])),
    (DrmFormat.RGB888, lambda r, g, b: bytes([b, g, r])),  # [23:0] R:G:B little endian
    (DrmFormat.BGR888, lambda r, g, b: bytes([r, g, b])),
])
def test_8bit_formats(fmt: DrmFormat, pack: object) -> None:
    packed = b"".join(pack(*c) for c in COLOURS)  # type: ignore[operator]
    bpp = len(packed) // 3
    src = _strided(packed, 3, bpp, pitch=3 * bpp + 5)
    out = convert_to_xrgb(src, fmt)
    assert out.shape == (2, 3, 4)
    assert np.array_equal(out[..., :3], np.repeat(EXPECTED, 2, axis=0))
    if fmt in (DrmFormat.XRGB8888, DrmFormat.XBGR8888):
        assert (out[..., 3] == 0x77).all()
    elif fmt in (DrmFormat.ARGB8888, DrmFormat.ABGR8888):
        assert (out[..., 3] == 0x80).all()
    else:
        assert (out[..., 3] == 0).all()


def test_rgb565_expands_with_bit_replication() -> None:
    def px(r5: int, g6: int, b5: int) -> bytes:
        return ((r5 << 11) | (g6 << 5) | b5).to_bytes(2, "little")

    packed = px(31, 0, 0) + px(0, 63, 0) + px(0, 0, 31) + px(0b10000, 0b100000, 0b00001)
    out = convert_to_xrgb(_strided(packed, 4, 2, pitch=10, h=1), DrmFormat.RGB565)
    assert out[0].tolist() == [
        [0, 0, 255, 0], [0, 255, 0, 0], [255, 0, 0, 0],
        [0b00001000, 0b10000010, 0b10000100, 0],  # B 00001->00001000, G 100000->10000010, R 10000->10000100
    ]


def test_convert_into_given_buffer_and_shape_checks() -> None:
    src = _strided(bytes([1, 2, 3, 4]) * 2, 2, 4, pitch=8, h=1)
    out = np.zeros((1, 2, 4), np.uint8)
    assert convert_to_xrgb(src, DrmFormat.XBGR8888, out) is out
    assert out[0, 0].tolist() == [3, 2, 1, 4]
    with pytest.raises(ValueError):
        convert_to_xrgb(src, DrmFormat.XBGR8888, np.zeros((2, 2, 4), np.uint8))
    with pytest.raises(ValueError):
        convert_to_xrgb(src, DrmFormat.RGB565)
    with pytest.raises(UnsupportedFormatError):
        convert_to_xrgb(src, fourcc("NV12"))


def _info(fmt: int, modifier: int = 0, pitch: int = 4096, flags: int = 2) -> FramebufferInfo:
    return FramebufferInfo(fb_id=40, width=1024, height=768, format=fmt, flags=flags,
                           handles=(1, 0, 0, 0), pitches=(pitch, 0, 0, 0), offsets=(0, 0, 0, 0),
                           modifiers=(modifier, 0, 0, 0))


def test_check_readable() -> None:
    assert check_readable(_info(DrmFormat.XRGB8888)) == 4
    assert check_readable(_info(DrmFormat.RGB565, pitch=2048)) == 2
    with pytest.raises(UnsupportedFormatError, match=r"NV12.*cannot read") as ei:
        check_readable(_info(fourcc("NV12")))
    assert "XRGB8888" in ei.value.hint
    with pytest.raises(UnsupportedFormatError, match="non-linear modifier INTEL:0x1"):
        check_readable(_info(DrmFormat.XRGB8888, modifier=(1 << 56) | 1))
    # Without DRM_MODE_FB_MODIFIERS in flags the modifier fields mean nothing: linear.
    assert check_readable(_info(DrmFormat.XRGB8888, modifier=(1 << 56) | 1, flags=0)) == 4
    with pytest.raises(UnsupportedFormatError, match="pitch"):
        check_readable(_info(DrmFormat.XRGB8888, pitch=1024))

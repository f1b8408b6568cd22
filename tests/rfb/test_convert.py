"""vkmsremote.rfb.convert: XRGB8888 -> client pixel formats, CPIXEL and TPIXEL (RFC 6143 7.4, 7.7.6; Tight)."""

from __future__ import annotations

import numpy as np
import pytest

from vkmsremote.rfb.convert import (
    BGR233,
    bgr233_colour_map,
    convert,
    convert_array,
    cpixel_bytes,
    cpixel_size,
    cpixel_slice,
    pixel_values,
    tpixel_bytes,
    tpixel_bytes_from_frame,
    tpixel_size,
)
from vkmsremote.rfb.pixelformat import NATIVE, PixelFormat

BGR0 = PixelFormat(32, 24, False, True, 255, 255, 255, 0, 8, 16)
NATIVE_BE = PixelFormat(32, 24, True, True, 255, 255, 255, 16, 8, 0)
RGB_HIGH_LE = PixelFormat(32, 24, False, True, 255, 255, 255, 24, 16, 8)  # colour in the top 3 bytes
RGB565_LE = PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0)
RGB565_BE = PixelFormat(16, 16, True, True, 31, 63, 31, 11, 5, 0)
RGB555_LE = PixelFormat(16, 15, False, True, 31, 31, 31, 10, 5, 0)
TEN_BIT_BE = PixelFormat(32, 30, True, True, 1023, 1023, 1023, 20, 10, 0)
ODD_SHIFTS = PixelFormat(32, 24, False, True, 255, 255, 255, 1, 9, 17)
FORMATS = [NATIVE, BGR0, NATIVE_BE, RGB_HIGH_LE, RGB565_LE, RGB565_BE, RGB555_LE, TEN_BIT_BE, ODD_SHIFTS, BGR233]


def reference_pixel(b: int, g: int, r: int, pf: PixelFormat) -> bytes:
    """One pixel the slow, obvious way: scale each channel with rounding, shift, pack in the byte order."""
    value = 0
    for c, mx, shift in ((r, pf.red_max, pf.red_shift), (g, pf.green_max, pf.green_shift),
                         (b, pf.blue_max, pf.blue_shift)):
        value |= ((c * mx + 127) // 255) << shift
    return value.to_bytes(pf.bytes_per_pixel, "big" if pf.big_endian else "little")


def random_frame(h: int, w: int, seed: int = 0, x_byte: bool = False) -> np.ndarray:
    """Random B, G, R pixels; the X byte is 0 unless ``x_byte`` (sources need not zero it)."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, size=(h, w, 4), dtype=np.uint8)
    if not x_byte:
        frame[..., 3] = 0
    frame[0, 0, :3] = (0, 0, 0)
    frame[0, 1, :3] = (255, 255, 255)
    return frame


@pytest.mark.parametrize("pf", FORMATS, ids=lambda pf: f"{pf.bits_per_pixel}-{pf.red_shift}-{pf.big_endian}")
def test_convert_matches_reference_per_pixel(pf: PixelFormat) -> None:
    pf.validate()
    frame = random_frame(7, 9)
    expected = b"".join(reference_pixel(int(b), int(g), int(r), pf) for b, g, r, _ in frame.reshape(-1, 4))
    assert convert(frame, pf) == expected
    # a non-contiguous view (a sub-rectangle of a bigger frame) converts the same
    big = random_frame(20, 30, seed=5)
    big[3:10, 4:13] = frame
    assert convert(big[3:10, 4:13], pf) == expected


def test_known_bytes() -> None:
    red = np.array([[[0, 0, 255, 0]]], dtype=np.uint8)  # B, G, R, X
    assert convert(red, RGB565_LE) == b"\x00\xf8"
    assert convert(red, RGB565_BE) == b"\xf8\x00"
    assert convert(red, BGR233) == b"\x07"
    assert convert(red, BGR0) == b"\xff\x00\x00\x00"
    assert convert(red, NATIVE_BE) == b"\x00\xff\x00\x00"
    blue = np.array([[[255, 0, 0, 0]]], dtype=np.uint8)
    assert convert(blue, BGR233) == b"\xc0"
    mid = np.array([[[128, 128, 128, 0]]], dtype=np.uint8)
    assert convert(mid, RGB565_LE) == (16 << 11 | 32 << 5 | 16).to_bytes(2, "little")  # 128*31/255 = 15.6 -> 16


def test_native_fast_path_is_the_frame() -> None:
    # the X byte goes out as it is: outside depth 24 it carries no colour (RFC 6143 7.4)
    frame = random_frame(4, 5, x_byte=True)
    assert convert(frame, NATIVE) == frame.tobytes()
    assert convert_array(frame, NATIVE) is frame  # contiguous: no copy at all
    depth32 = PixelFormat(32, 32, False, True, 255, 255, 255, 16, 8, 0)
    assert convert(frame, depth32) == frame.tobytes()


def test_pixel_values_ignore_the_x_byte() -> None:
    frame = random_frame(3, 3, x_byte=True)
    other = frame.copy()
    other[..., 3] ^= 0x5A
    assert np.array_equal(pixel_values(frame, NATIVE), pixel_values(other, NATIVE))
    assert int(pixel_values(frame, NATIVE)[0, 1]) == 0xFFFFFF


def test_cpixel_layout() -> None:
    assert cpixel_slice(NATIVE) == slice(0, 3)  # little-endian, colour in the low 3 bytes: first 3 bytes
    assert cpixel_slice(NATIVE_BE) == slice(1, 4)  # big-endian: the low bytes come last
    assert cpixel_slice(RGB_HIGH_LE) == slice(1, 4)
    assert cpixel_slice(PixelFormat(32, 24, True, True, 255, 255, 255, 24, 16, 8)) == slice(0, 3)
    # colour only in the middle two bytes fits both halves: the first 3 bytes in memory (TigerVNC's "24A")
    middle_be = PixelFormat(32, 16, True, True, 31, 63, 31, 19, 13, 8)
    assert cpixel_slice(middle_be) == slice(0, 3)
    assert cpixel_slice(PixelFormat(32, 16, False, True, 31, 63, 31, 19, 13, 8)) == slice(0, 3)
    assert cpixel_size(PixelFormat(32, 32, False, True, 255, 255, 255, 16, 8, 0)) == 4  # depth 32: full pixel
    assert cpixel_size(RGB565_LE) == 2
    assert cpixel_size(BGR233) == 1
    frame = random_frame(2, 3)
    for pf in (NATIVE, NATIVE_BE, RGB_HIGH_LE):
        full = convert_array(frame, pf)
        assert np.array_equal(cpixel_bytes(pixel_values(frame, pf), pf), full[..., cpixel_slice(pf)])
        # the dropped byte carries no colour: rebuilding the pixel with it zeroed gives the same colour
        dropped = ({0, 1, 2, 3} - set(range(4)[cpixel_slice(pf)])).pop()
        assert not full[..., dropped].any()


def test_tpixel_is_rgb_for_24_bit_formats_whatever_the_shifts() -> None:
    frame = np.array([[[10, 20, 30, 99], [200, 100, 50, 0]]], dtype=np.uint8)  # B, G, R, X
    for pf in (NATIVE, BGR0, NATIVE_BE, RGB_HIGH_LE, ODD_SHIFTS):
        assert tpixel_size(pf) == 3
        assert tpixel_bytes_from_frame(frame, pf).tobytes() == bytes((30, 20, 10, 50, 100, 200))
        assert tpixel_bytes(pixel_values(frame, pf), pf).tobytes() == bytes((30, 20, 10, 50, 100, 200))
    for pf in (RGB565_LE, RGB565_BE, BGR233, TEN_BIT_BE):
        assert tpixel_size(pf) == pf.bytes_per_pixel
        assert tpixel_bytes_from_frame(frame, pf).tobytes() == convert(frame, pf)


def test_bgr233_colour_map_matches_pixel_values() -> None:
    entries = bgr233_colour_map()
    assert len(entries) == 256
    frame = random_frame(16, 16, seed=3)
    index = convert_array(frame, BGR233).reshape(-1)
    rgb = np.array(entries, dtype=np.int64)[index] / 257.0  # back to 8-bit
    original = frame.reshape(-1, 4)[:, 2::-1].astype(np.int64)  # R, G, B
    # 3 bits for red/green and 2 for blue, rounded: within half a step of the original
    assert np.all(np.abs(rgb - original) <= np.array([255 / 14, 255 / 14, 255 / 6]) + 0.5)

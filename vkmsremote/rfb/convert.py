"""XRGB8888 frames to a client's true-colour pixel format (RFC 6143 sections 7.4 and 7.7.1).

Frames arrive as (h, w, 4) uint8 arrays in B, G, R, X memory order (:data:`NATIVE`). A client may ask
for any true-colour format: 8, 16 or 32 bits per pixel, any 2**n - 1 maxima, any shifts, either byte
order. Everything here is vectorised; no Python loop touches a pixel.

Three views of a converted pixel are used by the encoders:

* the pixel *value* (an unsigned integer, :func:`pixel_values`), which is what palettes and runs compare;
* the PIXEL bytes on the wire (:func:`value_bytes`), bits-per-pixel / 8 bytes in the client's byte order;
* the compressed forms: ZRLE's CPIXEL (RFC 6143 7.7.6) and Tight's TPIXEL (rfbproto "Tight Encoding"),
  3 bytes where the format allows it (:func:`cpixel_bytes`, :func:`tpixel_bytes`).

Channel scaling rounds to nearest: an 8-bit channel ``c`` becomes ``(c * max + 127) // 255``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt

from vkmsremote.frame import Pixels
from vkmsremote.rfb.pixelformat import NATIVE, PixelFormat

Values = npt.NDArray[np.uint32]
"""Client pixel values, one unsigned integer per pixel (shape (h, w) or flat)."""


def is_native(pf: PixelFormat) -> bool:
    """True when ``pf`` lays pixels out exactly like the frame (only depth may differ)."""
    return (
        pf.true_colour and pf.bits_per_pixel == 32 and not pf.big_endian
        and (pf.red_max, pf.green_max, pf.blue_max) == (255, 255, 255)
        and (pf.red_shift, pf.green_shift, pf.blue_shift) == (NATIVE.red_shift, NATIVE.green_shift, NATIVE.blue_shift)
    )


def _byte_slots(pf: PixelFormat) -> tuple[int, int, int] | None:
    """For a 32 bpp format whose channels are whole bytes, the byte index of R, G, B in memory; else None."""
    if pf.bits_per_pixel != 32 or (pf.red_max, pf.green_max, pf.blue_max) != (255, 255, 255):
        return None
    shifts = (pf.red_shift, pf.green_shift, pf.blue_shift)
    if any(s % 8 for s in shifts):
        return None
    slots = tuple((3 - s // 8) if pf.big_endian else s // 8 for s in shifts)
    return slots[0], slots[1], slots[2]


@lru_cache(maxsize=64)
def _luts(pf: PixelFormat) -> tuple[Values, Values, Values]:
    """Per-channel tables: 8-bit intensity -> that channel's bits already shifted into the pixel value."""
    ramp = np.arange(256, dtype=np.uint64)
    out = []
    for mx, shift in ((pf.red_max, pf.red_shift), (pf.green_max, pf.green_shift), (pf.blue_max, pf.blue_shift)):
        out.append((((ramp * mx + 127) // 255) << shift).astype(np.uint32))
    return out[0], out[1], out[2]


def pixel_values(pixels: Pixels, pf: PixelFormat) -> Values:
    """The client pixel value of every pixel, as uint32 with the pixels' shape minus the last axis."""
    if is_native(pf):
        # Drop the X byte: it is not part of the colour, and sources need not zero it.
        return pixels.view(np.uint32).reshape(pixels.shape[:-1]) & np.uint32(0x00FFFFFF)
    r_lut, g_lut, b_lut = _luts(pf)
    values: Values = np.take(r_lut, pixels[..., 2])
    values |= np.take(g_lut, pixels[..., 1])
    values |= np.take(b_lut, pixels[..., 0])
    return values


@lru_cache(maxsize=64)
def _narrow_luts(pf: PixelFormat) -> tuple[npt.NDArray[np.unsignedinteger[npt.NBitBase]], ...]:
    """:func:`_luts` in the pixel's own width (uint8 / uint16): less memory traffic for 8 and 16 bpp."""
    dtype = np.uint8 if pf.bits_per_pixel == 8 else np.uint16
    return tuple(lut.astype(dtype) for lut in _luts(pf))


def _wire_dtype(pf: PixelFormat) -> np.dtype[np.unsignedinteger[npt.NBitBase]]:
    order = ">" if pf.big_endian else "<"
    return np.dtype(f"{order}u{pf.bytes_per_pixel}")


def value_bytes(values: Values, pf: PixelFormat) -> npt.NDArray[np.uint8]:
    """PIXEL bytes for each value, shape values.shape + (bytes_per_pixel,)."""
    wire = values.astype(_wire_dtype(pf), copy=False)
    return np.ascontiguousarray(wire).view(np.uint8).reshape(*values.shape, pf.bytes_per_pixel)


def convert_array(pixels: Pixels, pf: PixelFormat) -> npt.NDArray[np.uint8]:
    """The region in ``pf`` as an (h, w, bytes_per_pixel) uint8 array (contiguous)."""
    if is_native(pf):
        return np.ascontiguousarray(pixels)
    slots = _byte_slots(pf)
    if slots is not None:
        # 32 bpp with byte-aligned 8-bit channels: a byte shuffle, no arithmetic.
        out = np.zeros((*pixels.shape[:-1], 4), dtype=np.uint8)
        out[..., slots[0]] = pixels[..., 2]
        out[..., slots[1]] = pixels[..., 1]
        out[..., slots[2]] = pixels[..., 0]
        return out
    if pf.bits_per_pixel <= 16:
        r_lut, g_lut, b_lut = _narrow_luts(pf)
        narrow = np.take(r_lut, pixels[..., 2])
        narrow |= np.take(g_lut, pixels[..., 1])
        narrow |= np.take(b_lut, pixels[..., 0])
        wire = narrow.astype(_wire_dtype(pf), copy=False)
        return np.ascontiguousarray(wire).view(np.uint8).reshape(*narrow.shape, pf.bytes_per_pixel)
    return value_bytes(pixel_values(pixels, pf), pf)


def convert(pixels: Pixels, pf: PixelFormat) -> bytes:
    """An XRGB8888 region (h, w, 4) as the bytes of a Raw rectangle in the client format ``pf``."""
    return convert_array(pixels, pf).tobytes()


def cpixel_slice(pf: PixelFormat) -> slice:
    """Which bytes of a PIXEL (in wire order) make up ZRLE's CPIXEL (RFC 6143 7.7.6).

    CPIXEL is 3 bytes when the format is true colour, 32 bpp, depth <= 24 and all colour bits fit in
    the least or the most significant 3 bytes of the pixel; otherwise it is the whole PIXEL. When both
    would do (depth <= 16 in the middle bytes), the first 3 bytes in memory are sent, as TigerVNC's and
    libvncserver's encoders and decoders agree ("24A": the least significant bytes for little-endian,
    the most significant for big-endian).
    """
    if not (pf.true_colour and pf.bits_per_pixel == 32 and pf.depth <= 24):
        return slice(0, pf.bytes_per_pixel)
    top = max(mx.bit_length() + shift for mx, shift in (
        (pf.red_max, pf.red_shift), (pf.green_max, pf.green_shift), (pf.blue_max, pf.blue_shift)))
    fits_low = top <= 24
    fits_high = min(pf.red_shift, pf.green_shift, pf.blue_shift) >= 8
    if (fits_low and not pf.big_endian) or (fits_high and pf.big_endian):
        return slice(0, 3)
    if fits_low or fits_high:
        return slice(1, 4)
    return slice(0, 4)


def cpixel_size(pf: PixelFormat) -> int:
    s = cpixel_slice(pf)
    return int(s.stop - s.start)


def cpixel_bytes(values: Values, pf: PixelFormat) -> npt.NDArray[np.uint8]:
    """ZRLE CPIXEL bytes for each value, shape values.shape + (cpixel_size(pf),)."""
    full = value_bytes(values, pf)
    s = cpixel_slice(pf)
    if s.stop - s.start == pf.bytes_per_pixel:
        return full
    return np.ascontiguousarray(full[..., s])


def tpixel_is_rgb(pf: PixelFormat) -> bool:
    """True when Tight's TPIXEL is 3 bytes R, G, B: true colour, 32 bpp, depth 24, all maxima 255."""
    return (pf.true_colour and pf.bits_per_pixel == 32 and pf.depth == 24
            and (pf.red_max, pf.green_max, pf.blue_max) == (255, 255, 255))


def tpixel_size(pf: PixelFormat) -> int:
    return 3 if tpixel_is_rgb(pf) else pf.bytes_per_pixel


def tpixel_bytes(values: Values, pf: PixelFormat) -> npt.NDArray[np.uint8]:
    """Tight TPIXEL bytes for each value, shape values.shape + (tpixel_size(pf),)."""
    if not tpixel_is_rgb(pf):
        return value_bytes(values, pf)
    out = np.empty((*values.shape, 3), dtype=np.uint8)
    out[..., 0] = (values >> np.uint32(pf.red_shift)).astype(np.uint8)  # & 0xFF by the narrowing cast
    out[..., 1] = (values >> np.uint32(pf.green_shift)).astype(np.uint8)
    out[..., 2] = (values >> np.uint32(pf.blue_shift)).astype(np.uint8)
    return out


def tpixel_bytes_from_frame(pixels: Pixels, pf: PixelFormat) -> npt.NDArray[np.uint8]:
    """TPIXEL bytes straight from XRGB8888 pixels (h, w, 4) -> (h, w, tpixel_size(pf))."""
    if tpixel_is_rgb(pf):
        return np.ascontiguousarray(pixels[..., 2::-1])  # B, G, R -> R, G, B
    return value_bytes(pixel_values(pixels, pf), pf)


# 8-bit colour-map clients (true-colour flag 0): the server may load this 3-3-2 colour cube with
# SetColourMapEntries (RFC 6143 7.6.2) and then encode for BGR233, whose pixel value is the map index.
BGR233 = PixelFormat(8, 8, False, True, 7, 7, 3, 0, 3, 6)


def bgr233_colour_map() -> list[tuple[int, int, int]]:
    """The 256 (red, green, blue) 16-bit entries matching :data:`BGR233`: entry i = pixel value i."""
    entries = []
    for i in range(256):
        r, g, b = i & 7, (i >> 3) & 7, i >> 6
        entries.append((r * 65535 // 7, g * 65535 // 7, b * 65535 // 3))
    return entries

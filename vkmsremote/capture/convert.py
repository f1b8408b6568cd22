"""Pixel format conversion of scanned-out framebuffers to the frame format every FrameSource delivers:
(h, w, 4) uint8 in DRM_FORMAT_XRGB8888 memory order B, G, R, X.

Memory orders (drm_fourcc.h, little-endian): XRGB8888/ARGB8888 = B G R X/A, XBGR8888/ABGR8888 = R G B X/A,
RGB888 = B G R, BGR888 = R G B, RGB565 = one LE u16 with R in bits 15-11, G 10-5, B 4-0.
Alpha of ARGB/ABGR is carried in the X byte, not applied (as a primary plane over black it would darken).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vkmsremote.drm.fourcc import DRM_FORMAT_MOD_LINEAR, DrmFormat, format_name, modifier_name
from vkmsremote.drm.framebuffer import FramebufferInfo
from vkmsremote.errors import UnsupportedFormatError
from vkmsremote.frame import Pixels

# Formats whose bytes already are B, G, R, X: the mapped framebuffer can be used without a copy.
NATIVE_FORMATS = frozenset({DrmFormat.XRGB8888, DrmFormat.ARGB8888})

BYTES_PER_PIXEL: dict[int, int] = {
    DrmFormat.XRGB8888: 4, DrmFormat.ARGB8888: 4, DrmFormat.XBGR8888: 4, DrmFormat.ABGR8888: 4,
    DrmFormat.RGB888: 3, DrmFormat.BGR888: 3, DrmFormat.RGB565: 2,
}


def check_readable(info: FramebufferInfo) -> int:
    """Bytes per pixel of ``info``'s format, or UnsupportedFormatError saying why it cannot be read."""
    bpp = BYTES_PER_PIXEL.get(info.format)
    if bpp is None:
        raise UnsupportedFormatError(
            f"framebuffer {info.fb_id} is {format_name(info.format)}, which vkmsremote cannot read",
            hint="supported: " + ", ".join(format_name(f) for f in BYTES_PER_PIXEL)
            + "; configure the client (compositor) to use XRGB8888")
    if info.modifier != DRM_FORMAT_MOD_LINEAR:
        raise UnsupportedFormatError(
            f"framebuffer {info.fb_id} uses the non-linear modifier {modifier_name(info.modifier)}",
            hint="only linear framebuffers can be read; make the client allocate linear buffers")
    if info.num_planes != 1:
        raise UnsupportedFormatError(f"framebuffer {info.fb_id} has {info.num_planes} planes; expected 1")
    if info.pitches[0] < info.width * bpp:
        raise UnsupportedFormatError(
            f"framebuffer {info.fb_id}: pitch {info.pitches[0]} is less than width {info.width} x {bpp} bytes")
    return bpp


def _swap_rb(src: Pixels, out: Pixels) -> None:  # R G B A -> B G R A
    out[..., 0] = src[..., 2]
    out[..., 1] = src[..., 1]
    out[..., 2] = src[..., 0]
    out[..., 3] = src[..., 3]


def _rgb888(src: Pixels, out: Pixels) -> None:  # B G R -> B G R X
    out[..., :3] = src
    out[..., 3] = 0


def _bgr888(src: Pixels, out: Pixels) -> None:  # R G B -> B G R X
    out[..., 0] = src[..., 2]
    out[..., 1] = src[..., 1]
    out[..., 2] = src[..., 0]
    out[..., 3] = 0


def _rgb565(src: Pixels, out: Pixels) -> None:
    lo = src[..., 0]
    hi = src[..., 1]
    r5 = hi >> 3
    g6 = ((hi & 0x07) << 3) | (lo >> 5)
    b5 = lo & 0x1F
    # Replicate the top bits into the low ones so 0x1F -> 0xFF and 0 -> 0.
    out[..., 0] = (b5 << 3) | (b5 >> 2)
    out[..., 1] = (g6 << 2) | (g6 >> 4)
    out[..., 2] = (r5 << 3) | (r5 >> 2)
    out[..., 3] = 0


def _copy(src: Pixels, out: Pixels) -> None:
    np.copyto(out, src)


_CONVERTERS: dict[int, Callable[[Pixels, Pixels], None]] = {
    DrmFormat.XRGB8888: _copy, DrmFormat.ARGB8888: _copy,
    DrmFormat.XBGR8888: _swap_rb, DrmFormat.ABGR8888: _swap_rb,
    DrmFormat.RGB888: _rgb888, DrmFormat.BGR888: _bgr888, DrmFormat.RGB565: _rgb565,
}


def convert_to_xrgb(src: Pixels, pixel_format: int, out: Pixels | None = None) -> Pixels:
    """Convert ``src`` — (h, w, bytes_per_pixel) uint8, rows possibly strided — into ``out``
    ((h, w, 4) uint8, allocated if None) and return ``out``."""
    conv = _CONVERTERS.get(pixel_format)
    if conv is None:
        raise UnsupportedFormatError(f"cannot convert {format_name(pixel_format)}")
    h, w = src.shape[:2]
    if src.shape[2] != BYTES_PER_PIXEL[pixel_format]:
        raise ValueError(f"{format_name(pixel_format)} has {BYTES_PER_PIXEL[pixel_format]} bytes per pixel, "
                         f"the source has {src.shape[2]}")
    if out is None:
        out = np.empty((h, w, 4), np.uint8)
    elif out.shape != (h, w, 4):
        raise ValueError(f"output of shape {out.shape} for a {w}x{h} source")
    conv(src, out)
    return out

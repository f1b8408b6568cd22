"""DRM pixel format codes and modifiers (include/uapi/drm/drm_fourcc.h)."""

from __future__ import annotations

from enum import IntEnum


def fourcc(code: str) -> int:
    """``fourcc_code(a, b, c, d)``: four ASCII characters, the first in the low byte ('XR24' -> 0x34325258)."""
    raw = code.encode("ascii")
    if len(raw) != 4:
        raise ValueError(f"a fourcc has four characters, not {code!r}")
    return raw[0] | raw[1] << 8 | raw[2] << 16 | raw[3] << 24


def fourcc_str(value: int) -> str:
    """The four characters of a format code ('XR24'); non-printable bytes as '?'.

    DRM_FORMAT_BIG_ENDIAN (bit 31) is shown as a trailing '-BE'.
    """
    suffix = "-BE" if value & DRM_FORMAT_BIG_ENDIAN else ""
    value &= ~DRM_FORMAT_BIG_ENDIAN
    chars = [(value >> (8 * i)) & 0xFF for i in range(4)]
    return "".join(chr(c) if 0x20 <= c < 0x7F else "?" for c in chars) + suffix


DRM_FORMAT_BIG_ENDIAN = 1 << 31


class DrmFormat(IntEnum):
    """The formats vkmsremote knows by name (memory order is little-endian, as in drm_fourcc.h)."""

    XRGB8888 = fourcc("XR24")  # [31:0] x:R:G:B 8:8:8:8 -> bytes B, G, R, X
    ARGB8888 = fourcc("AR24")
    XBGR8888 = fourcc("XB24")  # bytes R, G, B, X
    ABGR8888 = fourcc("AB24")
    RGBX8888 = fourcc("RX24")
    BGRX8888 = fourcc("BX24")
    RGB565 = fourcc("RG16")  # [15:0] R:G:B 5:6:5
    BGR565 = fourcc("BG16")
    RGB888 = fourcc("RG24")  # [23:0] R:G:B -> bytes B, G, R
    BGR888 = fourcc("BG24")  # [23:0] B:G:R -> bytes R, G, B
    XRGB2101010 = fourcc("XR30")
    ARGB16161616 = fourcc("AR48")
    XRGB16161616 = fourcc("XR48")
    NV12 = fourcc("NV12")
    YUYV = fourcc("YUYV")

    @property
    def fourcc(self) -> str:
        return fourcc_str(self.value)


def format_name(value: int) -> str:
    """'XRGB8888 (XR24)' for known formats, else the fourcc characters and hex value."""
    try:
        known = DrmFormat(value)
    except ValueError:
        return f"{fourcc_str(value)} (0x{value:08x})"
    return f"{known.name} ({known.fourcc})"


# Modifiers: vendor in the top 8 bits, vendor-specific value in the low 56 bits.
DRM_FORMAT_MOD_LINEAR = 0
DRM_FORMAT_MOD_INVALID = (1 << 56) - 1
DRM_FORMAT_MOD_VENDOR_NAMES = {
    0x00: "NONE", 0x01: "INTEL", 0x02: "AMD", 0x03: "NVIDIA", 0x04: "SAMSUNG", 0x05: "QCOM",
    0x06: "VIVANTE", 0x07: "BROADCOM", 0x08: "ARM", 0x09: "ALLWINNER", 0x0A: "AMLOGIC",
}


def modifier_name(modifier: int) -> str:
    if modifier == DRM_FORMAT_MOD_LINEAR:
        return "LINEAR"
    if modifier == DRM_FORMAT_MOD_INVALID:
        return "INVALID"
    vendor = modifier >> 56
    return f"{DRM_FORMAT_MOD_VENDOR_NAMES.get(vendor, f'vendor {vendor:#x}')}:0x{modifier & ((1 << 56) - 1):x}"

"""Display modes of any size and refresh rate: VESA CVT reduced blanking (CVT 1.1 "RB", the timings
``cvt -r`` prints), as a :class:`~vkmsremote.drm.resources.Mode` ready for a MODE_ID blob.

VKMS lists a fixed set of modes but accepts any mode up to its maximum size in an atomic commit, and
times its vblanks from the mode (clock / (htotal * vtotal)): the refresh rate asked for is the rate the
CRTC runs at. ``cvt -r`` refuses rates that are not multiples of 60 Hz (CVT 1.1 only defines RB at
60 Hz); the formula itself is the same for any rate, and it is what this module computes.

Differences from ``cvt``: the width is not rounded to a multiple of 8 (a VNC client that asked for
1366 pixels gets 1366; for widths that are multiples of 8 the timings are identical).
"""

from __future__ import annotations

import re

from vkmsremote.drm import ioctl as k
from vkmsremote.drm.mode import Mode
from vkmsremote.errors import UsageError

MAX_DIMENSION = 8192
"""VKMS's mode_config max_width / max_height (drivers/gpu/drm/vkms/vkms_drv.c, XRES_MAX / YRES_MAX)."""
MIN_REFRESH = 1.0
MAX_REFRESH = 240.0

# VESA CVT 1.1 section 5.4, reduced blanking constants (the ones libxcvt uses).
RB_MIN_VBLANK_US = 460.0
RB_H_SYNC = 32
RB_H_BLANK = 160
RB_V_FPORCH = 3
MIN_V_BPORCH = 6
CLOCK_STEP_KHZ = 250

DRM_MODE_FLAG_PHSYNC = 1 << 0
DRM_MODE_FLAG_NVSYNC = 1 << 3
DRM_MODE_TYPE_USERDEF = 1 << 5

_MODE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*(?:@\s*(\d{1,3}(?:\.\d{1,3})?)\s*(?:[hH][zZ])?)?\s*$")


def parse_mode(text: str) -> tuple[int, int, float | None]:
    """``WxH`` or ``WxH@Hz`` (e.g. ``3840x1080@90``) -> (width, height, refresh or None); UsageError if not."""
    m = _MODE_RE.match(text)
    if m is None:
        raise UsageError(f"not a mode: {text!r}", hint="give WxH or WxH@Hz, e.g. 1920x1080@90")
    width, height = int(m.group(1)), int(m.group(2))
    refresh = float(m.group(3)) if m.group(3) else None
    check_mode(width, height, refresh)
    return width, height, refresh


def check_mode(width: int, height: int, refresh: float | None) -> None:
    if not (1 <= width <= MAX_DIMENSION and 1 <= height <= MAX_DIMENSION):
        raise UsageError(f"mode {width}x{height} out of range", hint=f"1..{MAX_DIMENSION} in each direction")
    if refresh is not None and not MIN_REFRESH <= refresh <= MAX_REFRESH:
        raise UsageError(f"refresh rate {refresh:g} Hz out of range", hint=f"{MIN_REFRESH:g}..{MAX_REFRESH:g} Hz")


def _vsync_lines(width: int, height: int) -> int:
    """CVT 1.1 table 3: the vertical sync width encodes the aspect ratio (10 for others)."""
    for num, den, lines in ((4, 3, 4), (16, 9, 5), (16, 10, 6), (5, 4, 7), (15, 9, 7)):
        if height % den == 0 and height * num // den == width:
            return lines
    return 10


def cvt_rb_mode(width: int, height: int, refresh: float = 60.0) -> Mode:
    """The CVT reduced-blanking mode of ``width`` x ``height`` at ``refresh`` Hz (progressive, no margins)."""
    check_mode(width, height, refresh)
    vsync = _vsync_lines(width - width % 8, height)
    hperiod_us = (1_000_000.0 / refresh - RB_MIN_VBLANK_US) / height  # CVT 5.4 step 8
    vbi_lines = max(int(RB_MIN_VBLANK_US / hperiod_us) + 1, RB_V_FPORCH + vsync + MIN_V_BPORCH)
    vtotal = height + vbi_lines
    htotal = width + RB_H_BLANK
    clock = int(htotal * 1000.0 / hperiod_us)  # kHz, CVT 5.4 step 16 as libxcvt computes it
    clock -= clock % CLOCK_STEP_KHZ
    hsync_end = width + RB_H_BLANK // 2
    info = k.drm_mode_modeinfo()
    info.clock = clock
    info.hdisplay, info.hsync_start, info.hsync_end, info.htotal = width, hsync_end - RB_H_SYNC, hsync_end, htotal
    info.vdisplay, info.vsync_start = height, height + RB_V_FPORCH
    info.vsync_end, info.vtotal = height + RB_V_FPORCH + vsync, vtotal
    if max(info.htotal, info.vtotal) > 0xFFFF:
        raise UsageError(f"mode {width}x{height} has timings beyond 16 bits")
    info.vrefresh = round(clock * 1000.0 / (htotal * vtotal))
    info.flags = DRM_MODE_FLAG_PHSYNC | DRM_MODE_FLAG_NVSYNC
    info.type = DRM_MODE_TYPE_USERDEF
    info.name = f"{width}x{height}R".encode("ascii")
    return Mode.from_struct(info)


def modeline(mode: Mode) -> str:
    """The mode as an X11 modeline (``xrandr --newmode`` takes everything after the word Modeline)."""
    i = mode.to_struct()
    flags = ("+hsync" if mode.flags & DRM_MODE_FLAG_PHSYNC else "-hsync",
             "-vsync" if mode.flags & DRM_MODE_FLAG_NVSYNC else "+vsync")
    return (f'"{mode.name}" {i.clock / 1000:.2f} {i.hdisplay} {i.hsync_start} {i.hsync_end} {i.htotal} '
            f'{i.vdisplay} {i.vsync_start} {i.vsync_end} {i.vtotal} {flags[0]} {flags[1]}')


def x_timings(width: int, height: int, refresh: float = 60.0) -> str:
    """The numbers of the CVT-RB mode's X11 modeline without its name (``xrandr --newmode NAME`` takes them)."""
    return modeline(cvt_rb_mode(width, height, refresh)).split('" ', 1)[1]

"""The frame model every layer shares: pixels, rectangles, frames, the cursor, and the FrameSource protocol.

A FrameSource yields frames (with damage) and a cursor. The real CRTC reader (vkmsremote.capture), the
synthetic pattern source (vkmsremote.server.pattern) and the benchmarks' sources implement it, so the
server cannot tell them apart. This module imports nothing of vkmsremote: rfb, capture, input, server and
bench all build on it (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Pixels = npt.NDArray[np.uint8]
"""(height, width, 4) uint8 in DRM_FORMAT_XRGB8888 memory order: B, G, R, X (rfb.pixelformat.NATIVE)."""


@dataclass(frozen=True, slots=True)
class Rect:
    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h

    def clip(self, width: int, height: int) -> Rect | None:
        """This rectangle cut to a width x height screen, or None if nothing of it is left."""
        x0, y0 = max(self.x, 0), max(self.y, 0)
        x1, y1 = min(self.x + self.w, width), min(self.y + self.h, height)
        if x1 <= x0 or y1 <= y0:
            return None
        return Rect(x0, y0, x1 - x0, y1 - y0)


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame.

    ``pixels`` is owned by the source and must not be written; it stays valid and unchanged until the
    source returns its next frame. ``damage`` lists what changed since the previous frame the source
    returned (None: unknown, treat as all changed). ``serial`` increases by one per frame.
    ``immutable``: the source never writes ``pixels`` again while anything else references them (it
    writes later frames elsewhere), so they may be kept as they are, without a copy.
    """

    pixels: Pixels
    serial: int
    damage: tuple[Rect, ...] | None
    immutable: bool = False

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


@dataclass(frozen=True, slots=True)
class Cursor:
    """The pointer image. ``pixels`` is (h, w, 4) uint8 B, G, R, A (DRM_FORMAT_ARGB8888, straight alpha)."""

    pixels: Pixels
    hot_x: int
    hot_y: int
    x: int
    y: int
    visible: bool
    serial: int


@runtime_checkable
class FrameSource(Protocol):
    @property
    def desktop_name(self) -> str:
        """Shown to VNC clients, e.g. 'XR-0 (card0 Virtual-1, connector 36, CRTC 35)'."""
        ...

    async def next_frame(self) -> Frame:
        """Wait for the next frame whose content differs from the previous one and return it.

        Pacing is the source's business (vblank for the CRTC reader, a clock for the pattern).
        The first call returns the current frame at once with damage None.
        """
        ...

    def cursor(self) -> Cursor | None:
        """The current cursor, or None if the source has none (the client draws its own)."""
        ...

    async def close(self) -> None: ...


MAX_RESIZE = 8192
"""The largest width or height a client may ask a source for (VKMS's mode_config maximum, XRES_MAX)."""


class ResizeStatus(IntEnum):
    """What became of a resize request: the ExtendedDesktopSize status codes (rfbproto "ExtendedDesktopSize"),
    here so that sources below the RFB layer can answer with them."""

    OK = 0
    PROHIBITED = 1
    OUT_OF_RESOURCES = 2
    INVALID = 3
    FORWARDED = 4


@runtime_checkable
class ResizableSource(Protocol):
    """A FrameSource that can change its size when a VNC client asks (RFB SetDesktopSize).

    Optional: the server answers "resize prohibited" for sources without it.
    """

    def request_resize(self, width: int, height: int) -> int:
        """Start a change to ``width`` x ``height``. Returns an ExtendedDesktopSize status code
        (rfbproto "ExtendedDesktopSize"): 0 if the change is made (frames of the new size follow),
        1 prohibited, 2 out of resources, 3 invalid size, 4 forwarded (may complete later)."""
        ...

@dataclass(frozen=True, slots=True)
class Placement:
    """A CRTC's picture (x, y, width, height) inside the framebuffer it scans out of (fb_width x fb_height)."""

    x: int
    y: int
    width: int
    height: int
    fb_width: int
    fb_height: int

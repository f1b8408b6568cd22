"""The frame model every layer shares: pixels, rectangles, frames, the cursor, and the FrameSource protocol.

A FrameSource yields frames (with damage) and a cursor. A FramePool keeps the few buffers that successive
frames are written into, so that a frame handed out stays unchanged while anything still uses it. The real CRTC reader (vkmsremote.capture), the
synthetic pattern source (vkmsremote.server.pattern) and the benchmarks' sources implement it, so the
server cannot tell them apart. This module imports nothing of vkmsremote: rfb, capture, input, server and
bench all build on it (docs/architecture.md).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol, runtime_checkable

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

@runtime_checkable
class MultiScreenSource(Protocol):
    """A FrameSource made of several monitors side by side (vkmsremote.capture.multi). Optional: the server
    reports one screen covering the whole frame for other sources."""

    def screens(self) -> tuple[tuple[int, Rect], ...]:
        """(a stable number of the monitor, its area in the frame) for each monitor shown in the last frame."""
        ...


@dataclass(frozen=True, slots=True)
class Placement:
    """A CRTC's picture (x, y, width, height) inside the framebuffer it scans out of (fb_width x fb_height);
    for a Wayland compositor (vkmsremote.desktop.wayland), its output's rectangle inside the layout's bounding
    box. Either way: where the connector lies in what an absolute pointer spans."""

    x: int
    y: int
    width: int
    height: int
    fb_width: int
    fb_height: int


# --- reusing frame buffers ----------------------------------------------------------------------------------

POOL_BUFFERS = 4
"""Buffers a FramePool keeps: the current frame, a few still referenced elsewhere (a session encoding an
older one), one to write the next frame into. When all are in use a new one is allocated (not kept)."""
POOL_HISTORY = 8
"""Frames whose damage a FramePool remembers: a free buffer at most this many frames old is patched, an
older one is copied whole."""
FULL_COPY_FRACTION = 0.5
"""Copy the whole frame when the damage to patch adds up to at least this fraction of the screen (one
contiguous copy beats many overlapping ones)."""


class PooledBuffer:
    """One (height, width, 4) buffer of a :class:`FramePool` and the generation of the frame it holds.

    It is in use while anything but this object references ``array``: every numpy view of it, slices
    included, references the array owning the memory, so the reference count tells.
    """

    __slots__ = ("_own_refs", "array", "generation", "views")

    def __init__(self, shape: tuple[int, ...], make_views: Callable[[Pixels], tuple[Any, ...]] | None = None) -> None:
        self.array: Pixels = np.zeros(shape, np.uint8)
        self.views = make_views(self.array) if make_views is not None else ()  # the owner's own views
        self.generation = -1  # the pool generation whose frame it holds (-1: nothing yet)
        self._own_refs = sys.getrefcount(self.array)  # this object's references (views included) + 1

    def free(self) -> bool:
        """Nothing outside this object references the buffer."""
        return sys.getrefcount(self.array) <= self._own_refs


class FramePool:
    """A few buffers of one shape for successive frames, each brought up to date by copying only what
    changed since the frame it holds, so a frame handed out (a view of its buffer) is never written while
    it is referenced, and a 16x16 change costs a 16x16 copy rather than a copy of the whole screen.

    The owner numbers frames with :meth:`record` (what changed, None: unknown), takes a buffer with
    :meth:`free_buffer`, brings it up to date with :meth:`catch_up` and marks it with the generation it
    now holds. Used by the damage tracker (capture) and the hub's snapshots (server); single-threaded.
    """

    def __init__(self, shape: tuple[int, ...], *, make_views: Callable[[Pixels], tuple[Any, ...]] | None = None,
                 max_buffers: int = POOL_BUFFERS, history: int = POOL_HISTORY) -> None:
        self.shape = shape
        self.buffers: list[PooledBuffer] = []
        self.generation = 0
        self._make_views = make_views
        self._max_buffers = max_buffers
        self._history: deque[tuple[int, tuple[Rect, ...] | None]] = deque(maxlen=history)

    def new_buffer(self) -> PooledBuffer:
        """A new buffer, kept in the pool if there is room."""
        buf = PooledBuffer(self.shape, self._make_views)
        if len(self.buffers) < self._max_buffers:
            self.buffers.append(buf)
        return buf

    def free_buffer(self) -> PooledBuffer:
        """The free buffer holding the newest frame, or a new one if every buffer is in use."""
        best: PooledBuffer | None = None
        for buf in self.buffers:
            if buf.free() and (best is None or buf.generation > best.generation):
                best = buf
        return best if best is not None else self.new_buffer()

    def record(self, damage: tuple[Rect, ...] | None) -> int:
        """A new frame: ``damage`` is what changed since the previous one (None: unknown). Its generation."""
        self.generation += 1
        self._history.append((self.generation, damage))
        return self.generation

    def changed_since(self, generation: int) -> set[Rect] | None:
        """What changed after frame ``generation`` up to the newest; None: unknown, or so much that one
        copy of the whole frame is cheaper."""
        history = self._history
        if not history or generation < history[0][0] - 1:
            return None
        rects: set[Rect] = set()
        for gen, damage in history:
            if gen <= generation:
                continue
            if damage is None:
                return None
            rects.update(damage)
        if sum(r.area for r in rects) >= FULL_COPY_FRACTION * self.shape[0] * self.shape[1]:
            return None
        return rects

    def catch_up(self, buf: PooledBuffer, src: Pixels) -> bool:
        """Copy into ``buf`` what changed in ``src`` (the newest frame) since the frame ``buf`` holds; True
        if that meant copying it whole. The caller sets ``buf.generation`` once ``buf`` holds its frame."""
        rects = self.changed_since(buf.generation)
        dst = buf.array
        if rects is None:
            np.copyto(dst, src)
            return True
        for r in rects:
            np.copyto(dst[r.y:r.y + r.h, r.x:r.x + r.w], src[r.y:r.y + r.h, r.x:r.x + r.w])
        return False

    def clear(self) -> None:
        """Forget every buffer and what changed (the frames they hold are no longer wanted)."""
        self.buffers = []
        self._history.clear()

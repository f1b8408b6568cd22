"""Several CRTCs as one desktop (``serve --connector XR-0,XR-1``): one RFB framebuffer with a screen per
connector, as TigerVNC's multi-head and rfbproto's ExtendedDesktopSize screen list describe it.

The connectors are laid out side by side in the order given, top-aligned; a connector whose CRTC is off
("no signal") takes no room and has no screen, so turning XR-1 off (``output remove XR-1``) changes the
desktop's size and its screen list for every client, and lighting it again brings its screen back. Each
screen keeps its index in the list given as its id (stable across reconnects and hotplugs).

Each reader is waited on at its own pace (one pending ``next_frame`` per reader); a frame from one of them
is copied into the shared picture where that reader's screen lies, and its damage moved there.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import numpy as np

from vkmsremote.frame import Cursor, Frame, FrameSource, Pixels, Rect


class MultiSource:
    """Implements vkmsremote.frame.FrameSource (and the optional ``screens()``) over several sources."""

    def __init__(self, sources: Sequence[FrameSource], names: Sequence[str]) -> None:
        if len(sources) < 2 or len(names) != len(sources):
            raise ValueError("a multi-screen source needs two sources or more, each with a name")
        self.sources = list(sources)
        self.names = list(names)
        self._frames: list[Frame | None] = [None] * len(sources)
        self._tasks: list[asyncio.Task[Frame] | None] = [None] * len(sources)
        self._layout: tuple[tuple[int, Rect], ...] = ()
        self._picture: Pixels = np.zeros((1, 1, 4), np.uint8)
        self._serial = -1
        self._cursor: Cursor | None = None
        self._cursor_key: tuple[int, int, int] | None = None

    # --- FrameSource -----------------------------------------------------------------------------------

    @property
    def desktop_name(self) -> str:
        return " + ".join(self.names)

    def screens(self) -> tuple[tuple[int, Rect], ...]:
        """(index of the source, its area in the picture) for each lit source, left to right."""
        return self._layout

    def cursor(self) -> Cursor | None:
        return self._cursor

    def wake(self) -> None:
        for s in self.sources:
            wake = getattr(s, "wake", None)
            if wake is not None:
                wake()

    async def close(self) -> None:
        for t in self._tasks:
            if t is not None:
                t.cancel()
        await asyncio.gather(*(t for t in self._tasks if t is not None), return_exceptions=True)
        self._tasks = [None] * len(self.sources)
        for s in self.sources:
            await s.close()

    async def next_frame(self) -> Frame:
        if self._serial < 0:
            frames = await asyncio.gather(*(s.next_frame() for s in self.sources))
            for i, f in enumerate(frames):
                self._frames[i] = f
            return self._compose(None)
        for i, s in enumerate(self.sources):
            if self._tasks[i] is None:
                self._tasks[i] = asyncio.ensure_future(s.next_frame())
        pending = [t for t in self._tasks if t is not None]
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        updated: dict[int, tuple[Rect, ...] | None] = {}
        for i, t in enumerate(self._tasks):
            if t is not None and t.done():
                self._tasks[i] = None
                frame = t.result()  # a source's failure ends the whole desktop (the hub reports it)
                self._frames[i] = frame
                updated[i] = frame.damage
        return self._compose(updated)

    # --- composing -------------------------------------------------------------------------------------

    def _lit(self, i: int) -> bool:
        return not getattr(self.sources[i], "no_signal", False)

    def _compose(self, updated: dict[int, tuple[Rect, ...] | None] | None) -> Frame:
        layout: list[tuple[int, Rect]] = []
        x = 0
        for i, f in enumerate(self._frames):
            if f is not None and self._lit(i):
                layout.append((i, Rect(x, 0, f.width, f.height)))
                x += f.width
        if not layout:  # everything dark: show the first source's "no signal" picture
            f = self._frames[0]
            assert f is not None
            layout = [(0, Rect(0, 0, f.width, f.height))]
        width, height = sum(r.w for _, r in layout), max(r.h for _, r in layout)
        damage: list[Rect] | None = []
        if tuple(layout) != self._layout or updated is None or self._picture.shape[:2] != (height, width):
            self._layout = tuple(layout)
            self._picture = np.zeros((height, width, 4), np.uint8)
            updated = {i: None for i, _ in layout}
            damage = None
        for i, area in layout:
            if i not in updated:
                continue
            f = self._frames[i]
            assert f is not None
            rects = updated[i]
            if rects is None:
                self._picture[area.y:area.y + area.h, area.x:area.x + area.w] = f.pixels
                rects = (Rect(0, 0, area.w, area.h),)
            else:  # clipped to the source's picture, as the hub clips a single source's damage
                rects = tuple(c for c in (r.clip(area.w, area.h) for r in rects) if c is not None)
                for r in rects:
                    self._picture[area.y + r.y:area.y + r.y + r.h, area.x + r.x:area.x + r.x + r.w] = \
                        f.pixels[r.y:r.y + r.h, r.x:r.x + r.w]
            if damage is not None:
                damage.extend(Rect(area.x + r.x, area.y + r.y, r.w, r.h) for r in rects)
        self._follow_cursor()
        self._serial += 1
        return Frame(self._picture, self._serial, None if damage is None else tuple(damage))

    def _follow_cursor(self) -> None:
        """The cursor of the first screen that shows one, moved to where that screen lies."""
        for i, area in self._layout:
            c = self.sources[i].cursor()
            if c is not None and c.visible:
                key = (i, c.serial, area.x)
                if key != self._cursor_key:
                    self._cursor_key = key
                    serial = (self._cursor.serial + 1) if self._cursor is not None else 0
                    self._cursor = dataclasses.replace(c, x=c.x + area.x, y=c.y + area.y, serial=serial)
                return
        if self._cursor is not None:
            self._cursor, self._cursor_key = None, None

"""PatternSource: an animated synthetic FrameSource, so ``vkmsremote serve --source pattern`` runs anywhere.

The picture is a colour gradient with a bouncing square and a frame counter; damage covers exactly what
moved. With ``full_motion`` the gradient also scrolls and every pixel changes in every frame (the worst
case for a VNC server, used by scripts/bench_server.py). It offers an arrow cursor and can be resized by
clients (SetDesktopSize) unless made with ``resizable=False``.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from vkmsremote.frame import MAX_RESIZE, Cursor, Frame, Pixels, Rect
from vkmsremote.rfb.messages import MAX_DESKTOP_DIMENSION, ExtendedDesktopSizeStatus

# 3x5 digits, one string of 15 bits per digit (rows top to bottom).
_DIGITS = [
    "111101101101111", "010110010010111", "111001111100111", "111001111001111", "101101111001001",
    "111100111001111", "111100111101111", "111001001001001", "111101111101111", "111101111001111",
]
_GLYPHS = np.array([[int(b) for b in d] for d in _DIGITS], dtype=bool).reshape(10, 5, 3)
COUNTER_DIGITS = 8
DIGIT_SCALE = 6
BOX = 160


def _arrow_cursor() -> Pixels:
    """A 12x19 white arrow with a black outline, B, G, R, A straight alpha."""
    h, w = 19, 12
    img = np.zeros((h, w, 4), dtype=np.uint8)
    for y in range(h):
        span = min(y + 1, w) if y < 13 else max(0, 4 - (y - 13))
        if span:
            img[y, :span, 3] = 255
            img[y, 1:max(1, span - 1), 0:3] = 255
    img[h - 1:, :, :] = 0
    return img


class PatternSource:
    def __init__(self, width: int = 1920, height: int = 1080, *, fps: float = 30.0, full_motion: bool = False,
                 resizable: bool = True, animate: bool = True) -> None:
        if not (16 <= width <= MAX_DESKTOP_DIMENSION and 16 <= height <= MAX_DESKTOP_DIMENSION):
            raise ValueError(f"pattern size {width}x{height} out of range")
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.fps = fps
        self.full_motion = full_motion
        self.resizable = resizable
        self.animate = animate
        self._serial = 0
        self._next_deadline = 0.0
        self._pending_size: tuple[int, int] | None = None
        self._cursor = Cursor(_arrow_cursor(), 0, 0, 0, 0, True, 1)
        self._set_size(width, height)

    # --- FrameSource -----------------------------------------------------------------------------------

    @property
    def desktop_name(self) -> str:
        return f"vkmsremote pattern {self.width}x{self.height}"

    def cursor(self) -> Cursor | None:
        return self._cursor

    async def close(self) -> None:
        """Nothing to release."""

    async def next_frame(self) -> Frame:
        if self._serial == 0:
            self._serial = 1
            self._draw(1)
            self._next_deadline = time.monotonic() + 1 / self.fps
            return Frame(self._buf, self._serial, None)
        while not self.animate and self._pending_size is None:
            await asyncio.sleep(1 / self.fps)
        delay = self._next_deadline - time.monotonic()
        await asyncio.sleep(max(delay, 0))  # always suspend, even when behind schedule
        now = time.monotonic()
        self._next_deadline = max(self._next_deadline + 1 / self.fps, now)
        self._serial += 1
        if self._pending_size is not None:
            self._set_size(*self._pending_size)
            self._pending_size = None
            self._draw(self._serial)
            return Frame(self._buf, self._serial, None)
        return Frame(self._buf, self._serial, self._draw(self._serial))

    # --- ResizableSource -------------------------------------------------------------------------------

    def request_resize(self, width: int, height: int) -> int:
        if not self.resizable:
            return ExtendedDesktopSizeStatus.PROHIBITED
        if not (16 <= width <= MAX_RESIZE and 16 <= height <= MAX_RESIZE):
            return ExtendedDesktopSizeStatus.INVALID_LAYOUT
        self._pending_size = (width, height)
        return ExtendedDesktopSizeStatus.OK

    # --- drawing -----------------------------------------------------------------------------------------

    def _set_size(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        period = 256
        xs = np.arange(width + period, dtype=np.uint32)
        ys = np.arange(height, dtype=np.uint32)
        wide = np.empty((height, width + period, 4), dtype=np.uint8)
        wide[:, :, 0] = ((xs[None, :] * 255 // max(width - 1, 1)) ^ (ys[:, None] // 32 * 16)).astype(np.uint8)
        wide[:, :, 1] = (ys[:, None] * 255 // max(height - 1, 1)).astype(np.uint8)
        wide[:, :, 2] = (((xs[None, :] // 64) + (ys[:, None] // 64)) % 2 * 96 + 64).astype(np.uint8)
        wide[:, :, 3] = 0
        self._wide = wide
        self._buf = np.array(wide[:, :width], copy=True)
        self._box = Rect(0, 0, 0, 0)
        self._counter = Rect(8, 8, COUNTER_DIGITS * 4 * DIGIT_SCALE, 5 * DIGIT_SCALE)
        self._draw(0)

    def _box_at(self, n: int) -> Rect:
        size = min(BOX, self.width // 2, self.height // 2)
        span_x, span_y = max(self.width - size, 1), max(self.height - size, 1)
        x = (n * 7) % (2 * span_x)
        y = (n * 5) % (2 * span_y)
        return Rect(x if x < span_x else 2 * span_x - x, y if y < span_y else 2 * span_y - y, size, size)

    def _draw(self, n: int) -> tuple[Rect, ...]:
        buf = self._buf
        old_box = self._box
        if self.full_motion:
            off = n % 256
            np.copyto(buf, self._wide[:, off:off + self.width])
        else:
            b = old_box
            buf[b.y:b.y + b.h, b.x:b.x + b.w] = self._wide[b.y:b.y + b.h, b.x:b.x + b.w]
        box = self._box_at(n)
        hue = np.array([(n * 3) % 256, 255 - (n * 5) % 256, 200, 0], dtype=np.uint8)
        buf[box.y:box.y + box.h, box.x:box.x + box.w] = hue
        self._box = box
        self._draw_counter(n)
        if self.full_motion:
            # Guarantee that every pixel differs from the previous frame, even where the picture is flat:
            # the lowest blue bit carries the frame parity.
            words = buf.view(np.uint32)  # little-endian B, G, R, X: bit 0 is blue's lowest bit
            np.bitwise_and(words, np.uint32(0xFFFFFFFE), out=words)
            if n & 1:
                np.bitwise_or(words, np.uint32(1), out=words)
            return (Rect(0, 0, self.width, self.height),)
        return (old_box, box, self._counter)

    def _draw_counter(self, n: int) -> None:
        c = self._counter.clip(self.width, self.height)
        if c is None:
            return
        text = f"{n % 10 ** COUNTER_DIGITS:0{COUNTER_DIGITS}d}"
        glyphs = _GLYPHS[[int(ch) for ch in text]]  # (digits, 5, 3)
        spaced = np.zeros((5, COUNTER_DIGITS * 4), dtype=bool)
        for i in range(COUNTER_DIGITS):
            spaced[:, i * 4:i * 4 + 3] = glyphs[i]
        mask = np.kron(spaced, np.ones((DIGIT_SCALE, DIGIT_SCALE), dtype=bool))[:c.h, :c.w]
        region = self._buf[c.y:c.y + c.h, c.x:c.x + c.w]
        region[:] = (0, 0, 0, 0)
        region[mask] = (255, 255, 255, 0)

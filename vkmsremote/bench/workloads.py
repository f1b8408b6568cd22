"""Benchmark workloads: what a desktop shows, frame by frame, each frame carrying its frame number.

A workload draws frame ``n`` into a canvas that holds frame ``n - 1`` and returns what it changed
(its damage). The frame number is written in the top-left corner by
:func:`vkmsremote.capture.driver.encode_frame_number` (CODE_WIDTH x CODE_HEIGHT pixels), so a client
can read back which frame it is showing and the benchmark can time each frame from page flip to client.

Workloads (all over the same static "desktop", samples.text_like):

* ``static``: nothing changes after frame 0 (no page flips at all; measures the idle cost).
* ``typing``: one 8x16 character and the caret move per frame in an editor area (a few hundred pixels).
* ``scrolling``: a text document scrolls up by SCROLL_STEP pixels per frame below a fixed header.
* ``window-drag``: a window of about 40 % x 45 % of the screen moves over the desktop.
* ``full-motion``: video-like content: every pixel changes in every frame.
* ``cursor``: only a software-drawn arrow pointer moves (besides the frame number).

Drawing is numpy slicing only; the costly parts (desktop, document, video texture) are made once.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from vkmsremote.capture.driver import CODE_HEIGHT, CODE_WIDTH, encode_frame_number
from vkmsremote.errors import UsageError
from vkmsremote.frame import Pixels, Rect
from vkmsremote.rfb.encodings import samples

HEADER = 40
"""Rows at the top that only the frame number changes (the scrolling area and windows stay below)."""
SCROLL_STEP = 6
GLYPH_W, GLYPH_H = 8, 16
CODE_RECT = Rect(0, 0, CODE_WIDTH, CODE_HEIGHT)
MIN_SIZE = (CODE_WIDTH + 128, 240)


def copy_rect(dst: Pixels, src: Pixels, r: Rect) -> None:
    dst[r.y:r.y + r.h, r.x:r.x + r.w] = src[r.y:r.y + r.h, r.x:r.x + r.w]


class Workload:
    """Base class: a static desktop with the frame number; subclasses animate something on it."""

    name: ClassVar[str] = ""
    changes: ClassVar[bool] = True
    """False if no frame after the first differs (the driver then never flips)."""
    small: ClassVar[bool] = False
    """True if each frame changes only a small area (the latency aim for small damage applies)."""

    def __init__(self, width: int, height: int) -> None:
        if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
            raise UsageError(f"workload size {width}x{height} is too small",
                             hint=f"use at least {MIN_SIZE[0]}x{MIN_SIZE[1]} (the frame number needs room)")
        self.width, self.height = width, height
        self.base = samples.text_like(height, width)
        self.base[:HEADER] = (90, 60, 40, 0)

    def first(self, canvas: Pixels) -> None:
        """Draw frame 0 entirely."""
        np.copyto(canvas, self.base)
        self._draw_content(0, canvas)
        encode_frame_number(canvas, 0)

    def draw(self, n: int, canvas: Pixels) -> tuple[Rect, ...]:
        """Turn ``canvas`` (frame n - 1) into frame ``n``; return the changed rectangles."""
        damage = self._step(n, canvas)
        encode_frame_number(canvas, n)
        return (*damage, CODE_RECT)

    def _draw_content(self, n: int, canvas: Pixels) -> None:
        """What frame ``n`` shows besides the desktop (frame 0 only; later frames go through _step)."""

    def _step(self, n: int, canvas: Pixels) -> tuple[Rect, ...]:
        return ()


class Static(Workload):
    name = "static"
    changes = False


class Typing(Workload):
    """One character per frame at the caret, which then moves one cell right (wrapping by line)."""

    name = "typing"
    small = True

    def __init__(self, width: int, height: int) -> None:
        super().__init__(width, height)
        rng = np.random.default_rng(11)
        # 64 glyphs of 8x16: ink strokes with a grey halo, like samples.text_like's cells.
        ink = rng.random((64, GLYPH_H, GLYPH_W)) < 0.22
        ink[:, :3] = ink[:, 14:] = False
        ink[:, :, 0] = ink[:, :, 7] = False
        self.glyphs = np.where(ink[..., None], np.uint8(30), np.uint8(250)).repeat(4, axis=3)
        self.glyphs[..., 3] = 0
        self.x0, self.y0 = 24, HEADER + 24
        self.cols = max(1, (width - 2 * self.x0) // GLYPH_W - 1)
        self.rows = max(1, (height - self.y0 - 24) // GLYPH_H)
        self.paper = np.full((self.rows * GLYPH_H, (self.cols + 1) * GLYPH_W, 4), 250, np.uint8)
        self.paper[..., 3] = 0

    def _cell(self, i: int) -> tuple[int, int]:
        i %= self.cols * self.rows
        return self.x0 + (i % self.cols) * GLYPH_W, self.y0 + (i // self.cols) * GLYPH_H

    def _draw_content(self, n: int, canvas: Pixels) -> None:
        ph, pw = self.paper.shape[:2]
        canvas[self.y0:self.y0 + ph, self.x0:self.x0 + pw] = self.paper
        self._caret(canvas, 0)

    def _caret(self, canvas: Pixels, i: int) -> Rect:
        x, y = self._cell(i)
        canvas[y + 1:y + GLYPH_H - 1, x:x + 2] = (0, 0, 0, 0)
        return Rect(x, y, GLYPH_W, GLYPH_H)

    def _step(self, n: int, canvas: Pixels) -> tuple[Rect, ...]:
        i = n - 1
        x, y = self._cell(i)
        if i % self.cols == 0:  # a new line: clear it (the text wraps round to the top when full)
            canvas[y:y + GLYPH_H, self.x0:self.x0 + (self.cols + 1) * GLYPH_W] = 250
            canvas[y:y + GLYPH_H, self.x0:self.x0 + (self.cols + 1) * GLYPH_W, 3] = 0
            typed = Rect(self.x0, y, (self.cols + 1) * GLYPH_W, GLYPH_H)
        else:
            typed = Rect(x, y, GLYPH_W, GLYPH_H)
        canvas[y:y + GLYPH_H, x:x + GLYPH_W] = self.glyphs[(n * 7) % len(self.glyphs)]
        return typed, self._caret(canvas, i + 1)


class Scrolling(Workload):
    """A text document scrolling up by SCROLL_STEP pixels per frame under the header."""

    name = "scrolling"

    def __init__(self, width: int, height: int) -> None:
        super().__init__(width, height)
        self.area = Rect(0, HEADER, width, height - HEADER)
        doc = samples.text_like(2 * self.area.h, width, seed=5)
        self.doc_h = doc.shape[0]
        self.doc = np.concatenate([doc, doc[:self.area.h]])  # wraps round without a seam

    def _show(self, n: int, canvas: Pixels) -> None:
        off = (n * SCROLL_STEP) % self.doc_h
        a = self.area
        canvas[a.y:a.y + a.h] = self.doc[off:off + a.h]

    def _draw_content(self, n: int, canvas: Pixels) -> None:
        self._show(n, canvas)

    def _step(self, n: int, canvas: Pixels) -> tuple[Rect, ...]:
        self._show(n, canvas)
        return (self.area,)


class WindowDrag(Workload):
    """A window (title bar and text) dragged across the desktop, bouncing off the screen edges."""

    name = "window-drag"
    speed = (11, 7)

    def __init__(self, width: int, height: int) -> None:
        super().__init__(width, height)
        ww, wh = width * 2 // 5, height * 9 // 20
        win = samples.text_like(wh, ww, seed=9)
        win[:24] = (160, 90, 40, 0)
        win[:, :2] = win[:, -2:] = win[:2] = win[-2:] = (60, 60, 60, 0)
        self.window = win
        self.span = (width - ww, height - HEADER - wh)
        self.rect = self._at(0)

    def _at(self, n: int) -> Rect:
        wh, ww = self.window.shape[:2]
        pos = []
        for speed, span in zip(self.speed, self.span, strict=True):
            p = (n * speed) % (2 * max(span, 1))
            pos.append(p if p < span else 2 * span - p)
        return Rect(pos[0], HEADER + pos[1], ww, wh)

    def _draw_content(self, n: int, canvas: Pixels) -> None:
        self.rect = r = self._at(n)
        canvas[r.y:r.y + r.h, r.x:r.x + r.w] = self.window

    def _step(self, n: int, canvas: Pixels) -> tuple[Rect, ...]:
        old = self.rect
        copy_rect(canvas, self.base, old)
        self._draw_content(n, canvas)
        return old, self.rect


class FullMotion(Workload):
    """Video-like content sliding diagonally: every pixel changes in every frame."""

    name = "full-motion"
    margin = 64

    def __init__(self, width: int, height: int) -> None:
        super().__init__(width, height)
        self.texture = samples.photo_like(height + self.margin, width + self.margin)

    def _show(self, n: int, canvas: Pixels) -> None:
        m = self.margin
        dx, dy = (n * 5) % m, (n * 3) % m
        if (n // m) % 2:  # back and forth, so consecutive frames never repeat
            dx, dy = m - 1 - dx, m - 1 - dy
        np.copyto(canvas, self.texture[dy:dy + self.height, dx:dx + self.width])

    def _draw_content(self, n: int, canvas: Pixels) -> None:
        self._show(n, canvas)

    def _step(self, n: int, canvas: Pixels) -> tuple[Rect, ...]:
        self._show(n, canvas)
        return (Rect(0, 0, self.width, self.height),)


def arrow() -> tuple[Pixels, np.ndarray]:
    """A 12x19 arrow pointer: (pixels B, G, R, X; opaque mask)."""
    h, w = 19, 12
    mask = np.zeros((h, w), bool)
    for y in range(h):
        span = min(y + 1, w) if y < 13 else max(0, 4 - (y - 13))
        mask[y, :span] = True
    mask[h - 1] = False
    img = np.zeros((h, w, 4), np.uint8)
    fill = np.zeros_like(mask)
    fill[1:-1, 1:] = mask[1:-1, 1:] & np.roll(mask, -1, axis=1)[1:-1, 1:] & mask[2:, 1:]
    img[fill] = (255, 255, 255, 0)
    return img, mask


class CursorMotion(Workload):
    """Only a software pointer moves, along an ellipse (about 12 pixels per frame)."""

    name = "cursor"
    small = True

    def __init__(self, width: int, height: int) -> None:
        super().__init__(width, height)
        self.sprite, self.mask = arrow()
        self.rect = self._at(0)

    def _at(self, n: int) -> Rect:
        h, w = self.mask.shape
        cx, cy = self.width / 2, (self.height + HEADER) / 2
        rx, ry = self.width / 3, (self.height - HEADER) / 3
        t = n * 12 / (2 * np.pi * max(rx, ry)) * 2 * np.pi
        return Rect(int(cx + rx * np.cos(t)), int(cy + ry * np.sin(t)), w, h)

    def _draw_content(self, n: int, canvas: Pixels) -> None:
        self.rect = r = self._at(n)
        region = canvas[r.y:r.y + r.h, r.x:r.x + r.w]
        region[self.mask] = self.sprite[self.mask]

    def _step(self, n: int, canvas: Pixels) -> tuple[Rect, ...]:
        old = self.rect
        copy_rect(canvas, self.base, old)
        self._draw_content(n, canvas)
        return old, self.rect


WORKLOADS: dict[str, type[Workload]] = {
    cls.name: cls for cls in (Static, Typing, Scrolling, WindowDrag, FullMotion, CursorMotion)
}


def make_workload(name: str, width: int, height: int) -> Workload:
    cls = WORKLOADS.get(name)
    if cls is None:
        raise UsageError(f"unknown workload {name!r}", hint=f"choose from {', '.join(WORKLOADS)}")
    return cls(width, height)

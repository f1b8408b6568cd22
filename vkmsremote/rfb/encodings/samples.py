"""Synthetic XRGB8888 content for encoder tests and benchmarks (no external data).

* :func:`photo_like`: smooth colour fields with texture and mild noise; ``t`` moves it (full motion).
* :func:`text_like`: a light UI with a title bar, dark "glyph" strokes with anti-aliased grey edges,
  and a few coloured widgets: few colours, long runs, many small details.
* :func:`solid`: one colour.
"""

from __future__ import annotations

import numpy as np

from vkmsremote.frame import Pixels


def photo_like(height: int, width: int, t: int = 0, seed: int = 1) -> Pixels:
    rng = np.random.default_rng(seed + t)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    phase = np.float32(t * 0.07)
    out = np.empty((height, width, 4), dtype=np.uint8)
    fields = (
        0.5 + 0.35 * np.sin(6.0 * x + 3.0 * y + phase) + 0.15 * np.sin(40.0 * x * y + phase),
        0.5 + 0.35 * np.cos(5.0 * y - 2.0 * x + phase) + 0.1 * np.sin(23.0 * (x + y) - phase),
        0.5 + 0.3 * np.sin(9.0 * np.hypot(x - 0.5, y - 0.5) - phase) + 0.1 * np.cos(31.0 * x),
    )
    for channel, field in enumerate(fields):  # B, G, R
        noisy = field * 235.0 + rng.normal(0.0, 3.0, (height, width)).astype(np.float32)
        out[..., channel] = np.clip(noisy, 0, 255).astype(np.uint8)
    out[..., 3] = 0
    return out


def text_like(height: int, width: int, seed: int = 2) -> Pixels:
    rng = np.random.default_rng(seed)
    out = np.empty((height, width, 4), dtype=np.uint8)
    out[...] = (242, 240, 238, 0)
    out[: min(height, 24)] = (90, 60, 40, 0)  # title bar
    # lines of "text": glyph cells 8x14 with random strokes, anti-aliased by a grey halo
    glyphs = rng.random((height // 16 + 1, width // 8 + 1)) < 0.55
    strokes = rng.integers(0, 4, size=glyphs.shape)
    cell = np.zeros((height, width), dtype=np.uint8)  # 0 background, 1 halo, 2 ink
    for kind, (y0, y1, x0, x1) in enumerate(((2, 12, 2, 4), (2, 4, 1, 7), (6, 8, 1, 7), (10, 12, 4, 6))):
        mask_cells = glyphs & (strokes == kind)
        cy, cx = np.nonzero(mask_cells)
        for dy in range(y0 - 1, y1 + 1):
            for dx in range(x0 - 1, x1 + 1):
                level = 2 if (y0 <= dy < y1 and x0 <= dx < x1) else 1
                yy, xx = cy * 16 + dy + 28, cx * 8 + dx
                ok = (yy < height) & (xx < width)
                np.maximum.at(cell, (yy[ok], xx[ok]), level)
    out[cell == 1] = (170, 168, 166, 0)
    out[cell == 2] = (30, 30, 30, 0)
    # widgets: a few coloured buttons
    for i in range(min(8, max(1, width // 120))):
        bx, by = 20 + i * 110, max(0, height - 40)
        out[by:by + 24, bx:bx + 90] = (200, 120, 40, 0) if i % 2 else (60, 160, 60, 0)
    return out


def solid(height: int, width: int, bgrx: tuple[int, int, int, int] = (64, 128, 192, 0)) -> Pixels:
    out = np.empty((height, width, 4), dtype=np.uint8)
    out[...] = bgrx
    return out


def noise(height: int, width: int, seed: int = 3) -> Pixels:
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 256, size=(height, width, 4), dtype=np.uint8)
    out[..., 3] = 0
    return out

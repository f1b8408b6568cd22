"""The frame shown while the CRTC is off: dark grey with "NO SIGNAL" in large block letters."""

from __future__ import annotations

import numpy as np

from vkmsremote.frame import Pixels

# 5x7 glyphs, one string per row, '#' = set.
_GLYPHS: dict[str, tuple[str, ...]] = {
    "N": ("#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "I": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "#####"),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".###."),
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    " ": (".....",) * 7,
}

BACKGROUND = (0x20, 0x20, 0x20)  # B, G, R
FOREGROUND = (0xC0, 0xC0, 0xC0)


def text_mask(text: str) -> np.ndarray:
    """(7, 6 * len(text) - 1) bool bitmap of ``text`` in the 5x7 font (one blank column between glyphs)."""
    cols = []
    for i, ch in enumerate(text):
        glyph = np.array([[c == "#" for c in row] for row in _GLYPHS[ch]], bool)
        if i:
            cols.append(np.zeros((7, 1), bool))
        cols.append(glyph)
    return np.concatenate(cols, axis=1)


def no_signal_frame(width: int, height: int) -> Pixels:
    frame = np.empty((height, width, 4), np.uint8)
    frame[..., :3] = BACKGROUND
    frame[..., 3] = 0
    mask = text_mask("NO SIGNAL")
    scale = max(1, min(width // (mask.shape[1] * 2), height // (mask.shape[0] * 6)))
    big = np.kron(mask, np.ones((scale, scale), bool))
    bh, bw = big.shape
    if bw <= width and bh <= height:
        y0, x0 = (height - bh) // 2, (width - bw) // 2
        region = frame[y0:y0 + bh, x0:x0 + bw, :3]
        region[big] = FOREGROUND
    return frame

"""Damage: what changed between the previous frame and the new one, found by comparing tiles, and a
stable copy of the frame that is updated only where it changed.

Theory of operation (all vectorised; Python loops run per changed rectangle, never per pixel or tile):
1. Compare the new frame with the stable copy word by word (two pixels per uint64 when the width is
   even) into a preallocated bool mask, padded to whole tiles with False.
2. Tile flags: the mask's bytes viewed as uint64 are OR-reduced over each tile's rows, then per tile.
3. Changed tiles -> horizontal runs per tile row -> runs with the same span in consecutive tile rows
   merged into one rectangle.
4. Each rectangle is cropped to the first/last changed row and column (pixel exact) and only that
   region is copied into the stable copy.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vkmsremote.server.source import Pixels, Rect

DEFAULT_TILE = 64


def _words(frame: Pixels, word: type[np.unsignedinteger]) -> npt.NDArray[np.unsignedinteger]:
    """(h, w, 4) uint8 (rows may be strided by a pitch) -> (h, n) words, a view whenever possible."""
    h, w, _ = frame.shape
    rows = frame.reshape(h, w * 4)  # a view when each row's pixels are contiguous
    if rows.strides[1] != 1:
        rows = np.ascontiguousarray(rows)
    return rows.view(word)


class DamageTracker:
    """Keeps ``frame``, a stable (height, width, 4) copy of the last frame, and reports what changed.

    ``update(new)`` compares ``new`` against ``frame``, copies only the changed rectangles into it and
    returns them. ``frame`` is never replaced, only written where it changed.
    """

    def __init__(self, width: int, height: int, tile: int = DEFAULT_TILE) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size {width}x{height} is empty")
        if tile <= 0 or tile % 16:
            raise ValueError(f"tile size {tile} must be a positive multiple of 16")
        self.width, self.height, self.tile = width, height, tile
        self.frame: Pixels = np.zeros((height, width, 4), np.uint8)
        self._word: type[np.unsignedinteger] = np.uint64 if width % 2 == 0 else np.uint32
        self._px_per_word = 2 if width % 2 == 0 else 1
        self._words_per_tile = tile // self._px_per_word  # a multiple of 8: the mask rows view as uint64
        self._tiles_x = -(-width // tile)
        self._tiles_y = -(-height // tile)
        n_words = width // self._px_per_word
        self._n_words = n_words
        self._mask = np.zeros((self._tiles_y * tile, self._tiles_x * self._words_per_tile), np.bool_)
        self._mask_view = self._mask[:height, :n_words]
        self._mask_u64 = self._mask.view(np.uint64)  # (rows, words_per_row / 8)
        self._frame_words = _words(self.frame, self._word)

    def reset(self, new: Pixels) -> None:
        """Take ``new`` entirely (first frame, or after the previous one became unknown)."""
        self._check(new)
        np.copyto(self.frame, new)

    def _check(self, new: Pixels) -> None:
        if new.shape != (self.height, self.width, 4) or new.dtype != np.uint8:
            raise ValueError(f"frame of shape {new.shape} {new.dtype} given to a "
                             f"{self.width}x{self.height} tracker")

    def changed_tiles(self, new: Pixels) -> npt.NDArray[np.bool_]:
        """Steps 1-2: (tiles_y, tiles_x) flags; leaves the word mask of ``new`` vs ``frame`` in place."""
        self._check(new)
        np.not_equal(_words(new, self._word), self._frame_words, out=self._mask_view)
        t = self.tile
        band = np.bitwise_or.reduce(self._mask_u64.reshape(self._tiles_y, t, -1), axis=1)
        flags: npt.NDArray[np.bool_] = band.reshape(self._tiles_y, self._tiles_x, -1).any(axis=2)
        return flags

    def update(self, new: Pixels) -> tuple[Rect, ...]:
        """Compare ``new`` with ``frame``, copy what changed into ``frame``; the changed rectangles."""
        flags = self.changed_tiles(new)
        if not flags.any():
            return ()
        rects = []
        for tx0, tx1, ty0, ty1 in _merge_runs(flags):
            rect = self._crop(new, tx0, tx1, ty0, ty1)
            if rect is None:  # cannot happen: a flagged tile has a changed word
                continue
            x, y, w, h = rect
            np.copyto(self.frame[y:y + h, x:x + w], new[y:y + h, x:x + w])
            rects.append(Rect(x, y, w, h))
        return tuple(rects)

    def _crop(self, new: Pixels, tx0: int, tx1: int, ty0: int, ty1: int) -> tuple[int, int, int, int] | None:
        t, wpt = self.tile, self._words_per_tile
        y0, y1 = ty0 * t, min(ty1 * t, self.height)
        w0, w1 = tx0 * wpt, min(tx1 * wpt, self._n_words)
        region = self._mask[y0:y1, w0:w1]
        # Rows: OR over each row's words (through the uint64 view of the padded mask, 8 words at a time).
        rows = np.bitwise_or.reduce(self._mask_u64[y0:y1, w0 // 8: (tx1 * wpt) // 8], axis=1)
        changed_rows = np.flatnonzero(rows)
        if changed_rows.size == 0:
            return None
        ry0, ry1 = y0 + int(changed_rows[0]), y0 + int(changed_rows[-1]) + 1
        cols = np.flatnonzero(np.logical_or.reduce(region[ry0 - y0: ry1 - y0], axis=0))
        cw0, cw1 = w0 + int(cols[0]), w0 + int(cols[-1]) + 1
        px0, px1 = cw0 * self._px_per_word, cw1 * self._px_per_word
        if self._px_per_word == 2:
            # Pixel-exact edges: the first/last word may have changed in one of its two pixels only.
            new_px = new[ry0:ry1]
            if not np.any(new_px[:, px0] != self.frame[ry0:ry1, px0]):
                px0 += 1
            if not np.any(new_px[:, px1 - 1] != self.frame[ry0:ry1, px1 - 1]):
                px1 -= 1
        return px0, ry0, px1 - px0, ry1 - ry0


def _merge_runs(flags: npt.NDArray[np.bool_]) -> list[tuple[int, int, int, int]]:
    """Changed tiles -> rectangles in tile units (tx0, tx1, ty0, ty1), half-open.

    Horizontal runs per tile row; a run with the same span as one in the tile row above extends it.
    """
    ty_n = flags.shape[0]
    padded = np.zeros((ty_n, flags.shape[1] + 2), np.int8)
    padded[:, 1:-1] = flags
    edges = np.diff(padded, axis=1)
    starts = np.argwhere(edges == 1)  # row-major: (ty, tx0), in the same order as the ends
    ends = np.argwhere(edges == -1)
    out: list[list[int]] = []
    open_spans: dict[tuple[int, int], int] = {}  # span -> index in out, for spans ending at the row above
    row_spans: dict[tuple[int, int], int] = {}
    current_row = -1
    for (ty, tx0), (_, tx1) in zip(starts.tolist(), ends.tolist(), strict=True):
        if ty != current_row:
            open_spans = row_spans if ty == current_row + 1 else {}
            row_spans = {}
            current_row = ty
        span = (tx0, tx1)
        idx = open_spans.get(span)
        if idx is not None:
            out[idx][3] = ty + 1
        else:
            idx = len(out)
            out.append([tx0, tx1, ty, ty + 1])
        row_spans[span] = idx
    return [(a, b, c, d) for a, b, c, d in out]


def full_frame_damage(width: int, height: int) -> tuple[Rect, ...]:
    return (Rect(0, 0, width, height),)

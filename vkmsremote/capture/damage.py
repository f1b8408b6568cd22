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

While most of the screen keeps changing (video, scrolling), steps 1-4 are mostly wasted: after an update
that changed at least MOSTLY_CHANGED of the tiles, the next one first compares only every
SAMPLE_STRIDE-th row. If that sample already shows most tiles changed, the frame is reported as one
rectangle, the bounding box of every changed pixel (found by scanning inwards from the four edges, so
still pixel exact at its edges), and copied whole: an eighth of the compare and one contiguous copy
instead of a full compare plus a copy per rectangle. Otherwise the full compare follows as usual.

The stable copy is never written while anyone but the tracker references it, so a frame handed out
(``frame``) can be kept as it is, without a copy, for as long as it is needed (the hub keeps it as a
snapshot that sessions encode in worker threads). The tracker's buffers are a
:class:`~vkmsremote.frame.FramePool`: an update writes into the current one only if nothing else references
it, otherwise into a free one that the pool first brings up to date by copying the rectangles changed since
that buffer was current (or the whole frame if it is too old). ``frame`` is then that buffer.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vkmsremote.frame import FramePool, Pixels, PooledBuffer, Rect

DEFAULT_TILE = 64
SAMPLE_STRIDE = 8
"""Every this-many-th row is compared by the pre-check of a frame that probably changed almost whole."""
MOSTLY_CHANGED = 0.875
"""Fraction of tiles that must have changed for a frame to be taken whole (see the module docstring)."""
_EDGE_ROWS = 8  # rows per step when scanning for the first/last changed row
_EDGE_COLS = 16  # pixels per step when scanning for the first/last changed column (one 64-byte line)


def _words(frame: Pixels, word: type[np.unsignedinteger]) -> npt.NDArray[np.unsignedinteger]:
    """(h, w, 4) uint8 (rows may be strided by a pitch) -> (h, n) words, a view whenever possible."""
    h, w, _ = frame.shape
    rows = frame.reshape(h, w * 4)  # a view when each row's pixels are contiguous
    if rows.strides[1] != 1:
        rows = np.ascontiguousarray(rows)
    return rows.view(word)


class DamageTracker:
    """Keeps ``frame``, a stable (height, width, 4) copy of the last frame, and reports what changed.

    ``update(new)`` compares ``new`` against ``frame``, copies only the changed rectangles into the
    stable copy and returns them. ``frame`` is never written while anything outside the tracker
    references it: when it is, the update goes into another buffer, which becomes ``frame``.
    """

    def __init__(self, width: int, height: int, tile: int = DEFAULT_TILE) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size {width}x{height} is empty")
        if tile <= 0 or tile % 16:
            raise ValueError(f"tile size {tile} must be a positive multiple of 16")
        self.width, self.height, self.tile = width, height, tile
        self._word: type[np.unsignedinteger] = np.uint64 if width % 2 == 0 else np.uint32
        # Each buffer keeps the views the compare uses: (words, uint32 pixels). Not a bound method: the pool
        # would then reference the tracker, and a tracker dropped (a new mode, no signal) would wait for the
        # cyclic garbage collector, with its frames, instead of being freed at once.
        word = self._word
        self._pool = FramePool((height, width, 4), make_views=lambda array: (_words(array, word),
                                                                             _words(array, np.uint32)))
        self._current = self._pool.new_buffer()
        self.buffer_switches = 0  # updates written into another buffer (for tests and benchmarks)
        self._px_per_word = 2 if width % 2 == 0 else 1
        self._words_per_tile = tile // self._px_per_word  # a multiple of 8: the mask rows view as uint64
        self._tiles_x = -(-width // tile)
        self._tiles_y = -(-height // tile)
        n_words = width // self._px_per_word
        self._n_words = n_words
        self._mask = np.zeros((self._tiles_y * tile, self._tiles_x * self._words_per_tile), np.bool_)
        self._mask_view = self._mask[:height, :n_words]
        self._mask_u64 = self._mask.view(np.uint64)  # (rows, words_per_row / 8)
        sampled = self._tiles_y * (tile // SAMPLE_STRIDE)
        self._sample = np.zeros((sampled, self._tiles_x * self._words_per_tile), np.bool_)
        self._sample_view = self._sample[:-(-height // SAMPLE_STRIDE), :n_words]
        self._sample_u64 = self._sample.view(np.uint64)
        self._try_sample = False  # the last update changed most tiles: pre-check the next one
        self.whole_frames = 0  # updates answered by the pre-check (for tests and benchmarks)

    @property
    def frame(self) -> Pixels:
        """The stable copy of the last frame: not written again while it is referenced outside the tracker."""
        return self._current.array

    def reset(self, new: Pixels) -> None:
        """Take ``new`` entirely (first frame, or after the previous one became unknown)."""
        self._check(new)
        target = self._writable(None)
        np.copyto(target.array, new)
        self._advance(target, None)

    def _writable(self, rects: tuple[Rect, ...] | None) -> PooledBuffer:
        """The buffer to write the next frame into, holding the current frame outside ``rects`` (None:
        the caller overwrites every pixel, so its old content does not matter)."""
        current = self._current
        if current.free():
            return current
        self.buffer_switches += 1
        target = self._pool.free_buffer()
        if rects is not None:
            self._pool.catch_up(target, current.array)
        return target

    def _advance(self, target: PooledBuffer, rects: tuple[Rect, ...] | None) -> None:
        target.generation = self._pool.record(rects)
        self._current = target

    def _check(self, new: Pixels) -> None:
        if new.shape != (self.height, self.width, 4) or new.dtype != np.uint8:
            raise ValueError(f"frame of shape {new.shape} {new.dtype} given to a "
                             f"{self.width}x{self.height} tracker")

    def changed_tiles(self, new: Pixels) -> npt.NDArray[np.bool_]:
        """Steps 1-2: (tiles_y, tiles_x) flags; leaves the word mask of ``new`` vs ``frame`` in place."""
        self._check(new)
        np.not_equal(_words(new, self._word), self._current.views[0], out=self._mask_view)
        t = self.tile
        band = np.bitwise_or.reduce(self._mask_u64.reshape(self._tiles_y, t, -1), axis=1)
        flags: npt.NDArray[np.bool_] = band.reshape(self._tiles_y, self._tiles_x, -1).any(axis=2)
        return flags

    def update(self, new: Pixels) -> tuple[Rect, ...]:
        """Compare ``new`` with ``frame``, copy what changed into ``frame``; the changed rectangles."""
        if self._try_sample:
            whole = self._mostly_changed(new)
            if whole is not None:
                return whole
        flags = self.changed_tiles(new)
        changed = int(np.count_nonzero(flags))
        self._try_sample = changed >= MOSTLY_CHANGED * flags.size
        if not changed:
            return ()
        rects = []
        for tx0, tx1, ty0, ty1 in _merge_runs(flags):
            rect = self._crop(new, tx0, tx1, ty0, ty1)
            if rect is not None:  # always: a flagged tile has a changed word
                rects.append(Rect(*rect))
        damage = tuple(rects)
        target = self._writable(damage)
        for r in damage:
            np.copyto(target.array[r.y:r.y + r.h, r.x:r.x + r.w], new[r.y:r.y + r.h, r.x:r.x + r.w])
        self._advance(target, damage)
        return damage

    def _mostly_changed(self, new: Pixels) -> tuple[Rect, ...] | None:
        """If every SAMPLE_STRIDE-th row shows most tiles changed: take ``new`` whole and return the
        bounding box of its changes. None (nothing copied) otherwise."""
        self._check(new)
        s, t = SAMPLE_STRIDE, self.tile
        np.not_equal(_words(new, self._word)[::s], self._current.views[0][::s], out=self._sample_view)
        band = np.bitwise_or.reduce(self._sample_u64.reshape(self._tiles_y, t // s, -1), axis=1)
        flags = band.reshape(self._tiles_y, self._tiles_x, -1).any(axis=2)
        if np.count_nonzero(flags) < MOSTLY_CHANGED * flags.size:
            return None
        damage = (self._bounding_box(_words(new, np.uint32)),)
        target = self._writable(None)
        np.copyto(target.array, new)
        self._advance(target, damage)
        self.whole_frames += 1
        return damage

    def _bounding_box(self, new: npt.NDArray[np.unsignedinteger]) -> Rect:
        """The smallest rectangle holding every pixel where ``new`` (h, w) uint32 differs from ``frame``;
        only called when some pixel differs. Scans inwards from each edge, a few rows or columns at a time."""
        old, h, w = self._current.views[1], self.height, self.width

        def rows_changed(y0: int, y1: int) -> npt.NDArray[np.intp]:
            return y0 + np.flatnonzero((new[y0:y1] != old[y0:y1]).any(axis=1))

        def cols_changed(x0: int, x1: int) -> npt.NDArray[np.intp]:
            return x0 + np.flatnonzero((new[top:bottom, x0:x1] != old[top:bottom, x0:x1]).any(axis=0))

        top = next(int(r[0]) for y in range(0, h, _EDGE_ROWS) if (r := rows_changed(y, y + _EDGE_ROWS)).size)
        bottom = next(int(r[-1]) + 1 for y in range(h, top, -_EDGE_ROWS)
                      if (r := rows_changed(max(y - _EDGE_ROWS, top), y)).size)
        # A changed pixel in the first (last) column of some sampled row settles the edge without a scan
        # down a column, which would touch a cache line in every row.
        s = SAMPLE_STRIDE
        if (new[::s, 0] != old[::s, 0]).any():
            left = 0
        else:
            left = next(int(c[0]) for x in range(0, w, _EDGE_COLS) if (c := cols_changed(x, x + _EDGE_COLS)).size)
        if (new[::s, w - 1] != old[::s, w - 1]).any():
            right = w
        else:
            right = next(int(c[-1]) + 1 for x in range(w, left, -_EDGE_COLS)
                         if (c := cols_changed(max(x - _EDGE_COLS, left), x)).size)
        return Rect(left, top, right - left, bottom - top)

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


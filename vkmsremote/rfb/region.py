"""Accumulated damage of one client: a coarse tile grid (numpy booleans), not a list of rectangles.

A slow client must not make the server remember every change it missed: whatever happens, a
:class:`DamageGrid` holds one bit per TILE x TILE pixel tile, so memory and the number of rectangles an
update can carry stay bounded. Adding damage rounds it out to whole tiles (and clips it to the screen);
``take(area)`` hands back rectangles (merged horizontally, then vertically) covering the marked tiles
that ``area`` touches and forgets them.
"""

from __future__ import annotations

import numpy as np

from vkmsremote.frame import Rect

TILE = 16
"""Tile edge in pixels: small enough that a blinking caret costs one 16x16 rectangle."""


class DamageGrid:
    def __init__(self, width: int, height: int, *, tile: int = TILE) -> None:
        self.width = width
        self.height = height
        self.tile = tile
        self._cols = -(-width // tile)
        self._rows = -(-height // tile)
        self._grid = np.zeros((self._rows, self._cols), dtype=bool)

    def __bool__(self) -> bool:
        return bool(self._grid.any())

    def _tiles(self, rect: Rect) -> tuple[int, int, int, int] | None:
        """Tile index bounds (c0, r0, c1, r1) of every tile ``rect`` touches, after clipping."""
        r = rect.clip(self.width, self.height)
        if r is None:
            return None
        t = self.tile
        return r.x // t, r.y // t, -(-(r.x + r.w) // t), -(-(r.y + r.h) // t)

    def add(self, rect: Rect) -> None:
        b = self._tiles(rect)
        if b is not None:
            c0, r0, c1, r1 = b
            self._grid[r0:r1, c0:c1] = True

    def add_all(self) -> None:
        self._grid[:, :] = True

    def clear(self) -> None:
        self._grid[:, :] = False

    def tile_count(self) -> int:
        return int(self._grid.sum())

    def take(self, area: Rect, *, max_rects: int = 256) -> list[Rect]:
        """Rectangles covering the damage in the tiles ``area`` touches; that damage is forgotten.

        ``area`` is widened to whole tiles: a client receives a little more than it asked for (it keeps
        the whole framebuffer anyway, RFC 6143 7.5.3), and no half-sent tile stays marked, so an
        unaligned incremental request is not answered again and again with unchanged pixels. If the damage
        would need more than ``max_rects`` rectangles, each tile row is sent as one span, and failing that
        the bounding box: fewer, larger rectangles rather than an unbounded list.
        """
        bounds = self._tiles(area)
        if bounds is None:
            return []
        c0, r0, c1, r1 = bounds
        sub = self._grid[r0:r1, c0:c1]
        if not sub.any():
            return []
        t = self.tile
        out: list[Rect] = []
        for (tc0, tr0, tc1, tr1) in _runs_to_rects(sub, max_rects):
            r = Rect((c0 + tc0) * t, (r0 + tr0) * t, (tc1 - tc0) * t, (tr1 - tr0) * t).clip(self.width, self.height)
            if r is not None:
                out.append(r)
        sub[:, :] = False
        return out


def _runs(grid: np.ndarray) -> dict[int, list[tuple[int, int]]]:
    """Horizontal runs of marked tiles, per row that has any: {row: [(c0, c1), ...]} (half-open, in order).
    One pass over the whole grid; Python work is per run, not per row or tile."""
    rows, cols = grid.shape
    padded = np.zeros((rows, cols + 2), np.int8)
    padded[:, 1:-1] = grid
    edges = np.diff(padded, axis=1)
    starts = np.argwhere(edges == 1)  # row-major, so the n-th start and the n-th end belong together
    ends = np.flatnonzero(edges == -1) % (cols + 1)
    out: dict[int, list[tuple[int, int]]] = {}
    for (r, c0), c1 in zip(starts.tolist(), ends.tolist(), strict=True):
        out.setdefault(r, []).append((c0, c1))
    return out


def _merge_rows(rows: dict[int, list[tuple[int, int]]]) -> list[tuple[int, int, int, int]]:
    """Runs per tile row -> rectangles (c0, r0, c1, r1): identical runs on consecutive rows merge."""
    done: list[tuple[int, int, int, int]] = []
    open_: dict[tuple[int, int], int] = {}  # run -> first row
    previous = -2
    for r in sorted(rows):
        runs = rows[r]
        if r != previous + 1:  # rows without damage in between: everything open ends after ``previous``
            done.extend((run[0], start, run[1], previous + 1) for run, start in open_.items())
            open_ = {}
        current = set(runs)
        for run, start in list(open_.items()):
            if run not in current:
                done.append((run[0], start, run[1], r))
                del open_[run]
        for run in runs:
            open_.setdefault(run, r)
        previous = r
    done.extend((run[0], start, run[1], previous + 1) for run, start in open_.items())
    return done


def _runs_to_rects(grid: np.ndarray, max_rects: int) -> list[tuple[int, int, int, int]]:
    rows = _runs(grid)
    rects = _merge_rows(rows)
    if len(rects) <= max_rects:
        return rects
    spans = {r: [(runs[0][0], runs[-1][1])] for r, runs in rows.items()}
    rects = _merge_rows(spans)
    if len(rects) <= max_rects:
        return rects
    ys, xs = np.nonzero(grid)
    return [(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)]

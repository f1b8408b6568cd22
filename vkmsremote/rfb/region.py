"""Accumulated damage of one client: a coarse tile grid (numpy booleans), not a list of rectangles.

A slow client must not make the server remember every change it missed: whatever happens, a
:class:`DamageGrid` holds one bit per TILE x TILE pixel tile, so memory and the number of rectangles an
update can carry stay bounded. Adding damage rounds it out to whole tiles (and clips it to the screen);
``take(area)`` hands back rectangles (merged horizontally, then vertically) covering the marked tiles
inside ``area`` and forgets them.
"""

from __future__ import annotations

import numpy as np

from vkmsremote.server.source import Rect

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
        """Rectangles covering the damage inside ``area`` (clipped to it); that damage is forgotten.

        Tiles only partly inside ``area`` stay marked (their outside part has not been sent). If the
        damage would need more than ``max_rects`` rectangles, each tile row is sent as one span, and
        failing that the bounding box: fewer, larger rectangles rather than an unbounded list.
        """
        clipped = area.clip(self.width, self.height)
        if clipped is None:
            return []
        c0, r0, c1, r1 = self._tiles(clipped) or (0, 0, 0, 0)
        sub = self._grid[r0:r1, c0:c1]
        if not sub.any():
            return []
        tile_rects = _runs_to_rects(sub, max_rects)
        t = self.tile
        out: list[Rect] = []
        for (tc0, tr0, tc1, tr1) in tile_rects:
            px = Rect((c0 + tc0) * t, (r0 + tr0) * t, (tc1 - tc0) * t, (tr1 - tr0) * t)
            r = _intersect(px, clipped)
            if r is not None:
                out.append(r)
        # Forget the tiles that lie wholly inside the area; keep partly covered ones.
        fc0 = -(-clipped.x // t)
        fr0 = -(-clipped.y // t)
        x1, y1 = clipped.x + clipped.w, clipped.y + clipped.h
        fc1 = x1 // t if x1 < self.width else self._cols
        fr1 = y1 // t if y1 < self.height else self._rows
        if fc1 > fc0 and fr1 > fr0:
            self._grid[fr0:fr1, fc0:fc1] = False
        return out


def _intersect(a: Rect, b: Rect) -> Rect | None:
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    if x1 <= x0 or y1 <= y0:
        return None
    return Rect(x0, y0, x1 - x0, y1 - y0)


def _row_runs(row: np.ndarray) -> list[tuple[int, int]]:
    padded = np.concatenate(([False], row, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(edges[i]), int(edges[i + 1])) for i in range(0, len(edges), 2)]


def _merge_rows(rows: list[list[tuple[int, int]]]) -> list[tuple[int, int, int, int]]:
    """Runs per tile row -> rectangles (c0, r0, c1, r1): identical runs on consecutive rows merge."""
    done: list[tuple[int, int, int, int]] = []
    open_: dict[tuple[int, int], int] = {}  # run -> first row
    for r, runs in enumerate(rows):
        current = set(runs)
        for run, start in list(open_.items()):
            if run not in current:
                done.append((run[0], start, run[1], r))
                del open_[run]
        for run in runs:
            open_.setdefault(run, r)
    for run, start in open_.items():
        done.append((run[0], start, run[1], len(rows)))
    return done


def _runs_to_rects(grid: np.ndarray, max_rects: int) -> list[tuple[int, int, int, int]]:
    rows = [_row_runs(grid[r]) for r in range(grid.shape[0])]
    rects = _merge_rows(rows)
    if len(rects) <= max_rects:
        return rects
    spans = [[(runs[0][0], runs[-1][1])] if runs else [] for runs in rows]
    rects = _merge_rows(spans)
    if len(rects) <= max_rects:
        return rects
    ys, xs = np.nonzero(grid)
    return [(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)]

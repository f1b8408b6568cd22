"""Vectorised decomposition of a rectangle into background + single-colour subrectangles, per tile.

Used by RRE (one tile: the whole rectangle) and Hextile (16x16 tiles). Pipeline, all numpy:

1. horizontal runs of equal pixel values, broken at tile column boundaries;
2. per tile, the background = the value covering the most pixels (sum of run lengths per (tile, value));
3. runs that are not background are merged vertically when the same (x, width, value) run continues on
   the next row of the same tile; each merged group is one subrectangle.

Tiles with more than ``max_runs`` runs are not analysed (the caller sends them raw); this keeps photo-like
content from producing millions of runs to sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vkmsremote.rfb.convert import Values

Ints = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Subrects:
    """Subrectangles sorted by tile. Coordinates are relative to the tile's top-left corner."""

    tiles_x: int
    tiles_y: int
    background: Values  # (tiles,) background value of each tile
    analysed: npt.NDArray[np.bool_]  # (tiles,) False: too many runs, send raw
    first: Ints  # (tiles + 1,) subrects of tile t are [first[t], first[t + 1])
    x: Ints
    y: Ints
    w: Ints
    h: Ints
    value: Values
    mono: npt.NDArray[np.bool_]  # (tiles,) all subrects of the tile have the same value


def decompose(values: Values, tile_w: int, tile_h: int, max_runs: int) -> Subrects:
    height, width = values.shape
    tiles_x = -(-width // tile_w)
    tiles_y = -(-height // tile_h)
    ntiles = tiles_x * tiles_y

    # 1. run starts: column 0, every tile column boundary, and every change of value.
    start = np.empty((height, width), dtype=bool)
    start[:, 0] = True
    np.not_equal(values[:, 1:], values[:, :-1], out=start[:, 1:])
    start[:, ::tile_w] = True
    flat_start = np.flatnonzero(start)
    run_len = np.diff(flat_start, append=height * width)
    ry = flat_start // width
    rx = flat_start - ry * width
    rval = values.reshape(-1)[flat_start]
    rtile = (ry // tile_h) * tiles_x + rx // tile_w

    runs_per_tile = np.bincount(rtile, minlength=ntiles)
    analysed = runs_per_tile <= max_runs
    keep = analysed[rtile]
    if not keep.all():
        ry, rx, rval, rtile, run_len = ry[keep], rx[keep], rval[keep], rtile[keep], run_len[keep]

    # 2. background per tile: the value with the largest total run length.
    background = np.zeros(ntiles, dtype=np.uint32)
    if rtile.size:
        order = np.lexsort((rval, rtile))
        t_sorted, v_sorted, l_sorted = rtile[order], rval[order], run_len[order]
        group = np.empty(t_sorted.size, dtype=bool)
        group[0] = True
        group[1:] = (t_sorted[1:] != t_sorted[:-1]) | (v_sorted[1:] != v_sorted[:-1])
        gstart = np.flatnonzero(group)
        gsum = np.add.reduceat(l_sorted, gstart)
        gtile, gval = t_sorted[gstart], v_sorted[gstart]
        best = np.lexsort((-gsum, gtile))  # by tile, largest sum first
        first_of_tile = np.ones(best.size, dtype=bool)
        first_of_tile[1:] = gtile[best][1:] != gtile[best][:-1]
        chosen = best[first_of_tile]
        background[gtile[chosen]] = gval[chosen]

    # 3. non-background runs, merged vertically within a tile.
    fg = rval != background[rtile]
    ry, rx, rval, rtile, run_len = ry[fg], rx[fg], rval[fg], rtile[fg], run_len[fg]
    if ry.size:
        order = np.lexsort((ry, rval, run_len, rx, rtile))
        ry, rx, rval, rtile, run_len = ry[order], rx[order], rval[order], rtile[order], run_len[order]
        new = np.empty(ry.size, dtype=bool)
        new[0] = True
        new[1:] = ((rtile[1:] != rtile[:-1]) | (rx[1:] != rx[:-1]) | (run_len[1:] != run_len[:-1])
                   | (rval[1:] != rval[:-1]) | (ry[1:] != ry[:-1] + 1))
        gstart = np.flatnonzero(new)
        sh = np.diff(gstart, append=ry.size)
        stile, sx, sy, sw, sval = rtile[gstart], rx[gstart], ry[gstart], run_len[gstart], rval[gstart]
        # stable sort by tile keeps the order above; the order of subrects within a tile is free
        by_tile = np.argsort(stile, kind="stable")
        stile, sx, sy, sw, sh, sval = (a[by_tile] for a in (stile, sx, sy, sw, sh, sval))
    else:
        stile = sx = sy = sw = sh = np.zeros(0, dtype=np.int64)
        sval = np.zeros(0, dtype=np.uint32)

    counts = np.bincount(stile, minlength=ntiles)
    first = np.zeros(ntiles + 1, dtype=np.int64)
    np.cumsum(counts, out=first[1:])
    mono = np.ones(ntiles, dtype=bool)
    if stile.size:
        nonempty = counts > 0
        starts = first[:-1][nonempty]
        vmin = np.minimum.reduceat(sval, starts)
        vmax = np.maximum.reduceat(sval, starts)
        mono[nonempty] = vmin == vmax
    tx = stile % tiles_x
    ty = stile // tiles_x
    return Subrects(
        tiles_x=tiles_x, tiles_y=tiles_y, background=background, analysed=analysed, first=first,
        x=sx - tx * tile_w, y=sy - ty * tile_h, w=sw, h=sh, value=sval, mono=mono,
    )

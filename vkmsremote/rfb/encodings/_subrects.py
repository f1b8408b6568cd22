"""Vectorised decomposition of a rectangle into background + single-colour subrectangles, per tile.

Used by RRE (one tile: the whole rectangle) and Hextile (16x16 tiles). Pipeline, all numpy:

1. horizontal runs of equal pixel values, broken at tile column boundaries;
2. per tile, the background = the value covering the most pixels (sum of run lengths per (tile, value));
3. runs that are not background are merged vertically when the same (x, width, value) run continues on
   the next row of the same tile; each merged chain is one subrectangle.

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

    # 2. background per tile: the value with the largest total run length. One argsort of
    #    (tile << 32 | value) keys groups the runs; reduceat sums each group.
    background = np.zeros(ntiles, dtype=np.uint32)
    if rtile.size:
        key = (rtile.astype(np.uint64) << np.uint64(32)) | rval.astype(np.uint64)
        order = np.argsort(key)
        skey = key[order]
        group = np.empty(skey.size, dtype=bool)
        group[0] = True
        np.not_equal(skey[1:], skey[:-1], out=group[1:])
        gstart = np.flatnonzero(group)
        gsum = np.add.reduceat(run_len[order], gstart)
        gtile = (skey[gstart] >> np.uint64(32)).astype(np.int64)
        gval = (skey[gstart] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        tile_first = np.flatnonzero(np.concatenate(([True], gtile[1:] != gtile[:-1])))
        best_sum = np.maximum.reduceat(gsum, tile_first)
        is_best = gsum == np.repeat(best_sum, np.diff(tile_first, append=gsum.size))
        best = np.flatnonzero(is_best)
        first_best = best[np.concatenate(([True], gtile[best][1:] != gtile[best][:-1]))]
        background[gtile[first_best]] = gval[first_best]

    # 3. merge vertically: a run continues the run directly above it (same tile, start, length, value).
    #    Chains are resolved by pointer jumping (a few passes), not by sorting.
    nruns = ry.size
    if nruns:
        starts_kept = ry * width + rx
        above = np.searchsorted(starts_kept, starts_kept - width, side="right") - 1
        above_ok = (ry % tile_h != 0) & (above >= 0)
        above = np.where(above_ok, above, 0)
        cont = (above_ok & (starts_kept[above] == starts_kept - width) & (run_len[above] == run_len)
                & (rval[above] == rval))
        head = np.where(cont, above, np.arange(nruns))
        while True:
            jumped = head[head]
            if np.array_equal(jumped, head):
                break
            head = jumped
        heights = np.bincount(head, minlength=nruns)
        heads = np.flatnonzero(~cont & (rval != background[rtile]))
        by_tile = np.argsort(rtile[heads], kind="stable")
        heads = heads[by_tile]
        stile, sx, sy, sw, sh, sval = (rtile[heads], rx[heads], ry[heads], run_len[heads], heights[heads],
                                       rval[heads])
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

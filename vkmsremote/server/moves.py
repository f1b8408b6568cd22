"""Moves between two frames, found in the pixels: vertical scrolling and moved blocks (window drags).

KMS tells nothing about scrolling or moving windows, so the server compares the frame a client has with
the new one. The result feeds CopyRect (rfb.encodings.copyrect): a moved area costs eight bytes instead
of its pixels.

Theory of operation (vectorised; Python loops run per candidate or per anchor, never per pixel):

1. The search region is the bounding box of the damage: everything outside it is equal in both frames.
2. Candidate shifts (dx, dy), meaning ``new[y, x] == old[y + dy, x + dx]``:

   a. *Rows* (scrolling): each row of the region gets a signature, a hash of SAMPLE_COLUMNS pixels at
      fixed columns, in both frames. A new row whose signature occurs exactly once among the old rows
      (and is not one colour) votes for dy = old row - new row, dx = 0.
   b. *Anchors* (moved blocks): a few small patches of new pixels (ANCHOR_RUN pixels on each of the rows
      ANCHOR_ROWS, starting at a colour edge, not where they were) are looked for in the old frame within
      MAX_SHIFT pixels: by their rarest pixels first, then whole; an anchor found at most
      MAX_ANCHOR_HITS times votes for each (dx, dy) it was found at.

3. Verification: for the best candidate of each kind, the exact equality mask of the shifted frames over
   the region, then the rectangle. For rows: columns that match in most rows, the rows that match in all
   of those columns, the columns that match in all of those rows, and once more the rows. For an anchor:
   grown from the anchor, a strip ANCHOR_RUN wide extended over the rows that match across it, then the
   columns that match in 95 % of those rows, the rows that match across those, the columns that match
   across those rows, and the rows again. Either way the last step keeps only rows
   equal over every chosen column, so the rectangle returned is equal pixel for pixel (all four bytes of
   every pixel): a move is exact by construction, whatever the heuristics before it chose.

Costs at 1920x1080 (scrolling the whole screen): two signature passes over 64 columns, one equality pass
over the region (about 2 ms on this machine's cores). Anchors are only searched when the rows found no
move covering most of the region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vkmsremote.frame import Pixels, Rect

SAMPLE_COLUMNS = 64
"""Columns hashed into a row signature."""
MIN_VOTES = 8
"""Rows or anchors that must agree before a shift is verified."""
ANCHORS = 16
"""Anchor runs per search, spread over the largest damage rectangles."""
ANCHOR_RUN = 16
"""Pixels in each row of an anchor patch."""
ANCHOR_ROWS = (0, 3, 6, 9, 12)
"""Rows of an anchor patch (relative): one row of text repeats too often to say where it came from."""
MIN_ANCHOR_VOTES = 3
MAX_SHIFT = 64
SEARCH_REACH = (16, MAX_SHIFT)
"""Anchors are looked for this far first, then (if not found) up to MAX_SHIFT."""
"""Anchors are searched this far in each direction (a window dragged across a few skipped frames)."""
MAX_ANCHOR_HITS = 4
"""An anchor found more often than this in its search window is ambiguous (a run of a repeated pattern)."""
MIN_MOVE_AREA = 64 * 32
"""Smaller moves are not worth a CopyRect (their pixels cost little more than its bookkeeping)."""
MIN_REGION = 64 * 32

_WEIGHTS = (np.random.default_rng(0x5C0)  # fixed odd multipliers: signatures comparable across calls
            .integers(1, 2**63 - 1, SAMPLE_COLUMNS, dtype=np.int64).astype(np.uint64) | np.uint64(1))


@dataclass(frozen=True, slots=True)
class Move:
    """``dst`` in the new frame equals the same-sized rectangle at (src_x, src_y) in the old frame."""

    dst: Rect
    src_x: int
    src_y: int

    @property
    def src(self) -> Rect:
        return Rect(self.src_x, self.src_y, self.dst.w, self.dst.h)


def _words(frame: Pixels) -> npt.NDArray[np.uint32]:
    """(h, w) uint32 view of an (h, w, 4) uint8 frame (each pixel's four bytes as one word)."""
    if frame.ndim != 3 or frame.shape[2] != 4 or frame.strides[2] != 1 or frame.strides[1] != 4:
        raise ValueError(f"expected (h, w, 4) uint8 pixels with contiguous rows, got {frame.shape} {frame.strides}")
    return frame.view(np.uint32)[:, :, 0]


def bounding_box(rects: list[Rect] | tuple[Rect, ...]) -> Rect | None:
    if not rects:
        return None
    x0 = min(r.x for r in rects)
    y0 = min(r.y for r in rects)
    x1 = max(r.x + r.w for r in rects)
    y1 = max(r.y + r.h for r in rects)
    return Rect(x0, y0, x1 - x0, y1 - y0)


def _row_signatures(words: npt.NDArray[np.uint32], region: Rect) -> tuple[npt.NDArray[np.uint64],
                                                                          npt.NDArray[np.bool_]]:
    cols = region.x + (np.arange(SAMPLE_COLUMNS) * region.w) // SAMPLE_COLUMNS
    block = words[region.y:region.y + region.h, cols]
    sig = (block.astype(np.uint64) * _WEIGHTS[None, :]).sum(axis=1, dtype=np.uint64)
    plain = (block == block[:, :1]).all(axis=1)
    return sig, plain


def _vertical_candidate(old: npt.NDArray[np.uint32], new: npt.NDArray[np.uint32],
                        region: Rect) -> tuple[int, int] | None:
    old_sig, old_plain = _row_signatures(old, region)
    new_sig, new_plain = _row_signatures(new, region)
    uniq, first, counts = np.unique(old_sig, return_index=True, return_counts=True)
    pos = np.clip(np.searchsorted(uniq, new_sig), 0, len(uniq) - 1)
    ok = (uniq[pos] == new_sig) & (counts[pos] == 1) & ~new_plain
    old_rows = first[pos]
    ok &= ~old_plain[old_rows]
    dy = old_rows[ok] - np.flatnonzero(ok)
    dy = dy[dy != 0]
    if dy.size < MIN_VOTES:
        return None
    h = region.h
    votes = np.bincount(dy + h, minlength=2 * h)
    best = int(np.argmax(votes))
    if votes[best] < MIN_VOTES:
        return None
    return 0, best - h


def _anchor_points(damage: list[Rect] | tuple[Rect, ...]) -> list[tuple[int, int]]:
    """Up to about ANCHORS (x, y) points on a grid inside the largest damage rectangles, by area."""
    rects = sorted((r for r in damage if r.w >= 2 * ANCHOR_RUN and r.h >= 4), key=lambda r: -r.area)
    total = sum(r.area for r in rects)
    points: list[tuple[int, int]] = []
    for r in rects:
        n = max(1, round(ANCHORS * r.area / total)) if total else 0
        side = int(np.ceil(np.sqrt(n)))
        for i in range(side):
            for j in range(side):
                points.append((r.x + ((2 * j + 1) * (r.w - ANCHOR_RUN)) // (2 * side),
                               r.y + ((2 * i + 1) * r.h) // (2 * side)))
        if len(points) >= ANCHORS:
            break
    return points


def _textured_run(new: npt.NDArray[np.uint32], xa: int, ya: int, x_end: int) -> tuple[int, int] | None:
    """A run of ANCHOR_RUN pixels near (xa, ya) that is not one colour (one colour matches anywhere):
    the first colour edge within 256 pixels to the right, on this row or one of the next few."""
    for y in range(ya, min(ya + 16, new.shape[0]), 4):
        seg = new[y, xa:min(xa + 256, x_end)]
        edges = np.flatnonzero(seg[1:] != seg[:-1])
        if edges.size:
            x = min(max(xa, xa + int(edges[0]) - ANCHOR_RUN // 2), x_end - ANCHOR_RUN)
            if x >= xa:
                return x, y
    return None


def _find_patch(old: npt.NDArray[np.uint32], patch: npt.NDArray[np.uint32], xa: int, ya: int, reach: int,
                x_min: int, y_min: int, x_end: int, y_end: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp],
                                                                      npt.NDArray[np.bool_]] | None:
    """Top-left positions within ``reach`` of (xa, ya) where ``patch`` (rows ANCHOR_ROWS) lies in ``old``:
    (ys, xs, found) with ``found`` True where every patch pixel matches; None if the window is empty."""
    sy0, sy1 = max(y_min, ya - reach), min(y_end, ya + reach + 1)
    sx0, sx1 = max(x_min, xa - reach), min(x_end, xa + reach + 1)
    if sx1 <= sx0 or sy1 <= sy0:
        return None
    # Rarest patch pixels first (text is mostly paper: its colour matches everywhere), narrowing the
    # candidate positions over the whole window while there are many, then only where some are left.
    values, counts = np.unique(patch, return_counts=True)
    rarity = counts[np.searchsorted(values, patch)]
    checks = sorted((int(rarity[i, k]), i, k) for i in range(len(ANCHOR_ROWS)) for k in range(ANCHOR_RUN))
    mask: npt.NDArray[np.bool_] | None = None
    done = 0
    while done < len(checks) and (mask is None or np.count_nonzero(mask) > 64):
        _, i, k = checks[done]
        dy = ANCHOR_ROWS[i]
        hit = old[sy0 + dy:sy1 + dy, sx0 + k:sx1 + k] == patch[i, k]
        mask = hit if mask is None else mask & hit
        done += 1
    assert mask is not None
    hy, hx = np.nonzero(mask)
    hy += sy0
    hx += sx0
    good = np.ones(hy.size, bool)
    for _, i, k in checks[done:]:
        good &= old[hy + ANCHOR_ROWS[i], hx + k] == patch[i, k]
    return hy, hx, good


def _anchor_candidate(old: npt.NDArray[np.uint32], new: npt.NDArray[np.uint32], region: Rect,
                      damage: list[Rect] | tuple[Rect, ...]) -> tuple[int, int, int, int] | None:
    """(dx, dy, x, y): the best-voted shift and an anchor (x, y) in the new frame that voted for it."""
    x0, y0, x1, y1 = region.x, region.y, region.x + region.w, region.y + region.h
    rows = np.asarray(ANCHOR_ROWS)
    height = ANCHOR_ROWS[-1] + 1
    if region.h < height or region.w < ANCHOR_RUN:
        return None
    votes: dict[tuple[int, int], int] = {}
    seeds: dict[tuple[int, int], tuple[int, int]] = {}
    for xa, ya in _anchor_points(damage):
        found = _textured_run(new, xa, min(ya, y1 - height), x1)
        if found is None:
            continue
        xa, ya = found
        ya = min(ya, y1 - height)
        patch = new[ya + rows, xa:xa + ANCHOR_RUN]
        if (patch == old[ya + rows, xa:xa + ANCHOR_RUN]).all():
            continue  # unchanged: says nothing about where it came from
        hits = None
        for reach in SEARCH_REACH:  # near first (most moves are small), then as far as MAX_SHIFT
            hits = _find_patch(old, patch, xa, ya, reach, x0, y0, x1 - ANCHOR_RUN + 1, y1 - height + 1)
            if hits is not None and hits[2].any():
                break
        if hits is None:
            continue
        hy, hx, good = hits
        n = int(good.sum())
        if n == 0 or n > MAX_ANCHOR_HITS:
            continue
        for hit_y, hit_x in zip(hy[good].tolist(), hx[good].tolist(), strict=True):
            shift = (hit_x - xa, hit_y - ya)
            if shift != (0, 0):
                votes[shift] = votes.get(shift, 0) + 1
                seeds.setdefault(shift, (xa, ya))
        if votes and max(votes.values()) >= 2 * MIN_ANCHOR_VOTES:
            break  # decided: the remaining anchors would only add cost
    if not votes:
        return None
    shift, n = max(votes.items(), key=lambda kv: kv[1])
    return (*shift, *seeds[shift]) if n >= MIN_ANCHOR_VOTES else None


def _longest_run(mask: npt.NDArray[np.bool_]) -> tuple[int, int]:
    """(start, end) of the longest run of True in a 1-D mask; (0, 0) if none."""
    if not mask.any():
        return 0, 0
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.diff(padded)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    i = int(np.argmax(ends - starts))
    return int(starts[i]), int(ends[i])


def _run_around(mask: npt.NDArray[np.bool_], i: int) -> tuple[int, int]:
    """(start, end) of the run of True in a 1-D mask that contains index i (mask[i] must be True)."""
    false = np.flatnonzero(~mask)
    before, after = false[false < i], false[false > i]
    return (int(before[-1]) + 1 if before.size else 0), (int(after[0]) if after.size else int(mask.size))


def verify(old: Pixels, new: Pixels, region: Rect, dx: int, dy: int,
           seed: tuple[int, int] | None = None) -> Move | None:
    """The largest rectangle (found as the module docstring says) of ``region`` in the new frame equal to
    ``old`` shifted by (dx, dy), with its source inside ``region`` too; None if it is too small.

    With ``seed`` (a point of the new frame known to have moved so, e.g. an anchor), the rectangle is grown
    around it instead (see the module docstring)."""
    ow, nw = _words(old), _words(new)
    x0, x1 = max(region.x, region.x - dx), min(region.x + region.w, region.x + region.w - dx)
    y0, y1 = max(region.y, region.y - dy), min(region.y + region.h, region.y + region.h - dy)
    if x1 - x0 < 16 or y1 - y0 < 8:
        return None
    eq = nw[y0:y1, x0:x1] == ow[y0 + dy:y1 + dy, x0 + dx:x1 + dx]
    if seed is not None:
        sx, sy = seed[0] - x0, seed[1] - y0
        if not (0 <= sy < eq.shape[0] and 0 <= sx <= eq.shape[1] - ANCHOR_RUN) or not eq[sy, sx:sx + ANCHOR_RUN].all():
            return None
        c0, c1 = sx, sx + ANCHOR_RUN
        r0, r1 = _run_around(eq[:, c0:c1].all(axis=1), sy)
        # Rows just past a window's edge may match by chance across the strip: the columns are those
        # matching in nearly all of the rows, which such strays cannot spoil.
        most = eq[r0:r1].sum(axis=0, dtype=np.int32) >= 0.95 * (r1 - r0)
        c0, c1 = _run_around(most, sx)
        r0, r1 = _run_around(eq[:, c0:c1].all(axis=1), sy)
        if r1 <= r0 or not eq[sy, c0:c1].all():
            return None
        c0, c1 = _run_around(eq[r0:r1].all(axis=0), sx)
        r0, r1 = _run_around(eq[:, c0:c1].all(axis=1), sy)  # exact over every chosen row and column
        return _move(x0, y0, c0, c1, r0, r1, dx, dy)
    col_count = eq.sum(axis=0, dtype=np.int32)
    c0, c1 = _longest_run(col_count >= 0.9 * int(col_count.max()))
    if c1 <= c0:
        return None
    r0, r1 = _longest_run(eq[:, c0:c1].sum(axis=1, dtype=np.int32) >= 0.98 * (c1 - c0))
    if r1 <= r0:
        return None
    c0b, c1b = _longest_run(eq[r0:r1, c0:c1].all(axis=0))
    c0, c1 = c0 + c0b, c0 + c1b
    if c1 <= c0:
        return None
    r0, r1 = _longest_run(eq[:, c0:c1].all(axis=1))  # exact: every pixel of every chosen row and column
    return _move(x0, y0, c0, c1, r0, r1, dx, dy)


def _move(x0: int, y0: int, c0: int, c1: int, r0: int, r1: int, dx: int, dy: int) -> Move | None:
    if (r1 - r0) * (c1 - c0) < MIN_MOVE_AREA:
        return None
    dst = Rect(x0 + c0, y0 + r0, c1 - c0, r1 - r0)
    return Move(dst, dst.x + dx, dst.y + dy)


def find_move(old: Pixels, new: Pixels, damage: list[Rect] | tuple[Rect, ...]) -> Move | None:
    """The largest verified move from ``old`` to ``new`` inside the damage's bounding box, if any.

    ``old`` and ``new`` are (h, w, 4) frames of one size; ``damage`` covers every pixel that differs."""
    if old.shape != new.shape:
        return None
    region = bounding_box(damage)
    if region is None:
        return None
    region = region.clip(new.shape[1], new.shape[0])
    if region is None or region.area < MIN_REGION or region.h < 8 or region.w < 16:
        return None
    ow, nw = _words(old), _words(new)
    best: Move | None = None
    vertical = _vertical_candidate(ow, nw, region)
    if vertical is not None:
        best = verify(old, new, region, *vertical)
    if best is None or best.dst.area < region.area // 2:
        anchor = _anchor_candidate(ow, nw, region, damage)
        if anchor is not None and anchor[:2] != vertical:
            move = verify(old, new, region, anchor[0], anchor[1], seed=(anchor[2], anchor[3]))
            if move is not None and (best is None or move.dst.area > best.dst.area):
                best = move
    return best


__all__ = ["Move", "bounding_box", "find_move", "verify"]

"""DamageGrid: damage rounded to tiles, clipped, merged into few rectangles, bounded."""

from __future__ import annotations

import numpy as np

from vkmsremote.frame import Rect
from vkmsremote.rfb.region import DamageGrid


def covered(rects: list[Rect], w: int, h: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=int)
    for r in rects:
        m[r.y:r.y + r.h, r.x:r.x + r.w] += 1
    return m


def test_add_rounds_to_tiles_and_take_forgets() -> None:
    g = DamageGrid(100, 50, tile=16)
    assert not g
    g.add(Rect(20, 5, 3, 3))  # inside tile column 1, row 0
    assert g.take(Rect(0, 0, 100, 50)) == [Rect(16, 0, 16, 16)]
    assert not g
    assert g.take(Rect(0, 0, 100, 50)) == []


def test_clipping_of_damage_and_of_the_edge_tiles() -> None:
    g = DamageGrid(100, 50, tile=16)
    g.add(Rect(90, 40, 500, 500))  # runs off the screen
    g.add(Rect(-10, -10, 5, 5))    # entirely off screen: ignored
    rects = g.take(Rect(0, 0, 100, 50))
    assert rects == [Rect(80, 32, 20, 18)]  # last tiles are cut at the screen edge


def test_merging_horizontal_then_vertical() -> None:
    g = DamageGrid(64, 64, tile=16)
    for x in (0, 16, 32):  # a 3x2 block of tiles
        for y in (16, 32):
            g.add(Rect(x, y, 16, 16))
    g.add(Rect(48, 0, 1, 1))
    rects = g.take(Rect(0, 0, 64, 64))
    assert sorted(rects, key=lambda r: (r.y, r.x)) == [Rect(48, 0, 16, 16), Rect(0, 16, 48, 32)]


def test_take_widens_the_area_to_whole_tiles() -> None:
    g = DamageGrid(64, 64, tile=16)
    g.add_all()
    # an unaligned area: the tiles it touches are sent whole and forgotten, the others kept
    assert g.take(Rect(8, 8, 16, 16)) == [Rect(0, 0, 32, 32)]
    assert g.tile_count() == 12
    assert g.take(Rect(8, 8, 16, 16)) == []  # asked again: nothing left there, nothing resent
    rest = g.take(Rect(0, 0, 64, 64))
    assert covered(rest, 64, 64).sum() == 64 * 64 - 32 * 32
    assert covered(rest, 64, 64).max() == 1
    assert g.take(Rect(100, 100, 5, 5)) == []  # outside the screen


def test_rect_count_is_bounded() -> None:
    g = DamageGrid(1920, 1080, tile=16)
    for y in range(0, 1080, 32):  # a checkerboard of 2000 separate tiles
        for x in range(0, 1920, 32):
            g.add(Rect(x, y, 1, 1))
    rects = g.take(Rect(0, 0, 1920, 1080), max_rects=50)
    assert 1 <= len(rects) <= 50
    m = covered(rects, 1920, 1080)
    assert m.max() == 1
    for y in range(0, 1080, 32):  # everything damaged is covered
        for x in range(0, 1920, 32):
            assert m[y, x] == 1


def test_take_covers_exactly_the_marked_tiles_once() -> None:
    rng = np.random.default_rng(5)
    for _ in range(300):
        rows, cols = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        marked = rng.random((rows, cols)) < rng.random()
        marked[rng.integers(0, rows)] = False  # rows without damage between damaged ones
        g = DamageGrid(cols * 16 - 5, rows * 16 - 3, tile=16)  # edge tiles cut by the screen edge
        for r, c in zip(*np.nonzero(marked), strict=True):
            g.add(Rect(int(c) * 16 + 1, int(r) * 16 + 1, 1, 1))
        rects = g.take(Rect(0, 0, g.width, g.height))
        m = covered(rects, g.width, g.height)
        assert m.max(initial=0) <= 1
        want = np.repeat(np.repeat(marked, 16, axis=0), 16, axis=1)[:g.height, :g.width]
        assert np.array_equal(m == 1, want)
        # identical runs on consecutive rows are merged: no two rectangles could be joined vertically
        spans = {(r.x, r.w, r.y + r.h) for r in rects}
        assert not any((r.x, r.w, r.y) in spans for r in rects)
        assert not g

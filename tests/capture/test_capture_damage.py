"""DamageTracker on synthetic frames: rectangles cover every changed pixel, are tight and disjoint, and the
stable copy equals the new frame afterwards."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vkmsremote.capture.damage import SAMPLE_STRIDE, DamageTracker, _merge_runs
from vkmsremote.frame import POOL_BUFFERS, Rect


def _check(tracker: DamageTracker, old: np.ndarray, new: np.ndarray, rects: tuple[Rect, ...]) -> None:
    changed = np.any(old != new, axis=2)
    covered = np.zeros_like(changed)
    for r in rects:
        assert r.w > 0 and r.h > 0
        assert r.clip(tracker.width, tracker.height) == r, f"{r} leaves the frame"
        assert not covered[r.y:r.y + r.h, r.x:r.x + r.w].any(), f"{r} overlaps another rectangle"
        covered[r.y:r.y + r.h, r.x:r.x + r.w] = True
        inside = changed[r.y:r.y + r.h, r.x:r.x + r.w]
        # Tight: the first and last row and column of each rectangle hold a changed pixel.
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any(), r
    assert not (changed & ~covered).any(), "a changed pixel is outside every rectangle"
    assert np.array_equal(tracker.frame, new)


def _frame(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)


def test_no_change_no_damage_and_frame_object_is_stable() -> None:
    t = DamageTracker(320, 200)
    f = _frame(200, 320, 1)
    t.reset(f)
    frame_obj = t.frame
    assert t.update(f.copy()) == ()
    assert t.frame is frame_obj and np.array_equal(t.frame, f)


def test_single_pixel_change_gives_one_pixel_rect() -> None:
    t = DamageTracker(1920, 1080)
    f = _frame(1080, 1920, 2)
    t.reset(f)
    g = f.copy()
    g[500, 777, 1] ^= 0xFF  # odd column: the second pixel of its uint64 word
    assert t.update(g) == (Rect(777, 500, 1, 1),)
    g[500, 778, 0] ^= 1  # even column, first pixel of the next word
    assert t.update(g) == (Rect(778, 500, 1, 1),)
    assert np.array_equal(t.frame, g)


def test_full_frame_change_merges_to_one_rect() -> None:
    t = DamageTracker(1000, 700)  # not multiples of the tile
    t.reset(_frame(700, 1000, 3))
    g = _frame(700, 1000, 4)
    g[0, 0] = t.frame[0, 0] + 1
    g[-1, -1] = t.frame[-1, -1] + 1
    assert t.update(g) == (Rect(0, 0, 1000, 700),)


def test_two_separate_regions_and_only_changed_pixels_copied() -> None:
    t = DamageTracker(640, 480, tile=32)
    base = _frame(480, 640, 5)
    t.reset(base)
    g = base.copy()
    g[10:20, 30:50] = 0
    g[300:301, 600:640] = 255
    rects = t.update(g)
    _check(t, base, g, rects)
    assert set(rects) == {Rect(30, 10, 20, 10), Rect(600, 300, 40, 1)}


def test_odd_width_uses_per_pixel_words() -> None:
    t = DamageTracker(641, 33, tile=16)
    base = _frame(33, 641, 6)
    t.reset(base)
    g = base.copy()
    g[32, 640] ^= 7
    g[0, 0] ^= 7
    rects = t.update(g)
    _check(t, base, g, rects)
    assert set(rects) == {Rect(640, 32, 1, 1), Rect(0, 0, 1, 1)}


def test_strided_source_with_pitch() -> None:
    # A mapped framebuffer whose pitch exceeds width*4 (rows padded), as (h, w, 4) strided view.
    h, w, pitch = 100, 150, 150 * 4 + 64
    raw = np.zeros(h * pitch, np.uint8)
    view = np.lib.stride_tricks.as_strided(raw, shape=(h, w, 4), strides=(pitch, 4, 1))
    t = DamageTracker(w, h, tile=16)
    t.reset(view)
    raw[pitch * 50 + 4 * 149] = 9  # pixel (149, 50), blue byte
    raw[pitch * 50 + w * 4 + 10] = 9  # padding: must not count
    assert t.update(view) == (Rect(149, 50, 1, 1),)
    assert t.frame[50, 149, 0] == 9


def test_rejects_wrong_shape_and_bad_tile() -> None:
    t = DamageTracker(64, 64)
    with pytest.raises(ValueError):
        t.update(np.zeros((64, 65, 4), np.uint8))
    with pytest.raises(ValueError):
        DamageTracker(64, 64, tile=24)
    with pytest.raises(ValueError):
        DamageTracker(0, 64)


def test_merge_runs_shapes() -> None:
    flags = np.array([
        [1, 1, 0, 1],
        [1, 1, 0, 0],
        [0, 0, 0, 1],
        [1, 1, 0, 1],
    ], bool)
    # (1,1) spans: rows 0-1 merge; row 3 is not adjacent to row 1 so it starts anew.
    assert sorted(_merge_runs(flags)) == sorted([(0, 2, 0, 2), (3, 4, 0, 1), (3, 4, 2, 4), (0, 2, 3, 4)])
    assert _merge_runs(np.zeros((3, 3), bool)) == []


@settings(max_examples=60, deadline=None)
@given(
    w=st.integers(1, 200), h=st.integers(1, 120), tile=st.sampled_from([16, 32, 64]),
    boxes=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.integers(1, 80), st.integers(1, 80)),
                   max_size=6),
    seed=st.integers(0, 2**16),
)
def test_random_changes_property(w: int, h: int, tile: int, boxes: list[tuple[float, float, int, int]],
                                 seed: int) -> None:
    t = DamageTracker(w, h, tile=tile)
    old = _frame(h, w, seed)
    t.reset(old)
    new = old.copy()
    rng = np.random.default_rng(seed + 1)
    for fx, fy, bw, bh in boxes:
        x, y = int(fx * (w - 1)), int(fy * (h - 1))
        new[y:y + bh, x:x + bw] = rng.integers(0, 256, new[y:y + bh, x:x + bw].shape, dtype=np.uint8)
    rects = t.update(new)
    _check(t, old, new, rects)
    assert t.update(new) == ()


def test_mostly_changed_frames_are_taken_whole_with_a_tight_box() -> None:
    w, h = 700, 420  # not multiples of the tile; even width: two pixels per compared word
    t = DamageTracker(w, h)
    old = _frame(h, w, 7)
    t.reset(old)
    rng = np.random.default_rng(8)
    for step in range(12):
        new = _frame(h, w, 100 + step)
        # unchanged margins of random width on every side, and an unchanged hole in the middle
        top, bottom, left, right = (int(v) for v in rng.integers(0, 30, 4))
        new[:top], new[h - bottom:], new[:, :left], new[:, w - right:] = (
            old[:top], old[h - bottom:], old[:, :left], old[:, w - right:])
        new[100:200, 300:400] = old[100:200, 300:400]
        whole = t.whole_frames
        rects = t.update(new)
        _check(t, old, new, rects)
        if step > 0:  # the first one found most tiles changed; from then on the pre-check takes frames whole
            assert t.whole_frames == whole + 1
            assert rects == (Rect(left, top, w - right - left, h - bottom - top),)
        old = new
    # small changes after the motion stops go back to the exact tile compare
    new = old.copy()
    new[5, 5] ^= 1
    new[300, 601] ^= 1
    rects = t.update(new)
    _check(t, old, new, rects)
    assert set(rects) == {Rect(5, 5, 1, 1), Rect(601, 300, 1, 1)}
    new2 = new.copy()
    new2[7, 7] ^= 1
    whole = t.whole_frames
    assert t.update(new2) == (Rect(7, 7, 1, 1),) and t.whole_frames == whole  # no pre-check after small damage


def test_pre_check_declines_when_the_sample_shows_little_change() -> None:
    t = DamageTracker(256, 128, tile=16)
    old = _frame(128, 256, 9)
    t.reset(old)
    new = _frame(128, 256, 10)
    _check(t, old, new, t.update(new))  # everything changed: the next update is pre-checked
    newer = new.copy()
    newer[1::SAMPLE_STRIDE] ^= 0x10  # every row the sample skips changes, none it looks at
    rects = t.update(newer)
    _check(t, new, newer, rects)
    assert t.whole_frames == 0


@settings(max_examples=40, deadline=None)
@given(
    w=st.integers(1, 200), h=st.integers(1, 120), tile=st.sampled_from([16, 32, 64]),
    steps=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30), st.integers(0, 30),
                             st.booleans()), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_sequences_of_large_and_small_changes_property(w: int, h: int, tile: int,
                                                       steps: list[tuple[int, int, int, int, bool]],
                                                       seed: int) -> None:
    t = DamageTracker(w, h, tile=tile)
    old = _frame(h, w, seed)
    t.reset(old)
    rng = np.random.default_rng(seed + 1)
    for x0, y0, x1, y1, big in steps:
        new = old.copy()
        if big:  # all but margins change
            new[y0:max(h - y1, y0), x0:max(w - x1, x0)] ^= rng.integers(1, 256, dtype=np.uint8)
        else:
            new[y0:y0 + y1 // 4 + 1, x0:x0 + x1 // 4 + 1] ^= 0x55
        rects = t.update(new)
        _check(t, old, new, rects)
        old = new


def test_frames_handed_out_are_never_written_while_referenced() -> None:
    w, h = 200, 120
    t = DamageTracker(w, h, tile=16)
    rng = np.random.default_rng(11)
    current = _frame(h, w, 12)
    t.reset(current)
    held: list[tuple[np.ndarray, np.ndarray, int]] = []  # (frame handed out, its content, release at step)
    for step in range(300):
        new = current.copy()
        if rng.random() < 0.15:
            new ^= rng.integers(1, 256, dtype=np.uint8)  # everything: the whole-frame path
        else:
            for _ in range(int(rng.integers(1, 4))):
                x, y = int(rng.integers(0, w - 1)), int(rng.integers(0, h - 1))
                new[y:y + int(rng.integers(1, 40)), x:x + int(rng.integers(1, 60))] ^= 0x5A
        rects = t.update(new)
        _check(t, current, new, rects)
        current = new
        if rng.random() < 0.5:  # kept by someone (a snapshot being encoded), sometimes only a slice of it
            kept = t.frame if rng.random() < 0.7 else t.frame[10:50, 20:90]
            held.append((kept, kept.copy(), step + int(rng.integers(1, 20))))
        for kept, content, _ in held:
            assert np.array_equal(kept, content), "a frame still referenced was written"
        held = [k for k in held if k[2] > step]
    assert t.buffer_switches > 50 and t.whole_frames > 0
    assert len(t._pool.buffers) <= POOL_BUFFERS


def test_frame_written_in_place_when_nobody_holds_it() -> None:
    t = DamageTracker(64, 64, tile=16)
    f = _frame(64, 64, 13)
    t.reset(f)
    g = f.copy()
    g[3, 3] ^= 1
    buffer_id = id(t._current)
    assert t.update(g) == (Rect(3, 3, 1, 1),)
    assert id(t._current) == buffer_id and t.buffer_switches == 0 and np.array_equal(t.frame, g)


def test_a_dropped_tracker_is_freed_at_once_not_by_the_cycle_collector() -> None:
    """The reader drops its tracker at every "no signal" and every new mode: with a reference cycle (the pool
    holding a bound method of its tracker) each one kept its frames until a full collection, and a server that
    lost its picture every few seconds grew by two frames each time (scripts/survive.py measured it)."""
    import gc
    import weakref

    gc.disable()
    try:
        tracker = DamageTracker(64, 32)
        tracker.reset(np.zeros((32, 64, 4), np.uint8))
        tracker.update(np.ones((32, 64, 4), np.uint8))
        gone = weakref.ref(tracker)
        del tracker
        assert gone() is None
    finally:
        gc.enable()

"""The hub's snapshots are built by patching reused buffers with damage (vkmsremote.server.hub
_SnapshotPool): every snapshot must stay exactly the frame it was made from for as long as anything
references it, whatever lags behind, and the buffers must really be reused and patched."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from clients.support import ControlledSource, RawClient, rgb_of

from vkmsremote.capture.damage import DamageTracker
from vkmsremote.frame import POOL_BUFFERS, POOL_HISTORY, Cursor, Frame, Pixels, Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.encodings import samples
from vkmsremote.rfb.messages import FramebufferUpdateRequest
from vkmsremote.server.app import VncServer
from vkmsremote.server.hub import Hub, Snapshot, _SnapshotPool

W, H = 64, 48


def random_change(rng: np.random.Generator, frame: Pixels) -> tuple[Rect, ...]:
    """Change one to three random rectangles of ``frame`` in place; exactly those rectangles."""
    rects = []
    for _ in range(int(rng.integers(1, 4))):
        x, y = int(rng.integers(0, W - 1)), int(rng.integers(0, H - 1))
        w, h = int(rng.integers(1, W - x + 1)), int(rng.integers(1, min(H - y, 12) + 1))
        frame[y:y + h, x:x + w] = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        rects.append(Rect(x, y, w, h))
    return tuple(rects)


def test_snapshots_stay_exact_while_held_and_buffers_are_patched() -> None:
    rng = np.random.default_rng(1)
    pool = _SnapshotPool()
    frame = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    held: list[tuple[Pixels, Pixels, int]] = []  # (snapshot, the frame it was built from, release at step)
    snap = pool.build(frame, None)
    for step in range(400):
        damage = random_change(rng, frame)
        snap = pool.build(frame, damage)  # the previous "current" snapshot is dropped here
        assert np.array_equal(snap, frame)
        assert not snap.flags.writeable
        if rng.random() < 0.3:  # a session encodes this one for a while, as a lagging worker thread would
            held.append((snap, frame.copy(), step + int(rng.integers(1, 2 * POOL_HISTORY))))
        for s, expected, _ in held:
            assert np.array_equal(s, expected), "a snapshot in use was written"
        held = [h for h in held if h[2] > step]
    assert pool.patched > 200  # most frames were patched, not copied whole (large changes are copied whole)
    assert pool.frames is not None and len(pool.frames.buffers) <= POOL_BUFFERS


def test_a_slice_of_a_snapshot_keeps_its_buffer() -> None:
    pool = _SnapshotPool()
    frame = np.zeros((H, W, 4), np.uint8)
    corner = pool.build(frame, None)[:8, :8]  # only a view of part of the snapshot survives
    for value in range(1, 10):
        frame[:8, :8] = value
        pool.build(frame, (Rect(0, 0, 8, 8),))
    assert (corner == 0).all()


def test_frames_older_than_the_history_and_unknown_damage_are_copied_whole() -> None:
    rng = np.random.default_rng(2)
    pool = _SnapshotPool()
    frame = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    held, expected = [], []
    for i in range(POOL_BUFFERS):
        held.append(pool.build(frame, None if i == 0 else random_change(rng, frame)))
        expected.append(frame.copy())
    assert pool.frames is not None and len(pool.frames.buffers) == POOL_BUFFERS
    for _ in range(POOL_HISTORY + 1):  # every pooled buffer is in use: each snapshot gets a new buffer
        snap = pool.build(frame, random_change(rng, frame))
        assert np.array_equal(snap, frame)
    assert pool.frames is not None and len(pool.frames.buffers) == POOL_BUFFERS
    del held[0]  # the only free buffer is now older than the damage history: it cannot be patched
    copies, patched = pool.full_copies, pool.patched
    snap = pool.build(frame, (Rect(0, 0, 1, 1),))
    assert np.array_equal(snap, frame) and (pool.full_copies, pool.patched) == (copies + 1, patched)
    frame[:2, :2] = 7  # a change the source could not describe: damage None
    assert np.array_equal(pool.build(frame, None), frame)
    for s, e in zip(held, expected[1:], strict=True):
        assert np.array_equal(s, e)  # still the frames they were built from


def test_resize_starts_afresh() -> None:
    pool = _SnapshotPool()
    small = np.full((H, W, 4), 3, np.uint8)
    old = pool.build(small, None)
    big = np.full((H * 2, W * 2, 4), 5, np.uint8)
    snap = pool.build(big, (Rect(0, 0, 1, 1),))  # damage across a resize means nothing
    assert np.array_equal(snap, big) and (old == 3).all()
    back = pool.build(small, (Rect(0, 0, 1, 1),))
    assert np.array_equal(back, small)


class ListSource:
    """Frames handed to Hub._publish by hand."""

    desktop_name = "list"

    def cursor(self) -> Cursor | None:
        return None


class Watcher:
    def __init__(self) -> None:
        self.got: list[tuple[Snapshot, tuple[Rect, ...] | None]] = []

    def frame_ready(self, snapshot: Snapshot, damage: tuple[Rect, ...] | None, resized_by: object | None) -> None:
        self.got.append((snapshot, damage))

    def cursor_changed(self, cursor: Cursor | None) -> None:
        pass

    def name_changed(self, name: str) -> None:
        pass


def test_hub_publishes_exact_snapshots_with_clipped_damage() -> None:
    rng = np.random.default_rng(3)
    hub = Hub(ListSource())  # type: ignore[arg-type]
    w = Watcher()
    hub._clients.append(w)
    frame = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    hub._publish(Frame(frame, 1, None))
    expected = [frame.copy()]
    for serial in range(2, 30):
        damage = random_change(rng, frame)
        hub._publish(Frame(frame, serial, (*damage, Rect(W - 4, H - 4, 100, 100))))
        expected.append(frame.copy())
    for (snap, damage), want in zip(w.got, expected, strict=True):
        assert np.array_equal(snap.pixels, want)  # every snapshot still held by the watcher is intact
        assert damage is None or all(r.x + r.w <= W and r.y + r.h <= H for r in damage)
    hub._publish(Frame(frame.astype(np.int64), 99, None))  # other dtypes are converted as before
    assert hub.snapshot is not None and np.array_equal(hub.snapshot.pixels, frame)
    with pytest.raises(ValueError, match="shape"):
        hub._publish(Frame(frame[:, :, :3], 100, None))


def test_a_lagging_client_gets_exact_frames_after_many_patched_snapshots() -> None:
    async def main() -> None:
        rng = np.random.default_rng(4)
        img = samples.photo_like(H, W)
        src = ControlledSource(img)
        server = VncServer(src, port=0)  # type: ignore[arg-type]
        await server.start()
        try:
            fast, slow = RawClient(), RawClient()
            for c in (fast, slow):
                await c.connect(server.port)
                c.set_encodings(Encoding.RAW)
                c.send(FramebufferUpdateRequest(False, 0, 0, W, H))
                await c.read_update()
            for _ in range(3 * POOL_HISTORY):
                src.set_frame(img, random_change(rng, img))
                fast.send(FramebufferUpdateRequest(True, 0, 0, W, H))
                await fast.read_update()
                assert np.array_equal(fast.rgb(), rgb_of(img))
            slow.send(FramebufferUpdateRequest(True, 0, 0, W, H))
            await slow.read_update()
            assert np.array_equal(slow.rgb(), rgb_of(img))
            assert server.hub._pool.patched > 0
        finally:
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_immutable_frames_from_a_damage_tracker_are_kept_without_a_copy() -> None:
    rng = np.random.default_rng(6)
    tracker = DamageTracker(W, H, tile=16)
    hub = Hub(ListSource())  # type: ignore[arg-type]
    w = Watcher()
    hub._clients.append(w)
    frame = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    tracker.reset(frame)
    hub._publish(Frame(tracker.frame, 1, None, immutable=True))
    expected = [frame.copy()]
    for serial in range(2, 60):
        random_change(rng, frame)
        damage = tracker.update(frame)
        hub._publish(Frame(tracker.frame, serial, damage, immutable=True))
        assert hub.snapshot is not None and np.shares_memory(hub.snapshot.pixels, tracker.frame)
        assert not hub.snapshot.pixels.flags.writeable
        expected.append(frame.copy())
        if serial % 3:  # the watcher lets go of most snapshots; the rest it keeps to the end
            w.got[-2:-1] = []
            expected[-2:-1] = []
    for (snap, _), want in zip(w.got, expected, strict=True):
        assert np.array_equal(snap.pixels, want)
    assert tracker.buffer_switches > 0 and hub._pool.full_copies == 0 and hub._pool.patched == 0

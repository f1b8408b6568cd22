"""One frame loop per FrameSource, fanned out to every session watching it.

The hub is the only caller of ``source.next_frame()``. Each frame becomes an immutable :class:`Snapshot`
(a source may overwrite its buffer as soon as it is asked for the next frame, and sessions encode in
worker threads at their own pace); the snapshot and the frame's damage are then handed to every session,
which merges the damage into its own tile grid.

A frame the source marks ``immutable`` (the capture reader's and the benchmark's: their damage tracker
never writes a frame that is still referenced) becomes the snapshot as it is, without a copy. Other
frames are not copied whole either (see :class:`_SnapshotPool`, a :class:`~vkmsremote.frame.FramePool`,
the same pool the damage tracker keeps its frames in): a few buffers are kept, and the next
snapshot is built in one that nobody references any more by copying only what changed since that buffer
was current (the damage of the frames in between, which the hub remembers for a few frames). So a frame
with a 16x16 change costs a 16x16 copy, not a copy of the whole screen. Nothing is queued per session: a slow
client simply finds more damage and a newer snapshot when it is ready again.

The hub asks the source for a frame only when some session wants one (``want_frame``: it has a request
outstanding, or continuous updates on, and has sent everything it had), so frames nobody would see are
neither fetched nor copied, and an idle server lets its source sleep. Nothing is lost by not fetching: a
source reports the damage since the frame it returned last. Resize requests from clients (SetDesktopSize) go through :meth:`Hub.request_resize`
to a source that implements :class:`~vkmsremote.frame.ResizableSource`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from vkmsremote.frame import (
    MAX_RESIZE,
    Cursor,
    Frame,
    FramePool,
    FrameSource,
    MultiScreenSource,
    Pixels,
    Rect,
    ResizableSource,
)
from vkmsremote.rfb.messages import ExtendedDesktopSizeStatus, Screen

log = logging.getLogger(__name__)

SCREEN_ID = 0x564B4D53  # 'VKMS': the id of the single screen this server reports (rfbproto "Screen Model")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A frame the hub owns: never written after creation, safe to read from any thread."""

    pixels: Pixels
    serial: int

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


class _SnapshotPool:
    """Read-only snapshots built in the buffers of a :class:`~vkmsremote.frame.FramePool`: each new
    snapshot goes into a buffer that no snapshot (or slice of one) references any more, brought up to date
    by copying only the damage since that buffer was current. Held by the hub as current, or by a session
    encoding it in a worker thread, a snapshot's buffer is not reused. Runs on the event loop thread only.
    """

    def __init__(self) -> None:
        self.frames: FramePool | None = None
        self.patched = 0
        self.full_copies = 0

    def build(self, src: Pixels, damage: tuple[Rect, ...] | None) -> Pixels:
        """A read-only copy of ``src``; ``damage``: what changed since the previous call (None: unknown)."""
        pool = self.frames
        if pool is None or pool.shape != src.shape:
            pool = self.frames = FramePool(src.shape)
            damage = None
        generation = pool.record(damage)
        buf = pool.free_buffer()
        if pool.catch_up(buf, src):
            self.full_copies += 1
        else:
            self.patched += 1
        buf.generation = generation
        view = buf.array.view()
        view.flags.writeable = False
        return view

    def forget(self) -> None:
        """A frame was kept without the pool: its buffers no longer hold anything recent."""
        if self.frames is not None:
            self.frames.clear()


class HubClient(Protocol):
    """What the hub calls on a session (all on the event loop thread)."""

    def frame_ready(self, snapshot: Snapshot, damage: tuple[Rect, ...] | None, resized_by: object | None) -> None:
        """A new snapshot; ``damage`` None means everything; ``resized_by`` is the session whose
        SetDesktopSize caused a size change (None if the size did not change or the server changed it)."""
        ...

    def cursor_changed(self, cursor: Cursor | None) -> None: ...

    def name_changed(self, name: str) -> None: ...


class Hub:
    def __init__(self, source: FrameSource) -> None:
        self.source = source
        self.snapshot: Snapshot | None = None
        self.cursor: Cursor | None = None
        self.desktop_name: str = source.desktop_name
        self.screens: tuple[Screen, ...] = ()
        self.frames = 0
        self._clients: list[HubClient] = []
        self._watched = asyncio.Event()
        self._demand = asyncio.Event()
        self._demand.set()  # the first frame is always fetched
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resize_by: object | None = None
        self._error: BaseException | None = None
        self._pool = _SnapshotPool()

    # --- life cycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="vkmsremote-hub")

    async def close(self) -> None:
        task = self._task
        if task is not None:
            # Cancel until it is done: a source's await can swallow a cancellation (asyncio.wait_for before
            # Python 3.12, when what it waits for completes at the same moment), and the loop would run on.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
            with contextlib.suppress(BaseException):  # a failure was already reported (``failed``)
                task.result()
            self._task = None

    @property
    def done(self) -> asyncio.Future[None]:
        """Completes when the frame loop stops (only by failure or close)."""
        if self._task is None:
            raise RuntimeError("the hub has not been started")
        return self._task

    @property
    def failed(self) -> BaseException | None:
        """The exception that stopped the frame loop, if it stopped."""
        return self._error

    async def _run(self) -> None:
        try:
            while True:
                if not self._clients:
                    self._watched.clear()
                    await self._watched.wait()
                await self._demand.wait()
                self._demand.clear()
                frame = await self.source.next_frame()
                self._publish(frame)
                await asyncio.sleep(0)  # a source that never suspends must not starve the sessions
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # the source died: sessions must learn it rather than wait forever
            log.error("frame source failed: %s", e)
            self._error = e
            self._first.set()
            for c in list(self._clients):
                closer = getattr(c, "abort", None)
                if closer is not None:
                    closer(f"frame source failed: {e}")
            raise

    def _publish(self, frame: Frame) -> None:
        src = frame.pixels
        if not isinstance(src, np.ndarray) or src.dtype != np.uint8:
            src = np.asarray(src, dtype=np.uint8)
        if src.ndim != 3 or src.shape[2] != 4:
            raise ValueError(f"frame source delivered an array of shape {src.shape}, not (h, w, 4)")
        height, width = int(src.shape[0]), int(src.shape[1])
        old = self.snapshot
        resized = old is None or (old.width, old.height) != (width, height)
        damage: tuple[Rect, ...] | None = None
        if not resized and frame.damage is not None:
            damage = tuple(r for r in (d.clip(width, height) for d in frame.damage) if r is not None)
        if frame.immutable and src is frame.pixels:
            pixels = src.view()
            pixels.flags.writeable = False
            self._pool.forget()
        else:
            pixels = self._pool.build(src, damage)
        snap = Snapshot(pixels, frame.serial)
        resized_by = None
        if resized:
            resized_by, self._resize_by = self._resize_by, None
            if isinstance(self.source, MultiScreenSource):  # one screen per monitor, ids stable (rfbproto "Screen Model")
                self.screens = tuple(Screen(SCREEN_ID + n, r.x, r.y, r.w, r.h) for n, r in self.source.screens())
            elif not self.screens or resized_by is None:
                self.screens = (Screen(SCREEN_ID, 0, 0, snap.width, snap.height),)
        self.snapshot = snap
        self.frames += 1
        for c in list(self._clients):
            c.frame_ready(snap, damage, resized_by if old is not None else None)
        cursor = self.source.cursor()
        if cursor is not self.cursor and (cursor is None or self.cursor is None or cursor.serial != self.cursor.serial):
            self.cursor = cursor
            for c in list(self._clients):
                c.cursor_changed(cursor)
        name = self.source.desktop_name
        if name != self.desktop_name:
            self.desktop_name = name
            for c in list(self._clients):
                c.name_changed(name)
        self._first.set()

    # --- sessions ----------------------------------------------------------------------------------------

    async def attach(self, client: HubClient) -> Snapshot:
        """Register a session and return the current snapshot (waiting for the very first frame)."""
        self.start()
        self._clients.append(client)
        self._watched.set()
        await self._first.wait()
        if self._error is not None:
            self.detach(client)
            raise self._error
        assert self.snapshot is not None
        return self.snapshot

    def want_frame(self) -> None:
        """A session is ready for a newer frame than the current snapshot."""
        self._demand.set()

    def detach(self, client: HubClient) -> None:
        if client in self._clients:
            self._clients.remove(client)
        if self._resize_by is client:
            self._resize_by = None

    @property
    def clients(self) -> tuple[HubClient, ...]:
        return tuple(self._clients)

    # --- resizing (SetDesktopSize) --------------------------------------------------------------------------

    def request_resize(self, client: HubClient, width: int, height: int, screens: tuple[Screen, ...]) -> int:
        """Ask the source for a new size; an ExtendedDesktopSize status code (0 = done or under way)."""
        snap = self.snapshot
        if snap is None:
            return ExtendedDesktopSizeStatus.OUT_OF_RESOURCES
        if not (1 <= width <= MAX_RESIZE and 1 <= height <= MAX_RESIZE):
            return ExtendedDesktopSizeStatus.INVALID_LAYOUT
        # Only one screen covering the whole framebuffer is supported (the source is one CRTC).
        if len(screens) != 1 or (screens[0].x, screens[0].y, screens[0].width, screens[0].height) != (0, 0, width, height):
            return ExtendedDesktopSizeStatus.INVALID_LAYOUT
        if (width, height) == (snap.width, snap.height):
            self.screens = screens
            return ExtendedDesktopSizeStatus.OK
        if not isinstance(self.source, ResizableSource):
            return ExtendedDesktopSizeStatus.PROHIBITED
        status = int(self.source.request_resize(width, height))
        if status == ExtendedDesktopSizeStatus.OK:
            self._resize_by = client
            self.screens = screens
            self._demand.set()  # the frame of the new size answers the request
        return status

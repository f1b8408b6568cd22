"""A synthetic page-flipping scanout shared between processes, for the host pipeline benchmark.

Theory of operation: a file in /dev/shm holds a header, a flip log and two framebuffers, mapped by
two processes that play the kernel's two sides:

* the *driver* (:func:`run_driver`, its own process, like a compositor) draws frame n of a workload
  into a private canvas, copies what changed since the back buffer last held a frame into the back
  buffer and queues a flip of it for the next vblank tick (a nonblocking atomic commit), waits for
  that tick and logs the tick's time under the frame number (the kernel's flip-event timestamp);
* the *reader* (:class:`SyntheticCrtc`, in the VNC server's process) is a FrameSource that behaves
  like vkmsremote.capture.crtc.CrtcReader: it wakes on every vblank tick, looks at the buffer scanned
  out at that tick (a queued flip whose tick has come is latched, as the hardware does), runs the same
  DamageTracker over it and returns a frame only when something changed. It paces its looks with
  CrtcReader's own :class:`~vkmsremote.capture.crtc.Pacing` (fewer looks, mostly cheap probes of every
  PROBE_STRIDE-th row, once nothing has changed for a while).

Vblank ticks are ``t0 + k / refresh`` on CLOCK_MONOTONIC (time.monotonic), with t0 in the header,
so both sides (and the C client's timestamps) share one clock. The driver never draws into a buffer
before the flip away from it has happened, as with real double buffering.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from vkmsremote.bench.workloads import copy_rect, make_workload
from vkmsremote.capture.crtc import PROBE_STRIDE, Pacing, WakeableTimer
from vkmsremote.capture.damage import DEFAULT_TILE, DamageTracker
from vkmsremote.errors import UsageError
from vkmsremote.frame import Cursor, Frame, Pixels, Rect

MAGIC = 0x564B4D5342454E43  # 'VKMSBENC'
LOG_SIZE = 1 << 16
"""Flip times kept per frame number (mod LOG_SIZE): 18 minutes at 60 frames/s."""
_INTS = 16
_FLOATS = 8
# Header slots (int64): magic, width, height, front buffer index, flips, stop request, ready, frame on front,
# queued flip: its buffer index and the tick it latches at.
I_MAGIC, I_WIDTH, I_HEIGHT, I_FRONT, I_FLIPS, I_STOP, I_READY, I_FRAME, I_PENDING, I_PENDING_TICK = range(10)
NEVER = 1 << 62
# Header slots (float64): t0 of the vblank grid, refresh rate.
F_T0, F_REFRESH = range(2)
VBLANK_DELAY = 0.0005
"""The reader looks this long after a tick, as a vblank event arrives just after the flip latched."""


class FlipLog:
    """Flip times (CLOCK_MONOTONIC seconds) by frame number, in a file other processes can map."""

    def __init__(self, times: npt.NDArray[np.float64]) -> None:
        self.times = times

    @classmethod
    def create(cls, path: Path) -> FlipLog:
        """A log of its own in a file (for drivers that draw elsewhere, e.g. through X11)."""
        times = np.memmap(path, np.float64, "w+", 0, (LOG_SIZE,))
        times[:] = np.nan
        return cls(times)

    @classmethod
    def open(cls, path: Path) -> FlipLog:
        return cls(np.memmap(path, np.float64, "r+", 0, (LOG_SIZE,)))

    def record(self, number: int, when: float) -> None:
        self.times[number % LOG_SIZE] = when

    def time_of(self, number: int) -> float:
        """When frame ``number`` was flipped (NaN if it never was, or the log has wrapped past it)."""
        return float(self.times[number % LOG_SIZE])

    def flips_between(self, t0: float, t1: float) -> int:
        t = self.times
        return int(np.count_nonzero((t >= t0) & (t < t1)))


@dataclass
class Scanout:
    """The shared file's views: ``ints``/``floats`` header, ``log``, ``buffers`` (2, h, w, 4)."""

    path: Path
    ints: npt.NDArray[np.int64]
    floats: npt.NDArray[np.float64]
    log: FlipLog
    buffers: npt.NDArray[np.uint8]
    _map: np.memmap

    @staticmethod
    def _size(width: int, height: int) -> int:
        return 8 * (_INTS + _FLOATS + LOG_SIZE) + 2 * width * height * 4

    @classmethod
    def create(cls, path: Path, width: int, height: int) -> Scanout:
        with open(path, "wb") as f:
            f.truncate(cls._size(width, height))
        scan = cls._map_file(path, width, height)
        scan.log.times[:] = np.nan
        scan.ints[I_WIDTH], scan.ints[I_HEIGHT] = width, height
        scan.ints[I_MAGIC] = MAGIC
        return scan

    @classmethod
    def open(cls, path: Path) -> Scanout:
        head = np.memmap(path, np.int64, "r", 0, (_INTS,))
        if int(head[I_MAGIC]) != MAGIC:
            raise UsageError(f"{path} is not a benchmark scanout file")
        width, height = int(head[I_WIDTH]), int(head[I_HEIGHT])
        del head
        return cls._map_file(path, width, height)

    @classmethod
    def _map_file(cls, path: Path, width: int, height: int) -> Scanout:
        m = np.memmap(path, np.uint8, "r+", 0, (cls._size(width, height),))
        ints = m[:8 * _INTS].view(np.int64)
        floats = m[8 * _INTS:8 * (_INTS + _FLOATS)].view(np.float64)
        log_end = 8 * (_INTS + _FLOATS + LOG_SIZE)
        log = FlipLog(m[8 * (_INTS + _FLOATS):log_end].view(np.float64))
        # Plain ndarrays over the mapping (np.memmap's Python-level __array_finalize__ would run on every
        # slice the damage tracker and encoders take; a mapped DRM buffer is a plain ndarray too).
        buffers = np.asarray(m[log_end:]).reshape(2, height, width, 4)
        return cls(path, ints, floats, log, buffers, m)

    @property
    def width(self) -> int:
        return int(self.ints[I_WIDTH])

    @property
    def height(self) -> int:
        return int(self.ints[I_HEIGHT])

    def scanned_out(self, tick: int) -> int:
        """The index of the buffer on screen at vblank ``tick`` (a flip queued for it or earlier has latched)."""
        pending_tick = int(self.ints[I_PENDING_TICK])
        return int(self.ints[I_PENDING] if pending_tick <= tick else self.ints[I_FRONT])

    def buffer(self, index: int) -> Pixels:
        pixels: Pixels = self.buffers[index]
        return pixels

    def queue_flip(self, index: int, tick: int) -> None:
        self.ints[I_PENDING_TICK] = NEVER  # readers must not pair the new index with an old tick
        self.ints[I_PENDING] = index
        self.ints[I_PENDING_TICK] = tick

    def flip_done(self, index: int) -> None:
        self.ints[I_FRONT] = index
        self.ints[I_PENDING_TICK] = NEVER

    def tick_time(self, k: int) -> float:
        return float(self.floats[F_T0]) + k / float(self.floats[F_REFRESH])

    def next_tick(self, now: float, after: int = -1) -> int:
        """The index of the first vblank tick later than ``now`` and than tick ``after``."""
        t0, refresh = float(self.floats[F_T0]), float(self.floats[F_REFRESH])
        return max(math.floor((now - t0) * refresh) + 1, after + 1)

    def close(self) -> None:
        self._map.flush()
        del self._map


def run_driver(path: Path, workload: str, *, fps: float = 60.0, refresh: float = 60.0,
               frames: int | None = None) -> int:
    """Flip ``workload`` frames onto the scanout at ``path`` (already created) until asked to stop.

    Returns the number of flips. Flips happen on vblank ticks, at most ``fps`` per second; if drawing
    takes longer than a frame, the flip waits for the next tick (as a compositor's would)."""
    scan = Scanout.open(path)
    wl = make_workload(workload, scan.width, scan.height)
    canvas = np.zeros((scan.height, scan.width, 4), np.uint8)
    wl.first(canvas)
    scan.buffers[0] = canvas
    scan.buffers[1] = canvas
    scan.floats[F_REFRESH] = refresh
    scan.floats[F_T0] = time.monotonic()
    scan.ints[I_FRONT] = 0
    scan.ints[I_PENDING_TICK] = NEVER
    scan.ints[I_FRAME] = 0
    scan.log.record(0, time.monotonic())
    scan.ints[I_READY] = 1
    step = max(1, round(refresh / fps))
    last_tick = 0
    prev: tuple[Rect, ...] = ()
    n = 0
    while not scan.ints[I_STOP] and (frames is None or n < frames):
        if not wl.changes:
            time.sleep(0.05)
            continue
        n += 1
        damage = wl.draw(n, canvas)
        back = 1 - int(scan.ints[I_FRONT])
        buf = scan.buffers[back]
        for r in (*prev, *damage):  # the back buffer holds frame n - 2
            copy_rect(buf, canvas, r)
        k = scan.next_tick(time.monotonic(), last_tick + step - 1)
        scan.queue_flip(back, k)
        delay = scan.tick_time(k) - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        scan.flip_done(back)
        scan.ints[I_FRAME] = n
        scan.log.record(n, scan.tick_time(k))
        scan.ints[I_FLIPS] += 1
        last_tick = k
        prev = damage
    flips = int(scan.ints[I_FLIPS])
    scan.close()
    return flips


class SyntheticCrtc:
    """A FrameSource over a :class:`Scanout`, doing per vblank what CrtcReader does per vblank:
    read the front buffer, compare it with the last frame (DamageTracker), return it if it changed.

    ``timings`` (if given) receives the CPU seconds spent in the damage stage."""

    def __init__(self, path: Path, *, tile: int = DEFAULT_TILE, timings: dict[str, float] | None = None,
                 pacing: Pacing | None = None) -> None:
        self.pacing = pacing or Pacing()
        self.scan = Scanout.open(path)
        deadline = time.monotonic() + 30
        while not self.scan.ints[I_READY]:
            if time.monotonic() > deadline:
                raise UsageError(f"the benchmark driver never drew the first frame into {path}")
            time.sleep(0.01)
        self.tracker = DamageTracker(self.scan.width, self.scan.height, tile)
        self.timings = timings if timings is not None else {}
        self._serial = -1
        self._tick = -1
        self._unchanged = 0
        self._index = -1  # the buffer index of the last look
        self.vblanks = 0
        self.probes = 0
        self.look_cost = 0.0  # CPU seconds an idle look takes (moving average, as CrtcReader's)
        self._timer = WakeableTimer()

    @property
    def desktop_name(self) -> str:
        return f"benchmark scanout {self.scan.width}x{self.scan.height}"

    def cursor(self) -> Cursor | None:
        return None

    async def close(self) -> None:
        self.scan.close()

    def wake(self) -> None:
        """A client sent input: look at every vblank again (as CrtcReader.wake)."""
        self._unchanged = 0
        self._timer.wake()


    def _compare(self, probe: bool) -> tuple[Rect, ...] | None:
        """The damage at the current tick; None if an idle probe found nothing (no full compare made)."""
        t = time.thread_time()
        try:
            index = self.scan.scanned_out(self._tick)
            buffer = self.scan.buffer(index)
            if probe and index == self._index and np.array_equal(buffer[::PROBE_STRIDE],
                                                                 self.tracker.frame[::PROBE_STRIDE]):
                self.probes += 1
                return None
            self._index = index
            return self.tracker.update(buffer)
        finally:
            self.timings["damage"] = self.timings.get("damage", 0.0) + time.thread_time() - t

    async def next_frame(self) -> Frame:
        if self._serial < 0:
            self._tick = self.scan.next_tick(time.monotonic()) - 1
            self._index = self.scan.scanned_out(self._tick)
            self.tracker.reset(self.scan.buffer(self._index))
            self._serial = 0
            return Frame(self.tracker.frame, 0, None, immutable=True)
        while True:
            delay, full = self.pacing.step(self._unchanged, self.look_cost)
            now = time.monotonic()
            if delay is None:  # active: the next vblank, as CrtcReader's sequence event
                self._tick = self.scan.next_tick(now, self._tick)
                await asyncio.sleep(max(0.0, self.scan.tick_time(self._tick) + VBLANK_DELAY - now))
                self.vblanks += 1
                probe = not full  # as CrtcReader: probes between full checks while active too
            else:  # idle: a timer that wake() cuts short, then whatever is scanned out by then
                await self._timer.sleep(delay)
                self._tick = max(self._tick, self.scan.next_tick(time.monotonic()) - 1)
                probe = not full
            started = time.thread_time()
            damage = self._compare(probe=probe)
            if delay is not None:
                self.look_cost = 0.8 * self.look_cost + 0.2 * (time.thread_time() - started)
            if damage:
                self._unchanged = 0
                self._serial += 1
                return Frame(self.tracker.frame, self._serial, damage, immutable=True)
            self._unchanged += 1


def shm_path(tag: str) -> Path:
    """A fresh path for a scanout file: in /dev/shm when it exists (RAM), else the temp directory."""
    import tempfile

    base = Path("/dev/shm") if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else Path(
        tempfile.gettempdir())
    return base / f"vkmsremote-bench-{tag}-{os.getpid()}-{time.monotonic_ns()}"


def main(argv: list[str] | None = None) -> int:
    """``python -m vkmsremote.bench.scanout SCANOUT WORKLOAD``: the driver process of bench_pipeline."""
    import argparse

    p = argparse.ArgumentParser(description="flip a benchmark workload onto a scanout file until stopped")
    p.add_argument("scanout", type=Path)
    p.add_argument("workload")
    p.add_argument("--fps", type=float, default=60.0)
    p.add_argument("--refresh", type=float, default=60.0)
    args = p.parse_args(argv)
    run_driver(args.scanout, args.workload, fps=args.fps, refresh=args.refresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

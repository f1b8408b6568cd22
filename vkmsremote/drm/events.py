"""DRM events read from the card fd (vblank, page-flip complete, CRTC sequence), vblank requests, and
asyncio integration through ``loop.add_reader`` on the card fd.

The kernel writes whole ``struct drm_event`` records to the fd; a read returns as many whole records as
fit (drm_read in drivers/gpu/drm/drm_file.c), so one read never splits an event.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass

from vkmsremote.drm import ioctl as k
from vkmsremote.drm.card import Card
from vkmsremote.drm.ioctl import EventType
from vkmsremote.errors import DrmError, TimeoutError_

_READ_SIZE = 4096
_VBLANK_SIZE = ctypes.sizeof(k.drm_event_vblank)
_SEQUENCE_SIZE = ctypes.sizeof(k.drm_event_crtc_sequence)
_HEADER_SIZE = ctypes.sizeof(k.drm_event)


@dataclass(frozen=True, slots=True)
class VblankEvent:
    """DRM_EVENT_VBLANK or DRM_EVENT_FLIP_COMPLETE (struct drm_event_vblank)."""

    type: EventType
    user_data: int
    tv_sec: int
    tv_usec: int
    sequence: int
    crtc_id: int

    @property
    def timestamp(self) -> float:
        return self.tv_sec + self.tv_usec / 1e6


@dataclass(frozen=True, slots=True)
class CrtcSequenceEvent:
    """DRM_EVENT_CRTC_SEQUENCE (struct drm_event_crtc_sequence), answering :func:`queue_sequence`."""

    user_data: int
    time_ns: int
    sequence: int


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    type: int
    payload: bytes


DrmEvent = VblankEvent | CrtcSequenceEvent | UnknownEvent


def parse_events(data: bytes) -> list[DrmEvent]:
    """Split what one read() of a card fd returned into events."""
    events: list[DrmEvent] = []
    pos = 0
    while pos + _HEADER_SIZE <= len(data):
        head = k.drm_event.from_buffer_copy(data, pos)
        if head.length < _HEADER_SIZE or pos + head.length > len(data):
            raise DrmError(f"read of DRM events: malformed record (type {head.type}, length {head.length})",
                           errno.EPROTO)
        record = data[pos: pos + head.length]
        if head.type in (EventType.VBLANK, EventType.FLIP_COMPLETE) and head.length >= _VBLANK_SIZE:
            v = k.drm_event_vblank.from_buffer_copy(record)
            events.append(VblankEvent(EventType(head.type), v.user_data, v.tv_sec, v.tv_usec, v.sequence, v.crtc_id))
        elif head.type == EventType.CRTC_SEQUENCE and head.length >= _SEQUENCE_SIZE:
            s = k.drm_event_crtc_sequence.from_buffer_copy(record)
            events.append(CrtcSequenceEvent(s.user_data, s.time_ns, s.sequence))
        else:
            events.append(UnknownEvent(head.type, record[_HEADER_SIZE:]))
        pos += head.length
    if pos != len(data):
        raise DrmError(f"read of DRM events: {len(data) - pos} trailing bytes", errno.EPROTO)
    return events


def read_events(card: Card) -> list[DrmEvent]:
    """Every event pending on the card fd now ([] if none; the fd is non-blocking)."""
    out: list[DrmEvent] = []
    while True:
        try:
            data = os.read(card.fd, _READ_SIZE)
        except BlockingIOError:
            return out
        except InterruptedError:
            continue
        except OSError as exc:
            raise DrmError("read of DRM events", exc.errno or errno.EIO) from None
        if not data:
            return out
        out.extend(parse_events(data))


# --- vblank requests ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CrtcSequence:
    active: bool
    sequence: int
    time_ns: int


def get_sequence(card: Card, crtc_id: int) -> CrtcSequence:
    """DRM_IOCTL_CRTC_GET_SEQUENCE: the CRTC's latest vblank count and time, and whether it is active."""
    arg = k.drm_crtc_get_sequence(crtc_id=crtc_id)
    card.ioctl(k.DRM_IOCTL_CRTC_GET_SEQUENCE, arg, "DRM_IOCTL_CRTC_GET_SEQUENCE", crtc_id)
    return CrtcSequence(bool(arg.active), int(arg.sequence), int(arg.sequence_ns))


def queue_sequence(card: Card, crtc_id: int, sequence: int = 1, *, relative: bool = True,
                   next_on_miss: bool = True, user_data: int = 0) -> int:
    """DRM_IOCTL_CRTC_QUEUE_SEQUENCE: ask for a CrtcSequenceEvent at vblank ``sequence`` (default: the next).

    Returns the sequence the event will carry. Fails with EINVAL while the CRTC is off.
    """
    flags = (k.CRTC_SEQUENCE_RELATIVE if relative else 0) | (k.CRTC_SEQUENCE_NEXT_ON_MISS if next_on_miss else 0)
    arg = k.drm_crtc_queue_sequence(crtc_id=crtc_id, flags=flags, sequence=sequence, user_data=user_data)
    card.ioctl(k.DRM_IOCTL_CRTC_QUEUE_SEQUENCE, arg, "DRM_IOCTL_CRTC_QUEUE_SEQUENCE", crtc_id)
    return int(arg.sequence)


# --- asyncio ---------------------------------------------------------------------------------------------------


class EventReader:
    """Reads a card's events in the asyncio loop (``loop.add_reader`` on the card fd).

    Events are queued; :meth:`wait_for` returns the first queued event matching a predicate and keeps the
    others. One EventReader per card fd: events go to the fd that asked for them.
    """

    def __init__(self, card: Card, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.card = card
        self._loop = loop or asyncio.get_running_loop()
        self._queue: collections.deque[DrmEvent] = collections.deque(maxlen=1024)
        self._changed = asyncio.Event()
        self._error: BaseException | None = None
        self._fd = card.fd
        self._loop.add_reader(self._fd, self._on_readable)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def _on_readable(self) -> None:
        try:
            self._queue.extend(read_events(self.card))
        except BaseException as exc:  # surfaced to the waiter, not lost in the loop's handler
            self._error = exc
            self._loop.remove_reader(self._fd)
        self._changed.set()

    def pending(self) -> list[DrmEvent]:
        """Take every queued event."""
        out = list(self._queue)
        self._queue.clear()
        return out

    async def wait_for(self, predicate: Callable[[DrmEvent], bool], timeout: float | None = None) -> DrmEvent:
        async def _wait() -> DrmEvent:
            while True:
                for ev in self._queue:
                    if predicate(ev):
                        self._queue.remove(ev)
                        return ev
                if self._error is not None:
                    raise self._error
                self._changed.clear()
                await self._changed.wait()

        try:
            # asyncio.timeout, not wait_for: before Python 3.12 wait_for can swallow a cancellation that
            # arrives as the event does, and a frame loop being shut down would then run on.
            async with asyncio.timeout(timeout):
                return await _wait()
        except TimeoutError:
            raise TimeoutError_(f"no matching DRM event on {self.card.path} within {timeout} s",
                                hint="is the CRTC active? (vblank events stop while it is off)") from None

    def close(self) -> None:
        if self._fd >= 0:
            if not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            self._fd = -1

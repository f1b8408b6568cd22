"""Encode results shared between connections: the same rectangle of the same frame, with the same
parameters, is encoded once however many clients are sent it.

Only for data that depends on nothing but the pixels and the parameters (Tight's JPEG rectangles; not
zlib data, whose streams belong to one connection, RFC 6143 7.7.6). Frames are told apart by identity:
every session encodes the hub's snapshot, one read-only array object per frame, so the clients that are
sent the same frame pass the same object (writable arrays are never shared: they may change in place). Results are kept for the newest KEEP_FRAMES frames only, and
never keep a frame alive (a weak reference tells whether the object is still the same frame: an id can be
reused once an array is gone). Concurrent callers for the same key wait for the first one's result
instead of encoding it again.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any, TypeVar

from vkmsremote.frame import Pixels

T = TypeVar("T")

KEEP_FRAMES = 3
"""Frames whose results are kept (the current one, and the one or two before for clients a little behind)."""


class SharedResults:
    def __init__(self, keep_frames: int = KEEP_FRAMES) -> None:
        self._lock = threading.Lock()
        self._frames: OrderedDict[int, tuple[weakref.ref[Any], dict[Hashable, Future[Any]]]] = OrderedDict()
        self._keep = keep_frames
        self.computed = 0
        self.shared = 0

    def get(self, frame: Pixels, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``'s result for (frame, key): computed by the first caller, shared with the others.

        Only read-only frames (the hub's snapshots) are shared: a writable array may change under the same
        identity, so its results are computed every time."""
        if frame.flags.writeable:
            return compute()
        with self._lock:
            entry = self._frames.get(id(frame))
            if entry is None or entry[0]() is not frame:
                entry = (weakref.ref(frame), {})
                self._frames[id(frame)] = entry
                while len(self._frames) > self._keep:
                    self._frames.popitem(last=False)
            results = entry[1]
            future = results.get(key)
            mine = future is None
            if future is None:
                future = results[key] = Future()
                self.computed += 1
            else:
                self.shared += 1
        if not mine:
            result: T = future.result()
            return result
        try:
            value = compute()
        except BaseException as e:
            with self._lock:
                results.pop(key, None)  # a later caller tries again
            future.set_exception(e)
            raise
        future.set_result(value)
        return value


JPEG_RESULTS = SharedResults()
"""Tight's JPEG rectangles (rfb.encodings.tight)."""

__all__ = ["JPEG_RESULTS", "KEEP_FRAMES", "SharedResults"]

"""One encode for many clients: shared Open H.264 streams.

Clients whose H.264 rectangle has the same size and whose quality maps to the same x264 CRF form a
*group* with one libx264 stream. The first member to ask for a snapshot's frame encodes it (under the
group's lock); the others get the same bytes. A member may use a frame only if the frame before it in the
group's stream is the last one that member decoded (or if the frame is an IDR): H.264 P-frames refer to
the previous frame. Members that receive every frame (continuous updates, keeping up) therefore share
every encode.

A member that skipped frames the group encoded gets them all in one update, oldest first, before the one it
asked for (each its own rectangle on the same context: the client decodes them in order and shows the
last), as long as the group still keeps them (KEEP_FRAMES): no encode, a few KB per P-frame. A member
further behind, or asking for a frame older than the group's newest, is never waited for either: it
switches to a private stream of its own at once (a new IDR for it alone, flag ResetAllContexts), and asks
the group for a new stream so it can come back. The group starts one (an
IDR for every member) at most every JOIN_INTERVAL seconds; at that IDR the member drops its private stream
and decodes the group's again. So a slow client costs the others at most one IDR per JOIN_INTERVAL, and
never a wait.

Per-connection zlib streams (Zlib, ZRLE, Tight's lossless parts) are per client by the spec and are not
shared here.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from vkmsremote.frame import Pixels, Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.encodings import EncodedRect, EncoderSettings
from vkmsremote.rfb.encodings.h264 import H264Flags, H264Stream, crf_for, fits, payload

JOIN_INTERVAL = 2.0
"""Seconds between IDRs a group starts for members that want to (re)join."""
KEEP_FRAMES = 16
"""Encoded frames a group keeps: for members that ask for them a little later, and for members that
skipped some, which get the ones they missed in a row (a few KB each) instead of a new stream."""


@dataclass(frozen=True, slots=True)
class _Frame:
    stream: int
    previous: int | None
    """Serial of the frame before this one in the same stream (None: this is the stream's IDR)."""
    data: bytes


class _Group:
    def __init__(self, width: int, height: int, crf: int) -> None:
        self.width, self.height, self.crf = width, height, crf
        self.lock = threading.Lock()
        self.stream: H264Stream | None = None
        self.stream_id = 0
        self.newest: int | None = None
        self.frames: OrderedDict[int, _Frame] = OrderedDict()
        self.join_wanted = False
        self.last_idr = 0.0
        self.encodes = 0
        self.members: weakref.WeakSet[SharedVideo] = weakref.WeakSet()

    def frame(self, pixels: Pixels, serial: int, clock: Callable[[], float]) -> _Frame | None:
        """The group's frame for ``serial`` (encoded now if it is newer than any); None if the group has
        moved past it without encoding it. Call with ``lock`` held."""
        got = self.frames.get(serial)
        if got is not None:
            return got
        if self.newest is not None and serial < self.newest:
            return None
        now = clock()
        previous = self.newest
        if self.stream is None or (self.join_wanted and now - self.last_idr >= JOIN_INTERVAL):
            self.stream = H264Stream(self.width, self.height, self.crf)
            self.stream_id += 1
            self.join_wanted = False
            self.last_idr = now
            previous = None
        data, _ = self.stream.encode(pixels)
        self.encodes += 1
        got = _Frame(self.stream_id, previous, data)
        self.frames[serial] = got
        self.newest = serial
        while len(self.frames) > KEEP_FRAMES:
            self.frames.popitem(last=False)
        return got


class VideoShare:
    """The groups of one server (SessionContext.video_share)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._groups: dict[tuple[int, int, int], _Group] = {}
        self._lock = threading.Lock()
        self._encodes_before = 0  # by groups since dropped
        self.clock = clock

    def group(self, width: int, height: int, crf: int) -> _Group:
        with self._lock:
            for key in [k for k, g in self._groups.items() if not g.members]:
                self._encodes_before += self._groups.pop(key).encodes
            key = (width, height, crf)
            g = self._groups.get(key)
            if g is None:
                g = self._groups[key] = _Group(width, height, crf)
            return g

    @property
    def encodes(self) -> int:
        """Frames encoded by all groups (for tests and benchmarks)."""
        with self._lock:
            return self._encodes_before + sum(g.encodes for g in self._groups.values())

    def member(self, settings: EncoderSettings) -> SharedVideo:
        return SharedVideo(self, settings)


class SharedVideo:
    """One client's view of the shared streams (implements server.motion.VideoEncoder)."""

    def __init__(self, share: VideoShare, settings: EncoderSettings) -> None:
        self.settings = settings
        self._share = share
        self._lock = threading.Lock()
        self._group: _Group | None = None
        self._stream: int | None = None
        """The group stream this client decodes, or None (private stream, or nothing yet)."""
        self._last: int | None = None
        self._private: H264Stream | None = None
        self._rect: Rect | None = None
        self.shared_frames = 0
        self.private_frames = 0
        self.caught_up = 0
        """Group frames sent late, in a row before a newer one (the member had skipped them)."""

    def reset(self) -> None:
        with self._lock:
            self._stream = self._last = None
            self._private = None

    def encode_video(self, pixels: Pixels, rect: Rect, serial: int) -> list[EncodedRect]:
        if not fits(rect):
            raise ValueError(f"{rect} cannot be sent as one H.264 rectangle")
        with self._lock:
            return [(rect, Encoding.OPEN_H264, data) for data in self._encode(pixels, rect, serial)]

    def _encode(self, pixels: Pixels, rect: Rect, serial: int) -> list[bytes]:
        """Payloads (U32 length, U32 flags, H.264) to send, in order, for the frame ``serial``."""
        crf = crf_for(self.settings)
        group = self._share.group(rect.w, rect.h, crf)
        if group is not self._group or rect != self._rect:
            if self._group is not None:
                self._group.members.discard(self)
            group.members.add(self)
            self._group, self._rect = group, rect
            self._stream = self._last = None
            self._private = None
        region = pixels[rect.y:rect.y + rect.h, rect.x:rect.x + rect.w]
        with group.lock:
            frame = group.frame(region, serial, self._share.clock)
            if frame is not None:
                if frame.previous is None or (frame.stream == self._stream and frame.previous == self._last):
                    flags = H264Flags.NONE if frame.previous is not None else H264Flags.RESET_ALL_CONTEXTS
                    self._stream, self._last, self._private = frame.stream, serial, None
                    self.shared_frames += 1
                    return [payload(flags, frame.data)]
                chain = self._catch_up(group, serial) if frame.stream == self._stream else None
                if chain is not None:  # behind by a few frames: the ones it missed, then this one
                    self._last = serial
                    self.shared_frames += 1
                    self.caught_up += len(chain) - 1
                    return [payload(H264Flags.NONE, f.data) for f in chain]
            group.join_wanted = True
        # Too far behind the group: a private stream, continued until the group's next IDR.
        flags = H264Flags.NONE
        if self._private is None or self._stream is not None:
            self._private = H264Stream(rect.w, rect.h, crf)
            self._stream = None
            flags = H264Flags.RESET_ALL_CONTEXTS
        data, _ = self._private.encode(region)
        self._last = serial
        self.private_frames += 1
        return [payload(flags, data)]

    def _catch_up(self, group: _Group, serial: int) -> list[_Frame] | None:
        """The group's frames after this member's last one up to ``serial``, oldest first, if the group still
        keeps all of them (already encoded: catching up costs no encode, only their bytes)."""
        chain: list[_Frame] = []
        at: int | None = serial
        while at is not None and at != self._last:
            f = group.frames.get(at)
            if f is None or f.stream != self._stream:
                return None
            chain.append(f)
            at = f.previous
        if at is None:
            return None
        chain.reverse()
        return chain


__all__ = ["JOIN_INTERVAL", "KEEP_FRAMES", "SharedVideo", "VideoShare"]

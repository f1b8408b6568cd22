"""The producer behind the consumer socket: a CrtcReader of its own that reports every flip.

Theory of operation: a :class:`~vkmsremote.capture.crtc.CrtcReader` (own card fd, so its vblank events
are its own; the same exporter as the VNC path, i.e. the capture broker) looks at every vblank while
frames change (its pacing; ``report_flips`` makes a change of framebuffer alone a frame too, since a
consumer must stop reading a buffer the compositor is about to draw into). For each frame:

- each buffer the reader maps (capture.fbcache: once per buffer) becomes a consumer buffer the first
  time a frame shows it (its fds are dup'ed: the server owns its copies);
- the frame becomes a FRAME: the buffer, the CRTC's view of it, the reader's damage (CRTC coordinates,
  pixel exact, covering every change since the previous frame), the vblank it was seen at;
- buffers the reader no longer maps (unmapped because the fb was removed, or replaced) are retired;
- while the CRTC is off the mode says so (and every buffer is retired: the reader drops them all).

The tap only looks while a consumer is connected (``server.watched``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from vkmsremote.capture.crtc import CrtcReader
from vkmsremote.consumer.protocol import Buffer, Mode, Plane, Rect
from vkmsremote.consumer.server import ConsumerServer
from vkmsremote.drm.framebuffer import MappedFramebuffer
from vkmsremote.drm.resources import get_crtc
from vkmsremote.errors import DrmError

log = logging.getLogger(__name__)


class ScanoutTap:
    def __init__(self, reader: CrtcReader, server: ConsumerServer) -> None:
        if reader.writeback is not None:
            raise ValueError("the consumer tap reads framebuffers, not writeback")
        reader.cursor_plane_id = None  # consumers get the primary plane's buffers only
        reader.report_flips = True
        self.reader = reader
        self.server = server
        self._ids: dict[int, tuple[MappedFramebuffer, int]] = {}  # id(mapping) -> (mapping, buffer id)
        self._next_id = 1
        self._last_buffer = 0
        self.frames = 0
        server.on_connect = lambda _consumer: reader.wake()

    async def run(self) -> None:
        """Feed the server until cancelled."""
        while True:
            if not self.server.watched.is_set():
                await self.server.watched.wait()
                self.reader.wake()
            frame = await self.reader.next_frame()
            self.publish(frame.damage)

    def publish(self, damage: tuple[object, ...] | None) -> None:
        reader = self.reader
        state, entry = reader._state, reader._entry
        if reader._no_signal or state is None or entry is None:
            self._retire_unmapped()
            self.server.set_mode(Mode(self.server.mode.width, self.server.mode.height, self.server.mode.refresh_mhz,
                                      False))
            self._last_buffer = 0
            return
        if (state.width, state.height) != (self.server.mode.width, self.server.mode.height) or not self.server.mode.active:
            self.server.set_mode(Mode(state.width, state.height, self._refresh_mhz(), True))
            damage = None
        self._retire_unmapped()
        buffer_id = self._buffer_id(entry.mapped)
        rects = None if damage is None else tuple(
            Rect(r.x, r.y, r.w, r.h) for r in damage)  # type: ignore[attr-defined]
        seq, vblank_ns = reader.last_vblank
        self.server.frame(buffer_id, (state.x, state.y, state.width, state.height), rects,
                          new_buffer=buffer_id != self._last_buffer, vblank_seq=seq, vblank_ns=vblank_ns)
        self._last_buffer = buffer_id
        self.frames += 1

    def _buffer_id(self, mapped: MappedFramebuffer) -> int:
        known = self._ids.get(id(mapped))
        if known is not None and known[0] is mapped:
            return known[1]
        fds, plane_fd = mapped.buffer_fds()
        info = mapped.info
        buffer_id = self._next_id
        self._next_id = self._next_id % 0xFFFFFFFF + 1
        meta = Buffer(buffer_id, info.fb_id, info.width, info.height, info.format, info.modifiers[0],
                      tuple(Plane(info.pitches[i], info.offsets[i], plane_fd[i]) for i in range(info.num_planes)),
                      len(fds))
        dups: list[int] = []
        try:
            for fd in fds:
                dups.append(os.dup(fd))
            self.server.add_buffer(meta, tuple(dups))
        except BaseException:
            for fd in dups:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        self._ids[id(mapped)] = (mapped, buffer_id)
        return buffer_id

    def _retire_unmapped(self) -> None:
        live = {id(m) for m in self.reader._fbs.mappings()}
        for key, (_mapped, buffer_id) in list(self._ids.items()):
            if key not in live:
                del self._ids[key]
                self.server.retire(buffer_id)

    def _refresh_mhz(self) -> int:
        try:
            crtc = get_crtc(self.reader.card, self.reader.crtc_id, with_properties=False)
        except DrmError:
            return 0
        return crtc.mode.vrefresh * 1000 if crtc.mode is not None else 0


async def run_tap(tap: ScanoutTap) -> None:
    """:meth:`ScanoutTap.run`, logging a failure instead of ending the VNC server with it."""
    try:
        await tap.run()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.error("consumer socket: reading the scanout failed, consumers get no more frames: %s", exc)

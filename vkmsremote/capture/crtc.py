"""CrtcReader: a FrameSource that serves what a CRTC scans out, read from its primary plane's framebuffer.

Theory of operation:
- Pacing: after each frame the reader queues a CRTC sequence event for the next vblank
  (DRM_IOCTL_CRTC_QUEUE_SEQUENCE) and waits for it on the card fd through the asyncio loop
  (vkmsremote.drm.events.EventReader). No timers while the CRTC runs.
- Each vblank: GETCRTC gives the mode and the primary plane's current framebuffer id, so page flips
  are followed (compositors and ``modetest -v`` alternate between buffers). Buffers are mapped once per
  fb id and reused (capture.fbcache); since the kernel reuses fb ids after RMFB, the id's buffer identity
  (dma-buf inode, a few cheap ioctls) is checked every frame. Reads are bracketed with DMA_BUF_IOCTL_SYNC.
- The framebuffer is converted to B, G, R, X if needed and compared with the previous frame
  (capture.damage); a frame is returned only when pixels or the cursor changed.
- While the CRTC is off the kernel has no vblanks to wait for: the reader returns one "no signal" frame,
  then looks at the CRTC state every ``idle_poll`` seconds until it lights up again.
- Only the primary and cursor planes are read (overlay planes are not composed; use
  capture.writeback for the composed output when vkmsremote itself is DRM master).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from dataclasses import dataclass

import numpy as np

from vkmsremote.capture.convert import NATIVE_FORMATS, convert_to_xrgb
from vkmsremote.capture.damage import DEFAULT_TILE, DamageTracker
from vkmsremote.capture.fbcache import FramebufferCache
from vkmsremote.capture.nosignal import no_signal_frame
from vkmsremote.drm import ioctl as k
from vkmsremote.drm.card import Card
from vkmsremote.drm.events import CrtcSequenceEvent, EventReader, queue_sequence
from vkmsremote.drm.fourcc import DrmFormat
from vkmsremote.drm.ioctl import ObjectType
from vkmsremote.drm.resources import Resources, get_plane_state, get_properties
from vkmsremote.errors import DrmError, TimeoutError_, UsageError
from vkmsremote.server.source import Cursor, Frame, Pixels, Rect

log = logging.getLogger(__name__)

DEFAULT_SIZE = (1024, 768)
_VBLANK, _OFF, _TIMEOUT = "vblank", "off", "timeout"


@dataclass(frozen=True, slots=True)
class CrtcState:
    """What GETCRTC says this moment: the mode size, the primary plane's fb and its source offset."""

    width: int
    height: int
    fb_id: int
    x: int
    y: int


def read_crtc_state(card: Card, crtc_id: int) -> CrtcState | None:
    """One DRM_IOCTL_MODE_GETCRTC; None while the CRTC has no mode or no framebuffer."""
    arg = k.drm_mode_crtc(crtc_id=crtc_id)
    card.ioctl(k.DRM_IOCTL_MODE_GETCRTC, arg, "DRM_IOCTL_MODE_GETCRTC", crtc_id)
    if not arg.mode_valid or not arg.fb_id or not arg.mode.hdisplay or not arg.mode.vdisplay:
        return None
    return CrtcState(arg.mode.hdisplay, arg.mode.vdisplay, arg.fb_id, arg.x, arg.y)


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


class CrtcReader:
    """Implements vkmsremote.server.source.FrameSource for one CRTC of a card.

    Owns ``card`` (closed by :meth:`close`) when made by :meth:`open`. Needs root: reading another
    client's framebuffer (GETFB2 handles) requires CAP_SYS_ADMIN or DRM master.
    """

    def __init__(self, card: Card, crtc_id: int, *, desktop_name: str = "", tile: int = DEFAULT_TILE,
                 idle_poll: float = 0.25, vblank_timeout: float = 1.0, own_card: bool = False,
                 default_size: tuple[int, int] = DEFAULT_SIZE) -> None:
        res = Resources.fetch(card, probe=False)
        res.crtc(crtc_id)  # raises UsageError for a wrong id
        self.card = card
        self.crtc_id = crtc_id
        self.primary_plane_id = res.primary_plane(crtc_id).id
        cursor = res.cursor_plane(crtc_id)
        self.cursor_plane_id = cursor.id if cursor is not None else None
        self._desktop_name = desktop_name or f"{os.path.basename(card.path)} CRTC {crtc_id}"
        self._tile = tile
        self._idle_poll = idle_poll
        self._vblank_timeout = vblank_timeout
        self._own_card = own_card
        self._default_size = default_size
        self._fbs = FramebufferCache(card)
        self._cursor_fbs = FramebufferCache(card, max_entries=2)
        self._tracker: DamageTracker | None = None
        self._scratch: Pixels | None = None
        self.fb_id = 0  # the framebuffer the last frame came from (0: none)
        self._serial = -1
        self._no_signal = False
        self._events: EventReader | None = None
        self._token = 0
        self._cursor: Cursor | None = None
        self.vblanks = 0  # vblank events waited for (stats, tests)
        self.frames = 0  # frames returned

    @classmethod
    def open(cls, card_path: str, *, crtc_id: int | None = None, connector: int | str | None = None,
             desktop_name: str = "", **kwargs: object) -> CrtcReader:
        """Open ``card_path`` and read ``crtc_id``, or the CRTC that ``connector`` (id or DRM name such as
        'Virtual-1') is routed to, or can be routed to if it is dark."""
        card = Card.open(card_path)
        try:
            if crtc_id is None:
                res = Resources.fetch(card, probe=False)
                if connector is None:
                    if len(res.crtcs) != 1:
                        raise UsageError(f"{card_path} has {len(res.crtcs)} CRTCs: say which connector or CRTC")
                    crtc_id = res.crtcs[0].id
                else:
                    conn = res.connector(connector)
                    crtc_id = res.crtc_of(conn) or next(iter(res.possible_crtc_ids(conn)), 0)
                    if not crtc_id:
                        raise UsageError(f"connector {conn.name} cannot be driven by any CRTC")
                    desktop_name = desktop_name or (
                        f"{os.path.basename(card_path)} {conn.name} (connector {conn.id}, CRTC {crtc_id})")
            return cls(card, crtc_id, desktop_name=desktop_name, own_card=True, **kwargs)  # type: ignore[arg-type]
        except BaseException:
            card.close()
            raise

    # --- FrameSource -----------------------------------------------------------------------------------

    @property
    def desktop_name(self) -> str:
        return self._desktop_name

    def cursor(self) -> Cursor | None:
        return self._cursor

    async def next_frame(self) -> Frame:
        if self._serial < 0:
            pixels, _ = self._grab()
            return self._frame(pixels, None)
        while True:
            status = await self._wait_vblank()
            if status == _OFF:
                if self._no_signal:
                    await asyncio.sleep(self._idle_poll)  # no vblanks while off: look again later
                    continue
                pixels, _ = self._show_no_signal()
                return self._frame(pixels, None)
            was_no_signal = self._no_signal
            cursor_serial = self._cursor.serial if self._cursor else None
            pixels, damage = self._grab()
            if self._no_signal and was_no_signal:
                continue
            cursor_changed = (self._cursor.serial if self._cursor else None) != cursor_serial
            if damage is None or damage or cursor_changed:
                return self._frame(pixels, damage)

    async def close(self) -> None:
        self.close_sync()

    def close_sync(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        self._fbs.close()
        self._cursor_fbs.close()
        if self._own_card:
            self.card.close()

    # --- internals -------------------------------------------------------------------------------------

    def _frame(self, pixels: Pixels, damage: tuple[Rect, ...] | None) -> Frame:
        self._serial += 1
        self.frames += 1
        return Frame(pixels, self._serial, damage)

    async def _wait_vblank(self) -> str:
        """Wait for the CRTC's next vblank: _VBLANK, _OFF at once if the CRTC is off, or _TIMEOUT."""
        if self._events is not None and self._events.loop is not asyncio.get_running_loop():
            self._events.close()  # called from a new event loop (asyncio.run per call): start afresh
            self._events = None
        if self._events is None:
            self._events = EventReader(self.card)
        self._token = (self._token + 1) & 0xFFFFFFFF
        token = self._token
        try:
            queue_sequence(self.card, self.crtc_id, 1, user_data=token)
        except DrmError as exc:
            if exc.errno == errno.EINVAL:  # vblank is off: the CRTC is not active
                return _OFF
            raise
        try:
            await self._events.wait_for(
                lambda e: isinstance(e, CrtcSequenceEvent) and e.user_data == token, timeout=self._vblank_timeout)
        except TimeoutError_:
            log.debug("no vblank on CRTC %d within %.1f s", self.crtc_id, self._vblank_timeout)
            return _TIMEOUT
        self._events.pending()  # stale events (an earlier timeout's) are of no use
        self.vblanks += 1
        return _VBLANK

    def _grab(self) -> tuple[Pixels, tuple[Rect, ...] | None]:
        """Read the CRTC now: the stable frame and its damage (None: everything)."""
        state = read_crtc_state(self.card, self.crtc_id)
        if state is None:
            return self._show_no_signal()
        entry = self._fbs.get(state.fb_id)
        self.fb_id = state.fb_id
        info = entry.mapped.info
        w, h = state.width, state.height
        fresh = self._no_signal or self._tracker is None or (self._tracker.width, self._tracker.height) != (w, h)
        if fresh:
            self._tracker = DamageTracker(w, h, self._tile)
            self._scratch = None
        tracker = self._tracker
        assert tracker is not None
        self._no_signal = False
        with entry.mapped.reading():
            src = entry.mapped.plane_rows(0, entry.bytes_per_pixel)
            full_screen = (info.width, info.height, state.x, state.y) == (w, h, 0, 0)
            if full_screen and info.format in NATIVE_FORMATS:
                new = src
            else:
                new = self._scratch_frame(w, h)
                if not full_screen:
                    new[...] = 0
                # The visible part of the framebuffer: from the plane's source offset, clipped.
                vis = src[state.y:state.y + h, state.x:state.x + w]
                convert_to_xrgb(vis, info.format, new[:vis.shape[0], :vis.shape[1]])
            if fresh:
                tracker.reset(new)
                damage: tuple[Rect, ...] | None = None
            else:
                damage = tracker.update(new)
        self._update_cursor()
        return tracker.frame, damage

    def _scratch_frame(self, w: int, h: int) -> Pixels:
        if self._scratch is None or self._scratch.shape[:2] != (h, w):
            self._scratch = np.zeros((h, w, 4), np.uint8)
        return self._scratch

    def _show_no_signal(self) -> tuple[Pixels, tuple[Rect, ...] | None]:
        w, h = ((self._tracker.width, self._tracker.height) if self._tracker is not None else self._default_size)
        if not self._no_signal or self._tracker is None:
            self._tracker = DamageTracker(w, h, self._tile)
            self._tracker.reset(no_signal_frame(w, h))
            self._no_signal = True
            self.fb_id = 0
            self._fbs.close()
            self._update_cursor()
        return self._tracker.frame, None

    def _update_cursor(self) -> None:
        if self.cursor_plane_id is None:
            return
        old = self._cursor
        plane = get_plane_state(self.card, self.cursor_plane_id)
        if self._no_signal or not plane.fb_id or plane.crtc_id != self.crtc_id:
            if old is not None and old.visible:
                self._cursor = Cursor(old.pixels, old.hot_x, old.hot_y, old.x, old.y, False, old.serial + 1)
            return
        props = get_properties(self.card, self.cursor_plane_id, ObjectType.PLANE)
        entry = self._cursor_fbs.get(plane.fb_id)
        sx, sy = (props.value("SRC_X", 0) or 0) >> 16, (props.value("SRC_Y", 0) or 0) >> 16
        sw, sh = (props.value("SRC_W", 0) or 0) >> 16, (props.value("SRC_H", 0) or 0) >> 16
        info = entry.mapped.info
        sw, sh = sw or info.width, sh or info.height
        with entry.mapped.reading():
            src = entry.mapped.plane_rows(0, entry.bytes_per_pixel)[sy:sy + sh, sx:sx + sw]
            image = convert_to_xrgb(src, info.format)
        if info.format not in (DrmFormat.ARGB8888, DrmFormat.ABGR8888):
            image[..., 3] = 0xFF  # no alpha channel: opaque
        x = _signed32(props.value("CRTC_X", 0) or 0)
        y = _signed32(props.value("CRTC_Y", 0) or 0)
        hot_x = _signed32(props.value("HOTSPOT_X", 0) or 0)
        hot_y = _signed32(props.value("HOTSPOT_Y", 0) or 0)
        # The RFB cursor is placed at the pointer position minus the hotspot.
        if (old is not None and old.visible and (old.x, old.y, old.hot_x, old.hot_y) == (x + hot_x, y + hot_y, hot_x, hot_y)
                and old.pixels.shape == image.shape and np.array_equal(old.pixels, image)):
            return
        image.flags.writeable = False
        self._cursor = Cursor(image, hot_x, hot_y, x + hot_x, y + hot_y, True, old.serial + 1 if old else 0)


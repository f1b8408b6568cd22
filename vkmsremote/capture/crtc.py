"""CrtcReader: a FrameSource that serves what a CRTC scans out, read from its primary plane's framebuffer
(or, when vkmsremote drives the CRTC itself, from its writeback connector).

Theory of operation:
- Pacing: while active the reader queues a CRTC sequence event (DRM_IOCTL_CRTC_QUEUE_SEQUENCE) and
  waits for it on the card fd through the asyncio loop (vkmsremote.drm.events.EventReader).
  :class:`Pacing` says how often: every vblank while frames change; after half a second without change
  ten times a second (timers, not vblank events), after five more seconds once a second or less, so
  that looking costs at most 0.5 % of a CPU. Most looks that find nothing are cheap *probes* (GETCRTC:
  did the primary plane flip? the cursor plane's state; every ``PROBE_STRIDE``-th row of the buffer
  compared with the last frame); every few such looks is a full check, and a probe that sees anything
  becomes one. The first change found, or :meth:`wake`
  (called when a client sends input), makes it look at every vblank again.
- A full check: GETCRTC gives the mode and the primary plane's current framebuffer id, so page flips
  are followed (compositors and ``modetest -v`` alternate between buffers). Buffers come from a
  :class:`~vkmsremote.capture.exporter.FramebufferExporter` (this process's card fd, or the privileged
  capture broker) and are mapped once per fb id and reused (capture.fbcache); since the kernel reuses fb
  ids after RMFB, the id's buffer identity (dma-buf inodes) is checked on every full check. The buffer
  is copied (bracketed with DMA_BUF_IOCTL_SYNC); if GETCRTC names another fb after the copy, the buffer
  was flipped away meanwhile and its owner may already have started drawing the next frame into it, so
  the copy is dropped and the reader looks again (at most MAX_TORN_IN_ROW times in a row).
- The framebuffer is converted to B, G, R, X if needed and compared with the previous frame
  (capture.damage); a frame is returned only when pixels or the cursor changed.
- While the CRTC is off the kernel has no vblanks to wait for: the reader returns one "no signal" frame,
  then looks at the CRTC state every ``idle_poll`` seconds until it lights up again.
- When the card itself goes away (its VKMS device disabled or removed in configfs: the DRM device is
  unregistered and its node /sys/dev/char/MAJOR:MINOR vanishes; a device that is unplugged instead fails
  every ioctl with ENODEV), a reader given a ``locate`` function releases everything it held of the card
  (fd, mappings, event reader), returns one "no signal" frame and asks ``locate`` every ``reacquire_poll``
  seconds where the CRTC is now: the device may come back as another card node (the old minor stays taken
  while anyone holds it). Without ``locate`` it stays at "no signal" (unregistered) or raises (ENODEV).
- Only the primary and cursor planes are read (overlay planes are not composed). With a
  :class:`~vkmsremote.capture.exporter.WritebackExporter` the reader instead has the CRTC's writeback
  connector compose each frame into a buffer (only possible for the DRM master: vkmsremote driving the
  CRTC itself); the cursor is then part of the picture.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from vkmsremote.capture.convert import NATIVE_FORMATS, check_readable, convert_to_xrgb
from vkmsremote.capture.damage import DEFAULT_TILE, DamageTracker
from vkmsremote.capture.exporter import FramebufferExporter, LocalExporter, WritebackExporter, map_exported
from vkmsremote.capture.fbcache import GONE_ERRNOS, CachedFramebuffer, FramebufferCache
from vkmsremote.capture.nosignal import no_signal_frame
from vkmsremote.drm import ioctl as k
from vkmsremote.drm.card import Card
from vkmsremote.drm.events import CrtcSequenceEvent, EventReader, queue_sequence
from vkmsremote.drm.fourcc import DrmFormat
from vkmsremote.drm.ioctl import ObjectType
from vkmsremote.drm.plane import get_plane_state
from vkmsremote.drm.properties import get_properties
from vkmsremote.drm.resources import Resources
from vkmsremote.errors import DeviceStateError, DrmError, TimeoutError_, UsageError, VkmsRemoteError
from vkmsremote.frame import MAX_RESIZE, Cursor, Frame, Pixels, Placement, Rect, ResizeStatus

log = logging.getLogger(__name__)

DEFAULT_SIZE = (1024, 768)
MAX_TORN_IN_ROW = 3
"""A copy during which the buffer was flipped away is discarded (its owner may have started drawing into
it), at most this many times in a row: a client flipping faster than we can copy still gets frames."""


@dataclass(frozen=True, slots=True)
class Pacing:
    """How often the reader looks, by how many looks in a row found nothing new (see the module doc).

    Active: at every vblank (a CRTC sequence event); a full check at every ``active_full_every``-th look
    in a row that found nothing, probes otherwise (a probe that sees any difference becomes a full check,
    so a change at least PROBE_STRIDE rows tall is found at once, a smaller one within that many looks;
    a compositor drawing at 30 frames/s leaves every other vblank unchanged, and those looks then cost an
    eighth of a full compare). Idle (after ``idle_after`` unchanged
    looks): every ``idle_seconds``, a full check every ``idle_full_every``-th look, probes otherwise.
    Deep idle (after ``deep_after`` further unchanged looks): every ``deep_seconds`` or longer, so that
    looking costs at most ``deep_cpu_budget`` of one CPU (the reader measures what its looks cost: on a
    slow machine it looks less often), a full check every ``deep_full_every``-th look. Idle waits are
    timers, which :meth:`CrtcReader.wake` cuts short. Defaults at 60 Hz: idle after 0.5 s (10 looks/s, a
    full check every 0.5 s), deep idle after 5.5 s (at most 1 look/s and 0.5 % of a CPU).
    """

    active_full_every: int = 4
    idle_after: int = 30
    idle_seconds: float = 0.1
    idle_full_every: int = 5
    deep_after: int = 50
    deep_seconds: float = 1.0
    deep_full_every: int = 10
    deep_cpu_budget: float = 0.005

    def __post_init__(self) -> None:
        if min(self.active_full_every, self.idle_after, self.idle_full_every, self.deep_after,
               self.deep_full_every) < 1:
            raise UsageError(f"every look count of the pacing must be at least 1: {self}")
        if min(self.idle_seconds, self.deep_seconds) <= 0 or not 0 < self.deep_cpu_budget <= 1:
            raise UsageError(f"pacing intervals must be positive and the budget in (0, 1]: {self}")

    def step(self, unchanged: int, look_cost: float = 0.0) -> tuple[float | None, bool]:
        """(seconds to wait, or None for the next vblank; whether the look is a full check) after
        ``unchanged`` unchanged looks; ``look_cost``: CPU seconds a look takes here."""
        idle = unchanged - self.idle_after
        if idle < 0:
            return None, (unchanged + 1) % self.active_full_every == 0
        if idle < self.deep_after:
            return self.idle_seconds, (idle + 1) % self.idle_full_every == 0
        deep = idle - self.deep_after
        return max(self.deep_seconds, look_cost / self.deep_cpu_budget), (deep + 1) % self.deep_full_every == 0


PLACEMENT_MAX_AGE = 0.1
"""Seconds a GETCRTC read for :meth:`CrtcReader.placement` is reused (pointer events come in bursts)."""
PROBE_STRIDE = 8
"""Idle probes compare every 8th row: any change at least 8 rows tall (a glyph, a text cursor, a window)
is seen at once; smaller ones wait for the next full check."""
_VBLANK, _OFF, _TIMEOUT, _TIMER, _WOKEN = "vblank", "off", "timeout", "timer", "woken"


class WakeableTimer:
    """Idle waits that :meth:`wake` ends early: a timer and a future, far cheaper than vblank events when
    looking only now and then."""

    def __init__(self) -> None:
        self._future: asyncio.Future[bool] | None = None

    def wake(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(True)

    async def sleep(self, delay: float) -> bool:
        """Wait ``delay`` seconds; True if :meth:`wake` ended the wait first."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()

        def ring() -> None:
            if not future.done():
                future.set_result(False)

        timer = loop.call_later(delay, ring)
        self._future = future
        try:
            return await future
        finally:
            timer.cancel()
            self._future = None


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


class _CardGone(Exception):
    """The card's DRM device was unregistered (see CrtcReader._check_registered)."""


class _Gone(Exception):
    """The framebuffer GETCRTC named vanished before it could be read (its client removed it): look again."""


CARD_GONE_ERRNOS = (errno.ENODEV,)
"""What the card fd's ioctls fail with once its DRM device is unplugged (drm_ioctl: drm_dev_is_unplugged)."""
DEFAULT_REACQUIRE_POLL = 0.5


@dataclass(frozen=True, slots=True)
class CrtcLocation:
    """Where the served CRTC is now: the card node, the CRTC id on it, the name clients are shown, and the DRM
    name of the connector it is served for (if one was named)."""

    card_path: str
    crtc_id: int
    desktop_name: str = ""
    drm_connector: str = ""


Locator = Callable[[], "CrtcLocation | None"]
"""Finds the served CRTC again after its card went away; None while it is not there (yet). May raise
VkmsRemoteError (a device half made, a node not created yet): the reader then asks again later."""

RESIZE_CHECK_TIMEOUT = 2.0
"""Seconds a resizer's change may take to reach the CRTC after it answered (a compositor's modeset)."""


class Resizer(Protocol):
    """Whoever sets the CRTC's mode (the capture broker's client when vkmsremote drives the CRTC)."""

    def resize(self, width: int, height: int) -> ResizeStatus: ...


class CrtcReader:
    """Implements vkmsremote.frame.FrameSource (and ResizableSource) for one CRTC of a card.

    Owns ``card`` (closed by :meth:`close`) when made by :meth:`open`, and ``exporter`` when one is given
    (closed too). Without an exporter the card fd itself exports framebuffers, which needs root (GETFB2
    hands out buffer handles only to CAP_SYS_ADMIN or the DRM master); with the capture broker's client
    as exporter, ``card`` only needs to be an open (authenticated) fd: GETCRTC, GETPLANE and vblank events
    work for any client.
    """

    def __init__(self, card: Card, crtc_id: int, *, desktop_name: str = "", tile: int = DEFAULT_TILE,
                 idle_poll: float = 0.25, vblank_timeout: float = 1.0, own_card: bool = False,
                 default_size: tuple[int, int] = DEFAULT_SIZE, exporter: FramebufferExporter | None = None,
                 writeback: WritebackExporter | None = None, pacing: Pacing | None = None,
                 resizer: Resizer | None = None, report_flips: bool = False, locate: Locator | None = None,
                 reacquire_poll: float = DEFAULT_REACQUIRE_POLL) -> None:
        self.writeback = writeback
        self._attach(card, crtc_id)
        self._desktop_name = desktop_name or f"{os.path.basename(card.path)} CRTC {crtc_id}"
        self._tile = tile
        self._idle_poll = idle_poll
        self._vblank_timeout = vblank_timeout
        self._own_card = own_card
        self._default_size = default_size
        self._own_exporter = exporter is not None
        self.exporter: FramebufferExporter = exporter if exporter is not None else LocalExporter(card)
        self._local_exporter = exporter is None  # made anew for each card found again
        self.resizer = resizer
        self.resize_refusal = ("the CRTC's mode is set by its DRM master (a compositor); vkmsremote sets it only "
                               "with --drive")
        self._fbs = FramebufferCache(self.exporter)
        self._cursor_fbs = FramebufferCache(self.exporter, max_entries=2)
        self._wb_entry: CachedFramebuffer | None = None
        self._tracker: DamageTracker | None = None
        self._scratch: Pixels | None = None
        self._entry: CachedFramebuffer | None = None  # the buffer the last full check read
        self._state: CrtcState | None = None  # GETCRTC at the last full check
        self._placed: tuple[float, CrtcState | None] = (-1e9, None)  # (when, GETCRTC) for placement()
        self.fb_id = 0  # the framebuffer the last frame came from (0: none)
        self._serial = -1
        self._no_signal = False
        self._events: EventReader | None = None
        self._token = 0
        self._cursor: Cursor | None = None
        self.pacing = pacing or Pacing()
        self._unchanged = 0  # looks in a row that found nothing new
        self._timer = WakeableTimer()  # idle waits, which wake() ends early
        self.look_cost = 0.0  # CPU seconds an idle look takes here (moving average)
        self.vblanks = 0  # vblank events waited for (stats, tests)
        self.frames = 0  # frames returned
        self.full_checks = 0  # looks that read the whole buffer
        self.torn = 0  # reads discarded because the buffer was flipped away meanwhile
        self._torn_in_row = 0
        self.probes = 0  # cheap idle looks
        self.report_flips = report_flips  # also return a frame (damage ()) when only the fb id changed
        self.last_vblank = (0, 0)  # (sequence, CLOCK_MONOTONIC ns) of the vblank the last look waited for
        self._locate = locate
        self._reacquire_poll = reacquire_poll
        self._lost = False  # the card went away: nothing of it is held until locate finds the CRTC again

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

    @property
    def idle(self) -> bool:
        """Whether the reader is looking less often than every vblank (nothing changed lately)."""
        return self.pacing.step(self._unchanged)[0] is not None

    def cursor(self) -> Cursor | None:
        return self._cursor

    def placement(self) -> Placement | None:
        """Where the picture lies in the framebuffer the CRTC scans out of.

        A compositor that scans all its outputs out of one framebuffer (Xorg's modesetting driver) puts
        each output at its place in the desktop, so this is the connector's rectangle in the desktop an
        absolute pointer spans. One framebuffer per output (Weston, Mutter) gives the whole buffer.
        None before the first picture, while there is no signal, and with writeback capture.

        Asked for every pointer event: the CRTC's position is read afresh (one GETCRTC, at most every
        PLACEMENT_MAX_AGE s), since an idle reader may not look again for seconds after the layout
        changed (`xrandr --pos`); the framebuffer's size is that of the last full check, or of a cached
        buffer the CRTC flipped to meanwhile."""
        entry, state = self._entry, self._state
        if entry is None or state is None or self._no_signal or self.writeback is not None:
            return None
        now = time.monotonic()
        if now - self._placed[0] > PLACEMENT_MAX_AGE:
            try:
                fresh = read_crtc_state(self.card, self.crtc_id)
            except DrmError:
                fresh = None
            self._placed = (now, fresh)
        fresh = self._placed[1]
        if fresh is not None and fresh != state:
            self.wake()  # the picture may have moved or changed with it: look at every vblank again
            if fresh.fb_id == state.fb_id or fresh.fb_id in self._fbs:
                entry = self._fbs.get(fresh.fb_id, validate=False) if fresh.fb_id != state.fb_id else entry
                state = fresh
        info = entry.mapped.info
        x, y = min(max(state.x, 0), info.width - 1), min(max(state.y, 0), info.height - 1)
        return Placement(x, y, min(state.width, info.width - x), min(state.height, info.height - y),
                         info.width, info.height)

    @property
    def no_signal(self) -> bool:
        """The CRTC is off (the last frame is the "no signal" picture)."""
        return self._no_signal

    def wake(self) -> None:
        """Something will probably change soon (a client sent input): look at every vblank again."""
        self._unchanged = 0
        self._timer.wake()

    def request_resize(self, width: int, height: int) -> int:
        """ResizableSource: a client's SetDesktopSize, passed to the resizer (prohibited without one)."""
        if not (1 <= width <= MAX_RESIZE and 1 <= height <= MAX_RESIZE):
            return ResizeStatus.INVALID
        if self.resizer is None:
            log.info("resize to %dx%d prohibited: %s", width, height, self.resize_refusal)
            return ResizeStatus.PROHIBITED
        status = self.resizer.resize(width, height)
        if status == ResizeStatus.OK:
            if not self._crtc_size_becomes(width, height):
                return ResizeStatus.OUT_OF_RESOURCES
            self.wake()  # the next look finds the new mode and framebuffer
        return int(status)

    def _crtc_size_becomes(self, width: int, height: int, timeout: float = RESIZE_CHECK_TIMEOUT) -> bool:
        """Whether GETCRTC shows a mode of ``width`` x ``height`` within ``timeout`` s: a resize is answered
        "done" only when the CRTC itself has the new size, whoever set it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = read_crtc_state(self.card, self.crtc_id)
            except DrmError:
                state = None
            if state is not None and (state.width, state.height) == (width, height):
                return True
            if time.monotonic() > deadline:
                log.warning("resize to %dx%d reported done, but CRTC %d is %s", width, height, self.crtc_id,
                            f"{state.width}x{state.height}" if state is not None else "off")
                return False
            time.sleep(0.05)

    async def next_frame(self) -> Frame:
        while True:
            if self._lost:
                await self._reacquire()
            try:
                return await self._next_frame()
            except (DrmError, _CardGone) as exc:
                if isinstance(exc, DrmError) and (exc.errno not in CARD_GONE_ERRNOS or self._locate is None):
                    raise
                had_signal = not self._no_signal
                self._card_lost(exc)
                if had_signal or self._serial < 0:
                    pixels, _ = self._show_no_signal()
                    self._unchanged = 0
                    return self._frame(pixels, None)

    async def _next_frame(self) -> Frame:
        if self._serial < 0:
            while True:
                try:
                    pixels, _ = await self._grab(probe=False)
                except _Gone:
                    await asyncio.sleep(self._idle_poll)
                    continue
                return self._frame(pixels, None)
        while True:
            delay, full = self.pacing.step(self._unchanged, self.look_cost)
            status = await self._wait_vblank() if delay is None else await self._sleep(delay)
            if status == _OFF:
                if self._no_signal:
                    self._check_registered()
                    await asyncio.sleep(self._idle_poll)  # no vblanks while off: look again later
                    continue
                pixels, _ = self._show_no_signal()
                self._unchanged = 0
                return self._frame(pixels, None)
            was_no_signal = self._no_signal
            fb_before = self.fb_id
            cursor_serial = self._cursor.serial if self._cursor else None
            probe = status in (_TIMER, _VBLANK) and not full
            started = time.thread_time()
            try:
                pixels, damage = await self._grab(probe=probe)
            except _Gone:
                continue
            if delay is not None:
                self.look_cost = 0.8 * self.look_cost + 0.2 * (time.thread_time() - started)
            if self._no_signal and was_no_signal:
                self._check_registered()
                continue
            cursor_changed = (self._cursor.serial if self._cursor else None) != cursor_serial
            flipped = self.report_flips and self.fb_id != fb_before
            if damage is None or damage or cursor_changed or flipped:
                self._unchanged = 0
                return self._frame(pixels, damage)
            self._unchanged += 1

    async def close(self) -> None:
        self.close_sync()

    def close_sync(self) -> None:
        self._release_card()
        if self._own_exporter:
            self.exporter.close()
            self._own_exporter = False

    # --- the card going away and coming back ------------------------------------------------------------

    def _release_card(self) -> None:
        """Let go of everything held of the card: the event reader (before the fd it watches), the mapped
        buffers, and the card itself if it is ours."""
        if self._events is not None:
            self._events.close()
            self._events = None
        self._fbs.close()
        self._cursor_fbs.close()
        self._drop_writeback_buffer()
        self._entry, self._state = None, None
        if self._own_card:
            self.card.close()

    def _check_registered(self) -> None:
        """Raise _CardGone if the card's device is no longer registered (checked while there is no signal).

        Disabling a VKMS device unregisters its DRM device (vkms_destroy: drm_dev_unregister, then an atomic
        shutdown) without marking it unplugged: an fd held open keeps answering ioctls, for a device whose
        CRTCs are all off, and keeps its minor taken, so the device comes back as another card. Its node
        /sys/dev/char/MAJOR:MINOR is gone, though."""
        if self._locate is not None and not os.path.exists(self._card_sysfs):
            raise _CardGone(f"{self._card_sysfs} is gone: {self.card.path} was unregistered")

    def _card_lost(self, exc: Exception) -> None:
        log.warning("%s: the card is gone (%s); no signal until it is found again", self._desktop_name, exc)
        self._lost = True
        self._release_card()
        self._torn_in_row = 0

    def _attach(self, card: Card, crtc_id: int) -> None:
        """Read ``crtc_id`` on ``card`` from now on (it must have a primary plane to follow)."""
        res = Resources.fetch(card, probe=False)
        res.crtc(crtc_id)  # raises UsageError for a wrong id
        res.primary_plane(crtc_id)  # raises UsageError if the CRTC has no primary plane to follow
        cursor = res.cursor_plane(crtc_id)
        self.card, self.crtc_id = card, crtc_id
        rdev = os.fstat(card.fd).st_rdev
        self._card_sysfs = f"/sys/dev/char/{os.major(rdev)}:{os.minor(rdev)}"
        # With writeback the cursor plane is composed into the picture already.
        self.cursor_plane_id = cursor.id if cursor is not None and self.writeback is None else None

    async def _reacquire(self) -> None:
        """Ask the locator every ``reacquire_poll`` seconds until it finds the CRTC on a card that opens."""
        assert self._locate is not None
        while True:
            try:
                found = self._locate()
                if found is not None:
                    card = Card.open(found.card_path)
                    try:
                        self._attach(card, found.crtc_id)
                    except BaseException:
                        card.close()
                        raise
                    break
            except VkmsRemoteError as exc:  # half made, node not there yet, ...: ask again
                log.debug("looking for %s again: %s", self._desktop_name, exc)
            await self._timer.sleep(self._reacquire_poll)
        if self._local_exporter:
            self.exporter = LocalExporter(card)
        self._fbs = FramebufferCache(self.exporter)
        self._cursor_fbs = FramebufferCache(self.exporter, max_entries=2)
        self._own_card = True
        self._lost = False
        if found.desktop_name:
            self._desktop_name = found.desktop_name
        log.warning("%s: found again on %s, CRTC %d", self._desktop_name, card.path, found.crtc_id)

    # --- internals -------------------------------------------------------------------------------------

    def _frame(self, pixels: Pixels, damage: tuple[Rect, ...] | None) -> Frame:
        self._serial += 1
        self.frames += 1
        # Always the tracker's stable frame, which it never writes while referenced: kept without a copy.
        return Frame(pixels, self._serial, damage, immutable=True)

    async def _wait_vblank(self) -> str:
        """Wait for the CRTC's next vblank: _VBLANK, _OFF at once if the CRTC is off, or _TIMEOUT."""
        loop = asyncio.get_running_loop()
        if self._events is not None and self._events.loop is not loop:
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
            event = await self._events.wait_for(
                lambda e: isinstance(e, CrtcSequenceEvent) and e.user_data == token, timeout=self._vblank_timeout)
        except TimeoutError_:
            log.debug("no vblank on CRTC %d within %.1f s", self.crtc_id, self._vblank_timeout)
            return _TIMEOUT
        self._events.pending()  # stale events (an earlier timeout's) are of no use
        if isinstance(event, CrtcSequenceEvent):
            self.last_vblank = (event.sequence, event.time_ns)
        self.vblanks += 1
        return _VBLANK

    async def _sleep(self, delay: float) -> str:
        """An idle wait: _TIMER after ``delay`` seconds, or _WOKEN as soon as :meth:`wake` is called."""
        return _WOKEN if await self._timer.sleep(delay) else _TIMER

    async def _grab(self, *, probe: bool) -> tuple[Pixels, tuple[Rect, ...] | None]:
        """Look at the CRTC now: the stable frame and its damage (None: everything). A probe compares only
        a sample of rows of the buffer read last and falls back to a full check when anything differs."""
        state = read_crtc_state(self.card, self.crtc_id)
        if state is None:
            return self._show_no_signal()
        if probe and self._probe_unchanged(state):
            self.probes += 1
            self._update_cursor()
            assert self._tracker is not None
            return self._tracker.frame, ()
        self.full_checks += 1
        try:
            if self.writeback is not None:
                entry = await self._writeback_frame(state)
            else:
                entry = self._fbs.get(state.fb_id)
        except DrmError as exc:
            if exc.errno in GONE_ERRNOS:
                log.debug("fb %d vanished before it could be read: %s", state.fb_id, exc)
                raise _Gone(str(exc)) from None
            raise
        except DeviceStateError as exc:  # writeback: the CRTC went off under us
            raise _Gone(str(exc)) from None
        self.fb_id = state.fb_id
        info = entry.mapped.info
        w, h = state.width, state.height
        fresh = self._no_signal or self._tracker is None or (self._tracker.width, self._tracker.height) != (w, h)
        if fresh:
            self._tracker = DamageTracker(w, h, self._tile)
            self._scratch = None
        tracker = self._tracker
        assert tracker is not None
        x, y = (0, 0) if self.writeback is not None else (state.x, state.y)
        with entry.mapped.reading():
            src = entry.mapped.plane_rows(0, entry.bytes_per_pixel)
            full_screen = (info.width, info.height, x, y) == (w, h, 0, 0)
            if full_screen and info.format in NATIVE_FORMATS and self.writeback is not None:
                new = src  # our own buffer: nobody writes it until the next writeback job
            else:
                new = self._scratch_frame(w, h)
                if not full_screen:
                    new[...] = 0
                # The visible part of the framebuffer: from the plane's source offset, clipped.
                vis = src[y:y + h, x:x + w]
                if info.format in NATIVE_FORMATS:
                    np.copyto(new[:vis.shape[0], :vis.shape[1]], vis)
                else:
                    convert_to_xrgb(vis, info.format, new[:vis.shape[0], :vis.shape[1]])
            if self.writeback is None and self._torn_in_row < MAX_TORN_IN_ROW:
                after = read_crtc_state(self.card, self.crtc_id)
                if after is None or after.fb_id != state.fb_id:
                    # Flipped away while we copied it: its owner may already be drawing the next frame into
                    # it. The copy may be torn; the stable frame was not touched. Look again.
                    self._torn_in_row += 1
                    self.torn += 1
                    if fresh:
                        self._tracker = None
                    raise _Gone(f"fb {state.fb_id} was flipped away during the read")
            if fresh:
                tracker.reset(new)
                damage: tuple[Rect, ...] | None = None
            else:
                damage = tracker.update(new)
        self._no_signal = False
        self._torn_in_row = 0
        self._entry, self._state = entry, state
        self._update_cursor()
        return tracker.frame, damage

    def _probe_unchanged(self, state: CrtcState) -> bool:
        """Whether an idle probe finds the picture as it was: same GETCRTC state, and for a buffer read
        directly (native format, whole screen), the same pixels in every PROBE_STRIDE-th row."""
        entry, tracker = self._entry, self._tracker
        if (self.writeback is not None or self._no_signal or entry is None or tracker is None
                or state != self._state or entry.mapped.info.format not in NATIVE_FORMATS):
            return False
        info = entry.mapped.info
        if (info.width, info.height, state.x, state.y) != (state.width, state.height, 0, 0):
            return False
        with entry.mapped.reading():
            rows = entry.mapped.plane_rows(0, entry.bytes_per_pixel)[::PROBE_STRIDE]
            return bool(np.array_equal(rows, tracker.frame[::PROBE_STRIDE]))

    async def _writeback_frame(self, state: CrtcState) -> CachedFramebuffer:
        assert self.writeback is not None
        old = self._wb_entry
        exported = await self.writeback.writeback(self.crtc_id, old.mapped.identity if old is not None else None)
        if exported.fds is None and old is not None:
            entry = old
        else:
            self._drop_writeback_buffer()
            mapped = map_exported(exported)
            try:
                entry = CachedFramebuffer(mapped, check_readable(mapped.info))
            except BaseException:
                mapped.close()
                raise
            self._wb_entry = entry
        info = entry.mapped.info
        if (info.width, info.height) != (state.width, state.height):
            raise _Gone  # the mode changed between GETCRTC and the writeback: look again
        return entry

    def _drop_writeback_buffer(self) -> None:
        if self._wb_entry is not None:
            if self._entry is self._wb_entry:
                self._entry = None
            self._wb_entry.mapped.close()
            self._wb_entry = None

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
            self._entry, self._state = None, None
            self._fbs.close()
            self._update_cursor()
        return self._tracker.frame, None

    def _update_cursor(self) -> None:
        if self.cursor_plane_id is None:
            return
        old = self._cursor
        plane = None if self._no_signal else get_plane_state(self.card, self.cursor_plane_id)
        if plane is None or not plane.fb_id or plane.crtc_id != self.crtc_id:
            if old is not None and old.visible:
                self._cursor = Cursor(old.pixels, old.hot_x, old.hot_y, old.x, old.y, False, old.serial + 1)
            return
        props = get_properties(self.card, self.cursor_plane_id, ObjectType.PLANE)
        try:
            entry = self._cursor_fbs.get(plane.fb_id)
        except DrmError as exc:
            if exc.errno in GONE_ERRNOS:  # replaced since GETPLANE: the next look sees the new one
                return
            raise
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

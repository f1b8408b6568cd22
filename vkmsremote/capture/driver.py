"""PatternDriver: lights a connector as DRM master and page-flips an animated test pattern between two
dumb buffers (``vkmsremote up --drive pattern``, benchmarks, VM tests).

Every frame carries its frame number so a client can read it back (:func:`decode_frame_number`):
two bands of 32 cells of CELL x CELL pixels at the top-left, bits most significant first, white = 1;
the second band holds the complement, so a damaged read is detected instead of misread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vkmsremote.drm.atomic import AtomicRequest, PropertyBlob
from vkmsremote.drm.card import Card
from vkmsremote.drm.connector import Connector
from vkmsremote.drm.cvt import cvt_rb_mode
from vkmsremote.drm.events import DrmEvent, EventReader, VblankEvent, get_sequence
from vkmsremote.drm.fourcc import DrmFormat
from vkmsremote.drm.framebuffer import DumbFramebuffer
from vkmsremote.drm.ioctl import AtomicFlag, EventType
from vkmsremote.drm.mode import Mode
from vkmsremote.drm.resources import Resources
from vkmsremote.errors import DrmError, UsageError
from vkmsremote.frame import Pixels

REFRESH_TOLERANCE = 0.5
"""Hz: a listed mode within this of the rate asked for is used as it is (VKMS lists 60 Hz DMT modes)."""

CELL = 16
BITS = 32
CODE_WIDTH = CELL * BITS
CODE_HEIGHT = 2 * CELL

# Colour bars (B, G, R): white, yellow, cyan, green, magenta, red, blue, grey.
_BARS = np.array([
    (255, 255, 255), (0, 255, 255), (255, 255, 0), (0, 255, 0),
    (255, 0, 255), (0, 0, 255), (255, 0, 0), (128, 128, 128),
], np.uint8)


def encode_frame_number(pixels: Pixels, number: int) -> None:
    """Write ``number`` (mod 2**32) into the top-left CODE_WIDTH x CODE_HEIGHT pixels of ``pixels``."""
    if pixels.shape[0] < CODE_HEIGHT or pixels.shape[1] < CODE_WIDTH:
        raise ValueError(f"a frame needs at least {CODE_WIDTH}x{CODE_HEIGHT} pixels to carry its number")
    bits = ((number & 0xFFFFFFFF) >> np.arange(BITS - 1, -1, -1)) & 1
    band = np.repeat(bits.astype(np.uint8) * 255, CELL)  # (CODE_WIDTH,)
    pixels[:CELL, :CODE_WIDTH, :3] = band[None, :, None]
    pixels[CELL:CODE_HEIGHT, :CODE_WIDTH, :3] = (255 - band)[None, :, None]
    pixels[:CODE_HEIGHT, :CODE_WIDTH, 3] = 0


def decode_frame_number(pixels: Pixels) -> int | None:
    """The frame number written by :func:`encode_frame_number`, or None if the code is not there intact.

    Reads the mean of each cell's central 8x8 pixels, so lossy encodings still decode."""
    if pixels.shape[0] < CODE_HEIGHT or pixels.shape[1] < CODE_WIDTH:
        return None
    lum = pixels[:CODE_HEIGHT, :CODE_WIDTH, :3].astype(np.float32).mean(axis=2)
    cells = lum.reshape(2, CELL, BITS, CELL)[:, 4:12, :, 4:12].mean(axis=(1, 3))  # (2, BITS)
    ones, zeros = cells[0] > 170, cells[0] < 85
    comp_ones, comp_zeros = cells[1] > 170, cells[1] < 85
    if not np.all((ones & comp_zeros) | (zeros & comp_ones)):
        return None
    return int(np.sum(ones.astype(np.uint64) << np.arange(BITS - 1, -1, -1, dtype=np.uint64)))


def pattern_base(width: int, height: int) -> Pixels:
    """Vertical colour bars with a grey ramp in the bottom quarter, (h, w, 4) B, G, R, X."""
    out = np.zeros((height, width, 4), np.uint8)
    idx = (np.arange(width) * len(_BARS)) // width
    out[:, :, :3] = _BARS[idx][None, :, :]
    ramp_top = height * 3 // 4
    ramp = ((np.arange(width) * 255) // max(width - 1, 1)).astype(np.uint8)
    out[ramp_top:, :, :3] = ramp[None, :, None]
    return out


def draw_pattern(pixels: Pixels, base: Pixels, number: int, step: int = 8) -> None:
    """Frame ``number`` of the animation into ``pixels``: the bars scrolled left by ``step`` px per frame,
    a 64x64 white square moving diagonally, and the encoded frame number."""
    h, w = base.shape[:2]
    s = (number * step) % w
    pixels[:, : w - s] = base[:, s:]
    pixels[:, w - s:] = base[:, :s]
    side = min(64, h // 4, w // 4)
    if side > 0:
        x = (number * 5) % max(w - side, 1)
        y = CODE_HEIGHT + (number * 3) % max(h - side - CODE_HEIGHT, 1)
        pixels[y:y + side, x:x + side, :3] = 255
    if h >= CODE_HEIGHT and w >= CODE_WIDTH:
        encode_frame_number(pixels, number)


@dataclass(frozen=True, slots=True)
class FlipRate:
    """What :meth:`PatternDriver.measure_flip_rate` saw. ``event_rate``: the vblanks per second between the
    first and the last page-flip event, from the sequence number and timestamp the kernel put in the events
    (the rate the flips are locked to); ``vblank_rate``: the same from the CRTC's own counter
    (DRM_IOCTL_CRTC_GET_SEQUENCE) around the run; ``flips / seconds``: flips this process managed (one per
    vblank when it keeps up: ``frames_per_flip`` 1.0)."""

    mode_rate: float
    flips: int
    seconds: float
    event_rate: float
    vblank_rate: float
    frames_per_flip: float

    @property
    def flips_per_second(self) -> float:
        return (self.flips - 1) / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"mode {self.mode_rate:.3f} Hz: page-flip events {self.event_rate:.3f} Hz, CRTC counter "
                f"{self.vblank_rate:.3f} Hz; {self.flips} flips in {self.seconds:.2f} s "
                f"({self.flips_per_second:.2f}/s, one every {self.frames_per_flip:.2f} vblanks)")


class PatternDriver:
    """Drives ``connector`` through ``crtc_id`` with ``mode`` as DRM master, page-flipping a test pattern.

    >>> drv = PatternDriver.open("/dev/dri/card0", connector="Virtual-1", size=(1024, 768))
    >>> drv.start(); await drv.run(frames=100); drv.close()
    """

    def __init__(self, card: Card, connector: Connector, crtc_id: int, mode: Mode, *, own_card: bool = False,
                 buffers: int = 2) -> None:
        if buffers < 2:
            raise UsageError(f"page flipping needs at least 2 buffers, not {buffers}")
        self.buffers = buffers
        self.card = card
        self.connector = connector
        self.crtc_id = crtc_id
        self.mode = mode
        self._own_card = own_card
        res = Resources.fetch(card, probe=False)
        self.plane_id = res.primary_plane(crtc_id).id
        if DrmFormat.XRGB8888 not in res.plane(self.plane_id).formats:
            raise UsageError(f"primary plane {self.plane_id} cannot show XRGB8888")
        self._fbs: list[DumbFramebuffer] = []
        self._blob: PropertyBlob | None = None
        self._base: Pixels | None = None
        self._front = 0
        self.frame_number = 0  # the number of the frame on screen
        self.flips = 0
        self.started = False

    @classmethod
    def open(cls, card_path: str, *, connector: int | str | None = None, size: tuple[int, int] | None = None,
             refresh: float | None = None, writeback: bool = False, buffers: int = 2) -> PatternDriver:
        """Open the card as master and pick the connector (default: the first connected non-writeback one),
        its CRTC and a mode of ``size`` at ``refresh`` Hz (default: the preferred mode; a size or rate the
        connector does not list gets a CVT reduced-blanking mode, see :func:`pick_mode`)."""
        card = Card.open(card_path, writeback=writeback, master=True)
        try:
            res = Resources.fetch(card)
            if connector is None:
                conn = next((c for c in res.connectors if not c.is_writeback and c.modes), None)
                if conn is None:
                    raise UsageError(f"{card_path} has no connector with modes")
            else:
                conn = res.connector(connector)
            crtc_id = res.crtc_of(conn) or next(iter(res.possible_crtc_ids(conn)), 0)
            if not crtc_id:
                raise UsageError(f"connector {conn.name} cannot be driven by any CRTC")
            mode = pick_mode(conn, size, refresh)
            return cls(card, conn, crtc_id, mode, own_card=True, buffers=buffers)
        except BaseException:
            card.close()
            raise

    @property
    def front(self) -> DumbFramebuffer:
        return self._fbs[self._front]

    def start(self) -> None:
        """Allocate the buffers, draw frame 0 and light the connector (one blocking ALLOW_MODESET commit)."""
        if self.started:
            return
        if not self.card.is_master:
            self.card.set_master()
        self._modeset(self.mode)
        self.frame_number = 0
        self.started = True

    def set_mode(self, mode: Mode) -> None:
        """Change the CRTC's mode (any size up to 8192x8192, any rate: one ALLOW_MODESET commit with buffers of
        the new size); the old buffers and blob are freed once the new mode is on. The animation goes on."""
        if not self.started:
            self.mode = mode
            return
        old_fbs, old_blob = self._fbs, self._blob
        try:
            self._modeset(mode, self.frame_number)
        except BaseException:
            for fb in self._fbs:
                if fb not in old_fbs:
                    fb.close()
            if self._blob is not old_blob and self._blob is not None:
                self._blob.close()
            self._fbs, self._blob = old_fbs, old_blob
            raise
        for fb in old_fbs:
            fb.close()
        if old_blob is not None:
            old_blob.close()

    def _modeset(self, mode: Mode, number: int = 0) -> None:
        w, h = mode.width, mode.height
        self._fbs = []
        self._blob = None
        fbs = [DumbFramebuffer(self.card, w, h) for _ in range(self.buffers)]
        self._fbs = fbs
        base = pattern_base(w, h)
        blob = PropertyBlob.for_mode(self.card, mode)
        self._blob = blob
        draw_pattern(fbs[0].pixels, base, number)
        req = AtomicRequest(self.card)
        req.add(self.connector, "CRTC_ID", self.crtc_id)
        req.add(self.crtc_id, "ACTIVE", 1).add(self.crtc_id, "MODE_ID", blob.id)
        req.add_many(self.plane_id, {
            "FB_ID": fbs[0].fb_id, "CRTC_ID": self.crtc_id,
            "SRC_X": 0, "SRC_Y": 0, "SRC_W": w << 16, "SRC_H": h << 16,
            "CRTC_X": 0, "CRTC_Y": 0, "CRTC_W": w, "CRTC_H": h,
        })
        req.commit(AtomicFlag.ALLOW_MODESET)
        self.mode = mode
        self._base = base
        self._front = 0

    def _draw_back(self) -> int:
        assert self._base is not None
        # With 3+ buffers the one drawn next left the screen two flips ago: a reader that was still copying
        # it when it was flipped away has had a whole frame to finish (no tearing).
        back = (self._front + 1) % len(self._fbs)
        draw_pattern(self._fbs[back].pixels, self._base, self.frame_number + 1)
        return back

    def step(self) -> None:
        """Draw the next frame into the back buffer and flip to it (a blocking commit: returns after the flip)."""
        back = self._draw_back()
        AtomicRequest(self.card).add(self.plane_id, "FB_ID", self._fbs[back].fb_id).commit()
        self._flipped(back)

    def _flipped(self, back: int) -> None:
        self._front = back
        self.frame_number += 1
        self.flips += 1

    async def run(self, frames: int | None = None, fps: float | None = None,
                  stop: asyncio.Event | None = None) -> None:
        """Flip ``frames`` times (forever if None) or until ``stop`` is set: each flip is a nonblocking commit
        with a page-flip event, the next is drawn once the event arrives. ``fps`` caps the rate below the
        refresh rate."""
        if not self.started:
            self.start()
        events = EventReader(self.card)
        loop = asyncio.get_running_loop()
        try:
            done = 0
            next_time = loop.time()
            while (frames is None or done < frames) and not (stop is not None and stop.is_set()):
                back = self._draw_back()
                token = (self.flips + 1) & 0xFFFFFFFF
                AtomicRequest(self.card).add(self.plane_id, "FB_ID", self._fbs[back].fb_id).commit(
                    AtomicFlag.NONBLOCK | AtomicFlag.PAGE_FLIP_EVENT, user_data=token)
                await events.wait_for(_flip_done(token), timeout=5.0)
                self._flipped(back)
                done += 1
                if fps:
                    next_time += 1.0 / fps
                    delay = next_time - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    else:
                        next_time = loop.time()
        finally:
            events.close()

    async def measure_flip_rate(self, seconds: float) -> FlipRate:
        """Page-flip between the buffers, each flip queued as soon as the last one's event arrived (no drawing),
        for ``seconds``; see :class:`FlipRate` for what is measured."""
        if not self.started:
            self.start()
        events = EventReader(self.card)
        loop = asyncio.get_running_loop()
        flips: list[VblankEvent] = []
        try:
            seq0 = get_sequence(self.card, self.crtc_id)
            end = loop.time() + seconds
            while not flips or loop.time() < end:
                back = (self._front + 1) % len(self._fbs)
                token = (self.flips + 1) & 0xFFFFFFFF
                AtomicRequest(self.card).add(self.plane_id, "FB_ID", self._fbs[back].fb_id).commit(
                    AtomicFlag.NONBLOCK | AtomicFlag.PAGE_FLIP_EVENT, user_data=token)
                event = await events.wait_for(_flip_done(token), timeout=5.0)
                assert isinstance(event, VblankEvent)
                self._front = back
                self.flips += 1
                flips.append(event)
            seq1 = get_sequence(self.card, self.crtc_id)
        finally:
            events.close()
        first, last = flips[0], flips[-1]
        span = last.timestamp - first.timestamp
        return FlipRate(
            mode_rate=self.mode.refresh, flips=len(flips), seconds=span,
            event_rate=(last.sequence - first.sequence) / span if span > 0 else 0.0,
            vblank_rate=((seq1.sequence - seq0.sequence) * 1e9 / (seq1.time_ns - seq0.time_ns)
                         if seq1.time_ns > seq0.time_ns else 0.0),
            frames_per_flip=(last.sequence - first.sequence) / max(len(flips) - 1, 1))

    def stop(self) -> None:
        """Turn the CRTC off and free the buffers (the card stays open)."""
        if not self.started:
            return
        self.started = False
        if not self.card.closed:
            req = AtomicRequest(self.card)
            # Every connector on the CRTC, writeback ones included, must leave it before it goes off.
            for conn in Resources.fetch(self.card, probe=False).connectors:
                if conn.crtc_id == self.crtc_id and conn.id != self.connector.id:
                    req.add(conn, "CRTC_ID", 0)
            req.add(self.connector, "CRTC_ID", 0)
            req.add(self.crtc_id, "ACTIVE", 0).add(self.crtc_id, "MODE_ID", 0)
            req.add_many(self.plane_id, {"FB_ID": 0, "CRTC_ID": 0})
            req.commit(AtomicFlag.ALLOW_MODESET)
        self._free()

    def _free(self) -> None:
        for fb in self._fbs:
            fb.close()
        self._fbs = []
        if self._blob is not None:
            self._blob.close()
            self._blob = None

    def close(self) -> None:
        try:
            self.stop()
        except DrmError:
            if not self._own_card:
                raise
            # The card's device is gone (its VKMS device disabled or removed): there is nothing to turn off.
            # With the card closed, freeing the buffers only unmaps them.
            self.card.close()
            self._free()
        finally:
            if self._own_card:
                self.card.close()

    def __enter__(self) -> PatternDriver:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<PatternDriver {os.path.basename(self.card.path)} {self.connector.name} CRTC {self.crtc_id} "
                f"{self.mode} frame {self.frame_number}>")


def _flip_done(token: int) -> Callable[[DrmEvent], bool]:
    def match(e: DrmEvent) -> bool:
        return isinstance(e, VblankEvent) and e.type == EventType.FLIP_COMPLETE and e.user_data == token
    return match


def pick_mode(connector: Connector, size: tuple[int, int] | None, refresh: float | None = None) -> Mode:
    """The mode for ``size`` at ``refresh`` Hz: the connector's listed one if it has that size (and a rate within
    REFRESH_TOLERANCE; the preferred one first, else the highest rate), else a CVT reduced-blanking mode built
    for it (VKMS accepts any mode up to 8192x8192; default rate 60 Hz). No size: the preferred mode."""
    if size is None:
        mode = connector.preferred_mode
        if mode is None:
            raise UsageError(f"connector {connector.name} has no modes")
        if refresh is None or abs(mode.refresh - refresh) <= REFRESH_TOLERANCE:
            return mode
        return cvt_rb_mode(mode.width, mode.height, refresh)
    matches = [m for m in connector.modes if (m.width, m.height) == size
               and (refresh is None or abs(m.refresh - refresh) <= REFRESH_TOLERANCE)]
    if not matches:
        return cvt_rb_mode(size[0], size[1], 60.0 if refresh is None else refresh)
    return next((m for m in matches if m.preferred), max(matches, key=lambda m: m.refresh))

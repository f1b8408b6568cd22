"""XwdSource: a FrameSource over an X server's screen kept in a memory-mapped XWD file (``Xvfb -fbdir``).

``Xvfb -fbdir DIR`` keeps screen N in ``DIR/Xvfb_screenN``: an XWD header, a colormap, then the pixels,
which the X server draws into in place through a shared mapping, as Xorg draws into a scanned-out dumb
buffer. Mapping that file read-only gives the same kind of frame source as the CRTC reader, without DRM:
``vkmsremote serve --source xwd:DIR/Xvfb_screen0`` serves any Xvfb, and the native side-by-side benchmark
(scripts/bench_native.py) runs on it.

The file layout (X11/XWDFile.h, written by Xvfb's vfbWriteXWDFileHeader): 25 big-endian CARD32 fields
(100 bytes), the window name up to ``header_size``, ``ncolors`` XWDColor entries of 12 bytes, then
``height`` rows of ``bytes_per_line`` bytes. Only the layout an X server at depth 24 uses on a
little-endian machine is read (ZPixmap, 32 bits per pixel, LSBFirst, masks 0xff0000/0xff00/0xff, i.e.
B, G, R, X in memory: the frame model's own order); anything else is refused with a UsageError that
says what the file holds.

Pacing: nothing tells when X drew, so the source looks on a timer, as the CRTC reader does between
vblanks (capture.crtc.Pacing): every ``active_interval`` while frames change, then 10 times a second, then
once a second or less; most idle looks are probes of every PROBE_STRIDE-th row. X may be drawing while
a look copies, so a frame can hold half of a drawing operation; the next look finds the rest (the
damage tracker compares against what it copied). Each full look checks the file first: a header that
changed (a new size) starts afresh; a file removed (the X server exited) or shrunk shows "no signal"
until a valid file is back at the path (the mapping is never read past the file's end, which would be
SIGBUS).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import numpy as np

from vkmsremote.capture.crtc import PROBE_STRIDE, Pacing, WakeableTimer
from vkmsremote.capture.damage import DEFAULT_TILE, DamageTracker
from vkmsremote.capture.nosignal import no_signal_frame
from vkmsremote.errors import UsageError
from vkmsremote.frame import Cursor, Frame, Pixels, Rect

SCHEME = "xwd:"
"""``--source xwd:PATH``."""
XWD_FILE_VERSION = 7
Z_PIXMAP = 2
LSB_FIRST = 0
TRUE_COLOR, DIRECT_COLOR = 4, 5
XWD_COLOR_SIZE = 12
"""sizeof(XWDColor): CARD32 pixel, CARD16 red, green, blue, CARD8 flags, pad."""
MAX_NAME = 4096
"""Bytes of window name accepted after the fixed header (Xvfb writes about 50)."""
MAX_COLORS = 1 << 16
MAX_DIMENSION = 16384
NATIVE_MASKS = (0xFF0000, 0x00FF00, 0x0000FF)
DEFAULT_ACTIVE_INTERVAL = 1 / 60
"""Seconds between looks while frames change (a 60 Hz display's vblank)."""


@dataclass(frozen=True, slots=True)
class XwdHeader:
    """XWDFileHeader (X11/XWDFile.h), in its field order, plus the window name that follows it."""

    header_size: int
    file_version: int
    pixmap_format: int
    pixmap_depth: int
    pixmap_width: int
    pixmap_height: int
    xoffset: int
    byte_order: int
    bitmap_unit: int
    bitmap_bit_order: int
    bitmap_pad: int
    bits_per_pixel: int
    bytes_per_line: int
    visual_class: int
    red_mask: int
    green_mask: int
    blue_mask: int
    bits_per_rgb: int
    colormap_entries: int
    ncolors: int
    window_width: int
    window_height: int
    window_x: int
    window_y: int
    window_bdrwidth: int
    window_name: str = field(default="", kw_only=True)

    STRUCT: ClassVar[struct.Struct] = struct.Struct(">25I")

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "the file") -> XwdHeader:
        """Parse the header at the start of ``data``; UsageError naming ``what`` if it is not one."""
        size = cls.STRUCT.size
        if len(data) < size:
            raise UsageError(f"{what} is not an XWD screen file: {len(data)} bytes, shorter than the "
                             f"{size}-byte XWD header", hint="give Xvfb's -fbdir file, e.g. xwd:DIR/Xvfb_screen0")
        values = cls.STRUCT.unpack_from(data)
        header_size, version = values[0], values[1]
        if version != XWD_FILE_VERSION or not size <= header_size <= size + MAX_NAME:
            raise UsageError(f"{what} is not an XWD screen file (version {version}, header size {header_size})",
                             hint="give Xvfb's -fbdir file, e.g. xwd:DIR/Xvfb_screen0")
        if len(data) < header_size:
            raise UsageError(f"{what} is truncated: {len(data)} bytes, its XWD header says {header_size}")
        name = data[size:header_size].split(b"\0", 1)[0].decode("utf-8", "replace")
        return cls(*values, window_name=name)

    def to_bytes(self) -> bytes:
        """The header as a file holds it: the fields, the window name, NUL padding to ``header_size``."""
        values = [getattr(self, f.name) for f in fields(self) if f.name != "window_name"]
        name = self.window_name.encode()[: self.header_size - self.STRUCT.size - 1]
        return self.STRUCT.pack(*values) + name.ljust(self.header_size - self.STRUCT.size, b"\0")

    @property
    def pixels_offset(self) -> int:
        return self.header_size + self.ncolors * XWD_COLOR_SIZE

    @property
    def file_size(self) -> int:
        """Bytes the file must have to hold every row of pixels."""
        return self.pixels_offset + self.bytes_per_line * self.pixmap_height

    def check_supported(self, what: str = "the file") -> None:
        """UsageError unless the pixels are B, G, R, X words (depth 24 in 32 bits, LSBFirst, native masks)."""
        masks = (self.red_mask, self.green_mask, self.blue_mask)
        w, h = self.pixmap_width, self.pixmap_height
        problem = ""
        if self.pixmap_format != Z_PIXMAP:
            problem = f"pixmap format {self.pixmap_format} (only ZPixmap, {Z_PIXMAP})"
        elif self.pixmap_depth != 24 or self.bits_per_pixel != 32:
            problem = f"depth {self.pixmap_depth} at {self.bits_per_pixel} bits per pixel (only depth 24 at 32)"
        elif self.visual_class not in (TRUE_COLOR, DIRECT_COLOR) or masks != NATIVE_MASKS:
            problem = (f"visual class {self.visual_class} with masks {', '.join(f'{m:#x}' for m in masks)} "
                       "(only TrueColor with red 0xff0000, green 0xff00, blue 0xff)")
        elif self.byte_order != LSB_FIRST:
            problem = "MSBFirst pixels (only LSBFirst: B, G, R, X in memory)"
        elif self.xoffset != 0:
            problem = f"x offset {self.xoffset} (only 0)"
        elif not (0 < w <= MAX_DIMENSION and 0 < h <= MAX_DIMENSION):
            problem = f"size {w}x{h} (at most {MAX_DIMENSION} each way)"
        elif self.bytes_per_line < 4 * w or self.bytes_per_line % 4:
            problem = f"{self.bytes_per_line} bytes per line for {w} pixels of 4 bytes"
        elif self.ncolors > MAX_COLORS:
            problem = f"{self.ncolors} colormap entries (at most {MAX_COLORS})"
        if problem:
            raise UsageError(f"{what} has an unsupported pixel layout: {problem}",
                             hint="run the X server at depth 24, e.g. Xvfb -screen 0 1920x1080x24")


def read_header(path: Path) -> XwdHeader:
    """The checked header of the XWD file at ``path``: UsageError for a missing, truncated or unsupported file."""
    what = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(XwdHeader.STRUCT.size + MAX_NAME)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise UsageError(f"{what} does not exist",
                         hint="start Xvfb with -fbdir DIR and give xwd:DIR/Xvfb_screen0") from None
    except IsADirectoryError:
        raise UsageError(f"{what} is a directory", hint="give the screen file in it, e.g. Xvfb_screen0") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what}: {exc.strerror or exc}") from None
    header = XwdHeader.from_bytes(data, what)
    header.check_supported(what)
    if size < header.file_size:
        raise UsageError(f"{what} is truncated: {size} bytes, its XWD header describes {header.file_size}")
    return header


class _Mapping:
    """One open, read-only mapping of the screen file and the (height, width, 4) view of its pixels."""

    def __init__(self, path: Path) -> None:
        self.header = read_header(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            self.ino = (st.st_dev, st.st_ino)
            if st.st_size < self.header.file_size:  # shrunk since read_header
                raise UsageError(f"{path} is truncated: {st.st_size} bytes, its XWD header describes "
                                 f"{self.header.file_size}")
            self.map = mmap.mmap(fd, self.header.file_size, prot=mmap.PROT_READ)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        h = self.header
        self.head_bytes = bytes(self.map[:h.header_size])
        self.pixels: Pixels = np.ndarray((h.pixmap_height, h.pixmap_width, 4), np.uint8, self.map,
                                         h.pixels_offset, (h.bytes_per_line, 4, 1))

    def intact(self, path: Path) -> bool:
        """Whether the file is still the one mapped, at least as long and with the same header (the only
        check between reading its pixels and SIGBUS, should it shrink)."""
        try:
            st = os.fstat(self.fd)
            now = os.stat(path)
        except OSError:
            return False
        return (st.st_nlink > 0 and st.st_size >= self.header.file_size and (now.st_dev, now.st_ino) == self.ino
                and self.map[:self.header.header_size] == self.head_bytes)

    def close(self) -> None:
        del self.pixels
        with contextlib.suppress(BufferError):  # a view of it still exists somewhere: unmapped when that goes
            self.map.close()
        os.close(self.fd)


class XwdSource:
    """Implements vkmsremote.frame.FrameSource for an XWD screen file that an X server draws into.

    :meth:`open` checks the file at once (UsageError for a missing, truncated or unsupported one).
    """

    def __init__(self, path: Path, *, tile: int = DEFAULT_TILE, pacing: Pacing | None = None,
                 active_interval: float = DEFAULT_ACTIVE_INTERVAL, desktop_name: str = "") -> None:
        if active_interval <= 0:
            raise UsageError(f"the active look interval must be positive, not {active_interval}")
        self.path = Path(path)
        self._mapping: _Mapping | None = _Mapping(self.path)
        header = self._mapping.header
        self._desktop_name = desktop_name or header.window_name or str(self.path)
        self._size = (header.pixmap_width, header.pixmap_height)
        self._tile = tile
        self.pacing = pacing or Pacing()
        self.active_interval = active_interval
        self._timer = WakeableTimer()
        self._tracker: DamageTracker | None = None
        self._serial = -1
        self._unchanged = 0
        self._no_signal = False
        self.look_cost = 0.0  # CPU seconds an idle look takes here (moving average)
        self.frames = 0  # frames returned
        self.full_checks = 0  # looks that compared the whole screen
        self.probes = 0  # looks that compared a sample of rows and found nothing

    @classmethod
    def open(cls, spec: str, **kwargs: object) -> XwdSource:
        """``xwd:PATH`` (or a bare path) -> an XwdSource over that file."""
        path = spec[len(SCHEME):] if spec.startswith(SCHEME) else spec
        if not path:
            raise UsageError("xwd: needs the path of an XWD screen file, e.g. xwd:/tmp/fb/Xvfb_screen0")
        return cls(Path(path), **kwargs)  # type: ignore[arg-type]

    # --- FrameSource -----------------------------------------------------------------------------------

    @property
    def desktop_name(self) -> str:
        return self._desktop_name

    @property
    def idle(self) -> bool:
        """Whether the source is looking less often than every ``active_interval``."""
        return self.pacing.step(self._unchanged)[0] is not None

    def cursor(self) -> Cursor | None:
        return None  # the X server draws its cursor into the screen (Xvfb's is a software cursor)

    def wake(self) -> None:
        """Something will probably change soon (a client sent input): look at the active rate again."""
        self._unchanged = 0
        self._timer.wake()

    async def next_frame(self) -> Frame:
        if self._serial < 0:
            pixels, _ = self._look(probe=False)
            return self._frame(pixels, None)
        while True:
            delay, full = self.pacing.step(self._unchanged, self.look_cost)
            await self._timer.sleep(self.active_interval if delay is None else delay)
            started = time.thread_time()
            was_no_signal = self._no_signal
            pixels, damage = self._look(probe=not full)
            if delay is not None:
                self.look_cost = 0.8 * self.look_cost + 0.2 * (time.thread_time() - started)
            if damage is None and was_no_signal and self._no_signal:
                damage = ()
            if damage is None or damage:
                self._unchanged = 0
                return self._frame(pixels, damage)
            self._unchanged += 1

    async def close(self) -> None:
        self.close_sync()

    def close_sync(self) -> None:
        if self._mapping is not None:
            self._mapping.close()
            self._mapping = None

    # --- internals -------------------------------------------------------------------------------------

    def _frame(self, pixels: Pixels, damage: tuple[Rect, ...] | None) -> Frame:
        self._serial += 1
        self.frames += 1
        # Always the tracker's stable copy, never the mapping: kept without a copy.
        return Frame(pixels, self._serial, damage, immutable=True)

    def _look(self, *, probe: bool) -> tuple[Pixels, tuple[Rect, ...] | None]:
        """The stable frame and what changed since the last look (None: everything)."""
        mapping, tracker = self._mapping, self._tracker
        # Between full checks the file is not stat'ed: a probe that sees any difference becomes one.
        if (probe and mapping is not None and tracker is not None and not self._no_signal
                and np.array_equal(mapping.pixels[::PROBE_STRIDE], tracker.frame[::PROBE_STRIDE])):
            self.probes += 1
            return tracker.frame, ()
        self.full_checks += 1
        if mapping is None or not mapping.intact(self.path):
            mapping = self._remap()
            if mapping is None:
                return self._show_no_signal()
            tracker = None
        h = mapping.header
        if tracker is None or self._no_signal or (tracker.width, tracker.height) != (h.pixmap_width, h.pixmap_height):
            tracker = self._tracker = DamageTracker(h.pixmap_width, h.pixmap_height, self._tile)
            self._size = (h.pixmap_width, h.pixmap_height)
            tracker.reset(mapping.pixels)
            self._no_signal = False
            return tracker.frame, None
        damage = tracker.update(mapping.pixels)  # first: the update may make another buffer ``frame``
        return tracker.frame, damage

    def _remap(self) -> _Mapping | None:
        """Map the file at the path afresh; None (nothing mapped) while there is no valid one."""
        if self._mapping is not None:
            self._mapping.close()
            self._mapping = None
        try:
            self._mapping = _Mapping(self.path)
        except UsageError:
            return None
        return self._mapping

    def _show_no_signal(self) -> tuple[Pixels, tuple[Rect, ...] | None]:
        if not self._no_signal or self._tracker is None:
            w, h = self._size
            self._tracker = DamageTracker(w, h, self._tile)
            self._tracker.reset(no_signal_frame(w, h))
            self._no_signal = True
        return self._tracker.frame, None


def source(spec: str) -> XwdSource:
    """``--source xwd:PATH`` -> the source over that file (UsageError, one line, if it cannot be served)."""
    return XwdSource.open(spec)

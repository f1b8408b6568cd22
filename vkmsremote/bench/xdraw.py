"""Draw a benchmark workload on an X display's root window: the content source of the peer benchmark.

    python -m vkmsremote.bench.xdraw --display :1 --workload typing --log /tmp/flips [--fps 30]

While Xorg is DRM master on the VKMS card, nothing else may flip its CRTC, so the frames of
vkmsremote.bench.workloads reach the screen as an X client's drawing: each frame's damage rectangles
go to the root window with XShmPutImage (MIT-SHM: the X server copies from shared memory; plain
XPutImage if the extension is missing), then XSync. With the modesetting driver and AccelMethod "none"
(no shadow framebuffer) the X server writes straight into the scanned-out dumb buffer, so once XSync
returns the frame is on the CRTC: that moment is logged as the frame's "flip" time
(vkmsremote.bench.scanout.FlipLog), for x11vnc and vkmsremote alike.

Only libX11 and libXext through ctypes; no toolkit. Prints "ready" on stdout after frame 0.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import numpy as np

from vkmsremote.bench.scanout import FlipLog
from vkmsremote.bench.workloads import make_workload
from vkmsremote.errors import UsageError
from vkmsremote.frame import Pixels, Rect

Z_PIXMAP = 2
IPC_PRIVATE = 0
IPC_CREAT = 0o1000
IPC_RMID = 0


class XImage(ctypes.Structure):
    """The leading fields of Xlib's XImage (X11/Xlib.h); the rest is never touched from here."""

    _fields_ = [
        ("width", ctypes.c_int), ("height", ctypes.c_int), ("xoffset", ctypes.c_int), ("format", ctypes.c_int),
        ("data", ctypes.c_void_p), ("byte_order", ctypes.c_int), ("bitmap_unit", ctypes.c_int),
        ("bitmap_bit_order", ctypes.c_int), ("bitmap_pad", ctypes.c_int), ("depth", ctypes.c_int),
        ("bytes_per_line", ctypes.c_int), ("bits_per_pixel", ctypes.c_int),
    ]


class XShmSegmentInfo(ctypes.Structure):
    _fields_ = [("shmseg", ctypes.c_ulong), ("shmid", ctypes.c_int), ("shmaddr", ctypes.c_void_p),
                ("readOnly", ctypes.c_int)]


def _lib(name: str) -> ctypes.CDLL:
    path = ctypes.util.find_library(name)
    if path is None:
        raise UsageError(f"lib{name} is not installed", hint="install libx11-6 and libxext6")
    return ctypes.CDLL(path)


class RootWindowCanvas:
    """A (height, width, 4) B, G, R, X canvas the size of the screen, put onto the root window by rectangle."""

    def __init__(self, display: str) -> None:
        x = self.x = _lib("X11")
        x.XOpenDisplay.restype = ctypes.c_void_p
        x.XOpenDisplay.argtypes = [ctypes.c_char_p]
        for fn in ("XDefaultVisual", "XDefaultGC"):
            getattr(x, fn).restype = ctypes.c_void_p
            getattr(x, fn).argtypes = [ctypes.c_void_p, ctypes.c_int]
        for fn in ("XDefaultScreen",):
            getattr(x, fn).argtypes = [ctypes.c_void_p]
        for fn in ("XDisplayWidth", "XDisplayHeight", "XDefaultDepth"):
            getattr(x, fn).argtypes = [ctypes.c_void_p, ctypes.c_int]
        x.XRootWindow.restype = ctypes.c_ulong
        x.XRootWindow.argtypes = [ctypes.c_void_p, ctypes.c_int]
        x.XSync.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.dpy = x.XOpenDisplay(display.encode())
        if not self.dpy:
            raise UsageError(f"cannot open X display {display}")
        scr = x.XDefaultScreen(self.dpy)
        self.width, self.height = x.XDisplayWidth(self.dpy, scr), x.XDisplayHeight(self.dpy, scr)
        self.root = x.XRootWindow(self.dpy, scr)
        self.gc = x.XDefaultGC(self.dpy, scr)
        visual, depth = x.XDefaultVisual(self.dpy, scr), x.XDefaultDepth(self.dpy, scr)
        if depth != 24:
            raise UsageError(f"X display {display} has depth {depth}", hint="run the X server at depth 24")
        self.shm = self._try_shm(visual, depth)
        if self.shm:
            return
        x.XCreateImage.restype = ctypes.POINTER(XImage)
        x.XCreateImage.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_int,
                                   ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int, ctypes.c_int]
        x.XPutImage.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.POINTER(XImage),
                                *[ctypes.c_int] * 4, *[ctypes.c_uint] * 2]
        self.canvas: Pixels = np.zeros((self.height, self.width, 4), np.uint8)
        self.image = x.XCreateImage(self.dpy, visual, depth, Z_PIXMAP, 0, self.canvas.ctypes.data,
                                    self.width, self.height, 32, self.width * 4)

    def _try_shm(self, visual: int, depth: int) -> bool:
        xext = _lib("Xext")
        xext.XShmQueryExtension.argtypes = [ctypes.c_void_p]
        if not xext.XShmQueryExtension(self.dpy):
            return False
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmat.restype = ctypes.c_void_p
        libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
        libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        xext.XShmCreateImage.restype = ctypes.POINTER(XImage)
        xext.XShmCreateImage.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                                         ctypes.c_void_p, ctypes.POINTER(XShmSegmentInfo), ctypes.c_uint,
                                         ctypes.c_uint]
        xext.XShmAttach.argtypes = [ctypes.c_void_p, ctypes.POINTER(XShmSegmentInfo)]
        xext.XShmPutImage.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.POINTER(XImage),
                                      *[ctypes.c_int] * 4, *[ctypes.c_uint] * 2, ctypes.c_int]
        self.xext = xext
        self.seg = XShmSegmentInfo()
        image = xext.XShmCreateImage(self.dpy, visual, depth, Z_PIXMAP, None, ctypes.byref(self.seg),
                                     self.width, self.height)
        if not image:
            return False
        pitch = image.contents.bytes_per_line
        size = pitch * self.height
        self.seg.shmid = libc.shmget(IPC_PRIVATE, size, IPC_CREAT | 0o600)
        if self.seg.shmid < 0:
            return False
        addr = libc.shmat(self.seg.shmid, None, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return False
        self.seg.shmaddr = addr
        self.seg.readOnly = 0
        image.contents.data = addr
        if not xext.XShmAttach(self.dpy, ctypes.byref(self.seg)):
            return False
        self.x.XSync(self.dpy, 0)
        libc.shmctl(self.seg.shmid, IPC_RMID, None)  # freed once both sides detach
        raw = np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(addr))
        self.canvas = raw.reshape(self.height, pitch // 4, 4)[:, :self.width]
        self.image = image
        return True

    def put(self, rects: tuple[Rect, ...] | list[Rect]) -> None:
        """Copy these rectangles of the canvas to the root window and wait until the server has done so."""
        for r in rects:
            if self.shm:
                self.xext.XShmPutImage(self.dpy, self.root, self.gc, self.image, r.x, r.y, r.x, r.y, r.w, r.h, 0)
            else:
                self.x.XPutImage(self.dpy, self.root, self.gc, self.image, r.x, r.y, r.x, r.y, r.w, r.h)
        self.x.XSync(self.dpy, 0)


def run(display: str, workload: str, log_path: Path, fps: float, frames: int | None = None) -> int:
    canvas = RootWindowCanvas(display)
    wl = make_workload(workload, canvas.width, canvas.height)
    log = FlipLog.create(log_path)
    stop = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    wl.first(canvas.canvas)
    canvas.put([Rect(0, 0, canvas.width, canvas.height)])
    log.record(0, time.monotonic())
    print(f"ready {canvas.width}x{canvas.height} {'MIT-SHM' if canvas.shm else 'XPutImage'}", flush=True)
    n = 0
    next_t = time.monotonic()
    while not stop and (frames is None or n < frames):
        if not wl.changes:
            time.sleep(0.1)
            continue
        n += 1
        canvas.put(wl.draw(n, canvas.canvas))
        log.record(n, time.monotonic())
        next_t += 1 / fps
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_t = time.monotonic()
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--display", required=True)
    p.add_argument("--workload", required=True)
    p.add_argument("--log", type=Path, required=True, help="flip log file to create")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--frames", type=int)
    args = p.parse_args(argv)
    n = run(args.display, args.workload, args.log, args.fps, args.frames)
    print(f"drew {n} frames", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

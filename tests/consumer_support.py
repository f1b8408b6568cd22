"""Host-side helpers for the consumer socket tests: a ConsumerServer on a real SOCK_SEQPACKET socket in
a thread of its own, fed by a producer of memfd buffers (memfds stand in for dma-bufs: both are files
whose pages the consumer maps), and the C client built with the system compiler through pkg-config."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from vkmsremote.consumer.protocol import Buffer, Hello, Mode, Plane, Rect
from vkmsremote.consumer.server import ConsumerServer, bind_socket
from vkmsremote.drm.fourcc import DrmFormat

REPO = Path(__file__).resolve().parents[1]
C_DIR = REPO / "clients" / "c"
T = TypeVar("T")


def open_fds(pid: int | str = "self") -> set[int]:
    out = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            os.stat(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        out.add(int(name))
    return out


class ServerThread:
    """A ConsumerServer serving ``path`` from an event loop in a thread; :meth:`call` runs code there."""

    def __init__(self, path: Path, *, width: int = 64, height: int = 32, max_consumers: int = 8,
                 send_buffer: int = 256 * 1024, mode: int = 0o666, group: str | int | None = None,
                 card: str = "/dev/dri/card7") -> None:
        self.path = path
        self.width, self.height = width, height
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        listener = bind_socket(path, group=group, mode=mode)
        hello = Hello("XR-0", card, "Virtual-3", 41, 40, os.getpid(), Mode(width, height, 60000, True))

        def make() -> ConsumerServer:
            s = ConsumerServer(listener, hello, max_consumers=max_consumers, send_buffer=send_buffer, path=path)
            s.start()
            return s

        self.server = self.call(make)

    def call(self, fn: Callable[[], T]) -> T:
        done: Future[T] = Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed to the caller
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result(30)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class MemfdProducer:
    """Buffers in memfds, drawn by the test and announced to the server as a tap would."""

    def __init__(self, st: ServerThread) -> None:
        self.st = st
        self.w, self.h = st.width, st.height
        self.pitch = self.w * 4 + 64  # a pitch wider than the row, as real drivers do
        self.buffers: dict[int, tuple[int, np.ndarray]] = {}  # id -> (fd, (h, pitch) view)
        self._next = 1

    def new_buffer(self) -> int:
        fd = os.memfd_create("xr0-buffer", os.MFD_CLOEXEC)
        os.ftruncate(fd, self.pitch * self.h)
        import mmap

        mm = mmap.mmap(fd, self.pitch * self.h)
        rows = np.frombuffer(mm, np.uint8).reshape(self.h, self.pitch)
        bid = self._next
        self._next += 1
        self.buffers[bid] = (fd, rows)
        meta = Buffer(bid, 100 + bid, self.w, self.h, DrmFormat.XRGB8888, 0, (Plane(self.pitch, 0, 0),), 1)
        dup = os.dup(fd)
        self.st.call(lambda: self.st.server.add_buffer(meta, (dup,)))
        return bid

    def pixels(self, bid: int) -> np.ndarray:
        return self.buffers[bid][1][:, :self.w * 4].reshape(self.h, self.w, 4)

    def show(self, bid: int, damage: tuple[Rect, ...] | None, new_buffer: bool = True) -> Any:
        return self.st.call(lambda: self.st.server.frame(bid, (0, 0, self.w, self.h), damage, new_buffer=new_buffer))

    def retire(self, bid: int) -> None:
        self.st.call(lambda: self.st.server.retire(bid))
        fd, _ = self.buffers.pop(bid)
        os.close(fd)

    def close(self) -> None:
        for fd, _ in self.buffers.values():
            os.close(fd)
        self.buffers.clear()


def build_c_client(out_dir: Path) -> Path:
    """Build the C library (static), install header + .pc under ``out_dir``, then the example program
    through ``pkg-config --cflags --libs vkmsremote-consumer``: the way a renderer would use it."""
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "no C compiler (scripts/setup-host.sh installs gcc)"
    (out_dir / "include").mkdir(parents=True, exist_ok=True)
    (out_dir / "lib" / "pkgconfig").mkdir(parents=True, exist_ok=True)
    shutil.copy(C_DIR / "vkmsremote-consumer.h", out_dir / "include")
    obj = out_dir / "vkmsremote-consumer.o"
    flags = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]
    subprocess.run([cc, *flags, "-c", str(C_DIR / "vkmsremote-consumer.c"), "-o", str(obj)], check=True)
    subprocess.run(["ar", "rcs", str(out_dir / "lib" / "libvkmsremote-consumer.a"), str(obj)], check=True)
    pc = (C_DIR / "vkmsremote-consumer.pc.in").read_text().replace("@PREFIX@", str(out_dir))
    (out_dir / "lib" / "pkgconfig" / "vkmsremote-consumer.pc").write_text(pc)
    env = {**os.environ, "PKG_CONFIG_PATH": str(out_dir / "lib" / "pkgconfig")}
    pkg = subprocess.run(["pkg-config", "--cflags", "--libs", "vkmsremote-consumer"], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    exe = out_dir / "vkmsr-consume"
    subprocess.run([cc, *flags, str(C_DIR / "vkmsr-consume.c"), "-o", str(exe), *pkg], check=True)
    return exe


def parse_lines(text: str) -> list[tuple[str, dict[str, str]]]:
    """``kind key=value ...`` lines (consume's text output and the C client's)."""
    out = []
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        fields = dict(f.split("=", 1) for f in rest.split() if "=" in f)
        out.append((kind, fields))
    return out


class TappedSource:
    """A FrameSource that passes another one's frames on and, like the tap of ``vkmsremote up``, hands each
    one to a ConsumerServer as a page flip: copied into the next of three memfd buffers (standing in for
    the compositor's dma-bufs), then a FRAME with the frame's damage. Runs on the consumer server's loop,
    inside the VNC path: a consumer that could block the server would block the VNC clients here."""

    def __init__(self, source: Any, server: ConsumerServer, width: int, height: int) -> None:
        import mmap

        self.source, self.server = source, server
        self.width, self.height = width, height
        self._views: list[np.ndarray] = []
        self._maps: list[mmap.mmap] = []
        for i in range(3):
            fd = os.memfd_create(f"tap-buffer-{i}", os.MFD_CLOEXEC)
            os.ftruncate(fd, width * 4 * height)
            mm = mmap.mmap(fd, width * 4 * height)
            self._maps.append(mm)
            self._views.append(np.frombuffer(mm, np.uint8).reshape(height, width, 4))
            server.add_buffer(Buffer(i + 1, 200 + i, width, height, DrmFormat.XRGB8888, 0, (Plane(width * 4, 0, 0),), 1),
                              (fd,))  # the server owns the fd from here
        self.flips = 0

    @property
    def desktop_name(self) -> str:
        return str(self.source.desktop_name)

    def cursor(self) -> Any:
        return self.source.cursor()

    async def next_frame(self) -> Any:
        frame = await self.source.next_frame()
        bid = self.flips % 3 + 1
        np.copyto(self._views[bid - 1], frame.pixels)
        damage = None if frame.damage is None else tuple(Rect(r.x, r.y, r.w, r.h) for r in frame.damage)
        self.server.frame(bid, (0, 0, self.width, self.height), damage, new_buffer=True)
        self.flips += 1
        return frame

    async def close(self) -> None:
        await self.source.close()
        self._views.clear()
        for mm in self._maps:
            mm.close()

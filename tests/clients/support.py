"""Test helpers for the server tests: a controllable FrameSource, the server in a background thread
(for blocking real clients), and a small asyncio RFB client (for protocol behaviour the real clients
cannot be made to show, e.g. fences or a client that stops reading)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import struct
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from vkmsremote.frame import Cursor, Frame, Pixels, Rect
from vkmsremote.rfb.auth import vnc_auth_response
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.messages import Screen, SetEncodings, SetPixelFormat
from vkmsremote.rfb.pixelformat import NATIVE, PixelFormat
from vkmsremote.server.app import VncServer

T = TypeVar("T")


class ControlledSource:
    """A FrameSource whose frames the test sets (thread-safe); the first frame is returned at once."""

    def __init__(self, pixels: Pixels, *, name: str = "controlled", cursor: Cursor | None = None) -> None:
        self._pixels = np.array(pixels, dtype=np.uint8, copy=True)
        self._damage: tuple[Rect, ...] | None = None
        self._serial = 0
        self._pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._lock = threading.Lock()
        self.name = name
        self._cursor = cursor
        self.closed = False

    @property
    def desktop_name(self) -> str:
        return self.name

    def cursor(self) -> Cursor | None:
        return self._cursor

    async def close(self) -> None:
        self.closed = True

    def set_frame(self, pixels: Pixels, damage: tuple[Rect, ...] | None = None) -> None:
        with self._lock:
            self._pixels = np.array(pixels, dtype=np.uint8, copy=True)
            self._damage = damage if not self._pending else None
            self._pending = True
        if self._loop is not None and self._event is not None:
            self._loop.call_soon_threadsafe(self._event.set)

    @property
    def pixels(self) -> Pixels:
        with self._lock:
            return self._pixels.copy()

    async def next_frame(self) -> Frame:
        if self._event is None:
            self._loop = asyncio.get_running_loop()
            self._event = asyncio.Event()
            self._serial = 1
            with self._lock:
                return Frame(self._pixels, self._serial, None)
        while True:
            with self._lock:
                if self._pending:
                    self._pending = False
                    self._serial += 1
                    return Frame(self._pixels, self._serial, self._damage)
                self._event.clear()
            await self._event.wait()


class ServerThread:
    """A VncServer on 127.0.0.1 (ephemeral port) running in its own thread and event loop."""

    def __init__(self, source: object, **kwargs: Any) -> None:
        self.source = source
        self.kwargs = kwargs
        self.loop = asyncio.new_event_loop()
        self.server: VncServer | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("server thread did not start")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as e:  # reported by __enter__
            self._error = e
            self._ready.set()
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self.server = VncServer(self.source, port=0, **self.kwargs)  # type: ignore[arg-type]
        await self.server.start()
        self._ready.set()
        await self._stop.wait()
        await self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def records(self) -> list[Any]:
        assert self.server is not None

        async def get() -> list[Any]:
            assert self.server is not None
            return list(self.server.records)

        return self.call(get())


# --- a small RFB client ------------------------------------------------------------------------------------


@dataclass
class Update:
    rects: list[tuple[int, int, int, int, int, bytes]] = field(default_factory=list)  # x, y, w, h, enc, data


@dataclass
class ServerMsg:
    kind: str  # "update", "colourmap", "bell", "cuttext", "eocu", "fence"
    update: Update | None = None
    data: Any = None


class RawClient:
    """Speaks just enough RFB to test the server: Raw-decoding, any 32/16/8-bit format."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        self.width = self.height = 0
        self.name = ""
        self.pf = NATIVE
        self.fb: np.ndarray = np.zeros((0, 0), dtype=np.uint32)
        self.colour_map: dict[int, tuple[int, int, int]] = {}

    async def connect(self, port: int, *, version: bytes = b"RFB 003.008\n", shared: bool = True,
                      password: bytes | None = None) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        assert await self.reader.readexactly(12) == b"RFB 003.008\n"
        self.writer.write(version)
        n = (await self.reader.readexactly(1))[0]
        if n == 0:  # refused: reason follows
            (length,) = struct.unpack(">I", await self.reader.readexactly(4))
            raise ConnectionRefusedError((await self.reader.readexactly(length)).decode())
        types = await self.reader.readexactly(n)
        if password is not None:
            assert 2 in types
            self.writer.write(b"\x02")
            challenge = await self.reader.readexactly(16)
            self.writer.write(vnc_auth_response(password, challenge))
        else:
            assert 1 in types
            self.writer.write(b"\x01")
        (result,) = struct.unpack(">I", await self.reader.readexactly(4))
        if result != 0:
            (length,) = struct.unpack(">I", await self.reader.readexactly(4))
            raise PermissionError((await self.reader.readexactly(length)).decode())
        self.writer.write(bytes([int(shared)]))
        head = await self.reader.readexactly(24)
        self.width, self.height = struct.unpack(">HH", head[:4])
        self.pf = PixelFormat.from_bytes(head[4:20])
        (name_len,) = struct.unpack(">I", head[20:24])
        self.name = (await self.reader.readexactly(name_len)).decode()
        self.fb = np.zeros((self.height, self.width), dtype=np.uint32)

    def send(self, *messages: Any) -> None:
        for m in messages:
            self.writer.write(m.to_bytes())

    def set_encodings(self, *encodings: int) -> None:
        self.send(SetEncodings(tuple(encodings)))

    def set_pixel_format(self, pf: PixelFormat) -> None:
        self.pf = pf
        self.send(SetPixelFormat(pf))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    async def read_message(self, timeout: float = 5) -> ServerMsg:
        return await asyncio.wait_for(self._read_message(), timeout)

    async def read_update(self, timeout: float = 5) -> Update:
        """The next FramebufferUpdate (other messages before it are skipped)."""
        while True:
            msg = await self.read_message(timeout)
            if msg.kind == "update":
                assert msg.update is not None
                return msg.update

    async def _read_message(self) -> ServerMsg:
        r = self.reader
        t = (await r.readexactly(1))[0]
        if t == 0:
            _, count = struct.unpack(">BH", await r.readexactly(3))
            up = Update()
            for _ in range(count):
                x, y, w, h, enc = struct.unpack(">HHHHi", await r.readexactly(12))
                data = await self._rect_data(x, y, w, h, enc)
                up.rects.append((x, y, w, h, enc, data))
            return ServerMsg("update", up)
        if t == 1:
            _, first, n = struct.unpack(">BHH", await r.readexactly(5))
            vals = struct.unpack(f">{3 * n}H", await r.readexactly(6 * n))
            for i in range(n):
                self.colour_map[first + i] = vals[3 * i:3 * i + 3]
            return ServerMsg("colourmap", data=(first, n))
        if t == 2:
            return ServerMsg("bell")
        if t == 3:
            (length,) = struct.unpack(">3xI", await r.readexactly(7))
            return ServerMsg("cuttext", data=await r.readexactly(length))
        if t == 150:
            return ServerMsg("eocu")
        if t == 248:
            flags, length = struct.unpack(">3xIB", await r.readexactly(8))
            return ServerMsg("fence", data=(flags, await r.readexactly(length)))
        raise AssertionError(f"unknown server message type {t}")

    async def _rect_data(self, x: int, y: int, w: int, h: int, enc: int) -> bytes:
        r = self.reader
        bpp = self.pf.bytes_per_pixel
        if enc == Encoding.RAW:
            data = await r.readexactly(w * h * bpp)
            dtype = {1: np.uint8, 2: np.dtype(">u2" if self.pf.big_endian else "<u2"),
                     4: np.dtype(">u4" if self.pf.big_endian else "<u4")}[bpp]
            self.fb[y:y + h, x:x + w] = np.frombuffer(data, dtype=dtype).reshape(h, w)
            return data
        if enc in (Encoding.DESKTOP_SIZE, Encoding.LAST_RECT, Encoding.QEMU_EXTENDED_KEY_EVENT):
            if enc == Encoding.DESKTOP_SIZE:
                self._resize(w, h)
            return b""
        if enc == Encoding.EXTENDED_DESKTOP_SIZE:
            head = await r.readexactly(4)
            data = head + await r.readexactly(16 * head[0])
            if x != 1 or y == 0:  # a real change (not a refused request)
                self._resize(w, h)
            return data
        if enc == Encoding.DESKTOP_NAME:
            (n,) = struct.unpack(">I", await r.readexactly(4))
            return await r.readexactly(n)
        if enc == Encoding.CURSOR:
            return await r.readexactly(w * h * bpp + (w + 7) // 8 * h)
        if enc == Encoding.CURSOR_WITH_ALPHA:
            (sub,) = struct.unpack(">i", await r.readexactly(4))
            assert sub == Encoding.RAW
            return await r.readexactly(w * h * 4)
        raise AssertionError(f"RawClient cannot decode encoding {enc}")

    def _resize(self, w: int, h: int) -> None:
        if (w, h) != (self.width, self.height):
            self.width, self.height = w, h
            self.fb = np.zeros((h, w), dtype=np.uint32)

    def rgb(self) -> np.ndarray:
        """The framebuffer as (h, w, 3) 8-bit R, G, B (exact for 8-bit channels)."""
        pf, v = self.pf, self.fb
        if not pf.true_colour:
            lut = np.array([self.colour_map.get(i, (0, 0, 0)) for i in range(256)], dtype=np.uint32) >> 8
            return lut[v & 0xFF].astype(np.uint8)
        out = np.empty((*v.shape, 3), dtype=np.uint8)
        for i, (mx, sh) in enumerate(((pf.red_max, pf.red_shift), (pf.green_max, pf.green_shift),
                                      (pf.blue_max, pf.blue_shift))):
            out[..., i] = ((v >> sh) & mx) * 255 // mx
        return out


def screens_of(data: bytes) -> list[Screen]:
    return [Screen.from_bytes(data[4 + 16 * i:20 + 16 * i]) for i in range(data[0])]


def rgb_of(pixels: Pixels) -> np.ndarray:
    """(h, w, 3) R, G, B of a B, G, R, X frame."""
    return np.ascontiguousarray(pixels[:, :, 2::-1])


@contextlib.contextmanager
def serving(*args: str, env: dict[str, str] | None = None, debug: bool = False) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`vkmsremote serve` in a subprocess (with DEBUG logging if asked); yields it and its port."""
    base = {k: v for k, v in os.environ.items() if k != "VKMSREMOTE_PASSWORD"}
    cmd = [sys.executable, "-c", "import logging, sys; logging.basicConfig(level=logging.DEBUG); "
           "from vkmsremote.cli import main; sys.exit(main())"] if debug else [str(Path(sys.executable).parent / "vkmsremote")]
    proc = subprocess.Popen([*cmd, "serve", "--size", "64x48", "--port", "0", *args], env={**base, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"port (\d+)", line)
        if m is None:
            proc.kill()
            raise AssertionError(f"server did not start: {line!r} {proc.communicate()[1][-2000:]}")
        yield proc, int(m.group(1))
    finally:
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
        if proc.poll() is None:
            proc.kill()

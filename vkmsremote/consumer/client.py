"""The Python consumer library: find XR-0 by name, get its buffers once, hear every flip with its damage.

    from vkmsremote.consumer import Consumer

    with Consumer.connect("XR-0") as xr:
        print(xr.hello.card, xr.hello.connector, xr.hello.crtc_id, xr.mode)
        for frame in xr.frames():
            pixels = frame.pixels()  # (h, w, 4) numpy view of the buffer's visible part (mmap, no copy)
            ...frame.damage, frame.buffer.fds (dma-bufs for EGL), frame.event.vblank_ns ...

Each buffer's fds arrive once (BUFFER) and are closed by the library when the server retires the buffer,
so the process holds at most as many fds as there are live buffers. :meth:`Consumer.events` gives every
message (MODE, BUFFER, FRAME, RETIRE) for consumers that want more than frames.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import select
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from vkmsremote.consumer.options import SYSTEM_DIR
from vkmsremote.consumer.protocol import (
    MAX_PACKET,
    MAX_PLANES,
    Buffer,
    Bye,
    ClientState,
    ConsumerProtocolError,
    FrameEvent,
    FrameFlags,
    HeldBuffer,
    Hello,
    Message,
    Mode,
    Rect,
)
from vkmsremote.errors import PermissionDeniedError, TimeoutError_, UsageError

SOCKET_DIR_ENV = "VKMSREMOTE_CONSUMER_DIR"
_DMA_BUF_IOCTL_SYNC = 0x40086200  # _IOW('b', 0, struct dma_buf_sync)
_SYNC_START_READ, _SYNC_END_READ = 1, 4 | 1


def socket_dirs() -> list[Path]:
    """Where consumer sockets are looked for, in order: $VKMSREMOTE_CONSUMER_DIR, $XDG_RUNTIME_DIR/vkmsremote,
    /run/vkmsremote (docs/consumer-protocol.md)."""
    dirs = []
    if os.environ.get(SOCKET_DIR_ENV):
        dirs.append(Path(os.environ[SOCKET_DIR_ENV]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        dirs.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "vkmsremote")
    dirs.append(SYSTEM_DIR)
    return dirs


def find_socket(name: str) -> Path:
    """The consumer socket of connector ``name`` (e.g. "XR-0"), or a path containing "/" as it is."""
    if "/" in name:
        return Path(name)
    if not name or name.startswith(".") or len(name) > 64:
        raise UsageError(f"{name!r} is not a connector name")
    for d in socket_dirs():
        candidate = d / f"{name}.sock"
        if candidate.exists():
            return candidate
    raise UsageError(f"no consumer socket for {name} in {', '.join(map(str, socket_dirs()))}",
                     hint="is `vkmsremote up` serving it? `vkmsremote status` prints the socket's path")


class _Mapping:
    """One mmap(2) of a whole fd, unmapped when the last numpy view of it is gone.

    Python's mmap module keeps a dup of the fd for as long as the mapping lives: a consumer would hold
    two fds per buffer. mmap(2) itself needs none after it returns, so the library calls it directly."""

    _libc: ctypes.CDLL | None = None

    def __init__(self, fd: int) -> None:
        libc = _Mapping._libc
        if libc is None:
            libc = _Mapping._libc = ctypes.CDLL(None, use_errno=True)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_long]
            libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.size = os.lseek(fd, 0, os.SEEK_END)
        if self.size <= 0:
            raise ConsumerProtocolError(f"a buffer fd of {self.size} bytes")
        address = libc.mmap(None, self.size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of a buffer: {os.strerror(err)}")
        self.address: int = address

    def array(self) -> npt.NDArray[np.uint8]:
        raw = (ctypes.c_uint8 * self.size).from_address(self.address)
        raw._mapping = self  # type: ignore[attr-defined]  # every view keeps the mapping alive
        out: npt.NDArray[np.uint8] = np.frombuffer(memoryview(raw).cast("B"), np.uint8)
        out.flags.writeable = False  # PROT_READ: a write would fault
        return out

    def __del__(self) -> None:
        if self._libc is not None:
            self._libc.munmap(self.address, self.size)


class MappedBuffer:
    """A buffer's planes mapped read-only, once (unmapped on retire, or later if views are still held)."""

    def __init__(self, held: HeldBuffer) -> None:
        self.meta = held.meta
        self._maps: list[npt.NDArray[np.uint8]] = [_Mapping(fd).array() for fd in held.fds]
        self._fds = held.fds

    def plane(self, index: int = 0, bytes_per_pixel: int = 4) -> npt.NDArray[np.uint8]:
        """(height, width, bytes_per_pixel) view of a plane (rows ``pitch`` apart)."""
        p = self.meta.planes[index]
        raw = self._maps[p.fd_index]
        need = p.offset + p.pitch * (self.meta.height - 1) + self.meta.width * bytes_per_pixel
        if raw.size < need:
            raise ConsumerProtocolError(f"buffer {self.meta.buffer_id}: {raw.size} bytes, its layout needs {need}")
        return np.lib.stride_tricks.as_strided(raw[p.offset:], (self.meta.height, self.meta.width, bytes_per_pixel),
                                               (p.pitch, bytes_per_pixel, 1), writeable=False)

    @contextlib.contextmanager
    def reading(self) -> Iterator[MappedBuffer]:
        """DMA_BUF_IOCTL_SYNC around CPU reads (skipped for fds that are not dma-bufs, e.g. test memfds)."""
        synced = [fd for fd in self._fds if _sync(fd, _SYNC_START_READ)]
        try:
            yield self
        finally:
            for fd in synced:
                _sync(fd, _SYNC_END_READ)

    def close(self) -> None:
        self._maps = []  # munmap(2) once no view of a mapping is left


def _sync(fd: int, flags: int) -> bool:
    try:
        fcntl.ioctl(fd, _DMA_BUF_IOCTL_SYNC, struct.pack("<Q", flags))
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            return False
        raise
    return True


@dataclass(frozen=True, slots=True)
class ConsumerFrame:
    """One FRAME with the buffer it names."""

    event: FrameEvent
    buffer: ClientBuffer
    received_ns: int  # CLOCK_MONOTONIC when the library read it

    @property
    def damage(self) -> tuple[Rect, ...] | None:
        """What changed since the previous frame, in view coordinates; None: everything."""
        return None if self.event.flags & FrameFlags.FULL_DAMAGE else self.event.damage

    def pixels(self) -> npt.NDArray[np.uint8]:
        """The visible picture: (h, w, 4) view of plane 0 of a 32-bit-per-pixel buffer (no copy)."""
        x, y, w, h = self.event.view
        return self.buffer.mapped().plane(0, 4)[y:y + h, x:x + w]

    def checksum(self) -> int:
        """CRC-32 (zlib) of the visible picture's rows, width x 4 bytes each: what the C client prints."""
        mapped = self.buffer.mapped()
        with mapped.reading():
            return zlib.crc32(np.ascontiguousarray(self.pixels()).tobytes())


class ClientBuffer:
    """A buffer the consumer holds: metadata, its dma-buf fds (for EGL), a lazy read-only mapping."""

    def __init__(self, held: HeldBuffer) -> None:
        self.held = held
        self._mapped: MappedBuffer | None = None

    @property
    def meta(self) -> Buffer:
        return self.held.meta

    @property
    def fds(self) -> tuple[int, ...]:
        return self.held.fds

    def mapped(self) -> MappedBuffer:
        if self._mapped is None:
            self._mapped = MappedBuffer(self.held)
        return self._mapped

    def release(self) -> None:
        if self._mapped is not None:
            self._mapped.close()
            self._mapped = None


class Consumer:
    """A connection to a consumer socket. Not thread-safe; close it (or use ``with``)."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self.sock = sock
        self.path = path
        self.state = ClientState()
        self.buffers: dict[int, ClientBuffer] = {}
        self.frames_received = 0

    @classmethod
    def connect(cls, name: str = "XR-0", *, timeout: float = 10.0) -> Consumer:
        """Connect to ``name``'s socket (see :func:`find_socket`) and read its HELLO."""
        path = find_socket(name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(str(path))
        except PermissionError:
            sock.close()
            raise PermissionDeniedError(f"not allowed to connect to {path}",
                                        hint="the socket's group and mode decide; ask to be added to its group") from None
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            raise UsageError(f"nobody serves {path}", hint="start `vkmsremote up`") from None
        consumer = cls(sock, path)
        try:
            message = consumer._next(timeout)
            if isinstance(message, Bye):
                raise ConsumerProtocolError(f"the server refused: {message.reason.name.lower()}: {message.text}")
            if not isinstance(message, Hello):
                raise ConsumerProtocolError(f"the server opened with {message.TYPE.name}, not HELLO")
        except BaseException:
            consumer.close()
            raise
        return consumer

    @property
    def hello(self) -> Hello:
        assert self.state.hello is not None
        return self.state.hello

    @property
    def mode(self) -> Mode:
        assert self.state.mode is not None
        return self.state.mode

    def fileno(self) -> int:
        """Poll this for readability (event loops); then call :meth:`poll`."""
        return self.sock.fileno()

    def events(self, timeout: float | None = None) -> Iterator[Message | ConsumerFrame]:
        """Every message; FRAMEs as :class:`ConsumerFrame`. Ends at BYE (raises on a dropped connection)."""
        while not self.state.closed:
            message = self._next(timeout)
            if isinstance(message, FrameEvent):
                yield self._frame(message)
            else:
                yield message

    def frames(self, timeout: float | None = None) -> Iterator[ConsumerFrame]:
        for item in self.events(timeout):
            if isinstance(item, ConsumerFrame):
                yield item

    def poll(self) -> list[Message | ConsumerFrame]:
        """What can be read now without waiting."""
        out: list[Message | ConsumerFrame] = []
        while not self.state.closed and select.select([self.sock], [], [], 0)[0]:
            message = self._next(0)
            out.append(self._frame(message) if isinstance(message, FrameEvent) else message)
        return out

    def open_fds(self) -> int:
        """How many buffer fds this consumer holds now."""
        return sum(len(b.fds) for b in self.buffers.values())

    def close(self) -> None:
        for b in self.buffers.values():
            b.release()
            _close_all(b.fds)
        self.buffers.clear()
        self.state.buffers.clear()
        self.sock.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------------------------------------

    def _frame(self, event: FrameEvent) -> ConsumerFrame:
        self.frames_received += 1
        return ConsumerFrame(event, self.buffers[event.buffer_id], time.monotonic_ns())

    def _next(self, timeout: float | None) -> Message:
        if timeout is not None and not select.select([self.sock], [], [], timeout)[0]:
            raise TimeoutError_(f"nothing from {self.path} within {timeout} s")
        data, fds, flags, _ = socket.recv_fds(self.sock, MAX_PACKET + 1, MAX_PLANES)
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise ConsumerProtocolError("a packet or its fds were truncated")
            got = self.state.receive(data, fds)
        except BaseException:
            _close_all(fds)
            raise
        message = got.message
        if got.buffer is not None and isinstance(message, Buffer):
            self.buffers[message.buffer_id] = ClientBuffer(got.buffer)
        elif got.release:
            if isinstance(message, Bye):
                for b in self.buffers.values():
                    b.release()
                self.buffers.clear()
            else:
                gone = self.buffers.pop(getattr(message, "buffer_id", -1), None)
                if gone is not None:
                    gone.release()
            _close_all(got.release)
        return message


def _close_all(fds: tuple[int, ...] | list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)

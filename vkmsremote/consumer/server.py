"""The consumer socket server: fans the scanout of one connector out to local consumers.

Theory of operation:
- :func:`bind_socket` makes the listening ``SOCK_SEQPACKET`` socket at a path (as root, before the
  server gives up its privileges): created under a umask that leaves it unreachable, then given its
  group and mode. Who may connect is decided by the kernel from that owner, group and mode (connect(2)
  needs write permission on the socket file); the server logs each consumer's SO_PEERCRED.
- :class:`ConsumerServer` keeps the state a new consumer needs (the mode, the buffers live now, the last
  FRAME) and is fed by a producer (vkmsremote.consumer.tap, or a test) through :meth:`set_mode`,
  :meth:`add_buffer`, :meth:`frame` and :meth:`retire`. A consumer gets HELLO, MODE, every live BUFFER
  (with its fds, once) and the last FRAME (full damage) on connect, then every message as it happens.
- Sends never block: the sockets are non-blocking, and a consumer whose socket buffer is full (it stopped
  reading) is dropped at once (BYE is not even tried: there is no room), so a stuck consumer cannot slow
  the VNC path or the other consumers. ``send_buffer`` bounds how far a consumer may fall behind.
- At most ``max_consumers`` at once; one more is told BYE(TOO_MANY) and closed. A consumer that sends
  anything (version 1 consumers send nothing) is told BYE(PROTOCOL) and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vkmsremote.consumer.options import DEFAULT_GROUP, DEFAULT_MAX_CONSUMERS, DEFAULT_MODE
from vkmsremote.consumer.protocol import (
    MAX_BUFFERS,
    MAX_RECTS,
    Buffer,
    Bye,
    ByeReason,
    FrameEvent,
    FrameFlags,
    Hello,
    Message,
    Mode,
    Rect,
    Retire,
    encode,
)
from vkmsremote.errors import PermissionDeniedError, UsageError

log = logging.getLogger(__name__)

DEFAULT_SEND_BUFFER = 256 * 1024
"""SO_SNDBUF of each consumer socket: about a thousand small FRAME packets, many seconds of flips."""
LISTEN_BACKLOG = 16
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int

    @classmethod
    def of(cls, sock: socket.socket) -> Peer:
        return cls(*_UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)))


def bind_socket(path: Path, *, group: str | int | None = DEFAULT_GROUP, mode: int = DEFAULT_MODE) -> socket.socket:
    """A listening SOCK_SEQPACKET socket at ``path`` with that group and mode (``group`` None: the
    process's own). A stale socket file at ``path`` (nobody listening) is replaced; a live one is not."""
    if mode & ~0o777:
        raise UsageError(f"consumer socket mode {mode:o} is not a permission mode")
    gid = -1
    if group is not None:
        try:
            gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
        except KeyError:
            raise UsageError(f"group {group!r} does not exist", hint="choose another --consumer-group") from None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if path.is_socket() or path.exists():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise UsageError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            probe.connect(str(path))
            raise UsageError(f"{path}: another server is listening there", hint="stop it first")
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # stale: its server is gone
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    old_umask = os.umask(0o177)  # the file is born 0600: nobody else can connect before chown/chmod
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise PermissionDeniedError(f"cannot make the consumer socket {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    try:
        if gid != -1:
            os.chown(path, -1, gid)
        os.chmod(path, mode)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        path.unlink(missing_ok=True)
        raise
    return sock


@dataclass(slots=True)
class _LiveBuffer:
    meta: Buffer
    fds: tuple[int, ...]


@dataclass(slots=True)
class Consumer:
    """One connected consumer, as the server sees it."""

    sock: socket.socket
    peer: Peer
    connected: float = field(default_factory=time.monotonic)
    buffers: set[int] = field(default_factory=set)
    sent: int = 0
    frames: int = 0


class ConsumerServer:
    """Serves consumers on ``listener`` (from :func:`bind_socket`). All methods run on the event loop."""

    def __init__(self, listener: socket.socket, hello: Hello, *, max_consumers: int = DEFAULT_MAX_CONSUMERS,
                 send_buffer: int = DEFAULT_SEND_BUFFER, path: Path | None = None) -> None:
        if max_consumers < 1:
            raise UsageError("the consumer cap must be at least 1")
        self.listener = listener
        self.listener.setblocking(False)
        self.hello = hello
        self.path = path
        self.max_consumers = max_consumers
        self.send_buffer = send_buffer
        self.mode: Mode = hello.mode
        self.consumers: list[Consumer] = []
        self._buffers: dict[int, _LiveBuffer] = {}
        self._last_frame: FrameEvent | None = None
        self._serial = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.watched = asyncio.Event()
        """Set while at least one consumer is connected (the producer may sleep otherwise)."""
        self.on_connect: Callable[[Consumer], None] | None = None
        self.accepted = 0
        self.refused = 0
        self.dropped_slow = 0

    # --- life cycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.listener.fileno(), self._accept)

    async def close(self, reason: ByeReason = ByeReason.SHUTDOWN, text: str = "the server stops") -> None:
        if self._loop is not None and self.listener.fileno() >= 0:
            self._loop.remove_reader(self.listener.fileno())
        for c in list(self.consumers):
            self._say_bye(c, reason, text)
        self.listener.close()
        if self.path is not None:
            with contextlib.suppress(OSError):  # after the privilege drop /run/vkmsremote may be read-only to us
                self.path.unlink()
        for live in self._buffers.values():
            _close_fds(live.fds)
        self._buffers.clear()

    # --- the producer's side ----------------------------------------------------------------------------

    def set_mode(self, mode: Mode) -> None:
        if mode == self.mode:
            return
        self.mode = mode
        if not mode.active:
            self._last_frame = None
        self._broadcast(mode)

    def add_buffer(self, meta: Buffer, fds: tuple[int, ...]) -> None:
        """A buffer that FRAMEs may name from now on; the server owns ``fds`` (closed on retire)."""
        if meta.buffer_id in self._buffers:
            raise ValueError(f"buffer {meta.buffer_id} is already live")
        if len(fds) != meta.n_fds:
            raise ValueError(f"buffer {meta.buffer_id}: {len(fds)} fds for {meta.n_fds}")
        if len(self._buffers) >= MAX_BUFFERS:
            raise ValueError(f"more than {MAX_BUFFERS} live buffers")
        self._buffers[meta.buffer_id] = _LiveBuffer(meta, fds)
        # Sent to consumers lazily, with the first FRAME that names it (a buffer nobody shows costs nothing).

    def retire(self, buffer_id: int) -> None:
        live = self._buffers.pop(buffer_id, None)
        if live is None:
            return
        if self._last_frame is not None and self._last_frame.buffer_id == buffer_id:
            self._last_frame = None
        for c in list(self.consumers):
            if buffer_id in c.buffers:
                c.buffers.discard(buffer_id)
                self._send(c, Retire(buffer_id))
        _close_fds(live.fds)

    def frame(self, buffer_id: int, view: tuple[int, int, int, int], damage: tuple[Rect, ...] | None, *,
              new_buffer: bool, vblank_seq: int = 0, vblank_ns: int = 0) -> FrameEvent:
        """Tell every consumer the CRTC shows ``buffer_id`` with ``damage`` (None: everything) changed."""
        if buffer_id not in self._buffers:
            raise ValueError(f"FRAME names buffer {buffer_id}, which is not live")
        flags = FrameFlags.NEW_BUFFER if new_buffer else FrameFlags.NONE
        if damage is None:
            flags |= FrameFlags.FULL_DAMAGE
            damage = ()
        elif len(damage) > MAX_RECTS:
            damage = (_bounding_box(damage),)
        self._serial += 1
        event = FrameEvent(buffer_id, flags, self._serial, vblank_seq, vblank_ns or time.monotonic_ns(), 0,
                           view, damage)
        self._last_frame = event
        for c in list(self.consumers):
            self._send_frame(c, event)
        return event

    # --- consumers --------------------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("consumer socket: accept failed: %s", exc.strerror or exc)
                return
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            peer = Peer.of(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        except OSError:
            sock.close()
            return
        if len(self.consumers) >= self.max_consumers:
            self.refused += 1
            log.warning("consumer pid %d uid %d gid %d refused: %d consumers already", peer.pid, peer.uid, peer.gid,
                        len(self.consumers))
            with contextlib.suppress(OSError):
                sock.send(encode(Bye(ByeReason.TOO_MANY, f"at most {self.max_consumers} consumers")))
            sock.close()
            return
        consumer = Consumer(sock, peer)
        self.consumers.append(consumer)
        self.accepted += 1
        self.watched.set()
        log.info("consumer pid %d uid %d gid %d connected to %s", peer.pid, peer.uid, peer.gid, self.hello.name)
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._on_readable, consumer)
        hello = Hello(self.hello.name, self.hello.card, self.hello.connector, self.hello.connector_id,
                      self.hello.crtc_id, self.hello.server_pid, self.mode)
        if self._send(consumer, hello) and self._last_frame is not None:
            last = self._last_frame
            self._send_frame(consumer, FrameEvent(last.buffer_id, last.flags | FrameFlags.FULL_DAMAGE, last.serial,
                                                  last.vblank_seq, last.vblank_ns, 0, last.view, ()))
        if self.on_connect is not None and consumer in self.consumers:
            self.on_connect(consumer)

    def _on_readable(self, consumer: Consumer) -> None:
        try:
            data = consumer.sock.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self._say_bye(consumer, ByeReason.PROTOCOL, "version 1 consumers send nothing")
        else:
            self._drop(consumer, "disconnected")

    def _send_frame(self, c: Consumer, event: FrameEvent) -> None:
        if event.buffer_id not in c.buffers:
            live = self._buffers[event.buffer_id]
            if not self._send(c, live.meta, live.fds):
                return
            c.buffers.add(event.buffer_id)
        if self._send(c, FrameEvent(event.buffer_id, event.flags, event.serial, event.vblank_seq, event.vblank_ns,
                                    time.monotonic_ns(), event.view, event.damage)):
            c.frames += 1

    def _send(self, c: Consumer, message: Message, fds: tuple[int, ...] = ()) -> bool:
        """Send without blocking; a consumer that cannot take it now is dropped. Whether it was sent."""
        packet = encode(message)
        try:
            if fds:
                socket.send_fds(c.sock, [packet], list(fds))
            else:
                c.sock.send(packet)
        except (BlockingIOError, InterruptedError):
            self.dropped_slow += 1
            self._drop(c, "too slow: it stopped reading and its socket buffer is full")
            return False
        except OSError as exc:
            self._drop(c, f"gone ({exc.strerror or exc})")
            return False
        c.sent += 1
        return True

    def _broadcast(self, message: Message) -> None:
        for c in list(self.consumers):
            self._send(c, message)

    def _say_bye(self, c: Consumer, reason: ByeReason, text: str) -> None:
        with contextlib.suppress(OSError):
            c.sock.send(encode(Bye(reason, text)))
        self._drop(c, f"BYE {reason.name.lower()}: {text}")

    def _drop(self, c: Consumer, why: str) -> None:
        if c not in self.consumers:
            return
        self.consumers.remove(c)
        if self._loop is not None and c.sock.fileno() >= 0:
            self._loop.remove_reader(c.sock.fileno())
        c.sock.close()
        log.info("consumer pid %d uid %d left (%s) after %d frames", c.peer.pid, c.peer.uid, why, c.frames)
        if not self.consumers:
            self.watched.clear()


def _bounding_box(rects: tuple[Rect, ...]) -> Rect:
    x0, y0 = min(r.x for r in rects), min(r.y for r in rects)
    x1, y1 = max(r.x + r.w for r in rects), max(r.y + r.h for r in rects)
    return Rect(x0, y0, x1 - x0, y1 - y0)


def _close_fds(fds: tuple[int, ...]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)

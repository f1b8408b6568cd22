"""The capture broker: a small privileged process that exports framebuffers to the unprivileged server.

Why: GETFB2 returns buffer handles only to the DRM master or a CAP_SYS_ADMIN process, and a compositor's
framebuffer changes on every page flip, so a server that gave up its privileges could not follow flips
by itself. ``vkmsremote up`` therefore forks this broker *before* it drops privileges. The broker keeps
uid 0 with CAP_SYS_ADMIN only, its own card fd and no network sockets (it is a fresh interpreter, fork +
exec, that inherits only stdio and its end of the socketpair), and answers the server over a UNIX
SOCK_SEQPACKET socketpair:

    server -> broker   Request(EXPORT, seq, fb_id, known identity)
    broker -> server   Reply(seq, fb metadata, identity) + dma-buf fds (SCM_RIGHTS) if not known yet
    server -> broker   Request(WRITEBACK, seq, crtc_id, known identity)        (with --drive only)
    broker -> server   Reply(...) once the writeback fence signalled, + the buffer's fd if not known yet
    server -> broker   Request(RESIZE, seq, width << 16 | height)              (with --drive only)
    broker -> server   Reply(status) once the driven CRTC has the new mode (a client's SetDesktopSize)

Identity = the dma-buf inode of each plane's buffer; the server passes what it already maps, so each
buffer crosses the socket once and is mapped once (capture.fbcache). The broker exports only
framebuffers of the one CRTC it serves: those its planes show now, or ids it exported before that still
name the same buffers (a double-buffered client's other buffer). Every message has a fixed layout and a
sequence number; fds in a request, a reply with the wrong number of fds, a truncated or oversized
message are protocol errors (all received fds are closed). The broker ends when the server closes the
socket (or dies: PR_SET_PDEATHSIG), after stopping what it drove and, with ``--down-on-exit``, removing
the VKMS device (the server cannot: it is no longer root).

With ``--drive pattern`` the broker is also the DRM master that page-flips the test pattern (a thread),
and with ``--capture writeback`` it runs the writeback jobs; driver commits and writeback jobs take turns
under one lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import ClassVar

from vkmsremote.capture.exporter import (
    MAX_PLANES,
    NO_HANDLES,
    ExportedFramebuffer,
    FramebufferExporter,
)
from vkmsremote.drm.card import Card
from vkmsremote.drm.framebuffer import FramebufferInfo
from vkmsremote.drm.resources import Resources, get_plane_state
from vkmsremote.errors import BrokerError, DeviceStateError, DrmError, VkmsRemoteError
from vkmsremote.frame import MAX_RESIZE, ResizeStatus

log = logging.getLogger(__name__)

MAX_FDS = MAX_PLANES
MAX_TEXT = 1024
"""Bytes of error text a reply may carry after its fixed part."""
READY_TIMEOUT = 120.0
"""Seconds the server waits for the broker to be ready (a modeset under TCG can take a while)."""
CALL_TIMEOUT = 30.0
EXIT_TIMEOUT = 60.0
"""Seconds to wait for the broker to end (it may be removing the VKMS device: --down-on-exit)."""
IDENTITY_CACHE = 16


class Op(IntEnum):
    HELLO = 0
    EXPORT = 1
    WRITEBACK = 2
    RESIZE = 3


class Status(IntEnum):
    OK = 0
    DRM_ERROR = 1  # ``error`` holds the errno of the failed ioctl
    REFUSED = 2  # not a framebuffer of the served CRTC (or no writeback here)
    CRTC_OFF = 3  # writeback: the CRTC is off
    FAILED = 4  # anything else; the text says what


@dataclass(frozen=True, slots=True)
class Request:
    """server -> broker. ``known``: the identity of the buffers the server already maps for the object."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<HHII4Q")  # op, n_known, seq, object_id, known[4]
    op: Op
    seq: int
    object_id: int
    known: tuple[int, ...] | None = None

    def to_bytes(self) -> bytes:
        known = self.known or ()
        if len(known) > MAX_PLANES:
            raise ValueError(f"{len(known)} identities (at most {MAX_PLANES})")
        return self.STRUCT.pack(self.op, len(known), self.seq, self.object_id, *known, *(0,) * (MAX_PLANES - len(known)))

    @classmethod
    def from_bytes(cls, data: bytes) -> Request:
        if len(data) != cls.STRUCT.size:
            raise BrokerError(f"broker request of {len(data)} bytes (expected {cls.STRUCT.size})")
        op, n_known, seq, object_id, *known = cls.STRUCT.unpack(data)
        if op not in (Op.EXPORT, Op.WRITEBACK, Op.RESIZE):
            raise BrokerError(f"broker request with unknown operation {op}")
        if n_known > MAX_PLANES:
            raise BrokerError(f"broker request with {n_known} identities (at most {MAX_PLANES})")
        return cls(Op(op), seq, object_id, tuple(known[:n_known]) if n_known else None)


@dataclass(frozen=True, slots=True)
class Reply:
    """broker -> server: a status, and for OK the framebuffer's metadata and identity; ``n_fds`` fds
    travel with it. ``text`` (at most MAX_TEXT bytes of UTF-8) explains a failure."""

    # op, status, seq, n_fds, n_planes, error, fb_id, width, height, format, flags,
    # pitches[4], offsets[4], modifiers[4], identity[4]
    STRUCT: ClassVar[struct.Struct] = struct.Struct("<HHIHHiIIIII4I4I4Q4Q")
    op: Op
    seq: int
    status: Status
    error: int = 0
    info: FramebufferInfo | None = None
    identity: tuple[int, ...] = ()
    n_fds: int = 0
    text: str = ""

    @classmethod
    def ok(cls, op: Op, seq: int, exported: ExportedFramebuffer) -> Reply:
        return cls(op, seq, Status.OK, 0, exported.info, exported.identity, len(exported.fds or ()))

    def to_bytes(self) -> bytes:
        info = self.info
        ident = self.identity
        if len(ident) > MAX_PLANES or self.n_fds > MAX_FDS:
            raise ValueError("too many planes or fds in a broker reply")
        fixed = self.STRUCT.pack(
            self.op, self.status, self.seq, self.n_fds, len(ident), self.error,
            info.fb_id if info else 0, info.width if info else 0, info.height if info else 0,
            info.format if info else 0, info.flags if info else 0,
            *(info.pitches if info else (0,) * 4), *(info.offsets if info else (0,) * 4),
            *(info.modifiers if info else (0,) * 4), *ident, *(0,) * (MAX_PLANES - len(ident)))
        return fixed + self.text.encode()[:MAX_TEXT]

    @classmethod
    def from_bytes(cls, data: bytes) -> Reply:
        size = cls.STRUCT.size
        if not size <= len(data) <= size + MAX_TEXT:
            raise BrokerError(f"broker reply of {len(data)} bytes (expected {size} to {size + MAX_TEXT})")
        v = cls.STRUCT.unpack(data[:size])
        op, status, seq, n_fds, n_planes, error, fb_id, width, height, fmt, flags = v[:11]
        pitches, offsets, modifiers, ident = (tuple(v[11 + 4 * i: 15 + 4 * i]) for i in range(4))
        if op not in Op._value2member_map_ or status not in Status._value2member_map_:
            raise BrokerError(f"broker reply with unknown operation {op} or status {status}")
        if n_fds > MAX_FDS or n_planes > MAX_PLANES:
            raise BrokerError(f"broker reply with {n_fds} fds and {n_planes} planes (at most {MAX_FDS})")
        info = None
        if status == Status.OK and op not in (Op.HELLO, Op.RESIZE):
            info = FramebufferInfo(fb_id, width, height, fmt, flags, NO_HANDLES, pitches, offsets, modifiers)
            if n_planes != info.num_planes or not all(ident[:n_planes]):
                raise BrokerError(f"broker reply for fb {fb_id}: {n_planes} identities for {info.num_planes} planes")
        return cls(Op(op), seq, Status(status), error, info, tuple(ident[:n_planes]), n_fds,
                   data[size:].decode("utf-8", "replace"))


def _close_all(fds: list[int] | tuple[int, ...]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# --- the broker side -----------------------------------------------------------------------------------------


class ScanoutPolicy:
    """Which framebuffers the broker may export: those the planes of ``crtc_id`` show now, or an id it
    exported before that still names the same buffers (the other buffer of a page-flipping client)."""

    def __init__(self, card: Card, crtc_id: int) -> None:
        res = Resources.fetch(card, probe=False)
        res.crtc(crtc_id)
        self.card = card
        self.crtc_id = crtc_id
        self.plane_ids = tuple(p.id for p in res.planes if crtc_id in res.possible_crtc_ids(p))
        self._exported: OrderedDict[int, tuple[int, ...]] = OrderedDict()

    def allows(self, fb_id: int, identity: tuple[int, ...]) -> bool:
        if self._exported.get(fb_id) == identity or self._on_screen(fb_id):
            self._exported[fb_id] = identity
            self._exported.move_to_end(fb_id)
            while len(self._exported) > IDENTITY_CACHE:
                self._exported.popitem(last=False)
            return True
        return False

    def _on_screen(self, fb_id: int) -> bool:
        for plane_id in self.plane_ids:
            state = get_plane_state(self.card, plane_id)
            if state.crtc_id == self.crtc_id and state.fb_id == fb_id:
                return True
        return False


WritebackFn = Callable[[int, "tuple[int, ...] | None"], ExportedFramebuffer]
ResizeFn = Callable[[int, int], "int | None"]
"""(width, height) -> None or 0 when done, else an ExtendedDesktopSize status (1 prohibited: refused)."""


def pack_size(width: int, height: int) -> int:
    """A RESIZE request's object id: the width in the high 16 bits, the height in the low 16."""
    if not (1 <= width <= MAX_RESIZE and 1 <= height <= MAX_RESIZE):
        raise ValueError(f"size {width}x{height} out of range")
    return width << 16 | height


class BrokerServer:
    """Answers requests on ``sock`` until the other side closes it. ``allows(fb_id, identity)`` decides
    what may be exported; ``writeback(crtc_id, known)`` (optional) runs one writeback job."""

    def __init__(self, sock: socket.socket, exporter: FramebufferExporter,
                 allows: Callable[[int, tuple[int, ...]], bool], *, writeback: WritebackFn | None = None,
                 resize: ResizeFn | None = None) -> None:
        self.sock = sock
        self.exporter = exporter
        self.allows = allows
        self.writeback = writeback
        self.resize = resize
        self.failure: str | None = None  # set when something the broker drives failed: every reply says so
        self.requests = 0

    def serve(self) -> None:
        while True:
            try:
                data, fds, flags, _ = socket.recv_fds(self.sock, Request.STRUCT.size + 1, MAX_FDS)
            except ConnectionResetError:
                return  # the server closed its end with a reply unread (it was shutting down)
            _close_all(fds)  # the server has no business sending fds
            if not data:
                return  # the server closed its end
            if fds or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise BrokerError("the server sent fds or an oversized request: closing the broker")
            reply, out = self.handle(Request.from_bytes(data))
            try:
                if out:
                    socket.send_fds(self.sock, [reply.to_bytes()], list(out))
                else:
                    self.sock.send(reply.to_bytes())
            except (BrokenPipeError, ConnectionResetError):
                return  # the server is gone
            finally:
                _close_all(out)

    def handle(self, req: Request) -> tuple[Reply, tuple[int, ...]]:
        """The reply to ``req`` and the fds to send with it (the caller closes them after sending)."""
        self.requests += 1
        if self.failure is not None:
            return Reply(req.op, req.seq, Status.FAILED, text=self.failure), ()
        try:
            if req.op == Op.EXPORT:
                exported = self.exporter.export(req.object_id, req.known)
                if not self.allows(req.object_id, exported.identity):
                    exported.close_fds()
                    return Reply(req.op, req.seq, Status.REFUSED, errno.EACCES,
                                 text=f"fb {req.object_id} is not shown on the served CRTC"), ()
            elif req.op == Op.RESIZE:
                return self._resize(req), ()
            else:
                if self.writeback is None:
                    return Reply(req.op, req.seq, Status.REFUSED, errno.EACCES,
                                 text="this broker does no writeback (it needs --drive)"), ()
                exported = self.writeback(req.object_id, req.known)
        except DrmError as exc:
            return Reply(req.op, req.seq, Status.DRM_ERROR, exc.errno, text=str(exc)), ()
        except DeviceStateError as exc:
            return Reply(req.op, req.seq, Status.CRTC_OFF, errno.ENODEV, text=str(exc)), ()
        except VkmsRemoteError as exc:
            return Reply(req.op, req.seq, Status.FAILED, errno.EIO, text=str(exc)), ()
        return Reply.ok(req.op, req.seq, exported), exported.fds or ()

    def _resize(self, req: Request) -> Reply:
        width, height = req.object_id >> 16, req.object_id & 0xFFFF
        if self.resize is None:
            return Reply(req.op, req.seq, Status.REFUSED, errno.EPERM,
                         text="a compositor is DRM master, not vkmsremote: it sets the mode (serve with --drive)")
        if not (1 <= width <= MAX_RESIZE and 1 <= height <= MAX_RESIZE):
            return Reply(req.op, req.seq, Status.REFUSED, errno.EINVAL, text=f"size {width}x{height} out of range")
        status = self.resize(width, height)
        if status == ResizeStatus.PROHIBITED:
            return Reply(req.op, req.seq, Status.REFUSED, errno.EPERM,
                         text="the compositor that is DRM master cannot be asked (the broker's log says why)")
        if status:
            return Reply(req.op, req.seq, Status.FAILED, errno.EIO, text=f"resize failed (status {status})")
        return Reply(req.op, req.seq, Status.OK)


# --- the broker process ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerSpec:
    """What the broker process does. ``drive_connector`` (a DRM connector name) makes it DRM master and
    page-flip the test pattern there; ``writeback`` (needs that) makes it answer WRITEBACK requests."""

    card_path: str
    crtc_id: int
    drive_connector: str | None = None
    drive_size: tuple[int, int] | None = None
    drive_refresh: float | None = None
    """Hz of the driven mode (a size or rate VKMS does not list gets a CVT reduced-blanking mode)."""
    drive_fps: float | None = None
    writeback: bool = False
    restrict: bool = True
    """Keep only CAP_SYS_ADMIN and set no_new_privs (when started as root)."""
    down_on_exit: str | None = None
    """VKMS device name to remove (``vkmsremote down``) when the broker ends."""
    resize_output: str | None = None
    """Without ``drive_connector``: the served output's DRM name; a client's resize is then passed to the
    compositor that is DRM master (vkmsremote.desktop.resize, wired by vkmsremote.service.broker)."""

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> BrokerSpec:
        size = doc.get("drive_size")
        return cls(**{**doc, "drive_size": tuple(size) if isinstance(size, list) else size})  # type: ignore[arg-type]


class Broker:
    """The broker's resources (card, scanout policy, pattern driver, writeback), made in the broker process."""

    def __init__(self, spec: BrokerSpec) -> None:
        from vkmsremote.capture.driver import PatternDriver
        from vkmsremote.capture.writeback import LocalWritebackExporter, WritebackCapture

        self.spec = spec
        self.lock = threading.Lock()  # driver commits and writeback jobs take turns
        self.stop = threading.Event()
        self.driver: PatternDriver | None = None
        self.thread: threading.Thread | None = None
        self.server: BrokerServer | None = None
        if spec.writeback and spec.drive_connector is None:
            raise BrokerError("writeback capture needs vkmsremote to drive the CRTC (--drive)")
        self.card = Card.open(spec.card_path)
        try:
            self.policy = ScanoutPolicy(self.card, spec.crtc_id)
            wb_fn: WritebackFn | None = None
            if spec.drive_connector is not None:
                self.driver = PatternDriver.open(spec.card_path, connector=spec.drive_connector, size=spec.drive_size,
                                                 refresh=spec.drive_refresh,
                                                 writeback=spec.writeback, buffers=3)
                if self.driver.crtc_id != spec.crtc_id:
                    raise BrokerError(f"{spec.drive_connector} is driven through CRTC {self.driver.crtc_id}, "
                                      f"not the served CRTC {spec.crtc_id}")
                self.driver.start()
                if spec.writeback:
                    wb = LocalWritebackExporter(WritebackCapture(self.driver.card, spec.crtc_id))

                    def one_writeback(crtc_id: int, known: tuple[int, ...] | None) -> ExportedFramebuffer:
                        with self.lock:
                            return wb.writeback_sync(crtc_id, known)

                    wb_fn = one_writeback
            self.wb_fn = wb_fn
            self.resize_fn: ResizeFn | None = self._resize if self.driver is not None else None
        except BaseException:
            self.close()
            raise

    def _resize(self, width: int, height: int) -> None:
        """A client's SetDesktopSize: the driven CRTC gets a mode of that size at the rate it runs at."""
        from vkmsremote.capture.driver import pick_mode

        driver = self.driver
        assert driver is not None
        rate = self.spec.drive_refresh or float(round(driver.mode.refresh))
        with self.lock:
            mode = pick_mode(driver.connector, (width, height), rate)
            driver.set_mode(mode)
        log.info("capture broker: %s now %s (a client asked for %dx%d)", driver.connector.name, mode, width, height)

    def start_driving(self) -> None:
        if self.driver is not None:
            self.thread = threading.Thread(target=self._drive, name="vkmsremote-driver", daemon=True)
            self.thread.start()

    def _drive(self) -> None:
        driver = self.driver
        assert driver is not None
        period = 1.0 / self.spec.drive_fps if self.spec.drive_fps else 0.0
        next_time = time.monotonic()
        try:
            while not self.stop.is_set():
                with self.lock:
                    driver.step()  # draw the next frame and flip to it (returns after the flip)
                if period:
                    next_time += period
                    delay = next_time - time.monotonic()
                    if delay > 0:
                        self.stop.wait(delay)
                    else:
                        next_time = time.monotonic()
        except BaseException as exc:
            log.error("capture broker: driving the pattern failed: %s", exc)
            if self.server is not None:
                self.server.failure = f"the pattern driver failed: {exc}"

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)
        if self.driver is not None:
            try:
                self.driver.close()  # the CRTC goes dark, our buffers are freed, master goes with the fd
            except VkmsRemoteError as exc:
                log.warning("capture broker: turning the CRTC off failed: %s", exc)
            self.driver = None
        self.card.close()


def send_hello(sock: socket.socket, error: str | None) -> None:
    """The broker's first message: ready, or why it could not start (the process side: service.broker)."""
    reply = Reply(Op.HELLO, 0, Status.FAILED if error else Status.OK, text=error or "")
    sock.send(reply.to_bytes())


# --- the server side ------------------------------------------------------------------------------------------


class BrokerClient:
    """The server's end: a FramebufferExporter (and WritebackExporter) that asks the broker.

    Calls are strictly one at a time (a second call while one waits is a programming error)."""

    def __init__(self, sock: socket.socket, process: subprocess.Popen[bytes] | None = None, *,
                 timeout: float = CALL_TIMEOUT) -> None:
        self.sock = sock
        self.process = process
        self.timeout = timeout
        self.sock.settimeout(timeout)
        self._seq = 0
        self._busy = False
        self.calls = 0
        self.fds_received = 0
        self.exit_status: int | None = None
        self._fds: tuple[int, ...] = ()

    def fileno(self) -> int:
        return self.sock.fileno()

    # --- FramebufferExporter / WritebackExporter -------------------------------------------------------------

    def export(self, fb_id: int, known: tuple[int, ...] | None = None) -> ExportedFramebuffer:
        req = Request(Op.EXPORT, self._next_seq(), fb_id, known)
        return self._result(req, self._call(req))

    async def writeback(self, crtc_id: int, known: tuple[int, ...] | None = None) -> ExportedFramebuffer:
        req = Request(Op.WRITEBACK, self._next_seq(), crtc_id, known)
        self._enter()
        try:
            try:
                self.sock.send(req.to_bytes())
            except OSError as exc:
                raise BrokerError(f"talking to the capture broker failed: {exc.strerror or exc}") from None
            loop = asyncio.get_running_loop()
            readable: asyncio.Future[None] = loop.create_future()

            def on_readable() -> None:
                if not readable.done():
                    readable.set_result(None)

            loop.add_reader(self.sock.fileno(), on_readable)
            try:
                async with asyncio.timeout(self.timeout):  # not wait_for: it can swallow a cancellation (< 3.12)
                    await readable
            except TimeoutError:
                raise BrokerError(f"the capture broker did not answer within {self.timeout:.0f} s") from None
            finally:
                loop.remove_reader(self.sock.fileno())
            reply = self._receive(req)
        finally:
            self._busy = False
        return self._result(req, reply)

    def resize(self, width: int, height: int) -> ResizeStatus:
        """Ask the broker to give the driven CRTC a ``width`` x ``height`` mode (blocks until it is set)."""
        try:
            req = Request(Op.RESIZE, self._next_seq(), pack_size(width, height))
        except ValueError:
            return ResizeStatus.INVALID
        try:
            reply = self._call(req)
        except BrokerError as exc:
            log.warning("resize to %dx%d: %s", width, height, exc)
            return ResizeStatus.OUT_OF_RESOURCES
        self._result_fds_none()
        if reply.status == Status.OK:
            return ResizeStatus.OK
        log.warning("resize to %dx%d refused by the capture broker: %s", width, height, reply.text)
        if reply.status == Status.REFUSED:
            return ResizeStatus.PROHIBITED if reply.error == errno.EPERM else ResizeStatus.INVALID
        if reply.status == Status.DRM_ERROR and reply.error in (errno.EINVAL, errno.ERANGE):
            return ResizeStatus.INVALID  # the kernel refused the mode
        return ResizeStatus.OUT_OF_RESOURCES

    def _result_fds_none(self) -> None:
        fds, self._fds = self._fds, ()
        _close_all(fds)  # a RESIZE reply carries none (checked in _receive); never keep any

    def close(self) -> None:
        """Close the socket (the broker then stops) and wait for the broker process to end."""
        if self.sock.fileno() >= 0:
            self.sock.close()
        if self.process is not None:
            try:
                self.exit_status = self.process.wait(EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("the capture broker (pid %d) did not exit within %.0f s", self.process.pid, EXIT_TIMEOUT)
            self.process = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    # --- plumbing -------------------------------------------------------------------------------------------

    def wait_ready(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            reply = self._receive(None)
        finally:
            self.sock.settimeout(self.timeout)
        if reply.op != Op.HELLO:
            raise BrokerError(f"the capture broker greeted with {reply.op.name}, not HELLO")
        if reply.status != Status.OK:
            raise BrokerError(f"the capture broker could not start: {reply.text}")

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _enter(self) -> None:
        if self._busy:
            raise BrokerError("a second call to the capture broker while one is under way")
        self._busy = True
        self.calls += 1

    def _call(self, req: Request) -> Reply:
        self._enter()
        try:
            self.sock.send(req.to_bytes())
            return self._receive(req)
        except OSError as exc:
            raise BrokerError(f"talking to the capture broker failed: {exc.strerror or exc}") from None
        finally:
            self._busy = False

    def _receive(self, req: Request | None) -> Reply:
        try:
            data, fds, flags, _ = socket.recv_fds(self.sock, Reply.STRUCT.size + MAX_TEXT + 1, MAX_FDS)
        except TimeoutError:
            raise BrokerError(f"the capture broker did not answer within {self.sock.gettimeout():.0f} s") from None
        except OSError as exc:
            raise BrokerError(f"reading from the capture broker failed: {exc.strerror or exc}") from None
        try:
            if not data:
                raise BrokerError("the capture broker exited", hint="its log lines above say why")
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise BrokerError("truncated message from the capture broker")
            reply = Reply.from_bytes(data)
            if req is not None and (reply.op, reply.seq) != (req.op, req.seq):
                raise BrokerError(f"the capture broker answered {reply.op.name} #{reply.seq} "
                                  f"to {req.op.name} #{req.seq}")
            if len(fds) != reply.n_fds or (reply.status != Status.OK and fds):
                raise BrokerError(f"the capture broker sent {len(fds)} fds with a reply announcing {reply.n_fds}")
        except BaseException:
            _close_all(fds)
            raise
        self._fds = tuple(fds)
        self.fds_received += len(fds)
        return reply

    def _result(self, req: Request, reply: Reply) -> ExportedFramebuffer:
        fds, self._fds = self._fds, ()
        if reply.status == Status.OK:
            assert reply.info is not None
            try:
                return ExportedFramebuffer(reply.info, reply.identity, fds if reply.n_fds else None)
            except ValueError as exc:
                _close_all(fds)
                raise BrokerError(f"the capture broker sent an inconsistent reply: {exc}") from None
        if reply.status in (Status.DRM_ERROR, Status.REFUSED):
            raise DrmError(f"capture broker: {reply.op.name.lower()}", reply.error or errno.EIO,
                           object_id=req.object_id, hint=reply.text)
        if reply.status == Status.CRTC_OFF:
            raise DeviceStateError(reply.text or "the CRTC is off")
        raise BrokerError(f"the capture broker failed: {reply.text}")

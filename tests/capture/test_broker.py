"""The capture broker's protocol on the host: a real SOCK_SEQPACKET socketpair, real fd passing
(SCM_RIGHTS), memfds standing in for dma-bufs (both are files whose inode names the buffer), the real
FramebufferCache and mapping code on the server side. No DRM is involved: the broker's exporter is a
stand-in; the DRM side is tested in tests/vm/test_serve_vm.py.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from vkmsremote.capture.broker import (
    MAX_TEXT,
    BrokerClient,
    BrokerServer,
    BrokerSpec,
    Op,
    Reply,
    Request,
    Status,
)
from vkmsremote.capture.exporter import ExportedFramebuffer, map_exported
from vkmsremote.capture.fbcache import FramebufferCache
from vkmsremote.drm.fourcc import DrmFormat
from vkmsremote.drm.framebuffer import FramebufferInfo
from vkmsremote.errors import BrokerError, DeviceStateError, DrmError
from vkmsremote.service.broker import start_broker

W, H = 64, 16
PITCH = W * 4


def open_fds() -> set[int]:
    """This process's open fds (not counting the one listing /proc/self/fd, closed by then)."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue
        out.add(int(name))
    return out


def memfd(content: bytes) -> int:
    fd = os.memfd_create("fake-dmabuf", os.MFD_CLOEXEC)
    os.write(fd, content)
    return fd


def info(fb_id: int) -> FramebufferInfo:
    return FramebufferInfo(fb_id, W, H, DrmFormat.XRGB8888, 0, (0, 0, 0, 0), (PITCH, 0, 0, 0), (0, 0, 0, 0),
                           (0, 0, 0, 0))


class FakeExporter:
    """fb id -> a memfd; exports dup it (like PRIME: the same buffer, the same inode, every time)."""

    def __init__(self) -> None:
        self.buffers: dict[int, int] = {}
        self.exports = 0

    def set(self, fb_id: int, fill: int) -> None:
        if fb_id in self.buffers:
            os.close(self.buffers[fb_id])
        self.buffers[fb_id] = memfd(bytes([fill]) * (PITCH * H))

    def export(self, fb_id: int, known: tuple[int, ...] | None = None) -> ExportedFramebuffer:
        self.exports += 1
        if fb_id not in self.buffers:
            raise DrmError("DRM_IOCTL_MODE_GETFB2", errno.ENOENT, object_id=fb_id)
        fd = os.dup(self.buffers[fb_id])
        identity = (os.fstat(fd).st_ino,)
        if known == identity:
            os.close(fd)
            return ExportedFramebuffer(info(fb_id), identity, None)
        return ExportedFramebuffer(info(fb_id), identity, (fd,))

    def close(self) -> None:
        for fd in self.buffers.values():
            os.close(fd)
        self.buffers.clear()


@dataclass
class Pair:
    client: BrokerClient
    server: BrokerServer
    exporter: FakeExporter
    thread: threading.Thread
    errors: list[BaseException]


@pytest.fixture
def pair() -> Iterator[Pair]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    exporter = FakeExporter()
    allowed = {1, 2, 3}

    def wb(crtc_id: int, known: tuple[int, ...] | None) -> ExportedFramebuffer:
        if crtc_id != 7:
            raise DeviceStateError(f"CRTC {crtc_id} is off: nothing to write back")
        return exporter.export(3, known)

    server = BrokerServer(b, exporter, lambda fb, ident: fb in allowed, writeback=wb)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.serve()
        except BaseException as exc:
            errors.append(exc)
        finally:
            b.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    client = BrokerClient(a, timeout=5)
    yield Pair(client, server, exporter, thread, errors)
    client.close()
    thread.join(5)
    exporter.close()


def test_request_and_reply_layouts() -> None:
    req = Request(Op.EXPORT, 9, 42, (11, 12))
    data = req.to_bytes()
    # op 1, two identities, seq 9, fb 42, then four u64 identity slots (unused ones zero)
    assert data == struct.pack("<HHII4Q", 1, 2, 9, 42, 11, 12, 0, 0)
    assert Request.from_bytes(data) == req
    assert Request.from_bytes(Request(Op.WRITEBACK, 1, 5).to_bytes()).known is None
    with pytest.raises(BrokerError, match="bytes"):
        Request.from_bytes(data[:-1])
    with pytest.raises(BrokerError, match="unknown operation"):
        Request.from_bytes(struct.pack("<HHII4Q", 0, 0, 1, 1, 0, 0, 0, 0))  # HELLO is not a request
    with pytest.raises(BrokerError, match="identities"):
        Request.from_bytes(struct.pack("<HHII4Q", 1, 5, 1, 1, 0, 0, 0, 0))

    exported = ExportedFramebuffer(info(42), (77,), None)
    reply = Reply.ok(Op.EXPORT, 9, exported)
    back = Reply.from_bytes(reply.to_bytes())
    assert back == reply and back.info == info(42) and back.identity == (77,) and back.n_fds == 0
    failed = Reply(Op.EXPORT, 3, Status.FAILED, errno.EIO, text="x" * (MAX_TEXT + 50))
    assert Reply.from_bytes(failed.to_bytes()).text == "x" * MAX_TEXT  # capped
    with pytest.raises(BrokerError, match="bytes"):
        Reply.from_bytes(reply.to_bytes()[:20])
    with pytest.raises(BrokerError, match="bytes"):
        Reply.from_bytes(reply.to_bytes() + b"y" * (MAX_TEXT + 1))
    bad_planes = bytearray(reply.to_bytes())
    struct.pack_into("<H", bad_planes, 10, 2)  # n_planes 2 for a one-plane XRGB8888 fb
    with pytest.raises(BrokerError, match="identities for 1 planes"):
        Reply.from_bytes(bytes(bad_planes))
    too_many = bytearray(reply.to_bytes())
    struct.pack_into("<H", too_many, 8, 9)  # n_fds 9
    with pytest.raises(BrokerError, match="9 fds"):
        Reply.from_bytes(bytes(too_many))


def test_each_buffer_crosses_the_socket_once(pair: Pair) -> None:
    pair.exporter.set(1, 0x11)
    pair.exporter.set(2, 0x22)
    cache = FramebufferCache(pair.client)
    try:
        for _ in range(5):  # a page-flipping client: 1, 2, 1, 2, ...
            for fb, fill in ((1, 0x11), (2, 0x22)):
                entry = cache.get(fb)
                assert entry.mapped.plane_rows(0, 4)[H - 1, W - 1, 3] == fill  # memfd bytes, mapped
        assert cache.maps == 2 and pair.client.fds_received == 2
        assert pair.exporter.exports >= 10  # every get asked (identity check), fds went only twice
        # fb 1 is removed and its id reused for another buffer: the stale mapping is replaced.
        pair.exporter.set(1, 0x33)
        assert cache.get(1).mapped.plane_rows(0, 4)[0, 0, 0] == 0x33
        assert cache.maps == 3 and pair.client.fds_received == 3
    finally:
        cache.close()


def test_refusals_and_errors_leak_no_fds(pair: Pair) -> None:
    pair.exporter.set(1, 1)
    pair.exporter.set(9, 9)  # exists but is not on the served CRTC
    before = open_fds()
    with pytest.raises(DrmError) as ei:
        pair.client.export(9)
    assert ei.value.errno == errno.EACCES and ei.value.object_id == 9 and "not shown" in ei.value.hint
    with pytest.raises(DrmError) as ei:
        pair.client.export(2)  # allowed, but gone
    assert ei.value.errno == errno.ENOENT
    assert open_fds() <= before  # the broker side closed what it exported for the refused fb
    exported = pair.client.export(1)
    assert exported.fds is not None and len(exported.fds) == 1
    mapped = map_exported(exported)
    mapped.close()
    assert open_fds() <= before


def test_writeback_and_crtc_off(pair: Pair) -> None:
    pair.exporter.set(3, 0x5A)

    async def scenario() -> None:
        first = await pair.client.writeback(7)
        assert first.fds is not None
        again = await pair.client.writeback(7, first.identity)
        assert again.fds is None and again.identity == first.identity
        first.close_fds()
        with pytest.raises(DeviceStateError, match="off"):
            await pair.client.writeback(8)

    asyncio.run(scenario())


def test_broker_ends_when_the_server_closes(pair: Pair) -> None:
    pair.exporter.set(1, 1)
    pair.client.export(1).close_fds()
    pair.client.sock.close()
    pair.thread.join(5)
    assert not pair.thread.is_alive() and not pair.errors
    assert pair.server.requests == 1


def test_server_side_rejects_fds_and_garbage() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = BrokerServer(b, FakeExporter(), lambda fb, ident: True)
    fd = memfd(b"x")
    before = open_fds() - {fd}
    socket.send_fds(a, [Request(Op.EXPORT, 1, 1).to_bytes()], [fd])
    os.close(fd)
    with pytest.raises(BrokerError, match="sent fds"):
        server.serve()
    assert open_fds() == before  # the fd the server received was closed
    a.send(b"\x01\x00")  # a truncated request
    with pytest.raises(BrokerError, match="bytes"):
        server.serve()
    a.close()
    b.close()


class Liar:
    """A broker that answers with whatever the test scripts (to check the server side's defences)."""

    def __init__(self) -> None:
        self.a, self.b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.client = BrokerClient(self.a, timeout=2)

    def answer(self, make: object) -> threading.Thread:
        def run() -> None:
            data = self.b.recv(4096)
            req = Request.from_bytes(data)
            payload, fds = make(req)  # type: ignore[operator]
            if fds:
                socket.send_fds(self.b, [payload], fds)
                for f in fds:
                    os.close(f)
            elif payload is not None:
                self.b.send(payload)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.client.close()
        self.b.close()


@pytest.mark.parametrize("case", ["wrong-seq", "fd-count", "fds-with-error", "oversized", "silence", "exit"])
def test_client_side_defences(case: str) -> None:
    liar = Liar()
    ok = ExportedFramebuffer(info(1), (123,), None)
    before = open_fds()

    def make(req: Request) -> tuple[bytes | None, list[int]]:
        if case == "wrong-seq":
            return Reply.ok(Op.EXPORT, req.seq + 1, ok).to_bytes(), []
        if case == "fd-count":  # announces none, sends two
            return Reply.ok(Op.EXPORT, req.seq, ok).to_bytes(), [memfd(b"a"), memfd(b"b")]
        if case == "fds-with-error":
            return Reply(Op.EXPORT, req.seq, Status.REFUSED, errno.EACCES, n_fds=1).to_bytes(), [memfd(b"a")]
        if case == "oversized":
            return Reply.ok(Op.EXPORT, req.seq, ok).to_bytes() + b"z" * (MAX_TEXT + 10), []
        if case == "exit":
            liar.b.close()
        return None, []

    thread = liar.answer(make)
    expected = {"wrong-seq": "answered", "fd-count": "fds", "fds-with-error": "fds", "oversized": "truncated",
                "silence": "did not answer", "exit": "exited"}[case]
    try:
        with pytest.raises(BrokerError, match=expected):
            liar.client.export(1)
    finally:
        if case != "exit":
            liar.close()
        else:
            liar.client.close()
    thread.join(5)
    assert open_fds() <= before  # every fd the liar passed was closed


def test_a_broker_that_cannot_start_says_why() -> None:
    """The real fork path: the child cannot open the card, says so in its HELLO and exits non-zero."""
    before = open_fds()
    with pytest.raises(BrokerError, match=r"could not start: .*/nonexistent/card0"):
        start_broker(BrokerSpec(card_path="/nonexistent/card0", crtc_id=1, restrict=False), timeout=120)
    assert open_fds() <= before


def test_writeback_needs_driving() -> None:
    with pytest.raises(BrokerError, match="needs vkmsremote to drive"):
        start_broker(BrokerSpec(card_path="/dev/null", crtc_id=1, writeback=True, restrict=False), timeout=120)


def test_resize_answers_carry_the_compositor_adapters_status(pair: Pair) -> None:
    """Without --drive the broker passes a resize to the compositor's adapter (vkmsremote.desktop.resize):
    its status comes back to the reader as prohibited, failed or done."""
    from vkmsremote.frame import ResizeStatus

    assert pair.client.resize(1366, 1024) == ResizeStatus.PROHIBITED  # no resizer at all
    answers = {(1366, 1024): 0, (800, 600): int(ResizeStatus.PROHIBITED), (640, 480): int(ResizeStatus.OUT_OF_RESOURCES)}
    asked: list[tuple[int, int]] = []

    def resize(width: int, height: int) -> int:
        asked.append((width, height))
        return answers[(width, height)]

    pair.server.resize = resize
    assert [pair.client.resize(*size) for size in answers] == [
        ResizeStatus.OK, ResizeStatus.PROHIBITED, ResizeStatus.OUT_OF_RESOURCES]
    assert asked == list(answers)

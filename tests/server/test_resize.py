"""Client-driven resizing (issue 13) on the host: SetDesktopSize refusals leave everything as it was, a second
client follows a resize, the broker's RESIZE request, and CrtcReader's answer without a resizer."""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from capture.test_broker import FakeExporter
from clients.support import RawClient, rgb_of, screens_of

from server.test_server_session import client, full, nothing_arrives, run, serving
from vkmsremote.capture.broker import BrokerClient, BrokerServer, Op, Reply, Request, Status, pack_size
from vkmsremote.errors import DrmError
from vkmsremote.frame import ResizeStatus
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.messages import Screen, SetDesktopSize
from vkmsremote.server.hub import SCREEN_ID
from vkmsremote.server.pattern import PatternSource

ENCS = (Encoding.RAW, Encoding.EXTENDED_DESKTOP_SIZE, Encoding.DESKTOP_SIZE)

BAD_REQUESTS = {
    "0x0": SetDesktopSize(0, 0, (Screen(SCREEN_ID, 0, 0, 0, 0),)),
    "9000x9000": SetDesktopSize(9000, 9000, (Screen(SCREEN_ID, 0, 0, 9000, 9000),)),
    "8193 wide": SetDesktopSize(8193, 600, (Screen(SCREEN_ID, 0, 0, 8193, 600),)),
    "200 screens": SetDesktopSize(1000, 200, tuple(Screen(i, i * 5, 0, 5, 200) for i in range(200))),
    "overlapping": SetDesktopSize(800, 600, (Screen(1, 0, 0, 500, 600), Screen(2, 300, 0, 500, 600))),
    "screen outside": SetDesktopSize(800, 600, (Screen(1, 0, 0, 900, 600),)),
    "no screen": SetDesktopSize(800, 600, ()),
}


async def layout_reply(c: RawClient) -> tuple[int, int, int, int, list[Screen]]:
    """The one ExtendedDesktopSize rectangle of the next update: (reason, status, width, height, screens)."""
    [(x, y, w, h, enc, data)] = (await c.read_update()).rects
    assert enc == Encoding.EXTENDED_DESKTOP_SIZE
    return x, y, w, h, screens_of(data)


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_layouts_are_refused_and_nothing_changes(case: str) -> None:
    async def main() -> None:
        src = PatternSource(320, 240, fps=30, animate=False)
        async with serving(src) as srv:
            a = await client(srv, *ENCS)
            b = await client(srv, *ENCS)
            for c in (a, b):
                c.send(full(c))
                assert (await layout_reply(c))[:4] == (0, 0, 320, 240)
                c.send(full(c, incremental=True))
                await c.read_update()
            a.send(BAD_REQUESTS[case])
            # rfbproto "ExtendedDesktopSize": reason 1 (this client), status 3 (invalid screen layout), and the
            # unchanged layout
            assert await layout_reply(a) == (1, 3, 320, 240, [Screen(SCREEN_ID, 0, 0, 320, 240)])
            await nothing_arrives(b)  # the other client hears nothing: nothing changed
            assert (src.width, src.height) == (320, 240)
            a.send(full(a))  # and the server goes on serving the requester, at the old size
            assert await layout_reply(a) == (0, 0, 320, 240, [Screen(SCREEN_ID, 0, 0, 320, 240)])
            a.send(full(a, incremental=True))
            assert {r[4] for r in (await a.read_update()).rects} == {Encoding.RAW}
            assert a.fb.shape == (240, 320) and np.array_equal(a.rgb(), rgb_of(src._buf))
    run(main())


def test_a_size_vkms_does_not_list_reaches_every_client() -> None:
    async def main() -> None:
        src = PatternSource(1024, 768, fps=30, animate=False)
        async with serving(src) as srv:
            a = await client(srv, *ENCS)
            b = await client(srv, *ENCS)
            for c in (a, b):
                c.send(full(c))
                await layout_reply(c)
            a.send(SetDesktopSize(1366, 1024, (Screen(SCREEN_ID, 0, 0, 1366, 1024),)))
            assert await layout_reply(a) == (1, 0, 1366, 1024, [Screen(SCREEN_ID, 0, 0, 1366, 1024)])
            assert (await layout_reply(b))[:4] == (2, 0, 1366, 1024)  # reason 2: another client
            for c in (a, b):
                c.send(full(c, incremental=True))
                await c.read_update()
                assert c.fb.shape == (1024, 1366) and np.array_equal(c.rgb(), rgb_of(src._buf))
    run(main())


# --- the broker's RESIZE request ---------------------------------------------------------------------------


class Resizes:
    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []

    def __call__(self, width: int, height: int) -> None:
        if width == 4321:
            raise DrmError("DRM_IOCTL_MODE_ATOMIC", errno.EINVAL)
        self.sizes.append((width, height))


@pytest.fixture
def resizing() -> Iterator[tuple[BrokerClient, Resizes]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    exporter = FakeExporter()
    resizes = Resizes()
    server = BrokerServer(b, exporter, lambda fb, ident: False, resize=resizes)
    thread = threading.Thread(target=lambda: (server.serve(), b.close()), daemon=True)
    thread.start()
    c = BrokerClient(a, timeout=5)
    yield c, resizes
    c.close()
    thread.join(5)
    exporter.close()


def test_resize_request_layout() -> None:
    req = Request(Op.RESIZE, 5, pack_size(1366, 1024))
    assert req.object_id == 0x0556_0400  # width 1366 in the high half, height 1024 in the low half
    assert Request.from_bytes(req.to_bytes()) == req
    reply = Reply(Op.RESIZE, 5, Status.OK)
    assert Reply.from_bytes(reply.to_bytes()) == reply  # an OK RESIZE reply carries no framebuffer
    for w, h in ((0, 1), (1, 0), (8193, 1), (1, 8193)):
        with pytest.raises(ValueError):
            pack_size(w, h)


def test_broker_resizes_and_says_why_not(resizing: tuple[BrokerClient, Resizes]) -> None:
    c, resizes = resizing
    assert c.resize(1366, 1024) == ResizeStatus.OK
    assert c.resize(2388, 1668) == ResizeStatus.OK
    assert resizes.sizes == [(1366, 1024), (2388, 1668)]
    assert c.resize(4321, 100) == ResizeStatus.INVALID  # the kernel refused the mode (EINVAL)
    assert c.resize(0, 100) == ResizeStatus.INVALID  # never sent
    assert c.resize(9000, 9000) == ResizeStatus.INVALID
    assert resizes.sizes == [(1366, 1024), (2388, 1668)]
    # a forged request beyond the range is refused by the broker itself
    c.sock.send(Request(Op.RESIZE, 99, 9000 << 16 | 9000).to_bytes())
    reply = Reply.from_bytes(c.sock.recv(4096))
    assert (reply.status, reply.error) == (Status.REFUSED, errno.EINVAL)
    assert resizes.sizes == [(1366, 1024), (2388, 1668)]


def test_a_broker_that_does_not_drive_prohibits() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    exporter = FakeExporter()
    server = BrokerServer(b, exporter, lambda fb, ident: False)
    thread = threading.Thread(target=lambda: (server.serve(), b.close()), daemon=True)
    thread.start()
    c = BrokerClient(a, timeout=5)
    try:
        assert c.resize(1366, 1024) == ResizeStatus.PROHIBITED
    finally:
        c.close()
        thread.join(5)
        exporter.close()


def test_resize_while_a_writeback_waits_is_out_of_resources(resizing: tuple[BrokerClient, Resizes]) -> None:
    c, resizes = resizing

    async def scenario() -> None:
        c._busy = True  # a writeback awaiting its reply
        try:
            assert c.resize(1366, 1024) == ResizeStatus.OUT_OF_RESOURCES
        finally:
            c._busy = False

    asyncio.run(scenario())
    assert resizes.sizes == []

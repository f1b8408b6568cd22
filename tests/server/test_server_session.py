"""The asyncio server's behaviour, driven by a small RFB client (tests/clients/support.py): updates and
their coalescing, slow clients, pixel formats and the colour map, continuous updates, fences, desktop
resizing, input (and its release on disconnect), view-only, exclusive access, the blacklist, the listen
policy, cursors, bell and clipboard, and a misbehaving client."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import numpy as np
import pytest
from clients.support import ControlledSource, RawClient, rgb_of, screens_of

from vkmsremote.errors import UsageError
from vkmsremote.frame import Cursor, Rect
from vkmsremote.rfb.auth import SecurityPolicy
from vkmsremote.rfb.constants import Encoding, SecurityType
from vkmsremote.rfb.encodings import samples
from vkmsremote.rfb.messages import (
    ClientCutText,
    ClientFence,
    EnableContinuousUpdates,
    FenceFlag,
    FramebufferUpdateRequest,
    KeyEvent,
    PointerEvent,
    QemuExtendedKeyEvent,
    Screen,
    SetDesktopSize,
    SetPixelFormat,
)
from vkmsremote.rfb.pixelformat import PixelFormat
from vkmsremote.server import session as session_module
from vkmsremote.server.app import VncServer
from vkmsremote.server.blacklist import Blacklist
from vkmsremote.server.hub import SCREEN_ID
from vkmsremote.server.input import RecordingSink
from vkmsremote.server.pattern import PatternSource
from vkmsremote.server.session import WRITE_HIGH

W, H = 96, 64
IMG = samples.photo_like(H, W)


def run(coro: Coroutine[Any, Any, None], timeout: float = 30) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.asynccontextmanager
async def serving(source: object, **kwargs: Any) -> AsyncIterator[VncServer]:
    server = VncServer(source, port=0, **kwargs)  # type: ignore[arg-type]
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def client(server: VncServer, *encodings: int, **kwargs: Any) -> RawClient:
    c = RawClient()
    await c.connect(server.port, **kwargs)
    c.set_encodings(*(encodings or (Encoding.RAW,)))
    return c


def full(c: RawClient, incremental: bool = False) -> FramebufferUpdateRequest:
    return FramebufferUpdateRequest(incremental, 0, 0, c.width, c.height)


async def nothing_arrives(c: RawClient, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await c.read_message(seconds)


async def ended(server: VncServer, index: int = -1) -> None:
    for _ in range(200):
        if server.records[index].ended is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("session did not end")


def test_full_then_incremental_updates() -> None:
    async def main() -> None:
        src = ControlledSource(IMG)
        async with serving(src) as srv:
            c = await client(srv)
            assert (c.width, c.height, c.name) == (W, H, "controlled")
            c.send(full(c))
            await c.read_update()
            assert np.array_equal(c.rgb(), rgb_of(IMG))
            c.send(full(c, incremental=True))
            await nothing_arrives(c)  # nothing changed: the request stays pending
            img2 = IMG.copy()
            img2[10:14, 20:30] = (1, 2, 3, 0)
            src.set_frame(img2, (Rect(20, 10, 10, 4),))
            up = await c.read_update()
            assert [r[:5] for r in up.rects] == [(16, 0, 16, 16, Encoding.RAW)]  # one tile around the damage
            assert np.array_equal(c.rgb(), rgb_of(img2))
            rec = srv.records[-1]
            assert rec.client_encodings == (Encoding.RAW,) and rec.encoding == Encoding.RAW
            assert rec.updates == 2
    run(main())


def test_requests_are_coalesced_and_areas_respected() -> None:
    async def main() -> None:
        src = ControlledSource(IMG)
        async with serving(src) as srv:
            c = await client(srv)
            c.send(full(c))
            await c.read_update()
            # several requests for parts of the screen before anything changes: one update answers them all
            c.send(FramebufferUpdateRequest(True, 0, 0, 16, 16), FramebufferUpdateRequest(True, 64, 32, 16, 16))
            await asyncio.sleep(0.1)
            img2 = IMG.copy()
            img2[:, :] = (9, 9, 9, 0)
            src.set_frame(img2)  # everything damaged
            up = await c.read_update()
            area = {(x, y, w, h) for x, y, w, h, _, _ in up.rects}
            covered = np.zeros((H, W), bool)
            for x, y, w, h in area:
                covered[y:y + h, x:x + w] = True
            assert covered[0:16, 0:16].all() and covered[32:48, 64:80].all()
            assert covered.sum() < W * H  # only the union of the requested areas, not the whole screen
            await nothing_arrives(c)  # one update for two requests
            c.send(full(c, incremental=True))  # the rest of the damage was kept for later
            await c.read_update()
            assert np.array_equal(c.rgb(), rgb_of(img2))
    run(main())


def test_slow_client_does_not_delay_others_or_grow_memory() -> None:
    async def main() -> None:
        src = PatternSource(640, 480, fps=60, full_motion=True)
        async with serving(src) as srv:
            slow = await client(srv)
            for _ in range(50):  # asks for many updates and never reads
                slow.send(full(slow, incremental=True))
            fast = await client(srv)
            fast.send(full(fast))
            t0 = time.monotonic()
            got = 0
            max_buffer = 0
            slow_session = next(s for s in srv.sessions if s.record.peer.endswith(
                str(slow.writer.get_extra_info("sockname")[1])))
            while time.monotonic() - t0 < 2.0:
                await fast.read_update()
                got += 1
                fast.send(full(fast, incremental=True))
                max_buffer = max(max_buffer, slow_session._writer.transport.get_write_buffer_size())
            frame_bytes = 640 * 480 * 4
            assert got >= 8, f"the fast client got only {got} updates in 2 s"
            assert max_buffer <= frame_bytes + WRITE_HIGH + 4096, max_buffer
            assert slow_session.record.updates < got
            # once the slow client reads, it gets a recent, complete frame
            slow.reader._limit = 1 << 24
            for _ in range(100):
                try:
                    await slow.read_update(timeout=1)
                except TimeoutError:
                    break
            assert slow_session.record.updates <= 52
    run(main(), timeout=60)


@pytest.mark.parametrize("name", ["565be", "bgr233-true-colour", "colour-map", "32-bit-rgb"])
def test_pixel_formats(name: str) -> None:
    pfs = {
        "565be": PixelFormat(16, 16, True, True, 31, 63, 31, 11, 5, 0),
        "bgr233-true-colour": PixelFormat(8, 8, False, True, 7, 7, 3, 0, 3, 6),
        "colour-map": PixelFormat(8, 8, False, False, 0, 0, 0, 0, 0, 0),
        "32-bit-rgb": PixelFormat(32, 24, True, True, 255, 255, 255, 0, 8, 16),
    }
    pf = pfs[name]

    async def main() -> None:
        src = ControlledSource(IMG)
        async with serving(src) as srv:
            c = await client(srv)
            c.set_pixel_format(pf)
            c.send(full(c))
            first = await c.read_message()
            if not pf.true_colour:
                assert first.kind == "colourmap" and first.data == (0, 256)  # the map comes before the pixels
                await c.read_update()
                b, g, r = (IMG[:, :, i].astype(int) for i in range(3))
                index = ((b * 3 + 127) // 255) << 6 | ((g * 7 + 127) // 255) << 3 | ((r * 7 + 127) // 255)
                assert np.array_equal(c.fb, index)
                return
            assert first.kind == "update"
            expect = np.zeros((H, W), dtype=np.uint32)
            for ch, mx, sh in ((2, pf.red_max, pf.red_shift), (1, pf.green_max, pf.green_shift),
                               (0, pf.blue_max, pf.blue_shift)):
                expect |= ((IMG[:, :, ch].astype(np.uint32) * mx + 127) // 255) << sh
            assert np.array_equal(c.fb, expect)
            assert srv.records[-1].pixel_format == pf
    run(main())


def test_continuous_updates() -> None:
    async def main() -> None:
        src = ControlledSource(IMG)
        async with serving(src) as srv:
            c = await client(srv, Encoding.RAW, Encoding.CONTINUOUS_UPDATES)
            assert (await c.read_message()).kind == "eocu"  # announces support (rfbproto)
            c.send(EnableContinuousUpdates(True, 0, 0, W, H))
            await c.read_update()  # the whole screen, unrequested
            assert np.array_equal(c.rgb(), rgb_of(IMG))
            for value in (50, 60):
                img = IMG.copy()
                img[0:4, 0:4] = value
                src.set_frame(img, (Rect(0, 0, 4, 4),))
                up = await c.read_update()  # no request needed
                assert [r[:4] for r in up.rects] == [(0, 0, 16, 16)]
            c.send(full(c, incremental=True))  # ignored while continuous updates are on
            await nothing_arrives(c)
            c.send(EnableContinuousUpdates(False, 0, 0, W, H))
            assert (await c.read_message()).kind == "eocu"
            src.set_frame(IMG, (Rect(0, 0, 4, 4),))
            await nothing_arrives(c)
            assert srv.records[-1].continuous_updates is False
    run(main())


class GatedEncoder:
    """Wraps the session's worker-thread encode so a test can hold an update "being built"."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()
        original = session_module.encode_update

        def gated(*args: Any) -> Any:
            self.started.set()
            assert self.release.wait(10)
            return original(*args)

        monkeypatch.setattr(session_module, "encode_update", gated)

    async def hold_next(self) -> None:
        self.started.clear()
        self.release.clear()

    async def building(self) -> None:
        assert await asyncio.to_thread(self.started.wait, 5), "no update started"


def test_fences(monkeypatch: pytest.MonkeyPatch) -> None:
    """rfbproto "ClientFence": the reply echoes the known flags and the payload; BlockBefore/SyncNext replies
    wait for the update being built; after a SyncNext reply every update reflects the next message; a
    BlockAfter-only reply is not delayed; a fence response nobody asked for ends the session (the client's
    fault)."""
    gate = GatedEncoder(monkeypatch)

    async def main() -> None:
        src = ControlledSource(IMG)
        async with serving(src) as srv:
            c = await client(srv, Encoding.RAW, Encoding.FENCE)
            msg = await c.read_message()
            assert msg.kind == "fence" and msg.data[0] & FenceFlag.REQUEST  # announces support
            c.send(ClientFence(0, b""))  # the client's answer: accepted once

            # BlockBefore while an update is being built: the update first, then the reply
            await gate.hold_next()
            c.send(full(c))
            await gate.building()
            c.send(ClientFence(FenceFlag.REQUEST | FenceFlag.BLOCK_BEFORE | (1 << 5), b"bb"))
            await nothing_arrives(c, 0.3)  # the reply waits for the update in progress
            gate.release.set()
            assert (await c.read_message()).kind == "update"
            msg = await c.read_message()
            assert msg.kind == "fence" and msg.data == (FenceFlag.BLOCK_BEFORE, b"bb")  # bit 5 and Request cleared

            # BlockAfter alone while an update is being built: answered at once, before the update
            await gate.hold_next()
            c.send(full(c))
            await gate.building()
            c.send(ClientFence(FenceFlag.REQUEST | FenceFlag.BLOCK_AFTER, b"ba"))
            msg = await c.read_message()
            assert msg.kind == "fence" and msg.data == (FenceFlag.BLOCK_AFTER, b"ba")
            gate.release.set()
            assert (await c.read_message()).kind == "update"

            # SyncNext while an update is being built, then SetPixelFormat: the old format before the
            # reply, the new one in every update after it
            await gate.hold_next()
            c.send(full(c))
            await gate.building()
            c.send(ClientFence(FenceFlag.REQUEST | FenceFlag.SYNC_NEXT, b"sn"))
            new_pf = PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0)
            c.writer.write(SetPixelFormat(new_pf).to_bytes())  # RawClient decodes in c.pf: switch after the reply
            c.send(full(c))
            gate.release.set()
            first = await c.read_message()
            assert first.kind == "update" and len(first.update.rects[0][5]) == W * H * 4  # old format, 4 bytes
            msg = await c.read_message()
            assert msg.kind == "fence" and msg.data == (FenceFlag.SYNC_NEXT, b"sn")
            c.pf = new_pf
            await c.read_update()
            assert srv.records[-1].pixel_format == new_pf
            assert c.fb.max() <= 0xFFFF and c.fb.any()

            # a second fence response: the server sent one request only
            c.send(ClientFence(FenceFlag.BLOCK_BEFORE, b""))
            with pytest.raises(asyncio.IncompleteReadError):
                await c.read_message()
            await ended(srv)
            assert srv.records[-1].outcome.startswith("the client broke the protocol: a fence response")
    run(main())


def test_sync_next_holds_continuous_updates_until_the_next_message() -> None:
    """After the reply to a SyncNext fence no update may go out until the message after the fence is in,
    even with continuous updates on and the screen changing (else it would show the old pixel format)."""
    async def main() -> None:
        src = ControlledSource(IMG)
        async with serving(src) as srv:
            c = await client(srv, Encoding.RAW, Encoding.FENCE, Encoding.CONTINUOUS_UPDATES)
            assert {(await c.read_message()).kind for _ in range(2)} == {"fence", "eocu"}
            c.send(ClientFence(0, b""), EnableContinuousUpdates(True, 0, 0, W, H))
            await c.read_update()
            c.send(ClientFence(FenceFlag.REQUEST | FenceFlag.SYNC_NEXT, b"s"))
            msg = await c.read_message()
            assert msg.kind == "fence" and msg.data == (FenceFlag.SYNC_NEXT, b"s")
            img = IMG.copy()
            img[0:4, 0:4] = 77
            src.set_frame(img, (Rect(0, 0, 4, 4),))
            await nothing_arrives(c)  # held: the message after the fence has not arrived
            c.set_pixel_format(PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0))
            up = await c.read_update()
            assert [r[:4] for r in up.rects] == [(0, 0, 16, 16)] and len(up.rects[0][5]) == 16 * 16 * 2
    run(main())


def test_extended_desktop_size_and_set_desktop_size() -> None:
    async def main() -> None:
        src = PatternSource(320, 240, fps=30, animate=False)
        async with serving(src) as srv:
            encs = (Encoding.RAW, Encoding.EXTENDED_DESKTOP_SIZE, Encoding.DESKTOP_SIZE)
            a = await client(srv, *encs)
            a.send(full(a))
            up = await a.read_update()  # the layout first, in an update of its own
            [(x, y, w, h, enc, data)] = up.rects
            assert (x, y, w, h, enc) == (0, 0, 320, 240, Encoding.EXTENDED_DESKTOP_SIZE)
            assert screens_of(data) == [Screen(SCREEN_ID, 0, 0, 320, 240)]
            a.send(full(a, incremental=True))
            up = await a.read_update()
            assert {r[4] for r in up.rects} == {Encoding.RAW}
            b = await client(srv, *encs)
            only_ds = await client(srv, Encoding.RAW, Encoding.DESKTOP_SIZE)
            legacy = await client(srv, Encoding.RAW)
            # an invalid layout is refused, to the requester only
            a.send(SetDesktopSize(400, 300, (Screen(1, 0, 0, 200, 300), Screen(2, 200, 0, 200, 300))))
            [(x, y, w, h, enc, _)] = (await a.read_update()).rects
            assert (x, y, enc) == (1, 3, Encoding.EXTENDED_DESKTOP_SIZE)  # this client, invalid layout
            # a valid one is done
            a.send(SetDesktopSize(400, 300, (Screen(SCREEN_ID, 0, 0, 400, 300, 7),)))
            [(x, y, w, h, enc, data)] = (await a.read_update()).rects
            assert (x, y, w, h) == (1, 0, 400, 300)  # this client, success
            assert screens_of(data) == [Screen(SCREEN_ID, 0, 0, 400, 300, 7)]  # echoed exactly
            [(x, y, w, h, enc, _)] = (await b.read_update()).rects
            assert (x, y, w, h, enc) == (2, 0, 400, 300, Encoding.EXTENDED_DESKTOP_SIZE)  # another client
            [(x, y, w, h, enc, _)] = (await only_ds.read_update()).rects
            assert (w, h, enc) == (400, 300, Encoding.DESKTOP_SIZE)
            with pytest.raises(asyncio.IncompleteReadError):  # cannot follow a resize: disconnected
                await legacy.read_message()
            a.send(full(a, incremental=True))
            await a.read_update()
            assert a.fb.shape == (300, 400) and np.array_equal(a.rgb(), rgb_of(src._buf))
            assert "cannot follow" in srv.records[3].outcome
    run(main())


def test_resize_prohibited_for_fixed_sources() -> None:
    async def main() -> None:
        async with serving(ControlledSource(IMG)) as srv:
            c = await client(srv, Encoding.RAW, Encoding.EXTENDED_DESKTOP_SIZE)
            c.send(SetDesktopSize(200, 100, (Screen(SCREEN_ID, 0, 0, 200, 100),)))
            [(x, y, _w, _h, enc, _)] = (await c.read_update()).rects
            assert (x, y, enc) == (1, 1, Encoding.EXTENDED_DESKTOP_SIZE)  # prohibited
    run(main())


def test_input_goes_to_the_sink_and_is_released_on_disconnect() -> None:
    async def main() -> None:
        sink = RecordingSink()
        async with serving(ControlledSource(IMG), sink=sink) as srv:
            c = await client(srv)
            c.send(KeyEvent(True, 0x61), KeyEvent(True, 0xFFE1), KeyEvent(False, 0xFFE1),
                   QemuExtendedKeyEvent(True, 0x62, 0x30), PointerEvent(1, 5000, 6), ClientCutText(b"h\xe9"))
            await asyncio.sleep(0.2)
            await c.close()
            await ended(srv)
        assert sink.events == [
            ("key", 0x61, True), ("key", 0xFFE1, True), ("key", 0xFFE1, False),
            ("scancode", 0x62, 0x30, True), ("pointer", W - 1, 6, 1), ("clipboard", "hé"),
            # released by the server when the client left holding them
            ("key", 0x61, False), ("scancode", 0x62, 0x30, False), ("pointer", W - 1, 6, 0),
        ]
    run(main())


def test_view_only_ignores_input() -> None:
    async def main() -> None:
        sink = RecordingSink()
        async with serving(ControlledSource(IMG), sink=sink, view_only=True) as srv:
            c = await client(srv)
            c.send(KeyEvent(True, 0x61), PointerEvent(1, 1, 1), ClientCutText(b"x"), full(c))
            await c.read_update()
            await c.close()
            await ended(srv)
        assert sink.events == []
    run(main())


def test_exclusive_client_disconnects_others_unless_always_shared() -> None:
    async def main(always_shared: bool) -> None:
        async with serving(ControlledSource(IMG), always_shared=always_shared) as srv:
            a = await client(srv)
            b = await client(srv, shared=False)
            b.send(full(b))
            await b.read_update()
            a.send(full(a))
            if always_shared:
                await a.read_update()
            else:
                with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                    await a.read_update()
                assert "exclusive" in srv.records[0].outcome
    run(main(False))
    run(main(True))


def test_blacklist_after_failed_passwords() -> None:
    async def main() -> None:
        policy = SecurityPolicy(types=(SecurityType.VNC_AUTH,), vnc_password=b"right")
        async with serving(ControlledSource(IMG), policy=policy, blacklist=Blacklist(threshold=2)) as srv:
            for _ in range(2):
                with pytest.raises(PermissionError, match="Authentication failed"):
                    await RawClient().connect(srv.port, password=b"wrong")
            with pytest.raises(ConnectionRefusedError, match="Too many authentication failures"):
                await RawClient().connect(srv.port, password=b"right")
            assert [r.outcome for r in srv.records][:2] == ["authentication failed"] * 2
    run(main())

    async def recovers() -> None:
        policy = SecurityPolicy(types=(SecurityType.VNC_AUTH,), vnc_password=b"right")
        async with serving(ControlledSource(IMG), policy=policy, blacklist=Blacklist(threshold=5)) as srv:
            with pytest.raises(PermissionError):
                await RawClient().connect(srv.port, password=b"wrong")
            c = RawClient()
            await c.connect(srv.port, password=b"right")  # below the threshold, the right password works
            assert c.width == W
    run(recovers())


def test_blacklist_timeout_doubles() -> None:
    now = [0.0]
    bl = Blacklist(threshold=2, timeout=10, clock=lambda: now[0])
    bl.failure("a")
    assert bl.blocked_for("a") == 0
    bl.failure("a")
    assert bl.blocked_for("a") == 10
    now[0] = 11
    assert bl.blocked_for("a") == 0
    bl.failure("a")
    assert bl.blocked_for("a") == 20
    bl.success("a")
    assert bl.blocked_for("a") == 0


def test_listen_policy() -> None:
    src = ControlledSource(IMG)
    with pytest.raises(UsageError, match="without authentication"):
        VncServer(src, host="0.0.0.0")
    VncServer(src, host="0.0.0.0", insecure_listen=True)
    VncServer(src, host="0.0.0.0", policy=SecurityPolicy(types=(SecurityType.VNC_AUTH,), vnc_password=b"p"))
    VncServer(src, host="::1")
    VncServer(src, host="localhost")


def test_cursor_pseudo_encodings_and_qemu_key_confirmation() -> None:
    bgra = np.zeros((4, 3, 4), dtype=np.uint8)
    bgra[:, :, 2] = 255
    bgra[:2, :, 3] = 255  # top half opaque red
    cursor = Cursor(bgra, 1, 2, 0, 0, True, 1)

    async def main() -> None:
        async with serving(ControlledSource(IMG, cursor=cursor)) as srv:
            c = await client(srv, Encoding.RAW, Encoding.CURSOR_WITH_ALPHA, Encoding.CURSOR,
                             Encoding.QEMU_EXTENDED_KEY_EVENT)
            c.send(full(c))
            up = await c.read_update()
            by_enc = {r[4]: r for r in up.rects}
            assert by_enc[Encoding.QEMU_EXTENDED_KEY_EVENT][:4] == (0, 0, 0, 0)
            x, y, w, h, _, data = by_enc[Encoding.CURSOR_WITH_ALPHA]
            assert (x, y, w, h) == (1, 2, 3, 4)  # hotspot, size
            assert data[:4] == bytes([255, 0, 0, 255]) and data[-4:] == bytes([0, 0, 0, 0])  # premultiplied RGBA
            c2 = await client(srv, Encoding.RAW, Encoding.CURSOR)
            c2.send(full(c2))
            up = await c2.read_update()
            [cur] = [r for r in up.rects if r[4] == Encoding.CURSOR]
            assert cur[5][-4:] == bytes([0b1110_0000, 0b1110_0000, 0, 0])  # 1-bit mask, one byte per row
            assert np.frombuffer(cur[5][:4], "<u4")[0] == 0xFF0000  # red in the client's (native) format
    run(main())


def test_bell_clipboard_and_desktop_name() -> None:
    async def main() -> None:
        src = ControlledSource(IMG)
        async with serving(src) as srv:
            c = await client(srv, Encoding.RAW, Encoding.DESKTOP_NAME)
            c.send(full(c))
            await c.read_update()
            srv.bell()
            srv.send_clipboard("zwölf")
            assert (await c.read_message()).kind == "bell"
            msg = await c.read_message()
            assert msg.kind == "cuttext" and msg.data == "zwölf".encode("latin-1")
            src.name = "renamed"
            src.set_frame(IMG, ())
            c.send(full(c, incremental=True))
            up = await c.read_update()
            assert up.rects == [(0, 0, 0, 0, Encoding.DESKTOP_NAME, b"renamed")]
    run(main())


def test_misbehaving_client_is_dropped_others_continue() -> None:
    async def main() -> None:
        src = ControlledSource(IMG)
        async with serving(src) as srv:
            good = await client(srv)
            bad = await client(srv)
            bad.writer.write(bytes([99]))  # no such message type
            with pytest.raises(asyncio.IncompleteReadError):
                await bad.read_message()
            await ended(srv, 1)
            assert srv.records[1].outcome == "the client broke the protocol: unknown client message type 99"
            good.send(full(good))
            await good.read_update()
            assert np.array_equal(good.rgb(), rgb_of(IMG))
    run(main())

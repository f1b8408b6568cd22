"""Several sources as one desktop (``serve --connector XR-0,XR-1``): side by side, one ExtendedDesktopSize
screen each, a dark one takes no room. Sources here are the static test pattern; on the real kernel with
Xorg's two CRTCs: tests/vm/test_compositor_vm.py."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from clients.support import RawClient, ServerThread, rgb_of, screens_of

from vkmsremote.capture.multi import MultiSource
from vkmsremote.frame import Cursor, Frame, Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.messages import FramebufferUpdateRequest
from vkmsremote.server.hub import SCREEN_ID
from vkmsremote.server.pattern import PatternSource


class Switchable:
    """A pattern that can be turned off (as a CRTC reader whose CRTC went dark: ``no_signal``)."""

    def __init__(self, width: int, height: int) -> None:
        self.pattern = PatternSource(width, height, fps=50, animate=False)
        self.no_signal = False
        self.desktop_name = "switchable"
        self.switched = asyncio.Event()

    async def next_frame(self) -> Frame:
        if self.pattern._serial == 0:
            return await self.pattern.next_frame()
        await self.switched.wait()
        self.switched.clear()
        return Frame(self.pattern._buf, self.pattern._serial + 1, None)

    def cursor(self) -> Cursor | None:
        return None

    async def close(self) -> None:
        pass


def test_side_by_side_with_damage_moved_and_a_dark_source_dropped() -> None:
    async def main() -> None:
        a, b = PatternSource(64, 48, fps=100), Switchable(32, 40)
        multi = MultiSource([a, b], ["XR-0", "XR-1"])
        first = await multi.next_frame()
        assert (first.width, first.height) == (96, 48) and first.damage is None
        assert multi.screens() == ((0, Rect(0, 0, 64, 48)), (1, Rect(64, 0, 32, 40)))
        assert np.array_equal(first.pixels[:48, :64], a._buf) and np.array_equal(first.pixels[:40, 64:], b.pattern._buf)
        assert not first.pixels[40:, 64:].any()  # below the shorter screen: black
        assert multi.desktop_name == "XR-0 + XR-1"
        assert multi.cursor() is not None and multi.cursor().x == 0  # type: ignore[union-attr]
        nxt = await multi.next_frame()  # the animated pattern moved: its damage, in its own area
        assert nxt.damage and all(r.x + r.w <= 64 for r in nxt.damage)
        assert np.array_equal(nxt.pixels[:48, :64], a._buf)
        b.no_signal = True
        b.switched.set()
        dark = await multi.next_frame()
        assert (dark.width, dark.height) == (64, 48) and dark.damage is None
        assert multi.screens() == ((0, Rect(0, 0, 64, 48)),)
        await multi.close()

    asyncio.run(main())


def test_a_client_sees_one_screen_per_source_and_the_list_change() -> None:
    a, b = PatternSource(64, 48, fps=20, animate=False), Switchable(32, 48)
    multi = MultiSource([a, b], ["XR-0", "XR-1"])
    with ServerThread(multi) as srv:
        async def main() -> None:
            c = RawClient()
            await c.connect(srv.port)
            c.set_encodings(Encoding.RAW, Encoding.EXTENDED_DESKTOP_SIZE)
            c.send(FramebufferUpdateRequest(False, 0, 0, c.width, c.height))
            up = await c.read_update(10)
            [(_reason, _status, w, h, _enc, data)] = [r for r in up.rects if r[4] == Encoding.EXTENDED_DESKTOP_SIZE]
            assert (w, h) == (96, 48)
            screens = screens_of(data)
            assert [(s.id, s.x, s.y, s.width, s.height) for s in screens] == [
                (SCREEN_ID, 0, 0, 64, 48), (SCREEN_ID + 1, 64, 0, 32, 48)]
            covered = 0
            for _ in range(5):  # the layout came alone (as it does for every non-incremental request): the
                c.send(FramebufferUpdateRequest(True, 0, 0, 96, 48))  # pixels answer incremental ones
                covered += sum(r[2] * r[3] for r in (await c.read_update(10)).rects if r[4] == Encoding.RAW)
                if covered >= 96 * 48:
                    break
            rgb = c.rgb()
            assert np.array_equal(rgb[:, :64], rgb_of(a._buf)) and np.array_equal(rgb[:, 64:], rgb_of(b.pattern._buf))

            def turn_off() -> None:
                b.no_signal = True
                b.switched.set()

            srv.loop.call_soon_threadsafe(turn_off)
            c.send(FramebufferUpdateRequest(True, 0, 0, 96, 48))
            rects: list[Any] = []
            for _ in range(5):
                rects = [r for r in (await c.read_update(10)).rects if r[4] == Encoding.EXTENDED_DESKTOP_SIZE]
                if rects:
                    break
                c.send(FramebufferUpdateRequest(True, 0, 0, c.width, c.height))
            [(reason, _status, w, h, _enc, data)] = rects
            assert (reason, w, h) == (0, 64, 48)  # the server changed it
            assert [(s.id, s.width) for s in screens_of(data)] == [(SCREEN_ID, 64)]
            await c.close()

        asyncio.run(main())


def test_serve_refuses_input_or_a_repeated_name_with_several_connectors(capsys: Any) -> None:
    from vkmsremote.cli import main

    assert main(["serve", "--source", "crtc", "--card", "/dev/null", "--connector", "Virtual-1,Virtual-2",
                 "--input", "uinput"]) == 2
    assert "several connectors" in capsys.readouterr().err
    assert main(["serve", "--source", "crtc", "--card", "/dev/null", "--connector", "Virtual-1,Virtual-1",
                 "--input", "none"]) == 2
    assert "name each connector once" in capsys.readouterr().err

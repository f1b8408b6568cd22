"""Hub.close ends the frame loop even when the source swallows a cancellation (asyncio.wait_for did
before Python 3.12 when the awaited thing completed at the moment of the cancel)."""

from __future__ import annotations

import asyncio

import numpy as np

from vkmsremote.frame import Cursor, Frame
from vkmsremote.server.hub import Hub


class SwallowingSource:
    """Gives one frame, then waits; the first cancellation of that wait is swallowed."""

    desktop_name = "swallowing"

    def __init__(self) -> None:
        self.serial = 0
        self.swallowed = 0

    def cursor(self) -> Cursor | None:
        return None

    async def next_frame(self) -> Frame:
        self.serial += 1
        if self.serial > 1:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if self.swallowed == 0:
                    self.swallowed += 1  # as a racing wait_for would: carry on as if the wait ended
                else:
                    raise
        return Frame(np.zeros((4, 4, 4), np.uint8), self.serial, None)

    async def close(self) -> None:
        pass


class Watcher:
    def frame_ready(self, *args: object) -> None:
        pass

    def cursor_changed(self, cursor: object) -> None:
        pass

    def name_changed(self, name: str) -> None:
        pass


def test_close_ends_the_loop_although_a_cancellation_was_swallowed() -> None:
    async def scenario() -> None:
        source = SwallowingSource()
        hub = Hub(source)  # type: ignore[arg-type]
        await hub.attach(Watcher())  # type: ignore[arg-type]
        hub.want_frame()
        for _ in range(50):
            if source.serial >= 2:
                break
            await asyncio.sleep(0.01)
        assert source.serial >= 2, "the hub never asked for a second frame"
        closing = asyncio.ensure_future(hub.close())
        done, _ = await asyncio.wait({closing}, timeout=10)
        assert done, "Hub.close still waiting for a frame loop that swallowed its cancellation"
        assert source.swallowed == 1

    asyncio.run(scenario())

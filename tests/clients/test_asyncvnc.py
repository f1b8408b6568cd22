"""asyncvnc 1.3 (PyPI, asyncio) against the server: it asks for Zlib only, so several of them at once
prove that every connection has its own zlib stream (RFC 6143 7.7.6: one stream per connection); frames
are compared pixel-exact; keyboard and mouse reach the InputSink; VNC authentication. (asyncvnc's
clipboard message numbers are wrong, PEER-NOTES.md, so its clipboard is not used.)"""

from __future__ import annotations

import asyncio

import asyncvnc
import numpy as np
import pytest

from clients.support import ControlledSource, ServerThread, rgb_of
from vkmsremote.frame import Rect
from vkmsremote.rfb.auth import SecurityPolicy
from vkmsremote.rfb.constants import Encoding, SecurityType
from vkmsremote.rfb.encodings import samples
from vkmsremote.server.input import RecordingSink

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:asyncvnc")  # its deprecated TripleDES use

W, H = 200, 120
IMG = samples.photo_like(H, W)
IMG[0:40, 0:100] = samples.text_like(40, 100)


async def incremental(client: asyncvnc.Client) -> np.ndarray:
    client.video.refresh()  # incremental, since the client has data
    while await client.read() is not asyncvnc.UpdateType.VIDEO:
        pass
    return client.video.as_rgba()[:, :, :3]


def test_three_zlib_clients_pixel_exact() -> None:
    src = ControlledSource(IMG)
    frames = [IMG]
    for t in (1, 2, 3):
        f = frames[-1].copy()
        f[20 * t:20 * t + 30, 10:190] = samples.photo_like(30, 180, t=t)
        frames.append(f)

    async def main(port: int) -> None:
        async with asyncvnc.connect("127.0.0.1", port) as a, asyncvnc.connect("127.0.0.1", port) as b, \
                asyncvnc.connect("127.0.0.1", port) as c:
            clients = [a, b, c]
            for cl in clients:
                assert np.array_equal((await cl.screenshot())[:, :, :3], rgb_of(IMG))
            for i, f in enumerate(frames[1:], start=1):
                src.set_frame(f, (Rect(0, 20 * i, W, 30),))
                # clients ask at different moments: a every frame, b every other, c only at the end
                assert np.array_equal(await incremental(a), rgb_of(f))
                if i % 2 == 0:
                    assert np.array_equal(await incremental(b), rgb_of(f))
            assert np.array_equal(await incremental(b), rgb_of(frames[-1]))
            assert np.array_equal(await incremental(c), rgb_of(frames[-1]))

    with ServerThread(src) as srv:
        asyncio.run(asyncio.wait_for(main(srv.port), 60))
        recs = srv.records()
    assert len(recs) == 3
    for rec in recs:
        assert rec.client_encodings == (Encoding.ZLIB,)  # asyncvnc really asked for Zlib alone
        assert rec.rect_encodings[Encoding.ZLIB] >= 1


def test_input_and_password() -> None:
    sink = RecordingSink()
    policy = SecurityPolicy(types=(SecurityType.VNC_AUTH,), vnc_password=b"zebra")

    async def main(port: int) -> None:
        with pytest.raises(PermissionError):
            async with asyncvnc.connect("127.0.0.1", port, password="horse"):
                pass
        async with asyncvnc.connect("127.0.0.1", port, password="zebra") as client:
            client.keyboard.write("hi")
            client.mouse.move(12, 34)
            client.mouse.click()
            client.mouse.scroll_down()
            assert np.array_equal((await client.screenshot())[:, :, :3], rgb_of(IMG))  # round trip

    with ServerThread(ControlledSource(IMG), sink=sink, policy=policy) as srv:
        asyncio.run(asyncio.wait_for(main(srv.port), 30))
        recs = srv.records()
    assert recs[0].outcome == "authentication failed" and recs[1].security_type == SecurityType.VNC_AUTH
    assert sink.events == [
        ("key", ord("h"), True), ("key", ord("h"), False), ("key", ord("i"), True), ("key", ord("i"), False),
        ("pointer", 12, 34, 0),
        ("pointer", 12, 34, 1), ("pointer", 12, 34, 0),    # click: button 1 (bit 0)
        ("pointer", 12, 34, 16), ("pointer", 12, 34, 0),   # scroll down: button 5 (bit 4)
    ]

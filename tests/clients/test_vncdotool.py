"""vncdotool (PyPI, Twisted) against the server over loopback: its API with one encoding at a time
(Raw, RRE, Hextile, ZRLE: every lossless encoding it decodes that we produce), pixel-exact full and
incremental frames; VNC authentication (right and wrong password, with the reason string); keyboard and
mouse reaching the InputSink; and the ``vncdo capture`` command line."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clients.support import ControlledSource, ServerThread, rgb_of
from vkmsremote.frame import Rect
from vkmsremote.rfb.auth import SecurityPolicy
from vkmsremote.rfb.constants import Encoding, SecurityType
from vkmsremote.rfb.encodings import samples
from vkmsremote.server.input import RecordingSink

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from vncdotool import api
    from vncdotool.client import AuthenticationError, VNCDoToolClient, VNCDoToolFactory

pytestmark = pytest.mark.filterwarnings("ignore:TripleDES has been moved")  # inside vncdotool

W, H = 160, 96


def picture() -> np.ndarray:
    """Mostly 'text' (flat runs: RRE/Hextile subrectangles, ZRLE palettes) with a 'photo' patch (raw-ish
    tiles, many colours), small enough that RRE stays smaller than Raw for the whole screen."""
    img = samples.text_like(H, W)
    img[8:32, 100:124] = samples.photo_like(24, 24)
    return img


IMG = picture()


@pytest.fixture(scope="module", autouse=True)
def twisted_reactor() -> Iterator[None]:
    yield
    api.shutdown()  # vncdotool's reactor thread cannot be restarted: stop it once, after the module


def factory_for(encoding: int) -> type[VNCDoToolFactory]:
    """A vncdotool factory whose client announces ``encoding`` as its only real encoding."""
    client_cls = type(f"Client{encoding}", (VNCDoToolClient,), {"encoding": encoding})
    return type(f"Factory{encoding}", (VNCDoToolFactory,), {"protocol": client_cls})


def capture(client: Any, incremental: bool = False) -> np.ndarray:
    buf = io.BytesIO()
    client.captureScreen(buf, incremental=incremental, format="PNG")
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@pytest.mark.parametrize("encoding", [Encoding.RAW, Encoding.RRE, Encoding.HEXTILE, Encoding.ZRLE],
                         ids=lambda e: Encoding(e).name)
def test_pixel_exact_per_encoding(encoding: int) -> None:
    src = ControlledSource(IMG)
    with ServerThread(src) as srv:
        client = api.connect(f"127.0.0.1::{srv.port}", factory_class=factory_for(encoding), timeout=30)
        try:
            assert np.array_equal(capture(client), rgb_of(IMG))
            img2 = IMG.copy()
            img2[40:60, 10:150] = samples.text_like(20, 140, seed=9)
            src.set_frame(img2, (Rect(10, 40, 140, 20),))
            assert np.array_equal(capture(client, incremental=True), rgb_of(img2))
        finally:
            client.disconnect()
        [rec] = srv.records()
    # the client really announced just this encoding (plus its pseudo-encodings) and got it
    assert rec.client_encodings[0] == encoding
    assert all(e < 0 for e in rec.client_encodings[1:])
    assert rec.encoding == encoding
    assert rec.rect_encodings[encoding] >= 1
    assert set(rec.rect_encodings) <= {encoding, Encoding.RAW, Encoding.QEMU_EXTENDED_KEY_EVENT}


def test_vnc_auth_and_input() -> None:
    sink = RecordingSink()
    policy = SecurityPolicy(types=(SecurityType.VNC_AUTH,), vnc_password=b"pa55word")
    with ServerThread(ControlledSource(IMG), sink=sink, policy=policy) as srv:
        bad = api.connect(f"127.0.0.1::{srv.port}", password="wrong", timeout=20)
        with pytest.raises(AuthenticationError, match="Authentication failed"):
            bad.keyPress("a")
        client = api.connect(f"127.0.0.1::{srv.port}", password="pa55word", timeout=20)
        try:
            assert np.array_equal(capture(client), rgb_of(IMG))
            client.keyPress("a")
            client.mouseMove(30, 40)
            client.mousePress(1)
            capture(client, incremental=False)  # a round trip: everything before it has been processed
        finally:
            client.disconnect()
        recs = srv.records()
    assert recs[0].outcome == "authentication failed"
    assert recs[1].security_type == SecurityType.VNC_AUTH and recs[1].version == (3, 8)
    assert sink.events == [
        ("key", 0x61, True), ("key", 0x61, False),  # keyPress: down and up
        ("pointer", 30, 40, 0),                     # mouseMove
        ("pointer", 30, 40, 1), ("pointer", 30, 40, 0),  # mousePress: button 1 down and up
    ]


def test_vncdo_capture_command(tmp_path: Path) -> None:
    policy = SecurityPolicy(types=(SecurityType.VNC_AUTH,), vnc_password=b"cmdline")
    out = tmp_path / "shot.png"
    with ServerThread(ControlledSource(IMG), policy=policy) as srv:
        vncdo = Path(sys.executable).with_name("vncdo")
        subprocess.run([str(vncdo), "-s", f"127.0.0.1::{srv.port}", "-p", "cmdline", "capture", str(out)],
                       check=True, timeout=60, capture_output=True)
        [rec] = srv.records()
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), rgb_of(IMG))
    assert rec.security_type == SecurityType.VNC_AUTH and rec.client_encodings[0] == Encoding.RAW

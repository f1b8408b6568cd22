"""noVNC 1.7 (from the npm registry) decodes our Open H.264 in real headless Chromium (WebCodecs).

Debian's novnc is 1.3, without an H.264 decoder; scripts/install-novnc.sh (run by setup-host.sh) unpacks
@novnc/novnc 1.7.0 (pinned, integrity-checked) into /usr/local/share/vkmsremote/novnc. The npm package is
noVNC's core library (no vnc.html app), so the page here is a few lines: ``new RFB(screen, ws://this origin/...)``. noVNC announces encoding
50 only when its own start-up check decodes a real H.264 frame through WebCodecs, so the SetEncodings it
sends proves the browser can decode H.264 at all; then the served frames change wholesale a few times
(motion), the session sends them as H.264, and the canvas must show the last one's colours (read back
with getImageData). The lossless refresh after motion is pushed out of the test's time, so what the
canvas shows is what noVNC's H.264 decoder painted.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from web.test_web_chromium import (
    BLOCK_RGB,
    HEIGHT,
    WIDTH,
    BlockSource,
    WebDriver,
    block_centres,
    browser,
    wait_for,
)

import vkmsremote.server.session as session_module
from vkmsremote.rfb.constants import Encoding
from vkmsremote.server.app import VncServer
from vkmsremote.server.session import Session
from vkmsremote.web.novnc import NPM_ROOT
from vkmsremote.web.server import WebConfig, WebServer, start_web_server

__all__ = ["browser"]  # the pytest fixture used here

T = TypeVar("T")
NOVNC_NPM = NPM_ROOT

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>noVNC 1.7 H.264 test</title></head>
<body style="margin:0"><div id="screen" style="width:480px;height:320px"></div>
<script type="module" src="h264-test.js"></script></body></html>
"""
SCRIPT = """import RFB from './core/rfb.js';
import { supportsWebCodecsH264Decode } from './core/util/browser.js';
window.errors = [];
window.addEventListener('error', e => window.errors.push(String(e.message)));
window.addEventListener('unhandledrejection', e => window.errors.push(String(e.reason)));
window.h264 = supportsWebCodecsH264Decode;
const path = new URLSearchParams(location.search).get('path');
const rfb = new RFB(document.getElementById('screen'), 'ws://' + location.host + '/' + path);
window.rfb = rfb;
window.state = 'connecting';
window.videoFrames = 0;
const display = rfb._display;
const videoFrame = display.videoFrame.bind(display);
display.videoFrame = (...args) => { window.videoFrames++; return videoFrame(...args); };
rfb.addEventListener('connect', () => { window.state = 'connected'; });
rfb.addEventListener('disconnect', e => { window.state = 'disconnected ' + JSON.stringify(e.detail); });
"""
"""The page and its script (a separate file: the server's Content-Security-Policy allows no inline script)."""

MOTION = [  # whole-screen colour changes: each one is damage everywhere
    tuple((r, g, b) for r, g, b in BLOCK_RGB[i:] + BLOCK_RGB[:i]) for i in range(1, 6)
]


@pytest.fixture(scope="module")
def novnc17(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert (NOVNC_NPM / "core/decoders/h264.js").is_file(), (
        f"noVNC 1.7 from npm is missing at {NOVNC_NPM}: run scripts/setup-host.sh (install-novnc.sh)")
    root = tmp_path_factory.mktemp("novnc17")
    for part in ("core", "vendor"):
        shutil.copytree(NOVNC_NPM / part, root / part)
    (root / "vnc.html").write_text(PAGE)
    (root / "h264-test.js").write_text(SCRIPT)
    return root


class H264ServerThread:
    """VncServer + web listener serving noVNC 1.7's page, on an event loop in a thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.source = BlockSource(self.loop)
        self.sessions: list[Session] = []

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.vnc = VncServer(self.source, host="127.0.0.1", port=0)
        self.call(self.vnc.start())

        async def rfb_over_websocket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            session = Session(self.vnc.ctx, reader, writer)
            self.sessions.append(session)
            await session.run()

        self.web: WebServer = self.call(start_web_server(rfb_over_websocket, "127.0.0.1", 0,
                                                         config=WebConfig(novnc_root=self.root)))

    def stop(self) -> None:
        try:
            self.call(self.web.close())
            self.call(self.vnc.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def canvas_colours(browser: WebDriver) -> list[list[int]]:
    centres = block_centres((HEIGHT, WIDTH))
    return list(browser.execute("""
        const c = document.querySelector('#screen canvas');
        const g = c.getContext('2d');
        return arguments[0].map(([y, x]) => Array.from(g.getImageData(x, y, 1, 1).data.slice(0, 3)));
    """, [list(p) for p in centres]))


def close(a: list[int], b: tuple[int, int, int], tol: int = 12) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def test_novnc17_decodes_h264_in_chromium(browser: WebDriver, novnc17: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "LOSSLESS_REFRESH", 120.0)  # nothing repaints after the H.264
    server = H264ServerThread(novnc17)
    server.start()
    try:
        browser.navigate(server.web.url)
        try:
            wait_for("noVNC 1.7 to connect", lambda: browser.execute("return window.state") == "connected", 30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: state {browser.execute('return window.state')!r}, "
                                 f"errors {browser.execute('return window.errors')}") from None
        assert browser.execute("return window.h264") is True, "Chromium's WebCodecs cannot decode H.264 here"
        wait_for("the session", lambda: server.sessions and server.sessions[0].record.client_encodings)
        record = server.sessions[0].record
        assert Encoding.OPEN_H264 in record.client_encodings  # noVNC listed 50 (after CopyRect)
        wait_for("the first frame", lambda: all(close(c, rgb) for c, rgb in
                                                zip(canvas_colours(browser), BLOCK_RGB, strict=True)))
        for colours in MOTION:
            server.source.show(colours)
            time.sleep(0.3)
        last = MOTION[-1]
        try:
            shown = wait_for("the last H.264 frame on the canvas", lambda: (
                lambda got: got if all(close(c, rgb) for c, rgb in zip(got, last, strict=True)) else None)(
                    canvas_colours(browser)), 20)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: canvas {canvas_colours(browser)}, served {last}, "
                                 f"{browser.execute('return [window.videoFrames, window.errors, window.state]')}, "
                                 f"{record.rect_encodings}") from None
        assert record.rect_encodings[Encoding.OPEN_H264] >= 2, record.rect_encodings
        assert server.sessions[0]._motion.video_updates >= 1  # the last pixel update was H.264
        assert browser.execute("return window.videoFrames") >= 2
        assert browser.execute("return window.errors") == []
        assert shown
    finally:
        server.stop()

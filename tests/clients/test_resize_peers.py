"""Clients nobody here wrote resize the served desktop to a size VKMS does not list (1366x1024) and then show
it pixel for pixel: TigerVNC's viewer (RemoteResize: it asks for its window's size) and noVNC 1.7 in Chromium
(resizeSession: it asks for its container's size). The source is the resizable test pattern, static, so
the frame to compare with is known exactly."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from web.test_web_novnc import chromium, page_state, wait_until

from clients.support import ServerThread, rgb_of
from vkmsremote.rfb.constants import Encoding
from vkmsremote.server.app import VncServer
from vkmsremote.server.pattern import PatternSource
from vkmsremote.server.session import Session
from vkmsremote.server.tls import generate_self_signed, server_context
from vkmsremote.web.novnc import NPM_ROOT
from vkmsremote.web.server import WebConfig, WebServer, start_web_server

TARGET = (1366, 1024)


@pytest.fixture
def display() -> Iterator[str]:
    r, w = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1600x1200x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        number = os.read(r, 100).decode().strip()
        assert number, "Xvfb did not report its display number"
        yield f":{number}"
    finally:
        os.close(r)
        xvfb.terminate()
        xvfb.wait(10)


def screenshot(display: str) -> npt.NDArray[np.uint8]:
    done = subprocess.run(["import", "-window", "root", "png:-"], env={**os.environ, "DISPLAY": display},
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return np.asarray(Image.open(io.BytesIO(done.stdout)).convert("RGB"))


def find_exact(shot: npt.NDArray[np.uint8], ref: npt.NDArray[np.uint8], max_offset: int = 48) -> bool:
    """``ref`` somewhere in the top-left corner of ``shot`` (the window manager-less window may sit a few pixels
    off the origin)."""
    h, w = ref.shape[:2]
    for dy in range(max_offset):
        for dx in range(max_offset):
            win = shot[dy:dy + h, dx:dx + w]
            if win.shape == ref.shape and np.array_equal(win[:2], ref[:2]) and np.array_equal(win, ref):
                return True
    return False


def test_tigervnc_remote_resize_to_1366x1024(display: str) -> None:
    src = PatternSource(1024, 768, fps=30, animate=False)
    with ServerThread(src) as srv:
        w, h = TARGET
        viewer = subprocess.Popen(["vncviewer", f"-geometry={w}x{h}+0+0", "-RemoteResize=1", "-SecurityTypes=None",
                                   "-AutoSelect=0", "-PreferredEncoding=ZRLE", "-FullColor=1",
                                   f"127.0.0.1::{srv.port}"],
                                  env={**os.environ, "DISPLAY": display}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 60
            shot = None
            while time.monotonic() < deadline:
                assert viewer.poll() is None, viewer.communicate()[0]
                if (src.width, src.height) == TARGET:
                    shot = screenshot(display)
                    if find_exact(shot, rgb_of(src._buf)):
                        break
                time.sleep(0.5)
            assert (src.width, src.height) == TARGET, f"the viewer did not resize the desktop: {src.width}x{src.height}"
            if shot is None or not find_exact(shot, rgb_of(src._buf)):
                Image.fromarray(shot if shot is not None else np.zeros((1, 1, 3), np.uint8)).save("/tmp/tigervnc-resize.png")
                raise AssertionError("the viewer's window does not show the 1366x1024 frame (/tmp/tigervnc-resize.png)")
            [record] = srv.records()
            assert Encoding.EXTENDED_DESKTOP_SIZE in record.client_encodings
        finally:
            viewer.terminate()
            viewer.communicate(timeout=10)


class WebPattern:
    """Our server with a resizable pattern and the HTTPS web listener (noVNC 1.7), on a background loop."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.source = PatternSource(1024, 768, fps=30, animate=False)
        self.cert, self.key = tmp / "cert.pem", tmp / "key.pem"
        generate_self_signed(self.cert, self.key)
        self.vnc = VncServer(self.source, host="127.0.0.1", port=0)
        self.call(self.vnc.start())
        # ZRLE only: lossless, so the canvas must equal the frame (noVNC asks for JPEG quality 6 otherwise)
        ctx = dataclasses.replace(self.vnc.ctx, encodings=frozenset({Encoding.ZRLE}))
        self.sessions: list[Session] = []

        async def rfb_over_websocket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            session = Session(ctx, reader, writer)
            self.sessions.append(session)
            await session.run()

        self.web: WebServer = self.call(start_web_server(
            rfb_over_websocket, "127.0.0.1", 0, ssl=server_context(self.cert, self.key),
            config=WebConfig(novnc_root=NPM_ROOT, title="XR-0 - vkmsremote")))

    def call(self, coro: object, timeout: float = 20) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def spki_sha256(self) -> str:
        import hashlib

        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()

    def stop(self) -> None:
        try:
            self.call(self.web.close())
            self.call(self.vnc.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def canvas(driver: object, width: int, height: int) -> npt.NDArray[np.uint8] | None:
    data = driver.execute_script(  # type: ignore[attr-defined]
        "const c = document.querySelector('#screen canvas');"
        "if (!c || c.width !== arguments[0] || c.height !== arguments[1]) return null;"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let s = ''; for (let i = 0; i < d.length; i += 0x8000) s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));"
        "return btoa(s);", width, height)
    if data is None:
        return None
    return np.frombuffer(base64.b64decode(data), np.uint8).reshape(height, width, 4)


def test_novnc_resize_session_to_1366x1024(tmp_path: Path) -> None:
    server = WebPattern(tmp_path)
    driver = chromium(server.spki_sha256())
    try:
        driver.get(server.web.url + "?scale=0&resize=1")
        wait_until(driver, "noVNC to connect", lambda d: page_state(d) == "connected")
        # the container noVNC sizes the session after: exactly 1366x1024 CSS pixels (device scale 1)
        driver.execute_script("const s = document.getElementById('screen');"
                              "s.style.flex = '0 0 auto'; s.style.width = arguments[0] + 'px';"
                              "s.style.height = arguments[1] + 'px';", *TARGET)
        w, h = TARGET
        src = server.source

        def exact(d: object) -> bool:
            if (src.width, src.height) != TARGET:
                return False
            got = canvas(d, w, h)
            return got is not None and bool(np.array_equal(got[..., :3], rgb_of(src._buf)))

        try:
            wait_until(driver, "a 1366x1024 session shown exactly", exact, timeout=60)
        except Exception as exc:
            sizes = driver.execute_script(
                "const s = document.getElementById('screen'); const c = s.querySelector('canvas');"
                "return [s.clientWidth, s.clientHeight, s.firstChild.clientWidth, s.firstChild.clientHeight,"
                " c && c.width, c && c.height, window.devicePixelRatio];")
            raise AssertionError(f"{exc}: source {src.width}x{src.height}; #screen, noVNC's div, canvas, DPR: {sizes}; "
                                 f"sessions {[x.record for x in server.sessions]}") from None
        assert page_state(driver) == "connected"
    finally:
        driver.quit()
        server.stop()

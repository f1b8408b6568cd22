"""TigerVNC's viewer (xtigervncviewer 1.12, C++ decoders) under Xvfb against the server.

The viewer's window is screenshotted from the Xvfb root (ImageMagick ``import``) and searched for the
served frame, pixel-exact, for each lossless encoding it can be told to prefer (Raw, Hextile, ZRLE, Tight
with JPEG off). TigerVNC uses continuous updates and fences, so the incremental checks exercise those
paths; VeNCrypt X509Vnc / X509Plain are checked with the viewer trusting our certificate (-X509CA), a wrong
password is refused, and keyboard/mouse input typed with xdotool reaches the InputSink.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from PIL import Image

from clients.support import ControlledSource, ServerThread, rgb_of
from vkmsremote.frame import Rect
from vkmsremote.rfb.auth import SecurityPolicy, obfuscate_vnc_password, plain_checker
from vkmsremote.rfb.constants import Encoding, SecurityType, VeNCryptSubtype
from vkmsremote.rfb.encodings import samples
from vkmsremote.server.input import RecordingSink
from vkmsremote.server.tls import generate_self_signed, server_context

T = TypeVar("T")
VIEWER = shutil.which("xtigervncviewer") or "/usr/bin/xtigervncviewer"
W, H = 320, 200
IMG = samples.text_like(H, W)
IMG[8:72, 100:164] = samples.photo_like(64, 64)
COMMON = ("-geometry", "+0+0", "-AutoSelect=0", "-NoJPEG", "-RemoteResize=0", "-Shared", "-FullColor")


@pytest.fixture(scope="module")
def display(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An Xvfb display (24-bit) and an environment for X clients using it, with a private HOME."""
    home = tmp_path_factory.mktemp("home")
    r, w = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        number = os.read(r, 100).decode().strip()
        assert number, "Xvfb did not report its display number"
        yield dict(os.environ, DISPLAY=f":{number}", HOME=str(home), XAUTHORITY="")
    finally:
        xvfb.terminate()
        xvfb.wait(10)
        os.close(r)  # not earlier: Xvfb may write to it again and would die of SIGPIPE


@contextmanager
def viewer(env: dict[str, str], port: int, *args: str, extra_env: dict[str, str] | None = None
           ) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([VIEWER, *COMMON, *args, f"127.0.0.1::{port}"], env={**env, **(extra_env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def screenshot(env: dict[str, str]) -> np.ndarray:
    done = subprocess.run(["import", "-window", "root", "png:-"], env=env, capture_output=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"import failed: {done.stderr.decode(errors='replace')}")
    return np.asarray(Image.open(io.BytesIO(done.stdout)).convert("RGB"))


def find(shot: np.ndarray, ref: np.ndarray, max_offset: int = 64) -> tuple[int, int] | None:
    """Where ``ref`` appears exactly in ``shot`` (top-left within max_offset), or None."""
    h, w = ref.shape[:2]
    for dy in range(max_offset):
        for dx in range(max_offset):
            window = shot[dy:dy + h, dx:dx + w]
            if window.shape == ref.shape and np.array_equal(window[:4], ref[:4]) and np.array_equal(window, ref):
                return dx, dy
    return None


# Generous: each wait returns as soon as its condition holds, and a loaded 2-core machine (CI, other jobs)
# can take many seconds to start a viewer, shake hands over TLS and let ImageMagick grab the screen.
TIMEOUT = 60.0


def until(what: str, check: Callable[[], T], timeout: float = TIMEOUT) -> T:
    """Poll ``check`` until it returns something true; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def wait_for(env: dict[str, str], pixels: np.ndarray, proc: subprocess.Popen[str], timeout: float = TIMEOUT
             ) -> tuple[int, int]:
    ref = rgb_of(pixels)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the viewer exited ({proc.returncode}): {proc.communicate()[0][-2000:]}")
        where = find(screenshot(env), ref)
        if where is not None:
            return where
        time.sleep(0.2)
    raise AssertionError("the viewer never showed the served frame exactly")


@pytest.mark.parametrize("name", ["Raw", "Hextile", "ZRLE", "Tight"])
def test_pixel_exact_per_encoding(display: dict[str, str], name: str) -> None:
    encoding = Encoding[name.upper()]
    src = ControlledSource(IMG)
    with ServerThread(src) as srv, viewer(display, srv.port, "-SecurityTypes", "None",
                                          "-PreferredEncoding", name) as proc:
        wait_for(display, IMG, proc)
        img2 = IMG.copy()
        img2[100:180, 20:300] = samples.text_like(80, 280, seed=11)
        img2[120:150, 200:260] = samples.photo_like(30, 60, t=3)
        src.set_frame(img2, (Rect(20, 100, 280, 80),))
        wait_for(display, img2, proc)  # pushed by continuous updates, no request from the viewer
        [rec] = srv.records()
    assert rec.encoding == encoding
    # the viewer puts its preferred encoding first among the real ones
    assert next(e for e in rec.client_encodings if 0 <= e < 256) == encoding
    assert rec.rect_encodings[encoding] >= 1
    assert rec.continuous_updates and Encoding.FENCE in rec.client_encodings
    assert rec.pixel_format.bits_per_pixel == 32 and rec.pixel_format.depth == 24


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    generate_self_signed(d / "cert.pem", d / "key.pem")
    return d / "cert.pem", d / "key.pem"


def test_vencrypt_x509vnc(display: dict[str, str], cert: tuple[Path, Path], tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_bytes(obfuscate_vnc_password(b"tls-pw"))
    wrong = tmp_path / "wrong"
    wrong.write_bytes(obfuscate_vnc_password(b"nope"))
    policy = SecurityPolicy(types=(SecurityType.VENCRYPT,), vencrypt_subtypes=(VeNCryptSubtype.X509_VNC,),
                            tls_context=server_context(*cert), vnc_password=b"tls-pw")
    args = ("-SecurityTypes", "X509Vnc", "-X509CA", str(cert[0]), "-PreferredEncoding", "ZRLE")
    with ServerThread(ControlledSource(IMG), policy=policy) as srv:
        with viewer(display, srv.port, *args, "-passwd", str(wrong)):  # refused: wait for the server's verdict
            until("the wrong password's outcome", lambda: [r for r in srv.records() if r.outcome != "handshake"])
        with viewer(display, srv.port, *args, "-passwd", str(passwd)) as proc:
            wait_for(display, IMG, proc)
        recs = srv.records()
    assert recs[0].outcome == "authentication failed"
    assert recs[0].vencrypt_subtype == VeNCryptSubtype.X509_VNC
    ok = recs[1]
    assert ok.security_type == SecurityType.VENCRYPT and ok.vencrypt_subtype == VeNCryptSubtype.X509_VNC
    assert ok.tls_version in ("TLSv1.2", "TLSv1.3")
    assert ok.encoding == Encoding.ZRLE


def test_vencrypt_x509plain(display: dict[str, str], cert: tuple[Path, Path]) -> None:
    policy = SecurityPolicy(types=(SecurityType.VENCRYPT,), vencrypt_subtypes=(VeNCryptSubtype.X509_PLAIN,),
                            tls_context=server_context(*cert), check_plain=plain_checker("tiger", "a long passphrase"))
    creds = {"VNC_USERNAME": "tiger", "VNC_PASSWORD": "a long passphrase"}
    with ServerThread(ControlledSource(IMG), policy=policy) as srv, \
            viewer(display, srv.port, "-SecurityTypes", "X509Plain", "-X509CA", str(cert[0]),
                   extra_env=creds) as proc:
        wait_for(display, IMG, proc)
        [rec] = srv.records()
    assert rec.vencrypt_subtype == VeNCryptSubtype.X509_PLAIN and rec.username == "tiger"


def test_keyboard_and_mouse_through_the_viewer(display: dict[str, str]) -> None:
    sink = RecordingSink()
    with ServerThread(ControlledSource(IMG), sink=sink) as srv, \
            viewer(display, srv.port, "-SecurityTypes", "None") as proc:
        dx, dy = wait_for(display, IMG, proc)
        # no window manager: give the viewer the keyboard focus explicitly (its title names the desktop)
        subprocess.run(["xdotool", "search", "--sync", "--name", "controlled", "windowfocus", "--sync"],
                       env=display, check=True, timeout=30)
        xdo = ["xdotool", "mousemove", str(dx + 50), str(dy + 60), "click", "1", "type", "--delay", "20", "ok"]
        subprocess.run(xdo, env=display, check=True, timeout=30)
        until("the click and four key events at the server",
              lambda: sum(e[0] in ("key", "scancode") for e in sink.events) >= 4
              and ("pointer", 50, 60, 0) in sink.events)
    keys = [e for e in sink.events if e[0] in ("key", "scancode")]
    pointer = [e for e in sink.events if e[0] == "pointer"]
    assert ("pointer", 50, 60, 1) in pointer and ("pointer", 50, 60, 0) in pointer
    # TigerVNC announced QEMU extended key events, the server confirmed them, so keys come with scancodes
    assert keys == [("scancode", ord("o"), 0x18, True), ("scancode", ord("o"), 0x18, False),
                    ("scancode", ord("k"), 0x25, True), ("scancode", ord("k"), 0x25, False)]


def test_viewer_resizes_the_desktop(display: dict[str, str]) -> None:
    from vkmsremote.server.pattern import PatternSource

    src = PatternSource(320, 200, animate=False)  # resizable, and still between resizes
    with ServerThread(src) as srv, viewer(display, srv.port, "-SecurityTypes", "None",
                                          "-DesktopSize", "400x300") as proc:

        def resized() -> Any:
            snap = srv.server.hub.snapshot if srv.server else None
            return snap if snap is not None and (snap.width, snap.height) == (400, 300) else None

        snap = until("the viewer's SetDesktopSize to resize the source to 400x300", resized)
        wait_for(display, snap.pixels, proc)
        [rec] = srv.records()
    # the layout rectangle on the first request, then the answer to SetDesktopSize
    assert rec.rect_encodings[Encoding.EXTENDED_DESKTOP_SIZE] >= 2

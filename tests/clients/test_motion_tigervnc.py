"""TigerVNC's viewer 1.15 (Debian 13, built with libavcodec) shows our Open H.264 frames.

Debian 12's viewer is 1.12, without H.264; scripts/setup-host.sh makes a small Debian 13 tree with
tigervnc-viewer in ~/.cache/vkmsremote/trixie-tigervnc, and the viewer runs from it with chroot (root, as
the test suite runs). It draws on an Xvfb of the host reached over TCP (so the chroot needs no mounts) and
connects to the real server on 127.0.0.1. The first frame must appear exactly (lossless), then full motion
follows: the viewer lists encoding 50 itself, the session sends the motion as H.264, and the screenshot
after the last frame must match it within PSNR 30 dB (the lossless refresh after motion is pushed out of
the test's time, so what is on screen is what TigerVNC's H.264 decoder painted).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rfb.test_motion import frames, psnr

import vkmsremote.server.session as session_module
from clients.support import ControlledSource, ServerThread, rgb_of
from vkmsremote.rfb.constants import Encoding

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vkmsremote"
TRIXIE = CACHE / "trixie-tigervnc"
W, H = 640, 400


@pytest.fixture(scope="module")
def tcp_display() -> Iterator[dict[str, str]]:
    """An Xvfb (24-bit) listening on TCP on loopback, without access control (only this test uses it)."""
    assert (TRIXIE / "usr/bin/xtigervncviewer").is_file(), (
        f"TigerVNC 1.15 is missing at {TRIXIE}: run scripts/setup-host.sh")
    assert os.geteuid() == 0, "running the Debian 13 viewer needs chroot, i.e. root"
    r, w = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "800x600x24", "-listen", "tcp", "-ac"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        number = os.read(r, 100).decode().strip()
        assert number, "Xvfb did not report its display number"
        yield {"DISPLAY": f"127.0.0.1:{number}", "HOME": "/tmp", "PATH": "/usr/bin:/bin"}
    finally:
        os.close(r)
        xvfb.terminate()
        xvfb.wait(10)


def screenshot(env: dict[str, str]) -> np.ndarray:
    done = subprocess.run(["import", "-window", "root", "png:-"], env={**os.environ, "DISPLAY": env["DISPLAY"]},
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return np.asarray(Image.open(io.BytesIO(done.stdout)).convert("RGB"))


def find_exact(shot: np.ndarray, ref: np.ndarray, max_offset: int = 64) -> tuple[int, int] | None:
    h, w = ref.shape[:2]
    for dy in range(max_offset):
        for dx in range(max_offset):
            win = shot[dy:dy + h, dx:dx + w]
            if win.shape == ref.shape and np.array_equal(win[:4], ref[:4]) and np.array_equal(win, ref):
                return dx, dy
    return None


def test_tigervnc_115_shows_h264(tcp_display: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "LOSSLESS_REFRESH", 120.0)
    # the workload's sliding texture with its brightness changing too: video, not a move (TigerVNC lists
    # CopyRect, and a pure translation would rightly go out as CopyRect)
    seq = []
    for i, (img, damage) in enumerate(frames("full-motion", 16, W, H)):
        img = img.copy()
        img[..., :3] = np.clip(img[..., :3].astype(np.int16) + (i * 9) % 40 - 20, 0, 255).astype(np.uint8)
        seq.append((img, damage))
    src = ControlledSource(seq[0][0])
    with ServerThread(src) as srv:
        proc = subprocess.Popen([shutil.which("chroot") or "/usr/sbin/chroot", str(TRIXIE), "/usr/bin/xtigervncviewer", "-geometry", "+0+0",
                                 "-SecurityTypes", "None", "-Shared", "-FullColor", "-RemoteResize=0",
                                 "-AutoSelect=0", "-NoJPEG", "-PreferredEncoding", "ZRLE",
                                 f"127.0.0.1::{srv.port}"],
                                env=tcp_display, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            ref = rgb_of(seq[0][0])
            where = None
            deadline = time.monotonic() + 30
            while where is None and time.monotonic() < deadline:
                assert proc.poll() is None, f"the viewer exited: {proc.communicate()[0][-2000:]}"
                where = find_exact(screenshot(tcp_display), ref)
                time.sleep(0.2)
            assert where is not None, "TigerVNC 1.15 never showed the first frame exactly"
            for img, damage in seq[1:]:
                src.set_frame(img, damage)
                time.sleep(0.15)
            dx, dy = where
            last = rgb_of(seq[-1][0])
            score = 0.0
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                shot = screenshot(tcp_display)[dy:dy + H, dx:dx + W]
                score = psnr(shot, last)
                if score >= 30:
                    break
                time.sleep(0.3)
            [rec] = srv.records()
            assert proc.poll() is None, f"the viewer exited: {proc.communicate()[0][-2000:]}"
        finally:
            proc.terminate()
            try:
                log = proc.communicate(timeout=10)[0]
            except subprocess.TimeoutExpired:
                proc.kill()
                log = proc.communicate()[0]
    assert Encoding.OPEN_H264 in rec.client_encodings, rec.client_encodings  # the viewer lists 50 itself
    assert rec.rect_encodings[Encoding.OPEN_H264] >= 2, (rec.rect_encodings, log[-2000:])
    print(f"TigerVNC 1.15: last frame on screen at PSNR {score:.1f} dB, {rec.rect_encodings}")
    assert score >= 30, f"PSNR {score:.1f} dB of the last frame on screen; viewer log: {log[-2000:]}"

"""vncsnapshot (Debian; TightVNC 1.2.8 / RealVNC 3.3.7 code, a C client speaking RFB 3.3) against the
server: one encoding at a time (Raw, RRE, Hextile, Zlib, Tight without JPEG), with its own pixel format
(red at bit 0, so the server converts), and VNC authentication from a vncpasswd file. vncsnapshot only
writes JPEG files, so frames are compared by PSNR (q100, measured ~66 dB when right; a swapped channel
or a one-pixel shift gives ~20 dB)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clients.support import ControlledSource, ServerThread, rgb_of
from vkmsremote.rfb.auth import SecurityPolicy, obfuscate_vnc_password
from vkmsremote.rfb.constants import Encoding, SecurityType
from vkmsremote.rfb.encodings import samples
from vkmsremote.rfb.pixelformat import PixelFormat

VNCSNAPSHOT = shutil.which("vncsnapshot") or "/usr/bin/vncsnapshot"
W, H = 160, 96
IMG = samples.text_like(H, W)
IMG[8:32, 100:124] = samples.photo_like(24, 24)
ENCODINGS = {"raw": Encoding.RAW, "rre": Encoding.RRE, "hextile": Encoding.HEXTILE, "zlib": Encoding.ZLIB,
             "tight": Encoding.TIGHT}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.int64) - b.astype(np.int64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def snapshot(port: int, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VNCSNAPSHOT, "-quiet", *args, f"127.0.0.1::{port}", str(out)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_snapshot_per_encoding(name: str, tmp_path: Path) -> None:
    out = tmp_path / "shot.jpg"
    with ServerThread(ControlledSource(IMG)) as srv:
        result = snapshot(srv.port, out, "-encodings", name, "-nojpeg")
        [rec] = srv.records()
    assert result.returncode == 0, result.stderr
    got = np.asarray(Image.open(out).convert("RGB"))
    assert got.shape == (H, W, 3)
    assert psnr(got, rgb_of(IMG)) > 50
    encoding = ENCODINGS[name]
    assert rec.version == (3, 3)  # vncsnapshot speaks RFB 3.3
    assert rec.client_encodings[0] == encoding and rec.encoding == encoding
    assert rec.rect_encodings[encoding] >= 1
    assert rec.pixel_format == PixelFormat(32, 24, False, True, 255, 255, 255, 0, 8, 16)


def test_vnc_auth_from_password_file(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.passwd", tmp_path / "bad.passwd"
    good.write_bytes(obfuscate_vnc_password(b"snap-pw"))
    bad.write_bytes(obfuscate_vnc_password(b"not-it"))
    policy = SecurityPolicy(types=(SecurityType.VNC_AUTH,), vnc_password=b"snap-pw")
    with ServerThread(ControlledSource(IMG), policy=policy) as srv:
        refused = snapshot(srv.port, tmp_path / "no.jpg", "-passwd", str(bad))
        accepted = snapshot(srv.port, tmp_path / "yes.jpg", "-passwd", str(good))
        recs = srv.records()
    assert refused.returncode != 0 and not (tmp_path / "no.jpg").exists()
    assert recs[0].outcome == "authentication failed" and recs[0].version == (3, 3)
    assert accepted.returncode == 0, accepted.stderr
    assert recs[1].security_type == SecurityType.VNC_AUTH
    assert psnr(np.asarray(Image.open(tmp_path / "yes.jpg").convert("RGB")), rgb_of(IMG)) > 50

"""``vkmsremote serve`` end to end (a subprocess, captured by vncdotool's ``vncdo``), its refusals, the
security defaults, the cached self-signed certificate, and PatternSource."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vkmsremote.errors import UsageError
from vkmsremote.rfb.constants import SecurityType, VeNCryptSubtype
from vkmsremote.server.app import security_policy
from vkmsremote.server.pattern import PatternSource
from vkmsremote.server.tls import ensure_certificate

BIN = Path(sys.executable).parent


def test_serve_command_serves_the_pattern(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "cfg"), VKMSREMOTE_PASSWORD="cli-pw")
    proc = subprocess.Popen([str(BIN / "vkmsremote"), "serve", "--size", "320x200", "--port", "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"port (\d+)", line)
        assert m, line
        out = tmp_path / "shot.png"
        subprocess.run([str(BIN / "vncdo"), "-s", f"127.0.0.1::{m.group(1)}", "-p", "cli-pw", "capture", str(out)],
                       check=True, timeout=60, capture_output=True)
        img = np.asarray(Image.open(out).convert("RGB"))
        assert img.shape == (200, 320, 3)
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # the gradient, not a blank screen
        # a password given: VeNCrypt was offered too, so the certificate was made on first use
        assert (tmp_path / "cfg" / "vkmsremote" / "tls" / "key.pem").is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


def test_serve_refuses_open_listen_without_password() -> None:
    done = subprocess.run([str(BIN / "vkmsremote"), "serve", "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "VKMSREMOTE_PASSWORD"})
    assert done.returncode == 2
    assert "without authentication" in done.stderr and "--insecure-listen" in done.stderr


def test_security_defaults(tmp_path: Path) -> None:
    assert security_policy().types == (SecurityType.NONE,)
    p = security_policy(password="pw", tls_cert=None, tls_key=None, tls_dir=tmp_path / "tls")
    assert p.types == (SecurityType.RA2_256, SecurityType.RA2, SecurityType.RA2NE_256, SecurityType.RA2NE,
                       SecurityType.VENCRYPT, SecurityType.VNC_AUTH)  # RSA-AES first (tests/rfb/test_rfb_rsaaes.py)
    assert p.vencrypt_subtypes == (VeNCryptSubtype.X509_VNC,) and p.authenticates
    p = security_policy(password="pw", username="u", tls_dir=tmp_path / "tls")
    assert p.vencrypt_subtypes == (VeNCryptSubtype.X509_VNC, VeNCryptSubtype.X509_PLAIN)
    assert p.check_plain is not None and p.check_plain("u", "pw") and not p.check_plain("u", "p")
    p = security_policy(types=["X509None", "None"], tls_dir=tmp_path / "tls")
    assert p.types == (SecurityType.VENCRYPT, SecurityType.NONE) and not p.authenticates
    with pytest.raises(UsageError, match="unknown security type"):
        security_policy(types=["tlsnone"])
    with pytest.raises(UsageError, match="needs a password"):
        security_policy(types=["vncauth"])


def test_certificate_is_cached_with_private_permissions(tmp_path: Path) -> None:
    d = tmp_path / "tls"
    cert, key = ensure_certificate(directory=d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = cert.read_bytes()
    assert ensure_certificate(directory=d) == (cert, key) and cert.read_bytes() == first  # reused, not remade
    with pytest.raises(UsageError, match="both"):
        ensure_certificate(cert, None)


def test_pattern_source_moves_and_reports_damage() -> None:
    async def main() -> None:
        src = PatternSource(320, 200, fps=200)
        f0 = await src.next_frame()
        assert f0.damage is None and f0.pixels.shape == (200, 320, 4)
        before = f0.pixels.copy()
        f1 = await src.next_frame()
        assert f1.serial == 2 and f1.damage
        changed = np.argwhere((f1.pixels != before).any(axis=2))
        inside = np.zeros((200, 320), bool)
        for r in f1.damage:
            inside[r.y:r.y + r.h, r.x:r.x + r.w] = True
        assert len(changed) and inside[changed[:, 0], changed[:, 1]].all()  # every change is in the damage
        full = PatternSource(64, 32, fps=200, full_motion=True)
        a = (await full.next_frame()).pixels.copy()
        b = (await full.next_frame()).pixels
        assert (a != b).any(axis=2).all()  # full motion: every pixel changes
        assert src.request_resize(400, 300) == 0
        f2 = await src.next_frame()
        assert f2.pixels.shape == (300, 400, 4) and f2.damage is None
        assert PatternSource(64, 32, resizable=False).request_resize(100, 100) == 1
    asyncio.run(main())


def test_source_failure_ends_sessions_and_serve_forever() -> None:
    from clients.support import RawClient

    from vkmsremote.errors import DrmError
    from vkmsremote.rfb.messages import FramebufferUpdateRequest
    from vkmsremote.server.app import VncServer

    class DyingSource(PatternSource):
        async def next_frame(self):  # type: ignore[no-untyped-def]
            frame = await super().next_frame()
            if frame.serial > 2:
                raise DrmError("GETFB2", 19)  # ENODEV: the card went away
            return frame

    async def main() -> None:
        server = VncServer(DyingSource(64, 32, fps=50), port=0)
        await server.start()
        forever = asyncio.ensure_future(server.serve_forever())
        c = RawClient()
        await c.connect(server.port)
        c.send(FramebufferUpdateRequest(False, 0, 0, 64, 32))
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            for _ in range(10):  # keep asking, so that the hub keeps fetching frames
                await c.read_message(5)
                c.send(FramebufferUpdateRequest(True, 0, 0, 64, 32))
        with pytest.raises(DrmError, match="GETFB2"):
            await asyncio.wait_for(forever, 10)
        assert "frame source failed" in server.records[0].outcome
        await server.close()
    asyncio.run(main())

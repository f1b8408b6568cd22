"""View-only passwords (TigerVNC's second vncpasswd password): the auth decision in the sans-IO protocol
(RFB 3.3, 3.7, 3.8, with vncdotool's own DES computing the responses), a real client (vncdotool, in a
subprocess so its Twisted reactor is its own) whose input never reaches the InputSink while a
full-access client's does, X509Vnc and X509Plain through OpenSSL, what else a view-only session may not
do (clipboard from the server, resizing, exclusive access), the blacklist, and the options of
``vkmsremote serve`` and ``vkmsremote up``. TigerVNC's viewer (X509Vnc, a vncpasswd file) under Xvfb too."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clients.support import ControlledSource, RawClient, ServerThread, rgb_of
from clients.support import serving as serving_process
from clients.test_tigervnc import IMG as TIGER_IMG
from clients.test_tigervnc import display as xvfb_display  # noqa: F401 (a fixture: Xvfb)
from clients.test_tigervnc import viewer, wait_for
from PIL import Image
from vncdotool import rfb as vncdotool_rfb

from vkmsremote import cli
from vkmsremote.errors import UsageError
from vkmsremote.frame import Rect
from vkmsremote.rfb.auth import Access, SecurityPolicy, obfuscate_vnc_password, plain_checker, vnc_auth_access
from vkmsremote.rfb.constants import Encoding, SecurityType, VeNCryptSubtype
from vkmsremote.rfb.encodings import samples
from vkmsremote.rfb.messages import (
    ClientCutText,
    FramebufferUpdateRequest,
    KeyEvent,
    PointerEvent,
    QemuExtendedKeyEvent,
    Screen,
    SetDesktopSize,
)
from vkmsremote.rfb.protocol import (
    NEED_DATA,
    AuthenticationFailed,
    AuthenticationSucceeded,
    ConnectionClosed,
    ServerConnection,
)
from vkmsremote.server.app import VncServer, security_policy
from vkmsremote.server.blacklist import Blacklist
from vkmsremote.server.hub import SCREEN_ID
from vkmsremote.server.input import InputSink, RecordingSink
from vkmsremote.server.pattern import PatternSource
from vkmsremote.server.tls import generate_self_signed, server_context
from vkmsremote.service.serve import _password, _view_only_password
from vkmsremote.service.up import check_options

BIN = Path(sys.executable).parent
W, H = 96, 64
IMG = samples.photo_like(H, W)
CHALLENGE = bytes(range(100, 116))
FULL, VIEW = b"full-pw", b"look-pw"
POLICY = SecurityPolicy(types=(SecurityType.VNC_AUTH,), vnc_password=FULL, vnc_view_only_password=VIEW)


@pytest.fixture(autouse=True)
def no_password_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VKMSREMOTE_PASSWORD", raising=False)
    monkeypatch.delenv("VKMSREMOTE_VIEW_ONLY_PASSWORD", raising=False)


def vncdotool_response(password: bytes, challenge: bytes) -> bytes:
    """The answer vncdotool's client computes (its own key bit-reversal and DES, not ours)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vncdotool uses the deprecated TripleDES location
        key = vncdotool_rfb._vnc_des(password.decode())
        return bytes(vncdotool_rfb.des_encrypt(key, challenge[:8]) + vncdotool_rfb.des_encrypt(key, challenge[8:]))


def events(conn: ServerConnection) -> list[object]:
    out: list[object] = []
    while (ev := conn.next_event()) is not NEED_DATA:
        out.append(ev)
        if isinstance(ev, ConnectionClosed):
            break
    return out


# --- the auth decision, sans-IO ------------------------------------------------------------------------------


def vnc_auth(version: bytes, password: bytes, policy: SecurityPolicy = POLICY, *,
             byte_at_a_time: bool = False) -> tuple[list[object], bytes]:
    """A VNC-auth handshake up to the SecurityResult; the events and the bytes the server sent after
    the challenge."""
    conn = ServerConnection(policy, random_bytes=lambda n: CHALLENGE[:n])
    assert conn.data_to_send() == b"RFB 003.008\n"
    conn.receive_data(version)
    assert events(conn) == []
    out = conn.data_to_send()
    if version == b"RFB 003.003\n":
        assert out == struct.pack(">I", SecurityType.VNC_AUTH) + CHALLENGE  # the server picks VNC auth
    else:
        assert out == bytes([1, SecurityType.VNC_AUTH])  # one type offered: VNC auth
        conn.receive_data(bytes([SecurityType.VNC_AUTH]))
        assert events(conn) == []
        assert conn.data_to_send() == CHALLENGE
    response = vncdotool_response(password, CHALLENGE)
    seen: list[object] = []
    for chunk in ([response[i:i + 1] for i in range(16)] if byte_at_a_time else [response]):
        conn.receive_data(chunk)
        seen += events(conn)
    return seen, conn.data_to_send()


@pytest.mark.parametrize("version", [b"RFB 003.003\n", b"RFB 003.007\n", b"RFB 003.008\n"],
                         ids=["3.3", "3.7", "3.8"])
def test_vnc_auth_accepts_both_passwords(version: bytes) -> None:
    v = (3, int(version[8:11]))
    evs, out = vnc_auth(version, FULL)
    assert evs == [AuthenticationSucceeded(v, SecurityType.VNC_AUTH, None, None, view_only=False)]
    assert out == bytes(4)  # SecurityResult 0: OK
    evs, out = vnc_auth(version, VIEW, byte_at_a_time=True)
    assert evs == [AuthenticationSucceeded(v, SecurityType.VNC_AUTH, None, None, view_only=True)]
    assert out == bytes(4)
    evs, out = vnc_auth(version, b"guess")
    assert [type(e) for e in evs] == [AuthenticationFailed, ConnectionClosed]
    # SecurityResult 1: failed; the reason string exists only from 3.8 on
    assert out == bytes([0, 0, 0, 1]) + (struct.pack(">I", 21) + b"Authentication failed" if v == (3, 8) else b"")


def test_without_a_view_only_password_only_the_full_one_works() -> None:
    policy = SecurityPolicy(types=(SecurityType.VNC_AUTH,), vnc_password=FULL)
    assert isinstance(vnc_auth(b"RFB 003.008\n", VIEW, policy)[0][0], AuthenticationFailed)
    [ev] = vnc_auth(b"RFB 003.008\n", FULL, policy)[0]
    assert isinstance(ev, AuthenticationSucceeded) and not ev.view_only


def test_full_access_is_tried_first() -> None:
    response = vncdotool_response(b"same", CHALLENGE)
    assert vnc_auth_access(b"same", b"same", CHALLENGE, response) is Access.FULL
    assert vnc_auth_access(b"other", b"same", CHALLENGE, response) is Access.VIEW_ONLY
    assert vnc_auth_access(b"other", None, CHALLENGE, response) is None
    # only 8 bytes count (RFC 6143 7.2.2): a longer password proves itself by its first 8
    assert vnc_auth_access(b"x", b"samesame-and-more", CHALLENGE,
                           vncdotool_response(b"samesame", CHALLENGE)) is Access.VIEW_ONLY


def test_policy_refuses_view_only_passwords_that_cannot_work() -> None:
    with pytest.raises(UsageError, match="needs a full-access password"):
        SecurityPolicy(types=(SecurityType.NONE,), vnc_view_only_password=VIEW)
    with pytest.raises(UsageError, match="first 8 bytes"):  # VNC auth could not tell them apart
        SecurityPolicy(types=(SecurityType.VNC_AUTH,), vnc_password=b"abcdefgh-full",
                       vnc_view_only_password=b"abcdefgh-view")
    with pytest.raises(UsageError, match="no offered security type checks it"):
        SecurityPolicy(types=(SecurityType.NONE,), vnc_password=FULL, vnc_view_only_password=VIEW)
    with pytest.raises(UsageError, match="needs a full-access password"):
        security_policy(view_only_password="look")
    with pytest.raises(UsageError, match="is the full-access password"):
        security_policy(password="same", view_only_password="same")


def test_plain_only_compares_whole_passwords(tmp_path: Path) -> None:
    # X509Plain checks the whole password: 8 equal leading bytes are fine when only it is offered
    p = security_policy(password="abcdefgh-full", username="u", view_only_password="abcdefgh-view",
                        types=["x509plain"], tls_dir=tmp_path / "tls")
    assert p.check_plain is not None and p.check_plain_view_only is not None
    assert p.check_plain("u", "abcdefgh-full") and not p.check_plain("u", "abcdefgh-view")
    assert p.check_plain_view_only("u", "abcdefgh-view") and not p.check_plain_view_only("x", "abcdefgh-view")


# --- a real client: vncdotool ----------------------------------------------------------------------------------

VNCDOTOOL_SCRIPT = r"""
import sys, warnings
warnings.simplefilter("ignore")
from vncdotool import api
from vncdotool.client import AuthenticationError
port, view_pw, full_pw, out = sys.argv[1:5]
server = f"127.0.0.1::{port}"
try:
    bad = api.connect(server, password="wrong-pw", timeout=20)
    try:
        bad.keyPress("x")
        print("wrong password accepted", flush=True)
    except AuthenticationError as e:
        print("wrong password refused:", e, flush=True)
    view = api.connect(server, password=view_pw, timeout=20)
    view.captureScreen(f"{out}/view-first.png")
    view.keyPress("a")
    view.keyDown("shift")  # held when it leaves: nothing may be "released" on its behalf either
    view.mouseMove(30, 40)
    view.mousePress(1)
    view.mouseDown(3)
    view.paste("typed by the viewer")
    view.captureScreen(f"{out}/view-after-input.png")  # a round trip: the input before it was handled
    print("viewer done", flush=True)
    sys.stdin.readline()  # the test changes the picture meanwhile
    view.captureScreen(f"{out}/view-changed.png", incremental=True)
    full = api.connect(server, password=full_pw, timeout=20)
    full.keyPress("b")
    full.mouseMove(10, 20)
    full.mousePress(1)
    full.paste("from the full client")
    full.captureScreen(f"{out}/full.png")
    view.keyPress("c")
    view.captureScreen(f"{out}/view-last.png")
    view.disconnect()
    full.disconnect()
    print("all done", flush=True)
finally:
    api.shutdown()
"""


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def ended_records(srv: ServerThread, count: int) -> list[Any]:
    """The server's session records once ``count`` sessions have ended (clients close before the server
    notices)."""
    deadline = time.monotonic() + 60  # generous for a loaded machine; returns as soon as they have ended
    while time.monotonic() < deadline:
        recs = srv.records()
        if len(recs) == count and all(r.ended is not None for r in recs):
            return recs
        time.sleep(0.01)
    raise AssertionError(f"sessions did not end: {srv.records()}")


def test_vncdotool_view_only_client_injects_nothing_full_client_does(tmp_path: Path) -> None:
    sink = RecordingSink()
    src = ControlledSource(IMG)
    with ServerThread(src, sink=sink, policy=POLICY) as srv:
        proc = subprocess.Popen([sys.executable, "-c", VNCDOTOOL_SCRIPT, str(srv.port), VIEW.decode(), FULL.decode(),
                                 str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdin is not None and proc.stdout is not None
            assert proc.stdout.readline().startswith("wrong password refused: Authentication failed")
            assert proc.stdout.readline() == "viewer done\n", proc.communicate(timeout=30)[1][-2000:]
            assert sink.events == []  # the view-only client's keys, buttons and clipboard went nowhere
            img2 = IMG.copy()
            img2[10:30, 20:70] = samples.text_like(20, 50, seed=3)
            src.set_frame(img2, (Rect(20, 10, 50, 20),))
            out, err = proc.communicate("go\n", timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0 and out.endswith("all done\n"), err[-2000:]
        recs = ended_records(srv, 3)
    # the view-only client saw the right pictures, full and incremental
    assert np.array_equal(png(tmp_path / "view-first.png"), rgb_of(IMG))
    assert np.array_equal(png(tmp_path / "view-after-input.png"), rgb_of(IMG))
    assert np.array_equal(png(tmp_path / "view-changed.png"), rgb_of(img2))
    assert np.array_equal(png(tmp_path / "view-last.png"), rgb_of(img2))
    assert np.array_equal(png(tmp_path / "full.png"), rgb_of(img2))
    # only the full-access client's input arrived, in order; nothing from the viewer's held keys/buttons
    assert sink.events == [
        ("key", 0x62, True), ("key", 0x62, False),
        ("pointer", 10, 20, 0),
        ("pointer", 10, 20, 1), ("pointer", 10, 20, 0),
        ("clipboard", "from the full client"),
    ]
    assert [(r.outcome, r.view_only) for r in recs] == [
        ("authentication failed", False), ("closed by client", True), ("closed by client", False)]


# --- X509Vnc and X509Plain through OpenSSL ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    generate_self_signed(d / "cert.pem", d / "key.pem")
    return d / "cert.pem", d / "key.pem"


@pytest.fixture(scope="module")
def tls(cert_files: tuple[Path, Path]) -> ssl.SSLContext:
    return server_context(*cert_files)


def _recv(sock: socket.socket | ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


def vencrypt_session(port: int, subtype: VeNCryptSubtype, credential: bytes | tuple[str, str]) -> bool:
    """Log in with VeNCrypt ``subtype`` (X509Vnc: a password; X509Plain: user and password), then send a
    key press and a pointer event and wait for the answer to an update request. True if accepted."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        assert _recv(raw, 12) == b"RFB 003.008\n"
        raw.sendall(b"RFB 003.008\n")
        assert SecurityType.VENCRYPT in _recv(raw, _recv(raw, 1)[0])
        raw.sendall(bytes([SecurityType.VENCRYPT]))
        assert _recv(raw, 2) == b"\x00\x02"  # VeNCrypt 0.2
        raw.sendall(b"\x00\x02")
        assert _recv(raw, 1) == b"\x00"  # version accepted
        n = _recv(raw, 1)[0]
        assert subtype in struct.unpack(f">{n}I", _recv(raw, 4 * n))
        raw.sendall(struct.pack(">I", subtype))
        assert _recv(raw, 1) == b"\x01"  # go ahead with TLS
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            if isinstance(credential, bytes):
                s.sendall(vncdotool_response(credential, _recv(s, 16)))
            else:
                user, pw = (c.encode() for c in credential)
                s.sendall(struct.pack(">II", len(user), len(pw)) + user + pw)
            if _recv(s, 4) != bytes(4):
                return False
            s.sendall(b"\x01")  # ClientInit: shared
            head = _recv(s, 24)
            _recv(s, struct.unpack(">I", head[20:24])[0])  # the desktop name
            s.sendall(KeyEvent(True, 0x71).to_bytes() + PointerEvent(1, 3, 4).to_bytes()
                      + FramebufferUpdateRequest(False, 0, 0, 1, 1).to_bytes())
            assert _recv(s, 1) == b"\x00"  # a FramebufferUpdate: everything before the request was handled
            return True


def test_x509vnc_and_x509plain_view_only(tls: ssl.SSLContext) -> None:
    policy = SecurityPolicy(types=(SecurityType.VENCRYPT,),
                            vencrypt_subtypes=(VeNCryptSubtype.X509_VNC, VeNCryptSubtype.X509_PLAIN),
                            tls_context=tls, vnc_password=FULL, vnc_view_only_password=VIEW,
                            check_plain=plain_checker("ada", "whole full passphrase"),
                            check_plain_view_only=plain_checker("ada", "whole view passphrase"))
    sink = RecordingSink()
    vnc, plain = VeNCryptSubtype.X509_VNC, VeNCryptSubtype.X509_PLAIN
    with ServerThread(ControlledSource(IMG), sink=sink, policy=policy) as srv:
        assert vencrypt_session(srv.port, vnc, VIEW)
        assert vencrypt_session(srv.port, plain, ("ada", "whole view passphrase"))
        assert sink.events == []
        assert not vencrypt_session(srv.port, vnc, b"guess")
        assert not vencrypt_session(srv.port, plain, ("bob", "whole view passphrase"))  # one username only
        assert vencrypt_session(srv.port, vnc, FULL)
        assert vencrypt_session(srv.port, plain, ("ada", "whole full passphrase"))
        recs = ended_records(srv, 6)
    assert [(r.vencrypt_subtype, r.view_only, r.outcome != "authentication failed") for r in recs] == [
        (vnc, True, True), (plain, True, True), (vnc, False, False), (plain, False, False),
        (vnc, False, True), (plain, False, True)]
    # both full-access sessions typed and pointed (and left holding them: released for them)
    assert sink.events.count(("key", 0x71, True)) == 2 and sink.events.count(("pointer", 3, 4, 1)) == 2


def test_tigervnc_viewer_x509vnc_with_the_view_only_password(
        xvfb_display: dict[str, str],  # noqa: F811 (pytest passes the imported fixture)
        tls: ssl.SSLContext, cert_files: tuple[Path, Path], tmp_path: Path) -> None:
    """TigerVNC's own viewer with a vncpasswd file holding the view-only password: it sees the screen,
    and what xdotool types and clicks into it goes nowhere; the same with the full password arrives."""
    display = xvfb_display
    policy = SecurityPolicy(types=(SecurityType.VENCRYPT,), vencrypt_subtypes=(VeNCryptSubtype.X509_VNC,),
                            tls_context=tls, vnc_password=FULL, vnc_view_only_password=VIEW)
    sink = RecordingSink()
    args = ("-SecurityTypes", "X509Vnc", "-X509CA", str(cert_files[0]))  # the viewer trusts our certificate
    results = []
    with ServerThread(ControlledSource(TIGER_IMG), sink=sink, policy=policy) as srv:
        for password in (VIEW, FULL):
            passwd = tmp_path / password.decode()
            passwd.write_bytes(obfuscate_vnc_password(password))
            with viewer(display, srv.port, *args, "-passwd", str(passwd)) as proc:
                dx, dy = wait_for(display, TIGER_IMG, proc)
                subprocess.run(["xdotool", "search", "--sync", "--name", "controlled", "windowfocus", "--sync"],
                               env=display, check=True, timeout=30)
                subprocess.run(["xdotool", "mousemove", str(dx + 50), str(dy + 60), "click", "1", "type", "--delay",
                                "20", "ok"], env=display, check=True, timeout=30)
                # With the full password, wait for what was typed (60 s at most, on a loaded machine). With the
                # view-only one nothing can arrive to wait for: 3 s of nothing, and anything arriving later
                # would still be caught by the second round's exact list of events.
                deadline = time.monotonic() + (3 if password == VIEW else 60)
                while time.monotonic() < deadline and sum(e[0] == "scancode" for e in sink.events) < 4:
                    time.sleep(0.1)
                results.append(list(sink.events))
        recs = ended_records(srv, 2)
    assert results[0] == []
    assert ("pointer", 50, 60, 1) in results[1] and [e for e in results[1] if e[0] == "scancode"] == [
        ("scancode", ord("o"), 0x18, True), ("scancode", ord("o"), 0x18, False),
        ("scancode", ord("k"), 0x25, True), ("scancode", ord("k"), 0x25, False)]
    assert [(r.vencrypt_subtype, r.view_only) for r in recs] == [(VeNCryptSubtype.X509_VNC, True),
                                                                 (VeNCryptSubtype.X509_VNC, False)]


# --- what else a view-only session may not do --------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, None], timeout: float = 30) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.asynccontextmanager
async def serving(source: object, **kwargs: Any) -> Any:
    server = VncServer(source, port=0, policy=POLICY, **kwargs)  # type: ignore[arg-type]
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def connect(server: VncServer, password: bytes, *encodings: int, shared: bool = True) -> RawClient:
    c = RawClient()
    await c.connect(server.port, password=password, shared=shared)
    c.set_encodings(*(encodings or (Encoding.RAW,)))
    return c


def test_view_only_session_gets_no_sink_clipboard_resize_or_exclusive_access() -> None:
    made: list[RecordingSink] = []

    def factory(width: int, height: int) -> InputSink:
        made.append(RecordingSink())
        return made[-1]

    async def main() -> None:
        src = PatternSource(W, H, fps=30, animate=False)  # resizable
        async with serving(src, sink=factory) as srv:
            full = await connect(srv, FULL)
            view = await connect(srv, VIEW, Encoding.RAW, Encoding.EXTENDED_DESKTOP_SIZE, shared=False)
            assert len(made) == 1  # only the full-access session got a sink of its own
            full.send(FramebufferUpdateRequest(False, 0, 0, W, H))
            await full.read_update()  # the view-only client's exclusive request did not disconnect it
            view.send(SetDesktopSize(200, 100, (Screen(SCREEN_ID, 0, 0, 200, 100),)))
            [(x, y, _w, _h, enc, _)] = (await view.read_update()).rects
            assert (x, y, enc) == (1, 1, Encoding.EXTENDED_DESKTOP_SIZE)  # this client: prohibited
            srv.send_clipboard("secret on the clipboard")
            srv.bell()
            assert (await full.read_message()).data == b"secret on the clipboard"
            assert (await view.read_message()).kind == "bell"  # no ServerCutText before the bell
            view.send(KeyEvent(True, 0x61), QemuExtendedKeyEvent(True, 0x62, 0x30), PointerEvent(1, 1, 1),
                      ClientCutText(b"x"), FramebufferUpdateRequest(False, 0, 0, W, H))
            await view.read_update()
            full.send(KeyEvent(True, 0x63), FramebufferUpdateRequest(False, 0, 0, W, H))
            await full.read_update()
            assert made[0].events == [("key", 0x63, True)]
            assert sorted(s.view_only for s in srv.sessions) == [False, True]
    run(main())


def test_server_wide_view_only_with_the_full_password_stays_view_only() -> None:
    async def main() -> None:
        sink = RecordingSink()
        async with serving(ControlledSource(IMG), sink=sink, view_only=True) as srv:
            c = await connect(srv, FULL)
            c.send(KeyEvent(True, 0x61), PointerEvent(1, 1, 1), FramebufferUpdateRequest(False, 0, 0, W, H))
            await c.read_update()
            assert srv.records[0].view_only
        assert sink.events == []
    run(main())


def test_wrong_passwords_still_count_for_the_blacklist() -> None:
    async def main() -> None:
        async with serving(ControlledSource(IMG), blacklist=Blacklist(threshold=2)) as srv:
            for _ in range(2):
                with pytest.raises(PermissionError, match="Authentication failed"):
                    await RawClient().connect(srv.port, password=b"guess")
            for pw in (VIEW, FULL):  # blocked: neither password gets in now
                with pytest.raises(ConnectionRefusedError, match="Too many authentication failures"):
                    await RawClient().connect(srv.port, password=pw)
    run(main())

    async def view_only_success_clears() -> None:
        async with serving(ControlledSource(IMG), blacklist=Blacklist(threshold=2)) as srv:
            with pytest.raises(PermissionError):
                await RawClient().connect(srv.port, password=b"guess")
            await connect(srv, VIEW)  # a right password, if only the view-only one, clears the address
            with pytest.raises(PermissionError):
                await RawClient().connect(srv.port, password=b"guess")
            await connect(srv, FULL)
    run(view_only_success_clears())


# --- the options of `serve` and `up` ------------------------------------------------------------------------------


def secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize(("files", "env", "message"), [
    ({"view": "look-pw"}, {}, "view-only password needs a full-access password"),
    ({}, {"VKMSREMOTE_VIEW_ONLY_PASSWORD": "look-pw"}, "view-only password needs a full-access password"),
    ({"full": "same-pw", "view": "same-pw"}, {}, "the view-only password is the full-access password"),
    ({"full": "abcdefgh-1", "view": "abcdefgh-2"}, {}, "first 8 bytes"),
    ({"full": "full-pw", "view": "look-pw", "mode": "0644"}, {},
     r"view-only password file .* readable or writable by group and others.*chmod 600"),
    ({"full": "full-pw", "view": ""}, {}, "view-only password file .* is empty"),
])
def test_serve_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                       files: dict[str, str], env: dict[str, str], message: str) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    argv = ["serve", "--port", "0", "--size", "32x32"]
    if "full" in files:
        argv += ["--password-file", str(secret(tmp_path / "full", files["full"]))]
    if "view" in files:
        argv += ["--view-only-password-file", str(secret(tmp_path / "view", files["view"],
                                                         int(files.get("mode", "0600"), 8)))]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "look-pw" not in err and "same-pw" not in err  # no secret in the message
    assert "VKMSREMOTE_VIEW_ONLY_PASSWORD" not in os.environ  # read once, then gone


def up_args(*argv: str) -> argparse.Namespace:
    args = cli.build_parser().parse_args(["up", *argv])
    args.argv = ["up", *argv]
    return args


def test_up_has_the_same_password_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full, view = secret(tmp_path / "full", "full-pw"), secret(tmp_path / "view", "look-pw")
    # refused before anything changes: no full-access password at all
    with pytest.raises(UsageError, match="needs a full-access password"):
        check_options(up_args("--view-only-password-file", str(view)))
    args = up_args("--password-file", str(full), "--view-only-password-file", str(view))
    check_options(args)
    assert _view_only_password(args, _password(args)) == "look-pw"
    with pytest.raises(UsageError, match="is the full-access password"):
        args = up_args("--password-file", str(full), "--view-only-password-file", str(full))
        _view_only_password(args, _password(args))
    view.chmod(0o640)
    with pytest.raises(UsageError, match=r"view-only password file .* by group"):
        _view_only_password(args := up_args("--password-file", str(full), "--view-only-password-file", str(view)),
                            _password(args))
    # the environment variable is forwarded into the test VM (vkmsremote.service.vm) like the full one
    monkeypatch.setenv("VKMSREMOTE_VIEW_ONLY_PASSWORD", "look-pw")
    check_options(up_args("--vm", "--password-file", str(full)))
    # --password: refused as in serve, and accepted with --allow-password-argument
    with pytest.raises(UsageError, match="--password would show") as refused:
        _password(up_args("--password", "argpw"))
    assert "--allow-password-argument" in (refused.value.hint or "")
    assert _password(up_args("--password", "argpw", "--allow-password-argument")) == "argpw"


def test_serve_command_accepts_the_view_only_password(tmp_path: Path) -> None:
    full = secret(tmp_path / "full", "full-pw")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "VKMSREMOTE_VIEW_ONLY_PASSWORD": "look-pw"}
    with serving_process("--password-file", str(full), "--security", "vncauth", env=env, debug=True) as (proc, port):
        results = {}
        for pw in ("look-pw", "full-pw", "guessed"):
            done = subprocess.run([str(BIN / "vncdo"), "-s", f"127.0.0.1::{port}", "-p", pw, "capture",
                                   str(tmp_path / f"{pw}.png")], capture_output=True, text=True, timeout=60)
            results[pw] = done.returncode
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert results == {"look-pw": 0, "full-pw": 0, "guessed": results["guessed"]} and results["guessed"] != 0
    assert png(tmp_path / "look-pw.png").shape == (48, 64, 3)
    authenticated = [line for line in err.splitlines() if "authenticated" in line]
    assert len(authenticated) == 2 and "view-only password" in authenticated[0]
    assert "view-only" not in authenticated[1]
    assert "look-pw" not in err and "full-pw" not in err

"""The clipboard in the RFB layer: plain Cut Text (Latin-1, RFC 6143 7.5.6 / 7.6.4) and the Extended
Clipboard pseudo-encoding (rfbproto: UTF-8 text, caps / request / peek / notify / provide), capped both ways.

Tiers: the message format byte by byte; ServerConnection fed one byte at a time; hostile input (a 100 MB
message, a zlib bomb, invalid UTF-8) refused or cut with the session going on; real clients nobody here
wrote: vncdotool (plain cut text both ways) and noVNC 1.7 in Chromium (Extended Clipboard both ways).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clients.test_tigervnc import display  # noqa: F401 (the Xvfb fixture the TigerVNC test uses)
from hypothesis import given, settings
from hypothesis import strategies as st
from selenium import webdriver
from web.test_web_novnc import HttpsServer, page_state, wait_until

from rfb.test_rfb_protocol import events, finish_init, server
from vkmsremote.errors import ProtocolError, RemoteProtocolError
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.messages import (
    MAX_EXTENDED_CLIPBOARD,
    ClientCutText,
    ClipboardAction,
    ClipboardFormat,
    ExtendedClipboard,
    SetEncodings,
)
from vkmsremote.rfb.protocol import ClientCutTextDiscarded, ServerConnection

TEXT = "Grüße ✓\nzweite Zeile"
EXT = Encoding.EXTENDED_CLIPBOARD & 0xFFFFFFFF  # 0xC0A1E5CE on the wire


def normal_connection(extended: bool = True) -> ServerConnection:
    conn = server()
    conn.receive_data(b"RFB 003.008\n")
    conn.data_to_send()
    conn.receive_data(b"\x01")  # security type None
    events(conn)
    conn.data_to_send()
    finish_init(conn)
    if extended:
        conn.receive_data(SetEncodings((Encoding.RAW, Encoding.EXTENDED_CLIPBOARD)).to_bytes())
        assert events(conn) == [SetEncodings((Encoding.RAW, Encoding.EXTENDED_CLIPBOARD))]
        assert conn.extended_clipboard
    return conn


# --- the message format -------------------------------------------------------------------------------------


def test_extended_clipboard_bytes() -> None:
    assert ExtendedClipboard.caps(ClipboardAction.REQUEST | ClipboardAction.NOTIFY,
                                  {ClipboardFormat.TEXT: 1 << 20}).to_bytes() == bytes.fromhex(
        "03 000000"  # ServerCutText, padding
        "fffffff8"  # length -8: Extended Clipboard, 8 bytes follow
        "0b000001"  # flags: notify (1<<27) | request (1<<25) | caps (1<<24), format text (1<<0)
        "00100000"  # text: up to 1 MiB
    )
    assert ExtendedClipboard.request().to_client_bytes() == bytes.fromhex("06 000000 fffffffc 02000001")
    provide = ExtendedClipboard.provide_text("a\nb")
    assert provide.to_bytes()[:8] == struct.pack(">B3xi", 3, -(4 + len(provide.payload)))
    assert zlib.decompress(provide.payload) == b"\x00\x00\x00\x05a\r\nb\x00"  # size 5, CRLF, NUL-terminated
    assert provide.provided_text(100) == ("a\nb", False)
    parsed = ExtendedClipboard.from_bytes(provide.to_client_bytes())
    assert parsed == provide and parsed.action is ClipboardAction.PROVIDE


def test_caps_sizes_and_short_caps() -> None:
    caps = ExtendedClipboard(int(ClipboardAction.CAPS | ClipboardFormat.TEXT | ClipboardFormat.HTML),
                             struct.pack(">II", 1000, 2000))
    assert caps.caps_sizes() == {ClipboardFormat.TEXT: 1000, ClipboardFormat.HTML: 2000}
    with pytest.raises(RemoteProtocolError, match="fewer sizes"):
        ExtendedClipboard(int(ClipboardAction.CAPS | ClipboardFormat.TEXT)).caps_sizes()


def test_zlib_bomb_inflates_only_to_the_cap() -> None:
    bomb_text = b"\x10\x00\x00\x00" + b"A" * (100 << 20)  # claims 256 MiB of text, holds 100 MiB
    payload = zlib.compress(bomb_text, 9)
    assert len(payload) < MAX_EXTENDED_CLIPBOARD  # ~100 kB on the wire: the message itself is accepted
    message = ExtendedClipboard(int(ClipboardAction.PROVIDE | ClipboardFormat.TEXT), payload)
    tracemalloc.start()
    try:
        text, truncated = message.provided_text(1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert truncated and text == "A" * (1 << 20)
    assert peak < 16 << 20, f"inflating the bomb peaked at {peak} bytes"


def test_invalid_utf8_and_bad_zlib() -> None:
    bad = ExtendedClipboard(int(ClipboardAction.PROVIDE | ClipboardFormat.TEXT),
                            zlib.compress(b"\x00\x00\x00\x04a\xff\xfe\x00"))
    assert bad.provided_text(100) == ("a\ufffd\ufffd", False)
    with pytest.raises(RemoteProtocolError, match="bad zlib"):
        ExtendedClipboard(int(ClipboardAction.PROVIDE | ClipboardFormat.TEXT), b"not zlib").provided_text(100)


# --- ServerConnection ---------------------------------------------------------------------------------------


def test_extended_message_one_byte_at_a_time() -> None:
    conn = normal_connection()
    wire = ExtendedClipboard.provide_text(TEXT).to_client_bytes()
    got: list[object] = []
    for i in range(len(wire)):
        conn.receive_data(wire[i:i + 1])
        got += events(conn)
    assert len(got) == 1 and isinstance(got[0], ExtendedClipboard)
    assert got[0].provided_text(1 << 20) == (TEXT, False)


def test_negative_length_without_the_pseudo_encoding_is_a_protocol_error() -> None:
    conn = normal_connection(extended=False)
    conn.receive_data(ExtendedClipboard.request().to_client_bytes())
    with pytest.raises(RemoteProtocolError, match="not negotiated"):
        events(conn)


@pytest.mark.parametrize("extended", [False, True])
def test_a_100_mb_cut_text_is_skipped_and_the_connection_goes_on(extended: bool) -> None:
    conn = normal_connection()
    size = 100 << 20
    header = struct.pack(">B3xi", 6, -size if extended else size)
    conn.receive_data(header)
    assert events(conn) == [ClientCutTextDiscarded(size)]
    chunk = bytes(1 << 20)
    for _ in range(100):
        conn.receive_data(chunk)
        assert events(conn) == []
    conn.receive_data(ClientCutText(b"ok").to_bytes())
    assert events(conn) == [ClientCutText(b"ok")]


# --- sessions with real clients -------------------------------------------------------------------------------


VNCDOTOOL_CUT_TEXT = r"""
import sys, time
from vncdotool import api
client = api.connect(f"127.0.0.1::{sys.argv[1]}", timeout=60)
received = []
client.refreshScreen(incremental=False)
client.protocol.copy_text = received.append  # vncdotool's hook for ServerCutText
print("ready", flush=True)
sys.stdin.readline()  # the test has had the server send its clipboard
deadline = time.monotonic() + 60
while not received and time.monotonic() < deadline:
    client.refreshScreen(incremental=False)
print(ascii(received), flush=True)
client.paste("Grüße aus dem Client")
client.refreshScreen(incremental=False)  # a round trip: the ClientCutText before it has gone out
client.disconnect()
api.shutdown()
"""


def test_vncdotool_plain_cut_text_both_ways(tmp_path: Path) -> None:
    """vncdotool has no Extended Clipboard: it gets Latin-1 ServerCutText and sends ClientCutText. (It runs in a
    process of its own: vncdotool's threaded API runs Twisted's reactor, which cannot start twice in one process.)"""
    import subprocess
    import sys

    server_ = HttpsServer(tmp_path, None, frozenset({Encoding.RAW}))
    proc = subprocess.Popen([sys.executable, "-c", VNCDOTOOL_CUT_TEXT, str(server_.vnc.port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    try:
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        deadline = time.monotonic() + 60
        while not server_.vnc.ctx.sessions and time.monotonic() < deadline:
            time.sleep(0.05)
        server_.loop.call_soon_threadsafe(server_.vnc.send_clipboard, "Grüße")
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == ascii(["Grüße"])  # within Latin-1: exactly
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
        while not any(e[0] == "clipboard" for e in server_.sink.events) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ("clipboard", "Grüße aus dem Client") in server_.sink.events
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        server_.stop()


def test_novnc17_extended_clipboard_both_ways(tmp_path: Path, browser: Callable[[str], webdriver.Chrome],
                                              caplog: pytest.LogCaptureFixture) -> None:
    server_ = HttpsServer(tmp_path, None, frozenset({Encoding.ZRLE}))
    try:
        driver = browser(server_.spki_sha256())
        driver.get(server_.web.url + "?scale=0&resize=0")
        wait_until(driver, "noVNC to connect", lambda d: page_state(d) == "connected")
        driver.execute_script("window.clips = []; window.vkmsremote.rfb.addEventListener('clipboard',"
                              " (e) => window.clips.push(e.detail.text));")
        record = server_.sessions[0].record
        wait_until(driver, "noVNC's SetEncodings", lambda d: bool(record.client_encodings))
        assert Encoding.EXTENDED_CLIPBOARD in record.client_encodings  # type: ignore[operator]
        session = server_.sessions[0]
        server_.loop.call_soon_threadsafe(session.send_cut_text, TEXT)
        clips = wait_until(driver, "the server's clipboard in noVNC",
                           lambda d: d.execute_script("return window.clips.length ? window.clips : null"))
        assert clips == [TEXT]  # UTF-8 through notify -> request -> provide: not Latin-1 '?'
        driver.execute_script("window.vkmsremote.rfb.clipboardPasteFrom(arguments[0])", "Ça va? ✓ 日本")
        wait_until(driver, "noVNC's clipboard at the server",
                   lambda d: ("clipboard", "Ça va? ✓ 日本") in server_.sink.events)

        # A hostile provide from the same connection (a zlib bomb, then invalid UTF-8) is cut with a log
        # line and the session goes on.
        bomb = ExtendedClipboard(int(ClipboardAction.PROVIDE | ClipboardFormat.TEXT),
                                 zlib.compress(b"\x10\x00\x00\x00" + b"B" * (50 << 20), 9))
        with caplog.at_level(logging.WARNING, logger="vkmsremote.server.session"):
            server_.loop.call_soon_threadsafe(session._handle, bomb)
            deadline = time.monotonic() + 20
            while not any(e == ("clipboard", "B" * (1 << 20)) for e in server_.sink.events):
                assert time.monotonic() < deadline, "the bomb's first MiB never reached the sink"
                time.sleep(0.1)
            assert "cut there" in caplog.text
        assert page_state(driver) == "connected"
    finally:
        server_.stop()


@pytest.fixture(scope="module")
def browser() -> Any:
    from web.test_web_novnc import chromium

    drivers: list[webdriver.Chrome] = []

    def make(spki: str) -> webdriver.Chrome:
        driver = chromium(spki)
        drivers.append(driver)
        return driver

    yield make
    for d in drivers:
        d.quit()



# --- the desktop side: X selections through xclip, on a real X server --------------------------------------


@pytest.fixture
def xvfb() -> Iterator[str]:
    import os
    import subprocess

    name = f":{60 + os.getpid() % 30}"
    proc = subprocess.Popen(["Xvfb", name, "-nolisten", "tcp"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["xkbcomp", "-xkb", name, os.devnull], capture_output=True).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, "Xvfb did not start"
            time.sleep(0.2)
        yield name
    finally:
        proc.terminate()
        proc.wait(10)  # xclip's selection servers exit when their display goes


def test_x_selections_both_ways(xvfb: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from vkmsremote.input.clipboard import XClipboard, open_desktop_clipboard

    monkeypatch.setenv("DISPLAY", xvfb)
    monkeypatch.delenv("SWAYSOCK", raising=False)
    found, why = open_desktop_clipboard()
    assert isinstance(found, XClipboard) and found.display == xvfb, why

    def selection(name: str) -> str:
        return subprocess.run(["xclip", "-display", xvfb, "-selection", name, "-o"], capture_output=True,
                              check=True).stdout.decode()

    clipboard = XClipboard(xvfb, poll=0.1, max_size=64)
    clipboard.set(TEXT).result(30)  # a client pasted: both selections hold it for X applications
    assert selection("clipboard") == TEXT and selection("primary") == TEXT

    seen: list[str] = []

    async def watch_while(action: Callable[[], None], until: Callable[[], bool]) -> None:
        task = asyncio.create_task(clipboard.watch(seen.append))
        await asyncio.sleep(0.3)
        action()
        deadline = time.monotonic() + 10
        while not until() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()

    def x_client_copies(text: str) -> Callable[[], None]:
        return lambda: subprocess.run(["xclip", "-display", xvfb, "-selection", "clipboard", "-i"],
                                      input=text.encode(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      check=True)

    asyncio.run(watch_while(x_client_copies("Kopiert auf XR-0 ✓"), lambda: bool(seen)))
    assert seen == ["Kopiert auf XR-0 ✓"]  # our own TEXT (already there when watching began) was not news
    asyncio.run(watch_while(x_client_copies("x" * 100), lambda: len(seen) > 1))
    assert seen[1] == "x" * 64  # capped at max_size


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 0xFFFFFFFF))
def test_any_extended_clipboard_bytes_parse_or_raise_the_protocol_error(body: bytes, flags: int) -> None:
    conn = normal_connection()
    conn.receive_data(struct.pack(">B3xiI", 6, -(4 + len(body)), flags) + body)
    try:
        got = events(conn)
    except ProtocolError:
        return
    assert len(got) == 1 and isinstance(got[0], ExtendedClipboard)
    try:
        got[0].caps_sizes()
        text, _ = got[0].provided_text(64)
        assert text is None or len(text.encode()) <= 64 * 3  # U+FFFD is 3 bytes in UTF-8
    except RemoteProtocolError:
        pass


def test_tigervnc_viewer_extended_clipboard_both_ways(display: dict[str, str]) -> None:  # noqa: F811
    """TigerVNC's viewer (1.12, Extended Clipboard) under Xvfb: the server's UTF-8 text ends up in the viewer's
    X CLIPBOARD (read with xclip, as any X application pastes), and text copied on the viewer's X display
    reaches the server's sink."""
    import subprocess

    from clients.support import ControlledSource, ServerThread
    from clients.test_tigervnc import IMG, until, viewer, wait_for

    from vkmsremote.server.input import RecordingSink

    env = display
    sink = RecordingSink()
    with ServerThread(ControlledSource(IMG), sink=sink) as srv, \
            viewer(env, srv.port, "-SecurityTypes", "None") as proc:
        wait_for(env, IMG, proc)
        # The viewer asks for the server's clipboard and offers its own only while it has the focus (no
        # window manager here: give it explicitly; its title names the desktop).
        subprocess.run(["xdotool", "search", "--sync", "--name", "controlled", "windowfocus", "--sync"],
                       env=env, check=True, timeout=30)
        [rec] = srv.records()
        assert Encoding.EXTENDED_CLIPBOARD in rec.client_encodings
        assert srv.server is not None
        srv.loop.call_soon_threadsafe(srv.server.send_clipboard, TEXT)

        def viewer_clipboard() -> str:
            return subprocess.run(["xclip", "-selection", "clipboard", "-o"], env=env, capture_output=True,
                                  timeout=30).stdout.decode()

        until("the server's text in the viewer's X clipboard", lambda: viewer_clipboard() == TEXT)
        subprocess.run(["xclip", "-selection", "clipboard", "-i"], input="vom Viewer ✓".encode(), env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=30)
        until("the viewer's X clipboard at the server", lambda: ("clipboard", "vom Viewer ✓") in sink.events)


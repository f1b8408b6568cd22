"""RFC 6455 framing and handshake (sans-IO), and the web listener over loopback (HTTP + WebSocket)."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vkmsremote.errors import HttpRequestError, WebSocketError
from vkmsremote.server.tls import generate_self_signed, server_context
from vkmsremote.web import http
from vkmsremote.web.server import WebConfig, WebServer, start_web_server
from vkmsremote.web.websocket import (
    NEED_DATA,
    Close,
    CloseCode,
    Data,
    EndOfStream,
    Opcode,
    Ping,
    Pong,
    Role,
    State,
    WebSocketConnection,
    accept_key,
    accept_upgrade,
    apply_mask,
    encode_frame,
)

MASK = bytes([0x37, 0xFA, 0x21, 0x3D])  # the mask of RFC 6455 section 5.7's examples


def events_of(conn: WebSocketConnection) -> list[object]:
    out: list[object] = []
    while (ev := conn.next_event()) is not NEED_DATA:
        out.append(ev)
        if isinstance(ev, EndOfStream):
            break
    return out


def feed(data: bytes, *, bytewise: bool, role: Role = Role.SERVER, **caps: int) -> list[object]:
    """Events from ``data``, fed whole or one byte at a time (the parser must not care)."""
    conn = WebSocketConnection(role, **caps)
    if not bytewise:
        conn.receive_data(data)
        return events_of(conn)
    out: list[object] = []
    for i in range(len(data)):
        conn.receive_data(data[i:i + 1])
        out += events_of(conn)
    return out


def state_of(conn: WebSocketConnection) -> State:
    return conn.state  # (a call, so mypy does not narrow conn.state across sends)


def fail_code(data: bytes, *, role: Role = Role.SERVER, **caps: int) -> int:
    conn = WebSocketConnection(role, **caps)
    conn.receive_data(data)
    with pytest.raises(WebSocketError) as info:
        events_of(conn)
    assert conn.state is State.FAILED
    return info.value.close_code


# ----- handshake -----

def upgrade_request(**overrides: str | None) -> http.Request:
    headers = {
        "host": "127.0.0.1:5800",
        "upgrade": "websocket",
        "connection": "keep-alive, Upgrade",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        "sec-websocket-version": "13",
    }
    for k, v in overrides.items():
        headers[k.replace("_", "-")] = v  # type: ignore[assignment]
    head = "GET /websockify HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items() if v is not None) + "\r\n"
    return http.parse_request_head(head.encode())


def test_accept_key_matches_rfc_example() -> None:
    # RFC 6455 section 1.3: the sample nonce and its accept value
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_upgrade_response_and_subprotocols() -> None:
    hs = accept_upgrade(upgrade_request())
    assert hs.subprotocol is None
    assert hs.response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in hs.response
    assert b"Sec-WebSocket-Protocol" not in hs.response
    hs = accept_upgrade(upgrade_request(sec_websocket_protocol="chat, binary"))
    assert hs.subprotocol == "binary"
    assert b"\r\nSec-WebSocket-Protocol: binary\r\n" in hs.response


@pytest.mark.parametrize(("override", "status"), [
    ({"sec_websocket_version": "8"}, 426),
    ({"sec_websocket_version": None}, 426),
    ({"sec_websocket_key": "c2hvcnQ="}, 400),  # "short": not 16 bytes
    ({"sec_websocket_key": "!!!not base64!!!"}, 400),
    ({"sec_websocket_key": None}, 400),
    ({"upgrade": "h2c"}, 400),
    ({"connection": "keep-alive"}, 400),
    ({"sec_websocket_protocol": "base64"}, 400),  # websockify's old text protocol: not spoken
])
def test_bad_upgrades_are_refused(override: dict[str, str | None], status: int) -> None:
    with pytest.raises(HttpRequestError) as info:
        accept_upgrade(upgrade_request(**override))
    assert info.value.status == status


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\n\r\n",  # no Host in HTTP/1.1
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",  # space before the colon (RFC 9112 5.1)
    b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",  # obsolete line folding
    b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
])
def test_malformed_request_heads(head: bytes) -> None:
    with pytest.raises(HttpRequestError) as info:
        http.parse_request_head(head)
    assert info.value.status == 400


def test_request_head_cap() -> None:
    assert http.find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest") == 27
    assert http.find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n") == -1
    with pytest.raises(HttpRequestError) as info:
        http.find_head_end(b"GET / HTTP/1.1\r\nHost: localhost\r\nX: " + b"a" * http.MAX_HEAD_BYTES)
    assert info.value.status == 431


@pytest.mark.parametrize(("path", "status"), [
    ("/../etc/passwd", 403),
    ("/app/../../etc/passwd", 403),
    ("/.hidden", 403),
    ("/nope.html", 404),
    ("/app", 404),  # a directory is not a file
])
def test_static_paths_stay_inside_root(path: str, status: int) -> None:
    with pytest.raises(HttpRequestError) as info:
        http.resolve_static(http.NOVNC_ROOT, path)
    assert info.value.status == status
    assert http.resolve_static(http.NOVNC_ROOT, "/core/rfb.js") == http.NOVNC_ROOT / "core/rfb.js"


# ----- framing: RFC 6455 section 5.7 examples, as binary frames -----

@pytest.mark.parametrize("bytewise", [False, True])
def test_masked_binary_hello(bytewise: bool) -> None:
    frame = bytes([
        0x82,  # FIN, opcode 2 (binary)
        0x85,  # MASK, length 5
        0x37, 0xFA, 0x21, 0x3D,  # masking key
        0x7F, 0x9F, 0x4D, 0x51, 0x58,  # "Hello" XOR key
    ])
    assert feed(frame, bytewise=bytewise) == [Data(b"Hello", True)]


@pytest.mark.parametrize("bytewise", [False, True])
def test_fragmented_message_with_ping_between(bytewise: bool) -> None:
    data = (
        encode_frame(Opcode.BINARY, b"Hel", fin=False, mask=MASK)  # 0x02: binary, FIN clear
        + encode_frame(Opcode.PING, b"hi", mask=MASK)  # control frames may interleave (5.4)
        + encode_frame(Opcode.CONTINUATION, b"lo", mask=MASK)  # 0x80: continuation, FIN set
    )
    assert data[0] == 0x02 and data[9] == 0x89 and data[17] == 0x80
    assert feed(data, bytewise=bytewise) == [Data(b"Hel", False), Ping(b"hi"), Data(b"lo", True)]


@pytest.mark.parametrize("bytewise", [False, True])
def test_extended_lengths(bytewise: bool) -> None:
    f256 = encode_frame(Opcode.BINARY, bytes(range(256)), mask=MASK)
    assert f256[:4] == bytes([0x82, 0xFE, 0x01, 0x00])  # MASK|126, then 16-bit length 256
    assert feed(f256, bytewise=bytewise) == [Data(bytes(range(256)), True)]
    payload = os.urandom(65536)
    f64k = encode_frame(Opcode.BINARY, payload, mask=MASK)
    assert f64k[:10] == bytes([0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0])  # MASK|127, 64-bit length 65536
    assert feed(f64k, bytewise=False) == [Data(payload, True)]


def test_server_frames_are_unmasked_and_minimal() -> None:
    conn = WebSocketConnection(Role.SERVER)
    assert conn.send(Data(b"Hello")) == b"\x82\x05Hello"
    assert conn.send(Ping(b"p")) == b"\x89\x01p"
    assert conn.send(Pong(b"")) == b"\x8a\x00"
    assert conn.send(Data(b"x" * 126))[:4] == b"\x82\x7e\x00\x7e"
    assert conn.send(Close(CloseCode.GOING_AWAY, "bye")) == b"\x88\x05\x03\xe9bye"
    assert conn.state is State.LOCAL_CLOSING
    with pytest.raises(RuntimeError):
        conn.send(Data(b"late"))


def test_mask_round_trip_and_numpy_path() -> None:
    payload = os.urandom(1001)  # not a multiple of 4
    masked = apply_mask(payload, MASK)
    assert masked[:4] == bytes(p ^ m for p, m in zip(payload[:4], MASK, strict=True))
    assert masked[1000] == payload[1000] ^ MASK[0]
    assert apply_mask(masked, MASK) == payload


def test_client_role_reads_server_frames() -> None:
    assert feed(b"\x82\x05Hello", bytewise=True, role=Role.CLIENT) == [Data(b"Hello", True)]
    assert fail_code(encode_frame(Opcode.BINARY, b"x", mask=MASK), role=Role.CLIENT) == 1002


# ----- closing handshake -----

def test_close_received_then_answered() -> None:
    conn = WebSocketConnection()
    conn.receive_data(encode_frame(Opcode.CLOSE, struct.pack(">H", 1000) + "ok ✓".encode(), mask=MASK))
    assert events_of(conn) == [Close(1000, "ok ✓")]
    assert conn.state is State.REMOTE_CLOSING
    conn.receive_data(encode_frame(Opcode.BINARY, b"after close", mask=MASK))
    assert conn.next_event() is NEED_DATA  # nothing counts after a Close (5.5.1)
    assert conn.send(Close(1000)) == b"\x88\x02\x03\xe8"
    assert state_of(conn) is State.CLOSED
    conn.receive_data(b"")
    assert conn.next_event() == EndOfStream(clean=True)


def test_close_without_status_and_local_close_first() -> None:
    conn = WebSocketConnection()
    conn.send(Close(CloseCode.NORMAL))
    conn.receive_data(b"\x88\x80" + MASK)  # Close, masked, empty body
    assert events_of(conn) == [Close(CloseCode.NO_STATUS, "")]
    assert conn.state is State.CLOSED


def test_eof_without_close_is_unclean() -> None:
    conn = WebSocketConnection()
    conn.receive_data(b"\x82\x85" + MASK[:2])  # half a frame, then TCP closes
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    assert conn.next_event() == EndOfStream(clean=False)


# ----- bad input: each refused with the close code RFC 6455 7.4.1 gives it -----

def close_frame(body: bytes) -> bytes:
    return encode_frame(Opcode.CLOSE, body, mask=MASK)


BAD_INPUT = {
    "unmasked client frame": (b"\x82\x05Hello", 1002),
    "reserved data opcode 0x3": (bytes([0x83, 0x80]) + MASK, 1002),
    "reserved control opcode 0xB": (bytes([0x8B, 0x80]) + MASK, 1002),
    "RSV1 without extension": (bytes([0xC2, 0x80]) + MASK, 1002),
    "fragmented ping": (encode_frame(Opcode.PING, b"x", fin=False, mask=MASK), 1002),
    "fragmented close": (encode_frame(Opcode.CLOSE, b"\x03\xe8", fin=False, mask=MASK), 1002),
    "126-byte ping": (encode_frame(Opcode.PING, b"x" * 126, mask=MASK), 1002),
    "continuation first": (encode_frame(Opcode.CONTINUATION, b"x", mask=MASK), 1002),
    "binary inside fragmented message": (
        encode_frame(Opcode.BINARY, b"a", fin=False, mask=MASK) + encode_frame(Opcode.BINARY, b"b", mask=MASK),
        1002),
    "text frame": (encode_frame(Opcode.TEXT, b"RFB 003.008\n", mask=MASK), 1003),
    "non-minimal 16-bit length": (bytes([0x82, 0xFE, 0x00, 0x05]) + MASK + b"hello", 1002),
    "non-minimal 64-bit length": (bytes([0x82, 0xFF]) + struct.pack(">Q", 5) + MASK + b"hello", 1002),
    "64-bit length with top bit": (bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 63) + MASK, 1002),
    "close body of one byte": (close_frame(b"\x03"), 1002),
    "close code 1005 on the wire": (close_frame(struct.pack(">H", 1005)), 1002),
    "close code 999": (close_frame(struct.pack(">H", 999)), 1002),
    "close code 2000 (reserved)": (close_frame(struct.pack(">H", 2000)), 1002),
    "close reason not UTF-8": (close_frame(struct.pack(">H", 1000) + b"\xff\xfe"), 1007),
    "close reason truncated UTF-8": (close_frame(struct.pack(">H", 1000) + "✓".encode()[:2]), 1007),
}


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_is_refused_with_the_right_code(name: str) -> None:
    data, code = BAD_INPUT[name]
    assert fail_code(data) == code
    # the error persists; the connection can still send its failing Close, once
    conn = WebSocketConnection()
    conn.receive_data(data)
    with pytest.raises(WebSocketError):
        events_of(conn)
    with pytest.raises(WebSocketError):
        conn.next_event()
    assert conn.send(Close(code, "bye"))[:4] == b"\x88\x05" + struct.pack(">H", code)


def test_oversized_frame_refused_from_its_header_alone() -> None:
    conn = WebSocketConnection(max_frame_size=1000)
    conn.receive_data(bytes([0x82, 0xFE]) + struct.pack(">H", 1001))  # only the header: no mask, no payload
    with pytest.raises(WebSocketError) as info:
        conn.next_event()
    assert info.value.close_code == CloseCode.MESSAGE_TOO_BIG
    huge = bytes([0x82, 0xFF]) + struct.pack(">Q", (1 << 63) - 1)  # claims 8 EiB
    assert fail_code(huge) == 1009


def test_oversized_message_refused_across_fragments() -> None:
    parts = [encode_frame(Opcode.BINARY, b"a" * 600, fin=False, mask=MASK),
             encode_frame(Opcode.CONTINUATION, b"b" * 600, mask=MASK)]
    conn = WebSocketConnection(max_frame_size=1000, max_message_size=1000)
    conn.receive_data(b"".join(parts))
    assert conn.next_event() == Data(b"a" * 600, False)
    with pytest.raises(WebSocketError) as info:
        conn.next_event()
    assert info.value.close_code == 1009
    ok = WebSocketConnection(max_frame_size=1000, max_message_size=1200)
    ok.receive_data(b"".join(parts) + b"".join(parts))  # the cap is per message, not per connection
    assert len(events_of(ok)) == 4


def test_valid_close_codes_accepted() -> None:
    for code in (1000, 1001, 1003, 1011, 1014, 3000, 4999):
        assert feed(close_frame(struct.pack(">H", code)), bytewise=False) == [Close(code, "")]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 20))
def test_any_input_parses_or_is_refused(data: bytes, chunk: int) -> None:
    conn = WebSocketConnection(max_frame_size=64, max_message_size=128)
    try:
        for i in range(0, len(data), chunk):
            conn.receive_data(data[i:i + chunk])
            events_of(conn)
        conn.receive_data(b"")
        assert isinstance(events_of(conn)[-1], EndOfStream)
    except WebSocketError as err:
        assert err.close_code in (1002, 1003, 1007, 1009)
    assert len(conn._buffer) <= len(data)


# ----- the web listener on loopback -----

async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(4096):
        writer.write(b"echo:" + data)
        await writer.drain()
    writer.close()


async def http_exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


class WsClient:
    """A test client over raw asyncio streams, with the sans-IO connection in the client role."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = WebSocketConnection(Role.CLIENT)

    @classmethod
    async def connect(cls, port: int, *, origin: str | None = None, protocols: str | None = None,
                      tls: ssl.SSLContext | None = None) -> WsClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = (f"Origin: {origin}\r\n" if origin else "") + (
            f"Sec-WebSocket-Protocol: {protocols}\r\n" if protocols else "")
        writer.write((f"GET /websockify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      f"{extra}\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert f"Sec-WebSocket-Accept: {accept_key(key)}\r\n".encode() in head
        return cls(reader, writer)

    async def next(self) -> object:
        while (ev := self.conn.next_event()) is NEED_DATA:
            self.conn.receive_data(await asyncio.wait_for(self.reader.read(65536), 5))
        return ev

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 20))


def port_of(server: WebServer) -> int:
    return int(server.server.sockets[0].getsockname()[1])


def test_http_pages_and_refusals() -> None:
    async def body() -> None:
        async with await start_web_server(echo_handler, "127.0.0.1", 0,
                                          config=WebConfig(head_timeout=0.5)) as web:
            port = port_of(web)
            assert web.url == f"http://127.0.0.1:{port}/"
            head, _ = await http_exchange(port, b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 302 ")
            assert b"\r\nLocation: /vnc.html?autoconnect=1&reconnect=1&resize=scale&path=websockify" in head
            head, page = await http_exchange(port, b"GET /vnc.html HTTP/1.0\r\nHost: localhost\r\n\r\n")
            assert b"Content-Type: text/html; charset=utf-8" in head
            assert page == (http.NOVNC_ROOT / "vnc.html").read_bytes()
            head, js = await http_exchange(port, b"GET /core/rfb.js HTTP/1.1\r\nHost: [::1]:1\r\nConnection: close\r\n\r\n")
            assert b"Content-Type: text/javascript" in head and b"X-Frame-Options: DENY" in head
            assert js == (http.NOVNC_ROOT / "core/rfb.js").read_bytes()
            head, js = await http_exchange(port, b"HEAD /core/rfb.js HTTP/1.0\r\nHost: localhost\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and js == b""
            refusals = {
                b"GET /%2e%2e/etc/passwd HTTP/1.0\r\nHost: localhost\r\n\r\n": b"403",
                b"GET /nope HTTP/1.0\r\nHost: localhost\r\n\r\n": b"404",
                b"POST /vnc.html HTTP/1.0\r\nHost: localhost\r\n\r\n": b"405",
                b"GET /vnc.html HTTP/1.1\r\nHost: evil.example:80\r\n\r\n": b"421",  # DNS rebinding
                b"GET /vnc.html HTTP/1.0\r\n\r\n": b"421",  # no Host: cannot tell
                b"GET /websockify HTTP/1.0\r\nHost: localhost\r\n\r\n": b"426",
                b"GET /vnc.html HTTP/1.0\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello": b"400",
                b"GET /%ff HTTP/1.0\r\nHost: localhost\r\n\r\n": b"400",
                b"GET / HTTP/1.1\r\nHost: localhost\r\nX: " + b"a" * 20000 + b"\r\n\r\n": b"431",
                b"GET / HTTP/1.1\r\nHost: localhost\r\n": b"408",  # never finished: the head timer answers
            }
            for request, status in refusals.items():
                head, _ = await http_exchange(port, request)
                assert head.split(b" ")[1] == status, (request[:40], head)
    run(body)


def test_keep_alive_serves_pipelined_requests() -> None:
    async def body() -> None:
        async with await start_web_server(echo_handler, "127.0.0.1", 0) as web:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(web))
            req = b"GET /core/rfb.js HTTP/1.1\r\nHost: localhost\r\n\r\n"
            writer.write(req + req + b"GET /vnc.html HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 5)
            assert data.count(b"HTTP/1.1 200 OK") == 3
            assert data.endswith((http.NOVNC_ROOT / "vnc.html").read_bytes())
            writer.close()
    run(body)


def test_websocket_echo_ping_and_close() -> None:
    async def body() -> None:
        async with await start_web_server(echo_handler, "127.0.0.1", 0) as web:
            port = port_of(web)
            client = await WsClient.connect(port, origin=f"http://127.0.0.1:{port}", protocols="binary")
            client.send_raw(client.conn.send(Data(b"abc")))
            assert await client.next() == Data(b"echo:abc", True)
            client.send_raw(client.conn.send(Ping(b"are you there")))
            assert await client.next() == Pong(b"are you there")
            client.send_raw(client.conn.send(Close(1000, "done")))
            assert await client.next() == Close(1000, "")  # echoed code
            assert await client.next() == EndOfStream(clean=True)  # and the server closed TCP
    run(body)


def test_foreign_origin_refused() -> None:
    async def body() -> None:
        async with await start_web_server(echo_handler, "127.0.0.1", 0) as web:
            port = port_of(web)
            head, _ = await http_exchange(port, (
                f"GET /websockify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://evil.example\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            assert head.startswith(b"HTTP/1.1 403 ")
    run(body)


@pytest.mark.parametrize("name", ["unmasked client frame", "reserved data opcode 0x3", "fragmented ping",
                                  "text frame", "close reason not UTF-8", "oversized frame"])
def test_bad_frames_fail_one_connection_not_the_other(name: str) -> None:
    data, code = BAD_INPUT.get(name) or (bytes([0x82, 0xFE]) + struct.pack(">H", 5000), 1009)

    async def body() -> None:
        async with await start_web_server(echo_handler, "127.0.0.1", 0,
                                          config=WebConfig(max_frame_size=4096)) as web:
            port = port_of(web)
            good = await WsClient.connect(port)
            bad = await WsClient.connect(port)
            good.send_raw(good.conn.send(Data(b"1")))
            assert await good.next() == Data(b"echo:1", True)
            bad.send_raw(data)
            ev = await bad.next()
            assert isinstance(ev, Close) and ev.code == code, ev
            assert await bad.next() == EndOfStream(clean=True)
            good.send_raw(good.conn.send(Data(b"2")))
            assert await good.next() == Data(b"echo:2", True)
            assert len(web.clients) == 1
    run(body)


def test_wss_with_a_configured_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_self_signed(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))  # verifies the chain and 127.0.0.1

    async def body() -> None:
        async with await start_web_server(echo_handler, "127.0.0.1", 0, ssl=server_context(cert, key)) as web:
            port = port_of(web)
            assert web.url == f"https://127.0.0.1:{port}/"
            client = await WsClient.connect(port, origin=f"https://127.0.0.1:{port}", tls=client_ctx)
            client.send_raw(client.conn.send(Data(b"secret")))
            assert await client.next() == Data(b"echo:secret", True)
            assert client.writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
            # an http:// page may not drive a wss:// socket into this server: the origin's scheme differs
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
            writer.write((f"GET /websockify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          f"Origin: http://127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
            assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 403 ")
            writer.close()
    run(body)


def test_frame_sent_with_the_handshake_is_not_lost() -> None:
    async def body() -> None:
        async with await start_web_server(echo_handler, "127.0.0.1", 0) as web:
            port = port_of(web)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /websockify HTTP/1.1\r\nHost: localhost:{port}\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n".encode()
                         + encode_frame(Opcode.BINARY, b"early", mask=MASK))  # same TCP segment
            await reader.readuntil(b"\r\n\r\n")
            client = WsClient(reader, writer)
            assert await client.next() == Data(b"echo:early", True)
    run(body)


def test_large_server_writes_arrive_whole() -> None:
    blob = os.urandom(6 << 20)

    async def bulk_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        for i in range(0, len(blob), 1 << 20):
            writer.write(blob[i:i + (1 << 20)])
            await writer.drain()  # flow control reaches the session through the WebSocket transport
        writer.close()
        await writer.wait_closed()

    async def body() -> None:
        async with await start_web_server(bulk_handler, "127.0.0.1", 0) as web:
            client = await WsClient.connect(port_of(web))
            client.send_raw(client.conn.send(Data(b"go")))
            got = bytearray()
            while isinstance(ev := await client.next(), Data):
                got += ev.payload
            assert ev == Close(1000, "")  # the session's writer.close() becomes a clean Close
            assert bytes(got) == blob
            client.send_raw(client.conn.send(Close(1000)))
            assert await client.next() == EndOfStream(clean=True)
    run(body)


class RfbOverWs:
    """Just enough of an RFB 3.8 client (security None) over a WsClient to prove a session runs."""

    def __init__(self, ws: WsClient) -> None:
        self.ws = ws
        self.buffer = bytearray()

    async def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            ev = await self.ws.next()
            assert isinstance(ev, Data), ev
            self.buffer += ev.payload
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def write(self, data: bytes) -> None:
        self.ws.send_raw(self.ws.conn.send(Data(data)))

    async def handshake(self) -> tuple[int, int]:
        assert await self.read(12) == b"RFB 003.008\n"
        self.write(b"RFB 003.008\n")
        count = (await self.read(1))[0]
        assert 1 in await self.read(count)  # security type None offered on loopback without a password
        self.write(b"\x01")
        assert await self.read(4) == b"\x00\x00\x00\x00"  # SecurityResult OK
        self.write(b"\x01")  # ClientInit: shared
        width, height = struct.unpack(">HH", await self.read(4))
        await self.read(16)  # pixel format
        (name_len,) = struct.unpack(">I", await self.read(4))
        await self.read(name_len)
        self.write(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw only
        return width, height

    async def full_update(self, width: int, height: int) -> bytes:
        self.write(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))  # non-incremental request
        msg_type, count = struct.unpack(">BxH", await self.read(4))
        assert msg_type == 0
        screen = bytearray(width * height * 4)
        for _ in range(count):
            x, y, w, h, enc = struct.unpack(">HHHHi", await self.read(12))
            assert enc == 0 and x + w <= width and y + h <= height
            rect = await self.read(w * h * 4)
            for row in range(h):
                start = ((y + row) * width + x) * 4
                screen[start:start + w * 4] = rect[row * w * 4:(row + 1) * w * 4]
        return bytes(screen)


def test_bad_frame_on_one_rfb_session_leaves_the_other_running() -> None:
    from vkmsremote.server.app import VncServer
    from vkmsremote.server.pattern import PatternSource
    from vkmsremote.server.session import Session

    async def body() -> None:
        vnc = VncServer(PatternSource(64, 48, animate=False), host="127.0.0.1", port=0)
        await vnc.start()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await Session(vnc.ctx, reader, writer).run()

        try:
            async with await start_web_server(handler, "127.0.0.1", 0) as web:
                port = port_of(web)
                good = RfbOverWs(await WsClient.connect(port))
                bad = RfbOverWs(await WsClient.connect(port))
                size = await good.handshake()
                assert size == await bad.handshake() == (64, 48)
                first = await good.full_update(*size)
                assert len(first) == 64 * 48 * 4
                assert len(vnc.sessions) == 2
                bad.ws.send_raw(bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 40))  # a masked 1 TiB frame
                ev = await bad.ws.next()
                assert ev == Close(CloseCode.MESSAGE_TOO_BIG, "frame of 1099511627776 bytes exceeds the "
                                   "1048576-byte cap")
                assert await good.full_update(*size) == first  # the other session carries on
                for _ in range(50):
                    if len(vnc.sessions) == 1:
                        break
                    await asyncio.sleep(0.05)
                assert len(vnc.sessions) == 1  # and the failed one's session has ended
        finally:
            await vnc.close()
    run(body)

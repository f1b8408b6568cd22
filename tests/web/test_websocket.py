"""The web listener over loopback: HTTP routes and refusals, and RFB over WebSocket.

The WebSocket peer in these tests is the ``websockets`` library's client (asyncio for good clients, its
sans-IO ClientProtocol to read what the server sends a raw, misbehaving client), so the server's framing is
checked by code nobody here wrote.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close, Opcode
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from vkmsremote.server.tls import generate_self_signed, server_context
from vkmsremote.web import http
from vkmsremote.web.novnc import DEBIAN_ROOT, NPM_ROOT, find_bundle, load_bundle
from vkmsremote.web.server import PAGE_DIR, WebConfig, WebServer, start_web_server

MASK = bytes([0x37, 0xFA, 0x21, 0x3D])


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """A client frame built by hand (RFC 6455 5.2), so tests can send what no library would."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(4096):
        writer.write(b"echo:" + data)
        await writer.drain()
    writer.close()


async def http_exchange(port: int, request: bytes, *, tls: ssl.SSLContext | None = None) -> tuple[bytes, bytes]:
    """Send ``request``; the response head and body (b"", b"" when the server dropped the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    writer.write(request)
    try:
        data = await asyncio.wait_for(reader.read(), 15)
    except ConnectionResetError:
        data = b""
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


class RawClient:
    """A WebSocket client on a raw socket: hand-built frames out, websockets' sans-IO parser for what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = ClientProtocol(parse_uri("ws://127.0.0.1/websockify"), state=OPEN, max_size=None)
        self.pending: list[object] = []
        self.eof = False

    @classmethod
    async def connect(cls, port: int, *, origin: str | None = None, extra: bytes = b"") -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write((f"GET /websockify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n" + (f"Origin: {origin}\r\n" if origin else "")
                      + "\r\n").encode() + extra)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    async def frame(self) -> tuple[int, bytes] | None:
        """The next frame the server sent (opcode, payload), or None once TCP is closed."""
        while not self.pending:
            if self.eof:
                return None
            data = await asyncio.wait_for(self.reader.read(1 << 16), 15)
            if data:
                self.parser.receive_data(data)
            else:
                self.eof = True
                self.parser.receive_eof()
            self.parser.data_to_send()  # (the parser would answer pings; this client does not send them)
            self.pending += self.parser.events_received()
        frame = self.pending.pop(0)
        return frame.opcode, frame.data  # type: ignore[attr-defined]

    async def close_code(self) -> int:
        """Read until the server's Close frame and return its code."""
        while (got := await self.frame()) is not None:
            opcode, payload = got
            if opcode == Opcode.CLOSE:
                return Close.parse(payload).code
        raise AssertionError("the server closed TCP without a Close frame")

    def send(self, data: bytes) -> None:
        self.writer.write(data)


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 60))


def port_of(server: WebServer) -> int:
    assert server.server is not None
    return int(server.server.sockets[0].getsockname()[1])


NPM = WebConfig(novnc_root=NPM_ROOT)
DEBIAN = WebConfig(novnc_root=DEBIAN_ROOT)


def test_both_novnc_installs_are_found_and_described() -> None:
    npm, debian = load_bundle(NPM_ROOT), load_bundle(DEBIAN_ROOT)
    assert (npm.kind, npm.version, npm.lacks) == ("npm", "1.7.0", ())
    assert debian.kind == "app" and debian.version == "1.3.0"
    assert set(debian.lacks) == {"ZRLE", "H.264", "RSA-AES (RA2ne)"}
    assert "lacks ZRLE" in debian.describe()
    assert find_bundle() == npm  # the npm install is preferred


def test_missing_novnc_is_a_clear_error(tmp_path: Path) -> None:
    from vkmsremote.errors import UsageError

    with pytest.raises(UsageError, match="no noVNC at") as err:
        load_bundle(tmp_path)
    assert "install-novnc.sh" in str(err.value.hint)


def test_npm_page_routes_and_refusals() -> None:
    async def body() -> None:
        async with await start_web_server(echo_handler, "127.0.0.1", 0,
                                          config=WebConfig(novnc_root=NPM_ROOT, title="XR-0 <card0>",
                                                           head_timeout=1.0)) as web:
            port = port_of(web)
            assert web.url == f"http://127.0.0.1:{port}/"
            head, page = await http_exchange(port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Type: text/html; charset=utf-8" in head
            assert b"<title>XR-0 &lt;card0&gt;</title>" in page and b"1.7.0" in page
            assert b"X-Frame-Options: DENY" in head and b"Content-Security-Policy: default-src 'self'" in head
            head, js = await http_exchange(port, b"GET /novnc/core/rfb.js HTTP/1.1\r\nHost: [::1]:1\r\n\r\n")
            assert b"Content-Type: text/javascript" in head
            assert js == (NPM_ROOT / "core/rfb.js").read_bytes()
            head, js = await http_exchange(port, b"GET /vkmsremote/app.js?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert js == (PAGE_DIR / "app.js").read_bytes()
            refusals = {
                b"GET /novnc/%2e%2e/package.json HTTP/1.1\r\nHost: localhost\r\n\r\n": b"403",
                b"GET /novnc/.hidden HTTP/1.1\r\nHost: localhost\r\n\r\n": b"403",
                b"GET /vnc.html HTTP/1.1\r\nHost: localhost\r\n\r\n": b"404",
                b"GET /novnc/nope.js HTTP/1.1\r\nHost: localhost\r\n\r\n": b"404",
                b"GET / HTTP/1.1\r\nHost: evil.example:80\r\n\r\n": b"421",  # DNS rebinding
                # Host twice (found by the fuzz campaign: it used to end in a 500 and a traceback)
                b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n": b"400",
                b"GET /websockify HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n": b"400",
                b"GET /websockify HTTP/1.1\r\nHost: localhost\r\n\r\n": b"426",
                b"GET /%ff HTTP/1.1\r\nHost: localhost\r\n\r\n": b"400",
                b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n": b"400",
                b"GET / HTTP/1.1\r\nHost: localhost\r\nX: " + b"a" * 20000 + b"\r\n\r\n": b"431",
            }
            for request, status in refusals.items():
                head, _ = await http_exchange(port, request)
                assert head.split(b" ")[1] == status, (request[:40], head)
            # what websockets does not parse is dropped without an answer: other methods, bodies, a head
            # that never ends (its open timeout)
            head, _ = await http_exchange(port, b"POST / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 405 ") and b"Allow: GET" in head
            for request in (b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
                            b"GET / HTTP/1.1\r\nHost: localhost\r\n"):
                head, _ = await http_exchange(port, request)
                assert not head.startswith(b"HTTP/1.1 200"), request
    run(body)


def test_debian_novnc_fallback_redirects_to_its_app() -> None:
    async def body() -> None:
        async with await start_web_server(echo_handler, "127.0.0.1", 0, config=DEBIAN) as web:
            port = port_of(web)
            head, _ = await http_exchange(port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 302 ")
            assert b"\r\nLocation: /vnc.html?autoconnect=1&reconnect=1&resize=scale&path=websockify" in head
            head, page = await http_exchange(port, b"GET /vnc.html HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert page == (DEBIAN_ROOT / "vnc.html").read_bytes()
            head, _ = await http_exchange(port, b"GET /%2e%2e/etc/passwd HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert head.split(b" ")[1] == b"403"
    run(body)


@pytest.mark.parametrize("path,status", [("/core/rfb.js", 200), ("/../etc/passwd", 403), ("/core/../vnc.html", 403),
                                         ("/.git/config", 403), ("/nope", 404), ("/a\\b", 400)])
def test_static_paths_stay_inside_root(path: str, status: int) -> None:
    from vkmsremote.errors import HttpRequestError

    if status == 200:
        assert http.resolve_static(NPM_ROOT, path) == NPM_ROOT / "core/rfb.js"
        return
    with pytest.raises(HttpRequestError) as err:
        http.resolve_static(NPM_ROOT, path)
    assert err.value.status == status


def test_websocket_echo_ping_and_close() -> None:
    async def body() -> None:
        async with await start_web_server(echo_handler, "127.0.0.1", 0, config=NPM) as web:
            port = port_of(web)
            async with connect(f"ws://127.0.0.1:{port}/websockify", origin=f"http://127.0.0.1:{port}",  # type: ignore[arg-type]
                               subprotocols=["binary"], compression=None) as ws:  # type: ignore[list-item]
                assert ws.subprotocol == "binary"
                await ws.send(b"abc")
                assert await ws.recv() == b"echo:abc"
                latency = await (await ws.ping(b"are you there"))
                assert latency >= 0
                assert len(web.clients) == 1
            # noVNC 1.4 and later offer no subprotocol at all
            async with connect(f"ws://127.0.0.1:{port}/websockify", compression=None) as ws:
                assert ws.subprotocol is None
                await ws.send(b"x")
                assert await ws.recv() == b"echo:x"
    run(body)


def test_refused_upgrades() -> None:
    async def body() -> None:
        async with await start_web_server(echo_handler, "127.0.0.1", 0, config=NPM) as web:
            port = port_of(web)
            for kwargs, status in (({"origin": "http://evil.example"}, 403),  # cross-site WebSocket hijacking
                                   ({"subprotocols": ["base64"]}, 400)):  # websockify's old text framing
                with pytest.raises(InvalidStatus) as err:
                    async with connect(f"ws://127.0.0.1:{port}/websockify", **kwargs):  # type: ignore[arg-type]
                        pass
                assert err.value.response.status_code == status
    run(body)


BAD_FRAMES = {
    "unmasked client frame": (client_frame(Opcode.BINARY, b"x", masked=False), 1002),
    "reserved data opcode 0x3": (client_frame(0x3, b"x"), 1002),
    "RSV1 without an extension": (client_frame(Opcode.BINARY, b"x", rsv=0x40), 1002),
    "fragmented ping": (client_frame(Opcode.PING, b"x", fin=False), 1002),
    "text frame": (client_frame(Opcode.TEXT, b"hello"), 1003),
    "close reason not UTF-8": (client_frame(Opcode.CLOSE, b"\x03\xe8\xff\xfe"), 1007),
    "oversized frame": (bytes([0x82, 0xFE]) + struct.pack(">H", 5000), 1009),
    "1 TiB frame": (bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 40), 1009),
}


@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_bad_frames_fail_one_connection_not_the_other(name: str) -> None:
    data, code = BAD_FRAMES[name]

    async def body() -> None:
        async with await start_web_server(echo_handler, "127.0.0.1", 0,
                                          config=WebConfig(novnc_root=NPM_ROOT, max_message_size=4096)) as web:
            port = port_of(web)
            async with connect(f"ws://127.0.0.1:{port}/websockify", compression=None) as good:
                bad = await RawClient.connect(port)
                await good.send(b"1")
                assert await good.recv() == b"echo:1"
                bad.send(data)
                assert await bad.close_code() == code
                assert await bad.frame() is None  # and the server closed TCP
                await good.send(b"2")
                assert await good.recv() == b"echo:2"
                for _ in range(50):
                    if len(web.clients) == 1:
                        break
                    await asyncio.sleep(0.05)
                assert len(web.clients) == 1
    run(body)


def test_wss_with_a_configured_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_self_signed(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))  # verifies the chain and 127.0.0.1

    async def body() -> None:
        async with await start_web_server(echo_handler, "127.0.0.1", 0, ssl=server_context(cert, key),
                                          config=NPM) as web:
            port = port_of(web)
            assert web.url == f"https://127.0.0.1:{port}/"
            async with connect(f"wss://127.0.0.1:{port}/websockify", ssl=client_ctx,
                               origin=f"https://127.0.0.1:{port}") as ws:  # type: ignore[arg-type]
                await ws.send(b"secret")
                assert await ws.recv() == b"echo:secret"
            # an http:// page may not drive a wss:// socket into this server: the origin's scheme differs
            with pytest.raises(InvalidStatus) as err:
                async with connect(f"wss://127.0.0.1:{port}/websockify", ssl=client_ctx,
                                   origin=f"http://127.0.0.1:{port}"):  # type: ignore[arg-type]
                    pass
            assert err.value.response.status_code == 403
            head, page = await http_exchange(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", tls=client_ctx)
            assert head.startswith(b"HTTP/1.1 200 ") and b"/vkmsremote/app.js" in page
    run(body)


def test_frame_sent_with_the_handshake_is_not_lost() -> None:
    async def body() -> None:
        async with await start_web_server(echo_handler, "127.0.0.1", 0, config=NPM) as web:
            client = await RawClient.connect(port_of(web), extra=client_frame(Opcode.BINARY, b"early"))
            assert await client.frame() == (Opcode.BINARY, b"echo:early")
    run(body)


def test_large_server_writes_arrive_whole() -> None:
    blob = os.urandom(6 << 20)

    async def bulk_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        for i in range(0, len(blob), 1 << 20):
            writer.write(blob[i:i + (1 << 20)])
            await writer.drain()  # flow control reaches the session through the WebSocket stream
        writer.close()
        await writer.wait_closed()

    async def body() -> None:
        async with await start_web_server(bulk_handler, "127.0.0.1", 0, config=NPM) as web, \
                connect(f"ws://127.0.0.1:{port_of(web)}/websockify", max_size=None) as ws:
            await ws.send(b"go")
            got = bytearray()
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    got += await ws.recv()  # type: ignore[operator]
            assert bytes(got) == blob
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000  # a clean Close
    run(body)


class RfbOverWs:
    """Just enough of an RFB 3.8 client (security None) over a WebSocket to prove a session runs."""

    def __init__(self, ws: object) -> None:
        self.ws = ws
        self.buffer = bytearray()

    async def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += await self.ws.recv()  # type: ignore[attr-defined]
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    async def write(self, data: bytes) -> None:
        await self.ws.send(data)  # type: ignore[attr-defined]

    async def handshake(self) -> tuple[int, int]:
        assert await self.read(12) == b"RFB 003.008\n"
        await self.write(b"RFB 003.008\n")
        count = (await self.read(1))[0]
        assert 1 in await self.read(count)  # security type None offered on loopback without a password
        await self.write(b"\x01")
        assert await self.read(4) == b"\x00\x00\x00\x00"  # SecurityResult OK
        await self.write(b"\x01")  # ClientInit: shared
        width, height = struct.unpack(">HH", await self.read(4))
        await self.read(16)  # pixel format
        (name_len,) = struct.unpack(">I", await self.read(4))
        await self.read(name_len)
        await self.write(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw only
        return width, height

    async def full_update(self, width: int, height: int) -> bytes:
        await self.write(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))  # non-incremental request
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
            async with await start_web_server(handler, "127.0.0.1", 0, config=NPM) as web:
                port = port_of(web)
                async with connect(f"ws://127.0.0.1:{port}/websockify", max_size=None) as ws:
                    good = RfbOverWs(ws)
                    bad = await RawClient.connect(port)
                    size = await good.handshake()
                    assert size == (64, 48)
                    assert await bad.frame() == (Opcode.BINARY, b"RFB 003.008\n")
                    first = await good.full_update(*size)
                    assert len(first) == 64 * 48 * 4
                    assert len(vnc.sessions) == 2
                    bad.send(bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 40))  # a masked 1 TiB frame
                    assert await bad.close_code() == 1009
                    assert await good.full_update(*size) == first  # the other session carries on
                    for _ in range(50):
                        if len(vnc.sessions) == 1:
                            break
                        await asyncio.sleep(0.05)
                    assert len(vnc.sessions) == 1  # and the failed one's session has ended
        finally:
            await vnc.close()
    run(body)

"""The web listener: noVNC's page and RFB over WebSocket on one HTTP(S) port.

``start_web_server(handler, host, port, ssl=...)`` serves
  /                 a redirect to noVNC's vnc.html, set to connect back to this origin at once,
  /websockify       the WebSocket upgrade; each connection runs ``handler(reader, writer)``, the same RFB
                    session callback the plain TCP listener passes to asyncio.start_server,
  anything else     a static file of Debian's novnc package (GET/HEAD only).

Security: the caller picks the address (loopback unless the user opts out, same rule as the RFB port) and
passes an SSLContext when a certificate is configured (https + wss). A browser lets any web page open a
WebSocket to 127.0.0.1, so the upgrade is refused unless its Origin is this server's own origin, and when
bound to loopback the Host header must name loopback (DNS rebinding would otherwise make a foreign page
"same-origin").
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl as ssl_mod
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit

from vkmsremote.errors import HttpRequestError
from vkmsremote.web import http
from vkmsremote.web.http import Request, Status
from vkmsremote.web.transport import CLOSE_TIMEOUT, SessionHandler, WebSocketTransport, open_websocket_stream
from vkmsremote.web.websocket import (
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_MESSAGE,
    CloseCode,
    Role,
    WebSocketConnection,
    accept_upgrade,
    is_upgrade_request,
)

log = logging.getLogger(__name__)

DEFAULT_WEB_PORT: Final = 5800  # the customary "VNC over HTTP" port (5800 + display)
LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True, slots=True)
class WebConfig:
    novnc_root: Path = http.NOVNC_ROOT
    ws_path: str = http.WEBSOCKET_PATH
    allowed_hosts: frozenset[str] | None = None
    """Host header names (no port) accepted; None: loopback names when bound to loopback, else any."""
    max_frame_size: int = DEFAULT_MAX_FRAME
    max_message_size: int = DEFAULT_MAX_MESSAGE
    head_timeout: float = 10.0
    """Seconds a connection may take to send a complete request head (and idle between requests)."""
    max_connections: int = 256
    close_timeout: float = CLOSE_TIMEOUT


def is_loopback_name(host: str) -> bool:
    """True if ``host`` (a Host header name or a bind address, not resolved) is a loopback name or a
    loopback address literal. Compare vkmsremote.server.app.resolves_to_loopback, which resolves names."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """The name part of a Host header value: 'a:1' -> 'a', '[::1]:5' -> '::1'."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


@dataclass(slots=True)
class WebServer:
    """A running web listener. ``url`` is what to open in a browser."""

    server: asyncio.Server
    url: str
    config: WebConfig
    clients: set[WebSocketTransport] = field(default_factory=set)
    connections: int = 0

    async def close(self) -> None:
        """Stop listening and close every WebSocket client with 1001 (going away)."""
        self.server.close()
        for ws in list(self.clients):
            ws.close_with(CloseCode.GOING_AWAY, "server shutting down")
        await self.server.wait_closed()

    async def __aenter__(self) -> WebServer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


class _HttpProtocol(asyncio.Protocol):
    """One HTTP connection until it is closed or upgraded (then _UpgradedProtocol takes the socket)."""

    def __init__(self, web: WebServer, handler: SessionHandler, allowed_hosts: frozenset[str] | None) -> None:
        self._web = web
        self._config = web.config
        self._handler = handler
        self._allowed_hosts = allowed_hosts
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._tls = False
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._tls = transport.get_extra_info("sslcontext") is not None
        self._web.connections += 1
        if self._web.connections > self._config.max_connections:
            self._respond_error(HttpRequestError("too many connections", status=Status.SERVICE_UNAVAILABLE))
            return
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._web.connections -= 1
        self._cancel_timer()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._process()

    def eof_received(self) -> bool:
        return False

    def _arm_timer(self) -> None:
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._config.head_timeout, self._on_timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self) -> None:
        if not self._buffer and self._transport is not None:
            self._transport.close()  # an idle keep-alive connection: nothing to answer
            return
        self._respond_error(HttpRequestError("request head not received in time", status=Status.REQUEST_TIMEOUT))

    def _process(self) -> None:
        transport = self._transport
        if self._busy or transport is None or transport.is_closing():
            return
        try:
            end = http.find_head_end(self._buffer)
            if end < 0:
                return
            head = bytes(self._buffer[:end])
            del self._buffer[:end]
            self._handle(http.parse_request_head(head))
        except HttpRequestError as err:
            self._respond_error(err)

    def _respond_error(self, err: HttpRequestError) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        log.info("web peer %s: %s", transport.get_extra_info("peername"), err)
        extra: tuple[tuple[str, str], ...] = ()
        if err.status == Status.UPGRADE_REQUIRED:
            extra = (("Sec-WebSocket-Version", "13"),)
        elif err.status == Status.METHOD_NOT_ALLOWED:
            extra = (("Allow", "GET, HEAD"),)
        transport.write(http.simple_response(Status(err.status), err.message, extra=extra))
        self._cancel_timer()
        transport.close()

    def _check_host(self, request: Request) -> None:
        host = request.header("host")
        if self._allowed_hosts is None:
            return
        if host is None or _host_name(host) not in self._allowed_hosts:
            raise HttpRequestError(f"Host {host!r} is not a name of this server", status=Status.MISDIRECTED_REQUEST,
                                   hint="open the URL vkmsremote printed, or allow the name in the web config")

    def _check_origin(self, request: Request) -> None:
        origin = request.header("origin")
        if origin is None:
            return  # not a browser: the Origin rule protects browsers' users only
        parts = urlsplit(origin)
        expected_scheme = "https" if self._tls else "http"
        if parts.scheme != expected_scheme or parts.netloc.lower() != (request.header("host") or "").lower():
            raise HttpRequestError(f"WebSocket from foreign origin {origin!r} refused", status=Status.FORBIDDEN)

    def _handle(self, request: Request) -> None:
        self._check_host(request)
        if request.header("transfer-encoding") is not None or request.header("content-length") not in (None, "0"):
            raise HttpRequestError("request bodies are not accepted", status=Status.BAD_REQUEST)
        path = request.path
        if path == self._config.ws_path:
            if not is_upgrade_request(request):
                raise HttpRequestError(f"{path} is the WebSocket endpoint; open / instead",
                                       status=Status.UPGRADE_REQUIRED)
            self._upgrade(request)
            return
        if request.method not in ("GET", "HEAD"):
            raise HttpRequestError(f"method {request.method} not allowed", status=Status.METHOD_NOT_ALLOWED)
        head_only = request.method == "HEAD"
        if path == "/":
            location = http.landing_location(self._config.ws_path)
            self._write(http.simple_response(Status.FOUND, f"see {location}", keep_alive=request.keep_alive,
                                             extra=(("Location", location),), head_only=head_only),
                        request.keep_alive)
            return
        file_path = http.resolve_static(self._config.novnc_root, path)
        self._busy = True
        self._cancel_timer()
        assert self._transport is not None
        self._transport.pause_reading()
        self._task = asyncio.get_running_loop().create_task(self._serve_file(file_path, request, head_only))

    async def _serve_file(self, file_path: Path, request: Request, head_only: bool) -> None:
        transport = self._transport
        assert transport is not None
        try:
            body = await asyncio.to_thread(file_path.read_bytes)
        except OSError as exc:
            log.warning("cannot read %s: %s", file_path, exc)
            self._busy = False
            self._respond_error(HttpRequestError(f"{request.path} not readable", status=Status.NOT_FOUND))
            return
        if transport.is_closing():
            return
        self._busy = False
        self._write(http.file_response(body, http.content_type(file_path), keep_alive=request.keep_alive,
                                       head_only=head_only), request.keep_alive)

    def _write(self, response: bytes, keep_alive: bool) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(response)
        if not keep_alive:
            self._cancel_timer()
            transport.close()
            return
        self._arm_timer()
        with contextlib.suppress(RuntimeError):  # already reading
            transport.resume_reading()
        if self._buffer:
            self._process()

    def _upgrade(self, request: Request) -> None:
        self._check_origin(request)
        handshake = accept_upgrade(request)
        transport = self._transport
        assert transport is not None
        self._cancel_timer()
        transport.write(handshake.response)
        conn = WebSocketConnection(Role.SERVER, max_frame_size=self._config.max_frame_size,
                                   max_message_size=self._config.max_message_size)
        initial = bytes(self._buffer)
        self._buffer.clear()
        web = self._web
        ws = open_websocket_stream(transport, conn, self._handler, subprotocol=handshake.subprotocol,
                                   initial=initial, close_timeout=self._config.close_timeout)
        web.clients.add(ws)
        # the socket's new protocol reports connection_lost to the stream; count this one down here too
        transport.set_protocol(_ClientTracker(transport.get_protocol(), web, ws))
        log.info("WebSocket client %s connected (subprotocol %s)", transport.get_extra_info("peername"),
                 handshake.subprotocol)


class _ClientTracker(asyncio.Protocol):
    """Wraps the upgraded protocol to keep WebServer.clients and the connection count right."""

    def __init__(self, inner: asyncio.BaseProtocol, web: WebServer, ws: WebSocketTransport) -> None:
        assert isinstance(inner, asyncio.Protocol)
        self._inner = inner
        self._web = web
        self._ws = ws

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._web.clients.discard(self._ws)
        self._web.connections -= 1
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def start_web_server(handler: SessionHandler, host: str = "127.0.0.1", port: int = DEFAULT_WEB_PORT, *,
                           ssl: ssl_mod.SSLContext | None = None, config: WebConfig | None = None,
                           sock: socket.socket | None = None) -> WebServer:
    """Listen on host:port (port 0: any free port) and serve noVNC plus RFB over WebSocket.

    ``handler(reader, writer)`` runs once per WebSocket client, exactly like asyncio.start_server's
    callback. ``ssl``: serve https/wss with this context. ``sock``: an already listening socket instead of
    host and port (e.g. the one systemd passed: vkmsremote.service.activation). The address policy (loopback
    unless allowed otherwise) is the caller's, as for the RFB listener. Raises UsageError if noVNC is not installed.
    """
    config = config or WebConfig()
    http.check_novnc_root(config.novnc_root)
    if sock is not None:
        host = str(sock.getsockname()[0])
    allowed = config.allowed_hosts
    if allowed is None and is_loopback_name(host):
        allowed = LOOPBACK_NAMES | {host.lower()}
    loop = asyncio.get_running_loop()
    holder: list[WebServer] = []
    if sock is not None:
        server = await loop.create_server(lambda: _HttpProtocol(holder[0], handler, allowed), sock=sock, ssl=ssl)
    else:
        server = await loop.create_server(lambda: _HttpProtocol(holder[0], handler, allowed), host, port, ssl=ssl)
    bound_port = server.sockets[0].getsockname()[1]
    url = f"{'https' if ssl else 'http'}://{_url_host(host)}:{bound_port}/"
    web = WebServer(server, url, config)
    holder.append(web)
    return web

"""The web listener: a noVNC page and RFB over WebSocket on one HTTP(S) port.

``start_web_server(handler, host, port, ssl=...)`` serves, with noVNC from the npm registry (preferred):
  /                 our page (vkmsremote/web/page/index.html, titled after the connector) driving noVNC,
  /vkmsremote/...   the page's script and style,
  /novnc/...        noVNC's library (core/, vendor/),
and with Debian's noVNC 1.3 app (the fallback): / redirects to its vnc.html, anything else is its files.
  /websockify       the WebSocket upgrade in both cases; each connection runs ``handler(reader, writer)``,
                    the same RFB session callback the plain TCP listener passes to asyncio.start_server.

HTTP parsing and the WebSocket protocol are the ``websockets`` library's (asyncio server); this module
decides what each request gets. Security: the caller picks the address (loopback unless the user opts out,
as for the RFB port) and passes an SSLContext for https/wss. A browser lets any web page open a WebSocket to
127.0.0.1, so the upgrade is refused unless its Origin is this server's own origin, and when bound to
loopback the Host header must name loopback (DNS rebinding would otherwise make a foreign page
"same-origin").
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import logging
import socket
import ssl as ssl_mod
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import NegotiationError
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from vkmsremote.errors import HttpRequestError
from vkmsremote.web import http
from vkmsremote.web.novnc import NovncBundle, find_bundle, load_bundle
from vkmsremote.web.transport import SessionHandler, serve_stream

log = logging.getLogger(__name__)

DEFAULT_WEB_PORT: Final = 5800  # the customary "VNC over HTTP" port (5800 + display)
LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})
PAGE_DIR: Final = Path(__file__).with_name("page")
DEFAULT_MAX_MESSAGE: Final = 4 << 20
"""The largest WebSocket message (and frame) a browser may send; RFB clients send a few bytes at a time.
websockets checks it on the frame header, before buffering any payload."""


@dataclass(frozen=True, slots=True)
class WebConfig:
    novnc_root: Path | None = None
    """noVNC to serve; None: the npm install, else Debian's package (vkmsremote.web.novnc.find_bundle)."""
    title: str = "XR-0 - vkmsremote"
    """The page title until the server's desktop name arrives (the connector's name)."""
    ws_path: str = http.WEBSOCKET_PATH
    allowed_hosts: frozenset[str] | None = None
    """Host header names (no port) accepted; None: loopback names when bound to loopback, else any."""
    max_message_size: int = DEFAULT_MAX_MESSAGE
    head_timeout: float = 10.0
    """Seconds a connection may take for its request and, for a WebSocket, the opening handshake."""
    max_connections: int = 256
    close_timeout: float = 2.0
    """Seconds to wait for the peer's Close reply before dropping TCP."""


def is_loopback_host(host: str) -> bool:
    """True if ``host`` (a Host header name or a bind address, IPv6 with or without brackets; not resolved)
    is a loopback name or a loopback address literal. Compare vkmsremote.server.app.resolves_to_loopback,
    which resolves names (the rule for listening without authentication)."""
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


def _response(status: HTTPStatus, body: bytes, content_type: str = "text/plain; charset=utf-8",
              extra: tuple[tuple[str, str], ...] = ()) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Connection", "close"), *http.SECURITY_HEADERS, *extra])
    return Response(int(status), status.phrase, headers, body)


def _error(err: HttpRequestError) -> Response:
    status = HTTPStatus(err.status)
    extra: tuple[tuple[str, str], ...] = ()
    if status == HTTPStatus.UPGRADE_REQUIRED:
        extra = (("Sec-WebSocket-Version", "13"),)
    elif status == HTTPStatus.METHOD_NOT_ALLOWED:
        extra = (("Allow", "GET"),)
    return _response(status, (err.message + "\n").encode(), extra=extra)


class WebServer:
    """A running web listener. ``url`` is what to open in a browser; ``bundle`` the noVNC it serves."""

    def __init__(self, config: WebConfig, bundle: NovncBundle, handler: SessionHandler,
                 allowed_hosts: frozenset[str] | None, tls: bool) -> None:
        self.config = config
        self.bundle = bundle
        self.url = ""
        self._handler = handler
        self._allowed_hosts = allowed_hosts
        self._tls = tls
        self._index = (PAGE_DIR / "index.html").read_text().replace(
            "@TITLE@", html.escape(config.title)).replace("@VERSION@", html.escape(bundle.version)).encode()
        self.server: Server | None = None

    @property
    def clients(self) -> set[ServerConnection]:
        """The open WebSocket connections (those that completed the opening handshake)."""
        if self.server is None:
            return set()
        return {c for c in self.server.connections if c.state is State.OPEN}

    async def close(self) -> None:
        """Stop listening and close every WebSocket client with 1001 (going away)."""
        if self.server is not None:
            self.server.close(close_connections=True)
            await self.server.wait_closed()

    async def __aenter__(self) -> WebServer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # --- the two callbacks websockets calls ---

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer a plain HTTP request; None lets a WebSocket upgrade on ws_path go ahead."""
        try:
            return await self._route(connection, request)
        except HttpRequestError as err:
            log.info("web peer %s: %s", connection.remote_address, err)
            return _error(err)

    async def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        headers = request.headers
        if self._allowed_hosts is not None:
            host = http.single_header(headers, "Host")
            if host is None or _host_name(host) not in self._allowed_hosts:
                raise HttpRequestError(f"Host {host!r} is not a name of this server",
                                       status=HTTPStatus.MISDIRECTED_REQUEST)
        method = getattr(request, "method", "GET")
        if method != "GET":
            raise HttpRequestError(f"method {method} not allowed", status=HTTPStatus.METHOD_NOT_ALLOWED)
        assert self.server is not None
        if len(self.server.connections) > self.config.max_connections:
            raise HttpRequestError("too many connections", status=HTTPStatus.SERVICE_UNAVAILABLE)
        try:
            path = http.request_path(request.path)
        except ValueError as exc:
            raise HttpRequestError(str(exc), status=HTTPStatus.BAD_REQUEST) from exc
        if path == self.config.ws_path:
            if "websocket" not in (http.single_header(headers, "Upgrade") or "").lower():
                raise HttpRequestError(f"{path} is the WebSocket endpoint; open / instead",
                                       status=HTTPStatus.UPGRADE_REQUIRED)
            self._check_origin(headers)
            return None
        if self.bundle.kind == "app":  # Debian's noVNC 1.3: its own vnc.html
            if path == "/":
                location = http.landing_location(self.config.ws_path)
                return _response(HTTPStatus.FOUND, f"see {location}\n".encode(), extra=(("Location", location),))
            return await self._file(self.bundle.root, path)
        if path == "/":
            return _response(HTTPStatus.OK, self._index, "text/html; charset=utf-8")
        for prefix, root in (("/vkmsremote/", PAGE_DIR), ("/novnc/", self.bundle.root)):
            if path.startswith(prefix):
                return await self._file(root, path[len(prefix) - 1:])
        raise HttpRequestError(f"{path} not found", status=HTTPStatus.NOT_FOUND)

    def _check_origin(self, headers: Headers) -> None:
        origin = http.single_header(headers, "Origin")
        if origin is None:
            return  # not a browser: the Origin rule protects browsers' users only
        parts = urlsplit(origin)
        expected_scheme = "https" if self._tls else "http"
        if parts.scheme != expected_scheme or parts.netloc.lower() != (http.single_header(headers, "Host") or "").lower():
            raise HttpRequestError(f"WebSocket from foreign origin {origin!r} refused", status=HTTPStatus.FORBIDDEN)

    async def _file(self, root: Path, path: str) -> Response:
        file_path = http.resolve_static(root, path)
        try:
            body = await asyncio.to_thread(file_path.read_bytes)
        except OSError as exc:
            log.warning("cannot read %s: %s", file_path, exc)
            raise HttpRequestError(f"{path} not readable", status=HTTPStatus.NOT_FOUND) from exc
        return _response(HTTPStatus.OK, body, http.content_type(file_path))

    async def handle(self, connection: ServerConnection) -> None:
        log.info("WebSocket client %s connected (subprotocol %s)", connection.remote_address,
                 connection.subprotocol)
        await serve_stream(connection, self._handler)


class _Connection(ServerConnection):
    """websockets' server connection, plus a deadline on the closing handshake it leaves to the peer.

    When a peer breaks the protocol, websockets sends a Close and waits for the peer to close TCP; it
    enforces ``close_timeout`` only when we send or close, and an RFB session may be waiting to receive.
    So a peer that never closes would keep its session (and its handler) forever: drop TCP at the deadline.
    """

    _abort_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._abort_timer is None and self.protocol.close_expected():
            self._abort_timer = self.loop.call_later(self.close_timeout or 0.0, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        super().connection_lost(exc)


def _url_host(host: str) -> str:
    """How a browser reaches ``host``: a wildcard bind is reached by this machine's name."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname() or "localhost"
    return f"[{host}]" if ":" in host else host


async def start_web_server(handler: SessionHandler, host: str = "127.0.0.1", port: int = DEFAULT_WEB_PORT, *,
                           ssl: ssl_mod.SSLContext | None = None, config: WebConfig | None = None,
                           sock: socket.socket | None = None) -> WebServer:
    """Listen on host:port (port 0: any free port) and serve noVNC plus RFB over WebSocket.

    ``handler(reader, writer)`` runs once per WebSocket client, exactly like asyncio.start_server's
    callback. ``ssl``: serve https/wss with this context. ``sock``: an already listening socket instead of
    host and port (e.g. the one systemd passed: vkmsremote.service.activation). The address policy (loopback
    unless allowed otherwise) is the caller's, as for the RFB listener. Raises UsageError if no noVNC is
    installed.
    """
    config = config or WebConfig()
    bundle = load_bundle(config.novnc_root) if config.novnc_root is not None else find_bundle()
    if sock is not None:
        host = str(sock.getsockname()[0])
    allowed = config.allowed_hosts
    if allowed is None and is_loopback_host(host):
        allowed = LOOPBACK_NAMES | {host.lower()}
    web = WebServer(config, bundle, handler, allowed, ssl is not None)
    server = await serve(
        web.handle, ssl=ssl, process_request=web.process_request, process_response=_add_security_headers,
        subprotocols=[Subprotocol(http.SUBPROTOCOL)], select_subprotocol=_select_binary, compression=None,
        server_header=None, open_timeout=config.head_timeout, close_timeout=config.close_timeout,
        ping_interval=20, ping_timeout=20, create_connection=_Connection, max_size=config.max_message_size, max_queue=16, logger=log,
        host=None if sock is not None else host, port=None if sock is not None else port, sock=sock)
    web.server = server
    bound_port = server.sockets[0].getsockname()[1]
    web.url = f"{'https' if ssl else 'http'}://{_url_host(host)}:{bound_port}/"
    log.info("serving %s", bundle.describe())
    return web


def _select_binary(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Choose 'binary' when offered; a client offering only other subprotocols (websockify's old base64) is
    refused; one offering none gets none (noVNC 1.4+ offers none)."""
    if not offered:
        return None
    if http.SUBPROTOCOL in offered:
        return Subprotocol(http.SUBPROTOCOL)
    raise NegotiationError(f"no supported subprotocol in {offered!r} (only {http.SUBPROTOCOL!r})")


def _add_security_headers(connection: ServerConnection, request: Request, response: Response) -> Response:
    if response.status_code == 101:
        return response
    for name, value in http.SECURITY_HEADERS:
        if name not in response.headers:
            response.headers[name] = value
    return response

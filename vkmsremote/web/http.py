"""What the web listener answers, without I/O: static paths that cannot leave their folder, content types,
security headers, the landing URL of noVNC 1.3's app. Parsing HTTP is the ``websockets`` library's (request
line and each header line capped at 8 KiB, at most 128 headers, GET only: anything else is dropped).
"""

from __future__ import annotations

import posixpath
from http import HTTPStatus
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit

from vkmsremote.errors import HttpRequestError

WEBSOCKET_PATH = "/websockify"
"""Where the RFB WebSocket listens: noVNC's default ``path`` setting, so its connect panel works as is."""

SUBPROTOCOL = "binary"
"""The WebSocket subprotocol chosen when a client offers it (noVNC 1.3 does; 1.4 and later offer none)."""

MAX_TARGET_BYTES = 2048

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # noVNC loads ES modules: browsers insist on a JS type
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".mp3": "audio/mpeg",
    ".oga": "audio/ogg",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".txt": "text/plain; charset=utf-8",
}

# The page needs scripts, styles, images, sounds and a WebSocket to its own origin; nothing else, and it
# must not be framed by another site (the canvas takes keystrokes: clickjacking would type into XR-0).
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy",
     "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; "
     "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"),
    ("Cache-Control", "no-cache"),
)


class _Headers(Protocol):
    def get_all(self, key: str) -> list[str]: ...


def single_header(headers: _Headers, name: str) -> str | None:
    """The one value of header ``name``, None if absent; a request that sends it twice is refused with 400
    (RFC 9110 5.3: Host, Origin, Upgrade are not lists; which copy a proxy saw cannot be known)."""
    values = headers.get_all(name)
    if len(values) > 1:
        raise HttpRequestError(f"{len(values)} {name} headers", status=HTTPStatus.BAD_REQUEST)
    return values[0] if values else None


def request_path(target: str) -> str:
    """A request target's path with %-escapes decoded (query dropped); ValueError if it is not UTF-8 or too long."""
    if len(target) > MAX_TARGET_BYTES:
        raise ValueError(f"request target longer than {MAX_TARGET_BYTES} bytes")
    try:
        return unquote(urlsplit(target).path, errors="strict")
    except UnicodeDecodeError as exc:
        raise ValueError(f"bad request target {target[:80]!r}") from exc


def landing_location(ws_path: str = WEBSOCKET_PATH) -> str:
    """Where "/" redirects: noVNC's full client, connecting at once to our WebSocket on this origin.

    host, port and encrypt default to the page's own origin in noVNC 1.3 (app/ui.js initSettings), so only
    the path is given; ``resize=scale`` fits XR-0 into the window, ``reconnect`` survives server restarts.
    """
    return ("/vnc.html?autoconnect=1&reconnect=1&resize=scale&path="
            + quote(ws_path.lstrip("/"), safe=""))


def resolve_static(root: Path, url_path: str) -> Path:
    """The file under ``root`` that ``url_path`` names; HttpRequestError(404/403) if there is none.

    Path segments that are empty, '.', '..' or hidden are refused before touching the file system, so a
    request cannot leave ``root`` (symlinks inside the Debian package are the package's own business).
    """
    if not url_path.startswith("/") or "\x00" in url_path or "\\" in url_path:
        raise HttpRequestError(f"bad path {url_path!r}", status=HTTPStatus.BAD_REQUEST)
    segments = url_path.split("/")[1:]
    if any(seg.startswith(".") for seg in segments):
        raise HttpRequestError(f"path {url_path!r} has a dot segment", status=HTTPStatus.FORBIDDEN)
    relative = posixpath.normpath("/".join(segments))
    candidate = root / relative
    if not candidate.is_file():
        raise HttpRequestError(f"{url_path} not found", status=HTTPStatus.NOT_FOUND)
    return candidate


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")

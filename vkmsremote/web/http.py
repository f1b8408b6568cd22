"""The little HTTP/1.1 the web listener speaks, without I/O: request heads in, response bytes out.

It serves two things on one port: the noVNC page from Debian's ``novnc`` package (static files under
/usr/share/novnc, never copied into this tree) and the WebSocket upgrade (vkmsremote.web.websocket).
Only GET and HEAD exist; every peer-supplied length is capped (RFC 9112 section 2.3 leaves limits to
the server) and a request that breaks a rule is refused with the status an HTTPRequestError carries.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from vkmsremote.errors import HttpRequestError, UsageError

NOVNC_ROOT = Path("/usr/share/novnc")
"""Where Debian's ``novnc`` package (1:1.3.0) installs the web client."""

WEBSOCKET_PATH = "/websockify"
"""Where the RFB WebSocket listens: noVNC's default ``path`` setting, so its connect panel works as is."""

MAX_HEAD_BYTES = 16 * 1024
"""A request line plus headers longer than this is refused with 431."""

MAX_HEADERS = 64
MAX_TARGET_BYTES = 2048

_HEAD_END = b"\r\n\r\n"
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_REQUEST_LINE = re.compile(rb"^([A-Z]+) ([\x21-\x7e]+) HTTP/(1\.[01])$")  # RFC 9112 3.2: target is visible ASCII
_FIELD_VALUE = re.compile(rb"^[\t\x20-\x7e\x80-\xff]*$")


class Status(IntEnum):
    SWITCHING_PROTOCOLS = 101
    OK = 200
    FOUND = 302
    BAD_REQUEST = 400
    FORBIDDEN = 403
    NOT_FOUND = 404
    METHOD_NOT_ALLOWED = 405
    REQUEST_TIMEOUT = 408
    MISDIRECTED_REQUEST = 421
    UPGRADE_REQUIRED = 426
    REQUEST_HEADER_FIELDS_TOO_LARGE = 431
    SERVICE_UNAVAILABLE = 503


_REASONS = {
    Status.SWITCHING_PROTOCOLS: "Switching Protocols",
    Status.OK: "OK",
    Status.FOUND: "Found",
    Status.BAD_REQUEST: "Bad Request",
    Status.FORBIDDEN: "Forbidden",
    Status.NOT_FOUND: "Not Found",
    Status.METHOD_NOT_ALLOWED: "Method Not Allowed",
    Status.REQUEST_TIMEOUT: "Request Timeout",
    Status.MISDIRECTED_REQUEST: "Misdirected Request",
    Status.UPGRADE_REQUIRED: "Upgrade Required",
    Status.REQUEST_HEADER_FIELDS_TOO_LARGE: "Request Header Fields Too Large",
    Status.SERVICE_UNAVAILABLE: "Service Unavailable",
}

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


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request head. Header names are lower-cased; repeated headers keep their order."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """The field value, repeated fields joined with ", " (RFC 9110 5.3), or None if absent."""
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    def tokens(self, name: str) -> list[str]:
        """A comma-separated header's elements, lower-cased and stripped (e.g. Connection, Upgrade)."""
        value = self.header(name)
        if value is None:
            return []
        return [t.strip().lower() for t in value.split(",") if t.strip()]

    @property
    def path(self) -> str:
        """The target's path with %-escapes decoded (query dropped); HttpRequestError(400) if not UTF-8."""
        try:
            return unquote(urlsplit(self.target).path, errors="strict")
        except (UnicodeDecodeError, ValueError) as exc:
            raise HttpRequestError(f"bad request target {self.target[:80]!r}",
                                   status=Status.BAD_REQUEST) from exc

    @property
    def keep_alive(self) -> bool:
        if "close" in self.tokens("connection"):
            return False
        return self.version == "1.1" or "keep-alive" in self.tokens("connection")


def find_head_end(buffer: bytes | bytearray) -> int:
    """The length of the complete request head at the start of ``buffer`` (through CRLF CRLF), or -1.

    Raises HttpRequestError(431) once ``buffer`` holds more than MAX_HEAD_BYTES without a complete head.
    """
    end = buffer.find(_HEAD_END, 0, MAX_HEAD_BYTES + len(_HEAD_END))
    if end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise HttpRequestError(f"request head longer than {MAX_HEAD_BYTES} bytes",
                                   status=Status.REQUEST_HEADER_FIELDS_TOO_LARGE)
        return -1
    return end + len(_HEAD_END)


def parse_request_head(head: bytes) -> Request:
    """Parse a request line and header fields (RFC 9112 sections 3 and 5), ending in CRLF CRLF."""
    if not head.endswith(_HEAD_END) or len(head) > MAX_HEAD_BYTES + len(_HEAD_END):
        raise HttpRequestError("incomplete or oversized request head", status=Status.BAD_REQUEST)
    lines = head[: -len(_HEAD_END)].split(b"\r\n")
    match = _REQUEST_LINE.match(lines[0])
    if match is None:
        raise HttpRequestError(f"malformed request line {lines[0][:80]!r}", status=Status.BAD_REQUEST)
    method, target, version = (g.decode("ascii") for g in match.groups())
    if len(target) > MAX_TARGET_BYTES:
        raise HttpRequestError(f"request target longer than {MAX_TARGET_BYTES} bytes",
                               status=Status.BAD_REQUEST)
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpRequestError(f"more than {MAX_HEADERS} header fields",
                               status=Status.REQUEST_HEADER_FIELDS_TOO_LARGE)
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        # RFC 9112 5.1: no whitespace between name and colon; obsolete line folding is refused (5.2)
        if not colon or not _TOKEN.match(name) or not _FIELD_VALUE.match(value):
            raise HttpRequestError(f"malformed header field {line[:80]!r}", status=Status.BAD_REQUEST)
        headers.append((name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")))
    request = Request(method, target, version, tuple(headers))
    if version == "1.1" and request.header("host") is None:
        raise HttpRequestError("HTTP/1.1 request without Host", status=Status.BAD_REQUEST)
    return request


def response_head(status: Status, headers: list[tuple[str, str]] | tuple[tuple[str, str], ...] = ()) -> bytes:
    lines = [f"HTTP/1.1 {int(status)} {_REASONS[status]}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def simple_response(status: Status, text: str, *, keep_alive: bool = False,
                    extra: tuple[tuple[str, str], ...] = (), head_only: bool = False) -> bytes:
    """A complete plain-text response (errors, redirects)."""
    body = (text + "\n").encode("utf-8")
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
               ("Connection", "keep-alive" if keep_alive else "close"), *SECURITY_HEADERS, *extra]
    return response_head(status, headers) + (b"" if head_only else body)


def file_response(body: bytes, content_type: str, *, keep_alive: bool, head_only: bool) -> bytes:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
               ("Connection", "keep-alive" if keep_alive else "close"), *SECURITY_HEADERS]
    return response_head(Status.OK, headers) + (b"" if head_only else body)


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
        raise HttpRequestError(f"bad path {url_path!r}", status=Status.BAD_REQUEST)
    segments = url_path.split("/")[1:]
    if any(seg.startswith(".") for seg in segments):
        raise HttpRequestError(f"path {url_path!r} has a dot segment", status=Status.FORBIDDEN)
    relative = posixpath.normpath("/".join(segments))
    candidate = root / relative
    if not candidate.is_file():
        raise HttpRequestError(f"{url_path} not found", status=Status.NOT_FOUND)
    return candidate


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")


def check_novnc_root(root: Path) -> None:
    """Raise UsageError unless ``root`` holds noVNC's vnc.html and core/rfb.js."""
    if not (root / "vnc.html").is_file() or not (root / "core" / "rfb.js").is_file():
        raise UsageError(f"no noVNC web client at {root}",
                         hint="install Debian's novnc package (scripts/setup-host.sh does) or pass its path")

"""RFC 6455 WebSocket without I/O: the opening handshake and the framing of one connection.

Theory of operation (after h11): a WebSocketConnection is fed whatever bytes arrive with
``receive_data(data)`` (b"" means the peer closed TCP) and yields events from ``next_event()`` until it
returns NEED_DATA; ``send(event)`` returns the bytes to put on the wire. It never touches a socket.

Only what RFB over WebSocket needs exists: binary messages (noVNC, websockify's "binary" subprotocol),
ping/pong and the closing handshake. Text messages are refused with 1003 (RFB is not text), no extension
is ever negotiated, so any RSV bit is an error. Every frame and message is capped before its payload is
buffered. A peer that breaks a rule makes ``next_event`` raise WebSocketError carrying the close code to
fail the connection with (7.4.1): the caller sends ``send(Close(err.close_code, ...))`` and closes TCP.

States (the server's view; the client role mirrors it)::

    OPEN --send Close--> LOCAL_CLOSING --Close received--> CLOSED
    OPEN --Close received--> REMOTE_CLOSING --send Close--> CLOSED
    any --bad input--> FAILED (send Close once, then close TCP)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import ClassVar, Final

import numpy as np

from vkmsremote.errors import HttpRequestError, WebSocketError
from vkmsremote.web.http import Request, Status, response_head

ACCEPT_GUID: Final = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
SUPPORTED_VERSION: Final = "13"

DEFAULT_MAX_FRAME: Final = 1 << 20
"""Largest frame payload accepted from a peer. noVNC sends one frame per flush of small RFB messages;
the largest RFB client message is ClientCutText, which the RFB layer caps well below this."""

DEFAULT_MAX_MESSAGE: Final = 4 << 20
"""Largest message (sum of its fragments) accepted from a peer."""

MAX_CONTROL_PAYLOAD: Final = 125  # RFC 6455 5.5
MAX_CLOSE_REASON: Final = MAX_CONTROL_PAYLOAD - 2


class Opcode(IntEnum):
    """RFC 6455 section 5.2; 0x3-0x7 and 0xB-0xF are reserved and refused."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA

    @property
    def is_control(self) -> bool:
        return self >= 0x8


class CloseCode(IntEnum):
    """RFC 6455 section 7.4.1 (and the IANA registry for 1012-1014)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # never on the wire: "the Close frame had no status code"
    ABNORMAL = 1006  # never on the wire: "TCP closed without a Close frame"
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # never on the wire


def close_code_allowed_on_wire(code: int) -> bool:
    """Whether a peer may put ``code`` in a Close frame (RFC 6455 7.4.1/7.4.2, IANA registry)."""
    if 3000 <= code <= 4999:  # registered libraries/frameworks and private use
        return True
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)


class Role(Enum):
    SERVER = "server"  # receives masked frames, sends unmasked ones
    CLIENT = "client"  # the reverse (tests, tools)


class State(Enum):
    OPEN = "open"
    LOCAL_CLOSING = "local-closing"
    REMOTE_CLOSING = "remote-closing"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Data:
    """A binary frame's payload. ``message_finished``: the frame had FIN set."""

    payload: bytes
    message_finished: bool = True


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Close:
    """A Close frame. Received without a status code it reads as CloseCode.NO_STATUS; sent with
    NO_STATUS it goes out with an empty body."""

    code: int = CloseCode.NORMAL
    reason: str = ""


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """TCP closed. ``clean``: a Close frame had been received first (else it is 1006, abnormal)."""

    clean: bool


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()

Event = Data | Ping | Pong | Close | EndOfStream


# ----- opening handshake (RFC 6455 section 4.2) -----

def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (4.2.2 step 5.4)."""
    digest = hashlib.sha1((key + ACCEPT_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def is_upgrade_request(request: Request) -> bool:
    """Whether the request asks to become a WebSocket (the caller then validates it with accept_upgrade)."""
    return "websocket" in request.tokens("upgrade")


@dataclass(frozen=True, slots=True)
class Handshake:
    subprotocol: str | None
    response: bytes  # the 101 response to send before the first frame


def accept_upgrade(request: Request, *, subprotocols: tuple[str, ...] = ("binary",)) -> Handshake:
    """Validate a client's opening handshake and build the 101 response.

    Raises HttpRequestError with the status to refuse with: 400 for a malformed upgrade, 426 (with
    Sec-WebSocket-Version: 13 in the response the caller builds) for another protocol version. A client
    that offers subprotocols gets the first of ours it offers; one offering only others (websockify's old
    "base64") is refused, since answering without one makes the browser fail anyway (4.1, step 6).
    """
    if request.method != "GET" or request.version != "1.1":
        raise HttpRequestError("a WebSocket upgrade must be an HTTP/1.1 GET", status=Status.BAD_REQUEST)
    if "websocket" not in request.tokens("upgrade") or "upgrade" not in request.tokens("connection"):
        raise HttpRequestError("missing Upgrade: websocket / Connection: Upgrade", status=Status.BAD_REQUEST)
    version = request.header("sec-websocket-version")
    if version != SUPPORTED_VERSION:
        raise HttpRequestError(f"unsupported Sec-WebSocket-Version {version!r}; only 13",
                               status=Status.UPGRADE_REQUIRED)
    key = request.header("sec-websocket-key") or ""
    try:
        raw_key = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw_key = b""
    if len(raw_key) != 16:
        raise HttpRequestError("Sec-WebSocket-Key is not 16 bytes in base64", status=Status.BAD_REQUEST)
    offered = request.tokens("sec-websocket-protocol")
    chosen = next((p for p in subprotocols if p in offered), None)
    if offered and chosen is None:
        raise HttpRequestError(f"none of the offered subprotocols {offered} is supported; "
                               f"this server speaks {list(subprotocols)}", status=Status.BAD_REQUEST)
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
               ("Sec-WebSocket-Accept", accept_key(key))]
    if chosen is not None:
        headers.append(("Sec-WebSocket-Protocol", chosen))
    return Handshake(chosen, response_head(Status.SWITCHING_PROTOCOLS, headers))


# ----- framing (RFC 6455 section 5) -----

_U16: Final = struct.Struct(">H")
_U64: Final = struct.Struct(">Q")


def apply_mask(payload: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (5.3); the same call masks and unmasks."""
    n = len(payload)
    if n == 0:
        return b""
    padded = np.zeros((n + 3) // 4 * 4, np.uint8)
    padded[:n] = np.frombuffer(payload, np.uint8)
    words = padded.view(np.uint32)
    words ^= np.frombuffer(mask, np.uint32)[0]
    return padded[:n].tobytes()


def encode_frame(opcode: Opcode, payload: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One frame with the minimal length encoding (5.2); masked with ``mask`` (4 bytes) if given."""
    n = len(payload)
    head = bytearray([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if mask is not None else 0
    if n < 126:
        head.append(mask_bit | n)
    elif n < 1 << 16:
        head.append(mask_bit | 126)
        head += _U16.pack(n)
    else:
        head.append(mask_bit | 127)
        head += _U64.pack(n)
    if mask is None:
        return bytes(head) + payload
    if len(mask) != 4:
        raise ValueError("a frame mask is 4 bytes")
    return bytes(head) + mask + apply_mask(payload, mask)


def encode_close_payload(code: int, reason: str) -> bytes:
    """A Close body: 2-byte code and UTF-8 reason cut to fit 125 bytes on a character boundary."""
    if code == CloseCode.NO_STATUS:
        return b""
    raw = reason.encode("utf-8")[:MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
    return _U16.pack(code) + raw


class WebSocketConnection:
    """One WebSocket connection's framing state, after a successful opening handshake."""

    STATE_AFTER_LOCAL_CLOSE: ClassVar[dict[State, State]] = {
        State.OPEN: State.LOCAL_CLOSING,
        State.REMOTE_CLOSING: State.CLOSED,
        State.FAILED: State.FAILED,
    }

    def __init__(self, role: Role = Role.SERVER, *, max_frame_size: int = DEFAULT_MAX_FRAME,
                 max_message_size: int = DEFAULT_MAX_MESSAGE) -> None:
        self.role = role
        self.max_frame_size = max_frame_size
        self.max_message_size = max_message_size
        self.state = State.OPEN
        self.close_sent = False
        self.close_received: Close | None = None
        self._buffer = bytearray()
        self._eof = False
        self._in_message = False
        self._message_size = 0
        self._error: WebSocketError | None = None
        self._sending_message = False

    # --- input ---

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer, or b"" once it has closed TCP."""
        if self._eof:
            if data:
                raise RuntimeError("receive_data after end of stream")
            return
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> Event | _NeedData:
        """The next event, or NEED_DATA; raises WebSocketError if the peer broke the protocol."""
        if self._error is not None:
            raise self._error
        if self.close_received is not None:
            self._buffer.clear()  # nothing may follow a Close frame (5.5.1); drop it
        event = self._parse_frame() if self._buffer else None
        if event is not None:
            return event
        if self._eof:
            self.state = State.CLOSED
            return EndOfStream(clean=self.close_received is not None)
        return NEED_DATA

    def _fail(self, code: CloseCode, message: str) -> WebSocketError:
        self.state = State.FAILED
        self._error = WebSocketError(message, close_code=code)
        return self._error

    def _parse_frame(self) -> Event | None:
        """Parse one frame from the buffer; None if it is not complete yet."""
        buf = self._buffer
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin = bool(b0 & 0x80)
        if b0 & 0x70:
            raise self._fail(CloseCode.PROTOCOL_ERROR, "RSV bits set but no extension was negotiated (5.2)")
        try:
            opcode = Opcode(b0 & 0x0F)
        except ValueError:
            raise self._fail(CloseCode.PROTOCOL_ERROR, f"reserved opcode {b0 & 0x0F:#x} (5.2)") from None
        masked = bool(b1 & 0x80)
        if masked != (self.role is Role.SERVER):
            which = "unmasked client" if self.role is Role.SERVER else "masked server"
            raise self._fail(CloseCode.PROTOCOL_ERROR, f"{which} frame (5.1)")
        length = b1 & 0x7F
        pos = 2
        if length == 126:
            if len(buf) < 4:
                return None
            (length,) = _U16.unpack_from(buf, 2)
            pos = 4
            if length < 126:
                raise self._fail(CloseCode.PROTOCOL_ERROR, "payload length not minimally encoded (5.2)")
        elif length == 127:
            if len(buf) < 10:
                return None
            (length,) = _U64.unpack_from(buf, 2)
            pos = 10
            if length >> 63:
                raise self._fail(CloseCode.PROTOCOL_ERROR, "64-bit payload length has its top bit set (5.2)")
            if length < 1 << 16:
                raise self._fail(CloseCode.PROTOCOL_ERROR, "payload length not minimally encoded (5.2)")
        self._check_header(opcode, fin, length)
        mask = b""
        if masked:
            if len(buf) < pos + 4:
                return None
            mask = bytes(buf[pos:pos + 4])
            pos += 4
        if len(buf) < pos + length:
            return None
        raw = memoryview(buf)[pos:pos + length]
        payload = apply_mask(raw, mask) if masked else bytes(raw)
        raw.release()
        del buf[:pos + length]
        return self._frame_event(opcode, fin, payload)

    def _check_header(self, opcode: Opcode, fin: bool, length: int) -> None:
        """Refuse a frame from its header alone, before any of its payload is buffered."""
        if opcode.is_control:
            if not fin:
                raise self._fail(CloseCode.PROTOCOL_ERROR, f"fragmented {opcode.name} frame (5.5)")
            if length > MAX_CONTROL_PAYLOAD:
                raise self._fail(CloseCode.PROTOCOL_ERROR,
                                 f"{opcode.name} payload of {length} bytes; control frames carry at most 125 (5.5)")
            return
        if opcode is Opcode.CONTINUATION and not self._in_message:
            raise self._fail(CloseCode.PROTOCOL_ERROR, "continuation frame outside a fragmented message (5.4)")
        if opcode is not Opcode.CONTINUATION and self._in_message:
            raise self._fail(CloseCode.PROTOCOL_ERROR, "new data frame inside a fragmented message (5.4)")
        if opcode is Opcode.TEXT:
            raise self._fail(CloseCode.UNSUPPORTED_DATA, "text frame: RFB over WebSocket is binary only")
        if length > self.max_frame_size:
            raise self._fail(CloseCode.MESSAGE_TOO_BIG,
                             f"frame of {length} bytes exceeds the {self.max_frame_size}-byte cap")
        if self._message_size + length > self.max_message_size:
            raise self._fail(CloseCode.MESSAGE_TOO_BIG,
                             f"message exceeds the {self.max_message_size}-byte cap")

    def _frame_event(self, opcode: Opcode, fin: bool, payload: bytes) -> Event:
        if opcode is Opcode.PING:
            return Ping(payload)
        if opcode is Opcode.PONG:
            return Pong(payload)
        if opcode is Opcode.CLOSE:
            return self._close_event(payload)
        self._in_message = not fin
        self._message_size = 0 if fin else self._message_size + len(payload)
        return Data(payload, fin)

    def _close_event(self, payload: bytes) -> Close:
        if len(payload) == 1:
            raise self._fail(CloseCode.PROTOCOL_ERROR, "Close frame body of 1 byte (5.5.1)")
        if not payload:
            event = Close(CloseCode.NO_STATUS, "")
        else:
            (code,) = _U16.unpack_from(payload, 0)
            if not close_code_allowed_on_wire(code):
                raise self._fail(CloseCode.PROTOCOL_ERROR, f"close code {code} is not allowed (7.4)")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise self._fail(CloseCode.INVALID_PAYLOAD, "close reason is not UTF-8 (5.5.1)") from None
            event = Close(code, reason)
        self.close_received = event
        self.state = State.CLOSED if self.state is State.LOCAL_CLOSING else State.REMOTE_CLOSING
        return event

    # --- output ---

    def send(self, event: Data | Ping | Pong | Close) -> bytes:
        """The bytes for ``event``. Data and pings only while open; Close once (the reply, or a failure)."""
        mask = os.urandom(4) if self.role is Role.CLIENT else None
        if isinstance(event, Close):
            if self.close_sent:
                raise RuntimeError("a Close frame was already sent")
            if event.code != CloseCode.NO_STATUS and not close_code_allowed_on_wire(event.code):
                raise ValueError(f"close code {event.code} may not be sent")
            self.close_sent = True
            self.state = self.STATE_AFTER_LOCAL_CLOSE.get(self.state, self.state)
            return encode_frame(Opcode.CLOSE, encode_close_payload(event.code, event.reason), mask=mask)
        if self.close_sent or self.state is State.FAILED:
            raise RuntimeError(f"cannot send {type(event).__name__} after Close")
        if isinstance(event, Data):
            if self.state is not State.OPEN:
                raise RuntimeError(f"cannot send data in state {self.state.value}")
            opcode = Opcode.CONTINUATION if self._sending_message else Opcode.BINARY
            self._sending_message = not event.message_finished
            return encode_frame(opcode, event.payload, fin=event.message_finished, mask=mask)
        if len(event.payload) > MAX_CONTROL_PAYLOAD:
            raise ValueError("ping/pong payloads are at most 125 bytes")
        opcode = Opcode.PING if isinstance(event, Ping) else Opcode.PONG
        return encode_frame(opcode, event.payload, mask=mask)


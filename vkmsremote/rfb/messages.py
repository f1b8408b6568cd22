"""RFB messages as data: RFC 6143 sections 7.1-7.6 and the rfbproto/rfbproto extensions.

Every message is a frozen, slotted dataclass named as in the spec. Client-to-server messages know how to
read themselves (``HEADER`` is the fixed leading part, ``tail_length(header)`` says how many bytes follow,
``from_bytes(whole message)``) and how to write themselves (``to_bytes``: tests and the benchmark client
use it). Server-to-client messages only write themselves. Every peer-supplied length is checked against a
cap here, before anything is buffered; a lie gets a :class:`~vkmsremote.errors.RemoteProtocolError` naming the field. A message
this server could not send without breaking the spec raises :class:`~vkmsremote.errors.LocalProtocolError`.

Pseudo-rectangles (DesktopSize, ExtendedDesktopSize, Cursor, ...) are :class:`Rectangle` values built by
the ``*_rect`` functions at the bottom; the session puts them into a :class:`FramebufferUpdate`.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import ClassVar, Protocol

import numpy as np

from vkmsremote.errors import LocalProtocolError, RemoteProtocolError
from vkmsremote.rfb.constants import ClientMessage, Encoding, QemuSubtype, ServerMessage
from vkmsremote.rfb.pixelformat import PixelFormat

# --- caps on peer-supplied lengths --------------------------------------------------------------------
MAX_ENCODINGS = 1024
"""SetEncodings: real clients send a few dozen (TigerVNC ~30); the U16 field would allow 65535."""
MAX_FENCE_PAYLOAD = 64
"""ClientFence: rfbproto "ClientFence" limits the payload to 64 bytes."""
MAX_CUT_TEXT_LENGTH = 0x7FFF_FFFF
"""ClientCutText: a length with the top bit set is the Extended Clipboard format (a negative S32), which
this server never announces; anything above this is a protocol error. Smaller but still too long texts are
skipped by the protocol (see ServerConnection ``max_cut_text``)."""
MAX_EXTENDED_CLIPBOARD = 1 << 20
"""Extended Clipboard: cap on a message's payload as sent (zlib-compressed for provide) and, separately, on
the text it inflates to (``ExtendedClipboard.provided_text``: inflating stops there, no zlib bomb)."""
MAX_PLAIN_CREDENTIAL = 1024
"""VeNCrypt Plain: cap on the username and on the password length."""
MAX_DESKTOP_DIMENSION = 16384
"""SetDesktopSize: no sane screen is larger; also keeps width*height far from overflow territory."""


class ClientMessageType(Protocol):
    """What the protocol needs to parse one client message class."""

    TYPE: ClassVar[ClientMessage]
    HEADER: ClassVar[struct.Struct]

    @classmethod
    def tail_length(cls, header: bytes) -> int: ...

    @classmethod
    def from_bytes(cls, data: bytes) -> object: ...


# --- handshake (RFC 6143 7.1) ---------------------------------------------------------------------------

_VERSION_RE = re.compile(rb"RFB (\d{3})\.(\d{3})\n")


@dataclass(frozen=True, slots=True)
class ProtocolVersion:
    """``RFB xxx.yyy\\n`` (RFC 6143 7.1.1): 12 ASCII bytes."""

    major: int
    minor: int

    SIZE: ClassVar[int] = 12

    @classmethod
    def from_bytes(cls, data: bytes) -> ProtocolVersion:
        m = _VERSION_RE.fullmatch(data)
        if m is None:
            raise RemoteProtocolError(f"not an RFB ProtocolVersion message: {data[:12]!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    def to_bytes(self) -> bytes:
        return b"RFB %03d.%03d\n" % (self.major, self.minor)


@dataclass(frozen=True, slots=True)
class Screen:
    """The SCREEN structure of ExtendedDesktopSize / SetDesktopSize (rfbproto "ExtendedDesktopSize")."""

    id: int
    x: int
    y: int
    width: int
    height: int
    flags: int = 0

    STRUCT: ClassVar[struct.Struct] = struct.Struct(">IHHHHI")

    @classmethod
    def from_bytes(cls, data: bytes) -> Screen:
        return cls(*cls.STRUCT.unpack(data))

    def to_bytes(self) -> bytes:
        return self.STRUCT.pack(self.id, self.x, self.y, self.width, self.height, self.flags)


# --- client to server (RFC 6143 7.5, rfbproto "Client to Server Messages") ------------------------------


@dataclass(frozen=True, slots=True)
class SetPixelFormat:
    pixel_format: PixelFormat

    TYPE: ClassVar[ClientMessage] = ClientMessage.SET_PIXEL_FORMAT
    HEADER: ClassVar[struct.Struct] = struct.Struct(">B3x16s")  # type, padding, PIXEL_FORMAT

    @classmethod
    def tail_length(cls, header: bytes) -> int:
        return 0

    @classmethod
    def from_bytes(cls, data: bytes) -> SetPixelFormat:
        _, pf = cls.HEADER.unpack(data)
        return cls(PixelFormat.from_bytes(pf))

    def to_bytes(self) -> bytes:
        return self.HEADER.pack(self.TYPE, self.pixel_format.to_bytes())


@dataclass(frozen=True, slots=True)
class SetEncodings:
    encodings: tuple[int, ...]

    TYPE: ClassVar[ClientMessage] = ClientMessage.SET_ENCODINGS
    HEADER: ClassVar[struct.Struct] = struct.Struct(">BxH")  # type, padding, number-of-encodings

    @classmethod
    def tail_length(cls, header: bytes) -> int:
        _, count = cls.HEADER.unpack(header)
        if count > MAX_ENCODINGS:
            raise RemoteProtocolError(f"SetEncodings lists {count} encodings, more than the {MAX_ENCODINGS} accepted")
        return 4 * int(count)

    @classmethod
    def from_bytes(cls, data: bytes) -> SetEncodings:
        _, count = cls.HEADER.unpack_from(data)
        return cls(struct.unpack_from(f">{count}i", data, cls.HEADER.size))

    def to_bytes(self) -> bytes:
        n = len(self.encodings)
        return self.HEADER.pack(self.TYPE, n) + struct.pack(f">{n}i", *self.encodings)


@dataclass(frozen=True, slots=True)
class FramebufferUpdateRequest:
    incremental: bool
    x: int
    y: int
    width: int
    height: int

    TYPE: ClassVar[ClientMessage] = ClientMessage.FRAMEBUFFER_UPDATE_REQUEST
    HEADER: ClassVar[struct.Struct] = struct.Struct(">BBHHHH")

    @classmethod
    def tail_length(cls, header: bytes) -> int:
        return 0

    @classmethod
    def from_bytes(cls, data: bytes) -> FramebufferUpdateRequest:
        _, inc, x, y, w, h = cls.HEADER.unpack(data)
        return cls(inc != 0, x, y, w, h)

    def to_bytes(self) -> bytes:
        return self.HEADER.pack(self.TYPE, int(self.incremental), self.x, self.y, self.width, self.height)


@dataclass(frozen=True, slots=True)
class KeyEvent:
    down: bool
    key: int  # X11 keysym

    TYPE: ClassVar[ClientMessage] = ClientMessage.KEY_EVENT
    HEADER: ClassVar[struct.Struct] = struct.Struct(">BBxxI")

    @classmethod
    def tail_length(cls, header: bytes) -> int:
        return 0

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyEvent:
        _, down, key = cls.HEADER.unpack(data)
        return cls(down != 0, key)

    def to_bytes(self) -> bytes:
        return self.HEADER.pack(self.TYPE, int(self.down), self.key)


@dataclass(frozen=True, slots=True)
class PointerEvent:
    button_mask: int
    x: int
    y: int

    TYPE: ClassVar[ClientMessage] = ClientMessage.POINTER_EVENT
    HEADER: ClassVar[struct.Struct] = struct.Struct(">BBHH")

    @classmethod
    def tail_length(cls, header: bytes) -> int:
        return 0

    @classmethod
    def from_bytes(cls, data: bytes) -> PointerEvent:
        _, mask, x, y = cls.HEADER.unpack(data)
        return cls(mask, x, y)

    def to_bytes(self) -> bytes:
        return self.HEADER.pack(self.TYPE, self.button_mask, self.x, self.y)


@dataclass(frozen=True, slots=True)
class ClientCutText:
    text: bytes  # ISO 8859-1 per RFC 6143 7.5.6; kept as bytes, decoding cannot fail later

    TYPE: ClassVar[ClientMessage] = ClientMessage.CLIENT_CUT_TEXT
    HEADER: ClassVar[struct.Struct] = struct.Struct(">B3xI")

    @classmethod
    def tail_length(cls, header: bytes) -> int:
        _, length = cls.HEADER.unpack(header)
        if length > MAX_CUT_TEXT_LENGTH:
            raise RemoteProtocolError(
                f"ClientCutText length 0x{length:08x} is an Extended Clipboard message, which was not negotiated"
            )
        return int(length)

    @classmethod
    def is_extended(cls, header: bytes) -> bool:
        """A negative S32 length: the Extended Clipboard format (rfbproto "Extended Clipboard")."""
        _, length = cls.HEADER.unpack(header)
        return bool(length > MAX_CUT_TEXT_LENGTH)

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientCutText:
        return cls(bytes(data[cls.HEADER.size:]))

    def to_bytes(self) -> bytes:
        return self.HEADER.pack(self.TYPE, len(self.text)) + self.text


class ClipboardAction(IntFlag):
    """rfbproto "Extended Clipboard Pseudo-Encoding": the action bits of the flags word."""

    CAPS = 1 << 24
    REQUEST = 1 << 25
    PEEK = 1 << 26
    NOTIFY = 1 << 27
    PROVIDE = 1 << 28


class ClipboardFormat(IntFlag):
    """The format bits (0-15) of the flags word; this server handles text only."""

    TEXT = 1 << 0
    RTF = 1 << 1
    HTML = 1 << 2
    DIB = 1 << 3
    FILES = 1 << 4


_FORMAT_BITS = 16


@dataclass(frozen=True, slots=True)
class ExtendedClipboard:
    """An Extended Clipboard message: a ClientCutText / ServerCutText whose S32 length is negative.

    The body is a U32 flags word (one action, format bits) and a payload: for CAPS a U32 maximum size per
    format bit set (in bit order); for PROVIDE a zlib stream (its own, per message) holding, per format bit
    set, a U32 size and the data (text: UTF-8, CRLF line ends, NUL-terminated); nothing for the others.
    """

    flags: int
    payload: bytes = b""

    HEADER: ClassVar[struct.Struct] = struct.Struct(">B3xiI")  # type, padding, negative length, flags
    SERVER_TYPE: ClassVar[ServerMessage] = ServerMessage.SERVER_CUT_TEXT
    CLIENT_TYPE: ClassVar[ClientMessage] = ClientMessage.CLIENT_CUT_TEXT

    @property
    def action(self) -> ClipboardAction:
        return ClipboardAction(self.flags & 0xFF000000)

    @property
    def formats(self) -> ClipboardFormat:
        return ClipboardFormat(self.flags & 0xFFFF)

    # --- making them -------------------------------------------------------------------------------------

    @classmethod
    def caps(cls, actions: ClipboardAction, sizes: dict[ClipboardFormat, int]) -> ExtendedClipboard:
        formats = ClipboardFormat(0)
        for fmt in sizes:
            formats |= fmt
        payload = b"".join(struct.pack(">I", sizes[f]) for f in sorted(sizes, key=int))
        return cls(int(ClipboardAction.CAPS | actions | formats), payload)

    @classmethod
    def request(cls, formats: ClipboardFormat = ClipboardFormat.TEXT) -> ExtendedClipboard:
        return cls(int(ClipboardAction.REQUEST | formats))

    @classmethod
    def notify(cls, formats: ClipboardFormat = ClipboardFormat.TEXT) -> ExtendedClipboard:
        return cls(int(ClipboardAction.NOTIFY | formats))

    @classmethod
    def provide_text(cls, text: str) -> ExtendedClipboard:
        data = text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8") + b"\0"
        return cls(int(ClipboardAction.PROVIDE | ClipboardFormat.TEXT),
                   zlib.compress(struct.pack(">I", len(data)) + data))

    # --- reading them ------------------------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes) -> ExtendedClipboard:
        """From the whole message (header + body) of either direction."""
        _, length, flags = cls.HEADER.unpack(data[:cls.HEADER.size])
        if -length < 4:
            raise RemoteProtocolError(f"Extended Clipboard message of {-length} bytes has no flags word")
        return cls(flags, bytes(data[cls.HEADER.size:]))

    def caps_sizes(self) -> dict[ClipboardFormat, int]:
        """The client's maximum size per format (CAPS)."""
        sizes: dict[ClipboardFormat, int] = {}
        pos = 0
        for bit in range(_FORMAT_BITS):
            if self.flags & (1 << bit):
                if pos + 4 > len(self.payload):
                    raise RemoteProtocolError("Extended Clipboard caps list fewer sizes than formats")
                sizes[ClipboardFormat(1 << bit)] = struct.unpack_from(">I", self.payload, pos)[0]
                pos += 4
        return sizes

    def provided_text(self, max_size: int) -> tuple[str | None, bool]:
        """The text of a PROVIDE (None if it has none) and whether it was cut at ``max_size`` bytes.

        Inflates at most ``max_size`` + a few bytes (a zlib bomb stops there); invalid UTF-8 is replaced
        (U+FFFD), never raised; CRLF becomes LF and the NUL terminator goes."""
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(self.payload, max_size + 8)
        except zlib.error as exc:
            raise RemoteProtocolError(f"Extended Clipboard provide: bad zlib data ({exc})") from exc
        truncated = bool(inflater.unconsumed_tail)
        if not self.formats & ClipboardFormat.TEXT:
            return None, False
        if len(raw) < 4:
            raise RemoteProtocolError("Extended Clipboard provide: no text size")
        (size,) = struct.unpack_from(">I", raw)
        data = raw[4:4 + size]
        if size > len(data):
            truncated = True
        data = data[:max_size]
        if size > max_size:
            truncated = True
        text = data.split(b"\0", 1)[0].decode("utf-8", errors="replace")
        return text.replace("\r\n", "\n"), truncated

    def to_bytes(self) -> bytes:
        """Server -> client (ServerCutText with a negative length)."""
        return self.HEADER.pack(self.SERVER_TYPE, -(4 + len(self.payload)), self.flags) + self.payload

    def to_client_bytes(self) -> bytes:
        """Client -> server (ClientCutText with a negative length): for tests and fuzzing."""
        return self.HEADER.pack(self.CLIENT_TYPE, -(4 + len(self.payload)), self.flags) + self.payload


@dataclass(frozen=True, slots=True)
class EnableContinuousUpdates:
    enable: bool
    x: int
    y: int
    width: int
    height: int

    TYPE: ClassVar[ClientMessage] = ClientMessage.ENABLE_CONTINUOUS_UPDATES
    HEADER: ClassVar[struct.Struct] = struct.Struct(">BBHHHH")

    @classmethod
    def tail_length(cls, header: bytes) -> int:
        return 0

    @classmethod
    def from_bytes(cls, data: bytes) -> EnableContinuousUpdates:
        _, enable, x, y, w, h = cls.HEADER.unpack(data)
        return cls(enable != 0, x, y, w, h)

    def to_bytes(self) -> bytes:
        return self.HEADER.pack(self.TYPE, int(self.enable), self.x, self.y, self.width, self.height)


class FenceFlag(IntFlag):
    """Bits of ClientFence / ServerFence *flags* (rfbproto "ClientFence")."""

    BLOCK_BEFORE = 1 << 0
    BLOCK_AFTER = 1 << 1
    SYNC_NEXT = 1 << 2
    REQUEST = 1 << 31
    KNOWN = BLOCK_BEFORE | BLOCK_AFTER | SYNC_NEXT


@dataclass(frozen=True, slots=True)
class ClientFence:
    flags: int
    payload: bytes

    TYPE: ClassVar[ClientMessage] = ClientMessage.CLIENT_FENCE
    HEADER: ClassVar[struct.Struct] = struct.Struct(">B3xIB")

    @classmethod
    def tail_length(cls, header: bytes) -> int:
        _, _, length = cls.HEADER.unpack(header)
        if length > MAX_FENCE_PAYLOAD:
            raise RemoteProtocolError(f"ClientFence payload of {length} bytes exceeds the {MAX_FENCE_PAYLOAD} allowed")
        return int(length)

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientFence:
        _, flags, _ = cls.HEADER.unpack_from(data)
        return cls(flags, bytes(data[cls.HEADER.size:]))

    def to_bytes(self) -> bytes:
        return self.HEADER.pack(self.TYPE, self.flags, len(self.payload)) + self.payload

    @property
    def is_request(self) -> bool:
        return bool(self.flags & FenceFlag.REQUEST)


@dataclass(frozen=True, slots=True)
class SetDesktopSize:
    width: int
    height: int
    screens: tuple[Screen, ...]

    TYPE: ClassVar[ClientMessage] = ClientMessage.SET_DESKTOP_SIZE
    HEADER: ClassVar[struct.Struct] = struct.Struct(">BxHHBx")  # type, pad, width, height, n-screens, pad

    @classmethod
    def tail_length(cls, header: bytes) -> int:
        _, _, _, count = cls.HEADER.unpack(header)
        return Screen.STRUCT.size * int(count)  # a U8 count: at most 255 * 16 bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> SetDesktopSize:
        _, w, h, count = cls.HEADER.unpack_from(data)
        size, base = Screen.STRUCT.size, cls.HEADER.size
        screens = tuple(Screen.from_bytes(data[base + i * size: base + (i + 1) * size]) for i in range(count))
        return cls(w, h, screens)

    def to_bytes(self) -> bytes:
        head = self.HEADER.pack(self.TYPE, self.width, self.height, len(self.screens))
        return head + b"".join(s.to_bytes() for s in self.screens)


@dataclass(frozen=True, slots=True)
class QemuExtendedKeyEvent:
    """QEMU client message, submessage 0 (rfbproto "QEMU Extended Key Event Message")."""

    down: bool
    keysym: int
    keycode: int  # XT scancode; 0xE0-prefixed codes have the high bit set

    TYPE: ClassVar[ClientMessage] = ClientMessage.QEMU
    HEADER: ClassVar[struct.Struct] = struct.Struct(">BB")  # type, submessage-type
    STRUCT: ClassVar[struct.Struct] = struct.Struct(">BBHII")

    @classmethod
    def tail_length(cls, header: bytes) -> int:
        _, sub = cls.HEADER.unpack(header)
        if sub != QemuSubtype.EXTENDED_KEY_EVENT:
            raise RemoteProtocolError(f"QEMU client message with submessage-type {sub}, which was not negotiated")
        return cls.STRUCT.size - cls.HEADER.size

    @classmethod
    def from_bytes(cls, data: bytes) -> QemuExtendedKeyEvent:
        _, _, down, keysym, keycode = cls.STRUCT.unpack(data)
        return cls(down != 0, keysym, keycode)

    def to_bytes(self) -> bytes:
        return self.STRUCT.pack(self.TYPE, QemuSubtype.EXTENDED_KEY_EVENT, int(self.down), self.keysym, self.keycode)


CLIENT_MESSAGES: dict[int, type[ClientMessageType]] = {
    cls.TYPE: cls
    for cls in (SetPixelFormat, SetEncodings, FramebufferUpdateRequest, KeyEvent, PointerEvent, ClientCutText,
                EnableContinuousUpdates, ClientFence, SetDesktopSize, QemuExtendedKeyEvent)
}
"""Client message-type byte -> the class that parses it. Any other type byte is a protocol error: without
knowing a message's length the stream cannot be resynchronised."""

ClientEvent = (SetPixelFormat | SetEncodings | FramebufferUpdateRequest | KeyEvent | PointerEvent | ClientCutText
               | EnableContinuousUpdates | ClientFence | SetDesktopSize | QemuExtendedKeyEvent | ExtendedClipboard)


# --- server to client (RFC 6143 7.3.2, 7.6) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerInit:
    width: int
    height: int
    pixel_format: PixelFormat
    name: str  # sent as UTF-8 (rfbproto "String Encodings")

    HEADER: ClassVar[struct.Struct] = struct.Struct(">HH16sI")

    def to_bytes(self) -> bytes:
        name = self.name.encode("utf-8")
        return self.HEADER.pack(self.width, self.height, self.pixel_format.to_bytes(), len(name)) + name


@dataclass(frozen=True, slots=True)
class Rectangle:
    """One rectangle of a FramebufferUpdate: header fields plus the already-encoded payload."""

    x: int
    y: int
    width: int
    height: int
    encoding: int
    payload: bytes = b""

    HEADER: ClassVar[struct.Struct] = struct.Struct(">HHHHi")

    def header_bytes(self) -> bytes:
        return self.HEADER.pack(self.x, self.y, self.width, self.height, self.encoding)


@dataclass(frozen=True, slots=True)
class FramebufferUpdate:
    rectangles: Sequence[Rectangle] = field(default_factory=tuple)

    TYPE: ClassVar[ServerMessage] = ServerMessage.FRAMEBUFFER_UPDATE
    HEADER: ClassVar[struct.Struct] = struct.Struct(">BxH")
    MAX_RECTANGLES: ClassVar[int] = 0xFFFF

    def chunks(self) -> list[bytes]:
        """The message as a list of byte strings (so a large payload is not copied to build it)."""
        n = len(self.rectangles)
        if n > self.MAX_RECTANGLES:
            raise LocalProtocolError(f"a FramebufferUpdate cannot carry {n} rectangles (at most 65535)")
        out = [self.HEADER.pack(self.TYPE, n)]
        for r in self.rectangles:
            out.append(r.header_bytes())
            if r.payload:
                out.append(r.payload)
        return out

    def to_bytes(self) -> bytes:
        return b"".join(self.chunks())


@dataclass(frozen=True, slots=True)
class SetColourMapEntries:
    first_colour: int
    colours: tuple[tuple[int, int, int], ...]  # 16-bit red, green, blue

    TYPE: ClassVar[ServerMessage] = ServerMessage.SET_COLOUR_MAP_ENTRIES
    HEADER: ClassVar[struct.Struct] = struct.Struct(">BxHH")

    def to_bytes(self) -> bytes:
        n = len(self.colours)
        flat = [c for rgb in self.colours for c in rgb]
        return self.HEADER.pack(self.TYPE, self.first_colour, n) + struct.pack(f">{3 * n}H", *flat)


@dataclass(frozen=True, slots=True)
class Bell:
    TYPE: ClassVar[ServerMessage] = ServerMessage.BELL
    HEADER: ClassVar[struct.Struct] = struct.Struct(">B")

    def to_bytes(self) -> bytes:
        return self.HEADER.pack(self.TYPE)


@dataclass(frozen=True, slots=True)
class ServerCutText:
    text: bytes  # ISO 8859-1 (RFC 6143 7.6.4)

    TYPE: ClassVar[ServerMessage] = ServerMessage.SERVER_CUT_TEXT
    HEADER: ClassVar[struct.Struct] = struct.Struct(">B3xI")

    @classmethod
    def from_str(cls, text: str) -> ServerCutText:
        """Latin-1 as the spec says; characters outside it become '?'."""
        return cls(text.replace("\r\n", "\n").encode("latin-1", errors="replace"))

    def to_bytes(self) -> bytes:
        return self.HEADER.pack(self.TYPE, len(self.text)) + self.text


@dataclass(frozen=True, slots=True)
class EndOfContinuousUpdates:
    TYPE: ClassVar[ServerMessage] = ServerMessage.END_OF_CONTINUOUS_UPDATES
    HEADER: ClassVar[struct.Struct] = struct.Struct(">B")

    def to_bytes(self) -> bytes:
        return self.HEADER.pack(self.TYPE)


@dataclass(frozen=True, slots=True)
class ServerFence:
    flags: int
    payload: bytes = b""

    TYPE: ClassVar[ServerMessage] = ServerMessage.SERVER_FENCE
    HEADER: ClassVar[struct.Struct] = struct.Struct(">B3xIB")

    def to_bytes(self) -> bytes:
        if len(self.payload) > MAX_FENCE_PAYLOAD:
            raise LocalProtocolError(f"fence payload of {len(self.payload)} bytes exceeds {MAX_FENCE_PAYLOAD}")
        return self.HEADER.pack(self.TYPE, self.flags, len(self.payload)) + self.payload


ServerMessageValue = (ServerInit | FramebufferUpdate | SetColourMapEntries | Bell | ServerCutText
                      | ExtendedClipboard | EndOfContinuousUpdates | ServerFence)


# --- pseudo-rectangles (rfbproto "Pseudo-encodings") -------------------------------------------------------


class ExtendedDesktopSizeReason(IntEnum):
    """x-position of an ExtendedDesktopSize rectangle."""

    SERVER = 0
    THIS_CLIENT = 1
    OTHER_CLIENT = 2


class ExtendedDesktopSizeStatus(IntEnum):
    """y-position of an ExtendedDesktopSize rectangle."""

    OK = 0
    PROHIBITED = 1
    OUT_OF_RESOURCES = 2
    INVALID_LAYOUT = 3
    FORWARDED = 4


def desktop_size_rect(width: int, height: int) -> Rectangle:
    return Rectangle(0, 0, width, height, Encoding.DESKTOP_SIZE)


_EDS_HEAD = struct.Struct(">B3x")


def extended_desktop_size_rect(reason: int, status: int, width: int, height: int,
                               screens: Sequence[Screen]) -> Rectangle:
    if not 1 <= len(screens) <= 255:
        raise LocalProtocolError(f"an ExtendedDesktopSize rectangle needs 1..255 screens, not {len(screens)}")
    payload = _EDS_HEAD.pack(len(screens)) + b"".join(s.to_bytes() for s in screens)
    return Rectangle(reason, status, width, height, Encoding.EXTENDED_DESKTOP_SIZE, payload)


_NAME_HEAD = struct.Struct(">I")


def desktop_name_rect(name: str) -> Rectangle:
    data = name.encode("utf-8")
    return Rectangle(0, 0, 0, 0, Encoding.DESKTOP_NAME, _NAME_HEAD.pack(len(data)) + data)


def qemu_extended_key_event_rect() -> Rectangle:
    return Rectangle(0, 0, 0, 0, Encoding.QEMU_EXTENDED_KEY_EVENT)


def cursor_rect(hot_x: int, hot_y: int, width: int, height: int, pixels: bytes, alpha: np.ndarray) -> Rectangle:
    """Cursor pseudo-rectangle: ``pixels`` already in the client's format; ``alpha`` is (h, w) uint8 and
    becomes the 1-bit mask (set where alpha >= 128), rows padded to whole bytes, MSB = leftmost pixel."""
    mask = np.packbits(alpha >= 128, axis=1).tobytes() if width and height else b""
    return Rectangle(hot_x, hot_y, width, height, Encoding.CURSOR, pixels + mask)


_ENCODING_HEAD = struct.Struct(">i")


def cursor_with_alpha_rect(hot_x: int, hot_y: int, bgra: np.ndarray) -> Rectangle:
    """Cursor With Alpha pseudo-rectangle, Raw-encoded: R, G, B, A bytes with alpha premultiplied.
    ``bgra`` is (h, w, 4) uint8 B, G, R, A with straight alpha (source.Cursor)."""
    h, w = int(bgra.shape[0]), int(bgra.shape[1])
    a = bgra[:, :, 3].astype(np.uint16)
    rgba = np.empty((h, w, 4), dtype=np.uint8)
    for dst, src in ((0, 2), (1, 1), (2, 0)):
        rgba[:, :, dst] = (bgra[:, :, src].astype(np.uint16) * a + 127) // 255
    rgba[:, :, 3] = bgra[:, :, 3]
    return Rectangle(hot_x, hot_y, w, h, Encoding.CURSOR_WITH_ALPHA,
                     _ENCODING_HEAD.pack(Encoding.RAW) + rgba.tobytes())


# --- the fixed colour map for 8-bit colour-map clients ---------------------------------------------------------

BGR233 = PixelFormat(8, 8, False, True, 7, 7, 3, 0, 3, 6)
"""The true-colour format a colour-map client's pixel indices are produced in: index = b<<6 | g<<3 | r."""


def bgr233_colour_map() -> SetColourMapEntries:
    """The 256 entries that make a colour-map client show BGR233 indices as the colours they stand for."""
    colours = tuple(
        ((i & 7) * 0xFFFF // 7, ((i >> 3) & 7) * 0xFFFF // 7, ((i >> 6) & 3) * 0xFFFF // 3) for i in range(256)
    )
    return SetColourMapEntries(0, colours)

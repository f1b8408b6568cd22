"""The consumer socket's wire format (version 1), without I/O.

Theory of operation (docs/consumer-protocol.md is the reference):
- Transport: a UNIX ``SOCK_SEQPACKET`` socket, so every message is one packet and the fds that travel
  with a message (SCM_RIGHTS) belong to that packet alone. All integers are little-endian.
- Every packet is ``Header`` (type u16, version u16, body length u32) + body; the body length must equal
  what follows the header, and no packet is longer than MAX_PACKET. Variable parts (strings, damage
  rectangles) have counts that are checked against caps before anything is allocated.
- Server -> consumer: HELLO once (the mapping: XR-0 -> card, connector, CRTC, mode), then MODE,
  BUFFER (metadata + dma-buf fds, once per buffer), FRAME (per flip or change: buffer id, sequence,
  timestamp, damage), RETIRE (a buffer will not be shown again: close its fds), BYE (why the server
  ends the connection). The consumer sends nothing in version 1 (closing the socket ends the session).
- :class:`ClientState` is the consumer's state machine: it checks the order (HELLO first), that each
  BUFFER came with as many fds as it announces, that FRAME and RETIRE name known buffers, and keeps the
  buffer table. It never closes fds itself; it hands back the fds that the caller must close.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import ClassVar

from vkmsremote.errors import ProtocolError

VERSION = 1
MAX_PACKET = 4096
"""No packet is longer (a FRAME with MAX_RECTS rectangles fits)."""
MAX_STRING = 255
"""Bytes of UTF-8 in any string field."""
MAX_PLANES = 4
MAX_RECTS = 256
"""Damage rectangles per FRAME; the server merges more into their bounding box."""
MAX_BUFFERS = 64
"""Buffers a consumer may hold at once (the server retires before it sends more)."""
MAX_DIMENSION = 16384


class ConsumerProtocolError(ProtocolError):
    """A consumer socket peer sent a packet that breaks the protocol or exceeds a cap."""


class MessageType(IntEnum):
    HELLO = 1
    MODE = 2
    BUFFER = 3
    FRAME = 4
    RETIRE = 5
    BYE = 6


class FrameFlags(IntFlag):
    NONE = 0
    FULL_DAMAGE = 1  # everything may have changed (first frame, mode change): the rectangles are empty
    NEW_BUFFER = 2  # the CRTC scans out another buffer than at the previous FRAME (a page flip)


class ByeReason(IntEnum):
    SHUTDOWN = 1  # the server stops
    TOO_MANY = 2  # the consumer cap is reached
    TOO_SLOW = 3  # the consumer did not read: its socket buffer filled up
    PROTOCOL = 4  # the consumer sent something (version 1 consumers send nothing)


@dataclass(frozen=True, slots=True)
class Header:
    STRUCT: ClassVar[struct.Struct] = struct.Struct("<HHI")  # type, version, body length
    type: int
    version: int
    length: int


def _pack_str(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > MAX_STRING:
        raise ValueError(f"string of {len(raw)} bytes (at most {MAX_STRING})")
    return struct.pack("<H", len(raw)) + raw


def _unpack_str(body: bytes, pos: int, what: str) -> tuple[str, int]:
    if pos + 2 > len(body):
        raise ConsumerProtocolError(f"{what}: truncated string length")
    (n,) = struct.unpack_from("<H", body, pos)
    if n > MAX_STRING:
        raise ConsumerProtocolError(f"{what}: string of {n} bytes (at most {MAX_STRING})")
    pos += 2
    if pos + n > len(body):
        raise ConsumerProtocolError(f"{what}: string runs past the packet")
    try:
        return body[pos:pos + n].decode(), pos + n
    except UnicodeDecodeError:
        raise ConsumerProtocolError(f"{what}: string is not UTF-8") from None


@dataclass(frozen=True, slots=True)
class Mode:
    """MODE: the CRTC's mode now. ``active`` False: the CRTC is off (no picture; no FRAME until it is on)."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIIB3x")  # width, height, refresh mHz, active
    TYPE: ClassVar[MessageType] = MessageType.MODE
    width: int
    height: int
    refresh_mhz: int
    active: bool

    def to_body(self) -> bytes:
        return self.STRUCT.pack(self.width, self.height, self.refresh_mhz, int(self.active))

    @classmethod
    def from_body(cls, body: bytes) -> Mode:
        _exact(body, cls.STRUCT.size, "MODE")
        w, h, refresh, active = cls.STRUCT.unpack(body)
        if w > MAX_DIMENSION or h > MAX_DIMENSION or active > 1:
            raise ConsumerProtocolError(f"MODE {w}x{h} active={active} is out of range")
        return cls(w, h, refresh, bool(active))


@dataclass(frozen=True, slots=True)
class Hello:
    """HELLO: who the server is and what the socket is the consumer socket of."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIII")  # connector id, crtc id, server pid, reserved
    TYPE: ClassVar[MessageType] = MessageType.HELLO
    name: str  # "XR-0": the configfs connector name
    card: str  # "/dev/dri/card0"
    connector: str  # DRM connector name, "Virtual-1"
    connector_id: int
    crtc_id: int
    server_pid: int
    mode: Mode

    def to_body(self) -> bytes:
        return (_pack_str(self.name) + _pack_str(self.card) + _pack_str(self.connector)
                + self.STRUCT.pack(self.connector_id, self.crtc_id, self.server_pid, 0) + self.mode.to_body())

    @classmethod
    def from_body(cls, body: bytes) -> Hello:
        name, pos = _unpack_str(body, 0, "HELLO name")
        card, pos = _unpack_str(body, pos, "HELLO card")
        connector, pos = _unpack_str(body, pos, "HELLO connector")
        _exact(body[pos:], cls.STRUCT.size + Mode.STRUCT.size, "HELLO")
        conn_id, crtc_id, pid, _ = cls.STRUCT.unpack_from(body, pos)
        mode = Mode.from_body(body[pos + cls.STRUCT.size:])
        return cls(name, card, connector, conn_id, crtc_id, pid, mode)


@dataclass(frozen=True, slots=True)
class Plane:
    pitch: int
    offset: int
    fd_index: int  # which of the BUFFER's fds holds this plane


@dataclass(frozen=True, slots=True)
class Buffer:
    """BUFFER: one framebuffer's metadata; its ``n_fds`` dma-buf fds travel with this packet (SCM_RIGHTS),
    one per distinct buffer object, in the order the planes first use them."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIIIIQHH")  # id, fb, w, h, fourcc, modifier, planes, fds
    PLANE: ClassVar[struct.Struct] = struct.Struct("<III")  # pitch, offset, fd index
    TYPE: ClassVar[MessageType] = MessageType.BUFFER
    buffer_id: int
    fb_id: int
    width: int
    height: int
    fourcc: int
    modifier: int
    planes: tuple[Plane, ...]
    n_fds: int

    def to_body(self) -> bytes:
        return self.STRUCT.pack(self.buffer_id, self.fb_id, self.width, self.height, self.fourcc, self.modifier,
                                len(self.planes), self.n_fds) + b"".join(
            self.PLANE.pack(p.pitch, p.offset, p.fd_index) for p in self.planes)

    @classmethod
    def from_body(cls, body: bytes) -> Buffer:
        if len(body) < cls.STRUCT.size:
            raise ConsumerProtocolError(f"BUFFER of {len(body)} bytes (at least {cls.STRUCT.size})")
        bid, fb, w, h, fourcc, modifier, n_planes, n_fds = cls.STRUCT.unpack_from(body)
        if not 1 <= n_planes <= MAX_PLANES or not 1 <= n_fds <= n_planes:
            raise ConsumerProtocolError(f"BUFFER {bid} with {n_planes} planes and {n_fds} fds "
                                        f"(1 to {MAX_PLANES} planes, 1 fd per distinct buffer)")
        _exact(body, cls.STRUCT.size + n_planes * cls.PLANE.size, "BUFFER")
        if not (0 < w <= MAX_DIMENSION and 0 < h <= MAX_DIMENSION):
            raise ConsumerProtocolError(f"BUFFER {bid} of {w}x{h}")
        planes = tuple(Plane(*cls.PLANE.unpack_from(body, cls.STRUCT.size + i * cls.PLANE.size))
                       for i in range(n_planes))
        if any(p.fd_index >= n_fds for p in planes) or {p.fd_index for p in planes} != set(range(n_fds)):
            raise ConsumerProtocolError(f"BUFFER {bid}: planes use fds {[p.fd_index for p in planes]} of {n_fds}")
        return cls(bid, fb, w, h, fourcc, modifier, planes, n_fds)


@dataclass(frozen=True, slots=True)
class Rect:
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True, slots=True)
class FrameEvent:
    """FRAME: the CRTC shows ``buffer_id`` since vblank ``vblank_seq`` (at ``vblank_ns``, CLOCK_MONOTONIC),
    and ``damage`` (CRTC coordinates) covers every pixel that differs from the previous FRAME's picture.
    The picture is the ``view`` rectangle (x, y, w, h) of the buffer (a compositor scanning several outputs
    out of one framebuffer puts this one at x, y)."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIQQQQiiIIH2x")
    RECT: ClassVar[struct.Struct] = struct.Struct("<HHHH")
    TYPE: ClassVar[MessageType] = MessageType.FRAME
    buffer_id: int
    flags: FrameFlags
    serial: int  # FRAME counter of the server, +1 per FRAME (a gap: this consumer missed nothing, never)
    vblank_seq: int
    vblank_ns: int  # when the vblank the change was seen at happened
    sent_ns: int  # when the server sent this FRAME (CLOCK_MONOTONIC)
    view: tuple[int, int, int, int]
    damage: tuple[Rect, ...] = field(default=())

    def to_body(self) -> bytes:
        if len(self.damage) > MAX_RECTS:
            raise ValueError(f"{len(self.damage)} damage rectangles (at most {MAX_RECTS})")
        x, y, w, h = self.view
        return self.STRUCT.pack(self.buffer_id, int(self.flags), self.serial, self.vblank_seq, self.vblank_ns,
                                self.sent_ns, x, y, w, h, len(self.damage)) + b"".join(
            self.RECT.pack(r.x, r.y, r.w, r.h) for r in self.damage)

    @classmethod
    def from_body(cls, body: bytes) -> FrameEvent:
        if len(body) < cls.STRUCT.size:
            raise ConsumerProtocolError(f"FRAME of {len(body)} bytes (at least {cls.STRUCT.size})")
        bid, flags, serial, seq, vns, sns, x, y, w, h, n = cls.STRUCT.unpack_from(body)
        if n > MAX_RECTS:
            raise ConsumerProtocolError(f"FRAME with {n} damage rectangles (at most {MAX_RECTS})")
        _exact(body, cls.STRUCT.size + n * cls.RECT.size, "FRAME")
        if flags & ~int(FrameFlags.FULL_DAMAGE | FrameFlags.NEW_BUFFER):
            raise ConsumerProtocolError(f"FRAME with unknown flags {flags:#x}")
        if not (0 < w <= MAX_DIMENSION and 0 < h <= MAX_DIMENSION):
            raise ConsumerProtocolError(f"FRAME view {w}x{h}")
        rects = tuple(Rect(*cls.RECT.unpack_from(body, cls.STRUCT.size + i * cls.RECT.size)) for i in range(n))
        for r in rects:
            if r.w == 0 or r.h == 0 or r.x + r.w > w or r.y + r.h > h:
                raise ConsumerProtocolError(f"FRAME damage {r} outside the {w}x{h} view")
        return cls(bid, FrameFlags(flags), serial, seq, vns, sns, (x, y, w, h), rects)


@dataclass(frozen=True, slots=True)
class Retire:
    STRUCT: ClassVar[struct.Struct] = struct.Struct("<I")
    TYPE: ClassVar[MessageType] = MessageType.RETIRE
    buffer_id: int

    def to_body(self) -> bytes:
        return self.STRUCT.pack(self.buffer_id)

    @classmethod
    def from_body(cls, body: bytes) -> Retire:
        _exact(body, cls.STRUCT.size, "RETIRE")
        return cls(*cls.STRUCT.unpack(body))


@dataclass(frozen=True, slots=True)
class Bye:
    STRUCT: ClassVar[struct.Struct] = struct.Struct("<I")
    TYPE: ClassVar[MessageType] = MessageType.BYE
    reason: ByeReason
    text: str = ""

    def to_body(self) -> bytes:
        return self.STRUCT.pack(self.reason) + _pack_str(self.text)

    @classmethod
    def from_body(cls, body: bytes) -> Bye:
        if len(body) < cls.STRUCT.size:
            raise ConsumerProtocolError("truncated BYE")
        (reason,) = cls.STRUCT.unpack_from(body)
        text, pos = _unpack_str(body, cls.STRUCT.size, "BYE text")
        _exact(body, pos, "BYE")
        try:
            return cls(ByeReason(reason), text)
        except ValueError:
            raise ConsumerProtocolError(f"BYE with unknown reason {reason}") from None


Message = Hello | Mode | Buffer | FrameEvent | Retire | Bye
_DECODERS: dict[int, type[Hello] | type[Mode] | type[Buffer] | type[FrameEvent] | type[Retire] | type[Bye]] = {
    MessageType.HELLO: Hello, MessageType.MODE: Mode, MessageType.BUFFER: Buffer,
    MessageType.FRAME: FrameEvent, MessageType.RETIRE: Retire, MessageType.BYE: Bye}


def _exact(body: bytes, size: int, what: str) -> None:
    if len(body) != size:
        raise ConsumerProtocolError(f"{what} body of {len(body)} bytes (expected {size})")


def encode(message: Message) -> bytes:
    """One packet for ``message`` (the caller attaches a BUFFER's fds)."""
    body = message.to_body()
    packet = Header.STRUCT.pack(message.TYPE, VERSION, len(body)) + body
    if len(packet) > MAX_PACKET:
        raise ValueError(f"{message.TYPE.name} packet of {len(packet)} bytes (at most {MAX_PACKET})")
    return packet


def decode(packet: bytes) -> Message:
    """The message in one packet; ConsumerProtocolError for anything malformed or over a cap."""
    if len(packet) > MAX_PACKET:
        raise ConsumerProtocolError(f"packet of {len(packet)} bytes (at most {MAX_PACKET})")
    if len(packet) < Header.STRUCT.size:
        raise ConsumerProtocolError(f"packet of {len(packet)} bytes: shorter than the header")
    mtype, version, length = Header.STRUCT.unpack_from(packet)
    if version != VERSION:
        raise ConsumerProtocolError(f"protocol version {version} (this side speaks {VERSION})")
    if length != len(packet) - Header.STRUCT.size:
        raise ConsumerProtocolError(f"header announces {length} body bytes, the packet has "
                                    f"{len(packet) - Header.STRUCT.size}")
    decoder = _DECODERS.get(mtype)
    if decoder is None:
        raise ConsumerProtocolError(f"unknown message type {mtype}")
    return decoder.from_body(packet[Header.STRUCT.size:])


# --- the consumer's state machine ---------------------------------------------------------------------------


@dataclass(slots=True)
class HeldBuffer:
    """A buffer the consumer holds: its metadata and the fds it received with it."""

    meta: Buffer
    fds: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Received:
    """What one packet meant. ``message``: the decoded message. ``buffer``: for BUFFER and FRAME, the
    buffer it names. ``release``: fds the caller must close now (a retired or replaced buffer's)."""

    message: Message
    buffer: HeldBuffer | None = None
    release: tuple[int, ...] = ()


class ClientState:
    """The consumer side: ``receive(packet, fds)`` per packet; ``closed`` after BYE or end of stream."""

    def __init__(self) -> None:
        self.hello: Hello | None = None
        self.mode: Mode | None = None
        self.buffers: dict[int, HeldBuffer] = {}
        self.last_frame: FrameEvent | None = None
        self.closed = False

    def receive(self, packet: bytes, fds: list[int] | tuple[int, ...]) -> Received:
        """Digest one packet and the fds that came with it. On ConsumerProtocolError the fds of this
        packet are *not* taken over: the caller closes them (and everything in ``buffers``)."""
        if self.closed:
            raise ConsumerProtocolError("packet after the end of the session")
        if not packet:
            self.closed = True
            raise ConsumerProtocolError("the server closed the socket", hint="it stopped, or dropped this consumer")
        message = decode(packet)
        if isinstance(message, Buffer):
            if len(fds) != message.n_fds:
                raise ConsumerProtocolError(f"BUFFER {message.buffer_id} announces {message.n_fds} fds, "
                                            f"{len(fds)} came with it")
        elif fds:
            raise ConsumerProtocolError(f"{message.TYPE.name} came with {len(fds)} fds")
        if self.hello is None and not isinstance(message, (Hello, Bye)):
            raise ConsumerProtocolError(f"{message.TYPE.name} before HELLO")
        if isinstance(message, Hello):
            if self.hello is not None:
                raise ConsumerProtocolError("a second HELLO")
            self.hello, self.mode = message, message.mode
            return Received(message)
        if isinstance(message, Mode):
            self.mode = message
            return Received(message)
        if isinstance(message, Buffer):
            if message.buffer_id in self.buffers:
                raise ConsumerProtocolError(f"BUFFER {message.buffer_id} sent twice without RETIRE")
            if len(self.buffers) >= MAX_BUFFERS:
                raise ConsumerProtocolError(f"more than {MAX_BUFFERS} buffers held")
            held = HeldBuffer(message, tuple(fds))
            self.buffers[message.buffer_id] = held
            return Received(message, held)
        if isinstance(message, FrameEvent):
            held_or_none = self.buffers.get(message.buffer_id)
            if held_or_none is None:
                raise ConsumerProtocolError(f"FRAME names buffer {message.buffer_id}, which was never sent")
            if self.mode is not None and not self.mode.active:
                raise ConsumerProtocolError("FRAME while the mode says the CRTC is off")
            if self.last_frame is not None and message.serial <= self.last_frame.serial:
                raise ConsumerProtocolError(f"FRAME serial {message.serial} after {self.last_frame.serial}")
            self.last_frame = message
            return Received(message, held_or_none)
        if isinstance(message, Retire):
            gone = self.buffers.pop(message.buffer_id, None)
            if gone is None:
                raise ConsumerProtocolError(f"RETIRE of buffer {message.buffer_id}, which is not held")
            return Received(message, gone, gone.fds)
        assert isinstance(message, Bye)
        self.closed = True
        release = tuple(fd for b in self.buffers.values() for fd in b.fds)
        self.buffers.clear()
        return Received(message, None, release)

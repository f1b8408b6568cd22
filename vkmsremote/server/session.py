"""One VNC client: an asyncio loop around :class:`~vkmsremote.rfb.protocol.ServerConnection`.

Two tasks per client. The *reader* feeds the protocol and acts on each event (input to the InputSink,
update requests, encodings, fences). The *updater* sends FramebufferUpdates: it runs only while the
client has a request outstanding (or continuous updates on) and the transport's write buffer has drained,
takes the client's accumulated damage (a tile grid, see :mod:`vkmsremote.rfb.region`) and the hub's
newest snapshot, encodes in a worker thread, and writes. So a slow client never delays the others and
never makes the server queue frames for it: changes it could not take yet are merged into its damage.

Ordering rules the spec imposes and where they are kept:

* An update carrying DesktopSize/ExtendedDesktopSize carries no pixel data (rfbproto "ExtendedDesktopSize");
  such "no-data" updates go out as soon as possible, without waiting for a request, as TigerVNC does.
* Fences (rfbproto "ClientFence"): BlockBefore and SyncNext wait until no update is being built
  (``_quiesce``); with SyncNext no update starts until the message after the fence has been applied.
* Disabling continuous updates is answered with EndOfContinuousUpdates after any update in progress.

View-only sessions (the whole server is view-only, or this client proved the view-only password; see
``Session.view_only``) never get an InputSink: keys, pointer and clipboard go nowhere. Like TigerVNC's
view-only access they also get no clipboard from the server, cannot resize the desktop (SetDesktopSize is
answered "prohibited") and cannot take exclusive access (a non-shared ClientInit is treated as shared).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vkmsremote.errors import ProtocolError
from vkmsremote.frame import Cursor, Pixels, Rect
from vkmsremote.rfb.auth import SecurityPolicy
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.convert import convert
from vkmsremote.rfb.encodings import SUPPORTED, Encoder, EncoderSettings, make_encoder
from vkmsremote.rfb.messages import (
    BGR233,
    Bell,
    ClientCutText,
    ClientFence,
    EnableContinuousUpdates,
    EndOfContinuousUpdates,
    ExtendedDesktopSizeReason,
    ExtendedDesktopSizeStatus,
    FenceFlag,
    FramebufferUpdate,
    FramebufferUpdateRequest,
    KeyEvent,
    PointerEvent,
    QemuExtendedKeyEvent,
    Rectangle,
    Screen,
    ServerCutText,
    ServerFence,
    ServerInit,
    ServerMessageValue,
    SetDesktopSize,
    SetEncodings,
    SetPixelFormat,
    bgr233_colour_map,
    cursor_rect,
    cursor_with_alpha_rect,
    desktop_name_rect,
    desktop_size_rect,
    extended_desktop_size_rect,
    qemu_extended_key_event_rect,
)
from vkmsremote.rfb.pixelformat import NATIVE, PixelFormat
from vkmsremote.rfb.protocol import (
    AuthenticationFailed,
    AuthenticationSucceeded,
    ClientCutTextDiscarded,
    ClientInit,
    ConnectionClosed,
    ConnectionRefused,
    Event,
    NeedData,
    ServerConnection,
)
from vkmsremote.rfb.region import DamageGrid
from vkmsremote.server.blacklist import Blacklist
from vkmsremote.server.hub import Hub, Snapshot
from vkmsremote.server.input import InputSink, NullSink

log = logging.getLogger(__name__)

READ_CHUNK = 65536
WRITE_HIGH = 256 * 1024
"""Transport write-buffer high-water mark: above it the updater waits (drain) before encoding again."""
WRITE_LOW = 64 * 1024
MAX_UPDATE_RECTS = 256
"""Damage rectangles per update before the region is coarsened (encoders may still split them)."""

CURSOR_ENCODINGS = (Encoding.CURSOR_WITH_ALPHA, Encoding.CURSOR)


@dataclass(slots=True)
class SessionRecord:
    """What one client did, for logs, tests and benchmarks (kept after the client leaves)."""

    peer: str
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    outcome: str = "handshake"
    version: tuple[int, int] | None = None
    security_type: int | None = None
    vencrypt_subtype: int | None = None
    username: str | None = None
    view_only: bool = False
    """Input from this client was ignored (server-wide view-only, or the view-only password)."""
    tls_version: str | None = None
    shared: bool | None = None
    client_encodings: tuple[int, ...] = ()
    """The last SetEncodings list exactly as the client sent it."""
    encoding: int = Encoding.RAW
    """The encoding this server picked for pixel rectangles (first supported one in the client's list)."""
    pixel_format: PixelFormat = NATIVE
    continuous_updates: bool = False
    updates: int = 0
    rectangles: int = 0
    bytes_sent: int = 0
    rect_encodings: Counter[int] = field(default_factory=Counter)
    """How many rectangles went out per encoding number (pseudo-encodings included)."""


@dataclass(slots=True)
class SessionContext:
    """What every session of one server shares."""

    hub: Hub
    policy: SecurityPolicy
    sink: InputSink | None = None
    """One sink shared by every session, or None to use ``sink_factory``."""
    sink_factory: Callable[[int, int], InputSink] | None = None
    """Makes a session's own sink from the framebuffer size (closed with the session if it has close())."""
    view_only: bool = False
    """Every session is view-only (a session is also view-only if its client proved the view-only password)."""
    always_shared: bool = False
    blacklist: Blacklist = field(default_factory=Blacklist)
    handshake_timeout: float = 120.0
    max_cut_text: int = 1 << 20
    sessions: set[Session] = field(default_factory=set)
    on_record: Callable[[SessionRecord], None] | None = None


def _encode_rects(encoder: Encoder, pixels: Pixels, rects: list[Rect], pf: PixelFormat) -> list[Rectangle]:
    """Worker-thread part of an update: every damage rectangle through the connection's encoder."""
    out: list[Rectangle] = []
    for r in rects:
        for sub, enc, payload in encoder.encode(pixels, r, pf):
            out.append(Rectangle(sub.x, sub.y, sub.w, sub.h, enc, payload))
    return out


def _union(a: Rect | None, b: Rect | None) -> Rect | None:
    if a is None:
        return b
    if b is None:
        return a
    x0, y0 = min(a.x, b.x), min(a.y, b.y)
    x1, y1 = max(a.x + a.w, b.x + b.w), max(a.y + a.h, b.y + b.h)
    return Rect(x0, y0, x1 - x0, y1 - y0)


class Session:
    def __init__(self, ctx: SessionContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.ctx = ctx
        self._reader = reader
        self._writer = writer
        peer = writer.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.address = str(peer[0])
            self.record = SessionRecord(peer=f"{peer[0]}:{peer[1]}")
        else:
            self.address = str(peer or "unknown")
            self.record = SessionRecord(peer=self.address)
        transport = writer.transport
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        refuse = None
        # Every connection counts as an attempt (TigerVNC's rule), unless there is no secret to guess.
        blocked = ctx.blacklist.attempt(self.address) if ctx.policy.authenticates else 0.0
        if blocked > 0:
            refuse = f"Too many authentication failures from {self.address}; try again in {blocked:.0f} s"
        self.conn = ServerConnection(ctx.policy, refuse=refuse, max_cut_text=ctx.max_cut_text)

        # what the client announced
        self._encodings: tuple[int, ...] = ()
        self._encoders: dict[int, Encoder] = {}
        self._encoder: Encoder | None = None
        self._settings = EncoderSettings()
        self._pf = NATIVE
        self._encode_pf = NATIVE
        self._colour_map_pending = False
        self._seen_fence = False
        self._seen_cu = False

        # update state (event-loop thread only)
        self._attached = False
        self._fb_size = (0, 0)
        self._damage: DamageGrid | None = None
        self._requested = False
        self._req_area: Rect | None = None
        self._cu_area: Rect | None = None
        self._resize_reason = ExtendedDesktopSizeReason.SERVER
        self._eds_replies: list[tuple[int, int, tuple[Screen, ...] | None]] = []
        self._cursor_pending = False
        self._name_pending = False
        self._qemu_pending = False
        self._qemu_confirmed = False

        # flow control between the reader and the updater
        self._wake = asyncio.Event()
        self._update_idle = asyncio.Event()
        self._update_idle.set()
        self._hold = 0
        self._release_after_next = False
        self._closing = False

        # input: this client's sink, and what the client holds down (released when it leaves)
        self.sink: InputSink = NullSink()
        self._own_sink = False
        self._keys_down: set[int] = set()
        self._scancodes_down: dict[int, int] = {}
        self._buttons = 0
        self._pointer = (0, 0)
        self.view_only = ctx.view_only
        """This session takes no input; decided at authentication (server-wide flag OR view-only password)."""
        self.record.view_only = self.view_only

    # --- life cycle ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        updater: asyncio.Task[None] | None = None
        self.ctx.sessions.add(self)
        try:
            if not await self._handshake():
                return
            updater = asyncio.get_running_loop().create_task(self._update_loop(), name=f"vnc-update {self.record.peer}")
            await self._read_loop()
            self._end("closed by client")
        except ProtocolError as e:
            log.warning("%s: protocol error: %s", self.record.peer, e)
            self._end(f"protocol error: {e}")
        except TimeoutError:
            log.warning("%s: handshake not finished within %.0f s", self.record.peer, self.ctx.handshake_timeout)
            self._end("handshake timeout")
        except (ConnectionError, OSError) as e:
            self._end(f"connection lost: {e}")
        except Exception as e:  # e.g. the per-session input sink could not be made: end this session only
            log.exception("%s: session failed", self.record.peer)
            self._end(f"internal error: {e}")
        finally:
            self._closing = True
            self.ctx.sessions.discard(self)
            if updater is not None:
                updater.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await updater
            self._release_input()
            if self._own_sink:
                closer = getattr(self.sink, "close", None)
                if closer is not None:
                    with contextlib.suppress(Exception):
                        closer()
            if self._attached:
                self.ctx.hub.detach(self)
            await self._close_transport()
            self.record.ended = time.monotonic()
            log.info("%s: session ended (%s): %d updates, %d bytes", self.record.peer, self.record.outcome,
                     self.record.updates, self.record.bytes_sent)

    def _end(self, outcome: str) -> None:
        if self.record.outcome in ("handshake", "running"):
            self.record.outcome = outcome

    async def _close_transport(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.write(self.conn.data_to_send())
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), timeout=5)
        except (TimeoutError, ConnectionError, OSError):
            self._writer.transport.abort()

    def abort(self, reason: str) -> None:
        """Disconnect now (another client asked for exclusive access, the source failed, ...)."""
        log.info("%s: disconnecting: %s", self.record.peer, reason)
        self._end(reason)
        self._closing = True
        self._writer.transport.abort()

    # --- output -----------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if data and not self._writer.is_closing():
            self._writer.write(data)
            self.record.bytes_sent += len(data)

    def _send(self, message: ServerMessageValue) -> None:
        self._write(self.conn.send(message))

    def _flush(self) -> None:
        self._write(self.conn.data_to_send())

    def send_bell(self) -> None:
        if self._attached and not self._closing:
            self._send(Bell())

    def send_cut_text(self, text: str) -> None:
        if self._attached and not self._closing and not self.view_only:  # the clipboard is not the screen
            self._send(ServerCutText.from_str(text))

    # --- handshake ----------------------------------------------------------------------------------------

    async def _handshake(self) -> bool:
        self._flush()
        async with asyncio.timeout(self.ctx.handshake_timeout):
            while True:
                ev = self.conn.next_event()
                if isinstance(ev, NeedData):
                    self._flush()
                    self.conn.receive_data(await self._reader.read(READ_CHUNK))
                    continue
                if isinstance(ev, AuthenticationSucceeded):
                    rec = self.record
                    rec.version, rec.security_type = ev.version, ev.security_type
                    rec.vencrypt_subtype, rec.username = ev.vencrypt_subtype, ev.username
                    rec.tls_version = self.conn.tls_version
                    self.view_only = rec.view_only = self.ctx.view_only or ev.view_only
                    self.ctx.blacklist.success(self.address)
                    log.info("%s: authenticated (RFB %d.%d, %s%s%s)", rec.peer, *ev.version, ev.security_type.name,
                             f"/{ev.vencrypt_subtype.name}" if ev.vencrypt_subtype else "",
                             ", view-only password" if ev.view_only else "")
                elif isinstance(ev, AuthenticationFailed):
                    self.record.version = self.conn.version
                    self.record.security_type = ev.security_type
                    self.record.vencrypt_subtype = ev.vencrypt_subtype
                    self.record.username = ev.username
                    log.warning("%s: authentication failed (%s)", self.record.peer, ev.security_type.name)
                    self._flush()
                    self._end("authentication failed")
                    return False
                elif isinstance(ev, ConnectionRefused):
                    log.warning("%s: refused: %s", self.record.peer, ev.reason)
                    self.record.version = self.conn.version
                    self._flush()
                    self._end(f"refused: {ev.reason}")
                    return False
                elif isinstance(ev, ConnectionClosed):
                    self._end("closed during handshake")
                    return False
                elif isinstance(ev, ClientInit):
                    await self._client_init(ev)
                    return True

    async def _client_init(self, ev: ClientInit) -> None:
        self.record.shared = ev.shared
        if not ev.shared and not self.ctx.always_shared and not self.view_only:
            for other in list(self.ctx.sessions):
                if other is not self and other._attached:
                    other.abort("another client asked for exclusive access")
        snap = await self.ctx.hub.attach(self)
        self._attached = True
        if self.view_only:
            self.sink = NullSink()  # nothing this client sends can reach the shared sink or uinput
        elif self.ctx.sink is not None:
            self.sink = self.ctx.sink
        elif self.ctx.sink_factory is not None:
            self.sink = self.ctx.sink_factory(snap.width, snap.height)
            self._own_sink = True
        self._fb_size = (snap.width, snap.height)
        self._damage = DamageGrid(snap.width, snap.height)
        self._damage.add_all()
        self._send(ServerInit(snap.width, snap.height, NATIVE, self.ctx.hub.desktop_name))
        self.record.outcome = "running"

    # --- hub callbacks --------------------------------------------------------------------------------------

    def frame_ready(self, snapshot: Snapshot, damage: tuple[Rect, ...] | None, resized_by: object | None) -> None:
        if self._damage is None:
            return
        if (snapshot.width, snapshot.height) != self._fb_size:
            if resized_by is self:
                self._resize_reason = ExtendedDesktopSizeReason.THIS_CLIENT
            elif resized_by is not None:
                self._resize_reason = ExtendedDesktopSizeReason.OTHER_CLIENT
            else:
                self._resize_reason = ExtendedDesktopSizeReason.SERVER
        elif damage is None:
            self._damage.add_all()
        else:
            for r in damage:
                self._damage.add(r)
        self._wake.set()

    def cursor_changed(self, cursor: Cursor | None) -> None:
        if self._supports_cursor():
            self._cursor_pending = True
            self._wake.set()

    def name_changed(self, name: str) -> None:
        if Encoding.DESKTOP_NAME in self._encodings:
            self._name_pending = True
            self._wake.set()

    # --- reading ------------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            ev = self.conn.next_event()
            if isinstance(ev, NeedData):
                self._flush()
                data = await self._reader.read(READ_CHUNK)
                self.conn.receive_data(data)
                continue
            if isinstance(ev, ConnectionClosed):
                return
            release = self._release_after_next
            self._release_after_next = False
            await self._handle(ev)
            if release:
                self._release()

    async def _handle(self, ev: Event) -> None:
        if isinstance(ev, FramebufferUpdateRequest):
            self._on_update_request(ev)
        elif isinstance(ev, PointerEvent):
            self._on_pointer(ev)
        elif isinstance(ev, KeyEvent):
            self._on_key(ev)
        elif isinstance(ev, QemuExtendedKeyEvent):
            self._on_qemu_key(ev)
        elif isinstance(ev, SetEncodings):
            self._on_set_encodings(ev)
        elif isinstance(ev, SetPixelFormat):
            self._on_set_pixel_format(ev)
        elif isinstance(ev, ClientFence):
            await self._on_fence(ev)
        elif isinstance(ev, EnableContinuousUpdates):
            await self._on_enable_cu(ev)
        elif isinstance(ev, SetDesktopSize):
            self._on_set_desktop_size(ev)
        elif isinstance(ev, ClientCutText):
            if not self.view_only:
                self.sink.clipboard(ev.text.decode("latin-1"))
        elif isinstance(ev, ClientCutTextDiscarded):
            log.warning("%s: ignored a ClientCutText of %d bytes (limit %d)", self.record.peer, ev.length,
                        self.ctx.max_cut_text)
        else:  # handshake events cannot occur after ServerInit
            raise ProtocolError(f"unexpected event {type(ev).__name__} after the handshake")

    def _clip(self, x: int, y: int, w: int, h: int) -> Rect | None:
        return Rect(x, y, w, h).clip(*self._fb_size)

    def _on_update_request(self, ev: FramebufferUpdateRequest) -> None:
        area = self._clip(ev.x, ev.y, ev.width, ev.height)
        if ev.incremental:
            if self._cu_area is not None:
                return  # rfbproto "EnableContinuousUpdates": ignored while continuous updates are on
        else:
            if area is not None and self._damage is not None:
                self._damage.add(area)
            if Encoding.EXTENDED_DESKTOP_SIZE in self._encodings:
                # rfbproto "ExtendedDesktopSize": a non-incremental request is answered with the layout.
                self._eds_replies.append((ExtendedDesktopSizeReason.SERVER, ExtendedDesktopSizeStatus.OK, None))
        self._requested = True
        self._req_area = _union(self._req_area, area)
        self._wake.set()

    def _on_pointer(self, ev: PointerEvent) -> None:
        w, h = self._fb_size
        x, y = min(ev.x, max(w - 1, 0)), min(ev.y, max(h - 1, 0))
        self._pointer, self._buttons = (x, y), ev.button_mask
        if not self.view_only:
            self.sink.pointer(x, y, ev.button_mask)

    def _on_key(self, ev: KeyEvent) -> None:
        if self.view_only:
            return
        if ev.down:
            self._keys_down.add(ev.key)
        else:
            self._keys_down.discard(ev.key)
        self.sink.key(ev.key, ev.down)

    def _on_qemu_key(self, ev: QemuExtendedKeyEvent) -> None:
        if self.view_only:
            return
        if ev.down:
            self._scancodes_down[ev.keycode] = ev.keysym
        else:
            self._scancodes_down.pop(ev.keycode, None)
        self.sink.key_scancode(ev.keysym, ev.keycode, ev.down)

    def _release_input(self) -> None:
        """Release whatever this client still holds down (it left without key-up events)."""
        if self.view_only:
            return
        sink = self.sink
        try:
            for keysym in sorted(self._keys_down):
                sink.key(keysym, False)
            for keycode, keysym in sorted(self._scancodes_down.items()):
                sink.key_scancode(keysym, keycode, False)
            if self._buttons:
                sink.pointer(*self._pointer, 0)
        except Exception:
            log.exception("%s: releasing held input failed", self.record.peer)
        self._keys_down.clear()
        self._scancodes_down.clear()
        self._buttons = 0

    def _supports_cursor(self) -> bool:
        return any(e in self._encodings for e in CURSOR_ENCODINGS)

    def _on_set_encodings(self, ev: SetEncodings) -> None:
        old = set(self._encodings)
        self._encodings = ev.encodings
        self.record.client_encodings = ev.encodings
        self._settings = EncoderSettings.from_encodings(ev.encodings)  # applied between encodes
        chosen = next((e for e in ev.encodings if e in SUPPORTED), Encoding.RAW)
        encoder = self._encoders.get(chosen)
        if encoder is None:
            encoder = make_encoder(chosen, self._settings)
            if encoder is None:  # SUPPORTED promised otherwise; fall back to Raw, which every client has
                chosen = Encoding.RAW
                encoder = make_encoder(chosen, self._settings)
            assert encoder is not None
            self._encoders[chosen] = encoder
        self._encoder = encoder
        self.record.encoding = chosen
        new = set(ev.encodings)
        if Encoding.FENCE in new and not self._seen_fence:
            # rfbproto "Fence Pseudo-encoding": announce support with a ServerFence the first time.
            self._seen_fence = True
            self._send(ServerFence(FenceFlag.REQUEST))
        if Encoding.CONTINUOUS_UPDATES in new and not self._seen_cu:
            # rfbproto "ContinuousUpdates Pseudo-encoding": announce with EndOfContinuousUpdates.
            self._seen_cu = True
            self._send(EndOfContinuousUpdates())
        if Encoding.QEMU_EXTENDED_KEY_EVENT in new and not self._qemu_confirmed:
            self._qemu_pending = True
        if self._supports_cursor() and not any(e in old for e in CURSOR_ENCODINGS) and self.ctx.hub.cursor:
            self._cursor_pending = True
        self._wake.set()

    def _on_set_pixel_format(self, ev: SetPixelFormat) -> None:
        pf = ev.pixel_format  # validated by the protocol
        self._pf = pf
        self.record.pixel_format = pf
        if pf.true_colour:
            self._encode_pf = pf
        else:
            # An 8-bit colour-map client gets a fixed BGR233 map (sent before the next update).
            self._encode_pf = BGR233
            self._colour_map_pending = True
        if self._supports_cursor() and self.ctx.hub.cursor is not None:
            self._cursor_pending = True  # the Cursor pseudo-encoding carries pixels in the client's format

    async def _quiesce(self) -> None:
        """Stop the updater from starting updates and wait until none is being built."""
        self._hold += 1
        await self._update_idle.wait()

    def _release(self) -> None:
        if self._hold > 0:
            self._hold -= 1
        self._wake.set()

    async def _on_fence(self, ev: ClientFence) -> None:
        if not ev.is_request:
            return  # the answer to our own ServerFence
        flags = ev.flags & FenceFlag.KNOWN
        held = False
        if flags & (FenceFlag.BLOCK_BEFORE | FenceFlag.SYNC_NEXT):
            await self._quiesce()
            held = True
        self._send(ServerFence(flags, ev.payload))
        if held:
            if flags & FenceFlag.SYNC_NEXT:
                self._release_after_next = True
            else:
                self._release()

    async def _on_enable_cu(self, ev: EnableContinuousUpdates) -> None:
        if ev.enable:
            self._cu_area = self._clip(ev.x, ev.y, ev.width, ev.height) or Rect(0, 0, 0, 0)
            self.record.continuous_updates = True
            self._wake.set()
            return
        await self._quiesce()
        try:
            self._cu_area = None
            self.record.continuous_updates = False
            self._send(EndOfContinuousUpdates())
        finally:
            self._release()

    def _on_set_desktop_size(self, ev: SetDesktopSize) -> None:
        if self.view_only:
            status = ExtendedDesktopSizeStatus.PROHIBITED
        else:
            status = self.ctx.hub.request_resize(self, ev.width, ev.height, ev.screens)
        if status == ExtendedDesktopSizeStatus.OK and (ev.width, ev.height) != self._fb_size:
            return  # the size change itself carries the answer (reason "this client")
        self._eds_replies.append((ExtendedDesktopSizeReason.THIS_CLIENT, status,
                                  ev.screens if status == ExtendedDesktopSizeStatus.OK else None))
        self._wake.set()

    # --- updates -----------------------------------------------------------------------------------------

    async def _update_loop(self) -> None:
        try:
            while not self._closing:
                await self._wake.wait()
                self._wake.clear()
                while not self._closing and self._hold == 0:
                    self._update_idle.clear()
                    try:
                        sent = await self._send_update()
                    finally:
                        self._update_idle.set()
                    if not sent:
                        break
                    await self._writer.drain()  # the write buffer must drain before the next encode
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            raise
        except ProtocolError as e:
            log.warning("%s: %s", self.record.peer, e)
            self.abort(str(e))
        except Exception as e:
            log.exception("%s: sending an update failed", self.record.peer)
            self.abort(f"internal error while sending an update: {e}")

    def _no_data_update(self, snap: Snapshot) -> list[Rectangle] | None:
        """Rectangles of an update that must not carry pixel data (size changes, layout replies)."""
        w, h = snap.width, snap.height
        if (w, h) != self._fb_size:
            if Encoding.EXTENDED_DESKTOP_SIZE in self._encodings:
                rect = extended_desktop_size_rect(self._resize_reason, ExtendedDesktopSizeStatus.OK, w, h,
                                                  self.ctx.hub.screens)
            elif Encoding.DESKTOP_SIZE in self._encodings:
                rect = desktop_size_rect(w, h)
            else:
                raise ProtocolError(f"the desktop is now {w}x{h} and this client cannot follow a size change "
                                    "(it did not announce DesktopSize)")
            self._fb_size = (w, h)
            self._damage = DamageGrid(w, h)
            self._damage.add_all()
            set_screen = getattr(self.sink, "set_screen", None)
            if self._own_sink and set_screen is not None:
                set_screen(w, h)  # the pointer maps framebuffer pixels onto the new size
            if self._cu_area is not None:
                self._cu_area = self._cu_area.clip(w, h) or Rect(0, 0, w, h)
            self._req_area = Rect(0, 0, w, h) if self._requested else None
            self._eds_replies = [r for r in self._eds_replies if r[0] != ExtendedDesktopSizeReason.SERVER]
            self._resize_reason = ExtendedDesktopSizeReason.SERVER
            return [rect]
        if self._eds_replies:
            replies, self._eds_replies = self._eds_replies, []
            return [extended_desktop_size_rect(reason, status, w, h, screens or self.ctx.hub.screens)
                    for reason, status, screens in replies]
        return None

    def _pseudo_rects(self, pf: PixelFormat) -> list[Rectangle]:
        out: list[Rectangle] = []
        if self._qemu_pending:
            self._qemu_pending = False
            self._qemu_confirmed = True
            out.append(qemu_extended_key_event_rect())
        if self._name_pending:
            self._name_pending = False
            out.append(desktop_name_rect(self.ctx.hub.desktop_name))
        if self._cursor_pending:
            self._cursor_pending = False
            rect = self._cursor_rect(self.ctx.hub.cursor, pf)
            if rect is not None:
                out.append(rect)
        return out

    def _cursor_rect(self, cursor: Cursor | None, pf: PixelFormat) -> Rectangle | None:
        if cursor is None:
            return None
        pixels = cursor.pixels
        hot_x, hot_y = cursor.hot_x, cursor.hot_y
        if not cursor.visible or pixels.shape[0] == 0 or pixels.shape[1] == 0:
            # An invisible cursor: one transparent pixel (every client copes with 1x1; not all with 0x0).
            pixels = np.zeros((1, 1, 4), dtype=np.uint8)
            hot_x = hot_y = 0
        alpha_first = next((e for e in self._encodings if e in CURSOR_ENCODINGS), None)
        if alpha_first == Encoding.CURSOR_WITH_ALPHA:
            return cursor_with_alpha_rect(hot_x, hot_y, pixels)
        h, w = int(pixels.shape[0]), int(pixels.shape[1])
        bgrx = pixels.copy()
        bgrx[:, :, 3] = 0  # alpha is not a colour: the unused bits of a pixel stay zero
        return cursor_rect(hot_x, hot_y, w, h, convert(bgrx, pf), pixels[:, :, 3])

    def _consume_request(self) -> None:
        self._requested = False
        self._req_area = None

    async def _send_update(self) -> bool:
        """Build, encode and write one update if there is one to send; False if there is none."""
        snap = self.ctx.hub.snapshot
        if snap is None or self._damage is None:
            return False
        nodata = self._no_data_update(snap)
        if nodata is not None:
            self._send(FramebufferUpdate(nodata))
            self._count(nodata)
            self._consume_request()
            return True
        if not self._requested and self._cu_area is None:
            return False
        rects: list[Rect] = []
        for area in (self._req_area if self._requested else None, self._cu_area):
            if area is not None:
                rects += self._damage.take(area, max_rects=MAX_UPDATE_RECTS)
        pf = self._encode_pf
        pseudo = self._pseudo_rects(pf)
        if not rects and not pseudo:
            self.ctx.hub.want_frame()  # everything sent: the next frame is welcome
            return False
        # Fetch the next frame while this one is encoded and sent (the source and the encoder overlap).
        self.ctx.hub.want_frame()
        if self._colour_map_pending:
            self._colour_map_pending = False
            self._send(bgr233_colour_map())
        encoded: list[Rectangle] = []
        if rects:
            # New quality/compression settings reach the encoders here, never during an encode (which
            # runs in a worker thread while the reader may be handling a SetEncodings).
            for enc in self._encoders.values():
                if enc.settings != self._settings:
                    enc.settings = self._settings
            encoder = self._encoder
            if encoder is None:
                encoder = make_encoder(Encoding.RAW, self._settings)
                assert encoder is not None
                self._encoder = self._encoders[Encoding.RAW] = encoder
            loop = asyncio.get_running_loop()
            encoded = await loop.run_in_executor(None, _encode_rects, encoder, snap.pixels, rects, pf)
        if self._closing:
            return False
        update = pseudo + encoded
        self._send(FramebufferUpdate(update))
        self._count(update)
        self._consume_request()
        return True

    def _count(self, rects: list[Rectangle]) -> None:
        rec = self.record
        rec.updates += 1
        rec.rectangles += len(rects)
        rec.rect_encodings.update(r.encoding for r in rects)

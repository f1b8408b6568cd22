"""One VNC client: an asyncio loop around :class:`~vkmsremote.rfb.protocol.ServerConnection`.

Two tasks per client. The *reader* feeds the protocol and acts on each event (input to the InputSink,
update requests, encodings, fences). The *updater* sends FramebufferUpdates: it runs only while the
client has a request outstanding (or continuous updates on) and the transport's write buffer has drained,
takes the client's accumulated damage (a tile grid, see :mod:`vkmsremote.rfb.region`) and the hub's
newest snapshot, encodes in a worker thread, and writes. So a slow client never delays the others and
never makes the server queue frames for it: changes it could not take yet are merged into its damage.

The flow rules (which requests are pending, continuous updates, fences and what waits for what, when an
update may start and what goes into it) are not here: :class:`~vkmsremote.rfb.flow.UpdateFlow` keeps them,
without I/O. The reader feeds it every client message (``receive``) and writes what it returns; the
updater asks it ``begin_update`` and reports ``update_done``. This module only waits (for bytes, for the
update in progress when the flow is ``paused``, for the write buffer) and encodes.

What a view-only session (the whole server is view-only, or this client proved the view-only password) may
do is decided by one table, :data:`vkmsremote.rfb.auth.PERMISSIONS`, through ``Session.access``: client
messages needing a permission the session lacks are dropped at one gate (``_permitted``; SetDesktopSize is
answered "prohibited"), a non-shared ClientInit does not disconnect the others, no ServerCutText is sent,
and the session never gets an InputSink.
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

from vkmsremote.errors import LocalProtocolError, ProtocolError
from vkmsremote.frame import Cursor, Rect
from vkmsremote.rfb.auth import Access, Permission, SecurityPolicy
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.convert import convert
from vkmsremote.rfb.encodings import SUPPORTED, Encoder, EncoderSettings, make_encoder
from vkmsremote.rfb.encodings.h264 import available as h264_available
from vkmsremote.rfb.flow import LayoutUpdate, PixelUpdate, SizeChange, UpdateFlow, UpdatePlan
from vkmsremote.rfb.messages import (
    Bell,
    ClientCutText,
    ClientEvent,
    ClipboardAction,
    ClipboardFormat,
    ExtendedClipboard,
    ExtendedDesktopSizeReason,
    ExtendedDesktopSizeStatus,
    FramebufferUpdate,
    KeyEvent,
    PointerEvent,
    QemuExtendedKeyEvent,
    Rectangle,
    ServerCutText,
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
from vkmsremote.server.blacklist import Blacklist
from vkmsremote.server.encodeshare import SharedVideo, VideoShare
from vkmsremote.server.hub import Hub, Snapshot
from vkmsremote.server.input import InputSink, NullSink
from vkmsremote.server.motion import LOSSLESS_REFRESH, Kind, MotionState
from vkmsremote.server.motion import encode_update as encode_update  # re-exported: the benchmark times it

log = logging.getLogger(__name__)

READ_CHUNK = 65536
WRITE_HIGH = 256 * 1024
"""Transport write-buffer high-water mark: above it the updater waits (drain) before encoding again."""
WRITE_LOW = 64 * 1024
REQUIRED_PERMISSION: dict[type, Permission] = {
    KeyEvent: Permission.INPUT,
    QemuExtendedKeyEvent: Permission.INPUT,
    PointerEvent: Permission.INPUT,
    ClientCutText: Permission.CLIPBOARD_IN,
    SetDesktopSize: Permission.RESIZE,
}
"""Client messages that take effect only with a permission (see rfb.auth.PERMISSIONS)."""


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
    encodings: frozenset[int] | None = None
    """The encodings this server may send (Raw always); None: every one it supports, in the client's order."""
    sessions: set[Session] = field(default_factory=set)
    video_share: VideoShare = field(default_factory=VideoShare)
    """Open H.264 streams shared by clients that receive the same frames (server.encodeshare)."""


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
        self._extended_clipboard = False
        self._client_clipboard_max = 0
        self._clipboard_out: str | None = None  # the desktop's clipboard as last sent (answers requests)
        self._encoders: dict[int, Encoder] = {}
        self._encoder: Encoder | None = None
        self._settings = EncoderSettings()
        # motion (server.motion): H.264 for clients that list it, CopyRect from detected moves
        self._video: SharedVideo | None = None
        self._copyrect = False
        self._motion = MotionState()
        self._client_view: Snapshot | None = None
        """The snapshot the client's framebuffer equals (known only after a complete non-H.264 update)."""
        self._refresh_timer: asyncio.TimerHandle | None = None

        # the flow rules (made at ClientInit, when the framebuffer size is known); event-loop thread only
        self._attached = False
        self.flow: UpdateFlow | None = None

        # waiting between the reader and the updater
        self._wake = asyncio.Event()
        self._update_idle = asyncio.Event()
        self._update_idle.set()
        self._closing = False

        # input: this client's sink, and what the client holds down (released when it leaves)
        self.sink: InputSink = NullSink()
        self._own_sink = False
        self._keys_down: set[int] = set()
        self._scancodes_down: dict[int, int] = {}
        self._buttons = 0
        self._pointer = (0, 0)
        self.access = Access.VIEW_ONLY if ctx.view_only else Access.FULL
        """What this client may do; decided at authentication (server-wide flag OR view-only password)."""
        self.record.view_only = self.view_only

    @property
    def view_only(self) -> bool:
        return self.access is Access.VIEW_ONLY

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
            self._protocol_error(e)
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
            if self._refresh_timer is not None:
                self._refresh_timer.cancel()
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

    def _protocol_error(self, e: ProtocolError) -> None:
        """Log and record whose fault it was: "the client broke the protocol: ..." or "we broke ..."."""
        blame = e.blame("the client")
        if isinstance(e, LocalProtocolError):
            log.error("%s: %s", self.record.peer, blame)
        else:
            log.warning("%s: %s", self.record.peer, blame)
        self._end(blame)

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
        """The desktop's clipboard changed: an Extended Clipboard client is told (notify) and asks for the
        UTF-8 text when it wants it; any other client gets it at once as ServerCutText (Latin-1)."""
        if not (self._attached and not self._closing and self.access.permits(Permission.CLIPBOARD_OUT)):
            return
        if len(text) > self.ctx.max_cut_text:
            log.warning("%s: clipboard text of %d characters cut to %d", self.record.peer, len(text),
                        self.ctx.max_cut_text)
            text = text[:self.ctx.max_cut_text]
        self._clipboard_out = text
        if self._extended_clipboard:
            self._send(ExtendedClipboard.notify(ClipboardFormat.TEXT))
        else:
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
                    if self.ctx.view_only or ev.view_only:
                        self.access = Access.VIEW_ONLY
                    rec.view_only = self.view_only
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
        if not ev.shared and not self.ctx.always_shared and self.access.permits(Permission.EXCLUSIVE):
            for other in list(self.ctx.sessions):
                if other is not self and other._attached:
                    other.abort("another client asked for exclusive access")
        snap = await self.ctx.hub.attach(self)
        self._attached = True
        if not self.access.permits(Permission.INPUT):
            self.sink = NullSink()  # nothing this client sends can reach the shared sink or uinput
        elif self.ctx.sink is not None:
            self.sink = self.ctx.sink
        elif self.ctx.sink_factory is not None:
            self.sink = self.ctx.sink_factory(snap.width, snap.height)
            self._own_sink = True
        self.flow = UpdateFlow(snap.width, snap.height, has_cursor=self.ctx.hub.cursor is not None)
        self._send(ServerInit(snap.width, snap.height, NATIVE, self.ctx.hub.desktop_name))
        self.record.outcome = "running"

    # --- hub callbacks --------------------------------------------------------------------------------------

    def frame_ready(self, snapshot: Snapshot, damage: tuple[Rect, ...] | None, resized_by: object | None) -> None:
        if self.flow is None:
            return
        if resized_by is self:
            reason = ExtendedDesktopSizeReason.THIS_CLIENT
        elif resized_by is not None:
            reason = ExtendedDesktopSizeReason.OTHER_CLIENT
        else:
            reason = ExtendedDesktopSizeReason.SERVER
        self.flow.frame(snapshot.width, snapshot.height, damage, reason)
        self._wake.set()

    def cursor_changed(self, cursor: Cursor | None) -> None:
        if self.flow is not None:
            self.flow.cursor_changed(cursor is not None)
            self._wake.set()

    def name_changed(self, name: str) -> None:
        if self.flow is not None:
            self.flow.name_changed()
            self._wake.set()

    # --- reading ------------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        flow = self.flow
        assert flow is not None
        while True:
            ev = self.conn.next_event()
            if isinstance(ev, NeedData):
                self._flush()
                data = await self._reader.read(READ_CHUNK)
                self.conn.receive_data(data)
                continue
            if isinstance(ev, ConnectionClosed):
                return
            # The flow's rules first (they may refuse the message); then the message's own effects, with no
            # await in between, so no update starts between the two (fences rely on it).
            for message in flow.receive(ev):
                self._send(message)
            self.record.continuous_updates = flow.continuous_updates
            self._handle(ev)
            self._wake.set()
            if flow.paused:  # a reply waits for the update being built: read nothing more until it is out
                await self._update_idle.wait()

    def _permitted(self, ev: object) -> bool:
        """The one gate for what this session's access allows (rfb.auth.PERMISSIONS)."""
        needed = REQUIRED_PERMISSION.get(type(ev))
        if needed is None or self.access.permits(needed):
            return True
        if isinstance(ev, SetDesktopSize):
            assert self.flow is not None
            self.flow.desktop_size_result(ev, ExtendedDesktopSizeStatus.PROHIBITED)
        return False

    def _handle(self, ev: Event) -> None:
        if not self._permitted(ev):
            return
        if isinstance(ev, PointerEvent):
            self._on_pointer(ev)
        elif isinstance(ev, KeyEvent):
            self._on_key(ev)
        elif isinstance(ev, QemuExtendedKeyEvent):
            self._on_qemu_key(ev)
        elif isinstance(ev, SetEncodings):
            self._on_set_encodings(ev)
        elif isinstance(ev, SetPixelFormat):
            self.record.pixel_format = ev.pixel_format  # validated by the protocol, kept by the flow
        elif isinstance(ev, SetDesktopSize):
            self._on_set_desktop_size(ev)
        elif isinstance(ev, ClientCutText):
            self.sink.clipboard(ev.text.decode("latin-1"))
        elif isinstance(ev, ExtendedClipboard):
            self._on_extended_clipboard(ev)
        elif isinstance(ev, ClientCutTextDiscarded):
            log.warning("%s: ignored a ClientCutText of %d bytes (limit %d)", self.record.peer, ev.length,
                        self.ctx.max_cut_text)
        elif not isinstance(ev, ClientEvent):  # handshake events cannot occur after ServerInit
            raise LocalProtocolError(f"the protocol handed out {type(ev).__name__} after the handshake")
        # FramebufferUpdateRequest, EnableContinuousUpdates, ClientFence: the flow's alone

    def _on_pointer(self, ev: PointerEvent) -> None:
        assert self.flow is not None
        w, h = self.flow.size
        x, y = min(ev.x, max(w - 1, 0)), min(ev.y, max(h - 1, 0))
        self._pointer, self._buttons = (x, y), ev.button_mask
        self.sink.pointer(x, y, ev.button_mask)

    def _on_key(self, ev: KeyEvent) -> None:
        if ev.down:
            self._keys_down.add(ev.key)
        else:
            self._keys_down.discard(ev.key)
        self.sink.key(ev.key, ev.down)

    def _on_qemu_key(self, ev: QemuExtendedKeyEvent) -> None:
        if ev.down:
            self._scancodes_down[ev.keycode] = ev.keysym
        else:
            self._scancodes_down.pop(ev.keycode, None)
        self.sink.key_scancode(ev.keysym, ev.keycode, ev.down)

    def _release_input(self) -> None:
        """Release whatever this client still holds down (it left without key-up events)."""
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

    def _on_set_encodings(self, ev: SetEncodings) -> None:
        self._settings = EncoderSettings.from_encodings(ev.encodings)  # applied between encodes
        allowed = self.ctx.encodings
        chosen = next((e for e in ev.encodings if e in SUPPORTED and (allowed is None or e in allowed)),
                      Encoding.RAW)
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
        self._copyrect = Encoding.COPY_RECT in ev.encodings and (allowed is None or Encoding.COPY_RECT in allowed)
        if not self._copyrect:
            self._client_view = None
        if (Encoding.OPEN_H264 in ev.encodings and (allowed is None or Encoding.OPEN_H264 in allowed)
                and h264_available()):
            if self._video is None:
                self._video = self.ctx.video_share.member(self._settings)
        else:
            self._video = None
        extended = Encoding.EXTENDED_CLIPBOARD in ev.encodings
        if extended and not self._extended_clipboard and (
                self.access.permits(Permission.CLIPBOARD_IN) or self.access.permits(Permission.CLIPBOARD_OUT)):
            actions = (ClipboardAction.REQUEST | ClipboardAction.PEEK | ClipboardAction.NOTIFY
                       | ClipboardAction.PROVIDE)
            self._send(ExtendedClipboard.caps(actions, {ClipboardFormat.TEXT: self.ctx.max_cut_text}))
        self._extended_clipboard = extended
        # Last: a test (another thread) that sees the client's list may read the choice made from it.
        self.record.client_encodings = ev.encodings

    def _on_extended_clipboard(self, ev: ExtendedClipboard) -> None:
        """rfbproto "Extended Clipboard": text only; the server asks for a notified clipboard at once."""
        action, incoming, outgoing = ev.action, self.access.permits(Permission.CLIPBOARD_IN), \
            self.access.permits(Permission.CLIPBOARD_OUT)
        text_offered = bool(ev.formats & ClipboardFormat.TEXT)
        if action is ClipboardAction.CAPS:
            self._client_clipboard_max = ev.caps_sizes().get(ClipboardFormat.TEXT, 0)
        elif action is ClipboardAction.NOTIFY and incoming and text_offered:
            self._send(ExtendedClipboard.request(ClipboardFormat.TEXT))
        elif action is ClipboardAction.REQUEST and outgoing and text_offered and self._clipboard_out is not None:
            out = self._clipboard_out
            limit = self._client_clipboard_max  # what the client's caps said it takes (0: no caps seen)
            if limit and len(out.encode("utf-8")) + 1 > limit:
                log.warning("%s: clipboard text cut to the client's %d-byte limit", self.record.peer, limit)
                out = out.encode("utf-8")[:max(limit - 1, 0)].decode("utf-8", errors="ignore")
            self._send(ExtendedClipboard.provide_text(out))
        elif action is ClipboardAction.PEEK and outgoing:
            has = ClipboardFormat.TEXT if self._clipboard_out is not None else ClipboardFormat(0)
            self._send(ExtendedClipboard.notify(has))
        elif action is ClipboardAction.PROVIDE and incoming:
            text, truncated = ev.provided_text(self.ctx.max_cut_text)
            if truncated:
                log.warning("%s: Extended Clipboard text longer than %d bytes: cut there", self.record.peer,
                            self.ctx.max_cut_text)
            if text is not None:
                self.sink.clipboard(text)

    def _on_set_desktop_size(self, ev: SetDesktopSize) -> None:
        assert self.flow is not None
        self.flow.desktop_size_result(ev, self.ctx.hub.request_resize(self, ev.width, ev.height, ev.screens))

    # --- updates -----------------------------------------------------------------------------------------

    async def _update_loop(self) -> None:
        try:
            while not self._closing:
                await self._wake.wait()
                self._wake.clear()
                while not self._closing:
                    if not await self._send_update():
                        break
                    await self._writer.drain()  # the write buffer must drain before the next encode
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            raise
        except ProtocolError as e:
            self._protocol_error(e)
            self.abort(str(e))
        except Exception as e:
            log.exception("%s: sending an update failed", self.record.peer)
            self.abort(f"internal error while sending an update: {e}")

    async def _send_update(self) -> bool:
        """Ask the flow whether an update is due; build, encode and write it. False if there was none."""
        flow = self.flow
        snap = self.ctx.hub.snapshot
        if snap is None or flow is None:
            return False
        plan = flow.begin_update(snap.width, snap.height)
        if plan is None:
            if flow.wants_pixels and not flow.held:
                self.ctx.hub.want_frame()  # everything sent: the next frame is welcome
            return False
        self._update_idle.clear()
        try:
            update = await self._build(plan, snap)
            if update is not None and not self._closing:
                self._send(FramebufferUpdate(update))
                self._count(update)
        finally:
            for message in flow.update_done():  # replies that had to wait for this update
                self._send(message)
            self._update_idle.set()
        return update is not None

    async def _build(self, plan: UpdatePlan, snap: Snapshot) -> list[Rectangle] | None:
        """The rectangles of the update ``plan`` describes (pixel data encoded in a worker thread)."""
        hub = self.ctx.hub
        if isinstance(plan, SizeChange):
            if plan.encoding == Encoding.EXTENDED_DESKTOP_SIZE:
                rect = extended_desktop_size_rect(plan.reason, ExtendedDesktopSizeStatus.OK, plan.width,
                                                  plan.height, hub.screens)
            else:
                rect = desktop_size_rect(plan.width, plan.height)
            set_screen = getattr(self.sink, "set_screen", None)
            if self._own_sink and set_screen is not None:
                set_screen(plan.width, plan.height)  # the pointer maps framebuffer pixels onto the new size
            self._motion.reset()
            self._client_view = None
            if self._video is not None:
                self._video.reset()  # a new stream (IDR) for the new size
            return [rect]
        if isinstance(plan, LayoutUpdate):
            return [extended_desktop_size_rect(r.reason, r.status, snap.width, snap.height, r.screens or hub.screens)
                    for r in plan.replies]
        pseudo = self._pseudo_rects(plan)
        if not plan.rects and not pseudo:
            return None
        # Fetch the next frame while this one is encoded and sent (the source and the encoder overlap).
        hub.want_frame()
        if plan.colour_map:
            self._send(bgr233_colour_map())
        encoded: list[Rectangle] = []
        if plan.rects:
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
            assert self.flow is not None
            rects = list(plan.rects)
            complete = not self.flow.damage_pending  # after this update the client's framebuffer equals snap
            video = self._video
            if video is not None:
                video.settings = self._settings
            # H.264 paints decoded colour: not for a colour-map client (its pixels are indices into our map)
            use_video = video is not None and self.flow.pixel_format.true_colour
            choice = self._motion.choose(rects, snap.width, snap.height, video=use_video,
                                         copy=self._copyrect and self._client_view is not None)
            old = self._client_view.pixels if choice.detect and self._client_view is not None else None
            loop = asyncio.get_running_loop()
            encoded, kind = await loop.run_in_executor(None, encode_update, encoder, video, snap.pixels,
                                                       snap.serial, old, rects, plan.pixel_format, choice)
            self._motion.sent(kind)
            self._client_view = snap if complete and self._copyrect and kind is not Kind.VIDEO else None
            if kind is Kind.VIDEO:
                self._arm_refresh()
        return pseudo + encoded

    def _pseudo_rects(self, plan: PixelUpdate) -> list[Rectangle]:
        out: list[Rectangle] = []
        if plan.qemu_key_events:
            out.append(qemu_extended_key_event_rect())
        if plan.desktop_name:
            out.append(desktop_name_rect(self.ctx.hub.desktop_name))
        if plan.cursor:
            rect = self._cursor_rect(self.ctx.hub.cursor, plan.pixel_format)
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
        assert self.flow is not None
        if self.flow.cursor_encoding == Encoding.CURSOR_WITH_ALPHA:
            return cursor_with_alpha_rect(hot_x, hot_y, pixels)
        h, w = int(pixels.shape[0]), int(pixels.shape[1])
        bgrx = pixels.copy()
        bgrx[:, :, 3] = 0  # alpha is not a colour: the unused bits of a pixel stay zero
        return cursor_rect(hot_x, hot_y, w, h, convert(bgrx, pf), pixels[:, :, 3])

    def _arm_refresh(self) -> None:
        """LOSSLESS_REFRESH s after the last H.264 update, resend everything with the other encoding (once
        nothing new is waiting: a client too slow for the motion must not get whole lossless frames)."""
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()
        self._refresh_timer = asyncio.get_running_loop().call_later(LOSSLESS_REFRESH, self._lossless_refresh)

    def _lossless_refresh(self) -> None:
        self._refresh_timer = None
        flow = self.flow
        if flow is None or self._closing:
            return
        if flow.damage_pending:  # still changing (this client is behind, not idle): not yet
            self._arm_refresh()
            return
        width, height = flow.size
        flow.frame(width, height, None)  # everything, once more
        self._motion.refresh_pending = True
        self._wake.set()

    def _count(self, rects: list[Rectangle]) -> None:
        rec = self.record
        rec.updates += 1
        rec.rectangles += len(rects)
        rec.rect_encodings.update(r.encoding for r in rects)

"""When a client may be sent what: the update-flow rules of one RFB connection, without I/O.

Theory of operation
-------------------
:class:`~vkmsremote.rfb.protocol.ServerConnection` turns bytes into messages and runs the handshake. Once
ServerInit is out, the rules about *when* the server may send a FramebufferUpdate, *what* goes into it and
*what must be said in reply* (RFC 6143 7.5.3, rfbproto "EnableContinuousUpdates", "ClientFence",
"ExtendedDesktopSize") live here, in an :class:`UpdateFlow` per client. It never waits and never
touches a socket; the asyncio session drives it:

* every client message after the handshake goes through ``receive(message)``, which returns the server
  messages to send *now* (fence replies, EndOfContinuousUpdates, the Fence/ContinuousUpdates
  announcements) and raises :class:`~vkmsremote.errors.RemoteProtocolError` if the client broke a rule.
  The session then applies the message's own effects (input, encoder choice) before its next ``await``;
* server-side changes: ``frame``, ``cursor_changed``, ``name_changed``, ``desktop_size_result``;
* the update cycle: ``begin_update(width, height)`` answers "may I send an update now, and what": an
  :data:`UpdatePlan` or None; after writing it (or giving up), ``update_done()`` returns the replies that
  had to wait for that update. Calling them out of turn is *our* bug: :class:`LocalProtocolError`.

The update channel has two states and one table of transitions (:data:`TRANSITIONS`)::

    IDLE --begin_update()--> BUILDING --update_done()--> IDLE

Two *holds* stop ``begin_update`` from planning anything while IDLE:

* **replies waiting**: a fence reply with BlockBefore/SyncNext, or EndOfContinuousUpdates, that arrived
  while an update was BUILDING waits for ``update_done`` (the update in progress used the old state, so it
  must reach the client before the reply). While replies wait, ``paused`` is True: the session must not
  feed further client messages (this also honours BlockAfter trivially).
* **SyncNext**: after the reply to a SyncNext fence, no update starts until the next client message has
  been received (rfbproto: everything before the reply is unaffected by that message, everything after it
  is affected). The hold is released when ``receive`` returns for that next message.

Fence replies (rfbproto "ClientFence"; the Request bit and the bits we do not know are cleared)::

    request flags            reply sent                              afterwards
    (none) / BlockAfter      at once                                  -
    BlockBefore              after the update being built, if any     -
    SyncNext                 after the update being built, if any     hold until the next message is in

What the client can get wrong (RemoteProtocolError; the session ends with "the client broke the protocol"):
EnableContinuousUpdates before the server announced them (rfbproto: the client must establish support
first), a fence *response* when no ServerFence request is outstanding, SetDesktopSize without having
announced ExtendedDesktopSize (the result could not be told). Requests for areas outside the framebuffer
are clipped (possibly to nothing), not refused. A fence *request* is answered even without the Fence
pseudo-encoding: the client evidently speaks it.

Requests and continuous updates (RFC 6143 7.5.3, rfbproto "EnableContinuousUpdates"):

* a FramebufferUpdateRequest is *pending* until an update is planned; several pending requests are
  answered by one update covering the union of their areas. A non-incremental request damages its area
  (the client lost it) and, for ExtendedDesktopSize clients, asks for the layout (an update of its own).
* while continuous updates are on, incremental requests are ignored; non-incremental ones are honoured.
  Disabling is always answered with EndOfContinuousUpdates, even if they were off.
* updates that carry no pixel data (a size change, layout replies) go out without waiting for a request,
  as TigerVNC does, and count as the answer to a pending request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Final

from vkmsremote.errors import LocalProtocolError, RemoteProtocolError
from vkmsremote.frame import Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.messages import (
    BGR233,
    ClientEvent,
    ClientFence,
    EnableContinuousUpdates,
    EndOfContinuousUpdates,
    ExtendedDesktopSizeReason,
    ExtendedDesktopSizeStatus,
    FenceFlag,
    FramebufferUpdateRequest,
    Screen,
    ServerFence,
    ServerMessageValue,
    SetDesktopSize,
    SetEncodings,
    SetPixelFormat,
)
from vkmsremote.rfb.pixelformat import NATIVE, PixelFormat
from vkmsremote.rfb.region import DamageGrid

MAX_UPDATE_RECTS = 256
"""Damage rectangles per update before the region is coarsened (encoders may still split them)."""

CURSOR_ENCODINGS: Final = (Encoding.CURSOR_WITH_ALPHA, Encoding.CURSOR)


class Phase(Enum):
    """State of the update channel (server to client)."""

    IDLE = auto()
    BUILDING = auto()


class Step(Enum):
    """What moves the update channel from one phase to the next."""

    BEGIN_UPDATE = auto()
    UPDATE_DONE = auto()


TRANSITIONS: Final[dict[tuple[Phase, Step], Phase]] = {
    (Phase.IDLE, Step.BEGIN_UPDATE): Phase.BUILDING,
    (Phase.BUILDING, Step.UPDATE_DONE): Phase.IDLE,
}
"""Every allowed (phase, step) -> next phase; anything else is a bug on our side (LocalProtocolError)."""


# --- what begin_update() hands out ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SizeChange:
    """A no-data update: the framebuffer is now ``width`` x ``height``. ``encoding`` is the pseudo-encoding
    to announce it with (ExtendedDesktopSize if the client has it, else DesktopSize)."""

    width: int
    height: int
    encoding: Encoding
    reason: ExtendedDesktopSizeReason


@dataclass(frozen=True, slots=True)
class LayoutReply:
    """One ExtendedDesktopSize rectangle; ``screens`` None means "the current layout"."""

    reason: ExtendedDesktopSizeReason
    status: ExtendedDesktopSizeStatus
    screens: tuple[Screen, ...] | None = None


@dataclass(frozen=True, slots=True)
class LayoutUpdate:
    """A no-data update of ExtendedDesktopSize rectangles, in the order they became due (rfbproto
    "SetDesktopSize": never merged or reordered)."""

    replies: tuple[LayoutReply, ...]


@dataclass(frozen=True, slots=True)
class PixelUpdate:
    """An update with pixel data: encode ``rects`` in ``pixel_format``; send the BGR233 colour map first if
    ``colour_map``; add the pseudo-rectangles whose flags are set."""

    rects: tuple[Rect, ...]
    pixel_format: PixelFormat
    colour_map: bool = False
    qemu_key_events: bool = False
    desktop_name: bool = False
    cursor: bool = False


UpdatePlan = SizeChange | LayoutUpdate | PixelUpdate


def _union(a: Rect | None, b: Rect | None) -> Rect | None:
    if a is None:
        return b
    if b is None:
        return a
    x0, y0 = min(a.x, b.x), min(a.y, b.y)
    x1, y1 = max(a.x + a.w, b.x + b.w), max(a.y + a.h, b.y + b.h)
    return Rect(x0, y0, x1 - x0, y1 - y0)


class UpdateFlow:
    """The update-flow rules of one client; see the module docstring."""

    def __init__(self, width: int, height: int, *, has_cursor: bool = False) -> None:
        self._phase = Phase.IDLE
        self._size = (width, height)
        self._damage = DamageGrid(width, height)
        self._damage.add_all()  # the client has nothing yet
        self.encodings: frozenset[int] = frozenset()
        self._encoding_order: tuple[int, ...] = ()
        self.pixel_format: PixelFormat = NATIVE
        """The client's pixel format (SetPixelFormat)."""
        self._encode_format: PixelFormat = NATIVE
        self._has_cursor = has_cursor
        # requests and continuous updates
        self._requested = False
        self._request_area: Rect | None = None
        self._cu_area: Rect | None = None
        # no-data updates
        self._resize_reason = ExtendedDesktopSizeReason.SERVER
        self._layout_replies: list[LayoutReply] = []
        # pseudo-rectangles and messages due with the next pixel update
        self._colour_map_due = False
        self._cursor_due = False
        self._name_due = False
        self._qemu_due = False
        self._qemu_confirmed = False
        # announcements and fences
        self._fence_announced = False
        self._cu_announced = False
        self._fences_outstanding = 0
        self._waiting: list[ServerMessageValue] = []
        self._sync_next = False
        self._sync_armed = False

    # --- what the session asks ---------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def size(self) -> tuple[int, int]:
        """The framebuffer size as the client knows it."""
        return self._size

    @property
    def paused(self) -> bool:
        """Replies wait for the update being built: feed no further client message until ``update_done``."""
        return bool(self._waiting)

    @property
    def held(self) -> bool:
        """No update may start now (replies waiting, or a SyncNext fence waiting for its next message)."""
        return bool(self._waiting) or self._sync_next

    @property
    def continuous_updates(self) -> bool:
        return self._cu_area is not None

    @property
    def damage_pending(self) -> bool:
        """Some of the framebuffer changed since the client was last sent it (used by server.motion: right
        after a plan, False means the update makes the client's framebuffer equal the frame)."""
        return bool(self._damage)

    @property
    def wants_pixels(self) -> bool:
        """The client would take an update with pixel data (a request is pending or continuous updates are on)."""
        return self._requested or self._cu_area is not None

    @property
    def cursor_encoding(self) -> Encoding | None:
        """CursorWithAlpha or Cursor, whichever the client listed first; None if neither."""
        for e in self._encoding_order:
            if e in CURSOR_ENCODINGS:
                return Encoding(e)
        return None

    # --- client messages ---------------------------------------------------------------------------------

    def receive(self, message: ClientEvent | object) -> list[ServerMessageValue]:
        """One client message (any event after the handshake), in order; returns the messages to send now.

        Raises RemoteProtocolError if the client broke a flow rule; LocalProtocolError if called while
        ``paused`` (the session must wait for ``update_done``)."""
        if self._waiting:
            raise LocalProtocolError("a client message was fed to the update flow while replies were waiting")
        self._sync_armed = False
        out = self._dispatch(message)
        # A SyncNext fence holds updates until the message after it is in; this one was it (or is a new one).
        self._sync_next = self._sync_armed
        return out

    def _dispatch(self, message: object) -> list[ServerMessageValue]:
        if isinstance(message, FramebufferUpdateRequest):
            return self._on_update_request(message)
        if isinstance(message, SetEncodings):
            return self._on_set_encodings(message)
        if isinstance(message, SetPixelFormat):
            return self._on_set_pixel_format(message)
        if isinstance(message, EnableContinuousUpdates):
            return self._on_enable_cu(message)
        if isinstance(message, ClientFence):
            return self._on_fence(message)
        if isinstance(message, SetDesktopSize):
            return self._on_set_desktop_size(message)
        return []  # input and clipboard do not affect the flow

    def _on_set_encodings(self, msg: SetEncodings) -> list[ServerMessageValue]:
        old = self.encodings
        self._encoding_order = msg.encodings
        self.encodings = new = frozenset(msg.encodings)
        out: list[ServerMessageValue] = []
        if Encoding.FENCE in new and not self._fence_announced:
            # rfbproto "Fence Pseudo-encoding": a ServerFence the first time, any flags; answered by the client.
            self._fence_announced = True
            self._fences_outstanding += 1
            out.append(ServerFence(FenceFlag.REQUEST))
        if Encoding.CONTINUOUS_UPDATES in new and not self._cu_announced:
            # rfbproto "ContinuousUpdates Pseudo-encoding": EndOfContinuousUpdates the first time.
            self._cu_announced = True
            out.append(EndOfContinuousUpdates())
        if Encoding.QEMU_EXTENDED_KEY_EVENT in new and not self._qemu_confirmed:
            self._qemu_due = True
        if new.intersection(CURSOR_ENCODINGS) and not old.intersection(CURSOR_ENCODINGS) and self._has_cursor:
            self._cursor_due = True
        return out

    def _on_set_pixel_format(self, msg: SetPixelFormat) -> list[ServerMessageValue]:
        pf = msg.pixel_format
        self.pixel_format = pf
        if pf.true_colour:
            self._encode_format = pf
        else:
            # An 8-bit colour-map client gets a fixed BGR233 map, sent before the next pixel update.
            self._encode_format = BGR233
            self._colour_map_due = True
        if self.encodings.intersection(CURSOR_ENCODINGS) and self._has_cursor:
            self._cursor_due = True  # the Cursor pseudo-encoding carries pixels in the client's format
        return []

    def _clip(self, x: int, y: int, w: int, h: int) -> Rect | None:
        return Rect(x, y, w, h).clip(*self._size)

    def _on_update_request(self, msg: FramebufferUpdateRequest) -> list[ServerMessageValue]:
        area = self._clip(msg.x, msg.y, msg.width, msg.height)
        if msg.incremental:
            if self._cu_area is not None:
                return []  # rfbproto "EnableContinuousUpdates": ignored while continuous updates are on
        else:
            if area is not None:
                self._damage.add(area)
            if Encoding.EXTENDED_DESKTOP_SIZE in self.encodings:
                # rfbproto "ExtendedDesktopSize": a non-incremental request is answered with the layout.
                self._layout_replies.append(LayoutReply(ExtendedDesktopSizeReason.SERVER,
                                                        ExtendedDesktopSizeStatus.OK))
        self._requested = True
        self._request_area = _union(self._request_area, area)
        return []

    def _on_enable_cu(self, msg: EnableContinuousUpdates) -> list[ServerMessageValue]:
        if not self._cu_announced:
            raise RemoteProtocolError("EnableContinuousUpdates before the server announced continuous updates "
                                      "(the client must list the ContinuousUpdates pseudo-encoding first)")
        if msg.enable:
            # rfbproto: if already on, the new area replaces the old one. An empty area still means "on".
            self._cu_area = self._clip(msg.x, msg.y, msg.width, msg.height) or Rect(0, 0, 0, 0)
            return []
        self._cu_area = None
        # Sent even if continuous updates were off; after any update being built (it was a continuous one).
        return self._reply(EndOfContinuousUpdates(), wait=True)

    def _on_fence(self, msg: ClientFence) -> list[ServerMessageValue]:
        if not msg.is_request:
            if self._fences_outstanding == 0:
                raise RemoteProtocolError(f"a fence response (flags 0x{msg.flags:08x}) to no ServerFence request")
            self._fences_outstanding -= 1
            return []
        flags = FenceFlag(msg.flags & FenceFlag.KNOWN)
        if flags & FenceFlag.SYNC_NEXT:
            self._sync_armed = True
        wait = bool(flags & (FenceFlag.BLOCK_BEFORE | FenceFlag.SYNC_NEXT))
        return self._reply(ServerFence(flags, msg.payload), wait=wait)

    def _on_set_desktop_size(self, msg: SetDesktopSize) -> list[ServerMessageValue]:
        if Encoding.EXTENDED_DESKTOP_SIZE not in self.encodings:
            raise RemoteProtocolError("SetDesktopSize from a client that did not announce ExtendedDesktopSize "
                                      "(it could not be told the result)")
        return []  # the session asks the hub, then calls desktop_size_result

    def _reply(self, message: ServerMessageValue, *, wait: bool) -> list[ServerMessageValue]:
        if wait and self._phase is Phase.BUILDING:
            self._waiting.append(message)
            return []
        return [message]

    # --- server-side changes -------------------------------------------------------------------------------

    def desktop_size_result(self, msg: SetDesktopSize, status: int) -> None:
        """What became of a SetDesktopSize (an ExtendedDesktopSize status code)."""
        status = ExtendedDesktopSizeStatus(status)
        if status is ExtendedDesktopSizeStatus.OK and (msg.width, msg.height) != self._size:
            return  # the size change itself carries the answer (reason "this client", see frame())
        screens = msg.screens if status is ExtendedDesktopSizeStatus.OK else None
        self._layout_replies.append(LayoutReply(ExtendedDesktopSizeReason.THIS_CLIENT, status, screens))

    def frame(self, width: int, height: int, damage: Iterable[Rect] | None,
              reason: ExtendedDesktopSizeReason = ExtendedDesktopSizeReason.SERVER) -> None:
        """A new frame of ``width`` x ``height``; ``damage`` None means everything changed; ``reason`` says
        who asked for a size change, if the size changed."""
        if (width, height) != self._size:
            self._resize_reason = reason
        elif damage is None:
            self._damage.add_all()
        else:
            for r in damage:
                self._damage.add(r)

    def cursor_changed(self, present: bool) -> None:
        self._has_cursor = present
        if self.encodings.intersection(CURSOR_ENCODINGS):
            self._cursor_due = True

    def name_changed(self) -> None:
        if Encoding.DESKTOP_NAME in self.encodings:
            self._name_due = True

    # --- the update cycle ----------------------------------------------------------------------------------

    def _step(self, step: Step) -> None:
        nxt = TRANSITIONS.get((self._phase, step))
        if nxt is None:
            raise LocalProtocolError(f"{step.name} while the update channel is {self._phase.name}")
        self._phase = nxt

    def begin_update(self, width: int, height: int) -> UpdatePlan | None:
        """May an update be sent now, given a current frame of ``width`` x ``height``, and which?
        None: nothing to send (or not allowed yet). Otherwise the channel is BUILDING until ``update_done``.

        Raises LocalProtocolError if the size changed and the client cannot be told (no DesktopSize):
        sending the new size would break the protocol, so the session must end."""
        if self._phase is not Phase.IDLE:
            self._step(Step.BEGIN_UPDATE)  # raises: one update at a time
        if self.held:
            return None
        plan = self._plan(width, height)
        if plan is not None:
            self._step(Step.BEGIN_UPDATE)
            # The update answers every request received so far; one received while it is built stays pending.
            self._requested = False
            self._request_area = None
        return plan

    def _plan(self, width: int, height: int) -> UpdatePlan | None:
        if (width, height) != self._size:
            return self._size_change(width, height)
        if self._layout_replies:
            replies, self._layout_replies = tuple(self._layout_replies), []
            return LayoutUpdate(replies)
        if not self.wants_pixels:
            return None
        rects: list[Rect] = []
        for area in (self._request_area if self._requested else None, self._cu_area):
            if area is not None:
                rects += self._damage.take(area, max_rects=MAX_UPDATE_RECTS)
        qemu, name, cursor = self._qemu_due, self._name_due, self._cursor_due and self._has_cursor
        if not rects and not (qemu or name or cursor):
            return None
        plan = PixelUpdate(tuple(rects), self._encode_format, self._colour_map_due, qemu, name, cursor)
        if plan.colour_map:
            self._colour_map_due = False
        if qemu:
            self._qemu_due, self._qemu_confirmed = False, True
        self._name_due = self._cursor_due = False
        return plan

    def _size_change(self, width: int, height: int) -> SizeChange:
        if Encoding.EXTENDED_DESKTOP_SIZE in self.encodings:
            encoding = Encoding.EXTENDED_DESKTOP_SIZE
        elif Encoding.DESKTOP_SIZE in self.encodings:
            encoding = Encoding.DESKTOP_SIZE
        else:
            raise LocalProtocolError(f"the desktop is now {width}x{height} and this client cannot follow a size "
                                     "change (it did not announce DesktopSize)")
        plan = SizeChange(width, height, encoding, self._resize_reason)
        self._size = (width, height)
        self._damage = DamageGrid(width, height)
        self._damage.add_all()  # rfbproto "Screen Model": the old contents are undefined now
        if self._cu_area is not None:
            self._cu_area = self._cu_area.clip(width, height) or Rect(0, 0, width, height)
        # The size change tells the layout; only replies to this client's own SetDesktopSize stay due.
        self._layout_replies = [r for r in self._layout_replies if r.reason != ExtendedDesktopSizeReason.SERVER]
        self._resize_reason = ExtendedDesktopSizeReason.SERVER
        return plan

    def update_done(self) -> list[ServerMessageValue]:
        """The planned update was written (or abandoned); returns the replies that waited for it."""
        self._step(Step.UPDATE_DONE)
        out, self._waiting = self._waiting, []
        return out

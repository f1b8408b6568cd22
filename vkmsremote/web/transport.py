"""An RFB session over WebSocket sees an ordinary asyncio (StreamReader, StreamWriter) pair.

After the upgrade, the TCP (or TLS) transport's protocol is replaced by an _UpgradedProtocol that runs
every received byte through the sans-IO WebSocketConnection. Binary payloads go to a stock
asyncio.StreamReaderProtocol, which sits on a WebSocketTransport: its write() wraps bytes in a binary
frame, close() runs the closing handshake. Flow control passes straight through in both directions
(pause_reading/resume_reading to the socket, pause_writing/resume_writing to StreamWriter.drain), so the
session code is the same one that serves plain TCP and cannot tell the two apart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from vkmsremote.errors import WebSocketError
from vkmsremote.web.websocket import (
    NEED_DATA,
    Close,
    CloseCode,
    Data,
    EndOfStream,
    Ping,
    Pong,
    State,
    WebSocketConnection,
    close_code_allowed_on_wire,
)

log = logging.getLogger(__name__)

SessionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
"""What serves one RFB client: the same callback asyncio.start_server takes."""

CLOSE_TIMEOUT: Final = 2.0
"""Seconds to wait for the peer's Close reply before dropping TCP (RFC 6455 7.1.1 lets the server close first)."""

STREAM_LIMIT: Final = 1 << 16


class WebSocketTransport(asyncio.Transport):
    """The byte-stream transport an RFB session writes to; frames on the way out, unframes on the way in."""

    def __init__(self, inner: asyncio.Transport, conn: WebSocketConnection, protocol: asyncio.Protocol,
                 *, subprotocol: str | None = None, close_timeout: float = CLOSE_TIMEOUT) -> None:
        super().__init__()
        self._subprotocol = subprotocol
        self._inner = inner
        self._conn = conn
        self._protocol = protocol
        self._close_timeout = close_timeout
        self._closing = False
        self._lost_reported = False
        self._close_timer: asyncio.TimerHandle | None = None
        self.failure: WebSocketError | None = None
        """The protocol violation this connection was failed for, if any (tests, logs)."""

    # --- asyncio.Transport, as seen by the session ---

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "websocket_subprotocol":
            return self._subprotocol
        return self._inner.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._conn.state is not State.OPEN or not data:
            return  # like a closed socket transport: late writes go nowhere
        self._inner.write(self._conn.send(Data(bytes(data))))

    def can_write_eof(self) -> bool:
        return False  # a WebSocket has no half-close; the session closes the whole stream

    def is_closing(self) -> bool:
        return self._closing or self._inner.is_closing()

    def close(self) -> None:
        """Start the closing handshake (1000); TCP goes when the peer answers or CLOSE_TIMEOUT passes."""
        self.close_with(CloseCode.NORMAL, "")

    def close_with(self, code: CloseCode, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        if not self._conn.close_sent and not self._inner.is_closing():
            self._inner.write(self._conn.send(Close(code, reason)))
        if self._conn.state is State.CLOSED or self._inner.is_closing():
            self._inner.close()
        else:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(self._close_timeout, self._inner.close)

    def abort(self) -> None:
        self._closing = True
        self._inner.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._inner.get_write_buffer_limits()

    # --- events from the socket underneath ---

    def _on_data(self, data: bytes) -> None:
        self._conn.receive_data(data)
        self._process_events()

    def _on_eof(self) -> None:
        self._conn.receive_data(b"")
        self._process_events()

    def _process_events(self) -> None:
        while True:
            try:
                event = self._conn.next_event()
            except WebSocketError as err:
                self._fail(err)
                return
            if event is NEED_DATA:
                return
            if isinstance(event, Data):
                if event.payload and not self._lost_reported:
                    self._protocol.data_received(event.payload)
            elif isinstance(event, Ping):
                if not self._conn.close_sent:
                    self._inner.write(self._conn.send(Pong(event.payload)))
            elif isinstance(event, Pong):
                pass  # we send no pings; an unsolicited pong is allowed and means nothing (5.5.3)
            elif isinstance(event, Close):
                self._on_close_frame(event)
            elif isinstance(event, EndOfStream):
                if not event.clean:
                    log.debug("WebSocket peer %s closed TCP without a Close frame",
                              self.get_extra_info("peername"))
                self._report_eof()
                return

    def _on_close_frame(self, event: Close) -> None:
        if not self._conn.close_sent:
            # echo the peer's code (5.5.1); an empty Close is answered with an empty one
            code = event.code if (event.code == CloseCode.NO_STATUS
                                  or close_code_allowed_on_wire(event.code)) else CloseCode.NORMAL
            self._inner.write(self._conn.send(Close(code, "")))
        self._closing = True
        self._report_eof()
        self._inner.close()  # handshake complete: the server closes TCP first (7.1.1)

    def _fail(self, err: WebSocketError) -> None:
        log.info("WebSocket peer %s failed: %s (closing with %d)",
                 self.get_extra_info("peername"), err, err.close_code)
        self.failure = err
        if not self._conn.close_sent and not self._inner.is_closing():
            self._inner.write(self._conn.send(Close(err.close_code, err.message)))
        self._closing = True
        self._inner.close()
        # the session sees what a broken TCP connection gives it (a ConnectionError from read, drain and
        # wait_closed), with the WebSocket reason attached
        lost = ConnectionAbortedError(f"WebSocket closed with {err.close_code}: {err}")
        lost.__cause__ = err
        self._report_lost(lost)

    def _report_eof(self) -> None:
        if not self._lost_reported:
            self._protocol.eof_received()

    def _report_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if not self._lost_reported:
            self._lost_reported = True
            self._protocol.connection_lost(exc)

    def _on_connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._report_lost(exc)


class _UpgradedProtocol(asyncio.Protocol):
    """The socket's protocol after the 101 response: everything goes to the WebSocketTransport."""

    def __init__(self, ws: WebSocketTransport) -> None:
        self._ws = ws

    def data_received(self, data: bytes) -> None:
        self._ws._on_data(data)

    def eof_received(self) -> bool:
        self._ws._on_eof()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._ws._on_connection_lost(exc)

    def pause_writing(self) -> None:
        self._ws.get_protocol().pause_writing()

    def resume_writing(self) -> None:
        self._ws.get_protocol().resume_writing()


def open_websocket_stream(inner: asyncio.Transport, conn: WebSocketConnection, handler: SessionHandler, *,
                          subprotocol: str | None = None, initial: bytes = b"",
                          close_timeout: float = CLOSE_TIMEOUT) -> WebSocketTransport:
    """Take over ``inner`` (already upgraded) and run ``handler(reader, writer)`` over its binary stream.

    ``initial``: bytes that arrived after the request head, before the switch. Must be called from the
    event loop; the handler runs as a task, exactly as asyncio.start_server would run it.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
    stream_protocol = asyncio.StreamReaderProtocol(reader, handler, loop=loop)
    ws = WebSocketTransport(inner, conn, stream_protocol, subprotocol=subprotocol, close_timeout=close_timeout)
    inner.set_protocol(_UpgradedProtocol(ws))
    stream_protocol.connection_made(ws)
    if initial:
        ws._on_data(initial)
    return ws

"""An RFB session over WebSocket sees an ordinary asyncio (StreamReader, StreamWriter) pair.

The WebSocket protocol itself (RFC 6455 framing, masking, control frames, the closing handshake, size caps)
is the ``websockets`` library's. This module only adapts one of its server connections to the byte stream
the RFB session code expects, so that code is the one used for plain TCP and cannot tell the two apart:

- every binary message received is fed to a stock asyncio.StreamReaderProtocol (RFB over WebSocket is a
  byte stream: message boundaries mean nothing, RFC 6143 over websockify);
- ``writer.write()`` queues bytes that a sender task hands to ``connection.send()`` (a binary message);
- flow control passes through in both directions: when the session stops reading (StreamReader over its
  limit calls pause_reading) the pump stops receiving, so websockets' own receive queue fills and it stops
  reading the socket; when more than the write buffer's high mark waits to be sent, the session's
  ``drain()`` blocks until the socket has taken it;
- a text message fails the connection with 1003 (RFB is binary only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

log = logging.getLogger(__name__)

SessionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
"""What serves one RFB client: the same callback asyncio.start_server takes."""

STREAM_LIMIT: Final = 1 << 16
DEFAULT_HIGH: Final = 1 << 20
DEFAULT_LOW: Final = 1 << 18


class WebSocketStream(asyncio.Transport):
    """The byte-stream transport an RFB session writes to, over one websockets server connection."""

    def __init__(self, connection: ServerConnection, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.connection = connection
        self._protocol = protocol
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._high, self._low = DEFAULT_HIGH, DEFAULT_LOW
        self._writing_paused = False
        self._reading = asyncio.Event()
        self._reading.set()
        self._have_data = asyncio.Event()
        self._closing = False
        self._close_code: int = CloseCode.NORMAL_CLOSURE
        self._close_reason = ""

    # --- asyncio.Transport, as seen by the session ---

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        self._pending.append(bytes(data))
        self._pending_bytes += len(data)
        self._have_data.set()
        if not self._writing_paused and self._pending_bytes > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a WebSocket has no half-close; use close()")

    def get_write_buffer_size(self) -> int:
        return self._pending_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = DEFAULT_HIGH if high is None else high
        self._low = self._high // 4 if low is None else low

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def is_reading(self) -> bool:
        return self._reading.is_set()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is queued, then the closing handshake (1000)."""
        self.close_with(CloseCode.NORMAL_CLOSURE, "")

    def close_with(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self._close_code, self._close_reason = code, reason
        self._have_data.set()  # the sender sends the rest, then closes

    def abort(self) -> None:
        self._closing = True
        self._pending.clear()
        self._pending_bytes = 0
        self.connection.transport.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "websocket":
            return self.connection
        return self.connection.transport.get_extra_info(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    # --- the two pumps ---

    async def send_loop(self) -> None:
        """Hand queued bytes to the connection, one message per batch; close when asked."""
        ws = self.connection
        try:
            while True:
                await self._have_data.wait()
                self._have_data.clear()
                while self._pending:
                    batch = b"".join(self._pending)
                    self._pending.clear()
                    await ws.send(batch)  # waits while websockets' own buffer is over its write limit
                    self._pending_bytes -= len(batch)
                    if self._writing_paused and self._pending_bytes <= self._low:
                        self._writing_paused = False
                        self._protocol.resume_writing()
                if self._closing:
                    await ws.close(self._close_code, self._close_reason)
                    return
        except ConnectionClosed:
            return

    async def receive_loop(self) -> None:
        """Feed binary messages to the session's StreamReader until the connection closes."""
        ws = self.connection
        exc: Exception | None = None
        try:
            while True:
                await self._reading.wait()
                message = await ws.recv()
                if isinstance(message, str):
                    log.info("web peer %s sent a text message: closing with 1003",
                             self.get_extra_info("peername"))
                    self.close_with(CloseCode.UNSUPPORTED_DATA, "RFB over WebSocket is binary only")
                    break
                self._protocol.data_received(message)
        except ConnectionClosed as closed:
            if closed.rcvd is None:  # TCP went away without a Close frame
                exc = ConnectionResetError("WebSocket closed without a closing handshake")
        finally:
            self._closing = True
            self._have_data.set()
            with contextlib.suppress(Exception):
                self._protocol.eof_received()
            self._protocol.connection_lost(exc)


async def serve_stream(connection: ServerConnection, handler: SessionHandler) -> None:
    """Run ``handler(reader, writer)`` over ``connection`` until both the session and the socket are done."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT)
    protocol = asyncio.StreamReaderProtocol(reader)
    stream = WebSocketStream(connection, protocol)
    protocol.connection_made(stream)
    writer = asyncio.StreamWriter(stream, protocol, reader, loop)
    sender = loop.create_task(stream.send_loop())
    receiver = loop.create_task(stream.receive_loop())
    try:
        await handler(reader, writer)
    finally:
        stream.close()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(sender, timeout=5)
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver

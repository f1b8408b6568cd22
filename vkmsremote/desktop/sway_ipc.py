"""sway's IPC (the i3 IPC protocol, sway-ipc(7)): the wire format without I/O, and a small blocking client.

A message is ``"i3-ipc"``, a 32-bit payload length and a 32-bit type, both in the host's byte order,
then a JSON payload. The reply carries the same type. Used for ``input <id> map_to_output <name>``
(RUN_COMMAND), for resizing an output (RUN_COMMAND ``output <name> mode --custom``, GET_OUTPUTS), and for
the keyboard layout sway applies (GET_INPUTS, GET_CONFIG; vkmsremote.input.layout).
"""

from __future__ import annotations

import json
import os
import socket
import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, ClassVar

from vkmsremote.errors import VkmsRemoteError

from .clients import process_environ

MAGIC = b"i3-ipc"
MAX_PAYLOAD = 4 << 20  # a reply larger than this is refused (get_tree of a huge desktop is far smaller)


class IpcError(VkmsRemoteError):
    """sway's IPC socket could not be reached, broke the protocol, or refused a command."""


class MessageType(IntEnum):
    RUN_COMMAND = 0
    GET_OUTPUTS = 3
    GET_CONFIG = 9  # sway-ipc(7): the config file's text as last (re)loaded
    GET_INPUTS = 100  # sway-ipc(7): the input devices, with each keyboard's XKB layout names


@dataclass(frozen=True, slots=True)
class Header:
    HEADER: ClassVar[struct.Struct] = struct.Struct("=6sII")

    length: int
    type: int

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        magic, length, kind = cls.HEADER.unpack(data[: cls.HEADER.size])
        if magic != MAGIC:
            raise IpcError(f"not an i3/sway IPC reply (magic {magic!r})")
        if length > MAX_PAYLOAD:
            raise IpcError(f"IPC reply of {length} bytes exceeds the {MAX_PAYLOAD}-byte cap")
        return cls(length, kind)


def encode(kind: MessageType, payload: str = "") -> bytes:
    body = payload.encode()
    return Header.HEADER.pack(MAGIC, len(body), int(kind)) + body


def socket_path_of(pid: int, *, proc: Path = Path("/proc")) -> Path | None:
    """sway's IPC socket for the sway process ``pid``: ``$SWAYSOCK`` from its environment if set,
    else ``$XDG_RUNTIME_DIR/sway-ipc.<uid>.<pid>.sock`` (sway's default name, sway/ipc-server.c)."""
    try:
        env = process_environ(pid, proc=proc)
        uid = os.stat(proc / str(pid)).st_uid
    except OSError:
        return None
    if env.get("SWAYSOCK"):
        return Path(env["SWAYSOCK"])
    runtime = env.get("XDG_RUNTIME_DIR")
    if not runtime:
        return None
    return Path(runtime) / f"sway-ipc.{uid}.{pid}.sock"


class SwayIpc:
    """One connection to sway's IPC socket."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 5.0) -> None:
        self.path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.path)
        except OSError as e:
            self._sock.close()
            raise IpcError(f"cannot connect to sway's IPC socket {self.path}: {e.strerror or e}") from e

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SwayIpc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                raise IpcError(f"sway closed its IPC socket {self.path} mid-reply")
            buf += chunk
        return bytes(buf)

    def request(self, kind: MessageType, payload: str = "") -> Any:
        try:
            self._sock.sendall(encode(kind, payload))
            header = Header.from_bytes(self._recv(Header.HEADER.size))
            body = self._recv(header.length)
        except OSError as e:
            raise IpcError(f"sway IPC on {self.path} failed: {e.strerror or e}") from e
        if header.type != kind:
            raise IpcError(f"sway answered message type {header.type} to {kind.name}")
        try:
            return json.loads(body)
        except ValueError as e:
            raise IpcError(f"sway sent invalid JSON: {e}") from e

    def outputs(self) -> Any:
        """GET_OUTPUTS: sway's outputs as JSON (name, active, current_mode with refresh in mHz, ...)."""
        return self.request(MessageType.GET_OUTPUTS)

    def command(self, text: str) -> None:
        """Run one sway command; IpcError with sway's message if it fails."""
        replies = self.request(MessageType.RUN_COMMAND, text)
        for r in replies if isinstance(replies, list) else [replies]:
            if not r.get("success"):
                raise IpcError(f"sway refused {text!r}: {r.get('error', 'no reason given')}")


def running_sway_sockets(*, proc: Path = Path("/proc")) -> list[Path]:
    """IPC sockets of the sway processes running here (found by their name in ``/proc/<pid>/comm``), whatever
    their ``XDG_RUNTIME_DIR``: a sway started outside a logind session keeps its sockets where it was told."""
    found = []
    for entry in sorted(proc.glob("[0-9]*"), key=lambda p: int(p.name)):
        try:
            if (entry / "comm").read_text().strip() != "sway":
                continue
        except OSError:
            continue  # gone meanwhile, or not ours to read
        sock = socket_path_of(int(entry.name), proc=proc)
        if sock is not None and sock.exists():
            found.append(sock)
    return found

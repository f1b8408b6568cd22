"""A minimal Wayland client: where each output lies in a compositor's layout (wl_output + xdg-output).

KWin and Mutter map an absolute pointer device over their whole layout (the bounding box of all logical
outputs), as Xorg maps it over its root window: neither has a per-device output binding for a plain
absolute pointer (Mutter maps only tablets and touchscreens to a monitor, KWin's per-device ``outputName``
applies to touch and tablet devices). So vkmsremote places its pointer: it asks the compositor, as any
Wayland client may, where XR-0's output lies (``zxdg_output_v1.logical_position``/``logical_size``, named
by ``zxdg_output_v1.name`` or ``wl_output.name``) and scales the VNC client's (x, y) into that rectangle
of the layout (vkmsremote.input.uinput.PointerArea). A :class:`LayoutWatcher` keeps one connection open
and follows the layout as outputs come, go, move and change mode.

The wire format (wayland.xml, "Wire Format"): each message is the object id (32 bits), then the size in
bytes (upper 16 bits) and the opcode (lower 16), both in the host's byte order, then the arguments, each
padded to 32 bits: int/uint/fixed/object/new_id as one word, string and array as a length word and the
padded bytes (a string's length counts its NUL). File descriptors travel as SCM_RIGHTS beside the bytes.
Nothing here is a toolkit: only the messages the layout (and the test's probe client) need.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from vkmsremote.errors import VkmsRemoteError

from .clients import process_environ

if TYPE_CHECKING:
    from vkmsremote.frame import Placement

log = logging.getLogger(__name__)

MAX_MESSAGE = 4096
"""libwayland's limit for one message (WL_MAX_MESSAGE_SIZE); anything larger is a broken peer."""
MAX_FDS = 28  # fds one recvmsg may carry (libwayland's MAX_FDS_OUT)
RECONNECT_INTERVAL = 2.0
"""Seconds between attempts to reach a compositor whose connection was lost."""
DISPLAY_ID = 1


class WaylandError(VkmsRemoteError):
    """The compositor could not be reached, broke the wire format, or sent a protocol error."""


# --- the wire format, no I/O --------------------------------------------------------------------------------


def _pad(n: int) -> int:
    return (n + 3) & ~3


def encode(obj: int, opcode: int, *args: int | str | bytes | None) -> bytes:
    """One request. ``int`` is an int/uint/object/new_id word (None: a null object), ``str`` a string,
    ``bytes`` an array. Fixed-point values are passed already as ints (value * 256)."""
    body = bytearray()
    for a in args:
        if a is None:
            body += struct.pack("=I", 0)
        elif isinstance(a, int):
            body += struct.pack("=I", a & 0xFFFFFFFF)
        else:
            data = a.encode() + b"\0" if isinstance(a, str) else a
            body += struct.pack("=I", len(data)) + data + b"\0" * (_pad(len(data)) - len(data))
    size = 8 + len(body)
    if size > MAX_MESSAGE:
        raise WaylandError(f"request of {size} bytes exceeds Wayland's {MAX_MESSAGE}-byte message limit")
    return struct.pack("=II", obj, (size << 16) | opcode) + body


@dataclass
class Args:
    """A message's arguments, read in order (wayland.xml types)."""

    data: bytes
    pos: int = 0

    def _word(self) -> int:
        if self.pos + 4 > len(self.data):
            raise WaylandError("a Wayland message ended inside its arguments")
        (v,) = struct.unpack_from("=I", self.data, self.pos)
        self.pos += 4
        return int(v)

    def uint(self) -> int:
        return self._word()

    def int(self) -> int:
        v = self._word()
        return v - (1 << 32) if v & 0x80000000 else v

    def fixed(self) -> float:
        return self.int() / 256.0

    def array(self) -> bytes:
        n = self._word()
        if self.pos + n > len(self.data):
            raise WaylandError(f"a Wayland array of {n} bytes runs past its message")
        out = self.data[self.pos: self.pos + n]
        self.pos += _pad(n)
        return out

    def string(self) -> str:
        raw = self.array()
        if not raw:
            return ""
        if raw[-1:] != b"\0":
            raise WaylandError("a Wayland string is not NUL-terminated")
        return raw[:-1].decode("utf-8", "replace")


@dataclass
class Splitter:
    """Splits the byte stream from the compositor into (object id, opcode, argument bytes)."""

    buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        self.buf += data
        out = []
        while len(self.buf) >= 8:
            obj, word = struct.unpack_from("=II", self.buf)
            size, opcode = word >> 16, word & 0xFFFF
            if size < 8 or size % 4:
                raise WaylandError(f"a Wayland message of size {size} (object {obj}, opcode {opcode})")
            if len(self.buf) < size:
                break
            out.append((obj, opcode, bytes(self.buf[8:size])))
            del self.buf[:size]
        return out


# --- a blocking connection ----------------------------------------------------------------------------------


Handler = Callable[[int, Args, "Connection"], None]
"""An object's event handler: (opcode, arguments, connection)."""


class Connection:
    """One connection to a compositor. ``handlers`` maps object ids to their event handlers; ids come from
    :meth:`new_id`. wl_display's error and delete_id are handled here; fds received are kept in ``fds``
    (closed by whoever takes them, else at :meth:`close`)."""

    def __init__(self, path: str | Path, timeout: float | None = 30.0) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except OSError as e:
            self.sock.close()
            raise WaylandError(f"cannot connect to the Wayland socket {self.path}: {e.strerror or e}") from e
        self._next = 2
        self._splitter = Splitter()
        self.handlers: dict[int, Handler] = {DISPLAY_ID: self._display_event}
        self.fds: list[int] = []
        self._send_lock = threading.Lock()
        self.closed = False

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def new_id(self, handler: Handler | None = None) -> int:
        oid = self._next
        self._next += 1
        self.handlers[oid] = handler or (lambda opcode, args, conn: None)
        return oid

    def send(self, obj: int, opcode: int, *args: int | str | bytes | None, fds: Iterable[int] = ()) -> None:
        data = encode(obj, opcode, *args)
        anc = list(fds)
        with self._send_lock:
            try:
                if anc:
                    self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", anc))])
                else:
                    self.sock.sendall(data)
            except OSError as e:
                raise WaylandError(f"the compositor at {self.path} went away: {e}") from e

    def _display_event(self, opcode: int, args: Args, conn: Connection) -> None:
        if opcode == 0:  # error(object_id, code, message)
            obj, code, message = args.uint(), args.uint(), args.string()
            raise WaylandError(f"the compositor reported a protocol error on object {obj} (code {code}): {message}")
        if opcode == 1:  # delete_id(id)
            self.handlers.pop(args.uint(), None)

    def dispatch_once(self) -> None:
        """Read what the compositor sent (blocks up to the timeout) and run the handlers."""
        try:
            data, ancdata, _flags, _addr = self.sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4))
        except TimeoutError:
            raise
        except OSError as e:
            raise WaylandError(f"reading from the compositor at {self.path}: {e}") from e
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % 4])
                self.fds.extend(fds)
        if not data:
            raise WaylandError(f"the compositor at {self.path} closed the connection")
        for obj, opcode, body in self._splitter.feed(data):
            handler = self.handlers.get(obj)
            if handler is not None:  # events to destroyed objects are dropped, as libwayland does
                handler(opcode, Args(body), self)

    def roundtrip(self) -> None:
        """Send wl_display.sync and dispatch until its callback is done: every earlier request answered."""
        done = []
        cb = self.new_id(lambda opcode, args, conn: done.append(True))
        self.send(DISPLAY_ID, 0, cb)  # wl_display.sync
        while not done:
            self.dispatch_once()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


@dataclass
class Global:
    name: int
    interface: str
    version: int


class Registry:
    """wl_registry: the globals the compositor offers; ``on_global``/``on_remove`` follow changes."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.globals: dict[int, Global] = {}
        self.on_global: Callable[[Global], None] | None = None
        self.on_remove: Callable[[Global], None] | None = None
        self.id = conn.new_id(self._event)
        conn.send(DISPLAY_ID, 1, self.id)  # wl_display.get_registry

    def _event(self, opcode: int, args: Args, conn: Connection) -> None:
        if opcode == 0:
            g = Global(args.uint(), args.string(), args.uint())
            self.globals[g.name] = g
            if self.on_global is not None:
                self.on_global(g)
        elif opcode == 1:
            g2 = self.globals.pop(args.uint(), None)
            if g2 is not None and self.on_remove is not None:
                self.on_remove(g2)

    def bind(self, g: Global, version: int, handler: Handler | None = None) -> int:
        """Bind global ``g`` at min(``version``, what it offers); returns the new object's id."""
        oid = self.conn.new_id(handler)
        self.conn.send(self.id, 0, g.name, g.interface, min(version, g.version), oid)
        return oid

    def find(self, interface: str) -> Global | None:
        return next((g for g in self.globals.values() if g.interface == interface), None)


# --- the layout --------------------------------------------------------------------------------------------


@dataclass
class Output:
    """One wl_output and what its xdg_output says (logical coordinates: what pointers move in)."""

    wl_id: int
    name: str = ""
    x: int = 0
    y: int = 0
    width: int = 0
    height: int = 0
    mode: tuple[int, int] = (0, 0)  # the current mode in pixels (wl_output.mode, flag current)
    logical: bool = False  # xdg_output gave the logical rectangle
    xdg_id: int = 0

    def rect(self) -> tuple[int, int, int, int] | None:
        if self.logical and self.width > 0 and self.height > 0:
            return self.x, self.y, self.width, self.height
        return None


XDG_OUTPUT_MANAGER = "zxdg_output_manager_v1"


class OutputLayout:
    """Outputs and their logical rectangles over one connection; call :meth:`start` then dispatch."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.outputs: dict[int, Output] = {}  # by global name
        self.manager: int | None = None
        self.registry = Registry(conn)
        self.registry.on_global = self._global
        self.registry.on_remove = self._remove

    def start(self) -> None:
        """Learn the globals, bind the outputs and the xdg-output manager, and wait for their state."""
        self.conn.roundtrip()  # the globals (and the output binds they cause)
        if self.manager is None:
            raise WaylandError(f"the compositor at {self.conn.path} offers no {XDG_OUTPUT_MANAGER} (xdg-output): "
                               "vkmsremote cannot learn where its outputs lie")
        self.conn.roundtrip()  # each output's and xdg_output's initial state
        self.conn.roundtrip()

    def _global(self, g: Global) -> None:
        if g.interface == "wl_output":
            out = Output(0)
            out.wl_id = self.registry.bind(g, 4, partial(self._output_event, out))
            self.outputs[g.name] = out
            self._xdg_output(out)
        elif g.interface == XDG_OUTPUT_MANAGER and self.manager is None:
            self.manager = self.registry.bind(g, 3)
            for out in self.outputs.values():
                self._xdg_output(out)

    def _xdg_output(self, out: Output) -> None:
        if self.manager is None or out.wl_id == 0 or out.xdg_id:
            return
        out.xdg_id = self.conn.new_id(partial(self._xdg_event, out))
        self.conn.send(self.manager, 1, out.xdg_id, out.wl_id)  # get_xdg_output(new_id, output)

    def _remove(self, g: Global) -> None:
        self.outputs.pop(g.name, None)

    def _output_event(self, out: Output, opcode: int, args: Args, conn: Connection) -> None:
        if opcode == 1:  # mode(flags, width, height, refresh)
            flags, w, h = args.uint(), args.int(), args.int()
            if flags & 1:
                out.mode = (w, h)
        elif opcode == 4:  # name (v4)
            out.name = out.name or args.string()

    def _xdg_event(self, out: Output, opcode: int, args: Args, conn: Connection) -> None:
        if opcode == 0:  # logical_position
            out.x, out.y = args.int(), args.int()
            out.logical = True
        elif opcode == 1:  # logical_size
            out.width, out.height = args.int(), args.int()
            out.logical = True
        elif opcode == 3:  # name (v2)
            out.name = args.string()

    def rects(self) -> dict[str, tuple[int, int, int, int]]:
        return {o.name: r for o in list(self.outputs.values()) if o.name and (r := o.rect()) is not None}

    def placement(self, name: str) -> Placement | None:
        """Where ``name`` lies in the layout's bounding box; None if it is not (or not yet) an output."""
        return placement_in(self.rects(), name)


def placement_in(rects: dict[str, tuple[int, int, int, int]], name: str) -> Placement | None:
    """``name``'s rectangle in the bounding box of ``rects`` (which starts at its top-left corner): the
    area an absolute pointer spans on KWin and Mutter, as the X screen does on Xorg."""
    # imported here, not at the top: frame brings numpy, and the CLI's parser imports this module
    from vkmsremote.frame import Placement

    if name not in rects:
        return None
    x0 = min(x for x, _, _, _ in rects.values())
    y0 = min(y for _, y, _, _ in rects.values())
    x1 = max(x + w for x, _, w, _ in rects.values())
    y1 = max(y + h for _, y, _, h in rects.values())
    x, y, w, h = rects[name]
    return Placement(x - x0, y - y0, w, h, x1 - x0, y1 - y0)


class LayoutWatcher:
    """Follows a compositor's layout on a thread of its own. :meth:`placement` is cheap (no I/O): pointer
    events may ask at every motion. The connection is made by :meth:`open` (as whoever may reach the
    socket, e.g. root before a privilege drop) and stays usable afterwards."""

    def __init__(self, layout: OutputLayout) -> None:
        self.layout = layout
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.error: str | None = None
        self._tried = 0.0  # when a reconnection was last tried

    @classmethod
    def open(cls, path: str | Path, timeout: float = 30.0) -> LayoutWatcher:
        conn = Connection(path, timeout)
        try:
            layout = OutputLayout(conn)
            layout.start()
        except (WaylandError, OSError) as e:
            conn.close()
            if isinstance(e, WaylandError):
                raise
            raise WaylandError(f"the compositor at {path} did not answer: {e}") from e
        conn.sock.settimeout(None)
        return cls(layout)

    def start(self) -> None:
        """Dispatch the compositor's events on a daemon thread (started lazily: after any fork)."""
        if self._thread is None and not self._stopping:
            self._thread = threading.Thread(target=self._run, name="wayland-layout", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stopping:
                self.layout.conn.dispatch_once()
        except (WaylandError, OSError) as e:
            if not self._stopping:
                self.error = str(e)
                log.warning("the compositor's layout is no longer followed (%s); reconnecting to %s every %g s",
                            e, self.layout.conn.path, RECONNECT_INTERVAL)

    def placement(self, name: str) -> Placement | None:
        self.start()
        if self.error is not None:
            self._reconnect()
        return self.layout.placement(name)

    def _reconnect(self) -> None:
        """After the compositor went away (restarted, or the session ended and a new one began on the same
        socket): connect again, at most every RECONNECT_INTERVAL s. Until then the last layout is used."""
        now = time.monotonic()
        if self._stopping or now - self._tried < RECONNECT_INTERVAL:
            return
        self._tried = now
        try:
            fresh = LayoutWatcher.open(self.layout.conn.path, timeout=RECONNECT_INTERVAL)
        except WaylandError:
            return
        old, self.layout, self.error, self._thread = self.layout, fresh.layout, None, None
        old.conn.close()
        log.info("following the compositor's layout at %s again", self.layout.conn.path)
        self.start()

    def close(self) -> None:
        self._stopping = True
        self.layout.conn.close()
        if self._thread is not None:
            self._thread.join(5)


# --- finding a compositor's socket -------------------------------------------------------------------------

_WAYLAND_SOCKET = re.compile(r"wayland-[\w.-]+$")


def _socket_inodes(pid: int, proc: Path) -> set[int]:
    out = set()
    with contextlib.suppress(OSError):
        for fd in (proc / str(pid) / "fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    out.add(int(target[8:-1]))
    return out


def wayland_socket_of(pid: int, *, proc: Path = Path("/proc")) -> Path | None:
    """The Wayland socket the compositor ``pid`` listens on: a listening Unix socket of its own named
    ``wayland-*`` (/proc/net/unix, matched by inode with its fds); else ``$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY``
    (or wayland-0) of its environment if it exists. Needs to read the process's fds (root, or its owner)."""
    inodes = _socket_inodes(pid, proc)
    with contextlib.suppress(OSError):
        for line in (proc / "net" / "unix").read_text().splitlines()[1:]:
            fields = line.split()
            # Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 = listening
            if len(fields) >= 8 and int(fields[3], 16) & 0x10000 and int(fields[6]) in inodes:
                path = Path(fields[7])
                if _WAYLAND_SOCKET.fullmatch(path.name) and not path.name.endswith(".lock"):
                    return path
    env: dict[str, str] = {}
    with contextlib.suppress(OSError):
        env = process_environ(pid, proc=proc)
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        candidate = Path(runtime) / env.get("WAYLAND_DISPLAY", "wayland-0")
        if candidate.is_socket():
            return candidate
    return None

"""A Wayland client that goes fullscreen on one named output and writes every pointer event it gets.

    python3 tests/guest/wlprobe.py OUTPUT LOGFILE

The tests' witness for where a compositor delivers vkmsremote's pointer: xdg_toplevel.set_fullscreen on
the wl_output named OUTPUT (the compositor's own name for the connector, e.g. Virtual-1), a plain shm
buffer of the configured size, then one line per event in LOGFILE (flushed at once):

    configured W H            the window is fullscreen, its buffer W x H committed
    on NAME / off NAME        the surface entered / left output NAME (wl_surface.enter/leave)
    enter X Y / motion X Y    surface coordinates (= the output's, at scale 1)
    button CODE STATE         the evdev code (BTN_LEFT 272), 1 pressed / 0 released
    leave                     the pointer left the surface (so it went to another output)

Used where wev cannot be put on a given output (GNOME Shell and KWin place a plain window where they
like; fullscreen on a chosen output is the protocol's own way). The messages are vkmsremote's minimal
client (vkmsremote.desktop.wayland); the compositor decides everything that is checked.
"""

from __future__ import annotations

import mmap
import os
import sys
import time
from pathlib import Path

from vkmsremote.desktop.wayland import Args, Connection, OutputLayout

XRGB8888 = 1


class Probe:
    def __init__(self, conn: Connection, output: str, log_path: Path) -> None:
        self.conn = conn
        self.log = log_path.open("a", buffering=1)
        self.layout = OutputLayout(conn)
        self.layout.start()
        reg = self.layout.registry
        target = next((o for o in self.layout.outputs.values() if o.name == output), None)
        if target is None:
            raise SystemExit(f"no output named {output}: {sorted(o.name for o in self.layout.outputs.values())}")
        self.output = target
        need = {i: reg.find(i) for i in ("wl_compositor", "wl_shm", "xdg_wm_base", "wl_seat")}
        missing = [i for i, g in need.items() if g is None]
        if missing:
            raise SystemExit(f"the compositor offers no {missing}")
        self.compositor = reg.bind(need["wl_compositor"], 4)  # type: ignore[arg-type]
        self.shm = reg.bind(need["wl_shm"], 1)  # type: ignore[arg-type]
        self.wm = reg.bind(need["xdg_wm_base"], 1, self._wm_event)  # type: ignore[arg-type]
        self.seat = reg.bind(need["wl_seat"], 5, self._seat_event)  # type: ignore[arg-type]
        self.pointer = 0
        self.size = (0, 0)
        self.buffer_size = (0, 0)
        self.surface = conn.new_id(self._surface_event)
        conn.send(self.compositor, 0, self.surface)  # create_surface
        self.xdg_surface = conn.new_id(self._xdg_surface_event)
        conn.send(self.wm, 2, self.xdg_surface, self.surface)  # get_xdg_surface
        self.toplevel = conn.new_id(self._toplevel_event)
        conn.send(self.xdg_surface, 1, self.toplevel)  # get_toplevel
        conn.send(self.toplevel, 2, "vkmsremote probe")  # set_title
        conn.send(self.toplevel, 3, "vkmsremote-probe")  # set_app_id
        conn.send(self.toplevel, 11, target.wl_id)  # set_fullscreen(output)
        conn.send(self.surface, 6)  # commit: ask for the first configure

    def write(self, line: str) -> None:
        self.log.write(line + "\n")

    def _surface_event(self, opcode: int, args: Args, conn: Connection) -> None:
        if opcode in (0, 1):  # enter(output) / leave(output): which output shows the surface
            wl_id = args.uint()
            name = next((o.name for o in self.layout.outputs.values() if o.wl_id == wl_id), f"wl_output@{wl_id}")
            self.write(f"{'on' if opcode == 0 else 'off'} {name}")

    def _wm_event(self, opcode: int, args: Args, conn: Connection) -> None:
        if opcode == 0:  # ping
            conn.send(self.wm, 3, args.uint())  # pong

    def _seat_event(self, opcode: int, args: Args, conn: Connection) -> None:
        if opcode == 0 and args.uint() & 1 and not self.pointer:  # capabilities: pointer
            self.pointer = conn.new_id(self._pointer_event)
            conn.send(self.seat, 0, self.pointer)  # get_pointer

    def _pointer_event(self, opcode: int, args: Args, conn: Connection) -> None:
        if opcode == 0:  # enter(serial, surface, x, y)
            args.uint(), args.uint()
            self.write(f"enter {args.fixed():g} {args.fixed():g}")
        elif opcode == 1:
            self.write("leave")
        elif opcode == 2:  # motion(time, x, y)
            args.uint()
            self.write(f"motion {args.fixed():g} {args.fixed():g}")
        elif opcode == 3:  # button(serial, time, button, state)
            args.uint(), args.uint()
            self.write(f"button {args.uint()} {args.uint()}")

    def _toplevel_event(self, opcode: int, args: Args, conn: Connection) -> None:
        if opcode == 0:  # configure(width, height, states)
            self.size = (args.int(), args.int())

    def _xdg_surface_event(self, opcode: int, args: Args, conn: Connection) -> None:
        if opcode != 0:
            return
        conn.send(self.xdg_surface, 4, args.uint())  # ack_configure(serial)
        w, h = self.size
        if w <= 0 or h <= 0:
            w, h = self.output.width or self.output.mode[0], self.output.height or self.output.mode[1]
        if (w, h) != self.buffer_size:
            self._attach(w, h)
            self.write(f"configured {w} {h}")

    def _attach(self, w: int, h: int) -> None:
        stride, size = w * 4, w * h * 4
        fd = os.memfd_create("vkmsremote-probe")
        try:
            os.ftruncate(fd, size)
            with mmap.mmap(fd, size) as m:
                m.write(b"\x60\x30\x90\xff" * (w * h))  # a purple no desktop uses
            pool = self.conn.new_id()
            self.conn.send(self.shm, 0, pool, size, fds=[fd])  # create_pool(id, fd, size)
        finally:
            os.close(fd)
        buffer = self.conn.new_id()
        self.conn.send(pool, 0, buffer, 0, w, h, stride, XRGB8888)  # create_buffer
        self.conn.send(pool, 1)  # destroy the pool (the buffer keeps it)
        self.conn.send(self.surface, 1, buffer, 0, 0)  # attach
        self.conn.send(self.surface, 2, 0, 0, w, h)  # damage
        self.conn.send(self.surface, 6)  # commit
        self.buffer_size = (w, h)


def main() -> int:
    output, log_path = sys.argv[1], Path(sys.argv[2])
    runtime = os.environ["XDG_RUNTIME_DIR"]
    path = Path(runtime) / os.environ.get("WAYLAND_DISPLAY", "wayland-0")
    deadline = time.monotonic() + 120
    while not path.is_socket():  # the compositor may still be starting
        if time.monotonic() > deadline:
            raise SystemExit(f"no Wayland socket at {path}")
        time.sleep(0.5)
    conn = Connection(path, timeout=None)
    Probe(conn, output, log_path)
    while True:
        conn.dispatch_once()


if __name__ == "__main__":
    sys.exit(main())

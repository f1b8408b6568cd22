"""A VNC client sizes XR-0 (SetDesktopSize) while a compositor is its DRM master: ask that compositor.

Only the DRM master may set a CRTC's mode, so when a compositor drives the card vkmsremote asks it through
its own runtime interface, and the desktop grows or shrinks with the output:

- Xorg: RandR through the X server, as ``xrandr`` does it (``--newmode`` with CVT reduced-blanking timings
  the caller computes, ``--addmode`` to the output, ``--output NAME --mode``; xrandr sizes the X screen to
  the outputs' bounding box). A mode the output already lists at that size is used as it is.
- sway (wlroots): its IPC, ``output NAME mode --custom WxH@RHz``.
- GNOME Shell / Mutter: ``org.gnome.Mutter.DisplayConfig`` on the desktop user's session bus
  (``GetCurrentState``, then ``ApplyMonitorsConfig`` with method "temporary": no "keep these settings?"
  dialog, nothing written to monitors.xml), through ``busctl`` run as the compositor's user. Mutter sets
  only modes the connector lists (VKMS lists the DMT/CEA sizes up to its maximum); outputs right of or
  below XR-0 move by the change, so the layout stays adjacent as Mutter requires.
- KWin (Plasma): its output management protocol on its Wayland socket (``kde_output_device_v2`` for the
  outputs and their modes, one ``kde_output_configuration_v2`` with XR-0's mode and the positions of the
  outputs it moves; what KScreen and ``kscreen-doctor`` speak), vkmsremote.desktop.kde_output. Like Mutter,
  KWin sets the modes the connector lists.
- anything else (Weston, ...): no runtime interface vkmsremote knows; the request is refused
  ("prohibited") with the reason in the log.

The output keeps its refresh rate. A request answers OK only once the compositor reports the output at the
new size (the CRTC reader then checks the CRTC itself, see vkmsremote.capture.crtc). :meth:`DesktopResizer.undo`
(on exit) puts back each output's mode from before the first resize and removes the modes vkmsremote
added to the X server.

The same adapters light an output that ``vkmsremote output add`` connected (:meth:`DesktopResizer.light`:
Xorg leaves a new output dark until a RandR client lights it; sway lights it itself) and turn it off before
``output remove`` unplugs it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from vkmsremote.errors import VkmsRemoteError
from vkmsremote.frame import ResizeStatus

from .binding import Compositor
from .clients import DrmClient, as_user, drm_master, process_environ, process_owner
from .sway_ipc import IpcError, SwayIpc, socket_path_of

log = logging.getLogger(__name__)

XRANDR_TIMEOUT = 60.0  # seconds; xrandr waits for the X server's modeset (slow under TCG)
MODE_SUFFIX = "_vkmsremote"
"""Modes vkmsremote adds to an X server are named ``<W>x<H>_vkmsremote`` (and removed on exit)."""

Timings = Callable[[int, int, float], str]
"""(width, height, refresh Hz) -> an X11 modeline's numbers without its name: ``clock hdisp hsyncstart
hsyncend htotal vdisp vsyncstart vsyncend vtotal flags...`` (vkmsremote.drm.cvt computes them)."""
Run = Callable[[list[str], dict[str, str]], "subprocess.CompletedProcess[str]"]


class Adapter(Protocol):
    def resize(self, width: int, height: int) -> ResizeStatus: ...

    def light(self, mode: tuple[int, int, float | None] | None, timeout: float) -> str: ...

    def dark(self) -> str: ...

    def undo(self) -> None: ...


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=XRANDR_TIMEOUT, check=False)


# --- Xorg -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class XOutput:
    """One output in ``xrandr --query``: its lit geometry (None if off), mode names, current mode and rate."""

    name: str
    connected: bool
    geometry: tuple[int, int, int, int] | None  # width, height, x, y
    modes: tuple[str, ...]
    current: str | None
    rate: float | None


_OUTPUT_RE = re.compile(r"^(\S+) (connected|disconnected|unknown connection)(?: primary)?"
                        r"(?: (\d+)x(\d+)\+(-?\d+)\+(-?\d+))?")
_MODE_RE = re.compile(r"^\s+(\S+)\s+(.*)$")
_RATE_RE = re.compile(r"(\d+(?:\.\d+)?)([ *][ +]?)")


def parse_xrandr(text: str) -> dict[str, XOutput]:
    """The outputs of ``xrandr --query`` (non-verbose): each output line and the mode lines under it."""
    outputs: dict[str, XOutput] = {}
    cur: dict[str, Any] | None = None

    def flush() -> None:
        if cur is not None:
            outputs[cur["name"]] = XOutput(cur["name"], cur["connected"], cur["geometry"], tuple(cur["modes"]),
                                           cur["current"], cur["rate"])

    for line in text.splitlines():
        m = _OUTPUT_RE.match(line)
        if m is not None and not line.startswith("Screen "):
            flush()
            geometry = tuple(int(g) for g in m.group(3, 4, 5, 6)) if m.group(3) else None
            cur = {"name": m.group(1), "connected": m.group(2) == "connected", "geometry": geometry,
                   "modes": [], "current": None, "rate": None}
            continue
        mm = _MODE_RE.match(line)
        if mm is not None and cur is not None:
            cur["modes"].append(mm.group(1))
            for rate, marks in _RATE_RE.findall(mm.group(2)):
                if "*" in marks:
                    cur["current"], cur["rate"] = mm.group(1), float(rate)
    flush()
    return outputs


def x_display_of(pid: int, *, proc: Path = Path("/proc")) -> tuple[str | None, str | None]:
    """(DISPLAY, XAUTHORITY) of the X server ``pid``: ``:N`` and ``-auth FILE`` from its command line; with
    ``-displayfd`` (display managers) the number comes from the listening socket it holds
    (``/tmp/.X11-unix/XN`` in /proc/net/unix)."""
    try:
        argv = (proc / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None, None
    display = next((a for a in argv[1:] if re.fullmatch(r":\d+", a)), None)
    auth = argv[argv.index("-auth") + 1] if "-auth" in argv[:-1] else None
    if display is None:
        inodes = set()
        try:
            for fd in os.listdir(proc / str(pid) / "fd"):
                m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(proc / str(pid) / "fd" / fd))
                if m:
                    inodes.add(m.group(1))
            table = (proc / "net" / "unix").read_text()
        except OSError:
            return None, auth
        for row in table.splitlines()[1:]:
            fields = row.split()
            if len(fields) >= 8 and fields[6] in inodes:
                m = re.search(r"/tmp/\.X11-unix/X(\d+)$", fields[7])
                if m:
                    display = f":{m.group(1)}"
                    break
    return display, auth


class XorgResizer:
    """Resizes ``output`` of the X server at ``display`` through RandR (the ``xrandr`` program)."""

    def __init__(self, display: str, output: str, timings: Timings, *, xauthority: str | None = None,
                 run: Run = _run) -> None:
        self.display = display
        self.output = output
        self.timings = timings
        self.env = {**os.environ, "DISPLAY": display}
        if xauthority:
            self.env["XAUTHORITY"] = xauthority
        self._run = run
        self.created: list[str] = []  # --newmode'd by us, in order
        self.added: list[str] = []  # --addmode'd to the output by us
        self.original: tuple[str, float | None] | None = None  # the output's mode before our first change

    def xrandr(self, *args: str) -> str:
        done = self._run(["xrandr", *args], self.env)
        if done.returncode != 0:
            raise VkmsRemoteError(f"xrandr {' '.join(args)} on {self.display} failed ({done.returncode}): "
                                  f"{done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def query(self) -> XOutput | None:
        return parse_xrandr(self.xrandr("--query")).get(self.output)

    def resize(self, width: int, height: int) -> ResizeStatus:
        try:
            out = self.query()
            if out is None or out.geometry is None:
                log.warning("resize to %dx%d prohibited: %s is not lit on X display %s", width, height, self.output,
                         self.display)
                return ResizeStatus.PROHIBITED
            if out.geometry[:2] == (width, height):
                return ResizeStatus.OK
            if self.original is None and out.current is not None:
                self.original = (out.current, out.rate)
            name = f"{width}x{height}"
            if name not in out.modes:
                name += MODE_SUFFIX
                if name not in self.created:
                    self.xrandr("--newmode", name, *self.timings(width, height, out.rate or 60.0).split())
                    self.created.append(name)
                if name not in out.modes:
                    self.xrandr("--addmode", self.output, name)
                    self.added.append(name)
            self.xrandr("--output", self.output, "--mode", name)
            now = self.query()
        except (VkmsRemoteError, OSError, subprocess.SubprocessError) as e:
            log.warning("resize of %s to %dx%d through RandR failed: %s", self.output, width, height, e)
            return ResizeStatus.OUT_OF_RESOURCES
        if now is None or now.geometry is None or now.geometry[:2] != (width, height):
            log.warning("resize of %s to %dx%d: X reports %s afterwards", self.output, width, height,
                        now.geometry if now is not None else "no such output")
            return ResizeStatus.OUT_OF_RESOURCES
        log.info("resized %s to %dx%d through RandR on %s (mode %s)", self.output, width, height, self.display, name)
        return ResizeStatus.OK

    def _mode_name(self, out: XOutput, width: int, height: int, refresh: float | None) -> str:
        """A mode of the output of that size (and rate, if given), added to X if the output lists none."""
        name = f"{width}x{height}"
        if name in out.modes and refresh is None:
            return name
        name += MODE_SUFFIX
        if name not in self.created and name not in out.modes:
            self.xrandr("--newmode", name, *self.timings(width, height, refresh or out.rate or 60.0).split())
            self.created.append(name)
        if name not in out.modes:
            self.xrandr("--addmode", self.output, name)
            self.added.append(name)
        return name

    def light(self, mode: tuple[int, int, float | None] | None, timeout: float) -> str:
        """After a hotplug: wait until X sees the output connected, then light it right of the lit outputs
        (X leaves a new output dark; a desktop environment or ``xrandr --auto`` lights it)."""
        deadline = time.monotonic() + timeout
        while (out := self.query()) is None or not out.connected:
            if time.monotonic() > deadline:
                raise VkmsRemoteError(f"X display {self.display} does not show {self.output} connected "
                                      f"after {timeout:g} s")
            time.sleep(0.25)
        outputs = parse_xrandr(self.xrandr("--query"))
        right = max((o.geometry[0] + o.geometry[2] for o in outputs.values()
                     if o.geometry is not None and o.name != self.output), default=0)
        how = ("--mode", self._mode_name(out, *mode)) if mode is not None else ("--auto",)
        self.xrandr("--output", self.output, *how, "--pos", f"{right}x0")
        return f"xrandr --output {self.output} {' '.join(how)} --pos {right}x0 on {self.display}"

    def dark(self) -> str:
        """Before an unplug: turn the output off (X would keep scanning out to it) and remove our modes."""
        self.xrandr("--output", self.output, "--off")
        out = self.query()
        for name in out.modes if out is not None else ():
            if name.endswith(MODE_SUFFIX):
                self.xrandr("--delmode", self.output, name)
                try:
                    self.xrandr("--rmmode", name)
                except VkmsRemoteError as e:  # another output still has it
                    log.info("mode %s stays in X: %s", name, e)
        return f"xrandr --output {self.output} --off on {self.display}"

    def undo(self) -> None:
        """Back to the mode from before the first resize; remove the modes added (each step on its own)."""
        steps: list[tuple[str, ...]] = []
        if self.original is not None:
            mode, rate = self.original
            steps.append(("--output", self.output, "--mode", mode, *(("--rate", f"{rate:g}") if rate else ())))
        steps += [("--delmode", self.output, name) for name in reversed(self.added)]
        steps += [("--rmmode", name) for name in reversed(self.created)]
        for step in steps:
            try:
                self.xrandr(*step)
            except (VkmsRemoteError, OSError, subprocess.SubprocessError) as e:
                log.warning("undoing the resize of %s: %s", self.output, e)
        self.original, self.added, self.created = None, [], []


# --- sway -------------------------------------------------------------------------------------------------


def sway_output(outputs: Any, name: str) -> dict[str, Any] | None:
    """The GET_OUTPUTS entry named ``name``."""
    for o in outputs if isinstance(outputs, list) else []:
        if isinstance(o, dict) and o.get("name") == name:
            return o
    return None


def _mode_of(o: dict[str, Any]) -> tuple[int, int, float] | None:
    m = o.get("current_mode")
    if not o.get("active") or not isinstance(m, dict):
        return None
    return int(m.get("width", 0)), int(m.get("height", 0)), int(m.get("refresh", 0)) / 1000.0


class SwayResizer:
    """Resizes ``output`` through sway's IPC socket ``socket``: ``output NAME mode --custom WxH@RHz``."""

    def __init__(self, socket: str, output: str) -> None:
        self.socket = socket
        self.output = output
        self.original: tuple[int, int, float] | None = None

    def _mode(self, ipc: SwayIpc) -> tuple[int, int, float] | None:
        o = sway_output(ipc.outputs(), self.output)
        return _mode_of(o) if o is not None else None

    def resize(self, width: int, height: int) -> ResizeStatus:
        try:
            with SwayIpc(self.socket) as ipc:
                mode = self._mode(ipc)
                if mode is None:
                    log.warning("resize to %dx%d prohibited: sway has no active output %s", width, height, self.output)
                    return ResizeStatus.PROHIBITED
                if mode[:2] == (width, height):
                    return ResizeStatus.OK
                if self.original is None:
                    self.original = mode
                rate = mode[2] or 60.0
                ipc.command(f"output {self.output} mode --custom {width}x{height}@{rate:.3f}Hz")
                now = self._mode(ipc)
        except IpcError as e:
            log.warning("resize of %s to %dx%d through sway's IPC failed: %s", self.output, width, height, e)
            return ResizeStatus.OUT_OF_RESOURCES
        if now is None or now[:2] != (width, height):
            log.warning("resize of %s to %dx%d: sway reports %s afterwards", self.output, width, height, now)
            return ResizeStatus.OUT_OF_RESOURCES
        log.info("resized %s to %dx%d@%.3f Hz through sway's IPC", self.output, width, height, now[2])
        return ResizeStatus.OK

    def light(self, mode: tuple[int, int, float | None] | None, timeout: float) -> str:
        """After a hotplug: sway enables a new output itself; with ``mode`` it is set once sway lists it."""
        if mode is None:
            return "sway lights new outputs itself"
        width, height, refresh = mode
        deadline = time.monotonic() + timeout
        with SwayIpc(self.socket) as ipc:
            while sway_output(ipc.outputs(), self.output) is None:
                if time.monotonic() > deadline:
                    raise IpcError(f"sway does not list {self.output} after {timeout:g} s")
                time.sleep(0.25)
            command = f"output {self.output} mode --custom {width}x{height}@{refresh or 60.0:.3f}Hz"
            ipc.command(command)
        return f"swaymsg {command}"

    def dark(self) -> str:
        return "sway turns an unplugged output off itself"

    def undo(self) -> None:
        if self.original is None:
            return
        width, height, rate = self.original
        try:
            with SwayIpc(self.socket) as ipc:
                ipc.command(f"output {self.output} mode {width}x{height}@{rate:.3f}Hz")
        except IpcError as e:
            log.warning("undoing the resize of %s: %s", self.output, e)
        self.original = None


# --- the listed modes of GNOME Shell and KWin ------------------------------------------------------------


class _Mode(Protocol):
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def refresh(self) -> float: ...


ModeT = TypeVar("ModeT", bound=_Mode)


def listed_mode(modes: Iterable[ModeT], width: int, height: int, refresh: float) -> ModeT | None:
    """The mode of ``modes`` that is ``width`` x ``height`` at the rate nearest ``refresh``; None if no listed
    mode has that size (GNOME Shell and KWin set only the connector's own modes)."""
    sized = [m for m in modes if (m.width, m.height) == (width, height)]
    return min(sized, key=lambda m: abs(m.refresh - refresh)) if sized else None


def _unlisted(who: str, output: str, width: int, height: int, modes: Iterable[_Mode]) -> ResizeStatus:
    offered = sorted({f"{m.width}x{m.height}" for m in modes})
    log.warning("resize of %s to %dx%d: %s sets only the connector's own modes (%s)", output, width, height, who,
                ", ".join(offered))
    return ResizeStatus.OUT_OF_RESOURCES


# --- GNOME Shell / Mutter ----------------------------------------------------------------------------------

MUTTER_DEST = ("org.gnome.Mutter.DisplayConfig", "/org/gnome/Mutter/DisplayConfig", "org.gnome.Mutter.DisplayConfig")
APPLY_SIGNATURE = "uua(iiduba(ssa{sv}))a{sv}"
TEMPORARY = 1  # ApplyMonitorsConfig method: 0 verify, 1 temporary, 2 persistent (asks the user to keep it)


@dataclass(frozen=True, slots=True)
class MutterMode:
    id: str
    width: int
    height: int
    refresh: float
    current: bool


@dataclass(frozen=True, slots=True)
class MutterLogical:
    x: int
    y: int
    scale: float
    transform: int
    primary: bool
    connectors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MutterState:
    serial: int
    modes: dict[str, tuple[MutterMode, ...]]  # by connector
    logical: tuple[MutterLogical, ...]

    def current(self, connector: str) -> MutterMode | None:
        return next((m for m in self.modes.get(connector, ()) if m.current), None)


def _variant(props: Any, key: str) -> Any:
    v = props.get(key) if isinstance(props, dict) else None
    return v.get("data") if isinstance(v, dict) else v


def parse_mutter_state(text: str) -> MutterState:
    """``busctl --json=short call ... GetCurrentState``'s output: (serial, monitors, logical monitors, props)."""
    try:
        serial, monitors, logical, _props = json.loads(text)["data"]
        modes = {}
        for spec, mode_list, _mprops in monitors:
            modes[str(spec[0])] = tuple(
                MutterMode(str(m[0]), int(m[1]), int(m[2]), float(m[3]), bool(_variant(m[6], "is-current")))
                for m in mode_list)
        lms = tuple(MutterLogical(int(lm[0]), int(lm[1]), float(lm[2]), int(lm[3]), bool(lm[4]),
                                  tuple(str(spec[0]) for spec in lm[5])) for lm in logical)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise VkmsRemoteError(f"Mutter's GetCurrentState answer was not understood: {e}: {text[:300]!r}") from e
    return MutterState(int(serial), modes, lms)


def apply_arguments(state: MutterState, mode_of: dict[str, str],
                    moves: dict[int, tuple[int, int]] | None = None) -> list[str]:
    """busctl's arguments for ApplyMonitorsConfig: every logical monitor as it is, except each connector's
    mode (``mode_of``, else its current one) and the positions in ``moves`` (logical monitor index -> x, y)."""
    args = [str(state.serial), str(TEMPORARY), str(len(state.logical))]
    for i, lm in enumerate(state.logical):
        x, y = (moves or {}).get(i, (lm.x, lm.y))
        args += [str(x), str(y), repr(lm.scale), str(lm.transform), "true" if lm.primary else "false",
                 str(len(lm.connectors))]
        for c in lm.connectors:
            current = state.current(c)
            mode = mode_of.get(c) or (current.id if current else "")
            args += [c, mode, "0"]
    return [*args, "0"]


def shift_neighbours(rects: list[tuple[int, int, int, int]], index: int, width: int,
                     height: int) -> dict[int, tuple[int, int]]:
    """New positions of the rectangles right of (sharing rows) or below (sharing columns) ``rects[index]``
    when it becomes ``width`` x ``height``: they move by the change, so the outputs beside it stay adjacent
    and nothing overlaps."""
    x0, y0, w0, h0 = rects[index]
    moves = {}
    for i, (x, y, w, h) in enumerate(rects):
        if i == index:
            continue
        beside = y < y0 + h0 and y + h > y0  # shares rows with it: right of it moves right
        under = x < x0 + w0 and x + w > x0  # shares columns with it: below it moves down
        nx = x + width - w0 if beside and x >= x0 + w0 else x
        ny = y + height - h0 if under and y >= y0 + h0 else y
        if (nx, ny) != (x, y):
            moves[i] = (nx, ny)
    return moves


def relayout(state: MutterState, connector: str, width: int, height: int) -> dict[int, tuple[int, int]]:
    """New positions for Mutter's logical monitors when ``connector`` becomes ``width`` x ``height`` pixels."""
    rects = []
    for lm in state.logical:
        cur = state.current(lm.connectors[0]) if lm.connectors else None
        w, h = (cur.width, cur.height) if cur is not None else (0, 0)
        rects.append((lm.x, lm.y, round(w / lm.scale), round(h / lm.scale)))
    index = next(i for i, lm in enumerate(state.logical) if connector in lm.connectors)
    scale = state.logical[index].scale
    return shift_neighbours(rects, index, round(width / scale), round(height / scale))


class MutterResizer:
    """Resizes ``output`` through Mutter's DisplayConfig D-Bus interface on the session bus ``bus``,
    calling ``busctl`` as ``uid``/``gid`` (the session bus admits its own user only)."""

    def __init__(self, bus: str, uid: int, gid: int, output: str, *, run: Run = _run) -> None:
        self.bus = bus
        self.uid, self.gid = uid, gid
        self.output = output
        self._run = run
        self.original: MutterState | None = None

    @classmethod
    def of(cls, holder: DrmClient, output: str) -> MutterResizer | str:
        try:
            (uid, gid), env = process_owner(holder.pid), process_environ(holder.pid)
        except OSError as e:
            return f"{holder.describe()} could not be read ({e.strerror}): run vkmsremote as root"
        bus = env.get("DBUS_SESSION_BUS_ADDRESS") or (
            f"unix:path={env['XDG_RUNTIME_DIR']}/bus" if env.get("XDG_RUNTIME_DIR") else "")
        if not bus:
            return f"the session bus of {holder.describe()} was not found"
        return cls(bus, uid, gid, output)

    def busctl(self, method: str, *args: str) -> str:
        argv = as_user(self.uid, self.gid, ["busctl", f"--address={self.bus}", "--json=short", "call", *MUTTER_DEST,
                                            method, *args])
        r = self._run(argv, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        if r.returncode != 0:
            raise VkmsRemoteError(f"Mutter's {method} failed: {(r.stderr or r.stdout).strip()[:300]}")
        return r.stdout

    def state(self) -> MutterState:
        return parse_mutter_state(self.busctl("GetCurrentState"))

    def apply(self, state: MutterState, mode_of: dict[str, str], moves: dict[int, tuple[int, int]]) -> None:
        self.busctl("ApplyMonitorsConfig", APPLY_SIGNATURE, *apply_arguments(state, mode_of, moves))

    def resize(self, width: int, height: int) -> ResizeStatus:
        try:
            state = self.state()
            current = state.current(self.output)
            if current is None or not any(self.output in lm.connectors for lm in state.logical):
                log.warning("resize to %dx%d prohibited: Mutter has no active monitor %s", width, height,
                            self.output)
                return ResizeStatus.PROHIBITED
            if (current.width, current.height) == (width, height):
                return ResizeStatus.OK
            mode = listed_mode(state.modes[self.output], width, height, current.refresh)
            if mode is None:
                return _unlisted("Mutter", self.output, width, height, state.modes[self.output])
            if self.original is None:
                self.original = state
            self.apply(state, {self.output: mode.id}, relayout(state, self.output, width, height))
            now = self.state().current(self.output)
        except (VkmsRemoteError, OSError, subprocess.SubprocessError) as e:
            log.warning("resize of %s to %dx%d through Mutter's DisplayConfig failed: %s", self.output, width,
                        height, e)
            return ResizeStatus.OUT_OF_RESOURCES
        if now is None or (now.width, now.height) != (width, height):
            log.warning("resize of %s to %dx%d: Mutter reports %s afterwards", self.output, width, height, now)
            return ResizeStatus.OUT_OF_RESOURCES
        log.info("resized %s to %dx%d (%s) through Mutter's DisplayConfig", self.output, width, height, now.id)
        return ResizeStatus.OK

    def light(self, mode: tuple[int, int, float | None] | None, timeout: float) -> str:
        return "GNOME Shell lights new outputs itself"

    def dark(self) -> str:
        return "GNOME Shell turns an unplugged output off itself"

    def undo(self) -> None:
        if self.original is None:
            return
        original, self.original = self.original, None
        try:
            now = self.state()
            modes = {c: m.id for lm in original.logical for c in lm.connectors
                     if (m := original.current(c)) is not None}
            back = MutterState(now.serial, now.modes, original.logical)
            self.apply(back, modes, {})
        except (VkmsRemoteError, OSError, subprocess.SubprocessError) as e:
            log.warning("undoing the resize of %s: %s", self.output, e)


# --- KWin ----------------------------------------------------------------------------------------------------


class KWinResizer:
    """Resizes ``output`` through KWin's output management on its Wayland socket ``socket``
    (vkmsremote.desktop.kde_output): the listed mode of that size nearest the current rate, and the outputs
    beside it moved by the change, in one configuration."""

    def __init__(self, socket: str, output: str) -> None:
        self.socket = socket
        self.output = output
        self.original: dict[str, tuple[int, int, float, int, int]] | None = None  # name -> w, h, Hz, x, y

    @classmethod
    def of(cls, holder: DrmClient, output: str) -> KWinResizer | str:
        from .wayland import wayland_socket_of

        sock = wayland_socket_of(holder.pid)
        if sock is None:
            return f"the Wayland socket of {holder.describe()} was not found"
        return cls(str(sock), output)

    def resize(self, width: int, height: int) -> ResizeStatus:
        from .kde_output import KdeOutputs
        from .wayland import WaylandError

        try:
            with KdeOutputs(self.socket) as kwin:
                outputs = [o for o in kwin.outputs.values() if o.enabled and o.mode() is not None]
                target = next((o for o in outputs if o.name == self.output), None)
                current = target.mode() if target is not None else None
                if target is None or current is None:
                    log.warning("resize to %dx%d prohibited: KWin has no enabled output %s", width, height,
                                self.output)
                    return ResizeStatus.PROHIBITED
                if (current.width, current.height) == (width, height):
                    return ResizeStatus.OK
                mode = listed_mode(target.modes.values(), width, height, current.refresh)
                if mode is None:
                    return _unlisted("KWin", self.output, width, height, target.modes.values())
                if self.original is None:
                    self.original = {o.name: (m.width, m.height, m.refresh, o.x, o.y) for o in outputs
                                     if (m := o.mode()) is not None}
                index = outputs.index(target)
                moves = shift_neighbours([o.rect() for o in outputs], index, round(width / target.scale),
                                         round(height / target.scale))
                kwin.apply({target.id: mode.id}, {outputs[i].id: xy for i, xy in moves.items()})
                now = target.mode()
        except (WaylandError, OSError) as e:
            log.warning("resize of %s to %dx%d through KWin's output management failed: %s", self.output, width,
                        height, e)
            return ResizeStatus.OUT_OF_RESOURCES
        if now is None or (now.width, now.height) != (width, height):
            log.warning("resize of %s to %dx%d: KWin reports %s afterwards", self.output, width, height, now)
            return ResizeStatus.OUT_OF_RESOURCES
        log.info("resized %s to %dx%d@%.3f Hz through KWin's output management", self.output, width, height,
                 now.refresh)
        return ResizeStatus.OK

    def light(self, mode: tuple[int, int, float | None] | None, timeout: float) -> str:
        return "KWin lights new outputs itself"

    def dark(self) -> str:
        return "KWin turns an unplugged output off itself"

    def undo(self) -> None:
        from .kde_output import KdeOutputs
        from .wayland import WaylandError

        if self.original is None:
            return
        original, self.original = self.original, None
        try:
            with KdeOutputs(self.socket) as kwin:
                modes, positions = {}, {}
                for name, (w, h, rate, x, y) in original.items():
                    out = kwin.named(name)
                    if out is None:
                        continue
                    if (back := listed_mode(out.modes.values(), w, h, rate)) is not None:
                        modes[out.id] = back.id
                    positions[out.id] = (x, y)
                kwin.apply(modes, positions)
        except (WaylandError, OSError) as e:
            log.warning("undoing the resize of %s: %s", self.output, e)


# --- whoever is master ------------------------------------------------------------------------------------


class DesktopResizer:
    """The resizer of a CRTC reader (vkmsremote.capture.crtc.Resizer) when a compositor drives the card:
    finds the card's DRM master at each request and asks it through its adapter (kept per process, so
    :meth:`undo` reaches every compositor that was changed)."""

    def __init__(self, card: str, output: str, timings: Timings, *,
                 master: Callable[[str], DrmClient | None] = drm_master) -> None:
        self.card = card
        self.output = output
        self.timings = timings
        self._master = master
        self.adapters: dict[int, Adapter] = {}

    def _adapter(self, holder: DrmClient) -> Adapter | str:
        """The adapter for ``holder``, or why there is none."""
        if holder.pid in self.adapters:
            return self.adapters[holder.pid]
        kind = Compositor.of(holder)
        adapter: Adapter
        if kind is Compositor.XORG:
            display, auth = x_display_of(holder.pid)
            if display is None:
                return f"the X display of {holder.describe()} was not found"
            adapter = XorgResizer(display, self.output, self.timings, xauthority=auth)
        elif kind is Compositor.SWAY:
            sock = socket_path_of(holder.pid)
            if sock is None or not sock.exists():
                return f"sway's IPC socket was not found ({sock or 'no XDG_RUNTIME_DIR'})"
            adapter = SwayResizer(str(sock), self.output)
        elif kind in (Compositor.MUTTER, Compositor.KWIN):
            found = (MutterResizer if kind is Compositor.MUTTER else KWinResizer).of(holder, self.output)
            if isinstance(found, str):
                return found
            adapter = found
        else:
            return f"{holder.describe()} has no runtime interface to set a mode that vkmsremote knows"
        self.adapters[holder.pid] = adapter
        return adapter

    def resize(self, width: int, height: int) -> ResizeStatus:
        holder = self._master(self.card)
        if holder is None:
            log.warning("resize to %dx%d prohibited: nothing drives %s (no DRM master; vkmsremote sets the mode "
                     "itself only with --drive)", width, height, self.card)
            return ResizeStatus.PROHIBITED
        adapter = self._adapter(holder)
        if isinstance(adapter, str):
            log.warning("resize to %dx%d prohibited: %s", width, height, adapter)
            return ResizeStatus.PROHIBITED
        return adapter.resize(width, height)

    def light(self, mode: tuple[int, int, float | None] | None = None, timeout: float = 30.0) -> str:
        """``output add``: have the compositor light the output just connected (at ``mode`` if given).
        Returns what was done; VkmsRemoteError if the compositor refused."""
        holder = self._master(self.card)
        if holder is None:
            return "no compositor drives the card: whoever becomes DRM master lights it"
        adapter = self._adapter(holder)
        if isinstance(adapter, str):
            return f"left to the compositor ({adapter})"
        return adapter.light(mode, timeout)

    def dark(self) -> str:
        """``output remove``: have the compositor turn the output off before it is unplugged."""
        holder = self._master(self.card)
        if holder is None:
            return "no compositor drives the card"
        adapter = self._adapter(holder)
        return f"left to the compositor ({adapter})" if isinstance(adapter, str) else adapter.dark()

    def undo(self) -> None:
        for adapter in self.adapters.values():
            adapter.undo()
        self.adapters.clear()

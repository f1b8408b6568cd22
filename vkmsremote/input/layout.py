"""The desktop's real keyboard layout, compiled with libxkbcommon into a :class:`~.keymap.Keymap`.

A VNC client sends keysyms; which key (and which Shift / AltGr / lock state) makes a keysym depends on the
keymap the compositor applies to vkmsremote's uinput keyboard. This module reads that keymap and compiles
it with libxkbcommon (Debian ``libxkbcommon0`` through ctypes, the same library every compositor uses):

* Xorg: the keymap the X server holds, as ``xkbcomp -xkb $DISPLAY -`` prints it (Debian ``x11-xkb-utils``);
  xkbcommon parses xkbcomp's text format (``XKB_KEYMAP_FORMAT_TEXT_V1``). Follows ``setxkbmap``.
* sway: its IPC's ``get_inputs`` names the active layout of each keyboard (``xkb_layout_names``,
  ``xkb_active_layout_index``) by its description ("German"); the layout and variant come back from
  xkeyboard-config's own list (``/usr/share/X11/xkb/rules/evdev.lst``) and are compiled with rules evdev.
  With no keyboard plugged in yet, the ``input`` settings of sway's config (``get_config``) say it. The
  sway is ``$SWAYSOCK``'s, else any running sway process (its environment names its socket).
  (XKB options are not read; they are not applied.)
* GNOME Shell: its input sources, ``gsettings get org.gnome.desktop.input-sources mru-sources`` (the first is
  the one in use; ``sources`` when none was used yet) read as the desktop's user; ``('xkb', 'de+nodeadkeys')``
  is layout de, variant nodeadkeys. No sources at all: GNOME Shell derives one from the locale; vkmsremote
  knows only that a C/English locale means us.
* KWin: Plasma's keyboard settings, ``kxkbrc`` (``[Layout]`` ``Use=true``, ``LayoutList``, ``VariantList``; the
  first layout) in the desktop user's config directory; without them KWin applies libxkbcommon's default (us,
  or ``$XKB_DEFAULT_LAYOUT``).
  The GNOME Shell or KWin read is the one driving a card (its DRM master), else the only one running.
* Anything else, or a read that fails: the generated US tables, with a log line saying so.

:class:`LayoutSource` re-reads at most every ``interval`` seconds and compiles only when the text changed,
so a layout switch on the desktop is followed within a few seconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from vkmsremote.desktop.clients import as_user, drm_master, process_environ, process_owner, processes_named
from vkmsremote.desktop.sway_ipc import IpcError, MessageType, SwayIpc, running_sway_sockets
from vkmsremote.errors import UsageError
from vkmsremote.input.keymap import STATES, UNICODE_KEYSYM_BASE, US, Keymap

log = logging.getLogger(__name__)

XKB_KEYCODE_OFFSET: Final = 8  # xkb keycode = evdev code + 8 (keycodes/evdev)
XKB_KEYMAP_FORMAT_TEXT_V1: Final = 1
XKB_KEY_DOWN: Final = 1
XKB_STATE_MODS_DEPRESSED: Final = 1
XK_ISO_LEVEL3_SHIFT: Final = 0xFE03
EVDEV_LST: Final = Path("/usr/share/X11/xkb/rules/evdev.lst")
MAX_KEYMAP_TEXT: Final = 4 << 20  # an xkbcomp dump is ~100 kB; refuse anything absurd
READ_TIMEOUT: Final = 20.0  # xkbcomp under a loaded TCG VM can take seconds


class RuleNames(ctypes.Structure):
    _fields_ = [(n, ctypes.c_char_p) for n in ("rules", "model", "layout", "variant", "options")]


_lib: ctypes.CDLL | None = None


def xkbcommon() -> ctypes.CDLL:
    """libxkbcommon.so.0 with the prototypes this project uses (loaded once)."""
    global _lib
    if _lib is not None:
        return _lib
    path = ctypes.util.find_library("xkbcommon") or "libxkbcommon.so.0"
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        raise UsageError(f"cannot load libxkbcommon: {exc}", hint="apt-get install libxkbcommon0 xkb-data") from exc
    vp, u32 = ctypes.c_void_p, ctypes.c_uint32
    lib.xkb_context_new.restype = vp
    lib.xkb_context_new.argtypes = [ctypes.c_int]
    lib.xkb_keymap_new_from_names.restype = vp
    lib.xkb_keymap_new_from_names.argtypes = [vp, ctypes.POINTER(RuleNames), ctypes.c_int]
    lib.xkb_keymap_new_from_string.restype = vp
    lib.xkb_keymap_new_from_string.argtypes = [vp, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    lib.xkb_state_new.restype = vp
    lib.xkb_state_new.argtypes = [vp]
    lib.xkb_keymap_mod_get_index.restype = u32
    lib.xkb_keymap_mod_get_index.argtypes = [vp, ctypes.c_char_p]
    lib.xkb_state_update_mask.argtypes = [vp, u32, u32, u32, u32, u32, u32]
    lib.xkb_state_update_key.argtypes = [vp, u32, ctypes.c_int]
    lib.xkb_state_serialize_mods.restype = u32
    lib.xkb_state_serialize_mods.argtypes = [vp, ctypes.c_int]
    lib.xkb_state_key_get_one_sym.restype = u32
    lib.xkb_state_key_get_one_sym.argtypes = [vp, u32]
    lib.xkb_keymap_min_keycode.restype = u32
    lib.xkb_keymap_min_keycode.argtypes = [vp]
    lib.xkb_keymap_max_keycode.restype = u32
    lib.xkb_keymap_max_keycode.argtypes = [vp]
    lib.xkb_keymap_num_levels_for_key.restype = u32
    lib.xkb_keymap_num_levels_for_key.argtypes = [vp, u32, u32]
    lib.xkb_keymap_key_get_syms_by_level.restype = ctypes.c_int
    lib.xkb_keymap_key_get_syms_by_level.argtypes = [vp, u32, u32, u32, ctypes.POINTER(ctypes.POINTER(u32))]
    lib.xkb_keysym_to_utf32.restype = u32
    lib.xkb_keysym_to_utf32.argtypes = [u32]
    lib.xkb_keysym_get_name.restype = ctypes.c_int
    lib.xkb_keysym_get_name.argtypes = [u32, ctypes.c_char_p, ctypes.c_size_t]
    for name in ("xkb_state_unref", "xkb_keymap_unref", "xkb_context_unref"):
        getattr(lib, name).argtypes = [vp]
    _lib = lib
    return lib


@dataclass(frozen=True, slots=True)
class XkbTables:
    """What :class:`Keymap` needs: keysyms per key in each :class:`State`, the other-level keysyms, the
    key that gives ISO_Level3_Shift (AltGr), and the keysym names (for the generated US tables)."""

    key_syms: dict[int, tuple[int, ...]]
    other_level_syms: dict[int, int]
    level3_code: int | None
    names: dict[int, str]
    unicode_aliases: dict[int, int]


def _tables(lib: ctypes.CDLL, keymap: int) -> XkbTables:
    state = lib.xkb_state_new(keymap)
    try:
        shift, lock, num = (1 << lib.xkb_keymap_mod_get_index(keymap, m) for m in (b"Shift", b"Lock", b"Mod2"))
        lo, hi = lib.xkb_keymap_min_keycode(keymap), lib.xkb_keymap_max_keycode(keymap)
        # AltGr: the key whose first level is ISO_Level3_Shift; its modifier is what pressing it sets.
        level3_code, level3 = None, 0
        for xkb_code in range(lo, hi + 1):
            lib.xkb_state_update_mask(state, 0, 0, 0, 0, 0, 0)
            if lib.xkb_state_key_get_one_sym(state, xkb_code) == XK_ISO_LEVEL3_SHIFT:
                lib.xkb_state_update_key(state, xkb_code, XKB_KEY_DOWN)
                level3 = lib.xkb_state_serialize_mods(state, XKB_STATE_MODS_DEPRESSED)
                lib.xkb_state_unref(state)
                state = lib.xkb_state_new(keymap)
                if level3:
                    level3_code = xkb_code - XKB_KEYCODE_OFFSET
                    if level3_code == 100:  # KEY_RIGHTALT, the usual AltGr: stop looking
                        break
        key_syms: dict[int, tuple[int, ...]] = {}
        level_syms: dict[int, int] = {}
        for xkb_code in range(lo, hi + 1):
            code = xkb_code - XKB_KEYCODE_OFFSET
            syms = []
            for index in range(STATES):
                depressed = (shift if index & 1 else 0) | (level3 if index & 8 else 0)
                locked = (lock if index & 2 else 0) | (num if index & 4 else 0)
                if index & 8 and not level3:
                    syms.append(0)
                    continue
                lib.xkb_state_update_mask(state, depressed, 0, locked, 0, 0, 0)
                syms.append(int(lib.xkb_state_key_get_one_sym(state, xkb_code)))
            if any(syms):
                key_syms[code] = tuple(syms)
            for level in range(lib.xkb_keymap_num_levels_for_key(keymap, xkb_code, 0)):
                out = ctypes.POINTER(ctypes.c_uint32)()
                count = lib.xkb_keymap_key_get_syms_by_level(keymap, xkb_code, 0, level, ctypes.byref(out))
                for i in range(count):
                    level_syms.setdefault(int(out[i]), code)
    finally:
        lib.xkb_state_unref(state)
    in_states = {s for syms in key_syms.values() for s in syms}
    other = {sym: code for sym, code in sorted(level_syms.items()) if sym not in in_states and sym}

    def name(sym: int) -> str:
        buf = ctypes.create_string_buffer(64)
        lib.xkb_keysym_get_name(sym, buf, len(buf))
        return buf.value.decode()

    names = {s: name(s) for s in sorted(in_states | set(other)) if s}
    aliases: dict[int, int] = {}
    for sym in sorted(in_states | set(other)):
        code_point = lib.xkb_keysym_to_utf32(sym) if sym < UNICODE_KEYSYM_BASE else 0
        if code_point > 0xFF:  # Latin-1 is normalized by keymap.normalize_keysym already
            aliases.setdefault(UNICODE_KEYSYM_BASE + code_point, sym)
    return XkbTables(key_syms, other, level3_code, names, aliases)


def _compile(make: Callable[[ctypes.CDLL, int], int], what: str) -> XkbTables:
    lib = xkbcommon()
    ctx = lib.xkb_context_new(0)
    if not ctx:
        raise UsageError("libxkbcommon could not make a context")
    try:
        keymap = make(lib, ctx)
        if not keymap:
            raise UsageError(f"libxkbcommon could not compile {what}", hint="is xkb-data installed?")
        try:
            return _tables(lib, keymap)
        finally:
            lib.xkb_keymap_unref(keymap)
    finally:
        lib.xkb_context_unref(ctx)


def tables_from_names(layout: str, variant: str = "", options: str = "", *, rules: str = "evdev",
                      model: str = "pc105") -> XkbTables:
    """Compile RMLVO names (as setxkbmap, localectl and compositors' configs name a layout)."""
    names = RuleNames(rules.encode(), model.encode(), layout.encode(), variant.encode(), options.encode())
    return _compile(lambda lib, ctx: lib.xkb_keymap_new_from_names(ctx, ctypes.byref(names), 0),
                    f"{rules}/{model}/{layout}({variant}) {options}")


def tables_from_text(text: str) -> XkbTables:
    """Compile a keymap in xkb's text format (xkbcomp's output, or a Wayland compositor's keymap fd)."""
    return _compile(lambda lib, ctx: lib.xkb_keymap_new_from_string(ctx, text.encode(), XKB_KEYMAP_FORMAT_TEXT_V1, 0),
                    "the desktop's keymap text")


def keymap_of(tables: XkbTables, description: str) -> Keymap:
    return Keymap(tables.key_syms, tables.other_level_syms, level3_code=tables.level3_code,
                  description=description, unicode_aliases=tables.unicode_aliases)


def _compile_text(text: str, description: str) -> Keymap:
    return keymap_of(tables_from_text(text), description)


def from_names(layout: str, variant: str = "", options: str = "") -> Keymap:
    shown = layout + (f"({variant})" if variant else "") + (f" {options}" if options else "")
    return keymap_of(tables_from_names(layout, variant, options), shown)


# --- reading the desktop's layout ----------------------------------------------------------------------------


def _run(argv: list[str], env: Mapping[str, str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, timeout=READ_TIMEOUT, env={**os.environ, **env}, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"{argv[0]}: {exc}") from exc
    if out.returncode != 0:
        raise UsageError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.decode(errors='replace').strip()}")
    if len(out.stdout) > MAX_KEYMAP_TEXT:
        raise UsageError(f"{argv[0]} printed {len(out.stdout)} bytes, more than the {MAX_KEYMAP_TEXT}-byte cap")
    return out.stdout.decode(errors="replace")


def xorg_keymap_text(display: str) -> str:
    """The X server's current keymap, as xkbcomp dumps it."""
    return _run(["xkbcomp", "-xkb", display, "-"], {"DISPLAY": display})


def layout_descriptions(lst: Path = EVDEV_LST) -> dict[str, tuple[str, str]]:
    """xkeyboard-config's description -> (layout, variant), from its ``! layout`` and ``! variant`` lists."""
    found: dict[str, tuple[str, str]] = {}
    section = ""
    for line in lst.read_text(errors="replace").splitlines():
        if line.startswith("!"):
            section = line[1:].strip()
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            continue
        if section == "layout":
            found.setdefault(parts[1].strip(), (parts[0], ""))
        elif section == "variant" and ":" in parts[1]:
            layout, description = parts[1].split(":", 1)
            found.setdefault(description.strip(), (layout.strip(), parts[0]))
    return found


def sway_layout(socket: str, device_name: str = "vkmsremote keyboard") -> tuple[str, str] | None:
    """(layout, variant) sway applies to ``device_name`` (or to its first keyboard), or None.

    Through vkmsremote's own IPC client rather than swaymsg, which gives up after 3 s (a sway busy compiling a
    new keymap under a loaded TCG guest took longer)."""
    try:
        with SwayIpc(socket, timeout=READ_TIMEOUT) as ipc:
            inputs = ipc.request(MessageType.GET_INPUTS)
            keyboards = [i for i in inputs if i.get("type") == "keyboard" and i.get("xkb_layout_names")]
            if not keyboards:  # none plugged in yet: what the config says a keyboard gets, else sway's default
                configured = sway_config_layout(ipc.request(MessageType.GET_CONFIG).get("config", ""), device_name)
                return configured or ("us", "")  # sway-input(5): xkb_layout defaults to libxkbcommon's, us
    except IpcError as exc:
        raise UsageError(str(exc)) from exc
    ours = [k for k in keyboards if k.get("name") == device_name]
    keyboard = (ours or keyboards)[0]
    names = keyboard["xkb_layout_names"]
    index = keyboard.get("xkb_active_layout_index") or 0
    description = names[index] if 0 <= index < len(names) else names[0]
    return layout_descriptions().get(description)


_SWAY_INPUT = re.compile(r"^\s*input\s+(\S+)\s+(?:\{(?P<block>[^}]*)\}|(?P<line>.*))$", re.M)


def sway_config_layout(config: str, device_name: str = "vkmsremote keyboard") -> tuple[str, str] | None:
    """(layout, variant) that sway's config gives a keyboard (sway-input(5): ``input <identifier> xkb_layout
    ...``, one line or a block): the device's own identifier first, then ``type:keyboard``, then ``*``.
    Only the first of comma-separated layouts (the active one at start)."""
    ours = "0:0:" + device_name.replace(" ", "_")
    settings: dict[str, dict[str, str]] = {}
    for match in _SWAY_INPUT.finditer(config):
        identifier = match.group(1).strip('"')
        body = match.group("block") if match.group("block") is not None else match.group("line")
        for line in body.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0] in ("xkb_layout", "xkb_variant"):
                settings.setdefault(identifier, {})[parts[0]] = parts[1].strip().strip('"').split(",")[0]
    for identifier in (ours, "type:keyboard", "*"):
        found = settings.get(identifier, {})
        if "xkb_layout" in found:
            return found["xkb_layout"], found.get("xkb_variant", "")
    return None


def _sway_sockets() -> list[str]:
    """$SWAYSOCK, then the sockets of running sway processes (their environment names it), then sway's
    default place under /run/user; each once."""
    env = os.environ.get("SWAYSOCK")
    found = [env] if env else []
    found += [str(p) for p in running_sway_sockets()] + sorted(glob.glob("/run/user/*/sway-ipc.*.sock"))
    return list(dict.fromkeys(found))


def _x_displays() -> list[str]:
    env = os.environ.get("DISPLAY")
    found = [env] if env else []
    return found + [":" + p.rsplit("X", 1)[1] for p in sorted(glob.glob("/tmp/.X11-unix/X*"))]


def wayland_of_sway(socket: str) -> tuple[str, str] | None:
    """(XDG_RUNTIME_DIR, WAYLAND_DISPLAY) of the sway whose IPC socket is ``socket`` (sway puts both in its
    runtime directory)."""
    runtime = os.path.dirname(socket)
    displays = sorted(os.path.basename(p) for p in glob.glob(os.path.join(runtime, "wayland-*"))
                      if not p.endswith(".lock"))
    return (runtime, displays[0]) if displays else None


_GNOME_SOURCE = re.compile(r"\(\s*'xkb'\s*,\s*'([^']+)'\s*\)")
DESKTOP_SHELLS = ("gnome-shell", "kwin_wayland")


def gnome_sources(text: str) -> list[tuple[str, str]]:
    """(layout, variant) of each XKB source in a ``gsettings get ... sources`` answer (GVariant text)."""
    out = []
    for source in _GNOME_SOURCE.findall(text):
        layout, _, variant = source.partition("+")
        out.append((layout, variant))
    return out


def gnome_layout(pid: int, *, proc: Path = Path("/proc")) -> tuple[str, str] | None:
    """(layout, variant) GNOME Shell ``pid`` types with (see the module's doc), or None if it cannot be told."""
    uid, gid = process_owner(pid, proc=proc)
    env = process_environ(pid, proc=proc)
    session: dict[str, str] = {k: env[k] for k in ("HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DBUS_SESSION_BUS_ADDRESS")
               if k in env}
    for key in ("mru-sources", "sources"):
        text = _run(as_user(uid, gid, ["gsettings", "get", "org.gnome.desktop.input-sources", key]), session)
        found = gnome_sources(text)
        if found:
            return found[0]
    lang = env.get("LC_ALL") or env.get("LANG") or "C"
    return ("us", "") if lang.split(".")[0] in ("C", "POSIX", "en_US") else None


def kde_layout(pid: int, *, proc: Path = Path("/proc")) -> tuple[str, str]:
    """(layout, variant) KWin ``pid`` applies from Plasma's kxkbrc (see the module's doc)."""
    import configparser

    env = process_environ(pid, proc=proc)
    config = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME", "/nonexistent")) / ".config") / "kxkbrc"
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(config.read_text(errors="replace")[:MAX_KEYMAP_TEXT])
    except (OSError, configparser.Error):
        parser.clear()
    if parser.has_section("Layout") and parser.get("Layout", "Use", fallback="false").lower() == "true":
        layouts = parser.get("Layout", "LayoutList", fallback="").split(",")
        variants = parser.get("Layout", "VariantList", fallback="").split(",")
        if layouts[0].strip():
            return layouts[0].strip(), variants[0].strip()
    return env.get("XKB_DEFAULT_LAYOUT", "us").split(",")[0] or "us", env.get("XKB_DEFAULT_VARIANT", "").split(",")[0]


def _desktop_shells() -> list[tuple[int, str]]:
    """GNOME Shell and KWin processes: those driving a card (DRM master) first."""
    running = processes_named(DESKTOP_SHELLS)
    if len(running) < 2:
        return running
    masters = set()
    for card in sorted(glob.glob("/dev/dri/card*")):
        holder = drm_master(card)
        if holder is not None:
            masters.add(holder.pid)
    return sorted(running, key=lambda p: p[0] not in masters)


@dataclass(frozen=True, slots=True)
class Reading:
    """What was read from the desktop: a key to compare (the keymap text or names) and how to compile it."""

    key: str
    description: str
    compile: Callable[[], Keymap]
    x_display: str | None = None  # the X display it was read from (input.spare remaps keys there)
    wayland: tuple[str, str] | None = None  # (XDG_RUNTIME_DIR, WAYLAND_DISPLAY) of the sway it was read from


def read_desktop_layout() -> Reading | None:
    """The layout of the desktop this process can reach: sway first (its socket names one compositor), then
    an X display. None if there is none to ask; UsageError saying why if every one failed."""
    failures: list[str] = []
    for socket in _sway_sockets():
        try:
            found = sway_layout(socket)
        except (UsageError, ValueError, KeyError, TypeError, OSError) as exc:
            failures.append(f"sway at {socket}: {exc}")
            continue
        if found is not None:
            layout, variant = found
            return Reading(f"sway {layout} {variant}", f"sway: {layout}{f'({variant})' if variant else ''}",
                           functools.partial(from_names, layout, variant), wayland=wayland_of_sway(socket))
        failures.append(f"sway at {socket}: no keyboard layout in its inputs or config")
    for pid, shell in _desktop_shells():
        try:
            named = gnome_layout(pid) if shell == "gnome-shell" else kde_layout(pid)
        except (UsageError, OSError, ValueError) as exc:
            failures.append(f"{shell} (pid {pid}): {exc}")
            continue
        if named is None:
            failures.append(f"{shell} (pid {pid}): no input source set, and its locale's layout is not known")
            continue
        layout, variant = named
        who = "GNOME" if shell == "gnome-shell" else "KWin"
        return Reading(f"{who} {layout} {variant}", f"{who}: {layout}{f'({variant})' if variant else ''}",
                       functools.partial(from_names, layout, variant))
    for display in _x_displays():
        try:
            text = xorg_keymap_text(display)
        except UsageError as exc:
            failures.append(f"X display {display}: {exc}")
            continue
        return Reading(text, f"X {display}", functools.partial(_compile_text, text, f"X {display}"), display)
    if failures:
        raise UsageError("; ".join(failures))
    return None


def describe_desktop_layout() -> str:
    """What ``serve`` would type with now, for ``status``: the desktop's layout, or the US fallback and why."""
    try:
        reading = read_desktop_layout()
    except UsageError as exc:
        return f"US (built-in tables): {exc}"
    if reading is None:
        return "US (built-in tables): no X display, sway, GNOME Shell or KWin found"
    return reading.description


class LayoutSource:
    """The keymap to type with, re-read from the desktop every ``interval`` seconds while keys arrive.

    Falls back to the US tables (logged once per change) when no desktop layout can be read. With
    ``background`` the reads run in a thread of their own (a read is a subprocess, ~20 ms natively; a
    compile, done only when the dump changed, ~0.1-0.3 s: neither belongs on the event loop). While keys
    arrive it re-reads every ``interval`` seconds, so a key never waits for a layout switch to be seen;
    after ``idle`` seconds without keys it stops reading, and the next key waits for one fresh read.
    Without ``background`` (tests) a call re-reads when one is due.
    """

    def __init__(self, read: Callable[[], Reading | None] = read_desktop_layout, interval: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, *, background: bool = False,
                 idle: float = 60.0) -> None:
        self._read = read
        self._interval = interval
        self._idle = idle
        self._clock = clock
        self._checked = -interval
        self._used = clock()
        self._key: str | None = None
        self._keymap: Keymap = US
        self.description = "US (built-in tables)"
        self.x_display: str | None = None
        """The X display the layout was last read from; None when it was not an X server's."""
        self.wayland: tuple[str, str] | None = None
        """(XDG_RUNTIME_DIR, WAYLAND_DISPLAY) of the sway the layout was last read from."""
        self._background = background
        self._fresh = threading.Event()  # set after each read; cleared when a key asks for a fresh one
        self._wake = threading.Event()
        self._stop = threading.Event()
        if background:
            threading.Thread(target=self._poll, name="vkmsremote-layout", daemon=True).start()

    def __call__(self) -> Keymap:
        now = self._clock()
        if not self._background:
            if now - self._checked >= self._interval:
                self._refresh()
            return self._keymap
        if now - self._used > self._idle:  # the poller sleeps: wake it and wait for one fresh read
            self._fresh.clear()
            self._wake.set()
        self._used = now
        if not self._fresh.wait(2 * READ_TIMEOUT):
            log.warning("the desktop's layout is still being read: typing with %s meanwhile", self.description)
        return self._keymap

    def close(self) -> None:
        self._stop.set()
        self._wake.set()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._refresh()
            self._fresh.set()
            idle = self._clock() - self._used > self._idle
            self._wake.wait(None if idle else self._interval)
            self._wake.clear()

    def _refresh(self) -> None:
        self._checked = self._clock()
        self._update()

    def _update(self) -> None:
        why = "no X display, sway, GNOME Shell or KWin found"
        try:
            reading = self._read()
        except (UsageError, OSError) as exc:
            why, reading = str(exc), None
        key = reading.key if reading is not None else ""
        self.x_display = reading.x_display if reading is not None else None
        self.wayland = reading.wayland if reading is not None else None
        if key == self._key:
            return
        self._key = key
        if reading is None:
            self._keymap, self.description = US, "US (built-in tables)"
            log.warning("no keyboard layout readable from the desktop (%s): typing with the built-in US tables", why)
            return
        try:
            keymap = reading.compile()
        except UsageError as exc:
            self._keymap, self.description = US, "US (built-in tables)"
            log.warning("keyboard layout %s could not be compiled (%s): typing with the built-in US tables",
                        reading.description, exc)
            return
        self._keymap, self.description = keymap, reading.description  # one assignment: readers see either
        log.info("keyboard layout %s compiled with libxkbcommon (%d keys)", reading.description,
                 len(keymap.key_syms))

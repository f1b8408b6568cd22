"""Keysyms the desktop's layout cannot produce (``€`` on ``us``), typed on a spare key remapped for them.

On Xorg (as x11vnc's ``-add_keysyms`` does): the uinput keyboard declares a few key codes that no common
layout gives a symbol (:data:`SPARE_CODES`); for such a keysym one of them that has no symbol in the X
server's keymap is set to it with ``xmodmap -e "keycode N = sym sym"`` (the core ChangeKeyboardMapping
request, which Xorg applies to every keyboard of the core pointer's master, XKB included), then pressed.
A spare key keeps its keysym until it is needed for another one (least recently used first, never one that
is down) or the devices close, when every one is reset to no symbol. Until then a repeat of the same keysym
costs nothing. (Resetting right after the release could overtake the key events: the release reaches X
through the kernel and X's input thread, the reset through a client connection.)

On sway (wlroots), where the keymap of a keyboard belongs to the compositor's config, such a keysym is typed
through the virtual-keyboard protocol (``zwp_virtual_keyboard_v1``) by ``wtype -k <keysym name>`` (Debian
``wtype``): a short-lived virtual keyboard whose own keymap has the symbol, pressed and released at once (so
it does not auto-repeat while the client holds the key). Anywhere else (Weston, GNOME, KDE), or without
wtype, such keysyms are dropped with a log line.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from vkmsremote.input.keymap import Keymap, KeyPress
from vkmsremote.input.layout import xkbcommon

log = logging.getLogger(__name__)

SPARE_CODES: Final = (141, 146, 160, 170)
"""evdev KEY_SETUP, KEY_SENDFILE, KEY_CLOSECD, KEY_ISO: no symbol in xkeyboard-config's us, gb, de, fr, es,
it, ch, se, pl, ru, br or jp layouts (evdev rules), and no meaning to systemd-logind."""
XKB_KEYCODE_OFFSET: Final = 8  # X keycode = evdev code + 8
TIMEOUT: Final = 20.0  # xmodmap under a loaded TCG guest


class XSpareKeys:
    """Spare keys remapped on the X display ``display()`` names; with None there, keysyms typed through the
    Wayland session ``wayland()`` names ((XDG_RUNTIME_DIR, WAYLAND_DISPLAY) of a wlroots compositor) if any,
    else dropped."""

    def __init__(self, display: Callable[[], str | None], codes: tuple[int, ...] = SPARE_CODES,
                 wayland: Callable[[], tuple[str, str] | None] = lambda: None) -> None:
        self._display = display
        self._wayland = wayland
        self.codes = codes
        self._assigned: OrderedDict[int, int] = OrderedDict()  # keysym -> spare code, least recently used first
        self._on: str | None = None  # the display the assignments were made on
        self._dropped_logged: set[int] = set()

    @property
    def assigned_codes(self) -> frozenset[int]:
        return frozenset(self._assigned.values())

    def plan(self, keysym: int, keymap: Keymap, is_down: Callable[[int], bool]) -> KeyPress | None:
        """A press of a spare key that gives ``keysym`` on the X display (set now if needed), or None."""
        keysym = keymap.normalize(keysym)  # one spare key for U+20AC and EuroSign
        display = self._display()
        if display is None:
            session = self._wayland()
            if session is not None and shutil.which("wtype"):
                self._type_virtual(keysym, keymap, session)
            elif keysym not in self._dropped_logged:
                self._dropped_logged.add(keysym)
                log.warning("keysym 0x%x is not on the %s layout and the desktop is neither Xorg nor a wlroots "
                            "compositor with wtype installed: dropped", keysym, keymap.description)
            return None
        if display != self._on:
            self._assigned.clear()
            self._on = display
        code = self._assigned.get(keysym)
        if code is not None:
            self._assigned.move_to_end(keysym)
            return KeyPress(code)
        taken_by_layout = set(keymap.key_syms) | set(keymap.other_level_syms.values())
        ours = self.assigned_codes
        free = [c for c in self.codes if c not in ours and c not in taken_by_layout]
        if not free:  # reuse the least recently used one that is not held
            old = next((s for s, c in self._assigned.items() if not is_down(c)), None)
            if old is None:
                log.warning("keysym 0x%x dropped: every spare key is down", keysym)
                return None
            free = [self._assigned.pop(old)]
        code = free[0]
        try:
            _xmodmap(display, f"keycode {code + XKB_KEYCODE_OFFSET} = 0x{keysym:x} 0x{keysym:x}")
        except OSError as exc:
            log.warning("keysym 0x%x dropped: could not remap a spare key on X %s: %s", keysym, display, exc)
            return None
        log.info("keysym 0x%x is not on the %s layout: typed on spare key %d (X keycode %d)", keysym,
                 keymap.description, code, code + XKB_KEYCODE_OFFSET)
        self._assigned[keysym] = code
        return KeyPress(code)

    def _type_virtual(self, keysym: int, keymap: Keymap, session: tuple[str, str]) -> None:
        runtime_dir, wayland_display = session
        buf = ctypes.create_string_buffer(64)
        if xkbcommon().xkb_keysym_get_name(keysym, buf, len(buf)) <= 0:
            log.warning("keysym 0x%x has no name in libxkbcommon: dropped", keysym)
            return
        name = buf.value.decode()
        env = {**os.environ, "XDG_RUNTIME_DIR": runtime_dir, "WAYLAND_DISPLAY": wayland_display}
        try:
            out = subprocess.run(["wtype", "-k", name], capture_output=True, timeout=TIMEOUT, check=False, env=env)
        except subprocess.TimeoutExpired:
            log.warning("keysym %s dropped: wtype did not finish within %s s", name, TIMEOUT)
            return
        if out.returncode != 0:
            log.warning("keysym %s dropped: wtype failed (%d): %s", name, out.returncode,
                        out.stderr.decode(errors="replace").strip())
        elif keysym not in self._dropped_logged:
            self._dropped_logged.add(keysym)
            log.info("keysym %s is not on the %s layout: typed through a virtual keyboard (wtype)", name,
                     keymap.description)

    def close(self) -> None:
        """Give the spare keys back: no symbol on any of them."""
        if self._on is not None and self._assigned:
            expressions = [f"keycode {c + XKB_KEYCODE_OFFSET} =" for c in self._assigned.values()]
            try:
                _xmodmap(self._on, *expressions)
            except OSError as exc:
                log.warning("could not reset the spare keys on X %s: %s", self._on, exc)
        self._assigned.clear()


def _xmodmap(display: str, *expressions: str) -> None:
    """xmodmap (Debian ``x11-xserver-utils``): a process of its own, so a lost X connection cannot take the
    server down with it (Xlib exits the process on I/O errors)."""
    argv = ["xmodmap", "-display", display]
    for expression in expressions:
        argv += ["-e", expression]
    try:
        out = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, check=False,
                             env={**os.environ, "DISPLAY": display})
    except subprocess.TimeoutExpired:
        raise OSError(f"xmodmap did not answer within {TIMEOUT} s") from None
    if out.returncode != 0 or out.stderr.strip():
        raise OSError(f"xmodmap {' '.join(expressions)}: exit {out.returncode}: "
                      f"{out.stderr.decode(errors='replace').strip()}")

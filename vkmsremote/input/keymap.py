"""X11 keysyms and XT scancodes -> Linux evdev key codes, for a target that uses the US layout.

A VNC KeyEvent (RFC 6143 7.5.4) names a keysym, the symbol the client wants typed, not a key. uinput
can only press keys, and the compositor's keymap (assumed: US, as generated in ``tables``) turns keys plus
modifier state into symbols. So for each keysym we pick a key, and we decide whether Shift has to be
pressed or released around it, or Num Lock toggled, for the target to produce exactly that keysym:

* 'A' without Shift held -> Shift is pressed around the key; 'a' while Shift is held -> Shift is
  released around it (clients send the final symbol, whatever modifiers they hold).
* Exception: a key whose Shift level is a function keysym (Tab -> ISO_Left_Tab) keeps the client's Shift:
  clients send "Tab with Shift held" for Shift+Tab and mean it.
* Caps Lock on the target is taken into account ('a' with Caps Lock on needs Shift).
* A keypad keysym that needs the other Num Lock state (KP_1 while the target's Num Lock is off) toggles
  Num Lock on the target, so the target follows the client's Num Lock (no fake Shift on the keypad, which
  applications would read as Shift+End).

``plan`` is pure: the lock state comes from the caller (the uinput keyboard reads the LEDs the compositor
sets). Unknown keysyms (a Latin-1 letter that the US layout lacks, a dead key) give None and a debug log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntFlag
from typing import Final

from vkmsremote.input import tables

log = logging.getLogger(__name__)

KEY_102ND: Final = 86  # the ISO key between left Shift and Z; ANSI (US) keyboards do not have it
MAX_X11_EVDEV_CODE: Final = 247  # X11 keycodes stop at 255 = evdev code + 8: Xorg cannot use higher codes

UNICODE_KEYSYM_BASE: Final = 0x01000000  # keysymdef.h: 0x01000000 + code point is a Unicode keysym
FUNCTION_KEYSYMS: Final = range(0xFE00, 0x10000)  # keysymdef.h: ISO/keyboard (0xFE), TTY/cursor/keypad (0xFF)


class State(IntFlag):
    """Index bits of ``tables.KEY_SYMS``: what is held or locked on the target."""

    NONE = 0
    SHIFT = 1
    CAPS_LOCK = 2
    NUM_LOCK = 4
    LEVEL3 = 8  # AltGr (ISO_Level3_Shift) held; only in keymaps compiled from the desktop (input.layout)


STATES: Final = 16
"""Entries per key in a compiled keymap (``tables`` has the first 8: no AltGr on the US layout)."""


@dataclass(frozen=True, slots=True)
class KeyPress:
    """How to make the target produce a keysym.

    ``shift``: True = hold Shift around the key press, False = release the held Shift around it,
    None = leave Shift as the client has it. ``level3`` the same for AltGr (the keymap's ``level3_code``).
    ``toggle_num_lock``: tap Num Lock first.
    """

    code: int
    shift: bool | None = None
    toggle_num_lock: bool = False
    level3: bool | None = None


def normalize_keysym(keysym: int) -> int:
    """Unicode keysyms for Latin-1 characters are their Latin-1 keysyms (keysymdef.h, "Unicode" section)."""
    code_point = keysym - UNICODE_KEYSYM_BASE
    if 0x20 <= code_point <= 0x7E or 0xA0 <= code_point <= 0xFF:
        return code_point
    return keysym


def normalize_qnum(keycode: int) -> int:
    """An XT scancode as RFB's QEMU extended key event carries it (0x80|code for the E0 page).

    Some clients send the two-byte form 0xE0xx; it is folded to 0x80|xx here.
    """
    if keycode & 0xFF00 == 0xE000 and keycode & 0xFF < 0x80:
        return 0x80 | (keycode & 0x7F)
    return keycode


class Keymap:
    """Keysym -> key code lookups over generated tables (``vkmsremote.input.tables`` by default), or over
    the desktop's own keymap compiled by ``vkmsremote.input.layout`` (16 states: with AltGr)."""

    def __init__(
        self,
        key_syms: Mapping[int, tuple[int, ...]] = tables.KEY_SYMS,
        other_level_syms: Mapping[int, int] = tables.OTHER_LEVEL_SYMS,
        xt_to_evdev: Mapping[int, int] = tables.XT_TO_EVDEV,
        *,
        level3_code: int | None = None,
        description: str = "US (built-in tables)",
        unicode_aliases: Mapping[int, int] | None = None,
    ) -> None:
        self.key_syms = key_syms
        self.other_level_syms = other_level_syms
        self.xt_to_evdev = xt_to_evdev
        self.level3_code = level3_code
        self.description = description
        # Unicode keysym (0x01000000 + code point) -> the named keysym the keymap has for it (EuroSign).
        self.unicode_aliases: Mapping[int, int] = unicode_aliases or {}
        self._code_for = self._choose_keys()

    def _choose_keys(self) -> dict[int, int]:
        """One key per keysym.

        Preference, in order: a key X11 can use (code <= 247); not the ISO 102nd key (ANSI keyboards lack
        it); the lowest code, which puts the main block before the keypad and the multimedia keys: '(' is
        Shift+9, not KEY_KPLEFTPAREN; '<' is Shift+comma; KP_Decimal is KEY_KPDOT (with Num Lock), not
        KEY_KPCOMMA.
        """
        candidates: dict[int, list[tuple[tuple[bool, bool, bool, int], int]]] = {}
        for code, syms in self.key_syms.items():
            for keysym in set(syms) - {0}:
                # A key giving it without AltGr beats one that needs AltGr (de: '<' on the 102nd key).
                needs_level3 = keysym not in syms[:8]
                rank = (code > MAX_X11_EVDEV_CODE, needs_level3, code == KEY_102ND, code)
                candidates.setdefault(keysym, []).append((rank, code))
        return {keysym: min(found)[1] for keysym, found in candidates.items()}

    @property
    def codes(self) -> frozenset[int]:
        """Every key code the tables can press (what a uinput keyboard must declare)."""
        level3 = frozenset({self.level3_code} if self.level3_code is not None else ())
        return frozenset(self.key_syms) | frozenset(self.other_level_syms.values()) | frozenset(
            self.xt_to_evdev.values()
        ) | level3

    def normalize(self, keysym: int) -> int:
        keysym = normalize_keysym(keysym)
        return self.unicode_aliases.get(keysym, keysym)

    def code_for(self, keysym: int) -> int | None:
        keysym = self.normalize(keysym)
        code = self._code_for.get(keysym)
        return code if code is not None else self.other_level_syms.get(keysym)

    def plan(self, keysym: int, state: State) -> KeyPress | None:
        """How to type ``keysym`` on a target whose held Shift and lock state is ``state``; None if unknown."""
        keysym = self.normalize(keysym)
        code = self._code_for.get(keysym)
        if code is None:
            other = self.other_level_syms.get(keysym)
            if other is None:
                log.debug("keysym 0x%x is not on the %s layout: ignored", keysym, self.description)
                return None
            return KeyPress(other)  # needs Alt or Control, which the client holds itself
        syms = self.key_syms[code]
        if len(syms) <= State.LEVEL3:
            state &= ~State.LEVEL3  # the US tables: AltGr gives nothing there
        shift_held = bool(state & State.SHIFT)
        level3_held = bool(state & State.LEVEL3)
        # Cheapest first: nothing, sync Num Lock, then a fake Shift press or release, then both; then the
        # same with AltGr pressed (or released) around the key.
        for flip_level3 in (False, True):
            if flip_level3 and self.level3_code is None:
                break
            for flip_num, flip_shift in ((False, False), (True, False), (False, True), (True, True)):
                target = (state ^ (State.NUM_LOCK if flip_num else 0) ^ (State.SHIFT if flip_shift else 0)
                          ^ (State.LEVEL3 if flip_level3 else 0))
                if target >= len(syms) or syms[target] != keysym:
                    continue
                if flip_shift and shift_held and syms[target | State.SHIFT] in FUNCTION_KEYSYMS:
                    continue  # Shift+Tab: the client's Shift is meant for the application, keep it
                return KeyPress(code, shift=(not shift_held) if flip_shift else None, toggle_num_lock=flip_num,
                                level3=(not level3_held) if flip_level3 else None)
        log.debug("keysym 0x%x: key %d does not give it in state %r; pressed as it is", keysym, code, state)
        return KeyPress(code)

    def scancode(self, keycode: int) -> int | None:
        """evdev code for an XT scancode (QEMU extended key event), None if Linux maps it to nothing."""
        code = self.xt_to_evdev.get(normalize_qnum(keycode))
        if code is None:
            log.debug("XT scancode 0x%x has no evdev key", keycode)
        return code


US: Final = Keymap()
"""The generated US keymap."""

"""Keysym / XT scancode -> evdev key mapping for a US-layout target (vkmsremote.input.keymap)."""

from __future__ import annotations

import logging
import pathlib

import pytest
from evdev import ecodes as e

from vkmsremote.input import tables
from vkmsremote.input.keymap import US, KeyPress, State, normalize_keysym, normalize_qnum

# X11 keysyms (keysymdef.h)
XK_a, XK_A, XK_1, XK_exclam, XK_space = 0x61, 0x41, 0x31, 0x21, 0x20
XK_Tab, XK_ISO_Left_Tab, XK_Return, XK_BackSpace, XK_Escape = 0xFF09, 0xFE20, 0xFF0D, 0xFF08, 0xFF1B
XK_Shift_L, XK_Shift_R, XK_Control_L, XK_Control_R, XK_Alt_L, XK_Super_L = (
    0xFFE1, 0xFFE2, 0xFFE3, 0xFFE4, 0xFFE9, 0xFFEB)
XK_F1, XK_F12, XK_F13 = 0xFFBE, 0xFFC9, 0xFFCA
XK_KP_1, XK_KP_End, XK_KP_Enter, XK_KP_Add, XK_KP_Decimal, XK_KP_Delete = (
    0xFFB1, 0xFF9C, 0xFF8D, 0xFFAB, 0xFFAE, 0xFF9F)
XK_Left, XK_Home, XK_Delete, XK_Sys_Req, XK_Break = 0xFF51, 0xFF50, 0xFFFF, 0xFF15, 0xFF6B
XK_less, XK_parenleft, XK_plusminus, XK_eacute, XK_section, XK_dead_acute = 0x3C, 0x28, 0xB1, 0xE9, 0xA7, 0xFE51


def produced(plan: KeyPress, state: State) -> int:
    """The keysym the US keymap gives for ``plan`` pressed in ``state`` (after its Shift/Num changes)."""
    if plan.toggle_num_lock:
        state ^= State.NUM_LOCK
    if plan.shift is True:
        state |= State.SHIFT
    elif plan.shift is False:
        state &= ~State.SHIFT
    return tables.KEY_SYMS[plan.code][state]


@pytest.mark.parametrize(
    ("keysym", "state", "expected"),
    [
        (XK_a, State.NONE, KeyPress(e.KEY_A)),
        (XK_A, State.NONE, KeyPress(e.KEY_A, shift=True)),  # 'A' without Shift: press Shift around it
        (XK_A, State.SHIFT, KeyPress(e.KEY_A)),
        (XK_a, State.SHIFT, KeyPress(e.KEY_A, shift=False)),  # 'a' with Shift held: release it around
        (XK_a, State.CAPS_LOCK, KeyPress(e.KEY_A, shift=True)),  # Caps Lock on: Shift gives lower case
        (XK_A, State.CAPS_LOCK, KeyPress(e.KEY_A)),
        (XK_exclam, State.NONE, KeyPress(e.KEY_1, shift=True)),
        (XK_1, State.SHIFT, KeyPress(e.KEY_1, shift=False)),
        (XK_1, State.CAPS_LOCK, KeyPress(e.KEY_1)),  # Caps Lock does not shift digits
        (XK_Tab, State.SHIFT, KeyPress(e.KEY_TAB)),  # Shift+Tab: the client's Shift stays
        (XK_ISO_Left_Tab, State.NONE, KeyPress(e.KEY_TAB, shift=True)),
        (XK_Left, State.SHIFT, KeyPress(e.KEY_LEFT)),  # Shift+Left selects: nothing to adjust
        (XK_KP_1, State.NONE, KeyPress(e.KEY_KP1, toggle_num_lock=True)),  # sync Num Lock, no fake Shift
        (XK_KP_1, State.NUM_LOCK, KeyPress(e.KEY_KP1)),
        (XK_KP_End, State.NUM_LOCK, KeyPress(e.KEY_KP1, toggle_num_lock=True)),
        (XK_KP_End, State.NONE, KeyPress(e.KEY_KP1)),
        (XK_KP_Decimal, State.NUM_LOCK, KeyPress(e.KEY_KPDOT)),
        (XK_KP_Delete, State.NONE, KeyPress(e.KEY_KPDOT)),
        (XK_KP_Enter, State.NONE, KeyPress(e.KEY_KPENTER)),
        (XK_KP_Add, State.SHIFT, KeyPress(e.KEY_KPPLUS)),
        (XK_F1, State.NONE, KeyPress(e.KEY_F1)),
        (XK_F12, State.SHIFT, KeyPress(e.KEY_F12)),
        (XK_Return, State.NONE, KeyPress(e.KEY_ENTER)),
        (XK_BackSpace, State.NONE, KeyPress(e.KEY_BACKSPACE)),
        (XK_Escape, State.NONE, KeyPress(e.KEY_ESC)),
        (XK_Delete, State.NONE, KeyPress(e.KEY_DELETE)),
        (XK_Home, State.NUM_LOCK, KeyPress(e.KEY_HOME)),
        (XK_Shift_L, State.NONE, KeyPress(e.KEY_LEFTSHIFT)),
        (XK_Shift_R, State.SHIFT, KeyPress(e.KEY_RIGHTSHIFT)),
        (XK_Control_L, State.NONE, KeyPress(e.KEY_LEFTCTRL)),
        (XK_Control_R, State.NONE, KeyPress(e.KEY_RIGHTCTRL)),
        (XK_Alt_L, State.NONE, KeyPress(e.KEY_LEFTALT)),
        (XK_Super_L, State.NONE, KeyPress(e.KEY_LEFTMETA)),
        (XK_less, State.NONE, KeyPress(e.KEY_COMMA, shift=True)),  # not the ISO 102nd key
        (XK_parenleft, State.NONE, KeyPress(e.KEY_9, shift=True)),  # not KEY_KPLEFTPAREN
        (XK_plusminus, State.NONE, KeyPress(e.KEY_KPPLUSMINUS)),  # Latin-1 symbol the US map has
        (XK_Sys_Req, State.NONE, KeyPress(e.KEY_SYSRQ)),  # Alt+Print: the client holds Alt
        (XK_Break, State.NONE, KeyPress(e.KEY_PAUSE)),
        (0x1000041, State.NONE, KeyPress(e.KEY_A, shift=True)),  # Unicode keysym U+0041
    ],
)
def test_plan(keysym: int, state: State, expected: KeyPress) -> None:
    assert US.plan(keysym, state) == expected


def test_every_printable_ascii_comes_out_right_in_every_state() -> None:
    for keysym in range(0x20, 0x7F):
        for state in (s for s in State.__members__.values() if not s & State.LEVEL3):  # no AltGr on US
            for s in (state, state | State.SHIFT, state | State.CAPS_LOCK | State.NUM_LOCK):
                plan = US.plan(keysym, s)
                assert plan is not None, hex(keysym)
                assert produced(plan, s) == keysym, (hex(keysym), s, plan)
                assert plan.code <= 247  # X11 can use it


@pytest.mark.parametrize("keysym", [XK_eacute, XK_section, XK_dead_acute, XK_F13, 0x3C0, 0x1F600 + 0x1000000, 0xFFFFFFFF, 0])
# F13: the US evdev keymap gives XF86Tools on KEY_F13, so no key produces the keysym F13.
def test_unknown_keysym_is_ignored_with_a_debug_log(keysym: int, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="vkmsremote.input.keymap"):
        assert US.plan(keysym, State.NONE) is None
    assert f"0x{normalize_keysym(keysym):x}" in caplog.text


def test_code_for_ignores_state() -> None:
    assert US.code_for(XK_A) == US.code_for(XK_a) == e.KEY_A
    assert US.code_for(XK_KP_1) == US.code_for(XK_KP_End) == e.KEY_KP1
    assert US.code_for(XK_eacute) is None
    assert US.code_for(0x20AC) == e.KEY_EURO  # EuroSign: only on a code above X11's 247, still used


def test_normalize_keysym_maps_only_latin1_unicode_keysyms() -> None:
    assert normalize_keysym(0x1000061) == XK_a
    assert normalize_keysym(0x10000E9) == XK_eacute
    assert normalize_keysym(0x1000100) == 0x1000100  # U+0100 has no Latin-1 keysym
    assert normalize_keysym(0x100001F) == 0x100001F  # control characters are not keysyms


@pytest.mark.parametrize(
    ("qnum", "code"),
    [
        (0x01, e.KEY_ESC),
        (0x1E, e.KEY_A),
        (0x2A, e.KEY_LEFTSHIFT),
        (0x1C, e.KEY_ENTER),
        (0x9C, e.KEY_KPENTER),  # E0 1C
        (0x1D, e.KEY_LEFTCTRL),
        (0x9D, e.KEY_RIGHTCTRL),
        (0xB8, e.KEY_RIGHTALT),
        (0xC8, e.KEY_UP),
        (0xE048, e.KEY_UP),  # the two-byte form some clients send
        (0xCB, e.KEY_LEFT),
        (0xD3, e.KEY_DELETE),
        (0x53, e.KEY_KPDOT),
        (0xDB, e.KEY_LEFTMETA),
        (0xDD, e.KEY_COMPOSE),
        (0x54, e.KEY_SYSRQ),  # Alt+Print
        (0xC6, e.KEY_PAUSE),  # QEMU's code for Pause (E0 46)
        (0x56, e.KEY_102ND),
        (0x57, e.KEY_F11),
        (0x58, e.KEY_F12),
    ],
)
def test_xt_scancodes(qnum: int, code: int) -> None:
    assert US.scancode(qnum) == code


def test_xt_scancodes_1_to_83_are_linux_keycodes() -> None:
    # Linux numbered its key codes after XT set 1 for the original 83 keys (input-event-codes.h).
    assert all(tables.XT_TO_EVDEV[q] == q for q in range(1, 0x54))


def test_xt_unknown_scancodes() -> None:
    assert US.scancode(0x00) is None
    assert US.scancode(0xAA) is None  # E0 2A, the fake shift of the E0 page: Linux ignores it
    assert US.scancode(0x1FF) is None
    assert normalize_qnum(0xE01C) == 0x9C
    assert normalize_qnum(0x1C) == 0x1C


def test_keyboard_codes_cover_the_tables() -> None:
    assert {e.KEY_A, e.KEY_KP1, e.KEY_F12, e.KEY_EURO, e.KEY_SYSRQ, e.KEY_PAUSE} <= US.codes
    assert max(US.codes) <= e.KEY_MAX


def test_tables_match_libxkbcommon() -> None:
    """The committed US table is what the installed libxkbcommon + xkb-data compile (regenerate if not)."""
    from vkmsremote.input.generate_tables import xkb_tables

    fresh = xkb_tables()
    assert fresh.key_syms == tables.KEY_SYMS
    assert fresh.other_level_syms == tables.OTHER_LEVEL_SYMS


def test_generated_file_is_marked() -> None:
    text = pathlib.Path(tables.__file__).read_text()
    assert text.startswith('"""GENERATED by ``python -m vkmsremote.input.generate_tables``')

"""Keysyms the layout lacks, on a spare key remapped on a real X server (Xvfb); the typing itself on Xorg
through uinput is tests/vm/test_compositor_vm.py's test_keysym_the_layout_lacks_is_typed_on_a_spare_key."""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from evdev import ecodes as e

from vkmsremote.bench.harness import Procs, setup_xvfb
from vkmsremote.input.keymap import KeyPress, State
from vkmsremote.input.layout import _compile_text, xorg_keymap_text
from vkmsremote.input.spare import SPARE_CODES, XSpareKeys
from vkmsremote.input.uinput import Keyboard, UinputDevices, UinputSink, keyboard_spec

from .test_uinput_sink import RecordingDevice

XK_EuroSign, XK_ssharp, XK_udiaeresis, XK_ccedilla, XK_ntilde, XK_a = 0x20AC, 0xDF, 0xFC, 0xE7, 0xF1, 0x61


@pytest.fixture
def xvfb(tmp_path: Path) -> Iterator[str]:
    """A real Xvfb on a free display (bench.harness: -noreset, so the remaps outlive xmodmap, the only client)."""
    procs = Procs(tmp_path)
    try:
        yield setup_xvfb((640, 480), procs, role="Xvfb")
    finally:
        procs.stop_all()


def symbols_of(display: str, x_keycode: int) -> list[str]:
    """What the X server's core keymap has on a key, as ``xmodmap -pke`` prints it."""
    out = subprocess.run(["xmodmap", "-display", display, "-pke"], capture_output=True, text=True, check=True).stdout
    m = re.search(rf"^keycode\s+{x_keycode} =(.*)$", out, re.M)
    assert m is not None, out
    return m.group(1).split()


def test_spare_codes_are_free_on_us_and_declared_by_the_keyboard(xvfb: str) -> None:
    keymap = _compile_text(xorg_keymap_text(xvfb), "Xvfb")
    assert not set(SPARE_CODES) & (set(keymap.key_syms) | set(keymap.other_level_syms.values()))
    assert set(SPARE_CODES) <= set(keyboard_spec("t").keys)
    for code in SPARE_CODES:
        assert symbols_of(xvfb, code + 8) == []


def test_keysym_the_layout_lacks_goes_on_a_spare_key_and_back(xvfb: str) -> None:
    keymap = _compile_text(xorg_keymap_text(xvfb), "Xvfb us")
    assert keymap.plan(XK_EuroSign, State.NONE) is None  # us has no EuroSign
    spare = XSpareKeys(lambda: xvfb)
    down: set[int] = set()
    first = spare.plan(XK_EuroSign, keymap, down.__contains__)
    assert first == KeyPress(SPARE_CODES[0])
    assert set(symbols_of(xvfb, SPARE_CODES[0] + 8)) == {"EuroSign"}  # on every level (XKB shows 4)
    # The X server's keymap, read back as serve reads it, now types EuroSign on that key
    after = _compile_text(xorg_keymap_text(xvfb), "Xvfb us + spare")
    assert after.code_for(XK_EuroSign) == SPARE_CODES[0]
    assert spare.plan(XK_EuroSign, keymap, down.__contains__) == first  # kept: no remap for a repeat
    for keysym, code in zip((XK_ssharp, XK_udiaeresis, XK_ccedilla), SPARE_CODES[1:], strict=True):
        assert spare.plan(keysym, keymap, down.__contains__) == KeyPress(code)
    # All four taken: the least recently used one that is not down is reused (EuroSign's key is down)
    down.add(SPARE_CODES[0])
    assert spare.plan(XK_ntilde, keymap, down.__contains__) == KeyPress(SPARE_CODES[1])
    assert set(symbols_of(xvfb, SPARE_CODES[1] + 8)) == {"ntilde"}
    spare.close()
    for code in SPARE_CODES:
        assert symbols_of(xvfb, code + 8) == []


def test_keysym_dropped_with_a_log_line_where_no_x_server_is(caplog: pytest.LogCaptureFixture) -> None:
    spare = XSpareKeys(lambda: None)
    from vkmsremote.input.keymap import US

    with caplog.at_level(logging.INFO, logger="vkmsremote.input.spare"):
        assert spare.plan(XK_EuroSign, US, lambda code: False) is None
    assert ("0x20ac is not on the US (built-in tables) layout and the desktop is neither Xorg nor a wlroots "
            "compositor with wtype installed: dropped") in caplog.text


def test_sink_presses_the_spare_key(xvfb: str) -> None:
    devices = UinputDevices.open("t", factory=RecordingDevice)
    keymap = _compile_text(xorg_keymap_text(xvfb), "Xvfb us")
    devices.keyboard = Keyboard(devices.keyboard.device, keymap, spare=XSpareKeys(lambda: xvfb))
    sink = UinputSink(devices, 1024, 768)
    for keysym in (XK_a, XK_EuroSign):
        sink.key(keysym, True)
        sink.key(keysym, False)
    device = devices.keyboard.device
    assert isinstance(device, RecordingDevice)
    pressed = [code for etype, code, value in device.take() if etype == e.EV_KEY and value == 1]
    assert pressed == [e.KEY_A, SPARE_CODES[0]]
    devices.close()
    assert symbols_of(xvfb, SPARE_CODES[0] + 8) == []  # closing the devices gave the key back

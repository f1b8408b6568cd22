"""The desktop's keyboard layout (vkmsremote.input.layout): keysyms typed on German, French and US keymaps.

The oracle is libxkbcommon's own state machine (what every compositor runs): the key events the sink
writes are fed into an ``xkb_state`` of the same keymap, and the text it produces must be what was typed.
The X server test reads a real Xvfb's keymap after ``setxkbmap``.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import shutil
import subprocess
import threading
import time

import pytest
from evdev import ecodes as e

from input.test_uinput_sink import RecordingDevice
from vkmsremote.input.keymap import US, State
from vkmsremote.input.layout import (
    XKB_KEYCODE_OFFSET,
    LayoutSource,
    Reading,
    RuleNames,
    from_names,
    keymap_of,
    layout_descriptions,
    tables_from_text,
    xkbcommon,
)
from vkmsremote.input.uinput import UinputDevices, UinputSink

DE_TEXT = "zyäöüß@€"
FR_TEXT = "azerty&é\"'("
US_TEXT = 'Hello, World! <A&b> ~|"x_y" 42%'


def keysym_of(ch: str) -> int:
    """What a VNC client sends for a character: Latin-1 keysyms as such, the rest as Unicode keysyms."""
    return ord(ch) if ord(ch) < 0x100 else 0x01000000 + ord(ch)


def typed_through_xkb(events: list[tuple[int, int, int]], layout: str) -> str:
    """Replay key events through libxkbcommon (as a compositor would) and collect the text they make."""
    lib = xkbcommon()
    lib.xkb_state_key_get_utf8.restype = ctypes.c_int
    lib.xkb_state_key_get_utf8.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t]
    ctx = lib.xkb_context_new(0)
    names = RuleNames(b"evdev", b"pc105", layout.encode(), b"", b"")
    keymap = lib.xkb_keymap_new_from_names(ctx, ctypes.byref(names), 0)
    state = lib.xkb_state_new(keymap)
    text = []
    try:
        for etype, code, value in events:
            if etype != e.EV_KEY:
                continue
            xkb_code = code + XKB_KEYCODE_OFFSET
            if value == 1:
                buf = ctypes.create_string_buffer(16)
                lib.xkb_state_key_get_utf8(state, xkb_code, buf, len(buf))
                text.append(buf.value.decode())
            lib.xkb_state_update_key(state, xkb_code, 1 if value else 0)
    finally:
        lib.xkb_state_unref(state)
        lib.xkb_keymap_unref(keymap)
        lib.xkb_context_unref(ctx)
    return "".join(text)


def type_with(layout: str, text: str, *, hold_shift: bool = False) -> list[tuple[int, int, int]]:
    keymap = from_names(layout)
    devices = UinputDevices.open("test", factory=RecordingDevice, keymap=keymap)
    sink = UinputSink(devices, 1024, 768)
    if hold_shift:
        sink.key(0xFFE1, True)
    for ch in text:
        sink.key(keysym_of(ch), True)
        sink.key(keysym_of(ch), False)
    if hold_shift:
        sink.key(0xFFE1, False)
    device = devices.keyboard.device
    assert isinstance(device, RecordingDevice)
    return device.take()


@pytest.mark.parametrize(("layout", "text"), [("de", DE_TEXT), ("fr", FR_TEXT), ("us", US_TEXT),
                                              ("de", US_TEXT), ("fr", US_TEXT), ("de", "{[]}\\~|²³µ"),
                                              ("fr", "~#{[|`\\^@]}€")])
def test_text_typed_on_a_layout_comes_out_of_xkb_exactly(layout: str, text: str) -> None:
    assert typed_through_xkb(type_with(layout, text), layout) == text


def test_shift_held_by_the_client_is_undone_for_an_unshifted_symbol_on_de() -> None:
    # The client holds Shift and sends 'z': the sink releases Shift around KEY_Y (German z).
    events = type_with("de", "z", hold_shift=True)
    assert typed_through_xkb(events, "de") == "z"
    keys = [(code, value) for etype, code, value in events if etype == e.EV_KEY]
    assert keys[:4] == [(e.KEY_LEFTSHIFT, 1), (e.KEY_LEFTSHIFT, 0), (e.KEY_Y, 1), (e.KEY_LEFTSHIFT, 1)]


def test_altgr_for_at_and_euro_on_de() -> None:
    keymap = from_names("de")
    assert keymap.level3_code == e.KEY_RIGHTALT
    at = keymap.plan(ord("@"), State.NONE)
    assert at is not None and (at.code, at.level3) == (e.KEY_Q, True)
    euro = keymap.plan(0x010020AC, State.NONE)  # U+20AC as a Unicode keysym: EuroSign on AltGr+E
    assert euro is not None and (euro.code, euro.level3) == (e.KEY_E, True)
    dead = keymap.plan(0xFE51, State.NONE)  # dead_acute: the key right of ß
    assert dead is not None and dead.code == e.KEY_EQUAL


def test_a_symbol_the_layout_lacks_is_ignored_with_its_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="vkmsremote.input.keymap"):
        assert from_names("de").plan(0x01000000 + 0x3C0, State.NONE) is None  # π is not on de
    assert "not on the de layout" in caplog.text


def test_evdev_lst_descriptions_as_sway_names_layouts() -> None:
    found = layout_descriptions()
    assert found["German"] == ("de", "")
    assert found["French"] == ("fr", "")
    assert found["English (US)"] == ("us", "")
    assert found["German (no dead keys)"] == ("de", "nodeadkeys")


def test_layout_source_falls_back_to_us_with_a_warning_and_follows_changes(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    answer: list[Reading | None] = [None]
    source = LayoutSource(lambda: answer[0], interval=2.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="vkmsremote.input.layout"):
        assert source() is US
        assert "typing with the built-in US tables" in caplog.text
        answer[0] = Reading("de", "test: de", lambda: from_names("de"))
        now[0] = 1.0
        assert source() is US  # not re-read before the interval
        now[0] = 2.5
        german = source()
        assert german.level3_code == e.KEY_RIGHTALT and source.description == "test: de"
        now[0] = 5.0
        assert source() is german  # same reading: not compiled again
        assert "keyboard layout test: de compiled" in caplog.text


def test_background_reads_keep_the_event_loop_free() -> None:
    """The first call waits for the first read; later ones return at once, the thread re-reads on its own."""
    release = threading.Event()
    reads: list[str] = []

    def slow_read() -> Reading:
        layout = "de" if not reads else "fr"
        reads.append(layout)
        if layout == "fr":
            release.wait(10)
        return Reading(layout, f"test {layout}", functools.partial(from_names, layout))

    source = LayoutSource(slow_read, interval=0.05, background=True)
    try:
        assert source().description == "de"
        started = time.monotonic()
        while len(reads) < 2:
            time.sleep(0.01)
        assert source().description == "de"  # the re-read is running: not waited for
        assert time.monotonic() - started < 1.0
        release.set()
        deadline = time.monotonic() + 10
        while source().description != "fr":
            assert time.monotonic() < deadline, "the background re-read never took effect"
            time.sleep(0.01)
    finally:
        source.close()


def test_background_reads_stop_when_idle_and_the_next_key_waits_for_a_fresh_one() -> None:
    now = [0.0]
    reads: list[float] = []

    def read() -> Reading:
        reads.append(now[0])
        return Reading(str(len(reads)), f"read {len(reads)}", functools.partial(from_names, "de"))

    source = LayoutSource(read, interval=0.01, clock=lambda: now[0], background=True, idle=60.0)
    try:
        source()
        now[0] = 100.0  # a minute and more without keys: the poller goes to sleep
        time.sleep(0.2)
        count = len(reads)
        time.sleep(0.2)
        assert len(reads) == count, "still reading while idle"
        source()  # the first key after the pause: one fresh read, waited for
        assert len(reads) > count and reads[-1] == 100.0
    finally:
        source.close()


def test_xkbcomp_text_as_an_x_server_dumps_it_compiles_to_the_same_layout() -> None:
    """``xkbcomp -xkb $DISPLAY -`` prints xkbcomp's text format; here xkbcomp makes that text from a keymap
    description without a server (Xvfb ignores keymap changes: the X server read itself is a VM test), and
    libxkbcommon must read it."""
    assert shutil.which("xkbcomp")
    for layout, text in (("de", DE_TEXT), ("fr", FR_TEXT), ("us", US_TEXT)):
        described = ('xkb_keymap { xkb_keycodes { include "evdev+aliases(qwerty)" }; '
                     'xkb_types { include "complete" }; xkb_compat { include "complete" }; '
                     f'xkb_symbols {{ include "pc+{layout}+inet(evdev)" }}; }};').encode()
        dumped = subprocess.run(["xkbcomp", "-xkb", "-w", "0", "-", "-"], input=described, check=True,
                                capture_output=True).stdout.decode()
        keymap = keymap_of(tables_from_text(dumped), f"xkbcomp {layout}")
        devices = UinputDevices.open("test", factory=RecordingDevice, keymap=keymap)
        sink = UinputSink(devices, 1024, 768)
        for ch in text:
            sink.key(keysym_of(ch), True)
            sink.key(keysym_of(ch), False)
        device = devices.keyboard.device
        assert isinstance(device, RecordingDevice)
        assert typed_through_xkb(device.take(), layout) == text

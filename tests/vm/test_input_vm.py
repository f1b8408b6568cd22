"""UinputSink on the real kernel: what a reader of the created /dev/input/event* devices sees.

python-evdev reads the event nodes the way libinput does; every test compares the exact event stream
(SYN_REPORTs included) with what the VNC events must produce.
"""

from __future__ import annotations

import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from evdev import InputDevice
from evdev import ecodes as e

from vkmsremote.input.uinput import ABS_RANGE, PointerArea, UinputDevices, UinputSink, abs_position

pytestmark = pytest.mark.vm

SYN = (e.EV_SYN, e.SYN_REPORT, 0)
XK_a, XK_A, XK_Shift_L, XK_Control_L, XK_KP_1, XK_Tab = 0x61, 0x41, 0xFFE1, 0xFFE3, 0xFFB1, 0xFF09


def key(code: int, value: int) -> list[tuple[int, int, int]]:
    return [(e.EV_KEY, code, value), SYN]


def without_leds(events: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """The stream minus LED reports (packets the kernel's VT keyboard handler or a reader injected)."""
    out: list[tuple[int, int, int]] = []
    packet: list[tuple[int, int, int]] = []
    for event in events:
        if event == SYN:
            if packet:
                out += [*packet, SYN]
            packet = []
        elif event[0] != e.EV_LED:
            packet.append(event)
    return out + packet


class Reader:
    """Reads one event node, as a compositor would."""

    def __init__(self, path: str) -> None:
        self.device = InputDevice(path)

    def events(self, count: int, timeout: float = 10.0) -> list[tuple[int, int, int]]:
        """Exactly ``count`` events besides LED reports (fails on fewer in ``timeout`` s or on more)."""
        raw: list[tuple[int, int, int]] = []
        deadline = time.monotonic() + timeout
        while len(without_leds(raw)) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(without_leds(raw))} of {count} events arrived: {raw}"
            if select.select([self.device.fd], [], [], left)[0]:
                raw.extend(self.read())
        raw += self.drain(0.3)
        got = without_leds(raw)
        assert len(got) == count, f"unexpected events after the expected {count}: {got[count:]}"
        return got

    def read(self) -> list[tuple[int, int, int]]:
        return [(ev.type, ev.code, ev.value) for ev in self.device.read()]

    def drain(self, quiet: float) -> list[tuple[int, int, int]]:
        out: list[tuple[int, int, int]] = []
        while select.select([self.device.fd], [], [], quiet)[0]:
            out.extend(self.read())
        return out

    def set_led(self, led: int, on: bool) -> None:
        """What libinput does when the compositor's lock state changes: EV_LED, then SYN_REPORT."""
        self.device.write(e.EV_LED, led, int(on))
        self.device.write(e.EV_SYN, e.SYN_REPORT, 0)

    def close(self) -> None:
        self.device.close()


@pytest.fixture
def devices() -> Iterator[UinputDevices]:
    assert Path("/dev/uinput").exists(), "/dev/uinput is missing: the test kernel needs CONFIG_INPUT_UINPUT=y"
    devs = UinputDevices.open("vkmsremote-test")
    yield devs
    devs.close()


@pytest.fixture
def keyboard(devices: UinputDevices) -> Iterator[Reader]:
    reader = Reader(devices.keyboard.device.path)
    yield reader
    reader.close()


@pytest.fixture
def pointer(devices: UinputDevices) -> Iterator[Reader]:
    reader = Reader(devices.pointer.device.path)
    yield reader
    reader.close()


def test_devices_as_the_kernel_and_udev_see_them(devices: UinputDevices, keyboard: Reader,
                                                 pointer: Reader) -> None:
    kbd, ptr = keyboard.device, pointer.device
    assert kbd.name == "vkmsremote-test keyboard" and ptr.name == "vkmsremote-test pointer"
    kcaps = kbd.capabilities()
    assert {e.KEY_A, e.KEY_LEFTSHIFT, e.KEY_KP1, e.KEY_F12, e.KEY_SYSRQ} <= set(kcaps[e.EV_KEY])
    assert set(kcaps[e.EV_LED]) == {e.LED_NUML, e.LED_CAPSL, e.LED_SCROLLL}
    assert e.EV_ABS not in kcaps and e.EV_REL not in kcaps
    pcaps = ptr.capabilities()
    assert set(pcaps[e.EV_KEY]) == {e.BTN_LEFT, e.BTN_MIDDLE, e.BTN_RIGHT}
    assert set(pcaps[e.EV_REL]) == {e.REL_WHEEL, e.REL_HWHEEL}
    for axis in (e.ABS_X, e.ABS_Y):
        info = ptr.absinfo(axis)
        assert (info.min, info.max) == (0, ABS_RANGE - 1)
    # udev's input_id builtin is what tells libinput (and so Xorg, weston) what a device is.
    for path, wanted in ((devices.keyboard.device.path, "ID_INPUT_KEYBOARD=1"),
                         (devices.pointer.device.path, "ID_INPUT_MOUSE=1")):
        syspath = Path("/sys/class/input", Path(path).name).resolve().parent
        out = subprocess.run(["udevadm", "test-builtin", "input_id", str(syspath)],
                             capture_output=True, text=True, timeout=30)
        assert wanted in out.stdout.split(), f"{path}: {out.stdout}{out.stderr}"


def test_keys_with_shift_handling(devices: UinputDevices, keyboard: Reader) -> None:
    sink = UinputSink(devices, 1024, 768)
    sink.key(XK_A, True)  # 'A' without Shift: Shift pressed around it
    sink.key(XK_A, False)
    sink.key(XK_Shift_L, True)
    sink.key(XK_a, True)  # 'a' with Shift held: Shift released around it
    sink.key(XK_a, False)
    sink.key(XK_Tab, True)  # Shift+Tab stays Shift+Tab
    sink.key(XK_Tab, False)
    sink.key(XK_Shift_L, False)
    expected = (
        key(e.KEY_LEFTSHIFT, 1) + key(e.KEY_A, 1) + key(e.KEY_LEFTSHIFT, 0) + key(e.KEY_A, 0)
        + key(e.KEY_LEFTSHIFT, 1)
        + key(e.KEY_LEFTSHIFT, 0) + key(e.KEY_A, 1) + key(e.KEY_LEFTSHIFT, 1) + key(e.KEY_A, 0)
        + key(e.KEY_TAB, 1) + key(e.KEY_TAB, 0)
        + key(e.KEY_LEFTSHIFT, 0)
    )
    assert keyboard.events(len(expected)) == expected
    assert keyboard.device.active_keys() == []


def test_caps_lock_led_set_by_a_reader_reaches_the_sink(devices: UinputDevices, keyboard: Reader) -> None:
    sink = UinputSink(devices, 1024, 768)
    keyboard.set_led(e.LED_CAPSL, True)  # as Xorg/libinput do when Caps Lock turns on
    deadline = time.monotonic() + 5
    while not devices.keyboard.state & devices.keyboard.state.CAPS_LOCK:
        assert time.monotonic() < deadline, "the LED write never came back through /dev/uinput"
        time.sleep(0.01)
    sink.key(XK_a, True)  # with Caps Lock on, 'a' needs Shift
    sink.key(XK_a, False)
    expected = key(e.KEY_LEFTSHIFT, 1) + key(e.KEY_A, 1) + key(e.KEY_LEFTSHIFT, 0) + key(e.KEY_A, 0)
    assert keyboard.events(len(expected)) == expected
    keyboard.set_led(e.LED_CAPSL, False)


def test_keypad_and_scancodes(devices: UinputDevices, keyboard: Reader) -> None:
    sink = UinputSink(devices, 1024, 768)
    sink.key(XK_KP_1, True)  # Num Lock is off: it is toggled so the target gives KP_1
    sink.key(XK_KP_1, False)
    sink.key_scancode(0xFF52, 0xC8, True)  # Up by XT scancode E0 48
    sink.key_scancode(0xFF52, 0xC8, False)
    expected = (
        key(e.KEY_NUMLOCK, 1) + key(e.KEY_NUMLOCK, 0) + key(e.KEY_KP1, 1) + key(e.KEY_KP1, 0)
        + key(e.KEY_UP, 1) + key(e.KEY_UP, 0)
    )
    assert keyboard.events(len(expected)) == expected
    assert devices.keyboard.state & devices.keyboard.state.NUM_LOCK  # we toggled it; the kernel's LED agrees
    assert e.LED_NUML in keyboard.device.leds()


def test_keys_held_at_disconnect_are_released(devices: UinputDevices, keyboard: Reader, pointer: Reader) -> None:
    first, second = UinputSink(devices, 1024, 768), UinputSink(devices, 1024, 768)
    first.key(XK_Control_L, True)
    first.key(XK_a, True)
    second.key(XK_Control_L, True)
    first.pointer(5, 5, 0b001)
    assert keyboard.events(4) == key(e.KEY_LEFTCTRL, 1) + key(e.KEY_A, 1)
    assert sorted(keyboard.device.active_keys()) == [e.KEY_LEFTCTRL, e.KEY_A]
    first.release_all()  # the first client left: Control stays, the second still holds it
    assert keyboard.events(2) == key(e.KEY_A, 0)
    assert keyboard.device.active_keys() == [e.KEY_LEFTCTRL]
    second.close()
    assert keyboard.events(2) == key(e.KEY_LEFTCTRL, 0)
    assert keyboard.device.active_keys() == []
    moved = pointer.drain(0.3)
    assert moved[-2:] == [(e.EV_KEY, e.BTN_LEFT, 0), SYN]  # pressed, then let go by release_all
    assert pointer.device.active_keys() == []


@pytest.mark.parametrize(("width", "height"), [(1024, 768), (1920, 1080)])
def test_pointer_positions_at_two_modes(devices: UinputDevices, pointer: Reader, width: int, height: int) -> None:
    sink = UinputSink(devices, 640, 480)
    sink.set_screen(width, height)  # the mode changed: the same device, new scaling
    points = [(0, 0), (width - 1, height - 1), (width // 2, height // 3), (17, height - 2)]
    expected: list[tuple[int, int, int]] = []
    for x, y in points:
        sink.pointer(x, y, 0)
        ax, ay = abs_position(x, y, width, height, PointerArea.whole(width, height))
        expected += [(e.EV_ABS, e.ABS_X, ax), (e.EV_ABS, e.ABS_Y, ay), SYN]
    got = pointer.events(len(expected))
    assert got == expected
    # What libinput computes from those values: (value - min) * width / (max - min + 1).
    pixels = [(v1 * width // ABS_RANGE, v2 * height // ABS_RANGE)
              for (_, _, v1), (_, _, v2) in zip(got[0::3], got[1::3], strict=True)]
    assert pixels == points
    sink.pointer(10, 10, 0b1001)  # left button + wheel up
    sink.pointer(10, 10, 0b0000)  # same position: the kernel drops the unchanged ABS values
    ax, ay = abs_position(10, 10, width, height, PointerArea.whole(width, height))
    assert pointer.events(7) == [
        (e.EV_ABS, e.ABS_X, ax), (e.EV_ABS, e.ABS_Y, ay), (e.EV_KEY, e.BTN_LEFT, 1), (e.EV_REL, e.REL_WHEEL, 1), SYN,
        (e.EV_KEY, e.BTN_LEFT, 0), SYN,
    ]

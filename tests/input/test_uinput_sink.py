"""UinputSink logic over a recording uinput backend (the VM test tests/vm/test_input_vm.py is the proof)."""

from __future__ import annotations

import numpy as np
import pytest
from evdev import ecodes as e

from vkmsremote.errors import InputDeviceError
from vkmsremote.frame import Placement
from vkmsremote.input.uinput import (
    ABS_RANGE,
    DeviceSpec,
    EvdevUinputDevice,
    PointerArea,
    UinputDevices,
    UinputSink,
    abs_position,
    area_of,
    keyboard_spec,
    pointer_spec,
)
from vkmsremote.server.input import InputSink

XK_a, XK_A, XK_b, XK_Tab, XK_Shift_L, XK_Control_L, XK_KP_1, XK_KP_2, XK_Num_Lock = (
    0x61, 0x41, 0x62, 0xFF09, 0xFFE1, 0xFFE3, 0xFFB1, 0xFFB2, 0xFF7F)
XK_eacute = 0xE9
SYN = (e.EV_SYN, e.SYN_REPORT, 0)


def key(code: int, value: int) -> tuple[int, int, int]:
    return (e.EV_KEY, code, value)


def key_syn(code: int, value: int) -> list[tuple[int, int, int]]:
    return [key(code, value), SYN]


class RecordingDevice:
    """A UinputDevice that keeps what is written and hands back injected feedback (LEDs)."""

    def __init__(self, spec: DeviceSpec) -> None:
        self.spec = spec
        self.events: list[tuple[int, int, int]] = []
        self.pending_feedback: list[tuple[int, int, int]] = []
        self.closed = False

    @property
    def path(self) -> str:
        return f"/dev/input/fake-{self.spec.name}"

    def write(self, etype: int, code: int, value: int) -> None:
        assert not self.closed
        if etype == e.EV_KEY:
            assert code in self.spec.keys, f"{code} not declared on {self.spec.name}"
        self.events.append((etype, code, value))

    def syn(self) -> None:
        self.write(e.EV_SYN, e.SYN_REPORT, 0)

    def feedback(self) -> list[tuple[int, int, int]]:
        out, self.pending_feedback = self.pending_feedback, []
        return out

    def close(self) -> None:
        self.closed = True

    def take(self) -> list[tuple[int, int, int]]:
        out, self.events = self.events, []
        return out


@pytest.fixture
def devices() -> UinputDevices:
    return UinputDevices.open("test", factory=RecordingDevice)


def kbd(devices: UinputDevices) -> RecordingDevice:
    device = devices.keyboard.device
    assert isinstance(device, RecordingDevice)
    return device


def ptr(devices: UinputDevices) -> RecordingDevice:
    device = devices.pointer.device
    assert isinstance(device, RecordingDevice)
    return device


def test_sink_is_an_input_sink(devices: UinputDevices) -> None:
    assert isinstance(UinputSink(devices, 1024, 768), InputSink)


def test_device_specs() -> None:
    k = keyboard_spec("x")
    assert k.name == "x keyboard" and e.KEY_A in k.keys and e.BTN_LEFT not in k.keys
    assert set(k.leds) == {e.LED_NUML, e.LED_CAPSL, e.LED_SCROLLL}
    p = pointer_spec("x")
    assert p.keys == (e.BTN_LEFT, e.BTN_MIDDLE, e.BTN_RIGHT)
    assert p.abs_axes == (e.ABS_X, e.ABS_Y) and p.rel_axes == (e.REL_WHEEL, e.REL_HWHEEL)


def test_plain_key(devices: UinputDevices) -> None:
    sink = UinputSink(devices, 1024, 768)
    sink.key(XK_a, True)
    sink.key(XK_a, False)
    assert kbd(devices).take() == key_syn(e.KEY_A, 1) + key_syn(e.KEY_A, 0)


def test_capital_without_shift_presses_shift_around(devices: UinputDevices) -> None:
    sink = UinputSink(devices, 1024, 768)
    sink.key(XK_A, True)
    sink.key(XK_A, False)
    assert kbd(devices).take() == (
        key_syn(e.KEY_LEFTSHIFT, 1) + key_syn(e.KEY_A, 1) + key_syn(e.KEY_LEFTSHIFT, 0) + key_syn(e.KEY_A, 0)
    )


def test_lower_case_with_shift_held_releases_shift_around(devices: UinputDevices) -> None:
    sink = UinputSink(devices, 1024, 768)
    sink.key(XK_Shift_L, True)
    sink.key(XK_a, True)
    sink.key(XK_a, False)
    sink.key(XK_Shift_L, False)
    assert kbd(devices).take() == (
        key_syn(e.KEY_LEFTSHIFT, 1)
        + key_syn(e.KEY_LEFTSHIFT, 0) + key_syn(e.KEY_A, 1) + key_syn(e.KEY_LEFTSHIFT, 1)
        + key_syn(e.KEY_A, 0)
        + key_syn(e.KEY_LEFTSHIFT, 0)
    )


def test_capital_with_shift_held_is_plain(devices: UinputDevices) -> None:
    sink = UinputSink(devices, 1024, 768)
    sink.key(XK_Shift_L, True)
    kbd(devices).take()
    sink.key(XK_A, True)
    assert kbd(devices).take() == key_syn(e.KEY_A, 1)


def test_shift_tab_keeps_the_clients_shift(devices: UinputDevices) -> None:
    sink = UinputSink(devices, 1024, 768)
    sink.key(XK_Shift_L, True)
    kbd(devices).take()
    sink.key(XK_Tab, True)
    assert kbd(devices).take() == key_syn(e.KEY_TAB, 1)


def test_caps_lock_led_from_the_compositor_is_honoured(devices: UinputDevices) -> None:
    sink = UinputSink(devices, 1024, 768)
    kbd(devices).pending_feedback.append((e.EV_LED, e.LED_CAPSL, 1))
    sink.key(XK_a, True)
    assert kbd(devices).take() == key_syn(e.KEY_LEFTSHIFT, 1) + key_syn(e.KEY_A, 1) + key_syn(e.KEY_LEFTSHIFT, 0)
    sink.key(XK_a, False)
    kbd(devices).pending_feedback.append((e.EV_LED, e.LED_CAPSL, 0))
    kbd(devices).take()
    sink.key(XK_a, True)
    assert kbd(devices).take() == key_syn(e.KEY_A, 1)


def test_keypad_digit_syncs_num_lock_once(devices: UinputDevices) -> None:
    sink = UinputSink(devices, 1024, 768)
    sink.key(XK_KP_1, True)
    sink.key(XK_KP_1, False)
    sink.key(XK_KP_2, True)  # Num Lock is believed on now: no second toggle before the LED report
    assert kbd(devices).take() == (
        key_syn(e.KEY_NUMLOCK, 1) + key_syn(e.KEY_NUMLOCK, 0) + key_syn(e.KEY_KP1, 1)
        + key_syn(e.KEY_KP1, 0) + key_syn(e.KEY_KP2, 1)
    )


def test_client_num_lock_key_counts_as_a_toggle(devices: UinputDevices) -> None:
    sink = UinputSink(devices, 1024, 768)
    sink.key(XK_Num_Lock, True)
    sink.key(XK_Num_Lock, False)
    kbd(devices).take()
    sink.key(XK_KP_1, True)
    assert kbd(devices).take() == key_syn(e.KEY_KP1, 1)


def test_auto_repeat_from_the_client_is_one_press(devices: UinputDevices) -> None:
    sink = UinputSink(devices, 1024, 768)
    for _ in range(3):
        sink.key(XK_b, True)
    sink.key(XK_b, False)
    assert kbd(devices).take() == key_syn(e.KEY_B, 1) + key_syn(e.KEY_B, 0)


def test_release_under_another_keysym(devices: UinputDevices) -> None:
    sink = UinputSink(devices, 1024, 768)
    sink.key(XK_a, True)  # 'a' down, then Shift, then the client reports the release as 'A'
    sink.key(XK_Shift_L, True)
    sink.key(XK_A, False)
    sink.key(XK_Shift_L, False)
    assert kbd(devices).take() == (
        key_syn(e.KEY_A, 1) + key_syn(e.KEY_LEFTSHIFT, 1) + key_syn(e.KEY_A, 0) + key_syn(e.KEY_LEFTSHIFT, 0)
    )
    assert sink.held_keys == frozenset()


def test_release_of_a_key_never_pressed_sends_nothing(devices: UinputDevices) -> None:
    sink = UinputSink(devices, 1024, 768)
    sink.key(XK_a, False)
    sink.key(XK_eacute, True)  # not on the US layout: ignored
    sink.key(XK_eacute, False)
    assert kbd(devices).take() == []


def test_scancode_presses_the_key_without_shift_games(devices: UinputDevices) -> None:
    sink = UinputSink(devices, 1024, 768)
    sink.key_scancode(XK_A, 0x1E, True)
    sink.key_scancode(XK_A, 0x1E, False)
    sink.key_scancode(0xFF52, 0xC8, True)  # Up, E0 48
    sink.key_scancode(0xFF52, 0xE048, False)  # the two-byte form releases the same key
    assert kbd(devices).take() == (
        key_syn(e.KEY_A, 1) + key_syn(e.KEY_A, 0) + key_syn(e.KEY_UP, 1) + key_syn(e.KEY_UP, 0)
    )


def test_unknown_scancode_falls_back_to_the_keysym(devices: UinputDevices) -> None:
    sink = UinputSink(devices, 1024, 768)
    sink.key_scancode(XK_b, 0x00, True)
    assert kbd(devices).take() == key_syn(e.KEY_B, 1)


def test_release_all_lets_go_of_keys_and_buttons(devices: UinputDevices) -> None:
    sink = UinputSink(devices, 1024, 768)
    sink.key(XK_Control_L, True)
    sink.key(XK_a, True)
    sink.key_scancode(0, 0x2A, True)  # left Shift by scancode
    sink.pointer(10, 10, 0b101)
    kbd(devices).take()
    ptr(devices).take()
    sink.release_all()
    assert sorted(kbd(devices).take()) == sorted(
        key_syn(e.KEY_LEFTCTRL, 0) + key_syn(e.KEY_A, 0) + key_syn(e.KEY_LEFTSHIFT, 0)
    )
    assert ptr(devices).take() == [key(e.BTN_LEFT, 0), key(e.BTN_RIGHT, 0), SYN]
    sink.release_all()
    assert kbd(devices).take() == [] and ptr(devices).take() == []


def test_two_sinks_share_a_key(devices: UinputDevices) -> None:
    first, second = UinputSink(devices, 1024, 768), UinputSink(devices, 1024, 768)
    first.key(XK_Control_L, True)
    second.key(XK_Control_L, True)
    second.key(XK_Control_L, False)
    second.release_all()
    assert kbd(devices).take() == key_syn(e.KEY_LEFTCTRL, 1)  # still held by the first client
    first.release_all()
    assert kbd(devices).take() == key_syn(e.KEY_LEFTCTRL, 0)


def test_pointer_buttons_and_wheel(devices: UinputDevices) -> None:
    sink = UinputSink(devices, 1024, 768)
    mid = abs_position(512, 384, 1024, 768, PointerArea.whole(1024, 768))
    move = [(e.EV_ABS, e.ABS_X, mid[0]), (e.EV_ABS, e.ABS_Y, mid[1])]
    sink.pointer(512, 384, 0b001)
    sink.pointer(512, 384, 0b000)
    sink.pointer(512, 384, 0b010)
    sink.pointer(512, 384, 0b110)
    sink.pointer(512, 384, 0b000)
    assert ptr(devices).take() == [
        *move, key(e.BTN_LEFT, 1), SYN,
        *move, key(e.BTN_LEFT, 0), SYN,
        *move, key(e.BTN_MIDDLE, 1), SYN,
        *move, key(e.BTN_RIGHT, 1), SYN,
        *move, key(e.BTN_MIDDLE, 0), key(e.BTN_RIGHT, 0), SYN,
    ]
    for bit, axis, value in ((3, e.REL_WHEEL, 1), (4, e.REL_WHEEL, -1), (5, e.REL_HWHEEL, -1), (6, e.REL_HWHEEL, 1)):
        sink.pointer(512, 384, 1 << bit)  # press: one detent
        sink.pointer(512, 384, 1 << bit)  # still held: nothing
        sink.pointer(512, 384, 0)  # release: nothing
        assert ptr(devices).take() == [*move, (e.EV_REL, axis, value), SYN, *move, SYN, *move, SYN]


def test_abs_position_aims_at_pixel_centres() -> None:
    for width in (640, 1024, 1366, 1920, 3840, 7680):
        xs = np.arange(width)
        ax = np.array([abs_position(int(x), 0, width, 1, PointerArea.whole(width, 1))[0] for x in xs])
        assert ax.min() >= 0 and ax.max() <= ABS_RANGE - 1
        back = ax * width / ABS_RANGE  # libinput: (value - min) * width / (max - min + 1)
        assert np.array_equal(np.floor(back).astype(int), xs)
        assert np.all(np.abs(back - (xs + 0.5)) <= width / ABS_RANGE)
        assert np.all(np.diff(ax) > 0)


def test_abs_position_follows_the_mode(devices: UinputDevices) -> None:
    sink = UinputSink(devices, 1024, 768)
    sink.pointer(1023, 767, 0)
    sink.set_screen(1920, 1080)
    sink.pointer(1919, 1079, 0)
    sink.pointer(960, 540, 0)
    assert ptr(devices).take() == [
        (e.EV_ABS, e.ABS_X, 32752), (e.EV_ABS, e.ABS_Y, 32746), SYN,  # 1023.5 / 1024 and 767.5 / 768
        (e.EV_ABS, e.ABS_X, 32759), (e.EV_ABS, e.ABS_Y, 32752), SYN,  # 1919.5 / 1920 and 1079.5 / 1080
        (e.EV_ABS, e.ABS_X, 16392), (e.EV_ABS, e.ABS_Y, 16399), SYN,  # 960.5 / 1920, 540.5 / 1080
    ]


def test_positions_outside_the_screen_are_clamped() -> None:
    area = PointerArea.whole(800, 600)
    assert abs_position(-5, 10_000, 800, 600, area) == abs_position(0, 599, 800, 600, area)


def test_second_connector_maps_into_its_own_area() -> None:
    # XR-0 (1024x768) at the right of a 1920x1080 output: desktop 2944 x 1080.
    area = PointerArea(1920, 0, 1024, 768, 2944, 1080)
    ax, ay = abs_position(0, 0, 1024, 768, area)
    assert int(ax * 2944 / ABS_RANGE) == 1920 and int(ay * 1080 / ABS_RANGE) == 0
    ax, ay = abs_position(1023, 767, 1024, 768, area)
    assert int(ax * 2944 / ABS_RANGE) == 2943 and int(ay * 1080 / ABS_RANGE) == 767


def test_area_source_follows_the_compositors_layout(devices: UinputDevices) -> None:
    """XR-1 scanned out at x=1024 of Xorg's one 2048x768 framebuffer: the pointer lands in its half, and
    follows when the layout changes (xrandr --pos) or becomes unknown (no signal: the whole desktop)."""
    placement = Placement(1024, 0, 1024, 768, 2048, 768)
    current: list[Placement | None] = [placement]
    sink = UinputSink(devices, 1024, 768, area_source=lambda: area_of(current[0]))
    sink.pointer(0, 0, 0)
    current[0] = Placement(0, 0, 1024, 768, 2048, 768)
    sink.pointer(0, 0, 0)
    current[0] = None
    sink.pointer(0, 0, 0)
    xs = [v for t, c, v in ptr(devices).take() if (t, c) == (e.EV_ABS, e.ABS_X)]
    assert [int(x * 2048 / ABS_RANGE) for x in xs[:2]] == [1024, 0]
    assert int(xs[2] * 1024 / ABS_RANGE) == 0
    assert area_of(Placement(1024, 0, 1024, 768, 1024, 768)) is None  # nonsense: outside its framebuffer


def test_bad_areas_are_refused(devices: UinputDevices) -> None:
    with pytest.raises(InputDeviceError):
        PointerArea(1000, 0, 1024, 768, 1920, 1080)
    with pytest.raises(InputDeviceError):
        PointerArea(0, 0, 0, 768, 1920, 1080)
    with pytest.raises(InputDeviceError):
        UinputSink(devices, 0, 768)


def test_clipboard_sends_nothing(devices: UinputDevices) -> None:
    UinputSink(devices, 1024, 768).clipboard("hello")
    assert kbd(devices).take() == [] and ptr(devices).take() == []


def test_create_owns_and_closes_its_devices() -> None:
    sink = UinputSink.create(1024, 768, factory=RecordingDevice)
    sink.key(XK_a, True)
    sink.close()
    assert kbd(sink.devices).events[-2:] == key_syn(e.KEY_A, 0)
    assert kbd(sink.devices).closed and ptr(sink.devices).closed


def test_missing_uinput_is_a_clear_error(tmp_path: object) -> None:
    with pytest.raises(InputDeviceError, match="does not exist"):
        EvdevUinputDevice(keyboard_spec("x"), uinput_path="/nonexistent/uinput")
    with pytest.raises(InputDeviceError, match="not a character device"):
        EvdevUinputDevice(keyboard_spec("x"), uinput_path="/etc/hostname")

"""VNC keyboard and pointer events -> a uinput keyboard and absolute pointer the compositor picks up.

Theory of operation
-------------------
``UinputDevices`` owns two kernel input devices made through /dev/uinput (python-evdev): a keyboard
(every key the US keymap can press, plus Caps/Num/Scroll Lock LEDs so the compositor reports its lock
state back to us) and an absolute pointer (ABS_X/ABS_Y over a fixed 0..32767 range, BTN_LEFT/MIDDLE/RIGHT,
REL_WHEEL/REL_HWHEEL). The compositor (Xorg with libinput, weston, ...) hot-plugs them through udev.

``UinputSink`` is the InputSink one VNC client drives. Several sinks may share one set of devices (one
per client, or one per connector): the devices count presses per key and button, so a key goes up on the
device only when every sink holding it let go, and ``release_all()`` (called when a client leaves) lets go
of exactly what that sink pressed.

Pointer coordinates: the pointer's range is fixed and each sink scales into it, because a uinput
device's axis range cannot change after creation (a new device per mode change would be a hot-unplug and
re-plug in the compositor). An absolute device spans the compositor's whole desktop (Xorg: the root
window, all outputs); ``PointerArea`` says where the connector's picture lies in it, so with several
connectors each sink maps into its own connector's rectangle. Positions aim at pixel centres, so any
rounding of abs * width / 32768 by the compositor lands on the intended pixel (range > 2 x width).
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from evdev import ecodes

from vkmsremote.errors import InputDeviceError, PermissionDeniedError
from vkmsremote.frame import Placement
from vkmsremote.input.keymap import US, Keymap, KeyPress, State
from vkmsremote.input.spare import SPARE_CODES, XSpareKeys

if TYPE_CHECKING:
    from vkmsremote.input.clipboard import DesktopClipboard

log = logging.getLogger(__name__)

ABS_RANGE: Final = 32768
"""The pointer's ABS_X / ABS_Y run over 0 .. ABS_RANGE - 1 (as QEMU's USB tablet)."""

UINPUT_PATH: Final = "/dev/uinput"

# RFC 6143 7.5.5: button-mask bit n is button n+1; 1 left, 2 middle, 3 right, 4/5 wheel up/down,
# 6/7 wheel left/right (X11 convention). A wheel "button" press is one detent.
BUTTON_CODES: Final = ((0, ecodes.BTN_LEFT), (1, ecodes.BTN_MIDDLE), (2, ecodes.BTN_RIGHT))
WHEEL_CLICKS: Final = (
    (3, ecodes.REL_WHEEL, 1),
    (4, ecodes.REL_WHEEL, -1),
    (5, ecodes.REL_HWHEEL, -1),
    (6, ecodes.REL_HWHEEL, 1),
)
SHIFT_CODES: Final = (ecodes.KEY_LEFTSHIFT, ecodes.KEY_RIGHTSHIFT)
LOCK_KEYS: Final = {ecodes.KEY_CAPSLOCK: State.CAPS_LOCK, ecodes.KEY_NUMLOCK: State.NUM_LOCK}
LOCK_LEDS: Final = {ecodes.LED_CAPSL: State.CAPS_LOCK, ecodes.LED_NUML: State.NUM_LOCK}
_BUTTON_RANGE: Final = range(ecodes.BTN_MISC, ecodes.KEY_OK)  # 0x100-0x15f: buttons, not keyboard keys


# --- the kernel side, behind a small interface so the logic can be tested with a recorder ---------------


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """What a uinput device can send: key codes, absolute axes (0 .. ABS_RANGE-1), relative axes, LEDs."""

    name: str
    keys: tuple[int, ...] = ()
    abs_axes: tuple[int, ...] = ()
    rel_axes: tuple[int, ...] = ()
    leds: tuple[int, ...] = ()


class UinputDevice(Protocol):
    """One created uinput device."""

    @property
    def path(self) -> str:
        """Its event node, /dev/input/eventN."""
        ...

    def write(self, etype: int, code: int, value: int) -> None: ...

    def syn(self) -> None: ...

    def feedback(self) -> list[tuple[int, int, int]]:
        """(type, code, value) the kernel handed back since the last call: LED changes the compositor made."""
        ...

    def close(self) -> None: ...


DeviceFactory = Callable[[DeviceSpec], UinputDevice]


class EvdevUinputDevice:
    """A UinputDevice made with python-evdev's UInput."""

    def __init__(self, spec: DeviceSpec, *, uinput_path: str = UINPUT_PATH) -> None:
        from evdev import AbsInfo, UInput, UInputError

        _check_uinput(uinput_path)
        events: dict[int, list[object]] = {}
        if spec.keys:
            events[ecodes.EV_KEY] = list(spec.keys)
        if spec.abs_axes:
            info = AbsInfo(value=0, min=0, max=ABS_RANGE - 1, fuzz=0, flat=0, resolution=0)
            events[ecodes.EV_ABS] = [(axis, info) for axis in spec.abs_axes]
        if spec.rel_axes:
            events[ecodes.EV_REL] = list(spec.rel_axes)
        if spec.leds:
            events[ecodes.EV_LED] = list(spec.leds)
        try:
            self._ui = UInput(events, name=spec.name, bustype=ecodes.BUS_VIRTUAL,  # type: ignore[arg-type]
                              vendor=0, product=0, version=1, devnode=uinput_path, phys="vkmsremote")
        except (OSError, UInputError) as exc:
            raise InputDeviceError(f"cannot create uinput device {spec.name!r}: {exc}",
                                   hint="the kernel needs CONFIG_INPUT_UINPUT and CONFIG_INPUT_EVDEV") from exc
        # python-evdev opens the new event node for us; we never read it, so let it go.
        self._path = str(self._ui.device.path) if self._ui.device is not None else ""
        if self._ui.device is not None:
            self._ui.device.close()
        self.name = spec.name

    @property
    def path(self) -> str:
        return self._path

    def write(self, etype: int, code: int, value: int) -> None:
        try:
            self._ui.write(etype, code, value)
        except OSError as exc:
            raise InputDeviceError(f"writing to uinput device {self.name!r} failed: {exc}") from exc

    def syn(self) -> None:
        self.write(ecodes.EV_SYN, ecodes.SYN_REPORT, 0)

    def feedback(self) -> list[tuple[int, int, int]]:
        out: list[tuple[int, int, int]] = []
        try:
            for event in self._ui.read():
                out.append((event.type, event.code, event.value))
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise InputDeviceError(f"reading uinput device {self.name!r} failed: {exc}") from exc
        return out

    def close(self) -> None:
        self._ui.close()


def _check_uinput(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputDeviceError(f"{path} does not exist",
                               hint="modprobe uinput (kernel option CONFIG_INPUT_UINPUT)") from None
    if not stat.S_ISCHR(mode):
        raise InputDeviceError(f"{path} is not a character device")
    if not os.access(path, os.R_OK | os.W_OK):
        raise PermissionDeniedError(f"no read/write access to {path}",
                                    hint="run as root or give this user access to /dev/uinput")


# --- device state shared by every sink -----------------------------------------------------------------


class Keyboard:
    """The uinput keyboard: counts presses per code across sinks and tracks the target's lock state."""

    def __init__(self, device: UinputDevice, keymap: Keymap = US,
                 keymap_source: Callable[[], Keymap] | None = None, spare: XSpareKeys | None = None) -> None:
        self.device = device
        self.keymap = keymap
        self.keymap_source = keymap_source  # e.g. input.layout.LayoutSource: the desktop's current layout
        self.spare = spare  # keysyms the layout lacks, on a spare key remapped for them (input.spare)
        self._down: collections.Counter[int] = collections.Counter()
        self._locks = State.NONE

    def refresh_keymap(self) -> Keymap:
        """The keymap to plan the next key press with (follows the desktop's layout if a source is set)."""
        if self.keymap_source is not None:
            self.keymap = self.keymap_source()
        return self.keymap

    @property
    def state(self) -> State:
        """Shift held on this device, and the lock state the compositor last reported (or we caused)."""
        for etype, code, value in self.device.feedback():
            if etype == ecodes.EV_LED and code in LOCK_LEDS:
                self._locks = self._locks | LOCK_LEDS[code] if value else self._locks & ~LOCK_LEDS[code]
        shift = State.SHIFT if any(self._down[c] for c in SHIFT_CODES) else State.NONE
        level3 = self.keymap.level3_code
        if level3 is not None and self._down[level3]:
            shift |= State.LEVEL3
        return shift | self._locks

    def is_down(self, code: int) -> bool:
        return self._down[code] > 0

    def _emit(self, code: int, down: bool) -> None:
        self.device.write(ecodes.EV_KEY, code, 1 if down else 0)
        self.device.syn()
        if down and code in LOCK_KEYS:
            # Believe the toggle at once; the LED report from the compositor follows later and wins.
            self._locks ^= LOCK_KEYS[code]

    def press(self, code: int) -> None:
        self._down[code] += 1
        if self._down[code] == 1:
            self._emit(code, True)

    def release(self, code: int) -> None:
        if self._down[code] <= 0:
            return
        self._down[code] -= 1
        if self._down[code] == 0:
            del self._down[code]
            self._emit(code, False)

    def plan(self, keysym: int) -> KeyPress | None:
        """How to type ``keysym`` now: with the desktop's layout, else on a spare key (None: dropped)."""
        keymap = self.refresh_keymap()
        plan = keymap.plan(keysym, self.state)
        if self.spare is not None and (plan is None or plan.code in self.spare.assigned_codes):
            # (the layout read back after a remap shows our spare key; it may be reassigned since)
            return self.spare.plan(keysym, keymap, self.is_down)
        return plan

    def press_planned(self, plan: KeyPress) -> None:
        """Press ``plan.code`` with the Shift/AltGr/Num Lock adjustments the keymap asked for."""
        if plan.toggle_num_lock and not self.is_down(ecodes.KEY_NUMLOCK):
            self._emit(ecodes.KEY_NUMLOCK, True)
            self._emit(ecodes.KEY_NUMLOCK, False)
        level3 = self.keymap.level3_code
        around: list[tuple[int, bool]] = []  # (code, pressed for the key: True) set before, undone after
        if plan.shift is True:
            around.append((ecodes.KEY_LEFTSHIFT, True))
        elif plan.shift is False:
            around += [(c, False) for c in SHIFT_CODES if self.is_down(c)]
        if level3 is not None and plan.level3 is True:
            around.append((level3, True))
        elif level3 is not None and plan.level3 is False and self.is_down(level3):
            around.append((level3, False))
        for code, down in around:
            self._emit(code, down)
        self.press(plan.code)
        for code, down in reversed(around):
            self._emit(code, not down)


class Pointer:
    """The uinput absolute pointer: position, buttons counted across sinks, wheel detents."""

    def __init__(self, device: UinputDevice) -> None:
        self.device = device
        self._down: collections.Counter[int] = collections.Counter()

    def move(self, abs_x: int, abs_y: int) -> None:
        # The input core drops an axis event whose value did not change (drivers/input/input.c).
        self.device.write(ecodes.EV_ABS, ecodes.ABS_X, abs_x)
        self.device.write(ecodes.EV_ABS, ecodes.ABS_Y, abs_y)

    def button(self, code: int, down: bool) -> None:
        if down:
            self._down[code] += 1
            if self._down[code] == 1:
                self.device.write(ecodes.EV_KEY, code, 1)
        elif self._down[code] > 0:
            self._down[code] -= 1
            if self._down[code] == 0:
                del self._down[code]
                self.device.write(ecodes.EV_KEY, code, 0)

    def wheel(self, axis: int, detents: int) -> None:
        self.device.write(ecodes.EV_REL, axis, detents)

    def syn(self) -> None:
        self.device.syn()


def keyboard_spec(name: str, keymap: Keymap = US) -> DeviceSpec:
    codes = tuple(sorted(c for c in keymap.codes | set(SPARE_CODES)
                         if 0 < c <= ecodes.KEY_MAX and c not in _BUTTON_RANGE))
    leds = (ecodes.LED_NUML, ecodes.LED_CAPSL, ecodes.LED_SCROLLL)
    return DeviceSpec(f"{name} keyboard", keys=codes, leds=leds)


def pointer_spec(name: str) -> DeviceSpec:
    return DeviceSpec(
        f"{name} pointer",
        keys=tuple(code for _, code in BUTTON_CODES),
        abs_axes=(ecodes.ABS_X, ecodes.ABS_Y),
        rel_axes=(ecodes.REL_WHEEL, ecodes.REL_HWHEEL),
    )


class UinputDevices:
    """The keyboard and pointer one vkmsremote server (or one connector) injects through."""

    def __init__(self, keyboard: Keyboard, pointer: Pointer) -> None:
        self.keyboard = keyboard
        self.pointer = pointer
        self.clipboard: DesktopClipboard | None = None
        """Where the clients' clipboard text goes (vkmsremote.input.clipboard); None: dropped."""

    @classmethod
    def open(cls, name: str = "vkmsremote", *, keymap: Keymap = US,
             factory: DeviceFactory = EvdevUinputDevice, follow_layout: bool = False) -> UinputDevices:
        """``follow_layout``: plan keys with the desktop's own keymap (vkmsremote.input.layout), re-read
        every few seconds, instead of ``keymap`` alone."""
        keyboard_device = factory(keyboard_spec(name, keymap))
        try:
            pointer_device = factory(pointer_spec(name))
        except BaseException:
            keyboard_device.close()
            raise
        log.info("uinput keyboard %s, pointer %s", keyboard_device.path, pointer_device.path)
        source = spare = None
        if follow_layout:
            from vkmsremote.input.layout import LayoutSource

            source = LayoutSource(background=True)
            spare = XSpareKeys(lambda: source.x_display, wayland=lambda: source.wayland)
        return cls(Keyboard(keyboard_device, keymap, source, spare), Pointer(pointer_device))

    def close(self) -> None:
        if self.keyboard.spare is not None:
            self.keyboard.spare.close()
        close_source = getattr(self.keyboard.keymap_source, "close", None)
        if close_source is not None:
            close_source()
        self.keyboard.device.close()
        self.pointer.device.close()


# --- per client --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PointerArea:
    """Where a connector's picture lies in the desktop an absolute pointer spans, in desktop pixels."""

    x: int
    y: int
    width: int
    height: int
    desktop_width: int
    desktop_height: int

    def __post_init__(self) -> None:
        if min(self.width, self.height, self.desktop_width, self.desktop_height) <= 0 or min(self.x, self.y) < 0:
            raise InputDeviceError(f"pointer area {self} must have positive sizes and offsets >= 0")
        if self.x + self.width > self.desktop_width or self.y + self.height > self.desktop_height:
            raise InputDeviceError(f"pointer area {self} does not fit in its desktop")

    @classmethod
    def whole(cls, width: int, height: int) -> PointerArea:
        return cls(0, 0, width, height, width, height)


def area_of(placement: Placement | None) -> PointerArea | None:
    """The PointerArea of a capture reader's placement (vkmsremote.frame.Placement): where the
    connector's picture lies in the framebuffer it is scanned out of. None if unknown or nonsensical."""
    if placement is None:
        return None
    try:
        return PointerArea(placement.x, placement.y, placement.width, placement.height, placement.fb_width,
                           placement.fb_height)
    except InputDeviceError:
        return None


def abs_position(x: int, y: int, width: int, height: int, area: PointerArea) -> tuple[int, int]:
    """The ABS_X/ABS_Y that point at the centre of framebuffer pixel (x, y) of a width x height screen.

    The screen is stretched over ``area`` (normally the same size) and the desktop over 0..ABS_RANGE-1.
    Integer arithmetic: abs = (area.x + (x + 0.5) * area.width / width) * ABS_RANGE / desktop_width.
    """
    x = min(max(x, 0), width - 1)
    y = min(max(y, 0), height - 1)
    ax = ((2 * x + 1) * area.width + 2 * area.x * width) * ABS_RANGE // (2 * width * area.desktop_width)
    ay = ((2 * y + 1) * area.height + 2 * area.y * height) * ABS_RANGE // (2 * height * area.desktop_height)
    return min(ax, ABS_RANGE - 1), min(ay, ABS_RANGE - 1)


@dataclass(slots=True)
class _Held:
    codes: set[int] = field(default_factory=set)
    by_keysym: dict[int, int] = field(default_factory=dict)
    buttons: set[int] = field(default_factory=set)
    mask: int = 0


class UinputSink:
    """An InputSink for one VNC client (vkmsremote.server.input.InputSink).

    ``width`` x ``height`` is the connector's current mode (``set_screen`` follows mode changes);
    ``area`` places it in the pointer's desktop (default: the connector is the whole desktop);
    ``area_source``, if given, is asked at every pointer event and overrides it when it knows better
    (:func:`area_of` a capture reader's placement: the connector's place follows the compositor's layout).
    """

    def __init__(self, devices: UinputDevices, width: int, height: int, area: PointerArea | None = None,
                 *, owns_devices: bool = False, area_source: Callable[[], PointerArea | None] | None = None) -> None:
        self.devices = devices
        self._owns_devices = owns_devices
        self._area_source = area_source
        self._held = _Held()
        self.width, self.height, self.area = width, height, PointerArea.whole(width, height)
        self.set_screen(width, height, area)

    @classmethod
    def create(cls, width: int, height: int, *, name: str = "vkmsremote",
               factory: DeviceFactory = EvdevUinputDevice) -> UinputSink:
        """A sink with its own devices, closed with it (one client, one connector)."""
        return cls(UinputDevices.open(name, factory=factory), width, height, owns_devices=True)

    def set_screen(self, width: int, height: int, area: PointerArea | None = None) -> None:
        """The connector's mode changed (and, with several connectors, maybe its place in the desktop)."""
        if width <= 0 or height <= 0:
            raise InputDeviceError(f"screen size {width}x{height} must be positive")
        self.width, self.height = width, height
        self.area = area if area is not None else PointerArea.whole(width, height)

    # InputSink ---------------------------------------------------------------------------------------

    def key(self, keysym: int, down: bool) -> None:
        keyboard = self.devices.keyboard
        if not down:
            self._release_keysym(keysym)
            return
        plan = keyboard.plan(keysym)
        if plan is None:
            return
        if plan.code in self._held.codes:
            self._held.by_keysym[keysym] = plan.code
            return  # the client's auto-repeat: the key is down already, the compositor repeats it
        keyboard.press_planned(plan)
        self._held.codes.add(plan.code)
        self._held.by_keysym[keysym] = plan.code

    def key_scancode(self, keysym: int, keycode: int, down: bool) -> None:
        keyboard = self.devices.keyboard
        code = keyboard.keymap.scancode(keycode)
        if code is None:
            self.key(keysym, down)
            return
        if down:
            if code not in self._held.codes:
                keyboard.press(code)
                self._held.codes.add(code)
        elif code in self._held.codes:
            self._release_code(code)

    def pointer(self, x: int, y: int, buttons: int) -> None:
        pointer = self.devices.pointer
        area = self._area_source() if self._area_source is not None else None
        pointer.move(*abs_position(x, y, self.width, self.height, area or self.area))
        pressed = buttons & ~self._held.mask
        for bit, code in BUTTON_CODES:
            if buttons & (1 << bit) and code not in self._held.buttons:
                pointer.button(code, True)
                self._held.buttons.add(code)
            elif not buttons & (1 << bit) and code in self._held.buttons:
                pointer.button(code, False)
                self._held.buttons.discard(code)
        for bit, axis, detents in WHEEL_CLICKS:
            if pressed & (1 << bit):
                pointer.wheel(axis, detents)
        self._held.mask = buttons
        pointer.syn()

    def clipboard(self, text: str) -> None:
        desktop = self.devices.clipboard
        if desktop is None:
            log.debug("clipboard text (%d chars) dropped: no desktop clipboard", len(text))
            return
        desktop.set(text)

    # Leaving -------------------------------------------------------------------------------------------

    def release_all(self) -> None:
        """Let go of every key and button this sink holds (the client disconnected)."""
        for code in sorted(self._held.codes):
            self.devices.keyboard.release(code)
        if self._held.buttons:
            for code in sorted(self._held.buttons):
                self.devices.pointer.button(code, False)
            self.devices.pointer.syn()
        self._held = _Held()

    def close(self) -> None:
        self.release_all()
        if self._owns_devices:
            self.devices.close()

    @property
    def held_keys(self) -> frozenset[int]:
        return frozenset(self._held.codes)

    # ---------------------------------------------------------------------------------------------------

    def _release_keysym(self, keysym: int) -> None:
        code = self._held.by_keysym.get(keysym)
        if code is None:
            # Released under another keysym than it was pressed with ('a' down, Shift, 'A' up).
            code = self.devices.keyboard.keymap.code_for(keysym)
        if code is not None and code in self._held.codes:
            self._release_code(code)

    def _release_code(self, code: int) -> None:
        self.devices.keyboard.release(code)
        self._held.codes.discard(code)
        for keysym in [k for k, c in self._held.by_keysym.items() if c == code]:
            del self._held.by_keysym[keysym]


"""Keyboard and pointer injection: VNC input events -> uinput devices the compositor hot-plugs."""

from vkmsremote.input.keymap import US, Keymap, KeyPress, State
from vkmsremote.input.uinput import PointerArea, UinputDevices, UinputSink, area_of

__all__ = ["US", "KeyPress", "Keymap", "PointerArea", "State", "UinputDevices", "UinputSink", "area_of"]

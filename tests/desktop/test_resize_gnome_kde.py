"""GNOME Shell (MutterResizer) resize against a recorded D-Bus peer, and the layout arithmetic KWin's shares.

The real ones are in tests/guest/test_desktops_guest.py (GNOME Shell 48 and KWin 6.3 in the booted guest,
a VNC client's SetDesktopSize); here the busctl calls are checked against GetCurrentState answers in busctl's
JSON form: the mode chosen, the monitors right of XR-0 moved, the refusal of an unlisted size, the original
layout put back by undo.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from vkmsremote.desktop.resize import (
    APPLY_SIGNATURE,
    MutterResizer,
    parse_mutter_state,
    relayout,
    shift_neighbours,
)
from vkmsremote.frame import ResizeStatus


def _mode(mid: str, w: int, h: int, rate: float, current: bool) -> list[Any]:
    return [mid, w, h, rate, 1.0, [1.0], {"is-current": {"type": "b", "data": current}} if current else {}]


def state_json(serial: int, xr0: tuple[int, int], xr1_x: int) -> str:
    """Virtual-1 (XR-0) at 0,0 in mode ``xr0``; Virtual-2 (XR-1) 1024x768 at ``xr1_x``,0."""
    sizes = [(1024, 768), (1280, 720), (1920, 1080)]
    monitors = [
        [["Virtual-1", "unknown", "unknown", "unknown"],
         [_mode(f"{w}x{h}@60.000", w, h, 60.0, (w, h) == xr0) for w, h in sizes], {}],
        [["Virtual-2", "unknown", "unknown", "unknown"],
         [_mode(f"{w}x{h}@60.000", w, h, 60.0, (w, h) == (1024, 768)) for w, h in sizes], {}],
    ]
    logical = [[0, 0, 1.0, 0, True, [["Virtual-1", "unknown", "unknown", "unknown"]], {}],
               [xr1_x, 0, 1.0, 0, False, [["Virtual-2", "unknown", "unknown", "unknown"]], {}]]
    return json.dumps({"type": "ua((ssss)a(siiddada{sv})a{sv})a(iiduba(ssss)a{sv})a{sv}",
                       "data": [serial, monitors, logical, {}]})


class FakeMutter:
    def __init__(self) -> None:
        self.serial, self.xr0, self.xr1_x = 7, (1024, 768), 1024
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        call = argv[argv.index("call"):]
        self.calls.append(call)
        if call[4] == "ApplyMonitorsConfig":
            args = call[6:]
            assert args[0] == str(self.serial)  # the serial of the state it read
            # 2 logical monitors: x y scale transform primary n connector mode nprops
            self.xr0 = tuple(int(v) for v in args[10].split("@")[0].split("x"))  # type: ignore[assignment]
            self.xr1_x = int(args[12])
            self.serial += 1
            return subprocess.CompletedProcess(argv, 0, "{}", "")
        return subprocess.CompletedProcess(argv, 0, state_json(self.serial, self.xr0, self.xr1_x), "")


def test_parse_and_relayout() -> None:
    state = parse_mutter_state(state_json(3, (1024, 768), 1024))
    assert state.serial == 3 and state.current("Virtual-1").id == "1024x768@60.000"  # type: ignore[union-attr]
    assert [lm.connectors for lm in state.logical] == [("Virtual-1",), ("Virtual-2",)]
    assert relayout(state, "Virtual-1", 1920, 1080) == {1: (1920, 0)}
    assert relayout(state, "Virtual-2", 1920, 1080) == {}  # nothing right of or below XR-1


def test_resize_through_display_config_and_undo() -> None:
    fake = FakeMutter()
    resizer = MutterResizer("unix:path=/run/user/1000/bus", 1000, 1000, "Virtual-1", run=fake)
    assert resizer.resize(1920, 1080) is ResizeStatus.OK
    assert (fake.xr0, fake.xr1_x) == ((1920, 1080), 1920)  # XR-1 moved right by the change: still adjacent
    apply = next(c for c in fake.calls if c[4] == "ApplyMonitorsConfig")
    assert apply[:6] == ["call", "org.gnome.Mutter.DisplayConfig", "/org/gnome/Mutter/DisplayConfig",
                         "org.gnome.Mutter.DisplayConfig", "ApplyMonitorsConfig", APPLY_SIGNATURE]
    assert apply[6:9] == ["7", "1", "2"]  # serial, temporary (no dialog, nothing persisted), 2 logical monitors
    assert resizer.resize(1366, 1024) is ResizeStatus.OUT_OF_RESOURCES  # not a mode VKMS lists
    assert resizer.resize(1920, 1080) is ResizeStatus.OK  # already: no call
    resizer.undo()
    assert (fake.xr0, fake.xr1_x) == ((1024, 768), 1024)


def test_busctl_runs_as_the_compositors_user() -> None:
    fake = FakeMutter()
    seen: list[list[str]] = []

    def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        seen.append(argv)
        return fake(argv, env)

    MutterResizer("unix:path=/run/user/1000/bus", 1000, 1001, "Virtual-1", run=run).state()
    assert seen[0][:4] == ["setpriv", "--reuid=1000", "--regid=1001", "--clear-groups"]
    assert "--address=unix:path=/run/user/1000/bus" in seen[0]


def test_shift_neighbours() -> None:
    rects = [(0, 0, 1024, 768), (1024, 0, 1024, 768), (0, 768, 800, 600)]
    assert shift_neighbours(rects, 0, 1280, 1024) == {1: (1280, 0), 2: (0, 1024)}
    assert shift_neighbours(rects, 1, 1920, 1080) == {}

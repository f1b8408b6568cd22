"""The Wayland layout behind KWin's and GNOME Shell's pointer placement (vkmsremote.desktop.wayland).

The wire format is checked without I/O; the layout against a real compositor: headless sway with two
outputs (as root, the way ``serve`` reaches a desktop user's compositor), moved and added while watched.
The binding itself is planned for a DRM master named kwin_wayland / gnome-shell (the names are all
that differs: the compositors need a logind seat and run in the booted guest,
tests/guest/test_desktops_guest.py, where clicks are checked end to end).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from evdev import ecodes
from input.test_uinput_sink import RecordingDevice

from desktop.test_sway_desktop import Sway, headless_sway
from vkmsremote.desktop.binding import Method, apply_binding, plan_binding
from vkmsremote.desktop.clients import DrmClient
from vkmsremote.desktop.wayland import (
    MAX_MESSAGE,
    Args,
    LayoutWatcher,
    Splitter,
    WaylandError,
    encode,
    placement_in,
    wayland_socket_of,
)
from vkmsremote.frame import Placement
from vkmsremote.input.uinput import ABS_RANGE, UinputDevices
from vkmsremote.service.serve import uinput_sink_factory

TWO_OUTPUTS = ("output HEADLESS-1 pos 0 0 mode --custom 1024x768\n"
               "output HEADLESS-2 pos 1024 0 mode --custom 1280x720\n")
ROOT = Path(__file__).resolve().parents[2]


def test_wire_round_trip() -> None:
    msg = encode(7, 3, 42, -5, "Virtual-1", b"\x01\x02\x03", None)
    [(obj, opcode, body)] = Splitter().feed(msg)
    assert (obj, opcode) == (7, 3) and len(msg) % 4 == 0
    args = Args(body)
    assert (args.uint(), args.int(), args.string(), args.array(), args.uint()) == (42, -5, "Virtual-1",
                                                                                   b"\x01\x02\x03", 0)


def test_split_across_reads_and_bad_input_refused() -> None:
    msgs = encode(1, 0, "a") + encode(2, 1, 256 * 3)
    s = Splitter()
    assert s.feed(msgs[:5]) == [] and len(s.feed(msgs[5:])) == 2
    with pytest.raises(WaylandError, match="size 4"):
        Splitter().feed(b"\x01\0\0\0" + (4 << 16).to_bytes(4, sys.byteorder))
    with pytest.raises(WaylandError, match="message limit"):
        encode(1, 0, "x" * MAX_MESSAGE)
    with pytest.raises(WaylandError, match="NUL"):
        Args(b"\x02\0\0\0ab\0\0").string()
    with pytest.raises(WaylandError, match="runs past"):
        Args(b"\xff\0\0\0ab").array()
    with pytest.raises(WaylandError, match="ended inside"):
        Args(b"\x01").uint()


def test_placement_in_the_bounding_box() -> None:
    rects = {"Virtual-1": (0, 0, 1024, 768), "Virtual-2": (1024, 0, 1920, 1080)}
    assert placement_in(rects, "Virtual-1") == Placement(0, 0, 1024, 768, 2944, 1080)
    assert placement_in(rects, "Virtual-2") == Placement(1024, 0, 1920, 1080, 2944, 1080)
    # a layout that does not start at 0,0 (an output left of or above the primary)
    left = {"A": (-1280, 100, 1280, 720), "B": (0, 0, 1024, 768)}
    assert placement_in(left, "B") == Placement(1280, 0, 1024, 768, 2304, 820)
    assert placement_in(rects, "HDMI-A-1") is None


def _wait(check: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_layout_followed_as_outputs_move_and_appear() -> None:
    with headless_sway(TWO_OUTPUTS, outputs=2) as sway:
        sock = wayland_socket_of(sway.pid)
        assert sock == sway.runtime / sway.display
        watcher = LayoutWatcher.open(sock)
        try:
            assert watcher.placement("HEADLESS-1") == Placement(0, 0, 1024, 768, 2304, 768)
            assert watcher.placement("HEADLESS-2") == Placement(1024, 0, 1280, 720, 2304, 768)
            sway.msg("output HEADLESS-2 pos 0 768")
            _wait(lambda: watcher.placement("HEADLESS-2") == Placement(0, 768, 1280, 720, 1280, 1488),
                  f"the move to 0,768 not followed: {watcher.layout.rects()}")
            assert watcher.placement("HEADLESS-1") == Placement(0, 0, 1024, 768, 1280, 1488)
            sway.msg("create_output")  # a third output (a monitor plugged in): placed by sway, seen here
            _wait(lambda: "HEADLESS-3" in watcher.layout.rects(), f"HEADLESS-3 not seen: {watcher.layout.rects()}")
            assert watcher.error is None
        finally:
            watcher.close()


def test_layout_followed_again_after_the_compositor_restarts() -> None:
    """A compositor that goes away (restart, new session) and comes back on the same socket is followed again;
    until then the last layout is used."""
    base = Path(f"/tmp/vkmsremote-sway-restart-{time.monotonic_ns()}")
    with headless_sway(TWO_OUTPUTS, outputs=2, base=base) as sway:
        watcher = LayoutWatcher.open(sway.runtime / sway.display)
        assert watcher.placement("HEADLESS-2") == Placement(1024, 0, 1280, 720, 2304, 768)
    try:
        _wait(lambda: watcher.error is not None, "the lost connection not noticed")
        assert watcher.placement("HEADLESS-2") == Placement(1024, 0, 1280, 720, 2304, 768)
        moved = "output HEADLESS-1 pos 0 0 mode --custom 1024x768\noutput HEADLESS-2 pos 0 768 mode --custom 1280x720\n"
        with headless_sway(moved, outputs=2, base=base) as again:
            assert again.display == sway.display
            _wait(lambda: watcher.placement("HEADLESS-2") == Placement(0, 768, 1280, 720, 1280, 1488),
                  f"not followed after the restart: {watcher.error} {watcher.layout.rects()}", 15)
            assert watcher.error is None
    finally:
        watcher.close()


@pytest.mark.parametrize("command", ["kwin_wayland", "gnome-shell"])
def test_binding_places_the_pointer_in_the_layout(command: str) -> None:
    with headless_sway(TWO_OUTPUTS, outputs=2) as sway:
        holder = DrmClient(sway.pid, command, True, 65534)
        plan = plan_binding("auto", "/dev/dri/card0", "HEADLESS-2", master=lambda card: holder)
        assert plan.method is Method.LAYOUT and plan.wayland_socket == str(sway.runtime / sway.display)
        assert "pointer placed on HEADLESS-2 in the layout of " + command in plan.describe()
        binding = apply_binding(plan)
        try:
            assert binding.placement() == Placement(1024, 0, 1280, 720, 2304, 768)
            devices = UinputDevices.open("test", factory=RecordingDevice)
            sink = uinput_sink_factory(devices, None, binding)(1280, 720)
            pointer = devices.pointer.device
            assert isinstance(pointer, RecordingDevice)
            for x, y in ((0, 0), (1279, 719), (640, 360)):
                pointer.take()
                sink.pointer(x, y, 0)
                events = {code: value for etype, code, value in pointer.take() if etype == ecodes.EV_ABS}
                # the centre of pixel (x, y) of HEADLESS-2, in the 2304x768 layout, over 0..ABS_RANGE-1
                assert events[ecodes.ABS_X] == int((1024 + x + 0.5) * ABS_RANGE / 2304)
                assert events[ecodes.ABS_Y] == int((y + 0.5) * ABS_RANGE / 768)
        finally:
            binding.undo()
        assert binding.layout is None


def test_binding_without_a_reachable_socket_says_how() -> None:
    gone = DrmClient(2**22 + 7, "kwin_wayland", True, 1000)  # no such process: nothing to read
    plan = plan_binding("auto", "/dev/dri/card0", "Virtual-1", master=lambda card: gone)
    assert plan.method is Method.MANUAL and "Wayland socket was not found" in plan.describe()


def _fullscreen_on(sway: Sway, app_id: str) -> tuple[str, dict[str, int]] | None:
    def walk(node: dict[str, Any], output: str | None) -> tuple[str, dict[str, int]] | None:
        for child in node.get("nodes", []) + node.get("floating_nodes", []):
            here = child["name"] if child.get("type") == "output" else output
            if child.get("app_id") == app_id and child.get("fullscreen_mode") == 1 and here:
                return here, child["rect"]
            if (found := walk(child, here)) is not None:
                return found
        return None

    return walk(json.loads(sway.msg("-t", "get_tree")), None)


def test_probe_client_goes_fullscreen_on_the_named_output(tmp_path: Path) -> None:
    """tests/guest/wlprobe.py, the guest tests' witness for clicks, against sway: fullscreen where asked."""
    log = tmp_path / "probe.log"
    with headless_sway(TWO_OUTPUTS, outputs=2) as sway:
        probe = subprocess.Popen([sys.executable, str(ROOT / "tests/guest/wlprobe.py"), "HEADLESS-2", str(log)],
                                 env={**sway.env(), "PYTHONPATH": str(ROOT)})
        try:
            _wait(lambda: log.exists() and "configured" in log.read_text(), "the probe never configured", 30)
            assert log.read_text().splitlines()[0] == "configured 1280 720"
            _wait(lambda: "on HEADLESS-2" in log.read_text(), f"not shown on HEADLESS-2: {log.read_text()}", 10)
            _wait(lambda: _fullscreen_on(sway, "vkmsremote-probe") is not None, "not fullscreen", 10)
            assert _fullscreen_on(sway, "vkmsremote-probe") == ("HEADLESS-2", {"x": 1024, "y": 0, "width": 1280,
                                                                              "height": 720})
        finally:
            probe.terminate()
            probe.wait(10)

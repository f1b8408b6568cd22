"""Resizing the output through the compositor that drives it (issue 13): sway's IPC against a real headless
sway, xrandr's output as the X adapter reads it, the choice of adapter by DRM master. Xorg resized through
RandR on VKMS, end to end: tests/vm/test_compositor_vm.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from desktop.test_sway_desktop import Sway, sway  # noqa: F401 (the fixture)
from vkmsremote.desktop.clients import DrmClient
from vkmsremote.desktop.resize import DesktopResizer, SwayResizer, XorgResizer, parse_xrandr, x_display_of
from vkmsremote.drm.cvt import x_timings
from vkmsremote.frame import ResizeStatus

# What `xrandr` printed for Xorg's modesetting driver on two VKMS connectors in the test VM (XR-0 lit at an
# added mode, XR-1 off), trimmed.
XRANDR = """\
Screen 0: minimum 320 x 200, current 1366 x 1024, maximum 8192 x 8192
Virtual-1 connected primary 1366x1024+0+0 (normal left inverted right x axis y axis) 0mm x 0mm
   1024x768      60.00 +
   1920x1200     59.95
   800x600       60.32    56.25
   1366x1024_vkmsremote  59.95*
Virtual-2 connected (normal left inverted right x axis y axis)
   1024x768      60.00 +
   800x600       60.32    56.25
"""


def test_parse_xrandr_outputs_modes_and_current() -> None:
    outs = parse_xrandr(XRANDR)
    assert set(outs) == {"Virtual-1", "Virtual-2"}
    one, two = outs["Virtual-1"], outs["Virtual-2"]
    assert one.connected and one.geometry == (1366, 1024, 0, 0)
    assert one.modes == ("1024x768", "1920x1200", "800x600", "1366x1024_vkmsremote")
    assert (one.current, one.rate) == ("1366x1024_vkmsremote", 59.95)
    assert two.connected and two.geometry is None and two.current is None


def test_x_timings_are_cvt_reduced_blanking() -> None:
    # `cvt -r 1368 768 60` prints: Modeline "1368x768R" 72.25 1368 1416 1448 1528 768 771 781 790 +hsync -vsync
    assert x_timings(1368, 768, 60) == "72.25 1368 1416 1448 1528 768 771 781 790 +hsync -vsync"


class FakeX:
    """An X server's RandR state as xrandr shows it, changed by the xrandr commands the adapter runs (the
    real X server is in the VM test)."""

    def __init__(self) -> None:
        self.modes = {"1024x768": 60.0}
        self.current = "1024x768"
        self.sizes = {"1024x768": (1024, 768)}
        self.calls: list[list[str]] = []

    def run(self, argv: list[str], env: dict[str, str]) -> object:
        import subprocess

        assert env["DISPLAY"] == ":7"
        self.calls.append(argv[1:])
        args = argv[1:]
        if args[0] == "--newmode":
            w, h = args[1].split("_")[0].split("x")
            self.sizes[args[1]] = (int(w), int(h))
        elif args[0] == "--addmode":
            self.modes[args[2]] = 59.95
        elif args[0] == "--delmode":
            assert self.current != args[2]
            del self.modes[args[2]]
        elif args[0] == "--rmmode":
            assert args[1] not in self.modes
        elif args[0] == "--output":
            self.current = args[3]
        lines = [f"Virtual-1 connected {'x'.join(map(str, self.sizes[self.current]))}+0+0 (normal)"]
        lines += [f"   {name}  {rate:.2f}{'*' if name == self.current else ''}" for name, rate in self.modes.items()]
        return subprocess.CompletedProcess(argv, 0, "\n".join(lines) + "\n", "")


def test_xorg_adapter_adds_a_mode_sets_it_and_undoes_it() -> None:
    fake = FakeX()
    xr = XorgResizer(":7", "Virtual-1", x_timings, run=fake.run)  # type: ignore[arg-type]
    assert xr.resize(1366, 1024) == ResizeStatus.OK
    assert ["--newmode", "1366x1024_vkmsremote", *x_timings(1366, 1024, 60.0).split()] in fake.calls
    assert ["--addmode", "Virtual-1", "1366x1024_vkmsremote"] in fake.calls
    assert fake.current == "1366x1024_vkmsremote"
    fake.calls.clear()
    assert xr.resize(1366, 1024) == ResizeStatus.OK and fake.calls == [["--query"]]  # already that size
    xr.undo()
    assert fake.calls[1:] == [["--output", "Virtual-1", "--mode", "1024x768", "--rate", "60"],
                              ["--delmode", "Virtual-1", "1366x1024_vkmsremote"], ["--rmmode", "1366x1024_vkmsremote"]]
    assert fake.current == "1024x768" and set(fake.modes) == {"1024x768"}


def test_x_display_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cmdline").write_bytes(b"/usr/lib/xorg/Xorg\0:7\0-auth\0/run/x.auth\0-nolisten\0tcp\0")
    assert x_display_of(42, proc=tmp_path) == (":7", "/run/x.auth")


def test_x_display_from_the_socket_with_displayfd(tmp_path: Path) -> None:
    pid = tmp_path / "42"
    (pid / "fd").mkdir(parents=True)
    (pid / "cmdline").write_bytes(b"/usr/lib/xorg/Xorg\0vt2\0-displayfd\0003\0")
    os.symlink("socket:[777]", pid / "fd" / "5")
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "unix").write_text(
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 776 /run/other\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 777 /tmp/.X11-unix/X3\n")
    assert x_display_of(42, proc=tmp_path) == (":3", None)


def test_desktop_resizer_refuses_without_a_master_or_an_interface() -> None:
    none = DesktopResizer("/dev/dri/card0", "Virtual-1", x_timings, master=lambda card: None)
    assert none.resize(1366, 1024) == ResizeStatus.PROHIBITED
    weston = DesktopResizer("/dev/dri/card0", "Virtual-1", x_timings,
                            master=lambda card: DrmClient(1, "weston", True))
    assert weston.resize(1366, 1024) == ResizeStatus.PROHIBITED and not weston.adapters


def test_sway_resizes_its_output_through_ipc_and_undoes_it(sway: Sway) -> None:  # noqa: F811
    [out] = [o for o in json.loads(sway.msg("-t", "get_outputs", "-r")) if o["active"]]
    before = out["current_mode"]
    resizer = SwayResizer(sway.socket, out["name"])
    assert resizer.resize(1366, 1024) == ResizeStatus.OK
    [now] = [o for o in json.loads(sway.msg("-t", "get_outputs", "-r")) if o["name"] == out["name"]]
    assert (now["current_mode"]["width"], now["current_mode"]["height"]) == (1366, 1024)
    assert now["rect"]["width"] == 1366  # the layout (what windows tile into) grew with it
    assert abs(now["current_mode"]["refresh"] - before["refresh"]) < 100  # the rate is kept (mHz)
    resizer.undo()
    [back] = [o for o in json.loads(sway.msg("-t", "get_outputs", "-r")) if o["name"] == out["name"]]
    assert (back["current_mode"]["width"], back["current_mode"]["height"]) == (before["width"], before["height"])


@pytest.mark.parametrize("kind", ["Xorg", "sway"])
def test_desktop_resizer_picks_the_adapter_of_the_master(kind: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import vkmsremote.desktop.resize as resize

    monkeypatch.setattr(resize, "x_display_of", lambda pid: (":7", None))
    sock = tmp_path / "sway.sock"
    sock.touch()
    monkeypatch.setattr(resize, "socket_path_of", lambda pid: sock)
    r = DesktopResizer("/dev/dri/card0", "Virtual-1", x_timings, master=lambda card: DrmClient(9, kind, True))
    adapter = r._adapter(DrmClient(9, kind, True))
    assert isinstance(adapter, XorgResizer if kind == "Xorg" else SwayResizer)
    assert r._adapter(DrmClient(9, kind, True)) is adapter  # one per compositor process

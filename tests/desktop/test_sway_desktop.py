"""sway (headless, a real compositor on the host) as the desktop: its layout and its clipboard.

sway runs as nobody (it refuses root) with the headless backend; vkmsremote's readers run as this test
(root, as `serve` does) against its IPC and Wayland sockets. The keyboard typing itself through uinput on
sway needs the VM (tests/vm); here the layout read from sway is checked through libxkbcommon's own state
machine, and the clipboard through wl-clipboard (wlr-data-control) both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from input.test_layout import DE_TEXT, FR_TEXT, keysym_of, typed_through_xkb
from input.test_uinput_sink import RecordingDevice

from vkmsremote.input.clipboard import WlrClipboard, open_desktop_clipboard
from vkmsremote.input.keymap import US
from vkmsremote.input.layout import describe_desktop_layout, read_desktop_layout
from vkmsremote.input.spare import XSpareKeys
from vkmsremote.input.uinput import UinputDevices, UinputSink

NOBODY = 65534


@dataclass
class Sway:
    runtime: Path
    config: Path
    socket: str
    display: str
    pid: int

    def msg(self, *argv: str) -> str:
        return subprocess.run(["swaymsg", "-s", self.socket, *argv], capture_output=True, text=True, check=True,
                              timeout=30).stdout

    def env(self) -> dict[str, str]:
        return {**os.environ, "XDG_RUNTIME_DIR": str(self.runtime), "WAYLAND_DISPLAY": self.display}


@contextlib.contextmanager
def headless_sway(config_text: str, outputs: int = 1, base: Path | None = None) -> Iterator[Sway]:
    """A headless sway (pixman, no input devices) run as nobody with ``config_text`` as its config and
    ``outputs`` headless outputs (HEADLESS-1, HEADLESS-2, ...), in ``base`` (default: a new directory)."""
    assert shutil.which("sway") and shutil.which("wl-copy"), "setup-host.sh installs sway and wl-clipboard"
    base = base or Path(f"/tmp/vkmsremote-sway-{os.getpid()}-{time.monotonic_ns()}")  # outside pytest's 0700 tree
    runtime, config = base / "run", base / "config"
    runtime.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    os.chown(runtime, NOBODY, NOBODY)
    runtime.chmod(0o700)
    config.write_text(config_text)
    config.chmod(0o644)
    env = {"PATH": os.environ["PATH"], "XDG_RUNTIME_DIR": str(runtime), "WLR_BACKENDS": "headless",
           "WLR_HEADLESS_OUTPUTS": str(outputs), "WLR_LIBINPUT_NO_DEVICES": "1", "WLR_RENDERER": "pixman"}
    log = open(base / "sway.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "sway", "-c",
                             str(config)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (sockets := sorted(runtime.glob("sway-ipc.*.sock"))) or not list(runtime.glob("wayland-?")):
            assert proc.poll() is None, (base / "sway.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "sway made no sockets"
            time.sleep(0.1)
        display = sorted(p.name for p in runtime.glob("wayland-?"))[0]
        yield Sway(runtime, config, str(sockets[0]), display, proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def sway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sway]:
    with headless_sway("input type:keyboard xkb_layout de\n") as s:
        monkeypatch.setenv("SWAYSOCK", s.socket)
        monkeypatch.delenv("DISPLAY", raising=False)
        yield s


def test_layout_from_sway_follows_its_config(sway: Sway) -> None:
    for layout, text in (("de", DE_TEXT), ("fr", FR_TEXT)):
        if layout != "de":
            sway.config.write_text(f"input type:keyboard {{\n    xkb_layout {layout}\n}}\n")
            sway.msg("reload")
        reading = read_desktop_layout()
        assert reading is not None and reading.description == f"sway: {layout}"
        devices = UinputDevices.open("test", factory=RecordingDevice, keymap=reading.compile())
        sink = UinputSink(devices, 1024, 768)
        for ch in text:
            sink.key(keysym_of(ch), True)
            sink.key(keysym_of(ch), False)
        device = devices.keyboard.device
        assert isinstance(device, RecordingDevice)
        assert typed_through_xkb(device.take(), layout) == text


def test_clipboard_both_ways_through_wlr_data_control(sway: Sway) -> None:
    found, why = open_desktop_clipboard()
    assert isinstance(found, WlrClipboard) and found.display == sway.display, why
    clipboard = WlrClipboard(str(sway.runtime), sway.display, max_size=64)
    clipboard.set("Grüße ✓").result(30)  # a VNC client pasted: Wayland clients see it
    pasted = subprocess.run(["wl-paste", "--no-newline"], env=sway.env(), capture_output=True, timeout=30,
                            check=True).stdout.decode()
    assert pasted == "Grüße ✓"

    seen: list[str] = []

    async def watch() -> None:
        task = asyncio.create_task(clipboard.watch(seen.append))
        await asyncio.sleep(1.0)
        subprocess.run(["wl-copy", "Kopiert unter sway ✓"], env=sway.env(), timeout=30, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not seen and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(watch())
    assert seen == ["Kopiert unter sway ✓"]  # our own "Grüße ✓" (there when watching began) was not news


def test_sway_found_without_swaysock(sway: Sway, monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve`` started from a system unit has no $SWAYSOCK and this sway's sockets are not under /run/user:
    the running sway process names them (its environment), for the layout and the clipboard alike."""
    monkeypatch.delenv("SWAYSOCK")
    reading = read_desktop_layout()
    assert reading is not None and reading.description == "sway: de"
    assert describe_desktop_layout() == "sway: de"  # what `status` prints
    found, why = open_desktop_clipboard()
    assert isinstance(found, WlrClipboard) and found.display == sway.display, why


def test_keysym_the_layout_lacks_through_a_virtual_keyboard(sway: Sway, caplog: pytest.LogCaptureFixture) -> None:
    """No X server: a keysym the layout lacks goes through wtype (zwp_virtual_keyboard_v1), which sway offers;
    what arrives in a terminal is checked in the VM (tests/vm/test_wayland_vm.py)."""
    reading = read_desktop_layout()
    assert reading is not None and reading.wayland == (str(sway.runtime), sway.display)
    spare = XSpareKeys(lambda: reading.x_display, wayland=lambda: reading.wayland)
    with caplog.at_level(logging.INFO, logger="vkmsremote.input.spare"):
        assert spare.plan(0x20AC, US, lambda code: False) is None  # nothing for uinput to press
    assert "keysym EuroSign is not on the US (built-in tables) layout: typed through a virtual keyboard" \
        in caplog.text, caplog.text


def test_sway_without_keyboards_or_layout_config_types_with_its_default_us(sway: Sway) -> None:
    """Before sway has picked up vkmsremote's keyboard, with no xkb_layout in its config: sway's default (us),
    not the built-in fallback with its warning."""
    sway.config.write_text("\n")
    sway.msg("reload")
    reading = read_desktop_layout()
    assert reading is not None and reading.description == "sway: us"

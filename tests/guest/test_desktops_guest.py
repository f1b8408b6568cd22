"""KWin (Plasma's compositor) and GNOME Shell (Mutter) with XR-0 beside XR-1, in a logind session on seat0.

Runs only in the desktop variant of the Debian 13 guest (scripts/build-guest-desktop.sh; see conftest.py):

    python -m vkmsremote.vm.guest --desktop --kernel K --results-dir D -- \\
        python3 -m pytest tests/guest/test_desktops_guest.py

Each desktop is started the way a display manager would: a system unit (``systemd-run``) with ``User=``
the tree's test user, ``PAMName=login`` and ``TTYPath=/dev/tty1``, so pam_systemd registers a logind
session on seat0, VT 1, and the compositor takes the card through logind (TakeDevice), on the ``xr-dual``
device made by ``vkmsremote up --no-serve`` before it starts. Software rendering (QPainter for KWin,
llvmpipe for Mutter). Then, where XR-0 is lit, ``vkmsremote serve`` reads XR-0 and vncdotool (Raw)
must get the framebuffer the CRTC scans out. Figures (seconds to the socket, to each CRTC lit; the
session's state) go to $VKMSREMOTE_GUEST_RESULTS/desktops.jsonl, the compositor's journal beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from vkmsremote.drm.card import Card
from vkmsremote.drm.framebuffer import map_framebuffer
from vkmsremote.drm.resources import get_crtc

pytestmark = pytest.mark.timeout(900)

USER, UID = "desk", 1000
RUNTIME = Path(f"/run/user/{UID}")
RESULTS = Path(os.environ.get("VKMSREMOTE_GUEST_RESULTS", "/tmp"))
SIZE = (1024, 768)
LIGHT_BUDGET = 600.0
"""Seconds a desktop gets to light both outputs. Under TCG on the shared 2-core host (load 11-13) KWin
took 73-77 s, Mutter alone 139 s, GNOME Shell about 310 s (docs/compositors.md)."""


@dataclass(frozen=True)
class DesktopSpec:
    name: str
    argv: tuple[str, ...]
    env: dict[str, str]


DESKTOPS = {
    "kwin": DesktopSpec("kwin", ("kwin_wayland", "--drm", "--no-lockscreen", "--no-global-shortcuts"),
                        {"KWIN_COMPOSE": "Q", "QT_LOGGING_RULES": "kwin_wayland_drm.debug=true"}),
    "gnome-shell": DesktopSpec("gnome-shell", ("gnome-shell", "--wayland", "--no-x11", "--display-server"),
                               {"MUTTER_DEBUG": "kms"}),
}


def sh(*argv: str, check: bool = True, timeout: float = 120) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout).stdout


@dataclass
class Device:
    card: str  # /dev/dri/cardN
    minor: int
    xr0: str  # Virtual-N of XR-0
    xr1: str
    crtc0: int
    crtc1: int


def make_device() -> Device:
    """A fresh xr-dual device (``down`` first): the KMS state a previous desktop left (its CRTCs stay
    active with its last framebuffers after it exits) must not count for the next one."""
    sh("vkmsremote", "down", "--force", check=False)
    dev = json.loads(sh("vkmsremote", "up", "--profile", "xr-dual", "--no-serve", "--json"))["device"]
    by_name = {c["name"]: c for c in dev["connectors"]}
    card = dev["card"]
    return Device(card, int(card.rsplit("card", 1)[1]), by_name["XR-0"]["drm_name"], by_name["XR-1"]["drm_name"],
                  by_name["XR-0"]["crtc_id"], by_name["XR-1"]["crtc_id"])


def crtc_lit(card: str, crtc_id: int) -> bool:
    with Card.open(card) as c:
        crtc = get_crtc(c, crtc_id, with_properties=False)
        return bool(crtc.fb_id) and crtc.mode is not None and (crtc.mode.width, crtc.mode.height) == SIZE


@dataclass
class Desktop:
    spec: DesktopSpec
    device: Device
    unit: str
    started: float
    pid: int = 0
    figures: dict[str, object] = field(default_factory=dict)

    def journal(self, lines: int = 80) -> str:
        """The unit's lines and the compositor's own: pam_systemd moved it into its session's scope, so
        its output is not under the unit's name."""
        return sh("journalctl", "-b", "--no-pager", "-o", "short-monotonic", "-n", str(lines),
                  f"_SYSTEMD_UNIT={self.unit}.service", "+", f"_PID={self.pid}", check=False)

    def session(self) -> dict[str, str]:
        """logind's view of the desktop's session (Active, State, Seat, VTNr, Type)."""
        for line in sh("loginctl", "list-sessions", "--no-legend", check=False).splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[2] == USER and fields[3] == "seat0":
                out = sh("loginctl", "show-session", fields[0], "-p", "Active", "-p", "State", "-p", "Seat",
                         "-p", "VTNr", "-p", "Type", check=False)
                return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
        return {}

    def debugfs_state(self) -> str:
        with contextlib.suppress(OSError):
            return Path(f"/sys/kernel/debug/dri/{self.device.minor}/state").read_text()
        return "(debugfs state not readable)"

    def obstacle(self) -> str:
        """What the failure message shows: the session, the kernel's view of the CRTCs, the journal."""
        crtcs = re.findall(r"crtc\[\d+\]: \S+\n\s+enable=\d\n\s+active=\d", self.debugfs_state())
        return (f"session {self.session()}; CRTCs {crtcs}; "
                f"{self.spec.name} journal (last lines):\n{self.journal()}")


def wait_for(check: Callable[[], bool], what: str, timeout: float, desktop: Desktop | None = None,
             interval: float = 0.5) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(interval)
    raise AssertionError(f"{what} not within {timeout:.0f} s" + (f"; {desktop.obstacle()}" if desktop else ""))


@pytest.fixture(scope="module", params=sorted(DESKTOPS))
def desktop(request: pytest.FixtureRequest) -> Iterator[Desktop]:
    spec = DESKTOPS[request.param]
    device = make_device()
    unit = f"vkmsremote-desktop-{spec.name}"
    env = {"XDG_SESSION_TYPE": "wayland", "XDG_SESSION_CLASS": "user", "XDG_RUNTIME_DIR": str(RUNTIME),
           "DBUS_SESSION_BUS_ADDRESS": f"unix:path={RUNTIME}/bus", "KWIN_DRM_DEVICES": device.card, **spec.env}
    props = [f"User={USER}", "PAMName=login", "TTYPath=/dev/tty1", "StandardInput=tty-fail",
             "StandardOutput=journal", "StandardError=journal", *(f"Environment={k}={v}" for k, v in env.items())]
    started = time.monotonic()
    sh("systemd-run", f"--unit={unit}", *(a for p in props for a in ("-p", p)), "--", *spec.argv)
    desk = Desktop(spec, device, unit, started)
    desk.pid = int(sh("systemctl", "show", "-p", "MainPID", "--value", unit).strip() or 0)
    try:
        yield desk
    finally:
        desk.figures["session"] = desk.session()
        sh("systemctl", "stop", unit, check=False)
        sh("systemctl", "reset-failed", unit, check=False)
        with (RESULTS / "desktops.jsonl").open("a") as f:
            f.write(json.dumps({"desktop": spec.name, **desk.figures}) + "\n")
        (RESULTS / f"journal-{spec.name}.txt").write_text(desk.journal(2000))
        time.sleep(3)  # logind closes the session, releases the VT and the card
        sh("vkmsremote", "down", "--force", check=False)


def versions() -> dict[str, str]:
    out = sh("dpkg-query", "-W", "-f", "${Package} ${Version}\n", "kwin-wayland", "mutter", "gnome-shell",
             check=False)
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_xr0_lit_beside_xr1(desktop: Desktop) -> None:
    dev = desktop.device
    desktop.figures["versions"] = versions()

    def socket() -> bool:
        assert sh("systemctl", "is-active", desktop.unit, check=False).strip() in ("active", "activating"), \
            f"{desktop.spec.name} exited; {desktop.obstacle()}"
        return any(p.suffix != ".lock" for p in RUNTIME.glob("wayland-*"))

    desktop.figures["socket_s"] = round(wait_for(socket, f"{desktop.spec.name}'s Wayland socket", LIGHT_BUDGET,
                                                 desktop), 1)
    left = LIGHT_BUDGET - (time.monotonic() - desktop.started)
    for name, crtc in (("xr0", dev.crtc0), ("xr1", dev.crtc1)):
        wait_for(lambda crtc=crtc: crtc_lit(dev.card, crtc),  # type: ignore[misc]
                 f"{name.upper()} ({dev.xr0 if name == 'xr0' else dev.xr1}) lit at {SIZE} by {desktop.spec.name}",
                 max(left, 1.0), desktop)
        desktop.figures[f"{name}_lit_s"] = round(time.monotonic() - desktop.started, 1)


class Scanout:
    """Every framebuffer XR-0's CRTC showed, read by the test itself (GETFB2/PRIME), as (h, w, 3) RGB."""

    def __init__(self, card: str, crtc_id: int) -> None:
        self.card = Card.open(card)
        self.crtc_id = crtc_id
        self.buffers: dict[int, np.ndarray] = {}

    def look(self) -> None:
        crtc = get_crtc(self.card, self.crtc_id, with_properties=False)
        if crtc.fb_id:
            with map_framebuffer(self.card, crtc.fb_id) as m, m.reading():
                self.buffers[crtc.fb_id] = np.ascontiguousarray(m.plane_rows(0, 4)[..., 2::-1])

    def equal_to(self, frame: np.ndarray) -> bool:
        return any(b.shape == frame.shape and np.array_equal(b, frame) for b in self.buffers.values())

    def close(self) -> None:
        self.card.close()


def test_vnc_frames_equal_xr0s_scanout(desktop: Desktop) -> None:
    """vncdotool (Raw) through ``vkmsremote serve`` on XR-0 gets exactly the scanned-out framebuffer."""
    from vncdotool import api as vnc_api

    dev = desktop.device
    if not (crtc_lit(dev.card, dev.crtc0) and crtc_lit(dev.card, dev.crtc1)):
        pytest.fail(f"XR-0 and XR-1 are not both lit by {desktop.spec.name} (test_xr0_lit_beside_xr1 says why)")
    log = RESULTS / f"serve-{desktop.spec.name}.log"
    with log.open("wb") as out:
        serve = subprocess.Popen([sys.executable, "-m", "vkmsremote", "serve", "--source", "crtc", "--card", dev.card,
                                  "--connector", dev.xr0, "--port", "0", "--input", "uinput",
                                  "--pointer-output", "none"],
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    scan = Scanout(dev.card, dev.crtc0)
    client = None
    try:
        def port() -> bool:
            assert serve.poll() is None, f"vkmsremote serve exited: {log.read_text()}"
            return re.search(r"serving .* port (\d+)", log.read_text()) is not None

        wait_for(port, "vkmsremote serve to listen", 300)
        m = re.search(r"serving .* port (\d+)", log.read_text())
        assert m
        client = vnc_api.connect(f"127.0.0.1::{m.group(1)}", timeout=60)

        def equal() -> bool:
            scan.buffers.clear()
            scan.look()
            client.refreshScreen(incremental=False)
            frame = np.asarray(client.screen.copy().convert("RGB"))
            scan.look()
            return frame.shape[:2] == SIZE[::-1] and scan.equal_to(frame)

        desktop.figures["frame_equal_s"] = round(wait_for(equal, "a VNC frame equal to XR-0's scanout", 180,
                                                          desktop, interval=1), 1)
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
        scan.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(60)

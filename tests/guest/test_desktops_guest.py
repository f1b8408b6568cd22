"""KWin (Plasma's compositor) and GNOME Shell (Mutter) with XR-0 beside XR-1, in a logind session on seat0.

Runs only in the desktop variant of the Debian 13 guest (scripts/build-guest-desktop.sh; see conftest.py):

    python -m vkmsremote.vm.guest --desktop --kernel K --results-dir D -- \\
        python3 -m pytest tests/guest/test_desktops_guest.py

Each desktop is started the way a display manager would: a system unit (``systemd-run``) with ``User=``
the tree's test user, ``PAMName=login`` and ``TTYPath=/dev/tty1``, so pam_systemd registers a logind
session on seat0, VT 1, and the compositor takes the card through logind (TakeDevice), on the ``xr-dual``
device made by ``vkmsremote up --no-serve`` before it starts. Software rendering (QPainter for KWin,
llvmpipe for Mutter). Then, where XR-0 is lit, ``vkmsremote serve`` (``--pointer-output auto``) reads
XR-0 and, through vncdotool (Raw): frames equal the framebuffer the CRTC scans out; text typed arrives in
foot, fullscreen on XR-0; clicks at (x, y), the corners included, arrive at (x, y) of a probe client
fullscreen on XR-0's wl_output (tests/guest/wlprobe.py), which never sees the pointer leave. Figures (seconds to the socket, to each CRTC lit; the
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
from typing import Any

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
    "kwin": DesktopSpec("kwin", ("kwin_wayland", "--drm", "--xwayland", "--no-lockscreen", "--no-global-shortcuts"),
                        {"KWIN_COMPOSE": "Q",
                         "QT_LOGGING_RULES": "kwin_wayland_drm.debug=true;kwin_libinput.debug=true"}),
    "gnome-shell": DesktopSpec("gnome-shell", ("gnome-shell", "--wayland", "--display-server"),
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
    set_german_layout(spec.name)
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


LAYOUT = "de"
"""The desktop user's keyboard layout, set the desktop's own way before it starts: vkmsremote must read it
(typing with the US tables would turn z into y, and ä, ö, ü, ß, € would not arrive)."""


def set_german_layout(desktop: str) -> None:
    """GNOME: the input source in dconf (gsettings, with a D-Bus bus of its own for dconf's writer); KWin:
    Plasma's kxkbrc."""
    home = Path(f"/home/{USER}")
    if desktop == "gnome-shell":
        subprocess.run(["dbus-run-session", "--", "gsettings", "set", "org.gnome.desktop.input-sources", "sources",
                        f"[('xkb', '{LAYOUT}')]"], env={"HOME": str(home), "PATH": os.environ["PATH"]},
                       user=UID, group=UID, check=True, capture_output=True, timeout=120)
    else:
        config = home / ".config"
        config.mkdir(exist_ok=True)
        os.chown(config, UID, UID)
        (config / "kxkbrc").write_text(f"[Layout]\nLayoutList={LAYOUT}\nUse=true\n")


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

    def wait_equal(self, client: Any, size: tuple[int, int], desktop: Desktop) -> None:
        """Until a full frame vncdotool gets (``size``) is one of the framebuffers XR-0's CRTC showed around it."""
        def equal() -> bool:
            self.buffers.clear()
            self.look()
            client.refreshScreen(incremental=False)
            frame = np.asarray(client.screen.copy().convert("RGB"))
            self.look()
            return frame.shape[:2] == size[::-1] and self.equal_to(frame)

        wait_for(equal, f"a {size[0]}x{size[1]} VNC frame equal to XR-0's scanout", 180, desktop, interval=1)


@dataclass
class Served:
    port: int
    log: Path
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def serving(dev: Device, log: Path, input_kind: str) -> Iterator[Served]:
    """``vkmsremote serve`` on XR-0 (``--input input_kind``, ``--pointer-output auto``, the default), listening;
    stopped (SIGTERM, so it undoes what it changed) afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vkmsremote", "serve", "--source", "crtc", "--card", dev.card,
                                 "--connector", dev.xr0, "--port", "0", "--input", input_kind],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def port() -> bool:
            assert proc.poll() is None, f"vkmsremote serve exited: {log.read_text()}"
            return SERVING.search(log.read_text()) is not None

        wait_for(port, "vkmsremote serve to listen", 300)
        m = SERVING.search(log.read_text())
        assert m
        yield Served(int(m.group(1)), log, proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(120)


@pytest.fixture(scope="module")
def served(desktop: Desktop) -> Iterator[Served]:
    """``vkmsremote serve`` on XR-0 with uinput input."""
    dev = desktop.device
    if not (crtc_lit(dev.card, dev.crtc0) and crtc_lit(dev.card, dev.crtc1)):
        pytest.fail(f"XR-0 and XR-1 are not both lit by {desktop.spec.name} (test_xr0_lit_beside_xr1 says why)")
    with serving(dev, RESULTS / f"serve-{desktop.spec.name}.log", "uinput") as served:
        yield served


SERVING = re.compile(r"serving .* port (\d+)")


@contextlib.contextmanager
def viewer(served: Served) -> Iterator[Any]:
    from vncdotool import api as vnc_api

    client = vnc_api.connect(f"127.0.0.1::{served.port}", timeout=60)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()


def test_vnc_frames_equal_xr0s_scanout(desktop: Desktop, served: Served) -> None:
    """vncdotool (Raw) through ``vkmsremote serve`` on XR-0 gets exactly the scanned-out framebuffer."""
    dev = desktop.device
    scan = Scanout(dev.card, dev.crtc0)
    t0 = time.monotonic()
    try:
        with viewer(served) as client:
            scan.wait_equal(client, SIZE, desktop)
        desktop.figures["frame_equal_s"] = round(time.monotonic() - t0, 1)
    finally:
        scan.close()


def test_pointer_placed_in_the_desktops_layout(desktop: Desktop, served: Served) -> None:
    """``--pointer-output auto`` recognised the desktop and follows XR-0's place in its layout."""
    comm = {"kwin": "kwin_wayland", "gnome-shell": "gnome-shell"}[desktop.spec.name]
    text = served.log.read_text()
    assert f"pointer placed on {desktop.device.xr0} in the layout of {comm} (pid " in text, text


# --- clients of the desktop, run as its user ------------------------------------------------------------------

TEXT = 'Hello, World! <A&b> ~|"x_y" 42% zyäöüß€'
FOOT_BG = "503090"  # foot's background here: a colour no desktop paints, so XR-0's frames tell where foot is


def purple(color: str) -> bool:
    """Whether ``#rrggbb`` is foot's purple as a compositor may have transformed it: KWin 6.3 scans foot's
    #503090 out as #140747 (the sRGB values decoded to linear light and not encoded again), Mutter as is."""
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return b > r > g
WORK = Path("/tmp/vkmsremote-desktop-clients")


def client_env() -> dict[str, str]:
    sockets = sorted(p.name for p in RUNTIME.glob("wayland-*") if p.suffix != ".lock" and p.is_socket())
    assert sockets, f"no Wayland socket in {RUNTIME}"
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": f"/home/{USER}", "USER": USER,
            "XDG_RUNTIME_DIR": str(RUNTIME), "WAYLAND_DISPLAY": sockets[0], "XDG_SESSION_TYPE": "wayland",
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={RUNTIME}/bus", "LC_ALL": "C.UTF-8",
            "PYTHONPATH": os.getcwd(), "PYTHONDONTWRITEBYTECODE": "1"}


@contextlib.contextmanager
def as_user(argv: list[str], name: str, tag: str, **env: str) -> Iterator[Path]:
    """Run ``argv`` as the desktop's user in its session's environment; yields its log. Copied to the
    results afterwards."""
    WORK.mkdir(exist_ok=True)
    os.chown(WORK, UID, UID)
    log = WORK / f"{name}.log"
    with log.open("wb") as out:
        os.chown(log, UID, UID)
        proc = subprocess.Popen(argv, env={**client_env(), **env}, user=UID, group=UID, cwd=WORK, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        for f in WORK.glob(f"{name}*"):
            with contextlib.suppress(OSError):
                (RESULTS / f"{tag}-{f.name}").write_bytes(f.read_bytes())


def dominant_share(frame: np.ndarray) -> tuple[str, float]:
    colors, counts = np.unique(frame.reshape(-1, frame.shape[-1]), axis=0, return_counts=True)
    top = int(counts.argmax())
    return "#" + "".join(f"{int(c):02x}" for c in colors[top][:3]), float(counts[top] / counts.sum())


def test_keyboard_layout_read_from_the_desktop(desktop: Desktop) -> None:
    """What ``status`` says vkmsremote types with: the layout the desktop was given, read its own way."""
    from vkmsremote.input.layout import describe_desktop_layout

    who = {"gnome-shell": "GNOME", "kwin": "KWin"}[desktop.spec.name]
    assert describe_desktop_layout() == f"{who}: {LAYOUT}"


def test_typed_text_reaches_foot_on_xr0(desktop: Desktop, served: Served) -> None:
    """Text typed in the VNC client (German layout on the desktop: ASCII, AltGr symbols, umlauts, €) arrives
    as that exact line in foot's shell; foot is fullscreen on XR-0 (it opens where the pointer is, which the
    client put on XR-0) and fills XR-0's frames."""
    out, lines, started = WORK / "typed.txt", WORK / "typed-lines.txt", WORK / "typed.started"
    for f in (out, lines, started):
        f.unlink(missing_ok=True)
    script = (f'touch {started}; while IFS= read -r line; do printf "%s\\n" "$line" >> {lines}; '
              f'[ "$line" = "$TEXT" ] && printf "%s" "$line" > {out}; done; sleep 600')
    w, h = SIZE
    t0 = time.monotonic()
    with viewer(served) as client:
        client.keyPress("esc")  # GNOME Shell starts in its overview; Escape leaves it (KWin: nothing happens)
        client.mouseMove(w // 2, h // 2)  # new windows open on the output with the pointer
        with as_user(["foot", "-a", "foot", "-F", "-o", "cursor.blink=no", "-o", f"colors.background={FOOT_BG}",
                      "sh", "-c", script], "foot",
                     desktop.spec.name, TEXT=TEXT):
            wait_for(started.exists, "foot to start its shell", 300, desktop)
            deadline = time.monotonic() + 300
            while not out.exists():
                assert time.monotonic() < deadline, (
                    f"{TEXT!r} never arrived in foot; lines that did: "
                    f"{lines.read_text(encoding='utf-8') if lines.exists() else 'none'}")
                client.mouseMove(w // 2, h // 2)
                client.mousePress(1)  # focus by clicking, whatever the shell's policy
                for ch in TEXT:
                    client.keyPress(ch)
                client.keyPress("enter")
                with contextlib.suppress(AssertionError):
                    wait_for(out.exists, "foot's shell to write what was typed", 45)
            assert out.read_text(encoding="utf-8") == TEXT
            desktop.figures["typed_s"] = round(time.monotonic() - t0, 1)

            def fills_xr0() -> bool:
                client.refreshScreen(incremental=False)
                color, share = dominant_share(np.asarray(client.screen.copy().convert("RGB")))
                desktop.figures["xr0_dominant"] = [color, round(share, 3)]
                return purple(color) and share > 0.8

            try:
                wait_for(fills_xr0, f"foot to fill XR-0 (XR-0's frame mostly foot's #{FOOT_BG})", 60, interval=2)
            except AssertionError as e:
                raise AssertionError(f"{e}: XR-0's frame is mostly {desktop.figures.get('xr0_dominant')}") from None


PROBE_POINT = re.compile(r"^(?:enter|motion) (-?[\d.]+) (-?[\d.]+)$", re.M)
PROBE_PRESS = re.compile(r"^button (\d+) 1$", re.M)
PROBE_RELEASE = re.compile(r"^button \d+ 0$", re.M)
BTN_LEFT = 272


def test_clicks_land_on_the_pixel_of_xr0_and_never_leave_it(desktop: Desktop, served: Served) -> None:
    """Clicks at (x, y) of the client, the four corners included, arrive at (x, y) of a client fullscreen on
    XR-0's output, and the pointer never leaves it (nothing reached XR-1 beside it)."""
    dev = desktop.device
    w, h = SIZE
    points = ((w // 3, h // 2), (0, 0), (w - 1, h - 1), (w - 1, 0), (0, h - 1), (517, 301))
    probe = WORK / "probe-events.log"
    probe.unlink(missing_ok=True)
    with as_user([sys.executable, str(Path(__file__).with_name("wlprobe.py")), dev.xr0, str(probe)],
                 "probe", desktop.spec.name) as run_log, viewer(served) as client:

        def read() -> str:
            return probe.read_text() if probe.exists() else ""

        wait_for(lambda: "configured" in read(), f"the probe to be fullscreen on {dev.xr0} "
                 f"({run_log.read_text(errors='replace')[-500:] if run_log.exists() else ''})", 300, desktop)
        assert read().splitlines()[0] == f"configured {w} {h}", read()
        wait_for(lambda: f"on {dev.xr0}" in read(), f"the probe's surface to be on {dev.xr0} ({read()[-300:]})", 60,
                 desktop)

        def entered() -> bool:
            client.mouseMove(w // 2, h // 2)
            return "enter" in read()

        wait_for(entered, "the probe (fullscreen on XR-0) to see the pointer enter", 180, desktop, interval=2)
        for px, py in points:
            before = len(read())
            client.mouseMove(px, py)
            client.mousePress(1)
            wait_for(lambda start=before: PROBE_PRESS.search(read()[start:]) is not None,  # type: ignore[misc]
                     f"the probe to see the click at {px},{py}", 60, desktop)
            wait_for(lambda start=before: PROBE_RELEASE.search(read()[start:]) is not None,  # type: ignore[misc]
                     f"the probe to see the release at {px},{py}", 60, desktop)
            time.sleep(0.3)  # libinput drops a press within ~25 ms of the last release as a bounce
            text = read()
            press = max(m.start() for m in PROBE_PRESS.finditer(text))
            where = PROBE_POINT.findall(text[:press])
            assert where, text[-2000:]
            x, y = (float(v) for v in where[-1])
            assert (int(x), int(y)) == (px, py), f"click at {px},{py} arrived at {x},{y} on {desktop.spec.name}"
        text = read()
        assert "leave" not in text, f"the pointer left XR-0's probe: {text[-2000:]}"
        assert all(int(b) == BTN_LEFT for b in PROBE_PRESS.findall(text))
        desktop.figures["clicks"] = len(points)



def run_as_user(argv: list[str], **env: str) -> str:
    return subprocess.run(argv, env={**client_env(), **env}, user=UID, group=UID, capture_output=True, text=True,
                          timeout=120, check=False).stdout


def xwayland_display() -> tuple[str, str | None] | None:
    """(DISPLAY, XAUTHORITY) of the desktop's Xwayland, from its command line (as for Xorg)."""
    from vkmsremote.desktop.resize import x_display_of

    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == "Xwayland":
                display, auth = x_display_of(int(proc.name))
                if display is not None:
                    return display, auth
    return None


XEV_PRESS = re.compile(r"ButtonPress event,.*?\n.*?\((-?\d+),(-?\d+)\), root:\((-?\d+),(-?\d+)\)")
GEOMETRY = re.compile(r"Absolute upper-left X:\s+(-?\d+).*?Absolute upper-left Y:\s+(-?\d+).*?Width:\s+(\d+).*?"
                      r"Height:\s+(\d+).*?Map State:\s+(\w+)", re.S)


def test_xwayland_client_on_xr0_gets_clicks_and_shows_in_frames(desktop: Desktop, served: Served) -> None:
    """An X11 client (xev) through the desktop's Xwayland, opened on XR-0: a click at (x, y) of the VNC client
    arrives at XR-0's (x, y) in X's root window (the layout's coordinates), and the window is in XR-0's frames."""
    from vkmsremote.desktop.wayland import LayoutWatcher

    dev = desktop.device
    wait_for(lambda: xwayland_display() is not None, f"{desktop.spec.name}'s Xwayland to run", 300, desktop)
    found = xwayland_display()
    assert found is not None
    display, auth = found
    xenv = {"DISPLAY": display, **({"XAUTHORITY": auth} if auth else {})}
    desktop.figures["xwayland"] = display
    sock = next(p for p in RUNTIME.glob("wayland-*") if p.suffix != ".lock" and p.is_socket())
    watcher = LayoutWatcher.open(sock)
    try:
        place = watcher.placement(dev.xr0)
    finally:
        watcher.close()
    assert place is not None, f"{dev.xr0} not in the layout"
    w, h = SIZE
    with viewer(served) as client:
        client.mouseMove(w // 2, h // 2)  # new windows open on the output with the pointer
        with as_user(["stdbuf", "-oL", "xev", "-geometry", "400x300", "-event", "button"], "xev",
                     desktop.spec.name, **xenv) as xlog:
            def mapped() -> bool:
                info = GEOMETRY.search(run_as_user(["xwininfo", "-name", "Event Tester"], **xenv))
                return info is not None and info.group(5) == "IsViewable"

            wait_for(mapped, "xev's window to be mapped", 180, desktop)
            info = GEOMETRY.search(run_as_user(["xwininfo", "-name", "Event Tester"], **xenv))
            assert info is not None
            wx, wy, ww, wh = (int(v) for v in info.groups()[:4])
            cx, cy = wx + ww // 2, wy + wh // 2  # the window's centre in the layout (X's root window)
            assert place.x <= cx < place.x + place.width and place.y <= cy < place.y + place.height, (
                f"the window manager put xev at {wx},{wy} {ww}x{wh}, not on {dev.xr0} at {place}")
            px, py = cx - place.x, cy - place.y
            for _attempt in range(3):
                client.mouseMove(px, py)
                client.mousePress(1)
                with contextlib.suppress(AssertionError):
                    wait_for(lambda: XEV_PRESS.search(xlog.read_text()) is not None, "xev to see the click", 30)
                    break
            m = XEV_PRESS.search(xlog.read_text())
            assert m, xlog.read_text()[-2000:]
            x, y, rx, ry = (int(v) for v in m.groups())
            # X's root window is the layout; the window's own (x, y) is not checked: the window manager may
            # still have moved it (GNOME Shell's frames) after its geometry was read
            assert (rx, ry) == (place.x + px, place.y + py), f"click at {px},{py} of XR-0 arrived at root {rx},{ry}"
            desktop.figures["xev_click"] = [px, py, rx, ry, x, y]
            left, top = wx - place.x, wy - place.y

            def shown() -> bool:  # xev's window is white
                client.refreshScreen(incremental=False)
                frame = np.asarray(client.screen.copy().convert("RGB"))
                # the window's middle: clear of xev's inner window (top left) and of any decoration
                color, share = dominant_share(frame[top + wh // 4:top + 3 * wh // 4, left + ww // 4:left + 3 * ww // 4])
                desktop.figures["xev_window"] = [wx, wy, ww, wh, color, round(share, 3)]
                return color == "#ffffff" and share > 0.8

            try:
                wait_for(shown, f"xev's white window in XR-0's frame at {left},{top}", 60, interval=2)
            except AssertionError as e:
                raise AssertionError(f"{e}: there it is {desktop.figures.get('xev_window')}") from None

RESIZED = (1280, 720)
"""A size VKMS lists (a DMT mode): Mutter and KWin set only the connector's own modes."""


def xr0_mode(dev: Device) -> tuple[int, int] | None:
    with Card.open(dev.card) as c:
        mode = get_crtc(c, dev.crtc0, with_properties=False).mode
    return (mode.width, mode.height) if mode is not None else None


def test_client_resizes_xr0_through_the_desktop(desktop: Desktop) -> None:
    """A client's SetDesktopSize goes to the desktop's own interface (GNOME Shell: Mutter's DisplayConfig
    over D-Bus; KWin: its output management protocol), XR-0's CRTC takes the mode, XR-1 stays lit, the requester is told,
    vncdotool's frames are the new size and equal to the scanout; the server's exit puts the mode back."""
    import asyncio

    from clients.support import RawClient, screens_of

    from vkmsremote.rfb.constants import Encoding
    from vkmsremote.rfb.messages import FramebufferUpdateRequest, Screen, SetDesktopSize

    dev = desktop.device
    log = RESULTS / f"serve-resize-{desktop.spec.name}.log"
    scan = Scanout(dev.card, dev.crtc0)
    t0 = time.monotonic()
    try:
        with serving(dev, log, "none") as served:
            port = served.port

            async def layout(c: RawClient) -> tuple[int, int, int, int, list[Screen]]:
                [(x, y, w, h, enc, data)] = (await c.read_update(600)).rects
                assert enc == Encoding.EXTENDED_DESKTOP_SIZE
                return x, y, w, h, screens_of(data)

            async def main() -> tuple[int, int, int, int]:
                c = RawClient()
                await c.connect(port)
                c.set_encodings(Encoding.RAW, Encoding.EXTENDED_DESKTOP_SIZE)
                c.send(FramebufferUpdateRequest(False, 0, 0, c.width, c.height))
                [screen] = (await layout(c))[4]
                c.send(SetDesktopSize(*RESIZED, (Screen(screen.id, 0, 0, *RESIZED),)))
                reply = (await layout(c))[:4]
                await c.close()
                return reply

            reply = asyncio.run(main())
            assert reply == (1, 0, *RESIZED), f"SetDesktopSize answered {reply}; serve said: {log.read_text()[-3000:]}"
            desktop.figures["resize_s"] = round(time.monotonic() - t0, 1)
            assert xr0_mode(dev) == RESIZED
            assert crtc_lit(dev.card, dev.crtc1), "XR-1 went dark when XR-0 was resized"

            with viewer(served) as client:
                scan.wait_equal(client, RESIZED, desktop)
    finally:
        scan.close()
    wait_for(lambda: xr0_mode(dev) == SIZE, f"XR-0 back at {SIZE} after the server's exit", 300, desktop)
    assert crtc_lit(dev.card, dev.crtc1)

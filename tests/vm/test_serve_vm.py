"""`vkmsremote up` serving XR-0 end to end, against the real kernel (run in the test VM).

A compositor stand-in nobody here wrote (libdrm's modetest) lights XR-0; `vkmsremote up` runs as the
user would start it (a subprocess, as root) and serves it; a VNC client nobody here wrote (vncdotool,
Raw encoding: lossless) receives the frames, which are compared pixel for pixel with the framebuffers the
kernel scans out (read by the test itself through GETFB2/PRIME). The processes' privileges are read from
/proc, as an administrator would check them.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vkmsremote.capture.driver import decode_frame_number, draw_pattern, pattern_base
from vkmsremote.capture.nosignal import no_signal_frame
from vkmsremote.drm.card import Card
from vkmsremote.drm.framebuffer import map_framebuffer
from vkmsremote.drm.resources import get_crtc
from vkmsremote.service.privileges import Cap, Capabilities, mask

# Each test starts `vkmsremote up` once or twice: a fresh interpreter plus the broker's under TCG takes from
# ~20 s (idle host) to minutes (a busy 2-core host), hence the generous limits.
pytestmark = [pytest.mark.vm, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
MAPPING_RE = re.compile(r"^(?P<name>\S+) -> (?P<card>/dev/dri/card\d+)\s+(?P<drm>\S+)\s+connector (?P<conn>\d+)\s+"
                        r"CRTC (?P<crtc>\d+)", re.M)
NOBODY = 65534
CLK_TCK = os.sysconf("SC_CLK_TCK")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # vncdotool/twisted deprecation noise
    from vncdotool import api as vnc_api
    from vncdotool.client import VNCDoToolClient, VNCDoToolFactory


# --- the server under test ----------------------------------------------------------------------------------


class Up:
    """``python -m vkmsremote up ...`` as a subprocess; its output collected line by line."""

    def __init__(self, tmp_path: Path, *args: str, port: int) -> None:
        self.port = port
        env = {**os.environ, "VKMSREMOTE_STATE_DIR": str(tmp_path / "state"), "VKMSREMOTE_CONFIGFS_ROOT": ""}
        self.proc = subprocess.Popen([sys.executable, "-m", "vkmsremote", "up", "--port", str(port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        started = time.monotonic()
        try:
            self.wait_for(r"vkmsremote: serving ", 600)
        except BaseException:
            self.proc.kill()  # never leave a server (and its broker, then orphaned) behind for later tests
            self.proc.wait(30)
            raise
        self.startup_seconds = time.monotonic() - started
        self.broker = self.broker_pid
        m = MAPPING_RE.search(self.output)
        assert m, self.output
        self.card, self.drm_name = m["card"], m["drm"]
        self.connector_id, self.crtc_id = int(m["conn"]), int(m["crtc"])

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                m = re.search(pattern, self.output)
                if m:
                    return m
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, (
                    f"no {pattern!r} from vkmsremote up (exit {self.proc.poll()}):\n{self.output}")
                self._changed.wait(min(left, 0.5))

    @property
    def broker_pid(self) -> int:
        children = [p for p in _children(self.proc.pid)]
        assert len(children) == 1, f"expected one child (the capture broker) of {self.proc.pid}, got {children}"
        return children[0]

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Stop it as a user would (Ctrl-C): the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(150)
        except subprocess.TimeoutExpired:
            stacks = _stacks(self.proc.pid, *_children(self.proc.pid))
            self.proc.kill()
            raise AssertionError(f"vkmsremote up did not stop on signal {sig}:\n{self.output}\n{stacks}") from None
        self._reader.join(10)
        print(f"--- vkmsremote up (exit {code}, serving after {self.startup_seconds:.1f} s) ---\n{self.output}"
              "--- end ---")  # shown with pytest -s
        deadline = time.monotonic() + 30
        while Path(f"/proc/{self.broker}").exists():
            if time.monotonic() > deadline:
                os.kill(self.broker, signal.SIGKILL)
                raise AssertionError(f"the capture broker (pid {self.broker}) outlived vkmsremote up")
            time.sleep(0.1)
        return code


def _stacks(*pids: int) -> str:
    """What each process is doing (py-spy dump), for a hang's report."""
    out = []
    for pid in pids:
        dump = subprocess.run([str(Path(sys.executable).with_name("py-spy")), "dump", "--pid", str(pid)],
                              capture_output=True, text=True, timeout=60)
        out.append(f"--- py-spy dump {pid} ---\n{dump.stdout}{dump.stderr}")
    return "\n".join(out)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime (proc(5) fields 14 and 15)


def uids(pid: int) -> list[int]:
    line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("Uid:"))
    return [int(v) for v in line.split()[1:]]


# --- a VNC client nobody here wrote ------------------------------------------------------------------------------

_updates: list[tuple[float, int]] = []  # (time, rectangles) of every FramebufferUpdate any test client got


class CountingClient(VNCDoToolClient):  # type: ignore[misc]
    def commitUpdate(self, rectangles: Any = None) -> None:
        _updates.append((time.monotonic(), len(rectangles or ())))
        super().commitUpdate(rectangles)


class CountingFactory(VNCDoToolFactory):  # type: ignore[misc]
    protocol = CountingClient


class Viewer:
    """vncdotool's threaded client: Raw encoding, DesktopSize understood, screen as a PIL RGB image."""

    def __init__(self, port: int) -> None:
        self.client = vnc_api.connect(f"127.0.0.1::{port}", factory_class=CountingFactory, timeout=60)

    def frame(self, incremental: bool = True) -> np.ndarray:
        """The next update's whole screen as (h, w, 3) R, G, B."""
        self.client.refreshScreen(incremental=incremental)
        return np.asarray(self.client.screen.copy().convert("RGB"))

    def request(self) -> None:
        self.client.framebufferUpdateRequest(incremental=True)

    def close(self) -> None:
        self.client.disconnect()


def rgb(bgrx: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(bgrx[..., 2::-1])


class Scanout:
    """What the CRTC scans out, read by the test itself: every framebuffer it showed, mapped once."""

    def __init__(self, card_path: str, crtc_id: int) -> None:
        self.card = Card.open(card_path)
        self.crtc_id = crtc_id
        self.buffers: dict[int, np.ndarray] = {}

    def look(self) -> int:
        crtc = get_crtc(self.card, self.crtc_id, with_properties=False)
        if crtc.fb_id and crtc.fb_id not in self.buffers:
            with map_framebuffer(self.card, crtc.fb_id) as m, m.reading():
                self.buffers[crtc.fb_id] = rgb(m.plane_rows(0, 4))
        return int(crtc.fb_id)

    def follow_until(self, count: int, seconds: float) -> None:
        """Watch the CRTC until it has shown ``count`` framebuffers (or ``seconds`` passed)."""
        deadline = time.monotonic() + seconds
        while len(self.buffers) < count and time.monotonic() < deadline:
            self.look()
            time.sleep(0.005)

    def which(self, frame: np.ndarray) -> int | None:
        return next((fb for fb, b in self.buffers.items() if b.shape == frame.shape and np.array_equal(b, frame)),
                    None)

    def close(self) -> None:
        self.card.close()


class Modetest:
    """libdrm's modetest lighting the connector (stdin kept open: it exits when it closes)."""

    def __init__(self, up: Up, size: str, flip: bool) -> None:
        self.proc = subprocess.Popen(
            ["modetest", "-M", "vkms", "-s", f"{up.connector_id}@{up.crtc_id}:{size}", *(["-v"] if flip else [])],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.terminate()
        self.proc.wait(30)


def wait_lit(card_path: str, crtc_id: int, size: tuple[int, int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with Card.open(card_path) as card:
        while True:
            crtc = get_crtc(card, crtc_id, with_properties=False)
            if crtc.fb_id and crtc.mode is not None and (crtc.mode.width, crtc.mode.height) == size:
                return
            assert time.monotonic() < deadline, f"CRTC {crtc_id} was not lit at {size} within {timeout} s"
            time.sleep(0.05)


@pytest.fixture
def tmp_state(vkms_clean: Path, tmp_path: Path) -> Path:
    return tmp_path


# --- the tests ----------------------------------------------------------------------------------------------------


def test_serves_modetest_flips_and_mode_change_without_privileges(tmp_state: Path) -> None:
    up = Up(tmp_state, port=5931)
    mt: Modetest | None = None
    scan = Scanout(up.card, up.crtc_id)
    viewer: Viewer | None = None
    try:
        assert f"serving XR-0 ({os.path.basename(up.card)} {up.drm_name}, connector {up.connector_id}, " \
               f"CRTC {up.crtc_id})" in up.output
        # Privilege separation, as /proc reports it.
        server_caps, broker = Capabilities.of(up.proc.pid), up.broker_pid
        assert uids(up.proc.pid) == [NOBODY] * 4
        assert (server_caps.effective, server_caps.permitted, server_caps.bounding) == (0, 0, 0)
        assert server_caps.no_new_privs
        broker_caps = Capabilities.of(broker)
        assert uids(broker)[0] == 0 and broker_caps.effective == mask([Cap.SYS_ADMIN])
        assert not any(str(Path(f"/proc/{broker}/fd/{fd}").readlink()).startswith("socket:")
                       and fd not in ("0", "1", "2") and _is_inet(broker, fd)
                       for fd in os.listdir(f"/proc/{broker}/fd")), "the broker holds a network socket"

        viewer = Viewer(up.port)
        dark = viewer.frame(incremental=False)
        assert np.array_equal(dark, rgb(no_signal_frame(1024, 768)))  # nothing lights XR-0 yet

        mt = Modetest(up, "1024x768", flip=True)
        wait_lit(up.card, up.crtc_id, (1024, 768))
        scan.follow_until(2, 30)
        assert len(scan.buffers) == 2, f"modetest -v shows two buffers, saw {sorted(scan.buffers)}"
        seen: list[int] = []
        deadline = time.monotonic() + 40
        while len(seen) < 12 and time.monotonic() < deadline:
            frame = viewer.frame()
            fb = scan.which(frame)
            if fb is None and np.array_equal(frame, dark):
                continue  # the update that was under way when modetest lit the CRTC
            assert fb is not None, "a frame that is not one of the scanned-out buffers"
            seen.append(fb)
        assert len(seen) >= 6 and set(seen) == set(scan.buffers), seen
        switches = sum(a != b for a, b in itertools.pairwise(seen))
        assert switches >= 3, f"page flips not followed: {seen}"

        # Mode change: modetest again at 800x600. The client is told the new size (DesktopSize).
        mt.stop()
        mt = Modetest(up, "800x600", flip=True)
        wait_lit(up.card, up.crtc_id, (800, 600))
        scan.buffers.clear()
        scan.follow_until(2, 30)
        assert {b.shape for b in scan.buffers.values()} == {(600, 800, 3)}
        deadline = time.monotonic() + 40
        matched = 0
        while matched < 4:
            assert time.monotonic() < deadline, "no 800x600 frames equal to modetest's buffers"
            frame = viewer.frame()
            if frame.shape != (600, 800, 3):
                continue  # "no signal" at the old size while modetest restarted
            scan.look()
            assert scan.which(frame) is not None, "an 800x600 frame that is not a scanned-out buffer"
            matched += 1
        assert viewer.client.screen.size == (800, 600)
    finally:
        if viewer is not None:
            viewer.close()
        if mt is not None:
            mt.stop()
        scan.close()
        code = up.stop()
    assert code == 0, up.output
    assert "vkmsremote: stopping" in up.output


def _is_inet(pid: int, fd: str) -> bool:
    inode = str(Path(f"/proc/{pid}/fd/{fd}").readlink())[len("socket:["):-1]
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            if line.split()[9] == inode:
                return True
    return False


def _pattern_frames(up: Up, count: int) -> dict[int, np.ndarray]:
    viewer = Viewer(up.port)
    got: dict[int, np.ndarray] = {}
    try:
        deadline = time.monotonic() + 40
        while len(got) < count:
            assert time.monotonic() < deadline, f"only {len(got)} pattern frames: {sorted(got)}"
            frame = viewer.frame(incremental=bool(got))
            number = decode_frame_number(np.ascontiguousarray(frame[..., ::-1]))
            assert number is not None, "a frame without an intact frame number (torn or not the pattern)"
            got[number] = frame
    finally:
        viewer.close()
    return got


def test_drive_pattern_getfb2_and_writeback_capture_agree(tmp_state: Path) -> None:
    size = (1024, 768)
    base = pattern_base(*size)
    expected = np.zeros((size[1], size[0], 4), np.uint8)
    captures: dict[str, dict[int, np.ndarray]] = {}
    for capture in ("getfb2", "writeback"):
        up = Up(tmp_state, "--drive", "pattern", "--drive-size", "1024x768", "--drive-fps", "5", "--capture", capture,
                "--input", "none", port=5932)
        try:
            captures[capture] = _pattern_frames(up, 6)
        finally:
            code = up.stop()
        assert code == 0, up.output
        with Card.open(up.card) as card:  # the driver turned the CRTC off and gave up master on exit
            assert get_crtc(card, up.crtc_id, with_properties=False).fb_id == 0
    for capture, frames in captures.items():
        numbers = sorted(frames)
        assert len(numbers) >= 6 and numbers == sorted(set(numbers)), (capture, numbers)
        for number, frame in frames.items():
            draw_pattern(expected, base, number)
            assert np.array_equal(frame, rgb(expected)), f"{capture}: frame {number} differs from the pattern"
    common = set(captures["getfb2"]) & set(captures["writeback"])
    for number in common:  # the same frame through both capture paths
        assert np.array_equal(captures["getfb2"][number], captures["writeback"][number])


def test_static_screen_sends_nothing_and_idles(tmp_state: Path, record_property: Any) -> None:
    up = Up(tmp_state, "--input", "none", port=5933)
    mt = Modetest(up, "1024x768", flip=False)
    viewer: Viewer | None = None
    try:
        wait_lit(up.card, up.crtc_id, (1024, 768))
        viewer = Viewer(up.port)
        first = viewer.frame(incremental=False)
        if np.array_equal(first, rgb(no_signal_frame(1024, 768))):
            first = viewer.frame()
        scan = Scanout(up.card, up.crtc_id)
        scan.look()
        assert scan.which(first) is not None, "the static picture is not modetest's buffer"
        scan.close()
        _updates.clear()
        viewer.request()  # an incremental request stays pending: the server may answer only with changes
        time.sleep(8.0)  # nothing changes: after 0.5 s the reader is idle, after 5.5 s deeply idle
        pid, broker = up.proc.pid, up.broker_pid
        t0, cpu0, bcpu0 = time.monotonic(), cpu_seconds(pid), cpu_seconds(broker)
        time.sleep(10.0)
        elapsed = time.monotonic() - t0
        server_pct = 100 * (cpu_seconds(pid) - cpu0) / elapsed
        broker_pct = 100 * (cpu_seconds(broker) - bcpu0) / elapsed
        record_property("static_server_cpu_percent", round(server_pct, 2))
        record_property("static_broker_cpu_percent", round(broker_pct, 2))
        print(f"static screen, {elapsed:.1f} s: server {server_pct:.2f} % CPU, broker {broker_pct:.2f} % CPU")
        assert sum(n for _, n in _updates) == 0, f"rectangles sent for a static screen: {_updates}"
        # The figure (0.7 % under TCG on a quiet host, far less natively) is reported, not held to 1 % here:
        # a timed bound on a shared CI host would be flaky. What must hold: no busy looking while idle.
        assert server_pct < 5.0, f"the server used {server_pct:.2f} % CPU on a static screen"
        assert broker_pct < 5.0, f"the broker used {broker_pct:.2f} % CPU on a static screen"
    finally:
        if viewer is not None:
            viewer.close()
        mt.stop()
        code = up.stop(signal.SIGTERM)
    assert code == 0, up.output

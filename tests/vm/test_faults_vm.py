"""Lifecycle faults: `up` killed with SIGKILL at any point, then `up` again recovers (adopts or rebuilds the
device) and `down` removes everything; SIGKILL while serving, then `up` serves again; SIGTERM stops cleanly,
releasing what clients hold down and DRM master.

Two tiers. On the host (not marked vm): a fake configfs and a forked child killed by SIGKILL after each
possible number of configfs operations, so every crash point of `up` and `down` is covered exactly. In the
test VM (marked vm): the real CLI killed at random moments (N iterations: $VKMSREMOTE_FAULT_ITERATIONS,
default 10; 100 for the full campaign), with configfs, udev and DRM for real, plus the serving faults.
"""

from __future__ import annotations

import functools
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from fake_configfs import FakeConfigfs

from vkmsremote.vkms.configfs import Configfs
from vkmsremote.vkms.device import down, status, up
from vkmsremote.vkms.plan import plan_create
from vkmsremote.vkms.profile import load_profile
from vkmsremote.vkms.state import StateStore

REPO = Path(__file__).resolve().parents[2]
DEVICE = "vkmsremote"  # device.name in configfs/xr-0.toml
ITERATIONS = int(os.environ.get("VKMSREMOTE_FAULT_ITERATIONS", "10"))
SYS_VKMS = Path("/sys/kernel/config/vkms")


# --- host: every crash point, on a fake configfs -------------------------------------------------------------


def _fake(tmp_path: Path, name: str) -> tuple[Configfs, StateStore]:
    root = tmp_path / name
    (root / "vkms").mkdir(parents=True)
    cfs = FakeConfigfs(root)
    return cfs, StateStore(tmp_path / f"{name}-state", configfs=cfs)


def _killed_after(steps: int, action: Callable[[], object], cfs: Configfs, store: StateStore | None = None) -> bool:
    """Run ``action`` in a forked child that SIGKILLs itself before its (steps+1)-th step: a configfs
    operation, or (with ``store``) a write of the state record. True if it was killed (False: it finished)."""
    pid = os.fork()
    if pid == 0:  # the child: no rollback, no cleanup, exactly like kill -9
        done = [0]

        def counted(real: Callable[[Any], None]) -> Callable[[Any], None]:
            def step(arg: Any) -> None:
                if done[0] == steps:
                    os.kill(os.getpid(), signal.SIGKILL)
                real(arg)
                done[0] += 1
            return step

        cfs.run = counted(cfs.run)  # type: ignore[method-assign]
        if store is not None:
            store.save = counted(store.save)  # type: ignore[method-assign]
        try:
            action()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0
    return False


def _assert_up(cfs: Configfs, store: StateStore) -> None:
    spec = load_profile("xr-0")
    observed = cfs.observe(spec.name)
    assert observed is not None and observed.enabled
    assert spec.layout.differences(observed.layout) == []
    record = store.load(spec.name)
    assert record is not None and not record.in_progress


def _assert_gone(cfs: Configfs, store: StateStore) -> None:
    assert list(cfs.vkms.iterdir()) == []
    assert store.devices() == []


def test_every_crash_point_of_up_recovers(tmp_path: Path) -> None:
    """Killed before any of its steps: each configfs operation and each write of the state record. The last
    crash point is the window after ``enabled`` was written (the card exists) and before the finished record:
    the record written ahead of the first change must already name the device, or nothing could adopt or
    remove it."""
    spec = load_profile("xr-0")
    n_ops = len(plan_create(spec, PurePosixPath("/x/vkms")))
    assert n_ops > 5
    n_steps = n_ops + 2  # the record written ahead (in progress), the configfs operations, the finished record
    windows = 0
    for k in range(n_steps + 1):
        for then in ("up", "down"):
            cfs, store = _fake(tmp_path, f"up-{k}-{then}")
            killed = _killed_after(k, functools.partial(up, spec, configfs=cfs, state=store), cfs, store)
            assert killed == (k < n_steps), k
            observed = cfs.observe(spec.name)
            if observed is not None and observed.enabled and killed:  # enabled, the finished record not written
                record = store.load(spec.name)
                assert record is not None and record.in_progress, (k, record)
                assert PurePosixPath(cfs.vkms / spec.name) in record.created, record
                windows += 1
            if then == "up":
                result = up(spec, configfs=cfs, state=store)  # adopts or rebuilds, never refuses
                _assert_up(cfs, store)
                assert result.device.name == spec.name
            down(None, configfs=cfs, state=store)  # after the crash, or after the recovery
            _assert_gone(cfs, store)
    assert windows == 2, "the kill after enabling and before the finished record was not exercised"


def test_every_crash_point_of_down_recovers(tmp_path: Path) -> None:
    spec = load_profile("xr-0")
    cfs, store = _fake(tmp_path, "probe")
    up(spec, configfs=cfs, state=store)
    observed = cfs.observe(spec.name)
    assert observed is not None
    n_ops = len(down(None, configfs=cfs, state=store)[0].applied)
    for k in range(n_ops + 1):
        for then in ("up", "down"):
            cfs, store = _fake(tmp_path, f"down-{k}-{then}")
            up(spec, configfs=cfs, state=store)
            killed = _killed_after(k, functools.partial(down, None, configfs=cfs, state=store), cfs)
            assert killed == (k < n_ops), k
            if then == "up":
                up(spec, configfs=cfs, state=store)
                _assert_up(cfs, store)
            down(None, configfs=cfs, state=store)
            _assert_gone(cfs, store)


# --- VM: the real CLI, killed at random moments -------------------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "VKMSREMOTE_STATE_DIR": str(tmp_path / "state"), "VKMSREMOTE_CONFIGFS_ROOT": ""}


def _cli(env: dict[str, str], *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vkmsremote", *argv], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def _vkms_entries() -> list[str]:
    return sorted(p.name for p in SYS_VKMS.iterdir())


def _check_up(store: StateStore) -> None:
    (dev,) = status(DEVICE, configfs=Configfs(), state=store)
    assert dev.enabled and dev.card and dev.managed, dev
    assert all(c.connector_id for c in dev.connectors), dev


@pytest.mark.vm
@pytest.mark.timeout(300 + 150 * ITERATIONS)  # each iteration starts Python under TCG at least once
def test_kill9_during_up_then_up_or_down_recovers(vkms_clean: Path, tmp_path: Path, record_property: Any) -> None:
    """The CLI's `up` killed at a random moment, ``ITERATIONS`` times; after each kill, alternately, `up`
    again (here through the library, to spare the VM a Python start-up) must leave XR-0 complete and
    enabled, or `down` must remove everything."""
    env = _env(tmp_path)
    store = StateStore(tmp_path / "state", configfs=Configfs())
    spec = load_profile("xr-0")
    t0 = time.monotonic()
    first = _cli(env, "up", "--no-serve")
    normal = time.monotonic() - t0
    assert first.returncode == 0, first.stderr
    down(None, configfs=Configfs(), state=store)
    assert _vkms_entries() == []
    rng = random.Random(20261122)
    outcomes: list[str] = []
    for i in range(ITERATIONS):
        proc = subprocess.Popen([sys.executable, "-m", "vkmsremote", "up", "--no-serve"], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i % 2 == 0:  # anywhere in the run, start-up included
            time.sleep(rng.uniform(0, normal * 1.1))
        else:  # while it changes configfs: from the moment the device directory appears
            deadline = time.monotonic() + normal * 3
            while not (SYS_VKMS / DEVICE).exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.choice((0.0, rng.uniform(0, 0.01), rng.uniform(0, 0.3))))  # mid-apply, or after
        proc.kill()
        proc.wait(60)
        state = "absent" if not (SYS_VKMS / DEVICE).exists() else (
            "enabled" if (SYS_VKMS / DEVICE / "enabled").read_text().strip() == "1" else "partial")
        then = "up" if (i // 2) % 2 == 0 else "down"
        outcomes.append(f"{state}->{then}")
        if then == "up":
            try:
                up(spec, configfs=Configfs(), state=store, timeout=120)
            except Exception as exc:
                raise AssertionError(f"iteration {i} ({state}): up after kill -9 failed: {exc}") from exc
            _check_up(store)
        try:
            down(None, configfs=Configfs(), state=store, timeout=120)
        except Exception as exc:
            raise AssertionError(f"iteration {i} ({state}): down after kill -9 failed: {exc}") from exc
        assert _vkms_entries() == [], f"iteration {i} ({state}): down left {_vkms_entries()}"
        assert store.devices() == [], f"iteration {i}: a state record is left"
        print(f"iteration {i}: killed with the device {state}, then {then}: recovered", flush=True)
    record_property("kill9_outcomes", " ".join(outcomes))
    print(f"kill -9 outcomes ({ITERATIONS}): {' '.join(outcomes)}")
    assert any(o.startswith("partial") or o.startswith("enabled") for o in outcomes) or ITERATIONS < 4, outcomes


# --- VM: serving -------------------------------------------------------------------------------------------------------


class Served:
    """``vkmsremote up`` serving (a subprocess), its output collected."""

    def __init__(self, env: dict[str, str], port: int, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "vkmsremote", "up", "--port", str(port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
        self.port = port
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 240
        while "vkmsremote: serving" not in self.output:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output
            time.sleep(0.1)
        m = re.search(r"(/dev/dri/card\d+)", self.output)
        assert m, self.output
        self.card = m.group(1)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def children(self) -> list[int]:
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if ppid == self.proc.pid:
                    out.append(int(entry.name))
        return out


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _rfb_client(port: int) -> tuple[socket.socket, int, int]:
    """Connect (RFB 3.8, security None), ask for Raw; returns the socket and the size."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    assert _recv(sock, 12).startswith(b"RFB ")
    sock.sendall(b"RFB 003.008\n")
    types = _recv(sock, _recv(sock, 1)[0])
    assert 1 in types, types
    sock.sendall(b"\x01")
    assert _recv(sock, 4) == b"\0\0\0\0"
    sock.sendall(b"\x01")
    w, h = struct.unpack(">HH", _recv(sock, 4))
    _recv(sock, 16)
    _recv(sock, struct.unpack(">I", _recv(sock, 4))[0])
    sock.sendall(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw
    return sock, w, h


def _one_frame(sock: socket.socket, w: int, h: int) -> None:
    """Request and read one whole Raw update."""
    sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
    while True:
        t = _recv(sock, 1)[0]
        if t == 0:
            _recv(sock, 1)
            for _ in range(struct.unpack(">H", _recv(sock, 2))[0]):
                _x, _y, rw, rh, enc = struct.unpack(">HHHHi", _recv(sock, 12))
                assert enc == 0, enc
                _recv(sock, rw * rh * 4)
            return
        raise AssertionError(f"unexpected server message {t}")


def _pids_alive(pids: list[int]) -> list[int]:
    """The pids that still run (zombies count as gone)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            alive.append(pid)
    return alive


@pytest.mark.vm
@pytest.mark.timeout(1200)
def test_kill9_while_serving_then_up_serves_again(vkms_clean: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    args = ("--drive", "pattern", "--drive-size", "640x480", "--drive-fps", "5", "--input", "none")
    first = Served(env, 5941, *args)
    sock, w, h = _rfb_client(first.port)
    _one_frame(sock, w, h)
    broker = first.children()
    assert broker, "no capture broker child"
    first.proc.kill()  # SIGKILL mid-serving: no cleanup runs in the server
    first.proc.wait(60)
    deadline = time.monotonic() + 60
    while _pids_alive(broker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pids_alive(broker), "the capture broker outlived its parent's SIGKILL"
    sock.close()
    second = Served(env, 5941, *args)  # same port, same device: adopted
    try:
        assert "already up" in second.output, second.output
        sock, w, h = _rfb_client(second.port)
        _one_frame(sock, w, h)
        sock.close()
    finally:
        second.proc.send_signal(signal.SIGTERM)
        code = second.proc.wait(120)
    assert code == 0, second.output
    gone = _cli(env, "down")
    assert gone.returncode == 0 and _vkms_entries() == [], gone.stderr


@pytest.mark.vm
@pytest.mark.timeout(900)
def test_sigterm_releases_held_keys_and_drm_master(vkms_clean: Path, tmp_path: Path) -> None:
    from evdev import InputDevice, list_devices
    from evdev import ecodes as e

    from vkmsremote.drm.card import Card
    from vkmsremote.errors import DrmError

    env = _env(tmp_path)
    served = Served(env, 5942, "--drive", "pattern", "--drive-size", "640x480", "--drive-fps", "5")
    try:
        with Card.open(served.card) as card, pytest.raises(DrmError):
            card.set_master()  # the capture broker drives the CRTC: it is DRM master, nobody else can be
        sock, w, h = _rfb_client(served.port)
        _one_frame(sock, w, h)
        devices = [InputDevice(p) for p in list_devices()]
        ours = [d for d in devices if d.name.startswith("vkmsremote")]
        assert len(ours) >= 2, [d.name for d in devices]
        seen: list[tuple[int, int, int]] = []

        def read_all(stop_after: float) -> None:
            fds = {d.fd: d for d in ours}
            deadline = time.monotonic() + stop_after
            while fds and time.monotonic() < deadline:
                ready = select.select(list(fds), [], [], 0.2)[0]
                for fd in ready:
                    try:
                        seen.extend((ev.type, ev.code, ev.value) for ev in fds[fd].read())
                    except OSError:  # the device went away with the server
                        del fds[fd]

        sock.sendall(struct.pack(">BBxxI", 4, 1, 0x61))  # KeyEvent: 'a' down, never released by the client
        sock.sendall(struct.pack(">BBHH", 5, 1, 10, 10))  # PointerEvent: left button down, never released
        t = threading.Thread(target=read_all, args=(60,), daemon=True)
        t.start()
        deadline = time.monotonic() + 60
        while not ({(e.EV_KEY, e.KEY_A, 1), (e.EV_KEY, e.BTN_LEFT, 1)} <= set(seen)):
            assert time.monotonic() < deadline, f"the key and button presses never arrived: {seen}"
            time.sleep(0.05)
        served.proc.send_signal(signal.SIGTERM)
        code = served.proc.wait(120)
        t.join(30)
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
    assert code == 0, served.output
    assert (e.EV_KEY, e.KEY_A, 0) in seen and (e.EV_KEY, e.BTN_LEFT, 0) in seen, seen
    assert seen.index((e.EV_KEY, e.KEY_A, 0)) > seen.index((e.EV_KEY, e.KEY_A, 1))
    with Card.open(served.card) as card:
        card.set_master()  # DRM master was given up: anyone may take it now
        card.drop_master()
    assert _cli(env, "down").returncode == 0 and _vkms_entries() == []

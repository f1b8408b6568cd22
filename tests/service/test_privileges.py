"""Giving up privileges, for real, in child processes on the host (needs root, as `vkmsremote up` does).

Each scenario runs in a fresh interpreter that reports what the kernel says afterwards (/proc/self/status,
what it can still open, whether it can get root back), so nothing here changes the test process itself.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vkmsremote.errors import UsageError
from vkmsremote.server.input import WakingSink
from vkmsremote.service.privileges import Cap, Capabilities, last_cap, mask, resolve_user

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges can only be tested as root")


def run_child(body: str, tmp_path: Path) -> dict[str, object]:
    script = textwrap.dedent("""
        import json, os, socket, sys
        from vkmsremote.service.privileges import Capabilities, drop_privileges, keep_only, Cap
        out = {}
    """) + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@needs_root
def test_drop_to_nobody_leaves_no_way_back(tmp_path: Path) -> None:
    secret = tmp_path / "root-only"
    secret.write_text("kept open before the drop")
    secret.chmod(0o600)
    out = run_child(f"""
        kept = os.open({str(secret)!r}, os.O_RDONLY)        # opened as root, like the card and uinput fds
        listener = socket.socket(); listener.bind(("127.0.0.1", 0))
        dropped = drop_privileges("nobody")
        caps = Capabilities.of()
        out["dropped"] = [dropped.user, dropped.uid, dropped.gid]
        out["ids"] = [os.getresuid(), os.getresgid(), os.getgroups()]
        out["caps"] = [caps.effective, caps.permitted, caps.inheritable, caps.bounding, caps.ambient]
        out["no_new_privs"] = caps.no_new_privs
        out["kept_fd_reads"] = os.pread(kept, 100, 0).decode()
        try:
            open({str(secret)!r}).read(); out["reopen"] = "allowed"
        except PermissionError:
            out["reopen"] = "denied"
        for how in ("setuid", "setgid", "setgroups"):
            try:
                {{"setuid": lambda: os.setuid(0), "setgid": lambda: os.setgid(0),
                  "setgroups": lambda: os.setgroups([0])}}[how]()
                out[how] = "allowed"
            except PermissionError:
                out[how] = "denied"
        try:
            socket.socket().bind(("127.0.0.1", 80)); out["port80"] = "allowed"
        except PermissionError:
            out["port80"] = "denied"
        out["listener_still_bound"] = listener.getsockname()[1] > 0
    """, tmp_path)
    assert out["dropped"] == ["nobody", 65534, 65534]
    assert out["ids"] == [[65534] * 3, [65534] * 3, []]
    assert out["caps"] == [0, 0, 0, 0, 0]
    assert out["no_new_privs"] is True
    assert out["kept_fd_reads"] == "kept open before the drop"
    assert out["reopen"] == "denied"
    assert (out["setuid"], out["setgid"], out["setgroups"], out["port80"]) == ("denied",) * 4
    assert out["listener_still_bound"] is True


@needs_root
def test_broker_keeps_only_cap_sys_admin(tmp_path: Path) -> None:
    out = run_child("""
        caps = keep_only([Cap.SYS_ADMIN])
        out["uid"] = os.getuid()
        out["caps"] = [caps.effective, caps.permitted, caps.inheritable, caps.bounding, caps.ambient]
        out["no_new_privs"] = caps.no_new_privs
        try:
            socket.socket().bind(("127.0.0.1", 81)); out["port81"] = "allowed"
        except PermissionError:
            out["port81"] = "denied"
    """, tmp_path)
    sys_admin = mask([Cap.SYS_ADMIN])
    assert out["uid"] == 0
    assert out["caps"] == [sys_admin, sys_admin, 0, sys_admin, 0]
    assert out["no_new_privs"] is True
    assert out["port81"] == "denied"  # CAP_NET_BIND_SERVICE is gone even though the uid is still 0


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_LIBC = ctypes.CDLL(None, use_errno=True)
PR_CAPBSET_READ, PR_GET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET = 23, 39, 47, 1


def kernel_caps(pid: int) -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of ``pid`` from capget(2): the kernel's answer, not /proc's text."""
    header = _CapHeader(0x20080522, pid)  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set
    data = (_CapData * 2)()
    assert _LIBC.capget(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())
    return tuple((data[1].__getattribute__(f) << 32) | data[0].__getattribute__(f)  # type: ignore[return-value]
                 for f in ("effective", "permitted", "inheritable"))


def test_capabilities_parse_agrees_with_the_kernel() -> None:
    """Capabilities.of() (text of /proc/PID/status) against capget(2) and prctl(2) for this process and for a
    child started by setpriv with no_new_privs and (as root) a one-capability bounding set."""
    caps = Capabilities.of()
    assert (caps.effective, caps.permitted, caps.inheritable) == kernel_caps(0)
    bounding = mask(c for c in range(last_cap() + 1) if _LIBC.prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1)
    ambient = mask(c for c in range(last_cap() + 1)
                   if _LIBC.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c, 0, 0) == 1)
    assert (caps.bounding, caps.ambient) == (bounding, ambient)
    assert caps.no_new_privs is (_LIBC.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1)
    assert caps.bounding != 0  # the bits really were read (a test process always has some bounding caps)

    # Another process, in a state this one is not in: NoNewPrivs set, and as root a bounding set of one.
    argv = ["setpriv", "--no-new-privs"]
    if os.geteuid() == 0:
        argv += ["--bounding-set=-all,+sys_admin", "--inh-caps=-all"]
    child = subprocess.Popen([*argv, "sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/comm").read_text().strip() != "sleep":  # setpriv has exec'd sleep
            assert time.monotonic() < deadline, "setpriv did not exec sleep"
            time.sleep(0.01)
        theirs = Capabilities.of(child.pid)
        assert theirs.no_new_privs is True
        assert (theirs.effective, theirs.permitted, theirs.inheritable) == kernel_caps(child.pid)
        if os.geteuid() == 0:
            assert theirs.bounding == mask([Cap.SYS_ADMIN])
            assert theirs.effective == theirs.permitted == mask([Cap.SYS_ADMIN])  # exec kept root's caps in bound
        else:
            assert theirs.bounding == caps.bounding and theirs.effective == 0
    finally:
        child.kill()
        child.wait()


def test_resolve_user_refuses_root_and_unknown_users() -> None:
    with pytest.raises(UsageError, match="is root"):
        resolve_user("root")
    with pytest.raises(UsageError, match="is root"):
        resolve_user("0")
    with pytest.raises(UsageError, match="no user"):
        resolve_user("no-such-user-vkmsremote")
    assert resolve_user("nobody").pw_uid == 65534


def test_waking_sink_wakes_on_input_and_forwards_everything() -> None:
    from vkmsremote.server.input import RecordingSink

    class Inner(RecordingSink):
        def set_screen(self, w: int, h: int) -> None:
            self.events.append(("screen", w, h))

        def release_all(self) -> None:
            self.events.append(("release_all",))

        def close(self) -> None:
            self.events.append(("close",))

    woken: list[int] = []
    inner = Inner()
    sink = WakingSink(inner, lambda: woken.append(1))
    sink.key(0x61, True)
    sink.key_scancode(0x61, 0x1E, False)
    sink.pointer(3, 4, 1)
    sink.clipboard("x")
    sink.set_screen(800, 600)
    sink.release_all()
    sink.close()
    assert len(woken) == 3  # key, scancode, pointer: not clipboard or housekeeping
    assert inner.events == [("key", 0x61, True), ("scancode", 0x61, 0x1E, False), ("pointer", 3, 4, 1),
                            ("clipboard", "x"), ("screen", 800, 600), ("release_all",), ("close",)]
    WakingSink(RecordingSink(), lambda: None).close()  # an inner sink without close() is fine

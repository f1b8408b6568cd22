"""vkmsremote.desktop on the host: DRM client rows, compositor detection, binding plans, sway's wire format.

The real compositors are in tests/vm/test_wayland_vm.py; here each decision is checked against inputs
written as the kernel and sway write them.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vkmsremote.desktop import binding as b
from vkmsremote.desktop.clients import DrmClient, card_clients, drm_master, parse_clients
from vkmsremote.desktop.sway_ipc import (
    Header,
    IpcError,
    MessageType,
    SwayIpc,
    encode,
    running_sway_sockets,
    socket_path_of,
)

# drivers/gpu/drm/drm_debugfs.c drm_clients_info: header, then one row per open file
CLIENTS = """\
             command  tgid dev master a   uid      magic                                                             name                   id
              weston   412   0   y    y     0          0                                                          <unset>                    5
          vkmsremote   530   0   n    y     0          0                                                          <unset>                    6
                Xorg   601   1   y    y     0          0                                                          <unset>                    7
"""


def test_clients_rows_of_one_card() -> None:
    assert parse_clients(CLIENTS, 0) == [DrmClient(412, "weston", True, 0), DrmClient(530, "vkmsremote", False, 0)]
    assert parse_clients(CLIENTS, 1) == [DrmClient(601, "Xorg", True, 0)]
    assert parse_clients(CLIENTS.splitlines()[0]) == []  # header only: nobody


def test_master_from_debugfs(tmp_path: Path) -> None:
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "clients").write_text(CLIENTS)
    master = drm_master("/dev/dri/card0", debugfs=tmp_path, proc=tmp_path / "noproc")
    assert master == DrmClient(412, "weston", True, 0)
    assert drm_master("/dev/dri/card0", debugfs=tmp_path, exclude=[412]) is None  # the others are not master


def test_master_opened_by_seatd_is_the_compositor_it_serves(tmp_path: Path) -> None:
    """seatd (libseat) opens the card and passes the fd to sway: debugfs names seatd, /proc shows sway."""
    card = tmp_path / "card0"
    card.write_text("")
    (tmp_path / "dri" / "0").mkdir(parents=True)
    (tmp_path / "dri" / "0" / "clients").write_text(CLIENTS.splitlines()[0] + "\n"
                                                   "               seatd   136   0   y    y     0          0\n")
    proc = tmp_path / "proc"
    for pid, comm in ((136, "seatd"), (137, "sway")):
        (proc / str(pid) / "fd").mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(comm + "\n")
        os.symlink(card, proc / str(pid) / "fd" / "9")
    found = drm_master(str(card), debugfs=tmp_path / "dri", proc=proc)
    assert found is not None and (found.pid, found.command, found.master) == (137, "sway", True)
    assert found.source == "debugfs via seatd"


def test_master_from_proc_when_debugfs_is_unreadable(tmp_path: Path) -> None:
    card = tmp_path / "card0"
    card.write_text("")
    proc = tmp_path / "proc"
    for pid, comm, holds in ((10, "sway", True), (11, "foot", False), (12, "python3", True)):
        (proc / str(pid) / "fd").mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(comm + "\n")
        if holds:
            os.symlink(card, proc / str(pid) / "fd" / "7")
    clients = card_clients(str(tmp_path / "card0"), debugfs=tmp_path / "nodebugfs", proc=proc)
    assert [(c.pid, c.command, c.master, c.source) for c in clients] == [(10, "sway", None, "proc"),
                                                                          (12, "python3", None, "proc")]
    found = drm_master(str(tmp_path / "card0"), debugfs=tmp_path / "nodebugfs", proc=proc)
    assert found is not None and found.command == "sway"


def holder(command: str, pid: int = 77) -> Callable[[str], DrmClient | None]:
    return lambda card: DrmClient(pid, command, True, 0)


def test_plans_per_compositor(tmp_path: Path) -> None:
    weston = b.plan_binding("auto", "/dev/dri/card0", "Virtual-1", master=holder("weston"))
    assert weston.method is b.Method.UDEV_RULE and weston.compositor is b.Compositor.WESTON
    assert 'ENV{WL_OUTPUT}="Virtual-1"' in weston.command
    xorg = b.plan_binding("auto", "/dev/dri/card0", "Virtual-1", master=holder("Xorg"))
    assert xorg.method is b.Method.PLACEMENT
    other = b.plan_binding("auto", "/dev/dri/card0", "Virtual-1", master=holder("gnome-shell"))
    assert other.method is b.Method.MANUAL
    assert "swaymsg input 0:0:vkmsremote_pointer map_to_output Virtual-1" in other.describe()
    named = b.plan_binding("Virtual-3", "/dev/dri/card0", "Virtual-1", master=holder("weston"))
    assert named.output == "Virtual-3"
    off = b.plan_binding("none", "/dev/dri/card0", "Virtual-1", master=holder("weston"))
    assert off.method is b.Method.NONE
    nobody = b.plan_binding("auto", "/dev/dri/card0", "Virtual-1", master=lambda card: None)
    assert nobody.method is b.Method.UDEV_RULE and "sway started later" in nobody.describe()
    # sway without a socket to talk to: the command, not a silent nothing
    lost = b.plan_binding("auto", "/dev/dri/card0", "Virtual-1", master=holder("sway", pid=2 ** 22 + 1))
    assert lost.method is b.Method.MANUAL and lost.command.startswith("swaymsg ")


def test_udev_rule_written_and_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(b, "_udevadm", lambda *argv: calls.append(argv))
    monkeypatch.setattr(b, "_pointer_event_nodes", lambda: [])
    plan = b.plan_binding("auto", "/dev/dri/card0", "Virtual-2", master=holder("weston"))
    said: list[str] = []
    binding = b.apply_binding(plan, rules_dir=tmp_path)
    binding.say = said.append
    rule = (tmp_path / b.RULE_NAME).read_text()
    assert 'ATTRS{name}=="vkmsremote pointer", ENV{WL_OUTPUT}="Virtual-2"' in rule
    assert calls == [("control", "--reload")]
    binding.undo()
    binding.undo()  # idempotent
    assert not (tmp_path / b.RULE_NAME).exists()
    assert calls == [("control", "--reload")] * 2
    assert said == ["pointer binding to Virtual-2 undone (udev WL_OUTPUT rule)"]


def test_failed_binding_becomes_the_manual_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*argv: str) -> None:
        raise OSError("udevadm: not found")

    monkeypatch.setattr(b, "_udevadm", fail)
    binding = b.apply_binding(b.plan_binding("auto", "/dev/dri/card0", "Virtual-1", master=holder("weston")),
                              rules_dir=tmp_path)
    assert binding.plan.method is b.Method.MANUAL and "udevadm: not found" in binding.plan.reason
    assert not (tmp_path / b.RULE_NAME).exists()  # what was written is taken back


def test_keeper_undoes_when_the_parent_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The keeper outlives a privilege drop: here the 'parent' is a forked child that exits."""
    monkeypatch.setattr(b, "_udevadm", lambda *argv: None)
    monkeypatch.setattr(b, "_pointer_event_nodes", lambda: [])
    rule = tmp_path / b.RULE_NAME
    pid = os.fork()
    if pid == 0:
        try:
            binding = b.apply_binding(b.plan_binding("auto", "/dev/dri/card0", "Virtual-1", master=holder("weston")),
                                      rules_dir=tmp_path)
            binding.undo_at_exit_of_parent()
        finally:
            os._exit(0 if rule.exists() else 1)
    assert os.waitpid(pid, 0)[1] == 0  # the rule existed while the parent lived
    deadline = time.monotonic() + 10
    while rule.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not rule.exists()


# --- sway IPC (sway-ipc(7)) -----------------------------------------------------------------------------


def test_ipc_frames() -> None:
    assert encode(MessageType.RUN_COMMAND, "nop") == b"i3-ipc" + struct.pack("=II", 3, 0) + b"nop"
    assert Header.from_bytes(b"i3-ipc" + struct.pack("=II", 2, 100)) == Header(2, 100)
    with pytest.raises(IpcError, match="magic"):
        Header.from_bytes(b"i3-ipx" + struct.pack("=II", 2, 100))
    with pytest.raises(IpcError, match="cap"):
        Header.from_bytes(b"i3-ipc" + struct.pack("=II", 1 << 30, 0))


def fake_sway(path: Path, replies: list[object], seen: list[tuple[int, str]]) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        conn, _ = server.accept()
        with conn, server:
            for reply in replies:
                head = conn.recv(14, socket.MSG_WAITALL)
                length, kind = struct.unpack("=II", head[6:])
                seen.append((kind, conn.recv(length, socket.MSG_WAITALL).decode() if length else ""))
                body = json.dumps(reply).encode()
                conn.sendall(b"i3-ipc" + struct.pack("=II", len(body), kind) + body)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_ipc_command_and_refusal(tmp_path: Path) -> None:
    seen: list[tuple[int, str]] = []
    t = fake_sway(tmp_path / "s.sock", [[{"success": True}], [{"success": False, "error": "Unknown output"}]], seen)
    with SwayIpc(tmp_path / "s.sock") as ipc:
        ipc.command("input 0:0:vkmsremote_pointer map_to_output Virtual-1")
        with pytest.raises(IpcError, match="Unknown output"):
            ipc.command("input 0:0:vkmsremote_pointer map_to_output Nowhere")
    t.join(5)
    assert seen == [(0, "input 0:0:vkmsremote_pointer map_to_output Virtual-1"),
                    (0, "input 0:0:vkmsremote_pointer map_to_output Nowhere")]


def test_sway_socket_path_from_the_environment(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "environ").write_bytes(b"HOME=/x\0XDG_RUNTIME_DIR=/run/user/1000\0")
    uid = os.stat(proc / "42").st_uid
    assert socket_path_of(42, proc=proc) == Path(f"/run/user/1000/sway-ipc.{uid}.42.sock")
    (proc / "42" / "environ").write_bytes(b"SWAYSOCK=/tmp/s.sock\0")
    assert socket_path_of(42, proc=proc) == Path("/tmp/s.sock")
    assert socket_path_of(43, proc=proc) is None


def test_running_sway_sockets_from_proc(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, comm, env in ((9, "foot", b"SWAYSOCK=/x"), (12, "sway", b"SWAYSOCK=" + str(tmp_path / "a.sock").encode()),
                           (100, "sway", b"SWAYSOCK=" + str(tmp_path / "gone.sock").encode())):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(comm + "\n")
        (proc / str(pid) / "environ").write_bytes(env + b"\0")
    (tmp_path / "a.sock").write_text("")
    # foot is no sway; pid 100's socket does not exist (a sway still starting, or one that crashed)
    assert running_sway_sockets(proc=proc) == [tmp_path / "a.sock"]


def test_pointer_output_argument() -> None:
    assert b.pointer_output_arg("Virtual-1") == "Virtual-1"
    with pytest.raises(b.UsageError):
        b.pointer_output_arg("a b")

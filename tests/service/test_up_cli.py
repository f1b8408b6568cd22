"""`vkmsremote up`'s serving options on the host: what is refused before anything changes, the command the
test VM runs for `up --vm` (and why it may listen without a password there), and the forward's wiring.
The serving itself needs the kernel: tests/vm/test_serve_vm.py.
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import fake_configfs
import pytest

from vkmsremote import cli
from vkmsremote.errors import DeviceStateError, UsageError
from vkmsremote.service import vm as upvm
from vkmsremote.service.up import ServeTarget, check_options, target_of
from vkmsremote.vkms.device import ConnectorMapping
from vkmsremote.vm.command import Forward, VmSpec, qemu_opts


def parse(*argv: str) -> argparse.Namespace:
    args = cli.build_parser().parse_args(["up", *argv])
    return args


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "configfs"
    (root / "vkms").mkdir(parents=True)
    monkeypatch.setenv("VKMSREMOTE_CONFIGFS_ROOT", str(root))
    fake_configfs.install(monkeypatch)  # the command line's Configfs on this directory is the test double
    monkeypatch.setenv("VKMSREMOTE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("VKMSREMOTE_PASSWORD", raising=False)
    return root


def test_defaults() -> None:
    args = parse()
    assert (args.listen, args.port, args.web, args.drive, args.capture, args.input, args.user) == (
        "127.0.0.1", 5900, None, None, "getfb2", "uinput", "nobody")
    assert not (args.no_serve or args.vm or args.down_on_exit or args.insecure_listen)
    assert parse("--web").web == 5800 and parse("--web", "6080").web == 6080


@pytest.mark.parametrize(("argv", "message"), [
    (["--capture", "writeback"], "--capture writeback needs --drive"),
    (["--no-serve", "--drive", "pattern"], "--drive cannot be used with --no-serve"),
    (["--no-serve", "--down-on-exit", "--web"], "--web, --down-on-exit cannot be used with --no-serve"),
    (["--web", "5900"], "--web and --port are both 5900"),
    (["--drive", "pattern", "--drive-fps", "-1"], "--drive-fps must be 0 or more"),
    (["--mode", "1920x1080@90"], "--mode needs --drive pattern"),
    (["--drive", "pattern", "--mode", "1920x1080", "--drive-size", "800x600"], "--mode and --drive-size both"),
])
def test_refused_before_anything_changes(fake: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                         message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_options(parse(*argv))
    assert cli.main(["up", *argv]) == 2
    assert message in capsys.readouterr().err
    assert list((fake / "vkms").iterdir()) == []  # nothing was made


def test_bad_values_are_argparse_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--port", "70000"], ["--drive-size", "big"], ["--capture", "scanout"], ["--drive", "x"],
                 ["--mode", "9000x9000"], ["--mode", "1920x1080@0"], ["--mode", "1920x"]):
        with pytest.raises(SystemExit) as ei:
            cli.build_parser().parse_args(["up", *argv])
        assert ei.value.code == 2
    capsys.readouterr()


def test_a_fake_configfs_is_not_served(fake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["up"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("made vkmsremote (")
    assert "not serving" in captured.err and "not the kernel's configfs" in captured.err


def test_target_names_the_mapping() -> None:
    class Mapping:
        name = "vkmsremote"
        card = "/dev/dri/card0"
        note = ""
        connectors = (ConnectorMapping("XR-0", "vkmsremote", "connected", "Virtual-1", 36, "connected", None, (35,)),)

        def connector(self, name: str) -> ConnectorMapping:
            assert name == "XR-0"
            return self.connectors[0]

    t = target_of(Mapping(), None)
    assert t == ServeTarget("XR-0", "vkmsremote", "/dev/dri/card0", "Virtual-1", 36, 35)
    assert t.desktop_name == "XR-0 (card0 Virtual-1, connector 36, CRTC 35)"
    assert target_of(Mapping(), "XR-0") == t
    Mapping.card = None  # type: ignore[assignment]
    with pytest.raises(DeviceStateError, match="no DRM connector"):
        target_of(Mapping(), None)


def test_vm_guest_command_without_password_listens_insecurely_on_the_guest_nic(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VKMSREMOTE_PASSWORD", raising=False)
    args = parse("--vm", "--drive", "pattern", "--port", "5901", "--web")
    cmd = upvm.guest_argv(args, cli.command_arguments(["--state-dir", "/x", "up", "--vm", "--drive", "pattern",
                                                        "--port", "5901", "--web"]), python="/py")
    assert cmd == ["/py", "-m", "vkmsremote", "up", "--drive", "pattern", "--port", "5901", "--web",
                   "--listen", "10.0.2.15", "--insecure-listen"]
    guest = cli.build_parser().parse_args(cmd[3:])  # what the guest's `up` will make of it
    assert (guest.listen, guest.insecure_listen, guest.vm, guest.port, guest.web) == (
        "10.0.2.15", True, False, 5901, 5800)
    assert upvm.forwards(args) == [(5901, 5901), (5800, 5800)]


def test_vm_guest_command_with_a_password_authenticates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    args = parse("--vm", "--password-file", str(pw))
    cmd = upvm.guest_argv(args, ["--vm", "--password-file", str(pw)], python="/py")
    assert "--insecure-listen" not in cmd and cmd[-2:] == ["--listen", "10.0.2.15"]
    monkeypatch.setenv("VKMSREMOTE_PASSWORD", "secret")
    assert "--insecure-listen" not in upvm.guest_argv(parse("--vm"), ["--vm"], python="/py")


def test_vm_refuses_listen_and_port_zero() -> None:
    with pytest.raises(UsageError, match="--listen cannot be used with --vm"):
        upvm.guest_argv(parse("--vm", "--listen", "0.0.0.0"), ["--vm", "--listen", "0.0.0.0"])
    with pytest.raises(UsageError, match="port 0 cannot be forwarded"):
        upvm.forwards(parse("--vm", "--port", "0"))


def test_vm_forward_binds_host_loopback_only_and_isolates_the_guest() -> None:
    spec = VmSpec(kernel=Path("/k/bzImage"), argv=("true",), results_dir=Path("/results"), cwd=Path("/"),
                  forwards=(Forward(5900, 5900), Forward(5800, 5800)))
    netdev = qemu_opts(spec)[1]
    assert netdev.startswith("user,") and "restrict=on" in netdev.split(",")
    assert "hostfwd=tcp:127.0.0.1:5900-:5900" in netdev and "hostfwd=tcp:127.0.0.1:5800-:5800" in netdev
    assert "hostfwd=tcp::" not in netdev and "0.0.0.0" not in netdev


def test_vm_busy_host_port_is_reported_before_booting() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UsageError, match=f"127.0.0.1:{port} is in use"):
            upvm.check_free(port)

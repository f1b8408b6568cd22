"""The ``vkmsremote`` command line on the host: a fake configfs directory stands in for the kernel.

Every bad input must give one line naming the cause and the fix, a non-zero exit status from the
EXIT_CODES table, and no change to configfs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import fake_configfs
import pytest

import vkmsremote
from vkmsremote import cli
from vkmsremote.errors import (
    DeviceStateError,
    PermissionDeniedError,
    ProfileError,
    ProtocolError,
    UsageError,
    VkmsUnavailableError,
)

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "configfs"
    (root / "vkms").mkdir(parents=True)
    monkeypatch.setenv("VKMSREMOTE_CONFIGFS_ROOT", str(root))
    fake_configfs.install(monkeypatch)  # the command line's Configfs on this directory is the test double
    monkeypatch.setenv("VKMSREMOTE_STATE_DIR", str(tmp_path / "state"))
    return root


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {err!r}"
    assert lines[0].startswith("vkmsremote: ")
    return lines[0]


def test_dry_run_prints_shell_and_changes_nothing(fake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "up", "--dry-run")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"mkdir {fake}/vkms/vkmsremote"
    assert f"ln -s {fake}/vkms/vkmsremote/encoders/enc0 {fake}/vkms/vkmsremote/connectors/XR-0/possible_encoders/enc0" in lines
    assert lines[-1].startswith(f"echo 1 > {fake}/vkms/vkmsremote/enabled")
    assert tree(fake) == ["vkms"]


def test_up_status_hotplug_down_cycle(fake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "up", "--profile", "xr-dual")
    assert code == 0 and out.startswith("made vkmsremote (")
    code, out, _ = run(capsys, "up", "-p", "xr-dual")
    assert code == 0 and out.startswith("vkmsremote already up: nothing changed")
    code, out, _ = run(capsys, "up", "--dry-run", "-p", "xr-dual")
    assert out.startswith("# nothing to do")
    code, out, _ = run(capsys, "status", "--json")
    doc = json.loads(out)
    (dev,) = doc["devices"]
    assert dev["name"] == "vkmsremote" and dev["configfs"]["enabled"] is True and dev["managed"] is True
    assert [c["name"] for c in dev["connectors"]] == ["XR-0", "XR-1"]
    assert [c["connector_id"] for c in dev["connectors"]] == [None, None]  # a fake has no DRM
    assert doc["web_client"]["version"] == "1.7.0" and doc["web_client"]["lacks"] == []  # scripts/install-novnc.sh
    code, out, _ = run(capsys, "hotplug", "XR-1", "--disconnect")
    assert code == 0 and out.strip() == "XR-1 disconnected"
    code, out, _ = run(capsys, "status")
    assert "connectors/XR-1 disconnected -> enc1" in out
    assert "web client (--web): noVNC 1.7.0 from /usr/local/share/vkmsremote/novnc" in out
    code, out, _ = run(capsys, "down", "--dry-run")
    assert out.splitlines()[0].startswith(f"echo 0 > {fake}/vkms/vkmsremote/enabled")
    assert tree(fake / "vkms") != []
    code, out, _ = run(capsys, "down")
    assert code == 0 and out.startswith("removed vkmsremote")
    assert tree(fake / "vkms") == []
    code, out, _ = run(capsys, "down")
    assert code == 0 and "nothing to remove" in out


def test_malformed_profile(fake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[device\nname = 1\n")
    code, _, err = run(capsys, "up", "--profile", str(bad))
    line = one_line_error(err)
    assert code == cli.EXIT_CODES[ProfileError] == 3
    assert f"{bad}: not valid TOML" in line and "fix the profile" in line
    assert tree(fake) == ["vkms"]


def test_invalid_profile_names_the_rule(fake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "two-primaries.toml"
    bad.write_text(textwrap.dedent("""\
        [device]
        name = "d"
        [planes.a]
        type = "primary"
        possible_crtcs = ["c"]
        [planes.b]
        type = "primary"
        possible_crtcs = ["c"]
        [crtcs.c]
        [encoders.e]
        possible_crtcs = ["c"]
        [connectors.XR-0]
        possible_encoders = ["e"]
        """))
    code, _, err = run(capsys, "up", "-p", str(bad))
    assert code == 3
    assert "crtcs.c: 2 primary planes (a, b); exactly one allowed" in one_line_error(err)
    assert tree(fake) == ["vkms"]


def test_unknown_connector(fake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "up")[0] == 0
    before = tree(fake)
    code, _, err = run(capsys, "hotplug", "XR-9", "--connect")
    line = one_line_error(err)
    assert code == cli.EXIT_CODES[UsageError] == 2
    assert "no connector named 'XR-9'" in line and "known connectors: XR-0 (vkmsremote)" in line
    assert tree(fake) == before


def test_different_layout_is_refused_until_replace(fake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "up", "-p", "xr-dual")[0] == 0
    before = tree(fake)
    code, _, err = run(capsys, "up", "-p", "xr-0")
    line = one_line_error(err)
    assert code == cli.EXIT_CODES[DeviceStateError]
    assert "already exists with a different layout" in line and "--replace" in line
    assert tree(fake) == before
    assert run(capsys, "up", "-p", "xr-0", "--replace")[0] == 0
    assert "XR-1" not in "".join(tree(fake))


def test_no_vkms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VKMSREMOTE_STATE_DIR", str(tmp_path / "state"))
    code, _, err = run(capsys, "--configfs-root", str(tmp_path), "up")
    line = one_line_error(err)
    assert code == cli.EXIT_CODES[VkmsUnavailableError] == 5
    assert "no VKMS configfs directory" in line and "modprobe vkms" in line and "6.19" in line
    assert run(capsys, "--configfs-root", str(tmp_path), "status")[0] == 5
    assert list(tmp_path.iterdir()) == []


def _as_non_root(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m vkmsremote ARGV`` without root: as nobody through setpriv when the suite runs as root (CI),
    else as the suite's own (non-root) user; either way the kernel refuses what root alone may do."""
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    return subprocess.run([*drop, PYTHON, "-m", "vkmsremote", *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env}, cwd="/")


def test_not_root_on_the_system_configfs(tmp_path: Path) -> None:
    # /sys/kernel/config is "the system's" even where it is not mounted (this host): changing it needs root,
    # and that is said before anything is looked up. (In the VM, test_lifecycle_vm does the same on real VKMS.)
    env = {"VKMSREMOTE_CONFIGFS_ROOT": "", "VKMSREMOTE_STATE_DIR": str(tmp_path)}
    for argv in (["up"], ["down"]):
        proc = _as_non_root(argv, env)
        assert proc.returncode == cli.EXIT_CODES[PermissionDeniedError] == 4, proc.stderr
        line = one_line_error(proc.stderr)
        assert f"vkmsremote {argv[0]} changes /sys/kernel/config/vkms and needs root" in line
        assert "run as root or with sudo" in line
    assert list(tmp_path.iterdir()) == []


def test_not_root_on_a_root_owned_fake(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A fake configfs tree holding XR-0, made by this (root or not) process and then closed to writes for the
    non-root user: every change is refused with the root hint, status still reads, and nothing changes."""
    top = Path(tempfile.mkdtemp(prefix="vkmsremote-cli-"))
    env = {"VKMSREMOTE_CONFIGFS_ROOT": str(top), "VKMSREMOTE_STATE_DIR": str(top / "state")}
    try:
        os.chmod(top, 0o755)
        (top / "vkms").mkdir()
        # The tree is made in this process through the test double (the kernel's default groups); the
        # non-root commands below run the real command line on it.
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        fake_configfs.install(monkeypatch)
        code, _, err = run(capsys, "up", "-p", "xr-dual")
        assert code == 0, err
        # Root-owned for nobody; for a non-root suite, read-only for its own user too.
        for p in [top, *top.rglob("*")]:
            if not p.is_symlink():
                p.chmod(0o555 if p.is_dir() else 0o444)
        before = tree(top)
        status = (top / "vkms" / "vkmsremote" / "connectors" / "XR-1" / "status").read_text()
        for argv, what in ((["hotplug", "XR-1", "--disconnect"], "connectors/XR-1/status"),
                           (["down"], f"cannot write state file in {top}/state"),
                           (["up", "-p", "xr-0", "--replace"], "vkmsremote/enabled")):
            proc = _as_non_root(argv, env)
            assert proc.returncode == cli.EXIT_CODES[PermissionDeniedError], (argv, proc.stderr)
            line = one_line_error(proc.stderr)
            assert what in line and "run as root or with sudo" in line, (argv, line)
            assert tree(top) == before
        assert (top / "vkms" / "vkmsremote" / "connectors" / "XR-1" / "status").read_text() == status
        proc = _as_non_root(["status", "--json"], env)  # reading needs no root
        assert proc.returncode == 0, proc.stderr
        assert [c["name"] for c in json.loads(proc.stdout)["devices"][0]["connectors"]] == ["XR-0", "XR-1"]
        os.chmod(top, 0o000 if os.geteuid() != 0 else 0o700)  # now the non-root user cannot even look
        proc = _as_non_root(["status"], env)
        assert proc.returncode == 4, proc.stderr
        assert "run as root or with sudo" in one_line_error(proc.stderr)
    finally:
        os.chmod(top, 0o755)
        for p in top.rglob("*"):
            if not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(top)


def test_exit_codes_follow_the_table() -> None:
    assert cli.exit_code(ProfileError("x")) == 3
    assert cli.exit_code(ProtocolError("x")) == 1  # not listed: its nearest listed base, VkmsRemoteError
    assert cli.exit_code(KeyboardInterrupt()) == 130
    assert len(set(cli.EXIT_CODES.values())) == len(cli.EXIT_CODES)


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["hotplug", "XR-0"])  # neither --connect nor --disconnect
    assert info.value.code == 2
    assert "one of the arguments --disconnect --connect is required" in capsys.readouterr().err


def test_serve_and_up_share_one_spelling_of_each_option() -> None:
    parser = cli.build_parser()
    serve = parser.parse_args(["serve", "--listen", "::1", "--port", "5901", "--web"])
    up = parser.parse_args(["up", "--listen", "::1", "--port", "5901", "--web"])
    shared = ("listen", "port", "web", "password_file", "security", "tls_cert", "insecure_listen", "view_only",
              "always_shared")
    assert [getattr(serve, k) for k in shared] == [getattr(up, k) for k in shared]
    assert (serve.listen, serve.port, serve.web) == ("::1", 5901, 5800)
    # serve's old spelling --host still works, and is not advertised
    assert parser.parse_args(["serve", "--host", "0.0.0.0"]).listen == "0.0.0.0"
    assert parser.parse_args(["serve"]).listen == "127.0.0.1"
    sub = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[attr-defined]
    for command in ("serve", "up"):
        text = sub[command].format_help()
        assert "--listen HOST" in text and "--host" not in text, command
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--port", "70000"])  # the same port check as up's


def test_option_constants_are_the_librarys() -> None:
    """options.py keeps the CLI light by not importing the server and web packages; these must agree."""
    from vkmsremote.server.app import SECURITY_NAMES
    from vkmsremote.service import options
    from vkmsremote.web import DEFAULT_WEB_PORT

    assert tuple(SECURITY_NAMES) == options.SECURITY_CHOICES
    assert options.DEFAULT_WEB_PORT == DEFAULT_WEB_PORT


def test_cli_start_does_not_load_the_server() -> None:
    code = ("import sys; from vkmsremote import cli; cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'websockets', 'asyncio')))")
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_command_arguments_skip_global_options() -> None:
    assert cli.command_arguments(["--state-dir", "up", "up", "--vm", "-p", "xr-0"]) == ["--vm", "-p", "xr-0"]
    assert cli.command_arguments(["--version"]) == []


def test_layers_import_one_way() -> None:
    """Nothing in the package imports the CLI, and web and server do not import each other (issue 21)."""
    import ast

    package = REPO / "vkmsremote"
    found = []
    for path in package.rglob("*.py"):
        layer = path.relative_to(package).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                parts = name.split(".")
                if parts[0] != "vkmsremote" or len(parts) < 2:
                    continue
                target = parts[1]
                forbidden = (target == "cli" and layer != "__main__") or (layer, target) in {
                    ("web", "server"), ("server", "web"), ("capture", "service"), ("capture", "vkms"),
                    ("server", "service"), ("web", "service"), ("vm", "service"), ("vm", "server")}
                if forbidden:
                    found.append(f"{path.relative_to(REPO)} imports {name}")
    assert found == []


def test_python_dash_m_and_help() -> None:
    """``python -m vkmsremote`` is the command: its help lists exactly the parser's subcommands under the name
    vkmsremote (not __main__.py), each subcommand's --help is its own, and a missing command is a usage error."""

    def dash_m(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "vkmsremote", *argv], capture_output=True, text=True, timeout=60,
                              cwd=REPO, env={**os.environ, "COLUMNS": "200"})

    proc = dash_m("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: vkmsremote [-h] [--version]")
    listed = re.findall(r"^    (\S+) {2,}\S", proc.stdout, re.M)
    subparsers = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert listed == list(subparsers.choices)
    assert {"up", "down", "status", "hotplug", "serve"} <= set(listed)
    for command in listed:
        sub = dash_m(command, "--help")
        assert sub.returncode == 0, (command, sub.stderr)
        assert sub.stdout.startswith(f"usage: vkmsremote {command} "), (command, sub.stdout[:200])
    version = dash_m("--version")
    assert (version.returncode, version.stdout) == (0, f"vkmsremote {vkmsremote.__version__}\n")
    missing = dash_m()
    assert missing.returncode == 2 and "the following arguments are required: COMMAND" in missing.stderr

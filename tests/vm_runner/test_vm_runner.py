"""Host tests of vkmsremote.vm: command building, the guest script, timeouts and exit status.

Fast tests use a stand-in for vng ($VKMSREMOTE_VNG) that never boots anything. One test really
boots the test kernel (marked ``slow``, not ``vm``: it runs on the host and is the proof the runner
works, including exit-status propagation and a port forward into the guest).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from vkmsremote.errors import VmError
from vkmsremote.vm import Accel, Forward, VmSpec, run
from vkmsremote.vm.__main__ import VM_FAILED, main
from vkmsremote.vm.accel import ACCEL_ENV, choose_accel, kvm_device_usable
from vkmsremote.vm.command import READY_MARKER, ROOT_9P_FLAGS, guest_script, parse_status, vng_command
from vkmsremote.vm.kernel import KERNEL_ENV, kernel_image

RESULTS = Path("/var/lib/vkmsremote-test/results")  # only used in pure command-building tests


def spec(**kw: object) -> VmSpec:
    base: dict[str, object] = dict(
        kernel=Path("/k/bzImage"), argv=("echo", "hi"), results_dir=RESULTS, cwd=Path("/work/main")
    )
    base.update(kw)
    return VmSpec(**base)  # type: ignore[arg-type]


def value_after(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == flag]


# -- vng command line -----------------------------------------------------------------------------


def test_tcg_command_line() -> None:
    cmd = vng_command(spec(), vng="/venv/bin/vng")
    assert cmd[:3] == ["/venv/bin/vng", "--run", "/k/bzImage"]
    assert "--disable-kvm" in cmd
    assert "--force-9p" in cmd
    assert value_after(cmd, "--memory") == ["2G"]
    assert value_after(cmd, "--cpus") == ["2"]
    assert value_after(cmd, "--rwdir") == [str(RESULTS)]
    [append] = value_after(cmd, "--append")
    assert append.split() == [ROOT_9P_FLAGS, "vkms.create_default_dev=0"]
    assert ROOT_9P_FLAGS.startswith("rootflags=") and ",cache=loose" in ROOT_9P_FLAGS
    assert value_after(cmd, "--exec") == [f"bash {RESULTS}/guest.sh"]
    assert not [a for a in cmd if a.startswith("--qemu-opts")]


def test_kvm_command_line_keeps_kvm() -> None:
    assert "--disable-kvm" not in vng_command(spec(accel=Accel.KVM))


def test_rwdirs_and_shared_tmp() -> None:
    cmd = vng_command(spec(rwdirs=(Path("/srv/out"), RESULTS), share_host_tmp=True))
    assert value_after(cmd, "--rwdir") == [str(RESULTS), "/srv/out", "/tmp"]


def test_forwards_become_one_restricted_user_netdev() -> None:
    cmd = vng_command(spec(forwards=(Forward(5901, 5900), Forward(8080, 80))))
    [opts] = [a for a in cmd if a.startswith("--qemu-opts=")]
    assert opts == (
        "--qemu-opts=-netdev user,id=vkfwd,restrict=on,"
        "hostfwd=tcp:127.0.0.1:5901-:5900,hostfwd=tcp:127.0.0.1:8080-:80 "
        "-device virtio-net-pci,netdev=vkfwd"
    )
    assert cmd[-1] == opts, "vng must get --qemu-opts last"
    assert value_after(cmd, "--append") == [f"{ROOT_9P_FLAGS} vkms.create_default_dev=0 net.ifnames=0"]


def test_loopback_forward_targets_guest_loopback_and_allows_it_on_the_nic() -> None:
    s = spec(forwards=(Forward(5901, 5900, guest_loopback=True), Forward(8080, 80)))
    [opts] = [a for a in vng_command(s) if a.startswith("--qemu-opts=")]
    assert "hostfwd=tcp:127.0.0.1:5901-127.0.0.1:5900,hostfwd=tcp:127.0.0.1:8080-:80" in opts
    script = guest_script(s)
    assert 'echo 1 > "/proc/sys/net/ipv4/conf/$nic/route_localnet"' in script
    assert "route_localnet" not in guest_script(spec(forwards=(Forward(8080, 80),)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5900:5901", Forward(5900, 5901)),
        ("6000", Forward(6000, 6000)),
        ("5900:5901/lo", Forward(5900, 5901, guest_loopback=True)),
    ],
)
def test_forward_parse(text: str, expected: Forward) -> None:
    assert Forward.parse(text) == expected


@pytest.mark.parametrize("text", ["", "x:1", "1:", "0:5900", "5900:65536", "1:2:3", "1:2/lox", "1:2/l"])
def test_forward_parse_rejects(text: str) -> None:
    with pytest.raises(VmError):
        Forward.parse(text)


@pytest.mark.parametrize(
    "kw",
    [
        {"argv": ()},
        {"results_dir": Path("/srv/with space")},
        {"kernel": Path("relative/bzImage")},
        {"cwd": Path("/a;rm -rf b")},
        {"rwdirs": (Path("/srv/~/x"),)},  # a shell would expand this tilde
        {"rwdirs": (Path("/srv/x=~"),)},
        {"env": (("BAD-NAME", "1"),)},
        {"forwards": (Forward(1, 2), Forward(1, 3))},
        {"cpus": 0},
    ],
)
def test_spec_rejects(kw: dict[str, object]) -> None:
    with pytest.raises(VmError):
        spec(**kw)


def test_debian_version_tilde_is_accepted() -> None:
    k = Path("/root/.cache/vkmsremote/kernel/7.3.4-1~bpo13+1-69fa3c6befee/bzImage")
    assert vng_command(spec(kernel=k))[2] == str(k)


def test_paths_under_tmp_are_kept_outermost_first() -> None:
    s = spec(
        cwd=Path("/tmp/ci/repo"),
        results_dir=Path("/tmp/ci/repo/build/vm-results"),
        rwdirs=(Path("/srv/out"), Path("/tmp/other")),
        keep=(Path("/tmp/ci/repo/.venv"), Path("/usr")),
    )
    assert s.kept_under_tmp() == [Path("/tmp/ci/repo"), Path("/tmp/other")]
    assert spec(share_host_tmp=True).kept_under_tmp() == []


# -- guest script ---------------------------------------------------------------------------------


def test_guest_script_is_valid_bash_and_quotes_argv() -> None:
    argv = ("sh", "-c", "echo 'a b' \"$HOME\"; exit 3", "--", "x;y", "")
    script = guest_script(spec(argv=argv, env=(("FOO", "it's"),)))
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    lines = script.splitlines()
    marker = next(i for i, line in enumerate(lines) if READY_MARKER in line)
    assert tuple(shlex.split(lines[marker + 1])) == argv
    assert "export VKMSREMOTE_IN_VM=1" in lines
    assert "export PYTHONDONTWRITEBYTECODE=1" in lines
    assert "export FOO='it'\"'\"'s'" in lines
    assert any(line.startswith("mount -t tmpfs") for line in lines)
    assert not any("ip addr" in line for line in lines)


def test_kernel_modules_are_bound_and_vkms_loaded_before_the_command(tmp_path: Path) -> None:
    from vkmsremote.vm.kernel import kernel_modules

    image = tmp_path / "bzImage"
    image.write_bytes(b"")
    assert kernel_modules(image) is None  # a kernel without modules: nothing bound, nothing loaded
    assert "modprobe" not in guest_script(spec())
    release = tmp_path / "modroot" / "lib" / "modules" / "7.3.4-1"
    release.mkdir(parents=True)
    (release / "modules.dep").write_text("")
    assert kernel_modules(image) == release
    script = guest_script(spec(modules=release))
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    lines = script.splitlines()
    bind = next(i for i, line in enumerate(lines) if line.startswith("mkdir -p /lib/modules/7.3.4-1 && mount --bind"))
    load = lines.index("modprobe vkms || fail 'modprobe vkms failed'")
    marker = next(i for i, line in enumerate(lines) if READY_MARKER in line)
    assert bind < load < marker
    assert any("the kernel is $release" in line for line in lines)  # modules of another kernel: refused


@pytest.mark.parametrize("base", ["/var/tmp", "/tmp"])
def test_guest_script_runs_in_a_private_mount_namespace(base: str) -> None:
    # Run the real script on the host, isolated by unshare so its tmpfs /tmp stays private to it.
    # Under /tmp, the working and results directories must survive the guest's tmpfs.
    work = Path(tempfile.mkdtemp(prefix="vkmsremote-test-", dir=base))
    results = work / "results"
    results.mkdir()
    (work / "data").write_text("from the host\n")
    marker = f"vkmsremote-test-{os.getpid()}"
    try:
        s = spec(
            argv=(
                "sh",
                "-c",
                f'echo "$VKMSREMOTE_IN_VM $HOME $(pwd) $(cat data)"; touch /tmp/{marker}; exit 3',
            ),
            results_dir=results,
            cwd=work,
        )
        (results / "guest.sh").write_text(guest_script(s))
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "bash", str(results / "guest.sh")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert proc.returncode == 3, proc.stderr
        assert proc.stdout == f"1 /tmp/vkmsremote-home {work} from the host\n"
        assert READY_MARKER in proc.stderr
        assert parse_status((results / "exit-status").read_text()) == 3
        assert not Path("/tmp", marker).exists(), "the script wrote to the host's /tmp"
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize(("text", "status"), [("0\n", 0), ("42", 42), ("", None), ("x\n", None)])
def test_parse_status(text: str, status: int | None) -> None:
    assert parse_status(text) == status


# -- runner with a stand-in vng -------------------------------------------------------------------

FAKE_VNG = r"""#!{python}
import json, os, subprocess, sys, time
args = sys.argv[1:]
script = args[args.index("--exec") + 1].split(" ", 1)[1]
results = os.path.dirname(script)
with open(os.path.join(results, "argv.json"), "w") as f:
    json.dump(sys.argv, f)
mode = os.environ["FAKE_VNG_MODE"]
if mode == "hang":
    child = subprocess.Popen(["sleep", "300"])
    with open(os.environ["FAKE_VNG_PIDFILE"], "w") as f:
        f.write(str(child.pid))
    time.sleep(300)
if mode == "crash":
    print("qemu: something broke", file=sys.stderr)
    sys.exit(1)
print("booting noise", file=sys.stderr)
print("{marker} uptime=1.23", file=sys.stderr, flush=True)
print("hello from the command")
with open(os.path.join(results, "exit-status"), "w") as f:
    f.write("7\n")
"""


@pytest.fixture
def fake_vng(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "vng"
    path.write_text(FAKE_VNG.replace("{python}", sys.executable).replace("{marker}", READY_MARKER))
    path.chmod(0o755)
    monkeypatch.setenv("VKMSREMOTE_VNG", str(path))
    (tmp_path / "bzImage").write_bytes(b"not a kernel")
    return tmp_path


def fake_run(tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch, **kw: object) -> object:
    monkeypatch.setenv("FAKE_VNG_MODE", mode)
    return run(
        ["echo", "hi"],
        kernel=tmp_path / "bzImage",
        accel=Accel.TCG,
        results_dir=tmp_path / "results",
        share_host_tmp=True,
        stream=False,
        progress=None,
        **kw,  # type: ignore[arg-type]
    )


def test_run_reports_status_output_and_boot_time(fake_vng: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = fake_run(fake_vng, "ok", monkeypatch, env={"A": "1"}, forward=[(5901, 5900)])
    assert result.exit_code == 7  # type: ignore[attr-defined]
    assert result.stdout == "hello from the command\n"  # type: ignore[attr-defined]
    assert result.stderr == "booting noise\n"  # type: ignore[attr-defined]  # marker consumed
    assert result.boot_seconds is not None and 0 <= result.boot_seconds < 30  # type: ignore[attr-defined]
    argv = json.loads((fake_vng / "results" / "argv.json").read_text())
    assert "--disable-kvm" in argv
    assert argv[-1].startswith(
        "--qemu-opts=-netdev user,id=vkfwd,restrict=on,hostfwd=tcp:127.0.0.1:5901-:5900"
    )
    assert "export A=1" in (fake_vng / "results" / "guest.sh").read_text()


def test_run_timeout_kills_the_whole_vm(fake_vng: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pidfile = fake_vng / "child.pid"
    monkeypatch.setenv("FAKE_VNG_PIDFILE", str(pidfile))
    start = time.monotonic()
    with pytest.raises(VmError, match=r"did not finish within 2 s \(still in the boot\)"):
        fake_run(fake_vng, "hang", monkeypatch, timeout=2)
    assert time.monotonic() - start < 15
    child = int(pidfile.read_text())
    for _ in range(50):  # the zombie is reaped by init shortly after the kill
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"child {child} of the VM's process group survived the timeout")


def test_run_without_status_is_an_error(fake_vng: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        VmError, match=r"vng exit status 1\) before the command finished \(it never started\)"
    ):
        fake_run(fake_vng, "crash", monkeypatch)


def test_cli_exit_status(fake_vng: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VNG_MODE", "ok")
    common = ["--kernel", str(fake_vng / "bzImage"), "--accel", "tcg", "--share-host-tmp"]
    assert main([*common, "--results-dir", str(fake_vng / "r"), "--", "true"]) == 7
    monkeypatch.setenv("FAKE_VNG_MODE", "crash")
    assert main([*common, "--results-dir", str(fake_vng / "r"), "--", "true"]) == VM_FAILED
    with pytest.raises(SystemExit):
        main([*common, "--forward", "nope", "--", "true"])


# -- accelerator and kernel lookup ----------------------------------------------------------------


def test_accel_forced_by_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ACCEL_ENV, "tcg")
    assert choose_accel(tmp_path / "unused")[0] is Accel.TCG
    monkeypatch.setenv(ACCEL_ENV, "kvm")
    assert choose_accel(tmp_path / "unused")[0] is Accel.KVM
    monkeypatch.setenv(ACCEL_ENV, "hvf")
    with pytest.raises(VmError, match="not one of"):
        choose_accel(tmp_path / "unused")


def test_missing_kvm_device_is_unusable(tmp_path: Path) -> None:
    assert not kvm_device_usable(tmp_path / "kvm")


def test_kernel_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    image = tmp_path / "bzImage"
    image.write_bytes(b"k")
    monkeypatch.setenv(KERNEL_ENV, str(image))
    assert kernel_image() == image
    monkeypatch.setenv(KERNEL_ENV, str(tmp_path / "missing"))
    with pytest.raises(VmError, match="is not a file"):
        kernel_image()


# -- one real boot --------------------------------------------------------------------------------

GUEST_SERVERS = """
import os, socket, sys
# One server on the guest NIC, one on the guest loopback: each accepts one connection.
nic = socket.create_server((os.environ["VKMSREMOTE_VM_GUEST_ADDR"], 7000))
lo = socket.create_server(("127.0.0.1", 7001))
for srv, name in ((nic, b"nic"), (lo, b"lo")):
    srv.settimeout(240)
    conn, _ = srv.accept()
    with conn:
        conn.sendall(b"hello-through-" + name + b" " + os.environ["VKMSREMOTE_IN_VM"].encode() + b"\\n")
print("hello-from-vm", os.uname().release, flush=True)
sys.exit(42)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(port: int, into: list[bytes]) -> None:
    """Connect until the guest server answers (slirp accepts and drops connections before it listens)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                # Once connected, wait as long as it takes: slirp may hand this very connection to the
                # guest server late on a loaded host, and giving up here would orphan it.
                c.settimeout(300)
                data = c.recv(100)
                if data:
                    into.append(data)
                    return
        except OSError:
            pass
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_boot_exit_status_output_and_forwards() -> None:
    nic_port, lo_port = free_port(), free_port()
    nic_got: list[bytes] = []
    lo_got: list[bytes] = []
    clients = [
        threading.Thread(target=fetch, args=a, daemon=True) for a in ((nic_port, nic_got), (lo_port, lo_got))
    ]
    for t in clients:
        t.start()
    result = run(
        [sys.executable, "-c", GUEST_SERVERS],
        forward=[(nic_port, 7000), Forward(lo_port, 7001, guest_loopback=True)],
        timeout=600,
        stream=False,
    )
    for t in clients:
        t.join(10)
    assert result.exit_code == 42, result.output
    assert "hello-from-vm" in result.stdout
    assert os.uname().release not in result.stdout, "the command ran on the host kernel, not the VM's"
    assert nic_got == [b"hello-through-nic 1\n"]
    assert lo_got == [b"hello-through-lo 1\n"]
    assert result.boot_seconds is not None
    print(
        f"boot to command: {result.boot_seconds:.1f} s, total {result.elapsed:.1f} s ({result.accel.value})"
    )


# -- test harness (tests/conftest.py) -------------------------------------------------------------


def test_harness_knows_when_it_is_not_in_the_vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import conftest

    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\nconfigfs /sys/kernel/config configfs rw 0 0\n")
    assert conftest.configfs_mounted(mounts)
    mounts.write_text("proc /proc proc rw 0 0\nnone /sys/kernel/config tmpfs rw 0 0\n")
    assert not conftest.configfs_mounted(mounts)
    monkeypatch.delenv("VKMSREMOTE_IN_VM", raising=False)
    assert "not the test VM" in (conftest.vm_problem() or "")
    monkeypatch.setenv("VKMSREMOTE_IN_VM", "1")
    assert "configfs is not mounted" in (conftest.vm_problem() or "")  # this host has no configfs


def test_vm_collection_prefilter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import conftest

    (tmp_path / "test_has_vm.py").write_text("import pytest\npytestmark = pytest.mark.vm\n")
    (tmp_path / "test_host_only.py").write_text("def test_x(): pass\n")
    (tmp_path / "helper.py").write_text("")
    config = types.SimpleNamespace(option=types.SimpleNamespace(markexpr="vm"))

    def ignored(name: str) -> bool:
        return conftest.pytest_ignore_collect(tmp_path / name, config) is True  # type: ignore[arg-type]

    monkeypatch.setenv("VKMSREMOTE_IN_VM", "1")
    assert [ignored(n) for n in ("test_has_vm.py", "test_host_only.py", "helper.py")] == [False, True, False]
    config.option.markexpr = "not vm"
    assert not ignored("test_host_only.py")
    monkeypatch.delenv("VKMSREMOTE_IN_VM")
    config.option.markexpr = "vm"
    assert not ignored("test_host_only.py")

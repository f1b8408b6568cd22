"""The Debian 13 guest runner's pure parts (vkmsremote.vm.guest): qemu's command line and run.sh."""

from __future__ import annotations

from pathlib import Path

import pytest

from vkmsremote.errors import VmError
from vkmsremote.vm.accel import Accel
from vkmsremote.vm.guest import GuestSpec, kernel_append, qemu_command, run_script

SPEC = GuestSpec(
    kernel=Path("/k/bzImage"),
    tree=Path("/c/guest/root"),
    checkout=Path("/src/vkmsremote"),
    results_dir=Path("/r"),
    argv=("python3", "-m", "pytest", "tests/guest"),
)


def test_root_is_the_tree_read_only_and_init_is_the_overlay_wrapper() -> None:
    cmd = qemu_command(SPEC)
    assert cmd[cmd.index("-kernel") + 1] == "/k/bzImage"
    fsdevs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-fsdev"]
    assert "local,id=root,path=/c/guest/root,security_model=none,multidevs=remap,readonly=on" in fsdevs
    assert "local,id=checkout,path=/src/vkmsremote,security_model=none,multidevs=remap,readonly=on" in fsdevs
    assert "local,id=results,path=/r,security_model=none,multidevs=remap" in fsdevs
    append = kernel_append(SPEC)
    assert "init=/sbin/vkmsremote-init" in append and " ro " in append
    assert cmd[1:3] == ["-accel", "tcg"]
    assert "-nic" in cmd and cmd[cmd.index("-nic") + 1] == "none"


def test_kvm_when_asked() -> None:
    spec = GuestSpec(**{**{f: getattr(SPEC, f) for f in SPEC.__slots__}, "accel": Accel.KVM})
    assert qemu_command(spec)[1:5] == ["-accel", "kvm", "-cpu", "host"]


def test_run_script_records_status_and_journal() -> None:
    script = run_script(SPEC)
    assert "cd /checkout" in script
    assert "python3 -m pytest tests/guest\nrc=$?" in script
    assert 'echo "$rc" > /guest-run/exit-status' in script
    assert "journalctl -b" in script and "VKMSREMOTE_IN_GUEST=1" in script


def test_a_comma_in_a_path_is_refused() -> None:
    with pytest.raises(VmError):
        GuestSpec(kernel=Path("/k"), tree=Path("/a,b"), checkout=Path("/c"), results_dir=Path("/r"), argv=("x",))


def test_kernel_modules_are_shared_and_mounted_before_the_command() -> None:
    spec = GuestSpec(**{**{f: getattr(SPEC, f) for f in SPEC.__slots__},
                        "modules": Path("/k/modroot/lib/modules/7.3.4")})
    cmd = qemu_command(spec)
    fsdevs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-fsdev"]
    assert "local,id=modules,path=/k/modroot/lib/modules/7.3.4,security_model=none,multidevs=remap,readonly=on" \
        in fsdevs
    script = run_script(spec)
    mount = script.index("mount -t 9p -o trans=virtio,version=9p2000.L,ro modules /lib/modules/7.3.4")
    assert mount < script.index("python3 -m pytest tests/guest")
    assert "modules" not in " ".join(qemu_command(SPEC)).replace("/lib/modules", "")

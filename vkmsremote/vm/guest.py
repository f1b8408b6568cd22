"""Booting the Debian 13 guest (systemd as PID 1) with the test kernel and running the guest tests.

Theory of operation: scripts/build-guest.sh makes a trixie tree (cached, never written to). qemu boots
the test kernel with that tree as its root over 9p, read-only; the tree's /sbin/vkmsremote-init puts a
tmpfs overlay on it and execs systemd. Two more 9p shares: ``checkout`` (this repository, read-only,
on /checkout, where the tree's vkmsremote .pth file points), ``results`` (a host directory, read-write,
on /guest-run) and, for a kernel with modules, ``modules`` (its ``lib/modules/<release>``, read-only: run.sh
mounts it there, as the kernel's package would have installed it; the tests install vkms's modules-load.d
and modprobe.d files from server/ and load it the way an installed system does). The host writes ``run.sh`` there; the guest's vkmsremote-guest-run.service runs it once
multi-user.target is reached and powers off. run.sh records its exit status in ``exit-status`` (the
source of truth, as in vkmsremote.vm.command) and copies the journal out.

    python -m vkmsremote.vm.guest --kernel K --results-dir D -- python3 -m pytest tests/guest
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vkmsremote.errors import VkmsRemoteError, VmError
from vkmsremote.vm.accel import Accel, choose_accel
from vkmsremote.vm.command import parse_status
from vkmsremote.vm.kernel import cache_dir, kernel_image, kernel_modules, repo_root

IN_GUEST_ENV = "VKMSREMOTE_IN_GUEST"
GUEST_CHECKOUT = "/checkout"
GUEST_RESULTS = "/guest-run"
RUN_SCRIPT = "run.sh"
STATUS_NAME = "exit-status"
DEFAULT_TIMEOUT = 1800.0
VM_FAILED = 125


@dataclass(frozen=True, slots=True)
class GuestSpec:
    kernel: Path
    tree: Path
    checkout: Path
    results_dir: Path
    argv: tuple[str, ...]
    accel: Accel = Accel.TCG
    memory: str = "2G"
    cpus: int = 2
    modules: Path | None = None

    def __post_init__(self) -> None:
        if not self.argv:
            raise VmError("no command given to run in the guest")
        for path in (self.tree, self.checkout, self.results_dir, *filter(None, [self.modules])):
            if "," in str(path):
                raise VmError(f"path {str(path)!r} cannot be passed to qemu's -fsdev (it has a comma)")


def guest_tree(*, build: bool = True) -> Path:
    """The cached Debian 13 tree (scripts/build-guest.sh prints it, building it if needed)."""
    script = repo_root() / "scripts" / "build-guest.sh"
    if build and script.is_file():
        done = subprocess.run([str(script)], stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            raise VmError("scripts/build-guest.sh failed", hint="see its output above")
        return Path(done.stdout.strip().splitlines()[-1])
    current = cache_dir() / "guest" / "current"
    try:
        tree = cache_dir() / "guest" / current.read_text().strip() / "root"
    except FileNotFoundError:
        raise VmError("no guest tree in the cache", hint="run scripts/build-guest.sh") from None
    return tree


def kernel_append(spec: GuestSpec) -> str:
    return " ".join(
        [
            "root=/dev/root rootfstype=9p ro",
            "rootflags=trans=virtio,version=9p2000.L,msize=512000,cache=loose",
            "init=/sbin/vkmsremote-init console=ttyS0 panic=-1",
            "vkms.create_default_dev=0 systemd.show_status=error",
            # the modules are mounted only by run.sh: each modprobe@ unit only costs seconds under TCG (not configfs:
            # sys-kernel-config.mount requires it, and without that mount only the service sees configfs)
            *(f"systemd.mask=modprobe@{m}.service" for m in ("drm", "fuse", "efi_pstore", "dm_mod", "loop")),
        ]
    )


def qemu_command(spec: GuestSpec) -> list[str]:
    def share(ident: str, path: Path, tag: str, *, readonly: bool) -> list[str]:
        ro = ",readonly=on" if readonly else ""
        return [
            "-fsdev", f"local,id={ident},path={path},security_model=none,multidevs=remap{ro}",
            "-device", f"virtio-9p-pci,fsdev={ident},mount_tag={tag}",
        ]  # fmt: skip

    accel = ["-accel", "kvm", "-cpu", "host"] if spec.accel is Accel.KVM else ["-accel", "tcg"]
    return [
        "qemu-system-x86_64", *accel, "-m", spec.memory, "-smp", str(spec.cpus),
        "-display", "none", "-serial", "stdio", "-monitor", "none", "-nic", "none", "-no-reboot",
        "-kernel", str(spec.kernel), "-append", kernel_append(spec),
        *share("root", spec.tree, "/dev/root", readonly=True),
        *share("checkout", spec.checkout, "checkout", readonly=True),
        *share("results", spec.results_dir, "results", readonly=False),
        *(share("modules", spec.modules, "modules", readonly=True) if spec.modules is not None else []),
    ]  # fmt: skip


def run_script(spec: GuestSpec) -> str:
    """run.sh: the command, its status, and the journal copied out."""
    q = shlex.quote
    return "\n".join(
        [
            "# Generated by vkmsremote.vm.guest; run by vkmsremote-guest-run.service in the guest.",
            "set -u",
            f"export {IN_GUEST_ENV}=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/root",
            f"export VKMSREMOTE_GUEST_RESULTS={GUEST_RESULTS}",
            'echo "vkmsremote-guest: running after $(cut -d" " -f1 /proc/uptime) s of uptime"',
            *([f"mkdir -p /lib/modules/{q(spec.modules.name)}",
               f"mount -t 9p -o trans=virtio,version=9p2000.L,ro modules /lib/modules/{q(spec.modules.name)} "
               '|| echo "vkmsremote-guest: cannot mount the kernel modules" >&2']
              if spec.modules is not None else []),
            f"cd {GUEST_CHECKOUT}",
            shlex.join(spec.argv),
            "rc=$?",
            f"journalctl -b --no-pager -o short-monotonic > {q(GUEST_RESULTS)}/journal.txt 2>&1",
            f'echo "$rc" > {q(GUEST_RESULTS)}/{STATUS_NAME}',
            *([f"umount -l /lib/modules/{q(spec.modules.name)}"] if spec.modules is not None else []),
            "sync",
            "",
        ]
    )


def run(spec: GuestSpec, *, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Boot the guest, run ``spec.argv`` in it; its exit status (VmError if the VM failed)."""
    spec.results_dir.mkdir(parents=True, exist_ok=True)
    status_path = spec.results_dir / STATUS_NAME
    status_path.unlink(missing_ok=True)
    (spec.results_dir / RUN_SCRIPT).write_text(run_script(spec))
    started = time.monotonic()
    console = spec.results_dir / "console.log"
    with console.open("wb") as log:
        proc = subprocess.Popen(qemu_command(spec), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        try:
            while proc.poll() is None:
                if time.monotonic() - started > timeout:
                    raise VmError(f"the guest did not finish within {timeout:.0f} s; it was killed",
                                  hint=f"see {console}")  # fmt: skip
                chunk = proc.stdout.read()
                if chunk:
                    log.write(chunk)
                    sys.stderr.write(chunk.decode(errors="replace"))
                else:
                    time.sleep(0.2)
            rest = proc.stdout.read()
            if rest:
                log.write(rest)
                sys.stderr.write(rest.decode(errors="replace"))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    try:
        status = parse_status(status_path.read_text())
    except FileNotFoundError:
        status = None
    elapsed = time.monotonic() - started
    if status is None:
        raise VmError(f"the guest stopped (qemu exit status {proc.returncode}) before the command finished",
                      hint=f"see {console}")  # fmt: skip
    print(f"[guest] exit status {status} after {elapsed:.1f} s", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vkmsremote.vm.guest",
                                description="Boot the Debian 13 guest (systemd as PID 1) and run COMMAND "
                                "in the checkout there, as root, once multi-user.target is reached.")  # fmt: skip
    p.add_argument("command", nargs="+")
    p.add_argument("--kernel")
    p.add_argument("--tree", help="guest root tree (default: scripts/build-guest.sh's)")
    p.add_argument("--results-dir", required=True)
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    p.add_argument("--accel", choices=[a.value for a in Accel])
    args = p.parse_args(argv)
    try:
        kernel = Path(args.kernel) if args.kernel else kernel_image()
        accel = Accel(args.accel) if args.accel else choose_accel(kernel)[0]
        spec = GuestSpec(
            kernel=kernel.resolve(),
            tree=Path(args.tree).resolve() if args.tree else guest_tree(),
            checkout=repo_root(),
            results_dir=Path(args.results_dir).resolve(),
            argv=tuple(args.command),
            accel=accel,
            modules=kernel_modules(kernel.resolve()),
        )
        return run(spec, timeout=args.timeout)
    except VkmsRemoteError as exc:
        print(f"vkmsremote.vm.guest: error: {exc}", file=sys.stderr)
        return VM_FAILED


if __name__ == "__main__":
    sys.exit(main())

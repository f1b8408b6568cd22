"""Choosing between KVM and qemu's TCG emulator.

/dev/kvm may exist and still not work (on these Firecracker hosts qemu+KVM dies in the kernel's
decompressor with "KVM internal error"), so when /dev/kvm is usable we probe: boot the test kernel
under KVM for a few seconds with a serial console and look for the kernel's banner. The answer is
cached per host boot (it cannot change before the host reboots).
"""

from __future__ import annotations

import enum
import os
import shutil
import subprocess
import time
from pathlib import Path

from vkmsremote.errors import VmError

ACCEL_ENV = "VKMSREMOTE_VM_ACCEL"
"""``kvm``, ``tcg`` or ``auto`` (default): force or detect the accelerator."""

PROBE_SECONDS = 8.0
BANNER = b"Linux version"


class Accel(enum.Enum):
    KVM = "kvm"
    TCG = "tcg"


def accel_from_env() -> Accel | None:
    """The accelerator forced by $VKMSREMOTE_VM_ACCEL, or None for auto-detection."""
    value = os.environ.get(ACCEL_ENV, "auto").strip().lower()
    if value in ("", "auto"):
        return None
    try:
        return Accel(value)
    except ValueError:
        raise VmError(f"${ACCEL_ENV}={value!r} is not one of auto, kvm, tcg") from None


def kvm_device_usable(dev: Path = Path("/dev/kvm")) -> bool:
    return dev.exists() and os.access(dev, os.R_OK | os.W_OK)


def probe_command(kernel: Path) -> list[str]:
    """A qemu command line that boots ``kernel`` under KVM far enough to print its banner."""
    return [
        "qemu-system-x86_64", "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "256",
        "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(kernel), "-append", "console=ttyS0 earlyprintk=serial panic=-1",
    ]  # fmt: skip


def probe_kvm(kernel: Path, *, seconds: float = PROBE_SECONDS) -> tuple[bool, str]:
    """Boot ``kernel`` under KVM briefly: (works, reason)."""
    if shutil.which("qemu-system-x86_64") is None:
        raise VmError("qemu-system-x86_64 is not installed", hint="run scripts/setup-host.sh")
    proc = subprocess.Popen(
        probe_command(kernel), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            chunk = proc.stdout.read()
            if chunk:
                seen = (seen + chunk)[-65536:]
                if BANNER in seen:
                    return True, "the kernel booted under KVM"
            if proc.poll() is not None:
                seen += proc.stdout.read() or b""
                if BANNER in seen:
                    return True, "the kernel booted under KVM"
                tail = seen.decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                return False, f"qemu with KVM exited with {proc.returncode}: {tail[0]}"
            time.sleep(0.05)
        return False, f"no kernel banner within {seconds:.0f} s under KVM"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def _probe_cache_file() -> Path:
    from vkmsremote.vm.kernel import cache_dir

    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "unknown"
    return cache_dir() / f"kvm-probe-{boot_id}"


def choose_accel(kernel: Path) -> tuple[Accel, str]:
    """The accelerator to boot with and why."""
    forced = accel_from_env()
    if forced is not None:
        return forced, f"forced by ${ACCEL_ENV}"
    if not kvm_device_usable():
        return Accel.TCG, "/dev/kvm is missing or not accessible"
    cache = _probe_cache_file()
    try:
        verdict, _, reason = cache.read_text().partition("\n")
        if verdict in ("kvm", "tcg"):
            return Accel(verdict), f"{reason} (cached probe)"
    except OSError:
        pass
    works, reason = probe_kvm(kernel)
    accel = Accel.KVM if works else Accel.TCG
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(f"{accel.value}\n{reason}")
    except OSError:
        pass
    return accel, reason

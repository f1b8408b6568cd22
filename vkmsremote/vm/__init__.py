"""Run commands inside vkmsremote's test kernel (VKMS with configfs) under virtme-ng.

    from vkmsremote.vm import run
    result = run(["pytest", "-m", "vm", "tests"], timeout=1800)
    result.exit_code, result.stdout, result.boot_seconds

Command line: ``python -m vkmsremote.vm [options] -- COMMAND...`` (see ``--help``).
"""

from vkmsremote.vm.accel import ACCEL_ENV, Accel, choose_accel
from vkmsremote.vm.command import GUEST_ADDR, GUEST_ADDR_ENV, IN_VM_ENV, RESULTS_ENV, Forward, VmSpec
from vkmsremote.vm.kernel import KERNEL_ENV, cached_kernel, kernel_image
from vkmsremote.vm.runner import VmResult, run


def in_vm() -> bool:
    """True inside the test VM (the runner sets $VKMSREMOTE_IN_VM=1 for the command)."""
    import os

    return os.environ.get(IN_VM_ENV) == "1"


__all__ = [
    "ACCEL_ENV",
    "GUEST_ADDR",
    "GUEST_ADDR_ENV",
    "IN_VM_ENV",
    "KERNEL_ENV",
    "RESULTS_ENV",
    "Accel",
    "Forward",
    "VmResult",
    "VmSpec",
    "cached_kernel",
    "choose_accel",
    "in_vm",
    "kernel_image",
    "run",
]

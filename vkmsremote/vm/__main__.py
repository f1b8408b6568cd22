"""``python -m vkmsremote.vm``: run a command inside the test VM; exit with its exit status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vkmsremote.errors import VkmsRemoteError, VmError
from vkmsremote.vm.accel import Accel
from vkmsremote.vm.command import Forward
from vkmsremote.vm.kernel import kernel_image
from vkmsremote.vm.runner import DEFAULT_TIMEOUT, run

VM_FAILED = 125
"""Exit status when the VM itself failed (could not boot, timed out), as opposed to the command."""


def _env_item(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _forward(text: str) -> Forward:
    try:
        return Forward.parse(text)
    except VmError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vkmsremote.vm",
        description="Boot vkmsremote's test kernel (VKMS + configfs) over the host's root filesystem "
        "with virtme-ng and run COMMAND in it as root. The exit status is COMMAND's, or "
        f"{VM_FAILED} if the VM failed.",
    )
    p.add_argument("command", nargs="*", help="command and arguments (put them after --)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds before the VM is killed")
    p.add_argument(
        "--forward",
        "-p",
        type=_forward,
        action="append",
        default=[],
        metavar="HOST:GUEST",
        help="forward 127.0.0.1:HOST on the host to port GUEST of the VM NIC, or of its loopback with a /lo suffix (repeatable)",
    )
    p.add_argument(
        "--env",
        "-e",
        type=_env_item,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a variable for the command (repeatable)",
    )
    p.add_argument("--cwd", help="directory to run the command in (default: the current one)")
    p.add_argument("--results-dir", help="host directory the guest may write to (kept); default: private")
    p.add_argument(
        "--rwdir", action="append", default=[], help="another host directory writable in the guest"
    )
    p.add_argument("--share-host-tmp", action="store_true", help="guest /tmp is the host's /tmp, not a tmpfs")
    p.add_argument("--kernel", help="bzImage to boot (default: scripts/build-kernel.sh's, built if needed)")
    p.add_argument(
        "--accel",
        choices=[a.value for a in Accel],
        help="force KVM or TCG (default: $VKMSREMOTE_VM_ACCEL, else probe)",
    )
    p.add_argument("--memory", default="2G")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument(
        "--append",
        action="append",
        default=None,
        metavar="KOPT",
        help="kernel command-line option (default: vkms.create_default_dev=0)",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="show the guest's boot console")
    p.add_argument(
        "--print-kernel", action="store_true", help="print the bzImage path (building it if needed)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.print_kernel:
            print(kernel_image())
            return 0
        if not args.command:
            build_parser().error("no command given (write it after --)")
        result = run(
            args.command,
            forward=args.forward,
            timeout=args.timeout,
            env=dict(args.env),
            cwd=args.cwd,
            results_dir=args.results_dir,
            rwdirs=args.rwdir,
            kernel=args.kernel,
            accel=Accel(args.accel) if args.accel else None,
            memory=args.memory,
            cpus=args.cpus,
            append=args.append if args.append is not None else ("vkms.create_default_dev=0",),
            share_host_tmp=args.share_host_tmp,
            verbose=args.verbose,
        )
    except VkmsRemoteError as exc:
        print(f"vkmsremote.vm: error: {exc}", file=sys.stderr)
        return VM_FAILED
    except KeyboardInterrupt:
        return 130
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())

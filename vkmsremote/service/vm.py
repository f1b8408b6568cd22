"""``vkmsremote up --vm``: run the real ``up`` inside vkmsremote's test VM and forward its ports here.

For machines without VKMS (such as the development machines this project is built on): the test kernel
(scripts/build-kernel.sh, cached) boots under virtme-ng over this machine's root filesystem, and the same
``vkmsremote up`` runs in it as root. qemu's user networking forwards 127.0.0.1:PORT on this host to the
guest's NIC; the guest has no other way in or out (``restrict=on``).

Security choice (docs/up.md): inside the guest the server must listen on the guest's NIC (10.0.2.15),
which is not a loopback address, so without a password the guest ``up`` gets ``--insecure-listen``. That
is safe only because of how the VM is wired: the forward binds 127.0.0.1 on the host, and the guest NIC is
reachable only through that forward, so exactly the clients that could reach a loopback-only server on
the host can reach it. Give a password (--password-file, $VKMSREMOTE_PASSWORD) and it is used instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from collections.abc import Sequence
from typing import TextIO

from vkmsremote.errors import UsageError
from vkmsremote.service.options import (
    DEFAULT_HOST,
    PASSWORD_ENV,
    VIEW_ONLY_PASSWORD_ENV,
    has_full_password_source,
)
from vkmsremote.service.up import ANNOUNCE_ENV

HOST_ADDR = "127.0.0.1"


def guest_argv(args: argparse.Namespace, up_args: Sequence[str], python: str = sys.executable) -> list[str]:
    """The ``vkmsremote up`` command the guest runs: the user's options (``up_args``, the arguments after
    the command word) minus --vm, listening on the guest NIC; --insecure-listen unless a password is set
    (see the module docstring)."""
    from vkmsremote.vm import GUEST_ADDR

    if args.listen != DEFAULT_HOST:
        raise UsageError("--listen cannot be used with --vm",
                         hint="the VM's ports are forwarded to 127.0.0.1 on this host; nothing else reaches them")
    rest = [a for a in up_args if a != "--vm"]
    extra = ["--listen", GUEST_ADDR]
    if not has_full_password_source(args) and "--insecure-listen" not in rest:
        extra.append("--insecure-listen")
    return [python, "-m", "vkmsremote", "up", *rest, *extra]


def forwards(args: argparse.Namespace) -> list[tuple[int, int]]:
    ports = [(args.port, args.port)]
    if args.web is not None:
        ports.append((args.web, args.web))
    for host_port, _ in ports:
        if host_port == 0:
            raise UsageError("port 0 cannot be forwarded out of the VM", hint="name the port (--port, --web PORT)")
    return ports


def check_free(port: int, host: str = HOST_ADDR) -> None:
    """Fail early and clearly if qemu could not bind the forward (it would only say 'could not set up')."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UsageError(f"{host}:{port} is in use on this host ({exc.strerror})",
                             hint="stop what uses it or choose another --port / --web port") from None


def run_up_in_vm(args: argparse.Namespace, up_args: Sequence[str], out: TextIO = sys.stdout) -> int:
    """``vkmsremote up --vm``: ``up_args`` are the user's arguments after ``up``."""
    from vkmsremote.vm import IN_VM_ENV, Forward, run
    from vkmsremote.vm.kernel import kernel_image
    from vkmsremote.vm.runner import PACKAGE_ROOT

    if os.environ.get(IN_VM_ENV) == "1":
        raise UsageError("--vm inside the test VM", hint="run `vkmsremote up` without --vm here")
    command = guest_argv(args, up_args)
    ports = forwards(args)
    for host_port, _ in ports:
        check_free(host_port)
    image = kernel_image()  # builds the test kernel the first time (minutes), else returns the cached one
    env = {ANNOUNCE_ENV: f"{HOST_ADDR}:{args.port}"}
    for name in (PASSWORD_ENV, VIEW_ONLY_PASSWORD_ENV):
        if os.environ.get(name):
            env[name] = os.environ[name]
    where = f"{HOST_ADDR}:{args.port}" + (f" and http://{HOST_ADDR}:{args.web}/" if args.web is not None else "")
    print(f"vkmsremote: starting the test VM ({image.name}); once it says 'serving', connect to {where} "
          "(Ctrl-C stops the VM)", file=out, flush=True)
    try:
        # In the package's own directory `python -m vkmsremote` finds this very package, however it was
        # installed; the runner keeps that directory (and the interpreter's prefix) visible in the guest
        # even under /tmp, which the guest otherwise replaces with its own tmpfs.
        result = run(command, forward=[Forward(h, g) for h, g in ports], timeout=float("inf"), env=env,
                     cwd=PACKAGE_ROOT, kernel=image)
    except KeyboardInterrupt:
        print("vkmsremote: stopped (the VM and its VKMS device are gone)", file=out, flush=True)
        return 0
    return result.exit_code

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
from pathlib import Path
from typing import TextIO

from vkmsremote.errors import UsageError
from vkmsremote.service.up import ANNOUNCE_ENV

HOST_ADDR = "127.0.0.1"
PASSWORD_ENV = "VKMSREMOTE_PASSWORD"
VIEW_ONLY_PASSWORD_ENV = "VKMSREMOTE_VIEW_ONLY_PASSWORD"


def up_arguments(argv: Sequence[str]) -> list[str]:
    """The arguments after the ``up`` command word in a full vkmsremote argv."""
    from vkmsremote.cli import _command_word

    word = _command_word(argv)
    if word != "up":
        raise UsageError("--vm belongs to `vkmsremote up`")
    index = list(argv).index("up")
    return list(argv[index + 1:])


def has_password(args: argparse.Namespace) -> bool:
    return bool(args.password or args.password_file or os.environ.get(PASSWORD_ENV))


def guest_argv(args: argparse.Namespace, up_args: Sequence[str], python: str = sys.executable) -> list[str]:
    """The ``vkmsremote up`` command the guest runs: the user's options minus --vm, listening on the guest
    NIC; --insecure-listen unless a password is set (see the module docstring)."""
    from vkmsremote.vm import GUEST_ADDR

    if args.listen != "127.0.0.1":
        raise UsageError("--listen cannot be used with --vm",
                         hint="the VM's ports are forwarded to 127.0.0.1 on this host; nothing else reaches them")
    rest = [a for a in up_args if a != "--vm"]
    extra = ["--listen", GUEST_ADDR]
    if not has_password(args) and "--insecure-listen" not in rest:
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


def run_up_in_vm(args: argparse.Namespace, argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    from vkmsremote.vm import IN_VM_ENV, Forward, run
    from vkmsremote.vm.kernel import kernel_image

    if os.environ.get(IN_VM_ENV) == "1":
        raise UsageError("--vm inside the test VM", hint="run `vkmsremote up` without --vm here")
    command = guest_argv(args, up_arguments(argv))
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
    cwd = Path(__file__).resolve().parents[2]
    try:
        under_tmp = cwd == Path("/tmp") or Path("/tmp") in cwd.parents  # the guest's /tmp is its own
        result = run(command, forward=[Forward(h, g) for h, g in ports], timeout=float("inf"), env=env,
                     cwd=Path("/") if under_tmp else cwd, kernel=image)
    except KeyboardInterrupt:
        print("vkmsremote: stopped (the VM and its VKMS device are gone)", file=out, flush=True)
        return 0
    return result.exit_code

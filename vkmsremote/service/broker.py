"""The capture broker's process (see vkmsremote.capture.broker for what it answers and why it exists):
starting it as a fresh interpreter, and its entry point, which keeps only CAP_SYS_ADMIN, serves the
socketpair and, with ``--down-on-exit``, removes the VKMS device when it ends."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from types import FrameType
from typing import Any, NoReturn

from vkmsremote.capture.broker import (
    READY_TIMEOUT,
    Broker,
    BrokerClient,
    BrokerServer,
    BrokerSpec,
    send_hello,
)
from vkmsremote.capture.exporter import LocalExporter
from vkmsremote.errors import BrokerError, VkmsRemoteError

log = logging.getLogger(__name__)

def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _child_main(sock: socket.socket, spec: BrokerSpec, parent: int) -> NoReturn:
    code = 0
    broker: Broker | None = None
    desktop: Any = None  # a DesktopResizer when resizes go to the compositor
    ready = False
    try:
        # Ctrl-C reaches the whole process group: the server shuts down and closes the socket, which ends
        # the broker in order. SIGTERM (or the server dying) ends it at once, still cleaning up.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _raise_exit)
        from vkmsremote.service.privileges import Cap, keep_only, set_parent_death_signal

        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent:
            raise SystemExit(0)
        broker = Broker(spec)
        if spec.restrict and os.geteuid() == 0:
            keep_only([Cap.SYS_ADMIN])
        resize = broker.resize_fn
        if resize is None and spec.resize_output:  # a compositor drives the CRTC: ask it (as root, here)
            from vkmsremote.desktop.resize import DesktopResizer
            from vkmsremote.drm.cvt import x_timings

            desktop = DesktopResizer(spec.card_path, spec.resize_output, x_timings)
            resize = desktop.resize
        broker.server = BrokerServer(sock, LocalExporter(broker.card), broker.policy.allows, writeback=broker.wb_fn,
                                     resize=resize)
        send_hello(sock, None)
        ready = True
        broker.start_driving()
        broker.server.serve()
    except SystemExit:
        pass
    except BaseException as exc:
        code = 1
        if ready:
            log.error("capture broker failed: %s", exc)
        else:
            with contextlib.suppress(OSError):
                send_hello(sock, str(exc) or type(exc).__name__)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with contextlib.suppress(BaseException):
            sock.close()
        if desktop is not None:  # put back the compositor's mode, remove the modes added to X
            with contextlib.suppress(BaseException):
                desktop.undo()
        if broker is not None:
            with contextlib.suppress(BaseException):
                broker.close()
        if spec.down_on_exit:
            code = _down(spec.down_on_exit) or code
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
    os._exit(code)


def _down(device: str) -> int:
    from vkmsremote.vkms.device import down

    try:
        results = down(device)
    except VkmsRemoteError as exc:
        log.error("capture broker: removing VKMS device %s failed: %s", device, exc)
        return 1
    for r in results:
        log.warning("removed VKMS device %s (--down-on-exit)", r.device)
    return 0


def start_broker(spec: BrokerSpec, *, timeout: float = READY_TIMEOUT) -> BrokerClient:
    """Start the broker process and wait until it is ready (raises BrokerError with its reason if it
    cannot start). Call before dropping privileges."""
    client = spawn_broker(spec)
    try:
        client.wait_ready(timeout)
    except BaseException:
        client.close()
        raise
    return client


def spawn_broker(spec: BrokerSpec) -> BrokerClient:
    """Start the broker process without waiting for it (it starts up while the caller prepares; call
    ``wait_ready`` before using it, and ``close`` in any case).

    The broker is a fresh interpreter (fork + exec) that inherits only stdio and its end of the
    socketpair: nothing of this process's state (open files, sockets, threads) reaches it.
    """
    server_end, broker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from vkmsremote.service.broker import main; main()",
             json.dumps(spec.to_json()), str(broker_end.fileno()), str(os.getpid())],
            stdin=subprocess.DEVNULL, pass_fds=(broker_end.fileno(),), close_fds=True)
    except OSError as exc:
        server_end.close()
        raise BrokerError(f"cannot start the capture broker: {exc.strerror or exc}") from None
    finally:
        broker_end.close()
    return BrokerClient(server_end, proc)


def main(argv: list[str] | None = None) -> None:
    """The broker process: ``SPEC_JSON SOCKET_FD PARENT_PID`` (started by :func:`spawn_broker` only)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: (internal) SPEC_JSON SOCKET_FD PARENT_PID", file=sys.stderr)
        raise SystemExit(2)
    logging.basicConfig(level=logging.INFO, format="vkmsremote-broker[%(process)d] %(levelname)s: %(message)s")
    spec = BrokerSpec.from_json(json.loads(args[0]))
    sock = socket.socket(fileno=int(args[1]))
    _child_main(sock, spec, int(args[2]))

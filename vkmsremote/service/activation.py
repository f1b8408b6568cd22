"""systemd socket activation (sd_listen_fds(3), without libsystemd): the listening sockets a socket unit
passed to this process.

systemd sets LISTEN_PID (the pid the sockets are meant for), LISTEN_FDS (how many, from fd 3 on) and
LISTEN_FDNAMES (their FileDescriptorName=, colon-separated). The sockets are claimed once, their
variables removed from the environment (so nothing this process starts claims them too), and handed out
by name: the one named ``web`` goes to the noVNC listener, the first other one to the VNC listener.
"""

from __future__ import annotations

import logging
import os
import socket

from vkmsremote.errors import UsageError

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
WEB_NAME = "web"
_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_claimed: dict[str, socket.socket] | None = None


def listen_sockets() -> dict[str, socket.socket]:
    """The sockets systemd passed, by name (claimed on the first call; empty without socket activation)."""
    global _claimed
    if _claimed is not None:
        return _claimed
    _claimed = {}
    pid, count = os.environ.get("LISTEN_PID", ""), os.environ.get("LISTEN_FDS", "")
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for key in _ENV:
        os.environ.pop(key, None)
    if pid != str(os.getpid()) or not count.isdigit():
        return _claimed
    for i in range(int(count)):
        fd = SD_LISTEN_FDS_START + i
        name = names[i] if i < len(names) and names[i] else f"fd{fd}"
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise UsageError(f"systemd passed fd {fd} ({name}), which is not a socket: {e.strerror}",
                             hint="the socket unit may only have ListenStream= entries") from e
        if sock.type != socket.SOCK_STREAM:
            raise UsageError(f"systemd passed fd {fd} ({name}), which is not a stream socket",
                             hint="use ListenStream= in the socket unit")
        os.set_inheritable(fd, False)
        sock.setblocking(False)
        key = name if name not in _claimed else f"{name}-{fd}"
        _claimed[key] = sock
    return _claimed


def take_vnc_socket() -> socket.socket | None:
    """The socket for the VNC listener, if systemd passed one (the first not named ``web``)."""
    sockets = listen_sockets()
    for name in list(sockets):
        if name != WEB_NAME:
            sock = sockets.pop(name)
            others = [n for n in sockets if n != WEB_NAME]
            if others:
                log.warning("systemd passed more than one VNC socket; serving only %s, not %s", name, others)
            return sock
    return None


def take_web_socket() -> socket.socket | None:
    """The socket for the web (noVNC) listener, if systemd passed one named ``web``."""
    return listen_sockets().pop(WEB_NAME, None)



"""``vkmsremote up`` serving: after the device is up, serve its connector's CRTC over VNC with privilege
separation.

Process layout (see docs/capture.md):

    vkmsremote up (root) ── makes XR-0 in configfs, then forks ──▶ capture broker (uid 0, CAP_SYS_ADMIN
        │                                                          only, no sockets but the socketpair;
        │                                                          with --drive: DRM master, page flips)
        ├─ opens the card (non-master), the uinput devices, builds TLS state
        └─ drops to --user (no capabilities, no_new_privs) ─▶ listens, serves VNC/web, asks the broker
                                                              for dma-buf fds over the socketpair

Only argument definitions are imported by the CLI's parser; everything heavy is imported when serving.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from vkmsremote.errors import DeviceStateError, UsageError
from vkmsremote.service.options import (
    add_listen_arguments,
    add_security_arguments,
    has_full_password_source,
    has_view_only_password_source,
    mode,
    size,
)

log = logging.getLogger("vkmsremote.up")

DEFAULT_USER = "nobody"
DEFAULT_DRIVE_FPS = 30.0
ANNOUNCE_ENV = "VKMSREMOTE_ANNOUNCE"
"""Set by ``up --vm``: the host address clients use (the guest prints it instead of its own address)."""
SERVING_PACKAGES = ("vkmsremote.capture", "vkmsremote.consumer", "vkmsremote.drm", "vkmsremote.rfb", "vkmsremote.server",
                    "vkmsremote.web", "vkmsremote.input", "vkmsremote.service")
"""Everything the network-facing process may import after the privilege drop (see preload_modules)."""


def add_arguments(up: argparse.ArgumentParser) -> None:
    """The serving options of ``vkmsremote up`` (the device options are the CLI's)."""
    srv = up.add_argument_group("serving (after the device is up; Ctrl-C stops serving, the device stays)")
    srv.add_argument("--no-serve", action="store_true", help="only create the device and print the mapping")
    srv.add_argument("--connector", metavar="NAME",
                     help="configfs connector to serve (default: the profile's first, XR-0)")
    add_listen_arguments(srv)
    srv.add_argument("--drive", choices=("pattern",),
                     help="pattern: vkmsremote becomes DRM master and page-flips an animated test pattern onto "
                          "the connector (demos, benchmarks); default: serve whatever a compositor shows")
    srv.add_argument("--mode", type=mode, metavar="WxH[@Hz]",
                     help="--drive: XR-0's mode, any size up to 8192x8192 at any rate (a mode VKMS does not list "
                          "is made with CVT reduced blanking, as `cvt -r` computes it); XR-glasses presets are "
                          "in docs/up.md (default: the preferred mode, 1024x768@60)")
    srv.add_argument("--drive-size", type=size, metavar="WxH", help="--drive: mode size (the same as --mode WxH)")
    srv.add_argument("--drive-fps", type=float, default=DEFAULT_DRIVE_FPS, metavar="N",
                     help=f"--drive: flips per second at most (default {DEFAULT_DRIVE_FPS:g}; 0: every vblank)")
    srv.add_argument("--capture", choices=("getfb2", "writeback"), default="getfb2",
                     help="getfb2: read the primary plane's framebuffer (default); writeback: the CRTC's "
                          "writeback connector composes each frame (needs --drive)")
    srv.add_argument("--input", choices=("uinput", "none"), default="uinput",
                     help="where clients' keyboard and pointer go (default uinput)")
    from vkmsremote.desktop.binding import add_pointer_output_argument

    add_pointer_output_argument(srv)
    srv.add_argument("--user", default=DEFAULT_USER,
                     help=f"unprivileged user the network-facing process becomes (default {DEFAULT_USER})")
    srv.add_argument("--down-on-exit", action="store_true", help="remove the device when serving stops")
    srv.add_argument("--vm", action="store_true",
                     help="run all of this inside vkmsremote's test VM (for machines without VKMS) and forward "
                          "the ports to this host's 127.0.0.1")
    add_security_arguments(up.add_argument_group("security (as for `vkmsremote serve`)"))
    from vkmsremote.consumer.options import add_up_arguments as add_consumer_arguments

    add_consumer_arguments(up)


@dataclass(frozen=True, slots=True)
class ServeTarget:
    """The connector being served and where it is in DRM."""

    name: str  # configfs name, "XR-0"
    device: str  # configfs device name
    card: str  # "/dev/dri/card0"
    drm_name: str  # "Virtual-1"
    connector_id: int
    crtc_id: int

    @property
    def desktop_name(self) -> str:
        return (f"{self.name} ({os.path.basename(self.card)} {self.drm_name}, connector {self.connector_id}, "
                f"CRTC {self.crtc_id})")


def check_options(args: argparse.Namespace) -> None:
    """Refuse combinations that cannot work, before anything is changed."""
    if args.capture == "writeback" and not args.drive:
        raise UsageError("--capture writeback needs --drive",
                         hint="the writeback connector can only be used by the DRM master, i.e. when vkmsremote "
                              "drives the CRTC itself")
    if args.no_serve:
        given = [flag for flag, on in (("--drive", args.drive), ("--web", args.web is not None),
                                       ("--down-on-exit", args.down_on_exit)) if on]
        if given:
            raise UsageError(f"{', '.join(given)} cannot be used with --no-serve")
    if args.mode is not None and args.drive_size is not None:
        raise UsageError("--mode and --drive-size both give the mode", hint="give --mode WxH[@Hz] only")
    if args.mode is not None and not args.drive:
        raise UsageError("--mode needs --drive pattern",
                         hint="without it a compositor is DRM master and sets the mode (its own settings)")
    if args.drive_fps is not None and args.drive_fps < 0:
        raise UsageError("--drive-fps must be 0 or more")
    if args.web is not None and args.web == args.port and args.port:
        raise UsageError(f"--web and --port are both {args.port}")
    if has_view_only_password_source(args) and not has_full_password_source(args):
        raise UsageError("a view-only password needs a full-access password as well",
                         hint="give --password-file FILE (or $VKMSREMOTE_PASSWORD) too")


def unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def target_of(mapping: Any, connector: str | None) -> ServeTarget:
    """The ServeTarget of ``connector`` (default: the first) in an ``up`` DeviceMapping."""
    if not mapping.connectors:
        raise DeviceStateError(f"device {mapping.name} has no connectors to serve")
    c = mapping.connector(connector) if connector else mapping.connectors[0]
    if mapping.card is None or c.connector_id is None or c.drm_name is None:
        raise DeviceStateError(f"{c.name} has no DRM connector yet ({mapping.note or 'no card'})",
                               hint="`vkmsremote status` shows the DRM side; `dmesg | tail` may say why")
    crtc = c.crtc_id or next(iter(c.possible_crtc_ids), None)
    if not crtc:
        raise DeviceStateError(f"{c.name} ({c.drm_name}) cannot be driven by any CRTC")
    return ServeTarget(c.name, mapping.name, mapping.card, c.drm_name, c.connector_id, crtc)


def preload_modules() -> None:
    """Import now everything serving may import later: after the privilege drop the interpreter's own
    files may be unreadable (e.g. a Python under /root), and a lazy import would then fail mid-session."""
    for package in SERVING_PACKAGES:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            if info.name != "vkmsremote.input.generate_tables":
                importlib.import_module(info.name)
    for name in ("ssl", "hmac", "hashlib", "secrets", "zlib", "json", "base64", "html", "mimetypes",
                 "email.utils", "encodings.idna", "encodings.latin_1", "encodings.ascii", "encodings.utf_8",
                 "asyncio.sslproto", "asyncio.staggered", "asyncio.trsock", "concurrent.futures.thread",
                 "simplejpeg", "evdev", "numpy.lib.stride_tricks", "logging.handlers", "traceback"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    import mimetypes

    mimetypes.init()  # reads /etc/mime.types now, while it still can


def _say(out: TextIO, text: str) -> None:
    print(f"vkmsremote: {text}", file=out, flush=True)


def serve_up(args: argparse.Namespace, mapping: Any, out: TextIO = sys.stdout) -> int:
    """Serve the connector ``up`` just made (or found) until SIGINT/SIGTERM. Runs as root: forks the
    capture broker, drops privileges, serves. Returns the exit status."""
    import asyncio

    from vkmsremote.capture.broker import READY_TIMEOUT, BrokerSpec
    from vkmsremote.errors import PermissionDeniedError
    from vkmsremote.service.broker import spawn_broker
    from vkmsremote.service.privileges import drop_privileges, resolve_user

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="vkmsremote[%(process)d] %(levelname)s: %(message)s")
    check_options(args)
    target = target_of(mapping, args.connector)
    root = os.geteuid() == 0
    if not root:
        raise PermissionDeniedError("serving needs root (to start the capture broker and open uinput)",
                                    hint="run vkmsremote up as root, or use `vkmsremote serve` as a DRM master")
    user = resolve_user(args.user)
    low = unprivileged_port_start()
    for flag, port in (("--port", args.port), ("--web", args.web)):
        if port is not None and 0 < port < low:
            raise UsageError(f"{flag} {port} is below {low}: only privileged processes may listen there, and the "
                             "server gives up its privileges", hint=f"choose a port of {low} or more")
    spec = BrokerSpec(card_path=target.card, crtc_id=target.crtc_id,
                      drive_connector=target.drm_name if args.drive == "pattern" else None,
                      drive_size=args.mode[:2] if args.mode else args.drive_size,
                      drive_refresh=args.mode[2] if args.mode else None, drive_fps=args.drive_fps or None,
                      writeback=args.capture == "writeback",
                      down_on_exit=target.device if args.down_on_exit else None,
                      resize_output=None if args.drive else target.drm_name)
    broker = spawn_broker(spec)  # it starts up (imports, modeset) while this process prepares
    devices: Any = None
    binding: Any = None
    try:
        if args.input == "uinput" and not args.view_only:  # before the devices exist (Weston reads WL_OUTPUT at add)
            from vkmsremote.desktop.binding import bind_pointer

            binding = bind_pointer(args.pointer_output, target.card, target.drm_name, lambda text: _say(out, text))
            binding.undo_at_exit_of_parent()  # undone as root after the drop; a layout watcher stays here
        # Everything that needs root's files is read now: password file, TLS key and certificate.
        from vkmsremote.server.app import resolves_to_loopback
        from vkmsremote.service.serve import WebListener, policy_from_args, uinput_sink_factory, vnc_server
        from vkmsremote.web import WebConfig
        from vkmsremote.web.server import LOOPBACK_NAMES

        policy = policy_from_args(args)
        if not policy.authenticates and not args.insecure_listen and not resolves_to_loopback(args.listen):
            raise UsageError(f"refusing to listen on {args.listen} without authentication",
                             hint="set a password (--password-file) or pass --insecure-listen if the network "
                                  "is trusted")
        announce = os.environ.get(ANNOUNCE_ENV)
        # Behind `up --vm` clients come through the host's loopback forward: accept only those names.
        web = WebListener.from_args(args, WebConfig(allowed_hosts=LOOPBACK_NAMES) if announce else None)
        if args.input == "uinput" and not args.view_only:
            from vkmsremote.input import UinputDevices

            devices = UinputDevices.open("vkmsremote", follow_layout=True)
        preload_modules()
        from vkmsremote.capture.crtc import CrtcReader
        from vkmsremote.drm.card import Card

        broker.wait_ready(READY_TIMEOUT)
        # Opened after the broker is ready: a first opener is DRM master for a moment, which could make
        # the broker's --drive fail to become master.
        card = Card.open(target.card)  # authenticated as root at open: GETCRTC, GETPLANE, vblank events
        from vkmsremote.consumer.service import ConsumerService

        consumers = ConsumerService.prepare(args, target, broker)  # the socket is bound as root
        dropped = drop_privileges(user.pw_name)
        log.info("serving as %s (uid %d, no capabilities); capture broker pid %s keeps CAP_SYS_ADMIN",
                 dropped.user, dropped.uid, broker.pid)
        reader = CrtcReader(card, target.crtc_id, desktop_name=target.desktop_name, own_card=True,
                            exporter=broker, writeback=broker if args.capture == "writeback" else None,
                            resizer=broker)  # --drive: the broker sets the mode; else it asks the compositor
        sink = uinput_sink_factory(devices, reader, binding) if devices is not None else None
        server = vnc_server(reader, sink, policy, args)
        asyncio.run(_serve(server, reader, target, web, announce, out, consumers))
    finally:
        if devices is not None:
            devices.close()  # releases anything still pressed
        if binding is not None:
            binding.undo()  # what is left after undo_at_exit_of_parent: the layout watcher's connection
        broker.close()
    if args.down_on_exit:
        status = "removed" if broker.exit_status == 0 else "could not remove (see the log)"
        _say(out, f"{status} VKMS device {target.device}")
    return 0


async def _serve(server: Any, reader: Any, target: ServeTarget, web: Any, announce: str | None,
                 out: TextIO, consumers: Any = None) -> None:
    from vkmsremote.server.app import rsa_key_announcement
    from vkmsremote.service.serve import run_until_stopped

    def started(server: Any, web_server: Any) -> None:
        _say(out, f"serving {target.desktop_name} on {server.host} port {server.port} "
                  f"({', '.join(t.name for t in server.ctx.policy.types)})")
        if announce:
            host, _, _ = announce.rpartition(":")
            _say(out, f"connect a VNC client to {host}:{server.port} on the host "
                      f"(e.g. vncviewer {host}::{server.port})")
            if web_server is not None:
                scheme = web_server.url.partition(":")[0]
                _say(out, f"or {web.describe(f'{scheme}://{host}:{web.port}/')} on the host")
        elif web_server is not None:
            _say(out, web.describe(web_server.url))
        if (fingerprint := rsa_key_announcement(server.ctx.policy)) is not None:
            _say(out, fingerprint)

    async def cleanup() -> None:
        if consumers is not None:
            await consumers.close()
        await reader.close()

    try:
        if consumers is not None:
            await consumers.start()
            _say(out, f"consumer socket {consumers.path}")
        await run_until_stopped(server, web=web, started=started, stopping=lambda: _say(out, "stopping"),
                                cleanup=cleanup)
    finally:
        log.info("capture: %d frames from %d vblanks; %d full checks, %d idle probes, %d torn reads discarded; "
                 "%d broker calls, %d buffers received", reader.frames, reader.vblanks, reader.full_checks,
                 reader.probes, reader.torn, getattr(reader.exporter, "calls", 0),
                 getattr(reader.exporter, "fds_received", 0))

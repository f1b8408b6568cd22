"""Serve a frame source over VNC (RFB): the ``vkmsremote serve`` command and the server's library API.

Without options it serves an animated test picture on 127.0.0.1:5900 without authentication; give a
password (and get VeNCrypt/TLS with a self-signed certificate by default) before listening elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vkmsremote.errors import UsageError
from vkmsremote.rfb.auth import SecurityPolicy, plain_checker
from vkmsremote.rfb.constants import SecurityType, VeNCryptSubtype
from vkmsremote.server.activation import socket_host, take_vnc_socket
from vkmsremote.server.blacklist import Blacklist
from vkmsremote.server.credentials import add_password_arguments
from vkmsremote.server.hub import Hub
from vkmsremote.server.input import InputSink, NullSink, WakingSink

if TYPE_CHECKING:
    from vkmsremote.input import UinputDevices
from vkmsremote.frame import FrameSource
from vkmsremote.server.session import Session, SessionContext, SessionRecord
from vkmsremote.server.tls import ensure_certificate, server_context
from vkmsremote.web import DEFAULT_WEB_PORT, WebServer

log = logging.getLogger(__name__)

DEFAULT_PORT = 5900
SECURITY_NAMES: dict[str, SecurityType | VeNCryptSubtype] = {
    "none": SecurityType.NONE,
    "vncauth": SecurityType.VNC_AUTH,
    "x509none": VeNCryptSubtype.X509_NONE,
    "x509vnc": VeNCryptSubtype.X509_VNC,
    "x509plain": VeNCryptSubtype.X509_PLAIN,
}
"""Names accepted by --security (TigerVNC's SecurityTypes spelling, case-insensitive)."""


def security_policy(
    *,
    password: str | None = None,
    username: str | None = None,
    types: list[str] | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_dir: Path | None = None,
    view_only_password: str | None = None,
) -> SecurityPolicy:
    """A SecurityPolicy from user-level choices.

    Without ``types``: VeNCrypt X509Vnc (plus X509Plain when a username is given) and plain VNC auth when
    a password is set, else None. VeNCrypt types make (or load) the TLS certificate. ``view_only_password``:
    a second password VNC authentication (and X509Plain, for the same username) accepts with view-only rights.
    """
    if view_only_password is not None and not password:
        raise UsageError("a view-only password needs a full-access password as well",
                         hint="give --password-file (or $VKMSREMOTE_PASSWORD) too")
    if view_only_password is not None and view_only_password == password:
        raise UsageError("the view-only password is the full-access password: every client would get full access",
                         hint="choose a different view-only password")
    if types is None:
        types = ["x509vnc", *(["x509plain"] if username else []), "vncauth"] if password else ["none"]
    rfb_types: list[SecurityType] = []
    subtypes: list[VeNCryptSubtype] = []
    for name in types:
        value = SECURITY_NAMES.get(name.strip().lower())
        if value is None:
            raise UsageError(f"unknown security type {name!r}", hint=f"choose from {', '.join(SECURITY_NAMES)}")
        if isinstance(value, VeNCryptSubtype):
            subtypes.append(value)
            if SecurityType.VENCRYPT not in rfb_types:
                rfb_types.append(SecurityType.VENCRYPT)
        elif value not in rfb_types:
            rfb_types.append(value)
    tls = None
    if subtypes:
        cert, key = ensure_certificate(tls_cert, tls_key, directory=tls_dir)
        tls = server_context(cert, key)
    check_plain = plain_checker(username, password) if username and password else None
    view_plain = plain_checker(username, view_only_password) if check_plain and username and view_only_password \
        else None
    return SecurityPolicy(
        types=tuple(rfb_types),
        vnc_password=password.encode() if password else None,
        vencrypt_subtypes=tuple(dict.fromkeys(subtypes)),
        tls_context=tls,
        check_plain=check_plain,
        vnc_view_only_password=view_only_password.encode() if view_only_password else None,
        check_plain_view_only=view_plain,
    )


def is_loopback(host: str) -> bool:
    """True if every address ``host`` names is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


SinkFactory = Callable[[int, int], InputSink]
"""Makes the InputSink of one session, given the framebuffer width and height at connection time."""


class VncServer:
    """Serves one FrameSource to any number of VNC clients.

    ``sink`` receives every client's input: either one InputSink shared by all sessions, or a
    :data:`SinkFactory` called once per session (e.g. a ``UinputSink`` per client over shared uinput
    devices); a per-session sink with a ``close()`` method is closed when its client leaves, one with
    ``set_screen(w, h)`` is told about desktop size changes. Library use::

        server = VncServer(source, sink, host="127.0.0.1", port=5900, policy=security_policy(password="..."))
        await server.start()          # listening; server.port is the bound port
        await server.serve_forever()  # until cancelled; then: await server.close()

    ``handle_client(reader, writer)`` serves one already-accepted connection (the web listener uses it
    for RFB over WebSocket). ``listen_socket``: an already listening socket to serve on instead of host and
    port; by default the one systemd passed, if the process was socket-activated (server/activation.py).
    """

    def __init__(
        self,
        source: FrameSource,
        sink: InputSink | SinkFactory | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        policy: SecurityPolicy | None = None,
        view_only: bool = False,
        always_shared: bool = False,
        insecure_listen: bool = False,
        max_connections: int = 32,
        blacklist: Blacklist | None = None,
        handshake_timeout: float = 120.0,
        listen_socket: socket.socket | None = None,
    ) -> None:
        policy = policy or SecurityPolicy()
        # A socket systemd passed (socket activation) replaces host and port.
        self._listen_socket = listen_socket if listen_socket is not None else take_vnc_socket()
        if self._listen_socket is not None:
            host = socket_host(self._listen_socket)
        if not is_loopback(host) and not policy.authenticates and not insecure_listen:
            raise UsageError(
                f"refusing to listen on {host or 'all addresses'} without authentication",
                hint="set a password (--password) or pass --insecure-listen if the network is trusted",
            )
        self.source = source
        self.host = host
        self.requested_port = port
        self.max_connections = max_connections
        self.hub = Hub(source)
        if sink is None:
            sink = NullSink()
        self.ctx = SessionContext(
            hub=self.hub,
            policy=policy,
            sink=sink if isinstance(sink, InputSink) else None,
            sink_factory=None if isinstance(sink, InputSink) else sink,
            view_only=view_only,
            always_shared=always_shared,
            blacklist=blacklist or Blacklist(),
            handshake_timeout=handshake_timeout,
        )
        self.records: deque[SessionRecord] = deque(maxlen=256)
        """Every session so far (newest last, bounded), live while the session runs."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound TCP port (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            return self.requested_port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def sessions(self) -> tuple[Session, ...]:
        return tuple(self.ctx.sessions)

    async def start(self) -> None:
        try:
            if self._listen_socket is not None:
                self._server = await asyncio.start_server(self.handle_client, sock=self._listen_socket,
                                                          limit=1 << 16)
            else:
                self._server = await asyncio.start_server(self.handle_client, self.host, self.requested_port,
                                                          reuse_address=True, limit=1 << 16)
        except OSError as e:
            raise UsageError(f"cannot listen on {self.host}:{self.requested_port}: {e.strerror or e}",
                             hint="choose another --port or stop the program using it") from e
        self.hub.start()
        log.info("VNC server listening on %s port %d (%s)", self.host, self.port,
                 ", ".join(t.name for t in self.ctx.policy.types))

    async def serve_forever(self) -> None:
        """Serve until cancelled; raises the frame source's exception if the source fails."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        serving = asyncio.ensure_future(self._server.serve_forever())
        try:
            await asyncio.wait([serving, self.hub.done], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not serving.done():
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
        if self.hub.failed is not None:
            raise self.hub.failed
        serving.result()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for s in list(self.ctx.sessions):
            s.abort("server shutting down")
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=5)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
            self._server = None
        await self.hub.close()

    def bell(self) -> None:
        """Ring the bell on every client."""
        for s in list(self.ctx.sessions):
            s.send_bell()

    def send_clipboard(self, text: str) -> None:
        """Give every client new clipboard text (ServerCutText, Latin-1)."""
        for s in list(self.ctx.sessions):
            s.send_cut_text(text)

    async def handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection until it ends (the callback of asyncio.start_server)."""
        if len(self.ctx.sessions) >= self.max_connections:
            log.warning("refusing %s: %d connections already", writer.get_extra_info("peername"),
                        self.max_connections)
            writer.transport.abort()
            return
        session = Session(self.ctx, reader, writer)
        self.records.append(session.record)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await session.run()
        except asyncio.CancelledError:
            pass  # server shutdown; asyncio's start_server callback must not see a cancelled task
        finally:
            if task is not None:
                self._tasks.discard(task)


async def serve(
    source: FrameSource,
    sink: InputSink | SinkFactory | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    password: str | None = None,
    username: str | None = None,
    security: list[str] | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    view_only: bool = False,
    view_only_password: str | None = None,
    always_shared: bool = False,
    insecure_listen: bool = False,
    web_port: int | None = None,
    ready: Callable[[VncServer], None] | None = None,
) -> None:
    """Serve ``source`` until cancelled (the ``vkmsremote up`` entry point).

    ``web_port``: also serve noVNC and RFB over WebSocket on that port (0: any free one), https when a
    TLS certificate was given. ``ready`` is called once the listeners are up.
    """
    policy = security_policy(password=password, username=username, types=security, tls_cert=tls_cert,
                             tls_key=tls_key, view_only_password=view_only_password)
    server = VncServer(source, sink, host=host, port=port, policy=policy, view_only=view_only,
                       always_shared=always_shared, insecure_listen=insecure_listen)
    await server.start()
    web = None
    try:
        if web_port is not None:
            web = await start_web(server, web_port, tls_cert=tls_cert, tls_key=tls_key)
        if ready is not None:
            ready(server)
        await server.serve_forever()
    finally:
        if web is not None:
            await web.close()
        await server.close()


async def start_web(server: VncServer, port: int, *, tls_cert: Path | None = None,
                    tls_key: Path | None = None) -> WebServer:
    """The noVNC page and RFB-over-WebSocket listener next to ``server`` (same host, same sessions)."""
    from vkmsremote.web import start_web_server

    web_ssl = server_context(*ensure_certificate(tls_cert, tls_key)) if tls_cert is not None else None
    web = await start_web_server(server.handle_client, server.host, port, ssl=web_ssl)
    log.info("noVNC at %s", web.url)
    return web


# --- the `vkmsremote serve` command -----------------------------------------------------------------------

SourceFactory = Callable[[argparse.Namespace], FrameSource]
SOURCES: dict[str, SourceFactory] = {}
"""--source name -> factory. Other modules may register more at import time."""


def _pattern_source(args: argparse.Namespace) -> FrameSource:
    from vkmsremote.server.pattern import PatternSource

    width, height = args.size
    return PatternSource(width, height, fps=args.fps, full_motion=args.full_motion)


def _crtc_source(args: argparse.Namespace) -> FrameSource:
    from vkmsremote.capture.crtc import CrtcReader

    connector: int | str | None = args.connector
    if isinstance(connector, str) and connector.isdigit():
        connector = int(connector)
    return CrtcReader.open(args.card, crtc_id=args.crtc, connector=connector)


SOURCES["pattern"] = _pattern_source
SOURCES["crtc"] = _crtc_source


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT") from None
    return w, h


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vkmsremote serve``."""
    src = parser.add_argument_group("what to serve")
    src.add_argument("--source", default="pattern", choices=sorted(SOURCES),
                     help="pattern: an animated test picture (default); crtc: what a DRM CRTC scans out")
    src.add_argument("--size", type=_size, default=(1920, 1080), metavar="WxH",
                     help="pattern: picture size (default 1920x1080)")
    src.add_argument("--fps", type=float, default=30.0, help="pattern: frames per second (default 30)")
    src.add_argument("--full-motion", action="store_true", help="pattern: change every pixel every frame")
    src.add_argument("--card", default="/dev/dri/card0", help="crtc: DRM card (default /dev/dri/card0)")
    src.add_argument("--connector", help="crtc: connector name (e.g. Virtual-1) or id whose CRTC to serve")
    src.add_argument("--crtc", type=int, help="crtc: CRTC id (default: the connector's, or the only one)")
    src.add_argument("--input", choices=("none", "uinput"),
                     help="where keyboard and pointer go (default: uinput for crtc, none for pattern)")
    from vkmsremote.desktop.binding import add_pointer_output_argument

    add_pointer_output_argument(src)
    net = parser.add_argument_group("network and security")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    net.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    net.add_argument("--web", type=int, nargs="?", const=DEFAULT_WEB_PORT, metavar="PORT",
                     help=f"also serve noVNC in a browser on PORT (default {DEFAULT_WEB_PORT})")
    add_password_arguments(net)
    net.add_argument("--username", help="username for VeNCrypt X509Plain (which uses the whole password)")
    net.add_argument("--security", help="comma-separated security types in order of preference: "
                     + ", ".join(SECURITY_NAMES) + " (default: x509vnc,vncauth with a password, else none)")
    net.add_argument("--tls-cert", type=Path, help="PEM certificate for VeNCrypt and the web page (default: a "
                     "self-signed one, made on first use under ~/.config/vkmsremote/tls)")
    net.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    net.add_argument("--insecure-listen", action="store_true",
                     help="allow a non-loopback --host without authentication")
    beh = parser.add_argument_group("behaviour")
    beh.add_argument("--view-only", action="store_true", help="ignore keyboard, pointer and clipboard input "
                     "from every client (--view-only-password-file: from some)")
    beh.add_argument("--always-shared", action="store_true",
                     help="never disconnect other clients when one asks for exclusive access")


def _password(args: argparse.Namespace) -> str | None:
    """The password from --password-file, --password (refused unless --allow-password-argument) or
    $VKMSREMOTE_PASSWORD (see vkmsremote.server.credentials)."""
    from vkmsremote.server.credentials import password_from

    allow: bool | None = getattr(args, "allow_password_argument", None)  # None: this command has no such option
    password = password_from(args.password_file, args.password, allow_argument=allow)
    if args.password is not None and args.password_file is None:
        log.warning("the password is on the command line, where every local user can read it")
    return password


def _view_only_password(args: argparse.Namespace, password: str | None) -> str | None:
    """The view-only password from --view-only-password-file or $VKMSREMOTE_VIEW_ONLY_PASSWORD; refused
    without a full-access ``password`` or equal to it (see vkmsremote.server.credentials)."""
    from vkmsremote.server.credentials import view_only_password_from

    view_only = view_only_password_from(getattr(args, "view_only_password_file", None), password)
    if view_only is not None and len(view_only.encode()) > 8:
        log.warning("VNC authentication uses only the first 8 bytes of the view-only password")
    return view_only


def uinput_sink_factory(devices: UinputDevices, source: object = None) -> SinkFactory:
    """A SinkFactory giving each client its own UinputSink over ``devices`` (one shared pair of uinput
    devices). With a ``source`` that knows its placement (a CrtcReader), the pointer maps into the
    connector's place in the compositor's framebuffer (several outputs in one desktop); one that can be
    woken is woken by input, which is usually followed by a change on screen."""
    from vkmsremote.input import UinputSink, area_of

    placement = getattr(source, "placement", None)
    area = (lambda: area_of(placement())) if callable(placement) else None
    wake = getattr(source, "wake", None)

    def factory(width: int, height: int) -> InputSink:
        sink = UinputSink(devices, width, height, area_source=area)
        return WakingSink(sink, wake) if callable(wake) else sink

    return factory


def _uinput_sinks(source: object = None) -> tuple[SinkFactory, Callable[[], None]]:
    """:func:`uinput_sink_factory` over devices opened now, and what closes them."""
    from vkmsremote.input import UinputDevices

    devices = UinputDevices.open("vkmsremote")
    return uinput_sink_factory(devices, source), devices.close


def _chain(first: Callable[[], None], then: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        try:
            first()
        finally:
            then()
    return both


def policy_from_args(args: argparse.Namespace) -> SecurityPolicy:
    """The security policy of ``serve``'s and ``up``'s options (reads the password files now)."""
    password = _password(args)
    if password is not None and len(password.encode()) > 8:
        log.warning("VNC authentication uses only the first 8 bytes of the password")
    view_only_password = _view_only_password(args, password)
    types = [t for t in args.security.split(",") if t.strip()] if args.security else None
    return security_policy(password=password, username=args.username, types=types,
                           tls_cert=args.tls_cert, tls_key=args.tls_key, view_only_password=view_only_password)


def run(args: argparse.Namespace) -> int:
    """``vkmsremote serve``: serve until interrupted. Errors are raised as VkmsRemoteError subclasses."""
    policy = policy_from_args(args)
    source = SOURCES[args.source](args)
    input_kind = args.input or ("uinput" if args.source == "crtc" else "none")
    sink: InputSink | SinkFactory = NullSink()
    close_input: Callable[[], None] = lambda: None  # noqa: E731
    if input_kind == "uinput" and not args.view_only:
        if args.source == "crtc":  # bound before the devices exist (Weston reads WL_OUTPUT when one is added)
            from vkmsremote.desktop.binding import bind_pointer

            named = args.connector if args.connector and not args.connector.isdigit() else None
            binding = bind_pointer(args.pointer_output, args.card, named, lambda t: print(f"vkmsremote: {t}", flush=True))
            close_input = binding.undo
        sink, close_uinput = _uinput_sinks(source)
        close_input = _chain(close_uinput, close_input)
    server = VncServer(source, sink, host=args.host, port=args.port, policy=policy,
                       view_only=args.view_only, always_shared=args.always_shared,
                       insecure_listen=args.insecure_listen)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        await server.start()
        web = None
        try:
            print(f"vkmsremote: serving {source.desktop_name} on {args.host} port {server.port}", flush=True)
            if args.web is not None:
                web = await start_web(server, args.web, tls_cert=args.tls_cert, tls_key=args.tls_key)
                print(f"vkmsremote: open {web.url} in a browser", flush=True)
            await server.serve_forever()
        except asyncio.CancelledError:
            pass
        finally:
            if web is not None:
                await web.close()
            await server.close()
            await source.close()

    try:
        asyncio.run(main())
    finally:
        close_input()
    return 0

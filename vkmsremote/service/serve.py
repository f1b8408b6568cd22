"""Serve a frame source over VNC (RFB): the ``vkmsremote serve`` command, and the wiring ``serve`` and
``up`` share: options -> security policy, input sinks, listeners (systemd's sockets if it passed any),
and :func:`run_until_stopped`, the one loop that serves until SIGINT/SIGTERM.

The CLI builds its parser from this module: everything heavy (asyncio, the server, numpy) is imported
when serving.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vkmsremote.errors import UsageError
from vkmsremote.service.options import DEFAULT_PORT, add_listen_arguments, add_security_arguments, size

if TYPE_CHECKING:
    import asyncio
    import ssl

    from vkmsremote.capture.crtc import CrtcLocation, CrtcReader
    from vkmsremote.desktop.binding import Binding
    from vkmsremote.frame import FrameSource
    from vkmsremote.input import UinputDevices
    from vkmsremote.rfb.auth import SecurityPolicy
    from vkmsremote.server.app import SinkFactory, VncServer
    from vkmsremote.server.input import InputSink
    from vkmsremote.web import WebConfig, WebServer

log = logging.getLogger(__name__)

DESCRIPTION = ("Serve an animated test picture (default), what a DRM CRTC scans out or an X server's screen file "
               "(Xvfb -fbdir) over VNC. Without "
               "options it listens on 127.0.0.1:5900 without authentication; give a password (and get "
               "VeNCrypt/TLS with a self-signed certificate by default) before listening elsewhere.")

__all__ = ["DEFAULT_PORT", "SOURCES", "WebListener", "add_arguments", "policy_from_args", "run",
           "run_until_stopped", "uinput_sink_factory", "vnc_server"]

# --- what to serve ------------------------------------------------------------------------------------------

SourceFactory = Callable[[argparse.Namespace], "FrameSource"]
SOURCES: dict[str, SourceFactory] = {}
"""--source name -> factory. Other modules may register more at import time."""


def _pattern_source(args: argparse.Namespace) -> FrameSource:
    from vkmsremote.server.pattern import PatternSource

    width, height = args.size
    return PatternSource(width, height, fps=args.fps, full_motion=args.full_motion)


def _crtc_source(args: argparse.Namespace) -> FrameSource:
    """The CrtcReader of --card/--connector/--crtc. It follows the CRTC when the card goes away and comes back
    (service/locate.py): a configfs connector (XR-0) through the mapping, any other card by its node."""
    if args.connector and "," in args.connector:
        return _multi_source(args)
    connector: int | str | None = args.connector
    if isinstance(connector, str) and connector.isdigit():
        connector = int(connector)
    reader, found = _open_reader(args.card, connector, args.crtc)
    if found is not None:  # --connector XR-0: found through the mapping
        args.card, args.connector = found.card_path, found.drm_connector  # the pointer binding names the DRM side
        connector = found.drm_connector
    output = _output_of(reader, connector)
    if output is not None:  # a client's SetDesktopSize goes to the compositor driving the card
        from vkmsremote.desktop.resize import DesktopResizer
        from vkmsremote.drm.cvt import x_timings

        reader.resizer = DesktopResizer(args.card, output, x_timings)
    return reader


def _open_reader(card: str, connector: int | str | None, crtc: int | None) -> tuple[CrtcReader, CrtcLocation | None]:
    """The CrtcReader for ``--card card --connector connector --crtc crtc``, following the CRTC when its card
    goes away and comes back (service/locate.py); with where it was found when ``connector`` is a configfs
    name (XR-0), through the mapping."""
    from vkmsremote.capture.crtc import CrtcReader
    from vkmsremote.errors import DeviceStateError
    from vkmsremote.service.locate import ConfigfsConnector, crtc_locator

    locate = crtc_locator(card, connector, crtc)
    if not isinstance(locate, ConfigfsConnector) or connector != locate.connector:
        return CrtcReader.open(card, crtc_id=crtc, connector=connector, locate=locate), None
    found = locate()  # the mapping says which card and CRTC
    if found is None:
        raise DeviceStateError(f"{connector} has no DRM connector: VKMS device {locate.device!r} is not enabled",
                               hint="`vkmsremote status` shows it; `vkmsremote up` enables it")
    reader = CrtcReader.open(found.card_path, crtc_id=found.crtc_id, desktop_name=found.desktop_name, locate=locate)
    return reader, found


def _multi_source(args: argparse.Namespace) -> FrameSource:
    """``--connector A,B,...``: one desktop with a screen per connector (vkmsremote.capture.multi)."""
    from vkmsremote.capture.crtc import CrtcReader
    from vkmsremote.capture.multi import MultiSource

    names = [n.strip() for n in args.connector.split(",")]
    if len(set(names)) != len(names) or not all(names):
        raise UsageError(f"--connector {args.connector!r}: name each connector once")
    readers: list[FrameSource] = []
    try:
        for name in names:  # configfs names (XR-0,XR-1) through the mapping, or DRM names/ids on --card
            readers.append(_open_reader(args.card, int(name) if name.isdigit() else name, None)[0])
        return MultiSource(readers, names)
    except BaseException:
        for r in readers:
            assert isinstance(r, CrtcReader)
            r.close_sync()
        raise


def _output_of(reader: CrtcReader, connector: int | str | None) -> str | None:
    """The DRM name (Virtual-N, the compositor's output name) of the connector ``reader`` serves: the one
    asked for, else the one routed to its CRTC."""
    from vkmsremote.drm.resources import Resources

    res = Resources.fetch(reader.card, probe=False)
    if connector is not None:
        return res.connector(connector).name
    routed = [c.name for c in res.connectors if res.crtc_of(c) == reader.crtc_id]
    return routed[0] if len(routed) == 1 else None


async def _close_source(source: FrameSource) -> None:
    """Close the source and undo what its resizer changed in the desktop (modes added to X, ...)."""
    await source.close()
    undo = getattr(getattr(source, "resizer", None), "undo", None)
    if undo is not None:
        undo()


SOURCES["pattern"] = _pattern_source
SOURCES["crtc"] = _crtc_source
XWD_SCHEME = "xwd:"
"""--source xwd:PATH: an X server's screen file, e.g. Xvfb -fbdir's (vkmsremote.capture.xwd)."""


def _source_option(text: str) -> str:
    if text not in SOURCES and not text.startswith(XWD_SCHEME):
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(sorted(SOURCES))}, xwd:PATH)")
    return text


def _source(args: argparse.Namespace) -> FrameSource:
    if args.source.startswith(XWD_SCHEME):
        from vkmsremote.capture.xwd import source

        return source(args.source)
    return SOURCES[args.source](args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vkmsremote serve``."""
    plain_help = parser.format_help

    def format_help() -> str:  # H.264's availability is looked up for --help only (PyAV is slow to import)
        from vkmsremote.rfb.encodings.h264 import describe

        parser.epilog = ("Encodings: Raw, RRE, Hextile, Zlib, Tight (JPEG), ZRLE; CopyRect from detected scrolling "
                         f"and moves; {describe()}.")
        return plain_help()

    parser.format_help = format_help  # type: ignore[method-assign]
    src = parser.add_argument_group("what to serve")
    src.add_argument("--source", default="pattern", type=_source_option, metavar="{crtc,pattern,xwd:PATH}",
                     help="pattern: an animated test picture (default); crtc: what a DRM CRTC scans out; "
                     "xwd:PATH: an X server's screen file (Xvfb -fbdir DIR: DIR/Xvfb_screen0)")
    src.add_argument("--size", type=size, default=(1920, 1080), metavar="WxH",
                     help="pattern: picture size (default 1920x1080)")
    src.add_argument("--fps", type=float, default=30.0, help="pattern: frames per second (default 30)")
    src.add_argument("--full-motion", action="store_true", help="pattern: change every pixel every frame")
    src.add_argument("--card", default="/dev/dri/card0", help="crtc: DRM card (default /dev/dri/card0)")
    src.add_argument("--connector", help="crtc: connector whose CRTC to serve: a configfs name (XR-0: the card is found "
                     "through the mapping, and found again if the device is disabled and enabled or made anew), "
                     "or a DRM name (e.g. Virtual-1) or id on --card; several, comma-separated (XR-0,XR-1 or "
                     "Virtual-1,Virtual-2): one desktop with a screen per connector, side by side (view only for now)")
    src.add_argument("--crtc", type=int, help="crtc: CRTC id (default: the connector's, or the only one)")
    src.add_argument("--input", choices=("none", "uinput"),
                     help="where keyboard and pointer go (default: uinput for crtc, none for pattern)")
    from vkmsremote.desktop.binding import add_pointer_output_argument

    add_pointer_output_argument(src)
    net = parser.add_argument_group("network and security")
    add_listen_arguments(net, port_help="TCP port")
    add_security_arguments(net)


# --- options -> server parts ----------------------------------------------------------------------------------


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


def policy_from_args(args: argparse.Namespace) -> SecurityPolicy:
    """The security policy of ``serve``'s and ``up``'s options (reads the password files now)."""
    from vkmsremote.server.app import security_policy

    password = _password(args)
    if password is not None and len(password.encode()) > 8:
        log.warning("VNC authentication uses only the first 8 bytes of the password")
    view_only_password = _view_only_password(args, password)
    types = [t for t in args.security.split(",") if t.strip()] if args.security else None
    return security_policy(password=password, username=args.username, types=types,
                           tls_cert=args.tls_cert, tls_key=args.tls_key, view_only_password=view_only_password)


def uinput_sink_factory(devices: UinputDevices, source: object = None, binding: Binding | None = None) -> SinkFactory:
    """A SinkFactory giving each client its own UinputSink over ``devices`` (one shared pair of uinput
    devices). The pointer maps into the connector's place in what the compositor's absolute pointer spans:
    with a ``binding`` that follows a Wayland layout (KWin, GNOME Shell), its output's rectangle in the
    layout; else, with a ``source`` that knows its placement (a CrtcReader), the connector's place in the
    compositor's framebuffer (several outputs in one X screen). A source that can be woken is woken by
    input, which is usually followed by a change on screen."""
    from vkmsremote.input import UinputSink, area_of
    from vkmsremote.server.input import WakingSink

    placement = binding.placement if binding is not None and binding.layout is not None else \
        getattr(source, "placement", None)
    area = (lambda: area_of(placement())) if callable(placement) else None
    wake = getattr(source, "wake", None)

    def factory(width: int, height: int) -> InputSink:
        sink = UinputSink(devices, width, height, area_source=area)
        return WakingSink(sink, wake) if callable(wake) else sink

    return factory


def vnc_server(source: FrameSource, sink: InputSink | SinkFactory | None, policy: SecurityPolicy,
               args: argparse.Namespace) -> VncServer:
    """The VncServer of the shared options, on the socket systemd passed if the process was
    socket-activated (service/activation.py), else on --listen and --port."""
    from vkmsremote.server.app import VncServer
    from vkmsremote.service.activation import take_vnc_socket

    return VncServer(source, sink, host=args.listen, port=args.port, policy=policy, view_only=args.view_only,
                     always_shared=args.always_shared, insecure_listen=args.insecure_listen,
                     listen_socket=take_vnc_socket())


@dataclass(frozen=True, slots=True)
class WebListener:
    """What the noVNC listener next to the VNC server needs: its port and, for https, a TLS context and the
    certificate's SHA-256 fingerprint (printed, so a user can compare it with what the browser shows)."""

    port: int
    ssl: ssl.SSLContext | None = None
    config: WebConfig | None = None
    fingerprint: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, config: WebConfig | None = None) -> WebListener | None:
        """None without --web. https when a certificate is given (--tls-cert), when listening off loopback
        (noVNC 1.4+ and WebCodecs need a secure context: off localhost that is https), or with --web-https;
        without --tls-cert the self-signed certificate under the TLS directory is used (made once).
        Reads the certificate files now (before privileges are dropped)."""
        if args.web is None:
            return None
        from vkmsremote.server.app import resolves_to_loopback
        from vkmsremote.server.tls import ensure_certificate, fingerprint, server_context

        if not (args.tls_cert or getattr(args, "web_https", False) or not resolves_to_loopback(args.listen)):
            return cls(args.web, None, config)
        cert, key = ensure_certificate(args.tls_cert, args.tls_key)
        return cls(args.web, server_context(cert, key), config, fingerprint(cert))

    def describe(self, url: str) -> str:
        """The line that tells a user where the page is (and, for https, which certificate to accept)."""
        if self.fingerprint is None:
            return f"open {url} in a browser"
        return (f"open {url} in a browser; the certificate's SHA-256 fingerprint is {self.fingerprint} "
                "(compare it with what the browser shows before you accept it)")


async def start_web(server: VncServer, web: WebListener) -> WebServer:
    """The noVNC page and RFB-over-WebSocket listener next to ``server`` (same host, same sessions), on the
    socket systemd passed with FileDescriptorName=web if any. The page is titled after the served connector."""
    from dataclasses import replace

    from vkmsremote.service.activation import take_web_socket
    from vkmsremote.web import WebConfig, start_web_server

    config = replace(web.config or WebConfig(), title=server.source.desktop_name or "vkmsremote")
    web_server = await start_web_server(server.handle_client, server.host, web.port, ssl=web.ssl, config=config,
                                        sock=take_web_socket())
    log.info("web client: %s", web_server.bundle.describe())
    return web_server


def _clipboard_watch_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("the desktop's clipboard is no longer watched: %r", task.exception())


async def run_until_stopped(server: VncServer, *, web: WebListener | None = None,
                            started: Callable[[VncServer, WebServer | None], None] | None = None,
                            stopping: Callable[[], None] | None = None,
                            cleanup: Callable[[], Awaitable[None]] | None = None) -> None:
    """Listen (VNC, and the web page with ``web``), call ``started(server, web_server)``, and serve until
    SIGINT or SIGTERM (then ``stopping()``), or until the frame source fails (its exception is raised).
    Then close the listeners and sessions, and await ``cleanup()`` (e.g. closing the source)."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    web_server = None
    try:
        await server.start()
        if web is not None:
            web_server = await start_web(server, web)
            log.info("noVNC at %s", web_server.url)
        if started is not None:
            started(server, web_server)
        await server.serve_forever()
    except asyncio.CancelledError:
        if stopping is not None:
            stopping()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if web_server is not None:
            await web_server.close()
        await server.close()
        if cleanup is not None:
            await cleanup()


# --- the `vkmsremote serve` command -----------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """``vkmsremote serve``: serve until interrupted. Errors are raised as VkmsRemoteError subclasses."""
    import asyncio

    from vkmsremote.input import UinputDevices
    from vkmsremote.server.app import rsa_key_announcement
    from vkmsremote.server.input import NullSink

    policy = policy_from_args(args)
    web = WebListener.from_args(args)
    input_kind = args.input or ("uinput" if args.source == "crtc" and "," not in (args.connector or "") else "none")
    if input_kind == "uinput" and "," in (args.connector or ""):
        raise UsageError("--input uinput with several connectors is not supported yet",
                         hint="serve them with --input none, or one connector per server")
    source = _source(args)
    sink: InputSink | SinkFactory = NullSink()
    devices: UinputDevices | None = None
    binding = None
    try:
        if input_kind == "uinput" and not args.view_only:
            if args.source == "crtc":  # bound before the devices exist (Weston reads WL_OUTPUT when one is added)
                from vkmsremote.desktop.binding import bind_pointer

                named = args.connector if args.connector and not args.connector.isdigit() else None
                binding = bind_pointer(args.pointer_output, args.card, named,
                                       lambda text: print(f"vkmsremote: {text}", flush=True))
            devices = UinputDevices.open("vkmsremote", follow_layout=True)
            sink = uinput_sink_factory(devices, source, binding)
            from vkmsremote.input.clipboard import open_desktop_clipboard

            devices.clipboard, clipboard_state = open_desktop_clipboard()
            print(f"vkmsremote: {clipboard_state}", flush=True)
        server = vnc_server(source, sink, policy, args)
        watchers: list[asyncio.Task[None]] = []  # kept referenced while the loop runs

        def started(server: VncServer, web_server: WebServer | None) -> None:
            if devices is not None and devices.clipboard is not None:  # the desktop's copies go to the clients
                task = asyncio.get_running_loop().create_task(devices.clipboard.watch(server.send_clipboard))
                task.add_done_callback(_clipboard_watch_ended)
                watchers.append(task)
            print(f"vkmsremote: serving {source.desktop_name} on {server.host} port {server.port}", flush=True)
            if web_server is not None:
                assert web is not None
                print(f"vkmsremote: {web.describe(web_server.url)}", flush=True)
            if (announcement := rsa_key_announcement(policy)) is not None:
                print(f"vkmsremote: {announcement}", flush=True)

        asyncio.run(run_until_stopped(server, web=web, started=started, cleanup=lambda: _close_source(source)))
    finally:
        if devices is not None:
            devices.close()
        if binding is not None:
            binding.undo()
    return 0

"""The VNC (RFB) server's library API: :class:`VncServer` serves one frame source to many clients, and
:func:`security_policy` turns user-level choices into a SecurityPolicy.

What builds a running server from command-line options (``vkmsremote serve`` and ``up``) is
vkmsremote.service.serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vkmsremote.errors import UsageError
from vkmsremote.rfb.auth import SecurityPolicy, plain_checker
from vkmsremote.rfb.constants import RSA_AES_TYPES, SecurityType, VeNCryptSubtype
from vkmsremote.server import DEFAULT_PORT
from vkmsremote.server.blacklist import Blacklist
from vkmsremote.server.hub import Hub
from vkmsremote.server.input import InputSink, NullSink
from vkmsremote.server.rsakey import KEY_NAME as RSA_KEY_NAME
from vkmsremote.server.rsakey import ensure_rsa_key
from vkmsremote.server.session import Session, SessionContext, SessionRecord
from vkmsremote.server.tls import default_tls_dir, ensure_certificate, server_context

if TYPE_CHECKING:
    from vkmsremote.frame import FrameSource

log = logging.getLogger(__name__)

SECURITY_NAMES: dict[str, SecurityType | VeNCryptSubtype] = {
    "none": SecurityType.NONE,
    "vncauth": SecurityType.VNC_AUTH,
    "ra2": SecurityType.RA2,
    "ra2ne": SecurityType.RA2NE,
    "ra2_256": SecurityType.RA2_256,
    "ra2ne_256": SecurityType.RA2NE_256,
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
    rsa_key: Path | None = None,
) -> SecurityPolicy:
    """A SecurityPolicy from user-level choices.

    Without ``types``: when a password is set, the RSA-AES types first (RA2_256, RA2, then the "ne" ones that
    encrypt only the handshake, which noVNC speaks), VeNCrypt X509Vnc (plus X509Plain when a username is
    given) and plain VNC auth; else None. VeNCrypt types make (or load) the TLS certificate; RSA-AES types
    the server's RSA key (``rsa_key``, default ``rsa-key.pem`` next to the certificate, made 0600 on first use). ``view_only_password``:
    a second password VNC authentication (and X509Plain, for the same username) accepts with view-only rights.
    """
    if view_only_password is not None and not password:
        raise UsageError("a view-only password needs a full-access password as well",
                         hint="give --password-file (or $VKMSREMOTE_PASSWORD) too")
    if view_only_password is not None and view_only_password == password:
        raise UsageError("the view-only password is the full-access password: every client would get full access",
                         hint="choose a different view-only password")
    if types is None:
        types = (["ra2_256", "ra2", "ra2ne_256", "ra2ne", "x509vnc", *(["x509plain"] if username else []), "vncauth"]
                 if password else ["none"])
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
    server_key = None
    if any(t in RSA_AES_TYPES for t in rfb_types) and (password or username):
        server_key = ensure_rsa_key(rsa_key or (tls_dir or default_tls_dir()) / RSA_KEY_NAME)
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
        rsa_key=server_key,
    )


def rsa_key_announcement(policy: SecurityPolicy) -> str | None:
    """The line to print at start when RSA-AES is offered: the key's fingerprint as viewers show it."""
    if policy.rsa_key is None:
        return None
    return f"RSA-AES key fingerprint {policy.rsa_key.fingerprint} ({policy.rsa_key.path})"


def resolves_to_loopback(host: str) -> bool:
    """True if every address ``host`` names (an address, or a name resolved now) is a loopback address.
    The rule for listening without authentication (compare vkmsremote.web.server.is_loopback_name, which
    checks a Host header without resolving it)."""
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
    port (e.g. the one systemd passed: vkmsremote.service.activation).
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
        self._listen_socket = listen_socket
        if listen_socket is not None:
            host = str(listen_socket.getsockname()[0])
        if not resolves_to_loopback(host) and not policy.authenticates and not insecure_listen:
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

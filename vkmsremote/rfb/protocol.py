"""The server side of RFB as a state machine without I/O (RFC 6143, rfbproto/rfbproto).

Theory of operation
-------------------
A :class:`ServerConnection` is fed the bytes a client sent (``receive_data``; ``b""`` means the client
closed its side) and hands out what it understood, one event at a time (``next_event``), until it needs
more bytes (it then returns the :data:`NEED_DATA` sentinel). Messages the application sends are turned
into bytes by ``send(message)``; bytes the connection produces on its own during the handshake (the
version string, the security type list, a challenge, the TLS handshake) wait in an outbox that
``data_to_send()`` empties. ``send`` empties the outbox first, so the wire order is always the order in
which things happened. Nothing here touches a socket or asyncio.

The handshake (RFC 6143 7.1-7.3) runs by itself, driven by the :class:`SecurityPolicy`::

    VERSION --3.3--> (server picks None or VNC auth) ------------------+
    VERSION --3.7/3.8--> SECURITY_TYPE --None--------------------------+
                          |--VNC auth--> VNC_AUTH ---------------------+
                          |--RA2*--> RA2_CLIENT_KEY -> RA2_CLIENT_RANDOM -> RA2_CLIENT_HASH -> RA2_CREDENTIALS --+
                          +--VeNCrypt--> VENCRYPT_VERSION -> VENCRYPT_SUBTYPE -> TLS_HANDSHAKE
                                           TLS_HANDSHAKE --X509None--> +
                                           TLS_HANDSHAKE --X509Vnc---> VNC_AUTH
                                           TLS_HANDSHAKE --X509Plain-> PLAIN_AUTH
    (+) --> CLIENT_INIT --ClientInit event--> SERVER_INIT --send(ServerInit)--> NORMAL

VNC authentication (plain or X509Vnc) accepts the policy's full-access password and, if one is set, its
view-only password (tried second, as TigerVNC does); X509Plain likewise for its username. Which one the
client proved is :attr:`AuthenticationSucceeded.view_only`: the application must then take no input from
that client. A failed authentication produces SecurityResult "failed" (with a reason string from 3.8 on), the event
:class:`AuthenticationFailed`, and the state CLOSED: the application writes ``data_to_send()`` and closes.
A connection created with ``refuse=reason`` (a blacklisted address) fails right after the version
exchange with that reason (:class:`ConnectionRefused`). In NORMAL every client message is parsed into its
dataclass from :mod:`vkmsremote.rfb.messages`; any byte stream either parses or raises
:class:`~vkmsremote.errors.RemoteProtocolError` (the client's fault; the connection is dead: state ERROR).
Using the connection wrongly (``send`` in the wrong state, a state change the diagram does not have, asking
for events after an error) raises :class:`~vkmsremote.errors.LocalProtocolError`: our fault. The diagram is
also data, :data:`TRANSITIONS`, and every state change is checked against it. What may be sent *when* once
in NORMAL (requests, continuous updates, fences) is :mod:`vkmsremote.rfb.flow`'s business.

TLS (VeNCrypt X509*) runs inside this object through ``ssl.MemoryBIO``: after the subtype is agreed, all
incoming bytes go through the TLS object and all outgoing bytes come out encrypted; the application
notices nothing.

RSA-AES (RA2, RA2ne, RA2_256, RA2ne_256; :mod:`vkmsremote.rfb.rsaaes`) likewise: once the session keys
are known, incoming bytes wait in a record buffer and are opened one AES-EAX record at a time, only when
the parser needs more bytes; a record that fails authentication raises RemoteProtocolError before any of
its bytes reach the parse buffer. Outgoing bytes are sealed into records. In RA2/RA2_256 this lasts for
the whole connection; in the "ne" types it ends after the credentials record (bytes left over in that
record are a protocol error), and SecurityResult and everything after it are plain.
"""

from __future__ import annotations

import hmac
import os
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Final, cast

from vkmsremote.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from vkmsremote.rfb import rsaaes
from vkmsremote.rfb.auth import CHALLENGE_SIZE, Access, SecurityPolicy, vnc_auth_access
from vkmsremote.rfb.constants import (
    NO_SECURITY_TYPES,
    RSA_AES_TYPES,
    Encoding,
    SecurityResult,
    SecurityType,
    VeNCryptSubtype,
    VeNCryptSubtypeResult,
    VeNCryptVersionResult,
)
from vkmsremote.rfb.messages import (
    CLIENT_MESSAGES,
    MAX_EXTENDED_CLIPBOARD,
    MAX_PLAIN_CREDENTIAL,
    ClientCutText,
    ClientEvent,
    ExtendedClipboard,
    ProtocolVersion,
    ServerInit,
    ServerMessageValue,
    SetEncodings,
    SetPixelFormat,
)

DEFAULT_MAX_CUT_TEXT = 1 << 20
"""ClientCutText longer than this is read and thrown away (as TigerVNC's MaxCutText does)."""

SERVER_VERSION: Final = ProtocolVersion(3, 8)
VENCRYPT_VERSION: Final = (0, 2)

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U8_PAIR = struct.Struct(">BB")
_U32_PAIR = struct.Struct(">II")


class State(Enum):
    VERSION = auto()
    SECURITY_TYPE = auto()
    VNC_AUTH = auto()
    VENCRYPT_VERSION = auto()
    VENCRYPT_SUBTYPE = auto()
    TLS_HANDSHAKE = auto()
    PLAIN_AUTH = auto()
    RA2_CLIENT_KEY = auto()
    RA2_CLIENT_RANDOM = auto()
    RA2_CLIENT_HASH = auto()
    RA2_CREDENTIALS = auto()
    CLIENT_INIT = auto()
    SERVER_INIT = auto()
    NORMAL = auto()
    CLOSED = auto()
    ERROR = auto()


TRANSITIONS: Final[dict[State, frozenset[State]]] = {
    State.VERSION: frozenset({State.SECURITY_TYPE, State.VNC_AUTH, State.CLIENT_INIT, State.CLOSED}),  # 3.3: no list
    State.SECURITY_TYPE: frozenset({State.VNC_AUTH, State.VENCRYPT_VERSION, State.RA2_CLIENT_KEY, State.CLIENT_INIT}),
    State.VNC_AUTH: frozenset({State.CLIENT_INIT, State.CLOSED}),
    State.VENCRYPT_VERSION: frozenset({State.VENCRYPT_SUBTYPE}),
    State.VENCRYPT_SUBTYPE: frozenset({State.TLS_HANDSHAKE}),
    State.TLS_HANDSHAKE: frozenset({State.VNC_AUTH, State.PLAIN_AUTH, State.CLIENT_INIT}),
    State.PLAIN_AUTH: frozenset({State.CLIENT_INIT, State.CLOSED}),
    State.RA2_CLIENT_KEY: frozenset({State.RA2_CLIENT_RANDOM}),
    State.RA2_CLIENT_RANDOM: frozenset({State.RA2_CLIENT_HASH}),
    State.RA2_CLIENT_HASH: frozenset({State.RA2_CREDENTIALS}),
    State.RA2_CREDENTIALS: frozenset({State.CLIENT_INIT, State.CLOSED}),
    State.CLIENT_INIT: frozenset({State.SERVER_INIT}),
    State.SERVER_INIT: frozenset({State.NORMAL}),
    State.NORMAL: frozenset(),
    State.CLOSED: frozenset(),
}
"""The handshake diagram above as data: every state a handler may move to (besides CLOSED when the client
hangs up and ERROR on a protocol error, which any state may reach). Any other move is our bug."""


class NeedData:
    """Type of the :data:`NEED_DATA` sentinel: feed more bytes with ``receive_data``."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


# --- handshake events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthenticationSucceeded:
    """The security handshake is over and the client is in; ClientInit comes next.

    ``view_only``: the client proved the view-only password, not the full-access one; it may look but
    must not send input (keys, pointer, clipboard) or change the desktop."""

    version: tuple[int, int]
    security_type: SecurityType
    vencrypt_subtype: VeNCryptSubtype | None
    username: str | None
    view_only: bool = False


@dataclass(frozen=True, slots=True)
class AuthenticationFailed:
    """The client failed to authenticate; SecurityResult 'failed' is in data_to_send(). Close after it."""

    reason: str
    security_type: SecurityType
    vencrypt_subtype: VeNCryptSubtype | None
    username: str | None


@dataclass(frozen=True, slots=True)
class ConnectionRefused:
    """The server refused the client before any authentication (``refuse=``, or no usable security type)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ClientInit:
    """RFC 6143 7.3.1: answer with ``send(ServerInit(...))``."""

    shared: bool


@dataclass(frozen=True, slots=True)
class ClientCutTextDiscarded:
    """A ClientCutText longer than ``max_cut_text`` arrived; its bytes are being skipped."""

    length: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The client closed the connection (or it is over after a refusal or failed authentication)."""


Event = (AuthenticationSucceeded | AuthenticationFailed | ConnectionRefused | ClientInit
         | ClientCutTextDiscarded | ConnectionClosed | ClientEvent)

_CONTINUE: Final = object()
"""Internal: a handler advanced the state without producing an event; run the next handler."""

_NO_TLS_SUBTYPES: Final = frozenset[VeNCryptSubtype]()


class ServerConnection:
    """One client connection, server side. See the module docstring."""

    def __init__(
        self,
        policy: SecurityPolicy,
        *,
        refuse: str | None = None,
        max_cut_text: int = DEFAULT_MAX_CUT_TEXT,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._policy = policy
        self._refuse = refuse
        self._max_cut_text = max_cut_text
        self._random_bytes = random_bytes
        self._state = State.VERSION
        self._buf = bytearray()
        self._pos = 0
        self._outbox = bytearray()
        self._eof = False
        self._skip = 0
        self._challenge = b""
        self._tls: ssl.SSLObject | None = None
        self._tls_in: ssl.MemoryBIO | None = None
        self._tls_out: ssl.MemoryBIO | None = None
        self._tls_ready = False
        self._records: rsaaes.RecordLayer | None = None
        self._records_in: bytearray | None = None
        """Ciphertext not yet opened, while incoming bytes are AES-EAX records (RSA-AES)."""
        self._records_out = False
        self._ra2: rsaaes.Variant | None = None
        self._ra2_client_key_bytes = b""
        self._ra2_server_random = b""
        self.version: tuple[int, int] | None = None
        self.security_type: SecurityType | None = None
        self.vencrypt_subtype: VeNCryptSubtype | None = None
        self.username: str | None = None
        self.view_only = False
        """True once the client authenticated with the view-only password."""
        self.extended_clipboard = False
        """The client's last SetEncodings listed the Extended Clipboard pseudo-encoding: a ClientCutText with
        a negative length is then an :class:`ExtendedClipboard` (else a protocol error)."""
        self._handlers: dict[State, Callable[[], object]] = {
            State.VERSION: self._on_version,
            State.SECURITY_TYPE: self._on_security_type,
            State.VNC_AUTH: self._on_vnc_auth,
            State.VENCRYPT_VERSION: self._on_vencrypt_version,
            State.VENCRYPT_SUBTYPE: self._on_vencrypt_subtype,
            State.TLS_HANDSHAKE: self._on_tls_handshake,
            State.PLAIN_AUTH: self._on_plain_auth,
            State.RA2_CLIENT_KEY: self._on_ra2_client_key,
            State.RA2_CLIENT_RANDOM: self._on_ra2_client_random,
            State.RA2_CLIENT_HASH: self._on_ra2_client_hash,
            State.RA2_CREDENTIALS: self._on_ra2_credentials,
            State.CLIENT_INIT: self._on_client_init,
            State.SERVER_INIT: self._on_server_init,
            State.NORMAL: self._on_normal,
            State.CLOSED: self._on_closed,
        }
        self._emit(SERVER_VERSION.to_bytes())

    # --- public API -------------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def cipher(self) -> str | None:
        """What protects the stream after authentication: the TLS version, 'AES-128-EAX'/'AES-256-EAX' for
        RA2/RA2_256, else None (also for the RA2ne types, whose encryption ends with the handshake)."""
        if self._tls is not None and self._tls_ready:
            return self._tls.version()
        if self._ra2 is not None and self._ra2.all_encrypted and self._records is not None:
            return f"AES-{self._ra2.session_key_size * 8}-EAX"
        return None

    @property
    def tls_version(self) -> str | None:
        """The negotiated TLS version (e.g. 'TLSv1.3') once VeNCrypt's TLS is up, else None."""
        return self._tls.version() if self._tls is not None and self._tls_ready else None

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` when the client closed its side."""
        if not data:
            self._eof = True
            if self._tls_in is not None:
                self._tls_in.write_eof()
            return
        if self._tls_in is not None:
            self._tls_in.write(data)
        elif self._records_in is not None:
            self._records_in += data
        else:
            self._buf += data

    def next_event(self) -> Event | NeedData:
        """The next thing the client did, or NEED_DATA. Raises ProtocolError on a malformed stream."""
        if self._state is State.ERROR:
            raise LocalProtocolError("the connection already failed with a protocol error")
        try:
            self._pump_tls()
            while True:
                result = self._handlers[self._state]()
                if result is _CONTINUE:
                    continue
                if result is NEED_DATA and self._open_record():
                    continue
                if result is NEED_DATA and self._eof and self._state is not State.SERVER_INIT:
                    if self._records_in:
                        raise RemoteProtocolError(
                            f"the client closed the connection within an RSA-AES record ({len(self._records_in)} "
                            "bytes of it arrived)")
                    self._state = State.CLOSED
                    return ConnectionClosed()
                return cast("Event | NeedData", result)
        except ProtocolError:
            self._state = State.ERROR
            raise

    def send(self, message: ServerMessageValue) -> bytes:
        """The bytes to write for ``message`` (preceded by anything still in the outbox)."""
        if isinstance(message, ServerInit):
            if self._state is not State.SERVER_INIT:
                raise LocalProtocolError(f"ServerInit can only be sent after ClientInit, not in state {self._state.name}")
            self._goto(State.NORMAL)
        elif self._state is not State.NORMAL:
            raise LocalProtocolError(f"{type(message).__name__} cannot be sent in state {self._state.name}")
        data = message.to_bytes()
        if self._records_out:
            assert self._records is not None
            self._outbox += self._records.seal(data)
            return self.data_to_send()
        if self._tls is None:
            if not self._outbox:
                return data
            self._outbox += data
            return self.data_to_send()
        self._tls.write(data)
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        """Bytes the connection produced on its own (handshake), to be written before anything else."""
        if self._tls_out is not None and self._tls_out.pending:
            self._outbox += self._tls_out.read()
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    def _goto(self, state: State) -> None:
        if state not in TRANSITIONS[self._state]:
            raise LocalProtocolError(f"no transition from {self._state.name} to {state.name}")
        self._state = state

    # --- buffer helpers ---------------------------------------------------------------------------------

    def _available(self) -> int:
        return len(self._buf) - self._pos

    def _peek(self, n: int) -> bytes | None:
        if self._available() < n:
            return None
        return bytes(self._buf[self._pos:self._pos + n])

    def _take(self, n: int) -> bytes | None:
        data = self._peek(n)
        if data is not None:
            self._advance(n)
        return data

    def _advance(self, n: int) -> None:
        self._pos += n
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0

    def _emit(self, data: bytes) -> None:
        if self._records_out:
            assert self._records is not None
            self._outbox += self._records.seal(data)
        elif self._tls is not None and self._tls_ready:
            self._tls.write(data)
        else:
            self._outbox += data

    def _emit_reason(self, reason: str) -> None:
        data = reason.encode("utf-8")
        self._emit(_U32.pack(len(data)) + data)

    # --- TLS ------------------------------------------------------------------------------------------

    def _start_tls(self) -> None:
        ctx = self._policy.tls_context
        assert ctx is not None  # SecurityPolicy guarantees it when an X509 subtype is offered
        self._tls_in, self._tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._tls_in, self._tls_out, server_side=True)
        leftover = bytes(self._buf[self._pos:])  # the client may already have sent its ClientHello
        self._buf.clear()
        self._pos = 0
        if leftover:
            self._tls_in.write(leftover)
        if self._eof:
            self._tls_in.write_eof()

    def _pump_tls(self) -> None:
        """Move decrypted bytes from the TLS object into the parse buffer."""
        if self._tls is None or not self._tls_ready:
            return
        while True:
            try:
                chunk = self._tls.read(65536)
            except ssl.SSLWantReadError:
                return
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True
                return
            except ssl.SSLError as e:
                raise RemoteProtocolError(f"TLS error: {e}") from e
            if not chunk:
                self._eof = True
                return
            self._buf += chunk

    # --- handshake handlers -------------------------------------------------------------------------------

    def _on_version(self) -> object:
        data = self._take(ProtocolVersion.SIZE)
        if data is None:
            return NEED_DATA
        v = ProtocolVersion.from_bytes(data)
        if v.major != 3:
            raise RemoteProtocolError(f"client asked for RFB {v.major}.{v.minor}; this server speaks 3.3, 3.7 and 3.8")
        # rfbproto "ProtocolVersion": 3.5 (and any other unknown 3.x) is to be treated as 3.3.
        self.version = (3, v.minor) if v.minor in (7, 8) else (3, 3)
        if self._refuse is not None:
            return self._refuse_connection(self._refuse)
        if self.version == (3, 3):
            # RFC 6143 7.1.2: in 3.3 the server picks the type; only None and VNC auth exist there.
            usable = [t for t in self._policy.types if t in (SecurityType.NONE, SecurityType.VNC_AUTH)]
            if not usable:
                return self._refuse_connection("this server requires VeNCrypt (TLS), which needs RFB 3.7 or later")
            self._emit(_U32.pack(usable[0]))
            return self._begin_security(usable[0])
        self._emit(_U8.pack(len(self._policy.types)) + bytes(self._policy.types))
        self._goto(State.SECURITY_TYPE)
        return _CONTINUE

    def _refuse_connection(self, reason: str) -> ConnectionRefused:
        if self.version == (3, 3):
            self._emit(_U32.pack(SecurityType.INVALID))
        else:
            self._emit(_U8.pack(NO_SECURITY_TYPES))  # a reason follows
        self._emit_reason(reason)
        self._goto(State.CLOSED)
        return ConnectionRefused(reason)

    def _on_security_type(self) -> object:
        data = self._take(1)
        if data is None:
            return NEED_DATA
        chosen = data[0]
        if chosen not in self._policy.types:
            reason = f"security type {chosen} was not offered"
            self._emit(_U32.pack(SecurityResult.FAILED))
            if self.version == (3, 8):
                self._emit_reason(reason)
            raise RemoteProtocolError(f"client chose {reason}")
        return self._begin_security(SecurityType(chosen))

    def _begin_security(self, security_type: SecurityType) -> object:
        self.security_type = security_type
        if security_type == SecurityType.NONE:
            # RFC 6143 7.2.1: SecurityResult only from 3.8 on for None.
            return self._auth_succeeded(send_result=self.version == (3, 8))
        if security_type == SecurityType.VNC_AUTH:
            return self._send_challenge()
        if security_type in RSA_AES_TYPES:
            assert self._policy.rsa_key is not None  # SecurityPolicy guarantees it
            self._ra2 = rsaaes.VARIANTS[security_type]
            self._emit(self._policy.rsa_key.public_bytes)
            self._goto(State.RA2_CLIENT_KEY)
            return _CONTINUE
        self._emit(_U8_PAIR.pack(*VENCRYPT_VERSION))
        self._goto(State.VENCRYPT_VERSION)
        return _CONTINUE

    def _send_challenge(self) -> object:
        self._challenge = self._random_bytes(CHALLENGE_SIZE)
        if len(self._challenge) != CHALLENGE_SIZE:
            raise ValueError("random_bytes returned the wrong number of bytes")
        self._emit(self._challenge)
        self._goto(State.VNC_AUTH)
        return _CONTINUE

    def _on_vnc_auth(self) -> object:
        response = self._take(CHALLENGE_SIZE)
        if response is None:
            return NEED_DATA
        access = vnc_auth_access(self._policy.vnc_password, self._policy.vnc_view_only_password, self._challenge,
                                 response)
        if access is None:
            return self._auth_failed("Authentication failed")
        return self._auth_succeeded(send_result=True, view_only=access is Access.VIEW_ONLY)

    # --- RSA-AES (rfbproto "RSA-AES Security Type"; the byte layout is in vkmsremote.rfb.rsaaes) ------------

    def _open_record(self) -> bool:
        """Open one more AES-EAX record into the parse buffer; False if no complete record is waiting."""
        if self._records_in is None or self._records is None:
            return False
        plaintext = self._records.open(self._records_in)
        if plaintext is None:
            return False
        self._buf += plaintext
        return True

    def _on_ra2_client_key(self) -> object:
        head = self._peek(4)
        if head is None:
            return NEED_DATA
        data = self._take(4 + rsaaes.public_key_size(head))
        if data is None:
            return NEED_DATA
        client_key = rsaaes.decode_public_key(data)
        self._ra2_client_key_bytes = data
        assert self._ra2 is not None
        self._ra2_server_random = self._random_bytes(self._ra2.random_size)
        if len(self._ra2_server_random) != self._ra2.random_size:
            raise ValueError("random_bytes returned the wrong number of bytes")
        encrypted = rsaaes.encrypt_random(client_key, self._ra2_server_random)
        self._emit(_U16.pack(len(encrypted)) + encrypted)
        self._goto(State.RA2_CLIENT_RANDOM)
        return _CONTINUE

    def _on_ra2_client_random(self) -> object:
        assert self._ra2 is not None and self._policy.rsa_key is not None
        server_key = self._policy.rsa_key
        size = (server_key.private.key_size + 7) // 8
        head = self._peek(2)
        if head is None:
            return NEED_DATA
        (length,) = _U16.unpack(head)
        if length != size:
            raise RemoteProtocolError(f"RSA-AES: the client's encrypted random has {length} bytes, the server key {size}")
        data = self._take(2 + length)
        if data is None:
            return NEED_DATA
        client_random = rsaaes.decrypt_random(server_key.private, data[2:], self._ra2.random_size)
        client_key, server_key_bytes = rsaaes.session_keys(self._ra2, self._ra2_server_random, client_random)
        self._records = rsaaes.RecordLayer(recv_key=client_key, send_key=server_key_bytes)
        self._records_in = bytearray(self._buf[self._pos:])  # the client may already have sent its hash
        self._buf.clear()
        self._pos = 0
        self._records_out = True
        self._ra2_server_random = b""
        self._emit(self._ra2.digest(server_key.public_bytes + self._ra2_client_key_bytes))  # one record
        self._goto(State.RA2_CLIENT_HASH)
        return _CONTINUE

    def _on_ra2_client_hash(self) -> object:
        assert self._ra2 is not None and self._policy.rsa_key is not None
        received = self._take(self._ra2.hash_size)
        if received is None:
            return NEED_DATA
        expected = self._ra2.digest(self._ra2_client_key_bytes + self._policy.rsa_key.public_bytes)
        if not hmac.compare_digest(received, expected):
            raise RemoteProtocolError("RSA-AES: the client's hash of the public keys is wrong (a key was replaced?)")
        self._emit(_U8.pack(rsaaes.subtype_for(self._policy.ra2_username_required)))  # one record
        self._goto(State.RA2_CREDENTIALS)
        return _CONTINUE

    def _on_ra2_credentials(self) -> object:
        assert self._ra2 is not None
        head = self._peek(min(self._available(), rsaaes.MAX_CREDENTIALS))
        length = rsaaes.credentials_length(head or b"")
        if length is None:
            return NEED_DATA
        data = self._take(length)
        if data is None:
            return NEED_DATA
        parsed = rsaaes.parse_credentials(data)
        assert parsed is not None
        user, password = parsed
        if self._policy.ra2_username_required:
            self.username = user
        if not self._ra2.all_encrypted:
            # RA2ne: the record layer ends with the credentials; SecurityResult and the rest are plain.
            if self._available():
                raise RemoteProtocolError(f"RSA-AES: {self._available()} bytes follow the credentials in their record")
            assert self._records_in is not None
            self._buf = self._records_in
            self._pos = 0
            self._records_in = None
            self._records_out = False
        access = self._policy.ra2_access(user, password)
        if access is None:
            return self._auth_failed("Authentication failed")
        return self._auth_succeeded(send_result=True, view_only=access is Access.VIEW_ONLY)

    def _on_vencrypt_version(self) -> object:
        data = self._take(2)
        if data is None:
            return NEED_DATA
        major, minor = _U8_PAIR.unpack(data)
        if (major, minor) != VENCRYPT_VERSION:
            self._emit(_U8.pack(VeNCryptVersionResult.UNSUPPORTED))
            raise RemoteProtocolError(f"client asked for VeNCrypt {major}.{minor}; this server speaks only 0.2")
        subtypes = self._policy.vencrypt_subtypes
        self._emit(_U8.pack(VeNCryptVersionResult.OK) + _U8.pack(len(subtypes)) + struct.pack(f">{len(subtypes)}I", *subtypes))
        self._goto(State.VENCRYPT_SUBTYPE)
        return _CONTINUE

    def _on_vencrypt_subtype(self) -> object:
        data = self._take(4)
        if data is None:
            return NEED_DATA
        (chosen,) = _U32.unpack(data)
        if chosen not in self._policy.vencrypt_subtypes:
            raise RemoteProtocolError(f"client chose VeNCrypt subtype {chosen}, which was not offered")
        self.vencrypt_subtype = VeNCryptSubtype(chosen)
        self._emit(_U8.pack(VeNCryptSubtypeResult.ACCEPTED))  # the TLS handshake follows
        self._start_tls()
        self._goto(State.TLS_HANDSHAKE)
        return _CONTINUE

    def _on_tls_handshake(self) -> object:
        assert self._tls is not None and self._tls_out is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            if self._tls_out.pending:
                self._outbox += self._tls_out.read()
            return NEED_DATA
        except ssl.SSLError as e:
            if self._tls_out.pending:  # the alert, so the client learns why
                self._outbox += self._tls_out.read()
            raise RemoteProtocolError(f"TLS handshake failed: {e.reason or e}") from e
        if self._tls_out.pending:
            self._outbox += self._tls_out.read()
        self._tls_ready = True
        self._pump_tls()
        if self.vencrypt_subtype == VeNCryptSubtype.X509_VNC:
            return self._send_challenge()
        if self.vencrypt_subtype == VeNCryptSubtype.X509_PLAIN:
            self._goto(State.PLAIN_AUTH)
            return _CONTINUE
        return self._auth_succeeded(send_result=True)

    def _on_plain_auth(self) -> object:
        head = self._peek(_U32_PAIR.size)
        if head is None:
            return NEED_DATA
        user_len, pass_len = _U32_PAIR.unpack(head)
        if user_len > MAX_PLAIN_CREDENTIAL or pass_len > MAX_PLAIN_CREDENTIAL:
            raise RemoteProtocolError(
                f"Plain credentials of {user_len}/{pass_len} bytes exceed the {MAX_PLAIN_CREDENTIAL}-byte cap"
            )
        data = self._take(_U32_PAIR.size + user_len + pass_len)
        if data is None:
            return NEED_DATA
        user = data[8:8 + user_len].decode("utf-8", errors="replace")
        password = data[8 + user_len:].decode("utf-8", errors="replace")
        self.username = user
        check, check_view_only = self._policy.check_plain, self._policy.check_plain_view_only
        if check is not None and check(user, password):
            return self._auth_succeeded(send_result=True)
        if check_view_only is not None and check_view_only(user, password):
            return self._auth_succeeded(send_result=True, view_only=True)
        return self._auth_failed("Authentication failed")

    def _auth_succeeded(self, *, send_result: bool, view_only: bool = False) -> AuthenticationSucceeded:
        if send_result:
            self._emit(_U32.pack(SecurityResult.OK))
        self._goto(State.CLIENT_INIT)
        self.view_only = view_only
        assert self.version is not None and self.security_type is not None
        return AuthenticationSucceeded(self.version, self.security_type, self.vencrypt_subtype, self.username,
                                       view_only)

    def _auth_failed(self, reason: str) -> AuthenticationFailed:
        self._emit(_U32.pack(SecurityResult.FAILED))
        if self.version == (3, 8):  # RFC 6143 7.1.3: the reason string exists from 3.8 on
            self._emit_reason(reason)
        self._goto(State.CLOSED)
        assert self.security_type is not None
        return AuthenticationFailed(reason, self.security_type, self.vencrypt_subtype, self.username)

    def _on_client_init(self) -> object:
        data = self._take(1)
        if data is None:
            return NEED_DATA
        self._goto(State.SERVER_INIT)
        return ClientInit(shared=data[0] != 0)

    def _on_server_init(self) -> object:
        return NEED_DATA  # waiting for the application to send ServerInit

    def _on_closed(self) -> object:
        return ConnectionClosed()

    # --- normal operation (RFC 6143 7.5) ------------------------------------------------------------------

    def _on_normal(self) -> object:
        if self._skip:
            n = min(self._skip, self._available())
            self._advance(n)
            self._skip -= n
            if self._skip:
                return NEED_DATA
        head = self._peek(1)
        if head is None:
            return NEED_DATA
        cls = CLIENT_MESSAGES.get(head[0])
        if cls is None:
            raise RemoteProtocolError(f"unknown client message type {head[0]}")
        header = self._peek(cls.HEADER.size)
        if header is None:
            return NEED_DATA
        if cls is ClientCutText and self.extended_clipboard and ClientCutText.is_extended(header):
            return self._extended_clipboard(header)
        tail = cls.tail_length(header)
        if cls is ClientCutText and tail > self._max_cut_text:
            self._advance(cls.HEADER.size)
            self._skip = tail
            return ClientCutTextDiscarded(tail)
        data = self._take(cls.HEADER.size + tail)
        if data is None:
            return NEED_DATA
        message = cls.from_bytes(data)
        if isinstance(message, SetPixelFormat):
            message.pixel_format.validate()
        elif isinstance(message, SetEncodings):
            self.extended_clipboard = Encoding.EXTENDED_CLIPBOARD in message.encodings
        return message

    def _extended_clipboard(self, header: bytes) -> object:
        """A ClientCutText with a negative length, once the client announced the Extended Clipboard."""
        (length,) = struct.unpack_from(">i", header, 4)
        tail = -length
        if tail > MAX_EXTENDED_CLIPBOARD:
            self._advance(len(header))
            self._skip = tail
            return ClientCutTextDiscarded(tail)
        data = self._take(len(header) + tail)
        if data is None:
            return NEED_DATA
        return ExtendedClipboard.from_bytes(data)

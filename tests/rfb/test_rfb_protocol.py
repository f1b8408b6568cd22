"""The handshake state machine: versions 3.3/3.7/3.8, security None, VNC authentication, VeNCrypt with
real TLS (an in-memory ``ssl`` client against the protocol's MemoryBIO TLS), refusals, failures, EOF,
and a hypothesis property: any byte stream parses or raises ProtocolError, in bounded time and memory."""

from __future__ import annotations

import ssl
import struct
import time
import tracemalloc
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vncdotool import rfb as vncdotool_rfb  # an independent VNC-auth DES implementation

from vkmsremote.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from vkmsremote.rfb.auth import SecurityPolicy, plain_checker
from vkmsremote.rfb.constants import SecurityType, VeNCryptSubtype
from vkmsremote.rfb.messages import KeyEvent, ServerInit
from vkmsremote.rfb.pixelformat import NATIVE
from vkmsremote.rfb.protocol import (
    NEED_DATA,
    TRANSITIONS,
    AuthenticationFailed,
    AuthenticationSucceeded,
    ClientInit,
    ConnectionClosed,
    ConnectionRefused,
    ServerConnection,
    State,
)
from vkmsremote.server.tls import generate_self_signed, server_context

CHALLENGE = bytes(range(16))
PASSWORD = b"s3cret"


def fixed_random(n: int) -> bytes:
    return CHALLENGE[:n]


def events(conn: ServerConnection) -> list[object]:
    out = []
    while (ev := conn.next_event()) is not NEED_DATA:
        out.append(ev)
        if isinstance(ev, ConnectionClosed):
            break
    return out


def vncdotool_response(password: bytes, challenge: bytes) -> bytes:
    """What vncdotool's client would answer (its own key bit-reversal and DES)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vncdotool uses the deprecated TripleDES location
        key = vncdotool_rfb._vnc_des(password.decode())
        return vncdotool_rfb.des_encrypt(key, challenge[:8]) + vncdotool_rfb.des_encrypt(key, challenge[8:])


def server(policy: SecurityPolicy | None = None, **kwargs: object) -> ServerConnection:
    conn = ServerConnection(policy or SecurityPolicy(), random_bytes=fixed_random, **kwargs)  # type: ignore[arg-type]
    assert conn.data_to_send() == b"RFB 003.008\n"  # ProtocolVersion, 12 bytes
    return conn


def finish_init(conn: ServerConnection) -> None:
    conn.receive_data(b"\x00")  # ClientInit: shared-flag 0
    assert events(conn) == [ClientInit(shared=False)]
    out = conn.send(ServerInit(8, 4, NATIVE, "n"))
    assert out[:4] == bytes([0, 8, 0, 4])  # width 8, height 4
    assert conn.state is State.NORMAL


def test_38_none() -> None:
    conn = server()
    conn.receive_data(b"RFB 003.008\n")
    assert events(conn) == []
    assert conn.data_to_send() == bytes([1, 1])  # number-of-security-types 1, type 1 None
    conn.receive_data(bytes([1]))               # client chooses None
    assert events(conn) == [AuthenticationSucceeded((3, 8), SecurityType.NONE, None, None)]
    assert conn.data_to_send() == bytes([0, 0, 0, 0])  # SecurityResult OK (3.8 sends it for None too)
    finish_init(conn)


def test_37_none_has_no_security_result() -> None:
    conn = server()
    conn.receive_data(b"RFB 003.007\n")
    conn.receive_data(bytes([1]))  # None
    assert events(conn) == [AuthenticationSucceeded((3, 7), SecurityType.NONE, None, None)]
    assert conn.data_to_send() == bytes([1, 1])  # only the type list: no SecurityResult before 3.8
    finish_init(conn)


@pytest.mark.parametrize("version", [b"RFB 003.003\n", b"RFB 003.005\n", b"RFB 003.006\n", b"RFB 003.889\n"])
def test_33_and_unknown_minor_versions(version: bytes) -> None:
    conn = server(SecurityPolicy(types=(SecurityType.VNC_AUTH, SecurityType.NONE), vnc_password=PASSWORD))
    conn.receive_data(version)
    assert events(conn) == []
    # RFC 6143 7.1.2 (3.3): the server picks: U32 security-type 2, then the 16-byte challenge
    assert conn.data_to_send() == bytes([0, 0, 0, 2]) + CHALLENGE
    conn.receive_data(vncdotool_response(PASSWORD, CHALLENGE))
    assert events(conn) == [AuthenticationSucceeded((3, 3), SecurityType.VNC_AUTH, None, None)]
    assert conn.data_to_send() == bytes([0, 0, 0, 0])  # SecurityResult OK
    finish_init(conn)


def test_33_none_goes_straight_to_init() -> None:
    conn = server()
    conn.receive_data(b"RFB 003.003\n")
    assert events(conn) == [AuthenticationSucceeded((3, 3), SecurityType.NONE, None, None)]
    assert conn.data_to_send() == bytes([0, 0, 0, 1])  # security-type 1, no SecurityResult
    finish_init(conn)


@pytest.mark.parametrize("version", [b"RFB 004.001\n", b"RFB 003.8\n\n\n", b"GET / HTTP/1.1\r\n"])
def test_bad_versions(version: bytes) -> None:
    conn = server()
    conn.receive_data(version)
    with pytest.raises(ProtocolError):
        conn.next_event()


def test_vnc_auth_38_success_and_pipelined_client_init() -> None:
    conn = server(SecurityPolicy(types=(SecurityType.VNC_AUTH,), vnc_password=PASSWORD))
    conn.receive_data(b"RFB 003.008\n" + bytes([2]))  # version and choice in one segment
    assert events(conn) == []
    assert conn.data_to_send() == bytes([1, 2]) + CHALLENGE
    # the response, ClientInit and a KeyEvent all at once
    conn.receive_data(vncdotool_response(PASSWORD, CHALLENGE) + b"\x01")
    assert events(conn) == [AuthenticationSucceeded((3, 8), SecurityType.VNC_AUTH, None, None),
                            ClientInit(shared=True)]
    conn.receive_data(KeyEvent(True, 0x61).to_bytes())
    assert events(conn) == []  # nothing is parsed before ServerInit has been sent
    out = conn.send(ServerInit(8, 4, NATIVE, "n"))
    assert out.startswith(bytes([0, 0, 0, 0]))  # the SecurityResult still in the outbox comes first
    assert events(conn) == [KeyEvent(True, 0x61)]


@pytest.mark.parametrize(("version", "tail"), [
    (b"RFB 003.008\n", bytes([0, 0, 0, 21]) + b"Authentication failed"),  # 3.8: reason-length, reason
    (b"RFB 003.007\n", b""),                                              # 3.7: no reason
])
def test_vnc_auth_wrong_password(version: bytes, tail: bytes) -> None:
    conn = server(SecurityPolicy(types=(SecurityType.VNC_AUTH,), vnc_password=PASSWORD))
    conn.receive_data(version + bytes([2]))
    events(conn)
    conn.data_to_send()
    conn.receive_data(vncdotool_response(b"wrong", CHALLENGE))
    evs = events(conn)
    assert isinstance(evs[0], AuthenticationFailed) and evs[0].reason == "Authentication failed"
    assert evs[1:] == [ConnectionClosed()]
    assert conn.data_to_send() == bytes([0, 0, 0, 1]) + tail  # SecurityResult failed
    assert conn.state is State.CLOSED
    assert conn.next_event() == ConnectionClosed()


def test_only_eight_password_bytes_count() -> None:
    conn = server(SecurityPolicy(types=(SecurityType.VNC_AUTH,), vnc_password=b"12345678-and-more"))
    conn.receive_data(b"RFB 003.008\n" + bytes([2]))
    events(conn)
    conn.receive_data(vncdotool_response(b"12345678", CHALLENGE))
    assert isinstance(events(conn)[0], AuthenticationSucceeded)


@pytest.mark.parametrize(("version", "expected"), [
    (b"RFB 003.008\n", bytes([0, 0, 0, 0, 3]) + b"go!"),     # 0 security types, reason-length 3, reason
    (b"RFB 003.003\n", bytes([0, 0, 0, 0, 0, 0, 0, 3]) + b"go!"),  # U32 type 0 (failed), reason
])
def test_refused_connection(version: bytes, expected: bytes) -> None:
    conn = server(refuse="go!")
    conn.receive_data(version)
    assert events(conn) == [ConnectionRefused("go!"), ConnectionClosed()]
    assert conn.data_to_send() == expected


def test_33_client_cannot_use_vencrypt_only_server(tls_context: ssl.SSLContext) -> None:
    policy = SecurityPolicy(types=(SecurityType.VENCRYPT,), vencrypt_subtypes=(VeNCryptSubtype.X509_NONE,),
                            tls_context=tls_context)
    conn = server(policy)
    conn.receive_data(b"RFB 003.003\n")
    ev, closed = events(conn)
    assert isinstance(ev, ConnectionRefused) and "3.7" in ev.reason
    assert closed == ConnectionClosed()


def test_unoffered_security_type() -> None:
    conn = server()
    conn.receive_data(b"RFB 003.008\n" + bytes([2]))  # VNC auth, but only None was offered
    with pytest.raises(ProtocolError, match="security type 2 was not offered"):
        conn.next_event()
    out = conn.data_to_send()
    assert out[2:6] == bytes([0, 0, 0, 1])  # after the type list: SecurityResult failed, then the reason
    assert b"not offered" in out


def test_eof_during_handshake() -> None:
    conn = server()
    conn.receive_data(b"RFB 00")
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()


def test_send_before_handshake_is_refused() -> None:
    conn = server()
    with pytest.raises(LocalProtocolError, match="ServerInit can only be sent after ClientInit"):  # our mistake
        conn.send(ServerInit(1, 1, NATIVE, ""))


def test_client_mistakes_are_remote_errors() -> None:
    conn = server()
    conn.receive_data(b"HTTP/1.1 200")  # not a ProtocolVersion
    with pytest.raises(RemoteProtocolError, match="not an RFB ProtocolVersion"):
        conn.next_event()
    assert conn.state is State.ERROR
    with pytest.raises(LocalProtocolError, match="already failed"):  # asking again is our mistake
        conn.next_event()


def test_handshake_transition_table() -> None:
    """Every state has an entry; a move the table does not list is refused as our bug."""
    assert set(TRANSITIONS) == set(State) - {State.ERROR}
    assert all(State.ERROR not in targets for targets in TRANSITIONS.values())
    conn = server()
    with pytest.raises(LocalProtocolError, match="no transition from VERSION to NORMAL"):
        conn._goto(State.NORMAL)
    assert conn.state is State.VERSION


# --- VeNCrypt with real TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    generate_self_signed(d / "cert.pem", d / "key.pem")
    assert (d / "key.pem").stat().st_mode & 0o777 == 0o600
    return d / "cert.pem", d / "key.pem"


@pytest.fixture(scope="module")
def tls_context(cert_files: tuple[Path, Path]) -> ssl.SSLContext:
    return server_context(*cert_files)


class TlsClient:
    """The client side of TLS over memory BIOs, verifying the server certificate like a real client."""

    def __init__(self, cafile: Path) -> None:
        ctx = ssl.create_default_context(cafile=str(cafile))
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def handshake(self, conn: ServerConnection) -> list[object]:
        seen: list[object] = []
        for _ in range(10):
            try:
                self.obj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            conn.receive_data(self.outgoing.read())
            seen += events(conn)
            self.incoming.write(conn.data_to_send())
            if done:
                return seen
        raise AssertionError("TLS handshake did not finish")

    def send(self, conn: ServerConnection, data: bytes) -> list[object]:
        self.obj.write(data)
        conn.receive_data(self.outgoing.read())
        evs = events(conn)
        self.incoming.write(conn.data_to_send())
        return evs

    def read(self) -> bytes:
        out = b""
        while True:
            try:
                out += self.obj.read(65536)
            except ssl.SSLWantReadError:
                return out


def vencrypt_until_tls(conn: ServerConnection, subtype: int) -> None:
    conn.receive_data(b"RFB 003.008\n" + bytes([19]))  # choose VeNCrypt
    assert events(conn) == []
    out = conn.data_to_send()
    assert out[-2:] == bytes([0, 2])  # VeNCrypt version 0.2
    conn.receive_data(bytes([0, 2]))  # client: 0.2 as well
    assert events(conn) == []
    out = conn.data_to_send()
    assert out[0] == 0  # ack: version accepted
    count = out[1]
    offered = struct.unpack(f">{count}I", out[2:2 + 4 * count])
    assert subtype in offered
    conn.receive_data(struct.pack(">I", subtype))  # selected subtype
    assert events(conn) == []
    assert conn.data_to_send() == bytes([1])  # 1: go ahead with TLS


def test_vencrypt_x509none(tls_context: ssl.SSLContext, cert_files: tuple[Path, Path]) -> None:
    policy = SecurityPolicy(types=(SecurityType.VENCRYPT,), vencrypt_subtypes=(VeNCryptSubtype.X509_NONE,),
                            tls_context=tls_context)
    conn = server(policy)
    vencrypt_until_tls(conn, VeNCryptSubtype.X509_NONE)
    client = TlsClient(cert_files[0])
    evs = client.handshake(conn)
    assert evs == [AuthenticationSucceeded((3, 8), SecurityType.VENCRYPT, VeNCryptSubtype.X509_NONE, None)]
    assert conn.tls_version in ("TLSv1.2", "TLSv1.3")
    assert client.read() == bytes([0, 0, 0, 0])  # SecurityResult OK, inside TLS
    assert client.send(conn, b"\x01") == [ClientInit(shared=True)]
    client.incoming.write(conn.send(ServerInit(8, 4, NATIVE, "tls")))
    assert client.read()[:4] == bytes([0, 8, 0, 4])
    assert client.send(conn, KeyEvent(False, 0x62).to_bytes()) == [KeyEvent(False, 0x62)]


def test_vencrypt_x509vnc(tls_context: ssl.SSLContext, cert_files: tuple[Path, Path]) -> None:
    policy = SecurityPolicy(types=(SecurityType.VENCRYPT,), vencrypt_subtypes=(VeNCryptSubtype.X509_VNC,),
                            tls_context=tls_context, vnc_password=PASSWORD)
    for password, ok in ((PASSWORD, True), (b"nope", False)):
        conn = server(policy)
        vencrypt_until_tls(conn, VeNCryptSubtype.X509_VNC)
        client = TlsClient(cert_files[0])
        assert client.handshake(conn) == []
        assert client.read() == CHALLENGE  # the challenge travels inside TLS
        ev, *rest = client.send(conn, vncdotool_response(password, CHALLENGE))
        assert rest == ([] if ok else [ConnectionClosed()])
        if ok:
            assert isinstance(ev, AuthenticationSucceeded) and ev.vencrypt_subtype == VeNCryptSubtype.X509_VNC
            assert client.read() == bytes([0, 0, 0, 0])
        else:
            assert isinstance(ev, AuthenticationFailed)
            assert client.read() == bytes([0, 0, 0, 1, 0, 0, 0, 21]) + b"Authentication failed"


def test_vencrypt_x509plain(tls_context: ssl.SSLContext, cert_files: tuple[Path, Path]) -> None:
    policy = SecurityPolicy(types=(SecurityType.VENCRYPT,), vencrypt_subtypes=(VeNCryptSubtype.X509_PLAIN,),
                            tls_context=tls_context, check_plain=plain_checker("anna", "long password ok"))
    for user, pw, ok in (("anna", "long password ok", True), ("anna", "long password", False)):
        conn = server(policy)
        vencrypt_until_tls(conn, VeNCryptSubtype.X509_PLAIN)
        client = TlsClient(cert_files[0])
        client.handshake(conn)
        u, p = user.encode(), pw.encode()
        # username-length, password-length, username, password -- sent in two pieces
        blob = struct.pack(">II", len(u), len(p)) + u + p
        assert client.send(conn, blob[:6]) == []
        ev, *rest = client.send(conn, blob[6:])
        assert rest == ([] if ok else [ConnectionClosed()])
        assert isinstance(ev, AuthenticationSucceeded if ok else AuthenticationFailed)
        assert ev.username == "anna"
        assert client.read()[:4] == bytes([0, 0, 0, 0 if ok else 1])


def test_vencrypt_plain_lengths_are_capped(tls_context: ssl.SSLContext, cert_files: tuple[Path, Path]) -> None:
    policy = SecurityPolicy(types=(SecurityType.VENCRYPT,), vencrypt_subtypes=(VeNCryptSubtype.X509_PLAIN,),
                            tls_context=tls_context, check_plain=plain_checker("a", "b"))
    conn = server(policy)
    vencrypt_until_tls(conn, VeNCryptSubtype.X509_PLAIN)
    client = TlsClient(cert_files[0])
    client.handshake(conn)
    with pytest.raises(ProtocolError, match="exceed"):
        client.send(conn, struct.pack(">II", 4, 0x7FFF_FFFF))


def test_vencrypt_wrong_version_and_subtype(tls_context: ssl.SSLContext) -> None:
    policy = SecurityPolicy(types=(SecurityType.VENCRYPT,), vencrypt_subtypes=(VeNCryptSubtype.X509_NONE,),
                            tls_context=tls_context)
    conn = server(policy)
    conn.receive_data(b"RFB 003.008\n" + bytes([19, 0, 1]))  # VeNCrypt 0.1
    with pytest.raises(ProtocolError, match=r"0\.1"):
        conn.next_event()
    assert conn.data_to_send().endswith(bytes([1]))  # non-zero ack: refused
    conn = server(policy)
    conn.receive_data(b"RFB 003.008\n" + bytes([19, 0, 2]) + struct.pack(">I", VeNCryptSubtype.X509_VNC))
    with pytest.raises(ProtocolError, match="261"):
        conn.next_event()


def test_tls_garbage_is_a_protocol_error(tls_context: ssl.SSLContext) -> None:
    policy = SecurityPolicy(types=(SecurityType.VENCRYPT,), vencrypt_subtypes=(VeNCryptSubtype.X509_NONE,),
                            tls_context=tls_context)
    conn = server(policy)
    vencrypt_until_tls(conn, VeNCryptSubtype.X509_NONE)
    conn.receive_data(b"this is not a TLS ClientHello at all")
    with pytest.raises(ProtocolError, match="TLS handshake failed"):
        conn.next_event()


# --- fuzzing ---------------------------------------------------------------------------------------------


def _normal() -> ServerConnection:
    conn = server()
    conn.receive_data(b"RFB 003.008\n\x01\x01")
    events(conn)
    conn.send(ServerInit(64, 48, NATIVE, "fuzz"))
    return conn


def _feed(conn: ServerConnection, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
            while (ev := conn.next_event()) is not NEED_DATA:
                if isinstance(ev, ConnectionClosed):
                    return
    except ProtocolError:
        assert conn.state is State.ERROR


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=8), st.booleans())
def test_any_bytes_parse_or_raise_protocol_error(chunks: list[bytes], after_handshake: bool) -> None:
    conn = _normal() if after_handshake else server()
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        _feed(conn, chunks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 1 << 20  # never more than a MiB for a few hundred input bytes


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([0, 2, 3, 4, 5, 6, 150, 248, 251, 255]), st.binary(max_size=64))
def test_known_message_types_with_random_bodies(msg_type: int, body: bytes) -> None:
    conn = _normal()
    _feed(conn, [bytes([msg_type]) + body, b""])

"""RSA-AES security types (RA2 = 5, RA2ne = 6, RA2_256 = 129, RA2ne_256 = 130; rfbproto "RSA-AES Security
Type"): AES-EAX against the EAX paper's vectors, a client written here from the spec (``cryptography``'s RSA,
SHA, CMAC and AES-CTR, its own EAX; nothing of the server's RSA-AES code) through the sans-IO connection and
over TCP to the real server with pixel-exact frames, every hostile input the issue names (key lengths, a
tampered tag, a truncated or replayed record, a wrong hash, bytes after the RA2ne credentials), the wrong
password counted by the blacklist, the server key on disk (0600, fingerprint as TigerVNC shows it), and the
start-up line of ``vkmsremote serve``."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from clients.support import ControlledSource, ServerThread, serving
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from vkmsremote.errors import RemoteProtocolError, UsageError
from vkmsremote.rfb import eax as server_eax
from vkmsremote.rfb.auth import SecurityPolicy, obfuscate_vnc_password, plain_checker
from vkmsremote.rfb.constants import SecurityType
from vkmsremote.rfb.encodings import samples
from vkmsremote.rfb.messages import ServerInit
from vkmsremote.rfb.pixelformat import NATIVE
from vkmsremote.rfb.protocol import (
    NEED_DATA,
    AuthenticationFailed,
    AuthenticationSucceeded,
    ClientInit,
    ConnectionClosed,
    ServerConnection,
    State,
)
from vkmsremote.rfb.rsaaes import ServerKey
from vkmsremote.server.app import rsa_key_announcement, security_policy
from vkmsremote.server.blacklist import Blacklist
from vkmsremote.server.rsakey import ensure_rsa_key

RA2_TYPES = (SecurityType.RA2, SecurityType.RA2NE, SecurityType.RA2_256, SecurityType.RA2NE_256)
W, H = 80, 48
IMG = samples.photo_like(H, W)
PASSWORD, VIEW_PASSWORD = b"a whole long passphrase", b"only to look"

# --- the EAX paper's test vectors (Bellare, Rogaway, Wagner 2004, appendix): msg, key, nonce, header, ct||tag

EAX_VECTORS = [
    ("", "233952dee4d5ed5f9b9c6d6ff80ff478", "62ec67f9c3a4a407fcb2a8c49031a8b3", "6bfb914fd07eae6b",
     "e037830e8389f27b025a2d6527e79d01"),
    ("f7fb", "91945d3f4dcbee0bf45ef52255f095a4", "becaf043b0a23d843194ba972c66debd", "fa3bfd4806eb53fa",
     "19dd5c4c9331049d0bdab0277408f67967e5"),
    ("1a47cb4933", "01f74ad64077f2e704c0f60ada3dd523", "70c3db4f0d26368400a10ed05d2bff5e", "234a3463c1264ac6",
     "d851d5bae03a59f238a23e39199dc9266626c40f80"),
    ("481c9e39b1", "d07cf6cbb7f313bdde66b727afd3c5e8", "8408dfff3c1a2b1292dc199e46b7d617", "33cce2eabff5a79d",
     "632a9d131ad4c168a4225d8e1ff755939974a7bede"),
    ("40d0c07da5e4", "35b6d0580005bbc12b0587124557d2c2", "fdb6b06676eedc5c61d74276e1f8e816", "aeb96eaebe2970e9",
     "071dfe16c675cb0677e536f73afe6a14b74ee49844dd"),
    ("4de3b35c3fc039245bd1fb7d", "bd8e6e11475e60b268784c38c62feb22", "6eac5c93072d8e8513f750935e46da1b",
     "d4482d1ca78dce0f", "835bb4f15d743e350e728414abb8644fd6ccb86947c5e10590210a4f"),
    ("8b0a79306c9ce7ed99dae4f87f8dd61636", "7c77d6e813bed5ac98baa417477a2e7d", "1a8c98dcd73d38393b2bf1569deefc19",
     "65d2017990d62528", "02083e3979da014812f59f11d52630da30137327d10649b0aa6e1c181db617d7f2"),
    ("1bda122bce8a8dbaf1877d962b8592dd2d56", "5fff20cafab119ca2fc73549e20f5b0d", "dde59b97d722156d4d9aff2bc7559826",
     "54b9f04e6a09189a", "2ec47b2c4954a489afc7ba4897edcdae8cc33b60450599bd02c96382902aef7f832a"),
    ("6cf36720872b8513f6eab1a8a44438d5ef11", "a4a4782bcffd3ec5e7ef6d8c34a56123", "b781fcf2f75fa5a8de97a9ca48e522ec",
     "899a175897561d7e", "0de18fd0fdd91e7af19f1d8ee8733938b1e8e7f6d2231618102fdb7fe55ff1991700"),
    ("ca40d7446e545ffaed3bd12a740a659ffbbb3ceab7", "8395fcf1e95bebd697bd010bc766aac3",
     "22e7add93cfc6393c57ec0b3c17d6b44", "126735fcc320d25a",
     "cb8920f87a6c75cff39627b56e3ed197c552d295a7cfc46afc253b4652b1af3795b124ab6e"),
]


def spec_eax(key: bytes, nonce: bytes, header: bytes, data: bytes, *, decrypt: bool = False) -> bytes:
    """The test's own EAX (the paper's definition, from CMAC and CTR): encrypt returns ct||tag; decrypt takes
    ct||tag and returns the plaintext or raises ValueError."""
    def omac(t: int, x: bytes) -> bytes:
        mac = CMAC(algorithms.AES(key))
        mac.update(bytes(15) + bytes([t]) + x)
        return mac.finalize()

    def ctr(iv: bytes, x: bytes) -> bytes:
        e = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
        return e.update(x) + e.finalize()

    n, h = omac(0, nonce), omac(1, header)
    if decrypt:
        ct, tag = data[:-16], data[-16:]
        if bytes(a ^ b ^ c for a, b, c in zip(n, h, omac(2, ct), strict=True)) != tag:
            raise ValueError("tag")
        return ctr(n, ct)
    ct = ctr(n, data)
    return ct + bytes(a ^ b ^ c for a, b, c in zip(n, h, omac(2, ct), strict=True))


@pytest.mark.parametrize("vector", EAX_VECTORS, ids=[f"paper-{i + 1}" for i in range(len(EAX_VECTORS))])
def test_eax_matches_the_paper(vector: tuple[str, str, str, str, str]) -> None:
    msg, key, nonce, header, expected = (bytes.fromhex(v) for v in vector)
    ct, tag = server_eax.AesEax(key).encrypt(nonce, header, msg)
    assert ct + tag == expected
    assert spec_eax(key, nonce, header, msg) == expected  # the test client's EAX is right too
    assert server_eax.AesEax(key).decrypt(nonce, header, ct, tag) == msg


def test_eax_refuses_any_changed_bit() -> None:
    _, key, nonce, header, expected = (bytes.fromhex(v) for v in EAX_VECTORS[6])
    box = server_eax.AesEax(key)
    ct, tag = expected[:-16], expected[-16:]
    for i in range(len(expected) * 8):
        bad = bytearray(expected)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(server_eax.InvalidTag):
            box.decrypt(nonce, header, bytes(bad[:-16]), bytes(bad[-16:]))
    with pytest.raises(server_eax.InvalidTag):
        box.decrypt(bytes(16), header, ct, tag)  # another nonce: a replayed record
    with pytest.raises(server_eax.InvalidTag):
        box.decrypt(nonce, header + b"\0", ct, tag)
    with pytest.raises(server_eax.InvalidTag):
        box.decrypt(nonce, header, ct, tag[:15])
    with pytest.raises(ValueError, match="16, 24 or 32"):
        server_eax.AesEax(bytes(15))
    big = os.urandom(70_000)  # CTR over many blocks, AES-256
    ct, tag = server_eax.AesEax(bytes(range(32))).encrypt(nonce, b"", big)
    assert spec_eax(bytes(range(32)), nonce, b"", ct + tag, decrypt=True) == big


# --- a client written from the spec ------------------------------------------------------------------------


@cache
def client_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@cache
def server_key() -> ServerKey:
    return ServerKey.generate()


def wire_key(key: rsa.RSAPublicKey, bits: int | None = None) -> bytes:
    """rfbproto: U32 key-length, modulus and public exponent in ceil(key-length/8) bytes each."""
    bits = bits or key.key_size
    size = (bits + 7) // 8
    nums = key.public_numbers()
    mask = (1 << (8 * size)) - 1  # a key "shorter" than the modulus: cut (the server must refuse it)
    return struct.pack(">I", bits) + (nums.n & mask).to_bytes(size, "big") + nums.e.to_bytes(size, "big")


class Transport:
    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def recv(self, n: int) -> bytes:
        raise NotImplementedError


class SansIo(Transport):
    """The client talks to a ServerConnection directly; ``split`` feeds it one byte at a time."""

    def __init__(self, conn: ServerConnection, *, split: bool = False) -> None:
        self.conn, self.split = conn, split
        self.inbox = bytearray()
        self.events: list[object] = []

    def send(self, data: bytes) -> None:
        for chunk in ([data[i:i + 1] for i in range(len(data))] if self.split else [data]):
            self.conn.receive_data(chunk)
            self.pump()

    def pump(self) -> None:
        while True:
            ev = self.conn.next_event()
            if ev is NEED_DATA:
                break
            self.events.append(ev)
            if isinstance(ev, ConnectionClosed):
                break
        self.inbox += self.conn.data_to_send()

    def recv(self, n: int) -> bytes:
        if len(self.inbox) < n:
            self.pump()
        assert len(self.inbox) >= n, f"the server sent {len(self.inbox)} bytes, the client waits for {n}"
        out = bytes(self.inbox[:n])
        del self.inbox[:n]
        return out


class Tcp(Transport):
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError(f"the server closed after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)


@dataclass
class Ra2Client:
    """The client side of rfbproto's RSA-AES types, step by step, with hooks to misbehave."""

    t: Transport
    security_type: SecurityType
    username: bytes = b""
    password: bytes = PASSWORD
    key_bits: int = 2048
    wire_bits: int | None = None
    tamper: Callable[[str, bytes], bytes] = lambda step, data: data
    """Called with each step's bytes just before they are sent (step names below); returns what is sent."""

    def __post_init__(self) -> None:
        self.big = self.security_type in (SecurityType.RA2_256, SecurityType.RA2NE_256)
        self.all_encrypted = self.security_type in (SecurityType.RA2, SecurityType.RA2_256)
        self.h = hashlib.sha256 if self.big else hashlib.sha1
        self.encrypting = False
        self.plain = bytearray()
        self.send_counter = self.recv_counter = 0
        self.subtype = 0

    def _send(self, step: str, data: bytes) -> None:
        self.t.send(self.tamper(step, data))

    def record(self, data: bytes) -> bytes:
        header = struct.pack(">H", len(data))
        out = header + spec_eax(self.ckey, self.send_counter.to_bytes(16, "little"), header, data)
        self.send_counter += 1
        return out

    def read(self, n: int) -> bytes:
        if not self.encrypting:
            return self.t.recv(n)
        while len(self.plain) < n:
            header = self.t.recv(2)
            (length,) = struct.unpack(">H", header)
            body = self.t.recv(length + 16)
            self.plain += spec_eax(self.skey, self.recv_counter.to_bytes(16, "little"), header, body, decrypt=True)
            self.recv_counter += 1
        out = bytes(self.plain[:n])
        del self.plain[:n]
        return out

    def write(self, step: str, data: bytes) -> None:
        self._send(step, self.record(data) if self.encrypting else data)

    def handshake(self) -> tuple[int, str]:
        """Through SecurityResult: (result, reason)."""
        assert self.t.recv(12) == b"RFB 003.008\n"
        self.t.send(b"RFB 003.008\n")
        (n,) = struct.unpack(">B", self.t.recv(1))
        offered = list(self.t.recv(n))
        assert self.security_type in offered
        self.offered = offered
        self._send("type", bytes([self.security_type]))
        # server key
        (sbits,) = struct.unpack(">I", self.t.recv(4))
        assert 1024 <= sbits <= 8192
        ssize = (sbits + 7) // 8
        sn, se = self.t.recv(ssize), self.t.recv(ssize)
        self.server_wire = struct.pack(">I", sbits) + sn + se
        self.server_public = rsa.RSAPublicNumbers(int.from_bytes(se, "big"), int.from_bytes(sn, "big")).public_key()
        # client key
        ck = client_key(self.key_bits)
        self.client_wire = wire_key(ck.public_key(), self.wire_bits)
        self._send("client-key", self.client_wire)
        # client random, then the server's
        size = 32 if self.big else 16
        client_random = os.urandom(size)
        encrypted = self.server_public.encrypt(client_random, padding.PKCS1v15())
        self._send("client-random", struct.pack(">H", len(encrypted)) + encrypted)
        (length,) = struct.unpack(">H", self.t.recv(2))
        assert length == (ck.key_size + 7) // 8
        server_random = ck.decrypt(self.t.recv(length), padding.PKCS1v15())
        assert len(server_random) == size
        # session keys
        self.ckey = self.h(server_random + client_random).digest()[:size]
        self.skey = self.h(client_random + server_random).digest()[:size]
        self.encrypting = True
        # hashes
        server_hash = self.read(self.h().digest_size)
        assert server_hash == self.h(self.server_wire + self.client_wire).digest(), "the server's hash is wrong"
        self.write("client-hash", self.h(self.client_wire + self.server_wire).digest())
        (self.subtype,) = self.read(1)
        assert self.subtype in (1, 2)
        user = self.username if self.subtype == 1 else b""
        self.write("credentials", bytes([len(user)]) + user + bytes([len(self.password)]) + self.password)
        if not self.all_encrypted:
            self.encrypting = False
            assert not self.plain
        (result,) = struct.unpack(">I", self.read(4))
        reason = ""
        if result:
            (rlen,) = struct.unpack(">I", self.read(4))
            reason = self.read(rlen).decode()
        return result, reason

    def client_init(self) -> tuple[int, int, str]:
        self.write("client-init", b"\1")
        w, h = struct.unpack(">HH", self.read(4))
        self.read(16)  # pixel format
        (nlen,) = struct.unpack(">I", self.read(4))
        return w, h, self.read(nlen).decode()

    def frame(self, w: int, h: int) -> np.ndarray:
        """Ask for the whole screen in Raw, 32 bpp little endian, R<<16 G<<8 B; returns (h, w, 3) BGR."""
        # SetPixelFormat: type 0, 3 padding, bpp 32, depth 24, little endian, true colour, maxima 255,
        # shifts R 16 G 8 B 0, 3 padding
        self.write("msg", b"\0\0\0\0" + struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0))
        self.write("msg", struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw only
        self.write("msg", struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))  # FramebufferUpdateRequest, not incremental
        fb = np.zeros((h, w, 4), dtype=np.uint8)
        covered = np.zeros((h, w), dtype=bool)
        while not covered.all():
            (kind,) = self.read(1)
            assert kind == 0, f"server message {kind}"
            (nrects,) = struct.unpack(">xH", self.read(3))
            for _ in range(nrects):
                x, y, rw, rh, enc = struct.unpack(">HHHHi", self.read(12))
                assert enc == 0
                fb[y:y + rh, x:x + rw] = np.frombuffer(self.read(rw * rh * 4), dtype=np.uint8).reshape(rh, rw, 4)
                covered[y:y + rh, x:x + rw] = True
        return fb[:, :, :3]


def policy(types: tuple[SecurityType, ...] = RA2_TYPES, *, username: str | None = None,
           view_only: bytes | None = None) -> SecurityPolicy:
    check = plain_checker(username, PASSWORD.decode()) if username else None
    view_check = plain_checker(username, view_only.decode()) if username and view_only else None
    return SecurityPolicy(types=types, vnc_password=PASSWORD, rsa_key=server_key(), check_plain=check,
                          vnc_view_only_password=None if username else view_only, check_plain_view_only=view_check)


def sans_io(security_type: SecurityType, *, split: bool = False, pol: SecurityPolicy | None = None,
            **kwargs: object) -> tuple[Ra2Client, SansIo]:
    conn = ServerConnection(pol or policy())
    t = SansIo(conn, split=split)
    return Ra2Client(t, security_type, **kwargs), t  # type: ignore[arg-type]


def server_init_over(client: Ra2Client, t: SansIo) -> None:
    """ClientInit from the client, ServerInit from the server: both through the right layer."""
    client._send("client-init", client.record(b"\1") if client.all_encrypted else b"\1")
    assert isinstance(t.events[-1], ClientInit)
    t.inbox += t.conn.send(ServerInit(W, H, NATIVE, "ra2-desk"))
    assert client.read(4) == struct.pack(">HH", W, H)
    client.read(16)
    (nlen,) = struct.unpack(">I", client.read(4))
    assert client.read(nlen) == b"ra2-desk"


# --- the sans-IO connection ------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte-at-a-time"])
@pytest.mark.parametrize("security_type", RA2_TYPES, ids=lambda t: t.name)
def test_handshake_with_the_spec_client(security_type: SecurityType, split: bool) -> None:
    client, t = sans_io(security_type, split=split)
    assert client.handshake() == (0, "")
    assert client.offered == list(RA2_TYPES) and client.subtype == 2  # password only: no username configured
    ok = [e for e in t.events if isinstance(e, AuthenticationSucceeded)]
    assert ok and ok[0].security_type == security_type and not ok[0].view_only
    expected = f"AES-{128 if security_type in (SecurityType.RA2, SecurityType.RA2NE) else 256}-EAX"
    assert t.conn.cipher == (expected if client.all_encrypted else None)
    server_init_over(client, t)
    assert t.conn.state is State.NORMAL


def test_username_subtype_and_view_only_password() -> None:
    pol = policy((SecurityType.RA2,), username="ada", view_only=VIEW_PASSWORD)
    client, t = sans_io(SecurityType.RA2, pol=pol, username=b"ada", password=VIEW_PASSWORD)
    assert client.handshake() == (0, "") and client.subtype == 1
    ok = [e for e in t.events if isinstance(e, AuthenticationSucceeded)]
    assert ok[0].username == "ada" and ok[0].view_only
    client, t = sans_io(SecurityType.RA2, pol=pol, username=b"bob", password=PASSWORD)
    assert client.handshake() == (1, "Authentication failed")
    client, t = sans_io(SecurityType.RA2, pol=policy((SecurityType.RA2,), view_only=VIEW_PASSWORD),
                        password=VIEW_PASSWORD)
    assert client.handshake() == (0, "") and client.subtype == 2
    assert next(e for e in t.events if isinstance(e, AuthenticationSucceeded)).view_only


@pytest.mark.parametrize("security_type", RA2_TYPES, ids=lambda t: t.name)
def test_wrong_password_is_refused(security_type: SecurityType) -> None:
    # Whole passwords count: one that shares the first 8 bytes (all VNC auth would read) is wrong.
    client, t = sans_io(security_type, password=PASSWORD[:8])
    assert client.handshake() == (1, "Authentication failed")  # read through the record layer for RA2
    assert any(isinstance(e, AuthenticationFailed) for e in t.events) and t.conn.state is State.CLOSED


def _flip_last(step: str) -> Callable[[str, bytes], bytes]:
    def tamper(s: str, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1]) if s == step else data
    return tamper


@pytest.mark.parametrize(("what", "kwargs", "message"), [
    ("short key", {"wire_bits": 512}, "fewer than 1024"),
    ("long key", {"wire_bits": 8200}, "more than 8192"),
    ("key shorter than its length", {"wire_bits": 2056}, "modulus has 2048 bits"),
    # OpenSSL's implicit rejection turns a bad padding into a pseudo-random message, 16 bytes long about once
    # in 250 times: then the keys differ, and the client cannot open the server's hash record (its EAX tag
    # fails: ValueError "tag") or refuses the hash (AssertionError) instead.
    ("tampered random", {"tamper": _flip_last("client-random")}, "does not decrypt|server's hash is wrong|^tag$"),
    ("tampered hash tag", {"tamper": _flip_last("client-hash")}, "failed authentication"),
    ("tampered credentials tag", {"tamper": _flip_last("credentials")}, "failed authentication"),
    ("wrong random length", {"tamper": lambda s, d: struct.pack(">H", len(d) - 3) + d[2:-1] if s == "client-random"
                             else d}, "encrypted random has 255 bytes, the server key 256"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_hostile_handshake_is_a_remote_protocol_error(what: str, kwargs: dict[str, object], message: str) -> None:
    client, t = sans_io(SecurityType.RA2, **kwargs)
    with pytest.raises((RemoteProtocolError, AssertionError, ValueError)) as info:
        client.handshake()
    assert re.search(message, str(info.value)), info.value
    assert not any(isinstance(e, AuthenticationSucceeded) for e in t.events)
    assert t.conn.state is State.ERROR or re.search("hash is wrong|^tag$", str(info.value))


@pytest.mark.parametrize(("n", "e", "message"), [
    (None, (1 << 2040) + 1, "public exponent has 2041 bits"),
    (None, 2, "public key is invalid"),
    (None, 0, "public key is invalid"),
    ((1 << 2047) + 2, 65537, "modulus is even"),  # found by the fuzz campaign: OpenSSL took it, then failed
])
def test_unusable_client_keys_are_refused(n: int | None, e: int, message: str) -> None:
    n = n or client_key().public_key().public_numbers().n
    wire = struct.pack(">I", 2048) + n.to_bytes(256, "big") + e.to_bytes(256, "big")
    client, t = sans_io(SecurityType.RA2, tamper=lambda s, d: wire if s == "client-key" else d)
    with pytest.raises(RemoteProtocolError, match=message):
        client.handshake()
    assert t.conn.state is State.ERROR


def test_wrong_hash_means_a_replaced_key() -> None:
    client, _ = sans_io(SecurityType.RA2_256)
    client.write = lambda step, data: client._send(step, client.record(  # type: ignore[method-assign]
        bytes(len(data)) if step == "client-hash" else data))
    with pytest.raises(RemoteProtocolError, match="hash of the public keys is wrong"):
        client.handshake()


@pytest.mark.parametrize("attack", ["replay", "tamper", "truncate"])
def test_after_authentication_every_record_is_checked(attack: str) -> None:
    """RA2: a replayed, tampered or cut record in normal operation never reaches the parser."""
    client, t = sans_io(SecurityType.RA2)
    sent: list[bytes] = []
    client.tamper = lambda s, d: sent.append(d) or d  # type: ignore[func-returns-value]
    assert client.handshake()[0] == 0
    server_init_over(client, t)
    update_request = struct.pack(">BBHHHH", 3, 0, 0, 0, W, H)
    client.write("msg", update_request)
    n = len(t.events)
    assert type(t.events[-1]).__name__ == "FramebufferUpdateRequest"
    record = client.record(update_request)
    if attack == "replay":
        with pytest.raises(RemoteProtocolError, match="failed authentication"):
            t.send(sent[-1])  # the previous record again: its nonce (counter) is stale
    elif attack == "tamper":
        with pytest.raises(RemoteProtocolError, match="failed authentication"):
            t.send(record[:5] + bytes([record[5] ^ 0x80]) + record[6:])
    else:
        t.send(record[:-3])
        assert len(t.events) == n  # nothing of it parsed
        t.conn.receive_data(b"")
        with pytest.raises(RemoteProtocolError, match="within an RSA-AES record"):
            t.conn.next_event()
    assert len(t.events) == n and t.conn.state is State.ERROR


def test_ra2ne_ends_encryption_exactly_after_the_credentials() -> None:
    # A plain ClientInit in the same TCP segment as the credentials record is read as plain.
    client, t = sans_io(SecurityType.RA2NE)
    client.tamper = lambda s, d: d + b"\1" if s == "credentials" else d  # type: ignore[assignment]
    assert client.handshake() == (0, "")
    assert isinstance(t.events[-1], ClientInit)
    # Extra bytes inside the credentials record are refused.
    client, t = sans_io(SecurityType.RA2NE)
    orig = client.record
    client.record = lambda data: orig(data + b"\1" if data[:1] == b"\0" else data)  # type: ignore[method-assign]
    with pytest.raises(RemoteProtocolError, match="follow the credentials"):
        client.handshake()


def test_policy_needs_key_and_password() -> None:
    with pytest.raises(UsageError, match="RSA key"):
        SecurityPolicy(types=(SecurityType.RA2,), vnc_password=b"x")
    with pytest.raises(UsageError, match="needs a password"):
        SecurityPolicy(types=(SecurityType.RA2NE,), rsa_key=server_key())


def test_server_records_are_split_at_8192_bytes() -> None:
    client, t = sans_io(SecurityType.RA2)
    assert client.handshake()[0] == 0
    server_init_over(client, t)
    from vkmsremote.rfb.messages import ServerCutText

    data = t.conn.send(ServerCutText(b"x" * 20000))
    assert struct.unpack(">H", data[:2])[0] == 8192
    t.inbox += data
    assert client.read(8)[:1] == b"\3" and client.read(20000) == b"x" * 20000


# --- the key on disk ----------------------------------------------------------------------------------------------


def test_server_key_is_made_once_private_and_fingerprinted(tmp_path: Path) -> None:
    path = tmp_path / "state" / "rsa-key.pem"
    key = ensure_rsa_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert key.private.key_size == 2048
    again = ensure_rsa_key(path)
    assert again.public_bytes == key.public_bytes
    # TigerVNC's viewer shows the first 8 bytes of SHA-1 over the key as sent (U32 bits, modulus, exponent).
    digest = hashlib.sha1(wire_key(key.private.public_key())).hexdigest()[:16]
    assert key.fingerprint == "-".join(digest[i:i + 2] for i in range(0, 16, 2))
    path.chmod(0o644)
    with pytest.raises(UsageError, match="readable"):
        ensure_rsa_key(path)
    path.chmod(0o600)
    path.write_text("not a key")
    with pytest.raises(UsageError, match="PEM"):
        ensure_rsa_key(path)


def test_defaults_offer_rsa_aes_first_when_a_password_is_set(tmp_path: Path) -> None:
    p = security_policy(password="pw", tls_dir=tmp_path / "tls")
    assert p.types[:4] == (SecurityType.RA2_256, SecurityType.RA2, SecurityType.RA2NE_256, SecurityType.RA2NE)
    assert p.types[4:] == (SecurityType.VENCRYPT, SecurityType.VNC_AUTH)
    assert p.rsa_key is not None and p.rsa_key.path == tmp_path / "tls" / "rsa-key.pem"
    assert (tmp_path / "tls" / "rsa-key.pem").stat().st_mode & 0o077 == 0
    assert rsa_key_announcement(p) == f"RSA-AES key fingerprint {p.rsa_key.fingerprint} ({p.rsa_key.path})"
    q = security_policy(password="pw", types=["ra2ne"], tls_dir=tmp_path / "tls")
    assert q.types == (SecurityType.RA2NE,) and q.rsa_key is not None
    assert q.rsa_key.fingerprint == p.rsa_key.fingerprint  # made once
    assert security_policy().rsa_key is None


# --- over TCP, to the real server ----------------------------------------------------------------------------------


@pytest.mark.parametrize("security_type", RA2_TYPES, ids=lambda t: t.name)
def test_real_server_pixel_exact(security_type: SecurityType) -> None:
    with ServerThread(ControlledSource(IMG, name="ra2-desk"), policy=policy()) as srv:
        client = Ra2Client(Tcp(srv.port), security_type)
        assert client.handshake() == (0, "")
        assert client.client_init() == (W, H, "ra2-desk")
        assert np.array_equal(client.frame(W, H), IMG[:, :, :3])
        rec = srv.records()[-1]
        assert rec.security_type == security_type


def test_wrong_password_is_counted_by_the_blacklist() -> None:
    with ServerThread(ControlledSource(IMG), policy=policy(), blacklist=Blacklist(threshold=3, timeout=60)) as srv:
        for _ in range(3):
            client = Ra2Client(Tcp(srv.port), SecurityType.RA2, password=b"guess")
            assert client.handshake() == (1, "Authentication failed")
        # Now refused before any key exchange, whatever the password.
        t = Tcp(srv.port)
        assert t.recv(12) == b"RFB 003.008\n"
        t.send(b"RFB 003.008\n")
        assert t.recv(1) == b"\0"
        (rlen,) = struct.unpack(">I", t.recv(4))
        assert "Too many authentication failures" in t.recv(rlen).decode()


def test_serve_prints_the_fingerprint(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "VKMSREMOTE_PASSWORD": "pw-serve"}
    with serving("--security", "ra2,ra2ne", env=env) as (proc, port):
        assert proc.stdout is not None
        line = proc.stdout.readline()
        key = ensure_rsa_key(tmp_path / "cfg" / "vkmsremote" / "tls" / "rsa-key.pem")
        assert line.strip() == f"vkmsremote: RSA-AES key fingerprint {key.fingerprint} ({key.path})"
        client = Ra2Client(Tcp(port), SecurityType.RA2, password=b"pw-serve")
        assert client.handshake() == (0, "")
        assert client.server_wire == key.public_bytes  # the key the line names is the one served


def test_status_prints_the_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from vkmsremote import cli

    (tmp_path / "configfs" / "vkms").mkdir(parents=True)
    monkeypatch.setenv("VKMSREMOTE_CONFIGFS_ROOT", str(tmp_path / "configfs"))
    monkeypatch.setenv("VKMSREMOTE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert cli.main(["status"]) == 0
    assert "RSA-AES" not in capsys.readouterr().out  # status makes no key
    key = security_policy(password="pw", types=["ra2"]).rsa_key  # serving made one
    assert key is not None and key.path == tmp_path / "cfg" / "vkmsremote" / "tls" / "rsa-key.pem"
    assert cli.main(["status"]) == 0
    assert f"RSA-AES key fingerprint {key.fingerprint} ({key.path})" in capsys.readouterr().out
    assert cli.main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rsa_aes_key"] == {"path": str(key.path), "fingerprint": key.fingerprint}


# --- TigerVNC's viewer 1.15 (Debian 13) ------------------------------------------------------------------------

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vkmsremote"
TRIXIE = CACHE / "trixie-tigervnc"
"""A Debian 13 tree with tigervnc-viewer, made by scripts/setup-host.sh (the same one test_motion_tigervnc uses);
Debian 12's viewer is 1.12, without RSA-AES. The viewer runs in it with chroot, on an Xvfb reached over TCP."""
TIGER_PASSWORD = b"pw-8byte"  # the viewer's -passwd file (vncpasswd format) holds 8 bytes


@pytest.fixture(scope="module")
def tcp_display() -> Iterator[dict[str, str]]:
    assert (TRIXIE / "usr/bin/xtigervncviewer").is_file(), f"TigerVNC 1.15 is missing at {TRIXIE}: run scripts/setup-host.sh"
    assert os.geteuid() == 0, "running the Debian 13 viewer needs chroot, i.e. root"
    r, w = os.pipe()
    # -noreset: the server must not reset when the last client (a viewer) leaves, or the next one can find it gone
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "800x600x24", "-listen", "tcp", "-ac",
                             "-noreset"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        number = os.read(r, 100).decode().strip()
        assert number, "Xvfb did not report its display number"
        yield {"DISPLAY": f"127.0.0.1:{number}", "HOME": "/tmp", "PATH": "/usr/bin:/bin"}
    finally:
        os.close(r)
        xvfb.terminate()
        xvfb.wait(10)


def _x(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, env={**os.environ, "DISPLAY": env["DISPLAY"]}, capture_output=True, timeout=30)


def _shows(env: dict[str, str], img: np.ndarray) -> bool:
    from PIL import Image

    shot = np.asarray(Image.open(io.BytesIO(_x(env, "import", "-window", "root", "png:-").stdout)).convert("RGB"))
    ref = np.ascontiguousarray(img[:, :, 2::-1])
    h, w = ref.shape[:2]
    return any(np.array_equal(shot[dy:dy + h, dx:dx + w], ref) for dy in range(48) for dx in range(48))


@pytest.mark.parametrize("security_type", RA2_TYPES, ids=lambda t: t.name)
def test_tigervnc_115_viewer(security_type: SecurityType, tcp_display: dict[str, str]) -> None:
    """Debian 13's TigerVNC viewer asks to accept our key's fingerprint (its dialog, answered "Yes"),
    authenticates with the password and shows the frame exactly; a wrong password is refused."""
    key = server_key()
    pol = SecurityPolicy(types=RA2_TYPES, vnc_password=TIGER_PASSWORD, rsa_key=key)
    passwd = TRIXIE / "tmp" / f"vkmsremote-rsaaes-{os.getpid()}.passwd"
    name = {SecurityType.RA2: "RA2", SecurityType.RA2NE: "RA2ne", SecurityType.RA2_256: "RA2_256",
            SecurityType.RA2NE_256: "RA2ne_256"}[security_type]
    try:
        for password, ok in ((b"wrong-pw", False), (TIGER_PASSWORD, True)):
            passwd.write_bytes(obfuscate_vnc_password(password))
            with ServerThread(ControlledSource(IMG, name="ra2-tiger"), policy=pol) as srv:
                proc = subprocess.Popen(["/usr/sbin/chroot", str(TRIXIE), "/usr/bin/xtigervncviewer", "-geometry", "+0+0",
                                         "-SecurityTypes", name, "-passwd", f"/tmp/{passwd.name}",
                                         "-AutoSelect=0", "-PreferredEncoding", "ZRLE", "-FullColor",
                                         f"127.0.0.1::{srv.port}"],
                                        env=tcp_display, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                try:
                    deadline = time.monotonic() + 30
                    while not (found := _x(tcp_display, "xdotool", "search", "--name", "Server key fingerprint")
                               .stdout.split()):
                        assert proc.poll() is None, f"the viewer exited: {proc.communicate()[0][-2000:]}"
                        assert time.monotonic() < deadline, "TigerVNC never asked about the server key"
                        time.sleep(0.2)
                    wid = found[0].decode()
                    _x(tcp_display, "xdotool", "windowactivate", "--sync", wid)
                    _x(tcp_display, "xdotool", "key", "--window", wid, "Return")  # "Yes", the default button
                    deadline = time.monotonic() + 30
                    if ok:
                        while not _shows(tcp_display, IMG):
                            assert proc.poll() is None, f"the viewer exited: {proc.communicate()[0][-2000:]}"
                            assert time.monotonic() < deadline, "TigerVNC never showed the frame exactly"
                            time.sleep(0.3)
                    else:
                        while not any(r.ended for r in srv.records()):
                            assert time.monotonic() < deadline, "the wrong password was not refused"
                            time.sleep(0.2)
                    records = srv.records()
                finally:
                    proc.terminate()
                    log = proc.communicate(timeout=10)[0]
            assert records[0].security_type == security_type, log[-2000:]
            if not ok:
                assert records[0].outcome == "authentication failed", records[0]
                assert "Authentication failed" in log, log[-2000:]
    finally:
        passwd.unlink(missing_ok=True)


def test_tampered_record_closes_the_session_with_a_logged_reason(caplog: pytest.LogCaptureFixture) -> None:
    with ServerThread(ControlledSource(IMG), policy=policy()) as srv:
        client = Ra2Client(Tcp(srv.port), SecurityType.RA2_256)
        assert client.handshake() == (0, "")
        assert client.client_init() == (W, H, "controlled")
        record = client.record(struct.pack(">BBHHHH", 3, 0, 0, 0, W, H))
        assert isinstance(client.t, Tcp)
        client.t.send(record[:-1] + bytes([record[-1] ^ 0x01]))  # the tag's last bit
        assert client.t.sock.recv(100) == b""  # closed, nothing sent for it
        deadline = time.monotonic() + 5
        while (rec := srv.records()[-1]).ended is None and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "RSA-AES: record 3 (10 bytes) failed authentication" in rec.outcome  # hash, credentials, ClientInit, this
    assert any("the client broke the protocol: RSA-AES: record 3" in r.getMessage() for r in caplog.records)

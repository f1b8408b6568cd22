"""The RSA-AES security types (rfbproto "RSA-AES Security Type" and its variants): the pieces without state
machine. :mod:`vkmsremote.rfb.protocol` drives the handshake; this module holds the numbers, the server's RSA
key, the key exchange arithmetic and the AES-EAX record layer.

The handshake (server side; all integers big endian)::

    S: U32 server-key-length (bits), modulus, public exponent (each ceil(bits/8) bytes)
    C: U32 client-key-length, modulus, public exponent          (1024 <= bits <= 8192, else we close)
    S: U16 length = ceil(client bits/8), RSAES-PKCS1-v1_5(client key, ServerRandom)
    C: U16 length = ceil(server bits/8), RSAES-PKCS1-v1_5(server key, ClientRandom)
       ClientSessionKey = H(ServerRandom || ClientRandom), ServerSessionKey = H(ClientRandom || ServerRandom)
       -- from here every byte is an AES-EAX record (below), client->server under ClientSessionKey --
    S: ServerHash = H(ServerPublicKey || ClientPublicKey)     (each key as sent: U32 length, modulus, exponent)
    C: ClientHash = H(ClientPublicKey || ServerPublicKey)
    S: U8 subtype (1: username and password, 2: password only)
    C: U8 length, username, U8 length, password               (UTF-8)
    S: SecurityResult ...

H and the sizes per type (rfbproto, and TigerVNC's SSecurityRSAAES for the random sizes the spec leaves
implicit): RA2/RA2ne: 16-byte randoms, H = SHA-1, session keys its first 16 bytes (AES-128);
RA2_256/RA2ne_256: 32-byte randoms, H = SHA-256, 32-byte session keys (AES-256). In RA2 and RA2_256 every
later byte in both directions stays in the record layer; in the "ne" types the record layer ends with the
credentials and SecurityResult and everything after it are plain.

An AES-EAX record: U16 length (big endian; it is also the EAX header, the associated data), that many
bytes of ciphertext, a 16-byte tag. The nonce is a 16-byte little-endian message counter per direction,
starting at 0. Records carry a byte stream: one record need not be one RFB message.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric import padding, rsa

from vkmsremote.errors import RemoteProtocolError
from vkmsremote.rfb.constants import Ra2Subtype, SecurityType
from vkmsremote.rfb.eax import TAG_SIZE, AesEax, InvalidTag

MIN_KEY_BITS: Final = 1024
MAX_KEY_BITS: Final = 8192
"""A peer key outside these bounds closes the connection (the bounds TigerVNC and noVNC use)."""
MAX_PUBLIC_EXPONENT_BITS: Final = 64
"""Our cap on a client's public exponent: real clients use 65537; a huge one would make each handshake's
RSA encryption a full-size modular exponentiation the client chooses."""
DEFAULT_KEY_BITS: Final = 2048

RECORD_HEADER: Final = struct.Struct(">H")
MAX_RECORD: Final = 0xFFFF
"""The U16 length caps a record's plaintext; nothing larger can be announced."""
SEND_RECORD: Final = 8192
"""Outgoing records carry at most this many bytes (as TigerVNC's AESOutStream writes them)."""

_U32: Final = struct.Struct(">I")
_PKCS1: Final = padding.PKCS1v15()


@dataclass(frozen=True, slots=True)
class Variant:
    """What distinguishes the four RSA-AES types from each other."""

    security_type: SecurityType
    random_size: int
    hash_name: str
    all_encrypted: bool

    @property
    def session_key_size(self) -> int:
        return self.random_size

    def digest(self, data: bytes) -> bytes:
        return hashlib.new(self.hash_name, data).digest()

    @property
    def hash_size(self) -> int:
        return hashlib.new(self.hash_name).digest_size


VARIANTS: Final[dict[SecurityType, Variant]] = {
    SecurityType.RA2: Variant(SecurityType.RA2, 16, "sha1", all_encrypted=True),
    SecurityType.RA2NE: Variant(SecurityType.RA2NE, 16, "sha1", all_encrypted=False),
    SecurityType.RA2_256: Variant(SecurityType.RA2_256, 32, "sha256", all_encrypted=True),
    SecurityType.RA2NE_256: Variant(SecurityType.RA2NE_256, 32, "sha256", all_encrypted=False),
}

MAX_CREDENTIALS: Final = 2 + 255 + 255
"""U8 length, username, U8 length, password."""


# --- public keys as they travel --------------------------------------------------------------------------


def encode_public_key(key: rsa.RSAPublicKey) -> bytes:
    """U32 key length in bits, then modulus and public exponent, each ceil(bits/8) bytes big endian."""
    numbers = key.public_numbers()
    bits = key.key_size
    size = (bits + 7) // 8
    return _U32.pack(bits) + numbers.n.to_bytes(size, "big") + numbers.e.to_bytes(size, "big")


def public_key_size(head: bytes) -> int:
    """The bytes of modulus plus exponent that follow a public key's U32 length; checks the bounds."""
    (bits,) = _U32.unpack(head)
    if bits < MIN_KEY_BITS:
        raise RemoteProtocolError(f"RSA-AES: the client's key has {bits} bits, fewer than {MIN_KEY_BITS}")
    if bits > MAX_KEY_BITS:
        raise RemoteProtocolError(f"RSA-AES: the client's key has {bits} bits, more than {MAX_KEY_BITS}")
    return 2 * ((int(bits) + 7) // 8)


def decode_public_key(data: bytes) -> rsa.RSAPublicKey:
    """The client's key from its wire form (checked by :func:`public_key_size` first)."""
    bits = _U32.unpack_from(data)[0]
    size = (bits + 7) // 8
    n = int.from_bytes(data[4:4 + size], "big")
    e = int.from_bytes(data[4 + size:4 + 2 * size], "big")
    # The modulus must fill the announced length: the encrypted random is sent as ceil(bits/8) bytes.
    if (n.bit_length() + 7) // 8 != size or n.bit_length() < MIN_KEY_BITS:
        raise RemoteProtocolError(f"RSA-AES: the client's modulus has {n.bit_length()} bits, its key length says {bits}")
    if n % 2 == 0:  # (OpenSSL accepts an even modulus as a key, then fails to encrypt with it)
        raise RemoteProtocolError("RSA-AES: the client's modulus is even")
    if e.bit_length() > MAX_PUBLIC_EXPONENT_BITS:
        raise RemoteProtocolError(f"RSA-AES: the client's public exponent has {e.bit_length()} bits "
                                  f"(cap {MAX_PUBLIC_EXPONENT_BITS})")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise RemoteProtocolError(f"RSA-AES: the client's public key is invalid: {exc}") from exc


def encrypt_random(key: rsa.RSAPublicKey, random: bytes) -> bytes:
    """RSAES-PKCS1-v1_5, the ciphertext as exactly ceil(key bits/8) bytes."""
    try:
        encrypted = key.encrypt(random, _PKCS1)
    except ValueError as e:  # a key that passed the checks above but that OpenSSL cannot use
        raise RemoteProtocolError(f"RSA-AES: cannot encrypt with the client's key: {e}") from e
    return encrypted.rjust((key.key_size + 7) // 8, b"\0")


def decrypt_random(key: rsa.RSAPrivateKey, data: bytes, size: int) -> bytes:
    """The peer's random; a bad padding or a wrong length is one and the same error (no oracle)."""
    try:
        random = key.decrypt(data, _PKCS1)
    except ValueError:
        random = b""
    if len(random) != size:
        raise RemoteProtocolError("RSA-AES: the client's encrypted random does not decrypt")
    return random


def session_keys(variant: Variant, server_random: bytes, client_random: bytes) -> tuple[bytes, bytes]:
    """(ClientSessionKey, ServerSessionKey): client->server and server->client AES keys."""
    n = variant.session_key_size
    return (variant.digest(server_random + client_random)[:n], variant.digest(client_random + server_random)[:n])


def fingerprint(public_key: rsa.RSAPublicKey) -> str:
    """What TigerVNC's viewer shows to be compared: the first 8 bytes of SHA-1 over the key as sent,
    as ``xx-xx-xx-xx-xx-xx-xx-xx``."""
    return "-".join(f"{b:02x}" for b in hashlib.sha1(encode_public_key(public_key)).digest()[:8])


# --- the server's key ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerKey:
    """The server's RSA key, its wire form and fingerprint (stored on disk by vkmsremote.server.rsakey)."""

    private: rsa.RSAPrivateKey
    path: Path | None = None

    @property
    def public_bytes(self) -> bytes:
        return encode_public_key(self.private.public_key())

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.private.public_key())

    @classmethod
    def generate(cls, bits: int = DEFAULT_KEY_BITS) -> ServerKey:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=bits))


# --- credentials -----------------------------------------------------------------------------------------------


def parse_credentials(data: bytes) -> tuple[str, bytes] | None:
    """(username, password) from the credentials plaintext, None if more bytes are needed. Extra bytes
    after the password are the caller's to judge."""
    if not data:
        return None
    user_len = data[0]
    if len(data) < 2 + user_len:
        return None
    pass_len = data[1 + user_len]
    end = 2 + user_len + pass_len
    if len(data) < end:
        return None
    user = data[1:1 + user_len].decode("utf-8", errors="replace")
    return user, data[2 + user_len:end]


def credentials_length(data: bytes) -> int | None:
    """How long the credentials starting ``data`` are, once that is known."""
    if not data or len(data) < 2 + data[0]:
        return None
    return 2 + data[0] + data[1 + data[0]]


def subtype_for(username_required: bool) -> Ra2Subtype:
    return Ra2Subtype.USERNAME_AND_PASSWORD if username_required else Ra2Subtype.PASSWORD


# --- the record layer ---------------------------------------------------------------------------------------


class RecordLayer:
    """Both directions of the AES-EAX record stream of one connection (sans-IO).

    ``seal(data)`` turns plaintext into records; ``open(buffer)`` takes at most one complete record off the
    front of ``buffer`` (a bytearray, consumed in place) and returns its plaintext, or None if the record is
    not complete yet. A record whose tag does not verify (tampered, cut, out of order or replayed, since the
    nonce is the message counter) is a :class:`RemoteProtocolError`; its bytes never reach the parser."""

    __slots__ = ("_recv", "_recv_counter", "_send", "_send_counter")

    def __init__(self, recv_key: bytes, send_key: bytes) -> None:
        self._recv = AesEax(recv_key)
        self._send = AesEax(send_key)
        self._recv_counter = 0
        self._send_counter = 0

    def seal(self, data: bytes, *, max_record: int = SEND_RECORD) -> bytes:
        out = bytearray()
        view = memoryview(data)
        for start in range(0, len(data), max_record):
            chunk = bytes(view[start:start + max_record])
            header = RECORD_HEADER.pack(len(chunk))
            ciphertext, tag = self._send.encrypt(self._send_counter.to_bytes(16, "little"), header, chunk)
            self._send_counter += 1
            out += header + ciphertext + tag
        return bytes(out)

    def open(self, buffer: bytearray) -> bytes | None:
        if len(buffer) < RECORD_HEADER.size:
            return None
        (length,) = RECORD_HEADER.unpack_from(buffer)
        end = RECORD_HEADER.size + length + TAG_SIZE
        if len(buffer) < end:
            return None
        header = bytes(buffer[:RECORD_HEADER.size])
        ciphertext = bytes(buffer[RECORD_HEADER.size:RECORD_HEADER.size + length])
        tag = bytes(buffer[end - TAG_SIZE:end])
        try:
            plaintext = self._recv.decrypt(self._recv_counter.to_bytes(16, "little"), header, ciphertext, tag)
        except InvalidTag as e:
            raise RemoteProtocolError(
                f"RSA-AES: record {self._recv_counter} ({length} bytes) failed authentication "
                "(tampered, truncated, reordered or replayed)") from e
        del buffer[:end]
        self._recv_counter += 1
        return plaintext


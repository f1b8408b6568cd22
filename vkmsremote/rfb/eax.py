"""AES in EAX mode (Bellare, Rogaway, Wagner: "The EAX Mode of Operation", FSE 2004), built from
``cryptography``'s AES-CMAC and AES-CTR; no block cipher code here.

EAX, for key K, nonce N, header H and message M (the paper's notation)::

    OMAC_t(X) = CMAC_K([t]_16 || X)      [t]_16 = t as a 16-byte big-endian block (t = 0, 1, 2)
    N' = OMAC_0(N)    H' = OMAC_1(H)
    C  = CTR_K(initial counter block N', M)
    T  = N' xor H' xor OMAC_2(C)          (the full 16 bytes; the RSA-AES security types use all 16)

CTR increments the whole 128-bit counter block (big endian), which is what ``modes.CTR`` does. Decryption
checks the tag (constant-time) before any plaintext is produced.
"""

from __future__ import annotations

import hmac
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

BLOCK: Final = 16
TAG_SIZE: Final = 16
KEY_SIZES: Final = frozenset({16, 24, 32})

_PREFIX = tuple(t.to_bytes(BLOCK, "big") for t in range(3))


class InvalidTag(Exception):
    """The tag does not authenticate the nonce, header and ciphertext (tampered, truncated or replayed)."""


class AesEax:
    """AES-EAX with one key and 16-byte tags."""

    __slots__ = ("_aes",)

    def __init__(self, key: bytes) -> None:
        if len(key) not in KEY_SIZES:
            raise ValueError(f"an AES key has 16, 24 or 32 bytes, not {len(key)}")
        self._aes = algorithms.AES(key)

    def _omac(self, t: int, data: bytes) -> bytes:
        mac = CMAC(self._aes)
        mac.update(_PREFIX[t])
        mac.update(data)
        return mac.finalize()

    def _ctr(self, counter: bytes, data: bytes) -> bytes:
        ctx = Cipher(self._aes, modes.CTR(counter)).encryptor()
        return ctx.update(data) + ctx.finalize()

    def encrypt(self, nonce: bytes, header: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
        """(ciphertext, 16-byte tag)."""
        n = self._omac(0, nonce)
        c = self._ctr(n, plaintext)
        tag = _xor3(n, self._omac(1, header), self._omac(2, c))
        return c, tag

    def decrypt(self, nonce: bytes, header: bytes, ciphertext: bytes, tag: bytes) -> bytes:
        """The plaintext, or :class:`InvalidTag` (nothing is decrypted then)."""
        n = self._omac(0, nonce)
        expected = _xor3(n, self._omac(1, header), self._omac(2, ciphertext))
        if len(tag) != TAG_SIZE or not hmac.compare_digest(expected, tag):
            raise InvalidTag("AES-EAX tag mismatch")
        return self._ctr(n, ciphertext)


def _xor3(a: bytes, b: bytes, c: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big") ^ int.from_bytes(c, "big")).to_bytes(BLOCK, "big")

"""RFB security: VNC authentication (DES), the vncpasswd file format, and the server's security policy.

VNC authentication (RFC 6143 7.2.2): the client DES-encrypts a 16-byte challenge in ECB mode with the
password as key, truncated or zero-padded to 8 bytes. The spec's DES takes "the lowest bit of each byte
as the first bit", the reverse of standard DES, so every key byte is bit-reversed before a standard DES
(here ``cryptography``'s decrepit TripleDES with K|K|K, which is single DES) is used.

VeNCrypt (rfbproto "VeNCrypt") wraps the stream in TLS and then runs None, VNC or Plain authentication
inside it; only the X509 subtypes (a real certificate, see vkmsremote.server.tls) are offered.

A second, view-only password may be configured next to the full-access one (as TigerVNC's vncpasswd file
holds two): VNC authentication accepts either, trying the full-access password first, and a client that
proved the view-only one gets view-only rights (:class:`Access`). X509Plain does the same for its one
username with the whole view-only password.

RSA-AES (RA2, RA2ne, RA2_256, RA2ne_256; :mod:`vkmsremote.rfb.rsaaes`) needs the server's RSA key
(``rsa_key``) and checks, inside its encrypted handshake, the username and password with ``check_plain``
when a username is configured (subtype 1), else the whole password against ``vnc_password`` (subtype 2);
the view-only password works there as well.
"""

from __future__ import annotations

import hmac
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from vkmsremote.errors import UsageError
from vkmsremote.rfb.constants import RSA_AES_TYPES, SecurityType, VeNCryptSubtype
from vkmsremote.rfb.rsaaes import ServerKey

CHALLENGE_SIZE = 16
VNC_PASSWORD_BYTES = 8
"""Only the first 8 bytes of a VNC-auth password matter (RFC 6143 7.2.2)."""

_VNCPASSWD_KEY = bytes([23, 82, 107, 6, 35, 78, 88, 7])
"""The fixed key (in VNC bit order) vncpasswd files are obfuscated with (TigerVNC, RealVNC, vncsnapshot)."""

_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _des_ecb(key8: bytes, data: bytes, *, decrypt: bool = False) -> bytes:
    cipher = Cipher(TripleDES(key8 * 3), modes.ECB())
    ctx = cipher.decryptor() if decrypt else cipher.encryptor()
    return ctx.update(data) + ctx.finalize()


def vnc_des_key(password: bytes) -> bytes:
    """The standard-DES key for a VNC password: 8 bytes, zero padded, each byte bit-reversed."""
    return password[:VNC_PASSWORD_BYTES].ljust(VNC_PASSWORD_BYTES, b"\0").translate(_REVERSED)


def vnc_auth_response(password: bytes, challenge: bytes) -> bytes:
    """What a client answers to ``challenge`` (16 bytes) when it knows ``password``."""
    if len(challenge) != CHALLENGE_SIZE:
        raise ValueError(f"a VNC-auth challenge has {CHALLENGE_SIZE} bytes, not {len(challenge)}")
    return _des_ecb(vnc_des_key(password), challenge)


def vnc_auth_ok(password: bytes, challenge: bytes, response: bytes) -> bool:
    """True if ``response`` proves knowledge of ``password`` (constant-time comparison)."""
    return hmac.compare_digest(vnc_auth_response(password, challenge), response)


class Permission(Enum):
    """Something a client may be allowed to do beyond seeing the screen."""

    INPUT = "send keys and pointer events"
    CLIPBOARD_IN = "set the server's clipboard"
    CLIPBOARD_OUT = "receive the server's clipboard"
    RESIZE = "resize the desktop"
    EXCLUSIVE = "take exclusive access (disconnect the others)"


class Access(Enum):
    """What an authenticated client may do: :data:`PERMISSIONS` is the one table that decides."""

    FULL = "full"
    VIEW_ONLY = "view-only"
    """See the screen; no keyboard, pointer, clipboard, desktop resizing or exclusive access."""

    def permits(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self]


PERMISSIONS: dict[Access, frozenset[Permission]] = {
    Access.FULL: frozenset(Permission),
    # As TigerVNC's view-only access: the screen (and the bell), nothing the client sends takes effect,
    # and the clipboard is not the screen. A non-shared ClientInit is treated as shared; SetDesktopSize
    # is answered "prohibited".
    Access.VIEW_ONLY: frozenset(),
}


def vnc_auth_access(password: bytes | None, view_only_password: bytes | None, challenge: bytes,
                    response: bytes) -> Access | None:
    """Which password ``response`` proves: the full-access one is tried first, then the view-only one
    (TigerVNC's SSecurityVncAuth order); None if neither. Both are always computed and compared in
    constant time, so the time taken does not say which one was tried."""
    full = vnc_auth_ok(password, challenge, response) if password else False
    view = vnc_auth_ok(view_only_password, challenge, response) if view_only_password else False
    if full:
        return Access.FULL
    if view:
        return Access.VIEW_ONLY
    return None


def obfuscate_vnc_password(password: bytes) -> bytes:
    """The 8 bytes a vncpasswd file holds for ``password`` (fixed-key DES, as TigerVNC's vncpasswd writes)."""
    return _des_ecb(_VNCPASSWD_KEY.translate(_REVERSED), password[:8].ljust(8, b"\0"))


def deobfuscate_vnc_password(data: bytes) -> bytes:
    """Inverse of :func:`obfuscate_vnc_password`, trailing NULs removed."""
    if len(data) < 8:
        raise UsageError("a vncpasswd file holds at least 8 bytes", hint="create it with vncpasswd")
    return _des_ecb(_VNCPASSWD_KEY.translate(_REVERSED), data[:8], decrypt=True).rstrip(b"\0")


PlainChecker = Callable[[str, str], bool]
"""Checks a VeNCrypt Plain username and password."""


def plain_checker(username: str, password: str) -> PlainChecker:
    """A checker accepting exactly one username/password pair (constant-time comparisons)."""
    user_b, pass_b = username.encode(), password.encode()

    def check(user: str, pw: str) -> bool:
        ok_user = hmac.compare_digest(user.encode(), user_b)
        ok_pass = hmac.compare_digest(pw.encode(), pass_b)
        return ok_user and ok_pass

    return check


_TLS_SUBTYPES = frozenset({VeNCryptSubtype.X509_NONE, VeNCryptSubtype.X509_VNC, VeNCryptSubtype.X509_PLAIN})
_VNC_SUBTYPES = frozenset({VeNCryptSubtype.X509_VNC})
_PLAIN_SUBTYPES = frozenset({VeNCryptSubtype.X509_PLAIN})
_AUTHENTICATING_SUBTYPES = _VNC_SUBTYPES | _PLAIN_SUBTYPES


@dataclass(frozen=True, slots=True)
class SecurityPolicy:
    """Which security types a server offers, in order of preference, and what they need.

    ``types`` are RFB security types (None, VNC authentication, VeNCrypt); ``vencrypt_subtypes`` the
    VeNCrypt subtypes offered when VeNCrypt is. VNC authentication (plain or inside TLS) checks
    ``vnc_password``, then ``vnc_view_only_password`` if set (a client proving that one is view-only);
    Plain checks with ``check_plain``, then ``check_plain_view_only``; TLS uses ``tls_context`` (server side).
    """

    types: tuple[SecurityType, ...] = (SecurityType.NONE,)
    vnc_password: bytes | None = None
    vencrypt_subtypes: tuple[VeNCryptSubtype, ...] = ()
    tls_context: ssl.SSLContext | None = None
    check_plain: PlainChecker | None = None
    vnc_view_only_password: bytes | None = None
    check_plain_view_only: PlainChecker | None = None
    rsa_key: ServerKey | None = None

    def __post_init__(self) -> None:
        if not self.types:
            raise UsageError("no security type is enabled", hint="enable at least one, e.g. None or VncAuth")
        if len(set(self.types)) != len(self.types):
            raise UsageError("a security type is listed twice")
        for t in self.types:
            if t not in (SecurityType.NONE, SecurityType.VNC_AUTH, SecurityType.VENCRYPT) and t not in RSA_AES_TYPES:
                raise UsageError(f"security type {t!r} is not supported")
        if self.uses_rsa_aes:
            if self.rsa_key is None:
                raise UsageError("RSA-AES needs the server's RSA key", hint="let vkmsremote make one (the default)")
            if not self.vnc_password and self.check_plain is None:
                raise UsageError("RSA-AES needs a password", hint="give --password-file (or $VKMSREMOTE_PASSWORD)")
        uses_vnc = SecurityType.VNC_AUTH in self.types or any(s in _VNC_SUBTYPES for s in self.vencrypt_subtypes)
        if uses_vnc and not self.vnc_password:
            raise UsageError("VNC authentication needs a password", hint="give --password or --password-file")
        if SecurityType.VENCRYPT in self.types:
            if not self.vencrypt_subtypes:
                raise UsageError("VeNCrypt is enabled without any subtype")
            for s in self.vencrypt_subtypes:
                if s not in _TLS_SUBTYPES:
                    raise UsageError(f"VeNCrypt subtype {s!r} is not supported (only X509None/X509Vnc/X509Plain)")
            if self.tls_context is None:
                raise UsageError("VeNCrypt needs a TLS certificate", hint="give --tls-cert/--tls-key or let one be made")
            if any(s in _PLAIN_SUBTYPES for s in self.vencrypt_subtypes) and self.check_plain is None:
                raise UsageError("X509Plain needs a username and password", hint="give --username with --password")
        self._check_view_only(uses_vnc)

    def _check_view_only(self, uses_vnc: bool) -> None:
        if self.vnc_view_only_password is None and self.check_plain_view_only is None:
            return
        if self.vnc_view_only_password is not None and not self.vnc_password:
            raise UsageError("a view-only password needs a full-access password as well",
                             hint="give --password-file (or $VKMSREMOTE_PASSWORD) too")
        if self.check_plain_view_only is not None and self.check_plain is None:
            raise UsageError("a view-only Plain checker needs a full-access one as well")
        uses_plain = SecurityType.VENCRYPT in self.types and any(s in _PLAIN_SUBTYPES for s in self.vencrypt_subtypes)
        ra2_checks = self.uses_rsa_aes and (self.check_plain_view_only if self.ra2_username_required
                                            else self.vnc_view_only_password)
        if not (uses_vnc and self.vnc_view_only_password) and not (uses_plain and self.check_plain_view_only) \
                and not ra2_checks:
            raise UsageError("a view-only password is set, but no offered security type checks it",
                             hint="offer vncauth, x509vnc or x509plain (--security)")
        if uses_vnc and self.vnc_password and self.vnc_view_only_password is not None and hmac.compare_digest(
                vnc_des_key(self.vnc_password), vnc_des_key(self.vnc_view_only_password)):
            raise UsageError("the view-only password's first 8 bytes are the full-access password's, and VNC "
                             "authentication reads only those: every view-only client would get full access",
                             hint="choose a view-only password that differs within its first 8 characters")

    @property
    def uses_rsa_aes(self) -> bool:
        return any(t in RSA_AES_TYPES for t in self.types)

    @property
    def ra2_username_required(self) -> bool:
        """RSA-AES asks for a username and password (subtype 1) when a username is configured."""
        return self.check_plain is not None

    def ra2_access(self, username: str, password: bytes) -> Access | None:
        """Which access the RSA-AES credentials give: full, view-only, or None (refused). Both passwords
        are always compared, in constant time."""
        if self.ra2_username_required:
            pw = password.decode("utf-8", errors="replace")
            full = self.check_plain(username, pw) if self.check_plain else False
            view = self.check_plain_view_only(username, pw) if self.check_plain_view_only else False
        else:
            full = hmac.compare_digest(self.vnc_password, password) if self.vnc_password else False
            view = hmac.compare_digest(self.vnc_view_only_password, password) if self.vnc_view_only_password \
                else False
        if full:
            return Access.FULL
        if view:
            return Access.VIEW_ONLY
        return None

    @property
    def authenticates(self) -> bool:
        """True when every offered way in checks a secret (no None, no X509None)."""
        for t in self.types:
            if t == SecurityType.NONE:
                return False
            if t == SecurityType.VENCRYPT and any(s not in _AUTHENTICATING_SUBTYPES for s in self.vencrypt_subtypes):
                return False
        return True

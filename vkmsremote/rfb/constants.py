"""RFB numbers (RFC 6143 section 7 and rfbproto/rfbproto "rfbproto.rst"). No magic numbers elsewhere."""

from __future__ import annotations

from enum import IntEnum


class ClientMessage(IntEnum):
    SET_PIXEL_FORMAT = 0
    SET_ENCODINGS = 2
    FRAMEBUFFER_UPDATE_REQUEST = 3
    KEY_EVENT = 4
    POINTER_EVENT = 5
    CLIENT_CUT_TEXT = 6
    ENABLE_CONTINUOUS_UPDATES = 150
    CLIENT_FENCE = 248
    SET_DESKTOP_SIZE = 251
    QEMU = 255


class QemuSubtype(IntEnum):
    EXTENDED_KEY_EVENT = 0


class ServerMessage(IntEnum):
    FRAMEBUFFER_UPDATE = 0
    SET_COLOUR_MAP_ENTRIES = 1
    BELL = 2
    SERVER_CUT_TEXT = 3
    END_OF_CONTINUOUS_UPDATES = 150
    SERVER_FENCE = 248


class SecurityType(IntEnum):
    INVALID = 0
    NONE = 1
    VNC_AUTH = 2
    RA2 = 5  # RSA-AES (rfbproto "RSA-AES Security Type"): everything after the key exchange encrypted
    RA2NE = 6  # RSA-AES Unencrypted: only the security handshake encrypted
    VENCRYPT = 19
    RA2_256 = 129  # RSA-AES-256: SHA-256, AES-256
    RA2NE_256 = 130  # RSA-AES-256 Unencrypted


RSA_AES_TYPES = frozenset({SecurityType.RA2, SecurityType.RA2NE, SecurityType.RA2_256, SecurityType.RA2NE_256})


class Ra2Subtype(IntEnum):
    """The credentials an RSA-AES server asks for (rfbproto "RSA-AES Security Type"); other values are invalid."""

    USERNAME_AND_PASSWORD = 1
    PASSWORD = 2


class VeNCryptSubtype(IntEnum):
    PLAIN = 256
    TLS_NONE = 257
    TLS_VNC = 258
    TLS_PLAIN = 259
    X509_NONE = 260
    X509_VNC = 261
    X509_PLAIN = 262


class VeNCryptVersionResult(IntEnum):
    """The server's U8 after the client's VeNCrypt version (rfbproto "VeNCrypt"): 0 accepts it."""

    OK = 0
    UNSUPPORTED = 1  # any non-zero value; the connection closes


class VeNCryptSubtypeResult(IntEnum):
    """The server's U8 after the client's VeNCrypt subtype: 1 accepts it (the TLS handshake follows)."""

    REJECTED = 0
    ACCEPTED = 1


NO_SECURITY_TYPES = 0
"""number-of-security-types 0 (RFB 3.7+): the connection failed, a reason string follows (RFC 6143 7.1.2)."""


class SecurityResult(IntEnum):
    OK = 0
    FAILED = 1
    TOO_MANY_ATTEMPTS = 2


class Encoding(IntEnum):
    RAW = 0
    COPY_RECT = 1
    RRE = 2
    HEXTILE = 5
    ZLIB = 6
    TIGHT = 7
    ZRLE = 16
    OPEN_H264 = 50  # rfbproto "Open H.264 Encoding"
    # pseudo-encodings
    JPEG_QUALITY_LEVEL_0 = -32  # ... -23 is level 9
    JPEG_QUALITY_LEVEL_9 = -23
    DESKTOP_SIZE = -223
    LAST_RECT = -224
    CURSOR = -239
    X_CURSOR = -240
    COMPRESS_LEVEL_0 = -256  # ... -247 is level 9
    COMPRESS_LEVEL_9 = -247
    QEMU_EXTENDED_KEY_EVENT = -258
    DESKTOP_NAME = -307
    EXTENDED_DESKTOP_SIZE = -308
    FENCE = -312
    CONTINUOUS_UPDATES = -313
    CURSOR_WITH_ALPHA = -314
    FINE_QUALITY_LEVEL_0 = -512  # ... -412 is level 100
    FINE_QUALITY_LEVEL_100 = -412
    SUBSAMPLING_1X = -768  # ... -763
    EXTENDED_CLIPBOARD = -1063131698  # 0xC0A1E5CE as S32 (rfbproto "Extended Clipboard Pseudo-Encoding")


def jpeg_quality_level(encoding: int) -> int | None:
    """0-9 for the JPEG quality-level pseudo-encodings, else None."""
    if Encoding.JPEG_QUALITY_LEVEL_0 <= encoding <= Encoding.JPEG_QUALITY_LEVEL_9:
        return encoding - Encoding.JPEG_QUALITY_LEVEL_0
    return None


def compress_level(encoding: int) -> int | None:
    """0-9 for the compression-level pseudo-encodings, else None."""
    if Encoding.COMPRESS_LEVEL_0 <= encoding <= Encoding.COMPRESS_LEVEL_9:
        return encoding - Encoding.COMPRESS_LEVEL_0
    return None

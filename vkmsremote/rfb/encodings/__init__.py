"""RFB rectangle encoders (RFC 6143 section 7.7, rfbproto "Encodings").

An :class:`Encoder` is made per connection and per encoding with :func:`make_encoder`; it keeps that
connection's compression state (the zlib streams of Zlib, ZRLE and Tight live as long as the connection,
RFC 6143 7.7.6). ``encode(frame, rect, pf)`` returns the rectangles to send, each with its encoding number
and the payload that follows the 12-byte rectangle header. An encoder may split a rectangle, and may send
a part as Raw (which every client supports, RFC 6143 7.7.1) when its own encoding would be larger.

``settings`` (quality, compression level, from the client's pseudo-encodings) may be reassigned between
calls, e.g. after a new SetEncodings. Zlib and ZRLE cannot change their zlib level mid-stream (the client
keeps one inflater and there is no reset signal), so they keep the level they started with; Tight resets
the affected stream with the compression-control reset bits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from vkmsremote.frame import Pixels, Rect
from vkmsremote.rfb.constants import Encoding, compress_level, jpeg_quality_level
from vkmsremote.rfb.pixelformat import PixelFormat


@dataclass(frozen=True, slots=True)
class EncoderSettings:
    """What the client asked for with pseudo-encodings (None: not asked).

    quality_level: JPEG quality level 0-9 (-32..-23); enables Tight's JPEG.
    compress_level: compression level 0-9 (-256..-247).
    fine_quality: TigerVNC's fine-grained JPEG quality 0-100 (-512..-412); also enables JPEG.
    subsampling: TigerVNC's JPEG subsampling level, ``encoding - SUBSAMPLING_1X``: 0 = none (4:4:4),
        1 = 4X (4:2:0), 2 = 2X (4:2:2), 3 = grey, 4 = 8X, 5 = 16X (both sent as 4:1:1, the
        coarsest libjpeg-turbo offers).
    """

    quality_level: int | None = None
    compress_level: int | None = None
    fine_quality: int | None = None
    subsampling: int | None = None

    @classmethod
    def from_encodings(cls, encodings: Iterable[int]) -> EncoderSettings:
        """Settings from a SetEncodings list; the first pseudo-encoding of each kind wins."""
        quality = level = fine = sub = None
        for enc in encodings:
            if quality is None:
                quality = jpeg_quality_level(enc)
            if level is None:
                level = compress_level(enc)
            if fine is None and Encoding.FINE_QUALITY_LEVEL_0 <= enc <= Encoding.FINE_QUALITY_LEVEL_100:
                fine = enc - Encoding.FINE_QUALITY_LEVEL_0
            if sub is None and Encoding.SUBSAMPLING_1X <= enc <= Encoding.SUBSAMPLING_1X + 5:
                sub = enc - Encoding.SUBSAMPLING_1X
        return cls(quality, level, fine, sub)


EncodedRect = tuple[Rect, int, bytes]


class Encoder(Protocol):
    settings: EncoderSettings

    def encode(self, frame: Pixels, rect: Rect, pf: PixelFormat) -> list[EncodedRect]:
        """Encode ``frame[rect]`` (rect already clipped to the frame) for a client using ``pf``.

        ``frame`` is the whole (h, w, 4) B, G, R, X frame; ``pf`` is a validated true-colour format.
        """
        ...


def _registry() -> dict[int, Callable[[EncoderSettings], Encoder]]:
    from vkmsremote.rfb.encodings.h264 import H264Encoder, available
    from vkmsremote.rfb.encodings.hextile import HextileEncoder
    from vkmsremote.rfb.encodings.raw import RawEncoder
    from vkmsremote.rfb.encodings.rre import RREEncoder
    from vkmsremote.rfb.encodings.tight import TightEncoder
    from vkmsremote.rfb.encodings.zlibenc import ZlibEncoder
    from vkmsremote.rfb.encodings.zrle import ZRLEEncoder

    registry: dict[int, Callable[[EncoderSettings], Encoder]] = {
        Encoding.RAW: RawEncoder,
        Encoding.RRE: RREEncoder,
        Encoding.HEXTILE: HextileEncoder,
        Encoding.ZLIB: ZlibEncoder,
        Encoding.TIGHT: TightEncoder,
        Encoding.ZRLE: ZRLEEncoder,
    }
    if available():  # PyAV with libx264 (the optional extra vkmsremote[h264])
        registry[Encoding.OPEN_H264] = H264Encoder
    return registry


SUPPORTED: frozenset[int] = frozenset(
    {Encoding.RAW, Encoding.RRE, Encoding.HEXTILE, Encoding.ZLIB, Encoding.TIGHT, Encoding.ZRLE})
"""Encodings for any rectangle. Open H.264 (rfb.encodings.h264, when PyAV is installed) and CopyRect are
used beside one of these, for motion, never as the only encoding of a client."""


def make_encoder(encoding: int, settings: EncoderSettings) -> Encoder | None:
    """A new encoder (with fresh compression state) for ``encoding``, or None if it is not supported."""
    factory = _registry().get(encoding)
    return factory(settings) if factory is not None else None


__all__ = ["SUPPORTED", "EncodedRect", "Encoder", "EncoderSettings", "make_encoder"]

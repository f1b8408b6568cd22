"""Zlib encoding (rfbproto "zlib Encoding"): Raw pixel data through one zlib stream per connection.

Payload: U32 length, then that many bytes of the stream, ended with a sync flush so the client can
inflate the rectangle without waiting for later data.
"""

from __future__ import annotations

import struct
import zlib

from vkmsremote.frame import Pixels, Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.convert import convert
from vkmsremote.rfb.encodings import EncodedRect, EncoderSettings
from vkmsremote.rfb.pixelformat import PixelFormat

DEFAULT_ZLIB_LEVEL = 2
_U32 = struct.Struct(">I")


def zlib_level(settings: EncoderSettings) -> int:
    """zlib level for the compression-level pseudo-encoding: the same number (0-9), default 2."""
    return DEFAULT_ZLIB_LEVEL if settings.compress_level is None else settings.compress_level


class ZlibStream:
    """One connection's deflate stream; its level is fixed when it is first used."""

    def __init__(self) -> None:
        self._deflate: zlib._Compress | None = None

    def compress(self, data: bytes, level: int) -> bytes:
        if self._deflate is None:
            self._deflate = zlib.compressobj(level)
        return self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)


class ZlibEncoder:
    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings
        self._stream = ZlibStream()

    def encode(self, frame: Pixels, rect: Rect, pf: PixelFormat) -> list[EncodedRect]:
        raw = convert(frame[rect.y:rect.y + rect.h, rect.x:rect.x + rect.w], pf)
        data = self._stream.compress(raw, zlib_level(self.settings))
        return [(rect, Encoding.ZLIB, _U32.pack(len(data)) + data)]

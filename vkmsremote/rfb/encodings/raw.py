"""Raw encoding (RFC 6143 7.7.1): the pixels, row by row, in the client's format."""

from __future__ import annotations

from vkmsremote.frame import Pixels, Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.convert import convert
from vkmsremote.rfb.encodings import EncodedRect, EncoderSettings
from vkmsremote.rfb.pixelformat import PixelFormat


def raw_rect(frame: Pixels, rect: Rect, pf: PixelFormat) -> EncodedRect:
    region = frame[rect.y:rect.y + rect.h, rect.x:rect.x + rect.w]
    return rect, Encoding.RAW, convert(region, pf)


class RawEncoder:
    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings

    def encode(self, frame: Pixels, rect: Rect, pf: PixelFormat) -> list[EncodedRect]:
        return [raw_rect(frame, rect, pf)]

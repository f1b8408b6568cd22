"""Our Zlib rectangles decoded by asyncvnc's ``Video`` (its own handshake tail and its one inflater).

asyncvnc understands four 32 bpp formats when the server announces them in ServerInit; each is
announced in turn, so the client decodes in that format without a SetPixelFormat. Its SetEncodings
(Zlib only) is checked to prove the peer runs the configuration the test assumes.
"""

from __future__ import annotations

import asyncio
import struct
import zlib

import numpy as np
import pytest
from asyncvnc import Video

from vkmsremote.frame import Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.convert import convert_array, value_bytes
from vkmsremote.rfb.encodings import EncodedRect, EncoderSettings, make_encoder, samples
from vkmsremote.rfb.pixelformat import NATIVE, PixelFormat

FORMATS = {
    "bgra": NATIVE,
    "rgba": PixelFormat(32, 24, False, True, 255, 255, 255, 0, 8, 16),
    "argb": PixelFormat(32, 24, True, True, 255, 255, 255, 16, 8, 0),
    "abgr": PixelFormat(32, 24, True, True, 255, 255, 255, 0, 8, 16),
}
ZLIB_ONLY = struct.pack(">BxHi", 2, 1, Encoding.ZLIB)  # SetEncodings [6]


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


async def decode(width: int, height: int, pf: PixelFormat, rects: list[EncodedRect]) -> tuple[Video, Sink]:
    reader = asyncio.StreamReader()
    sink = Sink()
    name = b"zlib test"
    reader.feed_data(struct.pack(">HH", width, height) + pf.to_bytes() + struct.pack(">I", len(name)) + name)
    video = await Video.create(reader, sink)
    for r, encoding, payload in rects:
        reader.feed_data(struct.pack(">HHHHi", r.x, r.y, r.w, r.h, encoding) + payload)
        await video.read()
    return video, sink


def colour_bits(pixels: np.ndarray, pf: PixelFormat) -> np.ndarray:
    mask = np.array([(255 << pf.red_shift) | (255 << pf.green_shift) | (255 << pf.blue_shift)], dtype=np.uint32)
    return pixels & value_bytes(mask, pf).reshape(-1)


@pytest.mark.parametrize("mode", sorted(FORMATS))
def test_zlib_rectangles_share_one_stream(mode: str) -> None:
    pf = FORMATS[mode]
    frame = samples.text_like(70, 101)
    frame[40:, 50:] = samples.photo_like(30, 51)
    frame[:10, :10] = samples.noise(10, 10)
    encoder = make_encoder(Encoding.ZLIB, EncoderSettings(compress_level=4))
    assert encoder is not None
    rects = [Rect(0, 0, 101, 1), Rect(0, 1, 101, 39), Rect(3, 40, 1, 1), Rect(50, 40, 51, 30), Rect(0, 41, 50, 29)]
    encoded = [item for rect in rects for item in encoder.encode(frame, rect, pf)]
    assert [e for _, e, _ in encoded] == [Encoding.ZLIB] * len(rects)
    video, sink = asyncio.run(decode(101, 70, pf, encoded))
    assert video.mode == mode  # asyncvnc took the announced format as is
    assert ZLIB_ONLY in bytes(sink.data)
    assert video.data is not None
    for rect in rects:
        got = video.data[rect.y:rect.y + rect.h, rect.x:rect.x + rect.w]
        expected = convert_array(frame[rect.y:rect.y + rect.h, rect.x:rect.x + rect.w], pf)
        assert np.array_equal(colour_bits(got, pf), colour_bits(expected, pf)), rect
    # every rectangle after the first continues the same deflate stream (RFC 6143 7.7.6 / rfbproto zlib)
    with pytest.raises(zlib.error):
        zlib.decompressobj().decompress(encoded[1][2][4:])


def test_zlib_level_is_kept_for_the_stream_lifetime() -> None:
    frame = samples.text_like(40, 60)
    encoder = make_encoder(Encoding.ZLIB, EncoderSettings(compress_level=1))
    assert encoder is not None
    first = encoder.encode(frame, Rect(0, 0, 60, 20), NATIVE)
    encoder.settings = EncoderSettings(compress_level=9)  # a later SetEncodings
    second = encoder.encode(frame, Rect(0, 20, 60, 20), NATIVE)
    video, _ = asyncio.run(decode(60, 40, NATIVE, first + second))
    assert video.data is not None
    assert np.array_equal(video.data[..., :3], frame[..., :3])

"""Our Raw, RRE, Hextile and ZRLE rectangles decoded by vncdotool's RFBClient (pure-Python decoders).

The bytes of a FramebufferUpdate are fed straight into vncdotool's client state machine (its
``dataReceived``), which calls ``updateRectangle``/``fillRectangle``; those paint a canvas in the
client's pixel format, compared exactly with :func:`convert` of the source pixels (colour bits only).
vncdotool's ZRLE decoder only knows 3-byte CPIXELs (32 bpp, depth 24) and keeps one inflater for the
connection, as RFC 6143 7.7.6 requires.
"""

from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import pytest

from vkmsremote.frame import Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.convert import BGR233, convert_array, value_bytes
from vkmsremote.rfb.encodings import EncodedRect, EncoderSettings, make_encoder, samples
from vkmsremote.rfb.pixelformat import NATIVE, PixelFormat

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # vncdotool warns that these hooks may change
    from vncdotool import rfb as vncdotool_rfb

    class DecodingClient(vncdotool_rfb.RFBClient):  # type: ignore[misc]
        """vncdotool's client past the handshake, painting into a numpy canvas."""

        def __init__(self, width: int, height: int, pf: PixelFormat) -> None:
            super().__init__()
            self.pixel_format = vncdotool_rfb.PixelFormat(
                pf.bits_per_pixel, pf.depth, pf.big_endian, pf.true_colour, pf.red_max, pf.green_max,
                pf.blue_max, pf.red_shift, pf.green_shift, pf.blue_shift)
            self.canvas = np.zeros((height, width, pf.bytes_per_pixel), dtype=np.uint8)
            self.updates = 0
            self.errors: list[str] = []
            self._handler = self._handleExpected
            self.expect(self._handleConnection, 1)

        def updateRectangle(self, x: int, y: int, width: int, height: int, data: bytes) -> None:
            pixels = np.frombuffer(data, dtype=np.uint8).reshape(height, width, -1)
            # vncdotool's ZRLE hands out 4-byte pixels (the 3-byte CPIXEL + 0xff)
            self.canvas[y:y + height, x:x + width] = pixels[..., :self.canvas.shape[2]]

        def fillRectangle(self, x: int, y: int, width: int, height: int, color: bytes) -> None:
            self.canvas[y:y + height, x:x + width] = np.frombuffer(color, dtype=np.uint8)[:self.canvas.shape[2]]

        def commitUpdate(self, rectangles: object = None) -> None:
            self.updates += 1

        def vncProtocolError(self, reason: str) -> None:
            self.errors.append(reason)


BGR0 = PixelFormat(32, 24, False, True, 255, 255, 255, 0, 8, 16)
RGB565_LE = PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0)
RGB565_BE = PixelFormat(16, 16, True, True, 31, 63, 31, 11, 5, 0)
FORMATS = {"native": NATIVE, "bgr0": BGR0, "565le": RGB565_LE, "565be": RGB565_BE, "bgr233": BGR233}
CONTENT = {
    "text": lambda h, w: samples.text_like(h, w),
    "photo": lambda h, w: samples.photo_like(h, w),
    "solid": lambda h, w: samples.solid(h, w),
    "noise": lambda h, w: samples.noise(h, w),
}


def update_message(rects: list[EncodedRect]) -> bytes:
    """FramebufferUpdate (RFC 6143 7.6.1): type 0, padding, U16 count, then header + payload per rect."""
    parts = [struct.pack(">BxH", 0, len(rects))]
    for r, encoding, payload in rects:
        parts.append(struct.pack(">HHHHi", r.x, r.y, r.w, r.h, encoding) + payload)
    return b"".join(parts)


def colour_bits(pixels: np.ndarray, pf: PixelFormat) -> np.ndarray:
    """Pixels (h, w, bytes) with the bits that carry no colour cleared."""
    mask_value = np.array([(pf.red_max << pf.red_shift) | (pf.green_max << pf.green_shift)
                           | (pf.blue_max << pf.blue_shift)], dtype=np.uint32)
    return pixels & value_bytes(mask_value, pf).reshape(-1)


def assert_decodes(client: DecodingClient, frame: np.ndarray, rect: Rect, pf: PixelFormat) -> None:
    assert not client.errors
    got = client.canvas[rect.y:rect.y + rect.h, rect.x:rect.x + rect.w]
    expected = convert_array(frame[rect.y:rect.y + rect.h, rect.x:rect.x + rect.w], pf)
    bad = np.argwhere(np.any(colour_bits(got, pf) != colour_bits(expected, pf), axis=-1))
    assert bad.size == 0, f"{len(bad)} pixels differ, first at (y, x) {tuple(bad[0])} of {rect}"


def roundtrip(encoding: int, frame: np.ndarray, rect: Rect, pf: PixelFormat) -> list[EncodedRect]:
    encoder = make_encoder(encoding, EncoderSettings())
    assert encoder is not None
    out = encoder.encode(frame, rect, pf)
    client = DecodingClient(frame.shape[1], frame.shape[0], pf)
    client.dataReceived(update_message(out))
    assert client.updates == 1
    assert_decodes(client, frame, rect, pf)
    return out


@pytest.mark.parametrize("content", sorted(CONTENT))
@pytest.mark.parametrize("pf_name", sorted(FORMATS))
@pytest.mark.parametrize("encoding", [Encoding.RAW, Encoding.RRE, Encoding.HEXTILE], ids=lambda e: e.name)
def test_lossless_roundtrip(encoding: Encoding, pf_name: str, content: str) -> None:
    frame = CONTENT[content](61, 75)
    roundtrip(encoding, frame, Rect(3, 5, 67, 53), FORMATS[pf_name])  # odd size, partial tiles


def test_rre_uses_subrects_for_few_colours_and_raw_for_noise() -> None:
    text = samples.text_like(64, 96)
    out = roundtrip(Encoding.RRE, text, Rect(0, 0, 96, 64), NATIVE)
    assert [e for _, e, _ in out] == [Encoding.RRE]
    assert len(out[0][2]) < 96 * 64 * 4 // 4
    out = roundtrip(Encoding.RRE, samples.noise(20, 20), Rect(0, 0, 20, 20), NATIVE)
    assert [e for _, e, _ in out] == [Encoding.RAW]


def test_hextile_respecifies_foreground_after_coloured_tile() -> None:
    # tile 0: one red subrect (foreground red); tile 1: red and green subrects (SubrectsColoured);
    # tile 2: one red subrect again. vncdotool carries the last coloured subrect's colour (green) into
    # tile 2 unless the foreground is specified again, as RFC 6143 7.7.4 demands.
    frame = samples.solid(16, 48, (255, 255, 255, 0))
    frame[2:5, 2:6] = (0, 0, 255, 0)
    frame[2:5, 18:22] = (0, 0, 255, 0)
    frame[8:10, 26:30] = (0, 255, 0, 0)
    frame[2:5, 34:38] = (0, 0, 255, 0)
    out = roundtrip(Encoding.HEXTILE, frame, Rect(0, 0, 48, 16), NATIVE)
    payload = out[0][2]
    assert payload[0] == 2 | 4 | 8  # background, foreground, subrects
    assert len(payload) < 3 * 16 * 16 * 4  # not raw


@pytest.mark.parametrize("size", [(1, 1), (33, 17), (64, 64), (70, 130)], ids=str)
@pytest.mark.parametrize("content", sorted(CONTENT))
def test_zrle_roundtrip(content: str, size: tuple[int, int]) -> None:
    h, w = size
    frame = CONTENT[content](h + 2, w + 1)
    roundtrip(Encoding.ZRLE, frame, Rect(1, 2, w, h), NATIVE)


def _tile(kind: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    colours = np.array([(0, 0, 0, 0), (255, 255, 255, 0), (0, 0, 200, 0), (0, 150, 0, 0), (90, 10, 200, 0)],
                       dtype=np.uint8)
    if kind == "solid":
        return samples.solid(64, 64)
    if kind == "packed2":  # checkerboard: a run per pixel, two colours
        checkerboard: np.ndarray = colours[np.indices((64, 64)).sum(axis=0) % 2]
        return checkerboard
    if kind == "packed4":
        return colours[rng.integers(0, 3, size=(64, 64))]
    if kind == "packed16":
        return colours[rng.integers(0, 5, size=(64, 64))]
    if kind == "palette_rle":  # two colours, two runs per row
        tile = colours[np.zeros((64, 64), dtype=int)]
        tile[:, 32:] = colours[1]
        return tile
    if kind == "plain_rle":  # a different colour on every row
        tile = np.zeros((64, 64, 4), dtype=np.uint8)
        tile[..., 0] = np.arange(64, dtype=np.uint8)[:, None] * 4
        return tile
    return samples.noise(64, 64)


@pytest.mark.parametrize(("kind", "subencoding"), [
    ("solid", 1), ("packed2", 2), ("packed4", 3), ("packed16", 5), ("palette_rle", 130),
    ("plain_rle", 128), ("raw", 0),
])
def test_zrle_subencodings(kind: str, subencoding: int) -> None:
    frame = _tile(kind)
    out = roundtrip(Encoding.ZRLE, frame, Rect(0, 0, 64, 64), NATIVE)
    (length,) = struct.unpack(">I", out[0][2][:4])
    tiles = zlib.decompressobj().decompress(out[0][2][4:4 + length])
    assert tiles[0] == subencoding


def test_zrle_stream_continues_across_rectangles() -> None:
    frame = samples.text_like(90, 120)
    frame[60:, 60:] = samples.photo_like(30, 60)
    encoder = make_encoder(Encoding.ZRLE, EncoderSettings(compress_level=6))
    assert encoder is not None
    client = DecodingClient(120, 90, NATIVE)
    rects = [Rect(0, 0, 120, 30), Rect(5, 30, 70, 31), Rect(60, 60, 60, 30)]
    payloads = []
    for rect in rects:
        out = encoder.encode(frame, rect, NATIVE)
        payloads.append(out[0][2])
        client.dataReceived(update_message(out))
    assert client.updates == 3
    for rect in rects:
        assert_decodes(client, frame, rect, NATIVE)
    # the second rectangle continues the first one's deflate stream: a fresh inflater cannot read it
    with pytest.raises(zlib.error):
        zlib.decompressobj().decompress(payloads[1][4:])


@pytest.mark.parametrize(("encoding", "height"), [(Encoding.HEXTILE, 300), (Encoding.ZRLE, 600)],
                         ids=["HEXTILE", "ZRLE"])
def test_tall_rectangles_cross_the_encoders_chunks(encoding: Encoding, height: int) -> None:
    # Hextile analyses 256 rows and ZRLE 512 rows at a time; the tile stream must not notice
    frame = samples.text_like(height, 45)
    frame[250:262, 5:40] = (0, 0, 255, 0)  # a solid block across Hextile's chunk boundary
    out = roundtrip(encoding, frame, Rect(0, 0, 45, height), NATIVE)
    assert [e for _, e, _ in out] == [encoding]

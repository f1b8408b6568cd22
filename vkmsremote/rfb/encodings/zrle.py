"""ZRLE encoding (RFC 6143 7.7.6): 64x64 tiles of raw / solid / packed-palette / RLE data, all through
one zlib stream per connection.

Each tile is encoded in whichever of the subencodings is smallest: raw CPIXELs (0), solid (1), packed
palette (2-16 colours, 1/2/4-bit indices, rows padded to a byte), plain RLE (128) or palette RLE (130-255,
up to 127 colours). The choice is computed from the tile's runs (numpy); palettes are only counted on the
run values, and only when a cheap sample shows few colours, so photo-like tiles cost one pass.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.convert import Values, cpixel_bytes, cpixel_size, pixel_values
from vkmsremote.rfb.encodings import EncodedRect, EncoderSettings
from vkmsremote.rfb.encodings.zlibenc import ZlibStream, zlib_level
from vkmsremote.rfb.pixelformat import PixelFormat
from vkmsremote.server.source import Pixels, Rect

TILE = 64
SOLID = 1
PLAIN_RLE = 128
MAX_PACKED_PALETTE = 16
MAX_RLE_PALETTE = 127
_U32 = struct.Struct(">I")
Bytes = npt.NDArray[np.uint8]


def _bits_per_index(colours: int) -> int:
    return 1 if colours <= 2 else 2 if colours <= 4 else 4


def pack_indices(indices: npt.NDArray[np.uint8], bits: int) -> Bytes:
    """(h, w) palette indices -> packed rows, most significant bits first, each row padded to a byte."""
    per_byte = 8 // bits
    h, w = indices.shape
    padded_w = -(-w // per_byte) * per_byte
    if padded_w != w:
        padded = np.zeros((h, padded_w), dtype=np.uint8)
        padded[:, :w] = indices
        indices = padded
    shifts = (np.arange(per_byte - 1, -1, -1, dtype=np.uint8) * bits).astype(np.uint8)
    grouped = indices.reshape(h, padded_w // per_byte, per_byte) << shifts
    packed: Bytes = np.bitwise_or.reduce(grouped, axis=2).astype(np.uint8).reshape(-1)
    return packed


def run_length_bytes(lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Bytes needed for each run length: floor((len - 1) / 255) bytes of 255 and one final byte."""
    return (lengths - 1) // 255 + 1


def _put_lengths(out: Bytes, ends: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]) -> None:
    """Write run lengths whose last byte is at ``ends``; the 255 bytes before it are already in ``out``."""
    out[ends] = ((lengths - 1) % 255).astype(np.uint8)


def encode_tile(flat: Values, w: int, h: int, pf: PixelFormat, cb: int) -> bytes:
    """One tile (values in raster order) in its smallest ZRLE subencoding."""
    n = flat.size
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if starts.size == 0:
        return bytes((SOLID,)) + cpixel_bytes(flat[:1], pf).tobytes()
    starts = np.concatenate(([0], starts))
    runs = starts.size
    lengths = np.diff(starts, append=n)
    len_bytes = run_length_bytes(lengths)
    best = n * cb
    choice = "raw"
    plain_size = runs * cb + int(len_bytes.sum())
    if plain_size < best:
        best, choice = plain_size, "plain"
    palette: Values | None = None
    sample = flat[:: max(1, n // 64)]
    if runs <= n // 2 or np.unique(sample).size <= MAX_PACKED_PALETTE:
        palette = np.unique(flat[starts])
        colours = palette.size
        if colours <= MAX_PACKED_PALETTE:
            row_bytes = -(-w * _bits_per_index(colours) // 8)
            size = colours * cb + row_bytes * h
            if size < best:
                best, choice = size, "packed"
        if colours <= MAX_RLE_PALETTE:
            size = colours * cb + int(np.where(lengths == 1, 1, 1 + len_bytes).sum())
            if size < best:
                best, choice = size, "palette_rle"
    if choice == "raw":
        return bytes((0,)) + cpixel_bytes(flat, pf).tobytes()
    if choice == "plain":
        rec = cb + len_bytes
        offsets = np.concatenate(([0], np.cumsum(rec)[:-1]))
        out = np.full(int(rec.sum()), 255, dtype=np.uint8)
        out[offsets[:, None] + np.arange(cb)] = cpixel_bytes(flat[starts], pf)
        _put_lengths(out, offsets + rec - 1, lengths)
        return bytes((PLAIN_RLE,)) + out.tobytes()
    assert palette is not None
    palette_bytes = cpixel_bytes(palette, pf).tobytes()
    if choice == "packed":
        indices = np.searchsorted(palette, flat).astype(np.uint8).reshape(h, w)
        packed = pack_indices(indices, _bits_per_index(palette.size))
        return bytes((palette.size,)) + palette_bytes + packed.tobytes()
    # palette RLE: index alone for a run of 1, else index | 128 followed by the length
    run_index = np.searchsorted(palette, flat[starts]).astype(np.uint8)
    single = lengths == 1
    rec = np.where(single, 1, 1 + len_bytes)
    offsets = np.concatenate(([0], np.cumsum(rec)[:-1]))
    out = np.full(int(rec.sum()), 255, dtype=np.uint8)
    out[offsets] = np.where(single, run_index, run_index | 128)
    multi = ~single
    _put_lengths(out, (offsets + rec - 1)[multi], lengths[multi])
    return bytes((128 + palette.size,)) + palette_bytes + out.tobytes()


class ZRLEEncoder:
    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings
        self._stream = ZlibStream()

    def encode(self, frame: Pixels, rect: Rect, pf: PixelFormat) -> list[EncodedRect]:
        values = pixel_values(frame[rect.y:rect.y + rect.h, rect.x:rect.x + rect.w], pf)
        cb = cpixel_size(pf)
        tiles: list[bytes] = []
        for y0 in range(0, rect.h, TILE):
            th = min(TILE, rect.h - y0)
            band = values[y0:y0 + th]
            for x0 in range(0, rect.w, TILE):
                tw = min(TILE, rect.w - x0)
                flat = np.ascontiguousarray(band[:, x0:x0 + tw]).reshape(-1)
                tiles.append(encode_tile(flat, tw, th, pf, cb))
        data = self._stream.compress(b"".join(tiles), zlib_level(self.settings))
        return [(rect, Encoding.ZRLE, _U32.pack(len(data)) + data)]

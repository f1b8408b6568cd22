"""ZRLE encoding (RFC 6143 7.7.6): 64x64 tiles of raw / solid / packed-palette / RLE data, all through
one zlib stream per connection.

Each tile is sent in whichever subencoding is smallest: raw CPIXELs (0), solid (1), packed palette
(2-16 colours, 1/2/4-bit indices, rows padded to a byte), plain RLE (128) or palette RLE (130-255, up
to 127 colours). The analysis runs over the whole rectangle at once:

1. the pixel values are reordered tile by tile (a cached permutation per rectangle size), so every
   tile is a contiguous slice in raster order;
2. runs of equal values (never crossing a tile) and their lengths give, per tile, the plain-RLE size;
3. for tiles that are not photo-like (runs for at most half their pixels, or at most 8 colours in a
   16-pixel sample), a sort of (tile, value) keys over the runs gives each tile's palette and each
   run's palette index;
4. sizes of all five subencodings are compared per tile with array arithmetic.

Only the final assembly walks the tiles (at most 510 for 1920x1080), slicing bytes prepared in bulk.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from vkmsremote.frame import Pixels, Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.convert import Values, cpixel_bytes, cpixel_size, pixel_values
from vkmsremote.rfb.encodings import EncodedRect, EncoderSettings
from vkmsremote.rfb.encodings.zlibenc import ZlibStream, zlib_level
from vkmsremote.rfb.pixelformat import PixelFormat

TILE = 64
RAW, SOLID, PLAIN_RLE = 0, 1, 128
MAX_PACKED_PALETTE = 16
MAX_RLE_PALETTE = 127
CHUNK_ROWS = 8 * TILE
_U32 = struct.Struct(">I")
Bytes = npt.NDArray[np.uint8]
Ints = npt.NDArray[np.int64]


def pack_indices(indices: Bytes, bits: int) -> Bytes:
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


@lru_cache(maxsize=4)
def _tiling(width: int, height: int) -> tuple[npt.NDArray[np.signedinteger[Any]], Ints, Ints, Ints,
                                              npt.NDArray[np.int32]]:
    """For a width x height rectangle: (raster index of each tile-major position, tile start offsets
    (tiles + 1), tile widths, tile heights, tile of each tile-major position)."""
    tiles_x, tiles_y = -(-width // TILE), -(-height // TILE)
    tw = np.minimum(TILE, width - np.arange(tiles_x) * TILE)
    th = np.minimum(TILE, height - np.arange(tiles_y) * TILE)
    widths = np.tile(tw, tiles_y).astype(np.int64)
    heights = np.repeat(th, tiles_x).astype(np.int64)
    starts = np.zeros(tiles_x * tiles_y + 1, dtype=np.int64)
    np.cumsum(widths * heights, out=starts[1:])
    y, x = np.indices((height, width))
    tile = (y // TILE) * tiles_x + x // TILE
    local = (y % TILE) * widths[tile] + x % TILE
    index_type = np.int32 if width * height < 2**31 else np.int64  # half the memory for real screens
    perm: npt.NDArray[np.signedinteger[Any]] = np.empty(width * height, dtype=index_type)
    perm[(starts[tile] + local).reshape(-1)] = np.arange(width * height, dtype=index_type)
    tile_of = np.repeat(np.arange(tiles_x * tiles_y, dtype=np.int32), widths * heights)
    return perm, starts, widths, heights, tile_of


def _rle_records(cpixels: Bytes | None, heads: Bytes | None, lengths: Ints, cb: int) -> tuple[Bytes, Ints]:
    """Runs as bytes: a CPIXEL (plain RLE) or an index byte (palette RLE) then the length bytes.

    Palette RLE: ``heads`` holds the index (| 128 when a length follows; runs of 1 have no length).
    Returns the bytes and the offset of every run's record (plus the total at the end).
    """
    extra = (lengths - 1) // 255
    if cpixels is not None:
        head_size = cb
        has_length = np.ones(lengths.size, dtype=bool)
    else:
        head_size = 1
        has_length = lengths > 1
    size = head_size + np.where(has_length, extra + 1, 0)
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(size, out=offsets[1:])
    out = np.full(int(offsets[-1]), 255, dtype=np.uint8)
    if cpixels is not None:
        out[offsets[:-1, None] + np.arange(cb)] = cpixels
    else:
        assert heads is not None
        out[offsets[:-1]] = heads
    last = offsets[1:] - 1
    out[last[has_length]] = ((lengths[has_length] - 1) % 255).astype(np.uint8)
    return out, offsets


def encode_tiles(values: Values, pf: PixelFormat) -> bytes:
    """The uncompressed ZRLE data (all tiles) for a rectangle of client pixel values (h, w)."""
    height, width = values.shape
    cb = cpixel_size(pf)
    perm, tstart, twidth, theight, tile_of = _tiling(width, height)
    ntiles = twidth.size
    n = width * height
    flat = values.reshape(-1)[perm]

    is_start = np.empty(n, dtype=bool)
    is_start[0] = True
    np.not_equal(flat[1:], flat[:-1], out=is_start[1:])
    is_start[tstart[:-1]] = True
    starts = np.flatnonzero(is_start)
    lengths = np.diff(starts, append=n)
    run_tile = tile_of[starts]
    run_value = flat[starts]
    len_bytes = (lengths - 1) // 255 + 1

    pixels = twidth * theight
    runs = np.bincount(run_tile, minlength=ntiles)
    raw_size = pixels * cb
    plain_size = runs * cb + np.bincount(run_tile, weights=len_bytes, minlength=ntiles).astype(np.int64)

    # Palettes for tiles that are not photo-like: distinct (tile, value) pairs among their runs.
    candidate = runs <= pixels // 2
    # ...and tiles whose pixels, sampled at 16 spread positions, show at most 8 colours (dithering)
    sample = flat[tstart[:-1, None] + (pixels[:, None] * np.arange(16)) // 16]
    sample.sort(axis=1)
    candidate |= np.count_nonzero(sample[:, 1:] != sample[:, :-1], axis=1) < 8
    colours = np.full(ntiles, MAX_RLE_PALETTE + 1, dtype=np.int64)
    run_index = np.zeros(starts.size, dtype=np.uint8)  # palette index of each run (candidate tiles)
    palette_of: list[Values] = [np.zeros(0, dtype=np.uint32)] * ntiles
    cand_runs = np.flatnonzero(candidate[run_tile])
    if cand_runs.size:
        key = (run_tile[cand_runs].astype(np.uint64) << np.uint64(32)) | run_value[cand_runs].astype(np.uint64)
        order = np.argsort(key, kind="stable")
        skey = key[order]
        new_colour = np.empty(skey.size, dtype=bool)
        new_colour[0] = True
        np.not_equal(skey[1:], skey[:-1], out=new_colour[1:])
        colour_id = np.cumsum(new_colour) - 1  # global id of the (tile, value) pair
        first_ids = np.flatnonzero(new_colour)
        id_tile = (skey[first_ids] >> np.uint64(32)).astype(np.int64)
        id_value = (skey[first_ids] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        counts = np.bincount(id_tile, minlength=ntiles)
        colours[candidate] = counts[candidate]
        first_id_of_tile = np.zeros(ntiles + 1, dtype=np.int64)
        np.cumsum(counts, out=first_id_of_tile[1:])
        index = colour_id - first_id_of_tile[id_tile[colour_id]]
        ok = index <= MAX_RLE_PALETTE
        run_index[cand_runs[order[ok]]] = index[ok].astype(np.uint8)
        for t in np.flatnonzero(candidate & (colours <= MAX_RLE_PALETTE)).tolist():
            palette_of[t] = id_value[first_id_of_tile[t]:first_id_of_tile[t + 1]]

    big = np.int64(1) << 40
    bits = np.where(colours <= 2, 1, np.where(colours <= 4, 2, 4))
    packed_size = np.where(colours <= MAX_PACKED_PALETTE,
                           colours * cb + -(-twidth * bits // 8) * theight, big)
    rle_cost = np.where(lengths == 1, 1, 1 + len_bytes)
    palette_rle_size = np.where(colours <= MAX_RLE_PALETTE,
                                colours * cb + np.bincount(run_tile, weights=rle_cost,
                                                           minlength=ntiles).astype(np.int64), big)
    sizes = np.stack([raw_size, plain_size, packed_size, palette_rle_size])
    choice = np.argmin(sizes, axis=0)  # 0 raw, 1 plain RLE, 2 packed, 3 palette RLE
    choice[runs == 1] = 4  # solid

    # Bulk byte preparation per kind.
    run_first = np.zeros(ntiles + 1, dtype=np.int64)
    np.cumsum(runs, out=run_first[1:])
    run_choice = choice[run_tile]
    raw_bytes = cpixel_bytes(flat, pf).reshape(-1) if (choice == 0).any() else None
    plain_runs = np.flatnonzero(run_choice == 1)
    plain_bytes, plain_offsets = _rle_records(cpixel_bytes(run_value[plain_runs], pf), None,
                                              lengths[plain_runs], cb)
    prle_runs = np.flatnonzero(run_choice == 3)
    heads = run_index[prle_runs] | np.where(lengths[prle_runs] > 1, 128, 0).astype(np.uint8)
    prle_bytes, prle_offsets = _rle_records(None, heads, lengths[prle_runs], cb)
    # where each tile's runs begin within the plain / palette-RLE run lists
    plain_first = np.searchsorted(plain_runs, run_first)
    prle_first = np.searchsorted(prle_runs, run_first)
    solid_cpixel = cpixel_bytes(run_value[run_first[:-1]], pf) if ntiles else None

    out: list[bytes] = []
    for t, kind in enumerate(choice.tolist()):
        if kind == 4:
            assert solid_cpixel is not None
            out.append(bytes((SOLID,)) + solid_cpixel[t].tobytes())
        elif kind == 0:
            assert raw_bytes is not None
            out.append(bytes((RAW,)) + raw_bytes[tstart[t] * cb:tstart[t + 1] * cb].tobytes())
        elif kind == 1:
            lo, hi = plain_offsets[plain_first[t]], plain_offsets[plain_first[t + 1]]
            out.append(bytes((PLAIN_RLE,)) + plain_bytes[lo:hi].tobytes())
        else:
            palette = palette_of[t]
            head = cpixel_bytes(palette, pf).tobytes()
            if kind == 3:
                lo, hi = prle_offsets[prle_first[t]], prle_offsets[prle_first[t + 1]]
                out.append(bytes((128 + palette.size,)) + head + prle_bytes[lo:hi].tobytes())
            else:
                r0, r1 = run_first[t], run_first[t + 1]
                indices = np.repeat(run_index[r0:r1], lengths[r0:r1]).reshape(int(theight[t]), int(twidth[t]))
                nbits = int(bits[t])
                out.append(bytes((palette.size,)) + head + pack_indices(indices, nbits).tobytes())
    return b"".join(out)


class ZRLEEncoder:
    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings
        self._stream = ZlibStream()

    def encode(self, frame: Pixels, rect: Rect, pf: PixelFormat) -> list[EncodedRect]:
        # Tiles go row of tiles by row of tiles, so CHUNK_ROWS rows at a time give the same stream
        # while bounding the analysis arrays (and the cached tilings) for very large rectangles.
        chunks = []
        for y in range(rect.y, rect.y + rect.h, CHUNK_ROWS):
            h = min(CHUNK_ROWS, rect.y + rect.h - y)
            chunks.append(encode_tiles(pixel_values(frame[y:y + h, rect.x:rect.x + rect.w], pf), pf))
        data = self._stream.compress(b"".join(chunks), zlib_level(self.settings))
        return [(rect, Encoding.ZRLE, _U32.pack(len(data)) + data)]

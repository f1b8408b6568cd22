"""Tight encoding (rfbproto "Tight Encoding"), with TigerVNC's JPEG quality mapping.

A rectangle is cut into column strips at most :data:`STRIP_WIDTH` (512) pixels wide (the spec allows
2048) and each strip into bands of at most :data:`BAND_AREA` pixels. Each band is sent as the cheapest of:

* FillCompression (one TPIXEL) when it is one colour;
* BasicCompression with the PaletteFilter when it has 2..256 colours: 1-bit rows on zlib stream 1
  for two colours, one index byte per pixel on stream 2 otherwise;
* JpegCompression when the client advertised a JPEG quality (quality-level or fine-quality
  pseudo-encoding) and uses 16 or 32 bits per pixel; consecutive JPEG bands of a strip are merged
  into one rectangle, so full-motion video goes out as a few large JPEGs (four for 1920x1080),
  compressed straight from the B, G, R, X frame by libjpeg-turbo, while UI beside a video stays
  lossless;
* BasicCompression with the CopyFilter (TPIXELs on zlib stream 0) otherwise.

Colours are counted on a strided sample (about 256 pixels) first; only bands whose sample has few
colours are counted exactly (one integer sort of the band).

When one call yields several large JPEG rectangles (full motion: one per strip), they are compressed
in parallel threads (libjpeg-turbo through simplejpeg runs without the GIL): the same rectangles and the
same bytes, sooner; the CPU per frame does not change. A JPEG rectangle depends only on the pixels and its
quality and subsampling, so clients sent the same rectangle of the same (read-only) frame share one
compression (:mod:`vkmsremote.rfb.encodings.shared`).

Data shorter than 12 bytes is sent without zlib, as the spec requires. The zlib streams live as long
as the encoder (the connection); when the compression level changes a stream is replaced and the
client is told to reset it with the low bits of the next compression-control byte.
"""

from __future__ import annotations

import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import simplejpeg

from vkmsremote.frame import Pixels, Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.convert import (
    Values,
    pixel_values,
    tpixel_bytes,
    tpixel_bytes_from_frame,
    tpixel_size,
)
from vkmsremote.rfb.encodings import EncodedRect, EncoderSettings
from vkmsremote.rfb.encodings.shared import JPEG_RESULTS
from vkmsremote.rfb.pixelformat import PixelFormat

MAX_WIDTH = 2048  # the spec's limit for any Tight rectangle
STRIP_WIDTH = 512  # narrower strips keep UI beside a video lossless
BAND_AREA = 65536
MAX_JPEG_AREA = 2048 * 2048
MIN_TO_COMPRESS = 12
MAX_COMPACT_LENGTH = 4194303
MAX_PALETTE = 256
SAMPLE_SIDE = 16  # about SAMPLE_SIDE**2 pixels sampled per band
SAMPLE_PALETTE_LIMIT = 64  # a sample with more colours than this is treated as photo-like

FILL = 0x80
JPEG = 0x90
READ_FILTER_ID = 0x40
FILTER_PALETTE = 1
STREAM_FULL, STREAM_MONO, STREAM_INDEXED = 0, 1, 2

# TigerVNC's TightJPEGEncoder table: quality level -> (libjpeg quality, chroma subsampling)
JPEG_QUALITY_LEVELS: tuple[tuple[int, str], ...] = (
    (15, "420"), (29, "420"), (41, "420"), (42, "422"), (62, "422"),
    (77, "422"), (79, "444"), (86, "444"), (92, "444"), (100, "444"),
)
# EncoderSettings.subsampling (TigerVNC's subsampling pseudo-encoding - SUBSAMPLING_1X) -> libjpeg-turbo
SUBSAMPLING = ("444", "420", "422", "Gray", "411", "411")
DEFAULT_SUBSAMPLING = "420"
DEFAULT_ZLIB_LEVEL = 1
JPEG_THREADS = max(1, min(4, (os.cpu_count() or 1) // 2))
"""Threads compressing the JPEG rectangles of one update in parallel (1: in the calling thread). Half the
cores at most: on 2 cores a second JPEG thread took the CPU the compositor needed (the host pipeline
benchmark's driver fell from 55 to 40 flips/s) for an uncertain gain in delivered frames."""
PARALLEL_JPEG_AREA = 128 * 1024
"""JPEG rectangles smaller than this (pixels) are compressed in the calling thread."""

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _jpeg_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(JPEG_THREADS, thread_name_prefix="vkmsremote-jpeg")
        return _pool


def compact_length(n: int) -> bytes:
    """Tight's 1-3 byte length: 7 bits per byte, high bit = more follows; the third byte has 8 bits."""
    if not 0 <= n <= MAX_COMPACT_LENGTH:
        raise ValueError(f"Tight compact length {n} out of range 0..{MAX_COMPACT_LENGTH}")
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes((0x80 | (n & 0x7F), n >> 7))
    return bytes((0x80 | (n & 0x7F), 0x80 | ((n >> 7) & 0x7F), n >> 14))


def jpeg_parameters(settings: EncoderSettings, pf: PixelFormat) -> tuple[int, str] | None:
    """(libjpeg quality, subsampling) for this client, or None when JPEG must not be used."""
    if pf.bits_per_pixel not in (16, 32):
        return None
    level = settings.quality_level
    if level is not None:
        level = min(9, max(0, level))
    if settings.fine_quality is not None:
        quality = min(100, max(1, settings.fine_quality))
    elif level is not None:
        quality = JPEG_QUALITY_LEVELS[level][0]
    else:
        return None
    if settings.subsampling is not None and 0 <= settings.subsampling < len(SUBSAMPLING):
        sub = SUBSAMPLING[settings.subsampling]
    elif level is not None:
        sub = JPEG_QUALITY_LEVELS[level][1]
    else:
        sub = DEFAULT_SUBSAMPLING
    return quality, sub


def _native_values(pixels: Pixels) -> Values:
    return pixels.view(np.uint32).reshape(pixels.shape[:-1]) & np.uint32(0x00FFFFFF)


def _sample_colour_counts(frame: Pixels, bands: list[Rect]) -> npt.NDArray[np.int64]:
    """Distinct colours among SAMPLE_SIDE x SAMPLE_SIDE pixels spread over each band (one numpy pass)."""
    steps = np.arange(SAMPLE_SIDE)
    rows = np.array([b.y + (steps * b.h) // SAMPLE_SIDE for b in bands])  # (bands, side)
    first = bands[0]
    cols = first.x + (steps * first.w) // SAMPLE_SIDE  # all bands of a strip share x and width
    sample = _native_values(frame[rows[:, :, None], cols[None, None, :]]).reshape(len(bands), -1)
    sample.sort(axis=1)
    counts: npt.NDArray[np.int64] = 1 + np.count_nonzero(sample[:, 1:] != sample[:, :-1], axis=1)
    return counts


def _strips(rect: Rect) -> list[Rect]:
    """Column strips of near-equal widths, at most STRIP_WIDTH (<= MAX_WIDTH) pixels each."""
    count = -(-rect.w // STRIP_WIDTH)
    edges = [rect.x + rect.w * i // count for i in range(count + 1)]
    return [Rect(edges[i], rect.y, edges[i + 1] - edges[i], rect.h) for i in range(count)]


class TightEncoder:
    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings
        self._streams: list[zlib._Compress | None] = [None, None, None, None]
        self._levels: list[int] = [0, 0, 0, 0]
        self._pending_reset = 0

    # -- zlib streams ------------------------------------------------------------------------------
    def _zlib_level(self) -> int:
        level = self.settings.compress_level
        return DEFAULT_ZLIB_LEVEL if level is None else min(9, max(0, level))

    def _sync_levels(self) -> None:
        level = self._zlib_level()
        for i, stream in enumerate(self._streams):
            if stream is not None and self._levels[i] != level:
                self._streams[i] = None
                self._pending_reset |= 1 << i

    def _control(self, bits: int) -> bytes:
        byte = bits | self._pending_reset
        self._pending_reset = 0
        return bytes((byte,))

    def _compressed(self, stream: int, data: bytes) -> bytes:
        if len(data) < MIN_TO_COMPRESS:
            return data
        deflate = self._streams[stream]
        if deflate is None:
            self._levels[stream] = self._zlib_level()
            deflate = self._streams[stream] = zlib.compressobj(self._levels[stream])
        out = deflate.compress(data) + deflate.flush(zlib.Z_SYNC_FLUSH)
        return compact_length(len(out)) + out

    # -- rectangles --------------------------------------------------------------------------------
    def encode(self, frame: Pixels, rect: Rect, pf: PixelFormat) -> list[EncodedRect]:
        self._sync_levels()
        jpeg = jpeg_parameters(self.settings, pf)
        # JPEG rectangles are first listed as Rects (their place in the output), compressed at the end.
        out: list[EncodedRect | Rect] = []
        for strip in _strips(rect):
            band_h = max(1, BAND_AREA // strip.w)
            bands = [Rect(strip.x, y, strip.w, min(band_h, strip.y + strip.h - y))
                     for y in range(strip.y, strip.y + strip.h, band_h)]
            sample_colours = _sample_colour_counts(frame, bands)
            jpeg_from: int | None = None  # start row of a pending run of JPEG bands
            for band, colours in zip(bands, sample_colours.tolist(), strict=True):
                pixels = frame[band.y:band.y + band.h, band.x:band.x + band.w]
                encoded = self._encode_lossless(pixels, band, pf, colours, try_palette_only=jpeg is not None)
                if encoded is None:  # photo-like and JPEG allowed
                    if jpeg_from is None:
                        jpeg_from = band.y
                    if (band.y + band.h - jpeg_from) * strip.w > MAX_JPEG_AREA:
                        out.append(Rect(strip.x, jpeg_from, strip.w, band.y - jpeg_from))
                        jpeg_from = band.y
                    continue
                if jpeg_from is not None:
                    out.append(Rect(strip.x, jpeg_from, strip.w, band.y - jpeg_from))
                    jpeg_from = None
                out.append(encoded)
            if jpeg_from is not None:
                out.append(Rect(strip.x, jpeg_from, strip.w, strip.y + strip.h - jpeg_from))
        return self._with_jpegs(frame, out, jpeg)

    def _with_jpegs(self, frame: Pixels, out: list[EncodedRect | Rect],
                    params: tuple[int, str] | None) -> list[EncodedRect]:
        """``out`` with each JPEG placeholder replaced by its rectangle(s), in order."""
        jobs = [item for item in out if isinstance(item, Rect)]
        if not jobs:
            return out  # type: ignore[return-value]  # no placeholders left: all EncodedRects
        assert params is not None
        big = [r for r in jobs if r.area >= PARALLEL_JPEG_AREA]
        done: dict[Rect, list[tuple[Rect, bytes]]] = {}
        if JPEG_THREADS > 1 and len(big) > 1:
            results = _jpeg_pool().map(lambda r: _shared_jpeg_data(frame, r, params), big)
            done = dict(zip(big, results, strict=True))
        encoded: list[EncodedRect] = []
        for item in out:
            if not isinstance(item, Rect):
                encoded.append(item)
                continue
            pieces = done.get(item)
            if pieces is None:
                pieces = _shared_jpeg_data(frame, item, params)
            # The control bytes are made here, in output order, so a pending stream reset goes out with
            # the same rectangle whether or not the JPEG data was compressed in parallel.
            encoded += [(r, Encoding.TIGHT, self._control(JPEG) + compact_length(len(d)) + d) for r, d in pieces]
        return encoded

    def _encode_lossless(self, pixels: Pixels, rect: Rect, pf: PixelFormat, sample_colours: int,
                         try_palette_only: bool) -> EncodedRect | None:
        """Fill, palette, or (unless ``try_palette_only``) full colour; None means "use JPEG"."""
        if sample_colours == 1:
            native = _native_values(pixels)
            if bool((native == native[0, 0]).all()):
                value = pixel_values(pixels[:1, :1], pf).reshape(1)
                return rect, Encoding.TIGHT, self._control(FILL) + tpixel_bytes(value, pf).tobytes()
        if sample_colours <= SAMPLE_PALETTE_LIMIT:
            values = pixel_values(pixels, pf)
            palette = self._palette(values)
            if palette is not None:
                encoded = self._palette_rect(values, palette, rect, pf)
                if encoded is not None:
                    return encoded
        if try_palette_only:
            return None
        return self._full_colour(pixels, rect, pf)

    @staticmethod
    def _palette(values: Values) -> Values | None:
        """The sorted distinct values if there are at most MAX_PALETTE of them, else None."""
        ordered = np.sort(values, axis=None)  # radix sort for integers: cheaper than np.unique
        changes = np.flatnonzero(ordered[1:] != ordered[:-1])
        if changes.size >= MAX_PALETTE:
            return None
        return np.concatenate((ordered[:1], ordered[changes + 1]))

    def _palette_rect(self, values: Values, palette: Values, rect: Rect, pf: PixelFormat) -> EncodedRect | None:
        tp = tpixel_size(pf)
        if palette.size == 1:
            return rect, Encoding.TIGHT, self._control(FILL) + tpixel_bytes(palette, pf).tobytes()
        mono = palette.size == 2
        data_size = (-(-rect.w // 8) * rect.h) if mono else rect.area
        if 2 + palette.size * tp + data_size >= rect.area * tp:
            return None
        if mono:
            # 1 bit per pixel (1 = palette[1]), most significant bit first, rows padded to a byte
            data = np.packbits(values == palette[1], axis=1).tobytes()
            stream = STREAM_MONO
        else:
            data = np.searchsorted(palette, values).astype(np.uint8).tobytes()
            stream = STREAM_INDEXED
        head = self._control((stream << 4) | READ_FILTER_ID) + bytes((FILTER_PALETTE, palette.size - 1))
        body = tpixel_bytes(palette, pf).tobytes() + self._compressed(stream, data)
        return rect, Encoding.TIGHT, head + body

    def _full_colour(self, pixels: Pixels, rect: Rect, pf: PixelFormat) -> EncodedRect:
        data = tpixel_bytes_from_frame(pixels, pf).tobytes()
        head = self._control(STREAM_FULL << 4)
        return rect, Encoding.TIGHT, head + self._compressed(STREAM_FULL, data)



def _shared_jpeg_data(frame: Pixels, rect: Rect, params: tuple[int, str]) -> list[tuple[Rect, bytes]]:
    """:func:`_jpeg_data`, computed once per frame, rectangle and parameters for all clients (rfb.encodings.shared)."""
    return JPEG_RESULTS.get(frame, (rect, params), lambda: _jpeg_data(frame, rect, params))


def _jpeg_data(frame: Pixels, rect: Rect, params: tuple[int, str]) -> list[tuple[Rect, bytes]]:
    """JPEG of ``rect``, halved until each piece fits Tight's length field (thread-safe: no encoder state)."""
    quality, subsampling = params
    pixels = frame[rect.y:rect.y + rect.h, rect.x:rect.x + rect.w]
    data = simplejpeg.encode_jpeg(pixels, quality, "BGRX", subsampling, True)
    if len(data) > MAX_COMPACT_LENGTH:
        if rect.h == 1:
            raise ValueError(f"a one-row JPEG of {rect.w} pixels exceeds Tight's length limit")
        half = rect.h // 2
        return (_jpeg_data(frame, Rect(rect.x, rect.y, rect.w, half), params)
                + _jpeg_data(frame, Rect(rect.x, rect.y + half, rect.w, rect.h - half), params))
    return [(rect, data)]


__all__ = ["TightEncoder", "compact_length", "jpeg_parameters"]

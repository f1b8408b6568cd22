"""Hextile encoding (RFC 6143 7.7.4): 16x16 tiles, each raw or background + subrectangles.

Per tile the subencoding mask says Raw (1), BackgroundSpecified (2), ForegroundSpecified (4),
AnySubrects (8), SubrectsColoured (16). Background and foreground carry over from the previous tile
except after a Raw tile (both) or a SubrectsColoured tile (foreground); we only rely on a carried-over
value when it is valid by those rules. The tile analysis is vectorised over the whole rectangle
(:mod:`._subrects`); only the final byte assembly walks the tiles.
"""

from __future__ import annotations

import numpy as np

from vkmsremote.frame import Pixels, Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.convert import convert_array, pixel_values, value_bytes
from vkmsremote.rfb.encodings import EncodedRect, EncoderSettings
from vkmsremote.rfb.encodings._subrects import decompose
from vkmsremote.rfb.pixelformat import PixelFormat

TILE = 16
RAW = 1
BACKGROUND_SPECIFIED = 2
FOREGROUND_SPECIFIED = 4
ANY_SUBRECTS = 8
SUBRECTS_COLOURED = 16
MAX_SUBRECTS = 255
MAX_RUNS = TILE * TILE // 2
CHUNK_ROWS = 16 * TILE


class HextileEncoder:
    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings

    def encode(self, frame: Pixels, rect: Rect, pf: PixelFormat) -> list[EncodedRect]:
        out: list[bytes] = []
        state: list[int | None] = [None, None]  # carried-over background and foreground, if valid
        # CHUNK_ROWS rows of tiles at a time bound the analysis arrays for very large rectangles.
        for y0 in range(rect.y, rect.y + rect.h, CHUNK_ROWS):
            chunk = Rect(rect.x, y0, rect.w, min(CHUNK_ROWS, rect.y + rect.h - y0))
            self._encode_tiles(frame[chunk.y:chunk.y + chunk.h, chunk.x:chunk.x + chunk.w], pf, state, out)
        return [(rect, Encoding.HEXTILE, b"".join(out))]

    @staticmethod
    def _encode_tiles(region: Pixels, pf: PixelFormat, state: list[int | None], out: list[bytes]) -> None:
        height, width = region.shape[:2]
        bpp = pf.bytes_per_pixel
        values = pixel_values(region, pf)
        # A tile with more than half of its pixels starting runs is photo-like: raw, not analysed.
        sub = decompose(values, TILE, TILE, max_runs=MAX_RUNS)
        pixels = convert_array(region, pf)
        background = sub.background.tolist()
        bg_bytes = value_bytes(sub.background, pf)
        xy = ((sub.x << 4) | sub.y).astype(np.uint8)
        wh = (((sub.w - 1) << 4) | (sub.h - 1)).astype(np.uint8)
        mono_records = np.stack([xy, wh], axis=1).tobytes()
        coloured = np.empty((sub.x.size, bpp + 2), dtype=np.uint8)
        coloured[:, :bpp] = value_bytes(sub.value, pf)
        coloured[:, bpp] = xy
        coloured[:, bpp + 1] = wh
        coloured_records = coloured.tobytes()
        first = sub.first.tolist()
        sub_values = sub.value.tolist()
        analysed = sub.analysed.tolist()
        mono = sub.mono.tolist()

        prev_bg, prev_fg = state
        t = 0
        for y0 in range(0, height, TILE):
            th = min(TILE, height - y0)
            for x0 in range(0, width, TILE):
                tw = min(TILE, width - x0)
                n = first[t + 1] - first[t]
                raw_size = tw * th * bpp
                encoded: bytes | None = None
                if analysed[t] and n <= MAX_SUBRECTS:
                    bg = background[t]
                    mask = 0
                    parts: list[bytes] = []
                    if bg != prev_bg:
                        mask |= BACKGROUND_SPECIFIED
                        parts.append(bg_bytes[t].tobytes())
                    fg = prev_fg
                    if n:
                        mask |= ANY_SUBRECTS
                        lo, hi = first[t], first[t + 1]
                        if mono[t]:
                            fg = sub_values[lo]
                            if fg != prev_fg:
                                mask |= FOREGROUND_SPECIFIED
                                parts.append(coloured[lo, :bpp].tobytes())
                            parts.append(bytes((n,)))
                            parts.append(mono_records[2 * lo:2 * hi])
                        else:
                            mask |= SUBRECTS_COLOURED
                            fg = None
                            parts.append(bytes((n,)))
                            parts.append(coloured_records[(bpp + 2) * lo:(bpp + 2) * hi])
                    body = b"".join(parts)
                    if len(body) < raw_size:
                        encoded = bytes((mask,)) + body
                        prev_bg, prev_fg = bg, fg
                if encoded is None:
                    encoded = bytes((RAW,)) + pixels[y0:y0 + th, x0:x0 + tw].tobytes()
                    prev_bg = prev_fg = None
                out.append(encoded)
                t += 1
        state[:] = [prev_bg, prev_fg]

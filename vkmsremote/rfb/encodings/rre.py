"""RRE encoding (RFC 6143 7.7.3): a background pixel and single-colour subrectangles.

Payload: U32 number-of-subrectangles, background PIXEL, then per subrectangle PIXEL and U16 x, y, w, h.
The background is the value covering most of the rectangle; subrectangles are horizontal runs of other
values merged downwards (see :mod:`._subrects`). When that would be larger than Raw the rectangle is
sent as Raw instead, so RRE never costs more than Raw.
"""

from __future__ import annotations

import struct

import numpy as np

from vkmsremote.frame import Pixels, Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.convert import pixel_values, value_bytes
from vkmsremote.rfb.encodings import EncodedRect, EncoderSettings
from vkmsremote.rfb.encodings._subrects import decompose
from vkmsremote.rfb.encodings.raw import raw_rect
from vkmsremote.rfb.pixelformat import PixelFormat

_U32 = struct.Struct(">I")


class RREEncoder:
    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings

    def encode(self, frame: Pixels, rect: Rect, pf: PixelFormat) -> list[EncodedRect]:
        bpp = pf.bytes_per_pixel
        raw_size = rect.area * bpp
        # Each subrectangle costs bpp + 8 bytes: more than raw_size / (bpp + 8) runs rarely pay off
        # (only if merged vertically), and photo-like content (a run per pixel) is cut off cheaply.
        max_runs = max(1, raw_size // (bpp + 8))
        region = frame[rect.y:rect.y + rect.h, rect.x:rect.x + rect.w]
        # Estimate the runs from every 8th row first, so a big photo-like rectangle goes Raw cheaply.
        sample = pixel_values(region[::8], pf)
        sampled_runs = sample.shape[0] + np.count_nonzero(sample[:, 1:] != sample[:, :-1])
        if sampled_runs * rect.h > 2 * max_runs * sample.shape[0]:
            return [raw_rect(frame, rect, pf)]
        values = pixel_values(region, pf)
        sub = decompose(values, rect.w, rect.h, max_runs)
        n = sub.x.size
        if not sub.analysed[0] or 4 + bpp + n * (bpp + 8) >= raw_size:
            return [raw_rect(frame, rect, pf)]
        records = np.empty((n, bpp + 8), dtype=np.uint8)
        records[:, :bpp] = value_bytes(sub.value, pf)
        geometry = np.stack([sub.x, sub.y, sub.w, sub.h], axis=1).astype(">u2")
        records[:, bpp:] = geometry.view(np.uint8).reshape(n, 8)
        background = value_bytes(sub.background[:1], pf).tobytes()
        return [(rect, Encoding.RRE, _U32.pack(n) + background + records.tobytes())]

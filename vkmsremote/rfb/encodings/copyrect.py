"""CopyRect (RFC 6143 7.7.2): "copy the rectangle at (src_x, src_y) of your framebuffer here".

The payload is the source position, two U16. A client applies the rectangles of an update in order, so a
CopyRect reads what the client shows after the rectangles before it: :func:`ordered` puts the copies
first and drops a copy whose source an earlier copy has overwritten. Which moves exist is found in the
pixels by :mod:`vkmsremote.server.moves` (verified, so exact); what is left of the damage around the
destination goes out with the client's other encoding (:func:`subtract`).
"""

from __future__ import annotations

import struct

from vkmsremote.frame import Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.encodings import EncodedRect

PAYLOAD = struct.Struct(">HH")


def copyrect(dst: Rect, src_x: int, src_y: int) -> EncodedRect:
    return dst, Encoding.COPY_RECT, PAYLOAD.pack(src_x, src_y)


def intersect(a: Rect, b: Rect) -> Rect | None:
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    if x1 <= x0 or y1 <= y0:
        return None
    return Rect(x0, y0, x1 - x0, y1 - y0)


def subtract(rects: list[Rect], cut: Rect) -> list[Rect]:
    """``rects`` without the area of ``cut``: each rectangle it overlaps becomes up to four (the full-width
    bands above and below ``cut``, then the pieces left and right of it)."""
    out: list[Rect] = []
    for r in rects:
        i = intersect(r, cut)
        if i is None:
            out.append(r)
            continue
        if i.y > r.y:
            out.append(Rect(r.x, r.y, r.w, i.y - r.y))
        if i.y + i.h < r.y + r.h:
            out.append(Rect(r.x, i.y + i.h, r.w, r.y + r.h - i.y - i.h))
        if i.x > r.x:
            out.append(Rect(r.x, i.y, i.x - r.x, i.h))
        if i.x + i.w < r.x + r.w:
            out.append(Rect(i.x + i.w, i.y, r.x + r.w - i.x - i.w, i.h))
    return out


def ordered(copies: list[tuple[Rect, int, int]]) -> list[tuple[Rect, int, int]]:
    """Copies (dst, src_x, src_y) in an order a client can apply: each one's source is untouched by the
    destinations before it; a copy that cannot be placed so is dropped (its pixels go out another way)."""
    kept: list[tuple[Rect, int, int]] = []
    for dst, sx, sy in copies:
        src = Rect(sx, sy, dst.w, dst.h)
        if all(intersect(src, d) is None for d, _, _ in kept):
            kept.append((dst, sx, sy))
    return kept


__all__ = ["PAYLOAD", "copyrect", "intersect", "ordered", "subtract"]

"""Per client, update by update: Open H.264, CopyRect from detected moves, or the client's other encoding.

Policy (all thresholds below):

* A client that listed CopyRect, whose framebuffer is known to equal a snapshot (its last update left no
  damage behind and was not H.264), gets the damage searched for a move between that snapshot and the new
  one (:func:`vkmsremote.server.moves.find_move`). A move covering at least MOVE_MIN_FRACTION of the
  damage goes out as a CopyRect first (it reads the client's old frame), then the rest of the damage around
  it with the client's other encoding.
* Otherwise a client that listed Open H.264 gets the whole framebuffer as one H.264 rectangle when the
  damage covers at least VIDEO_MIN_FRACTION of it in this update and the one before (motion: a single
  large change, such as a window opening or a client's first frame, stays lossless). Small changes
  (typing, a cursor) keep the client's other encoding, lossless or JPEG as before. While H.264 is flowing,
  moves are looked for only every DETECT_EVERY-th update (video rarely is a move, and the search costs a
  few ms).
* LOSSLESS_REFRESH seconds after the last H.264 update, once nothing new waits for the client, the whole
  framebuffer is sent once more with the client's other encoding (H.264 is lossy; a still picture should
  not stay so). The session keeps the timer.

The worker-thread part is :func:`encode_update`; :class:`MotionState` is the per-session bookkeeping
(event-loop thread only).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from vkmsremote.frame import Pixels, Rect
from vkmsremote.rfb.encodings import EncodedRect, Encoder
from vkmsremote.rfb.encodings.copyrect import copyrect, subtract
from vkmsremote.rfb.encodings.h264 import fits
from vkmsremote.rfb.messages import Rectangle
from vkmsremote.rfb.pixelformat import PixelFormat
from vkmsremote.server.moves import find_move

VIDEO_MIN_FRACTION = 0.25
"""Damage covering at least this fraction of the framebuffer goes out as H.264 (when the client has it)."""
MOVE_MIN_FRACTION = 0.2
"""A detected move is used when its destination covers at least this fraction of the damage (a dragged
window's move covers about half: the other half is where it was)."""
DETECT_MIN_AREA = 64 * 64
"""Damage smaller than this is not searched for moves."""
DETECT_EVERY = 16
"""While H.264 is flowing, look for moves only every this many updates."""
LOSSLESS_REFRESH = 0.5
"""Seconds after the last H.264 update before the framebuffer is sent again with the other encoding."""


class Kind(enum.Enum):
    PLAIN = "plain"
    COPY = "copy"
    VIDEO = "video"


class VideoEncoder(Protocol):
    """An Open H.264 source for one client: its own stream, or its share of a group's (encodeshare)."""

    def encode_video(self, pixels: Pixels, rect: Rect, serial: int) -> list[EncodedRect]: ...

    def reset(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Choice:
    video: Rect | None
    """Send this rectangle (the whole framebuffer) as H.264, unless a move is found."""
    detect: bool
    """Look for a move (the old frame is the client's view)."""


class MotionState:
    def __init__(self) -> None:
        self.video_updates = 0
        """Consecutive H.264 updates (0: not flowing)."""
        self.large = False
        """The previous update's damage covered at least VIDEO_MIN_FRACTION of the framebuffer."""
        self.refresh_pending = False
        self.counts: dict[Kind, int] = dict.fromkeys(Kind, 0)

    def reset(self) -> None:
        self.video_updates = 0
        self.refresh_pending = False
        self.large = False

    def choose(self, rects: list[Rect], width: int, height: int, *, video: bool, copy: bool) -> Choice:
        area = sum(r.area for r in rects)
        large, self.large = self.large, area >= VIDEO_MIN_FRACTION * width * height
        if self.refresh_pending:  # the lossless refresh after H.264: never H.264 itself
            self.refresh_pending = False
            return Choice(None, False)
        whole = Rect(0, 0, width, height)
        use_video = video and fits(whole) and large and self.large
        detect = copy and area >= DETECT_MIN_AREA and (self.video_updates % DETECT_EVERY == 0)
        return Choice(whole if use_video else None, detect)

    def sent(self, kind: Kind) -> None:
        self.counts[kind] += 1
        self.video_updates = self.video_updates + 1 if kind is Kind.VIDEO else 0


def encode_update(encoder: Encoder, video: VideoEncoder | None, pixels: Pixels, serial: int, old: Pixels | None,
                  rects: list[Rect], pf: PixelFormat, choice: Choice) -> tuple[list[Rectangle], Kind]:
    """Worker-thread part of an update: the rectangles to send and how they were made."""
    kind = Kind.PLAIN
    out: list[EncodedRect] = []
    if choice.detect and old is not None:
        move = find_move(old, pixels, rects)
        if move is not None and move.dst.area >= MOVE_MIN_FRACTION * sum(r.area for r in rects):
            out.append(copyrect(move.dst, move.src_x, move.src_y))  # first: it reads the client's old frame
            rects = subtract(rects, move.dst)
            kind = Kind.COPY
    if kind is Kind.PLAIN and choice.video is not None and video is not None:
        out += video.encode_video(pixels, choice.video, serial)
        kind = Kind.VIDEO
    else:
        for r in rects:
            out += encoder.encode(pixels, r, pf)
    return [Rectangle(r.x, r.y, r.w, r.h, enc, payload) for r, enc, payload in out], kind


__all__ = ["DETECT_EVERY", "LOSSLESS_REFRESH", "VIDEO_MIN_FRACTION", "Choice", "Kind", "MotionState",
           "VideoEncoder", "encode_update"]

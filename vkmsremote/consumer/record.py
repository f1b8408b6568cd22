"""``consume --record FILE``: frames from the consumer socket into a video file through PyAV.

Damage-aware: the picture is kept in one array that only the damaged rectangles are copied into, and a
frame is encoded only when something changed (a static screen costs nothing); timestamps come from the
wall clock, so the video plays at the speed the screen changed.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from vkmsremote.errors import UsageError


class Recorder:
    def __init__(self, path: str, fps: float = 30.0, codec: str = "libx264") -> None:
        try:
            import av
        except ImportError:
            raise UsageError("--record needs PyAV", hint="pip install av") from None
        self._av = av
        self.container = av.open(path, "w")
        self.fps = fps
        self.codec = codec
        self.stream: Any = None
        self.picture: np.ndarray | None = None
        self.started = 0.0
        self.frames = 0
        self._last_pts = -1

    def add(self, picture: np.ndarray, damage: tuple[Any, ...] | None) -> None:
        """``picture``: (h, w, 4) B, G, R, X; ``damage``: what changed since the previous call (None: all)."""
        h, w = picture.shape[:2]
        if self.picture is None or self.picture.shape != picture.shape:
            if self.stream is None:
                from fractions import Fraction

                self.stream = self.container.add_stream(self.codec, rate=Fraction(round(self.fps * 1000), 1000))
                # 4:2:0 codecs need even sizes; ffv1 (lossless) keeps B, G, R as they are.
                self.stream.width, self.stream.height = w - w % 2, h - h % 2
                self.stream.pix_fmt = "bgr0" if self.codec == "ffv1" else "yuv420p"
                self.started = time.monotonic()
            self.picture = np.array(picture)
        elif damage is None:
            np.copyto(self.picture, picture)
        else:
            for r in damage:
                self.picture[r.y:r.y + r.h, r.x:r.x + r.w] = picture[r.y:r.y + r.h, r.x:r.x + r.w]
            if not damage:
                return
        pts = round((time.monotonic() - self.started) * self.fps)
        if pts <= self._last_pts:
            pts = self._last_pts + 1
        self._last_pts = pts
        sw, sh = self.stream.width, self.stream.height
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(self.picture[:sh, :sw]), format="bgra")
        frame.pts = pts
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()

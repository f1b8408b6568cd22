"""Open H.264 encoding (rfbproto "Open H.264 Encoding", number 50), with libx264 through PyAV.

Each rectangle's payload is a U32 length, U32 flags (ResetContext 1, ResetAllContexts 2), then that many
bytes of H.264 in Annex B form (start codes, as noVNC's parser and FFmpeg's expect). The client keeps one
decoder context per rectangle position and size, so this encoder keeps one stream per rectangle: a rectangle
other than the current one starts a new stream (flag ResetAllContexts, so the client drops the old
context), and so does :meth:`H264Encoder.reset` (new client, resize, a client that lost the stream).

Stream format: libx264, ``ultrafast`` + ``zerolatency`` (no B-frames, no look-ahead: every frame comes out
of the encoder at once), constrained Baseline profile, 4:2:0, sequence and picture parameter sets before
every IDR (libx264 repeats headers when there is no global header), BT.601 limited-range colour (what
FFmpeg's swscale converts to by default, declared in the SPS's VUI so browsers decode it so too), one
IDR at the start of a stream
and none after it (a P-frame per update; a client that cannot follow gets a new stream instead).
noVNC configures its WebCodecs decoder from the profile, constraint and level bytes of that SPS.

Quality (documented in docs/benchmarks.md, "Motion"): x264's constant rate factor from the client's
pseudo-encodings. JPEG quality level q (0-9) -> :data:`CRF_BY_LEVEL` [q]; TigerVNC's fine quality f
(0-100) -> round(40 - 22 f / 100); neither -> :data:`DEFAULT_CRF`. The subsampling pseudo-encoding is
not followed: H.264 goes out 4:2:0 (what WebCodecs and TigerVNC's decoder take in every build).

PyAV is an optional extra (``vkmsremote[h264]``): without it :func:`unavailable_reason` says why and the
server does not offer the encoding (``vkmsremote serve --help`` and ``status`` print it).
"""

from __future__ import annotations

import enum
import functools
import os
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np

from vkmsremote.frame import Pixels, Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.encodings import EncodedRect, EncoderSettings
from vkmsremote.rfb.pixelformat import PixelFormat

OPEN_H264 = 50
"""rfbproto "Open H.264 Encoding"."""

HEADER = struct.Struct(">II")
"""U32 length of the H.264 data, U32 flags."""

MAX_SIDE = 4096
"""Largest rectangle side sent as H.264 (level 5.1 covers 4096 x 2304 at 30 fps, 3840 x 1080 at 60)."""

CRF_BY_LEVEL: tuple[int, ...] = (40, 36, 33, 31, 29, 27, 25, 23, 21, 18)
"""x264 constant rate factor per JPEG quality level 0..9 (lower = better, 18 is visually lossless)."""
DEFAULT_CRF = 23
"""Without a quality pseudo-encoding: x264's own default."""

THREADS = 1 if (os.cpu_count() or 1) <= 2 else 2
"""libx264 threads per stream (sliced threads, no extra latency). One on a 2-core machine, where the capture
reader and the compositor need the other core."""


class H264Flags(enum.IntFlag):
    NONE = 0
    RESET_CONTEXT = 1
    RESET_ALL_CONTEXTS = 2


@functools.cache
def unavailable_reason() -> str | None:
    """None if H.264 can be sent; else why not (for ``serve --help``, ``status`` and logs)."""
    try:
        import av
    except ImportError:
        return "PyAV is not installed (pip install 'vkmsremote[h264]')"
    try:
        av.codec.Codec("libx264", "w")
    except Exception:  # PyAV raises its own UnknownCodecError (a ValueError) when FFmpeg lacks the encoder
        return f"PyAV {av.__version__} has no libx264 encoder"
    return None


def available() -> bool:
    return unavailable_reason() is None


HARDWARE_ENCODERS = ("h264_vaapi", "h264_qsv", "h264_nvenc")
"""FFmpeg's hardware H.264 encoders looked for (detected and reported; the stream is libx264's today)."""


def hardware_encoders(dev: Path = Path("/dev/dri")) -> list[str]:
    """Hardware H.264 encoders this PyAV's FFmpeg has, when the machine has a render node for them."""
    if unavailable_reason() is not None or not any(dev.glob("renderD*")):
        return []
    import av

    found = []
    for name in HARDWARE_ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # not built into this FFmpeg
            continue
        found.append(name)
    return found


def describe() -> str:
    """One line for ``serve --help`` and ``status``: whether Open H.264 is offered, and with what."""
    reason = unavailable_reason()
    if reason is not None:
        return f"Open H.264 (encoding 50): not offered: {reason}"
    import av

    hardware = hardware_encoders()
    return (f"Open H.264 (encoding 50): offered to clients that list it (libx264 through PyAV {av.__version__}; "
            f"hardware encoders: {', '.join(hardware) + ' found, not used yet' if hardware else 'none found'})")


def crf_for(settings: EncoderSettings) -> int:
    """The x264 constant rate factor for a client's quality settings (see the module docstring)."""
    if settings.fine_quality is not None:
        return round(40 - 22 * min(max(settings.fine_quality, 0), 100) / 100)
    if settings.quality_level is not None:
        return CRF_BY_LEVEL[min(max(settings.quality_level, 0), 9)]
    return DEFAULT_CRF


def fits(rect: Rect) -> bool:
    """Whether ``rect`` can be one H.264 rectangle: even sides (4:2:0), at least 16, at most MAX_SIDE."""
    return rect.w % 2 == 0 and rect.h % 2 == 0 and 16 <= rect.w <= MAX_SIDE and 16 <= rect.h <= MAX_SIDE


def payload(flags: int, data: bytes) -> bytes:
    return HEADER.pack(len(data), flags) + data


class H264Stream:
    """One libx264 stream for one rectangle size: ``encode(pixels)`` -> (Annex B bytes, is IDR).

    Not thread-safe by itself: one caller at a time (a session's encode, or a shared group under its lock).
    """

    def __init__(self, width: int, height: int, crf: int, *, threads: int = THREADS) -> None:
        import av

        codec: Any = av.CodecContext.create("libx264", "w")
        codec.width, codec.height = width, height
        codec.pix_fmt = "yuv420p"
        codec.thread_count = threads
        codec.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "profile": "baseline",
            "crf": str(crf),
            # One IDR at the start of the stream, then P-frames only: a new client or a lost one gets a
            # new stream (and so a new IDR) instead of periodic key frames every client pays for.
            # The colour description in the SPS says what the conversion did (FFmpeg's swscale: BT.601,
            # limited range); without it Chromium's WebCodecs assumed BT.709 and shifted colours by ~20.
            "x264-params": "keyint=infinite:min-keyint=infinite:scenecut=0:"
                           "colormatrix=smpte170m:colorprim=smpte170m:transfer=smpte170m:range=tv",
        }
        codec.open()
        self._codec = codec
        self._frame_type = av.VideoFrame
        # One input frame, refilled each time: a plane update is one memcpy where from_ndarray cost ~5 ms
        # a 1080p frame. libx264 converts (swscale, to a new frame) and copies before encode returns.
        self._input: Any = av.VideoFrame(width, height, "bgra")
        self._fast = self._input.planes[0].line_size == width * 4
        self.width, self.height, self.crf = width, height, crf
        self.frames = 0

    def encode(self, pixels: Pixels) -> tuple[bytes, bool]:
        """Encode one (height, width, 4) B, G, R, X frame; the first one is an IDR."""
        if not pixels.flags.c_contiguous:
            pixels = np.ascontiguousarray(pixels)
        if self._fast:
            frame = self._input
            frame.planes[0].update(pixels)  # B, G, R, X as BGRA: X is ignored by the YUV conversion
        else:
            frame = self._frame_type.from_ndarray(pixels, format="bgra")
        frame.pts = self.frames
        packets = self._codec.encode(frame)
        data = b"".join(bytes(p) for p in packets)
        idr = self.frames == 0
        self.frames += 1
        if not data:  # zerolatency never holds a frame back; an empty result would desynchronise the client
            raise RuntimeError("libx264 returned no data for a frame (is the encoder buffering?)")
        return data, idr


_ANY_FORMAT = PixelFormat(32, 24, False, True, 255, 255, 255, 16, 8, 0)  # H.264 ignores the pixel format


class H264Encoder:
    """Per-connection Open H.264 encoder: one stream for the current rectangle (see the module docstring).

    ``encode`` must only be given rectangles for which :func:`fits` holds; the session sends everything
    else with its other encoding.
    """

    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings
        self._stream: H264Stream | None = None
        self._rect: Rect | None = None
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Start a new stream (with an IDR and ResetAllContexts) at the next encode."""
        with self._lock:
            self._stream = None

    def encode(self, frame: Pixels, rect: Rect, pf: PixelFormat) -> list[EncodedRect]:
        if not fits(rect):
            raise ValueError(f"{rect} cannot be sent as one H.264 rectangle (sides must be even, 16..{MAX_SIDE})")
        crf = crf_for(self.settings)
        with self._lock:
            flags = H264Flags.NONE
            stream = self._stream
            if stream is None or rect != self._rect or stream.crf != crf:
                stream = self._stream = H264Stream(rect.w, rect.h, crf)
                self._rect = rect
                flags = H264Flags.RESET_ALL_CONTEXTS
            data, _ = stream.encode(frame[rect.y:rect.y + rect.h, rect.x:rect.x + rect.w])
        return [(rect, Encoding.OPEN_H264, payload(flags, data))]

    def encode_video(self, pixels: Pixels, rect: Rect, serial: int) -> list[EncodedRect]:
        """server.motion.VideoEncoder: ``encode`` (a private stream needs no frame serial)."""
        return self.encode(pixels, rect, _ANY_FORMAT)


__all__ = ["CRF_BY_LEVEL", "DEFAULT_CRF", "HEADER", "OPEN_H264", "H264Encoder", "H264Flags", "H264Stream",
           "available", "crf_for", "fits", "payload", "unavailable_reason"]

#!/usr/bin/env python3
"""Encode speed and size of every encoder on synthetic 1920x1080 frames, one core.

Usage: .venv/bin/python scripts/bench_encoders.py [--frames N] [--size WxH] [--encodings raw,tight,...]
                                                [--quality 0-9] [--compress 0-9] [--pf native|565]

Content: "photo" is full motion (every frame differs, photo-like), "text" a static UI/text screen
re-encoded each frame, "solid" one colour. For each encoding and content it prints the mean encode time
per full frame (wall clock and CPU time of this process: on a busy machine the CPU time is the fairer
figure), bytes per frame, and the frame rate the CPU time implies (encoding alone, one core).
Tight is measured lossless ("tight") and with JPEG ("tight-jpeg", quality level --quality, default 6,
noVNC's default: libjpeg quality 79, 4:4:4 as in TigerVNC's table; levels 0-5 use chroma subsampling).
"""

from __future__ import annotations

import argparse
import time

from vkmsremote.frame import Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.encodings import EncoderSettings, make_encoder, samples
from vkmsremote.rfb.pixelformat import NATIVE, PixelFormat

FORMATS = {"native": NATIVE, "565": PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--encodings", default="raw,rre,hextile,zlib,zrle,tight,tight-jpeg")
    parser.add_argument("--content", default="photo,text,solid")
    parser.add_argument("--quality", type=int, default=6)
    parser.add_argument("--compress", type=int, default=None)
    parser.add_argument("--pf", choices=sorted(FORMATS), default="native")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    pf = FORMATS[args.pf]
    frames = max(1, args.frames)
    contents = {
        "photo": [samples.photo_like(height, width, t=i) for i in range(min(frames, 4))],
        "text": [samples.text_like(height, width)],
        "solid": [samples.solid(height, width)],
    }
    rect = Rect(0, 0, width, height)
    print(f"{width}x{height}, client format {args.pf}, {frames} frames each, compress level {args.compress}")
    print(f"{'encoding':<12} {'content':<6} {'wall ms':>8} {'cpu ms':>8} {'bytes/frame':>12} {'fps (cpu)':>10}")
    for name in args.encodings.split(","):
        jpeg = name.endswith("-jpeg")
        encoding = Encoding[name.removesuffix("-jpeg").upper()]
        settings = EncoderSettings(quality_level=args.quality if jpeg else None, compress_level=args.compress)
        for content in args.content.split(","):
            encoder = make_encoder(encoding, settings)
            assert encoder is not None
            pool = contents[content]
            encoder.encode(pool[0], rect, pf)  # warm-up: zlib stream creation, caches
            total_bytes = 0
            start, start_cpu = time.perf_counter(), time.process_time()
            for i in range(frames):
                out = encoder.encode(pool[i % len(pool)], rect, pf)
                total_bytes += sum(12 + len(payload) for _, _, payload in out)
            wall = (time.perf_counter() - start) / frames
            cpu = (time.process_time() - start_cpu) / frames
            print(f"{name:<12} {content:<6} {wall * 1000:8.1f} {cpu * 1000:8.1f} {total_bytes // frames:12d}"
                  f" {1 / max(cpu, 1e-9):10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

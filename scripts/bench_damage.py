#!/usr/bin/env python3
"""Time vkmsremote.capture.damage.DamageTracker.update on 1920x1080 frames.

    .venv/bin/python scripts/bench_damage.py [--size 1920x1080] [--tile 64] [--repeat 60]

Prints the median and 90th percentile milliseconds per frame for: no change, one 64x64 change
(a cursor-sized update), ten scattered 100x30 changes (typing), and every pixel changed (after the
first, these go through the sampled pre-check). Each case runs twice: with nothing else holding the
tracker's frame (it is patched in place), and "held", as in the server, where the hub keeps the last
frame as its snapshot, so every update goes into another buffer brought up to date first.
The source frame is a strided view with a padded pitch, like a mapped framebuffer.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vkmsremote.capture.damage import DamageTracker


def strided_frame(h: int, w: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    pitch = w * 4 + pad
    raw = np.zeros(h * pitch, np.uint8)
    view = np.lib.stride_tricks.as_strided(raw, shape=(h, w, 4), strides=(pitch, 4, 1))
    return raw, view


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1920x1080")
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--repeat", type=int, default=60)
    p.add_argument("--pad", type=int, default=0, help="extra bytes per row in the source (pitch - width*4)")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    _, src = strided_frame(h, w, args.pad)
    src[...] = rng.integers(0, 256, src.shape, dtype=np.uint8)
    tracker = DamageTracker(w, h, tile=args.tile)
    tracker.reset(src)
    frames = [rng.integers(0, 256, (h, w, 4), dtype=np.uint8) for _ in range(2)]

    def no_change(i: int) -> None:
        pass

    def cursor(i: int) -> None:
        x, y = (i * 37) % (w - 64), (i * 23) % (h - 64)
        src[y:y + 64, x:x + 64] ^= 0x55

    def typing(i: int) -> None:
        for k in range(10):
            x, y = (i * 131 + k * 173) % (w - 100), (i * 71 + k * 97) % (h - 30)
            src[y:y + 30, x:x + 100] ^= 0x11

    def full(i: int) -> None:
        src[...] = frames[i % 2]

    cases: list[tuple[str, Callable[[int], None]]] = [
        ("no change", no_change), ("64x64 change", cursor), ("10 x 100x30 changes", typing), ("full change", full),
    ]
    print(f"DamageTracker.update, {w}x{h}, tile {args.tile}, pitch pad {args.pad}, {args.repeat} frames per case")
    for (name, mutate), held in itertools.product(cases, (False, True)):
        times = []
        nrects = 0
        kept = None
        for i in range(args.repeat):
            mutate(i)
            t0 = time.perf_counter()
            rects = tracker.update(src)
            times.append((time.perf_counter() - t0) * 1e3)
            nrects += len(rects)
            kept = tracker.frame if held else None  # the hub's snapshot of this frame
        assert np.array_equal(tracker.frame, src), "stable copy differs from the source"
        times.sort()
        p90 = times[int(len(times) * 0.9) - 1]
        del kept
        name = f"{name}, held" if held else name
        print(f"  {name:28s} median {statistics.median(times):6.2f} ms   p90 {p90:6.2f} ms   "
              f"rects/frame {nrects / args.repeat:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Latency of the consumer socket on this machine, without DRM: from a "flip" to the consumer's event.

    .venv/bin/python scripts/bench_consumer.py [--size 1920x1080] [--frames 600] [--fps 60]

A producer flips between three 1920x1080 XRGB buffers (memfds standing in for dma-bufs) at --fps, each
frame changing a typing-sized region; at each flip it does the tap's per-frame work (copy of the visible
buffer and DamageTracker.update, as CrtcReader does at a full check) and hands the FRAME to the real
ConsumerServer. The consumer is the C example client (clients/c/vkmsr-consume, compiled here), whose
``latency_ns`` is its receive time minus the flip time (both CLOCK_MONOTONIC). Printed: p50/p90/p99 ms,
and the same for a consumer that polls GETCRTC on a 60 Hz timer (modelled: the flip lands uniformly
within a poll period, plus the same work), for the ratio docs/benchmarks.md quotes. What this leaves
out, and the VM test measures for real: the vblank event's wake-up, GETCRTC and the broker round trip.

``--frame-first`` measures what sending the FRAME at the flip, before the tap's copy and damage compare,
would give (the damage would then need a message of its own, which protocol version 1 does not have: the
FRAME sent here carries no rectangles, so this is a measurement of the socket path, not a mode of the
server).
"""

from __future__ import annotations

import argparse
import asyncio
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vkmsremote.capture.damage import DamageTracker
from vkmsremote.consumer.protocol import Buffer, Hello, Mode, Plane, Rect
from vkmsremote.consumer.server import ConsumerServer, bind_socket
from vkmsremote.drm.fourcc import DrmFormat

REPO = Path(__file__).resolve().parent.parent


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def build_client(out: Path) -> Path:
    cc = shutil.which("cc") or "gcc"
    exe = out / "vkmsr-consume"
    subprocess.run([cc, "-O2", "-o", str(exe), str(REPO / "clients/c/vkmsr-consume.c"),
                    str(REPO / "clients/c/vkmsremote-consumer.c")], check=True)
    return exe


async def produce(server: ConsumerServer, w: int, h: int, frames: int, fps: float, frame_first: bool) -> list[float]:
    pitch = w * 4
    buffers = []
    for i in range(3):
        fd = os.memfd_create(f"buf{i}", os.MFD_CLOEXEC)
        os.ftruncate(fd, pitch * h)
        view = np.frombuffer(mmap.mmap(fd, pitch * h), np.uint8).reshape(h, w, 4)
        server.add_buffer(Buffer(i + 1, 40 + i, w, h, DrmFormat.XRGB8888, 0, (Plane(pitch, 0, 0),), 1), (fd,))
        buffers.append(view)
    tracker = DamageTracker(w, h)
    scratch = np.zeros((h, w, 4), np.uint8)
    tracker.reset(scratch)
    rng = np.random.default_rng(0)
    work: list[float] = []
    period = 1 / fps
    next_flip = time.monotonic() + 0.5
    for n in range(frames):
        back = buffers[n % 3]
        x, y = int(rng.integers(0, w - 400)), int(rng.integers(0, h - 40))
        back[y:y + 30, x:x + 400, :3] = n & 0xFF  # a line of "typing"
        await asyncio.sleep(max(0.0, next_flip - time.monotonic()))
        next_flip += period
        flip_ns = time.monotonic_ns()  # the flip: from here the tap works
        if frame_first:
            server.frame(n % 3 + 1, (0, 0, w, h), (), new_buffer=True, vblank_ns=flip_ns)
        np.copyto(scratch, back)
        damage = tracker.update(scratch)
        rects = tuple(Rect(r.x, r.y, r.w, r.h) for r in damage)
        if not frame_first:
            server.frame(n % 3 + 1, (0, 0, w, h), rects, new_buffer=True, vblank_ns=flip_ns)
        work.append((time.monotonic_ns() - flip_ns) / 1e6)
    return work


async def main_async(args: argparse.Namespace) -> None:
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_client(Path(tmp))
        path = Path(tmp) / "XR-0.sock"
        server = ConsumerServer(bind_socket(path, group=None, mode=0o600),
                                Hello("XR-0", "/dev/dri/card0", "Virtual-1", 1, 2, os.getpid(), Mode(w, h, 60000, True)))
        server.start()
        client = await asyncio.create_subprocess_exec(str(exe), str(path), str(args.frames),
                                                      stdout=asyncio.subprocess.PIPE,
                                                      env={**os.environ, "VKMSR_CHECKSUMS": "0"})
        while not server.consumers:
            await asyncio.sleep(0.01)
        work = await produce(server, w, h, args.frames, args.fps, args.frame_first)
        out, _ = await client.communicate()
        await server.close()
    lat = [int(f.split("=")[1]) / 1e6 for line in out.decode().splitlines() if line.startswith("frame ")
           for f in line.split() if f.startswith("latency_ns=")]
    period = 1000 / 60
    rng = np.random.default_rng(1)
    polled = [float(u) + wk for u, wk in zip(rng.uniform(0, period, len(work)), work, strict=True)]
    print(f"{w}x{h}, {len(lat)} frames at {args.fps:g}/s, C consumer on the consumer socket (host, no DRM)"
          + (", FRAME sent before the tap's work" if args.frame_first else ""))
    print(f"  tap work (copy + damage + send): p50 {pct(work, .5):.2f} ms, p99 {pct(work, .99):.2f} ms")
    print(f"  flip -> consumer event:          p50 {pct(lat, .5):.2f} ms, p90 {pct(lat, .9):.2f} ms, "
          f"p99 {pct(lat, .99):.2f} ms")
    print(f"  60 Hz GETCRTC polling (model):   p50 {pct(polled, .5):.2f} ms, p99 {pct(polled, .99):.2f} ms "
          f"(ratio p50 {pct(polled, .5) / pct(lat, .5):.1f}x, p99 {pct(polled, .99) / pct(lat, .99):.1f}x)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1920x1080")
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--fps", type=float, default=60.0)
    p.add_argument("--frame-first", action="store_true", help="send each FRAME before the copy and damage compare")
    asyncio.run(main_async(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

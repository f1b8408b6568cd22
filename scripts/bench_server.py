#!/usr/bin/env python3
"""Full-motion frames per second the VNC server delivers over loopback, per encoding.

Usage: .venv/bin/python scripts/bench_server.py [--seconds 5] [--size 1920x1080]
                                              [--encodings raw,hextile,zlib,zrle,tight,tight-jpeg]
                                              [--tigervnc raw,zrle,tight] [--no-consumer]

The server (this process, its own thread and event loop) serves a PatternSource in full-motion mode
(every pixel changes every frame, generated at up to 240 frames/s so the server is the bottleneck).
Two kinds of client, each in its own process so neither shares the server's interpreter:

* "consume": this script in --consume mode, a minimal RFB client that enables continuous updates and
  walks each rectangle's structure just far enough to skip its payload (no decoding), so the figure is
  what the server can produce and send;
* "tigervnc": TigerVNC's viewer (C++ decoders) under Xvfb, told to prefer one encoding (-AutoSelect=0,
  -NoJPEG unless the row is tight-jpeg); its frame rate comes from the server's session record.

Printed per row: updates (full frames) per second, MB/s on the wire, bytes per frame, and the server
process's CPU use (all cores, 100% = one core) over the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from vkmsremote.rfb.constants import Encoding

ENCODINGS: dict[str, list[int]] = {
    "raw": [Encoding.RAW],
    "rre": [Encoding.RRE],
    "hextile": [Encoding.HEXTILE],
    "zlib": [Encoding.ZLIB],
    "zrle": [Encoding.ZRLE],
    "tight": [Encoding.TIGHT],
    "tight-jpeg": [Encoding.TIGHT, Encoding.JPEG_QUALITY_LEVEL_0 + 8],
}
TIGER_NAMES = {"raw": "Raw", "hextile": "Hextile", "zrle": "ZRLE", "tight": "Tight", "tight-jpeg": "Tight"}


# --- the consuming client (runs in a child process) ------------------------------------------------------


class Skipper:
    """Reads an RFB stream and skips rectangle payloads by their structure (32 bpp, depth 24)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0
        self.total = 0

    def _fill(self, n: int) -> None:
        while len(self.buf) - self.pos < n:
            if self.pos > 1 << 20:
                del self.buf[:self.pos]
                self.pos = 0
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.total += len(chunk)
            self.buf += chunk

    def read(self, n: int) -> bytes:
        self._fill(n)
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def skip(self, n: int) -> None:
        while n > 0:
            have = len(self.buf) - self.pos
            if have == 0:
                self._fill(1)
                continue
            k = min(have, n)
            self.pos += k
            n -= k

    def u8(self) -> int:
        return self.read(1)[0]

    def u32(self) -> int:
        return int(struct.unpack(">I", self.read(4))[0])

    def compact(self) -> int:
        b = self.u8()
        n = b & 0x7F
        if b & 0x80:
            b = self.u8()
            n |= (b & 0x7F) << 7
            if b & 0x80:
                n |= self.u8() << 14
        return n

    def rect(self, w: int, h: int, enc: int) -> None:
        if enc == Encoding.RAW:
            self.skip(w * h * 4)
        elif enc in (Encoding.ZLIB, Encoding.ZRLE):
            self.skip(self.u32())
        elif enc == Encoding.RRE:
            self.skip(4 + self.u32() * 12)  # background, then (pixel + x, y, w, h) per subrect
        elif enc == Encoding.HEXTILE:
            self.hextile(w, h)
        elif enc == Encoding.TIGHT:
            self.tight(w, h)
        elif enc < 0:
            if enc == Encoding.CURSOR_WITH_ALPHA:
                self.skip(4 + w * h * 4)
            elif enc == Encoding.CURSOR:
                self.skip(w * h * 4 + (w + 7) // 8 * h)
            elif enc == Encoding.EXTENDED_DESKTOP_SIZE:
                self.skip(self.read(4)[0] * 16)
            elif enc == Encoding.DESKTOP_NAME:
                self.skip(self.u32())
        else:
            raise ValueError(f"cannot skip encoding {enc}")

    def hextile(self, w: int, h: int) -> None:
        for ty in range(0, h, 16):
            th = min(16, h - ty)
            for tx in range(0, w, 16):
                tw = min(16, w - tx)
                sub = self.u8()
                if sub & 1:
                    self.skip(tw * th * 4)
                    continue
                n = (4 if sub & 2 else 0) + (4 if sub & 4 else 0)
                if n:
                    self.skip(n)
                if sub & 8:
                    count = self.u8()
                    self.skip(count * (6 if sub & 16 else 2))

    def tight(self, w: int, h: int) -> None:
        ctl = self.u8() >> 4
        if ctl == 8:  # fill: one TPIXEL
            self.skip(3)
            return
        if ctl == 9:  # JPEG
            self.skip(self.compact())
            return
        size = w * h * 3
        if ctl & 4:  # explicit filter
            flt = self.u8()
            if flt == 1:  # palette
                n = self.u8() + 1
                self.skip(n * 3)
                size = ((w + 7) // 8) * h if n <= 2 else w * h
        if size < 12:
            self.skip(size)
        else:
            self.skip(self.compact())


def consume(port: int, encodings: list[int], seconds: float) -> dict[str, Any]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s = Skipper(sock)
    s.read(12)
    sock.sendall(b"RFB 003.008\n")
    n = s.u8()
    s.read(n)
    sock.sendall(b"\x01")
    s.u32()
    sock.sendall(b"\x01")
    width, height = struct.unpack(">HH", s.read(4))
    s.read(16)
    s.skip(s.u32())
    encs = [*encodings, Encoding.CONTINUOUS_UPDATES]
    sock.sendall(struct.pack(f">BxH{len(encs)}i", 2, len(encs), *encs))
    sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
    sock.sendall(struct.pack(">BBHHHH", 150, 1, 0, 0, width, height))
    updates = 0
    pixels = 0
    t0 = time.monotonic()
    start_bytes = 0
    while True:
        t = s.u8()
        if t == 150:
            continue
        if t != 0:
            raise ValueError(f"unexpected message {t}")
        s.skip(1)
        (count,) = struct.unpack(">H", s.read(2))
        for _ in range(count):
            _x, _y, w, h, enc = struct.unpack(">HHHHi", s.read(12))
            s.rect(w, h, enc)
            if enc >= 0:
                pixels += w * h
        updates += 1
        now = time.monotonic()
        if updates == 3:  # warm-up: start counting after the first full frames
            t0, start_bytes, pixels_at = now, s.total, pixels
        if updates > 3 and now - t0 >= seconds:
            break
    sock.close()
    elapsed = now - t0
    return {"updates": updates - 3, "seconds": elapsed, "bytes": s.total - start_bytes,
            "frames": (pixels - pixels_at) / (width * height)}


# --- the server side (this process) --------------------------------------------------------------------------


class Server:
    def __init__(self, width: int, height: int) -> None:
        from vkmsremote.server.app import VncServer
        from vkmsremote.server.pattern import PatternSource

        self.loop = asyncio.new_event_loop()
        self.source = PatternSource(width, height, fps=240, full_motion=True, resizable=False)
        self.server = VncServer(self.source, port=0)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    @property
    def port(self) -> int:
        return self.server.port

    def last_record(self) -> Any:
        return self.server.records[-1]


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def row(name: str, client: str, fps: float, mbps: float, per_frame: float, cpu_pct: float) -> str:
    return f"{name:<11} {client:<9} {fps:>8.1f} {mbps:>9.1f} {per_frame / 1e3:>11.0f} {cpu_pct:>8.0f}"


def bench_consume(server: Server, name: str, seconds: float) -> str:
    c0, t0 = cpu(), time.monotonic()
    out = subprocess.run([sys.executable, __file__, "--consume", str(server.port), name, str(seconds)],
                         capture_output=True, text=True, timeout=seconds * 10 + 120)
    c1, t1 = cpu(), time.monotonic()
    if out.returncode != 0:
        return f"{name:<11} consume   failed: {out.stderr.strip().splitlines()[-1:]}"
    r = json.loads(out.stdout)
    fps = r["frames"] / r["seconds"]
    return row(name, "consume", fps, r["bytes"] / r["seconds"] / 1e6, r["bytes"] / max(r["frames"], 1e-9),
               100 * (c1 - c0) / (t1 - t0))


def bench_tigervnc(server: Server, name: str, seconds: float, display: str) -> str:
    args = ["xtigervncviewer", "-display", display, "-AutoSelect=0", "-PreferredEncoding", TIGER_NAMES[name],
            "-SecurityTypes", "None", "-Shared", "-RemoteResize=0", "-FullColor", "-geometry", "+0+0"]
    args += ["-QualityLevel", "8"] if name == "tight-jpeg" else ["-NoJPEG"]
    proc = subprocess.Popen([*args, f"127.0.0.1::{server.port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)  # connect, first frames
        rec = server.last_record()
        u0, b0, c0, t0 = rec.updates, rec.bytes_sent, cpu(), time.monotonic()
        time.sleep(seconds)
        u1, b1, c1, t1 = rec.updates, rec.bytes_sent, cpu(), time.monotonic()
    finally:
        proc.terminate()
        proc.wait(10)
    dt = t1 - t0
    if rec.encoding != ENCODINGS[name][0]:
        return f"{name:<11} tigervnc  wrong encoding chosen: {rec.encoding}"
    return row(name, "tigervnc", (u1 - u0) / dt, (b1 - b0) / dt / 1e6, (b1 - b0) / max(u1 - u0, 1),
               100 * (c1 - c0) / dt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--encodings", default="raw,hextile,zlib,zrle,tight,tight-jpeg")
    parser.add_argument("--tigervnc", default="raw,zrle,tight,tight-jpeg",
                        help="encodings to measure with TigerVNC's viewer ('' for none)")
    parser.add_argument("--consume", nargs=3, metavar=("PORT", "ENCODING", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.consume:
        port, name, seconds = args.consume
        print(json.dumps(consume(int(port), ENCODINGS[name], float(seconds))))
        return 0
    width, height = (int(v) for v in args.size.split("x"))
    server = Server(width, height)
    print(f"full-motion {width}x{height} pattern, {args.seconds:.0f} s per row, {os.cpu_count()} cores")
    print(f"{'encoding':<11} {'client':<9} {'frames/s':>8} {'MB/s':>9} {'KB/frame':>11} {'srv CPU%':>8}")
    for name in [e for e in args.encodings.split(",") if e]:
        print(bench_consume(server, name, args.seconds), flush=True)
    tiger = [e for e in args.tigervnc.split(",") if e]
    if tiger and shutil.which("xtigervncviewer") and shutil.which("Xvfb"):
        r, w = os.pipe()
        xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", f"{width + 64}x{height + 64}x24",
                                 "-nolisten", "tcp"], pass_fds=(w,), stderr=subprocess.DEVNULL)
        os.close(w)
        display = ":" + os.read(r, 100).decode().strip()
        try:
            for name in tiger:
                print(bench_tigervnc(server, name, args.seconds, display), flush=True)
        finally:
            xvfb.terminate()
            xvfb.wait(10)
            os.close(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())

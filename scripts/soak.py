#!/usr/bin/env python3
"""Soak the VNC server: many concurrent clients for minutes against a changing screen, one of them
throttled, one that stops reading, and others that vanish in the middle of an update.

Usage: .venv/bin/python scripts/soak.py [--minutes 10 | --seconds S] [--clients 32] [--size 800x600]
                                        [--fps 15] [--throttle-kbit 1000] [--json]

The server runs in its own process (this script with --serve-child: the library's VncServer over a
PatternSource), so its memory is measured alone; every second it reports its RSS, open file descriptors,
live sessions, asyncio tasks, the hub's clients and each session's transport write buffer. The clients
run here, on one event loop, speaking RFB with a minimal parser that walks each rectangle's structure
(Raw, Zlib and ZRLE in turn) without decoding it:

* ``clients - 2`` normal clients ask for the next incremental update as soon as one has arrived and
  count updates per second;
* one client reads at most ``--throttle-kbit`` kbit/s (1 Mbit/s by default);
* one client stops reading after its first request and only keeps sending incremental requests, so
  its server-side write buffer fills and stays full (the report shows it did); while it is stuck, every
  normal client must keep getting updates (at least a quarter of what the median client gets);
* every ``--churn-interval`` seconds a client connects, asks for a full Raw update and resets the
  connection (SO_LINGER 0) after a part of it, or in the handshake, or mid-message.

At the end every client leaves, and the server must come back to the session, task, hub-client and
file-descriptor counts it had before the first client came. The run fails (exit 1) on a leak, if the
stalled client was not really stalled, or if a normal client starved while it was; frame rates and RSS
are reported, not judged, except with ``--min-fps`` (fail if a normal client's average is below it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import struct
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

RAW, ZLIB, ZRLE = 0, 6, 16
ENCODING_CYCLE = (RAW, ZLIB, ZRLE)


# --- the server child -------------------------------------------------------------------------------------


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


async def serve_child(width: int, height: int, fps: float, trace_after: float | None) -> None:
    from vkmsremote.server.app import VncServer
    from vkmsremote.server.pattern import PatternSource

    source = PatternSource(width, height, fps=fps)
    server = VncServer(source, port=0, max_connections=256)
    await server.start()
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    print(json.dumps({"port": server.port}), flush=True)
    serving = asyncio.ensure_future(server.serve_forever())
    started = time.monotonic()
    first: tracemalloc.Snapshot | None = None
    last: list[tracemalloc.Snapshot] = []
    if trace_after is not None:
        tracemalloc.start(8)
        # SIGUSR1 from the parent: the load is over (clients still connected); compare with the warm-up
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, lambda: last.append(tracemalloc.take_snapshot()))
    try:
        while not serving.done():
            if trace_after is not None and first is None and time.monotonic() - started >= trace_after:
                first = tracemalloc.take_snapshot()
            sessions = server.sessions
            stats = {
                "t": time.monotonic(),
                "rss_kb": _rss_kb(),
                "fds": len(os.listdir("/proc/self/fd")),
                "sessions": len(sessions),
                "tasks": len(asyncio.all_tasks()),
                "task_names": sorted(str(t.get_coro()).split(" at ")[0] for t in asyncio.all_tasks()),
                "hub_clients": len(server.hub.clients),
                "frames": server.hub.frames,
                "writebuf": {s.record.peer: s._writer.transport.get_write_buffer_size() for s in sessions},
                "updates": {s.record.peer: s.record.updates for s in sessions},
            }
            print(json.dumps(stats), flush=True)
            await asyncio.sleep(1.0)
    except asyncio.CancelledError:
        pass
    finally:
        if first is not None:  # where Python-level memory grew between the warm-up and now
            growth = (last[0] if last else tracemalloc.take_snapshot()).compare_to(first, "traceback")[:12]
            top = [{"kib": round(d.size_diff / 1024, 1), "blocks": d.count_diff,
                    "where": [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in d.traceback][-4:]}
                   for d in growth]
            at_end = sum(st.size for st in (last[0] if last else tracemalloc.take_snapshot()).statistics("filename"))
            at_warm = sum(st.size for st in first.statistics("filename"))
            print(json.dumps({"tracemalloc": top, "warm_kib": round(at_warm / 1024), "end_kib": round(at_end / 1024)}),
                  flush=True)
        serving.cancel()
        with contextlib.suppress(BaseException):
            await serving
        await server.close()
        await source.close()


# --- the clients ----------------------------------------------------------------------------------------------


class Stream:
    """An asyncio stream with an optional read rate limit (bytes per second, paced in pieces of 4 KiB)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float | None = None) -> None:
        self.reader, self.writer, self.rate = reader, writer, rate
        self.received = 0
        self._start = time.monotonic()

    async def read(self, n: int) -> bytes:
        if self.rate is None:
            data = await self.reader.readexactly(n)
            self.received += n
            return data
        parts = []
        left = n
        while left:
            ahead = self.received / self.rate - (time.monotonic() - self._start)
            if ahead > 0:
                await asyncio.sleep(ahead)
            chunk = await self.reader.readexactly(min(left, 4096))
            self.received += len(chunk)
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    async def skip(self, n: int) -> None:
        while n:
            chunk = min(n, 1 << 16)
            await self.read(chunk)
            n -= chunk

    async def u8(self) -> int:
        return (await self.read(1))[0]

    async def u16(self) -> int:
        return int(struct.unpack(">H", await self.read(2))[0])

    async def u32(self) -> int:
        return int(struct.unpack(">I", await self.read(4))[0])

    def send(self, data: bytes) -> None:
        self.writer.write(data)


def set_encodings(encodings: list[int]) -> bytes:
    return struct.pack(f">BxH{len(encodings)}i", 2, len(encodings), *encodings)


def update_request(incremental: bool, w: int, h: int) -> bytes:
    return struct.pack(">BBHHHH", 3, int(incremental), 0, 0, w, h)


async def connect(port: int, rate: float | None = None, limit: int = 1 << 16,
                  rcvbuf: int | None = None) -> tuple[Stream, int, int]:
    """Connect and run the handshake (RFB 3.8, security None, shared); returns the stream and the size."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connecting, so the TCP window is negotiated small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
    s = Stream(reader, writer, rate)
    await s.read(12)
    s.send(b"RFB 003.008\n")
    types = await s.read(await s.u8())
    if 1 not in types:
        raise RuntimeError(f"server offers security types {list(types)}, not None")
    s.send(b"\x01")
    if await s.u32() != 0:
        raise RuntimeError("security None failed")
    s.send(b"\x01")
    w, h = await s.u16(), await s.u16()
    await s.read(16)
    await s.read(await s.u32())
    return s, w, h


async def read_message(s: Stream) -> int:
    """Read one server message; returns the pixel-carrying rectangle count if it was a FramebufferUpdate,
    else -1."""
    t = await s.u8()
    if t == 0:
        await s.read(1)
        rects = await s.u16()
        for _ in range(rects):
            _x, _y, w, h, enc = struct.unpack(">HHHHi", await s.read(12))
            if enc == RAW:
                await s.skip(w * h * 4)
            elif enc in (ZLIB, ZRLE):
                await s.skip(await s.u32())
            else:
                raise RuntimeError(f"unexpected rectangle encoding {enc}")
        return rects
    if t == 2:  # Bell
        return -1
    if t == 3:  # ServerCutText
        await s.read(3)
        await s.skip(await s.u32())
        return -1
    raise RuntimeError(f"unexpected server message type {t}")


@dataclass
class ClientStats:
    name: str
    kind: str
    encoding: int
    local_port: int = 0
    updates: list[float] = field(default_factory=list)
    stream: Stream | None = None
    error: str | None = None


async def normal_client(port: int, st: ClientStats, stop: asyncio.Event, rate: float | None = None) -> None:
    s, w, h = await connect(port, rate, limit=16384 if rate else 1 << 16)
    st.stream = s
    st.local_port = s.writer.get_extra_info("sockname")[1]
    s.send(set_encodings([st.encoding]))
    s.send(update_request(False, w, h))
    try:
        while not stop.is_set():
            if await read_message(s) >= 0:
                st.updates.append(time.monotonic())
                s.send(update_request(True, w, h))
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        if not stop.is_set():
            st.error = f"disconnected: {e!r}"
    finally:
        s.writer.close()
        with contextlib.suppress(Exception):
            await s.writer.wait_closed()


async def stalled_client(port: int, st: ClientStats, stop: asyncio.Event) -> None:
    s, w, h = await connect(port, limit=4096, rcvbuf=4096)  # the stream stops reading past 2 * limit
    st.local_port = s.writer.get_extra_info("sockname")[1]
    s.send(set_encodings([RAW]))
    s.send(update_request(False, w, h))
    # From here on nothing is read: the stream's buffer fills, then the kernel's, then the server's.
    try:
        while not stop.is_set():
            s.send(update_request(True, w, h))  # the server must keep reading these
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        s.writer.transport.abort()


def _reset_on_close(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def churn_client(port: int, mode: int) -> None:
    """Connect and vanish abruptly (RST): 0 mid-update, 1 in the handshake, 2 in the middle of a message."""
    if mode == 1:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        _reset_on_close(writer)
        try:
            await reader.readexactly(12)
            writer.write(b"RFB 003.0")
            await writer.drain()
        finally:
            writer.transport.abort()
        return
    s, w, h = await connect(port)
    _reset_on_close(s.writer)
    try:
        s.send(set_encodings([RAW]))
        if mode == 2:
            s.send(b"\x03\x00\x00")  # the first bytes of a FramebufferUpdateRequest
            await s.writer.drain()
            await asyncio.sleep(0.05)
            return
        s.send(update_request(False, w, h))
        await s.read(4 + 12)  # the update's header and its first rectangle's header
        await s.skip(random.randint(1, 64 * 1024))  # part of the pixels, then gone
    finally:
        s.writer.transport.abort()


# --- the run ----------------------------------------------------------------------------------------------------


@dataclass
class ServerMonitor:
    samples: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    trace: dict[str, Any] | None = None

    @property
    def last(self) -> dict[str, Any]:
        return self.samples[-1]


async def read_server(proc: asyncio.subprocess.Process, mon: ServerMonitor, ready: asyncio.Event) -> None:
    assert proc.stdout is not None
    async for line in proc.stdout:
        data = json.loads(line)
        if "port" in data:
            mon.port = data["port"]
            ready.set()
        elif "tracemalloc" in data:
            mon.trace = data
        else:
            mon.samples.append(data)


async def wait_for(mon: ServerMonitor, pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if mon.samples and pred(mon.last):
            return True
        await asyncio.sleep(0.5)
    return False


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    w, h = args.size
    proc = await asyncio.create_subprocess_exec(
        sys.executable, os.path.abspath(__file__), "--serve-child", "--size", f"{w}x{h}", "--fps", str(args.fps),
        *(["--trace-after", str(min(10.0, args.seconds / 4) + 3)] if args.tracemalloc else []),
        stdout=asyncio.subprocess.PIPE, stderr=None if args.server_log else asyncio.subprocess.DEVNULL)
    mon = ServerMonitor()
    ready = asyncio.Event()
    reader_task = asyncio.create_task(read_server(proc, mon, ready))
    stop = asyncio.Event()
    report: dict[str, Any] = {}
    try:
        await asyncio.wait_for(ready.wait(), 60)
        await wait_for(mon, lambda s: len(mon.samples) >= 3, 20)  # idle, every server task started
        baseline = dict(mon.last)
        n_normal = max(args.clients - 2, 1)
        stats = [ClientStats(f"c{i}", "normal", ENCODING_CYCLE[i % len(ENCODING_CYCLE)]) for i in range(n_normal)]
        throttled = ClientStats("throttled", "throttled", RAW)
        stalled = ClientStats("stalled", "stalled", RAW)
        tasks = [asyncio.create_task(normal_client(mon.port, st, stop)) for st in stats]
        tasks.append(asyncio.create_task(normal_client(mon.port, throttled, stop, rate=args.throttle_kbit * 125)))
        tasks.append(asyncio.create_task(stalled_client(mon.port, stalled, stop)))
        t_start = time.monotonic()
        warm = t_start + min(10.0, args.seconds / 4)
        rss_start = None
        churned = 0
        churn_errors = 0
        stall_peak = 0
        stall_since: float | None = None
        next_churn = t_start + args.churn_interval
        while time.monotonic() - t_start < args.seconds:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if rss_start is None and now >= warm and mon.samples:
                rss_start = mon.last["rss_kb"]
            buf = mon.last.get("writebuf", {}).get(f"127.0.0.1:{stalled.local_port}", 0)
            stall_peak = max(stall_peak, buf)
            if stall_since is None and buf >= 256 * 1024:
                stall_since = now
            if now >= next_churn:
                next_churn = now + args.churn_interval
                try:
                    await asyncio.wait_for(churn_client(mon.port, churned % 3), 10)
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    churn_errors += 1
                churned += 1
            if any(t.done() and t.exception() for t in tasks):
                break
        t_end = time.monotonic()
        if args.tracemalloc:
            proc.send_signal(signal.SIGUSR1)
            await asyncio.sleep(3)  # the snapshot takes a moment (and the clients are still connected)
        throttled_bytes = throttled.stream.received if throttled.stream is not None else 0
        rss_end = mon.last["rss_kb"]
        rss_series = [s["rss_kb"] for s in mon.samples if s["t"] >= mon.samples[0]["t"] + (warm - t_start)]
        stop.set()
        await asyncio.wait(tasks, timeout=5)  # the throttled client may be in the middle of a long update
        for t in tasks:
            if not t.done():
                t.cancel()
        client_failures = [repr(t.exception()) for t in tasks if t.done() and not t.cancelled() and t.exception()]
        clean = await wait_for(mon, lambda s: s["sessions"] == 0 and s["hub_clients"] == 0
                               and s["tasks"] <= baseline["tasks"] and s["fds"] <= baseline["fds"], 20)
        after = dict(mon.last)
        if not clean:
            report["tasks_left"] = after.get("task_names")
        span = t_end - warm
        per_client = {st.name: round(sum(1 for t in st.updates if t >= warm) / span, 2) for st in stats}
        normal_fps = list(per_client.values())
        starved: list[str] = []
        stall_counts: dict[str, int] = {}
        if stall_since is not None:
            # Relative, so a machine too loaded to keep the frame rate does not count as a stall: while the
            # stalled client was stuck, every normal client must get updates, and at least a quarter of what
            # the median client got.
            since = max(stall_since, warm)
            stall_counts = {st.name: sum(1 for t in st.updates if since <= t <= t_end) for st in stats}
            median = statistics.median(stall_counts.values())
            starved = [n for n, c in stall_counts.items() if c == 0 or c < median / 4]
        slope = 0.0
        if len(rss_series) >= 4:
            xs = list(range(len(rss_series)))
            slope = statistics.linear_regression(xs, rss_series).slope * 60  # KiB per minute (1 sample/s)
        report |= {
            "seconds": round(t_end - t_start, 1),
            "clients": args.clients,
            "size": f"{w}x{h}",
            "source_fps": args.fps,
            "server_frames_per_s": round((mon.last["frames"] - baseline["frames"]) / max(t_end - t_start, 1e-9), 2),
            "normal_fps": {"min": min(normal_fps), "median": statistics.median(normal_fps), "max": max(normal_fps),
                           "per_client": per_client,
                           "per_encoding": {str(e): round(statistics.mean(
                               [per_client[s.name] for s in stats if s.encoding == e]), 2)
                               for e in ENCODING_CYCLE if any(s.encoding == e for s in stats)}},
            "throttled": {"fps": round(sum(1 for t in throttled.updates if t >= warm) / span, 2),
                          "kbit_per_s": round(throttled_bytes * 8 / 1000 / (t_end - t_start), 1),
                          "limit_kbit_per_s": args.throttle_kbit},
            "stalled": {"server_write_buffer_peak": stall_peak, "stalled_after_s": None if stall_since is None
                        else round(stall_since - t_start, 1)},
            "starved_during_stall": starved,
            "updates_during_stall": {"min": min(stall_counts.values(), default=0),
                                     "median": statistics.median(stall_counts.values()) if stall_counts else 0},
            "churned": churned,
            "churn_errors": churn_errors,
            "client_errors": [f"{s.name}: {s.error}" for s in [*stats, throttled] if s.error] + client_failures,
            "rss_kb": {"start": rss_start, "end": rss_end, "max": max(rss_series, default=rss_end),
                       "per_minute": rss_series[::60],
                       "after_disconnect": after["rss_kb"], "slope_kb_per_min": round(slope, 1)},
            "leak_check": {"clean": clean, "baseline": {k: baseline[k] for k in ("sessions", "tasks", "hub_clients", "fds")},
                           "after": {k: after[k] for k in ("sessions", "tasks", "hub_clients", "fds")}},
        }
        ok = clean and stall_since is not None and not starved and not report["client_errors"]
        if args.min_fps is not None and min(normal_fps) < args.min_fps:
            ok = False
        report["ok"] = ok
        return report
    finally:
        stop.set()
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 20)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(reader_task, 10)  # the server's last words (tracemalloc) come at exit
        reader_task.cancel()
        if mon.trace is not None:
            report["server_tracemalloc"] = mon.trace


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, help="duration in minutes (default 10)")
    p.add_argument("--seconds", type=float, help="duration in seconds (instead of --minutes)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients incl. the throttled and the stalled one")
    p.add_argument("--size", type=_size, default=(800, 600), metavar="WxH", help="pattern size (default 800x600)")
    p.add_argument("--fps", type=float, default=15.0, help="pattern frames per second (default 15)")
    p.add_argument("--throttle-kbit", type=float, default=1000.0, help="the throttled client's read rate")
    p.add_argument("--churn-interval", type=float, default=2.0, help="seconds between abrupt disconnects")
    p.add_argument("--min-fps", type=float, help="fail if a normal client's average frame rate is below this")
    p.add_argument("--server-log", action="store_true", help="show the server's stderr")
    p.add_argument("--json", action="store_true", help="print the report as JSON only")
    p.add_argument("--tracemalloc", action="store_true",
                   help="trace the server's Python allocations; report where they grew after the warm-up")
    p.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--trace-after", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_child:
        with contextlib.suppress(KeyboardInterrupt):
            width, height = args.size
            asyncio.run(serve_child(width, height, args.fps, args.trace_after))
        return 0
    if args.seconds is None:
        args.seconds = 60 * (args.minutes if args.minutes is not None else 10.0)
    report = asyncio.run(soak(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        n = report["normal_fps"]
        r = report["rss_kb"]
        print(f"{report['clients']} clients, {report['seconds']} s, {report['size']} pattern at {report['source_fps']} fps "
              f"(server produced {report['server_frames_per_s']} frames/s)")
        print(f"normal clients fps: min {n['min']} median {n['median']} max {n['max']} "
              f"(by encoding {n['per_encoding']})")
        print(f"throttled: {report['throttled']['fps']} fps at {report['throttled']['kbit_per_s']} kbit/s; stalled: "
              f"server write buffer peak {report['stalled']['server_write_buffer_peak']} bytes, stuck after "
              f"{report['stalled']['stalled_after_s']} s; starved while it was stuck: {report['starved_during_stall'] or 'none'}")
        print(f"server RSS: {r['start']} KiB after warm-up, {r['end']} KiB at the end, max {r['max']}, "
              f"{r['after_disconnect']} after all left; slope {r['slope_kb_per_min']} KiB/min")
        print(f"abrupt disconnects: {report['churned']} ({report['churn_errors']} failed to connect); leak check: "
              f"{report['leak_check']}")
        if report["client_errors"]:
            print(f"client errors: {report['client_errors']}")
        trace = report.get("server_tracemalloc")
        if trace is not None:
            print(f"server Python heap (numpy arrays included): {trace['warm_kib']} KiB after the warm-up, "
                  f"{trace['end_kib']} KiB at the end of the load; largest changes:")
            for t in trace["tracemalloc"][:8]:
                print(f"  {t['kib']:+9.1f} KiB {t['blocks']:+6d} blocks  {' < '.join(reversed(t['where']))}")
        print("OK" if report["ok"] else "FAILED")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

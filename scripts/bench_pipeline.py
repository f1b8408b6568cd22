#!/usr/bin/env python3
"""Host pipeline benchmark: synthetic page flips -> damage -> encode -> loopback client (no VM).

    .venv/bin/python scripts/bench_pipeline.py [--sizes 1920x1080,1024x768] [--workloads all]
        [--encodings tight-jpeg,tight,zrle,raw,h264,copyrect] [--seconds 6] [--warmup 2] [--fps 60] [--quality 8]
        [--clients 1,8] [--json build/bench/pipeline.json] [--plot docs/bench-pipeline.png] [--profile] [--quick]

Three processes per case, so each one's CPU time is its own:
* the driver (python -m vkmsremote.bench.scanout) flips frames of a workload (vkmsremote.bench.workloads)
  between two buffers in /dev/shm on a 60 Hz vblank grid, each frame carrying its frame number;
* the server (python -m vkmsremote.bench.server): the real VncServer over a SyntheticCrtc, which does per
  vblank what CrtcReader does (compare the scanned-out buffer, keep a stable copy, report damage); it
  times its stages (damage, snapshot, encode, send) in CPU seconds;
* the client: scripts/bench_client.c on LibVNCClient, which reads the frame number back from its own
  decoded framebuffer after every update.

Per case it prints: flips/s, delivered frames/s (new frame numbers the client showed), page-flip-to-client
latency p50/p95/p99, server CPU (% of one core, and ms per delivered frame, split by stage), bytes per
frame, and the 1-minute load average (the machine is shared: read the figures with it). The static
workload also measures the server with no client ("idle"). ``--profile`` adds one run of full-motion
Tight-JPEG at the first size under py-spy and prints where the server's samples fall.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vkmsremote.bench import profile as profiler
from vkmsremote.bench.client import ENCODINGS, BenchClient, build_client
from vkmsremote.bench.scanout import I_READY, I_STOP, Scanout, shm_path
from vkmsremote.bench.stats import delivery, load_average, process_cpu, source_version
from vkmsremote.bench.workloads import WORKLOADS

STAGES = ("damage", "snapshot", "encode", "send")
PY = sys.executable


class Case:
    """Driver + server processes around one scanout file."""

    def __init__(self, width: int, height: int, workload: str, fps: float, jpeg_threads: int | None = None) -> None:
        self.path = shm_path("pipeline")
        self.scan = Scanout.create(self.path, width, height)
        self.driver = subprocess.Popen([PY, "-m", "vkmsremote.bench.scanout", str(self.path), workload,
                                        "--fps", str(fps)])
        deadline = time.monotonic() + 60
        while not self.scan.ints[I_READY]:
            if self.driver.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the {workload} driver did not start (exit {self.driver.returncode})")
            time.sleep(0.02)
        argv = [PY, "-m", "vkmsremote.bench.server", str(self.path)]
        if jpeg_threads is not None:
            argv += ["--jpeg-threads", str(jpeg_threads)]
        self.server = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hello = self._read_json()
        if "port" not in hello:
            self.close()
            raise RuntimeError("the benchmark server did not start")
        self.port, self.server_pid = int(hello["port"]), int(hello["pid"])

    def _read_json(self) -> dict[str, Any]:
        assert self.server.stdout is not None
        line = self.server.stdout.readline()
        result: dict[str, Any] = json.loads(line) if line.startswith("{") else {}
        return result

    def stats(self) -> dict[str, Any]:
        assert self.server.stdin is not None and self.server.stdout is not None
        self.server.stdin.write("stats\n")
        self.server.stdin.flush()
        s = self._read_json()
        if "cpu" not in s:
            raise RuntimeError("the benchmark server stopped answering")
        s["driver_cpu"] = process_cpu(self.driver.pid)
        s["load"] = load_average()
        return s

    def close(self) -> None:
        self.scan.ints[I_STOP] = 1
        if getattr(self, "server", None) is not None and self.server.poll() is None:
            try:
                assert self.server.stdin is not None
                self.server.stdin.write("quit\n")
                self.server.stdin.flush()
                self.server.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                self.server.kill()
        try:
            self.driver.wait(10)
        except subprocess.TimeoutExpired:
            self.driver.kill()
        self.path.unlink(missing_ok=True)


def run_case(width: int, height: int, workload: str, encoding: str, args: argparse.Namespace, client: Path,
             profile: Path | None = None) -> dict[str, Any]:
    case = Case(width, height, workload, args.fps, getattr(args, "jpeg_threads", None))
    row: dict[str, Any] = {"size": f"{width}x{height}", "workload": workload, "encoding": encoding}
    try:
        if not WORKLOADS[workload].changes:  # the idle server: nobody connected
            time.sleep(args.warmup)
            a = case.stats()
            time.sleep(args.seconds)
            b = case.stats()
            row["idle_cpu_pct"] = 100 * (b["cpu"] - a["cpu"]) / (b["t"] - a["t"])
        clients = [BenchClient(client, "127.0.0.1", case.port, encoding, args.warmup + args.seconds + 3,
                               quality=args.quality).start() for _ in range(getattr(args, "n_clients", 1))]
        bc = clients[0]
        try:
            for c in clients:
                c.wait_first_update(60)
            time.sleep(args.warmup)
            a = case.stats()
            client_a = sum(process_cpu(c.pid) for c in clients)
            spy = profiler.spy(case.server_pid, args.seconds, profile) if profile is not None else None
            time.sleep(args.seconds)
            b = case.stats()
            client_b = sum(process_cpu(c.pid) for c in clients)
            if spy is not None:
                spy.wait(60)
        finally:
            for c in clients:
                c.stop()
            for c in clients:
                c.wait(10)
        d = delivery(bc.snapshot(), case.scan.log.time_of, a["t"], b["t"])
        if len(clients) > 1:
            row["clients"] = len(clients)
            row["fps_min"] = min(delivery(c.snapshot(), case.scan.log.time_of, a["t"], b["t"]).fps for c in clients)
        dt = b["t"] - a["t"]
        cpu = b["cpu"] - a["cpu"]
        stages = {k: b["stages"].get(k, 0.0) - a["stages"].get(k, 0.0) for k in STAGES}
        stages["other"] = cpu - sum(stages.values())
        sessions = b["sessions"]
        row.update({
            "seconds": dt,
            "flips_per_s": case.scan.log.flips_between(a["t"], b["t"]) / dt,
            "fps": d.fps,
            "frames": d.frames,
            "updates_per_s": d.updates / dt,
            "unreadable": d.unreadable,
            "lat_p50": d.latency(50), "lat_p95": d.latency(95), "lat_p99": d.latency(99),
            "cpu_pct": 100 * cpu / dt,
            "cpu_ms_per_frame": 1e3 * cpu / d.frames if d.frames else math.nan,
            "server_frames": b["frames"] - a["frames"],
            "server_updates": (sessions[-1]["updates"] - a["sessions"][-1]["updates"]) if sessions else 0,
            "bytes_per_frame": d.bytes_per_frame,
            "bytes_per_s": d.bytes / dt,
            "stages_cpu_s": stages,
            "driver_cpu_pct": 100 * (b["driver_cpu"] - a["driver_cpu"]) / dt,
            "client_cpu_pct": 100 * (client_b - client_a) / dt,
            "server_encoding": sessions[-1]["encoding"] if sessions else None,
            "rect_encodings": sessions[-1].get("rect_encodings") if sessions else None,
            "load": (a["load"] + b["load"]) / 2,
            "video_encodes": b.get("video_encodes", 0) - a.get("video_encodes", 0),
        })
    finally:
        case.close()
    return row


def fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


HEADER = (f"{'size':<9} {'workload':<11} {'encoding':<10} {'flips/s':>7} {'fps':>6} {'p50':>6} {'p95':>6} "
          f"{'p99':>6} {'CPU%':>5} {'ms/up':>6} {'KB/fr':>7} | {'damage':>6} {'snap':>5} {'encode':>6} "
          f"{'send':>5} {'other':>5} | {'cli%':>4} {'load':>4}")


def stage_ms_per_update(r: dict[str, Any]) -> dict[str, float]:
    """Server CPU ms per FramebufferUpdate sent, by stage (empty if none was sent). Per update rather than
    per delivered frame: on a busy machine few frames arrive, but each update still costs what it costs."""
    updates = r.get("server_updates", 0)
    if not updates:
        return {}
    per = {k: 1e3 * v / updates for k, v in r.get("stages_cpu_s", {}).items()}
    per["total"] = 10 * r["cpu_pct"] * r["seconds"] / updates
    return per


def label(r: dict[str, Any]) -> str:
    """The encoding, with the number of clients when there were several (e.g. h264 x8)."""
    return r["encoding"] + (f" x{r['clients']}" if r.get("clients", 1) > 1 else "")


def format_row(r: dict[str, Any]) -> str:
    s = stage_ms_per_update(r)
    return (f"{r['size']:<9} {r['workload']:<11} {label(r):<10} {fmt(r.get('flips_per_s'), '7.1f')} "
            f"{fmt(r.get('fps'), '6.1f')} {fmt(r.get('lat_p50'), '6.1f')} {fmt(r.get('lat_p95'), '6.1f')} "
            f"{fmt(r.get('lat_p99'), '6.1f')} {fmt(r.get('cpu_pct'), '5.1f')} "
            f"{fmt(s.get('total'), '6.2f')} {fmt(r.get('bytes_per_frame', math.nan) / 1e3, '7.1f')} | "
            + " ".join(fmt(s.get(k), w) for k, w in (("damage", "6.2f"), ("snapshot", "5.2f"),
                                                      ("encode", "6.2f"), ("send", "5.2f"), ("other", "5.2f")))
            + f" | {fmt(r.get('client_cpu_pct'), '4.0f')} {fmt(r.get('load'), '4.1f')}")


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (docs/benchmarks.md)."""
    out = ["| size | workload | encoding | flips/s | fps | p50 ms | p95 ms | p99 ms | CPU % | CPU ms/update "
           "| damage | snapshot | encode | send | other | KB/frame | client CPU % | load |",
           "|" + "---|" * 18]
    for r in rows:
        s = stage_ms_per_update(r)
        cells = [r["size"], r["workload"], label(r), fmt(r.get("flips_per_s"), ".1f"), fmt(r.get("fps"), ".1f"),
                 fmt(r.get("lat_p50"), ".1f"), fmt(r.get("lat_p95"), ".1f"), fmt(r.get("lat_p99"), ".1f"),
                 fmt(r.get("cpu_pct"), ".1f") + (f" (idle {r['idle_cpu_pct']:.1f})" if "idle_cpu_pct" in r else ""),
                 fmt(s.get("total"), ".2f"), *(fmt(s.get(k), ".2f") for k in (*STAGES, "other")),
                 fmt(r.get("bytes_per_frame", math.nan) / 1e3, ".1f"), fmt(r.get("client_cpu_pct"), ".0f"),
                 fmt(r.get("load"), ".1f")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def aims(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        if (r["workload"] == "full-motion" and r["encoding"] == "tight-jpeg" and r["size"] == "1920x1080"
                and r.get("clients", 1) == 1):
            ok = r["fps"] >= 60 and r["cpu_pct"] <= 100
            per = stage_ms_per_update(r).get("total", math.nan)
            out.append(f"{'MET ' if ok else 'MISS'} full-motion 1080p Tight-JPEG >= 60 fps on <= 1 core: "
                       f"{r['fps']:.1f} fps at {r['cpu_pct']:.0f} % CPU (load {r['load']:.1f}); "
                       f"{per:.1f} CPU ms per update = at most {1000 / per:.0f} updates/s on one core")
        if WORKLOADS[r["workload"]].small and r["encoding"] == "tight-jpeg":
            ok = r["lat_p50"] <= 20
            out.append(f"{'MET ' if ok else 'MISS'} small-damage latency p50 <= 20 ms ({r['workload']} {r['size']}): "
                       f"{r['lat_p50']:.1f} ms")
        per = stage_ms_per_update(r).get("total", math.nan)
        kb = r.get("bytes_per_frame", math.nan) / 1e3
        if r["workload"] == "full-motion" and r["encoding"] == "h264" and r.get("clients", 1) == 1:
            if r["size"] == "1920x1080":
                ok = r["fps"] >= 55 and r["cpu_pct"] <= 100 and kb <= 60 and r["lat_p50"] <= 25
                out.append(f"{'MET ' if ok else 'MISS'} full-motion 1080p H.264 >= 55 fps, <= 1 core, <= 60 KB/frame, "
                           f"p50 <= 25 ms: {r['fps']:.1f} fps, {r['cpu_pct']:.0f} % CPU, {kb:.1f} KB/frame, "
                           f"p50 {r['lat_p50']:.1f} ms (load {r['load']:.1f})")
            if r["size"] == "3840x1080":
                ok = r["fps"] >= 30
                out.append(f"{'MET ' if ok else 'MISS'} full-motion 3840x1080 H.264 >= 30 fps: {r['fps']:.1f} fps at "
                           f"{r['cpu_pct']:.0f} % CPU (load {r['load']:.1f})")
        if r["workload"] == "scrolling" and r["encoding"] == "copyrect" and r["size"] == "1920x1080":
            ok = r["fps"] >= 55 and per <= 32 / 3
            out.append(f"{'MET ' if ok else 'MISS'} scrolling 1080p CopyRect >= 55 fps, <= 10.7 CPU ms per update: "
                       f"{r['fps']:.1f} fps, {per:.2f} ms (load {r['load']:.1f})")
        if r.get("clients", 1) > 1:
            one = next((o for o in rows if o.get("clients", 1) == 1 and
                        (o["size"], o["workload"], o["encoding"]) == (r["size"], r["workload"], r["encoding"])), None)
            if one is not None:
                ratio = r["cpu_pct"] / one["cpu_pct"]
                out.append(f"{'MET ' if ratio <= 1.5 else 'MISS'} {r['clients']} clients ({r['workload']} {r['size']} "
                           f"{r['encoding']}) server CPU <= 1.5x one client's: {r['cpu_pct']:.0f} % vs "
                           f"{one['cpu_pct']:.0f} % = {ratio:.2f}x; slowest client {r['fps_min']:.1f} fps, "
                           f"{r['video_encodes']} H.264 encodes for {r['server_frames']} frames")
        if "idle_cpu_pct" in r:
            for key, what in (("idle_cpu_pct", "no client"), ("cpu_pct", "client connected, screen static")):
                ok = r[key] < 1
                out.append(f"{'MET ' if ok else 'MISS'} idle CPU < 1 % ({what}, {r['size']}): {r[key]:.2f} %")
    return out


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (timeout(1), a test's kill) unwinds like Ctrl-C, so every child process and file is cleaned up.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", help="comma-separated WxH (default 1920x1080,1024x768)")
    p.add_argument("--workloads", default="all", help=f"comma-separated: {', '.join(WORKLOADS)} (default all)")
    p.add_argument("--encodings", help=f"of {', '.join(ENCODINGS)} (default tight-jpeg,tight,zrle,raw)")
    p.add_argument("--seconds", type=float, help="measurement window per case (default 6)")
    p.add_argument("--warmup", type=float, help="seconds connected before the window (default 2)")
    p.add_argument("--fps", type=float, default=60.0, help="page flips per second (vblank grid: 60 Hz)")
    p.add_argument("--quality", type=int, default=8, help="JPEG quality level for tight-jpeg (0-9)")
    p.add_argument("--jpeg-threads", type=int,
                   help="threads for Tight's parallel JPEG (default: the server's, half the cores, at most 4); 1 = serial")
    p.add_argument("--clients", default="1",
                   help="comma-separated client counts per case, e.g. 1,8 (all with the same settings)")
    p.add_argument("--json", type=Path, help="write all rows as JSON here")
    p.add_argument("--plot", type=Path, help="write a PNG plot here (matplotlib)")
    p.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    p.add_argument("--from-json", type=Path, help="no measuring: redo the report, plot and Markdown of a --json file")
    p.add_argument("--profile", action="store_true",
                   help="also profile the server with py-spy on full-motion Tight-JPEG at the first size")
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: by default 1024x768, tight-jpeg, 1 s windows after 0.5 s")
    args = p.parse_args(argv)
    defaults: dict[str, Any] = {"sizes": "1920x1080,1024x768", "encodings": "tight-jpeg,tight,zrle,raw",
                                "seconds": 6.0, "warmup": 2.0}
    if args.quick:
        defaults = {"sizes": "1024x768", "encodings": "tight-jpeg", "seconds": 1.0, "warmup": 0.5}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    workloads = list(WORKLOADS) if args.workloads == "all" else args.workloads.split(",")
    encodings = [e for e in args.encodings.split(",") if e]
    for name in workloads:
        if name not in WORKLOADS:
            p.error(f"unknown workload {name}")
    for e in encodings:
        if e not in ENCODINGS:
            p.error(f"unknown encoding {e}")
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        report(saved["rows"], saved.get("profile", []), args)
        return 0
    client = build_client()
    print(f"host pipeline benchmark: {os.cpu_count()} cores, nice {os.nice(0)}, load {load_average():.2f} at start, "
          f"{args.fps:g} flips/s, {args.seconds:g} s windows after {args.warmup:g} s warm-up, "
          f"JPEG quality level {args.quality}"
          + (f", {args.jpeg_threads} JPEG threads" if args.jpeg_threads is not None else "")
          + f"; tree {source_version()}")
    print("fps = new frame numbers shown by the client per second; p50/p95/p99 = flip-to-client ms; "
          "CPU% = server process (100 = one core); ms/up = server CPU ms per update sent, then split by stage; "
          "KB/fr = bytes received per delivered frame; cli% = client CPU; load = 1-min load average")
    print(HEADER, flush=True)
    rows: list[dict[str, Any]] = []
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        for workload in workloads:
            for encoding in (encodings if WORKLOADS[workload].changes else encodings[:1]):
                for n_clients in (int(n) for n in args.clients.split(",")):
                    args.n_clients = n_clients
                    row = run_case(width, height, workload, encoding, args, client)
                    rows.append(row)
                    print(format_row(row), flush=True)
                if "idle_cpu_pct" in row:
                    print(f"{'':<9} {'(idle: server CPU with no client connected ' + fmt(row['idle_cpu_pct'], '.2f') + ' %)'}",
                          flush=True)
    profile_lines: list[str] = []
    if args.profile:
        width, height = (int(v) for v in args.sizes.split(",")[0].split("x"))
        for workload in ("full-motion", "static"):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "profile.txt"
                row = run_case(width, height, workload, "tight-jpeg", args, client, profile=out)
                lines = [f"py-spy, server during the window: {workload} {width}x{height} tight-jpeg, client "
                         f"connected ({row['fps']:.1f} fps, {row['cpu_pct']:.1f} % CPU while sampled)",
                         *profiler.summarize(out)]
            print("\n".join(lines), flush=True)
            profile_lines += lines
    print(f"load {load_average():.2f} at the end")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "profile": profile_lines, "args": vars(args),
                                         "source": source_version()},
                                        indent=1, default=str))
    report(rows, profile_lines, args)
    return 0


def report(rows: list[dict[str, Any]], profile_lines: list[str], args: argparse.Namespace) -> None:
    if args.from_json:
        print(HEADER)
        print("\n".join(format_row(r) for r in rows))
        print("\n".join(profile_lines))
    for line in aims(rows):
        print(line)
    if args.markdown:
        args.markdown.write_text(markdown(rows))
        print(f"Markdown table written to {args.markdown}")
    if args.plot:
        from vkmsremote.bench.plot import plot_pipeline

        plot_pipeline(rows, args.plot)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    sys.exit(main())

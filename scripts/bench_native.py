#!/usr/bin/env python3
"""Native side by side: vkmsremote, x11vnc, TigerVNC's x0vncserver and Xvnc on the same screen, same client.

    .venv/bin/python scripts/bench_native.py [--sizes 1920x1080:tight-jpeg,zrle 1024x768:tight-jpeg]
        [--workloads all] [--repeats 3] [--seconds 1.5] [--warmup 0.5] [--fps 30] [--profile]
        [--json build/bench/native.json] [--plot docs/bench-native.png] [--markdown build/bench/native.md]
        [--quick] [--from-json FILE]

On this machine, no VM. Per size: one Xvfb with ``-fbdir`` (its screen is a memory-mapped XWD file that X
draws into in place, as Xorg draws into a scanned-out dumb buffer); on that screen, all at once but
measured one at a time: ``vkmsremote serve --source xwd:FBDIR/Xvfb_screen0``, x11vnc (Debian defaults
plus ``-ncache 0``) and TigerVNC's scraping server (X0tigervnc, what Debian's x0vncserver wrapper runs;
defaults). Beside it TigerVNC's Xvnc, an X server of its own that knows X's damage: the best case.
Each workload is drawn by python -m vkmsremote.bench.xdraw into Xvfb and, by a second drawer, into Xvnc;
only the drawer of the X server under test runs (the other is stopped with SIGSTOP). The measuring
client (scripts/bench_client.c, LibVNCClient) connects to one server at a time for each encoding; every
pairing is repeated ``--repeats`` times with the servers' order rotated each time. Reported per
workload and encoding: the median and spread (min-max) over the repeats of delivered fps, latency, the
server's CPU, the X server's CPU (Xvfb, where the server makes X copy the screen for it: x11vnc's and
x0vncserver's XShmGetImage), bytes per frame; idle CPU; and the ratios vkmsremote / peer.

The CPU that other processes use during each window (``foreign``) is measured from /proc/stat: a run
whose median foreign load exceeds LOADED_PCT says so in its report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from vkmsremote.bench import profile as profiler
from vkmsremote.bench.client import ENCODINGS, build_client, wait_port
from vkmsremote.bench.harness import (
    PY,
    Procs,
    Window,
    fmt,
    measure,
    measure_idle,
    setup_xvfb,
    start_drawer,
    start_x_server,
)
from vkmsremote.bench.stats import load_average, machine, source_version
from vkmsremote.bench.workloads import WORKLOADS

SERVERS = ("vkmsremote", "x11vnc", "x0vncserver", "Xvnc")
PEERS = SERVERS[1:]
X_OF = {"vkmsremote": "Xvfb", "x11vnc": "Xvfb", "x0vncserver": "Xvfb", "Xvnc": "Xvnc"}
"""The X server each VNC server shows (and whose drawer runs while it is measured)."""
LOADED_PCT = 25.0
"""Median CPU of other processes (% of one core) above which a run is reported as made on a loaded machine."""
DEFAULT_SIZES = ("1920x1080:tight-jpeg,zrle,raw", "1024x768:tight-jpeg")
QUICK_SIZES = ("1024x768:tight-jpeg",)
WINDOW_SCALE = {"full-motion": 2.0}
"""Longer windows where a server may need most of a second per frame (full motion, ZRLE, 1080p)."""
PROFILE_SECONDS, PROFILE_RATE = 4.0, 250
"""The --profile window: long enough, and sampled often enough, for a few hundred samples at 10 % CPU."""

_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[bench_native {time.monotonic() - _T0:5.0f} s] {message}", file=sys.stderr, flush=True)


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports nothing listens on now (the kernel's choice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def parse_size(spec: str) -> tuple[tuple[int, int], list[str]]:
    """'1920x1080:tight-jpeg,zrle' -> ((1920, 1080), ['tight-jpeg', 'zrle'])."""
    size_text, _, enc_text = spec.partition(":")
    try:
        w, h = (int(v) for v in size_text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"bench_native: size {size_text!r} is not WIDTHxHEIGHT") from None
    encodings = [e for e in (enc_text or "tight-jpeg,zrle").split(",") if e]
    for e in encodings:
        if e not in ENCODINGS:
            raise SystemExit(f"bench_native: unknown encoding {e!r} (choose from {', '.join(ENCODINGS)})")
    return (w, h), encodings


def start_servers(size: tuple[int, int], work: Path, procs: Procs, ports: dict[str, int]) -> dict[str, str]:
    """Xvfb (-fbdir) with vkmsremote, x11vnc and X0tigervnc on it, and Xvnc; returns {X server role: display}."""
    fbdir = work / f"fb-{size[0]}x{size[1]}"
    fbdir.mkdir()
    say(f"starting Xvfb and Xvnc at {size[0]}x{size[1]}")
    xvfb = setup_xvfb(size, procs, role="Xvfb", fbdir=fbdir)
    xvnc = start_x_server("Xvnc", ["Xvnc", "-geometry", f"{size[0]}x{size[1]}", "-depth", "24", "-nolisten", "tcp",
                                   "-rfbport", str(ports["Xvnc"]), "-localhost", "-SecurityTypes", "None",
                                   "-AlwaysShared"], procs)
    procs.start("vkmsremote", [PY, "-m", "vkmsremote", "serve", "--source", f"xwd:{fbdir / 'Xvfb_screen0'}",
                               "--port", str(ports["vkmsremote"]), "--input", "none"])
    procs.start("x11vnc", ["x11vnc", "-display", xvfb, "-rfbport", str(ports["x11vnc"]), "-localhost", "-nopw",
                           "-forever", "-shared", "-quiet", "-ncache", "0"])
    # Debian's x0vncserver is a Perl wrapper that forks X0tigervnc; run the server itself to measure it.
    procs.start("x0vncserver", ["X0tigervnc", "-display", xvfb, "-rfbport", str(ports["x0vncserver"]),
                                "-localhost", "-SecurityTypes", "None", "-AlwaysShared"])
    for srv in SERVERS:
        try:
            wait_port(ports[srv], 120, procs.procs.get(srv))
        except Exception as e:
            raise RuntimeError(f"{srv} did not start listening: {procs.log_tail(srv)}") from e
    return {"Xvfb": xvfb, "Xvnc": xvnc}


def drawing(procs: Procs, x_role: str) -> str:
    """Let only the drawer into ``x_role`` run (SIGCONT it, SIGSTOP the other); returns its role."""
    for role in X_OF.values():
        pid = procs.pid(f"draw-{role}")
        if pid is not None:
            os.kill(pid, signal.SIGCONT if role == x_role else signal.SIGSTOP)
    return f"draw-{x_role}"


def stop_drawers(procs: Procs) -> None:
    for x in set(X_OF.values()):
        pid = procs.pid(f"draw-{x}")
        if pid is not None:
            os.kill(pid, signal.SIGCONT)  # a stopped process would act on SIGTERM only once continued
        procs.stop(f"draw-{x}")


def run_size(size: tuple[int, int], encodings: list[str], args: argparse.Namespace, client: Path, work: Path,
             results: dict[str, Any]) -> None:
    procs = Procs(work)
    ports = dict(zip(SERVERS, free_ports(len(SERVERS)), strict=True))
    size_text = f"{size[0]}x{size[1]}"
    window = Window(args.seconds, args.warmup, args.quality)
    workloads = list(WORKLOADS) if args.workloads == "all" else args.workloads.split(",")
    try:
        displays = start_servers(size, work, procs, ports)
        for wi, workload in enumerate(workloads):
            say(f"{size_text} {workload}")
            logs = {x: start_drawer(f"draw-{x}", d, workload, work / f"flips-{size_text}-{workload}-{x}", args.fps,
                                    procs) for x, d in displays.items()}
            if not WORKLOADS[workload].changes:
                drawing(procs, "none")
                time.sleep(args.warmup)
                idle = measure_idle(SERVERS, max(3 * args.seconds, 2.0), procs)
                results["idle"][size_text] = idle
                print(f"{size_text} idle, no client connected: "
                      + ", ".join(f"{s} {v:.2f} % CPU" for s, v in idle.items()), flush=True)
            windows = replace(window, seconds=window.seconds * WINDOW_SCALE.get(workload, 1.0))
            for rep in range(args.repeats):
                k = (rep + wi) % len(SERVERS)
                order = list(SERVERS[k:] + SERVERS[:k])  # every server takes every place in turn
                if (rep + wi) % 2:
                    order.reverse()
                for server in order:
                    drawer = drawing(procs, X_OF[server])
                    for encoding in (encodings if WORKLOADS[workload].changes else encodings[:1]):
                        started = time.monotonic()
                        row = measure(server, ports[server], workload, encoding, windows, client, logs[X_OF[server]],
                                      procs, x_role=None if server == "Xvnc" else "Xvfb", drawer_role=drawer,
                                      servers=SERVERS)
                        row.update(size=size_text, rep=rep, wall_s=time.monotonic() - started)
                        results["rows"].append(row)
                        print(format_row(row), flush=True)
            if args.profile and workload != "static" and size == results["profile_size"]:
                drawer = drawing(procs, "Xvfb")
                out = work / f"profile-{size_text}-{workload}.txt"
                row = measure("vkmsremote", ports["vkmsremote"], workload, encodings[0],
                              replace(window, seconds=max(window.seconds, PROFILE_SECONDS)), client, logs["Xvfb"],
                              procs, x_role="Xvfb", drawer_role=drawer, servers=SERVERS, profile=out,
                              profile_rate=PROFILE_RATE)
                lines = [f"py-spy ({PROFILE_RATE} Hz), vkmsremote serve during an extra window: {size_text} {workload} "
                         f"{encodings[0]} ({row['fps']:.1f} fps, {row['cpu_pct']:.0f} % CPU while sampled)",
                         *profiler.summarize(out)]
                print("\n".join(lines), flush=True)
                results["profiles"] += lines
            stop_drawers(procs)
    finally:
        stop_drawers(procs)
        procs.stop_all()


HEADER = (f"{'size':<9} {'workload':<11} {'encoding':<10} {'server':<11} {'rep':>3} {'draws/s':>7} {'fps':>6} "
          f"{'p50':>6} {'p95':>6} {'CPU%':>5} {'X%':>4} {'KB/fr':>7} {'draw%':>5} {'cli%':>4} {'other%':>6}")


def format_row(r: dict[str, Any]) -> str:
    return (f"{r['size']:<9} {r['workload']:<11} {r['encoding']:<10} {r['server']:<11} {r['rep']:>3} "
            f"{fmt(r['draws_per_s'], '7.1f')} {fmt(r['fps'], '6.1f')} {fmt(r['lat_p50'], '6.0f')} "
            f"{fmt(r['lat_p95'], '6.0f')} {fmt(r['cpu_pct'], '5.0f')} {fmt(r['xorg_cpu_pct'], '4.0f')} "
            f"{fmt(r['bytes_per_frame'] / 1e3, '7.1f')} {fmt(r['drawer_cpu_pct'], '5.0f')} "
            f"{fmt(r['client_cpu_pct'], '4.0f')} {fmt(r['foreign_cpu_pct'], '6.0f')}")


# --- summary: medians, spreads, ratios ---------------------------------------------------------------------

FIGURES = ("fps", "lat_p50", "lat_p95", "lat_p99", "cpu_pct", "xorg_cpu_pct", "cpu_with_xorg_pct",
           "bytes_per_frame", "foreign_cpu_pct")
RATIOS = (("fps", "fps"), ("CPU", "cpu_pct"), ("CPU+X", "cpu_with_xorg_pct"))
"""vkmsremote / peer. CPU+X adds the X server's CPU in the same window: Xvfb's, which includes copying the
screen for x11vnc and x0vncserver (XShmGetImage) and drawing the workload; for Xvnc the server is the X
server, so its own CPU (drawing included) is the whole."""


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]


def _median(values: Sequence[Any]) -> float:
    vals = _finite(values)
    return statistics.median(vals) if vals else math.nan


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (size, workload, encoding, server): the median of each figure over the repeats, and
    ``<figure>_min`` / ``<figure>_max``."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["size"], r["workload"], r["encoding"], r["server"]), []).append(r)
    out = []
    for (size, workload, encoding, server), rs in groups.items():
        s: dict[str, Any] = {"size": size, "workload": workload, "encoding": encoding, "server": server,
                             "repeats": len(rs)}
        for key in FIGURES:
            vals = _finite([r.get(key) for r in rs])
            s[key] = statistics.median(vals) if vals else math.nan
            s[f"{key}_min"] = min(vals) if vals else math.nan
            s[f"{key}_max"] = max(vals) if vals else math.nan
        out.append(s)
    return out


def ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (size, workload, encoding, peer): vkmsremote / peer of the medians (``fps``, ``CPU``, ``CPU+X``),
    and the spread of the per-repeat ratios (``<name>_min``, ``<name>_max``: repeat i of one with repeat i of
    the other)."""
    by: dict[tuple[str, str, str, str], dict[int, dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["size"], r["workload"], r["encoding"], r["server"]), {})[r["rep"]] = r
    out = []
    for (size, workload, encoding, server), ours in by.items():
        if server != "vkmsremote":
            continue
        for peer in PEERS:
            theirs = by.get((size, workload, encoding, peer))
            if not theirs:
                continue
            q: dict[str, Any] = {"size": size, "workload": workload, "encoding": encoding, "peer": peer}
            for name, key in RATIOS:
                a = _median([r.get(key) for r in ours.values()])
                b = _median([r.get(key) for r in theirs.values()])
                q[name] = a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan
                per_rep = _finite([ours[i][key] / theirs[i][key] for i in ours
                                   if i in theirs and theirs[i][key] and math.isfinite(ours[i][key])
                                   and math.isfinite(theirs[i][key])])
                q[f"{name}_min"] = min(per_rep) if per_rep else math.nan
                q[f"{name}_max"] = max(per_rep) if per_rep else math.nan
            out.append(q)
    return out


def _spread(s: dict[str, Any], key: str, spec: str, scale: float = 1.0) -> str:
    v, lo, hi = s[key], s[f"{key}_min"], s[f"{key}_max"]
    if not math.isfinite(v):
        return "-"
    if s.get("repeats", 2) < 2 or not (math.isfinite(lo) and math.isfinite(hi)):
        return format(v * scale, spec)
    return f"{format(v * scale, spec)} ({format(lo * scale, spec)}-{format(hi * scale, spec)})"


def loaded_note(result: dict[str, Any]) -> str:
    foreign = _median([r.get("foreign_cpu_pct") for r in result["rows"]])
    info = result["info"]
    text = (f"machine: {info['machine']}; load average {info['load_start']:.2f} at the start, "
            f"{info.get('load_end', math.nan):.2f} at the end; other processes used a median "
            f"{fmt(foreign, '.0f')} % of a core during the windows")
    if math.isfinite(foreign) and foreign > LOADED_PCT:
        text += f" -- LOADED MACHINE (over {LOADED_PCT:.0f} %): absolute figures are low, read the ratios"
    return text


def summary_lines(result: dict[str, Any]) -> list[str]:
    summ = summarize(result["rows"])
    out = [f"{'size':<9} {'workload':<11} {'encoding':<10} {'server':<11} {'fps (min-max)':>18} "
           f"{'p50':>5} {'p95':>5} {'p99':>5} {'CPU % (min-max)':>16} {'X %':>4} {'KB/frame':>8}"]
    for s in summ:
        out.append(f"{s['size']:<9} {s['workload']:<11} {s['encoding']:<10} {s['server']:<11} "
                   f"{_spread(s, 'fps', '.1f'):>18} {fmt(s['lat_p50'], '5.0f')} {fmt(s['lat_p95'], '5.0f')} "
                   f"{fmt(s['lat_p99'], '5.0f')} {_spread(s, 'cpu_pct', '.0f'):>16} "
                   f"{fmt(s['xorg_cpu_pct'], '4.0f')} {fmt(s['bytes_per_frame'] / 1e3, '8.1f')}")
    out += ["", f"{'size':<9} {'workload':<11} {'encoding':<10} {'peer':<11} "
            + " ".join(f"{name + ' ratio':>18}" for name, _ in RATIOS) + "   (vkmsremote / peer, min-max)"]
    for q in ratios(result["rows"]):
        out.append(f"{q['size']:<9} {q['workload']:<11} {q['encoding']:<10} {q['peer']:<11} "
                   + " ".join(f"{_ratio(q, name):>18}" for name, _ in RATIOS))
    idle = result.get("idle") or {}
    for size, vals in idle.items():
        out.append(f"idle CPU at {size}, no client: " + ", ".join(f"{s} {v:.2f} %" for s, v in vals.items()))
    out.append(loaded_note(result))
    return out


def _ratio(q: dict[str, Any], name: str) -> str:
    v, lo, hi = q[name], q[f"{name}_min"], q[f"{name}_max"]
    if not math.isfinite(v):
        return "-"
    return f"{v:.2f} ({lo:.2f}-{hi:.2f})" if math.isfinite(lo) and lo != hi else f"{v:.2f}"


def markdown(result: dict[str, Any]) -> str:
    """The summary and ratio tables in Markdown (docs/benchmarks.md)."""
    out = ["| size | workload | encoding | server | fps (min-max) | p50 ms | p95 ms | p99 ms | server CPU % (min-max) "
           "| Xvfb CPU % | KB/frame |", "|" + "---|" * 11]
    for s in summarize(result["rows"]):
        out.append(f"| {s['size']} | {s['workload']} | {s['encoding']} | {s['server']} | {_spread(s, 'fps', '.1f')} "
                   f"| {fmt(s['lat_p50'], '.0f')} | {fmt(s['lat_p95'], '.0f')} | {fmt(s['lat_p99'], '.0f')} "
                   f"| {_spread(s, 'cpu_pct', '.0f')} | {fmt(s['xorg_cpu_pct'], '.0f')} "
                   f"| {fmt(s['bytes_per_frame'] / 1e3, '.1f')} |")
    out += ["", "| size | workload | encoding | peer | " + " | ".join(f"{n} ratio (min-max)" for n, _ in RATIOS) + " |",
            "|" + "---|" * (4 + len(RATIOS))]
    for q in ratios(result["rows"]):
        out.append(f"| {q['size']} | {q['workload']} | {q['encoding']} | {q['peer']} | "
                   + " | ".join(_ratio(q, n) for n, _ in RATIOS) + " |")
    idle = result.get("idle") or {}
    if idle:
        out += ["", "Idle, no client connected, static screen: " + "; ".join(
            f"{size}: " + ", ".join(f"{s} {v:.2f} %" for s, v in vals.items()) for size, vals in idle.items())]
    out += ["", loaded_note(result)]
    return "\n".join(out) + "\n"


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    print("\n".join(summary_lines(result)))
    if result.get("profiles"):
        print("\n".join(result["profiles"]))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(result))
        print(f"Markdown tables written to {args.markdown}")
    if args.plot and result["rows"]:
        from vkmsremote.bench.plot import plot_native

        plot_native(summarize(result["rows"]), ratios(result["rows"]), args.plot,
                    title=f"vkmsremote {result['info']['source']} vs peers, {result['info']['machine']}, "
                    f"{result['info']['started']}; other processes used a median "
                    f"{fmt(_median([r.get('foreign_cpu_pct') for r in result['rows']]), '.0f')} % of a core")
        print(f"plot written to {args.plot}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    for exe in ("Xvfb", "Xvnc", "x11vnc", "X0tigervnc", "xdpyinfo"):
        if shutil.which(exe) is None:
            raise SystemExit(f"bench_native: {exe} is not installed (run scripts/setup-host.sh)")
    plan = [parse_size(spec) for spec in args.sizes]
    client = build_client()
    work = Path(tempfile.mkdtemp(prefix="vkmsremote-native-"))
    results: dict[str, Any] = {
        "rows": [], "idle": {}, "profiles": [], "profile_size": plan[0][0],
        "info": {"machine": machine(), "cores": os.cpu_count(), "load_start": load_average(),
                 "source": source_version(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "sizes": args.sizes, "repeats": args.repeats, "seconds": args.seconds, "warmup": args.warmup,
                 "fps": args.fps, "quality": args.quality}}
    print(f"native side by side: {', '.join(args.sizes)}; {results['info']['machine']}, "
          f"load {load_average():.2f}; {args.repeats} repeats of {args.seconds:g} s windows after "
          f"{args.warmup:g} s; drawing at up to {args.fps:g} frames/s", flush=True)
    print(HEADER, flush=True)
    try:
        for size, encodings in plan:
            run_size(size, encodings, args, client, work, results)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}", flush=True)
    results["info"]["load_end"] = load_average()
    results["info"]["ended"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["profile_size"] = list(results["profile_size"])
    return results


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (timeout(1), a test's kill) unwinds like Ctrl-C, so every child process and file is cleaned up.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", metavar="WxH[:ENC,...]",
                   help=f"screen sizes, each with its encodings of {', '.join(ENCODINGS)} "
                   f"(default {' '.join(DEFAULT_SIZES)})")
    p.add_argument("--workloads", help=f"comma-separated: {', '.join(WORKLOADS)} (default all)")
    p.add_argument("--repeats", type=int, help="measurements of each pairing (default 3)")
    p.add_argument("--seconds", type=float, help="measurement window (default 1.5; twice that for full-motion)")
    p.add_argument("--warmup", type=float, help="seconds connected before the window (default 0.5)")
    p.add_argument("--fps", type=float, default=30.0, help="frames per second the X clients try to draw")
    p.add_argument("--quality", type=int, default=8, help="JPEG quality level asked for (Tight)")
    p.add_argument("--profile", action="store_true",
                   help="per moving workload, one more vkmsremote window under py-spy (first size, first encoding)")
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--markdown", type=Path, help="write the tables as Markdown here")
    p.add_argument("--from-json", type=Path, help="no measuring: redo the report of a --json file")
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: 1024x768, typing and full-motion (and static), tight-jpeg, 1 repeat, 1 s windows")
    p.add_argument("--keep", action="store_true", help="keep the work directory (server logs)")
    args = p.parse_args(argv)
    defaults: dict[str, Any] = {"sizes": list(DEFAULT_SIZES), "workloads": "all", "repeats": 3, "seconds": 1.5,
                                "warmup": 0.5}
    if args.quick:
        defaults = {"sizes": list(QUICK_SIZES), "workloads": "static,typing,full-motion", "repeats": 1,
                    "seconds": 1.0, "warmup": 0.4}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.repeats < 1:
        raise SystemExit("bench_native: --repeats must be at least 1")
    if args.from_json:
        result = json.loads(args.from_json.read_text())
    else:
        result = run(args)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1))
    report(result, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

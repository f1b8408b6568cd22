#!/usr/bin/env python3
"""Side by side in the test VM: x11vnc (Debian) and vkmsremote serving the same VKMS CRTC, same client.

    .venv/bin/python scripts/bench_peer.py [--size 1024x768] [--workloads all] [--encodings tight-jpeg,zrle]
        [--seconds 10] [--warmup 3] [--fps 30] [--json build/bench/peer.json] [--plot docs/bench-peer.png]
        [--kernel BZIMAGE] [--quick]

On the host it boots the test kernel (python -m vkmsremote.vm) and runs itself inside with --in-vm.
Inside the VM (root): ``vkmsremote up`` makes XR-0; Xorg (modesetting driver, AccelMethod none, so it
draws straight into the scanned-out buffer) becomes DRM master of the card; x11vnc serves the X display
and ``vkmsremote serve --source crtc`` reads the same CRTC's framebuffer. For each workload an X client
(python -m vkmsremote.bench.xdraw) draws frame-numbered frames on the root window and logs when each is
on screen; then, for each encoding, the measuring client (scripts/bench_client.c on LibVNCClient)
connects to one server at a time for a warm-up and a measurement window, while the CPU time of every
process involved (both servers, Xorg, the drawing client, the measuring client) is read from /proc.

Everything under TCG is slow, so read the ratios (vkmsremote / x11vnc, same run, same content, same
client) rather than the absolute figures. ``--xvfb`` runs the same machinery on the host against
x11vnc on Xvfb only (no VKMS, no vkmsremote): a dry run of the harness.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vkmsremote.bench import harness
from vkmsremote.bench import profile as profiler
from vkmsremote.bench.client import ENCODINGS, build_client, wait_port
from vkmsremote.bench.harness import (
    Procs,
    Window,
    fmt,
    measure_idle,
    run_quiet,
    setup_xvfb,
    start_drawer,
    wait_display,
)
from vkmsremote.bench.scanout import FlipLog
from vkmsremote.bench.stats import load_average, source_version
from vkmsremote.bench.workloads import WORKLOADS

PY = sys.executable
TOP = Path(__file__).resolve().parent.parent
DISPLAY = ":1"
PORTS = {"x11vnc": 5931, "vkmsremote": 5932}

XORG_CONF = """\
Section "ServerFlags"
  Option "AutoAddDevices" "false"
  Option "BlankTime" "0"
  Option "StandbyTime" "0"
  Option "SuspendTime" "0"
  Option "OffTime" "0"
EndSection
Section "Device"
  Identifier "vkms"
  Driver "modesetting"
  Option "kmsdev" "{card}"
  Option "AccelMethod" "none"
EndSection
Section "Screen"
  Identifier "screen"
  Device "vkms"
  DefaultDepth 24
EndSection
"""


_T0 = time.monotonic()


def say(message: str) -> None:
    """Progress on stderr, with seconds since start (set-up under TCG takes minutes)."""
    print(f"[bench_peer {time.monotonic() - _T0:6.0f} s] {message}", file=sys.stderr, flush=True)


def setup_vkms(work: Path, size: tuple[int, int], procs: Procs) -> tuple[str, str]:
    """XR-0 through configfs, Xorg on its card at ``size``; returns (card path, DRM connector name)."""
    from vkmsremote.vkms.device import up
    from vkmsremote.vkms.state import StateStore

    say("vkmsremote up (the default profile, XR-0)")
    device = up(None, state=StateStore(work / "state"), timeout=600).device
    card, connector = device.card, device.connectors[0].drm_name
    if card is None or connector is None:
        raise RuntimeError(f"vkmsremote up found no DRM card or connector: {device.note}")
    conf = work / "xorg.conf"
    conf.write_text(XORG_CONF.format(card=card))
    say(f"starting Xorg on {card} ({connector})")
    procs.start("Xorg", ["Xorg", DISPLAY, "-config", str(conf), "-logfile", str(work / "Xorg.log"),
                         "-nolisten", "tcp", "-noreset", "-novtswitch", "-sharevts"])
    wait_display(DISPLAY, 900, procs, "Xorg")
    if size != (1024, 768):
        mode = run_quiet(["xrandr", "-display", DISPLAY, "--output", connector, "--mode", f"{size[0]}x{size[1]}"])
        if mode.returncode != 0:
            raise RuntimeError(f"xrandr could not set {size[0]}x{size[1]}: {mode.stderr.strip()}")
    return card, connector


def start_servers(servers: list[str], display: str, card: str | None, connector: str | None,
                  procs: Procs) -> None:
    if "x11vnc" in servers:
        procs.start("x11vnc", ["x11vnc", "-display", display, "-rfbport", str(PORTS["x11vnc"]), "-localhost",
                               "-nopw", "-forever", "-shared", "-quiet"])
    if "vkmsremote" in servers:
        assert card is not None and connector is not None
        procs.start("vkmsremote", [PY, "-m", "vkmsremote", "serve", "--source", "crtc", "--card", card,
                                   "--connector", connector, "--port", str(PORTS["vkmsremote"]), "--input", "none"])
    say(f"waiting for {', '.join(servers)} to listen")
    for srv in servers:
        try:
            wait_port(PORTS[srv], 900, procs.procs.get(srv))
        except Exception as e:
            raise RuntimeError(f"{srv} did not start listening: {procs.log_tail(srv)}") from e


def measure(server: str, workload: str, encoding: str, args: argparse.Namespace, client: Path, log: FlipLog,
            procs: Procs, profile: Path | None = None) -> dict[str, Any]:
    return harness.measure(server, PORTS[server], workload, encoding, Window(args.seconds, args.warmup, args.quality),
                           client, log, procs, servers=PORTS, profile=profile)


HEADER = (f"{'workload':<11} {'encoding':<10} {'server':<10} {'draws/s':>7} {'fps':>6} {'p50':>7} {'p95':>7} "
          f"{'CPU%':>5} {'ms/fr':>6} {'KB/fr':>7} {'Xorg%':>5} {'draw%':>5} {'cli%':>4} {'load':>4}")


def format_row(r: dict[str, Any]) -> str:
    return (f"{r['workload']:<11} {r['encoding']:<10} {r['server']:<10} {fmt(r['draws_per_s'], '7.1f')} "
            f"{fmt(r['fps'], '6.1f')} {fmt(r['lat_p50'], '7.0f')} {fmt(r['lat_p95'], '7.0f')} "
            f"{fmt(r['cpu_pct'], '5.0f')} {fmt(r['cpu_ms_per_frame'], '6.1f')} "
            f"{fmt(r['bytes_per_frame'] / 1e3, '7.1f')} {fmt(r['xorg_cpu_pct'], '5.0f')} "
            f"{fmt(r['drawer_cpu_pct'], '5.0f')} {fmt(r['client_cpu_pct'], '4.0f')} {fmt(r['load'], '4.1f')}")


RATIOS = (("fps", "fps"), ("CPU", "cpu_pct"), ("CPU+Xorg", "cpu_with_xorg_pct"), ("CPU ms/frame", "cpu_ms_per_frame"),
          ("p50", "lat_p50"), ("KB/frame", "bytes_per_frame"))
"""vkmsremote / x11vnc. CPU+Xorg adds the X server's CPU in the same window: x11vnc makes Xorg copy the
screen for it (XShmGetImage), vkmsremote reads the CRTC's buffer itself; the drawing client's requests
cost Xorg the same in both windows."""


def _value(row: dict[str, Any], key: str) -> float:
    if key == "cpu_with_xorg_pct" and key not in row:  # results saved before the column existed
        return float(row["cpu_pct"]) + float(row["xorg_cpu_pct"])
    return float(row.get(key, math.nan))


def ratios(rows: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, float]]]:
    """(workload, encoding, {name: vkmsremote / x11vnc}) for every pair measured in the same run."""
    by = {(r["workload"], r["encoding"], r["server"]): r for r in rows}
    out = []
    for (w, e, s), v in by.items():
        x = by.get((w, e, "x11vnc"))
        if s != "vkmsremote" or x is None:
            continue
        q = {}
        for name, key in RATIOS:
            a, b = _value(v, key), _value(x, key)
            q[name] = a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan
        out.append((w, e, q))
    return out


def ratio_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = [f"{'workload':<11} {'encoding':<10} " + " ".join(f"{name:>12}" for name, _ in RATIOS)
           + "   (vkmsremote / x11vnc)"]
    for w, e, q in ratios(rows):
        out.append(f"{w:<11} {e:<10} " + " ".join(fmt(q[name], "12.2f") for name, _ in RATIOS))
    return out


def markdown(result: dict[str, Any]) -> str:
    """Rows and ratios as Markdown tables (docs/benchmarks.md)."""
    out = ["| workload | encoding | server | draws/s | fps | p50 ms | p95 ms | server CPU % | CPU ms/frame "
           "| KB/frame | Xorg CPU % | drawer CPU % | client CPU % |", "|" + "---|" * 13]
    for r in result["rows"]:
        cells = [r["workload"], r["encoding"], r["server"], fmt(r["draws_per_s"], ".1f"), fmt(r["fps"], ".2f"),
                 fmt(r["lat_p50"], ".0f"), fmt(r["lat_p95"], ".0f"), fmt(r["cpu_pct"], ".0f"),
                 fmt(r["cpu_ms_per_frame"], ".0f"), fmt(r["bytes_per_frame"] / 1e3, ".1f"),
                 fmt(r["xorg_cpu_pct"], ".0f"), fmt(r["drawer_cpu_pct"], ".0f"), fmt(r["client_cpu_pct"], ".0f")]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "| workload | encoding | " + " | ".join(f"{n} ratio" for n, _ in RATIOS) + " |",
            "|" + "---|" * (2 + len(RATIOS))]
    for w, e, q in ratios(result["rows"]):
        out.append(f"| {w} | {e} | " + " | ".join(fmt(q[n], ".2f") for n, _ in RATIOS) + " |")
    return "\n".join(out) + "\n"


def run_here(args: argparse.Namespace) -> dict[str, Any]:
    """The measurements, on this machine (inside the VM, or on Xvfb with --xvfb)."""
    size = tuple(int(v) for v in args.size.split("x"))
    assert len(size) == 2
    servers = ["x11vnc"] if args.xvfb else [s for s in args.servers.split(",") if s]
    workloads = list(WORKLOADS) if args.workloads == "all" else args.workloads.split(",")
    encodings = [e for e in args.encodings.split(",") if e]
    client = Path(args.client) if args.client else build_client()
    work = Path(tempfile.mkdtemp(prefix="vkmsremote-peer-"))
    procs = Procs(work)
    rows: list[dict[str, Any]] = []
    idle: dict[str, float] = {}
    profiles: list[str] = []
    info: dict[str, Any] = {"size": args.size, "cores": os.cpu_count(), "load_start": load_average(),
                            "source": source_version()}
    try:
        card = connector = None
        if args.xvfb:
            display = setup_xvfb((size[0], size[1]), procs)
        else:
            display = DISPLAY
            card, connector = setup_vkms(work, (size[0], size[1]), procs)
        start_servers(servers, display, card, connector, procs)
        print(f"peer benchmark: {args.size}, servers {', '.join(servers)}, {os.cpu_count()} cores, nice {os.nice(0)}, "
              f"load {load_average():.2f}; {args.seconds:g} s windows after {args.warmup:g} s warm-up; "
              f"drawing at up to {args.fps:g} frames/s", flush=True)
        print(HEADER, flush=True)
        for i, workload in enumerate(workloads):
            say(f"drawing {workload}")
            log = start_drawer("drawer", display, workload, work / f"flips-{workload}", args.fps, procs)
            if not WORKLOADS[workload].changes:
                time.sleep(args.warmup)
                idle = measure_idle(servers, args.seconds, procs)
                print("idle, no client connected: " + ", ".join(f"{s} {v:.1f} % CPU" for s, v in idle.items()),
                      flush=True)
            order = servers if i % 2 == 0 else list(reversed(servers))  # neither always goes first
            for encoding in (encodings if WORKLOADS[workload].changes else encodings[:1]):
                for server in order:
                    row = measure(server, workload, encoding, args, client, log, procs)
                    rows.append(row)
                    print(format_row(row), flush=True)
            if args.profile and "vkmsremote" in servers and workload in ("static", "typing", "full-motion"):
                out = work / f"profile-{workload}.txt"
                row = measure("vkmsremote", workload, encodings[0], args, client, log, procs, profile=out)
                lines = [f"py-spy (50 Hz), vkmsremote serve during an extra window: {workload} {encodings[0]} "
                         f"({row['fps']:.1f} fps, {row['cpu_pct']:.0f} % CPU while sampled)", *profiler.summarize(out)]
                print("\n".join(lines), flush=True)
                profiles += lines
            procs.stop("drawer")
        info["load_end"] = load_average()
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return {"rows": rows, "idle": idle, "info": info, "profiles": profiles}


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    rows = result["rows"]
    print()
    print("\n".join(ratio_lines(rows)))
    if result.get("profiles"):
        print("\n".join(result["profiles"]))
    idle = result.get("idle") or {}
    if idle:
        print("idle CPU, no client: " + ", ".join(f"{s} {v:.2f} %" for s, v in idle.items()))
    if args.markdown:
        args.markdown.write_text(markdown(result))
        print(f"Markdown tables written to {args.markdown}")
    if args.plot and rows:
        from vkmsremote.bench.plot import plot_peer

        plot_peer(rows, args.plot)
        print(f"plot written to {args.plot}")


HOST_ONLY = ("--plot", "--json", "--kernel", "--vm-timeout", "--markdown")


def strip_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without these options and their values (``--opt VALUE`` or ``--opt=VALUE``)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in names:
            skip = True
        elif not a.startswith(tuple(f"{n}=" for n in names)):
            out.append(a)
    return out


def run_in_vm(args: argparse.Namespace, argv: list[str]) -> int:
    results = (TOP / "build" / "bench" / "peer-vm").resolve()
    results.mkdir(parents=True, exist_ok=True)
    out = results / "peer.json"
    out.unlink(missing_ok=True)
    client = build_client(out_dir=results)  # the guest sees the host's files (read-only) at the same path
    # The guest writes JSON to the shared results directory; the plot and the final report are the host's.
    inner = [PY, str(Path(__file__).resolve()), "--in-vm", "--client", str(client), "--json", str(out),
             *strip_options(argv, HOST_ONLY)]
    vm = [PY, "-m", "vkmsremote.vm", "--results-dir", str(results), "--timeout", str(args.vm_timeout),
          "--cpus", "2", "--memory", "2G"]
    if args.kernel:
        vm += ["--kernel", args.kernel]
    rc = subprocess.run([*vm, "--", *inner], cwd=TOP).returncode
    if not out.is_file():
        print(f"bench_peer: the VM run produced no results (exit {rc})", file=sys.stderr)
        return rc or 1
    result = json.loads(out.read_text())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    report(result, args)
    return rc


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (timeout(1), a test's kill) unwinds like Ctrl-C, so every child process and file is cleaned up.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1024x768")
    p.add_argument("--workloads", help=f"comma-separated: {', '.join(WORKLOADS)} (default all)")
    p.add_argument("--encodings", help=f"of {', '.join(ENCODINGS)} (default tight-jpeg,zrle)")
    p.add_argument("--servers", default="x11vnc,vkmsremote")
    p.add_argument("--seconds", type=float, help="measurement window (default 10)")
    p.add_argument("--warmup", type=float, help="seconds connected before the window (default 3)")
    p.add_argument("--fps", type=float, default=30.0, help="frames per second the X client tries to draw")
    p.add_argument("--quality", type=int, default=8)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--markdown", type=Path, help="write the tables as Markdown here")
    p.add_argument("--from-json", type=Path, help="no measuring: redo the report of a --json file")
    p.add_argument("--kernel", help="bzImage for the VM (default: scripts/build-kernel.sh's)")
    p.add_argument("--vm-timeout", type=float, default=3600)
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: by default typing and full-motion, tight-jpeg, 3 s windows")
    p.add_argument("--xvfb", action="store_true", help="dry run on the host: x11vnc on Xvfb only")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, Xorg.log)")
    p.add_argument("--profile", action="store_true",
                   help="after static, typing and full-motion: one more vkmsremote window under py-spy")
    p.add_argument("--in-vm", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--client", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = {"workloads": "all", "encodings": "tight-jpeg,zrle", "seconds": 10.0, "warmup": 3.0}
    if args.quick:
        defaults = {"workloads": "typing,full-motion", "encodings": "tight-jpeg", "seconds": 3.0, "warmup": 1.0}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print(HEADER)
        print("\n".join(format_row(r) for r in saved["rows"]))
        report(saved, args)
        return 0
    if not (args.in_vm or args.xvfb):
        return run_in_vm(args, argv)
    result = run_here(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.xvfb:
        report(result, args)
    else:
        print("\n".join(ratio_lines(result["rows"])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The side-by-side benchmarks' shared machinery (scripts/bench_peer.py in the VM, scripts/bench_native.py
on the host): long-running processes by role, X servers, the X-drawn workload, one measurement window
of the measuring client against one server, idle CPU, table formatting.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vkmsremote.bench import profile as profiler
from vkmsremote.bench.client import BenchClient
from vkmsremote.bench.scanout import FlipLog
from vkmsremote.bench.stats import busy_cpu_seconds, delivery, load_average, process_cpu
from vkmsremote.bench.workloads import WORKLOADS

PY = sys.executable


@dataclass
class Procs:
    """The long-running processes of one run, by role, stopped in reverse order."""

    work: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, role: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        log = open(self.work / f"{role}.log", "wb")  # noqa: SIM115 (the process owns it)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **kwargs)
        self.procs[role] = proc
        return proc

    def pid(self, role: str) -> int | None:
        p = self.procs.get(role)
        return p.pid if p is not None and p.poll() is None else None

    def stop(self, role: str) -> None:
        p = self.procs.pop(role, None)
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)

    def stop_all(self) -> None:
        for role in reversed(list(self.procs)):
            self.stop(role)

    def cpu(self) -> dict[str, float]:
        return {role: process_cpu(p.pid) for role, p in self.procs.items()}

    def log_tail(self, role: str, n: int = 800) -> str:
        try:
            return (self.work / f"{role}.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""


def run_quiet(argv: list[str], timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def wait_display(display: str, timeout: float, procs: Procs, role: str) -> None:
    deadline = time.monotonic() + timeout
    while run_quiet(["xdpyinfo", "-display", display], timeout=60).returncode != 0:
        if procs.pid(role) is None or time.monotonic() > deadline:
            raise RuntimeError(f"the X server on {display} did not come up: {procs.log_tail(role)}")
        time.sleep(0.5)


def start_x_server(role: str, argv: list[str], procs: Procs, timeout: float = 60) -> str:
    """Start an X server that takes ``-displayfd FD`` (Xvfb, Xvnc) on a free display; returns ':N'.

    ``-noreset``: without it the server resets when its last client leaves (wait_display's probe is the
    first), and Xvfb then rewrites its -fbdir file's header in native byte order before swapping it,
    so a reader can catch a half-written header."""
    r, w = os.pipe()
    if "-noreset" not in argv:
        argv = [*argv, "-noreset"]
    procs.start(role, [*argv, "-displayfd", str(w)], pass_fds=(w,))
    os.close(w)
    # Xvfb writes the number and the newline separately: closing the pipe before the newline kills it.
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n") and time.monotonic() < deadline:
        chunk = os.read(r, 100)
        if not chunk:
            break
        data += chunk
    os.close(r)
    if not data.strip():
        raise RuntimeError(f"{role} did not start: {procs.log_tail(role)}")
    display = ":" + data.decode().strip()
    wait_display(display, timeout, procs, role)
    return display


def setup_xvfb(size: tuple[int, int], procs: Procs, *, role: str = "Xorg", fbdir: Path | None = None) -> str:
    """Xvfb at ``size``, depth 24 (with ``fbdir``: its screen kept in fbdir/Xvfb_screen0); returns ':N'."""
    extra = ["-fbdir", str(fbdir)] if fbdir is not None else []
    return start_x_server(role, ["Xvfb", "-screen", "0", f"{size[0]}x{size[1]}x24", "-nolisten", "tcp", *extra],
                          procs)


def start_drawer(role: str, display: str, workload: str, log_path: Path, fps: float, procs: Procs,
                 timeout: float = 900) -> FlipLog:
    """python -m vkmsremote.bench.xdraw drawing ``workload`` on ``display``; returns its flip log once frame 0
    is on screen."""
    drawer = procs.start(role, [PY, "-m", "vkmsremote.bench.xdraw", "--display", display, "--workload", workload,
                                "--log", str(log_path), "--fps", str(fps)])
    deadline = time.monotonic() + timeout
    while "ready" not in procs.log_tail(role):
        if drawer.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {workload} drawer did not start: {procs.log_tail(role)}")
        time.sleep(0.2)
    return FlipLog.open(log_path)


@dataclass(frozen=True, slots=True)
class Window:
    """One measurement: ``warmup`` seconds connected, then ``seconds`` measured; JPEG ``quality`` level."""

    seconds: float
    warmup: float
    quality: int = 8


def measure(server: str, port: int, workload: str, encoding: str, window: Window, client: Path, log: FlipLog,
            procs: Procs, *, x_role: str | None = "Xorg", drawer_role: str = "drawer",
            servers: Collection[str] = (), profile: Path | None = None, profile_rate: int = 50) -> dict[str, Any]:
    """The measuring client against ``server`` (a role of ``procs``) on ``port`` for one window.

    ``x_role``: the X server whose CPU counts with the server's where the server makes X copy for it
    (None: the server is the X server itself). ``servers``: every server role running, whose CPU outside
    ``server`` is reported as ``other_server_cpu_pct`` (what the idle ones cost meanwhile).
    ``foreign_cpu_pct``: the CPU that processes other than those of ``procs`` and the client used meanwhile
    (% of one core, summed over the cores): the load others put on a shared machine. ``profile``: sample
    the server with py-spy (``profile_rate`` Hz) during the window and write the raw profile there.
    """
    bc = BenchClient(client, "127.0.0.1", port, encoding, window.warmup + window.seconds + 10,
                     quality=window.quality).start()
    try:
        bc.wait_first_update(600)
        time.sleep(window.warmup)
        t0, cpu0, ccpu0, load0, busy0 = (time.monotonic(), procs.cpu(), process_cpu(bc.pid), load_average(),
                                         busy_cpu_seconds())
        pid = procs.pid(server)
        spy = profiler.spy(pid, window.seconds, profile, rate=profile_rate) if profile is not None and pid else None
        time.sleep(window.seconds)
        t1, cpu1, ccpu1, load1, busy1 = (time.monotonic(), procs.cpu(), process_cpu(bc.pid), load_average(),
                                         busy_cpu_seconds())
        if spy is not None:
            spy.wait(300)
    finally:
        bc.stop()
        bc.wait(30)
    dt = t1 - t0
    d = delivery(bc.snapshot(), log.time_of, t0, t1)
    if not WORKLOADS[workload].changes:  # frame 0 arriving late is not a delivered frame of a static screen
        d = replace(d, frames=0, latencies_ms=())
    cpu = {role: 100 * (cpu1[role] - cpu0[role]) / dt for role in cpu0 if role in cpu1}
    client_cpu = 100 * (ccpu1 - ccpu0) / dt
    ours = sum(v for v in cpu.values() if not math.isnan(v)) + client_cpu
    server_cpu = cpu.get(server, math.nan)
    x_cpu = cpu.get(x_role, math.nan) if x_role is not None else math.nan
    return {
        "server": server, "workload": workload, "encoding": encoding, "seconds": dt,
        "draws_per_s": log.flips_between(t0, t1) / dt, "fps": d.fps, "frames": d.frames,
        "updates_per_s": d.updates / dt, "unreadable": d.unreadable,
        "lat_p50": d.latency(50), "lat_p95": d.latency(95), "lat_p99": d.latency(99),
        "cpu_pct": server_cpu,
        "cpu_ms_per_frame": 10 * server_cpu * dt / d.frames if d.frames else math.nan,
        "bytes_per_frame": d.bytes_per_frame, "bytes_per_s": d.bytes / dt,
        "xorg_cpu_pct": x_cpu,
        "cpu_with_xorg_pct": server_cpu + (x_cpu if x_role is not None else 0.0),
        "drawer_cpu_pct": cpu.get(drawer_role, math.nan),
        "client_cpu_pct": client_cpu,
        "foreign_cpu_pct": 100 * (busy1 - busy0) / dt - ours,
        "other_server_cpu_pct": sum(v for k, v in cpu.items() if k in servers and k != server),
        "load": (load0 + load1) / 2,
    }


def measure_idle(servers: Collection[str], seconds: float, procs: Procs) -> dict[str, float]:
    """Each server's CPU % with nobody connected (over the same ``seconds``)."""
    t0, cpu0 = time.monotonic(), procs.cpu()
    time.sleep(seconds)
    t1, cpu1 = time.monotonic(), procs.cpu()
    return {s: 100 * (cpu1[s] - cpu0[s]) / (t1 - t0) for s in servers if s in cpu0 and s in cpu1}


def fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)

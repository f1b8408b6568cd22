"""What the benchmarks compute from a client's updates, flip times and CPU counters."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vkmsremote.bench.client import Update


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else math.nan


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one client saw during a measurement window."""

    seconds: float
    frames: int
    """Frames delivered: updates after which the client showed a frame number it had not shown before."""
    updates: int
    unreadable: int
    """Updates after which the frame number could not be read (torn or lossy beyond recognition)."""
    bytes: int
    latencies_ms: tuple[float, ...]
    """Per delivered frame: flip (or draw) time to the client having decoded it."""

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else math.nan

    @property
    def bytes_per_frame(self) -> float:
        return self.bytes / self.frames if self.frames else math.nan

    def latency(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def delivery(updates: Sequence[Update], flip_time: Callable[[int], float], t0: float, t1: float) -> Delivery:
    """Frames, bytes and latencies of the updates decoded in [t0, t1)."""
    frames = unreadable = count = 0
    latencies: list[float] = []
    bytes_before = bytes_last = 0
    shown = -1
    seen: set[int] = set()
    for u in updates:
        if u.t < t0:
            bytes_before = bytes_last = u.bytes
            if u.number >= 0:
                shown = u.number
                seen.add(u.number)
            continue
        if u.t >= t1:
            break
        count += 1
        bytes_last = u.bytes
        if u.number < 0:
            unreadable += 1
            continue
        if u.number != shown and u.number not in seen:
            frames += 1
            flipped = flip_time(u.number)
            if math.isfinite(flipped):
                latencies.append((u.t - flipped) * 1e3)
            seen.add(u.number)
        shown = u.number
    return Delivery(t1 - t0, frames, count, unreadable, bytes_last - bytes_before, tuple(latencies))


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by process ``pid``; NaN if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def load_average() -> float:
    return os.getloadavg()[0]


def source_version() -> str:
    """``git describe``-like identity of the tree being measured (commit, "+dirty" if files changed)."""
    import subprocess

    top = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(top), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(top), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def busy_cpu_seconds() -> float:
    """CPU seconds every core of this machine has spent busy so far (/proc/stat: all but idle and iowait).
    With the CPU of the processes a benchmark knows subtracted, what is left over a window is the load
    that others put on the machine meanwhile."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return math.nan
    ticks = [int(v) for v in first[1:]]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # user nice system idle iowait irq softirq steal
    return busy / _CLK_TCK


def machine() -> str:
    """CPU model and core count, e.g. 'AMD EPYC, 2 cores'."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"

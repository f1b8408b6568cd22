"""PNG plots of benchmark rows (matplotlib, a dev dependency; imported only when a plot is asked for)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STAGE_COLOURS = {"damage": "#4c72b0", "snapshot": "#8172b2", "encode": "#dd8452", "send": "#55a868",
                 "other": "#999999"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not math.isnan(v) else 0.0


def plot_pipeline(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Per size (columns): delivered fps, latency, server CPU per frame by stage, bytes per frame."""
    plt = _pyplot()
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    workloads = [w for w in dict.fromkeys(r["workload"] for r in rows) if w != "static"]
    encodings = list(dict.fromkeys(r["encoding"] for r in rows))
    fig, axes = plt.subplots(4, len(sizes), figsize=(6.5 * len(sizes), 15), squeeze=False)
    width = 0.8 / max(len(encodings), 1)
    xs = range(len(workloads))
    centres = [x + 0.4 - width / 2 for x in xs]
    for col, size in enumerate(sizes):
        by = {(r["workload"], r["encoding"]): r for r in rows if r["size"] == size}
        ax = axes[0][col]
        for i, enc in enumerate(encodings):
            ax.bar([x + i * width for x in xs], [_num(by.get((w, enc), {}).get("fps")) for w in workloads],
                   width, label=enc)
        flips = [_num(by.get((w, encodings[0]), {}).get("flips_per_s")) for w in workloads]
        ax.scatter(centres, flips, marker="_", s=900, color="k", label="flips/s", zorder=3)
        ax.set_title(f"{size}: delivered frames/s")
        ax.legend(fontsize=7)
        ax = axes[1][col]
        for i, enc in enumerate(encodings):
            p50 = [_num(by.get((w, enc), {}).get("lat_p50")) for w in workloads]
            p95 = [_num(by.get((w, enc), {}).get("lat_p95")) for w in workloads]
            p99 = [_num(by.get((w, enc), {}).get("lat_p99")) for w in workloads]
            pos = [x + i * width for x in xs]
            ax.bar(pos, p50, width, label=f"{enc} p50")
            ax.vlines(pos, p50, p95, colors="k", linewidth=2)
            ax.vlines(pos, p95, p99, colors="k", linewidth=0.8)
        ax.axhline(20, color="r", linestyle=":", linewidth=1)
        ax.set_title(f"{size}: flip-to-client ms (p50 bar, p95, p99)")
        ax.set_yscale("log")
        ax = axes[2][col]
        enc = "tight-jpeg" if "tight-jpeg" in encodings else encodings[0]
        bottom = [0.0] * len(workloads)
        for stage, colour in STAGE_COLOURS.items():
            vals = []
            for w in workloads:
                r = by.get((w, enc), {})
                updates = r.get("server_updates") or 0
                vals.append(1e3 * _num(r.get("stages_cpu_s", {}).get(stage)) / updates if updates else 0.0)
            ax.bar(centres, vals, 0.6, bottom=bottom, color=colour, label=stage)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.axhline(1000 / 60, color="r", linestyle=":", linewidth=1)
        ax.set_title(f"{size}: server CPU ms per update, {enc} (dotted: 60/s on a core)")
        ax.legend(fontsize=7)
        ax = axes[3][col]
        for i, enc in enumerate(encodings):
            ax.bar([x + i * width for x in xs],
                   [_num(by.get((w, enc), {}).get("bytes_per_frame")) / 1e3 for w in workloads], width, label=enc)
        ax.set_yscale("log")
        ax.set_title(f"{size}: KB per delivered frame")
        ax.legend(fontsize=7)
        for row in axes:
            row[col].set_xticks(centres)
            row[col].set_xticklabels(workloads, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_peer(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Side by side: delivered fps, latency p50 and server CPU of each server per workload."""
    plt = _pyplot()
    servers = list(dict.fromkeys(r["server"] for r in rows))
    keys = list(dict.fromkeys((r["workload"], r["encoding"]) for r in rows))
    labels = [f"{w}\n{e}" for w, e in keys]
    by = {(r["workload"], r["encoding"], r["server"]): r for r in rows}
    fig, axes = plt.subplots(3, 1, figsize=(max(8, 1.1 * len(keys) + 2), 11), squeeze=False)
    width = 0.8 / max(len(servers), 1)
    xs = range(len(keys))
    for ax, field, title in ((axes[0][0], "fps", "delivered frames/s"),
                             (axes[1][0], "lat_p50", "flip-to-client latency p50, ms"),
                             (axes[2][0], "cpu_pct", "server CPU % (one core = 100)")):
        for i, srv in enumerate(servers):
            ax.bar([x + i * width for x in xs], [_num(by.get((w, e, srv), {}).get(field)) for w, e in keys],
                   width, label=srv)
        ax.set_xticks([x + 0.4 - width / 2 for x in xs])
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(title)
        if field == "lat_p50":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_native(summary: Sequence[dict[str, Any]], ratios: Sequence[dict[str, Any]], path: Path,
                title: str = "") -> None:
    """The native side by side (scripts/bench_native.py), one column per size: each server's delivered fps
    (median, min-max whiskers), then vkmsremote / peer for fps and for CPU with the X server's (log scale,
    1 = parity)."""
    plt = _pyplot()
    sizes = list(dict.fromkeys(s["size"] for s in summary))
    servers = list(dict.fromkeys(s["server"] for s in summary))
    peers = [p for p in servers if p != "vkmsremote"]
    fig, axes = plt.subplots(3, len(sizes), figsize=(max(9, 7.5 * len(sizes)), 12), squeeze=False)
    for col, size in enumerate(sizes):
        keys = list(dict.fromkeys((s["workload"], s["encoding"]) for s in summary
                                  if s["size"] == size and s["workload"] != "static"))
        labels = [f"{w}\n{e}" for w, e in keys]
        xs = range(len(keys))
        by = {(s["workload"], s["encoding"], s["server"]): s for s in summary if s["size"] == size}
        ax = axes[0][col]
        width = 0.8 / max(len(servers), 1)
        for i, srv in enumerate(servers):
            rows = [by.get((w, e, srv), {}) for w, e in keys]
            mid = [_num(r.get("fps")) for r in rows]
            lo = [max(0.0, m - _num(r.get("fps_min", m))) for m, r in zip(mid, rows, strict=True)]
            hi = [max(0.0, _num(r.get("fps_max", m)) - m) for m, r in zip(mid, rows, strict=True)]
            ax.bar([x + i * width for x in xs], mid, width, yerr=[lo, hi], capsize=2, label=srv)
        ax.set_title(f"{size}: delivered frames/s (median of repeats, min-max)")
        ax.legend(fontsize=7)
        qby = {(q["workload"], q["encoding"], q["peer"]): q for q in ratios if q["size"] == size}
        width = 0.8 / max(len(peers), 1)
        for ax, name, what in ((axes[1][col], "fps", "fps"), (axes[2][col], "CPU+X", "CPU (server + X server)")):
            for i, peer in enumerate(peers):
                qs = [qby.get((w, e, peer), {}) for w, e in keys]
                mid = [_num(q.get(name)) or math.nan for q in qs]
                lo = [max(0.0, m - _num(q.get(f"{name}_min", m))) if math.isfinite(m) else 0.0
                      for m, q in zip(mid, qs, strict=True)]
                hi = [max(0.0, _num(q.get(f"{name}_max", m)) - m) if math.isfinite(m) else 0.0
                      for m, q in zip(mid, qs, strict=True)]
                ax.bar([x + i * width for x in xs], [m if math.isfinite(m) else 0.0 for m in mid], width,
                       yerr=[lo, hi], capsize=2, label=f"vs {peer}")
            ax.axhline(1.0, color="k", linewidth=1)
            ax.set_yscale("log")
            ax.set_title(f"{size}: vkmsremote / peer, {what} ({'above' if name == 'fps' else 'below'} 1: "
                         "vkmsremote better)")
            ax.legend(fontsize=7)
        for row, n in zip(axes, (len(servers), len(peers), len(peers)), strict=True):
            row[col].set_xticks([x + 0.4 - 0.4 / max(n, 1) for x in xs])
            row[col].set_xticklabels(labels, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)

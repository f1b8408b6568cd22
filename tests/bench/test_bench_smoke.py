"""The benchmarks run and print figures (tiny modes, a few seconds each); only coarse CPU relations are asserted.

* workloads: every workload's damage covers every changed pixel and each frame's number reads back;
* delivery(): frames, latencies and bytes of a hand-made update stream;
* scripts/bench_pipeline.py --quick: driver, server and C client processes, rows with figures;
* scripts/bench_peer.py --xvfb --quick: the peer harness against x11vnc on Xvfb (the host dry run);
* scripts/bench_native.py --quick: vkmsremote (xwd source), x11vnc, x0vncserver and Xvnc on one screen;
* in the VM (marked vm): the real side by side, x11vnc and vkmsremote on Xorg on VKMS, one workload.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vkmsremote.bench.client import Update
from vkmsremote.bench.scanout import (
    F_REFRESH,
    F_T0,
    I_PENDING_TICK,
    I_READY,
    NEVER,
    Scanout,
    SyntheticCrtc,
)
from vkmsremote.bench.stats import delivery
from vkmsremote.bench.workloads import WORKLOADS, make_workload
from vkmsremote.capture.crtc import Pacing
from vkmsremote.capture.driver import decode_frame_number

TOP = Path(__file__).resolve().parents[2]
PY = sys.executable


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_workload_damage_covers_changes_and_frames_carry_numbers(name: str) -> None:
    wl = make_workload(name, 1024, 768)
    canvas = np.zeros((768, 1024, 4), np.uint8)
    wl.first(canvas)
    assert decode_frame_number(canvas) == 0
    changed_any = False
    for n in range(1, 12):
        before = canvas.copy()
        damage = wl.draw(n, canvas)
        changed = np.any(before != canvas, axis=2)
        covered = np.zeros_like(changed)
        for r in damage:
            covered[r.y:r.y + r.h, r.x:r.x + r.w] = True
        assert not np.any(changed & ~covered), f"{name} frame {n}: pixels changed outside the damage"
        assert decode_frame_number(canvas) == n
        # Anything besides the frame number (the top 32 rows, 512 columns) changed?
        outside_code = changed.copy()
        outside_code[:32, :512] = False
        changed_any |= bool(outside_code.any())
    assert changed_any == WORKLOADS[name].changes


def test_delivery_counts_new_frames_latency_and_bytes() -> None:
    flips = {5: 10.000, 6: 10.010, 7: 10.020, 9: 10.040}
    updates = [
        Update(9.990, 5, 1000, 1, 10),   # before the window: sets the baseline
        Update(10.012, 6, 1500, 1, 10),  # new frame, 2 ms after its flip
        Update(10.013, 6, 1600, 1, 10),  # same frame again: not delivered twice
        Update(10.030, -1, 1700, 1, 10),  # unreadable
        Update(10.045, 9, 2700, 1, 10),  # new frame (7 and 8 were skipped), 5 ms
        Update(10.300, 10, 9999, 1, 10),  # after the window
    ]
    d = delivery(updates, lambda n: flips.get(n, math.nan), 10.0, 10.1)
    assert d.frames == 2 and d.updates == 4 and d.unreadable == 1
    assert d.bytes == 2700 - 1000
    assert [round(v, 3) for v in d.latencies_ms] == [2.0, 5.0]
    assert d.fps == pytest.approx(20.0)
    assert d.bytes_per_frame == pytest.approx(850.0)


def test_synthetic_crtc_follows_flips_and_goes_idle_like_crtc_reader(tmp_path: Path) -> None:
    path = tmp_path / "scanout"
    scan = Scanout.create(path, 640, 480)
    scan.buffers[:] = 7
    scan.floats[F_REFRESH] = 600.0  # a fast vblank grid: the idle threshold is reached in tens of ms
    scan.floats[F_T0] = time.monotonic()
    scan.ints[I_PENDING_TICK] = NEVER
    scan.ints[I_READY] = 1
    timings: dict[str, float] = {}
    reader = SyntheticCrtc(path, timings=timings)

    async def scenario() -> None:
        first = await reader.next_frame()
        assert first.damage is None and first.serial == 0
        with pytest.raises(asyncio.TimeoutError):  # nothing changes: no frame, but the reader goes idle
            await asyncio.wait_for(reader.next_frame(), 0.4)
        assert reader.probes > 0 and reader.vblanks >= Pacing().idle_after
        # A flip to a buffer with a changed square is found (by a probe's buffer change or a full look).
        scan.buffers[1, 100:110, 200:220] = 99
        scan.queue_flip(1, scan.next_tick(time.monotonic()))
        frame = await asyncio.wait_for(reader.next_frame(), 2)
        assert frame.serial == 1 and frame.damage is not None
        assert all(r.x <= 200 and r.y <= 100 and r.x + r.w >= 220 and r.y + r.h >= 110 for r in frame.damage)
        assert np.array_equal(frame.pixels, scan.buffers[1])

    asyncio.run(scenario())
    assert timings["damage"] > 0
    asyncio.run(reader.close())


def test_bench_pipeline_quick(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    run = subprocess.run([PY, str(TOP / "scripts" / "bench_pipeline.py"), "--quick", "--workloads",
                          "static,typing,full-motion", "--seconds", "0.7", "--warmup", "0.4", "--json", str(out)],
                         capture_output=True, text=True, timeout=240, cwd=TOP)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "flips/s" in run.stdout and "idle" in run.stdout
    rows = {r["workload"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"static", "typing", "full-motion"}
    for name in ("typing", "full-motion"):
        r = rows[name]
        assert r["frames"] > 0, f"{name}: the client showed no new frame"
        assert r["flips_per_s"] > 0 and r["bytes_per_frame"] > 0
        assert math.isfinite(r["lat_p50"]) and r["lat_p50"] > 0
        assert r["server_encoding"] == 7  # the server really sent Tight
        assert set(r["stages_cpu_s"]) == {"damage", "snapshot", "encode", "send", "other"}
    # A static screen: no new frame, and the server with nobody connected sleeps on its vblank pacing: it costs
    # less CPU than serving full motion, and little in absolute terms (a polling loop would take a whole core).
    static = rows["static"]
    assert static["frames"] == 0
    assert 0 <= static["idle_cpu_pct"] < rows["full-motion"]["cpu_pct"], (static, rows["full-motion"])
    assert static["idle_cpu_pct"] < 25, static


def test_bench_peer_harness_on_xvfb(tmp_path: Path) -> None:
    out = tmp_path / "peer.json"
    run = subprocess.run([PY, str(TOP / "scripts" / "bench_peer.py"), "--xvfb", "--quick", "--workloads", "typing",
                          "--json", str(out)], capture_output=True, text=True, timeout=240, cwd=TOP)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["server"], r["workload"]) for r in rows] == [("x11vnc", "typing")]
    r = rows[0]
    assert r["frames"] > 0 and r["draws_per_s"] > 0 and math.isfinite(r["lat_p50"])
    # x11vnc's CPU was sampled from its own process: it encoded those frames, so it used some; Xvfb's is read too.
    assert r["cpu_pct"] > 0 and r["cpu_ms_per_frame"] > 0, r
    assert math.isfinite(r["xorg_cpu_pct"]) and r["xorg_cpu_pct"] >= 0, r


def test_bench_native_quick(tmp_path: Path) -> None:
    out, md, png = tmp_path / "native.json", tmp_path / "native.md", tmp_path / "native.png"
    run = subprocess.run([PY, str(TOP / "scripts" / "bench_native.py"), "--quick", "--workloads", "static,typing",
                          "--json", str(out), "--markdown", str(md), "--plot", str(png)],
                         capture_output=True, text=True, timeout=280, cwd=TOP)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    servers = {"vkmsremote", "x11vnc", "x0vncserver", "Xvnc"}
    typing = {r["server"]: r for r in result["rows"] if r["workload"] == "typing"}
    assert set(typing) == servers
    for server, r in typing.items():  # the client read frame numbers from every server: the harness works
        assert r["frames"] > 0 and r["draws_per_s"] > 0, f"{server}: no frame delivered"
        assert math.isfinite(r["lat_p50"]) and r["cpu_pct"] >= 0 and math.isfinite(r["foreign_cpu_pct"])
    assert math.isfinite(typing["x11vnc"]["xorg_cpu_pct"]) and math.isnan(typing["Xvnc"]["xorg_cpu_pct"])
    assert set(result["idle"]["1024x768"]) == servers
    assert {r["server"] for r in result["rows"] if r["workload"] == "static"} == servers
    assert "fps ratio" in run.stdout and "| typing | tight-jpeg | x0vncserver |" in md.read_text()
    assert png.stat().st_size > 10_000


def test_bench_native_medians_spreads_and_ratios() -> None:
    spec = importlib.util.spec_from_file_location("bench_native", TOP / "scripts" / "bench_native.py")
    assert spec is not None and spec.loader is not None
    native = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(native)
    rows = []
    for rep, (ours, theirs) in enumerate([((20, 50), (10, 10)), ((30, 40), (10, 20)), ((25, 60), (20, 30))]):
        for server, (fps, cpu) in (("vkmsremote", ours), ("x11vnc", theirs)):
            rows.append({"size": "S", "workload": "typing", "encoding": "zrle", "server": server, "rep": rep,
                         "fps": float(fps), "cpu_pct": float(cpu), "cpu_with_xorg_pct": float(cpu + 10)})
    [vk, x11] = native.summarize(rows)
    assert (vk["fps"], vk["fps_min"], vk["fps_max"], vk["repeats"]) == (25, 20, 30, 3)
    assert (x11["cpu_pct"], x11["cpu_pct_min"], x11["cpu_pct_max"]) == (20, 10, 30)
    assert math.isnan(vk["lat_p50"])  # not in the rows: no figure, no error
    [q] = native.ratios(rows)
    assert q["peer"] == "x11vnc"
    assert q["fps"] == pytest.approx(25 / 10)  # ratio of the medians
    assert (q["fps_min"], q["fps_max"]) == pytest.approx((1.25, 3.0))  # per-repeat ratios: 2, 3, 1.25
    assert q["CPU"] == pytest.approx(50 / 20) and q["CPU+X"] == pytest.approx(60 / 30)
    assert (q["CPU_min"], q["CPU_max"]) == pytest.approx((2.0, 5.0))


@pytest.mark.vm
def test_bench_peer_in_vm_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "peer.json"
    run = subprocess.run([PY, str(TOP / "scripts" / "bench_peer.py"), "--in-vm", "--quick", "--workloads", "typing",
                          "--seconds", "3", "--json", str(out)], capture_output=True, text=True, timeout=1200,
                         cwd=TOP)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rows = {r["server"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"x11vnc", "vkmsremote"}
    for server, r in rows.items():
        assert r["frames"] > 0, f"{server} delivered no readable frame"
        assert math.isfinite(r["lat_p50"]) and r["cpu_pct"] > 0

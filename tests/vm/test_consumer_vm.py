"""The consumer socket against the real kernel (run in the test VM): `vkmsremote up --drive pattern` serves
XR-0; unprivileged consumers (uid 65534, group video, no capabilities) find it by name, get each scanout
buffer once, and the pixels they map are the pattern frame the driver drew into that framebuffer, for
every frame, with damage covering every changed pixel. The C client (compiled here) prints the Python
client's checksums; a uid outside the group is refused; latency from the vblank of a flip to the consumer,
against polling at 60 Hz. Then, on modetest's framebuffer (no `up`: cheap), ffmpeg's kmsgrab captures what
GETFB2 reads, and `consume --egl` imports that dma-buf into EGL and reads every pixel back through GL.
(A consumer that never reads beside a VNC client, and 1,000 connect/disconnect cycles, need no kernel:
tests/consumer/.)
"""

from __future__ import annotations

import grp
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from consumer_support import ServerThread, build_c_client, parse_lines

from vkmsremote.consumer.protocol import Buffer, Plane
from vkmsremote.drm.card import Card
from vkmsremote.drm.events import get_sequence
from vkmsremote.drm.framebuffer import map_framebuffer
from vkmsremote.drm.resources import Resources, get_crtc

from .test_drm_vm import make_vkms_device, wait_card
from .test_serve_vm import Up

pytestmark = [pytest.mark.vm, pytest.mark.timeout(1500)]

NOBODY = 65534
REPO = Path(__file__).resolve().parents[2]

# The consumer, as an unprivileged process: imports first (this Python lives under /root, unreadable to
# uid 65534), then setgroups([video]) + setresgid/setresuid(65534): no capabilities are left (checked).
CONSUMER = r"""
import json, os, sys, time, zlib
import numpy as np
from vkmsremote.consumer import Consumer
from vkmsremote.consumer.consume import changed_outside
from vkmsremote.capture.driver import decode_frame_number, draw_pattern, pattern_base
video, path, want = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
os.setgroups([video]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0 and status["Uid"].split()[0] == "65534"
fds_before = len(os.listdir("/proc/self/fd"))
out = {"frames": [], "bad_pixels": [], "damage_missed": [], "unreadable": 0, "buffers": set()}
got = []  # (frame, picture): copied at once, checked after the loop (TCG is slow; the driver does not wait)
with Consumer.connect(path, timeout=60) as xr:
    out["hello"] = [xr.hello.name, xr.hello.card, xr.hello.connector, xr.hello.connector_id, xr.hello.crtc_id,
                    xr.mode.width, xr.mode.height]
    for f in xr.frames(timeout=60):
        mapped = f.buffer.mapped()
        with mapped.reading():
            picture = np.array(f.pixels())
        got.append((f, picture))
        out["buffers"].add(f.buffer.meta.buffer_id)
        if len(got) >= want:
            break
    out["mode"] = [xr.mode.width, xr.mode.height, xr.mode.active]
    out["held_fds"] = xr.open_fds()
    out["held_buffers"] = len(xr.buffers)
    out["fds_in_process"] = len(os.listdir("/proc/self/fd")) - fds_before
base, previous = None, None
for f, picture in got:
    number = decode_frame_number(picture)
    if number is None:
        out["unreadable"] += 1
    else:
        if base is None or base.shape != picture.shape:
            base = pattern_base(picture.shape[1], picture.shape[0])
        expected = np.zeros_like(picture)
        draw_pattern(expected, base, number)
        if not np.array_equal(picture[..., :3], expected[..., :3]):
            out["bad_pixels"].append(f.event.serial)
    if previous is not None and f.damage is not None and changed_outside(previous, picture, f.damage):
        out["damage_missed"].append(f.event.serial)
    previous = picture
    out["frames"].append([f.event.serial, f.buffer.meta.buffer_id, f.buffer.meta.fb_id, number,
                          f"{zlib.crc32(picture.tobytes()):08x}", f.received_ns - f.event.vblank_ns,
                          f.damage is None, f.event.sent_ns - f.event.vblank_ns])
out["buffers"] = sorted(out["buffers"])
print(json.dumps(out))
"""


# `vkmsremote consume --egl` as the same kind of unprivileged process.
EGL_CONSUMER = r"""
import os, sys
from vkmsremote.cli import build_parser
from vkmsremote.consumer import consume, egl  # noqa: F401
video, path = int(sys.argv[1]), sys.argv[2]
args = build_parser().parse_args(["consume", path, "--egl", "--json", "--checksums", "--frames", "1"])
os.setgroups([video]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
sys.exit(consume.run(args))
"""


def _video_gid() -> int:
    return grp.getgrnam("video").gr_gid


def _run_consumer(path: str, frames: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", CONSUMER, str(_video_gid()), path, str(frames)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _setpriv(*argv: str, groups: str) -> list[str]:
    return ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), f"--groups={groups}" if groups else
            "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *argv]


def _poll_latency(card_path: str, crtc_id: int, seconds: float) -> list[int]:
    """What a renderer polling GETCRTC on a 60 Hz timer sees: ns from the flip's vblank to noticing it."""
    out: list[int] = []
    with Card.open(card_path) as card:
        last = get_crtc(card, crtc_id, with_properties=False).fb_id
        end = time.monotonic() + seconds
        next_tick = time.monotonic()
        while time.monotonic() < end:
            next_tick += 1 / 60
            time.sleep(max(0.0, next_tick - time.monotonic()))
            fb = get_crtc(card, crtc_id, with_properties=False).fb_id
            if fb != last:
                out.append(time.monotonic_ns() - get_sequence(card, crtc_id).time_ns)
                last = fb
    return out


def _pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


def test_unprivileged_consumers_get_every_flip_buffers_once_pixels_and_damage(vkms_clean: Path,
                                                                             tmp_path: Path) -> None:
    exe = build_c_client(tmp_path / "c")
    os.chmod(tmp_path, 0o755)
    for parent in tmp_path.parents:  # the C client runs as uid 65534: it must reach its own binary
        if str(parent).startswith("/tmp/") or str(parent) == "/tmp":
            os.chmod(parent, os.stat(parent).st_mode | 0o755)
    up = Up(tmp_path, "--drive", "pattern", "--drive-fps", "1", "--input", "none", port=5941)
    try:
        m = up.wait_for(r"consumer socket (\S+)", 60)
        path = m.group(1)
        st = os.stat(path)
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o660, 0, _video_gid())

        # A uid the socket does not allow (65534 without the video group) is refused by the kernel.
        refused = subprocess.run(_setpriv(str(exe), path, "1", groups=""), capture_output=True, text=True, timeout=60)
        assert refused.returncode == 4 and "Permission denied" in refused.stderr, refused

        # Python and C consumers at once, both unprivileged, in the video group.
        py = _run_consumer(path, 30)
        up.wait_for(rf"consumer pid {py.pid} uid", 600)  # connected: from here both get the same FRAMEs
        c = subprocess.Popen(_setpriv(str(exe), path, "20", groups=str(_video_gid())), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        py_out, py_err = py.communicate(timeout=900)
        c_out, c_err = c.communicate(timeout=300)
        assert py.returncode == 0, py_err
        assert c.returncode == 0, c_err
        result = json.loads(py_out)
        print(json.dumps({k: v for k, v in result.items() if k != "frames"}))
        assert result["hello"][0] == "XR-0" and result["hello"][1] == up.card and result["hello"][3:5] == [
            up.connector_id, up.crtc_id]
        frames = result["frames"]
        numbers = [f[3] for f in frames]
        tap = [f[7] for f in frames[1:]]
        print(f"vblank -> FRAME sent (the tap's work): p50 {_pct(tap, 0.5):.1f} ms, p99 {_pct(tap, 0.99):.1f} ms")
        assert len(frames) == 30 and not result["unreadable"], result
        assert not result["bad_pixels"], f"frames whose pixels are not the pattern frame: {result['bad_pixels']}"
        assert not result["damage_missed"], f"damage missed changed pixels in frames {result['damage_missed']}"
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers
        missed = numbers[-1] - numbers[0] + 1 - len(numbers)
        print(f"pattern frames {numbers[0]}..{numbers[-1]}: {len(numbers)} seen, {missed} flips not reported")
        # Each buffer came once: 3 buffers (the driver's triple buffering), as many fds held, no more.
        assert len(result["buffers"]) == 3 == result["held_buffers"] == result["held_fds"], result
        assert result["fds_in_process"] == 3 + 1  # + the socket
        # The C client: same mapping, same checksums for the frames both saw.
        c_lines = parse_lines(c_out)
        hello = c_lines[0][1]
        assert [hello["name"], hello["card"], hello["connector"], int(hello["connector_id"]),
                int(hello["crtc_id"])] == result["hello"][:5]
        # The C client's first FRAME is the server's last one replayed at connect: its buffer may have been
        # drawn again since (the Python consumer read that frame when it was new). The rest are live for both.
        c_crc = {int(f["serial"]): f["crc32"] for k, f in c_lines if k == "frame"}
        c_crc.pop(min(c_crc))
        py_crc = {f[0]: f[4] for f in frames}
        common = set(c_crc) & set(py_crc)
        assert len(common) >= 15, (sorted(c_crc), sorted(py_crc))
        assert all(c_crc[s] == py_crc[s] for s in common), {s: (c_crc[s], py_crc[s]) for s in common}

        # Latency: the consumer's event after the flip's vblank, against a 60 Hz GETCRTC poller.
        latencies = [f[5] for f in frames[1:]]
        polled = _poll_latency(up.card, up.crtc_id, 6)
        print(f"flip -> consumer (Python, TCG VM): p50 {_pct(latencies, 0.5):.1f} ms, p99 "
              f"{_pct(latencies, 0.99):.1f} ms over {len(latencies)}; 60 Hz GETCRTC polling: p50 "
              f"{_pct(polled, 0.5):.1f} ms, p99 {_pct(polled, 0.99):.1f} ms over {len(polled)}")
        c_lat = [int(f["latency_ns"]) for k, f in c_lines if k == "frame"][1:]
        print(f"flip -> consumer (C): p50 {_pct(c_lat, 0.5):.1f} ms, p99 {_pct(c_lat, 0.99):.1f} ms")
    finally:
        code = up.stop()
    assert code == 0


def _reachable_by_all(path: Path) -> None:
    """Let uid 65534 reach ``path`` (pytest's tmp dirs are 0700)."""
    os.chmod(path, 0o755)
    for parent in path.parents:
        if str(parent).startswith("/tmp/") or str(parent) == "/tmp":
            os.chmod(parent, os.stat(parent).st_mode | 0o755)


def test_kmsgrab_and_the_egl_consumer_see_the_scanned_out_framebuffer(vkms_clean: Path, tmp_path: Path) -> None:
    """modetest lights XR-0 with its SMPTE picture; the framebuffer read through GETFB2 is the reference.
    ffmpeg's kmsgrab (root) captures the same picture; `vkmsremote consume --egl` (uid 65534, group video)
    given that scanout buffer's dma-buf through the consumer socket reads it back through GL."""
    make_vkms_device(vkms_clean, "xr")
    card_path = wait_card("xr")
    with Card.open(card_path) as probe:
        res = Resources.fetch(probe)
        conn, crtc = res.connectors[0], res.crtcs[0]
    # modetest exits (removing its framebuffer) when stdin closes: keep it open with a pipe.
    modetest = subprocess.Popen(["modetest", "-M", "vkms", "-s", f"{conn.id}@{crtc.id}:1024x768"],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    st: ServerThread | None = None
    try:
        with Card.open(card_path) as card:
            deadline = time.monotonic() + 60
            while not (fb_id := get_crtc(card, crtc.id, with_properties=False).fb_id):
                assert time.monotonic() < deadline and modetest.poll() is None, "modetest did not light XR-0"
                time.sleep(0.05)
            mapped = map_framebuffer(card, fb_id)  # GETFB2 + PRIME + mmap, as root
            try:
                info = mapped.info
                w, h = info.width, info.height
                with mapped.reading():
                    picture = np.array(mapped.plane_rows(0, 4))
                reference = zlib.crc32(np.ascontiguousarray(picture[..., :3]).tobytes())  # X is undefined
                assert len(np.unique(picture[..., :3].reshape(-1, 3), axis=0)) > 8, "not modetest's colour bars"

                # ffmpeg's kmsgrab (root: it calls GETFB2 itself) on the CRTC the mapping names.
                raw = tmp_path / "kmsgrab.raw"
                grab = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "kmsgrab", "-device",
                                       card_path, "-crtc_id", str(crtc.id), "-framerate", "10", "-i", "-",
                                       "-frames:v", "1", "-vf", "hwdownload,format=bgr0", "-f", "rawvideo", "-y",
                                       str(raw)], capture_output=True, text=True, timeout=300)
                assert grab.returncode == 0, grab.stderr
                grabbed = np.fromfile(raw, np.uint8)
                assert grabbed.size == w * h * 4, (grabbed.size, w, h)
                grabbed_crc = zlib.crc32(np.ascontiguousarray(grabbed.reshape(h, w, 4)[..., :3]).tobytes())
                print(f"GETFB2 fb {fb_id} {w}x{h}: crc32(BGR) {reference:08x}; ffmpeg kmsgrab: {grabbed_crc:08x}")
                assert grabbed_crc == reference

                # The EGL consumer, given this buffer's dma-buf through a consumer socket.
                _reachable_by_all(tmp_path)
                st = ServerThread(tmp_path / "XR-0.sock", width=w, height=h, card=card_path)
                fds, plane_fd = mapped.buffer_fds()
                meta = Buffer(1, fb_id, w, h, info.format, info.modifiers[0],
                              tuple(Plane(info.pitches[i], info.offsets[i], plane_fd[i]) for i in range(info.num_planes)),
                              len(fds))
                dups = tuple(os.dup(fd) for fd in fds)
                server = st.server
                st.call(lambda: server.add_buffer(meta, dups))
                st.call(lambda: server.frame(1, (0, 0, w, h), None, new_buffer=True))
                env = {**os.environ, "PYTHONPATH": str(REPO), "MESA_SHADER_CACHE_DISABLE": "true"}
                run = subprocess.run([sys.executable, "-c", EGL_CONSUMER, str(_video_gid()), str(st.path)],
                                     capture_output=True, text=True, env=env, timeout=600)
                print(f"consume --egl stderr:\n{run.stderr}")
                assert run.returncode == 0, run.stderr
                lines = [json.loads(line) for line in run.stdout.splitlines()]
                took = next(d for d in lines if d["type"] == "path")
                frame = next(d for d in lines if d["type"] == "frame")
                print(f"consume --egl: path {took['path']}: {took['why']}; frame {frame}")
                assert int(frame["crc32"], 16) == zlib.crc32(np.ascontiguousarray(picture).tobytes())  # mmap path
                assert took["path"] == "egl-dmabuf", took
                # Every pixel GL reads from the imported texture is the framebuffer's.
                assert frame["gl_pixels"] == w * h and frame["gl_differ"] == 0 and frame["gl_equal"], frame
                assert frame["egl_imports"] == 1, frame
            finally:
                mapped.close()
    finally:
        if st is not None:
            st.close()
        modetest.stdin.close()  # type: ignore[union-attr]
        modetest.wait(60)

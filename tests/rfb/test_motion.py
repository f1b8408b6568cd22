"""Motion (issue 15): Open H.264 decoded by FFmpeg, CopyRect from detected moves, shared H.264 streams.

* Move detection (server.moves) on the benchmark workloads: the moves found are exact, and the ones
  that should be found (scrolling, a dragged window) are.
* The real server (VncServer on a ControlledSource) with a small client that decodes Open H.264 with
  FFmpeg's h264 decoder (through PyAV, one decoder per rectangle context as rfbproto says) and applies
  CopyRect: full motion arrives as H.264 within PSNR 35 dB of every source frame; a client that does not
  list encoding 50 never receives it; scrolling and a window drag arrive pixel-exact with CopyRect in the
  stream.
* Shared streams (server.encodeshare): two clients in step cost one encode per frame and both decode it;
  a client that falls behind gets a private stream at once and rejoins the group at its next IDR.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import Coroutine
from typing import Any

import av
import numpy as np
import pytest
from clients.support import ControlledSource, RawClient, rgb_of

from vkmsremote.bench.workloads import make_workload
from vkmsremote.frame import Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.encodings import EncoderSettings, make_encoder
from vkmsremote.rfb.encodings import h264 as h264mod
from vkmsremote.rfb.encodings.copyrect import ordered, subtract
from vkmsremote.rfb.messages import EnableContinuousUpdates, FramebufferUpdateRequest
from vkmsremote.rfb.pixelformat import NATIVE
from vkmsremote.server.app import VncServer
from vkmsremote.server.encodeshare import JOIN_INTERVAL, KEEP_FRAMES, VideoShare
from vkmsremote.server.moves import find_move

W, H = 640, 400  # even sides (4:2:0), large enough for the workloads


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def frames(workload: str, n: int, width: int = W, height: int = H) -> list[tuple[np.ndarray, tuple[Rect, ...]]]:
    wl = make_workload(workload, width, height)
    canvas = np.zeros((height, width, 4), np.uint8)
    wl.first(canvas)
    out = [(canvas.copy(), (Rect(0, 0, width, height),))]
    for i in range(1, n):
        damage = wl.draw(i, canvas)
        out.append((canvas.copy(), damage))
    return out


class FFmpegH264:
    """Open H.264 rectangles decoded by FFmpeg's h264 decoder, one context per (x, y, w, h) (rfbproto)."""

    def __init__(self) -> None:
        self.contexts: dict[tuple[int, int, int, int], Any] = {}
        self.flags: list[int] = []

    def decode(self, x: int, y: int, w: int, h: int, data: bytes) -> np.ndarray | None:
        length, flags = struct.unpack(">II", data[:8])
        assert length == len(data) - 8
        self.flags.append(flags)
        key = (x, y, w, h)
        if flags & h264mod.H264Flags.RESET_ALL_CONTEXTS:
            self.contexts.clear()
        elif flags & h264mod.H264Flags.RESET_CONTEXT:
            self.contexts.pop(key, None)
        ctx = self.contexts.get(key)
        if ctx is None:
            ctx = self.contexts[key] = av.CodecContext.create("h264", "r")
        out = ctx.decode(av.Packet(data[8:]))
        if not out:
            return None
        img: np.ndarray = out[-1].to_ndarray(format="bgra")
        assert img.shape == (h, w, 4), f"decoded {img.shape} for a {w}x{h} rectangle"
        return img


class MotionClient(RawClient):
    """RawClient (32-bit native format) that also applies CopyRect and decodes Open H.264 with FFmpeg."""

    def __init__(self) -> None:
        super().__init__()
        self.h264 = FFmpegH264()

    async def _rect_data(self, x: int, y: int, w: int, h: int, enc: int) -> bytes:
        r = self.reader
        if enc == Encoding.COPY_RECT:
            data = await r.readexactly(4)
            sx, sy = struct.unpack(">HH", data)
            self.fb[y:y + h, x:x + w] = self.fb[sy:sy + h, sx:sx + w].copy()
            return data
        if enc == Encoding.OPEN_H264:
            head = await r.readexactly(8)
            (length,) = struct.unpack(">I", head[:4])
            data = head + await r.readexactly(length)
            img = self.h264.decode(x, y, w, h, data)
            assert img is not None, "FFmpeg gave no picture for an H.264 rectangle (zerolatency means one per frame)"
            assert self.pf == NATIVE
            self.fb[y:y + h, x:x + w] = img.view("<u4")[..., 0] & 0xFFFFFF
            return data
        return await super()._rect_data(x, y, w, h, enc)


def run(coro: Coroutine[Any, Any, None], timeout: float = 120) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


async def served_updates(workload: str, encodings: tuple[int, ...], n: int,
                         width: int = W, height: int = H) -> tuple[MotionClient, list[list[int]], list[float], list[bool]]:
    """Serve ``n`` frames of a workload one update at a time; per update: rectangle encodings, PSNR of the
    client's framebuffer against the frame, and whether it is pixel-exact."""
    seq = frames(workload, n, width, height)
    src = ControlledSource(seq[0][0])
    server = VncServer(src, port=0)  # type: ignore[arg-type]
    await server.start()
    try:
        c = MotionClient()
        await c.connect(server.port)
        c.set_encodings(*encodings)
        encs: list[list[int]] = []
        scores: list[float] = []
        exact: list[bool] = []
        for i, (img, damage) in enumerate(seq):
            if i:
                src.set_frame(img, damage)
            c.send(FramebufferUpdateRequest(i > 0, 0, 0, width, height))
            up = await c.read_update(20)
            encs.append([r[4] for r in up.rects])
            got, want = c.rgb(), rgb_of(img)
            scores.append(psnr(got, want))
            exact.append(bool(np.array_equal(got, want)))
        await c.close()
        return c, encs, scores, exact
    finally:
        await server.close()


# --- move detection -------------------------------------------------------------------------------------

@pytest.mark.parametrize("workload", ["scrolling", "window-drag"])
def test_moves_found_and_exact(workload: str) -> None:
    seq = frames(workload, 6, 960, 540)
    for (old, _), (new, damage) in itertools.pairwise(seq):
        move = find_move(old, new, damage)
        assert move is not None, f"no move found in {workload}"
        d, s = move.dst, move.src
        assert np.array_equal(new[d.y:d.y + d.h, d.x:d.x + d.w], old[s.y:s.y + s.h, s.x:s.x + s.w])
        assert d.area >= 0.3 * 960 * 540 if workload == "scrolling" else d.area >= 0.15 * 960 * 540


def test_no_move_in_noise_and_verified_moves_are_exact() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (240, 320, 4), dtype=np.uint8)  # noise: every run is distinctive
    b = rng.integers(0, 256, (240, 320, 4), dtype=np.uint8)
    assert find_move(a, b, [Rect(0, 0, 320, 240)]) is None
    for _ in range(20):  # random block moves over noise: what is found is exact
        dx, dy = (int(v) for v in rng.integers(-40, 41, 2))
        new = a.copy()
        new[60:180, 80:240] = a[60 + dy:180 + dy, 80 + dx:240 + dx]
        move = find_move(a, new, [Rect(0, 0, 320, 240)])
        if (dx, dy) == (0, 0):
            assert move is None
            continue
        assert move is not None and (move.src_x - move.dst.x, move.src_y - move.dst.y) == (dx, dy)
        d, s = move.dst, move.src
        assert np.array_equal(new[d.y:d.y + d.h, d.x:d.x + d.w], a[s.y:s.y + s.h, s.x:s.x + s.w])
        assert d.area >= 0.9 * 120 * 160


def test_subtract_and_order() -> None:
    r = [Rect(0, 0, 100, 100)]
    cut = Rect(10, 20, 30, 40)
    pieces = subtract(r, cut)
    mask = np.zeros((100, 100), int)
    for p in pieces:
        mask[p.y:p.y + p.h, p.x:p.x + p.w] += 1
    assert mask[20:60, 10:40].sum() == 0 and mask.sum() == 100 * 100 - 30 * 40 and mask.max() == 1
    # the second copy reads where the first one wrote: dropped
    first = (Rect(0, 0, 50, 50), 0, 10)
    assert ordered([first, (Rect(100, 0, 20, 20), 10, 10)]) == [first]
    assert ordered([first, (Rect(100, 0, 20, 20), 60, 60)]) == [first, (Rect(100, 0, 20, 20), 60, 60)]


# --- Open H.264 --------------------------------------------------------------------------------------------

def test_h264_available_and_payload_format() -> None:
    assert h264mod.unavailable_reason() is None, h264mod.unavailable_reason()
    enc = make_encoder(Encoding.OPEN_H264, EncoderSettings())
    assert enc is not None
    seq = frames("full-motion", 3, 640, 240)
    rect = Rect(0, 0, 640, 240)
    first = enc.encode(seq[0][0], rect, NATIVE)
    (r, number, data), = first
    assert (r, number) == (rect, 50)
    length, flags = struct.unpack(">II", data[:8])
    assert length == len(data) - 8 and flags == h264mod.H264Flags.RESET_ALL_CONTEXTS
    body = data[8:]
    assert body.startswith(b"\x00\x00\x00\x01") or body.startswith(b"\x00\x00\x01")  # Annex B
    nal_types = [body[i + 3] & 0x1F for i in range(len(body) - 4) if body[i:i + 3] == b"\x00\x00\x01"]
    assert 7 in nal_types and 8 in nal_types and 5 in nal_types  # SPS, PPS, IDR slice
    sps = body[next(i for i in range(len(body) - 4) if body[i:i + 3] == b"\x00\x00\x01" and body[i + 3] & 0x1F == 7) + 4:]
    assert sps[0] == 66 and sps[1] & 0x40  # profile_idc 66 (Baseline) with constraint_set1: Constrained Baseline
    (_, _, data2), = enc.encode(seq[1][0], rect, NATIVE)
    assert struct.unpack(">II", data2[:8])[1] == 0  # same stream: no reset
    (_, _, data3), = enc.encode(seq[2][0], Rect(0, 0, 160, 120), NATIVE)
    assert struct.unpack(">II", data3[:8])[1] == h264mod.H264Flags.RESET_ALL_CONTEXTS  # new rectangle, new stream
    assert not h264mod.fits(Rect(0, 0, 321, 240))


def test_quality_maps_to_crf() -> None:
    assert h264mod.crf_for(EncoderSettings()) == h264mod.DEFAULT_CRF
    crfs = [h264mod.crf_for(EncoderSettings(quality_level=q)) for q in range(10)]
    assert crfs == sorted(crfs, reverse=True) and crfs[9] == 18
    assert h264mod.crf_for(EncoderSettings(fine_quality=100)) == 18
    assert h264mod.crf_for(EncoderSettings(fine_quality=0)) == 40


def test_full_motion_as_h264_decoded_by_ffmpeg() -> None:
    async def main() -> None:
        c, encs, scores, _ = await served_updates("full-motion", (Encoding.OPEN_H264, Encoding.RAW), 24)
        video = [i for i, e in enumerate(encs) if Encoding.OPEN_H264 in e]
        assert Encoding.OPEN_H264 not in encs[0]  # the first frame is not motion: lossless
        assert len(video) >= 20, encs
        assert min(scores[i] for i in video) >= 35, [round(s, 1) for s in scores]
        assert c.h264.flags[0] == h264mod.H264Flags.RESET_ALL_CONTEXTS and not any(c.h264.flags[1:])
    run(main())


def test_client_without_h264_never_receives_it() -> None:
    async def main() -> None:
        _, encs, _, exact = await served_updates("full-motion", (Encoding.RAW,), 8)
        assert all(e == Encoding.RAW for u in encs for e in u)
        assert all(exact)
    run(main())


def test_small_changes_stay_lossless_beside_h264() -> None:
    async def main() -> None:
        _, encs, _, exact = await served_updates("typing", (Encoding.OPEN_H264, Encoding.RAW), 8)
        assert all(Encoding.OPEN_H264 not in u for u in encs), encs
        assert all(exact)
    run(main())


def test_resize_starts_a_new_stream() -> None:
    async def main() -> None:
        seq = frames("full-motion", 3)
        src = ControlledSource(seq[0][0])
        server = VncServer(src, port=0)  # type: ignore[arg-type]
        await server.start()
        try:
            c = MotionClient()
            await c.connect(server.port)
            c.set_encodings(Encoding.OPEN_H264, Encoding.RAW, Encoding.DESKTOP_SIZE)
            c.send(FramebufferUpdateRequest(False, 0, 0, W, H))
            await c.read_update()
            for img, _ in seq[1:]:
                src.set_frame(img)
                c.send(FramebufferUpdateRequest(True, 0, 0, W, H))
                await c.read_update()
            assert c.h264.flags  # H.264 flowing at the old size
            small = frames("full-motion", 3, 800, 300)
            src.set_frame(small[1][0])
            c.send(FramebufferUpdateRequest(True, 0, 0, W, H))
            up = await c.read_update()
            assert [r[4] for r in up.rects] == [Encoding.DESKTOP_SIZE]
            c.send(FramebufferUpdateRequest(True, 0, 0, 800, 300))
            up = await c.read_update()
            assert Encoding.OPEN_H264 not in [r[4] for r in up.rects]  # the first frame of a size: lossless
            src.set_frame(small[2][0])
            c.send(FramebufferUpdateRequest(True, 0, 0, 800, 300))
            up = await c.read_update()
            assert [r[:5] for r in up.rects] == [(0, 0, 800, 300, Encoding.OPEN_H264)]
            assert c.h264.flags[-1] == h264mod.H264Flags.RESET_ALL_CONTEXTS  # a new stream: the client resets
            assert psnr(c.rgb(), rgb_of(small[2][0])) >= 35
            await c.close()
        finally:
            await server.close()
    run(main())


# --- CopyRect through the server ---------------------------------------------------------------------------

@pytest.mark.parametrize("workload", ["scrolling", "window-drag"])
def test_copyrect_pixel_exact(workload: str) -> None:
    async def main() -> None:
        _, encs, _, exact = await served_updates(workload, (Encoding.COPY_RECT, Encoding.RAW), 12)
        assert all(exact), exact
        copies = sum(u.count(Encoding.COPY_RECT) for u in encs)
        assert copies >= 9, encs
        for u in encs:  # a CopyRect reads the client's old frame: it comes first
            if Encoding.COPY_RECT in u:
                assert u[0] == Encoding.COPY_RECT
    run(main())


def test_no_copyrect_for_clients_without_it() -> None:
    async def main() -> None:
        _, encs, _, exact = await served_updates("scrolling", (Encoding.RAW,), 4)
        assert all(Encoding.COPY_RECT not in u for u in encs) and all(exact)
    run(main())


# --- shared H.264 streams --------------------------------------------------------------------------------

def test_shared_stream_one_encode_and_catch_up() -> None:
    now = [0.0]
    share = VideoShare(clock=lambda: now[0])
    a, b = share.member(EncoderSettings()), share.member(EncoderSettings())
    dec_a, dec_b = FFmpegH264(), FFmpegH264()
    seq = frames("full-motion", 40, 640, 240)
    rect = Rect(0, 0, 640, 240)

    def check(member: Any, dec: FFmpegH264, serial: int) -> int:
        """Send ``serial`` to a member, decode what it got with FFmpeg: the last picture is the frame."""
        out = member.encode_video(seq[serial][0], rect, serial)
        for _, _, data in out:
            img = dec.decode(0, 0, 640, 240, data)
            assert img is not None
        assert psnr(img[..., :3], seq[serial][0][..., :3]) >= 35
        return len(out)

    for serial in range(4):  # in step: one encode per frame
        check(a, dec_a, serial)
        check(b, dec_b, serial)
    assert share.encodes == 4 and a.shared_frames == b.shared_frames == 4
    check(a, dec_a, 4)
    check(a, dec_a, 5)
    assert check(b, dec_b, 5) == 2  # b skipped frame 4: it gets 4 and 5 in a row, no encode for it
    assert share.encodes == 6 and b.caught_up == 1 and b.private_frames == 0 and not any(dec_b.flags[1:])
    last = 6 + KEEP_FRAMES + 1
    for serial in range(6, last + 1):  # a runs on; the group forgets the frames b would need
        check(a, dec_a, serial)
    check(b, dec_b, last)  # too far behind: a private stream for b at once
    assert b.private_frames == 1 and dec_b.flags[-1] == h264mod.H264Flags.RESET_ALL_CONTEXTS
    check(a, dec_a, last + 1)
    check(b, dec_b, last + 1)  # still private (the group may not restart before JOIN_INTERVAL)
    assert b.private_frames == 2
    now[0] += JOIN_INTERVAL
    check(a, dec_a, last + 2)  # the group's new stream starts with an IDR ...
    check(b, dec_b, last + 2)  # ... where b comes back
    check(a, dec_a, last + 3)
    check(b, dec_b, last + 3)
    assert b.private_frames == 2 and dec_b.flags[-1] == 0
    assert dec_a.flags[-2] == h264mod.H264Flags.RESET_ALL_CONTEXTS and dec_a.flags[-1] == 0
    assert share.encodes == last + 4 + 0  # every group frame encoded once (b's two private ones aside)


def test_two_clients_continuous_updates_share_encodes() -> None:
    async def main() -> None:
        seq = frames("full-motion", 40)
        src = ControlledSource(seq[0][0])
        server = VncServer(src, port=0)  # type: ignore[arg-type]
        await server.start()
        try:
            clients = []
            for _ in range(2):
                c = MotionClient()
                await c.connect(server.port)
                c.set_encodings(Encoding.OPEN_H264, Encoding.RAW, Encoding.CONTINUOUS_UPDATES)
                c.send(FramebufferUpdateRequest(False, 0, 0, W, H), EnableContinuousUpdates(True, 0, 0, W, H))
                clients.append(c)
            received = [0, 0]

            async def drain(i: int, c: MotionClient) -> None:
                while True:
                    msg = await c.read_message(5)
                    if msg.kind == "update" and msg.update is not None and any(
                            r[4] == Encoding.OPEN_H264 for r in msg.update.rects):
                        received[i] += 1

            tasks = [asyncio.create_task(drain(i, c)) for i, c in enumerate(clients)]
            for img, damage in seq[1:]:
                src.set_frame(img, damage)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert min(received) >= 20, received
            encodes = server.ctx.video_share.encodes
            assert encodes <= 0.7 * sum(received), (encodes, received)
            for c in clients:
                assert psnr(c.rgb(), rgb_of(seq[-1][0])) >= 35
                await c.close()
        finally:
            await server.close()
    run(main())


def test_without_pyav_h264_is_not_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PyAV (simulated: the availability check says why not) nothing changes for clients that list
    encoding 50, and serve --help says so."""
    monkeypatch.setattr(h264mod, "unavailable_reason", lambda: "PyAV is not installed (pip install 'vkmsremote[h264]')")
    assert make_encoder(Encoding.OPEN_H264, EncoderSettings()) is None
    assert "not offered: PyAV is not installed" in h264mod.describe()

    async def main() -> None:
        _, encs, _, exact = await served_updates("full-motion", (Encoding.OPEN_H264, Encoding.RAW), 6)
        assert all(e == Encoding.RAW for u in encs for e in u) and all(exact)
    run(main())


def test_serve_help_tells_about_h264(tmp_path: Any) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "vkmsremote", "serve", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "Open H.264 (encoding 50): offered" in " ".join(out.stdout.split())


def test_bench_client_decodes_h264(tmp_path: Any) -> None:
    """scripts/bench_client.c's Open H.264 extension (LibVNCClient + libavcodec) reads frame numbers back
    from H.264 frames: the `h264` benchmark encoding works end to end."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "rows.json"
    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_pipeline.py"
    done = subprocess.run([sys.executable, str(script), "--sizes", "640x480", "--workloads", "full-motion",
                           "--encodings", "h264", "--seconds", "1.5", "--warmup", "0.5", "--json", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    [row] = json.loads(out.read_text())["rows"]
    assert row["rect_encodings"].get("50", 0) >= 5, row["rect_encodings"]
    assert row["fps"] > 0 and row["unreadable"] == 0, row


def test_tight_jpeg_shared_between_clients() -> None:
    """Two connections' Tight encoders sent the same rectangle of the same read-only frame: one JPEG
    compression, the same JPEG bytes (each with its own control byte); a writable frame is never shared."""
    from vkmsremote.rfb.encodings.shared import JPEG_RESULTS

    img = frames("full-motion", 1, 1024, 768)[0][0]
    snap = img.view()
    snap.flags.writeable = False
    settings = EncoderSettings(quality_level=8)
    a, b = make_encoder(Encoding.TIGHT, settings), make_encoder(Encoding.TIGHT, settings)
    assert a is not None and b is not None
    whole = Rect(0, 0, 1024, 768)
    before = (JPEG_RESULTS.computed, JPEG_RESULTS.shared)
    out_a, out_b = a.encode(snap, whole, NATIVE), b.encode(snap, whole, NATIVE)
    computed, shared = JPEG_RESULTS.computed - before[0], JPEG_RESULTS.shared - before[1]
    assert computed >= 1 and shared == computed  # the second client compressed nothing
    assert [(r, p[1:]) for r, _, p in out_a] == [(r, p[1:]) for r, _, p in out_b]  # same JPEG after the control byte
    before = JPEG_RESULTS.computed, JPEG_RESULTS.shared
    a.encode(img, whole, NATIVE)
    b.encode(img, whole, NATIVE)
    assert (JPEG_RESULTS.computed, JPEG_RESULTS.shared) == before  # writable: not cached at all


def test_colour_map_client_gets_no_h264() -> None:
    """A client with a colour map (8-bit indices) that lists encoding 50 still gets its motion as pixels."""
    from vkmsremote.rfb.pixelformat import PixelFormat

    async def main() -> None:
        seq = frames("full-motion", 5)
        src = ControlledSource(seq[0][0])
        server = VncServer(src, port=0)  # type: ignore[arg-type]
        await server.start()
        try:
            c = RawClient()
            await c.connect(server.port)
            c.set_pixel_format(PixelFormat(8, 8, False, False, 0, 0, 0, 0, 0, 0))
            c.set_encodings(Encoding.OPEN_H264, Encoding.RAW)
            for i, (img, damage) in enumerate(seq):
                if i:
                    src.set_frame(img, damage)
                c.send(FramebufferUpdateRequest(i > 0, 0, 0, W, H))
                up = await c.read_update(20)
                assert all(r[4] != Encoding.OPEN_H264 for r in up.rects)
            await c.close()
        finally:
            await server.close()
    run(main())

"""XwdSource (vkmsremote/capture/xwd.py) on a real Xvfb -fbdir screen file, and its refusals.

* the header Xvfb writes parses (size, depth, pitch, masks) and round-trips;
* frames follow what an X client draws (XShmPutImage + XSync into Xvfb), pixel for pixel, with damage
  covering every changed pixel, while every frame handed out stays referenced (so the damage tracker
  writes each update into another buffer: the frame returned must be the new one);
* the X server exiting (Xvfb removes the file) gives "no signal"; a new Xvfb on the same path is served;
* ``vkmsremote serve --source xwd:`` serves the screen to vncsnapshot (a real client), compared by PSNR;
* a missing file, a truncated header, truncated pixels, another depth, other masks or byte order:
  a UsageError naming the problem, and from the CLI one line on stderr and exit status 2.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from clients.support import rgb_of
from PIL import Image

from vkmsremote.bench.harness import Procs, setup_xvfb
from vkmsremote.bench.xdraw import RootWindowCanvas
from vkmsremote.capture.crtc import Pacing
from vkmsremote.capture.nosignal import no_signal_frame
from vkmsremote.capture.xwd import XwdHeader, XwdSource, read_header
from vkmsremote.errors import UsageError
from vkmsremote.frame import Frame, Rect
from vkmsremote.rfb.encodings import samples

W, H = 640, 480
FAST = Pacing(idle_after=3, idle_seconds=0.02, deep_after=3, deep_seconds=0.05)
VNCSNAPSHOT = shutil.which("vncsnapshot") or "/usr/bin/vncsnapshot"


@pytest.fixture
def xvfb(tmp_path: Path) -> Iterator[tuple[str, Path, Procs]]:
    """A real Xvfb at W x H x 24 keeping its screen in tmp_path/fb/Xvfb_screen0: (display, file, procs)."""
    fbdir = tmp_path / "fb"
    fbdir.mkdir()
    procs = Procs(tmp_path)
    try:
        display = setup_xvfb((W, H), procs, role="Xvfb", fbdir=fbdir)
        yield display, fbdir / "Xvfb_screen0", procs
    finally:
        procs.stop_all()


def test_xvfb_header(xvfb: tuple[str, Path, Procs]) -> None:
    _, path, _ = xvfb
    h = read_header(path)
    assert (h.pixmap_width, h.pixmap_height, h.pixmap_depth, h.bits_per_pixel) == (W, H, 24, 32)
    assert h.bytes_per_line >= 4 * W and (h.red_mask, h.green_mask, h.blue_mask) == (0xFF0000, 0xFF00, 0xFF)
    assert h.window_name.startswith("Xvfb ")
    assert path.stat().st_size == h.file_size
    assert XwdHeader.from_bytes(h.to_bytes()) == h
    assert h.to_bytes() == path.read_bytes()[:h.header_size]


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a[..., :3] != b[..., :3], axis=2)


def test_frames_follow_x_drawing_with_damage(xvfb: tuple[str, Path, Procs]) -> None:
    display, path, _ = xvfb
    canvas = RootWindowCanvas(display)
    assert (canvas.width, canvas.height) == (W, H)
    canvas.canvas[...] = samples.text_like(H, W)
    canvas.put([Rect(0, 0, W, H)])
    source = XwdSource(path, pacing=FAST)
    held: list[Frame] = []  # every frame stays referenced: each update must go to another buffer

    async def scenario() -> None:
        first = await source.next_frame()
        held.append(first)
        assert first.damage is None and first.serial == 0
        assert np.array_equal(first.pixels[..., :3], canvas.canvas[..., :3])
        rng = np.random.default_rng(1)
        for step in range(1, 9):
            x, y = int(rng.integers(0, W - 40)), int(rng.integers(0, H - 30))
            w, h = int(rng.integers(1, 40)), int(rng.integers(1, 30))
            canvas.canvas[y:y + h, x:x + w] = rng.integers(0, 256, (h, w, 4), np.uint8)
            canvas.put([Rect(x, y, w, h)])
            frame = await asyncio.wait_for(source.next_frame(), 5)
            assert frame.serial == step and frame.damage
            assert np.array_equal(frame.pixels[..., :3], canvas.canvas[..., :3]), f"step {step}: not what X drew"
            covered = np.zeros((H, W), bool)
            for r in frame.damage:
                covered[r.y:r.y + r.h, r.x:r.x + r.w] = True
            assert not np.any(_changed(frame.pixels, held[-1].pixels) & ~covered), f"step {step}: damage misses"
            held.append(frame)
        # Nothing drawn: no frame, and the source goes idle (probes).
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(source.next_frame(), 0.5)
        assert source.idle and source.probes > 0

    try:
        asyncio.run(scenario())
        assert len({id(f.pixels) for f in held[-4:]}) > 1  # the tracker did switch buffers
    finally:
        asyncio.run(source.close())


def test_x_server_exit_shows_no_signal_and_a_new_one_is_served(xvfb: tuple[str, Path, Procs]) -> None:
    _, path, procs = xvfb
    source = XwdSource(path, pacing=FAST)

    async def scenario() -> None:
        await source.next_frame()
        procs.stop("Xvfb")  # Xvfb removes its screen file on exit
        gone = await asyncio.wait_for(source.next_frame(), 5)
        assert gone.damage is None and np.array_equal(gone.pixels, no_signal_frame(W, H))
        setup_xvfb((W, H), procs, role="Xvfb2", fbdir=path.parent)
        back = await asyncio.wait_for(source.next_frame(), 10)
        assert back.damage is None and not np.array_equal(back.pixels, gone.pixels)

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(source.close())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.int64) - b.astype(np.int64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def test_serve_xwd_to_vncsnapshot(xvfb: tuple[str, Path, Procs], tmp_path: Path) -> None:
    from clients.support import serving

    display, path, _ = xvfb
    canvas = RootWindowCanvas(display)
    image = samples.text_like(H, W)
    image[100:228, 200:328] = samples.photo_like(128, 128)
    canvas.canvas[...] = image
    canvas.put([Rect(0, 0, W, H)])
    out = tmp_path / "shot.jpg"
    with serving("--source", f"xwd:{path}") as (proc, port):
        shot = subprocess.run([VNCSNAPSHOT, "-quiet", "-encodings", "raw", "-nojpeg", f"127.0.0.1::{port}", str(out)],
                              capture_output=True, text=True, timeout=60)
        assert proc.poll() is None
    assert shot.returncode == 0, shot.stderr
    got = np.asarray(Image.open(out).convert("RGB"))
    assert got.shape == (H, W, 3)
    want = rgb_of(image)
    # Xvfb draws its (software) pointer in the middle of the screen: leave that out.
    mask = np.ones((H, W), bool)
    mask[H // 2 - 32:H // 2 + 32, W // 2 - 32:W // 2 + 32] = False
    assert psnr(got[mask], want[mask]) > 45


# --- files that cannot be served ------------------------------------------------------------------------

GOOD = XwdHeader(header_size=112, file_version=7, pixmap_format=2, pixmap_depth=24, pixmap_width=64,
                 pixmap_height=32, xoffset=0, byte_order=0, bitmap_unit=32, bitmap_bit_order=0, bitmap_pad=32,
                 bits_per_pixel=32, bytes_per_line=256, visual_class=4, red_mask=0xFF0000, green_mask=0xFF00,
                 blue_mask=0xFF, bits_per_rgb=8, colormap_entries=256, ncolors=2, window_width=64, window_height=32,
                 window_x=0, window_y=0, window_bdrwidth=0, window_name="test")


def write_xwd(path: Path, header: XwdHeader, pixels: bytes | None = None) -> Path:
    body = pixels if pixels is not None else bytes(header.bytes_per_line * header.pixmap_height)
    path.write_bytes(header.to_bytes() + bytes(12 * header.ncolors) + body)
    return path


BAD: dict[str, str] = {
    # name (see make_bad): what the one-line error must say
    "missing": r"does not exist",
    "empty": r"not an XWD screen file: 0 bytes",
    "truncated-header": r"not an XWD screen file: 50 bytes",
    "truncated-name": r"truncated: 104 bytes, its XWD header says 112",
    "truncated-pixels": r"truncated: .* bytes, its XWD header describes",
    "depth-16": r"unsupported pixel layout: depth 16 at 16 bits per pixel",
    "depth-8": r"unsupported pixel layout: depth 8 at 8 bits per pixel",
    "bgr-masks": r"unsupported pixel layout: visual class 4 with masks 0xff, 0xff00, 0xff0000",
    "msb-first": r"unsupported pixel layout: MSBFirst",
    "short-pitch": r"unsupported pixel layout: 200 bytes per line for 64 pixels",
    "not-xwd": r"not an XWD screen file \(version",
}


def make_bad(name: str, tmp: Path) -> Path:
    path = tmp / f"{name}.xwd"
    if name == "missing":
        return path
    if name == "empty":
        path.write_bytes(b"")
    elif name == "truncated-header":
        path.write_bytes(GOOD.to_bytes()[:50])
    elif name == "truncated-name":
        path.write_bytes(GOOD.to_bytes()[:104])
    elif name == "truncated-pixels":
        write_xwd(path, GOOD, bytes(100))
    elif name == "depth-16":
        write_xwd(path, replace(GOOD, pixmap_depth=16, bits_per_pixel=16, bytes_per_line=128, red_mask=0xF800,
                                green_mask=0x7E0, blue_mask=0x1F))
    elif name == "depth-8":
        write_xwd(path, replace(GOOD, pixmap_depth=8, bits_per_pixel=8, bytes_per_line=64, visual_class=3))
    elif name == "bgr-masks":
        write_xwd(path, replace(GOOD, red_mask=0xFF, blue_mask=0xFF0000))
    elif name == "msb-first":
        write_xwd(path, replace(GOOD, byte_order=1))
    elif name == "short-pitch":
        write_xwd(path, replace(GOOD, bytes_per_line=200))
    elif name == "not-xwd":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    return path


@pytest.mark.parametrize("name", list(BAD))
def test_unservable_file_is_refused(name: str, tmp_path: Path) -> None:
    path = make_bad(name, tmp_path)
    with pytest.raises(UsageError, match=BAD[name]):
        XwdSource.open(f"xwd:{path}")


@pytest.mark.parametrize("name", ["missing", "truncated-header", "depth-16", "bgr-masks"])
def test_serve_refuses_with_one_line_and_exit_2(name: str, tmp_path: Path) -> None:
    path = make_bad(name, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "vkmsremote", "serve", "--source", f"xwd:{path}", "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vkmsremote: "), proc.stderr
    assert str(path) in lines[0] and re.search(BAD[name], lines[0]), lines[0]


def test_serve_refuses_an_unknown_source_name() -> None:
    proc = subprocess.run([sys.executable, "-m", "vkmsremote", "serve", "--source", "xwd"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "xwd:PATH" in proc.stderr


def test_a_good_crafted_file_is_served_as_is(tmp_path: Path) -> None:
    pixels = np.arange(GOOD.bytes_per_line * GOOD.pixmap_height, dtype=np.uint32).astype(np.uint8).tobytes()
    path = write_xwd(tmp_path / "good.xwd", GOOD, pixels)
    source = XwdSource.open(f"xwd:{path}")
    try:
        frame = asyncio.run(source.next_frame())
    finally:
        asyncio.run(source.close())
    want = np.frombuffer(pixels, np.uint8).reshape(GOOD.pixmap_height, GOOD.pixmap_width, 4)
    assert np.array_equal(frame.pixels, want) and source.desktop_name == "test"

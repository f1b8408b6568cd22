"""vkmsremote.capture against the real kernel: CrtcReader follows PatternDriver's and modetest's page flips
frame by frame, equals the kernel's own writeback composition in every supported format, shows "no signal"
while the CRTC is off, reports the cursor plane, and refuses unreadable formats with a clear error."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from vkmsremote.capture.crtc import CrtcReader
from vkmsremote.capture.driver import PatternDriver, decode_frame_number, draw_pattern, pattern_base
from vkmsremote.capture.nosignal import no_signal_frame
from vkmsremote.capture.writeback import WritebackCapture
from vkmsremote.drm.atomic import AtomicRequest
from vkmsremote.drm.card import Card
from vkmsremote.drm.fourcc import DrmFormat, format_name
from vkmsremote.drm.framebuffer import (
    DumbBuffer,
    DumbFramebuffer,
    add_framebuffer,
    map_framebuffer,
    remove_framebuffer,
)
from vkmsremote.drm.resources import Resources
from vkmsremote.errors import UnsupportedFormatError
from vkmsremote.frame import Frame, FrameSource

from .test_drm_vm import make_vkms_device, wait_card

pytestmark = pytest.mark.vm

DEVICE = "capturetest"
SIZE = (1024, 768)


@pytest.fixture
def card_path(vkms_clean: Path) -> Iterator[str]:
    make_vkms_device(vkms_clean, DEVICE, writeback=True, cursor=True)
    yield wait_card(DEVICE)


@pytest.fixture
def driver(card_path: str) -> Iterator[PatternDriver]:
    drv = PatternDriver.open(card_path, size=SIZE, writeback=True)
    try:
        yield drv
    finally:
        drv.close()


def _expected(number: int) -> np.ndarray:
    out = np.zeros((SIZE[1], SIZE[0], 4), np.uint8)
    draw_pattern(out, pattern_base(*SIZE), number)
    return out


def test_reader_is_a_frame_source_and_follows_pattern_flips(card_path: str, driver: PatternDriver) -> None:
    driver.start()
    reader = CrtcReader.open(card_path, connector=driver.connector.name)
    assert isinstance(reader, FrameSource)
    assert driver.connector.name in reader.desktop_name and str(driver.crtc_id) in reader.desktop_name

    async def scenario() -> list[tuple[int, Frame]]:
        first = await reader.next_frame()
        assert first.damage is None and first.serial == 0
        assert (first.width, first.height) == SIZE
        assert decode_frame_number(first.pixels) == 0
        assert np.array_equal(first.pixels[..., :3], _expected(0)[..., :3])
        # 20 flips/s: each frame stays up for 3 vblanks, so the reader sees both buffers (flipping at every
        # vblank, a reader looking every other vblank would only ever see one of them).
        flipping = asyncio.create_task(driver.run(frames=40, fps=20))
        got: list[tuple[int, Frame]] = []
        try:
            while not got or got[-1][0] != 40:
                frame = await asyncio.wait_for(reader.next_frame(), 10)
                number = decode_frame_number(frame.pixels)
                assert number is not None, "frame number unreadable"
                # Copy: the reader updates its buffer in place on the next call.
                got.append((number, Frame(frame.pixels.copy(), frame.serial, frame.damage)))
        finally:
            await flipping
        return got

    try:
        got = asyncio.run(scenario())
        numbers = [n for n, _ in got]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers
        assert numbers[-1] == 40 and len(numbers) >= 5, numbers
        serials = [f.serial for _, f in got]
        assert serials == list(range(1, len(got) + 1))
        for number, frame in got:
            assert np.array_equal(frame.pixels[..., :3], _expected(number)[..., :3]), f"frame {number} differs"
            # The frame number changed, so some damage rectangle touches the code strip.
            assert frame.damage and any(r.y < 32 and r.x < 512 for r in frame.damage), frame.damage
        # Two buffers alternate: each one seen was exported and mapped once, then reused across the flips.
        assert reader._fbs.maps == len(reader._fbs) <= 2 < len(got), (reader._fbs.maps, len(got))
        assert reader.vblanks >= len(got)
    finally:
        asyncio.run(reader.close())
    assert reader.card.closed


def test_writeback_equals_getfb2_in_every_format(card_path: str, driver: PatternDriver) -> None:
    driver.start()
    wb = WritebackCapture(driver.card, driver.crtc_id)
    reader = CrtcReader.open(card_path, crtc_id=driver.crtc_id)
    try:
        first = asyncio.run(reader.next_frame())
        composed = wb.capture()
        assert np.array_equal(composed[..., :3], first.pixels[..., :3])
        rng = np.random.default_rng(7)
        w, h = SIZE
        for fmt in (DrmFormat.XBGR8888, DrmFormat.ARGB8888, DrmFormat.RGB888, DrmFormat.BGR888, DrmFormat.RGB565):
            with DumbFramebuffer(driver.card, w, h, fmt) as fb:
                fb.rows[...] = rng.integers(0, 256, fb.rows.shape, dtype=np.uint8)
                if fmt == DrmFormat.ARGB8888:
                    fb.pixels[..., 3] = 0xFF  # opaque: the composition over black then equals the pixels
                AtomicRequest(driver.card).add(driver.plane_id, "FB_ID", fb.fb_id).commit()
                try:
                    frame = asyncio.run(asyncio.wait_for(reader.next_frame(), 20))
                except TimeoutError:
                    raise AssertionError(f"no new frame after switching to {format_name(fmt)}") from None
                composed = wb.capture()
                diff = np.abs(frame.pixels[..., :3].astype(int) - composed[..., :3].astype(int))
                # RGB565 -> 8 bits: the kernel rounds, we replicate bits; they may differ by one step.
                assert diff.max() <= (1 if fmt == DrmFormat.RGB565 else 0), format_name(fmt)
                # Back to the pattern before RMFB: removing a shown primary fb turns the CRTC off.
                AtomicRequest(driver.card).add(driver.plane_id, "FB_ID", driver.front.fb_id).commit()
        assert wb.captures == 6
    finally:
        wb.close()
        asyncio.run(reader.close())


def test_no_signal_while_off_then_picture(card_path: str) -> None:
    reader = CrtcReader.open(card_path, idle_poll=0.05)  # the card's only CRTC
    try:
        async def scenario() -> None:
            dark = await reader.next_frame()
            assert np.array_equal(dark.pixels, no_signal_frame(1024, 768))
            drv = PatternDriver.open(card_path, size=(800, 600))
            try:
                waiting = asyncio.create_task(reader.next_frame())
                await asyncio.sleep(0.3)
                assert not waiting.done(), "a dark CRTC must not produce frames"
                drv.start()
                lit = await asyncio.wait_for(waiting, 20)
                assert (lit.width, lit.height) == (800, 600) and lit.damage is None
                assert decode_frame_number(lit.pixels) == 0
                drv.stop()
                off = await asyncio.wait_for(reader.next_frame(), 20)
                assert off.damage is None and np.array_equal(off.pixels, no_signal_frame(800, 600))
            finally:
                drv.close()

        asyncio.run(scenario())
    finally:
        asyncio.run(reader.close())


def test_cursor_plane_is_reported(card_path: str, driver: PatternDriver) -> None:
    driver.start()
    res = Resources.fetch(driver.card, probe=False)
    cursor_plane = res.cursor_plane(driver.crtc_id)
    assert cursor_plane is not None
    reader = CrtcReader.open(card_path, crtc_id=driver.crtc_id)
    image = np.zeros((64, 64, 4), np.uint8)
    image[8:56, 8:56] = (0, 0, 255, 255)  # opaque red square, transparent border
    with DumbFramebuffer(driver.card, 64, 64, DrmFormat.ARGB8888) as cur:
        cur.pixels[...] = image

        def place(x: int, y: int) -> None:
            AtomicRequest(driver.card).add_many(cursor_plane, {
                "FB_ID": cur.fb_id, "CRTC_ID": driver.crtc_id, "SRC_X": 0, "SRC_Y": 0, "SRC_W": 64 << 16,
                "SRC_H": 64 << 16, "CRTC_X": x, "CRTC_Y": y, "CRTC_W": 64, "CRTC_H": 64,
            }).commit()

        try:
            assert asyncio.run(reader.next_frame()).serial == 0
            assert reader.cursor() is None
            place(100, 50)

            async def next_cursor_change() -> Frame:
                return await asyncio.wait_for(reader.next_frame(), 20)

            frame = asyncio.run(next_cursor_change())
            c = reader.cursor()
            assert c is not None and c.visible and (c.x, c.y) == (100, 50) and (c.hot_x, c.hot_y) == (0, 0)
            assert np.array_equal(c.pixels, image)
            assert frame.damage == ()  # only the cursor changed: the primary plane's pixels did not
            place(300, 200)
            asyncio.run(next_cursor_change())
            c2 = reader.cursor()
            assert c2 is not None and (c2.x, c2.y) == (300, 200) and c2.serial == c.serial + 1
            AtomicRequest(driver.card).add_many(cursor_plane, {"FB_ID": 0, "CRTC_ID": 0}).commit()
            asyncio.run(next_cursor_change())
            c3 = reader.cursor()
            assert c3 is not None and not c3.visible
        finally:
            asyncio.run(reader.close())


def test_unreadable_format_is_refused_clearly(card_path: str, driver: PatternDriver) -> None:
    driver.start()
    w, h = SIZE
    dumb = DumbBuffer(driver.card, w, h, 64)
    fb_id = add_framebuffer(driver.card, w, h, DrmFormat.XRGB16161616, (dumb.handle,), (dumb.pitch,))
    try:
        AtomicRequest(driver.card).add(driver.plane_id, "FB_ID", fb_id).commit()
        reader = CrtcReader.open(card_path, crtc_id=driver.crtc_id)
        try:
            with pytest.raises(UnsupportedFormatError, match="XRGB16161616") as ei:
                asyncio.run(reader.next_frame())
            assert "XRGB8888" in ei.value.hint
        finally:
            asyncio.run(reader.close())
        AtomicRequest(driver.card).add(driver.plane_id, "FB_ID", driver.front.fb_id).commit()
    finally:
        remove_framebuffer(driver.card, fb_id)
        dumb.destroy()


def test_reader_follows_modetest_flips(card_path: str) -> None:
    with Card.open(card_path) as probe:
        res = Resources.fetch(probe)
        conn, crtc = res.connectors[0], res.crtcs[0]
    proc = subprocess.Popen(["modetest", "-M", "vkms", "-s", f"{conn.id}@{crtc.id}:1024x768", "-v"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        with Card.open(card_path) as probe:
            while Resources.fetch(probe, probe=False).crtcs[0].fb_id == 0:
                assert time.monotonic() < deadline and proc.poll() is None, "modetest did not light the CRTC"
                time.sleep(0.05)
        reader = CrtcReader.open(card_path, crtc_id=crtc.id)

        async def frames(n: int) -> list[np.ndarray]:
            out = [(await reader.next_frame()).pixels.copy()]
            while len(out) < n:
                out.append((await asyncio.wait_for(reader.next_frame(), 10)).pixels.copy())
            return out

        try:
            got = asyncio.run(frames(12))
            buffers = []
            for fb_id in list(reader._fbs._entries):
                with map_framebuffer(reader.card, fb_id) as m, m.reading():
                    buffers.append(m.plane_rows(0, 4).copy())
            assert len(buffers) == 2 and reader._fbs.maps == 2
            # Every frame is one of modetest's two buffers, and consecutive frames differ (it flips).
            which = [next(i for i, b in enumerate(buffers) if np.array_equal(f[..., :3], b[..., :3])) for f in got]
            assert all(a != b for a, b in itertools.pairwise(which)), which
        finally:
            asyncio.run(reader.close())
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.terminate()
        proc.wait(timeout=20)

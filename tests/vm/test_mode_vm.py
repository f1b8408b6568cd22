"""Any mode on XR-0 (issue 13) against the real kernel: VKMS accepts modes it does not list, at the size and
rate asked for (CVT reduced blanking), and times its vblanks from them; ``up --drive pattern --mode`` sets
one, and a client's SetDesktopSize goes through the capture broker to a modeset of a size VKMS does not list
(1366x1024), seen by the requester, by a second client, and by modetest."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clients.support import RawClient, rgb_of, screens_of

from vkmsremote.capture.driver import PatternDriver, decode_frame_number, draw_pattern, pattern_base
from vkmsremote.drm.card import Card
from vkmsremote.drm.crtc import get_crtc
from vkmsremote.drm.cvt import cvt_rb_mode
from vkmsremote.drm.framebuffer import get_framebuffer, release_handles
from vkmsremote.drm.resources import Resources
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.messages import FramebufferUpdateRequest, Screen, SetDesktopSize

from .test_drm_vm import make_vkms_device, wait_card
from .test_serve_vm import Up

pytestmark = pytest.mark.vm

RATES = ((3840, 1080, 90.0), (1920, 1080, 120.0))
MEASURE_SECONDS = 10.0


def modetest_crtcs() -> str:
    return subprocess.run(["modetest", "-M", "vkms", "-p"], capture_output=True, text=True, timeout=60).stdout


def test_unlisted_modes_and_their_flip_rate(vkms_clean: Path, vm_results_dir: Path, record_property: Any) -> None:
    make_vkms_device(vkms_clean, "modes")
    path = wait_card("modes")
    with PatternDriver.open(path, size=(1366, 1024), refresh=60) as drv:
        listed = {(m.width, m.height) for m in drv.connector.modes}
        assert (1366, 1024) not in listed and (3840, 1080) not in listed, "VKMS lists the mode: pick another"
        drv.start()
        crtc = get_crtc(drv.card, drv.crtc_id, with_properties=False)
        assert crtc.mode is not None and (crtc.mode.width, crtc.mode.height) == (1366, 1024)
        info = get_framebuffer(drv.card, crtc.fb_id)
        release_handles(drv.card, info)
        assert (info.width, info.height) == (1366, 1024)
        assert "1366x1024" in modetest_crtcs()  # a program nobody here wrote sees the mode on the CRTC
        lines = []
        for width, height, rate in RATES:
            mode = cvt_rb_mode(width, height, rate)
            drv.set_mode(mode)
            crtc = get_crtc(drv.card, drv.crtc_id, with_properties=False)
            assert crtc.mode is not None and crtc.mode.raw == mode.raw
            measured = asyncio.run(drv.measure_flip_rate(MEASURE_SECONDS))
            line = f"{width}x{height}@{rate:g} CVT-RB: {measured}"
            print(line)
            lines.append(line)
            record_property(f"flip_event_rate_{width}x{height}@{rate:g}", round(measured.event_rate, 3))
            record_property(f"flips_per_second_{width}x{height}@{rate:g}", round(measured.flips_per_second, 2))
            assert measured.seconds > MEASURE_SECONDS * 0.9 and measured.flips > 10, line
            # the page-flip events are locked to the mode's rate (2 %), and so is the CRTC's vblank counter
            assert abs(measured.event_rate - rate) / rate < 0.02, line
            assert abs(measured.vblank_rate - rate) / rate < 0.02, line
        (vm_results_dir / "mode-flip-rates.txt").write_text("\n".join(lines) + "\n")


async def _layout(c: RawClient) -> tuple[int, int, int, int, list[Screen]]:
    [(x, y, w, h, enc, data)] = (await c.read_update(60)).rects
    assert enc == Encoding.EXTENDED_DESKTOP_SIZE
    return x, y, w, h, screens_of(data)


async def _pattern_frame(c: RawClient) -> tuple[int, np.ndarray]:
    """A whole frame of the pattern in one update (Raw) and its frame number. A non-incremental request makes
    everything due; an ExtendedDesktopSize client gets the layout first, in an update of its own, and the
    pixels in answer to its next request."""
    c.send(FramebufferUpdateRequest(False, 0, 0, c.width, c.height))
    for _ in range(6):
        up = await c.read_update(60)
        area = sum(r[2] * r[3] for r in up.rects if r[4] == Encoding.RAW)
        if area == c.width * c.height:
            rgb = c.rgb()
            number = decode_frame_number(np.ascontiguousarray(rgb[..., ::-1]))
            assert number is not None, "a frame without an intact frame number"
            return number, rgb
        c.send(FramebufferUpdateRequest(not area, 0, 0, c.width, c.height))
    raise AssertionError("no update with the whole frame")


@pytest.mark.timeout(900)  # `up` alone takes about two minutes to start under TCG
def test_up_mode_and_set_desktop_size(vkms_clean: Path, tmp_path: Path) -> None:
    up = Up(tmp_path, "--drive", "pattern", "--mode", "1920x1080@120", "--drive-fps", "4", "--input", "none",
            port=5951)
    try:
        with Card.open(up.card) as card:
            mode = get_crtc(card, up.crtc_id, with_properties=False).mode
            assert mode is not None and (mode.width, mode.height) == (1920, 1080)
            assert abs(mode.refresh - 120) < 0.5, mode

        async def main() -> None:
            encs = (Encoding.RAW, Encoding.EXTENDED_DESKTOP_SIZE, Encoding.DESKTOP_SIZE)
            a, b = RawClient(), RawClient()
            for c in (a, b):
                await c.connect(up.port)
                c.set_encodings(*encs)
                c.send(FramebufferUpdateRequest(False, 0, 0, c.width, c.height))
                [screen] = (await _layout(c))[4]
            bad = SetDesktopSize(9000, 9000, (Screen(screen.id, 0, 0, 9000, 9000),))
            a.send(bad)
            assert (await _layout(a))[:4] == (1, 3, 1920, 1080)  # this client, invalid layout
            a.send(SetDesktopSize(1366, 1024, (Screen(screen.id, 0, 0, 1366, 1024),)))
            assert (await _layout(a))[:4] == (1, 0, 1366, 1024)  # this client, done
            assert (await _layout(b))[:4] == (2, 0, 1366, 1024)  # the other client is told
            base = pattern_base(1366, 1024)
            expected = np.zeros((1024, 1366, 4), np.uint8)
            for c in (a, b):
                number, rgb = await _pattern_frame(c)
                draw_pattern(expected, base, number)
                assert rgb.shape == (1024, 1366, 3) and np.array_equal(rgb, rgb_of(expected)), number
            await a.close()
            await b.close()

        asyncio.run(main())
        with Card.open(up.card) as card:
            crtc = get_crtc(card, up.crtc_id, with_properties=False)
            assert crtc.mode is not None and (crtc.mode.width, crtc.mode.height) == (1366, 1024)
            assert abs(crtc.mode.refresh - 120) < 0.5  # the rate it ran at is kept
            assert Resources.fetch(card).connector(up.drm_name).modes  # the list itself is unchanged
        assert "1366x1024" in modetest_crtcs()
        assert "now 1366x1024" in up.output
    finally:
        code = up.stop()
    assert code == 0, up.output

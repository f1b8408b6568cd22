"""vkmsremote.drm.cvt against the reference implementation: Debian's ``cvt -r`` (libxcvt)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from vkmsremote.drm.cvt import cvt_rb_mode, modeline, parse_mode
from vkmsremote.drm.mode import Mode
from vkmsremote.errors import UsageError


def reference(width: int, height: int, refresh: int) -> str:
    cvt = shutil.which("cvt")
    assert cvt, "cvt (Debian package xcvt) is not installed: run scripts/setup-host.sh"
    out = subprocess.run([cvt, "-r", str(width), str(height), str(refresh)], capture_output=True, text=True,
                         check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("Modeline"))
    return re.sub(r"\s+", " ", line.removeprefix("Modeline ").strip())


@pytest.mark.parametrize("width,height,refresh", [
    (1920, 1080, 60), (1920, 1080, 120), (3840, 1080, 60), (3840, 1080, 120), (2560, 1600, 60),
    (1024, 768, 60), (1280, 1024, 60), (1440, 900, 120), (640, 480, 60), (8192, 8192, 60), (2392, 1668, 60),
])
def test_timings_equal_cvt_r(width: int, height: int, refresh: int) -> None:
    assert modeline(cvt_rb_mode(width, height, refresh)) == reference(width, height, refresh)


@pytest.mark.parametrize("width,height,refresh", [
    (1920, 1080, 60), (1920, 1080, 72), (1920, 1080, 90), (1920, 1080, 120),
    (3840, 1080, 60), (3840, 1080, 72), (3840, 1080, 90), (1366, 1024, 60), (2388, 1668, 60),
])
def test_any_rate_and_width_within_half_a_percent(width: int, height: int, refresh: int) -> None:
    mode = cvt_rb_mode(width, height, refresh)
    assert (mode.width, mode.height) == (width, height)  # not rounded to 8 (a client asked for exactly this)
    assert abs(mode.refresh - refresh) / refresh < 0.005
    assert mode.vrefresh == round(mode.refresh)
    assert Mode.from_bytes(mode.raw) == mode  # a MODE_ID blob round-trips


def test_parse_mode() -> None:
    assert parse_mode("3840x1080@90") == (3840, 1080, 90.0)
    assert parse_mode("1920x1080") == (1920, 1080, None)
    assert parse_mode("1920X1080@59.94Hz") == (1920, 1080, 59.94)
    for bad in ("0x0", "9000x9000", "1920x1080@0", "1920x1080@500", "1920", "axb", "1920x1080@", ""):
        with pytest.raises(UsageError):
            parse_mode(bad)

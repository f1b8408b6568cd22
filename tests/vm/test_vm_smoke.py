"""Smoke test of the test VM itself: configfs, VKMS, and a device made by hand with file operations.

Independent of vkmsremote's own VKMS code on purpose: if this fails, the kernel or the VM is wrong,
not the library.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

DEVICE = "vkmsremote-smoke"


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def cards_of(device: str) -> list[str]:
    """DRM card names (card0, ...) of the faux device a configfs VKMS device creates (VM-NOTES)."""
    drm = Path("/sys/devices/faux") / device / "drm"
    return sorted(p.name for p in drm.glob("card[0-9]*")) if drm.is_dir() else []


def test_environment_is_the_vm() -> None:
    assert os.environ.get("VKMSREMOTE_IN_VM") == "1"
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    assert any(m[1] == "/sys/kernel/config" and m[2] == "configfs" for m in mounts)
    assert any(m[1] == "/tmp" and m[2] == "tmpfs" for m in mounts), (
        "the guest's /tmp should be a private tmpfs"
    )


def test_tmp_path_is_writable_and_takes_sockets(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert (tmp_path / "file").read_text() == "x"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock"))
    assert (tmp_path / "sock").exists()


def test_no_default_device(vkms_clean: Path) -> None:
    # The runner boots with vkms.create_default_dev=0: no card unless configfs makes one.
    assert list(vkms_clean.iterdir()) == []
    assert not list(Path("/sys/class/drm").glob("card[0-9]*"))


def test_device_by_hand(vkms_clean: Path, vkms_remove_device: Callable[[Path], None]) -> None:
    dev = vkms_clean / DEVICE
    dev.mkdir()
    for group in ("planes", "crtcs", "encoders", "connectors"):
        assert (dev / group).is_dir(), f"configfs did not create {group}/"
    assert (dev / "enabled").read_text().strip() == "0"

    plane, crtc, enc, conn = (dev / "planes/primary", dev / "crtcs/crtc0", dev / "encoders/enc0",
                              dev / "connectors/XR-0")  # fmt: skip
    for item in (plane, crtc, enc, conn):
        item.mkdir()
    (plane / "type").write_text("1")  # DRM_PLANE_TYPE_PRIMARY
    assert (plane / "type").read_text().strip() == "1"
    os.symlink(crtc, plane / "possible_crtcs" / "crtc0")
    os.symlink(crtc, enc / "possible_crtcs" / "crtc0")
    os.symlink(enc, conn / "possible_encoders" / "enc0")
    assert not cards_of(DEVICE)

    (dev / "enabled").write_text("1")
    assert (dev / "enabled").read_text().strip() == "1"
    wait_for(lambda: bool(cards_of(DEVICE)), f"a DRM card under /sys/devices/faux/{DEVICE}")
    [card] = cards_of(DEVICE)
    wait_for(lambda: Path("/dev/dri", card).exists(), f"/dev/dri/{card}")
    assert Path("/dev/dri", card).is_char_device()
    connectors = sorted(Path("/sys/class/drm").glob(f"{card}-Virtual-*"))
    assert len(connectors) == 1, f"expected one Virtual connector, got {connectors}"
    # (its sysfs "status" reads "unknown" until a DRM client probes the connector)

    vkms_remove_device(dev)
    assert not dev.exists()
    wait_for(lambda: not Path("/dev/dri", card).exists(), f"/dev/dri/{card} to go away")
    assert not Path("/sys/devices/faux", DEVICE).exists()
    assert not list(Path("/sys/class/drm").glob(f"{card}-*"))

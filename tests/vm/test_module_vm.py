"""VKMS as a loadable module, as distributions ship it: the test kernel builds it as vkms.ko
(scripts/kernel.config: CONFIG_DRM_VKMS=m) and the VM runner binds the kernel's modules at
/lib/modules/<release> and loads vkms before the tests, as modules-load.d does at boot.

These unload it and load it again their own ways, then leave it loaded as they found it:

- ``vkmsremote up`` loads vkms itself with create_default_dev=0 and mounts configfs when it is not
  mounted, then makes XR-0 (and no default device appears);
- without the module (``/lib/modules/<release>`` empty): a one-line error naming the fix;
- the pre-6.19 path: vkms loaded the way an old kernel loads it (with its one default device), and
  ``up --default-device`` serves XR-0 from that device's single Virtual connector; ``status`` says which
  features need configfs (6.19).
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from .test_compositor_vm import wait_for
from .test_serve_vm import Viewer

pytestmark = [pytest.mark.vm, pytest.mark.timeout(600)]

CONFIGFS = Path("/sys/kernel/config")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr}{out.stdout}")
    return out


def vkmsremote(*argv: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vkmsremote", "--state-dir", str(state), *argv],
                          capture_output=True, text=True, timeout=300)


def unload() -> None:
    """rmmod vkms (retried: a closing client may hold the card for a moment)."""
    deadline = time.monotonic() + 30
    while Path("/sys/module/vkms").exists():
        out = sh("rmmod", "vkms", check=False)
        if out.returncode != 0:
            assert time.monotonic() < deadline, f"rmmod vkms: {out.stderr}"
            time.sleep(0.5)


def mounted(path: Path, fstype: str) -> bool:
    return any(f.split()[1] == str(path) and f.split()[2] == fstype
               for f in Path("/proc/mounts").read_text().splitlines())


@pytest.fixture(scope="module")
def modules() -> Iterator[Path]:
    """/lib/modules/<release> with this kernel's modules (bound there by the VM runner); vkms is loaded
    again afterwards (the boot's way: the command line's vkms.create_default_dev=0) and configfs mounted."""
    target = Path("/lib/modules") / platform.release()
    assert (target / "modules.dep").exists(), f"{target} has no modules.dep: boot the test kernel with its modules"
    try:
        yield target
    finally:
        unload()
        sh("modprobe", "vkms")
        if not mounted(CONFIGFS, "configfs"):
            sh("mount", "-t", "configfs", "configfs", str(CONFIGFS))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_vkms_is_a_module_here(modules: Path) -> None:
    assert (modules / "kernel" / "drivers" / "gpu" / "drm" / "vkms" / "vkms.ko").exists()
    assert Path("/sys/module/vkms/initstate").read_text().strip() == "live", "vkms is built in, not a module"


def test_up_loads_vkms_and_mounts_configfs(modules: Path, state: Path) -> None:
    unload()
    if mounted(CONFIGFS, "configfs"):
        sh("umount", str(CONFIGFS))
    try:
        out = vkmsremote("up", "--no-serve", state=state)
        assert out.returncode == 0, out.stderr
        assert re.search(r"XR-0 -> /dev/dri/card\d+\s+Virtual-\d+", out.stdout), out.stdout
        assert mounted(CONFIGFS, "configfs")
        assert Path("/sys/module/vkms/initstate").read_text().strip() == "live"  # a module, not built in
        assert Path("/sys/module/vkms/parameters/create_default_dev").read_text().strip() == "N"
        assert not Path("/sys/devices/faux/vkms").exists(), "a default device appeared beside XR-0"
        out = vkmsremote("down", state=state)
        assert out.returncode == 0, out.stderr
    finally:
        vkmsremote("down", "--force", state=state)
        unload()


def test_without_the_module_one_line_error(modules: Path, state: Path) -> None:
    unload()
    sh("mount", "-t", "tmpfs", "empty", str(modules))  # as on a kernel whose package has no vkms.ko
    try:
        out = vkmsremote("up", "--no-serve", state=state)
    finally:
        sh("umount", str(modules))
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"this kernel (Linux {platform.release()}) has no vkms module" in lines[0]
    assert "linux-modules-extra" in lines[0] and "CONFIG_DRM_VKMS=m" in lines[0]


def test_default_device_fallback_serves_xr0(modules: Path, state: Path, tmp_path: Path) -> None:
    """The pre-6.19 path: vkms loaded as an old kernel loads it (its one default device), up maps XR-0
    to that device's Virtual connector and serves it; status says what needs 6.19."""
    unload()
    # as an old kernel's `modprobe vkms` does: one default device; the old kernels' parameters
    sh("modprobe", "vkms", "create_default_dev=1", "enable_cursor=1", "enable_writeback=1", "enable_overlay=0")
    log = tmp_path / "up.log"
    proc = subprocess.Popen([sys.executable, "-m", "vkmsremote", "--state-dir", str(state), "up",
                             "--default-device", "--drive", "pattern", "--port", "5977"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    try:
        wait_for(lambda: "serving XR-0" in log.read_text(errors="replace") or proc.poll() is not None,
                 "up --default-device to serve", timeout=300)
        text = log.read_text(errors="replace")
        assert proc.poll() is None, text
        assert re.search(r"XR-0 -> /dev/dri/card\d+\s+Virtual-1 ", text), text
        viewer = Viewer(5977)
        try:
            def picture() -> bool:
                frame = viewer.frame(incremental=False)
                return frame.shape[:2] == (768, 1024) and bool(np.any(frame != frame[0, 0]))

            wait_for(picture, "the pattern on XR-0 (the default device's Virtual-1) in the VNC client", timeout=120)
        finally:
            viewer.close()
        status = vkmsremote("status", state=state)
        assert status.returncode == 0, status.stderr
        assert "VKMS default device (module parameters: enable_cursor=Y, enable_overlay=N, enable_writeback=Y)" \
            in status.stdout, status.stdout
        assert "need VKMS with configfs (Linux 6.19+)" in status.stdout
    finally:
        proc.terminate()
        proc.wait(60)
        unload()

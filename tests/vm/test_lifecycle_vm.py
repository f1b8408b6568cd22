"""`vkmsremote up/down/status/hotplug` against the real kernel's VKMS configfs (run in the test VM).

Cross-checked with tools nobody here wrote: modetest (libdrm) and drm_info read the DRM side, udev
events are watched with the test's own pyudev monitor, configfs is read with plain file operations.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pyudev

from vkmsremote import cli
from vkmsremote.errors import DeviceStateError, VkmsRemoteError
from vkmsremote.vkms.configfs import Configfs
from vkmsremote.vkms.device import down, up
from vkmsremote.vkms.plan import Op
from vkmsremote.vkms.profile import load_profile
from vkmsremote.vkms.state import StateStore

pytestmark = pytest.mark.vm

DEVICE = "vkmsremote"  # device.name in configfs/xr-0.toml and xr-dual.toml
REPO = Path(__file__).resolve().parents[2]
TIMEOUT = "90"  # seconds for udev waits; everything is slow under TCG


@pytest.fixture
def env(vkms_clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment the commands run in (state kept in the test's own directory)."""
    monkeypatch.setenv("VKMSREMOTE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("VKMSREMOTE_CONFIGFS_ROOT", raising=False)
    return dict(os.environ)


def vkmsremote(env: dict[str, str], *argv: str, check: bool = True, own_process: bool = False
               ) -> subprocess.CompletedProcess[str]:
    """Run the command line: ``cli.main`` in this process (Python start-up costs ~20 s per process
    under TCG), or ``python -m vkmsremote`` in its own process with ``own_process``."""
    if argv[:1] == ("up",):
        argv = (*argv, "--no-serve")  # `up` serves until stopped unless told not to (tests/vm/test_serve_vm.py)
    if own_process:
        proc = subprocess.run([sys.executable, "-m", "vkmsremote", *argv], capture_output=True, text=True,
                              env=env, timeout=300, cwd=REPO)
    else:
        mine = {k: v for k, v in os.environ.items() if k.startswith("VKMSREMOTE_")}
        assert mine == {k: v for k, v in env.items() if k.startswith("VKMSREMOTE_")}, "env is this process's"
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(argv))
            except SystemExit as e:  # argparse
                code = int(e.code or 0)
        proc = subprocess.CompletedProcess(["vkmsremote", *argv], code, out.getvalue(), err.getvalue())
    if check:
        assert proc.returncode == 0, f"vkmsremote {' '.join(argv)} exited {proc.returncode}: {proc.stderr}"
    return proc


def status_json(env: dict[str, str]) -> dict[str, Any]:
    doc = json.loads(vkmsremote(env, "status", "--json").stdout)
    return {d["name"]: d for d in doc["devices"]}


def modetest_connectors(*select: str) -> dict[int, tuple[str, str]]:
    """connector id -> (status, name) as libdrm's modetest lists them (it probes the connectors).

    ``select`` picks the card: modetest's -D takes a bus id, which for a configfs VKMS device is its
    name (the faux device's), e.g. ("-D", "vkmsremote"); by default the first vkms card.
    """
    out = subprocess.run(["modetest", "-M", "vkms", *select, "-c"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    rows = re.findall(r"^(\d+)\s+\d+\s+(connected|disconnected|unknown)\s+(\S+)", out, re.M)
    return {int(i): (st, name) for i, st, name in rows}


def modetest_crtcs(device: str) -> set[int]:
    out = subprocess.run(["modetest", "-M", "vkms", "-D", device, "-p"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    section = out.split("CRTCs:", 1)[1].split("Planes:", 1)[0]
    return {int(m) for m in re.findall(r"^(\d+)\s+\d+\s+\(\d+,\d+\)", section, re.M)}


def drm_info_connectors(card: str) -> dict[int, int]:
    """connector id -> DRM connection status (1 connected, 2 disconnected) per drm_info -j."""
    doc = json.loads(subprocess.run(["drm_info", "-j", card], capture_output=True, text=True, timeout=120,
                                    check=True).stdout)
    return {c["id"]: c["status"] for c in doc[card]["connectors"]}


def configfs_tree() -> dict[str, str]:
    """Every path under /sys/kernel/config/vkms with its attribute value or link target."""
    root = Path("/sys/kernel/config/vkms")
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[str(p)] = "-> " + os.readlink(p)
            elif p.is_file():
                out[str(p)] = p.read_text().strip()
            else:
                out[str(p)] = "/"
    return out


def faux_cards(device: str) -> list[str]:
    return sorted(p.name for p in Path(f"/sys/devices/faux/{device}/drm").glob("card[0-9]*"))


def test_up_maps_xr0_to_the_drm_connector_modetest_and_drm_info_see(env: dict[str, str]) -> None:
    t0 = time.monotonic()
    out = vkmsremote(env, "up", "--timeout", TIMEOUT, own_process=True).stdout  # the real entry point
    elapsed = time.monotonic() - t0
    dev = status_json(env)[DEVICE]
    card = dev["card"]
    assert card == f"/dev/dri/{faux_cards(DEVICE)[0]}"
    (xr0,) = dev["connectors"]
    assert xr0["name"] == "XR-0" and xr0["drm_status"] == "connected"
    assert re.fullmatch(r"Virtual-\d+", xr0["drm_name"])
    listed = modetest_connectors()  # `modetest -M vkms -c`: the only VKMS card here
    assert listed[xr0["connector_id"]] == ("connected", xr0["drm_name"]), listed
    assert modetest_connectors("-D", DEVICE) == listed
    assert drm_info_connectors(card)[xr0["connector_id"]] == 1
    assert xr0["crtc_id"] in modetest_crtcs(DEVICE)
    assert xr0["preferred_mode"] and xr0["preferred_mode"].startswith("1024x768@")
    assert Path(xr0["sysfs"], "connector_id").read_text().strip() == str(xr0["connector_id"])
    assert (f"XR-0 -> {card}  {xr0['drm_name']}  connector {xr0['connector_id']}  CRTC {xr0['crtc_id']}"
            in out), out
    assert dev["managed"] and dev["configfs"]["enabled"]
    print(f"vkmsremote up took {elapsed:.2f} s in the VM")


def test_mapping_does_not_depend_on_card_or_connector_order(env: dict[str, str], tmp_path: Path) -> None:
    # Another VKMS device made first takes card0 and Virtual-1; ours must still be found by its name.
    other = tmp_path / "other.toml"
    other.write_text((REPO / "configfs/xr-dual.toml").read_text().replace('name = "vkmsremote"', 'name = "other"'))
    vkmsremote(env, "up", "-p", str(other), "--timeout", TIMEOUT)
    vkmsremote(env, "up", "--timeout", TIMEOUT)
    devices = status_json(env)
    mine, theirs = devices[DEVICE], devices["other"]
    assert mine["card"] != theirs["card"]
    (xr0,) = mine["connectors"]
    assert xr0["drm_name"] not in {c["drm_name"] for c in theirs["connectors"]}
    assert modetest_connectors("-D", DEVICE)[xr0["connector_id"]] == ("connected", xr0["drm_name"])
    assert drm_info_connectors(mine["card"])[xr0["connector_id"]] == 1
    assert xr0["drm_name"] not in {name for _, name in modetest_connectors("-D", "other").values()}
    vkmsremote(env, "down", "other")
    assert [d for d in status_json(env)] == [DEVICE]


def test_up_twice_changes_nothing(env: dict[str, str]) -> None:
    vkmsremote(env, "up", "--timeout", TIMEOUT)
    before, card_before = configfs_tree(), faux_cards(DEVICE)
    out = vkmsremote(env, "up", "--timeout", TIMEOUT).stdout
    assert out.startswith(f"{DEVICE} already up: nothing changed")
    assert configfs_tree() == before and faux_cards(DEVICE) == card_before


def test_xr_dual_shows_xr0_and_xr1(env: dict[str, str]) -> None:
    vkmsremote(env, "up", "-p", "xr-dual", "--timeout", TIMEOUT)
    dev = status_json(env)[DEVICE]
    conns = {c["name"]: c for c in dev["connectors"]}
    assert set(conns) == {"XR-0", "XR-1"}
    assert conns["XR-0"]["connector_id"] != conns["XR-1"]["connector_id"]
    assert conns["XR-0"]["crtc_id"] != conns["XR-1"]["crtc_id"]
    listed = modetest_connectors("-D", DEVICE)
    for c in conns.values():
        assert listed[c["connector_id"]] == ("connected", c["drm_name"])
    info = drm_info_connectors(dev["card"])
    assert info[conns["XR-0"]["connector_id"]] == info[conns["XR-1"]["connector_id"]] == 1


def test_down_removes_the_device_and_its_card(env: dict[str, str]) -> None:
    vkmsremote(env, "up", "--timeout", TIMEOUT)
    (card,) = faux_cards(DEVICE)
    out = vkmsremote(env, "down").stdout
    assert out.startswith(f"removed {DEVICE}")
    assert list(Path("/sys/kernel/config/vkms").iterdir()) == []
    assert not Path(f"/sys/devices/faux/{DEVICE}").exists()
    deadline = time.monotonic() + 30
    while Path("/dev/dri", card).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path("/dev/dri", card).exists()
    assert status_json(env) == {}


def test_different_layout_is_refused_and_replace_rebuilds(env: dict[str, str]) -> None:
    vkmsremote(env, "up", "--timeout", TIMEOUT)
    before = configfs_tree()
    proc = vkmsremote(env, "up", "-p", "xr-dual", "--timeout", TIMEOUT, check=False)
    assert proc.returncode == 6
    assert "already exists with a different layout" in proc.stderr and "--replace" in proc.stderr
    assert configfs_tree() == before
    vkmsremote(env, "up", "-p", "xr-dual", "--replace", "--timeout", TIMEOUT)
    assert {c["name"] for c in status_json(env)[DEVICE]["connectors"]} == {"XR-0", "XR-1"}


class FailAt:
    def __init__(self, cfs: Configfs, n: int) -> None:
        self.cfs, self.n, self.count = cfs, n, 0

    def run(self, op: Op) -> None:
        self.count += 1
        if self.count == self.n + 1:
            raise DeviceStateError(f"injected failure before {op.shell()}")
        self.cfs.run(op)


@pytest.mark.parametrize("fail_at", [1, 7, 14])  # after mkdir device; among the items; at enabled
def test_failure_mid_up_leaves_nothing_behind(vkms_clean: Path, tmp_path: Path, fail_at: int) -> None:
    cfs, store = Configfs(), StateStore(tmp_path / "state")
    with pytest.raises(DeviceStateError, match="injected"):
        up(load_profile("xr-0"), configfs=cfs, state=store, executor=FailAt(cfs, fail_at), timeout=90)
    assert list(vkms_clean.iterdir()) == []
    assert not Path(f"/sys/devices/faux/{DEVICE}").exists()
    assert store.devices() == []


def test_failure_after_the_card_appeared_removes_it_again(vkms_clean: Path, tmp_path: Path) -> None:
    cfs, store = Configfs(), StateStore(tmp_path / "state")
    seen: list[str] = []

    def next_step_fails(mapping: Any) -> None:
        seen.append(mapping.card)
        raise VkmsRemoteError("the next step failed")

    with pytest.raises(VkmsRemoteError, match="next step"):
        up(load_profile("xr-0"), configfs=cfs, state=store, after_apply=next_step_fails, timeout=90)
    assert seen and seen[0].startswith("/dev/dri/card")
    assert list(vkms_clean.iterdir()) == []
    assert not Path(f"/sys/devices/faux/{DEVICE}").exists()
    assert store.devices() == []


def test_failed_replace_puts_the_old_device_back(vkms_clean: Path, tmp_path: Path) -> None:
    """xr-dual is up; `up --replace` with xr-0 gets as far as a lit card, then the next step fails: the
    kernel ends up with xr-dual again (both connectors, a card), and our record of it is unchanged."""
    cfs, store = Configfs(), StateStore(tmp_path / "state")
    old = up(load_profile("xr-dual"), configfs=cfs, state=store, timeout=90).device
    record = store.load(DEVICE)
    seen: list[list[str]] = []

    def next_step_fails(mapping: Any) -> None:
        seen.append([c.name for c in mapping.connectors])
        raise VkmsRemoteError("the next step failed")

    with pytest.raises(VkmsRemoteError, match="next step"):
        up(load_profile("xr-0"), configfs=cfs, state=store, replace=True, after_apply=next_step_fails, timeout=90)
    assert seen == [["XR-0"]]  # the new device really was up before the failure
    assert store.load(DEVICE) == record
    observed = cfs.observe(DEVICE)
    assert observed is not None and observed.enabled
    assert [c.name for c in observed.layout.connectors] == ["XR-0", "XR-1"]
    again = up(load_profile("xr-dual"), configfs=cfs, state=store, timeout=90)  # adopts it: nothing to do
    assert not again.changed and again.device.card and len(again.device.connectors) == 2
    assert all(c.connector_id for c in again.device.connectors) and old.card
    down(configfs=cfs, state=store)


def _wait_change(monitor: pyudev.Monitor, card: str, timeout: float = 90) -> pyudev.Device:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dev = monitor.poll(timeout=max(deadline - time.monotonic(), 0.01))
        if dev is not None and dev.action == "change" and dev.sys_name == card:
            return dev
    raise AssertionError(f"no udev change event on {card} within {timeout} s")


def test_hotplug_disconnect_and_connect(env: dict[str, str]) -> None:
    vkmsremote(env, "up", "--timeout", TIMEOUT)
    dev = status_json(env)[DEVICE]
    card, (xr0,) = dev["card"], dev["connectors"]
    cid = xr0["connector_id"]
    context = pyudev.Context()
    monitor = pyudev.Monitor.from_netlink(context, source="kernel")
    monitor.filter_by("drm")
    monitor.start()

    out = vkmsremote(env, "hotplug", "XR-0", "--disconnect", "--timeout", TIMEOUT).stdout
    event = _wait_change(monitor, Path(card).name)
    assert event.properties.get("HOTPLUG") == "1"
    assert out.strip() == f"XR-0 disconnected ({xr0['drm_name']} id {cid}: DRM reports disconnected)"
    assert Path(f"/sys/kernel/config/vkms/{DEVICE}/connectors/XR-0/status").read_text().strip() == "2"
    assert modetest_connectors("-D", DEVICE)[cid] == ("disconnected", xr0["drm_name"])
    assert drm_info_connectors(card)[cid] == 2
    assert status_json(env)[DEVICE]["connectors"][0]["drm_status"] == "disconnected"

    vkmsremote(env, "hotplug", "XR-0", "--connect", "--timeout", TIMEOUT)
    _wait_change(monitor, Path(card).name)
    assert modetest_connectors("-D", DEVICE)[cid] == ("connected", xr0["drm_name"])
    assert drm_info_connectors(card)[cid] == 1


def test_bad_input_changes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    vkmsremote(env, "up", "--timeout", TIMEOUT)
    before = configfs_tree()
    bad = tmp_path / "bad.toml"
    bad.write_text("[device]\nname = 'x'\n[planes.p]\ntype = 'primary'\n")
    for argv, code, words, own in (
        (["up", "-p", str(bad)], 3, ["bad.toml", "possible_crtcs", "fix the profile"], True),
        (["hotplug", "XR-5", "--disconnect"], 2, ["no connector named 'XR-5'", "known connectors: XR-0"], False),
    ):
        proc = vkmsremote(env, *argv, check=False, own_process=own)
        assert proc.returncode == code, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    # not root: refused before touching anything
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                           "vkmsremote", "down"], capture_output=True, text=True, env=env, timeout=120, cwd="/")
    assert proc.returncode == 4 and "run as root or with sudo" in proc.stderr, proc.stderr
    assert configfs_tree() == before

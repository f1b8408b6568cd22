"""``vkmsremote output add|remove`` on a fake configfs (no card): the pool profile, the status written, the
errors. Under real compositors on VKMS: tests/vm/test_compositor_vm.py (Xorg) and test_wayland_vm.py (sway,
Weston)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_configfs import FakeConfigfs

from vkmsremote.cli import main
from vkmsremote.errors import DeviceStateError, UsageError
from vkmsremote.vkms.device import up
from vkmsremote.vkms.output import output_add, output_remove
from vkmsremote.vkms.profile import load_profile
from vkmsremote.vkms.spec import ConnectorStatus
from vkmsremote.vkms.state import StateStore

POOL = load_profile("xr-pool")


def test_pool_profile_has_xr0_connected_and_two_pooled() -> None:
    assert [(k.name, k.status) for k in POOL.connectors] == [
        ("XR-0", ConnectorStatus.CONNECTED), ("XR-1", ConnectorStatus.DISCONNECTED),
        ("XR-2", ConnectorStatus.DISCONNECTED)]
    assert len(POOL.layout.crtcs) == 3  # one CRTC each: an output added never takes another's


def test_add_and_remove_write_the_status(tmp_path: Path) -> None:
    (tmp_path / "vkms").mkdir()
    fake, store = FakeConfigfs(tmp_path), StateStore(tmp_path / "state")
    up(POOL, configfs=fake, state=store)
    status = fake.vkms / "vkmsremote/connectors/XR-1/status"
    assert status.read_text().strip() == "2"
    with pytest.raises(DeviceStateError, match="XR-1 has no DRM connector"):  # connected, but the fake has no card
        output_add("XR-1", configfs=fake, state=store)
    assert status.read_text().strip() == "1"
    removed = output_remove("XR-1", configfs=fake, state=store)
    assert removed.connector.configfs_status == "disconnected" and removed.compositor == "nothing drives it"
    assert status.read_text().strip() == "2"
    with pytest.raises(UsageError, match="no connector named 'XR-9'"):
        output_add("XR-9", configfs=fake, state=store)


def test_cli_output_refuses_a_bad_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["output", "add", "XR-1", "--mode", "0x0"])
    assert info.value.code == 2 and "out of range" in capsys.readouterr().err

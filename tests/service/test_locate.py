"""Where `serve --source crtc` finds its CRTC again (service/locate.py), as far as the host can show it: no
DRM cards here, configfs a fake. The VM test (tests/vm/test_survive_vm.py) follows real cards."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_configfs import FakeConfigfs, install

from vkmsremote.errors import DeviceStateError
from vkmsremote.service.locate import ConfigfsConnector, SameCard, crtc_locator
from vkmsremote.vkms.device import up
from vkmsremote.vkms.profile import load_profile
from vkmsremote.vkms.state import StateStore


@pytest.fixture
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "configfs"
    (root / "vkms").mkdir(parents=True)
    monkeypatch.setenv("VKMSREMOTE_CONFIGFS_ROOT", str(root))
    install(monkeypatch)
    return root


def test_a_configfs_connector_name_is_followed_through_the_mapping(fake_root: Path, tmp_path: Path) -> None:
    locate = crtc_locator("/dev/dri/card0", "XR-0", None)
    assert isinstance(locate, SameCard)  # no such device yet: XR-0 is taken as a DRM name on the card
    up(load_profile("xr-0"), configfs=FakeConfigfs(fake_root), state=StateStore(tmp_path / "state"))
    locate = crtc_locator("/dev/dri/card0", "XR-0", None)
    assert locate == ConfigfsConnector("vkmsremote", "XR-0")
    # enabled in configfs but no card behind it (a fake): not there yet, the reader asks again later
    with pytest.raises(DeviceStateError, match="no DRM card"):
        locate()
    (fake_root / "vkms" / "vkmsremote" / "enabled").write_text("0\n")
    assert locate() is None  # disabled: absent


def test_a_card_of_no_configfs_device_is_followed_by_its_node(tmp_path: Path) -> None:
    locate = crtc_locator(str(tmp_path / "card7"), "Virtual-1", None)
    assert locate == SameCard(str(tmp_path / "card7"), "Virtual-1", None)
    assert locate() is None  # the node is not there (yet)

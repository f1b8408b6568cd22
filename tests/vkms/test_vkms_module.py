"""vkmsremote.vkms.module on the host: module state from sysfs, modprobe's failures as one-line errors,
the default device's card. The real module is loaded in tests/vm/test_module_vm.py."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from vkmsremote.errors import VkmsUnavailableError
from vkmsremote.vkms import module as m


def fake_modprobe(tmp_path: Path, stderr: str, status: int) -> str:
    script = tmp_path / "modprobe"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\nprintf '%s\\n' '{stderr}' >&2\nexit {status}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_missing_module_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    probe = fake_modprobe(tmp_path, "modprobe: FATAL: Module vkms not found in directory /lib/modules/6.8.0", 1)
    with pytest.raises(VkmsUnavailableError) as err:
        m.load_vkms(modprobe=probe)
    text = str(err.value)
    assert "\n" not in text
    assert "has no vkms module (modprobe: FATAL: Module vkms not found" in text
    assert "linux-modules-extra-$(uname -r)" in text and "CONFIG_DRM_VKMS=m" in text
    assert (tmp_path / "args").read_text().split() == ["vkms", "create_default_dev=0"]


def test_default_device_load_passes_no_parameter(tmp_path: Path) -> None:
    m.load_vkms(default_device=True, modprobe=fake_modprobe(tmp_path, "", 0))
    assert (tmp_path / "args").read_text().split() == ["vkms"]


def test_other_modprobe_failure(tmp_path: Path) -> None:
    with pytest.raises(VkmsUnavailableError, match="failed: modprobe: ERROR: could not insert"):
        m.load_vkms(modprobe=fake_modprobe(tmp_path, "modprobe: ERROR: could not insert 'vkms': Invalid argument", 1))


def sysfs_with(tmp_path: Path, params: dict[str, str], *, builtin: bool = False, bus: str | None = None) -> Path:
    mod = tmp_path / "module" / "vkms" / "parameters"
    mod.mkdir(parents=True)
    for k, v in params.items():
        (mod / k).write_text(v + "\n")
    if not builtin:
        (tmp_path / "module" / "vkms" / "initstate").write_text("live\n")
    if bus is not None:
        (tmp_path / "devices" / bus / "vkms" / "drm" / "card1").mkdir(parents=True)
    return tmp_path


def test_old_vkms_has_no_configfs(tmp_path: Path) -> None:
    old = m.module_state(sysfs_with(tmp_path, {"enable_cursor": "Y", "enable_writeback": "Y", "enable_overlay": "N"},
                                    bus="platform"))
    assert old.loaded and not old.builtin and old.has_configfs is False
    assert m.default_device_card(tmp_path) == ("/dev/dri/card1", str(tmp_path / "class" / "drm" / "card1"))
    note = m.legacy_note(old)
    assert "enable_cursor=Y, enable_overlay=N, enable_writeback=Y" in note and "Linux 6.19+" in note


def test_new_vkms_has_configfs(tmp_path: Path) -> None:
    new = m.module_state(sysfs_with(tmp_path, {"create_default_dev": "N", "enable_cursor": "Y"}, builtin=True))
    assert new.builtin and new.has_configfs is True
    assert m.default_device_card(tmp_path) is None
    assert m.module_state(tmp_path / "none").has_configfs is None


def test_up_falls_back_to_the_default_device_only_without_configfs_vkms(monkeypatch: pytest.MonkeyPatch) -> None:
    """up's decision: configfs VKMS missing + a loaded VKMS without configfs -> the default device;
    a VKMS with configfs (or none loaded) -> the configfs error stands."""
    from vkmsremote.vkms import device
    from vkmsremote.vkms.configfs import Configfs
    from vkmsremote.vkms.profile import load_profile

    def unavailable(self: Configfs) -> None:
        raise VkmsUnavailableError("no VKMS configfs directory")

    monkeypatch.setattr(Configfs, "ensure_available", unavailable)
    monkeypatch.setattr(device, "_require_root", lambda cfs, action: None)
    used: list[str] = []
    monkeypatch.setattr(device, "_up_default_device", lambda spec, timeout: used.append(spec.name) or "legacy")
    spec = load_profile("xr-0")
    cfs = Configfs("/sys/kernel/config")  # the system's: only there is a fallback
    for params, falls_back in (({"enable_cursor": "Y"}, True), ({"create_default_dev": "N"}, False), (None, False)):
        state = m.ModuleState(params is not None, False, params or {})
        monkeypatch.setattr(device, "module_state", lambda state=state: state)
        if falls_back:
            assert device.up(spec, configfs=cfs) == "legacy"
        else:
            with pytest.raises(VkmsUnavailableError):
                device.up(spec, configfs=cfs)
    assert used == [spec.name]

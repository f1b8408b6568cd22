"""VKMS as a kernel module (as Ubuntu, Fedora, Arch and openSUSE ship it), and the pre-6.19 default device.

Loading: ``modprobe vkms create_default_dev=0`` (configfs devices only; the parameter exists since VKMS
has configfs, Linux 6.19, and an older kernel ignores it with a warning). A kernel without vkms.ko gets a
one-line error naming the fix.

The default device: VKMS before 6.19 has no configfs; loading it makes one device, named ``vkms`` (a
platform device before 6.15, a faux device since), with one ``Virtual`` connector, one CRTC and the
planes its module parameters ask for (``enable_cursor``, ``enable_overlay``, ``enable_writeback``).
``up`` falls back to it when configfs VKMS is missing (or with ``--default-device``): XR-0 is mapped to
its single Virtual connector, and ``status`` says what needs 6.19.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vkmsremote.errors import VkmsUnavailableError

SYSFS = Path("/sys")
DEFAULT_DEVICE = "vkms"
DEFAULT_PARAMETERS = ("enable_cursor", "enable_overlay", "enable_writeback")
NEEDS_CONFIGFS = "several connectors, connector hotplug and outputs made on demand need VKMS with configfs (Linux 6.19+)"
MISSING_HINT = ("install the kernel's extra modules (Ubuntu/Debian-based: linux-modules-extra-$(uname -r); "
                "Fedora: kernel-modules-extra) or use a kernel built with CONFIG_DRM_VKMS=m")


@dataclass(frozen=True, slots=True)
class ModuleState:
    loaded: bool  # /sys/module/vkms exists (loaded, or built in)
    builtin: bool  # built into the kernel (no initstate file)
    parameters: dict[str, str]

    @property
    def has_configfs(self) -> bool | None:
        """Whether this VKMS has configfs (it has ``create_default_dev`` then); None if not loaded."""
        return "create_default_dev" in self.parameters if self.loaded else None


def module_state(sysfs: Path = SYSFS) -> ModuleState:
    mod = sysfs / "module" / "vkms"
    if not mod.is_dir():
        return ModuleState(False, False, {})
    params = {}
    try:
        for p in sorted((mod / "parameters").iterdir()):
            try:
                params[p.name] = p.read_text().strip()
            except OSError:
                params[p.name] = "?"
    except OSError:
        pass
    return ModuleState(True, not (mod / "initstate").exists(), params)


def load_vkms(*, default_device: bool = False, modprobe: str = "modprobe") -> None:
    """``modprobe vkms`` (``create_default_dev=0`` unless ``default_device``); VkmsUnavailableError in one
    line, naming the fix, when the module is not there."""
    argv = [modprobe, "vkms"] + ([] if default_device else ["create_default_dev=0"])
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise VkmsUnavailableError(f"{modprobe} was not found, so the vkms module cannot be loaded",
                                   hint="install kmod") from None
    except subprocess.TimeoutExpired:
        raise VkmsUnavailableError(f"{' '.join(argv)} did not finish in 120 s", hint="`dmesg | tail`") from None
    if out.returncode != 0:
        reason = " ".join((out.stderr or out.stdout).split()) or f"exit status {out.returncode}"
        if "not found" in reason.lower():
            raise VkmsUnavailableError(
                f"this kernel (Linux {platform.release()}) has no vkms module ({reason})", hint=MISSING_HINT)
        raise VkmsUnavailableError(f"{' '.join(argv)} failed: {reason}", hint="`dmesg | tail` may say why")


def default_device_card(sysfs: Path = SYSFS) -> tuple[str, str] | None:
    """(/dev/dri/cardN, /sys/class/drm/cardN) of VKMS's default device, if it exists."""
    for bus in ("faux", "platform"):
        drm = sysfs / "devices" / bus / DEFAULT_DEVICE / "drm"
        try:
            cards = sorted(e.name for e in os.scandir(drm) if e.name.startswith("card") and e.name[4:].isdigit())
        except OSError:
            continue
        if cards:
            return f"/dev/dri/{cards[0]}", str(sysfs / "class" / "drm" / cards[0])
    return None


def legacy_note(state: ModuleState) -> str:
    """What ``status`` says about a default device: its features and what needs configfs."""
    features = ", ".join(f"{k}={state.parameters[k]}" for k in DEFAULT_PARAMETERS if k in state.parameters)
    return f"VKMS default device (module parameters: {features or 'unknown'}): {NEEDS_CONFIGFS}"

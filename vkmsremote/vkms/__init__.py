"""Declarative VKMS configfs: profile (TOML) -> validated DeviceSpec -> pure plan -> apply.

Entry points: :func:`load_profile`, :func:`up` (returns :class:`UpResult`, whose ``device`` is the
:class:`DeviceMapping` of configfs connectors to DRM card / connector / CRTC), :func:`down`,
:func:`status`, :func:`hotplug`. See docs/configfs.md.
"""

from .configfs import Configfs
from .device import ConnectorMapping, DeviceMapping, UpResult, down, hotplug, preview_up, status, up
from .plan import ObservedDevice, as_shell, plan_create, plan_teardown, plan_up
from .profile import load_profile, parse_profile
from .spec import ConnectorStatus, DeviceSpec, Layout, PlaneType

__all__ = [
    "Configfs",
    "ConnectorMapping",
    "ConnectorStatus",
    "DeviceMapping",
    "DeviceSpec",
    "Layout",
    "ObservedDevice",
    "PlaneType",
    "UpResult",
    "as_shell",
    "down",
    "hotplug",
    "load_profile",
    "parse_profile",
    "plan_create",
    "plan_teardown",
    "plan_up",
    "preview_up",
    "status",
    "up",
]

"""``vkmsremote output add|remove``: virtual outputs on demand, from a pool of connectors.

VKMS's configfs cannot give an enabled device a new connector: making a ``connectors/`` item (and every
other item) returns EBUSY while ``enabled`` is 1 (drivers/gpu/drm/vkms/vkms_configfs.c), and disabling the
device destroys its DRM card under every compositor using it. What can change at run time is a connector's
``status`` attribute: writing it sends a hotplug event. So a profile holds a pool of connectors, those not
wanted yet created ``status = "disconnected"`` (configfs/xr-pool.toml: XR-0 connected, XR-1 and XR-2 in the
pool), and an output is added by connecting one and removed by disconnecting it.

After the hotplug the compositor that is DRM master is asked to light the output through its own interface
(vkmsremote.desktop.resize: Xorg leaves a new output dark until a RandR client lights it, so vkmsremote does
``xrandr --output NAME --auto`` right of the lit outputs; sway lights it itself), and, with ``--mode``, to
set that mode. ``remove`` turns it off there first (Xorg would keep scanning out to it), then unplugs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vkmsremote.desktop.resize import DesktopResizer
from vkmsremote.drm.cvt import x_timings
from vkmsremote.errors import DeviceStateError, VkmsRemoteError

from .configfs import Configfs
from .device import ConnectorMapping, find_connector, hotplug, status
from .state import StateStore

DEFAULT_LIGHT_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class OutputChange:
    """What ``output add`` / ``output remove`` did."""

    connector: ConnectorMapping  # after the change
    compositor: str  # what the compositor was asked to do, or why nothing was
    lit: bool | None  # a CRTC drives the connector now (sysfs ``enabled``; None if unknown)
    seconds: float  # from the hotplug to the final state

    def to_json(self) -> dict[str, Any]:
        return {**self.connector.to_json(), "compositor": self.compositor, "lit": self.lit,
                "seconds": round(self.seconds, 2)}


def _lit(c: ConnectorMapping) -> bool | None:
    if c.sysfs is None:
        return None
    try:
        return (Path(c.sysfs) / "enabled").read_text().strip() == "enabled"
    except OSError:
        return None


def _mapping(cfs: Configfs, store: StateStore, device: str, name: str) -> tuple[str | None, ConnectorMapping]:
    [mapping] = status(device, configfs=cfs, state=store)
    return mapping.card, mapping.connector(name)


def _wait_lit(c: ConnectorMapping, want: bool, timeout: float) -> bool | None:
    deadline = time.monotonic() + timeout
    while (now := _lit(c)) is not None and now != want and time.monotonic() < deadline:
        time.sleep(0.1)
    return now


def output_add(connector: str, *, mode: tuple[int, int, float | None] | None = None, device: str | None = None,
               configfs: Configfs | None = None, state: StateStore | None = None,
               timeout: float = DEFAULT_LIGHT_TIMEOUT) -> OutputChange:
    """Connect ``connector`` (configfs name, e.g. XR-1) and have the compositor light it, at ``mode``
    (width, height, refresh or None) if given. Waits up to ``timeout`` s for the output to be lit."""
    cfs = configfs or Configfs()
    store = state or StateStore(configfs=cfs)
    dev, name = find_connector(cfs, connector, device)
    t0 = time.monotonic()
    hotplug(name, True, device=dev, configfs=cfs, state=store)
    card, c = _mapping(cfs, store, dev, name)
    if card is None or c.drm_name is None:
        raise DeviceStateError(f"{name} has no DRM connector after connecting it", hint="`vkmsremote status`")
    try:
        done = DesktopResizer(card, c.drm_name, x_timings).light(mode, timeout)
    except VkmsRemoteError as e:
        raise DeviceStateError(f"{name} ({c.drm_name}) is connected, but the compositor did not light it: {e}",
                               hint="`vkmsremote output remove` unplugs it again") from e
    lit = _wait_lit(c, True, timeout)
    return OutputChange(_mapping(cfs, store, dev, name)[1], done, lit, time.monotonic() - t0)


def output_remove(connector: str, *, device: str | None = None, configfs: Configfs | None = None,
                  state: StateStore | None = None, timeout: float = DEFAULT_LIGHT_TIMEOUT) -> OutputChange:
    """Have the compositor turn ``connector``'s output off, then disconnect it."""
    cfs = configfs or Configfs()
    store = state or StateStore(configfs=cfs)
    dev, name = find_connector(cfs, connector, device)
    card, c = _mapping(cfs, store, dev, name)
    t0 = time.monotonic()
    done = "nothing drives it"
    if card is not None and c.drm_name is not None and c.lit:
        try:
            done = DesktopResizer(card, c.drm_name, x_timings).dark()
        except VkmsRemoteError as e:
            done = f"the compositor did not turn it off ({e}); unplugged anyway"
    hotplug(name, False, device=dev, configfs=cfs, state=store)
    lit = _wait_lit(c, False, timeout)
    return OutputChange(_mapping(cfs, store, dev, name)[1], done, lit, time.monotonic() - t0)

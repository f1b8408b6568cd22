"""Waiting for DRM uevents with pyudev: a device's card appearing, a hotplug ``change`` on a card.

Start a :class:`DrmEvents` *before* the action that causes the event (writing ``enabled`` or a
connector's ``status``) so the event cannot slip by between the action and the wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pyudev

from vkmsremote.errors import TimeoutError_

T = TypeVar("T")


def _udevd_running() -> bool:
    return Path("/run/udev/control").exists()


class DrmEvents:
    """A started netlink monitor on the ``drm`` subsystem.

    Listens to udevd's processed events when udevd runs (so /dev nodes and permissions exist when we
    see the event), otherwise to the kernel's raw uevents.
    """

    def __init__(self, source: str | None = None) -> None:
        self.context = pyudev.Context()
        self.source = source or ("udev" if _udevd_running() else "kernel")
        self.monitor = pyudev.Monitor.from_netlink(self.context, source=self.source)
        self.monitor.filter_by("drm")
        self.monitor.start()

    def close(self) -> None:
        # pyudev has no close(); dropping the monitor closes its netlink socket.
        del self.monitor

    def __enter__(self) -> DrmEvents:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return int(self.monitor.fileno())

    def wait_until(self, check: Callable[[], T | None], timeout: float, what: str, hint: str) -> T:
        """Return ``check()``'s first non-None result, re-checking after every drm event.

        ``check`` runs first (the state may already be right) and then whenever an event arrives;
        TimeoutError_ after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result is not None:
                return result
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError_(f"timed out after {timeout:g} s waiting for {what}", hint=hint)
            # Poll in short slices: a state change without an event (e.g. a missed one) still gets seen.
            self.monitor.poll(timeout=min(left, 0.5))

    def wait_for_change(self, card_sysname: str, timeout: float, what: str, hint: str) -> pyudev.Device:
        """The next ``change`` uevent with HOTPLUG=1 on the card ``card_sysname`` (e.g. "card0")."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError_(f"no udev change event within {timeout:g} s for {what}", hint=hint)
            dev = self.monitor.poll(timeout=left)
            if dev is None:
                continue
            if dev.action == "change" and dev.sys_name == card_sysname and dev.properties.get("HOTPLUG") == "1":
                return dev


"""A DRM card: the open /dev/dri/cardN file, its client caps and master state, and finding the card node
that belongs to a device (a configfs VKMS device appears as /sys/devices/faux/<name>/drm/cardN).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vkmsremote.drm import ioctl as k
from vkmsremote.drm.ioctl import ClientCap, drm_error, drm_ioctl
from vkmsremote.errors import DeviceStateError, DrmError, PermissionDeniedError


@dataclass(frozen=True, slots=True)
class DriverVersion:
    """DRM_IOCTL_VERSION: the driver's name ("vkms"), version and date."""

    name: str
    major: int
    minor: int
    date: str


class Card:
    """An open DRM primary node. Use :meth:`open`; close it (or use ``with``) when done.

    The fd is opened non-blocking, so reading events never blocks (see vkmsremote.drm.events).
    """

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self.path = path
        self._is_master = False
        self._driver: DriverVersion | None = None
        self.client_caps: dict[ClientCap, int] = {}
        # Property metadata by property id; filled lazily by vkmsremote.drm.properties.
        self.property_cache: dict[int, Any] = {}
        # Object id -> {property name: property id}; filled lazily by vkmsremote.drm.atomic.
        self.property_ids: dict[int, dict[str, int]] = {}

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, atomic: bool = True, writeback: bool = False,
             master: bool = False) -> Card:
        """Open ``path`` and set client caps: UNIVERSAL_PLANES always, ATOMIC if ``atomic``,
        WRITEBACK_CONNECTORS if ``writeback`` (which needs ``atomic``).

        The kernel makes the first opener of a card DRM master implicitly; unless ``master`` is asked
        for, that is given up at once so a compositor started later can still take the card.
        """
        path = os.fspath(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        except PermissionError:
            raise PermissionDeniedError(f"cannot open {path}: permission denied",
                                        hint="run as root or add the user to the 'video' group") from None
        except OSError as exc:
            raise DrmError(f"open {path}", exc.errno or errno.EIO,
                           hint="is the VKMS device enabled? list cards with 'ls /dev/dri'") from None
        card = cls(fd, path)
        try:
            card.set_client_cap(ClientCap.UNIVERSAL_PLANES, 1)
            if atomic or writeback:
                card.set_client_cap(ClientCap.ATOMIC, 1)
            if writeback:
                card.set_client_cap(ClientCap.WRITEBACK_CONNECTORS, 1)
            if master:
                card.set_master()
            else:
                card._give_up_implicit_master()
        except BaseException:
            card.close()
            raise
        return card

    # --- plumbing -----------------------------------------------------------------------------------

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise DrmError(f"use of closed card {self.path}", errno.EBADF)
        return self._fd

    def fileno(self) -> int:
        return self.fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def ioctl(self, request: int, arg: Any, op: str, object_id: int | None = None) -> None:
        drm_ioctl(self.fd, request, arg, op, object_id)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            self._is_master = False
            os.close(fd)

    def __enter__(self) -> Card:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Card {self.path} fd={self._fd}{' master' if self._is_master else ''}>"

    # --- identity and capabilities ------------------------------------------------------------------------

    @property
    def driver(self) -> DriverVersion:
        """DRM_IOCTL_VERSION (asked once: first for the lengths, then for the strings)."""
        if self._driver is None:
            v = k.drm_version()
            self.ioctl(k.DRM_IOCTL_VERSION, v, "DRM_IOCTL_VERSION")
            bufs = [ctypes.create_string_buffer(max(int(n), 1)) for n in (v.name_len, v.date_len, v.desc_len)]
            v.name, v.date, v.desc = (ctypes.addressof(b) for b in bufs)
            self.ioctl(k.DRM_IOCTL_VERSION, v, "DRM_IOCTL_VERSION")
            name, date = (b.raw[:n].decode("utf-8", "replace")
                          for b, n in zip(bufs[:2], (v.name_len, v.date_len), strict=True))
            self._driver = DriverVersion(name, v.version_major, v.version_minor, date)
        return self._driver

    def set_client_cap(self, cap: ClientCap, value: int = 1) -> None:
        arg = k.drm_set_client_cap(capability=cap, value=value)
        self.ioctl(k.DRM_IOCTL_SET_CLIENT_CAP, arg, f"DRM_IOCTL_SET_CLIENT_CAP({cap.name})")
        self.client_caps[cap] = value

    # --- master -------------------------------------------------------------------------------------------

    @property
    def is_master(self) -> bool:
        """Whether this fd became master through :meth:`set_master` (the first opener may be master
        implicitly; the kernel has no query for it, so that case reads False)."""
        return self._is_master

    def set_master(self) -> None:
        try:
            self.ioctl(k.DRM_IOCTL_SET_MASTER, None, "DRM_IOCTL_SET_MASTER")
        except DrmError as exc:
            if exc.errno in (errno.EBUSY, errno.EACCES, errno.EPERM, errno.EINVAL):
                raise drm_error("DRM_IOCTL_SET_MASTER", exc.errno,
                                hint=f"another process is DRM master on {self.path} (a compositor, Xorg or "
                                     "modetest): stop it, or capture without master") from None
            raise
        self._is_master = True

    def drop_master(self) -> None:
        self.ioctl(k.DRM_IOCTL_DROP_MASTER, None, "DRM_IOCTL_DROP_MASTER")
        self._is_master = False

    @contextlib.contextmanager
    def master_if_free(self) -> Iterator[bool]:
        """Be DRM master inside the block if no other client is (yields whether we are), then give it
        back. The kernel re-probes connectors (modes, status) only for the master."""
        if self._is_master:
            yield True
            return
        try:
            self.ioctl(k.DRM_IOCTL_SET_MASTER, None, "DRM_IOCTL_SET_MASTER")
        except DrmError:
            yield False
            return
        try:
            yield True
        finally:
            self._give_up_implicit_master()

    def _give_up_implicit_master(self) -> None:
        try:
            self.ioctl(k.DRM_IOCTL_DROP_MASTER, None, "DRM_IOCTL_DROP_MASTER")
        except DrmError as exc:
            if exc.errno not in (errno.EINVAL, errno.EACCES, errno.EPERM):  # EINVAL: we were not master
                raise

    def gem_close(self, handle: int) -> None:
        if handle:
            self.ioctl(k.DRM_IOCTL_GEM_CLOSE, k.drm_gem_close(handle=handle), "DRM_IOCTL_GEM_CLOSE", handle)


# --- finding card nodes through sysfs -----------------------------------------------------------------------

_CARD_RE = re.compile(r"card(\d+)")


@dataclass(frozen=True, slots=True)
class CardNode:
    """One /dev/dri/cardN and the device it belongs to, as sysfs shows it."""

    name: str  # "card0"
    minor: int  # 0
    dev_path: str  # "/dev/dri/card0"
    bus: str  # "faux", "platform", "pci", ...: the parent directory's name under /sys/devices
    device_name: str  # "xr": for a configfs VKMS device, its configfs directory name


def list_cards(sysfs_root: str | os.PathLike[str] = "/sys", dev_root: str | os.PathLike[str] = "/dev") -> list[CardNode]:
    """Every DRM primary node in /sys/class/drm, ordered by minor number."""
    cls = Path(sysfs_root) / "class" / "drm"
    try:
        entries = list(cls.iterdir())
    except FileNotFoundError:
        return []
    nodes = []
    for entry in entries:
        m = _CARD_RE.fullmatch(entry.name)
        if not m:
            continue
        device = (entry / "device").resolve()
        nodes.append(CardNode(
            name=entry.name, minor=int(m.group(1)),
            dev_path=str(Path(dev_root) / "dri" / entry.name),
            bus=device.parent.name, device_name=device.name,
        ))
    return sorted(nodes, key=lambda n: n.minor)


def card_for_vkms_device(name: str, sysfs_root: str | os.PathLike[str] = "/sys",
                         dev_root: str | os.PathLike[str] = "/dev") -> CardNode:
    """The card node of the configfs VKMS device made as /sys/kernel/config/vkms/<name>.

    Matched by the sysfs device path (/sys/devices/faux/<name>), never by card order.
    """
    for node in list_cards(sysfs_root, dev_root):
        if node.bus == "faux" and node.device_name == name:
            return node
    raise DeviceStateError(
        f"no DRM card belongs to VKMS device {name!r}",
        hint=f"is it enabled? (cat /sys/kernel/config/vkms/{name}/enabled should print 1)",
    )

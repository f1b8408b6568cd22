"""The configfs side: where it is, reading devices back, running plan operations, errno -> errors.

The root defaults to /sys/kernel/config and can be moved with ``VKMSREMOTE_CONFIGFS_ROOT`` (or the
``root`` argument). A root that is not a configfs mount is not the system's (``is_system`` False, ``fake``
True): nothing is mounted or loaded for it and no DRM device is looked for behind it. The host tests use
such a root with a test double (tests/fake_configfs.py) that emulates what the kernel does on its own
(default groups, attribute files, EBUSY while enabled); the real proof is the VM tests against the
kernel's configfs.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from vkmsremote.errors import (
    DeviceStateError,
    PermissionDeniedError,
    VkmsRemoteError,
    VkmsUnavailableError,
)

from .plan import Mkdir, ObservedDevice, Op, Rmdir, Symlink, Unlink, WriteAttr
from .spec import (
    ConnectorSpec,
    ConnectorStatus,
    CrtcSpec,
    EncoderSpec,
    Layout,
    PlaneSpec,
    PlaneType,
)

DEFAULT_ROOT = Path("/sys/kernel/config")
ROOT_ENV = "VKMSREMOTE_CONFIGFS_ROOT"

ROOT_HINT = "run as root or with sudo"
UNAVAILABLE_HINT = "load it with `modprobe vkms`; configfs support needs Linux >= 6.19 built with CONFIG_DRM_VKMS"


def configfs_error(what: str, err: OSError) -> VkmsRemoteError:
    """The one errno -> exception mapping for configfs operations. ``what`` names the operation."""
    code = err.errno
    reason = os.strerror(code) if code else str(err)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDeniedError(f"{what}: {reason}", hint=ROOT_HINT)
    if code == errno.EBUSY:
        return DeviceStateError(
            f"{what}: device or resource busy (the VKMS device is enabled)",
            hint="only connector status can change while enabled; run `vkmsremote down` first",
        )
    if code == errno.EEXIST:
        return DeviceStateError(f"{what}: already exists", hint="run `vkmsremote status` to see what is there")
    if code == errno.ENOTEMPTY:
        return DeviceStateError(
            f"{what}: directory not empty (it holds objects or links vkmsremote did not make)",
            hint="inspect it with `vkmsremote status` and remove the extra objects by hand",
        )
    if code == errno.ENOENT:
        return DeviceStateError(f"{what}: no such file or directory", hint="run `vkmsremote status` to see what is there")
    if code == errno.EINVAL:
        return DeviceStateError(
            f"{what}: the kernel refused it (invalid argument)",
            hint="`dmesg | tail` shows VKMS's reason; check the profile against docs/configfs.md",
        )
    if code == errno.ENODEV:
        return VkmsUnavailableError(f"{what}: no such device", hint=UNAVAILABLE_HINT)
    return VkmsRemoteError(f"{what}: {reason}", hint="`dmesg | tail` may say more")


def is_configfs_mount(path: Path) -> bool:
    """Whether ``path`` is the mount point of a configfs (per /proc/self/mountinfo)."""
    try:
        real = os.path.realpath(path)
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                mount_point = fields[4].replace("\\040", " ")
                if mount_point == real and fields[sep + 1] == "configfs":
                    return True
    except (OSError, ValueError, IndexError):
        return False
    return False


def _read(path: Path) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read(4096).strip()


class Configfs:
    """One configfs root: reads VKMS devices back and runs plan operations on them."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        if root is None:
            root = os.environ.get(ROOT_ENV) or DEFAULT_ROOT
        self.root = Path(root)
        # /sys/kernel/config itself is always the system's: if it is not mounted, ensure_available() mounts it.
        self.is_system = self.root == DEFAULT_ROOT or is_configfs_mount(self.root)
        """Whether this is the kernel's configfs (changes need root) rather than an ordinary directory."""

    @property
    def fake(self) -> bool:
        """``root`` is an ordinary directory standing in for configfs (tests): no kernel behind it."""
        return not self.is_system

    @property
    def vkms(self) -> Path:
        return self.root / "vkms"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}{'' if self.is_system else ', not a configfs mount'})"

    # -- availability ------------------------------------------------------------------------

    def available(self) -> bool:
        try:
            os.stat(self.vkms)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise configfs_error(f"looking at {self.vkms}", e) from None
        return self.vkms.is_dir()

    def missing_steps(self) -> list[str]:
        """Shell commands that would make VKMS's configfs appear (for --dry-run), [] if present."""
        if self.available() or not self.is_system:
            return []
        steps = []
        if not is_configfs_mount(self.root):
            steps.append(f"mount -t configfs none {self.root}")
        steps.append("modprobe vkms create_default_dev=0")
        return steps

    def ensure_available(self) -> None:
        """Mount configfs and load vkms if needed; VkmsUnavailableError if VKMS still is not there."""
        if self.available():
            return
        if not self.is_system:
            raise VkmsUnavailableError(f"no VKMS configfs directory at {self.vkms}", hint=UNAVAILABLE_HINT)
        if not self.root.is_dir():
            raise VkmsUnavailableError(
                f"{self.root} does not exist: this kernel has no configfs",
                hint="use a kernel built with CONFIG_CONFIGFS_FS and CONFIG_DRM_VKMS (Linux >= 6.19)",
            )
        if not is_configfs_mount(self.root):
            _run(["mount", "-t", "configfs", "none", str(self.root)], f"mount configfs at {self.root}")
        if not self.available() and not Path("/sys/module/vkms").exists():
            from .module import load_vkms

            load_vkms()  # create_default_dev=0: only configfs devices
        if not self.available():
            if Path("/sys/module/vkms").exists():
                raise VkmsUnavailableError(
                    f"the vkms module is loaded but {self.vkms} does not exist",
                    hint="this kernel's VKMS has no configfs support; it needs Linux >= 6.19 with CONFIG_DRM_VKMS",
                )
            raise VkmsUnavailableError(f"no VKMS configfs directory at {self.vkms}", hint=UNAVAILABLE_HINT)

    # -- reading -----------------------------------------------------------------------------

    def device_names(self) -> list[str]:
        """Names of the VKMS devices in configfs, in creation order on a real configfs."""
        if not self.vkms.is_dir():
            return []
        return [e.name for e in os.scandir(self.vkms) if e.is_dir(follow_symlinks=False)]

    def observe(self, name: str) -> ObservedDevice | None:
        """Read device ``name`` back from configfs (None if there is no such directory).

        Objects are listed in directory order, which on configfs is creation order (item
        directories are appended to their parent's list, fs/configfs/dir.c configfs_new_dirent).
        """
        d = self.vkms / name
        if not d.is_dir():
            return None
        try:
            enabled = _read(d / "enabled") == "1"
            planes = tuple(
                PlaneSpec(n, _plane_type(d / "planes" / n), self._links(d / "planes" / n / "possible_crtcs"))
                for n in self._items(d / "planes")
            )
            crtcs = tuple(CrtcSpec(n, _read(d / "crtcs" / n / "writeback") == "1") for n in self._items(d / "crtcs"))
            encoders = tuple(
                EncoderSpec(n, self._links(d / "encoders" / n / "possible_crtcs")) for n in self._items(d / "encoders")
            )
            connectors = tuple(
                ConnectorSpec(
                    n,
                    self._links(d / "connectors" / n / "possible_encoders"),
                    _connector_status(d / "connectors" / n / "status"),
                )
                for n in self._items(d / "connectors")
            )
        except OSError as e:
            if e.errno == errno.ENOENT and not d.exists():
                return None  # removed while we looked
            raise configfs_error(f"reading {d}", e) from None
        return ObservedDevice(name, enabled, Layout(planes, crtcs, encoders, connectors))

    @staticmethod
    def _items(group: Path) -> list[str]:
        return [e.name for e in os.scandir(group) if e.is_dir(follow_symlinks=False)]

    @staticmethod
    def _links(group: Path) -> tuple[str, ...]:
        # The link's own name is free; what counts is the item it points to.
        return tuple(os.path.basename(os.readlink(e.path).rstrip("/")) for e in os.scandir(group) if e.is_symlink())

    # -- writing -----------------------------------------------------------------------------

    def run(self, op: Op) -> None:
        """Carry out one operation; OSError becomes the matching VkmsRemoteError."""
        try:
            self._apply(op)
        except OSError as e:
            raise configfs_error(op.shell(), e) from None

    def _apply(self, op: Op) -> None:
        match op:
            case Mkdir(path):
                os.mkdir(path)
            case Rmdir(path):
                os.rmdir(path)
            case Symlink(link, target):
                os.symlink(target, link)
            case Unlink(path):
                os.unlink(path)
            case WriteAttr(path, value, verify):
                self._write(Path(path), value)
                if verify:
                    got = _read(Path(path))
                    if got != value:
                        raise DeviceStateError(
                            f"wrote {value} to {path} but it reads back {got!r}",
                            hint="`dmesg | tail` may say why the kernel did not take it",
                        )

    def _write(self, path: Path, value: str) -> None:
        # O_WRONLY without O_CREAT/O_TRUNC: configfs attributes exist already, and one write() is one store.
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode("ascii"))
        finally:
            os.close(fd)

    # -- connectors --------------------------------------------------------------------------

    def connector_status_path(self, device: str, connector: str) -> Path:
        return self.vkms / device / "connectors" / connector / "status"

    def iter_connectors(self) -> Iterator[tuple[str, str]]:
        """(device, connector) for every connector of every VKMS device."""
        for dev in self.device_names():
            group = self.vkms / dev / "connectors"
            if group.is_dir():
                for name in self._items(group):
                    yield dev, name


def _plane_type(path: Path) -> PlaneType:
    raw = _read(path / "type")
    try:
        return PlaneType(int(raw))
    except ValueError:
        raise DeviceStateError(f"{path}/type reads {raw!r}, not a plane type") from None


def _connector_status(path: Path) -> ConnectorStatus:
    raw = _read(path)
    try:
        return ConnectorStatus(int(raw))
    except ValueError:
        raise DeviceStateError(f"{path} reads {raw!r}, not a connector status") from None


def _run(argv: list[str], what: str) -> None:
    if shutil.which(argv[0]) is None:
        raise VkmsUnavailableError(f"{what}: {argv[0]} not found", hint=UNAVAILABLE_HINT)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise VkmsUnavailableError(f"{what}: timed out", hint=UNAVAILABLE_HINT) from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        reason = detail[-1] if detail else f"exit status {proc.returncode}"
        if os.geteuid() != 0:
            raise PermissionDeniedError(f"{what} failed: {reason}", hint=ROOT_HINT)
        raise VkmsUnavailableError(f"{what} failed: {reason}", hint=UNAVAILABLE_HINT)

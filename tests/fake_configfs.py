"""A test double for the kernel's VKMS configfs: :class:`FakeConfigfs` runs plan operations on an ordinary
directory and emulates what the kernel does on its own there, so the planner, apply/rollback and the
command line can be exercised on the host:

- ``mkdir`` of a device makes its default groups (planes/, crtcs/, encoders/, connectors/) and ``enabled``;
  ``mkdir`` of an item makes its link group (possible_crtcs/, possible_encoders/) and attribute files
  (plane ``type``, CRTC ``writeback``, connector ``status``); ``rmdir`` removes them again, and refuses
  (ENOTEMPTY) while the item still holds anything else;
- EBUSY for changes to an enabled device (except ``enabled`` and connector ``status``), EINVAL for enabling
  an invalid device, ENOENT for writing an attribute that does not exist;
- attribute writes replace the file's content, which reads back with a newline as sysfs/configfs show it.

Only a subset of the kernel's checks: enough for the error paths. The VM tests run against the real thing.
``install`` makes every Configfs on an ordinary directory the double (for the command-line tests).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path, PurePosixPath

import pytest

from vkmsremote.vkms.configfs import Configfs
from vkmsremote.vkms.plan import Mkdir, Op, Rmdir, Symlink, WriteAttr
from vkmsremote.vkms.spec import validate

KINDS = ("planes", "crtcs", "encoders", "connectors")
LINK_GROUP = {"planes": "possible_crtcs", "encoders": "possible_crtcs", "connectors": "possible_encoders"}
ATTRIBUTES = {"planes": ("type", "0\n"), "crtcs": ("writeback", "0\n"), "connectors": ("status", "1\n")}


class FakeConfigfs(Configfs):
    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        super().__init__(root)
        if self.is_system:
            raise ValueError(f"{self.root} is a real configfs: the fake runs on an ordinary directory only")

    def _apply(self, op: Op) -> None:
        self._refuse(op)
        if isinstance(op, Rmdir):
            self._depopulate(Path(op.path))
        super()._apply(op)
        if isinstance(op, Mkdir):
            self._populate(Path(op.path))

    def _write(self, path: Path, value: str) -> None:
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "no such attribute", str(path))
        path.write_text(value + "\n")

    def _device_of(self, path: PurePosixPath) -> Path | None:
        try:
            rel = Path(path).relative_to(self.vkms)
        except ValueError:
            return None
        return self.vkms / rel.parts[0] if rel.parts else None

    def _refuse(self, op: Op) -> None:
        """Raise what the kernel would for ``op`` (a subset: enough to exercise error paths)."""
        path = op.link if isinstance(op, Symlink) else op.path
        dev = self._device_of(path)
        if dev is None or PurePosixPath(path) == PurePosixPath(dev):
            return
        enabled = (dev / "enabled").is_file() and (dev / "enabled").read_text().strip() == "1"
        if isinstance(op, WriteAttr) and Path(op.path).name == "enabled":
            if op.value == "1" and not enabled:
                observed = self.observe(dev.name)
                if observed is None or validate(dev.name, observed.layout):
                    raise OSError(errno.EINVAL, "invalid device")
            return
        if isinstance(op, WriteAttr) and Path(op.path).name == "status":
            return
        if enabled and isinstance(op, (Mkdir, Symlink, WriteAttr)):
            raise OSError(errno.EBUSY, "device is enabled")

    def _populate(self, path: Path) -> None:
        parent = path.parent
        if parent == self.vkms:
            for kind in KINDS:
                (path / kind).mkdir()
            (path / "enabled").write_text("0\n")
        elif parent.name in KINDS and parent.parent.parent == self.vkms:
            if parent.name in LINK_GROUP:
                (path / LINK_GROUP[parent.name]).mkdir()
            if parent.name in ATTRIBUTES:
                name, value = ATTRIBUTES[parent.name]
                (path / name).write_text(value)

    def _depopulate(self, path: Path) -> None:
        if not path.is_dir():
            return
        for entry in os.scandir(path):
            p = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                if any(os.scandir(p)):
                    raise OSError(errno.ENOTEMPTY, "not empty", str(path))
            elif not entry.is_file(follow_symlinks=False):
                raise OSError(errno.ENOTEMPTY, "not empty", str(path))
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False):
                os.rmdir(entry.path)
            else:
                os.unlink(entry.path)


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every Configfs made on an ordinary directory a FakeConfigfs, wherever it is made (the command
    line builds its own from ``--configfs-root`` / ``$VKMSREMOTE_CONFIGFS_ROOT``)."""
    original = Configfs.__init__

    def init(self: Configfs, root: str | os.PathLike[str] | None = None) -> None:
        original(self, root)
        if type(self) is Configfs and not self.is_system:
            self.__class__ = FakeConfigfs

    monkeypatch.setattr(Configfs, "__init__", init)

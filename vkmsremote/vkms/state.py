"""What ``up`` created, recorded per device so that ``down`` removes exactly that.

One JSON file per device in /run/vkmsremote (tmpfs: the record goes away with the reboot that also
takes the configfs device away). ``VKMSREMOTE_STATE_DIR`` moves it; with a fake configfs root the
default is a directory beside the fake, so tests never touch /run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vkmsremote.errors import DeviceStateError, PermissionDeniedError

from .configfs import ROOT_HINT, Configfs

DEFAULT_STATE_DIR = Path("/run/vkmsremote")
STATE_ENV = "VKMSREMOTE_STATE_DIR"
MAX_RECORD_BYTES = 1 << 20
FORMAT = 1


@dataclass(frozen=True, slots=True)
class Record:
    device: str
    profile: str
    created: tuple[PurePosixPath, ...]
    """Configfs paths this tool made (directories, links, ``enabled`` if it enabled the device)."""
    configfs_root: str
    time: float
    in_progress: bool = False
    """Written before ``up`` or ``down`` changes anything (``created`` then lists every path the change
    would make): if the process dies midway, the record still says what may exist, ``down`` removes it,
    and the next ``up`` rebuilds the half-made device instead of refusing it."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "device": self.device,
                "profile": self.profile,
                "configfs_root": self.configfs_root,
                "time": self.time,
                "created": [str(p) for p in self.created],
                "in_progress": self.in_progress,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str, where: str) -> Record:
        try:
            d = json.loads(text)
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')!r}")
            return cls(
                device=str(d["device"]),
                profile=str(d["profile"]),
                created=tuple(PurePosixPath(str(p)) for p in d["created"]),
                configfs_root=str(d["configfs_root"]),
                time=float(d["time"]),
                in_progress=bool(d.get("in_progress", False)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DeviceStateError(
                f"state file {where} is unreadable ({e})",
                hint="remove it and use `vkmsremote down --force` to remove the device",
            ) from None


class StateStore:
    def __init__(self, directory: str | os.PathLike[str] | None = None, *, configfs: Configfs | None = None) -> None:
        if directory is None:
            env = os.environ.get(STATE_ENV)
            if env:
                directory = env
            elif configfs is not None and configfs.fake:
                directory = configfs.root / ".vkmsremote-state"
            else:
                directory = DEFAULT_STATE_DIR
        self.dir = Path(directory)

    def path(self, device: str) -> Path:
        return self.dir / f"{device}.json"

    def load(self, device: str) -> Record | None:
        p = self.path(device)
        try:
            with open(p, encoding="utf-8") as f:
                text = f.read(MAX_RECORD_BYTES)
        except FileNotFoundError:
            return None
        except PermissionError:
            raise PermissionDeniedError(f"cannot read state file {p}", hint=ROOT_HINT) from None
        return Record.from_json(text, str(p))

    def devices(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.stem for p in self.dir.glob("*.json"))

    def save(self, record: Record) -> None:
        """Write atomically (temp file + rename) so a crash never leaves half a record."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{record.device}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(record.to_json())
            os.replace(tmp, self.path(record.device))
        except PermissionError:
            raise PermissionDeniedError(f"cannot write state file in {self.dir}", hint=ROOT_HINT) from None
        except OSError as e:
            raise DeviceStateError(
                f"cannot write state file in {self.dir}: {e.strerror}",
                hint=f"set {STATE_ENV} to a writable directory",
            ) from None

    def remove(self, device: str) -> None:
        try:
            self.path(device).unlink()
        except FileNotFoundError:
            pass
        except PermissionError:
            raise PermissionDeniedError(f"cannot remove state file {self.path(device)}", hint=ROOT_HINT) from None


def new_record(device: str, profile: str, created: list[PurePosixPath], configfs: Configfs, *,
               in_progress: bool = False) -> Record:
    return Record(device, profile, tuple(created), str(configfs.root), time.time(), in_progress)

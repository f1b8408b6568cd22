"""Display modes (struct drm_mode_modeinfo): what connectors offer and CRTCs run."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

from vkmsremote.drm import ioctl as k

DRM_MODE_TYPE_PREFERRED = 1 << 3
DRM_MODE_FLAG_INTERLACE = 1 << 4
DRM_MODE_FLAG_DBLSCAN = 1 << 5


@dataclass(frozen=True, slots=True)
class Mode:
    """A display mode (struct drm_mode_modeinfo). ``raw`` is the 68-byte kernel struct, e.g. for MODE_ID blobs."""

    name: str
    width: int
    height: int
    vrefresh: int
    clock: int
    flags: int
    type: int
    raw: bytes = field(repr=False)

    STRUCT_SIZE = ctypes.sizeof(k.drm_mode_modeinfo)

    @classmethod
    def from_struct(cls, info: k.drm_mode_modeinfo) -> Mode:
        return cls(
            name=bytes(info.name).split(b"\0", 1)[0].decode("ascii", "replace"),
            width=info.hdisplay, height=info.vdisplay, vrefresh=info.vrefresh, clock=info.clock,
            flags=info.flags, type=info.type, raw=bytes(info),
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Mode:
        if len(raw) != cls.STRUCT_SIZE:
            raise ValueError(f"a drm_mode_modeinfo is {cls.STRUCT_SIZE} bytes, not {len(raw)}")
        return cls.from_struct(k.drm_mode_modeinfo.from_buffer_copy(raw))

    def to_struct(self) -> k.drm_mode_modeinfo:
        return k.drm_mode_modeinfo.from_buffer_copy(self.raw)

    @property
    def refresh(self) -> float:
        """Refresh rate in Hz computed from the timings (vrefresh is rounded)."""
        info = self.to_struct()
        if not info.htotal or not info.vtotal:
            return float(self.vrefresh)
        hz = float(info.clock) * 1000.0 / (int(info.htotal) * int(info.vtotal))
        if self.flags & DRM_MODE_FLAG_INTERLACE:
            hz *= 2
        if self.flags & DRM_MODE_FLAG_DBLSCAN:
            hz /= 2
        return hz

    @property
    def preferred(self) -> bool:
        return bool(self.type & DRM_MODE_TYPE_PREFERRED)

    def __str__(self) -> str:
        return f"{self.width}x{self.height}@{self.refresh:.2f}"

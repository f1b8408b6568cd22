"""Planes (DRM_IOCTL_MODE_GETPLANE): which framebuffer each shows on which CRTC, their type and formats."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from enum import IntEnum

from vkmsremote.drm import ioctl as k
from vkmsremote.drm.card import Card
from vkmsremote.drm.counted import FILL_RETRIES, array, check_count, counts_kept_changing
from vkmsremote.drm.ioctl import ObjectType
from vkmsremote.drm.properties import ObjectProperties, get_properties


class PlaneType(IntEnum):
    """Values of a plane's immutable "type" enum property."""

    OVERLAY = 0
    PRIMARY = 1
    CURSOR = 2


@dataclass(frozen=True, slots=True)
class Plane:
    id: int
    type: PlaneType
    possible_crtcs: int  # bitmask of CRTC indices
    formats: tuple[int, ...]  # fourcc codes
    fb_id: int
    crtc_id: int
    properties: ObjectProperties | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class PlaneState:
    """The cheap per-frame view of a plane: which framebuffer it shows on which CRTC."""

    plane_id: int
    fb_id: int
    crtc_id: int


def get_plane_state(card: Card, plane_id: int) -> PlaneState:
    """One DRM_IOCTL_MODE_GETPLANE without the format list: for following page flips every frame."""
    arg = k.drm_mode_get_plane(plane_id=plane_id)
    card.ioctl(k.DRM_IOCTL_MODE_GETPLANE, arg, "DRM_IOCTL_MODE_GETPLANE", plane_id)
    return PlaneState(plane_id, arg.fb_id, arg.crtc_id)


def get_plane(card: Card, plane_id: int, *, with_properties: bool = True) -> Plane:
    """DRM_IOCTL_MODE_GETPLANE plus the "type" property (needs the UNIVERSAL_PLANES client cap)."""
    for _ in range(FILL_RETRIES):
        arg = k.drm_mode_get_plane(plane_id=plane_id)
        card.ioctl(k.DRM_IOCTL_MODE_GETPLANE, arg, "DRM_IOCTL_MODE_GETPLANE", plane_id)
        n = check_count(arg.count_format_types, "GETPLANE formats")
        fmts = array(ctypes.c_uint32, n)
        arg.format_type_ptr = ctypes.addressof(fmts)
        card.ioctl(k.DRM_IOCTL_MODE_GETPLANE, arg, "DRM_IOCTL_MODE_GETPLANE", plane_id)
        if arg.count_format_types != n:
            continue
        props = get_properties(card, plane_id, ObjectType.PLANE)
        type_value = props.value("type", PlaneType.OVERLAY)
        return Plane(
            id=arg.plane_id,
            type=PlaneType(type_value) if type_value in (0, 1, 2) else PlaneType.OVERLAY,
            possible_crtcs=arg.possible_crtcs, formats=tuple(int(fmts[i]) for i in range(n)),
            fb_id=arg.fb_id, crtc_id=arg.crtc_id, properties=props if with_properties else None,
        )
    raise counts_kept_changing("DRM_IOCTL_MODE_GETPLANE", plane_id)

"""CRTCs (DRM_IOCTL_MODE_GETCRTC): the scanout engines, their mode and whether they are active."""

from __future__ import annotations

from dataclasses import dataclass, field

from vkmsremote.drm import ioctl as k
from vkmsremote.drm.card import Card
from vkmsremote.drm.ioctl import ObjectType
from vkmsremote.drm.mode import Mode
from vkmsremote.drm.properties import ObjectProperties, get_properties


@dataclass(frozen=True, slots=True)
class Crtc:
    id: int
    index: int
    enabled: bool  # a mode is set (legacy mode_valid)
    active: bool  # the atomic ACTIVE property (falls back to ``enabled``)
    mode: Mode | None
    fb_id: int  # the primary plane's framebuffer (0: none)
    x: int
    y: int
    gamma_size: int
    properties: ObjectProperties | None = field(default=None, compare=False)


def get_crtc(card: Card, crtc_id: int, *, index: int = -1, with_properties: bool = True) -> Crtc:
    arg = k.drm_mode_crtc(crtc_id=crtc_id)
    card.ioctl(k.DRM_IOCTL_MODE_GETCRTC, arg, "DRM_IOCTL_MODE_GETCRTC", crtc_id)
    props = get_properties(card, crtc_id, ObjectType.CRTC) if with_properties else None
    enabled = bool(arg.mode_valid)
    active = enabled
    if props is not None and "ACTIVE" in props:
        active = bool(props["ACTIVE"].value)
    return Crtc(
        id=arg.crtc_id, index=index, enabled=enabled, active=active,
        mode=Mode.from_struct(arg.mode) if arg.mode_valid else None,
        fb_id=arg.fb_id, x=arg.x, y=arg.y, gamma_size=arg.gamma_size, properties=props,
    )

"""Encoders (DRM_IOCTL_MODE_GETENCODER): the link between a connector and the CRTCs that can feed it."""

from __future__ import annotations

from dataclasses import dataclass

from vkmsremote.drm import ioctl as k
from vkmsremote.drm.card import Card


@dataclass(frozen=True, slots=True)
class Encoder:
    id: int
    type: int
    crtc_id: int
    possible_crtcs: int  # bitmask of CRTC indices
    possible_clones: int


def get_encoder(card: Card, encoder_id: int) -> Encoder:
    arg = k.drm_mode_get_encoder(encoder_id=encoder_id)
    card.ioctl(k.DRM_IOCTL_MODE_GETENCODER, arg, "DRM_IOCTL_MODE_GETENCODER", encoder_id)
    return Encoder(arg.encoder_id, arg.encoder_type, arg.crtc_id, arg.possible_crtcs, arg.possible_clones)

"""A small typed API over the kernel's DRM/KMS UAPI (ioctls on /dev/dri/cardN), in the spirit of pykms.

Modules: ioctl (structs, request numbers, errno mapping), card (Card, finding card nodes), resources
(connectors, CRTCs, planes, modes, properties), framebuffer (GETFB2/PRIME/mmap readback, dumb buffers),
atomic (AtomicRequest, property blobs), events (vblank/flip events, asyncio reader), fourcc (formats).
"""

from vkmsremote.drm.atomic import AtomicRequest, PropertyBlob
from vkmsremote.drm.card import Card, CardNode, DriverVersion, card_for_vkms_device, list_cards
from vkmsremote.drm.fourcc import DrmFormat, fourcc, fourcc_str
from vkmsremote.drm.framebuffer import (
    DumbFramebuffer,
    FramebufferInfo,
    MappedFramebuffer,
    get_framebuffer,
    map_framebuffer,
)
from vkmsremote.drm.ioctl import AtomicFlag, ClientCap, ObjectType
from vkmsremote.drm.resources import (
    ConnectionStatus,
    Connector,
    ConnectorType,
    Crtc,
    Encoder,
    Mode,
    Plane,
    PlaneType,
    Resources,
    get_connector,
    get_crtc,
    get_plane,
    get_properties,
)

__all__ = [
    "AtomicFlag", "AtomicRequest", "Card", "CardNode", "ClientCap", "ConnectionStatus", "Connector",
    "ConnectorType", "Crtc", "DriverVersion", "DrmFormat", "DumbFramebuffer", "Encoder", "FramebufferInfo",
    "MappedFramebuffer", "Mode", "ObjectType", "Plane", "PlaneType", "PropertyBlob", "Resources",
    "card_for_vkms_device", "fourcc", "fourcc_str", "get_connector", "get_crtc", "get_framebuffer",
    "get_plane", "get_properties", "list_cards", "map_framebuffer",
]

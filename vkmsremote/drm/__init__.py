"""A small typed API over the kernel's DRM/KMS UAPI (ioctls on /dev/dri/cardN), in the spirit of pykms.

Modules: ioctl (structs, request numbers, errno mapping), card (Card, finding card nodes), one module per KMS
object (connector, encoder, crtc, plane, mode, properties; counted: the kernel's two-call array replies),
resources (a snapshot of all of them with lookups), framebuffer (GETFB2/PRIME/mmap readback, dumb buffers),
atomic (AtomicRequest, property blobs), events (vblank/flip events, asyncio reader), fourcc (formats).
"""

from vkmsremote.drm.atomic import AtomicRequest, PropertyBlob
from vkmsremote.drm.card import Card, CardNode, DriverVersion, card_for_vkms_device, list_cards
from vkmsremote.drm.connector import ConnectionStatus, Connector, ConnectorType, get_connector
from vkmsremote.drm.crtc import Crtc, get_crtc
from vkmsremote.drm.encoder import Encoder
from vkmsremote.drm.fourcc import DrmFormat, fourcc, fourcc_str
from vkmsremote.drm.framebuffer import (
    DumbFramebuffer,
    FramebufferInfo,
    MappedFramebuffer,
    get_framebuffer,
    map_framebuffer,
)
from vkmsremote.drm.ioctl import AtomicFlag, ClientCap, ObjectType
from vkmsremote.drm.mode import Mode
from vkmsremote.drm.plane import Plane, PlaneType, get_plane
from vkmsremote.drm.properties import get_properties
from vkmsremote.drm.resources import Resources

__all__ = [
    "AtomicFlag", "AtomicRequest", "Card", "CardNode", "ClientCap", "ConnectionStatus", "Connector",
    "ConnectorType", "Crtc", "DriverVersion", "DrmFormat", "DumbFramebuffer", "Encoder", "FramebufferInfo",
    "MappedFramebuffer", "Mode", "ObjectType", "Plane", "PlaneType", "PropertyBlob", "Resources",
    "card_for_vkms_device", "fourcc", "fourcc_str", "get_connector", "get_crtc", "get_framebuffer",
    "get_plane", "get_properties", "list_cards", "map_framebuffer",
]

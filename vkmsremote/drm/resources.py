"""One snapshot of a card's KMS objects (``Resources.fetch``), with lookups by id and by DRM name
("Virtual-1") and the routing between them. Each kind of object has its own module: connector, encoder,
crtc, plane, mode, properties; every ``get_*`` there asks the kernel afresh and returns frozen dataclasses
(only property metadata, which never changes, is cached on the Card).

The per-object names are re-exported here for code written against the single module this used to be
(branches in flight); new code imports them from the object's module.
"""

from __future__ import annotations

from dataclasses import dataclass

from vkmsremote.drm import ioctl as k
from vkmsremote.drm.card import Card
from vkmsremote.drm.connector import ConnectionStatus, Connector, ConnectorType, connector_name, get_connector
from vkmsremote.drm.counted import fill_ids
from vkmsremote.drm.crtc import Crtc, get_crtc
from vkmsremote.drm.encoder import Encoder, get_encoder
from vkmsremote.drm.mode import Mode
from vkmsremote.drm.plane import Plane, PlaneState, PlaneType, get_plane, get_plane_state
from vkmsremote.drm.properties import (
    ObjectProperties,
    Property,
    PropertyValue,
    get_blob,
    get_properties,
    get_property,
)
from vkmsremote.errors import UsageError

__all__ = [
    "ConnectionStatus", "Connector", "ConnectorType", "Crtc", "Encoder", "Mode", "ObjectProperties", "Plane",
    "PlaneState", "PlaneType", "Property", "PropertyValue", "Resources", "connector_name", "get_blob",
    "get_connector", "get_crtc", "get_encoder", "get_plane", "get_plane_state", "get_properties", "get_property",
]


def _mask_to_ids(mask: int, crtc_ids: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(cid for i, cid in enumerate(crtc_ids) if mask & (1 << i))


@dataclass(frozen=True, slots=True)
class Resources:
    """One snapshot of everything on a card."""

    crtcs: tuple[Crtc, ...]
    connectors: tuple[Connector, ...]
    encoders: tuple[Encoder, ...]
    planes: tuple[Plane, ...]
    min_width: int
    max_width: int
    min_height: int
    max_height: int

    @classmethod
    def fetch(cls, card: Card, *, probe: bool = True) -> Resources:
        """Everything on the card. With ``probe``, connectors are re-probed (status, modes); the kernel
        does that only for the DRM master, so the card is master for the call if no other client is.
        Otherwise (or without ``probe``) connectors show what the last probe by a master found."""
        if probe:
            with card.master_if_free():
                return cls._fetch(card, probe)
        return cls._fetch(card, probe)

    @classmethod
    def _fetch(cls, card: Card, probe: bool) -> Resources:
        res = k.drm_mode_card_res()
        # The fb list (only this fd's own framebuffers) is not kept, but must be sized: the kernel writes
        # count_fbs ids to fb_id_ptr if the count it is given says there is room.
        _fbs, crtc_ids, conn_ids, enc_ids = fill_ids(
            card, k.DRM_IOCTL_MODE_GETRESOURCES, "DRM_IOCTL_MODE_GETRESOURCES", res,
            [("count_fbs", "fb_id_ptr"), ("count_crtcs", "crtc_id_ptr"),
             ("count_connectors", "connector_id_ptr"), ("count_encoders", "encoder_id_ptr")])
        pres = k.drm_mode_get_plane_res()
        (plane_ids,) = fill_ids(card, k.DRM_IOCTL_MODE_GETPLANERESOURCES, "DRM_IOCTL_MODE_GETPLANERESOURCES", pres,
                                [("count_planes", "plane_id_ptr")])
        return cls(
            crtcs=tuple(get_crtc(card, cid, index=i) for i, cid in enumerate(crtc_ids)),
            connectors=tuple(get_connector(card, cid, probe=probe) for cid in conn_ids),
            encoders=tuple(get_encoder(card, eid) for eid in enc_ids),
            planes=tuple(get_plane(card, pid) for pid in plane_ids),
            min_width=res.min_width, max_width=res.max_width,
            min_height=res.min_height, max_height=res.max_height,
        )

    # --- lookups ---

    @property
    def crtc_ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.crtcs)

    def crtc(self, crtc_id: int) -> Crtc:
        for c in self.crtcs:
            if c.id == crtc_id:
                return c
        raise UsageError(f"no CRTC {crtc_id} on this card", hint=f"CRTCs: {', '.join(map(str, self.crtc_ids))}")

    def connector(self, key: int | str) -> Connector:
        """By object id or by DRM name ('Virtual-1')."""
        for c in self.connectors:
            if c.id == key or c.name == key:
                return c
        raise UsageError(f"no connector {key!r} on this card",
                         hint=f"connectors: {', '.join(f'{c.name} ({c.id})' for c in self.connectors)}")

    def encoder(self, encoder_id: int) -> Encoder:
        for e in self.encoders:
            if e.id == encoder_id:
                return e
        raise UsageError(f"no encoder {encoder_id} on this card")

    def plane(self, plane_id: int) -> Plane:
        for p in self.planes:
            if p.id == plane_id:
                return p
        raise UsageError(f"no plane {plane_id} on this card")

    def possible_crtc_ids(self, obj: Encoder | Plane | Connector) -> tuple[int, ...]:
        """The CRTCs an encoder or plane can feed; for a connector, the union over its encoders."""
        if isinstance(obj, Connector):
            mask = 0
            for eid in obj.encoder_ids:
                mask |= self.encoder(eid).possible_crtcs
        else:
            mask = obj.possible_crtcs
        return _mask_to_ids(mask, self.crtc_ids)

    def planes_for(self, crtc_id: int, plane_type: PlaneType | None = None) -> tuple[Plane, ...]:
        idx = self.crtc(crtc_id).index
        return tuple(p for p in self.planes
                     if p.possible_crtcs & (1 << idx) and (plane_type is None or p.type == plane_type))

    def _plane_of_type(self, crtc_id: int, plane_type: PlaneType) -> Plane | None:
        candidates = self.planes_for(crtc_id, plane_type)
        return next((p for p in candidates if p.crtc_id == crtc_id), candidates[0] if candidates else None)

    def primary_plane(self, crtc_id: int) -> Plane:
        plane = self._plane_of_type(crtc_id, PlaneType.PRIMARY)
        if plane is None:
            raise UsageError(f"CRTC {crtc_id} has no primary plane",
                             hint="was the UNIVERSAL_PLANES client cap set? (Card.open sets it)")
        return plane

    def cursor_plane(self, crtc_id: int) -> Plane | None:
        return self._plane_of_type(crtc_id, PlaneType.CURSOR)

    def crtc_of(self, connector: Connector) -> int:
        """The CRTC a connector is routed to: its atomic CRTC_ID, else its encoder's CRTC; 0 if none."""
        if connector.crtc_id:
            return connector.crtc_id
        if connector.encoder_id:
            return self.encoder(connector.encoder_id).crtc_id
        return 0

    def writeback_connectors(self) -> tuple[Connector, ...]:
        """Listed only when the card was opened with the WRITEBACK_CONNECTORS client cap."""
        return tuple(c for c in self.connectors if c.is_writeback)

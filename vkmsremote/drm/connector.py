"""Connectors (DRM_IOCTL_MODE_GETCONNECTOR): type, the kernel's name ("Virtual-1"), status, modes, encoders."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from enum import IntEnum

from vkmsremote.drm import ioctl as k
from vkmsremote.drm.card import Card
from vkmsremote.drm.counted import FILL_RETRIES, array, check_count, counts_kept_changing
from vkmsremote.drm.ioctl import ObjectType
from vkmsremote.drm.mode import Mode
from vkmsremote.drm.properties import ObjectProperties, get_properties


class ConnectorType(IntEnum):
    """DRM_MODE_CONNECTOR_*; ``drm_name`` is the kernel's prefix for the connector name (drm_connector.c)."""

    UNKNOWN = 0
    VGA = 1
    DVII = 2
    DVID = 3
    DVIA = 4
    COMPOSITE = 5
    SVIDEO = 6
    LVDS = 7
    COMPONENT = 8
    DIN_9PIN = 9
    DISPLAYPORT = 10
    HDMIA = 11
    HDMIB = 12
    TV = 13
    EDP = 14
    VIRTUAL = 15
    DSI = 16
    DPI = 17
    WRITEBACK = 18
    SPI = 19
    USB = 20

    @property
    def drm_name(self) -> str:
        return _CONNECTOR_NAMES[self]


_CONNECTOR_NAMES = {
    ConnectorType.UNKNOWN: "Unknown", ConnectorType.VGA: "VGA", ConnectorType.DVII: "DVI-I",
    ConnectorType.DVID: "DVI-D", ConnectorType.DVIA: "DVI-A", ConnectorType.COMPOSITE: "Composite",
    ConnectorType.SVIDEO: "SVIDEO", ConnectorType.LVDS: "LVDS", ConnectorType.COMPONENT: "Component",
    ConnectorType.DIN_9PIN: "DIN", ConnectorType.DISPLAYPORT: "DP", ConnectorType.HDMIA: "HDMI-A",
    ConnectorType.HDMIB: "HDMI-B", ConnectorType.TV: "TV", ConnectorType.EDP: "eDP",
    ConnectorType.VIRTUAL: "Virtual", ConnectorType.DSI: "DSI", ConnectorType.DPI: "DPI",
    ConnectorType.WRITEBACK: "Writeback", ConnectorType.SPI: "SPI", ConnectorType.USB: "USB",
}


def connector_name(connector_type: int, type_id: int) -> str:
    """The kernel's connector name, e.g. (VIRTUAL, 1) -> 'Virtual-1'."""
    try:
        prefix = ConnectorType(connector_type).drm_name
    except ValueError:
        prefix = f"Type{connector_type}"
    return f"{prefix}-{type_id}"


class ConnectionStatus(IntEnum):
    CONNECTED = 1
    DISCONNECTED = 2
    UNKNOWN = 3


@dataclass(frozen=True, slots=True)
class Connector:
    id: int
    type: int
    type_id: int
    name: str  # the kernel's name, e.g. "Virtual-1"
    status: ConnectionStatus
    modes: tuple[Mode, ...]
    encoder_id: int  # current encoder (0: none)
    encoder_ids: tuple[int, ...]
    mm_width: int
    mm_height: int
    properties: ObjectProperties | None = field(default=None, compare=False)

    @property
    def crtc_id(self) -> int:
        """The CRTC this connector is routed to (atomic CRTC_ID property), 0 if none or unknown."""
        return (self.properties.value("CRTC_ID", 0) or 0) if self.properties is not None else 0

    @property
    def preferred_mode(self) -> Mode | None:
        return next((m for m in self.modes if m.preferred), self.modes[0] if self.modes else None)

    @property
    def is_writeback(self) -> bool:
        return self.type == ConnectorType.WRITEBACK


def get_connector(card: Card, connector_id: int, *, probe: bool = True, with_properties: bool = True) -> Connector:
    """DRM_IOCTL_MODE_GETCONNECTOR. ``probe`` asks for a re-probe of status and modes (the kernel's
    fill_modes), which the kernel does only for the DRM master (see Card.master_if_free); False reads
    the current list only."""
    for _ in range(FILL_RETRIES):
        arg = k.drm_mode_get_connector(connector_id=connector_id)
        scratch = k.drm_mode_modeinfo()
        if not probe:  # count_modes=1 with a scratch mode asks for the current list without probing
            arg.count_modes = 1
            arg.modes_ptr = ctypes.addressof(scratch)
        card.ioctl(k.DRM_IOCTL_MODE_GETCONNECTOR, arg, "DRM_IOCTL_MODE_GETCONNECTOR", connector_id)
        nmodes = check_count(arg.count_modes, "GETCONNECTOR modes")
        nenc = check_count(arg.count_encoders, "GETCONNECTOR encoders")
        modes = array(k.drm_mode_modeinfo, nmodes)
        encs = array(ctypes.c_uint32, nenc)
        arg.count_modes, arg.modes_ptr = nmodes, ctypes.addressof(modes)
        arg.count_encoders, arg.encoders_ptr = nenc, ctypes.addressof(encs)
        arg.count_props = 0
        arg.props_ptr = arg.prop_values_ptr = 0
        card.ioctl(k.DRM_IOCTL_MODE_GETCONNECTOR, arg, "DRM_IOCTL_MODE_GETCONNECTOR", connector_id)
        if arg.count_modes != nmodes or arg.count_encoders != nenc:
            continue
        try:
            status = ConnectionStatus(arg.connection)
        except ValueError:
            status = ConnectionStatus.UNKNOWN
        return Connector(
            id=arg.connector_id, type=arg.connector_type, type_id=arg.connector_type_id,
            name=connector_name(arg.connector_type, arg.connector_type_id), status=status,
            modes=tuple(Mode.from_struct(modes[i]) for i in range(nmodes)),
            encoder_id=arg.encoder_id, encoder_ids=tuple(int(encs[i]) for i in range(nenc)),
            mm_width=arg.mm_width, mm_height=arg.mm_height,
            properties=get_properties(card, connector_id, ObjectType.CONNECTOR) if with_properties else None,
        )
    raise counts_kept_changing("DRM_IOCTL_MODE_GETCONNECTOR", connector_id)

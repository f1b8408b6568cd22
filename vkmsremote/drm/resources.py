"""Snapshots of a card's KMS objects: connectors, encoders, CRTCs, planes, modes, properties.

Every ``get_*`` function asks the kernel afresh and returns frozen dataclasses; nothing here caches
object state (only property metadata, which never changes, is cached on the Card). ``Resources.fetch``
takes one snapshot of everything, with lookups by id and by DRM name ("Virtual-1").
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from vkmsremote.drm import ioctl as k
from vkmsremote.drm.card import Card
from vkmsremote.drm.ioctl import ObjectType, PropFlag
from vkmsremote.errors import DrmError, UsageError

# Retries of the "ask for counts, then fill arrays" dance if the counts change in between (hotplug).
_FILL_RETRIES = 8
# No sane device has more objects than this; a larger count means a corrupt reply.
_MAX_COUNT = 4096


def _array(ctype: Any, n: int) -> Any:
    return (ctype * max(n, 1))()


def _check_count(n: int, what: str) -> int:
    if n > _MAX_COUNT:
        raise DrmError(f"{what}: kernel reported {n} entries", errno.ERANGE)
    return n


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


class PlaneType(IntEnum):
    """Values of a plane's immutable "type" enum property."""

    OVERLAY = 0
    PRIMARY = 1
    CURSOR = 2


DRM_MODE_TYPE_PREFERRED = 1 << 3
DRM_MODE_FLAG_INTERLACE = 1 << 4
DRM_MODE_FLAG_DBLSCAN = 1 << 5


def _mask_to_ids(mask: int, crtc_ids: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(cid for i, cid in enumerate(crtc_ids) if mask & (1 << i))


# --- modes -----------------------------------------------------------------------------------------------


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


# --- properties ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Property:
    """A property's metadata (DRM_IOCTL_MODE_GETPROPERTY). Never changes for the card's lifetime."""

    id: int
    name: str
    flags: int
    values: tuple[int, ...]  # RANGE/SIGNED_RANGE: (min, max); OBJECT: (object type,)
    enums: tuple[tuple[str, int], ...]  # ENUM/BITMASK: (name, value) pairs

    @property
    def kind(self) -> str:
        legacy = PropFlag(self.flags & k.PROP_LEGACY_TYPE)
        if legacy:
            return {PropFlag.RANGE: "range", PropFlag.ENUM: "enum", PropFlag.BLOB: "blob",
                    PropFlag.BITMASK: "bitmask"}.get(legacy, "unknown")
        ext = self.flags & k.PROP_EXTENDED_TYPE
        return {int(PropFlag.OBJECT): "object", int(PropFlag.SIGNED_RANGE): "signed_range"}.get(ext, "unknown")

    @property
    def immutable(self) -> bool:
        return bool(self.flags & PropFlag.IMMUTABLE)

    def enum_value(self, name: str) -> int:
        for n, v in self.enums:
            if n == name:
                return v
        raise UsageError(f"property {self.name!r} has no value {name!r}",
                         hint=f"choose one of {', '.join(n for n, _ in self.enums)}")

    def enum_name(self, value: int) -> str | None:
        for n, v in self.enums:
            if v == value:
                return n
        return None


@dataclass(frozen=True, slots=True)
class PropertyValue:
    prop: Property
    value: int


class ObjectProperties(Mapping[str, PropertyValue]):
    """Properties of one KMS object by name, with their current values."""

    __slots__ = ("_by_name", "object_id")

    def __init__(self, object_id: int, values: dict[str, PropertyValue]) -> None:
        self.object_id = object_id
        self._by_name = values

    def __getitem__(self, name: str) -> PropertyValue:
        try:
            return self._by_name[name]
        except KeyError:
            raise UsageError(f"object {self.object_id} has no property {name!r}",
                             hint=f"it has: {', '.join(sorted(self._by_name))}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __repr__(self) -> str:
        return f"ObjectProperties({self.object_id}, {{{', '.join(f'{n}={v.value}' for n, v in self._by_name.items())}}})"

    def value(self, name: str, default: int | None = None) -> int | None:
        pv = self._by_name.get(name)
        return pv.value if pv is not None else default


def get_property(card: Card, prop_id: int) -> Property:
    cached = card.property_cache.get(prop_id)
    if isinstance(cached, Property):
        return cached
    for _ in range(_FILL_RETRIES):
        arg = k.drm_mode_get_property(prop_id=prop_id)
        card.ioctl(k.DRM_IOCTL_MODE_GETPROPERTY, arg, "DRM_IOCTL_MODE_GETPROPERTY", prop_id)
        nvals = _check_count(arg.count_values, "GETPROPERTY values")
        nenums = _check_count(arg.count_enum_blobs, "GETPROPERTY enums")
        values = _array(ctypes.c_uint64, nvals)
        is_enum = bool(arg.flags & (PropFlag.ENUM | PropFlag.BITMASK))
        enums = _array(k.drm_mode_property_enum, nenums if is_enum else 0)
        arg.values_ptr = ctypes.addressof(values)
        arg.enum_blob_ptr = ctypes.addressof(enums) if is_enum else 0
        if not is_enum:
            arg.count_enum_blobs = 0
        card.ioctl(k.DRM_IOCTL_MODE_GETPROPERTY, arg, "DRM_IOCTL_MODE_GETPROPERTY", prop_id)
        if arg.count_values != nvals or (is_enum and arg.count_enum_blobs != nenums):
            continue
        prop = Property(
            id=prop_id,
            name=bytes(arg.name).split(b"\0", 1)[0].decode("ascii", "replace"),
            flags=arg.flags,
            values=tuple(int(values[i]) for i in range(nvals)),
            enums=tuple((bytes(enums[i].name).split(b"\0", 1)[0].decode("ascii", "replace"), int(enums[i].value))
                        for i in range(nenums)) if is_enum else (),
        )
        card.property_cache[prop_id] = prop
        return prop
    raise DrmError("DRM_IOCTL_MODE_GETPROPERTY (counts kept changing)", errno.EAGAIN, object_id=prop_id)


def get_properties(card: Card, object_id: int, object_type: ObjectType = ObjectType.ANY) -> ObjectProperties:
    """DRM_IOCTL_MODE_OBJ_GETPROPERTIES: every property of an object, by name, with current values."""
    for _ in range(_FILL_RETRIES):
        arg = k.drm_mode_obj_get_properties(obj_id=object_id, obj_type=object_type)
        card.ioctl(k.DRM_IOCTL_MODE_OBJ_GETPROPERTIES, arg, "DRM_IOCTL_MODE_OBJ_GETPROPERTIES", object_id)
        n = _check_count(arg.count_props, "OBJ_GETPROPERTIES")
        ids, vals = _array(ctypes.c_uint32, n), _array(ctypes.c_uint64, n)
        arg.props_ptr, arg.prop_values_ptr = ctypes.addressof(ids), ctypes.addressof(vals)
        card.ioctl(k.DRM_IOCTL_MODE_OBJ_GETPROPERTIES, arg, "DRM_IOCTL_MODE_OBJ_GETPROPERTIES", object_id)
        if arg.count_props != n:
            continue
        out: dict[str, PropertyValue] = {}
        for i in range(n):
            prop = get_property(card, int(ids[i]))
            out[prop.name] = PropertyValue(prop, int(vals[i]))
        return ObjectProperties(object_id, out)
    raise DrmError("DRM_IOCTL_MODE_OBJ_GETPROPERTIES (counts kept changing)", errno.EAGAIN, object_id=object_id)


def get_blob(card: Card, blob_id: int) -> bytes:
    """DRM_IOCTL_MODE_GETPROPBLOB: the bytes of a property blob (e.g. a MODE_ID or IN_FORMATS)."""
    arg = k.drm_mode_get_blob(blob_id=blob_id)
    card.ioctl(k.DRM_IOCTL_MODE_GETPROPBLOB, arg, "DRM_IOCTL_MODE_GETPROPBLOB", blob_id)
    if arg.length > 16 << 20:
        raise DrmError(f"DRM_IOCTL_MODE_GETPROPBLOB: {arg.length}-byte blob", errno.ERANGE, object_id=blob_id)
    buf = ctypes.create_string_buffer(max(arg.length, 1))
    arg.data = ctypes.addressof(buf)
    card.ioctl(k.DRM_IOCTL_MODE_GETPROPBLOB, arg, "DRM_IOCTL_MODE_GETPROPBLOB", blob_id)
    return buf.raw[: arg.length]


# --- objects ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Encoder:
    id: int
    type: int
    crtc_id: int
    possible_crtcs: int  # bitmask of CRTC indices
    possible_clones: int


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


@dataclass(frozen=True, slots=True)
class Plane:
    id: int
    type: PlaneType
    possible_crtcs: int  # bitmask of CRTC indices
    formats: tuple[int, ...]  # fourcc codes
    fb_id: int
    crtc_id: int
    properties: ObjectProperties | None = field(default=None, compare=False)


def _fill_ids(card: Card, op: str, arg: Any, pairs: list[tuple[str, str]], object_id: int | None = None) -> Any:
    """The two-call pattern: ``pairs`` maps count field -> pointer field; returns the filled arrays."""
    for _ in range(_FILL_RETRIES):
        for count_field, _ptr in pairs:
            setattr(arg, count_field, 0)
        card.ioctl(getattr(k, f"DRM_IOCTL_{op}"), arg, f"DRM_IOCTL_{op}", object_id)
        counts = [_check_count(getattr(arg, c), op) for c, _ in pairs]
        arrays = [_array(ctypes.c_uint32, n) for n in counts]
        for (c, p), n, a in zip(pairs, counts, arrays, strict=True):
            setattr(arg, c, n)
            setattr(arg, p, ctypes.addressof(a))
        card.ioctl(getattr(k, f"DRM_IOCTL_{op}"), arg, f"DRM_IOCTL_{op}", object_id)
        if [getattr(arg, c) for c, _ in pairs] == counts:
            return [tuple(int(a[i]) for i in range(n)) for a, n in zip(arrays, counts, strict=True)]
    raise DrmError(f"DRM_IOCTL_{op} (counts kept changing)", errno.EAGAIN, object_id=object_id)


def get_encoder(card: Card, encoder_id: int) -> Encoder:
    arg = k.drm_mode_get_encoder(encoder_id=encoder_id)
    card.ioctl(k.DRM_IOCTL_MODE_GETENCODER, arg, "DRM_IOCTL_MODE_GETENCODER", encoder_id)
    return Encoder(arg.encoder_id, arg.encoder_type, arg.crtc_id, arg.possible_crtcs, arg.possible_clones)


def get_connector(card: Card, connector_id: int, *, probe: bool = True, with_properties: bool = True) -> Connector:
    """DRM_IOCTL_MODE_GETCONNECTOR. ``probe`` asks for a re-probe of status and modes (the kernel's
    fill_modes), which the kernel does only for the DRM master (see Card.master_if_free); False reads
    the current list only."""
    for _ in range(_FILL_RETRIES):
        arg = k.drm_mode_get_connector(connector_id=connector_id)
        scratch = k.drm_mode_modeinfo()
        if not probe:  # count_modes=1 with a scratch mode asks for the current list without probing
            arg.count_modes = 1
            arg.modes_ptr = ctypes.addressof(scratch)
        card.ioctl(k.DRM_IOCTL_MODE_GETCONNECTOR, arg, "DRM_IOCTL_MODE_GETCONNECTOR", connector_id)
        nmodes = _check_count(arg.count_modes, "GETCONNECTOR modes")
        nenc = _check_count(arg.count_encoders, "GETCONNECTOR encoders")
        modes = _array(k.drm_mode_modeinfo, nmodes)
        encs = _array(ctypes.c_uint32, nenc)
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
    raise DrmError("DRM_IOCTL_MODE_GETCONNECTOR (counts kept changing)", errno.EAGAIN, object_id=connector_id)


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
    for _ in range(_FILL_RETRIES):
        arg = k.drm_mode_get_plane(plane_id=plane_id)
        card.ioctl(k.DRM_IOCTL_MODE_GETPLANE, arg, "DRM_IOCTL_MODE_GETPLANE", plane_id)
        n = _check_count(arg.count_format_types, "GETPLANE formats")
        fmts = _array(ctypes.c_uint32, n)
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
    raise DrmError("DRM_IOCTL_MODE_GETPLANE (counts kept changing)", errno.EAGAIN, object_id=plane_id)


@dataclass(frozen=True, slots=True)
class Resources:
    """One snapshot of everything on a card."""

    fb_ids: tuple[int, ...]
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
        fbs, crtc_ids, conn_ids, enc_ids = _fill_ids(card, "MODE_GETRESOURCES", res, [
            ("count_fbs", "fb_id_ptr"), ("count_crtcs", "crtc_id_ptr"),
            ("count_connectors", "connector_id_ptr"), ("count_encoders", "encoder_id_ptr"),
        ])
        pres = k.drm_mode_get_plane_res()
        (plane_ids,) = _fill_ids(card, "MODE_GETPLANERESOURCES", pres, [("count_planes", "plane_id_ptr")])
        return cls(
            fb_ids=fbs,
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

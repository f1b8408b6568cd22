"""KMS properties: metadata (DRM_IOCTL_MODE_GETPROPERTY, cached on the Card: it never changes), an object's
properties with their current values (DRM_IOCTL_MODE_OBJ_GETPROPERTIES) and property blobs."""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from vkmsremote.drm import ioctl as k
from vkmsremote.drm.card import Card
from vkmsremote.drm.counted import FILL_RETRIES, array, check_count, counts_kept_changing
from vkmsremote.drm.ioctl import ObjectType, PropFlag
from vkmsremote.errors import DrmError, UsageError


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
    for _ in range(FILL_RETRIES):
        arg = k.drm_mode_get_property(prop_id=prop_id)
        card.ioctl(k.DRM_IOCTL_MODE_GETPROPERTY, arg, "DRM_IOCTL_MODE_GETPROPERTY", prop_id)
        nvals = check_count(arg.count_values, "GETPROPERTY values")
        nenums = check_count(arg.count_enum_blobs, "GETPROPERTY enums")
        values = array(ctypes.c_uint64, nvals)
        is_enum = bool(arg.flags & (PropFlag.ENUM | PropFlag.BITMASK))
        enums = array(k.drm_mode_property_enum, nenums if is_enum else 0)
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
    raise counts_kept_changing("DRM_IOCTL_MODE_GETPROPERTY", prop_id)


def get_properties(card: Card, object_id: int, object_type: ObjectType = ObjectType.ANY) -> ObjectProperties:
    """DRM_IOCTL_MODE_OBJ_GETPROPERTIES: every property of an object, by name, with current values."""
    for _ in range(FILL_RETRIES):
        arg = k.drm_mode_obj_get_properties(obj_id=object_id, obj_type=object_type)
        card.ioctl(k.DRM_IOCTL_MODE_OBJ_GETPROPERTIES, arg, "DRM_IOCTL_MODE_OBJ_GETPROPERTIES", object_id)
        n = check_count(arg.count_props, "OBJ_GETPROPERTIES")
        ids, vals = array(ctypes.c_uint32, n), array(ctypes.c_uint64, n)
        arg.props_ptr, arg.prop_values_ptr = ctypes.addressof(ids), ctypes.addressof(vals)
        card.ioctl(k.DRM_IOCTL_MODE_OBJ_GETPROPERTIES, arg, "DRM_IOCTL_MODE_OBJ_GETPROPERTIES", object_id)
        if arg.count_props != n:
            continue
        out: dict[str, PropertyValue] = {}
        for i in range(n):
            prop = get_property(card, int(ids[i]))
            out[prop.name] = PropertyValue(prop, int(vals[i]))
        return ObjectProperties(object_id, out)
    raise counts_kept_changing("DRM_IOCTL_MODE_OBJ_GETPROPERTIES", object_id)


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

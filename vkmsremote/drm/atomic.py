"""Atomic modesetting: a request of (object, property, value) triplets committed with one
DRM_IOCTL_MODE_ATOMIC, and property blobs (MODE_ID and friends). Needs the ATOMIC client cap and,
except for TEST_ONLY on some drivers, DRM master.
"""

from __future__ import annotations

import ctypes
import errno
from typing import Protocol

from vkmsremote.drm import ioctl as k
from vkmsremote.drm.card import Card
from vkmsremote.drm.ioctl import AtomicFlag, ClientCap
from vkmsremote.drm.mode import Mode
from vkmsremote.drm.properties import get_properties
from vkmsremote.errors import DrmError, UsageError


class HasId(Protocol):
    @property
    def id(self) -> int: ...


def _object_id(obj: int | HasId) -> int:
    return obj if isinstance(obj, int) else obj.id


def property_id(card: Card, object_id: int, name: str) -> int:
    """The id of property ``name`` on an object (cached on the card: ids never change)."""
    ids = card.property_ids.get(object_id)
    if ids is None:
        ids = {n: pv.prop.id for n, pv in get_properties(card, object_id).items()}
        card.property_ids[object_id] = ids
    try:
        return ids[name]
    except KeyError:
        raise UsageError(f"object {object_id} has no property {name!r}",
                         hint=f"it has: {', '.join(sorted(ids))}") from None


class AtomicRequest:
    """Collects property changes and commits them in one atomic ioctl.

    >>> req = AtomicRequest(card)
    >>> req.add(crtc, "ACTIVE", 1).add(crtc, "MODE_ID", blob.id)
    >>> req.commit(AtomicFlag.ALLOW_MODESET)
    """

    def __init__(self, card: Card) -> None:
        if not card.client_caps.get(ClientCap.ATOMIC):
            raise UsageError(f"{card.path} was opened without the ATOMIC client cap",
                             hint="open it with Card.open(path, atomic=True)")
        self.card = card
        self._objs: dict[int, dict[int, int]] = {}

    def add(self, obj: int | HasId, prop: str | int, value: int) -> AtomicRequest:
        """Set ``prop`` (a name, or a property id) of ``obj`` (an id, or any object with ``.id``) to ``value``.

        Negative values are stored as two's complement (SIGNED_RANGE properties, fence fds of -1).
        """
        oid = _object_id(obj)
        pid = property_id(self.card, oid, prop) if isinstance(prop, str) else prop
        self._objs.setdefault(oid, {})[pid] = value & 0xFFFF_FFFF_FFFF_FFFF
        return self

    def add_many(self, obj: int | HasId, values: dict[str, int]) -> AtomicRequest:
        for name, value in values.items():
            self.add(obj, name, value)
        return self

    def __len__(self) -> int:
        return sum(len(p) for p in self._objs.values())

    def commit(self, flags: AtomicFlag = AtomicFlag.NONE, user_data: int = 0) -> None:
        """DRM_IOCTL_MODE_ATOMIC. With PAGE_FLIP_EVENT, one FLIP_COMPLETE event per CRTC carries ``user_data``."""
        n_objs = len(self._objs)
        n_props = len(self)
        objs = (ctypes.c_uint32 * max(n_objs, 1))(*self._objs)
        counts = (ctypes.c_uint32 * max(n_objs, 1))(*(len(p) for p in self._objs.values()))
        props = (ctypes.c_uint32 * max(n_props, 1))(*(pid for p in self._objs.values() for pid in p))
        values = (ctypes.c_uint64 * max(n_props, 1))(*(v for p in self._objs.values() for v in p.values()))
        arg = k.drm_mode_atomic(
            flags=int(flags), count_objs=n_objs,
            objs_ptr=ctypes.addressof(objs), count_props_ptr=ctypes.addressof(counts),
            props_ptr=ctypes.addressof(props), prop_values_ptr=ctypes.addressof(values),
            user_data=user_data,
        )
        try:
            self.card.ioctl(k.DRM_IOCTL_MODE_ATOMIC, arg, f"DRM_IOCTL_MODE_ATOMIC({flags!r})")
        except DrmError as exc:
            if exc.errno == errno.EACCES:
                raise DrmError(exc.op, exc.errno, hint="atomic commits need DRM master: call Card.set_master() "
                               "and make sure no compositor or modetest holds the card") from None
            raise

    def test(self, flags: AtomicFlag = AtomicFlag.NONE) -> bool:
        """Commit with TEST_ONLY: True if the kernel would accept it; False on EINVAL/ERANGE (other errors raise)."""
        try:
            self.commit(flags | AtomicFlag.TEST_ONLY)
        except DrmError as exc:
            if exc.errno in (errno.EINVAL, errno.ERANGE):
                return False
            raise
        return True


def create_blob(card: Card, data: bytes) -> int:
    """DRM_IOCTL_MODE_CREATEPROPBLOB -> the blob id."""
    buf = ctypes.create_string_buffer(data, len(data))
    arg = k.drm_mode_create_blob(data=ctypes.addressof(buf), length=len(data))
    card.ioctl(k.DRM_IOCTL_MODE_CREATEPROPBLOB, arg, "DRM_IOCTL_MODE_CREATEPROPBLOB")
    return int(arg.blob_id)


def destroy_blob(card: Card, blob_id: int) -> None:
    card.ioctl(k.DRM_IOCTL_MODE_DESTROYPROPBLOB, k.drm_mode_destroy_blob(blob_id=blob_id),
               "DRM_IOCTL_MODE_DESTROYPROPBLOB", blob_id)


class PropertyBlob:
    """A property blob we created; destroyed by :meth:`close` (a commit keeps its own reference)."""

    def __init__(self, card: Card, data: bytes) -> None:
        self.card = card
        self.data = data
        self.id = create_blob(card, data)

    @classmethod
    def for_mode(cls, card: Card, mode: Mode) -> PropertyBlob:
        """A MODE_ID blob: the 68-byte struct drm_mode_modeinfo."""
        return cls(card, mode.raw)

    def close(self) -> None:
        if self.id and not self.card.closed:
            blob, self.id = self.id, 0
            destroy_blob(self.card, blob)

    def __enter__(self) -> PropertyBlob:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

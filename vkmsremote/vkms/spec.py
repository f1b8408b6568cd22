"""Frozen description of one VKMS configfs device, validated with the kernel's own rules.

The rules are those of ``vkms_config_is_valid()`` (Linux 7.3, drivers/gpu/drm/vkms/vkms_config.c):
1..31 planes, CRTCs, encoders and connectors; every plane and every encoder has at least one possible
CRTC; every CRTC has exactly one primary plane, at most one cursor plane and at least one encoder;
every connector has at least one possible encoder. Checking them here turns the kernel's bare EINVAL
on ``echo 1 > enabled`` into a message naming the object at fault, before anything is created.

Order matters: the kernel keeps each kind of object in a list in ``mkdir`` order and creates the DRM
objects in that order (vkms_output.c), which is how configfs names are matched to DRM objects
(``Virtual-N`` connectors, CRTC indices). Tuples here keep the profile's order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from vkmsremote.errors import ProfileError

MAX_OBJECTS = 31
"""Per kind; the kernel rejects 0 and >= 32 (DRM uses 32-bit masks for CRTCs, encoders, connectors)."""

DEFAULT_DEVICE_NAME = "vkms"
"""The name of the module's own default device; configfs refuses it (make_device_group)."""

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}")


class PlaneType(IntEnum):
    """``planes/<p>/type`` values (enum drm_plane_type)."""

    OVERLAY = 0
    PRIMARY = 1
    CURSOR = 2


class ConnectorStatus(IntEnum):
    """``connectors/<k>/status`` values (enum drm_connector_status)."""

    CONNECTED = 1
    DISCONNECTED = 2
    UNKNOWN = 3


@dataclass(frozen=True, slots=True)
class PlaneSpec:
    name: str
    type: PlaneType
    possible_crtcs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CrtcSpec:
    name: str
    writeback: bool = False


@dataclass(frozen=True, slots=True)
class EncoderSpec:
    name: str
    possible_crtcs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ConnectorSpec:
    name: str
    possible_encoders: tuple[str, ...]
    status: ConnectorStatus = ConnectorStatus.CONNECTED


@dataclass(frozen=True, slots=True)
class Layout:
    """The objects of a device and their links, in creation order, with no validation.

    This is what can be read back from configfs for any device, valid or half-built; ``DeviceSpec``
    wraps one that passed validation. Connector status is not part of the layout: it is the one
    attribute the kernel lets change while the device is enabled (hotplug).
    """

    planes: tuple[PlaneSpec, ...]
    crtcs: tuple[CrtcSpec, ...]
    encoders: tuple[EncoderSpec, ...]
    connectors: tuple[ConnectorSpec, ...]

    def normalized(self) -> dict[str, dict[str, object]]:
        """Everything that cannot change while enabled, independent of creation and link order.

        Used for idempotence: connector status is left out (hotplug may change it while enabled), and
        so is order, which a fake configfs on an ordinary file system does not keep.
        """
        return {
            "planes": {p.name: (p.type, frozenset(p.possible_crtcs)) for p in self.planes},
            "crtcs": {c.name: c.writeback for c in self.crtcs},
            "encoders": {e.name: frozenset(e.possible_crtcs) for e in self.encoders},
            "connectors": {k.name: frozenset(k.possible_encoders) for k in self.connectors},
        }

    def differences(self, other: Layout) -> list[str]:
        """How ``other`` differs from this layout, one phrase per difference (empty: same)."""
        out: list[str] = []
        mine, theirs = self.normalized(), other.normalized()
        for kind in mine:
            a, b = mine[kind], theirs[kind]
            out.extend(f"{kind}/{name} missing" for name in sorted(a.keys() - b.keys()))
            out.extend(f"{kind}/{name} not in the profile" for name in sorted(b.keys() - a.keys()))
            out.extend(
                f"{kind}/{name} is {_describe(b[name])}, profile wants {_describe(a[name])}"
                for name in sorted(a.keys() & b.keys())
                if a[name] != b[name]
            )
        return out


def _describe(value: object) -> str:
    if isinstance(value, tuple):  # plane: (type, crtcs)
        ptype, crtcs = value
        return f"{PlaneType(ptype).name.lower()} on {sorted(crtcs)}"
    if isinstance(value, bool):
        return f"writeback={int(value)}"
    if isinstance(value, frozenset):
        return f"linked to {sorted(value)}"
    return repr(value)


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A device that ``echo 1 > enabled`` will accept. Constructing one validates it (ProfileError)."""

    name: str
    layout: Layout
    source: str = ""
    """Where the spec came from (profile path), for messages."""

    def __post_init__(self) -> None:
        for problem in validate(self.name, self.layout):
            raise ProfileError(problem, path=self.source, hint=_FIX_HINT)

    @property
    def planes(self) -> tuple[PlaneSpec, ...]:
        return self.layout.planes

    @property
    def crtcs(self) -> tuple[CrtcSpec, ...]:
        return self.layout.crtcs

    @property
    def encoders(self) -> tuple[EncoderSpec, ...]:
        return self.layout.encoders

    @property
    def connectors(self) -> tuple[ConnectorSpec, ...]:
        return self.layout.connectors

    def connector(self, name: str) -> ConnectorSpec:
        for k in self.connectors:
            if k.name == name:
                return k
        raise KeyError(name)


_FIX_HINT = "fix the profile; see docs/configfs.md for the rules"


def validate(device_name: str, layout: Layout) -> list[str]:
    """Every rule ``layout`` breaks, most basic first (empty list: the kernel would accept it)."""
    problems: list[str] = []
    if not _NAME_RE.fullmatch(device_name):
        problems.append(f"device name {device_name!r} must be 1-63 characters of A-Z a-z 0-9 _ . + -")
    elif device_name == DEFAULT_DEVICE_NAME:
        problems.append(f"device name {device_name!r} is reserved by the vkms module's default device")
    kinds: dict[str, tuple[PlaneSpec, ...] | tuple[CrtcSpec, ...] | tuple[EncoderSpec, ...] | tuple[ConnectorSpec, ...]]
    kinds = {
        "planes": layout.planes,
        "crtcs": layout.crtcs,
        "encoders": layout.encoders,
        "connectors": layout.connectors,
    }
    for kind, objs in kinds.items():
        if not 1 <= len(objs) <= MAX_OBJECTS:
            problems.append(f"{kind}: {len(objs)} defined, the kernel needs 1 to {MAX_OBJECTS}")
        seen: set[str] = set()
        for obj in objs:
            if not _NAME_RE.fullmatch(obj.name):
                problems.append(f"{kind}.{obj.name!r}: name must be 1-63 characters of A-Z a-z 0-9 _ . + -")
            if obj.name in seen:
                problems.append(f"{kind}.{obj.name}: defined twice")
            seen.add(obj.name)
    if problems:
        return problems

    crtc_names = {c.name for c in layout.crtcs}
    encoder_names = {e.name for e in layout.encoders}

    def check_links(where: str, links: Iterable[str], known: set[str], what: str) -> None:
        links = tuple(links)
        if not links:
            problems.append(f"{where}: links to no {what}; the kernel needs at least one")
        for target in links:
            if target not in known:
                problems.append(f"{where}: unknown {what} {target!r} (defined: {', '.join(sorted(known))})")
        if len(set(links)) != len(links):
            problems.append(f"{where}: links the same {what} twice")

    for p in layout.planes:
        check_links(f"planes.{p.name}.possible_crtcs", p.possible_crtcs, crtc_names, "CRTC")
    for e in layout.encoders:
        check_links(f"encoders.{e.name}.possible_crtcs", e.possible_crtcs, crtc_names, "CRTC")
    for k in layout.connectors:
        check_links(f"connectors.{k.name}.possible_encoders", k.possible_encoders, encoder_names, "encoder")
    if problems:
        return problems

    for c in layout.crtcs:
        primaries = [p.name for p in layout.planes if p.type == PlaneType.PRIMARY and c.name in p.possible_crtcs]
        cursors = [p.name for p in layout.planes if p.type == PlaneType.CURSOR and c.name in p.possible_crtcs]
        if not primaries:
            problems.append(f"crtcs.{c.name}: no primary plane links to it; exactly one must")
        elif len(primaries) > 1:
            problems.append(f"crtcs.{c.name}: {len(primaries)} primary planes ({', '.join(primaries)}); exactly one allowed")
        if len(cursors) > 1:
            problems.append(f"crtcs.{c.name}: {len(cursors)} cursor planes ({', '.join(cursors)}); at most one allowed")
        if not any(c.name in e.possible_crtcs for e in layout.encoders):
            problems.append(f"crtcs.{c.name}: no encoder links to it; at least one must")
    return problems

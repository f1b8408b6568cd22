"""Pure planning: (wanted spec, observed configfs state) -> list of configfs operations.

Nothing here touches the file system. Each operation is a frozen dataclass that can render itself as
the equivalent shell command (``--dry-run``) and knows its inverse (for rolling back a failed run).

Order, from the kernel's rules (vkms_configfs.c) and IGT's lib/igt_vkms.c:
  create:   mkdir device; mkdir planes/crtcs/encoders/connectors items and write their attributes;
            link plane -> CRTC, encoder -> CRTC, connector -> encoder (targets must exist first);
            write ``enabled`` = 1 last (the kernel validates and builds the DRM device then) and read it back.
  teardown: ``enabled`` = 0; remove every link; rmdir items (connectors, encoders, CRTCs, planes);
            rmdir the device. Only ``connectors/*/status`` may be written while enabled.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TypeAlias

from vkmsremote.errors import DeviceStateError

from .spec import DeviceSpec, Layout


@dataclass(frozen=True, slots=True)
class Mkdir:
    path: PurePosixPath

    def shell(self) -> str:
        return f"mkdir {_q(self.path)}"


@dataclass(frozen=True, slots=True)
class Rmdir:
    path: PurePosixPath

    def shell(self) -> str:
        return f"rmdir {_q(self.path)}"


@dataclass(frozen=True, slots=True)
class Symlink:
    link: PurePosixPath
    target: PurePosixPath

    def shell(self) -> str:
        return f"ln -s {_q(self.target)} {_q(self.link)}"


@dataclass(frozen=True, slots=True)
class Unlink:
    path: PurePosixPath

    def shell(self) -> str:
        return f"rm {_q(self.path)}"


@dataclass(frozen=True, slots=True)
class WriteAttr:
    """Write ``value`` to a configfs attribute; with ``verify`` the value is read back and compared."""

    path: PurePosixPath
    value: str
    verify: bool = False

    def shell(self) -> str:
        cmd = f"echo {self.value} > {_q(self.path)}"
        if self.verify:
            cmd += f' && test "$(cat {_q(self.path)})" = {self.value}'
        return cmd


Op: TypeAlias = Mkdir | Rmdir | Symlink | Unlink | WriteAttr


def _q(p: PurePosixPath) -> str:
    return shlex.quote(str(p))


def as_shell(ops: Iterable[Op]) -> str:
    """The operations as a shell script body, one command per line."""
    return "".join(op.shell() + "\n" for op in ops)


def inverse(op: Op) -> Op | None:
    """What undoes ``op`` (None: nothing to undo, e.g. an attribute of a directory that goes away)."""
    match op:
        case Mkdir(path):
            return Rmdir(path)
        case Symlink(link, _):
            return Unlink(link)
        case WriteAttr(path, "1", _) if path.name == "enabled":
            return WriteAttr(path, "0")
        case _:
            return None


@dataclass(frozen=True, slots=True)
class ObservedDevice:
    """A device as read back from configfs: any layout, valid or not, and whether it is enabled."""

    name: str
    enabled: bool
    layout: Layout


@dataclass(frozen=True, slots=True)
class Paths:
    """Where a device's objects live under the ``vkms`` configfs directory."""

    vkms: PurePosixPath
    device: str

    @property
    def root(self) -> PurePosixPath:
        return self.vkms / self.device

    def item(self, kind: str, name: str) -> PurePosixPath:
        return self.root / kind / name

    def link(self, kind: str, name: str, group: str, target: str) -> PurePosixPath:
        return self.root / kind / name / group / target

    @property
    def enabled(self) -> PurePosixPath:
        return self.root / "enabled"


def plan_create(spec: DeviceSpec, vkms: PurePosixPath) -> list[Op]:
    """Operations that build ``spec`` from nothing and enable it."""
    return plan_build(spec.name, spec.layout, vkms)


def plan_rebuild(observed: ObservedDevice, vkms: PurePosixPath) -> list[Op]:
    """Operations that build a device as it was observed (any layout, enabled only if it was): how a
    failed ``up --replace`` puts back the device it tore down."""
    return plan_build(observed.name, observed.layout, vkms, enable=observed.enabled)


def plan_build(name: str, layout: Layout, vkms: PurePosixPath, *, enable: bool = True) -> list[Op]:
    p = Paths(vkms, name)
    ops: list[Op] = [Mkdir(p.root)]
    for plane in layout.planes:
        ops.append(Mkdir(p.item("planes", plane.name)))
        ops.append(WriteAttr(p.item("planes", plane.name) / "type", str(int(plane.type))))
    for crtc in layout.crtcs:
        ops.append(Mkdir(p.item("crtcs", crtc.name)))
        ops.append(WriteAttr(p.item("crtcs", crtc.name) / "writeback", str(int(crtc.writeback))))
    for enc in layout.encoders:
        ops.append(Mkdir(p.item("encoders", enc.name)))
    for conn in layout.connectors:
        ops.append(Mkdir(p.item("connectors", conn.name)))
        ops.append(WriteAttr(p.item("connectors", conn.name) / "status", str(int(conn.status))))
    ops.extend(_links(layout, p))
    if enable:
        ops.append(WriteAttr(p.enabled, "1", verify=True))
    return ops


def _links(layout: Layout, p: Paths) -> list[Op]:
    ops: list[Op] = []
    for plane in layout.planes:
        for c in plane.possible_crtcs:
            ops.append(Symlink(p.link("planes", plane.name, "possible_crtcs", c), p.item("crtcs", c)))
    for enc in layout.encoders:
        for c in enc.possible_crtcs:
            ops.append(Symlink(p.link("encoders", enc.name, "possible_crtcs", c), p.item("crtcs", c)))
    for conn in layout.connectors:
        for e in conn.possible_encoders:
            ops.append(Symlink(p.link("connectors", conn.name, "possible_encoders", e), p.item("encoders", e)))
    return ops


def plan_teardown(observed: ObservedDevice, vkms: PurePosixPath, *, only: Sequence[PurePosixPath] | None = None) -> list[Op]:
    """Operations that remove ``observed`` in the kernel's order.

    With ``only`` (paths a previous run created), links and directories not in it are left alone,
    and ``enabled`` is written only if that path is in it: "remove exactly what was made".
    """
    p = Paths(vkms, observed.name)
    keep = None if only is None else set(only)

    def mine(path: PurePosixPath) -> bool:
        return keep is None or path in keep

    ops: list[Op] = []
    if observed.enabled and mine(p.enabled):
        ops.append(WriteAttr(p.enabled, "0", verify=True))
    links = [op for op in _links(observed.layout, p) if isinstance(op, Symlink)]
    ops.extend(Unlink(op.link) for op in reversed(links) if mine(op.link))
    lay = observed.layout
    for kind, names in (
        ("connectors", [o.name for o in lay.connectors]),
        ("encoders", [o.name for o in lay.encoders]),
        ("crtcs", [o.name for o in lay.crtcs]),
        ("planes", [o.name for o in lay.planes]),
    ):
        ops.extend(Rmdir(p.item(kind, n)) for n in reversed(names) if mine(p.item(kind, n)))
    if mine(p.root):
        ops.append(Rmdir(p.root))
    return ops


def plan_up(
    spec: DeviceSpec, observed: ObservedDevice | None, vkms: PurePosixPath, *, replace: bool = False
) -> list[Op]:
    """Operations that make configfs hold ``spec``, enabled; [] if it already does.

    A device of the same name with a different layout is refused (DeviceStateError) unless
    ``replace``, in which case it is torn down first.
    """
    if observed is None:
        return plan_create(spec, vkms)
    diffs = spec.layout.differences(observed.layout)
    if diffs:
        if not replace:
            raise DeviceStateError(
                f"VKMS device {spec.name!r} already exists with a different layout ({'; '.join(diffs[:4])}"
                + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
                + ")",
                hint="run `vkmsremote down` first, or `vkmsremote up --replace` to rebuild it",
            )
        return plan_teardown(observed, vkms) + plan_create(spec, vkms)
    p = Paths(vkms, spec.name)
    ops: list[Op] = []
    current = {k.name: k.status for k in observed.layout.connectors}
    for conn in spec.connectors:
        if current.get(conn.name) != conn.status:
            ops.append(WriteAttr(p.item("connectors", conn.name) / "status", str(int(conn.status))))
    if not observed.enabled:
        ops.append(WriteAttr(p.enabled, "1", verify=True))
    return ops

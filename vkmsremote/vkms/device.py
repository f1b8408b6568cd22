"""The lifecycle: ``up`` (create + enable + find the card), ``down``, ``status``, ``hotplug``.

``up`` returns an :class:`UpResult` whose ``device`` (a :class:`DeviceMapping`) says which card, DRM
connector, connector id and CRTC each configfs connector became; later steps (serving VNC) start from
that object once the device is ready.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import replace as evolve
from pathlib import Path, PurePosixPath
from typing import Any

from vkmsremote.desktop.clients import DrmClient, drm_master
from vkmsremote.errors import (
    DeviceStateError,
    PermissionDeniedError,
    UsageError,
    VkmsRemoteError,
    VkmsUnavailableError,
)

from .apply import Executor, Journal, apply, rollback
from .configfs import ROOT_HINT, UNAVAILABLE_HINT, Configfs
from .mapping import (
    DRM_MODE_CONNECTOR_VIRTUAL,
    DRM_MODE_CONNECTOR_WRITEBACK,
    ConnectorMatch,
    DrmConnector,
    DrmView,
    match,
)
from .module import default_device_card, legacy_note, load_vkms, module_state
from .plan import (
    Mkdir,
    ObservedDevice,
    Op,
    Rmdir,
    Symlink,
    Unlink,
    WriteAttr,
    as_shell,
    plan_rebuild,
    plan_teardown,
    plan_up,
)
from .profile import load_profile
from .spec import ConnectorSpec, ConnectorStatus, DeviceSpec, Layout
from .state import StateStore, new_record
from .udev import DrmEvents

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 20.0
SYSFS = Path("/sys")


# --- what the caller gets ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectorMapping:
    """One configfs connector and what DRM made of it (DRM fields are None without a card)."""

    name: str  # configfs name, "XR-0"
    device: str  # configfs device name
    configfs_status: str  # "connected" | "disconnected" | "unknown" (what was written)
    drm_name: str | None = None  # "Virtual-1"
    connector_id: int | None = None
    drm_status: str | None = None  # what DRM reports after a probe
    crtc_id: int | None = None  # the CRTC that drives it (first possible one)
    possible_crtc_ids: tuple[int, ...] = ()
    encoder_ids: tuple[int, ...] = ()
    modes: tuple[str, ...] = ()
    preferred_mode: str | None = None
    sysfs: str | None = None  # /sys/class/drm/card0-Virtual-1
    lit: bool | None = None  # a CRTC drives it (sysfs ``enabled``): a compositor or modetest lights it

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "configfs_status": self.configfs_status,
            "drm_name": self.drm_name,
            "connector_id": self.connector_id,
            "drm_status": self.drm_status,
            "crtc_id": self.crtc_id,
            "possible_crtc_ids": list(self.possible_crtc_ids),
            "encoder_ids": list(self.encoder_ids),
            "preferred_mode": self.preferred_mode,
            "modes": list(self.modes),
            "sysfs": self.sysfs,
            "lit": self.lit,
        }


@dataclass(frozen=True, slots=True)
class DeviceMapping:
    """A VKMS device seen from configfs and from DRM, side by side."""

    name: str
    configfs_path: str
    enabled: bool
    observed: ObservedDevice = field(repr=False)
    card: str | None = None  # "/dev/dri/card0"
    card_sysfs: str | None = None  # "/sys/class/drm/card0"
    connectors: tuple[ConnectorMapping, ...] = ()
    drm_source: str | None = None  # "ioctl" | "sysfs" | None (no card)
    managed: bool = False  # a vkmsremote state record exists for it
    note: str = ""  # why DRM fields are missing, if they are
    master: DrmClient | None = None  # the process holding the card as DRM master (compositor, X server)

    def connector(self, name: str) -> ConnectorMapping:
        for c in self.connectors:
            if c.name == name:
                return c
        raise UsageError(
            f"device {self.name!r} has no connector {name!r}",
            hint=f"its connectors: {', '.join(c.name for c in self.connectors)}",
        )

    def to_json(self) -> dict[str, Any]:
        lay = self.observed.layout
        return {
            "name": self.name,
            "configfs": {
                "path": self.configfs_path,
                "enabled": self.enabled,
                "planes": [{"name": p.name, "type": p.type.name.lower(), "possible_crtcs": list(p.possible_crtcs)}
                           for p in lay.planes],
                "crtcs": [{"name": c.name, "writeback": c.writeback} for c in lay.crtcs],
                "encoders": [{"name": e.name, "possible_crtcs": list(e.possible_crtcs)} for e in lay.encoders],
                "connectors": [{"name": k.name, "status": k.status.name.lower(),
                                "possible_encoders": list(k.possible_encoders)} for k in lay.connectors],
            },
            "card": self.card,
            "card_sysfs": self.card_sysfs,
            "drm_source": self.drm_source,
            "managed": self.managed,
            "note": self.note,
            "drm_master": None if self.master is None else {
                "pid": self.master.pid, "command": self.master.command, "uid": self.master.uid,
                "source": self.master.source},
            "connectors": [c.to_json() for c in self.connectors],
        }


@dataclass(frozen=True, slots=True)
class UpResult:
    device: DeviceMapping
    changed: bool
    """False when configfs already held the profile, enabled (``up`` did nothing)."""
    applied: tuple[Op, ...] = ()


# --- helpers ----------------------------------------------------------------------------------------------


def _require_root(cfs: Configfs, action: str) -> None:
    if cfs.is_system and os.geteuid() != 0:
        raise PermissionDeniedError(f"vkmsremote {action} changes {cfs.vkms} and needs root", hint=ROOT_HINT)


def _find_card(name: str, sysfs: Path) -> tuple[str, str] | None:
    """(/dev/dri/cardN, /sys/class/drm/cardN) of the configfs device ``name``, by its faux parent.

    A configfs VKMS device is the faux device /sys/devices/faux/<name>; its card is the drm child
    named cardN (VM-NOTES; vkms_create() -> faux_device_create(dev_name)).
    """
    drm = sysfs / "devices" / "faux" / name / "drm"
    try:
        cards = sorted(e.name for e in os.scandir(drm) if e.name.startswith("card") and e.name[4:].isdigit())
    except OSError:
        return None
    if not cards:
        return None
    return f"/dev/dri/{cards[0]}", str(sysfs / "class" / "drm" / cards[0])


def _status_name(s: ConnectorStatus) -> str:
    return s.name.lower()


def read_drm_view(card_dev: str, card_sysfs: str) -> tuple[DrmView, str]:
    """The card's connectors, encoders and CRTCs via DRM ioctls; sysfs when the card cannot be opened."""
    try:
        from vkmsremote.drm.card import Card
        from vkmsremote.drm.resources import Resources
    except ImportError:  # pragma: no cover - the DRM package is part of vkmsremote
        return _sysfs_view(card_sysfs), "sysfs"
    try:
        with Card.open(card_dev, atomic=True, writeback=True) as card:
            res = Resources.fetch(card, probe=True)
    except PermissionDeniedError:
        return _sysfs_view(card_sysfs), "sysfs"
    wb_encoders = frozenset(e for c in res.connectors if c.is_writeback for e in c.encoder_ids)
    conns = tuple(
        DrmConnector(
            id=c.id, name=c.name, type=c.type, status=c.status.name.lower(), encoder_ids=c.encoder_ids,
            modes=tuple(str(m) for m in c.modes),
            preferred_mode=str(c.preferred_mode) if c.preferred_mode is not None else None,
        )
        for c in res.connectors
    )
    view = DrmView(conns, res.crtc_ids, {e.id: e.possible_crtcs for e in res.encoders}, wb_encoders)
    return view, "ioctl"


def _sysfs_view(card_sysfs: str) -> DrmView:
    """Connectors as /sys/class/drm/cardN-<Type>-<n>/ shows them: id, status, mode names."""
    base = Path(card_sysfs)
    conns = []
    for entry in sorted(base.parent.glob(base.name + "-*")):
        kind = entry.name[len(base.name) + 1 :].rsplit("-", 1)[0]
        ctype = {"Virtual": DRM_MODE_CONNECTOR_VIRTUAL, "Writeback": DRM_MODE_CONNECTOR_WRITEBACK}.get(kind, 0)
        try:
            cid = int((entry / "connector_id").read_text().strip())
            status = (entry / "status").read_text().strip()
            modes = tuple((entry / "modes").read_text().split())
        except (OSError, ValueError):
            continue
        conns.append(DrmConnector(cid, entry.name[len(base.name) + 1 :], ctype, status, (), modes,
                                  modes[0] if modes else None))
    return DrmView(tuple(conns), (), {}, frozenset(), complete=False)


def _mapping(cfs: Configfs, observed: ObservedDevice, store: StateStore, *, sysfs: Path = SYSFS) -> DeviceMapping:
    """Configfs and DRM views of ``observed``, matched connector by connector."""
    plain = DeviceMapping(
        name=observed.name, configfs_path=str(cfs.vkms / observed.name), enabled=observed.enabled,
        observed=observed, managed=store.load(observed.name) is not None,
        connectors=tuple(
            ConnectorMapping(k.name, observed.name, _status_name(k.status)) for k in observed.layout.connectors
        ),
    )
    if cfs.fake:
        return evolve(plain, note=f"configfs root {cfs.root} is a fake: no DRM device")
    if not observed.enabled:
        return evolve(plain, note="not enabled: no DRM device")
    found = _find_card(observed.name, sysfs)
    if found is None:
        return evolve(plain, note="enabled but no DRM card found")
    card_dev, card_sysfs = found
    view, source = read_drm_view(card_dev, card_sysfs)
    by_name: dict[str, ConnectorMatch] = {m.name: m for m in match(observed.layout, view)}
    conns = []
    for c in plain.connectors:
        m = by_name[c.name]
        conns.append(evolve(
            c, drm_name=m.drm.name, connector_id=m.drm.id, drm_status=m.drm.status,
            crtc_id=m.crtc_ids[0] if m.crtc_ids else None, possible_crtc_ids=m.crtc_ids,
            encoder_ids=m.encoder_ids, modes=m.drm.modes, preferred_mode=m.drm.preferred_mode,
            sysfs=f"{card_sysfs}-{m.drm.name}", lit=_lit(f"{card_sysfs}-{m.drm.name}"),
        ))
    note = "" if source == "ioctl" else f"could not open {card_dev}: DRM view from sysfs (no CRTC ids)"
    return evolve(plain, card=card_dev, card_sysfs=card_sysfs, connectors=tuple(conns), drm_source=source,
                   note=note, master=drm_master(card_dev))


def _lit(connector_sysfs: str) -> bool | None:
    try:
        return (Path(connector_sysfs) / "enabled").read_text().strip() == "enabled"
    except OSError:
        return None


def _wait_for_card(cfs: Configfs, name: str, events: DrmEvents, timeout: float) -> tuple[str, str]:
    def ready() -> tuple[str, str] | None:
        found = _find_card(name, SYSFS)
        return found if found is not None and os.path.exists(found[0]) else None

    return events.wait_until(
        ready, timeout, f"the DRM card of VKMS device {name!r}",
        hint="`dmesg | tail` may show why VKMS did not create it; raise --timeout on a slow machine",
    )


# --- up ---------------------------------------------------------------------------------------------------


def _may_change(op: Op) -> bool:
    """Whether this process may carry out ``op`` as far as permissions go (root always may)."""
    target = op.path.parent if isinstance(op, Mkdir | Rmdir) else op.link.parent if isinstance(op, Symlink) else op.path
    return os.access(target, os.W_OK)


def preview_up(spec: DeviceSpec, *, configfs: Configfs | None = None, replace: bool = False) -> str:
    """The shell commands ``up`` would run now (``--dry-run``); changes nothing."""
    cfs = configfs or Configfs()
    observed = cfs.observe(spec.name) if cfs.available() else None
    ops = plan_up(spec, observed, PurePosixPath(cfs.vkms), replace=replace)
    lines = "".join(step + "\n" for step in cfs.missing_steps()) + as_shell(ops)
    return lines or f"# nothing to do: {cfs.vkms / spec.name} already matches {spec.source or 'the profile'}\n"


def up(
    profile: DeviceSpec | str | Path | None = None,
    *,
    configfs: Configfs | None = None,
    state: StateStore | None = None,
    replace: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    executor: Executor | None = None,
    after_apply: Callable[[DeviceMapping], None] | None = None,
    default_device: bool = False,
) -> UpResult:
    """Make the profile's device exist and be enabled; return the configfs <-> DRM mapping.

    Idempotent: if configfs already holds the same layout, enabled, nothing is written (connector
    statuses that differ from the profile are written back). Any failure after the first change
    rolls back what this call changed, then re-raises. ``executor`` replaces the configfs writer
    (tests inject failures with it); ``after_apply`` runs on the ready mapping inside the rollback
    scope, so a later step that fails (e.g. starting a server) also undoes the device.
    """
    spec = profile if isinstance(profile, DeviceSpec) else load_profile(profile)
    cfs = configfs or Configfs()
    store = state or StateStore(configfs=cfs)
    _require_root(cfs, "up")
    if default_device:
        return _up_default_device(spec, timeout)
    try:
        cfs.ensure_available()
    except VkmsUnavailableError:
        mod = module_state()
        if not cfs.is_system or not mod.loaded or mod.has_configfs:
            raise
        log.warning("VKMS here has no configfs (before Linux 6.19): using its default device")
        return _up_default_device(spec, timeout)
    run = executor or cfs
    observed = cfs.observe(spec.name)
    previous = store.load(spec.name)
    root = PurePosixPath(cfs.vkms / spec.name)
    # A record still "in progress" means an earlier up or down of ours died midway (kill -9, power loss
    # of the process): the device it left is ours and half-made, so it is rebuilt, not refused.
    repairing = observed is not None and previous is not None and previous.in_progress and root in previous.created
    ops = plan_up(spec, observed, PurePosixPath(cfs.vkms), replace=replace or repairing)
    enables = any(isinstance(op, WriteAttr) and op.path.name == "enabled" and op.value == "1" for op in ops)
    journal = Journal()
    saved = False
    planned = Journal(list(ops)).created()
    if planned and _may_change(ops[0]):  # write-ahead: what may exist if this process dies midway
        # (a first operation that is not permitted fails before any change, with its own clear error)
        keep = list(previous.created) if previous is not None and root not in planned else []
        store.save(new_record(spec.name, spec.source, keep + [p for p in planned if p not in keep], cfs,
                              in_progress=True))
        saved = True
    events = DrmEvents() if enables and not cfs.fake else None
    try:
        apply(ops, run, journal)
        if events is not None:
            _wait_for_card(cfs, spec.name, events, timeout)
        now = cfs.observe(spec.name)
        if now is None or not now.enabled:
            raise DeviceStateError(f"{root} is not enabled after up", hint="`dmesg | tail` may say why")
        created = journal.created()
        if created:
            keep = list(previous.created) if previous is not None and root not in created else []
            store.save(new_record(spec.name, spec.source, keep + [p for p in created if p not in keep], cfs))
            saved = True
        elif previous is not None and previous.in_progress:  # adopted what a dead run had finished
            store.save(new_record(spec.name, previous.profile, list(previous.created), cfs))
        mapping = _mapping(cfs, now, store)
        if cfs.is_system and (mapping.card is None or any(c.connector_id is None for c in mapping.connectors)):
            raise DeviceStateError(
                f"VKMS device {spec.name!r} is enabled but its DRM connectors were not found ({mapping.note})",
                hint="`dmesg | tail` may say why",
            )
        if after_apply is not None:
            after_apply(mapping)
    except BaseException as exc:
        tore_down = observed is not None and any(_removes(op) for op in journal.done)
        failures = rollback(journal, run)
        if tore_down and not failures:  # --replace (or a repair) took the old device apart: put it back
            assert observed is not None
            failures = _restore(observed, cfs, run)
        if cfs.observe(spec.name) is None:
            store.remove(spec.name)
        elif saved and not failures:
            store.save(previous) if previous is not None else store.remove(spec.name)
        # (if undoing failed, the in-progress record stays: down, or the next up, finishes the job)
        if failures and isinstance(exc, VkmsRemoteError):
            raise DeviceStateError(
                f"{exc}; undoing the partial device then failed too: {failures[0]}",
                hint=f"remove what is left with `vkmsremote down --force {spec.name}`",
            ) from exc
        raise
    finally:
        if events is not None:
            events.close()
    return UpResult(mapping, changed=bool(ops), applied=tuple(journal.done))


def _up_default_device(spec: DeviceSpec, timeout: float) -> UpResult:
    """The pre-6.19 path: VKMS's one default device (loaded now if need be), its single Virtual connector
    mapped to the profile's first connector (XR-0). Nothing is made in configfs."""
    if default_device_card() is None:
        state = module_state()
        if state.loaded:
            raise DeviceStateError(
                "the vkms module is loaded without its default device (create_default_dev=0)",
                hint="reload it with one: `rmmod vkms && modprobe vkms`, or use configfs (drop --default-device)")
        with DrmEvents() as events:
            load_vkms(default_device=True)
            events.wait_until(default_device_card, timeout, "the DRM card of VKMS's default device",
                              hint="`dmesg | tail` may show why VKMS did not create it")
    mapping = default_device_mapping(spec.layout.connectors[0].name)
    assert mapping is not None
    if mapping.card is None or not mapping.connectors or mapping.connectors[0].connector_id is None:
        raise DeviceStateError(f"VKMS's default device has no Virtual connector ({mapping.note})",
                               hint="`dmesg | tail` may say why")
    return UpResult(mapping, changed=False)


def default_device_mapping(connector: str = "XR-0") -> DeviceMapping | None:
    """VKMS's default device as a DeviceMapping (``connector`` names its single Virtual connector), or None."""
    found = default_device_card()
    if found is None:
        return None
    card_dev, card_sysfs = found
    view, source = read_drm_view(card_dev, card_sysfs)
    virtual = [c for c in view.connectors if c.type == DRM_MODE_CONNECTOR_VIRTUAL]
    layout = Layout((), (), (), (ConnectorSpec(connector, ()),))
    plain = DeviceMapping(name="vkms (default device)", configfs_path="-", enabled=True,
                          observed=ObservedDevice("vkms", True, layout), card=card_dev, card_sysfs=card_sysfs,
                          drm_source=source, note=legacy_note(module_state()), master=drm_master(card_dev))
    if not virtual:
        return evolve(plain, connectors=(ConnectorMapping(connector, plain.name, "connected"),))
    d = virtual[0]
    crtcs = tuple(crtc for i, crtc in enumerate(view.crtc_ids)
                  if any(view.encoders.get(e, 0) >> i & 1 for e in d.encoder_ids))
    c = ConnectorMapping(connector, plain.name, "connected", drm_name=d.name, connector_id=d.id, drm_status=d.status,
                         crtc_id=crtcs[0] if crtcs else None, possible_crtc_ids=crtcs, encoder_ids=d.encoder_ids,
                         modes=d.modes, preferred_mode=d.preferred_mode, sysfs=f"{card_sysfs}-{d.name}",
                         lit=_lit(f"{card_sysfs}-{d.name}"))
    return evolve(plain, connectors=(c,))


def _removes(op: Op) -> bool:
    return isinstance(op, Rmdir | Unlink) or (
        isinstance(op, WriteAttr) and op.path.name == "enabled" and op.value == "0")


def _restore(observed: ObservedDevice, cfs: Configfs, run: Executor) -> list[VkmsRemoteError]:
    """Rebuild ``observed`` (as it was before this ``up``) after the rollback; returns what failed."""
    vkms = PurePosixPath(cfs.vkms)
    now = cfs.observe(observed.name)
    ops = (plan_teardown(now, vkms) if now is not None else []) + plan_rebuild(observed, vkms)
    try:
        apply(ops, run)
    except VkmsRemoteError as e:
        log.error("putting back VKMS device %s as it was failed: %s", observed.name, e)
        return [e]
    log.warning("put VKMS device %s back as it was before this up", observed.name)
    return []


# --- down -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DownResult:
    device: str
    applied: tuple[Op, ...]
    left_alone: bool = False  # nothing of it was ours


def plan_down(
    device: str | None = None, *, configfs: Configfs | None = None, state: StateStore | None = None,
    force: bool = False,
) -> list[tuple[str, list[Op]]]:
    """Per device: the operations ``down`` would run. Pure with respect to configfs (reads only)."""
    cfs = configfs or Configfs()
    store = state or StateStore(configfs=cfs)
    if device is not None:
        names = [device]
    else:
        names = store.devices()
        if force:
            names += [n for n in cfs.device_names() if n not in names]
    out: list[tuple[str, list[Op]]] = []
    for name in names:
        record = store.load(name)
        observed = cfs.observe(name)
        if observed is None:
            if device is not None and record is None:
                raise UsageError(
                    f"no VKMS device {name!r} in {cfs.vkms}",
                    hint=f"existing devices: {', '.join(cfs.device_names()) or 'none'}",
                )
            out.append((name, []))
            continue
        if record is None and not force:
            raise DeviceStateError(
                f"VKMS device {name!r} was not made by vkmsremote up (no record in {store.dir})",
                hint=f"remove it anyway with `vkmsremote down --force {name}`",
            )
        only = None if force or record is None else list(record.created)
        out.append((name, plan_teardown(observed, PurePosixPath(cfs.vkms), only=only)))
    return out


def down(
    device: str | None = None, *, configfs: Configfs | None = None, state: StateStore | None = None,
    force: bool = False, timeout: float = DEFAULT_TIMEOUT,
) -> list[DownResult]:
    """Remove what ``up`` made (all recorded devices, or ``device``), in the kernel's order.

    With ``force``, remove the whole device even without a record (or every device, with none named).
    """
    cfs = configfs or Configfs()
    store = state or StateStore(configfs=cfs)
    _require_root(cfs, "down")
    plans = plan_down(device, configfs=cfs, state=store, force=force)
    results = []
    for name, ops in plans:
        record = store.load(name)
        if ops and record is not None and not record.in_progress:
            # if this process dies midway, the next up rebuilds the half-removed device (see up)
            store.save(evolve(record, in_progress=True))
        journal = apply(ops, cfs)
        if not cfs.fake:
            deadline = time.monotonic() + timeout
            while _find_card(name, SYSFS) is not None and any(
                isinstance(op, WriteAttr) and op.path.name == "enabled" for op in ops
            ):
                if time.monotonic() > deadline:
                    raise DeviceStateError(f"the DRM card of {name!r} is still there after disabling it",
                                           hint="`dmesg | tail` may say why")
                time.sleep(0.05)
        store.remove(name)
        results.append(DownResult(name, tuple(journal.done), left_alone=not ops))
    return results


# --- status -----------------------------------------------------------------------------------------------


def status(
    device: str | None = None, *, configfs: Configfs | None = None, state: StateStore | None = None
) -> list[DeviceMapping]:
    """Every VKMS device (or ``device``) with its configfs and DRM views."""
    cfs = configfs or Configfs()
    store = state or StateStore(configfs=cfs)
    # VKMS's default device (the only one before 6.19, optional since) is listed after configfs's
    legacy = [m for m in (default_device_mapping(),) if m is not None] if cfs.is_system and device is None else []
    if not cfs.available():
        if legacy:
            return legacy
        raise VkmsUnavailableError(f"no VKMS configfs directory at {cfs.vkms}", hint=UNAVAILABLE_HINT)
    names = cfs.device_names()
    if device is not None:
        if device not in names:
            raise UsageError(f"no VKMS device {device!r} in {cfs.vkms}",
                             hint=f"existing devices: {', '.join(names) or 'none'}; create one with `vkmsremote up`")
        names = [device]
    out = []
    for name in names:
        observed = cfs.observe(name)
        if observed is not None:
            out.append(_mapping(cfs, observed, store))
    return out + legacy


# --- hotplug ----------------------------------------------------------------------------------------------


def find_connector(cfs: Configfs, connector: str, device: str | None = None) -> tuple[str, str]:
    """(device, connector) for a configfs connector name; UsageError if unknown or ambiguous."""
    pairs = list(cfs.iter_connectors())
    hits = [(d, k) for d, k in pairs if k == connector and (device is None or d == device)]
    if not hits:
        known = ", ".join(f"{k} ({d})" for d, k in pairs) or "none: create one with `vkmsremote up`"
        where = f"device {device!r}" if device else "any VKMS device"
        raise UsageError(f"no connector named {connector!r} in {where}", hint=f"known connectors: {known}")
    if len(hits) > 1:
        raise UsageError(
            f"connector {connector!r} exists in several devices ({', '.join(d for d, _ in hits)})",
            hint="name one with --device",
        )
    return hits[0]


def hotplug(
    connector: str, connected: bool, *, device: str | None = None, configfs: Configfs | None = None,
    state: StateStore | None = None, timeout: float = DEFAULT_TIMEOUT,
) -> ConnectorMapping:
    """Write the connector's configfs ``status`` and, if the device is enabled, wait for the udev
    ``change`` event on its card and check that DRM reports the new status."""
    cfs = configfs or Configfs()
    store = state or StateStore(configfs=cfs)
    dev, name = find_connector(cfs, connector, device)
    _require_root(cfs, "hotplug")
    want = ConnectorStatus.CONNECTED if connected else ConnectorStatus.DISCONNECTED
    observed = cfs.observe(dev)
    assert observed is not None
    op = WriteAttr(PurePosixPath(cfs.connector_status_path(dev, name)), str(int(want)), verify=True)
    if cfs.fake or not observed.enabled:
        cfs.run(op)
    else:
        found = _find_card(dev, SYSFS)
        if found is None:
            raise DeviceStateError(f"VKMS device {dev!r} is enabled but has no DRM card", hint="`dmesg | tail`")
        with DrmEvents() as events:
            cfs.run(op)
            events.wait_for_change(
                Path(found[1]).name, timeout, f"{name} on {found[0]}",
                hint="is systemd-udevd running? (without it, kernel events are used)",
            )
    now = cfs.observe(dev)
    assert now is not None
    mapping = _mapping(cfs, now, store).connector(name)
    if mapping.drm_status is not None and mapping.drm_status != _status_name(want):
        raise DeviceStateError(
            f"{name} ({mapping.drm_name}) reports {mapping.drm_status} after writing {_status_name(want)}",
            hint="`dmesg | tail` may say why",
        )
    return mapping

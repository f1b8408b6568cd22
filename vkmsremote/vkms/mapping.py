"""Which DRM object is which configfs object: XR-0 <-> Virtual-N, connector id, CRTC id, modes.

The kernel builds the DRM device from its per-kind lists in creation order (vkms_output_init(),
Linux 7.3 drivers/gpu/drm/vkms/vkms_output.c): planes, then CRTCs (each with its writeback connector
and encoder if ``writeback`` is set), then encoders, then connectors. DRM object ids are handed out
lowest-free on a fresh device, so within one device

  * the i-th configfs CRTC is the CRTC with index i (GETRESOURCES order);
  * the i-th configfs encoder is the i-th non-writeback encoder by id;
  * the i-th configfs connector is the i-th Virtual connector by id (its Virtual-N number is global
    across DRM devices, so it is read from the kernel, never computed).

configfs lists item directories in creation order, so the configfs side's order is observable. The
match is then cross-checked link by link: the encoders each DRM connector may use must be the ones
its configfs directory links to, and each encoder's possible CRTC mask must equal its configfs links.
A mismatch raises DeviceStateError instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass

from vkmsremote.errors import DeviceStateError

from .spec import Layout

DRM_MODE_CONNECTOR_VIRTUAL = 15
DRM_MODE_CONNECTOR_WRITEBACK = 18


@dataclass(frozen=True, slots=True)
class DrmConnector:
    """What the mapping needs of a DRM connector (from GETCONNECTOR or sysfs)."""

    id: int
    name: str
    type: int
    status: str  # "connected" | "disconnected" | "unknown"
    encoder_ids: tuple[int, ...]
    modes: tuple[str, ...]
    preferred_mode: str | None = None


@dataclass(frozen=True, slots=True)
class DrmView:
    """One snapshot of a card, reduced to what the mapping needs.

    ``crtc_ids`` is in index order; ``encoders`` maps id -> possible CRTC bitmask;
    ``writeback_encoder_ids`` are the encoders of writeback connectors (left out of the match).
    ``complete`` is False when only sysfs could be read (no encoders or CRTCs known).
    """

    connectors: tuple[DrmConnector, ...]
    crtc_ids: tuple[int, ...]
    encoders: dict[int, int]
    writeback_encoder_ids: frozenset[int]
    complete: bool = True


@dataclass(frozen=True, slots=True)
class ConnectorMatch:
    name: str
    drm: DrmConnector
    encoder_ids: tuple[int, ...]
    crtc_ids: tuple[int, ...]
    """The CRTCs this connector can be driven by (through its encoders), in index order."""


def match(layout: Layout, view: DrmView) -> list[ConnectorMatch]:
    """Pair each configfs connector (in creation order) with its DRM connector; cross-check links."""
    virtual = sorted((c for c in view.connectors if c.type == DRM_MODE_CONNECTOR_VIRTUAL), key=lambda c: c.id)
    if len(virtual) != len(layout.connectors):
        raise DeviceStateError(
            f"configfs has {len(layout.connectors)} connector(s) but the card shows {len(virtual)} Virtual connector(s)",
            hint="the device may be half torn down; try `vkmsremote up --replace`",
        )
    if not view.complete:
        return [ConnectorMatch(k.name, d, (), ()) for k, d in zip(layout.connectors, virtual, strict=True)]

    encoder_ids = sorted(e for e in view.encoders if e not in view.writeback_encoder_ids)
    if len(encoder_ids) != len(layout.encoders) or len(view.crtc_ids) != len(layout.crtcs):
        raise DeviceStateError(
            f"configfs has {len(layout.encoders)} encoder(s) and {len(layout.crtcs)} CRTC(s), the card "
            f"{len(encoder_ids)} and {len(view.crtc_ids)}",
            hint="is another device's card being read? check `vkmsremote status`",
        )
    enc_of = {e.name: encoder_ids[i] for i, e in enumerate(layout.encoders)}
    crtc_index = {c.name: i for i, c in enumerate(layout.crtcs)}
    for e in layout.encoders:
        want = sum(1 << crtc_index[c] for c in e.possible_crtcs)
        got = view.encoders[enc_of[e.name]]
        if got != want:
            raise DeviceStateError(
                f"encoder {e.name} (DRM id {enc_of[e.name]}) can drive CRTC mask {got:#x}, configfs says {want:#x}",
                hint="the configfs <-> DRM mapping is ambiguous; recreate the device with `vkmsremote up --replace`",
            )
    out: list[ConnectorMatch] = []
    for k, d in zip(layout.connectors, virtual, strict=True):
        want_enc = tuple(sorted(enc_of[e] for e in k.possible_encoders))
        if tuple(sorted(d.encoder_ids)) != want_enc:
            raise DeviceStateError(
                f"connector {k.name} paired with {d.name} (id {d.id}), whose encoders are {sorted(d.encoder_ids)}, "
                f"not {list(want_enc)} as configfs links",
                hint="the configfs <-> DRM mapping is ambiguous; recreate the device with `vkmsremote up --replace`",
            )
        mask = 0
        for eid in want_enc:
            mask |= view.encoders[eid]
        crtcs = tuple(cid for i, cid in enumerate(view.crtc_ids) if mask & (1 << i))
        out.append(ConnectorMatch(k.name, d, want_enc, crtcs))
    return out

"""Where the CRTC that ``vkmsremote serve --source crtc`` reads is: found at start, and found again when its card
went away (its VKMS device disabled and enabled again, or removed and made again, by someone else).

A configfs VKMS device comes back as a new DRM device: another card node when the old minor is still held
open (by a compositor that has not noticed yet, or by anyone), and a Virtual-N name and object ids of the
kernel's choosing. So what is followed is the configfs name: the device (its card is the faux device named
after it) and the connector (XR-0), paired with its DRM connector by vkmsremote.vkms.mapping. A card that
belongs to no configfs device (a real GPU, VKMS's default device) is followed by its path and the DRM
connector or CRTC given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vkmsremote.capture.crtc import CrtcLocation, Locator
from vkmsremote.drm.card import Card, card_for_vkms_device, list_cards
from vkmsremote.drm.resources import Resources
from vkmsremote.errors import DeviceStateError, UsageError
from vkmsremote.vkms.configfs import Configfs
from vkmsremote.vkms.device import read_drm_view
from vkmsremote.vkms.mapping import ConnectorMatch, match

__all__ = ["ConfigfsConnector", "SameCard", "crtc_locator"]


def _matches(device: str, cfs: Configfs) -> tuple[str, list[ConnectorMatch]] | None:
    """(card node, connector matches) of an enabled configfs device; None while it is absent or disabled."""
    observed = cfs.observe(device)
    if observed is None or not observed.enabled:
        return None
    node = card_for_vkms_device(device)  # DeviceStateError until the card is there
    view, _ = read_drm_view(node.dev_path, f"/sys/class/drm/{node.name}")
    return node.dev_path, match(observed.layout, view)


@dataclass(frozen=True, slots=True)
class ConfigfsConnector:
    """A configfs connector (``device``/``connector``, e.g. vkmsremote/XR-0), found through the mapping: the
    first CRTC it can be driven by, as ``vkmsremote up`` serves it."""

    device: str
    connector: str

    def __call__(self) -> CrtcLocation | None:
        found = _matches(self.device, Configfs())
        if found is None:
            return None
        card_path, matches = found
        m = next((m for m in matches if m.name == self.connector), None)
        if m is None:
            raise DeviceStateError(f"VKMS device {self.device!r} has no connector {self.connector!r} any more")
        if not m.crtc_ids:
            raise DeviceStateError(f"{self.connector} ({m.drm.name}) cannot be driven by any CRTC")
        crtc = m.crtc_ids[0]
        return CrtcLocation(card_path, crtc, f"{self.connector} ({os.path.basename(card_path)} {m.drm.name}, "
                                             f"connector {m.drm.id}, CRTC {crtc})", m.drm.name)


@dataclass(frozen=True, slots=True)
class SameCard:
    """A card that is no configfs device's: its node ``card_path`` opened again, the DRM ``connector`` (name or
    id) or ``crtc_id`` looked up on it again."""

    card_path: str
    connector: int | str | None
    crtc_id: int | None

    def __call__(self) -> CrtcLocation | None:
        if not os.path.exists(self.card_path):
            return None
        if self.connector is None:
            return CrtcLocation(self.card_path, self.crtc_id) if self.crtc_id is not None else None
        with Card.open(self.card_path) as card:
            res = Resources.fetch(card, probe=False)
            conn = res.connector(self.connector)
            crtc = res.crtc_of(conn) or next(iter(res.possible_crtc_ids(conn)), 0)
        if not crtc:
            raise UsageError(f"connector {conn.name} cannot be driven by any CRTC")
        return CrtcLocation(self.card_path, crtc, f"{os.path.basename(self.card_path)} {conn.name} "
                                                  f"(connector {conn.id}, CRTC {crtc})", conn.name)


def _configfs_connector_on(card_path: str, connector: int | str | None, crtc_id: int | None,
                           cfs: Configfs) -> ConfigfsConnector | None:
    """The configfs connector served when reading ``card_path`` (``connector``: its DRM name or id; else the
    one ``crtc_id`` can drive, or the device's only one); None if the card is no configfs device's."""
    real = os.path.realpath(card_path)
    node = next((n for n in list_cards() if os.path.realpath(n.dev_path) == real), None)
    if node is None or node.bus != "faux" or not cfs.available() or node.device_name not in cfs.device_names():
        return None
    found = _matches(node.device_name, cfs)
    if found is None:
        return None
    _, matches = found
    if connector is not None:
        hits = [m for m in matches if connector in (m.drm.name, m.drm.id)]
    elif crtc_id is not None:
        hits = [m for m in matches if crtc_id in m.crtc_ids][:1]
    else:
        hits = matches if len(matches) == 1 else []
    return ConfigfsConnector(node.device_name, hits[0].name) if hits else None


def crtc_locator(card_path: str, connector: int | str | None, crtc_id: int | None) -> Locator:
    """What to follow for ``serve --card card_path [--connector C] [--crtc N]``: a configfs connector when
    ``connector`` is a configfs name (XR-0) or the card is a configfs device's, else the card node itself."""
    cfs = Configfs()
    if isinstance(connector, str) and cfs.available():
        owners = [device for device, name in cfs.iter_connectors() if name == connector]
        if len(owners) > 1:
            raise UsageError(f"connector {connector!r} exists in several VKMS devices ({', '.join(owners)})")
        if owners:
            return ConfigfsConnector(owners[0], connector)
    return _configfs_connector_on(card_path, connector, crtc_id, cfs) or SameCard(card_path, connector, crtc_id)

"""Framebuffer exporters: who turns a framebuffer id into dma-buf fds the reader can map.

GETFB2 hands out buffer handles only to the DRM master or a CAP_SYS_ADMIN process, so the reader does not
always do it itself. A :class:`FramebufferExporter` answers "which buffers back fb N now" with the fb's
metadata, the dma-buf inode of each plane's buffer (its *identity*: exporting the same GEM object again
gives the same dma-buf) and, unless the caller says it already holds buffers of that identity, one fd per
distinct buffer. Two implementations:

- :class:`LocalExporter`: GETFB2 + PRIME on a card fd of this process (root, or DRM master);
- ``vkmsremote.capture.broker.BrokerClient``: the same question asked over a UNIX socket to a small
  privileged process, which passes the fds back with SCM_RIGHTS (the serving process needs no privileges).

A :class:`WritebackExporter` does the same for the buffer a writeback connector wrote a frame into.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from vkmsremote.drm.card import Card
from vkmsremote.drm.framebuffer import (
    NO_HANDLES,
    FramebufferInfo,
    MappedFramebuffer,
    export_planes,
    map_planes,
    prime_export,
)

__all__ = [
    "MAX_PLANES", "NO_HANDLES", "ExportedFramebuffer", "FramebufferExporter", "LocalExporter", "WritebackExporter",
    "export_dumb_framebuffer", "export_framebuffer", "map_exported",
]

MAX_PLANES = 4


@dataclass(frozen=True, slots=True)
class ExportedFramebuffer:
    """A framebuffer as an exporter describes it.

    ``info.handles`` are always zero (handles belong to the exporting fd). ``identity`` holds the dma-buf
    inode of each plane's buffer. ``fds`` is None when the caller already holds buffers of this identity
    (nothing new to map), else one dma-buf fd per distinct buffer, in the order the buffers first appear
    in the planes; the receiver owns them (:func:`map_exported` takes them over).
    """

    info: FramebufferInfo
    identity: tuple[int, ...]
    fds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.identity) != self.info.num_planes:
            raise ValueError(f"{len(self.identity)} buffer identities for {self.info.num_planes} planes")
        if self.fds is not None and len(self.fds) != len(dict.fromkeys(self.identity)):
            raise ValueError(f"{len(self.fds)} fds for {len(dict.fromkeys(self.identity))} distinct buffers")

    def close_fds(self) -> None:
        for fd in self.fds or ():
            os.close(fd)


@runtime_checkable
class FramebufferExporter(Protocol):
    def export(self, fb_id: int, known: tuple[int, ...] | None = None) -> ExportedFramebuffer:
        """Metadata and buffer identity of ``fb_id`` now; fds only if the identity differs from ``known``.

        Raises DrmError (ENOENT once the fb is gone; EACCES if the exporter may not export it)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class WritebackExporter(Protocol):
    async def writeback(self, crtc_id: int, known: tuple[int, ...] | None = None) -> ExportedFramebuffer:
        """Have the CRTC's writeback connector write one frame; the buffer it was written into (fds only if
        its identity differs from ``known``). Raises DeviceStateError while the CRTC is off."""
        ...


def export_framebuffer(card: Card, fb_id: int, known: tuple[int, ...] | None = None) -> ExportedFramebuffer:
    """GETFB2 + PRIME_HANDLE_TO_FD of every plane's buffer on ``card`` (root or DRM master)."""
    info, identity, fds = export_planes(card, fb_id)
    if known is not None and identity == tuple(known):
        for fd in fds:
            os.close(fd)
        return ExportedFramebuffer(info, identity, None)
    return ExportedFramebuffer(info, identity, fds)


class LocalExporter:
    """Exports with this process's own card fd (needs root or DRM master on it)."""

    def __init__(self, card: Card) -> None:
        self.card = card

    def export(self, fb_id: int, known: tuple[int, ...] | None = None) -> ExportedFramebuffer:
        return export_framebuffer(self.card, fb_id, known)

    def close(self) -> None:
        """The card belongs to the caller: nothing to release."""


def map_exported(exported: ExportedFramebuffer) -> MappedFramebuffer:
    """Map every buffer of an export that carries fds (read-only); the mapping owns the fds."""
    if exported.fds is None:
        raise ValueError(f"the export of fb {exported.info.fb_id} carries no fds to map")
    return map_planes(exported.info, exported.identity, exported.fds)


def export_dumb_framebuffer(card: Card, fb_id: int, handle: int, width: int, height: int, pitch: int,
                            pixel_format: int, known: tuple[int, ...] | None = None) -> ExportedFramebuffer:
    """A single-plane buffer of our own (a dumb buffer, e.g. the one writeback writes into) as an export."""
    fd = prime_export(card, handle)
    try:
        identity = (os.fstat(fd).st_ino,)
    except BaseException:
        os.close(fd)
        raise
    info = FramebufferInfo(fb_id=fb_id, width=width, height=height, format=pixel_format, flags=0,
                           handles=NO_HANDLES, pitches=(pitch, 0, 0, 0), offsets=(0, 0, 0, 0),
                           modifiers=(0, 0, 0, 0))
    if known is not None and tuple(known) == identity:
        os.close(fd)
        return ExportedFramebuffer(info, identity, None)
    return ExportedFramebuffer(info, identity, (fd,))

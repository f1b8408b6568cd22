"""Mapped framebuffers by fb id: each buffer is exported and mapped once and reused across page flips.

Buffers come from a :class:`~vkmsremote.capture.exporter.FramebufferExporter` (this process's own card
fd, or the privileged capture broker). Framebuffer ids are reused by the kernel after RMFB (a client may
remove fb 40 and make a new fb 40 between two of our reads), so each use asks the exporter about the id
again, passing the identity (dma-buf inodes) of the buffers already mapped for it: the exporter sends
new fds only when the id now names other buffers, and the stale mapping is dropped (munmap + close).
When a new buffer is mapped, every other cached id is checked the same way, so mappings of removed
framebuffers do not pin their memory.
"""

from __future__ import annotations

import errno
from collections import OrderedDict
from dataclasses import dataclass

from vkmsremote.capture.convert import check_readable
from vkmsremote.capture.exporter import ExportedFramebuffer, FramebufferExporter, map_exported
from vkmsremote.drm.framebuffer import MappedFramebuffer
from vkmsremote.errors import DrmError

DEFAULT_MAX_ENTRIES = 4  # double/triple buffering plus one
GONE_ERRNOS = (errno.ENOENT, errno.EINVAL, errno.EACCES)
"""What an exporter raises for an fb id that no longer exists (or that it will no longer export)."""


@dataclass(slots=True)
class CachedFramebuffer:
    mapped: MappedFramebuffer
    bytes_per_pixel: int


def _same_layout(exported: ExportedFramebuffer, mapped: MappedFramebuffer) -> bool:
    a, b = exported.info, mapped.info
    return (a.width, a.height, a.format, a.pitches, a.offsets, a.modifiers) == (
        b.width, b.height, b.format, b.pitches, b.offsets, b.modifiers)


class FramebufferCache:
    def __init__(self, exporter: FramebufferExporter, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.exporter = exporter
        self.max_entries = max_entries
        self._entries: OrderedDict[int, CachedFramebuffer] = OrderedDict()
        self.maps = 0  # how many times a buffer was exported and mapped (tests, stats)

    def __contains__(self, fb_id: int) -> bool:
        return fb_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def mappings(self) -> list[MappedFramebuffer]:
        """Every buffer mapped now (the consumer tap retires what is no longer here)."""
        return [e.mapped for e in self._entries.values()]

    def get(self, fb_id: int, *, validate: bool = True) -> CachedFramebuffer:
        """The mapping of ``fb_id``; with ``validate``, first ask the exporter whether the id still names
        the same buffers (one round trip; new fds only if it does not)."""
        entry = self._entries.get(fb_id)
        if entry is not None and not validate:
            self._entries.move_to_end(fb_id)
            return entry
        exported = self.exporter.export(fb_id, entry.mapped.identity if entry is not None else None)
        if entry is not None:
            if exported.fds is None and _same_layout(exported, entry.mapped):
                self._entries.move_to_end(fb_id)
                return entry
            self._drop(fb_id)
            if exported.fds is None:  # same buffers, new layout: ask for fds to map afresh
                exported = self.exporter.export(fb_id, None)
        mapped = map_exported(exported)
        try:
            bpp = check_readable(mapped.info)
        except BaseException:
            mapped.close()
            raise
        self.maps += 1
        for other in list(self._entries):
            if not self._still_valid(other, self._entries[other]):
                self._drop(other)
        entry = CachedFramebuffer(mapped, bpp)
        self._entries[fb_id] = entry
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))
        return entry

    def _still_valid(self, fb_id: int, entry: CachedFramebuffer) -> bool:
        try:
            exported = self.exporter.export(fb_id, entry.mapped.identity)
        except DrmError as exc:
            if exc.errno in GONE_ERRNOS:
                return False
            raise
        if exported.fds is not None:  # the id names other buffers now: not ours to keep
            exported.close_fds()
            return False
        return _same_layout(exported, entry.mapped)

    def _drop(self, fb_id: int) -> None:
        entry = self._entries.pop(fb_id)
        entry.mapped.close()

    def close(self) -> None:
        for fb_id in list(self._entries):
            self._drop(fb_id)

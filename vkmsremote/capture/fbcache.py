"""Mapped framebuffers by fb id: each buffer is exported and mapped once and reused across page flips.

Framebuffer ids are reused by the kernel after RMFB (a client may remove fb 40 and make a new fb 40
between two of our reads), so each use checks the id against the dma-buf inode of its buffer
(``validate=True``, GETFB2 + PRIME export + fstat); a mismatch or a vanished id drops the stale mapping
(munmap + close). When a new buffer is mapped, every other cached id is checked the same
way, so mappings of removed framebuffers do not pin their memory.
"""

from __future__ import annotations

import errno
from collections import OrderedDict
from dataclasses import dataclass

from vkmsremote.capture.convert import check_readable
from vkmsremote.drm.card import Card
from vkmsremote.drm.framebuffer import MappedFramebuffer, framebuffer_identity, map_framebuffer
from vkmsremote.errors import DrmError

DEFAULT_MAX_ENTRIES = 4  # double/triple buffering plus one


@dataclass(slots=True)
class CachedFramebuffer:
    mapped: MappedFramebuffer
    bytes_per_pixel: int


class FramebufferCache:
    def __init__(self, card: Card, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.card = card
        self.max_entries = max_entries
        self._entries: OrderedDict[int, CachedFramebuffer] = OrderedDict()
        self.maps = 0  # how many times a buffer was exported and mapped (tests, stats)

    def __contains__(self, fb_id: int) -> bool:
        return fb_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, fb_id: int, *, validate: bool = True) -> CachedFramebuffer:
        """The mapping of ``fb_id``; with ``validate``, first check the id still names the same buffer."""
        entry = self._entries.get(fb_id)
        if entry is not None:
            if not validate or self._still_valid(fb_id, entry):
                self._entries.move_to_end(fb_id)
                return entry
            self._drop(fb_id)
        mapped = map_framebuffer(self.card, fb_id, require_linear=False)
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
            info, identity = framebuffer_identity(self.card, fb_id)
        except DrmError as exc:
            if exc.errno in (errno.ENOENT, errno.EINVAL):
                return False
            raise
        old = entry.mapped.info
        return identity == entry.mapped.identity and (info.width, info.height, info.format, info.pitches,
                                                       info.offsets) == (old.width, old.height, old.format,
                                                                         old.pitches, old.offsets)

    def _drop(self, fb_id: int) -> None:
        entry = self._entries.pop(fb_id)
        entry.mapped.close()

    def close(self) -> None:
        for fb_id in list(self._entries):
            self._drop(fb_id)

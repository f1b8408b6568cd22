"""Failed-authentication blacklist per client address, in the manner of TigerVNC's BlacklistThreshold.

After ``threshold`` failures in a row an address is refused for ``timeout`` seconds; each failure after
that (the first attempt once the block expires) doubles the timeout. A successful login clears the entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_ENTRIES = 4096
"""Addresses remembered; the oldest unblocked entries are dropped beyond this (memory stays bounded)."""


@dataclass(slots=True)
class _Entry:
    failures: int = 0
    timeout: float = 0.0
    blocked_until: float = 0.0


class Blacklist:
    def __init__(self, threshold: int = 5, timeout: float = 10.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.initial_timeout = timeout
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def blocked_for(self, address: str) -> float:
        """Seconds ``address`` stays refused (0 if it may try)."""
        e = self._entries.get(address)
        if e is None:
            return 0.0
        return max(0.0, e.blocked_until - self._clock())

    def failure(self, address: str) -> None:
        e = self._entries.setdefault(address, _Entry())
        e.failures += 1
        if e.failures >= self.threshold:
            e.timeout = self.initial_timeout if e.timeout == 0 else e.timeout * 2
            e.blocked_until = self._clock() + e.timeout
        self._trim()

    def success(self, address: str) -> None:
        self._entries.pop(address, None)

    def _trim(self) -> None:
        if len(self._entries) <= MAX_ENTRIES:
            return
        now = self._clock()
        for addr in [a for a, e in self._entries.items() if e.blocked_until <= now]:
            del self._entries[addr]
            if len(self._entries) <= MAX_ENTRIES:
                return

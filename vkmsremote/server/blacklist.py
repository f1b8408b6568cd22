"""Per-address connection blacklist, with TigerVNC's semantics (common/rfb/Blacklist.cxx, BlacklistThreshold
and BlacklistTimeout, defaults 5 and 10 s).

Every connection from an address counts as an attempt the moment it arrives (``attempt``), not when its
authentication fails: so a client cannot open many connections at once and guess a password on each
before the first failure is known. The first ``threshold`` attempts pass; the ``threshold``-th starts a
block of ``timeout`` seconds during which the address is refused. When the block has expired, one attempt
passes again and starts the next block, twice as long (10 s, 20 s, 40 s, ...). Refused attempts change
nothing. A successful authentication forgets the address (``success``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_ENTRIES = 4096
"""Addresses remembered; the oldest entries not currently blocked are dropped beyond this (memory stays
bounded however many addresses a peer can use)."""
MAX_TIMEOUT = 24 * 3600.0
"""The doubling stops here (TigerVNC's unsigned int would wrap after some decades of attempts)."""


@dataclass(slots=True)
class _Entry:
    marks: int
    timeout: float
    blocked_until: float = 0.0


class Blacklist:
    def __init__(self, threshold: int = 5, timeout: float = 10.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if threshold < 1:
            raise ValueError("the blacklist threshold is at least 1")
        self.threshold = threshold
        self.initial_timeout = timeout
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def attempt(self, address: str) -> float:
        """A connection from ``address`` arrives: 0.0 if it may go on (it is counted), else the seconds
        it stays refused."""
        now = self._clock()
        e = self._entries.get(address)
        if e is None:
            e = self._entries[address] = _Entry(0, self.initial_timeout)
        if e.marks >= self.threshold:
            if now < e.blocked_until:
                return e.blocked_until - now
            self._block(e, now)  # the block expired: this one may try, and starts the next, longer block
            return 0.0
        e.marks += 1
        if e.marks >= self.threshold:
            self._block(e, now)
        self._trim(now, keep=address)
        return 0.0

    def failure(self, address: str) -> None:
        """Count a failed attempt that did not come through :meth:`attempt` (e.g. checked elsewhere)."""
        self.attempt(address)

    def blocked_for(self, address: str) -> float:
        """Seconds ``address`` stays refused (0 if it may try); counts nothing."""
        e = self._entries.get(address)
        if e is None or e.marks < self.threshold:
            return 0.0
        return max(0.0, e.blocked_until - self._clock())

    def success(self, address: str) -> None:
        """``address`` authenticated: forget it."""
        self._entries.pop(address, None)

    def _block(self, e: _Entry, now: float) -> None:
        e.blocked_until = now + e.timeout
        e.timeout = min(e.timeout * 2, MAX_TIMEOUT)

    def _trim(self, now: float, keep: str) -> None:
        if len(self._entries) <= MAX_ENTRIES:
            return
        for addr in [a for a, e in self._entries.items() if e.blocked_until <= now and a != keep]:
            del self._entries[addr]
            if len(self._entries) <= MAX_ENTRIES:
                return
        while len(self._entries) > 2 * MAX_ENTRIES:  # all blocked: forget the oldest, memory comes first
            del self._entries[next(a for a in self._entries if a != keep)]

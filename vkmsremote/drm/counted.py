"""The kernel's two-call pattern for variable-length replies: ask for the counts, allocate arrays of that
size, ask again with pointers to them; retried if the counts changed in between (hotplug)."""

from __future__ import annotations

import ctypes
import errno
from typing import Any

from vkmsremote.drm.card import Card
from vkmsremote.errors import DrmError

FILL_RETRIES = 8
"""Retries of the "ask for counts, then fill arrays" dance if the counts change in between (hotplug)."""
MAX_COUNT = 4096
"""No sane device has more objects than this; a larger count means a corrupt reply."""


def array(ctype: Any, n: int) -> Any:
    """A ctypes array of ``n`` (at least one, so it has an address) ``ctype``."""
    return (ctype * max(n, 1))()


def check_count(n: int, what: str) -> int:
    if n > MAX_COUNT:
        raise DrmError(f"{what}: kernel reported {n} entries", errno.ERANGE)
    return n


def counts_kept_changing(op: str, object_id: int | None = None) -> DrmError:
    return DrmError(f"{op} (counts kept changing)", errno.EAGAIN, object_id=object_id)


def fill_ids(card: Card, request: int, op: str, arg: Any, pairs: list[tuple[str, str]], object_id: int | None = None) -> Any:
    """The two-call pattern: ``pairs`` maps count field -> pointer field; returns the filled arrays."""
    for _ in range(FILL_RETRIES):
        for count_field, _ptr in pairs:
            setattr(arg, count_field, 0)
        card.ioctl(request, arg, op, object_id)
        counts = [check_count(getattr(arg, c), op) for c, _ in pairs]
        arrays = [array(ctypes.c_uint32, n) for n in counts]
        for (c, p), n, a in zip(pairs, counts, arrays, strict=True):
            setattr(arg, c, n)
            setattr(arg, p, ctypes.addressof(a))
        card.ioctl(request, arg, op, object_id)
        if [getattr(arg, c) for c, _ in pairs] == counts:
            return [tuple(int(a[i]) for i in range(n)) for a, n in zip(arrays, counts, strict=True)]
    raise counts_kept_changing(op, object_id)

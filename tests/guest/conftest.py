"""Tests that run inside the booted Debian 13 guest (systemd as PID 1), never on the host or in the
plain VM: scripts/test.sh runs them in one boot with ``python -m vkmsremote.vm.guest``. Elsewhere they
are not collected (the guest stage fails if it collects none, pytest's exit status 5)."""

from __future__ import annotations

import os
from pathlib import Path

IN_GUEST_ENV = "VKMSREMOTE_IN_GUEST"


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    if os.environ.get(IN_GUEST_ENV) == "1":
        return None
    return True if collection_path.name.startswith("test_") else None

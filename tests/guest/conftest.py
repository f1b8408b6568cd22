"""Tests that run inside the booted Debian 13 guest (systemd as PID 1), never on the host or in the
plain VM: scripts/test.sh runs them in one boot with ``python -m vkmsremote.vm.guest``. Elsewhere they
are not collected (the guest stage fails if it collects none, pytest's exit status 5).

test_desktops_guest.py needs the desktop variant of the guest (scripts/build-guest-desktop.sh, booted with
``python -m vkmsremote.vm.guest --desktop``): it is collected only where KWin and GNOME Shell are installed."""

from __future__ import annotations

import os
from pathlib import Path

IN_GUEST_ENV = "VKMSREMOTE_IN_GUEST"


DESKTOP_TESTS = "test_desktops_guest.py"
DESKTOP_PROGRAMS = (Path("/usr/bin/kwin_wayland"), Path("/usr/bin/gnome-shell"))


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    if os.environ.get(IN_GUEST_ENV) == "1":
        if collection_path.name == DESKTOP_TESTS and not all(p.exists() for p in DESKTOP_PROGRAMS):
            return True
        return None
    return True if collection_path.name.startswith("test_") else None

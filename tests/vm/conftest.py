"""Markers of the VM tests beyond ``vm`` (tests/conftest.py has the shared fixtures)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "vm_modules: needs the module variant of the test kernel (VKMS as a module, scripts/build-kernel-modules.sh); "
        "scripts/test.sh runs them in a second boot",
    )

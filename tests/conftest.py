"""Shared test set-up.

Tests marked ``vm`` need the real kernel (VKMS through configfs): scripts/test.sh runs them all in
one boot of the test VM (``python -m vkmsremote.vm -- pytest -m vm tests``). Outside the VM they
FAIL with an explanation; they never skip, so a run that could not reach the kernel cannot pass.

Fixtures for VM tests:
  vkms_root           Path of /sys/kernel/config/vkms (asserts it exists).
  vkms_clean          same Path; removes every VKMS configfs device before and after the test.
  vkms_remove_device  the removal function, for tests that tear down by hand mid-test.
  vm_results_dir      host-visible directory for artefacts that should outlive the VM.
In the VM /tmp is a private tmpfs, so pytest's own ``tmp_path`` lives there (sockets work on it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

IN_VM_ENV = "VKMSREMOTE_IN_VM"
CONFIGFS = Path("/sys/kernel/config")
VKMS_CONFIGFS = CONFIGFS / "vkms"
ITEM_GROUPS = ("planes", "crtcs", "encoders", "connectors")
"""configfs groups of a VKMS device, in the order the kernel documentation removes them."""


def configfs_mounted(mounts: Path = Path("/proc/mounts")) -> bool:
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return False
    return any(f.split()[1:3] == [str(CONFIGFS), "configfs"] for f in lines if len(f.split()) >= 3)


def vm_problem() -> str | None:
    """Why this process is not a usable test VM, or None if it is."""
    if os.environ.get(IN_VM_ENV) != "1":
        return f"${IN_VM_ENV} is not 1: this is not the test VM"
    if not configfs_mounted():
        return f"configfs is not mounted at {CONFIGFS}"
    return None


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(IN_VM_ENV) == "1" and not config.option.basetemp:
        # The guest's /tmp is a private tmpfs (the repository and the host's files are read-only).
        config.option.basetemp = "/tmp/vkmsremote-pytest"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """In the VM, for ``-m vm`` runs, skip importing test files that never mention the vm marker:
    importing all of them under TCG costs minutes. A file with any vm test says ``mark.vm``."""
    if os.environ.get(IN_VM_ENV) != "1" or config.option.markexpr != "vm":
        return None
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    try:
        text = collection_path.read_text(errors="replace")
    except OSError:
        return None
    return True if "mark.vm" not in text else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``only_compositor(name)`` applies to one value of its ``compositor`` parameter: its
    other instances are deselected (they do not apply; they are not skipped work)."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("only_compositor")
        params = getattr(getattr(item, "callspec", None), "params", {})
        if marker is not None and "compositor" in params and params["compositor"] != marker.args[0]:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config: pytest.Config) -> str:
    problem = vm_problem()
    return "vkmsremote: inside the test VM" if problem is None else f"vkmsremote: host ({problem})"


_outside_vm: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _outside_vm:
        terminalreporter.write_sep(
            "!",
            f"{len(_outside_vm)} test(s) marked vm FAILED: they need the test VM (run scripts/test.sh)",
            red=True,
        )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("vm") is None:
        return
    problem = vm_problem()
    if problem is not None:
        _outside_vm.append(item.nodeid)
        pytest.fail(
            f"this test needs the VKMS test kernel and cannot run here: {problem}. "
            "Run the suite with scripts/test.sh (it boots the VM), or only these tests with "
            "`.venv/bin/python -m vkmsremote.vm -- .venv/bin/python -m pytest -m vm tests`.",
            pytrace=False,
        )


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def remove_vkms_device(device: Path) -> None:
    """Tear down one VKMS configfs device in the kernel's order (Documentation/gpu/vkms.rst):
    enabled=0, unlink the possible_* symlinks, rmdir the items of each group, rmdir the device.
    Raises OSError if the kernel refuses a step."""
    enabled = device / "enabled"
    if enabled.exists() and enabled.read_text().strip() != "0":
        _write(enabled, "0")
    for group in ITEM_GROUPS:
        for item in sorted((device / group).glob("*")):
            for links in item.glob("possible_*"):
                for link in links.iterdir():
                    if link.is_symlink():
                        link.unlink()
    for group in ITEM_GROUPS:
        for item in sorted((device / group).glob("*")):
            item.rmdir()
    device.rmdir()


def remove_all_vkms_devices(root: Path = VKMS_CONFIGFS) -> list[str]:
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    for name in names:
        remove_vkms_device(root / name)
    return names


@pytest.fixture
def vkms_root() -> Path:
    assert VKMS_CONFIGFS.is_dir(), f"{VKMS_CONFIGFS} does not exist: the kernel has no VKMS configfs support"
    return VKMS_CONFIGFS


@pytest.fixture
def vkms_clean(vkms_root: Path) -> Iterator[Path]:
    remove_all_vkms_devices(vkms_root)
    yield vkms_root
    remove_all_vkms_devices(vkms_root)
    left = list(vkms_root.iterdir())
    assert not left, f"VKMS devices left after teardown: {left}"


@pytest.fixture
def vkms_remove_device() -> Callable[[Path], None]:
    return remove_vkms_device


@pytest.fixture
def vm_results_dir() -> Path:
    value = os.environ.get("VKMSREMOTE_VM_RESULTS")
    assert value, "$VKMSREMOTE_VM_RESULTS is not set: not running under vkmsremote.vm"
    path = Path(value)
    assert path.is_dir(), f"{path} is not a directory"
    return path

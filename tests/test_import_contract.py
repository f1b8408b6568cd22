"""The import-direction contract (pyproject.toml [tool.importlinter], docs/architecture.md) holds and can fail.

scripts/test.sh runs ``lint-imports`` as its own stage; here the same check runs on this tree, then on a
temporary copy of the package with one import planted against the layering (or one cycle), and must fail,
naming the planted import. A contract that cannot fire would pass all of these but the planted ones.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = [sys.executable, "-c",
                "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def lint_imports(top: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with ``top``'s pyproject.toml over ``top``'s vkmsremote (nothing else on the path)."""
    return subprocess.run([*LINT_IMPORTS, "--no-cache", "--no-logo", str(top / "pyproject.toml")],
                          capture_output=True, text=True, timeout=120, cwd=top, env={"PYTHONPATH": str(top), "PATH": "/usr/bin:/bin", "COLUMNS": "200"})


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "vkmsremote", tmp_path / "vkmsremote",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def plant(top: Path, module: str, line: str) -> None:
    path = top / "vkmsremote" / module
    path.write_text(path.read_text() + f"\n{line}  # planted by test_import_contract\n")


def test_this_tree_keeps_every_contract() -> None:
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout
    # every contract ran: the layers, the forbidden ones and the cycle check
    for contract in ("layers: cli > service", "do not touch DRM", "vm (the test VM runner) uses errors only",
                     "bench measures", "no import cycle"):
        assert contract in proc.stdout, proc.stdout


def test_the_untouched_copy_passes(copy: Path) -> None:
    """The fixture's copy is checked for real (so the failures below come from the planted line alone)."""
    proc = lint_imports(copy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken\.", proc.stdout), proc.stdout


@pytest.mark.parametrize(("module", "line", "message"), [
    # upward, across several layers: the bottom layer reaching the top
    ("frame.py", "import vkmsremote.cli", "vkmsremote.frame is not allowed to import vkmsremote.cli"),
    # one layer up: drm -> vkms
    ("drm/card.py", "import vkmsremote.vkms.spec",
     "vkmsremote.drm is not allowed to import vkmsremote.vkms"),
    # sideways between independent siblings: capture -> rfb, server -> web (a new import, not the ignored one)
    ("capture/damage.py", "import vkmsremote.rfb.region",
     "vkmsremote.capture is not allowed to import vkmsremote.rfb"),
    ("server/hub.py", "import vkmsremote.web.http", "vkmsremote.server is not allowed to import vkmsremote.web"),
    # downward but forbidden: the protocol touching DRM, bench going around capture, the VM runner using frame
    ("rfb/messages.py", "import vkmsremote.drm.fourcc", "vkmsremote.rfb is not allowed to import vkmsremote.drm"),
    ("bench/stats.py", "import vkmsremote.drm.card", "vkmsremote.bench is not allowed to import vkmsremote.drm"),
    ("vm/accel.py", "import vkmsremote.frame", "vkmsremote.vm is not allowed to import vkmsremote.frame"),
    # a function-level import counts too
    ("errors.py", "def _late() -> None:\n    from vkmsremote.service import up",
     "vkmsremote.errors is not allowed to import vkmsremote.service"),
])
def test_a_planted_import_against_the_layers_fails(copy: Path, module: str, line: str, message: str) -> None:
    plant(copy, module, line)
    proc = lint_imports(copy)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert message in proc.stdout, proc.stdout


def test_a_planted_cycle_fails(copy: Path) -> None:
    # Two sibling modules of one package importing each other: allowed by every layer, caught as a cycle.
    (copy / "vkmsremote" / "rfb" / "planted_a.py").write_text("from vkmsremote.rfb import planted_b\n")
    (copy / "vkmsremote" / "rfb" / "planted_b.py").write_text("from vkmsremote.rfb import planted_a\n")
    proc = lint_imports(copy)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "No cycles are allowed in vkmsremote.rfb." in proc.stdout, proc.stdout
    assert ".planted_a -> .planted_b" in proc.stdout or ".planted_b -> .planted_a" in proc.stdout


def test_a_cycle_between_layers_fails(copy: Path) -> None:
    # vkms already imports drm; drm importing vkms back closes a cycle of top-level packages.
    plant(copy, "drm/resources.py", "import vkmsremote.vkms.state")
    proc = lint_imports(copy)
    assert proc.returncode == 1
    assert "No cycles are allowed in vkmsremote." in proc.stdout, proc.stdout


def test_a_new_top_level_package_must_be_given_a_layer(copy: Path) -> None:
    (copy / "vkmsremote" / "newthing").mkdir()
    (copy / "vkmsremote" / "newthing" / "__init__.py").write_text("")
    proc = lint_imports(copy)
    assert proc.returncode == 1
    assert "vkmsremote.newthing" in proc.stdout, proc.stdout

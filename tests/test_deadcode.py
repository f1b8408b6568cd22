"""The dead-code check (scripts/deadcode.py, the ``deadcode`` stage of scripts/test.sh) passes on this tree
and fails on a planted unused function and on a stale allow-list entry."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "deadcode.py"), "--root", str(root)],
                          capture_output=True, text=True, timeout=300, check=False)


def copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "vkmsremote", root / "vkmsremote", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "vulture_allowlist.py", root)
    return root


def test_this_tree_has_no_dead_code() -> None:
    proc = check(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_planted_unused_function_fails_the_check(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    with open(root / "vkmsremote" / "drm" / "fourcc.py", "a") as f:
        f.write("\n\ndef planted_but_never_called() -> int:\n    return 1\n")
    proc = check(root)
    assert proc.returncode == 1
    assert "fourcc.py" in proc.stdout and "unused function 'planted_but_never_called'" in proc.stdout


def test_a_stale_allowlist_entry_fails_the_check(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    with open(root / "vulture_allowlist.py", "a") as f:
        f.write("DrmFormat.NO_SUCH_FORMAT\n")
    proc = check(root)
    assert proc.returncode == 1 and "stale entry" in proc.stderr and "NO_SUCH_FORMAT" in proc.stderr

"""A checkout under /tmp with its own venv, and a stand-in for vng that runs the VM runner's real guest
script on the running kernel (issue 21: ``scripts/run.sh`` from a clone under /tmp failed in the guest
with "No module named vkmsremote", because the guest's private /tmp hid the checkout the venv's editable
install points into).

The stand-in runs the guest script in a private mount namespace: its tmpfs over /tmp hides this machine's
/tmp exactly as in a real guest (where /tmp is the host's, seen over 9p). The loopback interface plays
the VM's NIC (a bind mount over /sys/bus shows it where the script looks for the virtio NIC), so the
script adds the guest address to it: in a network namespace of its own with ``own_net`` (on the host),
else in this one (in the test VM, where udevd's events, which ``up`` waits for, reach only this one; the
caller removes the address afterwards).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FAKE_VNG = r"""#!/bin/bash
# Stand-in for vng: run the --exec command (the runner's guest script) here, in private namespaces.
set -eu
cmd=
while [ $# -gt 0 ]; do
  case $1 in --exec) cmd=$2; shift 2;; *) shift;; esac
done
fake=$FAKE_VNG_DIR/sys-bus
mkdir -p "$fake/virtio/drivers/virtio_net/virtio0/net/lo"
exec unshare --mount --propagation private ${FAKE_VNG_OWN_NET:+--net} \
  bash -c 'mount --bind "$1" /sys/bus && echo $$ > "$2" && exec $3' _ "$fake" "$FAKE_VNG_DIR/pid" "$cmd"
"""


def make_checkout(base: Path) -> Path:
    """A copy of this checkout's package, profiles and pyproject under ``base`` (which should be under
    /tmp) with a venv of its own at ``.venv``. The venv finds vkmsremote in the copy through a .pth line,
    as an editable install does, and this venv's third-party packages (no network, no pip run)."""
    assert Path("/tmp") in base.resolve().parents or base.resolve() == Path("/tmp"), base
    root = base / "checkout"
    # __pycache__ too, with the sources' times (copy2): the guest does not write bytecode, and compiling
    # every module in each of its Python processes costs minutes under TCG.
    shutil.copytree(REPO / "vkmsremote", root / "vkmsremote")
    shutil.copytree(REPO / "configfs", root / "configfs")
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    venv = root / ".venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    site = next(venv.glob("lib/python3*/site-packages"))
    prefix = Path(sys.prefix).resolve()
    deps = [p for p in sys.path if p.endswith("site-packages") and prefix in Path(p).resolve().parents]
    assert deps, f"no site-packages of {prefix} on {sys.path}"
    (site / "__editable__.vkmsremote.pth").write_text("".join(f"{p}\n" for p in (root, *deps)))
    return root


def fake_vng_env(directory: Path, *, own_net: bool) -> dict[str, str]:
    """The environment for ``<checkout>/.venv/bin/python -m vkmsremote up --vm ...`` with the stand-in:
    no PYTHONPATH (the checkout's venv alone decides what is imported), not marked as inside the VM."""
    directory.mkdir(parents=True, exist_ok=True)
    vng = directory / "vng"
    vng.write_text(FAKE_VNG)
    vng.chmod(0o755)
    kernel = directory / "bzImage"
    kernel.write_bytes(b"not booted: the stand-in runs the guest script on this kernel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VKMSREMOTE_IN_VM", "VKMSREMOTE_PASSWORD")}
    env.update(VKMSREMOTE_VNG=str(vng), VKMSREMOTE_KERNEL=str(kernel), VKMSREMOTE_VM_ACCEL="tcg",
               FAKE_VNG_DIR=str(directory))
    if own_net:
        env["FAKE_VNG_OWN_NET"] = "1"
    return env

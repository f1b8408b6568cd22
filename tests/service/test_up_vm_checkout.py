"""``vkmsremote up --vm`` from a checkout under /tmp (issue 21), on the host: the VM runner's real guest
script runs in private namespaces (tests/checkout_support.py), so the guest's tmpfs over /tmp hides the
host's /tmp as in a real boot. tests/vm/test_checkout_vm.py serves for real from such a checkout."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from checkout_support import fake_vng_env, make_checkout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_up_vm_runs_the_checkouts_own_package_in_the_guest(tmp_path: Path) -> None:
    checkout = make_checkout(tmp_path)
    env = fake_vng_env(tmp_path / "vng", own_net=True)  # the guest script must not touch the host's lo
    configfs = Path(tempfile.mkdtemp(prefix="vkmsremote-configfs-", dir="/var/tmp"))  # not hidden in the guest
    try:
        (configfs / "vkms").mkdir()
        env["VKMSREMOTE_CONFIGFS_ROOT"] = str(configfs)
        port = free_port()
        proc = subprocess.run([str(checkout / ".venv" / "bin" / "python"), "-m", "vkmsremote", "up", "--vm",
                               "--port", str(port), "--dry-run"],
                              cwd="/", env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(configfs)
    out = proc.stdout + proc.stderr
    assert "No module named" not in out, out
    assert proc.returncode == 0, out
    # the guest's `up` ran (listening on the guest NIC), from the checkout's package
    assert f"mkdir {configfs}/vkms/vkmsremote" in proc.stdout, out
    assert "vkmsremote: starting the test VM" in proc.stdout

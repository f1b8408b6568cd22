"""The README's main command (``scripts/run.sh``: ``vkmsremote up --vm --drive pattern``) from a checkout
under /tmp with its own venv, serving for real (issue 21: it failed in the guest with "No module named
vkmsremote", the guest's private /tmp hiding the checkout).

Inside the test VM the runner's guest script runs on this kernel through a stand-in for vng
(tests/checkout_support.py): its tmpfs over /tmp hides the checkout exactly as a real nested boot's would,
and the loopback interface plays the VM's NIC. The serving ``up`` is the checkout's.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from checkout_support import fake_vng_env, make_checkout

from vkmsremote.vm import GUEST_ADDR

pytestmark = [pytest.mark.vm, pytest.mark.timeout(1500)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processes_of(path: Path) -> list[int]:
    """Pids whose command line mentions ``path``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(path).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def test_run_sh_command_serves_from_a_checkout_under_tmp(vkms_clean: Path, tmp_path: Path) -> None:
    # A user's clone: /tmp/<name>, readable by all (the server drops to nobody; pytest's tmp_path is 0700).
    base = Path(tempfile.mkdtemp(prefix="vkmsremote-clone-", dir="/tmp"))
    base.chmod(0o755)
    checkout = make_checkout(base)
    env = fake_vng_env(tmp_path / "vng", own_net=False)  # udevd's events reach this netns only
    state = Path("/run/vkmsremote-checkout-test")  # outside /tmp: the guest `up` must see it
    env["VKMSREMOTE_STATE_DIR"] = str(state)
    port = free_port()
    proc = subprocess.Popen([str(checkout / ".venv" / "bin" / "python"), "-m", "vkmsremote", "up", "--vm",
                             "--drive", "pattern", "--port", str(port),
                             "--drive-size", "640x480", "--drive-fps", "2", "--input", "none"],
                            cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    serving = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "vkmsremote: serving " in line:
                serving.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 900
        while not serving.wait(1) and proc.poll() is None and time.monotonic() < deadline:
            pass
        output = "".join(lines)
        assert "No module named" not in output, output
        assert serving.is_set(), f"no 'serving' line (exit {proc.poll()}):\n{output}"
        assert re.search(rf"serving XR-0 .* on {re.escape(GUEST_ADDR)} port {port}", output), output
        # A client gets the RFB greeting from the checkout's server on the "guest NIC" (lo here).
        with socket.create_connection((GUEST_ADDR, port), timeout=120) as client:
            client.settimeout(120)
            greeting = b""
            while len(greeting) < 12 and (chunk := client.recv(12 - len(greeting))):
                greeting += chunk
        assert greeting == b"RFB 003.008\n"
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the runner stops the "VM"
        assert proc.wait(300) == 0, "".join(lines)
        reader.join(30)
        assert "vkmsremote: stopped" in "".join(lines)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        deadline = time.monotonic() + 120  # the guest side may still be shutting down
        while (left := processes_of(checkout)) and time.monotonic() < deadline:
            time.sleep(1)
        for p in processes_of(checkout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run(["ip", "addr", "del", f"{GUEST_ADDR}/24", "dev", "lo"], capture_output=True, timeout=60)
    assert not left, f"processes of the checkout left running: {left}"

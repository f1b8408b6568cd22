"""The soak in short (scripts/soak.py runs the 10-minute one): 8 clients for 20 s against the animated
pattern, one throttled to 1 Mbit/s, one that stops reading, abrupt disconnects mid-update. No frame-rate
thresholds (they would flake on a loaded machine): it asserts that the stalled client really stalled the
server's writes to it while every other client kept receiving updates, and that once everyone left the
server had no session, task, hub client or file descriptor more than before the first client came."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"
WRITE_HIGH = 256 * 1024  # vkmsremote.server.session.WRITE_HIGH: above it the server stops encoding for a client


def test_short_soak_leaves_nothing_behind_and_a_stalled_client_blocks_no_one() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--seconds", "20", "--clients", "8", "--size", "640x480",
                           "--churn-interval", "1.5", "--json"], capture_output=True, text=True, timeout=240)
    assert done.stdout, done.stderr[-3000:]
    report = json.loads(done.stdout)
    # the stalled client really was stalled: its server-side write buffer went past the high-water mark
    assert report["stalled"]["stalled_after_s"] is not None, report["stalled"]
    assert report["stalled"]["server_write_buffer_peak"] >= WRITE_HIGH
    # ... and every other client kept getting updates while it was (a fair share: at least a quarter of
    # what the median client got)
    assert report["starved_during_stall"] == [] and report["updates_during_stall"]["min"] > 0
    assert all(fps > 0 for fps in report["normal_fps"]["per_client"].values()), report["normal_fps"]
    assert report["client_errors"] == []
    # the throttled client was held to its rate (so it was slow, and the others were not slowed with it)
    assert report["throttled"]["kbit_per_s"] <= 1.1 * report["throttled"]["limit_kbit_per_s"]
    # abrupt disconnects happened, and afterwards nothing was left behind
    assert report["churned"] >= 5 and report["churn_errors"] == 0
    leak = report["leak_check"]
    assert leak["clean"], leak
    assert leak["after"]["sessions"] == 0 and leak["after"]["hub_clients"] == 0
    assert leak["after"]["tasks"] <= leak["baseline"]["tasks"] and leak["after"]["fds"] <= leak["baseline"]["fds"]
    assert report["ok"] and done.returncode == 0

"""Survive the desktop around XR-0 (issue 17, item 3), on the real kernel: scripts/survive.py runs
``vkmsremote serve --source crtc --connector XR-0`` with a VNC client connected through each fault, a few cycles
each ($VKMSREMOTE_SURVIVE_CYCLES, default 10; the script's own default, 100, is the full campaign):

* the DRM master (modetest) killed with SIGKILL and started again;
* the CRTC switched off (atomic ACTIVE=0) and on by its master;
* the VKMS device disabled and enabled again in configfs by someone else;
* the device removed from configfs and made again.

After each fault the client must see "no signal" (or, with the CRTC off, the frozen last frame), then the
live picture again, pixel for pixel; the server must never exit; its fds, DRM cards, dma-bufs and their
mappings must be back at the first cycle's counts, and its RSS within the script's slack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "survive.py"
CYCLES = int(os.environ.get("VKMSREMOTE_SURVIVE_CYCLES", "10"))


@pytest.mark.vm
@pytest.mark.timeout(600 + 60 * CYCLES)
def test_serving_survives_master_crash_dpms_disable_and_removal(vkms_clean: Path, record_property: Any) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--cycles", str(CYCLES), "--json"], capture_output=True,
                          text=True, timeout=540 + 60 * CYCLES)
    print(done.stderr[-6000:])  # per-fault lines and figures (shown with -s, and in the JUnit output on failure)
    assert done.stdout, done.stderr[-6000:]
    report = json.loads(done.stdout)
    faults = {f["fault"]: f for f in report["faults"]}
    assert list(faults) == ["master", "dpms", "disable", "remove"], report
    for name, fault in faults.items():
        record_property(f"survive_{name}", json.dumps({k: fault[k] for k in ("cycles", "seconds", "before", "after",
                                                                             "rss_growth_kb", "outcomes", "cards")}))
        assert fault["ok"] and fault["cycles"] == CYCLES, (name, fault["error"], report["server_log_tail"])
        before, after = fault["before"], fault["after"]
        assert (after["fds"], after["card_fds"], after["dmabuf_fds"], after["dmabuf_maps"]) == (
            before["fds"], before["card_fds"], before["dmabuf_fds"], before["dmabuf_maps"]), (name, before, after)
        assert after["card_fds"] == 1, after  # serving: exactly one card open, the current one
    # the CRTC off: "no signal" or the frozen frame, every cycle
    assert sum(faults["dpms"]["outcomes"].values()) == CYCLES, faults["dpms"]
    for name in ("disable", "remove"):
        outcomes = faults[name]["outcomes"]
        # half the cycles the server let go of the dead card by itself; the other half the old card was still
        # held when the device came back, which then got another card node that the server found
        assert outcomes.get("server let go of the old card", 0) == (CYCLES + 1) // 2, outcomes
        assert outcomes.get("another card node", 0) >= CYCLES // 2, outcomes
        assert len(faults[name]["cards"]) >= 2, faults[name]
    assert report["ok"] and done.returncode == 0 and report["server_exit"] == 0, report

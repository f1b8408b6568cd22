"""CrtcReader's pacing schedule (pure logic; the reader itself is tested in the VM)."""

from __future__ import annotations

import pytest

from vkmsremote.capture.crtc import Pacing
from vkmsremote.errors import UsageError


def test_schedule_goes_active_idle_deep() -> None:
    p = Pacing()
    steps = [p.step(n) for n in range(200)]
    assert steps[:30] == [(1, True)] * 30  # active: every vblank, always a full look
    idle = steps[30:80]
    assert {i for i, _ in idle} == {6}
    assert [full for _, full in idle] == [(k + 1) % 5 == 0 for k in range(50)]  # a full look every 5th
    deep = steps[80:]
    assert {i for i, _ in deep} == {60}
    assert [full for _, full in deep] == [(k + 1) % 10 == 0 for k in range(120)]
    # looks per second at 60 Hz in each state, and seconds between full checks
    assert 60 / 6 == 10 and 60 / 60 == 1 and 5 * 6 / 60 == 0.5 and 10 * 60 / 60 == 10


def test_bad_pacing_is_refused() -> None:
    with pytest.raises(UsageError, match="at least 1"):
        Pacing(idle_vblanks=0)

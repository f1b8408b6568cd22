"""CrtcReader's pacing schedule (pure logic; the reader itself is tested in the VM)."""

from __future__ import annotations

import pytest

from vkmsremote.capture.crtc import Pacing
from vkmsremote.errors import UsageError


def test_schedule_goes_active_idle_deep() -> None:
    p = Pacing()
    steps = [p.step(n) for n in range(200)]
    # active: every vblank, a full look every 4th look in a row without change, probes between
    assert steps[:30] == [(None, (k + 1) % 4 == 0) for k in range(30)]
    idle = steps[30:80]
    assert {d for d, _ in idle} == {0.1}  # ten looks a second
    assert [full for _, full in idle] == [(k + 1) % 5 == 0 for k in range(50)]  # a full look every 5th
    deep = steps[80:]
    assert {d for d, _ in deep} == {1.0}
    assert [full for _, full in deep] == [(k + 1) % 10 == 0 for k in range(120)]


def test_deep_idle_keeps_within_the_cpu_budget() -> None:
    p = Pacing()
    assert p.step(100, look_cost=0.0002)[0] == 1.0  # cheap looks (native): once a second
    delay = p.step(100, look_cost=0.012)[0]  # 12 ms looks (an emulated CPU): 0.5 % means every 2.4 s
    assert delay == pytest.approx(2.4)
    assert p.step(40, look_cost=0.012)[0] == 0.1  # the budget applies to deep idle only


@pytest.mark.parametrize("bad", [{"active_full_every": 0}, {"idle_after": 0}, {"idle_seconds": 0}, {"deep_cpu_budget": 0},
                                 {"deep_cpu_budget": 2}])
def test_bad_pacing_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        Pacing(**bad)  # type: ignore[arg-type]


def test_wakeable_timer_ends_on_time_or_when_woken() -> None:
    import asyncio
    import time

    from vkmsremote.capture.crtc import WakeableTimer

    async def scenario() -> None:
        timer = WakeableTimer()
        t0 = time.monotonic()
        assert await timer.sleep(0.05) is False and time.monotonic() - t0 >= 0.05
        timer.wake()  # nothing waits: no effect on the next wait
        sleeping = asyncio.ensure_future(timer.sleep(30))
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        timer.wake()
        assert await sleeping is True and time.monotonic() - t0 < 1

    asyncio.run(scenario())

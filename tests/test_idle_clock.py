"""The idle clock (realtime.core.idle): when an unwatched workspace is warned and suspended, with no loop."""

from __future__ import annotations

import pytest

from realtime.core.idle import IdleClock, Suspend, Wait, Warn, Withdraw
from realtime.workspaces.activity import beat_for


def test_warns_then_suspends_after_idle_time() -> None:
    """Quiet for idle_s: the warning comes warn_s before, the suspension at the announced time."""
    clock = IdleClock(10, 2, now=0)
    assert clock.decide(5, busy=False) == Wait(8)
    assert clock.decide(8, busy=False) == Warn(10)
    clock.announced(10)
    assert clock.decide(9, busy=False) == Wait(10)
    assert clock.decide(10, busy=False) == Suspend()


def test_never_suspends_without_warning_first() -> None:
    """A late check still warns first, and gives the whole lead before suspending."""
    clock = IdleClock(10, 2, now=0)
    decision = clock.decide(30, busy=False)
    assert decision == Warn(32)
    clock.announced(32)
    assert clock.decide(31, busy=False) == Wait(32)
    assert clock.decide(32, busy=False) == Suspend()


def test_activity_postpones_and_withdraws_the_warning() -> None:
    """Activity before the warning moves it; activity after it withdraws it."""
    clock = IdleClock(10, 2, now=0)
    clock.active(5)
    assert clock.decide(8, busy=False) == Wait(13)
    assert clock.decide(13, busy=False) == Warn(15)
    clock.announced(15)
    clock.active(14)
    assert clock.decide(14, busy=False) == Withdraw()
    clock.withdrawn()
    assert clock.decide(14, busy=False) == Wait(22)


def test_activity_within_the_lead_announces_the_later_time() -> None:
    """Activity that still leaves it within warn_s of suspension re-announces the later time."""
    clock = IdleClock(3, 2, now=0)
    assert clock.decide(1, busy=False) == Warn(3)
    clock.announced(3)
    clock.active(1.5)
    assert clock.decide(2.6, busy=False) == Warn(4.6)


def test_busy_counts_as_activity() -> None:
    """A running command (busy) keeps the workspace from being warned or suspended."""
    clock = IdleClock(10, 2, now=0)
    for now in range(0, 100, 5):
        assert isinstance(clock.decide(now, busy=True), Wait)
    assert clock.decide(102, busy=False) == Wait(103)


def test_older_activity_changes_nothing() -> None:
    clock = IdleClock(10, 2, now=5)
    clock.active(1)
    assert clock.last_active == 5


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="idle_s"):
        IdleClock(0, 1, now=0)


def test_beat_is_well_under_the_quiet_time() -> None:
    """Activity is published (and idleness checked) a few times before a warning could go out."""
    assert beat_for(900, 60) == 30.0
    assert beat_for(2, 1) == pytest.approx(1 / 3)
    assert beat_for(1, 5) == pytest.approx(1 / 3)
    assert beat_for(0.01, 0) == 0.05

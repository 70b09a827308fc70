"""When an unwatched workspace is warned and suspended: a pure clock, no I/O, no event loop.

One `IdleClock` per workspace. Its driver (`realtime.workspaces.idle`) feeds it activity (`active`:
a viewer, an op, a preview request, here or, through Redis, on another instance) and asks it what
to do now (`decide`), on a monotonic clock in seconds. Invariants:

- A workspace doing something of its own (`busy`: converging, running commands) is active now.
- The warning goes out at least `warn_s` before the suspension: `Warn(suspend_at)` comes first,
  and `Suspend` only once the announced `suspend_at` has passed without activity.
- Activity after a warning moves the suspension: far enough off, the warning is withdrawn
  (`Withdraw`); still within `warn_s`, it is announced again with the later time.
- The driver applies what it did (`announced`, `withdrawn`), so a decision it could not carry out
  (an append that failed, a suspension refused) is decided again next time.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Decision", "IdleClock", "Suspend", "Wait", "Warn", "Withdraw"]


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do before `until`."""

    until: float


@dataclass(frozen=True, slots=True)
class Warn:
    """Announce that the workspace is suspended at `suspend_at` (the `idle` event)."""

    suspend_at: float


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Someone came back: the announced suspension is off (an `idle` event without `suspend_at`)."""


@dataclass(frozen=True, slots=True)
class Suspend:
    """The announced time has come: suspend the workspace."""


Decision = Wait | Warn | Withdraw | Suspend


class IdleClock:
    """Suspends after `idle_s` without activity, warning `warn_s` ahead (see the module doc).

    Args:
        idle_s: seconds without activity before the suspension; warn_s: the warning's lead;
        now: the clock's reading at the start (counts as activity).
    """

    def __init__(self, idle_s: float, warn_s: float, now: float) -> None:
        if idle_s <= 0 or warn_s < 0:
            raise ValueError(f"expected idle_s > 0 and warn_s >= 0, got {idle_s!r} and {warn_s!r}")
        self.idle_s = idle_s
        self.warn_s = warn_s
        self.last_active = now
        #: The suspension time the last warning announced; None while none holds.
        self.suspend_at: float | None = None

    def active(self, at: float) -> None:
        """Someone viewed or used the workspace at `at` (earlier readings change nothing)."""
        self.last_active = max(self.last_active, at)

    @property
    def due(self) -> float:
        """When the workspace is idle long enough to be suspended, counting from the last activity."""
        return self.last_active + self.idle_s

    def decide(self, now: float, *, busy: bool) -> Decision:
        """What to do at `now`; `busy` counts as activity now."""
        if busy:
            self.active(now)
        due = self.due
        if self.suspend_at is not None:
            if due > self.suspend_at:
                # Active again since the warning.
                return Withdraw() if now < due - self.warn_s else Warn(max(due, now + self.warn_s))
            return Suspend() if now >= self.suspend_at else Wait(self.suspend_at)
        if now >= due - self.warn_s:
            return Warn(max(due, now + self.warn_s))
        return Wait(due - self.warn_s)

    def announced(self, suspend_at: float) -> None:
        """The warning for `suspend_at` went out."""
        self.suspend_at = suspend_at

    def withdrawn(self) -> None:
        """The warning was withdrawn, or the workspace suspended or resumed: no warning holds."""
        self.suspend_at = None

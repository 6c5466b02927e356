"""Time left from the recent step rate.

The average since the session began counted set-up (model build, the first batches, a frozen
prefix being cached) as if every step would pay for it again: 4:53 was shown for 2:26 of real
training left. The rate over the last ``window`` steps follows the speed the run has now.
"""
from __future__ import annotations

from collections import deque


class StepRate:
    def __init__(self, window: int = 20):
        self.marks: deque[tuple[float, int]] = deque(maxlen=window + 1)

    def mark(self, active_seconds: float, step: int) -> None:
        """A step ended at ``active_seconds`` on a clock that stops while paused."""
        self.marks.append((active_seconds, step))

    def seconds_per_step(self) -> float | None:
        if len(self.marks) < 2:   # one mark: only the set-up and the first step, not a rate
            return None
        (t0, s0), (t1, s1) = self.marks[0], self.marks[-1]
        return (t1 - t0) / (s1 - s0) if s1 > s0 else None

    def eta(self, remaining_steps: int) -> float | None:
        per_step = self.seconds_per_step()
        return None if per_step is None else max(0.0, per_step * remaining_steps)

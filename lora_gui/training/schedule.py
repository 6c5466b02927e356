"""The learning-rate schedule: linear warm-up, cosine decay, and its remapping on a resume."""
from __future__ import annotations

import math


def cosine_with_warmup(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def virtual_step(step: float, knots: list) -> float:
    """Where ``step`` falls on the run's original schedule; ``knots`` are (real step, virtual step,
    slope) added at each resume with another world size (the rest of the schedule is stretched or
    squeezed onto the steps the new world size takes)."""
    v = float(step)
    for s0, v0, slope in knots:
        if step >= s0:
            v = v0 + (step - s0) * slope
    return v


def scheduled(base, knots: list):
    if not knots:
        return base
    return lambda step: base(virtual_step(step, knots))

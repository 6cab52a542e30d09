"""Learning-rate schedules as pure functions of the step (tested against hand-computed values)."""

from __future__ import annotations

import math


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    return int(math.ceil(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0


def learning_rate_at(step: int, total_steps: int, peak: float, warmup: int, schedule: str = "cosine") -> float:
    """LR for optimizer step `step` (0-based): linear warmup to `peak`, then cosine/linear decay to 0."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    if schedule == "linear":
        return peak * (1.0 - progress)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_plan(n_items: int, items_per_step: int, epochs: float, max_steps: int | None, warmup_ratio: float) -> tuple[int, int, int]:
    """(steps per epoch, total optimizer steps, warmup steps): every recipe counts its run the same way."""
    steps_per_epoch = math.ceil(n_items / items_per_step)
    total_steps = max_steps or max(1, math.ceil(epochs * steps_per_epoch))
    return steps_per_epoch, total_steps, warmup_steps_for(total_steps, warmup_ratio)

"""Learning-rate schedules as pure functions of the optimizer step.

A schedule is ``lr(step)`` with ``step`` counted from 0 (the learning rate used by the
``step``-th optimizer update). Being a pure function of the step, it needs no state in the
checkpoint: a resumed run recomputes the same value.

Warm-up (linear, any schedule): ``lr = base_lr * (step + 1) / warmup_steps`` for
``step < warmup_steps``; after warm-up, with ``s = step - warmup_steps`` and
``S = max(1, total_steps - warmup_steps)``:

- ``constant``: ``base_lr``
- ``cosine``:   ``min_lr + (base_lr - min_lr) * (1 + cos(pi * min(s, S) / S)) / 2``
- ``step``:     ``base_lr * gamma ** (s // step_size)``
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "step")


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up multiplier in (0, 1]: (step + 1) / warmup_steps, then 1."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps


def cosine(step: int, base_lr: float, total_steps: int, min_lr: float = 0.0) -> float:
    """Half-cosine decay from base_lr (step 0) to min_lr (step total_steps and after)."""
    total = max(1, total_steps)
    t = min(step, total) / total
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def step_decay(step: int, base_lr: float, step_size: int, gamma: float) -> float:
    """base_lr * gamma ** (step // step_size)."""
    return base_lr * gamma ** (step // max(1, step_size))


def learning_rate(
    step: int,
    base_lr: float,
    schedule: str = "constant",
    warmup_steps: int = 0,
    total_steps: int = 0,
    min_lr: float = 0.0,
    step_size: int = 1000,
    gamma: float = 0.5,
) -> float:
    """The learning rate for optimizer step ``step`` (see the module docstring)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if step < warmup_steps:
        return base_lr * warmup_factor(step, warmup_steps)
    s = step - max(0, warmup_steps)
    if schedule == "cosine":
        return cosine(s, base_lr, total_steps - max(0, warmup_steps), min_lr)
    if schedule == "step":
        return step_decay(s, base_lr, step_size, gamma)
    return base_lr

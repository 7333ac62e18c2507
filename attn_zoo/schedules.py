"""Learning-rate schedules stepped once per optimiser step, built from the run's total step count.

Both return ``torch.optim.lr_scheduler.LambdaLR``: the factor multiplies each group's base lr.
"""
from __future__ import annotations

import math
from typing import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _warmup_steps(total_steps: int, steps_per_epoch: int, warmup_epochs: float) -> int:
    return min(total_steps - 1, int(round(warmup_epochs * steps_per_epoch))) if warmup_epochs > 0 else 0


def cosine(
    optimizer: Optimizer, *, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0.0, min_factor: float = 0.0
) -> LambdaLR:
    """Linear warm-up from 0 over ``warmup_epochs``, then half a cosine down to ``min_factor``."""
    warmup = _warmup_steps(total_steps, steps_per_epoch, warmup_epochs)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def multistep(
    optimizer: Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
) -> LambdaLR:
    """×``gamma`` at each milestone, given as fractions of the run (He et al.'s CIFAR schedule: 50 %, 75 %)."""
    if any(not 0 < m < 1 for m in milestones):
        raise ValueError(f"milestones are fractions of the run in (0, 1), got {list(milestones)}")
    warmup = _warmup_steps(total_steps, steps_per_epoch, warmup_epochs)
    boundaries = sorted(int(m * total_steps) for m in milestones)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return gamma ** sum(step >= boundary for boundary in boundaries)

    return LambdaLR(optimizer, factor)

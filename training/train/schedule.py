"""Learning-rate schedule as a pure function of the step."""

from __future__ import annotations

import math

from training.train.config import LossConfig, StageConfig


def lr_at(step: int, stage: StageConfig) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of a stage with ``stage.steps`` steps.

    Linear warm-up from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps`` steps, then a cosine decay
    from ``lr`` to ``lr_min`` at the last step.
    """
    if step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    span = max(stage.steps - 1 - stage.warmup_steps, 1)
    t = min(max((step - stage.warmup_steps) / span, 0.0), 1.0)
    return stage.lr_min + 0.5 * (stage.lr - stage.lr_min) * (1.0 + math.cos(math.pi * t))


def prior_scale_at(step: int, loss: LossConfig) -> float:
    """KL warm-up factor of the Stage I prior terms: (step + 1) / kl_warmup_steps, capped at 1."""
    if loss.kl_warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / loss.kl_warmup_steps)

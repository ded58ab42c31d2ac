"""Learning-rate schedules: linear warmup, then cosine / linear decay or constant.

``lr_at(step, cfg, total_steps)`` is the rate used by optimizer update number ``step + 1``
(``step`` = updates done so far), as transformers' LambdaLR schedules give it: the first update
of a warmup runs at lr 0. With ``min_lr_ratio = 0`` the values equal
``get_cosine_schedule_with_warmup`` / ``get_linear_schedule_with_warmup`` /
``get_constant_schedule_with_warmup``; ``min_lr_ratio > 0`` lifts the floor of the decay as
transformers' ``cosine_with_min_lr`` does (``factor * (1 - r) + r``), linear alike.
"""

from __future__ import annotations

import math

__all__ = ["lr_at", "lr_factor", "warmup_steps_of"]


def warmup_steps_of(cfg, total_steps: int) -> int:
    """``cfg.warmup_steps`` if set, else ``ceil(warmup_ratio * total_steps)`` (transformers' rule)."""
    if cfg.warmup_steps > 0:
        return int(cfg.warmup_steps)
    return int(math.ceil(cfg.warmup_ratio * total_steps))


def lr_factor(step: int, kind: str, warmup: int, total: int, min_lr_ratio: float = 0.0) -> float:
    """The multiplier of the peak rate after ``step`` updates."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if kind == "constant":
        return 1.0
    progress = float(step - warmup) / float(max(1, total - warmup))
    if kind == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "linear":
        factor = max(0.0, float(total - step) / float(max(1, total - warmup)))
    else:
        raise ValueError(f"lr_scheduler: unknown schedule {kind!r} (cosine, linear, constant)")
    return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)


def lr_at(step: int, cfg, total_steps: int) -> float:
    """The learning rate for the update after ``step`` updates of a ``total_steps`` run."""
    warmup = warmup_steps_of(cfg, total_steps)
    return cfg.learning_rate * lr_factor(step, cfg.lr_scheduler, warmup, total_steps, cfg.min_lr_ratio)

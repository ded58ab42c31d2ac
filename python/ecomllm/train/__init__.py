"""Training: SFT of LoRA adapters (QLoRA on NF4 bases) and full-parameter pre-training.

- :class:`Trainer` -- the loop over packed rows: gradient accumulation normalised by target
  tokens, warmup + cosine/linear schedule, dev loss, atomic checkpoints with exact resume,
  tqdm progress, ``metrics.jsonl`` and ``loss_curve.png`` (:mod:`ecomllm.train.trainer`).
- :class:`TrainConfig` / :func:`load_config` -- typed YAML configs with ``section.key=value``
  overrides (:mod:`ecomllm.train.config`).
- :func:`lr_at` (:mod:`ecomllm.train.schedule`), :func:`latest_checkpoint`
  (:mod:`ecomllm.train.checkpoint`).
"""

from __future__ import annotations

from .checkpoint import latest_checkpoint, list_checkpoints
from .config import ConfigError, TrainConfig, apply_overrides, config_help, config_to_dict, load_config
from .schedule import lr_at
from .trainer import PackedRows, Trainer, TrainingStopped, read_metrics, write_loss_plot

__all__ = [
    "Trainer", "TrainConfig", "load_config", "ConfigError", "apply_overrides", "config_help", "config_to_dict",
    "lr_at", "latest_checkpoint", "list_checkpoints", "PackedRows", "TrainingStopped", "read_metrics",
    "write_loss_plot",
]

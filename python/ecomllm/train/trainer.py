"""The training loop: SFT of a LoRA adapter (QLoRA on an NF4 base) or full-parameter pre-training.

``Trainer(model, train_data, dev_data, config).train(resume_from=None | "latest" | path)``.

Data are packed rows: any object (or mapping) with int arrays ``input_ids``, ``labels`` [R, T],
optionally ``position_ids`` (restarting at 0 for each packed example) and ``attention_mask``.
Labels of -100 are not targets; the loss uses transformers' one-token shift, so the target count
of a batch is ``(labels[:, 1:] != -100).sum()``.

One optimizer step = one window of ``grad_accum_steps`` micro-batches of ``micro_batch_size``
rows taken in a seeded per-epoch permutation (the last micro-batch / window of an epoch may be
smaller). Every micro-batch's gradients are scaled by 1 / (target tokens of the whole window),
so the step follows the window's mean token loss, which is also the logged loss. Then: clip,
set the scheduled lr, AdamW step, zero_grad.

Exact resume: a checkpoint holds the weights, AdamW moments, step, epoch and position in the
epoch, the RNG state that drew the epoch's permutation, and the model's dropout counter. A run
resumed from step k repeats the uninterrupted run's losses bit for bit (the same arithmetic in
the same order), given the same model construction (base, adapter config and seed) and data.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from .. import _core
from ..optim import AdamW, clip_grad_norm
from . import checkpoint as ckpt
from .config import TrainConfig, config_to_dict
from .schedule import lr_at, warmup_steps_of

__all__ = ["Trainer", "PackedRows", "TrainingStopped", "read_metrics", "write_loss_plot"]

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_curve.png"
_HISTORY_TAIL = 200  # metric lines kept in trainer_state.json


class TrainingStopped(Exception):
    """Raise from a callback to end training early after the current step (no error)."""


class PackedRows:
    """Validated int32 views of packed training rows (input_ids, labels, position_ids, mask)."""

    KEYS = ("input_ids", "labels", "position_ids", "attention_mask")

    def __init__(self, data, name: str = "data"):
        def get(key):
            if isinstance(data, Mapping):
                return data.get(key)
            return getattr(data, key, None)

        arrays = {}
        for key in self.KEYS:
            a = get(key)
            if a is None:
                if key in ("input_ids", "labels"):
                    raise ValueError(f"{name}: missing the array '{key}'")
                arrays[key] = None
                continue
            a = np.asarray(a)
            if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer) and a.dtype != np.bool_:
                raise ValueError(f"{name}.{key}: expected an integer array [R, T], got {a.dtype} {a.shape}")
            arrays[key] = np.ascontiguousarray(a, dtype=np.int32)
        shape = arrays["input_ids"].shape
        if shape[0] < 1 or shape[1] < 2:
            raise ValueError(f"{name}.input_ids: need at least 1 row of 2 tokens, got shape {shape}")
        for key, a in arrays.items():
            if a is not None and a.shape != shape:
                raise ValueError(f"{name}.{key}: shape {a.shape} differs from input_ids {shape}")
        self.name = name
        self.input_ids, self.labels = arrays["input_ids"], arrays["labels"]
        self.position_ids, self.attention_mask = arrays["position_ids"], arrays["attention_mask"]
        # Per-row counts, used to size accumulation windows and measure throughput.
        self.row_targets = (self.labels[:, 1:] != -100).sum(axis=1).astype(np.int64)
        self.row_tokens = (self.attention_mask != 0).sum(axis=1).astype(np.int64) if self.attention_mask is not None \
            else np.full(shape[0], shape[1], np.int64)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batch(self, rows: np.ndarray) -> dict:
        """Arguments of model.forward_backward / model.loss for these rows (in this order)."""
        take = lambda a: None if a is None else np.ascontiguousarray(a[rows])  # noqa: E731
        return {"input_ids": take(self.input_ids), "labels": take(self.labels),
                "attention_mask": take(self.attention_mask), "position_ids": take(self.position_ids)}


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


class Trainer:
    """Trains ``model`` (an ``ecomllm.Model``) on packed rows; see the module docstring.

    ``dev_data``: packed rows or a mapping name -> packed rows (one dev loss per name).
    ``callbacks``: objects with any of ``on_step(step, metrics)``, ``on_eval(step, metrics)``,
    ``on_save(step, path)``, ``on_train_end(summary)`` (plain callables are ``on_step``). A callback
    may raise :class:`TrainingStopped` to stop cleanly, or any other exception to abort.
    """

    def __init__(self, model, train_data, dev_data=None, config: TrainConfig | None = None, callbacks=None):
        self.model = model
        self.config = cfg = config if config is not None else TrainConfig()
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(cfg).__name__}")
        self.train_data = PackedRows(train_data, "train_data")
        if dev_data is None:
            self.dev_data: dict[str, PackedRows] = {}
        elif isinstance(dev_data, Mapping) and not any(k in dev_data for k in PackedRows.KEYS):
            self.dev_data = {str(k): PackedRows(v, f"dev_data[{k!r}]") for k, v in dev_data.items()}
        else:
            self.dev_data = {"dev": PackedRows(dev_data, "dev_data")}
        self.callbacks = [cb for cb in (callbacks or [])]

        if cfg.mode == "full":
            model.train_all_parameters(True)
        else:
            if model.active_adapter is None:
                raise ValueError("mode='lora' needs a model with an active adapter: call model.add_lora(...) first "
                                 "(or set mode='full' to train all parameters)")
            model.train_all_parameters(False)
        model.gradient_checkpointing = cfg.gradient_checkpointing
        self.params = model.trainable_parameters()
        self.optimizer = AdamW(self.params, lr=cfg.learning_rate, betas=tuple(cfg.betas), eps=cfg.eps,
                               weight_decay=cfg.weight_decay)

        m, g = cfg.micro_batch_size, cfg.grad_accum_steps
        self.micro_batches_per_epoch = -(-len(self.train_data) // m)
        self.steps_per_epoch = -(-self.micro_batches_per_epoch // g)
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * self.steps_per_epoch
        self.output_dir = Path(cfg.output_dir)
        self._reset_state()

    # ---- state ----------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self.global_step = 0
        self.epoch = 0                 # epochs completed
        self.step_in_epoch = 0         # windows done in the current epoch
        self.rng = np.random.default_rng(self.config.seed)
        self._epoch_rng_state = None   # rng state that drew the current epoch's permutation
        self._perm: np.ndarray | None = None
        self.tokens_seen = 0
        self.elapsed_before = 0.0      # seconds spent by earlier (resumed-from) processes
        self.history: list[dict] = []  # metric lines of this run (train + eval)
        self.last_eval: dict[str, float] = {}
        self.last_checkpoint: Path | None = None

    def _state(self) -> dict:
        cfg = self.config
        return {
            "format": "ecomllm-trainer-state", "version": 1,
            "global_step": self.global_step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "num_rows": len(self.train_data),
            "rng_state": self.rng.bit_generator.state,
            "epoch_rng_state": self._epoch_rng_state,
            "scheduler": {"kind": cfg.lr_scheduler, "total_steps": self.total_steps,
                          "warmup_steps": warmup_steps_of(cfg, self.total_steps), "min_lr_ratio": cfg.min_lr_ratio,
                          "last_lr": self.optimizer.lr},
            "dropout_step": int(self.model.dropout_step),
            "tokens_seen": self.tokens_seen,
            "elapsed_s": self._elapsed(),
            "config": config_to_dict(cfg),
            "history": self.history[-_HISTORY_TAIL:],
        }

    def _load_state(self, state: dict, source: Path) -> None:
        try:
            self._apply_state(state, source)
        except (KeyError, TypeError, AttributeError, OverflowError) as e:  # a field missing or mistyped
            raise ValueError(f"{source}/trainer_state.json: malformed trainer state "
                             f"({type(e).__name__}: {str(e)[:200]})") from None

    def _apply_state(self, state: dict, source: Path) -> None:
        if state.get("format") != "ecomllm-trainer-state":
            raise ValueError(f"{source}/trainer_state.json: not an ecomllm trainer state")
        if state["num_rows"] != len(self.train_data) or state["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(f"{source}: the checkpoint was made with {state['num_rows']} training rows and "
                             f"{state['steps_per_epoch']} steps per epoch; this run has {len(self.train_data)} and "
                             f"{self.steps_per_epoch} (same data, micro_batch_size and grad_accum_steps are needed "
                             "to resume)")
        if state["total_steps"] != self.total_steps:
            raise ValueError(f"{source}: the checkpoint's schedule spans {state['total_steps']} steps, this config "
                             f"{self.total_steps} (max_steps / epochs changed?)")
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        # Mid-epoch: re-draw the epoch's permutation from the state that drew it first.
        if self.step_in_epoch > 0:
            self.rng.bit_generator.state = state["epoch_rng_state"]
            self._start_epoch()
        else:
            self.rng.bit_generator.state = state["rng_state"]
        self.model.dropout_step = int(state["dropout_step"])
        self.optimizer.lr = float(state["scheduler"]["last_lr"])
        self.tokens_seen = int(state["tokens_seen"])
        self.elapsed_before = float(state["elapsed_s"])
        self.history = [h for h in state.get("history", []) if h.get("step", 0) <= self.global_step]

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0)

    def _start_epoch(self) -> None:
        self._epoch_rng_state = self.rng.bit_generator.state
        self._perm = self.rng.permutation(len(self.train_data))

    def _window(self, w: int) -> list[np.ndarray]:
        """Row indices of each micro-batch of window ``w`` of the current epoch."""
        m, g = self.config.micro_batch_size, self.config.grad_accum_steps
        first = w * g
        last = min(first + g, self.micro_batches_per_epoch)
        return [self._perm[i * m:(i + 1) * m] for i in range(first, last)]

    # ---- public -----------------------------------------------------------------------------------
    def evaluate(self, max_batches: int | None = None) -> dict[str, float]:
        """Mean token loss per dev set (summed token losses / target tokens), in row order."""
        if max_batches is None:
            max_batches = self.config.eval_batches
        m = self.config.micro_batch_size
        out = {}
        for name, data in self.dev_data.items():
            total, count = 0.0, 0
            for b, start in enumerate(range(0, len(data), m)):
                if max_batches is not None and b >= max_batches:
                    break
                s, n = self.model.loss(**data.batch(np.arange(start, min(start + m, len(data)))))
                total += s
                count += n
            out[name] = total / count if count else float("nan")
        return out

    def train(self, resume_from: str | os.PathLike | None = None) -> dict:
        """Runs to ``total_steps``; returns a summary dict (see the end of this method)."""
        cfg = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_partial_checkpoints(self.output_dir)
        self._reset_state()
        resumed_from = None
        if resume_from is not None:
            path = ckpt.latest_checkpoint(self.output_dir) if str(resume_from) == "latest" else Path(resume_from)
            if path is None:
                raise FileNotFoundError(f"{self.output_dir}: no complete checkpoint to resume from")
            state = ckpt.read_training_state(path, self.model, self.optimizer, cfg.mode)
            self._load_state(state, path)
            resumed_from = path
            self._rewrite_metrics(keep_through=self.global_step)
        else:
            existing = ckpt.list_checkpoints(self.output_dir)
            if existing:
                raise FileExistsError(f"{self.output_dir} already holds checkpoints ({existing[-1][1].name}); "
                                      "resume with resume_from='latest' or use another output_dir")
            self._rewrite_metrics(keep_through=0)

        self._t0 = time.perf_counter()
        bar = _progress(cfg.progress, self.total_steps, self.global_step)
        stopped = False
        # The run's matmul precision, if the config names one, for the run only (process-wide setting).
        precision_before = _core.fp32_matmul_precision()
        if cfg.matmul_precision is not None:
            _core.set_fp32_matmul_precision(cfg.matmul_precision)
        precision = _core.fp32_matmul_precision()
        try:
            while self.global_step < self.total_steps and not stopped:
                if self.step_in_epoch == 0:
                    self._start_epoch()
                metrics = self._train_step(self._window(self.step_in_epoch))
                bar.update(1)
                if cfg.log_every and (self.global_step % cfg.log_every == 0 or self.global_step == self.total_steps):
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}" if metrics["loss"] is not None else "nan",
                                    lr=f"{metrics['lr']:.2e}", tok_s=f"{metrics['tokens_per_s']:.0f}", refresh=False)
                last = self.global_step == self.total_steps
                if self.dev_data and ((cfg.eval_every and self.global_step % cfg.eval_every == 0) or last):
                    self._eval_and_log()
                if (cfg.save_every and self.global_step % cfg.save_every == 0) or last:
                    self.save()
                try:
                    self._call("on_step", self.global_step, metrics)
                except TrainingStopped:
                    stopped = True
            if stopped and (self.last_checkpoint is None or
                            self.last_checkpoint.name != f"checkpoint-{self.global_step:06d}"):
                if self.dev_data:
                    self._eval_and_log()
                self.save()
        finally:
            bar.close()
            self.elapsed_before = self._elapsed()
            del self._t0
            _core.set_fp32_matmul_precision(precision_before)

        train_lines = [h for h in self.history if h["type"] == "train"]
        summary = {
            "global_step": self.global_step,
            "total_steps": self.total_steps,
            "epoch": self.epoch + self.step_in_epoch / self.steps_per_epoch,
            "final_loss": train_lines[-1]["loss"] if train_lines else None,
            "first_loss": train_lines[0]["loss"] if train_lines else None,
            "dev_loss": dict(self.last_eval),
            "tokens_seen": self.tokens_seen,
            "elapsed_s": self.elapsed_before,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "resumed_from": str(resumed_from) if resumed_from else None,
            "stopped_early": stopped,
            "matmul_precision": precision,
            "output_dir": str(self.output_dir),
        }
        self._call("on_train_end", summary)
        return summary

    def save(self) -> Path:
        """Writes checkpoint-{global_step} now (atomic; prunes to keep_last) and the loss plot."""
        state = self._state()
        mode = self.config.mode
        path = ckpt.save_checkpoint(
            self.output_dir, self.global_step,
            lambda tmp: ckpt.write_training_state(tmp, self.model, self.optimizer, state, mode),
            keep_last=self.config.keep_last)
        self.last_checkpoint = path
        write_loss_plot(self.output_dir / METRICS_FILE, self.output_dir / PLOT_FILE)
        self._call("on_save", self.global_step, path)
        return path

    # ---- one optimizer step -----------------------------------------------------------------------
    def _train_step(self, micro: list[np.ndarray]) -> dict:
        cfg, data, model = self.config, self.train_data, self.model
        t = time.perf_counter()
        n_items = int(sum(int(data.row_targets[rows].sum()) for rows in micro))
        tokens = int(sum(int(data.row_tokens[rows].sum()) for rows in micro))
        loss_sum = 0.0
        for rows in micro:
            n = int(data.row_targets[rows].sum())
            mean = model.forward_backward(**data.batch(rows), num_items_in_batch=max(1, n_items))
            loss_sum += mean * n
        if cfg.max_grad_norm > 0:
            grad_norm = clip_grad_norm(self.params, cfg.max_grad_norm)
        else:
            grad_norm = _core.grad_norm(self.params)
        lr = lr_at(self.global_step, cfg, self.total_steps)
        self.optimizer.lr = lr
        self.optimizer.step()
        model.zero_grad()

        self.global_step += 1
        self.step_in_epoch += 1
        if self.step_in_epoch == self.steps_per_epoch:
            self.epoch += 1
            self.step_in_epoch = 0
        self.tokens_seen += tokens
        dt = time.perf_counter() - t
        metrics = {
            "type": "train", "step": self.global_step,
            "epoch": round(self.epoch + self.step_in_epoch / self.steps_per_epoch, 6),
            "loss": _finite(loss_sum / n_items) if n_items else None,
            "lr": lr, "grad_norm": _finite(grad_norm), "tokens": tokens, "target_tokens": n_items,
            "tokens_per_s": tokens / dt if dt > 0 else 0.0, "elapsed": self._elapsed(),
        }
        self._log(metrics)
        return metrics

    def _eval_and_log(self) -> None:
        losses = self.evaluate()
        self.last_eval = losses
        line = {"type": "eval", "step": self.global_step, "elapsed": self._elapsed()}
        line.update({f"dev_loss/{k}": _finite(v) for k, v in losses.items()})
        self._log(line)
        self._call("on_eval", self.global_step, line)

    # ---- metrics ------------------------------------------------------------------------------
    def _log(self, line: dict) -> None:
        self.history.append(line)
        with open(self.output_dir / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, allow_nan=False) + "\n")

    def _rewrite_metrics(self, keep_through: int) -> None:
        """Keeps the metric lines of steps <= keep_through (a resumed run drops what the killed
        run logged after its checkpoint); atomic."""
        path = self.output_dir / METRICS_FILE
        kept = []
        if keep_through > 0 and path.exists():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        d = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by the crash
                    if d.get("step", 0) <= keep_through:
                        kept.append(line if line.endswith("\n") else line + "\n")
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, path)

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is None and hook == "on_step" and callable(cb):
                fn = cb
            if fn is not None:
                fn(*args)


def _progress(enabled: bool, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, file=sys.stderr, unit="step",
                dynamic_ncols=True, desc="train")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The lines of a metrics.jsonl file (cut or broken lines skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def write_loss_plot(metrics_path: str | os.PathLike, png_path: str | os.PathLike) -> None:
    """Train loss and each dev loss against the step, as a PNG (matplotlib, Agg; no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lines = read_metrics(metrics_path) if Path(metrics_path).exists() else []
    fig = Figure(figsize=(7, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    train = [(d["step"], d["loss"]) for d in lines if d.get("type") == "train" and d.get("loss") is not None]
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1.0)
    dev_names = sorted({k for d in lines if d.get("type") == "eval" for k in d if k.startswith("dev_loss/")})
    for k in dev_names:
        pts = [(d["step"], d[k]) for d in lines if d.get("type") == "eval" and d.get(k) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=3, label=k.removeprefix("dev_loss/") + " (dev)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean token loss")
    ax.grid(alpha=0.3)
    if train or dev_names:
        ax.legend()
    fig.tight_layout()
    tmp = Path(png_path).with_name(Path(png_path).name + ".tmp.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, png_path)

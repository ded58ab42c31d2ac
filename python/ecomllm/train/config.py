"""Typed run configuration: dataclasses filled from YAML files and ``section.key=value`` overrides.

``load_config(TrainConfig, "configs/demo.yaml", ["train.learning_rate=1e-4"], section="train")``
reads the ``train:`` mapping of the file onto :class:`TrainConfig`. Nested mappings fill nested
dataclass fields, so a composite ``RunConfig`` dataclass with ``train: TrainConfig`` etc. loads
the whole file at once. Unknown keys, wrong types and bad values raise ``ValueError`` naming the
file (or the override) and the key path, e.g.
``configs/demo.yaml: train.lerning_rate: unknown key (did you mean learning_rate?)``.

Every field carries a one-line help text in ``metadata["help"]``; :func:`config_help` renders
them (with types and defaults) for ``--help``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import reprlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import yaml

__all__ = ["TrainConfig", "option", "load_config", "apply_overrides", "config_to_dict", "config_help", "ConfigError"]


class ConfigError(ValueError):
    """A configuration that cannot be used as written (names the file/override and key path)."""


def option(default, help: str, **kw):
    """A dataclass field with a help line (mutable defaults go through a factory)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class TrainConfig:
    """Hyper-parameters and bookkeeping of one training run (SFT with LoRA, or pre-training)."""

    mode: Literal["lora", "full"] = option("lora", "what is trained: 'lora' = the model's active adapter, 'full' = all parameters (pre-training)")
    learning_rate: float = option(2e-4, "peak learning rate of AdamW")
    min_lr_ratio: float = option(0.0, "the schedule decays to min_lr_ratio * learning_rate (cosine, linear)")
    lr_scheduler: Literal["cosine", "linear", "constant"] = option("cosine", "decay after warmup: cosine, linear or constant")
    warmup_steps: int = option(0, "optimizer steps of linear warmup from 0 (0: use warmup_ratio)")
    warmup_ratio: float = option(0.0, "warmup as a fraction of the total steps, used when warmup_steps is 0")
    max_steps: int = option(-1, "total optimizer steps; -1: epochs * steps per epoch")
    epochs: int = option(1, "passes over the training rows (ignored when max_steps > 0)")
    micro_batch_size: int = option(1, "packed rows per forward/backward call")
    grad_accum_steps: int = option(1, "micro-batches accumulated per optimizer step (loss normalised by the window's target tokens)")
    max_grad_norm: float = option(1.0, "clip the global gradient L2 norm to this (0: no clipping)")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay")
    betas: tuple[float, float] = option((0.9, 0.999), "AdamW (beta1, beta2)")
    eps: float = option(1e-8, "AdamW epsilon")
    seed: int = option(0, "seed of the per-epoch row shuffling")
    eval_every: int = option(0, "dev loss every N optimizer steps (0: only at the end)")
    eval_batches: int | None = option(None, "micro-batches of each dev set to evaluate (null: all)")
    save_every: int = option(0, "checkpoint every N optimizer steps (0: only at the end)")
    keep_last: int = option(2, "checkpoints kept in output_dir (older ones are deleted)")
    log_every: int = option(1, "refresh the progress bar's loss/lr every N steps")
    progress: bool = option(True, "show a tqdm progress bar on stderr")
    output_dir: str = option("runs/train", "folder for checkpoints, metrics.jsonl and loss_curve.png")
    gradient_checkpointing: bool = option(False, "recompute activations in backward (less memory, same gradients)")
    matmul_precision: Literal["highest", "high", "medium"] | None = option(
        None, "precision of the tiled products while training (ecomllm.set_float32_matmul_precision): 'medium' = bf16 "
              "operands, fp32 sums (QLoRA's usual compute dtype; faster on AMX and AVX512-BF16 CPUs); null: leave "
              "the process setting as it is")

    def __post_init__(self):
        positive = ("micro_batch_size", "grad_accum_steps", "epochs", "keep_last")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "eval_every", "save_every", "log_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"max_steps: must be -1 or >= 1, got {self.max_steps!r}")
        if self.eval_batches is not None and self.eval_batches < 1:
            raise ConfigError(f"eval_batches: must be >= 1 or null, got {self.eval_batches!r}")
        if not self.learning_rate >= 0:
            raise ConfigError(f"learning_rate: must be >= 0, got {self.learning_rate!r}")
        for name in ("min_lr_ratio", "warmup_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}: must be in [0, 1], got {getattr(self, name)!r}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"max_grad_norm: must be >= 0, got {self.max_grad_norm!r}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas: each must be in [0, 1), got {self.betas!r}")
        if self.mode not in ("lora", "full"):
            raise ConfigError(f"mode: must be 'lora' or 'full', got {self.mode!r}")
        if self.matmul_precision not in (None, "highest", "high", "medium"):
            raise ConfigError(f"matmul_precision: must be highest, high, medium or null, got {self.matmul_precision!r}")
        if self.lr_scheduler not in ("cosine", "linear", "constant"):
            raise ConfigError(f"lr_scheduler: must be cosine, linear or constant, got {self.lr_scheduler!r}")


# ---- generic loading ---------------------------------------------------------------------------

# Values in messages: bounded, since a YAML alias bomb is small as text but huge when repr'd.
_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict = 3, 6, 6, 6
_repr.maxstring, _repr.maxother, _repr.maxlong = 80, 80, 40
_short = _repr.repr


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list, dict):
        args = typing.get_args(tp)
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]" if args else origin.__name__
    return getattr(tp, "__name__", str(tp))


def _convert(value, tp, path: str):
    """``value`` (from YAML) checked against / converted to the annotation ``tp``.
    Raises ConfigError(path + message) without the source prefix."""

    def bad():
        return ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {_short(value)}")

    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad()
        return _build(tp, value, path)
    origin = typing.get_origin(tp)
    if origin is Literal:
        if not any(value == a and type(value) is type(a) for a in typing.get_args(tp)):
            raise ConfigError(f"{path}: must be one of {', '.join(repr(a) for a in typing.get_args(tp))}, "
                              f"got {_short(value)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad()
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, path)
            except ConfigError:
                continue
        raise bad()
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML follows YAML 1.1, where "2e-4" (no dot) is a string, not a number.
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad()
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} items ({_type_name(tp)}), got {len(value)}")
            return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise bad()
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_convert(k, kt, f"{path}.{k}"): _convert(v, vt, f"{path}.{k}") for k, v in value.items()}
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise bad()
        return value
    raise ConfigError(f"{path}: unsupported field type {tp!r}")


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _unknown(path: str, key, known: Sequence[str]) -> ConfigError:
    where = f"{path}.{key}" if path else str(key)
    close = difflib.get_close_matches(str(key), list(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else f" (known keys: {', '.join(known)})"
    return ConfigError(f"{where}: unknown key{hint}")


def _build(cls, values: dict, path: str = ""):
    """An instance of dataclass ``cls`` from a mapping: defaults for missing keys, errors for
    unknown keys and wrong types (with the key path)."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown(path, key, list(fields))
        kwargs[key] = _convert(value, hints[key], f"{path}.{key}" if path else str(key))
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{path}.{e}" if path else str(e)) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path or cls.__name__}: {e}") from None


def config_to_dict(cfg) -> dict:
    """The dataclass as plain YAML/JSON values (tuples become lists)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def _set_path(tree: dict, cls, keys: list[str], value, shown: str) -> None:
    """Puts ``value`` at ``keys`` in the mapping ``tree`` that will fill ``cls``; checks each key
    against the dataclass fields so that a typo fails here with the key path."""
    node, node_cls = tree, cls
    for i, key in enumerate(keys):
        fields = {f.name: f for f in dataclasses.fields(node_cls) if f.init}
        prefix = ".".join(keys[:i])
        if key not in fields:
            raise _unknown(prefix, key, list(fields))
        if i == len(keys) - 1:
            node[key] = value
            return
        sub = _hints(node_cls)[key]
        if not dataclasses.is_dataclass(sub):
            raise ConfigError(f"{'.'.join(keys[:i + 1])}: is a {_type_name(sub)}, not a section; cannot set {shown}")
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(keys[:i + 1])}: expected a mapping, got {_short(child)}")
        node, node_cls = child, sub


def _yaml_problem(e: Exception) -> str:
    """Why yaml.safe_load failed (ValueError: a bad !!int / !!float or a too-long int, bad UTF-8)."""
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(e) if isinstance(e, yaml.YAMLError) else f"{type(e).__name__}: {e}"


def apply_overrides(tree: dict, cls, overrides: Sequence[str], section: str | None = None) -> dict:
    """Applies ``"a.b=value"`` overrides to a raw mapping (values parsed by ``yaml.safe_load``)."""
    for ov in overrides:
        if not isinstance(ov, str) or "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected section.key=value")
        key, raw = ov.split("=", 1)
        keys = key.strip().split(".")
        if any(not k for k in keys):
            raise ConfigError(f"override {ov!r}: empty key in {key!r}")
        if section is not None:
            if keys[0] != section or len(keys) < 2:
                raise ConfigError(f"override {ov!r}: key must start with '{section}.'")
            keys = keys[1:]
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except (yaml.YAMLError, ValueError, RecursionError) as e:
            raise ConfigError(f"override {ov!r}: value is not valid YAML: {_yaml_problem(e)}") from None
        try:
            _set_path(tree, cls, keys, value, ov)
        except ConfigError as e:
            msg = f"{section}.{e}" if section else str(e)
            raise ConfigError(f"override {ov!r}: {msg}") from None
    return tree


def load_config(cls, path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                section: str | None = None):
    """An instance of dataclass ``cls`` from a YAML file plus ``key.path=value`` overrides.

    ``section``: read only that top-level mapping of the file (other sections are ignored) and
    expect overrides to start with ``section.``. Errors are ``ConfigError`` (a ValueError) whose
    message starts with the file name or the override and names the full key path.
    """
    source = os.fspath(path) if path is not None else "<defaults>"
    tree: dict = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(f"{source}: config file not found") from None
        except OSError as e:
            raise ConfigError(f"{source}: cannot read config file: {e.strerror or e}") from None
        except (yaml.YAMLError, ValueError, RecursionError) as e:
            raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(e)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level, got {type(loaded).__name__}")
        if section is not None:
            loaded = loaded.get(section) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{source}: {section}: expected a mapping, got {type(loaded).__name__}")
        tree = dict(loaded)
    # File errors first (they name the file), then the overrides (they name themselves).
    try:
        _build(cls, tree)
    except ConfigError as e:
        raise ConfigError(f"{source}: {section + '.' if section else ''}{e}") from None
    apply_overrides(tree, cls, overrides, section)
    try:
        return _build(cls, tree)
    except ConfigError as e:
        raise ConfigError(f"{source} with overrides {list(overrides)}: {section + '.' if section else ''}{e}") from None


def config_help(cls, prefix: str = "") -> str:
    """One line per field: ``prefix.key (type, default D): help`` -- for argparse epilogs."""
    lines = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        name = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(config_help(tp, name))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "required"
        shown = yaml.safe_dump(config_to_dict(default), default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
        lines.append(f"  {name} ({_type_name(tp)}, default {shown}): {f.metadata.get('help', '')}")
    return "\n".join(lines)

"""Atomic training checkpoints: ``output_dir/checkpoint-{step:06d}/``.

A checkpoint is written into a temporary folder ``output_dir/.tmp-checkpoint-*`` (every file
fsynced), finished by ``manifest.json`` (step, every file with its size and sha256), then renamed
into place in one ``os.rename``, so a crash at any moment leaves either the complete new
checkpoint or none. Only folders named ``checkpoint-NNNNNN`` with a manifest whose files are all
present at their recorded sizes count; :func:`latest_checkpoint` skips anything else. Older
checkpoints beyond ``keep_last`` are deleted only after the new one is in place.

Contents (see :func:`write_training_state`):

- ``adapter/`` -- the active LoRA adapter in PEFT's format (LoRA mode, and full mode with an adapter)
- ``model/`` -- the whole model via ``save_pretrained`` (full mode)
- ``optimizer.safetensors`` + ``optimizer.json`` -- AdamW moments (``exp_avg.<name>``,
  ``exp_avg_sq.<name>``) and scalars (step, lr, betas, eps, weight_decay)
- ``trainer_state.json`` -- step, data position, RNG, schedule, dropout counter, config, metrics tail
- ``manifest.json`` -- written last
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from .._errors import naming_file
from ..safetensors import load_safetensors, save_safetensors

__all__ = [
    "MANIFEST", "save_checkpoint", "list_checkpoints", "latest_checkpoint", "read_manifest",
    "prune_checkpoints", "remove_partial_checkpoints", "write_training_state", "read_training_state",
    "write_json",
]

MANIFEST = "manifest.json"
FORMAT = "ecomllm-checkpoint"
_NAME = re.compile(r"^checkpoint-(\d{6,})$")
_TMP_PREFIX = ".tmp-checkpoint-"
_TRASH_PREFIX = ".trash-checkpoint-"


# ---- durable file writing ----------------------------------------------------------------------

def _fsync_path(path: Path) -> None:
    """fsync a file or a folder (the folder's entry list, so renames inside it are durable)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, obj) -> None:
    """Writes ``obj`` as JSON and fsyncs it (inside a checkpoint's temporary folder)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- the checkpoint folder protocol ------------------------------------------------------------

def _step_of(path: Path) -> int | None:
    m = _NAME.match(path.name)
    return int(m.group(1)) if m else None


def _read_json_object(path: Path, what: str) -> dict:
    """A JSON file holding an object; ValueError naming the file for anything else."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad UTF-8 or JSON, a huge int
        raise ValueError(f"{path}: unreadable {what}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: {what} must be a JSON object, got {type(obj).__name__}")
    return obj


def read_manifest(path: str | os.PathLike, verify: bool = False) -> dict:
    """The manifest of a complete checkpoint; ValueError naming the folder if it is not one.
    ``verify``: also compare every file's sha256 (reads all of it)."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.exists():
        raise ValueError(f"{path}: not a complete checkpoint (no {MANIFEST})")
    manifest = _read_json_object(mf, "manifest")
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{mf}: not an ecomllm checkpoint manifest")
    step = _step_of(path)
    if step is not None and manifest.get("step") != step:
        raise ValueError(f"{mf}: step {manifest.get('step')!r} does not match the folder name")
    for rel, info in manifest["files"].items():
        if not isinstance(info, dict):
            raise ValueError(f"{mf}: entry {rel!r} of files must be an object with size and sha256")
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"{mf}: file {rel!r} lies outside the checkpoint folder")
        f = path / rel
        try:
            size = f.stat().st_size if f.is_file() else None
        except OSError as e:  # a name too long for the file system, say
            raise ValueError(f"{mf}: file {rel[:80]!r} cannot be checked: {e.strerror}") from None
        if size is None:
            raise ValueError(f"{path}: file {rel} listed in the manifest is missing")
        if size != info.get("size"):
            raise ValueError(f"{path}: {rel} has {size} bytes, the manifest says {info.get('size')}")
        if verify and _sha256(f) != info.get("sha256"):
            raise ValueError(f"{path}: {rel} does not match its sha256 in the manifest (corrupted)")
    return manifest


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output_dir`` as (step, path), oldest first; temporary,
    partial and foreign folders are ignored."""
    out = []
    d = Path(output_dir)
    if not d.is_dir():
        return out
    for p in d.iterdir():
        step = _step_of(p)
        if step is None or not p.is_dir():
            continue
        try:
            read_manifest(p)
        except ValueError:
            continue
        out.append((step, p))
    return sorted(out)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    cks = list_checkpoints(output_dir)
    return cks[-1][1] if cks else None


def prune_checkpoints(output_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Deletes all but the ``keep_last`` newest complete checkpoints; returns what it deleted."""
    cks = list_checkpoints(output_dir)
    doomed = [p for _, p in cks[:max(0, len(cks) - keep_last)]]
    for p in doomed:
        _remove_dir(p)
    return doomed


def remove_partial_checkpoints(output_dir: str | os.PathLike) -> None:
    """Deletes temporary folders left by a crash in the middle of a save."""
    d = Path(output_dir)
    if d.is_dir():
        for p in d.iterdir():
            if p.is_dir() and (p.name.startswith(_TMP_PREFIX) or p.name.startswith(_TRASH_PREFIX)):
                shutil.rmtree(p, ignore_errors=True)


def _remove_dir(p: Path) -> None:
    # Rename first so that a crash in the middle of rmtree never leaves a half-deleted folder
    # under a checkpoint name (it would fail validation anyway, but this keeps the dir tidy).
    trash = p.with_name(f"{_TRASH_PREFIX}{p.name}-{os.getpid()}")
    os.rename(p, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_checkpoint(output_dir: str | os.PathLike, step: int, write: Callable[[Path], None],
                    keep_last: int | None = None, extra_manifest: dict | None = None) -> Path:
    """Creates ``output_dir/checkpoint-{step:06d}`` atomically.

    ``write(tmp)`` puts the contents into the temporary folder ``tmp``; then every file is
    fsynced, the manifest is written, and the folder is renamed into place. An existing
    checkpoint of the same step is replaced. If anything raises, the temporary folder is removed
    and the existing checkpoints are untouched.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"checkpoint-{int(step):06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{int(step):06d}-", dir=out))
    try:
        write(tmp)
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                _fsync_path(p)
                files[p.relative_to(tmp).as_posix()] = {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted((q for q in tmp.rglob("*") if q.is_dir()), reverse=True):
            _fsync_path(p)
        manifest = {"format": FORMAT, "version": 1, "step": int(step), "files": files}
        manifest.update(extra_manifest or {})
        write_json(tmp / MANIFEST, manifest)
        _fsync_path(tmp)
        if final.exists():
            _remove_dir(final)  # same step written again (a resumed run): the new one wins
        os.rename(tmp, final)
        _fsync_path(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last is not None:
        prune_checkpoints(out, keep_last)
    return final


# ---- contents ----------------------------------------------------------------------------------

def _save_optimizer(dir: Path, optimizer) -> None:
    sd = optimizer.state_dict()
    tensors = {}
    for kind in ("exp_avg", "exp_avg_sq"):
        for name, arr in sd[kind].items():
            tensors[f"{kind}.{name}"] = np.asarray(arr, dtype=np.float32)
    save_safetensors(dir / "optimizer.safetensors", tensors, metadata={"step": str(int(sd["step"]))})
    o = optimizer._opt
    write_json(dir / "optimizer.json", {"step": int(sd["step"]), "lr": o.lr, "betas": list(o.betas), "eps": o.eps,
                                        "weight_decay": o.weight_decay})


def _load_optimizer(dir: Path, optimizer) -> None:
    step = _read_json_object(dir / "optimizer.json", "optimizer state").get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 2**63:
        raise ValueError(f"{dir / 'optimizer.json'}: step must be an integer in [0, 2**63), got {step!r:.40}")
    tensors = load_safetensors(dir / "optimizer.safetensors", mmap=False)
    state: dict = {"step": step, "exp_avg": {}, "exp_avg_sq": {}}
    for key, arr in tensors.items():
        kind, _, name = key.partition(".")
        if kind not in ("exp_avg", "exp_avg_sq") or not name:
            raise ValueError(f"{dir / 'optimizer.safetensors'}: unexpected tensor {key!r}")
        state[kind][name] = np.ascontiguousarray(arr, dtype=np.float32)
    with naming_file(dir / "optimizer.safetensors"):  # moments of other names or shapes than the model's
        optimizer.load_state_dict(state)


_PEFT_PREFIX = "base_model.model."


def _load_adapter_weights(dir: Path, model) -> None:
    """Copies a saved adapter's A/B into the model's active adapter (same modules and ranks)."""
    name = model.active_adapter
    if name is None:
        raise ValueError(f"{dir}: the checkpoint has an adapter but the model has no active adapter (add_lora first)")
    tensors = load_safetensors(dir / "adapter_model.safetensors", mmap=False)
    modules = model._core.adapter_modules(name)
    want = {f"{_PEFT_PREFIX}{m}.lora_{w}.weight" for m in modules for w in "AB"}
    if set(tensors) != want:
        missing, extra = sorted(want - set(tensors)), sorted(set(tensors) - want)
        raise ValueError(f"{dir}: adapter modules differ from the model's adapter '{name}' "
                         f"(missing {missing[:3]}, unexpected {extra[:3]})")
    with naming_file(dir / "adapter_model.safetensors"):  # ranks or shapes other than the adapter's
        for m in modules:
            model.set_lora_weights(m, tensors[f"{_PEFT_PREFIX}{m}.lora_A.weight"],
                                   tensors[f"{_PEFT_PREFIX}{m}.lora_B.weight"], adapter=name)


def _load_model_weights(dir: Path, model) -> None:
    tensors: dict = {}
    for f in sorted(dir.glob("*.safetensors")):
        tensors.update(load_safetensors(f, mmap=False))
    for name in model.weight_names():
        if name not in tensors:
            raise ValueError(f"{dir}: weight {name} is missing")
        with naming_file(dir):  # a shape or dtype other than the model's
            model.set_weight(name, tensors[name])


def write_training_state(dir: Path, model, optimizer, state: dict, mode: str) -> None:
    """Writes a checkpoint's contents into ``dir`` (a temporary folder of save_checkpoint)."""
    if model.active_adapter is not None:
        model.save_adapter(dir / "adapter")
    if mode == "full":
        model.save_pretrained(dir / "model")
    _save_optimizer(dir, optimizer)
    write_json(dir / "trainer_state.json", state)


def read_training_state(path: str | os.PathLike, model, optimizer, mode: str) -> dict:
    """Restores weights and optimizer from a complete checkpoint (sha256 verified) and returns
    its trainer state. The model must have been built as for the original run (same base, same
    adapter config)."""
    path = Path(path)
    read_manifest(path, verify=True)
    if mode == "full":
        if not (path / "model").is_dir():
            raise ValueError(f"{path}: no model/ folder; was it written by a LoRA run (mode='lora')?")
        _load_model_weights(path / "model", model)
    if (path / "adapter").is_dir():
        _load_adapter_weights(path / "adapter", model)
    elif mode == "lora":
        raise ValueError(f"{path}: no adapter/ folder; was it written by a full-parameter run (mode='full')?")
    _load_optimizer(path, optimizer)
    return _read_json_object(path / "trainer_state.json", "trainer state")

"""Packing tokenized examples into fixed-length training rows.

Short instruction examples waste most of a padded row, so several are packed into one row of
`seq_len` tokens. Each packed example's ``position_ids`` restart at 0, which the model reads as
"a new example starts here": attention never crosses from one example into the next, and RoPE
positions are the example's own, so a packed row trains exactly like separate rows would.
The unused tail of a row is right padding: ``attention_mask`` 0, labels IGNORE_INDEX.
"""

from __future__ import annotations

import bisect
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .._errors import naming_file
from .templates import IGNORE_INDEX, EncodedExample


@dataclass
class PackedDataset:
    """Training rows, all int32 [R, T]: input_ids, labels (IGNORE_INDEX = no loss),
    position_ids (restarting at 0 per packed example; 0 on padding), attention_mask (1 real, 0 pad).
    examples_per_row [R] says how many examples each row holds; tasks maps task -> example count."""
    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    attention_mask: np.ndarray
    examples_per_row: np.ndarray
    tasks: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        shape = self.input_ids.shape
        if len(shape) != 2:
            raise ValueError(f"input_ids must be [R, T], got shape {shape}")
        for name in ("labels", "position_ids", "attention_mask"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {shape}")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int(self.attention_mask.sum())

    @property
    def num_target_tokens(self) -> int:
        """Tokens that carry loss after the model's one-token label shift."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def rows(self, index) -> "PackedDataset":
        """A subset of rows (index: slice or integer array)."""
        idx = np.arange(len(self))[index]
        return PackedDataset(self.input_ids[idx], self.labels[idx], self.position_ids[idx],
                             self.attention_mask[idx], self.examples_per_row[idx], dict(self.tasks))

    def save(self, path: str | Path) -> None:
        """Write as a .npz file (atomically: temp + rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, input_ids=self.input_ids, labels=self.labels, position_ids=self.position_ids,
                 attention_mask=self.attention_mask, examples_per_row=self.examples_per_row,
                 task_names=np.array(list(self.tasks), dtype=str),
                 task_counts=np.array(list(self.tasks.values()), dtype=np.int64))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "PackedDataset":
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
        # corrupt zips, truncated members, pickled members, and headers declaring absurd shapes
        except (OSError, ValueError, EOFError, NotImplementedError, MemoryError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: not a packed dataset (.npz): {type(e).__name__}: {e}") from None
        missing = {"input_ids", "labels", "position_ids", "attention_mask", "examples_per_row"} - arrays.keys()
        if missing:
            raise ValueError(f"{path}: packed dataset lacks arrays {sorted(missing)}")
        for k in ("input_ids", "labels", "position_ids", "attention_mask", "examples_per_row"):
            if not np.issubdtype(arrays[k].dtype, np.integer):  # astype would turn NaN or 2.5 into garbage
                raise ValueError(f"{path}: {k} must be an integer array, got {arrays[k].dtype}")
        names, counts = (arrays.get(k, np.zeros(0, np.int64)) for k in ("task_names", "task_counts"))
        if names.ndim != 1 or counts.ndim != 1 or len(names) != len(counts):
            raise ValueError(f"{path}: task_names and task_counts must be 1-D arrays of the same length")
        with naming_file(path):  # shapes and values are checked by the constructor
            tasks = dict(zip(names.tolist(), map(int, counts)))
            return cls(*(arrays[k].astype(np.int32) for k in ("input_ids", "labels", "position_ids",
                                                               "attention_mask", "examples_per_row")), tasks)


def _bins_best_fit_decreasing(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """Group example indices into bins of total length <= seq_len (best-fit decreasing): each
    example, longest first, goes into the open bin it fills most tightly. Deterministic: ties
    keep input order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            cap, b = free.pop(k)
            bins[b].append(i)
            cap -= n
        else:
            b, cap = len(bins), seq_len - n
            bins.append([i])
        if cap > 0:
            bisect.insort(free, (cap, b))
    return bins


def pack_examples(examples: Sequence[EncodedExample], seq_len: int, pad_id: int = 0,
                  packing: bool = True) -> PackedDataset:
    """Rows of `seq_len` tokens from tokenized examples.

    packing=True puts several examples per row (best-fit decreasing); packing=False gives one
    example per right-padded row. Every example must fit in a row (encode with max_len=seq_len).
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    for i, e in enumerate(examples):
        if len(e.ids) != len(e.labels):
            raise ValueError(f"example {i}: {len(e.ids)} ids but {len(e.labels)} labels")
        if not 0 < len(e.ids) <= seq_len:
            raise ValueError(f"example {i} has {len(e.ids)} tokens; rows hold 1..{seq_len} "
                             f"(encode with max_len={seq_len} to truncate)")
    lengths = [len(e.ids) for e in examples]
    bins = _bins_best_fit_decreasing(lengths, seq_len) if packing else [[i] for i in range(len(examples))]
    R = len(bins)
    input_ids = np.full((R, seq_len), pad_id, dtype=np.int32)
    labels = np.full((R, seq_len), IGNORE_INDEX, dtype=np.int32)
    position_ids = np.zeros((R, seq_len), dtype=np.int32)
    attention_mask = np.zeros((R, seq_len), dtype=np.int32)
    per_row = np.zeros(R, dtype=np.int32)
    tasks: dict[str, int] = {}
    for r, members in enumerate(bins):
        t = 0
        for i in sorted(members):  # input order inside a row
            e, n = examples[i], lengths[i]
            input_ids[r, t:t + n] = e.ids
            labels[r, t:t + n] = e.labels
            # Nothing in this example predicts its first token (the previous position belongs to
            # the previous example), so it never carries loss: no cross-example targets.
            labels[r, t] = IGNORE_INDEX
            position_ids[r, t:t + n] = np.arange(n)
            attention_mask[r, t:t + n] = 1
            tasks[e.task] = tasks.get(e.task, 0) + 1
            t += n
        per_row[r] = len(members)
    return PackedDataset(input_ids, labels, position_ids, attention_mask, per_row, tasks)


def text_examples(tokenizer, texts: Sequence[str], seq_len: int, task: str = "text") -> list[EncodedExample]:
    """Plain-text documents for pre-training: BOS + text + EOS, every token a target, documents
    longer than `seq_len` cut into consecutive pieces (each piece a separate example)."""
    out = []
    for ids in tokenizer.encode(list(texts)):
        ids = [tokenizer.bos_id] + list(ids) + [tokenizer.eos_id]
        for s in range(0, len(ids), seq_len):
            piece = ids[s:s + seq_len]
            if len(piece) >= 2:
                out.append(EncodedExample(piece, list(piece), task))
    return out

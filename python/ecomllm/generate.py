"""Greedy decoding with a plain (non-paged) loop: every step recomputes the whole sequence.

This is the simple reference decoder for evaluations and the demo; it costs O(T^2) per sequence,
fine for small models and short answers. Serving uses the paged engine instead.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .model import Model


def greedy_generate(model: Model, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64,
                    eos_id: int | None = None, batch_size: int = 8) -> list[list[int]]:
    """Continue each prompt (token ids, BOS included) by argmax decoding.

    Returns the new tokens of each prompt, without the EOS that stopped it. Prompts are run
    `batch_size` at a time, right-padded; each row reads its next token at its own last position.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    outputs: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        outputs.extend(_greedy_batch(model, [list(p) for p in prompts[start:start + batch_size]],
                                     max_new_tokens, eos_id))
    return outputs


def _greedy_batch(model: Model, seqs: list[list[int]], max_new_tokens: int, eos_id: int | None) -> list[list[int]]:
    for i, s in enumerate(seqs):
        if not s:
            raise ValueError(f"prompt {i} is empty: it needs at least the BOS token")
    new: list[list[int]] = [[] for _ in seqs]
    done = [False] * len(seqs)
    for _ in range(max_new_tokens):
        live = [i for i, d in enumerate(done) if not d]
        if not live:
            break
        T = max(len(seqs[i]) for i in live)
        ids = np.zeros((len(live), T), dtype=np.int32)
        mask = np.zeros((len(live), T), dtype=np.int32)
        for r, i in enumerate(live):
            ids[r, :len(seqs[i])] = seqs[i]
            mask[r, :len(seqs[i])] = 1
        logits = model.forward(ids, attention_mask=mask)   # [B, T, V]
        for r, i in enumerate(live):
            tok = int(np.argmax(logits[r, len(seqs[i]) - 1]))
            if eos_id is not None and tok == eos_id:
                done[i] = True
                continue
            seqs[i].append(tok)
            new[i].append(tok)
    return new

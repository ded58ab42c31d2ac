"""Hybrid retrieval: a vector index and BM25 fused by reciprocal rank fusion (RRF).

    retriever = HybridRetriever(hnsw, bm25, embed_fn)      # k_rrf = 60
    hits = retriever.search("does it work with ipad air?", k=10, filter=allowed_ids)
    hits[0]  # Hit(id=812, score=0.0325..., vector_rank=1, bm25_rank=2)

Each retriever returns its top ``candidates`` ids; a document's fused score is
``sum_r w_r / (k_rrf + rank_r)`` over the retrievers that returned it, with ranks starting at 1
(Cormack et al., SIGIR 2009; Elasticsearch's convention; Chroma counts from 0). Ties go to the
document with the better best rank, then to the smaller id. ``vector_index`` is anything with
HNSWIndex's ``search(queries [Q, D] float32, k, ef=..., filter=None) -> (ids [Q, k] int64 padded
with -1, dists [Q, k])``; ``bm25`` anything with BM25Index's ``search(list[str], k, filter)``;
``embed_fn(list[str]) -> [n, D]`` turns texts into query vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

__all__ = ["Hit", "HybridRetriever", "reciprocal_rank_fusion"]


@dataclass(frozen=True)
class Hit:
    """One fused result: ranks are 1-based, None where that retriever did not return the id."""

    id: int
    score: float
    vector_rank: int | None
    bm25_rank: int | None


def reciprocal_rank_fusion(rankings: Sequence[Iterable[int]], k_rrf: float = 60.0,
                           weights: Sequence[float] | None = None) -> list[tuple[int, float, list[int | None]]]:
    """Fuses ranked id lists (best first; negative ids are padding and skipped).

    Returns ``(id, score, ranks)`` best first, where ``score = sum_r weights[r] / (k_rrf +
    rank_r)`` over the lists holding the id, and ``ranks[r]`` is its 1-based rank in list r
    (padding and repeats of an id take no rank) or None.
    """
    if not k_rrf >= 0:
        raise ValueError(f"k_rrf must be >= 0, got {k_rrf}")
    weights = [1.0] * len(rankings) if weights is None else [float(w) for w in weights]
    if len(weights) != len(rankings):
        raise ValueError(f"got {len(weights)} weights for {len(rankings)} rankings")
    table: dict[int, list[int | None]] = {}
    for r, ranking in enumerate(rankings):
        rank = 0
        for doc in ranking:
            doc = int(doc)
            ranks = table.setdefault(doc, [None] * len(rankings)) if doc >= 0 else None
            if ranks is None or ranks[r] is not None:
                continue  # padding, or a repeat (neither takes a rank)
            rank += 1
            ranks[r] = rank
    fused = [(doc, sum(w / (k_rrf + rk) for w, rk in zip(weights, ranks) if rk is not None), ranks)
             for doc, ranks in table.items()]
    fused.sort(key=lambda t: (-t[1], min(rk for rk in t[2] if rk is not None), t[0]))
    return fused


class HybridRetriever:
    """Dense + BM25 retrieval fused by RRF (see the module docstring)."""

    def __init__(self, vector_index, bm25, embed_fn: Callable[[list[str]], np.ndarray], k_rrf: float = 60.0,
                 weights: tuple[float, float] = (1.0, 1.0), ef: int | None = None) -> None:
        if not callable(embed_fn):
            raise TypeError("embed_fn must be callable: list[str] -> array [n, dim]")
        if not k_rrf >= 0:
            raise ValueError(f"k_rrf must be >= 0, got {k_rrf}")
        if len(weights) != 2 or min(weights) < 0:
            raise ValueError(f"weights must be two numbers >= 0 (vector, bm25), got {weights}")
        self.vector_index, self.bm25, self.embed_fn = vector_index, bm25, embed_fn
        self.k_rrf, self.weights, self.ef = float(k_rrf), (float(weights[0]), float(weights[1])), ef

    def _embed(self, queries: list[str]) -> np.ndarray:
        vecs = np.asarray(self.embed_fn(queries), dtype=np.float32)
        if vecs.ndim == 1 and len(queries) == 1:
            vecs = vecs[None, :]
        if vecs.ndim != 2 or vecs.shape[0] != len(queries):
            raise ValueError(f"embed_fn returned shape {vecs.shape} for {len(queries)} queries; expected (n, dim)")
        return np.ascontiguousarray(vecs)

    def candidates(self, queries: Sequence[str], candidates: int = 50, filter=None,
                   ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each retriever's candidate ids for each query: (vector ids [Q, c], bm25 ids [Q, c])."""
        allowed = None if filter is None else np.ascontiguousarray(np.asarray(filter), dtype=np.int64).reshape(-1)
        queries = list(queries)
        if not queries:
            empty = np.zeros((0, candidates), dtype=np.int64)
            return empty, empty
        kwargs = {"filter": allowed}
        ef = self.ef if ef is None else ef
        if ef is not None:
            kwargs["ef"] = max(int(ef), candidates)
        vec_ids, _ = self.vector_index.search(self._embed(queries), k=candidates, **kwargs)
        bm_ids, _ = self.bm25.search(queries, k=candidates, filter=allowed)
        return np.atleast_2d(np.asarray(vec_ids)), np.atleast_2d(np.asarray(bm_ids))

    def search_batch(self, queries: Sequence[str], k: int = 10, filter=None, candidates: int = 50,
                     ef: int | None = None) -> list[list[Hit]]:
        """Fused top-k for each query (fewer where the retrievers found fewer)."""
        if isinstance(queries, str):
            raise TypeError("search_batch takes a list of queries; use search() for one")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or candidates < 1:
            raise ValueError(f"candidates must be an int >= 1, got {candidates!r}")
        candidates = max(int(candidates), int(k))
        vec_ids, bm_ids = self.candidates(queries, candidates, filter, ef)
        out = []
        for v_row, b_row in zip(vec_ids, bm_ids):
            fused = reciprocal_rank_fusion([v_row, b_row], self.k_rrf, self.weights)[:k]
            out.append([Hit(doc, score, ranks[0], ranks[1]) for doc, score, ranks in fused])
        return out

    def search(self, query: str, k: int = 10, filter=None, candidates: int = 50, ef: int | None = None) -> list[Hit]:
        """Fused top-k hits for one query, best first."""
        if not isinstance(query, str):
            raise TypeError(f"query must be str, got {type(query).__name__} (use search_batch for a list)")
        return self.search_batch([query], k, filter, candidates, ef)[0]

"""Retrieval for product Q&A: hybrid (vector + BM25) search fused by reciprocal rank fusion,
and a local hashed n-gram text embedder that needs no model download.

- :class:`HybridRetriever` -- ``HybridRetriever(vector_index, bm25, embed_fn, k_rrf=60)``;
  ``search(query, k, filter, candidates) -> list[Hit]`` and ``search_batch``.
- :func:`reciprocal_rank_fusion` -- the fusion on its own, for any ranked id lists.
- :class:`HashingEmbedder` -- deterministic hashed word + character n-gram TF-IDF vectors.
"""

from __future__ import annotations

from .embedding import HashingEmbedder
from .hybrid import Hit, HybridRetriever, reciprocal_rank_fusion

__all__ = ["HashingEmbedder", "Hit", "HybridRetriever", "reciprocal_rank_fusion"]

"""BM25 keyword index over product text (C++ inverted index, numpy in and out)::

    bm = BM25Index()                                   # k1=1.2, b=0.75
    ids = bm.add(["Apple iPhone 13, 128 GB", "USB-C cable 2 m"])     # ids 0, 1
    ids, scores = bm.search("iphone 128gb", k=10)      # 1-D, best first, only matching docs
    ids, scores = bm.search(["cable", "phone"], k=5)   # 2-D [Q, k], padded with -1 / -inf
    ids, scores = bm.search("cable", k=5, filter=np.array([1, 7]))   # only these ids
    bm.delete([0]); bm.save("catalog.bm25"); bm = BM25Index.load("catalog.bm25")

Scoring (exact formula in ``csrc/index/bm25.h``): Lucene's idf ``ln(1 + (N - df + 0.5) /
(df + 0.5))`` times the saturated term frequency ``tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl /
avgdl))``, summed over the query's tokens (a repeated query token counts again). N, df and avgdl
are over the live documents and follow adds and deletes. Only documents that share a token with
the query are returned, so a search can return fewer than k. Ties go to the smaller id.

Tokenisation (:meth:`BM25Index.tokenize`): lower-cased runs of letters and digits (Latin, Greek,
Cyrillic and other scripts), split on punctuation, spaces and symbols; each CJK ideograph and
Hiragana character is a token of its own. No stemming, stop words or accent folding.

Ids are int64 in ``[0, 2**63 - 1)``. Adding an id that is already live raises ValueError (delete
it first to replace a document). The file format carries a magic number, format and tokenizer
versions, counts and a CRC-32; it is written atomically, and a truncated or corrupted file
raises ValueError on load.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from . import _core

__all__ = ["BM25Index", "bm25_tokenize"]


def bm25_tokenize(text: str) -> list[str]:
    """The tokens BM25 indexes and searches for ``text``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    return _call(_core.bm25_tokenize, [text], "text", text)


def _call(fn, texts: list[str], what: str, *args):
    """fn(*args); a str that cannot be encoded as UTF-8 (a lone surrogate) makes pybind11 reject
    the call with a TypeError about argument types: report it as the ValueError it is."""
    try:
        return fn(*args)
    except TypeError:
        for i, t in enumerate(texts):
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"{what}[{i}] is not valid Unicode: {e.reason} at position {e.start}") from None
        raise


def _texts(texts, what: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of str, not a single str (wrap it in a list)")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] must be str, got {type(t).__name__}")
    return texts


def _int64_ids(ids, what: str) -> np.ndarray:
    """ids as a contiguous 1-D int64 array; non-integer or out-of-range input is an error."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{what} must be integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{what}: value {arr.max()} does not fit in int64")
    return np.ascontiguousarray(arr, dtype=np.int64)


class BM25Index:
    """BM25 inverted index (see the module docstring for the scoring and tokenisation rules)."""

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self._ix = _core.BM25Index(float(k1), float(b))

    @classmethod
    def _wrap(cls, core_index) -> "BM25Index":
        obj = cls.__new__(cls)
        obj._ix = core_index
        return obj

    # ---- building ----------------------------------------------------------------------------
    def add(self, texts: Iterable[str], ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Indexes one document per text; returns their ids (int64).

        ids=None numbers them from :attr:`next_id` (1 + the largest id ever added). Raises
        ValueError on an id that is live or repeated (nothing is added then).
        """
        texts = _texts(texts, "texts")
        if ids is None:
            return _call(self._ix.add_auto, texts, "texts", texts)
        arr = _int64_ids(ids, "ids")
        if len(arr) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(arr)} ids")
        _call(self._ix.add, texts, "texts", texts, arr)
        return arr.copy()

    def delete(self, ids, missing_ok: bool = False) -> int:
        """Deletes documents by id; returns how many were deleted.

        An id that is not in the index raises ValueError (and nothing is deleted) unless
        missing_ok=True. N, avgdl and document frequencies are updated at once.
        """
        return int(self._ix.remove(_int64_ids(ids, "ids"), bool(missing_ok)))

    # ---- searching ---------------------------------------------------------------------------
    def search(self, query: str | Sequence[str], k: int = 10, filter=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k documents for a query, or for each query of a list.

        One query (str): ``(ids int64 [n], scores float32 [n])`` with n <= k (only documents
        sharing a token with the query). A list of queries: ``(ids [Q, k], scores [Q, k])`` with
        rows padded by -1 / -inf, searched in parallel without the GIL. ``filter``: ids allowed in
        the results (array-like of ints; ids not in the index are ignored).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        allowed = None if filter is None else _int64_ids(filter, "filter")
        if isinstance(query, str):
            return _call(self._ix.search, [query], "query", query, int(k), allowed)
        queries = _texts(query, "queries")
        return _call(self._ix.search_batch, queries, "queries", queries, int(k), allowed)

    @staticmethod
    def tokenize(text: str) -> list[str]:
        """The tokens BM25 indexes and searches for ``text``."""
        return bm25_tokenize(text)

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Writes the index atomically (temporary file, fsync, rename)."""
        self._ix.save(os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BM25Index":
        """Reads an index written by :meth:`save`; ValueError if the file is not a valid one."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no BM25 index file at {path!r}")
        return cls._wrap(_core.BM25Index.load(path))

    def to_bytes(self) -> bytes:
        """The file image :meth:`save` writes."""
        return self._ix.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "BM25Index":
        """An index from a file image; ValueError if it is not a valid one."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        return cls._wrap(_core.BM25Index.from_bytes(bytes(data)))

    def __getstate__(self) -> bytes:
        return self.to_bytes()

    def __setstate__(self, state: bytes) -> None:
        self._ix = _core.BM25Index.from_bytes(state)

    # ---- statistics --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ix)

    def __contains__(self, id) -> bool:
        return isinstance(id, (int, np.integer)) and -(2**63) <= int(id) < 2**63 and self._ix.contains(int(id))

    def ids(self) -> np.ndarray:
        """Live document ids, ascending."""
        return self._ix.ids()

    def idf(self, term: str) -> float:
        """idf of one token (already tokenised); 0.0 when no live document holds it."""
        return self._ix.idf(term)

    @property
    def k1(self) -> float:
        return self._ix.k1

    @property
    def b(self) -> float:
        return self._ix.b

    @property
    def num_terms(self) -> int:
        """Distinct tokens held by at least one live document."""
        return self._ix.num_terms

    @property
    def avgdl(self) -> float:
        """Mean document length in tokens over the live documents (0.0 when empty)."""
        return self._ix.avgdl

    @property
    def next_id(self) -> int:
        """The first id ``add(texts)`` without ids would use."""
        return self._ix.next_id

    def __repr__(self) -> str:
        return f"BM25Index(k1={self.k1}, b={self.b}, documents={len(self)}, terms={self.num_terms})"

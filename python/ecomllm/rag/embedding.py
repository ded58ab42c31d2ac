"""A local, dependency-free text embedder: hashed word and character n-gram features.

No model download: :class:`HashingEmbedder` maps a text to a fixed-size vector the way
scikit-learn's HashingVectorizer does, then weights it TF-IDF style::

    emb = HashingEmbedder(dim=384).fit(corpus_texts)    # fit is optional (learns idf)
    vecs = emb(["usb-c cable 2 m", "iphone case"])      # float32 [2, 384], rows L2-normalised

Features of a text (tokens from the BM25 tokeniser, so both retrievers see the same words):
- words: each token, and word n-grams for ``word_ngrams=(1, n)``;
- characters: the n-grams (``ngram_range``, default 2..4) of each token padded as ``<token>``,
  which match across inflections and typos ("charger" ~ "charging").
Each feature is hashed with CRC-32 (deterministic across runs and machines) to a bucket in
``[0, dim)`` and a sign (+1/-1, so collisions cancel on average instead of piling up). Counts are
damped as ``1 + ln(tf)`` and, once fitted, multiplied by a smoothed idf ``ln((1 + N) / (1 + df))
+ 1`` kept per feature hash (2**20 counters, not per bucket, so bucket collisions do not blur
it). The word part and the character part are L2-normalised separately, mixed by
``word_weight`` / ``char_weight``, and the sum is L2-normalised (an empty text gives zeros).
"""

from __future__ import annotations

import zlib
from typing import Iterable, Sequence

import numpy as np

from ..bm25 import bm25_tokenize

__all__ = ["HashingEmbedder"]

_DF_BUCKETS = 1 << 20


class HashingEmbedder:
    """Deterministic hashed n-gram embedder, usable as ``embed_fn`` of a HybridRetriever."""

    def __init__(self, dim: int = 384, ngram_range: tuple[int, int] = (2, 4), word_ngrams: tuple[int, int] = (1, 1),
                 word_weight: float = 1.0, char_weight: float = 1.0) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        for name, (lo, hi) in (("ngram_range", ngram_range), ("word_ngrams", word_ngrams)):
            if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi and hi >= 1):
                raise ValueError(f"{name} must be (lo, hi) with 0 <= lo <= hi and hi >= 1 (0 disables), got {(lo, hi)}")
        if not (word_weight >= 0 and char_weight >= 0 and word_weight + char_weight > 0):
            raise ValueError("word_weight and char_weight must be >= 0 and not both 0")
        self.dim = dim
        self.ngram_range = (int(ngram_range[0]), int(ngram_range[1]))
        self.word_ngrams = (int(word_ngrams[0]), int(word_ngrams[1]))
        self.word_weight = float(word_weight)
        self.char_weight = float(char_weight)
        self._df: np.ndarray | None = None  # uint32 [_DF_BUCKETS] document frequencies
        self._n_docs = 0

    # ---- features ----------------------------------------------------------------------------
    def _features(self, text: str) -> tuple[list[int], list[int]]:
        """CRC-32 hashes of the word features and of the character features of a text."""
        tokens = bm25_tokenize(text)
        words: list[int] = []
        lo, hi = self.word_ngrams
        if lo > 0:
            for n in range(lo, hi + 1):
                for i in range(len(tokens) - n + 1):
                    words.append(zlib.crc32(("w\x1f" + "\x1f".join(tokens[i:i + n])).encode()))
        chars: list[int] = []
        clo, chi = self.ngram_range
        if clo > 0:
            for tok in tokens:
                padded = "<" + tok + ">"
                for n in range(clo, chi + 1):
                    for i in range(len(padded) - n + 1):
                        chars.append(zlib.crc32(("c\x1f" + padded[i:i + n]).encode()))
        return words, chars

    def _block(self, hashes: list[int]) -> np.ndarray:
        """One L2-normalised block [dim] from feature hashes (tf damped, idf weighted)."""
        out = np.zeros(self.dim, dtype=np.float64)
        if not hashes:
            return out
        h, tf = np.unique(np.asarray(hashes, dtype=np.int64), return_counts=True)
        w = 1.0 + np.log(tf)
        if self._df is not None:
            w *= np.log((1.0 + self._n_docs) / (1.0 + self._df[h % _DF_BUCKETS])) + 1.0
        sign = np.where((h // self.dim) & 1, -1.0, 1.0)
        np.add.at(out, h % self.dim, sign * w)
        norm = np.linalg.norm(out)
        return out / norm if norm > 0 else out

    # ---- API ---------------------------------------------------------------------------------
    def fit(self, texts: Iterable[str]) -> "HashingEmbedder":
        """Learns document frequencies of the features over a corpus (idf weighting)."""
        df = np.zeros(_DF_BUCKETS, dtype=np.uint32)
        n = 0
        for text in _check_texts(texts):
            words, chars = self._features(text)
            if words or chars:
                df[np.unique(np.asarray(words + chars, dtype=np.int64) % _DF_BUCKETS)] += 1
            n += 1
        self._df, self._n_docs = df, n
        return self

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """float32 [n, dim] embeddings of a list of texts ([1, dim] for one str)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            words, chars = self._features(text)
            v = self.word_weight * self._block(words) + self.char_weight * self._block(chars)
            norm = np.linalg.norm(v)
            if norm > 0:
                out[i] = v / norm
        return out

    encode = __call__

    def __repr__(self) -> str:
        fitted = f", fitted on {self._n_docs} texts" if self._df is not None else ""
        return f"HashingEmbedder(dim={self.dim}, ngram_range={self.ngram_range}, word_ngrams={self.word_ngrams}{fitted})"


def _check_texts(texts) -> list[str]:
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
    return texts

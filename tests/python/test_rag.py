"""ecomllm.rag: reciprocal rank fusion, HybridRetriever, HashingEmbedder, and hybrid recall on
hetPQA evidence ranking (../shared/data; skipped when absent).

Recall measured on hetPQA_evidence_ranking_dev.csv (2,300 unique evidence texts, 386 questions
with at least one relevant evidence; HashingEmbedder(dim=384, ngram_range=(2, 4)) fitted on the
corpus, brute-force cosine, BM25 k1=1.2 b=0.75, RRF k=60 over 50 candidates each), when this
test was written:
  whole corpus     recall@10  vector 0.352  BM25 0.369  hybrid 0.385
                   recall@20  vector 0.417  BM25 0.456  hybrid 0.471
  filter = the question's product (ASIN, ~13 evidences)
                   recall@2   vector 0.535  BM25 0.528  hybrid 0.550
                   recall@3   vector 0.644  BM25 0.620  hybrid 0.667
The test prints the figures it measures (pytest -s) and asserts hybrid > each alone.
"""

from __future__ import annotations

import collections
import csv
import os

import numpy as np
import pytest

from ecomllm import BM25Index
from ecomllm.rag import HashingEmbedder, Hit, HybridRetriever, reciprocal_rank_fusion

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "qa", "contextual_product_qa",
                    "hetPQA_evidence_ranking_dev.csv")


class BruteForceIndex:
    """Exact cosine search with HNSWIndex's search signature (rows of X are L2-normalised)."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.x = np.asarray(vectors, dtype=np.float32)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.calls: list[dict] = []

    def search(self, queries, k=10, ef=64, filter=None):
        self.calls.append({"shape": np.shape(queries), "k": k, "ef": ef, "filter": filter})
        sims = np.asarray(queries, dtype=np.float32) @ self.x.T  # [Q, N]
        if filter is not None:
            sims[:, ~np.isin(self.ids, filter)] = -np.inf
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(sims, order, axis=1)
        ids = np.where(np.isfinite(top), self.ids[order], -1)
        dists = np.where(np.isfinite(top), 1.0 - top, np.inf).astype(np.float32)
        pad = k - ids.shape[1]
        if pad > 0:  # fewer points than k: pad like HNSWIndex
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            dists = np.pad(dists, ((0, 0), (0, pad)), constant_values=np.inf)
        return ids, dists


# ---- reciprocal rank fusion ------------------------------------------------------------------
def test_rrf_hand_example():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k_rrf=60)
    assert [d for d, _, _ in fused] == [1, 3, 2, 4]
    scores = {d: s for d, s, _ in fused}
    assert scores[1] == pytest.approx(1 / 61 + 1 / 62, rel=1e-12)
    assert scores[3] == pytest.approx(1 / 63 + 1 / 61, rel=1e-12)
    assert scores[2] == pytest.approx(1 / 62, rel=1e-12)
    assert scores[4] == pytest.approx(1 / 63, rel=1e-12)
    assert {d: r for d, _, r in fused} == {1: [1, 2], 3: [3, 1], 2: [2, None], 4: [None, 3]}


def test_rrf_padding_repeats_weights_and_ties():
    # -1 padding is skipped without using up a rank; a repeated id keeps its first rank.
    fused = reciprocal_rank_fusion([[-1, 7, 7, 8], [8, -1, -1]], k_rrf=0)
    assert [(d, r) for d, _, r in fused] == [(8, [2, 1]), (7, [1, None])]
    assert fused[0][1] == pytest.approx(1 / 2 + 1 / 1)
    # Equal scores: the better best rank wins, then the smaller id.
    fused = reciprocal_rank_fusion([[9, 4], [5, 6]])
    assert [d for d, _, _ in fused] == [5, 9, 4, 6]
    fused = reciprocal_rank_fusion([[1, 2], [2, 1]], weights=[3.0, 1.0])
    assert fused[0][0] == 1 and fused[0][1] == pytest.approx(3 / 61 + 1 / 62)
    assert reciprocal_rank_fusion([[], []]) == []
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([[1]], weights=[1.0, 2.0])
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([[1]], k_rrf=-1)


# ---- HybridRetriever -------------------------------------------------------------------------
CORPUS = [
    "Apple iPhone 13 silicone case, midnight blue",
    "USB-C charging cable for phones, 2 m, braided",
    "Wireless charger pad, 15 W, works with iPhone and Samsung",
    "Stainless steel water bottle, 750 ml, keeps drinks cold",
    "Trail running shoes, breathable mesh upper",
    "Phone case with card holder for Samsung Galaxy",
    "Insulated bottle for hot and cold drinks, 1 litre",
    "Charger cable USB-A to Lightning, 1 m",
]


@pytest.fixture
def small_retriever():
    emb = HashingEmbedder(dim=256).fit(CORPUS)
    ids = np.arange(100, 100 + len(CORPUS))
    vec = BruteForceIndex(emb(CORPUS), ids)
    bm = BM25Index()
    bm.add(CORPUS, ids)
    return HybridRetriever(vec, bm, emb), vec, bm


def test_hybrid_search_fuses_both_lists(small_retriever):
    retriever, vec, bm = small_retriever
    hits = retriever.search("iphone charger", k=4, candidates=6)
    assert 1 <= len(hits) <= 4 and all(isinstance(h, Hit) for h in hits)
    v_ids, b_ids = retriever.candidates(["iphone charger"], candidates=6)
    want = reciprocal_rank_fusion([v_ids[0], b_ids[0]], 60)[:4]
    assert [(h.id, h.vector_rank, h.bm25_rank) for h in hits] == [(d, r[0], r[1]) for d, _, r in want]
    assert [h.score for h in hits] == pytest.approx([s for _, s, _ in want], rel=1e-12)
    assert hits[0].id == 102  # the wireless charger: first in both lists
    assert vec.calls[0]["k"] == 6 and vec.calls[0]["shape"] == (1, 256)
    # Batch search equals one-by-one search.
    queries = ["bottle cold drinks", "samsung phone case", "running shoes", "nothing matches zzz"]
    assert retriever.search_batch(queries, k=3) == [retriever.search(q, k=3) for q in queries]


def test_hybrid_filter_candidates_and_ef(small_retriever):
    retriever, vec, _ = small_retriever
    allowed = [103, 106, 999]
    hits = retriever.search("cold drinks bottle", k=5, filter=allowed, candidates=3, ef=40)
    assert {h.id for h in hits} <= {103, 106} and len(hits) == 2
    call = vec.calls[-1]
    assert call["k"] == 5  # candidates raised to k
    assert call["ef"] == 40
    assert call["filter"].dtype == np.int64 and call["filter"].tolist() == allowed
    # ef is only passed when asked for, so an index whose search has no ef parameter works too.
    retriever.search("cable", k=2)
    assert vec.calls[-1]["ef"] == 64
    assert retriever.search("cable", k=3, filter=[]) == []


def test_hybrid_bad_input(small_retriever):
    retriever, _, _ = small_retriever
    with pytest.raises(TypeError):
        retriever.search(["a list"], k=3)
    with pytest.raises(TypeError):
        retriever.search_batch("one string", k=3)
    with pytest.raises(ValueError):
        retriever.search("x", k=0)
    with pytest.raises(ValueError):
        retriever.search("x", k=3, candidates=0)
    bad = HybridRetriever(retriever.vector_index, retriever.bm25, lambda texts: np.zeros((len(texts) + 1, 256)))
    with pytest.raises(ValueError, match="embed_fn returned shape"):
        bad.search("x")
    with pytest.raises(TypeError):
        HybridRetriever(retriever.vector_index, retriever.bm25, embed_fn=None)
    with pytest.raises(ValueError):
        HybridRetriever(retriever.vector_index, retriever.bm25, retriever.embed_fn, k_rrf=-1)


# ---- HashingEmbedder -------------------------------------------------------------------------
def test_hashing_embedder_properties():
    emb = HashingEmbedder(dim=384)
    x = emb(CORPUS + ["", "!!!"])
    assert x.shape == (len(CORPUS) + 2, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x[: len(CORPUS)], axis=1), 1.0, rtol=1e-6)
    assert not x[-2:].any()  # no tokens: zero vector
    np.testing.assert_array_equal(HashingEmbedder(dim=384)(CORPUS), x[: len(CORPUS)])  # deterministic
    assert emb("USB-C cable").shape == (1, 384)
    # Character n-grams: an inflection is closer than an unrelated text.
    a, b, c = emb(["charging cable", "charger cables", "running shoes"])
    assert a @ b > 0.3 > abs(a @ c)
    # Fitting idf changes the weights but keeps rows unit length.
    fitted = HashingEmbedder(dim=384).fit(CORPUS)
    y = fitted(CORPUS)
    assert not np.allclose(x[: len(CORPUS)], y)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-6)
    # Word features only / character features only.
    assert HashingEmbedder(dim=64, char_weight=0)("aa bb").any()
    assert HashingEmbedder(dim=64, word_weight=0)("aa bb").any()


def test_hashing_embedder_bad_input():
    for kwargs in ({"dim": 0}, {"dim": 3.5}, {"ngram_range": (4, 2)}, {"word_ngrams": (-1, 1)},
                   {"word_weight": 0, "char_weight": 0}):
        with pytest.raises(ValueError):
            HashingEmbedder(**kwargs)
    with pytest.raises(TypeError):
        HashingEmbedder()([1, 2])


# ---- hybrid recall on real product Q&A evidence ----------------------------------------------
def _load_hetpqa():
    """Unique evidence texts, and per question (with >= 1 relevant evidence): text, relevant ids,
    and the ids of all evidence for its product (ASIN)."""
    with open(DATA, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    doc_ids: dict[str, int] = {}
    relevant: dict[str, set[int]] = collections.defaultdict(set)
    question: dict[str, str] = {}
    asin_of: dict[str, str] = {}
    asin_docs: dict[str, set[int]] = collections.defaultdict(set)
    for r in rows:
        d = doc_ids.setdefault(r["candidate"], len(doc_ids))
        question[r["qid"]] = r["question"]
        asin_of[r["qid"]] = r["ASIN"]
        asin_docs[r["ASIN"]].add(d)
        if r["label"] == "1":
            relevant[r["qid"]].add(d)
    qids = sorted(relevant)
    return (list(doc_ids), [question[q] for q in qids], [relevant[q] for q in qids],
            [np.array(sorted(asin_docs[asin_of[q]])) for q in qids])


def _recall(result_rows, relevant) -> float:
    return float(np.mean([len({int(i) for i in row if i >= 0} & rel) / len(rel)
                          for row, rel in zip(result_rows, relevant)]))


@pytest.mark.skipif(not os.path.exists(DATA), reason=f"hetPQA data not found at {DATA} (../shared/data)")
def test_hybrid_improves_recall_on_hetpqa():
    texts, queries, relevant, product_docs = _load_hetpqa()
    assert len(texts) > 1000 and len(queries) > 300
    emb = HashingEmbedder(dim=384, ngram_range=(2, 4)).fit(texts)
    ids = np.arange(len(texts))
    vec = BruteForceIndex(emb(texts), ids)
    bm = BM25Index()
    bm.add(texts, ids)
    retriever = HybridRetriever(vec, bm, emb, k_rrf=60)

    measured = {}
    # Whole corpus.
    for k in (10, 20):
        v_ids, b_ids = retriever.candidates(queries, candidates=k)
        hybrid = [[h.id for h in hits] for hits in retriever.search_batch(queries, k=k, candidates=50)]
        measured[f"corpus@{k}"] = (_recall(v_ids, relevant), _recall(b_ids, relevant), _recall(hybrid, relevant))
    # Filtered to the question's product, as a product page's Q&A would search.
    for k in (2, 3):
        v_rows, b_rows, h_rows = [], [], []
        for q, allowed in zip(queries, product_docs):
            v_ids, b_ids = retriever.candidates([q], candidates=k, filter=allowed)
            v_rows.append(v_ids[0])
            b_rows.append(b_ids[0])
            hits = retriever.search(q, k=k, filter=allowed, candidates=50)
            assert {h.id for h in hits} <= set(allowed.tolist())
            h_rows.append([h.id for h in hits])
        measured[f"product@{k}"] = (_recall(v_rows, relevant), _recall(b_rows, relevant), _recall(h_rows, relevant))

    for name, (v, b, h) in measured.items():
        print(f"hetPQA recall {name}: vector {v:.3f}  bm25 {b:.3f}  hybrid {h:.3f}")
    for name, (v, b, h) in measured.items():
        assert h > max(v, b), f"{name}: hybrid {h:.3f} does not beat vector {v:.3f} / bm25 {b:.3f}"

"""BM25Index against a straightforward pure-Python BM25 (same tokens, same formula).

Tolerance: scores within 1e-5 relative of the float64 reference (the index returns float32).
"""

from __future__ import annotations

import math
import os
import pickle
import random
import struct
import threading
import zlib

import numpy as np
import pytest

from ecomllm import BM25Index
from ecomllm.bm25 import bm25_tokenize

RTOL = 1e-5

FIXTURE_TEXTS = [
    "Apple iPhone 13 (128 GB) - Midnight, 6.1-inch Super Retina XDR display",
    "Samsung Galaxy S22 Ultra 5G, 256GB, Phantom Black; S Pen included",
    "USB-C to Lightning cable, 2 m, MFi certified - works with iPhone and iPad",
    "Café au lait mug, 350 ml, porcelain. Dishwasher-safe; microwave-safe.",
    "Кофемашина Philips EP2220, черная — капучино и эспрессо",
    "Σακίδιο πλάτης ΑΔΙΑΒΡΟΧΟ 30 λίτρα",
    "防水 背包 30L 户外 登山包",
    "Running shoes for men, breathable mesh, size 42 EU / 8.5 UK",
    "Men's running shoes shoes shoes - lightweight trail runner",
    "Stainless steel water bottle 750 ml, keeps drinks cold 24 h",
    "",
    "!!! *** ---",
    "Samsung 980 PRO 1TB PCIe 4.0 NVMe SSD",
    "wireless earbuds with charging case, bluetooth 5.3, IPX5 water resistant",
]


# ---- the reference ---------------------------------------------------------------------------
class RefBM25:
    """BM25 as bm25.h states it, over a dict id -> tokens."""

    def __init__(self, k1=1.2, b=0.75):
        self.k1, self.b = k1, b
        self.docs: dict[int, list[str]] = {}

    def add(self, texts, ids):
        for t, i in zip(texts, ids):
            self.docs[int(i)] = bm25_tokenize(t)

    def delete(self, ids):
        for i in ids:
            del self.docs[int(i)]

    def scores(self, query, allowed=None) -> dict[int, float]:
        n = len(self.docs)
        if n == 0:
            return {}
        avgdl = sum(len(d) for d in self.docs.values()) / n
        df: dict[str, int] = {}
        for d in self.docs.values():
            for t in set(d):
                df[t] = df.get(t, 0) + 1
        out: dict[int, float] = {}
        for t in bm25_tokenize(query):
            if t not in df:
                continue
            idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            for i, d in self.docs.items():
                if allowed is not None and i not in allowed:
                    continue
                tf = d.count(t)
                if tf:
                    denom = tf + self.k1 * (1 - self.b + self.b * len(d) / avgdl)
                    out[i] = out.get(i, 0.0) + idf * tf * (self.k1 + 1) / denom
        return out

    def top(self, query, k, allowed=None):
        s = self.scores(query, allowed)
        return sorted(s.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def synthetic_corpus(n_docs, seed=0):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(80)] + ["Red", "RED", "red", "blue", "Ñandú", "ЧАЙ", "чай", "3", "5mm"]
    weights = [1.0 / (r + 1) for r in range(len(vocab))]  # Zipf-like
    texts = []
    for _ in range(n_docs):
        words = rng.choices(vocab, weights, k=rng.randint(0, 25))
        texts.append(rng.choice([" ", ", ", " - ", "/"]).join(words))
    queries = [" ".join(rng.choices(vocab, weights, k=rng.randint(1, 5))) for _ in range(40)]
    return texts, queries + ["w1 w1 w1", "nothing-matches-this", "", "red blue"]


def assert_matches_reference(bm, ref, queries, k=None, allowed=None):
    k = k or max(len(ref.docs), 1)
    for q in queries:
        ids, scores = bm.search(q, k=k, filter=None if allowed is None else np.array(sorted(allowed)))
        want = ref.top(q, k, allowed)
        assert ids.dtype == np.int64 and scores.dtype == np.float32
        assert len(ids) == len(want), q
        ref_scores = ref.scores(q, allowed)
        np.testing.assert_allclose(scores, [ref_scores[int(i)] for i in ids], rtol=RTOL, err_msg=q)
        np.testing.assert_allclose(scores, [s for _, s in want], rtol=RTOL, err_msg=q)
        # Same set of ids; the order may differ only where the reference scores tie to ~1e-12.
        assert set(ids.tolist()) == {i for i, _ in want}, q
        got = [ref_scores[int(i)] for i in ids]
        assert all(a >= b - 1e-9 * abs(a) for a, b in zip(got, got[1:])), q


# ---- tokeniser -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, tokens",
    [
        ("Hello, WORLD!", ["hello", "world"]),
        ("3.5mm jack / USB-C 2.0", ["3", "5mm", "jack", "usb", "c", "2", "0"]),
        ("don't stop_me", ["don", "t", "stop", "me"]),
        ("CAFÉ Crème brûlée ÀÖØÞ", ["café", "crème", "brûlée", "àöøþ"]),
        ("ŁÓDŹ Ğüneş İstanbul ŒUVRE Ÿ", ["łódź", "ğüneş", "istanbul", "œuvre", "ÿ"]),
        ("ȘTEFAN ȚARĂ ǅ", ["ștefan", "țară", "ǆ"]),
        ("ΣΊΣΥΦΟΣ Ωμέγα ΆΈΉΊΌΎΏ", ["σίσυφοσ", "ωμέγα", "άέήίόύώ"]),
        ("ПРИВЕТ Ёлка ЇЖАК Ѣ", ["привет", "ёлка", "їжак", "ѣ"]),
        ("VIỆT NAM ẞ", ["việt", "nam", "ß"]),
        ("ＡＢＣ１２３", ["ａｂｃ１２３"]),
        ("e\u0301te\u0301", ["e\u0301te\u0301"]),  # combining marks stay in their word
        ("Sony™ 50℃ ★5 ✓ 😀ok", ["sony", "50", "5", "ok"]),
        ("price: 1,299€ ×2 ÷ ½", ["price", "1", "299", "2"]),
        ("iPhone手机壳 カタカナ ひらがな", ["iphone", "手", "机", "壳", "カタカナ", "ひ", "ら", "が", "な"]),
        ("한국어 텍스트 العربية עברית", ["한국어", "텍스트", "العربية", "עברית"]),
        ("a\u00a0b\u2003c\u3000d\ufeffe", ["a", "b", "c", "d", "e"]),
        ("", []),
        ("  ,.;  ", []),
    ],
)
def test_tokenizer_rules(text, tokens):
    assert bm25_tokenize(text) == tokens
    assert BM25Index.tokenize(text) == tokens


def test_tokenizer_bad_input():
    with pytest.raises(TypeError):
        bm25_tokenize(b"bytes")
    with pytest.raises(ValueError, match="not valid Unicode"):
        bm25_tokenize("a\udc80b")  # lone surrogate: not encodable as UTF-8


# ---- scores against the reference ------------------------------------------------------------
def test_scores_match_reference_fixture():
    bm, ref = BM25Index(), RefBM25()
    ids = bm.add(FIXTURE_TEXTS)
    np.testing.assert_array_equal(ids, np.arange(len(FIXTURE_TEXTS)))
    ref.add(FIXTURE_TEXTS, ids)
    queries = ["iphone cable", "Samsung 1TB", "running shoes", "cafe", "CAFÉ", "кофемашина эспрессо",
               "ΑΔΙΑΒΡΟΧΟ σακίδιο", "背包", "water 750 ml", "shoes shoes", "zzz", ""]
    assert_matches_reference(bm, ref, queries)
    assert len(bm) == len(FIXTURE_TEXTS)
    assert bm.avgdl == pytest.approx(sum(len(bm25_tokenize(t)) for t in FIXTURE_TEXTS) / len(FIXTURE_TEXTS))
    assert bm.idf("shoes") == pytest.approx(math.log(1 + (len(FIXTURE_TEXTS) - 2 + 0.5) / 2.5))


@pytest.mark.parametrize("k1, b", [(1.2, 0.75), (0.9, 0.4), (2.0, 1.0), (0.0, 0.0)])
def test_scores_match_reference_synthetic_with_deletes(k1, b):
    texts, queries = synthetic_corpus(400, seed=int(k1 * 10 + b * 100))
    ids = np.arange(1000, 1000 + 3 * len(texts), 3)  # sparse, non-zero-based ids
    bm, ref = BM25Index(k1, b), RefBM25(k1, b)
    bm.add(texts, ids)
    ref.add(texts, ids)
    assert_matches_reference(bm, ref, queries)
    assert_matches_reference(bm, ref, queries[:10], k=7)

    rng = np.random.default_rng(1)
    gone = rng.choice(ids, size=150, replace=False)
    assert bm.delete(gone) == 150
    ref.delete(gone)
    assert len(bm) == 250
    assert_matches_reference(bm, ref, queries)

    # Past half dead the postings are compacted; re-adding deleted ids with new text works.
    more = rng.choice(sorted(set(ids.tolist()) - set(gone.tolist())), size=120, replace=False)
    bm.delete(more)
    ref.delete(more)
    new_texts = [f"w{i} w{i + 1} fresh" for i in range(40)]
    bm.add(new_texts, gone[:40])
    ref.add(new_texts, gone[:40])
    assert_matches_reference(bm, ref, queries + ["fresh w3"])
    assert bm.num_terms == len({t for d in ref.docs.values() for t in d})
    np.testing.assert_array_equal(bm.ids(), sorted(ref.docs))


def test_batch_equals_single_and_pads():
    texts, queries = synthetic_corpus(300, seed=5)
    bm = BM25Index()
    bm.add(texts)
    k = 12
    ids, scores = bm.search(queries, k=k)
    assert ids.shape == (len(queries), k) and scores.shape == (len(queries), k)
    for qi, q in enumerate(queries):
        one_ids, one_scores = bm.search(q, k=k)
        n = len(one_ids)
        np.testing.assert_array_equal(ids[qi, :n], one_ids)
        np.testing.assert_array_equal(scores[qi, :n], one_scores)
        assert (ids[qi, n:] == -1).all() and np.isneginf(scores[qi, n:]).all()
    empty_ids, empty_scores = bm.search([], k=3)
    assert empty_ids.shape == (0, 3) and empty_scores.shape == (0, 3)


def test_ties_are_broken_by_id():
    bm = BM25Index()
    bm.add(["red shoe", "blue hat", "red shoe", "red shoe", "green"], ids=[9, 1, 3, 7, 2])
    ids, scores = bm.search("red", k=10)
    assert ids.tolist() == [3, 7, 9]
    assert scores[0] == scores[1] == scores[2]
    batch_ids, _ = bm.search(["red", "shoe red"], k=2)
    assert batch_ids.tolist() == [[3, 7], [3, 7]]


def test_fewer_than_k_and_empty_index():
    bm = BM25Index()
    ids, scores = bm.search("anything", k=5)
    assert ids.shape == (0,) and scores.shape == (0,)
    ids, scores = bm.search(["a", "b"], k=3)
    assert (ids == -1).all() and np.isneginf(scores).all()
    bm.add(["alpha beta", "beta gamma", "delta"])
    ids, _ = bm.search("beta", k=10)
    assert sorted(ids.tolist()) == [0, 1]
    ids, _ = bm.search("unknown words only", k=10)
    assert len(ids) == 0
    bm.add(["", "..."])  # documents without tokens are counted (N, avgdl) but never match
    assert len(bm) == 5
    assert bm.avgdl == pytest.approx(5 / 5)


def test_filters():
    texts, queries = synthetic_corpus(300, seed=9)
    bm, ref = BM25Index(), RefBM25()
    ids = bm.add(texts)
    ref.add(texts, ids)
    rng = np.random.default_rng(3)
    for frac in (0.01, 0.1, 0.5):
        allowed = set(rng.choice(ids, size=max(1, int(frac * len(ids))), replace=False).tolist())
        assert_matches_reference(bm, ref, queries[:15], allowed=allowed)
        batch_ids, _ = bm.search(queries, k=10, filter=np.array(sorted(allowed)))
        assert set(batch_ids[batch_ids >= 0].tolist()) <= allowed
    # Empty filter: nothing; unknown / deleted ids in the filter are ignored; lists are accepted.
    assert len(bm.search("red", k=5, filter=np.array([], dtype=np.int64))[0]) == 0
    red_ids = bm.search("red", k=300)[0]
    bm.delete(red_ids[:1])
    got, _ = bm.search("red", k=5, filter=[int(red_ids[0]), int(red_ids[1]), 10**12])
    assert got.tolist() == [int(red_ids[1])]
    # Statistics (N, df, avgdl) are the whole index's: a filter selects, it does not re-score.
    ref.delete(red_ids[:1])
    allowed = {int(red_ids[1])}
    assert bm.search("red", k=5, filter=list(allowed))[1][0] == pytest.approx(ref.scores("red")[int(red_ids[1])], rel=RTOL)


# ---- Unicode search --------------------------------------------------------------------------
def test_unicode_search():
    bm = BM25Index()
    bm.add(FIXTURE_TEXTS)
    assert bm.search("CAFÉ", k=1)[0].tolist() == [3]
    assert len(bm.search("cafe", k=1)[0]) == 0  # no accent folding
    assert bm.search("КОФЕМАШИНА", k=1)[0].tolist() == [4]
    assert bm.search("σακίδιο", k=1)[0].tolist() == [5]
    assert bm.search("背", k=1)[0].tolist() == [6]  # each ideograph is a token
    assert bm.search("登山", k=1)[0].tolist() == [6]


# ---- persistence -----------------------------------------------------------------------------
def _built_index():
    texts, queries = synthetic_corpus(200, seed=11)
    bm = BM25Index(k1=1.5, b=0.6)
    bm.add(texts, ids=np.arange(5, 5 + 2 * len(texts), 2))
    bm.delete([5, 7, 9, 399])
    return bm, queries


def test_save_load_round_trip(tmp_path):
    bm, queries = _built_index()
    path = tmp_path / "catalog.bm25"
    bm.save(path)
    assert sorted(os.listdir(tmp_path)) == ["catalog.bm25"]  # no temporary file left behind
    data = path.read_bytes()
    assert data[:8] == b"ECMBM25\x00"
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])
    loaded = BM25Index.load(path)
    assert (loaded.k1, loaded.b, len(loaded), loaded.num_terms, loaded.next_id) == (
        1.5, 0.6, len(bm), bm.num_terms, bm.next_id)
    for a, b in zip(bm.search(queries, k=20), loaded.search(queries, k=20)):
        np.testing.assert_array_equal(a, b)
    assert loaded.to_bytes() == data
    # Saving again replaces the file atomically; pickling goes through the same bytes.
    loaded.add(["brand new"])
    loaded.save(path)
    assert BM25Index.load(path).search("brand", k=1)[0].tolist() == [bm.next_id]
    clone = pickle.loads(pickle.dumps(bm))
    np.testing.assert_array_equal(clone.search(queries, k=5)[0], bm.search(queries, k=5)[0])
    with pytest.raises(FileNotFoundError):
        BM25Index.load(tmp_path / "missing.bm25")
    if os.path.exists("/proc/self/maps"):  # a file that reports 0 bytes and cannot seek (was RuntimeError)
        with pytest.raises(ValueError, match="not a BM25 index"):
            BM25Index.load("/proc/self/maps")


def test_truncated_and_flipped_files_raise(tmp_path):
    bm, _ = _built_index()
    data = bm.to_bytes()
    rng = random.Random(0)
    cuts = sorted(set(range(0, 120)) | {rng.randrange(len(data)) for _ in range(200)} | {len(data) - 1})
    for n in cuts:
        with pytest.raises(ValueError):
            BM25Index.from_bytes(data[:n])
    for _ in range(400):
        pos = rng.randrange(len(data))
        bad = bytearray(data)
        bad[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(ValueError):
            BM25Index.from_bytes(bytes(bad))
    with pytest.raises(ValueError):
        BM25Index.from_bytes(data + b"\x00")
    path = tmp_path / "cut.bm25"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.bm25"):
        BM25Index.load(path)


def _forge(data: bytes, offset: int, fmt: str, value) -> bytes:
    """data with one field replaced and the checksum recomputed (a valid-looking hostile file)."""
    bad = bytearray(data)
    struct.pack_into(fmt, bad, offset, value)
    body = bytes(bad[:-4])
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize(
    "offset, fmt, value, message",
    [
        (0, "<B", ord("X"), "magic"),
        (8, "<I", 2, "format version"),
        (12, "<I", 99, "tokenizer version"),
        (16, "<d", float("nan"), "k1"),
        (24, "<d", 1.5, "b must be"),
        (32, "<Q", 2**60, "counts exceed"),
        (32, "<Q", 2, "unread payload"),
        (40, "<Q", 3, "corrupt"),
        (48, "<Q", 7, "totals"),
        (56, "<q", 1, "out of range"),
        (64, "<Q", 12345, "totals"),
        (72, "<Q", 10, "payload"),
        (80, "<I", 2**31, "truncated"),  # first term's length
        (84, "<B", ord("A"), "normalised token"),  # first term's first byte: upper case
    ],
)
def test_forged_files_raise(offset, fmt, value, message):
    bm = BM25Index()
    bm.add(["alpha beta beta", "gamma alpha", "delta"])
    data = bm.to_bytes()
    with pytest.raises(ValueError, match=message):
        BM25Index.from_bytes(_forge(data, offset, fmt, value))


def test_forged_document_entries_raise():
    bm = BM25Index()
    bm.add(["alpha beta beta"], ids=[4])
    data = bm.to_bytes()
    # Payload: terms "alpha" (4 + 5 bytes), "beta" (4 + 4); then the document at 80 + 17.
    doc = 80 + 17
    assert struct.unpack_from("<qII", data, doc) == (4, 3, 2)
    cases = [
        (doc + 16, "<I", 9, "bad term entry"),   # term index out of range
        (doc + 20, "<I", 0, "bad term entry"),   # tf = 0
        (doc + 24, "<I", 0, "bad term entry"),   # terms not ascending
        (doc + 8, "<I", 4, "does not match"),    # length != sum of tf
        (doc, "<q", -3, "out of range"),         # negative id
        (doc + 12, "<I", 2**30, "exceeds"),      # term count beyond the payload
    ]
    for offset, fmt, value, message in cases:
        with pytest.raises(ValueError, match=message):
            BM25Index.from_bytes(_forge(data, offset, fmt, value))


# ---- bad input -------------------------------------------------------------------------------
def test_bad_input():
    bm = BM25Index()
    bm.add(["one", "two"], ids=[1, 2])
    with pytest.raises(ValueError, match="already in the index"):
        bm.add(["again"], ids=[2])
    with pytest.raises(ValueError, match="twice"):
        bm.add(["a", "b"], ids=[5, 5])
    with pytest.raises(ValueError, match=r"\[0, 2\^63"):
        bm.add(["neg"], ids=[-1])
    with pytest.raises(ValueError, match="2 texts but 1 ids"):
        bm.add(["a", "b"], ids=[7])
    with pytest.raises(ValueError, match="1-D"):
        bm.add(["a"], ids=[[7]])
    with pytest.raises(ValueError, match="not valid Unicode"):
        bm.add(["fine", "bad \ud800"], ids=[8, 9])
    assert len(bm) == 2 and 8 not in bm  # failed adds change nothing
    with pytest.raises(TypeError):
        bm.add("a single string")
    with pytest.raises(TypeError):
        bm.add([b"bytes"])
    with pytest.raises(TypeError):
        bm.add(["x"], ids=[1.5])
    with pytest.raises(ValueError, match="not in the index"):
        bm.delete([1, 99])
    assert len(bm) == 2  # nothing deleted
    assert bm.delete([1, 99], missing_ok=True) == 1
    with pytest.raises(ValueError, match="k must be"):
        bm.search("one", k=0)
    with pytest.raises(TypeError):
        bm.search("one", k=2.5)
    with pytest.raises(TypeError):
        bm.search(["ok", 3], k=2)
    with pytest.raises(TypeError):
        bm.search("one", k=2, filter=[0.5])
    for k1, b in [(-1, 0.75), (1.2, 1.5), (float("inf"), 0.5), (1.2, float("nan"))]:
        with pytest.raises(ValueError):
            BM25Index(k1, b)
    with pytest.raises(TypeError):
        BM25Index.from_bytes("not bytes")


def test_concurrent_search_during_add():
    texts, queries = synthetic_corpus(200, seed=2)
    bm = BM25Index()
    bm.add(texts[:50])
    errors = []

    def searcher():
        try:
            for _ in range(30):
                ids, _ = bm.search(queries, k=5)
                assert ((ids >= -1) & (ids < 200)).all()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(50, 200, 10):
        bm.add(texts[i : i + 10])
        bm.delete([i - 50], missing_ok=True)
    for t in threads:
        t.join()
    assert not errors
    assert len(bm) == 200 - 15

"""The bundled catalogue: sizes, exact MAVE spans, noise, grounded questions, determinism, files.

Also a learnability check: a bag-of-words nearest-centroid classifier (numpy only) trained on 80% of
the titles must put >= 70% of the held-out 20% in the right leaf (chance is 1 / #leaves, ~0.2%).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np
import pytest

from ecomllm.data import (CATEGORY_SEPARATOR, Catalog, DataError, GENERAL_TASK, NOT_AVAILABLE, Product, QAItem,
                          UNANSWERABLE_ANSWER, from_dict, generate_catalog, pretraining_corpus, read_catalog, to_dict,
                          write_catalog)
from ecomllm.data import catalog as catalog_module

N_PRODUCTS = 3000


@pytest.fixture(scope="module")
def cat() -> Catalog:
    return generate_catalog(seed=0, n_products=N_PRODUCTS, qa_per_product=2, n_general=400)


@pytest.fixture(scope="module")
def written(cat, tmp_path_factory):
    out = tmp_path_factory.mktemp("catalog")
    write_catalog(cat, str(out))
    return out


def _as_json(c: Catalog) -> str:
    return json.dumps([c.taxonomy_paths, [to_dict(p) for p in c.products], [to_dict(q) for q in c.qa],
                       [to_dict(e) for e in c.general]], sort_keys=True)


def test_taxonomy_size_and_shape(cat):
    leaves = cat.taxonomy_paths
    assert len(leaves) >= 300
    assert len({p[0] for p in leaves}) >= 15
    assert all(2 <= len(p) <= 4 for p in leaves)
    assert len({tuple(p) for p in leaves}) == len(leaves)
    assert len({p[-1] for p in leaves}) == len(leaves), "leaf names are unique"
    prefixes = {tuple(p[:d]) for p in leaves for d in range(1, len(p))}
    assert not prefixes & {tuple(p) for p in leaves}, "no leaf is also an inner node"
    # every leaf gets products (n_products >= #leaves) and products use only leaves
    used = {tuple(p.category) for p in cat.products}
    assert used == {tuple(p) for p in leaves}


def test_attribute_schemas(cat):
    all_keys = {k for p in cat.products for k in p.meta["attribute_keys"]}
    assert len(all_keys) >= 25, sorted(all_keys)
    assert len(catalog_module.ATTRIBUTES) >= 25
    for p in cat.products:
        keys = p.meta["attribute_keys"]
        assert 4 <= len(keys) <= 8 and keys[0] == "Brand" and len(set(keys)) == len(keys)
        assert set(p.attributes) <= set(keys)
        assert p.attributes["Brand"] == p.brand
        assert p.source == "bundled" and re.fullmatch(r"B\d{9}", p.id)


def test_spans_locate_every_value_exactly(cat):
    for p in cat.products:
        assert p.paragraphs[0].source == "title" and p.paragraphs[0].text == p.title
        assert p.paragraphs[1].source == "description" and p.paragraphs[1].text == p.description
        assert all(para.source == "feature" for para in p.paragraphs[2:]) and len(p.paragraphs) >= 4
        for s in p.spans:
            assert 0 <= s.pid < len(p.paragraphs)
            assert p.paragraphs[s.pid].text[s.begin:s.end] == s.value == p.attributes[s.key], (p.id, s)
        assert {s.key for s in p.spans} == set(p.attributes), "every stated value has evidence"
    assert len({p.id for p in cat.products}) == len(cat.products)


def test_noise_is_present(cat):
    n = len(cat.products)
    titles = [p.title for p in cat.products]
    marketing = sum(any(m in t for m in catalog_module.MARKETING) for t in titles)
    abbrev = sum(bool(re.search(r"\bw/ |\bW/ |\d ?-?[Pp]k\b|\d ?ct\b|\b(Blk|Wht|Gry|Slvr)\b|\d (pcs|Pcs|PCS)\b", t))
                 for t in titles)
    missing = sum(len(p.attributes) < len(p.meta["attribute_keys"]) for p in cat.products)
    assert marketing >= 0.1 * n, marketing
    assert abbrev >= 0.05 * n, abbrev
    assert 0.2 * n <= missing <= 0.98 * n, missing
    # unit variants: the same quantity is written in several ways across products
    volumes = [p.attributes[k] for p in cat.products for k in ("Capacity", "Volume") if k in p.attributes]
    assert any(re.fullmatch(r"\d+ ml", v) for v in volumes) and any(re.fullmatch(r"\d+ML", v) for v in volumes)
    assert any(re.fullmatch(r"[\d.]+ ?L(iter|itre)?", v) for v in volumes)
    assert any(v.endswith("oz") for v in volumes)
    screens = [p.attributes["Screen Size"] for p in cat.products if "Screen Size" in p.attributes]
    assert any(v.endswith('"') for v in screens) and any(v.endswith("-inch") for v in screens)
    models = [p.attributes["Model Number"] for p in cat.products if "Model Number" in p.attributes]
    assert models and all(re.fullmatch(r"[A-Z]{2,3}-?\d{3,4}(B|X|S|-2|Pro)?", m) for m in models)
    colors = {p.attributes["Color"] for p in cat.products if "Color" in p.attributes}
    assert {"Black", "Jet Black", "Onyx"} <= colors, "colour synonyms"
    # the noise tags the generator records agree
    tags = {t for p in cat.products for t in p.meta["noise"]}
    assert {"marketing", "abbreviation", "unit_variant", "missing"} <= tags


def test_questions_types_and_consistency(cat):
    products = {p.id: p for p in cat.products}
    assert 0.9 * 2 * N_PRODUCTS <= len(cat.qa) <= 2 * N_PRODUCTS
    kinds = {(q.qtype, q.answerable) for q in cat.qa}
    assert {("yesno", True), ("descriptive", True), ("yesno", False), ("descriptive", False)} <= kinds
    n_value = n_claim = 0
    for q in cat.qa:
        p = products[q.product_id]
        assert q.evidence and all(isinstance(e, str) and e for e in q.evidence)
        assert q.qtype in ("yesno", "descriptive") and q.source == "bundled"
        text = " ".join(para.text for para in p.paragraphs)
        assert all(e in text for e in q.evidence), "evidence is the product's own text"
        if not q.answerable:
            assert q.answer == UNANSWERABLE_ANSWER
            if "key" in q.meta:
                assert q.meta["key"] not in p.attributes
            else:
                assert q.meta["claim"] not in p.meta["claims"]
            continue
        assert q.answer != UNANSWERABLE_ANSWER
        if q.qtype == "descriptive":
            value = p.attributes[q.meta["key"]]
            assert value in q.answer and any(value in e for e in q.evidence)
            continue
        assert q.answer.startswith(("Yes, ", "No, ")), q.answer
        says_yes = q.answer.startswith("Yes")
        if q.meta["kind"] == "claim":
            n_claim += 1
            claim = q.meta["claim"]
            assert says_yes == p.meta["claims"][claim]
            stated = catalog_module.CLAIMS[claim][1 if says_yes else 2]
            # the sentence that states (or denies) it, maybe without its final period or after a bullet head
            assert any(s.rstrip(".") in e for s in stated for e in q.evidence), (q.evidence, stated)
        else:
            n_value += 1
            key, asked = q.meta["key"], q.meta["asked"]
            value = p.attributes[key]
            assert value in q.answer and any(value in e for e in q.evidence)
            if key == "Color":  # independent of the generator's bookkeeping: the synonym table
                assert says_yes == (value in catalog_module.COLORS[asked]), (value, asked, q.answer)
            else:
                assert says_yes == (asked == value), (value, asked, q.answer)
            assert asked.lower() in q.question.lower()
    assert n_value > 100 and n_claim > 100
    assert sum(q.answer.startswith("Yes") for q in cat.qa) > 100
    assert sum(q.answer.startswith("No") for q in cat.qa) > 100


def test_general_instructions(cat):
    assert len(cat.general) == 400
    assert all(e.task == GENERAL_TASK and e.prompt and e.completion for e in cat.general)
    assert len({e.meta["kind"] for e in cat.general}) >= 6
    checked = 0
    for e in cat.general:  # the arithmetic is right
        m = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", e.prompt)
        if m:
            a, op, b = int(m[1]), m[2], int(m[3])
            expected = {"+": a + b, "-": a - b, "*": a * b}[op]
            assert e.completion == f"{a} {op} {b} = {expected}."
            checked += 1
    assert checked > 5


def test_deterministic_by_seed():
    a = generate_catalog(seed=7, n_products=300, n_general=50)
    b = generate_catalog(seed=7, n_products=300, n_general=50)
    c = generate_catalog(seed=8, n_products=300, n_general=50)
    assert _as_json(a) == _as_json(b)
    assert _as_json(a) != _as_json(c)
    assert [p.title for p in a.products] != [p.title for p in c.products]
    assert [e.prompt for e in a.general] != [e.prompt for e in c.general]


def test_write_read_round_trip(cat, written):
    names = sorted(os.listdir(written))
    assert names == ["general.jsonl", "products.jsonl", "products.mave.jsonl", "qa.jsonl", "taxonomy.txt"]
    back = read_catalog(str(written))
    assert back.taxonomy_paths == cat.taxonomy_paths
    assert back.products == cat.products
    assert back.qa == cat.qa
    assert back.general == cat.general
    with open(written / "products.jsonl", encoding="utf-8") as f:
        first = from_dict(Product, json.loads(f.readline()))
    assert first == cat.products[0]


def test_taxonomy_file_format(cat, written):
    lines = (written / "taxonomy.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# ")
    ids, seen = set(), set()
    for line in lines[1:]:
        m = re.fullmatch(r"(\d+) - (.+)", line)
        assert m, line
        assert m[1] not in ids
        ids.add(m[1])
        path = tuple(m[2].split(CATEGORY_SEPARATOR))
        assert len(path) == 1 or path[:-1] in seen, f"parent of {line!r} comes first"
        seen.add(path)
    assert {tuple(p) for p in cat.taxonomy_paths} <= seen
    assert seen == {tuple(p[:d]) for p in cat.taxonomy_paths for d in range(1, len(p) + 1)}
    # the same text is written for the same catalogue: ids are deterministic
    again = written.parent / "again"
    write_catalog(cat, str(again))
    assert (again / "taxonomy.txt").read_text(encoding="utf-8") == "\n".join(lines) + "\n"


def test_mave_file_schema(cat, written):
    with open(written / "products.mave.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == len(cat.products)
    for rec, p in zip(records, cat.products):
        assert set(rec) == {"id", "category", "paragraphs", "attributes"}
        assert rec["id"] == p.id and rec["category"] == CATEGORY_SEPARATOR.join(p.category)
        assert all(set(para) == {"text", "source"} for para in rec["paragraphs"])
        assert [a["key"] for a in rec["attributes"]] == p.meta["attribute_keys"]
        for a in rec["attributes"]:
            assert set(a) == {"key", "evidences"}
            assert bool(a["evidences"]) == (a["key"] in p.attributes), "unstated keys have empty evidences"
            for ev in a["evidences"]:
                assert set(ev) == {"value", "pid", "begin", "end"}
                assert rec["paragraphs"][ev["pid"]]["text"][ev["begin"]:ev["end"]] == ev["value"]


def test_pretraining_corpus(cat):
    lines = list(pretraining_corpus(cat))
    assert all(line and "\n" not in line for line in lines)
    # category paths, then one document per product, then the general instructions
    assert len(lines) == len(cat.taxonomy_paths) + len(cat.products) + len(cat.general)
    assert CATEGORY_SEPARATOR.join(cat.taxonomy_paths[0]) in set(lines)
    p = cat.products[5]
    doc = lines[len(cat.taxonomy_paths) + 5]
    assert doc.startswith(" ".join(p.title.split()))
    for q in (q for q in cat.qa if q.product_id == p.id):
        assert " ".join(f"Question: {q.question} Answer: {q.answer}".split()) in doc


def test_learnable_category_from_title(cat):
    """Nearest centroid on binary bag-of-words title vectors; threshold 0.70 (chance ~0.002)."""
    def words(s):
        return re.findall(r"[a-z0-9]+", s.lower())

    split = int(0.8 * len(cat.products))
    train, test = cat.products[:split], cat.products[split:]
    vocab: dict[str, int] = {}
    for p in train:
        for w in words(p.title):
            vocab.setdefault(w, len(vocab))
    labels = {CATEGORY_SEPARATOR.join(path): i for i, path in enumerate(cat.taxonomy_paths)}

    def vectors(products):
        x = np.zeros((len(products), len(vocab)), np.float32)
        for i, p in enumerate(products):
            for w in words(p.title):
                if w in vocab:
                    x[i, vocab[w]] = 1.0
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)

    y_train = np.array([labels[CATEGORY_SEPARATOR.join(p.category)] for p in train])
    y_test = np.array([labels[CATEGORY_SEPARATOR.join(p.category)] for p in test])
    centroids = np.zeros((len(labels), len(vocab)), np.float32)
    np.add.at(centroids, y_train, vectors(train))
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-9)
    accuracy = float(((vectors(test) @ centroids.T).argmax(axis=1) == y_test).mean())
    assert accuracy >= 0.70, accuracy


def test_extraction_targets_follow_the_schema(cat):
    """What the [EXTRACT] converter will ask: every schema key, n/a where the product is silent."""
    p = next(p for p in cat.products if len(p.attributes) < len(p.meta["attribute_keys"]))
    target = {k: p.attributes.get(k, NOT_AVAILABLE) for k in p.meta["attribute_keys"]}
    assert NOT_AVAILABLE in target.values()
    text = " ".join(para.text for para in p.paragraphs)
    assert all(v in text for v in target.values() if v != NOT_AVAILABLE)


def test_bad_arguments_and_files(tmp_path, written):
    with pytest.raises(ValueError, match="n_products"):
        generate_catalog(n_products=-1)
    with pytest.raises(ValueError, match="seed"):
        generate_catalog(seed="x")
    with pytest.raises(DataError, match="missing catalogue file"):
        read_catalog(str(tmp_path / "nothing"))
    broken = tmp_path / "broken"
    write_catalog(generate_catalog(seed=1, n_products=5, n_general=3), str(broken))
    with open(broken / "qa.jsonl", "a", encoding="utf-8") as f:
        f.write("{not json\n")
    n_lines = len((broken / "qa.jsonl").read_text(encoding="utf-8").splitlines())
    with pytest.raises(DataError, match=rf"qa.jsonl:{n_lines}:"):
        read_catalog(str(broken))
    tax = broken / "taxonomy.txt"
    tax.write_text(tax.read_text(encoding="utf-8") + "Oops no id\n", encoding="utf-8")
    with pytest.raises(DataError, match="taxonomy.txt"):
        read_catalog(str(broken))
    assert not [n for n in os.listdir(broken) if n.endswith(".tmp")], "no temporary files left behind"


def test_hostile_catalogue_files_are_data_errors(tmp_path):
    # Found by fuzzing: RecursionError, UnicodeDecodeError, and mistyped fields accepted (TypeError later).
    d = tmp_path / "c"
    write_catalog(generate_catalog(seed=1, n_products=3, qa_per_product=1, n_general=1), str(d))
    qa = (d / "qa.jsonl").read_text(encoding="utf-8").splitlines()
    bad_types = {**json.loads(qa[0]), "product_id": ["x"]}
    for name, raw, words in (("general.jsonl", b"[" * 100_000, "nested too deeply"),
                             ("general.jsonl", b'{"task": "\xff"}', "invalid UTF-8"),
                             ("taxonomy.txt", b"1 - \xff", "invalid UTF-8"),
                             ("qa.jsonl", json.dumps(bad_types).encode(), "field 'product_id' must be str, got list"),
                             ("products.jsonl", b'{"id": "a", "title": "t", "paragraphs": [{"text": 1}]}',
                              "paragraphs[0]: field 'text' must be str, got int")):
        original = (d / name).read_bytes()
        (d / name).write_bytes(original + raw + b"\n")
        with pytest.raises(DataError) as info:
            read_catalog(str(d))
        line = original.count(b"\n") + 1
        assert str(info.value).startswith(f"{d / name}:{line}: ") and words in str(info.value)
        (d / name).write_bytes(original)
    read_catalog(str(d))


def test_small_and_empty_catalogues():
    empty = generate_catalog(seed=0, n_products=0, qa_per_product=0, n_general=0)
    assert empty.products == [] and empty.qa == [] and empty.general == [] and len(empty.taxonomy_paths) >= 300
    many_q = generate_catalog(seed=0, n_products=20, qa_per_product=50, n_general=0)
    for pid in {q.product_id for q in many_q.qa}:
        asked = [(q.meta.get("key"), q.meta.get("claim")) for q in many_q.qa if q.product_id == pid]
        assert len(asked) == len(set(asked)), "no attribute or claim is asked about twice"
    assert all(isinstance(q, QAItem) for q in many_q.qa)
    assert dataclasses.is_dataclass(many_q)

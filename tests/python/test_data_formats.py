"""Loaders of the published formats: fixtures written here (including malformed lines, which must
name the file and line, and errors="skip"), and the real files in ../shared/data when present."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from ecomllm.data import (DataError, MatchPair, Taxonomy, iter_jsonl, load_amazonqa, load_ecinstruct, load_flipkart,
                          load_google_taxonomy, load_matching_pairs, load_mave, load_offers, load_product_qa_csv)
from ecomllm.data.formats import clean_flipkart_path

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def shared(rel: str) -> Path:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"shared data file {path} is not present (it lives beside the checkout, not in it)")
    return path


def write_jsonl(path: Path, records) -> Path:
    """records: dicts (dumped) or raw strings (written as they are, for malformed lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def expect_error(fn, path: Path, line, *words):
    with pytest.raises(DataError) as info:
        fn(path)
    msg = str(info.value)
    where = f"{path}:{line}" if line is not None else str(path)
    assert msg.startswith(where + ":"), msg
    assert info.value.line == line
    for w in words:
        assert w in msg, msg


def load_skipping(fn, path: Path, n_skipped: int):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(path, errors="skip")
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and f"skipped {n_skipped} malformed" in msgs[0] and str(path) in msgs[0], msgs
    return out


# ---------------------------------------------------------------------------------------------
# iter_jsonl and the error policy

def test_iter_jsonl_lines_and_bad_json(tmp_path):
    p = write_jsonl(tmp_path / "a.jsonl", [{"x": 1}, "", {"x": 2}, "{not json"])
    with pytest.raises(DataError) as info:
        list(iter_jsonl(p))
    assert info.value.line == 4 and "invalid JSON" in str(info.value)
    with pytest.warns(UserWarning, match="skipped 1 malformed"):
        assert list(iter_jsonl(p, errors="skip")) == [(1, {"x": 1}), (3, {"x": 2})]
    with pytest.raises(ValueError, match="errors must be"):
        list(iter_jsonl(p, errors="ignore"))


HOSTILE_LINES = {  # found by fuzzing: UnicodeDecodeError, RecursionError, ValueError, later UnicodeEncodeError
    "bad UTF-8": (b'{"a": "\xff"}', "invalid UTF-8"),
    "deep": (b"[" * 100_000, "nested too deeply"),
    "5000-digit int": (b"9" * 5000, "integer string conversion"),
    "lone surrogate": (b'{"left": {"t": "\\ud800"}, "right": {}, "label": 1}', "lone surrogate"),
}


@pytest.mark.parametrize("name", HOSTILE_LINES)
def test_jsonl_hostile_line_is_a_data_error_and_skippable(tmp_path, name):
    raw, words = HOSTILE_LINES[name]
    good = b'{"left": {"title": "a"}, "right": {"title": "b"}, "label": 1}\n'
    p = tmp_path / "pairs.jsonl"
    p.write_bytes(good + raw + b"\n" + good)
    expect_error(load_matching_pairs, p, 2, words)
    assert len(load_skipping(load_matching_pairs, p, 1)) == 2


# ---------------------------------------------------------------------------------------------
# MAVE

TITLE = "D'Addario EJ26 Phosphor Bronze Acoustic Guitar Strings, Custom Light, 11-52"


def mave_record(pid="B0002H0A3S", key="Winding Material", value="Phosphor Bronze", begin=15, end=30, **kw):
    rec = {"id": pid, "category": "Guitar Strings",
           "paragraphs": [{"text": TITLE, "source": "title"}, {"text": "Made in USA.", "source": "feature"}],
           "attributes": [{"key": key, "evidences": [{"value": value, "pid": 0, "begin": begin, "end": end}]}]}
    rec.update(kw)
    return rec


def test_mave_merges_records_and_checks_spans(tmp_path):
    p = write_jsonl(tmp_path / "mave.jsonl", [
        mave_record(),
        mave_record(key="Gauge", value="Custom Light", begin=56, end=68),
        mave_record(key="Country", value="USA", begin=0, end=0) | {"attributes": [
            {"key": "Country", "evidences": [{"value": "USA", "pid": 1, "begin": 8, "end": 11}]},
            {"key": "Core Material", "evidences": []}]},
        mave_record(pid="X2", key="Brand", value="D'Addario", begin=0, end=9),
    ])
    products = load_mave(p)
    assert [x.id for x in products] == ["B0002H0A3S", "X2"]
    a = products[0]
    assert a.title == TITLE and a.description == "Made in USA." and a.category == ["Guitar Strings"]
    assert a.attributes == {"Winding Material": "Phosphor Bronze", "Gauge": "Custom Light", "Country": "USA"}
    assert a.meta["attribute_keys"] == ["Winding Material", "Gauge", "Country", "Core Material"]
    assert len(a.spans) == 3
    for s in a.spans:
        assert a.paragraphs[s.pid].text[s.begin:s.end] == s.value == a.attributes[s.key]


def test_mave_malformed(tmp_path):
    good = mave_record()
    cases = [
        ("{bad", "invalid JSON"),
        (mave_record(value="Phosphor Brass"), "!= paragraph text[15:30]"),
        (mave_record(begin=60, end=90), "outside paragraph 0"),
        ({k: v for k, v in good.items() if k != "category"}, "missing required field 'category'"),
        (mave_record(begin="15"), "field 'begin' must be int"),
        (mave_record() | {"attributes": [{"key": "K", "evidences": [{"value": "x", "pid": 5, "begin": 0,
                                                                      "end": 1}]}]}, "pid 5 outside"),
        (mave_record(paragraphs=[]), "'paragraphs' is empty"),
    ]
    for i, (bad, words) in enumerate(cases):
        p = write_jsonl(tmp_path / f"m{i}.jsonl", [good, bad])
        expect_error(load_mave, p, 2, words)
        assert len(load_skipping(load_mave, p, 1)) == 1
    # the same id with other paragraphs cannot be merged
    p = write_jsonl(tmp_path / "conflict.jsonl", [good, mave_record(paragraphs=[{"text": "other", "source": "title"}],
                                                                    attributes=[])])
    expect_error(load_mave, p, 2, "repeats with different paragraphs", "first at line 1")


def test_mave_unlocated_value_and_merge_by_text(tmp_path):
    p = write_jsonl(tmp_path / "wdc.jsonl", [
        mave_record(pid="1"),
        mave_record(pid="2", key="Brand", value="D'Addario Strings", begin=-1, end=17),
    ])
    by_id, by_text = load_mave(p), load_mave(p, merge="text")
    assert len(by_id) == 2 and by_id[1].attributes == {"Brand": "D'Addario Strings"} and by_id[1].spans == []
    assert len(by_text) == 1 and by_text[0].id == "1"
    assert by_text[0].attributes == {"Winding Material": "Phosphor Bronze", "Brand": "D'Addario Strings"}


def test_mave_shared_wdc_pave():
    folder = "extract/wdc_pave_mave_format/"
    products = load_mave(shared(folder + "train_mave_positives.jsonl"))
    assert len(products) == 6253  # one record per product-attribute pair, ids unique
    n_spans = 0
    for prod in products:
        for s in prod.spans:
            assert prod.paragraphs[s.pid].text[s.begin:s.end] == s.value
            n_spans += 1
    assert n_spans >= 6200  # 15 normalised values carry begin=-1 and no span
    merged = load_mave(shared(folder + "train_mave_positives.jsonl"), merge="text")
    assert len(merged) == 1066 and sum(len(m.meta["attribute_keys"]) for m in merged) == 6253
    negatives = load_mave(shared(folder + "validation_mave_negatives.jsonl"))
    assert len(negatives) == 949 and all(not n.attributes and n.meta["attribute_keys"] for n in negatives)


# ---------------------------------------------------------------------------------------------
# ExtractGPT offers

def test_offers_fixture(tmp_path):
    p = write_jsonl(tmp_path / "offers.jsonl", [
        {"input": "FISH KING 4Pcs Spinner Bait Metal Lures", "category": "Lure",
         "target_scores": {"Size": {"n/a": 1}, "Material": {"n/a": 1, "Metal": 1}, "Item": {"Spinner Bait": 1}}},
        {"id": 7, "input_title": "Canon Paper", "input_description": " Glossy 4Inx6In ", "category": "Office",
         "target_scores": {"Width": {"4In": {"pid": [1], "score": 1}}, "Brand": {"Canon": 0.5, "CANON": 1}}},
    ])
    a, b = load_offers(p)
    assert a.title == "FISH KING 4Pcs Spinner Bait Metal Lures" and a.category == ["Lure"] and a.id.startswith("offer-")
    assert a.meta["attribute_keys"] == ["Size", "Material", "Item"]
    assert a.attributes == {"Material": "Metal", "Item": "Spinner Bait"}  # "n/a" = absent
    assert b.id == "7" and b.description == "Glossy 4Inx6In"
    assert b.attributes == {"Width": "4In", "Brand": "CANON"} and b.meta["target_values"]["Brand"] == ["Canon", "CANON"]
    assert load_offers(p)[0].id == a.id  # content-derived id is stable


def test_offers_malformed(tmp_path):
    good = {"input": "t", "category": "c", "target_scores": {"A": {"v": 1}}}
    for i, (bad, words) in enumerate([
        ({"category": "c", "target_scores": {}}, "missing required field 'input_title'"),
        ({"input": "t", "category": "c", "target_scores": {"A": {}}}, "non-empty object"),
        ({"input": "t", "category": "c", "target_scores": {"A": {"v": "1"}}}, "must be a number"),
        ({"input": "t", "category": "c", "target_scores": []}, "field 'target_scores' must be dict"),
        ([1, 2], "expected a JSON object"),
    ]):
        p = write_jsonl(tmp_path / f"o{i}.jsonl", [good, good, bad])
        expect_error(load_offers, p, 3, words)
        assert len(load_skipping(load_offers, p, 1)) == 2


@pytest.mark.parametrize("rel, n, n_keys", [
    ("extract/oa-mine_train.jsonl", 1452, 7360), ("extract/ae-110k_train.jsonl", 1568, 4360),
    ("extract/wdc_pave/wdc_with_all_attributes_train.jsonl", 211, None)])
def test_offers_shared(rel, n, n_keys):
    products = load_offers(shared(rel))
    assert len(products) == n
    assert all(set(p.attributes) <= set(p.meta["attribute_keys"]) and p.title for p in products)
    if n_keys is not None:
        assert sum(len(p.meta["attribute_keys"]) for p in products) == n_keys


# ---------------------------------------------------------------------------------------------
# ECInstruct

ECI = {"instruction": "Is the product a substitute for the query?", "input": json.dumps({"query": "q", "product": "p"}),
       "options": None, "output": "yes", "split": "train", "task": "Product_Substitute_Identification",
       "setting": "IND_Diverse_Instruction"}


def test_ecinstruct_json_and_jsonl(tmp_path):
    mpc = dict(ECI, task="Multiclass_Product_Classification", split="val", options=json.dumps(["A: yes", "B: no"]),
               output="A: yes")
    pj = tmp_path / "eci.json"
    pj.write_text(json.dumps([ECI, mpc]), encoding="utf-8")
    pl = write_jsonl(tmp_path / "eci.jsonl", [ECI, mpc])
    for p in (pj, pl):
        a, b = load_ecinstruct(p)
        assert a.task == "Product_Substitute_Identification" and a.completion == "yes"
        assert a.prompt == ('Is the product a substitute for the query?\n\n### Input:\n{"query": "q", "product": "p"}')
        assert b.prompt.endswith("### Options:\nA: yes\nB: no")
        assert a.meta["split"] == "train" and b.meta["setting"] == "IND_Diverse_Instruction"
        assert [e.task for e in load_ecinstruct(p, split="val")] == ["Multiclass_Product_Classification"]


def test_ecinstruct_malformed(tmp_path):
    bad = {k: v for k, v in ECI.items() if k != "output"}
    expect_error(load_ecinstruct, write_jsonl(tmp_path / "e.jsonl", [ECI, bad]), 2, "'output'")
    pj = tmp_path / "e.json"
    pj.write_text(json.dumps([ECI, ECI, bad]), encoding="utf-8")
    expect_error(load_ecinstruct, pj, None, "record 3", "'output'")
    assert len(load_skipping(load_ecinstruct, pj, 1)) == 2
    pj.write_text("[" + json.dumps(ECI) + ",\n{oops", encoding="utf-8")
    expect_error(load_ecinstruct, pj, 2, "invalid JSON")


def test_ecinstruct_hostile_options_and_json_files(tmp_path):
    rec = {"instruction": "Pick.", "input": "x", "output": "a", "task": "t"}
    for options, words in (("[" * 100_000, "nested too deeply"), ("[" + "9" * 5000 + "]", "integer string")):
        p = write_jsonl(tmp_path / "o.jsonl", [rec, dict(rec, options=options)])
        expect_error(load_ecinstruct, p, 2, "field 'options'", words)
        assert len(load_skipping(load_ecinstruct, p, 1)) == 1
    p = tmp_path / "e.json"
    p.write_bytes(b"[" * 100_000)
    expect_error(load_ecinstruct, p, None, "nested too deeply")
    p.write_bytes(b'[{"instruction": "Pick.",\n "output": "\xff"}]')
    expect_error(load_ecinstruct, p, 2, "invalid UTF-8")


# ---------------------------------------------------------------------------------------------
# Amazon QA

def test_amazonqa_both_forms(tmp_path):
    p = write_jsonl(tmp_path / "qa.jsonl", [
        {"questionType": "yes/no", "asin": "B1", "question": "Does it fit?", "answer": "Yes it does.", "answerType": "Y"},
        {"questionType": "open-ended", "asin": "B1", "question": "model number", "answer": "BADGER-1"},
        {"asin": "B2", "qid": 5, "questionText": "is it loud?", "questionType": "yesno",
         "answers": [{"answerText": "Not at all.", "helpful": [1, 1]}, {"answerText": "quiet"}],
         "review_snippets": ["Very quiet motor.", " "], "is_answerable": True},
        {"asin": "B3", "questionText": "battery life?", "questionType": "descriptive", "answers": [],
         "review_snippets": ["Nice colour."], "is_answerable": False},
    ])
    a, b, c, d = load_amazonqa(p)
    assert (a.qtype, a.answer, a.evidence, a.meta["answerType"]) == ("yesno", "Yes it does.", [], "Y")
    assert b.qtype == "descriptive" and b.product_id == "B1"
    assert (c.answer, c.evidence, c.answerable, c.meta["answers"]) == ("Not at all.", ["Very quiet motor."], True,
                                                                       ["Not at all.", "quiet"])
    assert d.answerable is False and d.answer == ""


def test_amazonqa_malformed(tmp_path):
    good = {"questionType": "yes/no", "asin": "B1", "question": "q?", "answer": "a"}
    for i, (bad, words) in enumerate([
        (good | {"questionType": "maybe"}, "questionType must be one of"),
        ({"asin": "B1", "answer": "a"}, "'question' (McAuley form) or 'questionText'"),
        ({"asin": "B1", "questionText": "q", "questionType": "yesno", "answers": []}, "needs a non-empty"),
        (good | {"answer": 3}, "field 'answer' must be str"),
    ]):
        p = write_jsonl(tmp_path / f"q{i}.jsonl", [bad, good])
        expect_error(load_amazonqa, p, 1, words)
        assert len(load_skipping(load_amazonqa, p, 1)) == 1


def test_amazonqa_shared():
    items = load_amazonqa(shared("qa/amazon_qa/qa_appliances.train.jsonl"))
    assert len(items) == 7170
    assert sum(q.qtype == "yesno" for q in items) == 3776 and all(q.answer for q in items)


# ---------------------------------------------------------------------------------------------
# contextual-product-qa CSVs

def test_product_qa_csv_hetpqa_and_epqa(tmp_path):
    het = tmp_path / "het.csv"
    het.write_text("ASIN\tquestion\tcandidate\tanswer\tsource\n"
                   "B1\tcan i use it outside?\tfor indoor use only.\tno, inside only.\tDesc\n"
                   "B2\tdoes it fit?\t\"yes, \"\"it\"\" fits\"\tit fits.\tCQA\n"
                   "B1\tcan i use it outside?\tnot waterproof.\tit is not for outdoors.\treview\n", encoding="utf-8")
    a, b = load_product_qa_csv(het)
    assert (a.product_id, a.evidence, a.answer) == ("B1", ["for indoor use only.", "not waterproof."], "no, inside only.")
    assert a.meta["answers"] == ["no, inside only.", "it is not for outdoors."] and a.source == "hetpqa"
    assert b.evidence == ['yes, "it" fits']
    ep = tmp_path / "ep.csv"
    ep.write_text("qid,question,ASIN,candidate,source,qa_pair_id,title,label,answer\n"
                  "1,will it fit?,B9,\"fits model X, Y\",bullet,10,Drawer,0,\n"
                  "1,will it fit?,B9,it fit mine,review,11,Drawer,1,Partly: it fit one.\n"
                  "1,will it fit?,B9,yes it fits,cqa,12,Drawer,2,Yes it fits.\n"
                  "2,what colour?,B9,great value,review,13,Drawer,0,\n", encoding="utf-8")
    x, y = load_product_qa_csv(ep)
    assert x.answer == "Yes it fits." and x.meta["answers"] == ["Yes it fits.", "Partly: it fit one."]
    assert x.evidence == ["fits model X, Y", "it fit mine", "yes it fits"] and x.meta["evidence_labels"] == [0, 1, 2]
    assert x.meta["title"] == "Drawer" and y.answerable is False


def test_product_qa_csv_malformed(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("data\ttext\nx\ty\n", encoding="utf-8")
    expect_error(load_product_qa_csv, p, 1, "unrecognised header")
    p.write_text("qid,question,ASIN,candidate,source,qa_pair_id,title,label,answer\n"
                 "1,q,B1,c,cqa,1,t,2,a\n1,q,B1,c,cqa,1,t,7,a\n1,q,B1,c\n", encoding="utf-8")
    expect_error(load_product_qa_csv, p, 3, "label must be 0, 1 or 2")
    items = load_skipping(load_product_qa_csv, p, 2)
    assert len(items) == 1 and items[0].evidence == ["c"]


def test_product_qa_csv_huge_field_and_bad_utf8(tmp_path):
    head = b"ASIN\tquestion\tcandidate\tanswer\tsource\n"
    ok = b"B2\tq2\tc\ta\ts\n"
    for bad, words in ((b"B1\tq\t" + b"x" * 140_000 + b"\ta\ts\n", "field limit"),
                       (b"B1\tq\xff\tc\ta\ts\n", "invalid UTF-8")):
        p = tmp_path / "h.csv"
        p.write_bytes(head + bad + ok)
        expect_error(load_product_qa_csv, p, 2, words)
        assert [q.product_id for q in load_skipping(load_product_qa_csv, p, 1)] == ["B2"]


def test_product_qa_csv_shared():
    het = load_product_qa_csv(shared("qa/contextual_product_qa/hetPQA_answer_generation_train.csv"))
    assert len(het) == 3356 and sum(len(q.evidence) for q in het) == 3693
    ep = load_product_qa_csv(shared("qa/contextual_product_qa/ePQA.shared.csv"))
    assert len(ep) == 778 and sum(len(q.evidence) for q in ep) == 7780
    assert sum(not q.answerable for q in ep) == 41


# ---------------------------------------------------------------------------------------------
# Google taxonomy

TAX = ("# Google_Product_Taxonomy_Version: 2021-09-21\n"
       "1 - Animals & Pet Supplies\n3237 - Animals & Pet Supplies > Live Animals\n"
       "2 - Animals & Pet Supplies > Pet Supplies\n3 - Animals & Pet Supplies > Pet Supplies > Bird Supplies\n"
       "166 - Apparel & Accessories\n")


def test_taxonomy_fixture_and_round_trip(tmp_path):
    p = tmp_path / "tax.txt"
    p.write_text(TAX, encoding="utf-8")
    t = load_google_taxonomy(p)
    assert len(t) == 5 and t.version == "2021-09-21"
    assert t.roots() == [("Animals & Pet Supplies",), ("Apparel & Accessories",)]
    assert t.path(3) == ("Animals & Pet Supplies", "Pet Supplies", "Bird Supplies")
    assert t.id("Animals & Pet Supplies > Pet Supplies") == 2 and t.parent(3) == t.path(2) and t.parent(1) is None
    assert t.children(1) == [t.path(3237), t.path(2)]
    assert t.leaves() == [t.path(3237), t.path(3), t.path(166)]
    assert t.depth() == 3 and t.depth(2) == 2
    assert "Animals & Pet Supplies > Live Animals" in t and 166 in t and ("Nope",) not in t and 9 not in t
    out = tmp_path / "out.txt"
    t.write(out)
    assert out.read_text(encoding="utf-8") == TAX and load_google_taxonomy(out) == t


def test_taxonomy_from_paths_deterministic(tmp_path):
    leaves = [["B", "x"], ["A", "y", "z"], "A > w"]
    t1, t2 = Taxonomy.from_paths(leaves), Taxonomy.from_paths(list(reversed(leaves)))
    assert t1 == t2 and len(t1) == 6 and t1.id("A") == 1 and sorted(t1.leaves()) == [("A", "w"), ("A", "y", "z"),
                                                                                      ("B", "x")]
    t1.write(tmp_path / "t.txt")
    assert load_google_taxonomy(tmp_path / "t.txt") == t1


def test_taxonomy_malformed(tmp_path):
    p = tmp_path / "bad.txt"
    for body, line, words in [
        ("1 - A\nx - A > B\n", 2, "expected 'ID - A > B > C'"),
        ("1 - A\n1 - B\n", 2, "id 1 repeats (first at line 2)"),
        ("1 - A\n2 - A\n", 2, "repeats"),
        ("1 - A\n2 - A > B > C\n", 2, "parent 'A > B' has no line"),
        ("1 - A >  > C\n", 1, "empty category name"),
    ]:
        p.write_text("# Google_Product_Taxonomy_Version: x\n" + body, encoding="utf-8")
        expect_error(load_google_taxonomy, p, line + 1, words)


def test_taxonomy_hostile_ids_and_bytes(tmp_path):
    p = tmp_path / "t.txt"
    for raw, words in (("\u00b2 - A\n".encode(), "expected 'ID - A > B > C'"),  # "²".isdigit() is True
                       (b"9" * 5000 + b" - A\n", "expected 'ID - A > B > C'"), (b"1 - A\n2 - \xff\n", "invalid UTF-8")):
        p.write_bytes(raw)
        expect_error(load_google_taxonomy, p, raw.count(b"\n"), words)


def test_taxonomy_shared(tmp_path):
    src = shared("taxonomy/google_product_taxonomy-with-ids.en-US.txt")
    t = load_google_taxonomy(src)
    assert len(t) == 5595 and len(t.roots()) == 21 and t.depth() == 7
    assert min(len(p) for p in t) == 1 and t.version == "2021-09-21"
    t.write(tmp_path / "copy.txt")
    assert (tmp_path / "copy.txt").read_text(encoding="utf-8").splitlines() == src.read_text(
        encoding="utf-8").splitlines()


# ---------------------------------------------------------------------------------------------
# matching pairs

def test_matching_pairs_fixture(tmp_path):
    good = {"left": {"title": "sony a"}, "right": {"title": "sony b", "price": "1"}, "label": 1}
    p = write_jsonl(tmp_path / "m.jsonl", [good, good | {"label": 2}, good | {"left": "x"}, good | {"label": True}])
    with pytest.raises(DataError, match=r"m\.jsonl:2: label must be 0 or 1"):
        load_matching_pairs(p)
    assert load_skipping(load_matching_pairs, p, 3) == [MatchPair(good["left"], good["right"], 1)]


@pytest.mark.parametrize("name, n, positives", [("Abt-Buy_valid", 1916, 206), ("wdc_shoes_train_small", 1611, 422)])
def test_matching_pairs_shared(name, n, positives):
    pairs = load_matching_pairs(shared(f"match/{name}.jsonl"))
    assert len(pairs) == n and sum(p.label for p in pairs) == positives


# ---------------------------------------------------------------------------------------------
# Flipkart

def test_clean_flipkart_path():
    assert clean_flipkart_path(["Footwear", "Women's Footwear", "Ballerinas", "AW Bellies"], "AW Bellies") == [
        "Footwear", "Women's Footwear", "Ballerinas"]
    assert clean_flipkart_path(["Bags", "Hand Bags", "DLOOP Hand Bags", "DLOOP Hand-held Bag (Multicolor-10)"],
                               "DLOOP Hand-held Bag") == ["Bags", "Hand Bags"]
    assert clean_flipkart_path(["Furniture", "Sofa Beds & Futons", "FabHomeDecor Fabric Double Sofa Bed (Finish Colo..."],
                               "FabHomeDecor Fabric Double Sofa Bed") == ["Furniture", "Sofa Beds & Futons"]
    assert clean_flipkart_path(["Posters", "Shoperite Posters"], "gym poster", brand="Shoperite") == ["Posters"]
    assert clean_flipkart_path(["Jewellery", "Rings"], "Nishtaa Yellow Gold 22 K Ring") == ["Jewellery", "Rings"]
    assert clean_flipkart_path(["Eternal Gandhi Crystal Paper Weight..."], "Eternal Gandhi Crystal Paper Weights") == []


def test_flipkart_fixture(tmp_path):
    p = write_jsonl(tmp_path / "f.jsonl", [
        {"uniq_id": "u1", "product_name": "AW  Bellies", "category_path": ["Footwear", "Ballerinas", "AW Bellies"],
         "brand": "AW", "description": "Red bellies.", "retail_price": "999",
         "specifications": [{"key": "Color", "value": "Red"}, {"key": None, "value": "One Pair"},
                            {"key": "Color", "value": "Blue"}]},
        {"uniq_id": "u2", "product_name": "Floozy Push-up Bra", "category_path": ["Clothing", "Bras", "Floozy Bras"]},
        {"uniq_id": "u3", "product_name": "x", "category_path": "Clothing"},
    ])
    expect_error(load_flipkart, p, 3, "field 'category_path' must be list")
    a, b = load_skipping(load_flipkart, p, 1)
    assert (a.title, a.category, a.brand, a.attributes) == ("AW Bellies", ["Footwear", "Ballerinas"], "AW",
                                                           {"Color": "Red"})
    assert a.meta["raw_category"][-1] == "AW Bellies" and a.meta["retail_price"] == "999"
    assert b.category == ["Clothing", "Bras"] and b.brand is None and b.attributes == {}


def test_flipkart_shared():
    titles = load_flipkart(shared("classify/flipkart_titles.train.jsonl"))
    assert len(titles) == 15916
    with_cat = [p for p in titles if p.category]
    assert len(with_cat) > 15000
    assert not any(p.title.lower() in " > ".join(p.category).lower() for p in with_cat)
    catalog = load_flipkart(shared("catalog/flipkart_products.train.jsonl"))
    assert len(catalog) == 812 and sum(bool(p.attributes) for p in catalog) > 700 and sum(bool(p.brand) for p in catalog) == 335

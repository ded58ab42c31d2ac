"""Task converters (exact prompt/completion strings), the task mix, and the splits."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from ecomllm.data import (Example, NOT_AVAILABLE, Product, QAItem, UNANSWERABLE_ANSWER, assign_split,
                          build_instruction_set, classify_example, extract_example, load_flipkart, ood_split,
                          qa_example, split_examples, truncate_words)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"

PAN = Product(id="p1", title="Acme  Non-Stick Frying Pan 28 cm", category=["Home & Garden", "Kitchen", "Cookware"],
              description="A light   aluminium pan with a glass lid. Dishwasher safe and oven safe up to 180 C.",
              brand="Acme", attributes={"Material": "aluminium", "Size": "28 cm"}, source="fixture")


def catalogue(n: int) -> list[Product]:
    cats = [["A", f"C{i % 13}"] for i in range(n)]
    return [Product(id=f"id{i}", title=f"Thing {i}", category=cats[i], brand=f"B{i % 7}",
                    attributes={"Colour": "red"} if i % 2 else {}, source="fixture") for i in range(n)]


def test_truncate_words():
    assert truncate_words("one two  three four", 9) == "one two"
    assert truncate_words("one two three", 13) == "one two three"
    assert truncate_words("abcdefghijkl", 5) == "abcde"
    assert truncate_words("  spaced\n out ", None) == "spaced out"


def test_classify_example_exact():
    ex = classify_example(PAN, max_chars=36)
    assert ex.task == "classify"
    assert ex.prompt == "[CLASSIFY] Product: Acme Non-Stick Frying Pan 28 cm\nDescription: A light aluminium pan with a glass"
    assert ex.completion == "Home & Garden > Kitchen > Cookware"
    assert ex.meta == {"product_id": "p1", "category": "Home & Garden > Kitchen > Cookware", "brand": "Acme",
                       "source": "fixture"}
    bare = classify_example(Product(id="x", title="Pan", category=["K"]))
    assert bare.prompt == "[CLASSIFY] Product: Pan" and bare.completion == "K"
    with pytest.raises(ValueError, match="no category"):
        classify_example(Product(id="x", title="Pan"))


def test_extract_example_exact():
    ex = extract_example(PAN)
    assert ex.prompt == ("[EXTRACT] Product: Acme Non-Stick Frying Pan 28 cm\nA light aluminium pan with a glass lid. "
                         "Dishwasher safe and oven safe up to 180 C.\nAttributes: Material, Size")
    assert ex.completion == '{"Material": "aluminium", "Size": "28 cm"}'
    asked = Product(id="y", title="Café Mug", attributes={"Colour": "blé"},
                    meta={"attribute_keys": ["Size", "Colour", "Brand"]})
    ex2 = extract_example(asked)
    assert ex2.prompt == "[EXTRACT] Product: Café Mug\nAttributes: Size, Colour, Brand"
    assert ex2.completion == '{"Size": "n/a", "Colour": "blé", "Brand": "n/a"}'
    assert json.loads(ex2.completion) == {"Size": NOT_AVAILABLE, "Colour": "blé", "Brand": NOT_AVAILABLE}
    with pytest.raises(ValueError, match="no attributes"):
        extract_example(Product(id="z", title="t"))


def test_qa_example_exact():
    item = QAItem(product_id="p1", question="Is it  oven safe?", answer=" Yes, up to 180 C. ",
                  evidence=["Oven safe up to 180 C.", "Glass lid."], qtype="yesno", source="fixture")
    ex = qa_example(item, PAN)
    assert ex.prompt == ("[QA] Context: Product: Acme Non-Stick Frying Pan 28 cm\nOven safe up to 180 C.\nGlass lid.\n"
                         "Question: Is it oven safe?")
    assert ex.completion == "Yes, up to 180 C." and ex.meta["category"] == "Home & Garden > Kitchen > Cookware"
    no_ctx = qa_example(QAItem(product_id="q", question="Colour?", answer="Red"))
    assert no_ctx.prompt == "[QA] Question: Colour?" and no_ctx.meta["category"] is None
    silent = qa_example(QAItem(product_id="q", question="Weight?", answer="", evidence=["Red."], answerable=False))
    assert silent.prompt == "[QA] Context: Red.\nQuestion: Weight?" and silent.completion == UNANSWERABLE_ANSWER
    for ex in (ex, no_ctx, silent):
        assert ex.prompt == ex.prompt.strip() and ex.completion == ex.completion.strip()


def test_build_instruction_set_mix_and_general_share():
    products = catalogue(50)
    qa = [QAItem(product_id=f"id{i}", question=f"q{i}?", answer="a") for i in range(10)]
    general = [Example("general", f"Say {i}.", f"{i}") for i in range(5)]
    n_task = 50 + 25 + 10
    for share in (0.0, 0.1, 0.25, 0.5):
        mix = build_instruction_set(products, qa, general, general_share=share, seed=3)
        n_general = sum(e.task == "general" for e in mix)
        assert abs(n_general - share * len(mix)) <= 1, (share, n_general, len(mix))
        assert len(mix) - n_general == n_task
    mix = build_instruction_set(products, qa, general, general_share=0.5, seed=3)
    assert Counter(e.task for e in mix) == {"classify": 50, "extract": 25, "qa": 10, "general": 85}  # with replacement
    again = build_instruction_set(products, qa, general, general_share=0.5, seed=3)
    assert [(e.task, e.prompt) for e in again] == [(e.task, e.prompt) for e in mix]
    other = build_instruction_set(products, qa, general, general_share=0.5, seed=4)
    assert [e.prompt for e in other] != [e.prompt for e in mix]
    qa_ex = next(e for e in mix if e.task == "qa" and e.meta["product_id"] == "id3")
    assert qa_ex.prompt.startswith("[QA] Context: Product: Thing 3\n") and qa_ex.meta["brand"] == "B3"
    only = build_instruction_set(products, qa, general, tasks=("classify",), general_share=0.0)
    assert {e.task for e in only} == {"classify"}
    assert len(build_instruction_set(products, general=[], general_share=0.3)) == 75
    with pytest.raises(ValueError, match="unknown task"):
        build_instruction_set(products, tasks=("summarise",))


def test_assign_split_deterministic_and_proportional():
    keys = [f"product-{i}" for i in range(20000)]
    splits = [assign_split(k, seed=7) for k in keys]
    assert splits == [assign_split(k, seed=7) for k in keys]
    # known values pin the hash (sha256 of "seed\x1fkey"), so runs on other machines agree
    assert [assign_split(f"product-{i}", seed=0) for i in range(12)] == [
        "train", "dev", "train", "train", "dev", "train", "train", "train", "test", "train", "test", "dev"]
    for k in keys[:500]:  # the documented rule: u = first 8 bytes of sha256 / 2^64, cumulative fractions
        u = int.from_bytes(hashlib.sha256(f"7\x1f{k}".encode()).digest()[:8], "big") / 2.0 ** 64
        assert assign_split(k, seed=7) == ("train" if u < 0.8 else "dev" if u < 0.9 else "test")
    counts = Counter(splits)
    for name, frac in {"train": 0.8, "dev": 0.1, "test": 0.1}.items():
        assert abs(counts[name] / len(keys) - frac) < 0.01, counts  # ~4.7 sigma at n=20000
    assert Counter(assign_split(k, seed=8) for k in keys) != counts
    assert {assign_split(k, 0, {"a": 0.5, "b": 0.5}) for k in keys[:100]} == {"a", "b"}
    with pytest.raises(ValueError, match="sum to 1"):
        assign_split("k", 0, {"train": 0.8, "dev": 0.1})


def test_split_examples_groups_products():
    products = catalogue(600)
    examples = build_instruction_set(products, [QAItem(product_id=f"id{i}", question="q", answer="a")
                                                for i in range(0, 600, 3)], general_share=0.0)
    out = split_examples(examples, seed=1)
    assert set(out) == {"train", "dev", "test"} and sum(map(len, out.values())) == len(examples)
    where = {}
    for name, exs in out.items():
        for e in exs:
            assert where.setdefault(e.meta["product_id"], name) == name  # one product, one split
    assert out == split_examples(examples, seed=1)
    n_products = Counter(where.values())
    assert abs(n_products["train"] / 600 - 0.8) < 0.06 and n_products["dev"] > 30 and n_products["test"] > 30


def test_ood_split_holds_out_whole_categories():
    products = catalogue(520)
    examples = build_instruction_set(products, general=[Example("general", "hi", "hello")], general_share=0.1)
    for by in ("category", "brand"):
        out = ood_split(examples, by=by, fraction=0.15, seed=2)
        assert set(out) == {"train", "dev", "test", "ood"}
        held = {e.meta[by] for e in out["ood"]}
        seen = {e.meta[by] for name in ("train", "dev", "test") for e in out[name]}
        assert held and not held & seen
        assert all(e.task != "general" for e in out["ood"])
        n_grouped = sum(e.meta[by] is not None for e in examples)
        assert 0.15 <= len(out["ood"]) / n_grouped < 0.15 + 1 / 7 + 0.01  # stops after the group that crosses 15%
        assert out == ood_split(examples, by=by, fraction=0.15, seed=2)
    single_root = ood_split(examples, by="category", level=1, fraction=0.3)  # one branch: never all held out
    assert single_root["ood"] == [] and sum(map(len, single_root.values())) == len(examples)


def test_real_flipkart_to_instructions_and_ood():
    path = SHARED / "classify" / "flipkart_titles.dev.jsonl"
    if not path.exists():
        pytest.skip(f"shared data file {path} is not present (it lives beside the checkout, not in it)")
    products = load_flipkart(path)
    examples = build_instruction_set(products, tasks=("classify",))
    assert len(examples) == sum(bool(p.category) for p in products)
    for e in examples[:200]:
        assert e.prompt.startswith("[CLASSIFY] Product: ") and e.prompt == e.prompt.strip()
        assert e.completion and e.completion == e.completion.strip()
    out = ood_split(examples, by="category", level=2, fraction=0.1, seed=0)
    held = {e.meta["category"].split(" > ")[:2].__str__() for e in out["ood"]}
    train = {e.meta["category"].split(" > ")[:2].__str__() for e in out["train"]}
    assert held and not held & train and len(out["ood"]) >= 0.1 * len(examples)


def test_extract_prompt_lists_feature_bullets():
    from ecomllm.data import Paragraph, Product, extract_example
    p = Product("p1", "Acme Mug", ["Home", "Mugs"], description="A mug.", attributes={"Capacity": "350 ml"},
                paragraphs=[Paragraph("Acme Mug", "title"), Paragraph("A mug.", "description"),
                            Paragraph("Holds  350 ml.", "feature")],
                meta={"attribute_keys": ["Brand", "Capacity"]})
    ex = extract_example(p)
    assert ex.prompt == "[EXTRACT] Product: Acme Mug\nA mug.\nHolds 350 ml.\nAttributes: Brand, Capacity"
    assert ex.completion == '{"Brand": "n/a", "Capacity": "350 ml"}'

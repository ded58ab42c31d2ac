"""Task converters: Products and QAItems -> instruction :class:`Example` records, the task mix, splits.

Prompts start with the task prefix ([CLASSIFY], [EXTRACT], [QA]) and carry no chat markup; prompts
and completions have no surrounding whitespace (the chat template module joins them). Every
Example's meta carries product_id, category (path string or None), brand and source, which the
splits below group and hold out by.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Iterable, Mapping, Sequence

from .schema import (CATEGORY_SEPARATOR, Example, GENERAL_TASK, NOT_AVAILABLE, Product, QAItem, TASK_PREFIXES,
                     UNANSWERABLE_ANSWER)

__all__ = ["classify_example", "extract_example", "qa_example", "build_instruction_set", "assign_split",
           "split_examples", "ood_split", "truncate_words", "DEFAULT_SPLITS"]

DEFAULT_SPLITS = {"train": 0.8, "dev": 0.1, "test": 0.1}


def truncate_words(text: str, max_chars: int | None) -> str:
    """Whitespace collapsed to single spaces, then cut at the last word boundary within max_chars
    (a single over-long first word is cut hard). None = no limit."""
    text = " ".join(text.split())
    if max_chars is None or len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1].rsplit(" ", 1)[0] if " " in text[: max_chars + 1] else text[:max_chars]
    return cut.rstrip(" ,;:-")


def _meta(product_id: str, category: Sequence[str] | None, brand: str | None, source: str) -> dict:
    return {"product_id": product_id, "category": CATEGORY_SEPARATOR.join(category) if category else None,
            "brand": brand, "source": source}


def classify_example(product: Product, max_chars: int = 300) -> Example:
    """``[CLASSIFY] Product: {title}\\nDescription: {description cut to ~max_chars}`` -> ``A > B > C``.
    The Description line is left out when the product has none. ValueError without a category."""
    if not product.category:
        raise ValueError(f"product {product.id!r} has no category to classify into")
    prompt = f"{TASK_PREFIXES['classify']} Product: {' '.join(product.title.split())}"
    description = truncate_words(product.description, max_chars)
    if description:
        prompt += f"\nDescription: {description}"
    return Example("classify", prompt, CATEGORY_SEPARATOR.join(product.category),
                   _meta(product.id, product.category, product.brand, product.source))


def extract_example(product: Product, max_chars: int | None = None) -> Example:
    """``[EXTRACT] Product: {title}\\n{description}\\n{features...}\\nAttributes: k1, k2`` -> JSON of the asked
    attributes in that order, NOT_AVAILABLE for those the product does not state.

    Asked attributes: meta["attribute_keys"] when present, else the product's attribute names
    sorted. The description line is left out when empty; max_chars optionally cuts it (a value
    beyond the cut would then still be expected, so leave it None for faithful targets)."""
    keys = list(product.meta.get("attribute_keys") or sorted(product.attributes))
    if not keys:
        raise ValueError(f"product {product.id!r} has no attributes to extract")
    lines = [f"{TASK_PREFIXES['extract']} Product: {' '.join(product.title.split())}"]
    description = truncate_words(product.description, max_chars)
    if description:
        lines.append(description)
    # Feature bullets (MAVE "feature" paragraphs and the like) state values too: one per line.
    lines += [" ".join(p.text.split()) for p in product.paragraphs
              if p.source not in ("title", "description") and p.text.strip()]
    lines.append(f"Attributes: {', '.join(keys)}")
    answer = {k: (product.attributes.get(k) or NOT_AVAILABLE) for k in keys}
    return Example("extract", "\n".join(lines), json.dumps(answer, ensure_ascii=False),
                   _meta(product.id, product.category, product.brand, product.source))


def qa_example(item: QAItem, product: Product | None = None, max_evidence: int | None = None) -> Example:
    """``[QA] Context: {evidence, one per line}\\nQuestion: {question}`` -> the answer, or
    UNANSWERABLE_ANSWER when the item is unanswerable.

    With a product, its title is the first context line (``Product: {title}``); with neither
    product nor evidence the Context line is left out. max_evidence keeps the first N evidences."""
    context = [f"Product: {' '.join(product.title.split())}"] if product is not None else []
    evidence = item.evidence if max_evidence is None else item.evidence[:max_evidence]
    context += [" ".join(e.split()) for e in evidence if e.strip()]
    question = " ".join(item.question.split())
    prompt = TASK_PREFIXES["qa"]
    if context:
        prompt += " Context: " + "\n".join(context) + "\n"
    else:
        prompt += " "
    prompt += f"Question: {question}"
    if item.answerable:
        answer = item.answer.strip()
        if not answer:
            raise ValueError(f"answerable QA item for product {item.product_id!r} has an empty answer")
    else:
        answer = UNANSWERABLE_ANSWER
    category = product.category if product is not None else None
    brand = product.brand if product is not None else None
    return Example("qa", prompt, answer, _meta(item.product_id, category, brand, item.source))


def build_instruction_set(products: Iterable[Product], qa_items: Iterable[QAItem] = (),
                          general: Sequence[Example] = (), general_share: float = 0.1,
                          tasks: Sequence[str] = ("classify", "extract", "qa"), seed: int = 0,
                          extra: Iterable[Example] = ()) -> list[Example]:
    """The shuffled task mix.

    Per product: a classify example when it has a category, an extract example when it has
    attributes to ask for; per QA item a qa example (joined to its product by id when present).
    ``extra`` examples (e.g. ECInstruct records) join the task examples as they are. General
    examples then make up ``general_share`` of the final list (n_general = round(share * n_task /
    (1 - share)), drawn without replacement while they last, then with replacement); none when
    ``general`` is empty. Same inputs and seed -> same list in the same order.
    """
    unknown = set(tasks) - set(TASK_PREFIXES)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; known: {sorted(TASK_PREFIXES)}")
    if not 0.0 <= general_share < 1.0:
        raise ValueError(f"general_share must be in [0, 1), got {general_share}")
    products = list(products)
    out: list[Example] = []
    for p in products:
        if "classify" in tasks and p.category:
            out.append(classify_example(p))
        if "extract" in tasks and (p.meta.get("attribute_keys") or p.attributes):
            out.append(extract_example(p))
    if "qa" in tasks:
        by_id = {p.id: p for p in products}
        out += [qa_example(q, by_id.get(q.product_id)) for q in qa_items]
    out += list(extra)
    rng = random.Random(seed)
    general = list(general)
    if general and general_share > 0:
        n_general = round(general_share * len(out) / (1.0 - general_share))
        pool = list(range(len(general)))
        rng.shuffle(pool)
        picks = pool[:n_general] + [rng.randrange(len(general)) for _ in range(n_general - len(pool))]
        for i in picks:
            g = general[i]
            out.append(Example(g.task or GENERAL_TASK, g.prompt, g.completion,
                               {"product_id": None, "category": None, "brand": None, "source": "general", **g.meta}))
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------------------------------------
# splits

def _unit(seed: int, key: str) -> float:
    """A stable pseudo-random number in [0, 1) from (seed, key) (sha256, not Python's salted hash)."""
    digest = hashlib.sha256(f"{seed}\x1f{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def _check_fractions(fractions: Mapping[str, float]) -> None:
    if not fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {dict(fractions)}")


def assign_split(key: str, seed: int = 0, fractions: Mapping[str, float] | None = None) -> str:
    """The split (a key of fractions, default train/dev/test 0.8/0.1/0.1) that `key` falls in;
    deterministic across runs and machines."""
    fractions = fractions or DEFAULT_SPLITS
    _check_fractions(fractions)
    u, acc = _unit(seed, str(key)), 0.0
    names = list(fractions)
    for name in names:
        acc += fractions[name]
        if u < acc:
            return name
    return next(n for n in reversed(names) if fractions[n] > 0)  # u within rounding of 1.0


def _group_key(ex: Example, key: str) -> str:
    """meta[key], or the prompt for records without one (each such example is its own group)."""
    value = ex.meta.get(key)
    return f"{key}={value}" if value is not None else f"prompt={ex.prompt}"


def split_examples(examples: Iterable[Example], key: str = "product_id", seed: int = 0,
                   fractions: Mapping[str, float] | None = None) -> dict[str, list[Example]]:
    """Examples into splits by assign_split(meta[key]) so all examples of one product (or whatever
    `key` names) land together; every split name is present; input order is kept within a split."""
    fractions = fractions or DEFAULT_SPLITS
    _check_fractions(fractions)
    out: dict[str, list[Example]] = {name: [] for name in fractions}
    for ex in examples:
        out[assign_split(_group_key(ex, key), seed, fractions)].append(ex)
    return out


def ood_split(examples: Iterable[Example], by: str = "category", fraction: float = 0.1, seed: int = 0,
              level: int | None = None, key: str = "product_id",
              fractions: Mapping[str, float] | None = None) -> dict[str, list[Example]]:
    """Hold out whole categories (by="category") or brands (by="brand") as an "ood" split, and split
    the rest with :func:`split_examples` (train/dev/test by default).

    Groups are ordered by a stable hash of (seed, group) and held out in that order until at least
    `fraction` of the examples that have a group are out, but never all groups. level=k groups
    categories by their first k path levels (hold out whole branches). Examples without the field
    (general instructions) always stay in domain.
    """
    if by not in ("category", "brand"):
        raise ValueError(f"by must be 'category' or 'brand', got {by!r}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    examples = list(examples)

    def group(ex: Example) -> str | None:
        value = ex.meta.get(by)
        if value and by == "category" and level is not None:
            value = CATEGORY_SEPARATOR.join(value.split(CATEGORY_SEPARATOR)[:level])
        return value or None

    counts: dict[str, int] = {}
    for ex in examples:
        g = group(ex)
        if g is not None:
            counts[g] = counts.get(g, 0) + 1
    target = fraction * sum(counts.values())
    held, n_held = set(), 0
    for g in sorted(counts, key=lambda g: (_unit(seed, f"ood:{by}:{g}"), g)):
        if n_held >= target or len(held) == len(counts) - 1:
            break
        held.add(g)
        n_held += counts[g]
    rest = [ex for ex in examples if group(ex) not in held]
    out = split_examples(rest, key=key, seed=seed, fractions=fractions)
    out["ood"] = [ex for ex in examples if group(ex) in held]
    return out

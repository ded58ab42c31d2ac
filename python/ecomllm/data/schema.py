"""The records every loader, the catalogue generator and the task converters share.

Loaders turn a published format into these; converters (:mod:`ecomllm.data.tasks`) turn them into
:class:`Example` instruction records; :mod:`ecomllm.data.packing` tokenizes and packs those.
Everything is plain data (dataclasses of str / int / list / dict), so it round-trips through JSON
with :func:`to_dict` / :func:`from_dict`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any

# Task names of the instruction schema and the prefix each prompt starts with.
TASK_PREFIXES = {
    "classify": "[CLASSIFY]",  # product -> category path "A > B > C"
    "extract": "[EXTRACT]",    # product -> attributes as a JSON object
    "qa": "[QA]",              # product text + question -> answer
}
GENERAL_TASK = "general"       # general instructions mixed in against forgetting (no prefix)
CATEGORY_SEPARATOR = " > "     # Google taxonomy style path separator
NOT_AVAILABLE = "n/a"          # extraction value of an asked attribute the product does not state
UNANSWERABLE_ANSWER = "The product information does not say."  # QA answer when evidence is silent


class DataError(ValueError):
    """Malformed input data. The message names the file and the 1-based line (or row) at fault."""

    def __init__(self, path: str, line: int | None, message: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


@dataclass
class Paragraph:
    """One piece of product text, as in MAVE (`source` is "title", "description", "feature", ...)."""
    text: str
    source: str = "description"


@dataclass
class AttributeSpan:
    """MAVE evidence: `value` is paragraphs[pid].text[begin:end] (end exclusive, in characters)."""
    key: str
    value: str
    pid: int
    begin: int
    end: int


@dataclass
class Product:
    """A catalogue product.

    category: the path from the root, e.g. ["Home & Garden", "Kitchen & Dining", "Cookware"];
        empty when unknown.
    attributes: attribute name -> value as the answer should give it (the extraction target).
        An attribute known to be absent is simply not in the dict.
    meta["attribute_keys"] (optional): the ordered attribute names to ask for when extracting
        (the category's schema, ExtractGPT style); asked keys missing from `attributes` are
        answered NOT_AVAILABLE.
    paragraphs / spans: MAVE-form text and attribute evidence (spans may be empty when the source
        gives values without positions).
    """
    id: str
    title: str
    category: list[str] = field(default_factory=list)
    description: str = ""
    brand: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    paragraphs: list[Paragraph] = field(default_factory=list)
    spans: list[AttributeSpan] = field(default_factory=list)
    source: str = ""                      # data set name, e.g. "mave", "flipkart", "bundled"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class QAItem:
    """A shopper's question about one product with its answer and the evidence it rests on.

    qtype: "yesno" or "descriptive". answerable=False means the evidence does not answer the
    question (the expected answer then says so).
    """
    product_id: str
    question: str
    answer: str
    evidence: list[str] = field(default_factory=list)
    qtype: str = "descriptive"
    answerable: bool = True
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Example:
    """One instruction record: `prompt` (task prefix included, no chat markup) -> `completion`.

    task: a key of TASK_PREFIXES, GENERAL_TASK, or another published task name (ECInstruct).
    meta: provenance (product id, category, brand, source) used for splits and reports.
    """
    task: str
    prompt: str
    completion: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class MatchPair:
    """Two product offers and whether they are the same product (1) or not (0), as in Ditto's
    matching data: each side maps attribute names ("title", "price", ...) to values."""
    left: dict[str, Any]
    right: dict[str, Any]
    label: int


def to_dict(record) -> dict:
    """A dataclass record as a JSON-ready dict."""
    return dataclasses.asdict(record)


_hints = functools.lru_cache(typing.get_type_hints)


def _fits(value, tp) -> bool:
    """Does a JSON value match the annotation tp (str, int, bool, X | None, list[X], dict[str, X], Any)?"""
    if tp is Any:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and _fits(v, args[1]) for k, v in value.items())
    if args:  # X | None
        return any(_fits(value, a) for a in args)
    return isinstance(value, tp) and (tp is bool or not isinstance(value, bool))


def from_dict(cls, d: dict):
    """Rebuild `cls` (Product, QAItem, Example, or a part of one) from :func:`to_dict` output.
    TypeError if `d` is not a dict or has a missing, unknown or mistyped field."""
    if not isinstance(d, dict):
        raise TypeError(f"expected an object, got {type(d).__name__}")
    hints, kwargs = _hints(cls), {}
    for key, value in d.items():
        if key not in hints:
            raise TypeError(f"unknown field {key!r}")
        tp = hints[key]
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if dataclasses.is_dataclass(item) and isinstance(value, list):
            parts = []
            for i, v in enumerate(value):
                try:
                    parts.append(from_dict(item, v))
                except TypeError as e:
                    raise TypeError(f"{key}[{i}]: {e}") from None
            value = parts
        elif not _fits(value, tp):
            shown = tp.__name__ if typing.get_origin(tp) is None else str(tp)
            raise TypeError(f"field {key!r} must be {shown}, got {type(value).__name__}")
        kwargs[key] = value
    return cls(**kwargs)

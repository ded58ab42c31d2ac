"""Loaders for the published e-commerce data formats, into the records of :mod:`ecomllm.data.schema`.

Every loader streams its file, validates each record and raises :class:`DataError` naming the file
and the 1-based line (CSV: the line where the row ends) for anything malformed: bad JSON, a missing
or mistyped field, a span outside its text, an unknown header. With ``errors="skip"`` malformed
records are dropped instead, and one warning at the end says how many and quotes the first.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from .schema import AttributeSpan, DataError, Example, MatchPair, NOT_AVAILABLE, Paragraph, Product, QAItem, from_dict
from .taxonomy import Taxonomy, parse_path

__all__ = ["iter_jsonl", "clean_flipkart_path", "load_mave", "load_offers", "load_ecinstruct", "load_amazonqa", "load_product_qa_csv",
           "load_google_taxonomy", "load_matching_pairs", "load_flipkart", "load_records"]


# ---------------------------------------------------------------------------------------------
# error policy and field checks

class _Policy:
    """errors="raise" re-raises; errors="skip" counts and warns once (from :meth:`finish`)."""

    def __init__(self, path, errors: str):
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        self.path, self.errors, self.skipped, self.first = str(path), errors, 0, None

    def handle(self, err: DataError) -> None:
        if self.errors == "raise":
            raise err
        self.skipped += 1
        self.first = self.first or str(err)

    def run(self, line: int, fn: Callable[[], Any]):
        """fn() or, on DataError under "skip", None."""
        try:
            return fn()
        except DataError as err:
            self.handle(err)
            return None

    def finish(self) -> None:
        if self.skipped:
            warnings.warn(f"{self.path}: skipped {self.skipped} malformed record(s); first: {self.first}",
                          stacklevel=3)


class _Rec:
    """Typed access to one JSON object, raising DataError(path, line, ...) on a bad field."""

    def __init__(self, obj: Any, path, line: int | None, where: str = ""):
        self.path, self.line, self.where = str(path), line, where
        if not isinstance(obj, dict):
            self.fail(f"expected a JSON object, got {type(obj).__name__}")
        self.obj = obj

    def fail(self, message: str):
        raise DataError(self.path, self.line, f"{self.where}{message}")

    def get(self, key: str, types, required: bool = True, default=None):
        if key not in self.obj or self.obj[key] is None:
            if required:
                self.fail(f"missing required field {key!r}")
            return default
        value = self.obj[key]
        types = types if isinstance(types, tuple) else (types,)
        # bool is an int subclass: never accept it where a number is asked for
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types)
            self.fail(f"field {key!r} must be {names}, got {type(value).__name__}")
        return value

    def sub(self, obj: Any, where: str) -> "_Rec":
        return _Rec(obj, self.path, self.line, f"{self.where}{where}: ")


def _utf8(text: str, path, line: int = 1) -> str:
    """text as read with errors="surrogateescape"; DataError (line counted from `line`) if the
    file held bytes that are not UTF-8."""
    if text.isascii():  # most lines: no escaped bytes possible
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(path, line + text.count("\n", 0, exc.start), "invalid UTF-8") from None
    return text


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _loads(text: str, path, line: int | None, where: str = "", free_text: bool = False):
    """json.loads with every failure a DataError: bad JSON, nesting too deep, an integer too long
    for int(), a \\u escape of a lone surrogate (text that cannot be written as UTF-8).
    free_text: text that is not JSON at all comes back unchanged."""
    try:
        obj = json.loads(text)
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        return obj
    except json.JSONDecodeError as exc:
        if free_text:
            return text
        problem, line = f"invalid JSON: {exc.msg} (column {exc.colno})", line or exc.lineno
    except RecursionError:
        problem = "invalid JSON: nested too deeply"
    except UnicodeEncodeError:
        problem = "invalid JSON: \\u escape of a lone surrogate"
    except ValueError as exc:  # an integer of more than sys.get_int_max_str_digits() digits
        problem = f"invalid JSON: {exc}"
    raise DataError(path, line, where + problem)


def iter_jsonl(path: str | Path, errors: str = "raise", _policy: _Policy | None = None) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) for each non-blank line of a JSON Lines file.

    Raises DataError naming the file and line for invalid UTF-8 or JSON (or skips the line, see
    module docs)."""
    policy = _policy or _Policy(path, errors)
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = _loads(_utf8(text, path, line_no), path, line_no)
            except DataError as err:
                policy.handle(err)
                continue
            yield line_no, obj
    if _policy is None:
        policy.finish()


def _records(path, errors: str, parse: Callable[[_Rec], Any]) -> Iterator[tuple[int, Any]]:
    """(line, parse(record)) for every JSONL record that parses, under the error policy."""
    policy = _Policy(path, errors)
    for line_no, obj in iter_jsonl(path, _policy=policy):
        value = policy.run(line_no, lambda: parse(_Rec(obj, path, line_no)))
        if value is not None:
            yield line_no, value
    policy.finish()


def load_records(path: str | Path, cls, errors: str = "raise") -> list:
    """JSON Lines of :func:`~ecomllm.data.schema.to_dict` records -> `cls` (Product, QAItem, Example)."""
    def parse(rec: _Rec):
        try:
            return from_dict(cls, rec.obj)
        except (TypeError, ValueError) as e:
            problem = str(e)
        rec.fail(f"bad {cls.__name__} record: {problem}")

    return [r for _, r in _records(path, errors, parse)]


def _stable_id(prefix: str, *parts: str) -> str:
    """A content-derived id for records that carry none (same text -> same id -> same split)."""
    digest = hashlib.sha1("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{prefix}-{digest}"


# ---------------------------------------------------------------------------------------------
# MAVE (and WDC-PAVE in MAVE form)

def load_mave(path: str | Path, errors: str = "raise", merge: str = "id", source: str = "mave") -> list[Product]:
    """MAVE JSON Lines -> Products with paragraphs, attribute spans and attributes.

    Each evidence must satisfy ``value == paragraphs[pid].text[begin:end]``. An evidence with
    ``begin == -1`` (WDC-PAVE's mark for a value that is not literally in the text, e.g. a
    normalised one) keeps the value but gets no span. An attribute with no evidences is absent
    (MAVE negatives) but still listed in ``meta["attribute_keys"]``, so extraction asks for it and
    expects NOT_AVAILABLE. The first evidence's value is the attribute's value.

    merge: "id" merges records with the same id (paragraphs must then be equal); "text" merges
    records with the same category and paragraphs (WDC-PAVE's MAVE files give every
    product-attribute pair its own id), keeping the first id.
    """
    if merge not in ("id", "text"):
        raise ValueError(f"merge must be 'id' or 'text', got {merge!r}")
    products: dict[Any, Product] = {}
    first_line: dict[Any, int] = {}

    def parse(rec: _Rec):
        pid_raw = rec.get("id", (str, int))
        category = rec.get("category", str)
        paragraphs = []
        for i, p in enumerate(rec.get("paragraphs", list)):
            pr = rec.sub(p, f"paragraphs[{i}]")
            paragraphs.append(Paragraph(pr.get("text", str), pr.get("source", str)))
        if not paragraphs:
            rec.fail("'paragraphs' is empty")
        keys, values, spans = [], {}, []
        for i, a in enumerate(rec.get("attributes", list)):
            ar = rec.sub(a, f"attributes[{i}]")
            key = ar.get("key", str)
            keys.append(key)
            for j, e in enumerate(ar.get("evidences", list)):
                er = ar.sub(e, f"evidences[{j}]")
                value, pid = er.get("value", str), er.get("pid", int)
                begin, end = er.get("begin", int), er.get("end", int)
                if not 0 <= pid < len(paragraphs):
                    er.fail(f"pid {pid} outside the {len(paragraphs)} paragraph(s)")
                values.setdefault(key, value)
                if begin == -1:
                    continue
                text = paragraphs[pid].text
                if not 0 <= begin <= end <= len(text):
                    er.fail(f"span [{begin}, {end}) outside paragraph {pid} of length {len(text)}")
                if text[begin:end] != value:
                    er.fail(f"value {value!r} != paragraph text[{begin}:{end}] {text[begin:end]!r}")
                spans.append(AttributeSpan(key, value, pid, begin, end))
        return str(pid_raw), category, paragraphs, keys, values, spans

    for line_no, (pid, category, paragraphs, keys, values, spans) in _records(path, errors, parse):
        group = pid if merge == "id" else (category, tuple((p.text, p.source) for p in paragraphs))
        prod = products.get(group)
        if prod is None:
            title = next((p.text for p in paragraphs if p.source == "title"), paragraphs[0].text)
            description = "\n".join(p.text for p in paragraphs if p.text != title)
            prod = products[group] = Product(id=pid, title=title, category=[category], description=description,
                                             paragraphs=paragraphs, source=source,
                                             meta={"attribute_keys": [], "file": Path(path).name})
            first_line[group] = line_no
        elif prod.paragraphs != paragraphs or prod.category != [category]:
            err = DataError(path, line_no, f"record id {pid!r} repeats with different paragraphs or category "
                                           f"(first at line {first_line[group]})")
            if errors == "raise":
                raise err
            warnings.warn(str(err), stacklevel=2)
            continue
        for key in keys:
            if key not in prod.meta["attribute_keys"]:
                prod.meta["attribute_keys"].append(key)
        for key, value in values.items():
            prod.attributes.setdefault(key, value)
        prod.spans.extend(spans)
    return list(products.values())


# ---------------------------------------------------------------------------------------------
# ExtractGPT / OA-Mine / AE-110k / WDC-PAVE offers

def load_offers(path: str | Path, errors: str = "raise", source: str = "offers") -> list[Product]:
    """ExtractGPT-style offers: ``input`` (or ``input_title`` + optional ``input_description``),
    ``category``, ``target_scores: {attribute: {value: score}}`` (a score is a number or WDC-PAVE's
    ``{"pid": [...], "score": s}``).

    ``meta["attribute_keys"]`` lists the asked attributes in file order; the attribute's value is the
    best-scored value other than "n/a" (first on ties); all acceptable values other than "n/a" are
    in ``meta["target_values"]``. An attribute whose only value is "n/a" is absent.
    """
    def parse(rec: _Rec) -> Product:
        if "input" in rec.obj:
            title, description = rec.get("input", str), ""
        else:
            title = rec.get("input_title", str)
            description = rec.get("input_description", str, required=False, default="")
        category = rec.get("category", str)
        keys, attrs, targets = [], {}, {}
        for key, scored in rec.get("target_scores", dict).items():
            if not isinstance(scored, dict) or not scored:
                rec.fail(f"target_scores[{key!r}] must be a non-empty object of value -> score")
            ranked = []
            for value, score in scored.items():
                if isinstance(score, dict):
                    score = rec.sub(score, f"target_scores[{key!r}][{value!r}]").get("score", (int, float))
                elif isinstance(score, bool) or not isinstance(score, (int, float)):
                    rec.fail(f"target_scores[{key!r}][{value!r}] must be a number, got {type(score).__name__}")
                if value != NOT_AVAILABLE:
                    ranked.append((-score, len(ranked), value))
            keys.append(key)
            if ranked:
                attrs[key] = min(ranked)[2]
                targets[key] = [v for _, _, v in ranked]
        raw_id = rec.get("id", (str, int), required=False)
        pid = str(raw_id) if raw_id is not None else _stable_id("offer", category, title, description)
        return Product(id=pid, title=title.strip(), category=[category], description=description.strip(),
                       attributes=attrs, source=source,
                       meta={"attribute_keys": keys, "target_values": targets, "file": Path(path).name})

    return [p for _, p in _records(path, errors, parse)]


# ---------------------------------------------------------------------------------------------
# ECInstruct

def _ecinstruct_prompt(instruction: str, inp: str | None, options) -> str:
    """eCeLLM's template body without the preamble and chat markup: instruction, then the
    Input and Options blocks when present (an options list is written one option per line)."""
    parts = [instruction.strip()]
    if inp and inp.strip():
        parts.append(f"### Input:\n{inp.strip()}")
    if isinstance(options, list):
        options = "\n".join(str(o).strip() for o in options)
    if options and options.strip():
        parts.append(f"### Options:\n{options.strip()}")
    return "\n\n".join(parts)


def load_ecinstruct(path: str | Path, errors: str = "raise", split: str | None = None,
                    setting: str | None = None) -> list[Example]:
    """ECInstruct records (instruction, input, options, output, split, task[, setting,
    few_shot_example]) from a .json list or a .jsonl file -> Examples with the record's task name.

    ``input`` may be a string or a JSON object (dumped); ``options`` a JSON string list, a list, or
    absent. meta keeps split, setting and few_shot_example. split / setting, when given, keep only
    the matching records.
    """
    def parse(rec: _Rec) -> Example | None:
        instruction, output, task = rec.get("instruction", str), rec.get("output", str), rec.get("task", str)
        inp = rec.get("input", (str, dict, list), required=False, default="")
        if not isinstance(inp, str):
            inp = json.dumps(inp, ensure_ascii=False)
        options = rec.get("options", (str, list), required=False)
        if isinstance(options, str) and options.strip():  # maybe a JSON string list
            decoded = _loads(options, rec.path, rec.line, f"{rec.where}field 'options': ", free_text=True)
            options = decoded if isinstance(decoded, list) else options
        rec_split = rec.get("split", str, required=False)
        rec_setting = rec.get("setting", str, required=False)
        if (split is not None and rec_split != split) or (setting is not None and rec_setting != setting):
            return None
        if not instruction.strip() or not output.strip():
            rec.fail("empty 'instruction' or 'output'")
        meta = {"split": rec_split, "setting": rec_setting, "source": "ecinstruct", "file": Path(path).name}
        if rec.obj.get("few_shot_example") is not None:
            meta["few_shot_example"] = rec.obj["few_shot_example"]
        return Example(task=task, prompt=_ecinstruct_prompt(instruction, inp, options), completion=output.strip(),
                       meta=meta)

    if str(path).endswith(".json"):
        policy = _Policy(path, errors)
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            data = _loads(_utf8(f.read(), path), path, None)
        if not isinstance(data, list):
            raise DataError(path, None, f"expected a JSON list of records, got {type(data).__name__}")
        out = []
        for i, obj in enumerate(data, start=1):
            ex = policy.run(i, lambda: parse(_Rec(obj, path, None, f"record {i}: ")))
            if ex is not None:
                out.append(ex)
        policy.finish()
        return out
    return [ex for _, ex in _records(path, errors, parse)]


# ---------------------------------------------------------------------------------------------
# Amazon product QA (McAuley's per-category files and the AmazonQA corpus)

_MCAULEY_QTYPES = {"yes/no": "yesno", "open-ended": "descriptive"}
_AMAZONQA_QTYPES = {"yesno": "yesno", "descriptive": "descriptive"}


def load_amazonqa(path: str | Path, errors: str = "raise", source: str = "amazonqa") -> list[QAItem]:
    """Amazon QA JSON Lines -> QAItems, one per question. Two forms, told apart per line:

    - McAuley's ``{asin, question, answer, questionType: "yes/no"|"open-ended", answerType?}``
      (no evidence; answerType Y/N/? goes to meta);
    - AmazonQA's ``{asin, questionText, questionType: "yesno"|"descriptive", answers[{answerText}],
      review_snippets[], is_answerable}``: the reviews are the evidence, the first answer the answer
      (all in meta["answers"]).
    """
    def parse(rec: _Rec) -> QAItem:
        asin = str(rec.get("asin", (str, int)))
        if "questionText" in rec.obj:
            question = rec.get("questionText", str)
            qtype = rec.get("questionType", str)
            if qtype not in _AMAZONQA_QTYPES:
                rec.fail(f"questionType must be one of {sorted(_AMAZONQA_QTYPES)}, got {qtype!r}")
            answers = [rec.sub(a, f"answers[{i}]").get("answerText", str)
                       for i, a in enumerate(rec.get("answers", list, required=False, default=[]))]
            snippets = rec.get("review_snippets", list, required=False, default=[])
            if not all(isinstance(s, str) for s in snippets):
                rec.fail("review_snippets must be a list of strings")
            answerable = rec.get("is_answerable", bool, required=False, default=True)
            if answerable and not any(a.strip() for a in answers):
                rec.fail("an answerable question needs a non-empty answers[].answerText")
            meta = {"answers": answers, "category": rec.obj.get("category"), "qid": rec.obj.get("qid")}
            answer = next((a.strip() for a in answers if a.strip()), "")
            evidence = [s.strip() for s in snippets if s.strip()]
        elif "question" in rec.obj:
            question = rec.get("question", str)
            qtype = rec.get("questionType", str)
            if qtype not in _MCAULEY_QTYPES:
                rec.fail(f"questionType must be one of {sorted(_MCAULEY_QTYPES)}, got {qtype!r}")
            answer = rec.get("answer", str).strip()
            if not answer:
                rec.fail("empty 'answer'")
            answerable, evidence = True, []
            meta = {"answerType": rec.obj.get("answerType"), "unixTime": rec.obj.get("unixTime")}
            qtype = _MCAULEY_QTYPES[qtype]
        else:
            rec.fail("missing required field 'question' (McAuley form) or 'questionText' (AmazonQA form)")
        if not question.strip():
            rec.fail("empty question")
        return QAItem(product_id=asin, question=question.strip(), answer=answer, evidence=evidence,
                      qtype=_AMAZONQA_QTYPES.get(qtype, qtype), answerable=answerable, source=source, meta=meta)

    return [q for _, q in _records(path, errors, parse)]


# ---------------------------------------------------------------------------------------------
# amazon-science/contextual-product-qa CSVs

_HETPQA_COLUMNS = ["ASIN", "question", "candidate", "answer", "source"]
_EPQA_COLUMNS = ["qid", "question", "ASIN", "candidate", "source", "qa_pair_id", "title", "label", "answer"]


def load_product_qa_csv(path: str | Path, errors: str = "raise", source: str | None = None) -> list[QAItem]:
    """contextual-product-qa answer files -> QAItems, one per question with its evidence grouped.

    Told apart by the header: hetPQA answer generation (tab-separated ``ASIN, question, candidate,
    answer, source``; one row per evidence, grouped by (ASIN, question)) or ePQA (comma-separated
    ``qid, question, ASIN, candidate, source, qa_pair_id, title, label, answer``; grouped by qid;
    label 2 = the candidate answers, 1 = partly, 0 = not). Every candidate is evidence (file order;
    labels and sources in meta). The answer is the first of a label-2 row, else of a label-1 row;
    a question with only label-0 candidates is unanswerable.
    """
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        header_line = f.readline()
    if header_line.rstrip("\r\n").split("\t") == _HETPQA_COLUMNS:
        kind, delimiter = "hetpqa", "\t"
    elif header_line.rstrip("\r\n").replace('"', "").split(",") == _EPQA_COLUMNS:  # not csv: no csv.Error
        kind, delimiter = "epqa", ","
    else:
        raise DataError(path, 1, f"unrecognised header {header_line.strip()[:120]!r}; expected hetPQA "
                                 f"(tab-separated {', '.join(_HETPQA_COLUMNS)}) or ePQA "
                                 f"(comma-separated {', '.join(_EPQA_COLUMNS)})")
    source = source or kind
    policy = _Policy(path, errors)
    groups: dict[tuple, dict] = {}
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        columns = next(reader)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # e.g. a field longer than csv.field_size_limit()
                policy.handle(DataError(path, reader.line_num, f"bad CSV: {exc}"))
                continue
            line = reader.line_num
            try:
                _utf8("".join(row), path, line)
            except DataError as err:
                policy.handle(err)
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(columns):
                policy.handle(DataError(path, line, f"expected {len(columns)} fields, got {len(row)}"))
                continue
            r = dict(zip(columns, row))
            if not r["question"].strip() or not r["ASIN"].strip() or not r["candidate"].strip():
                policy.handle(DataError(path, line, "empty ASIN, question or candidate"))
                continue
            if kind == "epqa":
                if r["label"] not in ("0", "1", "2"):
                    policy.handle(DataError(path, line, f"label must be 0, 1 or 2, got {r['label']!r}"))
                    continue
                label, key = int(r["label"]), ("epqa", r["qid"])
                if label > 0 and not r["answer"].strip():
                    policy.handle(DataError(path, line, f"label {label} row without an answer"))
                    continue
            else:
                if not r["answer"].strip():
                    policy.handle(DataError(path, line, "empty answer"))
                    continue
                label, key = 2, ("hetpqa", r["ASIN"], r["question"])
            g = groups.get(key)
            if g is None:
                g = groups[key] = {"asin": r["ASIN"].strip(), "question": r["question"].strip(), "evidence": [],
                                   "labels": [], "sources": [], "answers": {2: [], 1: []}, "line": line,
                                   "title": r.get("title", "").strip(), "qid": r.get("qid")}
            elif g["asin"] != r["ASIN"].strip():
                policy.handle(DataError(path, line, f"question {key[-1]!r} changes ASIN "
                                                    f"(first {g['asin']!r} at line {g['line']})"))
                continue
            g["evidence"].append(r["candidate"].strip())
            g["labels"].append(label)
            g["sources"].append(r["source"].strip())
            if label:
                g["answers"][label].append(r["answer"].strip())
    policy.finish()
    items = []
    for g in groups.values():
        answers = g["answers"][2] + g["answers"][1]
        meta = {"answers": answers, "evidence_labels": g["labels"], "evidence_sources": g["sources"],
                "file": Path(path).name}
        if g["title"]:
            meta["title"] = g["title"]
        if g["qid"] is not None:
            meta["qid"] = g["qid"]
        items.append(QAItem(product_id=g["asin"], question=g["question"], answer=answers[0] if answers else "",
                            evidence=g["evidence"], qtype="descriptive", answerable=bool(answers), source=source,
                            meta=meta))
    return items


# ---------------------------------------------------------------------------------------------
# Google Product Taxonomy

def load_google_taxonomy(path: str | Path) -> Taxonomy:
    """``ID - A > B > C`` lines (a leading ``# ...`` comment line gives the version) -> Taxonomy.
    Every node must be on its own line; any malformed line, repeated id or path, or missing parent
    raises DataError with the line."""
    version, nodes, line_of, id_line = None, [], {}, {}
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        for line_no, text in enumerate(f, start=1):
            text = _utf8(text, path, line_no).rstrip("\r\n")
            if not text.strip():
                continue
            if text.startswith("#"):
                if line_no == 1 and ":" in text:
                    version = text.split(":", 1)[1].strip()
                continue
            id_text, sep, path_text = text.partition(" - ")
            id_text = id_text.strip()
            if not sep or not (id_text.isascii() and id_text.isdigit() and len(id_text) <= 18):
                raise DataError(path, line_no, f"expected 'ID - A > B > C' (ID at most 18 digits), got {text[:80]!r}")
            node_id, node_path = int(id_text), parse_path(path_text)
            if any(not name for name in node_path):
                raise DataError(path, line_no, f"empty category name in {path_text!r}")
            if node_id in id_line:
                raise DataError(path, line_no, f"id {node_id} repeats (first at line {id_line[node_id]})")
            if node_path in line_of:
                raise DataError(path, line_no, f"path {path_text!r} repeats (first at line {line_of[node_path]})")
            id_line[node_id], line_of[node_path] = line_no, line_no
            nodes.append((node_id, node_path))
    for _, node_path in nodes:
        if len(node_path) > 1 and node_path[:-1] not in line_of:
            raise DataError(path, line_of[node_path], f"parent {' > '.join(node_path[:-1])!r} has no line of its own")
    return Taxonomy(nodes, version=version)


# ---------------------------------------------------------------------------------------------
# product matching pairs (Ditto)

def load_matching_pairs(path: str | Path, errors: str = "raise") -> list[MatchPair]:
    """``{left: {attr: value}, right: {attr: value}, label: 0|1}`` JSON Lines -> MatchPairs."""
    def parse(rec: _Rec) -> MatchPair:
        left, right, label = rec.get("left", dict), rec.get("right", dict), rec.get("label", int)
        if label not in (0, 1):
            rec.fail(f"label must be 0 or 1, got {label}")
        return MatchPair(left=left, right=right, label=label)

    return [p for _, p in _records(path, errors, parse)]


# ---------------------------------------------------------------------------------------------
# Flipkart catalogue and titles

def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def _names_product(element: str, title: str) -> bool:
    """Is a category-path element really the product's own name (maybe truncated with '...')?"""
    e, t = _norm(element), _norm(title)
    if e.endswith("..."):
        e = e[:-3].rstrip()
    if not e:
        return True
    return e == t or t in e or (len(e) >= 10 and (t.startswith(e) or e in t))


def clean_flipkart_path(path: list[str], title: str, brand: str | None = None) -> list[str]:
    """Drop trailing path elements that name the product rather than a category: the product name
    itself (often truncated with '...'), and brand leaves ``"<brand> <parent>"`` such as
    "Floozy Bras" under "Bras" (brand = the given brand or a prefix of the title)."""
    path = [p.strip() for p in path if p and p.strip()]
    while path:
        last = path[-1]
        if _names_product(last, title):
            path.pop()
            continue
        if len(path) >= 2 and _norm(last).endswith(" " + _norm(path[-2])):
            maker = _norm(last)[: -len(_norm(path[-2])) - 1]
            if _norm(title).startswith(maker) or (brand and _norm(brand) == maker):
                path.pop()
                continue
        break
    return path


def load_flipkart(path: str | Path, errors: str = "raise", source: str = "flipkart") -> list[Product]:
    """Flipkart JSON Lines -> Products: the catalogue form (``uniq_id, product_name, category_path,
    description, brand, specifications[{key, value}]``, specifications becoming attributes; entries
    without a key are dropped) or the titles form (``uniq_id, product_name, category_path``). The
    category path is cleaned with :func:`clean_flipkart_path` (raw path in meta["raw_category"])."""
    def parse(rec: _Rec) -> Product:
        pid = str(rec.get("uniq_id", (str, int)))
        title = " ".join(rec.get("product_name", str).split())
        if not title:
            rec.fail("empty 'product_name'")
        raw = rec.get("category_path", list)
        if not all(isinstance(c, str) for c in raw):
            rec.fail("category_path must be a list of strings")
        brand = rec.get("brand", str, required=False)
        brand = brand.strip() or None if brand else None
        attrs = {}
        for i, spec in enumerate(rec.get("specifications", list, required=False, default=[])):
            sr = rec.sub(spec, f"specifications[{i}]")
            key, value = sr.get("key", str, required=False), sr.get("value", (str, int, float), required=False)
            if key and key.strip() and value is not None and str(value).strip():
                attrs.setdefault(key.strip(), str(value).strip())
        meta = {"raw_category": raw, "file": Path(path).name}
        for k in ("pid", "retail_price", "discounted_price", "product_rating", "product_url"):
            if rec.obj.get(k) is not None:
                meta[k] = rec.obj[k]
        return Product(id=pid, title=title, category=clean_flipkart_path(raw, title, brand),
                       description=(rec.get("description", str, required=False, default="") or "").strip(),
                       brand=brand, attributes=attrs, source=source, meta=meta)

    return [p for _, p in _records(path, errors, parse)]

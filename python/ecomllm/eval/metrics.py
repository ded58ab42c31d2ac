"""Task metrics for the three e-commerce tasks.

- classify: exact category-path accuracy, top-level accuracy, and hierarchical micro P/R/F1
  (Kiritchenko et al.: predicted and true paths are expanded to all their ancestors, the shared
  root left out, and the sets compared).
- extract: the completion must parse as a JSON object; slot accuracy = share of asked attributes
  whose predicted value equals the gold one after normalisation (NOT_AVAILABLE counts as a value),
  plus micro P/R/F1 over the attributes that have a value (n/a ones excluded), as eCeLLM does.
- qa: SQuAD v1.1 exact match and token F1 (lower-case, strip punctuation and articles, multiset
  token overlap), and yes/no accuracy on questions whose gold answer starts with yes or no.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from typing import Sequence

from ..data.schema import CATEGORY_SEPARATOR, NOT_AVAILABLE


def _path(text: str) -> list[str]:
    return [p.strip() for p in text.split(CATEGORY_SEPARATOR.strip()) if p.strip()]


def classify_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """Category paths as "A > B > C" strings."""
    _check_lengths(predictions, references)
    exact = top = inter = n_pred = n_true = 0
    for p, r in zip(predictions, references):
        pp, rr = _path(p), _path(r)
        exact += pp == rr
        top += bool(pp) and bool(rr) and pp[0] == rr[0]
        # ancestor sets: every prefix of the path is a node
        a = {tuple(pp[:i + 1]) for i in range(len(pp))}
        b = {tuple(rr[:i + 1]) for i in range(len(rr))}
        inter += len(a & b)
        n_pred += len(a)
        n_true += len(b)
    n = max(1, len(references))
    hp = inter / n_pred if n_pred else 0.0
    hr = inter / n_true if n_true else 0.0
    return {"n": len(references), "accuracy": exact / n, "top_level_accuracy": top / n,
            "hierarchical_precision": hp, "hierarchical_recall": hr,
            "hierarchical_f1": 2 * hp * hr / (hp + hr) if hp + hr else 0.0}


def _norm_value(v) -> str:
    return re.sub(r"\s+", " ", str(v)).strip().lower()


def extract_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """Predicted and gold completions are JSON objects {attribute: value or "n/a"}."""
    _check_lengths(predictions, references)
    slots = slot_hits = invalid = tp = n_pred = n_gold = 0
    na = NOT_AVAILABLE.lower()
    for p, r in zip(predictions, references):
        gold = json.loads(r)
        try:
            pred = json.loads(p)
            if not isinstance(pred, dict):
                raise ValueError
        except ValueError:
            invalid += 1
            pred = {}
        for key, value in gold.items():
            slots += 1
            slot_hits += _norm_value(pred.get(key, NOT_AVAILABLE)) == _norm_value(value)
        gold_vals = {(k, _norm_value(v)) for k, v in gold.items() if _norm_value(v) != na}
        pred_vals = {(k, _norm_value(v)) for k, v in pred.items() if _norm_value(v) != na}
        tp += len(gold_vals & pred_vals)
        n_pred += len(pred_vals)
        n_gold += len(gold_vals)
    prec = tp / n_pred if n_pred else 0.0
    rec = tp / n_gold if n_gold else 0.0
    return {"n": len(references), "slot_accuracy": slot_hits / slots if slots else 0.0,
            "precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
            "invalid_json": invalid / max(1, len(references))}


def _squad_tokens(text: str) -> list[str]:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD v1.1 token F1 (multiset overlap of normalised tokens)."""
    p, r = _squad_tokens(prediction), _squad_tokens(reference)
    same = sum((Counter(p) & Counter(r)).values())
    if same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(r)
    return 2 * prec * rec / (prec + rec)


def _yes_no(text: str) -> str | None:
    words = _squad_tokens(text)
    return words[0] if words and words[0] in ("yes", "no") else None


def qa_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict:
    _check_lengths(predictions, references)
    em = sum(_squad_tokens(p) == _squad_tokens(r) for p, r in zip(predictions, references))
    f1 = sum(token_f1(p, r) for p, r in zip(predictions, references))
    yn = [(_yes_no(p), _yes_no(r)) for p, r in zip(predictions, references) if _yes_no(r)]
    n = max(1, len(references))
    return {"n": len(references), "exact_match": em / n, "token_f1": f1 / n,
            "yes_no_accuracy": sum(a == b for a, b in yn) / len(yn) if yn else None, "yes_no_n": len(yn)}


TASK_METRICS = {"classify": classify_metrics, "extract": extract_metrics, "qa": qa_metrics}


def _check_lengths(predictions, references):
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")

"""Task metrics on hand-worked cases (values derived in the comments)."""

import json

import pytest

from ecomllm.eval import classify_metrics, extract_metrics, qa_metrics, token_f1


def test_classify_hierarchical():
    preds = ["A > B > C", "A > B > D", "X > Y"]
    refs = ["A > B > C", "A > B > C", "A > B"]
    m = classify_metrics(preds, refs)
    assert m["accuracy"] == pytest.approx(1 / 3) and m["top_level_accuracy"] == pytest.approx(2 / 3)
    # ancestor sets: (3 of 3), (2 of pred 3 / true 3), (0 of pred 2 / true 2) -> P = 5/8, R = 5/8
    assert m["hierarchical_precision"] == pytest.approx(5 / 8) and m["hierarchical_recall"] == pytest.approx(5 / 8)
    assert m["hierarchical_f1"] == pytest.approx(5 / 8)
    with pytest.raises(ValueError, match="2 predictions but 1"):
        classify_metrics(["a", "b"], ["a"])


def test_extract_slots_and_f1():
    gold = json.dumps({"Brand": "Acme", "Color": "Red", "Size": "n/a"})
    preds = [json.dumps({"Brand": "acme ", "Color": "Blue", "Size": "n/a"}), "not json", gold]
    m = extract_metrics(preds, [gold] * 3)
    # slots: 2/3 + 1/3 (unparsable: every slot reads n/a, right for Size) + 3/3 = 6/9; values: tp 1+0+2 = 3, predicted 2+0+2 = 4, gold 2*3 = 6
    assert m["slot_accuracy"] == pytest.approx(6 / 9)
    assert m["precision"] == pytest.approx(3 / 4) and m["recall"] == pytest.approx(3 / 6)
    assert m["f1"] == pytest.approx(2 * 0.75 * 0.5 / 1.25) and m["invalid_json"] == pytest.approx(1 / 3)


def test_qa_squad_f1_and_yes_no():
    # SQuAD normalisation drops case, punctuation and articles: "The cat sat." == "cat sat"
    assert token_f1("The cat sat.", "cat sat") == 1.0
    # multiset overlap: pred "a b b" vs gold "b c": normalised pred [b, b] (article "a" removed), overlap 1
    assert token_f1("a b b", "b c") == pytest.approx(2 * 0.5 * 0.5 / 1.0)
    m = qa_metrics(["Yes, it is.", "No", "It holds 2 L"], ["Yes it is", "Yes, it does.", "It holds 1.5 L."])
    assert m["exact_match"] == pytest.approx(1 / 3) and m["yes_no_accuracy"] == pytest.approx(1 / 2)
    assert m["yes_no_n"] == 2

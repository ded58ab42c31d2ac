"""Templates, completion-only labels, packing and greedy decoding.

Packing is checked where it matters: a packed row must give the model exactly the loss and the
logits its examples give one per row (tolerance 1e-5 relative), so position restarts and the
attention barrier between packed examples are both exercised.
"""

import zipfile

import numpy as np
import pytest

from ecomllm import Model
from ecomllm.data import Example
from ecomllm.data.packing import PackedDataset, pack_examples, text_examples
from ecomllm.data.templates import (IGNORE_INDEX, EncodedExample, encode_example, encode_examples,
                                    encode_prompt, render_prompt)
from ecomllm.generate import greedy_generate


class CharTokenizer:
    """A byte-level stand-in: one id per byte, offset past the specials (0 unk, 1 bos, 2 eos)."""
    bos_id, eos_id, vocab_size = 1, 2, 3 + 256

    def encode(self, text):
        if isinstance(text, list):
            return [self.encode(t) for t in text]
        return [3 + b for b in text.encode()]


TOK = CharTokenizer()


def test_templates_render_both_formats():
    assert render_prompt("[QA] q", "plain") == "[QA] q\n### Answer:"
    assert render_prompt("[QA] q", "mistral") == "[INST] [QA] q [/INST]"
    with pytest.raises(ValueError, match="unknown template"):
        render_prompt("x", "chatml")


@pytest.mark.parametrize("template", ["plain", "mistral"])
def test_completion_only_labels(template):
    ex = Example("classify", "[CLASSIFY] Product: mug", "Home > Mugs")
    enc = encode_example(TOK, ex, template)
    prompt = encode_prompt(TOK, ex.prompt, template)
    assert enc.ids[:len(prompt)] == prompt and prompt[0] == TOK.bos_id
    assert enc.ids[len(prompt):] == TOK.encode("Home > Mugs") + [TOK.eos_id]
    assert enc.labels == [IGNORE_INDEX] * len(prompt) + enc.ids[len(prompt):]
    assert enc.prompt_len == len(prompt) and not enc.truncated
    assert encode_examples(TOK, [ex, ex], template) == [enc, enc]


def test_truncation_cuts_prompt_first_then_completion():
    ex = Example("qa", "[QA] " + "x" * 50, "yes it is")
    full = encode_example(TOK, ex)
    short = encode_example(TOK, ex, max_len=30)
    assert len(short.ids) == 30 and short.truncated
    assert short.ids[-10:] == full.ids[-10:]          # whole completion (9 bytes) + EOS kept
    tiny = encode_example(TOK, ex, max_len=5)
    assert tiny.ids == [TOK.bos_id] + full.ids[full.prompt_len:full.prompt_len + 4]
    assert tiny.labels[0] == IGNORE_INDEX and tiny.labels[1:] == tiny.ids[1:]


def _random_examples(rng, n, lo=3, hi=40):
    out = []
    for i in range(n):
        L = int(rng.integers(lo, hi))
        ids = [1] + rng.integers(3, 60, L - 1).tolist()
        p = int(rng.integers(1, L))
        out.append(EncodedExample(ids, [IGNORE_INDEX] * p + ids[p:], "t%d" % (i % 3)))
    return out


def test_pack_every_example_once_with_restarting_positions():
    rng = np.random.default_rng(0)
    exs = _random_examples(rng, 200)
    ds = pack_examples(exs, seq_len=64, pad_id=0)
    assert int(ds.examples_per_row.sum()) == 200 and sum(ds.tasks.values()) == 200
    assert ds.num_tokens == sum(len(e.ids) for e in exs)
    # Best-fit decreasing fills rows well on this mix: within 15% of the lower bound.
    assert len(ds) <= int(np.ceil(ds.num_tokens / 64) * 1.15)
    found = []
    for r in range(len(ds)):
        n = int(ds.attention_mask[r].sum())
        assert ds.attention_mask[r, :n].all() and not ds.attention_mask[r, n:].any()   # right padding
        assert (ds.labels[r, n:] == IGNORE_INDEX).all()
        starts = [t for t in range(n) if ds.position_ids[r, t] == 0]
        assert len(starts) == ds.examples_per_row[r]
        for a, b in zip(starts, starts[1:] + [n]):
            assert ds.position_ids[r, a:b].tolist() == list(range(b - a))
            assert ds.labels[r, a] == IGNORE_INDEX          # no target across examples
            found.append(tuple(ds.input_ids[r, a:b]))
    assert sorted(found) == sorted(tuple(e.ids) for e in exs)
    unpacked = pack_examples(exs, seq_len=64, packing=False)
    assert len(unpacked) == 200 and (unpacked.examples_per_row == 1).all()


def test_pack_rejects_overlong_and_mismatched():
    with pytest.raises(ValueError, match="max_len=8"):
        pack_examples([EncodedExample(list(range(9)), list(range(9)), "t")], seq_len=8)
    with pytest.raises(ValueError, match="labels"):
        pack_examples([EncodedExample([1, 2], [1], "t")], seq_len=8)


def test_packed_dataset_save_load(tmp_path):
    ds = pack_examples(_random_examples(np.random.default_rng(1), 30), seq_len=48)
    ds.save(tmp_path / "d.npz")
    back = PackedDataset.load(tmp_path / "d.npz")
    for k in ("input_ids", "labels", "position_ids", "attention_mask", "examples_per_row"):
        assert np.array_equal(getattr(ds, k), getattr(back, k))
    assert back.tasks == ds.tasks and back.num_target_tokens == ds.num_target_tokens
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.npz"):
        PackedDataset.load(tmp_path / "bad.npz")
    # Found by fuzzing (each raised something other than ValueError): an empty file, a cut zip, a
    # member with a pickled object array, a member declaring an absurd shape, and task arrays
    # that are absent (AttributeError) or disagree.
    good = (tmp_path / "d.npz").read_bytes()
    arrays = {k: getattr(ds, k) for k in ("input_ids", "labels", "position_ids", "attention_mask", "examples_per_row")}
    cases = {"empty.npz": b"", "cut.npz": good[: len(good) // 2]}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
    np.savez(tmp_path / "pickled.npz", **arrays, task_names=np.array([{"x": 1}], dtype=object))
    header = b"{'descr': '<i4', 'fortran_order': False, 'shape': (100000000000, 100000), }"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("input_ids.npy", npy)
    np.savez(tmp_path / "mismatch.npz", **arrays, task_names=np.array(["a", "b"]), task_counts=np.array([1]))
    for name in (*cases, "pickled.npz", "huge.npz", "mismatch.npz"):
        with pytest.raises(ValueError, match=name):
            PackedDataset.load(tmp_path / name)
    np.savez(tmp_path / "float_ids.npz", **{**arrays, "input_ids": arrays["input_ids"] + 0.5})
    with pytest.raises(ValueError, match="input_ids must be an integer array"):  # was truncated silently
        PackedDataset.load(tmp_path / "float_ids.npz")
    np.savez(tmp_path / "no_tasks.npz", **arrays)
    assert PackedDataset.load(tmp_path / "no_tasks.npz").tasks == {}


def _tiny_model():
    return Model.from_config(dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
                             seed=3)


def test_packed_rows_equal_separate_rows_for_the_model():
    model = _tiny_model()
    exs = _random_examples(np.random.default_rng(2), 12, lo=4, hi=20)
    packed = pack_examples(exs, seq_len=48)
    single = pack_examples(exs, seq_len=48, packing=False)
    s_p, n_p = model.loss(packed.input_ids, packed.labels, packed.attention_mask, packed.position_ids)
    s_s, n_s = model.loss(single.input_ids, single.labels, single.attention_mask, single.position_ids)
    assert n_p == n_s == packed.num_target_tokens
    assert s_p == pytest.approx(s_s, rel=1e-5)
    # logits of the second example of a packed row equal its logits alone
    r = int(np.argmax(packed.examples_per_row >= 2))
    starts = np.flatnonzero(packed.position_ids[r] == 0)
    a, b = int(starts[1]), int(starts[2]) if len(starts) > 2 else int(packed.attention_mask[r].sum())
    lp = model.forward(packed.input_ids[r:r + 1], packed.attention_mask[r:r + 1], packed.position_ids[r:r + 1])
    alone = model.forward(packed.input_ids[r:r + 1, a:b])
    np.testing.assert_allclose(lp[0, a:b], alone[0], rtol=1e-5, atol=1e-5)


def test_text_examples_split_long_documents():
    exs = text_examples(TOK, ["a" * 10, "b" * 25], seq_len=8)
    assert [len(e.ids) for e in exs] == [8, 4, 8, 8, 8, 3]
    assert exs[0].ids[0] == TOK.bos_id and exs[1].ids[-1] == TOK.eos_id and exs[0].labels == exs[0].ids


def test_greedy_generate_matches_manual_argmax_and_batching():
    model = _tiny_model()
    prompts = [[1, 5, 9, 13], [1, 7], [1, 20, 21, 22, 23, 24, 25]]
    batched = greedy_generate(model, prompts, max_new_tokens=6, batch_size=3)
    one_by_one = [greedy_generate(model, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == one_by_one
    seq = list(prompts[0])
    for _ in range(6):
        seq.append(int(np.argmax(model.forward(np.array([seq], dtype=np.int32))[0, -1])))
    assert batched[0] == seq[4:]
    eos = batched[1][2]  # stopping at a chosen "EOS" truncates there
    stopped = greedy_generate(model, [prompts[1]], max_new_tokens=6, eos_id=eos)[0]
    assert stopped == batched[1][:batched[1].index(eos)]

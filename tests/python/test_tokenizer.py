"""ecomllm.Tokenizer against the sentencepiece Python package (the reference) on the same model files.

The corpus is real e-commerce text from ../shared/data (Flipkart titles, Amazon appliance Q&A)
when it is there, else a generated product-text fixture; held-out text is the data sets' dev
splits (or held-out generated lines) plus hand-written lines with unicode, emoji (byte fallback),
digits and whitespace runs. Ids must be identical (exact integer equality), decoded text equal.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

spm = pytest.importorskip("sentencepiece")

from ecomllm import Tokenizer  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
TITLES = DATA / "classify"
QA = DATA / "qa" / "amazon_qa" / "qa_appliances.train.jsonl"
QA_HELD_OUT = 1500  # last lines of the Q&A file: never trained on

# Lines no corpus has seen: accents, CJK, emoji (only byte fallback can encode them), digits,
# runs of spaces and tabs, leading/trailing whitespace, empty and whitespace-only text.
EDGE_LINES = [
    "",
    " ",
    "    ",
    "\t",
    "Samsung 55\" 4K UHD Smart LED TV (UA55AU7700) – 2021 model",
    "Crème brûlée torch — naïve café façade, Größe XL, Ærø",
    "日本製 ステンレス 水筒 500ml 保温 保冷",
    "कॉटन कुर्ता पुरुषों के लिए",
    "Gift set 🎁 for her 💄👠 rated ⭐⭐⭐⭐⭐ 👍🏽 👨‍👩‍👧‍👦",
    "Price: ₹1,299.00 (save 35%) — €12,50 / $9.99 / £7",
    "1234567890 0000 007 3.14159 1e-9 -42 +91-98765-43210",
    "two  spaces,   three,\t\ttabs,      six",
    "  leading and trailing spaces  ",
    "line one\nline two\r\nline three",
    "ﬁne ligature ｆｕｌｌｗｉｄｔｈ ①②③ Ⅻ",
    "mixed CASE sku AB-12/X_9 #hash @at ~tilde `tick` {json: [1, 2]}",
    "\u200b zero width \u00a0 nbsp \ufeff bom",
    "a" * 3000,
]


def _jsonl(path: Path, *fields: str, limit: int | None = None) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            out.extend(str(rec[k]) for k in fields if rec.get(k))
    return out if limit is None else out[:limit]


def _fixture_text(n: int, seed: int) -> list[str]:
    """Generated product titles and questions (used when ../shared/data is absent)."""
    rng = random.Random(seed)
    brands = ["Samsung", "Philips", "Bosch", "Prestige", "Nike", "Puma", "Havells", "Bajaj", "Whirlpool", "Lakmé"]
    things = ["Mixer Grinder", "Running Shoes", "LED Bulb", "Steam Iron", "Electric Kettle", "Pressure Cooker",
              "Cotton Kurta", "Water Bottle", "Washing Machine", "Refrigerator", "Ceiling Fan", "Trimmer"]
    colours = ["Black", "White", "Red", "Navy Blue", "Rose Gold", "Silver", "Multicolor"]
    questions = ["Does it come with a warranty?", "What is the capacity?", "Is it compatible with model",
                 "How loud is it?", "Can I use it outdoors?", "Does the price include installation?"]
    # Made-up product words from syllables, so BPE has thousands of merges to learn.
    syl = ["ka", "lo", "mi", "tra", "sen", "dor", "vel", "qui", "pha", "ron", "tex", "ul", "zen", "bri", "ash"]
    words = sorted({"".join(random.Random(k).choices(syl, k=2 + k % 3)) for k in range(4000)})
    lines = []
    for _ in range(n):
        extra = " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
        if rng.random() < 0.6:
            lines.append(f"{rng.choice(brands)} {rng.choice(things)} {rng.randint(1, 5000)} W "
                         f"({rng.choice(colours)}, Pack of {rng.randint(1, 6)}) {extra}")
        else:
            lines.append(f"{rng.choice(questions)} {rng.choice(brands)} {rng.randint(100, 999)}-"
                         f"{rng.choice('ABCXYZ')}{rng.randint(1, 99)}? Yes, {rng.randint(1, 24)} months, {extra}.")
    return lines


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    """{'train': corpus lines, 'held_out': lines never trained on, 'source': where they came from}."""
    if (TITLES / "flipkart_titles.train.jsonl").exists() and QA.exists():
        qa = _jsonl(QA, "question", "answer")
        train = _jsonl(TITLES / "flipkart_titles.train.jsonl", "product_name") + qa[:-QA_HELD_OUT]
        held = _jsonl(TITLES / "flipkart_titles.dev.jsonl", "product_name") + qa[-QA_HELD_OUT:]
        source = "shared"
    else:
        train, held, source = _fixture_text(12000, 1), _fixture_text(3000, 2), "fixture"
    # One record per line: sentencepiece reads lines, so newlines inside a record are spaces here.
    train = [t.replace("\n", " ").replace("\r", " ") for t in train]
    return {"train": train, "held_out": held + EDGE_LINES, "source": source}


@pytest.fixture(scope="module")
def corpus(texts, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "corpus.txt"
    path.write_text("\n".join(texts["train"]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def llama_model(corpus) -> Path:
    """A Llama-style BPE byte-fallback model trained by ecomllm."""
    out = corpus.parent / "llama_bpe.model"
    Tokenizer.train([corpus], 2000, out, num_threads=2)
    return out


def _assert_parity(ours: Tokenizer, ref, lines: list[str], score_ties_may_differ: bool = False) -> None:
    """Ids, pieces, decoding and the vocabulary of `ours` equal the reference processor's.

    score_ties_may_differ (unigram only): where two segmentations have the same total score, the
    libraries' Viterbi may pick either (the Debian C++ library is 0.1.97, the Python package 0.2.x;
    sentencepiece does not guarantee its tie-breaking, google/sentencepiece#747). Such lines must
    still be exact ties (scores equal to 1e-4) and decode to the same text.
    """
    assert len(ours) == ref.get_piece_size()
    assert (ours.unk_id, ours.bos_id, ours.eos_id, ours.pad_id) == (ref.unk_id(), ref.bos_id(), ref.eos_id(), ref.pad_id())
    for i in range(len(ours)):
        assert ours.id_to_piece(i) == ref.id_to_piece(i), i
        assert (ours.is_byte(i), ours.is_control(i), ours.is_unknown(i)) == (ref.is_byte(i), ref.is_control(i), ref.is_unknown(i)), i
        assert ours.piece_to_id(ref.id_to_piece(i)) == ref.piece_to_id(ref.id_to_piece(i)), i

    def score(ids: list[int]) -> float:
        return sum(ref.get_score(i) for i in ids)

    ids = ours.encode(lines)  # batch (parallel)
    ref_ids = ref.encode(lines)
    mismatches = [(t, a, b) for t, a, b in zip(lines, ids, ref_ids) if a != b]
    if score_ties_may_differ:
        for t, a, b in mismatches:
            assert abs(score(a) - score(b)) < 1e-4 and ours.decode(a) == ref.decode(b) == t, (t, a, b)
    else:
        assert not mismatches, f"{len(mismatches)} of {len(lines)} lines differ, first: {mismatches[0]}"
    assert ours.decode(ids) == ref.decode(ids)
    assert ours.decode(ref_ids) == ref.decode(ref_ids)
    tied = {t for t, _, _ in mismatches}
    for t in lines[:: max(1, len(lines) // 300)] + EDGE_LINES:
        if t in tied:
            continue
        assert ours.encode(t, add_bos=True, add_eos=True) == ref.encode(t, add_bos=True, add_eos=True), t
        assert ours.encode_as_pieces(t) == ref.encode(t, out_type=str), t


def test_llama_bpe_trained_by_us_matches_sentencepiece(llama_model, texts):
    ours = Tokenizer.from_file(llama_model)
    ref = spm.SentencePieceProcessor(model_file=str(llama_model))
    held = texts["held_out"]
    assert len(held) >= 2000
    _assert_parity(ours, ref, held)

    # Llama's layout: <unk>=0 <s>=1 </s>=2, no <pad>, then the 256 byte pieces.
    assert (ours.unk_id, ours.bos_id, ours.eos_id, ours.pad_id) == (0, 1, 2, -1)
    assert [ours.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert [ours.id_to_piece(i) for i in (3, 4, 258)] == ["<0x00>", "<0x01>", "<0xFF>"]
    assert all(ours.is_byte(i) for i in range(3, 259))
    # Byte fallback: no <unk> anywhere, emoji become byte pieces; text comes back exactly
    # (identity normalization, whitespace kept as written).
    ids = ours.encode(held)
    assert all(0 not in row for row in ids)
    assert ours.decode(ids) == held
    assert any(ours.is_byte(i) for i in ours.encode("👍🏽"))
    # Digits one per piece; a dummy "▁" prefix; whitespace runs kept; no NFKC (ligature stays bytes).
    assert [p for p in ours.encode_as_pieces("x 2024") if p.strip("▁")][-4:] == ["2", "0", "2", "4"]
    assert ours.encode_as_pieces("Bosch")[0].startswith("▁")
    assert ours.decode(ours.encode("a     b")) == "a     b"
    assert "fi" not in "".join(ours.encode_as_pieces("ﬁ"))


def test_model_trained_by_sentencepiece_loads_in_ours(corpus, texts, tmp_path):
    prefix = tmp_path / "ref"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=1500, model_type="bpe", byte_fallback=True,
        split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, character_coverage=0.9995, pad_id=3, num_threads=2,
        minloglevel=2,
    )
    model = Path(f"{prefix}.model")
    ref = spm.SentencePieceProcessor(model_file=str(model))
    for ours in (Tokenizer.from_file(model), Tokenizer.from_bytes(model.read_bytes())):
        assert ours.pad_id == 3
        _assert_parity(ours, ref, texts["held_out"])


def test_unigram_model_matches_sentencepiece(corpus, texts):
    out = corpus.parent / "unigram.model"
    ours = Tokenizer.train([corpus], 1500, out, model_type="unigram", num_threads=2)
    ref = spm.SentencePieceProcessor(model_file=str(out))
    _assert_parity(ours, ref, texts["held_out"], score_ties_may_differ=True)


def _mistral_tokenizer_model() -> Path | None:
    """Mistral-7B v0.1's tokenizer.model, shipped in the mistral-common package (when installed)."""
    spec = importlib.util.find_spec("mistral_common")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "tokenizer.model.v1"
    return path if path.exists() else None


@pytest.mark.skipif(_mistral_tokenizer_model() is None, reason="mistral-common (ships Mistral-7B's tokenizer.model) not installed")
def test_real_mistral_tokenizer_matches_sentencepiece(texts):
    model = _mistral_tokenizer_model()
    ours, ref = Tokenizer.from_file(model), spm.SentencePieceProcessor(model_file=str(model))
    assert (len(ours), ours.unk_id, ours.bos_id, ours.eos_id, ours.pad_id) == (32000, 0, 1, 2, -1)
    _assert_parity(ours, ref, texts["train"][:5000] + texts["held_out"])


def test_training_is_deterministic(corpus, tmp_path):
    """Sampled, shuffled input: the same options give the same model bytes, and the sample is not
    simply the first lines. (sentencepiece 0.1.97 seeds its line sampler itself: `seed` changes
    nothing observable there, so the test does not ask it to.)"""
    opts = dict(input_sentence_size=3000, num_threads=1, seed=7)
    a = Tokenizer.train([corpus], 800, tmp_path / "a.model", **opts)
    b = Tokenizer.train([corpus], 800, tmp_path / "b.model", **opts)
    first = Tokenizer.train([corpus], 800, tmp_path / "c.model", shuffle_input_sentence=False, **opts)
    assert a.serialized_model() == b.serialized_model()
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert first.serialized_model() != a.serialized_model()


def test_batch_equals_single_and_bytes_round_trip(llama_model, texts, tmp_path):
    tok = Tokenizer.from_file(llama_model)
    lines = texts["held_out"][:500] + EDGE_LINES
    batch = tok.encode(lines, add_bos=True)
    assert batch == [tok.encode(t, add_bos=True) for t in lines]
    assert tok.decode(batch) == [tok.decode(ids) for ids in batch]
    assert tok.decode([np.asarray(ids, dtype=np.int64) for ids in batch[:5]]) == lines[:5]
    assert tok.decode(np.asarray(batch[0], dtype=np.int32)) == lines[0]
    assert tok.encode([]) == [] and tok.decode([]) == ""

    # Many Python threads at once (the GIL is released): same ids as one thread.
    results: dict[int, list] = {}

    def work(k: int) -> None:
        results[k] = [tok.encode(t) for t in lines[k::4]]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        assert results[k] == [tok.encode(t) for t in lines[k::4]]

    # bytes -> model -> file -> model: the same bytes.
    data = tok.serialized_model()
    assert data == llama_model.read_bytes()
    copy = tmp_path / "copy.model"
    Tokenizer.from_bytes(data).save(copy)
    assert copy.read_bytes() == data
    assert Tokenizer.from_file(str(copy)).encode(lines[0]) == tok.encode(lines[0])
    assert repr(tok).startswith("Tokenizer(vocab_size=2000")


def test_bad_model_files_and_ids(llama_model, tmp_path):
    with pytest.raises(ValueError, match="missing.model"):
        Tokenizer.from_file(tmp_path / "missing.model")
    with pytest.raises(ValueError, match="not a regular file"):
        Tokenizer.from_file(tmp_path)
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="garbage.model"):
        Tokenizer.from_file(garbage)
    with pytest.raises(ValueError):
        Tokenizer.from_bytes(b"not a model at all \xff\xff")
    with pytest.raises(ValueError):
        Tokenizer.from_bytes(b"")
    with pytest.raises(TypeError):
        Tokenizer.from_bytes("a str")
    # A truncated model file is refused or (cut on a field boundary) still a usable model: never a crash.
    data = llama_model.read_bytes()
    for cut in (1, 7, len(data) // 3, len(data) // 2, len(data) - 1):
        try:
            tok = Tokenizer.from_bytes(data[:cut])
        except ValueError:
            continue
        tok.decode(tok.encode("still works 123"))

    tok = Tokenizer.from_file(llama_model)
    v = len(tok)
    for bad in ([v], [5, -1], [2**40], [3, 2**70]):
        with pytest.raises(ValueError, match="out of range"):
            tok.decode(bad)
    for bad in ([1.5], ["a"], [None], "abc", [True]):
        with pytest.raises(ValueError, match="integers"):
            tok.decode(bad)
    with pytest.raises(ValueError, match=r"decode_batch\[1\]"):
        tok.decode([[5, 6], [7, v + 3]])
    for fn in (tok.id_to_piece, tok.is_byte, tok.is_control, tok.is_unknown):
        with pytest.raises(ValueError, match="out of range"):
            fn(v)
        with pytest.raises(ValueError, match="out of range"):
            fn(-1)
    with pytest.raises(ValueError, match="texts must be str"):
        tok.encode(["ok", 3])
    with pytest.raises(ValueError, match="UTF-8"):
        tok.encode("lone \ud800 surrogate")
    with pytest.raises(ValueError, match="UTF-8"):
        tok.encode(["ok", "\udfff"])
    assert tok.piece_to_id("certainly-not-a-piece") == tok.unk_id


def _varint(x: int) -> bytes:
    out = bytearray()
    while True:
        b, x = x & 0x7F, x >> 7
        out.append(b | (0x80 if x else 0))
        if not x:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # a length-delimited protobuf field
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _last_field(msg: bytes, number: int) -> bytes:
    """The last length-delimited field `number` of a protobuf message (varint/fixed fields skipped)."""
    i, found = 0, None

    def varint() -> int:
        nonlocal i
        v = shift = 0
        while True:
            b = msg[i]
            i += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return v

    while i < len(msg):
        key = varint()
        kind = key & 7
        if kind == 0:
            varint()
        elif kind in (1, 5):
            i += 8 if kind == 1 else 4
        else:
            n = varint()
            if key >> 3 == number:
                found = msg[i:i + n]
            i += n
    assert found is not None
    return found


def test_hostile_model_fields_are_refused_not_crashed(corpus, tmp_path):
    # Appended ModelProto fields merge into the model (protobuf's rule), so each case below is a
    # valid model plus one hostile field. Debian's libsentencepiece, which we link, accepts them all
    # (the first made encode() segfault); ours refuses them, as newer sentencepiece releases do.
    prefix = tmp_path / "nfkc"
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), vocab_size=300, model_type="bpe",
                                   normalization_rule_name="nmt_nfkc", num_threads=1, minloglevel=2)
    model = Path(f"{prefix}.model").read_bytes()
    ref = spm.SentencePieceProcessor(model_proto=model)
    tok = Tokenizer.from_bytes(model)  # the built-in NFKC charsmap passes the checks
    assert tok.encode("Ｒed ﬁ shoe ①") == ref.encode("Ｒed ﬁ shoe ①")
    charsmap = _last_field(_last_field(model, 3), 2)  # normalizer_spec.precompiled_charsmap
    assert len(charsmap) > 100_000
    trie_bytes = int.from_bytes(charsmap[:4], "little")

    def with_charsmap(blob: bytes, spec: int = 3) -> bytes:  # 3: normalizer_spec, 5: denormalizer_spec
        return model + _field(spec, _field(2, blob))

    hostile = {
        # a trie root whose offset points far outside (segfaulted in encode() before the check)
        "root": b"\x04\x00\x00\x00" + b"\x01\x02\x03\x04" + b"\x00",
        "no units": b"\x00\x00\x00\x00" + b"a\x00",
        # the real trie cut to its first 256 units: its nodes point past the end
        "cut trie": (1024).to_bytes(4, "little") + charsmap[4:4 + 1024] + b"\x00" * 16,
        # the real trie without its replacement strings
        "no strings": charsmap[:4 + trie_bytes] + b"x",
        # replacement strings without their terminating NUL bytes
        "no NULs": charsmap[:4 + trie_bytes] + charsmap[4 + trie_bytes:].replace(b"\x00", b"x"),
    }
    for name, blob in hostile.items():
        for spec in (3, 5):
            with pytest.raises(ValueError, match="corrupt (de)?normalizer_spec.precompiled_charsmap"):
                Tokenizer.from_bytes(with_charsmap(blob, spec))
    assert Tokenizer.from_bytes(with_charsmap(charsmap)).encode("ｶﾀｶﾅ") == ref.encode("ｶﾀｶﾅ")

    piece = lambda text: _field(1, _field(1, text) + b"\x15\x00\x00\x00\x00")  # pieces { piece, score }
    with pytest.raises(ValueError, match=r"piece \d+ \('\\xff'\) is not valid UTF-8"):
        Tokenizer.from_bytes(model + piece(b"\xff"))  # decode() would have raised UnicodeDecodeError
    with pytest.raises(ValueError, match=r"\\xff is already defined"):  # sentencepiece's message, escaped
        Tokenizer.from_bytes(model + piece(b"\xff") + piece(b"\xff"))


def test_train_errors_leave_no_partial_model(corpus, llama_model, tmp_path):
    out = tmp_path / "tok.model"
    with pytest.raises(ValueError, match="no_such_corpus.txt"):
        Tokenizer.train([corpus, tmp_path / "no_such_corpus.txt"], 1000, out)
    with pytest.raises(ValueError, match="does not exist"):
        Tokenizer.train([corpus], 1000, tmp_path / "no_dir" / "tok.model")
    with pytest.raises(TypeError, match="unknown option 'vocab'"):
        Tokenizer.train([corpus], 1000, out, vocab=5)
    with pytest.raises(ValueError, match="model_type"):
        Tokenizer.train([corpus], 1000, out, model_type="wordpiece")
    with pytest.raises(ValueError, match="given twice"):
        Tokenizer.train([corpus], 1000, out, user_defined_symbols=["[QA]", "[QA]"])
    with pytest.raises(ValueError, match="special ids must differ"):
        Tokenizer.train([corpus], 1000, out, bos_id=0)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="no usable lines"):
        Tokenizer.train([empty], 300, out)
    assert not out.exists()

    # A vocabulary the corpus cannot fill: sentencepiece's reason surfaces, and the model already
    # at the output path stays as it was, with no temporary files beside it.
    out.write_bytes(llama_model.read_bytes())
    before = sorted(os.listdir(tmp_path))
    small = tmp_path / "small.txt"
    small.write_text("\n".join(f"steam iron {i} W" for i in range(200)))
    before = sorted(os.listdir(tmp_path))
    for model_type in ("bpe", "unigram"):
        with pytest.raises(ValueError, match="Vocabulary size too high"):
            Tokenizer.train([small], 5000, out, model_type=model_type)
    assert out.read_bytes() == llama_model.read_bytes()
    assert sorted(os.listdir(tmp_path)) == before


def test_killed_training_leaves_no_model(tmp_path):
    """SIGKILL in the middle of training: nothing at the output path (it is written by rename)."""
    rng = random.Random(3)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyzäöü") for _ in range(rng.randint(2, 9))) for _ in range(20000)]
    corpus = tmp_path / "big.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(30)) for _ in range(60000)), encoding="utf-8")
    out = tmp_path / "killed.model"
    started = tmp_path / "started"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from ecomllm import Tokenizer
        Path({str(started)!r}).write_text("1")
        Tokenizer.train([{str(corpus)!r}], 8000, {str(out)!r}, model_type="unigram", num_threads=1)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        while not started.exists() and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.5)  # into sentencepiece's loading / training
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be interrupted"
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith("killed.model")]

"""Tokenizer and data-pipeline throughput: ecomllm.Tokenizer (C++ sentencepiece wrapper) against
the sentencepiece Python package (the anchor) on the same model and text, plus the cost of turning
instruction records into packed training rows.

    python benchmarks/bench_tokenizer.py --json [--quick]

Text: the bundled catalogue's corpus (generated, so the benchmark runs offline), plus the Flipkart
titles of ../shared/data when present. Figures are best of several runs. Both tokenizers give
identical ids (checked here on every line before timing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

import ecomllm  # noqa: E402
from ecomllm.data import build_instruction_set, generate_catalog, pretraining_corpus  # noqa: E402
from ecomllm.data.packing import pack_examples  # noqa: E402
from ecomllm.data.templates import encode_examples  # noqa: E402


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def corpus_lines(n_products: int) -> list[str]:
    lines = list(pretraining_corpus(generate_catalog(seed=0, n_products=n_products)))
    titles = ROOT.parent / "shared" / "data" / "classify" / "flipkart_titles.train.jsonl"
    if titles.is_file():
        with open(titles, encoding="utf-8") as f:
            lines += [json.loads(line)["product_name"] for line in f if line.strip()]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="smaller corpus, fewer repeats")
    args = ap.parse_args()
    import sentencepiece as spm

    n_products, repeat = (1000, 2) if args.quick else (5000, 5)
    lines = corpus_lines(n_products)
    mbytes = sum(len(s.encode()) for s in lines) / 1e6
    threads = ecomllm.cpu_info()["threads"]
    result: dict = {"lines": len(lines), "mbytes": round(mbytes, 2), "threads": threads,
                    "sentencepiece_python": spm.__version__}

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        vocab = 4000
        # Training: same options on both sides (Llama conventions: BPE, byte fallback, split digits).
        t0 = time.perf_counter()
        ours = ecomllm.Tokenizer.train([str(corpus)], vocab_size=vocab, output_path=str(Path(tmp) / "ours.model"))
        train_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(Path(tmp) / "ref"), vocab_size=vocab,
                                       model_type="bpe", byte_fallback=True, split_digits=True,
                                       character_coverage=0.9995, normalization_rule_name="identity",
                                       remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
                                       unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=threads,
                                       minloglevel=2)
        train_ref = time.perf_counter() - t0
        result["train_s"] = {"ours": round(train_ours, 2), "sentencepiece": round(train_ref, 2)}

        # Encoding: both load OUR model so the ids must match exactly.
        ref = spm.SentencePieceProcessor(model_file=str(Path(tmp) / "ours.model"))
        ours_ids = ours.encode(lines)
        if ours_ids != ref.encode(lines):
            raise SystemExit("ids differ between ecomllm.Tokenizer and sentencepiece: benchmark aborted")
        n_tokens = sum(map(len, ours_ids))
        timings = {
            "ours_batch": best_of(lambda: ours.encode(lines), repeat),
            "ours_one_by_one": best_of(lambda: [ours.encode(s) for s in lines], max(1, repeat // 2)),
            "sentencepiece_batch": best_of(lambda: ref.encode(lines, num_threads=threads), repeat),
            "sentencepiece_one_by_one": best_of(lambda: [ref.encode(s) for s in lines], max(1, repeat // 2)),
        }
        result["tokens"] = n_tokens
        result["encode_mb_per_s"] = {k: round(mbytes / v, 2) for k, v in timings.items()}
        result["encode_ratio_batch_ours_vs_sentencepiece"] = round(timings["sentencepiece_batch"] / timings["ours_batch"], 3)
        decode_ours = best_of(lambda: ours.decode(ours_ids), repeat)
        decode_ref = best_of(lambda: ref.decode(ours_ids), repeat)
        result["decode_mtokens_per_s"] = {"ours_batch": round(n_tokens / decode_ours / 1e6, 2),
                                          "sentencepiece_batch": round(n_tokens / decode_ref / 1e6, 2)}

        # Records -> packed rows: tokenize prompt/completion pairs and pack into 256-token rows.
        cat = generate_catalog(seed=1, n_products=n_products // 2)
        examples = build_instruction_set(cat.products, cat.qa, cat.general, seed=0)
        t_encode = best_of(lambda: encode_examples(ours, examples, "plain", max_len=256), max(1, repeat // 2))
        encoded = encode_examples(ours, examples, "plain", max_len=256)
        t_pack = best_of(lambda: pack_examples(encoded, 256), max(1, repeat // 2))
        packed = pack_examples(encoded, 256)
        result["pipeline"] = {"examples": len(examples), "encode_examples_per_s": round(len(examples) / t_encode),
                              "pack_examples_per_s": round(len(examples) / t_pack),
                              "rows": len(packed), "fill": round(packed.num_tokens / packed.input_ids.size, 3)}

    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:45s} {v}")


if __name__ == "__main__":
    main()

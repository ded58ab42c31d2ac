"""Command line: ``ecomllm <command>`` or ``python -m ecomllm <command>``.

The training recipe (each stage reads the previous one's files from ``run_dir``):
  prepare-data     build instruction data ([CLASSIFY]/[EXTRACT]/[QA] + general) and a text corpus
  train-tokenizer  train a sentencepiece BPE tokenizer (Llama conventions) on the corpus
  pretrain         pre-train a small Llama from scratch on the corpus (all parameters)
  train            QLoRA-fine-tune a base model (NF4 + LoRA) on the instruction data
  evaluate         dev loss and task metrics, base model vs fine-tuned, with sample completions
  demo             all of the above on the bundled catalogue (configs/demo.yaml)
Tools:
  nf4-demo         quantize a weight matrix to NF4, report error, storage and kernel speed
  info             CPU features and the SIMD level the kernels use

Every recipe command takes ``--config FILE.yaml`` and ``section.key=value`` overrides, e.g.
``ecomllm train --config configs/demo.yaml sft.train.learning_rate=1e-4 sft.lora.r=8``.
``ecomllm <command> --help`` lists every option with its default.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from . import _core, cpu_info
from .quant import NF4Tensor


def _best_time(fn, repeat: int) -> float:
    fn()  # warm-up (first-touch, thread start)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_demo(rows: int, cols: int, seed: int, out=sys.stdout) -> dict:
    """Quantize a Gaussian [rows, cols] weight (the shape of a Llama-7B projection by default) and
    measure what NF4 buys: bits per weight, reconstruction error, and fused-kernel speed against
    numpy on the dense fp32 weight."""
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)  # typical init scale

    t0 = time.perf_counter()
    w4 = NF4Tensor.quantize(weight, blocksize=64, double_quant=True)
    quantize_s = time.perf_counter() - t0
    dense = w4.dequantize()
    err = dense - weight
    rel_rmse = float(np.sqrt(np.mean(err**2)) / np.sqrt(np.mean(weight**2)))
    snr_db = float(10 * np.log10(np.mean(weight**2) / np.mean(err**2)))

    x1 = rng.standard_normal((1, cols)).astype(np.float32)
    x128 = rng.standard_normal((128, cols)).astype(np.float32)
    gemv_s = _best_time(lambda: w4.matmul(x1), 20)
    gemm_s = _best_time(lambda: w4.matmul(x128), 5)
    np_gemv_s = _best_time(lambda: x1 @ dense.T, 20)
    np_gemm_s = _best_time(lambda: x128 @ dense.T, 5)
    y = w4.matmul(x128)
    kernel_rel_err = float(np.abs(y - x128 @ dense.T).max() / np.abs(x128 @ dense.T).max())

    report = {
        "shape": [rows, cols],
        "simd_level": _core.simd_level(),
        "threads": _core.max_threads(),
        "bits_per_weight": round(w4.bits_per_weight, 4),
        "nf4_mib": round(w4.nbytes / 2**20, 2),
        "fp32_mib": round(weight.nbytes / 2**20, 2),
        "relative_rmse": round(rel_rmse, 5),
        "snr_db": round(snr_db, 2),
        "quantize_mweights_per_s": round(weight.size / quantize_s / 1e6, 1),
        "gemv_ms": round(gemv_s * 1e3, 3),
        "numpy_fp32_gemv_ms": round(np_gemv_s * 1e3, 3),
        "gemm_m128_gflops": round(2 * 128 * rows * cols / gemm_s / 1e9, 1),
        "numpy_fp32_gemm_m128_gflops": round(2 * 128 * rows * cols / np_gemm_s / 1e9, 1),
        "kernel_vs_dense_rel_err": kernel_rel_err,
        # the first one-row matmul laid the codes out for decoding where the CPU runs that kernel
        "decode_layout": w4.decoding_nbytes > 0,
        "held_mib": round(w4.memory_nbytes / 2**20, 2),
    }
    print(f"NF4 demo: weight {rows}x{cols} float32 ({report['fp32_mib']} MiB), "
          f"{report['threads']} threads, kernels: {report['simd_level']}", file=out)
    print(f"  storage     {report['nf4_mib']} MiB NF4 + double-quantized scales = "
          f"{report['bits_per_weight']} bits/weight ({weight.nbytes / w4.nbytes:.1f}x smaller)", file=out)
    print(f"  error       relative RMSE {rel_rmse:.4f}, SNR {snr_db:.1f} dB", file=out)
    print(f"  quantize    {report['quantize_mweights_per_s']} M weights/s", file=out)
    print(f"  decode      y = x @ W^T, M=1:   NF4 {report['gemv_ms']} ms   vs numpy fp32 "
          f"{report['numpy_fp32_gemv_ms']} ms" + (f"   (decode layout, {report['held_mib']} MiB held)"
                                                  if report["decode_layout"] else ""), file=out)
    print(f"  prefill     M=128:             NF4 {report['gemm_m128_gflops']} GFLOP/s vs numpy fp32 "
          f"{report['numpy_fp32_gemm_m128_gflops']} GFLOP/s", file=out)
    print(f"  exactness   fused kernel vs dequantize-then-matmul: max rel err {kernel_rel_err:.2e}", file=out)
    return report


# Which config sections each recipe command uses (its --help lists those).
_SECTIONS = {"prepare-data": ("data",), "train-tokenizer": ("tokenizer",), "pretrain": ("pretrain",),
             "train": ("sft",), "evaluate": ("sft", "eval"),
             "demo": ("data", "tokenizer", "pretrain", "sft", "eval")}
_HELP = {"prepare-data": "build the instruction data set and the pre-training corpus",
         "train-tokenizer": "train a sentencepiece tokenizer on the corpus",
         "pretrain": "pre-train a small base model from scratch (all parameters)",
         "train": "QLoRA supervised fine-tuning (NF4 base + LoRA, completion-only loss)",
         "evaluate": "dev loss and task metrics of the base vs the fine-tuned model",
         "demo": "every stage on the bundled catalogue, end to end"}


def _recipe_help(command: str) -> str:
    from .pipeline import PipelineConfig
    from .train.config import config_help
    import dataclasses
    import typing
    hints = typing.get_type_hints(PipelineConfig)
    parts = ["options (set in the YAML file by section, or as section.key=value arguments):",
             "  run_dir (str, default runs/demo): folder of every stage's inputs and outputs",
             "  (each stage writes into run_dir; its train.output_dir and train.mode are set by the stage)"]
    for f in dataclasses.fields(PipelineConfig):
        if f.name in _SECTIONS[command]:
            parts.append(config_help(hints[f.name], f.name))
    return "\n".join(parts)


def _run_recipe(command: str, args) -> int:
    from . import pipeline
    from .train.config import load_config
    cfg = load_config(pipeline.PipelineConfig, args.config, args.overrides)
    progress = not args.no_progress
    if command == "prepare-data":
        result = pipeline.prepare_data(cfg)
    elif command == "train-tokenizer":
        result = pipeline.train_tokenizer(cfg)
    elif command == "pretrain":
        result = pipeline.pretrain(cfg, progress, args.resume)
    elif command == "train":
        result = pipeline.finetune(cfg, progress, args.resume)
    elif command == "evaluate":
        result = pipeline.evaluate(cfg, args.adapter)
        print(pipeline.format_report(result))
    else:
        result = pipeline.run_all(cfg, progress)
        print(pipeline.format_report(result))
        print(f"stage timings (s): {result['timings_s']}, total {result['total_s']} s")
    if args.json:
        print(json.dumps(result, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ecomllm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for command, help_text in _HELP.items():
        p = sub.add_parser(command, help=help_text, description=help_text, epilog=_recipe_help(command),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", metavar="FILE.yaml", help="YAML configuration (defaults: the bundled demo)")
        p.add_argument("overrides", nargs="*", metavar="section.key=value",
                       help="override one option, e.g. sft.train.learning_rate=1e-4")
        p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
        p.add_argument("--json", action="store_true", help="also print the stage's result as JSON")
        if command in ("pretrain", "train"):
            p.add_argument("--resume", metavar="latest|CHECKPOINT", help="continue from the latest checkpoint in the "
                           "stage's folder (run_dir/pretrain or run_dir/sft), or from the given one")
        if command == "evaluate":
            p.add_argument("--adapter", help="adapter folder to evaluate (default: run_dir/adapter)")
    demo = sub.add_parser("nf4-demo", help="NF4 quantization demo: error, storage and kernel speed")
    demo.add_argument("--rows", type=int, default=4096)
    demo.add_argument("--cols", type=int, default=4096)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", action="store_true", help="also print the report as JSON")
    sub.add_parser("info", help="CPU features and active SIMD level")
    # Overrides may sit anywhere among the options (`train --resume latest sft.lora.r=8 --json`):
    # argparse stops collecting a positional list at the first option, so gather the rest here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        stray = [x for x in extra if x.startswith("-") or "=" not in x or args.command not in _HELP]
        if stray:
            parser.error(f"unrecognized arguments: {' '.join(stray)}")
        args.overrides = list(args.overrides) + extra
    if args.command in _HELP:
        try:
            return _run_recipe(args.command, args)
        except (ValueError, FileNotFoundError, FileExistsError) as e:
            # Configuration and data errors: one clear line, no traceback (they name file and key).
            hint = (" (on the command line: --resume latest, or another run_dir=...)"
                    if isinstance(e, FileExistsError) and "checkpoints" in str(e) else "")
            print(f"ecomllm {args.command}: error: {e}{hint}", file=sys.stderr)
            return 2
    if args.command == "nf4-demo":
        if args.rows <= 0 or args.cols <= 0:
            parser.error("--rows and --cols must be positive")
        report = run_demo(args.rows, args.cols, args.seed)
        if args.json:
            print(json.dumps(report))
    elif args.command == "info":
        print(json.dumps(cpu_info(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

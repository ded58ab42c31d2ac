#!/usr/bin/env python3
"""LoRA training-step benchmark: ecomllm (NF4 and bf16 base) vs transformers + PEFT on torch.

Usage::

    python benchmarks/bench_train.py            # readable summary on stdout
    python benchmarks/bench_train.py --json     # exactly one JSON object on stdout
    python benchmarks/bench_train.py --quick    # tiny model, 1 timed step (smoke run, < 1 min)
    python benchmarks/bench_train.py --steps 5 --threads 2
    python benchmarks/bench_train.py --json --rounds 2   # engines alternate twice: fairer when the machine drifts

One step = LoRA (r=16, alpha=32, all seven projections, no dropout) forward + backward +
AdamW step + zero_grad on a batch of [batch, seq] random token ids (labels = ids) of a
Llama-shaped model with random weights (about 100M parameters by default).

* ours      -- ecomllm.Model.from_pretrained(dir, quantize="nf4") (fp32 dense weights)
* ours_bf16 -- ecomllm.Model.from_pretrained(dir, dtype="bf16") (no quantization)
* ours_medium -- ours with ecomllm.set_float32_matmul_precision("medium"): on AMX CPUs the tile
  products, on AVX512-BF16 CPUs the tiled products' VDPBF16PS pairs, take bf16 inputs (fp32
  accumulation), QLoRA's usual compute dtype; not counted in `speedup` (torch runs fp32);
  elsewhere (AVX2, scalar) it equals `ours`
* torch     -- transformers LlamaForCausalLM (fp32) + peft.get_peft_model, torch.optim.AdamW

The random model is written once with transformers' save_pretrained to a temporary folder. Each
engine then runs in its own child process (this script with --engine ...), so that its peak
resident memory (getrusage ru_maxrss) is its own: it includes the interpreter, the imported
libraries and the model load, not only training. The children run one after another with the
same thread count (OMP/BLAS variables before import, torch.set_num_threads). Timing: one warm-up
step, then the median of --steps steps (time.perf_counter). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
TARGETS = {"speedup": 1.5, "memory_ratio": 0.5}
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_R, LORA_ALPHA, LR = 16, 32, 2e-4

# ~99.5M parameters: embeddings 24.6M, lm_head (untied) 24.6M, 8 layers x 6.29M.
FULL_SHAPE = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                  num_attention_heads=12, num_key_value_heads=4)
QUICK_SHAPE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)
ENGINES = ("ours", "ours_bf16", "ours_medium", "torch")
PEAK_PROBE_S = 1.0  # seconds of the machine's FMA-peak probe, run before and after the engines


def step_gflop(shape: dict, batch: int, seq: int) -> dict:
    """Multiply-add work (1e9 flops, 2 per multiply-add) one LoRA step needs at the least, by part.

    Counted: every product a LoRA step cannot avoid, as transformers + PEFT and ours both run it:
    frozen projections forward and input-gradient backward (layer 0's q/k/v input gradient is not
    needed under a frozen embedding), the LoRA products (forward u = x A^T and u B^T; backward
    dB, dy B, dA, g A), causal attention (half of the [T x T] score products, forward 2, backward
    4 products), and the lm_head forward and input-gradient on the B*(T-1) rows with a target.
    Not counted: element-wise work (norms, rope, softmax, SwiGLU, AdamW) and any recomputation.
    """
    C, I, L, V = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"], shape["vocab_size"]
    H, Hkv = shape["num_attention_heads"], shape["num_key_value_heads"]
    d = C // H
    N, R = batch * seq, LORA_R
    proj = {"q_proj": (C, H * d), "k_proj": (C, Hkv * d), "v_proj": (C, Hkv * d), "o_proj": (H * d, C),
            "gate_proj": (C, I), "up_proj": (C, I), "down_proj": (I, C)}
    qkv_in = sum(i * o for p, (i, o) in proj.items() if p in ("q_proj", "k_proj", "v_proj"))
    dense = sum(i * o for i, o in proj.values())
    linear = 2 * N * dense * L + 2 * N * (dense * L - qkv_in)
    lora_fwd = sum(2 * N * R * (i + o) for i, o in proj.values()) * L
    lora_bwd = sum(2 * N * R * (2 * o + 2 * i) for i, o in proj.values()) * L \
        - sum(2 * N * R * i for p, (i, o) in proj.items() if p in ("q_proj", "k_proj", "v_proj"))
    attention = 6 * batch * H * seq * seq * d * L  # 6 products x 2 flops x (T^2 / 2 causal) x d per head
    head = 2 * 2 * batch * (seq - 1) * C * V
    parts = {"linear": linear, "lora": lora_fwd + lora_bwd, "attention": attention, "lm_head": head}
    return {k: v / 1e9 for k, v in parts.items()} | {"total": sum(parts.values()) / 1e9}


def log(msg: str) -> None:
    print(f"[bench_train] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quick", action="store_true", help="tiny model, seq 32, batch 2, 1 timed step")
    p.add_argument("--steps", type=int, default=None, help="timed steps per engine (default 3, --quick 1)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every engine")
    p.add_argument("--seq", type=int, default=None, help="sequence length (default 256, --quick 32)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 4, --quick 2)")
    p.add_argument("--omp-wait-policy", choices=("passive", "active"), default=None,
                   help="OMP_WAIT_POLICY for every engine (default: unset, the libraries' own default). "
                        "passive helps a lot on a machine shared with other load: idle OpenMP threads "
                        "then sleep instead of spinning away the process's CPU share")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ",".join(ENGINES))
    p.add_argument("--rounds", type=int, default=1,
                   help="run the engines this many times, alternating (ours, torch, ours, torch, ...), and "
                        "take the median over all their timed steps: fairer on a machine whose speed drifts")
    # internal: run one engine in this process and print its JSON result
    p.add_argument("--engine", choices=ENGINES + ("write", "peak"), help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.steps = a.steps if a.steps is not None else (1 if a.quick else 3)
    a.seq = a.seq if a.seq is not None else (32 if a.quick else 256)
    a.batch = a.batch if a.batch is not None else (2 if a.quick else 4)
    if a.steps < 1 or a.threads < 1 or a.seq < 2 or a.batch < 1 or a.rounds < 1:
        p.error("--steps, --threads, --batch, --rounds must be >= 1 and --seq >= 2")
    return a


def rss_mb(field: str = "VmRSS") -> float | None:
    """Current (VmRSS) or peak (VmHWM) resident memory of this process in MiB, from /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def batch_ids(vocab: int, batch: int, seq: int):
    import numpy as np
    rng = np.random.default_rng(1234)
    return rng.integers(0, vocab, size=(batch, seq), dtype=np.int64)


def timed_steps(step, steps: int) -> dict:
    """One warm-up step, then `steps` timed ones; `step` returns a dict of phase seconds."""
    t0 = time.perf_counter()
    step()
    warm = time.perf_counter() - t0
    totals, phases = [], {}
    cpu0, wall0, load0 = os.times(), time.perf_counter(), os.getloadavg()[0]
    for i in range(steps):
        t0 = time.perf_counter()
        ph = step()
        totals.append(time.perf_counter() - t0)
        for k, v in ph.items():
            phases.setdefault(k, []).append(v)
        log(f"  step {i + 1}/{steps}: {totals[-1]:.3f} s " + " ".join(f"{k}={v:.3f}" for k, v in ph.items()))
    cpu1, wall1 = os.times(), time.perf_counter()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {"warmup_s": warm, "step_s": totals, "median_step_s": statistics.median(totals),
            "best_step_s": min(totals),
            "median_phase_s": {k: statistics.median(v) for k, v in phases.items()},
            # CPU seconds this process got per wall second of the timed steps: well below the
            # thread count means it was starved (other load on the machine) or ran serial parts
            "cpu_cores_used": cpu / (wall1 - wall0),
            "loadavg_1min": [load0, os.getloadavg()[0]]}


# ---------------------------------------------------------------------------------------------
# child: one engine
# ---------------------------------------------------------------------------------------------
def run_ours(a, cfg: dict, bf16: bool, precision: str = "highest") -> dict:
    import ecomllm
    ecomllm.set_float32_matmul_precision(precision)
    rss_imports = rss_mb()
    t0 = time.perf_counter()
    if bf16:
        model = ecomllm.Model.from_pretrained(a.model_dir, dtype="bf16")
    else:
        model = ecomllm.Model.from_pretrained(a.model_dir, quantize="nf4")
    model.add_lora(ecomllm.LoraConfig(r=LORA_R, alpha=LORA_ALPHA, target_modules="all-linear"))
    opt = ecomllm.AdamW(model.trainable_parameters(), lr=LR)
    load_s = time.perf_counter() - t0
    rss_loaded = rss_mb()
    ids = batch_ids(cfg["vocab_size"], a.batch, a.seq)
    losses = []

    def step():
        t0 = time.perf_counter()
        losses.append(model.forward_backward(ids, ids))
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        model.zero_grad()
        t3 = time.perf_counter()
        return {"forward_backward": t1 - t0, "opt_step": t2 - t1, "zero_grad": t3 - t2}

    r = timed_steps(step, a.steps)
    import ecomllm._core as core
    r.update(load_s=load_s, rss_after_imports_mb=rss_imports, rss_after_load_mb=rss_loaded,
             params=model.num_parameters(), trainable_params=model.num_parameters(trainable_only=True),
             engine_threads=core.max_threads(), losses=losses, fp32_matmul_precision=precision,
             amx=core.amx_active())
    return r


def run_torch(a, cfg: dict) -> dict:
    import torch
    torch.set_num_threads(a.threads)
    import peft
    import transformers
    rss_imports = rss_mb()
    t0 = time.perf_counter()
    model = transformers.LlamaForCausalLM.from_pretrained(a.model_dir, torch_dtype=torch.float32)
    lcfg = peft.LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=PROJECTIONS,
                           task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, lcfg)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=LR)
    load_s = time.perf_counter() - t0
    rss_loaded = rss_mb()
    ids = torch.from_numpy(batch_ids(cfg["vocab_size"], a.batch, a.seq))
    losses = []

    def step():
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        losses.append(float(loss.detach()))
        return {"forward": t1 - t0, "backward": t2 - t1, "opt_step": t3 - t2, "zero_grad": t4 - t3}

    r = timed_steps(step, a.steps)
    r.update(load_s=load_s, rss_after_imports_mb=rss_imports, rss_after_load_mb=rss_loaded,
             params=sum(p.numel() for p in model.parameters() if not p.requires_grad),
             trainable_params=sum(p.numel() for p in trainable), engine_threads=torch.get_num_threads(),
             attn_implementation=getattr(model.config, "_attn_implementation", None),
             versions={"torch": torch.__version__, "transformers": transformers.__version__,
                       "peft": peft.__version__}, losses=losses)
    return r


def child_main(a) -> int:
    import resource
    if a.engine == "write":
        print(json.dumps({"params": write_model(QUICK_SHAPE if a.quick else FULL_SHAPE, a.model_dir)}))
        return 0
    if a.engine == "peak":  # the machine's fp32 FMA limit with the engines' thread count
        import ecomllm._core as core
        print(json.dumps({"fma_peak_gflops": core.fma_peak_gflops(PEAK_PROBE_S, a.threads),
                          "simd_level": core.simd_level(), "amx": core.amx_active()}))
        return 0
    with open(os.path.join(a.model_dir, "config.json")) as f:
        cfg = json.load(f)
    # keep stdout for the single JSON line: libraries that print go to stderr
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        if a.engine == "torch":
            r = run_torch(a, cfg)
        else:
            r = run_ours(a, cfg, bf16=a.engine == "ours_bf16",
                         precision="medium" if a.engine == "ours_medium" else "highest")
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
    tokens = a.batch * a.seq
    # VmHWM is this process's own high-water mark. ru_maxrss (Linux: KiB) is the same here because
    # the parent stays small (it writes the model in another child), but Linux carries a parent's
    # maxrss over fork + exec, so it is only reported alongside.
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    hwm = rss_mb("VmHWM")
    r.update(engine=a.engine, tokens_per_step=tokens, tokens_per_s=tokens / r["median_step_s"],
             peak_rss_mb=hwm if hwm is not None else maxrss, ru_maxrss_mb=maxrss)
    print(json.dumps(r), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# parent: write the model, run each engine in a child, collect
# ---------------------------------------------------------------------------------------------
def write_model(shape: dict, path: str) -> int:
    import torch
    import transformers
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**shape, max_position_embeddings=4096, tie_word_embeddings=False,
                                   rms_norm_eps=1e-5, rope_theta=10000.0)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(path, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def run_child(a, engine: str, model_dir: str) -> dict:
    env = dict(os.environ)
    for k in THREAD_ENV_VARS:
        env[k] = str(a.threads)
    if a.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = a.omp_wait_policy
    cmd = [sys.executable, os.path.abspath(__file__), "--engine", engine, "--model-dir", model_dir,
           "--steps", str(a.steps), "--threads", str(a.threads), "--seq", str(a.seq), "--batch", str(a.batch)]
    if a.quick:
        cmd.append("--quick")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=None, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    if p.returncode != 0 or not lines:
        return {"error": f"child exited with {p.returncode}", "stdout_tail": p.stdout[-2000:]}
    r = json.loads(lines[-1])
    r["wall_s"] = time.perf_counter() - t0
    return r


def merge_rounds(runs: list, tokens: int) -> dict:
    """One engine's result over --rounds child runs (rounds alternate engines, so a machine that
    drifts during the benchmark weighs on every engine alike): the first run's record with
    step_s / median_step_s / best_step_s / tokens_per_s over the timed steps of all rounds and the
    highest peak RSS; the per-round records stay in `rounds`."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    if len(runs) == 1:
        return runs[0]
    merged = dict(ok[0])
    steps = [t for r in ok for t in r["step_s"]]
    merged.update(step_s=steps, median_step_s=statistics.median(steps), best_step_s=min(steps),
                  tokens_per_s=tokens / statistics.median(steps),
                  peak_rss_mb=max(r["peak_rss_mb"] for r in ok),
                  rounds=[{k: r.get(k) for k in ("step_s", "median_step_s", "tokens_per_s", "peak_rss_mb",
                                                 "cpu_cores_used", "loadavg_1min", "error")} for r in runs])
    return merged


def ratio(num, den):
    return None if num is None or den in (None, 0) else num / den


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.engine:
        return child_main(a)
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        log(f"unknown engines {bad}; choose from {ENGINES}")
        return 2
    shape = QUICK_SHAPE if a.quick else FULL_SHAPE
    t_start = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as d:
        log(f"writing random Llama model {shape} to {d}")
        # in a child, so that this process never holds torch (see child_main on ru_maxrss)
        w = run_child(a, "write", d)
        if "error" in w:
            log(f"writing the model failed: {w['error']}")
            return 1
        params = w["params"]
        log(f"{params:,} parameters; batch {a.batch} x seq {a.seq}, {a.threads} threads, {a.steps} timed steps")
        peaks = [run_child(a, "peak", d)]
        rounds: dict = {e: [] for e in engines}
        for rnd in range(a.rounds):
            for e in engines:
                log(f"engine {e} (round {rnd + 1}/{a.rounds}) ...")
                r = run_child(a, e, d)
                rounds[e].append(r)
                if "error" in r:
                    log(f"engine {e} failed: {r['error']}")
                else:
                    log(f"engine {e}: {r['tokens_per_s']:.1f} tokens/s, peak RSS {r['peak_rss_mb']:.0f} MiB")
        for e in engines:
            results[e] = merge_rounds(rounds[e], a.batch * a.seq)
        peaks.append(run_child(a, "peak", d))

    def get(e, k):
        return results.get(e, {}).get(k)

    speedup = ratio(get("ours", "tokens_per_s"), get("torch", "tokens_per_s"))
    memory_ratio = ratio(get("ours", "peak_rss_mb"), get("torch", "peak_rss_mb"))
    # The machine's limit: the step's unavoidable multiply-adds at the measured FMA peak. Its
    # ratio to torch's step is the most any engine could gain over torch on this machine.
    work = step_gflop(shape, a.batch, a.seq)
    peak_values = [p["fma_peak_gflops"] for p in peaks if "fma_peak_gflops" in p]
    peak = max(peak_values) if peak_values else None
    ideal_step_s = work["total"] / peak if peak else None

    def gflops(e):
        return ratio(work["total"], get(e, "median_step_s"))

    out = {
        "ours_tokens_per_s": get("ours", "tokens_per_s"),
        "torch_tokens_per_s": get("torch", "tokens_per_s"),
        "speedup": speedup,
        "ours_peak_rss_mb": get("ours", "peak_rss_mb"),
        "torch_peak_rss_mb": get("torch", "peak_rss_mb"),
        "memory_ratio": memory_ratio,
        "ours_bf16_tokens_per_s": get("ours_bf16", "tokens_per_s"),
        "ours_bf16_peak_rss_mb": get("ours_bf16", "peak_rss_mb"),
        "bf16_speedup": ratio(get("ours_bf16", "tokens_per_s"), get("torch", "tokens_per_s")),
        "ours_medium_tokens_per_s": get("ours_medium", "tokens_per_s"),
        "medium_speedup": ratio(get("ours_medium", "tokens_per_s"), get("torch", "tokens_per_s")),
        "machine_peak_gflops": peak,
        "step_gflop": work["total"],
        "ours_gflops": gflops("ours"),
        "torch_gflops": gflops("torch"),
        "ours_fraction_of_peak": ratio(gflops("ours"), peak),
        "torch_fraction_of_peak": ratio(gflops("torch"), peak),
        "ours_bf16_fraction_of_peak": ratio(gflops("ours_bf16"), peak),
        "speedup_at_machine_peak": ratio(get("torch", "median_step_s"), ideal_step_s),
        "machine_peak_runs_gflops": peak_values,
        "simd_level": next((p["simd_level"] for p in peaks if "simd_level" in p), None),
        "amx": next((p["amx"] for p in peaks if "amx" in p), None),
        "step_gflop_parts": work,
        "params": params,
        "shape": shape,
        "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "dropout": 0.0, "target_modules": PROJECTIONS},
        "threads": a.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY") if a.omp_wait_policy is None else a.omp_wait_policy,
        "best_step_speedup": ratio(get("torch", "best_step_s"), get("ours", "best_step_s")),
        "seq": a.seq,
        "batch": a.batch,
        "tokens_per_step": a.seq * a.batch,
        "steps": a.steps,
        "rounds": a.rounds,
        "quick": a.quick,
        "targets": TARGETS,
        "meets_targets": {"speedup": None if speedup is None else speedup >= TARGETS["speedup"],
                          "memory_ratio": None if memory_ratio is None else memory_ratio <= TARGETS["memory_ratio"]},
        "notes": ("tokens_per_s = batch*seq / median step time (forward+backward+optimizer step+zero_grad) after "
                  "1 warm-up step; peak_rss_mb = ru_maxrss of the engine's own child process: interpreter, "
                  "imported libraries and model load included (rss_after_imports_mb / rss_after_load_mb in "
                  "details separate them); details.*.cpu_cores_used = CPU seconds per wall second during "
                  "the timed steps, loadavg_1min = machine load before/after: on a shared machine compare "
                  "them before trusting the ratios; machine_peak_gflops = the best of two runs (before and "
                  "after the engines) of ecomllm's register-only FMA probe on all threads at the active SIMD "
                  "level; step_gflop = the step's unavoidable multiply-adds (step_gflop in bench_train.py); "
                  "*_gflops = step_gflop / median step; speedup_at_machine_peak = torch's step / "
                  "(step_gflop / machine_peak_gflops): the largest speedup over torch an fp32-FMA engine "
                  "could reach here; amx = ours ran its tiled products on AMX tiles (bf16x3, fp32-accurate: "
                  "quant/amx_tiles.h), which are not bound by the fp32 FMA peak, so ours_fraction_of_peak "
                  "may exceed 1 there; ours_medium = ours at set_float32_matmul_precision('medium') (bf16 "
                  "inputs to the AMX or AVX512-BF16 products, fp32 accumulation), medium_speedup its ratio to torch fp32: "
                  "a different precision, not the target's comparison"),
        "details": results,
        "total_wall_s": time.perf_counter() - t_start,
        "errors": {e: r["error"] for e, r in results.items() if "error" in r},
    }
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"model: {params:,} params, batch {a.batch} x seq {a.seq}, {a.threads} threads, median of {a.steps}")
        for e in engines:
            r = results[e]
            if "error" in r:
                print(f"  {e:11s} ERROR {r['error']}")
                continue
            ph = " ".join(f"{k}={v:.3f}s" for k, v in r["median_phase_s"].items())
            print(f"  {e:11s} {r['tokens_per_s']:9.1f} tok/s  step {r['median_step_s']:.3f}s ({ph})  "
                  f"peak RSS {r['peak_rss_mb']:.0f} MiB (after load {r['rss_after_load_mb']:.0f})")
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
        print(f"speedup {fmt(speedup)} (target >= {TARGETS['speedup']}), memory_ratio {fmt(memory_ratio)} "
              f"(target <= {TARGETS['memory_ratio']})")
        print(f"machine: FMA peak {fmt(peak)} GFLOP/s; step {work['total']:.1f} GFLOP; ours "
              f"{fmt(out['ours_fraction_of_peak'])} of peak, torch {fmt(out['torch_fraction_of_peak'])}; "
              f"speedup at machine peak {fmt(out['speedup_at_machine_peak'])}")
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

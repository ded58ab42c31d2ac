#!/usr/bin/env python3
"""NF4 kernel benchmark for ecomllm: memory bandwidth, GEMV, GEMM, quantization, bitsandbytes.

Usage::

    python benchmarks/bench_nf4.py            # readable table on stdout
    python benchmarks/bench_nf4.py --json     # exactly one JSON object on stdout
    python benchmarks/bench_nf4.py --quick    # smaller working sets / fewer repetitions (< 60 s)
    python benchmarks/bench_nf4.py --threads 2

Everything is measured in one process with one thread count, set for every library before any
of them is imported (OpenMP for ecomllm and bitsandbytes, torch intra-op threads, numpy's BLAS).
Progress goes to stderr; stdout carries only the result (the JSON object with --json), even if
a library prints from C code: file descriptor 1 points at stderr while measuring.

What is measured (benchmarks/README.md describes every field):

* read_bandwidth_gbs -- STREAM-style multi-threaded read of a >= 1 GiB buffer (best of N, at the
  start and again at the end of the run, max taken): the physical limit for token-by-token decoding.
* gemv_* -- ecomllm's fused NF4 M=1 path as NF4Tensor runs it by default, cycled over >= 1 GiB of
  distinct NF4 matrices (double_quant=True, blocksize=64) so the last-level cache does not
  flatter it, in bytes of quantized storage (NF4Tensor.nbytes) read per second (median pass).
  With the default decoding policy (ecomllm.quant.set_decoding_policy) a tensor's first matmul of
  1-16 rows lays its codes out for the exact product-table kernel, in place of bitsandbytes'
  packed codes, where a decode kernel runs: AVX-512 VBMI + VNNI, or the avx2 level (gemv_layout
  says which ran; ~4.6 bits per weight held, gemv_held_bits_per_weight).
* gemv_bnb_layout_* -- the kernel over bitsandbytes' layout (prepare_decoding(False)) on the same
  matrices in the same alternating passes: the default where the decode layout does not apply.
  gemm_m128_codes_released_vs_held: prefill speed with the codes released (W panels from the
  decode layout) relative to bitsandbytes' layout at M=128, timed with the GEMM candidates;
  details.gemm.<shape>.rows_sweep_ms: 1-64 rows.
* gemv_int16_* -- the opt-in int16-activation decoding kernel (NF4Tensor.matmul(x,
  activations="int16"): 16-bit products, exact integer sums, ~1e-4 relative; on the decode layout
  where the matrices have one, else x rounded per 64 elements over bitsandbytes' layout) on the
  same matrices in the same alternating passes. gemv_gbs / gemv_vs_bandwidth stay the exact kernel.
* bnb_* -- bitsandbytes' NF4 M=1 paths (Linear4bit / gemv_4bit on the AVX512-BF16 repacked
  weight, and the plain fp32 matmul_4bit), cycled over distinct matrices as well. The fused
  bitsandbytes passes alternate with ours, pass by pass, so that drift in the machine (other
  tenants, vCPU placement) hits both sides alike.
* gemm_* -- ecomllm's NF4 GEMM at M=128 against numpy (OpenBLAS) and torch fp32 matmuls on the
  dequantized weight (median). Where set_float32_matmul_precision("medium") changes the products
  (AMX, or AVX512-BF16: cpu_info()["bf16_products"]) also the forward and backward (matmul_t) at
  "medium" against torch's bf16 matmuls (gemm_medium_*, gemm_t_*).
* quantize_* -- quantization throughput of NF4Tensor.quantize and bitsandbytes quantize_4bit.

The distinct matrices are copies of one quantized matrix per shape whose byte arrays are rotated
by a different, non-page-aligned amount per copy: every copy holds different bytes (no page can
be deduplicated or shared), the work per call is the same.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

GIB = 1 << 30
MIB = 1 << 20

TARGETS = {"gemv_vs_bandwidth": 0.85, "gemm_vs_fp32_blas": 0.8, "ours_vs_bnb_gemv": 1.0}

GEMV_SHAPES = ((4096, 4096), (11008, 4096))   # (N, K): out_features x in_features
GEMM_SHAPES = ((4096, 4096), (11008, 4096))
GEMM_M = 128
BLOCKSIZE = 64
QUANT_SHAPE = (4096, 4096)
ROLL_STEP = 4099          # bytes; copy i is rotated by i * ROLL_STEP (odd: never page aligned)

# Relative max error (vs x @ dequantized_weight.T) above which a kernel's output is called wrong.
TOL_FP32 = 1e-3
TOL_BF16_OUT = 1e-2  # torch's bf16 matmuls round their output to bf16
TOL_INT16 = 1e-3          # int16 activations: ~1e-4 expected (tests hold it to 5e-4)
TOL_BF16 = 5e-2           # bf16 activations / scales (bitsandbytes' fused CPU path)

NOISY_CORES = 0.15        # average cores used elsewhere during a phase above which the run is flagged
QUIESCE_S = 0.3           # idle time before each timed section (see quiesce())
GAP_S = 0.2               # idle time before each block when interleaved candidates switch thread pools

_T0 = time.perf_counter()


# ---------------------------------------------------------------------------------------------
# configuration (runs before numpy / torch / ecomllm are imported)
# ---------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark ecomllm's NF4 kernels against memory bandwidth, "
                                            "fp32 BLAS and bitsandbytes.")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (nothing else)")
    p.add_argument("--quick", action="store_true",
                   help="smaller working sets and fewer repetitions (smoke run, < 60 s); every measurement still runs")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every library (default: os.cpu_count())")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    return args


class Config:
    """Sizes and repetition counts; --quick shrinks them."""

    def __init__(self, quick: bool):
        self.quick = quick
        if quick:
            self.bw_bytes = 256 * MIB
            self.bw_reps = 5
            self.gemv_ws = 128 * MIB          # per shape, ours and bnb fused each
            self.gemv_min_rounds, self.gemv_max_rounds, self.gemv_budget_s = 5, 25, 0.5
            self.gemm_min_rounds, self.gemm_max_rounds, self.gemm_budget_s, self.gemm_block = 1, 1, 0.0, 2
            self.quant_reps, self.bnb_quant_reps = 2, 1
            self.bnb_fp32_ws = 64 * MIB
            self.bnb_fp32_min, self.bnb_fp32_max, self.bnb_fp32_budget_s = 2, 3, 0.3
            self.hot_calls = 20
            self.max_attempts, self.retry_deadline_s, self.retry_wait_s = 2, 15.0, 2.0
        else:
            self.bw_bytes = 1 * GIB
            self.bw_reps = 10
            self.gemv_ws = 1 * GIB
            self.gemv_min_rounds, self.gemv_max_rounds, self.gemv_budget_s = 9, 41, 10.0
            self.gemm_min_rounds, self.gemm_max_rounds, self.gemm_budget_s, self.gemm_block = 3, 7, 6.0, 3
            self.quant_reps, self.bnb_quant_reps = 7, 3
            self.bnb_fp32_ws = 256 * MIB
            self.bnb_fp32_min, self.bnb_fp32_max, self.bnb_fp32_budget_s = 3, 7, 4.0
            self.hot_calls = 200
            self.max_attempts, self.retry_deadline_s, self.retry_wait_s = 3, 140.0, 5.0


def peak_rss_bytes() -> int:
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: KiB
    except Exception:  # noqa: BLE001
        return 0


def log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - _T0:6.1f}s peak {peak_rss_bytes() / GIB:4.2f} GiB] {msg}",
          file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
class LoadMonitor:
    """CPU time used by *other* processes (and stolen by the hypervisor) while a phase ran.

    From /proc/stat (all CPUs, busy and steal jiffies) and this process's own CPU time; the
    result is in cores: 0.0 = the machine was ours alone, 1.0 = one core busy elsewhere on
    average. On a machine with as many threads as cores, anything else running slows the timed
    parallel kernels badly, so the phases are recorded and `noisy_machine` flags a run.
    """

    def __init__(self):
        self.phases: dict = {}
        try:
            self.hz = os.sysconf("SC_CLK_TCK")
        except (ValueError, OSError, AttributeError):
            self.hz = 100

    def _sample(self):
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        steal = v[7] if len(v) > 7 else 0
        busy = sum(v[:8]) - idle - steal        # user nice system irq softirq (guest is in user)
        t = os.times()
        return time.perf_counter(), busy / self.hz, steal / self.hz, t.user + t.system

    def start(self):
        return self._sample()

    def stop(self, name, s0):
        s1 = self._sample()
        if s0 is None or s1 is None or s1[0] <= s0[0]:
            return 0.0
        wall = s1[0] - s0[0]
        other = max(0.0, ((s1[1] - s0[1]) - (s1[3] - s0[3])) / wall)
        steal = max(0.0, (s1[2] - s0[2]) / wall)
        self.phases[name] = {"other_processes_cores": other, "steal_cores": steal, "wall_s": wall}
        if other > NOISY_CORES or steal > NOISY_CORES:
            log(f"WARNING: during {name} other processes used {other:.2f} cores and the hypervisor stole "
                f"{steal:.2f} cores on average: its figures are disturbed")
        return max(other, steal)


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def quiesce() -> None:
    """Let the worker threads of the other thread pools in this process go idle before timing.

    OpenBLAS workers busy-wait (sched_yield) for a while after a BLAS call, and libgomp workers
    (ecomllm's and bitsandbytes', torch's own copy) spin after a parallel region; with few cores
    that steals cycles from whatever is timed next.
    """
    time.sleep(QUIESCE_S)


def timed_reps(fn, min_reps: int, max_reps: int, budget_s: float, warmup: int = 1) -> list[float]:
    """fn() warmup times untimed, then at least min_reps and at most max_reps timed calls,
    stopping once budget_s seconds of timed work have passed. Returns the durations (s)."""
    quiesce()
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    while len(times) < max_reps and (len(times) < min_reps or spent < budget_s):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
    return times


def interleaved_reps(fns: dict, min_rounds: int, max_rounds: int, budget_s: float,
                     per_block: int = 1, gap_s: float = 0.0) -> dict:
    """Rounds in which every fn in turn gets a block of per_block timed calls, after one untimed
    warm-up round. gap_s > 0 sleeps before each block so that the previous library's worker
    threads stop spinning (needed when the fns use different thread pools). Stops after
    max_rounds, or once min_rounds are done and budget_s seconds of timed work have passed."""
    quiesce()
    for fn in fns.values():
        if gap_s:
            time.sleep(gap_s)
        fn()
    times = {k: [] for k in fns}
    spent = 0.0
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or spent < budget_s):
        for k, fn in fns.items():
            if gap_s:
                time.sleep(gap_s)
            for _ in range(per_block):
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                times[k].append(dt)
                spent += dt
        rounds += 1
    return times


def rel_err(y, ref) -> float:
    import numpy as np
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(y - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def rnd(v, sig=5):
    """Round floats to `sig` significant digits for the report (non-finite -> None)."""
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
        return float(f"{v:.{sig}g}")
    return v


def rnd_tree(obj):
    if isinstance(obj, dict):
        return {k: rnd_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rnd_tree(v) for v in obj]
    return rnd(obj)


def shape_key(shape) -> str:
    return f"{shape[0]}x{shape[1]}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def cache_sizes() -> dict:
    out = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for d in sorted(os.listdir(base)):
            if not d.startswith("index"):
                continue
            vals = {}
            for f in ("level", "type", "size"):
                with open(f"{base}/{d}/{f}") as fh:
                    vals[f] = fh.read().strip()
            suffix = {"Data": "d", "Instruction": "i"}.get(vals["type"], "")
            out[f"L{vals['level']}{suffix}"] = vals["size"]
    except OSError:
        pass
    return out


def openblas_threads():
    """Threads numpy's OpenBLAS will use, read through its C API (None if it cannot be found)."""
    import ctypes
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for lib in sorted(libs):
        try:
            h = ctypes.CDLL(lib)
        except OSError:
            continue
        for sym in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                    "scipy_openblas_get_num_threads", "openblas_get_num_threads"):
            fn = getattr(h, sym, None)
            if fn is not None:
                try:
                    fn.restype = ctypes.c_int
                    return int(fn())
                except Exception:  # noqa: BLE001 - best effort
                    return None
    return None


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, cfg: Config, threads: int):
        import numpy as np
        import torch
        import ecomllm
        from ecomllm import NF4Tensor, _core
        self.np, self.torch, self.ecomllm, self.NF4Tensor, self._core = np, torch, ecomllm, NF4Tensor, _core
        # "medium" runs other products than "highest" where AMX or bf16 pairs take them
        self.medium_runs = bool(_core.amx_active() or _core.bf16_products_available())
        self.cfg = cfg
        self.threads = threads
        torch.set_num_threads(threads)
        self.rng = np.random.default_rng(1234)
        self.res: dict = {}
        self.details: dict = {}
        self.errors: dict = {}
        self.bnb = None
        self.bnbF = None
        self.bw_runs: dict = {}
        self.peak_runs: dict = {}   # label -> fp32 FMA peak GFLOP/s (ecomllm's register-only probe)
        self.load = LoadMonitor()
        self.retries: dict = {}

    def monitored(self, name: str, fn, *args, **kw) -> bool:
        """Run one measurement phase, recording a failure in self.errors[name] and the load from
        other processes meanwhile. If the machine was busy (see LoadMonitor), wait and measure the
        phase again, up to cfg.max_attempts in all and while the run is younger than
        cfg.retry_deadline_s. Returns True if fn succeeded."""
        cfg = self.cfg
        for attempt in range(1, cfg.max_attempts + 1):
            self.errors.pop(name, None)
            s0 = self.load.start()
            try:
                fn(*args, **kw)
            except Exception as e:  # noqa: BLE001
                self.errors[name] = f"{type(e).__name__}: {e}"
                log(f"{name} FAILED: {type(e).__name__}: {e}")
                self.load.stop(name, s0)
                return False
            busy = self.load.stop(name, s0)
            if busy <= NOISY_CORES:
                return True
            if attempt == cfg.max_attempts or time.perf_counter() - _T0 > cfg.retry_deadline_s:
                log(f"{name}: machine busy, no retry left; figures kept but flagged (noisy_machine)")
                return True
            self.retries[name] = attempt
            log(f"{name}: machine busy ({busy:.2f} cores used elsewhere); waiting {cfg.retry_wait_s:.0f} s, "
                f"then measuring again (attempt {attempt + 1} of {cfg.max_attempts})")
            time.sleep(cfg.retry_wait_s)
        return True

    # -- read bandwidth -------------------------------------------------------------------------
    def bandwidth(self, label: str):
        np, torch = self.np, self.torch
        cfg = self.cfg
        n = cfg.bw_bytes // 4
        log(f"read bandwidth ({label}): {cfg.bw_bytes / GIB:.2f} GiB float32 buffer, best of {cfg.bw_reps}")
        buf = torch.empty(n, dtype=torch.float32)
        buf.uniform_(0.0, 1.0)        # non-constant data: no page can be shared or deduplicated
        nbytes = buf.numel() * buf.element_size()
        expect = float(np.add.reduce(buf.numpy(), dtype=np.float64))   # buffered cast: no 2 GiB copy
        methods, medians = {}, {}

        def check(name, s):
            if not abs(s - expect) <= 1e-3 * abs(expect):
                raise RuntimeError(f"{name} gave {s}, expected {expect}")

        # (1) torch.sum: at::parallel_for over torch.get_num_threads() threads, AVX-512 reduction.
        try:
            check("torch.sum", float(torch.sum(buf)))
            times = timed_reps(lambda: torch.sum(buf), cfg.bw_reps, cfg.bw_reps, 0.0, warmup=1)
            methods["torch.sum"] = nbytes / min(times) / 1e9
            medians["torch.sum"] = nbytes / median(times) / 1e9
        except Exception as e:  # noqa: BLE001
            self.errors[f"read_bandwidth_torch_{label}"] = f"{type(e).__name__}: {e}"

        # (2) numpy: np.add.reduce of one contiguous chunk per thread in Python threads
        #     (numpy releases the GIL inside the reduction loop).
        name = f"numpy.add.reduce x{self.threads} threads"
        try:
            from concurrent.futures import ThreadPoolExecutor
            chunks = np.array_split(buf.numpy(), self.threads)
            with ThreadPoolExecutor(max_workers=self.threads) as ex:
                def run():
                    return sum(float(v) for v in ex.map(np.add.reduce, chunks))
                check(name, run())
                times = timed_reps(run, cfg.bw_reps, cfg.bw_reps, 0.0, warmup=1)
            methods[name] = nbytes / min(times) / 1e9
            medians[name] = nbytes / median(times) / 1e9
            del chunks
        except Exception as e:  # noqa: BLE001
            self.errors[f"read_bandwidth_numpy_{label}"] = f"{type(e).__name__}: {e}"

        del buf
        gc.collect()
        if methods:
            self.bw_runs[label] = {"best_gbs": methods, "median_gbs": medians, "buffer_bytes": nbytes}
        log(f"read bandwidth ({label}): " + ", ".join(f"{k} best {v:.2f} / median {medians[k]:.2f} GB/s"
                                                     for k, v in methods.items()))

    def fma_peak(self, label: str):
        """The machine's fp32 FMA limit on our threads at the active SIMD level (GEMM's ceiling)."""
        g = float(self._core.fma_peak_gflops(1.0, self.threads))
        self.peak_runs[label] = g
        log(f"FMA peak ({label}): {g:.1f} GFLOP/s")

    # -- quantization ----------------------------------------------------------------------------
    def quantize(self):
        np = self.np
        cfg = self.cfg
        N, K = QUANT_SHAPE
        numel = N * K
        w = self.rng.standard_normal((N, K), dtype=np.float32) * np.float32(0.02)
        self._w_quant = w
        log(f"quantize: NF4Tensor.quantize {N}x{K} fp32 (blocksize={BLOCKSIZE}, double_quant=True)")
        times = timed_reps(lambda: self.NF4Tensor.quantize(w, blocksize=BLOCKSIZE, double_quant=True),
                           cfg.quant_reps, cfg.quant_reps, 0.0, warmup=1)
        t = median(times)
        self.res["quantize_gbs"] = numel / t / 1e9
        self.res["quantize_input_gbs"] = 4 * numel / t / 1e9
        self.details["quantize_ms"] = t * 1e3
        log(f"quantize: ours {t * 1e3:.1f} ms = {numel / t / 1e9:.3f} G weights/s")

    def bnb_quantize(self):
        cfg = self.cfg
        N, K = QUANT_SHAPE
        numel = N * K
        tw = self.torch.from_numpy(self._w_quant)
        F = self.bnbF
        log(f"quantize: bitsandbytes quantize_4bit {N}x{K} fp32 (nf4, blocksize={BLOCKSIZE}, compress_statistics)")
        times = timed_reps(lambda: F.quantize_4bit(tw, blocksize=BLOCKSIZE, quant_type="nf4",
                                                  compress_statistics=True),
                           cfg.bnb_quant_reps, cfg.bnb_quant_reps, 0.0, warmup=1)
        t = median(times)
        self.res["bnb_quantize_gbs"] = numel / t / 1e9
        self.res["bnb_quantize_input_gbs"] = 4 * numel / t / 1e9
        self.details["bnb_quantize_ms"] = t * 1e3
        log(f"quantize: bnb {t * 1e3:.1f} ms = {numel / t / 1e9:.3f} G weights/s")

    # -- per shape ---------------------------------------------------------------------------------
    def run_shape(self, shape, do_gemv: bool, do_gemm: bool):
        np = self.np
        N, K = shape
        key = shape_key(shape)
        log(f"[{key}] generating and quantizing a random {N}x{K} fp32 weight")
        w = self.rng.standard_normal((N, K), dtype=np.float32) * np.float32(0.02)
        base = self.NF4Tensor.quantize(w, blocksize=BLOCKSIZE, double_quant=True)
        wdeq = base.dequantize()                      # fp32 [N, K]: reference and the BLAS operand
        if do_gemm:
            self.monitored(f"gemm_{key}", self.gemm, key, base, wdeq)
        if do_gemv:
            self.monitored(f"gemv_{key}", self.gemv, key, w, base, wdeq)
        del w, base, wdeq
        gc.collect()

    # -- GEMM at M=128 ---------------------------------------------------------------------------
    def gemm(self, key, base, wdeq):
        np, torch = self.np, self.torch
        cfg = self.cfg
        N, K = wdeq.shape
        M = GEMM_M
        flops = 2 * M * N * K                         # int: exact in the report
        X = self.rng.standard_normal((M, K), dtype=np.float32)
        ref = X @ wdeq.T
        out = {"flops": flops}

        wt = np.ascontiguousarray(wdeq.T)             # [K, N] row-major: the other numpy layout
        tX, tW = torch.from_numpy(X), torch.from_numpy(wdeq)

        def t_linear():
            with torch.no_grad():
                return torch.nn.functional.linear(tX, tW)

        def t_matmul():
            with torch.no_grad():
                return tX @ tW.t()

        # base: bitsandbytes' layout throughout (its few-row calls below must not lay it out); released:
        # the decode layout with the codes released, what the default decoding policy gives
        released = self.NF4Tensor.from_state_dict(base.state_dict())
        base.prepare_decoding(False)
        has_released = released.prepare_decoding(keep_codes=False)
        cands = {
            "ours_nf4": lambda: base.matmul(X),
            "numpy_x@W.T": lambda: X @ wdeq.T,
            "numpy_x@WT_contig": lambda: X @ wt,
            "torch_linear": t_linear,
            "torch_x@W.t()": t_matmul,
        }
        if has_released:
            cands["ours_nf4_released_codes"] = lambda: released.matmul(X)
        # The "medium" precision (bf16 operands, fp32 sums) where it runs other products than fp32's:
        # forward and backward (matmul_t) against torch's bf16 matmuls of the dequantized weight, and
        # our fp32 backward; checked against fp64 products of the bf16-rounded operands.
        refs = {name: ref for name in cands}
        if self.medium_runs:
            ecomllm = self.ecomllm
            DY = self.rng.standard_normal((M, N), dtype=np.float32)
            tXb, tWb, tDYb = tX.bfloat16(), tW.bfloat16(), torch.from_numpy(DY).bfloat16()
            ref_b = (tXb.double() @ tWb.double().t()).numpy()
            ref_t, ref_tb = DY @ wdeq, (tDYb.double() @ tWb.double()).numpy()

            def medium(fn):
                def run():
                    ecomllm.set_float32_matmul_precision("medium")
                    try:
                        return fn()
                    finally:
                        ecomllm.set_float32_matmul_precision("highest")
                return run

            def t_bf16():
                with torch.no_grad():
                    return torch.nn.functional.linear(tXb, tWb)

            def t_bf16_t():
                with torch.no_grad():
                    return tDYb @ tWb

            extra = {"ours_nf4_medium": (medium(lambda: base.matmul(X)), ref_b),
                     "torch_bf16_linear": (t_bf16, ref_b),
                     "ours_nf4_t": (lambda: base.matmul_t(DY), ref_t),
                     "ours_nf4_t_medium": (medium(lambda: base.matmul_t(DY)), ref_tb),
                     "torch_bf16_dy@W": (t_bf16_t, ref_tb)}
            for name, (fn, r) in extra.items():
                cands[name], refs[name] = fn, r
        for name, fn in cands.items():
            y = fn()
            e = rel_err(y.float().numpy() if hasattr(y, "numpy") else y, refs[name])
            out[f"{name}_max_rel_err"] = e
            if not e <= (TOL_BF16_OUT if name.startswith("torch_bf16") else TOL_FP32):
                raise RuntimeError(f"{name}: relative max error {e:.3g} > {TOL_FP32}")
        # candidates take turns in blocks, so that drift in the machine hits all alike; they use three
        # different thread pools (ours: libgomp, numpy: OpenBLAS, torch: its own libgomp), hence the gap
        times = interleaved_reps(cands, cfg.gemm_min_rounds, cfg.gemm_max_rounds, cfg.gemm_budget_s,
                                 per_block=cfg.gemm_block, gap_s=GAP_S)
        del wt
        t = {name: median(ts) for name, ts in times.items()}
        for name, tm in t.items():
            out[f"{name}_ms"] = tm * 1e3
            out[f"{name}_gflops"] = flops / tm / 1e9
        out["reps"] = len(times["ours_nf4"])
        log(f"[{key}] GEMM M={M}: " + ", ".join(f"{n} {flops / tm / 1e9:.1f}" for n, tm in t.items()) + " GFLOP/s")
        t_np_t, t_np_c = t["numpy_x@W.T"], t["numpy_x@WT_contig"]
        t_lin, t_mm = t["torch_linear"], t["torch_x@W.t()"]
        out.update({
            "ours_s": t["ours_nf4"], "numpy_s": min(t_np_t, t_np_c), "torch_s": min(t_lin, t_mm),
            "numpy_layout": ("x @ W.T (W [N,K] row-major, transposed view)" if t_np_t <= t_np_c
                             else "x @ WT (WT = ascontiguousarray(W.T), [K,N] row-major)"),
            "torch_op": "F.linear(x, W)" if t_lin <= t_mm else "x @ W.t()",
        })
        if self.medium_runs:
            for name in ("ours_nf4_medium", "torch_bf16_linear", "ours_nf4_t", "ours_nf4_t_medium", "torch_bf16_dy@W"):
                out[f"{name}_s"] = t[name]
        if has_released:
            out["released_codes_s"] = t["ours_nf4_released_codes"]
            out["rows_sweep_ms"] = self.rows_sweep(key, base, released)
        del released
        self.details.setdefault("gemm", {})[key] = out

    def rows_sweep(self, key, base, released) -> dict:
        """Per-call ms for a few rows of x (batched decoding, short prefills): bitsandbytes' layout vs
        the decode layout with the codes released, alternating; for context (no target)."""
        np, cfg = self.np, self.cfg
        K = base.shape[1]
        sweep = {}
        for m in (1, 2, 4, 8, 16, 32, 64):
            X = self.rng.standard_normal((m, K), dtype=np.float32)
            times = interleaved_reps({"bnb_layout": lambda: base.matmul(X), "decode_layout": lambda: released.matmul(X)},
                                     3, 9 if not cfg.quick else 3, 1.0)
            sweep[f"m{m}"] = {name: median(ts) * 1e3 for name, ts in times.items()}
        log(f"[{key}] rows sweep (ms, bitsandbytes' layout / decode layout): " +
            ", ".join(f"{k} {v['bnb_layout']:.2f}/{v['decode_layout']:.2f}" for k, v in sweep.items()))
        return sweep

    # -- GEMV at M=1: ours and bitsandbytes --------------------------------------------------------
    def gemv(self, key, w, base, wdeq):
        np = self.np
        cfg = self.cfg
        NF4Tensor = self.NF4Tensor
        N, K = w.shape
        for k in [k for k in self.errors if k.startswith("bnb_gemv_") and k.endswith(key)]:
            del self.errors[k]                       # left from an earlier attempt
        for per in self.details.get("bnb_gemv_paths", {}).values():
            per.pop(key, None)
        x1 = self.rng.standard_normal((1, K), dtype=np.float32)
        ref1 = x1 @ wdeq.T

        # ours: copy 0 is the quantized matrix, copy i has its packed codes and 8-bit scales rotated.
        nbytes = base.nbytes
        nmat = max(2, math.ceil(cfg.gemv_ws / nbytes))
        log(f"[{key}] ours: {nmat} distinct NF4 matrices x {nbytes / MIB:.2f} MiB = {nmat * nbytes / GIB:.3f} GiB")
        sd = base.state_dict()
        mats = [base]
        for i in range(1, nmat):
            d = {k: np.array(v, copy=True) for k, v in sd.items() if k != "weight"}
            d["weight"] = np.roll(sd["weight"].reshape(-1), i * ROLL_STEP).reshape(sd["weight"].shape)
            d["weight.absmax"] = np.roll(sd["weight.absmax"], i * 7)
            mats.append(NF4Tensor.from_state_dict(d))
        # twins with the default decoding policy share these arrays (made before anything is released)
        twins = [NF4Tensor.from_state_dict(m.state_dict()) for m in mats]
        for m in mats:                               # these stay in bitsandbytes' layout
            m.prepare_decoding(False)
        err = rel_err(mats[0].matmul(x1), ref1)
        last = mats[-1]
        err_last = rel_err(last.matmul(x1), x1 @ last.dequantize().T)
        err = max(err, err_last)
        if not err <= TOL_FP32:
            raise RuntimeError(f"our GEMV is wrong: relative max error {err:.3g} > {TOL_FP32}")

        def ours_pass():
            for m in mats:
                m.matmul(x1)

        passes = {"ours": ours_pass}
        # the default decoding policy: the twins' first matmul of one row lays their codes out for
        # decoding (prepare_decoding(keep_codes=False)) where this CPU runs the layout's kernels;
        # elsewhere they stay in bitsandbytes' layout and are not timed twice
        err_decode, decode_bytes, held_bytes, dmats = None, 0, 0, []
        err_twins = max(rel_err(twins[0].matmul(x1), ref1), rel_err(twins[-1].matmul(x1), x1 @ last.dequantize().T))
        for t in twins[1:-1]:
            t.matmul(x1)
        if all(t.decoding_nbytes for t in twins):
            dmats, err_decode = twins, err_twins
            decode_bytes, held_bytes = dmats[0].decoding_nbytes, dmats[0].memory_nbytes
            if not err_decode <= TOL_FP32:
                raise RuntimeError(f"our decoding-layout GEMV is wrong: relative max error {err_decode:.3g}")
            log(f"[{key}] ours decode layout (the default policy here): {held_bytes / MIB:.2f} MiB held per "
                f"matrix, error {err_decode:.2g}")
        del twins
        if dmats:
            def ours_decode_pass():
                for m in dmats:
                    m.matmul(x1)

            passes["ours_decode"] = ours_decode_pass
        # the int16-activation decoding kernel (opt-in, ~1e-4 relative) over the same matrices in
        # the default configuration: on the decode layout where the policy laid them out
        err_int16, int16_mats = None, dmats or mats
        if base.supports_int16_activations:
            err_int16 = max(rel_err(int16_mats[0].matmul(x1, activations="int16"), ref1),
                            rel_err(int16_mats[-1].matmul(x1, activations="int16"), x1 @ last.dequantize().T))
            if not err_int16 <= TOL_INT16:
                raise RuntimeError(f"our int16 GEMV is wrong: relative max error {err_int16:.3g} > {TOL_INT16}")

            def ours_int16_pass():
                for m in int16_mats:
                    m.matmul(x1, activations="int16")

            passes["ours_int16"] = ours_int16_pass
        bnb_info = {}
        if self.bnb is not None:
            try:
                bnb_info = self.bnb_fused_setup(key, w, sd["weight"], x1, ref1, passes)
            except Exception as e:  # noqa: BLE001
                self.errors[f"bnb_gemv_fused_{key}"] = f"{type(e).__name__}: {e}"
                log(f"[{key}] bnb fused setup FAILED: {type(e).__name__}: {e}")
        log(f"[{key}] timing " + " / ".join(passes) + " in alternating passes")
        times = interleaved_reps(passes, cfg.gemv_min_rounds, cfg.gemv_max_rounds, cfg.gemv_budget_s)

        t_call = median(times["ours"]) / nmat
        t_best = min(times["ours"]) / nmat
        self.details.setdefault("gemv", {})[key] = {
            "nbytes_per_matrix": nbytes, "matrices": nmat, "working_set_bytes": nmat * nbytes,
            "passes": len(times["ours"]), "ms_per_call_median": t_call * 1e3, "ms_per_call_best": t_best * 1e3,
            "gbs_median": nbytes / t_call / 1e9, "gbs_best": nbytes / t_best / 1e9, "max_rel_err": err,
        }
        log(f"[{key}] ours: {t_call * 1e3:.3f} ms/call = {nbytes / t_call / 1e9:.2f} GB/s "
            f"(best pass {nbytes / t_best / 1e9:.2f})")
        if "ours_int16" in times:
            t16 = median(times["ours_int16"]) / nmat
            self.details["gemv"][key]["int16"] = {
                "ms_per_call_median": t16 * 1e3, "gbs_median": nbytes / t16 / 1e9,
                "gbs_best": nbytes / (min(times["ours_int16"]) / nmat) / 1e9, "max_rel_err": err_int16,
                "layout": "decode layout (codes released)" if dmats else "bitsandbytes"}
            log(f"[{key}] ours int16 activations: {t16 * 1e3:.3f} ms/call = {nbytes / t16 / 1e9:.2f} GB/s")
        if "ours_decode" in times:
            td = median(times["ours_decode"]) / nmat
            self.details["gemv"][key]["decode_layout"] = {
                "ms_per_call_median": td * 1e3, "gbs_median": nbytes / td / 1e9,
                "gbs_best": nbytes / (min(times["ours_decode"]) / nmat) / 1e9, "max_rel_err": err_decode,
                "extra_bytes_per_matrix": decode_bytes, "held_bytes_per_matrix_codes_released": held_bytes}
            log(f"[{key}] ours decode layout: {td * 1e3:.3f} ms/call = {nbytes / td / 1e9:.2f} GB/s")
        for path, info in bnb_info.items():
            ts = times[path]
            tc = median(ts) / info["matrices"]
            info.update({"passes": len(ts), "ms_per_call_median": tc * 1e3,
                         "ms_per_call_best": min(ts) / info["matrices"] * 1e3,
                         "gbs_nf4_equivalent": nbytes / tc / 1e9,
                         "gbs_bnb_layout_bytes": info["bytes_per_matrix_bnb_layout"] / tc / 1e9})
            self.details.setdefault("bnb_gemv_paths", {}).setdefault(path, {})[key] = info
            log(f"[{key}] bnb {path}: {tc * 1e3:.3f} ms/call = {nbytes / tc / 1e9:.2f} GB/s (NF4-equivalent bytes)")
        passes.clear()
        bnb_info.clear()

        # the same kernel on one matrix that stays in cache: the latency floor, for context only
        m0 = mats[0]
        d0 = dmats[0] if dmats else None
        del mats, dmats, int16_mats
        gc.collect()
        quiesce()
        for _ in range(5):
            m0.matmul(x1)
        hot = []
        for _ in range(cfg.hot_calls):
            t0 = time.perf_counter()
            m0.matmul(x1)
            hot.append(time.perf_counter() - t0)
        t_hot = median(hot)
        self.details["gemv"][key]["ms_per_call_cache_hot"] = t_hot * 1e3
        log(f"[{key}] ours cache-hot: {t_hot * 1e3:.3f} ms/call")
        def hot_ms(call):
            for _ in range(5):
                call()
            hot = []
            for _ in range(cfg.hot_calls):
                t0 = time.perf_counter()
                call()
                hot.append(time.perf_counter() - t0)
            return median(hot) * 1e3

        if "int16" in self.details["gemv"][key]:
            ms = hot_ms(lambda: (m0 if d0 is None else d0).matmul(x1, activations="int16"))
            self.details["gemv"][key]["int16"]["ms_per_call_cache_hot"] = ms
            log(f"[{key}] ours int16 cache-hot: {ms:.3f} ms/call")
        if d0 is not None:
            ms = hot_ms(lambda: d0.matmul(x1))
            self.details["gemv"][key]["decode_layout"]["ms_per_call_cache_hot"] = ms
            log(f"[{key}] ours decode layout cache-hot: {ms:.3f} ms/call")
            del d0

        if self.bnb is not None:
            try:
                self.bnb_fp32_path(key, w, nbytes, x1, ref1)
            except Exception as e:  # noqa: BLE001
                self.errors[f"bnb_gemv_fp32_{key}"] = f"{type(e).__name__}: {e}"
                log(f"[{key}] bnb fp32 path FAILED: {type(e).__name__}: {e}")

    def bnb_fused_setup(self, key, w, our_packed, x1, ref1, passes: dict) -> dict:
        """bitsandbytes Linear4bit in eval mode with bf16 activations (AVX512-BF16 fused kernel).

        One module gets the bnb-quantized weight and is converted by a real forward call (which
        repacks the weight and de-nests the scales to bf16); the distinct copies are deep copies
        of it with their (repacked) codes and scales rotated. Adds one pass function per path to
        `passes` and returns {path: info}.
        """
        import copy
        np, torch = self.np, self.torch
        bnb, F = self.bnb, self.bnbF
        cfg = self.cfg
        N, K = w.shape
        info = {}
        packed, st = F.quantize_4bit(torch.from_numpy(w), blocksize=BLOCKSIZE, quant_type="nf4",
                                     compress_statistics=True)
        self.details.setdefault("bnb_packed_codes_identical_to_ours", {})[key] = \
            bool(np.array_equal(packed.numpy().reshape(-1), np.asarray(our_packed).reshape(-1)))
        xbf = torch.from_numpy(x1).to(torch.bfloat16)
        with torch.no_grad():
            lin = bnb.nn.Linear4bit(K, N, bias=False, compute_dtype=torch.bfloat16, compress_statistics=True,
                                    quant_type="nf4", device="meta")
            lin.weight = bnb.nn.Params4bit(data=packed, requires_grad=False, quant_state=st, blocksize=BLOCKSIZE,
                                           compress_statistics=True, quant_type="nf4", bnb_quantized=True,
                                           module=lin)
            lin.quant_state = st
            lin.eval()
            y0 = lin(xbf)
            err = rel_err(y0.float().numpy(), ref1)
            qs = lin.weight.quant_state
            repacked = bool(getattr(qs, "packing_format_for_cpu", False))
            mbytes = lin.weight.data.numel() * lin.weight.data.element_size() + \
                qs.absmax.numel() * qs.absmax.element_size()
            nmat = max(2, math.ceil(cfg.gemv_ws / mbytes))
            log(f"[{key}] bnb: {nmat} Linear4bit copies x {mbytes / MIB:.2f} MiB, weight repacked for "
                f"AVX512-BF16: {repacked}, rel err {err:.2g}")
            if not err <= TOL_BF16:
                raise RuntimeError(f"Linear4bit output wrong: relative max error {err:.3g} > {TOL_BF16}")
            mods = [lin]
            src_w = lin.weight.data.reshape(-1)
            src_a = qs.absmax.reshape(-1)
            for i in range(1, nmat):
                m = copy.deepcopy(lin)
                m.weight.data.view(-1).copy_(torch.roll(src_w, i * ROLL_STEP))
                m.weight.quant_state.absmax.view(-1).copy_(torch.roll(src_a, i * 7))
                mods.append(m)
            y_last = mods[-1](xbf).float()
            if not bool(torch.isfinite(y_last).all()):
                raise RuntimeError("Linear4bit output of a rotated copy is not finite")
        common = {"working_set_bytes": nmat * mbytes, "matrices": nmat, "bytes_per_matrix_bnb_layout": mbytes,
                  "max_rel_err": err}

        def lin_pass():
            with torch.no_grad():
                for m in mods:
                    m(xbf)

        passes["Linear4bit_bf16_eval"] = lin_pass
        info["Linear4bit_bf16_eval"] = dict(common, note=(
            "bnb.nn.Linear4bit(compute_dtype=bf16, quant_type='nf4', compress_statistics=True).eval() under "
            "no_grad, x bf16 [1,K]; " + ("weight repacked for AVX512-BF16 (packing_format_for_cpu), fused "
                                         "gemv_4bit_inference_cpu_nf4_bf16 kernel" if repacked else
                                         "weight not repacked (no AVX512-BF16): dequantize + linear")))
        if repacked:
            def gemv_pass():
                with torch.no_grad():
                    for m in mods:
                        F.gemv_4bit(xbf, m.weight.data, state=m.weight.quant_state)

            passes["gemv_4bit_bf16_repacked"] = gemv_pass
            info["gemv_4bit_bf16_repacked"] = dict(common, note=(
                "bitsandbytes.functional.gemv_4bit(x bf16, repacked weight, state) on the same modules' storage "
                "(the Linear4bit kernel without the module's Python overhead)"))
        return info

    def bnb_fp32_path(self, key, w, nf4_bytes, x1, ref1):
        """bitsandbytes.matmul_4bit with fp32 activations on the (nested) bnb-layout weight: on CPU
        this dequantizes the whole matrix and calls linear, so it gets a smaller working set."""
        np, torch = self.np, self.torch
        bnb, F = self.bnb, self.bnbF
        cfg = self.cfg
        packed, st = F.quantize_4bit(torch.from_numpy(w), blocksize=BLOCKSIZE, quant_type="nf4",
                                     compress_statistics=True)
        mbytes = packed.numel() + st.absmax.numel() * st.absmax.element_size() + \
            st.state2.absmax.numel() * 4 + st.code.numel() * 4 + st.state2.code.numel() * 4
        nmat = max(2, math.ceil(cfg.bnb_fp32_ws / mbytes))
        x32 = torch.from_numpy(x1)
        import copy
        mats = [(packed, st)]
        src = packed.reshape(-1)
        for i in range(1, nmat):
            s = copy.deepcopy(st)
            s.absmax = torch.roll(st.absmax, i * 7)
            mats.append((torch.roll(src, i * ROLL_STEP).reshape(packed.shape), s))
        with torch.no_grad():
            err = rel_err(bnb.matmul_4bit(x32, packed.t(), quant_state=st).numpy(), ref1)
            if not err <= TOL_FP32:
                raise RuntimeError(f"matmul_4bit fp32 output wrong: relative max error {err:.3g} > {TOL_FP32}")

            def one_pass():
                for p, s in mats:
                    bnb.matmul_4bit(x32, p.t(), quant_state=s)

            log(f"[{key}] bnb matmul_4bit fp32: {nmat} matrices x {mbytes / MIB:.2f} MiB")
            times = timed_reps(one_pass, cfg.bnb_fp32_min, cfg.bnb_fp32_max, cfg.bnb_fp32_budget_s, warmup=1)
        tc = median(times) / nmat
        self.details.setdefault("bnb_gemv_paths", {}).setdefault("matmul_4bit_fp32", {})[key] = {
            "working_set_bytes": nmat * mbytes, "matrices": nmat, "bytes_per_matrix_bnb_layout": mbytes,
            "max_rel_err": err, "passes": len(times), "ms_per_call_median": tc * 1e3,
            "ms_per_call_best": min(times) / nmat * 1e3, "gbs_nf4_equivalent": nf4_bytes / tc / 1e9,
            "gbs_bnb_layout_bytes": mbytes / tc / 1e9,
            "note": "bitsandbytes.matmul_4bit(x fp32 [1,K], packed.t(), quant_state) with compress_statistics=True "
                    "(CPU: dequantize_4bit to fp32, then torch linear)",
        }
        log(f"[{key}] bnb matmul_4bit fp32: {tc * 1e3:.3f} ms/call = {nf4_bytes / tc / 1e9:.2f} GB/s "
            f"(NF4-equivalent bytes)")

    # -- summary ---------------------------------------------------------------------------------
    def summarize(self):
        res, det = self.res, self.details
        # read bandwidth: the max over runs (start, end) and methods of the best repetition
        if self.bw_runs:
            best_v, best_m = -1.0, None
            for run in self.bw_runs.values():
                for m, v in run["best_gbs"].items():
                    if v > best_v:
                        best_v, best_m = v, m
            res["read_bandwidth_gbs"] = best_v
            res["read_bandwidth_method"] = best_m
            det["read_bandwidth_runs"] = self.bw_runs
        # our GEMV: g per shape over bitsandbytes' layout; gd the decode layout, where it ran
        g = det.get("gemv", {})
        gd = {k: d["decode_layout"] for k, d in g.items() if "decode_layout" in d}
        layout_ran = bool(g) and len(gd) == len(g)
        # what the default decoding policy runs: the decode layout where this CPU has it
        default = gd if layout_ran else g
        res["gemv_layout"] = "bitsandbytes"
        if layout_ran:
            from ecomllm import _core
            res["gemv_layout"] = f"decode layout, {_core.decode_kernel()} kernel (codes released)"

        def combined_gbs(per_shape: dict, field: str):
            if not per_shape or not all(d.get(field) for d in per_shape.values()):
                return None
            return sum(g[k]["nbytes_per_matrix"] for k in per_shape) / \
                sum(d[field] * 1e-3 for d in per_shape.values()) / 1e9

        bw = res.get("read_bandwidth_gbs")
        for prefix, per_shape in (("gemv", default), ("gemv_bnb_layout", g)):
            for key, d in per_shape.items():
                res[f"{prefix}_gbs_{key}"] = g[key]["nbytes_per_matrix"] / (d["ms_per_call_median"] * 1e-3) / 1e9
                res[f"{prefix}_ms_{key}"] = d["ms_per_call_median"]
            res[f"{prefix}_gbs"] = combined_gbs(per_shape, "ms_per_call_median")
            res[f"{prefix}_cache_hot_gbs"] = combined_gbs(per_shape, "ms_per_call_cache_hot")
            if per_shape:
                res[f"{prefix}_max_rel_err"] = max(d["max_rel_err"] for d in per_shape.values())
            for f in ("gbs", "cache_hot_gbs"):
                if res.get(f"{prefix}_{f}") and bw:
                    res[f"{prefix}_{f.replace('gbs', '')}vs_bandwidth"] = res[f"{prefix}_{f}"] / bw
        if g:
            res["gemv_working_set_bytes"] = min(d["working_set_bytes"] for d in g.values())
            res["gemv_shapes"] = list(g)
            weights = sum(math.prod(int(v) for v in k.split("x")) for k in g)
            res["nf4_held_bits_per_weight"] = 8.0 * sum(d["nbytes_per_matrix"] for d in g.values()) / weights
            res["gemv_held_bits_per_weight"] = res["nf4_held_bits_per_weight"]
            if layout_ran:
                res["gemv_held_bits_per_weight"] = 8.0 * sum(
                    d["held_bytes_per_matrix_codes_released"] for d in gd.values()) / weights
                res["decode_layout_bits_per_weight"] = 8.0 * sum(
                    d["extra_bytes_per_matrix"] for d in gd.values()) / weights
                # the bytes that kernel actually streams (codes + block scales as stored), for context
                res["gemv_streamed_gbs"] = sum(d["extra_bytes_per_matrix"] for d in gd.values()) / \
                    sum(d["ms_per_call_median"] * 1e-3 for d in gd.values()) / 1e9
                if bw:
                    res["gemv_streamed_vs_bandwidth"] = res["gemv_streamed_gbs"] / bw
        # the int16-activation kernel (opt-in), on the default path's layout: same matrices, same passes
        g16 = {k: d["int16"] for k, d in g.items() if "int16" in d}
        if g16 and len(g16) == len(g):
            res["gemv_int16_gbs"] = combined_gbs(g16, "ms_per_call_median")
            res["gemv_int16_layout"] = " / ".join(sorted({d["layout"] for d in g16.values()}))
            res["gemv_int16_max_rel_err"] = max(d["max_rel_err"] for d in g16.values())
            if bw:
                res["gemv_int16_vs_bandwidth"] = res["gemv_int16_gbs"] / bw
            res["gemv_int16_cache_hot_gbs"] = combined_gbs(g16, "ms_per_call_cache_hot")
        if self.peak_runs:
            res["machine_peak_gflops"] = max(self.peak_runs.values())
            det["fma_peak_runs_gflops"] = dict(self.peak_runs)
        # GEMM
        m = det.get("gemm", {})
        for key, d in m.items():
            res[f"gemm_gflops_m{GEMM_M}_{key}"] = d["flops"] / d["ours_s"] / 1e9
            res[f"numpy_fp32_gflops_m{GEMM_M}_{key}"] = d["flops"] / d["numpy_s"] / 1e9
            res[f"torch_fp32_gflops_m{GEMM_M}_{key}"] = d["flops"] / d["torch_s"] / 1e9
        if m:
            fl = sum(d["flops"] for d in m.values())
            res[f"gemm_gflops_m{GEMM_M}"] = fl / sum(d["ours_s"] for d in m.values()) / 1e9
            res[f"numpy_fp32_gflops_m{GEMM_M}"] = fl / sum(d["numpy_s"] for d in m.values()) / 1e9
            res[f"torch_fp32_gflops_m{GEMM_M}"] = fl / sum(d["torch_s"] for d in m.values()) / 1e9
            res["gemm_vs_fp32_blas"] = res[f"gemm_gflops_m{GEMM_M}"] / res[f"numpy_fp32_gflops_m{GEMM_M}"]
            res["gemm_vs_torch_fp32"] = res[f"gemm_gflops_m{GEMM_M}"] / res[f"torch_fp32_gflops_m{GEMM_M}"]
            if all("ours_nf4_medium_s" in d for d in m.values()):
                for field, name in (("gemm_medium", "ours_nf4_medium"), ("torch_bf16", "torch_bf16_linear"),
                                    ("gemm_t", "ours_nf4_t"), ("gemm_t_medium", "ours_nf4_t_medium"),
                                    ("torch_bf16_t", "torch_bf16_dy@W")):
                    res[f"{field}_gflops_m{GEMM_M}"] = fl / sum(d[f"{name}_s"] for d in m.values()) / 1e9
                def gflops(field):
                    return res[f"{field}_gflops_m{GEMM_M}"]
                res["gemm_medium_vs_fp32"] = gflops("gemm_medium") / res[f"gemm_gflops_m{GEMM_M}"]
                res["gemm_medium_vs_torch_bf16"] = gflops("gemm_medium") / gflops("torch_bf16")
                res["gemm_t_medium_vs_fp32"] = gflops("gemm_t_medium") / gflops("gemm_t")
                res["gemm_t_medium_vs_torch_bf16"] = gflops("gemm_t_medium") / gflops("torch_bf16_t")
            if all("released_codes_s" in d for d in m.values()):
                res[f"gemm_m{GEMM_M}_codes_released_vs_held"] = sum(d["ours_s"] for d in m.values()) / \
                    sum(d["released_codes_s"] for d in m.values())
            if res.get("machine_peak_gflops"):
                res["gemm_fraction_of_peak"] = res[f"gemm_gflops_m{GEMM_M}"] / res["machine_peak_gflops"]
                res["numpy_fp32_fraction_of_peak"] = res[f"numpy_fp32_gflops_m{GEMM_M}"] / res["machine_peak_gflops"]
            res["gemm_shapes"] = list(m)
            res["numpy_fp32_layout"] = {k: d["numpy_layout"] for k, d in m.items()}
        # bitsandbytes: the best path that ran on every shape ours ran, by the same combined metric
        paths = det.get("bnb_gemv_paths", {})
        combined = {}
        for path, per in paths.items():
            if g and set(g) <= set(per):
                combined[path] = sum(g[k]["nbytes_per_matrix"] for k in g) / \
                    sum(per[k]["ms_per_call_median"] * 1e-3 for k in g) / 1e9
        if combined:
            det["bnb_gemv_gbs_by_path"] = combined
            best = max(combined, key=combined.get)
            res["bnb_gemv_gbs"] = combined[best]
            res["bnb_gemv_path"] = best
            res["bnb_gemv_path_note"] = next(iter(paths[best].values()))["note"]
            res["bnb_gemv_working_set_bytes"] = min(d["working_set_bytes"] for d in paths[best].values())
            for key in g:
                d = paths[best][key]
                res[f"bnb_gemv_gbs_{key}"] = d["gbs_nf4_equivalent"]
                res[f"bnb_gemv_ms_{key}"] = d["ms_per_call_median"]
                res[f"ours_vs_bnb_gemv_{key}"] = d["ms_per_call_median"] / default[key]["ms_per_call_median"]
            if res.get("gemv_gbs"):
                res["ours_vs_bnb_gemv"] = res["gemv_gbs"] / res["bnb_gemv_gbs"]
            if res.get("gemv_bnb_layout_gbs"):
                res["ours_bnb_layout_vs_bnb_gemv"] = res["gemv_bnb_layout_gbs"] / res["bnb_gemv_gbs"]
            res["bnb_gemv_held_bits_per_weight"] = 8.0 * sum(paths[best][k]["bytes_per_matrix_bnb_layout"]
                                                             for k in g) / sum(
                math.prod(int(v) for v in k.split("x")) for k in g)
        elif self.bnb is not None:
            errs = {k: v for k, v in self.errors.items() if k.startswith("bnb_")}
            res.setdefault("bnb_error", "no bitsandbytes GEMV path ran on every shape" +
                           (": " + "; ".join(f"{k}: {v}" for k, v in errs.items()) if errs else ""))


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
DEFINITIONS = {
    "read_bandwidth_gbs": "1e9 bytes/s; best repetition of a full read of the buffer, max over methods and over "
                          "the two runs (start and end of the benchmark)",
    "gemv_gbs": "combined over gemv_shapes: (t.nbytes of one matrix of each shape) / (sum of their median per-call "
                "times); per-call time = median pass over all distinct matrices / number of matrices; the path "
                "NF4Tensor.matmul runs by default (gemv_layout)",
    "gemv_gbs_<shape>": "t.nbytes / median per-call time, cycling through the distinct matrices of the working set",
    "gemv_vs_bandwidth": "gemv_gbs / read_bandwidth_gbs",
    "gemv_cache_hot_gbs": "gemv_gbs measured the same way on one matrix per shape called repeatedly (it stays in "
                          "the last-level cache): the kernel's own speed without DRAM",
    "machine_peak_gflops": "best of two runs (start, end) of ecomllm's register-only fp32 FMA probe on the same "
                           "threads at the active SIMD level: the ceiling of any fp32-FMA GEMM here (not of ours "
                           "when amx is true: AMX tiles, bf16x3 with fp32 accuracy, run beside the FMA units)",
    "amx": "whether our tiled products (gemm_gflops_m128) ran on AMX tiles (ecomllm.cpu_info()['amx'])",
    "gemm_fraction_of_peak": "gemm_gflops_m128 / machine_peak_gflops (numpy_fp32_fraction_of_peak likewise)",
    "gemm_gflops_m128": "2*M*N*K summed over gemm_shapes / sum of the median times; numpy and torch the same way",
    "gemm_vs_fp32_blas": "gemm_gflops_m128 / numpy_fp32_gflops_m128 (numpy: faster of x @ W.T and x @ WT contiguous)",
    "gemm_medium_gflops_m128": "our NF4 forward at M=128 with set_float32_matmul_precision('medium') (bf16 operands, "
                               "fp32 sums: AMX tiles, or VDPBF16PS pairs on AVX512-BF16), where it runs other "
                               "products than fp32's; torch_bf16_gflops_m128: F.linear on bf16 x and the dequantized "
                               "weight in bf16 (the same rounded operands; output rounded to bf16); gemm_t_*: the "
                               "backward dx = dy @ W (NF4Tensor.matmul_t, fp32 and medium) against torch's bf16 "
                               "dy @ W; *_vs_*: ratios of those GFLOP/s (no target: another precision)",
    "bnb_gemv_gbs": "best bitsandbytes path that ran on every shape, combined like gemv_gbs and counted in the same "
                    "NF4-equivalent bytes (our t.nbytes per shape), so ours_vs_bnb_gemv is a speed ratio; its "
                    "passes alternate with ours",
    "ours_vs_bnb_gemv": "gemv_gbs / bnb_gemv_gbs (> 1: ours faster); per shape: bnb ms / our ms",
    "gemv_layout": "which layout gemv_gbs ran on: the decode layout where the default decoding policy lays the "
                   "codes out on this CPU (AVX-512 VBMI + VNNI, or the avx2 level), with the kernel that "
                   "read it (ecomllm.cpu_info()['decode_kernel']), else bitsandbytes'",
    "gemv_streamed_gbs": "bytes per second the default path's kernel actually streams where it is the decode layout "
                         "(codes + block scales: 8-bit codes in the VBMI layout of a double-quantized weight, else fp32; "
                         "decode_layout_bits_per_weight), where gemv_gbs counts the NF4 "
                         "state's bytes (nf4_held_bits_per_weight); gemv_streamed_vs_bandwidth: how close the stream "
                         "comes to read_bandwidth_gbs (context; the target is on gemv_vs_bandwidth)",
    "gemv_int16_layout": "which layout the opt-in int16-activation kernel (gemv_int16_*) ran on: the decode layout "
                         "(two-digit product tables) where gemv_gbs did, else bitsandbytes' (the q16 kernel)",
    "gemv_bnb_layout_gbs": "gemv_gbs for the kernel over bitsandbytes' layout (prepare_decoding(False)), same "
                           "matrices, same passes (equal in meaning to gemv_gbs where gemv_layout is bitsandbytes)",
    "ours_bnb_layout_vs_bnb_gemv": "gemv_bnb_layout_gbs / bnb_gemv_gbs",
    "gemv_held_bits_per_weight": "8 * NF4Tensor.memory_nbytes / weights for the path gemv_gbs timed (decode layout "
                                 "+ scale state + code books with the codes released)",
    "decode_layout_bits_per_weight": "8 * decoding_nbytes / weights: the decode layout alone",
    "nf4_held_bits_per_weight": "8 * NF4Tensor.nbytes / weights: bitsandbytes' state as loaded",
    "bnb_gemv_held_bits_per_weight": "8 * bytes of bitsandbytes' weight data (+ scales) per weight for the bnb path "
                                     "timed (after its CPU repacking, for the fused path)",
    "gemm_m128_codes_released_vs_held": "time at M=128 on bitsandbytes' layout / in the serving configuration "
                                        "(W panels decoded from the decode layout; codes restored per call on "
                                        "AMX): > 1, prefill is faster there",
    "quantize_gbs": "1e9 weights quantized per second (median), NF4Tensor.quantize 4096x4096 fp32, blocksize=64, "
                    "double_quant=True",
    "quantize_input_gbs": "the same in 1e9 bytes of fp32 input per second",
    "bnb_quantize_gbs": "1e9 weights per second, bitsandbytes quantize_4bit(nf4, blocksize=64, "
                        "compress_statistics=True) on the same matrix",
    "timing": "time.perf_counter; one warm-up call/pass first; kernels: median of repetitions; bandwidth: best",
}


def build_output(b, args, threads: int, cfg: Config, env_info: dict) -> dict:
    res = dict(b.res) if b is not None else {}
    out: dict = {"threads": threads, "simd_level": env_info.get("simd_level"), "amx": env_info.get("amx"),
                 "cpu": env_info.get("cpu"),
                 "quick": bool(args.quick)}
    ordered = [
        "read_bandwidth_gbs", "read_bandwidth_method",
        "gemv_gbs", "gemv_vs_bandwidth", "gemv_layout", "gemv_cache_hot_gbs", "gemv_cache_hot_vs_bandwidth",
        "gemv_gbs_4096x4096", "gemv_gbs_11008x4096", "gemv_ms_4096x4096", "gemv_ms_11008x4096",
        "gemv_max_rel_err", "gemv_held_bits_per_weight", "gemv_working_set_bytes", "gemv_streamed_gbs",
        "gemv_streamed_vs_bandwidth",
        "gemv_bnb_layout_gbs", "gemv_bnb_layout_vs_bandwidth", "gemv_bnb_layout_cache_hot_gbs",
        f"gemm_gflops_m{GEMM_M}", f"numpy_fp32_gflops_m{GEMM_M}", f"torch_fp32_gflops_m{GEMM_M}",
        "gemm_vs_fp32_blas", "gemm_vs_torch_fp32", "machine_peak_gflops", "gemm_fraction_of_peak",
        "numpy_fp32_fraction_of_peak",
        f"gemm_medium_gflops_m{GEMM_M}", f"torch_bf16_gflops_m{GEMM_M}", "gemm_medium_vs_fp32",
        "gemm_medium_vs_torch_bf16", f"gemm_t_gflops_m{GEMM_M}", f"gemm_t_medium_gflops_m{GEMM_M}",
        f"torch_bf16_t_gflops_m{GEMM_M}", "gemm_t_medium_vs_fp32", "gemm_t_medium_vs_torch_bf16",
        "bnb_gemv_gbs", "ours_vs_bnb_gemv", "ours_bnb_layout_vs_bnb_gemv", "bnb_gemv_path",
        "quantize_gbs", "quantize_input_gbs", "bnb_quantize_gbs",
    ]
    for k in ordered:
        out[k] = rnd_tree(res.pop(k, None))
    if b is not None and b.bnb is None or "bnb_error" in res:
        out["bnb_error"] = res.pop("bnb_error", None)
    for k in sorted(res):
        out[k] = rnd_tree(res[k])
    out["targets"] = dict(TARGETS)
    out["meets_targets"] = {k: (None if out.get(k) is None else bool(out[k] >= v)) for k, v in TARGETS.items()}
    out["definitions"] = DEFINITIONS
    if b is not None:
        det = dict(b.details)
        if "gemm" in det:   # the *_s entries are the raw seconds behind the *_ms / *_gflops figures
            det["gemm"] = {k: {kk: vv for kk, vv in d.items() if not kk.endswith("_s")} for k, d in det["gemm"].items()}
        out["details"] = rnd_tree(det)
        if b.errors:
            out["errors"] = b.errors
    out["environment"] = env_info
    out["config"] = {"quick": cfg.quick, "bandwidth_buffer_bytes": cfg.bw_bytes, "gemv_working_set_bytes": cfg.gemv_ws,
                     "bnb_fp32_working_set_bytes": cfg.bnb_fp32_ws, "blocksize": BLOCKSIZE, "double_quant": True,
                     "gemm_m": GEMM_M, "quiesce_s": QUIESCE_S,
                     "gemm_interleave_gap_s": GAP_S,
                     "noisy_threshold_cores": NOISY_CORES, "max_attempts": cfg.max_attempts,
                     "retry_deadline_s": cfg.retry_deadline_s}
    if b is not None and b.load.phases:
        worst = max(max(p["other_processes_cores"], p["steal_cores"]) for p in b.load.phases.values())
        out["external_load_max_cores"] = rnd(worst)
        out["noisy_machine"] = worst > NOISY_CORES
        out["external_load_by_phase"] = rnd_tree(b.load.phases)
        out["retried_phases"] = dict(b.retries)
    out["peak_rss_bytes"] = peak_rss_bytes()
    out["elapsed_s"] = round(time.perf_counter() - _T0, 1)
    return out


def format_table(out: dict) -> str:
    skip = ("definitions", "details", "environment", "config")
    w = max(len(k) for k in out if k not in skip)

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = []
    for k, v in out.items():
        if k in skip:
            continue
        if isinstance(v, dict):
            v = ", ".join(f"{kk}={fmt(vv)}" for kk, vv in v.items())
        lines.append(f"{k:<{w}}  {fmt(v)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(threads)
    cfg = Config(args.quick)

    # stdout is for the result only: point fd 1 at stderr while measuring
    sys.stdout.flush()
    real_stdout_fd = os.dup(1)
    os.dup2(2, 1)

    rc = 0
    b = None
    env_info: dict = {"cpu": cpu_model(), "caches": cache_sizes(),
                      "thread_env": {v: os.environ[v] for v in THREAD_ENV_VARS}}
    try:
        log(f"threads={threads} quick={args.quick}; importing numpy / torch / ecomllm")
        b = Bench(cfg, threads)
        import platform
        env_info.update({
            "simd_level": b._core.simd_level(),
            "amx": bool(b._core.amx_active()),
            "ecomllm_version": getattr(b.ecomllm, "__version__", None),
            "ecomllm_omp_threads": int(b._core.max_threads()),
            "torch_version": b.torch.__version__,
            "torch_threads": b.torch.get_num_threads(),
            "numpy_version": b.np.__version__,
            "numpy_blas_threads": openblas_threads(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        })
        try:
            env_info["cpu_features"] = sorted(k for k, v in b.ecomllm.cpu_info().items() if v is True)
        except Exception:  # noqa: BLE001
            pass
        if env_info["ecomllm_omp_threads"] != threads or env_info["torch_threads"] != threads:
            log(f"WARNING: thread counts differ: ecomllm {env_info['ecomllm_omp_threads']}, "
                f"torch {env_info['torch_threads']}, requested {threads}")
        try:
            import bitsandbytes as bnb
            import bitsandbytes.functional as bnbF
            b.bnb, b.bnbF = bnb, bnbF
            env_info["bitsandbytes_version"] = bnb.__version__
            try:
                env_info["bnb_has_avx512bf16"] = bool(bnbF.has_avx512bf16())
            except Exception:  # noqa: BLE001
                pass
        except Exception as e:  # noqa: BLE001
            b.res["bnb_error"] = f"import bitsandbytes failed: {type(e).__name__}: {e}"
            log(b.res["bnb_error"])

        b.monitored("read_bandwidth_start", b.bandwidth, "start")
        b.monitored("fma_peak_start", b.fma_peak, "start")
        b.monitored("quantize", b.quantize)
        if b.bnb is not None and hasattr(b, "_w_quant"):
            b.monitored("bnb_quantize", b.bnb_quantize)
        b.__dict__.pop("_w_quant", None)
        for shape in sorted(set(GEMV_SHAPES) | set(GEMM_SHAPES), key=lambda s: s[0] * s[1]):
            name = f"shape_{shape_key(shape)}"
            try:             # the GEMM and GEMV phases inside record (and retry) themselves
                b.run_shape(shape, do_gemv=shape in GEMV_SHAPES, do_gemm=shape in GEMM_SHAPES)
            except Exception as e:  # noqa: BLE001
                b.errors[name] = f"{type(e).__name__}: {e}"
                log(f"{name} FAILED: {type(e).__name__}: {e}")
        b.monitored("read_bandwidth_end", b.bandwidth, "end")
        b.monitored("fma_peak_end", b.fma_peak, "end")
        b.summarize()
        if "bnb_quantize" in b.errors and "bnb_quantize_gbs" not in b.res:
            b.res["bnb_quantize_error"] = b.errors["bnb_quantize"]
        own = [k for k in b.errors if not k.startswith(("bnb_", "read_bandwidth_"))]
        if own or "read_bandwidth_gbs" not in b.res:
            rc = 1
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        if b is not None:
            b.errors["fatal"] = f"{type(e).__name__}: {e}"
        else:
            env_info["fatal_error"] = f"{type(e).__name__}: {e}"
        rc = 1

    out = build_output(b, args, threads, cfg, env_info)
    log(f"done in {out['elapsed_s']} s" + (f"; errors: {out['errors']}" if out.get("errors") else ""))

    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(real_stdout_fd, 1)
    os.close(real_stdout_fd)
    import json
    if args.json:
        try:
            text = json.dumps(out, indent=2, allow_nan=False) + "\n"
        except ValueError:       # a non-finite float slipped through: null it rather than emit NaN
            text = json.dumps(json.loads(json.dumps(out, default=str),
                                         parse_constant=lambda c: None), indent=2) + "\n"
    else:
        text = format_table(out)
    sys.stdout.write(text)
    sys.stdout.flush()
    return rc


if __name__ == "__main__":
    sys.exit(main())

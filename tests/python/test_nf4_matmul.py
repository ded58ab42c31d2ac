"""Fused NF4 matmuls (forward x @ W^T and backward dy @ W) at every SIMD level this CPU can run.

Reference: float64 numpy products with W_deq = dequantize() (itself checked bit-exact elsewhere).
Tolerance: relative error max|ours - ref| / max|ref| <= 1e-5 (fp32 accumulation over K <= 4097),
both against the reference and between each SIMD level and the scalar level.

Sizes are odd on purpose (rows not multiples of 32, blocks straddling rows, K not a multiple of the
blocksize, M in {1, 2, 3} for the fused GEMV path and M >= 4 for the tiled GEMM path). Only one
dimension at a time goes large, so the scalar level stays fast.
"""

from __future__ import annotations

import functools
import threading

import ml_dtypes
import numpy as np
import pytest

from _nf4_ref import F32, assert_bits_equal, rel_err
from ecomllm import _core
import ecomllm
from ecomllm.quant import NF4Tensor


# The kernels over bitsandbytes' layout (the decode layout has its own tests: test_nf4_decode_layout.py).
pytestmark = pytest.mark.usefixtures("manual_decoding_policy")

TOL = 1e-5
BEST = _core.cpu_features()["best_level"]
LEVELS = ["scalar"] + (["avx2"] if BEST in ("avx2", "avx512") else []) + (["avx512"] if BEST == "avx512" else [])
# "amx": the avx512 level with the AMX tile path on (products of M >= 32 rows); "avx512" runs with it off.
LEVELS += ["amx"] if _core.amx_supported() else []
SIMD_LEVELS = [lv for lv in LEVELS if lv != "scalar"]


def _set_level(lv: str) -> None:
    _core.set_simd_level("avx512" if lv == "amx" else lv)
    _core.set_amx_enabled(lv == "amx")
DIMS = [1, 3, 17, 63, 65, 1000, 4097]


@pytest.fixture(params=LEVELS)
def level(request):
    """Runs the test at one SIMD level and restores the original level afterwards."""
    original, original_amx = _core.simd_level(), _core.amx_enabled()
    _set_level(request.param)
    assert _core.simd_level() == ("avx512" if request.param == "amx" else request.param)
    assert _core.amx_active() == (request.param == "amx")
    yield request.param
    _core.set_simd_level(original)
    _core.set_amx_enabled(original_amx)
    assert _core.simd_level() == original and _core.amx_enabled() == original_amx


def _cases():
    cases = set()
    for m in DIMS + [2, 4]:                 # vary M (K = 65: generic path; K = 64: fast paths)
        cases.add((m, 17, 65, 64))
        cases.add((m, 17, 64, 64))
    for n in DIMS:                          # vary N
        cases.add((3, n, 65, 64))
        cases.add((17, n, 64, 64))
    for k in DIMS:                          # vary K (odd K: rows start mid-byte / mid-block)
        cases.add((1, 17, k, 64))
        cases.add((17, 17, k, 64))
    for k in (32, 96, 128, 4096):           # K % 32 == 0: fused GEMV for M <= 3, SIMD tile decode
        cases.add((1, 17, k, 64))
        cases.add((3, 5, k, 64))
        cases.add((5, 17, k, 64))
    cases |= {                              # other blocksizes, blocks straddling rows, mixed sizes
        (1, 33, 96, 128), (2, 33, 96, 128), (7, 33, 96, 128),
        (3, 17, 4097, 4096), (17, 5, 4097, 4096), (2, 9, 160, 4096), (9, 9, 160, 4096),
        (1, 65, 96, 32), (3, 63, 32, 32), (33, 63, 63, 32),
        (65, 1000, 4097, 64), (3, 1000, 4096, 64), (1000, 63, 1000, 128), (4097, 3, 17, 32),
        (2, 4097, 64, 64), (18, 100, 2080, 64),
    }
    return sorted(cases)


CASES = _cases()


@functools.lru_cache(maxsize=None)
def _weight(n: int, k: int, bs: int, dq: bool, seed: int = 0):
    rng = np.random.default_rng(seed + 31 * n + k)
    w = rng.standard_normal((n, k)).astype(F32)
    # vary the block scales over a few orders of magnitude
    w = (w * np.exp2(rng.uniform(-4, 4, (n, 1)))).astype(F32)
    t = NF4Tensor.quantize(w, blocksize=bs, double_quant=dq)
    return t, t.dequantize().astype(np.float64)


def _x(shape, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(F32)


def _id(case):
    m, n, k, bs = case
    return f"M{m}-N{n}-K{k}-bs{bs}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_matmul(level, case):
    m, n, k, bs = case
    dq = (m + n + k) % 2 == 0  # half the cases with double quantization
    t, wd = _weight(n, k, bs, dq)
    x = _x((m, k))
    y = t.matmul(x)
    assert y.shape == (m, n) and y.dtype == np.float32
    err = rel_err(y, x.astype(np.float64) @ wd.T)
    assert err <= TOL, f"matmul rel err {err:.3g} at {level} {case} dq={dq}"


# The grouped M <= 3 kernels (K % 128 == 0, blocksize % 64 == 0) read block scales per 64-weight
# half-group, with double quantization through nested chunks of 256 blocks. K = 384 puts chunk
# boundaries mid-row; blocksize 4096 makes blocks span rows.
@pytest.mark.parametrize("dq", [False, True], ids=["plain", "dq"])
@pytest.mark.parametrize("m,n,k,bs", [(1, 300, 384, 64), (3, 300, 384, 128), (1, 33, 256, 128), (2, 9, 512, 256),
                                      (1, 40, 1024, 4096), (3, 700, 1024, 64)])
def test_grouped_gemv_block_scales(level, m, n, k, bs, dq):
    t, wd = _weight(n, k, bs, dq)
    x = _x((m, k))
    err = rel_err(t.matmul(x), x.astype(np.float64) @ wd.T)
    assert err <= TOL, f"rel err {err:.3g} at {level} M{m} N{n} K{k} bs{bs} dq={dq}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_matmul_t(level, case):
    m, n, k, bs = case
    dq = (m + n + k) % 2 == 1
    t, wd = _weight(n, k, bs, dq)
    dy = _x((m, n), seed=2)
    dx = t.matmul_t(dy)
    assert dx.shape == (m, k) and dx.dtype == np.float32
    err = rel_err(dx, dy.astype(np.float64) @ wd)
    assert err <= TOL, f"matmul_t rel err {err:.3g} at {level} {case} dq={dq}"


@pytest.mark.parametrize("dq", [False, True], ids=["plain", "dq"])
@pytest.mark.parametrize("m,n,k", [(1, 17, 64), (3, 63, 128), (3, 17, 65), (5, 33, 96), (40, 1000, 65), (2, 4097, 64)])
def test_matmul_bias(level, m, n, k, dq):
    t, wd = _weight(n, k, 64, dq)
    x = _x((m, k))
    bias = np.random.default_rng(m).standard_normal(n).astype(F32) * np.float32(3)
    y = t.matmul(x, bias=bias)
    err = rel_err(y, x.astype(np.float64) @ wd.T + bias.astype(np.float64))
    assert err <= TOL, f"matmul+bias rel err {err:.3g}"
    # bias is added once, whatever the path
    y0 = t.matmul(x)
    assert rel_err(y - y0, np.broadcast_to(bias, y.shape)) <= TOL


@pytest.mark.parametrize("m,n,k", [(1, 17, 64), (3, 17, 65), (2, 63, 4096), (17, 65, 63), (65, 17, 4097)])
def test_bf16_activations(level, m, n, k):
    t, wd = _weight(n, k, 64, True)
    x16 = _x((m, k)).astype(ml_dtypes.bfloat16)
    x32 = x16.astype(F32)  # exact
    y = t.matmul(x16)
    assert y.dtype == np.float32 and y.shape == (m, n)
    # bf16 input is widened exactly, then the same kernel runs: identical to the fp32 call
    assert_bits_equal(y, t.matmul(x32), "matmul(bf16) vs matmul(fp32 of the same values)")
    assert rel_err(y, x32.astype(np.float64) @ wd.T) <= TOL
    dy16 = _x((m, n), seed=5).astype(ml_dtypes.bfloat16)
    dx = t.matmul_t(dy16)
    assert_bits_equal(dx, t.matmul_t(dy16.astype(F32)), "matmul_t(bf16) vs fp32")
    assert rel_err(dx, dy16.astype(np.float64) @ wd) <= TOL
    # the core's explicit bit-pattern entry point gives the same
    core = t._core
    assert_bits_equal(core.matmul(x16.view(np.uint16), None, bf16_bits=True), y, "bf16_bits=True")
    assert_bits_equal(core.matmul_t(dy16.view(np.uint16), bf16_bits=True), dx, "matmul_t bf16_bits=True")


@pytest.mark.parametrize("k", [64, 65, 4097])
def test_batched_activations(level, k):
    n = 17
    t, wd = _weight(n, k, 64, True)
    x = _x((2, 3, k))
    y = t.matmul(x)
    assert y.shape == (2, 3, n)
    assert rel_err(y, x.astype(np.float64) @ wd.T) <= TOL
    assert_bits_equal(y.reshape(6, n), t.matmul(x.reshape(6, k)), "batched == flattened")
    dy = _x((2, 3, n), seed=9)
    dx = t.matmul_t(dy)
    assert dx.shape == (2, 3, k)
    assert rel_err(dx, dy.astype(np.float64) @ wd) <= TOL
    # 1-D activations: [K] -> [N], [N] -> [K]
    y1 = t.matmul(x[0, 0])
    assert y1.shape == (n,)
    assert rel_err(y1, x[0, 0].astype(np.float64) @ wd.T) <= TOL
    assert t.matmul_t(dy[0, 0]).shape == (k,)
    # bf16 batched
    yb = t.matmul(x.astype(ml_dtypes.bfloat16))
    assert yb.shape == (2, 3, n)


def test_non_contiguous_activations_through_facade(level):
    t, wd = _weight(17, 64, 64, False)
    big = _x((5, 128))
    x = big[:, ::2]  # non-contiguous view: the facade copies it
    assert not x.flags.c_contiguous
    y = t.matmul(x)
    assert rel_err(y, x.astype(np.float64) @ wd.T) <= TOL
    assert_bits_equal(y, t.matmul(np.ascontiguousarray(x)), "non-contiguous x")


@pytest.mark.skipif(not SIMD_LEVELS, reason="this CPU has no SIMD level above scalar")
@pytest.mark.parametrize("case", [(1, 17, 64, 64), (3, 1000, 128, 64), (2, 17, 65, 64), (4, 63, 96, 32),
                                  (17, 65, 4097, 64), (65, 1000, 4097, 64), (40, 33, 96, 128), (3, 17, 4097, 4096),
                                  (1, 4097, 64, 64)], ids=_id)
@pytest.mark.parametrize("dq", [False, True], ids=["plain", "dq"])
def test_simd_levels_agree_with_scalar(case, dq):
    m, n, k, bs = case
    t, _ = _weight(n, k, bs, dq)
    x = _x((m, k))
    dy = _x((m, n), seed=3)
    bias = _x((n,), seed=4)
    original = _core.simd_level()
    _core.set_simd_level("scalar")
    y_s, dx_s, deq_s, sc_s = t.matmul(x, bias=bias), t.matmul_t(dy), t.dequantize(), t.block_scales()
    original_amx = _core.amx_enabled()
    try:
        for lv in SIMD_LEVELS:
            _set_level(lv)
            y, dx = t.matmul(x, bias=bias), t.matmul_t(dy)
            assert rel_err(y, y_s) <= TOL, f"{lv} forward vs scalar: {rel_err(y, y_s):.3g}"
            assert rel_err(dx, dx_s) <= TOL, f"{lv} backward vs scalar: {rel_err(dx, dx_s):.3g}"
            assert_bits_equal(t.dequantize(), deq_s, f"dequantize at {lv}")
            assert_bits_equal(t.block_scales(), sc_s, f"block_scales at {lv}")
    finally:
        _core.set_simd_level(original)
        _core.set_amx_enabled(original_amx)


def test_repeatable_and_thread_safe(level):
    """Same call, same bits; concurrent calls from Python threads (GIL released) agree."""
    t, _ = _weight(1000, 4096, 64, True)
    xs = [_x((m, 4096), seed=m) for m in (1, 3, 8, 40)]
    expected = [t.matmul(x) for x in xs]
    for x, e in zip(xs, expected):
        assert_bits_equal(t.matmul(x), e, "repeat")
    results: dict = {}

    def work(i):
        results[i] = [t.matmul(x) for x in xs]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i in range(3):
        for got, e in zip(results[i], expected):
            assert_bits_equal(got, e, f"thread {i}")


def test_large_magnitudes(level):
    """Block scales spanning 1e-30 ... 1e30: relative accuracy per output row still holds."""
    rng = np.random.default_rng(4)
    n, k = 9, 256
    w = rng.standard_normal((n, k)).astype(F32) * np.float32(1e20)
    w[3] *= np.float32(1e-40)  # a row of tiny weights (1e-20)
    t = NF4Tensor.quantize(w, blocksize=64, double_quant=False)
    wd = t.dequantize().astype(np.float64)
    for m in (1, 5, 40):
        x = rng.standard_normal((m, k)).astype(F32)
        y = t.matmul(x).astype(np.float64)
        ref = x.astype(np.float64) @ wd.T
        for j in range(n):
            assert rel_err(y[:, j], ref[:, j]) <= TOL, (level, m, j)


def test_set_simd_level_api():
    original = ecomllm.simd_level()
    assert original in ("scalar", "avx2", "avx512")
    real_levels = [lv for lv in LEVELS if lv != "amx"]
    for lv in real_levels:
        ecomllm.set_simd_level(lv)
        assert ecomllm.simd_level() == lv == _core.simd_level()
        assert ecomllm.cpu_info()["simd_level"] == lv
    for bad in ("bogus", "", "AVX2", "avx-512", "scalar "):
        with pytest.raises(ValueError, match="(?i)simd level"):
            _core.set_simd_level(bad)
        with pytest.raises(ValueError):
            ecomllm.set_simd_level(bad)
    assert ecomllm.simd_level() == real_levels[-1]  # failed calls change nothing


@pytest.mark.skipif(BEST == "avx512", reason="every level is supported by this CPU")
def test_set_simd_level_above_cpu_is_rejected():
    too_high = "avx512" if BEST == "avx2" else "avx2"
    before = _core.simd_level()
    with pytest.raises(ValueError, match="not supported"):
        _core.set_simd_level(too_high)
    assert _core.simd_level() == before


def test_custom_quant_map_is_honoured(level):
    """Kernels use the file's quant_map, not a hard-coded NF4 table (generic and SIMD paths)."""
    rng = np.random.default_rng(8)
    code = np.sort(rng.uniform(-2, 2, 16)).astype(F32)[::-1].copy()  # any 16 finite values, any order
    for n, k in ((17, 64), (5, 65), (33, 4096)):
        packed = rng.integers(0, 256, (n * k + 1) // 2, dtype=np.uint8)
        absmax = rng.uniform(0.5, 2.0, -(-n * k // 64)).astype(F32)
        m = _core.NF4Matrix(packed, n, k, 64, code, absmax=absmax)
        wd = m.dequantize().astype(np.float64)
        q = np.empty(2 * packed.size, np.uint8)
        q[0::2], q[1::2] = packed >> 4, packed & 15
        expected = code[q[: n * k]] * np.repeat(absmax, 64)[: n * k]
        assert_bits_equal(m.dequantize().reshape(-1), expected.astype(F32), "dequantize with custom code")
        for rows in (1, 3, 7):
            x = _x((rows, k))
            assert rel_err(m.matmul(x), x.astype(np.float64) @ wd.T) <= TOL
            dy = _x((rows, n), seed=6)
            assert rel_err(m.matmul_t(dy), dy.astype(np.float64) @ wd) <= TOL


_DETERMINISM_SCRIPT = """
import hashlib, numpy as np
from ecomllm import _core
from ecomllm.quant import NF4Tensor
h = hashlib.sha256()
rng = np.random.default_rng(0)
best = _core.cpu_features()["best_level"]
levels = ["scalar"] + (["avx2"] if best in ("avx2", "avx512") else []) + (["avx512"] if best == "avx512" else [])
w = rng.standard_normal((300, 1000)).astype(np.float32)
h.update(b"".join(a.tobytes() for a in _core.nf4_quantize(w, 64)))
t = NF4Tensor.quantize(w, 64, double_quant=True)
h.update(t.dequantize().tobytes())
for lv in levels:
    _core.set_simd_level(lv)
    for m in (1, 3, 40):
        h.update(t.matmul(rng.standard_normal((m, 1000)).astype(np.float32)).tobytes())
        h.update(t.matmul_t(rng.standard_normal((m, 300)).astype(np.float32)).tobytes())
print(_core.max_threads(), h.hexdigest())
"""


def test_results_do_not_depend_on_thread_count():
    import os
    import subprocess
    import sys

    digests = {}
    for threads in ("1", "2", "3"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        env.pop("ECOMLLM_CPU", None)
        proc = subprocess.run([sys.executable, "-c", _DETERMINISM_SCRIPT], capture_output=True, text=True, env=env,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        nthreads, digest = proc.stdout.split()
        assert nthreads == threads
        digests[threads] = digest
    assert len(set(digests.values())) == 1, f"results differ with the thread count: {digests}"


BF16_PRODUCTS = _core.cpu_features()["avx512_bf16"] and BEST == "avx512"


@pytest.mark.parametrize("m,n,k", [(40, 33, 257), (130, 64, 4096), (17, 1000, 130)])
def test_medium_precision_multiplies_bf16_rounded_operands(m, n, k):
    """``set_float32_matmul_precision("medium")`` on AVX512-BF16 (AMX off): the tiled products equal
    torch's fp64 product of the bf16-rounded operands (torch rounds to nearest even, as the CPU
    does) to fp32 summation accuracy (1e-5 of max |y|), and differ from the fp32 product by ~1e-3
    (the setting acts). Without AVX512-BF16, or at avx2, "medium" changes nothing: fp32 accuracy."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(m * n + k)
    t = NF4Tensor.quantize(rng.standard_normal((n, k), dtype=F32))
    wd = torch.from_numpy(t.dequantize())
    x, dy = rng.standard_normal((m, k), dtype=F32), rng.standard_normal((m, n), dtype=F32)
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    bf = lambda a: a.bfloat16().double()  # noqa: E731
    y_fp32, dx_fp32 = (xt.double() @ wd.double().T).numpy(), (dyt.double() @ wd.double()).numpy()
    y_bf16, dx_bf16 = (bf(xt) @ bf(wd).T).numpy(), (bf(dyt) @ bf(wd)).numpy()
    for lv in (["avx512"] if BEST == "avx512" else []) + (["avx2"] if BEST in ("avx2", "avx512") else []):
        _core.set_simd_level(lv)
        _core.set_amx_enabled(False)
        ecomllm.set_float32_matmul_precision("medium")
        assert ecomllm.cpu_info()["bf16_products"] == (BF16_PRODUCTS and lv == "avx512")
        y, dx = t.matmul(x), t.matmul_t(dy)
        if BF16_PRODUCTS and lv == "avx512":
            assert rel_err(y, y_bf16) <= TOL and rel_err(dx, dx_bf16) <= TOL, lv
            assert rel_err(y, y_fp32) > 1e-4 and rel_err(dx, dx_fp32) > 1e-4, lv
        else:
            assert rel_err(y, y_fp32) <= TOL and rel_err(dx, dx_fp32) <= TOL, lv
        ecomllm.set_float32_matmul_precision("highest")
        assert rel_err(t.matmul(x), y_fp32) <= TOL and rel_err(t.matmul_t(dy), dx_fp32) <= TOL, lv

"""Base utilities: 16-bit float conversions (vs numpy float16 and ml_dtypes.bfloat16, bit for bit),
CPU feature reporting, and the ECOMLLM_CPU environment variable."""

from __future__ import annotations

import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import ecomllm
from ecomllm import _core

BF16 = ml_dtypes.bfloat16
ALL16 = np.arange(65536, dtype=np.uint32).astype(np.uint16)


def _f32_bits(x):
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def _assert_f32_equal_nan_as_nan(got: np.ndarray, want: np.ndarray, what: str):
    assert got.dtype == np.float32 and got.shape == want.shape, what
    gn, wn = np.isnan(got), np.isnan(want)
    bad = np.flatnonzero(gn != wn)
    assert bad.size == 0, f"{what}: NaN mismatch at {bad[:5]}"
    ok = ~wn
    diff = np.flatnonzero(_f32_bits(got)[ok] != _f32_bits(want)[ok])
    assert diff.size == 0, f"{what}: {diff.size} values differ, e.g. {got[ok][diff[:3]]} vs {want[ok][diff[:3]]}"


def _is_nan16(bits: np.ndarray, exp_mask: int, man_mask: int) -> np.ndarray:
    return ((bits & exp_mask) == exp_mask) & ((bits & man_mask) != 0)


def _assert_16_equal_nan_as_nan(got: np.ndarray, want: np.ndarray, inputs: np.ndarray, kind: str, what: str):
    got = np.asarray(got)
    assert got.dtype == np.uint16 and got.shape == want.shape, (what, got.dtype, got.shape)
    exp_mask, man_mask = (0x7C00, 0x03FF) if kind == "f16" else (0x7F80, 0x007F)
    src_nan = np.isnan(inputs)
    assert np.all(_is_nan16(got[src_nan], exp_mask, man_mask)), f"{what}: NaN input must give a NaN"
    ok = ~src_nan
    diff = np.flatnonzero(got[ok] != want[ok])
    if diff.size:
        i = diff[0]
        x = inputs[ok][i]
        raise AssertionError(f"{what}: {diff.size} of {ok.sum()} differ; e.g. {x!r} (bits {_f32_bits(x):#010x}) -> "
                             f"{got[ok][i]:#06x}, expected {want[ok][i]:#06x}")


# ---- 16 -> 32: every bit pattern ----------------------------------------------------------------

def test_f16_to_f32_all_bit_patterns():
    want = ALL16.view(np.float16).astype(np.float32)
    _assert_f32_equal_nan_as_nan(_core.f16_to_f32(ALL16), want, "f16_to_f32(uint16)")
    _assert_f32_equal_nan_as_nan(_core.f16_to_f32(ALL16.view(np.float16)), want, "f16_to_f32(float16)")


def test_bf16_to_f32_all_bit_patterns():
    want = ALL16.view(BF16).astype(np.float32)
    _assert_f32_equal_nan_as_nan(_core.bf16_to_f32(ALL16), want, "bf16_to_f32(uint16)")
    _assert_f32_equal_nan_as_nan(_core.bf16_to_f32(ALL16.view(BF16)), want, "bf16_to_f32(bfloat16)")
    # and it is exactly a 16-bit shift
    np.testing.assert_array_equal(_f32_bits(_core.bf16_to_f32(ALL16)), ALL16.astype(np.uint32) << 16)


# ---- 32 -> 16: rounding ---------------------------------------------------------------------------

def _f32_test_values() -> np.ndarray:
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 2 ** 32, 1_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)]  # any bits
    parts.append((rng.standard_normal(200_000) * np.exp2(rng.uniform(-30, 20, 200_000))).astype(np.float32))

    # exact ties between consecutive fp16 values (normal and subnormal), their fp32 neighbours, both signs
    h = np.arange(0, 0x7BFF, dtype=np.uint16)  # finite positive fp16 (all but the largest)
    lo = h.view(np.float16).astype(np.float64)
    hi = (h + 1).astype(np.uint16).view(np.float16).astype(np.float64)
    mid = ((lo + hi) / 2).astype(np.float32)
    assert np.all(mid.astype(np.float64) == (lo + hi) / 2), "fp16 midpoints are exact in fp32"
    for m in (mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(0))):
        parts += [m, -m]

    # exact ties between consecutive bf16 values and neighbours, over every exponent
    hb = rng.integers(0, 0x7F7F, 100_000).astype(np.uint32)
    for low in (0x8000, 0x7FFF, 0x8001, 0x0000, 0xFFFF):
        v = ((hb << 16) | low).astype(np.uint32).view(np.float32)
        parts += [v, -v]

    special = [0.0, -0.0, 1.0, 65504.0, 65505.0, 65519.0, 65519.996, 65520.0, 65520.004, 65536.0, 1e10,
               3.4028235e38, np.inf, -np.inf, np.nan, -np.nan, 2.0 ** -24, 2.0 ** -25, 2.0 ** -26, 3 * 2.0 ** -25,
               2.0 ** -14, 2.0 ** -14 - 2.0 ** -25, 1e-40, 1.4e-45, 1.17549435e-38, 3.3895314e38, 3.3961776e38,
               3.4e38]
    sp = np.array(special, dtype=np.float32)
    with np.errstate(over="ignore"):
        parts += [sp, -sp, np.nextafter(sp, np.float32(np.inf)), np.nextafter(sp, np.float32(-np.inf))]
    # quiet and signalling NaNs with payloads
    nan_bits = np.array([0x7FC00000, 0x7F800001, 0x7FBFFFFF, 0xFFC00001, 0x7F801000, 0xFF800100], dtype=np.uint32)
    parts.append(nan_bits.view(np.float32))
    return np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1) for p in parts])


VALUES = _f32_test_values()


def test_f32_to_f16_matches_numpy():
    with np.errstate(over="ignore", invalid="ignore"):
        want = VALUES.astype(np.float16).view(np.uint16)
    _assert_16_equal_nan_as_nan(_core.f32_to_f16(VALUES), want, VALUES, "f16", "f32_to_f16")


def test_f32_to_bf16_matches_ml_dtypes():
    with np.errstate(over="ignore", invalid="ignore"):
        want = VALUES.astype(BF16).view(np.uint16)
    _assert_16_equal_nan_as_nan(_core.f32_to_bf16(VALUES), want, VALUES, "bf16", "f32_to_bf16")


def test_rounding_written_out():
    """A few cases spelled out, independent of numpy / ml_dtypes."""
    f16 = lambda v: int(_core.f32_to_f16(np.array([v], np.float32))[0])
    bf16 = lambda v: int(_core.f32_to_bf16(np.array([v], np.float32))[0])
    assert f16(1.0) == 0x3C00
    assert f16(1.0 + 2.0 ** -11) == 0x3C00            # tie -> even (down)
    assert f16(1.0 + 3 * 2.0 ** -11) == 0x3C02        # tie -> even (up)
    assert f16(65504.0) == 0x7BFF
    assert f16(65519.996) == 0x7BFF                   # just below the overflow tie
    assert f16(65520.0) == 0x7C00                     # tie with 65536 -> even -> inf
    assert f16(2.0 ** -24) == 0x0001                  # smallest subnormal
    assert f16(2.0 ** -25) == 0x0000                  # tie with 0 -> even (0)
    assert f16(3 * 2.0 ** -25) == 0x0002              # tie between 1 and 2 subnormal units -> 2
    assert f16(-0.0) == 0x8000
    assert f16(float("inf")) == 0x7C00 and f16(float("-inf")) == 0xFC00
    assert bf16(1.0) == 0x3F80
    assert bf16(np.uint32(0x3F808000).view(np.float32)) == 0x3F80  # tie -> even (down)
    assert bf16(np.uint32(0x3F818000).view(np.float32)) == 0x3F82  # tie -> even (up)
    assert bf16(np.uint32(0x7F7F8000).view(np.float32)) == 0x7F80  # overflows to inf
    assert bf16(np.uint32(0x00008000).view(np.float32)) == 0x0000  # subnormal tie -> 0
    assert bf16(np.uint32(0x00018000).view(np.float32)) == 0x0002
    assert bf16(float("nan")) & 0x7FFF > 0x7F80


def test_conversion_shapes_and_dtypes():
    x = np.random.default_rng(1).standard_normal((3, 4, 5)).astype(np.float32)
    b = _core.f32_to_bf16(x)
    h = _core.f32_to_f16(x)
    assert b.shape == h.shape == (3, 4, 5) and b.dtype == h.dtype == np.uint16
    assert _core.bf16_to_f32(b).shape == (3, 4, 5)
    np.testing.assert_array_equal(_core.f16_to_f32(h), x.astype(np.float16).astype(np.float32))
    assert _core.f32_to_bf16(np.zeros(0, np.float32)).shape == (0,)
    assert _core.f32_to_f16(np.array(1.0, np.float32)).shape == ()
    for fn, bad in ((_core.f32_to_bf16, np.ones(3)), (_core.f32_to_f16, np.ones(3, np.int32)),
                    (_core.bf16_to_f32, np.ones(3, np.float32)), (_core.f16_to_f32, np.ones(3, np.int16))):
        with pytest.raises(ValueError):
            fn(bad)


# ---- CPU features ----------------------------------------------------------------------------------

FEATURE_KEYS = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_vnni",
                "avx512_vbmi", "amx_tile", "amx_bf16", "os_avx", "os_avx512", "os_amx"}


def test_cpu_info():
    info = ecomllm.cpu_info()
    assert FEATURE_KEYS | {"best_level", "simd_level", "threads", "amx", "bf16_products"} <= set(info)
    assert info["bf16_products"] == (info["avx512_bf16"] and info["simd_level"] == "avx512")
    for k in FEATURE_KEYS:
        assert isinstance(info[k], bool), k
    assert info["best_level"] in ("scalar", "avx2", "avx512")
    assert info["simd_level"] == ecomllm.simd_level() == _core.simd_level()
    assert isinstance(info["threads"], int) and info["threads"] >= 1
    assert _core.cpu_features()["best_level"] == info["best_level"]
    if info["best_level"] == "avx512":
        assert all(info[k] for k in ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "os_avx512"))
    if info["best_level"] in ("avx2", "avx512"):
        assert info["avx2"] and info["fma"] and info["os_avx"]
    order = ["scalar", "avx2", "avx512"]
    assert order.index(info["simd_level"]) <= order.index(info["best_level"])
    # The decode kernel follows the level: VBMI + VNNI at avx512, AVX2 at avx2, none at scalar.
    original = info["simd_level"]
    try:
        for level in order[:order.index(info["best_level"]) + 1]:
            ecomllm.set_simd_level(level)
            want = {"scalar": None, "avx2": "avx2",
                    "avx512": "avx512_vbmi" if info["avx512_vbmi"] and info["avx512_vnni"] else None}[level]
            assert ecomllm.cpu_info()["decode_kernel"] == want, level
    finally:
        ecomllm.set_simd_level(original)


def test_fma_peak_probe_measures_and_rejects_bad_arguments():
    # a measurement, so only its sanity is checked (never its speed): finite, positive, per level
    before = _core.simd_level()
    try:
        for level in ("scalar", ecomllm.cpu_info()["best_level"]):
            _core.set_simd_level(level)
            for threads in (0, 1):
                g = _core.fma_peak_gflops(0.02, threads)
                assert np.isfinite(g) and g > 0, (level, threads, g)
    finally:
        _core.set_simd_level(before)
    for bad in (0.0, -1.0, 61.0, float("nan")):
        with pytest.raises(ValueError, match="seconds"):
            _core.fma_peak_gflops(bad)


def _run_with_env(code: str, value):
    env = dict(os.environ)
    env.pop("ECOMLLM_CPU", None)
    if value is not None:
        env["ECOMLLM_CPU"] = value
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_env_bad_value_gives_clear_error():
    proc = _run_with_env("import ecomllm; print(ecomllm.simd_level())", "bogus")
    assert proc.returncode > 0, f"expected a Python error exit, got {proc.returncode} (negative = signal)\n{proc.stderr}"
    assert "ValueError" in proc.stderr
    assert "unknown SIMD level" in proc.stderr and "bogus" in proc.stderr, proc.stderr


@pytest.mark.parametrize("value", ["AVX2", "avx 512", "1"])
def test_env_other_bad_values(value):
    proc = _run_with_env("import ecomllm; print(ecomllm.simd_level())", value)
    assert proc.returncode > 0 and "SIMD level" in proc.stderr, (proc.returncode, proc.stderr)


def test_env_selects_level_and_kernels_work():
    best = _core.cpu_features()["best_level"]
    levels = ["scalar"] + (["avx2"] if best in ("avx2", "avx512") else []) + (["avx512"] if best == "avx512" else [])
    code = ("import numpy as np, ecomllm; from ecomllm.quant import NF4Tensor\n"
            "w = np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32)\n"
            "t = NF4Tensor.quantize(w); x = np.ones((5, 64), np.float32)\n"
            "ref = x.astype(np.float64) @ t.dequantize().astype(np.float64).T\n"
            "err = np.abs(t.matmul(x) - ref).max() / np.abs(ref).max()\n"
            "print(ecomllm.simd_level(), ecomllm.cpu_info()['simd_level'], err < 1e-5)")
    for lv in levels:
        proc = _run_with_env(code, lv)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [lv, lv, "True"], proc.stdout
    for value in (None, ""):
        proc = _run_with_env("import ecomllm; print(ecomllm.simd_level())", value)
        assert proc.returncode == 0 and proc.stdout.strip() == best, (proc.stdout, proc.stderr)


@pytest.mark.skipif(_core.cpu_features()["best_level"] == "avx512", reason="every level is supported by this CPU")
def test_env_level_above_cpu_is_rejected():
    best = _core.cpu_features()["best_level"]
    too_high = "avx512" if best == "avx2" else "avx2"
    proc = _run_with_env("import ecomllm; print(ecomllm.simd_level())", too_high)
    assert proc.returncode > 0 and "does not support" in proc.stderr, proc.stderr


def test_amx_switch():
    """ECOMLLM_AMX / set_amx_enabled turn the AMX tile path off and on; it only runs at avx512 on AMX CPUs,
    and a product of 40 rows gives fp32-accurate results either way."""
    code = ("import numpy as np, ecomllm; from ecomllm import _core; from ecomllm.quant import NF4Tensor\n"
            "w = np.random.default_rng(0).standard_normal((70, 96)).astype(np.float32)\n"
            "t = NF4Tensor.quantize(w); x = np.random.default_rng(1).standard_normal((40, 96)).astype(np.float32)\n"
            "ref = x.astype(np.float64) @ t.dequantize().astype(np.float64).T\n"
            "a = _core.amx_active(); ok = [np.abs(t.matmul(x) - ref).max() / np.abs(ref).max() < 1e-5]\n"
            "ecomllm.set_amx_enabled(True); b = _core.amx_active()\n"
            "ok.append(np.abs(t.matmul(x) - ref).max() / np.abs(ref).max() < 1e-5)\n"
            "_core.set_simd_level('scalar'); c = _core.amx_active()\n"
            "print(a, b, c, ecomllm.cpu_info()['amx'], _core.amx_enabled(), all(ok))")
    supported = _core.amx_supported()
    for value, starts_on in (("0", False), ("off", False), ("1", True), (None, True)):
        env = {k: v for k, v in os.environ.items() if k not in ("ECOMLLM_CPU", "ECOMLLM_AMX")}
        if value is not None:
            env["ECOMLLM_AMX"] = value
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        # the scalar level never uses AMX; cpu_info()["amx"] was read at scalar
        assert proc.stdout.split() == [str(starts_on and supported), str(supported), "False", "False", "True", "True"], \
            (value, proc.stdout)
    if supported:
        assert _core.cpu_features()["amx_tile"] and _core.cpu_features()["amx_bf16"] and _core.cpu_features()["os_amx"]

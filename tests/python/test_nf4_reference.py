"""NF4 quantization is byte-identical to an independent numpy implementation of bitsandbytes' rules.

Packed codes, absmax, the double-quantization offset / 8-bit codes / nested absmax, and the
dequantized values are compared BIT FOR BIT (tolerance: none) with `_nf4_ref`, over value
patterns that stress the rounding rules (midpoint ties, huge, tiny and subnormal magnitudes,
zero and constant blocks), sizes with and without tail blocks, odd sizes (padding nibble), four
blocksizes and fp32 / fp16 / bf16 inputs.
"""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

import _nf4_ref as ref
from _nf4_ref import F32, assert_bits_equal
from ecomllm import _core
from ecomllm.quant import NF4Tensor

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"f32": np.dtype(np.float32), "f16": np.dtype(np.float16), "bf16": BF16}
SIZES = [1, 2, 3, 17, 63, 64, 65, 127, 4097, 64 * 256 + 5]
BLOCKSIZES = [32, 64, 128, 4096]


# ---- input patterns ----------------------------------------------------------------------------

def _tie_pattern(bs: int, rng) -> np.ndarray:
    """Per block: +-1.0 first (the block's absmax), then every midpoint, its fp32 neighbours and its
    negation, all times a power of two so that x * (1/absmax) and x / absmax are exact: the scaled
    values land exactly on the midpoints (ties must go to the lower code)."""
    mids = ref.NF4_MID
    up = np.nextafter(mids, F32(np.inf))
    down = np.nextafter(mids, F32(-np.inf))
    body = np.concatenate([mids, -mids, up, down, -up, -down, ref.NF4_CODE, [F32(0.0), F32(-0.0)]]).astype(F32)
    out = []
    while sum(len(o) for o in out) < bs:
        out.append(body)
    block = np.concatenate([[F32(1.0)], np.concatenate(out)])[:bs].astype(F32)
    return block


def make_input(pattern: str, n: int, bs: int, dtype: np.dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    is16 = dtype == np.float16
    if pattern == "normal":
        x = rng.standard_normal(n).astype(F32)
    elif pattern == "uniform":
        x = rng.uniform(-3.0, 5.0, n).astype(F32)
    elif pattern == "zeros":
        x = np.zeros(n, F32)
    elif pattern == "constant":
        x = np.full(n, -0.3713, F32)
    elif pattern == "ties":
        nblocks = -(-n // bs)
        block = _tie_pattern(bs, rng)
        scales = np.ldexp(F32(1.0), rng.integers(-6, 7, nblocks)).astype(F32)
        signs = np.where(rng.random(nblocks) < 0.5, F32(-1), F32(1))
        x = (np.tile(block, nblocks) * np.repeat(scales * signs, bs)).astype(F32)[:n]
    elif pattern == "huge":
        if is16:
            x = rng.uniform(-6.5e4, 6.5e4, n).astype(F32)
        else:
            x = (rng.standard_normal(n) * 1e30).astype(F32)
            x[::97] = F32(3.0e38) * np.sign(x[::97] + F32(0.5))  # 1/absmax is subnormal here
    elif pattern == "tiny":
        if is16:
            x = (rng.standard_normal(n) * 1e-5).astype(F32)  # mostly fp16 subnormals
        else:
            x = (rng.standard_normal(n) * 1e-30).astype(F32)
    elif pattern == "subnormal":
        if is16:
            x = (rng.standard_normal(n) * 3e-7).astype(F32)  # fp16 subnormals, some round to 0
        else:
            # log-uniform from fp32 subnormals (1e-45) up to just above FLT_MIN (1.2e-38): many
            # blocks have absmax < 1e-38, so the 1e-38 clamp decides the scale.
            mag = np.exp(rng.uniform(np.log(1e-45), np.log(3e-38), n))
            x = (mag * np.where(rng.random(n) < 0.5, -1.0, 1.0)).astype(F32)
    elif pattern == "mixed_scale":
        nblocks = -(-n // bs)
        lo, hi = (-12, 12) if is16 else (-60, 60)
        scales = np.exp2(rng.uniform(lo, hi, nblocks))
        x = (rng.standard_normal(n) * np.repeat(scales, bs)[:n]).astype(F32)
        if is16:
            x = np.clip(x, -6e4, 6e4).astype(F32)
    else:
        raise ValueError(pattern)
    out = x.astype(dtype)
    assert np.all(np.isfinite(out.astype(np.float64))), "test input must be finite"
    return out


PATTERNS = ["normal", "uniform", "zeros", "constant", "ties", "huge", "tiny", "subnormal", "mixed_scale"]


def _core_quantize(x: np.ndarray, bs: int):
    """_core.nf4_quantize on the array, checking both bf16 entry points agree."""
    if x.dtype == BF16:
        p1, a1 = _core.nf4_quantize(x, bs)
        p2, a2 = _core.nf4_quantize(x.view(np.uint16), bs, bf16_bits=True)
        assert_bits_equal(p2, p1, "bf16_bits=True packed")
        assert_bits_equal(a2, a1, "bf16_bits=True absmax")
        return p1, a1
    return _core.nf4_quantize(x, bs)


def _check_one(x: np.ndarray, bs: int, shape=None) -> None:
    n = x.size
    exp_packed, exp_absmax = ref.nf4_quantize(x, bs)
    packed, absmax = _core_quantize(x, bs)
    assert packed.dtype == np.uint8 and packed.shape == ((n + 1) // 2,)
    assert absmax.dtype == np.float32 and absmax.shape == (-(-n // bs),)
    assert_bits_equal(packed, exp_packed, f"packed n={n} bs={bs}")
    assert_bits_equal(absmax, exp_absmax, f"absmax n={n} bs={bs}")

    # Double quantization.
    exp_off, exp_q, exp_nested = ref.double_quantize(exp_absmax)
    off = _core.absmax_mean(absmax)
    assert_bits_equal(np.float32(off), exp_off, "absmax_mean")
    assert float(np.float32(off)) == off, "absmax_mean must return an fp32 value"
    q, nested = _core.absmax_double_quantize(absmax, off)
    assert_bits_equal(q, exp_q, "qabsmax")
    assert_bits_equal(nested, exp_nested, "nested_absmax")

    # The facade, with and without double quantization: stored state and dequantization.
    shape = x.shape if shape is None else shape
    xs = x.reshape(shape)
    t = NF4Tensor.quantize(xs, blocksize=bs, double_quant=False)
    sd = t.state_dict()
    assert_bits_equal(sd["weight"].reshape(-1), exp_packed, "state_dict weight")
    assert_bits_equal(sd["weight.absmax"], exp_absmax, "state_dict absmax")
    exp_deq = ref.nf4_dequantize(exp_packed, exp_absmax, n, bs)
    deq = t.dequantize()
    assert deq.shape == shape and deq.dtype == np.float32
    assert_bits_equal(deq.reshape(-1), exp_deq, "dequantize (no DQ)")
    assert_bits_equal(t.block_scales(), exp_absmax, "block_scales (no DQ)")

    tdq = NF4Tensor.quantize(xs, blocksize=bs, double_quant=True)
    sd = tdq.state_dict()
    meta = json.loads(sd["weight.quant_state.bitsandbytes__nf4"].tobytes().decode())
    assert_bits_equal(np.float32(meta["nested_offset"]), exp_off, "state_dict nested_offset")
    assert float(np.float32(meta["nested_offset"])) == meta["nested_offset"]
    assert_bits_equal(sd["weight"].reshape(-1), exp_packed, "state_dict weight (DQ)")
    assert_bits_equal(sd["weight.absmax"], exp_q, "state_dict qabsmax")
    assert_bits_equal(sd["weight.nested_absmax"], exp_nested, "state_dict nested_absmax")
    assert_bits_equal(sd["weight.nested_quant_map"], ref.code8(), "state_dict nested_quant_map")
    exp_scales = ref.double_dequantize(exp_q, exp_nested, exp_off)
    assert_bits_equal(tdq.block_scales(), exp_scales, "block_scales (DQ)")
    assert_bits_equal(tdq.dequantize().reshape(-1), ref.nf4_dequantize(exp_packed, exp_scales, n, bs), "dequantize (DQ)")


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("pattern", PATTERNS)
def test_matches_reference(pattern, dtype, n):
    for bs in BLOCKSIZES:
        x = make_input(pattern, n, bs, DTYPES[dtype], seed=n * 7 + bs)
        _check_one(x, bs)


@pytest.mark.parametrize("shape", [(3, 5), (7, 33), (17, 63), (2, 3, 65), (64, 64), (5, 1, 1, 97)])
@pytest.mark.parametrize("bs", [32, 64, 128])
def test_multidimensional_shapes_flatten_row_major(shape, bs):
    x = make_input("normal", int(np.prod(shape)), bs, np.dtype(np.float32), seed=len(shape) + bs)
    _check_one(x.reshape(shape), bs, shape=shape)


def test_ties_go_to_the_lower_code():
    """Written-out expectations (no reference): a block [1.0, v] gives v the nearest code; a value
    exactly on the midpoint between codes i and i+1 gets i, its upper fp32 neighbour gets i+1."""
    mids = ref.NF4_MID
    for bs in (32, 64):
        for i, m in enumerate(mids):  # mids[i] lies between code i and code i + 1
            v = F32(m)
            above = np.nextafter(v, F32(np.inf))
            below = np.nextafter(v, F32(-np.inf))
            # full block (multiply by the reciprocal): 1.0, v, above, below, then zeros
            x = np.zeros(bs, F32)
            x[:4] = [1.0, v, above, below]
            packed, absmax = _core.nf4_quantize(x, bs)
            codes = ref.unpack(packed, bs)
            assert absmax[0] == 1.0
            assert codes[:4].tolist() == [15, i, i + 1, i], (i, codes[:4])
            assert set(codes[4:].tolist()) == {7}
            # the same values as a tail block (division path)
            packed_t, absmax_t = _core.nf4_quantize(x[:5], bs)
            assert absmax_t[0] == 1.0
            assert ref.unpack(packed_t, 5).tolist() == [15, i, i + 1, i, 7]
            # and with absmax -2: x * (1 / 2) is exact, the sign of the absmax element is kept
            packed_n, absmax_n = _core.nf4_quantize(np.array([-2.0, 2 * v, 2 * above, 2 * below], F32), bs)
            assert absmax_n[0] == 2.0
            assert ref.unpack(packed_n, 4).tolist() == [0, i, i + 1, i]


def _find_scaled_tie(absmax: np.float32, mid: np.float32, tail: bool):
    """An fp32 x with x * (1/absmax) == mid (full block) or x / absmax == mid (tail), or None."""
    inv = F32(F32(1) / absmax)
    x = F32(mid * absmax)
    for _ in range(64):
        s = F32(x / absmax) if tail else F32(x * inv)
        if s == mid:
            return x
        x = np.nextafter(x, F32(np.inf) if s < mid else F32(-np.inf))
    return None


@pytest.mark.parametrize("tail", [False, True], ids=["full_block", "tail_block"])
def test_ties_with_inexact_scale(tail):
    """Scaled values that hit a midpoint exactly through a rounding multiply (absmax = 3, 0.7, ...)."""
    bs = 64
    found = 0
    for absmax in (F32(3.0), F32(0.7), F32(1e-3), F32(12345.678)):
        x = np.zeros(bs, F32)
        x[0] = absmax
        vals = []
        for m in ref.NF4_MID:
            for mm in (m, -m):
                v = _find_scaled_tie(absmax, F32(mm), tail)
                if v is not None:
                    vals.append(v)
        found += len(vals)
        x[1:1 + len(vals)] = vals
        if tail:
            x = x[: 1 + len(vals)]
            if x.size % bs == 0:
                x = x[:-1]
        _check_one(x, bs)
    assert found > 20, "the search should find many exact midpoint hits"


def test_block_absmax_zero_and_clamp_rules():
    """Full blocks store absmax unclamped (0 or subnormal); tail blocks store it clamped to 1e-38."""
    bs = 32
    sub = F32(1e-40)
    x = np.zeros(3 * bs + 3, F32)
    x[bs:2 * bs] = sub                      # full block, subnormal absmax
    x[-3:] = [sub, -sub, 0.0]                # tail block with subnormal absmax
    packed, absmax = _core.nf4_quantize(x, bs)
    assert absmax[0] == 0.0
    assert absmax[1] == sub
    assert absmax[2] == 0.0
    assert absmax[3] == F32(1e-38)
    codes = ref.unpack(packed, x.size)
    assert set(codes[:bs].tolist()) == {7}       # zeros -> code of 0.0
    # 1e-40 * (1 / 1e-38) = 0.01 -> nearest code is 0.0 (code 7)
    assert set(codes[bs:2 * bs].tolist()) == {7}
    assert codes[-3:].tolist() == [7, 7, 7]
    _check_one(x, bs)


def test_odd_size_pads_low_nibble_with_zero_code():
    for n in (1, 3, 65, 4097):
        x = np.full(n, -1.0, F32)
        packed, _ = _core.nf4_quantize(x, 64)
        assert packed.size == (n + 1) // 2
        assert packed[-1] == 0x07  # code 0 (-1.0) in the high nibble, pad code 7 in the low one
        assert np.all(packed[:-1] == 0x00)


def test_codebook_literals():
    assert_bits_equal(_core.nf4_codebook(), ref.NF4_CODE, "nf4_codebook")
    assert_bits_equal(NF4Tensor.quantize(np.ones(64, F32)).state_dict()["weight.quant_map"], ref.NF4_CODE, "quant_map")


def test_dynamic_map_matches_bitsandbytes():
    try:
        from bitsandbytes.functional import create_dynamic_map
    except Exception as e:  # pragma: no cover
        pytest.skip(f"bitsandbytes.functional.create_dynamic_map not importable: {e!r}")
    expected = create_dynamic_map().numpy()
    got = _core.dynamic_map_8bit()
    assert got.shape == (256,) and got.dtype == np.float32
    assert_bits_equal(got, expected, "dynamic_map_8bit vs bnb create_dynamic_map()")
    assert np.all(np.diff(got.astype(np.float64)) >= 0)


@pytest.mark.parametrize("bs", [1, 7, 64, 256, 1000])
def test_quantize_blockwise_8bit_matches_reference(bs):
    rng = np.random.default_rng(bs)
    v = rng.standard_normal(2000).astype(F32) * np.repeat(np.exp2(rng.uniform(-20, 20, 2000 // 100 + 1)), 100)[:2000].astype(F32)
    v = v.astype(F32)
    v[:bs] = 0.0                      # an all-zero block
    v[-5:] = [1.0, -1.0, 0.5, -0.5, 0.0]
    code = _core.dynamic_map_8bit()
    q, absmax = _core.quantize_blockwise_8bit(v, bs, code)
    eq, eabsmax = ref.quantize_blockwise_8bit(v, bs)
    assert_bits_equal(q, eq, "q8")
    assert_bits_equal(absmax, eabsmax, "absmax8")
    assert np.all(q[:bs] == 0)


def test_quantize_blockwise_8bit_custom_code_and_lut_cache():
    """A different 256-entry code gets its own lookup table (the core caches tables per code)."""
    rng = np.random.default_rng(1)
    v = rng.uniform(-2, 2, 3000).astype(F32)
    linear = np.linspace(-1, 1, 256, dtype=F32)
    for code in (linear, _core.dynamic_map_8bit(), linear):
        q, absmax = _core.quantize_blockwise_8bit(v, 256, code)
        eq, eabsmax = ref.quantize_blockwise_8bit(v, 256, code)
        assert_bits_equal(q, eq, "q8 custom code")
        assert_bits_equal(absmax, eabsmax, "absmax8 custom code")


def test_double_quant_offset_is_exactly_rounded_mean():
    """absmax values whose float32 running sum would round differently from the exact mean."""
    rng = np.random.default_rng(3)
    for nb in (1, 2, 255, 256, 257, 100_000):
        a = (rng.random(nb) * 10.0 ** rng.integers(-8, 8, nb)).astype(F32)
        assert_bits_equal(np.float32(_core.absmax_mean(a)), ref.absmax_offset(a), f"absmax_mean nb={nb}")
    a = np.array([1.0, 2.0 ** -24, 2.0 ** -24], F32)  # fp32 left-to-right sum loses both tiny terms
    assert_bits_equal(np.float32(_core.absmax_mean(a)), ref.absmax_offset(a), "absmax_mean small terms")


def test_double_dequantize_rounding():
    """block_scales() = float32(float32(code8[q] * nested) + offset): two roundings, no FMA."""
    rng = np.random.default_rng(5)
    nb = 1000
    q = rng.integers(0, 256, nb).astype(np.uint8)
    nested = rng.uniform(0.1, 3.0, -(-nb // 256)).astype(F32)
    offset = F32(1.2345678)
    n = nb * 64
    m = _core.NF4Matrix(np.zeros((n + 1) // 2, np.uint8), 1, n, 64, ref.NF4_CODE, qabsmax=q,
                        nested_absmax=nested, nested_code=ref.code8(), offset=float(offset))
    assert_bits_equal(m.block_scales(), ref.double_dequantize(q, nested, offset), "block_scales")


# ---- facade properties and round trips ---------------------------------------------------------------

@pytest.mark.parametrize("dq", [False, True], ids=["plain", "dq"])
@pytest.mark.parametrize("shape,bs", [((8, 64), 64), ((3, 5), 32), ((17, 63), 128), ((300, 300), 64), ((4097,), 4096),
                                      ((2, 3, 65), 32)])
def test_properties(shape, bs, dq):
    n = int(np.prod(shape))
    x = make_input("normal", n, bs, np.dtype(np.float32)).reshape(shape)
    t = NF4Tensor.quantize(x, blocksize=bs, double_quant=dq)
    nb = -(-n // bs)
    assert t.shape == shape and t.blocksize == bs and t.double_quant == dq and t.dtype == "float32"
    assert t.numel == n
    packed = (n + 1) // 2
    if dq:
        expected = packed + 16 * 4 + nb + 4 * (-(-nb // 256)) + 256 * 4
        bits = 8.0 * (packed + nb + 4 * (-(-nb // 256))) / n
    else:
        expected = packed + 16 * 4 + 4 * nb
        bits = 8.0 * (packed + 4 * nb) / n
    assert t.nbytes == expected
    assert t.bits_per_weight == pytest.approx(bits, rel=1e-12)
    if n % bs == 0 and n % 2 == 0 and nb % 256 == 0:
        assert t.bits_per_weight == pytest.approx(4 + 8 / bs + 32 / (bs * 256) if dq else 4 + 32 / bs)
    assert "NF4Tensor" in repr(t) and str(shape) in repr(t)
    assert t.dequantize(np.float16).dtype == np.float16
    np.testing.assert_array_equal(t.dequantize(np.float16), t.dequantize().astype(np.float16))


def test_bits_per_weight_typical():
    w = make_input("normal", 4096 * 256, 64, np.dtype(np.float32)).reshape(256, 4096)
    assert NF4Tensor.quantize(w, 64, double_quant=True).bits_per_weight == pytest.approx(4.127, abs=1e-3)
    assert NF4Tensor.quantize(w, 64, double_quant=False).bits_per_weight == pytest.approx(4.5)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("dq", [False, True], ids=["plain", "dq"])
def test_state_dict_and_file_round_trip(tmp_path, dtype, dq):
    from ecomllm.safetensors import load_safetensors, save_safetensors

    x = make_input("mixed_scale", 33 * 65, 64, DTYPES[dtype]).reshape(33, 65)
    t = NF4Tensor.quantize(x, blocksize=64, double_quant=dq)
    u = NF4Tensor.quantize(make_input("normal", 16 * 32, 32, DTYPES[dtype]).reshape(16, 32), 32, double_quant=not dq)

    def same(a, b):
        assert a.shape == b.shape and a.blocksize == b.blocksize and a.dtype == b.dtype
        assert a.double_quant == b.double_quant and a.nbytes == b.nbytes
        assert_bits_equal(a.dequantize(), b.dequantize(), "dequantize")
        assert_bits_equal(a.block_scales(), b.block_scales(), "block_scales")
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert_bits_equal(np.asarray(sa[k]), np.asarray(sb[k]), k)

    same(NF4Tensor.from_state_dict(t.state_dict()), t)
    assert t.dtype == {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype]

    path = tmp_path / "t.safetensors"
    t.save_safetensors(path)
    same(NF4Tensor.load_safetensors(path), t)

    # two weights in one file under different prefixes; memory-mapped arrays straight from the file
    both = {**t.state_dict("model.a."), **u.state_dict("model.b.")}
    save_safetensors(path, both)
    same(NF4Tensor.load_safetensors(path, prefix="model.a."), t)
    same(NF4Tensor.load_safetensors(path, prefix="model.b."), u)
    mm = load_safetensors(path, mmap=True)
    same(NF4Tensor.from_state_dict(mm, prefix="model.a."), t)
    same(NF4Tensor.from_state_dict(mm, prefix="model.b."), u)
    x2 = np.ones((2, 65), np.float32)
    np.testing.assert_array_equal(NF4Tensor.from_state_dict(mm, prefix="model.a.").matmul(x2), t.matmul(x2))

"""NF4Tensor.matmul(x, activations="int16"): the int16-activation decoding kernel.

Reference: float64 numpy x @ dequantize()^T. Tolerance: max|ours - ref| / max|ref| <= 5e-4 -- x is
rounded to 1/16383 of each 64-element chunk's largest |x| and the 16 code values to 2^-14, then
summed exactly in int32; typical differences are ~6e-5 (and 1e-7 for the fp32 kernel). Levels
agree with the scalar level to 1e-5 (fp32 summation order only).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from _nf4_ref import rel_err
from ecomllm import _core
from ecomllm.quant import NF4Tensor


# The kernels over bitsandbytes' layout (the decode layout has its own tests: test_nf4_decode_layout.py).
pytestmark = pytest.mark.usefixtures("manual_decoding_policy")

TOL = 5e-4
BEST = _core.cpu_features()["best_level"]
LEVELS = ["scalar"] + (["avx2"] if BEST in ("avx2", "avx512") else []) + (["avx512"] if BEST == "avx512" else [])


@pytest.fixture(params=LEVELS)
def level(request):
    original = _core.simd_level()
    _core.set_simd_level(request.param)
    yield request.param
    _core.set_simd_level(original)


def _weight(n, k, bs=64, dq=True, seed=0):
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32) * 0.02
    t = NF4Tensor.quantize(w, blocksize=bs, double_quant=dq)
    return t, t.dequantize().astype(np.float64)


@pytest.mark.parametrize("m,n,k,bs,dq", [(1, 1, 64, 64, False), (1, 37, 4096, 64, True), (2, 300, 1024, 256, True),
                                         (3, 11, 192, 128, False), (1, 6, 6144, 4096, True)])
def test_matches_fp64_reference(level, m, n, k, bs, dq):
    t, wd = _weight(n, k, bs, dq)
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    bias = np.random.default_rng(2).standard_normal(n).astype(np.float32)
    ref = x.astype(np.float64) @ wd.T + bias
    y = t.matmul(x, bias, activations="int16")
    assert y.shape == (m, n) and y.dtype == np.float32
    assert rel_err(y, ref) <= TOL
    # the fp32 kernel stays the default and exact to fp32 rounding
    assert rel_err(t.matmul(x, bias), ref) <= 1e-5


def test_levels_agree_and_bf16_and_batched_inputs():
    t, wd = _weight(65, 512)
    x = np.random.default_rng(3).standard_normal((2, 1, 512)).astype(np.float32)
    original = _core.simd_level()
    try:
        _core.set_simd_level("scalar")
        y_scalar = t.matmul(x, activations="int16")
        for lv in LEVELS[1:]:
            _core.set_simd_level(lv)
            assert rel_err(t.matmul(x, activations="int16"), y_scalar) <= 1e-5, lv
    finally:
        _core.set_simd_level(original)
    assert y_scalar.shape == (2, 1, 65)
    xb = x.astype(ml_dtypes.bfloat16)
    ref = xb.astype(np.float64) @ wd.T
    assert rel_err(t.matmul(xb, activations="int16"), ref) <= TOL


def test_outliers_zeros_and_non_finite_rows():
    t, wd = _weight(16, 256)
    x = np.random.default_rng(4).standard_normal((3, 256)).astype(np.float32)
    x[0, 10] = 1e4     # one chunk's resolution drops, the others keep theirs
    x[1, :64] = 0.0    # an all-zero chunk has scale 0
    x[2, 7] = np.nan   # this row runs through the fp32 kernel: NaN propagates as there
    y = t.matmul(x, activations="int16")
    ref = x[:2].astype(np.float64) @ wd.T
    assert rel_err(y[:2], ref) <= TOL
    assert np.isnan(y[2]).all()
    # tiny rows: 16383 / max|x| would overflow; such rows take the fp32 kernel (was ~3x error)
    for scale in (1e-30, 1e-35, 1e-37):
        xs = (x[:2] * np.float32(scale)).astype(np.float32)
        ref = xs.astype(np.float64) @ wd.T
        assert rel_err(t.matmul(xs, activations="int16"), ref) <= TOL, scale


def test_unsupported_shapes_and_bad_arguments_raise():
    t, _ = _weight(4, 96, bs=32, dq=False)  # in_features and blocksize not multiples of 64
    assert not t.supports_int16_activations
    with pytest.raises(ValueError, match="multiples of 64"):
        t.matmul(np.ones((1, 96), np.float32), activations="int16")
    ok, _ = _weight(4, 128)
    assert ok.supports_int16_activations
    with pytest.raises(ValueError, match="activations"):
        ok.matmul(np.ones((1, 128), np.float32), activations="int8")
    with pytest.raises(ValueError):
        ok.matmul(np.ones((1, 127), np.float32), activations="int16")

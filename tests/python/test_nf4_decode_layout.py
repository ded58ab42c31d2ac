"""The opt-in decoding copy of an NF4 weight (NF4Tensor.prepare_decoding) and its product-table kernel.

Reference: float64 numpy products with W_deq = dequantize(), and the default fp32 kernel.
Tolerance: relative error max|ours - ref| / max|ref| <= 1e-5, as for every other NF4 kernel (the
table kernel's products carry 24-bit digits: ~3e-7 measured). Two kernels, each with its own byte
order: AVX-512 VBMI + VNNI at the avx512 level, AVX2 at the avx2 level; they must agree bit for
bit. Where neither runs (the scalar level, or avx512 without VBMI/VNNI), prepare_decoding must
return False and change nothing; the kernel tests then skip.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from _nf4_ref import rel_err
from ecomllm import _core
from ecomllm.quant import NF4Tensor

TOL = 1e-5
FEATURES = _core.cpu_features()
VBMI_HERE = FEATURES["best_level"] == "avx512" and FEATURES["avx512_vbmi"] and FEATURES["avx512_vnni"]
KERNEL_HERE = (VBMI_HERE and _core.simd_level() == "avx512") or _core.simd_level() == "avx2"
needs_kernel = pytest.mark.skipif(not KERNEL_HERE, reason="no decode kernel at this CPU's active SIMD level (avx512 "
                                  "without VBMI/VNNI, or scalar): prepare_decoding returns False here (checked in "
                                  "test_unavailable_changes_nothing)")
needs_both_kernels = pytest.mark.skipif(not VBMI_HERE, reason="this CPU lacks AVX-512 VBMI/VNNI: only the AVX2 kernel "
                                        "runs here, so the two cannot be compared")
AVX2_HERE = FEATURES["best_level"] in ("avx2", "avx512")


@pytest.fixture
def level():
    """Sets the SIMD level for the test (restored after)."""
    original = _core.simd_level()
    yield _core.set_simd_level
    _core.set_simd_level(original)


def _weight(n, k, blocksize=64, double_quant=True, seed=0, auto=False):
    """A random NF4 weight; auto=False: in bitsandbytes' layout until prepare_decoding is called
    (no layout at its first matmul of few rows, whatever the decoding policy)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32) * rng.uniform(0.1, 3.0, size=(n, 1)).astype(np.float32)
    t = NF4Tensor.quantize(w, blocksize=blocksize, double_quant=double_quant)
    if not auto and len(t.shape) == 2:
        t.prepare_decoding(False)
    return t


def _expected_nbytes(n, k, blocksize=64, double_quant=True):
    """decoding_nbytes of the layout built at the active SIMD level (csrc/quant/nf4_decode_layout.h):
    per 64 rows and 64 columns 2048 bytes of codes, then the 64 block scales as fp32 (the AVX2
    kind, plain scales) or, in the VBMI kind of a double-quantized weight whose 16-row chunks'
    nested scales fit a 32-entry window, as their 8-bit codes, plus the layout's copy of the
    nested absmax (zero-padded by 32, covering the padded rows) and the map's 4 x 256 byte planes."""
    groups, segments = -(-n // 64), k // 64
    codes = groups * segments * 2048
    shift = (blocksize * 256).bit_length() - 1
    window_fits = ((1 << shift) - 1 + 15 * k) >> shift < 32
    if _core.simd_level() == "avx512" and double_quant and window_fits:
        nested = -(-(-(-n * k // blocksize)) // 256)
        reach = ((groups * 64 * k - 1) >> shift) + 1
        return codes + groups * segments * 64 + 4 * (max(nested, reach) + 32) + 4 * 256
    return codes + groups * segments * 64 * 4


CASES = [  # (M, N, K, blocksize, double_quant)
    (1, 1, 64, 64, True), (1, 3, 128, 64, True), (2, 17, 192, 64, True), (3, 63, 256, 64, False),
    (1, 64, 64, 64, True), (1, 65, 4096, 64, True), (3, 65, 4096, 64, False), (1, 1000, 512, 128, True),
    (2, 129, 1024, 256, True), (1, 200, 4096, 4096, True), (3, 4097, 64, 64, True), (1, 128, 11008, 64, True),
    (1, 100, 128, 4096, True), (2, 70, 192, 512, False),  # blocks spanning several rows
]


@needs_kernel
@pytest.mark.parametrize("m,n,k,bs,dq", CASES)
def test_matches_reference_and_default_kernel(m, n, k, bs, dq):
    t = _weight(n, k, bs, dq, seed=n + k)
    rng = np.random.default_rng(m * 7 + k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    ref = x.astype(np.float64) @ t.dequantize().astype(np.float64).T + bias
    default = t.matmul(x, bias=bias)
    assert t.decoding_nbytes == 0
    assert t.prepare_decoding() is True
    assert t.decoding_nbytes == _expected_nbytes(n, k, bs, dq)
    y = t.matmul(x, bias=bias)
    assert y.shape == (m, n) and y.dtype == np.float32
    assert rel_err(y, ref) <= TOL
    assert rel_err(y, default) <= TOL
    assert not np.array_equal(y, default) or n * k < 256  # the table kernel ran (its rounding differs)
    # dropping the copy returns to the default kernel exactly
    assert t.prepare_decoding(False) is False and t.decoding_nbytes == 0
    np.testing.assert_array_equal(t.matmul(x, bias=bias), default)


@needs_kernel
def test_bf16_input_batched_shapes_and_many_rows():
    t = _weight(70, 320, seed=3)
    t.prepare_decoding()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 1, 320)).astype(np.float32)
    xb = x.astype(ml_dtypes.bfloat16)
    ref = xb.astype(np.float64).reshape(2, 320) @ t.dequantize().astype(np.float64).T
    y = t.matmul(xb)
    assert y.shape == (2, 1, 70)
    assert rel_err(y.reshape(2, 70), ref) <= TOL
    # more than 3 rows of x take the tiled GEMM, still exact
    x8 = rng.standard_normal((8, 320)).astype(np.float32)
    assert rel_err(t.matmul(x8), x8.astype(np.float64) @ t.dequantize().astype(np.float64).T) <= TOL


@needs_kernel
def test_inputs_the_tables_refuse_fall_back_to_the_default_kernel():
    t = _weight(65, 256, seed=5)
    rng = np.random.default_rng(2)
    cases = []
    x = rng.standard_normal((2, 256)).astype(np.float32)
    x[1, 7] = np.inf
    cases.append(x)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    x[0, 100] = np.nan
    cases.append(x)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    x[0, 64:128] = 1e-35  # a segment whose max |x| is below 2^-100 but not 0
    cases.append(x)
    defaults = [t.matmul(x) for x in cases]
    t.prepare_decoding()
    for x, d in zip(cases, defaults):
        np.testing.assert_array_equal(t.matmul(x), d)  # the default kernel's result, NaN and inf alike
    # an all-zero segment is fine for the tables: exact, not a fallback
    x = rng.standard_normal((1, 256)).astype(np.float32)
    x[0, :64] = 0.0
    assert rel_err(t.matmul(x), x.astype(np.float64) @ t.dequantize().astype(np.float64).T) <= TOL


@needs_kernel
def test_huge_and_tiny_activations_stay_exact():
    t = _weight(64, 256, seed=9)
    t.prepare_decoding()
    rng = np.random.default_rng(4)
    for scale in (1e-30, 1e-3, 1e3, 1e30):
        x = (rng.standard_normal((1, 256)) * scale).astype(np.float32)
        x[0, 5] *= 1e4 if scale < 1e30 else 1.0  # one dominant element per row
        ref = x.astype(np.float64) @ t.dequantize().astype(np.float64).T
        assert rel_err(t.matmul(x), ref) <= TOL, scale


@needs_kernel
def test_state_dict_and_level_switch_are_unaffected():
    t = _weight(65, 128, seed=11)
    before = {k: v.copy() for k, v in t.state_dict().items()}
    x = np.random.default_rng(3).standard_normal((1, 128)).astype(np.float32)
    default = t.matmul(x)
    t.prepare_decoding()
    after = t.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    original = _core.simd_level()
    try:
        _core.set_simd_level("scalar")  # the copy stays, no decode kernel runs at this level
        np.testing.assert_array_equal(t.matmul(x), _weight(65, 128, seed=11).matmul(x))
    finally:
        _core.set_simd_level(original)
    assert rel_err(t.matmul(x), default) <= TOL


@needs_kernel
def test_concurrent_matmuls_and_dropping_the_copy_are_safe():
    import threading

    t = _weight(256, 1024, seed=13)
    x = np.random.default_rng(5).standard_normal((1, 1024)).astype(np.float32)
    ref = x.astype(np.float64) @ t.dequantize().astype(np.float64).T
    errors = []

    def worker():
        for _ in range(200):
            if rel_err(t.matmul(x), ref) > TOL:
                errors.append("wrong result")

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for th in threads:
        th.start()
    for i in range(100):  # build and drop the copy while the workers multiply
        t.prepare_decoding(i % 2 == 0)
    for th in threads:
        th.join()
    assert not errors


def test_unsupported_weights_and_unavailable_cpus_change_nothing():
    for t in (_weight(5, 96), _weight(5, 128, blocksize=32), _weight(5, 100)):  # K % 64, blocksize % 64
        x = np.ones((1, t.shape[1]), np.float32)
        y = t.matmul(x)
        assert t.prepare_decoding() is False and t.decoding_nbytes == 0
        assert t.prepare_decoding(keep_codes=False) is False and t.holds_codes  # nothing released
        assert t.memory_nbytes == t.nbytes
        np.testing.assert_array_equal(t.matmul(x), y)
    one_d = NF4Tensor.quantize(np.ones(128, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        one_d.prepare_decoding()


TOL_INT16 = 5e-4  # as tests/python/test_nf4_gemv_q16.py: 16-bit products, ~6e-5 measured


@needs_kernel
@pytest.mark.parametrize("m,n,k,bs,dq", [c for c in CASES if c[2] % 64 == 0])
def test_int16_activations_read_the_layout(m, n, k, bs, dq):
    # activations="int16" on a weight with a decode layout: the layout's kernel with two-digit
    # (16-bit) product tables, not the q16 kernel over restored codes. Same tolerance as q16.
    t = _weight(n, k, bs, dq, seed=n + k + 1)
    rng = np.random.default_rng(m * 5 + k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    ref = x.astype(np.float64) @ t.dequantize().astype(np.float64).T + bias
    q16 = t.matmul(x, bias=bias, activations="int16")  # bitsandbytes' layout: the q16 kernel
    assert t.prepare_decoding(keep_codes=False) is True
    y = t.matmul(x, bias=bias, activations="int16")
    assert y.shape == (m, n) and y.dtype == np.float32
    assert rel_err(y, ref) <= TOL_INT16
    assert not np.array_equal(y, q16) or n * k < 256  # another kernel ran
    assert not t.holds_codes  # nothing restored for good
    # bf16 input, more rows than the exact kernel's 16 (one pass per row either way)
    xb = rng.standard_normal((20, k)).astype(ml_dtypes.bfloat16)
    refb = xb.astype(np.float64) @ t.dequantize().astype(np.float64).T
    assert rel_err(t.matmul(xb, activations="int16"), refb) <= TOL_INT16


@needs_kernel
def test_int16_activations_on_the_layout_refuse_rows_like_the_exact_kernel():
    # Rows the tables refuse (inf/NaN, a denormal segment scale) go to the q16 path over restored
    # codes, which sends non-finite rows to the exact kernel: results as without the layout.
    t = _weight(70, 256, seed=9)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    x[1, 5] = np.inf
    x[2, :64] = 1e-35
    want = t.matmul(x, activations="int16")
    assert t.prepare_decoding(keep_codes=False) is True
    got = t.matmul(x, activations="int16")
    np.testing.assert_array_equal(got, want)  # the whole call refused: the same kernel, same codes
    ref = x[[0, 2]].astype(np.float64) @ t.dequantize().astype(np.float64).T
    assert rel_err(got[[0, 2]], ref) <= TOL_INT16
    assert not np.array_equal(t.matmul(x[:1], activations="int16"), want[:1])  # row 0 alone: the tables
    assert not t.holds_codes


@pytest.mark.parametrize("factor", [3.0, 0.5])
def test_code_books_from_files_beyond_nf4s_range(factor):
    # A file's quant_map can hold any values. The tables' digits are sized for |code| <= 1: a
    # wider code book must not get the layout (it overflowed the top digit: ~100% error); a
    # narrower one may, and stays exact. Also under the auto policy at the first decoding call.
    sd = {k: np.array(v) for k, v in _weight(64, 256, seed=3).state_dict().items()}
    sd["weight.quant_map"] = sd["weight.quant_map"] * np.float32(factor)
    x = np.random.default_rng(4).standard_normal((2, 256)).astype(np.float32)
    for explicit in (True, False):
        t = NF4Tensor.from_state_dict(sd)
        ref = x.astype(np.float64) @ t.dequantize().astype(np.float64).T
        if explicit:
            assert t.prepare_decoding(keep_codes=False) is (factor <= 1 and KERNEL_HERE)
        assert rel_err(t.matmul(x), ref) <= TOL
        assert rel_err(t.matmul(x[:1]), ref[:1]) <= TOL
        assert t.holds_codes is not (factor <= 1 and KERNEL_HERE)


def test_unavailable_changes_nothing():
    original = _core.simd_level()
    try:
        _core.set_simd_level("scalar")
        t = _weight(64, 128)
        assert t.prepare_decoding() is False and t.decoding_nbytes == 0
        assert t.prepare_decoding(keep_codes=False) is False and t.holds_codes
    finally:
        _core.set_simd_level(original)
    t = _weight(64, 128)
    assert t.prepare_decoding() is KERNEL_HERE


def _tiny_llama_dir(tmp_path, seed):
    """A 2-layer Llama checkpoint saved by transformers (fp32), for Model.from_pretrained(quantize="nf4")."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=61, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   rms_norm_eps=1e-5, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).float().save_pretrained(tmp_path / "base")
    return tmp_path / "base"


@needs_kernel
def test_model_decoding_copy_gives_the_same_logits(tmp_path):
    """An NF4 model with prepare_decoding: token-by-token forwards (1-3 tokens: the decode kernel,
    with and without a LoRA adapter's extra term) and a 4-token one (the GEMM) match the model
    without the copy."""
    from ecomllm import LoraConfig, Model

    model = Model.from_pretrained(_tiny_llama_dir(tmp_path, seed=0), quantize="nf4", blocksize=64)
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 61, size=(1, t)) for t in (1, 2, 3, 4)]

    def all_logits():
        return [model.forward(ids) for ids in inputs]

    plain = all_logits()
    count = model.prepare_decoding()
    assert count >= 14  # 2 layers x 7 projections (+ lm_head when it is NF4)
    assert model.decoding_nbytes > 0
    prepared = all_logits()
    for got, want in zip(prepared, plain):
        assert rel_err(got, want) <= TOL
    assert not np.array_equal(prepared[0], plain[0])  # the table kernel ran (its rounding differs)
    model.add_lora(LoraConfig(r=4, alpha=8, seed=1))
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"):
        A, B = model.lora_weights(name)
        model.set_lora_weights(name, A, rng.standard_normal(B.shape).astype(np.float32) * 0.1)
    with_copy = all_logits()
    assert model.prepare_decoding(False) == 0 and model.decoding_nbytes == 0
    for got, want in zip(with_copy, all_logits()):
        assert rel_err(got, want) <= TOL


# ---- keep_codes=False: the decode layout as the only copy of the codes -------------------------

def _held_bytes(t):
    return t.nbytes - (t.numel + 1) // 2 + t.decoding_nbytes


@needs_kernel
@pytest.mark.parametrize("n,k,bs,dq", [(1, 64, 64, True), (65, 4096, 64, False), (130, 192, 128, True),
                                       (70, 192, 512, False), (40, 2112, 64, True), (33, 128, 4096, True)])
def test_released_codes_change_no_result_and_no_byte_of_the_state(n, k, bs, dq, tmp_path):
    """Every path gives the same bits with the codes released as with them held (the 1-3 row
    kernel reads the same layout; the others read codes restored byte for byte), and the state
    dict and files are byte-identical."""
    t = _weight(n, k, bs, dq, seed=n * 3 + k)
    plain = _weight(n, k, bs, dq, seed=n * 3 + k)  # no layout: bitsandbytes' layout throughout
    rng = np.random.default_rng(k)
    xs = [rng.standard_normal((m, k)).astype(np.float32) for m in (1, 3, 4, 9, 17, 40)]
    dy = rng.standard_normal((5, n)).astype(np.float32)
    state = {key: v.copy() for key, v in t.state_dict().items()}
    t.prepare_decoding()  # codes kept: the reference for every product below
    want = [t.matmul(x) for x in xs] + [t.matmul_t(dy), t.dequantize(), t.matmul(xs[0], activations="int16")]

    assert t.prepare_decoding(keep_codes=False) is True
    assert not t.holds_codes
    assert t.memory_nbytes == _held_bytes(t) and t.memory_nbytes < t.nbytes + t.decoding_nbytes
    got = [t.matmul(x) for x in xs] + [t.matmul_t(dy), t.dequantize(), t.matmul(xs[0], activations="int16")]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    for x, g in zip(xs, got):
        ref = x.astype(np.float64) @ want[-2].astype(np.float64).T
        assert rel_err(g, ref) <= TOL
        if x.shape[0] > 16:  # the GEMM: W panels decoded from the layout give the same bits
            np.testing.assert_array_equal(g, plain.matmul(x))
    for x in (xs[0], xs[2]):  # rows the table kernel refuses: restored codes (1-3 rows), panels (4+)
        bad = x.copy()
        bad[0, 0] = np.inf
        got_bad, want_bad = t.matmul(bad), plain.matmul(bad)
        np.testing.assert_array_equal(np.isnan(got_bad), np.isnan(want_bad))
        np.testing.assert_array_equal(got_bad[0][~np.isnan(got_bad[0])], want_bad[0][~np.isnan(want_bad[0])])
        if x.shape[0] > 1:  # the other rows: panel GEMM here, the grouped GEMV row by row there
            assert rel_err(got_bad[1:], want_bad[1:]) <= TOL
    after = t.state_dict()
    assert after.keys() == state.keys()
    for key in state:
        np.testing.assert_array_equal(after[key], state[key])
    t.save_safetensors(tmp_path / "w.safetensors")
    np.testing.assert_array_equal(NF4Tensor.load_safetensors(tmp_path / "w.safetensors").dequantize(), want[-2])

    assert t.prepare_decoding(keep_codes=True) is True and t.holds_codes  # codes back, layout kept
    np.testing.assert_array_equal(t.state_dict()["weight"], state["weight"])
    t.prepare_decoding(keep_codes=False)
    assert t.prepare_decoding(False) is False and t.holds_codes and t.decoding_nbytes == 0
    np.testing.assert_array_equal(t.state_dict()["weight"], state["weight"])
    assert t.memory_nbytes == t.nbytes


@needs_kernel
def test_released_codes_survive_a_level_switch():
    """At the scalar level no decode kernel runs: products restore the codes, and asking for the
    layout again there brings the codes back before dropping it (nothing is lost)."""
    t = _weight(65, 256, seed=17)
    x = np.random.default_rng(9).standard_normal((1, 256)).astype(np.float32)
    plain = _weight(65, 256, seed=17)
    t.prepare_decoding(keep_codes=False)
    original = _core.simd_level()
    try:
        _core.set_simd_level("scalar")
        np.testing.assert_array_equal(t.matmul(x), plain.matmul(x))
        assert t.prepare_decoding(keep_codes=False) is False
        assert t.holds_codes and t.decoding_nbytes == 0
    finally:
        _core.set_simd_level(original)
    np.testing.assert_array_equal(t.state_dict()["weight"], plain.state_dict()["weight"])


@needs_both_kernels
@pytest.mark.parametrize("m,n,k,bs,dq", CASES)
def test_avx2_kernel_matches_the_reference_and_the_vbmi_kernel_bit_for_bit(m, n, k, bs, dq, level):
    # Same q integers, same digit sums, same float steps: the same bits, whatever the byte order.
    rng = np.random.default_rng(m * 11 + k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    out = {}
    for lvl in ("avx512", "avx2"):
        level(lvl)
        t = _weight(n, k, bs, dq, seed=n + k + 2)
        default = t.matmul(x, bias=bias)
        assert t.prepare_decoding(keep_codes=False) is True and not t.holds_codes
        assert t.decoding_nbytes == _expected_nbytes(n, k, bs, dq)
        out[lvl] = t.matmul(x, bias=bias)
        ref = x.astype(np.float64) @ t.dequantize().astype(np.float64).T + bias
        assert rel_err(out[lvl], ref) <= TOL
        # the codes come back byte for byte, and with them the default kernel's result
        assert t.prepare_decoding(False) is False and t.holds_codes
        np.testing.assert_array_equal(t.matmul(x, bias=bias), default)
    np.testing.assert_array_equal(out["avx2"], out["avx512"])


@pytest.mark.skipif(not AVX2_HERE, reason="this CPU lacks AVX2")
def test_avx2_kernel_takes_int16_activations_exactly_and_refuses_like_the_other(level):
    level("avx2")
    t = _weight(70, 256, seed=21)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    ref = x.astype(np.float64) @ t.dequantize().astype(np.float64).T
    exact = t.matmul(x)  # the default AVX2 kernel
    assert t.prepare_decoding(keep_codes=False) is True
    y = t.matmul(x)
    assert rel_err(y, ref) <= TOL and not np.array_equal(y, exact)  # the table kernel ran
    np.testing.assert_array_equal(t.matmul(x, activations="int16"), y)  # exact for int16 too
    x[1, 5] = np.inf  # refused rows: the whole call goes to the kernels over restored codes
    plain = _weight(70, 256, seed=21)
    np.testing.assert_array_equal(t.matmul(x), plain.matmul(x))


@needs_both_kernels
def test_a_layout_from_another_level_is_rebuilt_for_this_one(level):
    # Built for the VBMI kernel, then at avx2: products fall back to restored codes until
    # prepare_decoding rebuilds the layout in the AVX2 order, the codes still released.
    level("avx512")
    t = _weight(130, 512, seed=23)
    x = np.random.default_rng(10).standard_normal((1, 512)).astype(np.float32)
    plain = _weight(130, 512, seed=23)
    assert t.prepare_decoding(keep_codes=False) is True
    vbmi = t.matmul(x)
    level("avx2")
    np.testing.assert_array_equal(t.matmul(x), plain.matmul(x))  # no kernel for this order here
    assert t.prepare_decoding(keep_codes=False) is True
    assert not t.holds_codes and t.decoding_nbytes == _expected_nbytes(130, 512)
    np.testing.assert_array_equal(t.matmul(x), vbmi)  # the AVX2 kernel: the same bits
    level("avx512")
    assert t.prepare_decoding(keep_codes=True) is True and t.holds_codes  # rebuilt again, codes back
    np.testing.assert_array_equal(t.matmul(x), vbmi)
    np.testing.assert_array_equal(t.state_dict()["weight"], plain.state_dict()["weight"])


@needs_kernel
def test_concurrent_products_while_codes_are_released_and_restored():
    import threading

    t = _weight(128, 512, seed=19)
    rng = np.random.default_rng(21)
    x1, x6 = rng.standard_normal((1, 512)).astype(np.float32), rng.standard_normal((6, 512)).astype(np.float32)
    w = t.dequantize().astype(np.float64)
    refs = {1: x1 @ w.T, 6: x6 @ w.T}
    packed = t.state_dict()["weight"].copy()
    errors = []

    def worker():
        for i in range(60):
            x = x1 if i % 2 else x6
            if rel_err(t.matmul(x), refs[x.shape[0]]) > TOL:
                errors.append("wrong product")
            if not np.array_equal(t.state_dict()["weight"], packed):
                errors.append("wrong state")

    def toggler(shift):  # two of these race each other: building, releasing, restoring, dropping
        for i in range(60):
            t.prepare_decoding((i + shift) % 3 != 2, keep_codes=(i + shift) % 2 == 0)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    threads += [threading.Thread(target=toggler, args=(k,)) for k in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert t.holds_codes or t.decoding_nbytes > 0  # never both gone
    np.testing.assert_array_equal(t.state_dict()["weight"], packed)


@needs_kernel
def test_linear_with_released_codes_matches_and_holds_less():
    rng = np.random.default_rng(23)
    w = rng.standard_normal((96, 256)).astype(np.float32)
    lin = _core.Linear(w, "nf4", blocksize=64, double_quant=True)
    ref = _core.Linear(w, "nf4", blocksize=64, double_quant=True)
    state = lin.nf4_state()
    x1, x5 = rng.standard_normal((1, 256)).astype(np.float32), rng.standard_normal((5, 256)).astype(np.float32)
    x40 = rng.standard_normal((40, 256)).astype(np.float32)
    dy = rng.standard_normal((5, 96)).astype(np.float32)
    assert lin.prepare_decoding(True, False) is True
    assert lin.weight_nbytes == ref.weight_nbytes - 96 * 256 // 2 + lin.decoding_nbytes
    assert rel_err(lin.forward(x1), ref.forward(x1)) <= TOL
    assert rel_err(lin.forward(x5), ref.forward(x5)) <= TOL  # 5 rows: the table kernel, row by row
    np.testing.assert_array_equal(lin.forward(x40), ref.forward(x40))  # the GEMM, panels from the layout
    np.testing.assert_array_equal(lin.backward(x5, dy), ref.backward(x5, dy))
    np.testing.assert_array_equal(lin.dequantize_weight(), ref.dequantize_weight())
    for key, v in state.items():
        np.testing.assert_array_equal(lin.nf4_state()[key], v)
    for layer in (lin, ref):  # the LoRA term rides along in both paths: the row kernel and the GEMM
        layer.add_adapter("a", 4, 8.0, seed=1)
        layer.set_lora("a", np.full((4, 256), 0.01, np.float32), np.full((96, 4), 0.02, np.float32))
    assert rel_err(lin.forward(x5), ref.forward(x5)) <= TOL
    np.testing.assert_array_equal(lin.forward(x40), ref.forward(x40))
    assert lin.prepare_decoding(False) is False and lin.weight_nbytes == ref.weight_nbytes


@needs_kernel
def test_model_with_released_codes_decodes_prefills_trains_and_saves(tmp_path):
    """The serving configuration: decoding (the layout's kernel), prefill, a training step (codes
    restored per call) and saving all match the model as loaded."""
    from ecomllm import Model

    base = _tiny_llama_dir(tmp_path, seed=1)
    plain = Model.from_pretrained(base, quantize="nf4", blocksize=64)
    model = Model.from_pretrained(base, quantize="nf4", blocksize=64)
    assert model.prepare_decoding(keep_codes=False) >= 14
    rng = np.random.default_rng(2)
    def compare():
        for t in (1, 3, 6, 40):  # the row kernel up to 16 tokens, then the GEMM on panels from the layout
            ids = rng.integers(0, 61, size=(1, t))
            assert rel_err(model.forward(ids), plain.forward(ids)) <= TOL
        ids, labels = rng.integers(0, 61, size=(2, 20)), rng.integers(0, 61, size=(2, 20))
        assert model.forward_backward(ids, labels) == pytest.approx(plain.forward_backward(ids, labels), rel=1e-6)

    compare()
    from ecomllm import LoraConfig

    for m in (model, plain):
        m.add_lora(LoraConfig(r=4, alpha=8, seed=1))
        for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"):
            A, B = m.lora_weights(name)
            m.set_lora_weights(name, A, np.full(B.shape, 0.05, np.float32))
    compare()
    model.save_pretrained(tmp_path / "saved")
    plain.save_pretrained(tmp_path / "saved_plain")
    from safetensors.numpy import load_file

    got = load_file(tmp_path / "saved" / "model.safetensors")
    want = load_file(tmp_path / "saved_plain" / "model.safetensors")
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


# ---- the decoding policy: the layout at the first matmul of few rows -----------------------------

def test_auto_policy_lays_the_codes_out_at_the_first_decoding_matmul():
    from ecomllm.quant import decoding_policy, set_decoding_policy

    assert decoding_policy() == "auto"
    rng = np.random.default_rng(31)
    x1, x40 = rng.standard_normal((1, 256)).astype(np.float32), rng.standard_normal((40, 256)).astype(np.float32)
    t = _weight(64, 256, seed=29, auto=True)
    ref = _weight(64, 256, seed=29)
    t.matmul(x40)  # prefill-sized: nothing changes
    assert t.decoding_nbytes == 0 and t.holds_codes
    t.matmul(x1, activations="int16")  # the int16 kernel reads bitsandbytes' layout: nothing changes
    assert t.decoding_nbytes == 0
    y = t.matmul(x1)
    assert (t.decoding_nbytes > 0) is KERNEL_HERE and t.holds_codes is not KERNEL_HERE
    assert rel_err(y, x1.astype(np.float64) @ ref.dequantize().astype(np.float64).T) <= TOL
    np.testing.assert_array_equal(t.matmul(x40), ref.matmul(x40))  # same bits either way
    np.testing.assert_array_equal(t.state_dict()["weight"], ref.state_dict()["weight"])
    t.prepare_decoding(False)  # the caller's choice sticks
    t.matmul(x1)
    assert t.decoding_nbytes == 0 and t.holds_codes

    small = _weight(65, 256, seed=29, auto=True)  # 128 padded rows for 65: no layout by itself
    small.matmul(x1)
    assert small.decoding_nbytes == 0 and small.holds_codes

    try:
        set_decoding_policy("manual")
        m = _weight(64, 256, seed=29, auto=True)
        m.matmul(x1)
        assert m.decoding_nbytes == 0 and m.holds_codes
    finally:
        set_decoding_policy("auto")
    for bad in ("sometimes", None):
        with pytest.raises(ValueError, match="decoding policy"):
            set_decoding_policy(bad)
    assert decoding_policy() == "auto"

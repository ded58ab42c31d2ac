"""Bad input gives a clear Python exception (ValueError / TypeError, message naming the problem),
never a crash, a hang or silently wrong numbers.

Cases that could crash the interpreter run in a subprocess, so a crash fails one test instead of
killing the whole session.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest

from _nf4_ref import F32
from ecomllm import _core
from ecomllm.quant import NF4StateError, NF4Tensor
from ecomllm.safetensors import SafetensorsError, load_safetensors, read_metadata, save_safetensors

BF16 = ml_dtypes.bfloat16
CODE = _core.nf4_codebook()
CODE8 = _core.dynamic_map_8bit()


def _w(shape=(8, 64), seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(F32).astype(dtype)


# ---- non-finite weights -------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("where", [0, 63, 64, 100_000 - 1], ids=["first", "end_of_block", "next_block", "last"])
def test_non_finite_weights_rejected(bad, dtype, where):
    w = _w((100_000,), dtype=dtype)  # many blocks: the error comes from a worker thread
    w[where] = bad
    with pytest.raises(ValueError, match="non-finite"):
        NF4Tensor.quantize(w)
    with pytest.raises(ValueError, match="non-finite"):
        _core.nf4_quantize(w, 64)
    if dtype == BF16:
        with pytest.raises(ValueError, match="non-finite"):
            _core.nf4_quantize(w.view(np.uint16), 64, bf16_bits=True)


def test_non_finite_8bit_inputs_rejected():
    a = np.ones(300, F32)
    a[299] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        _core.quantize_blockwise_8bit(a, 256, CODE8)
    with pytest.raises(ValueError, match="non-finite"):
        _core.absmax_double_quantize(a, 1.0)
    with pytest.raises(ValueError, match="not finite"):
        _core.absmax_double_quantize(np.ones(4, F32), float("nan"))
    with pytest.raises(ValueError, match="not finite"):
        _core.absmax_double_quantize(np.ones(4, F32), float("inf"))


# ---- dtypes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int64, np.uint8, np.int8, np.bool_, np.complex64, np.uint16])
def test_quantize_wrong_dtype(dtype):
    w = np.ones((4, 64), dtype=dtype)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        NF4Tensor.quantize(w)
    with pytest.raises((ValueError, TypeError)):
        _core.nf4_quantize(w, 64)


def test_quantize_python_lists_and_objects():
    with pytest.raises(TypeError):
        NF4Tensor.quantize([[1.0, 2.0]])  # float64 after np.asarray
    with pytest.raises(TypeError):
        NF4Tensor.quantize(np.array(["a", "b"]))
    with pytest.raises((ValueError, TypeError)):
        _core.nf4_quantize("not an array", 64)


def test_bf16_bits_needs_uint16():
    with pytest.raises(ValueError, match="uint16"):
        _core.nf4_quantize(np.ones(64, F32), 64, bf16_bits=True)
    with pytest.raises(ValueError, match="uint16"):
        _core.nf4_quantize(np.ones(64, np.int16), 64, bf16_bits=True)
    t = NF4Tensor.quantize(_w())
    with pytest.raises(ValueError, match="uint16"):
        t._core.matmul(np.ones((1, 64), F32), None, bf16_bits=True)
    with pytest.raises(ValueError, match="uint16"):
        t._core.matmul_t(np.ones((1, 8), F32), bf16_bits=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.uint8])
def test_matmul_wrong_activation_dtype(dtype):
    t = NF4Tensor.quantize(_w())
    x = np.ones((2, 64), dtype=dtype)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        t.matmul(x)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        t.matmul_t(np.ones((2, 8), dtype=dtype))
    with pytest.raises(ValueError):
        t._core.matmul(x)
    with pytest.raises(ValueError):
        t._core.matmul_t(np.ones((2, 8), dtype=dtype))


def test_core_bias_dtype_and_shape():
    t = NF4Tensor.quantize(_w())
    x = np.ones((2, 64), F32)
    with pytest.raises(ValueError, match="dtype"):
        t._core.matmul(x, np.ones(8, np.float64))
    with pytest.raises(ValueError, match="bias"):
        t._core.matmul(x, np.ones((1, 8), F32))
    with pytest.raises(ValueError, match="bias"):
        t._core.matmul(x, np.ones(16, F32)[::2])  # non-contiguous
    # the facade converts a float64 bias
    np.testing.assert_allclose(t.matmul(x, bias=np.ones(8)), t.matmul(x) + 1, rtol=1e-6)


# ---- layout ------------------------------------------------------------------------------------

def test_non_contiguous_rejected_by_core_accepted_by_facade():
    w = _w((8, 128))
    view = w[:, ::2]
    fortran = np.asfortranarray(_w((8, 64)))
    for bad in (view, fortran, w.T):
        with pytest.raises(ValueError, match="contiguous"):
            _core.nf4_quantize(bad, 64)
    with pytest.raises(ValueError, match="contiguous"):
        _core.nf4_quantize(w.astype(BF16).view(np.uint16)[:, ::2], 64, bf16_bits=True)
    with pytest.raises(ValueError, match="contiguous"):
        _core.nf4_quantize(w.astype(np.float16)[:, ::2], 64)
    # the facade copies and gets the same result as the contiguous copy
    a = NF4Tensor.quantize(view).state_dict()
    b = NF4Tensor.quantize(np.ascontiguousarray(view)).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])

    t = NF4Tensor.quantize(_w())
    x = _w((4, 128), seed=2)
    with pytest.raises(ValueError, match="contiguous"):
        t._core.matmul(x[:, ::2])
    with pytest.raises(ValueError, match="contiguous"):
        t._core.matmul_t(_w((4, 16))[:, ::2])
    with pytest.raises(ValueError, match="contiguous"):
        t._core.matmul(x.astype(BF16).view(np.uint16)[:, ::2], None, bf16_bits=True)
    with pytest.raises(ValueError, match="contiguous"):
        t._core.matmul(x.astype(BF16)[:, ::2])
    for fn, arr in ((_core.absmax_mean, np.ones(8, F32)[::2]),
                    (lambda a: _core.absmax_double_quantize(a, 0.0), np.ones(8, F32)[::2]),
                    (lambda a: _core.quantize_blockwise_8bit(a, 64, CODE8), np.ones(8, F32)[::2]),
                    (lambda a: _core.f32_to_bf16(a), np.ones(8, F32)[::2]),
                    (lambda a: _core.bf16_to_f32(a), np.ones(8, np.uint16)[::2]),
                    (lambda a: _core.f16_to_f32(a), np.ones(8, np.float16)[::2])):
        with pytest.raises(ValueError, match="contiguous"):
            fn(arr)


def _matrix_kwargs(dq=False):
    w = _w((16, 1280))  # 320 blocks: two nested blocks
    packed, absmax = _core.nf4_quantize(w, 64)
    kw = dict(packed=packed, rows=16, cols=1280, blocksize=64, code=CODE)
    if dq:
        off = _core.absmax_mean(absmax)
        q, nested = _core.absmax_double_quantize(absmax, off)
        kw.update(qabsmax=q, nested_absmax=nested, nested_code=CODE8, offset=off)
    else:
        kw.update(absmax=absmax)
    return kw


@pytest.mark.parametrize("field", ["packed", "code", "absmax", "qabsmax", "nested_absmax", "nested_code"])
def test_nf4matrix_rejects_non_contiguous_parts(field):
    kw = _matrix_kwargs(dq=field in ("qabsmax", "nested_absmax", "nested_code"))
    arr = kw[field]
    doubled = np.repeat(arr, 2)  # same dtype, twice as long
    kw[field] = doubled[::2]
    assert not kw[field].flags.c_contiguous
    with pytest.raises(ValueError, match="contiguous"):
        _core.NF4Matrix(**kw)


def test_nf4matrix_argument_errors():
    kw = _matrix_kwargs()
    _core.NF4Matrix(**kw)  # valid
    cases = [
        (dict(rows=0), "positive"), (dict(cols=-1), "positive"), (dict(rows=17), "packed"),
        (dict(blocksize=48), "blocksize"), (dict(blocksize=16), "blocksize"), (dict(blocksize=8192), "blocksize"),
        (dict(packed=kw["packed"][:-1]), "packed"), (dict(packed=kw["packed"].astype(np.int32)), "packed"),
        (dict(code=CODE[:15]), "quant_map"), (dict(code=CODE.astype(np.float64)), "dtype"),
        (dict(absmax=kw["absmax"][:-1]), "absmax"), (dict(absmax=kw["absmax"].astype(np.float64)), "dtype"),
        (dict(absmax=kw["absmax"].reshape(1, -1)), "absmax"),
        (dict(absmax=None), "absmax or qabsmax"),
        (dict(qabsmax=np.zeros(320, np.uint8)), "absmax or qabsmax"),
    ]
    for change, msg in cases:
        bad = dict(kw)
        bad.update(change)
        with pytest.raises(ValueError, match=msg):
            _core.NF4Matrix(**bad)
    nan_code = CODE.copy()
    nan_code[3] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        _core.NF4Matrix(**{**kw, "code": nan_code})
    inf_absmax = kw["absmax"].copy()
    inf_absmax[-1] = np.inf
    with pytest.raises(ValueError, match="not finite"):
        _core.NF4Matrix(**{**kw, "absmax": inf_absmax})

    dq = _matrix_kwargs(dq=True)
    _core.NF4Matrix(**dq)
    for change, msg in [
        (dict(nested_absmax=None), "nested"), (dict(nested_code=None), "nested"),
        (dict(qabsmax=dq["qabsmax"][:-1]), "8-bit"), (dict(qabsmax=dq["qabsmax"].astype(F32)), "8-bit"),
        (dict(nested_absmax=np.ones(3, F32)), "nested_absmax"), (dict(nested_code=CODE8[:255]), "nested_quant_map"),
        (dict(nested_absmax=np.array([1.0, np.nan], F32)), "not finite"),
        (dict(offset=float("nan")), "not finite"), (dict(offset=float("inf")), "not finite"),
    ]:
        bad = dict(dq)
        bad.update(change)
        with pytest.raises(ValueError, match=msg):
            _core.NF4Matrix(**bad)


def test_nf4matrix_offset_must_be_finite_in_float32():
    """An offset that is finite as a double but overflows float32 (1e39) must be rejected, not turned
    into +inf block scales (the check runs on the double before the cast to float)."""
    dq = _matrix_kwargs(dq=True)
    try:
        m = _core.NF4Matrix(**{**dq, "offset": 1e39})
    except ValueError as e:
        assert "finite" in str(e) or "offset" in str(e)
        return
    scales = m.block_scales()
    assert np.all(np.isfinite(scales)), f"offset 1e39 accepted and produced block scales {scales[:3]}"


# ---- shapes ----------------------------------------------------------------------------------------

def test_matmul_shape_mismatches():
    t = NF4Tensor.quantize(_w((8, 64)))
    for x in (np.ones((2, 63), F32), np.ones((2, 65), F32), np.ones((64, 2), F32), np.ones((8,), F32)):
        with pytest.raises(ValueError, match=r"\(\.\.\., 64\)"):
            t.matmul(x)
    for dy in (np.ones((2, 64), F32), np.ones((2, 7), F32), np.ones((64,), F32)):
        with pytest.raises(ValueError, match=r"\(\.\.\., 8\)"):
            t.matmul_t(dy)
    with pytest.raises(ValueError, match="bias"):
        t.matmul(np.ones((2, 64), F32), bias=np.ones(7, F32))
    with pytest.raises(ValueError, match="bias"):
        t.matmul(np.ones((2, 64), F32), bias=np.ones(64, F32))
    with pytest.raises(ValueError, match="bias"):
        t.matmul(np.ones((2, 64), F32), bias=np.ones((2, 8), F32))
    with pytest.raises(ValueError):
        t.matmul(np.float32(1.0))  # 0-d
    with pytest.raises(ValueError, match="empty"):
        t.matmul(np.ones((0, 64), F32))
    with pytest.raises(ValueError, match="empty"):
        t.matmul_t(np.ones((3, 0, 8), F32))
    with pytest.raises(ValueError, match="empty"):
        t.matmul(np.ones((0, 64), BF16))


def test_empty_inputs():
    for shape in ((0,), (0, 64), (64, 0), (2, 0, 3)):
        with pytest.raises(ValueError, match="empty"):
            NF4Tensor.quantize(np.zeros(shape, F32))
        with pytest.raises(ValueError, match="empty"):
            _core.nf4_quantize(np.zeros(shape, F32), 64)
    with pytest.raises(ValueError, match="empty"):
        _core.nf4_quantize(np.zeros(0, np.uint16), 64, bf16_bits=True)
    with pytest.raises(ValueError, match="empty"):
        _core.absmax_mean(np.zeros(0, F32))
    with pytest.raises(ValueError, match="empty"):
        _core.absmax_double_quantize(np.zeros(0, F32), 0.0)
    q, a = _core.quantize_blockwise_8bit(np.zeros(0, F32), 64, CODE8)
    assert q.size == 0 and a.size == 0


@pytest.mark.parametrize("bs", [0, -64, 1, 16, 31, 33, 48, 96, 100, 8192, 2 ** 40])
def test_invalid_blocksize(bs):
    w = _w()
    with pytest.raises(ValueError, match="blocksize"):
        NF4Tensor.quantize(w, blocksize=bs)
    with pytest.raises(ValueError, match="blocksize"):
        _core.nf4_quantize(w, bs)
    if bs <= 0:
        with pytest.raises(ValueError, match="blocksize"):
            _core.quantize_blockwise_8bit(np.ones(4, F32), bs, CODE8)


def test_blocksize_wrong_type():
    with pytest.raises((TypeError, ValueError)):
        NF4Tensor.quantize(_w(), blocksize="64")
    with pytest.raises(TypeError):
        _core.nf4_quantize(_w(), 2 ** 70)
    with pytest.raises(TypeError):
        _core.nf4_quantize(_w(), 64.5)


def test_3d_weight_quantizes_and_dequantizes_but_refuses_matmul():
    w = _w((2, 8, 64))
    t = NF4Tensor.quantize(w)
    assert t.shape == (2, 8, 64)
    assert t.dequantize().shape == (2, 8, 64)
    for fn, arg in ((t.matmul, np.ones((1, 64), F32)), (t.matmul, np.ones((1, 512), F32)),
                    (t.matmul_t, np.ones((1, 2), F32)), (t.matmul_t, np.ones((1, 8), F32))):
        with pytest.raises(ValueError, match="2-D"):
            fn(arg)
    t1 = NF4Tensor.quantize(_w((64,)))
    with pytest.raises(ValueError, match="2-D"):
        t1.matmul(np.ones((1, 64), F32))


def test_zero_dim_weight():
    with pytest.raises(ValueError):
        NF4Tensor.quantize(np.float32(2.0))
    with pytest.raises(ValueError):
        NF4Tensor.quantize(np.array(2.0, F32))


def test_matmul_operator_is_not_defined():
    t = NF4Tensor.quantize(_w())
    with pytest.raises(TypeError):
        t @ np.ones((64, 1), F32)


# ---- more than 8 dimensions (subprocess: a failure here may be a memory corruption) ------------------

_MANY_DIMS_SCRIPT = textwrap.dedent("""
    import sys
    import ml_dtypes, numpy as np
    from ecomllm import _core
    from ecomllm.quant import NF4Tensor
    which = sys.argv[1]
    for nd in (9, 12, 20, 40, 60):
        shape = (1,) * (nd - 1) + (4,)
        bits = np.full(shape, 0x3F80, np.uint16)  # bf16 1.0
        try:
            if which == "nf4_quantize_bf16_bits":
                p, a = _core.nf4_quantize(bits, 64, bf16_bits=True)
                ok = p.tolist() == [0xFF, 0xFF] and a.tolist() == [1.0]
            elif which == "bf16_to_f32":
                r = _core.bf16_to_f32(bits)
                ok = r.shape == shape and np.all(r == 1.0)
            elif which == "f16_to_f32":
                r = _core.f16_to_f32(np.full(shape, 0x3C00, np.uint16))
                ok = r.shape == shape and np.all(r == 1.0)
            elif which == "quantize_facade_bf16":
                t = NF4Tensor.quantize(bits.view(ml_dtypes.bfloat16))
                ok = t.shape == shape and np.all(t.dequantize() == 1.0)
            elif which == "matmul_bf16":
                t = NF4Tensor.quantize(np.eye(4, dtype=np.float32))
                r = t.matmul(bits.view(ml_dtypes.bfloat16))
                ok = r.shape == shape and np.all(r == 1.0)
            elif which == "matmul_t_bf16":
                t = NF4Tensor.quantize(np.eye(4, dtype=np.float32))
                r = t.matmul_t(bits.view(ml_dtypes.bfloat16))
                ok = r.shape == shape and np.all(r == 1.0)
            else:
                raise SystemExit("unknown case")
            print(nd, "result", "correct" if ok else "WRONG", flush=True)
        except ValueError as e:
            print(nd, "ValueError", str(e).replace(chr(10), " "), flush=True)
        except Exception as e:
            print(nd, "OTHER", type(e).__name__, str(e).replace(chr(10), " "), flush=True)
    print("done", flush=True)
""")


@pytest.mark.parametrize("which", ["nf4_quantize_bf16_bits", "bf16_to_f32", "f16_to_f32", "quantize_facade_bf16",
                                   "matmul_bf16", "matmul_t_bf16"])
def test_more_than_8_dims_on_uint16_paths(which):
    """uint16 / bf16 arrays with more than 8 dimensions: either a correct result or a ValueError about
    dimensions (the float32 paths raise 'at most 8 dimensions'); never a crash or a wrong shape."""
    proc = subprocess.run([sys.executable, "-c", _MANY_DIMS_SCRIPT, which], capture_output=True, text=True,
                          timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines and lines[-1] == "done", (
        f"{which}: process ended with returncode {proc.returncode} (negative = killed by a signal) after:\n"
        f"{proc.stdout}\n{proc.stderr[-2000:]}")
    for line in lines[:-1]:
        nd, kind, *rest = line.split(" ", 2)
        msg = rest[0] if rest else ""
        assert kind == "result" and msg == "correct" or kind == "ValueError" and "dimension" in msg, \
            f"{which} with {nd} dims: {kind} {msg}"


def test_float32_paths_reject_more_than_8_dims():
    x = np.ones((1,) * 8 + (4,), F32)
    with pytest.raises(ValueError, match="dimensions"):
        _core.nf4_quantize(x, 64)
    with pytest.raises(ValueError, match="dimensions"):
        _core.f32_to_bf16(x)
    t = NF4Tensor.quantize(np.eye(4, dtype=F32))
    with pytest.raises(ValueError, match="dimensions"):
        t.matmul(x)


# ---- corrupted state dicts --------------------------------------------------------------------------

QS = "weight.quant_state.bitsandbytes__nf4"


def _sd(dq=True, shape=(8, 64), bs=64):
    return NF4Tensor.quantize(_w(shape), blocksize=bs, double_quant=dq).state_dict()


def _meta(sd):
    return json.loads(bytes(sd[QS]).decode())


def _with_meta(sd, **changes):
    meta = _meta(sd)
    for k, v in changes.items():
        if v is _DELETE:
            meta.pop(k, None)
        else:
            meta[k] = v
    out = dict(sd)
    out[QS] = np.frombuffer(json.dumps(meta).encode(), np.uint8).copy()
    return out


_DELETE = object()


def test_valid_state_dicts_load():
    for dq in (False, True):
        sd = _sd(dq)
        t = NF4Tensor.from_state_dict(sd)
        np.testing.assert_array_equal(t.dequantize(), NF4Tensor.quantize(_w(), double_quant=dq).dequantize())


_NESTED_KEYS = ("weight.nested_absmax", "weight.nested_quant_map")


def _key_cases(keys):
    """(key, dq) pairs: nested keys exist only in double-quantized state dicts."""
    return [pytest.param(k, dq, id=f"{k.split('.')[-1]}-{'dq' if dq else 'plain'}")
            for k in keys for dq in (False, True) if dq or k not in _NESTED_KEYS]


@pytest.mark.parametrize("key,dq", _key_cases(["weight", "weight.quant_map", "weight.absmax", QS,
                                               "weight.nested_quant_map", "weight.nested_absmax"]))
def test_missing_keys(key, dq):
    sd = _sd(dq)
    del sd[key]
    with pytest.raises(NF4StateError):
        NF4Tensor.from_state_dict(sd)


def test_prefix_mismatch_and_extra_quant_state():
    sd = _sd()
    with pytest.raises(NF4StateError, match="quant_state"):
        NF4Tensor.from_state_dict(sd, prefix="model.")
    sd2 = dict(sd)
    sd2["weight.quant_state.bitsandbytes__fp4"] = sd[QS]
    with pytest.raises(NF4StateError):
        NF4Tensor.from_state_dict(sd2)
    sd3 = dict(sd)
    sd3["weight.quant_state.bitsandbytes__fp4"] = sd3.pop(QS)
    with pytest.raises(NF4StateError, match="nf4"):
        NF4Tensor.from_state_dict(sd3)


_BAD_DTYPES = [
    ("weight", np.float32), ("weight", np.int8), ("weight.quant_map", np.float64), ("weight.quant_map", np.float16),
    ("weight.absmax", np.float64), ("weight.absmax", np.int32), ("weight.nested_absmax", np.float64),
    ("weight.nested_quant_map", np.float16),
]


@pytest.mark.parametrize("key,dtype,dq", [
    pytest.param(k, d, dq, id=f"{k.split('.')[-1]}-{np.dtype(d).name}-{'dq' if dq else 'plain'}")
    for k, d in _BAD_DTYPES for dq in (False, True) if dq or k not in _NESTED_KEYS])
def test_wrong_dtypes(key, dtype, dq):
    sd = _sd(dq)
    sd[key] = np.asarray(sd[key]).astype(dtype)
    with pytest.raises(NF4StateError):
        NF4Tensor.from_state_dict(sd)


_SIZE_CHANGES = [("weight", -1), ("weight", +1), ("weight", "half"), ("weight.quant_map", -1),
                 ("weight.quant_map", +1), ("weight.absmax", -1), ("weight.absmax", +1),
                 ("weight.nested_absmax", +1), ("weight.nested_quant_map", -1)]


@pytest.mark.parametrize("key,size_change,dq", [
    pytest.param(k, c, dq, id=f"{k.split('.')[-1]}{c:+}-{'dq' if dq else 'plain'}" if c != "half"
                 else f"{k.split('.')[-1]}-half-{'dq' if dq else 'plain'}")
    for k, c in _SIZE_CHANGES for dq in (False, True) if dq or k not in _NESTED_KEYS])
def test_wrong_sizes(key, size_change, dq):
    sd = _sd(dq)
    a = np.asarray(sd[key]).reshape(-1)
    if size_change == "half":
        a = a[: a.size // 2]
    elif size_change < 0:
        a = a[:size_change]
    else:
        a = np.concatenate([a, a[:size_change]])
    sd[key] = a.copy()
    with pytest.raises(NF4StateError):
        NF4Tensor.from_state_dict(sd)


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"\xff\xfe\x00", b"[1, 2]", b"42", b"null", b'"nf4"',
                                 b"[" * 100_000 + b"]" * 100_000, b"7" * 5000],
                         ids=["empty", "brace", "text", "not_utf8", "list", "int", "null", "str", "nested_100k",
                              "int_5000_digits"])
def test_garbage_quant_state(raw):
    sd = _sd()
    sd[QS] = np.frombuffer(raw, np.uint8).copy()
    with pytest.raises(NF4StateError):
        NF4Tensor.from_state_dict(sd)


def test_quant_state_must_be_uint8_bytes():
    sd = _sd()
    sd[QS] = np.asarray(sd[QS]).astype(np.float32) + 0.25  # was cast back to the same bytes silently
    with pytest.raises(NF4StateError, match="expected uint8 bytes"):
        NF4Tensor.from_state_dict(sd)


@pytest.mark.parametrize("changes", [
    dict(blocksize=48), dict(blocksize=0), dict(blocksize=-64), dict(blocksize=8192), dict(blocksize="abc"),
    dict(blocksize=None), dict(blocksize=_DELETE), dict(shape=_DELETE), dict(shape="8x64"), dict(shape=None),
    dict(shape=[8, 65]), dict(shape=[16, 64]), dict(shape=[4, 64]), dict(shape=[]), dict(shape=[0, 64]),
    dict(shape=[-8, -64]), dict(shape=[8, "x"]), dict(quant_type="fp4"), dict(dtype="float64"), dict(dtype="int8"),
    dict(nested_offset=_DELETE), dict(nested_offset="abc"), dict(nested_offset=None), dict(nested_blocksize=128),
    dict(nested_offset=10 ** 400), dict(nested_offset=True),
], ids=lambda c: ",".join(f"{k}={'DEL' if v is _DELETE else str(v)[:20]}" for k, v in c.items()))
def test_bad_quant_state_fields(changes):
    sd = _with_meta(_sd(), **changes)
    with pytest.raises(NF4StateError):
        NF4Tensor.from_state_dict(sd)


@pytest.mark.parametrize("changes", [dict(blocksize=64.5), dict(shape=[8.5, 64]), dict(shape=[8, 64.9])],
                         ids=["blocksize=64.5", "shape=8.5x64", "shape=8x64.9"])
def test_non_integral_numbers_in_quant_state(changes):
    """A fractional blocksize or dimension is corrupt, not something to truncate silently to an int."""
    sd = _with_meta(_sd(), **changes)
    with pytest.raises(NF4StateError):
        NF4Tensor.from_state_dict(sd)


@pytest.mark.parametrize("shape", [[2 ** 63], [8, 2 ** 64], [2 ** 62, 4], [2 ** 32, 2 ** 32], [3, 2 ** 62]],
                         ids=lambda s: "x".join(str(d) for d in s))
def test_absurd_shapes_in_quant_state(shape):
    """Shapes whose element count does not fit in int64 are corrupt files: NF4StateError, not an
    OverflowError or a wrapped-around element count."""
    sd = _with_meta(_sd(), shape=shape)
    with pytest.raises(NF4StateError):
        NF4Tensor.from_state_dict(sd)


@pytest.mark.parametrize("key", ["weight.absmax", "weight.nested_absmax", "weight.quant_map", "weight.nested_quant_map"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_state_values(key, bad):
    dq = key != "weight.absmax"
    sd = _sd(dq)
    a = np.array(sd[key], dtype=np.float32)
    a.reshape(-1)[-1] = bad
    sd[key] = a
    with pytest.raises(NF4StateError, match="finite"):
        NF4Tensor.from_state_dict(sd)


@pytest.mark.parametrize("offset", [float("nan"), float("inf"), 1e39, -1e300])
def test_non_finite_nested_offset(offset):
    """nested_offset must be a finite float32: 1e39 would make every block scale +inf."""
    sd = _with_meta(_sd(), nested_offset=offset)
    try:
        t = NF4Tensor.from_state_dict(sd)
    except NF4StateError:
        return
    pytest.fail(f"nested_offset={offset!r} accepted; block scales {t.block_scales()[:3]}")


def test_state_dict_arrays_may_be_any_layout():
    """from_state_dict takes 2-D packed (bnb's [(n+1)//2, 1]), flat packed, and read-only arrays."""
    sd = _sd()
    flat = {k: np.asarray(v).reshape(-1) for k, v in sd.items()}
    ro = {}
    for k, v in sd.items():
        a = np.array(v)
        a.setflags(write=False)
        ro[k] = a
    ref = NF4Tensor.from_state_dict(sd).dequantize()
    np.testing.assert_array_equal(NF4Tensor.from_state_dict(flat).dequantize(), ref)
    np.testing.assert_array_equal(NF4Tensor.from_state_dict(ro).dequantize(), ref)


def test_nf4_tensor_constructor_validation():
    with pytest.raises(NF4StateError, match="dtype"):
        NF4Tensor(np.zeros(256, np.uint8), np.ones(8, F32), (8, 64), 64, dtype="float64")
    with pytest.raises(NF4StateError, match="positive"):
        NF4Tensor(np.zeros(256, np.uint8), np.ones(8, F32), (8, 0), 64)
    with pytest.raises(ValueError):
        NF4Tensor(np.zeros(255, np.uint8), np.ones(8, F32), (8, 64), 64)


# ---- truncated / garbage safetensors files ----------------------------------------------------------

def _write_raw(path, header, data=b"", header_len=None, raw_header=None):
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    n = len(h) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + h + data)
    return path


def _t(dtype="F32", shape=(1,), offsets=(0, 4)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


BAD_FILES = {
    "empty_file": lambda p: (p.write_bytes(b""), p)[1],
    "seven_bytes": lambda p: (p.write_bytes(b"\x01" * 7), p)[1],
    "header_len_past_eof": lambda p: _write_raw(p, {"a": _t()}, b"\0" * 4, header_len=10_000),
    "header_len_huge": lambda p: _write_raw(p, {}, b"", header_len=2 ** 63),
    "invalid_json": lambda p: _write_raw(p, None, raw_header=b"{not json"),
    "invalid_utf8": lambda p: _write_raw(p, None, raw_header=b'{"\xff": 1}'),
    "header_is_list": lambda p: _write_raw(p, [1, 2]),
    "header_is_string": lambda p: _write_raw(p, "abc"),
    "entry_not_object": lambda p: _write_raw(p, {"a": [1, 2, 3]}),
    "entry_missing_offsets": lambda p: _write_raw(p, {"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4),
    "unknown_dtype": lambda p: _write_raw(p, {"a": _t(dtype="F8_E9M9")}, b"\0" * 4),
    "dtype_not_string": lambda p: _write_raw(p, {"a": _t(dtype=4)}, b"\0" * 4),
    "offsets_past_end": lambda p: _write_raw(p, {"a": _t(offsets=(0, 8), shape=(2,))}, b"\0" * 4),
    "offsets_reversed": lambda p: _write_raw(p, {"a": _t(offsets=(4, 0))}, b"\0" * 8),
    "offsets_negative": lambda p: _write_raw(p, {"a": _t(offsets=(-4, 0))}, b"\0" * 4),
    "offsets_three": lambda p: _write_raw(p, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, b"\0" * 8),
    "offsets_float": lambda p: _write_raw(p, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4.0]}}, b"\0" * 4),
    "offsets_huge": lambda p: _write_raw(p, {"a": _t(offsets=(2 ** 70, 2 ** 70 + 4))}, b"\0" * 4),
    "overlapping": lambda p: _write_raw(p, {"a": _t(shape=(2,), offsets=(0, 8)), "b": _t(shape=(2,), offsets=(4, 12))},
                                        b"\0" * 12),
    "shape_bytes_mismatch": lambda p: _write_raw(p, {"a": _t(shape=(3,), offsets=(0, 8))}, b"\0" * 8),
    "shape_negative": lambda p: _write_raw(p, {"a": _t(shape=(-1,), offsets=(0, 4))}, b"\0" * 4),
    "shape_float": lambda p: _write_raw(p, {"a": _t(shape=(1.0,), offsets=(0, 4))}, b"\0" * 4),
    "shape_not_list": lambda p: _write_raw(p, {"a": {"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}}, b"\0" * 4),
    "shape_bool": lambda p: _write_raw(p, {"a": {"dtype": "F32", "shape": [True, 1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "shape_product_overflows_int64": lambda p: _write_raw(p, {"a": _t(shape=(2 ** 62, 4), offsets=(0, 0))}),
    "shape_dim_exceeds_int64": lambda p: _write_raw(p, {"a": _t(shape=(2 ** 64,), offsets=(0, 0))}),
    "shape_zero_times_huge": lambda p: _write_raw(p, {"a": _t(shape=(0, 2 ** 63), offsets=(0, 0))}),
    # found by fuzzing: these raised RecursionError / numpy's ValueError without the file's name
    "json_nested_100k_deep": lambda p: _write_raw(p, None, raw_header=b'{"__metadata__":' + b"[" * 100_000
                                                  + b"]" * 100_000 + b"}"),
    "json_int_of_5000_digits": lambda p: _write_raw(p, None, raw_header=b'{"a": ' + b"7" * 5000 + b"}"),
    "shape_of_65_dims": lambda p: _write_raw(p, {"a": _t(shape=(1,) * 65, offsets=(0, 4))}, b"\0" * 4),
    "shape_too_big_for_numpy": lambda p: _write_raw(p, {"a": _t(shape=(2 ** 32, 2 ** 32, 0), offsets=(0, 0))}),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_safetensors_files(tmp_path, name):
    path = BAD_FILES[name](tmp_path / f"{name}.safetensors")
    with pytest.raises(SafetensorsError):
        load_safetensors(path)
    with pytest.raises(SafetensorsError):
        load_safetensors(path, mmap=False)


def test_bad_metadata(tmp_path):
    p = _write_raw(tmp_path / "m.safetensors", {"__metadata__": ["x"]})
    with pytest.raises(SafetensorsError, match="__metadata__"):
        read_metadata(p)
    p = _write_raw(tmp_path / "t.safetensors", None, raw_header=b"{bad")
    with pytest.raises(SafetensorsError):
        read_metadata(p)


def test_truncated_real_file(tmp_path):
    """A valid NF4 file cut at every interesting length: always SafetensorsError (a ValueError)."""
    path = tmp_path / "w.safetensors"
    NF4Tensor.quantize(_w((16, 64))).save_safetensors(path)
    blob = path.read_bytes()
    (header_len,) = struct.unpack("<Q", blob[:8])
    cut_points = sorted({0, 1, 7, 8, 9, 8 + header_len // 2, 8 + header_len - 1, 8 + header_len,
                         8 + header_len + 1, len(blob) - 1})
    for cut in cut_points:
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(blob[:cut])
        with pytest.raises(ValueError):
            NF4Tensor.load_safetensors(bad)
        with pytest.raises(SafetensorsError):
            load_safetensors(bad)


def test_garbage_bytes_file(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(20):
        p = tmp_path / f"g{i}.safetensors"
        p.write_bytes(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes())
        with pytest.raises(SafetensorsError):
            load_safetensors(p)


def test_nf4_file_with_corrupted_payload(tmp_path):
    """Intact file structure, corrupt NF4 content (NaN absmax): NF4StateError from load_safetensors."""
    t = NF4Tensor.quantize(_w(), double_quant=False)
    sd = t.state_dict()
    sd["weight.absmax"] = sd["weight.absmax"].copy()
    sd["weight.absmax"][0] = np.nan
    path = tmp_path / "nan.safetensors"
    save_safetensors(path, sd)
    with pytest.raises(NF4StateError, match="finite") as info:
        NF4Tensor.load_safetensors(path)
    assert str(info.value).startswith(f"{path}: "), "the message names the file"
    save_safetensors(path, {"other": np.ones(3, F32)})
    with pytest.raises(NF4StateError):
        NF4Tensor.load_safetensors(path)
    assert not os.path.exists(str(path) + ".tmp")

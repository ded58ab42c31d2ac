"""Byte compatibility with bitsandbytes itself (its CPU path), in memory and through safetensors files.

Tolerances: none (bit-identical) for packed codes, absmax, 8-bit absmax codes, nested absmax and
dequantized weights; the double-quantization offset may differ from bitsandbytes' (torch's
float32 mean vs our exactly rounded mean) by at most 4 ulp.
"""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from _nf4_ref import F32, assert_bits_equal, rel_err
from ecomllm import _core
from ecomllm.quant import NF4Tensor
from ecomllm.safetensors import load_safetensors, save_safetensors

try:
    import torch
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbF
    from bitsandbytes.functional import QuantState
except Exception as e:  # pragma: no cover - depends on the environment
    reason = f"bitsandbytes is not importable here ({type(e).__name__}: {e}); bitsandbytes compatibility untested"
    print("SKIP test_nf4_bitsandbytes:", reason)
    pytest.skip(reason, allow_module_level=True)

try:
    _p, _s = bnbF.quantize_4bit(torch.ones(64), blocksize=64, quant_type="nf4", compress_statistics=True)
    bnbF.dequantize_4bit(_p, _s, quant_type="nf4")
except Exception as e:  # pragma: no cover - depends on the environment
    reason = f"bitsandbytes' CPU 4-bit ops fail here ({type(e).__name__}: {e}); bitsandbytes compatibility untested"
    print("SKIP test_nf4_bitsandbytes:", reason)
    pytest.skip(reason, allow_module_level=True)

try:
    import safetensors.torch as st_torch
except Exception:  # pragma: no cover
    st_torch = None

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"f32": np.dtype(np.float32), "f16": np.dtype(np.float16), "bf16": BF16}
TORCH_NAME = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
SHAPES = [(1,), (2,), (17,), (3, 5), (64,), (65,), (4097,), (33, 63), (128, 256), (7, 4097), (2, 3, 65), (64 * 256 + 5,)]
BLOCKSIZES = [32, 64, 128, 2048, 4096]


def _to_torch(x: np.ndarray) -> "torch.Tensor":
    if x.dtype == BF16:
        return torch.from_numpy(np.ascontiguousarray(x).view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(x).copy())


def _from_torch(t: "torch.Tensor") -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _input(shape, dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(F32) * np.float32(rng.uniform(0.01, 10.0))
    if x.size > 10:
        x.reshape(-1)[:: 11] *= 7  # some outliers so block maxima vary
    return x.astype(DTYPES[dtype])


def _bnb_quantize(x: np.ndarray, bs: int, dq: bool):
    packed, state = bnbF.quantize_4bit(_to_torch(x), blocksize=bs, quant_type="nf4", compress_statistics=dq)
    return packed, state


@pytest.fixture(autouse=True, scope="module")
def _eager_torch():
    """bnb wraps its generic (de)quantizers in torch.compile: run them eagerly (faster for many
    small shapes, and eager is the reference semantics)."""
    old = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    yield
    torch._dynamo.config.disable = old


def bnb_dequantize(packed: "torch.Tensor", state: "QuantState") -> np.ndarray:
    """bitsandbytes' fp32 dequantization of (packed, state).

    bitsandbytes 0.50.2's native CPU kernel (cdequantize_blockwise_cpu_nf4_fp32) gets weights wrong
    whose blocks straddle rows on its vectorised path (e.g. shape (48, 96) with blocksize 64, or
    (6, 64) with blocksize 128): it disagrees with bitsandbytes' own generic implementation and with
    bitsandbytes' quantizer. Where the two bnb paths disagree, the generic one (the definition
    bnb's quantizer round-trips with) is the reference."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    out = _from_torch(bnbF.dequantize_4bit(packed, state, quant_type="nf4"))
    absmax = state.absmax
    if state.nested:
        absmax = bnbF.dequantize_blockwise(state.absmax, state.state2) + state.offset
    generic = _from_torch(_dequantize_4bit_compute(packed.reshape(-1).view(torch.uint8), absmax.float(),
                                                   _get_4bit_code("nf4", torch.device("cpu")), state.blocksize,
                                                   tuple(state.shape), torch.float32))
    if out.size == generic.size and np.array_equal(out.reshape(-1).view(np.uint32),
                                                   generic.reshape(-1).view(np.uint32)):
        return out.reshape(generic.shape)
    return generic


def _ulp(v: float) -> float:
    return float(np.spacing(np.float32(abs(v))))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_quantize_matches_bnb(shape, dtype):
    for bs in BLOCKSIZES:
        x = _input(shape, dtype, seed=hash((shape, bs)) % 1000)
        packed, state = _bnb_quantize(x, bs, dq=False)
        ours_packed, ours_absmax = (
            _core.nf4_quantize(x.view(np.uint16), bs, bf16_bits=True) if x.dtype == BF16 else _core.nf4_quantize(x, bs)
        )
        assert_bits_equal(ours_packed, packed.numpy().reshape(-1), f"packed {shape} bs={bs}")
        assert_bits_equal(ours_absmax, state.absmax.numpy(), f"absmax {shape} bs={bs}")
        t = NF4Tensor.quantize(x, blocksize=bs, double_quant=False)
        sd = t.state_dict()
        assert sd["weight"].shape == tuple(packed.shape)
        assert_bits_equal(sd["weight"], packed.numpy(), "state_dict weight")
        assert_bits_equal(sd["weight.quant_map"], state.code.numpy(), "quant_map")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", [(17,), (33, 63), (128, 256), (7, 4097), (64 * 256 + 5,), (300, 300)],
                         ids=lambda s: "x".join(map(str, s)))
def test_double_quant_matches_bnb(shape, dtype):
    for bs in (32, 64, 256):
        x = _input(shape, dtype, seed=7 + bs)
        _, plain = _bnb_quantize(x, bs, dq=False)
        _, state = _bnb_quantize(x, bs, dq=True)
        bnb_absmax = plain.absmax.numpy()
        bnb_offset = float(state.offset.item())

        t = NF4Tensor.quantize(x, blocksize=bs, double_quant=True)
        sd = t.state_dict()
        meta = json.loads(sd["weight.quant_state.bitsandbytes__nf4"].tobytes().decode())
        ours_offset = meta["nested_offset"]
        assert abs(ours_offset - bnb_offset) <= 4 * _ulp(bnb_offset), (ours_offset, bnb_offset)
        assert meta["nested_blocksize"] == state.state2.blocksize == 256

        # Given bnb's own absmax and offset, our 8-bit double quantization is bnb's, bit for bit.
        q, nested = _core.absmax_double_quantize(bnb_absmax, bnb_offset)
        assert_bits_equal(q, state.absmax.numpy(), "qabsmax")
        assert_bits_equal(nested, state.state2.absmax.numpy(), "nested_absmax")
        assert_bits_equal(sd["weight.nested_quant_map"], state.state2.code.numpy(), "nested_quant_map")
        if np.float32(ours_offset) == np.float32(bnb_offset):
            assert_bits_equal(sd["weight.absmax"], state.absmax.numpy(), "state_dict qabsmax")
            assert_bits_equal(sd["weight.nested_absmax"], state.state2.absmax.numpy(), "state_dict nested")


def _bnb_state_from_ours(sd: dict, force_fp32: bool = True) -> "QuantState":
    qs = {k[len("weight."):]: torch.from_numpy(np.array(v)) for k, v in sd.items() if k != "weight"}
    state = QuantState.from_dict(qs, device=torch.device("cpu"))
    if force_fp32:
        state.dtype = torch.float32
    return state


@pytest.mark.parametrize("dq", [False, True], ids=["plain", "double_quant"])
@pytest.mark.parametrize("shape", [(3,), (17,), (3, 5), (33, 63), (64, 128), (7, 4097), (2, 3, 64), (300, 300)],
                         ids=lambda s: "x".join(map(str, s)))
def test_bnb_dequantizes_our_state_exactly(shape, dq):
    for bs in (32, 64, 128, 2048, 4096):
        x = _input(shape, "f32", seed=bs)
        t = NF4Tensor.quantize(x, blocksize=bs, double_quant=dq)
        sd = t.state_dict()
        state = _bnb_state_from_ours(sd)
        assert state.nested == dq and state.blocksize == bs and tuple(state.shape) == shape
        got = bnb_dequantize(torch.from_numpy(sd["weight"].copy()), state)
        ours = t.dequantize()
        assert got.dtype == np.float32
        assert_bits_equal(got.reshape(-1), ours.reshape(-1), f"bnb dequantize_4bit of our state {shape} bs={bs}")
        assert got.size == ours.size


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_bnb_reads_our_original_dtype(dtype):
    x = _input((16, 64), dtype, seed=3)
    t = NF4Tensor.quantize(x, blocksize=64)
    assert t.dtype == TORCH_NAME[dtype]
    state = _bnb_state_from_ours(t.state_dict(), force_fp32=False)
    assert state.dtype == getattr(torch, TORCH_NAME[dtype])
    out = bnbF.dequantize_4bit(torch.from_numpy(t.state_dict()["weight"].copy()), state, quant_type="nf4")
    assert out.dtype == state.dtype
    # bnb computes in fp32 and rounds once to the original dtype
    assert_bits_equal(_from_torch(out), t.dequantize().astype(DTYPES[dtype]), "dequantize in original dtype")


@pytest.mark.skipif(st_torch is None, reason="safetensors.torch is not importable")
@pytest.mark.parametrize("dq", [False, True], ids=["plain", "double_quant"])
def test_our_file_loads_into_bnb_linear4bit(tmp_path, dq):
    N, K = 64, 128
    rng = np.random.default_rng(11)
    w = rng.standard_normal((N, K)).astype(F32)
    bias = rng.standard_normal(N).astype(F32)
    t = NF4Tensor.quantize(w, blocksize=64, double_quant=dq)
    path = tmp_path / "ours.safetensors"
    t.save_safetensors(path)

    loaded = st_torch.load_file(str(path))
    data = loaded.pop("weight")
    param = bnb.nn.Params4bit.from_prequantized(data=data, quantized_stats=loaded, device="cpu")
    assert param.quant_state.nested == dq
    deq = bnb_dequantize(param.data, param.quant_state)
    assert_bits_equal(deq, t.dequantize(), "bnb dequantize of our file")

    # And as a layer: bnb's forward (bf16 compute on some CPUs) agrees with ours to bf16 accuracy.
    layer = bnb.nn.Linear4bit(K, N, bias=True, quant_type="nf4", compress_statistics=dq)
    layer.weight = bnb.nn.Params4bit.from_prequantized(data=data.clone(), quantized_stats=dict(loaded), device="cpu",
                                                       module=layer)
    layer.bias = torch.nn.Parameter(torch.from_numpy(bias.copy()), requires_grad=False)
    layer.eval()
    x = rng.standard_normal((3, K)).astype(F32)
    with torch.no_grad():
        y_bnb = layer(torch.from_numpy(x)).float().numpy()
    y_ours = t.matmul(x, bias=bias)
    assert rel_err(y_ours, y_bnb) < 3e-2  # bnb's CPU GEMV rounds x and absmax to bf16


def _bnb_params4bit(w: np.ndarray, bs: int, dq: bool):
    p = bnb.nn.Params4bit(_to_torch(w), requires_grad=False, quant_type="nf4", blocksize=bs, compress_statistics=dq)
    return p.to("cpu")  # quantizes


@pytest.mark.skipif(st_torch is None, reason="safetensors.torch is not importable")
@pytest.mark.parametrize("dq", [False, True], ids=["plain", "double_quant"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_bnb_linear4bit_file_loads_here(tmp_path, dtype, dq):
    N, K = 48, 96
    for bs in (64, 128):
        w = _input((N, K), dtype, seed=bs)
        param = _bnb_params4bit(w, bs, dq)
        assert param.bnb_quantized and param.quant_state.nested == dq
        layer = bnb.nn.Linear4bit(K, N, bias=False, quant_type="nf4", compress_statistics=dq)
        layer.weight = param
        param.module = layer
        layer.quant_state = param.quant_state
        sd = {k: v.contiguous() for k, v in layer.state_dict().items()}
        path = tmp_path / f"bnb_{bs}.safetensors"
        st_torch.save_file(sd, str(path))

        t = NF4Tensor.load_safetensors(path)
        assert t.shape == (N, K) and t.blocksize == bs and t.double_quant == dq
        assert t.dtype == TORCH_NAME[dtype]
        state = param.quant_state
        if state.dtype != torch.float32:  # compare the fp32 values bnb computes before the final cast
            state = QuantState.from_dict({k[len("weight."):]: v for k, v in sd.items() if k != "weight"},
                                         device=torch.device("cpu"))
            state.dtype = torch.float32
        ref = bnb_dequantize(param.data, state)
        assert_bits_equal(t.dequantize(), ref, f"our dequantize of a bnb file ({dtype}, bs={bs}, dq={dq})")
        x = np.random.default_rng(1).standard_normal((5, K)).astype(F32)
        assert rel_err(t.matmul(x), x.astype(np.float64) @ ref.astype(np.float64).T) < 1e-5
        # Round trip: our state dict of the loaded tensor equals bnb's entries.
        ours = t.state_dict()
        for key in sd:
            if "quant_state" in key:
                continue
            assert_bits_equal(np.asarray(ours[key]).reshape(-1), _from_torch(sd[key]).reshape(-1), key)


@pytest.mark.skipif(st_torch is None, reason="safetensors.torch is not importable")
def test_bnb_linear4bit_module_quantizes_on_cpu_and_loads_here(tmp_path):
    """The documented flow: load fp32 weights into Linear4bit, move it (quantization happens in .to)."""
    N, K = 32, 64
    w = np.random.default_rng(2).standard_normal((N, K)).astype(F32)
    layer = bnb.nn.Linear4bit(K, N, bias=False, quant_type="nf4", compress_statistics=True)
    layer.load_state_dict({"weight": torch.from_numpy(w.copy())})
    layer = layer.to("cpu")
    assert getattr(layer.weight, "bnb_quantized", False), "Linear4bit.to('cpu') should quantize"
    sd = {k: v.contiguous() for k, v in layer.state_dict().items()}
    path = tmp_path / "layer.safetensors"
    st_torch.save_file(sd, str(path))
    t = NF4Tensor.load_safetensors(path)
    ref = bnb_dequantize(layer.weight.data, layer.weight.quant_state)
    assert_bits_equal(t.dequantize(), ref, "Linear4bit file")
    # the torch state dict itself (np.asarray of CPU tensors) loads too
    direct = NF4Tensor.from_state_dict(layer.state_dict())
    assert_bits_equal(direct.dequantize(), ref, "Linear4bit state_dict() without a file")
    # our own quantization of the same weight gives the same codes and (up to the offset ulp) scales
    ours = NF4Tensor.quantize(w, blocksize=64, double_quant=True)
    assert_bits_equal(ours.state_dict()["weight"], load_safetensors(path)["weight"], "packed codes")


def test_our_safetensors_writer_output_is_read_by_bnb_via_numpy_state(tmp_path):
    """Our writer + our reader round trip keeps bnb's view of the state intact."""
    x = _input((40, 72), "f32", seed=9)
    t = NF4Tensor.quantize(x, blocksize=32, double_quant=True)
    path = tmp_path / "w.safetensors"
    save_safetensors(path, t.state_dict(prefix="model.layer."))
    tensors = {k[len("model.layer."):]: np.array(v) for k, v in load_safetensors(path).items()}
    state = _bnb_state_from_ours(tensors)
    assert_bits_equal(bnb_dequantize(torch.from_numpy(tensors["weight"]), state), t.dequantize(), "prefixed file")

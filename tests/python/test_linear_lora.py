"""_core.Linear (f32 / bf16 / NF4 base + LoRA adapters) against torch autograd and PEFT.

Reference: torch float32 autograd of y = x W^T + scale * ((drop(x) A^T) B^T) with W = the layer's own
dequantize_weight() (itself checked against ecomllm.quant's NF4Tensor). Tolerances (fp32 both sides):
forward max |ours - ref| <= 1e-4; every gradient relative error max|ours - ref| / max|ref| <= 1e-4.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from ecomllm import _core
from ecomllm.quant import NF4Tensor

FWD_TOL = 1e-4
GRAD_TOL = 1e-4
SHAPES = [(1, 17), (17, 1), (65, 130), (130, 65), (17, 65)]  # (in, out)
BASES = ["f32", "f32_trainable", "bf16", "nf4"]
LORAS = [None, dict(r=1, alpha=3.0), dict(r=8, alpha=16.0), dict(r=8, alpha=16.0, rslora=True)]


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def make_layer(base: str, in_f: int, out_f: int, seed: int = 0) -> _core.Linear:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((out_f, in_f)) / math.sqrt(in_f)).astype(np.float32)
    if base == "f32_trainable":
        return _core.Linear(w, "f32", trainable=True)
    return _core.Linear(w, base)


def torch_reference(lin, x, dy, adapter=None, mask=None, p=0.0):
    """y and the grads of x, W, A, B from torch autograd of the same math (float32)."""
    W = torch.tensor(lin.dequantize_weight(), requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    y = xt @ W.T
    A = B = None
    if adapter is not None:
        A = torch.tensor(lin.lora_A(adapter), requires_grad=True)
        B = torch.tensor(lin.lora_B(adapter), requires_grad=True)
        xd = xt if mask is None else xt * torch.tensor(mask, dtype=torch.float32) * (1.0 / (1.0 - p))
        y = y + ((xd @ A.T) @ B.T) * lin.scaling(adapter)
    y.backward(torch.tensor(dy))
    grads = {"x": xt.grad.numpy(), "W": W.grad.numpy()}
    if A is not None:
        grads["A"], grads["B"] = A.grad.numpy(), B.grad.numpy()
    return y.detach().numpy(), grads


def check_against_torch(lin, x, dy, adapter, training=False, key=0, mask=None, p=0.0):
    y = lin.forward(x, training=training, dropout_key=key)
    dx = lin.backward(x, dy, training=training, dropout_key=key)
    y_ref, g = torch_reference(lin, x, dy, adapter, mask, p)
    assert np.abs(y - y_ref).max() <= FWD_TOL
    assert rel_err(dx, g["x"]) <= GRAD_TOL
    if lin.weight_trainable:
        assert rel_err(lin.weight_grad(), g["W"]) <= GRAD_TOL
    else:
        assert lin.weight_grad() is None
    if adapter is not None:
        assert rel_err(lin.lora_A_grad(adapter), g["A"]) <= GRAD_TOL
        assert rel_err(lin.lora_B_grad(adapter), g["B"]) <= GRAD_TOL


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("in_f,out_f", SHAPES)
@pytest.mark.parametrize("lora", LORAS, ids=["base", "r1", "r8", "r8-rslora"])
@pytest.mark.parametrize("N", [3, 300])
def test_forward_backward_match_torch(base, in_f, out_f, lora, N):
    lin = make_layer(base, in_f, out_f)
    rng = np.random.default_rng(1)
    adapter = None
    if lora is not None:
        adapter = "default"
        lin.add_adapter(adapter, lora["r"], lora["alpha"], rslora=lora.get("rslora", False), seed=5)
        expected = lora["alpha"] / (math.sqrt(lora["r"]) if lora.get("rslora") else lora["r"])
        assert lin.scaling(adapter) == pytest.approx(expected, rel=1e-7)
        lin.lora_B(adapter)[:] = rng.standard_normal((out_f, lora["r"])).astype(np.float32)  # B = 0 is a no-op
    x = rng.standard_normal((N, in_f)).astype(np.float32)
    dy = rng.standard_normal((N, out_f)).astype(np.float32)
    check_against_torch(lin, x, dy, adapter)
    # Gradients accumulate: a second backward doubles them.
    if adapter is not None:
        da = lin.lora_A_grad(adapter).copy()
        lin.backward(x, dy)
        np.testing.assert_allclose(lin.lora_A_grad(adapter), 2 * da, rtol=1e-5, atol=1e-6)
        lin.zero_grad()
        assert not lin.lora_A_grad(adapter).any() and not lin.lora_B_grad(adapter).any()


def test_batched_shapes_and_inactive_adapter():
    lin = make_layer("nf4", 65, 17)
    lin.add_adapter("a", 4, 8.0, seed=1)
    lin.lora_B("a")[:] = 0.5
    x = np.random.default_rng(2).standard_normal((2, 3, 65)).astype(np.float32)
    y = lin.forward(x)
    assert y.shape == (2, 3, 17)
    np.testing.assert_allclose(y.reshape(6, 17), lin.forward(x.reshape(6, 65)), rtol=0, atol=0)
    lin.set_active_adapter("")
    y0 = lin.forward(x)
    np.testing.assert_allclose(y0, x @ lin.dequantize_weight().T, atol=1e-5)
    dx = lin.backward(x, np.ones((2, 3, 17), np.float32))
    assert not lin.lora_A_grad("a").any()  # only the active adapter gets gradients
    assert dx.shape == x.shape


def test_several_adapters_only_active_one_used():
    lin = make_layer("f32", 17, 13)
    lin.add_adapter("one", 2, 4.0, seed=1)
    lin.add_adapter("two", 3, 3.0, seed=2)
    assert lin.active_adapter == "one" and lin.adapter_names() == ["one", "two"]
    for name in ("one", "two"):
        lin.lora_B(name)[:] = np.random.default_rng(3).standard_normal(lin.lora_B(name).shape)
    x = np.random.default_rng(4).standard_normal((5, 17)).astype(np.float32)
    dy = np.ones((5, 13), np.float32)
    lin.set_active_adapter("two")
    check_against_torch(lin, x, dy, "two")
    assert not lin.lora_A_grad("one").any()
    assert lin.trainable_parameters("p").names() == ["p.lora_A.weight", "p.lora_B.weight"]
    lin.remove_adapter("two")
    assert lin.active_adapter == "" and lin.adapter_names() == ["one"]


# ---- dropout -------------------------------------------------------------------------------------

def test_dropout_mask_rate_and_determinism():
    lin = make_layer("f32", 130, 7)
    lin.add_adapter("d", 4, 4.0, dropout=0.3, seed=11)
    m1 = lin.dropout_mask(400, 1)
    assert m1.shape == (400, 130)
    assert abs(1 - m1.mean() - 0.3) < 0.01  # 52000 draws: std of the rate ~0.002
    np.testing.assert_array_equal(m1, lin.dropout_mask(400, 1))
    m2 = lin.dropout_mask(400, 2)
    assert (m1 != m2).mean() > 0.3  # independent masks differ in ~2 p (1 - p) = 42% of places
    # Rows do not repeat each other's pattern.
    assert (m1[0] != m1[1]).any()


def test_dropout_forward_backward_match_torch_with_the_same_mask():
    p = 0.25
    for base in ("f32_trainable", "nf4", "bf16"):
        lin = make_layer(base, 65, 33)
        lin.add_adapter("d", 8, 16.0, dropout=p, seed=3)
        rng = np.random.default_rng(5)
        lin.lora_B("d")[:] = rng.standard_normal((33, 8)).astype(np.float32)
        x = rng.standard_normal((37, 65)).astype(np.float32)
        dy = rng.standard_normal((37, 33)).astype(np.float32)
        mask = lin.dropout_mask(37, 99)
        assert 0 < mask.mean() < 1
        check_against_torch(lin, x, dy, "d", training=True, key=99, mask=mask, p=p)
        # Not training: no dropout at all.
        lin.zero_grad()
        check_against_torch(lin, x, dy, "d", training=False, key=99)
        # A different key gives a different forward.
        assert not np.array_equal(lin.forward(x, True, 99), lin.forward(x, True, 100))


def test_dropout_mask_recovered_from_forward_outputs():
    """The mask that forward applies, recovered from its outputs, equals dropout_mask()."""
    in_f, N, p = 17, 9, 0.5
    lin = make_layer("f32", in_f, in_f)
    lin.weight()[:] = 0.0
    lin.add_adapter("d", in_f, float(in_f), dropout=p, seed=8)  # scale 1
    lin.set_lora("d", np.eye(in_f, dtype=np.float32), np.eye(in_f, dtype=np.float32))
    x = np.ones((N, in_f), np.float32)
    y = lin.forward(x, training=True, dropout_key=7)  # y = dropout(x) = mask / (1 - p)
    np.testing.assert_array_equal(y, lin.dropout_mask(N, 7) * np.float32(1 / (1 - p)))


# ---- PEFT ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("r,alpha,rslora", [(1, 1, False), (8, 16, False), (16, 8, True)])
def test_matches_peft_lora_linear(r, alpha, rslora):
    peft = pytest.importorskip("peft")
    in_f, out_f, N = 65, 130, 11

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(in_f, out_f, bias=False)

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    model = peft.get_peft_model(Tiny(), peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                                       target_modules=["proj"], use_rslora=rslora))
    layer = model.base_model.model.proj
    with torch.no_grad():
        torch.nn.init.normal_(layer.lora_B["default"].weight)  # PEFT starts B at zero
    W = layer.base_layer.weight.detach().numpy().copy()
    ours = _core.Linear(W, "f32")
    ours.add_adapter("default", r, float(alpha), rslora=rslora)
    assert ours.scaling("default") == pytest.approx(layer.scaling["default"], rel=1e-7)
    ours.set_lora("default", layer.lora_A["default"].weight.detach().numpy(),
                  layer.lora_B["default"].weight.detach().numpy())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, in_f)).astype(np.float32)
    dy = rng.standard_normal((N, out_f)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    y_ref = model(xt)
    y_ref.backward(torch.tensor(dy))
    assert np.abs(ours.forward(x) - y_ref.detach().numpy()).max() <= FWD_TOL
    dx = ours.backward(x, dy)
    assert rel_err(dx, xt.grad.numpy()) <= GRAD_TOL
    assert rel_err(ours.lora_A_grad("default"), layer.lora_A["default"].weight.grad.numpy()) <= GRAD_TOL
    assert rel_err(ours.lora_B_grad("default"), layer.lora_B["default"].weight.grad.numpy()) <= GRAD_TOL
    # Merge equals PEFT's get_delta_weight.
    delta = layer.get_delta_weight("default").detach().numpy()
    ours.merge()
    assert rel_err(ours.weight() - W, delta) <= 1e-5


def test_peft_initialisation():
    in_f, r = 1000, 64
    lin = make_layer("f32", in_f, 50)
    lin.add_adapter("a", r, 16.0, seed=123)
    A, B = lin.lora_A("a"), lin.lora_B("a")
    bound = 1 / math.sqrt(in_f)  # kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in))
    assert not B.any()
    assert np.abs(A).max() <= bound
    assert np.abs(A).max() > 0.999 * bound
    assert abs(A.mean()) < 0.01 * bound  # 64000 draws: std of the mean ~0.0023 bound
    assert A.var() == pytest.approx(bound**2 / 3, rel=0.02)
    # torch's own init has the same range and spread.
    ref = torch.empty(r, in_f)
    torch.nn.init.kaiming_uniform_(ref, a=math.sqrt(5))
    assert ref.abs().max().item() <= bound * (1 + 1e-6)
    assert ref.var().item() == pytest.approx(A.var(), rel=0.03)
    # Reproducible from the seed, different across seeds.
    lin.add_adapter("b", r, 16.0, seed=123)
    lin.add_adapter("c", r, 16.0, seed=124)
    np.testing.assert_array_equal(A, lin.lora_A("b"))
    assert not np.array_equal(A, lin.lora_A("c"))


# ---- merge / unmerge -----------------------------------------------------------------------------

@pytest.mark.parametrize("base", BASES)
def test_merge_unmerge(base):
    lin = make_layer(base, 65, 17)
    lin.add_adapter("a", 8, 16.0, seed=2)
    rng = np.random.default_rng(9)
    lin.lora_B("a")[:] = rng.standard_normal((17, 8)).astype(np.float32)
    x = rng.standard_normal((21, 65)).astype(np.float32)
    y_adapter = lin.forward(x)
    w_before = lin.dequantize_weight()
    state_before = lin.nf4_state()
    fmt = lin.format
    lin.merge()
    assert lin.merged and lin.format == "f32"
    assert rel_err(lin.forward(x), y_adapter) <= 1e-5
    delta = lin.scaling("a") * (lin.lora_B("a").astype(np.float64) @ lin.lora_A("a"))
    assert rel_err(lin.dequantize_weight() - w_before, delta) <= 1e-5
    assert lin.trainable_parameters().names() == (["weight"] if base == "f32_trainable" else [])
    with pytest.raises(ValueError):
        lin.set_active_adapter("")
    with pytest.raises(ValueError):
        lin.merge()
    lin.unmerge()
    assert not lin.merged and lin.format == fmt
    if base in ("bf16", "nf4"):
        np.testing.assert_array_equal(lin.dequantize_weight(), w_before)  # restored exactly
        if base == "nf4":
            for k, v in state_before.items():
                np.testing.assert_array_equal(lin.nf4_state()[k], v)
    else:
        np.testing.assert_allclose(lin.dequantize_weight(), w_before, rtol=0, atol=1e-6)
    np.testing.assert_allclose(lin.forward(x), y_adapter, rtol=1e-5, atol=1e-5)


# ---- NF4 weights ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("shape,blocksize", [((17, 65), 64), ((130, 1), 32), ((64, 128), 128)])
def test_nf4_weight_bytes_equal_nf4tensor(dtype, double_quant, shape, blocksize):
    w = np.random.default_rng(3).standard_normal(shape).astype(dtype)
    lin = _core.Linear(w, "nf4", blocksize=blocksize, double_quant=double_quant)
    ref = NF4Tensor.quantize(w, blocksize=blocksize, double_quant=double_quant).state_dict()
    st = lin.nf4_state()
    np.testing.assert_array_equal(st["packed"], ref["weight"].reshape(-1))
    np.testing.assert_array_equal(st["code"], ref["weight.quant_map"])
    if double_quant:
        np.testing.assert_array_equal(st["qabsmax"], ref["weight.absmax"])
        np.testing.assert_array_equal(st["nested_absmax"], ref["weight.nested_absmax"])
        np.testing.assert_array_equal(st["nested_code"], ref["weight.nested_quant_map"])
    else:
        np.testing.assert_array_equal(st["absmax"], ref["weight.absmax"])
    deq = NF4Tensor.from_state_dict(ref).dequantize()
    np.testing.assert_array_equal(lin.dequantize_weight(), deq)
    # from_bnb round trip.
    again = _core.Linear.from_nf4_state(**st)
    assert again.format == "nf4" and (again.out_features, again.in_features) == shape
    for k, v in st.items():
        np.testing.assert_array_equal(again.nf4_state()[k], v)
    np.testing.assert_array_equal(again.dequantize_weight(), deq)
    assert again.weight_nbytes == NF4Tensor.from_state_dict(ref).nbytes


def test_bf16_weight_is_rounded_like_ml_dtypes():
    w = np.random.default_rng(4).standard_normal((9, 33)).astype(np.float32)
    a = _core.Linear(w, "bf16").dequantize_weight()
    b = _core.Linear(w.astype(ml_dtypes.bfloat16), "bf16").dequantize_weight()
    np.testing.assert_array_equal(a, w.astype(ml_dtypes.bfloat16).astype(np.float32))
    np.testing.assert_array_equal(a, b)


# ---- bad input -----------------------------------------------------------------------------------

def test_bad_input_raises_value_error():
    w = np.ones((4, 6), np.float32)
    lin = _core.Linear(w, "nf4", blocksize=32)
    with pytest.raises(ValueError, match="x: expected shape"):
        lin.forward(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="float32"):
        lin.forward(np.ones((2, 6), np.float64))
    with pytest.raises(ValueError, match="dy"):
        lin.backward(np.ones((2, 6), np.float32), np.ones((2, 5), np.float32))
    with pytest.raises(ValueError):
        _core.Linear(w, "int8")
    with pytest.raises(ValueError):
        _core.Linear(w, "nf4", trainable=True)
    with pytest.raises(ValueError):
        _core.Linear(w, "nf4", blocksize=48)
    with pytest.raises(ValueError):
        _core.Linear(np.ones(6, np.float32))
    with pytest.raises(ValueError):
        lin.add_adapter("a", 0, 1.0)
    with pytest.raises(ValueError):
        lin.add_adapter("a", 2, 1.0, dropout=1.0)
    lin.add_adapter("a", 2, 1.0)
    with pytest.raises(ValueError):
        lin.add_adapter("a", 2, 1.0)
    with pytest.raises(ValueError):
        lin.set_lora("a", np.ones((3, 6), np.float32), np.ones((4, 2), np.float32))
    with pytest.raises(ValueError):
        lin.lora_A("missing")
    with pytest.raises(ValueError):
        lin.set_active_adapter("missing")
    st = lin.nf4_state()
    bad = dict(st, packed=st["packed"][:-1])
    with pytest.raises(ValueError, match="packed"):
        _core.Linear.from_nf4_state(**bad)
    bad = dict(st, absmax=np.ones(1, np.float32))
    with pytest.raises(ValueError):
        _core.Linear.from_nf4_state(**bad)  # both absmax and qabsmax
    bad = dict(st, nested_absmax=np.array([np.nan], np.float32))
    with pytest.raises(ValueError, match="finite"):
        _core.Linear.from_nf4_state(**bad)


def test_views_outlive_removed_adapter_and_layer():
    lin = make_layer("f32", 8, 4)
    lin.add_adapter("a", 2, 2.0, seed=1)
    A = lin.lora_A("a")
    expected = A.copy()
    lin.remove_adapter("a")
    del lin
    np.testing.assert_array_equal(A, expected)  # the view keeps the storage alive

"""_core.AdamW, clip_grad_norm and zero_grads against torch.optim.AdamW / torch.nn.utils.clip_grad_norm_.

AdamW: 200 steps from the same start with the same random grads; after every step our params equal
torch's to a relative error max|ours - ref| / max|ref| <= 1e-5 (per tensor). Bit equality is not
possible: torch's CPU sqrt is MKL's (within 1 ulp), ours is the exact IEEE sqrt; the rest follows
torch's order of operations. clip_grad_norm: norm and clipped grads within 1e-6 relative.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecomllm import _core

SHAPES = {"a.lora_A.weight": (8, 65), "a.lora_B.weight": (130, 8), "scalar": (1,), "big": (20011,), "odd": (3, 17, 5)}


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def make_params(seed: int = 0):
    rng = np.random.default_rng(seed)
    values = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    grads = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    return values, grads


def random_grads(rng, scale=1.0):
    # Mixed magnitudes, including exact zeros, so v and m cover several orders.
    out = {}
    for k, s in SHAPES.items():
        g = rng.standard_normal(s).astype(np.float32) * np.float32(scale * 10.0 ** rng.integers(-4, 1))
        g[rng.random(s) < 0.05] = 0.0
        out[k] = g
    return out


def step_both(opt, topt, grads, tparams, g):
    """Gives both optimisers the same grads g and steps each once."""
    for (k, arr), tp in zip(grads.items(), tparams):
        arr[...] = g[k]
        tp.grad = torch.tensor(g[k])
    opt.step()
    topt.step()


@pytest.mark.parametrize("lr,betas,wd", [(1e-3, (0.9, 0.999), 0.0), (1e-3, (0.9, 0.999), 0.1),
                                         (3e-2, (0.8, 0.99), 0.1), (2e-4, (0.3, 0.95), 0.01)])
def test_adamw_matches_torch_step_for_step(lr, betas, wd):
    values, grads = make_params()
    tparams = [torch.tensor(v.copy(), requires_grad=True) for v in values.values()]
    plist = _core.ParameterList.from_arrays(values, grads)
    opt = _core.AdamW(plist, lr=lr, betas=betas, eps=1e-8, weight_decay=wd)
    topt = torch.optim.AdamW(tparams, lr=lr, betas=betas, eps=1e-8, weight_decay=wd)
    rng = np.random.default_rng(1)
    worst = 0.0
    for _ in range(200):
        step_both(opt, topt, grads, tparams, random_grads(rng))
        for (k, v), tp in zip(values.items(), tparams):
            worst = max(worst, rel_err(v, tp.detach().numpy()))
    assert worst <= 1e-5, worst
    assert opt.step_count == 200
    st = opt.state_dict()
    for k, tp in zip(values, tparams):
        assert rel_err(st["exp_avg"][k], topt.state[tp]["exp_avg"].numpy()) <= 1e-6
        assert rel_err(st["exp_avg_sq"][k], topt.state[tp]["exp_avg_sq"].numpy()) <= 1e-6


def test_lr_change_matches_torch():
    values, grads = make_params(2)
    tparams = [torch.tensor(v.copy(), requires_grad=True) for v in values.values()]
    opt = _core.AdamW(_core.ParameterList.from_arrays(values, grads), lr=1e-2, weight_decay=0.05)
    topt = torch.optim.AdamW(tparams, lr=1e-2, weight_decay=0.05)
    rng = np.random.default_rng(3)
    for step in range(30):
        lr = 1e-2 * (1 - step / 30)  # a linear schedule
        opt.lr = lr
        for group in topt.param_groups:
            group["lr"] = lr
        step_both(opt, topt, grads, tparams, random_grads(rng))
    assert opt.lr == pytest.approx(1e-2 / 30)
    for v, tp in zip(values.values(), tparams):
        assert rel_err(v, tp.detach().numpy()) <= 1e-5


def test_simd_and_scalar_updates_are_identical():
    results = []
    for level in ["scalar", _core.cpu_features()["best_level"]]:
        _core.set_simd_level(level)
        values, grads = make_params(4)
        opt = _core.AdamW(_core.ParameterList.from_arrays(values, grads), lr=1e-3, weight_decay=0.1)
        rng = np.random.default_rng(5)
        for _ in range(5):
            for k, g in random_grads(rng).items():
                grads[k][...] = g
            opt.step()
        results.append(values)
    for k in SHAPES:
        np.testing.assert_array_equal(results[0][k], results[1][k])


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(6)
    grad_seq = [random_grads(rng) for _ in range(60)]

    def run(steps, values, grads, opt):
        for g in steps:
            for k, a in grads.items():
                a[...] = g[k]
            opt.step()

    values, grads = make_params(7)
    opt = _core.AdamW(_core.ParameterList.from_arrays(values, grads), lr=1e-3, weight_decay=0.1)
    run(grad_seq, values, grads, opt)

    values2, grads2 = make_params(7)
    opt2 = _core.AdamW(_core.ParameterList.from_arrays(values2, grads2), lr=1e-3, weight_decay=0.1)
    run(grad_seq[:25], values2, grads2, opt2)
    state = opt2.state_dict()
    saved = {k: v.copy() for k, v in values2.items()}
    run(grad_seq[25:30], values2, grads2, opt2)  # wander off, then come back to the checkpoint
    for k, v in saved.items():
        values2[k][...] = v
    values3, grads3 = values2, grads2
    opt3 = _core.AdamW(_core.ParameterList.from_arrays(values3, grads3), lr=1e-3, weight_decay=0.1)
    opt3.load_state_dict(state)
    assert opt3.step_count == 25
    run(grad_seq[25:], values3, grads3, opt3)
    for k in SHAPES:
        np.testing.assert_array_equal(values3[k], values[k])
    # The state dict holds copies.
    state["exp_avg"]["scalar"][...] = 123.0
    assert opt3.state_dict()["exp_avg"]["scalar"][0] != 123.0


def test_load_state_dict_validates():
    values, grads = make_params()
    opt = _core.AdamW(_core.ParameterList.from_arrays(values, grads))
    good = opt.state_dict()
    with pytest.raises(ValueError, match="missing"):
        opt.load_state_dict({"step": 1, "exp_avg": good["exp_avg"]})
    with pytest.raises(ValueError, match="step"):
        opt.load_state_dict(dict(good, step=-1))
    with pytest.raises(ValueError, match="step"):
        opt.load_state_dict(dict(good, step=1.5))
    wrong_shape = dict(good["exp_avg"], odd=np.zeros((3, 17, 4), np.float32))
    with pytest.raises(ValueError, match="odd"):
        opt.load_state_dict(dict(good, exp_avg=wrong_shape))
    renamed = {("x" + k if k == "big" else k): v for k, v in good["exp_avg_sq"].items()}
    with pytest.raises(ValueError, match="big"):
        opt.load_state_dict(dict(good, exp_avg_sq=renamed))
    wrong_dtype = dict(good["exp_avg"], big=np.zeros(20011, np.float64))
    with pytest.raises(ValueError, match="float32"):
        opt.load_state_dict(dict(good, exp_avg=wrong_dtype))
    fewer = {k: v for k, v in good["exp_avg"].items() if k != "big"}
    with pytest.raises(ValueError, match="entries"):
        opt.load_state_dict(dict(good, exp_avg=fewer))


def test_bad_hyperparameters():
    values, grads = make_params()
    plist = _core.ParameterList.from_arrays(values, grads)
    for kwargs in [dict(lr=-1.0), dict(betas=(1.0, 0.999)), dict(betas=(0.9, -0.1)), dict(eps=-1.0),
                   dict(weight_decay=-0.1), dict(lr=float("nan"))]:
        with pytest.raises(ValueError):
            _core.AdamW(plist, **kwargs)
    with pytest.raises(ValueError):
        _core.ParameterList.from_arrays({"a": np.zeros(3, np.float32)}, {"a": np.zeros(4, np.float32)})
    with pytest.raises(ValueError):
        _core.ParameterList.from_arrays({"a": np.zeros(3, np.float64)}, {"a": np.zeros(3, np.float64)})
    with pytest.raises(ValueError):
        _core.ParameterList.concat([plist, plist])  # duplicate names


@pytest.mark.parametrize("max_norm", [0.5, 1.0, 1e6])
def test_clip_grad_norm_matches_torch(max_norm):
    values, grads = make_params()
    rng = np.random.default_rng(8)
    for k, g in random_grads(rng, scale=0.01).items():
        grads[k][...] = g
    plist = _core.ParameterList.from_arrays(values, grads)
    tgrads = [torch.tensor(g.copy()) for g in grads.values()]
    tparams = [torch.zeros_like(g) for g in tgrads]
    for p, g in zip(tparams, tgrads):
        p.grad = g
    before = {k: g.copy() for k, g in grads.items()}
    norm = _core.clip_grad_norm(plist, max_norm)
    tnorm = torch.nn.utils.clip_grad_norm_(tparams, max_norm).item()
    assert norm == pytest.approx(tnorm, rel=1e-6)
    assert _core.grad_norm(plist) == pytest.approx(min(norm, max_norm), rel=1e-5)
    for (k, g), tg in zip(grads.items(), tgrads):
        assert rel_err(g, tg.numpy()) <= 1e-6
        if norm <= max_norm:
            np.testing.assert_array_equal(g, before[k])  # untouched, not multiplied by ~1
    with pytest.raises(ValueError):
        _core.clip_grad_norm(plist, -1.0)


def test_zero_grads_and_views():
    values, grads = make_params()
    for g in grads.values():
        g[...] = 1.0
    plist = _core.ParameterList.from_arrays(values, grads)
    assert len(plist) == len(SHAPES) and plist.names() == list(SHAPES)
    assert tuple(plist.shape("odd")) == SHAPES["odd"]
    plist.value("scalar")[0] = 42.0
    assert values["scalar"][0] == 42.0  # views, not copies
    _core.zero_grads(plist)
    assert all(not g.any() for g in grads.values())
    assert not plist.grad("big").any()
    with pytest.raises(ValueError):
        plist.value("nope")


def test_lora_training_loop_matches_torch():
    """A few AdamW steps on a LoRA layer over an NF4 base: ours vs torch (same math, same optimiser)."""
    rng = np.random.default_rng(9)
    in_f, out_f, r, N = 65, 33, 4, 16
    w = rng.standard_normal((out_f, in_f)).astype(np.float32) / 8
    lin = _core.Linear(w, "nf4")
    lin.add_adapter("default", r, 8.0, seed=1)
    W = torch.tensor(lin.dequantize_weight())
    A = torch.tensor(lin.lora_A("default").copy(), requires_grad=True)
    B = torch.tensor(lin.lora_B("default").copy(), requires_grad=True)
    scale = lin.scaling("default")
    plist = lin.trainable_parameters("q_proj")
    opt = _core.AdamW(plist, lr=1e-2, weight_decay=0.0)
    topt = torch.optim.AdamW([A, B], lr=1e-2, weight_decay=0.0)
    x = rng.standard_normal((N, in_f)).astype(np.float32)
    target = rng.standard_normal((N, out_f)).astype(np.float32)
    for _ in range(20):
        y = lin.forward(x)
        lin.backward(x, (2.0 / y.size) * (y - target))  # grad of mean squared error
        opt.step()
        _core.zero_grads(plist)
        yt = torch.tensor(x) @ W.T + (torch.tensor(x) @ A.T @ B.T) * scale
        loss = ((yt - torch.tensor(target)) ** 2).mean()
        topt.zero_grad()
        loss.backward()
        topt.step()
    assert rel_err(lin.lora_A("default"), A.detach().numpy()) <= 1e-4
    assert rel_err(lin.lora_B("default"), B.detach().numpy()) <= 1e-4

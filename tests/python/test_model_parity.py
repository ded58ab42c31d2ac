"""The C++ Llama/Mistral model against transformers + PEFT + torch autograd.

Tolerances: logits max abs diff <= 1e-4 (fp32); gradients relative error <= 1e-4, measured as
max|ours - torch| / max|torch| per tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import ecomllm  # noqa: E402
from ecomllm.model import Model, LoraConfig  # noqa: E402

torch.set_num_threads(2)

CONFIGS = {
    # MHA, untied, theta 1e4
    "llama_mha": dict(model_type="llama", hidden_size=32, intermediate_size=56, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0, tie_word_embeddings=False),
    # GQA, tied embeddings, theta 1e6
    "llama_gqa_tied": dict(model_type="llama", hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=6, num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=True),
    # Mistral with a sliding window shorter than the sequence, odd hidden size (head_dim 10)
    "mistral_window": dict(model_type="mistral", hidden_size=40, intermediate_size=72, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, rope_theta=1e6, sliding_window=5,
                           tie_word_embeddings=False),
    # Mistral without a window (v0.2 style), MQA-free GQA 4:2
    "mistral_nowindow": dict(model_type="mistral", hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=2, rope_theta=1e4, sliding_window=None,
                             tie_word_embeddings=False),
}
VOCAB = 97


def hf_model(name: str, seed: int = 0):
    cfg = dict(CONFIGS[name])
    model_type = cfg.pop("model_type")
    torch.manual_seed(seed)
    cls_cfg = transformers.LlamaConfig if model_type == "llama" else transformers.MistralConfig
    config = cls_cfg(vocab_size=VOCAB, max_position_embeddings=256, rms_norm_eps=1e-5,
                     attn_implementation="eager", **cfg)
    cls = transformers.LlamaForCausalLM if model_type == "llama" else transformers.MistralForCausalLM
    model = cls(config).float().eval()
    with torch.no_grad():  # make the norms non-trivial so that their gradients mean something
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model


def save_hf(model, tmp_path, sub="base") -> str:
    d = tmp_path / sub
    model.save_pretrained(d, safe_serialization=True)
    return str(d)


def padded_batch(seed=1, B=3, T=12):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(B, T)).astype(np.int64)
    lengths = [T, T - 4, T - 7][:B]
    mask = np.zeros((B, T), np.int64)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    labels = np.where(mask == 1, ids, -100)
    return ids, mask, labels


def torch_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()


def max_rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-12))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers_on_padded_batch(name, tmp_path):
    hf = hf_model(name)
    ours = Model.from_pretrained(save_hf(hf, tmp_path))
    ids, mask, _ = padded_batch()
    ref = torch_logits(hf, ids, mask)
    got = ours.forward(ids, attention_mask=mask)
    assert got.shape == ref.shape
    valid = mask.astype(bool)
    diff = np.abs(got - ref)[valid].max()
    assert diff <= 1e-4, f"max abs logit diff {diff:.3e}"


def test_config_round_trip_through_transformers(tmp_path):
    hf = hf_model("mistral_window")
    ours = Model.from_pretrained(save_hf(hf, tmp_path))
    assert ours.config.sliding_window == 5 and ours.config.num_key_value_heads == 1
    out = tmp_path / "ours"
    ours.save_pretrained(out)
    back = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    ids, mask, _ = padded_batch()
    np.testing.assert_allclose(torch_logits(back, ids, mask)[mask == 1], torch_logits(hf, ids, mask)[mask == 1],
                               atol=1e-5)


def peft_model(hf, r=4, alpha=8, targets="all-linear", seed=3):
    torch.manual_seed(seed)
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                          init_lora_weights=False)  # B non-zero
    return peft.get_peft_model(hf, cfg)


def peft_grads(pm, ids, mask, labels):
    pm.zero_grad()
    out = pm(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
             labels=torch.from_numpy(labels))
    out.loss.backward()
    grads = {n.replace(".default", ""): p.grad.numpy().copy() for n, p in pm.named_parameters() if p.requires_grad}
    return float(out.loss), out.logits.detach().numpy(), grads


@pytest.mark.parametrize("name", ["llama_gqa_tied", "mistral_window"])
def test_peft_lora_outputs_and_gradients(name, tmp_path):
    hf = hf_model(name)
    base_dir = save_hf(hf, tmp_path)
    pm = peft_model(hf)
    pm.save_pretrained(tmp_path / "adapter")
    ids, mask, labels = padded_batch()
    loss_ref, logits_ref, grads_ref = peft_grads(pm, ids, mask, labels)

    ours = Model.from_pretrained(base_dir)
    ours.load_adapter(tmp_path / "adapter")
    np.testing.assert_allclose(ours.forward(ids, mask)[mask == 1], logits_ref[mask == 1], atol=1e-4)
    loss = ours.forward_backward(ids, labels, attention_mask=mask)
    assert abs(loss - loss_ref) <= 1e-5 * max(1.0, abs(loss_ref))
    grads = ours.gradients()
    assert set(grads) == set(grads_ref)
    for k, g in grads.items():
        assert max_rel(g, grads_ref[k]) <= 1e-4, k


def test_full_parameter_gradients_match_autograd(tmp_path):
    hf = hf_model("llama_mha")
    ours = Model.from_pretrained(save_hf(hf, tmp_path))
    ours.train_all_parameters()
    ids, mask, labels = padded_batch()
    hf.zero_grad()
    out = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), labels=torch.from_numpy(labels))
    out.loss.backward()
    loss = ours.forward_backward(ids, labels, attention_mask=mask)
    assert abs(loss - float(out.loss)) <= 1e-5
    grads = ours.gradients()
    ref = {n: p.grad.numpy() for n, p in hf.named_parameters()}
    assert set(grads) == set(ref)
    for k, g in grads.items():
        assert max_rel(g, ref[k]) <= 1e-4, k


def test_tied_full_parameter_gradients(tmp_path):
    hf = hf_model("llama_gqa_tied")
    ours = Model.from_pretrained(save_hf(hf, tmp_path))
    ours.train_all_parameters()
    ids, mask, labels = padded_batch()
    out = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), labels=torch.from_numpy(labels))
    out.loss.backward()
    ours.forward_backward(ids, labels, attention_mask=mask)
    g = ours.gradients()["model.embed_tokens.weight"]
    assert max_rel(g, hf.model.embed_tokens.weight.grad.numpy()) <= 1e-4


def test_nf4_base_matches_transformers_on_dequantized_weights(tmp_path):
    hf = hf_model("llama_gqa_tied")
    ours = Model.from_pretrained(save_hf(hf, tmp_path), quantize="nf4")
    # Put our dequantized projections into the torch model: the same function, computed by torch.
    with torch.no_grad():
        sd = hf.state_dict()
        for name in ours.weight_names():
            if "_proj" in name:
                sd[name].copy_(torch.from_numpy(ours.get_weight(name)))
    ids, mask, _ = padded_batch()
    diff = np.abs(ours.forward(ids, mask) - torch_logits(hf, ids, mask))[mask == 1].max()
    assert diff <= 1e-4


def test_adapter_round_trip_ours_to_peft(tmp_path):
    hf = hf_model("llama_mha")
    base_dir = save_hf(hf, tmp_path)
    ours = Model.from_pretrained(base_dir)
    ours.add_lora(LoraConfig(r=4, alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], seed=5))
    rng = np.random.default_rng(0)
    for module in ours._core.adapter_modules("default"):
        A, B = ours.lora_weights(module)
        ours.set_lora_weights(module, A, rng.normal(0, 0.1, B.shape))
    ours.save_adapter(tmp_path / "ours_adapter")
    pm = peft.PeftModel.from_pretrained(hf, tmp_path / "ours_adapter").eval()
    ids, mask, _ = padded_batch()
    np.testing.assert_allclose(torch_logits(pm, ids, mask)[mask == 1], ours.forward(ids, mask)[mask == 1], atol=1e-4)
    cfg = json.loads((tmp_path / "ours_adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 16


def test_merge_and_unmerge(tmp_path):
    hf = hf_model("llama_mha")
    ours = Model.from_pretrained(save_hf(hf, tmp_path), quantize="nf4")
    pm = peft_model(hf)
    pm.save_pretrained(tmp_path / "adapter")
    ours.load_adapter(tmp_path / "adapter")
    ids, mask, _ = padded_batch()
    before = ours.forward(ids, mask)
    base_q = ours.get_weight("model.layers.0.self_attn.q_proj.weight")
    ours.merge_adapter()
    np.testing.assert_allclose(ours.forward(ids, mask), before, atol=1e-4)
    ours.unmerge_adapter()
    np.testing.assert_array_equal(ours.get_weight("model.layers.0.self_attn.q_proj.weight"), base_q)
    np.testing.assert_allclose(ours.forward(ids, mask), before, atol=1e-5)


def test_checkpointing_gives_identical_gradients(tmp_path):
    hf = hf_model("mistral_nowindow")
    base = save_hf(hf, tmp_path)
    ids, mask, labels = padded_batch()
    results = []
    for ckpt in (False, True):
        m = Model.from_pretrained(base)
        m.add_lora(LoraConfig(r=4, alpha=8, target_modules="all-linear", seed=1))
        for module in m._core.adapter_modules("default"):
            A, B = m.lora_weights(module)
            m.set_lora_weights(module, A, np.full(B.shape, 0.01, np.float32))
        m.gradient_checkpointing = ckpt
        loss = m.forward_backward(ids, labels, attention_mask=mask)
        results.append((loss, m.gradients()))
    assert results[0][0] == results[1][0]
    for k in results[0][1]:
        np.testing.assert_array_equal(results[0][1][k], results[1][1][k])


def test_finite_difference_gradient_on_micro_model():
    cfg = dict(model_type="llama", vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
               num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-5)
    m = Model.from_config(cfg, seed=3, init_std=0.3)
    m.train_all_parameters()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 11, size=(1, 6))
    labels = ids.copy()
    m.forward_backward(ids, labels)
    grads = m.gradients()
    eps = 1e-2
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
                 "model.norm.weight", "model.embed_tokens.weight"]:
        w = m.get_weight(name)
        flat = w.reshape(-1)
        for i in rng.choice(flat.size, size=4, replace=False):
            plus, minus = flat.copy(), flat.copy()
            plus[i] += eps
            minus[i] -= eps
            m.set_weight(name, plus.reshape(w.shape))
            lp = m.loss(ids, labels)[0] / m.loss(ids, labels)[1]
            m.set_weight(name, minus.reshape(w.shape))
            lm = m.loss(ids, labels)[0] / m.loss(ids, labels)[1]
            m.set_weight(name, w)
            fd = (lp - lm) / (2 * eps)
            an = grads[name].reshape(-1)[i]
            assert abs(fd - an) <= 2e-3 + 2e-2 * abs(fd), (name, i, fd, an)


def test_bad_inputs_raise_clear_errors(tmp_path):
    hf = hf_model("llama_mha")
    m = Model.from_pretrained(save_hf(hf, tmp_path))
    with pytest.raises(ValueError, match="vocabulary"):
        m.forward(np.array([[1, VOCAB]]))
    with pytest.raises(ValueError, match="labels"):
        m.forward_backward(np.array([[1, 2]]), np.array([[1, 2, 3]]))
    with pytest.raises(TypeError):
        m.forward(np.array([[1.5, 2.0]]))
    with pytest.raises(ValueError, match="attention_mask"):
        m.forward(np.array([[1, 2]]), attention_mask=np.array([[1, 1, 1]]))
    with pytest.raises(ValueError, match="match no projection"):
        m.add_lora(LoraConfig(target_modules=["nothing_here"]))
    with pytest.raises(FileNotFoundError):
        Model.from_pretrained(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="model_type"):
        Model.from_pretrained(tmp_path / "bad")


def test_hostile_config_adapter_and_quant_state_files(tmp_path):
    """Found by fuzzing: a value nested 10^5 deep in config.json or a quant state segfaulted (its
    dump() in the error message recursed off the stack); invalid UTF-8 raised UnicodeDecodeError;
    wrongly typed adapter fields raised nlohmann's type_error (RuntimeError); and a config.json that
    disagrees with a tiny checkpoint built the model it describes (7B by default) before any check."""
    import shutil

    import safetensors.numpy as stn

    base = Path(save_hf(hf_model("llama_mha"), tmp_path))
    good_config = json.loads((base / "config.json").read_text())

    def with_config(name: str, text: bytes | str) -> Path:
        d = tmp_path / name
        shutil.copytree(base, d)
        (d / "config.json").write_bytes(text.encode() if isinstance(text, str) else text)
        return d

    deep = "[" * 100_000 + "]" * 100_000
    cases = {
        "deep_vocab": ('{"model_type": "llama", "vocab_size": ' + deep + "}", "nests deeper"),
        "not_utf8": (b"\xff", "not valid JSON"),
        "defaults_7b": ('{"model_type": "llama"}', r"shape \[97, 32\] in the checkpoint does not match \[32000, 4096\]"),
        "huge_vocab": (json.dumps({**good_config, "vocab_size": 2**30}), "does not match"),
        "million_layers": (json.dumps({**good_config, "num_hidden_layers": 10**6}), "no tensor 'model.layers.2"),
    }
    for name, (text, message) in cases.items():
        with pytest.raises(ValueError, match=message) as info:
            Model.from_pretrained(with_config(name, text))
        assert str(tmp_path / name) in str(info.value), "the message names the folder or file"

    m = Model.from_pretrained(base)
    m.add_lora(LoraConfig(r=2, target_modules=["q_proj"]))
    m.save_adapter(tmp_path / "adapter")
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    for key, value in (("peft_type", 1), ("bias", False), ("lora_bias", 0), ("fan_in_fan_out", []),
                       ("use_rslora", "true"), ("r", "8")):
        (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**adapter_config, key: value}))
        with pytest.raises(ValueError, match=f"'{key}' must be a"):
            Model.from_pretrained(base).load_adapter(tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_config.json").write_bytes(b"\xff")
    with pytest.raises(ValueError, match="adapter_config.json: not valid JSON"):
        Model.from_pretrained(base).load_adapter(tmp_path / "adapter")

    # A bitsandbytes-style NF4 projection whose quant state holds a deeply nested shape.
    d = tmp_path / "bnb"
    shutil.copytree(base, d)
    weights = dict(stn.load_file(d / "model.safetensors"))
    w = "model.layers.0.self_attn.q_proj.weight"
    rows, cols = weights[w].shape
    nblocks = rows * cols // 64
    weights[w] = np.zeros((rows * cols // 2, 1), np.uint8)
    weights[w + ".absmax"] = np.ones(nblocks, np.float32)
    weights[w + ".quant_map"] = np.linspace(-1, 1, 16, dtype=np.float32)
    state = b'{"blocksize": 64, "shape": ' + deep.encode() + b"}"
    weights[w + ".quant_state.bitsandbytes__nf4"] = np.frombuffer(state, np.uint8).copy()
    stn.save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="quant_state.bitsandbytes__nf4: JSON nests deeper"):
        Model.from_pretrained(d)


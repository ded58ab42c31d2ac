"""Training behaviour of ecomllm.Model: AdamW against torch step for step, sharded and
bitsandbytes-quantized checkpoints, long sequences, gradient accumulation, bf16 bases."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import ecomllm  # noqa: E402
from ecomllm import AdamW, LoraConfig, Model  # noqa: E402

torch.set_num_threads(2)
VOCAB = 61


def tiny_llama(seed=0, **over):
    torch.manual_seed(seed)
    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5, attn_implementation="eager")
    kw.update(over)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw)).float()


def batch(seed=0, B=2, T=16):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(B, T))
    return ids, ids.copy()


def test_adamw_lora_training_follows_torch_step_for_step(tmp_path):
    hf = tiny_llama()
    hf.save_pretrained(tmp_path / "base")
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    pm.save_pretrained(tmp_path / "adapter")  # the same start (B = 0) for both
    ours = Model.from_pretrained(tmp_path / "base")
    ours.load_adapter(tmp_path / "adapter")
    opt = AdamW(ours.trainable_parameters(), lr=1e-2, weight_decay=0.01)
    topt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
    ids, labels = batch()
    ours_losses, torch_losses = [], []
    for step in range(60):
        ours_losses.append(ours.forward_backward(ids, labels))
        opt.step()
        ours.zero_grad()
        out = pm(input_ids=torch.from_numpy(ids), labels=torch.from_numpy(labels))
        out.loss.backward()
        topt.step()
        topt.zero_grad()
        torch_losses.append(float(out.loss.detach()))
    ours_losses, torch_losses = np.array(ours_losses), np.array(torch_losses)
    assert ours_losses[-1] < 0.9 * ours_losses[0]  # it learns
    # fp32 round-off compounds over 60 steps: 1e-3 relative, step by step.
    np.testing.assert_allclose(ours_losses, torch_losses, rtol=1e-3)


def test_optimizer_state_round_trip_resumes_identically(tmp_path):
    hf = tiny_llama(1)
    hf.save_pretrained(tmp_path / "base")
    ids, labels = batch(1)

    def run(steps, model, opt):
        losses = []
        for _ in range(steps):
            losses.append(model.forward_backward(ids, labels))
            opt.step()
            model.zero_grad()
        return losses

    a = Model.from_pretrained(tmp_path / "base")
    a.add_lora(LoraConfig(r=2, alpha=4, target_modules="all-linear", seed=2))
    opt_a = AdamW(a.trainable_parameters(), lr=5e-3)
    straight = run(6, a, opt_a)

    b = Model.from_pretrained(tmp_path / "base")
    b.add_lora(LoraConfig(r=2, alpha=4, target_modules="all-linear", seed=2))
    opt_b = AdamW(b.trainable_parameters(), lr=5e-3)
    first = run(3, b, opt_b)
    b.save_adapter(tmp_path / "ckpt")
    state = opt_b.state_dict()
    c = Model.from_pretrained(tmp_path / "base")
    c.load_adapter(tmp_path / "ckpt")
    opt_c = AdamW(c.trainable_parameters(), lr=5e-3)
    opt_c.load_state_dict(state)
    assert first + run(3, c, opt_c) == straight


def test_gradient_accumulation_normalises_by_window_tokens(tmp_path):
    hf = tiny_llama(2)
    hf.save_pretrained(tmp_path / "base")
    m = Model.from_pretrained(tmp_path / "base")
    m.train_all_parameters()
    ids, labels = batch(2, B=4)
    labels[1, 5:] = -100
    m.forward_backward(ids, labels)
    whole = m.gradients()
    m.zero_grad()
    n_tokens = int((labels[:, 1:] != -100).sum())
    for half in (slice(0, 2), slice(2, 4)):
        m.forward_backward(ids[half], labels[half], num_items_in_batch=n_tokens)
    for k, g in m.gradients().items():
        np.testing.assert_allclose(g, whole[k], rtol=1e-4, atol=1e-7)


def test_loss_head_skips_rows_without_targets(tmp_path):
    """Rows labelled -100 never reach the loss head: a prompt-masked batch gives transformers' loss
    and LoRA gradients, and an all -100 batch gives loss 0, zero gradients and no error."""
    hf = tiny_llama(3)
    hf.save_pretrained(tmp_path / "base")
    m = Model.from_pretrained(tmp_path / "base")
    m.add_lora(LoraConfig(r=4, alpha=8, target_modules="all-linear"))
    ids, labels = batch(4, B=3)
    labels[:, :9] = -100  # a "prompt" on every row
    labels[2, 12:] = -100
    loss = m.forward_backward(ids, labels)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), labels=torch.from_numpy(labels)).loss.item()
    assert abs(loss - ref) <= 1e-5 * max(1.0, abs(ref))
    total, count = m.loss(ids, labels)
    assert count == int((labels[:, 1:] != -100).sum()) and abs(total / count - ref) <= 1e-5 * max(1.0, abs(ref))
    assert any(np.abs(g).max() > 0 for g in m.gradients().values())
    m.zero_grad()
    assert m.forward_backward(ids, np.full_like(labels, -100)) == 0.0
    assert all(np.abs(g).max() == 0 for g in m.gradients().values())
    assert m.loss(ids, np.full_like(labels, -100)) == (0.0, 0)


def test_sharded_checkpoint_loads(tmp_path):
    hf = tiny_llama(3).eval()
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    m = Model.from_pretrained(tmp_path / "sharded")
    ids, _ = batch(3)
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(m.forward(ids) - ref).max() <= 1e-4


def test_bitsandbytes_4bit_checkpoint_loads_as_is(tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as F

    hf = tiny_llama(4, hidden_size=64, intermediate_size=128).eval()
    hf.save_pretrained(tmp_path / "dense")
    qcfg = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                           bnb_4bit_compute_dtype=torch.float32)
    try:
        q = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "dense", quantization_config=qcfg,
                                                          device_map="cpu", dtype=torch.float32)
    except Exception as e:  # pragma: no cover - depends on the bitsandbytes build
        pytest.skip(f"bitsandbytes 4-bit does not load on this CPU: {e}")
    q.save_pretrained(tmp_path / "nf4")
    ours = Model.from_pretrained(tmp_path / "nf4")
    ids, _ = batch(4)
    # Reference 1: torch on bitsandbytes' own dequantized weights -- the same function exactly.
    with torch.no_grad():
        for name, mod in q.named_modules():
            if isinstance(mod, bnb.nn.Linear4bit):
                hf.get_submodule(name).weight.copy_(F.dequantize_4bit(mod.weight.data, mod.weight.quant_state).float())
        exact = hf(torch.from_numpy(ids)).logits.numpy()
        bnb_logits = q(torch.from_numpy(ids)).logits.numpy()
    got = ours.forward(ids)
    assert np.abs(got - exact).max() <= 1e-4
    # Reference 2: bitsandbytes' own CPU forward computes in bf16 internally (~3e-3 relative).
    assert np.abs(got - bnb_logits).max() <= 1e-2 * np.abs(bnb_logits).max()


def test_long_sequence_trains_with_linear_memory(tmp_path):
    hf = tiny_llama(5, hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1)
    hf.save_pretrained(tmp_path / "base")
    m = Model.from_pretrained(tmp_path / "base", quantize="nf4", blocksize=64)
    m.add_lora(LoraConfig(r=2, alpha=4, target_modules="all-linear"))
    m.gradient_checkpointing = True
    ids, labels = batch(5, B=1, T=2048)
    loss = m.forward_backward(ids, labels)
    out = hf(input_ids=torch.from_numpy(ids), labels=torch.from_numpy(labels))
    assert abs(loss - float(out.loss)) <= 2e-3  # NF4 base vs the fp32 base
    assert all(np.isfinite(g).all() for g in m.gradients().values())


def test_bf16_base_is_close_to_fp32(tmp_path):
    hf = tiny_llama(6).eval()
    hf.save_pretrained(tmp_path / "base")
    f32 = Model.from_pretrained(tmp_path / "base")
    b16 = Model.from_pretrained(tmp_path / "base", dtype="bf16")
    ids, _ = batch(6)
    a, b = f32.forward(ids), b16.forward(ids)
    assert np.abs(a - b).max() <= 2e-2 * np.abs(a).max()
    with pytest.raises(ValueError, match="fp32"):
        b16.train_all_parameters()


_AMX = ecomllm._core.amx_supported()
_BF16_PAIRS = ecomllm._core.bf16_products_available()


@pytest.mark.parametrize("precision,rtol", [
    pytest.param("high", 1e-3, marks=pytest.mark.skipif(not _AMX, reason="'high' acts on AMX CPUs only")),
    pytest.param("medium", 5e-2, marks=pytest.mark.skipif(not (_AMX or _BF16_PAIRS),
                                                          reason="'medium' acts on AMX or AVX512-BF16 CPUs only")),
])
def test_lower_matmul_precision_trains_like_fp32(tmp_path, precision, rtol):
    """LoRA training with the products at bf16-like precision (AMX tiles, or bf16 pairs on
    AVX512-BF16): logits within the precision's reach, and the loss curve of 30 AdamW steps follows
    the fp32 one (B * T = 64 rows: the tiled products run)."""
    hf = tiny_llama(8)
    hf.save_pretrained(tmp_path / "base")
    ids, labels = batch(8, B=4, T=16)
    curves, logits = {}, {}
    for p in ("highest", precision):
        ecomllm.set_float32_matmul_precision(p)
        assert ecomllm.get_float32_matmul_precision() == p
        m = Model.from_pretrained(tmp_path / "base", quantize="nf4")
        m.add_lora(LoraConfig(r=4, alpha=8, target_modules="all-linear"))
        opt = AdamW(m.trainable_parameters(), lr=1e-2)
        logits[p] = m.forward(ids)
        losses = []
        for _ in range(30):
            losses.append(m.forward_backward(ids, labels))
            opt.step()
            m.zero_grad()
        curves[p] = np.array(losses)
    ecomllm.set_float32_matmul_precision("highest")
    a, b = logits["highest"], logits[precision]
    assert 0 < np.abs(a - b).max() <= 10 * rtol * np.abs(a).max()
    assert curves[precision][-1] < 0.9 * curves[precision][0]
    np.testing.assert_allclose(curves[precision], curves["highest"], rtol=rtol)


def test_matmul_precision_setting_rejects_unknown_names():
    before = ecomllm.get_float32_matmul_precision()
    for bad in ("low", "", "HIGHEST", "fp32"):
        with pytest.raises(ValueError, match="precision"):
            ecomllm.set_float32_matmul_precision(bad)
    assert ecomllm.get_float32_matmul_precision() == before
    import subprocess
    import sys
    env = dict(os.environ, ECOMLLM_MATMUL_PRECISION="medium")
    out = subprocess.run([sys.executable, "-c", "import ecomllm; print(ecomllm.get_float32_matmul_precision())"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "medium", out.stderr
    env["ECOMLLM_MATMUL_PRECISION"] = "bogus"
    out = subprocess.run([sys.executable, "-c", "import ecomllm; ecomllm.get_float32_matmul_precision()"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode > 0 and "ECOMLLM_MATMUL_PRECISION" in out.stderr, out.stderr


def test_lora_dropout_trains_and_is_off_at_inference(tmp_path):
    hf = tiny_llama(7)
    hf.save_pretrained(tmp_path / "base")
    m = Model.from_pretrained(tmp_path / "base")
    m.add_lora(LoraConfig(r=4, alpha=8, dropout=0.3, target_modules="all-linear"))
    ids, labels = batch(7)
    for module in m._core.adapter_modules("default"):
        A, B = m.lora_weights(module)
        m.set_lora_weights(module, A, np.full(B.shape, 0.05, np.float32))
    first = m.forward(ids)
    np.testing.assert_array_equal(first, m.forward(ids))  # inference is deterministic
    m.forward_backward(ids, labels)
    g1 = m.gradients()
    m.zero_grad()
    m.forward_backward(ids, labels)
    g2 = m.gradients()
    assert any(not np.array_equal(g1[k], g2[k]) for k in g1)  # a new mask each step


def test_num_parameters_and_names(tmp_path):
    hf = tiny_llama(8)
    hf.save_pretrained(tmp_path / "base")
    m = Model.from_pretrained(tmp_path / "base")
    assert m.num_parameters() == sum(p.numel() for p in hf.parameters())
    added = m.add_lora(LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    assert added == 2 * hf.config.num_hidden_layers
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainable, _ = pm.get_nb_trainable_parameters()
    assert m.num_parameters(trainable_only=True) == trainable
    assert set(m.trainable_parameters().names()) == {
        n.replace(".default", "") for n, p in pm.named_parameters() if p.requires_grad}

"""ecomllm.train: schedules against transformers, YAML configs and their errors, LoRA (NF4) and
full-parameter runs that learn, gradient accumulation, exact resume, crash-safe checkpoints."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

import ecomllm
from ecomllm import LoraConfig, Model
from ecomllm.train import (ConfigError, TrainConfig, Trainer, TrainingStopped, config_help, latest_checkpoint,
                           list_checkpoints, load_config, lr_at, read_metrics)
from ecomllm.train import checkpoint as ckpt
from ecomllm.train.checkpoint import read_manifest

V = 64
ARCH = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5)


def packed(seed: int, R: int, T: int = 48, mask: bool = True) -> dict:
    """Packed rows of learnable examples: arithmetic sequences mod V (start and stride random);
    the first two tokens are the "prompt" (label -100), the rest are targets. Position ids
    restart per example; the tail of each row is padding (label -100, mask 0, position 0)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((R, T), np.int32)
    labels = np.full((R, T), -100, np.int32)
    pos = np.zeros((R, T), np.int32)
    att = np.zeros((R, T), np.int32)
    for r in range(R):
        t = 0
        while True:
            n = int(rng.integers(5, 13))
            if t + n > T:
                break
            seq = (int(rng.integers(0, V)) + int(rng.integers(1, 4)) * np.arange(n)) % V
            ids[r, t:t + n] = seq
            labels[r, t + 2:t + n] = seq[2:]
            pos[r, t:t + n] = np.arange(n)
            att[r, t:t + n] = 1
            t += n
    out = dict(input_ids=ids, labels=labels, position_ids=pos)
    if mask:
        out["attention_mask"] = att
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A random fp32 base saved as a Hugging Face folder (NF4-quantized on load by the tests).
    init_std 0.1 so that a frozen random lm_head still lets an adapter reach confident logits."""
    path = tmp_path_factory.mktemp("base") / "base"
    Model.from_config(ARCH, seed=1, init_std=0.1).save_pretrained(path)
    return path


def lora_model(base, dropout=0.0, nf4=True):
    m = Model.from_pretrained(base, quantize="nf4" if nf4 else None)
    m.add_lora(LoraConfig(r=8, alpha=16, dropout=dropout, target_modules="all-linear", seed=3))
    return m


def cfg(tmp_path, **kw):
    kw.setdefault("output_dir", str(tmp_path / "run"))
    kw.setdefault("progress", False)
    return TrainConfig(**kw)


def train_losses(output_dir) -> list[float]:
    return [d["loss"] for d in read_metrics(os.path.join(output_dir, "metrics.jsonl")) if d["type"] == "train"]


# ---- schedule -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,warmup,total,min_ratio", [
    ("cosine", 0, 37, 0.0), ("cosine", 5, 50, 0.0), ("linear", 0, 20, 0.0), ("linear", 7, 31, 0.0),
    ("constant", 4, 15, 0.0), ("cosine", 3, 40, 0.1)])
def test_schedule_matches_transformers(kind, warmup, total, min_ratio):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    if kind == "cosine" and min_ratio > 0:
        sched = transformers.get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, total, min_lr_rate=min_ratio)
    else:
        make = {"cosine": transformers.get_cosine_schedule_with_warmup,
                "linear": transformers.get_linear_schedule_with_warmup}.get(kind)
        sched = make(opt, warmup, total) if make else transformers.get_constant_schedule_with_warmup(opt, warmup)
    c = TrainConfig(learning_rate=3e-4, lr_scheduler=kind, warmup_steps=warmup, min_lr_ratio=min_ratio)
    for step in range(total + 1):
        ref = sched.get_last_lr()[0]
        # 1e-12 relative (exact zeros at warmup start / linear end compared absolutely).
        assert lr_at(step, c, total) == pytest.approx(ref, rel=1e-12, abs=1e-18), (kind, step)
        opt.step()
        sched.step()


def test_warmup_ratio_rounds_up_like_transformers():
    c = TrainConfig(warmup_ratio=0.1, learning_rate=1.0, lr_scheduler="constant")
    # ceil(0.1 * 25) = 3 warmup steps: 0, 1/3, 2/3, then 1.
    assert [lr_at(s, c, 25) for s in range(4)] == [0.0, 1 / 3, 2 / 3, 1.0]


# ---- configs ------------------------------------------------------------------------------------

def test_config_yaml_sections_and_overrides(tmp_path):
    p = tmp_path / "demo.yaml"
    p.write_text("train:\n  learning_rate: 1.0e-3\n  betas: [0.8, 0.95]\n  eval_batches: 3\n"
                 "data:\n  whatever: 1\n")
    c = load_config(TrainConfig, p, ["train.micro_batch_size=4", "train.betas=[0.5, 0.6]",
                                     "train.eval_batches=null", "train.gradient_checkpointing=true"], section="train")
    assert c.learning_rate == 1e-3 and c.micro_batch_size == 4 and c.betas == (0.5, 0.6)
    assert c.eval_batches is None and c.gradient_checkpointing is True and c.lr_scheduler == "cosine"
    assert load_config(TrainConfig) == TrainConfig()
    # YAML 1.1 reads "2e-4" as a string; float fields accept it, non-numbers stay errors
    assert load_config(TrainConfig, None, ["train.learning_rate=2e-4"], section="train").learning_rate == 2e-4
    with pytest.raises(ConfigError, match="learning_rate: expected float, got str 'fast'"):
        load_config(TrainConfig, None, ["train.learning_rate=fast"], section="train")
    text = config_help(TrainConfig, "train")
    assert "train.learning_rate (float, default 0.0002): peak learning rate" in text
    assert text.count("\n") + 1 == len(TrainConfig.__dataclass_fields__)


def test_config_nested_dataclasses(tmp_path):
    from dataclasses import dataclass, field

    @dataclass
    class Run:
        name: str = "x"
        train: TrainConfig = field(default_factory=TrainConfig)

    p = tmp_path / "run.yaml"
    p.write_text("name: demo\ntrain:\n  max_steps: 7\n")
    r = load_config(Run, p, ["train.mode=full"])
    assert r.name == "demo" and r.train.max_steps == 7 and r.train.mode == "full"
    with pytest.raises(ConfigError, match=r"run\.yaml with overrides .*: train\.lr_scheduler: must be one of"):
        load_config(Run, p, ["train.lr_scheduler=step"])
    with pytest.raises(ConfigError, match=r"override 'name.x=1': name: is a str, not a section"):
        load_config(Run, p, ["name.x=1"])


@pytest.mark.parametrize("text,message", [
    ("train:\n  micro_batch_size: two\n", r"demo\.yaml: train\.micro_batch_size: expected int, got str 'two'"),
    ("train:\n  epochs: true\n", r"demo\.yaml: train\.epochs: expected int, got bool"),  # a bool is no int
    ("train:\n  betas: [0.9]\n", r"demo\.yaml: train\.betas: expected 2 items"),
    ("train:\n  micro_batch_size: 0\n", r"demo\.yaml: train\.micro_batch_size: must be >= 1"),
    ("train: [1, 2]\n", r"demo\.yaml: train: expected a mapping"),
    ("train:\n  a: [1\n", r"demo\.yaml: not valid YAML"),
], ids=["str-for-int", "bool-for-int", "short-tuple", "out-of-range", "section-not-mapping", "bad-yaml"])
def test_config_bad_values_name_file_and_key(tmp_path, text, message):
    p = tmp_path / "demo.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(TrainConfig, p, section="train")


def test_config_errors_name_file_and_key(tmp_path):
    p = tmp_path / "demo.yaml"
    p.write_text("train:\n  lerning_rate: 1.0e-3\n")
    with pytest.raises(ValueError) as e:
        load_config(TrainConfig, p, section="train")
    assert str(e.value) == f"{p}: train.lerning_rate: unknown key (did you mean learning_rate?)"

    with pytest.raises(ValueError, match=r"missing\.yaml: config file not found"):
        load_config(TrainConfig, tmp_path / "missing.yaml")

    p.write_text("train: {}\n")
    with pytest.raises(ValueError, match=r"override 'train.max_stpes=3': train\.max_stpes: unknown key "
                                         r"\(did you mean max_steps\?\)"):
        load_config(TrainConfig, p, ["train.max_stpes=3"], section="train")
    with pytest.raises(ValueError, match=r"override 'train.max_steps': expected section\.key=value"):
        load_config(TrainConfig, p, ["train.max_steps"], section="train")
    with pytest.raises(ValueError, match=r"override 'model.r=3': key must start with 'train.'"):
        load_config(TrainConfig, p, ["model.r=3"], section="train")
    with pytest.raises(ValueError, match=r"train\.learning_rate: expected float, got str 'fast'"):
        load_config(TrainConfig, p, ["train.learning_rate=fast"], section="train")


def test_config_hostile_yaml_is_a_config_error(tmp_path):
    # Found by fuzzing: RecursionError, UnicodeDecodeError, ValueError, IsADirectoryError escaped,
    # and a 366-byte alias bomb in a mistyped value hung while repr'ing ~10^8 items into the message.
    p = tmp_path / "demo.yaml"
    levels = ["&l0 [x, x, x, x, x, x, x, x, x, x]"] + [f"&l{k} [" + ", ".join([f"*l{k - 1}"] * 10) + "]"
                                                      for k in range(1, 8)]
    for raw, message in ((b"train:\n  output_dir: [" + ", ".join(levels).encode() + b"]\n",
                          r"demo\.yaml: train\.output_dir: expected str, got list \[\["),
                         (b"train:\n  output_dir: " + b"[" * 3000 + b"]" * 3000, r"demo\.yaml: not valid YAML"),
                         (b"train:\n  output_dir: \xff\n", r"demo\.yaml: not valid YAML: UnicodeDecodeError"),
                         (b"train: {learning_rate: !!float x}\n", r"demo\.yaml: not valid YAML: ValueError"),
                         (b"train: {seed: " + b"9" * 5000 + b"}\n", r"demo\.yaml: not valid YAML: ValueError")):
        p.write_bytes(raw)
        with pytest.raises(ConfigError, match=message) as info:
            load_config(TrainConfig, p, section="train")
        assert len(str(info.value)) < 2000
    with pytest.raises(ConfigError, match=rf"{tmp_path}: cannot read config file"):
        load_config(TrainConfig, tmp_path)
    for override in ("train.output_dir=" + "[" * 3000, "train.seed=" + "9" * 5000, "train.seed=!!int x"):
        with pytest.raises(ConfigError, match=r"override 'train\.\w+=.*': value is not valid YAML"):
            load_config(TrainConfig, None, [override], section="train")


# ---- training runs ------------------------------------------------------------------------------

def test_lora_on_nf4_learns_and_writes_metrics(base, tmp_path):
    model = lora_model(base, dropout=0.05)
    c = cfg(tmp_path, learning_rate=1e-2, max_steps=60, micro_batch_size=4, grad_accum_steps=2, warmup_steps=4,
            eval_every=20, save_every=30, progress=True)
    dev = {"classify": packed(1, 6), "qa": packed(2, 5, mask=False)}
    summary = Trainer(model, packed(0, 32), dev, c).train()
    losses = train_losses(c.output_dir)
    assert len(losses) == 60 and summary["global_step"] == 60
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])  # ~4.4 -> ~2.6 observed
    assert summary["dev_loss"]["classify"] < 0.8 * 4.3 and summary["dev_loss"]["qa"] < 0.8 * 4.3
    lines = read_metrics(os.path.join(c.output_dir, "metrics.jsonl"))
    train_keys = {"type", "step", "epoch", "loss", "lr", "grad_norm", "tokens", "target_tokens", "tokens_per_s",
                  "elapsed"}
    assert all(set(d) == train_keys for d in lines if d["type"] == "train")
    evals = [d for d in lines if d["type"] == "eval"]
    assert [d["step"] for d in evals] == [20, 40, 60] and all("dev_loss/qa" in d for d in evals)
    assert lines[0]["lr"] == 0.0 and lines[0]["epoch"] == 0.25  # 4 steps per epoch; warmup starts at 0
    png = os.path.join(c.output_dir, "loss_curve.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert [p.name for _, p in list_checkpoints(c.output_dir)] == ["checkpoint-000030", "checkpoint-000060"]
    assert sorted(os.listdir(latest_checkpoint(c.output_dir))) == [
        "adapter", "manifest.json", "optimizer.json", "optimizer.safetensors", "trainer_state.json"]
    # The saved adapter is a PEFT folder that loads as a new adapter.
    m2 = Model.from_pretrained(base, quantize="nf4")
    m2.load_adapter(os.path.join(summary["checkpoint"], "adapter"))
    ids = packed(1, 2)["input_ids"]
    np.testing.assert_array_equal(m2.forward(ids), model.forward(ids))


def test_full_parameter_pretraining_learns(tmp_path):
    model = Model.from_config(ARCH, seed=5, init_std=0.02)
    c = cfg(tmp_path, mode="full", learning_rate=3e-3, max_steps=40, micro_batch_size=8, warmup_steps=3,
            lr_scheduler="linear", weight_decay=0.01)
    summary = Trainer(model, packed(3, 24, mask=False), packed(4, 4), c).train()
    losses = train_losses(c.output_dir)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert summary["dev_loss"]["dev"] < 0.8 * np.log(V)
    saved = Model.from_pretrained(os.path.join(summary["checkpoint"], "model"))
    np.testing.assert_array_equal(saved.get_weight("model.embed_tokens.weight"),
                                  model.get_weight("model.embed_tokens.weight"))


def test_gradient_accumulation_matches_one_big_batch(base, tmp_path):
    data = packed(6, 4)
    data["labels"][0, 20:] = -100  # unequal target counts per row
    data["labels"][2, 8:] = -100
    counts = (data["labels"][:, 1:] != -100).sum(axis=1)
    assert len(set(counts.tolist())) == 4

    def run(micro, accum, name):
        model = lora_model(base, nf4=False)
        trainer = Trainer(model, data, None, cfg(tmp_path, output_dir=str(tmp_path / name), learning_rate=1e-2,
                                                 max_steps=3, micro_batch_size=micro, grad_accum_steps=accum,
                                                 max_grad_norm=0.0))
        grads, step = [], trainer.optimizer.step

        def capture():  # the accumulated gradient each optimizer step sees
            grads.append(model.gradients())
            step()
        trainer.optimizer.step = capture
        trainer.train()
        weights = {m: model.lora_weights(m) for m in model._core.adapter_modules("default")}
        return grads, weights, train_losses(trainer.output_dir)

    g1, w1, l1 = run(4, 1, "big")
    g4, w4, l4 = run(1, 4, "accum")
    np.testing.assert_allclose(l4, l1, rtol=1e-6)
    for a, b in zip(g1, g4):
        for k in a:  # fp32 sums in another order: 1e-5 of the tensor's largest entry
            assert np.abs(b[k] - a[k]).max() <= 1e-5 * np.abs(a[k]).max(), k
    # Adam divides by sqrt(v): entries whose gradient is ~0 move by noise-sized steps, so the
    # weights after 3 steps of lr 1e-2 (moves of up to 3e-2) are compared to 1e-6 absolute.
    for k in w1:
        for x, y in zip(w1[k], w4[k]):
            np.testing.assert_allclose(y, x, rtol=0, atol=1e-6)


class KillAt:
    """Simulates a crash: raises right after the on_step of step k (after its checkpoint, if any)."""

    def __init__(self, k):
        self.k = k

    def on_step(self, step, metrics):
        if step == self.k:
            raise RuntimeError(f"killed at step {step}")


def killed_and_resumed(make_model, tmp_path, kill_at, resumes_at, **kw):
    """Runs `kw` straight through and again killed after step `kill_at` then resumed from the
    latest checkpoint in a fresh model; checks the two loss curves are equal exactly. Returns
    (straight model, resumed model)."""
    data, dev = packed(7, 12), packed(8, 3)
    straight = make_model()
    Trainer(straight, data, dev, cfg(tmp_path, output_dir=str(tmp_path / "straight"), **kw)).train()
    out = str(tmp_path / "killed")
    with pytest.raises(RuntimeError, match="killed"):
        Trainer(make_model(), data, dev, cfg(tmp_path, output_dir=out, **kw), callbacks=[KillAt(kill_at)]).train()
    assert latest_checkpoint(out).name == f"checkpoint-{resumes_at:06d}"

    resumed = make_model()  # a fresh process: same construction
    summary = Trainer(resumed, data, dev, cfg(tmp_path, output_dir=out, **kw)).train(resume_from="latest")
    assert summary["resumed_from"].endswith(f"checkpoint-{resumes_at:06d}")
    # Exact float equality, step for step (the same arithmetic in the same order).
    assert train_losses(out) == train_losses(tmp_path / "straight")
    lines_a = read_metrics(os.path.join(out, "metrics.jsonl"))
    lines_b = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    assert [(d["type"], d["step"]) for d in lines_a] == [(d["type"], d["step"]) for d in lines_b]
    assert [d.get("dev_loss/dev") for d in lines_a] == [d.get("dev_loss/dev") for d in lines_b]
    return straight, resumed


@pytest.mark.parametrize("save_every,kill_at,resumes_at", [(2, 5, 4), (3, 3, 3)])
def test_resume_reproduces_the_uninterrupted_run_exactly(base, tmp_path, save_every, kill_at, resumes_at):
    # 12 rows, 2 rows per micro-batch, 2 micro-batches per step: 3 steps per epoch, so 8 steps cross
    # two epoch boundaries; (3, 3) resumes exactly at an epoch boundary. LoRA dropout 0.2 is on.
    straight, resumed = killed_and_resumed(
        lambda: lora_model(base, dropout=0.2), tmp_path, kill_at, resumes_at, learning_rate=5e-3, max_steps=8,
        micro_batch_size=2, grad_accum_steps=2, warmup_steps=2, save_every=save_every, eval_every=4, keep_last=3,
        seed=11)
    for m in straight._core.adapter_modules("default"):
        for x, y in zip(straight.lora_weights(m), resumed.lora_weights(m)):
            np.testing.assert_array_equal(x, y)
    assert resumed.dropout_step == straight.dropout_step == 8 * 2


def test_set_weight_keeps_existing_parameter_views_valid():
    """Resuming full-parameter training loads weights into a model whose optimizer already holds
    views of them: set_weight must write into the same buffers (it used to reallocate them,
    leaving the optimizer with dangling pointers)."""
    m = Model.from_config(ARCH, seed=2)
    m.train_all_parameters()
    params = m.trainable_parameters()
    name = "model.layers.0.mlp.up_proj.weight"
    new = np.random.default_rng(0).normal(size=m.get_weight(name).shape).astype(np.float32)
    m.set_weight(name, new)
    np.testing.assert_array_equal(params.value(name), new)
    d = packed(0, 2)
    m.forward_backward(d["input_ids"], d["labels"])
    np.testing.assert_array_equal(params.grad(name), m.gradients()[name])
    assert np.isfinite(ecomllm.clip_grad_norm(params, 1.0))


def test_resume_full_parameter_mode_exactly(tmp_path):
    straight, resumed = killed_and_resumed(
        lambda: Model.from_config(ARCH, seed=4), tmp_path, 4, 3, mode="full", learning_rate=3e-3, max_steps=6,
        micro_batch_size=3, grad_accum_steps=1, save_every=3, eval_every=2, weight_decay=0.01,
        lr_scheduler="linear")
    for name in straight.weight_names():
        np.testing.assert_array_equal(straight.get_weight(name), resumed.get_weight(name))


def test_resume_without_the_dropout_counter_would_differ(base, tmp_path):
    """The resume test can fail: with the dropout counter reset, the masks and losses change."""
    data = packed(7, 12)
    kw = dict(learning_rate=5e-3, max_steps=4, micro_batch_size=2, grad_accum_steps=2, save_every=2, seed=11)
    a = lora_model(base, dropout=0.2)
    Trainer(a, data, None, cfg(tmp_path, output_dir=str(tmp_path / "a"), **kw)).train()
    b = lora_model(base, dropout=0.2)
    t = Trainer(b, data, None, cfg(tmp_path, output_dir=str(tmp_path / "b"), **kw), callbacks=[KillAt(2)])
    with pytest.raises(RuntimeError):
        t.train()

    c = lora_model(base, dropout=0.2)
    t = Trainer(c, data, None, cfg(tmp_path, output_dir=str(tmp_path / "b"), **kw))
    load = t._load_state
    t._load_state = lambda state, src: (load(state, src), setattr(c, "dropout_step", 0))
    t.train(resume_from="latest")
    la, lb = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert la[:2] == lb[:2] and la[2:] != lb[2:]


def test_crash_during_checkpoint_write_keeps_the_previous_one(base, tmp_path, monkeypatch):
    data = packed(9, 8)
    out = tmp_path / "run"
    kw = dict(learning_rate=5e-3, max_steps=6, micro_batch_size=2, save_every=2, keep_last=1)
    real = ckpt.write_json

    def failing_write(path, obj):  # dies midway through checkpoint-4: adapter + optimizer are written
        if os.path.basename(path) == "trainer_state.json" and obj["global_step"] == 4:
            with open(path, "w") as f:
                f.write('{"global_st')
            raise OSError("disk full")
        real(path, obj)

    monkeypatch.setattr(ckpt, "write_json", failing_write)
    with pytest.raises(OSError, match="disk full"):
        Trainer(lora_model(base), data, None, cfg(tmp_path, **kw)).train()
    monkeypatch.setattr(ckpt, "write_json", real)
    assert latest_checkpoint(out).name == "checkpoint-000002"
    assert sorted(os.listdir(out)) == ["checkpoint-000002", "loss_curve.png", "metrics.jsonl"]
    # What a hard kill could leave behind is ignored too: a temp folder and a folder without manifest.
    (out / ".tmp-checkpoint-000004-x").mkdir()
    (out / ".tmp-checkpoint-000004-x" / "optimizer.json").write_text("{")
    (out / "checkpoint-000005").mkdir()
    assert latest_checkpoint(out).name == "checkpoint-000002"
    read_manifest(out / "checkpoint-000002", verify=True)

    summary = Trainer(lora_model(base), data, None, cfg(tmp_path, **kw)).train(resume_from="latest")
    assert summary["global_step"] == 6 and not (out / ".tmp-checkpoint-000004-x").exists()
    assert [p.name for _, p in list_checkpoints(out)] == ["checkpoint-000006"]
    assert len(train_losses(out)) == 6

    # A corrupted file (same size, other bytes) is caught by the sha256 check on load.
    opt_file = latest_checkpoint(out) / "optimizer.safetensors"
    raw = bytearray(opt_file.read_bytes())
    raw[-1] ^= 0xFF
    opt_file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256"):
        read_manifest(latest_checkpoint(out), verify=True)

    # Hostile manifests (found by fuzzing: AttributeError, UnicodeDecodeError, RecursionError, or
    # files outside the folder stat'ed) are ValueErrors naming the manifest.
    ck = latest_checkpoint(out)
    mf = ck / "manifest.json"
    good = json.loads(mf.read_text())
    first = next(iter(good["files"]))
    for bad in ({**good, "files": {first: 3}}, {**good, "files": {first: None}},
                {**good, "files": {"../../etc/passwd": {"size": 1}}}, {**good, "files": {"/etc/passwd": {"size": 1}}},
                {**good, "files": {"x" * 5000: {"size": 1}}}):  # OSError: file name too long
        mf.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="manifest.json"):
            read_manifest(ck)
    for raw in (b'{"format": "\xff"}', b"[" * 100_000 + b"]" * 100_000):
        mf.write_bytes(raw)
        with pytest.raises(ValueError, match="manifest.json"):
            read_manifest(ck)


def test_read_training_state_hostile_json_files(tmp_path):
    # Found by fuzzing: KeyError, TypeError, RuntimeError (step >= 2**63), RecursionError,
    # UnicodeDecodeError and JSONDecodeError without the file, and a trainer state list returned.
    m = Model.from_config(dict(ARCH, num_hidden_layers=1))
    m.add_lora()
    opt = ecomllm.AdamW(m.trainable_parameters())
    ck = ckpt.save_checkpoint(tmp_path, 1, lambda d: ckpt.write_training_state(d, m, opt, {"step": 1}, "lora"))

    def put(rel, data):  # new contents, manifest updated to match
        (ck / rel).write_bytes(data)
        manifest = json.loads((ck / "manifest.json").read_text())
        manifest["files"][rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (ck / "manifest.json").write_text(json.dumps(manifest))

    assert ckpt.read_training_state(ck, m, opt, "lora") == {"step": 1}
    good = {rel: (ck / rel).read_bytes() for rel in ("optimizer.json", "trainer_state.json")}
    for rel, data, words in (("optimizer.json", b"{}", "step must be an integer"),
                             ("optimizer.json", b"[1]", "must be a JSON object, got list"),
                             ("optimizer.json", b'{"step": 9223372036854775808}', "step must be an integer"),
                             ("optimizer.json", b'{"step": true}', "step must be an integer"),
                             ("optimizer.json", b"[" * 100_000, "RecursionError"),
                             ("optimizer.json", b"{", "JSONDecodeError"),
                             ("trainer_state.json", b"\xff", "UnicodeDecodeError"),
                             ("trainer_state.json", b"[1, 2]", "must be a JSON object, got list")):
        put(rel, data)
        with pytest.raises(ValueError) as info:
            ckpt.read_training_state(ck, m, opt, "lora")
        assert str(info.value).startswith(f"{ck / rel}: ") and words in str(info.value), str(info.value)
        put(rel, good[rel])
    assert ckpt.read_training_state(ck, m, opt, "lora") == {"step": 1}
    # Tensors of other shapes than the model's: the core's check, with the file in front.
    from ecomllm.safetensors import load_safetensors, save_safetensors
    for rel in ("optimizer.safetensors", "adapter/adapter_model.safetensors"):
        tensors = load_safetensors(ck / rel, mmap=False)
        key = sorted(tensors)[0]
        save_safetensors(tmp_path / "bad.safetensors", {**tensors, key: np.zeros((3, 5), np.float32)})
        original = (ck / rel).read_bytes()
        put(rel, (tmp_path / "bad.safetensors").read_bytes())
        with pytest.raises(ValueError) as info:
            ckpt.read_training_state(ck, m, opt, "lora")
        assert str(info.value).startswith(f"{ck / rel}: "), str(info.value)
        put(rel, original)
    assert ckpt.read_training_state(ck, m, opt, "lora") == {"step": 1}


def test_malformed_trainer_state_fields_are_value_errors(base, tmp_path):
    # A trainer state that is an object but lacks or mistypes fields raised KeyError / TypeError.
    t = Trainer(lora_model(base), packed(10, 6), None, cfg(tmp_path, max_steps=2, micro_batch_size=2))
    fmt = {"format": "ecomllm-trainer-state"}
    good = {**fmt, "num_rows": len(t.train_data), "steps_per_epoch": t.steps_per_epoch, "total_steps": t.total_steps}
    for state in (fmt, {**good, "global_step": [1]}, {**good, "global_step": 1, "epoch": None}):
        with pytest.raises(ValueError, match="trainer_state.json: malformed trainer state"):
            t._load_state(state, tmp_path)


def test_keep_last_and_stop_callback(base, tmp_path):
    data = packed(10, 6)
    c = cfg(tmp_path, max_steps=10, micro_batch_size=2, save_every=1, keep_last=2)
    seen = []

    def on_step(step, metrics):
        seen.append(step)
        if step == 5:
            raise TrainingStopped

    summary = Trainer(lora_model(base), data, None, c, callbacks=[on_step]).train()
    assert summary["stopped_early"] and summary["global_step"] == 5 and seen == [1, 2, 3, 4, 5]
    assert [p.name for _, p in list_checkpoints(c.output_dir)] == ["checkpoint-000004", "checkpoint-000005"]
    state = json.loads((latest_checkpoint(c.output_dir) / "trainer_state.json").read_text())
    assert state["global_step"] == 5 and state["epoch"] == 1 and state["step_in_epoch"] == 2
    assert state["config"]["keep_last"] == 2 and len(state["history"]) == 5


def test_trainer_input_errors(base, tmp_path):
    plain = Model.from_config(ARCH)
    with pytest.raises(ValueError, match="add_lora"):
        Trainer(plain, packed(0, 2), None, cfg(tmp_path))
    d = packed(0, 4)
    d["labels"] = d["labels"][:, :10]
    with pytest.raises(ValueError, match=r"train_data\.labels: shape \(4, 10\) differs"):
        Trainer(lora_model(base), d, None, cfg(tmp_path))
    with pytest.raises(ValueError, match="missing the array 'labels'"):
        Trainer(lora_model(base), {"input_ids": d["input_ids"]}, None, cfg(tmp_path))
    c = cfg(tmp_path, max_steps=2, micro_batch_size=2)
    Trainer(lora_model(base), packed(0, 4), None, c).train()
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        Trainer(lora_model(base), packed(0, 4), None, c).train()
    with pytest.raises(ValueError, match="training rows"):
        Trainer(lora_model(base), packed(0, 6), None, c).train(resume_from="latest")


def test_matmul_precision_applies_to_the_run_only(base, tmp_path):
    """``train.matmul_precision`` sets the products' precision for the run (callbacks see it), the
    summary reports it, and the process setting comes back afterwards, also when a step raises."""
    import ecomllm
    seen = []
    c = cfg(tmp_path, max_steps=2, micro_batch_size=2, matmul_precision="medium")
    summary = Trainer(lora_model(base), packed(10, 6), None, c,
                      callbacks=[lambda step, m: seen.append(ecomllm.get_float32_matmul_precision())]).train()
    assert seen == ["medium", "medium"] and summary["matmul_precision"] == "medium"
    assert ecomllm.get_float32_matmul_precision() == "highest"
    summary = Trainer(lora_model(base), packed(10, 6), None,
                      cfg(tmp_path, output_dir=str(tmp_path / "b"), max_steps=1, micro_batch_size=2)).train()
    assert summary["matmul_precision"] == "highest"  # null: the process setting

    def boom(step, metrics):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        Trainer(lora_model(base), packed(10, 6), None, cfg(tmp_path, output_dir=str(tmp_path / "c"), max_steps=2,
                                                           micro_batch_size=2, matmul_precision="medium"),
                callbacks=[boom]).train()
    assert ecomllm.get_float32_matmul_precision() == "highest"
    with pytest.raises(ConfigError, match="matmul_precision"):
        load_config(TrainConfig, None, ["train.matmul_precision=low"], section="train")

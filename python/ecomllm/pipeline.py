"""The end-to-end recipe behind the command line: data -> tokenizer -> pre-training -> QLoRA SFT
-> evaluation. Each stage reads the previous stage's files from the run directory, so stages run
separately (``ecomllm prepare-data``, ``train-tokenizer``, ``pretrain``, ``train``, ``evaluate``)
or all at once (``ecomllm demo``).

Run directory layout (``run_dir``, default ``runs/demo``)::

    data/catalog/          the bundled catalogue (taxonomy.txt, products.mave.jsonl, qa.jsonl, ...)
    data/examples.{train,dev,test,ood}.jsonl   instruction records (ecomllm.data.Example)
    data/corpus.txt        plain text for the tokenizer and pre-training (train products only)
    tokenizer.model        sentencepiece model
    base/                  pre-trained base model, Hugging Face format (+ tokenizer.model)
    pretrain/, sft/        trainer output: checkpoints, metrics.jsonl, loss.png
    adapter/               the fine-tuned LoRA adapter, PEFT format
    report.json, report.md evaluation of base vs fine-tuned
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import Example, to_dict
from .data.packing import PackedDataset, pack_examples, text_examples
from .data.templates import TEMPLATES, encode_examples, encode_prompt
from .eval import TASK_METRICS
from .generate import greedy_generate
from .model import LoraConfig, Model
from .tokenizer import Tokenizer
from .train import TrainConfig, Trainer
from .train.config import option

TASKS = ("classify", "extract", "qa")


# ---- configuration --------------------------------------------------------------------------
# Every field has a help line (shown by `ecomllm <command> --help`); YAML files in configs/ set
# them by section, and `section.key=value` arguments override them.
@dataclass
class SourceConfig:
    format: str = option("bundled", "bundled (generated offline catalogue) | mave | offers | flipkart | amazonqa | "
                                    "product_qa | ecinstruct")
    path: str = option("", "the file to load (not used by bundled)")


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()],
                                        metadata={"help": "where products, questions and instructions come from"})
    seed: int = option(0, "seed of the bundled generator, the task mix and the splits")
    n_products: int = option(3000, "bundled catalogue: products to generate")
    qa_per_product: int = option(2, "bundled catalogue: questions per product")
    n_general: int = option(400, "bundled catalogue: general instructions")
    tasks: list[str] = option(list(TASKS), "tasks to build examples for")
    general_share: float = option(0.1, "fraction of general instructions in the mix (against forgetting)")
    dev_fraction: float = option(0.1, "fraction of products whose examples go to dev")
    test_fraction: float = option(0.1, "fraction of products whose examples go to test")
    ood_by: str = option("category", "hold out whole categories (category) or brands (brand) as the OOD split")
    ood_fraction: float = option(0.05, "fraction of examples held out as OOD")


@dataclass
class TokenizerConfig:
    vocab_size: int = option(2000, "sentencepiece vocabulary size")
    model_type: str = option("bpe", "bpe (Llama style, byte fallback) or unigram")
    path: str = option("", "use this tokenizer.model instead of the run's own")


@dataclass
class ModelShapeConfig:
    hidden_size: int = option(256, "model width")
    intermediate_size: int = option(688, "SwiGLU MLP width")
    num_hidden_layers: int = option(4, "decoder layers")
    num_attention_heads: int = option(8, "query heads")
    num_key_value_heads: int = option(4, "key/value heads (grouped-query attention)")
    max_position_embeddings: int = option(1024, "longest sequence")
    rope_theta: float = option(10000.0, "RoPE base")
    tie_word_embeddings: bool = option(True, "share the embedding and lm_head weights")


@dataclass
class PretrainConfig:
    seq_len: int = option(256, "tokens per packed row")
    model: ModelShapeConfig = field(default_factory=ModelShapeConfig, metadata={"help": "the base model's shape"})
    train: TrainConfig = field(default_factory=lambda: TrainConfig(mode="full", learning_rate=1e-3),
                               metadata={"help": "pre-training hyper-parameters"})


@dataclass
class LoraSectionConfig:
    r: int = option(16, "LoRA rank")
    alpha: float = option(32.0, "LoRA alpha (scale = alpha / r)")
    dropout: float = option(0.05, "dropout on the adapter input")
    target_modules: str = option("all-linear", "all-linear, or comma-separated module names (q_proj,v_proj)")
    use_rslora: bool = option(False, "rank-stabilised scaling alpha / sqrt(r)")


@dataclass
class SFTConfig:
    base_model: str = option("", "Hugging Face model folder to fine-tune; empty = the run's pre-trained base")
    quantize: str = option("nf4", "nf4 (QLoRA) or none (LoRA on an fp32 base)")
    template: str = option("plain", "prompt format: plain (task prefix) or mistral ([INST] ... [/INST])")
    seq_len: int = option(256, "tokens per packed row; longer examples are truncated")
    packing: bool = option(True, "pack several examples per row")
    lora: LoraSectionConfig = field(default_factory=LoraSectionConfig, metadata={"help": "the adapter"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "fine-tuning hyper-parameters"})


@dataclass
class EvalConfig:
    examples_per_task: int = option(40, "dev examples per task decoded greedily for the metrics")
    show_per_task: int = option(3, "completions shown per task")
    max_new_tokens: int = option(64, "longest generated answer")


@dataclass
class PipelineConfig:
    run_dir: str = option("runs/demo", "folder of every stage's inputs and outputs")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "data preparation"})
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig, metadata={"help": "tokenizer"})
    pretrain: PretrainConfig = field(default_factory=PretrainConfig, metadata={"help": "pre-training"})
    sft: SFTConfig = field(default_factory=SFTConfig, metadata={"help": "QLoRA fine-tuning"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "evaluation"})


def _log(msg: str) -> None:
    print(f"[ecomllm {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _write_jsonl(path: Path, records) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(to_dict(r), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_examples(path: str | Path) -> list[Example]:
    """Instruction records written by prepare_data (one JSON object per line)."""
    from .data.formats import load_records
    return load_records(path, Example)


# ---- stage 1: data --------------------------------------------------------------------------
def _load_sources(cfg: DataConfig, out: Path):
    """(products, qa items, general examples, ready-made examples, corpus catalog) from the sources."""
    from .data import catalog as bundled
    from .data import formats
    products, qa, general, ready = [], [], [], []
    loaders = {"mave": formats.load_mave, "offers": formats.load_offers, "flipkart": formats.load_flipkart,
               "amazonqa": formats.load_amazonqa, "product_qa": formats.load_product_qa_csv,
               "ecinstruct": formats.load_ecinstruct}
    for i, src in enumerate(cfg.sources):
        if src.format == "bundled":
            cat = bundled.generate_catalog(seed=cfg.seed, n_products=cfg.n_products,
                                           qa_per_product=cfg.qa_per_product, n_general=cfg.n_general)
            bundled.write_catalog(cat, out / "catalog")
            products += cat.products
            qa += cat.qa
            general += cat.general
            continue
        if src.format not in loaders:
            raise ValueError(f"data.sources[{i}].format: unknown format {src.format!r}; expected bundled or one "
                             f"of {sorted(loaders)}")
        if not src.path or not Path(src.path).is_file():
            raise FileNotFoundError(f"data.sources[{i}].path: no such file {src.path!r}")
        records = loaders[src.format](src.path)
        if src.format in ("mave", "offers", "flipkart"):
            products += records
        elif src.format in ("amazonqa", "product_qa"):
            qa += records
        else:
            ready += records
    return products, qa, general, ready


def prepare_data(cfg: PipelineConfig) -> dict:
    """Build the instruction data set and the pre-training corpus under run_dir/data."""
    from .data import build_instruction_set, ood_split
    from .data.catalog import Catalog, pretraining_corpus
    d = cfg.data
    out = Path(cfg.run_dir) / "data"
    out.mkdir(parents=True, exist_ok=True)
    products, qa, general, ready = _load_sources(d, out)
    _log(f"data: {len(products)} products, {len(qa)} questions, {len(general)} general instructions, "
         f"{len(ready)} ready-made examples")
    examples = build_instruction_set(products, qa, general, general_share=d.general_share, tasks=tuple(d.tasks),
                                     seed=d.seed, extra=ready)
    fractions = {"train": 1 - d.dev_fraction - d.test_fraction, "dev": d.dev_fraction, "test": d.test_fraction}
    splits = ood_split(examples, by=d.ood_by, fraction=d.ood_fraction, seed=d.seed, fractions=fractions)
    for name, exs in splits.items():
        _write_jsonl(out / f"examples.{name}.jsonl", exs)
    # Pre-training text: only products whose examples are in train, so dev/test stay unseen.
    train_ids = {e.meta.get("product_id") for e in splits["train"]}
    train_products = [p for p in products if p.id in train_ids]
    corpus = list(pretraining_corpus(Catalog(taxonomy_paths=[list(c) for c in sorted({tuple(p.category) for p in train_products if p.category})],
                                             products=train_products, qa=[q for q in qa if q.product_id in train_ids],
                                             general=general)))
    tmp = out / "corpus.txt.tmp"
    tmp.write_text("\n".join(line.replace("\n", " ") for line in corpus) + "\n", encoding="utf-8")
    os.replace(tmp, out / "corpus.txt")
    summary = {name: len(exs) for name, exs in splits.items()}
    summary["corpus_lines"] = len(corpus)
    for name in ("train", "dev"):
        summary[f"{name}_tasks"] = dict(sorted(_count_tasks(splits[name]).items()))
    _log(f"data: examples {summary}")
    return summary


def _count_tasks(examples) -> dict:
    counts: dict[str, int] = {}
    for e in examples:
        counts[e.task] = counts.get(e.task, 0) + 1
    return counts


# ---- stage 2: tokenizer -----------------------------------------------------------------------
SPECIAL_SYMBOLS = ["[CLASSIFY]", "[EXTRACT]", "[QA]", "[INST]", "[/INST]"]


def tokenizer_path(cfg: PipelineConfig) -> Path:
    return Path(cfg.tokenizer.path) if cfg.tokenizer.path else Path(cfg.run_dir) / "tokenizer.model"


def train_tokenizer(cfg: PipelineConfig) -> dict:
    """Train a sentencepiece BPE tokenizer (Llama conventions: byte fallback, <unk>=0 <s>=1 </s>=2)
    on the corpus plus the rendered train examples (so JSON and prompt markup tokenize well)."""
    data = Path(cfg.run_dir) / "data"
    corpus = data / "corpus.txt"
    if not corpus.is_file():
        raise FileNotFoundError(f"{corpus} not found: run `ecomllm prepare-data` first")
    from .data.templates import render_text
    extra = data / "tokenizer_extra.txt"
    with open(extra, "w", encoding="utf-8") as f:
        for e in read_examples(data / "examples.train.jsonl"):
            f.write(render_text(e, cfg.sft.template).replace("\n", " ") + "\n")
    out = Path(cfg.run_dir) / "tokenizer.model"
    t0 = time.perf_counter()
    tok = Tokenizer.train([str(corpus), str(extra)], vocab_size=cfg.tokenizer.vocab_size, output_path=str(out),
                          model_type=cfg.tokenizer.model_type, user_defined_symbols=SPECIAL_SYMBOLS)
    _log(f"tokenizer: {tok.vocab_size} pieces -> {out} ({time.perf_counter() - t0:.1f} s)")
    return {"vocab_size": tok.vocab_size, "path": str(out)}


# ---- stage 3: pre-training --------------------------------------------------------------------
def base_model_dir(cfg: PipelineConfig) -> Path:
    return Path(cfg.sft.base_model) if cfg.sft.base_model else Path(cfg.run_dir) / "base"


def pretrain(cfg: PipelineConfig, progress: bool = True, resume_from: str | None = None) -> dict:
    """Pre-train a small Llama from scratch on the corpus (all parameters) and save it in Hugging
    Face format under run_dir/base, with the tokenizer beside it."""
    p = cfg.pretrain
    corpus = Path(cfg.run_dir) / "data" / "corpus.txt"
    if not corpus.is_file():
        raise FileNotFoundError(f"{corpus} not found: run `ecomllm prepare-data` first")
    if not tokenizer_path(cfg).is_file():
        raise FileNotFoundError(f"{tokenizer_path(cfg)} not found: run `ecomllm train-tokenizer` first")
    tok = Tokenizer.from_file(tokenizer_path(cfg))
    lines = corpus.read_text(encoding="utf-8").splitlines()
    rng = np.random.default_rng(cfg.data.seed)
    order = rng.permutation(len(lines))
    n_dev = max(1, len(lines) // 50)            # 2% of the lines measure held-out loss
    dev_lines = [lines[i] for i in order[:n_dev]]
    train_lines = [lines[i] for i in order[n_dev:]]
    train = pack_examples(text_examples(tok, train_lines, p.seq_len), p.seq_len, pad_id=_pad_id(tok))
    dev = pack_examples(text_examples(tok, dev_lines, p.seq_len), p.seq_len, pad_id=_pad_id(tok))
    shape = dataclasses.asdict(p.model)
    shape.update(vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                 max_position_embeddings=max(shape["max_position_embeddings"], p.seq_len, cfg.sft.seq_len))
    model = Model.from_config(shape, seed=p.train.seed)
    _log(f"pretrain: {model.num_parameters() / 1e6:.2f}M parameters, {len(train)} rows x {p.seq_len} "
         f"({train.num_tokens} tokens), dev {dev.num_tokens} tokens")
    out = Path(cfg.run_dir) / "pretrain"
    train_cfg = dataclasses.replace(p.train, mode="full", output_dir=str(out), progress=progress and p.train.progress)
    summary = Trainer(model, train, {"text": dev}, train_cfg).train(resume_from)
    base = Path(cfg.run_dir) / "base"
    model.save_pretrained(base)
    shutil.copyfile(tokenizer_path(cfg), base / "tokenizer.model")
    _log(f"pretrain: base model -> {base}")
    return summary


# ---- stage 4: QLoRA SFT -----------------------------------------------------------------------
def _load_tokenizer_for(base: Path, cfg: PipelineConfig) -> Tokenizer:
    own = base / "tokenizer.model"
    return Tokenizer.from_file(own if own.is_file() else tokenizer_path(cfg))


def _pack_split(tok: Tokenizer, examples, cfg: PipelineConfig, packing: bool) -> PackedDataset:
    s = cfg.sft
    return pack_examples(encode_examples(tok, examples, s.template, max_len=s.seq_len), s.seq_len,
                         pad_id=_pad_id(tok), packing=packing)


def _dev_sets(tok, cfg: PipelineConfig) -> dict[str, PackedDataset]:
    dev = read_examples(Path(cfg.run_dir) / "data" / "examples.dev.jsonl")
    by_task: dict[str, list] = {}
    for e in dev:
        by_task.setdefault(e.task, []).append(e)
    return {t: _pack_split(tok, exs, cfg, packing=True) for t, exs in sorted(by_task.items())}


def _load_base(cfg: PipelineConfig) -> Model:
    base = base_model_dir(cfg)
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"{base}/config.json not found: run `ecomllm pretrain` or set sft.base_model")
    quantize = None if cfg.sft.quantize in ("none", "", None) else cfg.sft.quantize
    return Model.from_pretrained(base, quantize=quantize)


def finetune(cfg: PipelineConfig, progress: bool = True, resume_from: str | None = None) -> dict:
    """QLoRA supervised fine-tuning on the instruction data (completion-only loss); the adapter
    lands in run_dir/adapter (PEFT format)."""
    s = cfg.sft
    if s.template not in TEMPLATES:
        raise ValueError(f"sft.template: expected one of {TEMPLATES}, got {s.template!r}")
    model = _load_base(cfg)
    tok = _load_tokenizer_for(base_model_dir(cfg), cfg)
    targets = s.lora.target_modules
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    model.add_lora(LoraConfig(r=s.lora.r, alpha=s.lora.alpha, dropout=s.lora.dropout, target_modules=targets,
                              use_rslora=s.lora.use_rslora, seed=s.train.seed))
    train = _pack_split(tok, read_examples(Path(cfg.run_dir) / "data" / "examples.train.jsonl"), cfg, s.packing)
    dev = _dev_sets(tok, cfg)
    _log(f"sft: base {base_model_dir(cfg)} ({s.quantize}), LoRA r={s.lora.r} on {s.lora.target_modules}: "
         f"{model.num_parameters(trainable_only=True):,} trainable; {len(train)} rows x {s.seq_len} "
         f"({train.num_target_tokens} target tokens)")
    out = Path(cfg.run_dir) / "sft"
    train_cfg = dataclasses.replace(s.train, mode="lora", output_dir=str(out), progress=progress and s.train.progress)
    summary = Trainer(model, train, dev, train_cfg).train(resume_from)
    adapter = Path(cfg.run_dir) / "adapter"
    model.save_adapter(adapter)
    _log(f"sft: adapter -> {adapter}")
    return summary


def _pad_id(tok: Tokenizer) -> int:
    """Padding is masked out, so any valid id works: the tokenizer's pad if it has one, else unk."""
    return tok.pad_id if tok.pad_id >= 0 else tok.unk_id


# ---- stage 5: evaluation ----------------------------------------------------------------------
def _dev_loss(model: Model, dev: dict[str, PackedDataset], rows_per_call: int = 8) -> dict[str, float]:
    out = {}
    for task, ds in dev.items():
        total, count = 0.0, 0
        for s in range(0, len(ds), rows_per_call):
            part = ds.rows(slice(s, s + rows_per_call))
            t, n = model.loss(part.input_ids, part.labels, part.attention_mask, part.position_ids)
            total, count = total + t, count + n
        out[task] = total / max(1, count)
    return out


def _decode_task(model: Model, tok: Tokenizer, examples, cfg: PipelineConfig) -> list[str]:
    prompts = [encode_prompt(tok, e.prompt, cfg.sft.template)[-(cfg.sft.seq_len - cfg.eval.max_new_tokens):]
               for e in examples]
    outs = greedy_generate(model, prompts, max_new_tokens=cfg.eval.max_new_tokens, eos_id=tok.eos_id)
    return [tok.decode(o).strip() for o in outs]


def evaluate(cfg: PipelineConfig, adapter: str | Path | None = None) -> dict:
    """Dev loss per task and greedy-decoding metrics per task for the base model and the
    fine-tuned one (base + adapter), side by side; writes run_dir/report.{json,md}."""
    run = Path(cfg.run_dir)
    adapter = Path(adapter) if adapter else run / "adapter"
    model = _load_base(cfg)
    # Inference only from here: NF4 weights in the decode layout where the CPU runs its kernels
    # (NF4Tensor.prepare_decoding; same results to ~1e-6, faster decoding, codes not kept twice).
    laid_out = model.prepare_decoding(keep_codes=False)
    if laid_out:
        _log(f"eval: {laid_out} NF4 layers in the decode layout ({model.decoding_nbytes / 2**20:.1f} MiB)")
    tok = _load_tokenizer_for(base_model_dir(cfg), cfg)
    dev_examples = read_examples(run / "data" / "examples.dev.jsonl")
    picked = {t: [e for e in dev_examples if e.task == t][:cfg.eval.examples_per_task] for t in TASKS}
    picked = {t: exs for t, exs in picked.items() if exs}
    dev = {t: _pack_split(tok, [e for e in dev_examples if e.task == t], cfg, packing=True) for t in picked}
    report: dict = {"dev_examples": {t: len(exs) for t, exs in picked.items()}, "models": {}, "samples": {}}
    for label in ("base", "fine-tuned"):
        t0 = time.perf_counter()
        if label == "fine-tuned":
            if not (adapter / "adapter_config.json").is_file():
                raise FileNotFoundError(f"{adapter}/adapter_config.json not found: run `ecomllm train` first")
            model.load_adapter(adapter, name="sft")
            model.set_adapter("sft")
        losses = _dev_loss(model, dev)
        result = {"dev_loss": losses, "metrics": {}}
        for task, exs in picked.items():
            preds = _decode_task(model, tok, exs, cfg)
            result["metrics"][task] = TASK_METRICS[task](preds, [e.completion for e in exs])
            for i, (e, p) in enumerate(zip(exs[:cfg.eval.show_per_task], preds)):
                sample = report["samples"].setdefault(task, [{} for _ in range(min(len(exs), cfg.eval.show_per_task))])[i]
                sample.update(prompt=e.prompt, reference=e.completion)
                sample[label] = p
        report["models"][label] = result
        _log(f"eval {label}: dev loss {', '.join(f'{t} {v:.3f}' for t, v in losses.items())} "
             f"({time.perf_counter() - t0:.0f} s)")
    (run / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    (run / "report.md").write_text(format_report(report), encoding="utf-8")
    return report


_HEADLINE = {"classify": ("accuracy", "hierarchical_f1"), "extract": ("slot_accuracy", "f1", "invalid_json"),
             "qa": ("exact_match", "token_f1", "yes_no_accuracy")}


def format_report(report: dict) -> str:
    """The evaluation as a Markdown table plus sample completions."""
    models = list(report["models"])
    lines = ["| task | metric | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for task in report["dev_examples"]:
        lines.append(f"| {task} | dev loss | " + " | ".join(f"{report['models'][m]['dev_loss'][task]:.3f}"
                                                       for m in models) + " |")
        for key in _HEADLINE[task]:
            vals = [report["models"][m]["metrics"][task].get(key) for m in models]
            lines.append(f"| {task} | {key} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in vals) + " |")
    lines.append("")
    for task, samples in report["samples"].items():
        lines.append(f"### {task}")
        for s in samples:
            lines.append("```")
            lines.append(s["prompt"][:400])
            lines.append(f"--- reference : {s['reference']}")
            for m in models:
                lines.append(f"--- {m:<10}: {s.get(m, '')}")
            lines.append("```")
    return "\n".join(lines) + "\n"


def run_all(cfg: PipelineConfig, progress: bool = True) -> dict:
    """Every stage in order, from scratch: the demo."""
    # The demo starts from scratch: outputs of an earlier run in run_dir are replaced (only the
    # folders and files the stages write; anything else in run_dir is left alone).
    run = Path(cfg.run_dir)
    stale = [run / n for n in ("pretrain", "sft", "base", "adapter", "report.json", "report.md")]
    if any(p.exists() for p in stale):
        _log(f"demo: replacing the outputs of an earlier run in {run}")
        for p in stale:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    timings = {}
    for name, fn in (("prepare-data", lambda: prepare_data(cfg)), ("train-tokenizer", lambda: train_tokenizer(cfg)),
                     ("pretrain", lambda: pretrain(cfg, progress)), ("train", lambda: finetune(cfg, progress)),
                     ("evaluate", lambda: evaluate(cfg))):
        s = time.perf_counter()
        _log(f"== stage {name}")
        result = fn()
        timings[name] = round(time.perf_counter() - s, 1)
    report = result
    report["timings_s"] = timings
    report["total_s"] = round(time.perf_counter() - t0, 1)
    return report

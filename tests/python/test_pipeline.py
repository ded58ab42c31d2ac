"""The command line and the end-to-end recipe on a miniature run (about 15 s): every stage's files,
the base-vs-fine-tuned report, resuming, and clear errors for bad configs and data."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ecomllm import cli
from ecomllm.data import DataError
from ecomllm.pipeline import PipelineConfig, read_examples
from ecomllm.train.config import load_config

REPO = Path(__file__).resolve().parents[2]
TINY = ["data.n_products=200", "data.n_general=40", "tokenizer.vocab_size=600",
        "pretrain.model.hidden_size=64", "pretrain.model.intermediate_size=128", "pretrain.model.num_hidden_layers=2",
        "pretrain.model.num_attention_heads=4", "pretrain.model.num_key_value_heads=2",
        "pretrain.seq_len=128", "sft.seq_len=192", "pretrain.train.max_steps=12", "pretrain.train.micro_batch_size=4",
        "sft.train.max_steps=8", "sft.train.micro_batch_size=2", "sft.train.save_every=4",
        "eval.examples_per_task=3", "eval.max_new_tokens=8", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    assert cli.main(["demo", "--config", str(REPO / "configs" / "demo.yaml"), f"run_dir={d}"] + TINY) == 0
    return d


def test_demo_config_loads_and_matches_documented_sections():
    cfg = load_config(PipelineConfig, REPO / "configs" / "demo.yaml")
    assert cfg.sft.quantize == "nf4" and cfg.pretrain.train.learning_rate == 2e-3
    assert cfg.data.sources[0].format == "bundled"


def test_every_stage_leaves_its_files(run_dir):
    for name in ("train", "dev", "test", "ood"):
        assert read_examples(run_dir / "data" / f"examples.{name}.jsonl")
    assert (run_dir / "data" / "catalog" / "taxonomy.txt").is_file()
    assert (run_dir / "tokenizer.model").is_file()
    assert (run_dir / "base" / "config.json").is_file() and (run_dir / "base" / "tokenizer.model").is_file()
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    for stage in ("pretrain", "sft"):
        assert (run_dir / stage / "metrics.jsonl").is_file()
        assert list((run_dir / stage).glob("*.png"))
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["models"]) == {"base", "fine-tuned"}
    for model in report["models"].values():
        assert set(model["dev_loss"]) == {"classify", "extract", "qa"}
    assert "| classify | accuracy |" in (run_dir / "report.md").read_text()


def test_train_resumes_from_latest_checkpoint(run_dir, capsys):
    # sft ran 8 steps with checkpoints at 4 and 8; resuming at the end is a no-op that reports step 8
    args = ["train", "--config", str(REPO / "configs" / "demo.yaml"), f"run_dir={run_dir}"] + TINY + ["--resume", "latest", "--json"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["global_step"] == 8 and summary["resumed_from"]


def test_bad_config_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft:\n  lora:\n    rank: 8\n")
    assert cli.main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: sft.lora.rank: unknown key (known keys: r, alpha, dropout" in err
    assert cli.main(["prepare-data", f"run_dir={tmp_path}", "data.sources=[{format: mave, path: /no/such.jsonl}]"]) == 2
    assert "data.sources[0].path: no such file '/no/such.jsonl'" in capsys.readouterr().err
    assert cli.main(["pretrain", f"run_dir={tmp_path / 'empty'}"]) == 2
    assert "corpus.txt not found: run `ecomllm prepare-data` first" in capsys.readouterr().err


def test_malformed_source_line_is_named(tmp_path, capsys):
    f = tmp_path / "mave.jsonl"
    f.write_text('{"id": "a", "category": "X", "paragraphs": [{"text": "Mug", "source": "title"}], "attributes": []}\n{not json\n')
    assert cli.main(["prepare-data", f"run_dir={tmp_path}", f"data.sources=[{{format: mave, path: {f}}}]"]) == 2
    assert f"{f}:2:" in capsys.readouterr().err


def test_read_examples_names_file_and_line(tmp_path):
    # Found by fuzzing: TypeError from a missing field, a non-object line or a mistyped field.
    good = '{"task": "qa", "prompt": "p", "completion": "c"}\n'
    for bad, words in (('{"task": "t"}', "missing 2 required"), ("[1, 2]", "expected a JSON object"),
                       ('{"task": "t", "prompt": 1, "completion": "c"}', "field 'prompt' must be str")):
        p = tmp_path / "examples.jsonl"
        p.write_text(good + bad + "\n", encoding="utf-8")
        with pytest.raises(DataError, match=f"^{re.escape(str(p))}:2: .*{words}"):
            read_examples(p)


def test_python_dash_m_and_help():
    out = subprocess.run([sys.executable, "-m", "ecomllm", "train", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "sft.lora.r (int, default 16): LoRA rank" in out and "--resume" in out
    top = subprocess.run([sys.executable, "-m", "ecomllm", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("prepare-data", "train-tokenizer", "pretrain", "train", "evaluate", "demo"):
        assert command in top


def _train_losses(run: Path) -> list[float]:
    lines = [json.loads(x) for x in (run / "sft" / "metrics.jsonl").read_text().splitlines()]
    return [d["loss"] for d in lines if d["type"] == "train"]


def test_sigkilled_training_resumes_to_the_same_loss_curve(run_dir, tmp_path):
    """A real kill (SIGKILL of the CLI process, possibly mid-checkpoint), then `--resume latest`:
    the loss curve equals an uninterrupted run's exactly, step for step."""
    import shutil
    import signal
    import time
    args = TINY + ["sft.train.max_steps=60", "sft.train.save_every=3", "sft.lora.dropout=0.1"]
    runs = {}
    for name in ("straight", "killed"):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        for part in ("data", "base", "tokenizer.model"):
            src = run_dir / part
            (shutil.copytree if src.is_dir() else shutil.copy)(src, runs[name] / part)
    assert cli.main(["train", f"run_dir={runs['straight']}"] + args) == 0

    proc = subprocess.Popen([sys.executable, "-m", "ecomllm", "train", f"run_dir={runs['killed']}"] + args,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((runs["killed"] / "sft").glob("checkpoint-0000[1-9]*")) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL        # it really died mid-run
    assert not (runs["killed"] / "adapter").exists()
    assert cli.main(["train", f"run_dir={runs['killed']}", "--resume", "latest"] + args) == 0
    assert len(_train_losses(runs["straight"])) == 60
    assert _train_losses(runs["killed"]) == _train_losses(runs["straight"])


def test_rerunning_stages(run_dir, tmp_path, capsys):
    # `train` again without --resume refuses to mix runs, and says how to continue
    assert cli.main(["train", f"run_dir={run_dir}"] + TINY) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    # `demo` again starts from scratch in the same run_dir
    import shutil
    again = tmp_path / "again"
    shutil.copytree(run_dir, again)
    assert cli.main(["demo", f"run_dir={again}"] + TINY) == 0
    assert "replacing the outputs of an earlier run" in capsys.readouterr().err
    assert (again / "report.json").is_file()

"""`finetune --method lora` on every task (tiny model, fixtures): adapters + head train, the run saves only the
adapter file, metrics.json records the parameter counts, and `evaluate` rescores the run from base + adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app import evaluate, finetune
from minigpt2 import GPT2, GPT2Config
from minigpt2.checkpoint import read_safetensors
from minigpt2.lora import METADATA_KEY
from tests.app.test_finetune import finetune_args

LORA = ["--method", "lora", "--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", "attn+mlp", "--epochs", "1"]
EXTRA = {"sst": [], "cfimdb": [], "quora": [], "sonnet": ["--max-new-tokens", "16", "--max-eval", "2"]}
HEAD = {"sst": 32 * 5 + 5, "cfimdb": 32 * 2 + 2, "quora": 0, "sonnet": 0}  # tiny n_embd = 32
ADAPTERS = 2 * (4 * 4 * (32 + 32) + 2 * 4 * (32 + 128))  # 2 layers, rank 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora_runs")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for task, extra in EXTRA.items():
            finetune.main(finetune_args(task, root / task, *LORA, *extra))
    finally:
        torch.set_num_threads(n)
    return {task: root / task for task in EXTRA}


@pytest.mark.parametrize("task", sorted(EXTRA))
def test_every_task_trains_with_lora(task, runs):
    run = runs[task]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "lora"
    assert metrics["trainable_params"] == ADAPTERS + HEAD[task]
    body = GPT2(GPT2Config.from_name("tiny")).num_parameters()
    assert metrics["total_params"] == body + ADAPTERS + HEAD[task]
    saved = json.loads((run / "config.json").read_text())["settings"]
    assert saved["optim"]["lr"] == 1e-2 and saved["model"]["lora"]["rank"] == 4  # LoRA's default learning rate
    best = run / "best"
    assert (best / "adapter.safetensors").is_file() and not (best / "model.safetensors").exists()
    tensors, meta = read_safetensors(best / "adapter.safetensors")
    settings = json.loads(meta[METADATA_KEY])
    assert settings["rank"] == 4 and settings["targets"] == "attn+mlp"
    assert sum(t.numel() for t in tensors.values()) == ADAPTERS + HEAD[task]
    assert json.loads((best / "config.json").read_text())["minigpt2"]["base_model"] == "tiny"


@pytest.mark.parametrize("task", ["sst", "quora"])
def test_evaluate_rescores_a_lora_run(task, runs):
    """The saved adapter on a freshly built base reproduces the run's dev score."""
    metrics = json.loads((runs[task] / "metrics.json").read_text())
    result = evaluate.evaluate_run(runs[task], "dev", device="cpu")
    assert result["accuracy"] == pytest.approx(metrics["dev"]["accuracy"])


def test_lora_with_last_linear_layer_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="--method lora .* needs --mode full-model"):
        finetune.main(["--task", "sst", "--model", "tiny", "--method", "lora", "--mode", "last-linear-layer",
                       "--out-dir", str(tmp_path)])


def test_help_mentions_the_lora_learning_rate(capsys):
    with pytest.raises(SystemExit):
        finetune.main(["--help"])
    out = capsys.readouterr().out
    assert "--lora-rank" in out and "--lora-targets" in out and "best LoRA learning rate" in out


def test_lora_on_a_fake_quant_base_in_finetune(tmp_path):
    """--precision int8 --qaft --method lora: fake-quant first, then LoRA; evaluate rebuilds the same model."""
    out = tmp_path / "qlora"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        finetune.main(finetune_args("sst", out, "--precision", "int8", "--qaft", *LORA))
    finally:
        torch.set_num_threads(n)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "lora" and metrics["trainable_params"] == ADAPTERS + HEAD["sst"]
    result = evaluate.evaluate_run(out, "dev", device="cpu")
    assert result["accuracy"] == pytest.approx(metrics["dev"]["accuracy"])

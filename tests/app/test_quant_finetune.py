"""`finetune --precision ... [--qaft]` and `evaluate --task quora --zero-shot` end to end on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app import evaluate, finetune
from minigpt2.errors import UserError
from minigpt2.checkpoint import load_model
from quant import FakeQuantLinear, QuantConfig, load_packed, quantize_model

from tests.app.test_finetune import finetune_args, one_thread  # noqa: F401 (one_thread: an autouse fixture)


def args(task: str, out: Path, *extra: str) -> list[str]:
    return finetune_args(task, out, "--epochs", "1", "--lr", "1e-3", *extra)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qruns")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    todo = {
        "quora-int8-ptq": args("quora", root / "a", "--precision", "int8"),
        "quora-int4-qaft": args("quora", root / "b", "--precision", "int4", "--qaft", "--group-size", "16"),
        "sonnet-int8-qaft": args("sonnet", root / "c", "--precision", "int8", "--qaft", "--quant-activations",
                                 "--max-new-tokens", "8", "--max-eval", "2"),
    }
    for cmd in todo.values():
        finetune.main(cmd)
    torch.set_num_threads(n)
    return {name: Path(cmd[cmd.index("--out-dir") + 1]) for name, cmd in todo.items()}


@pytest.mark.parametrize("name,precision", [("quora-int8-ptq", "int8"), ("quora-int4-qaft", "int4")])
def test_run_writes_packed_checkpoint_and_size_report(runs, name, precision):
    run = runs[name]
    report = json.loads((run / "quantized" / "size_report.json").read_text())
    packed = run / "quantized" / f"model-{precision}.safetensors"
    assert report["file_bytes"] == packed.stat().st_size == report["computed_file_bytes"]
    assert report["qaft"] == name.endswith("qaft") and "wte (tied LM head)" in report["quantised"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["quantization"]["precision"] == precision
    # the packed body computes what the run's quantized body computed
    cfg = QuantConfig.for_precision(precision, group_size=16 if precision == "int4" else 128)
    body = quantize_model(load_model(run / "best"), cfg).eval()
    ids = torch.randint(0, 50257, (2, 6))
    torch.testing.assert_close(load_packed(packed).eval().logits(ids), body.logits(ids), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["quora-int8-ptq", "quora-int4-qaft"])
def test_evaluate_rescores_at_the_runs_precision(runs, name):
    metrics = json.loads((runs[name] / "metrics.json").read_text())
    result = evaluate.evaluate_run(runs[name], "dev", device="cpu")
    assert result["precision"] in ("int8", "int4")
    assert result["accuracy"] == pytest.approx(metrics["dev"]["accuracy"])


def test_qaft_run_saves_full_precision_weights_in_hf_layout(runs):
    body = load_model(runs["quora-int4-qaft"] / "best")  # plain HF names: the fake-quant layers keep the plain keys
    assert not any(isinstance(m, FakeQuantLinear) for m in body.modules())
    config = json.loads((runs["quora-int4-qaft"] / "best" / "config.json").read_text())
    saved = config["minigpt2"]
    assert saved["schema"] == 2 and "args" not in saved
    assert saved["settings"]["precision"]["format"] == "int4" and saved["settings"]["precision"]["qaft"] is True


def test_zero_shot_quora_on_a_sonnet_run(runs):
    run = runs["sonnet-int8-qaft"]
    result = evaluate.evaluate_run(run, "dev", device="cpu", task_name="quora", zero_shot=True)
    assert result["task"] == "quora" and result["fine_tuned_on"] == "sonnet" and result["precision"] == "int8"
    assert 0.0 <= result["accuracy"] <= 1.0 and result["examples"] == 2  # the run's --max-eval
    saved = json.loads((run / "eval-quora-zero-shot-dev.json").read_text())
    assert saved["accuracy"] == result["accuracy"]
    assert (run / "zero-shot-para-dev-output.csv").is_file()
    assert not (run / "eval-dev.json").exists()  # the sonnet run's own evaluation is untouched


def test_bad_flag_combinations_are_clear_errors(runs, tmp_path):
    with pytest.raises(SystemExit, match="--qaft needs a --precision other than fp32"):
        finetune.main(args("quora", tmp_path / "x", "--qaft"))
    with pytest.raises(SystemExit, match="apply to --precision fp8, int8 or int4"):
        finetune.main(args("quora", tmp_path / "x", "--precision", "bf16", "--quant-activations"))
    with pytest.raises(SystemExit, match="group_size=48 does not divide in_features=32"):
        finetune.main(args("quora", tmp_path / "x", "--precision", "int4", "--qaft", "--group-size", "48"))
    with pytest.raises(UserError, match="fine-tuned on 'sonnet'; scoring 'quora' with it needs --zero-shot"):
        evaluate.evaluate_run(runs["sonnet-int8-qaft"], "dev", device="cpu", task_name="quora")
    with pytest.raises(UserError, match="needs a trained classifier head"):
        evaluate.evaluate_run(runs["sonnet-int8-qaft"], "dev", device="cpu", task_name="sst", zero_shot=True)

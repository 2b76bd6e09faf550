"""The runner reuses a finished run only while its inputs are the ones it ran on: a regenerated synthetic file or
other base weights under the same names are refused, with the difference shown."""

from __future__ import annotations

import shutil

import pytest

from app.cli import options_from_argv, settings_of
from experiments import launch, runner
from experiments.runner import RunFolderConflict
from experiments.sweeps import TINY_DATA_DIR, TINY_SYNTHETIC_DIR, TINY_TOKENIZER_DIR, Run
from tests.conftest import TINY, make_hf_checkpoint


def sweep_once(runs: list[Run], root) -> runner.SweepResult:
    return launch.Local(runner.in_process, progress=False).launch(runs, root)


def test_a_changed_synthetic_file_or_base_model_is_refused(tmp_path, tiny_hf_dir):
    synthetic = tmp_path / "flash.jsonl"
    shutil.copy(TINY_SYNTHETIC_DIR / "gemini-2.5-flash.jsonl", synthetic)
    base = tmp_path / "base"
    shutil.copytree(tiny_hf_dir, base)
    run = Run("sonnet-synth", settings_of(options_from_argv([
        "--task", "sonnet", "--model", str(base), "--offline", "--data-dir", str(TINY_DATA_DIR), "--tokenizer-dir",
        str(TINY_TOKENIZER_DIR), "--epochs", "1", "--max-train", "2", "--max-eval", "1", "--max-new-tokens", "4",
        "--no-progress", "--synthetic", str(synthetic)])))
    root = tmp_path / "runs"
    first = sweep_once([run], root)
    assert first.started == ["sonnet-synth"] and not first.failed
    assert sweep_once([run], root).skipped == ["sonnet-synth"]  # same inputs: reused

    original = synthetic.read_bytes()
    synthetic.write_bytes(b"\n".join(original.rstrip(b"\n").split(b"\n")[:-1]) + b"\n")  # one record fewer
    with pytest.raises(RunFolderConflict, match=r"inputs changed: data flash\.jsonl"):
        sweep_once([run], root)

    synthetic.write_bytes(original)
    assert sweep_once([run], root).skipped == ["sonnet-synth"]
    make_hf_checkpoint(base, seed=1, initializer_range=0.3, **TINY)  # other weights, same file name
    with pytest.raises(RunFolderConflict, match=r"base weights .*model\.safetensors sha256 \w+ -> "):
        sweep_once([run], root)

"""Shared fixtures: GPT-2 checkpoints in the exact Hugging Face file layout, built at random init (no download)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from experiments.sweeps import TINY_DATA

FIXTURES = Path(__file__).parent / "fixtures"
BPE_DIR = TINY_DATA / "gpt2"  # GPT-2's BPE files, shipped as package data of experiments


# Memoized figures (syllable counts, reference rows) start empty in every test: a test sees what the code computes
# now, not what an earlier test cached. Mutation runs need this too: mutmut forks each mutant from a process whose
# caches the unmutated code filled, and a cached answer would hide the mutant.
CACHED = {"distill.syllables": ("word_syllables", "_derived"),
          "experiments.references": ("_reference_sonnets", "sonnet_reference_intervals", "sonnet_reference_forms",
                                     "sonnet_reference_nll", "sonnet_reference_copying")}


@pytest.fixture(autouse=True)
def _fresh_caches():
    import sys

    for module, names in CACHED.items():
        loaded = sys.modules.get(module)
        for name in names if loaded is not None else ():
            getattr(getattr(loaded, name), "cache_clear", lambda: None)()
    yield


# torch's thread count is the whole process's: a command called in-process that sets it (`bench.__main__.main`,
# `bench.gemv.main` and `bench.profile_decode.main` with --threads 1, as `python -m bench` does for its process)
# left every later test on it, and the fp32 inference copy picks its kernels by it (MKL's one-row product on one
# thread, oneDNN's packed layers on more), so what a test ran hung on the order of the files. Each test gets the
# count it started with back (the commands' own `run` functions give it back themselves: test_threads_of_a_call.py).
@pytest.fixture(autouse=True)
def _own_threads():
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


def make_hf_checkpoint(folder: Path, seed: int = 0, initializer_range: float = 0.02, **sizes) -> Path:
    """Save a randomly initialised `transformers.GPT2LMHeadModel` with `save_pretrained` into `folder`."""
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    config = HFConfig(initializer_range=initializer_range, **sizes)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    return folder


TINY = dict(n_layer=2, n_head=2, n_embd=32, n_positions=128)


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2 (2 layers, 32 dims, full vocabulary) saved by `transformers` in the HF layout.

    Initialised with a large std so that greedy decoding explores many tokens instead of repeating one.
    """
    return make_hf_checkpoint(tmp_path_factory.mktemp("tiny_hf"), initializer_range=0.3, **TINY)


@pytest.fixture(scope="session")
def gpt2_hf_dir(tmp_path_factory) -> Path:
    """The full 124M `gpt2` config at random init, in the HF layout (about 500 MB on disk)."""
    return make_hf_checkpoint(tmp_path_factory.mktemp("gpt2_hf"))


@dataclass
class TinySweep:
    """A --tiny sweep run once through `python -m experiments`: its folders, its argv, the finetune runs it began."""

    runs: Path
    out: Path
    argv: list[str]
    started: list[tuple[str, list[str]]]


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> Callable[[str], TinySweep]:
    """`tiny_sweep(name)`: the --tiny sweep `name`, run in-process on first use and shared by the session's tests
    (each sweep is minutes of finetune runs). Tests read its folders; one that changes a file works on a copy."""
    from experiments import __main__ as cli

    done: dict[str, TinySweep] = {}

    def run(name: str) -> TinySweep:
        if name not in done:
            root = tmp_path_factory.mktemp(f"sweep-{name}")
            runs, out = root / "runs", root / "results"
            argv = [name, "--tiny", "--runs-dir", str(runs), "--out", str(out), "--no-progress", "--bootstrap", "200"]
            started: list[tuple[str, list[str]]] = []
            real = cli.in_process

            def count(step, log):
                started.append((step.module, list(step.argv)))
                real(step, log)
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(cli, "in_process", count)
                assert cli.main(argv) == 0
            done[name] = TinySweep(runs, out, argv, started)
        return done[name]
    return run


def load_hf(folder: Path):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()


@pytest.fixture
def emulated_bf16(monkeypatch):
    """bf16 on any CPU: `minigpt2.device` is told this CPU runs bf16 natively, so `--autocast bf16`, bf16 decoding
    and the bf16 bench lines run here, on a CPU without bf16 instructions in emulation (slowly: such tests keep to
    the tiny configs). This is what every GPU run takes, so CI checks it too. The user-facing refusal of bf16 on
    such a CPU is tested with the answer faked the other way (`tests/minigpt2/test_autocast.py`)."""
    from minigpt2 import device

    monkeypatch.setattr(device, "cpu_native_bf16", lambda cpuinfo="/proc/cpuinfo": True)


def onednn_bf16() -> bool:
    """oneDNN has bf16 kernels for this CPU (AVX-512 BW/VL/DQ, AVX-NE-CONVERT, or Arm's BF16): without them a bf16
    prepacked weight cannot be made at all (torch refuses), emulated or not."""
    from minigpt2.fast.prepack import available

    return available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


needs_onednn_bf16 = pytest.mark.skipif(not onednn_bf16(), reason="oneDNN has no bf16 kernels for this CPU (it "
                                       "needs AVX-512 BW/VL/DQ, AVX-NE-CONVERT or Arm BF16)")


def bf16_prepacked(test: Callable) -> Callable:
    """Mark a test that makes bf16 prepacked weights (bf16 decoding): it runs with `emulated_bf16` wherever oneDNN
    has bf16 kernels, and is skipped only where it has none."""
    return needs_onednn_bf16(pytest.mark.usefixtures("emulated_bf16")(test))


@pytest.fixture(autouse=True)
def _offline_tokenizer(monkeypatch):
    """Tests never download the BPE files: they use the copy shipped in experiments/tiny_data/gpt2."""
    if "MINIGPT2_TOKENIZER_DIR" not in os.environ:
        monkeypatch.setenv("MINIGPT2_TOKENIZER_DIR", str(BPE_DIR))


# The fast tier, `python -m pytest -q -m fast` (docs/testing.md): what someone changing the model reruns after each
# edit, chosen by folder: the library's tests (model and checkpoint parity with transformers, LoRA with peft, the
# layering rule, every speed piece against the plain path) and the number formats' (fake-quant, int8, GGUF); without
# the tests that use the full 124M config or GPT-2-sized tensors (`slow`) or start a whole command or a new process
# (`command`).
FAST_TIER = ("minigpt2", "quant")  # folders under tests/


def _folder(path: Path) -> str | None:
    """The package folder a test file sits in under tests/ ("minigpt2" for tests/minigpt2/fast/test_x.py)."""
    try:
        return path.relative_to(Path(__file__).parent).parts[0]
    except ValueError:
        return None


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="set MINIGPT2_DATA_DIR to the real course data to run")
    for item in items:
        if "shared_data" in item.keywords and not os.environ.get("MINIGPT2_DATA_DIR"):
            item.add_marker(skip)
        if _folder(item.path) in FAST_TIER and not {"slow", "command"} & set(item.keywords):
            item.add_marker(pytest.mark.fast)

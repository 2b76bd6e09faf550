"""`python -m bench.smoke`: every tiny path passes on CPU; a broken path is reported FAILED and sets the exit code."""

from __future__ import annotations

import pytest
import torch

from bench import smoke
from tests.minigpt2.test_train import one_thread  # noqa: F401  (autouse fixture: one torch thread)


def test_smoke_tiny_on_cpu_passes_every_path(capsys):
    # --no-compile keeps it fast here; tests/minigpt2/fast/test_compile.py compiles the same blocks
    assert smoke.main(["--device", "cpu", "--tiny-only", "--no-compile"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("PASSED", "FAILED"))]
    assert len(lines) == len(smoke.paths(tiny_only=True)) == 9 and all(line.startswith("PASSED") for line in lines)
    for task in smoke.TASKS:
        assert any(f" {task} " in f" {line} " for line in lines)
    assert "9 of 9 paths passed" in out


def test_a_failing_path_is_reported_with_its_reason_and_exit_code_1(monkeypatch, capsys):
    real = smoke.run_path

    def broken(p, device, autocast, compile):
        if p.task == "quora" and p.method == "lora":
            raise RuntimeError("self and mat2 must have the same dtype")
        return real(p, device, autocast, compile)

    monkeypatch.setattr(smoke, "run_path", broken)
    monkeypatch.setattr(smoke, "TASKS", ("quora",))
    assert smoke.main(["--device", "cpu", "--tiny-only", "--no-compile", "--autocast", "off"]) == 1
    out = capsys.readouterr().out
    assert "autocast off" in out
    assert any(line.startswith("FAILED  quora  tiny lora") and "RuntimeError: self and mat2 must have the same dtype"
               in line for line in out.splitlines())
    assert any(line.startswith("PASSED  quora  tiny full") for line in out.splitlines())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_requested_without_a_gpu_is_one_error_line(capsys):
    assert smoke.main(["--device", "cuda"]) == 1
    assert capsys.readouterr().err.strip() == ("error: --device cuda: no CUDA device is available "
                                                "(use --device cpu --tiny-only)")

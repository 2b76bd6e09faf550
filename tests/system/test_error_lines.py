"""Every command turns a bad input into one `error:` line on stderr and exit code 1, never a traceback.

Each case runs the command as a user would (`python -m ...` in a subprocess) with one bad input.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import ROOT
from tests.fakegemini import FakeGemini

REPO = ROOT


def run_command(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})}
    full_env.pop("GEMINI_API_KEY", None) if env is None or "GEMINI_API_KEY" not in env else None
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=full_env, capture_output=True, text=True,
                          timeout=300)


def assert_one_error_line(proc: subprocess.CompletedProcess, expected: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expected in lines[0], lines[0]


CASES = {
    "finetune": (["-m", "minigpt2.finetune", "--task", "sst", "--model", "tiny", "--epochs", "-1"],
                 "--epochs -1"),
    "finetune-test-references": (["-m", "minigpt2.finetune", "--task", "sst", "--model", "tiny",
                                  "--test-references", "no-such-labels.csv"], "no-such-labels.csv"),
    "finetune-synthetic-only": (["-m", "minigpt2.finetune", "--task", "sonnet", "--model", "tiny",
                                 "--synthetic-only"], "--synthetic-only"),
    "evaluate": (["-m", "minigpt2.evaluate", "no-such-run"], "no-such-run"),
    "generate": (["-m", "minigpt2.generate", "--model", "tiny", "--prompt", "x", "--temperature", "-1"],
                 "--temperature"),
    "distill.check": (["-m", "distill.check", "no-such-sonnets.txt"], "no-such-sonnets.txt"),
    "distill.check-unreadable": (["-m", "distill.check", "."], "."),
    "quant.report": (["-m", "quant.report", "--model", "tiny", "--group-size", "7"], "group"),
    "experiments": (["-m", "experiments", "baseline", "--seeds", "0", "--dry-run"], "--seeds"),
    "course": (["-m", "course", "fetch", "--task", "sst", "--offline", "--data-dir", "d",
                "--cache-dir", "empty-cache"], "offline"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_command_reports_bad_input_as_one_error_line(name, tmp_path):
    args, expected = CASES[name]
    assert_one_error_line(run_command(args, tmp_path), expected)


def test_distill_generate_auth_error_is_one_error_line(tmp_path):
    with FakeGemini() as server:
        proc = run_command(["-m", "distill.generate", "--teacher", "gemini-2.5-flash", "--n", "1", "--out",
                            str(tmp_path / "out.jsonl"), "--no-leak-filter", "--base-url", server.url,
                            "--retries", "0", "--no-progress"], tmp_path, env={"GEMINI_API_KEY": "wrong-key"})
    assert_one_error_line(proc, "key")


def test_distill_generate_without_a_key_is_one_error_line(tmp_path):
    proc = run_command(["-m", "distill.generate", "--teacher", "gemini-2.5-flash", "--n", "1", "--out",
                        str(tmp_path / "out.jsonl"), "--no-leak-filter"], tmp_path)
    assert_one_error_line(proc, "GEMINI_API_KEY")

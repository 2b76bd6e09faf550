"""The reliability pass, as a user meets it: each command run in a subprocess (`python -m ...`), its exit code,
its one `error:` line (no traceback), and what is on disk afterwards (nothing lost, nothing half-written).

One tiny finished run (and one stopped after its first epoch) is shared by the module; tests that change a run
work on a copy. Commands that only refuse are started together and checked one by one, to keep the file fast.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from app import finetune
from minigpt2.checkpoint import read_safetensors
from tests import ROOT
from tests.app.test_finetune import DATA, finetune_args, one_thread  # noqa: F401 (one_thread: autouse)

SMALL = ["--lr", "1e-3", "--max-train", "8", "--max-eval", "4"]  # 2 batches of 4, 4 dev rows: an epoch in moments
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def start(module: str, *args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    """`python -m module args` as a user would start it, output captured."""
    return subprocess.Popen([sys.executable, "-m", module, *args], env={**ENV, **(env or {})}, text=True,
                            stdout=kw.pop("stdout", subprocess.PIPE), stderr=subprocess.PIPE, **kw)


def sigint_as_at_a_terminal() -> None:
    """For a child that must see Ctrl-C: a background job's children start with SIGINT ignored (as when the suite
    itself runs in the background), and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli(module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300, **kw
        ) -> subprocess.CompletedProcess:
    proc = start(module, *args, env=env, **kw)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def one_error(proc: subprocess.CompletedProcess, *parts: str) -> str:
    """Exit code 1 and exactly one `error:` line holding every part; no traceback. Returns the line."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert all(p in lines[0] for p in parts), lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes): what "nothing lost" compares."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# Epochs a run stopped from outside never reaches, however slowly a loaded machine runs it.
FOREVER = "1000000"


def ft(out: Path, *extra: str) -> list[str]:
    return finetune_args("sst", out, *SMALL, *extra)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reliability") / "run"
    finetune.main(ft(out, "--epochs", "1"))
    return out


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """A two-epoch run stopped after its first epoch (as if interrupted): resumable."""
    out = tmp_path_factory.mktemp("reliability") / "stopped"
    finetune.main(ft(out, "--epochs", "2", "--stop-after-epoch", "1"))
    return out


def copy(run: Path, tmp_path: Path, name: str = "run") -> Path:
    shutil.copytree(run, tmp_path / name)
    return tmp_path / name


def checkpoint_folder(folder: Path) -> Path:
    """A model checkpoint in the HF layout (config.json + model.safetensors), not a run."""
    from minigpt2.checkpoint import save_model
    from minigpt2.config import GPT2Config
    from minigpt2.model import GPT2

    return save_model(GPT2(GPT2Config.from_name("tiny")), folder)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended ({proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------- --overwrite

def test_overwrite_refuses_a_model_checkpoint_folder_and_deletes_nothing(tmp_path):
    folder = checkpoint_folder(tmp_path / "gpt2-like")
    before = snapshot(folder)
    procs = [start("minigpt2.finetune", *ft(folder, "--epochs", "1", *extra)) for extra in (["--overwrite"], [])]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        one_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
                  f"{folder / 'config.json'}: not the config.json of a finetune run", "nothing in it is replaced")
    assert snapshot(folder) == before


def test_overwrite_removes_only_what_the_old_run_wrote(finished, tmp_path):
    run = copy(finished, tmp_path)
    # What `evaluate` and `--zero-shot` leave in a run folder, and what is not the run's at all.
    written = ["eval-dev.json", "eval-quora-zero-shot-dev.json", "zero-shot-para-dev-output.csv"]
    for name in written:
        (run / name).write_text("old\n")
    (run / "notes.txt").write_text("mine\n")
    (run / "experiment.json").write_text("{}\n")
    proc = cli("minigpt2.finetune", *ft(run, "--epochs", "1", "--overwrite", "--lr", "2e-3"))
    assert proc.returncode == 0, proc.stderr
    assert not any((run / name).exists() for name in written)  # the runner must not take them as done
    assert (run / "notes.txt").read_text() == "mine\n" and (run / "experiment.json").read_text() == "{}\n"
    assert json.loads((run / "config.json").read_text())["settings"]["optim"]["lr"] == 2e-3
    assert (run / "full-model-sst-test-out.csv").is_file() and not (run / "run.lock").exists()


# ---------------------------------------------------------------------------------------------- lock, Ctrl-C

def test_a_second_finetune_on_a_running_folder_is_refused_and_ctrl_c_says_how_to_continue(tmp_path):
    run = tmp_path / "run"
    first = start("minigpt2.finetune", *ft(run, "--epochs", FOREVER), stdout=subprocess.DEVNULL,
                  preexec_fn=sigint_as_at_a_terminal)
    try:
        wait_for(lambda: (run / "metrics.json").is_file(), first, "a finished epoch")
        config = (run / "config.json").read_bytes()
        one_error(cli("minigpt2.finetune", *ft(run, "--epochs", FOREVER, "--overwrite")),
                  f"is in use by another finetune (pid {first.pid}")
        assert first.poll() is None and (run / "config.json").read_bytes() == config
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == f"interrupted; continue with --resume --out-dir {run}"
    assert not (run / "run.lock").exists() and (run / "config.json").read_bytes() == config
    done = json.loads(read_safetensors(run / "last" / "state.safetensors")[1]["trainer"])["epoch"]
    # the recovery, as the message says (plus where to stop: the run itself would go on for ever)
    finetune.main(["--resume", "--out-dir", str(run), "--stop-after-epoch", str(done + 1)])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == done and len(metrics["epochs"]) == done + 1


# ---------------------------------------------------------------------------------------------- sweeps

def test_a_run_folder_deleted_midway_stops_the_run_and_is_not_finished(tmp_path):
    from experiments.runner import is_finished

    run = tmp_path / "run"
    proc = start("minigpt2.finetune", *ft(run, "--epochs", FOREVER), stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: (run / "metrics.json").is_file(), proc, "a finished epoch")
        shutil.rmtree(run, ignore_errors=True)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    # Mostly the next epoch's check; a write caught in the middle of the deletion is the other possible line.
    line = one_error(subprocess.CompletedProcess(proc.args, proc.returncode, "", err))
    assert "gone while the run was going" in line or "cannot write it" in line, line
    assert not (run / "config.json").exists() and not is_finished(run)


def test_the_runner_counts_only_whole_folders_finished(finished, tmp_path):
    from experiments.runner import is_finished

    assert is_finished(finished)
    run = copy(finished, tmp_path)
    text = (run / "config.json").read_text()
    (run / "config.json").write_text(text[:len(text) // 2])  # cut short
    assert not is_finished(run)
    (run / "config.json").unlink()  # what a run folder deleted midway and recreated by later writes lacks
    assert not is_finished(run)


def test_a_sweep_run_killed_in_its_first_epoch_is_continued_by_the_sweep(tmp_path):
    from app.cli import options_from_argv, settings_of
    from experiments.launch import Local
    from experiments.runner import in_subprocess, is_finished, plan
    from experiments.sweeps import Run

    root = tmp_path / "sweep"
    args = ft(root / "r", "--epochs", "1")
    i = args.index("--out-dir")
    args = tuple(args[:i] + args[i + 2:])  # the runner adds --out-dir
    run = Run("r", settings_of(options_from_argv(args)))
    env = dict(ENV, KILL_AFTER_REPLACE="2")  # killed right after config.json and subsets.json: in epoch 1
    killed = subprocess.run([sys.executable, "-m", "tests.kill_launcher", *args, "--out-dir",
                             str(root / "r")], env=env, capture_output=True, text=True)
    assert killed.returncode == -9 and (root / "r" / "config.json").is_file()
    assert not (root / "r" / "last").exists() and (root / "r" / "run.lock").exists()  # a stale lock too
    assert plan([run], root)[0][1] == "resume"
    result = Local(in_subprocess, progress=False).launch([run], root)  # the dead process's lock is taken over
    assert result.failed == {} and result.started == ["r"] and is_finished(root / "r")
    assert not (root / "r" / "run.lock").exists()


def test_seeds_beyond_the_cap_are_refused():
    one_error(cli("experiments", "baseline", "--tiny", "--dry-run", "--seeds", "100000"),
              "--seeds 100000: expected an integer from 1 to 100")


# ---------------------------------------------------------------------------------------------- the sonnet prompts

def test_a_sonnet_prompt_that_fills_the_context_is_refused_before_training(tmp_path):
    run = tmp_path / "run"
    argv = finetune_args("sonnet", run, "--epochs", "1", "--max-length", "16", "--max-eval", "2")
    one_error(cli("minigpt2.finetune", *argv), "sonnets_held_out_dev.txt: sonnet ", "prompt is",
              "the context holds 16")
    assert not run.exists()


# ---------------------------------------------------------------------------------------------- distill

def test_a_trickling_gemini_server_is_stopped_at_the_total_timeout(tmp_path):
    from tests.fakegemini import VALID_KEY, FakeGemini

    out = tmp_path / "flash.jsonl"
    with FakeGemini(trickle_s=0.3) as fake:
        t0 = time.monotonic()
        proc = cli("distill.generate", "--teacher", "gemini-2.5-flash", "--n", "1", "--out", str(out),
                   "--no-leak-filter", "--no-progress", "--retries", "0", "--timeout", "2", "--total-timeout", "3",
                   "--base-url", fake.url, env={"GEMINI_API_KEY": VALID_KEY})
        elapsed = time.monotonic() - t0
    one_error(proc, "within the total limit of 3 s", "--total-timeout")
    assert elapsed < 30  # the answer would take minutes at this pace; start-up is the rest
    assert out.read_text() == ""  # nothing half-written


def test_an_api_key_with_a_non_ascii_character_is_one_line():
    key = "test-k\u00e9y"
    proc = cli("distill.generate", "--teacher", "gemini-2.5-flash", "--n", "1", "--out", "/nonexistent/x.jsonl",
               "--no-leak-filter", "--base-url", "http://127.0.0.1:9", env={"GEMINI_API_KEY": key})
    line = one_error(proc, "non-ASCII character (position 7 of 8)")
    assert key not in proc.stderr + proc.stdout and line


# ---------------------------------------------------------------------------------------------- refusals

@dataclass
class Case:
    """A command that must be refused with one `error:` line holding `parts`, leaving `keep` as it was."""

    name: str
    argv: list[str]
    parts: tuple[str, ...]
    keep: Path | None = None
    module: str = "minigpt2.finetune"
    env: dict[str, str] = field(default_factory=dict)
    preexec: Callable[[], None] | None = None


def _state_with(run: Path, trainer: str) -> None:
    from safetensors.torch import save_file

    path = run / "last" / "state.safetensors"
    tensors, meta = read_safetensors(path)
    save_file(tensors, str(path), metadata={**meta, "trainer": trainer})


def _file_size_limit() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_each_refusal_is_one_error_line_and_loses_nothing(finished, stopped, tmp_path):
    cases: list[Case] = []

    cut = copy(finished, tmp_path, "cut")
    _state_with(cut, '{"epoch": 1, "param_groups": [')
    cases.append(Case("cut-short resume state", ft(cut, "--epochs", "1", "--resume"),
                      (f"{cut / 'last' / 'state.safetensors'}: its trainer state is not valid JSON",), cut))
    listed = copy(finished, tmp_path, "listed")
    _state_with(listed, "[1, 2]")
    cases.append(Case("non-object resume state", ft(listed, "--epochs", "1", "--resume"),
                      (f"{listed / 'last' / 'state.safetensors'}: its trainer state is not an object",), listed))

    floaty = checkpoint_folder(tmp_path / "floaty")
    cfg = json.loads((floaty / "config.json").read_text())
    (floaty / "config.json").write_text(json.dumps({**cfg, "n_embd": 32.0}))
    argv = ft(tmp_path / "floaty-run", "--epochs", "1")
    argv[argv.index("--model") + 1] = str(floaty)
    cases.append(Case("float n_embd", argv, (f"{floaty / 'config.json'}: n_embd is 32.0; expected an integer",),
                      floaty))
    cases.append(Case("seed beyond 64 bits", ft(tmp_path / "seed", "--seed", str(2**64 + 1)),
                      (f"--seed {2**64 + 1}: expected an integer in [0, 2**63)",)))

    full = copy(stopped, tmp_path, "full")
    cases.append(Case("file-size limit while saving", ft(full, "--epochs", "2", "--resume"),
                      (".safetensors: cannot write it (", "File too large"), full / "last", preexec=_file_size_limit))

    cases.append(Case("--resume, mistyped --out-dir", ft(tmp_path / "no-such-run", "--epochs", "1", "--resume"),
                      (f"--resume --out-dir {tmp_path / 'no-such-run'}: no such folder",)))
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    (no_config / "notes.txt").write_text("mine\n")
    cases.append(Case("--resume --out-dir alone, no config.json", ["--resume", "--out-dir", str(no_config)],
                      (f"--resume --out-dir {no_config}: holds no run (config.json not found)",), no_config))
    other = copy(stopped, tmp_path, "other-lr")
    cases.append(Case("--resume --out-dir alone, another --lr", ["--resume", "--out-dir", str(other), "--lr", "0.5"],
                      ("--lr 0.5 (the run's: 0.001) would change what it computes", "Only --test-references"), other))
    lost = copy(finished, tmp_path, "lost")
    shutil.rmtree(lost / "last")
    cases.append(Case("--resume, state deleted", ft(lost, "--epochs", "1", "--resume"),
                      (f"--resume {lost}: its resume state", "is missing"), lost))

    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    cases.append(Case("--out-dir names a file", ft(a_file, "--epochs", "1"),
                      (f"--out-dir {a_file}: is a file, not a folder",), a_file))
    if os.geteuid() == 0:  # root writes anywhere a mode forbids: /proc refuses new entries to anyone
        read_only = Path("/proc/minigpt2-run")
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        read_only = tmp_path / "ro" / "run"
    cases.append(Case("--out-dir on a read-only path", ft(read_only, "--epochs", "1"),
                      (f"--out-dir {read_only}: cannot create the run folder",)))

    edited = copy(stopped, tmp_path, "edited")
    config = json.loads((edited / "config.json").read_text())
    config["settings"]["optim"]["lr"] = 2e-3
    (edited / "config.json").write_text(json.dumps(config))
    cases.append(Case("hand-edited config.json", ft(edited, "--epochs", "2", "--resume", "--lr", "2e-3"),
                      (f"{edited / 'config.json'} was edited", "optim.lr: 0.001 -> 0.002"), edited))

    cases.append(Case("--name with ../", finetune_args("sst", tmp_path / "x", "--name", "../../escape"),
                      ("--name '../../escape': expected a plain name",)))
    cases.append(Case("LoRA rank above the width", ft(tmp_path / "lora", "--method", "lora", "--lora-rank", "64"),
                      ("--lora-rank 64: larger than the model's layer width (n_embd 32)",)))

    before = {c.name: snapshot(c.keep) if c.keep and c.keep.is_dir() else None for c in cases}
    procs = [start(c.module, *c.argv, env=c.env, preexec_fn=c.preexec) for c in cases]
    for case, proc in zip(cases, procs):
        out, err = proc.communicate(timeout=600)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        try:
            one_error(result, *case.parts)
        except AssertionError as e:
            raise AssertionError(f"case {case.name!r}: {e}") from None
        if before[case.name] is not None:
            assert snapshot(case.keep) == before[case.name], f"case {case.name!r} changed {case.keep}"
        assert not list(tmp_path.rglob("*.tmp")), f"case {case.name!r} left a temporary file"
    assert not (tmp_path / "seed").exists() and not (tmp_path / "no-such-run").exists()
    assert not (tmp_path / "lora").exists()  # refused before the run folder was written
    assert a_file.read_text() == "not a folder\n"
    finetune.main(ft(full, "--epochs", "2", "--resume"))  # what the full disk stopped goes on
    assert json.loads((full / "metrics.json").read_text())["resumed_from_epoch"] == 1


# ---------------------------------------------------------------------------------------------- the other commands

def test_generate_into_a_closed_pipe_ends_quietly(tmp_path):
    proc = start("minigpt2.generate", "--model", "tiny", "--prompt", "Shall I", "--num-samples", "200",
                 "--max-new-tokens", "100", "--seed", "1", "--device", "cpu", "--tokenizer-dir",
                 str(DATA.parent / "gpt2"))
    assert proc.stdout.readline()  # like `| head -1`: one line, then the reader is gone
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=300)
    assert proc.returncode == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_evaluate_warns_when_the_data_changed_since_training(finished, tmp_path):
    run = copy(finished, tmp_path)  # evaluate rewrites the run's dev predictions
    data = tmp_path / "data"
    shutil.copytree(DATA, data)
    with open(data / "ids-sst-dev.csv", "a", encoding="utf-8") as f:
        f.write("new-row\ta changed dev set\t3\n")
    proc = cli("minigpt2.evaluate", str(run), "--device", "cpu", "--data-dir", str(data))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"warning: {data / 'ids-sst-dev.csv'}: its sha256 differs from the one in the run's fingerprint" \
        in proc.stderr
    assert json.loads(proc.stdout)["data_changed"] == ["ids-sst-dev.csv"]
    from app.evaluate import evaluate_run

    assert evaluate_run(run, "dev", device="cpu")["data_changed"] == []  # the data it was trained on

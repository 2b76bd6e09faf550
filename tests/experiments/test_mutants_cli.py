"""The command line's behaviours that `tools/mutate.py --auto experiments/__main__.py` and `--auto
experiments/preflight.py` found untested (docs/testing.md, "Automated mutants"), with fakes: no training, no probe,
no download."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import settings_of
from experiments.sweeps import Run


def settings(**values):
    return settings_of({k.replace("__", "."): v for k, v in values.items()})


@pytest.fixture
def inputs(monkeypatch):
    """The input checks replaced by recorders (the weights, data and tokenizer pass); a synthetic file's sonnet
    count is its name's entry in `sizes` (a.jsonl: 3, b.jsonl: 1), each read logged."""
    import app.runmodel
    import course.fetch
    import course.readers
    import distill.synthetic
    import minigpt2.tokenizer

    log: list[tuple] = []
    sizes = {"a.jsonl": 3, "b.jsonl": 1}
    monkeypatch.setattr(app.runmodel, "base_weights_file", lambda model, offline: None)
    monkeypatch.setattr(course.fetch, "ensure_task_data", lambda name, folder, offline: None)
    monkeypatch.setattr(course.readers, "require_files", lambda folder, names, task: None)
    monkeypatch.setattr(minigpt2.tokenizer, "Tokenizer", lambda d: None)
    monkeypatch.setattr(distill.synthetic, "load_synthetic", lambda path, filter: log.append((Path(path).name, filter))
                        or [None] * sizes[Path(path).name])
    return log


def sonnet_run(name: str, path: Path, n: int | None) -> Run:
    return Run(name, settings(data__task="sonnet", model__model="tiny", data__synthetic__path=str(path),
                              data__synthetic__n=n))


# ---------------------------------------------------------------------------------------------- preflight

def test_a_second_synthetic_file_of_the_sweep_is_checked_too(inputs, tmp_path):
    """Two arms on two files, the second missing: the second file's check is its own (not the first's, once)."""
    from experiments.preflight import PreconditionError, check_preconditions

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("")
    with pytest.raises(PreconditionError, match=rf"^sweep s cannot start: --synthetic {b}: {b}: no such file; "):
        check_preconditions("s", [sonnet_run("r0", a, 3), sonnet_run("r1", b, 1)])
    assert inputs == [("a.jsonl", "all")]


def test_each_synthetic_file_s_count_is_its_own(inputs, tmp_path):
    """a.jsonl holds 3 sonnets, b.jsonl 1: asking b for 2 after a for 3 fails on b's count (1), not a's (3); each
    file read once."""
    from experiments.preflight import PreconditionError, check_preconditions

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("")
    b.write_text("")
    check_preconditions("s", [sonnet_run("r0", a, 3), sonnet_run("r1", b, 1)])
    assert inputs == [("a.jsonl", "all"), ("b.jsonl", "all")]
    with pytest.raises(PreconditionError, match=rf"^sweep s cannot start: --synthetic {b}: {b}: asked for 2 synthetic "
                                                rf"sonnets \(filter=all\) but it has only 1$"):
        check_preconditions("s", [sonnet_run("r0", a, 3), sonnet_run("r1", b, 2)])


# ---------------------------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("argv, message", [
    # the flag named is the one given (not --cpus-per-run, the other Ray-only flag)
    (["--address", "h:1"], "--address is a --launcher ray setting; add --launcher ray"),
    # two jobs are already more than one: the smallest --jobs that cannot run in-process
    (["--jobs", "2", "--isolation", "in-process"], "--jobs 2 runs each run in its own subprocess; --isolation "
                                                   "in-process runs them one at a time in this process: choose one"),
])
def test_a_launcher_flag_error_names_the_flag_given(argv, message, monkeypatch, tmp_path):
    """The whole `error:` line of `python -m experiments` (SystemExit with a message: exit code 1), before any
    work."""
    import sys
    import types

    from experiments import __main__ as cli

    monkeypatch.setitem(sys.modules, "ray", types.ModuleType("ray"))
    with pytest.raises(SystemExit) as e:
        cli.main(["baseline", "--runs-dir", str(tmp_path / "runs"), *argv])
    assert e.value.code == f"error: {message}"
    assert not (tmp_path / "runs").exists()


def test_the_help_has_the_first_paragraph_above_the_flags_and_the_examples_once_below(capsys):
    """`--help`: usage, the doc's first line as the description, the flags, then the examples and the closing
    paragraph as the epilog; each example line once, the first line once."""
    from experiments import __main__ as cli

    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    out = capsys.readouterr().out
    head, flags = out.split("\noptions:\n")
    assert head.split("\n\n", 1)[1] == "The study's experiments, one command each:\n"
    assert out.count("study's experiments, one command each") == 1
    example = "\n    python -m experiments lora-ranks --seeds 3          # sonnets: LoRA ranks 1..256 vs full fine-tuning\n"
    assert out.count(example) == 1 and flags.index("  --cpus-per-run CPUS_PER_RUN") < flags.index(example)
    epilog = flags[flags.index("\n\n    python -m experiments baseline "):]
    assert epilog.startswith("\n\n    python -m experiments baseline                      # full fine-tuning, four "
                             "tasks\n    python -m experiments lora-ranks --seeds 3 ")


@pytest.mark.parametrize("value, reason", [("'--offline", "No closing quotation"),
                                           ("--device cpu \\", "No escaped character")])
def test_finetune_args_a_shell_cannot_split_is_one_error_line(value, reason, tmp_path):
    """An unclosed quote (or a trailing backslash) in --finetune-args was a ValueError traceback from shlex; now one
    line naming the flag, its value and shlex's reason, before any work."""
    from experiments import __main__ as cli

    with pytest.raises(SystemExit) as e:
        cli.main(["baseline", "--dry-run", "--finetune-args", value, "--runs-dir", str(tmp_path / "runs")])
    assert e.value.code == f"error: --finetune-args {value}: cannot split it as a shell would ({reason})"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("samples", ["0", "-3"])
def test_a_bootstrap_of_no_resamples_is_refused_before_any_work(samples, tmp_path):
    """--bootstrap 0 reached the report, after every run, as numpy's "need at least one array to concatenate"
    traceback (`studentized_interval` draws no resample); now one line up front, nothing run or written."""
    from experiments import __main__ as cli

    for mode in ("--report-only", "--dry-run"):
        with pytest.raises(SystemExit) as e:
            cli.main(["baseline", mode, "--bootstrap", samples, "--runs-dir", str(tmp_path / "runs"),
                      "--out", str(tmp_path / "out")])
        assert e.value.code == f"error: --bootstrap {samples}: expected an integer >= 1"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_one_resample_is_enough_to_pass_the_check():
    from experiments import __main__ as cli

    cli.check_settings(cli.parse_args(["baseline", "--bootstrap", "1"]))


def test_an_out_folder_that_cannot_be_made_is_refused_before_any_run(tmp_path, monkeypatch):
    """--out under a file (or a file itself) was a NotADirectoryError / FileExistsError traceback when the report
    was written, after every run of the sweep; now one line before the first run, and no run started."""
    from experiments import __main__ as cli

    monkeypatch.setattr(cli, "make_launcher", lambda args: pytest.fail("a launcher was made"))
    (tmp_path / "afile").write_text("")
    for out, reason in ((tmp_path / "afile" / "results", "Not a directory"), (tmp_path / "afile", "File exists")):
        with pytest.raises(SystemExit) as e:
            cli.main(["baseline", "--tiny", "--report-only", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)])
        assert e.value.code == f"error: --out {out}: cannot make the results folder there ({reason})"
    assert not (tmp_path / "runs").exists()


def test_a_runs_dir_that_cannot_hold_run_folders_is_refused_before_any_run(tmp_path, monkeypatch):
    """--runs-dir naming a file was a NotADirectoryError traceback for every run, each run counted as failed; now
    one line naming the flag and the sweep's folder before the first run, no launcher made."""
    from experiments import __main__ as cli

    monkeypatch.setattr(cli, "make_launcher", lambda args: pytest.fail("a launcher was made"))
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as e:
        cli.main(["baseline", "--tiny", "--runs-dir", str(tmp_path / "afile"), "--out", str(tmp_path / "out")])
    assert e.value.code == (f"error: --runs-dir {tmp_path / 'afile' / 'baseline'}: cannot make the run folders "
                            "there (Not a directory)")
    assert (tmp_path / "afile").read_text() == ""  # nothing written over


def test_base_weights_that_cannot_load_are_refused_before_any_run(tmp_path, monkeypatch):
    """--model naming an empty file: every run failed in turn with the same load error; now preflight reads the
    header once and the sweep does not start (no launcher made, no run folder)."""
    from experiments import __main__ as cli

    monkeypatch.setattr(cli, "make_launcher", lambda args: pytest.fail("a launcher was made"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        cli.main(["baseline", "--tiny", "--model", str(weights), "--runs-dir", str(tmp_path / "runs"), "--out",
                  str(tmp_path / "out")])
    assert str(e.value.code).startswith(f"error: sweep baseline cannot start: --model {weights}: {weights}: not a "
                                        "valid safetensors file (0 bytes; truncated or another format?): ")
    assert not (tmp_path / "runs").exists()


def test_a_new_nested_out_folder_is_made_with_its_parents(tmp_path):
    """--out a/b/c where none exists yet: made whole (not refused for a missing parent), the report in it."""
    from experiments import __main__ as cli

    out = tmp_path / "a" / "b" / "c"
    assert cli.main(["baseline", "--tiny", "--report-only", "--runs-dir", str(tmp_path / "runs"), "--out",
                     str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["baseline.csv", "baseline.md", "baseline.png", "index.html"]

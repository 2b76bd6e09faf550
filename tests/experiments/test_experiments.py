"""experiments/: sweep definitions against the real finetune parser, the resumable runner (with a fake executor
that writes what finetune writes), bootstrap statistics, tables and plots. The tiny end-to-end sweeps are in
test_experiments_tiny.py."""

from __future__ import annotations

import functools
import json
import math
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments import __main__ as cli
from app import cli as app_cli
from experiments import launch, metrics, plots, report, runner, stats, tables
from experiments.sweeps import (SWEEPS, TINY_DATA_DIR, TINY_SYNTHETIC_DIR, ZERO_SHOT_QUORA, Run, SweepOptions,
                               build_sweep)
from app.cli import flat, settings_of
from app.runfolder import read_settings_file
from app.settings import EvaluateSettings, HardwareSettings, RunSettings, SettingsError
from minigpt2.metrics import chrf
from tests import FIXTURES


def parse(run):
    """A run's settings by flag name."""
    return SimpleNamespace(**flat(run.settings))

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BASELINE = build_sweep("baseline", SweepOptions())


# ---------------------------------------------------------------------------------------------- sweeps

@pytest.mark.parametrize("tiny", [False, True])
@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_every_run_is_a_valid_finetune_command(name, tiny):
    sweep = build_sweep(name, SweepOptions(tiny=tiny, synthetic_dir=str(TINY_SYNTHETIC_DIR)))
    assert sweep.runs
    for run in sweep.runs:
        args, knobs = parse(run), sweep.knob_values(run)
        assert args.seed == knobs["seed"]
        assert args.model == ("tiny" if tiny else "gpt2")
        if knobs.get("stage") == "base":  # the model before fine-tuning: no training, tiny or not
            assert args.epochs == 0
        else:
            assert (args.epochs == 1) == tiny
        for key in ("task", "precision", "synthetic_n", "synthetic_filter"):
            if knobs.get(key) is not None and hasattr(args, key):
                value = getattr(args, key) or (0 if key == "synthetic_n" else None)  # n = 0: no --synthetic
                assert value == knobs[key], (run.name, key)
        if knobs.get("method") == "lora":
            alpha, lr = knobs.get("alpha", 16), knobs.get("lr", 1e-2)  # the study's unless searched
            assert (args.lora_rank, args.lora_alpha, args.lr) == (knobs["rank"], alpha, lr)
            assert args.lora_targets == knobs["targets"]


def test_sweep_shapes(monkeypatch):
    monkeypatch.delenv("MINIGPT2_DATA_DIR", raising=False)  # the data folder is absent here, as on a fresh machine
    full = {n: build_sweep(n, SweepOptions(synthetic_dir=str(TINY_SYNTHETIC_DIR))) for n in SWEEPS}
    assert [full["baseline"].knob_values(r)["task"] for r in full["baseline"].runs] == ["sst", "cfimdb", "quora", "sonnet"]
    ranks = [full["lora-ranks"].knob_values(r)["rank"] for r in full["lora-ranks"].runs]
    assert ranks == [None, 1, 2, 4, 8, 16, 32, 64, 128, 256]  # full fine-tuning first, then every rank
    prec = {(full["precision"].knob_values(r)["precision"], full["precision"].knob_values(r)["qaft"]) for r in full["precision"].runs}
    assert len(prec) == 11 and ("fp32", False) in prec and ("int4", True) in prec and ("fp8", False) in prec
    assert all(r.evaluations and r.evaluations[0].name == "zero_shot_quora" for r in full["precision"].runs)
    base = [k["precision"] for k in map(full["precision"].knob_values, full["precision"].runs) if k["stage"] == "base"]
    assert base == ["fp64", "fp32", "bf16", "fp8", "int8", "int4"]  # the zero-shot reference at each precision
    teachers = full["teachers"].runs
    assert full["teachers"].knob_values(teachers[0])["synthetic_n"] == 0 and teachers[0].settings.data.synthetic is None
    # The fixture files hold 4 kept sonnets, 2 of them perfect: each curve ends at what its file has.
    assert [r.name for r in teachers[1:3]] == ["gemini-2.5-flash-n4-all-s11711",
                                               "gemini-2.5-flash-n2-perfect-s11711"]
    # then per teacher its perfect sonnets alone (the mixing ratios need the training file, absent here)
    assert [full["teachers"].knob_values(r)["mix"] for r in teachers[5:]] == ["synthetic only"] * 2
    assert all(r.settings.data.synthetic.only for r in teachers[5:]) and len(teachers) == 7
    assert "mixing ratios wait for the sonnet training file" in full["teachers"].note
    tiny_teachers = build_sweep("teachers", SweepOptions(tiny=True))
    assert "gemini-2.5-flash: ratio 0.5 is its n2-perfect run" in tiny_teachers.note
    grid = full["lora-alpha-lr"].runs
    assert {(full["lora-alpha-lr"].knob_values(r)["alpha"], full["lora-alpha-lr"].knob_values(r)["lr"]) for r in grid} == {(a, lr) for a in (4, 8, 16, 32, 64)
                                                                        for lr in (1e-3, 3e-3, 1e-2, 3e-2)}
    assert (16, 1e-2) in {(full["lora-alpha-lr"].knob_values(r)["alpha"], full["lora-alpha-lr"].knob_values(r)["lr"]) for r in grid}  # the study's choice is a point
    assert ("gemini-2.5-flash has 2 perfect sonnets; the n1000-perfect arm needs 1000: generate ~2495 more "
            "requests") in full["teachers"].note  # 998 more perfect ones at the file's 2 per 5 requests
    tiny = build_sweep("lora-ranks", SweepOptions(tiny=True))
    assert [tiny.knob_values(r)["rank"] for r in tiny.runs] == [None, 1, 4] and "ranks 1, 4 only" in tiny.note


def test_every_arm_states_its_compute_dtype_and_fp32_is_fp32_on_a_gpu():
    sweep = build_sweep("precision", SweepOptions())
    fp32 = next(r for r in sweep.runs if sweep.knob_values(r)["precision"] == "fp32")
    args = parse(fp32)
    assert args.autocast == "off"
    def dtype(device: str, **options) -> str:
        return report.compute_dtype(app_cli.settings_of({"data.task": "sonnet", **options}), device)

    assert dtype("cuda:0", **{"precision.format": "fp32", "optim.autocast": "off"}) == "fp32"
    assert dtype("cuda:0", **{"precision.format": "fp32", "optim.autocast": "auto"}) == "bf16 autocast"
    assert dtype("cpu", **{"precision.format": "fp32", "optim.autocast": "auto"}) == "fp32"
    assert dtype("cuda", **{"precision.format": "int8", "optim.autocast": "off"}) == "fp32 (int8 fake-quant)"
    assert dtype("cpu", **{"precision.format": "fp64", "optim.autocast": "off"}) == "fp64"
    rows = [{"task": "sonnet", "seed": 1, "status": "done", "metric": "chrf", "dev_score": 40.0, "ci_low": 39.0,
             "ci_high": 41.0, "precision": "fp32", "qaft": False, "compute": "fp32"}]
    assert "| fp32 | no | — | fp32 | 40.00 [39.00, 41.00] |" in tables.markdown_table(
        sweep, metrics.group_seeds(rows, list(sweep.knobs)))


def test_synthetic_sizes_end_at_what_a_file_has():
    from experiments.sweeps import fit_sizes

    assert fit_sizes((250, 500, 1000), 5000) == [250, 500, 1000]
    assert fit_sizes((250, 500, 1000), 1000) == [250, 500, 1000]
    assert fit_sizes((250, 500, 1000), 640) == [250, 500, 640]
    assert fit_sizes((250, 500, 1000), 100) == [100]
    assert fit_sizes((250, 500, 1000), 0) == []


def test_seeds_multiply_runs_with_distinct_names():
    sweep = build_sweep("baseline", SweepOptions(seeds=3))
    assert len(sweep.runs) == 12
    assert len({r.name for r in sweep.runs}) == 12
    assert sorted({sweep.knob_values(r)["seed"] for r in sweep.runs}) == [11711, 11712, 11713]
    with pytest.raises(ValueError, match="--seeds 0: expected an integer from 1 to 100"):
        build_sweep("baseline", SweepOptions(seeds=0))


def test_sweep_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown sweep 'nope'"):
        build_sweep("nope", SweepOptions())
    waiting = build_sweep("teachers", SweepOptions())
    assert waiting.runs == [] and "--synthetic-dir" in waiting.waits[0] and "distill.generate" in waiting.waits[0]
    assert "no <teacher>.jsonl files" in build_sweep("teachers", SweepOptions(synthetic_dir=str(tmp_path))).waits[0]
    with pytest.raises(SystemExit, match="error: sweep teachers cannot start; it waits for: the Gemini files"):
        cli.main(["teachers", "--runs-dir", str(tmp_path)])


def test_an_empty_teacher_file_is_priced_at_the_studys_rate(tmp_path, monkeypatch):
    """A <teacher>.jsonl made before its first request came back (no record) holds 0 sonnets: its curves end at
    0 and the requests are priced at the study's rate (was: "holds no records yet" stopped the whole sweep)."""
    from experiments import estimate

    monkeypatch.delenv("MINIGPT2_DATA_DIR", raising=False)
    (tmp_path / "gemini-2.5-pro.jsonl").write_text("")
    sweep = build_sweep("teachers", SweepOptions(synthetic_dir=str(tmp_path), data_dir=str(tmp_path / "none")))
    assert [r.name for r in sweep.runs] == ["real-only-s11711"]
    assert sweep.note.split("; ")[:4] == [  # 1000 kept at one a request; 1000 perfect at 75%: ceil(1333.3)
        "gemini-2.5-pro has 0 kept sonnets", "the n1000-all arm needs 1000: generate ~1000 more requests (its curve "
        "ends at 0 until then)", "gemini-2.5-pro has 0 perfect sonnets", "the n1000-perfect arm needs 1000: generate "
        "~1334 more requests (its curve ends at 0 until then)"]
    lines, _ = estimate.gemini_bill(sweep.runs, sweep.synthetic_needs)
    assert lines[0].startswith(f"  Gemini gemini-2.5-pro: {tmp_path / 'gemini-2.5-pro.jsonl'} not made yet; "
                               "1,334 requests for 1,000 perfect sonnets (the study's perfect rate 75%, assumed)")


def test_all_runs_what_it_can_and_says_what_waits(tmp_path, monkeypatch, capsys):
    """No Gemini files: `all --dry-run` still plans every sweep, the teachers as if their files existed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MINIGPT2_DATA_DIR", raising=False)  # no course data either (data/ under tmp_path)
    assert cli.main(["all", "--dry-run", "--stated-rates", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sweep teachers: " in out and "planned as if synthetic/gemini-2.5-flash.jsonl" in out
    assert "mixing ratios wait for the sonnet training file" in out  # no data here: no real sonnet count
    assert "sweep baseline: 4 runs" in out and "sweep precision:" in out
    assert "all sweeps (6 with runs):" in out


def test_model_and_extra_flags_reach_every_run():
    sweep = build_sweep("baseline", SweepOptions(model="gpt2-medium", data_dir="/d",
                                                 finetune_args=["--device", "cuda:1"]))
    for run in sweep.runs:
        args = parse(run)
        assert (args.model, args.data_dir, args.device) == ("gpt2-medium", "/d", "cuda:1")


# ---------------------------------------------------------------------------------------------- runner

class FakeFinetune:
    """Stands in for a run's steps (`runner.Step`): records each command, reads the settings finetune was handed
    and writes the files a finished run has."""

    def __init__(self, fail: set[str] = frozenset(), stop_after: set[str] = frozenset()) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.handed: dict[str, RunSettings] = {}  # run folder name -> the settings finetune was last handed
        self.evaluations: list[EvaluateSettings] = []  # the settings each evaluation was handed, in order
        self.fail, self.stop_after = fail, stop_after

    def __call__(self, step: runner.Step, log: Path) -> None:
        self.calls.append((step.module, list(step.argv)))
        assert step.argv[0] == "--settings" and len(step.argv) == 2  # each step travels as its settings file
        if step.module == "minigpt2.evaluate":
            evaluation = read_settings_file(Path(step.argv[1]), EvaluateSettings)
            self.evaluations.append(evaluation)
            Path(evaluation.run_dir, "eval-quora-zero-shot-dev.json").write_text(json.dumps({"accuracy": 0.5}))
            return
        settings = read_settings_file(Path(step.argv[1]))
        run_dir = Path(settings.run.out_dir)
        self.handed[run_dir.name] = settings
        if run_dir.name in self.fail:
            raise RuntimeError("CUDA out of memory (fake)")
        (run_dir / "config.json").write_text(json.dumps({"settings": settings.to_dict()}))
        if run_dir.name in self.stop_after:
            (run_dir / "last").mkdir(exist_ok=True)
            (run_dir / "last" / "state.safetensors").write_text("")
            (run_dir / "metrics.json").write_text(json.dumps({"metric": "accuracy", "stopped_after_epoch": 1}))
            return
        for name in ("dev.csv", "test.csv"):
            (run_dir / name).write_text("id \t Predicted_Sentiment \n")
        (run_dir / "metrics.json").write_text(json.dumps({
            "metric": "accuracy", "dev": {"accuracy": 0.5}, "dev_predictions": "dev.csv",
            "test_predictions": "test.csv"}))

    def started(self, module: str = "minigpt2.finetune") -> list[str]:
        return [Path(argv[1]).parent.name for m, argv in self.calls if m == module]


def sst(**options) -> RunSettings:
    """An sst run's settings with these overrides (keyword `a__b` for the path "a.b")."""
    return settings_of({"data.task": "sst", **{k.replace("__", "."): v for k, v in options.items()}})


def three_runs(evaluations=()) -> list[Run]:
    return [Run(f"r{i}", sst(optim__seed=i), evaluations) for i in range(3)]


def sweep(runs, root, executor, **launcher) -> runner.SweepResult:
    """One sequential pass, as `python -m experiments` makes it without --jobs."""
    return launch.Local(executor, progress=False, **launcher).launch(runs, root)


def test_runner_runs_each_once_and_skips_finished_runs(tmp_path):
    fake = FakeFinetune()
    first = sweep(three_runs(), tmp_path, fake)
    assert first.started == ["r0", "r1", "r2"] and not first.failed
    assert fake.started() == ["r0", "r1", "r2"]
    assert all(runner.is_finished(tmp_path / f"r{i}") for i in range(3))
    record = json.loads((tmp_path / "r1" / "experiment.json").read_text())
    assert "args" not in record and record["schema"] == 2 and record["settings"]["optim"]["seed"] == 1
    assert read_settings_file(tmp_path / "r1" / "settings.json") == fake.handed["r1"]
    assert fake.handed["r1"].run.out_dir == str(tmp_path / "r1") and not fake.handed["r1"].run.resume
    second = sweep(three_runs(), tmp_path, fake)
    assert second.started == [] and second.skipped == ["r0", "r1", "r2"]
    assert len(fake.calls) == 3  # nothing was invoked again


def test_runner_resumes_an_interrupted_run_and_restarts_an_empty_one(tmp_path):
    sweep(three_runs(), tmp_path, FakeFinetune(stop_after={"r1"}))
    for name in ("metrics.json", "config.json"):  # died before writing anything
        (tmp_path / "r2" / name).unlink()
    assert not runner.is_finished(tmp_path / "r1") and not runner.is_finished(tmp_path / "r2")
    assert [s for _, s in runner.plan(three_runs(), tmp_path)] == ["done", "resume", "run"]
    fake = FakeFinetune()
    result = sweep(three_runs(), tmp_path, fake)
    assert result.started == ["r1", "r2"] and result.skipped == ["r0"]
    assert fake.handed["r1"].run.resume and not fake.handed["r2"].run.resume


def test_a_failed_run_is_reported_and_the_sweep_goes_on(tmp_path):
    result = sweep(three_runs(), tmp_path, FakeFinetune(fail={"r1"}))
    assert list(result.failed) == ["r1"] and "out of memory" in result.failed["r1"]
    assert result.started == ["r0", "r1", "r2"]
    assert runner.is_finished(tmp_path / "r2")
    again = sweep(three_runs(), tmp_path, FakeFinetune())
    assert again.started == ["r1"]  # only the failed one is retried


def test_a_returned_but_unfinished_run_counts_as_failed(tmp_path):
    def silent(step, log):  # returns without writing anything
        pass
    result = sweep(three_runs()[:1], tmp_path, silent)
    assert "holds no final metrics.json" in result.failed["r0"]


def test_the_placement_is_handed_over_and_changes_no_run(tmp_path):
    fake = FakeFinetune()
    sweep(three_runs()[:1], tmp_path, fake, devices=["cpu:1"], threads=3)
    handed = fake.handed["r0"]
    assert (handed.hardware.device, handed.hardware.threads) == ("cpu:1", 3)
    assert runner.defining(handed) == runner.defining(three_runs()[0].settings)
    sweep(three_runs()[1:2], tmp_path, fake)  # no device named: the run's own
    assert (fake.handed["r1"].hardware.device, fake.handed["r1"].hardware.threads) == ("auto", launch.cpu_count())


def test_runner_refuses_a_folder_made_with_other_settings(tmp_path):
    runs = three_runs()
    sweep(runs[:1], tmp_path, FakeFinetune())
    neutral = Run("r0", sst(optim__seed=0, hardware__device="cuda:3", optim__progress=False))
    assert sweep([neutral], tmp_path, FakeFinetune()).skipped == ["r0"]
    changed = Run("r0", sst(optim__seed=0, optim__lr=0.1))
    with pytest.raises(runner.RunFolderConflict, match=r"other settings:\n  optim.lr: 1e-05 -> 0.1\nDelete that"):
        sweep([changed], tmp_path, FakeFinetune())


OLD_RUN = FIXTURES / "old_run" / "sst-s11711"  # `all --tiny` at 99b8a86, weights left out


def test_a_run_folder_from_before_settings_records_is_skipped_resumed_or_refused(tmp_path):
    """A finished run folder written at 99b8a86 (experiment.json with finetune flags, config.json with "args"
    beside "settings"; its weights left out): read through the CLI builder, it is skipped when finished,
    resumed when only started, and refused for other settings, with the difference."""
    import shutil

    run = next(r for r in build_sweep("baseline", SweepOptions(tiny=True)).runs if r.name == OLD_RUN.name)
    shutil.copytree(OLD_RUN, tmp_path / run.name)
    assert "args" in json.loads((tmp_path / run.name / "experiment.json").read_text())
    assert runner.defining(runner.recorded_settings(tmp_path / run.name)) == runner.defining(run.settings)
    fake = FakeFinetune()
    assert sweep([run], tmp_path, fake).skipped == [run.name] and not fake.calls
    (tmp_path / run.name / "metrics.json").unlink()  # as if it died after its first epoch
    assert runner.plan([run], tmp_path)[0][1] == "resume"
    assert sweep([run], tmp_path, fake).started == [run.name] and fake.handed[run.name].run.resume
    shutil.rmtree(tmp_path / run.name)
    shutil.copytree(OLD_RUN, tmp_path / run.name)
    other = build_sweep("baseline", SweepOptions(tiny=True, finetune_args=["--epochs", "2"])).runs[0]
    with pytest.raises(runner.RunFolderConflict, match=r"other settings:\n  optim.epochs: 1 -> 2\n"):
        sweep([other], tmp_path, FakeFinetune())


def test_cli_reports_a_folder_conflict_as_an_error_message(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "in_subprocess", FakeFinetune())
    monkeypatch.setattr(cli, "check_preconditions", lambda sweep, runs: None)  # the fake needs no GPT-2 weights
    root = tmp_path / "runs"
    assert cli.main(["baseline", "--runs-dir", str(root), "--out", str(tmp_path), "--no-progress"]) == 0
    with pytest.raises(SystemExit, match=r"^error: .*sst-s11711 holds a run made with other settings:\n  "
                                         r"model.model: 'gpt2' -> 'gpt2-medium'"):
        cli.main(["baseline", "--model", "gpt2-medium", "--runs-dir", str(root), "--out", str(tmp_path)])


def test_follow_up_evaluations_travel_as_their_settings_and_run_once_on_the_run_folder(tmp_path):
    fake = FakeFinetune()
    result = sweep(three_runs((ZERO_SHOT_QUORA,)), tmp_path, fake, devices=["cpu"])
    assert result.evaluated == [f"r{i}:zero_shot_quora" for i in range(3)]
    evals = [argv for m, argv in fake.calls if m == "minigpt2.evaluate"]
    assert evals[0] == ["--settings", str(tmp_path / "r0" / "zero_shot_quora.settings.json")]
    assert fake.evaluations[0] == EvaluateSettings(run_dir=str(tmp_path / "r0"), task="quora", zero_shot=True,
                                                   hardware=HardwareSettings(device="cpu"))  # as placed
    assert [e.run_dir for e in fake.evaluations] == [str(tmp_path / f"r{i}") for i in range(3)]
    (tmp_path / "r2" / "eval-quora-zero-shot-dev.json").unlink()
    fake2 = FakeFinetune()
    again = sweep(three_runs((ZERO_SHOT_QUORA,)), tmp_path, fake2)
    assert again.started == [] and again.evaluated == ["r2:zero_shot_quora"] and len(fake2.calls) == 1
    # no device placed: evaluate's own default, and the file rewritten for this pass
    assert fake2.evaluations == [EvaluateSettings(run_dir=str(tmp_path / "r2"), task="quora", zero_shot=True)]
    assert ZERO_SHOT_QUORA.settings.run_dir is None and ZERO_SHOT_QUORA.task == "quora"


def test_an_evaluation_in_process_is_handed_its_settings_without_a_command_line(tmp_path, monkeypatch):
    from app import evaluate

    handed = []

    def scored(settings):
        handed.append(settings)
        Path(settings.run_dir, ZERO_SHOT_QUORA.output).write_text("{}")
    monkeypatch.setattr(evaluate, "run", scored)
    monkeypatch.setattr(app_cli, "evaluate_settings", None)  # no argv round trip: the parser is never reached
    fake = FakeFinetune()
    runner.execute(Run("r0", sst(), (ZERO_SHOT_QUORA,)), tmp_path,
                   lambda step, log: step.call() if step.module == "minigpt2.evaluate" else fake(step, log),
                   runner.Placement(device="cpu"))
    assert handed == [EvaluateSettings(run_dir=str(tmp_path / "r0"), task="quora", zero_shot=True,
                                       hardware=HardwareSettings(device="cpu"))]


def test_in_process_executor_calls_the_run_and_a_refusal_is_a_failed_run(tmp_path):
    step = runner.Step("minigpt2.finetune", (), functools.partial(runner._finetune, settings_of(
        {"data.task": "sst", "hardware.device": "cuda:9", "run.out_dir": str(tmp_path / "r")})))
    with pytest.raises(runner.RunFailed, match=r"^minigpt2.finetune exited: error: --device cuda:9"):
        runner.in_process(step, tmp_path / "log")
    assert not (tmp_path / "r").exists()


def test_dry_run_lists_the_runs_and_runs_none(tmp_path, monkeypatch, capsys):
    def refuse(*a, **k):
        raise AssertionError("--dry-run started a run")
    monkeypatch.setattr(cli, "in_process", refuse)
    monkeypatch.setattr(cli, "in_subprocess", refuse)
    root = tmp_path / "runs"
    assert cli.main(["lora-ranks", "--tiny", "--dry-run", "--runs-dir", str(root), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sweep lora-ranks: 3 runs" in out and "--tiny: ranks 1, 4 only" in out
    assert ("[run] lora-r4-s11711: data.task=sonnet data.max_train=4 data.max_eval=2 model.model=tiny model.method=lora "
            "model.lora.rank=4 optim.epochs=1 ") in out  # the defining settings that differ from the defaults
    assert not root.exists() and not (tmp_path / "lora-ranks.csv").exists()
    assert "3 runs, epochs 1, " in out and " training tokens; ~" in out and "probe: the fastest of 5 steps of tiny" in out


def test_dry_run_counts_training_tokens_and_prices_the_teachers(capsys):
    from experiments import estimate
    from experiments.sweeps import TINY_DATA_DIR, TINY_TOKENIZER_DIR
    from minigpt2.tokenizer import Tokenizer
    from course.readers import read_sonnets

    sweep = build_sweep("lora-ranks", SweepOptions(tiny=True))
    w = estimate.run_workload(sweep.runs[0])
    tokens, epochs = w.train_tokens // w.epochs, w.epochs
    tok = Tokenizer(str(TINY_TOKENIZER_DIR))
    sonnets = read_sonnets(TINY_DATA_DIR / "sonnets.txt")[0][:4]  # --tiny trains on 4 examples
    by_hand = sum(min(128, len(tok.encode(s.text))) for s in sonnets)  # the tiny model holds 128 positions
    assert epochs == 1 and by_hand <= tokens <= by_hand + 4 * 8  # plus end-of-text and layout tokens
    cost = estimate.sweep_cost(sweep.runs, estimate.measured_rates("tiny", "cpu"))
    assert cost.cpu_s > 0 and cost.train_tokens == 3 * tokens
    teachers = build_sweep("teachers", SweepOptions(tiny=True))
    lines, usd = estimate.gemini_bill(teachers.runs, teachers.synthetic_needs)
    flash = next(x for x in lines if x.startswith("  Gemini gemini-2.5-flash: "))
    assert "gemini-2.5-flash.jsonl: 5 requests made, $0.00 billed" in flash  # the fixture records carry no usage
    assert lines[-1].startswith("  Gemini total: ~$") and usd >= 0


def test_a_run_is_checked_against_the_settings_when_the_sweep_is_built():
    with pytest.raises(SettingsError, match="--lr 0.0: expected a finite number > 0"):
        build_sweep("baseline", SweepOptions(finetune_args=["--lr", "0"]))
    with pytest.raises(SettingsError, match="--lora-rank set\\(s\\) LoRA, which needs --method lora"):
        build_sweep("baseline", SweepOptions(finetune_args=["--lora-rank", "4"]))
    runs = build_sweep("lora-ranks", SweepOptions(tiny=True, finetune_args=["--lr", "0.5"])).runs
    assert {r.settings.optim.lr for r in runs} == {0.5}  # the user's --finetune-args win over every point's


# ---------------------------------------------------------------------------------------------- stats

def sonnet_pairs() -> tuple[list[str], list[str]]:
    from course.readers import read_sonnets

    refs = [s.text for s in read_sonnets(TINY_DATA_DIR / "TRUE_sonnets_held_out_dev.txt")[0]]
    hyps = [" ".join(r.split()[: 8 + 5 * i]) for i, r in enumerate(refs)]  # prefixes of growing length
    return hyps, refs


def test_bootstrap_chrf_is_sacrebleu_corpus_chrf_per_resample():
    hyps, refs = sonnet_pairs()
    ci = stats.bootstrap_chrf(hyps, refs, samples=300, seed=1)
    assert ci.value == pytest.approx(chrf(hyps, refs), abs=1e-9)
    assert math.isnan(ci.low) and math.isnan(ci.high) and ci.n == len(refs) == 3  # too few for an interval
    many = stats.bootstrap_chrf(hyps * 3, refs * 3, samples=300, seed=1)
    assert many.low < many.value < many.high and many.n == 9
    assert stats.bootstrap_chrf(hyps * 3, refs * 3, samples=300, seed=1) == many  # seeded
    # A resample's score is the corpus chrF of exactly those examples.
    st = stats.chrf_statistics(hyps, refs)
    pick = [0, 0, 2]
    assert float(stats.chrf_of_sums(st[pick].sum(0))) == pytest.approx(
        chrf([hyps[i] for i in pick], [refs[i] for i in pick]), abs=1e-9)


def test_bootstrap_accuracy():
    few = stats.bootstrap_accuracy([1, 0, 1], [1, 0, 1])  # 3 rows: below MIN_INTERVAL_N, no interval
    assert (few.value, few.n) == (1.0, 3) and math.isnan(few.low) and math.isnan(few.high)
    assert stats.bootstrap_accuracy([1] * 8, [1] * 8) == stats.Interval(1.0, 1.0, 1.0, 8)  # no spread: the point
    ci = stats.bootstrap_accuracy([1] * 50 + [0] * 50, [1] * 100, samples=2000)
    assert ci.value == 0.5 and 0.38 < ci.low < 0.45 and 0.55 < ci.high < 0.62  # ~ 0.5 ± 1.96 * 0.05
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        stats.bootstrap_accuracy([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="1 hypotheses for 2 references"):
        stats.bootstrap_chrf(["a"], ["a", "b"])


def test_mean_std():
    assert stats.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert stats.mean_std([4.0]) == (4.0, 0.0)
    assert all(math.isnan(v) for v in stats.mean_std([]))


# ---------------------------------------------------------------------------------------------- report

def point(score, **settings):
    base = dict(seeds=1, runs=1, metric="chrf", score=score, std=0.0, low=score - 1, high=score + 1,
                trainable_params=None, model_bytes=None, zero_shot_quora=None, train_synthetic=None)
    return {**base, **settings}


FAKE_POINTS = {
    "baseline": [point(0.5, task="sst", method="full", metric="accuracy", low=0.4, high=0.6),
                 point(40.0, task="sonnet", method="full")],
    "lora-ranks": [point(42.0, method="full", rank=None, targets=None)]
    + [point(40.0 + r / 100, method="lora", rank=r, targets="attn+mlp", trainable_params=r * 165888)
       for r in (1, 4, 16)],
    "lora-targets": [point(40.0, method="lora", rank=4, targets=t, trainable_params=n)
                     for t, n in (("attn", 294912), ("attn+mlp", 663552))],
    "precision": [point(42.0 - i, precision=p, qaft=q, model_bytes=b, zero_shot_quora=0.6)
                  for i, (p, q, b) in enumerate([("fp32", False, 4e8), ("int8", False, 1e8), ("int8", True, 1e8)])],
    "lora-alpha-lr": [point(40.0 + a / 10 - abs(lr - 1e-2) * 10, method="lora", rank=16, alpha=a, lr=lr)
                      for a in (8, 16) for lr in (3e-3, 1e-2)],
    "teachers": [point(41.0, teacher=None, synthetic_n=0, synthetic_filter=None)]
    + [point(42.0, teacher=t, synthetic_n=2, synthetic_filter=f) for t in ("a", "b") for f in ("all", "perfect")],
}


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_plots_are_pngs_with_labelled_axes(name, tmp_path):
    fig = plots.plot(build_sweep(name, SweepOptions(tiny=True)).plot, FAKE_POINTS[name])
    labels = plots.axis_labels(fig)
    assert labels and all(a["xlabel"] and a["ylabel"] for a in labels)
    assert any(line.get_xydata().size for ax in fig.axes for line in ax.get_lines())  # something was drawn
    path = plots.save_figure(fig, tmp_path / f"{name}.png", name)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        assert img.size[0] > 300
        assert json.loads(img.text["Description"])["axes"] == labels


def test_markdown_table_shows_intervals_or_seed_spread():
    rows = [{"task": "sonnet", "seed": s, "status": "done", "metric": "chrf", "dev_score": v, "ci_low": v - 2,
             "ci_high": v + 2} for s, v in ((1, 40.0), (2, 42.0))]
    one = metrics.group_seeds(rows[:1])
    assert metrics.format_score(one[0]) == "40.00 [38.00, 42.00]"
    two = metrics.group_seeds(rows)
    # two seeds: the mean with the 95% t-interval across seeds, t(0.975, 1 df) = 12.706, sd = sqrt(2)
    half = 12.706 * math.sqrt(2) / math.sqrt(2)
    assert len(two) == 1 and metrics.format_score(two[0]) == f"41.00 [{41 - half:.2f}, {41 + half:.2f}] (2 seeds)"
    assert "| dev chrF [mean over seeds, 95% t-interval across seeds] |" in tables.markdown_table(BASELINE, two)
    missing = metrics.group_seeds([{**rows[0], "status": "missing", "dev_score": math.nan}])
    table = tables.markdown_table(BASELINE, missing)
    assert table.splitlines()[0] == ("| task | metric | compute | dev score [95% CI] | test score [95% CI] | "
                                     "study dev | study test |")
    assert "| sonnet | chrF | — | — | — | 41.97 | 41.078 |" in table


def test_csv_has_one_row_per_run_with_empty_cells_for_missing_values(tmp_path):
    path = report.write_csv([{"a": 1, "b": math.nan}, {"a": 2, "c": None}], tmp_path / "x.csv")
    assert path.read_text().splitlines() == ["a,b,c", "1,,", "2,,"]


def test_quantile_bounds_are_numpy_percentiles():
    from minigpt2.metrics import bootstrap_interval  # the resampling behind stats.bootstrap_*

    scores = iter(np.arange(1000, dtype=float))  # the 1000 resamples score 0, 1, ..., 999
    assert bootstrap_interval(lambda i: next(scores), 5, samples=1000) == pytest.approx((24.975, 974.025))


def test_subprocess_executor_logs_output_and_raises_on_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the child must find the project through PYTHONPATH, not the working folder
    log = tmp_path / "run" / "run.log"
    runner.in_subprocess(runner.Step("experiments.sweeps", (), print), log)  # importable from the repository root
    good = tmp_path / "ok.json"
    good.write_text('{"a": 1}')
    runner.in_subprocess(runner.Step("json.tool", (str(good),), print), log)
    assert '"a": 1' in log.read_text() and "-m json.tool" in log.read_text()
    with pytest.raises(RuntimeError, match=r"json.tool exited with code 2; see .*run.log"):
        runner.in_subprocess(runner.Step("json.tool", (str(tmp_path / "missing.json"),), print), log)


def test_report_keeps_a_score_it_cannot_resample_and_says_why(tmp_path, monkeypatch):
    """Fake runs point at a data folder that does not exist: the score stays, the interval is left out."""
    monkeypatch.delenv("MINIGPT2_DATA_DIR", raising=False)  # no fallback to the real data either
    sweep = build_sweep("baseline", SweepOptions(data_dir=str(tmp_path / "nodata")))
    launch.Local(FakeFinetune(), progress=False).launch(sweep.runs[:1], tmp_path / "runs")
    paths = report.write_report(sweep, tmp_path / "runs", tmp_path / "out", failed={"cfimdb-s11711": "boom"})
    rows = report.collect(sweep, tmp_path / "runs", failed={"cfimdb-s11711": "boom"})
    assert [r["status"] for r in rows] == ["done", "failed", "missing", "missing"]
    assert rows[0]["dev_score"] == 0.5 and math.isnan(rows[0]["ci_low"]) and "no interval" in rows[0]["note"]
    table = paths["md"].read_text()
    assert "1 of 4 runs finished" in table
    assert "| sst | accuracy | fp32 | 0.500 (no CI: data not found) | — | 0.513 | 0.546 | — |" in table
    assert f"**Warning:** data not found at {tmp_path / 'nodata'}: 1 run(s) shown without intervals" in table
    assert "| quora | accuracy | — | — | — | 0.911 | 0.891 | — |" in table
    assert paths["png"].read_bytes()[:8] == PNG_SIGNATURE


# ---------------------------------------------------------------------------------------------- references

def test_reference_hypotheses_from_the_data_alone():
    from experiments.references import REFERENCE_NAMES, reference_hypotheses
    from experiments.sweeps import TINY_TOKENIZER_DIR
    from minigpt2.tokenizer import Tokenizer

    true = "\n".join(f"line {i} of the true one" for i in range(14))
    short = "\n".join(f"s{i}" for i in range(14))
    near = "\n".join(f"line {i} of a near sonnet" for i in range(14))
    hyps = reference_hypotheses({7: true}, [short, near, true], str(TINY_TOKENIZER_DIR), seed=3)
    prompt, random_, wrong = (hyps[n][0] for n in REFERENCE_NAMES)
    assert prompt == "\n".join(true.split("\n")[:3])
    assert random_.startswith(prompt + "\n") and wrong.startswith(prompt + "\n")
    tok = Tokenizer(str(TINY_TOKENIZER_DIR))
    rest = "\n".join(true.split("\n")[3:])
    assert abs(len(tok.encode(random_[len(prompt) + 1:])) - len(tok.encode(rest))) <= len(tok.encode(rest)) // 2
    assert wrong.endswith("line 13 of a near sonnet")  # nearest in length, never the true sonnet itself
    assert reference_hypotheses({7: true}, [short, near], str(TINY_TOKENIZER_DIR), seed=3)["prompts + random tokens"] \
        == [random_]  # seeded


def test_sonnet_reference_rows_rank_as_chance_should():
    from experiments.references import sonnet_reference_intervals
    from experiments.sweeps import TINY_DATA_DIR, TINY_TOKENIZER_DIR

    rows = sonnet_reference_intervals(str(TINY_DATA_DIR), "dev", None, str(TINY_TOKENIZER_DIR), 200)
    assert set(rows) == {"prompts only", "prompts + random tokens", "wrong sonnet (nearest training length)"}
    for iv in rows.values():  # 3 tiny dev sonnets: too few for an interval
        assert iv.n == 3 and math.isnan(iv.low) and math.isnan(iv.high)
    # chrF rewards recall: any added text scores above the prompt alone
    assert rows["prompts only"].value < rows["prompts + random tokens"].value
    test = sonnet_reference_intervals(str(TINY_DATA_DIR), "test", None, str(TINY_TOKENIZER_DIR), 200)
    assert test is not None and test["prompts only"].n == 2  # the tiny data ships its true test sonnets


def test_sonnet_reference_rows_are_absent_without_the_true_test_sonnets(tmp_path):
    import shutil

    from experiments.references import sonnet_reference_intervals
    from experiments.sweeps import TINY_DATA_DIR, TINY_TOKENIZER_DIR

    shutil.copytree(TINY_DATA_DIR, tmp_path / "data")
    (tmp_path / "data" / "TRUE_sonnets_held_out.txt").unlink()
    assert sonnet_reference_intervals(str(tmp_path / "data"), "test", None, str(TINY_TOKENIZER_DIR), 200) is None


def test_majority_class_interval():
    iv = stats.majority_interval([1, 1, 1, 0] * 3, samples=300)
    assert iv.value == 0.75 and iv.low <= 0.75 <= iv.high and iv.n == 12
    with pytest.raises(ValueError):
        stats.majority_interval([])


def test_test_scores_and_majority_class_where_labels_lie_beside_the_data(tmp_path):
    """A run on data whose test labels were fetched gets a test score with an interval, and the table shows the
    majority class of the dev rows it scored; without the labels file the test cells are '—'."""
    import shutil

    from experiments.sweeps import TINY_DATA_DIR

    data = tmp_path / "data"
    shutil.copytree(TINY_DATA_DIR, data)
    dev_ids = [line.split("\t")[1] for line in (data / "ids-sst-dev.csv").read_text().splitlines()[1:] if line]
    test_ids = [line.split("\t")[2] for line in (data / "ids-sst-test-student.csv").read_text().splitlines()[1:]
                if line]
    (data / "ids-sst-test-labels.csv").write_text("id\tsentiment\n" + "".join(f"{i}\t3\n" for i in test_ids))
    run = tmp_path / "runs" / "sst-s1"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"settings": {"data": {"task": "sst", "data_dir": str(data)}, "eval": {"samples": 1}}}))
    (run / "dev.csv").write_text("id \t Predicted_Sentiment \n" + "".join(f"{i} , 3\n" for i in dev_ids))
    (run / "test.csv").write_text("id \t Predicted_Sentiment \n" + "".join(
        f"{i} , {3 if k % 2 == 0 else 1}\n" for k, i in enumerate(test_ids)))
    (run / "metrics.json").write_text(json.dumps({"metric": "accuracy", "dev": {"accuracy": 0.25},
                                                  "dev_predictions": "dev.csv", "test_predictions": "test.csv"}))
    sweep = report.Sweep("baseline", [Run("sst-s1", settings_of({"data.task": "sst", "optim.seed": 1}))])
    row = report.collect(sweep, tmp_path / "runs", samples=200)[0]
    expected = sum(k % 2 == 0 for k in range(len(test_ids))) / len(test_ids)
    assert row["test_score"] == pytest.approx(expected) and math.isnan(row["test_low"])  # 4 rows: no interval
    assert row["n_test"] == len(test_ids) == 4 and row["n_dev"] == len(dev_ids) == 8
    assert 0 < row["majority"] <= 1 and row["majority_low"] <= row["majority"] <= row["majority_high"]
    table = tables.markdown_table(BASELINE, metrics.group_seeds([row]))
    assert "majority class (dev rows) [95% CI]" in table.splitlines()[0]
    assert f"{expected:.3f} (n=4, too few for an interval)" in table
    assert f"{row['majority']:.3f} [{row['majority_low']:.3f}, {row['majority_high']:.3f}] n=8" in table
    (data / "ids-sst-test-labels.csv").unlink()
    row = report.collect(sweep, tmp_path / "runs", samples=200)[0]
    assert math.isnan(row["test_score"])
    assert metrics.format_score(metrics.group_seeds([row])[0], "test_") == "—"


def test_teacher_table_reads_the_generation_summary_and_falls_back_to_the_file(tmp_path):
    """The fixture flash teacher has the summary `distill.generate` writes; flash-lite has none, so its figures are
    recomputed from its JSONL by the same code (`distill.summary.read_summary`)."""
    flash = tables.teacher_summary(TINY_SYNTHETIC_DIR / "gemini-2.5-flash.jsonl")
    assert flash["requests"] == 5 and flash["rejected"] == {"empty": 1} and (flash["kept"], flash["perfect"]) == (4, 2)
    assert flash["perfect_rate"] == 0.5 and flash["perfect_low"] < 0.5 < flash["perfect_high"]
    assert (flash["tokens_input"], flash["tokens_output"], flash["tokens_thinking"]) == (0, 0, 0)
    lite = tables.teacher_summary(TINY_SYNTHETIC_DIR / "gemini-2.5-flash-lite.jsonl")
    assert (lite["kept"], lite["perfect"]) == (4, 2) and lite["perfect_low"] <= 0.5 <= lite["perfect_high"]
    assert not (TINY_SYNTHETIC_DIR / "gemini-2.5-flash-lite.jsonl.summary.json").exists()  # nothing written

    sweep = build_sweep("teachers", SweepOptions(tiny=True))
    rows = [{**r, "status": "done", "metric": "chrf", "dev_score": 30.0, "ci_low": 29.0, "ci_high": 31.0,
             "test_score": math.nan} for r in ({"run": run.name, **sweep.knob_values(run)} for run in sweep.runs)]
    text = "".join(tables.teacher_block(sweep, rows))
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| gemini")}
    assert "| 5 | 4 | empty: 1 | 0.500 [0.150, 0.850] n=4 | 0 / 0 / 0 | $0.0000 |" in lines["gemini-2.5-flash"]
    assert "n2 all: 30.00 [29.00, 31.00] / —" in lines["gemini-2.5-flash"]
    assert "| 5 | 4 | empty: 1 |" in lines["gemini-2.5-flash-lite"]  # recomputed from its JSONL


def test_a_data_folder_from_the_environment_is_recorded_and_found_again(tmp_path, monkeypatch):
    """Runs started with MINIGPT2_DATA_DIR keep their intervals in a report rebuilt without it."""
    import shutil

    from experiments.sweeps import TINY_DATA_DIR

    data = tmp_path / "data"
    shutil.copytree(TINY_DATA_DIR, data)
    monkeypatch.setenv("MINIGPT2_DATA_DIR", str(data))
    sweep = build_sweep("baseline", SweepOptions())
    launch.Local(FakeFinetune(), progress=False).launch(sweep.runs[:1], tmp_path / "runs")
    record = json.loads((tmp_path / "runs" / sweep.runs[0].name / "experiment.json").read_text())
    assert record["data_dir"] == str(data.resolve())
    monkeypatch.delenv("MINIGPT2_DATA_DIR")
    run_dir = tmp_path / "runs" / sweep.runs[0].name
    assert stats.run_data_folder(run_dir) == data.resolve()
    data.rename(tmp_path / "moved")  # gone, and no environment to say where: the report says so
    row = report.collect(sweep, tmp_path / "runs", samples=100)[0]
    assert math.isnan(row["ci_low"]) and row["data_missing"] == str(data.resolve())


def test_majority_class_is_read_from_the_run_when_it_recorded_one(tmp_path):
    """finetune writes the majority-class accuracy of the rows it scored into metrics.json; the table shows it."""
    from experiments.sweeps import TINY_DATA_DIR

    dev_ids = [line.split("\t")[1] for line in (TINY_DATA_DIR / "ids-sst-dev.csv").read_text().splitlines()[1:]
               if line]
    run = tmp_path / "runs" / "sst-s1"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"settings": {"data": {"task": "sst", "data_dir": str(TINY_DATA_DIR)}, "eval": {"samples": 1}}}))
    (run / "dev.csv").write_text("id \t Predicted_Sentiment \n" + "".join(f"{i} , 3\n" for i in dev_ids[:2]))
    (run / "test.csv").write_text("id \t Predicted_Sentiment \n")
    (run / "metrics.json").write_text(json.dumps({"metric": "accuracy", "dev": {"accuracy": 0.5},
                                                  "majority": {"dev": 0.625}, "test": {"accuracy": 0.75},
                                                  "dev_predictions": "dev.csv", "test_predictions": "test.csv"}))
    sweep = report.Sweep("baseline", [Run("sst-s1", settings_of({"data.task": "sst", "optim.seed": 1}))])
    row = report.collect(sweep, tmp_path / "runs", samples=200)[0]
    assert row["majority"] == 0.625 and row["test_score"] == 0.75

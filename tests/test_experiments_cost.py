"""The whole cost before any work (`--dry-run`: tokens, CPU, GPU, start-ups, Gemini requests; the teachers sweep
priced before its files exist; docs/study.md's table generated) and fail once, up front (a sweep's shared inputs
checked before its first run)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest

from app.settings import EVAL_SAMPLES
from experiments import __main__ as cli
from experiments import estimate
from experiments.sweeps import TINY_DATA_DIR, TINY_SYNTHETIC_DIR, TINY_TOKENIZER_DIR, SweepOptions, build_sweep

ROOT = Path(__file__).resolve().parent.parent
COST_LINES = ("  training: ", "  evaluation: ", "  sonnet generation: ", "  CPU estimate (cpu): ",
              "  GPU estimate, FLOP-bound ", "  GPU estimate, launch-bound ", "  start-ups: ",
              "  GPU estimate in all ")


@pytest.fixture(autouse=True)
def offline_tokenizer(monkeypatch):
    monkeypatch.setenv("MINIGPT2_TOKENIZER_DIR", str(TINY_TOKENIZER_DIR))


def dry_run(capsys, *argv: str) -> str:
    assert cli.main([*argv, "--dry-run"]) == 0
    return capsys.readouterr().out


def test_teachers_are_priced_before_their_files_exist(tmp_path, monkeypatch, capsys):
    """A fresh checkout: no --synthetic-dir, no file. The dry run plans every arm as if the files held 1,000
    perfect sonnets each, and prices the requests that needs at the study's perfect rates."""
    monkeypatch.chdir(tmp_path)
    out = dry_run(capsys, "teachers", "--model", "tiny", "--data-dir", str(TINY_DATA_DIR), "--stated-rates",
                  "--runs-dir", str(tmp_path / "runs"))
    # 1 real-only + 3 teachers x (all, perfect) x (250, 500, 1000) + 3 x (3 mixing ratios + synthetic only)
    assert "sweep teachers: 31 runs" in out and "planned as if synthetic/gemini-2.5-flash.jsonl" in out
    assert "synthetic/gemini-2.5-pro.jsonl held 1000 perfect sonnets" in out
    assert "[run] gemini-2.5-pro-n1000-perfect-s11711:" in out and "--synthetic synthetic/gemini-2.5-pro.jsonl" in out
    for teacher, rate in (("gemini-2.5-flash-lite", 0.56), ("gemini-2.5-flash", 0.72), ("gemini-2.5-pro", 0.75)):
        line = next(x for x in out.splitlines() if x.startswith(f"  Gemini {teacher}: "))
        assert f"{math.ceil(1000 / rate):,} requests for 1,000 perfect sonnets" in line
        assert f"the study's perfect rate {rate:.0%}" in line and "~$" in line
    assert re.search(r"  Gemini total: ~\$\d+\.\d\d", out)
    assert "no token count" not in out and all(line in out for line in COST_LINES)
    assert "counted at" in out  # the synthetic sonnets not made yet are an assumption, said so
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit, match="error: sweep teachers cannot start"):  # a real run still waits
        cli.main(["teachers", "--model", "tiny", "--runs-dir", str(tmp_path / "runs")])
    (tmp_path / "empty").mkdir()  # an empty --synthetic-dir: the same plan, its files planned there
    again = dry_run(capsys, "teachers", "--model", "tiny", "--data-dir", str(TINY_DATA_DIR), "--stated-rates",
                    "--synthetic-dir", "empty", "--runs-dir", str(tmp_path / "runs"))
    assert "sweep teachers: 31 runs" in again and "--synthetic empty/gemini-2.5-pro.jsonl" in again
    assert "1,334 requests for 1,000 perfect sonnets" in again


def test_a_perfect_arm_cut_short_by_its_file_is_announced(tmp_path, capsys):
    """The fixture files hold 2 perfect sonnets of 5 requests: the n1000-perfect arm ends at 2, and the dry run
    says how many more requests would fill it at the file's own rate; the missing pro file is planned."""
    out = dry_run(capsys, "teachers", "--model", "tiny", "--data-dir", str(TINY_DATA_DIR), "--stated-rates",
                  "--synthetic-dir", str(TINY_SYNTHETIC_DIR), "--runs-dir", str(tmp_path))
    more = math.ceil(998 / (2 / 5))
    assert (f"gemini-2.5-flash has 2 perfect sonnets; the n1000-perfect arm needs 1000: generate ~{more} more "
            "requests") in out
    assert "gemini-2.5-flash-n2-perfect-s11711" in out and "gemini-2.5-flash-n1000-perfect" not in out
    assert "gemini-2.5-pro-n1000-perfect-s11711" in out
    line = next(x for x in out.splitlines() if x.startswith("  Gemini gemini-2.5-flash: "))
    assert "5 requests made" in line and f"{math.ceil(1000 / (2 / 5)):,} requests for 1,000 perfect sonnets" in line


def test_all_dry_run_prints_every_cost_line_per_sweep_and_in_all(tmp_path, capsys):
    out = dry_run(capsys, "all", "--tiny", "--stated-rates", "--runs-dir", str(tmp_path))
    sweeps = re.findall(r"^sweep (\S+): \d+ runs", out, flags=re.M)
    assert len(sweeps) == 6
    total = out[out.index("all sweeps (6 with runs):"):]
    for line in COST_LINES:
        assert out.count(line) == 7 and line in total
    assert out.count("  Gemini") >= 7 and "  Gemini in all: ~$" in total
    runs = sum(int(n) for n in re.findall(r"^sweep \S+: (\d+) runs", out, flags=re.M))
    assert f"  {runs} runs, epochs " in total


def test_a_single_sweep_dry_run_measures_the_probe(tmp_path, capsys):
    out = dry_run(capsys, "lora-ranks", "--tiny", "--runs-dir", str(tmp_path))
    assert "probe: 3 step(s) of tiny at batch 8 x 64 on cpu" in out and "ms/token" in out
    assert all(line in out for line in COST_LINES) and "  Gemini: none" in out


def test_sonnet_generation_is_counted_from_the_true_continuations_not_the_cap():
    """Dev prompts after every epoch and at the end, test prompts at the end, each sampled for as many tokens as
    its true sonnet continues (test without true sonnets: the dev mean); batches run to their longest row."""
    from minigpt2.tokenizer import Tokenizer
    from tasks import get_task

    run = build_sweep("baseline", SweepOptions(tiny=True)).runs[3]
    assert run.settings["task"] == "sonnet"
    capped = estimate.run_workload(run)
    free = estimate.run_workload(estimate.Run(run.name, {**run.options, "eval.sampling.max_new_tokens": 400,
                                                         "optim.epochs": 3, "eval.samples": 2}, run.settings))
    tok, task = Tokenizer(str(TINY_TOKENIZER_DIR)), get_task("sonnet")
    dev, _ = task.load(TINY_DATA_DIR, "dev", tok, 128, 2, seed=run.settings["seed"])
    test, _ = task.load(TINY_DATA_DIR, "test", tok, 128, 2, seed=run.settings["seed"])
    truth = {str(n): len(tok.encode(t)) + 1 for n, t in task.format.split_references(TINY_DATA_DIR, "test").items()}
    def cut(conts: list[int], prompts: list) -> list[int]:  # the tiny model's 128 positions hold prompt + rest
        return [min(128 - max(len(e.input_ids) for e in prompts), c) for c in conts]
    dev_c = cut([len(e.meta["reference_ids"]) - len(e.input_ids) for e in dev], dev)
    test_c = cut([min(128, truth[e.id]) - len(e.input_ids) for e in test], test)
    # 3 epochs x 1 sample of the 2 dev prompts, then 2 samples (--eval-samples 2) of dev and of test
    assert free.generation.prompts == 3 * 2 + 2 * 2 + 2 * 2
    assert free.generation.new_tokens == 5 * sum(dev_c) + 2 * sum(test_c)
    assert free.generation.decode_steps == 5 * max(dev_c) + 2 * max(test_c)  # one batch of 2 rows per pass
    # forward only: the dev loss after each epoch, and the held-out NLL of the true sonnets before and after
    dev_truth = sum(len(e.meta["reference_ids"]) for e in dev)
    assert free.eval_tokens == 3 * dev_truth + 2 * (dev_truth + sum(min(128, truth[e.id]) for e in test))
    # --tiny's --max-new-tokens 4: one epoch's 2 dev prompts, then the default samples of dev and test at the end
    assert capped.generation.new_tokens == 4 * (2 + EVAL_SAMPLES * (2 + 2))
    assert free.train_tokens == 3 * capped.train_tokens and free.train_steps == 3 * capped.train_steps
    cost = estimate.price(free, estimate.stated_rates())
    assert cost.train_flop == 6 * free.n_params * free.train_tokens
    assert cost.gen_flop == 2 * free.n_params * free.generation.decoded_tokens


def test_the_study_on_paper():
    """GPT-2 124M's parameter count, and the GPU arithmetic of the estimate."""
    assert estimate.n_params("gpt2") == (124_439_808, 12)
    w = estimate.Workload("x", "gpt2", 124_439_808, 12, 10, train_tokens=10**6, train_steps=1000)
    c = estimate.price(w, estimate.stated_rates())
    g = estimate.GPU_ASSUMPTIONS
    assert c.gpu_flop_s[0] == pytest.approx(6 * 124_439_808 * 10**6 / (g["mfu"] * g["peak_flops"]))
    assert c.gpu_launch_s[0] == pytest.approx(1000 * (12 * 45 + 40) * 10e-6)
    assert c.gpu_s >= max(c.gpu_flop_s[0], c.gpu_launch_s[0])


# ---------------------------------------------------------------------------------------------- the doc table

TABLE_START = "<!-- cost-table: generated by `python -m experiments all --dry-run --stated-rates --markdown` -->"
TABLE_END = "<!-- /cost-table -->"


@pytest.mark.shared_data
def test_docs_cost_table_is_what_the_command_prints(tmp_path, monkeypatch, capsys):
    """docs/study.md's table is the command's output on the course data, priced at the stated CPU rates (no probe:
    deterministic), teachers planned (no Gemini file). Regenerate it with the command in the marker."""
    data = os.environ.get("MINIGPT2_DATA_DIR")
    if not data:
        pytest.skip("set MINIGPT2_DATA_DIR to the real course data to run")
    monkeypatch.setenv("MINIGPT2_DATA_DIR", str(Path(data).resolve()))
    monkeypatch.chdir(tmp_path)  # no synthetic/ folder, no run folders
    table = dry_run(capsys, "all", "--stated-rates", "--markdown")
    doc = (ROOT / "docs" / "study.md").read_text(encoding="utf-8")
    assert TABLE_START in doc and TABLE_END in doc
    in_doc = doc[doc.index(TABLE_START) + len(TABLE_START):doc.index(TABLE_END)].strip("\n")
    assert in_doc == table.strip("\n"), "docs/study.md's cost table is stale: paste the command's output"


def test_markdown_table_shape():
    rates = estimate.stated_rates()
    one = estimate.Cost(runs=2, train_tokens=1000, train_flop=1e12)
    table = estimate.markdown_table([("baseline", one, 0.0), ("all", one + one, 1.5)], rates)
    lines = table.splitlines()
    assert len(lines) == 4 and all(x.count("|") == lines[0].count("|") for x in lines)
    assert lines[3].startswith("| **all** | **4** | **2,000** |") and "**$1.50**" in lines[3]


# ---------------------------------------------------------------------------------------------- fail once

def test_a_sweep_with_a_missing_model_folder_stops_before_its_first_run(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a run started")
    monkeypatch.setattr(cli, "in_process", refuse)
    monkeypatch.setattr(cli, "in_subprocess", refuse)
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as e:
        cli.main(["lora-ranks", "--tiny", "--model", str(tmp_path / "no-such-model"), "--runs-dir", str(runs)])
    msg = str(e.value.code)
    assert msg.startswith("error: sweep lora-ranks cannot start: --model ") and "\n" not in msg
    assert "no-such-model" in msg and not runs.exists()


def test_offline_without_weights_is_one_error_line_for_the_whole_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoints/gpt2 here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MINIGPT2_CACHE", str(tmp_path / "cache"))  # an empty download cache
    monkeypatch.setattr(cli, "in_subprocess", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(SystemExit) as e:
        cli.main(["baseline", "--data-dir", str(TINY_DATA_DIR), "--runs-dir", str(tmp_path / "runs")])
    msg = str(e.value.code)
    assert msg.startswith("error: sweep baseline cannot start: --model gpt2: GPT-2 weights 'gpt2' are not in")
    assert "offline" in msg and "\n" not in msg and not (tmp_path / "runs").exists()


def test_a_synthetic_file_too_small_for_its_arm_stops_the_sweep_up_front(tmp_path, monkeypatch):
    """A real run (not --dry-run) of the teachers sweep checks every file's count before training anything."""
    from experiments.preflight import PreconditionError, check_preconditions

    sweep = build_sweep("teachers", SweepOptions(tiny=True))
    check_preconditions("teachers", sweep.runs)  # the fixture files fit the tiny sizes
    run = next(r for r in sweep.runs if "data.synthetic.n" in r.options)
    more = estimate.Run(run.name, {**run.options, "data.synthetic.n": 500}, run.settings)
    with pytest.raises(PreconditionError, match=r"asked for 500 synthetic sonnets"):
        check_preconditions("teachers", [more])


def test_a_run_that_exits_with_an_error_is_listed_without_a_traceback(tmp_path, capsys):
    """A command that failed cleanly said why itself; only an unexpected exception (a bug) shows a traceback."""
    from experiments import runner

    def exits(module, argv, log):
        raise runner.RunFailed(f"{module} exited: error: no weights")

    def breaks(module, argv, log):
        raise KeyError("bug")

    run = estimate.Run("r", ("--task", "sst"), {})
    assert runner.run_sweep([run], tmp_path / "a", exits, progress=False).failed == {
        "r": "RunFailed: minigpt2.finetune exited: error: no weights"}
    out = capsys.readouterr().out
    assert "run r FAILED: minigpt2.finetune exited: error: no weights" in out and "Traceback" not in out
    runner.run_sweep([run], tmp_path / "b", breaks, progress=False)
    assert "Traceback" in capsys.readouterr().out

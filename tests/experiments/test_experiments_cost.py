"""The whole cost before any work (`--dry-run`: tokens, CPU, GPU, start-ups, Gemini requests; the teachers sweep
priced before its files exist; docs/study.md's table generated) and fail once, up front (a sweep's shared inputs
checked before its first run)."""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from app.settings import EVAL_SAMPLES
from experiments import __main__ as cli
from experiments import estimate
from experiments.sweeps import TINY_DATA_DIR, TINY_SYNTHETIC_DIR, TINY_TOKENIZER_DIR, SweepOptions, build_sweep
from tests import ROOT

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
    assert "[run] gemini-2.5-pro-n1000-perfect-s11711:" in out and "data.synthetic.path=synthetic/gemini-2.5-pro.jsonl" in out
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
    assert "sweep teachers: 31 runs" in again and "data.synthetic.path=empty/gemini-2.5-pro.jsonl" in again
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
    assert f"probe: the fastest of {estimate.PROBE_STEPS} steps of tiny at batch 8 x 64 on cpu" in out
    assert "ms/token (median " in out and ", slowest " in out
    assert all(line in out for line in COST_LINES) and "  Gemini: none" in out


def test_sonnet_generation_is_counted_from_the_true_continuations_not_the_cap():
    """Dev prompts after every epoch and at the end, test prompts at the end, each sampled for as many tokens as
    its true sonnet continues (test without true sonnets: the dev mean); batches run to their longest row."""
    from minigpt2.tokenizer import Tokenizer
    from tasks import get_task

    run = build_sweep("baseline", SweepOptions(tiny=True)).runs[3]
    assert run.settings.data.task == "sonnet"
    capped = estimate.run_workload(run)
    s = run.settings
    free = estimate.run_workload(estimate.Run(run.name, replace(
        s, optim=replace(s.optim, epochs=3),
        eval=replace(s.eval, samples=2, sampling=replace(s.eval.sampling, max_new_tokens=400)))))
    tok, task = Tokenizer(str(TINY_TOKENIZER_DIR)), get_task("sonnet")
    dev, _ = task.load(TINY_DATA_DIR, "dev", tok, 128, 2, seed=run.settings.optim.seed)
    test, _ = task.load(TINY_DATA_DIR, "test", tok, 128, 2, seed=run.settings.optim.seed)
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


def test_markdown_table_says_which_runs_it_could_not_count():
    """Runs whose data or tokenizer could not be read are priced at nothing: the table must not pass their zeros
    off as a cost (an offline machine without the BPE files counted every run as 0 tokens, 0 hours)."""
    rates = estimate.stated_rates()
    one = estimate.Cost(runs=2, train_tokens=1000, train_flop=1e12)
    lost = estimate.Cost(runs=1, unknown=["sst-s1 (no tokenizer)"])
    table = estimate.markdown_table([("baseline", one + lost, 0.0), ("all", one + lost, 0.0)], rates)
    lines = table.splitlines()
    assert lines[2].startswith("| baseline | 3 (1 not counted) | 1,000 |")
    assert lines[3].startswith("| **all** | **3 (1 not counted)** | **1,000** |")
    assert lines[-1] == "1 run(s) not counted, their cost missing from the figures: sst-s1 (no tokenizer)"
    clean = estimate.markdown_table([("baseline", one, 0.0), ("all", one, 0.0)], rates)
    assert "not counted" not in clean


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
    run = next(r for r in sweep.runs if r.settings.data.synthetic and r.settings.data.synthetic.n)
    s = run.settings
    more = estimate.Run(run.name, replace(s, data=replace(s.data, synthetic=replace(s.data.synthetic, n=500))))
    with pytest.raises(PreconditionError, match=r"asked for 500 synthetic sonnets"):
        check_preconditions("teachers", [more])


def test_a_run_that_exits_with_an_error_is_listed_without_a_traceback(tmp_path, capsys):
    """A command that failed cleanly said why itself; only an unexpected exception (a bug) shows a traceback."""
    from app.cli import settings_of
    from experiments import launch, runner

    def exits(step, log):
        raise runner.RunFailed(f"{step.module} exited: error: no weights")

    def breaks(step, log):
        raise KeyError("bug")

    run = estimate.Run("r", settings_of({"data.task": "sst"}))
    assert launch.Local(exits, progress=False).launch([run], tmp_path / "a").failed == {
        "r": "RunFailed: minigpt2.finetune exited: error: no weights"}
    out = capsys.readouterr().out
    assert "FAILED r: minigpt2.finetune exited: error: no weights" in out and "Traceback" not in out
    launch.Local(breaks, progress=False).launch([run], tmp_path / "b")
    assert "Traceback" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- the probe

def fake_probe(steps: tuple[float, ...], optimizer: tuple[float, ...], load: float | None, cores: int, calls: list):
    """A stand-in for `estimate.probe` returning these step times, recording what it was asked."""
    def probe(model, device, n, threads):
        calls.append((model, device, n, threads))
        return estimate.Probe(model, device, threads, 512, steps, optimizer, 0.25, load, cores)
    return probe


def test_probe_statistics_by_hand(monkeypatch):
    """Priced at the fastest step (load only adds time); the median and slowest beside it; a warning when the
    steps spread over PROBE_SPREAD_WARN or the load average exceeds the cores, not at either bound."""
    def rates(steps, optimizer, load, cores, device="cpu", tokens=512):
        monkeypatch.setattr(estimate, "probe", lambda m, d, n, t: estimate.Probe(
            m, device, 2, tokens, steps, optimizer, 1.0, load, cores))
        return estimate.measured_rates("gpt2", device, 2)

    r = rates((0.9, 0.5, 2.0, 0.6, 0.7), (0.3, 0.2, 0.4, 0.25, 0.35), 2.0, 2)
    assert r.train_s_per_token == 0.5 / 512 and r.optimizer_s_per_step == 0.2 and r.model_build_s == 1.0
    assert "the fastest of 5 steps" in r.source and "(median 1.367, slowest 3.906)" in r.source
    assert "; " not in r.warning.split(": the machine")[0] and "4.0x apart, over 1.5x" in r.warning
    assert "0.977 to 3.906 ms/token" in r.warning
    assert rates((1.0, 1.5), (0.1, 0.1), 2.0, 2, tokens=8).warning is None
    busy = rates((1.0, 1.51), (0.1, 0.1), 2.5, 2, tokens=8).warning
    assert "apart" in busy and busy.split(": the machine")[0].endswith("; the load average was 2.5 on 2 cores")
    assert rates((1.0,), (0.1,), 9.0, 2, device="cuda").warning is None  # not the CPU


def test_probe_times_its_steps_at_the_threads_asked_and_restores_torch_s():
    import torch

    before = torch.get_num_threads()
    estimate.probe.cache_clear()
    p = estimate.probe("tiny", "cpu", 3, 1)
    assert p.threads == 1 and torch.get_num_threads() == before
    assert len(p.step_seconds) == 3 and len(p.optimizer_seconds) == 3 and p.tokens_per_step == 8 * 64
    assert min(p.step_seconds) > 0 and min(p.optimizer_seconds) > 0 and p.build_seconds > 0


def test_the_dry_run_prints_the_probe_s_spread_and_warns_when_the_machine_is_busy(tmp_path, monkeypatch, capsys):
    """The probe runs at the threads a run gets one at a time (every core here: 6, patched), PROBE_STEPS steps;
    its fastest step prices the runs, the median and slowest are printed, and the spread and the load average
    warn once on stderr."""
    from experiments import launch

    calls: list = []
    monkeypatch.setattr(launch, "cpu_count", lambda: 6)
    monkeypatch.setattr(estimate, "probe", fake_probe((0.9, 0.5, 2.0, 0.6, 0.7), (0.3, 0.2, 0.4, 0.25, 0.35),
                                                     7.5, 6, calls))
    assert cli.main(["all", "--tiny", "--dry-run", "--runs-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert calls == [("tiny", "cpu", estimate.PROBE_STEPS, 6)]  # once for the whole command
    assert ("probe: the fastest of 5 steps of tiny at batch 8 x 64 on cpu, 6 thread(s) after 1 warm-up, 0.977 "
            "ms/token (median 1.367, slowest 3.906) + 0.20 s AdamW step") in out
    assert err.count("warning: ") == 1 and "4.0x apart, over 1.5x" in err and "load average was 7.5 on 6 cores" in err
    calls.clear()
    monkeypatch.setattr(estimate, "probe", fake_probe((0.5, 0.6), (0.2, 0.2), 1.0, 6, calls))
    assert cli.main(["lora-ranks", "--tiny", "--dry-run", "--threads", "4", "--runs-dir", str(tmp_path)]) == 0
    assert calls == [("tiny", "cpu", estimate.PROBE_STEPS, 4)] and "warning" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- --jobs on a CPU

def cpu_seconds(w: estimate.Workload, rates: estimate.Rates) -> tuple[float, float]:
    """One run's CPU seconds at the rates' threads, from its counted work, as docs/study.md states the pricing:
    (its work, its start-ups)."""
    s = w.n_params / rates.n_params
    t, g = rates.train_s_per_token * s, w.generation
    work = (w.train_tokens * t + (w.train_steps * rates.optimizer_s_per_step * s if w.full_optimizer else 0.0)
            + (w.eval_tokens + g.prefill_tokens) * t / 3 + g.decoded_tokens * t)
    return work, w.processes * estimate.STARTUP_ASSUMPTIONS["imports_s"] + w.model_loads * rates.model_build_s * s


def greedy_wall(seconds: list[float], workers: int) -> float:
    """Longest first, each to the least loaded worker."""
    loads = [0.0] * max(1, min(workers, len(seconds)))
    for x in sorted(seconds, reverse=True):
        loads[loads.index(min(loads))] += x
    return max(loads)


def expected_lines(runs, jobs: int, speed: float, start: float) -> tuple[str, str, str]:
    """(the totals line's start, the wall-time line, the scales) for `runs` priced at the stated rates (2
    threads), run `jobs` at once at `speed` cores each, their start-ups `start` times as long as alone."""
    rates = estimate.stated_rates()
    work = [estimate.run_workload(r, "subprocess") for r in runs]
    parts = [cpu_seconds(w, rates) for w in work]
    tokens = sum(w.train_tokens for w in work)
    epochs = "/".join(map(str, sorted({w.epochs for w in work})))
    total = (f"  {len(runs)} runs, epochs {epochs}, {tokens:,} training tokens; "
             f"~{estimate.format_hours(sum(a + b for a, b in parts))}")
    per_run = [a * 2 / speed + b * start for a, b in parts]
    wall = (f"  on {jobs} workers (CPU estimate), longest runs first: "
            f"~{estimate.format_hours(greedy_wall(per_run, jobs))} wall time (the longest run alone: "
            f"~{estimate.format_hours(max(per_run))})")
    return total, wall, f"x{2 / speed:.3g} its CPU estimate at 2 thread(s), its start-ups (one core) x{start:.3g}"


@pytest.mark.parametrize("argv, cores, jobs, threads, speed, start", [
    # 9 cores, 2 jobs: 4 threads a run (9 // 2), 4 cores each (not 9 / 2 = 4.5, 2 or 1): x2/4 the estimate
    (["--jobs", "2"], 9, 2, 4, 4.0, 1.0),
    # --threads 3, 4 jobs on 9 cores: 12 threads oversubscribe them, each run gets 9 / 4 = 2.25 cores: x2/2.25
    (["--jobs", "4", "--threads", "3"], 9, 4, 3, 2.25, 1.0),
    # 4 jobs on 2 cores: 1 thread a run but half a core (2 / 4): x2/0.5, and the start-ups share the cores too
    (["--jobs", "4"], 2, 4, 1, 0.5, 2.0),
])
def test_jobs_on_a_cpu_divide_its_cores(argv, cores, jobs, threads, speed, start, monkeypatch, capsys, tmp_path):
    """Every printed figure of a --jobs dry run on a CPU, GPT-2's shape on the tiny data at the stated rates (2
    threads): runs, epochs, tokens, the CPU total, each run's threads and cores, the scales, the wall time."""
    from experiments import launch

    monkeypatch.setattr(launch, "cpu_count", lambda: cores)
    flags = ["--data-dir", str(TINY_DATA_DIR), "--model", "gpt2", "--stated-rates", "--runs-dir", str(tmp_path)]
    out = dry_run(capsys, "lora-targets", *flags, *argv)
    runs = build_sweep("lora-targets", SweepOptions(model="gpt2", data_dir=str(TINY_DATA_DIR), plan_missing=True)).runs
    assert len(runs) == 4 and f"sweep lora-targets: {len(runs)} runs" in out
    total, wall, scales = expected_lines(runs, jobs, speed, start)
    assert total + " in all on cpu (estimate; stated: " in out
    assert wall in out and scales in out
    assert (f"    each run: {threads} thread(s), {jobs} run(s) at once sharing {cores} cores, so min({threads}, "
            f"{cores} / {jobs}) = {speed:g} core(s) each; ") in out
    slips = {max(1, cores // jobs), cores / jobs, jobs, 1, threads} - {speed}
    for slip in slips:  # a one-line slip prints another figure
        assert expected_lines(runs, jobs, slip, start)[1:] != (wall, scales)
    for slip in {1.0, jobs / cores, cores / jobs} - {start}:
        assert expected_lines(runs, jobs, speed, slip)[1:] != (wall, scales)


def test_all_sweeps_on_jobs_add_up_their_wall_times(monkeypatch, capsys, tmp_path):
    """`all --tiny --jobs 3` on 14 cores (patched): 4 threads a run (14 // 3), at most 14 / 3 cores each, so 4
    (the work x0.5 the stated 2-thread estimate, the start-ups in subprocesses); the sweeps one after the other."""
    from experiments import launch
    from experiments.sweeps import SWEEPS

    monkeypatch.setattr(launch, "cpu_count", lambda: 14)
    out = dry_run(capsys, "all", "--tiny", "--stated-rates", "--jobs", "3", "--runs-dir", str(tmp_path))
    rates, walls = estimate.stated_rates(), []
    for name in sorted(SWEEPS):
        runs = build_sweep(name, SweepOptions(tiny=True, plan_missing=True)).runs
        parts = [cpu_seconds(estimate.run_workload(r, "subprocess"), rates) for r in runs]
        per_run = [work * 2 / 4 + start for work, start in parts]
        walls.append(greedy_wall(per_run, 3))
        active = min(3, len(runs))
        assert f"each run: 4 thread(s), {active} run(s) at once sharing 14 cores, so min(4, 14 / {active}) = 4 " in out
    assert out.count("x0.5 its CPU estimate at 2 thread(s), its start-ups (one core) x1:") == 6
    assert f"  ~{estimate.format_hours(sum(walls))} wall time on 3 workers (sweeps one after the other)" in out
    assert "  start-ups: 0 processes" not in out  # --jobs runs every run in a subprocess, whatever --tiny says


def test_jobs_on_gpus_and_ray_cpus_are_real_workers(monkeypatch, capsys, tmp_path):
    """--devices cuda:0,cuda:1: the GPU estimate per run on 2 workers, no CPU threads. --launcher ray
    --cpus-per-run 5: each task on 5 CPUs of its own, its work x2/5 the stated 2-thread estimate."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    flags = ["--data-dir", str(TINY_DATA_DIR), "--model", "gpt2", "--stated-rates", "--runs-dir", str(tmp_path)]
    runs = build_sweep("lora-targets", SweepOptions(model="gpt2", data_dir=str(TINY_DATA_DIR), plan_missing=True)).runs
    gpu = [estimate.price(estimate.run_workload(r, "subprocess"), estimate.stated_rates()).gpu_s for r in runs]
    out = dry_run(capsys, "lora-targets", *flags, "--jobs", "2", "--devices", "cuda:0,cuda:1")
    assert (f"  on 2 workers (GPU estimate), longest runs first: ~{estimate.format_hours(greedy_wall(gpu, 2))} "
            f"wall time (the longest run alone: ~{estimate.format_hours(max(gpu))})") in out
    assert "each run: " not in out
    out = dry_run(capsys, "lora-targets", *flags, "--launcher", "ray", "--jobs", "3", "--cpus-per-run", "5")
    parts = [cpu_seconds(estimate.run_workload(r, "subprocess"), estimate.stated_rates()) for r in runs]
    cpu = [work * 2 / 5 + start for work, start in parts]
    assert f"~{estimate.format_hours(greedy_wall(cpu, 3))} wall time" in out
    assert ("    each run: 5 thread(s), on CPUs of its own (--cpus-per-run), so 5 core(s); its work taken as "
            "inversely proportional to its cores (linear in threads): x0.4 its CPU estimate at 2 thread(s), its "
            "start-ups (one core) x1\n") in out


# ---------------------------------------------------------------------------------------------- documented commands

def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every `python -m experiments` command in the README, docs/*.md and the command's own
    help: code lines starting with it (backslash continuations joined, # comments dropped) and inline code."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    texts = [(p.name, p.read_text(encoding="utf-8")) for p in pages] + [("experiments --help", cli.__doc__)]
    found = []
    for name, text in texts:
        lines = text.splitlines()
        for i, line in enumerate(lines):
            command, at = line.strip(), i + 1
            if command.startswith("python -m experiments"):
                while command.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    command = command[:-1] + " " + lines[i].strip()
                found.append((f"{name}:{at}", shlex.split(command, comments=True)[3:]))
            found += [(f"{name}:{at}", shlex.split(m)[3:])
                      for m in re.findall(r"`(python -m experiments [^`]*)`", line)]
    return found


def test_documented_commands_are_found():
    commands = documented_commands()
    assert len(commands) >= 25 and ["all", "--dry-run"] in [argv for _, argv in commands]
    assert any("--offline" in argv for _, argv in commands)  # the one whose value starts with --


@pytest.mark.parametrize("where, argv", documented_commands(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_documented_command_parses(where, argv, monkeypatch):
    """Through the real parser and every settings check that runs before any work; run nothing. The pages'
    commands are written for an 8-GPU box with Ray installed, so this one has them."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setitem(sys.modules, "ray", object())
    args = cli.parse_args(argv)
    opts = cli.check_settings(args)
    assert args.sweep == argv[0] and opts.plan_missing == args.dry_run


def test_a_finetune_args_value_starting_with_dashes_is_the_value(capsys):
    args = cli.parse_args(["all", "--finetune-args", "--offline", "--dry-run"])
    assert args.finetune_args == "--offline" and args.dry_run
    assert cli.check_settings(args).finetune_args == ["--offline"]
    args = cli.parse_args(["baseline", "--finetune-args", "--device cpu --compile", "--seeds", "2"])
    assert shlex.split(args.finetune_args) == ["--device", "cpu", "--compile"] and args.seeds == 2
    assert cli.parse_args(["all", "--finetune-args=--offline"]).finetune_args == "--offline"
    with pytest.raises(SystemExit):  # no value at all: argparse's error
        cli.parse_args(["all", "--finetune-args"])
    assert "--finetune-args: expected one argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a flag finetune does not know: refused before any work
        cli.check_settings(cli.parse_args(["all", "--finetune-args", "--no-such-flag"]))
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- by hand

def test_markdown_table_cells_by_hand():
    """Without the course data: the tokens cell sums evaluation, prefill and decoded tokens; the CPU column names
    the rates' source and device; only a last row named "all" is bold; no Gemini cost is a dash; runs that could
    not be counted are listed from the sweeps' rows."""
    rates = estimate.Rates("cpu", 1e-3, 0.3, 1.0, 124_439_808, "stated: the docs' figures", 2)
    c = estimate.Cost(runs=1, eval_tokens=100, prefill_tokens=20, decoded_tokens=3, cpu_train_s=7200.0)
    lost = estimate.Cost(runs=1, unknown=["quora-s1 (no data)"])
    lines = estimate.markdown_table([("baseline", c, 0.0), ("teachers", c + lost, 2.5)], rates).splitlines()
    assert "| CPU (stated, cpu) |" in lines[0]
    assert lines[2] == "| baseline | 1 | 0 | 0.0e+00 | 123 | 2.0 h | 0.0 s | 0.0 s | 0.0 s | — |"
    assert lines[3] == ("| teachers | 2 (1 not counted) | 0 | 0.0e+00 | 123 | 2.0 h | 0.0 s | 0.0 s | 0.0 s | "
                        "$2.50 |")  # the last row, not named "all": not bold
    assert lines[-1] == "1 run(s) not counted, their cost missing from the figures: quora-s1 (no data)"


def test_wall_estimate_on_shared_cores_by_hand():
    """Stated rates at 2 threads; a run of 110 s, 10 s of it start-up. One worker on one core at 1 thread: half the
    rates' threads, so its work takes twice as long (200 s) and its start-up 10 s. Two such runs at once on that
    core: each gets half a core (x4: 400 s) and their start-ups contend (x2: 20 s), side by side: 420 s."""
    rates = estimate.Rates("cpu", 1e-3, 0.3, 1.0, 124_439_808, "stated", 2)
    one = estimate.Cost(runs=1, run_cpu_s=[110.0], run_startup_s=[10.0])
    _, wall = estimate.wall_estimate(one, rates, estimate.Workers(1, threads=1, cores=1))
    assert wall == pytest.approx(210.0)
    _, wall = estimate.wall_estimate(one + one, rates, estimate.Workers(2, threads=1, cores=1))
    assert wall == pytest.approx(420.0)
    lines, wall = estimate.wall_estimate(one + one, rates, estimate.Workers(2, threads=2))  # CPUs of its own
    assert wall == pytest.approx(110.0) and "(the longest run alone: ~110 s)" in lines[0]
    lines, wall = estimate.wall_estimate(estimate.Cost(), rates, estimate.Workers(1, gpu=True))  # nothing priced
    assert wall == 0.0 and lines == ["  on 1 workers (GPU estimate), longest runs first: ~0.0 s wall time"]

"""Figures users read, pinned on inputs where the plausible one-line slips give other figures: per-run threads
with several cores and several jobs, the multi-sweep wall time, seeds pooled by the report, the intervals
(against scipy or a plain-numpy rerun of the documented recipe on skewed data), token-weighted NLL, stratified
subsets with shares that are not whole numbers, the generation summary, the batch order of every epoch, and the
situations the rest of the suite never creates (an old config.json, a lock naming another host, a dirty work
tree, an upper-case <BR />, a 15-line sonnet, the --dup-threshold default). Every expected value is computed
here independently."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

scipy_stats = pytest.importorskip("scipy.stats")

from experiments import __main__ as cli  # noqa: E402
from experiments import launch  # noqa: E402
from experiments.estimate import format_hours  # noqa: E402
from minigpt2.metrics import Z95, bootstrap_interval, bootstrap_interval_nested, wilson_interval  # noqa: E402
from tests.experiments.test_experiments import FakeFinetune, three_runs  # noqa: E402


def scipy_wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return ci.low, ci.high


# ---------------------------------------------------------------------------------------------- threads per run

@pytest.mark.parametrize("cores, jobs, threads", [(8, 3, 2), (7, 2, 3), (16, 5, 3), (3, 4, 1), (6, 1, 6)])
def test_each_run_gets_the_cores_split_evenly_between_the_jobs(cores, jobs, threads, monkeypatch):
    monkeypatch.setattr(launch.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert launch.cpu_count() == cores
    assert launch.threads_per_run(jobs) == threads
    assert launch.threads_per_run(jobs, 5) == 5  # --threads wins


def test_the_core_count_is_the_affinity_mask_not_the_machine(monkeypatch):
    monkeypatch.setattr(launch.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(launch.os, "cpu_count", lambda: 64)
    assert launch.cpu_count() == 3 and launch.threads_per_run(2) == 1


def launched_flags(monkeypatch, tmp_path, cores: int, *argv: str) -> list:
    """The hardware settings each run was handed by `python -m experiments` launching three runs on `cores`
    cores."""
    monkeypatch.setattr(launch.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    fake = FakeFinetune()
    monkeypatch.setattr(cli, "in_process", fake)
    monkeypatch.setattr(cli, "in_subprocess", fake)
    args = cli.parse_args(["lora-targets", "--no-progress", *argv])
    cli.check_launch(args)
    result = cli.make_launcher(args).launch(three_runs(), tmp_path)
    assert sorted(result.started) == ["r0", "r1", "r2"] and not result.failed
    return [fake.handed[f"r{i}"].hardware for i in range(3)]


def test_a_parallel_sweep_hands_each_run_its_share_of_the_cores(monkeypatch, tmp_path):
    calls = launched_flags(monkeypatch, tmp_path, 8, "--jobs", "3", "--devices", "cpu")
    assert [h.threads for h in calls] == [2, 2, 2]  # 8 // 3, not 8, 3, 8 / 3 rounded or 5
    assert {h.device for h in calls} == {"cpu"}


def test_a_sequential_sweep_hands_each_run_every_core(monkeypatch, tmp_path):
    calls = launched_flags(monkeypatch, tmp_path, 6, "--isolation", "subprocess")
    assert [h.threads for h in calls] == [6, 6, 6]


def test_threads_given_are_handed_over_whatever_the_cores(monkeypatch, tmp_path):
    calls = launched_flags(monkeypatch, tmp_path, 8, "--jobs", "2", "--threads", "3", "--devices", "cpu")
    assert [h.threads for h in calls] == [3, 3, 3]


def test_multi_sweep_dry_run_total_is_the_sum_of_each_sweeps_wall_time(monkeypatch, capsys):
    """`all --dry-run --jobs 3`: each sweep's wall time on 3 workers; the total the sum of the sweeps' walls."""
    walls: list[tuple[float, int]] = []
    real = cli.wall_estimate

    def record(cost, rates, workers):
        lines, wall = real(cost, rates, workers)
        walls.append((wall, workers.n))
        return lines, wall
    monkeypatch.setattr(cli, "wall_estimate", record)
    assert cli.main(["all", "--tiny", "--dry-run", "--jobs", "3", "--stated-rates"]) == 0
    out = capsys.readouterr().out
    per_sweep = re.findall(r"on (\d+) workers \(CPU estimate\), longest runs first: ~(.+?) wall time", out)
    assert len(per_sweep) == len(walls) >= 2 and {w for _, w in walls} == {3}
    assert [s for _, s in per_sweep] == [format_hours(w) for w, _ in walls]
    assert len({w for w, _ in walls}) > 1  # sweeps of different walls: a total of the last one alone would differ
    total = sum(w for w, _ in walls)
    assert f"  ~{format_hours(total)} wall time on 3 workers (sweeps one after the other)" in out
    assert format_hours(total) not in {format_hours(max(w for w, _ in walls)), format_hours(walls[-1][0])}


# ---------------------------------------------------------------------------------------------- seeds pooled

def test_seeds_that_differ_are_pooled_into_mean_std_and_t_interval():
    from experiments import metrics
    from experiments.stats import t_interval

    dev = [40.0, 43.0, 47.5]  # skewed: mean 43.5, median 43
    test = [30.0, 31.0, 36.5]
    nll = [3.1, 3.4, 2.9]
    rows = [{"task": "sonnet", "seed": s, "status": "done", "metric": "chrf", "dev_score": d, "ci_low": d - 1,
             "ci_high": d + 1, "test_score": t, "test_low": t - 2, "test_high": t + 2, "dev_nll": n,
             "dev_nll_low": n - 0.1, "dev_nll_high": n + 0.1, "dev_nll_base": 10.0 + s}
            for s, d, t, n in zip((1, 2, 3), dev, test, nll)]
    rows.append({**rows[0], "seed": 4, "status": "failed", "dev_score": 99.0})  # not finished: not pooled
    (point,) = metrics.group_seeds(rows)
    assert point["seeds"] == 3 and point["runs"] == 4 and point["test_seeds"] == 3
    assert point["score"] == pytest.approx(np.mean(dev)) and point["std"] == pytest.approx(np.std(dev, ddof=1))
    assert point["test_score"] == pytest.approx(np.mean(test))
    assert point["test_std"] == pytest.approx(np.std(test, ddof=1))
    assert (point["score"], point["low"], point["high"]) == pytest.approx(t_interval(dev))
    assert (point["test_score"], point["test_low"], point["test_high"]) == pytest.approx(t_interval(test))
    assert (point["dev_nll"], point["dev_nll_low"], point["dev_nll_high"]) == pytest.approx(t_interval(nll))
    assert point["dev_nll_seeds"] == 3 and point["dev_nll_base"] == pytest.approx(12.0)
    # the t-interval is the textbook one (scipy's t quantile), not one seed's bootstrap interval
    half = scipy_stats.t.ppf(0.975, 2) * np.std(dev, ddof=1) / math.sqrt(3)
    assert (point["low"], point["high"]) == pytest.approx((np.mean(dev) - half, np.mean(dev) + half), abs=1e-3)
    assert metrics.format_score(point) == (f"{np.mean(dev):.2f} [{np.mean(dev) - half:.2f}, "
                                          f"{np.mean(dev) + half:.2f}] (3 seeds)")


# ---------------------------------------------------------------------------------------------- intervals

SKEWED = np.array([0.0] * 14 + [1.0, 2.0, 3.0, 10.0, 40.0, 95.0])  # a long right tail: mean 7.55, median 0


def numpy_percentile_bootstrap(stat, data, samples, confidence, seed):
    """The documented recipe, written out: one (samples, n) index array from default_rng(seed), the statistic
    of each resample, the two-sided percentile quantiles."""
    idx = np.random.default_rng(seed).integers(0, len(data), size=(samples, len(data)))
    values = [stat(data[i]) for i in idx]
    return tuple(np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2]))


@pytest.mark.parametrize("confidence, seed", [(0.95, 0), (0.9, 3), (0.5, 7)])
def test_bootstrap_interval_is_the_percentile_interval_of_the_statistic_given(confidence, seed):
    got = bootstrap_interval(lambda i: float(SKEWED[i].mean()), len(SKEWED), 400, confidence, seed)
    assert got == pytest.approx(numpy_percentile_bootstrap(np.mean, SKEWED, 400, confidence, seed), rel=1e-12)
    assert got[0] < SKEWED.mean() < got[1]
    median = bootstrap_interval(lambda i: float(np.median(SKEWED[i])), len(SKEWED), 400, confidence, seed)
    assert median == pytest.approx(numpy_percentile_bootstrap(np.median, SKEWED, 400, confidence, seed))
    assert median != got  # another statistic, another interval


def test_bootstrap_interval_is_close_to_scipys_percentile_bootstrap():
    """Against an independent implementation (scipy's resampling, its own generator): the same interval
    within the Monte Carlo error of 4000 resamples."""
    ours = bootstrap_interval(lambda i: float(SKEWED[i].mean()), len(SKEWED), 4000)
    ref = scipy_stats.bootstrap((SKEWED,), np.mean, n_resamples=4000, method="percentile",
                                random_state=np.random.default_rng(1)).confidence_interval
    width = ref.high - ref.low
    assert abs(ours[0] - ref.low) < 0.12 * width and abs(ours[1] - ref.high) < 0.12 * width
    assert ours[1] - SKEWED.mean() > 1.5 * (SKEWED.mean() - ours[0])  # skewed data: a lopsided interval


def test_nested_bootstrap_resamples_examples_then_draws_within_each():
    values = np.array([[0, 0, 1], [1, 1, 1], [0, 0, 0], [1, 0, 0], [1, 1, 0]], dtype=float)  # 5 examples, k=3
    n, k = values.shape
    got = bootstrap_interval_nested(lambda i, j: float(values[i[:, None], j].mean()), n, k, 300, 0.9, 5)
    rng, scores = np.random.default_rng(5), []
    for _ in range(300):
        i = rng.integers(0, n, size=n)
        j = rng.integers(0, k, size=(n, k))
        scores.append(np.mean([[values[i[r], j[r, c]] for c in range(k)] for r in range(n)]))
    assert got == pytest.approx(tuple(np.quantile(scores, [0.05, 0.95])), rel=1e-12)
    one = bootstrap_interval_nested(lambda i, j: float(values[i, 0].mean()), n, 1, 300, 0.9, 5)
    rng, scores = np.random.default_rng(5), []
    for _ in range(300):  # k = 1: every draw index is 0, and no draws are taken from the generator
        scores.append(values[rng.integers(0, n, size=n), 0].mean())
    assert one == pytest.approx(tuple(np.quantile(scores, [0.05, 0.95])), rel=1e-12)


@pytest.mark.parametrize("k, n", [(0, 7), (1, 7), (3, 7), (7, 7), (2, 50), (48, 50), (1, 1000), (517, 1000)])
def test_wilson_interval_is_scipys(k, n):
    assert wilson_interval(k, n) == pytest.approx(scipy_wilson(k, n), abs=1e-12)
    z90 = scipy_stats.norm.ppf(0.95)
    assert wilson_interval(k, n, z90) == pytest.approx(scipy_wilson(k, n, 0.90), abs=1e-12)
    assert Z95 == pytest.approx(scipy_stats.norm.ppf(0.975), abs=1e-15)
    assert wilson_interval(k, 0) is None


def test_token_weighted_nll_is_not_the_mean_of_per_sonnet_ratios():
    from app.measures import nll_record

    per = {"a": (20.0, 4), "b": (6.0, 12), "c": (9.0, 3)}  # ratios 5, 0.5, 3: mean 2.83; token-weighted 35/19
    rec = nll_record(per, samples=500)
    assert rec["nll"] == pytest.approx(35 / 19) and rec["ppl"] == pytest.approx(math.exp(35 / 19))
    assert rec["tokens"] == 19 and rec["sonnets"] == 3
    assert rec["low"] is None and rec["high"] is None  # 3 sonnets: below the minimum n for an interval
    # 10 sonnets: two long easy ones hold most tokens. Token-weighted 94/212 = 0.443; the mean of the ratios is
    # 4.43, and the interval must be the token-weighted statistic's: around 0.443, below 4.43
    per = {str(i): (4.0 * (1 + i % 3), 1 + i % 2) for i in range(8)} | {"x": (20.0, 100), "y": (14.0, 100)}
    sums = np.array([v[0] for v in per.values()])
    counts = np.array([v[1] for v in per.values()])
    rec = nll_record(per, samples=500)
    assert rec["nll"] == pytest.approx(sums.sum() / counts.sum()) and rec["sonnets"] == 10
    assert rec["nll"] == pytest.approx(94 / 212) and float(np.mean(sums / counts)) == pytest.approx(4.434)
    assert rec["low"] < rec["nll"] < rec["high"] < float(np.mean(sums / counts))


def test_form_interval_with_several_samples_is_widened_to_the_nested_bootstrap():
    """Samples of one prompt alike (all pass or all fail): the nested bootstrap is wider than Wilson over the
    sonnets, and the reported interval is the wider of the two on each side."""
    from app.measures import form_record
    from tests.app.test_measures import PERFECT

    ids = [f"p{i}" for i in range(6)]
    passing = [True, True, False, False, False, True]
    samples = [[PERFECT if ok else "a line\nanother" for ok in passing] for _ in range(4)]
    rec = form_record(ids, samples, boot=400)
    values = np.array([[float(ok)] * 4 for ok in passing])
    w_low, w_high = scipy_wilson(12, 24)
    b_low, b_high = bootstrap_interval_nested(lambda i, j: float(values[i[:, None], j].mean()), 6, 4, 400)
    assert b_high - b_low > w_high - w_low
    r = rec["rates"]["perfect"]
    assert r["rate"] == 0.5 and (r["low"], r["high"]) == pytest.approx((min(w_low, b_low), max(w_high, b_high)))


# ---------------------------------------------------------------------------------------------- subsets

@pytest.mark.parametrize("sizes, n, quota", [
    ((50, 30, 20), 9, (4, 3, 2)),   # shares 4.5, 2.7, 1.8: the two largest remainders get one more
    ((45, 35, 20), 7, (3, 3, 1)),   # shares 3.15, 2.45, 1.4: rounding each would give 6 rows
    ((8, 57, 35), 4, (0, 2, 2)),    # shares 0.32, 2.28, 1.4: the smallest class may get none
])
def test_stratified_subset_gives_each_class_its_largest_remainder_quota(sizes, n, quota):
    from tasks.base import sample_indices

    labels = [c for c, size in enumerate(sizes) for _ in range(size)]
    rng = np.random.default_rng(0)
    rng.shuffle(labels)  # classes interleaved in the file
    for seed in range(5):
        chosen = sample_indices(labels, n, seed, "dev")
        assert len(chosen) == len(set(chosen)) == n and chosen == sorted(chosen)
        assert tuple(sum(labels[i] == c for i in chosen) for c in range(len(sizes))) == quota


def test_stratified_ties_are_broken_by_the_seed_not_the_label():
    from tasks.base import sample_indices

    labels = [c for c, size in enumerate((26, 26, 26, 22)) for _ in range(size)]  # shares 1.3, 1.3, 1.3, 1.1
    winners = set()
    for seed in range(30):
        picked = [labels[i] for i in sample_indices(labels, 5, seed, "train")]
        counts = [picked.count(c) for c in range(4)]
        assert sorted(counts[:3]) == [1, 1, 2] and counts[3] == 1
        winners.add(counts.index(2))
    assert winners == {0, 1, 2}


# ---------------------------------------------------------------------------------------------- generation summary

def test_generation_summary_figures(monkeypatch, tmp_path):
    from distill import summary as sm
    from distill.prices import PRICES
    from tests.app.test_measures import PERFECT

    usage = [{"prompt_tokens": 100, "output_tokens": 300, "thinking_tokens": 50, "total_tokens": 450},
             {"prompt_tokens": 90, "output_tokens": 0, "thinking_tokens": 0, "total_tokens": 90},
             {"prompt_tokens": 110, "output_tokens": 200, "thinking_tokens": 10, "total_tokens": 320}]
    recs = [{"status": "kept", "text": PERFECT, "usage": usage[0], "model_version": "gemini-2.5-flash-001"},
            {"status": "rejected", "reason": "leak: overlap 0.93 with x", "usage": usage[1]},
            {"status": "kept", "text": PERFECT, "usage": usage[2], "model_version": "gemini-2.5-flash"},
            {"status": "kept", "text": "one line only", "usage": usage[0]},
            {"status": "rejected", "reason": "near-duplicate: jaccard 0.61 with y"},
            {"status": "rejected", "reason": "empty response (finish STOP)"}]
    s = sm.summarize(recs, "gemini-2.5-flash")
    assert (s["requests"], s["kept"], s["perfect"]) == (6, 3, 2)
    assert s["rejected"] == {"empty response": 1, "leak": 1, "near-duplicate": 1}
    assert s["perfect_rate"] == pytest.approx(2 / 3)  # among the kept, not the requests
    assert s["perfect_ci95"] == pytest.approx(scipy_wilson(2, 3))
    assert s["tokens"] == {"input": 400, "output": 800, "thinking": 110, "total": 1310}
    p_in, p_out = PRICES["gemini-2.5-flash"]
    assert s["cost_usd"] == pytest.approx((400 * p_in + (800 + 110) * p_out) / 1e6)
    assert s["model_versions"] == ["gemini-2.5-flash", "gemini-2.5-flash-001"]
    lo, hi = scipy_wilson(2, 3)
    assert f"perfect sonnets among kept: 2/3 (66.7%, 95% CI {100 * lo:.1f}-{100 * hi:.1f}%)" in sm.format_summary(s)
    assert sm.summarize(recs[1:2], "unknown-model")["cost_usd"] is None

    path = tmp_path / "flash.jsonl"  # one record (an empty file has no summary yet: the study's rate)
    path.write_text(json.dumps({"id": "gemini-2.5-flash-0", "teacher": "gemini-2.5-flash", "status": "kept",
                                "text": "x"}) + "\n")
    monkeypatch.setattr(sm, "read_summary", lambda p: s)
    assert sm.teacher_rates("gemini-2.5-flash", path)[:2] == pytest.approx((2 / 6, 3 / 6))
    assert sm.requests_needed("gemini-2.5-flash", path, perfect=10) == 30   # 10 / (2/6)
    assert sm.requests_needed("gemini-2.5-flash", path, kept=7) == 14       # ceil(7 / (3/6))
    assert sm.requests_needed("gemini-2.5-flash", path, perfect=5, kept=9) == 18  # the larger need
    assert sm.requests_needed("gemini-2.5-flash", path, perfect=7) == 21
    assert sm.requests_needed("gemini-2.5-pro", None, perfect=10) == math.ceil(10 / 0.75)  # the study's rate


# ---------------------------------------------------------------------------------------------- batch order

def test_batches_are_length_buckets_in_a_shuffled_order_every_epoch():
    """Within a chunk of `bucket` batches the examples are sorted by length; the batches themselves are
    shuffled (not shortest to longest) in every epoch, whatever the seed."""
    from minigpt2.train import bucketed_batches

    lengths = list(np.random.default_rng(0).permutation(200) + 1)  # distinct lengths
    correlations = []
    for epoch in range(12):
        batches = bucketed_batches(lengths, 4, torch.Generator().manual_seed(11711 + epoch), bucket=10)
        assert sorted(i for b in batches for i in b) == list(range(200))
        assert all(len(b) == 4 for b in batches)
        assert all([lengths[i] for i in b] == sorted(lengths[i] for i in b) for b in batches)
        means = [np.mean([lengths[i] for i in b]) for b in batches]
        correlations.append(scipy_stats.spearmanr(range(len(means)), means)[0])
        assert means != sorted(means) and means != sorted(means, reverse=True)
    assert abs(np.mean(correlations)) < 0.25 and max(correlations) < 0.7  # no epoch near sorted order


def test_one_chunk_of_batches_holds_consecutive_lengths():
    from minigpt2.train import bucketed_batches

    lengths = list(range(1, 41))
    batches = bucketed_batches(lengths, 4, torch.Generator().manual_seed(3), bucket=100)  # one chunk
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    assert spans == [(1 + 4 * j, 4 + 4 * j) for j in range(10)]


# ---------------------------------------------------------------------------------------------- situations

def test_a_config_json_from_before_eval_samples_means_one_sample_per_prompt():
    from app.finetune import parse_settings
    from app.settings import RunSettings

    s = parse_settings(["--task", "sonnet", "--model", "tiny"])
    assert s.eval.samples == 4  # today's default for sonnets
    old = s.to_dict()
    del old["eval"]["samples"]
    assert RunSettings.from_dict(old).eval.samples == 1  # what such a run did, not today's default


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lock_naming_another_host_is_refused_even_if_no_such_pid_runs_here(tmp_path):
    from app.runfolder import LOCK_FILE, RunFolderError, locked

    pid = dead_pid()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": "node-elsewhere"}))
    with pytest.raises(RunFolderError, match=rf"in use by another finetune \(pid {pid} on host node-elsewhere, "):
        with locked(tmp_path):
            pass
    assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "node-elsewhere"  # left alone


def test_a_lock_left_on_this_host_by_a_dead_process_is_taken_over(tmp_path):
    import socket

    from app.runfolder import LOCK_FILE, locked

    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    with locked(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()


@pytest.mark.parametrize("porcelain, dirty", [(" M app/cli.py\n", True), ("", False)])
def test_the_code_version_says_whether_the_work_tree_has_changes(porcelain, dirty, monkeypatch):
    from app import runfolder

    seen = []

    def fake_run(cmd, **kw):
        seen.append(cmd)
        out = "abc123\n" if cmd[:2] == ["git", "rev-parse"] else porcelain
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")
    monkeypatch.setattr(runfolder.subprocess, "run", fake_run)
    got = runfolder.code_version.__wrapped__()
    assert got["git_commit"] == "abc123" and got["git_dirty"] is dirty
    assert ["git", "status", "--porcelain", "--untracked-files=no"] in seen


def test_the_code_version_of_a_dirty_checkout(tmp_path, monkeypatch):
    """A real git work tree: clean, then with a changed tracked file (the module is pointed at that tree)."""
    from app import runfolder

    (tmp_path / "app").mkdir()
    module = tmp_path / "app" / "runfolder.py"
    module.write_text("x = 1\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "x"]):
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True)
    monkeypatch.setattr(runfolder, "CODE_FOLDER", tmp_path)
    version = runfolder.code_version.__wrapped__  # uncached: the tree changes under it
    clean = version()
    (tmp_path / "untracked.txt").write_text("new")  # an untracked file does not make the tree dirty
    assert version() == clean
    module.write_text("x = 2\n")
    dirty = version()
    assert clean["git_dirty"] is False and dirty["git_dirty"] is True
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert clean["git_commit"] == dirty["git_commit"] == head


@pytest.mark.parametrize("raw, clean", [("good<BR />film", "good film"), ("a<Br/>b<bR>c", "a b c"),
                                        ("one<br />  <BR/>two", "one two")])
def test_html_line_breaks_of_any_case_become_one_space(raw, clean):
    from course.readers import clean_text

    assert clean_text(raw) == clean


def test_reason_counts_count_a_fifteen_line_sonnet_and_each_short_line():
    from app.measures import form_record
    from tests.app.test_measures import PERFECT, _line

    fifteen = PERFECT + "\n" + _line("bold")
    thirteen = "\n".join(PERFECT.split("\n")[:13])
    short = PERFECT.replace(_line("tree"), _line("tree", 4)).replace(_line("day"), _line("day", 13))
    rec = form_record(["a", "b", "c", "d"], [[fifteen, thirteen, short, PERFECT]], boot=50)
    counts = rec["reasons"]["counts"]
    assert counts["line count other than 14"] == 2  # 15 lines and 13 lines, not just "fewer than 14"
    assert counts["lines outside 9-11 syllables"] == 2  # the 4- and the 13-syllable line
    assert [p["rate"] for p in rec["rates"].values()] == [0.5, 1.0, 0.75, 0.5]  # perfect: 14 lines and rhymes


def test_dup_threshold_default_is_half_and_a_pair_at_it_is_a_near_duplicate():
    from distill.dedup import DedupIndex, shingles
    from distill.generate import build_parser

    assert build_parser().parse_args(["--teacher", "gemini-2.5-flash", "--n", "1", "--out", "x.jsonl"]
                                      ).dup_threshold == 0.5
    assert DedupIndex().dup_threshold == 0.5
    base = "abcdefghijklmnopqrstuvwxyz"
    first = " ".join(base[i:i + 5] for i in range(0, 20, 5))
    scored = []
    for cut in range(4, len(first)):
        other = first[:cut] + " zzzzz qqqqq"
        a, b = shingles(first), shingles(other)
        jac = len(a & b) / len(a | b)  # by hand
        index = DedupIndex()
        index.add("first", first)
        reason = index.reject_reason(other)
        assert (reason is not None) == (jac >= 0.5), (cut, jac, reason)
        scored.append(jac)
    assert min(scored) < 0.5 < max(scored)


# ---------------------------------------------------------------------------------------------- metrics' edges

def test_bootstrap_defaults_edges_and_errors():
    x = SKEWED
    mean = lambda i: float(x[i].mean())  # noqa: E731
    assert bootstrap_interval(mean, len(x)) == bootstrap_interval(mean, len(x), 1000, 0.95, 0)
    assert bootstrap_interval(lambda i: float(x[:1][i].mean()), 1) == (0.0, 0.0)  # one example: no spread
    for bad in (lambda: bootstrap_interval(mean, 0), lambda: bootstrap_interval_nested(lambda i, j: 0.0, 0, 2),
                lambda: bootstrap_interval_nested(lambda i, j: 0.0, 3, 0)):
        with pytest.raises(ValueError, match="^bootstrap of an empty set$"):
            bad()
    values = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])

    def score(i, j):
        assert i.shape == (3,) and j.shape == (3, 2) and j.dtype.kind == "i"
        return float(values[i[:, None], j].mean())
    nested = lambda i, j: float(values[i[:, None], j].mean())  # noqa: E731
    assert bootstrap_interval_nested(score, 3, 2, 50) == bootstrap_interval_nested(nested, 3, 2, 50, 0.95, 0)
    rng, scores = np.random.default_rng(0), []
    for _ in range(300):  # k = 2: two draws per chosen example
        i = rng.integers(0, 3, size=3)
        j = rng.integers(0, 2, size=(3, 2))
        scores.append(np.mean([values[i[r], j[r, c]] for r in range(3) for c in range(2)]))
    assert bootstrap_interval_nested(nested, 3, 2, 300, 0.8, 0) == pytest.approx(
        tuple(np.quantile(scores, [0.1, 0.9])))

    def one_draw(i, j):
        assert j.shape == (3, 1) and j.dtype.kind == "i" and not j.any()
        return float(values[i[:, None], j].mean())
    bootstrap_interval_nested(one_draw, 3, 1, 20)
    assert bootstrap_interval_nested(lambda i, j: float(x[:1][i].mean()), 1, 1) == (0.0, 0.0)


def test_accuracy_and_chrf():
    from sacrebleu.metrics import CHRF

    from minigpt2.metrics import accuracy, chrf

    assert accuracy([1, 0, 2, 2, 1], [1, 1, 2, 0, 1]) == 0.6
    assert accuracy([True, 0], [1, 0]) == 1.0  # compared as integers
    with pytest.raises(ValueError, match="^3 predictions for 2 labels$"):
        accuracy([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="^accuracy of an empty set$"):
        accuracy([], [])
    hyp, ref = ["the cat sat on a mat", "so long lives this"], ["the cat sat on the mat", "so long lives this!"]
    assert chrf(hyp, ref) == pytest.approx(CHRF(char_order=6, word_order=0, beta=2).corpus_score(hyp, [ref]).score)
    assert chrf(hyp, ref) != pytest.approx(np.mean([chrf([h], [r]) for h, r in zip(hyp, ref)]))  # corpus, not mean
    assert chrf(hyp[::-1], ref) < chrf(hyp, ref) and chrf(ref, ref) == 100.0
    with pytest.raises(ValueError, match="^2 hypotheses for 1 references$"):
        chrf(hyp, ref[:1])


def test_subset_record_hash_is_the_ids_one_per_line():
    import hashlib

    from app.subsets import describe, ids_sha256
    from tasks.base import Example

    assert ids_sha256(["12", "7", "a"]) == hashlib.sha256(b"12\n7\na").hexdigest()
    assert ids_sha256(["7", "12", "a"]) != ids_sha256(["12", "7", "a"])  # in order
    rec = describe({"dev": [Example("12", [1]), Example("7", [2])], "train": []})
    assert rec == {"dev": {"n": 2, "sha256": hashlib.sha256(b"12\n7").hexdigest(), "ids": ["12", "7"]},
                   "train": {"n": 0, "sha256": hashlib.sha256(b"").hexdigest(), "ids": []}}


def test_generation_summary_text_and_the_summary_file_read_back(tmp_path):
    from distill import summary as sm

    empty = sm.summarize([], "gemini-x")
    assert sm.format_summary(empty) == (
        "gemini-x: kept 0 of 0 requests; rejected: none\nperfect sonnets: none kept yet\n"
        "tokens: input 0, output 0, thinking 0, total 0\nestimated cost: n/a (model not in the price table)")
    two = sm.summarize([{"status": "rejected", "reason": "leak: x"}, {"status": "rejected", "reason": "dup"}],
                       "gemini-x")
    assert "; rejected: dup: 1, leak: 1\n" in sm.format_summary(two)
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"x": 1}\n')
    sm.write_summary(jsonl, {**empty, "teacher": "written"}, last_run={"n": 3, "complete": True, "error": None})
    back = sm.read_summary(jsonl)  # the file beside it matches the JSONL's sha256: read as written
    assert back["teacher"] == "written" and back["last_run"] == {"n": 3, "complete": True, "error": None}


def test_generation_summary_prices_rates_and_needs_at_their_edges(monkeypatch, tmp_path):
    from distill import summary as sm
    from distill.prices import PRICES

    s = sm.summarize([{"status": "kept", "text": "x"}], "gemini-2.5-flash")
    assert s["schema"] == 1 and (s["prices"]["usd_per_1m_input"], s["prices"]["usd_per_1m_output"]) == \
        PRICES["gemini-2.5-flash"]
    assert sm.reason_kind(None) == "?"
    assert sm.teacher_rates("nobody", None) == (1.0, 1.0, "no perfect rate known: every request assumed perfect")
    assert sm.teacher_rates("gemini-2.5-pro", None) == (0.75, 1.0, "the study's perfect rate 75%, assumed")
    assert sm.requests_needed("gemini-2.5-pro", None) == 0
    assert sm.requests_needed("gemini-2.5-pro", None, kept=3) == 3
    assert sm.requests_needed("gemini-2.5-pro", None, perfect=3) == 4

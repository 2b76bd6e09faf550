"""Tests written against the survivors of `python tools/mutate.py --auto experiments/stats.py` and
`--auto experiments/references.py` (docs/testing.md, "Automated mutants"): what a run folder's per-example scores
are (`run_scores`, `zero_shot_scores`: which file, which split, which references, which samples), where its data
folder is, and the aggregate statistics' properties. Run folders are written here on the package's tiny data
(experiments/tiny_data, no course data); the expected correctness is read off the label files by hand, chrF is
sacrebleu's own, intervals are the loop-by-loop bootstrap-t of `test_mutants_stats.py`.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sacrebleu.metrics import CHRF

from course.formats import SONNETS, label_format
from experiments import stats
from experiments.stats import ExampleScores, paired_difference, t_interval
from experiments.sweeps import TINY_DATA_DIR
from tests.experiments.test_mutants_stats import plain_bootstrap_t

# ids-sst-dev.csv's rows and labels, in file order; ids-sst-test-labels.csv's
SST_DEV = [("a7d575c9ed86ea9633660c67e", 3), ("33cfa32975091f471e3a19656", 2), ("266dc1a26e2654235e8d8dd22", 3),
           ("9ab97ed33b3aae716a099a622", 4), ("b9a4de27c4cb2a0f8fa220747", 4), ("f9d52eb2ec511bb60371e78e8", 2),
           ("7e58a3d4b3d093f0ea5e9525e", 3), ("1d38219e6c81a9d8db82b77f5", 4)]
SST_TEST = [("b7573736a6ddf7be102b7fee0", 2), ("d17a8752e342834fd18b31aaa", 3), ("d53cc9b2a58a1e19baba0c193", 4),
            ("b54166fdb4f4b80c4f027e1f7", 3)]


def run_folder(root: Path, name: str, task: str, data_dir: Path | None = TINY_DATA_DIR, **data) -> Path:
    run = root / name
    run.mkdir(parents=True)
    settings = {"data": {"task": task, **data}, "eval": {"samples": 1}}
    if data_dir is not None:
        settings["paths"] = {"data_dir": str(data_dir)}
    (run / "config.json").write_text(json.dumps({"settings": settings}))
    return run


def write_metrics(run: Path, **metrics) -> None:
    (run / "metrics.json").write_text(json.dumps(metrics))


def accuracy(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.float64)


# ---------------------------------------------------------------------------------------------- run_scores

def test_run_scores_of_held_out_nll_are_each_sonnets_sum_and_tokens_of_the_split_asked(tmp_path):
    run = run_folder(tmp_path, "sonnet-s1", "sonnet")
    write_metrics(run, metric="chrf", heldout_nll={
        "dev": {"nll": 3.1, "per_sonnet": {"133": [41.5, 12], "132": [30.25, 10], "140": [77.0, 25]}},
        "test": {"nll": 3.3, "per_sonnet": {"150": [12.5, 4]}}})
    dev = stats.run_scores(run, metric="nll")  # dev by default
    assert dev.metric == "nll" and dev.ids == ("133", "132", "140")
    assert dev.values.shape == (3, 1, 2) and dev.values.dtype == np.float64
    assert np.array_equal(dev.values[:, 0], [[41.5, 12], [30.25, 10], [77.0, 25]])
    assert dev.score() == pytest.approx((41.5 + 30.25 + 77.0) / (12 + 10 + 25))  # token-weighted
    test = stats.run_scores(run, "test", "nll")
    assert test.ids == ("150",) and np.array_equal(test.values, [[[12.5, 4]]])
    write_metrics(run, metric="chrf", heldout_nll={"dev": {"nll": 3.1}})
    assert stats.run_scores(run, "dev", "nll") is None and stats.run_scores(run, "test", "nll") is None
    write_metrics(run, metric="chrf")
    assert stats.run_scores(run, "dev", "nll") is None


def test_run_scores_of_a_classifier_are_each_rows_correctness_in_every_sample_against_the_split_asked(tmp_path):
    sst = label_format("sst")
    labels = tmp_path / "my-test-labels.csv"  # other test labels than those beside the data
    labels.write_text("id\tsentiment\n" + "".join(f"{i}\t{y}\n" for i, y in zip([i for i, _ in SST_TEST],
                                                                                  (2, 2, 4, 3))))
    runs = {"beside": run_folder(tmp_path, "sst-beside", "sst"),
            "named": run_folder(tmp_path, "sst-named", "sst", test_references=str(labels))}
    for run in runs.values():
        order = [3, 0, 1, 2, 4, 5, 6, 7]  # the prediction file's own order
        sst.write_predictions(run / "dev.csv", [SST_DEV[k][0] for k in order], [3] * 8)
        sst.write_predictions(run / "dev-2.csv", [SST_DEV[k][0] for k in order], [4] * 8)
        sst.write_predictions(run / "test.csv", [i for i, _ in SST_TEST], [2, 3, 3, 3])
        write_metrics(run, metric="accuracy", dev_predictions="dev.csv", dev_samples=["dev.csv", "dev-2.csv"],
                      test_predictions="test.csv")
    dev = stats.run_scores(runs["named"])
    assert dev.metric == "accuracy" and dev.ids == tuple(SST_DEV[k][0] for k in order)
    # labels in that order: 4 3 2 3 4 2 3 4; predicting 3, then 4
    assert dev.values.shape == (8, 2, 1)
    assert np.array_equal(dev.values[:, :, 0].T, [accuracy([0, 1, 0, 1, 0, 0, 1, 0]),
                                                  accuracy([1, 0, 0, 0, 1, 0, 0, 1])])
    assert np.array_equal(stats.run_scores(runs["beside"], "test").values[:, 0, 0], accuracy([1, 1, 0, 1]))
    named = stats.run_scores(runs["named"], "test")  # --test-references: those labels, not the ones beside
    assert named.ids == tuple(i for i, _ in SST_TEST) and np.array_equal(named.values[:, 0, 0],
                                                                          accuracy([1, 0, 0, 1]))
    assert stats.run_scores(runs["named"], "dev").ids == dev.ids  # the test labels play no part in dev


def test_run_scores_of_sonnets_are_sacrebleus_chrf_statistics_of_each_sonnet(tmp_path):
    run = run_folder(tmp_path, "sonnet-s1", "sonnet")
    truths = SONNETS.split_references(TINY_DATA_DIR, "dev")
    numbers = [133, 132, 134]
    hyps = ["\n".join(truths[k].split("\n")[:3]) + "\nAnd so my love, in words of ash and rain,\nfades." for k in numbers]
    SONNETS.write_predictions(run / "dev.txt", [str(k) for k in numbers], hyps)
    write_metrics(run, metric="chrf", dev_predictions="dev.txt")
    got = stats.run_scores(run)
    assert got.metric == "chrf" and got.ids == ("133", "132", "134") and got.values.shape[:2] == (3, 1)
    refs = [truths[k] for k in numbers]
    assert got.score() == pytest.approx(CHRF().corpus_score(hyps, [refs]).score, rel=1e-12)
    for k in range(3):
        assert got.subset([str(numbers[k])]).score() == pytest.approx(
            CHRF().corpus_score(hyps[k:k + 1], [refs[k:k + 1]]).score, rel=1e-12)


def test_run_interval_is_the_bootstrap_t_of_the_runs_scores_from_seed_0(tmp_path):
    run = run_folder(tmp_path, "sst-s1", "sst")
    ids = [i for i, _ in SST_DEV]  # labels 3 2 3 4 4 2 3 4
    predictions = {"dev.csv": [3, 2, 3, 3, 4, 3, 2, 4], "dev-2.csv": [3, 3, 3, 4, 2, 2, 2, 4],
                   "dev-3.csv": [2, 2, 4, 4, 4, 3, 3, 3]}
    for name, p in predictions.items():
        label_format("sst").write_predictions(run / name, ids, p)
    write_metrics(run, metric="accuracy", dev_predictions="dev.csv", dev_samples=list(predictions))
    right = np.array([[[1], [1], [0]], [[1], [0], [1]], [[1], [1], [0]], [[0], [1], [1]], [[1], [0], [1]],
                      [[0], [1], [0]], [[0], [0], [1]], [[1], [1], [0]]], dtype=np.float64)  # (rows, samples, 1)
    mean = lambda rows: float(rows[0].mean())  # noqa: E731
    iv = stats.run_interval(run, samples=99)
    assert (iv.value, iv.n) == (pytest.approx(14 / 24), 8)
    want = plain_bootstrap_t([right], mean, 99, 0, bounds=(0.0, 1.0))
    assert (iv.low, iv.high) == pytest.approx(want, rel=1e-10) and 0 < want[0] < want[1] < 1
    seeded = stats.run_interval(run, samples=99, seed=4)
    assert (seeded.low, seeded.high) == pytest.approx(plain_bootstrap_t([right], mean, 99, 4, bounds=(0.0, 1.0)),
                                                      rel=1e-10)
    assert (seeded.low, seeded.high) != (iv.low, iv.high)


# ---------------------------------------------------------------------------------------------- zero-shot

def quora_labels(split: str) -> dict[str, int]:
    """The tiny Quora labels, read here with the csv module."""
    name, column = (("quora-dev.csv", "is_duplicate") if split == "dev" else ("quora-test-labels.csv",
                                                                              "is_duplicate"))
    with open(TINY_DATA_DIR / name, newline="", encoding="utf-8") as f:
        return {r["id"].strip(): int(float(r[column])) for r in csv.DictReader(f, delimiter="\t")
                if r[column].strip()}  # a row without a label is not scored


def test_zero_shot_scores_read_the_task_and_split_the_check_names_quora_dev_by_default(tmp_path):
    run = run_folder(tmp_path, "sst-s1", "sst")
    dev, test = quora_labels("dev"), quora_labels("test")
    dev_ids = list(dev)[:6]
    answers = [dev[k] if n % 3 else 1 - dev[k] for n, k in enumerate(dev_ids)]  # wrong on the 1st and the 4th
    label_format("quora").write_predictions(run / "zs.csv", dev_ids + ["not-a-dev-row"], answers + [1])
    (run / "zs.json").write_text(json.dumps({"predictions": "zs.csv"}))  # no task, no split: quora dev
    got = stats.zero_shot_scores(run, "zs.json")
    assert got.metric == "accuracy" and got.ids == tuple(dev_ids) and got.values.shape == (6, 1, 1)
    assert np.array_equal(got.values[:, 0, 0], accuracy([0, 1, 1, 0, 1, 1]))
    label_format("quora").write_predictions(run / "zs-test.csv", list(test), [1, 0, 0, 0])
    (run / "zs-test.json").write_text(json.dumps({"task": "quora", "split": "test", "predictions": "zs-test.csv"}))
    assert [test[k] for k in test] == [1, 1, 0, 0]
    assert np.array_equal(stats.zero_shot_scores(run, "zs-test.json").values[:, 0, 0], accuracy([1, 0, 1, 1]))
    label_format("sst").write_predictions(run / "zs-sst.csv", [i for i, _ in SST_DEV[:4]], [3, 3, 3, 3])
    (run / "zs-sst.json").write_text(json.dumps({"task": "sst", "predictions": "zs-sst.csv"}))
    assert np.array_equal(stats.zero_shot_scores(run, "zs-sst.json").values[:, 0, 0], accuracy([1, 0, 1, 0]))


# ---------------------------------------------------------------------------------------------- the data folder

def test_the_data_folder_is_the_recorded_one_else_the_environments_else_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIGPT2_DATA_DIR", raising=False)
    bare = run_folder(tmp_path, "bare", "sst", data_dir=None)  # no --data-dir, no experiment.json
    assert stats.run_data_folder(bare) == Path("data")
    (bare / "experiment.json").write_text(json.dumps({"data_dir": str(TINY_DATA_DIR)}))
    assert stats.run_data_folder(bare) == TINY_DATA_DIR
    gone = run_folder(tmp_path, "gone", "sst", data_dir=tmp_path / "moved-away")
    assert stats.run_data_folder(gone) == tmp_path / "moved-away"  # nothing says where it went: the record
    monkeypatch.setenv("MINIGPT2_DATA_DIR", str(TINY_DATA_DIR))
    assert stats.run_data_folder(gone) == TINY_DATA_DIR  # the data moved: the environment says where
    here = run_folder(tmp_path, "here", "sst", data_dir=tmp_path)
    assert stats.run_data_folder(here) == tmp_path  # a recorded folder that exists wins over the environment


# ---------------------------------------------------------------------------------------------- per-example scores

def test_a_score_on_drawn_examples_and_draws_is_the_metric_of_those_rows():
    values = np.array([[[1.0], [0.0]], [[0.0], [0.0]], [[1.0], [1.0]]])  # 3 examples, 2 draws each
    s = ExampleScores("accuracy", ("a", "b", "c"), values)
    assert s.score() == pytest.approx(3 / 6)
    i, j = np.array([2, 2, 0]), np.array([[0, 1], [1, 1], [0, 0]])
    assert s.score(i, j) == pytest.approx((1 + 1 + 1 + 1 + 1 + 1) / 6)
    assert s.score(np.array([1, 0, 0]), np.array([[0, 0], [1, 1], [1, 0]])) == pytest.approx(1 / 6)
    sub = s.subset(["c", "a"])
    assert sub.ids == ("c", "a") and np.array_equal(sub.values, values[[2, 0]]) and sub.metric == "accuracy"


def test_an_interval_is_drawn_from_seed_0_unless_told():
    right = np.array([[1, 0], [0, 0], [1, 1], [1, 0], [0, 1], [1, 1], [0, 1], [1, 0], [0, 0], [1, 1]],
                     dtype=np.float64)[:, :, None]  # 10 rows, 2 draws each
    s = ExampleScores("accuracy", tuple(map(str, range(10))), right)
    iv = s.interval(99)
    mean = lambda rows: float(rows[0].mean())  # noqa: E731
    want = plain_bootstrap_t([right], mean, 99, 0, bounds=(0.0, 1.0))
    assert (iv.low, iv.high) == pytest.approx(want, rel=1e-10) and 0 < want[0] < want[1] < 1
    assert (iv.low, iv.high) != pytest.approx(plain_bootstrap_t([right], mean, 99, 3, bounds=(0.0, 1.0)))


def test_chrf_of_no_sonnet_is_an_error_that_says_so():
    with pytest.raises(ValueError, match=r"^chrF of an empty set$"):
        stats.chrf_statistics([], [])
    with pytest.raises(ValueError, match=r"^2 hypotheses for 1 references$"):
        stats.chrf_statistics(["a", "b"], ["a"])


# ---------------------------------------------------------------------------------------------- properties

ROWS = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=8, max_size=20)


@settings(max_examples=25, deadline=None)
@given(ROWS)
def test_an_arm_against_itself_differs_by_zero_with_a_zero_width_interval_and_p_1(rows):
    ids = tuple(map(str, range(len(rows))))
    a = ExampleScores("accuracy", ids, accuracy([r[0] for r in rows])[:, None, None])
    d = paired_difference(a, a, samples=49)
    assert (d.value, d.low, d.high, d.n, d.p) == (0.0, 0.0, 0.0, len(rows), 1.0)
    assert (d.mcnemar.a_only, d.mcnemar.b_only) == (0, 0)
    nll = np.array([[[10.0 + r[0] + 3 * k, 4.0 + r[1] + k]] for k, r in enumerate(rows)])
    n = ExampleScores("nll", ids, nll)
    d = paired_difference(n, n, samples=49)
    assert (d.value, d.low, d.high, d.p) == (0.0, 0.0, 0.0, 1.0) and d.mcnemar is None


@settings(max_examples=25, deadline=None)
@given(ROWS)
def test_a_paired_difference_holds_its_point_and_is_the_difference_of_the_two_scores(rows):
    ids = tuple(map(str, range(len(rows))))
    a = accuracy([r[0] for r in rows])
    b = accuracy([r[1] for r in rows])
    d = paired_difference(ExampleScores("accuracy", ids, a[:, None, None]),
                          ExampleScores("accuracy", ids[::-1], b[::-1, None, None]), samples=49)
    assert d.value == pytest.approx(a.mean() - b.mean()) and d.low <= d.value <= d.high
    assert -1.0 <= d.low and d.high <= 1.0
    assert (d.mcnemar.a_only, d.mcnemar.b_only) == (int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum()))


SEEDS = st.lists(st.floats(-50, 50, allow_nan=False), min_size=2, max_size=9)


@settings(max_examples=50, deadline=None)
@given(SEEDS, st.sampled_from([0.5, 2.0, 7.0]), st.permutations(range(9)))
def test_the_seed_t_interval_holds_its_mean_scales_with_the_figures_and_ignores_their_order(values, c, order):
    mean, low, high = t_interval(values)
    assert low <= mean <= high and mean == pytest.approx(sum(values) / len(values), abs=1e-9)
    scaled = t_interval([c * v for v in values])
    assert scaled == pytest.approx((c * mean, c * low, c * high), abs=1e-9)
    shuffled = t_interval([values[k] for k in order if k < len(values)])
    assert shuffled == pytest.approx((mean, low, high), abs=1e-9)
    assert t_interval(values + [math.nan, None]) == (mean, low, high)  # unrecorded seeds count for nothing


# ---------------------------------------------------------------------------------------------- the chance rows' inputs

def test_the_reference_figures_are_scored_on_the_prompts_the_first_finished_sonnet_run_scored(tmp_path, monkeypatch):
    from experiments import references

    run = run_folder(tmp_path, "lora-r4-s1", "sonnet")
    config = json.loads((run / "config.json").read_text())
    config["settings"]["paths"]["tokenizer_dir"] = str(tmp_path / "bpe")
    (run / "config.json").write_text(json.dumps(config))
    truths = SONNETS.split_references(TINY_DATA_DIR, "dev")
    SONNETS.write_predictions(run / "dev.txt", ["134", "132"], [truths[134], truths[132]])
    write_metrics(run, metric="chrf", dev_predictions="dev.txt", test_predictions="gone.txt")  # test: not there
    for name in ("sonnet_reference_intervals", "sonnet_reference_forms", "sonnet_reference_copying",
                 "sonnet_reference_nll"):
        monkeypatch.setattr(references, name, lambda *args, name=name: (name, *args))
    rows = [{"status": "done", "metric": "accuracy", "run_dir": str(tmp_path / "sst")},
            {"status": "failed", "metric": "chrf", "run_dir": str(tmp_path / "died")},
            {"status": "done", "metric": "chrf", "run_dir": str(run)},
            {"status": "done", "metric": "chrf", "run_dir": str(tmp_path / "second")}]
    folder, tok, dev = str(TINY_DATA_DIR), str(tmp_path / "bpe"), (134, 132)
    assert references.sonnet_rows(rows) == rows[2:]
    assert references.sonnet_reference_figures(rows, samples=77) == {
        "chrf": {"dev": ("sonnet_reference_intervals", folder, "dev", dev, tok, 77),
                 "test": ("sonnet_reference_intervals", folder, "test", None, tok, 77)},
        "form": ("sonnet_reference_forms", folder, "dev", dev, tok),
        "copying": ("sonnet_reference_copying", folder, "dev", dev, tok),
        "nll": {"dev": ("sonnet_reference_nll", folder, "dev", dev, tok),
                "test": ("sonnet_reference_nll", folder, "test", None, tok)}}
    assert references.sonnet_reference_figures(rows[:2]) is None
    assert references._scored_numbers(tmp_path / "died", "dev") is None  # no metrics.json


def test_each_reference_figure_is_on_the_prompts_asked_with_the_runs_tokenizer_and_own_sonnet_left_out(monkeypatch):
    import minigpt2.tokenizer
    from experiments import references
    from experiments.references import REAL_SONNETS, REFERENCE_NAMES
    from experiments.sweeps import TINY_TOKENIZER_DIR

    built = []

    class Recorded(minigpt2.tokenizer.Tokenizer):
        def __init__(self, folder=None, *args, **kwargs):
            built.append(folder)
            super().__init__(folder, *args, **kwargs)
    monkeypatch.setattr(minigpt2.tokenizer, "Tokenizer", Recorded)
    folder, tok = str(TINY_DATA_DIR), str(TINY_TOKENIZER_DIR)
    truths = SONNETS.split_references(TINY_DATA_DIR, "dev")  # 132, 133, 134; the test split holds 145, 146
    prompt = lambda k: "\n".join(truths[k].split("\n")[:3])  # noqa: E731

    chrf = references.sonnet_reference_intervals(folder, "dev", (134, 999, 132), tok, 59)  # 999: not a dev prompt
    only = chrf[REFERENCE_NAMES[0]]
    assert only.n == 2 and only.value == pytest.approx(
        CHRF().corpus_score([prompt(134), prompt(132)], [[truths[134], truths[132]]]).score, rel=1e-12)
    forms = references.sonnet_reference_forms(folder, "dev", (134, 132), tok)
    assert {name: f["sonnets"] for name, f in forms.items()} == dict.fromkeys(REFERENCE_NAMES + (REAL_SONNETS,), 2)
    assert forms[REAL_SONNETS]["rates"]["fourteen_lines"]["rate"] == 1.0  # the real sonnets: 14 lines each
    assert list(forms[REAL_SONNETS]["per_sonnet"]) == ["134", "132"]
    assert forms[REFERENCE_NAMES[0]]["rates"]["fourteen_lines"]["rate"] == 0.0  # the prompt alone: 3
    copying = references.sonnet_reference_copying(folder, "dev", (134,), tok)
    real = copying[REAL_SONNETS]
    assert (real["sonnets"], list(real["per_sonnet"]), real["held_out_sonnets"]) == (1, ["134"], 5)  # dev + test
    assert real["held_out"]["longest_max"] < 10  # against the other held-out sonnets, not against itself
    assert references.sonnet_reference_nll(folder, "dev", (133,), tok)["unigram"]["sonnets"] == 1
    assert built and set(built) == {tok}


def sacrebleu_bootstrap_t(hyps: list[str], refs: list[str], b: int, seed: int) -> tuple[float, float]:
    """The bootstrap-t interval of corpus chrF (sacrebleu's), resampling sonnets, with jackknife standard errors."""
    chrf = lambda idx: CHRF().corpus_score([hyps[i] for i in idx], [[refs[i] for i in idx]]).score  # noqa: E731

    def se(idx: list[int]) -> float:
        loo = np.array([chrf(idx[:j] + idx[j + 1:]) for j in range(len(idx))])
        return math.sqrt((len(idx) - 1) / len(idx) * ((loo - loo.mean()) ** 2).sum())

    n = len(refs)
    theta, se0 = chrf(list(range(n))), se(list(range(n)))
    draws = np.random.default_rng(seed).integers(0, n, size=(b, n))
    t = np.sort([(chrf(list(row)) - theta) / se(list(row)) for row in draws])
    k = math.floor((b + 1) * 0.025)
    return max(theta - t[b - k] * se0, 0.0), min(theta - t[k - 1] * se0, 100.0)


def test_the_chance_rows_chrf_interval_resamples_as_many_times_as_asked(tmp_path):
    """Eight true dev sonnets (the tiny data's, renumbered): enough for an interval."""
    import shutil

    from course.readers import read_sonnets
    from experiments.references import REFERENCE_NAMES, sonnet_reference_intervals
    from experiments.sweeps import TINY_TOKENIZER_DIR

    data = tmp_path / "data"
    shutil.copytree(TINY_DATA_DIR, data)
    texts = [s.text for f in ("sonnets.txt", "TRUE_sonnets_held_out_dev.txt")
             for s in read_sonnets(TINY_DATA_DIR / f)[0]][:8]
    (data / "TRUE_sonnets_held_out_dev.txt").write_text(
        "Sonnets\n\n" + "".join(f"{200 + k}\n\n{t}\n\n" for k, t in enumerate(texts)), encoding="utf-8")
    prompts = ["\n".join(t.split("\n")[:3]) for t in texts]
    only = sonnet_reference_intervals(str(data), "dev", None, str(TINY_TOKENIZER_DIR), 59)[REFERENCE_NAMES[0]]
    assert only.n == 8 and only.value == pytest.approx(CHRF().corpus_score(prompts, [texts]).score, rel=1e-12)
    assert (only.low, only.high) == pytest.approx(sacrebleu_bootstrap_t(prompts, texts, 59, 0), abs=1e-6)

"""Tests written against the survivors of `python tools/mutate.py --auto experiments/metrics.py` (docs/testing.md,
"Automated mutants"): how a figure is read from metrics.json, how the seeds of a setting pool, and how a cell
shows it, each on inputs where the surviving one-line slip prints another cell. Every expected value is worked
out here by hand (or with scipy's t quantile), never by the code under test; no data files are read.

mutmut builds the module-level readers (`SONNET_METRICS`, `COPYING_METRICS`) once, before any mutant is switched
on, so a slip inside `_rate` or `_value` reaches a test only when the test calls the factory itself: the factory
tests below do, beside the test of `measures` on the declared families.
"""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from experiments import metrics
from experiments.stats import Interval
from minigpt2.metrics import McNemar

NAN = math.nan


def same(a: dict, b: dict) -> bool:
    """Dict equality where NaN equals NaN."""
    return a.keys() == b.keys() and all(
        (isinstance(v, float) and math.isnan(v) and isinstance(b[k], float) and math.isnan(b[k])) or v == b[k]
        for k, v in a.items())


# ---------------------------------------------------------------------------------------------- metrics.json -> row

RATES = {"dev": {"fourteen_lines": (0.9167, 0.6461, 0.9851), "rhyme_scheme": (0.4722, 0.3178, 0.6322),
                 "meter": (0.3056, 0.1786, 0.4705), "perfect": (0.1389, 0.0604, 0.2862)},
         "test": {"fourteen_lines": (0.8, 0.4902, 0.9433), "rhyme_scheme": (0.3, 0.1078, 0.6032),
                  "meter": (0.2, 0.0567, 0.5098), "perfect": (0.1, 0.0179, 0.4042)}}
METRICS = {
    "heldout_nll": {"dev": {"nll": 3.4172, "low": 3.2051, "high": 3.6633, "sonnets": 12,
                            "coverage": {"scored": 0.875, "prompt_in_view": 0.6125}},
                    "test": {"nll": 3.9021, "low": None, "high": None, "sonnets": 5}},  # too few sonnets: no bounds
    "heldout_nll_base": {"dev": {"nll": 5.1234}, "test": {"nll": 5.4321}},
    "form": {s: {"samples": k, "sonnets": n, "rates": {p: dict(zip(("rate", "low", "high"), v))
                                                      for p, v in RATES[s].items()}}
             for s, k, n in (("dev", 3, 12), ("test", 2, 5))},
    "copying": {"dev": {"novel": {"rate": 0.8333, "low": 0.6855, "high": 0.9214},
                        "training": {"longest_mean": 4.25, "longest_max": 9, "ngram_share": 0.031},
                        "held_out": {"longest_mean": 3.5, "longest_max": 7, "ngram_share": 0.0125},
                        "n": 4, "novel_below": 6}},  # no test copying: those columns stay out
}


def test_measures_read_every_figure_of_each_split_from_its_own_place():
    form = {f"{s}_{p}{x}": v for s in ("dev", "test") for p, vals in RATES[s].items()
            for x, v in zip(("", "_low", "_high", "_n"), (*vals, 36 if s == "dev" else 10))}
    want = {"dev_nll": 3.4172, "dev_nll_low": 3.2051, "dev_nll_high": 3.6633, "dev_nll_n": 12,
            "dev_nll_base": 5.1234, "dev_form_samples": 3,
            **{k: v for k, v in form.items() if k.startswith("dev_")},
            "test_nll": 3.9021, "test_nll_low": NAN, "test_nll_high": NAN, "test_nll_n": 5,
            "test_nll_base": 5.4321, "test_form_samples": 2,
            **{k: v for k, v in form.items() if k.startswith("test_")}}
    got = metrics.measures(METRICS)
    assert same(got, want), (got, want)
    assert list(got) == list(want)  # the CSV's column order: dev then test, each in SONNET_METRICS' order
    copying = {"dev_novel": 0.8333, "dev_novel_low": 0.6855, "dev_novel_high": 0.9214,
               "dev_copy_train_longest": 4.25, "dev_copy_train_longest_max": 9, "dev_copy_train_share": 0.031,
               "dev_copy_held_longest": 3.5, "dev_copy_held_longest_max": 7, "dev_copy_held_share": 0.0125,
               "dev_copy_n": 4, "dev_copy_novel_below": 6, "dev_nll_scored": 0.875, "dev_nll_in_view": 0.6125}
    assert metrics.measures(METRICS, metrics.COPYING_METRICS) == copying
    assert metrics.measures({}) == {} and metrics.measures({"copying": {"dev": {}}}, metrics.COPYING_METRICS) == {}


def test_the_rate_reader_takes_its_path_under_the_split_and_its_n_from_the_record():
    per_sample = lambda f: f["sonnets"] * f["samples"]  # noqa: E731
    meter = metrics._rate("form", "rates", "meter", n=per_sample)
    assert meter(METRICS, "dev") == {"": 0.3056, "_low": 0.1786, "_high": 0.4705, "_n": 36}
    assert meter(METRICS, "test") == {"": 0.2, "_low": 0.0567, "_high": 0.5098, "_n": 10}
    novel = metrics._rate("copying", "novel")
    assert novel(METRICS, "dev") == {"": 0.8333, "_low": 0.6855, "_high": 0.9214}  # no n given: none read
    assert novel(METRICS, "test") == {}
    assert metrics._rate("form", "rates", "perfect")({"form": {"dev": {"rates": {}}}}, "dev") == {}


def test_the_value_reader_takes_its_path_under_the_split_and_only_where_its_record_is():
    longest = metrics._value("copying", "held_out", "longest_max", when="copying")
    assert longest(METRICS, "dev") == {"": 7} and longest(METRICS, "test") == {}
    scored = metrics._value("heldout_nll", "coverage", "prompt_in_view")
    assert scored(METRICS, "dev") == {"": 0.6125} and scored(METRICS, "test") == {}
    base = metrics._value("heldout_nll_base", "nll")
    assert base(METRICS, "test") == {"": 5.4321}
    # with `when`, a figure recorded outside that record counts only where the record is there
    gated = metrics._value("heldout_nll_base", "nll", when="copying")
    assert gated(METRICS, "dev") == {"": 5.1234} and gated(METRICS, "test") == {}
    assert base({"heldout_nll_base": {"dev": {"nll": 0.0}}}, "dev") == {"": 0.0}  # zero is a figure


def test_a_path_through_a_number_or_a_list_is_no_figure():
    assert metrics._at({"a": 3.5}, "a", "b") is None
    assert metrics._at({"a": [1, 2]}, "a", "b") is None
    assert metrics._at({"a": {"b": 2.5}}, "a", "b") == 2.5


def test_figures_reads_each_from_its_key_and_the_real_rows_from_the_older_name_too():
    older = {"trainable_params": 294912, "total_params": 124734720, "best": {"epoch": 3, "dev": 0.41},
             "wall_s": 812.5, "data": {"train": 143, "train_synthetic": 57}}
    assert metrics.figures(older) == {"trainable_params": 294912, "total_params": 124734720, "best_epoch": 3,
                                      "wall_s": 812.5, "train_real": 143, "train_synthetic": 57}
    newer = {**older, "data": {"train_real": 120, "train": 177, "train_synthetic": 0}}
    assert metrics.figures(newer)["train_real"] == 120 and metrics.figures(newer)["train_synthetic"] == 0
    assert metrics.figures({}) == dict.fromkeys(("trainable_params", "total_params", "best_epoch", "wall_s",
                                                 "train_real", "train_synthetic"))


def test_teacher_summary_gives_no_rate_for_a_teacher_that_kept_nothing(monkeypatch, tmp_path):
    import distill.summary

    summary = {"requests": 6, "kept": 0, "perfect": 0, "rejected": {"lines": 6}, "cost_usd": 0.0123,
               "tokens": {"input": 900, "output": 2400}, "perfect_rate": 0.0, "perfect_ci95": [0.0, 0.39]}
    monkeypatch.setattr(distill.summary, "read_summary", lambda path: summary)
    row = metrics.teacher_summary(tmp_path / "t.jsonl")
    assert row == {"requests": 6, "kept": 0, "perfect": 0, "rejected": {"lines": 6}, "cost_usd": 0.0123,
                   "tokens_input": 900, "tokens_output": 2400, "tokens_thinking": None}
    monkeypatch.setattr(distill.summary, "read_summary", lambda path: {**summary, "kept": 5, "perfect": 2,
                                                                       "perfect_rate": 0.4,
                                                                       "perfect_ci95": [0.1176, 0.7693]})
    row = metrics.teacher_summary(tmp_path / "t.jsonl")
    assert (row["perfect_rate"], row["perfect_low"], row["perfect_high"]) == (0.4, 0.1176, 0.7693)


# ---------------------------------------------------------------------------------------------- seeds -> point

def test_one_seed_without_recorded_bounds_pools_to_nan_bounds_and_keeps_its_n():
    got = metrics.pool([{"dev_x": 0.7125, "dev_x_n": 12}], "dev_x", "interval")
    assert same(got, {"dev_x": 0.7125, "dev_x_low": NAN, "dev_x_high": NAN, "dev_x_seeds": 1, "dev_x_n": 12})
    assert metrics.format_measure(got, "dev_x") == "0.713"  # no bounds: the point alone
    assert metrics.pool([{"dev_x": NAN}, {}], "dev_x", "interval") == {}


def test_joined_figures_are_the_distinct_values_sorted_with_a_slash():
    rows = [{"compute": "fp32"}, {"compute": "bf16"}, {"compute": "fp32"}, {"compute": None}]
    assert metrics.pool(rows, "compute", "join") == {"compute": "bf16 / fp32"}
    assert metrics.pool([{}], "compute", "join") == {"compute": None}
    assert metrics.pool([{"x": 3.0}, {"x": 9.5}, {"x": 4.0}], "x", "max") == {"x": 9.5}
    assert metrics.pool([{"x": 3.0}, {"x": 9.5}, {"x": 4.0}], "x", "first") == {"x": 3.0}
    assert metrics.pool([{"x": 3.0}, {"x": 9.5}, {"x": 4.0}], "x", "mean") == {"x": pytest.approx(16.5 / 3)}


def test_the_setting_is_the_columns_before_seed_but_the_sweep_and_run_names():
    rows = [{"sweep": "lora-rank", "run": f"r{rank}-s{seed}", "rank": rank, "seed": seed, "status": "done",
             "metric": "chrf", "dev_score": 40.0 + rank + seed, "ci_low": NAN, "ci_high": NAN}
            for rank in (4, 8) for seed in (1, 2, 3)]
    points = metrics.group_seeds(rows)
    assert [(p["rank"], p["seeds"]) for p in points] == [(4, 3), (8, 3)]
    assert all("sweep" not in p and "run" not in p for p in points)
    assert [p["score"] for p in points] == [pytest.approx(46.0), pytest.approx(50.0)]


def seed_rows(dev: list[float], nll: list[float]) -> list[dict]:
    return [{"rank": 8, "seed": i, "status": "done", "metric": "accuracy", "dev_score": d, "ci_low": d - 0.05,
             "ci_high": d + 0.04, "n_dev": 40, "test_score": d - 0.01, "test_low": d - 0.07, "test_high": d + 0.03,
             "n_test": 40, "dev_nll": v, "dev_nll_low": v - 0.2, "dev_nll_high": v + 0.3, "dev_nll_n": 40,
             "dev_copy_train_longest_max": 5 + i, "compute": "bf16" if i % 2 else "fp32"}
            for i, (d, v) in enumerate(zip(dev, nll))]


# Exact binary fractions: every mean and sum is exact, so a reordering cannot move a cell by a rounding.
SCORES = st.lists(st.integers(0, 4096).map(lambda k: k / 4096), min_size=2, max_size=6)


@settings(max_examples=40, deadline=None)
@given(SCORES, st.randoms(use_true_random=False))
def test_permuting_the_seeds_changes_no_pooled_cell(dev, rnd):
    nll = [1 + 3 * d for d in reversed(dev)]
    rows = seed_rows(dev, nll)
    shuffled = rows[:]
    rnd.shuffle(shuffled)
    (a,), (b,) = metrics.group_seeds(rows, ["rank"]), metrics.group_seeds(shuffled, ["rank"])
    for prefix in ("", "test_"):
        assert metrics.format_score(a, prefix) == metrics.format_score(b, prefix)
    for key in ("dev_nll", "dev_copy_train_longest_max"):
        assert metrics.format_measure(a, key) == metrics.format_measure(b, key)
    assert a["compute"] == b["compute"] and a["std"] == pytest.approx(b["std"])


@settings(max_examples=40, deadline=None)
@given(SCORES, st.sampled_from([0.25, 3.0, 100.0]))
def test_scaling_every_seeds_score_scales_the_mean_its_spread_and_its_interval(dev, c):
    nll = [2 + d for d in dev]
    (a,) = metrics.group_seeds(seed_rows(dev, nll), ["rank"])
    (b,) = metrics.group_seeds([{**r, "dev_score": c * r["dev_score"], "dev_nll": c * r["dev_nll"]}
                                for r in seed_rows(dev, nll)], ["rank"])
    for k in ("score", "low", "high", "std", "dev_nll", "dev_nll_low", "dev_nll_high"):
        assert b[k] == pytest.approx(c * a[k], abs=1e-9), k
    assert a["low"] <= a["score"] <= a["high"] and a["dev_nll_low"] <= a["dev_nll"] <= a["dev_nll_high"]


# ---------------------------------------------------------------------------------------------- cells

def test_plain_cells():
    assert (metrics._fmt(True), metrics._fmt(False)) == ("yes", "no")
    assert metrics._fmt(1000) == "1,000" and metrics._fmt(999) == "999" and metrics._fmt(124734720) == "124,734,720"
    assert metrics._fmt(1000.0) == "1,000" and metrics._fmt(1000.5) == "1000.500"
    assert metrics._fmt(2.0) == "2.000" and metrics._fmt(0.12345) == "0.123" and metrics._fmt(-1234.0) == "-1,234"
    assert metrics._fmt("fp32") == "fp32" and metrics._fmt(None) == "—" and metrics._fmt(NAN) == "—"


def test_a_rate_in_percent_rounds_each_bound_and_holds_at_any_n():
    assert metrics._percent({"rate": 0.6, "low": 0.4535, "high": 0.7655}, 12) == "60 [45, 77] n=12"
    assert metrics._percent({"rate": 1.0, "low": 0.2065, "high": 1.0}, 1) == "100 [21, 100] n=1"  # Wilson, n = 1
    assert metrics._percent({"rate": 0.85, "low": 0.66, "high": 0.95}) == "85 [66, 95]"


def test_a_measure_in_percent_scales_both_bounds_and_shows_the_seeds_it_pools():
    point = {"dev_novel": 0.85, "dev_novel_low": 0.66, "dev_novel_high": 0.95, "dev_novel_n": 12}
    assert metrics.format_measure(point, "dev_novel", percent=True, min_n=1) == "85 [66, 95] n=12"
    assert metrics.format_measure({"dev_novel": 0.85}, "dev_novel", percent=True) == "85"  # no bounds recorded
    three = {**point, "dev_novel_seeds": 3}
    assert metrics.format_measure(three, "dev_novel", percent=True, min_n=1) == "85 [66, 95] (3 seeds, n=12 each)"
    assert metrics.format_measure({"dev_nll": 3.25, "dev_nll_low": 3.0, "dev_nll_high": 3.5, "dev_nll_seeds": 2},
                                  "dev_nll") == "3.250 [3.000, 3.500] (2 seeds)"
    assert metrics.format_measure({"dev_novel": None}, "dev_novel") == "—"
    assert metrics.format_measure({}, "dev_novel", percent=True) == "—"
    assert metrics.FORM_METRICS[3].cell({"test_perfect": 0.125, "test_perfect_low": 0.0224,
                                         "test_perfect_high": 0.4709, "test_perfect_n": 8}, "test") \
        == "12 [2, 47] n=8"


def test_a_declared_figure_shows_its_own_digits_and_a_wilson_rate_an_interval_at_any_n():
    nll, perfect = metrics.SONNET_METRICS[0], metrics.FORM_METRICS[3]
    point = {"dev_nll": 3.41725, "dev_nll_low": 3.2051, "dev_nll_high": 3.6633, "dev_nll_n": 12,
             "test_nll": 3.9021, "test_nll_low": 3.5, "test_nll_high": 4.25, "test_nll_n": 5,
             "dev_perfect": 1.0, "dev_perfect_low": 0.2066, "dev_perfect_high": 1.0, "dev_perfect_n": 1,
             "test_perfect": 0.4, "test_perfect_low": 0.1176, "test_perfect_high": 0.7693, "test_perfect_n": 5}
    assert nll.cell(point) == "3.417 [3.205, 3.663] n=12"
    assert nll.cell(point, "test") == "3.902 (n=5, too few for an interval)"  # a bootstrap interval needs 8
    assert perfect.cell(point) == "100 [21, 100] n=1"
    assert perfect.cell(point, "test") == "40 [12, 77] n=5"


def test_a_score_cell_says_no_interval_for_missing_data_only_for_one_seed_with_enough_examples():
    one = {"metric": "accuracy", "seeds": 1, "score": 0.7125, "low": NAN, "high": NAN, "n": 8,
           "data_missing": "/data/gone"}
    assert metrics.format_score(one) == "0.713 (no CI: data not found)"  # n = MIN_INTERVAL_N: an interval was due
    assert metrics.format_score({**one, "n": 7}) == "0.713 (n=7, too few for an interval)"
    assert metrics.format_score({**one, "low": 0.61, "high": 0.8}) == "0.713 [0.610, 0.800] n=8"
    three = {**one, "seeds": 3, "low": 0.6875, "high": 0.7375}
    assert metrics.format_score(three) == "0.713 [0.688, 0.738] (3 seeds, n=8 each)"
    assert metrics.format_score({"metric": "accuracy", "score": 0.5}) == "—"  # no seed finished
    assert metrics.format_score({"metric": "chrf", "seeds": 0}) == "—"


def test_scored_cell_shows_a_dash_for_a_split_without_the_figure():
    point = {"dev_nll_scored": None, "test_nll_scored": 0.9876, "test_nll_in_view": 1}
    assert metrics.scored_cell(point) == "— / 98.8% (100%)"


def test_the_interval_name_counts_seeds_only_where_a_point_pools_several():
    assert metrics.interval_name([{"seeds": 1}, {}]) == "[95% CI]"
    assert metrics.interval_name([{}, {"seeds": 2}]) == "[mean over seeds, 95% t-interval across seeds]"


def t95(values: list[float]) -> tuple[float, float, float]:
    """The textbook 95% t-interval of a mean (scipy's quantile), worked out apart from the code."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def test_a_difference_over_seeds_is_the_signed_mean_with_its_t_interval_and_each_seeds_tests():
    exact = McNemar(5, 1, 0.21875, "exact binomial")
    chi = McNemar(30, 14, 0.0239, "chi-square, continuity-corrected")
    diffs = [Interval(0.0412, 0.0101, 0.0733, 40, 0.0312, exact), Interval(0.0187, -0.0122, 0.0498, 40, None, chi),
             Interval(0.0655, 0.0301, 0.0987, 40, 0.00417, None)]
    mean, low, high = t95([0.0412, 0.0187, 0.0655])  # 0.0418 [-0.0163, 0.0999]
    assert (f"{mean:+.3f}", f"{low:+.3f}", f"{high:+.3f}") == ("+0.042", "-0.016", "+0.100")
    assert metrics.format_difference(diffs, 3) == (
        "+0.042 [-0.016, +0.100] (3 seeds, n=40 each; per seed: sign-flip p=0.0312, McNemar p=0.219 (exact "
        "binomial; 5 vs 1 discordant) / sign-flip p=—, McNemar p=0.0239 (chi-square with continuity correction; "
        "30 vs 14 discordant) / sign-flip p=0.00417)")
    two = [Interval(-1.5, -2.9, -0.2, 12, 0.0156), Interval(-0.75, -2.1, 0.4, 12, 0.274)]
    mean, low, high = t95([-1.5, -0.75])  # -1.125 [-5.89, +3.64]: 12.706 * 0.375
    assert metrics.format_difference(two, 2) == (f"{mean:+.2f} [{low:+.2f}, {high:+.2f}] (2 seeds, n=12 each; per "
                                                 "seed: sign-flip p=0.0156 / sign-flip p=0.274)")
    assert metrics.format_difference(two, 2).startswith("-1.12 [-5.89, +3.64] (2 seeds")

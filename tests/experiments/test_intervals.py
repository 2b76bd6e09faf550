"""The small-n intervals every table prints (bootstrap-t, `minigpt2.metrics.studentized_interval` through
`experiments.stats`), the sign-flip p-value of paired arms and McNemar's test:

- coverage by simulation: 95% intervals on 12 draws from known distributions (a skewed mean, NLL-like and chrF-like
  ratio-of-sums data, a paired accuracy difference) hold the truth at about 95%, where percentile bounds fall short;
- the interval pinned against an independent bootstrap-t (sacrebleu rescoring each resample and each jackknife
  subset), McNemar against scipy's binomtest and chi-square, the sign-flip p-value against the exact binomial;
- Hypothesis properties: an interval holds its point, low <= high, it moves with a shift or scale of the data,
  and swapping the arms of a difference negates it;
- the tables: n beside every interval, none below MIN_INTERVAL_N, and the precision sweep's paired classification
  differences, where a paired comparison finds what an unpaired one does not.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sacrebleu.metrics import CHRF
from scipy import stats as sps

from experiments import metrics, report, tables
from experiments.sweeps import ZERO_SHOT_QUORA, SweepOptions, build_sweep
from experiments.stats import (BOUNDS, STATISTICS, ExampleScores, Interval, bootstrap_chrf, chrf_of_sums,
                               chrf_statistics, paired_difference)
from experiments.sweeps import TINY_DATA
from minigpt2.metrics import (MIN_INTERVAL_N, bootstrap_interval, mcnemar, sign_flip_p, studentized_interval)

PRECISION = build_sweep("precision", SweepOptions())

RATIO = lambda sums, m: sums[0][..., 0].sum(-1) / sums[0][..., 1].sum(-1)  # noqa: E731


def scores(metric: str, values: np.ndarray) -> ExampleScores:
    return ExampleScores(metric, tuple(map(str, range(len(values)))), values)


# ---------------------------------------------------------------------------------------------- coverage

def coverage(draw, truth: float, sims: int, seed: int, n: int = 12, samples: int = 499) -> tuple[float, float]:
    """Share of `sims` data sets of n rows (k = 2: numerator, denominator) whose bootstrap-t and percentile 95%
    intervals of the ratio of sums hold `truth`."""
    rng = np.random.default_rng(seed)
    hit_t = hit_p = 0
    for s in range(sims):
        v = draw(rng, n)
        low, high = studentized_interval([v[:, None]], RATIO, samples, seed=s)
        p_low, p_high = bootstrap_interval(lambda i: float(v[i, 0].sum() / v[i, 1].sum()), n, samples, seed=s)
        hit_t += low <= truth <= high
        hit_p += p_low <= truth <= p_high
    return hit_t / sims, hit_p / sims


def nll_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per sonnet (summed NLL, tokens): 60-200 tokens, the per-token NLL lognormal and lower for long sonnets."""
    tokens = rng.integers(60, 200, n).astype(float)
    per_token = rng.lognormal(np.log(3) - 0.045 + (130 - tokens) / 300, 0.3)
    return np.stack([per_token * tokens, tokens], 1)


def test_bootstrap_t_covers_at_the_stated_rate_on_12_ratio_of_sums_draws():
    """600 data sets of 12 sonnets: the bootstrap-t interval holds the population NLL 95% +- 2.5% of the time
    (the binomial sd at 600 is 0.9%); percentile bounds on the same data hold it less often (about 90%)."""
    big = nll_like(np.random.default_rng(0), 1_000_000)
    truth = big[:, 0].sum() / big[:, 1].sum()
    boot_t, percentile = coverage(nll_like, truth, sims=600, seed=1)
    assert boot_t == pytest.approx(0.95, abs=0.025)
    assert percentile < boot_t - 0.02


def test_bootstrap_t_covers_a_skewed_mean_at_n_12():
    """Exponential draws (skewness 2), mean 1: bootstrap-t near 95%, percentile well below."""
    draw = lambda rng, n: np.stack([rng.exponential(1.0, n), np.ones(n)], 1)  # noqa: E731
    boot_t, percentile = coverage(draw, 1.0, sims=600, seed=2)
    assert boot_t == pytest.approx(0.95, abs=0.03)
    assert percentile < boot_t - 0.03


def chrf_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per sonnet sacrebleu-shaped chrF statistics (hyp, ref, match for 6 orders) of a noisy copy."""
    length = rng.integers(400, 700, n)
    quality = rng.beta(6, 4, n)
    out = np.zeros((n, 18))
    for order in range(6):
        hyp, ref = length - order, (length * rng.uniform(0.9, 1.1, n)).astype(int) - order
        out[:, 3 * order], out[:, 3 * order + 1] = hyp, ref
        out[:, 3 * order + 2] = rng.binomial(np.minimum(hyp, ref), quality ** (1 + order / 3))
    return out


def test_bootstrap_t_covers_corpus_chrf_of_12_sonnets():
    big = chrf_like(np.random.default_rng(0), 400_000)
    truth = float(chrf_of_sums(big.sum(0)))
    rng = np.random.default_rng(3)
    hits = 0
    for s in range(400):
        iv = scores("chrf", chrf_like(rng, 12)[:, None]).interval(499, seed=s)
        hits += iv.low <= truth <= iv.high
    assert hits / 400 == pytest.approx(0.95, abs=0.03)


# ---------------------------------------------------------------------------------------------- pinned values

def test_chrf_of_sums_is_sacrebleus_score_from_statistics():
    rng = np.random.default_rng(4)
    for _ in range(300):
        s = rng.integers(0, 40, 18).astype(float)
        s[2::3] = np.minimum(s[2::3], np.minimum(s[0::3], s[1::3]))
        s[rng.integers(0, 18, 4)] = 0  # orders without n-grams on one side
        assert float(chrf_of_sums(s)) == pytest.approx(CHRF()._compute_score_from_stats(list(s)).score, abs=1e-9)


def test_the_chrf_interval_is_an_independent_bootstrap_t_of_sacrebleu_scores():
    """Recomputed here from sacrebleu's own corpus chrF of every resample and of every jackknife subset, on the
    resample indices the library draws from its seed (numpy's generator: first the (B, n) example draws)."""
    rng = np.random.default_rng(5)
    words = "shall i compare thee to a summer day thou art more lovely and temperate rough winds".split()
    refs = [" ".join(rng.choice(words, 14)) for _ in range(10)]
    hyps = [" ".join(w if rng.random() < 0.6 else rng.choice(words) for w in r.split()) for r in refs]
    b, n = 60, len(refs)
    iv = bootstrap_chrf(hyps, refs, samples=b, seed=9)
    chrf = lambda idx: CHRF().corpus_score([hyps[i] for i in idx], [[refs[i] for i in idx]]).score  # noqa: E731

    def se(idx: list[int]) -> float:
        loo = np.array([chrf(idx[:j] + idx[j + 1:]) for j in range(len(idx))])
        return math.sqrt((len(idx) - 1) / len(idx) * ((loo - loo.mean()) ** 2).sum())

    theta, se0 = chrf(list(range(n))), se(list(range(n)))
    draws = np.random.default_rng(9).integers(0, n, size=(b, n))
    t = np.sort([(chrf(list(row)) - theta) / se(list(row)) for row in draws])
    k = math.floor((b + 1) * 0.025)  # the k-th smallest and largest t: 1 of 60
    assert iv.value == pytest.approx(theta, abs=1e-9)
    assert iv.low == pytest.approx(theta - t[b - k] * se0, abs=1e-6)
    assert iv.high == pytest.approx(theta - t[k - 1] * se0, abs=1e-6)


@pytest.mark.parametrize("a_only,b_only", [(0, 0), (1, 6), (9, 3), (12, 12), (30, 14), (4, 40)])
def test_mcnemar_is_scipys_exact_binomial_or_continuity_corrected_chi_square(a_only, b_only):
    a = [1] * a_only + [0] * b_only + [1] * 20 + [0] * 7
    b = [0] * a_only + [1] * b_only + [1] * 20 + [0] * 7
    m = mcnemar(a, b)
    assert (m.a_only, m.b_only) == (a_only, b_only)
    d = a_only + b_only
    if d < 25:
        assert m.method == "exact binomial"
        assert m.p == pytest.approx(sps.binomtest(a_only, d, 0.5).pvalue if d else 1.0, rel=1e-12)
    else:
        assert m.method == "chi-square, continuity-corrected"
        assert m.p == pytest.approx(sps.chi2.sf((abs(a_only - b_only) - 1) ** 2 / d, 1), rel=1e-9)


def test_the_sign_flip_p_value_of_an_accuracy_difference_is_the_exact_binomial_on_discordant_rows():
    a = np.array([1, 1, 1, 1, 1, 0, 1, 0, 1, 1, 0, 1], dtype=float)
    b = np.array([0, 0, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1], dtype=float)  # 4 rows only a, 1 only b
    p = sign_flip_p(a[:, None, None], b[:, None, None], STATISTICS["accuracy"])
    assert p == pytest.approx(sps.binomtest(4, 5, 0.5).pvalue, rel=1e-12)


def test_a_paired_difference_finds_what_unpaired_intervals_miss():
    """100 rows: 60 both right, 10 only the arm, 0 only the reference, 30 both wrong. Accuracy 0.70 vs 0.60:
    the marginal intervals overlap and an unpaired test (Fisher, scipy) says p ~ 0.18; paired, the difference
    +0.10 excludes 0, and McNemar (exact: 10 discordant rows all one way) gives p = 2 / 2**10."""
    arm = np.array([1] * 60 + [1] * 10 + [0] * 30, dtype=float)
    ref = np.array([1] * 60 + [0] * 10 + [0] * 30, dtype=float)
    a, r = scores("accuracy", arm[:, None, None]), scores("accuracy", ref[:, None, None])
    d = paired_difference(a, r, samples=2000)
    assert d.value == pytest.approx(0.10) and d.n == 100 and d.low > 0
    assert d.mcnemar.p == pytest.approx(sps.binomtest(10, 10, 0.5).pvalue) == pytest.approx(2 / 2 ** 10)
    assert d.p == pytest.approx(d.mcnemar.p, rel=0.5)  # 9,999 random flips estimate the same exact p
    ci = sps.ttest_rel(arm, ref).confidence_interval(0.95)  # the paired t-interval (scipy) is close
    assert d.low == pytest.approx(ci.low, abs=0.02) and d.high == pytest.approx(ci.high, abs=0.02)
    ia, ir = a.interval(2000), r.interval(2000)
    assert ir.high > ia.low  # unpaired: the two intervals overlap
    assert sps.fisher_exact([[70, 30], [60, 40]]).pvalue > 0.1


# ---------------------------------------------------------------------------------------------- properties

rows12 = st.lists(st.tuples(st.floats(0.0, 50.0), st.floats(1.0, 20.0)), min_size=MIN_INTERVAL_N, max_size=20)


@settings(max_examples=40, deadline=None)
@given(rows12, st.integers(0, 2 ** 16))
def test_a_ratio_interval_holds_its_point_and_scales_with_the_data(rows, seed):
    v = np.array(rows)[:, None]
    low, high = studentized_interval([v], RATIO, 200, seed=seed, bounds=(0.0, math.inf))
    point = float(RATIO([v.sum(0)], len(v)))
    assert low <= point + 1e-9 and point <= high + 1e-9 and low <= high
    scaled = v * np.array([3.0, 1.0])  # numerators x 3: the ratio and its interval x 3
    s_low, s_high = studentized_interval([scaled], RATIO, 200, seed=seed, bounds=(0.0, math.inf))
    assert (s_low, s_high) == pytest.approx((3 * low, 3 * high), rel=1e-6, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-40, 40).map(lambda i: i / 8), min_size=MIN_INTERVAL_N, max_size=30),
       st.integers(-800, 800).map(lambda i: i / 8))
def test_a_mean_interval_shifts_with_the_data(values, shift):
    """Multiples of 1/8: sums exact, so a shift cannot round a spread away ([0] * 7 + [1e-72] plus 1 is flat)."""
    mean = lambda sums, m: sums[0][..., 0].mean(-1) / m  # noqa: E731
    v = np.array(values)[:, None, None]
    low, high = studentized_interval([v], mean, 200, seed=1)
    s_low, s_high = studentized_interval([v + shift], mean, 200, seed=1)
    assert (s_low, s_high) == pytest.approx((low + shift, high + shift), abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=MIN_INTERVAL_N, max_size=40))
def test_swapping_the_arms_negates_the_difference_and_keeps_its_tests(pairs):
    arm = np.array([[[float(x)]] for x, _ in pairs])
    ref = np.array([[[float(y)]] for _, y in pairs])
    ab = paired_difference(scores("accuracy", arm), scores("accuracy", ref), samples=199)
    ba = paired_difference(scores("accuracy", ref), scores("accuracy", arm), samples=199)
    assert ab.low <= ab.value <= ab.high and -1 <= ab.low and ab.high <= 1
    assert (ba.value, ba.low, ba.high) == pytest.approx((-ab.value, -ab.high, -ab.low), abs=1e-12)
    assert ba.p == pytest.approx(ab.p) and ba.mcnemar.p == ab.mcnemar.p
    assert (ba.mcnemar.a_only, ba.mcnemar.b_only) == (ab.mcnemar.b_only, ab.mcnemar.a_only)


def test_below_the_minimum_n_there_is_no_interval():
    v = np.ones((MIN_INTERVAL_N - 1, 1, 2))
    assert all(math.isnan(x) for x in studentized_interval([v], RATIO))
    two = scores("nll", np.array([[[2.0, 1.0]], [[4.0, 2.0]]]))
    iv = paired_difference(two, scores("nll", np.array([[[1.0, 1.0]], [[3.0, 2.0]]])))
    assert math.isnan(iv.low) and iv.n == 2 and iv.p == pytest.approx(0.5)  # |d| as large in 2 of the 4 swaps
    assert BOUNDS["accuracy"] == (0.0, 1.0)


# ---------------------------------------------------------------------------------------------- the tables

def test_every_interval_is_printed_with_its_n_and_none_below_the_minimum():
    point = {"seeds": 1, "metric": "chrf", "score": 41.9, "low": 40.1, "high": 43.6, "n": 12}
    assert metrics.format_score(point) == "41.90 [40.10, 43.60] n=12"
    few = {**point, "low": math.nan, "high": math.nan, "n": 2}
    assert metrics.format_score(few) == "41.90 (n=2, too few for an interval)"
    stale = {**point, "low": 41.0, "high": 42.0, "n": 3}  # an interval recorded by an older run: not shown
    assert metrics.format_score(stale) == "41.90 (n=3, too few for an interval)"
    seeds = {**point, "seeds": 3}
    assert metrics.format_score(seeds) == "41.90 [40.10, 43.60] (3 seeds, n=12 each)"
    nll = {"dev_nll": 3.2, "dev_nll_low": 3.1, "dev_nll_high": 3.35, "dev_nll_n": 12}
    assert metrics.format_measure(nll, "dev_nll") == "3.200 [3.100, 3.350] n=12"
    rate = {"dev_perfect": 0.5, "dev_perfect_low": 0.15, "dev_perfect_high": 0.85, "dev_perfect_n": 4}
    assert metrics.format_measure(rate, "dev_perfect", percent=True, min_n=1) == "50 [15, 85] n=4"  # Wilson


def test_a_difference_cell_names_its_interval_n_and_tests():
    d = Interval(0.1, 0.03, 0.17, 100, 0.0021, mcnemar([1] * 10 + [0] * 90, [0] * 100))
    assert metrics.format_difference([d], 3) == ("+0.100 [+0.030, +0.170] n=100, sign-flip p=0.0021, McNemar "
                                                "p=0.00195 (exact binomial; 10 vs 0 discordant)")
    chrf = Interval(-1.2, -3.1, 0.6, 12, 0.19)
    assert metrics.format_difference([chrf], 2) == "-1.20 [-3.10, +0.60] n=12, sign-flip p=0.19"
    tiny = Interval(-1.2, math.nan, math.nan, 2, 0.5)
    assert metrics.format_difference([tiny], 2) == "-1.20 (n=2, too few for an interval), sign-flip p=0.5"


def fake_zero_shot_run(root, name: str, precision: str, correct: list[bool], stage: str = "fine-tuned") -> dict:
    """A finished precision-sweep run folder with a zero-shot Quora file scored on the tiny quora dev rows."""
    from course.formats import label_format

    folder = TINY_DATA / "tasks"
    labels = label_format("quora").split_labels(folder, "dev")
    ids = list(labels)[:len(correct)]
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"settings": {"data": {"task": "sst", "data_dir": str(folder)}, "eval": {"samples": 1}}}))
    label_format("quora").write_predictions(run / "zs.csv", ids,
                                            [labels[k] if ok else 1 - labels[k] for k, ok in zip(ids, correct)])
    (run / ZERO_SHOT_QUORA.output).write_text(json.dumps(
        {"task": "quora", "predictions": "zs.csv", "accuracy": sum(correct) / len(correct), "examples": len(ids)}))
    row = {"run": name, "status": "done", "task": "sst", "precision": precision, "qaft": precision != "fp32",
           "stage": stage, "seed": 1, "run_dir": str(run), "compute": "fp32"}
    row["zero_shot"] = report.zero_shot_row(run, ZERO_SHOT_QUORA.output, samples=300)
    return row


def test_the_zero_shot_block_pairs_each_model_with_fp32_on_the_same_rows(tmp_path):
    """The 8 tiny Quora dev rows: fp32 right on 7, int8 QAFT right on 3 of those (4 discordant rows, all fp32's):
    Δ = 3/8 - 7/8 with McNemar's exact p = P(0 of 4) * 2 (scipy's binomtest)."""
    fp32 = fake_zero_shot_run(tmp_path, "sst-fp32", "fp32", [True] * 7 + [False])
    qaft = fake_zero_shot_run(tmp_path, "sst-int8-qaft", "int8", [True] * 3 + [False] * 5)
    block = "\n".join(tables.zero_shot_block([fp32, qaft], PRECISION.references[0], ZERO_SHOT_QUORA.output, samples=300))
    line = next(ln for ln in block.splitlines() if "| int8 |" in ln)
    want = sps.binomtest(0, 4, 0.5).pvalue
    assert f"| {3 / 8 - 7 / 8:+.3f} [" in line and "] n=8, sign-flip p=0.125" in line  # 2 of 16 swaps
    assert f"McNemar p={want:.3g} (exact binomial; 0 vs 4 discordant)" in line
    assert f"| {3 / 8:.3f} [" in line and "] n=8 |" in line
    assert "— (the reference)" in next(ln for ln in block.splitlines() if "| fp32 |" in ln)

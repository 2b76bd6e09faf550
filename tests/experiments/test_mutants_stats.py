"""Tests written against the survivors of `python tools/mutate.py --auto` on minigpt2/metrics.py and
experiments/stats.py (docs/testing.md, "Automated mutants"): each pins a figure a user reads on inputs where the
surviving one-line slip gives another number, the expected value computed here independently.

The bootstrap-t interval is recomputed by `plain_bootstrap_t`: the textbook algorithm written out with loops
over resamples and left-out rows, on the resample indices the library draws from its seed (numpy's generator:
per chunk of resamples, first the (B, n) example draws, then per arm the (B, n, s) draws within each example).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from experiments import stats as xstats
from experiments.stats import ExampleScores, mean_std, paired_difference, t_interval
from minigpt2 import metrics
from minigpt2.metrics import mcnemar, sign_flip_p, studentized_interval


def ratio(rows: np.ndarray) -> float:
    """Token-weighted ratio of rows (m, s, 2): summed numerators over summed denominators."""
    return float(rows[..., 0].sum() / rows[..., 1].sum())


def jackknife_se(values: list[float]) -> float:
    m = len(values)
    mean = sum(values) / m
    return math.sqrt((m - 1) / m * sum((v - mean) ** 2 for v in values))


def plain_bootstrap_t(arms: list[np.ndarray], f, samples: int, seed: int = 0, confidence: float = 0.95,
                      bounds: tuple[float, float] = (-math.inf, math.inf), chunk: int | None = None
                      ) -> tuple[float, float]:
    """The bootstrap-t interval of f(rows of each arm), resampling examples (and draws within each), with the
    jackknife standard error over the rows of the data and of every resample; `chunk` resamples drawn at once."""
    n = len(arms[0])
    loo = lambda rows: [f([r[[x for x in range(len(r)) if x != j]] for r in rows]) for j in range(n)]  # noqa
    theta, se0 = f(arms), jackknife_se(loo(arms))
    rng = np.random.default_rng(seed)
    ts: list[float] = []
    for start in range(0, samples, chunk or samples):
        count = min(chunk or samples, samples - start)
        i = rng.integers(0, n, size=(count, n))
        j = [rng.integers(0, a.shape[1], size=(count, n, a.shape[1])) for a in arms]
        for b in range(count):
            rows = [a[i[b][:, None], jj[b]] for a, jj in zip(arms, j)]
            star, se = f(rows), jackknife_se(loo(rows))
            ts.append((star - theta) / se if se > 0 else (0.0 if star == theta else math.copysign(math.inf,
                                                                                                   star - theta)))
    ts.sort()
    k = math.floor((samples + 1) * (1 - confidence) / 2 + 1e-9)
    t_lo, t_hi = (ts[k - 1], ts[samples - k]) if k >= 1 else (-math.inf, math.inf)
    low = theta if se0 == 0 else theta - t_hi * se0
    high = theta if se0 == 0 else theta - t_lo * se0
    return min(max(low, bounds[0]), theta), max(min(high, bounds[1]), theta)


def nll_rows(n: int, seed: int, s: int = 1) -> np.ndarray:
    """(n, s, 2) per-sonnet (summed NLL, tokens): lengths 20-120 tokens, per-token NLL 1.5-4.5."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(20, 120, size=(n, s)).astype(float)
    return np.stack([tokens * rng.uniform(1.5, 4.5, size=(n, s)), tokens], -1)


RATIO_STAT = lambda sums, m: sums[0][..., 0].sum(-1) / sums[0][..., 1].sum(-1)  # noqa: E731


# ---------------------------------------------------------------------------------------------- bootstrap-t

@pytest.mark.parametrize("n, samples, confidence, seed", [(9, 79, 0.95, 3), (12, 120, 0.90, 7), (8, 39, 0.95, 1),
                                                          (10, 78, 0.95, 5)])  # k = floor(79 / 40) = 1, not 2
def test_the_bootstrap_t_interval_of_a_ratio_is_the_textbook_one(n, samples, confidence, seed):
    v = nll_rows(n, seed)
    got = studentized_interval([v], RATIO_STAT, samples, confidence, seed + 1, bounds=(0.0, math.inf))
    want = plain_bootstrap_t([v], lambda rows: ratio(rows[0]), samples, seed + 1, confidence, (0.0, math.inf))
    assert got == pytest.approx(want, rel=1e-10)
    assert got[0] < ratio(v) < got[1]


def test_a_paired_bootstrap_t_with_two_draws_per_example_is_the_textbook_one():
    """Two arms, 2 draws per example each: the draws within an example are resampled arm by arm."""
    a, b = nll_rows(10, 4, s=2), nll_rows(10, 5, s=2)
    diff = lambda sums, m: RATIO_STAT(sums[:1], m) - RATIO_STAT(sums[1:], m)  # noqa: E731
    got = studentized_interval([a, b], diff, 99, 0.95, 2)
    want = plain_bootstrap_t([a, b], lambda rows: ratio(rows[0]) - ratio(rows[1]), 99, 2)
    assert got == pytest.approx(want, rel=1e-10)


def test_resamples_drawn_in_chunks_are_the_textbook_ones_drawn_in_the_same_chunks(monkeypatch):
    """Resamples are drawn CHUNK_VALUES floats at a time: here 9 rows of 2 draws of 2 figures, so 27 resamples a
    chunk (the draws within examples follow each chunk's example draws, so the chunking shows in the stream)."""
    v = nll_rows(9, 8, s=2)
    monkeypatch.setattr(metrics, "CHUNK_VALUES", 1000)
    got = studentized_interval([v], RATIO_STAT, 150, 0.95, 6)
    want = plain_bootstrap_t([v], lambda rows: ratio(rows[0]), 150, 6, chunk=1000 // (4 * 9))
    assert got == pytest.approx(want, rel=1e-10)
    monkeypatch.setattr(metrics, "CHUNK_VALUES", 10)  # fewer than one resample's values: one at a time
    got = studentized_interval([v], RATIO_STAT, 40, 0.95, 6)
    assert got == pytest.approx(plain_bootstrap_t([v], lambda rows: ratio(rows[0]), 40, 6, chunk=1), rel=1e-10)


def test_nll_record_has_the_textbook_bootstrap_t_interval_from_eight_sonnets_on():
    from app.measures import nll_record

    v = nll_rows(8, 11)
    rec = nll_record({str(i): (float(x[0, 0]), int(x[0, 1])) for i, x in enumerate(v)}, samples=199)
    want = plain_bootstrap_t([v], lambda rows: ratio(rows[0]), 199, 0, bounds=(0.0, math.inf))
    assert (rec["low"], rec["high"]) == pytest.approx(want, rel=1e-10)
    assert rec["nll"] == pytest.approx(ratio(v), rel=1e-12) and rec["sonnets"] == 8


def test_too_few_resamples_for_the_confidence_give_the_metrics_range():
    """k = floor((B + 1)(1 - confidence) / 2) < 1: no order statistic is far enough out, so the whole range; at
    B = 19 and 90%, k is 1 exactly (20 x 0.05, though 1 - 0.9 is 0.09999999999999998 in floats)."""
    v = nll_rows(10, 2)
    assert studentized_interval([v], RATIO_STAT, 30, 0.95, 0, bounds=(0.0, math.inf)) == (0.0, math.inf)
    assert studentized_interval([v], RATIO_STAT, 30, 0.95, 0) == (-math.inf, math.inf)
    got = studentized_interval([v], RATIO_STAT, 19, 0.90, 0, bounds=(0.0, math.inf))
    assert got == pytest.approx(plain_bootstrap_t([v], lambda rows: ratio(rows[0]), 19, 0, 0.90), rel=1e-10)
    assert 0.0 < got[0] < got[1] < math.inf


def test_an_interval_is_clipped_to_the_metrics_range_but_always_holds_its_point():
    """All 10 rows right but one: resamples without the wrong row have t* = +inf, so the upper bound is the
    range's edge (1), never above it; all rows right: no spread, the point itself."""
    acc = lambda sums, m: sums[0][..., 0].mean(-1) / m  # noqa: E731
    nine = np.array([1.0] * 9 + [0.0])[:, None, None]
    low, high = studentized_interval([nine], acc, 199, bounds=(0.0, 1.0))
    assert high == 1.0 and 0.0 <= low < 0.9
    assert low == pytest.approx(plain_bootstrap_t([nine], lambda rows: rows[0].mean(), 199, 0, bounds=(0.0, 1.0))[0],
                                rel=1e-10)
    assert studentized_interval([np.ones((10, 1, 1))], acc, 199, bounds=(0.0, 1.0)) == (1.0, 1.0)
    assert studentized_interval([np.zeros((10, 1, 1))], acc, 199, bounds=(0.0, 1.0)) == (0.0, 0.0)


def test_the_jackknife_standard_error_is_the_textbook_one_and_counts_duplicates_by_weight():
    """sqrt((n - 1) / n * sum (theta_(i) - mean)^2); the interval itself does not change when se is scaled by a
    function of n alone (t* and se scale alike), so the formula is pinned here, directly."""
    loo = np.array([2.0, 3.5, 1.0, 4.0, 2.5])
    assert float(metrics._jackknife_se(loo)) == pytest.approx(jackknife_se(list(loo)), rel=1e-12)
    assert float(metrics._jackknife_se(loo)) == pytest.approx(math.sqrt(4 / 5 * 5.7), rel=1e-12)
    w = np.array([1.0, 3.0, 1.0, 2.0, 1.0])  # a resample holding rows 2 and 4 three and two times
    assert float(metrics._jackknife_se(loo, w)) == pytest.approx(jackknife_se(list(np.repeat(loo, [1, 3, 1, 2, 1]))),
                                                                  rel=1e-12)


# ---------------------------------------------------------------------------------------------- sign flips

def plain_sign_flip(a: np.ndarray, b: np.ndarray, f, seed: int = 0, flips: int = 9999) -> float:
    """Two-sided sign-flip p of f(a) - f(b): each swap pattern exchanges the swapped rows of the two arms; all
    2**n patterns up to 14 rows (hits / 2**n), else `flips` random ones ((1 + hits) / (1 + flips))."""
    n = len(a)
    observed = abs(f(a) - f(b))
    exact = n <= 14
    swaps = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1 if exact
             else np.random.default_rng(seed).integers(0, 2, size=(flips, n)))
    hits = 0
    for s in swaps:
        m = s.astype(bool).reshape((n,) + (1,) * (a.ndim - 1))
        hits += abs(f(np.where(m, b, a)) - f(np.where(m, a, b))) >= observed - 1e-9 * max(1.0, observed)
    return hits / len(swaps) if exact else (1 + hits) / (1 + flips)


def test_sign_flip_p_of_a_ratio_enumerates_every_swap_up_to_14_rows_and_draws_them_above():
    a, b = nll_rows(14, 21), nll_rows(14, 22)
    b[:, :, 0] *= 1.15  # arm b a little worse
    exact = sign_flip_p(a, b, RATIO_STAT)
    assert exact == pytest.approx(plain_sign_flip(a, b, ratio), rel=1e-12)
    assert exact * 2 ** 14 == pytest.approx(round(exact * 2 ** 14))  # a count of the 16,384 swaps
    a, b = nll_rows(16, 23), nll_rows(16, 24)
    b[:, :, 0] *= 1.1
    drawn = sign_flip_p(a, b, RATIO_STAT, flips=999)  # the default seed, 0
    assert drawn == pytest.approx(plain_sign_flip(a, b, ratio, seed=0, flips=999), rel=1e-12)
    assert drawn * 1000 == pytest.approx(round(drawn * 1000))  # (1 + hits) / (1 + 999)
    assert sign_flip_p(a, b, RATIO_STAT, seed=5, flips=999) == pytest.approx(
        plain_sign_flip(a, b, ratio, seed=5, flips=999), rel=1e-12)


def test_sign_flip_p_at_14_accuracy_rows_is_the_exact_binomial_and_flags_need_no_float_conversion():
    a = np.array([1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1], dtype=bool)
    b = np.array([0, 0, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1], dtype=bool)  # 5 rows only a, 2 only b
    acc = xstats.STATISTICS["accuracy"]
    want = sps.binomtest(5, 7, 0.5).pvalue
    assert sign_flip_p(a[:, None, None], b[:, None, None], acc) == pytest.approx(want, rel=1e-12)
    assert sign_flip_p(a[:, None, None].astype(int), b[:, None, None], acc) == pytest.approx(want, rel=1e-12)


def test_sign_flip_hits_are_counted_over_every_chunk_of_swaps(monkeypatch):
    """Swaps are taken CHUNK_VALUES // n at a time: with 4 a chunk, 2**10 swaps make 256 chunks."""
    a = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 1], dtype=float)[:, None, None]
    b = np.array([0, 1, 0, 0, 1, 0, 0, 1, 1, 1], dtype=float)[:, None, None]  # 3 rows only a, none only b
    monkeypatch.setattr(metrics, "CHUNK_VALUES", 40)
    assert sign_flip_p(a, b, xstats.STATISTICS["accuracy"]) == pytest.approx(2 / 2 ** 3, rel=1e-12)


def test_sign_flip_ties_survive_rounding_of_large_sums():
    """Six rows 29.3 better, four 29.3 worse, on figures of millions: a swap pattern is as extreme as the
    observed one unless it balances the signs, so p = 1 - C(10, 5) / 2**10; the sums round differently under
    each pattern (1e-9 apart), and only a tolerance relative to the observed difference counts those ties."""
    base = np.array([1226557.4, 1994266.2, 6364995.3, 6177516.1, 5923080.9, 4069420.4, 8977679.5, 8846682.7,
                     6484335.9, 6203674.2])
    b = base - np.array([1.0] * 6 + [-1.0] * 4) * 29.3
    mean = lambda sums, m: sums[0][..., 0].mean(-1) / m  # noqa: E731
    assert sign_flip_p(base[:, None, None], b[:, None, None], mean) == pytest.approx(1 - math.comb(10, 5) / 2 ** 10,
                                                                                     rel=1e-12)


def test_sign_flip_refuses_arms_of_different_shapes_by_name():
    with pytest.raises(ValueError, match=r"^a sign-flip test needs the same shape for both arms, not \(9, 1, 1\) and \(8, 1, 1\)$"):
        sign_flip_p(np.ones((9, 1, 1)), np.ones((8, 1, 1)), xstats.STATISTICS["accuracy"])


# ---------------------------------------------------------------------------------------------- McNemar

@pytest.mark.parametrize("a_only, b_only, method", [(17, 7, "exact binomial"), (18, 7, "chi-square, "
                                                                                     "continuity-corrected")])
def test_mcnemar_is_exact_below_25_discordant_rows_and_chi_square_from_25(a_only, b_only, method):
    a = [True] * a_only + [False] * b_only + [True] * 5
    b = [False] * a_only + [True] * b_only + [True] * 5
    m = mcnemar(a, b)
    d = a_only + b_only
    want = (sps.binomtest(a_only, d, 0.5).pvalue if d < 25 else sps.chi2.sf((abs(a_only - b_only) - 1) ** 2 / d, 1))
    assert m.method == method and m.p == pytest.approx(want, rel=1e-9)


def test_mcnemar_refuses_rows_of_different_lengths_by_count():
    with pytest.raises(ValueError, match="^3 rows for one classifier, 2 for the other$"):
        mcnemar([True] * 3, [True] * 2)


# ---------------------------------------------------------------------------------------------- experiments.stats

def test_the_accuracy_interval_passes_its_samples_confidence_and_seed_on():
    labels = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1]
    preds = [0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 1]  # 9 of 12 right
    right = np.array([float(p == y) for p, y in zip(preds, labels)])[:, None, None]
    mean = lambda rows: float(rows[0].mean())  # noqa: E731
    iv = xstats.bootstrap_accuracy(preds, labels, samples=99, confidence=0.90, seed=4)
    assert (iv.value, iv.n) == (0.75, 12)
    assert (iv.low, iv.high) == pytest.approx(plain_bootstrap_t([right], mean, 99, 4, 0.90, (0.0, 1.0)), rel=1e-10)
    default = xstats.bootstrap_accuracy(preds, labels)  # 1000 resamples, 95%, seed 0
    assert (default.low, default.high) == pytest.approx(plain_bootstrap_t([right], mean, 1000, 0, 0.95, (0.0, 1.0)),
                                                        rel=1e-10)
    with pytest.raises(ValueError, match="^12 predictions for 11 labels$"):
        xstats.bootstrap_accuracy(preds, labels[:11])
    with pytest.raises(ValueError, match="^accuracy of an empty set$"):
        xstats.bootstrap_accuracy([], [])


def test_the_majority_interval_is_that_of_always_answering_the_most_frequent_label():
    # 11 of 21 are 1: neither the smallest label nor the largest; 21 rows, so that the seed moves the bounds
    labels = [1, 0, 1, 2, 1, 0, 1, 1, 2, 1, 0, 2, 1, 0, 0, 1, 2, 1, 0, 1, 1]
    right = np.array([float(y == 1) for y in labels])[:, None, None]
    iv = xstats.majority_interval(labels, samples=99, seed=3)
    assert iv.value == pytest.approx(11 / 21) and iv.n == 21
    want = plain_bootstrap_t([right], lambda rows: float(rows[0].mean()), 99, 3, 0.95, (0.0, 1.0))
    assert (iv.low, iv.high) == pytest.approx(want, rel=1e-10)
    default = xstats.majority_interval(labels)  # 1000 resamples from seed 0
    want = plain_bootstrap_t([right], lambda rows: float(rows[0].mean()), 1000, 0, 0.95, (0.0, 1.0))
    assert (default.low, default.high) == pytest.approx(want, rel=1e-10)
    with pytest.raises(ValueError, match="^majority class of an empty set$"):
        xstats.majority_interval([])


def test_the_chrf_interval_passes_its_confidence_on():
    from sacrebleu.metrics import CHRF

    rng = np.random.default_rng(12)
    words = "when in disgrace with fortune and mens eyes i all alone beweep my outcast state".split()
    refs = [" ".join(rng.choice(words, 10)) for _ in range(9)]
    hyps = [" ".join(w if rng.random() < 0.5 else rng.choice(words) for w in r.split()) for r in refs]
    stats = xstats.chrf_statistics(hyps, refs)[:, None]
    score = lambda rows: CHRF()._compute_score_from_stats(list(rows[0].sum((0, 1)))).score  # noqa: E731
    iv = xstats.bootstrap_chrf(hyps, refs, samples=59, confidence=0.90, seed=2)
    assert iv.value == pytest.approx(CHRF().corpus_score(hyps, [refs]).score, abs=1e-9)
    assert (iv.low, iv.high) == pytest.approx(plain_bootstrap_t([stats], score, 59, 2, 0.90, (0.0, 100.0)), rel=1e-9)
    default = xstats.bootstrap_chrf(hyps, refs, samples=59)  # 95% from seed 0
    assert (default.low, default.high) == pytest.approx(plain_bootstrap_t([stats], score, 59, 0, 0.95, (0.0, 100.0)),
                                                        rel=1e-9)


@pytest.mark.parametrize("n", [2, 3, 7, 12, 30, 31, 32, 45])
def test_the_seed_t_interval_uses_students_quantile_for_its_degrees_of_freedom(n):
    """T95 to 3 decimals for 1..30 degrees of freedom (scipy's t.ppf), the normal's 1.96 beyond."""
    vals = list(np.random.default_rng(n).normal(40.0, 2.0, n))
    mean, low, high = t_interval(vals + [float("nan"), None])
    t = round(float(sps.t.ppf(0.975, n - 1)), 3) if n <= 31 else 1.96
    half = t * float(np.std(vals, ddof=1)) / math.sqrt(n)
    assert mean == pytest.approx(np.mean(vals), rel=1e-12)
    assert (low, high) == pytest.approx((mean - half, mean + half), rel=1e-12)


def test_the_seed_t_interval_of_nothing_or_one_value():
    assert all(math.isnan(x) for x in t_interval([float("nan"), None]))
    mean, low, high = t_interval([3.5, None])
    assert mean == 3.5 and math.isnan(low) and math.isnan(high)
    assert mean_std([None, 2.0, 4.0]) == pytest.approx((3.0, math.sqrt(2.0)))


def test_a_paired_accuracy_difference_is_clipped_to_minus_one_and_one():
    """The arm right on all 10 rows, the reference on 1: resamples without that row have no spread (t* = +inf),
    so the lower bound runs to the edge of the difference's range, -1, not below."""
    arm = np.ones((10, 1, 1))
    ref = np.array([0.0] * 9 + [1.0])[:, None, None]
    ids = tuple(map(str, range(10)))
    d = paired_difference(ExampleScores("accuracy", ids, arm), ExampleScores("accuracy", ids, ref), samples=99)
    want = plain_bootstrap_t([arm, ref], lambda rows: float(rows[0].mean() - rows[1].mean()), 99, 0,
                             bounds=(-1.0, 1.0))
    assert d.value == pytest.approx(0.9) and (d.low, d.high) == pytest.approx(want, rel=1e-10)
    assert d.low == -1.0 and d.p == pytest.approx(2 / 2 ** 9) and (d.mcnemar.a_only, d.mcnemar.b_only) == (9, 0)


def test_a_paired_nll_difference_is_the_textbook_paired_bootstrap_t():
    a, b = nll_rows(9, 31), nll_rows(9, 32)
    ids = tuple(map(str, range(9)))
    d = paired_difference(ExampleScores("nll", ids, a), ExampleScores("nll", ids[::-1], b[::-1]), samples=99,
                          confidence=0.90, seed=5)
    want = plain_bootstrap_t([a, b], lambda rows: ratio(rows[0]) - ratio(rows[1]), 99, 5, 0.90)
    assert d.value == pytest.approx(ratio(a) - ratio(b), rel=1e-12) and d.n == 9
    assert (d.low, d.high) == pytest.approx(want, rel=1e-10)
    assert d.p == pytest.approx(plain_sign_flip(a, b, ratio, seed=5), rel=1e-12) and d.mcnemar is None
    two = paired_difference(ExampleScores("nll", ids, nll_rows(9, 33, s=2)), ExampleScores("nll", ids, a), 99)
    assert two.p is None  # two draws per sonnet against one: no swap of rows


# ---------------------------------------------------------------------------------------------- resamples without spread

def test_resamples_without_spread_count_as_t_zero_at_the_point_and_infinite_beside_it():
    """Six rows at ratio 2 (4/2) and two at 1/1 and 3/1: theta = 28 / 14 = 2; a resample of only 4/2 rows has no
    spread and sits on theta (t* = 0), one of only 1/1 rows none either, below theta (t* = -inf)."""
    v = np.array([[4.0, 2.0]] * 6 + [[1.0, 1.0], [3.0, 1.0]])[:, None]
    assert ratio(v) == 2.0
    for seed in range(3):
        got = studentized_interval([v], RATIO_STAT, 199, seed=seed, bounds=(0.0, math.inf))
        assert got == pytest.approx(plain_bootstrap_t([v], lambda rows: ratio(rows[0]), 199, seed,
                                                      bounds=(0.0, math.inf)), rel=1e-10)
    acc = lambda sums, m: sums[0][..., 0].mean(-1) / m  # noqa: E731
    one = np.array([0.0] * 9 + [1.0])[:, None, None]  # resamples without the right row: t* = -inf, below theta
    got = studentized_interval([one], acc, 199, bounds=(0.0, 1.0))
    assert got == pytest.approx(plain_bootstrap_t([one], lambda rows: float(rows[0].mean()), 199, 0, bounds=(0.0, 1.0)),
                                rel=1e-10)
    assert 0.0 <= got[0] < 0.1 and got[1] == 1.0  # a third of the resamples at -inf: the upper edge


def test_an_interval_with_flat_resamples_warns_about_nothing(recwarn):
    """Dividing by a zero standard error is expected there (t* = +-inf or 0): no RuntimeWarning reaches the user."""
    import warnings

    acc = lambda sums, m: sums[0][..., 0].mean(-1) / m  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        studentized_interval([np.array([1.0] * 9 + [0.0])[:, None, None]], acc, 199, bounds=(0.0, 1.0))
        studentized_interval([np.array([[4.0, 2.0]] * 6 + [[1.0, 1.0], [3.0, 1.0]])[:, None]], RATIO_STAT, 199)


def test_a_chrf_interval_over_two_samples_per_prompt_draws_samples_within_each_prompt():
    """9 prompts, 2 generated sonnets each (18 chrF statistics a sonnet): each resample draws 9 prompts, then 2
    of each prompt's sonnets; the score is the mean of the two sample sets' corpus chrF."""
    from sacrebleu.metrics import CHRF

    rng = np.random.default_rng(14)
    words = "from fairest creatures we desire increase that thereby beautys rose might never die".split()
    refs = [" ".join(rng.choice(words, 10)) for _ in range(9)]
    sets = [[" ".join(w if rng.random() < 0.5 else rng.choice(words) for w in r.split()) for r in refs]
            for _ in range(2)]
    stats = np.stack([xstats.chrf_statistics(h, refs) for h in sets], axis=1)  # (9, 2, 18)
    corpus = lambda rows: float(np.mean([CHRF()._compute_score_from_stats(list(rows[0][:, s].sum(0))).score  # noqa
                                         for s in range(rows[0].shape[1])]))
    iv = ExampleScores("chrf", tuple(map(str, range(9))), stats).interval(59, seed=3)
    assert iv.value == pytest.approx(np.mean([CHRF().corpus_score(h, [refs]).score for h in sets]), abs=1e-9)
    assert (iv.low, iv.high) == pytest.approx(plain_bootstrap_t([stats], corpus, 59, 3, bounds=(0.0, 100.0)),
                                              rel=1e-9)


def test_the_default_interval_is_1000_resamples_at_95_percent_from_seed_0():
    v = nll_rows(8, 44)  # data whose bounds move when a 1001st resample is added
    assert studentized_interval([v], RATIO_STAT) == pytest.approx(
        plain_bootstrap_t([v], lambda rows: ratio(rows[0]), 1000, 0, 0.95), rel=1e-10)


def test_one_example_has_no_interval_and_none_is_an_error():
    assert all(math.isnan(x) for x in studentized_interval([np.ones((1, 1, 2))], RATIO_STAT))
    with pytest.raises(ValueError, match="^interval of an empty set$"):
        studentized_interval([np.ones((0, 1, 2))], RATIO_STAT)


def test_float32_figures_are_resampled_in_float64():
    v = nll_rows(9, 51).astype(np.float32)
    want = plain_bootstrap_t([v.astype(np.float64)], lambda rows: ratio(rows[0]), 99, 0)
    assert studentized_interval([v], RATIO_STAT, 99) == pytest.approx(want, rel=1e-12)
    a, b = nll_rows(9, 52).astype(np.float32), nll_rows(9, 53).astype(np.float32)
    b[:, :, 0] *= 1.3
    want = plain_sign_flip(a.astype(np.float64), b.astype(np.float64), ratio)
    assert sign_flip_p(a, b, RATIO_STAT) == pytest.approx(want, rel=1e-12)
    assert sign_flip_p(a.astype(np.float64), b, RATIO_STAT) == pytest.approx(want, rel=1e-12)


def test_a_data_standard_error_of_exactly_one_is_used_like_any_other():
    """[-5, -1, -1, -1, 1, 1, 1, 5]: the mean's jackknife standard error is sqrt(56 / (8 * 7)) = 1 exactly."""
    x = np.array([-5.0, -1, -1, -1, 1, 1, 1, 5])[:, None, None]
    mean = lambda sums, m: sums[0][..., 0].mean(-1) / m  # noqa: E731
    assert float(metrics._jackknife_se((x.sum() - x[:, 0, 0]) / 7)) == 1.0
    got = studentized_interval([x], mean, 99)
    assert got == pytest.approx(plain_bootstrap_t([x], lambda rows: float(rows[0].mean()), 99, 0), rel=1e-10)
    assert got[0] < -1 and got[1] > 1


def test_a_paired_difference_draws_its_resamples_and_sign_flips_from_its_seed():
    """16 sonnets: above 14 the sign flips are drawn (9,999 from the seed), like the resamples."""
    a, b = nll_rows(16, 61), nll_rows(16, 62)
    ids = tuple(map(str, range(16)))
    f = lambda rows: ratio(rows[0]) - ratio(rows[1])  # noqa: E731
    for seed in (0, 7):
        kw = {"seed": seed} if seed else {}  # the default seed is 0
        d = paired_difference(ExampleScores("nll", ids, a), ExampleScores("nll", ids, b), samples=99, **kw)
        assert (d.low, d.high) == pytest.approx(plain_bootstrap_t([a, b], f, 99, seed), rel=1e-10)
        assert d.p == pytest.approx(plain_sign_flip(a, b, ratio, seed=seed), rel=1e-12)
    with pytest.raises(ValueError, match="^the two runs scored no example in common$"):
        paired_difference(ExampleScores("nll", ("1",), a[:1]), ExampleScores("nll", ("2",), b[:1]))


def test_chrf_of_sums_is_computed_in_float64_and_warns_about_nothing():
    """float32 statistics (as a caller might hold them) give sacrebleu's score to 1e-12; orders with no n-gram
    on one side (an empty hypothesis) divide by zero inside, silently."""
    import warnings

    from sacrebleu.metrics import CHRF

    rng = np.random.default_rng(71)
    s = rng.integers(1, 3000, 18).astype(float)
    s[2::3] = np.minimum(s[2::3], np.minimum(s[0::3], s[1::3])) * 0.37
    s = np.round(s)
    s[0::3] += 1 / 3  # not a float32 number: float32 rounds it
    want = CHRF()._compute_score_from_stats(list(s.astype(np.float32).astype(np.float64))).score
    assert float(xstats.chrf_of_sums(s.astype(np.float32))) == pytest.approx(want, rel=1e-12)
    empty = np.zeros(18)
    empty[1::3] = 10  # reference n-grams only
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(xstats.chrf_of_sums(empty)) == 0.0
        assert xstats.chrf_of_sums(np.stack([empty, s])).tolist() == pytest.approx([0.0, float(xstats.chrf_of_sums(s))])

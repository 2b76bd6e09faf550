"""Tests written against the survivors of `python tools/mutate.py --auto minigpt2/metrics.py` (2026-12-07,
docs/testing.md, "Automated mutants"): each pins a figure a user reads on inputs where the surviving one-line slip
gives another number; the expected value is computed here apart from the code (scipy, a plain percentile written
out, the loop-by-loop bootstrap-t of test_mutants_stats.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from minigpt2.metrics import bootstrap_interval, bootstrap_interval_nested, studentized_interval, wilson_interval
from tests.experiments.test_mutants_stats import RATIO_STAT, plain_bootstrap_t, ratio


def plain_quantile(values: list[float], q: float) -> float:
    """numpy's default ("linear") quantile written out: the value at position q (B - 1) of the sorted values,
    interpolated between its two neighbours."""
    v = sorted(values)
    h = q * (len(v) - 1)
    lo = math.floor(h)
    return v[lo] + (h - lo) * (v[min(lo + 1, len(v) - 1)] - v[lo])


# continuous figures: every resample mean differs, so 1000 and 1001 resamples give other quantiles
FIGURES = np.array([0.3, 2.9, 1.7, 8.2, 0.05, 4.4, 3.3, 6.1, 0.9])


def test_the_percentile_bootstrap_defaults_to_1000_resamples_from_seed_0():
    mean = lambda i: float(FIGURES[i].mean())  # noqa: E731
    idx = np.random.default_rng(0).integers(0, 9, size=(1000, 9))
    scores = [float(np.mean([FIGURES[j] for j in row])) for row in idx]
    want = (plain_quantile(scores, 0.025), plain_quantile(scores, 0.975))
    assert bootstrap_interval(mean, 9) == pytest.approx(want, rel=1e-12)
    assert bootstrap_interval(mean, 9, 1001) != pytest.approx(want, rel=1e-12)  # the inputs tell the counts apart


def test_the_nested_bootstrap_defaults_to_1000_resamples_from_seed_0():
    values = FIGURES.reshape(3, 3)
    score = lambda i, j: float(values[i[:, None], j].mean())  # noqa: E731
    rng, scores = np.random.default_rng(0), []
    for _ in range(1000):  # per resample: 3 examples, then 3 draws within each
        i = rng.integers(0, 3, size=3)
        j = rng.integers(0, 3, size=(3, 3))
        scores.append(float(np.mean([values[i[r], j[r, c]] for r in range(3) for c in range(3)])))
    want = (plain_quantile(scores, 0.025), plain_quantile(scores, 0.975))
    assert bootstrap_interval_nested(score, 3, 3) == pytest.approx(want, rel=1e-12)
    assert bootstrap_interval_nested(score, 3, 3, 1001) != pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("n", [3, 6, 7, 12, 14, 100, 1000])
def test_wilson_at_zero_and_at_all_successes_is_exactly_the_edge(n):
    """At 0/n the Wilson lower bound is 0 (centre - half cancels: both are z^2 / 2n over the same denominator); in
    floating point centre - half is 5.6e-17 at n = 3, 2.8e-17 at n = 6, ... so the code sets the edge itself. The
    other bound is scipy's."""
    low, high = wilson_interval(0, n)
    assert low == 0.0
    assert high == pytest.approx(sps.binomtest(0, n).proportion_ci(method="wilson").high, rel=1e-12)
    low, high = wilson_interval(n, n)
    assert high == 1.0
    assert low == pytest.approx(sps.binomtest(n, n).proportion_ci(method="wilson").low, rel=1e-12)


@pytest.mark.parametrize("successes, n", [(1, 3), (2, 3), (5, 12), (11, 12), (999, 1000)])
def test_wilson_inside_the_range_is_scipys(successes, n):
    want = sps.binomtest(successes, n).proportion_ci(method="wilson")
    assert wilson_interval(successes, n) == pytest.approx((want.low, want.high), rel=1e-12)
    assert wilson_interval(successes, 0) is None


def test_a_flat_resample_on_the_point_counts_as_t_zero_at_every_confidence():
    """Eight rows at ratio 1/2 (3/6) and 2/2, 0/2: theta = 26 / 52 = 1/2. A resample of 3/6 rows only has no spread
    and sits on theta: t* = 0 (0/0 taken as no distance), as in `plain_bootstrap_t`. At 50% confidence the 25% and
    75% order statistics lie near 0, where t* = 1 for those resamples (a slip) moves the lower bound."""
    v = np.array([[3.0, 6.0]] * 8 + [[2.0, 2.0], [0.0, 2.0]])[:, None]
    assert ratio(v) == 0.5
    for confidence in (0.5, 0.95):
        got = studentized_interval([v], RATIO_STAT, 200, confidence, seed=0)
        want = plain_bootstrap_t([v], lambda rows: ratio(rows[0]), 200, 0, confidence)
        assert got == pytest.approx(want, rel=1e-10)
    got = studentized_interval([v], RATIO_STAT, 200, 0.5, seed=0)
    assert got[0] == pytest.approx(0.4736884596539649, rel=1e-9)  # t* = 1 there gives 0.47338...


@pytest.mark.parametrize("samples, confidence", [(10, 0.95), (39, 0.95), (200, 0.95), (5, 0.5)])
def test_data_without_spread_have_the_point_as_their_interval_whatever_the_resamples(samples, confidence):
    """Nine correct answers: every resample is all correct, so the interval is the point 1.0. With 10 resamples at
    95% (k = floor(11 x 0.025) = 0) there are too few for any tail, t* = -inf .. inf: times the data's standard
    error 0 that is no number, and the interval must still be the point, not NaN."""
    acc = lambda sums, m: sums[0][..., 0].mean(-1) / m  # noqa: E731
    right = np.ones((9, 1, 1))
    assert studentized_interval([right], acc, samples, confidence, bounds=(0.0, 1.0)) == (1.0, 1.0)
    assert studentized_interval([right * 0.0], acc, samples, confidence, bounds=(0.0, 1.0)) == (0.0, 0.0)
    halves = np.full((8, 1, 2), 0.5)  # a ratio without spread, unbounded: 0.5 / 0.5 = 1 in every resample
    assert studentized_interval([halves], RATIO_STAT, samples, confidence) == (1.0, 1.0)

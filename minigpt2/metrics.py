"""Task metrics: accuracy, chrF (sacrebleu's defaults, as the course); confidence intervals (bootstrap-t for small n,
percentile bootstrap, Wilson), the sign-flip permutation test of paired arms and McNemar's test."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from sacrebleu.metrics import CHRF


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of predictions equal to their label."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("accuracy of an empty set")
    return sum(int(p) == int(y) for p, y in zip(predictions, labels)) / len(labels)


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0-100) with sacrebleu's `CHRF()` defaults (character 6-grams, beta 2), one reference each."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    return float(CHRF().corpus_score(list(hypotheses), [list(references)]).score)


def bootstrap_interval(score: Callable[[np.ndarray], float], n: int, samples: int = 1000,
                       confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a corpus metric over `n` examples.

    Draws `samples` resamples of the example indices with replacement (one (samples, n) array from `seed`) and
    returns the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of `score(indices)`. `score` recomputes
    the metric on the examples at `indices`, e.g. `lambda i: accuracy(preds[i], labels[i])` on arrays, or a sum of
    per-example statistics for chrF (experiments/stats.py).
    """
    if n < 1:
        raise ValueError("bootstrap of an empty set")
    idx = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    scores = np.array([score(i) for i in idx])
    lo, hi = np.quantile(scores, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def bootstrap_interval_nested(score: Callable[[np.ndarray, np.ndarray], float], n: int, k: int,
                              samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval over `n` examples with `k` random draws each (e.g. k sampled sonnets per
    prompt): each resample draws n examples with replacement, then k draws with replacement within each chosen
    example, so that the interval holds both sources of spread. `score(i, j)` gets the example indices i (n,)
    and the draw indices j (n, k) of one resample. With k = 1 this is `bootstrap_interval`."""
    if n < 1 or k < 1:
        raise ValueError("bootstrap of an empty set")
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(samples):
        i = rng.integers(0, n, size=n)
        j = rng.integers(0, k, size=(n, k)) if k > 1 else np.zeros((n, 1), dtype=np.int64)
        scores.append(score(i, j))
    lo, hi = np.quantile(np.array(scores), [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial rate (sensible at 0/n and n/n, unlike the normal one); None if n=0."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0/n and n/n the bound is exactly 0 or 1 (centre - half cancels); rounding left 1 - 2e-16, an interval
    # that missed its own point.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    return low, 1.0 if successes == n else min(1.0, centre + half)


# ---------------------------------------------------------------------------------------------- small-n intervals

MIN_INTERVAL_N = 8  # below this many examples no interval is given: a resample of 2 or 5 has too few distinct draws
EXACT_FLIPS_MAX_N = 14  # up to 2**14 sign flips are enumerated; above, FLIPS random ones are drawn
FLIPS = 9999
CHUNK_VALUES = 4_000_000  # floats of resampled data held at once

# A statistic of summed per-example figures: `statistic(sums, m)` gets one array per arm, each (..., s, k) (k
# figures of each of s draws, summed over m examples), and returns the statistic over the leading axes.
Statistic = Callable[[list[np.ndarray], int], np.ndarray]


def _jackknife_se(leave_one_out: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Jackknife standard error from the statistic without each example (last axis); `weights` counts how often
    each example occurs (a bootstrap resample holds duplicates, each left out in turn)."""
    w = np.ones_like(leave_one_out) if weights is None else weights
    n = w.sum(-1, keepdims=True)
    mean = (w * leave_one_out).sum(-1, keepdims=True) / n
    return np.sqrt((n[..., 0] - 1) / n[..., 0] * (w * (leave_one_out - mean) ** 2).sum(-1))


def _studentized(values: Sequence[np.ndarray], statistic: Statistic, theta: float, rng: np.random.Generator,
                 count: int) -> np.ndarray:
    """`count` bootstrap t-values (theta* - theta) / se*, se* the jackknife standard error within the resample."""
    n = len(values[0])
    i = rng.integers(0, n, size=(count, n))
    draws = [v[i[:, :, None], rng.integers(0, v.shape[1], size=(count, n, v.shape[1]))] for v in values]
    sums = [d.sum(1) for d in draws]  # (count, s, k)
    star = statistic(sums, n)
    loo = statistic([s[:, None] - d for s, d in zip(sums, draws)], n - 1)  # (count, n)
    se = _jackknife_se(loo)  # duplicates are left out once per copy: plain jackknife over the n drawn rows
    with np.errstate(divide="ignore", invalid="ignore"):
        flat = np.where(star == theta, 0.0, np.sign(star - theta) * np.inf)
        return np.where(se > 0, (star - theta) / se, flat)


def _tails(t: np.ndarray, confidence: float) -> tuple[float, float]:
    """The k-th smallest and k-th largest of B values, k = floor((B + 1)(1 - confidence) / 2): the usual
    bootstrap-t order statistics, symmetric (negating t swaps them) and never interpolated across an infinity."""
    ts = np.sort(t)
    k = math.floor((len(ts) + 1) * (1 - confidence) / 2 + 1e-9)
    if k < 1:  # too few resamples for this confidence: the interval is unbounded
        return -math.inf, math.inf
    return float(ts[k - 1]), float(ts[len(ts) - k])


def studentized_interval(values: Sequence[np.ndarray], statistic: Statistic, samples: int = 1000,
                         confidence: float = 0.95, seed: int = 0,
                         bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """Bootstrap-t (studentized) interval of a statistic of summed per-example figures; NaN bounds below
    `MIN_INTERVAL_N` examples.

    `values` holds one (n, s, k) array per arm, paired by example (row). Each resample draws n examples with
    replacement (and, per example, s of its draws), computes t* = (theta* - theta) / se*, with se* the jackknife
    standard error over the resample's own n rows, and the interval is theta - t*_(hi) se .. theta - t*_(lo) se
    with se the jackknife standard error of the data. Unlike percentile bounds this corrects for the skew and the
    small-sample spread of ratio statistics (chrF, a token-weighted NLL); bounds are clipped to `bounds` (a
    resample without spread gives t* = ±inf, e.g. all correct, and then the range's edge)."""
    n = len(values[0])
    if n < 1:
        raise ValueError("interval of an empty set")
    if n < MIN_INTERVAL_N:
        return math.nan, math.nan
    values = [np.asarray(v, dtype=np.float64) for v in values]
    theta = float(statistic([v.sum(0) for v in values], n))
    se = float(_jackknife_se(statistic([v.sum(0) - v for v in values], n - 1)))
    rng = np.random.default_rng(seed)
    per = max(1, CHUNK_VALUES // max(1, sum(v[0].size for v in values) * n))
    t = np.concatenate([_studentized(values, statistic, theta, rng, min(per, samples - done))
                        for done in range(0, samples, per)])
    t_lo, t_hi = _tails(t, confidence)
    with np.errstate(invalid="ignore"):  # inf * 0 when the data have no spread: the point itself
        low = theta if se == 0 else theta - t_hi * se
        high = theta if se == 0 else theta - t_lo * se
    return float(min(max(low, bounds[0]), theta)), float(max(min(high, bounds[1]), theta))


def sign_flip_p(a: np.ndarray, b: np.ndarray, statistic: Statistic, seed: int = 0, flips: int = FLIPS) -> float:
    """Two-sided permutation p-value of statistic(a) - statistic(b) for paired (n, s, k) arrays: under "the arms
    do not differ" each example's two rows are exchangeable, so every swap (sign flip) of a row pair is as likely
    as the observed one. All 2**n swaps are enumerated up to EXACT_FLIPS_MAX_N examples, else `flips` random ones
    give (1 + hits) / (1 + flips)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a sign-flip test needs the same shape for both arms, not {a.shape} and {b.shape}")
    n = len(a)
    diff = lambda sa, sb, m: statistic([sa], m) - statistic([sb], m)  # noqa: E731
    observed = abs(float(diff(a.sum(0), b.sum(0), n)))
    if n <= EXACT_FLIPS_MAX_N:
        swap = (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1
    else:
        swap = np.random.default_rng(seed).integers(0, 2, size=(flips, n))
    delta = (a - b).reshape(n, -1)
    hits, per = 0, max(1, CHUNK_VALUES // max(n, delta.shape[1]))
    for start in range(0, len(swap), per):  # what the swapped rows take from a and give b
        moved = (swap[start:start + per] @ delta).reshape((-1,) + a.shape[1:])
        d = np.abs(diff(a.sum(0) - moved, b.sum(0) + moved, n))
        hits += int((d >= observed - 1e-9 * max(1.0, observed)).sum())
    return hits / len(swap) if n <= EXACT_FLIPS_MAX_N else (1 + hits) / (1 + flips)


@dataclass(frozen=True)
class McNemar:
    """McNemar's test of two classifiers on the same rows: `a_only` rows only a gets right, `b_only` rows only b."""

    a_only: int
    b_only: int
    p: float
    method: str  # "exact binomial" or "chi-square, continuity-corrected"


MCNEMAR_EXACT_BELOW = 25  # discordant pairs; from 25 on the chi-square approximation is close


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> McNemar:
    """McNemar's test: exact two-sided binomial on the discordant pairs when there are fewer than
    MCNEMAR_EXACT_BELOW, else chi-square with continuity correction (|b - c| - 1)^2 / (b + c), 1 degree of freedom."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"{len(a_correct)} rows for one classifier, {len(b_correct)} for the other")
    b = sum(bool(x) and not bool(y) for x, y in zip(a_correct, b_correct))
    c = sum(bool(y) and not bool(x) for x, y in zip(a_correct, b_correct))
    d = b + c
    if d < MCNEMAR_EXACT_BELOW:
        tail = sum(math.comb(d, j) for j in range(min(b, c) + 1)) / 2 ** d
        return McNemar(b, c, min(1.0, 2 * tail), "exact binomial")
    chi2 = (abs(b - c) - 1) ** 2 / d
    return McNemar(b, c, math.erfc(math.sqrt(chi2 / 2)), "chi-square, continuity-corrected")

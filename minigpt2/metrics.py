"""Task metrics: accuracy, chrF (sacrebleu's defaults, as the course), bootstrap and Wilson confidence intervals."""

from __future__ import annotations

import math
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

"""Task metrics: accuracy, chrF (sacrebleu's defaults, as the course) and a bootstrap confidence interval."""

from __future__ import annotations

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

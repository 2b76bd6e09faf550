"""Task metrics: accuracy, chrF (sacrebleu's defaults, as the course) and a bootstrap confidence interval."""

from __future__ import annotations

import random
from typing import Callable, Sequence

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


def bootstrap_ci(metric: Callable[[list, list], float], predictions: Sequence, references: Sequence,
                 samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a corpus metric, resampling examples with replacement."""
    rng = random.Random(seed)
    n = len(predictions)
    scores = []
    for _ in range(samples):
        idx = [rng.randrange(n) for _ in range(n)]
        scores.append(metric([predictions[i] for i in idx], [references[i] for i in idx]))
    scores.sort()
    lo = scores[int((1 - confidence) / 2 * samples)]
    hi = scores[min(samples - 1, int((1 + confidence) / 2 * samples))]
    return lo, hi

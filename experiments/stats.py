"""Uncertainty of a run's dev score: percentile bootstrap 95% intervals, and mean ± std over seeds.

The sonnet dev set has 12 sonnets, so one chrF figure hides a wide interval. The bootstrap resamples the dev
examples with replacement and recomputes the *corpus* metric on each resample: for chrF, sacrebleu's character
n-gram statistics are extracted once per sonnet and summed per resample (what `CHRF().corpus_score` does for the
whole set, and what sacrebleu's own `n_bootstrap` does — but with percentile bounds instead of a symmetric
half-width), so 1,000 resamples take a fraction of a second.

The predictions come back from the run folder's course-format files; references and labels from the data folder
the run used (its config.json).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sacrebleu.metrics import CHRF

SAMPLES = 1000


@dataclass(frozen=True)
class Interval:
    """A metric on the whole dev set and its bootstrap interval."""

    value: float
    low: float
    high: float
    n: int  # examples resampled


def _percentiles(scores: np.ndarray, confidence: float) -> tuple[float, float]:
    lo, hi = np.quantile(scores, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def chrf_statistics(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """(N, k) per-example chrF match statistics (sacrebleu's), summable over any subset of examples."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not hypotheses:
        raise ValueError("chrF of an empty set")
    return np.array(CHRF()._extract_corpus_statistics(list(hypotheses), [list(references)]), dtype=np.float64)


def chrf_from_statistics(stats: np.ndarray) -> float:
    """Corpus chrF (0-100) of summed statistics."""
    return float(CHRF()._compute_score_from_stats(list(stats)).score)


def bootstrap_chrf(hypotheses: Sequence[str], references: Sequence[str], samples: int = SAMPLES,
                   confidence: float = 0.95, seed: int = 0) -> Interval:
    """Corpus chrF of all examples and its percentile bootstrap interval over resampled examples."""
    stats = chrf_statistics(hypotheses, references)
    idx = np.random.default_rng(seed).integers(0, len(stats), size=(samples, len(stats)))
    scores = np.array([chrf_from_statistics(stats[i].sum(0)) for i in idx])
    return Interval(chrf_from_statistics(stats.sum(0)), *_percentiles(scores, confidence), len(stats))


def bootstrap_accuracy(predictions: Sequence[int], labels: Sequence[int], samples: int = SAMPLES,
                       confidence: float = 0.95, seed: int = 0) -> Interval:
    """Accuracy and its percentile bootstrap interval over resampled examples."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("accuracy of an empty set")
    correct = np.array([int(p) == int(y) for p, y in zip(predictions, labels)], dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(correct), size=(samples, len(correct)))
    return Interval(float(correct.mean()), *_percentiles(correct[idx].mean(1), confidence), len(correct))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN mean for none)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


# ---------------------------------------------------------------------------------------------- from a run folder

def run_dev_pairs(run_dir: str | Path) -> tuple[str, list, list]:
    """(metric, predictions, references) of a finished run's dev set, matched by id, read from its files."""
    from tasks import get_task
    from tasks.readers import data_dir

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    args = config["args"]
    task = get_task(args["task"])
    preds, refs = task.dev_pairs(run_dir / metrics["dev_predictions"], data_dir(args.get("data_dir")))
    return task.metric, preds, refs


def run_interval(run_dir: str | Path, samples: int = SAMPLES, seed: int = 0) -> Interval:
    """The bootstrap interval of a finished run's dev metric (chrF for sonnets, accuracy otherwise)."""
    metric, preds, refs = run_dev_pairs(run_dir)
    if metric == "chrf":
        return bootstrap_chrf(preds, refs, samples, seed=seed)
    return bootstrap_accuracy(preds, refs, samples, seed=seed)

"""Uncertainty of a run's figures over its examples, and of the difference between two arms on the same examples.

Every interval over examples is a studentized bootstrap (bootstrap-t, `minigpt2.metrics.studentized_interval`);
a paired difference resamples the same examples for both arms, with the sign-flip p-value and, for accuracy,
McNemar's test beside it. Why bootstrap-t, and its coverage at n = 12: docs/study.md ("Tables and the report").
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sacrebleu.metrics import CHRF

from app.runfolder import saved_settings
from course.formats import label_format
from course.readers import data_dir
from minigpt2.metrics import McNemar, mcnemar, sign_flip_p, studentized_interval
from tasks import get_task

SAMPLES = 1000


@dataclass(frozen=True)
class Interval:
    """A metric on the whole dev set and its bootstrap-t interval (NaN bounds below MIN_INTERVAL_N examples); for
    a paired difference also its sign-flip p-value and, for accuracy, McNemar's test."""

    value: float
    low: float
    high: float
    n: int  # examples resampled
    p: float | None = None
    mcnemar: McNemar | None = None


def chrf_statistics(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """(N, k) per-example chrF match statistics (sacrebleu's), summable over any subset of examples."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not hypotheses:
        raise ValueError("chrF of an empty set")
    return np.array(CHRF()._extract_corpus_statistics(list(hypotheses), [list(references)]), dtype=np.float64)


def chrf_of_sums(sums: np.ndarray) -> np.ndarray:
    """Corpus chrF (0-100) of summed statistics (..., 3 * orders), vectorized over the leading axes: sacrebleu's
    `CHRF._compute_f_score` (beta 2, the mean precision and recall over the orders that have n-grams on both sides)."""
    sums = np.asarray(sums, dtype=np.float64)
    hyp, ref, match = sums[..., 0::3], sums[..., 1::3], sums[..., 2::3]
    both = (hyp > 0) & (ref > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(both, match / np.where(hyp > 0, hyp, 1), 0.0)
        rec = np.where(both, match / np.where(ref > 0, ref, 1), 0.0)
        orders = both.sum(-1)
        avg_p = np.where(orders > 0, prec.sum(-1) / np.maximum(orders, 1), 0.0)
        avg_r = np.where(orders > 0, rec.sum(-1) / np.maximum(orders, 1), 0.0)
        factor = CHRF.BETA ** 2
        denom = factor * avg_p + avg_r
        return np.where(denom > 0, 100 * (1 + factor) * avg_p * avg_r / np.where(denom > 0, denom, 1), 0.0)


# metric -> statistic of summed (..., samples, k) figures of m examples, and the range of the metric
STATISTICS = {
    "chrf": lambda sums, m: chrf_of_sums(sums[0]).mean(-1),  # each sample set's corpus chrF, averaged
    "nll": lambda sums, m: sums[0][..., 0].sum(-1) / sums[0][..., 1].sum(-1),  # token-weighted
    "accuracy": lambda sums, m: sums[0][..., 0].mean(-1) / m,
}
BOUNDS = {"chrf": (0.0, 100.0), "nll": (0.0, math.inf), "accuracy": (0.0, 1.0)}


def bootstrap_chrf(hypotheses: Sequence[str], references: Sequence[str], samples: int = SAMPLES,
                   confidence: float = 0.95, seed: int = 0) -> Interval:
    """Corpus chrF of all examples and its bootstrap-t interval over resampled examples."""
    stats = chrf_statistics(hypotheses, references)
    return ExampleScores("chrf", tuple(map(str, range(len(stats)))), stats[:, None]).interval(samples, seed,
                                                                                            confidence)


def bootstrap_accuracy(predictions: Sequence[int], labels: Sequence[int], samples: int = SAMPLES,
                       confidence: float = 0.95, seed: int = 0) -> Interval:
    """Accuracy and its bootstrap-t interval over resampled examples."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("accuracy of an empty set")
    correct = np.array([int(p) == int(y) for p, y in zip(predictions, labels)], dtype=np.float64)
    return ExampleScores("accuracy", tuple(map(str, range(len(correct)))), correct[:, None, None]).interval(
        samples, seed, confidence)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN mean for none)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def majority_interval(labels: Sequence[int], samples: int = SAMPLES, seed: int = 0) -> Interval:
    """Accuracy of always answering the most frequent label of these rows, with its bootstrap interval."""
    if not labels:
        raise ValueError("majority class of an empty set")
    majority = max(sorted(set(labels)), key=list(labels).count)
    return bootstrap_accuracy([majority] * len(labels), labels, samples, seed=seed)


# ---------------------------------------------------------------------------------------------- from a run folder

def run_data_folder(run_dir: str | Path) -> Path:
    """The data folder a run used: its --data-dir, else the folder the sweep runner resolved from the
    environment when it started the run (experiment.json), else today's default. A recorded folder that no
    longer exists gives way to MINIGPT2_DATA_DIR when that is set (the data moved)."""
    run_dir = Path(run_dir)
    try:
        record = json.loads((run_dir / "experiment.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    recorded = saved_settings(run_dir).paths.data_dir or record.get("data_dir")
    if recorded and (Path(recorded).is_dir() or not os.environ.get("MINIGPT2_DATA_DIR")):
        return Path(recorded)
    return data_dir(None)


def run_interval(run_dir: str | Path, samples: int = SAMPLES, seed: int = 0, split: str = "dev"
                 ) -> Interval | None:
    """The bootstrap interval of a finished run's metric on `split` (over its examples and the samples of each
    prompt); None for a test split without labels."""
    scores = run_scores(run_dir, split)
    return None if scores is None else scores.interval(samples, seed)


# ---------------------------------------------------------------------------------------------- per example

@dataclass(frozen=True)
class ExampleScores:
    """One run's figure on one split, kept per example so that it can be resampled alone or beside another
    run's on the same examples. `values` is (examples, samples, k): chrF statistics of each sampled sonnet, the
    correctness of a prediction (k = 1), or a sonnet's summed NLL and its token count (k = 2)."""

    metric: str  # chrf, accuracy or nll
    ids: tuple[str, ...]
    values: np.ndarray

    def score(self, i: np.ndarray | None = None, j: np.ndarray | None = None) -> float:
        """The metric on examples i (default all), with draws j (examples, samples) of each (default all)."""
        v = self.values if i is None else self.values[i[:, None], j]
        return float(STATISTICS[self.metric]([v.sum(0)], len(v)))

    def interval(self, samples: int = SAMPLES, seed: int = 0, confidence: float = 0.95) -> Interval:
        """The metric and its bootstrap-t interval over the examples (and the samples within each)."""
        low, high = studentized_interval([self.values], STATISTICS[self.metric], samples, confidence, seed,
                                         BOUNDS[self.metric])
        return Interval(self.score(), low, high, len(self.values))

    def subset(self, ids: Sequence[str]) -> "ExampleScores":
        where = {k: n for n, k in enumerate(self.ids)}
        return ExampleScores(self.metric, tuple(ids), self.values[[where[k] for k in ids]])


def paired_difference(a: ExampleScores, b: ExampleScores, samples: int = SAMPLES, confidence: float = 0.95,
                      seed: int = 0) -> Interval:
    """a - b on the examples both scored, with a paired bootstrap-t interval (every resample draws the same
    examples for both runs, and each run's samples within an example on its own, so the spread the two share, the
    examples' difficulty, cancels), the sign-flip permutation p-value (None when the runs drew different numbers
    of samples per prompt), and McNemar's test for accuracy. `n` is the number of shared examples."""
    if a.metric != b.metric:
        raise ValueError(f"cannot compare {a.metric} with {b.metric}")
    shared = [k for k in a.ids if k in set(b.ids)]
    if not shared:
        raise ValueError("the two runs scored no example in common")
    a, b = a.subset(shared), b.subset(shared)
    one = STATISTICS[a.metric]
    low, high = studentized_interval([a.values, b.values], lambda s, m: one(s[:1], m) - one(s[1:], m), samples,
                                     confidence, seed, tuple(x - y for x, y in zip(BOUNDS[a.metric],
                                                                                   BOUNDS[a.metric][::-1])))
    p = sign_flip_p(a.values, b.values, one, seed) if a.values.shape == b.values.shape else None
    test = mcnemar(a.values[:, 0, 0] > 0, b.values[:, 0, 0] > 0) if a.metric == "accuracy" else None
    return Interval(a.score() - b.score(), low, high, len(shared), p, test)


def run_scores(run_dir: str | Path, split: str = "dev", metric: str | None = None) -> ExampleScores | None:
    """A finished run's per-example figures on `split`: its task metric (default) or "nll", the held-out
    likelihood recorded in metrics.json; None where the split has no references."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    if metric == "nll":
        per = ((metrics.get("heldout_nll") or {}).get(split) or {}).get("per_sonnet")
        if not per:
            return None
        return ExampleScores("nll", tuple(per), np.array([[v] for v in per.values()], dtype=np.float64))
    settings = saved_settings(run_dir)
    task = get_task(settings.data.task)
    refs = settings.data.test_references if split == "test" else None
    folder = run_data_folder(run_dir)
    columns = []
    ids: list[str] = []
    # the course file, then the other samples (--eval-samples)
    for name in metrics.get(f"{split}_samples") or [metrics[f"{split}_predictions"]]:
        pairs = task.format.split_pairs(run_dir / name, folder, split, Path(refs) if refs else None)
        if pairs is None:
            return None
        ids = task.format.prediction_ids(run_dir / name)
        if task.metric == "chrf":
            columns.append(chrf_statistics(*pairs))
        else:
            columns.append(np.array([[int(p) == int(y)] for p, y in zip(*pairs)], dtype=np.float64))
    return ExampleScores(task.metric, tuple(ids), np.stack(columns, axis=1))


def zero_shot_scores(run_dir: Path, output: str) -> ExampleScores:
    """Per row, whether a run's zero-shot check (`output`: its result file) answered right: the rows of its
    predictions file that have labels."""
    data = json.loads((run_dir / output).read_text(encoding="utf-8"))
    task = label_format(data.get("task", "quora"))
    preds = task.read_predictions(run_dir / data["predictions"])
    labels = task.split_labels(run_data_folder(run_dir), data.get("split", "dev")) or {}
    ids = [k for k in preds if k in labels]
    correct = [float(int(preds[k]) == int(labels[k])) for k in ids]
    return ExampleScores("accuracy", tuple(ids), np.array(correct, dtype=float).reshape(-1, 1, 1))


# ---------------------------------------------------------------------------------------------- across seeds

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal's 1.96).
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t-interval of the mean of several seeds' figures (NaN bounds for one)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return mean, math.nan, math.nan
    t = T95[len(vals) - 2] if len(vals) - 1 <= len(T95) else 1.96
    half = t * statistics.stdev(vals) / math.sqrt(len(vals))
    return mean, mean - half, mean + half

"""Uncertainty of a run's dev score: percentile bootstrap 95% intervals, and mean ± std over seeds.

The sonnet dev set has 12 sonnets, so one chrF figure hides a wide interval. The bootstrap resamples the dev
examples with replacement and recomputes the *corpus* metric on each resample: for chrF, sacrebleu's character
n-gram statistics are extracted once per sonnet and summed per resample (what `CHRF().corpus_score` does for the
whole set, and what sacrebleu's own `n_bootstrap` does — but with percentile bounds instead of a symmetric
half-width), so 1,000 resamples take a fraction of a second. The resampling itself is the library's
`minigpt2.metrics.bootstrap_interval`.

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

from minigpt2.metrics import bootstrap_interval

SAMPLES = 1000


@dataclass(frozen=True)
class Interval:
    """A metric on the whole dev set and its bootstrap interval."""

    value: float
    low: float
    high: float
    n: int  # examples resampled


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
    low, high = bootstrap_interval(lambda i: chrf_from_statistics(stats[i].sum(0)), len(stats), samples, confidence,
                                   seed)
    return Interval(chrf_from_statistics(stats.sum(0)), low, high, len(stats))


def bootstrap_accuracy(predictions: Sequence[int], labels: Sequence[int], samples: int = SAMPLES,
                       confidence: float = 0.95, seed: int = 0) -> Interval:
    """Accuracy and its percentile bootstrap interval over resampled examples."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("accuracy of an empty set")
    correct = np.array([int(p) == int(y) for p, y in zip(predictions, labels)], dtype=np.float64)
    low, high = bootstrap_interval(lambda i: float(correct[i].mean()), len(correct), samples, confidence, seed)
    return Interval(float(correct.mean()), low, high, len(correct))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN mean for none)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


# ---------------------------------------------------------------------------------------------- from a run folder

def majority_interval(labels: Sequence[int], samples: int = SAMPLES, seed: int = 0) -> Interval:
    """Accuracy of always answering the most frequent label of these rows, with its bootstrap interval."""
    if not labels:
        raise ValueError("majority class of an empty set")
    majority = max(sorted(set(labels)), key=list(labels).count)
    return bootstrap_accuracy([majority] * len(labels), labels, samples, seed=seed)


def run_data_folder(run_dir: str | Path) -> Path:
    """The data folder a run used: its --data-dir, else the folder the sweep runner resolved from the
    environment when it started the run (experiment.json), else today's default. A recorded folder that no
    longer exists gives way to MINIGPT2_DATA_DIR when that is set (the data moved)."""
    import os

    from tasks.readers import data_dir

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    try:
        record = json.loads((run_dir / "experiment.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    recorded = config["args"].get("data_dir") or record.get("data_dir")
    if recorded and (Path(recorded).is_dir() or not os.environ.get("MINIGPT2_DATA_DIR")):
        return Path(recorded)
    return data_dir(None)


def split_labels(task_name: str, folder: Path, split: str) -> dict[str, int] | None:
    """id -> label of a classification task's dev rows, or of its test rows from the `*-test-labels.csv` file
    beside the data (None when that file is absent: test scores are then left out, not guessed)."""
    from tasks import get_task

    return get_task(task_name).split_labels(folder, split)  # type: ignore[attr-defined]


def sonnet_references(folder: Path, split: str) -> dict[int, str] | None:
    """number -> true sonnet of the dev or test prompts (None when the test sonnets are absent)."""
    from tasks import get_task

    return get_task("sonnet").split_references(folder, split)  # type: ignore[attr-defined]


def run_pairs(run_dir: str | Path, split: str = "dev") -> tuple[str, list, list] | None:
    """(metric, predictions, references) of a finished run's dev or test split, matched by id, read from its
    files through the task's `split_pairs`; None for a test split whose labels (or true sonnets) are absent."""
    from tasks import get_task

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    task = get_task(config["args"]["task"])
    refs = config["args"].get("test_references") if split == "test" else None
    pairs = task.split_pairs(run_dir / metrics[f"{split}_predictions"], run_data_folder(run_dir), split,
                             Path(refs) if refs else None)
    return None if pairs is None else (task.metric, *pairs)


def read_task_predictions(task_name: str, path: Path) -> dict[str, int]:
    """id -> predicted label of a classification task's course-format predictions file."""
    from tasks import get_task

    return get_task(task_name).read_predictions(path)  # type: ignore[attr-defined]


def run_dev_pairs(run_dir: str | Path) -> tuple[str, list, list]:
    """(metric, predictions, references) of a finished run's dev set."""
    pairs = run_pairs(run_dir, "dev")
    assert pairs is not None  # dev labels are part of the data; a missing file raised above
    return pairs


def pairs_interval(pairs: tuple[str, list, list], samples: int = SAMPLES, seed: int = 0) -> Interval:
    metric, preds, refs = pairs
    if metric == "chrf":
        return bootstrap_chrf(preds, refs, samples, seed=seed)
    return bootstrap_accuracy(preds, refs, samples, seed=seed)


def run_interval(run_dir: str | Path, samples: int = SAMPLES, seed: int = 0, split: str = "dev"
                 ) -> Interval | None:
    """The bootstrap interval of a finished run's metric (chrF for sonnets, accuracy otherwise) on `split`;
    None for a test split without labels."""
    pairs = run_pairs(run_dir, split)
    return None if pairs is None else pairs_interval(pairs, samples, seed)

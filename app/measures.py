"""What a sonnet run is measured by besides chrF, recorded in its metrics.json.

chrF rewards any text with the right character n-grams: the rest of a *wrong* real sonnet scores about as well as a
fine-tuned model. Two measures a model earns only by learning the sonnets:

    heldout_nll   the teacher-forced negative log-likelihood (nats per token) of each true held-out continuation
                  given its 3-line prompt (`tasks.sonnet.SonnetTask.heldout_nll`), token-weighted over the set,
                  with a bootstrap-t interval over sonnets (NaN below `minigpt2.metrics.MIN_INTERVAL_N`
                  sonnets; experiments/stats.py says why) and the perplexity exp(nll); recorded for the
                  model before training ("heldout_nll_base") and for the best model ("heldout_nll")
    form          every generated sonnet through `distill.check.form_of`: the rates of 14 lines, of the rhyme
                  scheme, of the meter and of perfect sonnets, each with a 95% interval (Wilson over every
                  sonnet; with several samples per prompt, widened to the bootstrap over prompts, then samples
                  within a prompt, where that is wider), and the check's reasons counted

Per-sonnet figures are kept beside the totals so that two runs on the same prompts can be compared pairwise
(experiments.stats).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from distill.check import FORM_PARTS, METER_SYLLABLES, check_sonnet, count_syllables, form_of
from minigpt2.metrics import bootstrap_interval_nested, studentized_interval, wilson_interval
from minigpt2.tokenizer import Tokenizer
from tasks.base import Example, PredictSettings, Task, TaskModel

BOOTSTRAP = 1000
REASON_EXAMPLES = 5


def nll_record(per_sonnet: dict[str, tuple[float, int]], samples: int = BOOTSTRAP) -> dict[str, Any]:
    """Token-weighted mean NLL of sonnets given as id -> (summed NLL, tokens), its bootstrap-t interval over
    sonnets, the perplexity, and the per-sonnet figures."""
    ids = list(per_sonnet)
    if not ids:
        raise ValueError("held-out likelihood of an empty set")
    sums = np.array([per_sonnet[k][0] for k in ids], dtype=np.float64)
    counts = np.array([per_sonnet[k][1] for k in ids], dtype=np.float64)
    value = float(sums.sum() / counts.sum())
    per = np.stack([sums, counts], axis=1)[:, None]  # (sonnets, 1 draw, [nll, tokens])
    low, high = studentized_interval([per], lambda s, m: s[0][..., 0].sum(-1) / s[0][..., 1].sum(-1), samples,
                                     bounds=(0.0, math.inf))
    low, high = (None, None) if math.isnan(low) else (low, high)  # too few sonnets: strict JSON has no NaN
    return {"nll": value, "low": low, "high": high, "ppl": math.exp(value), "tokens": int(counts.sum()),
            "sonnets": len(ids), "per_sonnet": {k: [float(s), int(c)] for k, s, c in zip(ids, sums, counts)}}


def _reason_counts(texts: Sequence[str]) -> dict[str, Any]:
    counts: Counter = Counter()
    examples: list[str] = []
    low, high = METER_SYLLABLES
    for text in texts:
        check = check_sonnet(text)
        if check.n_lines != 14:
            counts["line count other than 14"] += 1
        counts["rhyme pairs that fail"] += len(check.failed_pairs)
        counts["lines outside 9-11 syllables"] += sum(not low <= count_syllables(ln) <= high
                                                      for ln in text.split("\n") if ln.strip())
        examples += check.reasons[:1]
    return {"counts": dict(counts), "examples": examples[:REASON_EXAMPLES]}


def form_record(ids: Sequence[str], samples: Sequence[Sequence[str]], boot: int = BOOTSTRAP) -> dict[str, Any]:
    """The form of generated sonnets: `samples[k][i]` is sample k for prompt `ids[i]`. Per part its rate over
    every sonnet, with a 95% interval; per prompt the flags of each sample; the check's reasons counted."""
    k = len(samples)
    if not ids or k == 0:
        raise ValueError("form of an empty set")
    flags = np.array([[[form_of(samples[s][i])[part] for part in FORM_PARTS] for s in range(k)]
                      for i in range(len(ids))], dtype=np.float64)  # (prompts, samples, parts)
    rates: dict[str, dict[str, float]] = {}
    for p, part in enumerate(FORM_PARTS):
        values = flags[:, :, p]
        rate = float(values.mean())
        low, high = wilson_interval(int(values.sum()), values.size) or (math.nan, math.nan)
        if k > 1:  # samples of one prompt are alike: widen by the spread over prompts and samples together
            b_low, b_high = bootstrap_interval_nested(
                lambda i, j: float(values[i[:, None], j].mean()), len(ids), k, boot)
            low, high = min(low, b_low), max(high, b_high)
        rates[part] = {"rate": rate, "low": low, "high": high}
    return {"parts": list(FORM_PARTS), "samples": k, "sonnets": len(ids), "rates": rates,
            "per_sonnet": {key: flags[i].astype(int).tolist() for i, key in enumerate(ids)},
            "reasons": _reason_counts([text for sample in samples for text in sample])}


def heldout_measures(task: Task, module: TaskModel, splits: dict[str, list[Example]], how: PredictSettings,
                     tok: Tokenizer, device: torch.device, folder: Path, test_references: Path | None = None
                     ) -> dict[str, Any]:
    """split -> `nll_record` of the true held-out sonnets of dev, and of test where its true sonnets exist, under
    `module` as it is now; {} for a task that generates no text."""
    if not task.generative:
        return {}
    out = {}
    for split in ("dev", "test"):
        refs = task.format.references_by_id(folder, split, test_references if split == "test" else None)
        if refs is None:
            continue
        per = task.heldout_nll(module, splits[split], refs, how, tok, device)
        if per:
            out[split] = nll_record(per)
    return out


def sample_file_name(name: str, k: int) -> str:
    """The file of sample k (k >= 1) beside a course prediction file: generated_sonnets_dev.txt ->
    generated_sonnets_dev.sample2.txt for k = 1 (sample 0 is the course file itself)."""
    stem, dot, ext = name.rpartition(".")
    return f"{stem}.sample{k + 1}.{ext}" if dot else f"{name}.sample{k + 1}"


def mean_scores(scores: Sequence[dict[str, float]]) -> dict[str, Any]:
    """One score dict from a score dict per sample: the mean of each figure, and the per-sample figures under
    "<name>_samples" when there is more than one."""
    out: dict[str, Any] = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    if len(scores) > 1:
        out.update({f"{k}_samples": [s[k] for s in scores] for k in scores[0]})
    return out

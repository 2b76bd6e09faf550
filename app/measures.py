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
    copying       every generated sonnet's own lines (not the prompt's) against the training sonnets and the other
                  held-out sonnets: its longest verbatim run of words, the share of its 4-grams found there, and
                  the novel rate (no run of NOVEL_BELOW words) with an interval as the form rates'
    coverage      beside the held-out NLL: the share of each continuation's tokens scored (all of them, in sliding
                  windows past the context) and scored with the whole prompt in view

Per-sonnet figures are kept beside the totals so that two runs on the same prompts can be compared pairwise
(experiments.stats).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from distill.check import FORM_PARTS, METER_SYLLABLES, check_sonnet, count_syllables, form_of
from minigpt2.metrics import bootstrap_interval_nested, studentized_interval, wilson_interval
from minigpt2.tokenizer import Tokenizer
from tasks.base import Example, GenerativeTask, PredictSettings, Task, TaskModel

BOOTSTRAP = 1000
REASON_EXAMPLES = 5


def nll_record(per_sonnet: dict[str, Sequence], samples: int = BOOTSTRAP) -> dict[str, Any]:
    """Token-weighted mean NLL of sonnets given as id -> (summed NLL, tokens) or a `tasks.base.HeldoutNLL`, its
    bootstrap-t interval over sonnets, the perplexity, and the per-sonnet figures; for a `HeldoutNLL`, also what
    share of the continuations was scored (`coverage_record`)."""
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
    out = {"nll": value, "low": low, "high": high, "ppl": math.exp(value), "tokens": int(counts.sum()),
           "sonnets": len(ids), "per_sonnet": {k: [float(s), int(c)] for k, s, c in zip(ids, sums, counts)}}
    if all(len(per_sonnet[k]) == 4 for k in ids):
        out["coverage"] = coverage_record({k: per_sonnet[k][1:] for k in ids})
    return out


def coverage_record(per_sonnet: dict[str, Sequence[int]]) -> dict[str, Any]:
    """What share of the true continuations the held-out NLL scored, from id -> (tokens scored, tokens of the
    continuation, tokens scored with the whole prompt in view): over the set token-weighted (summed tokens over
    summed tokens, as the NLL itself), and per sonnet."""
    scored, total, in_view = (sum(int(v[i]) for v in per_sonnet.values()) for i in range(3))
    if total <= 0:
        raise ValueError("coverage of continuations without tokens")
    return {"scored": scored / total, "prompt_in_view": in_view / total, "continuation_tokens": total,
            "per_sonnet": {k: [int(v[0]), int(v[1]), int(v[2])] for k, v in per_sonnet.items()}}


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
    rates = {part: rate_interval(flags[:, :, p], boot) for p, part in enumerate(FORM_PARTS)}
    return {"parts": list(FORM_PARTS), "samples": k, "sonnets": len(ids), "rates": rates,
            "per_sonnet": {key: flags[i].astype(int).tolist() for i, key in enumerate(ids)},
            "reasons": _reason_counts([text for sample in samples for text in sample])}


# ---------------------------------------------------------------------------------------------- copying

# A sonnet of Shakespeare's that no model saw shares 2-4 running words with the training sonnets at most, and 3-grams
# are common English (3% of an unseen sonnet's are in the training sonnets), 4-grams almost never are (0.2%): see
# docs/study.md. So shared 4-grams and a run of 6 words (about two thirds of a line) mean copying, not chance.
COPY_NGRAM = 4
NOVEL_BELOW = 6  # a sonnet is novel when its longest run shared with any corpus is shorter than this many words


def copy_words(text: str) -> list[str]:
    """The words the copying measure compares: lower-cased, apostrophes dropped inside words (thou'rt -> thourt),
    any other punctuation a word break."""
    return re.findall(r"[a-z0-9]+", text.lower().replace("'", "").replace("\u2019", ""))


class CopyCorpus:
    """Sonnets (id -> text) to look copied words up in: every word's places, and every `n`-gram's sonnets; no
    run crosses from one sonnet into the next."""

    def __init__(self, texts: dict[str, str], n: int = COPY_NGRAM) -> None:
        self.n = n
        self.words = {key: copy_words(text) for key, text in texts.items()}
        self.places: dict[str, list[tuple[str, int]]] = defaultdict(list)
        self.grams: dict[tuple[str, ...], set[str]] = defaultdict(set)
        for key, words in self.words.items():
            for j, word in enumerate(words):
                self.places[word].append((key, j))
            for j in range(len(words) - n + 1):
                self.grams[tuple(words[j:j + n])].add(key)

    def longest(self, words: Sequence[str], exclude: str | None = None) -> int:
        """The longest run of `words` found verbatim in one sonnet of the corpus (other than `exclude`)."""
        best = 0
        for i, word in enumerate(words):
            for key, j in self.places.get(word, ()):
                other = self.words[key]
                if key == exclude or (i and j and other[j - 1] == words[i - 1]):  # not where a run starts
                    continue
                k = 1
                while i + k < len(words) and j + k < len(other) and words[i + k] == other[j + k]:
                    k += 1
                best = max(best, k)
        return best

    def found(self, words: Sequence[str], exclude: str | None = None) -> tuple[int, int]:
        """(the `n`-grams of `words` found in a sonnet of the corpus other than `exclude`, all its `n`-grams)."""
        grams = [tuple(words[i:i + self.n]) for i in range(len(words) - self.n + 1)]
        return sum(bool(self.grams.get(g, set()) - {exclude}) for g in grams), len(grams)


def continuation_text(text: str, prompt_lines: int) -> str:
    """A finished sonnet without its prompt: the lines after the first `prompt_lines`."""
    return "\n".join(text.split("\n")[prompt_lines:])


def copying_record(ids: Sequence[str], samples: Sequence[Sequence[str]], prompt_lines: Sequence[int],
                   training: Sequence[str], held_out: dict[str, str], boot: int = BOOTSTRAP) -> dict[str, Any]:
    """How much of what was written is copied: for each sonnet `samples[k][i]` (prompt `ids[i]`, whose first
    `prompt_lines[i]` lines are the prompt and are left out), its longest verbatim run of words (`copy_words`)
    shared with a training sonnet and, apart, with a held-out sonnet other than its own prompt's (`held_out`:
    Shakespeare's numbers, unique across splits), and how many of its 4-grams are found there. Over the set: mean
    and largest run, the share of all 4-grams found (pooled), and the novel rate (longest run in both corpora
    under NOVEL_BELOW words) with a 95% interval as `form_record`'s."""
    if not ids or not samples:
        raise ValueError("copying of an empty set")
    corpora = {"training": CopyCorpus({str(i): t for i, t in enumerate(training)}),
               "held_out": CopyCorpus(dict(held_out))}
    per = np.array([[_copy_figures(continuation_text(sample[i], prompt_lines[i]), corpora, str(key))
                     for sample in samples] for i, key in enumerate(ids)], dtype=np.int64)  # (prompts, samples, 5)
    out: dict[str, Any] = {"n": COPY_NGRAM, "novel_below": NOVEL_BELOW, "samples": len(samples),
                           "sonnets": len(ids), "training_sonnets": len(training), "held_out_sonnets": len(held_out),
                           "columns": ["longest training", "found training", "longest held-out",
                                       "found held-out", "ngrams"]}
    grams = int(per[:, :, 4].sum())
    for c, corpus in ((0, "training"), (2, "held_out")):
        out[corpus] = {"longest_mean": float(per[:, :, c].mean()), "longest_max": int(per[:, :, c].max()),
                       "ngram_share": float(per[:, :, c + 1].sum() / grams) if grams else 0.0}
    novel = (np.maximum(per[:, :, 0], per[:, :, 2]) < NOVEL_BELOW).astype(np.float64)
    out["novel"] = rate_interval(novel, boot)
    out["per_sonnet"] = {str(key): per[i].tolist() for i, key in enumerate(ids)}
    return out


def _copy_figures(text: str, corpora: dict[str, CopyCorpus], own: str) -> list[int]:
    words = copy_words(text)
    (t_found, grams), (h_found, _) = corpora["training"].found(words), corpora["held_out"].found(words, own)
    return [corpora["training"].longest(words), t_found, corpora["held_out"].longest(words, own), h_found, grams]


def rate_interval(values: np.ndarray, boot: int = BOOTSTRAP) -> dict[str, float]:
    """The rate of 0/1 flags `values` (prompts, samples) with a 95% interval: Wilson over every flag; with
    several samples per prompt, widened to the bootstrap over prompts, then samples within a prompt, where
    that is wider. The form rates and the novel rate are read this way."""
    rate = float(values.mean())
    low, high = wilson_interval(int(values.sum()), values.size) or (math.nan, math.nan)
    if values.shape[1] > 1:  # samples of one prompt are alike
        b_low, b_high = bootstrap_interval_nested(
            lambda i, j: float(values[i[:, None], j].mean()), values.shape[0], values.shape[1], boot)
        low, high = min(low, b_low), max(high, b_high)
    return {"rate": rate, "low": low, "high": high}


def copying_corpora(task: GenerativeTask, folder: Path, test_references: Path | None = None
                    ) -> tuple[list[str], dict[str, str]]:
    """(the training sonnets, every held-out true sonnet by number, dev and test where their files exist): what
    `copying_record` looks copied words up in."""
    training, _ = task.train_texts(folder)
    held_out: dict[str, str] = {}
    for split in ("dev", "test"):
        held_out.update(task.format.references_by_id(folder, split, test_references if split == "test" else None)
                        or {})
    return training, held_out


def heldout_measures(task: Task, module: TaskModel, splits: dict[str, list[Example]], how: PredictSettings,
                     tok: Tokenizer, device: torch.device, folder: Path, test_references: Path | None = None
                     ) -> dict[str, Any]:
    """split -> `nll_record` of the true held-out sonnets of dev, and of test where its true sonnets exist, under
    `module` as it is now; {} for a task that generates no text."""
    if not isinstance(task, GenerativeTask):
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

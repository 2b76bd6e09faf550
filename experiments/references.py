"""What chance looks like, from the data files alone (no model): the reference rows under the sonnet tables
(chrF, form and copying of the prompts alone, with random tokens, with a wrong real sonnet; the form and copying
of the real held-out sonnets), the held-out NLL bars (a unigram of the training sonnets, the uniform guess), and
the majority class of classification rows. What each row is and why: docs/study.md ("What the tables hold").
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from app.runfolder import saved_settings
from course.files import SONNET_FILES
from course.formats import SONNETS, label_format, read_generated
from course.readers import read_sonnets

from .stats import SAMPLES, Interval, bootstrap_chrf, majority_interval, run_data_folder

PROMPT_LINES = 3  # the course's held-out prompts are a sonnet's first 3 lines
REFERENCE_NAMES = ("prompts only", "prompts + random tokens", "wrong sonnet (nearest training length)")
REAL_SONNETS = "real held-out sonnets"


def reference_hypotheses(truths: dict[int, str], training: Sequence[str], tokenizer_dir: str | None = None,
                         seed: int = 0) -> dict[str, list[str]]:
    """The three reference hypotheses for each true sonnet (in `truths` order), by REFERENCE_NAMES: the prompt
    alone, then as many uniformly random GPT-2 tokens as the true rest has (seeded), or the rest of the training
    sonnet nearest in length."""
    from minigpt2.tokenizer import Tokenizer

    tok = Tokenizer(tokenizer_dir)
    rng = np.random.default_rng(seed)
    prompts, random_, wrong = [], [], []
    for text in truths.values():
        prompt = "\n".join(text.split("\n")[:PROMPT_LINES])
        rest = "\n".join(text.split("\n")[PROMPT_LINES:])
        n_tokens = len(tok.encode(rest))
        ids = rng.integers(0, tok.vocab_size, size=n_tokens).tolist()
        others = [t for t in training if t != text] or list(training)
        nearest = min(others, key=lambda t: (abs(len(t) - len(text)), t))
        prompts.append(prompt)
        random_.append(prompt + "\n" + tok.decode(ids))
        wrong.append(prompt + "\n" + "\n".join(nearest.split("\n")[PROMPT_LINES:]))
    return dict(zip(REFERENCE_NAMES, (prompts, random_, wrong)))


@functools.lru_cache(maxsize=16)
def _reference_sonnets(folder: str, split: str, numbers: tuple[int, ...] | None, tokenizer_dir: str | None
                       ) -> tuple[dict[int, str], dict[str, list[str]], list[str]] | None:
    """(the true sonnets of `split`, only `numbers` when given; the reference hypotheses for them; the training
    sonnets), or None when the split's true sonnets are not in `folder`."""
    truths = SONNETS.split_references(Path(folder), split)
    if truths is None:
        return None
    if numbers:
        truths = {k: truths[k] for k in numbers if k in truths}
    training = [s.text for s in read_sonnets(Path(folder) / SONNET_FILES.train)[0]]
    return truths, reference_hypotheses(truths, training, tokenizer_dir), training


@functools.lru_cache(maxsize=16)
def sonnet_reference_intervals(folder: str, split: str, numbers: tuple[int, ...] | None = None,
                               tokenizer_dir: str | None = None, samples: int = SAMPLES
                               ) -> dict[str, Interval] | None:
    """chrF of each reference row against the true sonnets of `split` (only `numbers`, the prompts the runs
    scored, when given); None when the split's true sonnets are not in `folder`."""
    found = _reference_sonnets(folder, split, numbers, tokenizer_dir)
    if found is None:
        return None
    refs = list(found[0].values())
    return {name: bootstrap_chrf(h, refs, samples) for name, h in found[1].items()}


@functools.lru_cache(maxsize=16)
def sonnet_reference_forms(folder: str, split: str, numbers: tuple[int, ...] | None = None,
                           tokenizer_dir: str | None = None) -> dict[str, dict] | None:
    """The form (`app.measures.form_record`) of each reference row's sonnets and of the real held-out sonnets
    themselves, by name; None when the split's true sonnets are not in `folder`."""
    from app.measures import form_record

    found = _reference_sonnets(folder, split, numbers, tokenizer_dir)
    if found is None:
        return None
    truths, hyps, _ = found
    texts = {**hyps, REAL_SONNETS: list(truths.values())}
    return {name: form_record([str(k) for k in truths], [sonnets]) for name, sonnets in texts.items()}


def majority_reference(task_name: str, folder: Path, split: str, ids: Sequence[str] | None = None,
                       samples: int = SAMPLES) -> Interval | None:
    """Majority-class accuracy of the rows scored (`ids`; all rows of the split when None), or None when the
    split has no labels beside the data."""
    labels = label_format(task_name).split_labels(folder, split)
    if labels is None:
        return None
    values = [labels[i] for i in ids if i in labels] if ids is not None else list(labels.values())
    return majority_interval(values, samples) if values else None


# ---------------------------------------------------------------------------------------------- unigram bar

UNIGRAM_K_GRID = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)  # add-one down to add-0.001


def unigram_counts(sonnets: Sequence[Sequence[int]], vocab: int) -> np.ndarray:
    """How often each of the `vocab` token ids occurs in the tokenized sonnets."""
    flat = np.fromiter((t for ids in sonnets for t in ids), dtype=np.int64)
    return np.bincount(flat, minlength=vocab).astype(np.float64)


def unigram_nll(counts: np.ndarray, k: float, ids: Sequence[int]) -> float:
    """Summed NLL (nats) of `ids` under the add-k unigram of `counts`: p(t) = (c(t) + k) / (N + k V), V the length
    of `counts` (the whole vocabulary, tokens never seen included)."""
    total = counts.sum() + k * len(counts)
    return float(-(np.log(counts[np.asarray(ids, dtype=np.int64)] + k) - math.log(total)).sum())


def leave_one_out_nll(sonnets: Sequence[Sequence[int]], vocab: int, k: float) -> float:
    """Nats per token of each training sonnet under the add-k unigram of the others, token-weighted."""
    counts = unigram_counts(sonnets, vocab)
    nll = sum(unigram_nll(counts - unigram_counts([ids], vocab), k, ids) for ids in sonnets)
    return nll / sum(len(ids) for ids in sonnets)


def choose_unigram_k(sonnets: Sequence[Sequence[int]], vocab: int, grid: Sequence[float] = UNIGRAM_K_GRID) -> float:
    """The k of `grid` whose add-k unigram best predicts each training sonnet from the others (the first on a
    tie): the smoothing is fitted without the held-out sonnets."""
    scores = [leave_one_out_nll(sonnets, vocab, k) for k in grid]
    return grid[int(np.argmin(scores))]


@functools.lru_cache(maxsize=16)
def sonnet_reference_nll(folder: str, split: str, numbers: tuple[int, ...] | None = None,
                         tokenizer_dir: str | None = None) -> dict | None:
    """The held-out NLL bars of `split` (only `numbers` when given): {"unigram": `nll_record` of the add-k
    unigram of the training sonnets (each followed by <|endoftext|>, as in training), with its "k"; "uniform":
    ln(vocabulary)}, on the continuation tokens `SonnetTask.heldout_nll` scores; None without true sonnets."""
    from app.measures import nll_record
    from minigpt2.tokenizer import Tokenizer
    from tasks.sonnet import continuation_ids

    found = _reference_sonnets(folder, split, numbers, tokenizer_dir)
    if found is None:
        return None
    tok = Tokenizer(tokenizer_dir)
    training = [ids + [tok.eot_id] for ids in tok.encode_batch(found[2])]
    k = choose_unigram_k(training, tok.vocab_size)
    counts = unigram_counts(training, tok.vocab_size)
    per = {}
    for number, text in found[0].items():
        seq, n_prompt = continuation_ids(tok, text.split("\n")[:PROMPT_LINES], text)
        per[str(number)] = (unigram_nll(counts, k, seq[n_prompt:]), len(seq) - n_prompt)
    return {"unigram": {**nll_record(per), "k": k}, "uniform": math.log(tok.vocab_size)}


@functools.lru_cache(maxsize=16)
def sonnet_reference_copying(folder: str, split: str, numbers: tuple[int, ...] | None = None,
                             tokenizer_dir: str | None = None) -> dict[str, dict] | None:
    """The copying (`app.measures.copying_record`) of each reference row's sonnets and of the real held-out
    sonnets of `split`, by name, against the training sonnets and every held-out true sonnet (dev and test where
    present) but the prompt's own; None when the split's true sonnets are not in `folder`."""
    from app.measures import copying_record

    found = _reference_sonnets(folder, split, numbers, tokenizer_dir)
    if found is None:
        return None
    truths, hyps, training = found
    held_out = {str(k): v for other in ("dev", "test")
                for k, v in (SONNETS.split_references(Path(folder), other) or {}).items()}
    texts = {**hyps, REAL_SONNETS: list(truths.values())}
    keys = [str(k) for k in truths]
    return {name: copying_record(keys, [sonnets], [PROMPT_LINES] * len(keys), training, held_out)
            for name, sonnets in texts.items()}


def sonnet_rows(rows: Sequence[dict]) -> list[dict]:
    """The finished rows of the sonnet task (the one scored in chrF): those the sonnet reference rows go with."""
    return [r for r in rows if r["status"] == "done" and r.get("metric") == "chrf"]


def _scored_numbers(run_dir: Path, split: str) -> tuple[int, ...] | None:
    """The sonnet numbers a finished run predicted on `split` (the references are scored on the same)."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        return tuple(s.number for s in read_generated(run_dir / metrics[f"{split}_predictions"]))
    except (OSError, ValueError, KeyError):
        return None


def sonnet_reference_figures(rows: Sequence[dict], samples: int = SAMPLES) -> dict | None:
    """Every reference figure on the prompts the first finished sonnet run of a sweep's `rows` scored: "chrf" and
    "nll" by split, "form" and "copying" on dev; None without a finished sonnet run. Raises OSError or ValueError
    where its data is not found."""
    done = sonnet_rows(rows)
    if not done:
        return None
    run_dir = Path(done[0]["run_dir"])
    folder, tok = str(run_data_folder(run_dir)), saved_settings(run_dir).paths.tokenizer_dir
    numbers = {split: _scored_numbers(run_dir, split) for split in ("dev", "test")}
    return {"chrf": {s: sonnet_reference_intervals(folder, s, numbers[s], tok, samples) for s in numbers},
            "form": sonnet_reference_forms(folder, "dev", numbers["dev"], tok),
            "copying": sonnet_reference_copying(folder, "dev", numbers["dev"], tok),
            "nll": {s: sonnet_reference_nll(folder, s, numbers[s], tok) for s in numbers}}

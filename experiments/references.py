"""What chance looks like, from the data files alone (no model): reference rows for the tables.

chrF weights recall twice as much as precision (beta 2), so any text after the prompt earns character n-grams;
a sonnet score means little without these rows, each scored on the same prompts as the runs, with its
bootstrap 95% interval:

    prompts only          the 3-line prompt, nothing generated
    prompts + random      the prompt, then uniformly random GPT-2 tokens, as many as the true rest of the sonnet
                          has (seeded): what an untrained model writes
    wrong sonnet          the prompt, then the last lines of the training sonnet nearest in length (a real
                          Shakespeare sonnet, just not this one)

Each row's form (14 lines, rhyme scheme, meter, perfect: `app.measures.form_record`) is given too, and that of the
real held-out sonnets themselves: the check's ceiling on Shakespeare's own sonnets.

For the classification tasks the reference is the majority class of the rows scored.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import numpy as np

from .stats import SAMPLES, Interval, bootstrap_chrf, majority_interval, sonnet_references, split_labels

PROMPT_LINES = 3  # the course's held-out prompts are a sonnet's first 3 lines
REFERENCE_NAMES = ("prompts only", "prompts + random tokens", "wrong sonnet (nearest training length)")
REAL_SONNETS = "real held-out sonnets"


def _prompt(text: str) -> str:
    return "\n".join(text.split("\n")[:PROMPT_LINES])


def reference_hypotheses(truths: dict[int, str], training: Sequence[str], tokenizer_dir: str | None = None,
                         seed: int = 0) -> dict[str, list[str]]:
    """The three reference hypotheses for each true sonnet (in `truths` order), by REFERENCE_NAMES."""
    from minigpt2.tokenizer import Tokenizer

    tok = Tokenizer(tokenizer_dir)
    rng = np.random.default_rng(seed)
    prompts, random_, wrong = [], [], []
    for text in truths.values():
        prompt = _prompt(text)
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
                       ) -> tuple[dict[int, str], dict[str, list[str]]] | None:
    """(the true sonnets of `split`, only `numbers` when given; the reference hypotheses for them), or None when
    the split's true sonnets are not in `folder`."""
    from course.files import SONNET_FILES
    from course.readers import read_sonnets

    truths = sonnet_references(Path(folder), split)
    if truths is None:
        return None
    if numbers:
        truths = {k: truths[k] for k in numbers if k in truths}
    training = [s.text for s in read_sonnets(Path(folder) / SONNET_FILES.train)[0]]
    return truths, reference_hypotheses(truths, training, tokenizer_dir)


@functools.lru_cache(maxsize=16)
def sonnet_reference_intervals(folder: str, split: str, numbers: tuple[int, ...] | None = None,
                               tokenizer_dir: str | None = None, samples: int = SAMPLES
                               ) -> dict[str, Interval] | None:
    """chrF of each reference row against the true sonnets of `split` (only `numbers`, the prompts the runs
    scored, when given); None when the split's true sonnets are not in `folder`."""
    found = _reference_sonnets(folder, split, numbers, tokenizer_dir)
    if found is None:
        return None
    truths, hyps = found
    refs = list(truths.values())
    return {name: bootstrap_chrf(h, refs, samples) for name, h in hyps.items()}


@functools.lru_cache(maxsize=16)
def sonnet_reference_forms(folder: str, split: str, numbers: tuple[int, ...] | None = None,
                           tokenizer_dir: str | None = None) -> dict[str, dict] | None:
    """The form (`app.measures.form_record`: 14 lines, rhyme scheme, meter, perfect, with Wilson intervals) of
    each reference row's sonnets and of the real held-out sonnets themselves, by name; None when the split's
    true sonnets are not in `folder`."""
    from app.measures import form_record

    found = _reference_sonnets(folder, split, numbers, tokenizer_dir)
    if found is None:
        return None
    truths, hyps = found
    texts = {**hyps, REAL_SONNETS: list(truths.values())}
    return {name: form_record([str(k) for k in truths], [sonnets]) for name, sonnets in texts.items()}


def majority_reference(task_name: str, folder: Path, split: str, ids: Sequence[str] | None = None,
                       samples: int = SAMPLES) -> Interval | None:
    """Majority-class accuracy of the rows scored (`ids`; all rows of the split when None), or None when the
    split has no labels beside the data."""
    labels = split_labels(task_name, folder, split)
    if labels is None:
        return None
    values = [labels[i] for i in ids if i in labels] if ids is not None else list(labels.values())
    return majority_interval(values, samples) if values else None

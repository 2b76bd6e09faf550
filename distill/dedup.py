"""Near-duplicate and held-out-leak filtering by character n-gram overlap.

A text becomes the set of its character n-grams (n=8 by default) after lower-casing and keeping only letters
and single spaces, so punctuation, line breaks and capitals do not hide a copy. Two scores:
- Jaccard |A & B| / |A | B| between two synthetic sonnets: a near-duplicate when it reaches `dup_threshold`;
- overlap |A & B| / min(|A|, |B|) against each held-out dev/test text: a leak when it reaches `leak_threshold`.
  The overlap coefficient, not Jaccard, because the test prompts are only 3 lines: a sonnet that recites them
  and adds 11 lines of its own has a low Jaccard but an overlap near 1.

Thresholds were set on Shakespeare himself (see docs/distillation.md, "Generation"): across all pairs of the 131 real
sonnets, 8-gram Jaccard stays below 0.09 and the overlap coefficient below 0.2, so 0.5 flags copying, not style.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

HELD_OUT_FILES = ("TRUE_sonnets_held_out_dev.txt", "sonnets_held_out_dev.txt", "sonnets_held_out.txt")
_NOT_LETTER = re.compile(r"[^a-z]+")


def normalize(text: str) -> str:
    """Lower-case letters separated by single spaces ("O'er the sea,\\nlove!" -> "o er the sea love")."""
    return _NOT_LETTER.sub(" ", text.lower().replace("\u2019", "'")).strip()


def shingles(text: str, n: int = 8) -> frozenset[str]:
    """The set of character n-grams of the normalised text (the whole text if it is shorter than n)."""
    t = normalize(text)
    if len(t) <= n:
        return frozenset([t]) if t else frozenset()
    return frozenset(t[i:i + n] for i in range(len(t) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def overlap(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / min(len(a), len(b)) if a and b else 0.0


def load_held_out(data_dir: str | Path) -> list[tuple[str, str]]:
    """The held-out dev/test sonnets (or their prompt lines) found in `data_dir`, as (name, text)."""
    from distill.check import read_sonnet_texts

    data_dir = Path(data_dir)
    found = []
    for fname in HELD_OUT_FILES:
        if (data_dir / fname).is_file():
            found += [(f"{fname}#{name}", text) for name, text in read_sonnet_texts(data_dir / fname)]
    return found


@dataclass
class DedupIndex:
    """Keeps the accepted texts; `reject_reason(text)` says why a new one must be dropped, or None."""

    held_out: list[tuple[str, str]] = field(default_factory=list)
    dup_threshold: float = 0.5
    leak_threshold: float = 0.5
    n: int = 8

    def __post_init__(self) -> None:
        self._held = [(name, shingles(text, self.n)) for name, text in self.held_out]
        self._kept: list[tuple[str, frozenset[str]]] = []

    def reject_reason(self, text: str) -> str | None:
        """'leak: ...' when close to a held-out text, 'near-duplicate: ...' when close to a kept one, else None."""
        s = shingles(text, self.n)
        for name, h in self._held:
            score = overlap(s, h)
            if score >= self.leak_threshold:
                return f"leak: overlap {score:.2f} with held-out {name}"
        for name, k in self._kept:
            score = jaccard(s, k)
            if score >= self.dup_threshold:
                return f"near-duplicate: jaccard {score:.2f} with {name}"
        return None

    def add(self, name: str, text: str) -> None:
        self._kept.append((name, shingles(text, self.n)))

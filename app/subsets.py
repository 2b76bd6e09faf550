"""Honest subsets for `--max-train N` / `--max-eval N`: a seeded random sample, never the first N rows.

The first rows of a course file are not a sample of it (the first 128 SST dev rows are mostly classes 3 and 4),
so a smoke figure on them mostly measures that slice's majority class. Here the rows are drawn with the run's
seed, stratified by label where every row has one (each class keeps its share, largest remainder first), and
kept in file order. The run folder records which ids were chosen (`subsets.json`) and a hash and count of them in
config.json's fingerprint.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Sequence

from tasks.base import Example

SUBSETS_FILE = "subsets.json"


def _rng(seed: int, split: str) -> random.Random:
    # One stream per split, so the dev choice does not depend on the size of the training set.
    return random.Random(f"minigpt2-subset:{seed}:{split}")


def choose(examples: Sequence[Example], n: int | None, seed: int, split: str) -> list[Example]:
    """A seeded random subset of `n` examples (all when n is None or >= their number), stratified by label when
    every example has one; in their original order."""
    if n is None or n >= len(examples):
        return list(examples)
    rng = _rng(seed, split)
    if all(e.label is not None for e in examples):
        groups: dict[int, list[int]] = {}
        for i, e in enumerate(examples):
            groups.setdefault(int(e.label), []).append(i)  # type: ignore[arg-type]
        labels = sorted(groups)
        shares = {lab: n * len(groups[lab]) / len(examples) for lab in labels}
        quota = {lab: int(shares[lab]) for lab in labels}
        # Largest remainder first; ties broken by the seeded generator, not by the label's value.
        order = sorted(labels, key=lambda lab: (-(shares[lab] - quota[lab]), rng.random()))
        for lab in order[:n - sum(quota.values())]:
            quota[lab] += 1
        chosen = [i for lab in labels for i in rng.sample(groups[lab], quota[lab])]
    else:
        chosen = rng.sample(range(len(examples)), n)
    return [examples[i] for i in sorted(chosen)]


def ids_sha256(ids: Sequence[str]) -> str:
    """sha256 of the chosen ids, one per line, in order."""
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def describe(full: dict[str, int], chosen: dict[str, list[Example]]) -> dict[str, Any]:
    """The record of a run's subsets: per split, rows available, rows chosen, their ids and the ids' hash."""
    out: dict[str, Any] = {}
    for split, examples in chosen.items():
        ids = [e.id for e in examples]
        out[split] = {"of": full[split], "n": len(ids), "sha256": ids_sha256(ids), "ids": ids}
    return out

"""The record of a run's `--max-train N` / `--max-eval N` subsets.

The tasks draw them (`tasks.base.sample_indices`: seeded by the run's seed, stratified by label where there is
one, in file order, never the first N rows). The run folder records which ids were chosen: `subsets.json` holds
the seed and the ids per split, config.json's fingerprint their count and sha256, so a run says what it scored.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

from tasks.base import Example

SUBSETS_FILE = "subsets.json"


def ids_sha256(ids: Sequence[str]) -> str:
    """sha256 of the chosen ids, one per line, in order."""
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def describe(chosen: dict[str, list[Example]]) -> dict[str, Any]:
    """Per split: how many rows were chosen, their ids and the ids' hash."""
    out: dict[str, Any] = {}
    for split, examples in chosen.items():
        ids = [e.id for e in examples]
        out[split] = {"n": len(ids), "sha256": ids_sha256(ids), "ids": ids}
    return out

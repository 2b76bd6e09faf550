"""Load synthetic sonnets for mixing into the sonnet task's training set (dev/test stay real)."""
from __future__ import annotations

from pathlib import Path

from distill.check import is_perfect
from distill.records import SyntheticFileError, load_records

FILTERS = ("all", "perfect")


def to_course_layout(text: str) -> str:
    """A sonnet as the course's sonnets.txt lays it out: no blank lines, the couplet indented two spaces."""
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if len(lines) == 14:
        lines[12:] = ["  " + ln for ln in lines[12:]]
    return "\n".join(lines)


def load_synthetic(path: str | Path, n: int | None = None, filter: str = "all") -> list[str]:
    """The kept sonnets of a `distill.generate` JSONL file, in id order.

    Id order (not completion or file order) makes "the first n" the same set however the network answered.
    filter="perfect" keeps only those passing `distill.check` (re-checked here, not read from the file, so a
    file from an older checker is judged by today's rules). `n` takes the first n after filtering and is an
    error if the file has fewer: a run that asked for 500 synthetic sonnets must not quietly train on 300.
    A repeated id or kept text, bad JSON, or an unreadable file is a `SyntheticFileError` naming file:line.
    """
    if filter not in FILTERS:
        raise SyntheticFileError(f"synthetic filter must be one of {FILTERS}, got {filter!r}")
    if n is not None and n < 0:
        raise SyntheticFileError(f"synthetic n must be >= 0, got {n}")
    path = Path(path)
    texts = []
    for _, rec in load_records(path, fields=("id", "text")):
        if rec.get("status", "kept") != "kept" or not rec["text"].strip():
            continue
        if filter == "perfect" and not is_perfect(rec["text"]):
            continue
        texts.append(rec["text"].strip())
    if n is not None:
        if len(texts) < n:
            raise SyntheticFileError(f"{path}: asked for {n} synthetic sonnets (filter={filter}) but it has only "
                                     f"{len(texts)}")
        texts = texts[:n]
    return texts

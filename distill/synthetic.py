"""Load synthetic sonnets for mixing into the sonnet task's training set (dev/test stay real)."""
from __future__ import annotations

from pathlib import Path

from distill.check import MissingSonnetFile, SonnetFileError, is_perfect, read_jsonl

FILTERS = ("all", "perfect")


def to_course_layout(text: str) -> str:
    """A sonnet as the course's sonnets.txt lays it out: no blank lines, the couplet indented two spaces."""
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if len(lines) == 14:
        lines[12:] = ["  " + ln for ln in lines[12:]]
    return "\n".join(lines)


def load_synthetic(path: str | Path, n: int | None = None, filter: str = "all") -> list[str]:
    """The kept sonnets of a `distill.generate` JSONL file, in file order.

    filter="perfect" keeps only those passing `distill.check` (re-checked here, not read from the file, so a
    file from an older checker is judged by today's rules). `n` takes the first n after filtering and is an
    error if the file has fewer: a run that asked for 500 synthetic sonnets must not quietly train on 300.
    """
    if filter not in FILTERS:
        raise SonnetFileError(f"synthetic filter must be one of {FILTERS}, got {filter!r}")
    path = Path(path)
    if not path.is_file():
        raise MissingSonnetFile(f"{path}: no such synthetic sonnet file")
    texts = []
    for _, rec in read_jsonl(path):
        if rec.get("status", "kept") != "kept" or not rec["text"].strip():
            continue
        if filter == "perfect" and not is_perfect(rec["text"]):
            continue
        texts.append(rec["text"].strip())
    if n is not None:
        if n < 0:
            raise SonnetFileError(f"synthetic n must be >= 0, got {n}")
        if len(texts) < n:
            raise SonnetFileError(f"{path}: asked for {n} synthetic sonnets (filter={filter}) but it has only "
                             f"{len(texts)}")
        texts = texts[:n]
    return texts

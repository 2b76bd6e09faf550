"""Converters from the public sources to the course's file formats (byte layout as the course's files: header
line, tab separation, index column, CRLF where the course has it). docs/data.md ("Sources") says what differs in
content."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from pathlib import Path
from typing import Iterable, Sequence

from minigpt2.atomic import atomic_write
from minigpt2.errors import UserError

from .jsonl import JsonLineError, parse_jsonl
from .sonnets import sonnet_file


class DataFormatError(UserError, ValueError):
    """A source file that does not look like what the converter expects (file, line and what was expected)."""


QQP_TRAIN_SIZE = 363_846  # GLUE QQP train rows: validation rows get index QQP_TRAIN_SIZE + idx
SST_LABELS = range(5)


# ---- ids and file writing -------------------------------------------------------------------------------------------
def row_id(task: str, key: str) -> str:
    """A stable 25-hex-digit id, the width of the course's ids (theirs are not derivable from the text)."""
    return hashlib.sha256(f"minigpt2:{task}:{key}".encode()).hexdigest()[:25]


def _tsv(rows: Iterable[Sequence[object]], newline: str) -> bytes:
    """Tab-separated rows with csv quoting of fields holding quotes (as the course files, read with csv)."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator=newline, quoting=csv.QUOTE_MINIMAL)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def write_labelled(path: Path, rows: Sequence[tuple[str, str, str]], label_col: str, newline: str = "\n") -> None:
    """train/dev layout: header `\\tid\\tsentence\\t<label>`, rows `index, id, sentence, label`."""
    atomic_write(path, _tsv([("", "id", "sentence", label_col)]
                             + [(i, rid, text, label) for i, (rid, text, label) in enumerate(rows)], newline))


def write_student(path: Path, rows: Sequence[tuple[str, str, str]]) -> None:
    """test-student layout of SST/CFIMDB: header `0\\t\\tid\\tsentence`, rows `i+1, float(i), id, sentence`."""
    atomic_write(path, _tsv([("0", "", "id", "sentence")]
                             + [(i + 1, float(i), rid, text) for i, (rid, text, _) in enumerate(rows)], "\n"))


def write_labels(path: Path, pairs: Iterable[tuple[str, str]], label_col: str, newline: str = "\n") -> None:
    """Labels of a test split, to score predictions by id: `id\\t<label>`."""
    atomic_write(path, _tsv([("id", label_col), *pairs], newline))


# ---- SST-5 ---------------------------------------------------------------------------------------------------------
def sst5_rows(path: Path) -> list[tuple[str, str]]:
    """(text, label) of a SetFit/sst5 jsonl file; each line `{"text": ..., "label": 0-4, "label_text": ...}`."""
    try:
        records = parse_jsonl(path.read_text(encoding="utf-8"))
    except JsonLineError as e:
        raise DataFormatError(f"{path}:{e.lineno}: not a JSON line ({e.msg})") from None
    rows = []
    for n, rec in records:
        if not isinstance(rec, dict) or "text" not in rec or "label" not in rec:
            raise DataFormatError(f"{path}:{n}: expected keys 'text' and 'label', got "
                                  f"{sorted(rec) if isinstance(rec, dict) else type(rec).__name__}")
        if rec["label"] not in SST_LABELS:
            raise DataFormatError(f"{path}:{n}: label {rec['label']!r} is not one of 0-4")
        rows.append((str(rec["text"]), str(rec["label"])))
    return rows


def write_sentiment(task: str, splits: dict[str, list[tuple[str, str]]], out: Path) -> None:
    """(text, label) rows per split -> ids-<task>-{train,dev}.csv, ids-<task>-test-student.csv (no labels) and
    ids-<task>-test-labels.csv."""
    rows = {split: [(row_id(task, f"{split}:{i}"), " " + text, label) for i, (text, label) in enumerate(pairs)]
            for split, pairs in splits.items()}
    write_labelled(out / f"ids-{task}-train.csv", rows["train"], "sentiment")
    write_labelled(out / f"ids-{task}-dev.csv", rows["dev"], "sentiment")
    write_student(out / f"ids-{task}-test-student.csv", rows["test"])
    write_labels(out / f"ids-{task}-test-labels.csv", [(rid, lab) for rid, _, lab in rows["test"]], "sentiment")


def convert_sst(sources: dict[str, Path], out: Path) -> None:
    """SetFit/sst5 train/dev/test.jsonl -> ids-sst-*.csv (sentences keep the source's lowercase tokenisation)."""
    write_sentiment("sst", {split: sst5_rows(p) for split, p in sources.items()}, out)


# ---- CFIMDB --------------------------------------------------------------------------------------------------------
_SENTIMENT = {"negative": "0", "positive": "1"}


def cfimdb_rows(path: Path) -> list[tuple[str, str]]:
    """(text, 0/1) of a counterfactually-augmented-imdb tsv: header `Sentiment\\tText` (extra columns ignored)."""
    with open(path, encoding="utf-8", newline="") as f:
        # Quotes in reviews are text, not CSV quoting: split on tabs only.
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or "Sentiment" not in header or "Text" not in header:
            raise DataFormatError(f"{path}:1: expected a header with columns 'Sentiment' and 'Text', got {header}")
        si, ti = header.index("Sentiment"), header.index("Text")
        rows = []
        for n, rec in enumerate(reader, 2):
            if not rec:
                continue
            if len(rec) != len(header):
                raise DataFormatError(f"{path}:{n}: expected {len(header)} tab-separated fields {header}, "
                                      f"got {len(rec)}")
            label = _SENTIMENT.get(rec[si].strip().lower())
            if label is None:
                raise DataFormatError(f"{path}:{n}: Sentiment {rec[si]!r} is not Positive or Negative")
            rows.append((rec[ti], label))
    return rows


def convert_cfimdb(sources: dict[str, Path], out: Path) -> None:
    """counterfactually-augmented-imdb train/dev/test.tsv -> ids-cfimdb-*.csv (Positive -> 1, Negative -> 0)."""
    write_sentiment("cfimdb", {split: cfimdb_rows(p) for split, p in sources.items()}, out)


# ---- Quora (GLUE QQP) ----------------------------------------------------------------------------------------------
QQP_COLUMNS = ("question1", "question2", "label", "idx")


def qqp_rows(path: Path) -> list[tuple[str, str, int, int]]:
    """(question1, question2, label, idx) of a GLUE QQP parquet file."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own types for a file that is not parquet
        raise DataFormatError(f"{path}: not a readable parquet file ({e})") from None
    missing = [c for c in QQP_COLUMNS if c not in table.column_names]
    if missing:
        raise DataFormatError(f"{path}: expected columns {list(QQP_COLUMNS)}, missing {missing} "
                              f"(has {table.column_names})")
    cols = [table.column(c).to_pylist() for c in QQP_COLUMNS]
    rows = list(zip(*cols))
    for n, (_, _, label, _) in enumerate(rows):
        if label not in (0, 1):
            raise DataFormatError(f"{path}: row {n}: label {label!r} is not 0 or 1 (GLUE's hidden test split "
                                  "has label -1; use train and validation)")
    return rows


def quora_split(origin: str, idx: int) -> str:
    """Which course split a QQP pair goes to: a hash of (origin, idx), so the split never depends on library
    versions or row order. 70 / 10 / 20 % for train / dev / test, the proportions of the course's Quora files."""
    bucket = int(hashlib.sha256(f"qqp:{origin}:{idx}".encode()).hexdigest()[:8], 16) % 10
    return "test" if bucket < 2 else "dev" if bucket == 2 else "train"


def convert_quora(sources: dict[str, Path], out: Path) -> None:
    """GLUE QQP train + validation -> quora-{train,dev,test-student}.csv (+ test labels), CRLF as the course."""
    splits: dict[str, list[tuple[object, ...]]] = {"train": [], "dev": [], "test": []}
    for origin in ("train", "validation"):
        offset = 0 if origin == "train" else QQP_TRAIN_SIZE
        for q1, q2, label, idx in qqp_rows(sources[origin]):
            index = offset + idx
            splits[quora_split(origin, idx)].append((index, row_id("quora", str(index)), q1, q2, f"{label:.1f}"))
    header = ("", "id", "sentence1", "sentence2", "is_duplicate")
    atomic_write(out / "quora-train.csv", _tsv([header, *splits["train"]], "\r\n"))
    atomic_write(out / "quora-dev.csv", _tsv([header, *splits["dev"]], "\r\n"))
    atomic_write(out / "quora-test-student.csv", _tsv([header[:4], *(r[:4] for r in splits["test"])], "\r\n"))
    write_labels(out / "quora-test-labels.csv", [(r[1], r[4]) for r in splits["test"]], "is_duplicate", "\r\n")


# ---- sonnets (Gutenberg eBook 1041) --------------------------------------------------------------------------------
_ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100}
_ROMAN_LINE = re.compile(r"[IVXLC]+\.?")
_START = re.compile(r"^\*\*\*\s*START OF", re.I)
_END = re.compile(r"^(\*\*\*\s*END OF|End of (the )?Project Gutenberg)", re.I)
_TYPOGRAPHY = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2014": "--",
                             "\ufeff": None})

SONNET_TRAIN = range(1, 132)
SONNET_DEV = range(132, 144)
# The course's test prompts are numbered 145-156: sonnets 145-154, then 138 and 144.
SONNET_TEST = {145 + i: n for i, n in enumerate([*range(145, 155), 138, 144])}


def roman_to_int(s: str) -> int:
    total = 0
    for a, b in zip(s, s[1:] + " "):
        v = _ROMAN[a]
        total += -v if b != " " and _ROMAN[b] > v else v
    return total


def parse_gutenberg_sonnets(text: str, source: str = "pg1041.txt") -> dict[int, list[str]]:
    """Sonnet number -> its lines, from the plain text of Gutenberg eBook 1041 (either the older layout with
    indented lines and straight quotes or the newer one with curly quotes). Lines indented deeper than the rest of
    their sonnet (the couplet) keep a two-space indent, as in the course file; quotes become straight."""
    lines = text.translate(_TYPOGRAPHY).splitlines()
    start = next((i + 1 for i, ln in enumerate(lines) if _START.match(ln.strip())), 0)
    end = next((i for i, ln in enumerate(lines) if i >= start and _END.match(ln.strip())), len(lines))
    sonnets: dict[int, list[str]] = {}
    i = start
    while i < end:
        head = lines[i].strip()
        if not _ROMAN_LINE.fullmatch(head):
            i += 1
            continue
        number = roman_to_int(head.rstrip("."))
        j = i + 1
        while j < end and not lines[j].strip():
            j += 1
        body = []
        while j < end and lines[j].strip():  # a sonnet is one block of non-blank lines
            body.append(lines[j].rstrip())
            j += 1
        # A numeral followed by another numeral belongs to a table of contents, not to a sonnet.
        is_sonnet = bool(body) and not _ROMAN_LINE.fullmatch(body[0].strip())
        if is_sonnet and (number == 1 or (sonnets and number == len(sonnets) + 1)):
            if number == 1:
                sonnets = {}  # a contents list, if any, came first: start over at the real sonnet I
            base = min(len(ln) - len(ln.lstrip()) for ln in body)
            sonnets[number] = [("  " if len(ln) - len(ln.lstrip()) > base else "") + ln.strip() for ln in body]
            i = j
            continue
        if sonnets:
            raise DataFormatError(f"{source}:{i + 1}: heading {head!r} = {number}, expected sonnet "
                                  f"{len(sonnets) + 1} with its lines next")
        i += 1
    if len(sonnets) != 154:
        raise DataFormatError(f"{source}: found sonnets 1-{len(sonnets)}, expected 154 Roman-numeral headed "
                              "sonnets (is this Project Gutenberg eBook 1041?)")
    return sonnets


def convert_sonnets(source: Path, out: Path) -> None:
    """pg1041.txt -> sonnets.txt (1-131), dev prompts/truths (132-143), test prompts/truths (145-156)."""
    sonnets = parse_gutenberg_sonnets(source.read_text(encoding="utf-8-sig"), str(source))
    dev = [(n, sonnets[n]) for n in SONNET_DEV]
    test = [(k, sonnets[n]) for k, n in SONNET_TEST.items()]
    atomic_write(out / "sonnets.txt", sonnet_file([(n, sonnets[n]) for n in SONNET_TRAIN], "\r\n\r\n"))
    atomic_write(out / "sonnets_held_out_dev.txt", sonnet_file([(n, b[:3]) for n, b in dev], ""))
    atomic_write(out / "TRUE_sonnets_held_out_dev.txt", sonnet_file(dev, ""))
    atomic_write(out / "sonnets_held_out.txt", sonnet_file([(n, b[:3]) for n, b in test], "\r\n"))
    atomic_write(out / "TRUE_sonnets_held_out.txt", sonnet_file(test, ""))

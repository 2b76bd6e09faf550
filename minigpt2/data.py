"""Fetch the task data from public sources and write it in the course's file formats.

    python -m minigpt2.data fetch --task all --data-dir data

| task   | source (fetched through `minigpt2.download`)                 | files written                              |
|--------|---------------------------------------------------------------|--------------------------------------------|
| sst    | hub dataset SetFit/sst5: train/dev/test.jsonl                 | ids-sst-{train,dev,test-student}.csv       |
| cfimdb | hub dataset tasksource/counterfactually-augmented-imdb: *.tsv | ids-cfimdb-{train,dev,test-student}.csv    |
| quora  | hub dataset nyu-mll/glue, qqp train + validation parquet      | quora-{train,dev,test-student}.csv         |
| sonnet | Project Gutenberg eBook 1041, plain text                      | sonnets.txt, sonnets_held_out{,_dev}.txt   |

Test-student files carry no labels, as in the course; the labels sit beside them in `*-test-labels.csv` (and the
full test sonnets in `TRUE_sonnets_held_out.txt`) so users can score themselves. The byte layout of every file
(header line, tab separation, index column, CRLF where the course has it) follows the course files; see
docs/data.md ("Sources") for what differs in content.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import sys
from pathlib import Path
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .download import DownloadError, HubFile, env_offline, fetch_hub_file, fetch_url
from .errors import UserError


class DataFormatError(UserError, ValueError):
    """A source file that does not look like what the converter expects (file, line and what was expected)."""


class JsonLineError(ValueError):
    """A line of a JSONL text that is not JSON; callers turn it into their own error naming the file."""

    def __init__(self, lineno: int, msg: str, cut_off: bool) -> None:
        super().__init__(f"line {lineno}: {msg}")
        self.lineno, self.msg = lineno, msg
        self.cut_off = cut_off  # the last line, with no newline after it: what an interrupted writer leaves


def parse_jsonl(text: str) -> list[tuple[int, object]]:
    """(line number, value) of each non-blank line of a JSONL text, in order; the project's one JSONL reader.

    A line that is not JSON raises `JsonLineError` with its number and the parser's message.
    """
    lines = text.split("\n")
    values = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            values.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise JsonLineError(lineno, e.msg, cut_off=lineno == len(lines)) from None
    return values


TASKS = ("sst", "cfimdb", "quora", "sonnet")

# The files each task writes; the fine-tune command needs the first three of each (train, dev, test inputs).
FILES: dict[str, tuple[str, ...]] = {
    "sst": ("ids-sst-train.csv", "ids-sst-dev.csv", "ids-sst-test-student.csv", "ids-sst-test-labels.csv"),
    "cfimdb": ("ids-cfimdb-train.csv", "ids-cfimdb-dev.csv", "ids-cfimdb-test-student.csv",
               "ids-cfimdb-test-labels.csv"),
    "quora": ("quora-train.csv", "quora-dev.csv", "quora-test-student.csv", "quora-test-labels.csv"),
    "sonnet": ("sonnets.txt", "sonnets_held_out_dev.txt", "TRUE_sonnets_held_out_dev.txt", "sonnets_held_out.txt",
               "TRUE_sonnets_held_out.txt"),
}

# Pinned sources. Revisions are the commits we could verify hold these files (SetFit/sst5: head of main, 3 commits;
# counterfactually-augmented-imdb: head of main, 4 commits; glue: the commit "Add qqp data files" that added the
# parquet files). The SST-5 sha256 values are those `datasets` recorded when downloading from that very revision.
# Where no sha256 is pinned, the hub's ETag is checked and the first download's sha256 is locked (see download.py).
SST5_REVISION = "e51bdcd8cd3a30da231967c1a249ba59361279a3"
SST5_SHA256 = {"train": "46bde4fb5abc93ffbadfa9a9f67de17c08a2f535cfb5756c59188d070434f433",
               "dev": "4369df4d4229e736fa734af49b342c7d6002c4d8514d9c206a5aa26edc620b79",
               "test": "1384216112a34f3d70b6fa210762f3399bb080410c0456ac6e54a5cb413f04b2"}
SST5 = {split: HubFile("SetFit/sst5", f"{split}.jsonl", "dataset", SST5_REVISION, sha)
        for split, sha in SST5_SHA256.items()}
CFIMDB = {split: HubFile("tasksource/counterfactually-augmented-imdb", f"{split}.tsv", "dataset",
                         "fd42efb815508d02beb7d478eae41a8a2e7100a3") for split in ("train", "dev", "test")}
QQP = {split: HubFile("nyu-mll/glue", f"qqp/{split}-00000-of-00001.parquet", "dataset",
                      "169a67d6d185e00f8e46409cc182dd6e741b54b7") for split in ("train", "validation")}
QQP_TRAIN_SIZE = 363_846  # GLUE QQP train rows: validation rows get index QQP_TRAIN_SIZE + idx
GUTENBERG_URL = "https://www.gutenberg.org/cache/epub/1041/pg1041.txt"

SST_LABELS = range(5)


# ---- ids and file writing -------------------------------------------------------------------------------------------
def row_id(task: str, key: str) -> str:
    """A stable 25-hex-digit id, the width of the course's ids (theirs are not derivable from the text)."""
    return hashlib.sha256(f"minigpt2:{task}:{key}".encode()).hexdigest()[:25]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _tsv(rows: Iterable[Sequence[object]], newline: str) -> bytes:
    """Tab-separated rows with csv quoting of fields holding quotes (as the course files, read with csv)."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator=newline, quoting=csv.QUOTE_MINIMAL)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def write_labelled(path: Path, rows: Sequence[tuple[str, str, str]], label_col: str, newline: str = "\n") -> None:
    """train/dev layout: header `\\tid\\tsentence\\t<label>`, rows `index, id, sentence, label`."""
    _write_atomic(path, _tsv([("", "id", "sentence", label_col)]
                             + [(i, rid, text, label) for i, (rid, text, label) in enumerate(rows)], newline))


def write_student(path: Path, rows: Sequence[tuple[str, str, str]]) -> None:
    """test-student layout of SST/CFIMDB: header `0\\t\\tid\\tsentence`, rows `i+1, float(i), id, sentence`."""
    _write_atomic(path, _tsv([("0", "", "id", "sentence")]
                             + [(i + 1, float(i), rid, text) for i, (rid, text, _) in enumerate(rows)], "\n"))


def write_labels(path: Path, pairs: Iterable[tuple[str, str]], label_col: str, newline: str = "\n") -> None:
    """Labels of a test split, to score predictions by id: `id\\t<label>`."""
    _write_atomic(path, _tsv([("id", label_col), *pairs], newline))


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
    _write_atomic(out / "quora-train.csv", _tsv([header, *splits["train"]], "\r\n"))
    _write_atomic(out / "quora-dev.csv", _tsv([header, *splits["dev"]], "\r\n"))
    _write_atomic(out / "quora-test-student.csv", _tsv([header[:4], *(r[:4] for r in splits["test"])], "\r\n"))
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


SONNET_HEADER = ("Sonnets", "by William Shakespeare", "Project Gutenberg eBook #1041",
                 "https://www.gutenberg.org/ebooks/1041",
                 "Converted to the course layout by minigpt2.data (Gutenberg text, not the Folger edition)",
                 "Roman-numeral headings replaced by numbers; curly quotes made straight",
                 "Public domain in the USA", "", "", "", "")


def sonnet_file(blocks: Sequence[tuple[int, Sequence[str]]], trailer: str) -> bytes:
    """The course layout: an 11-line header, then `number`, a blank line, the lines, a blank line between
    sonnets; CRLF line ends. `trailer` is what follows the last line (the course files differ here)."""
    lines = list(SONNET_HEADER)
    for k, (number, body) in enumerate(blocks):
        lines += [str(number), "", *body] + ([""] if k < len(blocks) - 1 else [])
    return ("\r\n".join(lines) + trailer).encode("utf-8")


@dataclass(frozen=True)
class Sonnet:
    """A numbered sonnet (or prompt) and its lines, as printed."""

    number: int
    lines: tuple[str, ...]
    line: int = field(default=0, compare=False)  # where its number stands in the file (1-based)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


_NUMBER_LINE = re.compile(r"^\s*(\d+)\s*$")


def is_number_line(line: str) -> bool:
    """True for a line holding only a sonnet's number, which starts a sonnet in the course layout."""
    return _NUMBER_LINE.match(line) is not None


def parse_sonnets(text: str) -> list[Sonnet]:
    """The sonnets of a file in the course layout (what `sonnet_file` writes, and the generated-sonnets files):
    a header, then per sonnet its number on a line, a blank line, its lines. Empty when no number line is found.

    Anything before the first number line is the header. Blank lines between sonnets are dropped; line ends
    (CRLF or LF) and trailing spaces are normalised; a couplet's leading indentation is kept.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    sonnets: list[Sonnet] = []
    number: int | None = None
    body: list[str] = []
    start = 0
    for n, raw in enumerate(lines, start=1):
        m = _NUMBER_LINE.match(raw)
        if m:
            if number is not None:
                sonnets.append(Sonnet(number, tuple(body), start))
            number, body, start = int(m.group(1)), [], n
        elif number is not None and raw.strip():
            body.append(raw.rstrip())
    if number is not None:
        sonnets.append(Sonnet(number, tuple(body), start))
    return sonnets


def convert_sonnets(source: Path, out: Path) -> None:
    """pg1041.txt -> sonnets.txt (1-131), dev prompts/truths (132-143), test prompts/truths (145-156)."""
    sonnets = parse_gutenberg_sonnets(source.read_text(encoding="utf-8-sig"), str(source))
    dev = [(n, sonnets[n]) for n in SONNET_DEV]
    test = [(k, sonnets[n]) for k, n in SONNET_TEST.items()]
    _write_atomic(out / "sonnets.txt", sonnet_file([(n, sonnets[n]) for n in SONNET_TRAIN], "\r\n\r\n"))
    _write_atomic(out / "sonnets_held_out_dev.txt", sonnet_file([(n, b[:3]) for n, b in dev], ""))
    _write_atomic(out / "TRUE_sonnets_held_out_dev.txt", sonnet_file(dev, ""))
    _write_atomic(out / "sonnets_held_out.txt", sonnet_file([(n, b[:3]) for n, b in test], "\r\n"))
    _write_atomic(out / "TRUE_sonnets_held_out.txt", sonnet_file(test, ""))


# ---- fetch -----------------------------------------------------------------------------------------------------------
def fetch(task: str, data_dir: Path, offline: bool = False, cache: Path | None = None) -> list[Path]:
    """Download one task's sources (or all with task="all") and write its course-format files into `data_dir`."""
    tasks = TASKS if task == "all" else (task,)
    written: list[Path] = []
    data_dir = Path(data_dir)
    for t in tasks:
        if t == "sst":
            convert_sst({s: fetch_hub_file(f, cache, offline) for s, f in SST5.items()}, data_dir)
        elif t == "cfimdb":
            convert_cfimdb({s: fetch_hub_file(f, cache, offline) for s, f in CFIMDB.items()}, data_dir)
        elif t == "quora":
            convert_quora({s: fetch_hub_file(f, cache, offline) for s, f in QQP.items()}, data_dir)
        elif t == "sonnet":
            convert_sonnets(fetch_url(GUTENBERG_URL, "pg1041.txt", cache=cache, offline=offline), data_dir)
        else:
            raise ValueError(f"unknown task {t!r}; expected one of {', '.join(TASKS)} or all")
        written += [data_dir / name for name in FILES[t]]
    return written


def missing_files(task: str, data_dir: Path) -> list[Path]:
    """The files of `task` (train, dev, test inputs) that are not in `data_dir`."""
    if task not in FILES:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    needed = FILES[task][:4] if task == "sonnet" else FILES[task][:3]
    return [Path(data_dir) / name for name in needed if not (Path(data_dir) / name).is_file()]


def ensure_task_data(task: str, data_dir: Path, offline: bool = False, cache: Path | None = None) -> None:
    """Make sure `task`'s files are in `data_dir`, fetching them (one line says so) unless `offline` (or
    HF_HUB_OFFLINE=1)."""
    missing = missing_files(task, data_dir)
    if not missing:
        return
    names = ", ".join(p.name for p in missing)
    if offline or env_offline():
        raise DownloadError(f"missing in {data_dir}: {names}. Without --offline they are fetched automatically; "
                            f"or run `python -m minigpt2.data fetch --task {task} --data-dir {data_dir}` on a "
                            "machine with internet and copy the files here.")
    print(f"fetching {task} data into {data_dir} (missing: {names})", flush=True)
    fetch(task, data_dir, offline=False, cache=cache)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minigpt2.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="download the public sources and write the course-format files")
    p.add_argument("--task", default="all", choices=[*TASKS, "all"], help="which task's data to fetch (default all)")
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MINIGPT2_DATA_DIR", "data")),
                   help="folder to write the files into (default $MINIGPT2_DATA_DIR, else ./data)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="download cache (default $MINIGPT2_CACHE or ~/.cache/minigpt2)")
    p.add_argument("--offline", action="store_true",
                   help="use only what is in the cache; fail with instructions instead of downloading")
    args = parser.parse_args(argv)
    try:
        for path in fetch(args.task, args.data_dir, offline=args.offline, cache=args.cache_dir):
            print(path)
    except (DownloadError, DataFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

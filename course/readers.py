"""Readers for the course's data files: tab-separated tables and the sonnet text (the course's own files hold the
Folger edition's text; `python -m course fetch` writes Project Gutenberg's, eBook 1041, in the same layout).

The files carry real-world mess (CRLF line ends, CSV-quoted cells with doubled quotes, HTML `<br />`, an empty
label). A row that cannot be used is *reported* — file, line and why — and skipped, never a crash and never a
silent drop; a missing file or column is a clear error saying how to get the data.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from minigpt2.errors import UserError

from .sonnets import Sonnet, parse_sonnets

DATA_ENV = "MINIGPT2_DATA_DIR"


class DataError(UserError, ValueError):
    """A data file that cannot be used at all (missing column, no sonnets), naming the file."""


class MissingDataError(UserError, FileNotFoundError):
    """Course data files that are not in the data folder."""


@dataclass(frozen=True)
class Malformed:
    """One unusable row: where it is and what is wrong with it."""

    file: str
    line: int
    reason: str
    id: str | None = None  # the row's id, where the file has an id column (e.g. a labels file's row)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class Table:
    """The usable rows of a tab-separated file, and the rows that were skipped."""

    path: Path
    rows: list[dict[str, str]]
    malformed: list[Malformed] = field(default_factory=list)


def data_dir(cli_value: str | os.PathLike | None = None) -> Path:
    """The data folder: `--data-dir`, else `$MINIGPT2_DATA_DIR`, else `data/`."""
    return Path(cli_value or os.environ.get(DATA_ENV) or "data")


def require_files(folder: Path, names: list[str], task: str) -> None:
    """Raise one error naming every missing file and the command that fetches them."""
    missing = [str(folder / n) for n in names if not (folder / n).is_file()]
    if missing:
        raise MissingDataError(
            f"missing data file(s) for task {task!r}: {', '.join(missing)}. Get them with "
            f"`python -m course fetch --task {task}`, or point --data-dir (or ${DATA_ENV}) at the folder "
            "holding the course files.")


def read_utf8(path: Path) -> str:
    """A data file's text; bytes that are not UTF-8 are an error naming the file and line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: bytes that are not UTF-8 ({raw[e.start:e.start + 4]!r}); save the file "
                        "as UTF-8") from None


def clean_text(text: str) -> str:
    """Review/question text as a model should see it: HTML line breaks and runs of whitespace become one space."""
    text = re.sub(r"<br\s*/?>", " ", text, flags=re.IGNORECASE)
    return " ".join(text.split())


def _parse_label(value: str, label: str, label_values: set[int] | None) -> tuple[int | None, str]:
    """A label cell as an integer class, or None and why it is not one."""
    try:
        number = float(value)
    except ValueError:
        return None, f"label {label!r} is {value!r}, not a number"
    if not math.isfinite(number):
        return None, f"label {label!r} is {value!r}, not a finite number"
    parsed = int(number)
    if parsed != number or (label_values is not None and parsed not in label_values):
        return None, f"label {label!r} is {value!r}, expected one of {sorted(label_values or [])}"
    return parsed, ""


def read_table(path: str | os.PathLike, columns: list[str], label: str | None = None,
               label_values: set[int] | None = None) -> Table:
    """Rows of a tab-separated file with a header, keeping `columns` (+ `label`, parsed to an int as a string).

    A row with a missing cell, an empty or unparsable label, or a label outside `label_values` is reported in
    `Table.malformed` with its line number and skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"{path}: no such data file")
    wanted = columns + ([label] if label else [])
    rows: list[dict[str, str]] = []
    bad: list[Malformed] = []
    with io.StringIO(read_utf8(path), newline="") as f:  # newline="" lets csv handle CRLF and quoted newlines
        reader = csv.reader(f, delimiter="\t")
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path}: empty file, expected a header with columns {wanted}") from None
        absent = [c for c in wanted if c not in header]
        if absent:
            raise DataError(f"{path}: missing column(s) {absent} in header {header}; expected {wanted}")
        index = {c: header.index(c) for c in wanted}
        line = reader.line_num
        for cells in reader:
            start, line = line + 1, reader.line_num
            if not cells or all(not c.strip() for c in cells):
                continue  # a blank line (e.g. at the end of the file) is not a row
            if len(cells) < len(header):
                bad.append(Malformed(str(path), start, f"{len(cells)} cells, expected {len(header)}"))
                continue
            row = {c: cells[i].strip() for c, i in index.items()}
            if label:
                parsed, why = _parse_label(row[label], label, label_values)
                if parsed is None:
                    bad.append(Malformed(str(path), start, why, row.get("id")))
                    continue
                row[label] = str(parsed)
            rows.append(row)
    return Table(path, rows, bad)


def read_sonnets(path: str | os.PathLike, expect_lines: int | None = None, first_line: str | None = None
                 ) -> tuple[list[Sonnet], list[Malformed]]:
    """Sonnets of a file in the course layout (parsed by `course.sonnets.parse_sonnets`); those without
    `expect_lines` lines are kept but reported (Shakespeare's 99 has 15 lines and 126 has 12). `first_line`,
    when given, is what the file must start with (a generated-sonnets file's header)."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"{path}: no such data file")
    text = read_utf8(path)
    if first_line is not None and not text.startswith(first_line):
        raise DataError(f"{path}:1: expected the line {first_line!r}")
    sonnets = parse_sonnets(text)
    if not sonnets:
        raise DataError(f"{path}: no numbered sonnets found (expected a number on its own line before each)")
    notes = []
    if expect_lines is not None:
        notes = [Malformed(str(path), s.line, f"sonnet {s.number} has {len(s.lines)} lines, expected {expect_lines}")
                 for s in sonnets if len(s.lines) != expect_lines]
    return sonnets, notes

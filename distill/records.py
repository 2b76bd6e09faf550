"""Reading the JSONL files distill writes, with one clear error per problem naming the file and line.

Shared by `distill.generate` (which resumes a file) and `distill.synthetic` (which trains on one), so both
refuse the same things the same way:
- a path that is a folder, missing, unreadable, or not UTF-8;
- a line that is not a JSON object with the expected fields;
- the same id twice, or the same kept sonnet text twice (it would be counted and trained on twice).

Only a *last* line cut off without its newline is what an interrupted run leaves behind; `distill.generate`
repairs that itself. Anything else wrong in a file was edited or damaged, and the message says so.
"""
from __future__ import annotations

import re
from pathlib import Path

from course.jsonl import JsonLineError, parse_jsonl
from minigpt2.errors import UserError


class SyntheticFileError(UserError, ValueError):
    """A sonnet JSONL file that cannot be used as it is.

    Also a ValueError so callers written before `UserError` existed keep catching it.
    """


def read_file_bytes(path: str | Path, what: str = "synthetic sonnet") -> bytes:
    """The bytes of `path`, or a SyntheticFileError saying why it cannot be read and what to do."""
    path = Path(path)
    if path.is_dir():
        raise SyntheticFileError(f"{path}: is a folder, not a {what} file; give the path of a file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SyntheticFileError(f"{path}: no such {what} file") from None
    except PermissionError:
        raise SyntheticFileError(f"{path}: no permission to read it; fix its permissions (chmod u+rw) or use "
                                 "another file") from None
    except OSError as e:
        raise SyntheticFileError(f"{path}: cannot read it ({e.strerror or e})") from None


def decode_text(path: str | Path, data: bytes) -> str:
    """`data` as UTF-8 (a leading BOM allowed); a SyntheticFileError naming the line of the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise SyntheticFileError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); distill writes "
                                 "UTF-8 JSONL, so this is another kind of file or a damaged one: restore it "
                                 "or use another file") from None


def read_jsonl(path: str | Path, raw: str | None = None,
               fields: tuple[str, ...] = ("text",)) -> list[tuple[int, dict]]:
    """(line number, record) for each non-blank line, in file order.

    A SyntheticFileError names file:line for bad JSON, a non-object, or a missing `fields` entry ("text" must
    be a string). `raw` is the file's text when the caller has already read it.
    """
    raw = decode_text(path, read_file_bytes(path)) if raw is None else raw
    try:
        values = parse_jsonl(raw)
    except JsonLineError as e:
        if e.cut_off:  # no newline after it: the tail a killed writer leaves
            raise SyntheticFileError(
                f"{path}:{e.lineno}: the last line is cut off ({e.msg}), as an interrupted distill.generate "
                "run leaves it; re-run distill.generate with the same --out to repair it") from None
        raise SyntheticFileError(
            f"{path}:{e.lineno}: not valid JSON ({e.msg}); only a cut-off last line is left by an interrupted "
            "run, so this file was edited or damaged: fix or delete that line") from None
    records = []
    for lineno, rec in values:
        missing = [k for k in fields if not isinstance(rec, dict) or k not in rec
                   or (k == "text" and not isinstance(rec[k], str))]
        if missing:
            want = ", ".join(f"a string field '{k}'" if k == "text" else f"'{k}'" for k in fields)
            raise SyntheticFileError(f"{path}:{lineno}: expected a JSON object with {want}")
        records.append((lineno, rec))
    return records


def text_key(text: str) -> str:
    """What makes two sonnet texts "the same": their words, whatever the spacing and line breaks."""
    return " ".join(text.split())


def check_unique(path: str | Path, records: list[tuple[int, dict]]) -> None:
    """Refuse a repeated id, or a kept text that an earlier kept record already has, naming both lines.

    Rejected records may repeat a text (the near-duplicate filter records the copy it rejected).
    """
    first_id: dict[str, int] = {}
    first_text: dict[str, int] = {}
    for lineno, rec in records:
        rid = str(rec["id"])
        if rid in first_id:
            raise SyntheticFileError(f"{path}:{lineno}: id {rid!r} again (first at line {first_id[rid]}); each "
                                     "request is recorded once: delete the repeated line")
        first_id[rid] = lineno
        text = rec.get("text")
        if rec.get("status", "kept") == "kept" and isinstance(text, str) and text.strip():
            key = text_key(text)
            if key in first_text:
                raise SyntheticFileError(f"{path}:{lineno}: the same sonnet as line {first_text[key]} (id "
                                         f"{rid!r}); it would be counted and trained on twice: delete one of them")
            first_text[key] = lineno


def id_order(rid: object) -> tuple:
    """Sort key for ids: digit runs compare as numbers, so "x-10" comes after "x-9" and "1000000" after "999999"."""
    parts = re.split(r"(\d+)", str(rid))
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def load_records(path: str | Path, fields: tuple[str, ...] = ("id", "status"),
                 data: bytes | None = None) -> list[tuple[int, dict]]:
    """(line number, record) of a distill.generate file in id order, refusing what `check_unique` refuses.

    Sorting by id, not trusting file order, keeps "the first n" the same however a file was assembled.
    """
    data = read_file_bytes(path) if data is None else data
    records = read_jsonl(path, decode_text(path, data), fields=fields)
    check_unique(path, records)
    return sorted(records, key=lambda lr: id_order(lr[1]["id"]))


def file_teacher(path: str | Path, records: list[tuple[int, dict]]) -> str | None:
    """The one teacher a generated file's records name (None for an empty file); refuses a file mixing two."""
    first: tuple[int, str] | None = None
    for lineno, rec in records:
        teacher = rec.get("teacher")
        if not isinstance(teacher, str) or not teacher:
            raise SyntheticFileError(f"{path}:{lineno}: expected a string field 'teacher' (which Gemini model "
                                     "wrote this record)")
        if first is None:
            first = (lineno, teacher)
        elif teacher != first[1]:
            raise SyntheticFileError(f"{path}:{lineno}: teacher {teacher!r}, but line {first[0]} has "
                                     f"{first[1]!r}; one file holds one teacher's sonnets")
    return first[1] if first else None

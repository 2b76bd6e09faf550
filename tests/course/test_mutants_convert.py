"""The converters from the public sources to the course's files (course/convert.py): the ids, the splits, the
files' exact bytes, the Gutenberg layouts the sonnet parser must read, and each refusal's whole line."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest

from course import convert
from course.convert import DataFormatError, parse_gutenberg_sonnets
from tests.course.test_data_fetch import FIXTURES, gutenberg_book, roman


def sha_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:25]


def book(sonnets: int = 154, *, start: bool = True, blank_after_heading: bool = True, dots: bool = False,
         contents: str = "", end: str = "*** END OF THE BOOK ***", newline: str = "\n") -> str:
    """A small Gutenberg-like book: numbered headings, 14 lines each (the last two indented), an optional START
    marker, contents list and END marker."""
    parts = ["The Project Gutenberg eBook of Shakespeare's Sonnets", ""]
    if start:
        parts += ["*** START OF THE PROJECT GUTENBERG EBOOK ***", ""]
    parts += [contents] if contents else []
    for n in range(1, sonnets + 1):
        parts += [roman(n) + ("." if dots else "")] + ([""] if blank_after_heading else [])
        parts += [f"Line {k} of sonnet {n}," for k in range(1, 13)] + [f"    Couplet {k} of {n}." for k in (1, 2)]
        parts += [""]
    parts += [end] if end else []
    return newline.join(parts)


# ---- the sonnet parser: the layouts it reads --------------------------------------------------------------------

def test_the_reference_layout_parses_with_the_couplet_indented():
    s = parse_gutenberg_sonnets(book())
    assert sorted(s) == list(range(1, 155))
    assert s[7] == [f"Line {k} of sonnet 7," for k in range(1, 13)] + ["  Couplet 1 of 7.", "  Couplet 2 of 7."]


@pytest.mark.parametrize("layout", [
    dict(start=False),  # no START marker: read from the first line
    dict(blank_after_heading=False),  # the lines right under the numeral
    dict(dots=True),  # "I.", "II.", ...
    dict(end=""),  # no END marker: the last sonnet's last line is the file's last line
    dict(newline="\r\n"),
])
def test_other_layouts_give_the_same_sonnets(layout):
    text = book(**layout)
    if not layout.get("end", True):
        text = text.rstrip("\n")
    assert parse_gutenberg_sonnets(text) == parse_gutenberg_sonnets(book())


def test_a_first_heading_right_after_the_start_marker_or_at_the_first_line_is_read():
    text = book()
    tight = text.replace("*** START OF THE PROJECT GUTENBERG EBOOK ***\n\n", "*** START OF THE PROJECT GUTENBERG "
                                                                               "EBOOK ***\n")
    assert tight != text and parse_gutenberg_sonnets(tight) == parse_gutenberg_sonnets(text)
    headless = book(start=False).split("\n", 2)[2]  # the book starting at "I"
    assert headless.startswith("I\n") and parse_gutenberg_sonnets(headless) == parse_gutenberg_sonnets(text)


def test_a_contents_list_before_the_sonnets_is_skipped_even_right_before_sonnet_one():
    # I II III, each on its own line, then the "I" of sonnet 1 and its lines: each numeral of the list is tried
    # as a heading in turn (a numeral under it: not a sonnet) until the real "I"
    contents = "\n".join(roman(n) for n in range(1, 4))
    text = book(contents=contents, blank_after_heading=False)
    assert "\nI\nII\nIII\nI\nLine 1 of sonnet 1," in text
    assert parse_gutenberg_sonnets(text) == parse_gutenberg_sonnets(book())
    two = book(contents="I\nII\n")  # a two-line contents list: "I" with only "II" under it
    assert parse_gutenberg_sonnets(two) == parse_gutenberg_sonnets(book())


def test_an_end_marker_on_the_first_line_ends_the_text_there():
    text = "*** END OF THE PROJECT GUTENBERG EBOOK ***\n" + book(start=False, end="")
    with pytest.raises(DataFormatError) as e:
        parse_gutenberg_sonnets(text, "book.txt")
    assert str(e.value) == ("book.txt: found sonnets 1-0, expected 154 Roman-numeral headed sonnets (is this "
                            "Project Gutenberg eBook 1041?)")


def test_no_sonnets_and_too_few_sonnets_are_one_error_naming_the_file():
    with pytest.raises(DataFormatError) as e:
        parse_gutenberg_sonnets("nothing here\n")
    assert str(e.value) == ("pg1041.txt: found sonnets 1-0, expected 154 Roman-numeral headed sonnets (is this "
                            "Project Gutenberg eBook 1041?)")
    with pytest.raises(DataFormatError, match=r"^x.txt: found sonnets 1-153, expected 154"):
        parse_gutenberg_sonnets(book(153), "x.txt")


def test_a_heading_out_of_order_names_its_line():
    lines = book().split("\n")
    at = lines.index("V")
    lines[at] = "VI"
    with pytest.raises(DataFormatError) as e:
        parse_gutenberg_sonnets("\n".join(lines), "book.txt")
    assert str(e.value) == f"book.txt:{at + 1}: heading 'VI' = 6, expected sonnet 5 with its lines next"


def test_a_numeral_with_nothing_under_it_after_the_sonnets_is_refused():
    text = book(end="") + "\nCLV"
    with pytest.raises(DataFormatError) as e:
        parse_gutenberg_sonnets(text, "b.txt")
    assert str(e.value) == f"b.txt:{text.count(chr(10)) + 1}: heading 'CLV' = 155, expected sonnet 155 with its " \
                           "lines next"


# ---- sonnet files ------------------------------------------------------------------------------------------------

def test_the_sonnet_files_hold_the_split_with_three_line_prompts_and_their_own_endings(tmp_path):
    src = tmp_path / "pg1041.txt"
    src.write_bytes(gutenberg_book().encode("utf-8"))
    convert.convert_sonnets(src, tmp_path)
    sonnets = parse_gutenberg_sonnets(gutenberg_book())
    text = (tmp_path / "sonnets_held_out_dev.txt").read_bytes().decode()
    for n in range(132, 144):  # each prompt: its number, a blank line, the sonnet's first three lines, no more
        prompt = f"\r\n{n}\r\n\r\n" + "\r\n".join(sonnets[n][:3]) + ("\r\n\r\n" if n < 143 else "")
        assert prompt in text
        assert sonnets[n][3] not in text
    # what follows the last line differs between the course's files: nothing, CRLF, or a blank line
    assert text.endswith(sonnets[143][2])
    assert (tmp_path / "sonnets_held_out.txt").read_bytes().decode().endswith(sonnets[144][2] + "\r\n")
    for name, last in (("TRUE_sonnets_held_out_dev.txt", 143), ("TRUE_sonnets_held_out.txt", 144)):
        assert (tmp_path / name).read_bytes().decode().endswith("\r\n" + sonnets[last][-1])
    assert (tmp_path / "sonnets.txt").read_bytes().decode().endswith(sonnets[131][-1] + "\r\n\r\n")


def test_a_book_that_is_not_eBook_1041_names_the_source_file(tmp_path):
    src = tmp_path / "other.txt"
    src.write_text("\ufeffnot a book of sonnets\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"^" + str(src).replace("\\", "\\\\") + ": found sonnets 1-0"):
        convert.convert_sonnets(src, tmp_path)
    assert not (tmp_path / "sonnets.txt").exists()


# ---- SST-5 and CFIMDB --------------------------------------------------------------------------------------------

def test_sst_errors_are_one_line_with_the_file_line_and_what_was_found(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text('{"text": "a", "label": 1}\n{"text": \n')
    with pytest.raises(DataFormatError) as e:
        convert.sst5_rows(p)
    assert str(e.value) == f"{p}:2: not a JSON line (Expecting value)"
    p.write_text('{"text": "a", "label": 1}\n["a", 1]\n')
    with pytest.raises(DataFormatError) as e:
        convert.sst5_rows(p)
    assert str(e.value) == f"{p}:2: expected keys 'text' and 'label', got list"
    p.write_text('{"label": 1, "sentence": "a"}\n')
    with pytest.raises(DataFormatError) as e:
        convert.sst5_rows(p)
    assert str(e.value) == f"{p}:1: expected keys 'text' and 'label', got ['label', 'sentence']"
    p.write_text('{"text": "caf\u00e9", "label": 4}\n', encoding="utf-8")
    assert convert.sst5_rows(p) == [("caf\u00e9", "4")]


def test_sentiment_ids_are_the_hash_of_task_split_and_row(tmp_path):
    splits = {"train": [("good", "4"), ("bad", "0")], "dev": [("ok", "2")], "test": [("meh", "1")]}
    convert.write_sentiment("sst", splits, tmp_path)
    with open(tmp_path / "ids-sst-train.csv", encoding="utf-8", newline="") as f:
        train = list(csv.reader(f, delimiter="\t"))
    assert train == [["", "id", "sentence", "sentiment"],
                     ["0", sha_id("minigpt2:sst:train:0"), " good", "4"],
                     ["1", sha_id("minigpt2:sst:train:1"), " bad", "0"]]
    labels = (tmp_path / "ids-sst-test-labels.csv").read_bytes()
    assert labels == f"id\tsentiment\n{sha_id('minigpt2:sst:test:0')}\t1\n".encode()


def test_cfimdb_header_blank_lines_and_labels(tmp_path):
    p = tmp_path / "train.tsv"
    for header in ("", "Sentiment\tReview\n", "Label\tText\n"):
        p.write_text(header)
        with pytest.raises(DataFormatError) as e:
            convert.cfimdb_rows(p)
        got = None if not header else header.strip().split("\t")
        assert str(e.value) == f"{p}:1: expected a header with columns 'Sentiment' and 'Text', got {got}"
    p.write_text('Sentiment\tText\nPositive\tgood "one"\n\nnegative \tbad\n')
    assert convert.cfimdb_rows(p) == [('good "one"', "1"), ("bad", "0")]  # rows after a blank line are kept
    p.write_text("Sentiment\tText\nPositive\tgood\nNeutral\tso-so\n")
    with pytest.raises(DataFormatError) as e:
        convert.cfimdb_rows(p)
    assert str(e.value) == f"{p}:3: Sentiment 'Neutral' is not Positive or Negative"


# ---- Quora ---------------------------------------------------------------------------------------------------------

def expected_split(origin: str, idx: int) -> str:
    """The rule docs/data.md states (a hash of (split, idx), 70 / 10 / 20 %), written out: sha256 of
    "qqp:<origin>:<idx>", its first 8 hex digits mod 10: 0-1 test, 2 dev, else train."""
    bucket = int(hashlib.sha256(f"qqp:{origin}:{idx}".encode()).hexdigest()[:8], 16) % 10
    return "test" if bucket < 2 else "dev" if bucket == 2 else "train"


def test_quora_splits_follow_the_hash_rule_seventy_ten_twenty():
    for origin in ("train", "validation"):
        assert [convert.quora_split(origin, i) for i in range(2_000)] == [expected_split(origin, i)
                                                                          for i in range(2_000)]
    counts = {s: 0 for s in ("train", "dev", "test")}
    for i in range(20_000):
        counts[convert.quora_split("validation", i)] += 1
    assert counts == {"train": 14_006, "dev": 2_022, "test": 3_972}  # the rule's counts: 70.0 / 10.1 / 19.9 %


def test_quora_files_ids_columns_and_line_ends(tmp_path):
    sources = {s: FIXTURES / "glue" / "qqp" / f"{s}-00000-of-00001.parquet" for s in ("train", "validation")}
    convert.convert_quora(sources, tmp_path)
    rows = []
    for name in ("quora-train.csv", "quora-dev.csv", "quora-test-student.csv"):
        raw = (tmp_path / name).read_bytes()
        assert b"\n" not in raw.replace(b"\r\n", b"")
        with open(tmp_path / name, encoding="utf-8", newline="") as f:
            table = list(csv.reader(f, delimiter="\t"))
        assert {len(r) for r in table} == ({4} if "student" in name else {5})
        rows += table[1:]
    assert all(r[1] == sha_id(f"minigpt2:quora:{r[0]}") for r in rows)
    labels = (tmp_path / "quora-test-labels.csv").read_bytes()
    assert labels.startswith(b"id\tis_duplicate\r\n") and b"\n" not in labels.replace(b"\r\n", b"")
    assert labels.count(b"\r\n") == sum(1 for r in rows if len(r) == 4) + 1


def test_quora_refusals_name_the_file(tmp_path):
    bad = tmp_path / "train.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataFormatError) as e:
        convert.qqp_rows(bad)
    assert str(e.value).startswith(f"{bad}: not a readable parquet file (")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question1": ["a"], "question2": ["b"], "label": [-1], "idx": [0]}), bad)
    with pytest.raises(DataFormatError) as e:
        convert.qqp_rows(bad)
    assert str(e.value) == (f"{bad}: row 0: label -1 is not 0 or 1 (GLUE's hidden test split has label -1; use "
                            "train and validation)")

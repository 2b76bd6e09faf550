"""The course's prediction and reference files (`course/formats.py`) on tiny hand-made files: the bytes a user's
prediction file holds, how it is read back (every refusal's whole line), which references score a split, and the
scores themselves (accuracy counted by hand, chrF from sacrebleu)."""

from __future__ import annotations

from pathlib import Path

import pytest

from course.formats import read_id_values
from course.readers import DataError


@pytest.mark.parametrize("value", ["--3", "\u00b2", "-", "+3", "3.0", "0x3", "3 4", ""])
def test_a_value_that_is_no_plain_integer_is_one_error_line(tmp_path: Path, value: str):
    # "--3" and "²" passed the old check (lstrip("-").isdigit()) and then int() raised a bare ValueError: a
    # traceback instead of the file and line
    p = tmp_path / "p.csv"
    p.write_text(f"id \t col \nok, -12 \n\nabc, {value} \n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_id_values(p, "col")
    assert str(e.value) == f"{p}:4: expected '<id>, <integer>', got 'abc, {value} '"

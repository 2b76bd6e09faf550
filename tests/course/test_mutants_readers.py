"""The course's table and sonnet readers (course/readers.py): which rows are kept, skipped or reported, and the
exact lines a user reads when a data file is missing, empty or not UTF-8."""
from __future__ import annotations

from pathlib import Path

import pytest

from course.readers import (DATA_ENV, DataError, Malformed, MissingDataError, clean_text, data_dir, read_sonnets,
                            read_table, read_utf8, require_files)


def test_the_data_folder_is_the_flag_then_the_environment_then_data(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert data_dir() == data_dir(None) == data_dir("") == Path("data")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env"
    assert data_dir(tmp_path / "flag") == tmp_path / "flag"


def test_missing_files_are_named_together_with_the_fetch_command(tmp_path):
    (tmp_path / "b.csv").write_text("x")
    with pytest.raises(MissingDataError) as e:
        require_files(tmp_path, ["a.csv", "b.csv", "c.csv"], "sst")
    assert str(e.value) == (
        f"missing data file(s) for task 'sst': {tmp_path / 'a.csv'}, {tmp_path / 'c.csv'}. Get them with "
        "`python -m course fetch --task sst`, or point --data-dir (or $MINIGPT2_DATA_DIR) at the folder holding "
        "the course files.")
    require_files(tmp_path, ["b.csv"], "sst")  # all there: no error


def test_bytes_that_are_not_utf8_name_the_line_and_show_four_bytes(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"id\tsentence\n1\tok\n2\tcaf\xe9 au lait\n")
    with pytest.raises(DataError) as e:
        read_utf8(path)
    # the bad byte is on line 3; the message shows it and the three bytes after it
    assert str(e.value) == f"{path}:3: bytes that are not UTF-8 (b'\\xe9 au'); save the file as UTF-8"
    path.write_bytes(b"\xff\n")
    with pytest.raises(DataError, match=r":1: bytes that are not UTF-8 \(b'\\xff\\n'\)"):
        read_utf8(path)
    path.write_bytes("caf\u00e9\r\n".encode())
    assert read_utf8(path) == "caf\u00e9\r\n"


def test_html_breaks_in_any_case_become_one_space():
    assert clean_text("one<BR />two<Br>three<br/>four  \t five\n") == "one two three four five"


def test_missing_and_empty_tables_say_which_file(tmp_path):
    with pytest.raises(MissingDataError) as e:
        read_table(tmp_path / "none.csv", ["id"])
    assert str(e.value) == f"{tmp_path / 'none.csv'}: no such data file"
    with pytest.raises(MissingDataError) as e:
        read_sonnets(tmp_path / "none.txt")
    assert str(e.value) == f"{tmp_path / 'none.txt'}: no such data file"
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError) as e:
        read_table(tmp_path / "empty.csv", ["id", "sentence"], label="sentiment")
    assert str(e.value) == (f"{tmp_path / 'empty.csv'}: empty file, expected a header with columns "
                            "['id', 'sentence', 'sentiment']")


def test_blank_lines_anywhere_are_skipped_and_rows_after_them_kept(tmp_path):
    path = tmp_path / "t.csv"
    # line 3 is empty, line 4 holds only whitespace cells (as many as the header): neither is a row nor an error
    path.write_text("id\tsentence\tsentiment\n1\tgood\t4\n\n \t \t \n2\tbad\t0\n3\tshort\n\n")
    table = read_table(path, ["id", "sentence"], label="sentiment", label_values={0, 1, 2, 3, 4})
    assert [r["id"] for r in table.rows] == ["1", "2"]
    assert [str(m) for m in table.malformed] == [f"{path}:6: 2 cells, expected 3"]
    assert table.malformed == [Malformed(str(path), 6, "2 cells, expected 3")]


def test_a_quoted_cell_keeps_its_line_breaks_as_the_file_has_them(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'id\tsentence\r\n1\t"first line\r\nsecond"\r\n2\tnext\r\n')
    table = read_table(path, ["id", "sentence"])
    assert table.rows == [{"id": "1", "sentence": "first line\r\nsecond"}, {"id": "2", "sentence": "next"}]
    assert table.malformed == []


def test_a_table_with_lone_cr_line_ends_reads_as_one_with_lf(tmp_path):
    lf, cr = tmp_path / "lf.csv", tmp_path / "cr.csv"
    lf.write_bytes(b"id\tsentence\tsentiment\n1\tgood\t4\n2\tbad\t0\n")
    cr.write_bytes(b"id\tsentence\tsentiment\r1\tgood\t4\r2\tbad\t0\r")
    want = read_table(lf, ["id", "sentence"], label="sentiment")
    got = read_table(cr, ["id", "sentence"], label="sentiment")
    assert got.rows == want.rows == [{"id": "1", "sentence": "good", "sentiment": "4"},
                                     {"id": "2", "sentence": "bad", "sentiment": "0"}]
    assert got.malformed == []

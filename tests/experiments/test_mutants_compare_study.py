"""`python tools/compare_study.py BEFORE AFTER [--provenance]`: what counts as a difference between two results
folders, every line it prints and its exit codes (docs/testing.md, "Automated mutants", "The front ends").
Each expected line is written out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import compare_study as cs

HEADER = "run,score,run_dir,n\n"


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(text.encode("utf-8"))
    return path


def run(capsys, *argv) -> tuple[int, list[str], str]:
    rc = cs.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out.splitlines(), out.err


@pytest.fixture(autouse=True)
def _skip_restored():
    """main() fills the module's SKIP set; leave it as a fresh import has it (empty) for the other tests."""
    yield
    cs.SKIP.clear()


# ---- cells: when two strings are the same value ----

@pytest.mark.parametrize("a, b", [
    ("16", "16.0"),                  # numbers compared as numbers
    ("1", "1.0000000001"),          # within 1e-9 relative
    ("0", "1e-10"),                  # within 1e-9 absolute (no relative tolerance reaches 0)
    ("nan", "nan"), ("NaN", "nan"),  # a missing score on both sides
    ("text", "text"), ("", ""),
])
def test_same_values(a, b):
    assert cs._same(a, b) and cs._same(b, a)


@pytest.mark.parametrize("a, b", [
    ("1", "1.5"), ("1", "2"), ("1", "1.00001"),
    ("0", "1e-8"),                   # past 1e-9 absolute
    ("1000", "1000.01"),            # 1e-5 relative
    ("nan", "1"), ("1", "nan"), ("nan", ""),
    ("text", "other"), ("16", "sixteen"), ("", "0"),
])
def test_different_values(a, b):
    assert not cs._same(a, b) and not cs._same(b, a)


def test_absolute_paths_compare_by_file_name_only_when_provenance_is_left_out():
    a, b = "/home/x/checkout/synth.jsonl", "/srv/y/synth.jsonl"
    assert not cs._same(a, b)  # SKIP empty: --provenance, every cell as written
    cs.SKIP.update(cs.PROVENANCE_COLUMNS)
    assert cs._same(a, b)
    assert not cs._same(a, "/srv/y/other.jsonl")
    assert not cs._same(a, "srv/y/synth.jsonl") and not cs._same("srv/y/synth.jsonl", a)  # one is relative


# ---- CSV files ----

def test_csv_rows_are_dicts_and_number_cells_compare_as_numbers(tmp_path):
    before = write(tmp_path / "a", "s.csv", "run,score,n\nr1,0.5,16\nr2,0.25,8\n")
    after = write(tmp_path / "b", "s.csv", "n,run,score\n16.0,r1,0.5\n8,r2,0.75\n")  # columns in another order
    assert cs.compare_csv(before, after) == ["s.csv row 1 (r2) score: '0.25' -> '0.75'"]


def test_csv_one_row_each(tmp_path):
    before = write(tmp_path / "a", "s.csv", "run,score\nr1,0.5\n")
    assert cs.compare_csv(before, write(tmp_path / "b", "s.csv", "run,score\nr1,0.5\n")) == []
    assert cs.compare_csv(before, write(tmp_path / "c", "s.csv", "run,score\nr1,0.6\n")) == [
        "s.csv row 0 (r1) score: '0.5' -> '0.6'"]


def test_csv_columns_and_row_counts(tmp_path):
    before = write(tmp_path / "a", "t.csv", "run,a,b,c\nr1,1,2,3\nr2,4,5,6\n")
    after = write(tmp_path / "b", "t.csv", "run,b,c,d,e\nr1,2,30,x,y\n")
    assert cs.compare_csv(before, after) == [
        "t.csv: columns only before ['a'], only after ['d', 'e']",
        "t.csv: 2 rows before, 1 after",
        "t.csv row 0 (r1) c: '3' -> '30'",
    ]
    # the same columns, one more row after; each differing cell of a row, in column order
    after = write(tmp_path / "c", "t.csv", "run,a,b,c\nr1,9,2,8\nr2,4,5,6\nr3,7,8,9\n")
    assert cs.compare_csv(before, after) == [
        "t.csv: 2 rows before, 3 after",
        "t.csv row 0 (r1) a: '1' -> '9'",
        "t.csv row 0 (r1) c: '3' -> '8'",
    ]


def test_csv_with_no_rows_has_no_columns(tmp_path):
    empty = write(tmp_path / "a", "e.csv", "run,x\n")
    assert cs.compare_csv(empty, write(tmp_path / "b", "e.csv", "run,y\n")) == []
    assert cs.compare_csv(empty, write(tmp_path / "c", "e.csv", "run,x\nr1,1\n")) == [
        "e.csv: columns only before [], only after ['run', 'x']",
        "e.csv: 0 rows before, 1 after",
    ]


def test_csv_cells_are_read_as_written(tmp_path):
    """A quoted cell's line break is part of its value: CRLF and LF inside a cell are two values; non-ASCII
    text is read as UTF-8."""
    before = write(tmp_path / "a", "q.csv", 'run,text\r\nr1,"one\r\ntwo"\r\nr2,é\r\n')
    after = write(tmp_path / "b", "q.csv", 'run,text\r\nr1,"one\ntwo"\r\nr2,é\r\n')
    assert cs.compare_csv(before, after) == ["q.csv row 0 (r1) text: 'one\\r\\ntwo' -> 'one\\ntwo'"]
    assert cs.compare_csv(after, before) == ["q.csv row 0 (r1) text: 'one\\ntwo' -> 'one\\r\\ntwo'"]


def test_provenance_columns_are_left_out_unless_asked(tmp_path, capsys):
    cols = "run,score,run_dir,code,wall_s,arg_data_dir,arg_tokenizer_dir,arg_out_dir"
    write(tmp_path / "a", "s.csv", f"{cols}\nr1,0.5,/x/runs/r1,abc1234,10.5,/x/data,/x/tok,/x/out\n")
    write(tmp_path / "b", "s.csv", f"{cols}\nr1,0.5,/y/runs/r2,def5678,99.0,data,tok,out\n")
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(capsys, a, b) == (0, [f"0 difference(s) between {a} and {b}"], "")
    rc, lines, _ = run(capsys, a, b, "--provenance")
    assert rc == 1 and lines == [
        "s.csv row 0 (r1) arg_data_dir: '/x/data' -> 'data'",
        "s.csv row 0 (r1) arg_out_dir: '/x/out' -> 'out'",
        "s.csv row 0 (r1) arg_tokenizer_dir: '/x/tok' -> 'tok'",
        "s.csv row 0 (r1) code: 'abc1234' -> 'def5678'",
        "s.csv row 0 (r1) run_dir: '/x/runs/r1' -> '/y/runs/r2'",
        "s.csv row 0 (r1) wall_s: '10.5' -> '99.0'",
        f"6 difference(s) between {a} and {b}",
    ]
    # the flag may stand anywhere; without it again, the set is back to the provenance columns
    assert run(capsys, "--provenance", a, b)[0] == 1
    assert run(capsys, a, b)[0] == 0


# ---- markdown files ----

def test_md_lines_compared_in_order(tmp_path):
    before = write(tmp_path / "a", "r.md", "# Title\n\nscore 0.5\nend\n")
    after = write(tmp_path / "b", "r.md", "# Title\n\nscore 0.6\nend\nmore\n")
    assert cs.compare_md(before, after) == ["r.md line 3:\n  - score 0.5\n  + score 0.6", "r.md: 4 lines before, 5 after"]
    assert cs.compare_md(before, before) == []


def test_md_provenance_lines_are_left_out_only_when_both_are_provenance(tmp_path):
    before = write(tmp_path / "a", "r.md", "run folders: /x/runs\nCode of the runs: abc\n- `abc1234` x\nscore 1\n"
                                           "at commit " + "a" * 40 + "\n")
    after = write(tmp_path / "b", "r.md", "run folders: /y/runs\nCode of the runs: def\n- `def5678` y\nscore 2\n"
                                          "run folders: /z\n")
    expected_score = "r.md line 4:\n  - score 1\n  + score 2"
    assert cs.compare_md(before, after) == [
        "r.md line 1:\n  - run folders: /x/runs\n  + run folders: /y/runs",
        "r.md line 2:\n  - Code of the runs: abc\n  + Code of the runs: def",
        "r.md line 3:\n  - - `abc1234` x\n  + - `def5678` y",
        expected_score,
        "r.md line 5:\n  - at commit " + "a" * 40 + "\n  + run folders: /z",
    ]
    cs.SKIP.update(cs.PROVENANCE_COLUMNS)
    assert cs.compare_md(before, after) == [expected_score]
    # a provenance line against a line that is not one is still a difference
    other = write(tmp_path / "c", "r.md", "score 0\nCode of the runs: abc\n- `abc1234` x\nscore 1\nat commit "
                                          + "b" * 40 + "\n")
    assert cs.compare_md(before, other) == ["r.md line 1:\n  - run folders: /x/runs\n  + score 0"]
    assert cs.compare_md(other, before) == ["r.md line 1:\n  - score 0\n  + run folders: /x/runs"]


# ---- folders and the command ----

def test_folders_compare_every_csv_and_md_and_name_the_missing_ones(tmp_path, capsys):
    a, b = tmp_path / "before", tmp_path / "after"
    write(a, "s1.csv", "run,score\nr1,0.5\n")
    write(b, "s1.csv", "run,score\nr1,0.7\n")
    write(a, "s1.md", "score 0.5\n")
    write(b, "s1.md", "score 0.7\n")
    write(a, "only_before.csv", "run\nr\n")
    write(b, "only_after.md", "x\n")
    write(a, "notes.txt", "ignored\n")
    write(b, "notes.txt", "other\n")
    assert cs.compare(a, b) == [
        f"{b / 'only_before.csv'}: missing",
        "s1.csv row 0 (r1) score: '0.5' -> '0.7'",
        f"{a / 'only_after.md'}: missing",
        "s1.md line 1:\n  - score 0.5\n  + score 0.7",
    ]
    rc, lines, err = run(capsys, a, b)
    assert rc == 1 and err == ""
    assert lines == [f"{b / 'only_before.csv'}: missing", "s1.csv row 0 (r1) score: '0.5' -> '0.7'",
                     f"{a / 'only_after.md'}: missing", "s1.md line 1:", "  - score 0.5", "  + score 0.7",
                     f"4 difference(s) between {a} and {b}"]


def test_agreeing_folders_exit_0(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        write(folder, "s.csv", "run,score\nr1,16\n")
        write(folder, "s.md", "| run | score |\n")
    write(b, "s.csv", "score,run\n16.0,r1\n")
    assert run(capsys, a, b) == (0, [f"0 difference(s) between {a} and {b}"], "")
    assert run(capsys, a, b, "--provenance") == (0, [f"0 difference(s) between {a} and {b}"], "")


@pytest.mark.parametrize("argv", [[], ["one"], ["a", "b", "c"], ["--provenance", "a"]])
def test_wrong_arguments_print_the_usage_line_and_exit_2(argv, capsys):
    assert run(capsys, *argv) == (2, [], "python tools/compare_study.py BEFORE AFTER [--provenance]\n")


def test_arguments_default_to_the_command_line(tmp_path, capsys, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, "s.md", "x\n")
    write(b, "s.md", "y\n")
    monkeypatch.setattr("sys.argv", ["compare_study.py", str(a), str(b)])
    assert cs.main() == 1
    assert capsys.readouterr().out.splitlines()[-1] == f"1 difference(s) between {a} and {b}"
    argv = [str(a), str(b), "--provenance"]
    cs.main(argv)
    assert argv == [str(a), str(b), "--provenance"]  # the caller's list is left as it was


@pytest.fixture
def ascii_locale():
    """The C locale's ASCII codec as the locale's (a Python started under LANG=C is coerced to UTF-8; one set
    to another codec in the process, or run in a Latin-1 locale, is not)."""
    import locale

    old = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    if locale.getencoding().lower() in ("utf-8", "utf8"):
        locale.setlocale(locale.LC_CTYPE, old)
        pytest.skip("the C locale is UTF-8 here")
    yield
    locale.setlocale(locale.LC_CTYPE, old)


def test_files_are_read_as_utf8_whatever_the_locale(tmp_path, ascii_locale):
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, "s.csv", "run,arm\nr1,café\n")
    write(b, "s.csv", "run,arm\nr1,café\n")
    write(a, "s.md", "# Étude\nnaïve\n")
    write(b, "s.md", "# Étude\nnaive\n")
    assert cs.compare_csv(a / "s.csv", b / "s.csv") == []
    assert cs.compare_csv(b / "s.csv", write(tmp_path / "c", "s.csv", "run,arm\nr1,cafe\n")) == [
        "s.csv row 0 (r1) arm: 'café' -> 'cafe'"]
    assert cs.compare_md(a / "s.md", b / "s.md") == ["s.md line 2:\n  - naïve\n  + naive"]
    assert cs.compare_md(b / "s.md", a / "s.md") == ["s.md line 2:\n  - naive\n  + naïve"]


def test_only_the_provenance_columns_and_lines_are_left_out(tmp_path, capsys):
    """Every other column and line is still compared without --provenance: the settings, the seed, the run's
    name, a commit-like token that is not at a line's start or is shorter than 7 hex digits."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, "s.csv", "run,seed,arg_lr,arg_data,n_params,run_dir\nr1,1,0.001,x,100,/a\n")
    write(b, "s.csv", "run,seed,arg_lr,arg_data,n_params,run_dir\nr2,2,0.002,y,101,/b\n")
    write(a, "s.md", "score - `abc1234` 1\n- `abc123` 1\n- `abc1234` same\nat commit " + "a" * 39 + "\n")
    write(b, "s.md", "score - `def5678` 2\n- `def567` 2\n- `def5678` same\nat commit " + "b" * 39 + "\n")
    rc, lines, _ = run(capsys, a, b)
    assert rc == 1 and lines == [
        "s.csv row 0 (r1) arg_data: 'x' -> 'y'",
        "s.csv row 0 (r1) arg_lr: '0.001' -> '0.002'",
        "s.csv row 0 (r1) n_params: '100' -> '101'",
        "s.csv row 0 (r1) run: 'r1' -> 'r2'",
        "s.csv row 0 (r1) seed: '1' -> '2'",
        "s.md line 1:", "  - score - `abc1234` 1", "  + score - `def5678` 2",
        "s.md line 2:", "  - - `abc123` 1", "  + - `def567` 2",
        "s.md line 4:", "  - at commit " + "a" * 39, "  + at commit " + "b" * 39,
        f"8 difference(s) between {a} and {b}",
    ]

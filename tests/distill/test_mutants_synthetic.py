"""distill/synthetic.py under mutmut: which synthetic sonnets are mixed in, how many, in which order, and the text
that is trained on (the course's layout), with expected values written out by hand."""
from __future__ import annotations

import json

import pytest

from distill.check import is_perfect
from distill.records import SyntheticFileError
from distill.synthetic import FILTERS, load_synthetic, to_course_layout
from tests.fakegemini import make_sonnet


def numbered(k: int, n: int = 14) -> list[str]:
    return [f"line {i} of {k}" for i in range(1, n + 1)]


def test_course_layout_of_a_hand_made_sonnet():
    # blank lines, surrounding spaces and a trailing newline go; the last two lines (13 and 14) get two spaces
    raw = "\n\n  " + "\n".join(numbered(1)[:4]) + "\n   \n" + "\n".join(f" {ln}\t" for ln in numbered(1)[4:]) + "\n\n"
    want = "\n".join(numbered(1)[:12]) + "\n  line 13 of 1\n  line 14 of 1"
    assert to_course_layout(raw) == want
    assert to_course_layout(want) == want  # already in the layout: unchanged (its indent is stripped and put back)


@pytest.mark.parametrize("n", [12, 13, 15])
def test_course_layout_indents_only_a_fourteen_line_sonnet(n):
    lines = numbered(2, n)
    assert to_course_layout("\n\n".join(lines)) == "\n".join(lines)  # joined, nothing indented


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def mixed(tmp_path):
    """Ids out of file order, a record without a status, whitespace around texts, blank and rejected ones."""
    good, bad = [make_sonnet(s) for s in (1, 3, 4)], make_sonnet(5, perfect=False)
    assert all(map(is_perfect, good)) and not is_perfect(bad)
    rows = [
        {"id": "x-10", "status": "kept", "text": good[0]},
        {"id": "x-9", "text": "\n " + bad + "  \n"},  # no status: kept (older files)
        {"id": "x-2", "status": "rejected", "reason": "leak", "text": make_sonnet(6)},
        {"id": "x-11", "status": "kept", "text": "  \n "},  # kept but blank: skipped
        {"id": "x-1", "status": "kept", "text": good[1]},
        {"id": "x-100", "status": "kept", "text": good[2] + "\n"},
    ]
    return write(tmp_path / "mixed.jsonl", rows), good, bad


def test_kept_sonnets_in_id_order_stripped(mixed):
    path, (g10, g1, g100), bad = mixed
    # id order with digit runs as numbers: x-1, x-9, x-10, (x-11 blank), x-100; x-2 rejected
    assert load_synthetic(path) == [g1, bad, g10, g100]
    assert load_synthetic(path, filter="all") == [g1, bad, g10, g100]
    assert load_synthetic(str(path), n=None, filter="all") == [g1, bad, g10, g100]
    assert load_synthetic(path, filter="perfect") == [g1, g10, g100]  # the couplet-less x-9 goes


def test_n_is_the_first_n_after_filtering_and_exactly_n_is_enough(mixed):
    path, (g10, g1, g100), bad = mixed
    assert load_synthetic(path, n=1) == [g1]
    assert load_synthetic(path, n=2) == [g1, bad]
    assert load_synthetic(path, n=2, filter="perfect") == [g1, g10]
    assert load_synthetic(path, n=4) == [g1, bad, g10, g100]  # exactly all of them
    assert load_synthetic(path, n=3, filter="perfect") == [g1, g10, g100]
    assert load_synthetic(path, n=0, filter="perfect") == []
    with pytest.raises(SyntheticFileError) as e:
        load_synthetic(path, n=5)
    assert str(e.value) == f"{path}: asked for 5 synthetic sonnets (filter=all) but it has only 4"
    with pytest.raises(SyntheticFileError) as e:
        load_synthetic(path, n=4, filter="perfect")
    assert str(e.value) == f"{path}: asked for 4 synthetic sonnets (filter=perfect) but it has only 3"


def test_bad_filter_and_n_are_refused_in_one_line(mixed):
    path = mixed[0]
    assert FILTERS == ("all", "perfect")
    with pytest.raises(SyntheticFileError) as e:
        load_synthetic(path, filter="Perfect")
    assert str(e.value) == "synthetic filter must be one of ('all', 'perfect'), got 'Perfect'"
    with pytest.raises(SyntheticFileError) as e:
        load_synthetic(path, n=-1)
    assert str(e.value) == "synthetic n must be >= 0, got -1"


def test_a_record_without_an_id_is_refused(tmp_path):
    path = write(tmp_path / "noid.jsonl", [{"status": "kept", "text": make_sonnet(1)}])
    with pytest.raises(SyntheticFileError, match=r"noid\.jsonl:1: expected a JSON object with 'id', a string field "
                                                 r"'text'$"):
        load_synthetic(path)
    # a record without a status but with an id and text is read (the fields asked for are id and text only)
    path = write(tmp_path / "nostatus.jsonl", [{"id": 7, "text": make_sonnet(1)}])
    assert load_synthetic(path) == [make_sonnet(1)]

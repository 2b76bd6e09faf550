"""The project's one JSONL reader (course/jsonl.py): line numbers, the cut-off last line, and the error's text."""
from __future__ import annotations

import pytest

from course.jsonl import JsonLineError, parse_jsonl


def test_values_keep_their_line_numbers_and_blank_lines_are_skipped():
    assert parse_jsonl('{"a": 1}\r\n\n  \n[2]\n"x"') == [(1, {"a": 1}), (4, [2]), (5, "x")]
    assert parse_jsonl("") == [] and parse_jsonl("\n\n") == []


def test_a_bad_line_names_its_number_and_only_a_last_line_without_newline_is_cut_off():
    with pytest.raises(JsonLineError) as e:
        parse_jsonl('{"a": 1}\n{bad\n{"b": 2}\n')
    assert (e.value.lineno, e.value.msg, e.value.cut_off) == (2, "Expecting property name enclosed in double quotes",
                                                              False)
    assert str(e.value) == "line 2: Expecting property name enclosed in double quotes"
    assert parse_jsonl('{"a": 1}\n{"b": 2}\n') == [(1, {"a": 1}), (2, {"b": 2})]  # then with its last line cut off
    with pytest.raises(JsonLineError) as e:
        parse_jsonl('{"a": 1}\n{"b": ')
    assert (e.value.lineno, e.value.cut_off, str(e.value)) == (2, True, "line 2: Expecting value")
    with pytest.raises(JsonLineError) as e:  # the bad line is last but has its newline: damaged, not cut off
        parse_jsonl('{"a": 1}\n{"b": \n')
    assert (e.value.lineno, e.value.cut_off) == (2, False)
    assert isinstance(e.value, ValueError)

"""The course's sonnet layout (course/sonnets.py) written and parsed, pinned byte by byte on small hand-made
files where one-line slips give other output (the survivors of `tools/mutate.py --auto course/sonnets.py`)."""
from __future__ import annotations

from course.sonnets import SONNET_HEADER, Sonnet, is_number_line, parse_sonnets, sonnet_file

HEADER = ("Sonnets\r\nby William Shakespeare\r\nProject Gutenberg eBook #1041\r\nhttps://www.gutenberg.org/ebooks/1041\r\n"
          "Converted to the course layout by minigpt2.data (Gutenberg text, not the Folger edition)\r\n"
          "Roman-numeral headings replaced by numbers; curly quotes made straight\r\n"
          "Public domain in the USA\r\n\r\n\r\n\r\n\r\n")  # 11 lines, the last four empty


def test_sonnet_file_is_the_header_then_number_blank_lines_with_crlf():
    assert len(SONNET_HEADER) == 11
    got = sonnet_file([(3, ["Shall I", "  compare th\u00e9e"]), (10, ["Only"])], "\r\n")
    assert got == (HEADER + "3\r\n\r\nShall I\r\n  compare th\u00e9e\r\n\r\n10\r\n\r\nOnly\r\n").encode("utf-8")
    assert sonnet_file([(7, ("One",))], "") == (HEADER + "7\r\n\r\nOne").encode("utf-8")
    assert sonnet_file([(1, ["a"]), (2, ["b"]), (3, [])], "\n") == (
        HEADER + "1\r\n\r\na\r\n\r\n2\r\n\r\nb\r\n\r\n3\r\n" + "\n").encode("utf-8")  # "3", "" then the trailer
    assert sonnet_file([], "END") == (HEADER[:-2] + "END").encode("utf-8")


def test_a_written_file_parses_back_to_its_sonnets_and_their_lines():
    blocks = [(3, ("Shall I", "  compare thee")), (10, ("Only",)), (12, ("x", "y"))]
    got = parse_sonnets(sonnet_file(blocks, "\r\n").decode("utf-8"))
    assert got == [Sonnet(n, body) for n, body in blocks]
    # header on lines 1-11; "3" on 12, blank 13, its lines 14-15, blank 16; "10" on 17, blank 18, 19, blank 20; "12" 21
    assert [s.line for s in got] == [12, 17, 21]


def test_parse_sonnets_normalises_line_ends_and_trailing_spaces_and_keeps_indentation():
    text = "Header 1\r\n\r\n 3 \r\n\r\n  Indented line   \r\nSecond\t\r\n\r\n\r\n10\rOnly\r\r12\n"
    got = parse_sonnets(text)
    # lines: 1 "Header 1", 2 "", 3 " 3 ", 4 "", 5 indented, 6 "Second", 7-8 "", 9 "10", 10 "Only", 11 "", 12 "12", 13 ""
    assert got == [Sonnet(3, ("  Indented line", "Second")), Sonnet(10, ("Only",)), Sonnet(12, ())]
    assert [s.line for s in got] == [3, 9, 12]
    assert [s.text for s in got] == ["  Indented line\nSecond", "Only", ""]
    assert parse_sonnets("a header\n\nno numbers\n") == [] and parse_sonnets("") == []
    one = parse_sonnets("7")
    assert one == [Sonnet(7, ())] and one[0].line == 1


def test_sonnets_compare_by_number_and_lines_not_by_where_they_stand():
    assert Sonnet(1, ("a",), 5) == Sonnet(1, ("a",), 9) == Sonnet(1, ("a",))
    assert Sonnet(1, ("a",)).line == 0
    assert Sonnet(1, ("a",)) != Sonnet(2, ("a",)) and Sonnet(1, ("a",)) != Sonnet(1, ("a", "b"))
    assert Sonnet(4, ("x", " y", "")).text == "x\n y\n"


def test_a_number_line_holds_only_digits_and_spaces():
    for line in ("12", " 7 ", "\t154\t", "0"):
        assert is_number_line(line) is True, line
    for line in ("", " ", "12a", "a12", "1 2", "XII", "12.", "-3"):
        assert is_number_line(line) is False, line

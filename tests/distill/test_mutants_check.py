"""Tests written against the survivors of `python tools/mutate.py --auto distill/check.py` (docs/testing.md,
"Automated mutants", 2026-12-07): the report as a user reads it, line by line; the reason text of each kind of
failed pair; CMU pronunciations worked out by hand for the elided endings, prefixes and possessives; the spelling
fallback's tail of words chosen so that each of its rules decides the answer; and the file readers' edge cases.

Every sonnet here is built from end words (`sonnet`): each line is "and so I sing of thee at close of <word>",
9 one-syllable words (and, so, I, sing, of, thee, at, close, of) before the end word, so a line's syllables are
9 + the end word's."""
import json

import pytest

from distill.check import (check_file, check_sonnet, end_token, end_word, form_of, format_report, normalize_word,
                           read_sonnet_texts, rhyme, rhyming_part, spelling_tail, summarize_checks, word_like)
from minigpt2.errors import UserError

PERFECT_ENDS = ["day", "night", "may", "light", "sea", "song", "free", "long",
                "heart", "eyes", "part", "skies", "time", "rhyme"]


def sonnet(ends: list[str]) -> str:
    return "\n".join(f"and so I sing of thee at close of {w}" for w in ends)


def ends_with(**changes: str) -> list[str]:
    """PERFECT_ENDS with some lines' end words changed: l13="memory" sets line 13 (1-based)."""
    ends = list(PERFECT_ENDS)
    for key, word in changes.items():
        ends[int(key[1:]) - 1] = word
    return ends


# ------------------------------------------------------------------------------------------------- the report

def report_results() -> list:
    good = check_sonnet(sonnet(PERFECT_ENDS), name="good", meter=True)
    # couplet memory (M EH1 M ER0 IY0) / lily (L IH1 L IY0): only the unstressed last syllable IY matches;
    # syllables: line 13 is 9 + 3 = 12 (out of range), line 14 is 9 + 2 = 11
    weak = check_sonnet(sonnet(ends_with(l13="memory", l14="lily")), name="weak", meter=True)
    # 13 lines, the first ending on a word CMU lacks (zorblax: word-like, so a spelling-fallback word)
    short = check_sonnet(sonnet(ends_with(l1="zorblax")[:13]), name="short", meter=True)
    # lines 1/3: florblix / zorblax, both unknown: spelling tails "ix" / "ax"; couplet time / orange
    # (AO1 R AH0 N JH | AO1 R IH0 N JH: both readings end unstressed, "time" does not)
    two = check_sonnet(sonnet(ends_with(l1="florblix", l3="zorblax", l14="orange")), name="two", meter=True)
    return [good, weak, short, two]


# Meter: good 14 lines of 10; weak 12 of 10, one of 12, one of 11; short 13 of 10 (zorblax: 2 vowel groups, 11);
# two: florblix 11, zorblax 11, orange 11, the rest 10. In range: 14 + 13 + 13 + 14 = 54 of 55 lines (98.2%);
# every line in range: good, short (13 of its 13), two: 3 of 4 sonnets (75.0%).
REPORT = [
    "perfect: 1/4 (25.0%)",
    "  wrong line count: 1, rhyme failures: 2",
    "  end words unknown to CMU (spelling fallback): florblix, zorblax",
    "meter (9-11 syllables): 98.2% of lines, 75.0% of sonnets with every line in range",
    "weak: lines 13/14 (G): 'memory' / 'lily' weak rhyme, only the unstressed last syllables match "
    "(EH M ER IY / IH L IY)",
    "short: 13 lines, expected 14 [unknown: zorblax]",
    "two: lines 1/3 (A): 'florblix' / 'zorblax' differ in spelling (ix / ax; word unknown to CMU); "
    "lines 13/14 (G): 'time' / 'orange' unstressed: the rhyme falls on an unstressed syllable of 'orange' "
    "(AY M / AO R AH N JH|AO R IH N JH) [unknown: florblix, zorblax]",
]


def test_the_report_line_by_line():
    results = report_results()
    assert [r.syllables for r in results][1] == [10] * 12 + [12, 11]
    assert format_report(results, meter=True) == "\n".join(REPORT)
    # without --meter (the default) no meter line, whatever the results hold
    assert format_report(results) == "\n".join(REPORT[:3] + REPORT[4:])


@pytest.mark.parametrize("show, listed, more", [
    (0, [], "... and 3 more failing sonnets"), (1, REPORT[4:5], "... and 2 more failing sonnets"),
    (2, REPORT[4:6], "... and 1 more failing sonnets"), (3, REPORT[4:], None), (4, REPORT[4:], None)])
def test_show_lists_that_many_failing_sonnets_and_counts_the_rest(show, listed, more):
    text = format_report(report_results(), meter=True, show=show)
    assert text == "\n".join(REPORT[:4] + listed + ([more] if more else []))


def test_a_report_with_no_unknown_words_and_a_default_name():
    r = check_sonnet(sonnet(ends_with(l14="orange")))
    assert r.name == "sonnet"
    assert format_report([r]) == (
        "perfect: 0/1 (0.0%)\n  wrong line count: 0, rhyme failures: 1\n"
        "sonnet: lines 13/14 (G): 'time' / 'orange' unstressed: the rhyme falls on an unstressed syllable of "
        "'orange' (AY M / AO R AH N JH|AO R IH N JH)")


def test_summary_counts_and_empty_sets():
    results = report_results()
    s = summarize_checks(results)
    assert s == {"sonnets": 4, "perfect": 1, "perfect_rate": 0.25, "wrong_line_count": 1, "rhyme_failures": 2,
                 "unknown_words": ["florblix", "zorblax"]}  # no meter keys unless asked for
    s = summarize_checks(results, meter=True)
    assert s["meter_line_rate"] == pytest.approx(54 / 55) and s["meter_sonnet_rate"] == 0.75
    empty = summarize_checks([], meter=True)
    assert empty == {"sonnets": 0, "perfect": 0, "perfect_rate": 0.0, "wrong_line_count": 0, "rhyme_failures": 0,
                     "unknown_words": [], "meter_line_rate": 0.0, "meter_sonnet_rate": 0.0}
    # checked without the meter: no syllables, so no line is in range and no sonnet has every line in range
    plain = summarize_checks([check_sonnet(sonnet(PERFECT_ENDS))], meter=True)
    assert plain["meter_line_rate"] == 0.0 and plain["meter_sonnet_rate"] == 0.0


def test_check_file_counts_syllables_only_when_asked(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text(sonnet(PERFECT_ENDS) + "\n")
    assert [r.syllables for r in check_file(path)] == [[]]
    assert [r.syllables for r in check_file(path, meter=True)] == [[10] * 14]


# ------------------------------------------------------------------------------ the reasons of a failed pair

@pytest.mark.parametrize("a, b, reason", [
    # W AY1 N D | W IH1 N D and W AW1 N D | W UW1 N D: every reading of each, joined by "|", sorted
    ("wind", "wound", "'wind' / 'wound' different sounds (AY N D|IH N D / AW N D|UW N D)"),
    # "lily" L IH1 L IY0 ends unstressed (two vowels, the last 0); "die" D AY1 has one vowel, stressed
    ("die", "lily", "'die' / 'lily' unstressed: the rhyme falls on an unstressed syllable of 'lily' (AY / IH L IY)"),
    # "remember" R IH0 M EH1 M B ER0: the last vowel is unstressed, the second (EH1) is not
    ("die", "remember", "'die' / 'remember' unstressed: the rhyme falls on an unstressed syllable of 'remember' "
                        "(AY / EH M B ER)"),
    # "remain" R IH0 M EY1 N has two vowels but ends stressed: no word ends unstressed
    ("die", "remain", "'die' / 'remain' different sounds (AY / EY N)"),
    # "er" ER0: one vowel, unstressed, yet no unstressed *syllable of a longer word*: only "memory" is named
    ("memory", "er", "'memory' / 'er' unstressed: the rhyme falls on an unstressed syllable of 'memory' "
                     "(EH M ER IY / ER)"),
    # memory / history (HH IH1 S T ER0 IY0 | HH IH1 S T R IY0): the last syllables IY and IY match
    ("memory", "history", "'memory' / 'history' weak rhyme, only the unstressed last syllables match "
                          "(EH M ER IY / IH S T ER IY|IH S T R IY)"),
    # "shh" SH has no vowel: its rhyming part and last syllable are the whole word
    ("day", "shh", "'day' / 'shh' different sounds (EY / SH)"),
    # an unknown word-like word: the spelling tails, day -> "ay", zorbliq -> "iq"
    ("day", "zorbliq", "'day' / 'zorbliq' differ in spelling (ay / iq; word unknown to CMU)"),
])
def test_the_reason_for_each_kind_of_failed_pair(a, b, reason):
    result = check_sonnet(sonnet(ends_with(l13=a, l14=b)))
    assert result.reasons == [f"lines 13/14 (G): {reason}"]
    assert result.failed_pairs == [(13, 14, a, b)]


@pytest.mark.parametrize("a, b", [
    ("here", "uprear"),  # Sonnet 49, lines 9/11: HH IY1 R / (up)rear R IH1 R
    ("hear", "near"), ("year", "here"), ("disappear", "appear"),  # IY1 R / IH1 R: CMU's two spellings of one vowel
    ("hearing", "fearing"),  # HH IY1 R IH0 NG / F IH1 R IH0 NG
])
def test_the_vowel_of_near_is_one_vowel(a, b):
    assert rhyme(a, b) == (True, "cmu")
    assert rhyme("here", "there") == (False, "cmu") and rhyme("ear", "bear") == (False, "cmu")  # IH R / EH R


def test_rhyming_part_without_a_stressed_vowel():
    assert rhyming_part("DH IY0") == "IY"  # "the" read "thee": no stressed vowel, so from the last vowel
    assert rhyming_part("R IY0 M EH1 M B ER0") == "EH M B ER"
    assert rhyming_part("SH") == "SH" and rhyming_part("HH M") == "HH M"  # "shh", "hmm": no vowel, the whole word


# ------------------------------------------------------------------------------------- end words and tokens

def test_end_words_skip_tokens_without_a_word():
    assert end_token("So long lives this, and this gives life to thee. --") == "thee"
    assert end_word("and yet I love thee 1609 --") == "thee"
    assert end_token("1609 -- !") == "" and end_word("-- 42 --") == "" and normalize_word("1609,") == ""
    # two lines without a word do not rhyme (and no identical "word" is made up for them)
    result = check_sonnet(sonnet(PERFECT_ENDS[:12]) + "\n1609 --\n-- 42")
    assert not result.perfect and result.failed_pairs == [(13, 14, "", "")]


def test_a_trailing_apostrophe_is_a_possessive_plural_except_in_th_and_i():
    assert normalize_word("lovers'") == "lovers" and normalize_word("Lovers',") == "lovers"
    assert normalize_word("th'") == "th'" and normalize_word("I'") == "i'"
    # the possessive reads as the plural: lovers' (L AH1 V ER0 Z) / covers (K AH1 V ER0 Z)
    result = check_sonnet(sonnet(ends_with(l13="lovers'", l14="hovers")))
    assert result.perfect and result.unknown_words == []
    result = check_sonnet(sonnet(ends_with(l13="lovers'", l14="day")))
    assert result.failed_pairs == [(13, 14, "lovers", "day")]


# ------------------------------------------------------------------------- pronunciations of what CMU lacks

@pytest.mark.parametrize("a, b", [
    ("soul's", "controls"),  # a possessive: "souls" S OW1 L Z / K AH0 N T R OW1 L Z
    ("know'st", "most"),  # know + S T: N OW1 S T / M OW1 S T
    ("ow'st", "boast"),  # ow (AW1) or owe (OW1) + S T: OW S T / B OW1 S T (Sonnet 18)
    ("canst", "chanced"),  # can + S T without an apostrophe: K AE1 N S T / CH AE1 N S T
    ("curs'd", "burst"),  # the "-ed" form first: cursed K ER1 S T / B ER1 S T
    ("tomb'd", "doomed"),  # no "tombed" in CMU: tomb + D, T UW1 M D / D UW1 M D
    ("o'ersee", "me"),  # "o'er" dropped for the rhyme: see S IY1 / M IY1 (by spelling "ee" / "e" would fail)
])
def test_words_cmu_lacks_rhyme_by_their_readings(a, b):
    assert rhyme(a, b) == (True, "cmu")


def test_an_elided_ending_is_read_before_the_word_without_its_apostrophe():
    # "hear'st" is hear (HH IY1 R) + S T, not CMU's "hearst" (HH ER1 S T, the surname); "be'st" is be + S T
    # (B IY1 S T), not "best" (B EH1 S T)
    assert rhyme("hear'st", "fear'st") == (True, "cmu") and rhyme("hear'st", "first") == (False, "cmu")
    assert rhyme("be'st", "least") == (True, "cmu") and rhyme("be'st", "rest") == (False, "cmu")


def test_inner_elisions_and_elided_endings_in_the_reason():
    # "wat'ry" is CMU's "watry" W AA1 T R IY0: known, so no unknown word; against "day" it ends unstressed
    result = check_sonnet(sonnet(ends_with(l13="wat'ry", l14="day")))
    assert result.unknown_words == []
    assert result.reasons == ["lines 13/14 (G): 'wat'ry' / 'day' unstressed: the rhyme falls on an unstressed "
                              "syllable of 'wat'ry' (AA T R IY / EY)"]
    # the elided ending's phones as the reason shows them: tomb'd -> tomb + D
    result = check_sonnet(sonnet(ends_with(l13="tomb'd", l14="day")))
    assert result.reasons == ["lines 13/14 (G): 'tomb'd' / 'day' different sounds (UW M D / EY)"]
    assert result.unknown_words == []


# -------------------------------------------------------------------------------------- the spelling fallback

@pytest.mark.parametrize("word, tail", [
    ("decease", "eas"),  # the docstring's example: the silent final e dropped, then from the last vowel group
    ("thee", "ee"),  # e after a vowel is no silent e
    ("me", "e"),  # two letters: nothing dropped
    ("strumpeted", "etd"),  # "-ed" read "d": strumpetd, from the last vowel group e
    ("owed", "owd"),  # a four-letter "-ed" word: owd
    ("shoed", "od"),  # the vowel just before "-ed" counts: shod
    ("bed", "ed"),  # no vowel before "-ed": kept
    ("stell'd", "eld"),  # the apostrophe dropped, ll single: steld
    ("acquainted", "aintd"),  # "qu" is a consonant: ackwaintd
    ("niggarding", "ing"),
])
def test_spelling_tails_worked_by_hand(word, tail):
    assert spelling_tail(word) == tail


def test_spelling_tails_decide_unknown_pairs():
    # an elided "-'d" word CMU lacks (stem and all): zorbell'd -> zorbelld -> zorbeld, "eld" ~ held "eld"
    assert rhyme("zorbell'd", "held") == (True, "spelling")
    # the same written ending "-oed": shoed -> shod ("od"), zorboed -> zorbod ("od")
    assert rhyme("zorboed", "shoed") == (True, "spelling")
    # "-owed": zorbowed -> zorbowd, owed -> owd: both "owd"
    assert rhyme("zorbowed", "owed") == (True, "spelling")


def test_word_like_limits_and_hyphens():
    # Antony and Cleopatra's "o'erpicturing": 12 letters (o e r p i c t u r i n g) and 4 vowel groups (oe, i, u,
    # i): both limits reached, not passed
    assert word_like("o'erpicturing") and word_like("O'erpicturing")
    assert not word_like("o'erpicturings") and not word_like("zorblaxifying")  # 13 letters
    # a hyphenated token is judged by its last part: "Self-Love" is capitalised there
    assert word_like("Self-Love") and word_like("self-love") and not word_like("Self-LoVe")


def test_form_of_four_lines_is_judged_on_its_first_quatrain():
    assert form_of(sonnet(PERFECT_ENDS[:4]))["rhyme_scheme"] is True
    assert form_of(sonnet(ends_with(l3="dog")[:4]))["rhyme_scheme"] is False
    assert form_of(sonnet(PERFECT_ENDS[:3]))["rhyme_scheme"] is False


# ---------------------------------------------------------------------------------------------- the readers

@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_a_sonnet_text_with_any_line_end_has_its_fourteen_lines(newline):
    text = sonnet(PERFECT_ENDS).replace("\n", newline)
    result = check_sonnet(text, meter=True)
    assert result.perfect and result.n_lines == 14 and result.syllables == [10] * 14
    assert form_of(text) == {"fourteen_lines": True, "rhyme_scheme": True, "meter": True, "perfect": True}


def test_blank_line_separated_text_with_crlf_or_cr_line_ends(tmp_path):
    one, two = sonnet(PERFECT_ENDS), sonnet(ends_with(l14="orange"))
    for newline in ("\r\n", "\r"):
        path = tmp_path / "sonnets.txt"
        path.write_bytes((one + "\n\n" + two + "\n").replace("\n", newline).encode())
        assert read_sonnet_texts(path) == [("1", one), ("2", two)]
        assert [(r.name, r.perfect) for r in check_file(path)] == [("1", True), ("2", False)]


def test_jsonl_records_without_an_id_are_named_by_their_line(tmp_path):
    path = tmp_path / "synth.jsonl"
    rows = [{"id": "a", "text": sonnet(PERFECT_ENDS)}, {"text": sonnet(ends_with(l14="orange"))},
            {"text": "rejected", "status": "rejected"}, {"text": sonnet(PERFECT_ENDS), "status": "kept"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert [name for name, _ in read_sonnet_texts(path)] == ["a", "2", "4"]


def test_a_file_without_sonnets_names_the_layouts(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n \n")
    with pytest.raises(UserError) as e:
        read_sonnet_texts(path)
    assert str(e.value) == (f"{path}: no sonnets found (expected numbered sonnets, blank-line separated text "
                            "or JSONL)")

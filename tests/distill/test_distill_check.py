"""The perfect-sonnet check: sonnets that must pass, ones that must fail for each reason, and the file readers."""
import json
import os
from pathlib import Path

import pytest

from distill.check import (check_file, check_sonnet, count_syllables, end_token, end_word, form_of, format_report,
                           main, normalize_word, pronunciations, read_sonnet_texts, rhyme, sonnet_lines,
                           summarize_checks, word_like)
from minigpt2.errors import UserError
from tests import FIXTURES, ROOT
from tests.fakegemini import make_sonnet

FIXTURES = FIXTURES / "distill"

# Sonnet 9 (passes in the CMU dictionary as printed).
SONNET_9 = """Is it for fear to wet a widow's eye
That thou consum'st thyself in single life?
Ah, if thou issueless shalt hap to die,
The world will wail thee like a makeless wife.
The world will be thy widow and still weep,
That thou no form of thee hast left behind,
When every private widow well may keep,
By children's eyes, her husband's shape in mind.
Look what an unthrift in the world doth spend
Shifts but his place, for still the world enjoys it;
But beauty's waste hath in the world an end,
And kept unused, the user so destroys it.
  No love toward others in that bosom sits
  That on himself such murd'rous shame commits."""

# Archaic spellings at every line end: o'er, e'er, elided -'d and -'st, curly apostrophes, trailing dashes.
ARCHAIC = """My heart, that wandered all the winter o'er,
Now finds its rest where thou hast lov'd me long;
I would not roam the sullen sea no more,
Nor sing again the old and weary song.
If thou shouldst ask if I have lov'd thee e'er,
The hours we spent when first our love was known;
Thy voice is soft as summer's evening air,
The night is kind that leaves me not alone.
Thou mak'st the dawn with every glance of thine,
Thou break'st the dark with every word of grace--
And all the world that once was only mine
Is nothing now beside thy gentle face.
  So let the seasons turn and years be told:
  I keep the day when thou wert mine of old.""".replace("o'er,", "o\u2019er,")


def with_line(text: str, index: int, new: str) -> str:
    lines = text.split("\n")
    lines[index] = new
    return "\n".join(lines)


@pytest.mark.parametrize("text", [SONNET_9, make_sonnet(1), make_sonnet(7)])
def test_perfect_sonnets_pass(text):
    result = check_sonnet(text)
    assert result.perfect, result.reasons
    assert result.n_lines == 14 and result.reasons == []


def test_archaic_apostrophes_and_punctuation_pass():
    result = check_sonnet(ARCHAIC)
    assert result.perfect, result.reasons
    assert end_word("Thou break'st the dark with every word of grace--") == "grace"
    assert end_word("My heart, that wandered all the winter o\u2019er,") == "o'er"


def test_every_pronunciation_and_elisions_are_tried():
    assert rhyme("wind", "kind")[0] and rhyme("wind", "sinned")[0]  # W AY1 N D and W IH1 N D
    assert rhyme("o'er", "more") == (True, "cmu")
    assert rhyme("mak'st", "break'st") == (True, "cmu")  # "mak" is also a CMU name: both readings are tried
    assert rhyme("lov'd", "shov'd") == (True, "cmu")
    assert rhyme("desire", "admire") == (True, "cmu")  # CMU's AY1 ER0 vs AY1 R
    assert rhyme("unbred", "dead") == (True, "cmu")  # the prefix is dropped
    assert rhyme("love", "prove") == (False, "cmu")  # an eye rhyme is not a rhyme


def test_unknown_words_use_the_spelling_fallback_and_are_reported():
    assert rhyme("niggarding", "spring") == (True, "spelling")
    assert rhyme("attainted", "acquainted") == (True, "spelling")  # "qu" is a consonant, "-ed" reads "d"
    assert rhyme("zorblax", "day") == (False, "spelling")
    passing = with_line(with_line(make_sonnet(1), 12, "and so the zorblax"), 13, "the merry florblax")
    result = check_sonnet(passing)
    assert result.perfect and result.unknown_words == ["florblax", "zorblax"]
    failing = with_line(make_sonnet(1), 13, "and then the zorbliq")
    result = check_sonnet(failing)
    assert not result.perfect and "zorbliq" in result.unknown_words
    assert "lines 13/14 (G)" in result.reasons[0] and "unknown to CMU" in result.reasons[0]


# Words the sonnets use that CMU lacks: real words, which may rhyme by spelling.
ARCHAIC_UNKNOWN = ["niggarding", "stelled", "attainted", "carcanet", "prefiguring", "strumpeted", "embassage", "alack",
                   "nought", "wights", "afterloss", "disdaineth", "greeing", "Staineth", "ALACK"]
# End tokens of random GPT-2 token strings (`reference_hypotheses`' "prompts + random tokens": uniformly random ids,
# decoded) and vowel-less fragments: not word-like, each for the reason given.
NOT_WORD_LIKE = [
    "RoyalsHel109",  # digits
    "caf\u00e9",  # a letter outside a-z
    "worthyBind", "CETinder",  # a capital inside: tokens glued together
    "teeonomicomedicalotton", "exercparamslanderfranoperator",  # more than 12 letters or 4 vowel groups
    "pt", "ske", "tsk", "grr",  # no vowel to rhyme on ("ske" -> "sk")
]


def test_word_like_accepts_real_words_and_refuses_token_strings():
    assert all(not pronunciations(normalize_word(w)) for w in ARCHAIC_UNKNOWN + NOT_WORD_LIKE)
    assert [w for w in ARCHAIC_UNKNOWN if not word_like(w)] == []
    assert [w for w in NOT_WORD_LIKE if word_like(w)] == []
    assert end_token("stain when heaven's sun RoyalsHel109,--") == "RoyalsHel109"
    assert word_like("self-love") and not word_like("self-loveXY")  # a hyphenated token is judged by its last part


@pytest.mark.parametrize("a, b", [
    ("teeonomicomedicalotton", "upon"), ("exercparamslanderfranoperator", "for"), ("RoyalsHel109", "well"),
    ("CETinder", "slender"), ("ske", "sk"), ("grr", "gr"), ("", "")])
def test_nonsense_does_not_rhyme_by_spelling(a, b):
    # each pair rhymed by spelling before word_like: the same spelling tail ("on"/"on", "el"/"el", "sk"/"sk", "";
    # two lines without a word rhymed too)
    assert rhyme(a, b) == (False, "not word-like")


def test_archaic_words_still_rhyme_by_spelling():
    assert rhyme("niggarding", "spring") == (True, "spelling")
    assert rhyme("stelled", "held") == (True, "spelling") and rhyme("Stelled", "held") == (True, "spelling")
    assert rhyme("attainted", "acquainted") == (True, "spelling")
    assert rhyme("zorblax", "florblax") == (True, "spelling")  # word-like, if no word: the spelling decides


def test_random_gpt2_tokens_after_a_prompt_rarely_pass_the_fallback():
    """Seeded random GPT-2 token strings, as the "prompts + random tokens" reference row writes them: most end
    tokens CMU lacks are not word-like, and none of those rhymes with an end word of the real sonnets."""
    import numpy as np

    from minigpt2.tokenizer import Tokenizer

    tok = Tokenizer(str(ROOT / "experiments" / "tiny_data" / "gpt2"))
    rng = np.random.default_rng(0)
    tokens = [end_token(tok.decode(rng.integers(0, tok.vocab_size, size=8).tolist())) for _ in range(300)]
    unknown = [t for t in tokens if t and not pronunciations(normalize_word(t))]
    refused = [t for t in unknown if not word_like(t)]
    assert len(unknown) > 100 and len(refused) > len(unknown) / 2
    ends = {end_word(ln) for _, text in read_sonnet_texts(FIXTURES / "sonnets_sample.txt") for ln in sonnet_lines(text)}
    assert [(t, e) for t in refused for e in ends if rhyme(t, e)[0]] == []
    lines = make_sonnet(1).split("\n")
    lines[3] = lines[3].rsplit(" ", 1)[0] + " " + refused[0]
    assert form_of("\n".join(lines))["rhyme_scheme"] is False
    assert "not word-like" in check_sonnet("\n".join(lines)).reasons[0]


@pytest.mark.parametrize("n_lines", [13, 15, 12])
def test_wrong_line_count_fails(n_lines):
    lines = make_sonnet(2).split("\n")
    text = "\n".join(lines[:n_lines] if n_lines <= 14 else lines + ["one line too many, day"])
    result = check_sonnet(text)
    assert not result.perfect
    assert result.reasons == [f"{n_lines} lines, expected 14"]


def test_blank_lines_between_stanzas_do_not_count():
    lines = make_sonnet(3).split("\n")
    stanzas = "\n".join(lines[:4]) + "\n\n" + "\n".join(lines[4:8]) + "\n\n" + "\n".join(lines[8:12]) + "\n\n" + \
        "\n".join(lines[12:])
    assert check_sonnet(stanzas).perfect


def test_each_failing_pair_is_named():
    result = check_sonnet(with_line(make_sonnet(1), 13, "my final line ends on orange"))
    assert not result.perfect and len(result.failed_pairs) == 1
    assert result.failed_pairs[0][:2] == (13, 14)
    # AABB instead of ABAB: both pairs of the first quatrain fail.
    lines = make_sonnet(1).split("\n")
    lines[1], lines[2] = lines[2], lines[1]
    result = check_sonnet("\n".join(lines))
    assert [(i, j) for i, j, _, _ in result.failed_pairs] == [(1, 3), (2, 4)]
    assert result.reasons[0].startswith("lines 1/3 (A):")


def test_failure_kinds_are_explained():
    weak = check_sonnet(SONNET_9.replace("to die,", "my memory,")).reasons
    assert any("unstressed syllable of 'memory'" in r for r in weak)
    eye = check_sonnet(SONNET_9.replace("wet a widow's eye", "wet a widow's love").replace("hap to die",
                                                                                          "hap to prove")).reasons
    assert any("'love' / 'prove' different sounds (AH V / UW V)" in r for r in eye)


def test_meter_counts_syllables():
    assert count_syllables("Shall I compare thee to a summer's day?") == 10
    assert count_syllables("O'er zorblax") == 3  # unknown words: vowel groups
    result = check_sonnet(SONNET_9, meter=True)
    assert len(result.syllables) == 14 and result.metrical_lines >= 12
    assert check_sonnet(SONNET_9).syllables == []  # meter is off unless asked for


def test_reads_the_course_format(tmp_path):
    sonnets = read_sonnet_texts(FIXTURES / "sonnets_sample.txt")  # CRLF, 11-line header, numbered
    assert [name for name, _ in sonnets] == ["1", "9", "24", "99", "126"]
    assert sonnets[0][1].split("\n")[0] == "From fairest creatures we desire increase,"
    results = check_file(FIXTURES / "sonnets_sample.txt")
    assert [r.perfect for r in results] == [False, True, True, False, False]
    assert results[3].reasons == ["15 lines, expected 14"] and results[4].reasons == ["12 lines, expected 14"]
    assert results[2].unknown_words == ["stelled"]  # "stelled" ~ "held" by spelling


def test_reads_blank_line_separated_text_and_jsonl(tmp_path):
    plain = tmp_path / "sonnets.txt"
    plain.write_text(make_sonnet(1) + "\n\n\n" + make_sonnet(2) + "\n")
    assert [name for name, _ in read_sonnet_texts(plain)] == ["1", "2"]
    jsonl = tmp_path / "synth.jsonl"
    rows = [{"id": "a", "text": make_sonnet(1), "status": "kept"},
            {"id": "b", "text": "", "status": "rejected"}, {"id": "c", "text": make_sonnet(5, perfect=False)}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    results = check_file(jsonl)
    assert [(r.name, r.perfect) for r in results] == [("a", True), ("c", False)]
    assert summarize_checks(results)["perfect_rate"] == 0.5


def test_bad_files_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x"}) + "\n{not json\n")
    with pytest.raises(UserError, match=r"bad\.jsonl:2: not valid JSON"):
        read_sonnet_texts(bad)
    bad.write_text(json.dumps({"poem": "x"}) + "\n")
    with pytest.raises(UserError, match=r"bad\.jsonl:1: expected a JSON object with a string field 'text'"):
        read_sonnet_texts(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="empty.txt: no sonnets found"):
        read_sonnet_texts(empty)
    with pytest.raises(UserError, match="missing.txt: no such sonnet file"):
        read_sonnet_texts(tmp_path / "missing.txt")
    with pytest.raises(UserError, match=f"{tmp_path}: is a folder, not a sonnet file"):
        read_sonnet_texts(tmp_path)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Shall I compare thee\nto a summer\xe2s day\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.txt:2: not UTF-8 text \(byte 0xe2\)"):
        read_sonnet_texts(latin1)


def test_cli_reports_rate_and_reasons(tmp_path, capsys):
    report = tmp_path / "report.json"
    assert main([str(FIXTURES / "sonnets_sample.txt"), "--meter", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("perfect: 2/5 (40.0%)")
    assert "99: 15 lines, expected 14" in out and "meter (9-11 syllables):" in out
    assert "1: lines 2/4 (B): 'die' / 'memory'" in out
    payload = json.loads(report.read_text())
    assert payload["summary"]["perfect"] == 2 and len(payload["sonnets"]) == 5
    with pytest.raises(SystemExit, match=r"^error: .*nope\.txt") as e:  # printed to stderr, exit code 1
        main([str(tmp_path / "nope.txt")])
    assert "\n" not in str(e.value.code)


def test_format_report_limits_the_list():
    results = [check_sonnet(make_sonnet(0, perfect=False), name=str(i)) for i in range(5)]
    text = format_report(results, show=2)
    assert "... and 3 more failing sonnets" in text and text.count("lines 13/14") == 2


@pytest.mark.shared_data
@pytest.mark.skipif(not os.environ.get("MINIGPT2_DATA_DIR"), reason="MINIGPT2_DATA_DIR not set")
def test_shakespeare_rate_on_the_real_sonnets():
    results = check_file(Path(os.environ["MINIGPT2_DATA_DIR"]) / "sonnets.txt")
    assert len(results) == 131
    s = summarize_checks(results)
    # Measured: 27/131 (20.6%); most failures are Early Modern rhymes (love/prove, die/memory), see docs/distillation.md.
    assert 0.1 < s["perfect_rate"] < 0.35
    assert {r.name for r in results if r.n_lines != 14} == {"99", "126"}

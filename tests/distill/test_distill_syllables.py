"""The meter check's syllable counter (`distill.syllables`, through `distill.check.count_syllables`): words and
lines of the real sonnets counted by hand, the period's elisions, and the share of Shakespeare's lines that pass.

Every expected count below was counted by hand (the word as written, "-ed" as modern speech has it), not by the
code; each of the words is one the counter got wrong before it read hyphenated words whole, kept prefixes and
split unknown words into known parts."""
import os
from pathlib import Path

import pytest

from distill.check import check_file, count_syllables, form_of, pronunciations, read_sonnet_texts, rhyme
from distill.syllables import vowel_groups
from tests import FIXTURES

FIXTURES = FIXTURES / "distill"

# Words from sonnets.txt and TRUE_sonnets_held_out_dev.txt, with their syllables counted by hand.
SONNET_WORDS = {
    # hyphenated compounds: every part counts
    "pity-wanting": 4, "never-resting": 4, "swift-footed": 3, "world-without-end": 4, "present-absent": 4,
    "doctor-like": 3, "all-too-precious": 4, "double-vantage": 4, "self-example": 4, "kind-hearted": 3,
    "new-appearing": 4, "storm-beaten": 3, "deep-sunken": 3, "false-speaking": 3, "true-telling": 3, "death-bed": 2,
    "tongue-tied": 2, "self-substantial": 4, "all-triumphant": 4, "sweet-seasoned": 3, "up-locked": 2,
    "steep-up": 2, "short-numbered": 3, "ill-wresting": 3, "proud-pied": 2, "a-doting": 3, "self-love": 2,
    "time-bettering": 4,
    # a prefix counts (CMU lacks the word, knows the rest)
    "overplus": 3, "overpartial": 4, "unrespected": 4, "outbraves": 2, "overgoes": 3, "unwooed": 2, "unswept": 2,
    "besmeared": 2, "miscalled": 2, "uprear": 2, "beweep": 2, "dispraise": 2, "inhearse": 2, "forbear": 2,
    "unbred": 2, "recured": 2, "unthrifty": 3, "engrafted": 3,
    # written elisions of the period
    "o'erworn": 2, "o'ertake": 2, "o'erlook": 2, "whate'er": 2, "whoe'er": 2, "whe'er": 1, "th'": 0, "t'": 0,
    "'scaped": 1, "int'rim": 2,
    # where- compounds
    "wherewith": 2, "wherethrough": 2, "whereto": 2,
    # a known word and a suffix ("-ed" as modern speech has it, silent after other than t/d)
    "basest": 2, "vilest": 2, "goest": 2, "diest": 2, "buriest": 3, "deceivest": 3, "receivest": 3, "refusest": 3,
    "renewest": 3, "greeing": 2, "loveliness": 3, "tombed": 1, "profaned": 2, "wakened": 2, "yellowed": 2,
    "silvered": 2, "damasked": 2, "debarred": 2, "suborned": 2, "complexioned": 3, "charactered": 3,
    "merchandized": 3, "stelled": 1, "makeless": 2, "dateless": 2, "lameness": 2, "bareness": 2,
    # plurals and possessives
    "awakes": 2, "spites": 1, "dyer's": 2, "wretch's": 2,
}


def test_words_of_the_sonnets_counted_by_hand():
    assert len(SONNET_WORDS) >= 40
    wrong = {w: count_syllables(w) for w, n in SONNET_WORDS.items() if count_syllables(w) != n}
    assert wrong == {}


# Lines of the real sonnets, counted by hand: every line of the dev sonnets that the old count put outside 9-11
# (134, 135, 137-141), lines that use the period's elisions, and three that a careful scansion passes with
# slurred words ("heav'n's", "e'en", "boun-teous" as two) but that are 12-13 syllables as written.
SONNET_LINES = [
    ("He learned but surety-like to write for me", 11),  # 134; "surety" as CMU's three
    ("And will to boot, and will in overplus.", 10),  # 135
    ("If eyes, corrupt by overpartial looks,", 10),  # 137
    ("Unlearned in the world's false subtleties.", 9),  # 138
    ("Use power with power, and slay me not by art.", 12),  # 139: spoken 10 ("pow'r"); written in full, 12
    ("The manner of my pity-wanting pain.", 10),  # 140
    ("Nor taste, nor smell, desire to be invited", 12),  # 141: spoken 11 ("desire" two); written, 12
    ("And moan th' expense of many a vanished sight.", 11),
    ("And do whate'er thou wilt, swift-footed Time,", 10),
    ("Nor dare I chide the world-without-end hour", 10),
    ("Lest my bewailed guilt should do thee shame,", 9),
    ("For never-resting time leads summer on", 10),
    ("And every humor hath his adjunct pleasure,", 11),  # "every" two (CMU's short reading)
    ("Ah, do not, when my heart hath 'scaped this sorrow,", 11),
    ("Thus policy in love, t' anticipate", 10),
    ("Is 't not enough to torture me alone,", 10),
    ("With Time's injurious hand crushed and o'erworn;", 11),
    ("That thou consum'st thyself in single life?", 10),
    ("Whether we are mended, or whe'er better they,", 11),
    ("Mine eye hath played the painter and hath stelled", 10),
    ("Thy unused beauty must be tombed with thee,", 10),
    ("Suns of the world may stain when heaven's sun staineth.", 12),
    ("Even so, being full of your ne'er-cloying sweetness,", 13),
    ("Which bounteous gift thou shouldst in bounty cherish.", 12),
]


@pytest.mark.parametrize("line, syllables", SONNET_LINES)
def test_lines_of_the_sonnets_counted_by_hand(line, syllables):
    assert count_syllables(line) == syllables


def test_elisions_count_as_written():
    counts = {"o'er": 1, "e'en": 1, "ta'en": 1, "ne'er": 1, "lov'd": 1, "belov'd": 2, "mak'st": 1,
              "consum'st": 2, "o'erworn": 2, "whate'er": 2, "murd'rous": 2, "heav'n": 1, "th'": 0}
    assert {w: count_syllables(w) for w in counts} == counts
    assert count_syllables("th' expense") == 2  # "th'" merges with the next word
    assert count_syllables("loved") == 1 and count_syllables("beloved") == 2  # CMU's silent "-ed" reading
    assert count_syllables("the lover\u2019s") == 3  # curly apostrophes read as straight ones
    # "admir'd" is "admire" + d: CMU's "admired" (AH0 D M AY1 ER0 D) keeps the syllable its "admire" drops
    assert count_syllables("admir'd") == 2 and count_syllables("admired") == 3


def test_a_prefix_counts_for_syllables_but_not_for_rhyme():
    assert count_syllables("unbred") == 2 and count_syllables("overplus") == 3
    assert pronunciations("unbred") == pronunciations("bred")  # the rhyme logic still drops it
    assert rhyme("unbred", "dead") == (True, "cmu") and rhyme("o'erworn", "born") == (True, "cmu")


def test_the_short_reading_where_the_dictionary_has_one():
    # CMU lists "every" as 3 or 2, "our" as 2 or 1: verse takes the short one
    assert count_syllables("every") == 2 and count_syllables("our") == 1 and count_syllables("different") == 2
    # "fire" and "hour" have a one-syllable reading in CMU; "desire", "power", "flowers" only the full one, and no
    # rule of ours slurs a word spelled in full
    assert [count_syllables(w) for w in ("fire", "hour", "desire", "desired", "power", "flowers")] == [1, 1, 3, 3, 2, 2]
    assert count_syllables("dyer") == 2 and count_syllables("buyer") == 2 and count_syllables("powerful") == 3


@pytest.mark.parametrize("word, groups", [
    ("zorblax", 2), ("able", 2), ("carcanet", 3), ("embassage", 3), ("bounteous", 3), ("equipage", 3),
    ("stelled", 1), ("strumpeted", 3), ("blenches", 2), ("greeing", 2), ("youngly", 2), ("xkcd", 0)])
def test_vowel_groups_of_words_no_rule_knows(word, groups):
    assert vowel_groups(word) == groups


def test_the_fixture_dev_sonnets_pass_the_meter():
    # sonnet 134 failed before: "surety-like" counted as "like"
    sonnets = read_sonnet_texts(FIXTURES / "TRUE_sonnets_held_out_dev.txt")
    assert {name: form_of(text)["meter"] for name, text in sonnets} == {"132": True, "133": True, "134": True}


@pytest.mark.shared_data
@pytest.mark.skipif(not os.environ.get("MINIGPT2_DATA_DIR"), reason="MINIGPT2_DATA_DIR not set")
def test_share_of_shakespeares_lines_that_pass_the_meter():
    data = Path(os.environ["MINIGPT2_DATA_DIR"])
    train = check_file(data / "sonnets.txt", meter=True)
    outside = {(r.name, i + 1) for r in train for i, n in enumerate(r.syllables) if not 9 <= n <= 11}
    # Each of these is 12-13 syllables as written and a pentameter as spoken ("heav'nly", "e'en", "glor'ous")
    # ("heav'nly", "e'en", "glor'ous"; "sire", "flowers", "desire" as one syllable less)
    assert outside == {("8", 11), ("11", 12), ("15", 4), ("16", 7), ("17", 8), ("31", 5), ("33", 1), ("33", 14),
                       ("42", 7), ("51", 10), ("56", 6), ("56", 8), ("61", 3), ("111", 14), ("114", 9), ("115", 2),
                       ("118", 5), ("124", 4)}
    assert sum(r.n_lines for r in train) == 1833  # so 1815/1833 lines (99.0%) and 115/131 sonnets pass
    assert sum(r.metrical_lines == r.n_lines for r in train) == 115
    dev = check_file(data / "TRUE_sonnets_held_out_dev.txt", meter=True)
    # 139 ("Use power with power") and 141 ("desire to be invited") fail, as written: 10 of 12, 166 of 168 lines
    assert len(dev) == 12 and sum(r.metrical_lines == r.n_lines == 14 for r in dev) == 10
    assert sum(r.metrical_lines for r in dev) == 166


@pytest.mark.shared_data
@pytest.mark.skipif(not os.environ.get("MINIGPT2_DATA_DIR"), reason="MINIGPT2_DATA_DIR not set")
def test_meter_of_the_reference_rows_on_the_dev_sonnets():
    """docs/study.md's reference table, meter column: 10 of the 12 dev sonnets pass, every prompt, and every
    prompt with a wrong real sonnet after it; random GPT-2 tokens never do."""
    from distill.check import FORM_PARTS
    from experiments.references import REAL_SONNETS, REFERENCE_NAMES, sonnet_reference_forms

    data = os.environ["MINIGPT2_DATA_DIR"]
    tokenizer = Path(data) / "gpt2"
    forms = sonnet_reference_forms(data, "dev", None, str(tokenizer) if tokenizer.is_dir() else None)
    part = FORM_PARTS.index("meter")
    meter = {name: sum(flags[0][part] for flags in forms[name]["per_sonnet"].values()) for name in forms}
    assert meter == {REFERENCE_NAMES[0]: 12, REFERENCE_NAMES[1]: 0, REFERENCE_NAMES[2]: 12, REAL_SONNETS: 10}

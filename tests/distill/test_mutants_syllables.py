"""Tests written against the survivors of `python tools/mutate.py --auto distill/syllables.py` (docs/testing.md,
"Automated mutants"): words of the sonnets (and a few of the period) counted by hand, each reaching a rule the
earlier word lists left untested, so that a one-line slip in that rule changes a count."""
import pytest

from distill.syllables import count_line, vowel_groups

# counted by hand, the word as written ("-ed" as modern speech has it)
WORDS = {
    # apostrophes: "-'st" and "-'s" add nothing (but after a sibilant), an inner one drops a vowel
    "gild'st": 1, "need'st": 1, "perfect'st": 2, "present'st": 2, "hate's": 1, "brav'ry": 2, "runn'st": 1,
    # words CMU lacks: two known words of 4+ letters, or counted as written
    "afterloss": 3, "bankrout": 2, "highmost": 2, "hindmost": 2, "methinks": 2, "gluttoning": 3,
    "churl": 1, "nought": 1, "glutton": 2, "accessary": 4, "attaint": 2, "immured": 2, "raiment": 2,
    "cherubins": 3,
    # a known stem and "-es": a syllable after a sibilant only
    "blenches": 2, "anguishes": 3, "abashes": 3,
    # no vowel at all: still one syllable (rule 5)
    "https": 1,
}


@pytest.mark.parametrize("word, n", sorted(WORDS.items()))
def test_more_words_counted_by_hand(word, n):
    assert count_line(word) == n


@pytest.mark.parametrize("line, n", [("o\u2019er", 1), ("is \u2018t", 1), ("is `t", 1), ("the lover\u2019s", 3)])
def test_curly_and_back_quotes_are_apostrophes(line, n):
    """"o’er" is the elided "o'er" (1), and "is ‘t" / "is `t" is "is 't" (1): the quote marks read as apostrophes."""
    assert count_line(line) == n


@pytest.mark.parametrize("word, n", [
    ("being", 2), ("agreeing", 3),  # "-ing" after a vowel is a syllable of its own; "agree" keeps its two
    ("yond", 1),  # a leading y is a consonant, the rest one group
    ("hopes", 1), ("fortunes", 2),  # "-es" silent after other than a sibilant
    ("antique", 2), ("unique", 2),  # "qu" is a consonant: the final e after it is silent
])
def test_vowel_groups_of_more_spellings(word, n):
    assert vowel_groups(word) == n

"""Tests written against the survivors of `python tools/mutate.py --auto app/measures.py` (docs/testing.md,
"Automated mutants"): the held-out NLL record, the scored shares, copying and form records, each figure computed
here independently on inputs where the surviving slip gives another number."""
from __future__ import annotations

import math

import numpy as np
import pytest

from app.measures import BOOTSTRAP, copying_record, coverage_record, form_record, nll_record
from minigpt2.metrics import wilson_interval
from tests.experiments.test_mutants_stats import plain_bootstrap_t, ratio


def plain_nested_bootstrap(values: np.ndarray, boot: int, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of 0/1 flags (prompts, samples): prompts drawn with replacement, then
    samples within each drawn prompt; the draws from numpy's generator in that order, resample by resample."""
    rng = np.random.default_rng(seed)
    n, k = values.shape
    means = []
    for _ in range(boot):
        i = rng.integers(0, n, size=n)
        j = rng.integers(0, k, size=(n, k))
        means.append(np.mean([[values[i[a], j[a, b]] for b in range(k)] for a in range(n)]))
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------- held-out NLL

def test_the_nll_interval_stays_at_or_above_zero_and_may_reach_it():
    """Seven sonnets scored 0 nats and one 50 (8 x 10 tokens): theta = 50 / 80; the bootstrap-t lower bound of a
    token-weighted NLL runs below zero unclipped, and the record clips it to the NLL's range, [0, inf)."""
    per = {str(i): (0.0, 10) for i in range(7)} | {"7": (50.0, 10)}
    rec = nll_record(per, samples=199)
    v = np.array([[[s, c]] for s, c in per.values()])
    clipped = plain_bootstrap_t([v], lambda rows: ratio(rows[0]), 199, 0, bounds=(0.0, math.inf))
    unclipped = plain_bootstrap_t([v], lambda rows: ratio(rows[0]), 199, 0)
    assert unclipped[0] < 0 and clipped[0] == 0.0  # the data make the bounds matter
    assert rec["nll"] == 0.625 and (rec["low"], rec["high"]) == pytest.approx(clipped, rel=1e-10)


def test_nll_record_sums_float32_figures_in_float64_and_refuses_an_empty_set():
    per = {str(i): (np.float32(10.1 + i / 3), np.float32(7 + i)) for i in range(3)}
    s = [float(np.float32(10.1 + i / 3)) for i in range(3)]
    rec = nll_record(per, samples=10)
    assert rec["nll"] == pytest.approx(sum(s) / 24, rel=1e-15) and rec["tokens"] == 24
    with pytest.raises(ValueError, match="^held-out likelihood of an empty set$"):
        nll_record({})


def test_coverage_record_per_sonnet_and_its_error():
    rec = coverage_record({"a": (7, 9, 4), "b": (10, 11, 2)})
    assert rec == {"scored": 17 / 20, "prompt_in_view": 6 / 20, "continuation_tokens": 20,
                   "per_sonnet": {"a": [7, 9, 4], "b": [10, 11, 2]}}
    with pytest.raises(ValueError, match="^coverage of continuations without tokens$"):
        coverage_record({"a": (0, 0, 0)})


# ---------------------------------------------------------------------------------------------- copying

def test_copying_record_names_its_sets_and_columns():
    rec = copying_record(["5"], [["p\nq\nr\nw x y z"]], [3], ["a b c", "d e f"], {"5": "w x", "6": "y", "7": "q"})
    assert (rec["samples"], rec["sonnets"], rec["training_sonnets"], rec["held_out_sonnets"]) == (1, 1, 2, 3)
    assert rec["columns"] == ["longest training", "found training", "longest held-out", "found held-out", "ngrams"]
    for args in (([], [["x"]], [], [], {}), (["1"], [], [3], [], {})):
        with pytest.raises(ValueError, match="^copying of an empty set$"):
            copying_record(*args)


def test_a_set_without_four_grams_has_no_share_found():
    """Continuations of three words or fewer hold no 4-gram: the share found is 0, not 0 / 0."""
    rec = copying_record(["1", "2"], [["p\nq\nr\na b c", "p\nq\nr\nd"]], [3, 3], ["a b c d"], {"9": "d e"})
    assert rec["per_sonnet"] == {"1": [[3, 0, 0, 0, 0]], "2": [[1, 0, 1, 0, 0]]}
    assert rec["training"]["ngram_share"] == 0.0 and rec["held_out"]["ngram_share"] == 0.0


def test_a_run_of_six_words_from_another_held_out_sonnet_is_not_novel():
    """Nothing from training, six running words of held-out sonnet 9 (three 4-grams of them): not novel by the
    longest run (6 >= 6), though its count of found 4-grams (3) is under 6."""
    rec = copying_record(["1"], [["p\nq\nr\nu v w x y z"]], [3], ["a b c d"], {"1": "p", "9": "u v w x y z"})
    assert rec["per_sonnet"]["1"] == [[0, 0, 6, 3, 3]]
    assert rec["novel"]["rate"] == 0.0


def test_the_novel_interval_over_several_samples_uses_the_given_resamples():
    """Eight prompts, two samples each, alike within a prompt: three novel twice, five copied twice. The rate 6/16
    with the wider of Wilson and the nested bootstrap of `boot` resamples (30 here; the default 1000 reaches
    another upper bound on these flags)."""
    train = ["a b c d e f g h"]
    copied, fresh = "p\nq\nr\na b c d e f g", "p\nq\nr\nz y x w"
    texts = [fresh] * 3 + [copied] * 5
    rec = copying_record([str(i) for i in range(8)], [texts, texts], [3] * 8, train, {}, boot=30)
    flags = np.array([[1.0, 1.0]] * 3 + [[0.0, 0.0]] * 5)
    w_low, w_high = wilson_interval(6, 16)
    b_low, b_high = plain_nested_bootstrap(flags, 30)
    assert BOOTSTRAP != 30 and rec["novel"]["rate"] == 6 / 16
    assert (rec["novel"]["low"], rec["novel"]["high"]) == pytest.approx((min(w_low, b_low), max(w_high, b_high)),
                                                                        rel=1e-12)
    assert plain_nested_bootstrap(flags, BOOTSTRAP)[1] != pytest.approx(b_high)  # the count of resamples matters


# ---------------------------------------------------------------------------------------------- form

def _line(end: str, syllables: int = 10) -> str:
    return " ".join(["the"] * (syllables - 1) + [end])


ENDS = ["day", "night", "way", "light", "tree", "hand", "free", "land", "sea", "stone", "me", "alone", "cold", "old"]
PERFECT = "\n".join(_line(e) for e in ENDS)


def test_form_record_with_two_samples_widens_to_the_given_bootstrap_and_keeps_integer_flags():
    """Two prompts, two samples: prompt 1 perfect twice, prompt 2 never (13 lines). Perfect 2/4, Wilson (0.15,
    0.85); the nested bootstrap of 30 resamples of these alike samples is wider, so it is the interval."""
    thirteen = "\n".join(PERFECT.split("\n")[:13])
    rec = form_record(["1", "2"], [[PERFECT, thirteen], [PERFECT, thirteen]], boot=30)
    flags = np.array([[1.0, 1.0], [0.0, 0.0]])
    w, b = wilson_interval(2, 4), plain_nested_bootstrap(flags, 30)
    texts = [PERFECT] * 3 + [thirteen] * 5  # eight prompts: here 30 resamples and 1000 give other bounds
    eight = form_record([str(i) for i in range(8)], [texts, texts], boot=30)["rates"]["perfect"]
    flags8 = np.array([[1.0, 1.0]] * 3 + [[0.0, 0.0]] * 5)
    w8, b8 = wilson_interval(6, 16), plain_nested_bootstrap(flags8, 30)
    assert (eight["low"], eight["high"]) == pytest.approx((min(w8[0], b8[0]), max(w8[1], b8[1])), rel=1e-12)
    assert (rec["samples"], rec["sonnets"], rec["parts"]) == (2, 2, ["fourteen_lines", "rhyme_scheme", "meter",
                                                                     "perfect"])
    perfect = rec["rates"]["perfect"]
    assert (perfect["low"], perfect["high"]) == pytest.approx((min(w[0], b[0]), max(w[1], b[1])), rel=1e-12)
    assert b[0] < w[0]  # the bootstrap widened it
    assert rec["per_sonnet"] == {"1": [[1, 1, 1, 1], [1, 1, 1, 1]], "2": [[0, 1, 1, 0], [0, 1, 1, 0]]}
    assert all(type(x) is int for x in rec["per_sonnet"]["1"][0])  # written to metrics.json as 1, not 1.0
    for args in (([], [[PERFECT]]), (["1"], [])):
        with pytest.raises(ValueError, match="^form of an empty set$"):
            form_record(*args)


def test_the_form_reasons_are_counted_over_every_sonnet():
    """Reasons, counted by hand: a 13-line sonnet (1 line count; pairs 11/13 and 12/14 are absent, not failed),
    one whose last couplet fails to rhyme with an 8- and a 12-syllable line (and a 9 and an 11), and a perfect
    one; the first reason
    of each failing sonnet as its example."""
    thirteen = "\n".join(PERFECT.split("\n")[:13])
    lines = PERFECT.split("\n")
    lines[13] = _line("tree")  # "cold" / "tree": the couplet fails
    lines[2], lines[5] = _line("way", 8), _line("hand", 12)
    lines[7], lines[9] = _line("land", 9), _line("stone", 11)  # the edges of 9-11: inside
    broken = "\n".join(lines)
    rec = form_record(["1", "2", "3"], [[thirteen, broken, PERFECT]])
    counts = rec["reasons"]["counts"]
    assert counts == {"line count other than 14": 1, "rhyme pairs that fail": 1, "lines outside 9-11 syllables": 2}
    assert rec["reasons"]["examples"] == ["13 lines, expected 14", rec["reasons"]["examples"][1]]
    assert rec["reasons"]["examples"][1].startswith("lines 13/14 (G):")
    two_pairs = "\n".join(PERFECT.split("\n")[:3] + [_line("tree")] + PERFECT.split("\n")[4:13] + [_line("tree")])
    many = form_record([str(i) for i in range(7)], [[two_pairs] * 7])  # 2/4 and 13/14 fail in each
    assert many["reasons"]["counts"] == {"rhyme pairs that fail": 14, "lines outside 9-11 syllables": 0}
    examples = many["reasons"]["examples"]  # the first reason of each, five at most
    assert len(examples) == 5 and all(e.startswith("lines 2/4 (B):") for e in examples)


# ---------------------------------------------------------------------------------------------- reference rows

def test_majority_reference_of_the_rows_scored():
    """The tiny SST dev rows' labels 3 2 3 4 4 2 3 4: of the first five (and an id not in the file), 3 and 4 tie at
    2 and the smaller label wins, 2/5; of all eight, 3 again (3 and 4 tie at 3), 3/8 with its bootstrap-t interval;
    of rows none of which has a label, no reference."""
    from experiments.references import majority_reference
    from experiments.sweeps import TINY_DATA

    folder = TINY_DATA / "tasks"
    ids = [ln.split("\t")[1] for ln in (folder / "ids-sst-dev.csv").read_text(encoding="utf-8").splitlines()[1:]]
    five = majority_reference("sst", folder, "dev", ids[:5] + ["not-a-row"], samples=99)
    assert (five.value, five.n) == (2 / 5, 5)
    eight = majority_reference("sst", folder, "dev", ids, samples=199)  # 99 and 1000 happen to agree here
    right = np.array([1.0, 0, 1, 0, 0, 0, 1, 0])[:, None, None]
    assert (eight.value, eight.n) == (3 / 8, 8)
    assert (eight.low, eight.high) == pytest.approx(
        plain_bootstrap_t([right], lambda rows: float(rows[0].mean()), 199, 0, bounds=(0.0, 1.0)), rel=1e-10)
    assert majority_reference("sst", folder, "dev", ["not-a-row"]) is None


def test_reference_hypotheses_random_tokens_come_from_seed_0_over_the_whole_vocabulary(monkeypatch, tmp_path):
    """The random row: as many uniformly drawn token ids (0 .. vocabulary - 1, numpy's generator from seed 0) as
    the true rest of each sonnet has tokens; the wrong sonnet: the training sonnet nearest in length (not the
    shortest), or the true one itself when training holds nothing else. The tokenizer is the one named."""
    from experiments.references import REFERENCE_NAMES, reference_hypotheses
    from minigpt2.tokenizer import Tokenizer
    from tests.app.test_finetune import FIX

    tok = Tokenizer(str(FIX / "gpt2"))
    monkeypatch.setenv("MINIGPT2_TOKENIZER_DIR", str(tmp_path))  # an empty folder: the tokenizer_dir given wins
    truths = {1: "\n".join(f"line {i} of the first" for i in range(14)),
              2: "\n".join(f"a longer line {i} of the second sonnet" for i in range(14))}
    short, near = "a\nb\nc\nd", "\n".join(f"line {i} of the other" for i in range(14))
    hyps = reference_hypotheses(truths, [short, near, truths[1]], str(FIX / "gpt2"))
    rng = np.random.default_rng(0)
    want = []
    for text in truths.values():
        rest = "\n".join(text.split("\n")[3:])
        want.append("\n".join(text.split("\n")[:3]) + "\n" + tok.decode(
            rng.integers(0, tok.vocab_size, size=len(tok.encode(rest))).tolist()))
    assert hyps[REFERENCE_NAMES[1]] == want
    assert hyps[REFERENCE_NAMES[2]][0] == "\n".join(truths[1].split("\n")[:3] + near.split("\n")[3:])
    alone = reference_hypotheses({1: truths[1]}, [truths[1]], str(FIX / "gpt2"))
    assert alone[REFERENCE_NAMES[2]] == [truths[1]]  # nothing else to take: its own lines


def test_the_unigram_nll_of_no_tokens_is_zero():
    from experiments.references import unigram_counts, unigram_nll

    assert unigram_nll(unigram_counts([[0, 1, 1]], 4), 0.5, []) == 0.0

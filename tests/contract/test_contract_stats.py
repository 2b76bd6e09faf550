"""Statistics, reference rows and the perfect-sonnet check, each against an independent computation:

- the percentile bootstrap (`minigpt2.metrics.bootstrap_interval`, still used to widen the form rates' Wilson
  intervals) holds 95% of an independently drawn bootstrap distribution; the tables' bootstrap-t intervals
  (`experiments.stats`; their coverage is tests/experiments/test_intervals.py's) agree at 400 rows with Student's t-interval
  (scipy) and at 30 sonnets hold about 95% of a bootstrap distribution of chrF rescored by sacrebleu itself;
- the Wilson 95% interval of the distillation summary equals the set of rates the score test does not reject,
  found by bisection, and the textbook values at 0/n and n/n;
- mean ± std is the sample standard deviation (numpy, ddof=1), NaN and None left out;
- the reference rows (prompts only, random tokens, wrong sonnet, majority class) are what experiments/references.py
  describes, checked on hand-made sonnets and on the shipped tiny data;
- the perfect-sonnet check (distill/check.py): 14 lines, the 7 rhyme pairs of ABAB CDCD EFEF GG, and the meter's
  9-11 syllable bounds, on hand-made sonnets at every boundary.
"""
from __future__ import annotations

import csv
import math
import statistics

import numpy as np
import pytest
from sacrebleu.metrics import CHRF

from distill.check import RHYME_PAIRS, check_sonnet, count_syllables, rhyme, summarize_checks
from distill.summary import wilson_interval
from experiments.stats import bootstrap_accuracy, bootstrap_chrf, majority_interval, mean_std
from experiments.sweeps import TINY_DATA
from minigpt2.metrics import bootstrap_interval

from tests.conftest import BPE_DIR

TASKS = TINY_DATA / "tasks"


def inside_share(low: float, high: float, scores: np.ndarray) -> float:
    return float(((scores >= low) & (scores <= high)).mean())


def test_the_accuracy_interval_is_the_t_interval_at_large_n():
    """At 400 rows the bootstrap-t interval (the tables' method) agrees with Student's t-interval (scipy) and the
    normal approximation to within the lattice of a binary mean (1/400 per row)."""
    from scipy import stats as sps

    rng = np.random.default_rng(123)
    labels = rng.integers(0, 2, 400).tolist()
    preds = [y if rng.random() < 0.7 else 1 - y for y in labels]
    iv = bootstrap_accuracy(preds, labels, samples=4000)
    correct = np.array([p == y for p, y in zip(preds, labels)], dtype=float)
    assert iv.value == pytest.approx(correct.mean()) and iv.n == 400
    t = sps.ttest_1samp(correct, 0.0).confidence_interval(0.95)
    assert iv.low == pytest.approx(t.low, abs=0.006) and iv.high == pytest.approx(t.high, abs=0.006)
    p = correct.mean()
    assert (iv.high - iv.low) == pytest.approx(2 * 1.959964 * math.sqrt(p * (1 - p) / 400), rel=0.06)
    assert iv.low < p < iv.high


def test_the_library_bootstrap_returns_the_central_quantiles():
    values = np.linspace(0.0, 1.0, 101)
    lo, hi = bootstrap_interval(lambda i: float(values[i].mean()), 101, samples=4000, seed=3)
    mine = values[np.random.default_rng(5).integers(0, 101, (8000, 101))].mean(1)
    assert inside_share(lo, hi, mine) == pytest.approx(0.95, abs=0.015)
    assert abs((lo + hi) / 2 - 0.5) < 0.01  # central: as much mass cut on each side


def test_the_chrf_interval_is_a_95_percent_bootstrap_of_sacrebleus_corpus_chrf():
    rng = np.random.default_rng(0)
    words = "shall i compare thee to a summer day thou art more lovely and temperate rough winds".split()
    refs = [" ".join(rng.choice(words, 12)) for _ in range(30)]
    hyps = [" ".join(w if rng.random() < 0.6 else rng.choice(words) for w in r.split()) for r in refs]
    iv = bootstrap_chrf(hyps, refs, samples=2000)
    assert iv.value == pytest.approx(CHRF().corpus_score(hyps, [refs]).score, abs=1e-9)
    idx = np.random.default_rng(7).integers(0, 30, (300, 30))
    mine = np.array([CHRF().corpus_score([hyps[i] for i in row], [[refs[i] for i in row]]).score for row in idx])
    assert inside_share(iv.low, iv.high, mine) == pytest.approx(0.95, abs=0.03)


def test_the_majority_interval_scores_the_most_frequent_label():
    labels = [2] * 30 + [0] * 12 + [1] * 8
    iv = majority_interval(labels, samples=500)
    assert iv.value == pytest.approx(30 / 50) and iv.n == 50 and iv.low < 0.6 < iv.high


def test_mean_std_is_the_sample_standard_deviation():
    vals = [41.2, 39.8, 43.1, 40.5]
    mean, std = mean_std(vals + [float("nan"), None])
    assert mean == pytest.approx(np.mean(vals)) and std == pytest.approx(np.std(vals, ddof=1))
    assert mean_std([3.0]) == (3.0, 0.0)
    assert all(math.isnan(x) for x in mean_std([]))


def wilson_by_bisection(k: int, n: int, z: float) -> tuple[float, float]:
    """The rates p0 the score test keeps, |k/n - p0| <= z sqrt(p0 (1 - p0) / n), found by bisection."""
    ok = lambda p0: abs(k / n - p0) <= z * math.sqrt(p0 * (1 - p0) / n) + 1e-15  # noqa: E731

    def edge(inside: float, outside: float) -> float:
        for _ in range(200):
            mid = (inside + outside) / 2
            inside, outside = (mid, outside) if ok(mid) else (inside, mid)
        return inside

    centre = k / n if 0 < k < n else (1e-12 if k == 0 else 1 - 1e-12)
    return edge(centre, 0.0) if k else 0.0, edge(centre, 1.0) if k < n else 1.0


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (5, 10), (81, 263), (1, 40), (700, 1000)])
def test_the_wilson_interval_is_the_95_percent_score_interval(k, n):
    z = statistics.NormalDist().inv_cdf(0.975)
    lo, hi = wilson_interval(k, n)
    want = wilson_by_bisection(k, n, z)
    assert lo == pytest.approx(want[0], abs=1e-9) and hi == pytest.approx(want[1], abs=1e-9)
    assert wilson_interval(0, 0) is None


def test_wilson_textbook_values():
    assert wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)  # the "rule of three"-like upper bound
    assert wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)


# ---------------------------------------------------------------------------------------------- reference rows

def sonnet(first: str, n: int = 14) -> str:
    return "\n".join(f"{first} line {i} of this sonnet" for i in range(n))


def test_reference_hypotheses_are_the_prompt_random_tokens_and_the_nearest_other_sonnet():
    from experiments.references import REFERENCE_NAMES, reference_hypotheses
    from minigpt2.tokenizer import Tokenizer

    truth = sonnet("true")
    near = sonnet("nearby")  # a little longer than the truth: the nearest other sonnet
    far = sonnet("far and much much longer words here")
    hyps = reference_hypotheses({1: truth}, [truth, far, near], str(BPE_DIR), seed=0)
    prompt = "\n".join(truth.split("\n")[:3])
    assert list(hyps) == list(REFERENCE_NAMES)
    assert hyps[REFERENCE_NAMES[0]] == [prompt]
    random_ = hyps[REFERENCE_NAMES[1]][0]
    assert random_.startswith(prompt + "\n") and random_ != prompt + "\n"
    assert random_ != reference_hypotheses({1: truth}, [near], str(BPE_DIR), seed=1)[REFERENCE_NAMES[1]][0]
    rest_tokens = len(Tokenizer(str(BPE_DIR)).encode("\n".join(truth.split("\n")[3:])))
    assert abs(len(Tokenizer(str(BPE_DIR)).encode(random_[len(prompt) + 1:])) - rest_tokens) <= rest_tokens // 3
    assert hyps[REFERENCE_NAMES[2]] == [prompt + "\n" + "\n".join(near.split("\n")[3:])]


def test_sonnet_reference_rows_score_chrf_against_the_true_sonnets():
    from experiments.references import REFERENCE_NAMES, sonnet_reference_intervals
    from course.readers import read_sonnets

    rows = sonnet_reference_intervals(str(TASKS), "dev", None, str(BPE_DIR), 300)
    truths = [s.text for s in read_sonnets(TASKS / "TRUE_sonnets_held_out_dev.txt")[0]]
    prompts = ["\n".join(t.split("\n")[:3]) for t in truths]
    only = rows[REFERENCE_NAMES[0]]
    assert only.value == pytest.approx(CHRF().corpus_score(prompts, [truths]).score)
    assert only.n == len(truths) == 3 and math.isnan(only.low)  # 3 tiny sonnets: too few for an interval


def test_the_majority_reference_is_the_majority_share_of_the_rows():
    from experiments.references import majority_reference

    with open(TASKS / "ids-sst-dev.csv", newline="", encoding="utf-8") as f:
        labels = [int(float(r["sentiment"])) for r in csv.DictReader(f, delimiter="\t")]
    iv = majority_reference("sst", TASKS, "dev", samples=300)
    assert iv.value == pytest.approx(max(labels.count(k) for k in set(labels)) / len(labels))
    assert iv.n == len(labels)


# ---------------------------------------------------------------------------------------- the perfect-sonnet check

RHYMES = {"A": ("day", "may"), "B": ("night", "light"), "C": ("sea", "free"), "D": ("song", "long"),
          "E": ("heart", "part"), "F": ("eyes", "skies"), "G": ("time", "rhyme")}


def scheme_sonnet(scheme: str = "ABABCDCDEFEFGG") -> str:
    used: dict[str, int] = {}
    lines = []
    for letter in scheme:
        word = RHYMES[letter][used.get(letter, 0) % 2]
        used[letter] = used.get(letter, 0) + 1
        lines.append(f"and so I sing of thee at close of {word}")
    return "\n".join(lines)


def test_the_rhyme_pairs_are_those_of_a_shakespearean_sonnet():
    assert sorted(RHYME_PAIRS) == [(0, 2), (1, 3), (4, 6), (5, 7), (8, 10), (9, 11), (12, 13)]


def test_a_sonnet_with_fourteen_rhyming_lines_is_perfect():
    result = check_sonnet(scheme_sonnet())
    assert result.perfect and result.n_lines == 14 and not result.failed_pairs


@pytest.mark.parametrize("n", [13, 15, 12])
def test_another_line_count_is_not_perfect(n):
    text = scheme_sonnet() + "\nwith one line more of day" if n == 15 else \
        "\n".join(scheme_sonnet().split("\n")[:n])
    result = check_sonnet(text)
    assert not result.perfect and result.n_lines == n and f"{n} lines, expected 14" in result.reasons[0]


def test_blank_lines_do_not_count():
    assert check_sonnet(scheme_sonnet().replace("\n", "\n\n", 3) + "\n\n").perfect


@pytest.mark.parametrize("scheme,pair", [
    ("ABBACDCDEFEFGG", (1, 3)),  # envelope quatrain: lines 1/3 do not rhyme
    ("ABABCDDCEFEFGG", (6, 8)),
    ("ABABCDCDEFEFGA", (13, 14)),  # the couplet
])
def test_a_broken_rhyme_pair_is_found(scheme, pair):
    result = check_sonnet(scheme_sonnet(scheme))
    assert not result.perfect
    assert pair in [(i, j) for i, j, _, _ in result.failed_pairs]


def test_rhyme_verdicts():
    assert rhyme("day", "may")[0] and rhyme("wind", "kind")[0] and rhyme("wind", "sinned")[0]
    assert not rhyme("day", "dog")[0] and not rhyme("heart", "night")[0]
    assert rhyme("o'er", "more")[0]  # archaic spelling
    assert rhyme("same", "same") == (True, "identical")


def words(n: int) -> str:
    return " ".join(["cat"] * n)  # one syllable each


@pytest.mark.parametrize("n,metrical", [(8, False), (9, True), (10, True), (11, True), (12, False)])
def test_meter_counts_lines_of_9_to_11_syllables(n, metrical):
    assert count_syllables(words(n)) == n
    result = check_sonnet("\n".join([words(n)] * 14), meter=True)
    assert result.syllables == [n] * 14
    assert result.metrical_lines == (14 if metrical else 0)
    summary = summarize_checks([result], meter=True)
    assert summary["meter_line_rate"] == (1.0 if metrical else 0.0)
    assert summary["meter_sonnet_rate"] == (1.0 if metrical else 0.0)


def test_meter_rates_over_lines_and_sonnets():
    mixed = check_sonnet("\n".join([words(10)] * 13 + [words(12)]), meter=True)
    good = check_sonnet("\n".join([words(9)] * 14), meter=True)
    s = summarize_checks([mixed, good], meter=True)
    assert s["meter_line_rate"] == pytest.approx(27 / 28) and s["meter_sonnet_rate"] == 0.5
    assert s["sonnets"] == 2 and s["wrong_line_count"] == 0


def test_syllables_come_from_the_dictionary():
    assert count_syllables("I walk alone upon a summer day") == 10
    assert count_syllables("beautiful") == 3

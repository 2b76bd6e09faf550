"""Tests written against the survivors of `python tools/mutate.py --auto experiments/tables.py` (docs/testing.md,
"Automated mutants"): every block of a sweep's report, whole (caption, header, every cell), on hand-made points and
rows where a one-line slip prints another table: the reference arm not first, an arm without its reference, seeds
of one arm pooled (an odd count) beside an arm of one seed, a split without figures, values that round apart at
another digit count. Expected cells are worked out here: by hand, with scipy (the t quantile, the exact binomial),
or with the loop-by-loop bootstrap-t and sign-flip test of `test_mutants_stats.py` on per-example scores that a
fake `run_scores` hands over; no run folder or data file is read.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats as sps

from experiments import tables
from experiments.references import REAL_SONNETS, REFERENCE_NAMES
from experiments.stats import ExampleScores, Interval
from experiments.sweeps import ZERO_SHOT_QUORA, Column, Reference, Sweep
from tests.experiments.test_mutants_stats import plain_bootstrap_t, plain_sign_flip, ratio

NAN = math.nan
PROMPTS, RANDOM, WRONG = REFERENCE_NAMES
FLAGGED = WRONG + " (**copying: a training sonnet pasted**)"


def table(heads: list[str], *lines: list[str]) -> str:
    """A markdown table as the report writes it, built here apart from `tables._table`."""
    out = "| " + " | ".join(heads) + " |\n|" + "---|" * len(heads) + "\n"
    return out + "".join("| " + " | ".join(cells) + " |\n" for cells in lines)


LORA = Sweep("fake-lora", [], knobs={"task": "data.task", "method": "model.method", "rank": "model.lora.rank"},
             columns=(Column("method", "method"), Column("rank", "rank"), Column("trainable params",
                                                                                "trainable_params")),
             after=(Column("chosen by dev score", lambda p: "best" if p.get("best") else None),))


# ---------------------------------------------------------------------------------------------- the main table

SONNET_POINT = {"method": "lora", "rank": 4, "trainable_params": 147456, "compute": "bf16 autocast", "seeds": 1,
                "metric": "chrf", "score": 41.234, "low": 40.0123, "high": 42.5, "n": 12, "test_seeds": 1,
                "test_score": 40.1, "test_low": 38.95, "test_high": 41.26, "test_n": 12,
                "dev_nll": 3.4172, "dev_nll_low": 3.2051, "dev_nll_high": 3.6633, "dev_nll_n": 12,
                "test_nll": 3.9021, "test_nll_low": NAN, "test_nll_high": NAN, "test_nll_n": 5,
                "dev_nll_scored": 0.875, "dev_nll_in_view": 0.6131, "test_nll_scored": 1.0, "test_nll_in_view": 1.0,
                "best": True}
NOT_RUN = {"method": "full", "rank": None, "trainable_params": None, "compute": None, "seeds": 0, "metric": None,
           "score": NAN, "low": NAN, "high": NAN, "n": None, "test_seeds": 0}


def test_the_main_table_of_sonnet_points_shows_scores_nll_and_scored_shares_in_their_columns():
    heads = ["method", "rank", "trainable params", "compute", "dev chrF [95% CI]", "test chrF [95% CI]",
             "dev held-out NLL (nats/token)", "test held-out NLL (nats/token)",
             "NLL tokens scored, dev / test (with the whole prompt in view)", "chosen by dev score"]
    assert tables.markdown_table(LORA, [SONNET_POINT, NOT_RUN]) == table(
        heads,
        ["lora", "4", "147,456", "bf16 autocast", "41.23 [40.01, 42.50] n=12", "40.10 [38.95, 41.26] n=12",
         "3.417 [3.205, 3.663] n=12", "3.902 (n=5, too few for an interval)", "87.5% (61.3%) / 100% (100%)",
         "best"],
        ["full", "—", "—", "—", "—", "—", "—", "—", "— / —", "—"])
    # NLL without the scored shares (runs from before they were recorded): no column for them
    older = {k: v for k, v in SONNET_POINT.items() if "scored" not in k and "in_view" not in k}
    assert tables.markdown_table(LORA, [older]) == table(
        [h for h in heads if not h.startswith("NLL tokens")],
        ["lora", "4", "147,456", "bf16 autocast", "41.23 [40.01, 42.50] n=12", "40.10 [38.95, 41.26] n=12",
         "3.417 [3.205, 3.663] n=12", "3.902 (n=5, too few for an interval)", "best"])


def test_the_main_table_of_classifiers_has_the_majority_class_and_a_mixed_table_names_no_metric():
    sst = {"method": "full", "rank": None, "trainable_params": 124439808, "compute": "fp32", "seeds": 3,
           "metric": "accuracy", "score": 0.51234, "low": 0.4871, "high": 0.5376, "n": 872, "test_seeds": 0,
           "majority": 0.5092, "majority_low": 0.4759, "majority_high": 0.5424}
    heads = ["method", "rank", "trainable params", "compute",
             "dev accuracy [mean over seeds, 95% t-interval across seeds]",
             "test accuracy [mean over seeds, 95% t-interval across seeds]", "chosen by dev score",
             "majority class (dev rows) [95% CI]"]
    line = ["full", "—", "124,439,808", "fp32", "0.512 [0.487, 0.538] (3 seeds, n=872 each)", "—", "—",
            "0.509 [0.476, 0.542] n=872"]
    assert tables.markdown_table(LORA, [sst]) == table(heads, line)
    mixed = tables.markdown_table(LORA, [{**SONNET_POINT, "dev_nll": None}, sst])
    assert mixed.splitlines()[0] == "| " + " | ".join(
        heads[:4] + ["dev score [mean over seeds, 95% t-interval across seeds]",
                     "test score [mean over seeds, 95% t-interval across seeds]"] + heads[6:]) + " |"
    assert mixed.splitlines()[2].endswith("| best | — |")  # the chrF point has no majority class


# ---------------------------------------------------------------------------------------------- form and copying

def rates(*triples: tuple[float, float, float], n: int, seeds: int | None = None) -> dict:
    out = {}
    for part, (rate, low, high) in zip(("fourteen_lines", "rhyme_scheme", "meter", "perfect"), triples):
        out.update({f"dev_{part}": rate, f"dev_{part}_low": low, f"dev_{part}_high": high, f"dev_{part}_n": n})
        if seeds:
            out[f"dev_{part}_seeds"] = seeds
    return out


FORM_CAPTION = ("Form of what each model wrote (every dev sonnet through `distill.check`; Wilson 95% intervals over "
                "the sonnets, widened by a bootstrap over prompts and samples when there are several samples):\n")


def test_the_form_table_shows_each_rate_in_percent_under_its_head_and_the_samples_per_prompt():
    one = {"method": "lora", "rank": 4, "trainable_params": 147456, "seeds": 1, "dev_form_samples": 3.0,
           **rates((0.9167, 0.6461, 0.9851), (0.4722, 0.3178, 0.6322), (0.3056, 0.1786, 0.4705),
                   (0.1389, 0.0604, 0.2862), n=36)}
    three = {"method": "lora", "rank": 16, "trainable_params": 589824, "seeds": 3, "dev_form_samples": 2.6667,
             **rates((0.8611, 0.7514, 0.9708), (0.4167, 0.2083, 0.6251), (0.2778, 0.1012, 0.4544),
                     (0.0972, -0.0235, 0.2179), n=24, seeds=3)}
    unsampled = {"method": "full", "rank": None, "trainable_params": 1000, "seeds": 1,
                 **rates((1.0, 0.7575, 1.0), (0.5, 0.2538, 0.7462), (0.25, 0.0889, 0.5322), (0.0, 0.0, 0.2425),
                         n=12)}
    name = "[mean over seeds, 95% t-interval across seeds]"
    heads = ["method", "rank", "trainable params", f"dev 14 lines % {name}", f"dev rhyme scheme % {name}",
             f"dev meter (9-11 syll.) % {name}", f"dev perfect % {name}", "samples per prompt"]
    assert tables.form_block(LORA, [NOT_RUN, one, three, unsampled]) == [FORM_CAPTION, table(
        heads,
        ["lora", "4", "147,456", "92 [65, 99] n=36", "47 [32, 63] n=36", "31 [18, 47] n=36", "14 [6, 29] n=36",
         "3"],
        ["lora", "16", "589,824", "86 [75, 97] (3 seeds, n=24 each)", "42 [21, 63] (3 seeds, n=24 each)",
         "28 [10, 45] (3 seeds, n=24 each)", "10 [-2, 22] (3 seeds, n=24 each)", "3"],
        ["full", "—", "1,000", "100 [76, 100] n=12", "50 [25, 75] n=12", "25 [9, 53] n=12", "0 [0, 24] n=12",
         "—"])]
    assert tables.form_block(LORA, [one])[1].splitlines()[0].endswith("| dev perfect % [95% CI] | samples per prompt |")
    assert tables.form_block(LORA, [NOT_RUN]) == []


def copy_record(novel: tuple[float, float, float], training: tuple[float, int, float],
                held_out: tuple[float, int, float]) -> dict:
    """An `app.measures.copying_record` of a reference row."""
    keys = ("longest_mean", "longest_max", "ngram_share")
    return {"novel": dict(zip(("rate", "low", "high"), novel)), "training": dict(zip(keys, training)),
            "held_out": dict(zip(keys, held_out))}


PROMPTS_COPYING = copy_record((1.0, 0.7575, 1.0), (2.4167, 4, 0.0021), (2.0833, 3, 0.0))
WRONG_COPYING = copy_record((0.0, 0.0, 0.2425), (96.3333, 112, 0.9861), (3.9167, 7, 0.0152))
REAL_COPYING = copy_record((0.9167, 0.6461, 0.9851), (4.5833, 8, 0.0417), (3.4167, 6, 0.0123))


def test_the_copying_table_shows_each_arm_then_the_reference_rows_with_the_pasted_sonnet_flagged():
    arm = {"method": "lora", "rank": 4, "trainable_params": 147456, "dev_novel": 0.9167, "dev_novel_low": 0.6461,
           "dev_novel_high": 0.9851, "dev_copy_train_longest": 4.5833, "dev_copy_train_longest_max": 8,
           "dev_copy_train_share": 0.03125, "dev_copy_held_longest": 3.4167, "dev_copy_held_longest_max": 6,
           "dev_copy_held_share": 0.0123, "dev_copy_n": 4.0, "dev_copy_novel_below": 6.0}
    bare = {"method": "lora", "rank": 16, "trainable_params": 589824, "dev_novel": 0.75,  # no bounds, no held-out
            "dev_copy_train_longest": 5.1667, "dev_copy_train_longest_max": 11, "dev_copy_train_share": 0.0417,
            "dev_copy_n": 5.0, "dev_copy_novel_below": 7.0}
    heads = ["method", "rank", "trainable params", "dev novel % [95% CI]",
             "dev longest run shared with training, words: mean (max)", "dev 4-grams found in training %",
             "dev longest run shared with other held-out sonnets: mean (max)", "dev 4-grams found in other held-out %"]
    caption = ("Copying in what each model wrote (dev; the generated lines, not the prompt; words lower-cased, "
               "punctuation dropped): novel = no run of 6 or more words shared with a training sonnet or another "
               "held-out sonnet (Wilson 95% CI, widened over samples as the form rates); the held-out sonnets no model "
               "saw show what chance shares:\n")
    refs = {PROMPTS: PROMPTS_COPYING, WRONG: WRONG_COPYING}
    assert tables.copying_block(LORA, [NOT_RUN, arm, bare], refs) == [caption, table(
        heads,
        ["lora", "4", "147,456", "92 [65, 99]", "4.6 (8)", "3.1", "3.4 (6)", "1.2"],
        ["lora", "16", "589,824", "75", "5.2 (11)", "4.2", "—", "—"],
        ["reference: prompts only", "—", "—", "100 [76, 100]", "2.4 (4)", "0.2", "2.1 (3)", "0.0"],
        [f"reference: {FLAGGED}", "—", "—", "0 [0, 24]", "96.3 (112)", "98.6", "3.9 (7)", "1.5"])]
    assert tables.copying_block(LORA, [arm])[1].count("\n") == 3  # no reference rows: the arm alone
    assert tables.copying_block(LORA, [NOT_RUN]) == []
    assert tables.copying_cells(None, [None] * 6) == ["—"] * 5


# ---------------------------------------------------------------------------------------------- chance rows

def form_of(sonnets: int, *triples: tuple[float, float, float]) -> dict:
    return {"sonnets": sonnets, "rates": {part: dict(zip(("rate", "low", "high"), t))
                                          for part, t in zip(("fourteen_lines", "rhyme_scheme", "meter", "perfect"),
                                                             triples)}}


REFERENCE_CAPTION = ("Reference points (no model; same prompts as the runs; chrF: bootstrap 95% CI; form and novel: "
                     "Wilson 95% CI; copying as in the copying table):\n")
NLL_CAPTION = ("Held-out NLL before fine-tuning, and the bars from the data alone (nats per token of the true "
               "continuations, <|endoftext|> included; lower is better): a unigram of the training sonnets' tokens "
               "and a uniform guess; every fine-tuned row must clear all three:\n")
REFERENCE_HEADS = ["reference", "dev chrF [95% CI]", "test chrF [95% CI]", "dev 14 lines %", "dev rhyme scheme %",
                   "dev meter %", "dev perfect %", "dev novel %",
                   "dev longest run shared with training, words: mean (max)"]
NLL_HEADS = ["model", "dev NLL before", "test NLL before", "dev NLL after", "test NLL after"]
SONNET_ROWS = [
    {"run": "sst-s1", "status": "done", "metric": "accuracy", "dev_nll_base": 9.0},  # not a sonnet run
    {"run": "lora-r4-s1", "status": "done", "metric": "chrf", "dev_nll_base": None},  # recorded none
    {"run": "full-s1", "status": "failed", "metric": "chrf", "dev_nll_base": 5.0},  # did not finish
    {"run": "lora-r16-s1", "status": "done", "metric": "chrf", "dev_nll_base": 5.12345, "test_nll_base": 5.4321,
     "dev_nll": 3.98765, "test_nll": None},
    {"run": "lora-r64-s1", "status": "done", "metric": "chrf", "dev_nll_base": 5.2, "test_nll_base": 5.5,
     "dev_nll": 3.9, "test_nll": 4.1}]  # the same base model: only the first row shows it
BASE_LINE = ["base model before fine-tuning (lora-r16-s1)", "5.123", "5.432", "3.988", "—"]


def test_the_chance_rows_show_each_reference_figure_in_its_column_and_the_nll_bars():
    found = {
        "chrf": {"dev": {PROMPTS: Interval(18.234, 16.871, 19.502, 12), RANDOM: Interval(21.5, 20.126, 22.949, 12),
                         WRONG: Interval(24.0549, 22.3, 25.7, 12)},
                 "test": {PROMPTS: Interval(17.9, NAN, NAN, 5)}},  # 5 test sonnets: too few for an interval
        "form": {PROMPTS: form_of(12, (0.0, 0.0, 0.2425), (0.0833, 0.0149, 0.3539), (0.1667, 0.047, 0.448),
                                  (0.0, 0.0, 0.2425)),
                 REAL_SONNETS: form_of(12, (1.0, 0.7575, 1.0), (0.9167, 0.6461, 0.9851), (0.75, 0.4677, 0.9111),
                                       (0.6667, 0.3906, 0.8619))},
        "copying": {WRONG: WRONG_COPYING, REAL_SONNETS: REAL_COPYING},
        "nll": {"dev": {"unigram": {"nll": 6.4321, "low": 6.2109, "high": 6.6702, "sonnets": 12, "k": 0.05},
                        "uniform": 10.82490511}, "test": None}}
    themselves = "— (the references themselves)"
    assert tables.sonnet_reference_block(SONNET_ROWS, found) == [
        REFERENCE_CAPTION, table(
            REFERENCE_HEADS,
            ["prompts only", "18.23 [16.87, 19.50] n=12", "17.90 (n=5, too few for an interval)", "0 [0, 24] n=12",
             "8 [1, 35] n=12", "17 [5, 45] n=12", "0 [0, 24] n=12", "—", "—"],
            ["prompts + random tokens", "21.50 [20.13, 22.95] n=12", "—", "—", "—", "—", "—", "—", "—"],
            [FLAGGED, "24.05 [22.30, 25.70] n=12", "—", "—", "—", "—", "—", "0 [0, 24]", "96.3 (112)"],
            ["real held-out sonnets", themselves, themselves, "100 [76, 100] n=12", "92 [65, 99] n=12",
             "75 [47, 91] n=12", "67 [39, 86] n=12", "92 [65, 99]", "4.6 (8)"]),
        NLL_CAPTION, table(
            NLL_HEADS, BASE_LINE,
            ["unigram of the training sonnets' tokens (add-0.05) [95% CI]", "6.432 [6.211, 6.670] n=12", "—",
             "— (not trained)", "— (not trained)"],
            ["uniform guess, ln(vocabulary)", "10.825", "—", "— (not trained)", "— (not trained)"])]


def test_the_nll_bars_follow_their_split_and_the_base_row_stands_alone_without_them():
    bars = {"dev": None, "test": {"unigram": {"nll": 6.9, "low": 6.512, "high": 7.3456, "sonnets": 9, "k": 0.2},
                                  "uniform": 10.8249}}
    found = {"chrf": {"dev": None, "test": None}, "form": None, "copying": None, "nll": bars}
    out = tables.sonnet_reference_block(SONNET_ROWS[:1], found)
    assert out[0] == REFERENCE_CAPTION and out[1] == table(REFERENCE_HEADS, *(
        [name] + ["— (the references themselves)" if name == REAL_SONNETS else "—"] * 2 + ["—"] * 6
        for name in (PROMPTS, RANDOM, FLAGGED, REAL_SONNETS)))
    assert out[2:] == [NLL_CAPTION, table(
        NLL_HEADS,
        ["unigram of the training sonnets' tokens (add-0.2) [95% CI]", "—", "6.900 [6.512, 7.346] n=9",
         "— (not trained)", "— (not trained)"],
        ["uniform guess, ln(vocabulary)", "—", "10.825", "— (not trained)", "— (not trained)"])]
    found["nll"] = {"dev": None, "test": None}
    assert tables.sonnet_reference_block(SONNET_ROWS, found)[2:] == [NLL_CAPTION, table(NLL_HEADS, BASE_LINE)]
    assert len(tables.sonnet_reference_block(SONNET_ROWS[:3], found)) == 2  # no base row, no bar: no NLL table
    assert tables.sonnet_reference_block(SONNET_ROWS, None) == []
    assert tables.sonnet_reference_block(SONNET_ROWS, OSError("no sonnets.txt in /data")) == [
        "Sonnet reference rows left out: no sonnets.txt in /data.\n"]


# ---------------------------------------------------------------------------------------------- paired differences

def correct(bits: str) -> np.ndarray:
    return np.array([float(b) for b in bits])[:, None, None]


# Per run and split, which examples it got right. Rank 8 is the reference; rank 4 has three seeds, rank 16 one
# (its seed 2 failed), and rank 16 scored no test labels.
DEV = {"r8-s1": "110101101011", "r4-s1": "100111101111", "r16-s1": "111101111110",
       "r8-s2": "101101001110", "r4-s2": "111111011110", "r8-s3": "010111011001", "r4-s3": "110111011101"}
TEST = {"r8-s1": "101100110", "r4-s1": "111100111", "r8-s2": "100110011", "r4-s2": "101111010",
        "r8-s3": "011010110", "r4-s3": "111011111"}


def discordant(a: str, b: str) -> tuple[int, int]:
    return sum(x > y for x, y in zip(a, b)), sum(x < y for x, y in zip(a, b))


def p_cell(a: str, b: str) -> str:
    """An accuracy difference's tests, by hand: the sign-flip p is the exact binomial on the discordant rows, and
    so is McNemar's below 25 of them."""
    only_a, only_b = discordant(a, b)
    p = sps.binomtest(only_a, only_a + only_b, 0.5).pvalue
    return f"sign-flip p={p:.3g}, McNemar p={p:.3g} (exact binomial; {only_a} vs {only_b} discordant)"


def seeds_cell(arm: list[str], ref: list[str], digits: int) -> str:
    """The mean of per-seed accuracy differences with scipy's 95% t-interval across seeds."""
    d = [(a.count("1") - b.count("1")) / len(a) for a, b in zip(arm, ref)]
    mean = sum(d) / len(d)
    half = sps.t.ppf(0.975, len(d) - 1) * math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1)) / math.sqrt(len(d))
    return (f"{mean:+.{digits}f} [{mean - half:+.{digits}f}, {mean + half:+.{digits}f}] ({len(d)} seeds, "
            f"n={len(arm[0])} each; per seed: " + " / ".join(p_cell(a, b) for a, b in zip(arm, ref)) + ")")


def one_seed_cell(a: np.ndarray, b: np.ndarray, f, bounds, digits: int, samples: int, p: str) -> str:
    low, high = plain_bootstrap_t([a, b], f, samples, 0, bounds=bounds)
    return f"{f([a, b]):+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] n={len(a)}, {p}"


def accuracy_rows() -> list[dict]:
    rows = []
    for seed in (1, 2, 3):
        for rank in (4, 8, 16):
            rows.append({"task": "sst", "method": "lora", "rank": rank, "seed": seed, "metric": "accuracy",
                         "trainable_params": 36864 * rank, "run_dir": f"r{rank}-s{seed}",
                         "status": "done" if f"r{rank}-s{seed}" in DEV else "failed"})
    return rows


def fake_scores(monkeypatch, scores: dict) -> list:
    """`tables.run_scores` reads (run folder, split, metric) from `scores`; returns the calls."""
    calls = []

    def run_scores(run_dir, split="dev", metric=None):
        calls.append((run_dir, split, metric))
        return scores.get((run_dir, split, metric))
    monkeypatch.setattr(tables, "run_scores", run_scores)
    return calls


PAIRED_HEAD = ("Paired differences, arm − reference ({}), on the examples both scored{}: one seed, a paired "
               "bootstrap-t 95% interval over the n shared examples (both arms resampled on the same examples; none "
               "below 8), the sign-flip permutation p-value (exact up to 14 examples) and, for accuracy, McNemar's "
               "test; several seeds, the mean of the per-seed differences with a 95% t-interval across seeds:\n")


def test_each_arm_is_paired_with_its_reference_of_the_same_seed_and_its_seeds_pool(monkeypatch):
    scores = {}
    for split, bits in (("dev", DEV), ("test", TEST)):
        for run, b in bits.items():
            ids = tuple(f"{split}{i}" for i in range(len(b)))
            scores[run, split, None] = ExampleScores("accuracy", ids, correct(b))
    # rank 16's test rows share no example with the others': no difference, a dash
    scores["r16-s1", "test", None] = ExampleScores("accuracy", tuple(f"x{i}" for i in range(9)), correct("1" * 9))
    calls = fake_scores(monkeypatch, scores)
    sweep = Sweep("fake-ranks", [], knobs={"task": "data.task", "method": "model.method", "rank": "model.lora.rank"},
                  columns=(Column("rank", "rank"), Column("trainable params", "trainable_params")),
                  references=(Reference("full fine-tuning", lambda ref, arm: ref.get("method") == "full"),
                              Reference("LoRA rank 8", lambda ref, arm: ref.get("rank") == 8),
                              Reference("LoRA rank 4", lambda ref, arm: ref.get("rank") == 4)))
    out = tables.paired_block(sweep, accuracy_rows(), samples=99)
    arm4 = [DEV[f"r4-s{s}"] for s in (1, 2, 3)], [DEV[f"r8-s{s}"] for s in (1, 2, 3)]
    test4 = [TEST[f"r4-s{s}"] for s in (1, 2, 3)], [TEST[f"r8-s{s}"] for s in (1, 2, 3)]
    mean = lambda rows: float(rows[0].mean() - rows[1].mean())  # noqa: E731
    r16 = one_seed_cell(correct(DEV["r16-s1"]), correct(DEV["r8-s1"]), mean, (-1.0, 1.0), 3, 99,
                        p_cell(DEV["r16-s1"], DEV["r8-s1"]))
    # by hand: rank 4 is 1, 3 and 2 rows of 12 better than rank 8 (mean 2/12, sd 1/12); rank 16 two rows better, with
    # 3 of its 4 discordant rows its own (p = 2 x 5/16)
    assert seeds_cell(*arm4, 3).startswith("+0.167 [-0.040, +0.374] (3 seeds, n=12 each")
    assert r16.startswith("+0.167 [") and "n=12, sign-flip p=0.625" in r16
    assert out == [PAIRED_HEAD.format("LoRA rank 8", ""), table(
        ["rank", "trainable params", "metric", "Δ dev", "Δ test"],
        ["4", "147,456", "accuracy", seeds_cell(*arm4, 3), seeds_cell(*test4, 3)],
        ["16", "589,824", "accuracy", r16, "—"]),
        PAIRED_HEAD.format("LoRA rank 4", ""), table(
        ["rank", "trainable params", "metric", "Δ dev", "Δ test"],
        ["8", "294,912", "accuracy", seeds_cell(*arm4[::-1], 3), seeds_cell(*test4[::-1], 3)],
        ["16", "589,824", "accuracy", one_seed_cell(correct(DEV["r16-s1"]), correct(DEV["r4-s1"]), mean, (-1.0, 1.0),
                                                    3, 99, p_cell(DEV["r16-s1"], DEV["r4-s1"])), "—"])]
    assert sorted(set(calls)) == sorted({(run, split, None) for run in DEV for split in ("dev", "test")})
    assert len(calls) == len(set(calls))  # each run's scores read once, whatever the references


def nll_scores(n: int, seed: int) -> np.ndarray:
    """(n, 1, 2) per-sonnet (summed NLL, tokens), drawn apart from the code under test."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(30, 90, size=(n, 1)).astype(float)
    return np.stack([tokens * rng.uniform(2.0, 4.0, size=(n, 1)), tokens], -1)


def test_a_sonnet_arm_is_paired_in_chrf_and_in_held_out_nll_with_four_decimals(monkeypatch):
    ids = tuple(str(i) for i in range(9))
    chrf = np.random.default_rng(5).integers(1, 40, size=(9, 1, 18)).astype(float)  # the same statistics: Δ 0
    arm, ref = nll_scores(9, 11), nll_scores(9, 12)
    scores = {("attn", "dev", None): ExampleScores("chrf", ids, chrf),
              ("attn-mlp", "dev", None): ExampleScores("chrf", ids, chrf),
              ("attn", "test", None): ExampleScores("chrf", ids, chrf),
              ("attn-mlp", "test", None): ExampleScores("chrf", ids, chrf),
              ("attn", "dev", "nll"): ExampleScores("nll", ids, arm),
              ("attn-mlp", "dev", "nll"): ExampleScores("nll", ids, ref),
              ("attn-mlp", "test", "nll"): ExampleScores("nll", ids, ref)}  # the arm recorded no test NLL
    fake_scores(monkeypatch, scores)
    rows = [{"targets": "attn+mlp", "rank": 4, "seed": 1, "status": "done", "metric": "chrf", "run_dir": "attn-mlp"},
            {"targets": "attn", "rank": 4, "seed": 1, "status": "done", "metric": "chrf", "run_dir": "attn"}]
    sweep = Sweep("fake-targets", [], knobs={"targets": "model.lora.targets", "rank": "model.lora.rank"},
                  references=(Reference("attn+mlp", lambda ref, arm: ref.get("targets") == "attn+mlp"),))
    f = lambda rows: ratio(rows[0]) - ratio(rows[1])  # noqa: E731
    p = plain_sign_flip(arm, ref, ratio)
    nll = one_seed_cell(arm, ref, f, (-math.inf, math.inf), 4, 99, f"sign-flip p={p:.3g}")
    assert nll.startswith(f"{ratio(arm) - ratio(ref):+.4f} [")
    same = "+0.00 [+0.00, +0.00] n=9, sign-flip p=1"
    assert tables.paired_block(sweep, rows, samples=99) == [
        PAIRED_HEAD.format("attn+mlp", " (for held-out NLL lower is better)"),
        table(["targets", "rank", "metric", "Δ dev", "Δ test"],
              ["attn", "4", "chrF", same, same], ["attn", "4", "held-out NLL", nll, "—"])]
    assert tables.paired_block(sweep, rows[:1], samples=99) == []  # the reference alone: nothing to pair


# ---------------------------------------------------------------------------------------------- zero-shot

ZS_CAPTION = ("Zero-shot Quora cloze (dev) after each run; the majority class of the same rows is the bar to beat; "
              "Δ: accuracy minus that of {} (and seed) on the same rows, with a paired bootstrap-t 95% interval, the "
              "sign-flip p-value and McNemar's test (exact binomial on the discordant rows when there are fewer than "
              "25, else chi-square with continuity correction):\n")
ZS_HEADS = ["model", "fine-tuned on", "precision", "QAFT", "compute", "seed", "zero-shot acc. [95% CI] n",
            "majority class [95% CI] n", "Δ vs fp32 [95% CI] n, tests"]
FP32 = Reference("fp32 at the same stage (base or fine-tuned) on the same task",
                 lambda ref, arm: ref.get("precision") == "fp32" and ref.get("stage") == arm.get("stage")
                 and ref.get("task") == arm.get("task"), "fp32")
ZS = {"zs-fp32": "11011101111011", "zs-int8": "10111100110011", "zs-base-fp32": "01010101100110",
      "zs-base-int8": "01110101000111"}


def zero_shot(bits: str, majority: tuple[float, float, float]) -> dict:
    acc = bits.count("1") / len(bits)
    return {"zero_shot_accuracy": acc, "zero_shot_low": acc - 0.1711, "zero_shot_high": acc + 0.1288,
            "zero_shot_n": len(bits), "majority": majority[0], "majority_low": majority[1],
            "majority_high": majority[2]}


def zs_row(run: str, precision: str, qaft: bool, task: str = "sonnet", stage: str = "fine-tuned", **more) -> dict:
    return {"run_dir": run, "status": "done", "precision": precision, "qaft": qaft, "task": task, "stage": stage,
            "seed": 2, "compute": "fp32" if precision == "fp32" else f"fp32 ({precision} fake-quant)",
            "zero_shot": zero_shot(ZS.get(run, "10101010101010"), (0.5714, 0.3034, 0.8067)), **more}


def fake_zero_shot(monkeypatch) -> None:
    def zero_shot_scores(run_dir: Path, output: str) -> ExampleScores:
        assert output == ZERO_SHOT_QUORA.output
        if run_dir.name not in ZS:
            raise OSError(f"no predictions in {run_dir.name}")
        return ExampleScores("accuracy", tuple(map(str, range(14))), correct(ZS[run_dir.name]))
    monkeypatch.setattr(tables, "zero_shot_scores", zero_shot_scores)


def zs_cell(arm: str, ref: str) -> str:
    mean = lambda rows: float(rows[0].mean() - rows[1].mean())  # noqa: E731
    return one_seed_cell(correct(ZS[arm]), correct(ZS[ref]), mean, (-1.0, 1.0), 3, 99, p_cell(ZS[arm], ZS[ref]))


def test_the_zero_shot_table_pairs_each_model_with_its_fp32_twin_and_says_why_not_where_it_cannot(monkeypatch):
    fake_zero_shot(monkeypatch)
    rows = [zs_row("zs-int8", "int8", True), zs_row("zs-fp32", "fp32", False),
            zs_row("zs-int4", "int4", False, task="sst"),  # no fp32 twin on sst
            zs_row("zs-int8-ptq", "int8", False),  # its file is gone
            {**zs_row("zs-int2", "int2", True), "status": "failed"},
            {**zs_row("zs-x", "fp16", False), "zero_shot": None}]
    assert zs_cell("zs-int8", "zs-fp32").startswith("-0.143 [")  # 9/14 - 11/14
    majority = "0.571 [0.303, 0.807] n=14"
    out = tables.zero_shot_block(rows, FP32, ZERO_SHOT_QUORA.output, samples=99)
    assert out == [ZS_CAPTION.format(FP32.description), table(
        ZS_HEADS,
        ["base (before fine-tuning)", "—", "each", "—", "—", "—", "— (no base-model run (--epochs 0) finished)",
         "—", "—"],
        ["fine-tuned", "sonnet", "int8", "yes", "fp32 (int8 fake-quant)", "2", "0.643 [0.472, 0.772] n=14", majority,
         zs_cell("zs-int8", "zs-fp32")],
        ["fine-tuned", "sonnet", "fp32", "no", "fp32", "2", "0.786 [0.615, 0.915] n=14", majority,
         "— (the reference)"],
        ["fine-tuned", "sst", "int4", "no", "fp32 (int4 fake-quant)", "2", "0.500 [0.329, 0.629] n=14", majority,
         "— (no fp32 twin)"],
        ["fine-tuned", "sonnet", "int8", "no", "fp32 (int8 fake-quant)", "2", "0.500 [0.329, 0.629] n=14", majority,
         "— (no predictions in zs-int8-ptq)"])]


def test_a_base_model_row_is_named_so_and_pairs_with_the_base_fp32(monkeypatch):
    fake_zero_shot(monkeypatch)
    rows = [zs_row("zs-base-int8", "int8", False, stage="base"), zs_row("zs-base-fp32", "fp32", False, stage="base"),
            zs_row("zs-int8", "int8", True), zs_row("zs-fp32", "fp32", False)]
    lines = tables.zero_shot_block(rows, FP32, ZERO_SHOT_QUORA.output, samples=99)[1].splitlines()[2:]
    assert [ln.split(" | ")[:3] for ln in lines] == [
        ["| base model (not fine-tuned)", "— (base model)", "int8"],
        ["| base model (not fine-tuned)", "— (base model)", "fp32"],
        ["| fine-tuned", "sonnet", "int8"], ["| fine-tuned", "sonnet", "fp32"]]
    assert lines[0].endswith(f"| {zs_cell('zs-base-int8', 'zs-base-fp32')} |")
    assert lines[2].endswith(f"| {zs_cell('zs-int8', 'zs-fp32')} |")
    assert tables.zero_shot_block([{**rows[0], "zero_shot": None}], FP32, ZERO_SHOT_QUORA.output) == []


# ---------------------------------------------------------------------------------------------- teachers

def t_cell(values: list[float]) -> str:
    """The mean of seeds' chrF with scipy's 95% t-interval, at two decimals."""
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1))
    half = sps.t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values))
    return f"{mean:.2f} [{mean - half:.2f}, {mean + half:.2f}]"


def synthetic_run(path: Path | None) -> SimpleNamespace:
    synthetic = None if path is None else SimpleNamespace(path=str(path))
    return SimpleNamespace(settings=SimpleNamespace(data=SimpleNamespace(synthetic=synthetic)), evaluations=())


def test_the_teacher_table_shows_each_teachers_summary_and_the_scores_of_its_mixes(monkeypatch, tmp_path):
    flash, pro, lite = (tmp_path / f"{t}.jsonl" for t in ("flash", "pro", "lite"))
    flash.write_text("{}\n")
    pro.write_text("{}\n")  # lite has no file: its row is all dashes
    summaries = {flash: {"requests": 12, "kept": 10, "rejected": {"rhyme": 1, "lines": 1}, "perfect_rate": 0.6,
                         "perfect_low": 0.3127, "perfect_high": 0.8318, "tokens_input": 12345, "tokens_output": 98765,
                         "tokens_thinking": None, "cost_usd": 0.01234},
                 pro: {"requests": 3, "kept": 1, "rejected": {}, "perfect_rate": 1.0, "perfect_low": 0.2066,
                       "perfect_high": 1.0, "tokens_input": 900, "tokens_output": 2400, "tokens_thinking": 51234,
                       "cost_usd": 1.2345}}
    monkeypatch.setattr(tables, "teacher_summary", lambda path: summaries.get(path, {"requests": 99}))
    sweep = Sweep("fake-teachers", [synthetic_run(None), synthetic_run(flash), synthetic_run(pro),
                                    synthetic_run(lite), synthetic_run(flash)],
                  knobs={"task": "data.task", "teacher": "t", "synthetic_n": "n", "synthetic_filter": "f", "mix": "m"})

    def row(teacher, n, filt, mix, seed, dev, test):
        return {"seed": seed, "task": "sonnet", "teacher": teacher, "synthetic_n": n, "synthetic_filter": filt,
                "mix": mix, "status": "done", "metric": "chrf", "dev_score": dev, "ci_low": dev - 1.25,
                "ci_high": dev + 1.5, "n_dev": 12, "test_score": test, "test_low": test - 2.0, "test_high": test + 1.0,
                "n_test": 12}
    rows = [row(None, 0, None, None, 1, 40.0, 39.0), row("flash", 50, "perfect", None, 1, 41.234, 40.5),
            row("flash", 50, "perfect", None, 2, 42.5, 40.25), row("flash", 50, "perfect", None, 3, 43.0, 41.0),
            row("flash", 50, "perfect", "ratio 0.5", 1, 44.444, NAN), row("pro", 10, "all", None, 1, 39.876, 38.12)]
    mixes_flash = (f"n50 perfect: {t_cell([41.234, 42.5, 43.0])} (3 seeds, n=12 each) / "
                   f"{t_cell([40.5, 40.25, 41.0])} (3 seeds, n=12 each)<br>ratio 0.5: 44.44 [43.19, 45.94] n=12 / —")
    assert t_cell([41.234, 42.5, 43.0]) == "42.24 [39.98, 44.51]"  # sd 0.910, t(0.975, 2) = 4.303
    assert tables.teacher_block(sweep, rows) == [
        "Teachers (generation summary from `<file>.summary.json`; — where it is absent):\n", table(
            ["teacher", "requests", "kept", "rejected by reason", "perfect rate [95% CI]", "tokens in / out / thinking",
             "cost", "mixes: dev chrF / test chrF"],
            ["flash", "12", "10", "lines: 1, rhyme: 1", "0.600 [0.313, 0.832] n=10", "12,345 / 98,765 / —", "$0.0123",
             mixes_flash],
            ["pro", "3", "1", "—", "1.000 [0.207, 1.000] n=1", "900 / 2,400 / 51,234", "$1.23",
             "n10 all: 39.88 [38.63, 41.38] n=12 / 38.12 [36.12, 39.12] n=12"],
            ["lite", "—", "—", "—", "—", "— / — / —", "—", "—"])]
    assert tables.teacher_block(Sweep("none", [synthetic_run(None)]), rows) == []


def test_a_cost_shows_cents_from_one_dollar_on(monkeypatch, tmp_path):
    files = {cost: tmp_path / f"t{i}.jsonl" for i, cost in enumerate((1.0, 0.99876, 2.0))}
    for path in files.values():
        path.write_text("{}\n")
    monkeypatch.setattr(tables, "teacher_summary", lambda path: {"cost_usd": next(c for c, f in files.items()
                                                                                  if f == path)})
    text = tables.teacher_block(Sweep("t", [synthetic_run(path) for path in files.values()]), [])[1]
    assert [line.split(" | ")[6] for line in text.splitlines()[2:]] == ["$1.00", "$0.9988", "$2.00"]


# ---------------------------------------------------------------------------------------------- the whole report

def test_sweep_tables_puts_every_block_in_order_with_the_same_rows_points_and_samples(monkeypatch):
    seen = []

    def block(name, out):
        def record(*args):
            seen.append((name, args))
            return out
        return record
    found = {"copying": {"x": 1}}
    monkeypatch.setattr(tables, "sonnet_reference_figures", lambda rows, samples: seen.append(("refs", samples))
                        or found)
    monkeypatch.setattr(tables, "markdown_table", block("main", "MAIN"))
    for name in ("paired_block", "form_block", "copying_block", "sonnet_reference_block", "zero_shot_block",
                 "teacher_block"):
        monkeypatch.setattr(tables, name, block(name, [name.upper()]))
    rows, points = [{"run": "a"}], [{"seeds": 1}]
    other = Reference("other", lambda ref, arm: False)
    sweep = Sweep("s", [synthetic_run(None), SimpleNamespace(settings=None, evaluations=(ZERO_SHOT_QUORA,))],
                  references=(FP32, other))
    assert tables.sweep_tables(sweep, rows, points, samples=77) == [
        "MAIN", "PAIRED_BLOCK", "FORM_BLOCK", "COPYING_BLOCK", "SONNET_REFERENCE_BLOCK", "ZERO_SHOT_BLOCK",
        "TEACHER_BLOCK"]
    assert seen == [("refs", 77), ("main", (sweep, points)), ("paired_block", (sweep, rows, 77)),
                    ("form_block", (sweep, points)), ("copying_block", (sweep, points, {"x": 1})),
                    ("sonnet_reference_block", (rows, found)),
                    ("zero_shot_block", (rows, FP32, ZERO_SHOT_QUORA.output, 77)), ("teacher_block", (sweep, rows))]
    # no zero-shot check, or no reference to pair it with: no zero-shot block; data not found: the error goes on
    error = ValueError("no sonnets")
    monkeypatch.setattr(tables, "sonnet_reference_figures", lambda rows, samples: (_ for _ in ()).throw(error))
    for s in (Sweep("s", [synthetic_run(None)], references=(FP32,)), Sweep("s", sweep.runs)):
        seen.clear()
        assert "ZERO_SHOT_BLOCK" not in tables.sweep_tables(s, rows, points)
        assert ("copying_block", (s, points, None)) in seen and ("sonnet_reference_block", (rows, error)) in seen

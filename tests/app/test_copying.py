"""Copying and chance on every sonnet axis, each figure computed again here by other means on hand-made inputs:
the copying measure (longest verbatim run and shared 4-grams, the prompt left out, the own held-out sonnet left
out, the novel rate and its Wilson interval) against a brute-force longest common substring; the unigram bar
against a hand-worked add-k model over the whole vocabulary, <|endoftext|> included; the held-out NLL's sliding
windows against a per-token pass with the documented window; the scored shares token-weighted; and, end to end on
a tiny sweep, metrics.json and the report against the same independent computations."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from app.measures import (COPY_NGRAM, NOVEL_BELOW, CopyCorpus, continuation_text, copy_words, copying_record,
                          coverage_record, nll_record)
from experiments.references import (UNIGRAM_K_GRID, choose_unigram_k, leave_one_out_nll, sonnet_reference_copying,
                                    sonnet_reference_nll, unigram_counts, unigram_nll)
from minigpt2.config import GPT2Config
from minigpt2.metrics import MIN_INTERVAL_N
from minigpt2.model import GPT2
from minigpt2.tokenizer import Tokenizer
from tasks.base import Example, PredictSettings
from tasks.sonnet import HeldoutNLL, SonnetTask, continuation_ids, nll_windows
from tests import ROOT
from tests.app.test_finetune import FIX

TOK = Tokenizer(str(FIX / "gpt2"))
Z95 = 1.959963984540054


def wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval, written out."""
    p = k / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return centre - half, centre + half


def brute_longest(a: list[str], b: list[str]) -> int:
    """Longest common run of two word lists: the textbook dynamic programme."""
    best = 0
    prev = [0] * (len(b) + 1)
    for i in range(1, len(a) + 1):
        cur = [0] * (len(b) + 1)
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def brute_found(words: list[str], corpus: list[list[str]], n: int) -> tuple[int, int]:
    grams = [words[i:i + n] for i in range(len(words) - n + 1)]
    return sum(any(g == c[j:j + n] for c in corpus for j in range(len(c) - n + 1)) for g in grams), len(grams)


# ---------------------------------------------------------------------------------------------- copying

PROMPT = "Alpha beta gamma delta\nepsilon zeta eta theta\niota kappa lambda mu"
TRAIN = [
    # shares the whole prompt (which must not count) and exactly 5 running words of the continuation below
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu\none two three four five",
    # "nine ten" ends this sonnet and "eleven twelve" starts the next: a run across sonnets does not count
    "x y nine ten",
    "eleven twelve z",
]
HELD = {"1": "its own sonnet one two three four five sixes six seven eight",  # 9 running words: left out
        "2": "six seven eight nine w",  # 4 running words with another held-out sonnet
        }
GENERATED = PROMPT + "\nOne, two: three four FIVE sixes\nsix seven eight nine ten eleven twelve"


def test_copy_words_lower_cases_drops_apostrophes_and_splits_on_other_punctuation():
    assert copy_words("Thou'rt, O Love! self-kill\u2019d\n3 Times") == ["thourt", "o", "love", "self", "killd", "3",
                                                                       "times"]


def test_copying_of_a_hand_made_sonnet_leaves_out_the_prompt_and_its_own_sonnet():
    rec = copying_record(["1"], [[GENERATED]], [3], TRAIN, HELD)
    (row,) = rec["per_sonnet"]["1"]
    words = copy_words(GENERATED.split("\n", 3)[3])
    assert words[:6] == ["one", "two", "three", "four", "five", "sixes"] and len(words) == 13
    # longest with training: "one two three four five" (5); the prompt's 12 words shared are not the sonnet's
    # own, and "nine ten eleven twelve" runs across two training sonnets, so it is 2 at most there
    assert row[0] == 5 == max(brute_longest(words, copy_words(t)) for t in TRAIN)
    # 4-grams: 10 in all; found in training: "one two three four", "two three four five" only
    assert row[4] == 10 and row[1] == 2 == brute_found(words, [copy_words(t) for t in TRAIN], 4)[0]
    # held-out without its own sonnet "1" (which shares 9 words): "six seven eight nine" in "2", one 4-gram
    assert row[2] == 4 and row[3] == 1
    assert rec["training"] == {"longest_mean": 5.0, "longest_max": 5, "ngram_share": 0.2}
    assert rec["held_out"] == {"longest_mean": 4.0, "longest_max": 4, "ngram_share": 0.1}
    assert rec["novel"]["rate"] == 1.0  # 5 < NOVEL_BELOW = 6: novel by a word
    assert NOVEL_BELOW == 6 and COPY_NGRAM == 4 and rec["n"] == 4 and rec["novel_below"] == 6


def test_a_run_of_novel_below_words_is_not_novel_and_one_less_is():
    train = ["a b c d e f g h"]
    five, six = "p\nq\nr\na b c d e z", "p\nq\nr\na b c d e f z"
    rec = copying_record(["1", "2"], [[five, six]], [3, 3], train, {})
    assert [rec["per_sonnet"][k][0][0] for k in ("1", "2")] == [5, 6]
    assert rec["novel"]["rate"] == 0.5
    assert (rec["novel"]["low"], rec["novel"]["high"]) == pytest.approx(wilson(1, 2))


def test_the_ngram_share_is_pooled_over_every_ngram_of_the_set():
    train = ["a b c d e f"]
    one = "p\nq\nr\na b c d x y"  # 3 4-grams, 1 found
    two = "p\nq\nr\nc d e f"  # 1 4-gram, found
    rec = copying_record(["1", "2"], [[one, two]], [3, 3], train, {})
    assert rec["training"]["ngram_share"] == pytest.approx(2 / 4)  # pooled; the mean of shares would be 2/3
    assert rec["training"]["longest_mean"] == pytest.approx((4 + 4) / 2)


def test_novel_rate_over_several_samples_counts_every_sonnet_and_is_never_narrower_than_wilson():
    train = ["a b c d e f g h"]
    copied, fresh = "p\nq\nr\na b c d e f g", "p\nq\nr\nz y x w"
    rec = copying_record(["1", "2", "3"], [[copied, fresh, fresh], [fresh, fresh, copied]], [3, 3, 3], train, {})
    assert rec["samples"] == 2 and rec["novel"]["rate"] == pytest.approx(4 / 6)
    low, high = wilson(4, 6)
    assert rec["novel"]["low"] <= low and rec["novel"]["high"] >= high
    assert rec["per_sonnet"]["1"] == [[7, 4, 0, 0, 4], [0, 0, 0, 0, 1]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from("abc"), max_size=14), st.lists(st.lists(st.sampled_from("abcd"), max_size=12),
                                                               min_size=1, max_size=4))
def test_longest_run_and_found_ngrams_equal_brute_force(words, corpus):
    got = CopyCorpus({str(i): " ".join(c) for i, c in enumerate(corpus)})
    assert got.longest(words) == max(brute_longest(words, c) for c in corpus)
    assert got.found(words) == brute_found(words, corpus, COPY_NGRAM)
    rest = corpus[1:]
    assert got.longest(words, exclude="0") == max([brute_longest(words, c) for c in rest], default=0)


# ---------------------------------------------------------------------------------------------- unigram bar

def test_unigram_is_add_k_over_the_whole_vocabulary():
    sonnets = [[0, 1, 1, 4], [1, 2, 4]]  # token 4 stands for <|endoftext|>, one per sonnet
    counts = unigram_counts(sonnets, vocab=6)
    assert counts.tolist() == [1, 3, 1, 0, 2, 0]
    want = -(math.log(3.5 / 10) + math.log(0.5 / 10) + math.log(2.5 / 10))  # (c + 0.5) / (7 + 0.5 * 6)
    assert unigram_nll(counts, 0.5, [1, 3, 4]) == pytest.approx(want)
    # leave one sonnet out, by hand: sonnet 1 under counts [0,1,1,0,1,0] (N 3), sonnet 2 under [1,2,0,0,1,0] (N 4)
    k, v = 0.5, 6
    first = -sum(math.log((c + k) / (3 + k * v)) for c in (0, 1, 1, 1))
    second = -sum(math.log((c + k) / (4 + k * v)) for c in (2, 0, 1))
    assert leave_one_out_nll(sonnets, v, k) == pytest.approx((first + second) / 7)


def test_the_smoothing_is_chosen_by_leaving_each_training_sonnet_out():
    sonnets = [[0, 1, 1, 4], [1, 2, 4], [1, 1, 0, 4], [3, 1, 4]]
    scores = {}
    for k in UNIGRAM_K_GRID:
        total = 0.0
        for i, ids in enumerate(sonnets):
            rest = Counter(t for j, other in enumerate(sonnets) if j != i for t in other)
            n = sum(rest.values())
            total -= sum(math.log((rest[t] + k) / (n + k * 50)) for t in ids)
        scores[k] = total
    assert choose_unigram_k(sonnets, 50) == min(scores, key=scores.get)


def _independent_unigram(folder: Path, split: str) -> tuple[float, float]:
    """(k, token-weighted NLL) of the add-k unigram of the training sonnets on `split`'s true continuations,
    from the files: training sonnets and continuations each end with <|endoftext|>."""
    from course.readers import read_sonnets

    names = {"dev": "TRUE_sonnets_held_out_dev.txt", "test": "TRUE_sonnets_held_out.txt"}
    train = [TOK.encode(s.text) + [TOK.eot_id] for s in read_sonnets(folder / "sonnets.txt")[0]]
    v = 50257
    k = choose_unigram_k(train, v)
    counts = Counter(t for ids in train for t in ids)
    total = sum(counts.values())
    nll, tokens = 0.0, 0
    for s in read_sonnets(folder / names[split])[0]:
        rest = TOK.encode("\n".join(s.text.split("\n")[3:])) + [TOK.eot_id]
        nll -= sum(math.log((counts[t] + k) / (total + k * v)) for t in rest)
        tokens += len(rest)
    return k, nll / tokens


def test_unigram_bar_on_the_tiny_data_is_the_hand_computed_one(tmp_path):
    from experiments.sweeps import TINY_DATA

    folder = TINY_DATA / "tasks"
    for split in ("dev", "test"):
        got = sonnet_reference_nll(str(folder), split, None, str(FIX / "gpt2"))
        k, want = _independent_unigram(folder, split)
        assert got["unigram"]["k"] == k and got["unigram"]["nll"] == pytest.approx(want, rel=1e-12)
        # the tiny data has 2-3 held-out sonnets: too few for an interval (MIN_INTERVAL_N), none is given
        assert got["unigram"]["sonnets"] < MIN_INTERVAL_N and got["unigram"]["low"] is None is got["unigram"]["high"]
        assert got["uniform"] == pytest.approx(math.log(50257))
    assert sonnet_reference_nll(str(tmp_path), "test") is None  # no true test sonnets: no bar


def test_reference_copying_flags_the_wrong_sonnet_as_the_training_set_itself():
    from experiments.sweeps import TINY_DATA

    refs = sonnet_reference_copying(str(TINY_DATA / "tasks"), "dev", None, str(FIX / "gpt2"))
    wrong = refs["wrong sonnet (nearest training length)"]
    assert wrong["novel"]["rate"] == 0.0 and wrong["training"]["ngram_share"] == 1.0
    for row in wrong["per_sonnet"].values():  # the longest run is the whole continuation
        assert row[0][0] == row[0][4] + COPY_NGRAM - 1
    assert refs["prompts only"]["training"]["longest_max"] == 0  # nothing after the prompt


# ---------------------------------------------------------------------------------------------- NLL windows

def test_windows_score_every_position_once_with_half_a_context_of_slide():
    assert nll_windows(10, 3, 6) == [(0, 6, 3), (3, 9, 6), (4, 10, 9)]
    assert nll_windows(6, 3, 6) == [(0, 6, 3)]
    for length, n_prompt, context in ((200, 30, 128), (129, 5, 128), (1000, 40, 64)):
        scored = [t for _, end, first in nll_windows(length, n_prompt, context) for t in range(first, end)]
        assert scored == list(range(n_prompt, length))
        for begin, end, first in nll_windows(length, n_prompt, context):
            assert end - begin <= context and first - begin >= min(n_prompt, context // 2)


LONG = "\n".join(["Shall I compare thee to a summer's day?", "Thou art more lovely and more temperate:",
                  "Rough winds do shake the darling buds of May,", "And summer's lease hath all too short a date:",
                  "Sometime too hot the eye of heaven shines,", "And often is his gold complexion dimm'd;"])


def _per_token_nll(gpt: GPT2, seq: list[int], n_prompt: int, context: int) -> float:
    """Each token alone: the model on the window the docs name (start 0 while it fits, then the window of
    half-context slides that ends at or after it, a whole context long), summed."""
    stride, total = context // 2, 0.0
    for t in range(n_prompt, len(seq)):
        if t < context:
            start = 0
        else:
            end = min(context + stride * math.ceil((t - context + 1) / stride), len(seq))
            start = end - context
        with torch.no_grad():
            logits = gpt.logits(torch.tensor([seq[start:t]]))[0, -1].double()
        total += float(F.cross_entropy(logits[None], torch.tensor([seq[t]])))
    return total


@pytest.mark.parametrize("batch_size", [1, 3])
def test_heldout_nll_beyond_the_context_scores_every_token_and_the_end_of_text(batch_size):
    torch.manual_seed(0)
    gpt = GPT2(GPT2Config.from_name("tiny", n_positions=40)).double().eval()
    prompt = tuple(LONG.split("\n")[:3])
    seq, n_prompt = continuation_ids(TOK, prompt, LONG)
    assert len(seq) > 60 and seq[-1] == TOK.eot_id and n_prompt < 40
    got = SonnetTask().heldout_nll(SonnetTask().build(gpt), [Example("1", [], meta={"prompt_lines": prompt})],
                                   {"1": LONG}, PredictSettings(batch_size=batch_size), TOK, torch.device("cpu"))
    rec = got["1"]
    assert isinstance(rec, HeldoutNLL)
    assert rec.tokens == rec.continuation == len(seq) - n_prompt and rec.in_view == 40 - n_prompt
    assert rec.nll == pytest.approx(_per_token_nll(gpt, seq, n_prompt, 40), rel=1e-10)  # <|endoftext|> last


def test_scored_shares_are_token_weighted():
    cov = coverage_record({"a": (10, 10, 5), "b": (30, 30, 30)})
    assert cov["scored"] == 1.0 and cov["prompt_in_view"] == pytest.approx(35 / 40)  # sonnet-weighted: 0.75
    assert cov["continuation_tokens"] == 40 and cov["per_sonnet"]["a"] == [10, 10, 5]
    rec = nll_record({"a": HeldoutNLL(20.0, 10, 10, 5), "b": HeldoutNLL(30.0, 30, 30, 30)}, samples=50)
    assert rec["coverage"] == cov and rec["nll"] == pytest.approx(50 / 40) and rec["per_sonnet"]["a"] == [20.0, 10]
    assert "coverage" not in nll_record({"a": (1.0, 2)}, samples=10)


# ---------------------------------------------------------------------------------------------- report

def _metrics_with(copying: dict, coverage: dict) -> dict:
    return {"copying": {"dev": copying}, "heldout_nll": {"dev": {"nll": 1.0, "low": 0.9, "high": 1.1,
                                                                  "coverage": coverage}}}


def test_report_rows_and_cells_of_copying_and_scored_shares():
    from experiments.metrics import COPYING_METRICS, measures, pooled, scored_cell

    rec = copying_record(["1", "2"], [["p\nq\nr\na b c d e f z", "p\nq\nr\nz y"]], [3, 3], ["a b c d e f g"], {})
    cov = coverage_record({"1": (8, 8, 6), "2": (4, 4, 4)})
    row = measures(_metrics_with(rec, cov), COPYING_METRICS)
    assert row["dev_novel"] == 0.5 and (row["dev_novel_low"], row["dev_novel_high"]) == pytest.approx(wilson(1, 2))
    assert row["dev_copy_train_longest"] == 3.0 and row["dev_copy_train_longest_max"] == 6
    assert row["dev_copy_train_share"] == pytest.approx(3 / 4) and row["dev_nll_in_view"] == pytest.approx(10 / 12)
    other = dict(row, dev_novel=1.0, dev_copy_train_longest_max=2, dev_nll_in_view=0.5)
    point = pooled([row, other], COPYING_METRICS)
    assert point["dev_novel"] == 0.75 and point["dev_novel_seeds"] == 2 and point["dev_novel_low"] < 0.75
    assert point["dev_copy_train_longest_max"] == 6  # the largest of any seed, not their mean
    assert point["dev_nll_in_view"] == pytest.approx((10 / 12 + 0.5) / 2)
    assert scored_cell({"dev_nll_scored": 1.0, "dev_nll_in_view": 0.7312, "test_nll_scored": 0.996,
                        "test_nll_in_view": 0.5}) == "100% (73.1%) / 99.6% (50.0%)"


def test_copying_table_rows_for_an_arm_and_the_flagged_reference():
    from experiments.metrics import COPYING_METRICS, measures, pooled
    from experiments.sweeps import SweepOptions, build_sweep
    from experiments.tables import copying_block

    train = ["a b c d e f g h i"]
    arm = copying_record(["1", "2"], [["p\nq\nr\na b c x", "p\nq\nr\nb c d e f g h z"]], [3, 3], train,
                         {"1": "one", "2": "x z"})
    point = {"method": "full", "rank": None, "trainable_params": 10,
             **pooled([measures(_metrics_with(arm, coverage_record({"1": (1, 1, 1)})), COPYING_METRICS)],
                      COPYING_METRICS)}
    wrong = copying_record(["1"], [["p\nq\nr\n" + train[0]]], [3], train, {})
    text = "".join(copying_block(build_sweep("lora-ranks", SweepOptions()), [point], {"wrong sonnet (nearest training length)": wrong}))
    lo, hi = wilson(1, 2)
    # arm: longest with training 3 and 7 (mean 5.0, max 7); 4-grams: 0 of 1 and 4 of 5; held-out "x z" in "2"
    # is the prompt's own sonnet for prompt 2 and not "x" alone for prompt 1: 1 word at most
    assert (f"| full | — | 10 | 50 [{100 * lo:.0f}, {100 * hi:.0f}] | 5.0 (7) | 66.7 | 0.5 (1) | 0.0 |"
            in text), text
    assert ("| reference: wrong sonnet (nearest training length) (**copying: a training sonnet pasted**) | — | — | "
            "0 [0, 79] | 9.0 (9) | 100.0 | 0.0 (0) | 0.0 |") in text
    assert "novel = no run of 6 or more words" in text and "dev 4-grams found in training %" in text


def test_nll_plot_draws_the_unigram_and_uniform_bars():
    from experiments.plots import plot_nll

    points = [{"seeds": 1, "task": "sonnet", "metric": "chrf", "dev_nll": 7.0, "dev_nll_low": 6.9,
               "dev_nll_high": 7.1, "method": "full", "rank": None, "trainable_params": 10}]
    fig = plot_nll("lora-ranks", points, ["full"], {"unigram (add-0.05)": 6.5, "uniform": math.log(50257)})
    xs = sorted(line.get_xdata()[0] for line in fig.axes[0].get_lines() if line.get_linestyle() in (":", "-."))
    assert xs == pytest.approx([6.5, math.log(50257)])
    assert {"dev, unigram (add-0.05)", "dev, uniform"} <= set(fig.axes[0].get_legend_handles_labels()[1])


def test_tiny_sweep_records_copying_and_coverage_and_the_report_shows_them(tiny_sweep):
    from course.formats import read_generated
    from course.readers import read_sonnets
    from experiments.sweeps import TINY_DATA

    sweep = tiny_sweep("lora-ranks")
    run = next(p for p in sorted((sweep.runs / "lora-ranks").iterdir()) if (p / "metrics.json").is_file())
    metrics = json.loads((run / "metrics.json").read_text())
    folder = TINY_DATA / "tasks"
    train = [copy_words(s.text) for s in read_sonnets(folder / "sonnets.txt")[0]]
    held = {str(s.number): copy_words(s.text) for name in ("TRUE_sonnets_held_out_dev.txt",
                                                            "TRUE_sonnets_held_out.txt")
            for s in read_sonnets(folder / name)[0]}
    rec = metrics["copying"]["dev"]
    names = metrics.get("dev_samples") or [metrics["dev_predictions"]]
    for k, name in enumerate(names):
        for sonnet in read_generated(run / name):
            words = copy_words("\n".join(sonnet.text.split("\n")[3:]))
            others = [w for key, w in held.items() if key != str(sonnet.number)]
            want = [max(brute_longest(words, t) for t in train), brute_found(words, train, 4)[0],
                    max([brute_longest(words, h) for h in others], default=0), brute_found(words, others, 4)[0],
                    max(len(words) - 3, 0)]
            assert rec["per_sonnet"][str(sonnet.number)][k] == want
    coverage = metrics["heldout_nll"]["dev"]["coverage"]
    per = metrics["heldout_nll"]["dev"]["per_sonnet"]
    assert coverage["scored"] == 1.0 and 0 < coverage["prompt_in_view"] < 1  # 128 positions: sonnets overflow
    assert sum(v[1] for v in per.values()) == coverage["continuation_tokens"]
    table = (sweep.out / "lora-ranks.md").read_text()
    assert "Copying in what each model wrote" in table and "(**copying: a training sonnet pasted**)" in table
    assert "Held-out NLL before fine-tuning, and the bars from the data alone" in table
    bars = sonnet_reference_nll(str(folder), "dev", tuple(int(k) for k in rec["per_sonnet"]),
                                metrics.get("tokenizer_dir"))
    assert f"unigram of the training sonnets' tokens (add-{bars['unigram']['k']:g})" in table
    n = bars["unigram"]["sonnets"]  # the tiny dev set: too few sonnets for an interval, the point and its n
    assert f"{bars['unigram']['nll']:.3f} (n={n}, too few for an interval)" in table
    assert f"{math.log(50257):.3f}" in table
    assert f"100% ({100 * coverage['prompt_in_view']:.1f}%)" in table


# ---------------------------------------------------------------------------------------------- docs' figures

@pytest.mark.shared_data
def test_the_real_dev_sets_reference_figures_in_the_docs():
    """docs/study.md's copying columns, NLL bars and scored shares on the real dev set, recomputed."""
    import os

    from course.readers import read_sonnets

    folder = os.environ["MINIGPT2_DATA_DIR"]
    tok_dir = str(Path(folder) / "gpt2")
    doc = (ROOT / "docs" / "study.md").read_text()
    refs = sonnet_reference_copying(folder, "dev", None, tok_dir)
    for name, doc_name in (("prompts only", "prompts only"), ("prompts + random tokens", "prompts + random tokens"),
                           ("wrong sonnet (nearest training length)", "wrong real sonnet (nearest training length): "
                                                                      "**copying**"),
                           ("real held-out sonnets", "the real held-out sonnets themselves")):
        r = refs[name]
        novel = f"{100 * r['novel']['rate']:.0f} [{100 * r['novel']['low']:.0f}, {100 * r['novel']['high']:.0f}]"
        cells = (f"| {novel} | {r['training']['longest_mean']:.1f} ({r['training']['longest_max']}) | "
                 f"{100 * r['training']['ngram_share']:.1f}% | {r['held_out']['longest_mean']:.1f} "
                 f"({r['held_out']['longest_max']}) |")
        line = next(ln for ln in doc.splitlines() if ln.startswith(f"| {doc_name} |"))
        assert line.endswith(cells), (line, cells)
    real = [continuation_text(s.text, 3) for s in read_sonnets(Path(folder) / "TRUE_sonnets_held_out_dev.txt")[0]]
    training = {str(i): s.text for i, s in enumerate(read_sonnets(Path(folder) / "sonnets.txt")[0])}
    for n in (2, 3, 4):  # why 4-grams: the shares of an unseen sonnet's n-grams found in the training sonnets
        corpus = CopyCorpus(training, n)
        found, total = np.sum([corpus.found(copy_words(t)) for t in real], axis=0)
        assert f"{100 * found / total:.{0 if n < 4 else 1}f}% of their {n}-grams" in doc, n
    bars = sonnet_reference_nll(folder, "dev", None, tok_dir)
    u = bars["unigram"]
    assert f"add-{u['k']:g} (k chosen" in doc and u["tokens"] == 1589
    assert f"| {u['nll']:.3f} [{u['low']:.3f}, {u['high']:.3f}] |" in doc
    tok = Tokenizer(tok_dir)
    train = [tok.encode(s.text) + [tok.eot_id] for s in read_sonnets(Path(folder) / "sonnets.txt")[0]]
    counts = unigram_counts(train, tok.vocab_size)
    truths = read_sonnets(Path(folder) / "TRUE_sonnets_held_out_dev.txt")[0]
    prompts = {s.number: s.lines for s in read_sonnets(Path(folder) / "sonnets_held_out_dev.txt")[0]}
    seqs = [continuation_ids(tok, prompts[s.number], s.text) for s in truths]
    add_one = sum(unigram_nll(counts, 1.0, seq[n:]) for seq, n in seqs) / u["tokens"]
    assert f"give {add_one:.3f}" in doc and f"{int(counts.sum()):,} tokens" in doc
    assert f"{max(len(seq) for seq, _ in seqs)} tokens at most" in doc
    in_view = sum(min(len(seq), 128) - n for seq, n in seqs) / sum(len(seq) - n for seq, n in seqs)
    assert f"{100 * in_view:.1f}% of the real dev tokens with the tiny model's 128" in doc

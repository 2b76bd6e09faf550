"""What a sonnet run is measured by besides chrF, held to independent computations: the held-out NLL (against
F.cross_entropy on the same tokens), the form of a sonnet (hand-made sonnets at every boundary), Wilson and
t-intervals (their formulas), paired bootstrap differences (the normal approximation), chrF over several samples
(sacrebleu on each sample set); and, end to end, that the held-out NLL separates a trained model from the same
model before training, that --eval-samples writes and averages K samples, and that a report refuses a scored file
that was edited."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sacrebleu.metrics import CHRF

from app.finetune import main as finetune_main
from app.measures import form_record, nll_record, sample_file_name
from distill.check import form_of
from experiments.stats import ExampleScores, chrf_statistics, paired_difference, t_interval
from minigpt2.config import GPT2Config
from minigpt2.metrics import wilson_interval
from minigpt2.model import GPT2
from minigpt2.tokenizer import Tokenizer
from tasks.base import Example, PredictSettings
from tasks.sonnet import SonnetTask, continuation_ids
from tests import ROOT
from tests.app.test_finetune import DATA, FIX, finetune_args

REPO = ROOT
TOK = Tokenizer(str(FIX / "gpt2"))

# ---------------------------------------------------------------------------------------------- held-out NLL

PROMPT = ("Shall I compare thee to a summer's day?", "Thou art more lovely and more temperate:",
          "Rough winds do shake the darling buds of May,")
TRUE = "\n".join(PROMPT + ("And summer's lease hath all too short a date:",
                            "Sometime too hot the eye of heaven shines,"))


def _model(dtype=torch.float32) -> GPT2:
    torch.manual_seed(0)
    return GPT2(GPT2Config.from_name("tiny")).to(dtype).eval()


def _reference_nll(gpt: GPT2, prompt_lines, reference: str) -> tuple[float, int]:
    """Independent: encode prompt and continuation as generation sees them, full logits, F.cross_entropy."""
    prompt = TOK.encode("\n".join(prompt_lines) + "\n")
    rest = TOK.encode("\n".join(reference.split("\n")[len(prompt_lines):])) + [TOK.eot_id]
    ids = torch.tensor([prompt + rest])
    with torch.no_grad():
        logits = gpt.logits(ids)[0].double()
    nll = F.cross_entropy(logits[len(prompt) - 1:-1], ids[0, len(prompt):], reduction="sum")
    return float(nll), len(rest)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_heldout_nll_equals_cross_entropy_on_the_same_tokens(batch_size):
    gpt = _model(torch.float64)
    short = "\n".join(PROMPT[:3] + ("Short.",))
    examples = [Example("1", [], meta={"prompt_lines": PROMPT}), Example("2", [], meta={"prompt_lines": PROMPT}),
                Example("3", [], meta={"prompt_lines": PROMPT})]  # 3 has no reference: left out
    got = SonnetTask().heldout_nll(SonnetTask().build(gpt), examples, {"1": TRUE, "2": short},
                                   PredictSettings(batch_size=batch_size), TOK, torch.device("cpu"))
    assert set(got) == {"1", "2"}
    for key, text in (("1", TRUE), ("2", short)):
        want, n = _reference_nll(gpt, PROMPT, text)
        assert got[key][1] == n
        assert got[key][0] == pytest.approx(want, rel=1e-12)  # padded in a batch or alone: the same figure
    assert not gpt.training  # evaluation leaves the mode as it found it (eval here)


def test_heldout_nll_runs_in_eval_mode_and_restores_training_mode():
    gpt = _model()
    gpt.train()  # dropout on: a train-mode pass would be random
    task = SonnetTask()
    ex = [Example("1", [], meta={"prompt_lines": PROMPT})]
    a = task.heldout_nll(task.build(gpt), ex, {"1": TRUE}, PredictSettings(), TOK, torch.device("cpu"))
    b = task.heldout_nll(task.build(gpt), ex, {"1": TRUE}, PredictSettings(), TOK, torch.device("cpu"))
    assert a == b and gpt.training
    gpt.eval()
    assert a["1"][0] == pytest.approx(_reference_nll(gpt, PROMPT, TRUE)[0], rel=1e-5)


def test_heldout_nll_under_bf16_autocast_takes_the_cross_entropy_of_the_bf16_logits_in_fp32():
    """A bf16 run's held-out NLL: the logits as bf16 autocast computes them, their cross-entropy in fp32 (not in
    bf16, whose step at a token's NLL of about 10 is 0.06): within fp32 rounding of the fp64 cross-entropy of the same
    logits; and not the fp32 model's figure, though near it. The weights are larger than at initialisation so that
    the logits spread (at init they sit near 0, where bf16 changes the NLL by only 1e-6)."""
    gpt, task = _model(), SonnetTask()
    with torch.no_grad():
        for p in gpt.parameters():
            if p.dim() > 1:
                p.normal_(std=0.2)
    ex = [Example("1", [], meta={"prompt_lines": PROMPT})]
    bf16 = PredictSettings(batch_size=1, autocast_dtype=torch.bfloat16)
    got, n, *_ = task.heldout_nll(task.build(gpt), ex, {"1": TRUE}, bf16, TOK, torch.device("cpu"))["1"]
    prompt = TOK.encode("\n".join(PROMPT) + "\n")
    ids = torch.tensor([prompt + TOK.encode("\n".join(TRUE.split("\n")[len(PROMPT):])) + [TOK.eot_id]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = gpt.logits(ids, attention_mask=torch.ones_like(ids))[0]  # as the task runs the model
    assert logits.dtype == torch.bfloat16
    want = float(F.cross_entropy(logits.double()[len(prompt) - 1:-1], ids[0, len(prompt):], reduction="sum"))
    assert n == ids.size(1) - len(prompt) and got == pytest.approx(want, rel=1e-6)
    fp32 = _reference_nll(gpt, PROMPT, TRUE)[0]
    print(f"held-out NLL: bf16 autocast {got:.4f}, fp32 {fp32:.4f}, bf16 logits in fp64 {want:.4f}")
    assert got != pytest.approx(fp32, rel=1e-4) and got == pytest.approx(fp32, rel=2e-2)


def test_continuation_is_cut_to_the_context_and_a_prompt_that_fills_it_is_an_error():
    seq, n_prompt = continuation_ids(TOK, PROMPT, TRUE, context=40)
    assert len(seq) == 40 and seq[:n_prompt] == TOK.encode("\n".join(PROMPT) + "\n")
    with pytest.raises(ValueError, match="leaves nothing to score"):
        continuation_ids(TOK, PROMPT, TRUE, context=n_prompt)


def test_nll_record_is_token_weighted_with_a_bootstrap_interval():
    rec = nll_record({"a": (10.0, 5), "b": (30.0, 10), "c": (4.0, 4)}, samples=500)
    assert rec["nll"] == pytest.approx(44 / 19) and rec["ppl"] == pytest.approx(math.exp(44 / 19))
    assert rec["tokens"] == 19 and rec["sonnets"] == 3 and rec["per_sonnet"]["b"] == [30.0, 10]
    assert rec["low"] is None and rec["high"] is None  # 3 sonnets: too few for an interval (strict JSON: null)
    many = nll_record({str(k): (v * (1 + k % 3), c * (1 + k % 3)) for k, (v, c) in
                       enumerate([(10.0, 5), (30.0, 10), (4.0, 4)] * 4)}, samples=500)
    assert many["sonnets"] == 12 and 1.0 <= many["low"] < many["nll"] < many["high"] <= 3.0


# ---------------------------------------------------------------------------------------------- form

def _line(end: str, syllables: int = 10) -> str:
    """A line of `syllables` one-syllable words ending in `end` (one syllable)."""
    return " ".join(["the"] * (syllables - 1) + [end])


ENDS = ["day", "night", "way", "light", "tree", "hand", "free", "land", "sea", "stone", "me", "alone", "cold", "old"]
PERFECT = "\n".join(_line(e) for e in ENDS)


def test_form_of_a_perfect_sonnet_and_of_each_part_alone():
    assert form_of(PERFECT) == {"fourteen_lines": True, "rhyme_scheme": True, "meter": True, "perfect": True}
    thirteen = "\n".join(PERFECT.split("\n")[:13])
    assert form_of(thirteen) == {"fourteen_lines": False, "rhyme_scheme": True, "meter": True, "perfect": False}
    bad_rhyme = PERFECT.replace(_line("old"), _line("tree"))
    assert form_of(bad_rhyme) == {"fourteen_lines": True, "rhyme_scheme": False, "meter": True, "perfect": False}
    assert form_of("\n".join(PERFECT.split("\n")[:3]))["rhyme_scheme"] is False  # nothing past the first pair
    assert form_of("")["meter"] is False


@pytest.mark.parametrize("syllables, metrical", [(8, False), (9, True), (10, True), (11, True), (12, False)])
def test_meter_is_nine_to_eleven_syllables_a_line(syllables, metrical):
    lines = PERFECT.split("\n")
    lines[5] = _line("hand", syllables)
    assert form_of("\n".join(lines))["meter"] is metrical


def test_form_record_rates_with_wilson_intervals():
    texts = [PERFECT, PERFECT, "\n".join(PERFECT.split("\n")[:13]), "short\nlines"]
    rec = form_record(["1", "2", "3", "4"], [texts])
    assert rec["rates"]["perfect"]["rate"] == 0.5 and rec["rates"]["fourteen_lines"]["rate"] == 0.5
    assert rec["rates"]["rhyme_scheme"]["rate"] == 0.75
    z = 1.959963984540054  # independent Wilson score interval for 2/4
    p, n = 0.5, 4
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (
        1 + z * z / n)
    assert (rec["rates"]["perfect"]["low"], rec["rates"]["perfect"]["high"]) == pytest.approx((centre - half,
                                                                                              centre + half))
    assert rec["per_sonnet"]["3"] == [[0, 1, 1, 0]] and rec["reasons"]["counts"]["line count other than 14"] == 2
    two = form_record(["1", "2", "3", "4"], [texts, texts[::-1]])  # several samples: never narrower than Wilson
    w = wilson_interval(4, 8)
    assert two["samples"] == 2 and two["rates"]["perfect"]["low"] <= w[0] and two["rates"]["perfect"]["high"] >= w[1]


# ---------------------------------------------------------------------------------------------- statistics

def test_t_interval_is_students():
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and (low, high) == pytest.approx((2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)))
    assert math.isnan(t_interval([5.0])[1])


def test_paired_difference_matches_the_normal_approximation_and_beats_marginal_intervals():
    n = 400
    a = np.ones(n)
    b = np.ones(n)
    a[:100] = b[:100] = 0  # hard examples both get wrong: they widen each marginal interval, not the difference
    a[100:102] = 0  # b right, a wrong on 2
    b[102:112] = 0  # a right, b wrong on 10
    ids = tuple(map(str, range(n)))
    sa, sb = (ExampleScores("accuracy", ids, v.reshape(n, 1, 1)) for v in (a, b))
    d = paired_difference(sa, sb, samples=4000, seed=3)
    diff = 8 / n
    se = math.sqrt((12 / n - diff ** 2) / n)  # the paired (McNemar-style) standard error
    assert d.value == pytest.approx(diff) and d.n == n
    assert d.low == pytest.approx(diff - 1.96 * se, abs=0.004)
    assert d.high == pytest.approx(diff + 1.96 * se, abs=0.004)
    ia, ib = sa.interval(2000), sb.interval(2000)
    assert ia.low < ib.high  # the marginal intervals overlap, yet the paired one excludes 0
    assert d.low > 0
    same = paired_difference(sa, sa, samples=200)
    assert same.value == same.low == same.high == 0.0


def test_paired_difference_uses_only_shared_examples_and_refuses_other_metrics():
    a = ExampleScores("nll", ("1", "2", "3"), np.array([[[2.0, 1.0]], [[4.0, 2.0]], [[9.0, 3.0]]]))
    b = ExampleScores("nll", ("3", "2"), np.array([[[6.0, 3.0]], [[2.0, 2.0]]]))
    d = paired_difference(a, b, samples=100)
    assert d.n == 2 and d.value == pytest.approx((4 + 9) / 5 - (2 + 6) / 5)
    with pytest.raises(ValueError, match="cannot compare"):
        paired_difference(a, ExampleScores("chrf", ("1",), np.zeros((1, 1, 6))))


def test_chrf_over_samples_is_the_mean_of_each_sample_sets_corpus_chrf():
    refs = ["the cat sat on the mat", "a dog ran in the park", "birds sing at dawn"]
    s1 = ["the cat sat on a mat", "a dog ran", "birds sing"]
    s2 = ["cats sit", "the dog ran in a park", "birds sang at dawn"]
    stats = np.stack([chrf_statistics(s1, refs), chrf_statistics(s2, refs)], axis=1)
    scores = ExampleScores("chrf", ("1", "2", "3"), stats)
    want = np.mean([CHRF().corpus_score(s, [refs]).score for s in (s1, s2)])
    assert scores.score() == pytest.approx(want)
    assert math.isnan(scores.interval(300).low) and scores.interval(300).n == 3  # too few for an interval
    nine = ExampleScores("chrf", tuple(map(str, range(9))), np.concatenate([stats] * 3))
    iv = nine.interval(300)
    assert iv.low <= iv.value <= iv.high and iv.n == 9 and iv.value == pytest.approx(want)


# ---------------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny sonnet run that really learns (lr 1e-3, 2 epochs, every training sonnet), 2 samples per prompt."""
    out = tmp_path_factory.mktemp("sonnet") / "run"
    finetune_main(finetune_args("sonnet", out, "--epochs", "2", "--lr", "1e-3", "--max-new-tokens", "6",
                                "--eval-samples", "2", "--max-eval", "3"))
    return out


def test_heldout_nll_separates_the_trained_model_from_itself_before_training(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    for split in ("dev", "test"):
        after, before = (ExampleScores("nll", tuple(per), np.array([[v] for v in per.values()]))
                         for per in (metrics["heldout_nll"][split]["per_sonnet"],
                                     metrics["heldout_nll_base"][split]["per_sonnet"]))
        d = paired_difference(after, before, samples=1000)
        assert d.value < 0, (split, d)  # lower after training
        # 3 dev and 2 test sonnets: too few for an interval, and the sign-flip p can be no lower than 2 / 2**n
        assert d.n == {"dev": 3, "test": 2}[split] and math.isnan(d.high) and d.p >= 2 / 2 ** d.n, (split, d)
    assert json.loads((trained / "heldout-nll-base.json").read_text()) == metrics["heldout_nll_base"]


def test_eval_samples_writes_each_sample_and_averages_them(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    from course.formats import SONNETS, read_generated

    truths = SONNETS.split_references(DATA, "dev")
    names = metrics["dev_samples"]
    assert names == ["generated_sonnets_dev.txt", sample_file_name("generated_sonnets_dev.txt", 1)]
    per_sample = []
    for name in names:
        sonnets = read_generated(trained / name)
        per_sample.append(CHRF().corpus_score([s.text for s in sonnets], [[truths[s.number] for s in sonnets]]).score)
        assert metrics["files_sha256"][name] == __import__("hashlib").sha256((trained / name).read_bytes()).hexdigest()
    assert (trained / names[0]).read_text() != (trained / names[1]).read_text()  # samples differ
    assert metrics["dev"]["chrf"] == pytest.approx(np.mean(per_sample))
    assert metrics["dev"]["chrf_samples"] == pytest.approx(per_sample)
    assert metrics["form"]["dev"]["samples"] == 2 and len(metrics["form"]["dev"]["per_sonnet"]) == 3


@pytest.mark.parametrize("extra, message", [
    (["--eval-samples", "0"], "--eval-samples 0: expected an integer in [1, 100]"),
    (["--eval-samples", "101"], "--eval-samples 101: expected an integer in [1, 100]"),
])
def test_eval_samples_out_of_range_is_one_error_line(extra, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        finetune_main(finetune_args("sonnet", tmp_path / "run", *extra))
    assert str(e.value) == f"error: {message}"
    assert not (tmp_path / "run").exists()


def test_eval_samples_on_a_classifier_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="predicts deterministically"):
        finetune_main(finetune_args("sst", tmp_path / "run", "--eval-samples", "2"))


def test_report_refuses_an_edited_scored_file(tmp_path, tiny_sweep):
    runs, out = tmp_path / "runs", tmp_path / "out"
    shutil.copytree(tiny_sweep("lora-targets").runs, runs)  # a copy of a finished sweep: its file is edited below
    argv = [sys.executable, "-m", "experiments", "lora-targets", "--tiny", "--runs-dir", str(runs), "--out", str(out),
            "--no-progress", "--bootstrap", "50"]
    run = next((runs / "lora-targets").iterdir())
    path = run / "generated_sonnets_dev.txt"
    path.write_text(path.read_text().replace("\n", "\nO\n", 1) + "\n")
    again = subprocess.run(argv + ["--report-only"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: changed since its run scored it"), again.stderr
    assert "Traceback" not in again.stderr


def test_each_sweep_pairs_an_arm_with_its_reference_of_the_same_seed():
    from experiments.sweeps import SweepOptions, build_sweep
    from experiments.tables import _reference_row

    def rules(name: str) -> list:
        return [r.rule for r in build_sweep(name, SweepOptions()).references]

    def row(seed=1, **settings):
        return {"status": "done", "seed": seed, "task": "sonnet", **settings}

    full, lora, lora2 = row(method="full"), row(method="lora", rank=4), row(2, method="lora", rank=4)
    (rule,) = rules("lora-ranks")
    assert _reference_row(rule, lora, [full, lora, lora2]) is full
    assert _reference_row(rule, lora2, [full, lora, lora2]) is None  # no full run of seed 2
    fp32, ptq, qaft = (row(precision=p, qaft=q, stage="fine-tuned") for p, q in (("fp32", False), ("int8", False),
                                                                              ("int8", True)))
    base32, base8 = (row(precision=p, qaft=False, stage="base") for p in ("fp32", "int8"))
    rows = [fp32, ptq, qaft, base32, base8]
    to_fp32, to_ptq = rules("precision")
    assert _reference_row(to_fp32, qaft, rows) is fp32 and _reference_row(to_fp32, base8, rows) is base32
    assert _reference_row(to_ptq, qaft, rows) is ptq and _reference_row(to_ptq, ptq, rows) is None
    (rule,) = rules("lora-targets")
    attn4, both4, both16 = (row(targets=t, rank=r) for t, r in (("attn", 4), ("attn+mlp", 4), ("attn+mlp", 16)))
    assert _reference_row(rule, attn4, [attn4, both16, both4]) is both4

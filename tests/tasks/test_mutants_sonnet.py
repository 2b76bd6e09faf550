"""The sonnet task (`tasks/sonnet.py`) on tiny hand-made inputs, each expected value worked out by hand in a
comment or taken from sacrebleu / a per-window loop written out here: the stop rule, the prompt and continuation
ids, the NLL windows, how the rest of a sample is cut, the files read for train / dev / test, the K draws (a
stand-in for `generate` records what is asked of it), the held-out NLL and chrF."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import sacrebleu
import torch
import torch.nn.functional as F

import tasks.sonnet as sonnet_module
from course.readers import DataError
from course.sonnets import sonnet_file
from experiments.sweeps import TINY_DATA
from minigpt2.config import GPT2Config
from minigpt2.generation import Sampling
from minigpt2.model import GPT2
from minigpt2.tokenizer import Tokenizer
from tasks.base import Example, HeldoutNLL, PredictSettings
from tasks.sonnet import (SAMPLE_SEED_STEP, SONNET_LINES, SonnetLM, SonnetTask, continuation_ids, finish_sonnet,
                          nll_windows, sonnet_stop)

TOK = Tokenizer(TINY_DATA / "gpt2")
EOT = 50256
A, B, C, D, NL = 64, 65, 66, 67, 198  # "a", "b", "c", "d", "\n": one token each in GPT-2's vocabulary
CPU = torch.device("cpu")


def tiny_gpt(n_positions: int = 128, seed: int = 0) -> GPT2:
    torch.manual_seed(seed)
    return GPT2(GPT2Config.from_name("tiny", n_positions=n_positions, dropout=0.0)).double().eval()


# ------------------------------------------------------------------------------------------------ the stop rule

def test_the_stop_rule_counts_finished_non_blank_lines():
    stop = sonnet_stop(TOK, 2)
    assert not stop(TOK.encode("a\nb"))  # the 2nd line is not finished: text.split("\n")[:-1] == ["a"]
    assert stop(TOK.encode("a\nb\n"))  # two finished lines: exactly lines_to_write
    assert stop(TOK.encode("a\nb\nc\n"))  # more than enough is enough (>=)
    assert not stop(TOK.encode("a\n \n\t\n"))  # whitespace-only lines do not count
    assert stop(TOK.encode("\na\n  \nb\nc"))  # "a" and "b" count, "c" is unfinished
    assert not stop([])
    assert not sonnet_stop(TOK, 3)(TOK.encode("a\nb\n"))


# ---------------------------------------------------------------------------------------- prompt and continuation

def test_continuation_ids_are_the_prompt_as_generated_then_the_true_rest_and_end_of_text():
    # prompt "a\nb\n" = [a, NL, b, NL]; the rest of "a\nb\nc\nd" after 2 lines is "c\nd" = [c, NL, d], then EOT
    seq, n = continuation_ids(TOK, ("a", "b"), "a\nb\nc\nd")
    assert (seq, n) == ([A, NL, B, NL, C, NL, D, EOT], 4)
    assert continuation_ids(TOK, ("a", "b"), "a\nb\nc\nd", context=6) == ([A, NL, B, NL, C, NL], 4)
    assert continuation_ids(TOK, ("a", "b"), "a\nb\nc\nd", context=5) == ([A, NL, B, NL, C], 4)  # prompt + 1
    # the reference's own first lines are not read: the prompt's count of lines is skipped
    assert continuation_ids(TOK, ("a",), "x\nc") == ([A, NL, C, EOT], 2)
    with pytest.raises(DataError) as e:
        continuation_ids(TOK, ("a", "b"), "a\nb\nc", context=4)  # 4 prompt tokens fill a 4-token context
    assert str(e.value) == "a 4-token sonnet prompt leaves nothing to score in a 4-token context"


def test_windows_of_an_odd_context_and_of_a_one_token_context():
    # context 5: stride 5 // 2 = 2; first [0, 5) scores 2..4; then ends 7 and 9, each 5 long
    assert nll_windows(9, 2, 5) == [(0, 5, 2), (2, 7, 5), (4, 9, 7)]
    assert nll_windows(8, 2, 5) == [(0, 5, 2), (2, 7, 5), (3, 8, 7)]  # the last ends at the length
    assert nll_windows(4, 3, 5) == [(0, 4, 3)]  # shorter than the context: one window
    assert nll_windows(5, 2, 5) == [(0, 5, 2)]  # exactly the context: one window
    # context 1: stride max(1, 0) = 1, each window one token long
    assert nll_windows(3, 0, 1) == [(0, 1, 0), (1, 2, 1), (2, 3, 2)]
    with pytest.raises(DataError) as e:
        nll_windows(10, 5, 5)
    assert str(e.value) == "a 5-token sonnet prompt leaves nothing to score in a 5-token context"
    assert nll_windows(10, 4, 5)[0] == (0, 5, 4)


# --------------------------------------------------------------------------------------------- the rest, cut

def test_finish_sonnet_keeps_fourteen_lines_and_drops_blank_and_number_lines():
    prompt = ("p1", "p2", "p3")
    new = "".join(f"w{i}  \n" for i in range(1, 13))  # 12 lines with trailing spaces; 11 fit after 3
    assert finish_sonnet(prompt, new) == "\n".join(["p1", "p2", "p3"] + [f"w{i}" for i in range(1, 12)])
    # blank, whitespace-only and number-only lines (" 12 ") are dropped; "12a" and an indent are kept
    assert finish_sonnet(prompt, "x<|endoftext|>\n\n   \n 12 \n12a\n  couplet  \ny") == \
        "p1\np2\np3\nx\n12a\n  couplet\ny"
    assert finish_sonnet(prompt, "") == "p1\np2\np3"
    assert finish_sonnet(("p",) * 14, "more") == "\n".join(("p",) * 14)  # a full prompt: nothing added
    assert finish_sonnet(("p",), "a<|endoftext|>b") == "p\nab"  # the marker is removed where it stands
    assert SONNET_LINES == 14


# ------------------------------------------------------------------------------------------------ the files

def lines(tag: str, n: int) -> list[str]:
    return [f"{tag} {i}" for i in range(1, n + 1)]


def write(path: Path, blocks: list[tuple[int, list[str]]]) -> None:
    path.write_bytes(sonnet_file(blocks, "\r\n"))


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    write(tmp_path / "sonnets.txt", [(1, lines("one", 14)), (2, lines("two", 3)), (3, lines("three", 14)),
                                     (4, lines("four", 14))])
    write(tmp_path / "sonnets_held_out_dev.txt", [(7, lines("seven", 3)), (5, lines("five", 2))])
    write(tmp_path / "TRUE_sonnets_held_out_dev.txt", [(5, lines("five", 14)), (7, lines("seven", 13)),
                                                       (9, lines("nine", 14))])
    write(tmp_path / "sonnets_held_out.txt", [(8, lines("eight", 3))])
    return tmp_path


def enc(text: str) -> list[int]:
    return TOK.encode(text)


def test_the_task_declares_itself():
    t = SonnetTask()
    assert (t.name, t.metric, t.lm_targets, t.has_head, t.takes_extra_texts) == ("sonnet", "chrf", True, False, True)
    assert t.format.output_name("dev", "full-model") == "generated_sonnets_dev.txt"
    assert t.files.train == "sonnets.txt"


def test_train_texts_and_training_examples(data):
    t = SonnetTask()
    texts, notes = t.train_texts(data)
    assert texts == ["\n".join(lines(w, n)) for w, n in (("one", 14), ("two", 3), ("three", 14), ("four", 14))]
    assert [str(m) for m in notes] == [f"{data / 'sonnets.txt'}:{12 + 17}: sonnet 2 has 3 lines, expected 14"]
    ex, notes2 = t.load(data, "train", TOK, 1024)
    assert [str(m) for m in notes2] == [str(m) for m in notes]
    assert [e.id for e in ex] == ["0", "1", "2", "3"]  # the position in the file, not the sonnet's number
    assert ex[1].input_ids == enc(texts[1]) + [EOT] and ex[1].label is None and ex[1].meta == {}
    # max_len cuts after the end of text is added: sonnet 2 is 3 lines ("two 1\ntwo 2\ntwo 3"), 11 tokens + EOT
    n2 = len(enc(texts[1]))
    cut = t.load(data, "train", TOK, n2)[0]
    assert cut[1].input_ids == enc(texts[1]) and all(len(e.input_ids) == n2 for e in cut)
    assert t.load(data, "train", TOK, n2 + 1)[0][1].input_ids == enc(texts[1]) + [EOT]
    # --max-train: a seeded subset of the real sonnets in file order, the extra ones all on top
    keep = subset(5, "train", 4, 2)  # [0, 1]; seed None: [0, 2], split None: [1, 3]
    assert keep == [0, 1]
    sub, _ = t.load(data, "train", TOK, 1024, limit=2, seed=5, extra_texts=["x y", "z"])
    assert [e.id for e in sub] == [str(i) for i in keep] + ["synthetic-0", "synthetic-1"]
    assert [e.input_ids for e in sub[:2]] == [enc(texts[i]) + [EOT] for i in keep]
    assert sub[2].input_ids == enc("x y") + [EOT] and sub[3].input_ids == enc("z") + [EOT]
    assert sub[2].meta == sub[3].meta == {"source": "synthetic"}
    assert t.load(data, "train", TOK, 2, extra_texts=["x y z"])[0][-1].input_ids == enc("x y z")[:2]


def test_dev_examples_carry_the_prompt_and_the_true_sonnet(data):
    t = SonnetTask()
    ex, notes = t.load(data, "dev", TOK, 1024)
    true = data / "TRUE_sonnets_held_out_dev.txt"
    # the true sonnets are read expecting 14 lines: 7 has 13 (its number on line 12 + 17 = 29)
    assert [str(m) for m in notes] == [f"{true}:29: sonnet 7 has 13 lines, expected 14"]
    assert [e.id for e in ex] == ["7", "5"]  # the prompts' order
    seven = "\n".join(lines("seven", 13))
    assert ex[0].input_ids == enc("seven 1\nseven 2\nseven 3\n") and ex[0].label is None
    assert ex[0].meta == {"prompt_lines": ("seven 1", "seven 2", "seven 3"), "reference": seven,
                          "reference_ids": enc(seven) + [EOT]}
    assert ex[1].meta["prompt_lines"] == ("five 1", "five 2")
    # reference_ids are cut to max_len too
    short = t.load(data, "dev", TOK, 20)[0]
    assert short[0].meta["reference_ids"] == enc(seven)[:20] and short[0].meta["reference"] == seven
    # the dev loss is the LM loss on the true sonnets
    loss = t.loss_examples(ex + [Example("8", [1, 2], meta={"prompt_lines": ("x",)})])
    assert [(e.id, e.input_ids, e.label, e.meta) for e in loss] == [
        ("7", enc(seven) + [EOT], None, {}), ("5", enc("\n".join(lines("five", 14))) + [EOT], None, {})]


def subset(seed, split: str, n: int, k: int) -> list[int]:
    """`tasks.base.sample_indices` without labels, written out: k of n positions from the split's own stream."""
    return sorted(random.Random(f"minigpt2-subset:{seed}:{split}").sample(range(n), k))


def test_max_eval_and_max_train_subsets_are_seeded_per_split(data):
    t = SonnetTask()
    write(data / "sonnets_held_out_dev.txt", [(n, lines(f"p{n}", 3)) for n in (7, 5, 9, 11)])
    write(data / "TRUE_sonnets_held_out_dev.txt", [(n, lines(f"p{n}", 14)) for n in (5, 7, 9, 11)])
    numbers = ["7", "5", "9", "11"]
    # seed 2 keeps [1, 3]; seed None [0, 3], split None [0, 2], seed 0 [2, 3], seed 1 [0, 1], "test" [0, 1]
    assert subset(2, "dev", 4, 2) == [1, 3] and len({str(subset(*a, 4, 2)) for a in (
        (2, "dev"), (None, "dev"), (2, None), (0, "dev"), (1, "dev"))}) == 5
    assert [e.id for e in t.load(data, "dev", TOK, 1024, limit=2, seed=2)[0]] == ["5", "11"]
    assert [e.id for e in t.load(data, "dev", TOK, 1024, limit=2)[0]] == [numbers[i] for i in subset(0, "dev", 4, 2)]
    assert [e.id for e in t.load(data, "dev", TOK, 1024, limit=9, seed=2)[0]] == numbers  # more than there are
    # training: the default seed is 0 ([0, 2]; seed 1 would keep [1, 3])
    assert [e.id for e in t.load(data, "train", TOK, 1024, limit=2)[0]] == ["0", "2"] == [
        str(i) for i in subset(0, "train", 4, 2)]


def test_test_examples_have_no_reference(data):
    ex, notes = SonnetTask().load(data, "test", TOK, 1024)
    assert notes == [] and [e.id for e in ex] == ["8"]
    assert ex[0].meta == {"prompt_lines": ("eight 1", "eight 2", "eight 3")}
    assert SonnetTask().loss_examples(ex) == []


def test_a_prompt_that_fills_the_context_is_refused_with_one_line(data):
    n = len(enc("seven 1\nseven 2\nseven 3\n"))  # the longer prompt: 12 tokens
    SonnetTask().load(data, "dev", TOK, n + 1)  # one token of room: fine
    with pytest.raises(DataError) as e:
        SonnetTask().load(data, "dev", TOK, n)
    assert str(e.value) == (f"{data / 'sonnets_held_out_dev.txt'}: sonnet 7's prompt is {n} tokens, but the "
                            f"context holds {n} (the model's n_positions, or max_length): expected a prompt "
                            "shorter than the context, with room to generate")
    with pytest.raises(DataError) as e:
        SonnetTask().load(data, "test", TOK, 3)
    assert str(e.value).startswith(f"{data / 'sonnets_held_out.txt'}: sonnet 8's prompt is ")


def test_a_dev_prompt_without_its_true_sonnet_is_refused(data):
    write(data / "TRUE_sonnets_held_out_dev.txt", [(5, lines("five", 14))])
    with pytest.raises(DataError) as e:
        SonnetTask().load(data, "dev", TOK, 1024)
    assert str(e.value) == f"{data / 'TRUE_sonnets_held_out_dev.txt'}: no true sonnet for prompt(s) [7]"


# ------------------------------------------------------------------------------------------------ K draws

class FakeGenerate:
    """Stands in for `minigpt2.generation.generate`: records each call, answers scripted token ids."""

    def __init__(self, answer) -> None:
        self.calls: list[dict] = []
        self.answer = answer

    def __call__(self, gpt, prompts, **kw):
        self.calls.append(dict(kw, gpt=gpt, prompts=prompts))
        return [self.answer(len(self.calls) - 1, i) for i in range(len(prompts))]


def test_draws_are_seeded_apart_batched_and_cut(monkeypatch):
    fake = FakeGenerate(lambda call, row: enc(f"\nc{call}r{row}\n7\n\nz  \n") + [EOT])
    monkeypatch.setattr(sonnet_module, "generate", fake)
    examples = [Example("1", [A, NL], meta={"prompt_lines": ("a",)}),
                Example("2", [B, NL], meta={"prompt_lines": ("b", "b2")}),
                Example("3", [C, NL], meta={"prompt_lines": ("c", "c2", "c3")})]
    module = SonnetLM(tiny_gpt())
    how = PredictSettings(batch_size=2, sampling=Sampling(temperature=0.7, top_p=0.8, max_new_tokens=33, seed=11))
    out = SonnetTask().predict_samples(module, examples, how, TOK, CPU, samples=2)
    # sample k, batch from `start`: seed 11 + start + 1,000,003 k
    assert [c["seed"] for c in fake.calls] == [11, 13, 11 + 1_000_003, 13 + 1_000_003]
    assert SAMPLE_SEED_STEP == 1_000_003
    assert [c["prompts"] for c in fake.calls] == [[[A, NL], [B, NL]], [[C, NL]]] * 2
    for c in fake.calls:
        assert c["gpt"] is module.gpt
        assert (c["max_new_tokens"], c["temperature"], c["top_p"], c["eos_id"]) == (33, 0.7, 0.8, EOT)
        assert set(c) == {"gpt", "prompts", "max_new_tokens", "temperature", "top_p", "eos_id", "stop", "seed"}
    # the stop rule asks for the most lines any row of the batch still needs: 14 - 1 = 13, then 14 - 3 = 11
    stop0, stop1 = fake.calls[0]["stop"], fake.calls[1]["stop"]
    assert not stop0(enc("x\n" * 12)) and stop0(enc("x\n" * 13))
    assert not stop1(enc("x\n" * 10)) and stop1(enc("x\n" * 11))
    # each draw: the prompt's lines, then the new lines without the end of text, "7" and blank lines
    assert out == [["a\nc0r0\nz", "b\nb2\nc0r1\nz", "c\nc2\nc3\nc1r0\nz"],
                   ["a\nc2r0\nz", "b\nb2\nc2r1\nz", "c\nc2\nc3\nc3r0\nz"]]
    assert SonnetTask().predict(module, examples[:1], how, TOK, CPU) == ["a\nc4r0\nz"]
    assert fake.calls[-1]["seed"] == 11


def test_an_end_of_text_inside_a_draw_is_dropped_not_cut_at(monkeypatch):
    # generate returns EOT last; one in the middle (a fast path's sampler) is dropped alone, ids before and after kept
    monkeypatch.setattr(sonnet_module, "generate", FakeGenerate(lambda call, row: [A, EOT, B, NL, C]))
    out = SonnetTask().predict_samples(SonnetLM(tiny_gpt()), [Example("1", [D, NL], meta={"prompt_lines": ("d",)})],
                                       PredictSettings(), TOK, CPU, samples=1)
    assert out == [["d\nab\nc"]]


# ---------------------------------------------------------------------------------------------- held-out NLL

def per_window_nll(gpt: GPT2, seq: list[int], windows: list[tuple[int, int, int]]) -> tuple[float, int]:
    """Each window alone, unpadded, each scored token's -log p summed in fp64."""
    total, count = 0.0, 0
    for begin, end, first in windows:
        with torch.no_grad():
            logp = F.log_softmax(gpt.logits(torch.tensor([seq[begin:end]]))[0].double(), dim=-1)
        for t in range(first, end):
            total -= float(logp[t - begin - 1, seq[t]])
            count += 1
    return total, count


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_heldout_nll_of_two_sonnets_one_past_the_context(batch_size):
    gpt = tiny_gpt(n_positions=6)
    # "1": prompt [a NL b NL], rest [c NL d] + EOT: 8 tokens, windows (0, 6, 4), (2, 8, 6)
    # "2": prompt [c NL], rest [a] + EOT: 4 tokens, one window (0, 4, 2)
    examples = [Example("1", [], meta={"prompt_lines": ("a", "b")}), Example("3", [], meta={"prompt_lines": ("d",)}),
                Example("2", [], meta={"prompt_lines": ("c",)})]
    refs = {"1": "a\nb\nc\nd", "2": "c\na"}  # "3" has none: left out
    gpt.train()
    got = SonnetTask().heldout_nll(SonnetLM(gpt), examples, refs, PredictSettings(batch_size=batch_size), TOK, CPU)
    assert gpt.training  # given back as it was
    assert list(got) == ["1", "2"]
    gpt.eval()
    nll1, n1 = per_window_nll(gpt, [A, NL, B, NL, C, NL, D, EOT], [(0, 6, 4), (2, 8, 6)])
    nll2, n2 = per_window_nll(gpt, [C, NL, A, EOT], [(0, 4, 2)])
    assert (n1, n2) == (4, 2)
    assert isinstance(got["1"], HeldoutNLL)
    # continuation: all tokens after the prompt; in view: those in the first window (6 - 4 = 2)
    assert got["1"][1:] == (4, 4, 2) and got["2"][1:] == (2, 2, 2)
    assert got["1"].nll == pytest.approx(nll1, rel=1e-12) and got["2"].nll == pytest.approx(nll2, rel=1e-12)
    SonnetTask().heldout_nll(SonnetLM(gpt), examples, refs, PredictSettings(), TOK, CPU)
    assert not gpt.training  # eval stays eval


def test_heldout_nll_of_an_fp32_model_is_summed_in_fp64_from_fp32_logits():
    torch.manual_seed(1)
    gpt = GPT2(GPT2Config.from_name("tiny", n_positions=16, dropout=0.0)).eval()
    ex = [Example("1", [], meta={"prompt_lines": ("a",)})]
    got = SonnetTask().heldout_nll(SonnetLM(gpt), ex, {"1": "a\nb c d"}, PredictSettings(), TOK, CPU)["1"]
    seq = [A, NL] + enc("b c d") + [EOT]
    with torch.no_grad():
        logits = gpt.logits(torch.tensor([seq]))[0]
    assert logits.dtype == torch.float32
    want = sum(float(F.cross_entropy(logits[t - 1:t], torch.tensor([seq[t]]))) for t in range(2, len(seq)))
    assert got.nll == pytest.approx(want, rel=1e-5) and got[1:] == (len(seq) - 2,) * 3


# ------------------------------------------------------------------------------------------------ chrF, loss

def test_score_is_sacrebleu_chrf_of_the_full_sonnets():
    hyps = ["Shall I compare thee", "to a summer's day"]
    refs = ["Shall I compare you", "to a winter day"]
    ex = [Example(str(i), [], meta={"reference": r}) for i, r in enumerate(refs)]
    assert SonnetTask().score(ex, hyps) == {"chrf": sacrebleu.corpus_chrf(hyps, [refs]).score}
    assert SonnetTask().score(ex, hyps[::-1])["chrf"] != SonnetTask().score(ex, hyps)["chrf"]


def test_the_lm_loss_is_the_mean_next_token_cross_entropy():
    gpt = tiny_gpt(n_positions=16)
    ids = torch.tensor([[A, NL, B, EOT], [C, D, EOT, EOT]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    targets = torch.tensor([[NL, B, EOT, -100], [D, EOT, -100, -100]])
    loss = SonnetLM(gpt)({"input_ids": ids, "attention_mask": mask, "targets": targets})
    with torch.no_grad():
        rows = [gpt.logits(torch.tensor([[A, NL, B, EOT]]))[0], gpt.logits(torch.tensor([[C, D, EOT]]))[0]]
    terms = [-F.log_softmax(rows[0], -1)[t, y] for t, y in enumerate([NL, B, EOT])]
    terms += [-F.log_softmax(rows[1], -1)[t, y] for t, y in enumerate([D, EOT])]
    assert float(loss.detach()) == pytest.approx(float(sum(terms)) / 5, rel=1e-9)


def test_the_lm_loss_reads_the_batchs_attention_mask():
    # a row whose first position is masked out: the loss is that of the model under that mask (the padding token
    # unseen), not of the unmasked row (right padding alone cannot show it: causal attention never looks right)
    gpt = tiny_gpt(n_positions=16)
    ids, mask = torch.tensor([[EOT, C, D, EOT]]), torch.tensor([[0, 1, 1, 1]])
    targets = torch.tensor([[-100, D, EOT, -100]])
    loss = SonnetLM(gpt)({"input_ids": ids, "attention_mask": mask, "targets": targets})
    with torch.no_grad():
        masked = F.log_softmax(gpt.logits(ids, attention_mask=mask)[0], -1)
        unmasked = F.log_softmax(gpt.logits(ids)[0], -1)
    want = -(masked[1, D] + masked[2, EOT]) / 2
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-9)
    assert float(want) != pytest.approx(float(-(unmasked[1, D] + unmasked[2, EOT]) / 2), rel=1e-6)


def test_build_wraps_the_given_model():
    gpt = tiny_gpt(n_positions=16)
    module = SonnetTask().build(gpt)
    assert isinstance(module, SonnetLM) and module.gpt is gpt

"""bench/llama_worker.py on fake runtimes: which decoder each SIDE builds (minigpt2's fp32 prepacked, fp16-weight
or int8 copy, or llama.cpp on its GGUF file with the settings the line promises), llama.cpp's greedy loop on a
fake context whose logits are chosen, the timed decodes on a fake clock, the JSON the worker prints and its
refusals, matched whole. Written to kill the survivors of `python tools/mutate.py --auto bench/llama_worker.py`."""

from __future__ import annotations

import ctypes
import json
import sys
import types
from pathlib import Path

import pytest
import torch

import bench.common
import minigpt2.checkpoint
import minigpt2.fast
import minigpt2.generation
import quant
import quant.int8_linear
from bench import llama_worker
from minigpt2.generation import EOT_ID

SIDES = ("minigpt2-fp32", "minigpt2-fp16", "minigpt2-int8", "llama.cpp-f32", "llama.cpp-f16", "llama.cpp-q8_0")


def test_the_six_sides():
    assert llama_worker.SIDES == SIDES


# ---- minigpt2's sides ----

def fake_minigpt2(monkeypatch):
    calls = []
    model = types.SimpleNamespace(name="loaded model")
    monkeypatch.setattr(bench.common, "set_threads", lambda n: calls.append(("threads", n)))
    monkeypatch.setattr(minigpt2.checkpoint, "load_model", lambda folder: calls.append(("load", folder)) or model)
    monkeypatch.setattr(quant, "ptq", lambda m, cfg: calls.append(("ptq", m, cfg)) or "fake-quant")
    monkeypatch.setattr(quant.int8_linear, "int8_decoder_config", lambda: "int8 config")
    monkeypatch.setattr(quant.int8_linear, "to_int8_decoder", lambda m: calls.append(("to_int8", m)) or "int8 model")

    def for_inference(m, device, autocast_dtype=None, batch=1):  # the real one's defaults
        calls.append(("for_inference", m, device, autocast_dtype, batch))
        return "decoder"
    monkeypatch.setattr(minigpt2.fast, "for_inference", for_inference)

    def generate(m, prompts, new, temperature=0.0, top_k=None, top_p=None, eos_id=EOT_ID, stop=None, seed=None,
                 on_token=None):  # the real one's defaults: what a call leaves out counts as these
        calls.append(("generate", m, prompts, new, temperature, top_k, top_p, eos_id, stop))
        return [[5, 6, 7][:new], [9, 9, 9]]  # a second row a batch of one never has
    monkeypatch.setattr(minigpt2.generation, "generate", generate)
    return calls, model


CPU = torch.device("cpu")


@pytest.mark.parametrize("side, built", [
    ("minigpt2-fp32", [("for_inference", "model", CPU, None, 1)]),
    ("minigpt2-fp16", [("for_inference", "model", CPU, torch.float16, 1)]),
    ("minigpt2-int8", [("ptq", "model", "int8 config"), ("to_int8", "fake-quant"),
                       ("for_inference", "int8 model", CPU, None, 1)])])
def test_each_minigpt2_side_builds_its_decoder(monkeypatch, tmp_path, side, built):
    calls, model = fake_minigpt2(monkeypatch)
    decode = llama_worker.minigpt2_decoder(side, tmp_path, 3)
    named = [tuple("model" if x is model else x for x in c) for c in calls]
    assert named == [("threads", 3), ("load", tmp_path / "hf"), *built]
    del calls[:]
    assert decode([1, 2], 3) == [5, 6, 7]  # the one prompt's new tokens
    # greedy, no end-of-text stop: all 3 new tokens
    assert calls == [("generate", "decoder", [[1, 2]], 3, 0.0, None, None, None, None)]


# ---- llama.cpp's side, on a fake llama_cpp ----

VOCAB = 11


def next_token(t):
    """The fake model's greedy choice after token t."""
    return (3 * t + 1) % VOCAB


class FakeLlama:
    """llama_cpp.Llama as the worker uses it: each `eval` appends its tokens' logits rows (the argmax of a row is
    `next_token` of its token; the row's largest value sits at that index, the second largest elsewhere), and
    `llama_get_logits_ith(ctx, i)` reads row i of the last eval (negative from its end) as a C float pointer."""
    made: list = []

    def __init__(self, **kw):
        self.kw = kw
        self.log = []
        self.rows = []
        self.ctx = self
        self.made.append(self)

    def n_vocab(self):
        return VOCAB

    def reset(self):
        self.log.append("reset")

    def eval(self, tokens):
        self.log.append(list(tokens))
        self.rows = []
        for t in tokens:
            row = (ctypes.c_float * VOCAB)(*[0.5 if i == (next_token(t) + 5) % VOCAB else 0.0 for i in range(VOCAB)])
            row[next_token(t)] = 1.0
            self.rows.append(row)


def fake_llama_cpp(monkeypatch, version="0.3.99", info=b"  CPU : AVX2 = 1 | F16C = 1 | \n"):
    mod = types.ModuleType("llama_cpp")
    mod.__version__ = version
    mod.Llama = FakeLlama
    asked = []

    def get_logits_ith(ctx, i):
        asked.append(i)
        row = ctx.rows[i]  # IndexError past either end, as a real context's would be garbage
        return ctypes.cast(row, ctypes.POINTER(ctypes.c_float))
    mod.llama_get_logits_ith = get_logits_ith
    mod.llama_print_system_info = lambda: info
    monkeypatch.setitem(sys.modules, "llama_cpp", mod)
    FakeLlama.made = []
    return asked


@pytest.mark.parametrize("side, file", [("llama.cpp-f32", "model-f32.gguf"), ("llama.cpp-f16", "model-f16.gguf"),
                                        ("llama.cpp-q8_0", "model-q8_0.gguf")])
def test_llama_side_loads_its_gguf_with_the_promised_settings(monkeypatch, tmp_path, side, file):
    fake_llama_cpp(monkeypatch)
    llama_worker.llama_decoder(side, tmp_path, 3, 20)
    (llm,) = FakeLlama.made
    # context of the whole decode, one batch for the prompt, threads on both paths, f32 keys and values
    # (GGML type 0), the last token's logits only, quiet, seed 0
    assert llm.kw == {"model_path": str(tmp_path / file), "n_ctx": 20, "n_batch": 20, "n_threads": 3,
                      "n_threads_batch": 3, "type_k": 0, "type_v": 0, "logits_all": False, "verbose": False,
                      "seed": 0}


def test_llama_greedy_loop_on_a_fake_context(monkeypatch, tmp_path):
    asked = fake_llama_cpp(monkeypatch)
    decode = llama_worker.llama_decoder("llama.cpp-f32", tmp_path, 1, 9)
    (llm,) = FakeLlama.made
    # prompt 4 2 7: the last token 7 gives (3 x 7 + 1) % 11 = 0; then 0 -> 1, 1 -> 4, 4 -> 2, 2 -> 7
    assert decode([4, 2, 7], 5) == [0, 1, 4, 2, 7]
    # the cache emptied first, the prompt at once, then one token at a time; none after the last
    assert llm.log == ["reset", [4, 2, 7], [0], [1], [4], [2]]
    assert asked == [-1] * 5  # the last position's logits, every time
    assert all(type(t) is int for t in decode([4, 2, 7], 5))  # JSON-ready ints
    del llm.log[:]
    assert decode([3], 1) == [10]  # 3 -> 10; one token: no eval after the prompt
    assert llm.log == ["reset", [3]]
    assert decode([10, 3], 2) == [10, 9]  # the second decode starts over: reset again
    assert llm.log == ["reset", [3], "reset", [10, 3], [10]]


def test_llama_build_is_the_version_and_the_stripped_system_info(monkeypatch):
    fake_llama_cpp(monkeypatch, "0.3.7", b"  CPU : AVX = 1 | AVX2 = 1 | \n")
    assert llama_worker.llama_build() == {"version": "0.3.7", "system_info": "CPU : AVX = 1 | AVX2 = 1 |"}


# ---- measure: untimed and timed decodes, on a fake clock ----

class Clock:
    """perf_counter readings chosen by hand."""

    def __init__(self, readings):
        self.readings = list(readings)

    def perf_counter(self):
        return self.readings.pop(0)


def fake_decoder(log, outputs):
    def decode(prompt, new):
        log.append((list(prompt), new))
        return outputs[len(log) - 1]
    return decode


@pytest.mark.parametrize("side", ["minigpt2-fp32", "minigpt2-fp16", "minigpt2-int8"])
def test_measure_minigpt2_times_each_rep_after_the_warmups(monkeypatch, tmp_path, side):
    log, made = [], []
    outputs = [[9], [8], [1, 2], [3, 4], [5, 6]]

    def minigpt2_decoder(s, folder, threads):
        made.append((s, folder, threads))
        return fake_decoder(log, outputs)
    monkeypatch.setattr(llama_worker, "minigpt2_decoder", minigpt2_decoder)
    monkeypatch.setattr(llama_worker, "llama_decoder", lambda *a: pytest.fail("llama.cpp for a minigpt2 side"))
    monkeypatch.setattr(llama_worker, "llama_build", lambda: pytest.fail("a build for a minigpt2 side"))
    # three timed decodes: 10.0 -> 10.5, 20.0 -> 20.25, 30.0 -> 31.0: 0.5, 0.25 and 1.0 s
    monkeypatch.setattr(llama_worker, "time", Clock([10.0, 10.5, 20.0, 20.25, 30.0, 31.0]))
    out = llama_worker.measure(side, tmp_path, [4, 5], 2, threads=2, reps=3, warmup=2)
    assert made == [(side, tmp_path, 2)]
    assert log == [([4, 5], 2)] * 5  # 2 untimed, 3 timed
    assert out == {"side": side, "seconds": [0.5, 0.25, 1.0], "tokens": [5, 6]}  # the last decode's tokens
    assert list(out) == ["side", "seconds", "tokens"]


@pytest.mark.parametrize("side", ["llama.cpp-f32", "llama.cpp-f16", "llama.cpp-q8_0"])
def test_measure_llama_adds_its_build(monkeypatch, tmp_path, side):
    log, made = [], []
    build = {"version": "0.3.9", "system_info": "CPU : AVX2 = 1"}

    def llama_decoder(s, folder, threads, n_ctx):
        made.append((s, folder, threads, n_ctx))
        return fake_decoder(log, [[1], [2, 3, 4]])
    monkeypatch.setattr(llama_worker, "llama_decoder", llama_decoder)
    monkeypatch.setattr(llama_worker, "minigpt2_decoder", lambda *a: pytest.fail("minigpt2 for a llama.cpp side"))
    monkeypatch.setattr(llama_worker, "llama_build", lambda: build)
    monkeypatch.setattr(llama_worker, "time", Clock([1.0, 3.5]))
    out = llama_worker.measure(side, tmp_path, [4, 5, 6, 7, 8], 3, threads=1, reps=1, warmup=1)
    assert made == [(side, tmp_path, 1, 8)]  # its context: prompt 5 + 3 new tokens
    assert log == [([4, 5, 6, 7, 8], 3)] * 2
    assert out == {"side": side, "seconds": [2.5], "tokens": [2, 3, 4], "build": build}


def test_measure_with_no_warmup_and_no_reps(monkeypatch, tmp_path):
    log = []
    monkeypatch.setattr(llama_worker, "minigpt2_decoder", lambda *a: fake_decoder(log, [[7, 7]]))
    monkeypatch.setattr(llama_worker, "time", Clock([5.0, 5.125]))
    assert llama_worker.measure("minigpt2-fp32", tmp_path, [1], 2, 1, reps=1, warmup=0) == {
        "side": "minigpt2-fp32", "seconds": [0.125], "tokens": [7, 7]}
    assert log == [([1], 2)]
    monkeypatch.setattr(llama_worker, "time", Clock([]))
    assert llama_worker.measure("minigpt2-fp32", tmp_path, [1], 2, 1, reps=0, warmup=0) == {
        "side": "minigpt2-fp32", "seconds": [], "tokens": []}


@pytest.mark.parametrize("side", ["llama.cpp-q4_0", "minigpt2", "MINIGPT2-FP32", ""])
def test_measure_refuses_an_unknown_side(monkeypatch, tmp_path, side):
    monkeypatch.setattr(llama_worker, "minigpt2_decoder", lambda *a: pytest.fail("built although refused"))
    monkeypatch.setattr(llama_worker, "llama_decoder", lambda *a: pytest.fail("built although refused"))
    with pytest.raises(ValueError) as e:
        llama_worker.measure(side, tmp_path, [1], 1, 1, 1, 1)
    assert str(e.value) == ("llama_worker: side must be one of minigpt2-fp32, minigpt2-fp16, minigpt2-int8, "
                            f"llama.cpp-f32, llama.cpp-f16, llama.cpp-q8_0, got {side!r}")


# ---- main: its arguments and the one JSON line it prints ----

RESULT = {"side": "llama.cpp-q8_0", "seconds": [0.5, 0.25], "tokens": [1, 2], "build": {"version": "1"}}


@pytest.mark.parametrize("extra, reps, warmup", [([], 3, 1), (["--reps", "5", "--warmup", "0"], 5, 0)])
def test_main_prints_the_measurement_as_one_json_line(monkeypatch, capsys, extra, reps, warmup):
    got = []
    monkeypatch.setattr(llama_worker, "measure", lambda *a: got.append(a) or RESULT)
    llama_worker.main(["llama.cpp-q8_0", "--folder", "/tmp/x", "--prompt", "464,3616,286", "--new", "12",
                       "--threads", "2", *extra])
    assert got == [("llama.cpp-q8_0", Path("/tmp/x"), [464, 3616, 286], 12, 2, reps, warmup)]
    out = capsys.readouterr().out
    assert out == ('{"side": "llama.cpp-q8_0", "seconds": [0.5, 0.25], "tokens": [1, 2], '
                   '"build": {"version": "1"}}\n')
    assert json.loads(out) == RESULT


def test_main_reads_argv_by_default(monkeypatch, capsys):
    got = []
    monkeypatch.setattr(llama_worker, "measure", lambda *a: got.append(a) or {"side": "minigpt2-int8"})
    monkeypatch.setattr(sys, "argv", ["llama_worker.py", "minigpt2-int8", "--folder", "d", "--prompt", "7",
                                      "--new", "1", "--threads", "1"])
    llama_worker.main()
    assert got == [("minigpt2-int8", Path("d"), [7], 1, 1, 3, 1)]
    assert capsys.readouterr().out == '{"side": "minigpt2-int8"}\n'


@pytest.mark.parametrize("argv, error", [
    (["minigpt2-fp64", "--folder", "d", "--prompt", "1", "--new", "1", "--threads", "1"],
     "argument side: invalid choice: 'minigpt2-fp64' (choose from " + ", ".join(map(repr, SIDES)) + ")"),
    (["minigpt2-fp32", "--prompt", "1", "--new", "1", "--threads", "1"],
     "the following arguments are required: --folder"),
    (["minigpt2-fp32", "--folder", "d", "--new", "1", "--threads", "1"],
     "the following arguments are required: --prompt"),
    (["minigpt2-fp32", "--folder", "d", "--prompt", "1", "--threads", "1"],
     "the following arguments are required: --new"),
    (["minigpt2-fp32", "--folder", "d", "--prompt", "1", "--new", "1"],
     "the following arguments are required: --threads"),
    (["minigpt2-fp32", "--folder", "d", "--prompt", "1", "--new", "x", "--threads", "1"],
     "argument --new: invalid int value: 'x'"),
    (["minigpt2-fp32", "--folder", "d", "--prompt", "1", "--new", "1", "--threads", "1", "--reps", "2.5"],
     "argument --reps: invalid int value: '2.5'"),
    (["minigpt2-fp32", "--folder", "d", "--prompt", "1", "--new", "1", "--threads", "1", "--warmup", "a"],
     "argument --warmup: invalid int value: 'a'"),
])
def test_main_refuses_bad_arguments_in_one_line(monkeypatch, capsys, argv, error):
    monkeypatch.setattr(llama_worker, "measure", lambda *a: pytest.fail("measured although refused"))
    monkeypatch.setattr(sys, "argv", ["llama_worker.py"])
    with pytest.raises(SystemExit) as e:
        llama_worker.main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"llama_worker.py: error: {error}"


def test_help_names_every_option(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["llama_worker.py"])
    with pytest.raises(SystemExit):
        llama_worker.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ["internal: one side of bench_llama's lines, in its own process",
                   "--folder FOLDER holds hf/ (the checkpoint) and model-TYPE.gguf",
                   "--prompt PROMPT token ids, comma-separated", "--new NEW new tokens per decode",
                   "--reps REPS timed decodes", "--warmup WARMUP untimed decodes first"]:
        assert f" {phrase} " in f" {text} "

"""bench/bench_llama.py on fake worker outputs: tokens/s from the workers' seconds (the median of every timed
decode of a side, which differs here from their mean, their minimum and any one process's median), the ratio,
the bound extras, the greedy-tokens flag and the first differing position, the lines `main` prints and the JSON
it writes, and the worker's command line. Written to kill the survivors of
`python tools/mutate.py --auto bench/bench_llama.py`."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import bench_llama, bound
from bench.bench_llama import Sizes
from bench.common import ModuleSkipped
from minigpt2.config import GPT2Config
from minigpt2.fast import prepack

CONFIG = GPT2Config.from_name("tiny")
S = Sizes(config="tiny", prompt=5, new=7, rounds=2, reps=3, stream_mib=6)
OLD = {"version": "0.0.1", "system_info": "CPU : AVX = 1"}
BUILD = {"version": "0.3.9", "system_info": "CPU : AVX2 = 1 | F16C = 1"}


def proc(seconds, tokens, build=None):
    return {"seconds": seconds, "tokens": tokens, **({"build": build} if build else {})}


# Two processes a side, three timed decodes each; 7 new tokens. Per side, all six decodes sorted and their median:
#   minigpt2-fp32  5 1 2 | 4 9 3          -> 1 2 3 4 5 9,        median 3.5   -> 7 / 3.5   = 2.0 tokens/s
#                  (mean 4, min 1, last process's median 4, first's 2; no side's median is its mean, its
#                  minimum or either process's median)
#   llama.cpp-f32  1 1 8 | 2 3 30         -> 1 1 2 3 8 30,       median 2.5   -> 7 / 2.5   = 2.8
#   minigpt2-int8  10 2 3.5 | 4.5 1 40    -> 1 2 3.5 4.5 10 40,  median 4     -> 7 / 4     = 1.75
#   llama.cpp-q8_0 1.5 2 1 | 9 0.25 30    -> .25 1 1.5 2 9 30,   median 1.75  -> 7 / 1.75  = 4.0
#   minigpt2-fp16  2 6 28 | 5 8 100       -> 2 5 6 8 28 100,     median 7     -> 7 / 7     = 1.0
#   llama.cpp-f16  .5 .75 3 | 1 1 .25     -> .25 .5 .75 1 1 3,   median .875  -> 7 / .875  = 8.0
# Ratios, ours over llama.cpp's: 2 / 2.8, 1.75 / 4 = 0.4375, 1 / 8 = 0.125. The tokens compared are the last
# process's: fp32 equal, int8 differ at 2, fp16 one shorter (differs where it ends, 3).
RUNS = {
    "minigpt2-fp32": [proc([5, 1, 2], [9, 9, 9, 9]), proc([4, 9, 3], [1, 2, 3, 4])],
    "llama.cpp-f32": [proc([1, 1, 8], [8, 8, 8, 8], OLD), proc([2, 3, 30], [1, 2, 3, 4], BUILD)],
    "minigpt2-int8": [proc([10, 2, 3.5], [1, 2, 3, 4]), proc([4.5, 1, 40], [1, 2, 3, 4])],
    "llama.cpp-q8_0": [proc([1.5, 2, 1], [1, 2, 3, 4], OLD), proc([9, 0.25, 30], [1, 2, 5, 4], BUILD)],
    "minigpt2-fp16": [proc([2, 6, 28], [1, 2, 3, 4]), proc([5, 8, 100], [1, 2, 3])],
    "llama.cpp-f16": [proc([0.5, 0.75, 3], [1, 2, 3], OLD), proc([1, 1, 0.25], [1, 2, 3, 4], BUILD)],
}
SPEED = {"minigpt2-fp32": 2.0, "llama.cpp-f32": 2.8, "minigpt2-int8": 1.75, "llama.cpp-q8_0": 4.0,
         "minigpt2-fp16": 1.0, "llama.cpp-f16": 8.0}


class FakeRead:
    """A ReadBandwidth that read 10 GB/s at best, 8 GB/s at the median."""
    bytes_per_s = 1e10
    median_bytes_per_s = 8e9

    def info(self):
        return {"read_bytes_per_s": 1e10, "array_mib": 4.0, "reads": 6, "threads": 1}


def expected_row(ours, peer, ours_precision, peer_precision, diff, line, peer_name):
    extra = {"peer_bound": bound.bound(CONFIG, peer_precision, 5, 7, SPEED[peer], 1e10, 8e9),
             "bandwidth": FakeRead().info(), "processes_per_side": 2, "timed_decodes_per_process": 3,
             "seconds": {ours: [r["seconds"] for r in RUNS[ours]], peer: [r["seconds"] for r in RUNS[peer]]},
             "llama_cpp": BUILD,
             "bound": bound.bound(CONFIG, ours_precision, 5, 7, SPEED[ours], 1e10, 8e9),
             "greedy_tokens_equal": diff is None, "first_differing_position": diff,
             "tokens": {ours: RUNS[ours][-1]["tokens"], peer: RUNS[peer][-1]["tokens"]}}
    return {"line": line, "unit": "tokens/s", "minigpt2": SPEED[ours], "peer_name": peer_name, "peer": SPEED[peer],
            "higher_is_better": True, "goal": ">= 1.0x", "extra": extra, "ratio": SPEED[ours] / SPEED[peer]}


def test_rows_of_fake_workers_by_hand(monkeypatch):
    monkeypatch.setattr(prepack, "fp16_available", lambda: True)
    rows = bench_llama.rows_of(RUNS, CONFIG, S, FakeRead())
    assert [r.to_dict() for r in rows] == [
        expected_row("minigpt2-fp32", "llama.cpp-f32", "fp32", "gguf-f32", None,
                     "greedy b=1, 7 tokens, fp32 vs llama.cpp f32", "llama.cpp f32"),
        expected_row("minigpt2-int8", "llama.cpp-q8_0", "int8", "gguf-q8_0", 2,
                     "greedy b=1, 7 tokens, int8 vs llama.cpp q8_0", "llama.cpp q8_0"),
        expected_row("minigpt2-fp16", "llama.cpp-f16", "fp16", "gguf-f16", 3,
                     "greedy b=1, 7 tokens, fp16 vs llama.cpp f16", "llama.cpp f16")]
    assert [r.ratio for r in rows] == [2 / 2.8, 0.4375, 0.125]
    # the bound's own figures at 10 GB/s, from bench/bound.py's bytes per token
    b = rows[1].extra["bound"]
    assert b["precision"] == "int8" and b["tokens_per_s"] == 1.75
    assert b["fraction"] == 1.75 / (1e10 / bound.decode_bytes_per_token(CONFIG, "int8", 5, 7))


def test_rows_of_without_fbgemm_fp16_shows_llama_f16_alone(monkeypatch):
    monkeypatch.setattr(prepack, "fp16_available", lambda: False)
    runs = {k: v for k, v in RUNS.items() if k != "minigpt2-fp16"}
    rows = bench_llama.rows_of(runs, CONFIG, S, FakeRead())
    assert len(rows) == 3 and rows[1].minigpt2 == 1.75
    alone = rows[2].to_dict()
    assert alone == {
        "line": "greedy b=1, 7 tokens, llama.cpp f16 alone", "unit": "tokens/s", "minigpt2": None,
        "peer_name": "llama.cpp f16", "peer": 8.0, "higher_is_better": True, "goal": "(no fbgemm fp16 here)",
        "extra": {"peer_bound": bound.bound(CONFIG, "gguf-f16", 5, 7, 8.0, 1e10, 8e9), "bandwidth": FakeRead().info(),
                  "processes_per_side": 2, "timed_decodes_per_process": 3,
                  "seconds": {"llama.cpp-f16": [[0.5, 0.75, 3], [1, 1, 0.25]]}, "llama_cpp": BUILD},
        "ratio": None}


def test_first_difference_every_case():
    fd = bench_llama.first_difference
    assert fd([], []) is None
    assert fd([4], [4]) is None
    assert fd([4], [5]) == 0
    assert fd([1, 2, 3], [1, 2, 4]) == 2
    assert fd([1, 2, 3, 9], [1, 2, 4]) == 2  # the first difference, before the shorter one ends
    assert fd([1, 2, 3], [1, 2]) == 2 and fd([1, 2], [1, 2, 3]) == 2
    assert fd([], [7, 8]) == 0 and fd([7, 8, 9, 10], [7]) == 1
    assert fd([1, 5, 6], [2, 5, 7]) == 0


def test_sizes_of_each_preset():
    assert bench_llama.FULL == Sizes("gpt2", 16, 128, 3, 3, 1, 512)
    assert bench_llama.QUICK == Sizes("gpt2", 16, 32, 2, 2, 1, 512)
    assert bench_llama.TINY == Sizes("tiny", 4, 8, 1, 1, 1, 4)


def test_run_picks_quick_or_full_sizes(monkeypatch):
    seen = []
    monkeypatch.setattr(bench_llama, "measure", lambda s, threads: seen.append((s, threads)) or [])
    bench_llama.run(True, "cuda", 3)
    bench_llama.run(False, "cpu", 2)
    assert seen == [(bench_llama.QUICK, 3), (bench_llama.FULL, 2)]


def test_llama_unavailable_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails
    why = bench_llama.llama_unavailable()
    assert why.startswith("llama-cpp-python is not importable (") and why.endswith(
        "); pip install 'minigpt2[peers]' for the llama.cpp lines")
    monkeypatch.setitem(sys.modules, "llama_cpp", type(sys)("llama_cpp"))
    assert bench_llama.llama_unavailable() is None


def test_measure_alternates_fresh_workers_and_reads_between_rounds(monkeypatch, tmp_path):
    monkeypatch.setattr(prepack, "fp16_available", lambda: True)
    monkeypatch.setattr(bench_llama, "llama_unavailable", lambda: None)
    events = []
    folders = []

    def export_files(folder, config):
        assert isinstance(folder, Path) and folder.is_dir()  # a fresh temporary folder
        folders.append(folder)
        events.append(("export", config))
        return CONFIG
    monkeypatch.setattr(bench_llama, "export_files", export_files)
    monkeypatch.setattr(bench_llama, "set_threads", lambda n: events.append(("threads", n)))

    class Read:
        def __init__(self, mib):
            events.append(("bandwidth", mib))
            self.bytes_per_s = self.median_bytes_per_s = 1e10

        def __call__(self):
            events.append("read")

        def info(self):
            return {}
    monkeypatch.setattr(bench_llama, "ReadBandwidth", Read)
    prompts = []

    def worker(side, folder, prompt, s, threads):
        assert folder is folders[0] and folder.is_dir()  # the workers read the files exported there
        events.append(side)
        prompts.append((prompt, s, threads))
        return RUNS[side][sum(e == side for e in events) - 1]
    monkeypatch.setattr(bench_llama, "worker", worker)
    rows = bench_llama.measure(S, threads=1)
    sides = ["minigpt2-fp32", "llama.cpp-f32", "minigpt2-int8", "llama.cpp-q8_0", "minigpt2-fp16", "llama.cpp-f16"]
    assert events == [("threads", 1), ("bandwidth", 6), ("export", "tiny")] + (sides + ["read"] * 3) * 2
    assert not folders[0].exists()  # removed afterwards
    from bench.bench_core import random_ids
    assert all(p == (random_ids(1, 5, CONFIG.vocab_size, "cpu", seed=4)[0].tolist(), S, 1) for p in prompts)
    assert len(prompts[0][0]) == 5
    assert [r.minigpt2 for r in rows] == [2.0, 1.75, 1.0]


def test_measure_is_skipped_without_llama_cpp(monkeypatch):
    monkeypatch.setattr(bench_llama, "llama_unavailable", lambda: "no llama here")

    def measured(*a):
        raise AssertionError("measured although skipped")
    monkeypatch.setattr(bench_llama, "set_threads", measured)
    monkeypatch.setattr(bench_llama, "export_files", measured)
    with pytest.raises(ModuleSkipped, match="^no llama here$"):
        bench_llama.measure(S, 1)


def test_worker_command_and_its_last_output_line(monkeypatch, tmp_path):
    calls = []

    def fake_run(cmd, **kw):
        calls.append((cmd, kw))
        return subprocess.CompletedProcess(cmd, 0, 'loading\n{"seconds": [9]}\n{"seconds": [1.5], "tokens": [3]}\n',
                                           "")
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    out = bench_llama.worker("llama.cpp-f32", tmp_path, [11, 12, 13], S, 2)
    assert out == {"seconds": [1.5], "tokens": [3]}
    (cmd, kw), = calls
    root = Path(bench_llama.__file__).resolve().parent.parent
    assert cmd == [sys.executable, "-m", "bench.llama_worker", "llama.cpp-f32", "--folder", str(tmp_path),
                   "--prompt", "11,12,13", "--new", "7", "--threads", "2", "--reps", "3", "--warmup", "1"]
    assert kw["env"]["PYTHONPATH"] == f"{root}:/elsewhere" and kw["cwd"] == root
    assert kw["capture_output"] is True and kw["text"] is True
    monkeypatch.delenv("PYTHONPATH")
    bench_llama.worker("llama.cpp-f32", tmp_path, [11], S, 2)
    assert calls[-1][1]["env"]["PYTHONPATH"] == f"{root}:"  # nothing after the repository


def test_worker_failure_raises_with_the_end_of_its_stderr(monkeypatch, tmp_path):
    err = "x" * 3000 + "Traceback: it broke"
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", err))
    with pytest.raises(RuntimeError) as e:
        bench_llama.worker("minigpt2-int8", tmp_path, [1], S, 1)
    assert str(e.value) == "llama worker (minigpt2-int8) failed:\n" + err[-2000:]


def test_main_prints_the_table_the_bounds_and_each_token_comparison(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(prepack, "fp16_available", lambda: True)
    monkeypatch.setattr(bench_llama, "set_threads", lambda n: 4 if n is None else n)
    got = []
    monkeypatch.setattr(bench_llama, "run", lambda quick, device, threads: got.append((quick, device, threads))
                        or bench_llama.rows_of(RUNS, CONFIG, S, FakeRead()))
    path = tmp_path / "llama.json"
    bench_llama.main(["--quick", "--json", str(path)])
    assert got == [(True, "cpu", 4)]
    out = capsys.readouterr().out.splitlines()
    assert out[-3:] == ["greedy b=1, 7 tokens, fp32 vs llama.cpp f32: greedy tokens equal",
                        "greedy b=1, 7 tokens, int8 vs llama.cpp q8_0: greedy tokens differ from position 2",
                        "greedy b=1, 7 tokens, fp16 vs llama.cpp f16: greedy tokens differ from position 3"]
    assert out[2].startswith("greedy b=1, 7 tokens, fp32 vs llama.cpp f32   ")  # the table first
    data = json.loads(path.read_text())
    assert data["meta"] == {"command": f"python -m bench.bench_llama --quick --json {path}", "threads": 4}
    assert [r["minigpt2"] for r in data["rows"]] == [2.0, 1.75, 1.0]
    bench_llama.main(["--threads", "3"])  # FULL sizes, no JSON
    assert got[-1] == (False, "cpu", 3)


def test_main_exits_with_the_reason_when_skipped(monkeypatch):
    def skipped(quick, device, threads):
        raise ModuleSkipped("llama-cpp-python is not importable (test)")
    monkeypatch.setattr(bench_llama, "run", skipped)
    monkeypatch.setattr(bench_llama, "set_threads", lambda n: 1)
    with pytest.raises(SystemExit) as e:
        bench_llama.main([])
    assert e.value.code == "error: llama-cpp-python is not importable (test)"


def test_export_files_writes_the_checkpoint_and_three_gguf_files(monkeypatch, tmp_path):
    calls = []

    class Model:
        config = CONFIG
    model = Model()
    monkeypatch.setattr(bench_llama, "make_checkpoint", lambda config, folder: calls.append(("checkpoint", config,
                                                                                              folder)))
    monkeypatch.setattr(bench_llama, "load_model", lambda folder: calls.append(("load", folder)) or model)
    monkeypatch.setattr(bench_llama, "export_gguf", lambda m, path, type_, name: calls.append((m, path, type_, name)))
    assert bench_llama.export_files(tmp_path, "tiny") is CONFIG
    assert calls == [("checkpoint", "tiny", tmp_path / "hf"), ("load", tmp_path / "hf"),
                     (model, tmp_path / "model-f32.gguf", "f32", "minigpt2-bench-tiny"),
                     (model, tmp_path / "model-f16.gguf", "f16", "minigpt2-bench-tiny"),
                     (model, tmp_path / "model-q8_0.gguf", "q8_0", "minigpt2-bench-tiny")]


def test_help_names_every_option(capsys):
    with pytest.raises(SystemExit):
        bench_llama.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ["minigpt2 against llama.cpp: batch-1 greedy decoding, same weights",
                   "--quick 32 new tokens, 2 processes a side",
                   "--threads THREADS threads on both sides (default: all cores)",
                   "--json JSON also write the rows as JSON here"]:
        assert f" {phrase} " in f" {text} "


def test_rows_compare_the_last_processes_tokens_and_build(monkeypatch):
    monkeypatch.setattr(prepack, "fp16_available", lambda: True)
    # a third process first on each side, with other tokens and an older build: still the last one counts
    runs = {side: [proc([1, 1, 1], [7, 7, 7, 7], OLD if side.startswith("llama") else None)] + procs
            for side, procs in RUNS.items()}
    rows = bench_llama.rows_of(runs, CONFIG, dataclasses.replace(S, rounds=3), FakeRead())
    assert [r.extra["llama_cpp"] for r in rows] == [BUILD] * 3
    assert [r.extra["first_differing_position"] for r in rows] == [None, 2, 3]
    assert rows[0].extra["tokens"] == {"minigpt2-fp32": [1, 2, 3, 4], "llama.cpp-f32": [1, 2, 3, 4]}
    assert rows[0].extra["processes_per_side"] == 3


def test_main_records_the_command_line_it_was_given(monkeypatch, tmp_path):
    monkeypatch.setattr(prepack, "fp16_available", lambda: True)
    monkeypatch.setattr(bench_llama, "set_threads", lambda n: 2)
    monkeypatch.setattr(bench_llama, "run", lambda quick, device, threads: bench_llama.rows_of(RUNS, CONFIG, S,
                                                                                              FakeRead()))
    path = tmp_path / "llama.json"
    monkeypatch.setattr(sys, "argv", ["bench_llama.py", "--json", str(path)])
    bench_llama.main()
    assert json.loads(path.read_text())["meta"] == {"command": f"python -m bench.bench_llama --json {path}",
                                                     "threads": 2}

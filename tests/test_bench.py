"""Smoke tests of the benchmark machinery on the tiny config: it runs, fills every line, writes its JSON.

No timing is asserted here: speed and memory goals are judged by `python -m bench`, never by a unit test.
"""

import json
import math

import pytest

import bench.__main__ as bench_main
from bench import bench_core
from bench.common import Row, compare_time


def test_core_lines_on_tiny_config():
    rows = bench_core.run(sizes=bench_core.TINY, device="cpu", threads=1, isolate_memory=False)
    lines = [r.line for r in rows]
    for expected in ["forward", "training step", "matmul peak", "MFU", "Quora cloze", "greedy decode",
                     "sonnet generation", "peak memory"]:
        assert any(expected in line for line in lines), (expected, lines)
    for r in rows:
        assert math.isfinite(r.minigpt2) and r.minigpt2 > 0, r
        if r.peer is not None:
            assert math.isfinite(r.peer) and r.peer > 0 and r.ratio is not None, r
        assert r.extra["precision"] == "fp32"


def test_train_step_flops_counts_head_and_attention():
    cfg = bench_core.GPT2Config.from_name("gpt2")
    flops = bench_core.train_step_flops(cfg, 8, 128)
    # ~124M matmul weights (85M in the blocks + 38.6M head) x 6 x 1024 tokens, plus attention
    assert 0.75e12 < flops < 0.8e12


def test_compare_time_interleaves_and_counts_calls():
    calls = []
    t = compare_time({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, iters=3)
    assert calls == ["a", "b"] * 4
    assert set(t) == {"a", "b"} and all(v >= 0 for v in t.values())


def test_runner_reports_missing_and_failing_modules(tmp_path, monkeypatch, capsys):
    def fake_run(topic, quick, device):
        if topic == "broken":
            raise RuntimeError("boom")
        return [Row(f"{topic} line", "x/s", 2.0, "peer", 1.0, goal=">= 1x")]

    monkeypatch.setattr(bench_main, "discover", lambda: ["core", "broken"])
    monkeypatch.setattr(bench_main, "run_module", fake_run)
    out = tmp_path / "results.json"
    rc = bench_main.main(["--quick", "--only", "core", "broken", "absent", "--out", str(out), "--threads", "1"])
    assert rc == 1  # a failed module makes the command fail, after writing what the others measured
    payload = json.loads(out.read_text())
    assert [r["line"] for r in payload["rows"]] == ["core line"]
    assert payload["rows"][0]["ratio"] == 2.0
    notes = payload["meta"]["notes"]
    assert notes["absent"] == "bench/bench_absent.py not found: skipped"
    assert notes["broken"] == "failed: RuntimeError: boom"
    meta = payload["meta"]
    assert meta["mode"] == "quick" and meta["threads"] == 1 and meta["torch"] and meta["machine"]["cpu"]
    printed = capsys.readouterr().out
    assert "core line" in printed and "bench_absent.py not found" in printed


def test_discover_finds_the_core_module():
    assert "core" in bench_main.discover()


def test_memory_probe_rejects_unknown_side(tmp_path):
    with pytest.raises(ValueError, match="side must be 'ours' or 'hf', got 'peft'"):
        bench_core.memory_probe("peft", tmp_path, 1, 4, "cpu")

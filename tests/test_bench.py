"""Smoke tests of the benchmark machinery on the tiny config: it runs, fills every line, writes its JSON.

No timing is asserted here: speed and memory goals are judged by `python -m bench`, never by a unit test.
"""

import json
import math

import pytest
import torch

import bench.__main__ as bench_main
from bench import bench_core, bench_lora, bench_quant
from bench.common import Row, compare_time, set_threads
from minigpt2 import device as dev
from minigpt2.fast.prepack import Bf16Unsupported
from tests.conftest import bf16_prepacked


FP32_LINES = ["forward", "training step", "fp32 matmul peak", "MFU", "Quora cloze", "greedy decode",
              "sonnet generation", "peak memory"]
BF16_LINES = ["training step 2x32, AdamW, bf16 autocast", "bf16 matmul peak", "MFU, bf16 autocast",
              "Quora cloze training step 2x32, bf16 autocast", "greedy decode, batch 1, 8 new tokens, bf16",
              "against transformers fp32", "sonnet generation, 3 prompts, sampling, bf16"]


@bf16_prepacked
def test_core_lines_on_tiny_config():
    set_threads(1)
    rows = bench_core.measure(bench_core.TINY, "cpu", isolate_memory=False)
    lines = [r.line for r in rows]
    for expected in FP32_LINES + BF16_LINES:
        assert any(expected in line for line in lines), (expected, lines)
    for r in rows:
        assert math.isfinite(r.minigpt2) and r.minigpt2 > 0, r
        if r.peer is not None:
            assert math.isfinite(r.peer) and r.peer > 0 and r.ratio is not None, r
    precisions = [r.extra["precision"] for r in rows]
    first_bf16 = next(i for i, r in enumerate(rows) if "bf16" in r.line)
    assert set(precisions[:first_bf16]) | {precisions[-1]} == {"fp32"}  # fp32 lines, and the memory line
    assert all(p in ("bf16", "bf16 autocast") for p in precisions[first_bf16:-2]), precisions


@bf16_prepacked
def test_bf16_lines_compare_bf16_models(tmp_path):
    bench_core.make_checkpoint("tiny", tmp_path)
    ours, hf = bench_core.load_pair(tmp_path, "cpu")
    assert {p.dtype for p in bench_core.hf_bf16(hf).parameters()} == {torch.bfloat16}
    fast, info = bench_core.bf16_generation_model(ours)
    assert info["model"] == "bf16 prepacked (minigpt2.fast.prepack)" and fast.packed_head.packed.dtype == torch.bfloat16
    assert {p.dtype for p in ours.parameters()} == {torch.float32}  # the fp32 lines keep the fp32 model


def test_bf16_lines_are_left_out_without_native_bf16(monkeypatch, capsys, tmp_path):
    """Where the CPU would emulate bf16, the fp32 lines are measured and the bf16 ones left out, saying why; the
    bf16 generation model is refused, never a silent fp32 or emulated "bf16" line."""
    monkeypatch.setattr(dev, "cpu_native_bf16", lambda cpuinfo="/proc/cpuinfo": False)
    set_threads(1)
    rows = bench_core.measure(bench_core.TINY, "cpu", isolate_memory=False)
    lines = [r.line for r in rows]
    for expected in FP32_LINES:
        assert any(expected in line for line in lines), (expected, lines)
    assert not any("bf16" in line for line in lines)
    assert "bf16 lines left out: autocast bf16: expected a device that runs bf16 natively: this CPU has no " \
        "native bf16" in capsys.readouterr().err
    bench_core.make_checkpoint("tiny", tmp_path)
    with pytest.raises(Bf16Unsupported):
        bench_core.bf16_generation_model(bench_core.load_pair(tmp_path, "cpu")[0])


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


def test_runner_runs_every_listed_module_and_reports_failures(tmp_path, monkeypatch, capsys):
    calls = []

    def fine(quick, device, threads):
        calls.append(("core", quick, device, threads))
        return [Row("core line", "x/s", 2.0, "peer", 1.0, goal=">= 1x")]

    def broken(quick, device, threads):
        raise RuntimeError("boom")

    monkeypatch.setattr(bench_main, "MODULES", {"core": fine, "lora": broken, "quant": fine})
    out = tmp_path / "results.json"
    rc = bench_main.main(["--quick", "--only", "lora", "core", "--out", str(out), "--threads", "1",
                          "--device", "cpu"])
    assert rc == 1  # a failed module makes the command fail, after writing what the others measured
    assert calls == [("core", True, "cpu", 1)]  # quant was not asked for
    payload = json.loads(out.read_text())
    assert [r["line"] for r in payload["rows"]] == ["core line"]
    assert payload["rows"][0]["ratio"] == 2.0
    meta = payload["meta"]
    assert meta["notes"] == {"lora": "failed: RuntimeError: boom"}
    assert meta["modules"] == ["core", "lora"]  # table order, not the order given
    assert meta["mode"] == "quick" and meta["threads"] == 1 and meta["torch"] and meta["machine"]["cpu"]
    assert set(meta["module_seconds"]) == {"core", "lora"} and meta["finished"] is True
    printed = capsys.readouterr().out
    assert "core line" in printed and "lora: failed: RuntimeError: boom" in printed


def test_runner_keeps_finished_modules_when_stopped(tmp_path, monkeypatch):
    out = tmp_path / "results.json"

    def first(quick, device, threads):
        return [Row("first line", "x/s", 1.0)]

    def stopped(quick, device, threads):
        # the JSON on disk already holds the first module's rows when the second one is stopped
        payload = json.loads(out.read_text())
        assert [r["line"] for r in payload["rows"]] == ["first line"] and payload["meta"]["finished"] is False
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_main, "MODULES", {"core": first, "lora": stopped})
    with pytest.raises(KeyboardInterrupt):
        bench_main.main(["--out", str(out), "--threads", "1", "--device", "cpu"])
    assert json.loads(out.read_text())["meta"]["module_seconds"] == {"core": pytest.approx(0.0, abs=1)}


def test_runner_rejects_an_unknown_module(capsys):
    with pytest.raises(SystemExit) as e:
        bench_main.main(["--only", "absent"])
    assert e.value.code == 2 and "invalid choice: 'absent'" in capsys.readouterr().err


def test_every_module_has_the_one_run_signature():
    assert bench_main.MODULES == {"core": bench_core.run, "lora": bench_lora.run, "quant": bench_quant.run}


def test_lora_groups_cover_both_ranks_and_precisions():
    assert {(rank, bf16) for rank, bf16, _ in bench_lora.GROUPS} == {(8, False), (256, False), (8, True),
                                                                      (256, True)}
    assert all(v[:2] == ("minigpt2-lora", "peft-lora") for _, _, v in bench_lora.GROUPS)


def test_memory_probe_rejects_unknown_side(tmp_path):
    with pytest.raises(ValueError, match="side must be 'ours' or 'hf', got 'peft'"):
        bench_core.memory_probe("peft", tmp_path, 1, 4, "cpu")



@pytest.mark.parametrize("bf16", [False, True])
def test_lora_step_of_each_side_trains_only_adapters(bf16):
    set_threads(1)
    counts = {}
    for variant in ("minigpt2-lora", "peft-lora"):
        step, counts[variant] = bench_lora.build_step(variant, torch.device("cpu"), 8, bf16, config="tiny")
        step(), step()
    # per-projection q/k/v adapters (ours: 3 r (C + C)) vs peft's one fused c_attn one (r (C + 3C)): 2 r C more
    # in each of the 2 layers; the other projections' adapters are alike
    assert counts["minigpt2-lora"] - counts["peft-lora"] == 2 * (2 * 8 * 32)


def test_lora_workers_answer_steps_in_turns():
    m = bench_lora.measure(True, "cpu", 1, 8, True, ("minigpt2-lora",), config="tiny")
    ours = m["minigpt2-lora"]
    assert len(ours["step_seconds"]) == 3 and ours["peak_mib"] > 0 and ours["tokens_per_s"] > 0
    assert m["_meta"]["precision"] == "bf16 autocast" and m["_meta"]["config"] == "tiny"


@bf16_prepacked
def test_bf16_only_lines_write_their_json_line_by_line(tmp_path):
    set_threads(1)
    out = tmp_path / "bf16.json"
    rows = bench_core.bf16_lines(bench_core.TINY, "cpu", 1, 1, str(out))
    payload = json.loads(out.read_text())
    assert [r["line"] for r in payload["rows"]] == [r.line for r in rows] and len(rows) == 7
    assert all("bf16" in r.line or r.line.startswith("  same") for r in rows)
    assert payload["meta"]["sizes"]["iters"] == 1

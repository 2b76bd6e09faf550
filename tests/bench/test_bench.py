"""Smoke tests of the benchmark machinery on the tiny config: it runs, fills every line, writes its JSON.

No timing is asserted here: speed and memory goals are judged by `python -m bench`, never by a unit test.
"""

import inspect
import json
import math
import statistics

import pytest
import torch

import bench.__main__ as bench_main
from bench import bench_core, bench_llama, bench_lora, bench_quant, bound, profile_decode
from bench.common import Row, compare_time, set_threads
from minigpt2 import device as dev
from minigpt2.fast.prepack import Bf16Unsupported, fp16_available
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
        if "bound" in r.extra:  # the batch-1 decode lines: fp32 and bf16
            assert_bound(r.extra["bound"], r.minigpt2, r.extra["bandwidth"])
    fp16 = ["fp16"] if bench_core.fp16_weights("cpu") else []
    assert [r.extra["bound"]["precision"] for r in rows if "bound" in r.extra] == ["fp32", *fp16, "bf16"]
    for r in rows:
        assert math.isfinite(r.minigpt2) and r.minigpt2 > 0, r
        if r.peer is not None:
            assert math.isfinite(r.peer) and r.peer > 0 and r.ratio is not None, r
    precisions = [r.extra["precision"] for r in rows]
    first_bf16 = next(i for i, r in enumerate(rows) if "bf16" in r.line)
    assert set(precisions[:first_bf16]) | {precisions[-1]} == {"fp32", *(["fp16 weights"] if fp16 else [])}
    assert all(p in ("bf16", "bf16 autocast") for p in precisions[first_bf16:-2]), precisions


@bf16_prepacked
def test_bf16_lines_compare_bf16_models(tmp_path):
    bench_core.make_checkpoint("tiny", tmp_path)
    ours, hf = bench_core.load_pair(tmp_path, "cpu")
    assert {p.dtype for p in bench_core.hf_bf16(hf).parameters()} == {torch.bfloat16}
    fast, info = bench_core.bf16_generation_model(ours, batch=3)
    assert info["model"] == "bf16 prepacked (minigpt2.fast.prepack)" and fast.packed_head.packed.dtype == torch.bfloat16
    assert info["packed_for_batch"] == 3 == fast.packed_head.batch
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
    # runs from different machines are told apart: the CPU's vector extensions, torch's reading of them, the model
    assert meta["machine"]["vector_extensions"] == bound.cpu_flags()["vector_extensions"]
    assert meta["machine"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert meta["model"] == "gpt2 (124M, random weights)" and meta["skipped"] == {}
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
    assert bench_main.MODULES == {"core": bench_core.run, "decode": bench_core.run_decoding, "lora": bench_lora.run,
                                  "quant": bench_quant.run, "llama": bench_llama.run}
    assert bench_main.DEFAULT == ("core", "lora", "quant", "llama")  # `decode` is a part of `core`


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


# ---- the bandwidth bound of batch-1 decoding (bench/bound.py) ----

TINY = bench_core.GPT2Config.from_name("tiny")  # C 32, 2 layers, V 50257


def assert_bound(b, tokens_per_s, bandwidth):
    """A line's bound: its own bytes per token, the bandwidth measured in its run, fraction = measured / bound."""
    assert b["read_bytes_per_s"] == bandwidth["read_bytes_per_s"] > 0
    assert b["bound_tokens_per_s"] == pytest.approx(b["read_bytes_per_s"] / b["bytes_per_token"], rel=1e-12)
    assert b["tokens_per_s"] == tokens_per_s
    assert b["fraction"] == pytest.approx(tokens_per_s / b["bound_tokens_per_s"], rel=1e-12)
    # and at the median read of the same turns, never faster than the best
    assert b["median_read_bytes_per_s"] == bandwidth["median_read_bytes_per_s"] <= b["read_bytes_per_s"]
    assert b["fraction_of_median_read"] == pytest.approx(
        tokens_per_s * b["bytes_per_token"] / b["median_read_bytes_per_s"], rel=1e-12)
    assert len(bandwidth["read_seconds"]) == bandwidth["reads"]


def test_bytes_per_token_of_the_tiny_config_by_hand():
    """C = 32, L = 2, V = 50257, a 4-token prompt and 8 new tokens. fp32: per block 12 C^2 weights + 9 C biases
    + 4 C LayerNorm values, 4 bytes each, = 50816; ln_f 256; the tied head V C 4 = 6432896; one row of wte and of
    wpe 256. int8: per block 12 C^2 bytes + 9 C rows x 12 (scale, zero point, column sum) + 13 C x 4 = 17408;
    the head V C + 12 V = 2211308. bf16: every value 2 bytes. fp16: the matrices and the head 2 bytes, the rest 4
    (per block 12 C^2 x 2 + 13 C x 4 = 26240, the head 3216448). KV: the steps read 4, 5, ..., 11 positions (mean 7.5)
    of 2 x 2 layers x 32 values x 4 bytes: 3840."""
    assert bound.kv_positions(4, 8) == statistics.mean([4] + [4 + i for i in range(1, 8)]) == 7.5
    assert bound.kv_bytes(TINY, "fp32", 7.5) == 3840
    expected = {"fp32": 2 * 50816 + 256 + 6432896 + 256, "int8": 2 * 17408 + 256 + 2211308 + 256,
                "bf16": 2 * 25408 + 128 + 3216448 + 128, "fp16": 2 * 26240 + 256 + 3216448 + 256}
    for precision, weights in expected.items():
        assert bound.weight_bytes(TINY, precision) == weights, precision
        assert bound.decode_bytes_per_token(TINY, precision, 4, 8) == weights + 3840, precision
    # q8_0 holds 32 values in 34 bytes; the 1-D tensors and the position row stay f32
    assert bound.weight_bytes(TINY, "gguf-q8_0") == 2 * (12 * 1024 * 34 / 32 + 13 * 32 * 4) + 256 + \
        50257 * 32 * 34 / 32 + 32 * 34 / 32 + 32 * 4


def test_bytes_per_token_count_what_the_decoders_hold():
    """The same counts, from the decoders themselves: the fp32 model's parameters (the head read whole, one row of
    each embedding table) and the int8 decoder's fbgemm layers (values unpacked, 12 bytes of extras a row)."""
    from quant import ptq
    from quant.int8_linear import Int8Linear, int8_decoder_config, to_int8_decoder

    torch.manual_seed(0)
    model = bench_core.GPT2(TINY).eval()
    C = TINY.n_embd
    tables = {"wte.weight", "wpe.weight"}
    fp32 = sum(p.numel() * 4 for n, p in model.named_parameters() if n not in tables)
    assert bound.weight_bytes(TINY, "fp32") == fp32 + model.wte.weight.numel() * 4 + 2 * C * 4
    int8 = to_int8_decoder(ptq(model, int8_decoder_config()))
    total = 0
    for m in int8.modules():
        if isinstance(m, Int8Linear):
            w, b = torch.ops.quantized.linear_unpack(m._packed)
            assert w.dtype == torch.qint8 and w.q_per_channel_scales().numel() == m.out_features
            total += w.numel() + 12 * m.out_features + (b.numel() * 4 if b is not None else 0)
        elif isinstance(m, torch.nn.LayerNorm):
            total += sum(p.numel() * p.element_size() for p in m.parameters())
    assert int8.wte.weight.dtype == int8.wpe.weight.dtype == torch.float32  # the rows looked up are fp32
    assert bound.weight_bytes(TINY, "int8") == total + 2 * C * 4


def test_bound_is_bandwidth_over_bytes_and_fraction_is_measured_over_bound():
    b = bound.bound(TINY, "fp32", 4, 8, tokens_per_s=130.0, bandwidth=2e10)
    per_token = 6539136 - 4096 + 3840
    assert b["bytes_per_token"] == per_token
    assert b["bound_tokens_per_s"] == pytest.approx(2e10 / per_token)
    assert b["fraction"] == pytest.approx(130.0 * per_token / 2e10)


def test_read_bandwidth_is_the_best_read():
    read = bound.ReadBandwidth(mib=4)
    read.seconds = [0.004, 0.002, 0.003]  # bytes over the fastest read
    assert read.bytes_per_s == 4 * 2 ** 20 / 0.002
    read.seconds = []
    with pytest.raises(RuntimeError, match="no read timed yet"):
        read.bytes_per_s
    read(), read()
    assert len(read.seconds) == 2 and read.info()["array_mib"] == 4


def test_cpu_flags_from_cpuinfo(tmp_path, monkeypatch):
    for name in bound.ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)
    x86 = tmp_path / "x86"
    x86.write_text("processor : 0\nflags\t\t: fpu avx2 avx512f amx_bf16 avx512_bf16 fma zzz\n\nprocessor : 1\n")
    assert bound.cpu_flags(x86)["vector_extensions"] == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"]
    arm = tmp_path / "arm"
    arm.write_text("Features\t: fp asimd sve bf16 i8mm\n")
    assert bound.cpu_flags(arm)["vector_extensions"] == ["asimd", "sve", "bf16", "i8mm"]
    missing = bound.cpu_flags(tmp_path / "none")
    assert missing == {"vector_extensions": [], "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                       "isa_limits": {}}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # an AVX2 machine emulated: the run says so
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2")
    assert bound.cpu_flags(x86)["isa_limits"] == {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                                                  "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}


def test_decode_lines_carry_their_bound(tmp_path):
    """The fp32 greedy line (and the bf16 one where bf16 is native) carry a bound at their own precision."""
    import transformers

    set_threads(1)
    bench_core.make_checkpoint("tiny", tmp_path)
    ours = bench_core.load_model(tmp_path)  # decoding needs none of `load_pair`'s training pieces
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="sdpa")
    hf.generation_config.eos_token_id, hf.generation_config.pad_token_id = None, 50256
    lines = [(bench_core.bench_greedy_decode, "fp32", 6535040)]
    if not bench_core.bf16_unavailable("cpu"):
        lines.append((bench_core.bench_greedy_decode_bf16, "bf16", 3267520))
    for fn, precision, weights in lines:
        r = fn(ours, hf, bench_core.TINY, "cpu")[0]
        b = r.extra["bound"]
        assert b["precision"] == precision and b["bytes_per_token"] == weights + 3840  # prompt 4, 8 new tokens
        assert_bound(b, r.minigpt2, r.extra["bandwidth"])
        assert r.extra["bandwidth"]["array_mib"] == 4 and r.extra["bandwidth"]["reads"] == 2  # 1 warm-up, 1 timed
    if bench_core.fp16_weights("cpu"):  # the fp16-weight copy, timed in the fp32 line's turns
        fp32, fp16 = bench_core.bench_greedy_decode(ours, hf, bench_core.TINY, "cpu")
        assert fp16.extra["bound"]["precision"] == "fp16" and fp16.extra["bound"]["bytes_per_token"] == 3269440 + 3840
        assert fp16.peer == fp32.peer and fp16.extra["bandwidth"] == fp32.extra["bandwidth"]
        assert_bound(fp16.extra["bound"], fp16.minigpt2, fp16.extra["bandwidth"])


def test_int8_decode_line_has_its_bound_and_its_fp32_peers():
    set_threads(1)
    rows = bench_quant.decode_rows(True, config="tiny", prompt_len=4, new=8, stream_mib=4)
    first = rows[0]
    assert first.line == "greedy decode tiny b=1, 8 tokens: int8"
    assert first.extra["bound"]["precision"] == "int8" and first.extra["peer_bound"]["precision"] == "fp32"
    assert first.extra["bound"]["bytes_per_token"] == 2246636 + 3840
    assert_bound(first.extra["bound"], first.minigpt2, first.extra["bandwidth"])
    assert_bound(first.extra["peer_bound"], first.peer, first.extra["bandwidth"])


def test_print_bounds_lists_each_side(capsys):
    b = bound.bound(TINY, "int8", 4, 8, 50.0, 1e10)
    pb = bound.bound(TINY, "gguf-q8_0", 4, 8, 80.0, 1e10)
    rows = [Row("a line", "tokens/s", 50.0, "llama.cpp q8_0", 80.0, extra={"bound": b, "peer_bound": pb}),
            Row("no bound", "x", 1.0)]
    bound.print_bounds(rows)
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[2:4] for line in out[-2:]] == [["minigpt2", "int8"], ["llama.cpp", "q8_0"]]
    assert out[-2].split()[-2] == f"{b['fraction']:.2f}" and out[-1].split()[-2] == f"{pb['fraction']:.2f}"



def test_print_bounds_columns_by_hand(capsys):
    """Each column in its unit (MB per token, GB/s, tokens/s), rounded as shown, the line and side cut to their
    widths; values chosen where a slip in a unit or a width prints another figure."""
    b = {"precision": "int8", "bytes_per_token": 12_345_679_000.0, "read_bytes_per_s": 123_450_000_050.0,
         "bound_tokens_per_s": 10.004, "tokens_per_s": 7.25, "fraction": 0.7249}
    pb = dict(b, fraction_of_median_read=0.8351)
    bound.print_bounds([Row("L" * 60, "tokens/s", 7.25, "P" * 30, 5.0, extra={"bound": b, "peer_bound": pb})])
    out = capsys.readouterr().out.splitlines()
    assert out[-5] == ("bandwidth bound of batch-1 decoding (the best read of memory in the same run / bytes read per "
                       "token; 'of median': the fraction at the median read)")
    assert out[-4].split() == ["line", "side", "precision", "MB/token", "GB/s", "bound", "tokens/s", "fraction", "of",
                               "median"]
    assert out[-3] == "-" * len(out[-4])
    ours, peer = out[-2], out[-1]
    assert ours.split() == ["L" * 48, "minigpt2", "int8", "12345.68", "123.5", "10.0", "7.2", "0.72", "-"]
    assert peer.split()[1] == "P" * 20 and peer.split()[-2:] == ["0.72", "0.84"]
    # fixed widths: 48 + 20 + 10 + 9 + 6 + 8 + 9 + 8 + 9 characters and the 8 spaces between them
    assert len(ours) == len(peer) == len(out[-4]) == 135
    assert ours.index("minigpt2") == 49 and ours.index("int8") == 70
    bound.print_bounds([Row("anon", "tokens/s", 7.25, None, 5.0, extra={"peer_bound": b})])
    assert capsys.readouterr().out.splitlines()[-1].split()[:2] == ["anon", "peer"]


def test_read_bandwidth_times_each_read_and_reports_it(monkeypatch):
    clock = iter([10.0, 10.5, 20.0, 20.25])
    monkeypatch.setattr(bound.time, "perf_counter", lambda: next(clock))
    read = bound.ReadBandwidth(mib=2)
    read(), read()
    assert read.seconds == [0.5, 0.25]
    assert read.info() == {"read_bytes_per_s": 2 * 2 ** 20 / 0.25, "median_read_bytes_per_s": 2 * 2 ** 20 / 0.375,
                           "read_seconds": [0.5, 0.25], "array_mib": 2.0, "reads": 2,
                           "threads": torch.get_num_threads()}
    # the documented default: 512 MiB, far beyond any cache
    assert inspect.signature(bound.ReadBandwidth).parameters["mib"].default == 512


def test_cpu_flags_reads_this_machines_cpuinfo_by_default():
    from pathlib import Path

    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo here")
    assert bound.cpu_flags() == bound.cpu_flags("/proc/cpuinfo")
    assert bound.cpu_flags()["vector_extensions"]  # any x86 or Arm CPU of the last decade has one of them


# ---- llama.cpp as the peer (bench/bench_llama.py) ----

def test_llama_lines_on_the_tiny_config():
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install '.[peers]')")
    rows = bench_llama.measure(bench_llama.TINY, threads=1)
    fp16 = "fp16 vs llama.cpp f16" if fp16_available() else "llama.cpp f16 alone"
    assert [r.line for r in rows] == ["greedy b=1, 8 tokens, fp32 vs llama.cpp f32",
                                      "greedy b=1, 8 tokens, int8 vs llama.cpp q8_0",
                                      f"greedy b=1, 8 tokens, {fp16}"]
    for r, (ours, peer, precision, peer_precision) in zip(rows, bench_llama.pairs()):
        seconds = r.extra["seconds"]
        assert r.peer == 8 / statistics.median(t for proc in seconds[peer] for t in proc)  # its own processes
        assert_bound(r.extra["peer_bound"], r.peer, r.extra["bandwidth"])
        assert r.extra["peer_bound"]["precision"] == peer_precision
        # the build that ran, as llama.cpp reports it: "CPU : ... AVX2 = 1 | ..." (a row tells builds apart)
        assert r.extra["llama_cpp"] == {"version": llama_cpp.__version__,
                                        "system_info": llama_cpp.llama_print_system_info().decode().strip()}
        assert r.extra["llama_cpp"]["system_info"].startswith("CPU : ")
        if ours is None:
            assert r.minigpt2 is None and r.ratio is None
            continue
        assert r.minigpt2 == 8 / statistics.median(t for proc in seconds[ours] for t in proc)
        assert r.ratio == r.minigpt2 / r.peer  # measured over measured, ours over llama.cpp
        assert_bound(r.extra["bound"], r.minigpt2, r.extra["bandwidth"])
        a, b = r.extra["tokens"][ours], r.extra["tokens"][peer]
        assert len(a) == len(b) == 8
        diff = r.extra["first_differing_position"]
        assert r.extra["greedy_tokens_equal"] == (a == b) == (diff is None)
        if diff is not None:
            assert a[:diff] == b[:diff] and a[diff] != b[diff]


def test_llama_f16_line_stands_alone_without_fbgemm_fp16(monkeypatch):
    from minigpt2.fast import prepack

    assert [p[0] for p in bench_llama.PAIRS] == ["minigpt2-fp32", "minigpt2-int8", "minigpt2-fp16"]
    monkeypatch.setattr(prepack, "fp16_available", lambda: False)
    assert [p[0] for p in bench_llama.pairs()] == ["minigpt2-fp32", "minigpt2-int8", None]
    assert bench_llama.pairs()[2][1:] == ("llama.cpp-f16", None, "gguf-f16")


def test_first_difference():
    assert bench_llama.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert bench_llama.first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert bench_llama.first_difference([1, 2], [1, 2, 3]) == 2


def test_llama_module_is_skipped_with_a_note_without_llama_cpp(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_llama, "llama_unavailable", lambda: "llama-cpp-python is not importable (test)")
    out = tmp_path / "results.json"
    assert bench_main.main(["--only", "llama", "--out", str(out), "--threads", "1", "--device", "cpu"]) == 0
    meta = json.loads(out.read_text())["meta"]
    assert meta["skipped"] == {"llama": "llama-cpp-python is not importable (test)"} and meta["notes"] == {}
    assert "note: llama: skipped: llama-cpp-python is not importable (test)" in capsys.readouterr().out


# ---- the decode profile (bench/profile_decode.py) ----

def test_profile_summary_by_hand():
    """Two tokens: 6 ms in the prepacked products (26 calls), 3 ms of adds, 1 ms of argmax; 6 MB of weights."""
    ops = [("aten::argmax", 1000.0, 2), ("mkldnn::_linear_pointwise", 6000.0, 26), ("aten::add", 3000.0, 10)]
    s = profile_decode.summarize(ops, tokens=2, wall_s=0.012, weights=6e6, top=2)
    assert (s["wall_ms"], s["ops_ms"], s["matmul_ms"], s["other_ms"]) == (6.0, 5.0, 3.0, 2.0)
    assert s["matmul_share"] == 0.6 and s["matmul_bytes_per_s"] == 6e6 / 0.003
    assert s["top"] == [{"op": "mkldnn::_linear_pointwise", "calls_per_token": 13, "ms": 3.0, "share": 0.6},
                        {"op": "aten::add", "calls_per_token": 5, "ms": 1.5, "share": 0.3}]


def test_profile_command_on_the_tiny_config(tmp_path, capsys):
    out = tmp_path / "profile.json"
    profile_decode.main(["--config", "tiny", "--threads", "1", "--stream-mib", "4", "--json", str(out)])
    got = json.loads(out.read_text())
    printed = capsys.readouterr().out
    # fp32: the layers in slabs (aten::baddbmm, 8 a token) and the head (aten::bmm, 1)
    decoders = [("fp32 (slabs)", 2 * 4 + 1), ("int8 (fbgemm)", 2 * 4 + 1)]
    if fp16_available():
        decoders.append(("fp16 weights (fbgemm)", 2 * 4 + 1))
    for name, calls in decoders:
        s = got[name]  # per token: qkv stacked, out, up, down in 2 layers, and the head
        products = [op for op in s["top"] if op["op"] in profile_decode.MATMUL_OPS]
        assert sum(op["calls_per_token"] for op in products) == calls
        assert 0 < s["matmul_share"] <= 1 and name in printed
    assert got["fp32 (slabs)"]["weights_bytes"] == 6535040
    assert "vector_extensions" in got and got["bandwidth"]["array_mib"] == 4


def test_decode_module_runs_only_the_generation_lines():
    set_threads(1)
    rows = bench_core.measure_decoding(bench_core.TINY, "cpu")
    fp16 = ["  same, fp16 weights (fbgemm), against transformers fp32"] if bench_core.fp16_weights("cpu") else []
    assert [r.line for r in rows] == ["greedy decode, batch 1, 8 new tokens", *fp16,
                                      "sonnet generation, 3 prompts, sampling"]
    assert rows[0].extra["bound"]["precision"] == "fp32" and rows[0].extra["precision"] == "fp32"
    # each copy laid out for the rows it decodes, as the application makes the sonnet evaluation's
    assert rows[0].extra["packed_for_batch"] == 1 and rows[-1].extra["packed_for_batch"] == 3

"""bench/profile_decode.py against figures worked by hand: the per-token milliseconds, the matmul share and the
bytes/s over the products of a made-up profile, the ranking of its top ops, the printed summary line by line, and
what `profile` and `main` pass on. Written to kill the survivors of
`python tools/mutate.py --auto bench/profile_decode.py`."""

from __future__ import annotations

import json

import pytest
import torch

from bench import bound, profile_decode
from minigpt2.config import GPT2Config
from minigpt2.model import GPT2

# Four tokens profiled in 0.02 s of wall time. Op times in microseconds, over the four tokens:
#   products (MATMUL_OPS): mkldnn::_linear_pointwise 8000 (36 calls), aten::addmm 1200 (16), aten::mm 800 (4)
#       -> 10000 us = 10 ms / 4 tokens = 2.5 ms a token
#   the rest: add 2400 (8), layer_norm 1600 (20), copy_ 800 (12), softmax 600 (8), argmax 400 (4), empty 200 (40),
#       view 0 (80) -> 6000 us = 1.5 ms a token
#   all ops 16000 us = 4.0 ms a token; wall 20 ms / 4 = 5.0 ms a token; share of the products 10000 / 16000 = 0.625
#   weights 5 MB a token read in 2.5 ms a token -> 5e6 / 0.0025 = 2e9 bytes/s
# Top 8 by time (mm and copy_ tie at 800: the profile's order is kept), per token: ms = us / 1000 / 4,
# calls = calls / 4, share = us / 16000.
OPS = [("aten::add", 2400, 8), ("mkldnn::_linear_pointwise", 8000, 36), ("aten::layer_norm", 1600, 20),
       ("aten::argmax", 400, 4), ("aten::addmm", 1200, 16), ("aten::mm", 800, 4), ("aten::copy_", 800, 12),
       ("aten::softmax", 600, 8), ("aten::empty", 200, 40), ("aten::view", 0, 80)]
TOP = [("mkldnn::_linear_pointwise", 9, 2.0, 0.5), ("aten::add", 2, 0.6, 0.15), ("aten::layer_norm", 5, 0.4, 0.1),
       ("aten::addmm", 4, 0.3, 0.075), ("aten::mm", 1, 0.2, 0.05), ("aten::copy_", 3, 0.2, 0.05),
       ("aten::softmax", 2, 0.15, 0.0375), ("aten::argmax", 1, 0.1, 0.025)]


def test_summary_of_ten_ops_by_hand():
    s = profile_decode.summarize(OPS, tokens=4, wall_s=0.02, weights=5e6)  # default top: 8
    approx = pytest.approx
    assert s == {"tokens": 4, "wall_ms": approx(5.0, rel=1e-12), "ops_ms": 4.0, "matmul_ms": 2.5, "other_ms": 1.5,
                 "matmul_share": 0.625, "weights_bytes": 5e6, "matmul_bytes_per_s": approx(2e9, rel=1e-12),
                 "top": [{"op": op, "calls_per_token": calls, "ms": approx(ms, rel=1e-12),
                          "share": approx(share, rel=1e-12)} for op, calls, ms, share in TOP]}
    assert list(s) == ["tokens", "wall_ms", "ops_ms", "matmul_ms", "other_ms", "matmul_share", "weights_bytes",
                       "matmul_bytes_per_s", "top"]
    assert [t["op"] for t in profile_decode.summarize(OPS, 4, 0.02, 5e6, top=3)["top"]] == [
        "mkldnn::_linear_pointwise", "aten::add", "aten::layer_norm"]
    assert len(profile_decode.summarize(OPS, 4, 0.02, 5e6, top=20)["top"]) == 10


def test_summary_without_products_has_no_bytes_per_second():
    s = profile_decode.summarize([("aten::add", 3000, 3), ("aten::softmax", 1000, 2)], tokens=1, wall_s=0.004,
                                 weights=1e6)
    assert s["matmul_ms"] == 0 and s["matmul_share"] == 0 and s["other_ms"] == 4.0
    assert s["matmul_bytes_per_s"] is None


MATMUL = {"aten::baddbmm", "aten::bmm", "mkldnn::_linear_pointwise", "mkldnn::_linear_pointwise.binary",
          "quantized::linear_dynamic", "quantized::linear_dynamic_fp16", "aten::linear", "aten::addmm", "aten::mm",
          "aten::matmul", "aten::_weight_int8pack_mm"}


@pytest.mark.parametrize("name", sorted(MATMUL) + ["aten::add", "aten::scaled_dot_product_attention",
                                                   "aten::_scaled_dot_product_flash_attention_for_cpu"])
def test_which_ops_are_weight_products(name):
    assert profile_decode.MATMUL_OPS == MATMUL
    s = profile_decode.summarize([(name, 1000, 1), ("aten::add", 1000, 1)], 1, 0.002, 1e6)
    assert s["matmul_share"] == (0.5 if name in MATMUL else 0.0)


SUMMARY = """\
fp32 (slabs): 4 token(s); wall 5.0 ms/token (profiler on), in torch ops 4.0 ms
  matmul/linear 2.5 ms (62.5% of op time), everything else 1.5 ms
  weights 5.0 MB/token over the time in the products: 2.0 GB/s
    mkldnn::_linear_pointwise                             9.0 calls    2.000 ms  50.0%
    aten::add                                             2.0 calls    0.600 ms  15.0%
    aten::layer_norm                                      5.0 calls    0.400 ms  10.0%
    aten::addmm                                           4.0 calls    0.300 ms   7.5%
    aten::mm                                              1.0 calls    0.200 ms   5.0%
    aten::copy_                                           3.0 calls    0.200 ms   5.0%
    aten::softmax                                         2.0 calls    0.150 ms   3.8%
    aten::argmax                                          1.0 calls    0.100 ms   2.5%
"""


def test_print_summary_line_by_line(capsys):
    profile_decode.print_summary("fp32 (slabs)", profile_decode.summarize(OPS, 4, 0.02, 5e6))
    assert capsys.readouterr().out.splitlines() == SUMMARY.splitlines()


def test_print_summary_without_products_leaves_out_the_bytes_line(capsys):
    profile_decode.print_summary("x", profile_decode.summarize([("aten::add", 3000, 3)], 1, 0.004, 1e6))
    assert capsys.readouterr().out.splitlines() == [
        "x: 1 token(s); wall 4.0 ms/token (profiler on), in torch ops 3.0 ms",
        "  matmul/linear 0.0 ms (0.0% of op time), everything else 3.0 ms",
        "    aten::add                                             3.0 calls    3.000 ms 100.0%"]


def test_profile_times_only_the_requested_steps_after_the_prompt_and_warmup(monkeypatch):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=64, n_embd=16, n_layer=2, n_head=2, dropout=0.0)
    model = GPT2(config).eval()
    shapes = []
    model.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    got = {}

    def summarize(ops, tokens, wall, weights, top):
        got.update(ops={name: calls for name, _, calls in ops}, tokens=tokens, wall=wall, weights=weights, top=top)
        return "summary"
    monkeypatch.setattr(profile_decode, "summarize", summarize)
    assert profile_decode.profile(model, "int8", tokens=2) == "summary"
    # the prompt of 16 once, then 3 untimed steps and the 2 profiled ones, one token each
    assert shapes == [(1, 16)] + [(1, 1)] * 5
    assert got["tokens"] == 2 and got["top"] == 8 and got["wall"] > 0
    assert got["weights"] == bound.weight_bytes(config, "int8")
    # profiled: 2 steps of 2 layers x 6 products (the plain model's query, key, value, out, up, down) and the
    # head = 26 linears; 2 argmaxes
    assert got["ops"]["aten::linear"] == 26 and got["ops"]["aten::argmax"] == 2
    shapes.clear()
    profile_decode.profile(model, "fp32", tokens=1, prompt=5, warmup=0, top=3)
    assert shapes == [(1, 5), (1, 1)] and got["top"] == 3 and got["ops"]["aten::argmax"] == 1


def test_main_passes_its_options_on_and_writes_the_summaries(monkeypatch, tmp_path, capsys):
    seen = []

    class Read:
        def __init__(self, mib):
            seen.append(("read array", mib))
            self.bytes_per_s = 12.34e9

        def __call__(self):
            seen.append("read")

        def info(self):
            return {"read_bytes_per_s": self.bytes_per_s}
    monkeypatch.setattr(profile_decode, "ReadBandwidth", Read)
    monkeypatch.setattr(profile_decode, "set_threads", lambda n: seen.append(("threads", n)) or (n or 16))
    monkeypatch.setattr(profile_decode, "cpu_flags", lambda: {"torch_cpu_capability": "AVX2"})
    monkeypatch.setattr(profile_decode, "decoders", lambda config: seen.append(("config", config)) or
                        {"fp32 (slabs)": ("model a", "fp32"), "int8 (fbgemm)": ("model b", "int8")})

    def profile(model, precision, tokens, top):
        seen.append((model, precision, tokens, top))
        return profile_decode.summarize(OPS, 4, 0.02, 5e6)
    monkeypatch.setattr(profile_decode, "profile", profile)
    profile_decode.main([])
    assert seen == [("threads", None), ("read array", 512)] + ["read"] * 5 + [
        ("config", "gpt2"), ("model a", "fp32", 1, 8), ("model b", "int8", 1, 8)]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"gpt2, 16 thread(s), torch {torch.__version__}, AVX2; read bandwidth 12.3 GB/s "
                      "(best of 5 reads of 512 MiB)")
    assert out[1:] == SUMMARY.splitlines() + SUMMARY.replace("fp32 (slabs)", "int8 (fbgemm)").splitlines()
    seen.clear()
    path = tmp_path / "p.json"
    profile_decode.main(["--config", "tiny", "--threads", "2", "--tokens", "3", "--top", "4", "--stream-mib", "8",
                         "--json", str(path)])
    assert seen == [("threads", 2), ("read array", 8)] + ["read"] * 5 + [
        ("config", "tiny"), ("model a", "fp32", 3, 4), ("model b", "int8", 3, 4)]
    summary = json.loads(json.dumps(profile_decode.summarize(OPS, 4, 0.02, 5e6)))
    assert json.loads(path.read_text()) == {"config": "tiny", "threads": 2, "torch_cpu_capability": "AVX2",
                                            "bandwidth": {"read_bytes_per_s": 12.34e9},
                                            "fp32 (slabs)": summary, "int8 (fbgemm)": summary}


def test_decoders_are_one_seeded_model_in_each_precision(monkeypatch):
    from minigpt2.fast import prepack

    monkeypatch.setattr(profile_decode, "fp16_available", lambda: False)
    d = profile_decode.decoders("tiny")
    assert {name: p for name, (_, p) in d.items()} == {"fp32 (slabs)": "fp32", "int8 (fbgemm)": "int8"}
    torch.manual_seed(0)  # bench_quant's random weights: seed 0, no dropout
    plain = GPT2(GPT2Config.from_name("tiny", dropout=0.0))
    kinds = {name: {type(m).__name__ for m in model.modules()} for name, (model, _) in d.items()}
    # (the fp32 copy's linear class depends on the thread count: prepacked, or transposed for MKL at 1 thread)
    assert "Int8Linear" in kinds["int8 (fbgemm)"] and not {"Int8Linear", "Fp16Linear"} & kinds["fp32 (slabs)"]
    for model, _ in d.values():
        assert model.config.dropout == 0.0 and not model.training
        # the int8 copy's embeddings went through int8 quantization: within its rounding of the same weights
        assert (model.wte.weight - plain.wte.weight).abs().max() < 1e-3
        assert (model.wpe.weight - plain.wpe.weight).abs().max() < 1e-3
    assert torch.equal(d["fp32 (slabs)"][0].wte.weight, plain.wte.weight)
    if prepack.fp16_available():
        monkeypatch.setattr(profile_decode, "fp16_available", lambda: True)
        d = profile_decode.decoders("tiny")
        assert list(d) == ["fp32 (slabs)", "int8 (fbgemm)", "fp16 weights (fbgemm)"]
        model, precision = d["fp16 weights (fbgemm)"]
        assert precision == "fp16" and "Fp16Linear" in {type(m).__name__ for m in model.modules()}


def test_print_summary_rounds_megabytes_and_gigabytes_per_second(capsys):
    # 1250001 bytes = 1.250001 MB -> "1.3" (1.2499999 would print "1.2"); 1250000001 B/s = 1.250000001 GB/s -> "1.3"
    s = {"tokens": 2, "wall_ms": 3.0, "ops_ms": 2.5, "matmul_ms": 2.0, "other_ms": 0.5, "matmul_share": 0.8,
         "weights_bytes": 1250001, "matmul_bytes_per_s": 1250000001.0, "top": []}
    profile_decode.print_summary("int8 (fbgemm)", s)
    assert capsys.readouterr().out.splitlines() == [
        "int8 (fbgemm): 2 token(s); wall 3.0 ms/token (profiler on), in torch ops 2.5 ms",
        "  matmul/linear 2.0 ms (80.0% of op time), everything else 0.5 ms",
        "  weights 1.3 MB/token over the time in the products: 1.3 GB/s"]


def test_help_names_every_option_and_its_default(capsys):
    with pytest.raises(SystemExit):
        profile_decode.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ["profile batch-1 decoding steps of minigpt2's fp32 and int8 decoders",
                   "--config CONFIG model preset (default gpt2, 124M; tiny for a quick check)",
                   "--threads THREADS torch threads (default: all cores)",
                   "--tokens TOKENS decoding steps profiled (default 1)", "--top TOP ops listed per decoder",
                   "--stream-mib STREAM_MIB MiB read to time the read bandwidth",
                   "--json JSON also write the summaries as JSON here"]:
        assert f" {phrase} " in f" {text} "


def test_main_types_its_numbers(monkeypatch):
    seen = []
    monkeypatch.setattr(profile_decode, "ReadBandwidth", lambda mib: seen.append(mib) or Bandwidth())
    monkeypatch.setattr(profile_decode, "set_threads", lambda n: seen.append(n) or 1)
    monkeypatch.setattr(profile_decode, "cpu_flags", lambda: {"torch_cpu_capability": "X"})
    monkeypatch.setattr(profile_decode, "decoders", lambda config: {"fp32": ("m", "fp32")})
    monkeypatch.setattr(profile_decode, "profile", lambda m, p, tokens, top: seen.append((tokens, top)) or
                        profile_decode.summarize(OPS, 4, 0.02, 5e6, top))
    monkeypatch.setattr(profile_decode, "print_summary", lambda name, s: None)
    profile_decode.main(["--threads", "3", "--tokens", "2", "--top", "5", "--stream-mib", "16"])
    assert seen == [3, 16, (2, 5)] and all(type(x) is int for x in (seen[0], seen[1], *seen[2]))


class Bandwidth:
    bytes_per_s = 1250000001.0  # 1.250000001 GB/s: printed 1.3

    def __call__(self):
        pass

    def info(self):
        return {}


def test_main_prints_the_read_bandwidth_in_gb_per_second(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(profile_decode, "ReadBandwidth", lambda mib: Bandwidth())
    monkeypatch.setattr(profile_decode, "set_threads", lambda n: 1)
    monkeypatch.setattr(profile_decode, "cpu_flags", lambda: {"torch_cpu_capability": "AVX512"})
    monkeypatch.setattr(profile_decode, "decoders", lambda config: {})
    path = tmp_path / "p.json"
    profile_decode.main(["--stream-mib", "64", "--json", str(path)])
    assert capsys.readouterr().out == (f"gpt2, 1 thread(s), torch {torch.__version__}, AVX512; read bandwidth "
                                       "1.3 GB/s (best of 5 reads of 64 MiB)\n")
    assert path.read_text() == ('{\n  "config": "gpt2",\n  "threads": 1,\n  "torch_cpu_capability": "AVX512",\n'
                                '  "bandwidth": {}\n}')  # indented by 2

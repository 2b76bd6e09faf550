"""bench/bench_quant.py on fake timings and fake decoders: the int8 decode line's tokens/s, its peer (minigpt2's
fastest fp32 decoding, the prepacked copy where there is one), the ratio, the share of greedy tokens equal to
fp32's, the bound extras; the kernel lines' microseconds; the checkpoint-size lines; what `run` and `main` pass on
and print. Expected figures are worked by hand in the comments. Written to kill the survivors of
`python tools/mutate.py --auto bench/bench_quant.py`."""

from __future__ import annotations

import sys
import types
import warnings

import pytest
import torch

from bench import bench_quant, bound
from bench.common import Row, print_table
from minigpt2 import fast as speed
from minigpt2.config import GPT2Config
from minigpt2.generation import EOT_ID
from minigpt2.model import GPT2

TINY = GPT2Config.from_name("tiny")  # L 2, C 32, V 50257

# Bytes a token reads on the tiny config (bench/bound.py's count), prompt 5 and 8 new tokens: the KV cache at the
# decode's mean position 5 + (8 - 1) / 2 = 8.5 holds 2 x 2 layers x 8.5 x 32 x 4 bytes = 4352 bytes.
#   int8 weights 2246636 (tests/bench/test_bench.py) -> 2250988 a token
#   fp32 weights: blocks 2 x (12 x 32^2 x 4 + 13 x 32 x 4) = 2 x 50816 = 101632, final LayerNorm 2 x 32 x 4 = 256,
#   head 50257 x 32 x 4 = 6432896, one row of each embedding 32 x 8 = 256 -> 6535040, + 4352 = 6539392 a token
INT8_BYTES, FP32_BYTES = 2250988, 6539392


class FakeRead:
    """A ReadBandwidth that read 10 GB/s at best, 8 GB/s at the median; records the size asked for and its calls."""
    made: list = []

    def __init__(self, mib):
        self.made.append(mib)
        self.calls = 0
        self.bytes_per_s = 1e10
        self.median_bytes_per_s = 8e9

    def __call__(self):
        self.calls += 1

    def info(self):
        return {"read_bytes_per_s": 1e10, "array_mib": 6.0, "reads": 4, "threads": 1}


def fp32_tokens(n):
    return list(range(100, 100 + n))


def int8_tokens(n):
    """fp32's tokens except every fourth (positions 0, 4, 8, ...): 3 of every 4 equal -> 0.75 of them."""
    return [-1 if i % 4 == 0 else t for i, t in enumerate(fp32_tokens(n))]


def fake_decoding(monkeypatch, prepacks: bool, times: dict):
    """Fakes for the decoders and the timing: `for_inference` of the fp32 model gives a copy with other layers
    (prepacked) or, with `prepacks` False, the model itself (nothing to prepack here); the int8 decoder is a
    made-up object; `generate` answers each with its own tokens; `compare_time` runs each function once and
    returns `times`."""
    seen = {"for_inference": [], "generate": [], "compare": []}
    int8_model = types.SimpleNamespace(name="int8 decoder")
    int8_fast = types.SimpleNamespace(name="int8 fast")

    def ptq(model, config):
        seen["ptq"] = (model, config)
        return "fake-quant model"

    def to_int8_decoder(m):
        assert m == "fake-quant model"
        return int8_model

    def for_inference(m, device, autocast_dtype=None, batch=1):  # the real one's defaults
        seen["for_inference"].append((m, device, autocast_dtype, batch))
        if m is int8_model:
            return int8_fast
        if not prepacks:
            return m
        return types.SimpleNamespace(name="fp32 prepacked",
                                     h=[types.SimpleNamespace(mlp=types.SimpleNamespace(c_fc=torch.nn.Linear(1, 1)))])

    def generate(m, prompts, new, temperature=0.0, top_k=None, top_p=None, eos_id=EOT_ID, stop=None, seed=None,
                 on_token=None):  # the real one's defaults: what a call leaves out counts as these
        seen["generate"].append((m, prompts, new, temperature, top_k, top_p, eos_id, stop))
        if m is int8_fast:
            return [int8_tokens(new)]
        if isinstance(m, GPT2):
            return [fp32_tokens(new)]
        return [[7] * new]  # the prepacked copy: none equal to either (its tokens are not compared)

    def compare_time(fns, warmup, iters):
        seen["compare"].append((list(fns), warmup, iters))
        for fn in fns.values():
            fn()
        return dict(times)

    monkeypatch.setattr(bench_quant, "ptq", ptq)
    monkeypatch.setattr(bench_quant, "int8_decoder_config", lambda: "int8 decoder config")
    monkeypatch.setattr(bench_quant, "to_int8_decoder", to_int8_decoder)
    monkeypatch.setattr(speed, "for_inference", for_inference)
    monkeypatch.setattr(bench_quant, "generate", generate)
    monkeypatch.setattr(bench_quant, "compare_time", compare_time)
    FakeRead.made = []
    monkeypatch.setattr(bench_quant, "ReadBandwidth", FakeRead)
    return seen, int8_model, int8_fast


# Median times: fp32 as loaded 0.5 s, prepacked 0.25 s, int8 0.125 s for 8 tokens
#   -> 16, 32 and 64 tokens/s; int8 over prepacked 2.0, over fp32 as loaded 4.0
TIMES = {"fp32": 0.5, "fp32 prepacked": 0.25, "int8": 0.125, "read": 0.01}


def test_decode_rows_of_fake_decoders_by_hand(monkeypatch):
    seen, int8_model, int8_fast = fake_decoding(monkeypatch, True, TIMES)
    rows = bench_quant.decode_rows(True, config="tiny", prompt_len=5, new=8, stream_mib=6)
    extra = {"greedy_tokens_equal_to_fp32": 0.75,
             "bound": bound.bound(TINY, "int8", 5, 8, 64.0, 1e10, 8e9),
             "peer_bound": bound.bound(TINY, "fp32", 5, 8, 32.0, 1e10, 8e9),
             "bandwidth": FakeRead(6).info()}
    assert [r.to_dict() for r in rows] == [
        {"line": "greedy decode tiny b=1, 8 tokens: int8", "unit": "tokens/s", "minigpt2": 64.0,
         "peer_name": "minigpt2 fp32 prepacked", "peer": 32.0, "higher_is_better": True, "goal": ">= 2.5x",
         "extra": extra, "ratio": 2.0},
        {"line": "  same, against fp32 as loaded (not prepacked)", "unit": "tokens/s", "minigpt2": 64.0,
         "peer_name": "minigpt2 fp32", "peer": 16.0, "higher_is_better": True, "goal": "(context)", "extra": {},
         "ratio": 4.0}]
    # the bound's figures by hand: 1e10 bytes/s over the bytes of a token, and the fraction reached
    b, pb = rows[0].extra["bound"], rows[0].extra["peer_bound"]
    assert (b["precision"], b["bytes_per_token"], b["tokens_per_s"]) == ("int8", INT8_BYTES, 64.0)
    assert b["bound_tokens_per_s"] == pytest.approx(1e10 / INT8_BYTES, rel=1e-12)
    assert b["fraction"] == pytest.approx(64.0 * INT8_BYTES / 1e10, rel=1e-12)
    assert (pb["precision"], pb["bytes_per_token"], pb["tokens_per_s"]) == ("fp32", FP32_BYTES, 32.0)
    assert pb["fraction"] == pytest.approx(32.0 * FP32_BYTES / 1e10, rel=1e-12)
    assert b["fraction_of_median_read"] == pytest.approx(64.0 * INT8_BYTES / 8e9, rel=1e-12)
    assert pb["fraction_of_median_read"] == pytest.approx(32.0 * FP32_BYTES / 8e9, rel=1e-12)
    # the timing: the four in turns, one warm-up, 3 timed rounds with --quick; a 6 MiB read
    assert seen["compare"] == [(["fp32", "fp32 prepacked", "int8", "read"], 1, 3)]
    assert FakeRead.made[0] == 6
    # the model: GPT-2 `tiny` at seed 0 without dropout, in eval mode; the prompt drawn after it
    torch.manual_seed(0)
    expected = GPT2(GPT2Config.from_name("tiny", dropout=0.0))
    prompt = torch.randint(0, 50257, (5,)).tolist()
    model, config = seen["ptq"]
    assert config == "int8 decoder config"
    assert model.config == GPT2Config.from_name("tiny", dropout=0.0) and not model.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values()))
    # both decoders are `for_inference`'s CPU copies, in fp32 (no dtype asked)
    assert seen["for_inference"] == [(int8_model, torch.device("cpu"), None, 1), (model, torch.device("cpu"), None, 1)]
    # each decoder greedy on the one prompt, 8 new tokens, no end-of-text stop
    assert [getattr(g[0], "name", g[0]) for g in seen["generate"]] == [model, "fp32 prepacked", "int8 fast"]
    assert all(g[1:] == ([prompt], 8, 0.0, None, None, None, None) for g in seen["generate"])


@pytest.mark.parametrize("quick, new, iters", [(True, 32, 3), (False, 128, 5)])
def test_decode_rows_of_gpt2_without_a_prepacked_copy(monkeypatch, quick, new, iters):
    """No prepacked copy (`for_inference` gives the model back): the peer is fp32 as loaded, on both lines. The
    default token counts: 32 with --quick, else 128; the 124M model is named so (the tiny one stands in)."""
    asked = []

    class Config:
        @staticmethod
        def from_name(name, **kw):
            asked.append((name, kw))
            return GPT2Config.from_name("tiny", **kw)
    monkeypatch.setattr(bench_quant, "GPT2Config", Config)
    seen, _, _ = fake_decoding(monkeypatch, False, TIMES)
    rows = bench_quant.decode_rows(quick)  # the default prompt: 16 tokens
    assert asked == [("gpt2", {"dropout": 0.0})]
    # new / 0.125 s and new / 0.5 s; 3 of every 4 tokens equal
    fast, slow = new / 0.125, new / 0.5
    assert [r.to_dict() for r in rows] == [
        {"line": f"greedy decode 124M b=1, {new} tokens: int8", "unit": "tokens/s", "minigpt2": fast,
         "peer_name": "minigpt2 fp32", "peer": slow, "higher_is_better": True, "goal": ">= 2.5x",
         "extra": {"greedy_tokens_equal_to_fp32": 0.75, "bound": bound.bound(TINY, "int8", 16, new, fast, 1e10, 8e9),
                   "peer_bound": bound.bound(TINY, "fp32", 16, new, slow, 1e10, 8e9), "bandwidth": FakeRead(6).info()},
         "ratio": 4.0},
        {"line": "  same, against fp32 as loaded (not prepacked)", "unit": "tokens/s", "minigpt2": fast,
         "peer_name": "minigpt2 fp32", "peer": slow, "higher_is_better": True, "goal": "(context)", "extra": {},
         "ratio": 4.0}]
    assert seen["compare"] == [(["fp32", "fp32 prepacked", "int8", "read"], 1, iters)]
    assert FakeRead.made[0] == 512  # the default read: 512 MiB
    assert all(len(g[1][0]) == 16 and g[2] == new for g in seen["generate"])


def test_greedy_share_counts_equal_positions_over_the_new_tokens(monkeypatch):
    """5 of 8 int8 tokens equal to fp32's (positions 0, 1, 2, 4, 6) -> 0.625; the prepacked copy's tokens are
    not the ones compared."""
    seen, _, int8_fast = fake_decoding(monkeypatch, True, TIMES)
    fp32 = [1, 2, 3, 4, 5, 6, 7, 8]
    int8 = [1, 2, 3, 0, 5, 0, 7, 0]

    def generate(m, prompts, new, **kw):
        return [int8 if m is int8_fast else fp32 if isinstance(m, GPT2) else int8]
    monkeypatch.setattr(bench_quant, "generate", generate)
    rows = bench_quant.decode_rows(True, config="tiny", prompt_len=2, new=8, stream_mib=6)
    assert rows[0].extra["greedy_tokens_equal_to_fp32"] == 0.625


# One token through each layer, ten calls a timing. The median of ten calls, per layer:
#   768x768:    fp32 0.002 s, fbgemm 0.001 s, bf16 act 0.004 s, fp32 act 0.003 s -> 200, 100, 400, 300 us a call
#   LM head:    ten times those -> 2000, 1000, 4000, 3000 us a call
KERNEL_TIMES = {"fp32": 0.002, "fbgemm dynamic int8": 0.001, "weight-only int8 (bf16 act)": 0.004,
                "weight-only int8 (fp32 act)": 0.003}


@pytest.mark.parametrize("quick, iters", [(True, 3), (False, 9)])
def test_kernel_rows_of_fake_timings_by_hand(monkeypatch, quick, iters):
    calls = []
    compares = []
    Q = types.SimpleNamespace(name="int8 weight")
    SCALE = torch.tensor([[0.5], [1.5], [2.5]])

    def quantize(w, fmt):
        calls.append(("quantize", w, fmt))
        return Q, SCALE

    class Int8Linear:
        def __init__(self, *args):
            calls.append(("Int8Linear", *args))

        def __call__(self, x):
            calls.append(("fbgemm", x))

    def linear(x, w):
        calls.append(("linear", x, w))

    def int8pack_mm(x, q, s):
        calls.append(("int8pack_mm", x, q, s))

    def compare_time(fns, warmup, iters):
        compares.append((list(fns), warmup, iters))
        for fn in fns.values():
            fn()
        return {k: v * 10 ** (len(compares) - 1) for k, v in KERNEL_TIMES.items()}

    monkeypatch.setattr(bench_quant, "quantize", quantize)
    monkeypatch.setattr(bench_quant, "Int8Linear", Int8Linear)
    monkeypatch.setattr(bench_quant, "F", types.SimpleNamespace(linear=linear))
    monkeypatch.setattr(torch, "_weight_int8pack_mm", int8pack_mm)
    monkeypatch.setattr(bench_quant, "compare_time", compare_time)
    rows = bench_quant.kernel_rows(quick)
    approx = pytest.approx
    expected = []
    for name, scale in (("768x768 GEMV", 1), ("LM head 50257x768", 10)):
        expected += [
            {"line": f"{name}: fbgemm dynamic int8", "unit": "us", "minigpt2": approx(100 * scale, rel=1e-12),
             "peer_name": "fp32 F.linear", "peer": approx(200 * scale, rel=1e-12), "higher_is_better": False,
             "goal": "fastest int8 path", "extra": {}, "ratio": approx(2.0, rel=1e-12)},
            {"line": f"{name}: weight-only int8 (bf16 act)", "unit": "us", "minigpt2": approx(400 * scale, rel=1e-12),
             "peer_name": "fp32 F.linear", "peer": approx(200 * scale, rel=1e-12), "higher_is_better": False,
             "goal": "", "extra": {}, "ratio": approx(0.5, rel=1e-12)},
            {"line": f"{name}: weight-only int8 (fp32 act)", "unit": "us", "minigpt2": approx(300 * scale, rel=1e-12),
             "peer_name": "fp32 F.linear", "peer": approx(200 * scale, rel=1e-12), "higher_is_better": False,
             "goal": "", "extra": {}, "ratio": approx(2 / 3, rel=1e-12)}]
    assert [r.to_dict() for r in rows] == expected
    names = ["fp32", "fbgemm dynamic int8", "weight-only int8 (bf16 act)", "weight-only int8 (fp32 act)"]
    assert compares == [(names, 1, iters)] * 2
    # per layer: its weight quantized to int8 and packed once, then each path called ten times in turn
    at = 0
    for n, k in ((768, 768), (50257, 768)):
        torch.manual_seed(0)
        w = torch.randn(n, k) * 0.02
        x = torch.randn(1, k)
        q_call, pack, *timed = calls[at:at + 2 + 40]
        at += 42
        assert q_call[0] == "quantize" and torch.equal(q_call[1], w) and q_call[2] == "int8"
        assert pack == ("Int8Linear", Q, SCALE, None)
        assert [c[0] for c in timed] == ["linear"] * 10 + ["fbgemm"] * 10 + ["int8pack_mm"] * 20
        for c in timed[:10]:
            assert torch.equal(c[1], x) and c[2] is q_call[1]
        for c in timed[10:20]:
            assert torch.equal(c[1], x)
        for c in timed[20:30]:  # bf16 activations and scales
            assert c[1].dtype == torch.bfloat16 and torch.equal(c[1], x.bfloat16()) and c[2] is Q
            assert c[3].dtype == torch.bfloat16 and c[3].tolist() == [0.5, 1.5, 2.5]
        for c in timed[30:]:  # fp32 activations and scales
            assert c[1].dtype == torch.float32 and torch.equal(c[1], x) and c[2] is Q
            assert c[3].dtype == torch.float32 and c[3].tolist() == [0.5, 1.5, 2.5]
    assert at == len(calls)


def test_size_rows_are_megabytes_against_fp32(monkeypatch):
    asked = []
    R = types.SimpleNamespace
    table = [R(precision="fp64", file_bytes=8_000_000, quantized="none", parts={"blocks": 7_000_000}),
             R(precision="fp32", file_bytes=4_000_000, quantized="none", parts={"blocks": 3_500_000}),
             R(precision="int8", file_bytes=1_250_000, quantized="matrices", parts={"blocks": 900_000})]
    monkeypatch.setattr(bench_quant, "reports", lambda config: asked.append(config) or table)
    rows = bench_quant.size_rows()
    assert asked == [GPT2Config.from_name("gpt2")]
    # bytes / 1e6; the peer is always fp32's 4.0 MB; lower is better: fp32 / ours
    assert [r.to_dict() for r in rows] == [
        {"line": "packed checkpoint 124M: fp64", "unit": "MB", "minigpt2": 8.0, "peer_name": "fp32", "peer": 4.0,
         "higher_is_better": False, "goal": "", "extra": {"quantised": "none", "parts_bytes": {"blocks": 7_000_000}},
         "ratio": 0.5},
        {"line": "packed checkpoint 124M: fp32", "unit": "MB", "minigpt2": 4.0, "peer_name": "fp32", "peer": 4.0,
         "higher_is_better": False, "goal": "", "extra": {"quantised": "none", "parts_bytes": {"blocks": 3_500_000}},
         "ratio": 1.0},
        {"line": "packed checkpoint 124M: int8", "unit": "MB", "minigpt2": 1.25, "peer_name": "fp32", "peer": 4.0,
         "higher_is_better": False, "goal": "",
         "extra": {"quantised": "matrices", "parts_bytes": {"blocks": 900_000}}, "ratio": 3.2}]


def test_run_sets_threads_and_joins_the_rows_without_warnings(monkeypatch):
    events = []
    monkeypatch.setattr(bench_quant, "set_threads", lambda n: events.append(("threads", n)))

    def decode_rows(quick):
        events.append(("decode", quick))
        warnings.warn("a warning inside the benchmark")
        return ["d"]
    monkeypatch.setattr(bench_quant, "decode_rows", decode_rows)
    monkeypatch.setattr(bench_quant, "kernel_rows", lambda quick: events.append(("kernels", quick)) or ["k1", "k2"])
    monkeypatch.setattr(bench_quant, "size_rows", lambda: events.append(("sizes",)) or ["s"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert bench_quant.run(True, "cuda", 3) == ["d", "k1", "k2", "s"]
        assert bench_quant.run(False, "cpu", 1) == ["d", "k1", "k2", "s"]
    assert caught == []  # silenced inside the run
    assert events == [("threads", 3), ("decode", True), ("kernels", True), ("sizes",),
                      ("threads", 1), ("decode", False), ("kernels", False), ("sizes",)]


def rows_with_share(share):
    b = bound.bound(TINY, "int8", 5, 8, 64.0, 1e10)
    pb = bound.bound(TINY, "fp32", 5, 8, 32.0, 1e10)
    return [Row("greedy decode tiny b=1, 8 tokens: int8", "tokens/s", 64.0, "minigpt2 fp32 prepacked", 32.0, True,
                ">= 2.5x", {"greedy_tokens_equal_to_fp32": share, "bound": b, "peer_bound": pb}),
            Row("packed checkpoint 124M: int8", "MB", 1.25, "fp32", 4.0, False)]


@pytest.mark.parametrize("argv, quick, threads", [([], False, 4), (["--quick"], True, 4),
                                                  (["--threads", "3"], False, 3), (["--threads", "0"], False, 4),
                                                  (["--quick", "--threads", "1"], True, 1)])
def test_main_prints_the_table_the_bounds_and_the_greedy_share(monkeypatch, capsys, argv, quick, threads):
    got = []
    rows = rows_with_share(2 / 3)
    monkeypatch.setattr(bench_quant, "set_threads", lambda n: 4 if n is None else n)  # 4 cores here
    monkeypatch.setattr(bench_quant, "run", lambda q, device, t: got.append((q, device, t)) or rows)
    monkeypatch.setattr(sys, "argv", ["bench_quant.py", *argv])
    bench_quant.main()
    out = capsys.readouterr().out
    assert got == [(quick, "cpu", threads)]
    print_table(rows)
    bound.print_bounds(rows)
    expected = capsys.readouterr().out
    assert out == expected + "greedy tokens equal to fp32: 67%\n"  # 2/3 as a whole percentage
    assert out.splitlines()[0].startswith("line ") and "bandwidth bound of batch-1 decoding" in out


def test_help_names_every_option(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_quant.py", "--help"])
    with pytest.raises(SystemExit):
        bench_quant.main()
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ["int8 vs fp32 decoding, int8 kernels, packed checkpoint sizes",
                   "--quick 32 new tokens and fewer timing rounds",
                   "--threads THREADS torch threads for both sides (0, the default: all cores). Use 1 on a loaded "
                   "machine: more than one stalls fbgemm's OpenMP barriers when other processes hold the cores"]:
        assert f" {phrase} " in f" {text} "


def test_a_bad_thread_count_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_quant.py", "--threads", "two"])
    monkeypatch.setattr(bench_quant, "run", lambda *a: pytest.fail("ran although refused"))
    with pytest.raises(SystemExit) as e:
        bench_quant.main()
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        "bench_quant.py: error: argument --threads: invalid int value: 'two'"

"""bench/bound.py against counts worked by hand: the bytes a batch-1 decoding step reads per token at every
precision of `PRECISIONS`, the KV positions averaged over a decode, the bound and the fraction, the printed table
and the CPU flags. Written to kill the survivors of `python tools/mutate.py --auto bench/bound.py`."""

from __future__ import annotations

import pytest
import torch

from bench import bound
from minigpt2.config import GPT2Config
from bench.common import Row

# A small config whose sizes all differ (C 16, L 3, V 100, 2 heads), so that a slip from one size to another, a
# matrix counted as a vector or a row extra dropped gives another number.
SMALL = GPT2Config(vocab_size=100, n_positions=64, n_embd=16, n_layer=3, n_head=2)

# Worked by hand for SMALL (C = 16, L = 3, V = 100). Per block: 12 C^2 = 3072 matrix values over 9 C = 144 output
# rows (q, k, v, attention out: 4 x C rows; MLP up 4 C rows; down C rows), 9 C = 144 biases and 4 C = 64 LayerNorm
# values (208 vectors). The final LayerNorm 2 C = 32 values. The tied head V C = 1600 values over V = 100 rows.
# One looked-up row of wte and one of wpe: C = 16 values each.
#   fp32      (matrix 4, vector 4, rows 4 + 4):  3 x (12288 + 832) + 128 + 6400 + 128              = 46016
#   bf16      (everything 2):                     3 x (6144 + 416) + 64 + 3200 + 64                  = 23008
#   fp16      (matrix 2, vector 4, rows 4 + 4):   3 x (6144 + 832) + 128 + 3200 + 128                = 24384
#   int8      (matrix 1 + 12 a row, vector 4):    3 x (3072 + 144 x 12 + 832) + 128 + (1600 + 1200) + 128 = 19952
#   gguf-f32  (as fp32):                                                                             = 46016
#   gguf-f16  (matrix 2, vector 4, wte row 2, wpe row 4): 3 x 6976 + 128 + 3200 + 32 + 64             = 24352
#   gguf-q8_0 (34 bytes per 32 values, vector 4, wte row 34/32, wpe row 4):
#             3 x (3264 + 832) + 128 + 1700 + 17 + 64                                                = 14197
WEIGHTS = {"fp32": 46016, "bf16": 23008, "fp16": 24384, "int8": 19952, "gguf-f32": 46016, "gguf-f16": 24352,
           "gguf-q8_0": 14197}
# KV cache, prompt 5 and 4 new tokens: the prompt's forward reads 5 positions for the first token, the steps of
# the next three read 6, 7, 8: mean 6.5. Bytes: 2 (key, value) x 3 layers x 6.5 x 16 values x 4 (fp32 everywhere)
# = 2496.
KV = 2496


def test_precisions_are_the_benchs_decoders():
    assert list(bound.PRECISIONS) == ["fp32", "bf16", "fp16", "int8", "gguf-f32", "gguf-f16", "gguf-q8_0"]
    assert all(s.kv == 4 for s in bound.PRECISIONS.values())  # every decoder here keeps an fp32 KV cache


@pytest.mark.parametrize("precision", list(WEIGHTS))
def test_weight_and_decode_bytes_of_a_small_config_by_hand(precision):
    assert bound.weight_bytes(SMALL, precision) == WEIGHTS[precision]
    assert bound.kv_bytes(SMALL, precision, 6.5) == KV
    assert bound.decode_bytes_per_token(SMALL, precision, 5, 4) == WEIGHTS[precision] + KV


def test_kv_positions_average_over_the_decode():
    # the counts of positions read for each new token, listed: prompt, prompt + 1, ..., prompt + new - 1
    for prompt, new in [(5, 4), (4, 5), (16, 32), (1, 1), (7, 1)]:
        counts = [prompt] + [prompt + i for i in range(1, new)]
        assert bound.kv_positions(prompt, new) == sum(counts) / len(counts)
    assert bound.kv_positions(5, 4) == 6.5 and bound.kv_positions(4, 5) == 6.0 and bound.kv_positions(7, 1) == 7
    # the KV bytes grow with the positions, the layers and the width, and with nothing else
    assert bound.kv_bytes(SMALL, "fp32", 1) == 2 * 3 * 16 * 4
    assert bound.kv_bytes(GPT2Config(vocab_size=7, n_embd=16, n_layer=3, n_head=4), "int8", 1) == 384


def test_gpt2_124m_as_the_bench_prints_it():
    """GPT-2 124M (C 768, L 12, V 50257) at prompt 16, 32 new tokens. fp32: per block 12 x 768^2 x 4 = 28311552
    + 13 x 768 x 4 = 39936, x 12 = 340217856; ln_f 6144; head 50257 x 768 x 4 = 154389504; two rows 6144:
    weights 494619648. KV: 16 + 31 / 2 = 31.5 positions, 2 x 12 x 31.5 x 768 x 4 = 2322432. 496942080 bytes:
    496.94 MB a token. q8_0: per block 7520256 + 39936, x 12 = 90722304; ln_f 6144; head 41009712; rows 816 + 3072:
    131742048 + 2322432 = 134064480."""
    gpt2 = GPT2Config.from_name("gpt2")
    assert bound.weight_bytes(gpt2, "fp32") == 494619648
    assert bound.decode_bytes_per_token(gpt2, "fp32", 16, 32) == 496942080
    assert f"{bound.decode_bytes_per_token(gpt2, 'fp32', 16, 32) / 1e6:.2f}" == "496.94"
    assert bound.decode_bytes_per_token(gpt2, "gguf-q8_0", 16, 32) == 134064480


def test_bound_and_fraction_by_hand():
    """fp32 on SMALL, prompt 5, 4 new: 48512 bytes a token; at 48512000 bytes/s the bound is 1000 tokens/s,
    and 250 tokens/s is a fraction 0.25 of it."""
    b = bound.bound(SMALL, "fp32", 5, 4, tokens_per_s=250.0, bandwidth=48_512_000.0)
    assert b == {"precision": "fp32", "bytes_per_token": 48512, "read_bytes_per_s": 48_512_000.0,
                 "bound_tokens_per_s": pytest.approx(1000.0, rel=1e-12), "tokens_per_s": 250.0,
                 "fraction": pytest.approx(0.25, rel=1e-12)}
    q8 = bound.bound(SMALL, "gguf-q8_0", 5, 4, tokens_per_s=50.0, bandwidth=16_693_000.0)  # 14197 + 2496 = 16693
    assert q8["bound_tokens_per_s"] == pytest.approx(1000.0) and q8["fraction"] == pytest.approx(0.05)


def test_the_fraction_at_the_median_read_by_hand():
    """The same 48512 bytes a token: at a median read of 19404800 bytes/s the bound would be 400 tokens/s, so 250
    tokens/s is 0.625 of it (0.25 of the best read's 1000). The bound itself stays the best read's."""
    b = bound.bound(SMALL, "fp32", 5, 4, tokens_per_s=250.0, bandwidth=48_512_000.0, median_bandwidth=19_404_800.0)
    assert b["median_read_bytes_per_s"] == 19_404_800.0
    assert b["fraction_of_median_read"] == pytest.approx(0.625, rel=1e-12)
    assert b["bound_tokens_per_s"] == pytest.approx(1000.0, rel=1e-12) and b["fraction"] == pytest.approx(0.25)
    q8 = bound.bound(SMALL, "gguf-q8_0", 5, 4, tokens_per_s=50.0, bandwidth=16_693_000.0, median_bandwidth=8_346_500.0)
    assert q8["fraction_of_median_read"] == pytest.approx(0.1, rel=1e-12)  # its own bytes: 16693 a token


def test_read_bandwidth_best_and_median_of_its_reads():
    """Four reads of 2 MiB: the best is the shortest (0.25 s), the median the mean of the middle two (0.75 s);
    neither the mean (1.0625 s), the lower or upper middle one (0.5, 1.0 s) nor the slowest."""
    read = bound.ReadBandwidth(mib=2)
    read.seconds = [1.0, 0.25, 2.5, 0.5]
    assert read.bytes_per_s == 2 * 2 ** 20 / 0.25
    assert read.median_bytes_per_s == pytest.approx(2 * 2 ** 20 / 0.75, rel=1e-12)
    info = read.info()
    assert info["median_read_bytes_per_s"] == read.median_bytes_per_s and info["read_seconds"] == [1.0, 0.25, 2.5, 0.5]
    read.seconds = []
    with pytest.raises(RuntimeError, match=r"^ReadBandwidth: no read timed yet$"):
        read.median_bytes_per_s
    with pytest.raises(RuntimeError, match=r"^ReadBandwidth: no read timed yet$"):
        read.bytes_per_s


def test_print_bounds_prints_nothing_without_a_bound(capsys):
    bound.print_bounds([Row("no bound", "x", 1.0), Row("other", "x", 2.0, extra={"bandwidth": {}})])
    bound.print_bounds([])
    assert capsys.readouterr().out == ""


def test_print_bounds_rows_in_order_ours_then_the_peer(capsys):
    a = bound.bound(SMALL, "fp32", 5, 4, 250.0, 48_512_000.0)
    p = bound.bound(SMALL, "gguf-q8_0", 5, 4, 50.0, 16_693_000.0)
    bound.print_bounds([Row("first", "tokens/s", 250.0, "llama.cpp q8_0", 50.0, extra={"bound": a, "peer_bound": p}),
                        Row("second", "tokens/s", 50.0, None, None, extra={"bound": p})])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "" and out[1].startswith("bandwidth bound of batch-1 decoding")
    assert [line.split() for line in out[4:]] == [
        ["first", "minigpt2", "fp32", "0.05", "0.0", "1000.0", "250.0", "0.25", "-"],
        ["first", "llama.cpp", "q8_0", "gguf-q8_0", "0.02", "0.0", "1000.0", "50.0", "0.05", "-"],
        ["second", "minigpt2", "gguf-q8_0", "0.02", "0.0", "1000.0", "50.0", "0.05", "-"]]
    assert len(out) == 7
    with_median = bound.bound(SMALL, "fp32", 5, 4, 250.0, 48_512_000.0, median_bandwidth=19_404_800.0)
    bound.print_bounds([Row("third", "tokens/s", 250.0, extra={"bound": with_median})])
    assert capsys.readouterr().out.splitlines()[-1].split()[-2:] == ["0.25", "0.62"]


def test_cpu_flags_takes_the_first_processors_line(tmp_path, monkeypatch):
    """The first `flags` line (every core lists the same ones); Arm's `Features`; nothing from other keys."""
    for name in bound.ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)
    info = tmp_path / "cpuinfo"
    info.write_text("vendor_id\t: avx512f sse4_2\nflags\t\t: sse4_2 avx\nbugs\t\t: avx2\nflags\t\t: avx2 fma\n")
    assert bound.cpu_flags(info)["vector_extensions"] == ["sse4_2", "avx"]
    info.write_text("model name\t: sve2\nFeatures\t: asimd asimddp\n")
    assert bound.cpu_flags(info)["vector_extensions"] == ["asimd", "asimddp"]
    got = bound.cpu_flags(tmp_path / "absent")
    assert got["vector_extensions"] == [] and got["isa_limits"] == {}
    assert got["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    for name in bound.ISA_LIMITS:
        monkeypatch.setenv(name, name.lower())
    assert bound.cpu_flags(info)["isa_limits"] == {name: name.lower() for name in bound.ISA_LIMITS}


def test_read_bandwidth_default_array_is_512_mib():
    """The documented default, far beyond any cache (its construction, not the signature: 512 MiB of fp32 ones)."""
    read = bound.ReadBandwidth()
    assert read.buf.nbytes == 512 * 2 ** 20 and read.buf.dtype == torch.float32
    read.seconds = [0.5]
    assert read.info()["array_mib"] == 512 and read.bytes_per_s == 2 ** 30
    del read

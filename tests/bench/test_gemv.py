"""The kernel survey (`python -m bench.gemv`): which kernels it times, that each computes the layer before it is
timed, and the arithmetic of its figures (a fake clock gives known durations). No speed is asserted."""

import json
import math
import os
import re
import time

import pytest
import torch
import torch.nn.functional as F

from bench import gemv
from minigpt2.config import GPT2Config
from minigpt2.fast.prepack import available, fp16_available


def test_shapes_are_the_weights_a_decoding_step_multiplies_by():
    assert gemv.shapes(GPT2Config.from_name("gpt2")) == {
        "q, k, v stacked": (2304, 768), "attention output": (768, 768), "MLP up": (3072, 768),
        "MLP down": (768, 3072), "LM head": (50257, 768)}
    assert list(gemv.shapes(GPT2Config.from_name("tiny")).values()) == [
        (96, 32), (32, 32), (128, 32), (32, 128), (50257, 32)]


def test_relative_error_is_the_largest_miss_over_the_largest_reference():
    ref = torch.tensor([1.0, -4.0, 2.0], dtype=torch.float64)
    assert gemv.relative_error(torch.tensor([1.0, -4.0, 2.0]), ref) == 0.0
    assert gemv.relative_error(torch.tensor([1.5, -4.0, 1.0]), ref) == pytest.approx(1.0 / 4.0)  # |2 - 1| / 4
    zero = torch.zeros(3, dtype=torch.float64)
    assert gemv.relative_error(torch.zeros(3), zero) == 0.0
    assert gemv.relative_error(torch.tensor([0.0, 1e-9, 0.0]), zero) == 1.0


@pytest.mark.parametrize("onednn", [True, False], ids=["with oneDNN", "without oneDNN"])
def test_the_kernels_offered_here_and_their_bytes_per_weight(onednn, monkeypatch):
    monkeypatch.setattr(gemv, "available", lambda: onednn and available())
    kinds = {k.name: k for k in gemv.kernels()}
    expected = {"slabs": 4}
    expected |= {"oneDNN packed": 4} if onednn and available() else {}
    expected |= {"F.linear": 4}
    if fp16_available():
        expected["fbgemm fp16"] = 2
    if "fbgemm" in torch.backends.quantized.supported_engines:
        expected["fbgemm int8"] = 1
    # the table's columns, in this order: the fp32 kernels from the copy's own to the plain one, then fewer bytes
    assert [(name, k.weight_bytes) for name, k in kinds.items()] == list(expected.items())
    # each precision's tolerance against the float64 product: fp32 kernels 1e-5, fp16 weights (11-bit mantissa)
    # 2e-3, int8 weights and per-call int8 activations 5e-2
    tolerances = {"F.linear": 1e-5, "slabs": 1e-5, "oneDNN packed": 1e-5, "fbgemm fp16": 2e-3,
                  "fbgemm int8": 5e-2}
    assert {name: k.tolerance for name, k in kinds.items()} == {n: tolerances[n] for n in expected}
    assert "inductor" not in kinds  # only with --inductor: it compiles each shape
    with_inductor = gemv.kernels(inductor=True)
    names = list(expected)
    fp32 = names.index("F.linear") + 1
    assert [k.name for k in with_inductor] == [*names[:fp32], "inductor", *names[fp32:]]  # the last fp32 column
    assert (with_inductor[fp32].weight_bytes, with_inductor[fp32].tolerance) == (4, 1e-5)


class FakeClock:
    """perf_counter for `measure_shape`: each timed block (a start and an end reading) lasts the next of
    `durations`, in the order the blocks run."""

    def __init__(self, durations):
        self.durations, self.t, self.calls = list(durations), 0.0, 0

    def __call__(self):
        if self.calls % 2:  # an end reading
            self.t += self.durations.pop(0)
        self.calls += 1
        return self.t


def plain(name="F.linear", weight_bytes=4):
    return gemv.Kernel(name, weight_bytes, lambda lin: lambda x: F.linear(x, lin.weight, lin.bias), 1e-6)


def test_measure_shape_figures_from_known_durations(monkeypatch):
    # Two kernels and the read, three rounds; per round: kernel a, kernel b, read.
    a, b = plain("a", 4), plain("b", 2)
    durations = [1.0, 2.0, 4.0,   # round 1: a, b, read
                 5.0, 8.0, 4.0,   # round 2
                 2.0, 4.0, 1.0]   # round 3: medians a 2, b 4, read 4 (means 2.67, 4.67, 3; minima 1, 2, 1)
    monkeypatch.setattr(gemv.time, "perf_counter", FakeClock(durations))
    r = gemv.measure_shape(100, 30, [a, b], rounds=3, cache_mib=1)
    # One 100 x 30 fp32 weight is 12,000 bytes; copies to exceed 1 MiB: ceil(1,048,576 / 12,000) = 88 (87.4).
    assert r["copies"] == 88 and r["rounds"] == 3
    assert (r["out_features"], r["in_features"]) == (100, 30)
    values = 88 * 100 * 30
    assert r["gb_per_s"] == pytest.approx({"a": 4 * values / 2.0 / 1e9, "b": 2 * values / 4.0 / 1e9,
                                           "read": 4 * values / 4.0 / 1e9})
    assert r["fraction_of_read"] == pytest.approx({"a": 2.0, "b": 0.5})
    assert r["relative_error"]["a"] < 1e-6 and set(r["relative_error"]) == {"a", "b"}


def test_copies_reach_past_the_cache_size_and_one_at_least(monkeypatch):
    monkeypatch.setattr(gemv.time, "perf_counter", FakeClock([1.0] * 2))
    assert gemv.measure_shape(512, 512, [], rounds=1, cache_mib=1)["copies"] == 1  # exactly 1 MiB: one copy
    monkeypatch.setattr(gemv.time, "perf_counter", FakeClock([1.0] * 2))
    assert gemv.measure_shape(1024, 512, [], rounds=1, cache_mib=1)["copies"] == 1  # 2 MiB: still one


def test_a_kernel_that_misses_the_product_is_refused_before_timing():
    no_bias = gemv.Kernel("no bias", 4, lambda lin: lambda x: F.linear(x, lin.weight), 1e-5)
    with pytest.raises(gemv.KernelMismatch, match=r"no bias on 64 x 32: relative error \d\.\d\de-\d\d > 1e-05"):
        gemv.measure_shape(64, 32, [plain(), no_bias], rounds=1, cache_mib=1)


def test_every_kernel_offered_computes_the_layer():
    r = gemv.measure_shape(96, 32, gemv.kernels(), rounds=1, cache_mib=1)
    for k in gemv.kernels():
        assert r["relative_error"][k.name] <= k.tolerance, k.name
    assert r["relative_error"]["F.linear"] < 1e-6


def test_main_on_the_tiny_shapes_writes_its_json(tmp_path, capsys):
    out = tmp_path / "gemv.json"
    gemv.main(["--config", "tiny", "--threads", "1", "--rounds", "1", "--cache-mib", "1", "--json", str(out)])
    data = json.loads(out.read_text())
    meta = data["meta"]
    assert meta["command"] == f"python -m bench.gemv --config tiny --threads 1 --rounds 1 --cache-mib 1 --json {out}"
    assert (meta["config"], meta["threads"], meta["torch"]) == ("tiny", 1, torch.__version__)
    assert "vector_extensions" in meta and "isa_limits" in meta
    assert [(s["out_features"], s["in_features"]) for s in data["shapes"].values()] == [
        (96, 32), (32, 32), (128, 32), (32, 128), (50257, 32)]
    names = [k.name for k in gemv.kernels()]
    for s in data["shapes"].values():
        assert list(s["gb_per_s"]) == [*names, "read"]
        for name in names:
            assert s["fraction_of_read"][name] == pytest.approx(s["gb_per_s"][name] / s["gb_per_s"]["read"])
            assert math.isfinite(s["gb_per_s"][name]) and s["gb_per_s"][name] > 0
    printed = capsys.readouterr().out
    assert "tiny, 1 thread(s)" in printed and "median of 1 rounds" in printed
    for layer in data["shapes"]:
        assert layer in printed


@pytest.mark.parametrize("flag, value", [("--rounds", "0"), ("--cache-mib", "0"), ("--threads", "0")])
def test_bad_counts_are_one_error_line(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        gemv.main([flag, value])
    assert e.value.code == 2
    assert f"error: {flag} must be at least 1, got 0" in capsys.readouterr().err


def test_the_inductor_kernel_computes_the_layer():
    (inductor,) = [k for k in gemv.kernels(inductor=True) if k.name == "inductor"]
    r = gemv.measure_shape(24, 16, [inductor], rounds=1, cache_mib=1)
    assert r["relative_error"]["inductor"] < 1e-6


def test_main_names_a_kernel_that_computes_something_else(monkeypatch, capsys):
    wrong = gemv.Kernel("wrong", 4, lambda lin: lambda x: 2 * F.linear(x, lin.weight, lin.bias), 1e-5)
    monkeypatch.setattr(gemv, "kernels", lambda inductor=False: [plain(), wrong])
    with pytest.raises(SystemExit) as e:
        gemv.main(["--config", "tiny", "--rounds", "1", "--cache-mib", "1"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: wrong on 96 x 32: relative error 1.00e+00 > 1e-05")


def fake_result(o, i, read, figures):
    return {"out_features": o, "in_features": i, "gb_per_s": {**{n: g for n, (g, _) in figures.items()}, "read": read},
            "fraction_of_read": {n: f for n, (_, f) in figures.items()}}


def test_the_table_as_printed(capsys):
    results = {"q, k, v stacked": fake_result(2304, 768, 27.94, {"a": (17.25, 0.6174), "b": (9.0, 0.3221)}),
               "LM head": fake_result(50257, 768, 30.5, {"a": (123.45, 4.0475), "b": (0.04, 0.0013)})}
    gemv.print_table(results, ["a", "b"])
    assert capsys.readouterr().out.splitlines() == [
        "layer                  out x in   read                a                b",
        "-" * 72,
        "q, k, v stacked     2304 x 768     27.9      17.2 (0.62)       9.0 (0.32)",
        "LM head            50257 x 768     30.5     123.5 (4.05)       0.0 (0.00)",
        "GB/s of weight bytes as each kernel stores them (fraction of the plain read of the same fp32 tables)"]


def test_main_measures_the_config_shapes_with_its_defaults(monkeypatch, tmp_path, capsys):
    calls = []

    def measured(o, i, kinds, rounds, cache_mib):
        calls.append((o, i, [k.name for k in kinds], rounds, cache_mib))
        return fake_result(o, i, 10.0, {k.name: (5.0, 0.5) for k in kinds})

    monkeypatch.setattr(gemv, "measure_shape", measured)
    monkeypatch.setattr(gemv.sys, "argv", ["gemv.py", "--json", str(tmp_path / "a.json")])
    gemv.main()  # argv from the command line
    names = [k.name for k in gemv.kernels()]
    assert calls == [(2304, 768, names, 5, 256), (768, 768, names, 5, 256), (3072, 768, names, 5, 256),
                     (768, 3072, names, 5, 256), (50257, 768, names, 5, 256)]
    text = (tmp_path / "a.json").read_text()
    assert text.startswith('{\n  "meta": {\n    "command": ')  # indented by 2
    meta = json.loads(text)["meta"]
    assert meta["command"] == f"python -m bench.gemv --json {tmp_path / 'a.json'}"
    assert meta["config"] == "gpt2" and meta["threads"] == torch.get_num_threads()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", meta["date"])
    assert meta["date"][:10] == time.strftime("%Y-%m-%d", time.gmtime())
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Etc/GMT-14"  # local time 14 hours ahead of UTC: the date must stay UTC's
    time.tzset()
    try:
        before = time.strftime("%Y-%m-%d %H", time.gmtime())
        gemv.main(["--json", str(tmp_path / "b.json")])
        after = time.strftime("%Y-%m-%d %H", time.gmtime())
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()
    assert json.loads((tmp_path / "b.json").read_text())["meta"]["date"][:13] in (before, after)
    assert "gpt2, " in capsys.readouterr().out
    calls.clear()
    gemv.main(["--inductor", "--rounds", "2", "--cache-mib", "3"])
    assert calls[0][2] == [k.name for k in gemv.kernels(inductor=True)] and calls[0][3:] == (2, 3)


def test_help_names_every_flag_and_its_default(capsys):
    with pytest.raises(SystemExit):
        gemv.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("GB/s each CPU kernel streams weights at in a one-row product, against a plain read of the same "
                 "tables", "--config {gpt2,gpt2-large,gpt2-medium,gpt2-xl,tiny}",
                 "model preset whose weight shapes are measured (default gpt2)",
                 "torch threads (default: all cores)", "timed rounds per shape; the median is reported",
                 "copies of each weight to exceed this many MiB", "also time torch.compile's generated product",
                 "also write the figures as JSON here"):
        assert re.search(rf"(^| ){re.escape(text)}( |$)", out), text

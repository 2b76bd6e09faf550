"""`python -m bench` itself (bench/__main__.py), with fake modules, clock and machine: which modules run for
--only and by default, what reaches them, the table and notes it prints, the JSON it writes after each module and
at the end, its refusals and help (docs/testing.md, "Automated mutants", "The front ends"). Every expected line
and JSON record is written out by hand."""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path
from types import SimpleNamespace

import peft
import pytest
import torch
import transformers

import bench.__main__ as bench_main
from bench.common import ModuleSkipped, Row

REPO = Path(__file__).resolve().parents[2]
DASHES = "-" * 99
HEADER = "line                                             unit           minigpt2         peer   ratio  goal"
CORE_LINE = "forward, batch 8                                 tokens/s           2468         1000    2.47  >= 1x"
LLAMA_LINE = "llama.cpp decode                                 tokens/s              -         50.5       -  "
CORE_ROW = {"line": "forward, batch 8", "unit": "tokens/s", "minigpt2": 2468.0, "peer_name": "transformers",
            "peer": 1000.0, "higher_is_better": True, "goal": ">= 1x", "extra": {}, "ratio": 2.468}
LLAMA_ROW = {"line": "llama.cpp decode", "unit": "tokens/s", "minigpt2": None, "peer_name": "llama.cpp",
             "peer": 50.5, "higher_is_better": True, "goal": "", "extra": {}, "ratio": None}


class FakeDatetime:
    @staticmethod
    def now(tz=None):
        return datetime.datetime(2026, 12, 7, 19, 0, 0, 654321, tzinfo=tz)


@pytest.fixture
def bench(monkeypatch):
    """The modules replaced by recorders that advance a fake clock (core 1.26 s, lora 0.5 s and fails, quant
    0.04 s and is skipped, llama 2 s, decode 0.3 s); the machine, the threads and every JSON write recorded."""
    state = SimpleNamespace(now=100.0, calls=[], threads=[], writes=[])

    def module(name, seconds, rows=(), error=None):
        def run(quick, device, threads):
            state.calls.append((name, quick, device, threads))
            state.now += seconds
            if error is not None:
                raise error
            return [Row(**r) for r in rows]
        return run

    core = {k: v for k, v in CORE_ROW.items() if k != "ratio"}
    llama = {k: v for k, v in LLAMA_ROW.items() if k != "ratio"}
    monkeypatch.setattr(bench_main, "MODULES", {
        "core": module("core", 1.26, [core]),
        "decode": module("decode", 0.3),
        "lora": module("lora", 0.5, error=RuntimeError("boom")),
        "quant": module("quant", 0.04, error=ModuleSkipped("fbgemm missing")),
        "llama": module("llama", 2.0, [llama]),
    })
    monkeypatch.setattr(bench_main, "time", SimpleNamespace(time=lambda: state.now))
    monkeypatch.setattr(bench_main, "dt", SimpleNamespace(datetime=FakeDatetime, timezone=datetime.timezone))
    monkeypatch.setattr(bench_main, "machine", lambda: {"cpu": "Fake CPU"})
    monkeypatch.setattr(bench_main, "set_threads", lambda n=None: state.threads.append(n) or (n or 6))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    real_write = bench_main.write_json

    def write_json(rows, path, meta=None):
        state.writes.append(([r.line for r in rows], path, json.loads(json.dumps(meta))))
        real_write(rows, path, meta)

    monkeypatch.setattr(bench_main, "write_json", write_json)
    monkeypatch.setenv("COLUMNS", "120")
    return state


def meta(**changes):
    record = {"command": "python -m bench", "mode": "full", "device": "cpu", "threads": 6,
              "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
              "date": "2026-12-07T19:00:00+00:00", "seconds": 0.0, "machine": {"cpu": "Fake CPU"},
              "modules": ["core", "lora", "quant", "llama"], "module_seconds": {}, "model": "gpt2 (124M, random weights)",
              "notes": {}, "skipped": {}, "finished": False}
    return {**record, **changes}


def test_a_default_run_its_table_notes_and_json(bench, tmp_path, capsys):
    out = str(tmp_path / "r" / "results.json")
    assert bench_main.main(["--quick", "--out", out]) == 1  # a failed module: exit 1, after the others ran
    assert bench.calls == [(m, True, "cpu", 6) for m in ("core", "lora", "quant", "llama")]  # no decode
    assert bench.threads == [None, 6, 6, 6, 6]  # all cores, then set back after each module
    printed = capsys.readouterr()
    assert printed.out.splitlines() == [HEADER, DASHES, CORE_LINE, LLAMA_LINE,
                                        "note: lora: failed: RuntimeError: boom",
                                        "note: quant: skipped: fbgemm missing",
                                        f"wrote {out}"]
    assert [line for line in printed.err.splitlines() if line.startswith("[bench]")] == [
        "[bench] core ...", "[bench] lora ...", "[bench] quant ...", "[bench] llama ..."]
    assert "Traceback (most recent call last)" in printed.err and "RuntimeError: boom" in printed.err
    # the clock: core 100 -> 101.26, lora -> 101.76, quant -> 101.80, llama -> 103.80
    done = {"command": f"python -m bench --quick --out {out}", "mode": "quick"}
    failed, skipped = {"lora": "failed: RuntimeError: boom"}, {"quant": "fbgemm missing"}
    assert bench.writes == [
        (["forward, batch 8"], out, meta(**done, seconds=1.3, module_seconds={"core": 1.3})),
        (["forward, batch 8"], out, meta(**done, seconds=1.8, module_seconds={"core": 1.3, "lora": 0.5},
                                         notes=failed)),
        (["forward, batch 8"], out, meta(**done, seconds=1.8, module_seconds={"core": 1.3, "lora": 0.5, "quant": 0.0},
                                         notes=failed, skipped=skipped)),
        (["forward, batch 8", "llama.cpp decode"], out, meta(
            **done, seconds=3.8, module_seconds={"core": 1.3, "lora": 0.5, "quant": 0.0, "llama": 2.0},
            notes=failed, skipped=skipped)),
        (["forward, batch 8", "llama.cpp decode"], out, meta(
            **done, seconds=3.8, module_seconds={"core": 1.3, "lora": 0.5, "quant": 0.0, "llama": 2.0},
            notes=failed, skipped=skipped, finished=True)),
    ]
    assert json.loads(Path(out).read_text()) == {"meta": bench.writes[-1][2], "rows": [CORE_ROW, LLAMA_ROW]}


def test_only_runs_the_named_modules_in_table_order(bench, tmp_path, capsys):
    out = str(tmp_path / "results.json")
    assert bench_main.main(["--only", "llama", "decode", "--threads", "2", "--device", "cuda:1", "--out", out]) == 0
    assert bench.calls == [("decode", False, "cuda:1", 2), ("llama", False, "cuda:1", 2)]
    assert bench.threads == [2, 2, 2]
    assert capsys.readouterr().out.splitlines() == [HEADER, DASHES, LLAMA_LINE, f"wrote {out}"]
    final = bench.writes[-1][2]
    assert final == meta(command=f"python -m bench --only llama decode --threads 2 --device cuda:1 --out {out}",
                         device="cuda:1", threads=2, modules=["decode", "llama"], seconds=2.3,
                         module_seconds={"decode": 0.3, "llama": 2.0}, finished=True)


def test_a_skipped_module_alone_is_no_failure(bench, tmp_path, capsys):
    out = str(tmp_path / "results.json")
    assert bench_main.main(["--full", "--only", "quant", "--out", out]) == 0
    assert bench.calls == [("quant", False, "cpu", 6)]
    assert capsys.readouterr().out.splitlines() == [HEADER, DASHES, "note: quant: skipped: fbgemm missing",
                                                    f"wrote {out}"]
    assert json.loads(Path(out).read_text()) == {"meta": meta(
        command=f"python -m bench --full --only quant --out {out}", modules=["quant"],
        module_seconds={"quant": 0.0}, skipped={"quant": "fbgemm missing"}, finished=True), "rows": []}


def test_the_device_defaults_to_cuda_where_there_is_one(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = str(tmp_path / "results.json")
    assert bench_main.main(["--only", "decode", "--out", out]) == 0
    assert bench.calls == [("decode", False, "cuda", 6)]
    assert bench.writes[-1][2]["device"] == "cuda"


def test_the_command_line_is_read_from_sys_argv_without_argv(bench, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "results.json")
    monkeypatch.setattr("sys.argv", ["bench/__main__.py", "--only", "decode", "--out", out])
    assert bench_main.main() == 0
    assert bench.writes[-1][2]["command"] == f"python -m bench --only decode --out {out}"


def test_defaults_of_the_flags():
    args = bench_main.build_parser().parse_args([])
    assert (args.quick, args.full, args.device, args.threads, args.only) == (False, False, None, None, None)
    assert args.out == str(REPO / "bench" / "results.json")


def test_refusals_exit_2_with_argparse_line(bench, capsys):
    usage = ("usage: python -m bench [-h] [--quick | --full] [--device DEVICE] [--threads THREADS] [--only TOPIC "
             "[TOPIC ...]]\n                       [--out OUT]\n")
    for argv, line in [
        (["--quick", "--full"], "argument --full: not allowed with argument --quick"),
        (["--only", "gemv"], "argument --only: invalid choice: 'gemv' (choose from 'core', 'decode', 'lora', "
                             "'quant', 'llama')"),
        (["--only"], "argument --only: expected at least one argument"),
        (["--threads", "two"], "argument --threads: invalid int value: 'two'"),
    ]:
        with pytest.raises(SystemExit) as e:
            bench_main.main(argv)
        assert e.value.code == 2
        assert capsys.readouterr() == ("", usage + f"python -m bench: error: {line}\n")
    assert bench.calls == [] and bench.writes == []


def test_help(bench, capsys):
    with pytest.raises(SystemExit) as e:
        bench_main.main(["--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out == """\
usage: python -m bench [-h] [--quick | --full] [--device DEVICE] [--threads THREADS] [--only TOPIC [TOPIC ...]]
                       [--out OUT]

minigpt2 against transformers/peft, side by side on the same weights, batch, threads and precision.

options:
  -h, --help            show this help message and exit
  --quick               a few minutes on 2 CPU cores: smaller batches, shorter decodes, fewer timed calls
  --full                the full sizes (the default): 8 x 128 training batches, 128-token decodes
  --device DEVICE       cpu or cuda (default: cuda when available; bf16 autocast on CUDA devices that support it)
  --threads THREADS     torch intra-op threads (default: all cores)
  --only TOPIC [TOPIC ...]
                        run only these modules (of core, decode, lora, quant, llama), e.g. core lora
  --out OUT             where to write the JSON results
"""


def test_version_of_a_package_or_none():
    assert bench_main._version("transformers") == transformers.__version__
    assert bench_main._version("peft") == peft.__version__
    assert bench_main._version("no_such_package_for_minigpt2") is None


# ---- the machine record ----

CPUINFO = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz: rev 7\n"
           "flags\t\t: fpu sse\n\nprocessor\t: 1\nmodel name\t: The second core\n")


@pytest.fixture
def platform_of(monkeypatch):
    """The platform's answers and /proc/cpuinfo's text as the test sets them."""
    import platform

    state = SimpleNamespace(cpuinfo=CPUINFO, processor="x86_64-proc", opened=[])
    monkeypatch.setattr(platform, "processor", lambda: state.processor)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(platform, "platform", lambda: "Linux-6.1-x86_64-with-glibc2.36")
    monkeypatch.setattr(platform, "python_version", lambda: "3.11.7")
    monkeypatch.setattr(bench_main, "cpu_flags", lambda: {"vector_extensions": "avx2 fma",
                                                          "torch_cpu_capability": "AVX2"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def fake_open(path, *args, **kwargs):
        state.opened.append(path)
        if state.cpuinfo is None:
            raise FileNotFoundError(path)
        return io.StringIO(state.cpuinfo)

    monkeypatch.setattr(bench_main, "open", fake_open, raising=False)
    return state


def test_machine_names_the_first_cpu_of_cpuinfo(platform_of):
    assert bench_main.machine() == {"platform": "Linux-6.1-x86_64-with-glibc2.36",
                                    "cpu": "Intel(R) Xeon(R) CPU @ 2.20GHz: rev 7", "python": "3.11.7",
                                    "vector_extensions": "avx2 fma", "torch_cpu_capability": "AVX2"}
    assert platform_of.opened == ["/proc/cpuinfo"]


def test_machine_falls_back_to_the_platform_without_a_model_name(platform_of):
    platform_of.cpuinfo = "processor\t: 0\nFeatures\t: fp asimd\n"  # an Arm board: no "model name"
    assert bench_main.machine()["cpu"] == "x86_64-proc"
    platform_of.processor = ""  # platform.processor() is often empty on Linux
    assert bench_main.machine()["cpu"] == "x86_64"
    platform_of.cpuinfo = None  # no /proc (macOS)
    assert bench_main.machine()["cpu"] == "x86_64"
    platform_of.processor = "arm"
    assert bench_main.machine()["cpu"] == "arm"


def test_machine_names_the_gpu_where_there_is_one(platform_of, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    info = bench_main.machine()
    assert info["gpu"] == "NVIDIA H100 80GB HBM3" and info["cpu"] == "Intel(R) Xeon(R) CPU @ 2.20GHz: rev 7"


def test_the_modules_in_table_order():
    """The real registry (the other tests replace it): the order of the table, the JSON and `--only`'s list."""
    assert list(bench_main.MODULES) == ["core", "decode", "lora", "quant", "llama"]
    assert list(bench_main.DEFAULT) == ["core", "lora", "quant", "llama"]
    only = next(a for a in bench_main.build_parser()._actions if a.dest == "only")
    assert list(only.choices) == ["core", "decode", "lora", "quant", "llama"]

"""bench/common.py against values worked by hand: the turn-by-turn medians of `compare_time` on a fake clock, the
ratio of a row in both directions and its empty cases, the printed table line by line, the JSON written and read
back, and the memory figures read from a fake /proc/self/status. Written to kill the survivors of
`python tools/mutate.py --auto bench/common.py`."""

from __future__ import annotations

import io
import json
import os

import pytest
import torch

from bench import common
from bench.common import Row, compare_time, print_table, write_json


class FakeClock:
    """`time` for bench.common: perf_counter reads a clock that only the timed functions move."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


def timed(clock: FakeClock, name: str, durations: list[float], calls: list[str]):
    """A function that takes durations[i] seconds on its i-th call (warm-up calls included) and logs its name."""
    left = list(durations)

    def fn():
        calls.append(name)
        clock.now += left.pop(0)
    return fn


def test_compare_time_is_the_median_of_the_timed_turns_after_the_warmup(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(common, "time", clock)
    calls: list[str] = []
    # Defaults: 2 warm-up turns (100 s each, never counted), then 5 timed turns.
    # ours: 1, 9, 3, 7, 2 -> sorted 1 2 3 7 9, median 3 (mean 4.4, min 1, last 2, first 1)
    # peer: 5, 6, 20, 4, 8 -> sorted 4 5 6 8 20, median 6 (mean 8.6, min 4)
    ours = timed(clock, "ours", [100, 100, 1, 9, 3, 7, 2], calls)
    peer = timed(clock, "peer", [100, 100, 5, 6, 20, 4, 8], calls)
    t = compare_time({"ours": ours, "peer": peer})
    assert t == {"ours": 3, "peer": 6}
    assert list(t) == ["ours", "peer"]
    assert calls == ["ours", "peer"] * 7  # turn by turn: ours, peer, ours, peer, ...


def test_compare_time_with_its_own_warmup_and_an_even_number_of_turns(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(common, "time", clock)
    calls: list[str] = []
    # 1 warm-up turn, 4 timed: a 2, 10, 4, 1 -> sorted 1 2 4 10, median (2 + 4) / 2 = 3;
    # b 1, 1, 7, 3 -> sorted 1 1 3 7, median 2; c 0.5 four times -> 0.5
    a = timed(clock, "a", [50, 2, 10, 4, 1], calls)
    b = timed(clock, "b", [50, 1, 1, 7, 3], calls)
    c = timed(clock, "c", [50, 0.5, 0.5, 0.5, 0.5], calls)
    assert compare_time({"a": a, "b": b, "c": c}, warmup=1, iters=4) == {"a": 3, "b": 2, "c": 0.5}
    assert calls == ["a", "b", "c"] * 5
    calls.clear()
    d = timed(clock, "d", [4, 8], calls)
    assert compare_time({"d": d}, warmup=0, iters=2) == {"d": 6}
    assert calls == ["d", "d"]


def test_compare_time_synchronizes_after_the_warmup_and_after_each_call(monkeypatch):
    events: list[str] = []
    monkeypatch.setattr(common, "sync", lambda: events.append("sync"))
    compare_time({"a": lambda: events.append("a"), "b": lambda: events.append("b")}, warmup=1, iters=2)
    assert events == ["a", "b", "sync"] + ["a", "sync", "b", "sync"] * 2


def test_sync_waits_for_cuda_only_where_there_is_cuda(monkeypatch):
    done: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: done.append("synchronize"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    common.sync()
    assert done == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    common.sync()
    assert done == ["synchronize"]


def test_set_threads_sets_torch_and_defaults_to_every_core(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert common.set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(os, "cpu_count", lambda: 3)
        assert common.set_threads() == 3 and torch.get_num_threads() == 3
        assert common.set_threads(None) == 3
        monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one thread
        assert common.set_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_bf16_unavailable_is_the_reason_or_none(monkeypatch):
    from minigpt2 import device as dev

    asked = []

    def no_bf16(precision, device):
        asked.append((precision, device))
        raise dev.AutocastUnavailable("precision", "bf16", "a device with native bf16")
    monkeypatch.setattr(dev, "autocast_dtype", no_bf16)
    assert common.bf16_unavailable("cpu") == "precision bf16: expected a device with native bf16"
    assert asked == [("bf16", "cpu")]
    monkeypatch.setattr(dev, "autocast_dtype", lambda precision, device: torch.bfloat16)
    assert common.bf16_unavailable("cuda") is None


# ---- rows ----

def test_ratio_is_how_many_times_better_ours_is_in_either_direction():
    assert Row("x", "tokens/s", 3.0, "hf", 2.0).ratio == 1.5  # higher is better: ours over the peer
    assert Row("x", "tokens/s", 2.0, "hf", 3.0).ratio == 2 / 3
    assert Row("x", "MiB", 300.0, "hf", 400.0, higher_is_better=False).ratio == 4 / 3  # lower: peer over ours
    assert Row("x", "MiB", 400.0, "hf", 300.0, higher_is_better=False).ratio == 0.75


@pytest.mark.parametrize("ours,peer", [(None, 2.0), (2.0, None), (None, None), (0.0, 2.0), (2.0, 0.0), (0.0, 0.0)])
@pytest.mark.parametrize("higher", [True, False])
def test_ratio_is_none_without_both_figures_or_with_a_zero(ours, peer, higher):
    assert Row("x", "u", ours, "hf", peer, higher_is_better=higher).ratio is None


def test_row_defaults_and_to_dict():
    r = Row("fp32 matmul peak (256^3)", "GFLOP/s", 56.78)
    assert r.to_dict() == {"line": "fp32 matmul peak (256^3)", "unit": "GFLOP/s", "minigpt2": 56.78,
                           "peer_name": None, "peer": None, "higher_is_better": True, "goal": "", "extra": {},
                           "ratio": None}
    r.extra["k"] = 1
    assert Row("y", "u", 1.0).extra == {}  # each row its own extras
    full = Row("peak memory", "MiB", 300.0, "transformers", 400.0, False, "<= 0.8x", {"measure": "peak RSS"})
    assert full.to_dict() == {"line": "peak memory", "unit": "MiB", "minigpt2": 300.0, "peer_name": "transformers",
                              "peer": 400.0, "higher_is_better": False, "goal": "<= 0.8x",
                              "extra": {"measure": "peak RSS"}, "ratio": 4 / 3}


TABLE_ROWS = [
    Row("training step 2x32, AdamW", "tokens/s", 1234.5678, "transformers", 1000.0, goal=">= 1.15x"),
    Row("peak memory", "MiB", 300.0, "transformers", 400.0, higher_is_better=False, goal="<= 0.8x"),
    Row("fp32 matmul peak (256^3)", "GFLOP/s", 56.78, goal="(measured)"),
    Row("greedy b=1, 7 tokens, llama.cpp f16 alone", "tokens/s", None, "llama.cpp f16", 12.5,
        goal="(no fbgemm fp16 here)"),
    Row("slow side", "tokens/s", 0.000123456, "peer", 98765432.0),
]

# Columns: line left in 48, unit left in 10, ours and peer right in 12 (4 significant digits), two spaces, the
# ratio right in 6 with 2 decimals, two spaces, the goal; "-" for a missing figure. The rule is as long as the
# header (99 characters). Ratios: 1234.5678 / 1000 = 1.23; lower is better: 400 / 300 = 1.33; 1.25e-12 -> 0.00.
TABLE = """\
line                                             unit           minigpt2         peer   ratio  goal
---------------------------------------------------------------------------------------------------
training step 2x32, AdamW                        tokens/s           1235         1000    1.23  >= 1.15x
peak memory                                      MiB                 300          400    1.33  <= 0.8x
fp32 matmul peak (256^3)                         GFLOP/s           56.78            -       -  (measured)
greedy b=1, 7 tokens, llama.cpp f16 alone        tokens/s              -         12.5       -  (no fbgemm fp16 here)
slow side                                        tokens/s      0.0001235    9.877e+07    0.00  
"""


def test_print_table_line_by_line(capsys):
    print_table(TABLE_ROWS)
    out = capsys.readouterr().out
    assert out.splitlines() == TABLE.splitlines()
    assert out == TABLE


def test_print_table_of_no_rows_is_the_header(capsys):
    print_table([])
    assert capsys.readouterr().out == "".join(TABLE.splitlines(keepends=True)[:2])


def test_write_json_read_back(tmp_path):
    path = tmp_path / "new" / "folder" / "results.json"  # the folders are made
    write_json(TABLE_ROWS[:3], path, {"command": "python -m bench --quick", "threads": 2})
    text = path.read_text()
    assert text.endswith("}\n") and text.startswith('{\n  "meta": {\n    "command"')  # indented by 2, one newline
    back = json.loads(text)
    assert back == {"meta": {"command": "python -m bench --quick", "threads": 2},
                    "rows": [{"line": "training step 2x32, AdamW", "unit": "tokens/s", "minigpt2": 1234.5678,
                              "peer_name": "transformers", "peer": 1000.0, "higher_is_better": True,
                              "goal": ">= 1.15x", "extra": {}, "ratio": 1.2345678},
                             {"line": "peak memory", "unit": "MiB", "minigpt2": 300.0, "peer_name": "transformers",
                              "peer": 400.0, "higher_is_better": False, "goal": "<= 0.8x", "extra": {},
                              "ratio": 4 / 3},
                             {"line": "fp32 matmul peak (256^3)", "unit": "GFLOP/s", "minigpt2": 56.78,
                              "peer_name": None, "peer": None, "higher_is_better": True, "goal": "(measured)",
                              "extra": {}, "ratio": None}]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]  # no temporary file left
    write_json([], path)  # no meta: an empty one; the file replaced
    assert json.loads(path.read_text()) == {"meta": {}, "rows": []}


# ---- memory ----

STATUS = """Name:\tpython
VmPeak:\t  999999 kB
VmHWM:\t    2048 kB
VmRSS:\t    1000 kB
Threads:\t2
"""


class FakeProc:
    """`open` for bench.common: /proc/self/status is STATUS (then `after`, once written to clear_refs); writes
    to /proc/self/clear_refs are logged."""

    def __init__(self, log: list, after: str = STATUS) -> None:
        self.log, self.status = log, STATUS
        self.after = after

    def __call__(self, path, mode="r"):
        self.log.append(("open", path, mode))
        if path == "/proc/self/clear_refs" and mode == "w":
            proc = self

            class Writer(io.StringIO):
                def close(self):
                    proc.log.append(("wrote", self.getvalue()))
                    proc.status = proc.after
                    super().close()
            return Writer()
        assert mode == "r" and path == "/proc/self/status", (path, mode)
        return io.StringIO(self.status)


def test_proc_status_bytes_reads_the_kib_figure_of_the_key(monkeypatch):
    log: list = []
    monkeypatch.setattr(common, "open", FakeProc(log), raising=False)
    assert common.proc_status_bytes("VmHWM") == 2048 * 1024
    assert common.proc_status_bytes("VmRSS") == 1000 * 1024
    assert common.proc_status_bytes("VmPeak") == 999999 * 1024
    assert log == [("open", "/proc/self/status", "r")] * 3
    with pytest.raises(RuntimeError, match=r"^VmHW not found in /proc/self/status$"):
        common.proc_status_bytes("VmHW")  # a prefix of a key is not the key


def test_proc_status_bytes_of_this_process():
    with open("/proc/self/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    assert common.proc_status_bytes("Threads") == threads * 1024  # a count, but read the same way


def test_peak_memory_on_cpu_resets_the_high_water_mark_then_reads_it_after_the_call(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    log: list = []
    after = STATUS.replace("2048 kB", "5120 kB")
    monkeypatch.setattr(common, "open", FakeProc(log, after), raising=False)
    ran: list = []
    assert common.peak_memory(lambda: ran.append(log[:])) == 5120 * 1024
    assert ran == [[("open", "/proc/self/clear_refs", "w"), ("wrote", "5")]]  # reset before the call
    assert log[2:] == [("open", "/proc/self/status", "r")]


def test_peak_memory_of_a_real_allocation():
    if torch.cuda.is_available():
        pytest.skip("reads the process's RSS; CUDA's allocator peak is read on a GPU")
    held = torch.ones(2)
    mib64 = 64 * 2 ** 20

    def allocate():
        x = torch.ones(mib64 // 4)  # 64 MiB written
        held.add_(x[:2])
    assert common.peak_memory(allocate) >= mib64


def test_peak_memory_on_cuda_is_the_allocators_peak(monkeypatch):
    events: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: events.append("synchronize"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: events.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 12345)
    assert common.peak_memory(lambda: events.append("fn")) == 12345
    assert events == ["synchronize", "reset", "fn", "synchronize"]

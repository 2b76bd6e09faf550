"""Hypothesis properties of the local launcher's placement (hypothesis: the `dev` extra): every run placed exactly
once, never more runs at once than --jobs nor on a device than the slots it has, the first wave on slots 0..k-1,
and threads per run x runs at once within the cores when the threads are the cores split."""

from __future__ import annotations

import tempfile
import threading
from collections import Counter
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from app.runfolder import read_settings_file  # noqa: E402
from experiments import launch  # noqa: E402
from experiments.sweeps import Run  # noqa: E402
from tests.experiments.test_experiments import FakeFinetune, sst  # noqa: E402

DEVICES = ["cpu", "cpu:1", "cpu:2"]


@settings(max_examples=25, deadline=None)
@given(jobs=st.integers(1, 4), devices=st.lists(st.sampled_from(DEVICES), min_size=1, max_size=3),
       n=st.integers(0, 6), cores=st.integers(1, 16), threads=st.none() | st.integers(1, 3))
def test_every_run_is_placed_once_within_the_slots_and_the_cores(jobs, devices, n, cores, threads):
    slots_of = Counter(devices[k % len(devices)] for k in range(jobs))  # a device's share of the slots
    first_wave = min(jobs, n)
    together = threading.Barrier(max(1, first_wave), timeout=30)
    lock = threading.Lock()
    running: Counter = Counter()
    started: list[tuple[str, str, int]] = []
    peak = [0]
    fake = FakeFinetune()

    def executor(step, log):
        hardware = read_settings_file(Path(step.argv[1])).hardware
        with lock:
            running[hardware.device] += 1
            peak[0] = max(peak[0], sum(running.values()))
            assert running[hardware.device] <= slots_of[hardware.device]
            started.append((log.parent.name, hardware.device, hardware.threads))
            first = len(started) <= first_wave
        if first:  # the first wave waits until it is all running: its slots are 0..k-1
            together.wait()
        try:
            fake(step, log)
        finally:
            with lock:
                running[hardware.device] -= 1

    runs = [Run(f"r{i}", sst(optim__seed=i)) for i in range(n)]
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as tmp:
        mp.setattr(launch, "cpu_count", lambda: cores)
        result = launch.Local(executor, jobs=jobs, devices=devices, threads=threads, progress=False).launch(
            runs, Path(tmp))
    names = sorted(r.name for r in runs)
    assert sorted(result.started) == names and sorted(name for name, _, _ in started) == names  # each once
    assert not result.failed and not result.skipped and peak[0] <= jobs
    assert sorted(d for _, d, _ in started[:first_wave]) == sorted(devices[k % len(devices)]
                                                                 for k in range(first_wave))
    each = threads if threads is not None else max(1, cores // jobs)
    assert {t for _, _, t in started} <= {each}
    if threads is None and jobs <= cores:
        assert each * jobs <= cores  # the runs at once never ask for more threads than there are cores

"""Hypothesis property tests of the arithmetic users read: the longest-first schedule, threads per run, the
intervals, the stratified subset quotas and the batch order (scipy and hypothesis: the `dev` extra)."""

from __future__ import annotations

import heapq
import math

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from experiments import launch  # noqa: E402
from experiments.estimate import schedule_seconds  # noqa: E402
from minigpt2.metrics import bootstrap_interval, wilson_interval  # noqa: E402

scipy_stats = pytest.importorskip("scipy.stats")
durations = st.lists(st.floats(0.0, 1e4, allow_nan=False), max_size=12)


def list_schedule(seconds, workers: int) -> float:
    """Wall time when the runs start in the order given, each on the first worker free (written here)."""
    free = [0.0] * max(1, workers)
    for s in seconds:
        heapq.heappush(free, heapq.heappop(free) + s)
    return max(free)


@settings(max_examples=200, deadline=None)
@given(durations, st.integers(1, 6), st.randoms(use_true_random=False))
def test_longest_first_never_ends_later_than_another_order_by_more_than_the_longest_run(secs, workers, rnd):
    other = list(secs)
    rnd.shuffle(other)
    lpt = schedule_seconds(secs, workers)
    longest = max(secs, default=0.0)
    assert lpt <= list_schedule(other, workers) + longest + 1e-6
    assert lpt >= max(longest, sum(secs) / workers) - 1e-6  # no schedule beats either bound
    assert lpt <= sum(secs) / workers + longest + 1e-6  # Graham's bound for any list schedule
    assert lpt == pytest.approx(list_schedule(sorted(secs, reverse=True), workers))


@given(st.integers(1, 256), st.integers(1, 64))
def test_threads_per_run_multiply_to_at_most_the_cores_and_use_them(cores, jobs):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(launch.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
        t = launch.threads_per_run(jobs)
    assert t >= 1
    if jobs <= cores:
        assert t * jobs <= cores < (t + 1) * jobs  # every core handed out that an even split allows
    else:
        assert t == 1


@given(st.integers(0, 400), st.integers(1, 400), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_wilson_contains_its_point_and_is_scipys(k, n, confidence):
    k = min(k, n)
    z = scipy_stats.norm.ppf((1 + confidence) / 2)
    low, high = wilson_interval(k, n, z)
    assert 0.0 <= low <= k / n <= high <= 1.0
    ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-9)
    if 0 < k < n:
        assert low < k / n < high


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 1), min_size=5, max_size=60), st.integers(0, 10**6))
def test_bootstrap_of_a_rate_lies_within_zero_one_and_brackets_it_loosely(flags, seed):
    x = np.array(flags, dtype=float)
    low, high = bootstrap_interval(lambda i: float(x[i].mean()), len(x), 200, seed=seed)
    assert 0.0 <= low <= high <= 1.0
    wide = bootstrap_interval(lambda i: float(x[i].mean()), len(x), 200, 0.99, seed)
    assert wide[0] <= low and high <= wide[1]  # same resamples: a higher confidence only widens
    if x.min() == x.max():
        assert low == high == x[0]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=2, max_size=80), st.integers(1, 80), st.integers(0, 99))
def test_stratified_quota_is_floor_or_ceil_of_each_share(labels, n, seed):
    from tasks.base import sample_indices

    chosen = sample_indices(labels, n, seed, "dev")
    want = min(n, len(labels))
    assert len(chosen) == len(set(chosen)) == want and chosen == sorted(chosen)
    if n < len(labels):
        for c in set(labels):
            share = n * labels.count(c) / len(labels)
            got = sum(labels[i] == c for i in chosen)
            assert math.floor(share) <= got <= math.ceil(share)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 500), min_size=1, max_size=120), st.integers(1, 9), st.integers(1, 6),
       st.integers(0, 10**6))
def test_bucketed_batches_cover_every_example_once_in_sorted_batches(lengths, batch, bucket, seed):
    from minigpt2.train import bucketed_batches

    batches = bucketed_batches(lengths, batch, torch.Generator().manual_seed(seed), bucket)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch for b in batches)
    assert all([lengths[i] for i in b] == sorted(lengths[i] for i in b) for b in batches)
    assert len(batches) == sum(math.ceil(min(batch * bucket, len(lengths) - s) / batch)
                               for s in range(0, len(lengths), batch * bucket))

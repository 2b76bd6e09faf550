"""minigpt2/distributed.py under mutmut: where a process sits (RANK, WORLD_SIZE, LOCAL_RANK written by hand), who
joins a process group and on which backend, the fetch-once handshake over a real key-value store (every key and
value written out), leaving together, and the sums and checksums over ranks (a real one-rank gloo group on CPU, and
a stand-in for a second rank's values)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed import HashStore

import minigpt2.distributed as md
from minigpt2.distributed import Dist, FetchWaitError, fetch_once, leave_together
from minigpt2.errors import UserError


# ---- Dist and setup_distributed ----

def test_dist_defaults_to_a_world_of_one_on_the_cpu_and_rank_0_is_main():
    d = Dist()
    assert (d.rank, d.world, d.local_rank, d.device) == (0, 1, 0, torch.device("cpu"))
    assert d.main and not Dist(rank=1, world=2).main and Dist(rank=0, world=4, local_rank=0).main
    assert not Dist(rank=3, world=4, local_rank=0).main  # local rank 0 of another node does not print or save


def torchrun_env(monkeypatch, rank: int, world_size: int, local_rank: int) -> None:
    """The variables torchrun sets for one process."""
    for key, value in (("RANK", rank), ("WORLD_SIZE", world_size), ("LOCAL_RANK", local_rank)):
        monkeypatch.setenv(key, str(value))


@pytest.fixture
def group(monkeypatch):
    """The process group stubbed: `group.calls` records init_process_group's backend and set_device's device."""
    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    return calls


def test_without_torchrun_a_process_is_a_world_of_one_and_joins_nothing(group):
    assert md.setup_distributed("cpu") == Dist(0, 1, 0, torch.device("cpu"))
    assert group == []


def test_under_torchrun_on_the_cpu_the_environment_places_the_process_and_it_joins_over_gloo(group, monkeypatch):
    torchrun_env(monkeypatch, rank=5, world_size=6, local_rank=2)
    assert md.setup_distributed("cpu") == Dist(5, 6, 2, torch.device("cpu"))
    assert group == [("init", "gloo")]


def test_a_group_already_joined_is_not_joined_again(group, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    assert md.setup_distributed("cpu") == Dist(1, 2, 0, torch.device("cpu"))
    assert group == []


def test_a_world_size_of_one_joins_nothing_even_under_torchrun(group, monkeypatch):
    torchrun_env(monkeypatch, rank=0, world_size=1, local_rank=0)
    assert md.setup_distributed("cpu") == Dist(0, 1, 0, torch.device("cpu"))
    assert group == []


def test_on_gpus_each_process_takes_its_local_ranks_gpu_and_nccl(group, monkeypatch):
    monkeypatch.setattr(md, "parse_device", lambda name: torch.device("cuda", 0) if name == "cuda:0" else
                        torch.device("cuda"))
    torchrun_env(monkeypatch, rank=3, world_size=4, local_rank=1)
    assert md.setup_distributed("cuda") == Dist(3, 4, 1, torch.device("cuda", 1))
    assert group == [("set_device", torch.device("cuda", 1)), ("init", "nccl")]


def test_one_gpu_process_keeps_the_gpu_it_was_given(group, monkeypatch):
    monkeypatch.setattr(md, "parse_device", lambda name: torch.device(name))
    assert md.setup_distributed("cuda:3") == Dist(0, 1, 0, torch.device("cuda", 3))
    assert md.setup_distributed("cuda") == Dist(0, 1, 0, torch.device("cuda", 0))  # no index: the first
    monkeypatch.setenv("LOCAL_RANK", "2")  # a world of one: its local rank does not pick the GPU
    assert md.setup_distributed("cuda:1") == Dist(0, 1, 2, torch.device("cuda", 1))
    assert group == [("set_device", torch.device("cuda", 3)), ("set_device", torch.device("cuda", 0)),
                     ("set_device", torch.device("cuda", 1))]


# ---- fetch_once: the handshake, key by key ----

def values(store: HashStore, keys: list[str]) -> dict[str, str | None]:
    """Each key's value, None where it is not set (a get of a missing key would wait out the store's timeout)."""
    return {k: store.get(k).decode() if store.check([k]) else None for k in keys}


KEYS = ["minigpt2/fetch/0/global", "minigpt2/fetch/0/node0", "minigpt2/fetch/0/node1", "minigpt2/fetch/0/node2"]


@pytest.fixture
def env(monkeypatch):
    for k in ("GROUP_RANK", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_a_world_of_one_fetches_once_without_a_store(env):
    calls = []
    fetch_once(lambda: calls.append(1), Dist(), timeout=1.0)  # no store, no group: it must not look for one
    assert calls == [1]


def test_rank_0_fetches_and_serves_its_node(env):
    store, calls = HashStore(), []
    fetch_once(lambda: calls.append("r0"), Dist(rank=0, world=4), timeout=1.0, store=store)
    assert calls == ["r0"]
    assert values(store, KEYS) == {KEYS[0]: "ok", KEYS[1]: "ok", KEYS[2]: None, KEYS[3]: None}


def test_local_rank_0_of_another_node_fetches_after_rank_0_and_its_node_waits_for_it(env):
    store, calls = HashStore(), []
    env.setenv("GROUP_RANK", "2")
    fetch_once(lambda: calls.append("r0"), Dist(rank=0, world=6), timeout=1.0, store=store)
    assert values(store, KEYS)[KEYS[2 + 1]] == "ok"  # rank 0 served node 2 here, as GROUP_RANK says
    store = HashStore()
    env.setenv("GROUP_RANK", "0")
    fetch_once(lambda: calls.append("r0"), Dist(rank=0, world=6), timeout=1.0, store=store)
    env.setenv("GROUP_RANK", "1")
    fetch_once(lambda: calls.append("n1"), Dist(rank=2, world=6, local_rank=0), timeout=1.0, store=store)
    assert values(store, KEYS) == {KEYS[0]: "ok", KEYS[1]: "ok", KEYS[2]: "ok", KEYS[3]: None}
    fetch_once(lambda: calls.append("n1 second"), Dist(rank=3, world=6, local_rank=1), timeout=1.0, store=store)
    assert calls == ["r0", "r0", "n1"]  # rank 3 waited for node 1's key and fetched nothing


def test_a_rank_that_waits_in_vain_says_for_whom_and_for_how_long(env):
    store = HashStore()
    store.set_timeout(timedelta(seconds=5))
    with pytest.raises(FetchWaitError) as e:
        fetch_once(lambda: None, Dist(rank=1, world=2, local_rank=0), timeout=0.25, store=store, what="weights")
    assert str(e.value) == ("rank 1 waited 0.25 s (fetch_timeout) for global rank 0 to fetch the run's weights, in "
                            "vain; see that rank's output, or raise fetch_timeout for a slow download")
    assert e.value.__cause__ is None and e.value.__suppress_context__
    assert isinstance(e.value, UserError) and isinstance(e.value, TimeoutError)
    store.set("minigpt2/fetch/0/global", "ok")
    env.setenv("GROUP_RANK", "1")
    calls = []
    with pytest.raises(FetchWaitError) as e:
        fetch_once(lambda: calls.append(1), Dist(rank=3, world=4, local_rank=1), timeout=0.25, store=store)
    assert str(e.value) == ("rank 3 waited 0.25 s (fetch_timeout) for local rank 0 of node 1 to fetch the run's "
                            "inputs, in vain; see that rank's output, or raise fetch_timeout for a slow download")
    assert calls == []


def test_a_failed_fetch_is_told_to_the_waiting_ranks_at_once(env):
    env.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    store = HashStore()

    def broken():
        raise OSError("disk full")

    with pytest.raises(OSError, match="^disk full$"):
        fetch_once(broken, Dist(rank=0, world=2), timeout=1.0, store=store)
    assert values(store, ["minigpt2/fetch/2/global", "minigpt2/fetch/2/node0", "minigpt2/fetch/0/global"]) == {
        "minigpt2/fetch/2/global": "failed: OSError: disk full", "minigpt2/fetch/2/node0": None,
        "minigpt2/fetch/0/global": None}  # the restart count read from TORCHELASTIC_RESTART_COUNT
    with pytest.raises(FetchWaitError) as e:
        fetch_once(lambda: None, Dist(rank=1, world=2, local_rank=0), timeout=1.0, store=store, what="data")
    assert str(e.value) == "rank 1: global rank 0 could not fetch the run's data (failed: OSError: disk full)"
    # a restart fetches afresh: its keys are new
    env.setenv("TORCHELASTIC_RESTART_COUNT", "3")
    fetch_once(lambda: None, Dist(rank=0, world=2), timeout=1.0, store=store)
    assert values(store, ["minigpt2/fetch/3/global"]) == {"minigpt2/fetch/3/global": "ok"}

    def interrupted():
        raise KeyboardInterrupt

    env.setenv("GROUP_RANK", "1")
    with pytest.raises(KeyboardInterrupt):
        fetch_once(interrupted, Dist(rank=1, world=2, local_rank=0), timeout=1.0, store=store)
    assert values(store, ["minigpt2/fetch/3/node1"]) == {"minigpt2/fetch/3/node1": "failed: KeyboardInterrupt: "}


def test_the_default_store_is_the_process_groups(env, monkeypatch):
    store = HashStore()
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_store", lambda: store)
    fetch_once(lambda: None, Dist(rank=0, world=2), timeout=1.0)
    assert values(store, KEYS[:2]) == {KEYS[0]: "ok", KEYS[1]: "ok"}


# ---- leave_together ----

class Recorder:
    """A store that records set and wait and passes them on to a HashStore."""

    def __init__(self, log):
        self.store, self.log = HashStore(), log

    def set(self, key, value):
        self.log.append(("set", key, value))
        self.store.set(key, value)

    def wait(self, keys, timeout):
        self.log.append(("wait", keys, timeout))
        self.store.wait(keys, timeout)


@pytest.fixture
def leaving(env, monkeypatch):
    log = []
    store = Recorder(log)
    monkeypatch.setattr(dist, "barrier", lambda: log.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: log.append("destroy"))
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_store", lambda: log.append("store") or store)
    return store


def test_a_world_of_one_leaves_without_a_group(leaving):
    leave_together(Dist())
    assert leaving.log == []


def test_another_rank_says_it_left_and_goes(leaving, env):
    env.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    leave_together(Dist(rank=2, world=3), timeout=5.0)
    assert leaving.log == ["barrier", "store", "destroy", ("set", "minigpt2/left/1/2", "1")]


def test_rank_0_waits_for_every_other_rank_then_leaves(leaving):
    for r in (1, 2):
        leaving.store.set(f"minigpt2/left/0/{r}", "1")
    leave_together(Dist(rank=0, world=3), timeout=7.5)
    assert leaving.log == ["barrier", "store", "destroy",
                           ("wait", ["minigpt2/left/0/1", "minigpt2/left/0/2"], timedelta(seconds=7.5))]


def test_rank_0_stops_waiting_for_a_rank_that_never_says_so(leaving):
    leaving.store.set("minigpt2/left/0/1", "1")
    leave_together(Dist(rank=0, world=3), timeout=0.2)  # rank 2 died: no error here, it printed its own
    assert leaving.log[-1] == ("wait", ["minigpt2/left/0/1", "minigpt2/left/0/2"], timedelta(seconds=0.2))
    leaving.log.clear()
    leave_together(Dist(rank=0, world=2))  # the default timeout: two minutes
    assert leaving.log[-1] == ("wait", ["minigpt2/left/0/1"], timedelta(seconds=120))


# ---- sums and checksums: a real one-rank gloo group, and a stand-in second rank ----

@pytest.fixture
def gloo():
    dist.init_process_group("gloo", store=HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_all_reduce_sum_in_a_world_of_one_is_the_values_themselves():
    v = [0.1, 2.0]
    assert md.all_reduce_sum(v, Dist()) is v


def test_all_reduce_sum_sums_in_float64_over_the_ranks(gloo, monkeypatch):
    got = md.all_reduce_sum([0.1, 1e-300, 3.0], Dist(rank=0, world=2))  # the group is one rank: the sum is itself
    assert got == [0.1, 1e-300, 3.0]  # float32 would give 0.10000000149011612 and 0.0
    seen = []

    def two_ranks(t):  # the other rank holds 1, 2, 3: its values are added in place
        seen.append((t.dtype, t.device))
        t.add_(torch.tensor([1.0, 2.0, 3.0], dtype=t.dtype))

    monkeypatch.setattr(dist, "all_reduce", two_ranks)
    assert md.all_reduce_sum([0.5, 0.25, -3.0], Dist(rank=1, world=2)) == [1.5, 2.25, 0.0]
    assert seen == [(torch.float64, torch.device("cpu"))]


class TwoParams(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([1e8, 1.0, 1.0, 0.5]))  # float32 values; their float32 sum is 1e8
        self.frozen = nn.Parameter(torch.tensor([1000.0]), requires_grad=False)
        self.b = nn.Parameter(torch.tensor([[0.25, -0.125]]))


def test_param_checksums_sum_the_trainable_weights_in_float64_on_every_rank(gloo, monkeypatch):
    module = TwoParams()
    assert md.param_checksums(module, Dist()) == [100000002.625]  # 1e8 + 1 + 1 + 0.5 + 0.25 - 0.125; frozen left out
    gathered = []

    def all_gather(out, local):  # three ranks: this one, and two whose sums are 1 and 2 more
        gathered.append((len(out), local.dtype, local.shape, [t.shape for t in out]))
        for i, t in enumerate(out):
            t.copy_(local + i)

    monkeypatch.setattr(dist, "all_gather", all_gather)
    got = md.param_checksums(module, Dist(rank=0, world=3))
    assert got == [100000002.625, 100000003.625, 100000004.625] and all(type(x) is float for x in got)
    assert gathered == [(3, torch.float64, torch.Size([1]), [torch.Size([1])] * 3)]


# ---- the second round: defaults, a world of exactly two, the waits' own timeouts, tensors on the rank's device ----

def test_the_default_device_is_auto(group, monkeypatch):
    asked = []
    monkeypatch.setattr(md, "parse_device", lambda name: asked.append(name) or torch.device("cpu"))
    assert md.setup_distributed() == Dist()
    assert asked == ["auto"]


def test_two_gpu_processes_take_their_local_ranks_gpu(group, monkeypatch):
    monkeypatch.setattr(md, "parse_device", lambda name: torch.device("cuda", 0))
    torchrun_env(monkeypatch, rank=1, world_size=2, local_rank=1)
    assert md.setup_distributed("cuda:0") == Dist(1, 2, 1, torch.device("cuda", 1))
    assert group == [("set_device", torch.device("cuda", 1)), ("init", "nccl")]


def test_each_wait_is_bounded_by_fetch_timeout_not_the_stores_own(env):
    log = []
    store = Recorder(log)
    store.store.set("minigpt2/fetch/0/global", "ok")
    store.get = store.store.get
    fetch_once(lambda: None, Dist(rank=2, world=3, local_rank=0), timeout=42.5, store=store)
    log.clear()
    fetch_once(lambda: None, Dist(rank=1, world=3, local_rank=1), timeout=3.0, store=store)
    assert log == [("wait", ["minigpt2/fetch/0/global"], timedelta(seconds=3.0)),
                   ("wait", ["minigpt2/fetch/0/node0"], timedelta(seconds=3.0))]


def test_the_sum_and_the_checksums_are_made_on_the_ranks_device(monkeypatch):
    """NCCL reduces GPU tensors only: the tensors handed to the collective are on `d.device` (the meta device stands
    in for a GPU here; reading a meta tensor's values then fails, which is not what is tested)."""
    seen = []
    monkeypatch.setattr(dist, "all_reduce", lambda t: seen.append(("reduce", t.device)))
    monkeypatch.setattr(dist, "all_gather", lambda out, local: seen.append(("gather", local.device,
                                                                            [t.device for t in out])))
    meta = Dist(rank=0, world=2, device=torch.device("meta"))
    with pytest.raises(Exception):
        md.all_reduce_sum([1.0], meta)
    with pytest.raises(Exception):
        md.param_checksums(TwoParams(), meta)
    assert seen == [("reduce", torch.device("meta")),
                    ("gather", torch.device("meta"), [torch.device("meta")] * 2)]

"""bench/bench_lora.py on fake workers, a fake clock and fake memory readings, plus the tiny models themselves:
the trainable-parameter counts worked by hand, each side's loss and LoRA settings, the tokens/s and peak MiB of a
variant (medians and maxima of the timed steps only, which differ here from the means, the minima, the last
values and what the warm-up steps would give), the rows `run` builds, the lines and JSON `main` prints and writes,
the worker's command line and its replies. Written to kill the survivors of
`python tools/mutate.py --auto bench/bench_lora.py`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench import bench_lora
from bench.common import Row, print_table
from tests.minigpt2.test_train import one_thread  # noqa: F401  (autouse fixture: one torch thread)

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("minigpt2-lora", "peft-lora", "minigpt2-full")
MiB = 2**20

# Trainable parameters of the tiny preset (C = 32, 2 layers, MLP 4C = 128, V 50257, 128 positions), by hand:
#   ours, LoRA on attn+mlp: per layer query, key, value and attn c_proj r (C + C) each, c_fc r (C + 4C),
#     mlp c_proj r (4C + C): r (4 * 64 + 2 * 160) = 576 r; two layers 1152 r: r 8 -> 9,216, r 256 -> 294,912
#   peft, c_attn (fused q,k,v) r (C + 3C) = 128 r, both c_proj 160 r and 64 r, c_fc 160 r: 512 r a layer;
#     two layers 1024 r: r 8 -> 8,192, r 256 -> 262,144
#   full fine-tuning: wte 50257 * 32 = 1,608,224, wpe 128 * 32 = 4,096, per layer ln 2 * 64, q k v (32*32 + 32)
#     * 3 = 3,168, c_proj 1,056, c_fc 32*128 + 128 = 4,224, mlp c_proj 128*32 + 32 = 4,128: 12,704 a layer,
#     25,408 for two, ln_f 64 (the LM head is wte's weight): 1,637,792
OURS = {8: 9_216, 256: 294_912}
PEFT = {8: 8_192, 256: 262_144}
FULL = 1_637_792


def small_ids(seed=3):
    return torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------- the tiny models themselves

@pytest.mark.parametrize("rank", [8, 256])
def test_minigpt2_lora_model_counts_settings_and_loss(rank, monkeypatch):
    import minigpt2.fast as speed

    calls = []
    real = speed.for_training
    monkeypatch.setattr(speed, "for_training", lambda m, d: (calls.append((m, d)), real(m, d))[1])
    torch.manual_seed(0)
    ids = small_ids()
    model, loss_fn = bench_lora._minigpt2_model("minigpt2-lora", torch.device("cpu"), rank, "tiny", ids)
    assert calls == [(model, torch.device("cpu"))]
    assert model.config.n_embd == 32 and model.config.n_layer == 2
    assert all(m.training for m in model.modules())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == OURS[rank]
    loras = {n: m for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert len(loras) == 12  # q, k, v, attn c_proj, c_fc, mlp c_proj in each of 2 layers
    assert {(m.r, m.alpha, m.scaling, m.dropout.p if hasattr(m.dropout, "p") else 0.0) for m in loras.values()} \
        == {(rank, 16.0, 16.0 / rank, 0.0)}
    with torch.no_grad():
        for m in loras.values():
            m.lora_B.normal_()  # a nonzero adapter, so its scale shows in the loss
    model.eval()
    logits = F.linear(model(ids), model.wte.weight)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 50257), ids[:, 1:].reshape(-1))
    assert loss_fn().item() == pytest.approx(expected.item(), rel=1e-5)


def test_minigpt2_full_model_trains_every_weight():
    torch.manual_seed(0)
    model, _ = bench_lora._minigpt2_model("minigpt2-full", torch.device("cpu"), 8, "tiny", small_ids())
    assert not any(hasattr(m, "lora_A") for m in model.modules())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == FULL
    assert all(p.requires_grad for p in model.parameters())


def test_each_side_is_built_on_the_device_asked_for():
    # "meta": a device other than the CPU default that needs no GPU (tensors without data)
    ids = torch.randint(0, 50257, (2, 12), device="meta")
    for variant in ("minigpt2-lora", "minigpt2-full"):
        model, _ = bench_lora._minigpt2_model(variant, torch.device("meta"), 8, "tiny", ids)
        assert {p.device.type for p in model.parameters()} == {"meta"}, variant
    model, _ = bench_lora._peft_model(torch.device("meta"), 8, "tiny", ids)
    assert {p.device.type for p in model.parameters()} == {"meta"}


@pytest.mark.parametrize("rank", [8, 256])
def test_peft_model_counts_settings_and_loss(rank):
    torch.manual_seed(0)
    ids = small_ids()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, loss_fn = bench_lora._peft_model(torch.device("cpu"), rank, "tiny", ids)
    # GPT-2's Conv1D holds its weight as (in, out): peft is told so (`fan_in_fan_out`), not left to correct it
    assert not [w for w in caught if "fan_in_fan_out" in str(w.message)]
    assert all(m.training for m in model.modules())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == PEFT[rank]
    cfg = model.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha, set(cfg.target_modules), cfg.lora_dropout, cfg.fan_in_fan_out) == \
        (rank, 16.0, {"c_attn", "c_proj", "c_fc"}, 0.0, True)
    hf = model.base_model.model.config
    assert (hf.n_embd, hf.n_layer, hf.n_head, hf.n_positions, hf.vocab_size) == (32, 2, 2, 128, 50257)
    assert (hf.resid_pdrop, hf.embd_pdrop, hf.attn_pdrop) == (0.1, 0.1, 0.1)
    assert hf._attn_implementation == "sdpa"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.eval()
    logits = model(input_ids=ids).logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 50257), ids[:, 1:].reshape(-1))
    assert loss_fn().item() == pytest.approx(expected.item(), rel=1e-5)


def test_build_step_counts_of_each_variant_at_rank_8():
    for variant, count in (("minigpt2-lora", OURS[8]), ("peft-lora", PEFT[8]), ("minigpt2-full", FULL)):
        _, n = bench_lora.build_step(variant, torch.device("cpu"), 8, False, config="tiny")
        assert n == count, variant


# ---------------------------------------------------------------------------------- build_step on a stand-in

class Stand(torch.nn.Module):
    """Two trainable tensors (3 + 4 numbers) and a frozen one (5)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.ones(3))
        self.b = torch.nn.Parameter(torch.ones(2, 2))
        self.frozen = torch.nn.Parameter(torch.ones(5), requires_grad=False)


def stand_in(monkeypatch, log):
    def model(*args):
        log.append(("model", args))
        m = Stand()

        def loss_fn():
            log.append(("autocast", torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return (m.a.sum() * 2 + m.b.sum() + m.frozen.sum()).float()
        log.append(("built", m))
        return m, loss_fn
    return model


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("variant", ["minigpt2-lora", "minigpt2-full", "peft-lora"])
def test_build_step_on_a_stand_in(monkeypatch, variant, bf16):
    log = []
    monkeypatch.setattr(bench_lora, "_minigpt2_model", stand_in(monkeypatch, log))
    monkeypatch.setattr(bench_lora, "_peft_model", stand_in(monkeypatch, log))
    opts = []
    real = bench_lora._optimizer

    def optimizer(params, device):
        opts.append((list(params), device))
        return real(params, device)
    monkeypatch.setattr(bench_lora, "_optimizer", optimizer)
    torch.manual_seed(123)  # build_step seeds itself
    default = torch.get_autocast_dtype("cpu")
    torch.set_autocast_dtype("cpu", torch.float16)  # so that an autocast left at its default dtype shows
    try:
        step, n = bench_lora.build_step(variant, torch.device("cpu"), 256, bf16, config="tiny")
        step()
    finally:
        torch.set_autocast_dtype("cpu", default)
    assert n == 3 + 4
    (_, args), (_, m) = log[:2]
    torch.manual_seed(0)
    expected_ids = torch.randint(0, 50257, (8, 128))
    if variant == "peft-lora":
        device, rank, config, ids = args
    else:
        got_variant, device, rank, config, ids = args
        assert got_variant == variant
    assert (device, rank, config) == (torch.device("cpu"), 256, "tiny")
    assert torch.equal(ids, expected_ids) and ids.device.type == "cpu"
    assert len(opts) == 1 and opts[0][1] == torch.device("cpu")
    assert [id(p) for p in opts[0][0]] == [id(m.a), id(m.b)]
    assert log[2][:2] == ("autocast", bf16)
    if bf16:
        assert log[2][2] == torch.bfloat16
    # one AdamW step of lr 1e-4 moves each trained weight by 1e-4 against its gradient's sign; grads set to None
    assert torch.allclose(m.a.detach(), torch.full((3,), 1 - 1e-4)) and torch.allclose(m.b.detach(),
                                                                                        torch.full((2, 2), 1 - 1e-4))
    assert torch.equal(m.frozen.detach(), torch.ones(5))
    assert m.a.grad is None and m.b.grad is None
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("variant", ["minigpt2-lora", "peft-lora"])
def test_build_step_builds_gpt2_small_by_default(monkeypatch, variant):
    log = []
    monkeypatch.setattr(bench_lora, "_minigpt2_model", stand_in(monkeypatch, log))
    monkeypatch.setattr(bench_lora, "_peft_model", stand_in(monkeypatch, log))
    bench_lora.build_step(variant, torch.device("cpu"), 8, False)
    assert log[0][1][-2] == "gpt2"


def test_build_step_draws_its_batch_on_the_device(monkeypatch):
    log = []
    monkeypatch.setattr(bench_lora, "_minigpt2_model", stand_in(monkeypatch, log))
    monkeypatch.setattr(bench_lora, "_optimizer", lambda params, device: None)
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: None)  # torch has no autocast for "meta"
    bench_lora.build_step("minigpt2-lora", torch.device("meta"), 8, False, config="tiny")
    ids = log[0][1][-1]
    assert ids.device.type == "meta" and ids.shape == (8, 128) and ids.dtype == torch.int64


def test_build_step_refuses_an_unknown_variant():
    with pytest.raises(ValueError) as e:
        bench_lora.build_step("lora", torch.device("cpu"), 8, False, config="tiny")
    assert str(e.value) == "unknown variant 'lora'; expected one of ('minigpt2-lora', 'peft-lora', 'minigpt2-full')"


def test_optimizer_is_fused_adamw_at_1e_4_over_the_given_tensors():
    params = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))]
    opt = bench_lora._optimizer(params, torch.device("cpu"))
    assert type(opt) is torch.optim.AdamW
    assert opt.defaults["lr"] == 1e-4 and opt.defaults["fused"] is True
    assert opt.defaults["weight_decay"] == 0.01 and opt.defaults["betas"] == (0.9, 0.999)  # torch's own defaults
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in params]


# ---------------------------------------------------------------------------------- worker: one process's loop

class Clock:
    def __init__(self, readings, log):
        self.readings, self.log = list(readings), log

    def perf_counter(self):
        t = self.readings.pop(0)
        self.log.append(("clock", t))
        return t


class FakeFile:
    def __init__(self, path, mode, log):
        self.path, self.mode, self.log = path, mode, log

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.log.append(("closed", self.path))

    def write(self, s):
        self.log.append(("write", self.path, self.mode, s))


def fake_worker_env(monkeypatch, log, stdin="step\nstep\n"):
    monkeypatch.setattr(bench_lora, "set_threads", lambda n=None: log.append(("threads", n)) or n)
    hwm = iter([5000, 9000])
    monkeypatch.setattr(bench_lora, "proc_status_bytes", lambda key: 1000 if key == "VmRSS" else
                        next(hwm) if key == "VmHWM" else pytest.fail(f"read {key!r}"))

    def build(variant, device, rank, bf16, config):
        log.append(("build", variant, device, rank, bf16, config))
        return (lambda: log.append(("step",))), 4321
    monkeypatch.setattr(bench_lora, "build_step", build)
    monkeypatch.setattr(bench_lora, "time", types.SimpleNamespace(perf_counter=Clock([10.0, 10.5, 20.0, 20.25],
                                                                                       log).perf_counter))
    monkeypatch.setattr(bench_lora, "sync", lambda: log.append(("sync",)))
    monkeypatch.setattr(bench_lora, "open", lambda path, mode="r": FakeFile(path, mode, log), raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    monkeypatch.setattr(sys, "stdout", Out(log))


class Out(io.StringIO):
    """stdout that logs each line it is given and each flush (the parent reads a line as soon as it is flushed)."""

    def __init__(self, log):
        super().__init__()
        self.log = log

    def write(self, s):
        if s.strip():
            self.log.append(("out", s))
        return super().write(s)

    def flush(self):
        self.log.append(("flush",))


def test_worker_on_cpu_answers_each_line_with_its_step_time_and_peak(monkeypatch):
    log = []
    fake_worker_env(monkeypatch, log)
    bench_lora.worker("peft-lora", "cpu", 3, 256, True, "tiny")
    # baseline VmRSS 1000; peaks 5000 and 9000 bytes; steps 10.5 - 10 = 0.5 s and 20.25 - 20 = 0.25 s
    clear = [("write", "/proc/self/clear_refs", "w", "5"), ("closed", "/proc/self/clear_refs")]
    assert log == [("threads", 3), ("build", "peft-lora", torch.device("cpu"), 256, True, "tiny"),
                   ("out", '{"ready": true, "trainable": 4321}'), ("flush",),
                   *clear, ("clock", 10.0), ("step",), ("sync",), ("clock", 10.5),
                   ("out", '{"seconds": 0.5, "peak_bytes": 4000, "peak_abs": 5000}'), ("flush",),
                   *clear, ("clock", 20.0), ("step",), ("sync",), ("clock", 20.25),
                   ("out", '{"seconds": 0.25, "peak_bytes": 8000, "peak_abs": 9000}'), ("flush",)]


def test_worker_on_cuda_reads_the_allocators_peak(monkeypatch):
    log = []
    fake_worker_env(monkeypatch, log, stdin="step\n")
    monkeypatch.setattr(bench_lora, "proc_status_bytes", lambda key: pytest.fail("RSS read on CUDA"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: log.append(("cuda sync",)))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: log.append(("reset",)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 7 * MiB)
    bench_lora.worker("minigpt2-lora", "cuda", 2, 8, False)
    assert log == [("threads", 2), ("build", "minigpt2-lora", torch.device("cuda"), 8, False, "gpt2"),
                   ("out", '{"ready": true, "trainable": 4321}'), ("flush",),
                   ("cuda sync",), ("reset",), ("clock", 10.0), ("step",), ("sync",), ("clock", 10.5),
                   ("out", '{"seconds": 0.5, "peak_bytes": 7340032, "peak_abs": 7340032}'),  # baseline 0 on CUDA
                   ("flush",)]


# ---------------------------------------------------------------------------------- Worker: the parent's handle

class FakeStdin:
    def __init__(self, log):
        self.log = log

    def write(self, s):
        self.log.append(("write", s))

    def flush(self):
        self.log.append(("flush",))

    def close(self):
        self.log.append(("close stdin",))


class FakeProc:
    instances = []

    def __init__(self, cmd, **kwargs):
        self.cmd, self.kwargs, self.log = cmd, kwargs, []
        self.stdin = FakeStdin(self.log)
        self.stdout = io.StringIO(FakeProc.out)
        self.returncode = FakeProc.returncode
        kwargs["stderr"].write(FakeProc.err)
        FakeProc.instances.append(self)

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        self.log.append(("wait", timeout))


@pytest.fixture
def fake_popen(monkeypatch):
    FakeProc.instances, FakeProc.out, FakeProc.err, FakeProc.returncode = [], "", "", None
    monkeypatch.setattr(subprocess, "Popen", FakeProc)
    return FakeProc


@pytest.mark.parametrize("bf16", [False, True])
def test_worker_handle_command_line_environment_and_folder(fake_popen, monkeypatch, bf16):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    monkeypatch.setenv("BENCH_LORA_TEST_MARK", "kept")
    w = bench_lora.Worker("peft-lora", "cuda:1", 3, 256, bf16, "tiny")
    p = fake_popen.instances[0]
    assert w.variant == "peft-lora" and w.trainable == 0 and w.proc is p
    assert p.cmd == [sys.executable, "-m", "bench.bench_lora", "--worker", "peft-lora", "--device", "cuda:1",
                     "--threads", "3", "--rank", "256", "--config", "tiny"] + (["--bf16"] if bf16 else [])
    assert p.kwargs["stdin"] == subprocess.PIPE and p.kwargs["stdout"] == subprocess.PIPE
    assert p.kwargs["stderr"] is w.err and p.kwargs["text"] is True
    assert Path(p.kwargs["cwd"]) == ROOT
    env = p.kwargs["env"]
    assert env["PYTHONPATH"] == f"{ROOT}{os.pathsep}/somewhere/else" and env["BENCH_LORA_TEST_MARK"] == "kept"
    w.close()


def test_worker_handle_without_pythonpath(fake_popen, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    w = bench_lora.Worker("minigpt2-lora", "cpu", 1, 8, False, "gpt2")
    assert fake_popen.instances[0].kwargs["env"]["PYTHONPATH"] == f"{ROOT}{os.pathsep}"
    w.close()


def test_a_dead_worker_with_a_short_stderr_shows_all_of_it(fake_popen):
    fake_popen.err = "Traceback: boom\n"
    w = bench_lora.Worker("minigpt2-full", "cpu", 1, 8, False, "tiny")
    with pytest.raises(RuntimeError) as e:
        w.read()
    assert str(e.value) == "benchmark worker minigpt2-full died:\nTraceback: boom\n"
    w.close()


def test_worker_handle_steps_reads_and_closes(fake_popen):
    fake_popen.out = '{"ready": true, "trainable": 12}\n{"seconds": 0.5, "peak_bytes": 3}\n'
    w = bench_lora.Worker("minigpt2-lora", "cpu", 1, 8, False, "tiny")
    p = fake_popen.instances[0]
    assert w.read() == {"ready": True, "trainable": 12}
    assert p.log == []
    assert w.step() == {"seconds": 0.5, "peak_bytes": 3}
    assert p.log == [("write", "step\n"), ("flush",)]
    w.close()
    assert p.log[2:] == [("close stdin",), ("wait", 60)] and w.err.closed


def test_worker_handle_of_an_ended_process_only_closes_its_error_file(fake_popen):
    fake_popen.returncode = 1
    w = bench_lora.Worker("minigpt2-lora", "cpu", 1, 8, False, "tiny")
    w.close()
    assert fake_popen.instances[0].log == [] and w.err.closed


def test_a_dead_worker_is_named_with_the_last_3000_characters_of_its_stderr(fake_popen):
    digits = "".join(str(i % 10) for i in range(4000))
    fake_popen.err = "START" + digits
    w = bench_lora.Worker("peft-lora", "cpu", 1, 8, False, "tiny")
    with pytest.raises(RuntimeError) as e:
        w.read()
    assert str(e.value) == "benchmark worker peft-lora died:\n" + digits[-3000:]
    w.close()


# ---------------------------------------------------------------------------------- measure: turns and figures

class Scripted:
    """A Worker that answers from a script: its trainable count, then one reading per step."""
    log: list = []
    scripts: dict = {}
    made: list = []

    def __init__(self, variant, device, threads, rank, bf16, config):
        self.variant, self.args = variant, (variant, device, threads, rank, bf16, config)
        self.trainable = 0
        self.readings = list(Scripted.scripts[variant])
        Scripted.made.append(self)

    def read(self):
        Scripted.log.append(("read", self.variant))
        return {"ready": True, "trainable": {"minigpt2-lora": 111, "peft-lora": 222, "minigpt2-full": 333}[
            self.variant]}

    def step(self):
        Scripted.log.append(("step", self.variant))
        r = self.readings.pop(0)
        if r is None:
            raise RuntimeError("worker died")
        return r

    def close(self):
        Scripted.log.append(("close", self.variant))


def reading(seconds, peak, peak_abs):
    return {"seconds": seconds, "peak_bytes": peak, "peak_abs": peak_abs}


@pytest.fixture
def scripted(monkeypatch):
    Scripted.log, Scripted.made = [], []
    monkeypatch.setattr(bench_lora, "Worker", Scripted)
    return Scripted


def test_measure_quick_takes_the_median_and_the_peak_of_three_timed_steps(scripted):
    big = 2**40  # the warm-up step's readings: never counted
    # ours: timed seconds .5004 .1234 .25 -> median .25 (mean .29, min .1234, last .25... the first .5004) ->
    #   8 * 128 / .25 = 4096 tokens/s; peaks 3, 5, 4 MiB -> 5 MiB; absolute 7, 6, 9 MiB -> 9 MiB
    # peft: timed 2, 8, 1 -> median 2 -> 512 tokens/s (last 1, mean 3.67); peaks 1, 0.5, 2.5 MiB -> 2.5 MiB
    scripted.scripts = {
        "minigpt2-lora": [reading(100, big, big), reading(0.5004, 3 * MiB, 7 * MiB), reading(0.1234, 5 * MiB, 6 * MiB),
                          reading(0.25, 4 * MiB, 9 * MiB)],
        "peft-lora": [reading(0.001, big, big), reading(2, MiB, 3 * MiB), reading(8, MiB // 2, MiB),
                      reading(1, 5 * MiB // 2, 2 * MiB)]}
    m = bench_lora.measure(True, "cpu", 3, 256, False, ("minigpt2-lora", "peft-lora"), config="tiny")
    assert [w.args for w in scripted.made] == [("minigpt2-lora", "cpu", 3, 256, False, "tiny"),
                                               ("peft-lora", "cpu", 3, 256, False, "tiny")]
    assert scripted.log == [("read", "minigpt2-lora"), ("read", "peft-lora"),
                            *[("step", v) for _ in range(4) for v in ("minigpt2-lora", "peft-lora")],
                            ("close", "minigpt2-lora"), ("close", "peft-lora")]
    assert m == {
        "minigpt2-lora": {"seconds": 0.25, "tokens_per_s": 4096.0, "peak_mib": 5.0, "peak_abs_mib": 9.0,
                          "step_seconds": [0.5, 0.123, 0.25], "trainable": 111},
        "peft-lora": {"seconds": 2, "tokens_per_s": 512.0, "peak_mib": 2.5, "peak_abs_mib": 3.0,
                      "step_seconds": [2, 8, 1], "trainable": 222},
        "_meta": {"config": "tiny", "device": "cpu", "threads": 3, "warmup": 1, "iters": 3, "batch": 8, "seq": 128,
                  "rank": 256, "alpha": 16.0, "precision": "fp32", "torch": torch.__version__}}


def test_measure_full_takes_seven_timed_steps_after_two_warm_up_ones(scripted):
    # timed 1 2 3 .5 8 9 4 -> sorted .5 1 2 3 4 8 9, median 3 -> 1024 / 3 tokens/s (one warm-up step counted:
    # 60 joins, median 3.5; six timed: 2.5); peaks max of the timed: 6 MiB (the warm-ups' 50 and 70 not counted)
    s = [50, 60, 1, 2, 3, 0.5, 8, 9, 4]
    p = [50, 70, 1, 2, 6, 1, 1, 1, 3]
    scripted.scripts = {"minigpt2-full": [reading(x, y * MiB, 2 * y * MiB) for x, y in zip(s, p)]}
    m = bench_lora.measure(False, "cuda", 1, 8, True, ("minigpt2-full",))
    assert m["minigpt2-full"] == {"seconds": 3, "tokens_per_s": 1024 / 3, "peak_mib": 6.0, "peak_abs_mib": 12.0,
                                  "step_seconds": [1, 2, 3, 0.5, 8, 9, 4], "trainable": 333}
    assert m["_meta"] == {"config": "gpt2", "device": "cuda", "threads": 1, "warmup": 2, "iters": 7, "batch": 8,
                          "seq": 128, "rank": 8, "alpha": 16.0, "precision": "bf16 autocast",
                          "torch": torch.__version__}
    assert scripted.made[0].args == ("minigpt2-full", "cuda", 1, 8, True, "gpt2")
    assert len([e for e in scripted.log if e[0] == "step"]) == 9


def test_measure_default_variants_are_all_three(scripted):
    scripted.scripts = {v: [reading(1, 1, 1)] * 4 for v in VARIANTS}
    m = bench_lora.measure(True, "cpu", 1, 8, False)
    assert [w.variant for w in scripted.made] == list(VARIANTS) and list(m) == [*VARIANTS, "_meta"]


def test_measure_closes_every_worker_when_one_dies(scripted):
    scripted.scripts = {"minigpt2-lora": [reading(1, 1, 1)] * 4, "peft-lora": [reading(1, 1, 1), None]}
    with pytest.raises(RuntimeError, match="worker died"):
        bench_lora.measure(True, "cpu", 1, 8, False, ("minigpt2-lora", "peft-lora"))
    assert scripted.log[-2:] == [("close", "minigpt2-lora"), ("close", "peft-lora")]


# ---------------------------------------------------------------------------------- run: the rows

def fake_measure(calls):
    def measure(quick, device, threads, rank, bf16, variants):
        calls.append((quick, device, threads, rank, bf16, variants))
        base = rank + (1000 if bf16 else 0)
        m = {"minigpt2-lora": {"tokens_per_s": 3.0 * base, "peak_mib": 1.0 * base, "x": 1},
             "peft-lora": {"tokens_per_s": 2.0 * base, "peak_mib": 4.0 * base, "x": 2}}
        if "minigpt2-full" in variants:
            m["minigpt2-full"] = {"tokens_per_s": 1.0 * base, "peak_mib": 8.0 * base, "x": 3}
        m["_meta"] = {"rank": rank, "precision": "bf16 autocast" if bf16 else "fp32"}
        return m
    return measure


def expected_rows(rank, bf16):
    base = rank + (1000 if bf16 else 0)
    precision = "bf16 autocast" if bf16 else "fp32"
    what = f"r{rank} attn+mlp, 8x128" + (", bf16 autocast" if bf16 else "")
    variants = {"minigpt2-lora": {"tokens_per_s": 3.0 * base, "peak_mib": 1.0 * base, "x": 1},
                "peft-lora": {"tokens_per_s": 2.0 * base, "peak_mib": 4.0 * base, "x": 2}}
    if rank == 256 and not bf16:
        variants["minigpt2-full"] = {"tokens_per_s": 1.0 * base, "peak_mib": 8.0 * base, "x": 3}
    extra = {"meta": {"rank": rank, "precision": precision}, "variants": variants, "precision": precision}
    rows = [{"line": f"LoRA train step ({what})", "unit": "tokens/s", "minigpt2": 3.0 * base,
             "peer_name": "transformers+peft LoRA", "peer": 2.0 * base, "higher_is_better": True, "goal": ">= 1.15x",
             "extra": extra, "ratio": 1.5},
            {"line": f"LoRA train step peak memory ({what})", "unit": "MiB", "minigpt2": 1.0 * base,
             "peer_name": "transformers+peft LoRA", "peer": 4.0 * base, "higher_is_better": False,
             "goal": "<= 0.7x (ratio >= 1.43)", "extra": {"precision": precision}, "ratio": 4.0}]
    if "minigpt2-full" in variants:
        rows += [{"line": f"LoRA r{rank} vs full fine-tuning step (8x128)", "unit": "tokens/s", "minigpt2": 3.0 * base,
                  "peer_name": "minigpt2 full FT", "peer": 1.0 * base, "higher_is_better": True, "goal": "info",
                  "extra": {"precision": precision}, "ratio": 3.0},
                 {"line": f"LoRA r{rank} vs full fine-tuning peak memory", "unit": "MiB", "minigpt2": 1.0 * base,
                  "peer_name": "minigpt2 full FT", "peer": 8.0 * base, "higher_is_better": False, "goal": "info",
                  "extra": {"precision": precision}, "ratio": 8.0}]
    return rows


def test_run_builds_every_line_of_each_group(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(bench_lora, "measure", fake_measure(calls))
    monkeypatch.setattr(bench_lora, "bf16_unavailable", lambda device: None)
    rows = bench_lora.run(True, "cpu", 2)
    assert calls == [(True, "cpu", 2, 8, False, ("minigpt2-lora", "peft-lora")),
                     (True, "cpu", 2, 256, False, ("minigpt2-lora", "peft-lora", "minigpt2-full")),
                     (True, "cpu", 2, 8, True, ("minigpt2-lora", "peft-lora")),
                     (True, "cpu", 2, 256, True, ("minigpt2-lora", "peft-lora"))]
    assert [r.to_dict() for r in rows] == [*expected_rows(8, False), *expected_rows(256, False),
                                           *expected_rows(8, True), *expected_rows(256, True)]
    assert capsys.readouterr().err == ""


def test_run_without_bf16_leaves_out_only_the_bf16_groups_wherever_they_are(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(bench_lora, "measure", fake_measure(calls))
    monkeypatch.setattr(bench_lora, "bf16_unavailable", lambda device: "no bf16 here")
    monkeypatch.setattr(bench_lora, "GROUPS", ((8, True, ("minigpt2-lora", "peft-lora")),
                                               (8, False, ("minigpt2-lora", "peft-lora"))))
    rows = bench_lora.run(True, "cpu", 1)
    assert [c[3:5] for c in calls] == [(8, False)] and [r.to_dict() for r in rows] == expected_rows(8, False)


def test_run_without_bf16_says_why_and_leaves_those_lines_out(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(bench_lora, "measure", fake_measure(calls))
    seen = []
    monkeypatch.setattr(bench_lora, "bf16_unavailable", lambda device: seen.append(device) or "no bf16 here")
    rows = bench_lora.run(False, "cuda", 4)
    assert seen == ["cuda"]
    assert [c[3:5] for c in calls] == [(8, False), (256, False)] and all(c[:3] == (False, "cuda", 4) for c in calls)
    assert [r.to_dict() for r in rows] == [*expected_rows(8, False), *expected_rows(256, False)]
    assert capsys.readouterr().err == "[bench] lora: bf16 lines left out: no bf16 here\n"


# ---------------------------------------------------------------------------------- main

def test_main_as_a_worker_passes_its_options(monkeypatch):
    got = []
    monkeypatch.setattr(bench_lora, "worker", lambda *a: got.append(a))
    monkeypatch.setattr(bench_lora, "set_threads", lambda n=None: 5)
    monkeypatch.setattr(bench_lora, "run", lambda *a: pytest.fail("ran the comparison"))
    bench_lora.main(["--worker", "peft-lora", "--device", "cuda:1", "--threads", "3", "--rank", "256", "--bf16",
                     "--config", "tiny"])
    bench_lora.main(["--worker", "minigpt2-lora"])
    assert got == [("peft-lora", "cuda:1", 3, 256, True, "tiny"), ("minigpt2-lora", "cpu", 5, 8, False, "gpt2")]


def test_main_refuses_an_unknown_worker(capsys):
    with pytest.raises(SystemExit):
        bench_lora.main(["--worker", "lora"])
    assert "argument --worker: invalid choice: 'lora'" in capsys.readouterr().err


@pytest.mark.parametrize("cuda", [False, True])
@pytest.mark.parametrize("quick", [False, True])
def test_main_prints_the_table_and_the_json_and_writes_it(monkeypatch, capsys, tmp_path, cuda, quick):
    meta = {"config": "gpt2", "rank": 8}
    rows = [Row("LoRA train step (r8)", "tokens/s", 300.0, "transformers+peft LoRA", 200.0, True, ">= 1.15x",
                {"meta": meta, "precision": "fp32"}),
            Row("LoRA train step peak memory (r8)", "MiB", 100.0, "transformers+peft LoRA", 400.0, False, "info",
                {"precision": "fp32"})]
    calls = []
    monkeypatch.setattr(bench_lora, "run", lambda *a: calls.append(a) or rows)
    monkeypatch.setattr(bench_lora, "set_threads", lambda n=None: 6)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    out = tmp_path / "lora.json"
    bench_lora.main((["--quick"] if quick else []) + ["--json", str(out)])
    assert calls == [(quick, "cuda" if cuda else "cpu", 6)]
    printed = capsys.readouterr().out
    print_table(rows)
    table = capsys.readouterr().out
    payload = {"meta": {"config": "gpt2", "rank": 8}, "rows": [
        {"line": "LoRA train step (r8)", "unit": "tokens/s", "minigpt2": 300.0, "peer_name": "transformers+peft LoRA",
         "peer": 200.0, "higher_is_better": True, "goal": ">= 1.15x", "extra": {"meta": meta, "precision": "fp32"},
         "ratio": 1.5},
        {"line": "LoRA train step peak memory (r8)", "unit": "MiB", "minigpt2": 100.0,
         "peer_name": "transformers+peft LoRA", "peer": 400.0, "higher_is_better": False, "goal": "info",
         "extra": {"precision": "fp32"}, "ratio": 4.0}]}
    assert printed == table + json.dumps(payload, indent=2) + "\n"
    assert json.loads(out.read_text()) == payload


def test_main_without_json_writes_no_file(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench_lora, "run", lambda *a: [Row("l", "u", 1.0, extra={"meta": {}})])
    monkeypatch.setattr(bench_lora, "set_threads", lambda n=None: 1)
    bench_lora.main([])
    assert list(tmp_path.iterdir()) == []


def test_main_help(capsys):
    with pytest.raises(SystemExit):
        bench_lora.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m bench.bench_lora [-h] [--quick] [--json JSON]\n")
    flat = " ".join(out.split())
    assert ("LoRA training step: minigpt2 LoRA vs `transformers` + `peft` LoRA (and minigpt2 full fine-tuning), in "
            "one run.") in flat
    assert "--quick 1 warm-up + 3 timed steps per variant instead of 2 + 7" in flat
    assert "--json JSON also write the rows as JSON to this file" in flat
    for hidden in ("--worker", "--device", "--threads", "--rank", "--bf16", "--config"):
        assert hidden not in out, hidden
    assert "Work:" not in out  # the description is the first paragraph only

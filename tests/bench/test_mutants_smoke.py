"""bench/smoke.py: the path names and the list of paths written out, the random examples, what one path runs (the
model shape, LoRA and int8 settings, the optimizer, autocast, the compiled blocks, the sampling settings) and its
summary against a step written out here, the two failure checks, and `main`'s lines on a fake clock: the header,
PASSED and FAILED lines whole, the count line, the exit code and each error line. Written to kill the survivors
of `python tools/mutate.py --auto bench/smoke.py`."""

from __future__ import annotations

import contextlib
import sys
import types

import pytest
import torch

from bench import smoke
from bench.smoke import SmokePath
from minigpt2.config import GPT2Config
from minigpt2.device import AutocastUnavailable
from minigpt2.generation import generate
from minigpt2.model import GPT2
from tasks import collate, get_task
from tests.minigpt2.test_train import one_thread  # noqa: F401  (autouse fixture: one torch thread)


# ---------------------------------------------------------------------------------- names, paths, examples

def test_path_names_are_padded_columns():
    assert SmokePath("sst", "tiny", "full").name == "sst    tiny full"
    assert SmokePath("sonnet", "124M", "int8-qaft").name == "sonnet 124M int8-qaft"
    assert SmokePath("quora", "124M", "lora").name == "quora  124M lora"
    assert SmokePath("cfimdbx", "large", "lora").name == "cfimdbx large lora"  # longer fields are not cut


def test_paths_tiny_only_and_both_shapes():
    tiny = [("sst", "tiny", "full"), ("sst", "tiny", "lora"), ("cfimdb", "tiny", "full"), ("cfimdb", "tiny", "lora"),
            ("quora", "tiny", "full"), ("quora", "tiny", "lora"), ("sonnet", "tiny", "full"),
            ("sonnet", "tiny", "lora"), ("sonnet", "tiny", "int8-qaft")]
    big = [(t, "124M", m) for t, _, m in tiny]
    assert [(p.task, p.shape, p.method) for p in smoke.paths(True)] == tiny
    assert [(p.task, p.shape, p.method) for p in smoke.paths(False)] == tiny + big
    assert smoke.SHAPES == {"tiny": "tiny", "124M": "gpt2"} and smoke.TASKS == ("sst", "cfimdb", "quora", "sonnet")


@pytest.mark.parametrize("task,labels", [("sst", [0, 1, 2, 3, 4, 0, 1]), ("cfimdb", [0, 1, 0, 1, 0, 1, 0]),
                                         ("quora", [0, 1, 0, 1, 0, 1, 0]), ("sonnet", [None] * 7)])
def test_examples_ids_lengths_labels_and_tokens(task, labels):
    ex = smoke.examples(task, 7, 10, 5)
    assert [e.id for e in ex] == ["0", "1", "2", "3", "4", "5", "6"]
    assert [len(e.input_ids) for e in ex] == [10, 9, 8, 7, 6, 5, 4]
    assert [e.label for e in ex] == labels
    g = torch.Generator().manual_seed(5)  # one generator, rows drawn in turn, tokens below 50000
    assert [e.input_ids for e in ex] == [torch.randint(0, 50000, (10 - i,), generator=g).tolist() for i in range(7)]
    assert smoke.examples(task, 7, 10, 6)[0].input_ids != ex[0].input_ids


def test_example_tokens_span_zero_to_below_50000():
    tokens = [t for e in smoke.examples("sonnet", 40, 400, 0) for t in e.input_ids]
    assert min(tokens) < 100 and 49_900 <= max(tokens) < 50_000


# ---------------------------------------------------------------------------------- run_path on the tiny tasks

class Spies:
    def __init__(self, monkeypatch):
        self.log = []
        real_lora, real_precision, real_generate = smoke.apply_lora, smoke.apply_precision, smoke.generate
        real_autocast, real_adamw, real_build = smoke.autocast_for, torch.optim.AdamW, smoke.GPT2
        self.modules = []

        def lora(module, config):
            self.log.append(("lora", config.rank, config.alpha, config.targets, config.trainable))
            return real_lora(module, config)

        def precision(gpt, name, config):
            self.log.append(("precision", type(gpt).__name__, name, config))
            return real_precision(gpt, name, config)

        def gen(model, prompts, **kw):
            out = real_generate(model, prompts, **kw)
            self.log.append(("generate", type(model).__name__, prompts, kw, out))
            return out

        def autocast(mode, device):
            self.log.append(("autocast", mode, torch.device(device)))
            return real_autocast(mode, device)

        def adamw(params, **kw):
            params = list(params)
            self.log.append(("adamw", sum(p.numel() for p in params), kw))
            return real_adamw(params, **{k: v for k, v in kw.items() if k != "fused"})

        def gpt2(config):
            self.log.append(("gpt2", config.n_embd, config.n_layer))
            m = real_build(config)
            self.modules.append(m)
            return m

        monkeypatch.setattr(smoke, "apply_lora", lora)
        monkeypatch.setattr(smoke, "apply_precision", precision)
        monkeypatch.setattr(smoke, "generate", gen)
        monkeypatch.setattr(smoke, "autocast_for", autocast)
        monkeypatch.setattr(torch.optim, "AdamW", adamw)
        monkeypatch.setattr(smoke, "GPT2", gpt2)


def reference_step(task_name, method="full"):
    """The path's step written out: seed 0, the tiny model, 4 rows of 64 - i tokens (seed 1), AdamW at 1e-4."""
    torch.manual_seed(0)
    task = get_task(task_name)
    module = task.build(GPT2(GPT2Config.from_name("tiny"))).train()
    batch = collate(smoke.examples(task_name, 4, 64, 1), lm_targets=task.lm_targets)
    loss = module(batch)
    loss.backward()
    opt = torch.optim.AdamW([q for q in module.parameters() if q.requires_grad], lr=1e-4)
    opt.step()
    module.eval()
    return module, batch, loss.item()


def test_run_path_full_sst_is_the_step_written_out(monkeypatch):
    module, batch, loss = reference_step("sst")
    with torch.no_grad():
        classes = module.predict(batch).tolist()
    torch.manual_seed(99)  # run_path seeds itself
    summary = smoke.run_path(SmokePath("sst", "tiny", "full"), torch.device("cpu"), "off", False)
    assert summary == f"loss {loss:.3f}, predicted classes {classes}"


def test_run_path_full_sonnet_samples_eight_tokens_from_the_first_row(monkeypatch):
    module, batch, loss = reference_step("sonnet")
    spies = Spies(monkeypatch)
    torch.manual_seed(99)
    summary = smoke.run_path(SmokePath("sonnet", "tiny", "full"), torch.device("cpu"), "off", False)
    (_, model, prompts, kw, out), = [e for e in spies.log if e[0] == "generate"]
    assert model == "GPT2" and prompts == [batch["input_ids"][0, :8].tolist()]
    assert kw == {"max_new_tokens": 8, "temperature": 1.0, "top_p": 0.9, "seed": 0}
    with torch.no_grad():
        expected = generate(module.gpt, prompts, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=0)
    assert out == expected
    assert summary == f"loss {loss:.3f}, sampled {len(expected[0])} tokens"
    assert [e for e in spies.log if e[0] in ("gpt2", "adamw", "autocast")] == [
        ("gpt2", 32, 2), ("adamw", 1_637_792, {"lr": 1e-4}),  # every weight of tiny (worked out in
        ("autocast", "off", torch.device("cpu")), ("autocast", "off", torch.device("cpu"))]  # test_mutants_bench_lora)
    assert not spies.modules[0].training  # evaluated in eval mode


@pytest.mark.parametrize("task,heads", [("sst", ("classifier",)), ("quora", ())])
def test_run_path_lora_trains_adapters_and_the_task_heads(monkeypatch, task, heads):
    spies = Spies(monkeypatch)
    smoke.run_path(SmokePath(task, "tiny", "lora"), torch.device("cpu"), "off", False)
    # LoRA r 8 on attn+mlp of tiny: 1152 r = 9,216 (test_mutants_bench_lora); sst's head 32 * 5 + 5 = 165
    assert [e for e in spies.log if e[0] in ("lora", "adamw")] == [
        ("lora", 8, 16.0, "attn+mlp", heads), ("adamw", 9_216 + (165 if heads else 0), {"lr": 1e-4})]


def test_run_path_int8_qaft_fake_quantizes_the_gpt(monkeypatch):
    from quant.config import QuantConfig
    spies = Spies(monkeypatch)
    summary = smoke.run_path(SmokePath("sonnet", "tiny", "int8-qaft"), torch.device("cpu"), "off", False)
    assert [e for e in spies.log if e[0] in ("precision", "lora")] == [
        ("precision", "GPT2", "int8", QuantConfig.for_precision("int8"))]
    assert summary.startswith("loss ") and summary.endswith(" tokens")


def test_run_path_on_the_124M_shape_builds_gpt2_small(monkeypatch):
    spies = Spies(monkeypatch)

    class Stop(Exception):
        pass

    def gpt2(config):
        spies.log.append(("gpt2", config.n_embd, config.n_layer))
        raise Stop
    monkeypatch.setattr(smoke, "GPT2", gpt2)
    with pytest.raises(Stop):
        smoke.run_path(SmokePath("sst", "124M", "full"), torch.device("cpu"), "off", False)
    assert spies.log == [("gpt2", 768, 12)]


# ---------------------------------------------------------------------------------- run_path on a stand-in task

class StandModule(torch.nn.Module):
    """A task module whose loss is `scale * w.sum()`; `unused` never gets a gradient."""

    def __init__(self, gpt, scale, log):
        super().__init__()
        self.gpt, self.scale, self.log = gpt, scale, log
        self.w = torch.nn.Parameter(torch.ones(3))
        self.unused = torch.nn.Parameter(torch.ones(2))

    def forward(self, batch):
        self.log.append(("forward", self.training, torch.is_autocast_enabled("cpu"), tuple(batch["input_ids"].shape),
                         "targets" in batch, batch["input_ids"].device.type))
        return self.w.sum() * self.scale

    def predict(self, batch):
        self.log.append(("predict", self.training, torch.is_grad_enabled()))
        return torch.tensor([3, 1])


def stand_in_task(monkeypatch, scale, lm=False):
    log = []
    task = types.SimpleNamespace(lm_targets=lm, build=lambda gpt: StandModule(gpt, scale, log))
    monkeypatch.setattr(smoke, "get_task", lambda name: log.append(("task", name)) or task)
    monkeypatch.setattr(smoke, "GPT2", lambda config: torch.nn.Linear(1, 1))
    return log


def test_run_path_on_a_stand_in_reports_its_classes(monkeypatch):
    log = stand_in_task(monkeypatch, 2.0)
    assert smoke.run_path(SmokePath("sst", "tiny", "full"), torch.device("cpu"), "off", False) == \
        "loss 6.000, predicted classes [3, 1]"  # 2 * (1 + 1 + 1); `unused` is not in the loss
    assert log[0] == ("task", "sst")
    # 4 rows, the longest 64 tokens; classification batches have no LM targets
    assert log[1] == ("forward", True, False, (4, 64), False, "cpu")
    assert log[2] == ("predict", False, False)


def test_run_path_on_a_stand_in_lm_task_gets_targets(monkeypatch):
    log = stand_in_task(monkeypatch, 1.0, lm=True)
    monkeypatch.setattr(smoke, "generate", lambda *a, **k: [[1, 2, 3]])
    assert smoke.run_path(SmokePath("sonnet", "tiny", "full"), torch.device("cpu"), "off", False) == \
        "loss 3.000, sampled 3 tokens"
    assert log[1][4] is True


@pytest.mark.parametrize("scale,message", [(float("nan"), "training loss is nan"),
                                           (float("inf"), "training loss is inf"),
                                           (0.0, "no gradient reached the trainable weights")])
def test_run_path_refuses_a_non_finite_loss_and_a_step_without_gradients(monkeypatch, scale, message):
    stand_in_task(monkeypatch, scale)
    with pytest.raises(RuntimeError) as e:
        smoke.run_path(SmokePath("sst", "tiny", "full"), torch.device("cpu"), "off", False)
    assert str(e.value) == message


@pytest.mark.parametrize("scale,loss", [(-1.0, "-3.000"), (0.1, "0.300")])
def test_run_path_passes_with_any_nonzero_gradient(monkeypatch, scale, loss):
    stand_in_task(monkeypatch, scale)  # gradients -1 and 0.1 a number: their absolute sums 3 and 0.3
    assert smoke.run_path(SmokePath("sst", "tiny", "full"), torch.device("cpu"), "off", False) == \
        f"loss {loss}, predicted classes [3, 1]"


def test_run_path_moves_the_module_and_the_batch_to_the_device(monkeypatch):
    seen = []

    class OnDevice(StandModule):
        def forward(self, batch):
            seen.append(({k: v.device.type for k, v in batch.items()}, self.w.device.type))
            return self.w.sum()
    task = types.SimpleNamespace(lm_targets=False, build=lambda gpt: OnDevice(gpt, 1.0, []))
    monkeypatch.setattr(smoke, "get_task", lambda name: task)
    monkeypatch.setattr(smoke, "GPT2", lambda config: torch.nn.Linear(1, 1))
    monkeypatch.setattr(smoke, "autocast_for", lambda mode, device: contextlib.nullcontext())  # none for "meta"
    # "meta": a device other than the CPU that needs no GPU; its loss has no value to read, so the path stops there
    with pytest.raises((RuntimeError, NotImplementedError)):
        smoke.run_path(SmokePath("sst", "tiny", "full"), torch.device("meta"), "off", False)
    assert seen == [({"input_ids": "meta", "attention_mask": "meta", "labels": "meta"}, "meta")]


def test_run_path_on_cuda_asks_for_fused_adamw_and_compiles_when_asked(monkeypatch):
    log = stand_in_task(monkeypatch, 1.0)
    seen = []
    monkeypatch.setattr(smoke, "fused_adamw", lambda device: seen.append(("fused?", device)) or True)
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, **kw: seen.append(("adamw", kw)) or
                        types.SimpleNamespace(step=lambda: seen.append(("step",))))

    class Compiled:
        def __init__(self, module):
            seen.append(("compiled", type(module).__name__))

        @contextlib.contextmanager
        def active(self):
            seen.append(("enter",))
            yield
            seen.append(("exit",))
    monkeypatch.setattr(smoke, "CompiledBlocks", Compiled)
    smoke.run_path(SmokePath("sst", "tiny", "full"), torch.device("cpu"), "off", True)
    assert seen == [("fused?", torch.device("cpu")), ("adamw", {"lr": 1e-4, "fused": True}),
                    ("compiled", "StandModule"), ("enter",), ("exit",), ("step",)]
    seen.clear()
    smoke.run_path(SmokePath("sst", "tiny", "full"), torch.device("cpu"), "off", False)
    assert seen == [("fused?", torch.device("cpu")), ("adamw", {"lr": 1e-4, "fused": True}), ("step",)]
    assert ("forward", True, False, (4, 64), False, "cpu") in log


def test_run_path_trains_and_evaluates_under_the_autocast_asked_for(monkeypatch):
    log = stand_in_task(monkeypatch, 1.0)
    modes = []
    monkeypatch.setattr(smoke, "autocast_for", lambda mode, device: modes.append((mode, device)) or
                        torch.autocast("cpu", dtype=torch.bfloat16))
    smoke.run_path(SmokePath("sst", "tiny", "full"), torch.device("cpu"), "bf16", False)
    assert modes == [("bf16", torch.device("cpu"))] * 2
    assert log[1][2] is True  # the loss under autocast


# ---------------------------------------------------------------------------------- main

class FakeTime:
    """Each path starts at 100 s and ends after 1.25, 12.5, 0.04, ... s."""

    def __init__(self, durations):
        self.readings = [x for d in durations for x in (100.0, 100.0 + d)]

    def time(self):
        return self.readings.pop(0)


def boom():
    raise ValueError("bad dtype")


BOOM_LINE = boom.__code__.co_firstlineno + 1


def run_main(monkeypatch, argv, outcomes, durations, capsys, autocast_dtype=None):
    """main with run_path answering from `outcomes` (a summary, or an exception to raise)."""
    calls = []
    queue = list(outcomes)

    def run_path(p, device, mode, compile):
        calls.append((p.name, device, mode, compile))
        o = queue.pop(0)
        if o is None:
            boom()
        if isinstance(o, Exception):
            raise o
        return o
    monkeypatch.setattr(smoke, "run_path", run_path)
    monkeypatch.setattr(smoke, "time", FakeTime(durations))
    if autocast_dtype is not None:
        monkeypatch.setattr(smoke, "autocast_dtype", autocast_dtype)
    code = smoke.main(argv)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err, calls


def test_main_prints_a_line_per_path_and_the_count(monkeypatch, capsys):
    monkeypatch.setattr(smoke, "TASKS", ("sst", "quora"))
    outcomes = ["loss 1.000, ok", None, RuntimeError("no gradient reached the trainable weights"), "fine", "x"]
    code, lines, err, calls = run_main(monkeypatch, ["--device", "cpu", "--tiny-only", "--autocast", "off"],
                                       outcomes, [1.25, 12.5, 0.04, 123.375, 0.0], capsys)
    assert code == 1 and err == ""
    where = f"({__file__}:{BOOM_LINE})"
    assert lines == [
        f"smoke on cpu (CPU), torch {torch.__version__}, autocast off, compile on",
        # the name in 24 columns, a space, the seconds in 6 (1.25 rounds to even: 1.2)
        "PASSED  sst    tiny full            1.2 s  loss 1.000, ok",
        f"FAILED  sst    tiny lora           12.5 s  ValueError: bad dtype {where}",
        "FAILED  quora  tiny full            0.0 s  RuntimeError: no gradient reached the trainable weights "
        f"({__file__}:{run_main.__code__.co_firstlineno + 11})",
        "PASSED  quora  tiny lora          123.4 s  fine",
        "PASSED  sonnet tiny int8-qaft       0.0 s  x",
        "3 of 5 paths passed"]
    assert calls == [(name, torch.device("cpu"), "off", True) for name in
                     ("sst    tiny full", "sst    tiny lora", "quora  tiny full", "quora  tiny lora",
                      "sonnet tiny int8-qaft")]


def test_main_all_passed_exits_0_and_both_shapes_without_tiny_only(monkeypatch, capsys):
    monkeypatch.setattr(smoke, "TASKS", ("sst",))
    code, lines, _, calls = run_main(monkeypatch, ["--device", "cpu", "--autocast", "off", "--no-compile"],
                                     ["a"] * 6, [1.0] * 6, capsys)
    assert code == 0 and lines[0].endswith("autocast off, compile off") and lines[-1] == "6 of 6 paths passed"
    assert [c[0] for c in calls] == ["sst    tiny full", "sst    tiny lora", "sonnet tiny int8-qaft",
                                     "sst    124M full", "sst    124M lora", "sonnet 124M int8-qaft"]
    assert all(c[3] is False for c in calls)


@pytest.mark.parametrize("answer,mode", [(torch.bfloat16, "bf16"), (None, "off"), ("raise", "off")])
def test_main_auto_autocast_is_bf16_where_native(monkeypatch, capsys, answer, mode):
    asked = []

    def dtype(m, device):
        asked.append((m, device))
        if m == "bf16" and answer == "raise":
            raise AutocastUnavailable("autocast", "'bf16'", "a device with native bf16")
        return answer if m == "bf16" else None
    monkeypatch.setattr(smoke, "TASKS", ())
    code, lines, err, calls = run_main(monkeypatch, ["--device", "cpu", "--tiny-only"], ["s"], [2.0], capsys,
                                       autocast_dtype=dtype)
    assert asked == [("bf16", torch.device("cpu")), (mode, torch.device("cpu"))]
    assert lines[0] == f"smoke on cpu (CPU), torch {torch.__version__}, autocast {mode}, compile on"
    assert calls == [("sonnet tiny int8-qaft", torch.device("cpu"), mode, True)] and code == 0 and err == ""


def test_main_refuses_bf16_where_it_is_not_native(monkeypatch, capsys):
    def dtype(m, device):
        raise AutocastUnavailable("autocast", "'bf16'", "a device with native bf16")
    code, lines, err, calls = run_main(monkeypatch, ["--device", "cpu", "--autocast", "bf16"], [], [], capsys,
                                       autocast_dtype=dtype)
    assert code == 1 and lines == [] and calls == []
    assert err == "error: autocast 'bf16': expected a device with native bf16\n"


def test_main_names_a_bad_device(monkeypatch, capsys):
    with pytest.raises(RuntimeError) as e:
        torch.device("bogus")
    code, lines, err, calls = run_main(monkeypatch, ["--device", "bogus"], [], [], capsys)
    assert code == 1 and lines == [] and err == f"error: --device 'bogus': {e.value}\n"


def test_main_without_cuda_names_the_device_asked_for(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, lines, err, _ = run_main(monkeypatch, ["--device", "cuda:1"], [], [], capsys)
    assert code == 1 and lines == []
    assert err == "error: --device cuda:1: no CUDA device is available (use --device cpu --tiny-only)\n"


def test_main_on_cuda_names_the_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: f"Fake GPU {d}")
    monkeypatch.setattr(smoke, "TASKS", ())
    code, lines, _, calls = run_main(monkeypatch, ["--tiny-only", "--autocast", "off"], ["s"], [1.0], capsys,
                                     autocast_dtype=lambda m, d: None)
    assert lines[0] == f"smoke on cuda (Fake GPU cuda), torch {torch.__version__}, autocast off, compile on"
    assert calls[0][1] == torch.device("cuda") and code == 0


def test_main_help(capsys):
    with pytest.raises(SystemExit):
        smoke.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m bench.smoke [-h] [--device DEVICE] [--tiny-only]")
    flat = " ".join(out.split())
    for text in ["A smoke test of the paths a GPU user takes: every task at tiny and 124M shapes, full / LoRA / int8 "
                 "QAFT, under autocast and `--compile`, one training step and one evaluation each, each reported as "
                 "PASSED or FAILED.",
                 "--device DEVICE cuda (default), cuda:1, cpu",
                 "--tiny-only only the tiny shape (fast; the CPU check)",
                 "--autocast {auto,bf16,off} auto: bf16 on CUDA with bf16, and on CPUs with native bf16 (smoke tests "
                 "the bf16 path); off: fp32",
                 "--no-compile run the blocks eager instead of torch.compile'd"]:
        assert text in flat, text
    assert "about a minute" not in out and "random-init" not in out  # the description is the first paragraph


def test_main_refuses_an_unknown_autocast(capsys):
    with pytest.raises(SystemExit):
        smoke.main(["--autocast", "fp16"])
    assert "argument --autocast: invalid choice: 'fp16' (choose from 'auto', 'bf16', 'off')" in \
        capsys.readouterr().err


def test_main_flushes_each_path_line(monkeypatch, capsys):
    log = []

    class Out:
        def write(self, s):
            if s.strip():
                log.append(s.split()[0])

        def flush(self):
            log.append("flush")
    monkeypatch.setattr(smoke, "TASKS", ())
    monkeypatch.setattr(smoke, "run_path", lambda p, *a: "ok" if p.shape == "tiny" else boom())
    monkeypatch.setattr(smoke, "time", FakeTime([1.0, 1.0]))
    monkeypatch.setattr(sys, "stdout", Out())
    assert smoke.main(["--device", "cpu", "--autocast", "off"]) == 1
    assert log == ["smoke", "PASSED", "flush", "FAILED", "flush", "1"]  # a line as soon as its path ends

"""The arithmetic of bench/bench_core.py against values worked by hand: a training step's FLOPs (PaLM's
convention), the rows of `bench_train` (tokens/s, the matmul peak, the MFU) on fake timings, the sonnet prompts'
lengths and the left-padded batch. Written to kill the survivors of
`python tools/mutate.py --auto bench/bench_core.py --function train_step_flops --function bench_train
--function sonnet_prompts --function left_padded`."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench import bench_core
from minigpt2.config import GPT2Config
from minigpt2.model import GPT2


# PaLM's model FLOPs of a training step: 6 N per token (N: the matmul weights, the blocks' linears and the tied
# head; forward 2 N, backward 4 N) plus 12 L C T per token for attention's scores and values.
#   N = L x 12 C^2 (q, k, v, out: 4 C^2; MLP up and down: 8 C^2) + V C
#
# tiny (L 2, C 32, V 50257), batch 2 x seq 32 = 64 tokens:
#   N = 2 x 12 x 1024 + 50257 x 32 = 24576 + 1608224 = 1632800;  6 N = 9796800
#   attention 12 x 2 x 32 x 32 = 24576;  per token 9821376;  x 64 = 628568064
# small (L 3, C 16, V 100), batch 2 x seq 5 = 10 tokens (batch and seq differ: attention reads T = seq):
#   N = 3 x 12 x 256 + 100 x 16 = 9216 + 1600 = 10816;  6 N = 64896
#   attention 12 x 3 x 16 x 5 = 2880;  per token 67776;  x 10 = 677760
# gpt2 (L 12, C 768, V 50257), 8 x 128 = 1024 tokens:
#   N = 12 x 12 x 589824 + 50257 x 768 = 84934656 + 38597376 = 123532032;  6 N = 741192192
#   attention 12 x 12 x 768 x 128 = 14155776;  per token 755347968;  x 1024 = 773476319232
TINY_FLOPS = 628568064
SMALL = GPT2Config(vocab_size=100, n_positions=64, n_embd=16, n_layer=3, n_head=2)


def test_train_step_flops_by_hand():
    assert bench_core.train_step_flops(GPT2Config.from_name("tiny"), 2, 32) == TINY_FLOPS
    assert bench_core.train_step_flops(SMALL, 2, 5) == 677760
    assert bench_core.train_step_flops(SMALL, 5, 2) == 10 * (64896 + 12 * 3 * 16 * 2)  # T = 2 now: 65280 a token
    assert bench_core.train_step_flops(GPT2Config.from_name("gpt2"), 8, 128) == 773476319232


# bench_train on fake timings: 2 warm-up and 3 timed turns asked; the medians our step 0.5 s, transformers' 2.0 s,
# three 256^3 products 0.25 s.
#   tokens/s: 2 x 32 = 64 tokens -> 64 / 0.5 = 128 and 64 / 2 = 32
#   peak: 3 products x 2 x 256^3 = 6 x 16777216 = 100663296 FLOP in 0.25 s = 402653184 FLOP/s = 0.402653184 GFLOP/s
#   MFU: 628568064 / 0.5 / 402653184 = 3.1221...; transformers' 628568064 / 2 / 402653184 = 0.7805...
S = dataclasses.replace(bench_core.TINY, warmup=2, iters=3)
TIMES = {"ours": 0.5, "hf": 2.0, "matmul": 0.25}
PEAK = 402653184


def fake_models():
    torch.manual_seed(0)
    ours = GPT2(GPT2Config.from_name("tiny", dropout=0.0)).eval()
    hf = torch.nn.Linear(2, 2).eval()  # only trained by its own step, which the fake timing never calls
    return ours, hf


@pytest.mark.parametrize("bf16", [False, True])
def test_bench_train_rows_from_fake_timings(monkeypatch, bf16):
    ours, hf = fake_models()
    seen = {}

    def compare_time(fns, warmup, iters):
        seen.update(names=list(fns), warmup=warmup, iters=iters, training=(ours.training, hf.training))
        seen["products"] = fns["matmul"]()
        shapes = []
        hook = ours.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
        if not bf16:
            fns["ours"]()  # one real step of ours on the batch
        hook.remove()
        seen["shapes"] = shapes
        return dict(TIMES)
    monkeypatch.setattr(bench_core, "compare_time", compare_time)
    rows = bench_core.bench_train(ours, hf, S, "cpu", **({"bf16": True} if bf16 else {}))  # fp32 by default
    assert seen["names"] == ["ours", "hf", "matmul"] and (seen["warmup"], seen["iters"]) == (2, 3)
    assert seen["training"] == (True, True) and not ours.training and not hf.training
    dtype = torch.bfloat16 if bf16 else torch.float32
    assert len(seen["products"]) == 3
    assert all(p.shape == (256, 256) and p.dtype == dtype for p in seen["products"])
    if not bf16:
        assert seen["shapes"] == [(2, 32)]
    tag, kind = (", bf16 autocast", "bf16") if bf16 else ("", "fp32")
    extra = {"precision": "bf16 autocast"} if bf16 else {}
    assert [r.to_dict() for r in rows] == [
        {"line": f"training step 2x32, AdamW{tag}", "unit": "tokens/s", "minigpt2": 128.0, "peer_name": "transformers",
         "peer": 32.0, "higher_is_better": True, "goal": ">= 1.15x",
         "extra": {"seconds": {"ours": 0.5, "hf": 2.0}, **extra}, "ratio": 4.0},
        {"line": f"{kind} matmul peak (256^3)", "unit": "GFLOP/s", "minigpt2": pytest.approx(0.402653184, rel=1e-12),
         "peer_name": None, "peer": None, "higher_is_better": True, "goal": "(measured)", "extra": extra,
         "ratio": None},
        {"line": f"training step MFU{tag} (of {kind} peak)", "unit": "fraction",
         "minigpt2": pytest.approx(TINY_FLOPS / 0.5 / PEAK, rel=1e-12), "peer_name": "transformers",
         "peer": pytest.approx(TINY_FLOPS / 2 / PEAK, rel=1e-12), "higher_is_better": True,
         "goal": ">= 0.70" if bf16 else ">= 0.80", "extra": {"step_flops": TINY_FLOPS, **extra},
         "ratio": pytest.approx(4.0, rel=1e-12)}]
    assert rows[2].minigpt2 == pytest.approx(3.1221, abs=1e-4) and rows[2].peer == pytest.approx(0.78053, abs=1e-5)


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_bench_train_puts_the_batch_optimizers_and_products_on_the_device(monkeypatch, device):
    """On stand-ins (no GPU needed): every tensor and optimizer is asked for on `device`, and fp32 products on
    CUDA run without TF32 (a true fp32 peak)."""
    asked = []
    ids = torch.zeros(2, 32, dtype=torch.long)
    monkeypatch.setattr(bench_core, "random_ids", lambda *a: asked.append(("ids", a)) or ids)
    monkeypatch.setattr(bench_core, "adamw", lambda model, dev: asked.append(("adamw", model, dev)) or f"opt {dev}")
    monkeypatch.setattr(bench_core, "amp_for", lambda dev, bf16: asked.append(("amp", dev, bf16)) or "amp")
    real_randn = torch.randn

    def randn(*shape, **kw):
        if shape == (256, 256):  # the products' operands (s.matmul); other callers pass through
            asked.append(("randn", shape, kw.get("device", "(none)"), kw.get("dtype")))
            kw.pop("device", None)
        return real_randn(*shape, **kw)
    monkeypatch.setattr(torch, "randn", randn)
    steps = []
    monkeypatch.setattr(bench_core, "_ours_lm_step", lambda *a: steps.append(("ours", *a)))
    monkeypatch.setattr(bench_core, "_hf_lm_step", lambda *a: steps.append(("hf", *a)))

    def compare_time(fns, warmup, iters):
        for fn in fns.values():
            fn()
        return dict(TIMES)
    monkeypatch.setattr(bench_core, "compare_time", compare_time)
    ours, hf = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    ours.config = GPT2Config.from_name("tiny")
    before = torch.backends.cuda.matmul.allow_tf32  # a property of torch's cuBLAS module: set back by hand
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        bench_core.bench_train(ours, hf, S, device)
        assert torch.backends.cuda.matmul.allow_tf32 is (device != "cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert asked == [("ids", (2, 32, 50257, device)), ("adamw", ours, device), ("adamw", hf, device),
                     ("amp", device, False), ("randn", (256, 256), device, torch.float32),
                     ("randn", (256, 256), device, torch.float32)]
    assert steps == [("ours", ours, f"opt {device}", ids, "amp"), ("hf", hf, f"opt {device}", ids, "amp")]


def test_sonnet_prompts_of_the_tiny_sizes_cycle_four_to_six_tokens():
    s = dataclasses.replace(bench_core.TINY, sonnet_prompts=5)
    prompts = bench_core.sonnet_prompts(s, 100)
    assert [len(p) for p in prompts] == [4, 5, 6, 4, 5]
    # torch's generator seeded 5 (its draws of the unused 24..48 lengths first), pinned
    assert prompts == [[70, 92, 33, 88], [4, 79, 50, 11, 12], [18, 88, 23, 0, 27, 9], [9, 47, 12, 59],
                       [84, 17, 91, 29, 83]]
    assert bench_core.sonnet_prompts(s, 100) == prompts  # the same every call


def test_sonnet_prompts_of_the_full_sizes_are_24_to_48_tokens():
    prompts = bench_core.sonnet_prompts(bench_core.FULL, 50257)
    assert [len(p) for p in prompts] == [35, 38, 41, 34, 30, 44, 41, 32, 37, 28, 28, 24]  # seed 5, pinned
    assert prompts[0][:5] == [27533, 33464, 2190, 6172, 29875] and prompts[-1][-3:] == [8890, 19544, 33527]
    assert all(0 <= t < 50257 for p in prompts for t in p)
    many = bench_core.sonnet_prompts(dataclasses.replace(bench_core.FULL, sonnet_prompts=400), 7)
    assert {len(p) for p in many} == set(range(24, 49))  # both ends drawn, nothing outside
    assert {t for p in many for t in p} == set(range(7))


def test_left_padded_by_hand():
    ids, mask = bench_core.left_padded([[1, 2], [3, 4, 5], [6]], "cpu")
    assert ids.tolist() == [[50256, 1, 2], [3, 4, 5], [50256, 50256, 6]]
    assert mask.tolist() == [[0, 1, 1], [1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long
    ids, mask = bench_core.left_padded([[7]], "cpu")
    assert ids.tolist() == [[7]] and mask.tolist() == [[1]]


def test_left_padded_moves_both_to_the_device():
    ids, mask = bench_core.left_padded([[1, 2], [3]], "meta")
    assert ids.device.type == mask.device.type == "meta" and ids.shape == mask.shape == (2, 2)

"""`minigpt2.fast.for_training` and `for_inference` (minigpt2/fast/__init__.py): which copy a model becomes on CPU
or elsewhere, in fp32, bf16 or fp16, for one row or a batch; its KV-cache dtype, its sampler and its one-token step;
and the model handed in left as it was (its class, modules, parameters and attributes against a deepcopy made
before the call). The expected values come from outside the code: the plain model's logits and greedy tokens, the
dtypes written out, the copy's modules by type.

Written against mutmut's survivors (`python tools/mutate.py --auto minigpt2/fast/__init__.py`, docs/testing.md).
The tests set torch's threads (the fp32 layout follows them): the module runs under mutmut's fork server."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn as nn

from minigpt2 import GPT2, GPT2Config
from minigpt2.device import torch_threads
from minigpt2.fast import decoding, for_inference, for_training, prepack
from minigpt2.fast.chunked_loss import ChunkedLMLoss
from minigpt2.fast.cpu_dropout import CPUDropout, CPUDropoutAttention
from minigpt2.fast.decoding import Fp32CacheAttention
from minigpt2.fast.lora import FusedLoRALinear
from minigpt2.fast.prepack import Fp16Linear, FusedQKVAttention, PackedGPT2, PackedLinear, SlabLinear
from minigpt2.fast.recompute import RecomputeGELUMLP
from minigpt2.fast.step import OneTokenStep
from minigpt2.generation import generate
from minigpt2.lora import LoRAConfig, apply_lora
from minigpt2.losses import LMLoss
from minigpt2.model import MLP, CausalSelfAttention
from quant.int8_linear import Int8GPT2, to_int8_decoder
from tasks import get_task

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # "cuda" only names the device: nothing is moved or run there
IDS = torch.tensor([[464, 2068, 7586, 318, 257]])
PROMPTS = [[464, 2068, 7586], [40, 1101, 257, 922]]


def tiny(seed: int = 0) -> GPT2:
    """The tiny GPT-2 away from init: biases and LayerNorm parameters drawn too (a dropped bias shows up)."""
    torch.manual_seed(seed)
    model = GPT2(GPT2Config.from_name("tiny")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln" in name or name.startswith("ln_f"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request):
    with torch_threads(request.param):
        yield request.param


@pytest.fixture
def two_threads():
    with torch_threads(2):
        yield


def assert_untouched(model: nn.Module, before: nn.Module) -> None:
    """`model` as the deepcopy `before` made ahead of the call: class, modules by name and type, parameters and
    buffers (values and dtypes), and no attribute of the copy's set on it."""
    assert type(model) is type(before)
    assert [(n, type(m)) for n, m in model.named_modules()] == [(n, type(m)) for n, m in before.named_modules()]
    got, want = model.state_dict(), before.state_dict()
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    assert "sample_next" not in vars(model) and "kv_cache_dtype" not in vars(model)
    assert not isinstance(model, OneTokenStep)


def assert_decodes_as(fast: GPT2, model: GPT2, atol: float) -> None:
    with torch.no_grad():
        torch.testing.assert_close(fast.logits(IDS).float(), model.logits(IDS).float(), rtol=0, atol=atol)


def packed_layers(fast: nn.Module) -> list[nn.Module]:
    return [m for m in fast.modules() if type(m) in (PackedLinear, SlabLinear, Fp16Linear)]


def test_an_fp32_model_on_cpu_becomes_the_prepacked_copy_in_slabs_at_any_thread_count(threads):
    model = tiny()
    before = copy.deepcopy(model)
    fast = for_inference(model, CPU)
    assert_untouched(model, before)
    assert isinstance(fast, PackedGPT2) and isinstance(fast, OneTokenStep) and type(fast).__name__ == \
        "OneTokenStepPackedGPT2"
    assert fast.sample_next is decoding.sample_next and fast.kv_cache_dtype == torch.float32
    assert fast.wte.weight.dtype == torch.float32 and fast.wte is not model.wte
    assert all(type(b.attn) is FusedQKVAttention for b in fast.h)  # q, k, v fused; no fp32-cache attention
    layers = packed_layers(fast)  # one row at any thread count: the weights in slabs, one per thread, at least 2
    assert len(layers) == 2 * 4 + 1  # per block: qkv, c_proj, c_fc, MLP c_proj; and the head
    assert {type(m) for m in layers} == {SlabLinear} and type(fast.packed_head) is SlabLinear
    assert {m.slabs for m in layers} == {2} and {m.table.dtype for m in layers} == {torch.float32}
    assert_decodes_as(fast, model, atol=1e-4)
    assert generate(fast, PROMPTS, 6, eos_id=None) == generate(model, PROMPTS, 6, eos_id=None)
    assert_untouched(model, before)


def test_a_copy_for_a_batch_is_laid_out_for_that_many_rows(two_threads):
    model = tiny()
    fast = for_inference(model, CPU, batch=3)
    layers = packed_layers(fast)
    assert {type(m) for m in layers} == {PackedLinear} and {m.batch for m in layers} == {3}
    assert fast.packed_head.batch == 3
    with torch.no_grad():  # several rows on a copy packed for several rows: the plain numbers
        ids = IDS.expand(3, -1)
        torch.testing.assert_close(fast.logits(ids), model.logits(ids), rtol=0, atol=1e-4)


def test_bf16_on_a_cpu_with_native_bf16_is_the_bf16_packed_copy_attending_over_an_fp32_cache(two_threads,
                                                                                             monkeypatch):
    monkeypatch.setattr(prepack, "native_bf16", lambda: True)  # the oneDNN bf16 kernels run here either way
    model = tiny()
    before = copy.deepcopy(model)
    fast = for_inference(model, CPU, torch.bfloat16)
    assert_untouched(model, before)
    assert isinstance(fast, PackedGPT2) and isinstance(fast, OneTokenStep)
    assert fast.wte.weight.dtype == torch.bfloat16 and fast.kv_cache_dtype == torch.float32
    assert fast.sample_next is decoding.sample_next
    assert all(type(b.attn) is Fp32CacheAttention for b in fast.h)  # bf16 attention is not fused
    layers = packed_layers(fast)
    assert {type(m) for m in layers} == {PackedLinear} and {m.packed.dtype for m in layers} == {torch.bfloat16}
    with torch.no_grad():
        spread = float(model.logits(IDS).std())
    assert_decodes_as(fast, model, atol=0.1 * spread)


def test_a_bf16_model_where_bf16_is_not_native_is_a_deep_copy_attending_in_fp32(monkeypatch):
    """No prepacked copy (the CPU would emulate bf16): a deepcopy of the bf16 model whose attention runs over the
    fp32 cache; the model's own attention modules stay plain."""
    monkeypatch.setattr(prepack, "native_bf16", lambda: False)
    model = tiny().to(torch.bfloat16)
    before = copy.deepcopy(model)
    fast = for_inference(model, CPU)
    assert_untouched(model, before)
    assert all(type(b.attn) is CausalSelfAttention for b in model.h)
    assert type(fast).__mro__[1:3] == (OneTokenStep, GPT2) and not isinstance(fast, PackedGPT2)
    assert all(type(b.attn) is Fp32CacheAttention for b in fast.h)
    assert fast.wte.weight.dtype == torch.bfloat16 and fast.kv_cache_dtype == torch.float32
    assert fast.sample_next is decoding.sample_next
    assert fast.wte is not model.wte and fast.h[0].mlp is not model.h[0].mlp  # a deep copy, not shared modules
    assert not packed_layers(fast)
    with torch.no_grad():
        torch.testing.assert_close(fast.logits(IDS), model.logits(IDS), rtol=0, atol=0.05)


def test_fp16_weights_on_cpu_keep_everything_else_and_the_cache_fp32(monkeypatch):
    monkeypatch.setattr(prepack, "fp16_available", lambda: True)  # fbgemm's fp16 linear needs AVX2: assumed here
    model = tiny()
    before = copy.deepcopy(model)
    fast = for_inference(model, CPU, torch.float16)
    assert_untouched(model, before)
    assert isinstance(fast, PackedGPT2) and isinstance(fast, OneTokenStep)
    assert fast.wte.weight.dtype == torch.float32 and fast.kv_cache_dtype == torch.float32
    assert all(type(b.attn) is FusedQKVAttention for b in fast.h)
    assert {type(m) for m in packed_layers(fast)} == {Fp16Linear}
    assert_decodes_as(fast, model, atol=0.02)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_off_the_cpu_the_copy_shares_every_module_and_caches_in_the_weights_dtype(dtype):
    model = tiny().to(dtype)
    before = copy.deepcopy(model)
    fast = for_inference(model, CUDA)
    assert_untouched(model, before)
    assert fast is not model and type(fast).__mro__[1:3] == (OneTokenStep, GPT2)
    assert fast.kv_cache_dtype == dtype and fast.sample_next is decoding.sample_next
    assert all(a is b for a, b in zip(fast.modules(), model.modules()) if a is not fast)  # the same modules
    assert fast.h is model.h and fast.wte is model.wte
    assert all(type(b.attn) is CausalSelfAttention for b in fast.h)


def test_an_int8_decoder_on_cpu_is_taken_as_it_is_with_the_fast_sampler():
    int8 = to_int8_decoder(tiny())
    before = copy.deepcopy(int8)
    fast = for_inference(int8, CPU)
    assert_untouched(int8, before)
    assert isinstance(fast, Int8GPT2) and fast is not int8 and fast.h is int8.h and fast.int8_head is int8.int8_head
    assert fast.kv_cache_dtype == torch.float32 and fast.sample_next is decoding.sample_next
    assert generate(fast, PROMPTS, 4, eos_id=None) == generate(int8, PROMPTS, 4, eos_id=None)


def sonnet_module(lora: bool) -> nn.Module:
    torch.manual_seed(0)
    module = get_task("sonnet").build(GPT2(dataclasses.replace(GPT2Config.from_name("tiny"), dropout=0.1)))
    if lora:
        apply_lora(module, LoRAConfig(rank=2, alpha=4.0, targets="attn"))
    return module


def kinds(module: nn.Module) -> set[type]:
    return {type(m) for m in module.modules()}


@pytest.mark.parametrize("device", ["cpu", CPU], ids=["str", "torch.device"])
def test_for_training_on_cpu_switches_in_every_piece_in_place_and_once(device):
    module = sonnet_module(lora=True)
    state = copy.deepcopy(module.state_dict())
    assert for_training(module, device) is None
    assert {RecomputeGELUMLP, FusedLoRALinear, ChunkedLMLoss, CPUDropout, CPUDropoutAttention} <= kinds(module)
    assert not {LMLoss, MLP, CausalSelfAttention, nn.Dropout} & kinds(module)
    assert type(module.lm_loss) is ChunkedLMLoss
    got = module.state_dict()
    assert list(got) == list(state) and all(torch.equal(got[k], state[k]) for k in state)
    layout = [(n, m) for n, m in module.named_modules()]
    for_training(module, device)  # again: nothing changes, not even the objects
    assert [(n, m) for n, m in module.named_modules()] == layout


def test_for_training_off_the_cpu_keeps_the_plain_dropout():
    module = sonnet_module(lora=False)
    for_training(module, CUDA)
    assert {RecomputeGELUMLP, ChunkedLMLoss, nn.Dropout} <= kinds(module)
    assert not {CPUDropout, CPUDropoutAttention, LMLoss, FusedLoRALinear} & kinds(module)
    assert all(type(b.attn) is CausalSelfAttention for b in module.gpt.h)

"""`minigpt2.fast.prepack`: the oneDNN-prepacked inference copy computes what the model computes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt2 import GPT2, GPT2Config
from minigpt2.device import torch_threads
from minigpt2.generation import generate
from minigpt2.lora import LoRAConfig, LoRALinear, apply_lora
from minigpt2.fast.prepack import FusedQKVAttention, PackedGPT2, PackedLinear, SlabLinear, available, prepacked
from tests.conftest import bf16_prepacked

pytestmark = pytest.mark.skipif(not available(), reason="this PyTorch build has no oneDNN")
FP32 = (SlabLinear,)  # the fp32 layers of a copy for one row, at any thread count


def tiny(seed: int = 0) -> GPT2:
    torch.manual_seed(seed)
    return GPT2(GPT2Config.from_name("tiny", dropout=0.0)).eval()


def test_prepacked_copy_has_the_same_logits_and_greedy_tokens():
    model = tiny()
    fast = prepacked(model)
    assert isinstance(fast, PackedGPT2) and isinstance(fast.h[0].mlp.c_fc, FP32)
    assert type(fast.h[0].attn) is FusedQKVAttention and type(fast.packed_head) is type(fast.h[0].mlp.c_fc)
    assert type(model.h[0].mlp.c_fc) is torch.nn.Linear  # the source model is untouched
    ids = torch.randint(0, 50257, (3, 9))
    with torch.no_grad():
        torch.testing.assert_close(fast.logits(ids), model.logits(ids), rtol=1e-4, atol=1e-4)
        cols = torch.tensor([5, 50256])
        torch.testing.assert_close(fast.lm_head(fast(ids), cols), model.lm_head(model(ids), cols), rtol=1e-4,
                                   atol=1e-4)
    prompts = [[464, 3290, 318], [40]]
    assert generate(fast, prompts, 10, eos_id=None) == generate(model, prompts, 10, eos_id=None)


def test_prepacked_lora_model_packs_the_frozen_base_and_keeps_the_adapter():
    model = tiny()
    apply_lora(model, LoRAConfig(rank=4, alpha=8.0, targets="attn+mlp"))
    for p in model.parameters():  # a trained-looking adapter, so that it changes the output
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    fast = prepacked(model)
    assert isinstance(fast.h[0].attn.query, LoRALinear) and isinstance(fast.h[0].attn.query.base, FP32)
    ids = torch.randint(0, 50257, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(fast.logits(ids), model.logits(ids), rtol=1e-4, atol=1e-4)


def test_prepacked_refuses_a_non_fp32_model():
    with pytest.raises(ValueError, match="needs an fp32 model on the CPU, got torch.bfloat16"):
        prepacked(tiny().to(torch.bfloat16))


def test_prepacked_fake_quant_model_keeps_its_fake_quant_layers():
    from quant import FakeQuantLinear, QuantConfig, ptq

    model = ptq(tiny(), QuantConfig(weight="int8"))
    fast = prepacked(model)
    assert isinstance(fast.h[0].mlp.c_fc, FakeQuantLinear) and not isinstance(fast, PackedGPT2)
    ids = torch.randint(0, 50257, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(fast.logits(ids), model.logits(ids), rtol=1e-5, atol=1e-5)


def test_without_onednn_prepacked_says_so_and_inference_copy_falls_back(monkeypatch):
    import minigpt2.fast.prepack as prepack

    monkeypatch.setattr(prepack, "available", lambda: False)
    model = tiny()
    with pytest.raises(RuntimeError, match="no oneDNN linear kernels"):
        prepack.prepacked(model)
    assert prepack.inference_copy(model) is model


# ---- bf16: the prepacked copy with bf16 weights (on any CPU whose oneDNN has bf16 kernels: `bf16_prepacked`) ----

# bf16 keeps 8 bits of mantissa: every stored activation is rounded by up to 2^-9 of its size. Through two tiny
# blocks that leaves the logits within a tenth of their spread (measured: 4-7% at most), so the bound below is
# loose enough for any seed and tight enough to catch a wrong weight, a missing bias or an fp32/bf16 mix-up.
BF16_LOGIT_TOLERANCE = 0.1  # largest |bf16 - fp32| logit, as a fraction of the fp32 logits' standard deviation


def spread_model(seed: int = 0) -> GPT2:
    """A tiny model with large weights, so that its logits spread and greedy decoding varies its tokens."""
    model = tiny(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(std=0.3)
    return model


@bf16_prepacked
def test_bf16_copy_has_bf16_packed_weights_and_logits_within_bf16_tolerance():
    model = spread_model()
    fast = prepacked(model, torch.bfloat16)
    linear = fast.h[1].attn.value
    assert isinstance(linear, PackedLinear) and linear.packed.dtype == torch.bfloat16
    assert fast.packed_head.packed.dtype == torch.bfloat16 and fast.ln_f.weight.dtype == torch.bfloat16
    assert model.wte.weight.dtype == torch.float32  # the source model is untouched
    ids = torch.randint(0, 50257, (3, 9))
    with torch.no_grad():
        want, got = model.logits(ids), fast.logits(ids)
        assert got.dtype == torch.bfloat16
        err = (got.float() - want).abs().max().item()
        assert err <= BF16_LOGIT_TOLERANCE * want.std().item()
        assert err > 0  # it really computed in bf16
        cols = torch.tensor([7, 50256])  # the few-columns path of lm_head stays consistent with the full head
        torch.testing.assert_close(fast.lm_head(fast(ids), cols).float(), got[..., cols].float(), rtol=0.02,
                                   atol=0.02 * want.std().item())


@bf16_prepacked
def test_bf16_greedy_tokens_follow_fp32_where_the_margin_allows():
    """Greedy bf16 picks fp32's token at every step where fp32's winner leads its runner-up by more than twice the
    bf16 logit error measured on that sequence; the first closer call may go either way, so the check stops there.
    """
    model = spread_model(0)
    fast = prepacked(model, torch.bfloat16)
    steps, checked = 8, 0
    for prompt in ([464, 3290, 318], [40, 588], [15496], [1722, 257, 1110, 286]):
        want = generate(model, [prompt], steps, eos_id=None)[0]
        got = generate(fast, [prompt], steps, eos_id=None)[0]
        with torch.no_grad():
            ids = torch.tensor([prompt + want[:-1]])
            exact = model.logits(ids)[0, len(prompt) - 1:]
            err = (fast.logits(ids)[0, len(prompt) - 1:].float() - exact).abs().max().item()
        top2 = exact.topk(2, dim=-1).values
        margins = (top2[:, 0] - top2[:, 1]).tolist()
        safe = next((i for i, m in enumerate(margins) if m <= 2 * err), steps)
        assert got[:safe] == want[:safe], (prompt, safe)
        checked += safe
    assert checked >= 8, "too few decisive steps to compare: pick other prompts"


@bf16_prepacked
def test_bf16_copy_of_a_lora_model_and_of_a_bf16_model():
    model = spread_model()
    apply_lora(model, LoRAConfig(rank=4, alpha=8.0, targets="attn"))
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    fast = prepacked(model, torch.bfloat16)
    assert isinstance(fast.h[0].attn.key.base, PackedLinear) and fast.h[0].attn.key.lora_A.dtype == torch.bfloat16
    ids = torch.randint(0, 50257, (2, 7))
    with torch.no_grad():
        want = model.logits(ids)
        assert (fast.logits(ids).float() - want).abs().max() <= BF16_LOGIT_TOLERANCE * want.std()
        cast = prepacked(spread_model().to(torch.bfloat16), torch.bfloat16)  # a bf16 model is accepted as is
        assert cast.packed_head.packed.dtype == torch.bfloat16


def test_bf16_is_refused_where_the_cpu_would_emulate_it(monkeypatch):
    import minigpt2.fast.prepack as prepack

    monkeypatch.setattr(prepack.device, "cpu_native_bf16", lambda: False)  # e.g. AVX-512 without BF16
    assert not prepack.native_bf16()
    model = tiny()
    with pytest.raises(prepack.Bf16Unsupported, match="needs a CPU with native bf16 arithmetic .* use fp32"):
        prepack.prepacked(model, torch.bfloat16)
    fallback = prepack.inference_copy(model, torch.bfloat16)  # inference_copy stays in fp32 instead
    assert type(fallback.h[0].mlp.c_fc) in FP32 and fallback.wte.weight.dtype == torch.float32


def test_native_bf16_needs_the_cpu_flag_and_onednn(monkeypatch):
    import minigpt2.fast.prepack as prepack

    monkeypatch.setattr(prepack.device, "cpu_native_bf16", lambda: True)
    assert prepack.native_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    monkeypatch.setattr(prepack.device, "cpu_native_bf16", lambda: False)
    assert not prepack.native_bf16()


@bf16_prepacked
def test_inference_copy_picks_the_dtype():
    import minigpt2.fast.prepack as prepack

    model = tiny()
    assert type(prepack.inference_copy(model).h[0].mlp.c_fc) in FP32
    assert prepack.inference_copy(model, torch.bfloat16).h[0].mlp.c_fc.packed.dtype == torch.bfloat16
    assert prepack.inference_copy(tiny().to(torch.bfloat16)).packed_head.packed.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.bfloat16, None])
def test_sonnet_evaluation_asks_for_the_bf16_copy_when_the_run_is_bf16(monkeypatch, dtype):
    """The application hands the sonnet task `minigpt2.fast.for_inference`'s copy (bf16 for a bf16 run); with
    `--plain` the module itself, and the task never prepacks on its own."""
    import app.speed as speed
    import minigpt2.fast as fast
    import tasks.sonnet as sonnet
    from minigpt2.tokenizer import Tokenizer
    from minigpt2.generation import Sampling
    from tasks.base import Example, PredictSettings

    asked = []
    real = fast.for_inference
    monkeypatch.setattr(fast, "for_inference", lambda model, device, dtype=None, batch=1:
                        asked.append((dtype, batch)) or real(model, device, dtype, batch))
    tok = Tokenizer()
    lines = ("From fairest creatures we desire increase,", "That thereby beauty's rose might never die,")
    examples = [Example("1", tok.encode("\n".join(lines) + "\n"), meta={"prompt_lines": lines})]
    how = PredictSettings(batch_size=4, autocast_dtype=dtype,
                          sampling=Sampling(max_new_tokens=8, temperature=1.2, top_p=0.9, seed=1))
    task, module = sonnet.SonnetTask(), sonnet.SonnetLM(tiny())
    assert speed.predicting(module, task, torch.device("cpu"), how, plain=True) is module
    assert asked == []
    predictor = speed.predicting(module, task, torch.device("cpu"), how, plain=False)
    assert predictor.gpt is not module.gpt and module.gpt is module._modules["gpt"]  # the module keeps its body
    out = task.predict(predictor, examples, how, tok, torch.device("cpu"))
    assert asked == [(dtype, 4)] and out[0].startswith("\n".join(lines))  # laid out for the run's batch size


@pytest.mark.parametrize("threads", [1, 2])
def test_a_copy_for_batched_decoding_is_packed_for_its_batch_and_samples_the_same_tokens(threads):
    """`prepacked(model, batch=B)` lays every fp32 layer and the head out for B rows, at any thread count (the
    one-row MKL layout is for batch 1 only); products of several rows give the same numbers on either layout, so
    a batch of prompts samples the same tokens as on the batch-1 copy, and greedy decodes as the model does."""
    model = tiny()
    with torch_threads(threads):
        one, four = prepacked(model), prepacked(model, batch=4)
    layers = [four.h[0].attn.qkv, four.h[0].attn.c_proj, four.h[1].mlp.c_fc, four.h[1].mlp.c_proj, four.packed_head]
    assert all(type(layer) is PackedLinear and layer.batch == 4 for layer in layers)
    # oneDNN's layout for several rows is padded where its one-row layout is not: the packed bytes tell them apart
    nbytes = torch.ops.mkldnn._nbytes
    sizes = {rows: nbytes(torch.ops.mkldnn._reorder_linear_weight(model.wte.weight.detach(), rows)) for rows in (1, 4)}
    if sizes[1] == sizes[4]:
        pytest.skip("oneDNN lays the head out alike for 1 and 4 rows on this CPU")
    assert nbytes(four.packed_head.packed) == sizes[4]
    assert type(one.h[0].attn.qkv) is SlabLinear and type(one.packed_head) is SlabLinear
    prompts = [[464, 3290, 318], [40], [3, 5, 8, 13], [50256, 11]]
    sampled = generate(four, prompts, 12, temperature=0.9, top_p=0.9, eos_id=None, seed=3)
    assert sampled == generate(one, prompts, 12, temperature=0.9, top_p=0.9, eos_id=None, seed=3)
    assert generate(four, prompts, 12, eos_id=None) == generate(model, prompts, 12, eos_id=None)
    ids = torch.randint(0, 50257, (4, 7))
    with torch.no_grad():
        assert torch.equal(four.logits(ids), one.logits(ids))
        torch.testing.assert_close(four.logits(ids[:1, :1]), model.logits(ids[:1, :1]), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="batch must be at least 1, got 0"):
        prepacked(model, batch=0)


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(2, 16), rows=st.integers(2, 20), length=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_any_batch_layout_gives_the_one_row_layouts_numbers_for_several_rows(batch, rows, length, seed):
    """Whatever batch a copy is packed for, a forward of several rows gives the batch-1 copy's logits bit for bit
    (the promise that lets the sonnet evaluation pack for --batch-size without changing a run's sonnets)."""
    one, other = _packed_pair(batch)
    ids = torch.randint(0, 50257, (rows, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert torch.equal(other.logits(ids), one.logits(ids))


_PAIRS: dict[int, tuple[GPT2, GPT2]] = {}


def _packed_pair(batch: int) -> tuple[GPT2, GPT2]:
    """The tiny model's copies for batch 1 and `batch` (made once per batch: Hypothesis calls many times)."""
    if batch not in _PAIRS:
        _PAIRS[batch] = prepacked(tiny()), prepacked(tiny(), batch=batch)
    return _PAIRS[batch]


def test_the_fp32_copy_for_one_row_has_a_slab_per_thread_and_its_bits_at_any_thread_count():
    copies = {}
    for threads in (1, 2, 3):
        with torch_threads(threads):
            copies[threads] = prepacked(tiny())
    assert [copies[t].h[0].mlp.c_proj.slabs for t in (1, 2, 3)] == [2, 2, 3]  # at least two
    assert all(type(layer) is SlabLinear for fast in copies.values()
               for layer in (fast.h[0].mlp.c_proj, fast.h[1].attn.qkv, fast.packed_head))
    ids = torch.tensor([[464]])  # one row: the batched product over the slabs
    with torch.no_grad():
        want = copies[1].logits(ids)
        for threads in (1, 2):  # a copy's bits do not depend on the threads it runs with
            with torch_threads(threads):
                assert torch.equal(copies[1].logits(ids), want) and torch.equal(copies[2].logits(ids), want)
                # other slab heights may take another MKL kernel on the tiny shapes: the last bits may differ
                torch.testing.assert_close(copies[3].logits(ids), want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(want, tiny().logits(ids), rtol=1e-5, atol=1e-5)

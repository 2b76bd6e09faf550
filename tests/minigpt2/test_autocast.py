"""bf16 autocast: the device decisions (with faked CUDA), every task / method / precision under CPU bf16 autocast
(the same dtype rules as CUDA's), logits against transformers under the same autocast, the loss curve, and a
sentiment run under bf16 against the same run in fp64. The runs take bf16 on any CPU (`emulated_bf16`: emulated
where the CPU has no bf16 instructions, as on CI), so the path every GPU run takes is checked everywhere; the
refusal of `--autocast bf16` on such a CPU is checked with the CPU's answer faked."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from app import finetune
from minigpt2 import device as dev
from minigpt2.checkpoint import load_model
from minigpt2.config import GPT2Config
from minigpt2.model import GPT2
from minigpt2.tokenizer import Tokenizer
from tasks import collate, get_task
from tests.conftest import load_hf
from tests.app.test_finetune import DATA, FIX, finetune_args
from tests.minigpt2.test_train import one_thread  # noqa: F401  (autouse fixture: one torch thread)


# ------------------------------------------------------------------------------------ the device decisions

@pytest.mark.parametrize("text, native", [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n", True),
    ("flags\t\t: fpu sse2 avx2 avx512f avx512bw\n", False),  # AVX-512 without bf16: emulated, refused
    ("Features\t: fp asimd bf16 i8mm\n", True),  # Arm
    ("Features\t: fp asimd\n", False),
])
def test_cpu_native_bf16_reads_the_cpu_flags(tmp_path, text, native):
    (tmp_path / "cpuinfo").write_text(text)
    assert dev.cpu_native_bf16(tmp_path / "cpuinfo") is native


@pytest.mark.parametrize("variable", ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"])
@pytest.mark.parametrize("cap, native", [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_VNNI", False),
                                         ("AVX512_CORE_BF16", True), ("AVX512_CORE_AMX", True), ("ALL", True),
                                         ("", True)])
def test_cpu_native_bf16_follows_onednn_isa_cap(tmp_path, monkeypatch, variable, cap, native):
    """Capped below its bf16 kernels (an AVX2 machine emulated on an AVX-512 one), oneDNN converts bf16: no."""
    (tmp_path / "cpuinfo").write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv(variable, cap)
    assert dev.cpu_native_bf16(tmp_path / "cpuinfo") is native
    if not native:  # whatever this machine's flags: the cap alone refuses bf16
        with pytest.raises(dev.AutocastUnavailable, match="ONEDNN_MAX_CPU_ISA caps it below AVX512_CORE_BF16"):
            dev.autocast_dtype("bf16", "cpu")


def test_cpu_native_bf16_is_false_without_proc_cpuinfo(tmp_path):
    assert dev.cpu_native_bf16(tmp_path / "missing") is False


def test_cpu_modes(monkeypatch):
    monkeypatch.setattr(dev, "cpu_native_bf16", lambda: True)
    assert dev.autocast_dtype("off", "cpu") is None
    assert dev.autocast_dtype("auto", "cpu") is None  # fp32 on CPU unless asked (docs/finetuning.md)
    assert dev.autocast_dtype("bf16", "cpu") is torch.bfloat16
    monkeypatch.setattr(dev, "cpu_native_bf16", lambda: False)
    with pytest.raises(dev.AutocastUnavailable, match="autocast bf16: expected a device that runs bf16 natively: this CPU has no native bf16"):
        dev.autocast_dtype("bf16", "cpu")
    with pytest.raises(dev.AutocastUnavailable, match="expected one of auto, bf16, off"):
        dev.autocast_dtype("fp16", "cpu")
    assert not dev.fused_adamw("cpu") and dev.distributed_backend("cpu") == "gloo"


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA as torch would report it on a GPU machine; `bf16` says whether the GPU supports bf16."""
    state = {"bf16": True}

    def is_bf16_supported(including_emulation: bool = True) -> bool:  # torch's signature and default
        return state["bf16"] or including_emulation  # every GPU torch supports can emulate bf16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    return state


def test_faked_cuda_with_bf16_picks_bf16_fused_adamw_nccl(fake_cuda):
    assert dev.parse_device("auto") == torch.device("cuda")
    assert dev.autocast_dtype("auto", "cuda") is torch.bfloat16
    assert dev.autocast_dtype("auto", torch.device("cuda", 1)) is torch.bfloat16
    assert dev.autocast_dtype("bf16", "cuda:0") is torch.bfloat16
    assert dev.autocast_dtype("off", "cuda") is None
    assert dev.fused_adamw("cuda:0") and dev.distributed_backend("cuda") == "nccl"
    ctx = dev.autocast_for("auto", "cuda")
    assert ctx.device == "cuda" and ctx.fast_dtype is torch.bfloat16 and ctx._enabled


def test_faked_cuda_without_bf16_runs_fp32_and_refuses_bf16(fake_cuda):
    fake_cuda["bf16"] = False  # e.g. a V100 or T4: bf16 only emulated
    assert dev.autocast_dtype("auto", "cuda") is None
    with pytest.raises(dev.AutocastUnavailable, match="autocast bf16: expected a device that runs bf16 natively: this CUDA device has no bf16"):
        dev.autocast_dtype("bf16", "cuda")


def test_training_loop_runs_in_the_dtype_it_is_given_and_asks_the_device_module_for_adamw(monkeypatch, tmp_path):
    """`train` runs its forward under autocast in the dtype the caller resolved (it resolves no mode itself) and
    takes its AdamW flavour from minigpt2.device."""
    import minigpt2.train as train_mod

    made = []
    real_adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **k: made.append(k) or real_adamw(*a, **k))
    monkeypatch.setattr(train_mod, "fused_adamw", lambda d: True)  # fused AdamW also runs on CPU
    for dtype, used in ((torch.bfloat16, "bf16"), (None, "off")):
        seen, metrics = _tiny_train(tmp_path, dtype)
        assert seen == {dtype}  # every training forward, none in fp32 under bf16 (nor the reverse)
        assert metrics["autocast_used"] == used and math.isfinite(metrics["epochs"][-1]["train_loss"])
    assert made and made[0].get("fused") is True


def _tiny_train(tmp_path: Path, autocast_dtype: torch.dtype | None) -> tuple[set, dict]:
    """A tiny sentiment run trained with `autocast_dtype`; the autocast dtype each training forward saw."""
    from minigpt2.train import TrainConfig, train
    from tasks import Example
    from tasks.sentiment import SentimentClassifier

    torch.manual_seed(0)
    module = SentimentClassifier(GPT2(GPT2Config.from_name("tiny")), 2)
    seen = set()
    module.register_forward_pre_hook(lambda m, a: seen.add(
        torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
    examples = [Example(str(i), [i + 1, i + 2, i + 3], i % 2) for i in range(8)]
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, progress=False)
    metrics = train(module, examples, collate, cfg, lambda m: {"accuracy": 0.0}, "accuracy",
                    autocast_dtype=autocast_dtype)
    return seen, metrics


# ------------------------------------------------------------------------------------------- the command

def test_bf16_refused_with_one_error_line_where_the_cpu_would_emulate_it(monkeypatch, tmp_path):
    monkeypatch.setattr(dev, "cpu_native_bf16", lambda: False)
    with pytest.raises(SystemExit) as e:
        finetune.main(finetune_args("sst", tmp_path / "run", "--epochs", "1", "--autocast", "bf16"))
    assert str(e.value).startswith("error: --autocast bf16: expected a device that runs bf16 natively: this CPU has "
                                   "no native bf16")
    assert not (tmp_path / "run").exists()  # refused before any work


def test_bf16_with_fp64_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="error: --autocast bf16 would run the fp64 model's matmuls in bf16"):
        finetune.main(finetune_args("sst", tmp_path / "run", "--precision", "fp64", "--autocast", "bf16"))


# Every task and method, and every QAFT precision, one short epoch each under CPU bf16 autocast. The sonnet task's
# full-model runs are the path that crashed (the chunked LM loss under autocast).
BF16_RUNS = {
    "sst-full": ("sst", []),
    "sst-lora": ("sst", ["--method", "lora"]),
    "cfimdb-last-linear-layer": ("cfimdb", ["--mode", "last-linear-layer"]),
    "cfimdb-lora": ("cfimdb", ["--method", "lora"]),
    "quora-full": ("quora", []),
    "quora-lora": ("quora", ["--method", "lora"]),
    "sonnet-full": ("sonnet", []),
    "sonnet-lora": ("sonnet", ["--method", "lora"]),
    "sonnet-fp8-qaft": ("sonnet", ["--precision", "fp8", "--qaft"]),
    "sonnet-int8-qaft": ("sonnet", ["--precision", "int8", "--qaft"]),
    "sonnet-int4-qaft": ("sonnet", ["--precision", "int4", "--qaft", "--group-size", "16"]),
    "sonnet-bf16-qaft": ("sonnet", ["--precision", "bf16", "--qaft"]),
    "quora-int8-qaft-lora": ("quora", ["--precision", "int8", "--qaft", "--method", "lora"]),
    "sst-int4-qaft": ("sst", ["--precision", "int4", "--qaft", "--group-size", "16"]),
}


@pytest.mark.parametrize("name", sorted(BF16_RUNS))
def test_every_task_method_and_precision_trains_under_bf16_autocast(name, tmp_path, emulated_bf16):
    task, extra = BF16_RUNS[name]
    sonnet = ["--max-new-tokens", "8"] if task == "sonnet" else []
    metrics = finetune.run(finetune.parse_settings(finetune_args(
        task, tmp_path / name, "--epochs", "1", "--lr", "1e-3", "--max-train", "8", "--max-eval", "2",
        "--max-length", "64",
        "--autocast", "bf16", *sonnet, *extra)))
    assert metrics["autocast_used"] == "bf16"
    row = metrics["epochs"][-1]
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["dev_loss"]), row
    if task == "sonnet":  # the held-out NLL, after training and before, also under bf16 autocast
        for key in ("heldout_nll", "heldout_nll_base"):
            nll = metrics[key]["dev"]
            assert nll["tokens"] > 0 and math.isfinite(nll["nll"]) and nll["nll"] > 0, (key, nll)


# ------------------------------------------------------------------------------- numbers under autocast

# A tiny sentiment run under bf16 autocast against the same run in fp64 (same init, batches and dropout masks: the
# fp32 run agrees with the fp64 one to 1e-7): each epoch's train and dev loss within this relative distance.
# Measured: 0.2% at most; the train loss itself falls by 36% over the two epochs.
SENTIMENT_BF16_REL = 1e-2


def test_a_sentiment_run_under_bf16_autocast_stays_near_the_same_run_in_fp64(tmp_path, emulated_bf16):
    common = ["--epochs", "2", "--lr", "1e-3", "--max-train", "8", "--max-eval", "4", "--seed", "3"]
    runs = {name: finetune.run(finetune.parse_settings(finetune_args("sst", tmp_path / name, *common, *extra)))
            for name, extra in (("bf16", ["--autocast", "bf16"]), ("fp64", ["--precision", "fp64", "--qaft"]))}
    assert runs["bf16"]["autocast_used"] == "bf16" and runs["fp64"]["autocast_used"] == "off"
    losses = {name: [(e["train_loss"], e["dev_loss"]) for e in m["epochs"]] for name, m in runs.items()}
    rel = [abs(b - r) / r for bf, ref in zip(losses["bf16"], losses["fp64"]) for b, r in zip(bf, ref)]
    print(f"bf16 against fp64: {max(rel):.2e} at most; {losses}")
    assert max(rel) < SENTIMENT_BF16_REL, losses
    assert max(rel) > 1e-5  # it is the bf16 path: fp32 itself is within 1e-7 of fp64 here
    first, last = losses["fp64"][0][0], losses["fp64"][-1][0]
    assert last < first * (1 - 5 * SENTIMENT_BF16_REL)  # the loss moves by far more than the tolerance



# bf16 keeps 8 significant bits (relative step 2^-8 = 0.4%). Two implementations that round at different points
# (SDPA vs eager attention, fused vs separate bias adds) drift apart by a few such steps per layer; the bound is
# on the relative error of the whole logits tensor.
LOGITS_BF16_REL = 2e-2


def test_logits_under_bf16_autocast_match_transformers_under_the_same_autocast(tiny_hf_dir):
    ours, theirs = load_model(tiny_hf_dir).eval(), load_hf(tiny_hf_dir)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50257, (2, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # right padding, as the tasks batch
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = ours.logits(ids, attention_mask=mask).float()
            ref = theirs(ids, attention_mask=mask).logits.float()
        fp32 = theirs(ids, attention_mask=mask).logits
    real = mask.bool()
    rel = (got[real] - ref[real]).norm() / ref[real].norm()
    print(f"logits relative error under bf16 autocast: {rel:.4f}")
    assert rel < LOGITS_BF16_REL, rel
    assert not torch.equal(got, fp32)  # autocast did change the numbers: this is the bf16 path
    assert (got[real].argmax(-1) == ref[real].argmax(-1)).float().mean() > 0.9


# The loss curve of a short tiny-model sonnet run under bf16 autocast stays within this relative distance of fp32's
# at every step (same init, same batches): bf16 rounding moves each step's loss by well under 1%, and the curve
# itself falls by much more than the tolerance over the run.
CURVE_BF16_REL = 1e-2


def test_tiny_sonnet_loss_curve_under_bf16_stays_near_fp32():
    task = get_task("sonnet")
    tok = Tokenizer(str(FIX / "gpt2"))
    examples, _ = task.load(DATA, "train", tok, 64)
    batches = [collate(examples[i:i + 2], lm_targets=True) for i in range(0, len(examples), 2)]  # 3 of 2 x 64

    def curve(amp: bool) -> list[float]:
        torch.manual_seed(0)
        module = task.build(GPT2(GPT2Config.from_name("tiny")))
        opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
        losses = []
        for _ in range(4):
            for batch in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    loss = module(batch)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.item())
        assert all(p.dtype == torch.float32 for p in module.parameters())  # fp32 master weights
        assert all(s["exp_avg"].dtype == torch.float32 for s in opt.state.values())  # fp32 AdamW moments
        return losses

    fp32, bf16 = curve(False), curve(True)
    assert fp32[-1] < fp32[0] * (1 - 5 * CURVE_BF16_REL)  # the curve falls by far more than the tolerance
    worst = max(abs(a - b) / b for a, b in zip(bf16, fp32))
    print(f"worst step: {worst:.4f}; fp32 {fp32[0]:.3f} -> {fp32[-1]:.3f}, bf16 {bf16[0]:.3f} -> {bf16[-1]:.3f}")
    assert worst < CURVE_BF16_REL, (worst, fp32, bf16)

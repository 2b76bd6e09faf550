"""QAFT vs PTQ on a tiny model: training through the quantizer lowers the quantized model's loss."""

import copy

import pytest
import torch

from minigpt2.config import GPT2Config
from minigpt2.losses import lm_loss
from minigpt2.model import GPT2
from quant import QuantConfig, ptq, quantize_model
from tests.app.test_finetune import one_thread  # noqa: F401 (autouse: tiny matrices run best on one thread)

V = 64


def batch(g: torch.Generator, n: int) -> torch.Tensor:
    """Arithmetic sequences mod V (random start and step 1..3): learnable, and sensitive to weight noise."""
    start = torch.randint(0, V, (n, 1), generator=g)
    step = torch.randint(1, 4, (n, 1), generator=g)
    return (start + step * torch.arange(16)) % V


def loss(model: GPT2, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return lm_loss(model(ids[:, :-1]), model.wte.weight, ids[:, 1:]).item()


def train(model: GPT2, steps: int, seed: int, lr: float) -> GPT2:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        ids = batch(g, 16)
        opt.zero_grad()
        lm_loss(model(ids[:, :-1]), model.wte.weight, ids[:, 1:]).backward()
        opt.step()
    return model.eval()


def test_qaft_beats_ptq_of_the_same_run():
    torch.manual_seed(0)
    config = GPT2Config.from_name("tiny", vocab_size=V, n_positions=32, dropout=0.0)
    pretrained = train(GPT2(config), 60, seed=0, lr=1e-2)
    test = batch(torch.Generator().manual_seed(123), 256)
    cfg = QuantConfig(weight="int4", group_size=32)  # one scale per row of most layers: coarse on purpose
    # the same fine-tuning run (data, steps, lr), once in full precision and once through the quantizer
    full = train(copy.deepcopy(pretrained), 30, seed=1, lr=3e-3)
    qaft = train(quantize_model(copy.deepcopy(pretrained), cfg), 30, seed=1, lr=3e-3)
    ptq_loss, qaft_loss, full_loss = loss(ptq(full, cfg).eval(), test), loss(qaft, test), loss(full, test)
    assert qaft_loss < ptq_loss - 0.005, f"QAFT {qaft_loss:.4f} vs PTQ {ptq_loss:.4f} (fp32 {full_loss:.4f})"
    assert full_loss < ptq_loss  # quantization does cost something here, or the comparison would be empty

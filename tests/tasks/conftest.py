"""Fixtures shared by the task tests: the shipped GPT-2 tokenizer and a tiny random model."""

from __future__ import annotations

import pytest
import torch

from experiments.sweeps import TINY_DATA
from minigpt2.config import GPT2Config
from minigpt2.model import GPT2
from minigpt2.tokenizer import Tokenizer

GPT2_BPE = TINY_DATA / "gpt2"  # the GPT-2 BPE files shipped with the repository


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(GPT2_BPE)


@pytest.fixture(scope="module")
def tiny() -> GPT2:
    torch.manual_seed(0)
    return GPT2(GPT2Config.from_name("tiny", dropout=0.0)).eval()

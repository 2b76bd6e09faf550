"""Model configuration: one small dataclass and the table of GPT-2 presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

# Sizes of the four released GPT-2 models (Radford et al., 2019), plus a tiny one for tests.
PRESETS: dict[str, dict[str, int]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, n_positions=128),
}

# Fields of a Hugging Face GPT-2 `config.json` that we read and write; names are HF's.
HF_FIELDS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "layer_norm_epsilon")


@dataclass(frozen=True)
class GPT2Config:
    """Hyper-parameters of a GPT-2 model; names follow the Hugging Face checkpoint config."""

    vocab_size: int = 50257
    n_positions: int = 1024  # longest sequence (size of the position embedding)
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5
    dropout: float = 0.1  # embedding, attention and residual dropout, as in GPT-2

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):  # first: n_head 0 divides by 0
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "GPT2Config":
        """A preset by name (`gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`, `tiny`), with optional overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown GPT-2 preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "GPT2Config":
        """Read the fields we use from a Hugging Face GPT-2 `config.json` dictionary."""
        model_type = d.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ValueError(f"{source}: model_type is {model_type!r}, expected 'gpt2'")
        missing = [k for k in ("n_embd", "n_layer", "n_head") if k not in d]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing} in a GPT-2 config")
        kwargs = {k: d[k] for k in HF_FIELDS if k in d}
        for k, v in kwargs.items():  # 32.0 would reach torch as a float size, far from the file that said it
            number = k == "layer_norm_epsilon"
            if isinstance(v, bool) or not isinstance(v, (int, float) if number else int):
                raise ValueError(f"{source}: {k} is {v!r}; expected {'a number' if number else 'an integer'}")
        eps = kwargs.get("layer_norm_epsilon", 0.0)
        if not (0 <= eps < math.inf):  # a negative or NaN epsilon gives NaN logits, not an error
            raise ValueError(f"{source}: layer_norm_epsilon is {eps!r}; expected a finite number >= 0")
        if "resid_pdrop" in d:
            p = d["resid_pdrop"]  # true would be dropout 1.0 (every activation zeroed in training)
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
                raise ValueError(f"{source}: resid_pdrop is {p!r}; expected a number >= 0 and < 1")
            kwargs["dropout"] = float(p)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """The Hugging Face `config.json` form, loadable by `transformers.GPT2LMHeadModel.from_pretrained`."""
        d: dict[str, Any] = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}
        d.update({k: getattr(self, k) for k in HF_FIELDS})
        d.update(n_ctx=self.n_positions, activation_function="gelu_new", resid_pdrop=self.dropout,
                 embd_pdrop=self.dropout, attn_pdrop=self.dropout, bos_token_id=50256, eos_token_id=50256,
                 tie_word_embeddings=True)
        return d

    def replace(self, **changes: Any) -> "GPT2Config":
        return dataclasses.replace(self, **changes)

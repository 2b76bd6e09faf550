"""minigpt2: a from-scratch, minimal GPT-2 fine-tuning lab in pure PyTorch."""

from .config import GPT2Config
from .model import GPT2, KVCache

__all__ = ["GPT2Config", "GPT2", "KVCache"]
__version__ = "0.1.0"

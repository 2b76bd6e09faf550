"""GPT-2's byte-level BPE through tiktoken, with an offline path.

By default tiktoken's `gpt2` encoding is used (it downloads `encoder.json` + `vocab.bpe` once and caches them).
Offline, point minigpt2 at a folder holding those two files: the `bpe_dir` argument, or the environment variable
`MINIGPT2_TOKENIZER_DIR`. The files are checked against the sha256 that tiktoken itself pins.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from .errors import UserError

ENV_VAR = "MINIGPT2_TOKENIZER_DIR"
EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
# sha256 of the two files of GPT-2's encoding (the same values tiktoken pins).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


class TokenizerUnavailable(UserError, RuntimeError):
    """Neither the network nor local BPE files could provide GPT-2's vocabulary."""


@functools.lru_cache(maxsize=4)
def _encoding_from_dir(folder: str) -> tiktoken.Encoding:
    path = Path(folder)
    files = {name: path / name for name in ("encoder.json", "vocab.bpe")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise TokenizerUnavailable(f"GPT-2 tokenizer folder {path}: missing {', '.join(missing)} "
                                   "(expected encoder.json and vocab.bpe)")
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(files["vocab.bpe"]), encoder_json_file=str(files["encoder.json"]),
            vocab_bpe_hash=VOCAB_BPE_SHA256, encoder_json_hash=ENCODER_JSON_SHA256)
    except ValueError as e:  # tiktoken raises ValueError on a hash mismatch
        raise TokenizerUnavailable(f"GPT-2 tokenizer folder {path}: {e}") from e
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={EOT_TOKEN: EOT_ID}, explicit_n_vocab=50257)


def get_encoding(bpe_dir: str | os.PathLike | None = None) -> tiktoken.Encoding:
    """GPT-2's tiktoken encoding: from `bpe_dir`, else `$MINIGPT2_TOKENIZER_DIR`, else tiktoken's download."""
    folder = bpe_dir or os.environ.get(ENV_VAR)
    if folder:
        return _encoding_from_dir(str(Path(folder).resolve()))
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # tiktoken surfaces network failures as requests/urllib errors of many kinds
        raise TokenizerUnavailable(
            "could not load GPT-2's tokenizer: tiktoken failed to download it "
            f"({type(e).__name__}: {e}). Offline, put encoder.json and vocab.bpe in a folder and set "
            f"{ENV_VAR}=/that/folder (or set tokenizer_dir to it)."
        ) from e


class Tokenizer:
    """A thin wrapper: encode/decode text, batch encode, and GPT-2's end-of-text id."""

    eot_id = EOT_ID

    def __init__(self, bpe_dir: str | os.PathLike | None = None) -> None:
        self.enc = get_encoding(bpe_dir)

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    def encode(self, text: str, allow_eot: bool = False) -> list[int]:
        """Token ids of `text`; "<|endoftext|>" is plain text unless `allow_eot`."""
        if allow_eot:
            return self.enc.encode(text, allowed_special={EOT_TOKEN})
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(list(ids))

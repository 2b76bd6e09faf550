"""GPT-2's tokenizer through tiktoken, online or from local BPE files."""

from __future__ import annotations

import shutil

import pytest
import tiktoken

from minigpt2 import tokenizer as tok
from minigpt2.tokenizer import Tokenizer, TokenizerUnavailable

from tests.conftest import BPE_DIR


@pytest.mark.parametrize("text, ids", [
    ("Hello world", [15496, 995]),
    ("yes", [8505]),
    ("no", [3919]),
    ("Shall I compare thee to a summer's day?", [2484, 439, 314, 8996, 17903, 284, 257, 3931, 338, 1110, 30]),
])
def test_known_gpt2_ids(text, ids):
    t = Tokenizer(BPE_DIR)
    assert t.encode(text) == ids
    assert t.decode(ids) == text


def test_round_trip_and_end_of_text():
    t = Tokenizer(BPE_DIR)
    text = "Thy bosom is endeared with all hearts,\r\nWhich I by lacking have supposed dead. <br /> ünïcödé ✓"
    assert t.decode(t.encode(text)) == text
    assert t.encode("<|endoftext|>", allow_eot=True) == [50256] == [t.eot_id]
    assert 50256 not in t.encode("<|endoftext|>")  # plain text unless allowed
    assert t.vocab_size == 50257


def test_environment_variable_points_to_the_files(monkeypatch):
    monkeypatch.setenv(tok.ENV_VAR, str(BPE_DIR))
    assert Tokenizer().encode("Hello world") == [15496, 995]


def test_missing_files_name_the_folder(tmp_path):
    with pytest.raises(TokenizerUnavailable, match=r"missing .*vocab.bpe"):
        shutil.copy(BPE_DIR / "encoder.json", tmp_path / "encoder.json")
        Tokenizer(tmp_path)


def test_wrong_files_fail_the_checksum(tmp_path):
    shutil.copy(BPE_DIR / "encoder.json", tmp_path / "encoder.json")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\na b\n")
    with pytest.raises(TokenizerUnavailable, match=str(tmp_path)):
        Tokenizer(tmp_path)


def test_offline_without_files_says_how_to_fix(monkeypatch):
    monkeypatch.delenv(tok.ENV_VAR, raising=False)

    def no_network(name):
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    with pytest.raises(TokenizerUnavailable, match=r"MINIGPT2_TOKENIZER_DIR=/that/folder"):
        Tokenizer()


def test_online_asks_tiktoken_for_gpt2(monkeypatch):
    """Without a folder, the encoding is tiktoken's own "gpt2" (the name it downloads and caches under)."""
    monkeypatch.delenv(tok.ENV_VAR, raising=False)
    asked = []
    local = tok.get_encoding(BPE_DIR)

    def fake_get_encoding(name):
        asked.append(name)
        return local

    monkeypatch.setattr(tiktoken, "get_encoding", fake_get_encoding)
    assert Tokenizer().encode("Hello world") == [15496, 995]
    assert asked == ["gpt2"]


def test_offline_error_is_one_line_naming_the_failure(monkeypatch):
    monkeypatch.delenv(tok.ENV_VAR, raising=False)

    def no_network(name):
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    with pytest.raises(TokenizerUnavailable) as err:
        Tokenizer()
    assert str(err.value) == (
        "could not load GPT-2's tokenizer: tiktoken failed to download it (ConnectionError: Failed to resolve "
        "'openaipublic.blob.core.windows.net'). Offline, put encoder.json and vocab.bpe in a folder and set "
        "MINIGPT2_TOKENIZER_DIR=/that/folder (or set tokenizer_dir to it).")


def test_batch_encoding_is_each_text_encoded_and_end_of_text_stays_text():
    t = Tokenizer(BPE_DIR)
    texts = ["Hello world", "", "yes<|endoftext|>no"]
    assert t.encode_batch(texts) == [[15496, 995], [], t.encode("yes<|endoftext|>no")]
    assert 50256 not in t.encode_batch(texts)[2]

"""`minigpt2.config`: the GPT-2 presets, the defaults, the checks of a config and their lines, and the Hugging Face
`config.json` read and written (which keys are read, the line for each bad one). Expected values from outside the
code: the sizes of the released GPT-2 models (Radford et al., 2019, table 2; their HF config.json files) and a
config.json written by hand."""

from __future__ import annotations

import json
import re

import pytest

from minigpt2.config import HF_FIELDS, PRESETS, GPT2Config

# ------------------------------------------------------------------------------------------ presets, defaults


@pytest.mark.parametrize("name, layers, heads, width, params_m", [
    ("gpt2", 12, 12, 768, 124), ("gpt2-medium", 24, 16, 1024, 355), ("gpt2-large", 36, 20, 1280, 774),
    ("gpt2-xl", 48, 25, 1600, 1558)])
def test_each_released_preset_has_its_published_sizes(name, layers, heads, width, params_m):
    c = GPT2Config.from_name(name)
    assert (c.n_layer, c.n_head, c.n_embd) == (layers, heads, width)
    assert (c.vocab_size, c.n_positions, c.layer_norm_epsilon, c.dropout) == (50257, 1024, 1e-5, 0.1)
    assert c.head_dim == 64 and type(c.head_dim) is int  # every released GPT-2 has 64-wide heads
    # parameters (tied head): embeddings V C + P C, per block 12 C^2 + 13 C, the final LayerNorm 2 C
    n = (c.vocab_size + c.n_positions) * width + layers * (12 * width * width + 13 * width) + 2 * width
    assert round(n / 1e6) == params_m


def test_the_tiny_preset_and_the_table_as_written():
    assert PRESETS == {
        "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},
        "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024},
        "gpt2-large": {"n_layer": 36, "n_head": 20, "n_embd": 1280},
        "gpt2-xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600},
        "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 128},
    }
    tiny = GPT2Config.from_name("tiny")
    assert (tiny.n_layer, tiny.n_head, tiny.n_embd, tiny.n_positions, tiny.head_dim) == (2, 2, 32, 128, 16)


def test_defaults_are_gpt2_small():
    assert GPT2Config() == GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                                      layer_norm_epsilon=1e-5, dropout=0.1)
    assert GPT2Config() == GPT2Config.from_name("gpt2")


def test_overrides_win_over_the_preset():
    c = GPT2Config.from_name("gpt2", n_layer=2, dropout=0.0, vocab_size=100)
    assert (c.n_layer, c.n_head, c.n_embd, c.dropout, c.vocab_size) == (2, 12, 768, 0.0, 100)
    c = GPT2Config.from_name("tiny", n_positions=16)
    assert c.n_positions == 16


def test_an_unknown_preset_names_every_known_one():
    with pytest.raises(ValueError) as e:
        GPT2Config.from_name("gpt3")
    assert str(e.value) == ("unknown GPT-2 preset 'gpt3'; expected one of "
                            "['gpt2', 'gpt2-large', 'gpt2-medium', 'gpt2-xl', 'tiny']")


def test_head_dim_is_the_width_over_the_heads():
    assert GPT2Config(n_embd=10, n_head=5).head_dim == 2
    assert GPT2Config(n_embd=12, n_head=3).head_dim == 4


def test_replace_changes_only_what_it_is_given():
    c = GPT2Config.from_name("tiny").replace(n_layer=5)
    assert c == GPT2Config(n_layer=5, n_head=2, n_embd=32, n_positions=128)


# ------------------------------------------------------------------------------------------ the checks


def test_width_not_divisible_by_heads_is_refused_with_both_numbers():
    with pytest.raises(ValueError) as e:
        GPT2Config(n_embd=10, n_head=4)
    assert str(e.value) == "n_embd (10) must be divisible by n_head (4)"


@pytest.mark.parametrize("field", ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head"])
@pytest.mark.parametrize("value", [0, -5])
def test_each_size_must_be_positive(field, value):
    """Checked before the width is divided by the heads: n_head 0 was a ZeroDivisionError traceback, and a
    negative size was named as not dividing (768 % -5 is -2) instead of as not positive."""
    with pytest.raises(ValueError) as e:
        GPT2Config(**{field: value})
    assert str(e.value) == f"{field} must be positive, got {value}"


def test_a_config_json_with_zero_heads_is_one_line(tmp_path):
    from minigpt2.checkpoint import CheckpointError, read_hf_config
    (tmp_path / "config.json").write_text('{"n_embd": 8, "n_layer": 1, "n_head": 0}')
    with pytest.raises(CheckpointError) as e:
        read_hf_config(tmp_path / "config.json")
    assert str(e.value) == "n_head must be positive, got 0"


def test_the_smallest_sizes_are_accepted():
    c = GPT2Config(vocab_size=1, n_positions=1, n_embd=1, n_layer=1, n_head=1)
    assert (c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head, c.head_dim) == (1, 1, 1, 1, 1, 1)


# ------------------------------------------------------------------------------------------ config.json

# A config.json written by hand, every size away from GPT-2 small's (so that a key not read shows as the default),
# and the three dropouts different (only resid_pdrop is read).
HAND_WRITTEN = """{
  "activation_function": "gelu_new",
  "architectures": ["GPT2LMHeadModel"],
  "attn_pdrop": 0.3,
  "bos_token_id": 50256,
  "embd_pdrop": 0.4,
  "eos_token_id": 50256,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-06,
  "model_type": "gpt2",
  "n_ctx": 64,
  "n_embd": 48,
  "n_head": 4,
  "n_inner": null,
  "n_layer": 3,
  "n_positions": 64,
  "resid_pdrop": 0.2,
  "vocab_size": 1000
}"""


def test_a_hand_written_config_json_is_read_key_by_key():
    c = GPT2Config.from_hf_dict(json.loads(HAND_WRITTEN))
    assert c == GPT2Config(vocab_size=1000, n_positions=64, n_embd=48, n_layer=3, n_head=4, layer_norm_epsilon=1e-6,
                           dropout=0.2)
    assert type(c.dropout) is float


def test_only_the_three_sizes_are_needed_the_rest_default():
    c = GPT2Config.from_hf_dict({"n_embd": 48, "n_layer": 3, "n_head": 4})  # no model_type: taken as gpt2
    assert c == GPT2Config(n_embd=48, n_layer=3, n_head=4)
    assert (c.vocab_size, c.n_positions, c.layer_norm_epsilon, c.dropout) == (50257, 1024, 1e-5, 0.1)


def test_resid_pdrop_is_read_as_a_float():
    c = GPT2Config.from_hf_dict({"n_embd": 8, "n_layer": 1, "n_head": 2, "resid_pdrop": 0})
    assert c.dropout == 0.0 and type(c.dropout) is float
    c = GPT2Config.from_hf_dict({"n_embd": 8, "n_layer": 1, "n_head": 2, "attn_pdrop": 0.5, "embd_pdrop": 0.5})
    assert c.dropout == 0.1  # the other two dropouts are not read


def test_layer_norm_epsilon_may_be_an_integer_the_sizes_may_not_be_floats():
    c = GPT2Config.from_hf_dict({"n_embd": 8, "n_layer": 1, "n_head": 2, "layer_norm_epsilon": 1})
    assert c.layer_norm_epsilon == 1
    with pytest.raises(ValueError) as e:
        GPT2Config.from_hf_dict({"n_embd": 32.0, "n_layer": 1, "n_head": 2})
    assert str(e.value) == "config.json: n_embd is 32.0; expected an integer"


@pytest.mark.parametrize("key, value, line", [
    ("vocab_size", "50257", "vocab_size is '50257'; expected an integer"),
    ("n_positions", True, "n_positions is True; expected an integer"),
    ("n_layer", 2.0, "n_layer is 2.0; expected an integer"),
    ("n_head", None, "n_head is None; expected an integer"),
    ("layer_norm_epsilon", "1e-5", "layer_norm_epsilon is '1e-5'; expected a number"),
    ("layer_norm_epsilon", False, "layer_norm_epsilon is False; expected a number"),
    ("layer_norm_epsilon", None, "layer_norm_epsilon is None; expected a number"),
])
def test_each_bad_value_is_one_line_naming_the_file_the_key_and_the_value(key, value, line):
    d = {"n_embd": 8, "n_layer": 1, "n_head": 2, key: value}
    with pytest.raises(ValueError) as e:
        GPT2Config.from_hf_dict(d, source="models/x/config.json")
    assert str(e.value) == f"models/x/config.json: {line}"


def test_another_model_type_is_refused_by_name():
    with pytest.raises(ValueError) as e:
        GPT2Config.from_hf_dict({"model_type": "llama", "n_embd": 8, "n_layer": 1, "n_head": 2})
    assert str(e.value) == "config.json: model_type is 'llama', expected 'gpt2'"
    with pytest.raises(ValueError) as e:
        GPT2Config.from_hf_dict({"model_type": None, "n_embd": 8, "n_layer": 1, "n_head": 2}, source="a.json")
    assert str(e.value) == "a.json: model_type is None, expected 'gpt2'"


@pytest.mark.parametrize("d, missing", [
    ({}, ["n_embd", "n_layer", "n_head"]),
    ({"n_layer": 1}, ["n_embd", "n_head"]),
    ({"n_embd": 8, "n_head": 2}, ["n_layer"]),
    ({"n_embd": 8, "n_layer": 1}, ["n_head"]),
])
def test_missing_sizes_are_listed_in_one_line(d, missing):
    with pytest.raises(ValueError) as e:
        GPT2Config.from_hf_dict({"model_type": "gpt2", "vocab_size": 10, **d}, source="c.json")
    assert str(e.value) == f"c.json: missing key(s) {missing} in a GPT-2 config"


def test_a_config_that_fails_its_own_checks_names_the_numbers():
    with pytest.raises(ValueError, match=re.escape("n_embd (8) must be divisible by n_head (3)")):
        GPT2Config.from_hf_dict({"n_embd": 8, "n_layer": 2, "n_head": 3})


def test_the_written_config_json_is_the_hand_written_one():
    c = GPT2Config(vocab_size=1000, n_positions=64, n_embd=48, n_layer=3, n_head=4, layer_norm_epsilon=1e-6,
                   dropout=0.2)
    assert HF_FIELDS == ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "layer_norm_epsilon")
    assert c.to_hf_dict() == {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 1000, "n_positions": 64,
        "n_embd": 48, "n_layer": 3, "n_head": 4, "layer_norm_epsilon": 1e-6, "n_ctx": 64,
        "activation_function": "gelu_new", "resid_pdrop": 0.2, "embd_pdrop": 0.2, "attn_pdrop": 0.2,
        "bos_token_id": 50256, "eos_token_id": 50256, "tie_word_embeddings": True,
    }
    assert list(c.to_hf_dict())[:2] == ["model_type", "architectures"]
    assert GPT2Config.from_hf_dict(json.loads(json.dumps(c.to_hf_dict()))) == c  # read back as written


@pytest.mark.parametrize("value, shown", [("abc", "'abc'"), (None, "None"), (True, "True"), (1.5, "1.5"),
                                          (-0.1, "-0.1"), (1, "1"), (float("nan"), "nan"), ("0.1", "'0.1'")])
def test_a_bad_resid_pdrop_is_one_line_naming_the_file(tmp_path, value, shown):
    """Was: a bare float() error without file or key ('abc', null), dropout 1.0 read from true (every activation
    zeroed in training), or torch's dropout error at model build (1.5, -0.1)."""
    from minigpt2.checkpoint import CheckpointError, read_hf_config
    c = tmp_path / "config.json"
    c.write_text(json.dumps({"n_embd": 8, "n_layer": 1, "n_head": 2, "resid_pdrop": value}))
    with pytest.raises(CheckpointError) as e:
        read_hf_config(c)
    assert str(e.value) == f"{c}: resid_pdrop is {shown}; expected a number >= 0 and < 1"


@pytest.mark.parametrize("value, dropout", [(0, 0.0), (0.0, 0.0), (0.5, 0.5), (0.999, 0.999)])
def test_resid_pdrop_from_0_to_below_1_is_read(value, dropout):
    c = GPT2Config.from_hf_dict({"n_embd": 8, "n_layer": 1, "n_head": 2, "resid_pdrop": value})
    assert c.dropout == dropout and type(c.dropout) is float


@pytest.mark.parametrize("value, shown", [(-1e-5, "-1e-05"), (float("nan"), "nan"), (float("inf"), "inf"),
                                          (-1, "-1")])
def test_a_negative_or_non_finite_epsilon_is_refused(value, shown):
    """Was read, and the model's logits were NaN."""
    with pytest.raises(ValueError) as e:
        GPT2Config.from_hf_dict({"n_embd": 8, "n_layer": 1, "n_head": 2, "layer_norm_epsilon": value}, source="c")
    assert str(e.value) == f"c: layer_norm_epsilon is {shown}; expected a finite number >= 0"


def test_an_epsilon_of_zero_is_read():
    assert GPT2Config.from_hf_dict({"n_embd": 8, "n_layer": 1, "n_head": 2, "layer_norm_epsilon": 0}) \
        .layer_norm_epsilon == 0

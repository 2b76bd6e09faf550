"""app/gguf.py under mutmut: `python -m quant.gguf MODEL --type T --out FILE`, the command's front end.

The model loader, the adapters and the writer are stand-ins that record what the command hands them, so each test
reads what the command decided: which type and file it refuses (one `error:` line, before the model is loaded,
nothing written), which adapters it merges, which tokenizer folder and model name go into the file, and the one
line it prints. Two tests run the real pieces on the tiny model.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from app import gguf as command

pytest.importorskip("gguf")


class Model:
    """A stand-in GPT2: records eval()."""

    def __init__(self):
        self.calls = []

    def eval(self):
        self.calls.append("eval")
        return self


class Adapter:
    def __init__(self, log, name, mergeable):
        self.log, self.name, self.mergeable = log, name, mergeable

    def merge(self):
        self.log.append(("merge", self.name))


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """The command with stand-ins: `fake.loads` (name, offline), `fake.log` (what happened in which order),
    `fake.exports` (model, path, type, name, bpe_dir); the written file is `size` bytes long."""
    state = SimpleNamespace(loads=[], log=[], exports=[], model=Model(), settings=None, adapters={}, size=2_360_000)

    def load_source(name, offline):
        state.loads.append((name, offline))
        state.log.append("load")
        return state.model, state.settings

    def lora_modules(gpt):
        assert gpt is state.model
        state.log.append("adapters")
        return state.adapters

    def check_exportable(gpt, type_):
        assert gpt is state.model
        state.log.append(("check", type_, list(gpt.calls)))

    def export_gguf(gpt, out, type_, name, bpe_dir):
        state.exports.append((gpt, out, type_, name, bpe_dir))
        state.log.append("export")
        out.write_bytes(b"\0" * state.size)
        return out

    for k, v in dict(load_source=load_source, lora_modules=lora_modules, check_exportable=check_exportable,
                     export_gguf=export_gguf).items():
        monkeypatch.setattr(command, k, v)
    return state


def error_line(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        command.main(list(argv))
    assert capsys.readouterr().err == ""  # the line is SystemExit's message, printed by Python on the way out
    return e.value.code


def test_an_unknown_type_is_one_line_before_the_model_is_loaded(fake, capsys, tmp_path):
    out = tmp_path / "m.gguf"
    for bad in ("q3", "F16", "q4_1", ""):
        assert error_line(capsys, "gpt2-xl", "--type", bad, "--out", str(out)) == \
            f"error: --type '{bad}': expected one of f32, f16, q8_0, q4_0"
    assert fake.loads == [] and fake.exports == [] and list(tmp_path.iterdir()) == []


def test_an_out_folder_is_one_line_before_the_model_is_loaded(fake, capsys, tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    assert error_line(capsys, "gpt2", "--type", "q8_0", "--out", str(folder)) == \
        f"error: --out {folder}: is a folder; expected a file name such as {folder}/model.gguf"
    assert fake.loads == [] and list(folder.iterdir()) == []


@pytest.mark.parametrize("type_", ["f32", "f16", "q8_0", "q4_0"])
def test_every_type_is_accepted_and_handed_on(fake, tmp_path, type_):
    out = tmp_path / "new" if type_ == "f32" else tmp_path / f"m-{type_}.gguf"  # a name without suffix is a file
    assert command.run(command.gguf_settings(["gpt2", "--type", type_, "--out", str(out)])) == out
    assert fake.loads == [("gpt2", False)]
    (gpt, path, t, name, bpe), = fake.exports
    assert gpt is fake.model and path == out and t == type_ and name == "gpt2" and bpe is None


def test_the_default_type_is_f16_and_offline_reaches_the_loader(fake, tmp_path):
    command.run(command.gguf_settings(["gpt2-medium", "--out", str(tmp_path / "m.gguf"), "--offline"]))
    assert fake.loads == [("gpt2-medium", True)]
    assert fake.exports[0][2] == "f16"
    assert fake.log == ["load", "adapters", ("check", "f16", ["eval"]), "export"]  # eval'd before the check


def test_mergeable_adapters_are_merged_before_the_check_and_the_others_left_to_it(fake, tmp_path):
    fake.adapters = {"h.0.attn": Adapter(fake.log, "h.0.attn", True), "h.1.attn": Adapter(fake.log, "h.1.attn", False),
                     "h.1.mlp": Adapter(fake.log, "h.1.mlp", True)}
    command.run(command.gguf_settings(["run", "--type", "f32", "--out", str(tmp_path / "m.gguf")]))
    assert fake.log == ["load", "adapters", ("merge", "h.0.attn"), ("merge", "h.1.mlp"), ("check", "f32", ["eval"]),
                        "export"]


def test_the_tokenizer_folder_is_the_flags_else_the_runs_else_the_default(fake, tmp_path):
    def bpe(*flags, settings=None):
        fake.settings, fake.exports = settings, []
        command.run(command.gguf_settings(["run", "--out", str(tmp_path / "m.gguf"), *flags]))
        return fake.exports[0][4]

    run = SimpleNamespace(paths=SimpleNamespace(tokenizer_dir="/runs/tok"))
    assert bpe("--tokenizer-dir", "/flag/tok", settings=run) == "/flag/tok"
    assert bpe(settings=run) == "/runs/tok"
    assert bpe(settings=SimpleNamespace(paths=SimpleNamespace(tokenizer_dir=None))) is None
    assert bpe() is None  # a preset or checkpoint: no run settings
    assert bpe("--tokenizer-dir", "/flag/tok") == "/flag/tok"


def test_the_name_in_the_file_is_a_folders_own_name_else_the_model_as_given(fake, tmp_path):
    def name(model):
        fake.exports = []
        command.run(command.gguf_settings([model, "--out", str(tmp_path / "m.gguf")]))
        return fake.exports[0][3]

    run = tmp_path / "runs" / "sonnet-lora"
    run.mkdir(parents=True)
    (tmp_path / "ckpt.safetensors").write_bytes(b"")
    assert name(str(run)) == "sonnet-lora"
    assert name(str(tmp_path / "ckpt.safetensors")) == "ckpt.safetensors"
    assert name("gpt2-large") == "gpt2-large"
    assert name("openai/gpt2") == "openai/gpt2"  # no such path: the name as given, slash and all


def test_main_prints_one_line_with_the_size_in_megabytes(fake, capsys, tmp_path):
    out = tmp_path / "m.gguf"
    assert command.main(["gpt2", "--type", "q4_0", "--out", str(out)]) is None
    assert capsys.readouterr() == ("", f"wrote {out} (2.4 MB)\n")  # 2,360,000 bytes / 10^6 = 2.36 -> 2.4
    fake.size = 149_000
    command.main(["gpt2", "--out", str(out)])
    assert capsys.readouterr().err == f"wrote {out} (0.1 MB)\n"


def test_help_describes_the_command_in_its_first_paragraph_only(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        command.main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: python -m quant.gguf ")
    assert "Write a GPT-2 as a GGUF file for llama.cpp (ollama, LM Studio): `python -m quant.gguf`. options:" in text
    assert "MODEL is what" not in text and "sonnet-q8_0" not in text


# ---- the real check and writer ----

def test_a_run_that_quantizes_activations_is_refused_before_anything_is_written(capsys, tmp_path, monkeypatch):
    from minigpt2.config import GPT2Config
    from minigpt2.model import GPT2
    from quant.config import QuantConfig
    from quant.qaft import quantize_model

    acts = quantize_model(GPT2(GPT2Config(n_layer=1, n_head=2, n_embd=64, n_positions=16, vocab_size=96)),
                          QuantConfig(weight="int8", activations=True))
    monkeypatch.setattr(command, "load_source", lambda name, offline: (acts, None))
    bad = tmp_path / "acts.gguf"
    message = error_line(capsys, "run", "--type", "f32", "--out", str(bad))
    assert message.startswith("error: ") and "quantizes activations" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []

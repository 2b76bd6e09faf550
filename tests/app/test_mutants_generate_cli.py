"""`python -m minigpt2.generate` (app/generate.py): every line a user reads, written out here. A stand-in for
`generate` emits scripted text, so the whole of stdout (headers, prompts, streamed text, newlines, verdicts), the
seed of each sample and the sampling arguments are pinned; the refusals are checked whole.

Written against mutmut's survivors (`python tools/mutate.py --auto app/generate.py`, docs/testing.md). Fast:
`--model tiny` only, no fine-tuned run."""

from __future__ import annotations

import io
import json

import pytest
import torch

from app import generate as cli
from app.precision import PrecisionSettings
from app.settings import DataSettings, RunSettings
from minigpt2 import GPT2, GPT2Config
from minigpt2.lora import LoRAConfig, apply_lora, lora_modules
from minigpt2.tokenizer import Tokenizer
from minigpt2.train import TrainConfig

EOT = 50256
# A sonnet distill.check calls perfect (ABAB CDCD EFEF GG on plain CMU rhymes), as in test_mutants_report.py.
ENDS = "day night way light tree sun free run rain sky pain high sea me".split()
LINES = [f"I sing a line that ends upon the {w}," for w in ENDS]


class Stand:
    """A stand-in for `minigpt2.generation.generate`: each call emits the next scripted text's tokens, then
    <|endoftext|>, token by token through `on_token`, until `max_new` tokens or the stop rule; records each call."""

    def __init__(self, monkeypatch, *texts: str) -> None:
        self.tok, self.texts, self.calls, self.tokens = Tokenizer(), list(texts), [], []
        monkeypatch.setattr(cli, "generate", self)

    def __call__(self, model, prompts, max_new, **kw):
        self.calls.append({"prompts": prompts, "max_new": max_new, **kw})
        new = []
        for t in self.tok.encode(self.texts.pop(0)) + [kw["eos_id"]]:
            if len(new) >= max_new or (kw["stop"] is not None and kw["stop"](new)):
                break
            new.append(t)
            kw["on_token"](0, t)
        return [new]


def run_cli(*argv: str, stdin: str = "", on_token=None) -> tuple[str, list[str]]:
    out = io.StringIO()
    texts = cli.run(cli.parse_settings(["--model", "tiny", *argv]), stdin=io.StringIO(stdin), out=out,
                    on_token=on_token)
    return out.getvalue(), texts


def refusal(*argv: str, stdin: str = "") -> str:
    """The GenerateError of the command on `stdin` (main's `stdin` is bound to the real one)."""
    with pytest.raises(cli.GenerateError) as e:
        run_cli(*argv, stdin=stdin)
    return str(e.value)


def error_of(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", "tiny", *argv])
    capsys.readouterr()
    return str(e.value.code)


# ---------------------------------------------------------------------------------------------- what is printed

def test_every_sample_of_every_prompt_with_its_header_seed_and_newline(monkeypatch):
    stand = Stand(monkeypatch, " one", " two\n", "", " four", " five", " six\n")
    seen = []
    out, texts = run_cli("--num-samples", "3", "--seed", "10", "--max-new-tokens", "7", "--temperature", "0.7",
                         "--top-k", "5", "--top-p", "0.9", stdin="Roses are red  \n\n\n  Violets\nare blue\n",
                         on_token=lambda row, t: seen.append((row, t)))
    assert out == ("=== prompt 1, sample 1 ===\nRoses are red one\n"
                   "\n=== prompt 1, sample 2 ===\nRoses are red two\n"
                   "\n=== prompt 1, sample 3 ===\nRoses are red\n"
                   "\n=== prompt 2, sample 1 ===\n  Violets\nare blue four\n"
                   "\n=== prompt 2, sample 2 ===\n  Violets\nare blue five\n"
                   "\n=== prompt 2, sample 3 ===\n  Violets\nare blue six\n")
    assert texts == ["Roses are red one", "Roses are red two\n", "Roses are red", "  Violets\nare blue four",
                     "  Violets\nare blue five", "  Violets\nare blue six\n"]
    tok = Tokenizer()
    # sample j of prompt i (from 0) has seed 10 + 3 i + j
    assert [c["seed"] for c in stand.calls] == [10, 11, 12, 13, 14, 15]
    first, second = tok.encode("Roses are red"), tok.encode("  Violets\nare blue")
    for k, call in enumerate(stand.calls):
        assert call["prompts"] == [first if k < 3 else second] and call["max_new"] == 7
        assert {a: call[a] for a in ("temperature", "top_k", "top_p", "eos_id", "stop")} == {
            "temperature": 0.7, "top_k": 5, "top_p": 0.9, "eos_id": EOT, "stop": None}
    # every token reaches on_token (row 0), <|endoftext|> included; the stream never prints it
    want = [t for text in (" one", " two\n", "", " four", " five", " six\n") for t in tok.encode(text) + [EOT]]
    assert seen == [(0, t) for t in want]


def test_one_prompt_one_sample_has_no_header_and_defaults_reach_generate(monkeypatch):
    stand = Stand(monkeypatch, " world")
    assert run_cli("--prompt", "Hello  ", "--seed", "0") == ("Hello world\n", ["Hello world"])
    call = stand.calls[0]
    # defaults: temperature 1, no top-k / top-p, 100 new tokens (DEFAULT_MAX_NEW_TOKENS), seed 0 + 0
    assert (call["prompts"], call["max_new"], call["temperature"], call["top_k"], call["top_p"], call["seed"]) == (
        [Tokenizer().encode("Hello")], cli.GenerateSettings().new_tokens, 1.0, None, None, 0)


def test_an_empty_prompt_samples_from_endoftext(monkeypatch):
    stand = Stand(monkeypatch, " From nothing")
    assert run_cli("--prompt", "", "--seed", "4") == (" From nothing\n", [" From nothing"])
    assert stand.calls[0]["prompts"] == [[EOT]] and stand.calls[0]["seed"] == 4


def test_without_a_seed_the_seed_is_four_random_bytes_little_endian(monkeypatch):
    stand = Stand(monkeypatch, " a", " b")
    asked = []
    monkeypatch.setattr(cli.os, "urandom", lambda n: asked.append(n) or bytes([1, 2, 0, 0])[:n])
    run_cli("--prompt", "x", "--num-samples", "2")
    assert asked == [4] and [c["seed"] for c in stand.calls] == [513, 514]  # 1 + 2 * 256


def test_a_sonnet_is_the_prompt_lines_then_new_lines_to_fourteen_and_its_verdict(monkeypatch):
    # 2 prompt lines: the stop rule ends the draw at 12 finished new lines (a 13th is scripted, never reached)
    stand = Stand(monkeypatch, "\n".join(LINES[2:]) + "\nAnd one line too many,\n")
    out, texts = run_cli("--sonnet", "--prompt", "\n".join(LINES[:2]), "--seed", "1")
    assert out == "\n".join(LINES) + "\nverdict: a perfect sonnet (14 lines, ABAB CDCD EFEF GG)\n"
    assert texts == ["\n".join(LINES)]
    call = stand.calls[0]
    assert call["prompts"] == [Tokenizer().encode("\n".join(LINES[:2]) + "\n")]  # the prompt ends its line
    assert call["max_new"] == cli.GenerateSettings(sonnet=True).new_tokens
    stop, tok = call["stop"], Tokenizer()
    assert not stop(tok.encode("\n".join(LINES[2:13]) + "\n")) and stop(tok.encode("\n".join(LINES[2:14]) + "\n"))


def test_a_sonnet_that_falls_short_prints_each_reason(monkeypatch):
    # 13 prompt lines (a blank one not counted), one to write; the draw ends without a newline: one is added
    Stand(monkeypatch, "A glorbix")
    prompt = "\n".join(ENDS[:12] + ["  ", "the sea"])
    out, texts = run_cli("--sonnet", "--prompt", prompt, "--seed", "1")
    assert texts == ["\n".join(ENDS[:12] + ["the sea", "A glorbix"])]
    assert out == (prompt + "\nA glorbix\n"
                   "verdict: not a perfect sonnet\n"
                   "  - lines 13/14 (G): 'sea' / 'glorbix' differ in spelling (ea / ix; word unknown to CMU)\n"
                   "  (end words judged by spelling: glorbix)\n")


def test_an_empty_sonnet_prompt_writes_all_fourteen_lines(monkeypatch):
    stand = Stand(monkeypatch, "\n".join(LINES) + "\n")
    out, texts = run_cli("--sonnet", "--prompt", "", "--seed", "2")
    assert out == "\n".join(LINES) + "\nverdict: a perfect sonnet (14 lines, ABAB CDCD EFEF GG)\n"
    assert stand.calls[0]["prompts"] == [[EOT]] and texts == ["\n".join(LINES)]


def test_verdict_lines():
    assert cli.verdict("\n".join(LINES)) == "verdict: a perfect sonnet (14 lines, ABAB CDCD EFEF GG)"
    assert cli.verdict("a line of words\nanother line of glorbix") == (
        "verdict: not a perfect sonnet\n  - 2 lines, expected 14\n  (end words judged by spelling: glorbix)")
    assert cli.verdict("\n".join(LINES[:13])) == "verdict: not a perfect sonnet\n  - 13 lines, expected 14"
    assert cli.verdict("\n".join(LINES[:12] + ["so blorp", "and glorbix"])) == (
        "verdict: not a perfect sonnet\n  - lines 13/14 (G): 'blorp' / 'glorbix' differ in spelling (orp / ix; word "
        "unknown to CMU)\n"
        "  (end words judged by spelling: blorp, glorbix)")


class Flushes(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.at: list[str] = []

    def flush(self) -> None:
        self.at.append(self.getvalue())


def test_text_stream_writes_each_new_piece_and_flushes_it():
    tok = Tokenizer()
    out = Flushes()
    stream = cli.TextStream(tok, out, skip={EOT, 13})  # 13 is "."
    for t in tok.encode(" Hi. Yo") + [EOT]:
        stream.add(t)
    assert out.at == [" Hi", " Hi Yo"]  # "." skipped; <|endoftext|> skipped, nothing new written
    assert stream.finish() == " Hi Yo" and out.getvalue() == " Hi Yo"


# ---------------------------------------------------------------------------------------------- prompts

def test_split_prompts():
    assert cli.split_prompts("first\n  second  \n \t \nthird\n\n\n") == ["first\n  second", "third"]
    assert cli.split_prompts("a\n\nb") == ["a", "b"] and cli.split_prompts("one") == ["one"]
    assert cli.split_prompts("\n \n") == [] and cli.split_prompts("") == []


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_read_prompts_from_stdin_a_terminal_and_bytes(capsys):
    args = cli.parse_settings(["--model", "tiny"])
    assert cli.read_prompts(args, io.StringIO("a\n\nb c\n")) == ["a", "b c"]
    assert capsys.readouterr().err == ""
    assert cli.read_prompts(args, Tty("x\n")) == ["x"]
    assert capsys.readouterr().err == "reading prompts from stdin (blank lines separate them; end with Ctrl-D)\n"
    assert cli.read_prompts(args, io.TextIOWrapper(io.BytesIO("café\n\n☃\n".encode()))) == ["café", "☃"]
    with pytest.raises(cli.GenerateError) as e:
        cli.read_prompts(args, io.TextIOWrapper(io.BytesIO(b"abc\nd\xe9f\n")))
    assert str(e.value) == "stdin: not UTF-8 text (line 2, byte 5: 0xe9); save it as UTF-8"
    with pytest.raises(cli.GenerateError) as e:
        cli.read_prompts(args, io.StringIO("\n  \n"))
    assert str(e.value) == "stdin: no prompt found (expected text, prompts separated by blank lines)"
    assert cli.read_prompts(cli.parse_settings(["--prompt", "  two  words \n "]), Tty("")) == ["  two  words"]
    assert cli.read_prompts(cli.parse_settings(["--prompt", ""]), io.StringIO("ignored")) == [""]
    assert capsys.readouterr().err == ""


def test_read_prompts_from_a_file(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("one\r\n\r\ntwo\nlines \n".encode())
    assert cli.read_prompts(cli.parse_settings(["--prompt-file", str(path)]), Tty("x")) == ["one", "two\nlines"]
    path.write_text(" \n")
    with pytest.raises(cli.GenerateError) as e:
        cli.read_prompts(cli.parse_settings(["--prompt-file", str(path)]), io.StringIO("x"))
    assert str(e.value) == f"--prompt-file {path}: no prompt found (expected text, prompts separated by blank lines)"
    with pytest.raises(cli.GenerateError) as e:
        cli.read_prompts(cli.parse_settings(["--prompt-file", str(tmp_path)]), io.StringIO("x"))
    assert str(e.value) == f"--prompt-file {tmp_path}: no such file"  # a folder is not a prompt file


# ---------------------------------------------------------------------------------------------- refusals

def test_a_prompt_must_leave_room_in_the_context(monkeypatch, capsys):
    stand = Stand(monkeypatch, " ok")
    run_cli("--prompt", " the" * 127, "--seed", "0")  # 127 of the tiny model's 128 positions: one left
    assert len(stand.calls[0]["prompts"][0]) == 127
    assert error_of(capsys, "--prompt", " the" * 128) == (
        "error: prompt 1: 128 tokens leave no room to generate within the model's context of 128 tokens")
    assert refusal(stdin="short\n\n" + " the" * 130) == (
        "prompt 2: 130 tokens leave no room to generate within the model's context of 128 tokens")


def test_a_sonnet_prompt_must_be_fewer_than_fourteen_lines(monkeypatch, capsys):
    # one word a line (distill.check calls the 14 end words alone a perfect sonnet): 13 lines leave one to write
    Stand(monkeypatch, "me\n")
    out, _ = run_cli("--sonnet", "--prompt", "\n".join(ENDS[:13]), "--seed", "0")
    assert out == "\n".join(ENDS) + "\nverdict: a perfect sonnet (14 lines, ABAB CDCD EFEF GG)\n"
    assert error_of(capsys, "--sonnet", "--prompt", "\n".join(ENDS)) == (
        "error: prompt 1: already 14 lines; --sonnet continues the first lines of a sonnet (fewer than 14)")
    assert refusal("--sonnet", stdin="a\n\n" + "\n".join(ENDS)) == (
        "prompt 2: already 14 lines; --sonnet continues the first lines of a sonnet (fewer than 14)")


def test_precision_refusals_are_one_line_each(monkeypatch, capsys):
    import minigpt2.fast.prepack as prepack

    monkeypatch.setattr(cli.hardware, "cpu_native_bf16", lambda: False)
    assert error_of(capsys, "--prompt", "x", "--precision", "bf16", "--device", "cpu") == (
        "error: --precision bf16: bf16 inference needs a CPU with native bf16 arithmetic (AVX512-BF16 or AMX on "
        "x86, BF16 on ARM); this one would emulate it, slower than fp32: use fp32")
    assert error_of(capsys, "--prompt", "x", "--precision", "fp16", "--device", "cpu", "--plain") == (
        "error: --precision fp16 on a CPU reads fp16 weights through fbgemm's fp16 linear, a speed piece: "
        "drop --plain")
    monkeypatch.setattr(prepack, "fp16_available", lambda: False)
    assert error_of(capsys, "--prompt", "x", "--precision", "fp16", "--device", "cpu") == (
        "error: --precision fp16 on a CPU reads fp16 weights through fbgemm's fp16 linear, a speed piece: this "
        "PyTorch build or CPU has none (it needs fbgemm and AVX2); use fp32 or int8")
    monkeypatch.setattr(cli, "parse_device", lambda name: torch.device("cuda"))
    assert error_of(capsys, "--prompt", "x", "--precision", "int8") == (
        "error: --precision int8 runs PyTorch's CPU int8 kernels; use --device cpu, not cuda")


def test_int8_refusal_names_the_decoders_reason(monkeypatch):
    import quant.int8_linear as int8

    def refuse(gpt):
        raise ValueError("its weights are int4")
    monkeypatch.setattr(int8, "to_int8_decoder", refuse)
    with pytest.raises(cli.GenerateError) as e:
        cli.inference_model(GPT2(GPT2Config.from_name("tiny")), "int8", torch.device("cpu"))
    assert str(e.value) == "--precision int8: its weights are int4"


# ---------------------------------------------------------------------------------------------- precision, model

def bf16_run(**kw) -> RunSettings:
    return RunSettings(DataSettings(task="sonnet"), **kw)


def test_default_precision(monkeypatch, capsys):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    by_format, by_autocast = bf16_run(precision=PrecisionSettings(format="bf16")), bf16_run(
        optim=TrainConfig(autocast="bf16"))
    fp32_run = bf16_run()
    monkeypatch.setattr(cli.hardware, "cpu_native_bf16", lambda: True)
    assert [cli.default_precision(s, d) for s, d in ((None, cuda), (fp32_run, cuda), (by_format, cpu),
                                                      (by_autocast, cpu), (by_format, cuda))] == [
        "fp32", "fp32", "bf16", "bf16", "bf16"]
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(cli.hardware, "cpu_native_bf16", lambda: False)
    assert cli.default_precision(by_format, cuda) == "bf16" and capsys.readouterr().err == ""
    assert cli.default_precision(fp32_run, cpu) == "fp32" and capsys.readouterr().err == ""
    assert cli.default_precision(by_autocast, cpu) == "fp32"
    assert capsys.readouterr().err == "note: the run trained in bf16, but this CPU has no native bf16: generating in fp32\n"


def test_inference_model_merges_adapters_and_sets_the_precision(monkeypatch):
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    gpt = GPT2(GPT2Config.from_name("tiny")).train()
    apply_lora(gpt, LoRAConfig(rank=2, alpha=4))
    for adapter in lora_modules(gpt).values():
        torch.nn.init.normal_(adapter.lora_B)
    ids = torch.tensor([[5, 9, 2]])
    with torch.no_grad():
        want = gpt.eval().logits(ids)
    gpt.train()
    model = cli.inference_model(gpt, "fp32", cpu, plain=True)
    assert model is gpt and not gpt.training
    assert all(a.merged for a in lora_modules(gpt).values())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    torch.testing.assert_close(model.logits(ids), want, atol=1e-5, rtol=1e-5)
    fast_model = cli.inference_model(GPT2(GPT2Config.from_name("tiny")), "fp32", cpu)
    assert hasattr(fast_model, "packed_head")  # minigpt2.fast's copy, not the plain modules
    monkeypatch.setattr(cli.hardware, "cpu_native_bf16", lambda: True)
    bf16 = cli.inference_model(GPT2(GPT2Config.from_name("tiny")), "bf16", cpu, plain=True)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}


def test_run_sets_the_threads_and_the_tokenizer_folder(monkeypatch, tmp_path):
    Stand(monkeypatch, " z")
    threads, dirs = [], []
    real = cli.Tokenizer
    # the count the run loads its tokenizer at: the run's --threads (the caller's back after it)
    monkeypatch.setattr(cli, "Tokenizer", lambda d=None: threads.append(torch.get_num_threads()) or dirs.append(d)
                        or real(d))
    from experiments.sweeps import TINY_DATA
    before = torch.get_num_threads()
    run_cli("--prompt", "x", "--seed", "0", "--threads", "3", "--tokenizer-dir", str(TINY_DATA / "gpt2"))
    assert threads == [3] and dirs == [str(TINY_DATA / "gpt2")] and torch.get_num_threads() == before
    Stand(monkeypatch, " z")
    run_cli("--prompt", "x", "--seed", "0")
    assert threads == [3, before] and dirs[1:] == [None]


def test_main_exits_130_on_ctrl_c_and_quietly_on_a_closed_pipe(monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "run", interrupted)
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", "tiny", "--prompt", "x"])
    assert e.value.code == 130

    def closed(args):
        raise BrokenPipeError
    monkeypatch.setattr(cli, "run", closed)
    dups = []
    monkeypatch.setattr(cli.os, "dup2", lambda a, b: dups.append((a, b)))

    class Out(io.StringIO):
        def fileno(self) -> int:
            return 41
    monkeypatch.setattr("sys.stdout", Out())
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", "tiny", "--prompt", "x"])
    assert e.value.code == 0 and len(dups) == 1 and dups[0][1] == 41 and dups[0][0] >= 0


def run_folder(folder, tokenizer_dir=None):
    """A run folder's config.json (its typed settings) without weights, as a run stopped before its first epoch."""
    from app.settings import PathSettings

    settings = RunSettings(DataSettings(task="sonnet"), paths=PathSettings(tokenizer_dir=tokenizer_dir))
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"settings": settings.to_dict()}), encoding="utf-8")
    return folder


def test_a_run_folder_is_read_with_its_settings_and_one_without_weights_is_refused(tmp_path, monkeypatch, capsys):
    from experiments.sweeps import TINY_DATA

    folder = run_folder(tmp_path / "run", tokenizer_dir=str(TINY_DATA / "gpt2"))
    assert error_of(capsys, "--model", str(folder), "--prompt", "x") == (
        f"error: --model {folder}: run folder without weights (expected {folder}/best/model.safetensors or "
        f"{folder}/best/adapter.safetensors); has the run finished an epoch?")
    loaded = []
    monkeypatch.setattr(cli, "load_run", lambda path, settings, config: loaded.append((path, settings, config))
                        or "model")
    config = json.loads((folder / "config.json").read_text())
    for offline in (False, True):
        model, settings = cli.load_source(str(folder), offline)
        assert model == "model" and loaded[-1] == (folder, settings, config) and settings.paths.offline is offline
        assert settings.paths.tokenizer_dir == str(TINY_DATA / "gpt2") and settings.data.task == "sonnet"
    # a checkpoint folder (model.safetensors beside config.json) is a model, not a run folder
    (folder / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(cli, "load_model", lambda path: ("checkpoint", path))
    assert cli.load_source(str(folder), False) == (("checkpoint", folder), None) and len(loaded) == 2
    # the run's tokenizer folder is used when --tokenizer-dir is not given
    real, dirs = cli.Tokenizer, []
    monkeypatch.setattr(cli, "Tokenizer", lambda d=None: dirs.append(d) or real(d))
    monkeypatch.setattr(cli, "load_source", lambda name, offline: (GPT2(GPT2Config.from_name("tiny")),
                                                                   cli.RunSettings.from_dict(json.loads(
                                                                       (folder / "config.json").read_text())["settings"])))
    Stand(monkeypatch, " ok")
    run_cli("--prompt", "x", "--seed", "0")
    assert dirs == [str(TINY_DATA / "gpt2")]


def test_a_fake_quantized_model_is_baked_before_bf16_or_fp16(monkeypatch):
    import minigpt2.fast.prepack as prepack
    from quant.config import QuantConfig
    from quant.qaft import fake_quant_modules, quantize_model

    cpu = torch.device("cpu")
    monkeypatch.setattr(cli.hardware, "cpu_native_bf16", lambda: True)
    gpt = quantize_model(GPT2(GPT2Config.from_name("tiny")), QuantConfig(weight="int8"))
    assert list(fake_quant_modules(gpt))
    model = cli.inference_model(gpt, "bf16", cpu, plain=True)
    assert not list(fake_quant_modules(model)) and {p.dtype for p in model.parameters()} == {torch.bfloat16}
    if prepack.fp16_available():
        gpt = quantize_model(GPT2(GPT2Config.from_name("tiny")), QuantConfig(weight="int8"))
        cli.inference_model(gpt, "fp16", cpu)
        assert not list(fake_quant_modules(gpt))


def test_help_describes_the_command_in_one_paragraph(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Generate text from GPT-2 at the terminal, streamed token by token as it is sampled." in text
    assert "Prompts:" not in text and "--model`: a preset" not in text


def test_run_passes_offline_the_precision_and_the_plain_switch(monkeypatch, capsys):
    seen = []
    real_source, real_model = cli.load_source, cli.inference_model
    monkeypatch.setattr(cli, "load_source", lambda name, offline: seen.append(("offline", offline))
                        or real_source(name, offline))
    monkeypatch.setattr(cli, "inference_model", lambda gpt, precision, device, plain=False: seen.append(
        (precision, device, plain)) or real_model(gpt, precision, device, plain))
    Stand(monkeypatch, " a", " b", " c")
    run_cli("--prompt", "x", "--seed", "0", "--offline")
    run_cli("--prompt", "x", "--seed", "0", "--plain", "--device", "cpu")
    run_cli("--prompt", "x", "--seed", "0", "--precision", "int8", "--device", "cpu")  # the CPU int8 decoder
    cpu = torch.device("cpu")
    assert seen == [("offline", True), ("fp32", cpu, False), ("offline", False), ("fp32", cpu, True),
                    ("offline", False), ("int8", cpu, False)]


def test_a_bf16_runs_default_precision_is_asked_of_the_device(monkeypatch, capsys):
    settings = bf16_run(optim=TrainConfig(autocast="bf16"))
    monkeypatch.setattr(cli, "load_source", lambda name, offline: (GPT2(GPT2Config.from_name("tiny")), settings))
    monkeypatch.setattr(cli.hardware, "cpu_native_bf16", lambda: False)
    Stand(monkeypatch, " a")
    assert run_cli("--prompt", "x", "--seed", "0", "--device", "cpu")[0] == "x a\n"
    assert capsys.readouterr().err == "note: the run trained in bf16, but this CPU has no native bf16: generating in fp32\n"


def test_a_preset_is_resolved_with_the_offline_switch(monkeypatch, capsys):
    asked = []

    def resolve(name, offline):
        asked.append((name, offline))
        raise cli.GenerateError(f"{name} is not downloaded")
    monkeypatch.setattr(cli, "resolve_model", resolve)
    assert error_of(capsys, "--model", "gpt2", "--offline", "--prompt", "x") == "error: gpt2 is not downloaded"
    assert error_of(capsys, "--model", "gpt2-medium", "--prompt", "x") == "error: gpt2-medium is not downloaded"
    assert asked == [("gpt2", True), ("gpt2-medium", False)]


def test_an_unknown_model_is_one_line():
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", "nowhere", "--prompt", "x"])
    assert e.value.code == ("error: --model 'nowhere': expected an existing file or folder, or a downloadable preset "
                            "(one of ['gpt2', 'gpt2-large', 'gpt2-medium', 'gpt2-xl'])")

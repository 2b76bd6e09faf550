"""`python -m minigpt2.generate` (app/generate.py): every kind of source, streaming, --sonnet, --seed, bad input."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from app import finetune
from app import generate as cli
from app.precision import PrecisionSettings
from app.settings import DataSettings, RunSettings
from distill.check import check_sonnet
from experiments.sweeps import TINY_DATA
from minigpt2 import GPT2, GPT2Config
from minigpt2.checkpoint import load_model
from minigpt2.generation import generate
from minigpt2.lora import load_adapter
from minigpt2.tokenizer import Tokenizer
from minigpt2.train import seed_everything
from tasks.sonnet import SonnetLM
from tests import ROOT
from tests.conftest import bf16_prepacked
from tests.app.test_finetune import finetune_args

FIX = TINY_DATA  # the tiny model's data and GPT-2 tokenizer files (package data of experiments)
PROMPT = "Shall I compare thee to a summer's day?"
RUN_KINDS = {
    "full": [],
    "lora": ["--method", "lora", "--lora-rank", "4", "--lora-alpha", "8"],
    "int8": ["--precision", "int8"],  # post-training quantization: best/ holds fp32 weights, quantized on load
}


def run_cli(*argv: str, stdin: str = "", on_token=None) -> str:
    """The command in-process; returns what it wrote to stdout."""
    out = io.StringIO()
    cli.run(cli.parse_settings(list(argv)), stdin=io.StringIO(stdin), out=out, on_token=on_token)
    return out.getvalue()


def greedy_text(model: GPT2, prompt: str, n: int) -> str:
    tok = Tokenizer()
    new = generate(model.eval(), [tok.encode(prompt)], n, eos_id=tok.eot_id)[0]
    return prompt + tok.decode([t for t in new if t != tok.eot_id]) + "\n"


def error_of(capsys, *argv: str) -> str:
    """Run `main`, expect exit code 1 with one `error:` line; return that line."""
    with pytest.raises(SystemExit) as e:
        cli.main(list(argv))
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    assert "Traceback" not in capsys.readouterr().err
    return message


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Finished tiny sonnet runs of `minigpt2.finetune`: full model, LoRA adapter, int8 quantized."""
    root = tmp_path_factory.mktemp("generate_runs")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for kind, extra in RUN_KINDS.items():
            finetune.main(finetune_args("sonnet", root / kind, "--epochs", "1", "--max-new-tokens", "8",
                                        "--max-eval", "1", *extra))
    finally:
        torch.set_num_threads(n)
    return {kind: root / kind for kind in RUN_KINDS}


# ---- sources ----

def test_tiny_is_the_same_random_model_every_time():
    torch.manual_seed(0)
    want = greedy_text(GPT2(GPT2Config.from_name("tiny")), PROMPT, 10)
    assert run_cli("--model", "tiny", "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "10") == want


def test_checkpoint_folder_and_file(tiny_hf_dir):
    want = greedy_text(load_model(tiny_hf_dir), PROMPT, 12)
    for source in (tiny_hf_dir, tiny_hf_dir / "model.safetensors"):
        got = run_cli("--model", str(source), "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "12")
        assert got == want


def test_preset_name_reads_the_cached_download(tiny_hf_dir, tmp_path, monkeypatch):
    (tmp_path / "checkpoints" / "gpt2").mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        (tmp_path / "checkpoints" / "gpt2" / name).write_bytes((tiny_hf_dir / name).read_bytes())
    monkeypatch.chdir(tmp_path)
    got = run_cli("--model", "gpt2", "--offline", "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "5")
    assert got == greedy_text(load_model(tiny_hf_dir), PROMPT, 5)


def test_full_run_folder(runs):
    want = greedy_text(load_model(runs["full"] / "best"), PROMPT, 10)
    assert run_cli("--model", str(runs["full"]), "--prompt", PROMPT, "--temperature", "0",
                   "--max-new-tokens", "10") == want


def test_lora_run_folder_is_the_base_plus_the_adapter(runs):
    seed_everything(11711)  # the run's seed rebuilt its random tiny base
    module = SonnetLM(GPT2(GPT2Config.from_name("tiny")))
    load_adapter(module, runs["lora"] / "best" / "adapter.safetensors")
    want = greedy_text(module.gpt, PROMPT, 10)
    assert run_cli("--model", str(runs["lora"]), "--prompt", PROMPT, "--temperature", "0",
                   "--max-new-tokens", "10") == want


def test_quantized_run_folder_generates_with_the_quantized_weights(runs):
    from quant.export import load_packed

    packed = load_packed(runs["int8"] / "quantized" / "model-int8.safetensors")  # what the run exported
    want = greedy_text(packed, PROMPT, 10)
    assert run_cli("--model", str(runs["int8"]), "--prompt", PROMPT, "--temperature", "0",
                   "--max-new-tokens", "10") == want
    fast = run_cli("--model", str(runs["int8"]), "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "10",
                   "--precision", "int8")  # the int8 kernels: same prompt, tokens of their own
    assert fast.startswith(PROMPT) and len(fast) > len(PROMPT) + 1


@bf16_prepacked
def test_bf16_precision_runs_the_prepacked_bf16_copy(runs, monkeypatch):
    import minigpt2.fast as fast
    from minigpt2.train import TrainConfig

    made = []
    real = fast.inference_copy
    monkeypatch.setattr(fast, "inference_copy", lambda model, dtype=None, batch=1:
                        made.append(real(model, dtype, batch)) or made[-1])
    out = run_cli("--model", str(runs["full"]), "--prompt", PROMPT, "--max-new-tokens", "6", "--precision", "bf16",
                  "--seed", "2")
    assert [m.packed_head.packed.dtype for m in made] == [torch.bfloat16] and out.startswith(PROMPT)
    bf16_autocast = RunSettings(DataSettings(task="sonnet"), optim=TrainConfig(autocast="bf16"))
    assert cli.default_precision(bf16_autocast, torch.device("cpu")) == "bf16"


# ---- streaming, seeds, sonnets ----

def test_tokens_are_streamed_as_they_are_sampled(tiny_hf_dir):
    tok = Tokenizer()
    out = io.StringIO()
    snapshots: list[str] = []
    tokens: list[int] = []

    def on_token(row: int, token: int) -> None:  # called right after the stream has written the token's text
        tokens.append(token)
        snapshots.append(out.getvalue())

    args = cli.parse_settings(["--model", str(tiny_hf_dir), "--prompt", PROMPT, "--max-new-tokens", "8",
                                          "--seed", "5"])
    cli.run(args, stdin=io.StringIO(), out=out, on_token=on_token)
    assert len(tokens) == 8
    shown = PROMPT
    for k in range(8):  # after the k-th token, stdout holds the prompt and the text of the first k+1 tokens
        text = tok.decode(tokens[:k + 1])
        if not text.endswith("\ufffd"):  # else a character is incomplete: held back until the next token
            shown = PROMPT + text
        assert snapshots[k] == shown
    assert len(set(snapshots)) >= 6  # it grew token by token, not all at the end
    assert out.getvalue() == PROMPT + tok.decode(tokens) + "\n"


def test_text_stream_holds_back_a_character_split_across_tokens():
    tok = Tokenizer()
    ids = tok.encode(" café ☃")
    pieces = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces)  # the snowman's three bytes span tokens
    out = io.StringIO()
    stream = cli.TextStream(tok, out, skip={tok.eot_id})
    for i in ids + [tok.eot_id]:
        stream.add(i)
        assert "\ufffd" not in out.getvalue()
    assert stream.finish() == " café ☃" and out.getvalue() == " café ☃"


def test_seed_makes_samples_reproducible_and_num_samples_differ(tiny_hf_dir):
    argv = ("--model", str(tiny_hf_dir), "--prompt", PROMPT, "--max-new-tokens", "10", "--temperature", "1.5",
            "--top-k", "50", "--top-p", "0.95", "--num-samples", "2")
    a = run_cli(*argv, "--seed", "3")
    assert a == run_cli(*argv, "--seed", "3") and a != run_cli(*argv, "--seed", "4")
    first, second = a.split("=== prompt 1, sample 2 ===\n")
    assert first.startswith("=== prompt 1, sample 1 ===\n" + PROMPT) and second.startswith(PROMPT)
    assert first.strip() != second.strip()


def test_prompt_file_and_stdin_hold_prompts_separated_by_blank_lines(tiny_hf_dir, tmp_path):
    text = "The first prompt\n\n\nA second one,\non two lines\n"
    (tmp_path / "p.txt").write_text(text, encoding="utf-8")
    argv = ("--model", str(tiny_hf_dir), "--max-new-tokens", "3", "--temperature", "0")
    from_file = run_cli(*argv, "--prompt-file", str(tmp_path / "p.txt"))
    assert from_file == run_cli(*argv, stdin=text)
    assert "=== prompt 1, sample 1 ===\nThe first prompt" in from_file
    assert "=== prompt 2, sample 1 ===\nA second one,\non two lines" in from_file


def test_run_reads_and_writes_the_streams_of_the_call_not_of_the_import(tiny_hf_dir, monkeypatch):
    # A default bound at import kept the sys.stdout of that moment: a test's closed capture, or a notebook's
    # stream before a redirect, and the text went there (or raised "I/O operation on closed file").
    argv = ("--model", str(tiny_hf_dir), "--max-new-tokens", "3", "--temperature", "0")
    expected = run_cli(*argv, stdin="From standard input")
    stdin, out = io.StringIO("From standard input\n"), io.StringIO()
    monkeypatch.setattr(sys, "stdin", stdin)
    monkeypatch.setattr(sys, "stdout", out)
    cli.run(cli.parse_settings(list(argv)))
    assert out.getvalue() == expected and expected.startswith("From standard input")


def test_sonnet_stops_after_14_lines_and_prints_the_verdict(runs, monkeypatch):
    lines = ["Shall I compare thee to a summer's day?", "Thou art more lovely and more temperate:",
             "Rough winds do shake the darling buds of May,"]
    # A stand-in model that writes one line of two words per 3 tokens, so the stop rule is what ends it.
    tok = Tokenizer()
    line = tok.encode(" and so the day\n")

    def fake_generate(model, prompts, max_new, stop=None, on_token=None, **kw):
        new = []
        while len(new) < max_new and not stop(new):
            t = line[len(new) % len(line)]
            new.append(t)
            on_token(0, t)
        return [new]

    monkeypatch.setattr(cli, "generate", fake_generate)
    out = run_cli("--model", "tiny", "--sonnet", "--prompt", "\n".join(lines), "--seed", "1")
    body, verdict = out.split("verdict: ")
    assert body.splitlines()[:3] == lines and len([ln for ln in body.splitlines() if ln.strip()]) == 14
    assert verdict.startswith("not a perfect sonnet\n")
    assert "  - lines 2/4 (B): " in verdict  # "temperate" / "day"
    reasons = check_sonnet("\n".join(body.splitlines()[:14])).reasons
    assert verdict.count("\n  - ") == len(reasons) == 1  # every other end word is "day", rhyming


def test_sonnet_with_the_real_model_ends_with_a_verdict(runs):
    out = run_cli("--model", str(runs["full"]), "--sonnet", "--prompt", "From fairest creatures we desire increase,",
                  "--seed", "7", "--max-new-tokens", "40")
    assert out.startswith("From fairest creatures we desire increase,\n")
    assert out.rstrip().splitlines()[-1].startswith(("verdict: ", "  - ", "  (end words"))
    assert "verdict: not a perfect sonnet" in out or "verdict: a perfect sonnet" in out


def test_python_m_minigpt2_generate_runs_the_command(tiny_hf_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MINIGPT2_TOKENIZER_DIR": str(FIX / "gpt2")}
    proc = subprocess.run([sys.executable, "-m", "minigpt2.generate", "--model", str(tiny_hf_dir), "--max-new-tokens",
                           "4", "--temperature", "0"], input="Hello world", capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == greedy_text(load_model(tiny_hf_dir), "Hello world", 4)
    bad = subprocess.run([sys.executable, "-m", "minigpt2.generate", "--model", "tiny", "--top-p", "0"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert bad.returncode == 1 and bad.stderr == "error: --top-p 0.0: expected a probability mass in (0, 1]\n"


# ---- bad input: one `error:` line, exit code 1 ----

@pytest.mark.parametrize("flags, expected", [
    (["--top-p", "1.5"], "--top-p 1.5: expected a probability mass in (0, 1]"),
    (["--top-p", "0"], "--top-p 0.0: expected a probability mass in (0, 1]"),
    (["--temperature", "-0.5"], "--temperature -0.5: expected a number >= 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0: expected an integer >= 1"),
    (["--top-k", "0"], "--top-k 0: expected an integer >= 1"),
    (["--num-samples", "0"], "--num-samples 0: expected an integer >= 1"),
    (["--device", "tpu9"], "--device tpu9: expected auto, cpu, cuda or cuda:N"),
])
def test_bad_flags(capsys, flags, expected):
    assert expected in error_of(capsys, "--model", "tiny", "--prompt", "x", *flags)


def test_bad_prompt_files(capsys, tmp_path):
    missing = tmp_path / "nope.txt"
    assert error_of(capsys, "--model", "tiny", "--prompt-file", str(missing)) == \
        f"error: --prompt-file {missing}: no such file"
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("first line\ncaf\xe9\n".encode("latin-1"))
    message = error_of(capsys, "--model", "tiny", "--prompt-file", str(latin1))
    assert message == f"error: --prompt-file {latin1}: not UTF-8 text (line 2, byte 14: 0xe9); save it as UTF-8"
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    assert "no prompt found" in error_of(capsys, "--model", "tiny", "--prompt-file", str(blank))


def test_bad_sources(capsys, tmp_path, runs, monkeypatch):
    assert "--model 'nowhere': expected an existing file or folder, or a downloadable preset" in \
        error_of(capsys, "--model", "nowhere", "--prompt", "x")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((runs["full"] / "config.json").read_text())
    assert f"--model {unfinished}: run folder without weights" in \
        error_of(capsys, "--model", str(unfinished), "--prompt", "x")
    monkeypatch.chdir(tmp_path)  # a preset that is not downloaded here, with downloads turned off
    assert "gpt2" in error_of(capsys, "--model", "gpt2", "--offline", "--prompt", "x")


def test_prompt_too_long_and_sonnet_prompt_too_long(capsys):
    assert "prompt 1: 200 tokens leave no room to generate within the model's context of 128 tokens" in \
        error_of(capsys, "--model", "tiny", "--prompt", " the" * 200)
    fourteen = "\n".join(["a line"] * 14)
    assert "prompt 1: already 14 lines" in error_of(capsys, "--model", "tiny", "--sonnet", "--prompt", fourteen)


def test_bf16_refused_where_the_cpu_lacks_it(capsys, monkeypatch):
    import minigpt2.fast.prepack as prepack

    monkeypatch.setattr(prepack.device, "cpu_native_bf16", lambda: False)
    message = error_of(capsys, "--model", "tiny", "--prompt", "x", "--precision", "bf16", "--device", "cpu")
    assert message.startswith("error: --precision bf16: bf16 inference needs a CPU with native bf16 arithmetic")
    bf16_run = RunSettings(DataSettings(task="sonnet"), precision=PrecisionSettings(format="bf16"))
    assert cli.default_precision(bf16_run, torch.device("cpu")) == "fp32"


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--prompt-file", "--temperature", "--top-k", "--top-p", "--max-new-tokens", "--seed",
                 "--num-samples", "--precision", "--sonnet", "--device", "--tokenizer-dir", "--offline"):
        assert flag in text


def test_fp16_precision_reads_fp16_weights_and_greedy_matches_fp32(runs, monkeypatch):
    import minigpt2.fast.prepack as prepack

    if not prepack.fp16_available():
        pytest.skip("fbgemm's fp16 linear does not run here")
    made = []
    real = prepack.Fp16Linear.__init__
    monkeypatch.setattr(prepack.Fp16Linear, "__init__", lambda self, *a, **k: made.append(1) or real(self, *a, **k))
    args = ("--model", str(runs["full"]), "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "8")
    fp16 = run_cli(*args, "--precision", "fp16", "--device", "cpu")
    assert made and fp16 == run_cli(*args, "--precision", "fp32", "--device", "cpu")  # tiny logits: same argmax


def test_fp16_refused_on_the_plain_path_and_without_fbgemm(capsys, monkeypatch):
    import minigpt2.fast.prepack as prepack

    message = error_of(capsys, "--model", "tiny", "--prompt", "x", "--precision", "fp16", "--device", "cpu",
                       "--plain")
    assert message.startswith("error: --precision fp16 on a CPU reads fp16 weights") and "drop --plain" in message
    monkeypatch.setattr(prepack, "fp16_available", lambda: False)
    message = error_of(capsys, "--model", "tiny", "--prompt", "x", "--precision", "fp16", "--device", "cpu")
    assert "it needs fbgemm and AVX2" in message

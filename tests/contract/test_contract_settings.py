"""Defaults that matter, the validators' ranges and the run folder's promises, checked one input at a time:

- the course's defaults (10 epochs, batch 8, seed 11711, top-p 0.9 at temperature 1.2 for sonnets) and LoRA's
  documented defaults (rank 8, alpha 16, attention + MLP: query, key, value, attention output, c_fc, c_proj);
- every range edge the help texts state: `--top-p` in (0, 1] (1 accepted, by finetune and generate alike),
  `--warmup` in [0, 1), `--temperature` >= 0, `--grad-clip` >= 0 (0: off), `--lora-dropout` in [0, 1);
- the run folder (app/runfolder.py): the fingerprint records the run-defining settings and the sha256 of every
  input; `--resume` is refused when a run-defining setting or an input changed (naming it) and accepted when only
  what does not define the result changed (each field's role); `--resume --out-dir RUN` takes the saved settings, accepts flags that may
  change or repeat the saved value and names each other one; a fresh run into a folder holding a run is refused
  without --overwrite.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from app import cli
from app.finetune import parse_settings
from app.runfolder import RunFolderError, check_inputs, check_resume, fingerprint, holds_run, prepare
from app.settings import (DEFINES, EvaluateSettings, HardwareSettings, PathSettings, SettingsError, defining, role_of,
                          setting_paths)
from minigpt2 import GPT2, GPT2Config
from minigpt2.lora import apply_lora, lora_modules

BASE = ["--task", "sst", "--model", "tiny", "--data-dir", "data", "--device", "cpu"]


def settings(*extra: str, out: Path | None = None):
    return parse_settings(BASE + (["--out-dir", str(out)] if out else []) + list(extra))


def test_the_course_defaults():
    s = settings()
    assert (s.optim.epochs, s.optim.batch_size, s.optim.seed) == (10, 8, 11711)
    t = s.train_config()
    assert (t.epochs, t.batch_size, t.seed, t.grad_accum) == (10, 8, 11711, 1)
    assert (s.eval.sampling.temperature, s.eval.sampling.top_p) == (1.2, 0.9)
    assert s.eval.sampling.seed == 11711
    assert settings("--seed", "3").train_config().seed == 3


def test_lora_defaults_wrap_attention_and_mlp():
    s = settings("--method", "lora")
    lora = s.model.lora
    assert (lora.rank, lora.alpha, lora.dropout) == (8, 16.0, 0.0)
    model = GPT2(GPT2Config.from_name("tiny"))
    apply_lora(model, lora)
    wrapped = sorted({name.split(".", 2)[-1] for name in lora_modules(model)})
    assert wrapped == ["attn.c_proj", "attn.key", "attn.query", "attn.value", "mlp.c_fc", "mlp.c_proj"]
    assert len(lora_modules(model)) == 6 * model.config.n_layer


@pytest.mark.parametrize("flag,ok,bad", [
    ("--top-p", ["1", "0.5", "1e-6"], ["0", "1.01", "-0.1"]),
    ("--warmup", ["0", "0.99"], ["1", "-0.1"]),
    ("--temperature", ["0", "2.5"], ["-0.1", "nan"]),
    ("--grad-clip", ["0", "1"], ["-1", "inf"]),
])
def test_finetune_range_edges(flag, ok, bad):
    for value in ok:
        settings(flag, value)
    for value in bad:
        with pytest.raises(SettingsError, match=flag):
            settings(flag, value)


def test_lora_dropout_range():
    settings("--method", "lora", "--lora-dropout", "0")
    settings("--method", "lora", "--lora-dropout", "0.5")
    with pytest.raises(SettingsError, match="--lora-dropout"):
        settings("--method", "lora", "--lora-dropout", "1")


def test_generate_accepts_top_p_1_and_refuses_what_its_help_excludes():
    from app.generate import parse_settings

    for value in ("1", "0.9", "1.0"):
        assert parse_settings(["--top-p", value]).top_p == float(value)
    for value in ("0", "1.5"):
        with pytest.raises(SettingsError, match=f"--top-p {float(value)}: expected"):
            parse_settings(["--top-p", value])
    assert parse_settings(["--temperature", "0"]).temperature == 0
    with pytest.raises(SettingsError, match="--top-k 0: expected an integer >= 1"):
        parse_settings(["--top-k", "0"])


# --------------------------------------------------------------------------------------------------- run folders

def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def inputs(tmp_path):
    data = [tmp_path / "a.csv", tmp_path / "b.csv"]
    data[0].write_text("id\tx\n1\thello\n")
    data[1].write_text("id\tx\n2\tworld\n")
    base = tmp_path / "model.safetensors"
    base.write_bytes(b"weights")
    return base, data


def test_the_fingerprint_records_settings_and_input_hashes(inputs):
    base, data = inputs
    s = settings("--lr", "0.003")
    fp = fingerprint(s, base, data)
    assert fp["data"] == {"a.csv": sha(data[0]), "b.csv": sha(data[1])}
    assert fp["base_weights"]["sha256"] == sha(base)
    assert fp["settings"]["optim.lr"] == 0.003 and fp["settings"]["data.task"] == "sst"
    assert not any(role_of(k) != DEFINES for k in fp["settings"])
    assert not {"eval.batch_size", "hardware.device", "paths.data_dir", "optim.progress"} & set(fp["settings"])
    assert "code" in fp
    json.dumps(fp)  # it goes into config.json as it is


def test_resume_refuses_changed_inputs_one_at_a_time(inputs, tmp_path):
    base, data = inputs
    s = settings()
    recorded = fingerprint(s, base, data)
    check_inputs(tmp_path, recorded, fingerprint(s, base, data))  # nothing changed: accepted
    data[1].write_text("id\tx\n2\tworld!\n")
    with pytest.raises(RunFolderError, match="b.csv"):
        check_inputs(tmp_path, recorded, fingerprint(s, base, data))
    recorded = fingerprint(s, base, data)
    base.write_bytes(b"other weights")
    with pytest.raises(RunFolderError, match="base weights"):
        check_inputs(tmp_path, recorded, fingerprint(s, base, data))


def write_config(run: Path, s) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps({"settings": s.to_dict(), "args": {}}))


@pytest.mark.parametrize("change,refused", [
    (["--lr", "0.5"], "optim.lr"),
    (["--seed", "1"], "optim.seed"),
    (["--epochs", "3"], "optim.epochs"),
    (["--batch-size", "4"], "optim.batch_size"),
    (["--max-train", "5"], "data.max_train"),
    (["--top-p", "0.5"], "eval.sampling.top_p"),
    (["--no-progress"], None),
    (["--stop-after-epoch", "1"], None),
])
def test_resume_refuses_run_defining_changes_only(tmp_path, change, refused):
    run = tmp_path / "run"
    write_config(run, settings(out=run))
    now = resuming(settings(*change, out=run))
    if refused is None:
        assert check_resume(run, now) is not None
    else:
        with pytest.raises(RunFolderError, match=rf"differ: (.*; )?{re.escape(refused)}: [^;]* -> "):
            check_resume(run, now)


def resuming(s):
    return replace(s, run=replace(s.run, resume=True))


@pytest.mark.parametrize("change,refused", [
    (["--lr", "0.5"], "--lr 0.5 (the run's: 1e-05)"),
    (["--seed", "1"], "--seed 1 (the run's: 11711)"),
    (["--task", "quora"], "--task quora (the run's: 'sst')"),
    (["--method", "lora", "--lora-rank", "4"], "--method lora (the run's: 'full'), --lora-rank 4 (the run's: None)"),
    (["--qaft", "--precision", "int8"], "--qaft (the run's: False)"),
    (["--top-p", "0.5"], "--top-p 0.5 (the run's: 0.9)"),
    (["--lr", "1e-5", "--seed", "11711", "--task", "sst"], None),  # the saved values, repeated
    (["--no-progress", "--threads", "3", "--stop-after-epoch", "2", "--device", "cpu"], None),
])
def test_resume_with_the_run_folder_alone_takes_its_settings_and_refuses_other_values(tmp_path, change, refused):
    """`--resume --out-dir RUN` reads the settings from RUN/config.json; a flag beside it either may change on
    resume or repeats the saved value, else one line names it with the run's value."""
    run = tmp_path / "run"
    saved = settings("--epochs", "3", "--stop-after-epoch", "1", out=run)
    write_config(run, saved)
    if refused is not None:
        with pytest.raises(SettingsError, match=re.escape(refused) + ".* would change what it computes"):
            parse_settings(["--resume", "--out-dir", str(run), *change])
        return
    now = parse_settings(["--resume", "--out-dir", str(run), *change])
    assert defining(now) == defining(saved) and now.optim.epochs == 3 and now.run.resume
    assert now.optim.stop_after_epoch == (2 if "--stop-after-epoch" in change else None)  # not inherited
    assert now.hardware.threads == (3 if "--threads" in change else None)
    assert now.optim.progress is ("--no-progress" not in change)


def test_a_fresh_run_into_a_run_folder_is_refused_without_overwrite(tmp_path):
    run = tmp_path / "run"
    s = settings(out=run)
    assert not holds_run(run)
    prepare(run, s)  # an empty (absent) folder: fine
    write_config(run, s)
    (run / "metrics.json").write_text("{}")
    assert holds_run(run)
    with pytest.raises(RunFolderError, match="--overwrite"):
        prepare(run, s)
    prepare(run, resuming(s))  # --resume continues it: nothing removed
    assert (run / "config.json").is_file() and (run / "metrics.json").is_file()


# --------------------------------------------------------------------------------------------------- one schema

OLD_CONFIG = {  # the "settings" of a config.json written before each option was declared once
    "data": {"task": "sonnet", "data_dir": "data", "tokenizer_dir": None, "offline": False, "max_train": 4,
             "max_eval": 2, "max_length": None, "synthetic": None, "test_references": None},
    "model": {"model": "tiny", "mode": "full-model", "method": "lora",
              "lora": {"rank": 4, "alpha": 16.0, "targets": "attn+mlp", "dropout": 0.0}},
    "optim": {"epochs": 1, "batch_size": 4, "grad_accum": 1, "lr": 0.01, "weight_decay": 0.01, "warmup": 0.05,
              "schedule": "linear", "grad_clip": 1.0, "seed": 11711},
    "precision": {"precision": "int4", "qaft": True, "group_size": 64, "quant_activations": False,
                  "quant_embeddings": False},
    "eval": {"batch_size": 8, "sampling": {"temperature": 1.2, "top_p": 0.9, "max_new_tokens": 4, "seed": 11711},
             "samples": 4},
    "hardware": {"device": "cpu", "autocast": "off", "compile": False, "progress": False, "threads": None,
                 "fetch_timeout": 3600.0},
    "run": {"out_dir": "x", "name": None, "resume": False, "overwrite": False, "stop_after_epoch": 1},
}


def test_a_run_folder_of_the_previous_layout_still_loads():
    from app.settings import RunSettings

    s = RunSettings.from_dict(OLD_CONFIG)
    assert (s.precision.format, s.precision.qaft) == ("int4", True)
    assert (s.precision.quant.weight, s.precision.quant.group_size, s.precision.quant.embeddings) == ("int4", 64, False)
    assert (s.optim.autocast, s.optim.progress, s.optim.stop_after_epoch, s.optim.lr) == ("off", False, 1, 0.01)
    assert (s.model.lora.rank, s.model.lora.targets) == (4, "attn+mlp")
    assert (s.paths.data_dir, s.paths.tokenizer_dir, s.paths.offline) == ("data", None, False)  # schema 2's group
    assert RunSettings.from_dict(s.to_dict()) == s  # and today's layout reads back as itself


def test_a_run_folder_the_code_cannot_read_is_one_line_naming_what_changed():
    from app.settings import RunSettings

    bad = {**OLD_CONFIG, "optim": {**OLD_CONFIG["optim"], "momentum": 0.9}}
    with pytest.raises(SettingsError, match=r"do not fit this version of the code .*'momentum'"):
        RunSettings.from_dict(bad)


# Every setting that does not define a run's result, and why: a field whose role slips either way changes what a
# resume accepts, what the fingerprint holds and which sweep folders count as the same run.
NOT_DEFINING = {
    "data.test_references": "runs", "optim.compile": "runs", "eval.batch_size": "runs", "hardware.device": "runs",
    "hardware.threads": "runs", "hardware.fetch_timeout": "watch", "paths.data_dir": "runs",
    "paths.tokenizer_dir": "runs", "paths.offline": "runs", "optim.stop_after_epoch": "watch",
    "optim.progress": "watch", "run.out_dir": "runs", "run.name": "runs", "run.resume": "watch",
    "run.overwrite": "watch"}


def test_each_setting_declares_whether_it_defines_the_result():
    assert {p: role_of(p) for p in setting_paths() if role_of(p) != DEFINES} == NOT_DEFINING
    assert set(cli.may_change_on_resume()) == set(NOT_DEFINING)
    assert role_of("hardware.plain") == DEFINES  # the speed pieces draw other random numbers (dropout)
    d = defining(settings("--method", "lora", "--eval-batch-size", "3", "--threads", "2"))
    assert not set(d) & set(NOT_DEFINING)
    assert {"optim.lr", "optim.seed", "model.lora.rank", "hardware.plain", "data.task", "eval.sampling.top_p",
            "precision.format", "data.max_train"} <= set(d)


def test_config_json_holds_the_settings_once_versioned(tmp_path):
    from app import runfolder

    s = settings("--lr", "0.003")
    record = runfolder.settings_record(s)
    assert record == {"schema": runfolder.SETTINGS_SCHEMA, "settings": s.to_dict()} and runfolder.SETTINGS_SCHEMA == 2
    (tmp_path / "settings.json").write_text(json.dumps(record))
    assert runfolder.read_settings_file(tmp_path / "settings.json") == s
    (tmp_path / "bad.json").write_text(json.dumps({"args": {"task": "sst"}}))
    with pytest.raises(RunFolderError, match=r"bad.json: expected a JSON object with the run's \"settings\""):
        runfolder.read_settings_file(tmp_path / "bad.json")


@pytest.mark.parametrize("extra,lr", [([], 1e-5), (["--mode", "last-linear-layer"], 1e-3),
                                      (["--method", "lora"], 1e-2), (["--method", "lora", "--lr", "0.5"], 0.5)])
def test_the_learning_rate_default_depends_on_mode_and_method(extra, lr):
    assert settings(*extra).optim.lr == lr


def test_lora_settings_only_with_method_lora_and_eval_samples_by_task():
    assert settings().model.lora is None and settings().eval.samples == 1
    assert parse_settings(["--task", "sonnet", "--model", "tiny"]).eval.samples == 4
    with pytest.raises(SettingsError, match="--eval-samples 2: task 'sst' predicts deterministically"):
        settings("--eval-samples", "2")


def test_every_flag_has_its_help_and_each_option_one_flag():
    from app.cli import FINETUNE_GROUPS, finetune_parser

    parser = finetune_parser()
    flags = [s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help", "--settings")]
    assert len(flags) == len(set(flags)) == sum(len(g.options()) for g in FINETUNE_GROUPS)
    assert all(a.help for a in parser._actions)
    assert "--plain" in flags and "--no-quant-embeddings" in flags and "--lora-rank" in flags
    helps = {s: a.help for a in parser._actions for s in a.option_strings}
    assert helps["--no-progress"].startswith("hide") and "fp32" in helps["--no-quant-embeddings"]
    assert "(default: 8)" in helps["--batch-size"] and "for --method lora" in helps["--lr"]


def test_one_device_parser():
    import torch

    from minigpt2.device import parse_device
    from minigpt2.errors import FieldError

    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(FieldError, match="device tpu: expected auto, cpu, cuda or cuda:N"):
        parse_device("tpu")


def test_the_hardware_and_paths_groups_are_one_declaration_for_every_command():
    from app.cli import (EVALUATE_GROUPS, GENERATE_GROUPS, command_parser, evaluate_settings, finetune_parser,
                         generate_settings, gguf_settings)

    def helps(parser):
        return {s: a.help for a in parser._actions for s in a.option_strings}

    finetune = helps(finetune_parser())
    for groups in (EVALUATE_GROUPS, GENERATE_GROUPS):
        other = helps(command_parser("x", groups))
        for flag in ("--threads", "--plain", "--device", "--offline"):  # the same field: the same help
            assert other[flag] == finetune[flag], flag
    e = evaluate_settings(["RUN", "--threads", "3", "--offline", "--data-dir", "D", "--device", "cpu"])
    assert (e.hardware.threads, e.paths.offline, e.paths.data_dir, e.hardware.device) == (3, True, "D", "cpu")
    g = generate_settings(["--tokenizer-dir", "T", "--plain", "--threads", "1"])
    assert (g.paths.tokenizer_dir, g.hardware.plain, g.hardware.threads, g.paths.offline) == ("T", True, 1, False)
    q = gguf_settings(["tiny", "--out", "m.gguf", "--offline"])
    assert (q.model, q.type, q.out, q.paths.offline) == ("tiny", "f16", "m.gguf", True)
    assert "default: $MINIGPT2_DATA_DIR" in finetune["--data-dir"]  # each command's default in words
    assert "default: the run's" in helps(command_parser("x", EVALUATE_GROUPS))["--data-dir"]
    with pytest.raises(SettingsError, match="--threads 0: expected an integer >= 1"):
        evaluate_settings(["RUN", "--threads", "0"])


def test_finetune_takes_a_whole_run_as_its_settings_file(tmp_path):
    from app import runfolder

    s = settings("--lr", "0.003", "--method", "lora", "--lora-rank", "2", out=tmp_path / "run")
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(runfolder.settings_record(s)))
    assert parse_settings(["--settings", str(path)]) == s
    assert parse_settings([f"--settings={path}"]) == s
    with pytest.raises(SettingsError, match=r"--settings .*settings.json holds the whole run's settings; --lr 0.1 "
                                            "cannot go with it"):
        parse_settings(["--settings", str(path), "--lr", "0.1"])
    with pytest.raises(SettingsError, match="--settings: expected a FILE.json"):
        parse_settings(["--settings"])
    with pytest.raises(RunFolderError, match="nope.json: cannot be read"):
        parse_settings(["--settings", str(tmp_path / "nope.json")])


# Every field away from its default: a field the file drops or a reader leaves out comes back otherwise.
EVALUATION = EvaluateSettings(run_dir="R", split="test", task="quora", test_references="labels.csv", zero_shot=True,
                              hardware=HardwareSettings(device="cpu", plain=True, threads=3, fetch_timeout=5.0),
                              paths=PathSettings(data_dir="D", tokenizer_dir="T", offline=True))


def test_an_evaluation_round_trips_through_its_settings_file(tmp_path):
    from dataclasses import asdict

    from app import evaluate, runfolder

    def leaves(d, at=""):
        return {f"{at}{k}": v for key, v in d.items() for k, v in (leaves(v, f"{key}.").items()
                                                                   if isinstance(v, dict) else [(key, v)])}
    default, every = leaves(asdict(EvaluateSettings())), leaves(asdict(EVALUATION))
    assert [k for k in every if every[k] == default[k]] == []  # the test's premise: nothing left at its default
    path = tmp_path / "zero_shot_quora.settings.json"
    path.write_text(json.dumps(runfolder.settings_record(EVALUATION)))
    assert json.loads(path.read_text())["schema"] == runfolder.SETTINGS_SCHEMA  # versioned like the run's
    assert runfolder.read_settings_file(path, EvaluateSettings) == EVALUATION
    assert evaluate.parse_settings(["--settings", str(path)]) == EVALUATION
    assert evaluate.parse_settings([f"--settings={path}"]) == EVALUATION
    flags = evaluate.parse_settings(["R", "--split", "test", "--task", "quora", "--test-references", "labels.csv",
                                     "--zero-shot", "--device", "cpu", "--plain", "--threads", "3", "--data-dir",
                                     "D", "--tokenizer-dir", "T", "--offline"])
    assert flags == replace(EVALUATION, hardware=replace(EVALUATION.hardware, fetch_timeout=3600.0))  # no flag


@pytest.mark.parametrize("content,message", [
    (None, "nope.json: cannot be read"),
    ("{not json", "bad.json: not valid JSON"),
    (json.dumps({"split": "dev"}), "bad.json: expected a JSON object with the evaluation's \"settings\""),
    (json.dumps({"schema": 2, "settings": {"run_dir": "R", "split": "train"}}), "bad.json: .*split train: "
                                                                                  "expected dev or test"),
    (json.dumps({"schema": 2, "settings": {"run_dir": "R", "epochs": 3}}), r"bad.json: .*unknown EvaluateSettings "
                                                                            r"key\(s\) \['epochs'\]"),
    (json.dumps({"schema": 2, "settings": {"run_dir": "R", "hardware": {"device": "cpu", "speed": 9}}}),
     r"bad.json: .*unknown HardwareSettings key"),
    (json.dumps({"schema": 2, "settings": {"run_dir": "R", "zero_shot": "yes"}}),
     'bad.json: .*zero_shot "yes": expected true or false'),
    (json.dumps({"schema": 2, "settings": {"task": "quora"}}), "bad.json: its settings name no run_dir"),
])
def test_a_bad_evaluation_settings_file_is_one_line_naming_it(tmp_path, content, message):
    from app import evaluate

    path = tmp_path / ("nope.json" if content is None else "bad.json")
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--settings", str(path)])
    text = str(e.value.code)
    assert text.startswith("error: ") and "\n" not in text and re.search(message, text), text
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if content is None else ["bad.json"])  # none written


def test_evaluate_settings_go_alone_and_its_help_says_so(tmp_path, capsys):
    from app import evaluate

    path = tmp_path / "e.json"
    with pytest.raises(SettingsError, match=r"--settings .*e.json holds the whole evaluation's settings; --device "
                                            "cpu cannot go with it"):
        evaluate.parse_settings(["--settings", str(path), "--device", "cpu"])
    with pytest.raises(SettingsError, match="holds the whole evaluation's settings; R cannot go with it"):
        evaluate.parse_settings(["R", "--settings", str(path)])
    with pytest.raises(SettingsError, match="--settings: expected a FILE.json"):
        evaluate.parse_settings(["--settings"])
    with pytest.raises(SystemExit):
        evaluate.main(["--help"])
    assert re.search(r"--settings FILE.json\s+evaluate with the settings in FILE", capsys.readouterr().out)


def test_the_settings_by_flag_name_leave_out_how_the_invocation_was_watched():
    flat = cli.flat(settings())
    assert {"task", "lr", "precision", "autocast", "eval_samples", "temperature", "top_p", "synthetic",
            "synthetic_n", "device", "plain", "data_dir", "out_dir", "eval_batch_size"} <= set(flat)
    assert not {"resume", "overwrite", "progress", "stop_after_epoch", "fetch_timeout"} & set(flat)
    assert cli.flat(settings("--method", "lora"))["lora_rank"] == 8
    assert cli.flat(settings("--precision", "int8"))["autocast"] == "off"  # what the run used, not what was asked

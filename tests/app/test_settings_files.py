"""Settings as files, without data or a model: what `runfolder.settings_record` writes is what
`read_settings_file` (and `--settings FILE`) reads back, every field; a file that is not one is refused in one
line naming the file and the key; a config.json of the layout before is upgraded field by field; the command
lines of `--settings FILE` and evaluate's help; `evaluate.run` hands each setting to `evaluate_run`.

Round trips and refusals are properties (Hypothesis): any valid EvaluateSettings or RunSettings, any unknown key,
any value of the wrong JSON type at any key."""

from __future__ import annotations

import copy
import json
import sys
import typing
from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from app import cli, evaluate, runfolder
from app.precision import PrecisionSettings
from app.runfolder import read_settings_file, settings_record
from app.settings import (DataSettings, EvalSettings, EvaluateSettings, HardwareSettings, ModelSettings,
                          PathSettings, RunFolderSettings, RunSettings, SettingsError, SyntheticSettings)
from minigpt2.errors import FieldError, UserError
from minigpt2.generation import Sampling
from minigpt2.lora import LoRAConfig
from minigpt2.train import AUTOCAST_MODES, SCHEDULES, TrainConfig
from quant.config import DEFAULT_GROUP_SIZE, PRECISIONS
from tasks import TASKS

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much,
                                                                           HealthCheck.too_slow])


def write(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def refusal(call) -> str:
    """The one line a UserError says."""
    with pytest.raises(UserError) as e:
        call()
    text = str(e.value)
    assert "\n" not in text, text
    return text


# ---------------------------------------------------------------------------------------------- strategies

text = st.text(max_size=12)
maybe_text = st.none() | text
count = st.integers(1, 10**6)
maybe_count = st.none() | count
number = st.floats(1e-9, 1e9, allow_nan=False, allow_infinity=False)

hardware = st.builds(HardwareSettings, device=text, plain=st.booleans(), threads=maybe_count, fetch_timeout=number)
paths = st.builds(PathSettings, data_dir=maybe_text, tokenizer_dir=maybe_text, offline=st.booleans())
evaluations = st.builds(EvaluateSettings, run_dir=maybe_text, split=st.sampled_from(["dev", "test"]),
                        task=maybe_text, test_references=maybe_text, zero_shot=st.booleans(), hardware=hardware,
                        paths=paths)


@st.composite
def runs(draw) -> RunSettings:
    """A valid RunSettings, drawn field by field (a combination a check refuses is drawn again)."""
    task = draw(st.sampled_from(sorted(TASKS)))
    generative = task == "sonnet"
    synthetic = (draw(st.none() | st.builds(SyntheticSettings, path=text, n=st.none() | st.integers(0, 10**6),
                                            filter=st.sampled_from(["all", "perfect"]), only=st.booleans()))
                 if generative else None)
    data = DataSettings(task=task, max_train=draw(maybe_count), max_eval=draw(maybe_count),
                        max_length=draw(maybe_count), synthetic=synthetic, test_references=draw(maybe_text))
    method = draw(st.sampled_from(["full", "lora"]))
    lora = None
    if method == "lora":
        lora = LoRAConfig(rank=draw(st.integers(1, 64)), alpha=draw(number),
                          targets=draw(st.sampled_from(["attn", "attn+mlp", ("attn.query", "attn.value")])),
                          dropout=draw(st.floats(0, 0.99)), rslora=draw(st.booleans()),
                          trainable=draw(st.sampled_from([(), ("head",)])))
    modes = ["full-model"] + (["last-linear-layer"] if TASKS[task].has_head and method == "full" else [])
    model = ModelSettings(model=draw(text), mode=draw(st.sampled_from(modes)), method=method, lora=lora)
    optim = TrainConfig(epochs=draw(st.integers(0, 100)), batch_size=draw(count), grad_accum=draw(count),
                        lr=draw(number), weight_decay=draw(st.floats(0, 1)), warmup=draw(st.floats(0, 0.99)),
                        schedule=draw(st.sampled_from(SCHEDULES)), grad_clip=draw(st.floats(0, 10)),
                        seed=draw(st.integers(0, 2**63 - 1)), compile=draw(st.booleans()),
                        autocast=draw(st.sampled_from(AUTOCAST_MODES)), bucket=draw(count),
                        stop_after_epoch=draw(maybe_count), progress=draw(st.booleans()))
    fmt = draw(st.sampled_from(PRECISIONS))
    assume(not (fmt == "fp64" and optim.autocast == "bf16"))
    quant = (PrecisionSettings.quant_for(fmt, group_size=draw(st.sampled_from([32, 64, 128])),
                                         activations=draw(st.booleans()), embeddings=draw(st.booleans()))
             if PrecisionSettings.fake(fmt) else None)
    precision = PrecisionSettings(format=fmt, qaft=draw(st.booleans()) and fmt != "fp32", quant=quant)
    sampling = Sampling(temperature=draw(st.floats(0, 5)), top_p=draw(st.floats(0.01, 1)),
                        max_new_tokens=draw(count), seed=draw(st.integers(0, 2**31)))
    eval_ = EvalSettings(batch_size=draw(count), sampling=sampling,
                         samples=draw(st.integers(1, 100)) if generative else 1)
    resume = draw(st.booleans())
    run = RunFolderSettings(out_dir=draw(text.filter(bool)) if resume else draw(maybe_text),
                            name=draw(st.none() | st.sampled_from(["a", "run-1", "x y"])), resume=resume,
                            overwrite=draw(st.booleans()) and not resume)
    return RunSettings(data=data, model=model, optim=optim, precision=precision, eval=eval_,
                       hardware=draw(hardware), paths=draw(paths), run=run)


def through_a_file(tmp_path: Path, s, cls):
    path = write(tmp_path / "s.settings.json", json.dumps(settings_record(s)))
    return read_settings_file(path, cls)


# ---------------------------------------------------------------------------------------------- round trips

@PROPERTY
@given(evaluations)
def test_any_evaluation_survives_its_settings_file(tmp_path_factory, s):
    tmp = tmp_path_factory.mktemp("e")
    assert settings_record(s) == {"schema": runfolder.SETTINGS_SCHEMA, "settings": asdict(s)}
    assert EvaluateSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert through_a_file(tmp, s, EvaluateSettings) == s
    if s.run_dir:  # what `python -m minigpt2.evaluate --settings FILE` evaluates
        path = write(tmp / "e.json", settings_record(s))
        assert evaluate.parse_settings(["--settings", str(path)]) == s


@PROPERTY
@given(runs())
def test_any_run_survives_its_settings_file(tmp_path_factory, s):
    tmp = tmp_path_factory.mktemp("r")
    assert settings_record(s)["schema"] == 2 and settings_record(s)["settings"] == s.to_dict()
    assert RunSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert through_a_file(tmp, s, RunSettings) == s
    (tmp / "run").mkdir()
    write(tmp / "run" / "config.json", {"settings": s.to_dict()})
    assert runfolder.saved_settings(tmp / "run") == s


def test_the_settings_record_is_versioned_and_holds_the_settings_alone():
    s = EvaluateSettings(run_dir="R")
    assert runfolder.SETTINGS_SCHEMA == 2
    assert settings_record(s) == {"schema": 2, "settings": {
        "run_dir": "R", "split": "dev", "task": None, "test_references": None, "zero_shot": False,
        "hardware": {"device": "auto", "plain": False, "threads": None, "fetch_timeout": 3600.0},
        "paths": {"data_dir": None, "tokenizer_dir": None, "offline": False}}}


# ---------------------------------------------------------------------------------------------- refusals

def leaf_paths(d: dict, at: str = "") -> list[str]:
    return [p for k, v in d.items() for p in (leaf_paths(v, f"{at}{k}.") if isinstance(v, dict) else [at + k])]


def set_at(d: dict, path: str, value) -> dict:
    d = copy.deepcopy(d)
    *heads, last = path.split(".")
    node = d
    for h in heads:
        node = node[h]
    node[last] = value
    return d


# Values of another JSON type than each declared one: strings that read as booleans and numbers, a bool for a
# number, a fraction for an integer, a list, an object.
WRONG = {bool: ["false", "true", 0, 1, None, [], {}], int: ["2", 2.5, True, [], {}], float: ["0.5", True, [], {}],
         str: [5, 1.5, False, ["dev"], {}]}
EVERY = EvaluateSettings(run_dir="R", split="test", task="quora", test_references="labels.csv", zero_shot=True,
                         hardware=HardwareSettings(device="cpu", plain=True, threads=3, fetch_timeout=5.0),
                         paths=PathSettings(data_dir="D", tokenizer_dir="T", offline=True))


def declared(cls, path: str) -> tuple[type, bool]:
    """(the declared type of the leaf at `path` below `cls`, whether it may be null), as its dataclass says."""
    from app.settings import _NESTED

    *heads, name = path.split(".")
    for head in heads:
        cls = _NESTED[(cls.__name__, head)]
    members = typing.get_args(typing.get_type_hints(cls)[name]) or (typing.get_type_hints(cls)[name],)
    kinds = [k for k in members if k is not type(None)]
    default = next(f.default for f in fields(cls) if f.name == name)
    return kinds[0], default is None or len(kinds) < len(members)


@pytest.mark.parametrize("path", leaf_paths(EVERY.to_dict()))
def test_a_value_of_another_type_in_an_evaluation_file_is_refused_naming_its_key(tmp_path, path):
    kind, nullable = declared(EvaluateSettings, path)
    for value in WRONG[kind] + ([] if nullable else [None]):
        file = write(tmp_path / "e.json", {"schema": 2, "settings": set_at(EVERY.to_dict(), path, value)})
        line = refusal(lambda: read_settings_file(file, EvaluateSettings))
        assert line.startswith(f"{file}: evaluate settings do not fit this version of the code ({path} "
                               f"{json.dumps(value)}: expected "), line


RUN = RunSettings(data=DataSettings(task="sonnet", max_train=4, max_eval=2, max_length=64,
                                    synthetic=SyntheticSettings(path="s.jsonl", n=3), test_references="t.txt"),
                  model=ModelSettings(model="tiny", method="lora", lora=LoRAConfig(rank=2, alpha=4.0)),
                  precision=PrecisionSettings(format="int8", qaft=True, quant=PrecisionSettings.quant_for("int8")),
                  hardware=HardwareSettings(threads=2), run=RunFolderSettings(out_dir="o", name="n"))
# the library's own groups (LoRA, quantization) have their own readers and messages
OWN_LEAVES = [p for p in leaf_paths(RUN.to_dict()) if not p.startswith(("model.lora.", "precision.quant."))]


@pytest.mark.parametrize("path", OWN_LEAVES)
def test_a_value_of_another_type_in_a_run_settings_file_is_refused_naming_its_key(tmp_path, path):
    kind, nullable = declared(RunSettings, path)
    for value in WRONG[kind] + ([] if nullable else [None]):
        file = write(tmp_path / "settings.json", {"schema": 2, "settings": set_at(RUN.to_dict(), path, value)})
        line = refusal(lambda: read_settings_file(file))
        assert line.startswith(f"{file}: run settings do not fit this version of the code ({path} "
                               f"{json.dumps(value)}: expected "), line


@pytest.mark.parametrize("path", ["model.lora.rslora", "precision.quant.activations", "precision.quant.embeddings"])
@pytest.mark.parametrize("value", ["false", 0, 1, None])
def test_a_library_group_s_switch_must_be_true_or_false(tmp_path, path, value):
    """bool("false") is True: a file's string would silently turn rsLoRA, or activation quantization, on."""
    file = write(tmp_path / "settings.json", {"schema": 2, "settings": set_at(RUN.to_dict(), path, value)})
    group, key = path.rsplit(".", 1)
    line = refusal(lambda: read_settings_file(file))
    assert line.startswith(f"{file}: {group}: ") and f"{key} {value!r}: expected true or false" in line, line


@pytest.mark.parametrize("path,value,expected", [
    ("hardware.plain", "false", "true or false"), ("hardware.threads", "2", "an integer or null"),
    ("hardware.fetch_timeout", True, "a number"), ("run_dir", 5, "a string or null"), ("split", None, "a string"),
    ("hardware", None, "a JSON object"), ("paths", [], "a JSON object")])
def test_what_a_wrong_type_is_told_to_expect(tmp_path, path, value, expected):
    file = write(tmp_path / "e.json", {"schema": 2, "settings": set_at(EVERY.to_dict(), path, value)})
    assert refusal(lambda: read_settings_file(file, EvaluateSettings)) == (
        f"{file}: evaluate settings do not fit this version of the code ({path} {json.dumps(value)}: expected "
        f"{expected})")


def test_a_number_where_a_float_is_declared_may_be_written_as_an_integer(tmp_path):
    file = write(tmp_path / "e.json", {"schema": 2, "settings": set_at(EVERY.to_dict(), "hardware.fetch_timeout", 9)})
    assert read_settings_file(file, EvaluateSettings).hardware.fetch_timeout == 9


@PROPERTY
@given(st.sampled_from(["", "hardware.", "paths."]), st.from_regex(r"[a-z_][a-z0-9_]{0,11}", fullmatch=True))
def test_any_unknown_key_in_an_evaluation_file_is_refused_naming_it(tmp_path_factory, group, key):
    d = EVERY.to_dict()
    node = d[group[:-1]] if group else d
    assume(key not in node)
    node[key] = 1
    file = write(tmp_path_factory.mktemp("u") / "e.json", {"schema": 2, "settings": d})
    cls = {"": "EvaluateSettings", "hardware.": "HardwareSettings", "paths.": "PathSettings"}[group]
    assert refusal(lambda: read_settings_file(file, EvaluateSettings)) == (
        f"{file}: evaluate settings do not fit this version of the code (\"unknown {cls} key(s) [{key!r}]\")")


@PROPERTY
@given(st.sampled_from(["", "data.", "optim.", "eval.sampling.", "run."]),
       st.from_regex(r"[a-z_][a-z0-9_]{0,11}", fullmatch=True))
def test_any_unknown_key_in_a_run_settings_file_is_refused_naming_it(tmp_path_factory, group, key):
    d = RUN.to_dict()
    node = d
    for head in group.split(".")[:-1]:
        node = node[head]
    assume(key not in node)
    node[key] = 1
    file = write(tmp_path_factory.mktemp("u") / "settings.json", {"schema": 2, "settings": d})
    line = refusal(lambda: read_settings_file(file))
    assert line.startswith(f"{file}: run settings do not fit this version of the code (") and repr(key) in line


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["model"]["lora"].pop("alpha"), "model.lora: LoRA settings have missing key(s) ['alpha']"),
    (lambda d: d["precision"]["quant"].update(speed=1), "precision.quant: unknown quantization key(s) ['speed']"),
    (lambda d: d["precision"].update(format="fp32", quant=None), "--qaft needs a --precision other than fp32"),
    (lambda d: d["model"].update(method="full"), "--method lora and the LoRA settings go together"),
])
def test_a_group_refusing_its_own_values_names_the_file_and_the_group(tmp_path, edit, message):
    d = RUN.to_dict()
    edit(d)
    file = write(tmp_path / "settings.json", {"schema": 2, "settings": d})
    assert refusal(lambda: read_settings_file(file)).startswith(f"{file}: {message}")
    (tmp_path / "run").mkdir()
    write(tmp_path / "run" / "config.json", {"settings": d})
    assert refusal(lambda: runfolder.saved_settings(tmp_path / "run")).startswith(
        f"{tmp_path / 'run' / 'config.json'}: {message}")


@pytest.mark.parametrize("cls,words", [
    (RunSettings, "the run's \"settings\" (as a run folder's config.json or settings.json holds them)"),
    (EvaluateSettings, "the evaluation's \"settings\" (as a sweep writes them into the run folder)")])
@pytest.mark.parametrize("content", [[], '"text"', {"schema": 2}, {"settings": None}, {"settings": ["run_dir"]}])
def test_a_file_without_settings_is_one_line_saying_what_it_should_hold(tmp_path, cls, words, content):
    file = write(tmp_path / "f.json", content)
    assert refusal(lambda: read_settings_file(file, cls)) == f"{file}: expected a JSON object with {words}"


def test_a_file_that_cannot_be_read_or_parsed_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "nope.json"
    assert refusal(lambda: read_settings_file(missing)) == f"{missing}: cannot be read (No such file or directory)"
    assert refusal(lambda: read_settings_file(tmp_path)) == f"{tmp_path}: cannot be read (Is a directory)"
    bad = write(tmp_path / "bad.json", "{not json")
    assert refusal(lambda: read_settings_file(bad, EvaluateSettings)).startswith(f"{bad}: not valid JSON (")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"settings": "\xe9"}')
    assert refusal(lambda: read_settings_file(latin)).startswith(f"{latin}: not valid JSON (")
    utf8 = write(tmp_path / "utf8.json", json.dumps(settings_record(replace(EVERY, task="quorá")), ensure_ascii=False))
    assert read_settings_file(utf8, EvaluateSettings).task == "quorá"  # UTF-8, whatever the locale


# ---------------------------------------------------------------------------------------------- EvaluateSettings

@pytest.mark.parametrize("field,value,expected", [
    ("split", "train", "dev or test"), ("zero_shot", "yes", "true or false"),
    ("hardware", "cpu", "the hardware settings"), ("paths", {"offline": True}, "the path settings")])
def test_evaluate_settings_built_in_code_check_each_field(field, value, expected):
    with pytest.raises(FieldError) as e:
        EvaluateSettings(run_dir="R", **{field: value})
    assert (e.value.field, e.value.value, e.value.expected) == (field, value, expected)
    assert str(e.value) == f"{field} {value}: expected {expected}"


# ---------------------------------------------------------------------------------------------- the layout before

def old_layout(**precision) -> dict:
    """The "settings" of a config.json from before settings were declared once (sst, fp32 unless `precision`)."""
    return {
        "data": {"task": "sst", "data_dir": "data", "tokenizer_dir": "tok", "offline": True, "max_train": 4,
                 "max_eval": 2, "max_length": None, "synthetic": None, "test_references": None},
        "model": {"model": "tiny", "mode": "full-model", "method": "full", "lora": None},
        "optim": {"epochs": 1, "batch_size": 4, "grad_accum": 1, "lr": 0.01, "weight_decay": 0.01, "warmup": 0.05,
                  "schedule": "linear", "grad_clip": 1.0, "seed": 7},
        "precision": {"precision": "fp32", "qaft": False, **precision},
        "eval": {"batch_size": 8, "sampling": {"temperature": 1.2, "top_p": 0.9, "max_new_tokens": 4, "seed": 7}},
        "hardware": {"device": "cpu", "autocast": "off", "compile": True, "progress": False, "threads": 2,
                     "fetch_timeout": 3600.0},
        "run": {"out_dir": "x", "name": None, "resume": False, "overwrite": False, "stop_after_epoch": 1}}


def test_a_config_of_the_layout_before_is_upgraded_field_by_field(tmp_path):
    s = RunSettings.from_dict(old_layout())
    assert (s.precision.format, s.precision.qaft, s.precision.quant) == ("fp32", False, None)
    assert (s.optim.autocast, s.optim.compile, s.optim.progress, s.optim.stop_after_epoch) == ("off", True, False, 1)
    assert s.eval.samples == 1  # recorded before --eval-samples: one per prompt
    assert (s.paths.data_dir, s.paths.tokenizer_dir, s.paths.offline) == ("data", "tok", True)
    assert (s.hardware.threads, s.data.max_train) == (2, 4)
    (tmp_path / "run").mkdir()
    write(tmp_path / "run" / "config.json", {"settings": old_layout()})
    assert runfolder.saved_settings(tmp_path / "run") == s
    assert RunSettings.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("recorded,group_size,activations,embeddings", [
    ({}, DEFAULT_GROUP_SIZE, False, True),  # what the version before did when it recorded none
    ({"group_size": 64, "quant_activations": True, "quant_embeddings": False}, 64, True, False)])
def test_an_older_quantized_run_keeps_what_it_quantized(recorded, group_size, activations, embeddings):
    s = RunSettings.from_dict(old_layout(**{"precision": "int4", "qaft": True}, **recorded))
    q = s.precision.quant
    assert (s.precision.format, q.weight, q.group_size, q.activations, q.embeddings) == (
        "int4", "int4", group_size, activations, embeddings)


def test_eval_samples_are_filled_only_where_none_were_recorded():
    sonnet = old_layout()
    sonnet["data"]["task"] = "sonnet"
    sonnet["eval"]["samples"] = 4
    assert RunSettings.from_dict(sonnet).eval.samples == 4
    del sonnet["eval"]
    assert RunSettings.from_dict(sonnet).eval == EvalSettings()  # a group left out: its defaults


def test_a_group_of_another_type_is_named_not_crashed_on():
    for group in ("model", "eval", "optim"):
        for value in (None, "x", 3):
            d = set_at(old_layout(), group, value)
            with pytest.raises(SettingsError) as e:
                RunSettings.from_dict(d)
            assert str(e.value) == (f"run settings do not fit this version of the code ({group} "
                                    f"{json.dumps(value)}: expected a JSON object)")


# ---------------------------------------------------------------------------------------------- read_config

def test_a_folder_that_is_no_run_folder_is_one_line_saying_what_it_is(tmp_path):
    run = tmp_path / "run"
    assert refusal(lambda: runfolder.read_config(run)) == (
        f"{run / 'config.json'}: not found; is {run} a run folder written by finetune?")
    run.mkdir()
    write(run / "config.json", "{")
    assert refusal(lambda: runfolder.read_config(run)).startswith(f"{run / 'config.json'}: not valid JSON (")
    for content in ([], {"model_type": "gpt2"}, {"args": ["--task", "sst"]}):
        write(run / "config.json", content)
        assert refusal(lambda: runfolder.read_config(run)) == (
            f"{run / 'config.json'}: no typed settings; {run} is not a run folder of this version of finetune "
            "(a model checkpoint, or a run of an older version?)")
        assert not runfolder.is_run_config(run / "config.json")
    write(run / "config.json", {"settings": {"data": {"task": "sst"}}})
    assert runfolder.read_config(run) == {"settings": {"data": {"task": "sst"}}}
    assert runfolder.is_run_config(run / "config.json")
    for checkpoint in ("best", "last"):  # a checkpoint inside a run folder: the folder to pass instead
        (run / checkpoint).mkdir()
        write(run / checkpoint / "config.json", {"model_type": "gpt2"})
        assert refusal(lambda: runfolder.read_config(run / checkpoint)) == (
            f"{run / checkpoint} is the {checkpoint} checkpoint inside a run folder; pass the run folder itself: "
            f"{run}")
    (run / "other").mkdir()  # any other folder in it is no checkpoint of it
    write(run / "other" / "config.json", {"model_type": "gpt2"})
    assert "no typed settings" in refusal(lambda: runfolder.read_config(run / "other"))
    (tmp_path / "best").mkdir()  # a folder named best outside a run folder is just a folder
    write(tmp_path / "best" / "config.json", {"model_type": "gpt2"})
    assert "no typed settings" in refusal(lambda: runfolder.read_config(tmp_path / "best"))


def test_is_run_config_is_false_for_anything_unreadable(tmp_path):
    assert not runfolder.is_run_config(tmp_path / "none.json")
    assert not runfolder.is_run_config(write(tmp_path / "bad.json", "{"))
    bad = tmp_path / "latin.json"
    bad.write_bytes(b'{"settings": {"x": "\xe9"}}')
    assert not runfolder.is_run_config(bad)
    assert not runfolder.is_run_config(write(tmp_path / "s.json", {"settings": "sst"}))
    assert runfolder.is_run_config(write(tmp_path / "u.json", '{"settings": {"name": "é"}}'))


def test_saved_settings_name_the_config_they_come_from(tmp_path):
    write(tmp_path / "config.json", {"settings": set_at(old_layout(), "optim.lr", "0.1")})
    assert refusal(lambda: runfolder.saved_settings(tmp_path)) == (
        f"{tmp_path / 'config.json'}: run settings do not fit this version of the code (optim.lr \"0.1\": expected "
        "a number)")


# ---------------------------------------------------------------------------------------------- command lines

def test_settings_file_takes_the_file_after_or_after_the_equals_sign_and_nothing_else():
    assert cli.settings_file([]) is None and cli.settings_file(["R", "--split", "test"]) is None
    assert cli.settings_file(["--settings", "a=b.json"]) == "a=b.json"
    assert cli.settings_file(["--settings=a=b.json"]) == "a=b.json"  # only the first '=' ends the flag
    assert cli.settings_file(["--settings=s.json"], "evaluation") == "s.json"
    for argv, rest in ((["--settings=s.json", "R"], "R"), (["--settings=s.json", "--device", "cpu"], "--device cpu"),
                       (["R", "--settings", "s.json"], "R"), (["--settings", "s.json", "--lr", "0.1"], "--lr 0.1")):
        with pytest.raises(SettingsError) as e:
            cli.settings_file(argv, "evaluation")
        assert str(e.value) == (f"--settings s.json holds the whole evaluation's settings; {rest} cannot go with it "
                                "(edit the file, or give the flags without --settings)")
    for argv in (["--settings"], ["--settings="]):
        with pytest.raises(SettingsError) as e:
            cli.settings_file(argv)
        assert str(e.value) == "--settings: expected a FILE.json"


def test_evaluate_reads_sys_argv_when_given_no_argv(tmp_path, monkeypatch):
    path = write(tmp_path / "e.json", settings_record(EVERY))
    monkeypatch.setattr(sys, "argv", ["evaluate", "--settings", str(path)])
    assert evaluate.parse_settings() == EVERY
    monkeypatch.setattr(sys, "argv", ["evaluate", "RUN", "--split", "test"])
    assert evaluate.parse_settings() == EvaluateSettings(run_dir="RUN", split="test")


def test_evaluate_help_names_the_command_and_describes_it(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m minigpt2.evaluate ")
    words = " ".join(out.split())  # argparse wraps lines
    first_paragraph = " ".join(evaluate.__doc__.split("\n\n")[0].split())
    assert first_paragraph.startswith("Re-score a saved run:") and first_paragraph in words
    assert "The run's own settings (task, mode, sampling) come from its config.json" not in words  # that alone
    assert f"--settings FILE.json {cli.EVALUATE_SETTINGS_HELP}" in words
    assert "--settings" not in " ".join(cli.command_parser("x", cli.GENERATE_GROUPS).format_help().split())


def test_evaluate_run_hands_each_setting_to_the_evaluation(monkeypatch):
    import torch

    calls, threads = [], []  # the thread count of each evaluation: the run's --threads (the caller's back after)
    monkeypatch.setattr(evaluate, "evaluate_run",
                        lambda *a, **k: calls.append((a, k)) or threads.append(torch.get_num_threads()) or {"ok": 1})
    before = torch.get_num_threads()
    online = replace(EVERY, paths=replace(EVERY.paths, offline=False))  # plain and offline told apart
    assert evaluate.run(online) == {"ok": 1}
    assert calls == [(("R", "test", "D", "T", "cpu", "quora", True, "labels.csv", True, False), {})]
    assert threads == [3] and torch.get_num_threads() == before
    calls.clear()
    evaluate.run(EvaluateSettings(run_dir="R"))
    assert calls == [(("R", "dev", None, None, "auto", None, False, None, False, False), {})]
    assert threads == [3, before]


@pytest.mark.parametrize("schema", [3, 99, "2", True, None])
def test_a_settings_record_of_a_newer_or_unknown_schema_is_refused(tmp_path, schema):
    """A file a newer version wrote may mean something else by the same keys: refused, not half read."""
    record = {"schema": schema, "settings": EVERY.to_dict()}
    file = write(tmp_path / "e.json", record)
    expected = (f"{file}: settings schema {json.dumps(schema)}, expected an integer <= 2 (a file written by a newer "
                "version of minigpt2?)")
    assert refusal(lambda: read_settings_file(file, EvaluateSettings)) == expected
    run = tmp_path / "run"
    run.mkdir()
    write(run / "config.json", {"schema": schema, "settings": RUN.to_dict()})
    assert refusal(lambda: runfolder.saved_settings(run)) == expected.replace(str(file), str(run / "config.json"))


@pytest.mark.parametrize("schema", [2, 1])
def test_a_settings_record_of_this_or_an_older_schema_is_read(tmp_path, schema):
    file = write(tmp_path / "e.json", {"schema": schema, "settings": EVERY.to_dict()})
    assert read_settings_file(file, EvaluateSettings) == EVERY

"""A run's settings: frozen dataclasses whose fields declare each option once (default, help, role; `app.cli`
derives the flag from the field's name), checked when they are built.

    RunSettings
      data       task, limits, max length, synthetic sonnets, test references
      model      base model, mode, method, lora (a `minigpt2.lora.LoRAConfig`, set exactly with --method lora)
      optim      the trainer's own `minigpt2.train.TrainConfig`: epochs, batch size, lr, schedule, seed, autocast, ...
      precision  fp32 / bf16 / fp8 / int8 / int4, QAFT or PTQ, holding the `quant.config.QuantConfig`
      eval       evaluation batch size, sonnet sampling, samples per prompt
      hardware   device, the plain path, CPU threads, the torchrun fetch timeout (shared with evaluate, generate)
      paths      the data and tokenizer folders, offline (shared with evaluate, generate, quant.gguf)
      run        run folder, name, resume, overwrite

A field's role says what it is to a run: it defines the result (the default), says where and how it runs, or how
it is watched. Only the first is fingerprinted, fixed on resume and compared between a sweep's run and the folder
it finds (`defining`); no list elsewhere repeats it.

Each dataclass checks its own values (`__post_init__`: a `FieldError` naming the field, which `app.cli` turns
into one line naming the flag); `RunSettings` checks what spans groups, and `resolve` fills the defaults that
depend on other options (the lr by mode and method, the samples per prompt by task). The run folder stores
`to_dict()` as JSON (`app.runfolder.settings_record`, versioned) and `evaluate`/`--resume` read it back with
`from_dict`, older layouts upgraded.
"""

from __future__ import annotations

import functools
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

import torch

from minigpt2.device import autocast_dtype
from minigpt2.errors import FieldError, UserError, require
from minigpt2.generation import Sampling
from minigpt2.lora import LoRAConfig
from minigpt2.train import DEFAULT_SEED, TrainConfig
from quant.config import DEFAULT_GROUP_SIZE, QuantConfig
from tasks import TASKS
from tasks.base import GenerativeTask, PredictSettings

from .precision import PrecisionSettings

# The course's learning rates: a frozen body lets the classifier learn fast; the full model needs a small LR.
DEFAULT_LR = {"last-linear-layer": 1e-3, "full-model": 1e-5}
LORA_LR = 1e-2  # the study's best learning rate for LoRA adapters (alpha 16)
LORA_TARGETS = "attn+mlp"  # the study's LoRA targets (the library's default is attention alone)
SYNTHETIC_FILTERS = ("all", "perfect")
MAX_EVAL_SAMPLES = 100
EVAL_SAMPLES = 4  # sonnets drawn per prompt for the final scores (docs/study.md: the measured spread)


class SettingsError(UserError, ValueError):
    """Flags that cannot work together or lie outside their range, naming the flag and what was expected."""


# A field's role: what it says about a run. Only DEFINES changes what a run computes; the others may differ
# between a run and its resume, or between two runs that are the same run (a sweep re-run on another device).
DEFINES = "defines"  # the result: task, model, optimisation, precision, sampling, ...
RUNS = "runs"  # where and how it runs: device, threads, compilation, evaluation batch size, the folders it uses
WATCH = "watch"  # how this invocation is watched and continued: progress, resume, where it stops, how long it waits
ROLES = (DEFINES, RUNS, WATCH)


def option(default: Any, help: str, role: str = DEFINES, **extra: Any) -> Any:
    """A settings field declared once: its default, help and role (`app.cli` makes the flag from the field's
    name)."""
    assert role in ROLES, role  # internal invariant: roles are written in code, never by the user
    return field(default=default, metadata={"help": help, "role": role, **extra})


def _non_negative(name: str, value: int | None) -> None:
    if value is not None:
        require(value >= 0, name, value, "an integer >= 0")


def _positive(name: str, value: int | None) -> None:
    if value is not None:
        require(value >= 1, name, value, "an integer >= 1")


@dataclass(frozen=True)
class SyntheticSettings:
    path: str = option(None, "add the kept sonnets of a distill.generate file to the training set (dev/test stay "
                             "real)", metavar="FILE.jsonl")
    n: int | None = option(None, "add only the first N synthetic sonnets (an error if the file has fewer); "
                                 "default: all")
    filter: str = option("all", "'perfect': only those passing distill.check (14 lines, ABAB CDCD EFEF GG)",
                         choices=SYNTHETIC_FILTERS)
    only: bool = option(False, "train on the synthetic sonnets alone, no real training sonnet (dev and test stay "
                               "real)")

    def __post_init__(self) -> None:
        _non_negative("n", self.n)
        require(self.filter in SYNTHETIC_FILTERS, "filter", self.filter, f"one of {', '.join(SYNTHETIC_FILTERS)}")


@dataclass(frozen=True)
class PathSettings:
    """Where the inputs are, shared by finetune, evaluate and generate (a command's own default in its notes)."""

    data_dir: str | None = option(None, "folder with the course files", RUNS)
    tokenizer_dir: str | None = option(None, "folder with GPT-2's encoder.json + vocab.bpe for offline use", RUNS)
    offline: bool = option(False, "never download: missing data files, weights or presets are an error that says how "
                                  "to get them (default: fetch what is missing; HF_HUB_OFFLINE=1 also turns "
                                  "downloads off)", RUNS)


@dataclass(frozen=True)
class DataSettings:
    task: str = option(None, "which course task to fine-tune on", choices=tuple(sorted(TASKS)), required=True)
    max_train: int | None = option(None, "train on a seeded random subset of N examples (stratified by label for "
                                         "the classification tasks; real sonnets for the sonnet task); the chosen "
                                         "ids go to RUN_DIR/subsets.json")
    max_eval: int | None = option(None, "score a seeded random subset of N dev and N test examples (stratified as "
                                        "--max-train)")
    max_length: int | None = option(None, "truncate inputs to N tokens (default: the model's n_positions)")
    synthetic: SyntheticSettings | None = None
    test_references: str | None = option(None, "the test labels (*-test-labels.csv) or true test sonnets to score "
                                               "test with (default: the file beside the data, as `python -m course "
                                               "fetch` writes it; test is not scored without one)", RUNS,
                                         metavar="FILE")

    def __post_init__(self) -> None:
        require(self.task in TASKS, "task", self.task, f"one of {sorted(TASKS)}")
        _non_negative("max_train", self.max_train)
        _non_negative("max_eval", self.max_eval)
        _positive("max_length", self.max_length)
        if self.max_eval == 0:
            raise SettingsError("--max-eval 0: the dev set would be empty and no epoch could be scored; "
                                "expected >= 1")
        if self.max_train == 0:
            raise SettingsError("--max-train 0: the training set would be empty; expected >= 1")


MODES, METHODS = ("full-model", "last-linear-layer"), ("full", "lora")


@dataclass(frozen=True)
class ModelSettings:
    model: str = option("gpt2", "a preset (gpt2, gpt2-medium, ...: downloaded once into checkpoints/<name>/), a "
                                "folder or file with model.safetensors, or 'tiny' for a random-init tiny model "
                                "(smoke runs, tests)")
    mode: str = option("full-model", "train the whole model, or (sentiment) only the classifier on a frozen "
                                     "GPT-2", choices=MODES)
    method: str = option("full", "full: train the weights themselves (as --mode says); lora: freeze GPT-2 and "
                                 "train low-rank adapters (plus the task head); the run's checkpoint is then the "
                                 "small adapter file", choices=METHODS)
    lora: LoRAConfig | None = None  # set exactly when method == "lora"

    def __post_init__(self) -> None:
        require(self.mode in MODES, "mode", self.mode, f"one of {', '.join(MODES)}")
        require(self.method in METHODS, "method", self.method, f"one of {', '.join(METHODS)}")
        if (self.method == "lora") != (self.lora is not None):
            raise SettingsError("--method lora and the LoRA settings go together: set both or neither")
        if self.method == "lora" and self.mode == "last-linear-layer":
            raise SettingsError("--method lora trains adapters inside GPT-2; it needs --mode full-model, not "
                                "last-linear-layer (which freezes GPT-2 and trains only the head)")


@dataclass(frozen=True)
class EvalSettings:
    batch_size: int = option(32, "batch size of evaluation and generation", RUNS)
    sampling: Sampling = Sampling()
    samples: int = option(EVAL_SAMPLES, "sonnets drawn per prompt (seeded) for the final dev/test scores: chrF and "
                                        "the form rates are averaged over them (each epoch's dev score uses one)")

    def __post_init__(self) -> None:
        s = self.sampling
        _positive("batch_size", self.batch_size)
        require(math.isfinite(s.temperature) and s.temperature >= 0, "sampling.temperature", s.temperature,
                "a finite number >= 0 (0: greedy)")
        require(0 < s.top_p <= 1, "sampling.top_p", s.top_p, "a mass in (0, 1]")
        _positive("sampling.max_new_tokens", s.max_new_tokens)
        require(1 <= self.samples <= MAX_EVAL_SAMPLES, "samples", self.samples,
                f"an integer in [1, {MAX_EVAL_SAMPLES}]")


@dataclass(frozen=True)
class HardwareSettings:
    """Where a command runs, shared by finetune, evaluate and generate. The plain path defines a run's result (the
    speed pieces draw other random numbers, e.g. for dropout); the rest does not."""

    device: str = option("auto", "auto (CUDA when available), cpu, cuda, cuda:1, ...", RUNS)
    plain: bool = option(False, "run on the plain path: none of minigpt2.fast's speed pieces")
    threads: int | None = option(None, "CPU threads of this process (torch.set_num_threads); default: "
                                       "torch's, one per core. Sweeps running several runs "
                                       "at once split the cores with it", RUNS)
    fetch_timeout: float = option(3600.0, "torchrun: seconds the other ranks wait while one rank per node fetches "
                                          "missing data and weights, before giving up with an error", WATCH)

    def __post_init__(self) -> None:
        _positive("threads", self.threads)
        require(math.isfinite(self.fetch_timeout) and self.fetch_timeout > 0, "fetch_timeout", self.fetch_timeout,
                "a number of seconds > 0")


@dataclass(frozen=True)
class RunFolderSettings:
    out_dir: str | None = option(None, "run folder (default: checkpoints/runs/<task>-<name or time>)", RUNS)
    name: str | None = option(None, "run name used in the default run folder", RUNS)
    resume: bool = option(False, "continue the run in --out-dir from its last complete epoch", WATCH)
    overwrite: bool = option(False, "replace the run in --out-dir (a fresh run into a folder that holds one is "
                                    "refused)", WATCH)

    def __post_init__(self) -> None:
        if self.name is not None:  # the name becomes part of a folder name: a path in it would leave checkpoints/runs
            require(self.name.strip() != "" and not any(c in self.name for c in "/\\\0")
                    and self.name not in (".", ".."), "name", repr(self.name),
                    "a plain name, without '/' or '\\' (the run folder is checkpoints/runs/<task>-<name>)")
        if self.resume and not self.out_dir:
            raise SettingsError("--resume needs --out-dir: the run folder to continue")
        if self.resume and self.overwrite:
            raise SettingsError("--resume continues the run in --out-dir; --overwrite would discard it: choose one")


@dataclass(frozen=True)
class RunSettings:
    """Everything one `finetune` run was asked to do."""

    data: DataSettings
    model: ModelSettings = ModelSettings()
    optim: TrainConfig = TrainConfig()
    precision: PrecisionSettings = PrecisionSettings()
    eval: EvalSettings = EvalSettings()
    hardware: HardwareSettings = HardwareSettings()
    paths: PathSettings = PathSettings()
    run: RunFolderSettings = RunFolderSettings()

    def __post_init__(self) -> None:
        task, name = TASKS[self.data.task], self.data.task
        if self.eval.samples > 1 and not isinstance(task, GenerativeTask):
            raise SettingsError(f"--eval-samples {self.eval.samples}: task {name!r} predicts deterministically; "
                                "only a generative task (sonnet) draws several samples per prompt")
        if self.model.mode == "last-linear-layer" and not task.has_head:
            raise SettingsError(f"--mode last-linear-layer trains only a classifier head; task {name!r} has none")
        if self.data.synthetic is not None and not task.takes_extra_texts:
            raise SettingsError(f"--synthetic adds synthetic sonnets; task {name!r} is not the sonnet task")
        if self.precision.format == "fp64" and self.optim.autocast == "bf16":
            raise SettingsError("--autocast bf16 would run the fp64 model's matmuls in bf16; use --autocast off")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.model.lora is not None:
            d["model"]["lora"] = self.model.lora.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSettings":
        """The settings a run folder recorded (`to_dict`), of this version or the one before (`_upgrade`)."""
        try:
            return _build(cls, _upgrade(d))
        except (KeyError, TypeError, AttributeError, FieldError) as e:
            raise SettingsError(f"run settings do not fit this version of the code ({e})") from None

    def train_config(self) -> TrainConfig:
        """The trainer's config: `optim`, with the autocast mode the run uses (`autocast`), as metrics.json records
        it; the trainer runs in the dtype `predict_settings` resolves it to."""
        return replace(self.optim, autocast=self.autocast)

    @property
    def autocast(self) -> str:
        """The `--autocast` mode the run uses: `auto` turns autocast off for non-fp32 precisions, so that what is
        simulated is what runs; an explicit `bf16` is kept (the fake-quantized matmuls then run in bf16, as on a
        GPU)."""
        if self.precision.format != "fp32" and self.optim.autocast == "auto":
            return "off"
        return self.optim.autocast

    def predict_settings(self, device: torch.device) -> PredictSettings:
        """What the tasks' `predict` needs, with the run's autocast mode resolved to its dtype on `device`: the one
        place a run's mode becomes a dtype (the trainer takes this one too)."""
        return PredictSettings(batch_size=self.eval.batch_size, autocast_dtype=autocast_dtype(self.autocast, device),
                               sampling=self.eval.sampling)


def resolve(options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` (settings by path, as given) with the defaults that depend on other settings filled in where not
    given: the learning rate by method and mode (`DEFAULT_LR`, `LORA_LR`), the samples per prompt by task (several
    only where a task samples), and the sampling seed, which is the run's seed."""
    out = dict(options)
    if out.get("model.method") == "lora":
        out.setdefault("optim.lr", LORA_LR)
    else:
        out.setdefault("optim.lr", DEFAULT_LR.get(out.get("model.mode", "full-model"), DEFAULT_LR["full-model"]))
    task = TASKS.get(out.get("data.task"))
    out.setdefault("eval.samples", EVAL_SAMPLES if isinstance(task, GenerativeTask) else 1)
    out["eval.sampling.seed"] = out.get("optim.seed", DEFAULT_SEED)
    return out


def role_of(path: str) -> str:
    """The role of the setting at `path` ("optim.lr", "model.lora.rank") as its field declares it (DEFINES unless
    it says otherwise: the library's configs and a nested group's own field define the result)."""
    cls: type = RunSettings
    *heads, name = path.split(".")
    for head in heads:
        cls = _NESTED[(cls.__name__, head)]
    f = next((f for f in fields(cls) if f.name == name), None)
    if f is None:
        raise KeyError(f"no setting {path!r}")
    return f.metadata.get("role", DEFINES)


def setting_paths(cls: type = RunSettings, prefix: str = "") -> list[str]:
    """Every leaf setting's path under `cls`, in declaration order."""
    out = []
    for f in fields(cls):
        sub = _NESTED.get((cls.__name__, f.name))
        out += setting_paths(sub, f"{prefix}{f.name}.") if sub is not None else [prefix + f.name]
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def defining(settings: RunSettings) -> dict[str, Any]:
    """The settings that change a run's results (role DEFINES), flattened: what two runs must share to be the same
    run, and what a resume must not change."""
    return {k: v for k, v in flatten(settings.to_dict()).items() if _role_or_group(k) == DEFINES}


def _role_or_group(path: str) -> str:
    """`role_of`, where a group left out (no LoRA: "model.lora" is None) defines like its fields."""
    try:
        return role_of(path)
    except KeyError:
        return DEFINES


def _upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """A config.json of the version before settings were declared once, in today's layout: compile, autocast and
    progress moved from `hardware` and stop_after_epoch from `run` into `optim` (the trainer's config), and
    `precision` holds the QuantConfig (`precision.precision` is now `precision.format`); then (schema 2) the
    folders and --offline moved from `data` into the shared `paths` group."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    hardware, run, optim = d.get("hardware") or {}, d.get("run") or {}, d.get("optim")
    if isinstance(optim, dict):
        for key, source in (("compile", hardware), ("autocast", hardware), ("progress", hardware),
                            ("stop_after_epoch", run)):
            if key in source:
                optim.setdefault(key, source.pop(key))
    p = d.get("precision")
    if isinstance(p, dict) and "precision" in p:
        fmt = p.pop("precision")
        old = {"group_size": p.pop("group_size", DEFAULT_GROUP_SIZE),
               "activations": p.pop("quant_activations", False), "embeddings": p.pop("quant_embeddings", True)}
        p["format"] = fmt
        p["quant"] = PrecisionSettings.quant_for(fmt, **old).to_dict() if PrecisionSettings.fake(fmt) else None
    if isinstance(d.get("eval"), dict) and "samples" not in d["eval"]:
        d["eval"]["samples"] = 1  # recorded before --eval-samples: one per prompt
    if "paths" not in d and isinstance(d.get("data"), dict):  # before the shared groups: the folders sat in data
        d["paths"] = {k: d["data"].pop(k) for k in [f.name for f in fields(PathSettings)] if k in d["data"]}
    return d


def _build(cls: type, d: dict[str, Any], at: str = "") -> Any:
    """`cls` from its `to_dict()` form (`at`: where it sits, "hardware.", for the error that names a value)."""
    if cls is LoRAConfig:  # the library's own readers, their errors naming the group ("model.lora: ...")
        return LoRAConfig.from_dict(d, source=at.rstrip("."))
    if cls is QuantConfig:
        return QuantConfig.from_dict(d, source=at.rstrip("."))
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise KeyError(f"unknown {cls.__name__} key(s) {sorted(unknown)}")
    kwargs = {}
    for f in fields(cls):
        if f.name in d:
            sub = _NESTED.get((cls.__name__, f.name))
            _check_json_type(cls, f, d[f.name], at)
            kwargs[f.name] = (_build(sub, d[f.name], f"{at}{f.name}.") if sub is not None and d[f.name] is not None
                              else d[f.name])
    return cls(**kwargs)


# What a settings file may hold for a field of each declared type. bool is no int here (`"epochs": true` is a
# slip, not 1), and a range check of its own would not notice: `"plain": "false"` is truthy.
_JSON_TYPES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # resolves every annotation of the class: once per class, not per value


def _check_json_type(cls: type, f: Any, value: Any, at: str) -> None:
    """A FieldError naming `at` + the field unless `value` is of the field's declared type: one of `_JSON_TYPES`,
    a JSON object for a group, null where the field may be None (its type says so, or its default is None)."""
    hint = _type_hints(cls)[f.name]
    members = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kinds = [k for k in members if k is not type(None)]
    nullable = len(kinds) < len(members) or f.default is None
    if value is None:
        ok = nullable
    else:
        ok = any(isinstance(value, dict) if k not in _JSON_TYPES
                 else isinstance(value, (int, float) if k is float else k)
                 and (k is bool or not isinstance(value, bool)) for k in kinds)
    expected = " or ".join([_JSON_TYPES.get(k, "a JSON object") for k in kinds] + ["null"] * nullable)
    require(ok, f"{at}{f.name}", json.dumps(value), expected)


_NESTED: dict[tuple[str, str], type] = {
    ("RunSettings", "data"): DataSettings, ("RunSettings", "model"): ModelSettings,
    ("RunSettings", "optim"): TrainConfig, ("RunSettings", "precision"): PrecisionSettings,
    ("RunSettings", "eval"): EvalSettings, ("RunSettings", "hardware"): HardwareSettings,
    ("RunSettings", "run"): RunFolderSettings, ("RunSettings", "paths"): PathSettings,
    ("DataSettings", "synthetic"): SyntheticSettings,
    ("ModelSettings", "lora"): LoRAConfig, ("EvalSettings", "sampling"): Sampling,
    ("PrecisionSettings", "quant"): QuantConfig,
    ("EvaluateSettings", "hardware"): HardwareSettings, ("EvaluateSettings", "paths"): PathSettings,
}


@dataclass(frozen=True)
class EvaluateSettings:
    """What `python -m minigpt2.evaluate` is asked: which run, which split, and where things are now (the run's
    own folders and device where not given)."""

    run_dir: str = option(None, "a run folder written by `python -m minigpt2.finetune`", positional=True)
    split: str = option("dev", "which split to predict", choices=("dev", "test"))
    task: str | None = option(None, "score this task instead of the run's own (needs --zero-shot)")
    test_references: str | None = option(None, "test labels (*-test-labels.csv) or true test sonnets for --split "
                                               "test (default: the file beside the data, as `python -m course fetch` "
                                               "writes it)", metavar="FILE")
    zero_shot: bool = option(False, "score --task with the run's body and no task training (quora cloze, sonnet)")
    hardware: HardwareSettings = HardwareSettings()
    paths: PathSettings = PathSettings()

    def __post_init__(self) -> None:  # a settings file is read without argparse's choices
        require(self.split in ("dev", "test"), "split", self.split, "dev or test")
        require(isinstance(self.zero_shot, bool), "zero_shot", self.zero_shot, "true or false")
        require(isinstance(self.hardware, HardwareSettings), "hardware", self.hardware, "the hardware settings")
        require(isinstance(self.paths, PathSettings), "paths", self.paths, "the path settings")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvaluateSettings":
        """The settings an evaluation was handed (`to_dict`, in a sweep's <evaluation>.settings.json)."""
        try:
            return _build(cls, d)
        except (KeyError, TypeError, AttributeError, FieldError) as e:
            raise SettingsError(f"evaluate settings do not fit this version of the code ({e})") from None


@dataclass(frozen=True)
class GGUFSettings:
    """What `python -m quant.gguf` is asked: the model, the tensor type, the file to write, where the tokenizer is."""

    model: str = option(None, "preset, tiny, HF checkpoint folder/file, or finetune run folder", positional=True)
    type: str = option("f16", "tensor type of the matrices: f32, f16, q8_0 or q4_0")
    out: str = option(None, "the .gguf file to write", required=True)
    paths: PathSettings = PathSettings()


DEFAULT_MAX_NEW_TOKENS = 128
SONNET_MAX_NEW_TOKENS = 400  # the course's budget; a sonnet usually ends sooner, at its 14th line


@dataclass(frozen=True)
class GenerateSettings:
    """What `python -m minigpt2.generate` is asked: the model, the prompts, how to sample, where to run."""

    model: str = option("gpt2", "a preset (gpt2, gpt2-medium, ...), 'tiny' (random init), a checkpoint folder or "
                                "model.safetensors file, or a run folder of `python -m minigpt2.finetune`")
    prompt: str | None = option(None, "the prompt text ('' samples unconditionally)")
    prompt_file: str | None = option(None, "UTF-8 file of prompts separated by blank lines (default: the same "
                                           "format on stdin)", metavar="FILE")
    temperature: float = option(1.0, "sampling temperature; 0 = greedy")
    top_k: int | None = option(None, "sample only among the k most likely tokens")
    top_p: float | None = option(None, "nucleus sampling: the smallest set holding this mass")
    max_new_tokens: int | None = option(None, f"tokens to add per prompt (default {DEFAULT_MAX_NEW_TOKENS}, "
                                              f"{SONNET_MAX_NEW_TOKENS} with --sonnet); fewer where the model's "
                                              "context ends")
    num_samples: int = option(1, "samples per prompt")
    seed: int | None = option(None, "makes sampling reproducible (sample n of prompt m uses seed + its index)")
    sonnet: bool = option(False, "stop after 14 lines and print the perfect-sonnet verdict and its reasons")
    precision: str | None = option(None, "fp32, bf16 (prepacked bf16 on CPUs with native bf16), fp16 (16-bit "
                                         "weights read, fp32 arithmetic: half the bytes per token on any x86 CPU "
                                         "with AVX2), int8 (CPU int8 decoder); default: the run's own (bf16 for a "
                                         "bf16 run where supported, else fp32)",
                                   choices=("fp32", "bf16", "fp16", "int8"))
    hardware: HardwareSettings = HardwareSettings()
    paths: PathSettings = PathSettings()

    def __post_init__(self) -> None:
        if self.prompt is not None and self.prompt_file is not None:
            raise SettingsError("--prompt and --prompt-file: give one (or neither, to read stdin)")
        require(self.temperature >= 0, "temperature", self.temperature, "a number >= 0 (0 = greedy)")  # NaN too
        if self.top_p is not None:
            require(0 < self.top_p <= 1, "top_p", self.top_p, "a probability mass in (0, 1]")
        _positive("top_k", self.top_k)
        _positive("max_new_tokens", self.max_new_tokens)
        _positive("num_samples", self.num_samples)

    @property
    def new_tokens(self) -> int:
        """Tokens to add per prompt: --max-new-tokens, else the default for plain text or a sonnet."""
        return self.max_new_tokens or (SONNET_MAX_NEW_TOKENS if self.sonnet else DEFAULT_MAX_NEW_TOKENS)

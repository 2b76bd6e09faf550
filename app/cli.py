"""The command lines of the run commands, built from the settings dataclasses: the one place that adds flags.

A setting is declared once, as a dataclass field whose metadata holds its help and role (`app.settings.option`,
or plain `{"help": ...}` in the library's own configs). A `Group` says which dataclass a block of flags fills and
how its fields are spelled (`--` + prefix + the field name with dashes; a field whose default is True becomes a
`--no-` flag, helped by its "help_off"; a few renamed in `flags`); a command's own default in words goes in its
`notes`. Fields without help have no flag. The hardware and paths groups are the same for finetune, evaluate,
generate and `quant.gguf`.

    add_groups(parser, groups)      the flags, with their help and defaults
    given(namespace, group)         what the user typed (a flag left out is absent: the dataclass default applies)
    build(group, values)            the group's dataclass, a bad value reported as one line naming the flag
    finetune_settings(argv)         `python -m minigpt2.finetune`'s flags as a validated `RunSettings`
    settings_file(argv)             the FILE of `--settings FILE` (a run or an evaluation handed over as a file)
    resume_options(argv)            the flags of a `--resume` command line (no flag required: the run folder has them)
    resumed_settings(saved, opts)   a run folder's saved settings with the flags a resume may change
    command_settings(...)           evaluate's, generate's and quant.gguf's command lines as their settings
    settings_of(options)            settings from overrides by path ({"optim.lr": 0.01}): a sweep's runs
    options_from_argv(argv)         a part of a finetune command line (--finetune-args) as overrides by path
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from minigpt2.device import parse_device
from minigpt2.errors import FieldError
from minigpt2.generation import Sampling
from minigpt2.lora import LoRAConfig
from minigpt2.train import TrainConfig
from quant.config import QuantConfig

from .precision import PrecisionError, PrecisionSettings
from .settings import (DEFAULT_LR, DEFINES, EVAL_SAMPLES, LORA_LR, LORA_TARGETS, DataSettings, EvalSettings,
                       EvaluateSettings, GenerateSettings, GGUFSettings, HardwareSettings, ModelSettings,
                       PathSettings, RunFolderSettings, RunSettings, SettingsError, SyntheticSettings, WATCH,
                       resolve, role_of, setting_paths)


@dataclass(frozen=True)
class Group:
    """A block of flags that fills one settings dataclass."""

    key: str  # where the group sits in RunSettings ("optim", "model.lora", ...)
    cls: type
    title: str
    prefix: str = ""
    flags: Mapping[str, str] = field(default_factory=dict)  # field -> flag, where the plain spelling does not fit
    defaults: Mapping[str, Any] = field(default_factory=dict)  # this command's default, where not the class's
    notes: Mapping[str, str] = field(default_factory=dict)  # field -> the default as words (it depends on others)
    helps: Mapping[str, str] = field(default_factory=dict)  # help of fields of a class that carries none
    skip: tuple[str, ...] = ()

    def options(self) -> list[Field]:
        return [f for f in fields(self.cls) if f.name not in self.skip
                and ("help" in f.metadata or f.name in self.helps)]

    def default(self, f: Field) -> Any:
        if f.name in self.defaults:
            return self.defaults[f.name]
        return f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default

    def flag(self, name: str) -> str:
        if name in self.flags:
            return self.flags[name]
        f = next(f for f in fields(self.cls) if f.name == name)
        negated = "no-" if _type(self.cls, name) is bool and self.default(f) is True else ""
        return f"--{negated}{self.prefix}{name.replace('_', '-')}"

    def dest(self, name: str) -> str:
        return f"{self.key}:{name}"


def _type(cls: type, name: str) -> type:
    """The field's type as argparse converts it: the first non-None member of a union."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0] if args[0] in (bool, int, float, str) else str


def add_groups(parser: argparse.ArgumentParser, groups: Sequence[Group], partial: bool = False) -> None:
    """Add every group's flags to `parser`; the values land under `Group.dest` only when given. `partial`: no
    flag is required (a part of a command line, e.g. the flags a sweep adds to every run)."""
    for group in groups:
        g = parser.add_argument_group(group.title)
        for f in group.options():
            kind, default = _type(group.cls, f.name), group.default(f)
            text = group.helps.get(f.name) or f.metadata["help"]
            kw: dict[str, Any] = {"dest": group.dest(f.name), "default": argparse.SUPPRESS}
            if f.metadata.get("positional"):
                g.add_argument(group.dest(f.name), metavar=f.name, help=text, choices=f.metadata.get("choices"))
                continue
            if kind is bool:
                kw["action"] = "store_false" if default is True else "store_true"
                if default is True:  # a --no- flag says what turning the setting off does
                    text = f.metadata.get("help_off") or f"turn off: {text}"
            else:
                kw["type"] = kind
                if "choices" not in f.metadata:
                    kw["metavar"] = f.name.upper()
                for k in ("choices", "metavar", "required"):
                    if k in f.metadata and not (partial and k == "required"):
                        kw[k] = f.metadata[k]
                note = group.notes.get(f.name) or (None if default in (None, "") else f"default: {default}")
                text += f" ({note})" if note and not kw.get("required") else ""
            g.add_argument(group.flag(f.name), help=text.replace("%", "%%"), **kw)


def given(ns: argparse.Namespace, group: Group) -> dict[str, Any]:
    """The values of `group`'s flags that were given on the command line."""
    prefix = group.dest("")
    return {k[len(prefix):]: v for k, v in vars(ns).items() if k.startswith(prefix)}


def build(group: Group, values: Mapping[str, Any], groups: Sequence[Group] = ()) -> Any:
    """`group.cls` from its defaults and `values`; a value out of range is a SettingsError naming the flag."""
    kwargs = {f.name: group.defaults[f.name] for f in fields(group.cls) if f.name in group.defaults}
    return checked(lambda: group.cls(**{**kwargs, **values}), group, groups)


def checked(make: Callable[[], Any], group: Group, groups: Sequence[Group] = ()) -> Any:
    """`make()`, with a library's `FieldError` (which names a field) turned into a line naming the flag."""
    try:
        return make()
    except FieldError as e:
        raise SettingsError(f"{flag_of(e.field, group, groups)} {e.value}: expected {e.expected}") from None


def flag_of(path: str, group: Group, groups: Sequence[Group] = ()) -> str:
    """The flag of a field error's name: a field of `group`, or `sub.field` of the group keyed `group.key.sub`."""
    head, _, rest = path.rpartition(".")
    if head:
        for other in groups:
            if other.key.split(".")[-1] == head.split(".")[-1] and rest in {f.name for f in other.options()}:
                return other.flag(rest)
    return group.flag(rest) if rest in {f.name for f in group.options()} else path


# ---------------------------------------------------------------------------------------------- finetune

# The folders' defaults as each command finds them (the field's help is the same everywhere).
PATH_NOTES = {"data_dir": "default: $MINIGPT2_DATA_DIR, else data/",
              "tokenizer_dir": "default: $MINIGPT2_TOKENIZER_DIR, else tiktoken's download"}
RUN_PATH_NOTES = {"data_dir": "default: the run's, else $MINIGPT2_DATA_DIR, else data/",
                  "tokenizer_dir": "default: the run's, else $MINIGPT2_TOKENIZER_DIR, else tiktoken's download"}

FINETUNE_GROUPS = (
    Group("data", DataSettings, "task and data"),
    Group("data.synthetic", SyntheticSettings, "synthetic data (sonnet task)", prefix="synthetic-",
          flags={"path": "--synthetic"}),
    Group("model", ModelSettings, "model"),
    Group("model.lora", LoRAConfig, "LoRA (with --method lora)", prefix="lora-",
          defaults={"targets": LORA_TARGETS}),
    Group("optim", TrainConfig, "optimisation and hardware",
          notes={"lr": f"default: {DEFAULT_LR['last-linear-layer']:g} for last-linear-layer, "
                       f"{DEFAULT_LR['full-model']:g} for full-model, {LORA_LR:g} for --method lora, the best LoRA "
                       "learning rate in the study"}),
    Group("hardware", HardwareSettings, "hardware"),
    Group("paths", PathSettings, "where the inputs are", notes=PATH_NOTES),
    Group("eval", EvalSettings, "evaluation and generation", prefix="eval-",
          notes={"samples": f"default {EVAL_SAMPLES} for sonnets, 1 (deterministic predictions) for the other "
                            "tasks"}),
    Group("eval.sampling", Sampling, "sonnet sampling", skip=("seed",), helps={
        "temperature": "sonnet sampling temperature (the course's)",
        "top_p": "sonnet nucleus sampling mass (the course's)",
        "max_new_tokens": "sonnet token budget; generation stops at <|endoftext|> or after the 14th line first"}),
    Group("run", RunFolderSettings, "run folder"),
    Group("precision", PrecisionSettings, "precision (quantization)", flags={"format": "--precision"}),
    Group("precision.quant", QuantConfig, "fake-quant formats (with --precision fp8, int8 or int4)",
          prefix="quant-", flags={"group_size": "--group-size"},
          notes={"group_size": "default 128; only with --precision int4"}),
)
GROUP = {g.key: g for g in FINETUNE_GROUPS}


def finetune_parser(prog: str = "python -m minigpt2.finetune", description: str | None = None,
                    partial: bool = False) -> argparse.ArgumentParser:
    """The parser of `python -m minigpt2.finetune`; `partial`: no flag is required (a resume's command line)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--settings", metavar="FILE.json", default=argparse.SUPPRESS,
                   help="run with the settings in FILE (a run folder's settings.json, as a sweep writes it, or its "
                        "config.json); no other flag goes with it")
    add_groups(p, FINETUNE_GROUPS, partial=partial)
    return p


def settings_file(argv: Sequence[str], what: str = "run") -> str | None:
    """The FILE of a `--settings FILE` command line, or None when it has no --settings; with any other flag
    beside it, one line saying so (`what`: whose settings the file holds, "run" or "evaluation")."""
    at = [i for i, a in enumerate(argv) if a == "--settings" or a.startswith("--settings=")]
    if not at:
        return None
    i = at[0]
    path = argv[i].partition("=")[2] if "=" in argv[i] else (argv[i + 1] if i + 1 < len(argv) else "")
    rest = [a for j, a in enumerate(argv) if j != i and not (j == i + 1 and "=" not in argv[i])]
    if not path:
        raise SettingsError("--settings: expected a FILE.json")
    if rest:
        raise SettingsError(f"--settings {path} holds the whole {what}'s settings; {' '.join(rest)} cannot go with "
                            "it (edit the file, or give the flags without --settings)")
    return path


def finetune_settings(argv: Sequence[str] | None = None) -> RunSettings:
    """The command line as validated, typed settings (a bad flag is a SettingsError naming it)."""
    return settings_from(finetune_parser().parse_args(None if argv is None else list(argv)))


def settings_from(ns: argparse.Namespace, here: bool = True) -> RunSettings:
    """`RunSettings` from parsed flags, with the defaults that depend on other options filled in
    (`settings.resolve`); `here`: also check that the device and files they name exist on this machine
    (`check_environment`)."""
    given_paths = {f"{g.key}.{k}": v for g in FINETUNE_GROUPS for k, v in given(ns, g).items()}
    v: dict[str, dict[str, Any]] = {g.key: {} for g in FINETUNE_GROUPS}
    lora_given = [k for k in given_paths if k.startswith("model.lora.")]
    for path, value in resolve(given_paths).items():
        key, _, name = path.rpartition(".")
        v[key][name] = value
    data = build(GROUP["data"], {**v["data"], "synthetic": _synthetic(v["data.synthetic"])}, FINETUNE_GROUPS)
    lora = None
    if v["model"].get("method") == "lora":
        lora = build(GROUP["model.lora"], v["model.lora"], FINETUNE_GROUPS)
    elif lora_given:
        flags = ", ".join(GROUP["model.lora"].flag(k.rpartition(".")[2]) for k in lora_given)
        raise SettingsError(f"{flags} set(s) LoRA, which needs --method lora")
    settings = RunSettings(
        data=data, model=build(GROUP["model"], {**v["model"], "lora": lora}, FINETUNE_GROUPS),
        optim=build(GROUP["optim"], v["optim"], FINETUNE_GROUPS),
        precision=_precision(v["precision"], v["precision.quant"]),
        eval=build(GROUP["eval"], {**v["eval"], "sampling": build(GROUP["eval.sampling"], v["eval.sampling"])},
                   FINETUNE_GROUPS),
        hardware=build(GROUP["hardware"], v["hardware"]), paths=build(GROUP["paths"], v["paths"]),
        run=build(GROUP["run"], v["run"]))
    if here:
        check_environment(settings)
    return settings


def _synthetic(values: dict[str, Any]) -> SyntheticSettings | None:
    if "path" not in values:
        for name in ("n", "filter"):
            if name in values:
                raise SettingsError(f"{GROUP['data.synthetic'].flag(name)} needs --synthetic FILE.jsonl")
        if values.get("only"):
            raise SettingsError("--synthetic-only trains on synthetic sonnets alone; it needs --synthetic "
                                "FILE.jsonl")
        return None
    return build(GROUP["data.synthetic"], values)


def _precision(values: dict[str, Any], quant: dict[str, Any]) -> PrecisionSettings:
    fmt = values.get("format", "fp32")
    qgroup = GROUP["precision.quant"]
    if ({"activations", "embeddings"} & set(quant)) and not PrecisionSettings.fake(fmt):
        raise PrecisionError("--quant-activations / --no-quant-embeddings apply to --precision fp8, int8 or int4")
    if "group_size" in quant and fmt != "int4":
        raise PrecisionError(f"--group-size applies to --precision int4, not {fmt}")
    cfg = (checked(lambda: PrecisionSettings.quant_for(fmt, **quant), qgroup)
           if PrecisionSettings.fake(fmt) else None)
    return build(GROUP["precision"], {**values, "quant": cfg})


def check_environment(settings: RunSettings) -> None:
    """What the flags name must exist here: the device, the test references file."""
    refs = settings.data.test_references
    if refs is not None and not Path(refs).is_file():
        raise SettingsError(f"--test-references {refs}: file not found; expected the test labels "
                            "(*-test-labels.csv) or the true test sonnets (TRUE_sonnets_held_out.txt)")
    checked(lambda: parse_device(settings.hardware.device), GROUP["hardware"])


# ---------------------------------------------------------------------------------------------- resume

def resume_options(argv: Sequence[str], description: str | None = None) -> dict[str, Any] | None:
    """The flags of a `--resume` command line by path ({"run.out_dir": "RUN", "hardware.threads": 2}), or None when
    the command line does not ask to resume. No flag is required: the run folder holds the settings, so
    `--resume --out-dir RUN` alone is a whole command."""
    quiet = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    add_groups(quiet, FINETUNE_GROUPS, partial=True)
    try:
        ns, _ = quiet.parse_known_args(list(argv))
    except argparse.ArgumentError:
        return None  # a malformed flag: the full parser reports it as it would without --resume
    if not getattr(ns, GROUP["run"].dest("resume"), False):
        return None
    ns = finetune_parser(description=description, partial=True).parse_args(list(argv))
    return {k.replace(":", "."): v for k, v in vars(ns).items()}


def resumed_settings(saved: RunSettings, options: Mapping[str, Any]) -> RunSettings:
    """The settings `saved` in a run folder, continued with the flags of `resume_options`: a flag for a setting that
    does not define the result (its role: the device, threads, progress, where the files are) replaces the saved
    value; any other flag must repeat it, else one line names each that does not. Where this invocation stops
    (`--stop-after-epoch`) is not inherited: without the flag the run goes on to its last epoch."""
    differ = [f"{_flag_of_path(path)}{_shown(value)} (the run's: {_at(saved, path)!r})"
              for path, value in options.items() if role_of(path) == DEFINES and value != _at(saved, path)]
    if differ:
        may = ", ".join(dict.fromkeys(_flag_of_path(p) for p in may_change_on_resume()
                                      if p not in ("run.resume", "run.overwrite")))
        raise SettingsError(f"--resume continues the run in --out-dir with the settings saved in its config.json; "
                            f"{', '.join(differ)} would change what it computes. Only {may} may change on resume; "
                            "start a new run (another --out-dir) for other settings")
    changes = {"optim.stop_after_epoch": None, "run.overwrite": False,
               **{p: v for p, v in options.items() if role_of(p) != DEFINES}, "run.resume": True}
    groups: dict[str, dict[str, Any]] = {}
    for path, value in changes.items():
        key, _, name = path.partition(".")
        groups.setdefault(key, {})[name] = value
    parts = {key: checked(lambda: replace(getattr(saved, key), **values), GROUP[key], FINETUNE_GROUPS)
             for key, values in groups.items()}
    settings = replace(saved, **parts)
    check_environment(settings)
    return settings


def may_change_on_resume() -> list[str]:
    """The paths of the settings with a flag that a resume may change: those whose role is not DEFINES."""
    flagged = {f"{g.key}.{f.name}" for g in FINETUNE_GROUPS for f in g.options()}
    return [p for p in setting_paths() if p in flagged and role_of(p) != DEFINES]


def _at(settings: RunSettings, path: str) -> Any:
    """The value at a settings path ("model.lora.rank"); None under a group that is absent (no LoRA)."""
    obj: Any = settings
    for part in path.split("."):
        obj = getattr(obj, part) if obj is not None else None
    return obj


def _flag_of_path(path: str) -> str:
    key, _, name = path.rpartition(".")
    return GROUP[key].flag(name)


def _shown(value: Any) -> str:
    return "" if isinstance(value, bool) else f" {value}"  # a switch is its flag alone


# ---------------------------------------------------------------------------------------------- by flag name

def flat(settings: RunSettings) -> dict[str, Any]:
    """The settings by flag name (`--no-quant-embeddings` as `quant_embeddings`) without how the invocation was
    watched (role WATCH), and the autocast mode the run used: a sweep's CSV columns (`arg_<name>`), the same for a
    run and its resume."""
    out: dict[str, Any] = {}
    for g in FINETUNE_GROUPS:
        obj: Any = settings
        for part in g.key.split("."):
            obj = getattr(obj, part) if obj is not None else None
        for f in g.options():
            if role_of(f"{g.key}.{f.name}") != WATCH:
                flag = g.flag(f.name)[2:]
                out[flag.removeprefix("no-").replace("-", "_")] = getattr(obj, f.name) if obj is not None \
                    else g.default(f)
    out["autocast"] = settings.autocast  # what the run used
    return out


# ---------------------------------------------------------------------------------------------- evaluate

# evaluate and generate reuse finetune's hardware and paths groups (the same fields, help and flags).
EVALUATE_GROUPS = (Group("evaluate", EvaluateSettings, "what to score"),
                   Group("hardware", HardwareSettings, "hardware", skip=("fetch_timeout",)),
                   Group("paths", PathSettings, "where the inputs are", notes=RUN_PATH_NOTES))
GENERATE_GROUPS = (Group("generate", GenerateSettings, "generation"),
                   Group("hardware", HardwareSettings, "hardware", skip=("fetch_timeout",)),
                   Group("paths", PathSettings, "where the inputs are", skip=("data_dir",), notes={
                       "tokenizer_dir": "default: the run's, else $MINIGPT2_TOKENIZER_DIR, else tiktoken's download"}))
GGUF_GROUPS = (Group("gguf", GGUFSettings, "what to write"),
               Group("paths", PathSettings, "where the inputs are", skip=("data_dir",), notes=GENERATE_GROUPS[2].notes))
EVALUATE_GROUP, GENERATE_GROUP = EVALUATE_GROUPS[0], GENERATE_GROUPS[0]


def command_parser(prog: str, groups: Sequence[Group], description: str | None = None,
                   settings_help: str | None = None) -> argparse.ArgumentParser:
    """The parser of a command whose flags are `groups` (and `--settings FILE`, helped by `settings_help`, when
    the command takes its settings as a file: read before this parser, see `settings_file`)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    if settings_help:
        p.add_argument("--settings", metavar="FILE.json", default=argparse.SUPPRESS, help=settings_help)
    add_groups(p, groups)
    return p


def command_settings(prog: str, groups: Sequence[Group], argv: Sequence[str] | None,
                     description: str | None = None, settings_help: str | None = None) -> Any:
    """A command's settings from its command line: the first group's dataclass, holding the others (keyed by
    field name) built from their own flags; a device this machine lacks is refused."""
    ns = command_parser(prog, groups, description, settings_help).parse_args(None if argv is None else list(argv))
    root, *parts = groups
    settings = build(root, {**given(ns, root), **{g.key: build(g, given(ns, g)) for g in parts}}, groups)
    if hasattr(settings, "hardware"):
        checked(lambda: parse_device(settings.hardware.device), parts[0])
    return settings


EVALUATE_SETTINGS_HELP = ("evaluate with the settings in FILE (an evaluation's settings, as a sweep writes them "
                          "into the run folder: RUN_DIR/<evaluation>.settings.json); no other flag goes with it")


def evaluate_settings(argv: Sequence[str] | None = None, description: str | None = None) -> EvaluateSettings:
    """`python -m minigpt2.evaluate`'s flags as settings (its `--settings FILE` is read by `app.evaluate`)."""
    return command_settings("python -m minigpt2.evaluate", EVALUATE_GROUPS, argv, description,
                            EVALUATE_SETTINGS_HELP)


def generate_settings(argv: Sequence[str] | None = None, description: str | None = None) -> GenerateSettings:
    """`python -m minigpt2.generate`'s command line as settings."""
    return command_settings("python -m minigpt2.generate", GENERATE_GROUPS, argv, description)


def gguf_settings(argv: Sequence[str] | None = None, description: str | None = None) -> GGUFSettings:
    """`python -m quant.gguf`'s command line as settings."""
    return command_settings("python -m quant.gguf", GGUF_GROUPS, argv, description)


# ---------------------------------------------------------------------------------------------- options

def _option_fields() -> dict[str, tuple[Group, Field]]:
    return {f"{g.key}.{f.name}": (g, f) for g in FINETUNE_GROUPS for f in g.options()}


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Settings overrides by path ("optim.lr": 0.01, "model.lora.rank": 4, ...) whose paths are finetune
    settings; the values are checked when the settings are built (`settings_of`)."""
    known = _option_fields()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SettingsError(f"unknown setting(s) {unknown}; expected some of {sorted(known)}")
    return dict(options)


def options_from_argv(argv: Sequence[str]) -> dict[str, Any]:
    """A (part of a) finetune command line as settings overrides by path, e.g. ["--device", "cuda:1"] ->
    {"hardware.device": "cuda:1"}; a flag finetune does not know is argparse's error."""
    p = argparse.ArgumentParser(prog="python -m minigpt2.finetune")
    add_groups(p, FINETUNE_GROUPS, partial=True)
    return {k.replace(":", "."): v for k, v in vars(p.parse_args(list(argv))).items()}


def settings_of(options: Mapping[str, Any], here: bool = False) -> RunSettings:
    """The `RunSettings` that `options` (overrides by path, the rest default) give, checked as the command line's
    would be; `here`: also check that the device and files exist on this machine."""
    known = _option_fields()
    # as a flag's value would be: 16 for a float setting is 16.0 (a recorded config reads the same either way)
    ns = argparse.Namespace(**{_dest(k): float(v) if type(v) is int and _type(known[k][0].cls, known[k][1].name)
                               is float else v for k, v in check_options(options).items()})
    if "data.task" not in options:
        raise SettingsError("the settings name no task (data.task, the --task flag)")
    return settings_from(ns, here)


def _dest(path: str) -> str:
    key, _, name = path.rpartition(".")
    return GROUP[key].dest(name)


def argv_of(options: Mapping[str, Any]) -> list[str]:
    """The finetune flags that give `options` (overrides by path), in their order."""
    argv: list[str] = []
    known = _option_fields()
    for path, value in check_options(options).items():
        group, f = known[path]
        if isinstance(value, bool) and _type(group.cls, f.name) is bool:
            if value != group.default(f):  # a store_true / --no- flag says the value that is not the default
                argv.append(group.flag(f.name))
        elif value is not None:
            argv += [group.flag(f.name), str(value)]
    return argv

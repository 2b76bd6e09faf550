"""A run's settings: one frozen dataclass built and validated once from the command line.

    RunSettings
      data       task, data folder, limits, max length, synthetic sonnets
      model      base model, mode, method (+ LoRA)
      optim      epochs, batch size, accumulation, lr, schedule, seed, ...
      precision  fp32 / bf16 / fp8 / int8 / int4, QAFT or PTQ
      eval       evaluation batch size and sonnet sampling
      hardware   device, autocast, compile, progress bars, CPU threads, the torchrun fetch timeout
      run        run folder, name, resume, overwrite

`from_args` checks every range before any work starts (a bad flag is a `SettingsError`: one line naming the flag);
the run folder stores `to_dict()` as JSON and `evaluate`/`--resume` read it back with `from_dict`. Tasks, quant and
the sampler receive the typed pieces they need (`predict_settings()`, `train_config()`, `precision`), never this
whole object or an argparse Namespace.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from minigpt2.errors import UserError
from minigpt2.train import DEFAULT_SEED, TrainConfig
from tasks import TASKS
from tasks.base import PredictSettings, Sampling

from .precision import PrecisionSettings, precision_from_args

# The course's learning rates: a frozen body lets the classifier learn fast; the full model needs a small LR.
DEFAULT_LR = {"last-linear-layer": 1e-3, "full-model": 1e-5}
LORA_LR = 1e-2  # the study's best learning rate for LoRA adapters (alpha 16)
LORA_RANK, LORA_ALPHA, LORA_TARGETS, LORA_DROPOUT = 8, 16.0, "attn+mlp", 0.0
SYNTHETIC_FILTERS = ("all", "perfect")
MAX_SEED = 2**63


class SettingsError(UserError, ValueError):
    """Flags that cannot work together or lie outside their range, naming the flag and what was expected."""


@dataclass(frozen=True)
class SyntheticSettings:
    path: str
    n: int | None = None  # the first n kept sonnets (None: all)
    filter: str = "all"
    only: bool = False  # train on the synthetic sonnets alone (no real training sonnet; dev and test stay real)


@dataclass(frozen=True)
class DataSettings:
    task: str
    data_dir: str | None = None
    tokenizer_dir: str | None = None
    offline: bool = False
    max_train: int | None = None  # a seeded random subset of N rows (stratified by label where there is one)
    max_eval: int | None = None
    max_length: int | None = None
    synthetic: SyntheticSettings | None = None
    test_references: str | None = None  # test labels / true test sonnets (None: the file beside the data)


@dataclass(frozen=True)
class LoraSettings:
    rank: int = LORA_RANK
    alpha: float = LORA_ALPHA
    targets: str = LORA_TARGETS
    dropout: float = LORA_DROPOUT


@dataclass(frozen=True)
class ModelSettings:
    model: str = "gpt2"
    mode: str = "full-model"
    method: str = "full"
    lora: LoraSettings | None = None  # set exactly when method == "lora"


@dataclass(frozen=True)
class OptimSettings:
    epochs: int = 10
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = DEFAULT_LR["full-model"]
    weight_decay: float = 0.01
    warmup: float = 0.05
    schedule: str = "linear"
    grad_clip: float = 1.0
    seed: int = DEFAULT_SEED


MAX_EVAL_SAMPLES = 100
EVAL_SAMPLES = 4  # sonnets drawn per prompt for the final scores (docs/study.md: the measured spread)


@dataclass(frozen=True)
class EvalSettings:
    batch_size: int = 32
    sampling: Sampling = Sampling()
    samples: int = EVAL_SAMPLES  # generative tasks: continuations per prompt in the final dev/test scores


@dataclass(frozen=True)
class HardwareSettings:
    device: str = "auto"
    autocast: str = "auto"
    compile: bool = False
    progress: bool = True
    threads: int | None = None  # CPU threads of this process (torch.set_num_threads); None: torch's default
    fetch_timeout: float = 3600.0  # multi-process runs: seconds the other ranks wait for the one fetching
    plain: bool = False  # the library's plain modules only, none of minigpt2.fast (`--plain`)


@dataclass(frozen=True)
class RunFolderSettings:
    out_dir: str | None = None
    name: str | None = None
    resume: bool = False
    overwrite: bool = False
    stop_after_epoch: int | None = None


@dataclass(frozen=True)
class RunSettings:
    """Everything one `finetune` run was asked to do."""

    data: DataSettings
    model: ModelSettings = ModelSettings()
    optim: OptimSettings = OptimSettings()
    precision: PrecisionSettings = PrecisionSettings()
    eval: EvalSettings = EvalSettings()
    hardware: HardwareSettings = HardwareSettings()
    run: RunFolderSettings = RunFolderSettings()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSettings":
        """The settings a run folder recorded (`to_dict`)."""
        if isinstance(d.get("eval"), dict) and "samples" not in d["eval"]:
            d = {**d, "eval": {**d["eval"], "samples": 1}}  # recorded before --eval-samples: one per prompt
        try:
            return _build(cls, d)
        except (KeyError, TypeError) as e:
            raise SettingsError(f"run settings do not fit this version of the code ({e})") from None

    def train_config(self) -> TrainConfig:
        o, h = self.optim, self.hardware
        return TrainConfig(epochs=o.epochs, batch_size=o.batch_size, lr=o.lr, weight_decay=o.weight_decay,
                           warmup=o.warmup, schedule=o.schedule, grad_clip=o.grad_clip, grad_accum=o.grad_accum,
                           seed=o.seed, compile=h.compile, autocast=self.autocast,
                           stop_after_epoch=self.run.stop_after_epoch, progress=h.progress)

    @property
    def autocast(self) -> str:
        """The `--autocast` mode the run uses: `auto` turns autocast off for non-fp32 precisions, so that what is
        simulated is what runs; an explicit `bf16` is kept (the fake-quantised matmuls then run in bf16, as on a
        GPU)."""
        if self.precision.precision != "fp32" and self.hardware.autocast == "auto":
            return "off"
        return self.hardware.autocast

    def predict_settings(self) -> PredictSettings:
        return PredictSettings(batch_size=self.eval.batch_size, autocast=self.autocast,
                               sampling=self.eval.sampling)

    def flat(self) -> dict[str, Any]:
        """The settings as the command line's flag names (config.json's "args", read by `experiments`)."""
        d, m, lo, s = self.data, self.model, self.model.lora or LoraSettings(), self.eval.sampling
        return {"task": d.task, "data_dir": d.data_dir, "tokenizer_dir": d.tokenizer_dir, "offline": d.offline,
                "max_train": d.max_train, "max_eval": d.max_eval, "max_length": d.max_length,
                "synthetic": d.synthetic.path if d.synthetic else None,
                "synthetic_n": d.synthetic.n if d.synthetic else None,
                "synthetic_filter": d.synthetic.filter if d.synthetic else "all",
                "synthetic_only": d.synthetic.only if d.synthetic else False, "test_references": d.test_references,
                "model": m.model, "mode": m.mode, "method": m.method, "lora_rank": lo.rank, "lora_alpha": lo.alpha,
                "lora_targets": lo.targets, "lora_dropout": lo.dropout, **asdict(self.optim),
                "device": self.hardware.device, "autocast": self.autocast, "compile": self.hardware.compile,
                "threads": self.hardware.threads,
                "eval_batch_size": self.eval.batch_size, "temperature": s.temperature, "top_p": s.top_p,
                "max_new_tokens": s.max_new_tokens, "eval_samples": self.eval.samples,
                **{k: v for k, v in asdict(self.precision).items()},
                "out_dir": self.run.out_dir, "name": self.run.name}


# Settings that may differ when a run is resumed: where things are and how the run is watched, not what it computes.
RESUME_MAY_CHANGE = ("data.data_dir", "data.tokenizer_dir", "data.offline", "data.test_references", "hardware.device", "hardware.compile",
                     "hardware.progress", "hardware.threads", "hardware.fetch_timeout", "run.out_dir", "run.name", "run.resume", "run.overwrite",
                     "run.stop_after_epoch")


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
    """The settings that change a run's results (everything except `RESUME_MAY_CHANGE`), flattened."""
    return {k: v for k, v in flatten(settings.to_dict()).items()
            if k not in RESUME_MAY_CHANGE and not k.startswith("run.")}


def _build(cls: type, d: dict[str, Any]) -> Any:
    kwargs = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        value = d[f.name]
        sub = _NESTED.get((cls.__name__, f.name))
        kwargs[f.name] = _build(sub, value) if sub is not None and value is not None else value
    return cls(**kwargs)


_NESTED: dict[tuple[str, str], type] = {
    ("RunSettings", "data"): DataSettings, ("RunSettings", "model"): ModelSettings,
    ("RunSettings", "optim"): OptimSettings, ("RunSettings", "precision"): PrecisionSettings,
    ("RunSettings", "eval"): EvalSettings, ("RunSettings", "hardware"): HardwareSettings,
    ("RunSettings", "run"): RunFolderSettings, ("DataSettings", "synthetic"): SyntheticSettings,
    ("ModelSettings", "lora"): LoraSettings, ("EvalSettings", "sampling"): Sampling,
}


# ---------------------------------------------------------------------------------------------- from the flags

def _require(ok: bool, flag: str, value: Any, expected: str) -> None:
    if not ok:
        raise SettingsError(f"{flag} {value}: expected {expected}")


def _positive(flag: str, value: int | None) -> None:
    if value is not None:
        _require(value >= 1, flag, value, "an integer >= 1")


def _non_negative(flag: str, value: int | None) -> None:
    if value is not None:
        _require(value >= 0, flag, value, "an integer >= 0")


def check_device(device: str) -> None:
    """`--device cuda` on a machine without CUDA is refused before anything is loaded."""
    if device == "auto" or device == "cpu":
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SettingsError(f"--device {device}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingsError(f"--device {device}: this machine has no CUDA device (use --device cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SettingsError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise SettingsError(f"--device {device}: expected auto, cpu, cuda or cuda:N")


def from_args(a: argparse.Namespace) -> RunSettings:
    """Build and validate the settings of `python -m app.finetune` from its parsed flags."""
    if a.task not in TASKS:
        raise SettingsError(f"--task {a.task}: expected one of {sorted(TASKS)}")
    task = TASKS[a.task]
    for flag, value in (("--max-train", a.max_train), ("--max-eval", a.max_eval), ("--synthetic-n", a.synthetic_n)):
        _non_negative(flag, value)
    _non_negative("--epochs", a.epochs)  # 0: no training, the base model is scored and saved as the run's best
    for flag, value in (("--max-length", a.max_length), ("--batch-size", a.batch_size),
                        ("--grad-accum", a.grad_accum), ("--eval-batch-size", a.eval_batch_size),
                        ("--max-new-tokens", a.max_new_tokens)):
        _positive(flag, value)
    if a.max_eval == 0:
        raise SettingsError("--max-eval 0: the dev set would be empty and no epoch could be scored; expected >= 1")
    if a.max_train == 0:
        raise SettingsError("--max-train 0: the training set would be empty; expected >= 1")
    if a.lr is not None:
        _require(math.isfinite(a.lr) and a.lr > 0, "--lr", a.lr, "a finite number > 0")
    _require(math.isfinite(a.weight_decay) and a.weight_decay >= 0, "--weight-decay", a.weight_decay,
             "a finite number >= 0")
    _require(0 <= a.warmup < 1, "--warmup", a.warmup, "a fraction in [0, 1)")
    _require(math.isfinite(a.grad_clip) and a.grad_clip >= 0, "--grad-clip", a.grad_clip, "a finite number >= 0 "
             "(0: off)")
    _require(math.isfinite(a.temperature) and a.temperature >= 0, "--temperature", a.temperature,
             "a finite number >= 0 (0: greedy)")
    _require(0 < a.top_p <= 1, "--top-p", a.top_p, "a mass in (0, 1]")
    if a.eval_samples is not None:
        _require(1 <= a.eval_samples <= MAX_EVAL_SAMPLES, "--eval-samples", a.eval_samples,
                 f"an integer in [1, {MAX_EVAL_SAMPLES}]")
        if a.eval_samples > 1 and not task.generative:
            raise SettingsError(f"--eval-samples {a.eval_samples}: task {a.task!r} predicts deterministically; only "
                                "a generative task (sonnet) draws several samples per prompt")
    eval_samples = a.eval_samples if a.eval_samples is not None else (EVAL_SAMPLES if task.generative else 1)
    if a.stop_after_epoch is not None:
        _positive("--stop-after-epoch", a.stop_after_epoch)
    # torch takes 64-bit seeds, and epochs, ranks and batch offsets are added to this one.
    _require(0 <= a.seed < MAX_SEED, "--seed", a.seed, "an integer in [0, 2**63)")
    if a.name is not None:  # the name becomes part of a folder name: a path in it would leave checkpoints/runs
        _require(a.name.strip() != "" and not any(c in a.name for c in "/\\\0") and a.name not in (".", ".."),
                 "--name", repr(a.name), "a plain name, without '/' or '\\' (the run folder is "
                 "checkpoints/runs/<task>-<name>)")

    lora_flags = {"--lora-rank": a.lora_rank, "--lora-alpha": a.lora_alpha, "--lora-targets": a.lora_targets,
                  "--lora-dropout": a.lora_dropout}
    lora = None
    if a.method == "lora":
        if a.mode == "last-linear-layer":
            raise SettingsError("--method lora trains adapters inside GPT-2; it needs --mode full-model, not "
                                "last-linear-layer (which freezes GPT-2 and trains only the head)")
        lora = LoraSettings(rank=LORA_RANK if a.lora_rank is None else a.lora_rank,
                            alpha=LORA_ALPHA if a.lora_alpha is None else a.lora_alpha,
                            targets=a.lora_targets or LORA_TARGETS,
                            dropout=LORA_DROPOUT if a.lora_dropout is None else a.lora_dropout)
        _positive("--lora-rank", lora.rank)
        _require(math.isfinite(lora.alpha) and lora.alpha > 0, "--lora-alpha", lora.alpha, "a finite number > 0")
        _require(0 <= lora.dropout < 1, "--lora-dropout", lora.dropout, "a fraction in [0, 1)")
    else:
        given = [f for f, v in lora_flags.items() if v is not None]
        if given:
            raise SettingsError(f"{', '.join(given)} set(s) LoRA, which needs --method lora")
    if a.mode == "last-linear-layer" and not task.has_head:
        raise SettingsError(f"--mode last-linear-layer trains only a classifier head; task {a.task!r} has none")
    lr = a.lr if a.lr is not None else (LORA_LR if a.method == "lora" else DEFAULT_LR[a.mode])

    synthetic = None
    if a.synthetic_n is not None and not a.synthetic:
        raise SettingsError("--synthetic-n needs --synthetic FILE.jsonl")
    if a.synthetic_filter is not None and not a.synthetic:
        raise SettingsError("--synthetic-filter needs --synthetic FILE.jsonl")
    if a.synthetic_only and not a.synthetic:
        raise SettingsError("--synthetic-only trains on synthetic sonnets alone; it needs --synthetic FILE.jsonl")
    if a.synthetic:
        if not task.takes_extra_texts:
            raise SettingsError(f"--synthetic adds synthetic sonnets; task {a.task!r} is not the sonnet task")
        synthetic = SyntheticSettings(path=a.synthetic, n=a.synthetic_n, filter=a.synthetic_filter or "all",
                                      only=a.synthetic_only)
    if a.resume and not a.out_dir:
        raise SettingsError("--resume needs --out-dir: the run folder to continue")
    if a.resume and a.overwrite:
        raise SettingsError("--resume continues the run in --out-dir; --overwrite would discard it: choose one")
    if a.test_references is not None and not Path(a.test_references).is_file():
        raise SettingsError(f"--test-references {a.test_references}: file not found; expected the test labels "
                            "(*-test-labels.csv) or the true test sonnets (TRUE_sonnets_held_out.txt)")
    check_device(a.device)
    _positive("--threads", a.threads)
    _require(math.isfinite(a.fetch_timeout) and a.fetch_timeout > 0, "--fetch-timeout", a.fetch_timeout,
             "a number of seconds > 0")

    precision = precision_from_args(a)
    if precision.precision == "fp64" and a.autocast == "bf16":
        raise SettingsError("--autocast bf16 would run the fp64 model's matmuls in bf16; use --autocast off")
    settings = RunSettings(
        data=DataSettings(task=a.task, data_dir=a.data_dir, tokenizer_dir=a.tokenizer_dir, offline=a.offline,
                          max_train=a.max_train, max_eval=a.max_eval, max_length=a.max_length, synthetic=synthetic,
                          test_references=a.test_references),
        model=ModelSettings(model=a.model, mode=a.mode, method=a.method, lora=lora),
        optim=OptimSettings(epochs=a.epochs, batch_size=a.batch_size, grad_accum=a.grad_accum, lr=lr,
                            weight_decay=a.weight_decay, warmup=a.warmup, schedule=a.schedule,
                            grad_clip=a.grad_clip, seed=a.seed),
        precision=precision,
        eval=EvalSettings(batch_size=a.eval_batch_size,
                          sampling=Sampling(temperature=a.temperature, top_p=a.top_p,
                                            max_new_tokens=a.max_new_tokens, seed=a.seed),
                          samples=eval_samples),
        hardware=HardwareSettings(device=a.device, autocast=a.autocast, compile=a.compile,
                                  progress=not a.no_progress, threads=a.threads, fetch_timeout=a.fetch_timeout,
                                  plain=a.plain),
        run=RunFolderSettings(out_dir=a.out_dir, name=a.name, resume=a.resume, overwrite=a.overwrite,
                              stop_after_epoch=a.stop_after_epoch))
    return settings

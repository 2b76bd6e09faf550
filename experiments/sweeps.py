"""The study's sweeps, each one declaration: a builder reads `SweepOptions` (model, data, seeds, `--tiny`) and
returns a `Sweep`: its runs (finetune settings, checked when the sweep is built), its knobs (the settings that vary:
the CSV's first columns), its table columns, the reference arms of its paired differences and its plot. The report
is generic over them; nothing here runs anything. The sweeps and what `--tiny` trims: docs/study.md ("Sweeps").
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from app import cli
from app.settings import LORA_LR, LORA_TARGETS, EvaluateSettings, RunSettings  # the study's best LoRA settings
from distill.generate import TEACHERS
from distill.summary import STUDY_PERFECT_RATES, requests_needed
from minigpt2.errors import UserError
from minigpt2.lora import LoRAConfig
from minigpt2.train import DEFAULT_SEED
from quant.config import PRECISIONS

from .metrics import Row, format_score, group_seeds, teacher_summary

LORA_ALPHA = LoRAConfig().alpha
# The study's dev and test figures (the baseline table and the HTML report show them beside this reproduction's).
STUDY = {"sst": 0.513, "cfimdb": 0.971, "quora": 0.911, "sonnet": 41.97}
STUDY_TEST = {"sst": 0.546, "quora": 0.891, "sonnet": 41.078}
Options = dict[str, Any]  # settings overrides by path: {"data.task": "sst", "optim.lr": 0.01}


class SweepError(UserError, ValueError):
    """Sweep options that cannot work (a seed count below one, an unknown sweep)."""


REPO = Path(__file__).resolve().parent.parent
TINY_DATA = Path(__file__).resolve().parent / "tiny_data"  # package data (see its README.md)
TINY_DATA_DIR = TINY_DATA / "tasks"
TINY_TOKENIZER_DIR = TINY_DATA / "gpt2"
TINY_SYNTHETIC_DIR = TINY_DATA / "synthetic"

SEED = DEFAULT_SEED  # the course's seed; --seeds N uses SEED, SEED+1, ...
MAX_SEEDS = 100  # runs per setting: beyond this a typo (--seeds 100000) would queue years of runs
LORA_RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SYNTHETIC_SIZES = (0, 250, 500, 1000)
MIX_RATIOS = (0.5, 1.0, 2.0)  # synthetic sonnets per real training sonnet
LORA_ALPHAS = (4, 8, 16, 32, 64)
LORA_LRS = (1e-3, 3e-3, 1e-2, 3e-2)
LORA_SEARCH_RANK = 16  # the alpha x lr grid is searched at one mid-sized rank

# What --tiny sets for every run: a tiny random model on a few fixture examples, quickly.
TINY: Options = {"model.model": "tiny", "paths.offline": True, "optim.epochs": 1, "data.max_train": 4,
                 "data.max_eval": 2, "eval.sampling.max_new_tokens": 4, "optim.batch_size": 4, "eval.batch_size": 8}


@dataclass
class SweepOptions:
    """What the command line says about every run of a sweep."""

    tiny: bool = False
    seeds: int = 1
    model: str | None = None  # None: gpt2 (tiny under --tiny)
    data_dir: str | None = None  # None: finetune's default (experiments/tiny_data/tasks under --tiny)
    synthetic_dir: str | None = None  # teachers: folder with <teacher>.jsonl files
    finetune_args: list[str] = field(default_factory=list)  # finetune flags for every run (e.g. --device cuda:1)
    # --dry-run: plan the teachers sweep as if every teacher's file held what its arms need (priced, not run)
    plan_missing: bool = False

    def seed_list(self) -> list[int]:
        if not 1 <= self.seeds <= MAX_SEEDS:
            raise SweepError(f"--seeds {self.seeds}: expected an integer from 1 to {MAX_SEEDS}")
        return [SEED + i for i in range(self.seeds)]


@dataclass(frozen=True)
class Evaluation:
    """A follow-up `python -m minigpt2.evaluate` on a finished run folder (the zero-shot Quora check): its `settings`
    (run_dir None: each run's folder fills it); `output` is the file it writes there, whose presence marks it done."""

    name: str
    settings: EvaluateSettings
    output: str
    module = "minigpt2.evaluate"  # the command it runs (a class attribute, not a field)

    def settings_for(self, run_dir: Path, device: str | None = None) -> EvaluateSettings:
        """Its settings on `run_dir`, on `device` when one is chosen (else the evaluation's own, evaluate's default
        unless it names one)."""
        hardware = dataclasses.replace(self.settings.hardware, device=device) if device else self.settings.hardware
        return dataclasses.replace(self.settings, run_dir=str(run_dir), hardware=hardware)

    @property
    def task(self) -> str | None:
        """The task it scores; None: the run's own."""
        return self.settings.task


@dataclass(frozen=True)
class Run:
    """One finetune run of a sweep: its folder name, its `RunSettings` and the follow-up commands on its folder."""

    name: str
    settings: RunSettings
    evaluations: tuple[Evaluation, ...] = ()


Knob = Union[str, Callable[[Any], Any]]  # a settings path ("model.lora.rank"), or a function of a RunSettings


@dataclass(frozen=True)
class Column:
    """A table column: its header and what it shows of a point (the point's key, or a function of the point)."""

    head: str
    value: Union[str, Callable[[Row], Any]]

    def of(self, point: Row) -> Any:
        return point.get(self.value) if isinstance(self.value, str) else self.value(point)


@dataclass(frozen=True)
class Reference:
    """An arm every other arm is compared with on the same examples (the same seed too): in words, and as a test
    of a row `ref` against an arm's row `arm`; `short` names it in the zero-shot table ("fp32": "Δ vs fp32")."""

    description: str
    rule: Callable[[Row, Row], bool]
    short: str = ""


@dataclass(frozen=True)
class Plot:
    """A sweep's plot: the dev score (the test score beside it) against point key `x`, one line per value of `line`
    (named by `label`), over the points `keep` keeps. `shared` points start every line; `level` points are drawn
    across the axes with their interval as a band (named `level_label`); `annotate` writes a label beside each
    point; `log`: a log x axis of that base (2: ticked at the points); `mark`: (which point, its label) starred;
    `study`: the study's figure beside a point; `second`: (point key, y label, title) of a second axes over the same
    lines. One axes per metric when the points have several (accuracy and chrF).
    """

    x: str
    xlabel: str
    title: str
    line: Callable[[Row], Any] = lambda p: None
    label: Callable[[Any], str] = lambda key: ""
    keep: Callable[[Row], bool] = lambda p: True
    shared: Callable[[Row], bool] = lambda p: False
    level: Callable[[Row], bool] = lambda p: False
    level_label: str = ""
    annotate: Optional[Callable[[Row], str]] = None
    log: Optional[float] = None
    mark: Optional[tuple[Callable[[Row], bool], str]] = None
    study: Optional[Callable[[Row], Optional[float]]] = None
    second: Optional[tuple[str, str, str]] = None


@dataclass(frozen=True)
class Published:
    """A figure the study published, shown beside this reproduction's on the HTML page: its name (or a function of
    the reproduced row), metric, the study's dev and test figures, `pick`: the reproduced row, `cells`: its cells."""

    name: Union[str, Callable[[Optional[Row]], str]]
    metric: str
    dev: str
    test: str
    pick: Callable[[Sequence[Row]], Optional[Row]]
    cells: Callable[[Row], tuple[str, str]] = lambda p: (format_score(p), format_score(p, "test_"))


def best(keep: Callable[[Row], Any]) -> Callable[[Sequence[Row]], Optional[Row]]:
    """`Published.pick`: the setting (seeds pooled) with the best dev score among those `keep` keeps."""
    return lambda rows: max((p for p in group_seeds(rows) if p["seeds"] and keep(p)), key=lambda p: p["score"],
                            default=None)


def setting(settings: Any, knob: Knob) -> Any:
    """A knob's value: the value at a settings path (None under an absent group: no LoRA), or its function's."""
    if callable(knob):
        return knob(settings)
    for part in knob.split("."):
        settings = getattr(settings, part) if settings is not None else None
    return settings


@dataclass(frozen=True)
class Sweep:
    """A sweep as one declaration: its runs and what was left out of them (`note`, printed by --dry-run and above
    the table); its `knobs` (the CSV's first columns); its table `columns` before the score (default: one per knob)
    and `after` it; its `references` for paired differences; its `plot`; `best`: mark the best dev score; `extras`:
    the optional figures its rows carry (`experiments.report.EXTRAS`); `published`: the study's figures."""

    name: str
    runs: list[Run]
    note: str = ""
    waits: tuple[str, ...] = ()  # what the runs left out wait for (input files)
    # (synthetic file, filter, n): every arm's ask of a synthetic file, also the arms its file cannot fill yet
    synthetic_needs: tuple[tuple[str, str, int], ...] = ()
    knobs: dict[str, Knob] = field(default_factory=lambda: {"task": "data.task"})
    columns: tuple[Column, ...] = ()
    after: tuple[Column, ...] = ()
    references: tuple[Reference, ...] = ()
    plot: Optional[Plot] = None
    best: bool = False
    extras: tuple[str, ...] = ()
    published: tuple[Published, ...] = ()

    def knob_values(self, run: Run) -> dict[str, Any]:
        """The run's knobs, then its seed: the CSV's first columns."""
        return {**{name: setting(run.settings, knob) for name, knob in self.knobs.items()},
                "seed": run.settings.optim.seed}

    def table_columns(self) -> tuple[Column, ...]:
        return self.columns or tuple(Column(name, name) for name in self.knobs)


def common(opts: SweepOptions) -> Options:
    """Settings shared by every run: model, data, and the --tiny smoke settings."""
    options: Options = {}
    if opts.tiny:
        options.update(TINY, **{"paths.data_dir": opts.data_dir or str(TINY_DATA_DIR)})
        if opts.model:
            options["model.model"] = opts.model
        if not os.environ.get("MINIGPT2_TOKENIZER_DIR"):  # offline smoke runs: the BPE files shipped in tiny_data
            options["paths.tokenizer_dir"] = str(TINY_TOKENIZER_DIR)
    else:
        options["model.model"] = opts.model or "gpt2"
        if opts.data_dir:
            options["paths.data_dir"] = opts.data_dir
    return {**options, "optim.progress": False}


def make_runs(opts: SweepOptions, points: list[tuple[str, Options]], evaluations: tuple[Evaluation, ...] = ()
          ) -> list[Run]:
    """Every point of a sweep at every seed: (name, settings overrides) -> Runs, their settings built and checked.
    A point's own settings win over the shared ones (`--epochs 0`: the base model), --finetune-args over both."""
    shared, extra = common(opts), cli.options_from_argv(opts.finetune_args)
    return [Run(f"{name}-s{seed}", cli.settings_of({**options, **{k: v for k, v in shared.items() if k not in options},
                                                   "optim.seed": seed, **extra}), evaluations)
            for name, options in points for seed in opts.seed_list()]


def lora(rank: int, targets: str = LORA_TARGETS, alpha: float = LORA_ALPHA, lr: float = LORA_LR) -> Options:
    return {"model.method": "lora", "model.lora.rank": rank, "model.lora.alpha": alpha,
            "model.lora.targets": targets, "optim.lr": lr}


def sonnet(**more: Any) -> Options:
    """The sonnet task, and `more` settings (keyword `a__b` for the path "a.b")."""
    return {"data.task": "sonnet", **{k.replace("__", "."): v for k, v in more.items()}}


LORA_KNOBS: dict[str, Knob] = {"task": "data.task", "method": "model.method", "rank": "model.lora.rank",
                               "targets": "model.lora.targets"}
TRAINABLE = Column("trainable params", "trainable_params")


def lora_alpha_lr(opts: SweepOptions) -> Sweep:
    """Sonnets: LoRA (attn+mlp, rank 16) over a grid of alpha x learning rate, the search behind the study's
    choice of alpha 16 and lr 1e-2 (the table marks the best point)."""
    alphas, lrs = ((16, 32), (1e-2,)) if opts.tiny else (LORA_ALPHAS, LORA_LRS)
    rank = 4 if opts.tiny else LORA_SEARCH_RANK
    points = [(f"lora-a{a}-lr{lr:g}", {**sonnet(), **lora(rank, alpha=a, lr=lr)}) for a in alphas for lr in lrs]
    note = (f"--tiny: rank 4, alpha {alphas}, lr {lrs} (full sweep: rank {LORA_SEARCH_RANK}, alpha {LORA_ALPHAS},"
            f" lr {LORA_LRS})")
    chosen = lambda p: p.get("alpha") == 16 and p.get("lr") == 1e-2  # noqa: E731 (the study's choice)
    return Sweep("lora-alpha-lr", make_runs(opts, points), note if opts.tiny else "",
                 knobs={**LORA_KNOBS, "alpha": "model.lora.alpha", "lr": "optim.lr"},
                 columns=(Column("rank", "rank"), Column("alpha", lambda p: f"{p['alpha']:g}"),
                          Column("lr", lambda p: f"{p['lr']:g}")),
                 after=(Column("chosen by dev score", lambda p: "best" if p.get("best") else None),),
                 references=(Reference("alpha 16, lr 1e-2 (the study's choice)", lambda ref, arm: chosen(ref)),),
                 plot=Plot("lr", "learning rate", "Sonnets: LoRA alpha x learning rate", line=lambda p: p["alpha"],
                           label=lambda a: f"alpha {a:g}", log=10,
                           mark=(chosen, "study's choice (alpha 16, lr 1e-2)")),
                 best=True)


def baseline(opts: SweepOptions) -> Sweep:
    """Full fine-tuning on the four tasks, with the finetune defaults (the course's settings)."""
    points = [(task, {"data.task": task, "model.mode": "full-model"})
              for task in ("sst", "cfimdb", "quora", "sonnet")]
    return Sweep("baseline", make_runs(opts, points), knobs={"task": "data.task", "method": "model.method"},
                 columns=(Column("task", "task"),
                          Column("metric", lambda p: "chrF" if p["task"] == "sonnet" else "accuracy")),
                 after=(Column("study dev", lambda p: f"{STUDY[p['task']]:g}" if p["task"] in STUDY else None),
                        Column("study test", lambda p: f"{STUDY_TEST[p['task']]:g}" if p["task"] in STUDY_TEST
                               else None)),
                 plot=Plot("task", "task", "Full fine-tuning: dev and test scores",
                           study=lambda p: STUDY.get(p["task"])),
                 published=tuple(Published(f"{task} (full fine-tuning)", "chrF" if task == "sonnet" else "accuracy",
                                           f"{STUDY[task]:g}", f"{STUDY_TEST[task]:g}" if task in STUDY_TEST else "—",
                                           best(lambda p, task=task: p["task"] == task)) for task in STUDY))


def lora_ranks(opts: SweepOptions) -> Sweep:
    """Sonnets: LoRA (attn+mlp, alpha 16, lr 1e-2) at each rank, and full fine-tuning as the reference line."""
    ranks = (1, 4) if opts.tiny else LORA_RANKS
    points = [("full", sonnet())] + [(f"lora-r{r}", {**sonnet(), **lora(r)}) for r in ranks]
    note = f"--tiny: ranks {', '.join(map(str, ranks))} only (full sweep: {', '.join(map(str, LORA_RANKS))})"
    full = lambda p: p.get("method") == "full"  # noqa: E731
    return Sweep("lora-ranks", make_runs(opts, points), note if opts.tiny else "", knobs=LORA_KNOBS,
                 columns=(Column("method", "method"), Column("rank", "rank"), TRAINABLE),
                 references=(Reference("full fine-tuning", lambda ref, arm: full(ref)),),
                 plot=Plot("rank", "LoRA rank", "Sonnets: chrF vs LoRA rank",
                           label=lambda _: "LoRA (attn+mlp, alpha 16)", keep=lambda p: not full(p), level=full,
                           level_label="full fine-tuning", log=2),
                 published=(Published(lambda p: "sonnet, best LoRA rank" + (f" (reproduced: rank {p['rank']})"
                                                                             if p else ""),
                                      "chrF", "42.16 (rank 256)", "—", best(lambda p: p.get("method") == "lora")),
                            Published("LoRA rank 256 on attn+mlp", "trainable parameters", "42.5M", "—",
                                      best(lambda p: p.get("method") == "lora" and p.get("rank") == 256
                                           and p.get("trainable_params")),
                                      lambda p: (f"{p['trainable_params'] / 1e6:.1f}M", "—"))))


def lora_targets(opts: SweepOptions) -> Sweep:
    """Sonnets: LoRA on the attention projections only vs attention + MLP, at a small and the largest rank."""
    ranks = (4,) if opts.tiny else (16, 256)
    points = [(f"lora-{t.replace('+', '-')}-r{r}", {**sonnet(), **lora(r, t)})
              for r in ranks for t in ("attn", "attn+mlp")]
    note = "--tiny: rank 4 only (full sweep: ranks 16 and 256)"
    return Sweep("lora-targets", make_runs(opts, points), note if opts.tiny else "", knobs=LORA_KNOBS,
                 columns=(Column("targets", "targets"), Column("rank", "rank"), TRAINABLE),
                 references=(Reference("LoRA on attn+mlp at the same rank", lambda ref, arm: ref.get("targets") ==
                                       "attn+mlp" and ref.get("rank") == arm.get("rank")),),
                 plot=Plot("trainable_params", "trainable parameters", "Sonnets: LoRA targets",
                           line=lambda p: p["targets"], label=lambda t: f"LoRA on {t}",
                           annotate=lambda p: f"r{p['rank']}", log=10))


# `python -m minigpt2.evaluate RUN_DIR --task quora --zero-shot` writes RUN_DIR/eval-quora-zero-shot-dev.json.
ZERO_SHOT_QUORA = Evaluation("zero_shot_quora", EvaluateSettings(task="quora", zero_shot=True),
                             "eval-quora-zero-shot-dev.json")


QAFT_OTHER_TASKS = ("sst", "cfimdb")  # the study's other fine-tuning tasks (quora is the check itself)


def _same(ref: Row, arm: Row, *keys: str) -> bool:
    return all(ref.get(k) == arm.get(k) for k in keys)


def precision(opts: SweepOptions) -> Sweep:
    """Sonnets at each precision, quantized after training (PTQ) or trained quantization-aware (QAFT); fp32 is
    the reference and has no QAFT twin. Each model also takes the zero-shot Quora check, and so do: the base
    model before fine-tuning at each precision (`--epochs 0`: scored and saved untrained) and the models after
    int8 QAFT on the other fine-tuning tasks, each beside its fp32 twin (the reference of the paired differences)."""
    precisions = ("fp32", "int8") if opts.tiny else PRECISIONS
    others = QAFT_OTHER_TASKS[:1] if opts.tiny else QAFT_OTHER_TASKS
    off = {"optim.autocast": "off"}  # like with like: the other precisions run without autocast, so fp32 must too
    points = [(f"base-{p}", sonnet(precision__format=p, optim__epochs=0) | (off if p == "fp32" else {}))
              for p in precisions]
    for p in precisions:
        for qaft in ((False,) if p == "fp32" else (False, True)):
            name = p if p == "fp32" else f"{p}-{'qaft' if qaft else 'ptq'}"
            points.append((name, sonnet(precision__format=p, precision__qaft=qaft) | (off if p == "fp32" else {})))
    for task in others:  # each with its fp32 twin: the paired reference on the same rows (dev and zero-shot)
        points.append((f"{task}-fp32", {"data.task": task, "precision.format": "fp32", **off}))
        points.append((f"{task}-int8-qaft", {"data.task": task, "precision.format": "int8", "precision.qaft": True}))
    note = ("--tiny: fp32 and int8 only, int8 QAFT on sst only (full sweep: " + ", ".join(PRECISIONS)
            + "; sst and cfimdb)")
    return Sweep("precision", make_runs(opts, points, (ZERO_SHOT_QUORA,)), note if opts.tiny else "",
                 knobs={"task": "data.task", "precision": "precision.format", "qaft": "precision.qaft",
                        "stage": lambda s: "base" if s.optim.epochs == 0 else "fine-tuned"},
                 columns=(Column("model", lambda p: p.get("stage") or "fine-tuned"), Column("task", "task"),
                          Column("precision", "precision"), Column("QAFT", "qaft"),
                          Column("model bytes", "model_bytes")),
                 after=(Column("zero-shot Quora acc.", ZERO_SHOT_QUORA.name),),
                 references=(Reference("fp32 at the same stage (base or fine-tuned) on the same task",
                                       lambda ref, arm: ref.get("precision") == "fp32" and _same(ref, arm, "stage",
                                                                                                "task"), "fp32"),
                             Reference("post-training quantization at the same precision: QAFT arms only",
                                       lambda ref, arm: bool(arm.get("qaft")) and not ref.get("qaft")
                                       and _same(ref, arm, "precision", "stage", "task"))),
                 plot=Plot("model_bytes", "model size (bytes)", "Sonnets: chrF vs model size by precision",
                           line=lambda p: bool(p["qaft"]),
                           label=lambda q: "QAFT" if q else "post-training quantization",
                           keep=lambda p: p.get("task", "sonnet") == "sonnet"
                           and p.get("stage", "fine-tuned") == "fine-tuned" and bool(p.get("model_bytes")),
                           shared=lambda p: p["precision"] == "fp32", annotate=lambda p: p["precision"], log=10,
                           second=(ZERO_SHOT_QUORA.name, "zero-shot Quora accuracy",
                                   "Generality after sonnet fine-tuning")),
                 extras=("model_bytes",))


GENERATE_HINT = "`python -m distill.generate --teacher <teacher> --n 1000 --out DIR/<teacher>.jsonl`"


def real_training_sonnets(opts: SweepOptions) -> int | None:
    """How many real sonnets a run trains on (cut by --max-train: --finetune-args', else --tiny's), or None before
    the data is there."""
    from course.readers import data_dir, read_sonnets

    folder = Path(opts.data_dir) if opts.data_dir else (TINY_DATA_DIR if opts.tiny else data_dir(None))
    try:
        n = len(read_sonnets(folder / "sonnets.txt")[0])
    except (OSError, ValueError):
        return None
    limit = cli.options_from_argv(opts.finetune_args).get("data.max_train",
                                                          TINY["data.max_train"] if opts.tiny else None)
    return n if limit is None else min(n, limit)


PLANNED_SYNTHETIC_DIR = Path("synthetic")  # where a dry run without --synthetic-dir plans the teachers' files


def _perfect_rate(row: Row) -> tuple[str, str]:
    """The perfect rate of the synthetic file a teachers row trained on, in % with its Wilson interval."""
    t = teacher_summary(Path(row["arg_synthetic"])) if Path(row["arg_synthetic"]).is_file() else {}
    if t.get("perfect_rate") is None:
        return "—", "—"
    return f"{100 * t['perfect_rate']:.0f}% [{100 * t['perfect_low']:.0f}, {100 * t['perfect_high']:.0f}]", "—"


TEACHERS_PUBLISHED = (
    Published(lambda p: "sonnet, best distilled model" + (f" ({p['teacher']}, n{p['synthetic_n']} "
                                                         f"{p['synthetic_filter']})" if p else ""),
              "chrF", "46.61", "52.838", best(lambda p: p.get("teacher"))),
    *(Published(f"{teacher}: perfect sonnets among those kept", "rate", f"{100 * rate:.0f}%", "—",
                lambda rows, t=teacher: next((r for r in rows if r.get("teacher") == t and r.get("arg_synthetic")),
                                             None), _perfect_rate)
      for teacher, rate in STUDY_PERFECT_RATES.items()),
)


def teacher_of(settings: Any) -> str | None:
    """The teacher whose synthetic sonnets a run trains on: its file's name, without .jsonl."""
    return Path(settings.data.synthetic.path).stem if settings.data.synthetic else None


def teachers(opts: SweepOptions) -> Sweep:
    """Sonnets + N synthetic sonnets from each teacher (all kept ones, or only perfect ones; N = 0, the shared
    real-only run, starts every curve), then the mixing arms on perfect sonnets (ratio r adds r x the real training
    sonnets; 'synthetic only' trains on no real one). Without <teacher>.jsonl files it has no runs and says what it
    waits for (with `plan_missing`, --dry-run, it plans them as if full); a file too small for an arm ends that
    curve at what it has, announced in the note."""
    folder = Path(opts.synthetic_dir) if opts.synthetic_dir else (TINY_SYNTHETIC_DIR if opts.tiny else None)
    present = sorted(p.stem for p in folder.glob("*.jsonl")) if folder and folder.is_dir() else []
    if not present and not opts.plan_missing:
        where = f"{folder}: no <teacher>.jsonl files" if folder else "--synthetic-dir DIR"
        return Sweep("teachers", [], waits=(f"the Gemini files ({where}; make them with {GENERATE_HINT})",),
                     published=TEACHERS_PUBLISHED)
    from distill.synthetic import load_synthetic

    folder = folder or PLANNED_SYNTHETIC_DIR
    names = sorted(set(present) | (set(TEACHERS) if opts.plan_missing else set()))
    planned = [t for t in names if t not in present]
    sizes, ratios = ((0, 2), MIX_RATIOS[:1]) if opts.tiny else (SYNTHETIC_SIZES, MIX_RATIOS)
    n_real = real_training_sonnets(opts)
    notes = [f"--tiny: fixture teachers, sizes {sizes} (full sweep: {SYNTHETIC_SIZES})"] if opts.tiny else []
    if planned:
        notes.append(f"planned as if {', '.join(str(folder / f'{t}.jsonl') for t in planned)} held "
                     f"{max(sizes)} perfect sonnets (not made yet: {GENERATE_HINT})")

    def arm(teacher: str, n: int, filt: str, **more: Any) -> Options:
        return sonnet(data__synthetic__path=str(folder / f"{teacher}.jsonl"), data__synthetic__n=n,
                      data__synthetic__filter=filt, **more)

    points, perfect = [("real-only", sonnet())], {}
    for teacher in names:
        for filt in ("all", "perfect"):
            path = folder / f"{teacher}.jsonl"
            have = None if teacher in planned else len(load_synthetic(path, filter=filt))
            ns = list(sizes[1:]) if have is None else fit_sizes(sizes[1:], have)
            if ns != list(sizes[1:]):
                notes.append(shortfall(teacher, path, filt, have or 0, max(sizes)))
            points += [(f"{teacher}-n{n}-{filt}", arm(teacher, n, filt)) for n in ns]
            if filt == "perfect":
                perfect[teacher] = max(sizes) if have is None else have
    mixes: dict[tuple[str, int, str], str] = {}  # (file, n, filter) of each ratio arm -> "ratio r"
    for teacher in names:  # the mixing arms, perfect sonnets only
        have = perfect[teacher]
        for r in ratios if n_real else ():
            n = round(r * n_real)
            if n == 0:  # half of one real sonnet rounds to none
                notes.append(f"{teacher}: ratio {r:g} of {n_real} real sonnet adds no synthetic one")
            elif n in fit_sizes(sizes[1:], have):  # already a point of the perfect curve
                notes.append(f"{teacher}: ratio {r:g} is its n{n}-perfect run")
            elif n <= have:
                points.append((f"{teacher}-ratio{r:g}-perfect", arm(teacher, n, "perfect")))
                mixes[str(folder / f"{teacher}.jsonl"), n, "perfect"] = f"ratio {r:g}"
            else:
                notes.append(f"{teacher}: ratio {r:g} needs {n} perfect sonnets, has {have}")
        if have:
            points.append((f"{teacher}-only-perfect", arm(teacher, have, "perfect", data__synthetic__only=True)))
    if not n_real:
        notes.append("mixing ratios wait for the sonnet training file")
    needs = tuple((str(folder / f"{t}.jsonl"), filt, n) for t in names for filt in ("all", "perfect")
                  for n in [max(sizes)] + ([round(r * (n_real or 0)) for r in ratios] if filt == "perfect" else []))

    def mix(s: Any) -> str | None:
        syn = s.data.synthetic
        return None if syn is None else "synthetic only" if syn.only else mixes.get((syn.path, syn.n, syn.filter))

    curve = lambda p: p.get("mix") != "synthetic only"  # noqa: E731 (no real sonnets: on no curve)
    return Sweep("teachers", make_runs(opts, points), "; ".join(notes), synthetic_needs=needs,
                 knobs={"task": "data.task", "teacher": teacher_of,
                        "synthetic_n": lambda s: s.data.synthetic.n if s.data.synthetic else 0,
                        "synthetic_filter": "data.synthetic.filter", "mix": mix},
                 columns=(Column("teacher", lambda p: p["teacher"] or "(real only)"),
                          Column("synthetic", "synthetic_n"), Column("filter", "synthetic_filter"),
                          Column("mix", lambda p: p.get("mix") or ("real only" if not p["synthetic_n"]
                                                                  else "real + synthetic"))),
                 references=(Reference("real sonnets only", lambda ref, arm: not ref.get("synthetic_n")),),
                 plot=Plot("synthetic_n", "synthetic sonnets added",
                           "Sonnets: chrF vs synthetic-set size per teacher",
                           line=lambda p: (p["teacher"], p["synthetic_filter"]), label=lambda k: f"{k[0]} ({k[1]})",
                           keep=curve, shared=lambda p: not p["synthetic_n"]),
                 published=TEACHERS_PUBLISHED)


def shortfall(teacher: str, path: Path, filt: str, have: int, need: int) -> str:
    """The note on an arm cut short by its file: what it has and needs, and the requests that would fill it."""
    kind = "perfect" if filt == "perfect" else "kept"
    more = requests_needed(teacher, path, perfect=need - have if filt == "perfect" else 0,
                           kept=need - have if filt == "all" else 0)
    return (f"{teacher} has {have} {kind} sonnets; the n{need}-{filt} arm needs {need}: generate ~{more} more "
            f"requests (its curve ends at {have} until then)")


def fit_sizes(sizes: Sequence[int], have: int) -> list[int]:
    """The synthetic-set sizes a file can fill: those up to `have`, then `have` itself as the last point when
    a larger size was asked for (a teacher with 640 perfect sonnets ends its curve at 640, not 1000)."""
    fit = [n for n in sizes if n <= have]
    if have > 0 and len(fit) < len(sizes) and have not in fit:
        fit.append(have)
    return fit


SWEEPS: dict[str, Callable[[SweepOptions], Sweep]] = {
    "baseline": baseline, "lora-ranks": lora_ranks, "lora-targets": lora_targets, "lora-alpha-lr": lora_alpha_lr,
    "precision": precision, "teachers": teachers,
}


def build_sweep(name: str, opts: SweepOptions) -> Sweep:
    if name not in SWEEPS:
        raise SweepError(f"unknown sweep {name!r}; expected one of {sorted(SWEEPS)}")
    sweep = SWEEPS[name](opts)
    names = [r.name for r in sweep.runs]
    # internal invariant of the sweep builders above (names come from code, not from the user's input)
    assert len(set(names)) == len(names), f"duplicate run names in sweep {name}"
    return sweep

"""The study's sweeps as data: each is a list of `Run`s, one `minigpt2.finetune` run each.

A sweep builder reads `SweepOptions` (model, data, seeds, `--tiny`) and returns runs whose `knobs` are the
settings that vary (the CSV's first columns and the plots' axes) and whose `settings` are the run's `RunSettings`,
built from overrides by path ({"model.lora.rank": 4, ...}) by `app.cli.settings_of` and so checked when the sweep
is built.
Nothing here runs anything; `experiments.runner` does.

    baseline      full fine-tuning on sst, cfimdb, quora, sonnet
    lora-ranks    sonnets, LoRA attn+mlp at ranks 1, 2, 4, ..., 256 (alpha 16, lr 1e-2) and full fine-tuning
    lora-targets  sonnets, LoRA on attention only vs attention + MLP
    lora-alpha-lr sonnets, LoRA rank 16 over alpha 4..64 x lr 1e-3..3e-2 (re-derives alpha 16, lr 1e-2)
    precision     sonnets at fp64, fp32, bf16, fp8, int8, int4, post-training quantized (PTQ) or QAFT, and each
                  model's zero-shot Quora cloze accuracy
    teachers      sonnets + synthetic sonnets from each Gemini teacher, 0/250/500/1000 of them, all or perfect-only;
                  perfect ones at 0.5/1/2 per real sonnet, and alone (synthetic only)

`--tiny` keeps every sweep's shape but trims it to a CPU smoke run: the random-init `tiny` model, the small data
shipped in experiments/tiny_data/ (4 training and 2 dev/test examples), one epoch, 4 new tokens per sonnet, and fewer
points per sweep (`Sweep.note` says which).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from app import cli
from app.settings import LORA_LR, LORA_TARGETS, RunSettings  # the study's best LoRA settings
from distill.generate import TEACHERS
from distill.summary import requests_needed
from minigpt2.errors import UserError
from minigpt2.lora import LoRAConfig
from minigpt2.train import DEFAULT_SEED
from quant.config import PRECISIONS

LORA_ALPHA = LoRAConfig().alpha
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
TINY: Options = {"model.model": "tiny", "data.offline": True, "optim.epochs": 1, "data.max_train": 4,
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
    """A follow-up command on a finished run folder (e.g. the zero-shot Quora check). `module` is run with
    `argv`, where the string RUN_DIR stands for the run folder; `output` (inside the run folder) is the file it
    writes, whose presence marks it done."""

    name: str
    module: str
    argv: tuple[str, ...]
    output: str

    def command(self, run_dir: Path, device: str | None = None) -> tuple[str, ...]:
        """Its arguments on `run_dir`, on `device` when one is chosen (else the evaluation's default)."""
        return tuple(str(run_dir) if a == "RUN_DIR" else a for a in self.argv) + (("--device", device) if device
                                                                                  else ())

    @property
    def task(self) -> str | None:
        """The task it scores (its --task); None: the run's own."""
        return self.argv[self.argv.index("--task") + 1] if "--task" in self.argv else None


@dataclass(frozen=True)
class Run:
    """One finetune run of a sweep: `name` its folder name, `settings` its `RunSettings` (built and checked when
    the sweep is built), `knobs` the settings that vary (the CSV's first columns), `evaluations` the follow-up
    commands on its folder."""

    name: str
    settings: RunSettings
    knobs: dict[str, Any]
    evaluations: tuple[Evaluation, ...] = ()


@dataclass(frozen=True)
class Sweep:
    """A named list of runs, and what was left out of it (by `--tiny`, or for lack of synthetic sonnets); the
    note is printed by --dry-run and written above the table."""

    name: str
    runs: list[Run]
    note: str = ""
    waits: tuple[str, ...] = ()  # what the runs left out wait for (input files)
    # (synthetic file, filter, n): every arm's ask of a synthetic file, also the arms its file cannot fill yet
    synthetic_needs: tuple[tuple[str, str, int], ...] = ()


def common(opts: SweepOptions) -> Options:
    """Settings shared by every run: model, data, and the --tiny smoke settings."""
    options: Options = {}
    if opts.tiny:
        options.update(TINY, **{"data.data_dir": opts.data_dir or str(TINY_DATA_DIR)})
        if opts.model:
            options["model.model"] = opts.model
        if not os.environ.get("MINIGPT2_TOKENIZER_DIR"):  # offline smoke runs: the BPE files shipped in tiny_data
            options["data.tokenizer_dir"] = str(TINY_TOKENIZER_DIR)
    else:
        options["model.model"] = opts.model or "gpt2"
        if opts.data_dir:
            options["data.data_dir"] = opts.data_dir
    return {**options, "optim.progress": False}


def _runs(opts: SweepOptions, points: list[tuple[str, Options, dict[str, Any]]],
          evaluations: tuple[Evaluation, ...] = ()) -> list[Run]:
    """Every point of a sweep at every seed: (name, settings overrides, knobs) -> Runs, their settings built (and
    checked: a setting finetune would refuse is refused now, naming its flag). A point's own settings win over the
    shared ones (`--epochs 0`: the base model), the user's --finetune-args over both."""
    shared, extra = common(opts), cli.options_from_argv(opts.finetune_args)
    return [Run(f"{name}-s{seed}", cli.settings_of({**options, **{k: v for k, v in shared.items() if k not in options},
                                                   "optim.seed": seed, **extra}), {**knobs, "seed": seed}, evaluations)
            for name, options, knobs in points for seed in opts.seed_list()]


def lora(rank: int, targets: str = LORA_TARGETS, alpha: float = LORA_ALPHA, lr: float = LORA_LR) -> Options:
    """A LoRA run's settings."""
    return {"model.method": "lora", "model.lora.rank": rank, "model.lora.alpha": alpha,
            "model.lora.targets": targets, "optim.lr": lr}


def sonnet(**more: Any) -> Options:
    """The sonnet task, and `more` settings (keyword `a__b` for the path "a.b")."""
    return {"data.task": "sonnet", **{k.replace("__", "."): v for k, v in more.items()}}


def lora_alpha_lr(opts: SweepOptions) -> Sweep:
    """Sonnets: LoRA (attn+mlp, rank 16) over a grid of alpha x learning rate, the search behind the study's
    choice of alpha 16 and lr 1e-2 (the table marks the best point)."""
    alphas, lrs = ((16, 32), (1e-2,)) if opts.tiny else (LORA_ALPHAS, LORA_LRS)
    rank = 4 if opts.tiny else LORA_SEARCH_RANK
    points = [(f"lora-a{a}-lr{lr:g}", {**sonnet(), **lora(rank, alpha=a, lr=lr)},
               {"task": "sonnet", "method": "lora", "rank": rank, "targets": "attn+mlp", "alpha": a, "lr": lr})
              for a in alphas for lr in lrs]
    note = (f"--tiny: rank 4, alpha {alphas}, lr {lrs} (full sweep: rank {LORA_SEARCH_RANK}, alpha {LORA_ALPHAS},"
            f" lr {LORA_LRS})")
    return Sweep("lora-alpha-lr", _runs(opts, points), note if opts.tiny else "")


def baseline(opts: SweepOptions) -> Sweep:
    """Full fine-tuning on the four tasks, with the finetune defaults (the course's settings)."""
    points = [(task, {"data.task": task, "model.mode": "full-model"}, {"task": task, "method": "full"})
              for task in ("sst", "cfimdb", "quora", "sonnet")]
    return Sweep("baseline", _runs(opts, points))


def lora_ranks(opts: SweepOptions) -> Sweep:
    """Sonnets: LoRA (attn+mlp, alpha 16, lr 1e-2) at each rank, and full fine-tuning as the reference line."""
    ranks = (1, 4) if opts.tiny else LORA_RANKS
    points = [("full", sonnet(), {"task": "sonnet", "method": "full", "rank": None, "targets": None})]
    points += [(f"lora-r{r}", {**sonnet(), **lora(r)}, {"task": "sonnet", "method": "lora", "rank": r,
                                                          "targets": "attn+mlp"}) for r in ranks]
    note = f"--tiny: ranks {', '.join(map(str, ranks))} only (full sweep: {', '.join(map(str, LORA_RANKS))})"
    return Sweep("lora-ranks", _runs(opts, points), note if opts.tiny else "")


def lora_targets(opts: SweepOptions) -> Sweep:
    """Sonnets: LoRA on the attention projections only vs attention + MLP, at a small and the largest rank."""
    ranks = (4,) if opts.tiny else (16, 256)
    points = [(f"lora-{t.replace('+', '-')}-r{r}", {**sonnet(), **lora(r, t)},
               {"task": "sonnet", "method": "lora", "rank": r, "targets": t})
              for r in ranks for t in ("attn", "attn+mlp")]
    note = "--tiny: rank 4 only (full sweep: ranks 16 and 256)"
    return Sweep("lora-targets", _runs(opts, points), note if opts.tiny else "")


# `python -m minigpt2.evaluate RUN_DIR --task quora --zero-shot` writes RUN_DIR/eval-quora-zero-shot-dev.json.
ZERO_SHOT_QUORA = Evaluation("zero_shot_quora", "minigpt2.evaluate",
                             ("RUN_DIR", "--task", "quora", "--zero-shot"), "eval-quora-zero-shot-dev.json")


QAFT_OTHER_TASKS = ("sst", "cfimdb")  # the study's other fine-tuning tasks (quora is the check itself)


def precision(opts: SweepOptions) -> Sweep:
    """Sonnets at each precision, quantized after training (PTQ) or trained quantization-aware (QAFT); fp32 is
    the reference and has no QAFT twin. Each model also takes the zero-shot Quora check, and so do: the base
    model before fine-tuning at each precision (`--epochs 0`: scored and saved untrained) and the models after
    int8 QAFT on the other fine-tuning tasks, each beside its fp32 twin (the reference of the paired differences)."""
    precisions = ("fp32", "int8") if opts.tiny else PRECISIONS
    others = QAFT_OTHER_TASKS[:1] if opts.tiny else QAFT_OTHER_TASKS
    points = []
    for p in precisions:
        points.append((f"base-{p}", sonnet(precision__format=p, optim__epochs=0)
                       | ({"optim.autocast": "off"} if p == "fp32" else {}),
                       {"task": "sonnet", "precision": p, "qaft": False, "stage": "base"}))
    for p in precisions:
        for qaft in ((False,) if p == "fp32" else (False, True)):
            flags = sonnet(precision__format=p, precision__qaft=qaft)
            if p == "fp32":  # like with like: the other precisions run without autocast, so fp32 must too
                flags["optim.autocast"] = "off"
            name = p if p == "fp32" else f"{p}-{'qaft' if qaft else 'ptq'}"
            points.append((name, flags,
                           {"task": "sonnet", "precision": p, "qaft": qaft, "stage": "fine-tuned"}))
    for task in others:  # each with its fp32 twin: the paired reference on the same rows (dev and zero-shot)
        points.append((f"{task}-fp32", {"data.task": task, "precision.format": "fp32", "optim.autocast": "off"},
                       {"task": task, "precision": "fp32", "qaft": False, "stage": "fine-tuned"}))
        points.append((f"{task}-int8-qaft", {"data.task": task, "precision.format": "int8", "precision.qaft": True},
                       {"task": task, "precision": "int8", "qaft": True, "stage": "fine-tuned"}))
    notes = []
    if opts.tiny:
        notes.insert(0, "--tiny: fp32 and int8 only, int8 QAFT on sst only (full sweep: " + ", ".join(PRECISIONS)
                     + "; sst and cfimdb)")
    runs = _runs(opts, points, evaluations=(ZERO_SHOT_QUORA,))
    return Sweep("precision", runs, "; ".join(notes))


GENERATE_HINT = "`python -m distill.generate --teacher <teacher> --n 1000 --out DIR/<teacher>.jsonl`"


def synthetic_dir(opts: SweepOptions) -> Path | None:
    if opts.synthetic_dir:
        return Path(opts.synthetic_dir)
    return TINY_SYNTHETIC_DIR if opts.tiny else None


def real_training_sonnets(opts: SweepOptions) -> int | None:
    """How many real sonnets a run trains on (the sonnet training file, cut by --tiny's --max-train), or None
    when the data is not there yet."""
    from course.readers import data_dir, read_sonnets

    folder = Path(opts.data_dir) if opts.data_dir else (TINY_DATA_DIR if opts.tiny else data_dir(None))
    try:
        n = len(read_sonnets(folder / "sonnets.txt")[0])
    except (OSError, ValueError):
        return None
    return min(n, TINY["data.max_train"]) if opts.tiny else n


PLANNED_SYNTHETIC_DIR = Path("synthetic")  # where a dry run without --synthetic-dir plans the teachers' files


def teachers(opts: SweepOptions) -> Sweep:
    """Sonnets + N synthetic sonnets from each teacher (all kept ones, or only perfect ones). N = 0 is the one
    shared real-data-only run that starts every teacher's curve. Then the mixing arms on perfect sonnets: the
    synthetic-to-real ratios of MIX_RATIOS, and the synthetic sonnets alone (no real training sonnet).

    Without a folder of <teacher>.jsonl files the sweep has no runs and says what it waits for; with
    `plan_missing` (--dry-run) a teacher without a file is planned as if its file held what every arm needs.
    A file too small for an arm ends that curve at what it has, announced in the note with the requests that
    would complete it."""
    folder = synthetic_dir(opts)
    present = sorted(p.stem for p in folder.glob("*.jsonl")) if folder and folder.is_dir() else []
    if not present and not opts.plan_missing:
        where = f"{folder}: no <teacher>.jsonl files" if folder else "--synthetic-dir DIR"
        return Sweep("teachers", [], waits=(f"the Gemini files ({where}; make them with {GENERATE_HINT})",))
    from distill.synthetic import load_synthetic

    folder = folder or PLANNED_SYNTHETIC_DIR
    names = sorted(set(present) | (set(TEACHERS) if opts.plan_missing else set()))
    planned = [t for t in names if t not in present]
    sizes = sizes_for(opts)
    points = [("real-only", sonnet(),
               {"task": "sonnet", "teacher": None, "synthetic_n": 0, "synthetic_filter": None})]
    notes = [f"--tiny: fixture teachers, sizes {sizes} (full sweep: {SYNTHETIC_SIZES})"] if opts.tiny else []
    if planned:
        notes.append(f"planned as if {', '.join(str(folder / f'{t}.jsonl') for t in planned)} held "
                     f"{max(sizes)} perfect sonnets (not made yet: {GENERATE_HINT})")
    have: dict[tuple[str, str], int | None] = {}
    for teacher in names:
        for filt in ("all", "perfect"):
            path = folder / f"{teacher}.jsonl"
            n_have = None if teacher in planned else len(load_synthetic(path, filter=filt))
            have[teacher, filt] = n_have
            ns = list(sizes[1:]) if n_have is None else fit_sizes(sizes[1:], n_have)
            if ns != list(sizes[1:]):
                notes.append(shortfall(teacher, path, filt, n_have or 0, max(sizes)))
            for n in ns:
                flags = sonnet(data__synthetic__path=str(path), data__synthetic__n=n, data__synthetic__filter=filt)
                points.append((f"{teacher}-n{n}-{filt}", flags,
                               {"task": "sonnet", "teacher": teacher, "synthetic_n": n, "synthetic_filter": filt}))
    points += mixing_points(opts, folder, names, notes,
                            {t: max(sizes) if have[t, "perfect"] is None else have[t, "perfect"] for t in names})
    n_real = real_training_sonnets(opts) or 0
    ratios = MIX_RATIOS[:1] if opts.tiny else MIX_RATIOS
    needs = tuple((str(folder / f"{t}.jsonl"), filt, n) for t in names for filt in ("all", "perfect")
                  for n in [max(sizes)] + ([round(r * n_real) for r in ratios] if filt == "perfect" else []))
    return Sweep("teachers", _runs(opts, points), "; ".join(notes), synthetic_needs=needs)


def shortfall(teacher: str, path: Path, filt: str, have: int, need: int) -> str:
    """The announcement of an arm cut short by its file: what it has, what it needs, how many more requests
    would fill it (at the file's measured rate, else the study's perfect rate)."""
    kind = "perfect" if filt == "perfect" else "kept"
    more = requests_needed(teacher, path, perfect=need - have if filt == "perfect" else 0,
                           kept=need - have if filt == "all" else 0)
    return (f"{teacher} has {have} {kind} sonnets; the n{need}-{filt} arm needs {need}: generate ~{more} more "
            f"requests (its curve ends at {have} until then)")


def mixing_points(opts: SweepOptions, folder: Path, names: Sequence[str], notes: list[str],
                  perfect: dict[str, int] | None = None) -> list[tuple[str, Options, dict[str, Any]]]:
    """Per teacher, perfect sonnets only: ratio r adds r x (real training sonnets) synthetic ones; 'synthetic
    only' trains on every perfect synthetic sonnet and no real one (dev and test stay real). `perfect`: the
    perfect sonnets of each teacher's file (read from the file when not given)."""
    from distill.synthetic import load_synthetic

    n_real = real_training_sonnets(opts)
    ratios = MIX_RATIOS[:1] if opts.tiny else MIX_RATIOS
    points = []
    for teacher in names:
        path = folder / f"{teacher}.jsonl"
        have = perfect[teacher] if perfect is not None else len(load_synthetic(path, filter="perfect"))
        base = {"task": "sonnet", "teacher": teacher, "synthetic_filter": "perfect"}
        for r in ratios if n_real else ():
            n = round(r * n_real)
            if n in fit_sizes(sizes_for(opts)[1:], have):  # already a point of the perfect curve
                notes.append(f"{teacher}: ratio {r:g} is its n{n}-perfect run")
            elif 0 < n <= have:
                points.append((f"{teacher}-ratio{r:g}-perfect",
                               sonnet(data__synthetic__path=str(path), data__synthetic__n=n,
                                      data__synthetic__filter="perfect"),
                               {**base, "synthetic_n": n, "mix": f"ratio {r:g}"}))
            else:
                notes.append(f"{teacher}: ratio {r:g} needs {n} perfect sonnets, has {have}")
        if have:
            points.append((f"{teacher}-only-perfect",
                           sonnet(data__synthetic__path=str(path), data__synthetic__n=have,
                                  data__synthetic__filter="perfect", data__synthetic__only=True),
                           {**base, "synthetic_n": have, "mix": "synthetic only"}))
    if not n_real:
        notes.append("mixing ratios wait for the sonnet training file")
    return points


def sizes_for(opts: SweepOptions) -> tuple[int, ...]:
    return (0, 2) if opts.tiny else SYNTHETIC_SIZES


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
    """The sweep called `name` under these options."""
    if name not in SWEEPS:
        raise SweepError(f"unknown sweep {name!r}; expected one of {sorted(SWEEPS)}")
    sweep = SWEEPS[name](opts)
    names = [r.name for r in sweep.runs]
    # internal invariant of the sweep builders above (names come from code, not from the user's input)
    assert len(set(names)) == len(names), f"duplicate run names in sweep {name}"
    return sweep

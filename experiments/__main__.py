"""The study's experiments, one command each:

    python -m experiments baseline                      # full fine-tuning, four tasks
    python -m experiments lora-ranks --seeds 3          # sonnets: LoRA ranks 1..256 vs full fine-tuning
    python -m experiments lora-targets
    python -m experiments lora-alpha-lr                 # sonnets: LoRA alpha x lr grid behind alpha 16, lr 1e-2
    python -m experiments precision                     # fp64 .. int4, PTQ vs QAFT, zero-shot Quora
    python -m experiments teachers --synthetic-dir synthetic/
    python -m experiments baseline --tiny               # CPU smoke run: tiny random model, fixture data
    python -m experiments all --dry-run                 # list the runs, their tokens, time and cost; run none
    python -m experiments all --jobs 8                  # 8 runs at once, one per GPU (round-robin)
    python -m experiments all --launcher ray --address HEAD:6379   # one Ray task per run on a cluster
    python -m experiments all --dry-run --stated-rates --markdown   # docs/study.md's cost table

Run folders go to <runs-dir>/<sweep>/<run>/; finished runs are skipped, interrupted ones resumed. Results go to
<out>/<sweep>.csv, <out>/<sweep>.md and <out>/<sweep>.png, and every command ends with <out>/index.html (the whole
study on one self-contained page). `all` runs every sweep whose inputs exist and says what the others wait for.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import shlex
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from app import cli
from app.settings import RunSettings, defining, option
from minigpt2.device import parse_device
from minigpt2.errors import FieldError, UserError, exits_on_user_error

from .estimate import (Cost, cost_lines, format_hours, gemini_bill, markdown_table, measured_rates,
                       stated_rates, sweep_cost, wall_estimate)
from .html import write_index
from .launch import Launcher, LaunchError, Local, Ray, default_devices, require_ray, threads_per_run
from .preflight import check_preconditions
from .report import check_sweep_files, write_report
from .runner import RunFolderConflict, in_process, in_subprocess, plan
from .stats import SAMPLES
from .sweeps import MAX_SEEDS, SWEEPS, Sweep, SweepOptions, build_sweep


@dataclass(frozen=True)
class LaunchArgs:
    """Where the runs run (docs/study.md, 'Beyond one machine')."""

    jobs: int | None = option(None, "runs at once on this machine, each a finetune subprocess logging to its "
                                    "run.log, the longest first (default 1: one after the other); on a CPU they "
                                    "share its cores (--threads). --launcher ray: the workers --dry-run plans for "
                                    "(default: what the cluster holds)")
    devices: str | None = option(None, "comma-separated devices the runs are pinned to, round-robin (default: every "
                                       "CUDA device, else cpu), e.g. cuda:0,cuda:1")
    threads: int | None = option(None, "CPU threads of each run, recorded in its config.json (default: this "
                                       "machine's cores / --jobs; with --cpus-per-run, that number)")
    launcher: str = option("local", "local: this machine (--jobs); ray: one Ray task per run on a cluster (pip "
                                    "install -e \".[cluster]\"); the run folders must be on storage every node sees",
                           choices=("local", "ray"))
    address: str | None = option(None, "--launcher ray: the cluster to join (HOST:PORT of its head, or 'auto'; "
                                       "default: start a local one)")
    cpus_per_run: int | None = option(None, "--launcher ray: give each run N CPUs instead of one GPU")

    @property
    def device_list(self) -> list[str] | None:
        return None if self.devices is None else [d.strip() for d in self.devices.split(",") if d.strip()]


@dataclass(frozen=True)
class ExperimentArgs:
    """The command line of `python -m experiments` (`app.cli` makes the flags from these fields), frozen; the
    launcher's flags in `launch`."""

    sweep: str = option(None, "which sweep to run ('all': every one whose inputs exist; the others say what they "
                              "wait for)", positional=True, choices=tuple(sorted(SWEEPS) + ["all"]))
    tiny: bool = option(False, "CPU smoke run: random-init tiny model, the small data in experiments/tiny_data, 1 "
                               "epoch, trimmed sweep")
    dry_run: bool = option(False, "list the runs and estimate their cost: tokens, CPU time (a measured probe), one "
                                  "GPU (FLOP- and launch-bound), start-ups, Gemini requests; run nothing (teachers "
                                  "without files: planned as if they existed)")
    stated_rates: bool = option(False, "--dry-run: price the CPU with the stated rates of experiments/estimate.py "
                                       "(STATED_CPU) instead of a probe measured now (deterministic)")
    markdown: bool = option(False, "--dry-run: print only the cost table in markdown, one row per sweep "
                                   "(docs/study.md's)")
    seeds: int = option(1, f"runs per setting (seeds 11711, 11712, ...), at most {MAX_SEEDS}")
    out: str | None = option(None, "folder of the CSV, table and plots (default: results, results/tiny under "
                                   "--tiny)")
    runs_dir: str | None = option(None, "folder of the run folders (default: checkpoints/experiments, "
                                        "checkpoints/experiments-tiny under --tiny)")
    model: str | None = option(None, "base model for every run (default: gpt2; tiny under --tiny)")
    data_dir: str | None = option(None, "course data folder (default: finetune's; experiments/tiny_data/tasks "
                                        "under --tiny)")
    synthetic_dir: str | None = option(None, "teachers sweep: folder of <teacher>.jsonl files from distill.generate "
                                             "(default under --tiny: experiments/tiny_data/synthetic)")
    finetune_args: str = option("", "extra finetune flags for every run, one quoted string (e.g. '--device cuda:1 "
                                    "--compile' or '--offline': a value starting with -- is taken as the value)")
    isolation: str | None = option(None, "run each finetune in a fresh subprocess (default) or in this process "
                                         "(default under --tiny: saves the interpreter start-up per run)",
                                   choices=("subprocess", "in-process"))
    report_only: bool = option(False, "run nothing; rebuild the CSV, table and plots")
    bootstrap: int = option(SAMPLES, "bootstrap resamples per interval")
    no_progress: bool = option(False, "hide the sweep's progress bar")
    launch: LaunchArgs = field(default_factory=LaunchArgs)


GROUPS = (cli.Group("sweep", ExperimentArgs, "the sweep"),
          cli.Group("launch", LaunchArgs, "where the runs run (docs/study.md, 'Beyond one machine')"))


def parse_args(argv: list[str] | None = None) -> ExperimentArgs:
    """The command line: the sweep's flags, the launcher's in `launch`."""
    p = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawTextHelpFormatter)
    cli.add_groups(p, GROUPS)
    ns = p.parse_args(attach_values(sys.argv[1:] if argv is None else argv))
    return cli.build(GROUPS[0], {**cli.given(ns, GROUPS[0]), "launch": cli.build(GROUPS[1], cli.given(ns, GROUPS[1]))})


VALUE_FLAGS = ("--finetune-args",)  # their value is a command line of its own, which may start with --


def attach_values(argv: list[str]) -> list[str]:
    """`--finetune-args '--offline'` as `--finetune-args=--offline`: argparse would read a value that starts
    with -- as a flag of its own and say the flag has no value."""
    out, rest = [], list(argv)
    while rest:
        token = rest.pop(0)
        if token == "--":  # everything after is positional
            return out + [token] + rest
        if token in VALUE_FLAGS and rest:
            token = f"{token}={rest.pop(0)}"
        out.append(token)
    return out


def check_settings(args: ExperimentArgs) -> SweepOptions:
    """Every check of the command line, before any work (one `error:` line each); returns the sweeps' options."""
    check_launch(args)
    if (args.markdown or args.stated_rates) and not args.dry_run:
        raise UserError("--markdown and --stated-rates shape a cost estimate; they need --dry-run")
    if args.bootstrap < 1:  # else every interval of the report, written after the runs, is numpy's traceback
        raise UserError(f"--bootstrap {args.bootstrap}: expected an integer >= 1")
    try:
        finetune_args = shlex.split(args.finetune_args)
    except ValueError as e:  # an unclosed quote or a trailing backslash: shlex's reason, on the flag's line
        raise UserError(f"--finetune-args {args.finetune_args}: cannot split it as a shell would ({e})") from None
    opts = SweepOptions(tiny=args.tiny, seeds=args.seeds, model=args.model, data_dir=args.data_dir,
                        synthetic_dir=args.synthetic_dir, finetune_args=finetune_args, plan_missing=args.dry_run)
    opts.seed_list()
    cli.options_from_argv(opts.finetune_args)  # a flag finetune does not know: argparse's error, now
    return opts


def check_launch(args: ExperimentArgs) -> None:
    """The launcher flags, checked before any work (one `error:` line each)."""
    a = args.launch
    for flag, value in (("--jobs", a.jobs), ("--threads", a.threads), ("--cpus-per-run", a.cpus_per_run)):
        if value is not None and value < 1:
            raise LaunchError(f"{flag} {value}: expected an integer >= 1")
    if a.devices is not None and not a.device_list:
        raise LaunchError("--devices: expected a comma-separated list such as cuda:0,cuda:1")
    for device in a.device_list or ():
        try:
            parse_device(device)
        except FieldError as e:
            raise LaunchError(f"--devices {e.value}: expected {e.expected}") from None
        if device == "auto":
            raise LaunchError("--devices auto: name the devices (cpu, cuda:0, cuda:1, ...)")
    ray = a.launcher == "ray"
    if ray and a.devices:
        raise LaunchError("--devices is for --launcher local; on Ray each run asks for one GPU (or --cpus-per-run "
                          "CPUs) and Ray picks which")
    if ray and (not args.dry_run or a.jobs is None):
        require_ray()
    for flag, value in (("--address", a.address), ("--cpus-per-run", a.cpus_per_run)):
        if value is not None and not ray:
            raise LaunchError(f"{flag} is a --launcher ray setting; add --launcher ray")
    if (a.jobs or 1) > 1 and args.isolation == "in-process" and not ray:
        raise LaunchError(f"--jobs {a.jobs} runs each run in its own subprocess; --isolation in-process runs them "
                          "one at a time in this process: choose one")


def isolation(args: ExperimentArgs) -> str:
    """How the runs start: --jobs above 1 and Ray run each in a subprocess, whatever --tiny's default."""
    if (args.launch.jobs or 1) > 1 or args.launch.launcher == "ray":
        return "subprocess"
    return args.isolation or ("in-process" if args.tiny else "subprocess")


def make_launcher(args: ExperimentArgs) -> Launcher:
    """The launcher the flags ask for, built once for every sweep of the command."""
    a, progress = args.launch, not args.no_progress
    if a.launcher == "ray":
        return Ray(a.address, a.cpus_per_run, a.threads, a.jobs, progress)
    jobs = a.jobs or 1
    devices = a.device_list or (default_devices() if jobs > 1 else [None])
    executor = in_process if isolation(args) == "in-process" else in_subprocess
    return Local(executor, jobs, devices[:1] if jobs == 1 else devices, a.threads, progress)


@functools.lru_cache(maxsize=16)
def _defaults(task: str, method: str) -> dict:
    return defining(cli.settings_of({"data.task": task, "model.method": method}))


def shown(settings: RunSettings) -> str:
    """A run as its task, method and the results-defining settings that differ from their defaults."""
    base = _defaults(settings.data.task, settings.model.method)
    return " ".join(f"{k}={v}" for k, v in defining(settings).items()
                    if k in ("data.task", "model.method") or base.get(k) != v)


def runs_root(args: ExperimentArgs, sweep: str) -> Path:
    return Path(args.runs_dir or ("checkpoints/experiments-tiny" if args.tiny else "checkpoints/experiments")) / sweep


def out_dir(args: ExperimentArgs) -> Path:
    return Path(args.out or ("results/tiny" if args.tiny else "results"))


def make_folder(path: Path, flag: str, what: str) -> None:
    """`path` and its parents made, or one error line naming `flag` (a file in the way, no permission)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot make {what} there ({e.strerror})") from None


def dry_run(sweeps: list[Sweep], args: ExperimentArgs, launcher: Launcher) -> None:
    """Print each sweep's runs, what each would do and what they cost (CPU rates probed once, on the device of the
    first run at the threads a run gets one at a time), then the figures of every sweep together, or under
    --markdown only the cost table."""
    a, rates, workers, rows, walls = args.launch, None, None, [], []
    with contextlib.redirect_stdout(io.StringIO()) if args.markdown else contextlib.nullcontext():
        for sweep in sweeps:
            root = runs_root(args, sweep.name)
            for wait in sweep.waits:
                print(f"sweep {sweep.name} waits: {wait}")
            if not sweep.runs:
                continue
            print(f"sweep {sweep.name}: {len(sweep.runs)} runs into {root}/" + (f"  ({sweep.note})" if sweep.note
                                                                                 else ""))
            for run, state in plan(sweep.runs, root):
                print(f"  [{state}] {run.name}: {shown(run.settings)}")
            first = sweep.runs[0].settings
            device = str(parse_device(first.hardware.device))  # what the runs' settings name, resolved here
            if rates is None:
                rates = stated_rates() if args.stated_rates else \
                    measured_rates(first.model.model, (a.device_list or [device])[0], threads_per_run(1, a.threads))
                if rates.warning:
                    print(rates.warning, file=sys.stderr)
            cost = sweep_cost(sweep.runs, rates, isolation(args))
            bill, usd = gemini_bill(sweep.runs, sweep.synthetic_needs)
            print("\n".join(cost_lines(cost, rates) + bill))
            rows.append((sweep.name, cost, usd))
            if a.jobs is not None or a.launcher == "ray":  # the work spread over the workers
                workers = workers or launcher.workers(device)
                lines, wall = wall_estimate(cost, rates, workers)
                print("\n".join(lines))
                walls.append(wall)
    total, usd = sum((c for _, c, _ in rows), Cost()), sum(u for _, _, u in rows)
    if args.markdown and rows:
        print(markdown_table(rows + ([("all", total, usd)] if len(rows) > 1 else []), rates), end="")
    elif len(rows) > 1:
        print(f"all sweeps ({len(rows)} with runs):")
        print("\n".join(cost_lines(total, rates)))
        print(f"  Gemini in all: ~${usd:.2f} (see the teachers sweep above)")
        if walls:
            print(f"  ~{format_hours(sum(walls))} wall time on {workers.n} workers (sweeps one after the other)")


def run_one(sweep: Sweep, args: ExperimentArgs, launcher: Launcher) -> bool:
    """Run and report one sweep; False if a run failed."""
    root = runs_root(args, sweep.name)
    for wait in sweep.waits:
        print(f"sweep {sweep.name} waits: {wait}")
    if not sweep.runs:
        return True
    failed: dict[str, str] = {}
    if not args.report_only:
        try:
            result = launcher.launch(sweep.runs, root)
        except RunFolderConflict as e:  # the user's call: a message, not a traceback
            raise SystemExit(f"error: {e}") from None
        failed = result.failed
        print(f"sweep {sweep.name}: {len(result.started)} run(s) started, {len(result.skipped)} already finished, "
              f"{len(result.failed)} failed")
        for run_name, error in failed.items():
            print(f"  FAILED {run_name}: {error}", file=sys.stderr)
    paths = write_report(sweep, root, out_dir(args), samples=args.bootstrap, failed=failed)
    print(paths["md"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return not failed


@exits_on_user_error
def main(argv: list[str] | None = None) -> int:
    """`python -m experiments`: a bad setting or input is one `error:` line and exit code 1."""
    # SIGTERM (a scheduler or `kill` stopping the sweep) as Ctrl-C: the runs are stopped cleanly. Only the main
    # thread may install a handler (a test may call main from another).
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        return _main(argv)
    except KeyboardInterrupt:  # the runs were stopped; their folders keep every finished epoch
        print("\nsweep stopped: finished runs are kept and unfinished ones resume from their last epoch when the "
              "same command is run again", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    opts = check_settings(args)
    names = sorted(SWEEPS) if args.sweep == "all" else [args.sweep]
    sweeps = [build_sweep(name, opts) for name in names]  # all checked before any runs
    if args.sweep != "all" and not sweeps[0].runs and not args.report_only:
        raise SystemExit(f"error: sweep {args.sweep} cannot start; it waits for: " + "; ".join(sweeps[0].waits))
    if not args.dry_run and not args.report_only:  # every shared input, before the first run of any sweep
        for sweep in sweeps:
            root = runs_root(args, sweep.name)
            check_preconditions(sweep.name, [run for run, state in plan(sweep.runs, root) if state != "done"])
    if args.report_only:  # every run's scored files, before any report is rewritten
        for sweep in sweeps:
            check_sweep_files(sweep, runs_root(args, sweep.name))
    if not args.dry_run:  # the folders it writes, refused now rather than after hours of runs
        make_folder(out_dir(args), "--out", "the results folder")
        for sweep in sweeps if not args.report_only else ():
            if sweep.runs:
                make_folder(runs_root(args, sweep.name), "--runs-dir", "the run folders")
    launcher = make_launcher(args)
    if args.dry_run:
        dry_run(sweeps, args, launcher)
        return 0
    ok = [run_one(sweep, args, launcher) for sweep in sweeps]
    print(f"wrote {write_index(out_dir(args))}")
    return 0 if all(ok) else 1

if __name__ == "__main__":
    sys.exit(main())

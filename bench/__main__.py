"""One benchmark command: the bench modules listed in `MODULES`, one table, one JSON file.

    python -m bench [--quick | --full] [--device cuda] [--only core lora] [--out bench/results.json]
    python -m bench --only decode quant llama     # every decoding line, without the training lines

Every module exposes the same entry point, `run(quick: bool, device: str, threads: int) -> list[Row]`. A module
that fails is reported in the table's notes and in the JSON's meta, the others still run, and the command exits 1;
a module that cannot run here (`ModuleSkipped`, e.g. llama.cpp not installed) is noted as skipped, and is no failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from . import bench_core, bench_llama, bench_lora, bench_quant
from .bound import cpu_flags, print_bounds
from .common import ModuleSkipped, Row, print_table, set_threads, write_json

# Every bench module, in table order, by the name `--only` takes; each one's `run(quick, device, threads)`.
MODULES: dict[str, Callable[[bool, str, int], list[Row]]] = {
    "core": bench_core.run,
    "decode": bench_core.run_decoding,  # core's generation lines alone (they are in `core` too)
    "lora": bench_lora.run,
    "quant": bench_quant.run,
    "llama": bench_llama.run,
}
# What a run without `--only` runs: `decode` is a part of `core`, for a decoding change alone.
DEFAULT = ("core", "lora", "quant", "llama")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"platform": platform.platform(), "cpu": cpu, "python": platform.python_version(), **cpu_flags()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="minigpt2 against transformers/peft, side "
                                "by side on the same weights, batch, threads and precision.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a few minutes on 2 CPU cores: smaller batches, "
                      "shorter decodes, fewer timed calls")
    mode.add_argument("--full", action="store_true",
                      help="the full sizes (the default): 8 x 128 training batches, 128-token decodes")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available; bf16 autocast on "
                   "CUDA devices that support it)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    p.add_argument("--only", nargs="+", default=None, choices=list(MODULES), metavar="TOPIC",
                   help=f"run only these modules (of {', '.join(MODULES)}), e.g. core lora")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results.json"),
                   help="where to write the JSON results")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = set_threads(args.threads)
    wanted = [t for t in MODULES if t in (args.only or DEFAULT)]
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    rows, notes, meta = run_modules(wanted, args.quick, device, threads, command, args.out)
    print_table(rows)
    print_bounds(rows)
    for topic, note in notes.items():
        print(f"note: {topic}: {note}")
    for topic, why in meta(True)["skipped"].items():
        print(f"note: {topic}: skipped: {why}")
    write_json(rows, args.out, meta(True))
    print(f"wrote {args.out}")
    return 1 if notes else 0


def run_modules(wanted: list[str], quick: bool, device: str, threads: int, command: str, out: str
                ) -> tuple[list[Row], dict[str, str], Callable[[bool], dict[str, Any]]]:
    """Run the `wanted` modules in turn, writing the JSON after each; returns the rows, a note per failed
    module, and the meta record (finished or not) of the run."""
    rows: list[Row] = []
    notes: dict[str, str] = {}
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    t0 = time.time()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    def meta(finished: bool) -> dict[str, Any]:
        return {
            "command": command,
            "mode": "quick" if quick else "full",
            "device": device,
            "threads": threads,
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "peft": _version("peft"),
            "date": started,
            "seconds": round(time.time() - t0, 1),
            "machine": machine(),
            "modules": wanted,
            "module_seconds": dict(seconds),
            "model": "gpt2 (124M, random weights)",  # every module's decode and step lines, quick or full
            "notes": dict(notes),
            "skipped": dict(skipped),
            "finished": finished,
        }

    for topic in wanted:
        print(f"[bench] {topic} ...", file=sys.stderr)
        t_module = time.time()
        try:
            rows += MODULES[topic](quick, device, threads)
        except ModuleSkipped as e:  # e.g. an optional peer not installed: said, and not a failure
            skipped[topic] = str(e)
        except Exception as e:  # one broken module must not lose the others' figures
            notes[topic] = f"failed: {type(e).__name__}: {e}"
            traceback.print_exc()
        seconds[topic] = round(time.time() - t_module, 1)
        set_threads(threads)  # a module may have changed them
        # written after every module, so that a run stopped part way keeps what it measured ("finished": false)
        write_json(rows, out, meta(finished=False))
    return rows, notes, meta


def _version(package: str) -> str | None:
    try:
        return importlib.import_module(package).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())

"""One benchmark command: every `bench/bench_*.py` module, one table, one JSON file.

    python -m bench [--quick | --full] [--device cuda] [--only core lora] [--out bench/results.json]

Each module exposes `run(quick) -> list[Row]` (and may accept `device=`). A module that is missing or fails is
reported in the table's notes and in the JSON's meta, and the others still run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import inspect
import platform
import pkgutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from .common import Row, print_table, set_threads, write_json

# The modules the issues ask for, in table order; any other bench_*.py found is run after them.
EXPECTED = ["core", "lora", "quant"]


def discover() -> list[str]:
    """Topics of the `bench_<topic>.py` modules present in this package."""
    here = Path(__file__).resolve().parent
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))


def run_module(topic: str, quick: bool, device: str) -> list[Row]:
    module = importlib.import_module(f"bench.bench_{topic}")
    kwargs: dict[str, Any] = {}
    if "device" in inspect.signature(module.run).parameters:
        kwargs["device"] = device
    return module.run(quick, **kwargs)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"platform": platform.platform(), "cpu": cpu, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description="minigpt2 against transformers/peft, side "
                                "by side on the same weights, batch, threads and precision.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a few minutes on 2 CPU cores: smaller batches, "
                      "shorter decodes, fewer timed calls")
    mode.add_argument("--full", action="store_true", help="the issues' sizes (the default)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available; bf16 autocast on "
                   "CUDA devices that support it)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    p.add_argument("--only", nargs="+", default=None, metavar="TOPIC", help="run only these modules, e.g. core lora")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results.json"),
                   help="where to write the JSON results")
    args = p.parse_args(argv)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = set_threads(args.threads)
    found = discover()
    wanted = args.only or EXPECTED + [t for t in found if t not in EXPECTED]
    rows: list[Row] = []
    notes: dict[str, str] = {}
    t0 = time.time()
    for topic in wanted:
        if topic not in found:
            notes[topic] = f"bench/bench_{topic}.py not found: skipped"
            print(f"[bench] {notes[topic]}", file=sys.stderr)
            continue
        print(f"[bench] {topic} ...", file=sys.stderr)
        try:
            rows += run_module(topic, args.quick, device)
        except Exception as e:  # one broken module must not lose the others' figures
            notes[topic] = f"failed: {type(e).__name__}: {e}"
            traceback.print_exc()
        set_threads(threads)  # a module may have changed them
    print_table(rows)
    for topic, note in notes.items():
        print(f"note: {topic}: {note}")
    meta = {
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mode": "quick" if args.quick else "full",
        "device": device,
        "threads": threads,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - t0, 1),
        "machine": machine(),
        "modules": [t for t in wanted if t in found],
        "notes": notes,
    }
    write_json(rows, args.out, meta)
    print(f"wrote {args.out}")
    return 1 if any(n.startswith("failed") for n in notes.values()) else 0


def _version(package: str) -> str | None:
    try:
        return importlib.import_module(package).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())

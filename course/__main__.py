"""`python -m course fetch`: download the public sources and write the course-format files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from minigpt2.errors import UserError

from .fetch import fetch
from .files import TASKS
from .readers import data_dir


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code (1 with one `error:` line for bad input, a failed download or a
    file it cannot write: any `UserError`)."""
    parser = argparse.ArgumentParser(prog="python -m course",
                                     description="Fetch the task data from public sources and write it in the "
                                                 "course's file formats.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="download the public sources and write the course-format files")
    p.add_argument("--task", default="all", choices=[*TASKS, "all"], help="which task's data to fetch (default all)")
    p.add_argument("--data-dir", type=Path, default=data_dir(),  # where the readers look: an empty variable is unset
                   help="folder to write the files into (default $MINIGPT2_DATA_DIR, else ./data)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="download cache (default $MINIGPT2_CACHE or ~/.cache/minigpt2)")
    p.add_argument("--offline", action="store_true",
                   help="use only what is in the cache; fail with instructions instead of downloading")
    args = parser.parse_args(argv)
    try:
        for path in fetch(args.task, args.data_dir, offline=args.offline, cache=args.cache_dir):
            print(path)
    except UserError as e:  # DownloadError, DataFormatError, WriteError (a data folder it cannot write), ...
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

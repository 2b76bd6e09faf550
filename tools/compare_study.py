"""Compare two results folders of `python -m experiments` (e.g. before and after a change to the report).

    python tools/compare_study.py BEFORE AFTER [--provenance]

Every `<sweep>.csv` in either folder: its rows as dicts (the same columns, the same values; number cells equal to
1e-9, so 16 and 16.0 are the same value, and a column order may change); every `<sweep>.md`: line by line. Prints
each difference and exits 1 when there is one, 0 when the folders agree. Runs made again (not a report rebuilt
over the same run folders) differ in where and when they ran: without `--provenance` those cells and lines (the
run and data folders, the code's commit, the wall time) are left out of the comparison and other absolute paths
(a synthetic file in another checkout) compare by file name; every score, interval, count and setting is still
compared.
"""

from __future__ import annotations

import csv
import math
import re
import sys
from pathlib import Path

# Where and when a run ran: cells and markdown lines that differ between two makings of the same runs.
PROVENANCE_COLUMNS = {"run_dir", "code", "wall_s", "arg_data_dir", "arg_tokenizer_dir", "arg_out_dir"}
PROVENANCE_LINE = re.compile(r"run folders: |Code of the runs: |^- `[0-9a-f]{7,40}`|commit [0-9a-f]{40}")
SKIP: set[str] = set()  # the columns left out (PROVENANCE_COLUMNS unless --provenance)


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    if SKIP and a.startswith("/") and b.startswith("/"):  # the same file in another checkout: by its name
        return Path(a).name == Path(b).name
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)


def compare_csv(before: Path, after: Path) -> list[str]:
    """The differences between two CSVs, compared as lists of row dicts."""
    with open(before, newline="", encoding="utf-8") as f:
        old = list(csv.DictReader(f))
    with open(after, newline="", encoding="utf-8") as f:
        new = list(csv.DictReader(f))
    out = []
    cols_old, cols_new = (set(rows[0]) if rows else set() for rows in (old, new))
    if cols_old != cols_new:
        out.append(f"{after.name}: columns only before {sorted(cols_old - cols_new)}, only after "
                   f"{sorted(cols_new - cols_old)}")
    if len(old) != len(new):
        out.append(f"{after.name}: {len(old)} rows before, {len(new)} after")
    for i, (a, b) in enumerate(zip(old, new)):
        for key in sorted((set(a) & set(b)) - SKIP):
            if not _same(a[key], b[key]):
                out.append(f"{after.name} row {i} ({a.get('run')}) {key}: {a[key]!r} -> {b[key]!r}")
    return out


def compare_md(before: Path, after: Path) -> list[str]:
    """The lines that differ between two markdown files."""
    old, new = (p.read_text(encoding="utf-8").splitlines() for p in (before, after))
    out = [f"{after.name} line {i + 1}:\n  - {a}\n  + {b}" for i, (a, b) in enumerate(zip(old, new))
           if a != b and not (SKIP and PROVENANCE_LINE.search(a) and PROVENANCE_LINE.search(b))]
    if len(old) != len(new):
        out.append(f"{after.name}: {len(old)} lines before, {len(new)} after")
    return out


def compare(before: Path, after: Path) -> list[str]:
    """Every difference between the CSVs and markdown files of two results folders."""
    out = []
    for ext, how in (("csv", compare_csv), ("md", compare_md)):
        names = sorted({p.name for folder in (before, after) for p in folder.glob(f"*.{ext}")})
        for name in names:
            missing = [str(folder / name) for folder in (before, after) if not (folder / name).is_file()]
            out += [f"{m}: missing" for m in missing] or how(before / name, after / name)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    SKIP.clear()
    if "--provenance" in args:
        args.remove("--provenance")
    else:
        SKIP.update(PROVENANCE_COLUMNS)
    if len(args) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    before, after = map(Path, args)
    diffs = compare(before, after)
    for line in diffs:
        print(line)
    print(f"{len(diffs)} difference(s) between {before} and {after}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())

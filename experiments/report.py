"""A sweep's results as files, generic over its declaration: `<sweep>.csv` (one row per run), `<sweep>.md` (the
tables, `experiments.tables`) and PNG plots (`experiments.plots`). Rows come from the run folders alone, so a
report can be rebuilt at any time, also from a half-done sweep (unfinished runs have status `missing`).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from app.runfolder import saved_settings
from app.cli import flat
from course.formats import FORMATS, label_format
from minigpt2.download import sha256_file
from minigpt2.errors import UserError
from minigpt2.metrics import MIN_INTERVAL_N

from . import plots, tables
from .metrics import COPYING_METRICS, Row, figures, group_seeds, measures
from .references import majority_reference
from .runner import is_finished, read_metrics
from .stats import SAMPLES, run_data_folder, run_interval, zero_shot_scores
from .sweeps import Sweep


class ScoredFileChanged(UserError, ValueError):
    """A file a run scored or scored against differs from the one it recorded (edited, replaced or removed since)."""


# ---------------------------------------------------------------------------------------------- rows

def model_bytes(run_dir: Path, metrics: dict[str, Any]) -> int | None:
    """Bytes on disk of the run's model at its precision: the packed checkpoint finetune writes for a
    non-fp32 run (metrics "quantization"), else the fp32 best/ safetensors."""
    packed = metrics.get("quantization") or {}
    if isinstance(packed.get("file_bytes"), int):
        return packed["file_bytes"]
    files = list((run_dir / "best").glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) or None


# Optional figures a sweep's rows carry (`Sweep.extras`): name -> its value from a finished run folder.
EXTRAS: dict[str, Callable[[Path, dict], Any]] = {"model_bytes": model_bytes}


def zero_shot_accuracy(run_dir: Path, output: str) -> float | None:
    """Accuracy from a `minigpt2.evaluate --zero-shot` result file (a JSON object with an accuracy)."""
    try:
        data = json.loads((run_dir / output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for source in (data, data.get("dev", {}) if isinstance(data, dict) else {}):
        if isinstance(source, dict) and isinstance(source.get("accuracy"), (int, float)):
            return float(source["accuracy"])
    return None


def compute_dtype(settings: Any, device: str | None = None) -> str:
    """The number format a run's matmuls ran in: fp64/bf16 models as such, fake-quant formats simulated in fp32,
    fp32 under bf16 autocast on a GPU (`device`: where it ran, config.json's) unless `--autocast off`."""
    precision = settings.precision.format
    if precision in ("fp64", "bf16"):
        return precision
    if precision != "fp32":
        return f"fp32 ({precision} fake-quant)"
    if settings.autocast != "off" and str(device or settings.hardware.device).startswith("cuda"):
        return "bf16 autocast"
    return "fp32"


def _majority_of_scored(run_dir: Path, metrics: dict[str, Any], task: str, samples: int) -> Row:
    """The majority-class accuracy of the dev rows the run scored: the run's own figure when it has one, with a
    bootstrap interval where the labels are readable."""
    own = (metrics.get("majority") or {}).get("dev")
    try:
        ids = list(label_format(task).read_predictions(run_dir / metrics["dev_predictions"]))
        maj = majority_reference(task, run_data_folder(run_dir), "dev", ids, samples)
    except (OSError, ValueError, KeyError):
        maj = None
    if maj is None:
        return {} if own is None else {"majority": float(own), "majority_low": math.nan, "majority_high": math.nan}
    return {"majority": float(own) if own is not None else maj.value, "majority_low": maj.low,
            "majority_high": maj.high}


def _test_score(run_dir: Path, metrics: dict[str, Any], samples: int) -> Row:
    """Test score of the best epoch (the run's own figure, else its test predictions re-scored where the labels lie
    beside the data), with a bootstrap interval; NaN without labels."""
    row: Row = {"test_score": math.nan, "test_low": math.nan, "test_high": math.nan, "n_test": None}
    own = (metrics.get("test") or {}).get(metrics.get("metric"))
    try:
        interval = run_interval(run_dir, samples=samples, split="test")
    except (OSError, ValueError, KeyError) as e:
        interval = None
        row["test_note"] = f"test predictions not re-scored: {e}"
    if interval is not None:
        row.update(test_score=interval.value, test_low=interval.low, test_high=interval.high, n_test=interval.n)
    if isinstance(own, (int, float)):
        row["test_score"] = float(own)
    return row


def check_scored_files(run_dir: Path, metrics: dict[str, Any]) -> None:
    """Every file the run scored and scored against (metrics.json's "files_sha256", "references_sha256") must
    still be the file it was: an edited one would move intervals and plots but not the recorded point score."""
    for name, recorded in (metrics.get("files_sha256") or {}).items():
        _check_unchanged(run_dir / name, recorded, run_dir, "its run scored it", "restore the file the run wrote")
    for entry in (metrics.get("references_sha256") or {}).values():
        _check_unchanged(reference_path(run_dir, entry), entry["sha256"], run_dir, "its run scored against it",
                         "restore the file the run scored against")


def reference_path(run_dir: Path, entry: dict[str, Any]) -> Path:
    """Where a recorded reference file is now (`app.runfolder.references_sha256`): that very file, or the task's
    file of that split in the run's data folder as the report reads it (`stats.run_data_folder`)."""
    if entry.get("exact") or entry.get("task") not in FORMATS:
        return Path(entry["file"])
    folder = run_data_folder(run_dir)
    return FORMATS[entry["task"]].references_file(folder, entry["split"]) or folder / Path(entry["file"]).name


def _check_unchanged(path: Path, recorded: str, run_dir: Path, since: str, restore: str) -> None:
    now = sha256_file(path) if path.is_file() else None
    if now != recorded:
        raise ScoredFileChanged(
            f"{path}: {'changed' if now else 'missing'} since {since} (sha256 {recorded} recorded in "
            f"{run_dir / 'metrics.json'}, {now or 'no file'} now); {restore}, or run {run_dir} again with "
            "--overwrite")


def check_sweep_files(sweep: Sweep, root: str | Path) -> None:
    """`check_scored_files` for every finished run of the sweep: a rebuild checks them all before writing anything."""
    for run in sweep.runs:
        run_dir = Path(root) / run.name
        if is_finished(run_dir):
            check_scored_files(run_dir, read_metrics(run_dir) or {})


UNKNOWN_CODE = "unknown (the run recorded no code version)"


def code_label(config: dict[str, Any]) -> str:
    """The code a run ran, from its config.json's fingerprint: 'commit <sha>' (', work tree with uncommitted
    changes' when a tracked file differed), 'package <version> (no git checkout)', or UNKNOWN_CODE."""
    code = (config.get("fingerprint") or {}).get("code")
    if not isinstance(code, dict):
        return UNKNOWN_CODE
    if code.get("git_commit"):
        return f"commit {code['git_commit']}" + (", work tree with uncommitted changes" if code.get("git_dirty")
                                                 else "")
    return f"package {code.get('package')} (no git checkout)"


def code_summary(labels: Sequence[str]) -> tuple[list[tuple[str, int]], bool]:
    """The distinct code versions of a set of runs with how many runs each (most first), and whether the set is
    mixed: more than one version (an unknown one included), or any run from a work tree with changes."""
    counts = Counter(labels)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ranked, len(ranked) > 1 or any("uncommitted" in label for label in counts)


def code_block(rows: Sequence[Row]) -> list[str]:
    """The markdown lines that say which code the finished runs ran, flagging a mixed sweep."""
    ranked, mixed = code_summary([r["code"] for r in rows if r["status"] == "done" and r.get("code")])
    if not ranked:
        return []
    out = ["Code of the runs: " + "; ".join(f"{label} ({n} run{'s' if n > 1 else ''})" for label, n in ranked)
           + ".\n"]
    if mixed:
        out.append("**Warning:** mixed code: the runs come from more than one code version or from a work tree "
                   "with uncommitted changes; their figures may not be comparable.\n")
    return out


def zero_shot_row(run_dir: Path, output: str, samples: int = SAMPLES) -> Row:
    """The zero-shot check of a run folder: its accuracy with a bootstrap interval over the rows its predictions
    file scored (the result file's figure where no label is found), and the majority class of those rows."""
    data = json.loads((run_dir / output).read_text(encoding="utf-8"))
    row: Row = {"zero_shot_accuracy": zero_shot_accuracy(run_dir, output), "zero_shot_n": data.get("examples")}
    scores = zero_shot_scores(run_dir, output)  # the point and its interval from the one predictions file
    if scores.ids:
        acc = scores.interval(samples)
        row.update(zero_shot_accuracy=acc.value, zero_shot_low=acc.low, zero_shot_high=acc.high, zero_shot_n=acc.n)
        maj = majority_reference(data.get("task", "quora"), run_data_folder(run_dir), data.get("split", "dev"),
                                 scores.ids, samples)
        if maj is not None:
            row.update(majority=maj.value, majority_low=maj.low, majority_high=maj.high)
    return row


def run_row(sweep: Sweep, run_index: int, root: Path, samples: int = SAMPLES, failed: dict[str, str] | None = None
            ) -> Row:
    """One CSV row: the run's knobs (read from its settings by the sweep's declaration), status, dev score with its
    bootstrap interval, the declared figures, and every finetune setting by flag name (`arg_*`)."""
    run = sweep.runs[run_index]
    run_dir = root / run.name
    row: Row = {"sweep": sweep.name, "run": run.name, **sweep.knob_values(run)}
    done = is_finished(run_dir)
    row["status"] = "done" if done else ("failed" if failed and run.name in failed else "missing")
    row.update(metric=None, dev_score=math.nan, ci_low=math.nan, ci_high=math.nan, n_dev=None,
               trainable_params=None, total_params=None, best_epoch=None, wall_s=None)
    if done:
        metrics = read_metrics(run_dir) or {}
        check_scored_files(run_dir, metrics)  # before any figure is read from them
        settings = saved_settings(run_dir)
        row.update(metric=metrics.get("metric"), dev_score=metrics["dev"][metrics["metric"]], **figures(metrics))
        try:  # a run whose files cannot be re-scored keeps its score, without an interval, and says why
            interval = run_interval(run_dir, samples=samples)
            row.update(ci_low=interval.low, ci_high=interval.high, n_dev=interval.n)
            if metrics.get("metric") == "accuracy":  # the bar a classifier must clear on these very rows
                row.update(_majority_of_scored(run_dir, metrics, settings.data.task, samples))
        except (OSError, ValueError, KeyError) as e:
            row["note"] = f"no interval: {e}"
            folder = run_data_folder(run_dir)
            if not folder.is_dir() or isinstance(e, FileNotFoundError):
                row["data_missing"] = str(folder)
        row.update(_test_score(run_dir, metrics, samples))
        row.update(measures(metrics))
        row.update(measures(metrics, COPYING_METRICS))
        row.update({name: EXTRAS[name](run_dir, metrics) for name in sweep.extras})
        for ev in run.evaluations:  # zero-shot checks: the accuracy, and its interval from the same file
            row[ev.name] = zero_shot_accuracy(run_dir, ev.output) if (run_dir / ev.output).is_file() else None
            if (run_dir / ev.output).is_file():
                try:
                    row["zero_shot"] = zero_shot_row(run_dir, ev.output, samples)
                    row[ev.name] = row["zero_shot"]["zero_shot_accuracy"]  # the table's point: the same file's
                except (OSError, ValueError, KeyError) as e:
                    row["note"] = f"zero-shot check without interval: {e}"
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        row["compute"] = compute_dtype(settings, config.get("device"))
        row["code"] = code_label(config)
        row.update({f"arg_{k}": v for k, v in flat(settings).items()})
    row["run_dir"] = str(run_dir)
    return row


def collect(sweep: Sweep, root: str | Path, samples: int = SAMPLES, failed: dict[str, str] | None = None
            ) -> list[Row]:
    return [run_row(sweep, i, Path(root), samples, failed) for i in range(len(sweep.runs))]


def write_csv(rows: Sequence[Row], path: str | Path) -> Path:
    """All rows; the columns are the union of the rows' keys, in first-seen order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                             for k, v in row.items()})
    return path


# ---------------------------------------------------------------------------------------------- all outputs

def write_report(sweep: Sweep, root: str | Path, out: str | Path, samples: int = SAMPLES,
                 failed: dict[str, str] | None = None) -> dict[str, Path]:
    """Write `<out>/<sweep>.csv`, `<out>/<sweep>.md`, `<out>/<sweep>.png` (and `<sweep>-nll.png` where the runs
    have a held-out NLL); returns their paths."""
    out = Path(out)
    rows = collect(sweep, root, samples, failed)
    points = group_seeds(rows, list(sweep.knobs))
    if sweep.best and (chosen := [p for p in points if p["seeds"]]):  # what a search over settings would choose
        max(chosen, key=lambda p: p["score"])["best"] = True
    paths = {"csv": write_csv(rows, out / f"{sweep.name}.csv")}
    done = sum(r["status"] == "done" for r in rows)
    spread = ("intervals: the mean over seeds with a 95% t-interval across seeds" if any(p["seeds"] > 1 for p in points)
              else "intervals: bootstrap-t 95% over the n examples (and over the samples of each prompt where "
                   f"there are several; none below n={MIN_INTERVAL_N})")
    text = [f"# {sweep.name}\n", f"{done} of {len(rows)} runs finished (run folders: {Path(root)}); {spread}.\n"]
    if sweep.note:
        text.append(f"Note: {sweep.note}.\n")
    text += [f"Waiting: {wait}.\n" for wait in sweep.waits]
    lost = sorted({r["data_missing"] for r in rows if r.get("data_missing")})
    if lost:  # never lose intervals silently: one line on the console, one in the report
        n = sum(bool(r.get("data_missing")) for r in rows)
        message = (f"data not found at {', '.join(lost)}: {n} run(s) shown without intervals "
                   "(pass --data-dir or set MINIGPT2_DATA_DIR to where the data now lies)")
        print(f"warning: sweep {sweep.name}: {message}", file=sys.stderr)
        text.append(f"**Warning:** {message}.\n")
    text += code_block(rows)
    if rows and rows[0].get("arg_model") == "tiny":
        text.append("Tiny random-init model: the figures test the machinery, not the study.\n")
    text += tables.sweep_tables(sweep, rows, points, samples)
    paths["md"] = out / f"{sweep.name}.md"
    paths["md"].write_text("\n".join(text), encoding="utf-8")
    paths.update(plots.write_plots(sweep, rows, points, out, samples))
    return paths

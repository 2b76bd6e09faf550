"""A sweep's results as files: `<sweep>.csv` (one row per run), `<sweep>.md` (the study-style table) and PNG plots.

Rows come from the run folders alone (config.json, metrics.json, the dev predictions), so a report can be
rebuilt at any time, also from a sweep that is half done: unfinished runs appear with status `missing`.

Plots are matplotlib figures (Agg backend, no display needed); every plotting function returns its `Figure`
so that tests can read its axes, and `save_figure` writes the axis labels into the PNG's metadata as well.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from distill.check import FORM_PARTS  # noqa: E402
from minigpt2.download import sha256_file  # noqa: E402
from minigpt2.errors import UserError  # noqa: E402
from minigpt2.metrics import MIN_INTERVAL_N  # noqa: E402

from .references import (REAL_SONNETS, REFERENCE_NAMES, majority_reference,  # noqa: E402
                         sonnet_reference_copying, sonnet_reference_forms, sonnet_reference_intervals,
                         sonnet_reference_nll)
from .runner import evaluation_done, is_finished, read_metrics  # noqa: E402
from .stats import (SAMPLES, ExampleScores, Interval, bootstrap_accuracy,  # noqa: E402
                    mean_std, paired_difference, read_task_predictions, run_data_folder, run_interval, run_scores,
                    split_labels, t_interval)
from .sweeps import ZERO_SHOT_QUORA, Sweep  # noqa: E402

# The study's dev and test figures (the baseline table and the HTML report show them beside this reproduction's).
STUDY = {"sst": 0.513, "cfimdb": 0.971, "quora": 0.911, "sonnet": 41.97}
STUDY_TEST = {"sst": 0.546, "quora": 0.891, "sonnet": 41.078}
STUDY_DISTILLED_DEV_CHRF = 46.61  # the study's best distilled model (teachers sweep)
STUDY_DISTILLED_TEST_CHRF = 52.838
STUDY_LORA = {"rank": 256, "targets": "attn+mlp", "dev_chrf": 42.16, "trainable_params": 42.5e6}  # its best LoRA


class ScoredFileChanged(UserError, ValueError):
    """A file a run scored or scored against differs from the one it recorded (edited, replaced or removed since)."""

Row = dict[str, Any]


# ---------------------------------------------------------------------------------------------- rows

def model_bytes(run_dir: Path, metrics: dict[str, Any]) -> int | None:
    """Bytes on disk of the run's model at its precision: the packed checkpoint finetune writes for a
    non-fp32 run (metrics "quantization"), else the fp32 best/ safetensors."""
    packed = metrics.get("quantization") or {}
    if isinstance(packed.get("file_bytes"), int):
        return packed["file_bytes"]
    files = list((run_dir / "best").glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) or None


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


def compute_dtype(config: dict[str, Any]) -> str:
    """The number format a run's matmuls ran in, from its config.json: fp64/bf16 models as such, fake-quant
    formats simulated in fp32, fp32 under bf16 autocast on a GPU unless `--autocast off`."""
    args = config.get("args", {})
    precision = args.get("precision") or "fp32"
    if precision in ("fp64", "bf16"):
        return precision
    if precision != "fp32":
        return f"fp32 ({precision} fake-quant)"
    device = str(config.get("device") or args.get("device") or "cpu")
    if args.get("autocast", "auto") != "off" and device.startswith("cuda"):
        return "bf16 autocast"
    return "fp32"


def _majority_of_scored(run_dir: Path, metrics: dict[str, Any], samples: int) -> Row:
    """The majority-class accuracy of the dev rows the run scored: the run's own figure (metrics.json's
    "majority", written by finetune) when it has one, with a bootstrap interval where the labels are readable."""
    own = (metrics.get("majority") or {}).get("dev")
    task = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["args"]["task"]
    try:
        ids = list(read_task_predictions(task, run_dir / metrics["dev_predictions"]))
        maj = majority_reference(task, run_data_folder(run_dir), "dev", ids, samples)
    except (OSError, ValueError, KeyError):
        maj = None
    if maj is None:
        return {} if own is None else {"majority": float(own), "majority_low": math.nan, "majority_high": math.nan}
    return {"majority": float(own) if own is not None else maj.value, "majority_low": maj.low,
            "majority_high": maj.high}


def _test_score(run_dir: Path, metrics: dict[str, Any], samples: int) -> Row:
    """Test score of the best epoch: the run's own `test` figures when it has them, else re-scored from its test
    predictions where the labels lie beside the data; with a bootstrap interval; NaN where there are no labels."""
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
    """Every file the run scored (metrics.json's "files_sha256": predictions, samples, evaluate's outputs) and
    scored against ("references_sha256": dev and test labels or true sonnets, as the report finds them now) must
    still be the file it was: an edited file would change intervals and plots while the recorded point score
    stayed. A run that recorded none (an older one) is taken as it is."""
    for name, recorded in (metrics.get("files_sha256") or {}).items():
        _check_unchanged(run_dir / name, recorded, run_dir, "its run scored it", "restore the file the run wrote")
    for entry in (metrics.get("references_sha256") or {}).values():
        _check_unchanged(reference_path(run_dir, entry), entry["sha256"], run_dir, "its run scored against it",
                         "restore the file the run scored against")


def reference_path(run_dir: Path, entry: dict[str, Any]) -> Path:
    """Where a recorded reference file is now (`app.runfolder.references_sha256`): that very file, or the task's
    file of that split in the run's data folder as the report reads it (`stats.run_data_folder`)."""
    from course.formats import FORMATS

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
    counts: dict[str, int] = defaultdict(int)
    for label in labels:
        counts[label] += 1
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


def sonnet_measures(metrics: dict[str, Any]) -> Row:
    """A sonnet run's held-out NLL (dev, test; before training too) and the form rates of what it wrote, from
    metrics.json (`app.measures`); nothing for other tasks."""
    row: Row = {}
    for split in ("dev", "test"):
        rec = (metrics.get("heldout_nll") or {}).get(split)
        if rec:
            low, high = (math.nan if rec[k] is None else rec[k] for k in ("low", "high"))  # None: too few sonnets
            row.update({f"{split}_nll": rec["nll"], f"{split}_nll_low": low, f"{split}_nll_high": high,
                        f"{split}_nll_n": rec.get("sonnets")})
        base = (metrics.get("heldout_nll_base") or {}).get(split)
        if base:
            row[f"{split}_nll_base"] = base["nll"]
        form = (metrics.get("form") or {}).get(split)
        if form:
            row[f"{split}_form_samples"] = form["samples"]
            for part, r in form["rates"].items():
                row.update({f"{split}_{part}": r["rate"], f"{split}_{part}_low": r["low"],
                            f"{split}_{part}_high": r["high"], f"{split}_{part}_n": form["sonnets"] * form["samples"]})
    return row


COPY_FIGURES = ("train_longest", "train_longest_max", "train_share", "held_longest", "held_longest_max",
                "held_share")  # `_copy_values`' order
COPY_SETTINGS = ("n", "novel_below")  # the same for every run


def copying_measures(metrics: dict[str, Any]) -> Row:
    """A sonnet run's copying (`app.measures.copying_record`: novel rate with its interval, longest run of words
    and share of 4-grams found in the training and in the other held-out sonnets) and the share of each held-out
    continuation its NLL scored, from metrics.json; nothing for other tasks or runs that predate them."""
    row: Row = {}
    for split in ("dev", "test"):
        rec = (metrics.get("copying") or {}).get(split)
        if rec:
            novel = rec["novel"]
            row.update({f"{split}_novel": novel["rate"], f"{split}_novel_low": novel["low"],
                        f"{split}_novel_high": novel["high"]})
            row.update({f"{split}_copy_{key}": value for key, value in zip(COPY_FIGURES, _copy_values(rec))})
            row.update({f"{split}_copy_n": rec["n"], f"{split}_copy_novel_below": rec["novel_below"]})
        coverage = ((metrics.get("heldout_nll") or {}).get(split) or {}).get("coverage")
        if coverage:
            row.update({f"{split}_nll_scored": coverage["scored"], f"{split}_nll_in_view": coverage["prompt_in_view"]})
    return row


def _copy_values(rec: dict[str, Any]) -> list[float]:
    return [rec[corpus][key] for corpus in ("training", "held_out")
            for key in ("longest_mean", "longest_max", "ngram_share")]


def copying_point(done: Sequence[Row]) -> Row:
    """The copying figures of one setting over its seeds: the novel rate as every rate (one seed's interval, or
    the t-interval across seeds), the largest runs as the largest of any seed, the rest and the NLL's scored
    shares as means over seeds."""
    point: Row = {}
    for split in ("dev", "test"):
        key = f"{split}_novel"
        have = [r for r in done if r.get(key) is not None]
        if have:
            point[key], point[f"{key}_low"], point[f"{key}_high"] = _over_seeds(have, key, f"{key}_low",
                                                                              f"{key}_high")
            point[f"{key}_seeds"] = len(have)
        for key in ([f"{split}_copy_{k}" for k in COPY_FIGURES + COPY_SETTINGS]
                    + [f"{split}_nll_scored", f"{split}_nll_in_view"]):
            vals = [r[key] for r in done if r.get(key) is not None]
            if vals:
                point[key] = max(vals) if key.endswith("_max") else mean_std(vals)[0]
    return point


def zero_shot_row(run_dir: Path, output: str, samples: int = SAMPLES) -> Row:
    """The zero-shot check of a run folder: its accuracy with a bootstrap interval over the rows it scored (both
    from its predictions file; the result file's figure only where the labels cannot be read), and the
    majority-class accuracy of those same rows (the reference a zero-shot answer must beat)."""
    data = json.loads((run_dir / output).read_text(encoding="utf-8"))
    task = data.get("task", "quora")
    row: Row = {"zero_shot_accuracy": zero_shot_accuracy(run_dir, output), "zero_shot_n": data.get("examples")}
    # The point and its interval from the one predictions file (its sha256 checked by `check_scored_files`).
    folder = run_data_folder(run_dir)
    preds = read_task_predictions(task, run_dir / data["predictions"])
    labels = split_labels(task, folder, data.get("split", "dev")) or {}
    ids = [k for k in preds if k in labels]
    if ids:
        acc = bootstrap_accuracy([preds[k] for k in ids], [labels[k] for k in ids], samples)
        maj = majority_reference(task, folder, data.get("split", "dev"), ids, samples)
        row.update(zero_shot_accuracy=acc.value, zero_shot_low=acc.low, zero_shot_high=acc.high, zero_shot_n=acc.n)
        if maj is not None:
            row.update(majority=maj.value, majority_low=maj.low, majority_high=maj.high)
    return row


def run_row(sweep: Sweep, run_index: int, root: Path, samples: int = SAMPLES, failed: dict[str, str] | None = None
            ) -> Row:
    """One CSV row: the run's varied settings, status, dev score with its bootstrap interval, sizes and every
    finetune argument (`arg_*`)."""
    run = sweep.runs[run_index]
    run_dir = root / run.name
    row: Row = {"sweep": sweep.name, "run": run.name, **run.knobs}
    done = is_finished(run_dir)
    row["status"] = "done" if done else ("failed" if failed and run.name in failed else "missing")
    row.update(metric=None, dev_score=math.nan, ci_low=math.nan, ci_high=math.nan, n_dev=None,
               trainable_params=None, total_params=None, best_epoch=None, wall_s=None)
    if done:
        metrics = read_metrics(run_dir) or {}
        check_scored_files(run_dir, metrics)  # before any figure is read from them
        data = metrics.get("data", {})
        row.update(metric=metrics.get("metric"), dev_score=metrics["dev"][metrics["metric"]],
                   trainable_params=metrics.get("trainable_params"), total_params=metrics.get("total_params"),
                   best_epoch=(metrics.get("best") or {}).get("epoch"), wall_s=metrics.get("wall_s"),
                   train_real=data.get("train_real", data.get("train")), train_synthetic=data.get("train_synthetic"))
        try:  # a run whose files cannot be re-scored keeps its score, without an interval, and says why
            interval = run_interval(run_dir, samples=samples)
            row.update(ci_low=interval.low, ci_high=interval.high, n_dev=interval.n)
            if metrics.get("metric") == "accuracy":  # the bar a classifier must clear on these very rows
                row.update(_majority_of_scored(run_dir, metrics, samples))
        except (OSError, ValueError, KeyError) as e:
            row["note"] = f"no interval: {e}"
            folder = run_data_folder(run_dir)
            if not folder.is_dir() or isinstance(e, FileNotFoundError):
                row["data_missing"] = str(folder)
        row.update(_test_score(run_dir, metrics, samples))
        row.update(sonnet_measures(metrics))
        row.update(copying_measures(metrics))
        if "precision" in run.knobs:
            row["model_bytes"] = model_bytes(run_dir, metrics)
        for ev in run.evaluations:
            row[ev.name] = zero_shot_accuracy(run_dir, ev.output) if evaluation_done(run_dir, ev) else None
            if ev.name == "zero_shot_quora" and evaluation_done(run_dir, ev):
                try:
                    row["zero_shot"] = zero_shot_row(run_dir, ev.output, samples)
                    row[ev.name] = row["zero_shot"]["zero_shot_accuracy"]  # the table's point: the same file's
                except (OSError, ValueError, KeyError) as e:
                    row["note"] = f"zero-shot check without interval: {e}"
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        row["compute"] = compute_dtype(config)
        row["code"] = code_label(config)
        row.update({f"arg_{k}": v for k, v in config.get("args", {}).items()})
    row["run_dir"] = str(run_dir)
    return row


def collect(sweep: Sweep, root: str | Path, samples: int = SAMPLES, failed: dict[str, str] | None = None
            ) -> list[Row]:
    """Rows of every run of the sweep, in sweep order."""
    return [run_row(sweep, i, Path(root), samples, failed) for i in range(len(sweep.runs))]


def write_csv(rows: Sequence[Row], path: str | Path) -> Path:
    """All rows; the columns are the union of the rows' keys, in first-seen order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                             for k, v in row.items()})
    return path


# ---------------------------------------------------------------------------------------------- seeds -> points

def group_seeds(rows: Sequence[Row]) -> list[Row]:
    """One point per setting: rows that differ only in seed are merged. `score` is the mean over finished
    seeds; with one seed `low`/`high` are its bootstrap interval, with several the mean ± std."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        key = tuple((k, row[k]) for k in row if k in SETTING_KEYS and k != "seed")
        groups[key].append(row)
    points = []
    for key, members in groups.items():
        done = [r for r in members if r["status"] == "done"]
        point: Row = dict(key)
        point.update(seeds=len(done), runs=len(members), metric=done[0]["metric"] if done else None)
        mean, low, high = _over_seeds(done, "dev_score", "ci_low", "ci_high")
        point.update(score=mean, std=mean_std([r["dev_score"] for r in done])[1], low=low, high=high,
                     n=_examples(done, "n_dev"))
        tests = [r for r in done if not math.isnan(r.get("test_score", math.nan))]
        t_mean, t_low, t_high = _over_seeds(tests, "test_score", "test_low", "test_high")
        point.update(test_seeds=len(tests), test_score=t_mean, test_std=mean_std([r["test_score"] for r in tests])[1],
                     test_low=t_low, test_high=t_high, test_n=_examples(tests, "n_test"))
        for key in [f"{split}_nll" for split in ("dev", "test")] + [f"{split}_{part}" for split in ("dev", "test")
                                                                      for part in FORM_PARTS]:
            have = [r for r in done if r.get(key) is not None and not math.isnan(r[key])]
            if have:
                point[key], point[f"{key}_low"], point[f"{key}_high"] = _over_seeds(have, key, f"{key}_low",
                                                                                  f"{key}_high")
                point[f"{key}_seeds"] = len(have)
                point[f"{key}_n"] = _examples(have, f"{key}_n")
        for key in ("dev_nll_base", "test_nll_base", "dev_form_samples"):
            vals = [r[key] for r in done if r.get(key) is not None]
            point[key] = mean_std(vals)[0] if vals else None
        point.update(copying_point(done))
        point["data_missing"] = next((r["data_missing"] for r in done if r.get("data_missing")), None)
        majority = [r for r in done if r.get("majority") is not None]
        if majority:  # the same rows for every seed, so one run's figure stands for all
            point.update({k: majority[0][k] for k in ("majority", "majority_low", "majority_high")})
        computes = sorted({r["compute"] for r in done if r.get("compute")})
        point["compute"] = " / ".join(computes) or None
        for extra in ("trainable_params", "model_bytes", "zero_shot_quora", "train_synthetic"):
            vals = [r.get(extra) for r in done if r.get(extra) is not None]
            point[extra] = mean_std(vals)[0] if vals else None
        points.append(point)
    return points


def _over_seeds(rows: Sequence[Row], key: str, low_key: str, high_key: str) -> tuple[float, float, float]:
    """(value, low, high) of a figure over seeds: one seed's own interval (bootstrap over its examples), or the
    mean of several with the 95% t-interval across seeds."""
    if len(rows) == 1:
        return rows[0][key], rows[0].get(low_key, math.nan), rows[0].get(high_key, math.nan)
    return t_interval([r[key] for r in rows])


def _examples(rows: Sequence[Row], key: str) -> int | None:
    """The number of examples an interval was taken over (the same rows for every seed): the first row's."""
    found = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
    return int(found[0]) if found else None


SETTING_KEYS = ("task", "method", "rank", "targets", "precision", "qaft", "stage", "teacher", "synthetic_n",
                "synthetic_filter", "alpha", "lr", "mix", "seed")


def format_score(point: Row, prefix: str = "") -> str:
    """'41.97 [38.10, 45.20] n=12': one seed with its bootstrap-t 95% interval over its n examples (below
    MIN_INTERVAL_N examples the point alone, 'n=3, too few for an interval'), or the mean of N seeds with the 95%
    t-interval across seeds, marked '(N seeds, n=12 each)'; '—' when not run. prefix "test_" formats the test
    score the same way."""
    seeds = point.get(f"{prefix}seeds", 0) if prefix else point["seeds"]
    if not seeds:
        return "—"
    score, low, high = (point[f"{prefix}{k}"] for k in ("score", "low", "high"))
    digits = 2 if point["metric"] == "chrf" else 3
    n = point.get(f"{prefix}n")
    if seeds > 1:
        return f"{score:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] ({seeds} seeds{_each(n)})"
    if math.isnan(low) and (n is None or n >= MIN_INTERVAL_N):  # no interval (see the CSV's note)
        return f"{score:.{digits}f}" + (" (no CI: data not found)" if point.get("data_missing") else "")
    return _interval(score, low, high, digits, n)


def _each(n: int | None) -> str:
    return f", n={n} each" if n is not None else ""


def format_measure(point: Row, key: str, digits: int = 3, percent: bool = False,
                   min_n: int = MIN_INTERVAL_N) -> str:
    """A held-out NLL or a form rate of a point, with its interval and n, as `format_score` does (`min_n` 1 for
    the Wilson intervals of rates, which hold at any n)."""
    value = point.get(key)
    if value is None or math.isnan(value):
        return "—"
    low, high, seeds, n = point.get(f"{key}_low"), point.get(f"{key}_high"), point.get(f"{key}_seeds", 1), \
        point.get(f"{key}_n")
    if percent:
        value, digits = 100 * value, 0
        low, high = (math.nan, math.nan) if low is None else (100 * low, 100 * high)
    if seeds > 1:
        return _interval(value, low, high, digits) + f" ({seeds} seeds{_each(n)})"
    return _interval(value, low, high, digits, n, min_n)


def format_difference(diffs: Sequence[Interval], digits: int) -> str:
    """arm - reference as a cell: one seed, '+1.20 [-0.40, +2.90] n=12, sign-flip p=0.19' (and for accuracy
    McNemar's test, naming its form); several seeds, the mean of the per-seed differences with the 95% t-interval
    across seeds and each seed's p-values."""
    if len(diffs) > 1:
        mean, low, high = t_interval([d.value for d in diffs])
        ps = " / ".join(_p_values(d) for d in diffs)
        return (f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] ({len(diffs)} seeds{_each(diffs[0].n)}; "
                f"per seed: {ps})")
    d = diffs[0]
    return _interval(d.value, d.low, d.high, digits, d.n, sign="+") + ", " + _p_values(d)


def _p_values(d: Interval) -> str:
    shown = "sign-flip p=" + ("—" if d.p is None else f"{d.p:.3g}")
    if d.mcnemar is not None:
        m = d.mcnemar
        form = "exact binomial" if m.method.startswith("exact") else "chi-square with continuity correction"
        shown += f", McNemar p={m.p:.3g} ({form}; {m.a_only} vs {m.b_only} discordant)"
    return shown


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    if isinstance(value, int) and abs(value) >= 1000:
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


# Per sweep: (header, value of a point) columns of its markdown table, after the score column.
TABLE_COLUMNS: dict[str, list[tuple[str, Callable[[Row], Any]]]] = {
    "baseline": [("task", lambda p: p["task"]), ("metric", lambda p: "chrF" if p["task"] == "sonnet" else "accuracy")],
    "lora-ranks": [("method", lambda p: p["method"]), ("rank", lambda p: p["rank"]),
                   ("trainable params", lambda p: p["trainable_params"])],
    "lora-targets": [("targets", lambda p: p["targets"]), ("rank", lambda p: p["rank"]),
                     ("trainable params", lambda p: p["trainable_params"])],
    "precision": [("model", lambda p: p.get("stage") or "fine-tuned"), ("task", lambda p: p.get("task")),
                  ("precision", lambda p: p["precision"]), ("QAFT", lambda p: p["qaft"]),
                  ("model bytes", lambda p: p["model_bytes"])],
    "lora-alpha-lr": [("rank", lambda p: p["rank"]), ("alpha", lambda p: p["alpha"]),
                      ("lr", lambda p: f"{p['lr']:g}")],
    "teachers": [("teacher", lambda p: p["teacher"] or "(real only)"),
                 ("synthetic", lambda p: p["synthetic_n"]), ("filter", lambda p: p["synthetic_filter"]),
                 ("mix", lambda p: p.get("mix") or ("real only" if not p["synthetic_n"] else "real + synthetic"))],
}
def _best_mark(p: Row) -> str | None:
    return "best" if p.get("best") else None


AFTER_SCORE: dict[str, list[tuple[str, Callable[[Row], Any]]]] = {
    "lora-alpha-lr": [("chosen by dev score", _best_mark)],
    "baseline": [("study dev", lambda p: f"{STUDY[p['task']]:g}" if p["task"] in STUDY else None),
                 ("study test", lambda p: f"{STUDY_TEST[p['task']]:g}" if p["task"] in STUDY_TEST else None)],
    "precision": [("zero-shot Quora acc.", lambda p: p["zero_shot_quora"])],
}


def mark_best(points: Sequence[Row]) -> None:
    """Flag the point with the highest dev score (what a search over settings would choose)."""
    done = _done(points)
    if done:
        max(done, key=lambda p: p["score"])["best"] = True


def markdown_table(sweep_name: str, points: Sequence[Row]) -> str:
    """The study-style table: settings, dev score with its interval, and the sweep's extra columns."""
    first, after = TABLE_COLUMNS[sweep_name], AFTER_SCORE.get(sweep_name, [])
    metrics = {p["metric"] for p in points if p["metric"]}
    names = {"chrf": "dev chrF", "accuracy": "dev accuracy"}
    score_head = (names[metrics.pop()] if len(metrics) == 1 else "dev score") + f" {interval_name(points)}"
    first = first + [("compute", lambda p: p.get("compute"))]  # like with like: every arm names its dtype
    after = [("test" + score_head[3:], lambda p: format_score(p, "test_"))] + after
    if any(p.get("dev_nll") is not None for p in points):  # what only learning the sonnets earns
        after = after[:1] + [(f"{split} held-out NLL (nats/token)", lambda p, s=split: format_measure(p, f"{s}_nll"))
                             for split in ("dev", "test")] + after[1:]
        if any(p.get("dev_nll_scored") is not None for p in points):  # the NLL's tokens, beside it
            after = after[:3] + [("NLL tokens scored, dev / test (with the whole prompt in view)", scored_cell)
                                 ] + after[3:]
    if "accuracy" in {p["metric"] for p in points}:  # what always answering the commonest label scores
        after.append(("majority class (dev rows) [95% CI]",
                      lambda p: _interval(p.get("majority"), p.get("majority_low"), p.get("majority_high"),
                                          n=p.get("n"))))
    heads = [h for h, _ in first] + [score_head] + [h for h, _ in after]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for p in points:
        cells = [_fmt(f(p)) for _, f in first] + [format_score(p)] + [_fmt(f(p)) for _, f in after]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def scored_cell(point: Row) -> str:
    """'100% (72.9%) / 100% (79.4%)': the share of the held-out continuations' tokens the NLL scored, dev / test,
    and in brackets the share scored with the whole prompt still in the model's context."""
    cells = []
    for split in ("dev", "test"):
        scored, in_view = point.get(f"{split}_nll_scored"), point.get(f"{split}_nll_in_view")
        cells.append("—" if scored is None else f"{share_percent(scored)} ({share_percent(in_view)})")
    return " / ".join(cells)


def share_percent(share: float) -> str:
    """A share as a percentage: '100%' only when it is whole, else one decimal (99.6% never reads as 100%)."""
    return "100%" if share == 1 else f"{100 * share:.1f}%"


def interval_name(points: Sequence[Row]) -> str:
    """What the intervals of a table are: '[95% CI]' (one seed: bootstrap over the examples) or, when a point
    pools seeds, '[mean over seeds, 95% t-interval across seeds]'."""
    if any(p.get("seeds", 0) > 1 for p in points):
        return "[mean over seeds, 95% t-interval across seeds]"
    return "[95% CI]"


def _settings_cells(sweep_name: str, point: Row) -> list[str]:
    return [_fmt(f(point)) for _, f in TABLE_COLUMNS[sweep_name]]


def form_block(sweep_name: str, points: Sequence[Row], reference: dict[str, Any] | None = None) -> list[str]:
    """The form of what each sonnet model wrote (every dev sonnet through the perfect-sonnet check): the rates
    of 14 lines, of the rhyme scheme, of the meter and of perfect sonnets, each with its 95% interval; the real
    held-out sonnets are the reference row."""
    shown = [p for p in points if p.get("dev_perfect") is not None]
    if not shown:
        return []
    lines = [_settings_cells(sweep_name, p) + [format_measure(p, f"dev_{part}", percent=True, min_n=1)
                                               for part in FORM_PARTS]
             + [_fmt(p.get("dev_form_samples") and round(p["dev_form_samples"]))] for p in shown]
    for name, rates in (reference or {}).items():
        lines.append([f"reference: {name}"] + ["—"] * (len(TABLE_COLUMNS[sweep_name]) - 1)
                     + [_percent(rates["rates"][part], rates.get("sonnets")) for part in FORM_PARTS] + ["—"])
    heads = ([h for h, _ in TABLE_COLUMNS[sweep_name]]
             + [f"dev {h} % {interval_name(points)}" for h in ("14 lines", "rhyme scheme", "meter (9-11 syll.)",
                                                                "perfect")] + ["samples per prompt"])
    return ["Form of what each model wrote (every dev sonnet through `distill.check`; Wilson 95% intervals over "
            "the sonnets, widened by a bootstrap over prompts and samples when there are several samples):\n",
            _table(heads, lines)]


COPYING_REFERENCE = REFERENCE_NAMES[2]  # the wrong sonnet: a training sonnet pasted after the prompt
COPYING_NOTE = "copying: a training sonnet pasted"


def copying_heads(n: int) -> list[str]:
    """The headers of the copying columns (`copying_cells`), for n-grams of `n` words."""
    return ["novel % [95% CI]", "longest run shared with training, words: mean (max)",
            f"{n}-grams found in training %", "longest run shared with other held-out sonnets: mean (max)",
            f"{n}-grams found in other held-out %"]


def copying_cells(novel: dict[str, float] | None, values: Sequence[float | None]) -> list[str]:
    """The copying columns of a row: its novel rate with interval, then per corpus (training, the other
    held-out sonnets) the mean and largest longest run and the share of n-grams found."""
    out = ["—" if novel is None else _percent(novel)]
    for mean, largest, share in (values[:3], values[3:]):
        out += ["—" if mean is None else f"{mean:.1f} ({largest:.0f})",
                "—" if share is None else f"{100 * share:.1f}"]
    return out


def copying_block(sweep_name: str, points: Sequence[Row], references: dict[str, dict] | None = None) -> list[str]:
    """Copying in what each sonnet model wrote (dev, the generated lines only): the novel rate and how much
    is found verbatim in the training sonnets and in the other held-out sonnets (which no model saw: chance);
    the reference rows below on the same prompts, the wrong sonnet flagged as the copying it is."""
    shown = [p for p in points if p.get("dev_novel") is not None]
    if not shown:
        return []
    lines = [_settings_cells(sweep_name, p)
             + copying_cells({"rate": p["dev_novel"], "low": p.get("dev_novel_low", math.nan),
                              "high": p.get("dev_novel_high", math.nan)},
                             [p.get(f"dev_copy_{k}") for k in COPY_FIGURES]) for p in shown]
    width = len(TABLE_COLUMNS[sweep_name])
    for name, rec in (references or {}).items():
        label = f"reference: {name}" + (f" (**{COPYING_NOTE}**)" if name == COPYING_REFERENCE else "")
        lines.append([label] + ["—"] * (width - 1) + copying_cells(rec["novel"], _copy_values(rec)))
    n, below = shown[0]["dev_copy_n"], shown[0]["dev_copy_novel_below"]
    return [f"Copying in what each model wrote (dev; the generated lines, not the prompt; words lower-cased, "
            f"punctuation dropped): novel = no run of {below:.0f} or more words shared with a training sonnet or "
            "another held-out sonnet (Wilson 95% CI, widened over samples as the form rates); the held-out sonnets "
            "no model saw show what chance shares:\n",
            _table([h for h, _ in TABLE_COLUMNS[sweep_name]] + [f"dev {h}" for h in copying_heads(round(n))], lines)]


def _interval(value: Any, low: Any, high: Any, digits: int = 3, n: int | None = None, min_n: int = MIN_INTERVAL_N,
              sign: str = "") -> str:
    """'41.90 [40.10, 43.60] n=12'; the point alone with 'n=2, too few for an interval' below `min_n` examples,
    or without an interval where there is none; '—' for no value. sign "+" shows the sign of a difference."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    shown = f"{value:{sign}.{digits}f}"
    if n is not None and n < min_n:
        return f"{shown} (n={n}, too few for an interval)"
    if low is None or (isinstance(low, float) and math.isnan(low)):
        return shown
    return f"{shown} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]" + (f" n={n}" if n is not None else "")


def _table(heads: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    return "\n".join(["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
                     + ["| " + " | ".join(cells) + " |" for cells in lines]) + "\n"


def _scored_numbers(row: Row, split: str) -> tuple[int, ...] | None:
    """The sonnet numbers a finished run predicted on `split` (the references are scored on the same)."""
    from course.formats import read_generated

    metrics = read_metrics(Path(row["run_dir"])) or {}
    try:
        return tuple(s.number for s in read_generated(Path(row["run_dir"]) / metrics[f"{split}_predictions"]))
    except (OSError, ValueError, KeyError):
        return None


def sonnet_reference_block(rows: Sequence[Row], samples: int = SAMPLES) -> list[str]:
    """The 'what chance looks like' rows under a table that has sonnet runs, on the prompts the runs scored (dev
    and test): chrF and form of the prompts alone, with random tokens, with a wrong real sonnet, and the form of
    the real held-out sonnets; and the held-out NLL of the model before fine-tuning."""
    done = [r for r in rows if r["status"] == "done" and r.get("task") == "sonnet"]
    if not done:
        return []
    row = done[0]
    try:
        folder = run_data_folder(Path(row["run_dir"]))
        numbers = {split: _scored_numbers(row, split) for split in ("dev", "test")}
        found = {split: sonnet_reference_intervals(str(folder), split, numbers[split], row.get("arg_tokenizer_dir"),
                                                   samples) for split in ("dev", "test")}
        forms = sonnet_reference_forms(str(folder), "dev", numbers["dev"], row.get("arg_tokenizer_dir")) or {}
        copying = sonnet_reference_copying(str(folder), "dev", numbers["dev"], row.get("arg_tokenizer_dir")) or {}
        bars = {split: sonnet_reference_nll(str(folder), split, numbers[split], row.get("arg_tokenizer_dir"))
                for split in ("dev", "test")}
    except (OSError, ValueError) as e:
        return [f"Sonnet reference rows left out: {e}.\n"]
    lines = [[name + (f" (**{COPYING_NOTE}**)" if name == COPYING_REFERENCE else "")]
             + [_interval(iv.value, iv.low, iv.high, 2, iv.n) if (iv := (found[s] or {}).get(name)) else "—"
                for s in ("dev", "test")]
             + [_percent(forms[name]["rates"][part], forms[name].get("sonnets")) if name in forms else "—"
                for part in FORM_PARTS]
             + (copying_cells(copying[name]["novel"], _copy_values(copying[name]))[:2] if name in copying
                else ["—", "—"])
             for name in REFERENCE_NAMES + (REAL_SONNETS,)]
    lines[-1][1:3] = ["— (the references themselves)"] * 2
    out = ["Reference points (no model; same prompts as the runs; chrF: bootstrap 95% CI; form and novel: Wilson "
           "95% CI; copying as in the copying table):\n",
           _table(["reference", "dev chrF [95% CI]", "test chrF [95% CI]", "dev 14 lines %", "dev rhyme scheme %",
                   "dev meter %", "dev perfect %", "dev novel %", "dev longest run shared with training, words: "
                   "mean (max)"], lines)]
    nll = nll_reference_lines(done, bars)
    if nll:
        out += ["Held-out NLL before fine-tuning, and the bars from the data alone (nats per token of the true "
                "continuations, <|endoftext|> included; lower is better): a unigram of the training sonnets' tokens "
                "and a uniform guess; every fine-tuned row must clear all three:\n",
                _table(["model", "dev NLL before", "test NLL before", "dev NLL after", "test NLL after"], nll)]
    return out


def nll_reference_lines(done: Sequence[Row], bars: dict[str, dict | None]) -> list[list[str]]:
    """The rows of the held-out NLL bars: the first run's base model (before / after fine-tuning), the unigram
    of the training sonnets (`experiments.references.sonnet_reference_nll`, with its interval) and the uniform
    guess (no training to be after)."""
    lines = [[f"base model before fine-tuning ({r['run']})", _fmt(r.get("dev_nll_base")),
              _fmt(r.get("test_nll_base")), _fmt(r.get("dev_nll")), _fmt(r.get("test_nll"))]
             for r in done if r.get("dev_nll_base") is not None][:1]
    if not any(bars.values()):
        return lines
    k = next(b["unigram"]["k"] for b in bars.values() if b)
    unigram = [_interval(b["unigram"]["nll"], b["unigram"]["low"], b["unigram"]["high"], n=b["unigram"]["sonnets"])
               if b else "—"
               for b in (bars["dev"], bars["test"])]
    uniform = [_fmt(b["uniform"]) if b else "—" for b in (bars["dev"], bars["test"])]
    untrained = ["— (not trained)"] * 2
    return lines + [[f"unigram of the training sonnets' tokens (add-{k:g}) [95% CI]", *unigram, *untrained],
                    ["uniform guess, ln(vocabulary)", *uniform, *untrained]]


def _percent(rate: dict[str, float], n: int | None = None) -> str:
    """A Wilson rate in %, with the number of sonnets it is over (Wilson holds at any n)."""
    return _interval(100 * rate["rate"], 100 * rate["low"], 100 * rate["high"], 0, n, min_n=1)


# Per sweep: the arms every other arm is compared with on the same examples, each in words and as a test of a
# row `ref` against an arm's row `arm` (the same seed is required on top).
Rule = Callable[[Row, Row], bool]
REFERENCE_ARMS: dict[str, list[tuple[str, Rule]]] = {
    "lora-ranks": [("full fine-tuning", lambda ref, arm: ref.get("method") == "full")],
    "lora-targets": [("LoRA on attn+mlp at the same rank",
                      lambda ref, arm: ref.get("targets") == "attn+mlp" and ref.get("rank") == arm.get("rank"))],
    "lora-alpha-lr": [("alpha 16, lr 1e-2 (the study's choice)",
                       lambda ref, arm: ref.get("alpha") == 16 and ref.get("lr") == 1e-2)],
    "precision": [("fp32 at the same stage (base or fine-tuned) on the same task",
                   lambda ref, arm: ref.get("precision") == "fp32" and ref.get("stage") == arm.get("stage")
                   and ref.get("task") == arm.get("task")),
                  ("post-training quantization at the same precision: QAFT arms only",
                   lambda ref, arm: bool(arm.get("qaft")) and not ref.get("qaft")
                   and ref.get("precision") == arm.get("precision") and ref.get("stage") == arm.get("stage")
                   and ref.get("task") == arm.get("task"))],
    "teachers": [("real sonnets only", lambda ref, arm: not ref.get("synthetic_n"))],
}


def _reference_row(rule: Rule, arm: Row, rows: Sequence[Row]) -> Row | None:
    found = [r for r in rows if r is not arm and r["status"] == "done" and r.get("seed") == arm.get("seed")
             and rule(r, arm)]
    return found[0] if found else None


def _difference(pairs: Sequence[tuple[Row, Row]], split: str, metric: str | None, samples: int,
                cache: dict) -> str:
    """arm - reference on `split` as a cell (`format_difference`): one seed, a paired bootstrap-t 95% interval over
    the shared examples with its sign-flip p-value (and McNemar's test for accuracy); several seeds, the mean of the
    per-seed differences with a 95% t-interval across seeds."""
    def scores(row: Row) -> ExampleScores | None:
        key = (row["run_dir"], split, metric)
        if key not in cache:
            try:
                cache[key] = run_scores(row["run_dir"], split, metric)
            except (OSError, ValueError, KeyError):
                cache[key] = None
        return cache[key]

    diffs = []
    for arm, ref in pairs:
        a, b = scores(arm), scores(ref)
        if a is None or b is None:
            return "—"
        try:
            diffs.append(paired_difference(a, b, samples))
        except ValueError:
            return "—"
    digits = 4 if metric == "nll" else 2 if pairs[0][0].get("metric") == "chrf" else 3
    return format_difference(diffs, digits)


def paired_block(sweep_name: str, rows: Sequence[Row], samples: int = SAMPLES) -> list[str]:
    """Each arm against the sweep's reference arms on the same examples: the difference in the task metric (and,
    for sonnets, in held-out NLL), dev and test, with a paired interval; one table per reference."""
    done = [r for r in rows if r["status"] == "done"]
    cache: dict = {}
    out = []
    for description, rule in REFERENCE_ARMS.get(sweep_name, []):
        arms: dict[tuple, list[tuple[Row, Row]]] = {}
        for row in done:
            ref = _reference_row(rule, row, done)
            if ref is not None:
                key = tuple((k, row.get(k)) for k in SETTING_KEYS if k != "seed")
                arms.setdefault(key, []).append((row, ref))
        if not arms:
            continue
        lines = []
        for pairs in arms.values():
            arm = pairs[0][0]
            settings = _settings_cells(sweep_name, arm)
            metric = "chrF" if arm.get("metric") == "chrf" else "accuracy"
            lines.append(settings + [metric] + [_difference(pairs, s, None, samples, cache) for s in ("dev", "test")])
            if arm.get("task") == "sonnet":
                lines.append(settings + ["held-out NLL"]
                             + [_difference(pairs, s, "nll", samples, cache) for s in ("dev", "test")])
        sonnet = any(pairs[0][0].get("task") == "sonnet" for pairs in arms.values())
        out += [f"Paired differences, arm − reference ({description}), on the examples both scored"
                f"{' (for held-out NLL lower is better)' if sonnet else ''}: one seed, a paired bootstrap-t 95% "
                "interval over the n shared examples (both arms resampled on the same examples; none below "
                f"{MIN_INTERVAL_N}), the sign-flip permutation p-value (exact up to 14 examples) and, for accuracy, "
                "McNemar's test; several seeds, the mean of the per-seed differences with a 95% t-interval across "
                "seeds:\n",
                _table([h for h, _ in TABLE_COLUMNS[sweep_name]] + ["metric", "Δ dev", "Δ test"], lines)]
    return out


def teacher_summary(path: Path) -> Row:
    """One teacher's generation figures from `distill.summary.read_summary` (the `<file>.summary.json` distill
    writes, or recomputed from the JSONL when that is missing or stale): requests, kept, rejected by reason,
    perfect rate with its Wilson 95% interval, tokens, cost."""
    from distill.summary import read_summary

    s = read_summary(path)
    tokens = s.get("tokens") or {}
    row: Row = {"summary": True, "requests": s.get("requests"), "kept": s.get("kept"), "perfect": s.get("perfect"),
                "rejected": s.get("rejected"), "tokens_input": tokens.get("input"),
                "tokens_output": tokens.get("output"), "tokens_thinking": tokens.get("thinking"),
                "cost_usd": s.get("cost_usd")}
    interval = s.get("perfect_ci95")
    if row["kept"] and interval:
        row.update(perfect_rate=s.get("perfect_rate"), perfect_low=interval[0], perfect_high=interval[1])
    return row


def teacher_block(sweep: Sweep, rows: Sequence[Row], samples: int = SAMPLES) -> list[str]:
    """The teacher table: per teacher its generation figures and the dev and test chrF of each of its mixes."""
    files: dict[str, Path] = {}
    for run in sweep.runs:
        path = run.settings.data.synthetic and run.settings.data.synthetic.path
        if run.knobs.get("teacher") and path:
            files.setdefault(run.knobs["teacher"], Path(path))
    if not files:
        return []
    points = group_seeds(rows)
    lines = []
    for teacher, path in files.items():
        t = teacher_summary(path) if path.is_file() else {}
        rejected = t.get("rejected")
        mixes = []
        for p in points:
            if p.get("teacher") == teacher:
                mix = p.get("mix") or f"n{p['synthetic_n']} {p['synthetic_filter']}"
                mixes.append(f"{mix}: {format_score(p)} / {format_score(p, 'test_')}")
        lines.append([teacher, _fmt(t.get("requests")), _fmt(t.get("kept")),
                      ", ".join(f"{k}: {v}" for k, v in sorted(rejected.items())) if rejected else "—",
                      _interval(t.get("perfect_rate"), t.get("perfect_low"), t.get("perfect_high"), n=t.get("kept"),
                                min_n=1),
                      " / ".join(_fmt(t.get(k)) for k in ("tokens_input", "tokens_output", "tokens_thinking")),
                      "—" if t.get("cost_usd") is None else f"${t['cost_usd']:.{2 if t['cost_usd'] >= 1 else 4}f}",
                      "<br>".join(mixes) or "—"])
    return ["Teachers (generation summary from `<file>.summary.json`; — where it is absent):\n",
            _table(["teacher", "requests", "kept", "rejected by reason", "perfect rate [95% CI]",
                    "tokens in / out / thinking", "cost", "mixes: dev chrF / test chrF"], lines)]


def zero_shot_scores(run_dir: Path, output: str) -> ExampleScores:
    """Per row, whether a run's zero-shot check answered right: the rows of its predictions file that have labels."""
    data = json.loads((run_dir / output).read_text(encoding="utf-8"))
    task = data.get("task", "quora")
    preds = read_task_predictions(task, run_dir / data["predictions"])
    labels = split_labels(task, run_data_folder(run_dir), data.get("split", "dev")) or {}
    ids = [k for k in preds if k in labels]
    correct = [[[float(int(preds[k]) == int(labels[k]))]] for k in ids]
    return ExampleScores("accuracy", tuple(ids), np.array(correct, dtype=float).reshape(-1, 1, 1))


ZERO_SHOT_REFERENCE = REFERENCE_ARMS["precision"][0]  # fp32 at the same stage on the same task


def _zero_shot_difference(row: Row, rows: Sequence[Row], samples: int) -> str:
    """The zero-shot accuracy of `row` minus that of its fp32 twin (same stage, task and seed) on the same rows."""
    ref = _reference_row(ZERO_SHOT_REFERENCE[1], row, rows)
    if ref is None:
        return "— (no fp32 twin)" if row.get("precision") != "fp32" else "— (the reference)"
    try:
        d = paired_difference(zero_shot_scores(Path(row["run_dir"]), ZERO_SHOT_QUORA.output),
                              zero_shot_scores(Path(ref["run_dir"]), ZERO_SHOT_QUORA.output), samples)
    except (OSError, ValueError, KeyError) as e:
        return f"— ({e})"
    return format_difference([d], 3)


def zero_shot_block(rows: Sequence[Row], samples: int = SAMPLES) -> list[str]:
    """The zero-shot Quora check of every run that took it, with the majority class of the rows it scored, and
    its accuracy minus that of the fp32 model at the same stage on the same task, paired on the same rows."""
    took = [r for r in rows if r["status"] == "done" and r.get("zero_shot")]
    if not took:
        return []
    lines = []
    for r in took:
        z = r["zero_shot"]
        base = r.get("stage") == "base"
        lines.append(["base model (not fine-tuned)" if base else "fine-tuned",
                      "— (base model)" if base else str(r.get("task")), str(r.get("precision")),
                      _fmt(r.get("qaft")), _fmt(r.get("compute")), str(r.get("seed")),
                      _interval(z.get("zero_shot_accuracy"), z.get("zero_shot_low"), z.get("zero_shot_high"),
                                n=z.get("zero_shot_n")),
                      _interval(z.get("majority"), z.get("majority_low"), z.get("majority_high"),
                                n=z.get("zero_shot_n")),
                      _zero_shot_difference(r, took, samples)])
    if not any(r.get("stage") == "base" for r in rows):
        lines.insert(0, ["base (before fine-tuning)", "—", "each", "—", "—", "—",
                         "— (no base-model run (--epochs 0) finished)", "—", "—"])
    return ["Zero-shot Quora cloze (dev) after each run; the majority class of the same rows is the bar to beat; "
            f"Δ: accuracy minus that of {ZERO_SHOT_REFERENCE[0]} (and seed) on the same rows, with a paired "
            "bootstrap-t 95% interval, the sign-flip p-value and McNemar's test (exact binomial on the discordant "
            "rows when there are fewer than 25, else chi-square with continuity correction):\n",
            _table(["model", "fine-tuned on", "precision", "QAFT", "compute", "seed", "zero-shot acc. [95% CI] n",
                    "majority class [95% CI] n", "Δ vs fp32 [95% CI] n, tests"], lines)]



# ---------------------------------------------------------------------------------------------- plots

def _errorbar(ax, xs: list, points: Sequence[Row], **kw) -> None:
    """Dev scores with their intervals as bars, and the test scores beside them as hollow markers."""
    ys = [p["score"] for p in points]
    err = [[p["score"] - p["low"] for p in points], [p["high"] - p["score"] for p in points]]
    if "fmt" not in kw:
        kw.setdefault("marker", "o")
    label = kw.pop("label", None)
    bars = ax.errorbar(xs, ys, yerr=err, capsize=3, label=f"{label}: dev" if label else "dev", **kw)
    tests = [(x, p["test_score"]) for x, p in zip(xs, points) if not math.isnan(p.get("test_score", math.nan))]
    if tests:
        ax.plot(*zip(*tests), linestyle="none", marker="D", markerfacecolor="none",
                color=bars[0].get_color(), label=f"{label}: test" if label else "test")


CHANCE_STYLE = {"prompts + random tokens": ":", "wrong sonnet (nearest training length)": "-."}


def chance_lines(rows: Sequence[Row], samples: int = SAMPLES) -> dict[str, float]:
    """The dev chrF of the reference rows that stand for chance (random tokens after the prompt, a wrong real
    sonnet), drawn across the sonnet plots; {} when the sweep has no sonnet run or its data is not found."""
    done = [r for r in rows if r["status"] == "done" and r.get("task") == "sonnet"]
    if not done:
        return {}
    try:
        found = sonnet_reference_intervals(str(run_data_folder(Path(done[0]["run_dir"]))), "dev",
                                           _scored_numbers(done[0], "dev"), done[0].get("arg_tokenizer_dir"),
                                           samples)
    except (OSError, ValueError):
        return {}
    return {name: iv.value for name, iv in (found or {}).items() if name in CHANCE_STYLE}


def _sonnet_references(rows: Sequence[Row], compute: Callable[..., Any]) -> Any:
    """`compute(folder, "dev", numbers, tokenizer_dir)` for the dev prompts the sweep's first finished sonnet run
    scored; None when there is none or its data is not found."""
    done = [r for r in rows if r["status"] == "done" and r.get("task") == "sonnet"]
    if not done:
        return None
    try:
        return compute(str(run_data_folder(Path(done[0]["run_dir"]))), "dev", _scored_numbers(done[0], "dev"),
                       done[0].get("arg_tokenizer_dir"))
    except (OSError, ValueError):
        return None


def reference_copying(rows: Sequence[Row]) -> dict[str, dict]:
    """The copying of each reference row on the sweep's dev prompts (`sonnet_reference_copying`); {} without."""
    return _sonnet_references(rows, sonnet_reference_copying) or {}


def nll_bars(rows: Sequence[Row]) -> dict[str, float]:
    """The dev held-out NLL of the bars no model must fail (`sonnet_reference_nll`: the unigram of the training
    sonnets, the uniform guess), drawn across the NLL plot; {} without."""
    bars = _sonnet_references(rows, sonnet_reference_nll)
    if not bars:
        return {}
    return {f"unigram of the training sonnets (add-{bars['unigram']['k']:g})": bars["unigram"]["nll"],
            "uniform guess, ln(vocabulary)": bars["uniform"]}


def decorate(fig: Figure, points: Sequence[Row], chance: dict[str, float]) -> Figure:
    """What every plot says: chance lines across each chrF axes (the reference rows) and the majority class on
    accuracy axes, and a legend whose title names the bars' interval."""
    bars = ("bars: mean over seeds, 95% t-interval across seeds" if any(p.get("seeds", 0) > 1 for p in points)
            else "bars: 95% bootstrap CI over the examples")
    for ax in fig.axes:
        ylabel = ax.get_ylabel()
        if "chrF" in ylabel:
            for name, value in chance.items():
                ax.axhline(value, color="gray", linestyle=CHANCE_STYLE[name], linewidth=1, label=f"chance: {name}")
        if "accuracy" in ylabel and "zero-shot" not in ylabel:
            majority = [p for p in _done(points) if p.get("majority") is not None and p["metric"] == "accuracy"]
            if majority:
                ax.plot([p["task"] for p in majority], [p["majority"] for p in majority], linestyle="none",
                        marker="_", markersize=18, color="gray", label="chance: majority class")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=7, title=bars, title_fontsize=7)
    return fig


def _label(ax, xlabel: str, ylabel: str, title: str = "") -> None:
    """Axis labels, title, and a legend when something in the axes has a label."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)


def _done(points: Sequence[Row]) -> list[Row]:
    return [p for p in points if p["seeds"]]


def plot_baseline(points: Sequence[Row]) -> Figure:
    """Dev score per task with its interval: accuracy tasks on the left, sonnet chrF on the right."""
    fig, (ax_acc, ax_chrf) = plt.subplots(1, 2, figsize=(9, 3.8), gridspec_kw={"width_ratios": [3, 1]})
    for ax, metric, label in ((ax_acc, "accuracy", "accuracy"), (ax_chrf, "chrf", "chrF")):
        pts = [p for p in _done(points) if p["metric"] == metric]
        _errorbar(ax, [p["task"] for p in pts], pts, linestyle="none", label="this run")
        ref = [(p["task"], STUDY[p["task"]]) for p in pts if p["task"] in STUDY]
        if ref:
            ax.scatter(*zip(*ref), marker="x", color="black", label="study", zorder=3)
        _label(ax, "task", label)
    fig.suptitle("Full fine-tuning: dev and test scores")
    fig.tight_layout()
    return fig


def plot_lora_ranks(points: Sequence[Row]) -> Figure:
    """chrF vs LoRA rank (log2 axis) with the full fine-tuning line and its interval as a band."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    lora = sorted((p for p in _done(points) if p["method"] == "lora"), key=lambda p: p["rank"])
    if lora:
        _errorbar(ax, [p["rank"] for p in lora], lora, label="LoRA (attn+mlp, alpha 16)")
    for p in (p for p in _done(points) if p["method"] == "full"):
        ax.axhline(p["score"], color="C3", linestyle="--", label="full fine-tuning")
        ax.axhspan(p["low"], p["high"], color="C3", alpha=0.12)
    ax.set_xscale("log", base=2)
    if lora:
        ax.set_xticks([p["rank"] for p in lora], [str(p["rank"]) for p in lora])
    _label(ax, "LoRA rank", "chrF", "Sonnets: chrF vs LoRA rank")
    fig.tight_layout()
    return fig


def plot_lora_targets(points: Sequence[Row]) -> Figure:
    """chrF vs trainable parameters for adapters on attention only and on attention + MLP."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for targets in ("attn", "attn+mlp"):
        pts = sorted((p for p in _done(points) if p["targets"] == targets),
                     key=lambda p: p["trainable_params"] or 0)
        if pts:
            _errorbar(ax, [p["trainable_params"] for p in pts], pts, label=f"LoRA on {targets}")
            for p in pts:
                ax.annotate(f"r{p['rank']}", (p["trainable_params"], p["score"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    _label(ax, "trainable parameters", "chrF", "Sonnets: LoRA targets")
    fig.tight_layout()
    return fig


def plot_lora_alpha_lr(points: Sequence[Row]) -> Figure:
    """chrF vs learning rate (log axis), one line per LoRA alpha; the study's choice is marked."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    done = _done(points)
    for i, alpha in enumerate(sorted({p["alpha"] for p in done})):
        pts = sorted((p for p in done if p["alpha"] == alpha), key=lambda p: p["lr"])
        _errorbar(ax, [p["lr"] for p in pts], pts, color=f"C{i}", label=f"alpha {alpha:g}")
    chosen = [p for p in done if p["alpha"] == 16 and p["lr"] == 1e-2]
    if chosen:
        ax.scatter([1e-2], [chosen[0]["score"]], marker="*", s=160, color="black", zorder=4,
                   label="study's choice (alpha 16, lr 1e-2)")
    ax.set_xscale("log")
    _label(ax, "learning rate", "chrF", "Sonnets: LoRA alpha x learning rate")
    fig.tight_layout()
    return fig


def plot_precision(points: Sequence[Row]) -> Figure:
    """chrF vs model size (bytes, log axis) per precision, QAFT vs PTQ; and the zero-shot Quora accuracy."""
    fig, (ax, ax_q) = plt.subplots(1, 2, figsize=(11, 4))
    done = [p for p in _done(points) if p["model_bytes"] and p.get("task", "sonnet") == "sonnet"
            and p.get("stage", "fine-tuned") == "fine-tuned"]
    with_qaft = {p["precision"] for p in done if p["qaft"]}
    for qaft, label, style in ((False, "post-training quantization", "o-"), (True, "QAFT", "s--")):
        # A precision without a QAFT twin (fp32, the reference) belongs to both lines.
        pts = sorted((p for p in done if bool(p["qaft"]) == qaft or (qaft and p["precision"] not in with_qaft)),
                     key=lambda p: p["model_bytes"])
        if not pts:
            continue
        _errorbar(ax, [p["model_bytes"] for p in pts], pts, label=label, fmt=style)
        quora = [p for p in pts if p["zero_shot_quora"] is not None]
        if quora:
            ax_q.plot([p["model_bytes"] for p in quora], [p["zero_shot_quora"] for p in quora], style, label=label)
        for p in (p for p in pts if bool(p["qaft"]) == qaft):  # the shared reference is labelled once
            ax.annotate(p["precision"], (p["model_bytes"], p["score"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    for a in (ax, ax_q):
        a.set_xscale("log")
    _label(ax, "model size (bytes)", "chrF", "Sonnets: chrF vs model size by precision")
    _label(ax_q, "model size (bytes)", "zero-shot Quora accuracy", "Generality after sonnet fine-tuning")
    fig.tight_layout()
    return fig


def plot_teachers(points: Sequence[Row]) -> Figure:
    """chrF vs number of synthetic sonnets, one line per teacher (solid: all kept, dashed: perfect only);
    the real-only run is every line's first point."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    done = [p for p in _done(points) if p.get("mix") != "synthetic only"]  # no real sonnets: not on a curve
    start = [p for p in done if not p["synthetic_n"]]
    teachers = sorted({p["teacher"] for p in done if p["teacher"]})
    for i, teacher in enumerate(teachers):
        for filt, style in (("all", "-"), ("perfect", "--")):
            pts = start + sorted((p for p in done if p["teacher"] == teacher and p["synthetic_filter"] == filt),
                                 key=lambda p: p["synthetic_n"])
            if len(pts) > len(start):
                _errorbar(ax, [p["synthetic_n"] for p in pts], pts, color=f"C{i}", linestyle=style,
                          label=f"{teacher} ({filt})")
    if not teachers and start:
        _errorbar(ax, [0] * len(start), start, label="real only")
    _label(ax, "synthetic sonnets added", "chrF", "Sonnets: chrF vs synthetic-set size per teacher")
    fig.tight_layout()
    return fig


def plot_nll(sweep_name: str, points: Sequence[Row], bars: dict[str, float] | None = None) -> Figure | None:
    """Held-out NLL of every sonnet arm (dev filled, test hollow) with its interval, and the lines to beat: the
    model before fine-tuning and the dev `bars` (`nll_bars`: unigram, uniform); None when no arm has one."""
    shown = [p for p in _done(points) if p.get("dev_nll") is not None]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(shown) + 1.8))
    names = [", ".join(c for c in _settings_cells(sweep_name, p) if c != "—") for p in shown]
    ys = list(range(len(shown)))
    for split, style in (("dev", {}), ("test", {"markerfacecolor": "none", "marker": "D"})):
        have = [(y, p) for y, p in zip(ys, shown) if p.get(f"{split}_nll") is not None]
        if not have:
            continue
        xs = [p[f"{split}_nll"] for _, p in have]
        err = [[p[f"{split}_nll"] - p.get(f"{split}_nll_low", p[f"{split}_nll"]) for _, p in have],
               [p.get(f"{split}_nll_high", p[f"{split}_nll"]) - p[f"{split}_nll"] for _, p in have]]
        err = [[0.0 if math.isnan(v) else v for v in side] for side in err]
        ax.errorbar(xs, [y + (0.15 if split == "test" else 0) for y, _ in have], xerr=err, linestyle="none",
                    capsize=3, **{"marker": "o", **style}, label=split)
    base = [p["dev_nll_base"] for p in shown if p.get("dev_nll_base") is not None]
    if base:
        ax.axvline(base[0], color="gray", linestyle="--", label="dev, before fine-tuning")
    for (name, value), style in zip((bars or {}).items(), (":", "-.")):
        ax.axvline(value, color="black", linestyle=style, linewidth=1, label=f"dev, {name}")
    ax.set_yticks(ys, names, fontsize=8)
    ax.invert_yaxis()
    _label(ax, "held-out NLL (nats per token; lower is better)", "arm", f"{sweep_name}: held-out likelihood")
    fig.tight_layout()
    return fig


PLOTS: dict[str, Callable[[Sequence[Row]], Figure]] = {
    "baseline": plot_baseline, "lora-ranks": plot_lora_ranks, "lora-targets": plot_lora_targets,
    "precision": plot_precision, "teachers": plot_teachers, "lora-alpha-lr": plot_lora_alpha_lr,
}


def axis_labels(fig: Figure) -> list[dict[str, str]]:
    """Title and axis labels of every axes of a figure."""
    return [{"title": a.get_title(), "xlabel": a.get_xlabel(), "ylabel": a.get_ylabel()} for a in fig.axes]


def save_figure(fig: Figure, path: str | Path, title: str) -> Path:
    """Write a PNG; its `Description` text chunk holds the axis labels as JSON (checkable without pixels)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120,
                metadata={"Title": title, "Description": json.dumps({"axes": axis_labels(fig)})})
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- all outputs

def write_report(sweep: Sweep, root: str | Path, out: str | Path, samples: int = SAMPLES,
                 failed: dict[str, str] | None = None) -> dict[str, Path]:
    """Write `<out>/<sweep>.csv`, `<out>/<sweep>.md` and `<out>/<sweep>.png`; returns their paths."""
    out = Path(out)
    rows = collect(sweep, root, samples, failed)
    points = group_seeds(rows)
    if sweep.name == "lora-alpha-lr":
        mark_best(points)
    paths = {"csv": write_csv(rows, out / f"{sweep.name}.csv")}
    done = sum(r["status"] == "done" for r in rows)
    spread = ("intervals: the mean over seeds with a 95% t-interval across seeds" if any(p["seeds"] > 1 for p in points)
              else "intervals: bootstrap-t 95% over the n examples (and over the samples of each prompt where "
                   f"there are several; none below n={MIN_INTERVAL_N})")
    text = [f"# {sweep.name}\n", f"{done} of {len(rows)} runs finished (run folders: {Path(root)}); {spread}.\n"]
    if sweep.note:
        text.append(f"Note: {sweep.note}.\n")
    for wait in sweep.waits:
        text.append(f"Waiting: {wait}.\n")
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
    text.append(markdown_table(sweep.name, points))
    text += paired_block(sweep.name, rows, samples)
    text += form_block(sweep.name, points)
    text += copying_block(sweep.name, points, reference_copying(rows))
    references = sonnet_reference_block(rows, samples)
    text += references
    text += zero_shot_block(rows, samples)
    if sweep.name == "teachers":
        text += teacher_block(sweep, rows, samples)
    paths["md"] = out / f"{sweep.name}.md"
    paths["md"].write_text("\n".join(text), encoding="utf-8")
    figure = decorate(PLOTS[sweep.name](points), points, chance_lines(rows, samples))
    paths["png"] = save_figure(figure, out / f"{sweep.name}.png", sweep.name)
    nll = plot_nll(sweep.name, points, nll_bars(rows))
    if nll is not None:
        paths["nll_png"] = save_figure(decorate(nll, points, {}), out / f"{sweep.name}-nll.png", sweep.name)
    return paths

"""A run's figures, each declared once: where metrics.json holds it, how the seeds of one setting pool, how a table
shows it. `figures` reads a finished run's figures into its CSV row, `group_seeds` pools rows into points (one per
setting), and the `format_*` functions write a point's cells.

Pooling over seeds: "interval" gives one seed's own interval (a bootstrap over its examples, or Wilson for rates)
or, with several seeds, their mean with the 95% t-interval across seeds (`_over_seeds`); "mean", "max" and "first"
what they say; "join" the distinct values, joined.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from distill.check import FORM_PARTS
from minigpt2.metrics import MIN_INTERVAL_N

from .stats import Interval, mean_std, t_interval

Row = dict[str, Any]
SPLITS = ("dev", "test")


@dataclass(frozen=True)
class Metric:
    """A figure of a run. `key` is its CSV column (per split, "{split}_" before it); `read(metrics, split)` its cells
    from metrics.json ({} where the run has none): the figure and, for an interval, "_low"/"_high"/"_n" beside it;
    `pool` how seeds pool (see the module docstring); `digits`/`percent` how a table shows it."""

    key: str
    read: Callable[[dict, str], Row]
    pool: str = "mean"
    digits: int = 3
    percent: bool = False

    def cell(self, point: Row, split: str = "dev") -> str:
        """The figure of a point as a table cell, with its interval and n (Wilson rates: at any n)."""
        return format_measure(point, f"{split}_{self.key}", self.digits, self.percent, 1 if self.percent else
                              MIN_INTERVAL_N)


def _at(metrics: dict, *path: str) -> Any:
    for part in path:
        metrics = (metrics or {}).get(part) if isinstance(metrics, dict) else None
    return metrics


def _nll(metrics: dict, split: str) -> Row:
    rec = _at(metrics, "heldout_nll", split)
    if not rec:
        return {}
    low, high = (math.nan if rec[k] is None else rec[k] for k in ("low", "high"))  # None: too few sonnets
    return {"": rec["nll"], "_low": low, "_high": high, "_n": rec.get("sonnets")}


def _rate(*path: str, n: Callable[[dict], Any] | None = None) -> Callable[[dict, str], Row]:
    """A Wilson rate {"rate", "low", "high"} at `path` under metrics[...][split]."""
    def read(metrics: dict, split: str) -> Row:
        r = _at(metrics, path[0], split, *path[1:])
        if not r:
            return {}
        return {"": r["rate"], "_low": r["low"], "_high": r["high"],
                **({"_n": n(_at(metrics, path[0], split))} if n else {})}
    return read


def _value(*path: str) -> Callable[[dict, str], Row]:
    """The number at `path` under metrics[path[0]][split]."""
    def read(metrics: dict, split: str) -> Row:
        v = _at(metrics, path[0], split, *path[1:])
        return {} if v is None else {"": v}
    return read


def _when(part: str, read: Callable[[dict, str], Row]) -> Callable[[dict, str], Row]:
    """`read` only where metrics[part][split] is recorded (the copying figures come all or none)."""
    return lambda metrics, split: read(metrics, split) if _at(metrics, part, split) else {}


COPY_FIGURES = ("train_longest", "train_longest_max", "train_share", "held_longest", "held_longest_max",
                "held_share")

# The per-split figures of a sonnet run, in CSV order: held-out NLL and form (`app.measures`), then copying and the
# share of each held-out continuation its NLL scored.
SONNET_METRICS = (
    Metric("nll", _nll, "interval"),
    Metric("nll_base", _value("heldout_nll_base", "nll")),
    Metric("form_samples", _value("form", "samples")),
    *(Metric(part, _rate("form", "rates", part, n=lambda f: f["sonnets"] * f["samples"]), "interval", percent=True)
      for part in FORM_PARTS),
)
COPYING_METRICS = (
    Metric("novel", _rate("copying", "novel"), "interval", percent=True),
    *(Metric(f"copy_{key}", _when("copying", _value("copying", corpus, stat)), "max" if key.endswith("_max")
             else "mean")
      for key, (corpus, stat) in zip(COPY_FIGURES, [(c, s) for c in ("training", "held_out")
                                                    for s in ("longest_mean", "longest_max", "ngram_share")])),
    Metric("copy_n", _when("copying", _value("copying", "n"))),
    Metric("copy_novel_below", _when("copying", _value("copying", "novel_below"))),
    Metric("nll_scored", _value("heldout_nll", "coverage", "scored")),
    Metric("nll_in_view", _value("heldout_nll", "coverage", "prompt_in_view")),
)
FORM_METRICS = SONNET_METRICS[3:]

# Figures of a run as a whole (one column each), with how seeds pool; None: the CSV only.
RUN_FIGURES = {"trainable_params": "mean", "total_params": None, "best_epoch": None, "wall_s": None,
               "train_real": None, "train_synthetic": "mean"}
# Figures the report adds beside them (`experiments.report.run_row`), pooled the same way.
ADDED_FIGURES = {"model_bytes": "mean", "zero_shot_quora": "mean", "compute": "join", "data_missing": "first"}


def measures(metrics: dict, family: Sequence[Metric]) -> Row:
    """The cells of a family of per-split metrics, split by split, as CSV columns."""
    row: Row = {}
    for split in SPLITS:
        for m in family:
            row.update({f"{split}_{m.key}{suffix}": v for suffix, v in m.read(metrics, split).items()})
    return row


def sonnet_measures(metrics: dict) -> Row:
    """A sonnet run's held-out NLL (dev, test; before training too) and the form rates of what it wrote."""
    return measures(metrics, SONNET_METRICS)


def copying_measures(metrics: dict) -> Row:
    """A sonnet run's copying (novel rate, longest shared runs, shared n-grams) and its NLL's scored shares."""
    return measures(metrics, COPYING_METRICS)


def figures(metrics: dict) -> Row:
    """A finished run's figures from its metrics.json, as CSV columns (its task score aside)."""
    data = metrics.get("data", {})
    row = {"trainable_params": metrics.get("trainable_params"), "total_params": metrics.get("total_params"),
           "best_epoch": (metrics.get("best") or {}).get("epoch"), "wall_s": metrics.get("wall_s"),
           "train_real": data.get("train_real", data.get("train")), "train_synthetic": data.get("train_synthetic")}
    return row


# ---------------------------------------------------------------------------------------------- seeds -> points

def _over_seeds(rows: Sequence[Row], key: str, low_key: str, high_key: str) -> tuple[float, float, float]:
    """(value, low, high) of a figure over seeds: one seed's own interval, or the mean of several with the 95%
    t-interval across seeds."""
    if len(rows) == 1:
        return rows[0][key], rows[0].get(low_key, math.nan), rows[0].get(high_key, math.nan)
    return t_interval([r[key] for r in rows])


def _examples(rows: Sequence[Row], key: str) -> int | None:
    """The number of examples an interval was taken over (the same rows for every seed): the first row's."""
    found = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
    return int(found[0]) if found else None


def pool(done: Sequence[Row], key: str, how: str) -> Row:
    """One figure of a setting over its finished seeds, as a point's cells (see the module docstring)."""
    have = [r for r in done if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key]))]
    if how == "interval":
        if not have:
            return {}
        value, low, high = _over_seeds(have, key, f"{key}_low", f"{key}_high")
        return {key: value, f"{key}_low": low, f"{key}_high": high, f"{key}_seeds": len(have),
                f"{key}_n": _examples(have, f"{key}_n")}
    vals = [r[key] for r in have]
    if how == "join":
        return {key: " / ".join(sorted(set(vals))) or None}
    if how == "first":
        return {key: vals[0] if vals else None}
    return {key: (max(vals) if how == "max" else mean_std(vals)[0]) if vals else None}


def copying_point(done: Sequence[Row]) -> Row:
    """The copying figures of one setting over its seeds (`COPYING_METRICS`' pooling)."""
    return {k: v for split in SPLITS for m in COPYING_METRICS
            for k, v in pool(done, f"{split}_{m.key}", m.pool).items()}


def knob_columns(rows: Sequence[Row]) -> list[str]:
    """The settings columns of a sweep's rows: those between "run" and "seed" (`experiments.report.run_row`'s
    layout), or before "seed" in a row made by hand."""
    keys = list(rows[0]) if rows else []
    return [k for k in keys[:keys.index("seed")] if k not in ("sweep", "run")] if "seed" in keys else []


def group_seeds(rows: Sequence[Row], knobs: Sequence[str] | None = None) -> list[Row]:
    """One point per setting (rows that differ only in seed; `knobs`: the setting columns, default
    `knob_columns`): `score` with `low`/`high` pools the dev score, `test_*` the test score, the metrics as declared."""
    knobs = knob_columns(rows) if knobs is None else knobs
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        groups[tuple((k, row.get(k)) for k in knobs)].append(row)
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
        for split in SPLITS:
            for m in SONNET_METRICS + COPYING_METRICS:
                point.update(pool(done, f"{split}_{m.key}", m.pool))
        for name, how in {**RUN_FIGURES, **ADDED_FIGURES}.items():
            if how:
                point.update(pool(done, name, how))
        majority = [r for r in done if r.get("majority") is not None]
        if majority:  # the same rows for every seed, so one run's figure stands for all
            point.update({k: majority[0][k] for k in ("majority", "majority_low", "majority_high")})
        points.append(point)
    return points


# ---------------------------------------------------------------------------------------------- cells

def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


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


def _each(n: int | None) -> str:
    return f", n={n} each" if n is not None else ""


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


def format_measure(point: Row, key: str, digits: int = 3, percent: bool = False,
                   min_n: int = MIN_INTERVAL_N) -> str:
    """A pooled figure of a point (`pool` "interval"), with its interval and n, as `format_score` does (`min_n` 1
    for the Wilson intervals of rates, which hold at any n)."""
    value = point.get(key)
    if value is None or math.isnan(value):
        return "—"
    low, high, seeds, n = (point.get(f"{key}_low"), point.get(f"{key}_high"), point.get(f"{key}_seeds", 1),
                           point.get(f"{key}_n"))
    if percent:
        value, digits = 100 * value, 0
        low, high = (math.nan, math.nan) if low is None else (100 * low, 100 * high)
    if seeds > 1:
        return _interval(value, low, high, digits) + f" ({seeds} seeds{_each(n)})"
    return _interval(value, low, high, digits, n, min_n)


def _percent(rate: dict[str, float], n: int | None = None) -> str:
    """A Wilson rate in %, with the number of sonnets it is over (Wilson holds at any n)."""
    return _interval(100 * rate["rate"], 100 * rate["low"], 100 * rate["high"], 0, n, min_n=1)


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


def share_percent(share: float) -> str:
    """A share as a percentage: '100%' only when it is whole, else one decimal (99.6% never reads as 100%)."""
    return "100%" if share == 1 else f"{100 * share:.1f}%"


def scored_cell(point: Row) -> str:
    """'100% (72.9%) / 100% (79.4%)': the share of the held-out continuations' tokens the NLL scored, dev / test,
    and in brackets the share scored with the whole prompt still in the model's context."""
    cells = []
    for split in SPLITS:
        scored, in_view = point.get(f"{split}_nll_scored"), point.get(f"{split}_nll_in_view")
        cells.append("—" if scored is None else f"{share_percent(scored)} ({share_percent(in_view)})")
    return " / ".join(cells)


def interval_name(points: Sequence[Row]) -> str:
    """What the intervals of a table are: '[95% CI]' (one seed: bootstrap over the examples) or, when a point
    pools seeds, '[mean over seeds, 95% t-interval across seeds]'."""
    if any(p.get("seeds", 0) > 1 for p in points):
        return "[mean over seeds, 95% t-interval across seeds]"
    return "[95% CI]"

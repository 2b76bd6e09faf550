"""A run's figures, each declared once: where metrics.json holds it, how the seeds of one setting pool, how a table
shows it. `measures` reads them into a run's CSV row, `group_seeds` pools rows into points (one per setting), the
`format_*` functions write a point's cells."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from distill.check import FORM_PARTS
from minigpt2.metrics import MIN_INTERVAL_N

from .stats import Interval, mean_std, t_interval

Row = dict[str, Any]
SPLITS = ("dev", "test")


@dataclass(frozen=True)
class Metric:
    """A figure of a run: `key` its CSV column (after "{split}_"); `read(metrics, split)` its cells ({} where the run
    has none: the figure, and "_low"/"_high"/"_n" for an interval); `pool` how seeds pool (`pool`); `digits`,
    `percent`: how a table shows it."""

    key: str
    read: Callable[[dict, str], Row]
    pool: str = "mean"
    digits: int = 3
    percent: bool = False

    def cell(self, point: Row, split: str = "dev") -> str:
        return format_measure(point, f"{split}_{self.key}", self.digits, self.percent,
                              1 if self.percent else MIN_INTERVAL_N)


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
    """A Wilson rate {"rate", "low", "high"} at `path` under metrics[path[0]][split]."""
    def read(metrics: dict, split: str) -> Row:
        r = _at(metrics, path[0], split, *path[1:])
        if not r:
            return {}
        return {"": r["rate"], "_low": r["low"], "_high": r["high"],
                **({"_n": n(_at(metrics, path[0], split))} if n else {})}
    return read


def _value(*path: str, when: str | None = None) -> Callable[[dict, str], Row]:
    """The number at `path` under metrics[path[0]][split]; with `when`, only where metrics[when][split] is recorded
    (the copying figures come all or none)."""
    def read(metrics: dict, split: str) -> Row:
        v = _at(metrics, path[0], split, *path[1:])
        return {} if v is None or (when and not _at(metrics, when, split)) else {"": v}
    return read


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
FORM_METRICS = SONNET_METRICS[3:]
COPYING_METRICS = (
    Metric("novel", _rate("copying", "novel"), "interval", percent=True),
    *(Metric(f"copy_{key}", _value("copying", corpus, stat, when="copying"), "max" if key.endswith("_max") else "mean")
      for key, (corpus, stat) in zip(COPY_FIGURES, [(c, s) for c in ("training", "held_out")
                                                    for s in ("longest_mean", "longest_max", "ngram_share")])),
    Metric("copy_n", _value("copying", "n", when="copying")),
    Metric("copy_novel_below", _value("copying", "novel_below", when="copying")),
    Metric("nll_scored", _value("heldout_nll", "coverage", "scored")),
    Metric("nll_in_view", _value("heldout_nll", "coverage", "prompt_in_view")),
)
# Figures of a run as a whole that pool over seeds, with how: those of metrics.json (`figures`), then those the
# report adds beside them (`experiments.report.run_row`).
POOLED = {"trainable_params": "mean", "train_synthetic": "mean", "model_bytes": "mean", "zero_shot_quora": "mean",
          "compute": "join", "data_missing": "first"}


def measures(metrics: dict, family: Sequence[Metric] = SONNET_METRICS) -> Row:
    """The cells of a family of per-split metrics, split by split, as CSV columns."""
    return {f"{split}_{m.key}{suffix}": v for split in SPLITS for m in family
            for suffix, v in m.read(metrics, split).items()}


def figures(metrics: dict) -> Row:
    """A finished run's figures from its metrics.json, as CSV columns (its task score aside)."""
    data = metrics.get("data", {})
    return {"trainable_params": metrics.get("trainable_params"), "total_params": metrics.get("total_params"),
            "best_epoch": (metrics.get("best") or {}).get("epoch"), "wall_s": metrics.get("wall_s"),
            "train_real": data.get("train_real", data.get("train")), "train_synthetic": data.get("train_synthetic")}


def teacher_summary(path: Path) -> Row:
    """One teacher's generation figures (`distill.summary.read_summary`): requests, kept, rejected by reason,
    perfect rate with its Wilson 95% interval, tokens, cost."""
    from distill.summary import read_summary

    s = read_summary(path)
    row: Row = {k: s.get(k) for k in ("requests", "kept", "perfect", "rejected", "cost_usd")}
    row.update({f"tokens_{k}": (s.get("tokens") or {}).get(k) for k in ("input", "output", "thinking")})
    if row["kept"] and s.get("perfect_ci95"):
        row.update(perfect_rate=s.get("perfect_rate"), perfect_low=s["perfect_ci95"][0],
                   perfect_high=s["perfect_ci95"][1])
    return row


# ---------------------------------------------------------------------------------------------- seeds -> points

def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _spread(rows: Sequence[Row], key: str, low: str, high: str, n: str) -> tuple[float, float, float, int, int | None]:
    """(value, low, high, seeds, examples) of a figure over the rows that have it: one seed's own interval, or the
    mean of several with the 95% t-interval across seeds."""
    have = [r for r in rows if not _missing(r.get(key))]
    if len(have) == 1:
        value, lo, hi = have[0][key], have[0].get(low, math.nan), have[0].get(high, math.nan)
    else:
        value, lo, hi = t_interval([r[key] for r in have])
    examples = [r[n] for r in have if isinstance(r.get(n), (int, float)) and not math.isnan(r[n])]
    return value, lo, hi, len(have), int(examples[0]) if examples else None


def pool(done: Sequence[Row], key: str, how: str) -> Row:
    """One figure of a setting over its finished seeds, as a point's cells: "interval", one seed's own interval or
    the mean of several with their t-interval; "mean", "max", "first"; "join" the distinct values."""
    if how == "interval":
        value, low, high, seeds, n = _spread(done, key, f"{key}_low", f"{key}_high", f"{key}_n")
        return {key: value, f"{key}_low": low, f"{key}_high": high, f"{key}_seeds": seeds, f"{key}_n": n} if seeds \
            else {}
    vals = [r[key] for r in done if not _missing(r.get(key))]
    if how == "join":
        return {key: " / ".join(sorted(set(vals))) or None}
    if how == "first":
        return {key: vals[0] if vals else None}
    return {key: (max(vals) if how == "max" else mean_std(vals)[0]) if vals else None}


def pooled(done: Sequence[Row], family: Sequence[Metric] = SONNET_METRICS + COPYING_METRICS) -> Row:
    """A family of per-split figures of one setting over its finished seeds, each pooled as it declares."""
    return {k: v for m in family for split in SPLITS for k, v in pool(done, f"{split}_{m.key}", m.pool).items()}


def group_seeds(rows: Sequence[Row], knobs: Sequence[str] | None = None) -> list[Row]:
    """One point per setting (rows that differ only in seed; `knobs`: the setting columns, default those before
    "seed"): `score` with `low`/`high` pools the dev score, `test_*` the test score, the metrics as declared."""
    if knobs is None:
        keys = list(rows[0]) if rows else []
        knobs = [k for k in keys[:keys.index("seed")] if k not in ("sweep", "run")] if "seed" in keys else []
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        groups[tuple((k, row.get(k)) for k in knobs)].append(row)
    points = []
    for key, members in groups.items():
        done = [r for r in members if r["status"] == "done"]
        point: Row = dict(key, seeds=len(done), runs=len(members), metric=done[0]["metric"] if done else None)
        for prefix, score, low, high, n in (("", "dev_score", "ci_low", "ci_high", "n_dev"),
                                            ("test_", "test_score", "test_low", "test_high", "n_test")):
            value, lo, hi, seeds, examples = _spread(done, score, low, high, n)
            point.update({f"{prefix}score": value, f"{prefix}low": lo, f"{prefix}high": hi, f"{prefix}n": examples,
                          f"{prefix}std": mean_std([r.get(score) for r in done])[1]})
            if prefix:
                point[f"{prefix}seeds"] = seeds
        point.update(pooled(done))
        for name, how in POOLED.items():
            point.update(pool(done, name, how))
        majority = [r for r in done if r.get("majority") is not None]
        if majority:  # the same rows for every seed, so one run's figure stands for all
            point.update({k: majority[0][k] for k in ("majority", "majority_low", "majority_high")})
        points.append(point)
    return points


# ---------------------------------------------------------------------------------------------- cells

def _fmt(value: Any) -> str:
    if _missing(value):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _interval(value: Any, low: Any, high: Any, digits: int = 3, n: int | None = None, min_n: int = MIN_INTERVAL_N,
              sign: str = "", seeds: int = 1, note: str = "") -> str:
    """'41.90 [40.10, 43.60] n=12'; below `min_n` examples '41.90 (n=2, too few for an interval)'; '—' for no
    value; several seeds: '... (3 seeds, n=12 each`note`)'. sign "+" shows the sign of a difference."""
    if _missing(value):
        return "—"
    if seeds > 1:
        each = f", n={n} each" if n is not None else ""
        return _interval(value, low, high, digits, sign=sign) + f" ({seeds} seeds{each}{note})"
    shown = f"{value:{sign}.{digits}f}"
    if n is not None and n < min_n:
        return f"{shown} (n={n}, too few for an interval)"
    if _missing(low):
        return shown
    return f"{shown} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]" + (f" n={n}" if n is not None else "")


def format_score(point: Row, prefix: str = "") -> str:
    """The dev score of a point as `_interval` writes it (one seed's bootstrap-t interval, or the mean of several
    with their t-interval); '—' when not run; prefix "test_": the test score."""
    seeds = point.get(f"{prefix}seeds", 0)
    if not seeds:
        return "—"
    low, n = point[f"{prefix}low"], point.get(f"{prefix}n")
    cell = _interval(point[f"{prefix}score"], low, point[f"{prefix}high"], 2 if point["metric"] == "chrf" else 3, n,
                     seeds=seeds)
    if seeds == 1 and math.isnan(low) and (n is None or n >= MIN_INTERVAL_N) and point.get("data_missing"):
        cell += " (no CI: data not found)"  # no interval: see the CSV's note
    return cell


def format_measure(point: Row, key: str, digits: int = 3, percent: bool = False, min_n: int = MIN_INTERVAL_N) -> str:
    """A pooled figure of a point as `format_score` writes a score (`min_n` 1 for Wilson rates: any n)."""
    value, low, high = (point.get(key + suffix) for suffix in ("", "_low", "_high"))
    if _missing(value):
        return "—"
    if percent:
        value, digits = 100 * value, 0
        low, high = (math.nan, math.nan) if low is None else (100 * low, 100 * high)
    return _interval(value, low, high, digits, point.get(f"{key}_n"), min_n, seeds=point.get(f"{key}_seeds", 1))


def _percent(rate: dict[str, float], n: int | None = None) -> str:
    """A Wilson rate in %, with the number of sonnets it is over (Wilson holds at any n)."""
    return _interval(100 * rate["rate"], 100 * rate["low"], 100 * rate["high"], 0, n, min_n=1)


def format_difference(diffs: Sequence[Interval], digits: int) -> str:
    """arm - reference as a cell: one seed, '+1.20 [-0.40, +2.90] n=12, sign-flip p=0.19' (McNemar's test too for
    accuracy); several seeds, the mean difference with its t-interval and each seed's p-values."""
    if len(diffs) > 1:
        mean, low, high = t_interval([d.value for d in diffs])
        return _interval(mean, low, high, digits, diffs[0].n, sign="+", seeds=len(diffs),
                         note="; per seed: " + " / ".join(map(_p_values, diffs)))
    d = diffs[0]
    return _interval(d.value, d.low, d.high, digits, d.n, sign="+") + ", " + _p_values(d)


def _p_values(d: Interval) -> str:
    shown = "sign-flip p=" + ("—" if d.p is None else f"{d.p:.3g}")
    if d.mcnemar is not None:
        m = d.mcnemar
        form = "exact binomial" if m.method.startswith("exact") else "chi-square with continuity correction"
        shown += f", McNemar p={m.p:.3g} ({form}; {m.a_only} vs {m.b_only} discordant)"
    return shown


def scored_cell(point: Row) -> str:
    """'100% (72.9%) / 100% (79.4%)': the share of the continuations' tokens the NLL scored, dev / test, and in
    brackets the share scored with the whole prompt in view ('100%' only when whole)."""
    def share(s: float) -> str:
        return "100%" if s == 1 else f"{100 * s:.1f}%"

    return " / ".join("—" if point.get(f"{split}_nll_scored") is None
                      else f"{share(point[f'{split}_nll_scored'])} ({share(point[f'{split}_nll_in_view'])})"
                      for split in SPLITS)


def interval_name(points: Sequence[Row]) -> str:
    """What the intervals of a table are: '[95% CI]', or the t-interval's name when a point pools seeds."""
    if any(p.get("seeds", 0) > 1 for p in points):
        return "[mean over seeds, 95% t-interval across seeds]"
    return "[95% CI]"

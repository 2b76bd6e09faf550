"""A sweep's plots, generic over its declaration (`experiments.sweeps.Plot`): the dev score against the sweep's x
(test beside it), and the held-out NLL of every sonnet arm. Each function returns its matplotlib `Figure` (tests
read its axes); `save_figure` writes the axis labels into the PNG's metadata too."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .metrics import Row, _fmt  # noqa: E402
from .references import sonnet_reference_figures  # noqa: E402
from .stats import SAMPLES  # noqa: E402
from .sweeps import Plot, Sweep  # noqa: E402

CHANCE_STYLE = {"prompts + random tokens": ":", "wrong sonnet (nearest training length)": "-."}
YLABEL = {"chrf": "chrF", "accuracy": "accuracy"}


def _done(points: Sequence[Row]) -> list[Row]:
    return [p for p in points if p["seeds"]]


def _err(points: Sequence[Row], key: str, low: str, high: str) -> list[list[float]]:
    """The bars of `key` from `low` to `high` as matplotlib's (below, above) errors; none where a bound is NaN."""
    err = [[p[key] - p.get(low, p[key]) for p in points], [p.get(high, p[key]) - p[key] for p in points]]
    return [[0.0 if math.isnan(v) else v for v in side] for side in err]


def _errorbar(ax, xs: list, points: Sequence[Row], **kw) -> None:
    """Dev scores with their intervals as bars, and the test scores beside them as hollow markers."""
    ys = [p["score"] for p in points]
    err = _err(points, "score", "low", "high")
    label = kw.pop("label", None)
    bars = ax.errorbar(xs, ys, yerr=err, capsize=3, marker="o", label=f"{label}: dev" if label else "dev", **kw)
    tests = [(x, p["test_score"]) for x, p in zip(xs, points) if not math.isnan(p.get("test_score", math.nan))]
    if tests:
        ax.plot(*zip(*tests), linestyle="none", marker="D", markerfacecolor="none",
                color=bars[0].get_color(), label=f"{label}: test" if label else "test")


def _label(ax, xlabel: str, ylabel: str, title: str = "") -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)


def plot(spec: Plot, points: Sequence[Row]) -> Figure:
    """The sweep's plot as its `Plot` declares it (one axes per metric, then the `second` axes if declared)."""
    done = [p for p in _done(points) if spec.keep(p) or spec.level(p)]
    metrics = sorted({p["metric"] for p in done}) or ["chrf"]
    fig, axes = plt.subplots(1, len(metrics) + bool(spec.second), figsize=(6.5 + 4 * (len(metrics) - 1)
                                                                            + 4.5 * bool(spec.second), 4),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        here = [p for p in done if p["metric"] == metric]
        drawn = [p for p in here if spec.keep(p) and not spec.level(p)]
        shared = [p for p in drawn if spec.shared(p)]
        lines: dict = {}
        for p in drawn:
            if not spec.shared(p):
                lines.setdefault(spec.line(p), []).append(p)
        if not lines and shared:
            lines = {None: []}
        categorical = any(isinstance(p[spec.x], str) for p in drawn)
        for i, (key, pts) in enumerate(lines.items()):
            pts = sorted(shared + pts, key=lambda p: p[spec.x] if categorical else p[spec.x] or 0)
            _errorbar(ax, [p[spec.x] for p in pts], pts, color=f"C{i}", label=spec.label(key) or None,
                      **({"linestyle": "none"} if categorical else {}))
            if spec.second:
                have = [p for p in pts if p.get(spec.second[0]) is not None]
                axes[0][-1].plot([p[spec.x] for p in have], [p[spec.second[0]] for p in have], "o-",
                                 color=f"C{i}", label=spec.label(key) or None)
        for p in (p for p in here if spec.level(p)):
            ax.axhline(p["score"], color="C3", linestyle="--", label=spec.level_label)
            ax.axhspan(p["low"], p["high"], color="C3", alpha=0.12)
        for p in drawn if spec.annotate else ():
            ax.annotate(spec.annotate(p), (p[spec.x], p["score"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        if spec.mark and (chosen := [p for p in drawn if spec.mark[0](p)]):
            ax.scatter([chosen[0][spec.x]], [chosen[0]["score"]], marker="*", s=160, color="black", zorder=4,
                       label=spec.mark[1])
        if spec.study and (ref := [(p[spec.x], spec.study(p)) for p in drawn if spec.study(p) is not None]):
            ax.scatter(*zip(*ref), marker="x", color="black", label="study", zorder=3)
        if spec.log and not categorical:
            ax.set_xscale("log", base=spec.log)
            if spec.log == 2 and drawn:
                ticks = sorted({p[spec.x] for p in drawn})
                ax.set_xticks(ticks, [str(t) for t in ticks])
        _label(ax, spec.xlabel, YLABEL.get(metric, metric), spec.title if len(metrics) == 1 else "")
    if spec.second:
        axes[0][-1].set_xscale("log") if spec.log else None
        _label(axes[0][-1], spec.xlabel, spec.second[1], spec.second[2])
    if len(metrics) > 1:
        fig.suptitle(spec.title)
    fig.tight_layout()
    return fig


def chance_lines(rows: Sequence[Row], samples: int = SAMPLES) -> tuple[dict[str, float], dict[str, float]]:
    """The dev chrF of the reference rows that stand for chance (drawn across the sonnet plots) and the dev NLL
    bars (unigram, uniform: across the NLL plot); {} without a sonnet run or its data."""
    try:
        found = sonnet_reference_figures(rows, samples)
    except (OSError, ValueError):
        found = None
    chrf, bars = (found["chrf"]["dev"], found["nll"]["dev"]) if found else (None, None)
    chance = {name: iv.value for name, iv in (chrf or {}).items() if name in CHANCE_STYLE}
    if not bars:
        return chance, {}
    return chance, {f"unigram of the training sonnets (add-{bars['unigram']['k']:g})": bars["unigram"]["nll"],
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
                ax.plot([p.get("task") for p in majority], [p["majority"] for p in majority], linestyle="none",
                        marker="_", markersize=18, color="gray", label="chance: majority class")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=7, title=bars, title_fontsize=7)
    return fig


def plot_nll(title: str, points: Sequence[Row], names: Sequence[str], bars: dict[str, float] | None = None
             ) -> Figure | None:
    """Held-out NLL of every sonnet arm (dev filled, test hollow; `names`: each point's name) with its interval,
    and the lines to beat: the model before fine-tuning and the dev `bars`; None when no arm has one."""
    shown = [(p, name) for p, name in zip(points, names) if p["seeds"] and p.get("dev_nll") is not None]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(shown) + 1.8))
    ys = list(range(len(shown)))
    for split, style in (("dev", {}), ("test", {"markerfacecolor": "none", "marker": "D"})):
        have = [(y, p) for y, (p, _) in zip(ys, shown) if p.get(f"{split}_nll") is not None]
        if not have:
            continue
        xs = [p[f"{split}_nll"] for _, p in have]
        err = _err([p for _, p in have], f"{split}_nll", f"{split}_nll_low", f"{split}_nll_high")
        ax.errorbar(xs, [y + (0.15 if split == "test" else 0) for y, _ in have], xerr=err, linestyle="none",
                    capsize=3, **{"marker": "o", **style}, label=split)
    base = [p["dev_nll_base"] for p, _ in shown if p.get("dev_nll_base") is not None]
    if base:
        ax.axvline(base[0], color="gray", linestyle="--", label="dev, before fine-tuning")
    for (name, value), style in zip((bars or {}).items(), (":", "-.")):
        ax.axvline(value, color="black", linestyle=style, linewidth=1, label=f"dev, {name}")
    ax.set_yticks(ys, [name for _, name in shown], fontsize=8)
    ax.invert_yaxis()
    _label(ax, "held-out NLL (nats per token; lower is better)", "arm", f"{title}: held-out likelihood")
    fig.tight_layout()
    return fig


def axis_labels(fig: Figure) -> list[dict[str, str]]:
    return [{"title": a.get_title(), "xlabel": a.get_xlabel(), "ylabel": a.get_ylabel()} for a in fig.axes]


def save_figure(fig: Figure, path: str | Path, title: str) -> Path:
    """Write a PNG; its `Description` text chunk holds the axis labels as JSON (checkable without pixels)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120,
                metadata={"Title": title, "Description": json.dumps({"axes": axis_labels(fig)})})
    plt.close(fig)
    return path


def write_plots(sweep: Sweep, rows: Sequence[Row], points: Sequence[Row], out: Path, samples: int = SAMPLES
                ) -> dict[str, Path]:
    """`<out>/<sweep>.png` (where the sweep declares a plot) and `<out>/<sweep>-nll.png` (where an arm has a held-out
    NLL)."""
    paths, (chance, bars) = {}, chance_lines(rows, samples)
    if sweep.plot:
        fig = decorate(plot(sweep.plot, points), points, chance)
        paths["png"] = save_figure(fig, out / f"{sweep.name}.png", sweep.name)
    names = [", ".join(c for c in (_fmt(col.of(p)) for col in sweep.table_columns()) if c != "—") for p in points]
    nll = plot_nll(sweep.name, points, names, bars)
    if nll is not None:
        paths["nll_png"] = save_figure(decorate(nll, points, {}), out / f"{sweep.name}-nll.png", sweep.name)
    return paths

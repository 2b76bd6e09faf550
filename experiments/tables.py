"""The markdown tables of a sweep's report, generic over its declaration: the main table, the paired differences
against each reference arm, the form and copying of what each sonnet model wrote, the reference rows that show what
chance scores, the zero-shot check and the teachers' generation figures."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from distill.check import FORM_PARTS
from minigpt2.metrics import MIN_INTERVAL_N

from .metrics import (COPY_FIGURES, FORM_METRICS, SPLITS, Row, _fmt, _interval, _percent, format_difference,
                      format_measure, format_score, group_seeds, interval_name, scored_cell, teacher_summary)
from .references import REAL_SONNETS, REFERENCE_NAMES, sonnet_reference_figures, sonnet_rows
from .stats import SAMPLES, ExampleScores, paired_difference, run_scores, zero_shot_scores
from .sweeps import Reference, Sweep, teacher_of

Columns = list[tuple[str, Callable[[Any], Any]]]  # (header, the cell of an item)
COPYING_REFERENCE = REFERENCE_NAMES[2]  # the wrong sonnet: a training sonnet pasted after the prompt


def pipe_table(heads: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """A markdown pipe table (the reports' and docs/study.md's)."""
    return "\n".join(["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
                     + ["| " + " | ".join(cells) + " |" for cells in lines]) + "\n"


def _lines(columns: Columns, items: Sequence[Any]) -> list[list[str]]:
    return [[_fmt(cell(x)) for _, cell in columns] for x in items]


def _grid(columns: Columns, items: Sequence[Any]) -> str:
    """A table of a line per item and a column per (header, cell)."""
    return pipe_table([head for head, _ in columns], _lines(columns, items))


def _settings(sweep: Sweep) -> Columns:
    return [(c.head, c.of) for c in sweep.table_columns()]


def _reference_name(name: str) -> str:
    return name + (" (**copying: a training sonnet pasted**)" if name == COPYING_REFERENCE else "")


def sweep_tables(sweep: Sweep, rows: Sequence[Row], points: Sequence[Row], samples: int = SAMPLES) -> list[str]:
    """Every table of the sweep's report, in order."""
    try:
        references = sonnet_reference_figures(rows, samples)
    except (OSError, ValueError) as e:
        references = e
    text = [markdown_table(sweep, points)] + paired_block(sweep, rows, samples) + form_block(sweep, points)
    text += copying_block(sweep, points, references["copying"] if isinstance(references, dict) else None)
    text += sonnet_reference_block(rows, references)
    evaluation = next((ev for run in sweep.runs for ev in run.evaluations), None)
    if evaluation and sweep.references:
        text += zero_shot_block(rows, sweep.references[0], evaluation.output, samples)
    return text + teacher_block(sweep, rows)


def markdown_table(sweep: Sweep, points: Sequence[Row]) -> str:
    """The study-style table: settings, dev score with its interval, and the sweep's extra columns."""
    metrics = {p["metric"] for p in points if p["metric"]}
    score = ({"chrf": "dev chrF", "accuracy": "dev accuracy"}[metrics.pop()] if len(metrics) == 1 else "dev score")
    score += f" {interval_name(points)}"
    columns = _settings(sweep) + [("compute", lambda p: p.get("compute")),  # like with like: every arm names its dtype
                                  (score, format_score), ("test" + score[3:], lambda p: format_score(p, "test_"))]
    if any(p.get("dev_nll") is not None for p in points):  # what only learning the sonnets earns
        columns += [(f"{s} held-out NLL (nats/token)", lambda p, s=s: format_measure(p, f"{s}_nll")) for s in SPLITS]
        if any(p.get("dev_nll_scored") is not None for p in points):  # the NLL's tokens, beside it
            columns.append(("NLL tokens scored, dev / test (with the whole prompt in view)", scored_cell))
    columns += [(c.head, c.of) for c in sweep.after]
    if "accuracy" in {p["metric"] for p in points}:  # what always answering the commonest label scores
        columns.append(("majority class (dev rows) [95% CI]",
                        lambda p: _interval(p.get("majority"), p.get("majority_low"), p.get("majority_high"),
                                            n=p.get("n"))))
    return _grid(columns, points)


def form_block(sweep: Sweep, points: Sequence[Row]) -> list[str]:
    """The form of what each sonnet model wrote: the rates of 14 lines, rhyme scheme, meter and perfect sonnets."""
    shown = [p for p in points if p.get("dev_perfect") is not None]
    if not shown:
        return []
    heads = ("14 lines", "rhyme scheme", "meter (9-11 syll.)", "perfect")
    columns = _settings(sweep) + [(f"dev {h} % {interval_name(points)}", m.cell) for h, m in zip(heads, FORM_METRICS)]
    columns.append(("samples per prompt", lambda p: p.get("dev_form_samples") and round(p["dev_form_samples"])))
    return ["Form of what each model wrote (every dev sonnet through `distill.check`; Wilson 95% intervals over "
            "the sonnets, widened by a bootstrap over prompts and samples when there are several samples):\n",
            _grid(columns, shown)]


def copying_cells(novel: dict[str, float] | None, values: Sequence[float | None]) -> list[str]:
    """The copying cells of a row: its novel rate, then per corpus (training, the other held-out sonnets) the mean
    and largest longest shared run and the share of n-grams found."""
    out = ["—" if novel is None else _percent(novel)]
    for mean, largest, share in (values[:3], values[3:]):
        out += ["—" if mean is None else f"{mean:.1f} ({largest:.0f})",
                "—" if share is None else f"{100 * share:.1f}"]
    return out


def _copying_of(record: dict[str, Any]) -> list[str]:
    """The copying cells of a reference row (`app.measures.copying_record`)."""
    return copying_cells(record["novel"], [record[corpus][key] for corpus in ("training", "held_out")
                                           for key in ("longest_mean", "longest_max", "ngram_share")])


def copying_block(sweep: Sweep, points: Sequence[Row], references: dict[str, dict] | None = None) -> list[str]:
    """Copying in what each sonnet model wrote (dev, the generated lines only), with the reference rows below."""
    shown = [p for p in points if p.get("dev_novel") is not None]
    if not shown:
        return []
    lines = [_lines(_settings(sweep), [p])[0]
             + copying_cells({"rate": p["dev_novel"], "low": p.get("dev_novel_low", math.nan),
                              "high": p.get("dev_novel_high", math.nan)},
                             [p.get(f"dev_copy_{k}") for k in COPY_FIGURES])
             for p in shown]
    blank = ["—"] * (len(sweep.table_columns()) - 1)  # a reference row: its name in the first settings column
    lines += [[f"reference: {_reference_name(name)}"] + blank + _copying_of(rec)
              for name, rec in (references or {}).items()]
    n, below = round(shown[0]["dev_copy_n"]), shown[0]["dev_copy_novel_below"]
    heads = ["novel % [95% CI]", "longest run shared with training, words: mean (max)",
             f"{n}-grams found in training %",
             "longest run shared with other held-out sonnets: mean (max)", f"{n}-grams found in other held-out %"]
    return [f"Copying in what each model wrote (dev; the generated lines, not the prompt; words lower-cased, "
            f"punctuation dropped): novel = no run of {below:.0f} or more words shared with a training sonnet or "
            "another held-out sonnet (Wilson 95% CI, widened over samples as the form rates); the held-out sonnets "
            "no model saw show what chance shares:\n",
            pipe_table([c[0] for c in _settings(sweep)] + [f"dev {h}" for h in heads], lines)]


def sonnet_reference_block(rows: Sequence[Row], found: dict | Exception | None) -> list[str]:
    """The 'what chance looks like' rows under a table with sonnet runs (`found`: `sonnet_reference_figures`), and
    the held-out NLL of the model before fine-tuning beside the bars from the data alone."""
    if found is None:
        return []
    if isinstance(found, Exception):
        return [f"Sonnet reference rows left out: {found}.\n"]
    forms, copying = found["form"] or {}, found["copying"] or {}

    def chrf(name: str, split: str) -> str:
        iv = (found["chrf"][split] or {}).get(name)
        return _interval(iv.value, iv.low, iv.high, 2, iv.n) if iv else "—"

    columns = [("reference", _reference_name),
               *((f"{s} chrF [95% CI]", lambda name, s=s: "— (the references themselves)" if name == REAL_SONNETS
                  else chrf(name, s)) for s in SPLITS),
               *((f"dev {h} %", lambda name, part=part: _percent(forms[name]["rates"][part], forms[name].get("sonnets"))
                  if name in forms else "—")
                 for h, part in zip(("14 lines", "rhyme scheme", "meter", "perfect"), FORM_PARTS)),
               *((head, lambda name, i=i: _copying_of(copying[name])[i] if name in copying else "—")
                 for i, head in enumerate(("dev novel %", "dev longest run shared with training, words: mean (max)")))]
    out = ["Reference points (no model; same prompts as the runs; chrF: bootstrap 95% CI; form and novel: Wilson "
           "95% CI; copying as in the copying table):\n", _grid(columns, REFERENCE_NAMES + (REAL_SONNETS,))]
    bars = found["nll"]
    lines = [[f"base model before fine-tuning ({r['run']})"] + [_fmt(r.get(f"{s}_nll{k}")) for k in ("_base", "")
                                                                for s in SPLITS]
             for r in sonnet_rows(rows) if r.get("dev_nll_base") is not None][:1]
    if any(bars.values()):
        k = next(b["unigram"]["k"] for b in bars.values() if b)
        lines += [[f"unigram of the training sonnets' tokens (add-{k:g}) [95% CI]"]
                  + [_interval(u["nll"], u["low"], u["high"], n=u["sonnets"]) if u else "—"
                     for u in (b and b["unigram"] for b in map(bars.get, SPLITS))] + ["— (not trained)"] * 2,
                  ["uniform guess, ln(vocabulary)"]
                  + [_fmt(b["uniform"]) if b else "—" for b in map(bars.get, SPLITS)] + ["— (not trained)"] * 2]
    if lines:
        out += ["Held-out NLL before fine-tuning, and the bars from the data alone (nats per token of the true "
                "continuations, <|endoftext|> included; lower is better): a unigram of the training sonnets' tokens "
                "and a uniform guess; every fine-tuned row must clear all three:\n",
                pipe_table(["model", "dev NLL before", "test NLL before", "dev NLL after", "test NLL after"], lines)]
    return out


def _reference_row(rule: Callable[[Row, Row], bool], arm: Row, rows: Sequence[Row]) -> Row | None:
    return next((r for r in rows if r is not arm and r["status"] == "done" and r.get("seed") == arm.get("seed")
                 and rule(r, arm)), None)


def _difference(pairs: Sequence[tuple[Row, Row]], scores: Callable[[Row], ExampleScores | None], digits: int,
                samples: int) -> str:
    """arm - reference as a cell (`format_difference`); '—' where a run's scores cannot be read or paired."""
    diffs = []
    for arm, ref in pairs:
        a, b = scores(arm), scores(ref)
        if a is None or b is None:
            return "—"
        try:
            diffs.append(paired_difference(a, b, samples))
        except ValueError:
            return "—"
    return format_difference(diffs, digits)


def paired_block(sweep: Sweep, rows: Sequence[Row], samples: int = SAMPLES) -> list[str]:
    """Each arm against the sweep's reference arms on the same examples: the difference in the task metric (and,
    for sonnets, in held-out NLL), dev and test, with a paired interval; one table per reference."""
    done = [r for r in rows if r["status"] == "done"]

    @functools.lru_cache(maxsize=None)  # each run's scores are read once, whatever the references
    def read(run_dir: str, split: str, metric: str | None) -> ExampleScores | None:
        try:
            return run_scores(run_dir, split, metric)
        except (OSError, ValueError, KeyError):
            return None

    def scores(split: str, metric: str | None) -> Callable[[Row], ExampleScores | None]:
        return lambda row: read(row["run_dir"], split, metric)

    out = []
    for reference in sweep.references:
        arms: dict[tuple, list[tuple[Row, Row]]] = {}
        for row in done:
            if (ref := _reference_row(reference.rule, row, done)) is not None:
                arms.setdefault(tuple(row.get(k) for k in sweep.knobs), []).append((row, ref))
        if not arms:
            continue
        lines = []
        for pairs in arms.values():
            settings, sonnet = _lines(_settings(sweep), [pairs[0][0]])[0], pairs[0][0].get("metric") == "chrf"
            for metric, name, digits in ((None, "chrF" if sonnet else "accuracy", 2 if sonnet else 3),
                                         ("nll", "held-out NLL", 4))[:1 + sonnet]:  # sonnets: held-out NLL too
                lines.append(settings + [name]
                             + [_difference(pairs, scores(s, metric), digits, samples) for s in SPLITS])
        sonnet = any(pairs[0][0].get("metric") == "chrf" for pairs in arms.values())
        out += [f"Paired differences, arm − reference ({reference.description}), on the examples both scored"
                f"{' (for held-out NLL lower is better)' if sonnet else ''}: one seed, a paired bootstrap-t 95% "
                "interval over the n shared examples (both arms resampled on the same examples; none below "
                f"{MIN_INTERVAL_N}), the sign-flip permutation p-value (exact up to 14 examples) and, for accuracy, "
                "McNemar's test; several seeds, the mean of the per-seed differences with a 95% t-interval across "
                "seeds:\n",
                pipe_table([c[0] for c in _settings(sweep)] + ["metric", "Δ dev", "Δ test"], lines)]
    return out


def teacher_block(sweep: Sweep, rows: Sequence[Row]) -> list[str]:
    """The teacher table: per teacher its generation figures and the dev and test chrF of each of its mixes."""
    files: dict[str, Path] = {}
    for settings in (run.settings for run in sweep.runs):
        if settings.data.synthetic:
            files.setdefault(teacher_of(settings), Path(settings.data.synthetic.path))
    if not files:
        return []
    points = group_seeds(rows, list(sweep.knobs))
    summaries = {teacher: teacher_summary(path) if path.is_file() else {} for teacher, path in files.items()}

    def mixes(teacher: str) -> str:
        shown = []
        for p in points:
            if p.get("teacher") == teacher:
                mix = p.get("mix") or f"n{p['synthetic_n']} {p['synthetic_filter']}"
                shown.append(f"{mix}: {format_score(p)} / {format_score(p, 'test_')}")
        return "<br>".join(shown) or "—"

    def cost(teacher: str) -> str:
        usd = summaries[teacher].get("cost_usd")
        return "—" if usd is None else f"${usd:.{2 if usd >= 1 else 4}f}"

    columns = [("teacher", lambda t: t), ("requests", lambda t: summaries[t].get("requests")),
               ("kept", lambda t: summaries[t].get("kept")),
               ("rejected by reason", lambda t: ", ".join(f"{k}: {v}" for k, v in sorted(
                   (summaries[t].get("rejected") or {}).items())) or "—"),
               ("perfect rate [95% CI]", lambda t: _interval(*(summaries[t].get(f"perfect{k}") for k in (
                   "_rate", "_low", "_high")), n=summaries[t].get("kept"), min_n=1)),
               ("tokens in / out / thinking", lambda t: " / ".join(_fmt(summaries[t].get(f"tokens_{k}"))
                                                                   for k in ("input", "output", "thinking"))),
               ("cost", cost), ("mixes: dev chrF / test chrF", mixes)]
    return ["Teachers (generation summary from `<file>.summary.json`; — where it is absent):\n",
            _grid(columns, list(files))]


def zero_shot_block(rows: Sequence[Row], reference: Reference, output: str, samples: int = SAMPLES) -> list[str]:
    """The zero-shot Quora check (`output`: its result file) of every run that took it, with the majority class of
    the rows it scored, and its accuracy minus that of its `reference` arm, paired on the same rows."""
    took = [r for r in rows if r["status"] == "done" and r.get("zero_shot")]
    if not took:
        return []

    def difference(row: Row) -> str:
        ref = _reference_row(reference.rule, row, took)
        if ref is None:
            return "— (the reference)" if reference.rule(row, row) else f"— (no {reference.short} twin)"
        try:
            d = paired_difference(*(zero_shot_scores(Path(r["run_dir"]), output) for r in (row, ref)), samples)
        except (OSError, ValueError, KeyError) as e:
            return f"— ({e})"
        return format_difference([d], 3)

    def interval(z: Row, key: str, value: str) -> str:
        return _interval(z.get(value), z.get(f"{key}_low"), z.get(f"{key}_high"), n=z.get("zero_shot_n"))

    base = lambda r: r.get("stage") == "base"  # noqa: E731
    columns = [("model", lambda r: "base model (not fine-tuned)" if base(r) else "fine-tuned"),
               ("fine-tuned on", lambda r: "— (base model)" if base(r) else str(r.get("task"))),
               ("precision", lambda r: str(r.get("precision"))), ("QAFT", lambda r: r.get("qaft")),
               ("compute", lambda r: r.get("compute")), ("seed", lambda r: str(r.get("seed"))),
               ("zero-shot acc. [95% CI] n", lambda r: interval(r["zero_shot"], "zero_shot", "zero_shot_accuracy")),
               ("majority class [95% CI] n", lambda r: interval(r["zero_shot"], "majority", "majority")),
               (f"Δ vs {reference.short} [95% CI] n, tests", difference)]
    no_base = [] if any(map(base, rows)) else [["base (before fine-tuning)", "—", "each", "—", "—", "—",
                                               "— (no base-model run (--epochs 0) finished)", "—", "—"]]
    return ["Zero-shot Quora cloze (dev) after each run; the majority class of the same rows is the bar to beat; "
            f"Δ: accuracy minus that of {reference.description} (and seed) on the same rows, with a paired "
            "bootstrap-t 95% interval, the sign-flip p-value and McNemar's test (exact binomial on the discordant "
            "rows when there are fewer than 25, else chi-square with continuity correction):\n",
            pipe_table([head for head, _ in columns], no_base + _lines(columns, took))]

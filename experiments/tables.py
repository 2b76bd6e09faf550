"""The markdown tables of a sweep's report, generic over its declaration (`experiments.sweeps.Sweep`): the main
table (its knobs' columns, dev and test score, held-out NLL, its own columns, the majority class), the form and
copying of what each sonnet model wrote, the reference rows that show what chance scores, the paired differences
against each reference arm, the zero-shot check and the teachers' generation figures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from distill.check import FORM_PARTS
from minigpt2.metrics import MIN_INTERVAL_N

from .metrics import (COPY_FIGURES, FORM_METRICS, Row, _fmt, _interval, _percent, format_difference, format_score,
                      format_measure, group_seeds, interval_name, scored_cell)
from .references import (REAL_SONNETS, REFERENCE_NAMES, sonnet_reference_copying, sonnet_reference_forms,
                         sonnet_reference_intervals, sonnet_reference_nll)
from .runner import read_metrics
from .stats import (SAMPLES, ExampleScores, data_paths, folder_settings, paired_difference, read_task_predictions,
                    run_data_folder, run_scores, split_labels)
from .sweeps import Reference, Sweep, settings_of, teacher_of


def sonnet_rows(rows: Sequence[Row]) -> list[Row]:
    """The finished rows of the sonnet task (the one scored in chrF): those the sonnet reference rows go with."""
    return [r for r in rows if r["status"] == "done" and r.get("metric") == "chrf"]


def sweep_tables(sweep: Sweep, rows: Sequence[Row], points: Sequence[Row], samples: int = SAMPLES) -> list[str]:
    """Every table of the sweep's report, in order."""
    text = [markdown_table(sweep, points)] + paired_block(sweep, rows, samples) + form_block(sweep, points)
    text += copying_block(sweep, points, reference_copying(rows)) + sonnet_reference_block(rows, samples)
    evaluation = next((ev for run in sweep.runs for ev in run.evaluations), None)
    if evaluation and sweep.references:
        text += zero_shot_block(rows, sweep.references[0], evaluation.output, samples)
    return text + teacher_block(sweep, rows, samples)


def markdown_table(sweep: Sweep, points: Sequence[Row]) -> str:
    """The study-style table: settings, dev score with its interval, and the sweep's extra columns."""
    first, after = [(c.head, c.of) for c in sweep.table_columns()], [(c.head, c.of) for c in sweep.after]
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
    return _table([h for h, _ in first] + [score_head] + [h for h, _ in after],
                  [[_fmt(f(p)) for _, f in first] + [format_score(p)] + [_fmt(f(p)) for _, f in after] for p in points])


def _settings_cells(sweep: Sweep, point: Row) -> list[str]:
    return [_fmt(c.of(point)) for c in sweep.table_columns()]


def _heads(sweep: Sweep) -> list[str]:
    return [c.head for c in sweep.table_columns()]


def form_block(sweep: Sweep, points: Sequence[Row], reference: dict[str, Any] | None = None) -> list[str]:
    """The form of what each sonnet model wrote (every dev sonnet through the perfect-sonnet check): the rates
    of 14 lines, of the rhyme scheme, of the meter and of perfect sonnets, each with its 95% interval; the real
    held-out sonnets are the reference row."""
    shown = [p for p in points if p.get("dev_perfect") is not None]
    if not shown:
        return []
    lines = [_settings_cells(sweep, p) + [m.cell(p) for m in FORM_METRICS]
             + [_fmt(p.get("dev_form_samples") and round(p["dev_form_samples"]))] for p in shown]
    for name, rates in (reference or {}).items():
        lines.append([f"reference: {name}"] + ["—"] * (len(_heads(sweep)) - 1)
                     + [_percent(rates["rates"][part], rates.get("sonnets")) for part in FORM_PARTS] + ["—"])
    heads = (_heads(sweep)
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


def copying_block(sweep: Sweep, points: Sequence[Row], references: dict[str, dict] | None = None) -> list[str]:
    """Copying in what each sonnet model wrote (dev, the generated lines only): the novel rate and how much
    is found verbatim in the training sonnets and in the other held-out sonnets (which no model saw: chance);
    the reference rows below on the same prompts, the wrong sonnet flagged as the copying it is."""
    shown = [p for p in points if p.get("dev_novel") is not None]
    if not shown:
        return []
    lines = [_settings_cells(sweep, p)
             + copying_cells({"rate": p["dev_novel"], "low": p.get("dev_novel_low", math.nan),
                              "high": p.get("dev_novel_high", math.nan)},
                             [p.get(f"dev_copy_{k}") for k in COPY_FIGURES]) for p in shown]
    width = len(_heads(sweep))
    for name, rec in (references or {}).items():
        label = f"reference: {name}" + (f" (**{COPYING_NOTE}**)" if name == COPYING_REFERENCE else "")
        lines.append([label] + ["—"] * (width - 1) + copying_cells(rec["novel"], _copy_values(rec)))
    n, below = shown[0]["dev_copy_n"], shown[0]["dev_copy_novel_below"]
    return [f"Copying in what each model wrote (dev; the generated lines, not the prompt; words lower-cased, "
            f"punctuation dropped): novel = no run of {below:.0f} or more words shared with a training sonnet or "
            "another held-out sonnet (Wilson 95% CI, widened over samples as the form rates); the held-out sonnets "
            "no model saw show what chance shares:\n",
            _table(_heads(sweep) + [f"dev {h}" for h in copying_heads(round(n))], lines)]


def _table(heads: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    return "\n".join(["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
                     + ["| " + " | ".join(cells) + " |" for cells in lines]) + "\n"


def _copy_values(rec: dict[str, Any]) -> list[float]:
    return [rec[corpus][key] for corpus in ("training", "held_out") for key in ("longest_mean", "longest_max",
                                                                                "ngram_share")]


def _tokenizer_dir(row: Row) -> str | None:
    return data_paths(folder_settings(Path(row["run_dir"])))[1]


def sonnet_references(rows: Sequence[Row], compute: Callable[..., Any], *more: Any) -> Any:
    """`compute(folder, "dev", numbers, tokenizer_dir, *more)` for the dev prompts the sweep's first finished sonnet
    run scored; None when there is none or its data is not found."""
    done = sonnet_rows(rows)
    if not done:
        return None
    try:
        return compute(str(run_data_folder(Path(done[0]["run_dir"]))), "dev", _scored_numbers(done[0], "dev"),
                       _tokenizer_dir(done[0]), *more)
    except (OSError, ValueError):
        return None


def reference_copying(rows: Sequence[Row]) -> dict[str, dict]:
    """The copying of each reference row on the sweep's dev prompts (`sonnet_reference_copying`); {} without."""
    return sonnet_references(rows, sonnet_reference_copying) or {}


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
    done = sonnet_rows(rows)
    if not done:
        return []
    row = done[0]
    try:
        folder, tok = run_data_folder(Path(row["run_dir"])), _tokenizer_dir(row)
        numbers = {split: _scored_numbers(row, split) for split in ("dev", "test")}
        found = {split: sonnet_reference_intervals(str(folder), split, numbers[split], tok,
                                                   samples) for split in ("dev", "test")}
        forms = sonnet_reference_forms(str(folder), "dev", numbers["dev"], tok) or {}
        copying = sonnet_reference_copying(str(folder), "dev", numbers["dev"], tok) or {}
        bars = {split: sonnet_reference_nll(str(folder), split, numbers[split], tok)
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


def _reference_row(rule: Callable[[Row, Row], bool], arm: Row, rows: Sequence[Row]) -> Row | None:
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


def paired_block(sweep: Sweep, rows: Sequence[Row], samples: int = SAMPLES) -> list[str]:
    """Each arm against the sweep's reference arms on the same examples: the difference in the task metric (and,
    for sonnets, in held-out NLL), dev and test, with a paired interval; one table per reference."""
    done = [r for r in rows if r["status"] == "done"]
    cache: dict = {}
    out = []
    for description, rule, _ in ((r.description, r.rule, r.short) for r in sweep.references):
        arms: dict[tuple, list[tuple[Row, Row]]] = {}
        for row in done:
            ref = _reference_row(rule, row, done)
            if ref is not None:
                key = tuple((k, row.get(k)) for k in sweep.knobs)
                arms.setdefault(key, []).append((row, ref))
        if not arms:
            continue
        lines = []
        for pairs in arms.values():
            arm = pairs[0][0]
            settings = _settings_cells(sweep, arm)
            metric = "chrF" if arm.get("metric") == "chrf" else "accuracy"
            lines.append(settings + [metric] + [_difference(pairs, s, None, samples, cache) for s in ("dev", "test")])
            if arm.get("metric") == "chrf":  # the sonnet task: its held-out NLL too
                lines.append(settings + ["held-out NLL"]
                             + [_difference(pairs, s, "nll", samples, cache) for s in ("dev", "test")])
        sonnet = any(pairs[0][0].get("metric") == "chrf" for pairs in arms.values())
        out += [f"Paired differences, arm − reference ({description}), on the examples both scored"
                f"{' (for held-out NLL lower is better)' if sonnet else ''}: one seed, a paired bootstrap-t 95% "
                "interval over the n shared examples (both arms resampled on the same examples; none below "
                f"{MIN_INTERVAL_N}), the sign-flip permutation p-value (exact up to 14 examples) and, for accuracy, "
                "McNemar's test; several seeds, the mean of the per-seed differences with a 95% t-interval across "
                "seeds:\n",
                _table(_heads(sweep) + ["metric", "Δ dev", "Δ test"], lines)]
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
        settings = settings_of(run)
        if settings.data.synthetic:
            files.setdefault(teacher_of(settings), Path(settings.data.synthetic.path))
    if not files:
        return []
    points = group_seeds(rows, list(sweep.knobs))
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


def _zero_shot_difference(row: Row, rows: Sequence[Row], samples: int, reference: Reference, output: str) -> str:
    """The zero-shot accuracy of `row` minus that of its reference arm (e.g. its fp32 twin: same stage, task and
    seed) on the same rows."""
    ref = _reference_row(reference.rule, row, rows)
    if ref is None:
        return "— (the reference)" if reference.rule(row, row) else f"— (no {reference.short} twin)"
    try:
        d = paired_difference(zero_shot_scores(Path(row["run_dir"]), output),
                              zero_shot_scores(Path(ref["run_dir"]), output), samples)
    except (OSError, ValueError, KeyError) as e:
        return f"— ({e})"
    return format_difference([d], 3)


def zero_shot_block(rows: Sequence[Row], reference: Reference, output: str, samples: int = SAMPLES) -> list[str]:
    """The zero-shot Quora check (`output`: its result file) of every run that took it, with the majority class of
    the rows it scored, and its accuracy minus that of its `reference` arm, paired on the same rows."""
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
                      _zero_shot_difference(r, took, samples, reference, output)])
    if not any(r.get("stage") == "base" for r in rows):
        lines.insert(0, ["base (before fine-tuning)", "—", "each", "—", "—", "—",
                         "— (no base-model run (--epochs 0) finished)", "—", "—"])
    return ["Zero-shot Quora cloze (dev) after each run; the majority class of the same rows is the bar to beat; "
            f"Δ: accuracy minus that of {reference.description} (and seed) on the same rows, with a paired "
            "bootstrap-t 95% interval, the sign-flip p-value and McNemar's test (exact binomial on the discordant "
            "rows when there are fewer than 25, else chi-square with continuity correction):\n",
            _table(["model", "fine-tuned on", "precision", "QAFT", "compute", "seed", "zero-shot acc. [95% CI] n",
                    "majority class [95% CI] n", f"Δ vs {reference.short} [95% CI] n, tests"], lines)]




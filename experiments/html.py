"""`<out>/index.html`: the whole study on one self-contained page (plain HTML and CSS, plots inlined, no script):
its provenance, the study's figures beside the reproduced ones, every sweep's tables and plots, and a few generated
sonnets beside the true ones with their rhyme scheme marked. Built from the results folder and the run folders its
CSVs name, so it can be rebuilt at any time.
"""

from __future__ import annotations

import base64
import csv
import html
import itertools
import json
import math
import os
import platform
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from course.formats import SONNETS, read_generated

from .report import UNKNOWN_CODE, check_scored_files, code_label, code_summary
from .stats import run_data_folder
from .sweeps import SWEEPS, SweepOptions

SAMPLE_SONNETS = 3
_WORD = re.compile(r"[A-Za-z][A-Za-z'\u2019]*")

CSS = """
body { font-family: Georgia, 'DejaVu Serif', serif; max-width: 1180px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-family: 'DejaVu Sans', Arial, sans-serif;
        font-size: 0.86em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f1f1f1; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.note { color: #555; font-size: 0.92em; }
.warning { color: #a40000; }
.pair { display: flex; gap: 1.2em; flex-wrap: wrap; margin: 1em 0 1.6em; }
.sonnet { flex: 1 1 480px; border: 1px solid #ddd; border-radius: 4px; padding: 0.6em 0.9em; background: #fffdf7; }
.sonnet h4 { margin: 0.1em 0 0.5em; font-family: 'DejaVu Sans', Arial, sans-serif; font-size: 0.9em; }
.line { white-space: pre-wrap; font-size: 0.95em; }
.letter { display: inline-block; width: 1.4em; font-weight: bold; color: #2a5db0;
          font-family: 'DejaVu Sans Mono', monospace; }
.miss .letter, .miss .end { color: #c00000; }
.end { text-decoration: underline; }
.verdict { font-family: 'DejaVu Sans', Arial, sans-serif; font-size: 0.85em; margin-top: 0.5em; }
.ok { color: #1a7f37; font-weight: bold; }
.bad { color: #c00000; font-weight: bold; }
"""


# ---------------------------------------------------------------------------------------------- markdown -> HTML

def _inline(text: str) -> str:
    """Escape, then the few markdown marks the reports use: **bold**, `code`, <br> in table cells."""
    out = html.escape(text).replace("&lt;br&gt;", "<br>")
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _tr(tag: str, cells: Sequence[Any]) -> str:
    return "<tr>" + "".join(f"<{tag}>{_inline(str(c))}</{tag}>" for c in cells) + "</tr>"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return "<table>" + _tr("th", head) + "".join(_tr("td", row) for row in rows) + "</table>"


def markdown_to_html(text: str) -> str:
    """The reports' markdown (headings, paragraphs, pipe tables) as HTML; headings drop one level."""
    parts: list[str] = []
    for is_table, lines in itertools.groupby(text.splitlines(), key=lambda line: line.startswith("|")):
        if is_table:
            block = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
            parts.append(_table(block[0], [r for r in block[1:] if not all(set(c) <= {"-", ":"} for c in r)]))
            continue
        for line in lines:
            if line.startswith("#"):
                level = min(len(line) - len(line.lstrip("#")) + 1, 4)
                parts.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
            elif line.strip():
                cls = "note warning" if line.startswith("**Warning") else "note"
                parts.append(f'<p class="{cls}">{_inline(line)}</p>')
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- study vs reproduced

def _read_csv(path: Path) -> list[dict[str, Any]]:
    """A sweep CSV's rows with numbers as numbers (empty score cells NaN, other empty cells None)."""
    scores = {"dev_score", "ci_low", "ci_high", "test_score", "test_low", "test_high"}
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in raw.items():
                if v == "":
                    row[k] = math.nan if k in scores else None
                elif k in ("qaft",):
                    row[k] = v == "True"
                else:
                    try:
                        number = float(v)
                        row[k] = int(number) if number.is_integer() and k not in scores else number
                    except ValueError:
                        row[k] = v
            rows.append(row)
    return rows


def study_comparison(out: Path) -> str:
    """Every figure the study published (each sweep's `Sweep.published`) beside this reproduction's, read from the
    sweeps' CSVs in `out`."""
    lines = []
    for name, build in SWEEPS.items():
        path = out / f"{name}.csv"
        rows = _read_csv(path) if path.is_file() else []
        for figure in build(SweepOptions()).published:
            row = figure.pick(rows)
            dev, test = figure.cells(row) if row else ("—", "—")
            lines.append([figure.name(row) if callable(figure.name) else figure.name, figure.metric, figure.dev, dev,
                          figure.test, test])
    head = ["model", "metric", "study dev", "reproduced dev [95% CI]", "study test", "reproduced test [95% CI]"]
    return _table(head, lines)


# ---------------------------------------------------------------------------------------------- provenance

def _finished(out: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """The finished rows of the sweeps' CSVs in `out`, in sweep order."""
    rows = [row for name in names if (out / f"{name}.csv").is_file() for row in _read_csv(out / f"{name}.csv")]
    return [row for row in rows if row.get("status") == "done" and row.get("run_dir")]


def machine() -> str:
    """This machine in a line: OS, processor, cores, Python, torch and any CUDA device."""
    import torch

    gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "no CUDA device"
    return (f"{platform.platform()}; {platform.machine()} {platform.processor() or ''}".rstrip()
            + f", {os.cpu_count()} logical CPUs; Python {platform.python_version()}, torch {torch.__version__}; "
            + gpu)


def provenance(out: Path, names: Sequence[str], command: str | None = None) -> str:
    """Where the page comes from: the code the runs ran (a mixed study flagged), the date, the command that built the
    page, the machine, and each input's sha256 as the runs recorded it (with how many runs used it)."""
    inputs: dict[tuple[str, str], int] = {}
    codes = []
    for run_dir in (Path(row["run_dir"]) for row in _finished(out, names)):
        try:
            config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            codes.append(UNKNOWN_CODE)
            continue
        codes.append(code_label(config))
        fp = config.get("fingerprint") or {}
        found = [(f"data: {name}", sha) for name, sha in (fp.get("data") or {}).items()]
        if fp.get("base_weights"):
            found.append((f"base weights: {fp['base_weights']['file']}", fp["base_weights"]["sha256"]))
        for key in found:
            inputs[key] = inputs.get(key, 0) + 1
    ranked, mixed = code_summary(codes)
    facts = [("code of the runs", "<br>".join(f"{label} ({n} run{'s' if n > 1 else ''})" for label, n in ranked)
              or "no finished run"),
             ("page written", datetime.now(timezone.utc).isoformat(timespec="seconds")),
             ("page built by", command or " ".join(["python -m experiments"] + sys.argv[1:])), ("machine", machine())]
    table = "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_inline(v)}</td></tr>" for k, v in facts)
    table += "</table>"
    if mixed:
        table += ('<p class="note warning"><strong>Mixed study:</strong> the runs come from more than one code '
                  "version or from a work tree with uncommitted changes; their figures may not be comparable.</p>")
    if inputs:
        rows = [[name, f"`{sha}`", n] for (name, sha), n in sorted(inputs.items())]
        table += _table(["input", "sha256", "runs"], rows)
    return table


# ---------------------------------------------------------------------------------------------- sonnets

def sonnet_html(text: str, title: str) -> str:
    """One sonnet: each line with its rhyme letter, its end word underlined, failed rhyme pairs in red, and
    distill.check's verdict."""
    from distill.check import SCHEME, check_sonnet, end_word, sonnet_lines

    check = check_sonnet(text)
    failed = {n for i, j, _, _ in check.failed_pairs for n in (i, j)}
    rows = []
    for n, line in enumerate(sonnet_lines(text), start=1):
        letter = SCHEME[n - 1] if n <= len(SCHEME) else "·"
        words = list(_WORD.finditer(line)) if end_word(line) else []
        if words:  # underline the last word as written (case and punctuation kept)
            m = words[-1]
            shown = (html.escape(line[:m.start()]) + f'<span class="end">{html.escape(m.group())}</span>'
                     + html.escape(line[m.end():]))
        else:
            shown = html.escape(line)
        cls = "line miss" if n in failed else "line"
        rows.append(f'<div class="{cls}"><span class="letter">{letter}</span>{shown}</div>')
    if check.perfect:
        verdict = '<span class="ok">perfect</span>: 14 lines rhyming ABAB CDCD EFEF GG'
    else:
        reasons = "; ".join(check.reasons[:3]) + ("; ..." if len(check.reasons) > 3 else "")
        verdict = f'<span class="bad">not perfect</span>: {html.escape(reasons)}'
    return (f'<div class="sonnet"><h4>{html.escape(title)}</h4>' + "\n".join(rows)
            + f'<div class="verdict">{verdict}</div></div>')


def sonnet_run(out: Path) -> Path | None:
    """A finished sonnet run to show: the baseline's, else the first finished sonnet run of any sweep."""
    return next((Path(row["run_dir"]) for row in _finished(out, SWEEPS)  # the baseline's first
                 if row.get("task") == "sonnet" and Path(row["run_dir"]).is_dir()), None)


def sonnet_samples(run_dir: Path, n: int = SAMPLE_SONNETS) -> str:
    """Up to `n` generated dev sonnets of a run beside the true ones."""
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    check_scored_files(run_dir, metrics)  # shown only as the run scored them
    generated = read_generated(run_dir / metrics["dev_predictions"])[:n]
    truths = SONNETS.split_references(run_data_folder(run_dir), "dev") or {}
    pairs = ['<div class="pair">' + sonnet_html(s.text, f"generated, sonnet {s.number}")
             + (sonnet_html(truths[s.number], f"true sonnet {s.number}") if truths.get(s.number) else "") + "</div>"
             for s in generated]
    return (f'<p class="note">Run <code>{html.escape(str(run_dir))}</code>, dev prompts (the first 3 lines are '
            'the prompt). Letters give the rhyme scheme; red lines are in a pair that does not rhyme; the end word '
            'of each line is underlined.</p>' + "\n".join(pairs))


# ---------------------------------------------------------------------------------------------- the page

def write_index(out: str | Path, sweeps: Sequence[str] | None = None, command: str | None = None) -> Path:
    """Write `<out>/index.html` from the reports in `out` (every sweep with a `<sweep>.md`); `command` is what
    made them (default: this process's command line)."""
    out = Path(out)
    names = [n for n in (sweeps or SWEEPS) if (out / f"{n}.md").is_file()]
    body = ["<h1>minigpt2: the fine-tuning study, reproduced</h1>",
            '<p class="note">Dev and test scores with bootstrap-t 95% intervals over the n examples (one seed; '
            "none below 8 examples) or the mean over seeds with a 95% t-interval across seeds; differences between "
            "arms on the same examples with paired intervals, sign-flip p-values and, for accuracy, McNemar's test. "
            "Reference rows under each sonnet table show what chance scores; the held-out NLL and the form rates show "
            "what only learning earns.</p>",
            "<h2>Provenance</h2>", provenance(out, names, command),
            "<h2>The study beside this reproduction</h2>", study_comparison(out)]
    body.append("<h2>Contents</h2><ul>" + "".join(f'<li><a href="#{n}">{n}</a></li>' for n in names)
                + '<li><a href="#sonnets">generated sonnets</a></li></ul>')
    for name in names:
        body.append(f'<section id="{name}">' + markdown_to_html((out / f"{name}.md").read_text(encoding="utf-8")))
        for png in (out / f"{name}.png", out / f"{name}-nll.png"):
            if png.is_file():
                data = base64.b64encode(png.read_bytes()).decode("ascii")  # inlined: the page is one file
                body.append(f'<img alt="{png.stem} plot" src="data:image/png;base64,{data}">')
        body.append("</section>")
    body.append('<section id="sonnets"><h2>Generated sonnets beside the true ones</h2>')
    run = sonnet_run(out)
    try:
        body.append(sonnet_samples(run) if run else '<p class="note">No finished sonnet run yet.</p>')
    except (OSError, ValueError, KeyError) as e:
        body.append(f'<p class="note warning">Sonnets not shown: {html.escape(str(e))}</p>')
    body.append("</section>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>minigpt2 study report</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path

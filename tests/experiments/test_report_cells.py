"""Every numeric cell of a generated report, read back and compared with the figure in the run's metrics.json that
it claims to show: the markdown table, the same table in index.html, and the CSV. Columns are found by their
header (or CSV column) name, so a new column elsewhere in a table does not break these tests; a column that
shows another figure (the test NLL under "dev held-out NLL", the model before training, the chrF difference on
the NLL row) does. Runs the tiny lora-targets sweep once (tests/conftest.py `tiny_sweep`)."""

from __future__ import annotations

import csv
import html
import json
import math
import re
from pathlib import Path

import pytest

from minigpt2.metrics import MIN_INTERVAL_N

pytestmark = pytest.mark.command

SWEEP = "lora-targets"
NUMBER = r"[+-]?\d[\d,]*(?:\.\d+)?"
CELL = re.compile(rf"^({NUMBER})(?: \[({NUMBER}), ({NUMBER})\])?(?: n=(\d+)| \(n=(\d+), too few for an interval\))?"
                  rf"(?: \((\d+) seeds[^)]*\))?(?:, (sign-flip p=.*))?$")


def parse_cell(cell: str) -> tuple[float, float | None, float | None]:
    """'26.07 [25.13, 26.91] n=12' -> (26.07, 25.13, 26.91); '+0.0076 [...]', '2,048' and '26.07 (n=2, too few
    for an interval)' too."""
    m = CELL.match(cell.strip())
    assert m, f"not a number cell: {cell!r}"
    num = [None if g is None else float(g.replace(",", "")) for g in m.groups()[:3]]
    return num[0], num[1], num[2]


def cell_n(cell: str) -> int | None:
    """The n a cell shows beside its interval (or in place of one): '... n=12' -> 12; None where it shows none."""
    m = CELL.match(cell.strip())
    assert m, f"not a number cell: {cell!r}"
    n = m.group(4) or m.group(5)
    return None if n is None else int(n)


def decimals(cell: str) -> int:
    first = cell.strip().split(" ")[0]
    return len(first.split(".")[1]) if "." in first else 0


def shows(cell: str, value: float, low: float | None = None, high: float | None = None, scale: float = 1.0,
          n: int | None = None) -> None:
    """The cell is `value` [low, high] rounded to the digits it prints (nothing more, nothing less), with `n`
    beside it when given; where `low` is None the cell must show no interval."""
    got, got_low, got_high = parse_cell(cell)
    tol = 0.5 * 10 ** -decimals(cell) + 1e-9
    assert abs(got - scale * value) <= tol, (cell, scale * value)
    if n is not None:
        assert cell_n(cell) == n, (cell, n)
    if low is None:
        assert got_low is None, (cell, "no interval expected")
    else:
        assert got_low is not None and abs(got_low - scale * low) <= tol, (cell, scale * low)
        assert abs(got_high - scale * high) <= tol, (cell, scale * high)


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every pipe table of a markdown text as a list of {header: cell} rows."""
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            heads = [c.strip() for c in line.strip("|").split(" | ")]
            rows = []
            for body in lines[i + 2:]:
                if not body.startswith("|"):
                    break
                rows.append(dict(zip(heads, (c.strip() for c in body.strip().strip("|").split(" | ")))))
            tables.append(rows)
    return tables


def html_tables(text: str) -> list[list[dict[str, str]]]:
    """Every <table> with a header row of an HTML page as {header: cell} rows (cells unescaped, tags dropped)."""
    def cells(row: str, tag: str) -> list[str]:
        return [html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
                for c in re.findall(rf"<{tag}[^>]*>(.*?)</{tag}>", row, flags=re.S)]
    tables = []
    for table in re.findall(r"<table>(.*?)</table>", text, flags=re.S):
        rows = re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)
        heads = cells(rows[0], "th") if rows else []
        if heads and len(heads) > 1 and not cells(rows[0], "td"):
            tables.append([dict(zip(heads, cells(r, "td"))) for r in rows[1:]])
    return tables


def table_with(tables: list[list[dict[str, str]]], *heads: str) -> list[dict[str, str]]:
    found = [t for t in tables if t and all(h in t[0] for h in heads)]
    assert len(found) == 1, f"{len(found)} tables with columns {heads}"
    return found[0]


@pytest.fixture(scope="module")
def report(tiny_sweep):
    sweep = tiny_sweep(SWEEP)
    runs = sweep.runs / SWEEP
    metrics = {d.name: json.loads((d / "metrics.json").read_text()) for d in runs.iterdir() if d.is_dir()}
    with open(sweep.out / f"{SWEEP}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_targets = {r["targets"]: metrics[r["run"]] for r in rows}
    assert set(by_targets) == {"attn", "attn+mlp"} and all(r["status"] == "done" for r in rows)
    return {"md": (sweep.out / f"{SWEEP}.md").read_text(), "html": (sweep.out / "index.html").read_text(),
            "rows": rows, "by_targets": by_targets, "metrics": metrics}


def check_main_table(table: list[dict[str, str]], by_targets: dict) -> None:
    assert len(table) == 2
    for row in table:
        m = by_targets[row["targets"]]
        for split in ("dev", "test"):
            n = len(m["heldout_nll"][split]["per_sonnet"])  # the sonnets scored: chrF's n too
            assert cell_n(row[f"{split} chrF [95% CI]"]) == n
            rec = m["heldout_nll"][split]
            assert rec["nll"] != m["heldout_nll_base"][split]["nll"]  # the check below can tell them apart
            shows(row[f"{split} held-out NLL (nats/token)"], rec["nll"], rec["low"], rec["high"], n=rec["sonnets"])
        assert m["heldout_nll"]["dev"]["nll"] != m["heldout_nll"]["test"]["nll"]
        shows(row["trainable params"], m["trainable_params"])


def check_paired_table(table: list[dict[str, str]], by_targets: dict) -> None:
    """Arm (attn) minus reference (attn+mlp), per metric row: the chrF row shows the chrF difference and the NLL
    row the NLL difference, each on its own split."""
    arm, ref = by_targets["attn"], by_targets["attn+mlp"]
    metric_rows = {r["metric"]: r for r in table}
    assert set(metric_rows) == {"chrF", "held-out NLL"}
    for split in ("dev", "test"):
        shows(metric_rows["chrF"][f"Δ {split}"], arm[split]["chrf"] - ref[split]["chrf"])
        shows(metric_rows["held-out NLL"][f"Δ {split}"],
              arm["heldout_nll"][split]["nll"] - ref["heldout_nll"][split]["nll"])
        shared = len(set(arm["heldout_nll"][split]["per_sonnet"]) & set(ref["heldout_nll"][split]["per_sonnet"]))
        for metric in ("chrF", "held-out NLL"):
            assert cell_n(metric_rows[metric][f"Δ {split}"]) == shared
            assert ", sign-flip p=" in metric_rows[metric][f"Δ {split}"]


def check_base_table(table: list[dict[str, str]], metrics: dict) -> None:
    """The 'before fine-tuning' row names a run; its cells are that run's base and fine-tuned held-out NLL (the
    reference rows below it, unigram and uniform, are the copying tests' to check)."""
    (row,) = [r for r in table if r["model"].startswith("base model before fine-tuning")]
    run = re.search(r"\((.+)\)", row["model"]).group(1)
    m = metrics[run]
    for split in ("dev", "test"):
        shows(row[f"{split} NLL before"], m["heldout_nll_base"][split]["nll"])
        shows(row[f"{split} NLL after"], m["heldout_nll"][split]["nll"])


FORM_HEADS = {"fourteen_lines": "dev 14 lines % [95% CI]", "rhyme_scheme": "dev rhyme scheme % [95% CI]",
              "meter": "dev meter (9-11 syll.) % [95% CI]", "perfect": "dev perfect % [95% CI]"}


def check_form_table(table: list[dict[str, str]], by_targets: dict) -> None:
    rows = [r for r in table if r["targets"] in by_targets]
    assert len(rows) == 2
    for row in rows:
        form = by_targets[row["targets"]]["form"]["dev"]
        for part, head in FORM_HEADS.items():
            r = form["rates"][part]
            shows(row[head], r["rate"], r["low"], r["high"], scale=100)
        shows(row["samples per prompt"], form["samples"])


def check_tables(tables: list[list[dict[str, str]]], report: dict) -> None:
    check_main_table(table_with(tables, "targets", "dev chrF [95% CI]", "dev held-out NLL (nats/token)"),
                     report["by_targets"])
    check_paired_table(table_with(tables, "metric", "Δ dev", "Δ test"), report["by_targets"])
    check_base_table(table_with(tables, "dev NLL before", "dev NLL after"), report["metrics"])
    check_form_table(table_with(tables, "targets", "dev 14 lines % [95% CI]"), report["by_targets"])


def test_every_markdown_cell_shows_the_figure_of_its_run(report):
    check_tables(markdown_tables(report["md"]), report)


def test_every_html_cell_shows_the_figure_of_its_run(report):
    tables = html_tables(report["html"])
    check_tables(tables, report)
    assert markdown_tables(report["md"])[0] == table_with(tables, "targets", "dev held-out NLL (nats/token)")


# CSV column -> where its figure is in metrics.json (a path of keys)
CSV_FROM_METRICS = {
    "dev_score": ("dev", "chrf"), "test_score": ("test", "chrf"), "trainable_params": ("trainable_params",),
    "total_params": ("total_params",), "best_epoch": ("best", "epoch"), "wall_s": ("wall_s",),
    **{f"{split}_nll{end}": ("heldout_nll", split, key) for split in ("dev", "test")
       for end, key in (("", "nll"), ("_low", "low"), ("_high", "high"))},
    **{f"{split}_nll_base": ("heldout_nll_base", split, "nll") for split in ("dev", "test")},
    **{f"{split}_form_samples": ("form", split, "samples") for split in ("dev", "test")},
    **{f"{split}_{part}{end}": ("form", split, "rates", part, key) for split in ("dev", "test")
       for part in FORM_HEADS for end, key in (("", "rate"), ("_low", "low"), ("_high", "high"))},
}


def test_every_csv_figure_is_the_one_in_its_runs_metrics(report):
    for row in report["rows"]:
        m = report["metrics"][row["run"]]
        for column, path in CSV_FROM_METRICS.items():
            expected = m
            for key in path:
                expected = expected[key]
            if expected is None:  # no interval below the minimum n: an empty (or NaN) cell, never a number
                assert row[column] in ("", "nan"), (row["run"], column, row[column])
                continue
            assert math.isclose(float(row[column]), float(expected), rel_tol=1e-12, abs_tol=1e-12), \
                (row["run"], column, row[column], expected)
        for split, low, high in (("dev", "ci_low", "ci_high"), ("test", "test_low", "test_high")):
            n = int(row[f"n_{split}"])
            if n < MIN_INTERVAL_N:
                assert row[low] in ("", "nan") and row[high] in ("", "nan"), (row["run"], split, n)
            else:
                assert float(row[low]) < float(row[f"{split}_score"]) < float(row[high])


def test_the_markdown_interval_is_the_csv_interval(report):
    """The score intervals are recomputed by the report (not in metrics.json): the table shows the CSV's."""
    table = markdown_tables(report["md"])[0]
    for row in table:
        (csv_row,) = [r for r in report["rows"] if r["targets"] == row["targets"]]
        for split, score, low, high in (("dev", "dev_score", "ci_low", "ci_high"),
                                        ("test", "test_score", "test_low", "test_high")):
            bounds = (None, None) if csv_row[low] in ("", "nan") else (float(csv_row[low]), float(csv_row[high]))
            shows(row[f"{split} chrF [95% CI]"], float(csv_row[score]), *bounds, n=int(csv_row[f"n_{split}"]))


def test_the_cell_parser_refuses_what_is_not_a_number():
    assert parse_cell("+0.0076 [-0.0058, +0.0094]") == (0.0076, -0.0058, 0.0094)
    assert parse_cell("41.00 [28.29, 53.71] (2 seeds)") == (41.0, 28.29, 53.71)
    assert parse_cell("2,048") == (2048.0, None, None)
    assert parse_cell("41.90 [40.10, 43.60] n=12") == (41.9, 40.1, 43.6) and cell_n("41.90 [40.10, 43.60] n=12") == 12
    assert parse_cell("26.07 (n=2, too few for an interval)") == (26.07, None, None)
    assert cell_n("-0.23 (n=2, too few for an interval), sign-flip p=0.5") == 2
    with pytest.raises(AssertionError):
        parse_cell("—")
    with pytest.raises(AssertionError):
        shows("10.824", 10.8246)

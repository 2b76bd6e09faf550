"""What the study's page (experiments.html), a sweep's files (experiments.report) and its plots (experiments.plots)
show, pinned on hand-made rows and folders where plausible one-line slips give other output (the survivors of
`tools/mutate.py --auto` on those modules; docs/testing.md, "Automated mutants"). Expected text is written out
here as a reader sees it; plots are read through their matplotlib objects, not pixels."""

from __future__ import annotations

import csv
import html
import json
import math
import sys
from datetime import datetime
from pathlib import Path

import pytest

from course.formats import SONNETS
from distill.check import check_sonnet
from experiments import html as page
from experiments import report
from experiments.sweeps import TINY_DATA_DIR
from minigpt2.download import sha256_file

# A sonnet distill.check calls perfect (ABAB CDCD EFEF GG on plain CMU rhymes), as in test_experiments_html.py.
ENDS = "day night way light tree sun free run rain sky pain high sea me".split()
PERFECT = "\n".join(f"I sing a line that ends upon the {w}," for w in ENDS)


# ---------------------------------------------------------------------------------------------- html: reading CSVs

def test_a_sweep_csv_reads_back_with_numbers_nan_none_and_flags(tmp_path):
    path = tmp_path / "x.csv"
    head = ["dev_score", "ci_low", "ci_high", "test_score", "test_low", "test_high", "qaft", "seed", "rank", "lr",
            "note"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerow(["30.0", "28.0", "32.0", "29.0", "27.0", "31.0", "True", "1", "4.0", "0.01", "a\r\nb"])
        w.writerow(["", "", "", "", "", "", "False", "", "", "", ""])
    one, two = page._read_csv(path)
    for k in ("dev_score", "ci_low", "ci_high", "test_score", "test_low", "test_high"):
        assert type(one[k]) is float and one[k] == {"dev_score": 30.0, "ci_low": 28.0, "ci_high": 32.0,
                                                     "test_score": 29.0, "test_low": 27.0, "test_high": 31.0}[k], k
        assert type(two[k]) is float and math.isnan(two[k]), k  # an empty score is NaN ...
    for k in ("seed", "rank", "lr", "note"):
        assert two[k] is None, k  # ... any other empty cell None
    assert one["qaft"] is True and two["qaft"] is False
    assert type(one["seed"]) is int and one["seed"] == 1 and type(one["rank"]) is int and one["rank"] == 4
    assert one["lr"] == 0.01 and one["note"] == "a\r\nb"  # a quoted line break as written


# ---------------------------------------------------------------------------------------------- html: markdown

def test_markdown_tables_headings_and_paragraphs_line_by_line():
    text = ("# X marks\n"
            "|XL|n|\n|:--|--:|\n|X|1|\n|y|2|\n"
            "after the table\n"
            "second line\n"
            "#### deep\n"
            "### three\n"
            "**Warning:** careful\n")
    assert page.markdown_to_html(text).split("\n") == [
        "<h2>X marks</h2>",
        "<table><tr><th>XL</th><th>n</th></tr><tr><td>X</td><td>1</td></tr><tr><td>y</td><td>2</td></tr></table>",
        '<p class="note">after the table</p>',
        '<p class="note">second line</p>',
        "<h4>deep</h4>",
        "<h4>three</h4>",
        '<p class="note warning"><strong>Warning:</strong> careful</p>']
    assert page.markdown_to_html("##Xenia") == "<h3>Xenia</h3>"  # only the marks are stripped
    # a table without a separator line keeps every row below its head
    assert page.markdown_to_html("|a|\n|1|") == "<table><tr><th>a</th></tr><tr><td>1</td></tr></table>"


# ---------------------------------------------------------------------------------------------- html: machine

@pytest.mark.parametrize("processor, gpus, expected_start, expected_gpu", [
    ("", 0, "Linux-test; x86_64, 16 logical CPUs", "no CUDA device"),
    ("Intel", 2, "Linux-test; x86_64 Intel, 16 logical CPUs", "GPU 0, GPU 1"),
])
def test_the_machine_line(monkeypatch, processor, gpus, expected_start, expected_gpu):
    import torch

    monkeypatch.setattr(page.platform, "platform", lambda: "Linux-test")
    monkeypatch.setattr(page.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(page.platform, "processor", lambda: processor)
    monkeypatch.setattr(page.platform, "python_version", lambda: "3.11.9")
    monkeypatch.setattr(page.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"GPU {i}")
    assert page.machine() == f"{expected_start}; Python 3.11.9, torch {torch.__version__}; {expected_gpu}"


# ---------------------------------------------------------------------------------------------- html: provenance

class FixedClock:
    @staticmethod
    def now(tz=None):
        return datetime(2026, 12, 7, 5, 0, 0, tzinfo=tz)


def run_folder(root: Path, name: str, config: dict | None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    if config is not None:
        (run / "config.json").write_text(json.dumps(config))
    return run


def test_provenance_counts_codes_and_inputs_over_the_finished_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(page, "machine", lambda: "the machine")
    monkeypatch.setattr(page, "datetime", FixedClock)
    monkeypatch.setattr(sys, "argv", ["experiments/__main__.py", "baseline", "--tiny"])
    data = {"data": {"sonnets.txt": "ab" * 32, "dev.txt": "cd" * 32}}
    clean = {"fingerprint": {**data, "code": {"git_commit": "a" * 7}}}
    runs = [run_folder(tmp_path, "unreadable", None),  # no config.json: the code is unknown, the rest still counted
            run_folder(tmp_path, "r1", clean), run_folder(tmp_path, "r2", clean),
            run_folder(tmp_path, "r3", {"fingerprint": {"data": {"sonnets.txt": "ab" * 32},
                                                        "base_weights": {"file": "gpt2.safetensors",
                                                                         "sha256": "ef" * 32},
                                                        "code": {"git_commit": "b" * 7, "git_dirty": True}}}),
            run_folder(tmp_path, "not-done", clean)]
    rows = [{"run": r.name, "status": "done", "run_dir": str(r)} for r in runs[:4]]
    rows += [{"run": "not-done", "status": "missing", "run_dir": str(runs[4])}, {"run": "x", "status": "done"}]
    report.write_csv(rows, tmp_path / "baseline.csv")
    text = page.provenance(tmp_path, ["baseline"])
    assert text == (
        "<table><tr><th>code of the runs</th><td>commit aaaaaaa (2 runs)<br>commit bbbbbbb, work tree with uncommitted "
        "changes (1 run)<br>unknown (the run recorded no code version) (1 run)</td></tr>"
        "<tr><th>page written</th><td>2026-12-07T05:00:00+00:00</td></tr>"
        "<tr><th>page built by</th><td>python -m experiments baseline --tiny</td></tr>"
        "<tr><th>machine</th><td>the machine</td></tr></table>"
        '<p class="note warning"><strong>Mixed study:</strong> the runs come from more than one code version or '
        "from a work tree with uncommitted changes; their figures may not be comparable.</p>"
        "<table><tr><th>input</th><th>sha256</th><th>runs</th></tr>"
        f"<tr><td>base weights: gpt2.safetensors</td><td><code>{'ef' * 32}</code></td><td>1</td></tr>"
        f"<tr><td>data: dev.txt</td><td><code>{'cd' * 32}</code></td><td>2</td></tr>"
        f"<tr><td>data: sonnets.txt</td><td><code>{'ab' * 32}</code></td><td>3</td></tr></table>")


def test_provenance_of_no_finished_run_with_the_command_given(tmp_path, monkeypatch):
    monkeypatch.setattr(page, "machine", lambda: "m")
    monkeypatch.setattr(page, "datetime", FixedClock)
    assert page.provenance(tmp_path, ["baseline"], "make report") == (
        "<table><tr><th>code of the runs</th><td>no finished run</td></tr>"
        "<tr><th>page written</th><td>2026-12-07T05:00:00+00:00</td></tr>"
        "<tr><th>page built by</th><td>make report</td></tr><tr><th>machine</th><td>m</td></tr></table>")


# ---------------------------------------------------------------------------------------------- html: sonnets

def test_a_sonnet_of_fifteen_lines_and_a_line_without_words():
    text = PERFECT + "\n" + "one line too many\n12 34"
    out = page.sonnet_html(text, "t<1>")
    reasons = check_sonnet(text).reasons
    assert reasons == ["16 lines, expected 14"]
    assert out.split("\n")[0] == ('<div class="sonnet"><h4>t&lt;1&gt;</h4><div class="line"><span class="letter">A'
                                  '</span>I sing a line that ends upon the <span class="end">day</span>,</div>')
    assert out.split("\n")[1:] == [
        f'<div class="line"><span class="letter">{letter}</span>I sing a line that ends upon the '
        f'<span class="end">{w}</span>,</div>' for letter, w in zip("BABCDCDEFEFGG", ENDS[1:])] + [
        '<div class="line"><span class="letter">·</span>one line too <span class="end">many</span></div>',
        '<div class="line"><span class="letter">·</span>12 34</div>'
        '<div class="verdict"><span class="bad">not perfect</span>: 16 lines, expected 14</div></div>']


def test_the_verdict_shows_three_reasons_then_an_ellipsis():
    def broken(k):  # the first k rhyme pairs broken: k reasons
        words = list(ENDS)
        for i in (2, 3, 6, 7)[:k]:
            words[i] = "wall" if i % 2 == 0 else "stone"
        return "\n".join(f"I sing a line that ends upon the {w}," for w in words)

    three, four = broken(3), broken(4)
    assert len(check_sonnet(three).reasons) == 3 and len(check_sonnet(four).reasons) == 4
    r3, r4 = ([html.escape(r) for r in check_sonnet(t).reasons] for t in (three, four))
    assert page.sonnet_html(three, "x").endswith(
        f'<div class="verdict"><span class="bad">not perfect</span>: {"; ".join(r3)}</div></div>')
    assert page.sonnet_html(four, "x").endswith(
        f'<div class="verdict"><span class="bad">not perfect</span>: {"; ".join(r4[:3])}; ...</div></div>')
    assert page.sonnet_html(PERFECT, "x").endswith(
        '<div class="verdict"><span class="ok">perfect</span>: 14 lines rhyming ABAB CDCD EFEF GG</div></div>')


def sonnet_run_folder(tmp_path: Path, gen: str, hashed: bool = True) -> Path:
    run = tmp_path / "runs" / "sonnet-s1"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"settings": {"data": {"task": "sonnet",
                                                                       "data_dir": str(TINY_DATA_DIR)}}}))
    (run / "gen_dev.txt").write_text(gen)
    metrics = {"metric": "chrf", "dev": {"chrf": 30.0}, "dev_predictions": "gen_dev.txt"}
    if hashed:
        metrics["files_sha256"] = {"gen_dev.txt": sha256_file(run / "gen_dev.txt")}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_sonnet_samples_pair_each_generated_sonnet_with_its_true_one(tmp_path):
    short = "I sing a line\nthat ends\nupon the day\nno rhyme here"
    gen = "--Generated Sonnets-- \n\n" + "".join(f"\n{n}\n{t}\n\n" for n, t in
                                                ((132, PERFECT), (999, short), (133, short), (134, PERFECT)))
    run = sonnet_run_folder(tmp_path, gen)
    truths = SONNETS.split_references(TINY_DATA_DIR, "dev")
    out = page.sonnet_samples(run)
    note = (f'<p class="note">Run <code>{run}</code>, dev prompts (the first 3 lines are the prompt). Letters give '
            "the rhyme scheme; red lines are in a pair that does not rhyme; the end word of each line is "
            "underlined.</p>")
    pairs = ['<div class="pair">' + page.sonnet_html(PERFECT, "generated, sonnet 132")
             + page.sonnet_html(truths[132], "true sonnet 132") + "</div>",
             '<div class="pair">' + page.sonnet_html(short, "generated, sonnet 999") + "</div>",  # no true 999
             '<div class="pair">' + page.sonnet_html(short, "generated, sonnet 133")
             + page.sonnet_html(truths[133], "true sonnet 133") + "</div>"]  # three of the four
    assert out == note + "\n".join(pairs)
    assert page.sonnet_samples(run, 1) == note + pairs[0]


def test_the_sonnet_run_is_the_first_finished_sonnet_run_whose_folder_exists(tmp_path):
    sst, gone, shown = (tmp_path / n for n in ("sst", "gone", "shown"))
    sst.mkdir()
    shown.mkdir()
    rows = [{"run": "sst", "task": "sst", "status": "done", "run_dir": str(sst)},
            {"run": "gone", "task": "sonnet", "status": "done", "run_dir": str(gone)},
            {"run": "shown", "task": "sonnet", "status": "done", "run_dir": str(shown)}]
    report.write_csv(rows, tmp_path / "baseline.csv")
    assert page.sonnet_run(tmp_path) == shown
    report.write_csv(rows[:2], tmp_path / "baseline.csv")
    assert page.sonnet_run(tmp_path) is None


# ---------------------------------------------------------------------------------------------- html: the page

def test_the_study_table_names_the_reproduced_setting_and_dashes_what_is_not_run(tmp_path):
    report.write_csv([{"sweep": "lora-ranks", "run": "lora-r4-s1", "method": "lora", "rank": 4,
                       "targets": "attn+mlp", "seed": 1, "status": "done", "metric": "chrf", "dev_score": 40.0,
                       "ci_low": 39.0, "ci_high": 41.0, "run_dir": str(tmp_path)}], tmp_path / "lora-ranks.csv")
    text = page.study_comparison(tmp_path)
    assert text.startswith("<table><tr><th>model</th><th>metric</th><th>study dev</th><th>reproduced dev [95% CI]"
                           "</th><th>study test</th><th>reproduced test [95% CI]</th></tr>")
    assert "<tr><td>sst (full fine-tuning)</td><td>accuracy</td><td>0.513</td><td>—</td><td>0.546</td><td>—</td></tr>" \
        in text
    assert "<tr><td>sonnet, best LoRA rank (reproduced: rank 4)</td><td>chrF</td><td>42.16 (rank 256)</td>" \
           "<td>40.00 [39.00, 41.00]</td><td>—</td><td>—</td></tr>" in text


def page_folder(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    out.mkdir()
    (out / "baseline.md").write_text("# baseline\n\nsome text\n")
    (out / "lora-ranks.md").write_text("# lora-ranks\n")
    (out / "baseline.png").write_bytes(b"\x89PNG one")
    (out / "baseline-nll.png").write_bytes(b"\x89PNG two")
    return out


INTRO = ('<h1>minigpt2: the fine-tuning study, reproduced</h1>\n<p class="note">Dev and test scores with bootstrap-t '
         "95% intervals over the n examples (one seed; none below 8 examples) or the mean over seeds with a 95% "
         "t-interval across seeds; differences between arms on the same examples with paired intervals, sign-flip "
         "p-values and, for accuracy, McNemar's test. Reference rows under each sonnet table show what chance "
         "scores; the held-out NLL and the form rates show what only learning earns.</p>\n<h2>Provenance</h2>\n")


def test_the_page_frame_contents_sections_and_inlined_plots(tmp_path, monkeypatch):
    import base64

    monkeypatch.setattr(page, "provenance", lambda out, names, command: f"[provenance of {','.join(names)}]")
    monkeypatch.setattr(page, "study_comparison", lambda out: "[study]")
    out = page_folder(tmp_path)
    path = page.write_index(out, sweeps=["lora-ranks", "teachers", "baseline"])
    assert path == out / "index.html"
    text = path.read_text(encoding="utf-8")
    b64 = [base64.b64encode(b).decode() for b in (b"\x89PNG one", b"\x89PNG two")]
    assert text == (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>minigpt2 study report</title>'
        f"<style>{page.CSS}</style></head><body>\n" + INTRO + "[provenance of lora-ranks,baseline]\n"
        "<h2>The study beside this reproduction</h2>\n[study]\n"
        '<h2>Contents</h2><ul><li><a href="#lora-ranks">lora-ranks</a></li><li><a href="#baseline">baseline</a></li>'
        '<li><a href="#sonnets">generated sonnets</a></li></ul>\n'
        '<section id="lora-ranks"><h2>lora-ranks</h2>\n</section>\n'
        '<section id="baseline"><h2>baseline</h2>\n<p class="note">some text</p>\n'
        f'<img alt="baseline plot" src="data:image/png;base64,{b64[0]}">\n'
        f'<img alt="baseline-nll plot" src="data:image/png;base64,{b64[1]}">\n</section>\n'
        '<section id="sonnets"><h2>Generated sonnets beside the true ones</h2>\n'
        '<p class="note">No finished sonnet run yet.</p>\n</section>\n</body></html>\n')


def test_the_page_says_why_its_sonnets_are_not_shown(tmp_path, monkeypatch):
    monkeypatch.setattr(page, "provenance", lambda out, names, command: "")
    monkeypatch.setattr(page, "study_comparison", lambda out: "")
    out = page_folder(tmp_path)
    run = sonnet_run_folder(tmp_path, "--Generated Sonnets-- \n\n\n132\nx\n", hashed=False)
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["dev_predictions"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    report.write_csv([{"run": "sonnet-s1", "task": "sonnet", "status": "done", "run_dir": str(run)}],
                     out / "baseline.csv")
    text = page.write_index(out, sweeps=["baseline"]).read_text(encoding="utf-8")
    assert text.endswith('<section id="sonnets"><h2>Generated sonnets beside the true ones</h2>\n'
                         '<p class="note warning">Sonnets not shown: &#x27;dev_predictions&#x27;</p>\n</section>\n'
                         "</body></html>\n")


# ---------------------------------------------------------------------------------------------- plots

def bars(ax) -> list[dict]:
    """Each errorbar of an axes as drawn: its legend label, its points, each bar's (low, high) and colour."""
    from matplotlib.colors import to_hex

    out = []
    for c in ax.containers:
        line, _, cols = c.lines
        segs = [tuple(map(tuple, s)) for s in cols[0].get_segments()] if cols else []
        out.append({"label": c.get_label(), "xy": [tuple(p) for p in line.get_xydata()], "segments": segs,
                    "color": to_hex(line.get_color()), "linestyle": line.get_linestyle()})
        caps = c.lines[1]
        assert line.get_marker() in ("o", "D") and caps and all(cap.get_markersize() == 6 for cap in caps)  # capsize 3
    return out


def plain_lines(ax) -> list[tuple]:
    """The axes' other lines (not an errorbar's): label, points, style, colour, marker and its face."""
    from matplotlib.colors import to_hex

    in_bars = {id(c.lines[0]) for c in ax.containers}
    return [(ln.get_label(), [tuple(p) for p in ln.get_xydata()], ln.get_linestyle(), to_hex(ln.get_color()),
             ln.get_marker(), ln.get_markerfacecolor() if ln.get_marker() == "D" else None)
            for ln in ax.get_lines() if id(ln) not in in_bars and not ln.get_label().startswith("_")]  # no caps


def pt(method, rank, score, low, high, targets=None, **kw):
    return {"seeds": 1, "metric": "chrf", "method": method, "rank": rank, "targets": targets, "score": score,
            "low": low, "high": high, **kw}


C0, C1, C3, GRAY, BLACK = "#1f77b4", "#ff7f0e", "#d62728", "#808080", "#000000"


def test_a_plot_draws_each_line_the_shared_start_the_level_band_marks_and_a_second_axes():
    from experiments import plots
    from experiments.sweeps import Plot

    points = [pt("full", None, 42.0, 41.0, 43.0),
              pt("lora", 1, 40.0, 39.0, 41.5, "attn", test_score=39.0, trainable=10),
              pt("lora", 4, 41.0, 40.5, 41.2, "attn", test_score=math.nan, trainable=40),
              pt("lora", 4, 38.0, 37.0, 39.0, "mlp", trainable=40, test_score=37.5),
              pt("shared", 2, 30.0, 29.0, 31.0),
              {**pt("lora", 8, 50.0, 49.0, 51.0, "attn"), "seeds": 0},  # not run: not drawn
              pt("other", 16, 20.0, 19.0, 21.0, "attn")]  # neither kept nor a level
    spec = Plot("rank", "LoRA rank", "T", line=lambda p: p["targets"], label=lambda k: f"on {k}",
                keep=lambda p: p["method"] != "other", shared=lambda p: p["method"] == "shared",
                level=lambda p: p["method"] == "full", level_label="full", annotate=lambda p: f"r{p['rank']}", log=2,
                mark=(lambda p: p["rank"] == 4, "chosen"), study=lambda p: 45.0 if p["rank"] == 1 else None,
                second=("trainable", "params", "size"))
    fig = plots.plot(spec, points)
    assert tuple(fig.get_size_inches()) == (11.0, 4.0) and fig._suptitle is None
    ax, ax2 = fig.axes
    assert bars(ax) == [
        {"label": "on attn: dev", "xy": [(1, 40), (2, 30), (4, 41)], "color": C0, "linestyle": "-",
         "segments": [((1, 39), (1, 41.5)), ((2, 29), (2, 31)), ((4, 40.5), (4, 41.2))]},
        {"label": "on mlp: dev", "xy": [(2, 30), (4, 38)], "color": C1, "linestyle": "-",
         "segments": [((2, 29), (2, 31)), ((4, 37), (4, 39))]}]
    assert plain_lines(ax) == [("on attn: test", [(1, 39)], "None", C0, "D", "none"),
                               ("on mlp: test", [(4, 37.5)], "None", C1, "D", "none"),
                               ("full", [(0, 42), (1, 42)], "--", C3, "None", None)]  # a level point: no marker
    assert ax.get_lines()[-1].get_transform() is not ax.transData  # drawn across the axes
    (band,) = ax.patches
    assert (band.get_y(), band.get_y() + band.get_height()) == (41.0, 43.0)
    assert band.get_alpha() == 0.12
    assert sorted((t.get_text(), tuple(t.xy)) for t in ax.texts) == [("r1", (1, 40)), ("r2", (2, 30)),
                                                                     ("r4", (4, 38)), ("r4", (4, 41))]
    star, study = ax.collections[-2:]
    assert star.get_label() == "chosen" and [tuple(p) for p in star.get_offsets()] == [(4, 41)]
    assert study.get_label() == "study" and [tuple(p) for p in study.get_offsets()] == [(1, 45)]
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    assert list(ax.get_xticks()) == [1, 2, 4] and [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("LoRA rank", "chrF", "T")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["on attn: test", "on mlp: test", "full", "chosen",
                                                                   "study", "on attn: dev", "on mlp: dev"]
    assert [(ln.get_label(), [tuple(p) for p in ln.get_xydata()]) for ln in ax2.get_lines()] == [
        ("on attn", [(1, 10), (4, 40)]), ("on mlp", [(4, 40)])]
    assert [(ln.get_color(), ln.get_marker(), ln.get_linestyle()) for ln in ax2.get_lines()] == [
        ("C0", "o", "-"), ("C1", "o", "-")]
    assert plots.axis_labels(fig) == [{"title": "T", "xlabel": "LoRA rank", "ylabel": "chrF"},
                                      {"title": "size", "xlabel": "LoRA rank", "ylabel": "params"}]
    assert ax2.get_xscale() == "log" and ax2.xaxis.get_transform().base == 10
    assert (ax2.get_xlabel(), ax2.get_ylabel(), ax2.get_title()) == ("LoRA rank", "params", "size")


def test_a_plot_of_two_metrics_on_categories_and_one_of_shared_points_only():
    from experiments import plots
    from experiments.sweeps import Plot

    points = [{"seeds": 1, "metric": "chrf", "task": "sonnet", "score": 40.0, "low": 39.0, "high": 41.0},
              {"seeds": 1, "metric": "accuracy", "task": "sst", "score": 0.5, "low": 0.4, "high": 0.6,
               "test_score": 0.45},
              {"seeds": 1, "metric": "accuracy", "task": "cfimdb", "score": 0.9, "low": 0.85, "high": 0.95}]
    fig = plots.plot(Plot("task", "task", "Both", log=2), points)
    assert tuple(fig.get_size_inches()) == (10.5, 4.0) and fig._suptitle.get_text() == "Both"
    acc, chrf = fig.axes
    assert [(a.get_ylabel(), a.get_title(), a.get_xscale()) for a in fig.axes] == [("accuracy", "", "linear"),
                                                                                   ("chrF", "", "linear")]
    assert [(b["label"], b["xy"], b["linestyle"]) for b in bars(acc)] == [("dev", [(0, 0.9), (1, 0.5)], "None")]
    assert [t.get_text() for t in acc.get_xticklabels()] == ["cfimdb", "sst"]  # sorted by name
    assert plain_lines(acc) == [("test", [(1, 0.45)], "None", C0, "D", "none")]
    assert [(b["label"], b["xy"]) for b in bars(chrf)] == [("dev", [(0, 40)])]

    assert plots.plot(Plot("rank", "rank", "none run"), [{**pt("a", 1, 1.0, 0.0, 2.0), "seeds": 0}]
                      ).axes[0].get_ylabel() == "chrF"  # nothing run: one chrF axes
    only_shared = plots.plot(Plot("rank", "rank", "S", shared=lambda p: True),
                             [pt("a", 2, 30.0, 29.0, 31.0), pt("b", 1, 20.0, math.nan, 22.0)])
    assert bars(only_shared.axes[0]) == [{"label": "dev", "xy": [(1, 20), (2, 30)], "color": C0, "linestyle": "-",
                                          "segments": [((1, 20), (1, 22)), ((2, 29), (2, 31))]}]


def test_chance_lines_are_the_two_chance_references_and_the_two_nll_bars(monkeypatch):
    from experiments import plots
    from experiments.stats import Interval

    iv = lambda v: Interval(v, v - 1, v + 1, 3)  # noqa: E731
    found = {"chrf": {"dev": {"prompts only": iv(10.0), "prompts + random tokens": iv(20.0),
                              "wrong sonnet (nearest training length)": iv(25.0)}, "test": {"prompts only": iv(1.0)}},
             "nll": {"dev": {"unigram": {"k": 0.05, "nll": 6.5}, "uniform": 10.8}, "test": None}}
    seen = []
    monkeypatch.setattr(plots, "sonnet_reference_figures", lambda rows, samples: seen.append(samples) or found)
    assert plots.chance_lines([{}], 77) == (
        {"prompts + random tokens": 20.0, "wrong sonnet (nearest training length)": 25.0},
        {"unigram of the training sonnets (add-0.05)": 6.5, "uniform guess, ln(vocabulary)": 10.8})
    assert seen == [77]
    found["nll"]["dev"] = None
    assert plots.chance_lines([{}]) == ({"prompts + random tokens": 20.0,
                                         "wrong sonnet (nearest training length)": 25.0}, {})
    found["chrf"]["dev"] = None
    assert plots.chance_lines([{}]) == ({}, {})
    monkeypatch.setattr(plots, "sonnet_reference_figures", lambda rows, samples: None)
    assert plots.chance_lines([{}]) == ({}, {})
    for error in (OSError("gone"), ValueError("bad")):
        def raise_(rows, samples, error=error):
            raise error
        monkeypatch.setattr(plots, "sonnet_reference_figures", raise_)
        assert plots.chance_lines([{}]) == ({}, {})


def test_decorate_draws_chance_on_chrf_axes_the_majority_on_accuracy_axes_and_names_the_bars():
    import matplotlib.pyplot as plt

    from experiments import plots

    fig, (chrf, acc, zero, other) = plt.subplots(1, 4)
    for ax, label in zip((chrf, acc, zero, other), ("chrF", "accuracy", "zero-shot accuracy", "bytes")):
        ax.set_ylabel(label)
    points = [{"seeds": 1, "metric": "accuracy", "task": "sst", "majority": 0.51},
              {"seeds": 1, "metric": "accuracy", "task": "quora", "majority": 0.63},
              {"seeds": 1, "metric": "accuracy", "task": "cfimdb"},  # no majority figure
              {"seeds": 0, "metric": "accuracy", "task": "x", "majority": 0.9},  # not run
              {"seeds": 1, "metric": "chrf", "task": "sonnet", "majority": 0.2}]
    chance = {"prompts + random tokens": 20.0, "wrong sonnet (nearest training length)": 25.0}
    plots.decorate(fig, points, chance)
    assert [(ln.get_label(), ln.get_ydata()[0], ln.get_linestyle(), ln.get_color(), ln.get_linewidth())
            for ln in chrf.get_lines()] == [("chance: prompts + random tokens", 20.0, ":", "gray", 1),
                                            ("chance: wrong sonnet (nearest training length)", 25.0, "-.", "gray", 1)]
    (maj,) = acc.get_lines()
    assert (maj.get_label(), list(maj.get_xdata()), list(maj.get_ydata()), maj.get_linestyle(), maj.get_marker(),
            maj.get_markersize(), maj.get_color()) == ("chance: majority class", ["sst", "quora"], [0.51, 0.63],
                                                       "None", "_", 18, "gray")
    assert zero.get_lines() == [] and other.get_lines() == [] and zero.get_legend() is None
    for ax in (chrf, acc):
        legend = ax.get_legend()
        assert legend.get_title().get_text() == "bars: 95% bootstrap CI over the examples"
        assert legend.get_title().get_fontsize() == 7 and legend.get_texts()[0].get_fontsize() == 7
    fig2, ax = plt.subplots()
    ax.set_ylabel("chrF")
    plots.decorate(fig2, [{"seeds": 2, "metric": "chrf"}], {"prompts + random tokens": 1.0})
    assert ax.get_legend().get_title().get_text() == "bars: mean over seeds, 95% t-interval across seeds"
    plt.close(fig)
    plt.close(fig2)


def test_the_nll_plot_places_each_arm_its_test_beside_it_and_the_lines_to_beat():
    from experiments import plots

    points = [{"seeds": 1, "dev_nll": 7.0, "dev_nll_low": 6.8, "dev_nll_high": 7.3, "test_nll": 7.2,
               "test_nll_low": 7.0, "test_nll_high": 7.5, "dev_nll_base": 9.0},
              {"seeds": 0, "dev_nll": 5.0},  # not run
              {"seeds": 1, "dev_nll": None},  # no NLL
              {"seeds": 2, "dev_nll": 6.0, "dev_nll_low": math.nan, "dev_nll_high": math.nan, "dev_nll_base": 8.0}]
    fig = plots.plot_nll("T", points, ["a", "b", "c", "d"], {"u1": 6.5, "u2": 10.8})
    (ax,) = fig.axes
    assert tuple(fig.get_size_inches()) == (7.0, 2.8)
    dev, test = bars(ax)
    assert dev == {"label": "dev", "xy": [(7, 0), (6, 1)], "color": C0, "linestyle": "None",
                   "segments": [((6.8, 0), (7.3, 0)), ((6, 1), (6, 1))]}
    assert (test["label"], test["xy"], test["segments"]) == ("test", [(7.2, 0.15)], [((7.0, 0.15), (7.5, 0.15))])
    marker = ax.containers[1].lines[0]
    assert (marker.get_marker(), marker.get_markerfacecolor()) == ("D", "none")
    assert ax.containers[0].lines[0].get_marker() == "o"
    assert [(ln.get_label(), ln.get_xdata()[0], ln.get_linestyle(), ln.get_color()) for ln in ax.get_lines()
            if not ln.get_label().startswith("_")] == [
        ("dev, before fine-tuning", 9.0, "--", "gray"), ("dev, u1", 6.5, ":", "black"),
        ("dev, u2", 10.8, "-.", "black")]
    assert list(ax.get_yticks()) == [0, 1] and [t.get_text() for t in ax.get_yticklabels()] == ["a", "d"]
    assert [t.get_fontsize() for t in ax.get_yticklabels()] == [8, 8]
    assert [ln.get_linewidth() for ln in ax.get_lines() if ln.get_label().startswith("dev, u")] == [1, 1]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # the first arm on top
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "held-out NLL (nats per token; lower is better)", "arm", "T: held-out likelihood")
    assert plots.plot_nll("T", points[1:3], ["b", "c"]) is None
    lone = plots.plot_nll("T", [{"seeds": 1, "dev_nll": 5.0}], ["x"])
    assert [c.get_label() for c in lone.axes[0].containers] == ["dev"] 
    assert [ln for ln in lone.axes[0].get_lines() if not ln.get_label().startswith("_")] == []  # no lines to beat


def test_write_plots_writes_the_sweep_plot_and_the_nll_plot_named_by_the_table_columns(tmp_path, monkeypatch):
    from PIL import Image

    from experiments import plots
    from experiments.sweeps import SweepOptions, build_sweep

    sweep = build_sweep("lora-ranks", SweepOptions(tiny=True))
    monkeypatch.setattr(plots, "chance_lines", lambda rows, samples: names.append(samples) or ({}, {"u": 6.0}))
    names = []
    real = plots.plot_nll
    monkeypatch.setattr(plots, "plot_nll", lambda title, points, n, bars: names.append((title, n, bars))
                        or real(title, points, n, bars))
    points = [{**pt("full", None, 42.0, 41.0, 43.0), "trainable_params": 124_000_000, "dev_nll": 7.0},
              {**pt("lora", 4, 40.0, 39.0, 41.0), "trainable_params": 663_552}]
    paths = plots.write_plots(sweep, [], points, tmp_path, 44)
    assert paths == {"png": tmp_path / "lora-ranks.png", "nll_png": tmp_path / "lora-ranks-nll.png"}
    assert names == [44, ("lora-ranks", ["full, 124,000,000", "lora, 4, 663,552"], {"u": 6.0})]
    with Image.open(paths["png"]) as img:
        assert img.size == (int(6.5 * 120), 4 * 120) and img.text["Title"] == "lora-ranks"
        assert json.loads(img.text["Description"])["axes"][0]["ylabel"] == "chrF"
    with Image.open(paths["nll_png"]) as img:
        assert img.text["Title"] == "lora-ranks" and img.size == (7 * 120, round(2.3 * 120))  # one arm
    assert plots.write_plots(sweep, [], points[1:], tmp_path / "b" / "c") == {
        "png": tmp_path / "b" / "c" / "lora-ranks.png"}  # folders made, parents too


def test_a_saved_figure_is_closed():
    import matplotlib.pyplot as plt

    from experiments import plots

    fig, _ = plt.subplots()
    other, _ = plt.subplots()  # the current figure
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        plots.save_figure(fig, Path(d) / "x.png", "x")
    assert not plt.fignum_exists(fig.number) and plt.fignum_exists(other.number)
    plt.close(other)


# ---------------------------------------------------------------------------------------------- report: files

def report_rows(root: Path) -> list[dict]:
    def row(task, seed, status, score, **kw):
        return {"sweep": "baseline", "run": f"{task}-s{seed}", "task": task, "method": "full", "seed": seed,
                "status": status, "metric": "accuracy", "dev_score": score, "ci_low": score - 0.1,
                "ci_high": score + 0.1, **kw, "run_dir": str(root / f"{task}-s{seed}")}
    return [row("sst", 1, "done", 0.5, code="commit aaa", arg_model="tiny", data_missing="/b"),
            row("sst", 2, "done", 0.7, code="commit aaa", arg_model="gpt2", data_missing="/a"),  # the first decides
            row("quora", 1, "done", 0.9, code="commit bbb", arg_model="tiny", data_missing="/b"),
            row("cfimdb", 1, "failed", math.nan, code="commit ccc"),  # not finished: its code not counted
            row("sonnet", 1, "missing", math.nan)]


def test_write_report_writes_the_csv_the_page_text_and_the_plots(tmp_path, monkeypatch, capsys):
    import dataclasses

    from experiments import metrics, plots, tables
    from experiments.sweeps import SweepOptions, build_sweep

    root = tmp_path / "runs"
    rows = report_rows(root)
    seen = {}
    monkeypatch.setattr(report, "collect", lambda sweep, r, samples, failed: seen.update(collect=(r, samples, failed))
                        or [dict(x) for x in rows])
    monkeypatch.setattr(tables, "sweep_tables", lambda sweep, rs, points, samples: seen.update(points=points,
                                                                                                tables=samples)
                        or ["| table |\n"])
    monkeypatch.setattr(plots, "write_plots", lambda sweep, rs, points, out, samples: seen.update(plots=samples)
                        or {"png": out / "p.png"})
    sweep = dataclasses.replace(build_sweep("baseline", SweepOptions()), note="a note", waits=("w1", "w2"), best=True)
    out = tmp_path / "new" / "out"  # made, parents too
    paths = report.write_report(sweep, root, out, samples=33, failed={"cfimdb-s1": "boom"})
    assert paths == {"csv": out / "baseline.csv", "md": out / "baseline.md", "png": out / "p.png"}
    assert seen["collect"] == (root, 33, {"cfimdb-s1": "boom"}) and seen["plots"] == seen["tables"] == 33
    message = ("data not found at /a, /b: 3 run(s) shown without intervals (pass --data-dir or set MINIGPT2_DATA_DIR "
               "to where the data now lies)")
    assert paths["md"].read_text(encoding="utf-8") == "\n".join([
        "# baseline\n",
        f"3 of 5 runs finished (run folders: {root}); intervals: the mean over seeds with a 95% t-interval across "
        "seeds.\n",
        "Note: a note.\n", "Waiting: w1.\n", "Waiting: w2.\n",
        f"**Warning:** {message}.\n",
        "Code of the runs: commit aaa (2 runs); commit bbb (1 run).\n",
        "**Warning:** mixed code: the runs come from more than one code version or from a work tree with "
        "uncommitted changes; their figures may not be comparable.\n",
        "Tiny random-init model: the figures test the machinery, not the study.\n",
        "| table |\n"])
    assert capsys.readouterr().err == f"warning: sweep baseline: {message}\n"
    # the best dev score among the settings that ran is marked, and only it
    best = [(p["task"], p.get("best")) for p in seen["points"]]
    assert best == [("sst", None), ("quora", True), ("cfimdb", None), ("sonnet", None)]
    with open(paths["csv"], newline="", encoding="utf-8") as f:
        read = list(csv.DictReader(f))
    assert [r["run"] for r in read] == ["sst-s1", "sst-s2", "quora-s1", "cfimdb-s1", "sonnet-s1"]
    assert list(read[0]) == ["sweep", "run", "task", "method", "seed", "status", "metric", "dev_score", "ci_low",
                             "ci_high", "code", "arg_model", "data_missing", "run_dir"]
    assert (read[3]["dev_score"], read[4]["code"], read[0]["dev_score"]) == ("", "", "0.5")


def test_write_report_of_one_seed_a_plain_model_and_no_best(tmp_path, monkeypatch, capsys):
    from experiments import plots, tables
    from experiments.sweeps import SweepOptions, build_sweep

    rows = [{**r, "seed": 1, "arg_model": m} for r, m in zip(report_rows(tmp_path)[2:], ("gpt2", "tiny", "tiny"))]
    for r in rows:
        r.pop("data_missing", None)
    seen = {}
    monkeypatch.setattr(report, "collect", lambda *a: [dict(x) for x in rows])
    monkeypatch.setattr(tables, "sweep_tables", lambda sweep, rs, points, samples: seen.update(points=points) or [])
    monkeypatch.setattr(plots, "write_plots", lambda *a: {})
    sweep = build_sweep("baseline", SweepOptions())
    assert not sweep.best and not sweep.note and not sweep.waits
    paths = report.write_report(sweep, tmp_path, tmp_path / "out")
    assert paths["md"].read_text() == "\n".join([
        "# baseline\n",
        f"1 of 3 runs finished (run folders: {tmp_path}); intervals: bootstrap-t 95% over the n examples (and over "
        "the samples of each prompt where there are several; none below n=8).\n",
        "Code of the runs: commit bbb (1 run).\n"])  # not a tiny study: its first row is not
    assert capsys.readouterr().err == "" and all("best" not in p for p in seen["points"])


def test_the_code_block_counts_finished_runs_ties_by_name():
    rows = [{"status": "done", "code": "commit b"}, {"status": "done", "code": "commit a"},
            {"status": "done", "code": ""}, {"status": "done"}, {"status": "missing", "code": "commit c"},
            {"status": "done", "code": "commit b"}, {"status": "done", "code": "commit d"}]
    assert report.code_block(rows) == [
        "Code of the runs: commit b (2 runs); commit a (1 run); commit d (1 run).\n",
        "**Warning:** mixed code: the runs come from more than one code version or from a work tree with uncommitted "
        "changes; their figures may not be comparable.\n"]
    assert report.code_block(rows[:1]) == ["Code of the runs: commit b (1 run).\n"]
    assert report.code_block(rows[2:5]) == []


# ---------------------------------------------------------------------------------------------- report: rows

def test_code_labels_and_compute_formats():
    from types import SimpleNamespace as NS

    assert report.code_label({"fingerprint": {"code": {"git_commit": "abc", "git_dirty": True, "package": "0.1"}}}) \
        == "commit abc, work tree with uncommitted changes"
    assert report.code_label({"fingerprint": {"code": {"git_commit": "abc", "git_dirty": False}}}) == "commit abc"
    assert report.code_label({"fingerprint": {"code": {"git_commit": "", "package": "0.1"}}}) \
        == "package 0.1 (no git checkout)"
    for config in ({}, {"fingerprint": None}, {"fingerprint": {"code": "abc"}}, {"code": {"git_commit": "abc"}}):
        assert report.code_label(config) == "unknown (the run recorded no code version)"

    def settings(fmt, autocast="on", device="cpu"):
        return NS(precision=NS(format=fmt), autocast=autocast, hardware=NS(device=device))

    assert [report.compute_dtype(settings(f)) for f in ("fp64", "bf16", "int8", "fp32")] == [
        "fp64", "bf16", "fp32 (int8 fake-quant)", "fp32"]
    assert report.compute_dtype(settings("bf16", device="cuda")) == "bf16"
    assert report.compute_dtype(settings("fp32", device="cuda:1")) == "bf16 autocast"
    assert report.compute_dtype(settings("fp32"), "cuda:0") == "bf16 autocast"  # where it ran, not where asked
    assert report.compute_dtype(settings("fp32", device="cuda"), "cpu") == "fp32"
    assert report.compute_dtype(settings("fp32", "off", "cuda")) == "fp32"


def test_the_row_of_a_run_not_run_holds_its_knobs_and_empty_figures(tmp_path):
    from experiments.sweeps import SweepOptions, build_sweep

    sweep = build_sweep("baseline", SweepOptions())
    row = report.run_row(sweep, 1, tmp_path, failed={sweep.runs[1].name: "boom"})
    nan = [k for k, v in row.items() if isinstance(v, float) and math.isnan(v)]
    assert nan == ["dev_score", "ci_low", "ci_high"]
    assert {k: v for k, v in row.items() if k not in nan} == {
        "sweep": "baseline", "run": sweep.runs[1].name, "task": "cfimdb", "method": "full", "seed": 11711,
        "status": "failed",
        "metric": None, "n_dev": None, "trainable_params": None, "total_params": None, "best_epoch": None,
        "wall_s": None, "run_dir": str(tmp_path / sweep.runs[1].name)}
    assert list(row)[:7] == ["sweep", "run", "task", "method", "seed", "status", "metric"]
    assert report.run_row(sweep, 0, tmp_path, failed={sweep.runs[1].name: "boom"})["status"] == "missing"


def test_the_row_of_a_finished_run_with_its_zero_shot_check(tmp_path, monkeypatch):
    from experiments import launch
    from experiments.sweeps import SweepOptions, build_sweep
    from tests.experiments.test_experiments import FakeFinetune

    monkeypatch.delenv("MINIGPT2_DATA_DIR", raising=False)
    sweep = build_sweep("precision", SweepOptions(tiny=True, data_dir=str(tmp_path / "nodata")))
    run = sweep.runs[0]
    assert run.evaluations  # the zero-shot Quora check
    launch.Local(FakeFinetune(), progress=False).launch([run], tmp_path / "runs")
    run_dir = tmp_path / "runs" / run.name
    config = json.loads((run_dir / "config.json").read_text())
    config.update(device="cuda:0", fingerprint={"code": {"git_commit": "abc"}})
    config["settings"]["optim"]["autocast"] = "auto"  # the device it ran on decides
    (run_dir / "config.json").write_text(json.dumps(config))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["files_sha256"] = {"dev.csv": sha256_file(run_dir / "dev.csv")}  # checked in the run's own folder
    metrics.update(trainable_params=1234, wall_s=5.5, best={"epoch": 2})
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    row = report.run_row(sweep, 0, tmp_path / "runs", samples=20)
    ev = run.evaluations[0]
    assert (row["status"], row["dev_score"], row["code"], row["compute"]) == ("done", 0.5, "commit abc",
                                                                              "bf16 autocast")
    assert (row["trainable_params"], row["wall_s"], row["best_epoch"], row["total_params"]) == (1234, 5.5, 2, None)
    assert row[ev.name] == 0.5  # the result file's figure: no predictions to re-score
    assert row["note"].startswith("zero-shot check without interval: ") and "zero_shot" not in row
    assert row["run_dir"] == str(run_dir) and row["arg_model"] == "tiny"
    assert "model_bytes" in sweep.extras and row["model_bytes"] is None  # no best/ weights, no packed file
    (run_dir / "best").mkdir()
    (run_dir / "best" / "a.safetensors").write_bytes(b"x" * 100)
    (run_dir / "best" / "b.safetensors").write_bytes(b"x" * 23)
    (run_dir / "best" / "c.bin").write_bytes(b"x" * 1000)
    assert report.run_row(sweep, 0, tmp_path / "runs", samples=20)["model_bytes"] == 123


def test_model_bytes_is_the_packed_file_else_the_fp32_weights(tmp_path):
    assert report.model_bytes(tmp_path, {}) is None
    assert report.model_bytes(tmp_path, {"quantization": {"file_bytes": 77}}) == 77
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "model.safetensors").write_bytes(b"x" * 5)
    assert report.model_bytes(tmp_path, {"quantization": {"file_bytes": "77"}}) == 5
    assert report.model_bytes(tmp_path, {"quantization": None}) == 5


def test_the_zero_shot_row_takes_point_interval_and_majority_from_one_predictions_file(tmp_path, monkeypatch):
    from experiments.stats import Interval

    calls = []

    class Scores:
        def __init__(self, ids):
            self.ids = ids

        def interval(self, samples):
            calls.append(("interval", samples))
            return Interval(0.55, 0.4, 0.7, 2)

    ids = ["q1", "q2"]
    monkeypatch.setattr(report, "zero_shot_scores", lambda run_dir, output: calls.append((run_dir, output))
                        or Scores(ids))
    monkeypatch.setattr(report, "run_data_folder", lambda run_dir: Path("/data") / Path(run_dir).name)
    majority = [Interval(0.5, 0.3, 0.6, 2)]
    monkeypatch.setattr(report, "majority_reference", lambda *a: calls.append(a) or majority[0])
    (tmp_path / "z.json").write_text(json.dumps({"accuracy": 0.6, "examples": 50, "task": "sst", "split": "test"}))
    assert report.zero_shot_row(tmp_path, "z.json", 40) == {
        "zero_shot_accuracy": 0.55, "zero_shot_n": 2, "zero_shot_low": 0.4, "zero_shot_high": 0.7,
        "majority": 0.5, "majority_low": 0.3, "majority_high": 0.6}
    assert calls == [(tmp_path, "z.json"), ("interval", 40), ("sst", Path("/data") / tmp_path.name, "test", ids, 40)]
    calls.clear()
    (tmp_path / "z.json").write_text(json.dumps({"accuracy": 0.6, "examples": 50}))
    majority[0] = None
    assert report.zero_shot_row(tmp_path, "z.json") == {
        "zero_shot_accuracy": 0.55, "zero_shot_n": 2, "zero_shot_low": 0.4, "zero_shot_high": 0.7}
    assert calls[-1] == ("quora", Path("/data") / tmp_path.name, "dev", ids, report.SAMPLES)  # the defaults
    ids.clear()  # no labelled row found: the result file's own figure and count
    assert report.zero_shot_row(tmp_path, "z.json") == {"zero_shot_accuracy": 0.6, "zero_shot_n": 50}


def test_the_marks_of_a_plot_are_styled_apart_and_the_second_axes_is_the_last():
    from matplotlib.colors import to_hex

    from experiments import plots
    from experiments.sweeps import Plot

    points = [pt("lora", 1, 40.0, 39.0, 41.0, "attn", trainable=10), pt("lora", 4, 41.0, 40.0, 42.0, "attn"),
              pt("full", None, 42.0, 41.0, 43.0)]
    spec = Plot("rank", "rank", "T", keep=lambda p: p["method"] == "lora", level=lambda p: p["method"] == "full",
                annotate=lambda p: "a", mark=(lambda p: p["rank"] == 4, "chosen"), study=lambda p: 45.0,
                second=("trainable", "params", "size"))
    fig = plots.plot(spec, points)
    ax, ax2 = fig.axes
    star, study = ax.collections[-2:]
    assert (list(star.get_sizes()), to_hex(star.get_facecolor()[0]), star.get_zorder()) == ([160], BLACK, 4)
    assert (to_hex(study.get_facecolor()[0]) if len(study.get_facecolor()) else to_hex(study.get_edgecolor()[0]),
            study.get_zorder()) == (BLACK, 3)
    from matplotlib.markers import MarkerStyle
    for mark, style in ((star, "*"), (study, "x")):  # a star, a thin cross
        m = MarkerStyle(style)
        assert mark.get_paths()[0].vertices.tolist() == m.get_path().transformed(m.get_transform()).vertices.tolist()
    assert {(t.xyann, t.anncoords, t.get_fontsize()) for t in ax.texts} == {((4, 4), "offset points", 8)}
    assert to_hex(ax.patches[0].get_facecolor()) == C3
    assert ax2.get_xscale() == "linear" and ax.get_xscale() == "linear"  # no log declared
    two = plots.plot(Plot("rank", "rank", "T", second=("trainable", "params", "size"), log=10),
                     [pt("a", 1, 1.0, 0.5, 1.5, trainable=3),
                      {**pt("a", 2, 0.5, 0.4, 0.6, trainable=4), "metric": "bleu"}])
    assert [(a.get_ylabel(), a.get_title(), a.get_xscale()) for a in two.axes] == [
        ("bleu", "", "log"), ("chrF", "", "log"), ("params", "size", "log")]
    assert [len(a.get_lines()) > 0 for a in two.axes] and [tuple(ln.get_xydata()[0]) for ln in
                                                           two.axes[2].get_lines()] == [(2, 4), (1, 3)]


def test_the_test_markers_take_their_lines_colour_when_an_earlier_line_has_none():
    from experiments import plots
    from experiments.sweeps import Plot

    points = [pt("lora", 1, 40.0, 39.0, 41.0, "attn"), pt("lora", 1, 38.0, 37.0, 39.0, "mlp", test_score=37.0)]
    fig = plots.plot(Plot("rank", "rank", "T", line=lambda p: p["targets"], label=lambda k: k), points)
    assert plain_lines(fig.axes[0]) == [("mlp: test", [(1, 37)], "None", C1, "D", "none")]


def tiny_rows(path: Path) -> list[list[str]]:
    """The tab-separated rows of a tiny data file, its header left out."""
    with path.open(encoding="utf-8", newline="") as f:
        return [r for r in list(csv.reader(f, delimiter="\t"))[1:] if r]


def finished_sst_run(tmp_path: Path, monkeypatch):
    """The tiny precision sweep's sst fp32 run, finished on a copy of the tiny data: 5 of its 8 dev rows right, 3
    of its 8 test rows right, and a zero-shot Quora check whose predictions file gets 6 of the 8 labelled dev
    pairs right (its result file says 0.5: the row must take the re-scored figure)."""
    import shutil

    from experiments import launch
    from experiments.sweeps import SweepOptions, build_sweep
    from tests.experiments.test_experiments import FakeFinetune

    monkeypatch.delenv("MINIGPT2_DATA_DIR", raising=False)
    data = tmp_path / "data"
    shutil.copytree(TINY_DATA_DIR, data)
    sweep = build_sweep("precision", SweepOptions(tiny=True, data_dir=str(data)))
    index = next(i for i, r in enumerate(sweep.runs) if r.name == "sst-fp32-s11711")
    run = sweep.runs[index]
    launch.Local(FakeFinetune(), progress=False).launch([run], tmp_path / "runs")
    run_dir = tmp_path / "runs" / run.name
    dev = [(r[1], int(r[3])) for r in tiny_rows(data / "ids-sst-dev.csv")]  # (id, sentiment)
    test = [(f"t{k}", k % 5) for k in range(8)]  # 8 test labels (the tiny data's 4 are too few for an interval)
    (data / "ids-sst-test-labels.csv").write_text("id\tsentiment\n" + "".join(f"{i}\t{y}\n" for i, y in test))
    wrong = lambda y: (y + 1) % 5  # noqa: E731
    (run_dir / "dev.csv").write_text("id \t Predicted_Sentiment \n" + "".join(
        f"{i} , {y if k < 5 else wrong(y)}\n" for k, (i, y) in enumerate(dev)))
    (run_dir / "test.csv").write_text("id \t Predicted_Sentiment \n" + "".join(
        f"{i} , {y if k < 3 else wrong(y)}\n" for k, (i, y) in enumerate(test)))
    pairs = tiny_rows(data / "quora-dev.csv")
    quora = [(r[1], int(float(r[4]))) for r in pairs if r[4]]  # (id, is_duplicate): 8 of the 9 are labelled
    (run_dir / "zs.csv").write_text("id \t Predicted_Is_Paraphrase \n" + "".join(
        f"{i} , {y if k < 6 else 1 - y}\n" for k, (i, y) in enumerate(quora))
        + "".join(f"{r[1]} , 1\n" for r in pairs if not r[4]))  # a pair without a label is not scored
    ev = run.evaluations[0]
    (run_dir / ev.output).write_text(json.dumps({"accuracy": 0.5, "examples": 9, "task": "quora", "split": "dev",
                                                 "predictions": "zs.csv"}))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.update(dev={"accuracy": 0.625}, trainable_params=1234, total_params=5678, wall_s=5.5, best={"epoch": 2},
                   data={"train": 9}, heldout_nll_base={"dev": {"nll": 3.25}},
                   copying={"dev": {"n": 4}})
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return sweep, index, run_dir, data, dev, test, quora


def test_the_row_of_a_finished_run_whose_dev_test_and_zero_shot_files_re_score(tmp_path, monkeypatch):
    from collections import Counter

    from experiments import references, stats

    sweep, index, run_dir, data, dev, _, quora = finished_sst_run(tmp_path, monkeypatch)
    row = report.run_row(sweep, index, tmp_path / "runs", samples=50)
    # the bounds are the resampling's (tested in test_intervals.py); the row must carry those of 50 resamples, which
    # differ from the default 1000's on these rows
    ci = stats.run_interval(run_dir, samples=50)
    zs = stats.zero_shot_scores(run_dir, "eval-quora-zero-shot-dev.json").interval(50)
    maj = references.majority_reference("sst", data, "dev", [i for i, _ in dev], 50)
    zmaj = references.majority_reference("quora", data, "dev", [i for i, _ in quora], 50)
    assert (ci.low, ci.high) != tuple(getattr(stats.run_interval(run_dir), k) for k in ("low", "high"))
    assert (zs.low, zs.high) != tuple(getattr(stats.zero_shot_scores(
        run_dir, "eval-quora-zero-shot-dev.json").interval(), k) for k in ("low", "high"))
    # by hand: the commonest sst dev label's share of the 8 rows, and the commonest is_duplicate of the 8 labelled pairs
    dev_majority = max(Counter(y for _, y in dev).values()) / 8
    quora_majority = max(Counter(y for _, y in quora).values()) / 8
    assert maj.value == dev_majority and zmaj.value == quora_majority
    assert ci.low < 0.625 < ci.high and zs.low < 6 / 8 < zs.high  # an interval, not a point
    test_ci = stats.run_interval(run_dir, samples=50, split="test")
    assert (test_ci.low, test_ci.high) != tuple(getattr(stats.run_interval(run_dir, split="test"), k)
                                                for k in ("low", "high"))
    expected = {
        "sweep": "precision", "run": "sst-fp32-s11711", "task": "sst", "precision": "fp32", "qaft": False,
        "stage": "fine-tuned", "seed": 11711, "status": "done", "metric": "accuracy", "dev_score": 0.625,
        "ci_low": ci.low, "ci_high": ci.high, "n_dev": 8,
        "trainable_params": 1234, "total_params": 5678, "best_epoch": 2, "wall_s": 5.5, "train_real": 9,
        "train_synthetic": None,
        "majority": dev_majority, "majority_low": maj.low, "majority_high": maj.high,
        "test_score": 3 / 8, "test_low": test_ci.low, "test_high": test_ci.high, "n_test": 8,
        "dev_nll_base": 3.25, "dev_copy_n": 4,
        "model_bytes": None,
        "zero_shot_quora": 6 / 8,
        "zero_shot": {"zero_shot_accuracy": 6 / 8, "zero_shot_n": 8, "zero_shot_low": zs.low,
                      "zero_shot_high": zs.high, "majority": quora_majority, "majority_low": zmaj.low,
                      "majority_high": zmaj.high},
        "compute": "fp32", "code": report.UNKNOWN_CODE, "run_dir": str(run_dir)}
    args = {k: v for k, v in row.items() if k.startswith("arg_")}
    assert {k: v for k, v in row.items() if k not in args} == expected
    assert args["arg_task"] == "sst" and args["arg_data_dir"] == str(data)


def test_a_run_whose_interval_fails_says_whether_its_data_folder_is_missing(tmp_path, monkeypatch):
    import shutil

    sweep, index, run_dir, data, *_ = finished_sst_run(tmp_path, monkeypatch)
    (run_dir / "dev.csv").write_text((run_dir / "dev.csv").read_text() + "zz , 3\n")  # an id the data has not
    row = report.run_row(sweep, index, tmp_path / "runs", samples=50)
    assert row["note"] == (f"no interval: {run_dir / 'dev.csv'}: id(s) ['zz'] have no label in "
                           f"{data / 'ids-sst-dev.csv'}") and "data_missing" not in row  # the folder is there
    assert (row["dev_score"], row["n_dev"]) == (0.625, None) and row["ci_low"] != row["ci_low"]
    shutil.rmtree(data)
    row = report.run_row(sweep, index, tmp_path / "runs", samples=50)
    assert row["data_missing"] == str(data)  # the folder is gone: say so
    data.write_text("")  # a file where the folder was: no folder either
    row = report.run_row(sweep, index, tmp_path / "runs", samples=50)
    assert row["data_missing"] == str(data)

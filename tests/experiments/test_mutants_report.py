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

from distill.check import check_sonnet
from experiments import html as page
from experiments import report
from experiments.stats import sonnet_references
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
    truths = sonnet_references(TINY_DATA_DIR, "dev")
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

"""experiments.html: the self-contained results page, checked by its content, and rendered by headless Chromium
where it is installed (Debian: `apt-get install chromium`)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from experiments import html as page
from experiments import metrics, plots, report, tables
from experiments.sweeps import SweepOptions, build_sweep
from experiments.sweeps import TINY_DATA_DIR

# A sonnet distill.check calls perfect (ABAB CDCD EFEF GG on plain CMU rhymes); the couplet indented as in
# the course's files.
ENDS = "day night way light tree sun free run rain sky pain high sea me".split()
PERFECT = "\n".join(("  " if i >= 12 else "") + f"I sing a line that ends upon the {w}," for i, w in enumerate(ENDS))


def results_folder(tmp_path: Path) -> Path:
    """A results folder as a finished baseline leaves it: CSV, markdown, PNG, and the sonnet run it names."""
    run = tmp_path / "runs" / "sonnet-s1"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"settings": {"data": {"task": "sonnet", "data_dir": str(TINY_DATA_DIR)}}}))
    (run / "metrics.json").write_text(json.dumps({"metric": "chrf", "dev": {"chrf": 30.0},
                                                  "dev_predictions": "gen_dev.txt", "test_predictions": "gen.txt"}))
    first = "\n".join(PERFECT.split("\n")[:3])
    (run / "gen_dev.txt").write_text(f"--Generated Sonnets-- \n\n\n132\n{PERFECT}\n\n\n133\n{first}\nno rhyme here\n")
    out = tmp_path / "results"
    out.mkdir()
    rows = [{"sweep": "baseline", "run": "sonnet-s1", "task": "sonnet", "method": "full", "seed": 1,
             "status": "done", "metric": "chrf", "dev_score": 30.0, "ci_low": 28.5, "ci_high": 31.5,
             "test_score": 29.0, "test_low": 27.0, "test_high": 31.0, "run_dir": str(run)},
            {"sweep": "baseline", "run": "sst-s1", "task": "sst", "method": "full", "seed": 1, "status": "missing",
             "metric": None, "dev_score": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
             "run_dir": str(tmp_path / "runs" / "sst-s1")}]
    report.write_csv(rows, out / "baseline.csv")
    (out / "baseline.md").write_text("# baseline\n\n**Warning:** data not found at /x.\n\n"
                                     + tables.markdown_table(build_sweep("baseline", SweepOptions()), metrics.group_seeds(rows)))
    plots.save_figure(plots.plot(build_sweep("baseline", SweepOptions()).plot, metrics.group_seeds(rows)), out / "baseline.png", "baseline")
    return out


def test_index_holds_the_study_beside_the_reproduction_tables_plots_and_sonnets(tmp_path):
    out = results_folder(tmp_path)
    text = page.write_index(out).read_text()
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text
    # the study's dev and test figures beside this reproduction's, with intervals
    assert "<td>sonnet (full fine-tuning)</td><td>chrF</td><td>41.97</td><td>30.00 [28.50, 31.50]</td>" \
           "<td>41.078</td><td>29.00 [27.00, 31.00]</td>" in text
    assert "<td>sst (full fine-tuning)</td><td>accuracy</td><td>0.513</td><td>—</td><td>0.546</td>" in text
    assert "52.838" in text  # the best distilled model's test chrF
    # the sweep's table and its plot, inlined
    assert '<section id="baseline"><h2>baseline</h2>' in text and "<th>dev chrF [95% CI]</th>" in text
    assert '<p class="note warning"><strong>Warning:</strong> data not found at /x.</p>' in text
    uri = text.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(uri)[:8] == b"\x89PNG\r\n\x1a\n"
    # generated sonnets beside the true ones, rhyme letters and verdicts
    assert "generated, sonnet 132" in text and "true sonnet 132" in text
    assert '<span class="ok">perfect</span>' in text  # the generated 132
    assert '<span class="bad">not perfect</span>: 4 lines, expected 14' in text
    assert '<div class="line"><span class="letter">G</span>I sing a line that ends upon the ' \
           '<span class="end">me</span>,</div>' in text


def test_a_failed_rhyme_is_marked_on_both_lines():
    broken = PERFECT.replace("the way,", "the wall,")
    html = page.sonnet_html(broken, "x")
    assert html.count('<div class="line miss">') == 2  # lines 1 and 3 (A) no longer rhyme
    assert '<div class="line miss"><span class="letter">A</span>I sing a line that ends upon the ' \
           '<span class="end">day</span>,</div>' in html
    assert "lines 1/3 (A)" in html and '<span class="bad">not perfect</span>' in html


def test_markdown_tables_and_escaping():
    html = page.markdown_to_html("# t\n\n| a | b<br>c |\n|---|---|\n| <x> | `y` |\n")
    assert html == ("<h2>t</h2>\n<table><tr><th>a</th><th>b<br>c</th></tr>"
                    "<tr><td>&lt;x&gt;</td><td><code>y</code></td></tr></table>")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_headless_chromium_renders_the_page(tmp_path):
    out = results_folder(tmp_path)
    index = page.write_index(out)
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1280,2400", index.resolve().as_uri()], check=True, timeout=120,
                   capture_output=True)
    with Image.open(shot) as img:
        assert img.size == (1280, 2400)
        gray = img.convert("L")
        # something was drawn: text and the plot make the page far from blank
        dark = sum(gray.histogram()[:128])
        assert dark > 0.005 * 1280 * 2400


def test_page_carries_its_provenance_and_every_study_figure(tmp_path):
    out = results_folder(tmp_path)
    run = tmp_path / "runs" / "sonnet-s1"
    config = json.loads((run / "config.json").read_text())
    config["fingerprint"] = {"data": {"sonnets.txt": "ab" * 32},
                             "base_weights": {"file": "checkpoints/gpt2/model.safetensors", "sha256": "cd" * 32},
                             "code": {"package": "0.1.0", "git_commit": "e" * 40, "git_dirty": False}}
    (run / "config.json").write_text(json.dumps(config))
    text = page.write_index(out, command="python -m experiments baseline --tiny").read_text()
    # the run's commit, not the rebuilder's
    assert f"<th>code of the runs</th><td>commit {'e' * 40} (1 run)</td>" in text and "Mixed study" not in text
    assert "<td>python -m experiments baseline --tiny</td>" in text and "torch" in text  # command, machine
    assert "<td>data: sonnets.txt</td><td><code>" + "ab" * 32 + "</code></td><td>1</td>" in text
    assert "base weights: checkpoints/gpt2/model.safetensors" in text and "cd" * 32 in text
    for figure in ("42.16 (rank 256)", "42.5M", "46.61", "52.838", "56%", "72%", "75%"):
        assert f"<td>{figure}</td>" in text, figure

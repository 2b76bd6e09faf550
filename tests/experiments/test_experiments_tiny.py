"""Every sweep end to end with --tiny: real finetune runs (tiny random-init model, fixture data) through the
command line, then the CSV, the markdown table and the PNG plot; a second pass starts no run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from app.runfolder import read_settings_file
from app.settings import EvaluateSettings
from experiments import __main__ as cli
from experiments.sweeps import SWEEPS, SweepOptions, build_sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def ready(name: str):
    """The runs of the tiny sweep."""
    return build_sweep(name, SweepOptions(tiny=True))


@pytest.fixture
def counting(monkeypatch):
    """Wrap the in-process executor the CLI uses and count what it starts."""
    calls: list[tuple[str, list[str]]] = []
    real = cli.in_process

    def count(step, log):
        calls.append((step.module, list(step.argv)))
        real(step, log)
    monkeypatch.setattr(cli, "in_process", count)
    return calls


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_sweep_runs_end_to_end_with_tiny(name, tiny_sweep, counting):
    done = tiny_sweep(name)
    runs, out, argv = done.runs, done.out, done.argv
    sweep = ready(name)
    assert len([c for c in done.started if c[0] == "minigpt2.finetune"]) == len(sweep.runs)

    with open(out / f"{name}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == [r.name for r in sweep.runs]
    for row in rows:
        assert row["status"] == "done", row
        score = float(row["dev_score"])  # 2 dev examples each (--tiny's --max-eval 2): too few for an interval
        assert int(row["n_dev"]) == 2 and row["ci_low"] == row["ci_high"] == "", row
        if row.get("stage") == "base":  # the model before fine-tuning: no epoch, nothing trained
            assert row["arg_epochs"] == "0" and int(row["trainable_params"]) == 0
        else:
            assert row["arg_epochs"] == "1" and int(row["trainable_params"]) > 0
        assert row["arg_model"] == "tiny" and float(row["test_score"]) == pytest.approx(
            json.loads((runs / name / row["run"] / "metrics.json").read_text())["test"][row["metric"]])
        metrics = json.loads((runs / name / row["run"] / "metrics.json").read_text())
        assert score == pytest.approx(metrics["dev"][metrics["metric"]])
    if name == "precision":
        assert all(int(r["model_bytes"]) > 0 and r["zero_shot_quora"] != "" for r in rows)
        evals = [argv for module, argv in done.started if module == "minigpt2.evaluate"]
        assert all(argv[0] == "--settings" and len(argv) == 2 for argv in evals)  # each as its settings file
        handed = [read_settings_file(Path(argv[1]), EvaluateSettings) for argv in evals]
        assert [(e.run_dir, e.task, e.zero_shot, e.split, e.hardware.device) for e in handed] == [
            (str(runs / name / r.name), "quora", True, "dev", "auto") for r in sweep.runs]  # no device placed
        fp32, int8 = (next(int(r["model_bytes"]) for r in rows if r["precision"] == p) for p in ("fp32", "int8"))
        assert int8 < fp32
        assert sorted(r["precision"] for r in rows if r["stage"] == "base") == ["fp32", "int8"]
        assert "| base | sonnet | fp32 |" in (out / "precision.md").read_text()
    if name == "teachers":
        synthetic = {r["run"].rsplit("-s", 1)[0]: int(r["train_synthetic"] or 0) for r in rows}
        assert synthetic["real-only"] == 0 and all(v == 2 for k, v in synthetic.items() if k != "real-only")

    table = (out / f"{name}.md").read_text()
    assert f"{len(sweep.runs)} of {len(sweep.runs)} runs finished" in table and "[95% CI]" in table
    assert "(n=2, too few for an interval)" in table  # 2 dev examples: the point, no interval
    if name == "precision":  # the int8 QAFT classifier against its fp32 twin, paired: sign-flip p and McNemar
        assert "McNemar p=" in table and "sign-flip p=" in table and "Δ vs fp32" in table
    sonnet = [r for r in rows if r["task"] == "sonnet"]
    if sonnet:  # what only learning earns, beside chrF, in every sonnet table and its plots
        assert all(float(r["dev_nll"]) > 0 and r["dev_perfect"] != "" and float(r["dev_nll_base"]) > 0
                   for r in sonnet)
        assert "dev held-out NLL (nats/token)" in table and "Form of what each model wrote" in table
        assert "| real held-out sonnets |" in table and "Held-out NLL before fine-tuning" in table
        assert (out / f"{name}-nll.png").read_bytes()[:8] == PNG_SIGNATURE
        if name != "baseline":  # every sweep of sonnet arms compares them with its reference arm, paired
            assert "Paired differences, arm − reference" in table and "| held-out NLL |" in table
    html = (out / "index.html").read_text()
    assert "Provenance" in html and "held-out NLL" in html
    assert table.count("\n|") >= 2 + len({tuple(sorted((k, str(v)) for k, v in sweep.knob_values(r).items() if k != "seed"))
                                           for r in sweep.runs})
    png = out / f"{name}.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(png) as img:
        axes = json.loads(img.text["Description"])["axes"]
    assert axes and all(a["xlabel"] and a["ylabel"] for a in axes)

    if name == "baseline":  # re-running a finished sweep starts nothing, and still writes the report
        counting.clear()
        png.unlink()
        assert cli.main(argv) == 0
        assert counting == [] and png.is_file()


@pytest.mark.shared_data
def test_baseline_on_the_real_course_files(tmp_path):
    """The real data's layouts (CRLF, Folger header, course CSVs) through the whole chain: 12 dev examples per
    task, so the sonnet interval resamples all 12 held-out sonnets."""
    import os

    out = tmp_path / "results"
    argv = ["baseline", "--tiny", "--data-dir", os.environ["MINIGPT2_DATA_DIR"], "--runs-dir", str(tmp_path / "runs"),
            "--out", str(out), "--no-progress", "--bootstrap", "200", "--finetune-args", "--max-eval 12"]
    assert cli.main(argv) == 0
    with open(out / "baseline.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["task"], r["status"], r["n_dev"]) for r in rows] == [
        ("sst", "done", "12"), ("cfimdb", "done", "12"), ("quora", "done", "12"), ("sonnet", "done", "12")]
    sonnet = rows[-1]
    assert float(sonnet["ci_low"]) < float(sonnet["dev_score"]) < float(sonnet["ci_high"])


def test_a_sweep_declared_here_gets_its_csv_table_plot_and_page_from_the_generic_report(tmp_path):
    """Adding a sweep is one declaration: two tiny sonnet runs over optim.lr, declared in this test, get their CSV
    (the knob read from the settings), table, paired differences, plot and HTML section without touching
    experiments/."""
    from experiments import html, launch, report, runner, sweeps
    from experiments.sweeps import Plot, Reference, Sweep

    runs = sweeps.make_runs(SweepOptions(tiny=True), [(f"lr{lr:g}", sweeps.sonnet(optim__lr=lr)) for lr in (1e-3, 1e-2)])
    toy = Sweep("toy-lr", runs, knobs={"lr": "optim.lr"},
                references=(Reference("lr 1e-3", lambda ref, arm: ref.get("lr") == 1e-3),),
                plot=Plot("lr", "learning rate", "Sonnets: chrF vs lr", log=10))
    launch.Local(runner.in_process, progress=False).launch(toy.runs, tmp_path / "runs")
    paths = report.write_report(toy, tmp_path / "runs", tmp_path / "out", samples=50)
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["sweep", "run", "lr", "seed", "status"]
    assert [(r["lr"], r["status"], r["arg_lr"]) for r in rows] == [("0.001", "done", "0.001"), ("0.01", "done", "0.01")]
    table = paths["md"].read_text()
    assert "| lr | compute | dev chrF [95% CI] |" in table and "| 0.010 | fp32 | " in table
    assert "Paired differences, arm − reference (lr 1e-3)" in table and "| real held-out sonnets |" in table
    with Image.open(paths["png"]) as img:
        assert json.loads(img.text["Description"])["axes"][0]["xlabel"] == "learning rate"
    page = html.write_index(tmp_path / "out", sweeps=["toy-lr"]).read_text()
    assert '<section id="toy-lr"><h2>toy-lr</h2>' in page and "data:image/png;base64," in page

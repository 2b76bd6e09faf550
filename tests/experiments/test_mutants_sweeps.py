"""The sweeps as declared (`experiments/sweeps.py`), pinned where `tools/mutate.py --auto experiments/sweeps.py`
found them untested (docs/testing.md, "Automated mutants"): every run of every sweep with its settings, the knobs,
the table's columns and what they show, the reference arms, the plots, the study's published figures, the notes
and error lines a user reads. Expected values are the study's design as docs/study.md and the README state it
(ranks 1..256, alpha 16, lr 1e-2, the alpha x lr grid, six precisions, three teachers with sizes 250/500/1000 and
mixes 0.5/1/2 per real sonnet), not read back from the module. Nothing here trains."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from app import cli
from experiments import sweeps
from experiments.sweeps import (SWEEPS, TINY_DATA_DIR, TINY_SYNTHETIC_DIR, TINY_TOKENIZER_DIR, Column, Evaluation,
                                Reference, Run, Sweep, SweepError, SweepOptions, build_sweep, fit_sizes,
                                real_training_sonnets, shortfall)
from minigpt2.errors import UserError

SEED = 11711  # the course's seed (the first run of every setting)
HINT = "`python -m distill.generate --teacher <teacher> --n 1000 --out DIR/<teacher>.jsonl`"
FLASH, LITE, PRO = "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.5-pro"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("MINIGPT2_DATA_DIR", raising=False)
    monkeypatch.delenv("MINIGPT2_TOKENIZER_DIR", raising=False)


def names(sweep: Sweep) -> list[str]:
    return [r.name for r in sweep.runs]


def lora_of(run: Run) -> tuple | None:
    """(rank, alpha, targets, lr) of a LoRA run, None for full fine-tuning."""
    s = run.settings
    if s.model.method != "lora":
        assert s.model.lora is None
        return None
    return s.model.lora.rank, s.model.lora.alpha, s.model.lora.targets, s.optim.lr


def flat(d: dict, pre: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{pre}{k}.") if isinstance(v, dict) else {f"{pre}{k}": v})
    return out


def changed(settings) -> dict:
    """The settings of a run that differ from finetune's defaults for its task (LoRA's unswept fields left out)."""
    base = flat(dataclasses.asdict(cli.settings_of({"data.task": settings.data.task})))
    mine = flat(dataclasses.asdict(settings))
    skip = {"model.lora.dropout", "model.lora.rslora", "model.lora.trainable", "optim.progress"}
    return {k: v for k, v in mine.items() if k not in skip and base.get(k, "<absent>") != v}


def heads(sweep: Sweep) -> list[str]:
    return [c.head for c in sweep.table_columns()]


# ---------------------------------------------------------------------------------------------- options

def test_seed_list_is_the_courses_seed_and_the_next_ones_up_to_one_hundred():
    assert SweepOptions().seed_list() == [SEED]
    assert SweepOptions(seeds=3).seed_list() == [11711, 11712, 11713]
    hundred = SweepOptions(seeds=100).seed_list()
    assert hundred[0] == 11711 and hundred[-1] == 11810 and len(hundred) == 100
    for bad in (0, -1, 101):
        with pytest.raises(SweepError) as e:
            SweepOptions(seeds=bad).seed_list()
        assert str(e.value) == f"--seeds {bad}: expected an integer from 1 to 100"
    assert issubclass(SweepError, UserError) and issubclass(SweepError, ValueError)


def test_an_unknown_sweep_is_named_with_the_known_ones():
    with pytest.raises(SweepError) as e:
        build_sweep("lora-rank", SweepOptions())
    assert str(e.value) == ("unknown sweep 'lora-rank'; expected one of ['baseline', 'lora-alpha-lr', 'lora-ranks', "
                            "'lora-targets', 'precision', 'teachers']")


def test_shared_settings_of_a_full_and_a_tiny_run(monkeypatch):
    full = build_sweep("baseline", SweepOptions()).runs[0].settings
    assert full.model.model == "gpt2" and full.paths.data_dir is None and full.optim.progress is False
    assert changed(full) == {}
    mine = build_sweep("baseline", SweepOptions(model="gpt2-medium", data_dir="/d")).runs[0].settings
    assert changed(mine) == {"model.model": "gpt2-medium", "paths.data_dir": "/d"}

    tiny = build_sweep("baseline", SweepOptions(tiny=True)).runs[0].settings
    assert changed(tiny) == {"model.model": "tiny", "paths.offline": True, "optim.epochs": 1, "data.max_train": 4,
                             "data.max_eval": 2, "eval.sampling.max_new_tokens": 4, "optim.batch_size": 4,
                             "eval.batch_size": 8, "paths.data_dir": str(TINY_DATA_DIR),
                             "paths.tokenizer_dir": str(TINY_TOKENIZER_DIR)}
    assert tiny.optim.progress is False
    other = build_sweep("baseline", SweepOptions(tiny=True, model="m", data_dir="/t")).runs[0].settings
    assert (other.model.model, other.paths.data_dir) == ("m", "/t")
    monkeypatch.setenv("MINIGPT2_TOKENIZER_DIR", "/bpe")  # the caller's tokenizer files: not replaced
    assert build_sweep("baseline", SweepOptions(tiny=True)).runs[0].settings.paths.tokenizer_dir is None


def test_a_points_own_settings_win_over_the_shared_ones_and_finetune_args_over_both():
    # the precision sweep's base models set --epochs 0 against --tiny's 1; --finetune-args --epochs 3 beats both
    tiny = build_sweep("precision", SweepOptions(tiny=True))
    epochs = {r.name: r.settings.optim.epochs for r in tiny.runs}
    assert epochs["base-fp32-s11711"] == 0 and epochs["fp32-s11711"] == 1
    forced = build_sweep("precision", SweepOptions(tiny=True, finetune_args=["--epochs", "3", "--max-train", "2"]))
    assert {r.settings.optim.epochs for r in forced.runs} == {3}
    assert {r.settings.data.max_train for r in forced.runs} == {2}
    assert [r.settings.optim.seed for r in build_sweep("baseline", SweepOptions(seeds=2)).runs] == [11711, 11712] * 4


def test_a_follow_up_evaluation_on_a_run_folder_and_device():
    ev = sweeps.ZERO_SHOT_QUORA
    assert (ev.name, ev.output, ev.task, ev.module) == ("zero_shot_quora", "eval-quora-zero-shot-dev.json", "quora",
                                                         "minigpt2.evaluate")
    assert ev.settings.zero_shot is True and ev.settings.run_dir is None
    on = ev.settings_for(Path("/runs/fp32-s11711"), "cuda:1")
    assert (on.run_dir, on.hardware.device, on.task, on.zero_shot) == ("/runs/fp32-s11711", "cuda:1", "quora", True)
    assert ev.settings_for(Path("/r")).hardware == ev.settings.hardware
    own = Evaluation("e", dataclasses.replace(ev.settings, hardware=dataclasses.replace(ev.settings.hardware,
                                                                                        device="cpu")), "o.json")
    assert own.settings_for(Path("/r")).hardware.device == "cpu"
    assert own.settings_for(Path("/r"), "cuda:0").hardware.device == "cuda:0"
    assert Evaluation("own task", dataclasses.replace(ev.settings, task=None), "o.json").task is None


def test_a_knob_is_read_by_path_none_under_an_absent_group_or_by_function():
    runs = build_sweep("lora-ranks", SweepOptions()).runs
    assert sweeps.setting(runs[1].settings, "model.lora.rank") == 1
    assert sweeps.setting(runs[0].settings, "model.lora.rank") is None  # full fine-tuning: no LoRA group
    assert sweeps.setting(runs[0].settings, "data.synthetic.filter") is None
    assert sweeps.setting(runs[0].settings, "data.task") == "sonnet"
    assert sweeps.setting(runs[0].settings, lambda s: s.optim.seed + 1) == 11712
    sweep = Sweep("s", runs[:2], knobs={"task": "data.task", "rank": "model.lora.rank"})
    assert sweep.knob_values(runs[1]) == {"task": "sonnet", "rank": 1, "seed": 11711}
    assert [(c.head, c.value) for c in sweep.table_columns()] == [("task", "task"), ("rank", "rank")]
    assert Column("x", "k").of({"k": 3}) == 3 and Column("x", "k").of({}) is None
    assert Column("x", lambda p: p["k"] * 2).of({"k": 3}) == 6


def rows(*points: dict) -> list[dict]:
    """Reproduced rows of one seed each: a dev chrF and its interval."""
    return [{**p, "seed": SEED, "status": "done", "metric": "chrf", "ci_low": p["dev_score"] - 1,
             "ci_high": p["dev_score"] + 1, "n_dev": 12} for p in points]


def test_best_picks_the_highest_dev_score_among_what_it_keeps():
    pick = sweeps.best(lambda p: p.get("method") == "lora")
    found = rows({"method": "full", "rank": None, "dev_score": 50.0}, {"method": "lora", "rank": 4, "dev_score": 41.0},
                 {"method": "lora", "rank": 64, "dev_score": 43.0}, {"method": "lora", "rank": 8, "dev_score": 42.0})
    assert pick(found)["rank"] == 64 and pick(found)["score"] == 43.0
    assert pick(rows({"method": "full", "rank": None, "dev_score": 50.0})) is None
    failed = [{**r, "status": "failed"} for r in rows({"method": "lora", "rank": 2, "dev_score": 60.0})]
    assert pick(found + failed)["rank"] == 64  # a setting without a finished run is never the best
    assert pick([]) is None


# ---------------------------------------------------------------------------------------------- baseline

def test_baseline_is_full_fine_tuning_on_the_four_tasks_beside_the_studys_figures():
    sweep = build_sweep("baseline", SweepOptions())
    assert sweep.name == "baseline" and sweep.note == "" and sweep.references == () and not sweep.best
    assert names(sweep) == ["sst-s11711", "cfimdb-s11711", "quora-s11711", "sonnet-s11711"]
    assert [(r.settings.data.task, r.settings.model.mode, r.settings.model.method) for r in sweep.runs] == [
        (t, "full-model", "full") for t in ("sst", "cfimdb", "quora", "sonnet")]
    assert all(changed(r.settings) == {} for r in sweep.runs)  # the finetune defaults: the course's settings
    assert sweep.knob_values(sweep.runs[3]) == {"task": "sonnet", "method": "full", "seed": SEED}
    assert heads(sweep) == ["task", "metric"] and [c.head for c in sweep.after] == ["study dev", "study test"]
    metric, dev, test = sweep.columns[1], sweep.after[0], sweep.after[1]
    # docs/study.md, "Reference figures": SST 0.513 / 0.546, CFIMDB 0.971 (dev only), Quora 0.911 / 0.891,
    # sonnet chrF 41.97 / 41.078
    shown = {t: (metric.of({"task": t}), dev.of({"task": t}), test.of({"task": t}))
             for t in ("sst", "cfimdb", "quora", "sonnet", "other")}
    assert shown == {"sst": ("accuracy", "0.513", "0.546"), "cfimdb": ("accuracy", "0.971", None),
                     "quora": ("accuracy", "0.911", "0.891"), "sonnet": ("chrF", "41.97", "41.078"),
                     "other": ("accuracy", None, None)}
    plot = sweep.plot
    assert (plot.x, plot.xlabel, plot.title) == ("task", "task", "Full fine-tuning: dev and test scores")
    assert [plot.study({"task": t}) for t in ("sst", "cfimdb", "quora", "sonnet", "x")] == [0.513, 0.971, 0.911,
                                                                                            41.97, None]
    published = [(p.name, p.metric, p.dev, p.test) for p in sweep.published]
    assert published == [("sst (full fine-tuning)", "accuracy", "0.513", "0.546"),
                         ("cfimdb (full fine-tuning)", "accuracy", "0.971", "—"),
                         ("quora (full fine-tuning)", "accuracy", "0.911", "0.891"),
                         ("sonnet (full fine-tuning)", "chrF", "41.97", "41.078")]
    found = rows({"task": "sst", "method": "full", "dev_score": 0.5}, {"task": "quora", "method": "full",
                                                                      "dev_score": 0.9})
    assert [p.pick(found) and p.pick(found)["task"] for p in sweep.published] == ["sst", None, "quora", None]


# ---------------------------------------------------------------------------------------------- LoRA

def test_lora_ranks_are_one_to_256_at_alpha_16_lr_1e2_beside_full_fine_tuning():
    sweep = build_sweep("lora-ranks", SweepOptions())
    ranks = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert names(sweep) == ["full-s11711"] + [f"lora-r{r}-s11711" for r in ranks]
    assert [lora_of(r) for r in sweep.runs] == [None] + [(r, 16, "attn+mlp", 1e-2) for r in ranks]
    assert changed(sweep.runs[0].settings) == {}  # full fine-tuning with finetune's defaults
    assert {r.settings.data.task for r in sweep.runs} == {"sonnet"}
    assert changed(sweep.runs[3].settings) == {"model.method": "lora", "model.lora.rank": 4, "model.lora.alpha": 16,
                                               "model.lora.targets": "attn+mlp", "optim.lr": 0.01}
    assert sweep.note == "" and sweep.knobs == {"task": "data.task", "method": "model.method",
                                                "rank": "model.lora.rank", "targets": "model.lora.targets"}
    assert sweep.knob_values(sweep.runs[9]) == {"task": "sonnet", "method": "lora", "rank": 256,
                                                "targets": "attn+mlp", "seed": SEED}
    assert heads(sweep) == ["method", "rank", "trainable params"]
    point = {"method": "lora", "rank": 256, "targets": "attn+mlp", "trainable_params": 42467328}
    assert [c.of(point) for c in sweep.table_columns()] == ["lora", 256, 42467328]
    (ref,) = sweep.references
    assert ref.description == "full fine-tuning" and ref.short == ""
    assert ref.rule({"method": "full"}, {"method": "lora"}) and not ref.rule({"method": "lora"}, {"method": "full"})
    plot = sweep.plot
    assert (plot.x, plot.xlabel, plot.title, plot.log, plot.level_label) == (
        "rank", "LoRA rank", "Sonnets: chrF vs LoRA rank", 2, "full fine-tuning")
    assert plot.label(None) == "LoRA (attn+mlp, alpha 16)"
    assert plot.keep({"method": "lora"}) and not plot.keep({"method": "full"})
    assert plot.level({"method": "full"}) and not plot.level({"method": "lora"})
    # docs/study.md: the best LoRA (rank 256, attn+mlp) 42.16 dev chrF; 42,467,328 trainable parameters
    best, params = sweep.published
    assert (best.metric, best.dev, best.test) == ("chrF", "42.16 (rank 256)", "—")
    assert best.name(None) == "sonnet, best LoRA rank"
    assert best.name({"rank": 64}) == "sonnet, best LoRA rank (reproduced: rank 64)"
    found = rows({"method": "full", "rank": None, "dev_score": 50.0},
                 {"method": "lora", "rank": 64, "dev_score": 43.0, "trainable_params": 100},
                 {"method": "lora", "rank": 256, "dev_score": 42.0, "trainable_params": 42467328})
    assert best.pick(found)["rank"] == 64
    assert (params.name, params.metric, params.dev, params.test) == ("LoRA rank 256 on attn+mlp",
                                                                   "trainable parameters", "42.5M", "—")
    assert params.pick(found)["rank"] == 256 and params.cells(params.pick(found)) == ("42.5M", "—")
    assert params.cells({"trainable_params": 42450010}) == ("42.5M", "—")  # 42.45001 (not 42.44997: millions)
    assert params.pick(found[:2]) is None
    assert params.pick([{**r, "trainable_params": None} for r in found]) is None  # not counted: no figure


def test_lora_ranks_under_tiny_and_its_note():
    sweep = build_sweep("lora-ranks", SweepOptions(tiny=True))
    assert names(sweep) == ["full-s11711", "lora-r1-s11711", "lora-r4-s11711"]
    assert sweep.note == "--tiny: ranks 1, 4 only (full sweep: 1, 2, 4, 8, 16, 32, 64, 128, 256)"


def test_lora_targets_are_attention_alone_and_with_the_mlp_at_ranks_16_and_256():
    sweep = build_sweep("lora-targets", SweepOptions())
    assert names(sweep) == ["lora-attn-r16-s11711", "lora-attn-mlp-r16-s11711", "lora-attn-r256-s11711",
                            "lora-attn-mlp-r256-s11711"]
    assert [lora_of(r) for r in sweep.runs] == [(16, 16, "attn", 1e-2), (16, 16, "attn+mlp", 1e-2),
                                                (256, 16, "attn", 1e-2), (256, 16, "attn+mlp", 1e-2)]
    assert {r.settings.data.task for r in sweep.runs} == {"sonnet"} and sweep.note == ""
    assert sweep.knobs == sweeps.LORA_KNOBS and heads(sweep) == ["targets", "rank", "trainable params"]
    point = {"method": "lora", "rank": 16, "targets": "attn", "trainable_params": 589824}
    assert [c.of(point) for c in sweep.table_columns()] == ["attn", 16, 589824]
    (ref,) = sweep.references
    assert ref.description == "LoRA on attn+mlp at the same rank"
    assert ref.rule({"targets": "attn+mlp", "rank": 16}, {"targets": "attn", "rank": 16})
    assert not ref.rule({"targets": "attn+mlp", "rank": 256}, {"targets": "attn", "rank": 16})
    assert not ref.rule({"targets": "attn", "rank": 16}, {"targets": "attn", "rank": 16})
    plot = sweep.plot
    assert (plot.x, plot.xlabel, plot.title, plot.log) == ("trainable_params", "trainable parameters",
                                                           "Sonnets: LoRA targets", 10)
    assert plot.line({"targets": "attn"}) == "attn" and plot.label("attn+mlp") == "LoRA on attn+mlp"
    assert plot.annotate({"rank": 256}) == "r256"
    tiny = build_sweep("lora-targets", SweepOptions(tiny=True))
    assert names(tiny) == ["lora-attn-r4-s11711", "lora-attn-mlp-r4-s11711"]
    assert tiny.note == "--tiny: rank 4 only (full sweep: ranks 16 and 256)"


def test_the_alpha_lr_grid_is_searched_at_rank_16_and_marks_the_studys_choice():
    sweep = build_sweep("lora-alpha-lr", SweepOptions())
    grid = [(a, lr) for a in (4, 8, 16, 32, 64) for lr in (1e-3, 3e-3, 1e-2, 3e-2)]
    assert names(sweep) == [f"lora-a{a}-lr{lr}-s11711" for a, lr in grid]
    assert names(sweep)[:4] == ["lora-a4-lr0.001-s11711", "lora-a4-lr0.003-s11711", "lora-a4-lr0.01-s11711",
                                "lora-a4-lr0.03-s11711"]
    assert [lora_of(r) for r in sweep.runs] == [(16, a, "attn+mlp", lr) for a, lr in grid]
    assert {r.settings.data.task for r in sweep.runs} == {"sonnet"} and sweep.note == "" and sweep.best
    assert sweep.knobs == {**sweeps.LORA_KNOBS, "alpha": "model.lora.alpha", "lr": "optim.lr"}
    assert heads(sweep) == ["rank", "alpha", "lr"]
    point = {"rank": 16, "alpha": 16.0, "lr": 0.003}
    assert [c.of(point) for c in sweep.table_columns()] == [16, "16", "0.003"]
    (after,) = sweep.after
    assert after.head == "chosen by dev score"
    assert after.of({"best": True}) == "best" and after.of({"best": False}) is None and after.of({}) is None
    (ref,) = sweep.references
    assert ref.description == "alpha 16, lr 1e-2 (the study's choice)"
    assert ref.rule({"alpha": 16, "lr": 1e-2}, {"alpha": 4, "lr": 1e-3})
    assert not ref.rule({"alpha": 16, "lr": 3e-2}, {}) and not ref.rule({"alpha": 32, "lr": 1e-2}, {})
    plot = sweep.plot
    assert (plot.x, plot.xlabel, plot.title, plot.log) == ("lr", "learning rate",
                                                           "Sonnets: LoRA alpha x learning rate", 10)
    assert plot.line({"alpha": 32}) == 32 and plot.label(32.0) == "alpha 32"
    chosen, label = plot.mark
    assert label == "study's choice (alpha 16, lr 1e-2)"
    assert chosen({"alpha": 16, "lr": 0.01}) and not chosen({"alpha": 16, "lr": 0.03})
    assert not chosen({"alpha": 8, "lr": 0.01}) and not chosen({})

    tiny = build_sweep("lora-alpha-lr", SweepOptions(tiny=True))
    assert names(tiny) == ["lora-a16-lr0.01-s11711", "lora-a32-lr0.01-s11711"]
    assert [lora_of(r) for r in tiny.runs] == [(4, 16, "attn+mlp", 0.01), (4, 32, "attn+mlp", 0.01)]
    assert tiny.note == ("--tiny: rank 4, alpha (16, 32), lr (0.01,) (full sweep: rank 16, alpha (4, 8, 16, 32, 64),"
                         " lr (0.001, 0.003, 0.01, 0.03))")


# ---------------------------------------------------------------------------------------------- precision

def precision_of(run: Run) -> tuple:
    s = run.settings
    return s.data.task, s.precision.format, s.precision.qaft, s.optim.epochs, s.optim.autocast


def test_precision_runs_each_precision_ptq_and_qaft_the_base_models_and_the_other_tasks_fp32_twins():
    sweep = build_sweep("precision", SweepOptions())
    auto = cli.settings_of({"data.task": "sonnet"}).optim.autocast  # finetune's default, kept by non-fp32 arms
    epochs = cli.settings_of({"data.task": "sonnet"}).optim.epochs
    expected = [(f"base-{p}", ("sonnet", p, False, 0, "off" if p == "fp32" else auto))
                for p in ("fp64", "fp32", "bf16", "fp8", "int8", "int4")]
    for p in ("fp64", "fp32", "bf16", "fp8", "int8", "int4"):
        if p == "fp32":
            expected.append(("fp32", ("sonnet", "fp32", False, epochs, "off")))
        else:
            expected += [(f"{p}-ptq", ("sonnet", p, False, epochs, auto)),
                         (f"{p}-qaft", ("sonnet", p, True, epochs, auto))]
    for task in ("sst", "cfimdb"):
        expected += [(f"{task}-fp32", (task, "fp32", False, epochs, "off")),
                     (f"{task}-int8-qaft", (task, "int8", True, epochs, auto))]
    assert [(r.name, precision_of(r)) for r in sweep.runs] == [(f"{n}-s11711", v) for n, v in expected]
    assert len(sweep.runs) == 21 and sweep.note == ""  # docs/study.md: precision 21 with 6 base models
    assert all(r.evaluations == (sweeps.ZERO_SHOT_QUORA,) for r in sweep.runs)
    base, tuned = sweep.runs[0], sweep.runs[6]
    assert sweep.knob_values(base) == {"task": "sonnet", "precision": "fp64", "qaft": False, "stage": "base",
                                       "seed": SEED}
    assert sweep.knob_values(tuned)["stage"] == "fine-tuned"
    assert heads(sweep) == ["model", "task", "precision", "QAFT", "model bytes"]
    point = {"stage": "base", "task": "sonnet", "precision": "int8", "qaft": True, "model_bytes": 1000}
    assert [c.of(point) for c in sweep.table_columns()] == ["base", "sonnet", "int8", True, 1000]
    assert sweep.columns[0].of({}) == "fine-tuned"  # rows from before the stage knob: fine-tuned models
    assert [(c.head, c.of({"zero_shot_quora": 0.6})) for c in sweep.after] == [("zero-shot Quora acc.", 0.6)]
    assert sweep.extras == ("model_bytes",)


def test_precision_references_are_fp32_at_the_same_stage_and_ptq_for_qaft_arms():
    fp32, ptq = build_sweep("precision", SweepOptions()).references
    assert fp32.description == "fp32 at the same stage (base or fine-tuned) on the same task" and fp32.short == "fp32"
    arm = {"precision": "int8", "qaft": True, "stage": "fine-tuned", "task": "sst"}
    assert fp32.rule({"precision": "fp32", "qaft": False, "stage": "fine-tuned", "task": "sst"}, arm)
    assert not fp32.rule({"precision": "fp32", "qaft": False, "stage": "base", "task": "sst"}, arm)
    assert not fp32.rule({"precision": "fp32", "qaft": False, "stage": "fine-tuned", "task": "sonnet"}, arm)
    assert not fp32.rule({"precision": "bf16", "qaft": False, "stage": "fine-tuned", "task": "sst"}, arm)
    assert ptq.description == "post-training quantization at the same precision: QAFT arms only" and ptq.short == ""
    same = {"precision": "int8", "stage": "fine-tuned", "task": "sst"}
    assert ptq.rule({**same, "qaft": False}, arm)
    assert not ptq.rule({**same, "qaft": True}, arm)  # itself
    assert not ptq.rule({**same, "qaft": False}, {**arm, "qaft": False})  # a PTQ arm has no PTQ reference
    assert not ptq.rule({**same, "precision": "int4", "qaft": False}, arm)
    assert not ptq.rule({**same, "stage": "base", "qaft": False}, arm)
    assert not ptq.rule({**same, "task": "cfimdb", "qaft": False}, arm)
    assert sweeps._same({"a": 1, "b": 2}, {"a": 1, "b": 3}, "a") and not sweeps._same({"a": 1, "b": 2},
                                                                                     {"a": 1, "b": 3}, "a", "b")


def test_precision_plot_is_the_fine_tuned_sonnet_models_by_size_with_the_zero_shot_check_beside():
    plot = build_sweep("precision", SweepOptions()).plot
    assert (plot.x, plot.xlabel, plot.title, plot.log) == ("model_bytes", "model size (bytes)",
                                                           "Sonnets: chrF vs model size by precision", 10)
    assert plot.second == ("zero_shot_quora", "zero-shot Quora accuracy", "Generality after sonnet fine-tuning")
    assert plot.line({"qaft": 1}) is True and plot.line({"qaft": None}) is False
    assert plot.label(True) == "QAFT" and plot.label(False) == "post-training quantization"
    tuned = {"task": "sonnet", "stage": "fine-tuned", "model_bytes": 10}
    assert plot.keep(tuned) and plot.keep({"model_bytes": 10})  # older rows: sonnet, fine-tuned
    assert not plot.keep({**tuned, "task": "sst"}) and not plot.keep({**tuned, "stage": "base"})
    assert not plot.keep({**tuned, "model_bytes": 0}) and not plot.keep({**tuned, "model_bytes": None})
    assert plot.shared({"precision": "fp32"}) and not plot.shared({"precision": "int8"})
    assert plot.annotate({"precision": "int4"}) == "int4"


def test_precision_under_tiny_and_its_note():
    sweep = build_sweep("precision", SweepOptions(tiny=True))
    assert names(sweep) == [f"{n}-s11711" for n in ("base-fp32", "base-int8", "fp32", "int8-ptq", "int8-qaft",
                                                    "sst-fp32", "sst-int8-qaft")]
    assert sweep.note == ("--tiny: fp32 and int8 only, int8 QAFT on sst only (full sweep: fp64, fp32, bf16, fp8, "
                          "int8, int4; sst and cfimdb)")


# ---------------------------------------------------------------------------------------------- teachers

def write_sonnets(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    body = "\n".join(f"Line {i} of a sonnet that stands in here," for i in range(14))
    (folder / "sonnets.txt").write_text("".join(f"\n{k}\n\n{body}\n" for k in range(1, n + 1)), encoding="utf-8")
    return folder


def fake_files(monkeypatch, folder: Path, have: dict[str, tuple[int, int]]) -> None:
    """<teacher>.jsonl in `folder` holding (kept, perfect) sonnets each (their count, as `load_synthetic` gives)."""
    import distill.synthetic

    folder.mkdir(parents=True, exist_ok=True)
    for teacher in have:
        (folder / f"{teacher}.jsonl").write_text("", encoding="utf-8")

    def load(path, n=None, filter="all"):
        kept, perfect = have[Path(path).stem]
        return ["s"] * (perfect if filter == "perfect" else kept)

    monkeypatch.setattr(distill.synthetic, "load_synthetic", load)


def synthetic_of(run: Run) -> tuple | None:
    syn = run.settings.data.synthetic
    return None if syn is None else (Path(syn.path).name, syn.n, syn.filter, syn.only)


def test_real_training_sonnets_counts_the_file_cut_by_tiny(tmp_path, monkeypatch):
    data = write_sonnets(tmp_path / "d", 6)
    assert real_training_sonnets(SweepOptions(data_dir=str(data))) == 6
    assert real_training_sonnets(SweepOptions(tiny=True, data_dir=str(data))) == 4  # --tiny trains on 4
    assert real_training_sonnets(SweepOptions(tiny=True, data_dir=str(write_sonnets(tmp_path / "t", 3)))) == 3
    assert real_training_sonnets(SweepOptions(tiny=True)) == 4  # the shipped tiny data (more than 4 sonnets)
    assert real_training_sonnets(SweepOptions(data_dir=str(tmp_path / "none"))) is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "sonnets.txt").write_text("no numbered sonnet here\n", encoding="utf-8")
    assert real_training_sonnets(SweepOptions(data_dir=str(tmp_path / "bad"))) is None
    monkeypatch.setenv("MINIGPT2_DATA_DIR", str(data))  # the data folder of finetune's default
    assert real_training_sonnets(SweepOptions()) == 6
    monkeypatch.delenv("MINIGPT2_DATA_DIR")
    monkeypatch.chdir(tmp_path)  # else data/ of the working folder
    write_sonnets(tmp_path / "data", 5)
    assert real_training_sonnets(SweepOptions()) == 5


def test_the_mixing_ratios_count_the_real_sonnets_finetune_args_max_train_leaves(tmp_path):
    """--finetune-args '--max-train N' trains every run on N real sonnets: ratio r adds r x N synthetic ones (was:
    r x the file's count, or x 4 under --tiny, so "ratio 0.5" of 2 real sonnets added 2)."""
    data = write_sonnets(tmp_path / "d", 500)
    assert real_training_sonnets(SweepOptions(data_dir=str(data), finetune_args=["--max-train", "100"])) == 100
    assert real_training_sonnets(SweepOptions(data_dir=str(data), finetune_args=["--max-train", "900"])) == 500
    assert real_training_sonnets(SweepOptions(tiny=True, data_dir=str(data), finetune_args=["--max-train", "2"])) == 2
    assert real_training_sonnets(SweepOptions(data_dir=str(data), finetune_args=["--epochs", "2"])) == 500
    sweep = build_sweep("teachers", SweepOptions(tiny=True, finetune_args=["--max-train", "2"]))
    ratio = [r for r in sweep.runs if "ratio" in r.name]
    assert [(r.name, synthetic_of(r), r.settings.data.max_train) for r in ratio] == [
        (f"{FLASH}-ratio0.5-perfect-s11711", (f"{FLASH}.jsonl", 1, "perfect", False), 2),
        (f"{LITE}-ratio0.5-perfect-s11711", (f"{LITE}.jsonl", 1, "perfect", False), 2)]  # 0.5 x 2 real sonnets


def test_a_ratio_of_one_real_sonnet_that_rounds_to_none_is_said_not_run():
    """--max-train 1: ratio 0.5 asks half a synthetic sonnet, round(0.5) = 0: no arm, and the note says why (was:
    "ratio 0.5 needs 0 perfect sonnets, has 2")."""
    sweep = build_sweep("teachers", SweepOptions(tiny=True, finetune_args=["--max-train", "1"]))
    assert not [r.name for r in sweep.runs if "ratio" in r.name]
    assert sweep.note.split("; ")[1:] == ["gemini-2.5-flash: ratio 0.5 of 1 real sonnet adds no synthetic one",
                                          "gemini-2.5-flash-lite: ratio 0.5 of 1 real sonnet adds no synthetic one"]


def test_a_ratio_asking_every_perfect_sonnet_a_file_has_is_run(tmp_path, monkeypatch):
    """600 real sonnets, flash 1200 perfect: ratio 2 asks all 1200 (past the largest size, so no curve point)."""
    folder = tmp_path / "synth"
    fake_files(monkeypatch, folder, {FLASH: (2000, 1200)})
    sweep = build_sweep("teachers", SweepOptions(synthetic_dir=str(folder),
                                                 data_dir=str(write_sonnets(tmp_path / "data", 600))))
    assert [(r.name, synthetic_of(r)[1]) for r in sweep.runs if "ratio" in r.name or "only-perfect" in r.name] == [
        (f"{FLASH}-ratio0.5-perfect-s11711", 300), (f"{FLASH}-ratio1-perfect-s11711", 600),
        (f"{FLASH}-ratio2-perfect-s11711", 1200), (f"{FLASH}-only-perfect-s11711", 1200)]
    assert sweep.note == ""


def test_fit_sizes_end_each_curve_at_what_the_file_has():
    assert fit_sizes((250, 500, 1000), 250) == [250]
    assert fit_sizes((250, 500, 1000), 499) == [250, 499]
    assert fit_sizes((250, 500, 1000), 1) == [1]
    assert fit_sizes((2,), 2) == [2] and fit_sizes((2,), 1) == [1] and fit_sizes((2,), 0) == []
    assert fit_sizes((), 5) == []
    # the sizes asked, in the order asked, then what the file has when a larger size was asked for
    assert fit_sizes((1000, 250), 1000) == [1000, 250] and fit_sizes((1000, 250), 600) == [250, 600]


def test_shortfall_says_what_a_file_has_and_the_requests_that_would_fill_it(tmp_path):
    # no summary beside the file: the study's perfect rate (pro 75%), every request kept
    path = tmp_path / f"{PRO}.jsonl"
    assert shortfall(PRO, path, "perfect", 640, 1000) == (
        "gemini-2.5-pro has 640 perfect sonnets; the n1000-perfect arm needs 1000: generate ~480 more requests "
        "(its curve ends at 640 until then)")  # 360 / 0.75
    assert shortfall(PRO, path, "all", 300, 1000) == (
        "gemini-2.5-pro has 300 kept sonnets; the n1000-all arm needs 1000: generate ~700 more requests "
        "(its curve ends at 300 until then)")  # 700 kept at one a request
    assert "generate ~1 more requests" in shortfall(PRO, path, "all", 999, 1000)  # 1 kept; no perfect one asked
    assert shortfall(LITE, tmp_path / f"{LITE}.jsonl", "perfect", 0, 250).startswith(
        "gemini-2.5-flash-lite has 0 perfect sonnets; the n250-perfect arm needs 250: generate ~447 more requests")
    # ceil(250 / 0.56) = ceil(446.4)


def test_teachers_without_files_wait_for_them(tmp_path):
    for opts, where in ((SweepOptions(), "--synthetic-dir DIR"),
                        (SweepOptions(synthetic_dir=str(tmp_path)), f"{tmp_path}: no <teacher>.jsonl files"),
                        (SweepOptions(synthetic_dir=str(tmp_path / "absent")),
                         f"{tmp_path / 'absent'}: no <teacher>.jsonl files")):
        sweep = build_sweep("teachers", opts)
        assert sweep.runs == [] and sweep.waits == (f"the Gemini files ({where}; make them with {HINT})",)
        assert sweep.published == sweeps.TEACHERS_PUBLISHED and sweep.note == "" and sweep.name == "teachers"


def test_teachers_curves_shortfalls_and_mixes_of_files_of_every_size(tmp_path, monkeypatch):
    """500 real training sonnets, so the ratios 0.5 / 1 / 2 ask 250 / 500 / 1000 perfect ones. flash: 1200 kept,
    640 perfect (its perfect curve ends at 640; ratios 0.5 and 1 are curve points, 2 is too many); pro: 300 kept,
    200 perfect (both curves cut); flash-lite: 1000 kept, none perfect (no perfect arm at all)."""
    folder = tmp_path / "synth"
    fake_files(monkeypatch, folder, {FLASH: (1200, 640), PRO: (300, 200), LITE: (1000, 0)})
    data = write_sonnets(tmp_path / "data", 500)
    sweep = build_sweep("teachers", SweepOptions(synthetic_dir=str(folder), data_dir=str(data)))
    f, p, lite = f"{FLASH}.jsonl", f"{PRO}.jsonl", f"{LITE}.jsonl"
    assert [(r.name, synthetic_of(r)) for r in sweep.runs] == [
        ("real-only-s11711", None),
        *[(f"{FLASH}-n{n}-all-s11711", (f, n, "all", False)) for n in (250, 500, 1000)],
        *[(f"{FLASH}-n{n}-perfect-s11711", (f, n, "perfect", False)) for n in (250, 500, 640)],
        *[(f"{LITE}-n{n}-all-s11711", (lite, n, "all", False)) for n in (250, 500, 1000)],
        *[(f"{PRO}-n{n}-all-s11711", (p, n, "all", False)) for n in (250, 300)],
        (f"{PRO}-n200-perfect-s11711", (p, 200, "perfect", False)),
        (f"{FLASH}-only-perfect-s11711", (f, 640, "perfect", True)),
        (f"{PRO}-only-perfect-s11711", (p, 200, "perfect", True)),
    ]
    assert sweep.runs[1].settings.data.synthetic.path == str(folder / f)
    assert {r.settings.data.task for r in sweep.runs} == {"sonnet"}
    assert sweep.note.split("; ") == [
        "gemini-2.5-flash has 640 perfect sonnets",
        "the n1000-perfect arm needs 1000: generate ~500 more requests (its curve ends at 640 until then)",
        "gemini-2.5-flash-lite has 0 perfect sonnets",
        "the n1000-perfect arm needs 1000: generate ~1786 more requests (its curve ends at 0 until then)",
        "gemini-2.5-pro has 300 kept sonnets",
        "the n1000-all arm needs 1000: generate ~700 more requests (its curve ends at 300 until then)",
        "gemini-2.5-pro has 200 perfect sonnets",
        "the n1000-perfect arm needs 1000: generate ~1067 more requests (its curve ends at 200 until then)",
        "gemini-2.5-flash: ratio 0.5 is its n250-perfect run", "gemini-2.5-flash: ratio 1 is its n500-perfect run",
        "gemini-2.5-flash: ratio 2 needs 1000 perfect sonnets, has 640",
        "gemini-2.5-flash-lite: ratio 0.5 needs 250 perfect sonnets, has 0",
        "gemini-2.5-flash-lite: ratio 1 needs 500 perfect sonnets, has 0",
        "gemini-2.5-flash-lite: ratio 2 needs 1000 perfect sonnets, has 0",
        "gemini-2.5-pro: ratio 0.5 needs 250 perfect sonnets, has 200",
        "gemini-2.5-pro: ratio 1 needs 500 perfect sonnets, has 200",
        "gemini-2.5-pro: ratio 2 needs 1000 perfect sonnets, has 200"]
    # 360 more perfect at flash's 72%: 500 requests (ceil of 499.99... or 500.0...: either way ~500); lite
    # 1000 / 0.56 = 1785.7; pro 800 / 0.75 = 1066.7
    assert math.ceil(1000 / 0.56) == 1786 and math.ceil(800 / 0.75) == 1067
    needs = {(Path(file).name, filt, n) for file, filt, n in sweep.synthetic_needs}
    assert len(sweep.synthetic_needs) == 3 * 5
    assert needs == {(t, filt, n) for t in (f, p, lite) for filt, n in
                     (("all", 1000), ("perfect", 1000), ("perfect", 250), ("perfect", 500))}
    assert sweep.synthetic_needs[:5] == tuple((str(folder / f), filt, n) for filt, n in (
        ("all", 1000), ("perfect", 1000), ("perfect", 250), ("perfect", 500), ("perfect", 1000)))


def test_teachers_mixing_arms_between_the_curve_points_and_the_knobs_they_carry(tmp_path, monkeypatch):
    """400 real sonnets: ratios 0.5 / 1 / 2 ask 200 / 400 / 800 perfect ones, none a curve point; flash has 900."""
    folder = tmp_path / "synth"
    fake_files(monkeypatch, folder, {FLASH: (2000, 900)})
    sweep = build_sweep("teachers", SweepOptions(synthetic_dir=str(folder),
                                                 data_dir=str(write_sonnets(tmp_path / "data", 400))))
    f = f"{FLASH}.jsonl"
    assert [(r.name, synthetic_of(r)) for r in sweep.runs] == [
        ("real-only-s11711", None),
        *[(f"{FLASH}-n{n}-all-s11711", (f, n, "all", False)) for n in (250, 500, 1000)],
        *[(f"{FLASH}-n{n}-perfect-s11711", (f, n, "perfect", False)) for n in (250, 500, 900)],
        (f"{FLASH}-ratio0.5-perfect-s11711", (f, 200, "perfect", False)),
        (f"{FLASH}-ratio1-perfect-s11711", (f, 400, "perfect", False)),
        (f"{FLASH}-ratio2-perfect-s11711", (f, 800, "perfect", False)),
        (f"{FLASH}-only-perfect-s11711", (f, 900, "perfect", True)),
    ]
    assert sweep.note == ("gemini-2.5-flash has 900 perfect sonnets; the n1000-perfect arm needs 1000: generate "
                          "~139 more requests (its curve ends at 900 until then)")  # ceil(100 / 0.72) = 139
    knobs = [sweep.knob_values(r) for r in sweep.runs]
    assert knobs[0] == {"task": "sonnet", "teacher": None, "synthetic_n": 0, "synthetic_filter": None, "mix": None,
                        "seed": SEED}
    assert knobs[1] == {"task": "sonnet", "teacher": FLASH, "synthetic_n": 250, "synthetic_filter": "all",
                        "mix": None, "seed": SEED}
    assert [k["mix"] for k in knobs[4:]] == [None, None, None, "ratio 0.5", "ratio 1", "ratio 2", "synthetic only"]
    assert [k["synthetic_n"] for k in knobs[7:]] == [200, 400, 800, 900]
    assert heads(sweep) == ["teacher", "synthetic", "filter", "mix"]
    teacher, n, filt, mix = sweep.table_columns()
    assert teacher.of({"teacher": None}) == "(real only)" and teacher.of({"teacher": FLASH}) == FLASH
    assert (n.of({"synthetic_n": 250}), filt.of({"synthetic_filter": "perfect"})) == (250, "perfect")
    assert mix.of({"synthetic_n": 0}) == "real only" and mix.of({"synthetic_n": 250}) == "real + synthetic"
    assert mix.of({"synthetic_n": 200, "mix": "ratio 0.5"}) == "ratio 0.5"
    (ref,) = sweep.references
    assert ref.description == "real sonnets only"
    assert ref.rule({"synthetic_n": 0}, {"synthetic_n": 250}) and not ref.rule({"synthetic_n": 250}, {})
    plot = sweep.plot
    assert (plot.x, plot.xlabel, plot.title) == ("synthetic_n", "synthetic sonnets added",
                                                 "Sonnets: chrF vs synthetic-set size per teacher")
    assert plot.line({"teacher": FLASH, "synthetic_filter": "all"}) == (FLASH, "all")
    assert plot.label((FLASH, "perfect")) == "gemini-2.5-flash (perfect)"
    assert plot.keep({"mix": "ratio 1"}) and plot.keep({}) and not plot.keep({"mix": "synthetic only"})
    assert plot.shared({"synthetic_n": 0}) and not plot.shared({"synthetic_n": 250})
    assert plot.log is None and sweep.published == sweeps.TEACHERS_PUBLISHED


def test_teachers_planned_before_their_files_and_without_the_training_file(tmp_path, monkeypatch):
    """--dry-run with no file: every teacher planned as if it held 1000 perfect sonnets; flash's file present (5
    perfect) is counted as it is. No sonnet training file: no ratio arm, and the note says why."""
    monkeypatch.chdir(tmp_path)
    planned = build_sweep("teachers", SweepOptions(plan_missing=True, data_dir=str(tmp_path / "nodata")))
    assert names(planned) == ["real-only-s11711"] + [f"{t}-n{n}-{filt}-s11711" for t in (FLASH, LITE, PRO)
                                                     for filt in ("all", "perfect") for n in (250, 500, 1000)] + [
        f"{t}-only-perfect-s11711" for t in (FLASH, LITE, PRO)]
    assert planned.runs[1].settings.data.synthetic.path == str(Path("synthetic") / f"{FLASH}.jsonl")
    assert [synthetic_of(r)[1] for r in planned.runs[-3:]] == [1000] * 3
    assert planned.note == ("planned as if synthetic/gemini-2.5-flash.jsonl, synthetic/gemini-2.5-flash-lite.jsonl, "
                            f"synthetic/gemini-2.5-pro.jsonl held 1000 perfect sonnets (not made yet: {HINT}); "
                            "mixing ratios wait for the sonnet training file")
    assert {n for _, _, n in planned.synthetic_needs} == {1000, 0}  # ratio asks: round(r x 0)

    folder = tmp_path / "synth"
    fake_files(monkeypatch, folder, {FLASH: (8, 5)})
    some = build_sweep("teachers", SweepOptions(plan_missing=True, synthetic_dir=str(folder),
                                                data_dir=str(write_sonnets(tmp_path / "data", 4))))
    assert names(some)[:3] == ["real-only-s11711", f"{FLASH}-n8-all-s11711", f"{FLASH}-n5-perfect-s11711"]
    assert f"{FLASH}-ratio0.5-perfect-s11711" in names(some)  # 2 of flash's 5 perfect ones
    assert f"{LITE}-ratio2-perfect-s11711" in names(some)  # planned: 8 of 1000
    assert some.note.split("; ") == [
        f"planned as if {folder / (LITE + '.jsonl')}, {folder / (PRO + '.jsonl')} held 1000 perfect sonnets (not made "
        f"yet: {HINT})", "gemini-2.5-flash has 8 kept sonnets",
        "the n1000-all arm needs 1000: generate ~992 more requests (its curve ends at 8 until then)",
        "gemini-2.5-flash has 5 perfect sonnets",  # 995 more perfect at flash's 72%: ceil(1381.9)
        "the n1000-perfect arm needs 1000: generate ~1382 more requests (its curve ends at 5 until then)",
        "gemini-2.5-flash: ratio 2 needs 8 perfect sonnets, has 5"]  # 4 real sonnets: 2 and 4 fit, 8 do not


def test_tiny_teachers_use_the_fixture_files_two_sizes_and_one_ratio():
    sweep = build_sweep("teachers", SweepOptions(tiny=True))
    # fixtures: flash 4 kept / 2 perfect, flash-lite as many (experiments/tiny_data/synthetic); 4 real sonnets:
    # ratio 0.5 asks 2 perfect ones, the n2-perfect point itself
    assert [(r.name, synthetic_of(r)) for r in sweep.runs] == [
        ("real-only-s11711", None),
        *[(f"{t}-n2-{filt}-s11711", (f"{t}.jsonl", 2, filt, False)) for t in (FLASH, LITE)
          for filt in ("all", "perfect")],
        (f"{FLASH}-only-perfect-s11711", (f"{FLASH}.jsonl", 2, "perfect", True)),
        (f"{LITE}-only-perfect-s11711", (f"{LITE}.jsonl", 2, "perfect", True)),
    ]
    assert sweep.runs[1].settings.data.synthetic.path == str(TINY_SYNTHETIC_DIR / f"{FLASH}.jsonl")
    assert sweep.note == ("--tiny: fixture teachers, sizes (0, 2) (full sweep: (0, 250, 500, 1000)); "
                          "gemini-2.5-flash: ratio 0.5 is its n2-perfect run; "
                          "gemini-2.5-flash-lite: ratio 0.5 is its n2-perfect run")


def test_the_studys_teacher_figures_and_their_reproduced_rows(tmp_path):
    best, *rates = sweeps.TEACHERS_PUBLISHED
    # docs/study.md: best distilled model 46.61 / 52.838; perfect rates 56% / 72% / 75%
    assert (best.metric, best.dev, best.test) == ("chrF", "46.61", "52.838")
    assert best.name(None) == "sonnet, best distilled model"
    assert best.name({"teacher": PRO, "synthetic_n": 500, "synthetic_filter": "perfect"}) == (
        "sonnet, best distilled model (gemini-2.5-pro, n500 perfect)")
    found = rows({"teacher": None, "synthetic_n": 0, "dev_score": 50.0},
                 {"teacher": FLASH, "synthetic_n": 250, "dev_score": 44.0},
                 {"teacher": PRO, "synthetic_n": 500, "dev_score": 45.0})
    assert best.pick(found)["teacher"] == PRO
    assert [(r.name, r.metric, r.dev, r.test) for r in rates] == [
        (f"{LITE}: perfect sonnets among those kept", "rate", "56%", "—"),
        (f"{FLASH}: perfect sonnets among those kept", "rate", "72%", "—"),
        (f"{PRO}: perfect sonnets among those kept", "rate", "75%", "—")]
    fixture = str(TINY_SYNTHETIC_DIR / f"{FLASH}.jsonl")  # its summary: 2 perfect of 4 kept, Wilson [0.150, 0.850]
    table = [{"teacher": FLASH, "arg_synthetic": None}, {"teacher": LITE, "arg_synthetic": "x.jsonl"},
             {"teacher": FLASH, "arg_synthetic": fixture}, {"teacher": FLASH, "arg_synthetic": "later.jsonl"}]
    flash = rates[1]
    assert flash.pick(table) == table[2] and rates[2].pick(table) is None and rates[0].pick(table) == table[1]
    assert flash.cells(table[2]) == ("50% [15, 85]", "—")
    assert flash.cells({"arg_synthetic": str(tmp_path / "gone.jsonl")}) == ("—", "—")
    (tmp_path / "bare.jsonl").write_text(Path(fixture).read_text(encoding="utf-8"), encoding="utf-8")
    # no summary beside it: read from the file itself (2 perfect of 4 kept)
    assert flash.cells({"arg_synthetic": str(tmp_path / "bare.jsonl")}) == ("50% [15, 85]", "—")
    assert sweeps.teacher_of(build_sweep("baseline", SweepOptions()).runs[0].settings) is None


def test_a_perfect_rate_is_shown_in_whole_percent_with_its_interval(tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"
    path.write_text("", encoding="utf-8")
    seen = []

    def summary(p):
        seen.append(p)
        return {"perfect_rate": 0.723, "perfect_low": 0.604, "perfect_high": 0.821}

    monkeypatch.setattr(sweeps, "teacher_summary", summary)
    # 72.3 -> 72, 60.4 -> 60, 82.1 -> 82 (a factor of 101 would give 73, 61, 83)
    assert sweeps._perfect_rate({"arg_synthetic": str(path)}) == ("72% [60, 82]", "—") and seen == [path]
    monkeypatch.setattr(sweeps, "teacher_summary", lambda p: {"perfect_rate": None})
    assert sweeps._perfect_rate({"arg_synthetic": str(path)}) == ("—", "—")


def test_every_sweep_is_declared_and_run_names_are_unique():
    assert list(SWEEPS) == ["baseline", "lora-ranks", "lora-targets", "lora-alpha-lr", "precision", "teachers"]
    for name in SWEEPS:
        assert build_sweep(name, SweepOptions(synthetic_dir=str(TINY_SYNTHETIC_DIR))).name == name
    assert isinstance(Reference("d", lambda ref, arm: True).short, str)


def test_a_builder_that_names_two_runs_alike_is_caught(monkeypatch):
    twice = build_sweep("baseline", SweepOptions()).runs[:1] * 2
    monkeypatch.setitem(SWEEPS, "twice", lambda opts: Sweep("twice", twice))
    with pytest.raises(AssertionError, match="^duplicate run names in sweep twice$"):
        build_sweep("twice", SweepOptions())
    monkeypatch.setitem(SWEEPS, "once", lambda opts: Sweep("once", twice[:1]))
    assert names(build_sweep("once", SweepOptions())) == ["sst-s11711"]

"""The application's contract: bad input stopped before any work (one `error:` line, exit code 1), run folders
that refuse to be overwritten or resumed with other settings, divergence stopped, and a run SIGKILLed after any
file replace resumes to the same metrics and weights."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from app import evaluate, finetune
from minigpt2.checkpoint import read_safetensors
from tests import ROOT
from tests.app.test_finetune import DATA, finetune_args, one_thread  # noqa: F401 (one_thread: autouse)



def fails_with(argv: list[str], message: str, capsys) -> None:
    """`finetune argv` exits with code 1 and one `error:` line containing `message`, before any run folder."""
    with pytest.raises(SystemExit) as e:
        finetune.main(argv)
    text = str(e.value.code)
    assert text.startswith("error: ") and message in text and "\n" not in text, text
    assert "Traceback" not in capsys.readouterr().err


BAD_FLAGS = [  # (extra flags, part of the message)
    (["--max-train", "-5"], "--max-train -5: expected an integer >= 0"),
    (["--max-eval", "0"], "--max-eval 0"),
    (["--max-length", "-3"], "--max-length -3: expected an integer >= 1"),
    (["--epochs", "-1"], "--epochs -1"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--grad-accum", "0"], "--grad-accum 0"),
    (["--eval-batch-size", "0"], "--eval-batch-size 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0"),
    (["--lr", "0"], "--lr 0.0: expected a finite number > 0"),
    (["--lr", "nan"], "--lr nan"),
    (["--lr", "inf"], "--lr inf"),
    (["--warmup", "1"], "--warmup 1.0: expected a fraction in [0, 1)"),
    (["--temperature", "-1"], "--temperature -1.0: expected a finite number >= 0"),
    (["--top-p", "0"], "--top-p 0.0: expected a mass in (0, 1]"),
    (["--top-p", "1.5"], "--top-p 1.5"),
    (["--lora-rank", "4"], "--lora-rank set(s) LoRA, which needs --method lora"),
    (["--method", "lora", "--lora-rank", "0"], "--lora-rank 0"),
    (["--method", "lora", "--lora-dropout", "1"], "--lora-dropout 1.0"),
    (["--group-size", "16"], "--group-size applies to --precision int4, not fp32"),
    (["--precision", "int4", "--group-size", "48"], "group_size=48 does not divide in_features=32"),  # PTQ
    (["--resume", "--overwrite"], "choose one"),
]


@pytest.mark.parametrize("extra,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flags_are_one_error_line_before_any_work(extra, message, tmp_path, capsys):
    fails_with(finetune_args("sst", tmp_path / "run", *extra), message, capsys)
    assert not (tmp_path / "run").exists()


def test_cuda_without_cuda_is_refused(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = finetune_args("sst", tmp_path / "run")
    argv[argv.index("--device") + 1] = "cuda"
    fails_with(argv, "--device cuda: expected a device this machine has: it has no CUDA device", capsys)


def _data_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for p in DATA.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


def test_non_utf8_bytes_name_file_and_line(tmp_path, capsys):
    folder = _data_copy(tmp_path)
    lines = (folder / "ids-sst-train.csv").read_bytes().split(b"\n")
    lines[2] = lines[2] + b"\xff\xfe"
    (folder / "ids-sst-train.csv").write_bytes(b"\n".join(lines))
    argv = finetune_args("sst", tmp_path / "run") + ["--data-dir", str(folder), "--offline"]
    fails_with(argv, "ids-sst-train.csv:3: bytes that are not UTF-8", capsys)


def test_non_finite_label_is_reported_with_file_and_line(tmp_path, capsys):
    from course.readers import read_table

    path = tmp_path / "t.csv"
    path.write_text("id\tsentence\tsentiment\na\thi\t1\nb\tho\tinf\n")
    table = read_table(path, ["id", "sentence"], label="sentiment", label_values={0, 1})
    assert [r["id"] for r in table.rows] == ["a"]
    assert [str(m) for m in table.malformed] == [f"{path}:3: label 'sentiment' is 'inf', not a finite number"]


def test_empty_train_split_after_filtering_is_an_error(tmp_path, capsys):
    folder = _data_copy(tmp_path)
    header = (folder / "ids-sst-train.csv").read_text().splitlines()[0]
    (folder / "ids-sst-train.csv").write_text(header + "\nx\tgood\t9\n")
    argv = finetune_args("sst", tmp_path / "run") + ["--data-dir", str(folder), "--offline"]
    fails_with(argv, "no usable train examples (1 malformed row(s) skipped)", capsys)


def test_divergence_stops_with_epoch_and_step(tmp_path, capsys):
    fails_with(finetune_args("sst", tmp_path / "run", "--lr", "1e30", "--epochs", "2", "--warmup", "0",
                             "--grad-clip", "0"), "at epoch 1, step 2", capsys)
    # the message suggests the fix
    with pytest.raises(SystemExit, match="try a lower learning rate"):
        finetune.main(finetune_args("sst", tmp_path / "run2", "--lr", "1e30", "--warmup", "0", "--grad-clip", "0"))


def test_non_finite_checkpoint_is_refused_on_load(tmp_path):
    from safetensors.torch import save_file

    from minigpt2.checkpoint import CheckpointError

    save_file({"w": torch.tensor([1.0, float("nan")])}, str(tmp_path / "x.safetensors"))
    with pytest.raises(CheckpointError, match="tensor 'w' holds NaN"):
        read_safetensors(tmp_path / "x.safetensors")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("app") / "run"
    finetune.main(finetune_args("sst", out, "--epochs", "1", "--lr", "1e-3"))
    return out


def test_a_finished_run_is_not_overwritten(finished, capsys):
    before = (finished / "metrics.json").read_text()
    fails_with(finetune_args("sst", finished, "--epochs", "1", "--lr", "1e-3"), "already holds a run", capsys)
    assert (finished / "metrics.json").read_text() == before


def test_resume_with_other_settings_is_refused_naming_them(finished, capsys):
    fails_with(finetune_args("sst", finished, "--epochs", "1", "--lr", "2e-3", "--resume"),
               "--lr 0.002 (the run's: 0.001) would change what it computes. Only --test-references", capsys)


def test_evaluate_refuses_a_missing_head(finished, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished, run)
    (run / "best" / "head.safetensors").unlink()
    before = (run / "full-model-sst-dev-out.csv").read_text()
    with pytest.raises(SystemExit, match=r"^error: .*head.safetensors: missing"):
        evaluate.main([str(run), "--device", "cpu"])
    assert (run / "full-model-sst-dev-out.csv").read_text() == before
    with pytest.raises(SystemExit, match=r"^error: .*best is the best checkpoint inside a run folder; pass the run"):
        evaluate.main([str(run / "best"), "--device", "cpu"])


def test_config_records_the_fingerprint(finished):
    config = json.loads((finished / "config.json").read_text())
    fp = config["fingerprint"]
    assert fp["settings"]["optim.lr"] == 1e-3 and "run.out_dir" not in fp["settings"]
    assert set(fp["data"]) >= {"ids-sst-train.csv", "ids-sst-dev.csv"} and len(fp["data"]["ids-sst-train.csv"]) == 64
    assert fp["base_weights"] is None  # the tiny model is random-init: the seed in the settings defines it
    assert "package" in fp["code"]


# ---------------------------------------------------------------------------------------------- kill at every write

KILL_ARGS = ["--epochs", "2", "--lr", "1e-3", "--seed", "3", "--max-train", "8", "--max-eval", "4"]


def _launch(out: Path, kill_after: int, count_file: Path | None = None) -> int:
    env = dict(os.environ, PYTHONPATH=str(ROOT), KILL_AFTER_REPLACE=str(kill_after), OMP_NUM_THREADS="1")
    if count_file is not None:
        env["REPLACE_COUNT_FILE"] = str(count_file)
    argv = finetune_args("sst", out, *KILL_ARGS)
    return subprocess.run([sys.executable, "-m", "tests.kill_launcher", *argv], env=env,
                          capture_output=True, text=True).returncode


def _outcome(run: Path) -> tuple:
    m = json.loads((run / "metrics.json").read_text())
    keys = ("epoch", "train_loss", "dev_loss", "accuracy", "lr")
    best, _ = read_safetensors(run / "best" / "model.safetensors")
    head, _ = read_safetensors(run / "best" / "head.safetensors")
    return ([{k: e[k] for k in keys} for e in m["epochs"]], m["best"], m["dev"], best, head,
            (run / "full-model-sst-test-out.csv").read_text())


def _same(a: tuple, b: tuple) -> bool:
    return (a[:3] == b[:3] and a[5] == b[5]
            and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in ((a[3], b[3]),
                                                                                            (a[4], b[4]))))


def test_a_kill_after_any_file_replace_resumes_to_the_same_run(tmp_path):
    count = tmp_path / "count"
    assert _launch(tmp_path / "straight", 0, count) == 0
    replaces = int(count.read_text())
    reference = _outcome(tmp_path / "straight")
    assert replaces >= 8  # config, 2 x (best model, best config, head, state, metrics), predictions, metrics
    for k in range(1, replaces + 1):
        run = tmp_path / f"killed-{k}"
        assert _launch(run, k) == -9, f"the run was not killed at replace {k}"
        finetune.main(finetune_args("sst", run, *KILL_ARGS, "--resume"))  # in-process: one interpreter less
        assert _same(_outcome(run), reference), f"a kill at replace {k} changed the run"


def test_a_lora_run_whose_base_changed_is_refused(tmp_path):
    from tests.conftest import TINY, make_hf_checkpoint

    base = make_hf_checkpoint(tmp_path / "base", seed=0, **TINY)
    run = tmp_path / "run"
    argv = finetune_args("quora", run, "--epochs", "1", "--method", "lora", "--lora-rank", "2")
    argv[argv.index("--model") + 1] = str(base)
    finetune.main(argv)
    evaluate.evaluate_run(run, "dev", device="cpu")  # the same base: fine
    recorded = json.loads((run / "config.json").read_text())["fingerprint"]["base_weights"]
    make_hf_checkpoint(base, seed=1, **TINY)  # the base file is replaced by other weights
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(run), "--device", "cpu"])
    msg = str(e.value.code)
    assert msg.startswith("error: ") and recorded["file"] in msg and recorded["sha256"] in msg
    assert "now has sha256" in msg


def test_resume_after_the_data_changed_is_refused(tmp_path, capsys):
    folder = _data_copy(tmp_path)
    run = tmp_path / "run"
    args = finetune_args("sst", run, "--epochs", "2", "--lr", "1e-3") + ["--data-dir", str(folder), "--offline"]
    finetune.main(args + ["--stop-after-epoch", "1"])
    with open(folder / "ids-sst-train.csv", "a", encoding="utf-8") as f:
        f.write("new\tone more review\t3\n")
    fails_with(args + ["--resume"], "the run's inputs changed: data ids-sst-train.csv", capsys)


def test_quant_report_checks_the_group_size_against_the_model():
    from quant import report

    with pytest.raises(SystemExit) as e:
        report.main(["--model", "gpt2", "--group-size", "100"])
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "group_size=100 does not divide in_features=768" in msg


def test_evaluate_on_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: .*config.json: not found"):
        evaluate.main([str(tmp_path), "--device", "cpu"])


def test_a_bad_settings_file_is_one_error_line_before_any_run_folder(tmp_path, capsys):
    """`finetune --settings FILE`: a missing file, one that holds no settings, or a flag beside it is one line."""
    fails_with(["--settings", str(tmp_path / "nope.json")], "nope.json: cannot be read", capsys)
    bad = tmp_path / "bad.json"
    bad.write_text('{"args": {"task": "sst"}}')
    fails_with(["--settings", str(bad)], "bad.json: expected a JSON object with the run's \"settings\"", capsys)
    fails_with(["--settings", str(bad), "--lr", "0.1"], "--lr 0.1 cannot go with it", capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]  # nothing written

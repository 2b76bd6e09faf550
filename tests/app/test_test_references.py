"""Test labels with a row whose label is empty: finetune and evaluate skip that row with a warning naming its
file and line, as they do for the dev file's, and score the others; a labels file where no predicted id has a
usable label is one `error:` line."""
import json

import pytest

from app import evaluate, finetune
from tasks import get_task
from tests.app.test_finetune import DATA, finetune_args, one_thread  # noqa: F401 (one_thread: autouse)


def labels_with_a_blank(tmp_path):
    """The tiny SST test labels, the second row's label emptied; returns (file, its ids, the blank id)."""
    ids = list(get_task("sst").format.split_labels(DATA, "test"))
    lines = (DATA / "ids-sst-test-labels.csv").read_text().splitlines()
    lines[2] = lines[2].split("\t")[0] + "\t"  # line 3 of the file: the id, an empty label
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, ids, ids[1]


def test_an_unlabelled_test_row_is_skipped_with_a_warning(tmp_path, capsys):
    labels, ids, blank = labels_with_a_blank(tmp_path)
    out = tmp_path / "run"
    finetune.main(finetune_args("sst", out, "--epochs", "1", "--test-references", str(labels)))
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if f"{labels}:3" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and "label 'sentiment' is ''" in warnings[0]
    m = json.loads((out / "metrics.json").read_text())
    task = get_task("sst")
    preds = task.format.read_predictions(out / m["test_predictions"])
    assert sorted(preds) == sorted(ids)  # every test row is still predicted and written
    truth = task.format.split_labels(DATA, "test")
    scored = [i for i in ids if i != blank]
    assert m["test"]["accuracy"] == sum(preds[i] == truth[i] for i in scored) / len(scored)

    result = evaluate.evaluate_run(out, "test", test_references=str(labels))
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if f"{labels}:3" in line]) == 1
    assert result["accuracy"] == m["test"]["accuracy"] and any(f"{labels}:3" in r for r in result["malformed_rows"])


def test_labels_without_one_usable_label_are_one_error_line(tmp_path, capsys):
    out = tmp_path / "run"
    finetune.main(finetune_args("sst", out, "--epochs", "1"))
    ids = list(get_task("sst").format.split_labels(DATA, "test"))
    empty = tmp_path / "empty.csv"
    empty.write_text("id\tsentiment\n" + "".join(f"{i}\t\n" for i in ids))
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(out), "--split", "test", "--test-references", str(empty)])
    assert e.value.code.startswith("error: ") and str(empty) in e.value.code and "\n" not in e.value.code

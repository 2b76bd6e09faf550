"""The course's prediction and reference files (`course/formats.py`) on tiny hand-made files: the bytes a user's
prediction file holds, how it is read back (every refusal's whole line), which references score a split, and the
scores themselves (accuracy counted by hand, chrF from sacrebleu)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sacrebleu

from course.formats import (FORMATS, LABEL_FORMATS, SONNETS, SONNETS_HEADER, CourseFormat, ParaphraseFormat,
                            SentimentFormat, SonnetFormat, label_format, read_generated, read_id_values, write_sonnets)
from course.readers import DataError
from course.sonnets import sonnet_file

SST, CFIMDB, QUORA = LABEL_FORMATS["sst"], LABEL_FORMATS["cfimdb"], LABEL_FORMATS["quora"]


@pytest.mark.parametrize("value", ["--3", "\u00b2", "-", "+3", "3.0", "0x3", "3 4", ""])
def test_a_value_that_is_no_plain_integer_is_one_error_line(tmp_path: Path, value: str):
    # "--3" and "²" passed the old check (lstrip("-").isdigit()) and then int() raised a bare ValueError: a
    # traceback instead of the file and line
    p = tmp_path / "p.csv"
    p.write_text(f"id \t col \nok, -12 \n\nabc, {value} \n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_id_values(p, "col")
    assert str(e.value) == f"{p}:4: expected '<id>, <integer>', got 'abc, {value} '"


# ------------------------------------------------------------------------------------------- reading a file back

def test_read_id_values_reads_the_course_layout_and_names_each_bad_line(tmp_path: Path):
    p = tmp_path / "p.csv"
    p.write_text("id\tcol\nb , -2 \n\na,1\nb, 7\n", encoding="utf-8")  # no spaces needed; a repeated id: the last
    assert list(read_id_values(p, "col").items()) == [("b", 7), ("a", 1)]
    p.write_text("id \t col \n", encoding="utf-8")
    assert read_id_values(str(p), "col") == {}  # a str path too
    for header in ("id,col", "id col", "col \t id", "id \t col \t x", "id", " \t col"):
        p.write_text(f"{header}\nx, 1\n", encoding="utf-8")
        with pytest.raises(DataError) as e:
            read_id_values(p, "col")
        assert str(e.value) == f"{p}:1: expected the header 'id \\t col', got [{header!r}]"
    p.write_text("", encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_id_values(p, "col")
    assert str(e.value) == f"{p}:1: expected the header 'id \\t col', got []"
    # line numbers count from the header as 1, blank lines included; three cells or none are refused
    for bad, line in (("a, 1, 2", 4), ("a 1", 4), ("", None)):
        p.write_text(f"id \t col \nz, 0 \n  \n{bad}\n", encoding="utf-8")
        if line is None:
            assert read_id_values(p, "col") == {"z": 0}
            continue
        with pytest.raises(DataError) as e:
            read_id_values(p, "col")
        assert str(e.value) == f"{p}:{line}: expected '<id>, <integer>', got {bad!r}"


# ----------------------------------------------------------------------------------------- classification files

@pytest.mark.parametrize("fresh", [False, True])
def test_each_label_format_is_named_and_declared(fresh: bool):
    # fresh: built here, as well as the module's own (built once at import)
    sst, cfimdb, quora = ((SentimentFormat("sst", 5), SentimentFormat("cfimdb", 2), ParaphraseFormat()) if fresh
                          else (SST, CFIMDB, QUORA))
    assert list(FORMATS) == ["sst", "cfimdb", "quora", "sonnet"] and FORMATS["sonnet"] is SONNETS
    assert isinstance(SST, SentimentFormat) and isinstance(QUORA, ParaphraseFormat)
    assert (sst.name, sst.column, sst.label_column, sst.label_values, sst.text_columns) == (
        "sst", "Predicted_Sentiment", "sentiment", {0, 1, 2, 3, 4}, ["id", "sentence"])
    assert (cfimdb.name, cfimdb.column, cfimdb.label_column, cfimdb.label_values, cfimdb.text_columns) == (
        "cfimdb", "Predicted_Sentiment", "sentiment", {0, 1}, ["id", "sentence"])
    assert (quora.name, quora.column, quora.label_column, quora.label_values, quora.text_columns) == (
        "quora", "Predicted_Is_Paraphrase", "is_duplicate", {0, 1}, ["id", "sentence1", "sentence2"])
    assert (sst.files.dev, cfimdb.files.test_labels, quora.files.train) == (
        "ids-sst-dev.csv", "ids-cfimdb-test-labels.csv", "quora-train.csv")
    assert (sst.files.train, cfimdb.files.train, quora.files.test_labels) == (
        "ids-sst-train.csv", "ids-cfimdb-train.csv", "quora-test-labels.csv")
    assert sst.output_name("dev", "full-model") == "full-model-sst-dev-out.csv"
    assert quora.output_name("test", "full-model") == "para-test-output.csv"
    sonnet = SonnetFormat() if fresh else SONNETS
    assert (sonnet.name, sonnet.files.train, sonnet.files.test_true) == (
        "sonnet", "sonnets.txt", "TRUE_sonnets_held_out.txt")
    assert SST.output_name("dev", "full-model") == "full-model-sst-dev-out.csv"
    assert CFIMDB.output_name("test", "last-linear-layer") == "last-linear-layer-cfimdb-test-out.csv"
    assert QUORA.output_name("dev", "full-model") == "para-dev-output.csv"
    assert label_format("cfimdb") is CFIMDB
    with pytest.raises(DataError) as e:
        label_format("sonnet")
    assert str(e.value) == "task 'sonnet' has no labels; expected one of ['cfimdb', 'quora', 'sst']"


def test_prediction_files_hold_the_course_bytes_and_read_back(tmp_path: Path):
    p = tmp_path / "out.csv"
    SST.write_predictions(p, ["b", "a", "c"], [1, 4, 0])
    assert p.read_bytes() == b"id \t Predicted_Sentiment \nb, 1 \na, 4 \nc, 0 \n"
    assert SST.read_predictions(p) == {"b": 1, "a": 4, "c": 0} and SST.prediction_ids(p) == ["b", "a", "c"]
    SST.write_predictions(p, [], [])
    assert p.read_bytes() == b"id \t Predicted_Sentiment \n" and SST.prediction_ids(p) == []
    # Quora: the answer's token id, 8505 "yes" for a paraphrase, 3919 "no"
    QUORA.write_predictions(p, ["x", "y", "z"], [1, 0, True])
    assert p.read_bytes() == b"id \t Predicted_Is_Paraphrase \nx, 8505 \ny, 3919 \nz, 8505 \n"
    assert QUORA.read_predictions(p) == {"x": 1, "y": 0, "z": 1} and QUORA.prediction_ids(p) == ["x", "y", "z"]
    p.write_text("id \t Predicted_Is_Paraphrase \na, 1 \nb, 0 \nc, 3919 \n", encoding="utf-8")
    assert QUORA.read_predictions(p) == {"a": 1, "b": 0, "c": 0}  # 1/0 kept as they are
    p.write_text("id \t Predicted_Is_Paraphrase \na, 1 \nb, 7 \nc, 2 \nd, 8505 \ne, -1 \nf, 3918 \n",
                 encoding="utf-8")
    with pytest.raises(DataError) as e:
        QUORA.read_predictions(p)
    assert str(e.value) == (f"{p}: unexpected prediction value(s) {{'b': 7, 'c': 2, 'e': -1}}; "
                            "expected 8505/3919 (or 1/0)")
    p.write_text("id \t Predicted_Sentiment \na, 1 \n", encoding="utf-8")
    with pytest.raises(DataError, match=r":1: expected the header 'id \\t Predicted_Is_Paraphrase'"):
        QUORA.read_predictions(p)


def test_accuracy_and_the_majority_baseline_counted_by_hand():
    assert SST.score_pairs([1, 2, 3, 4], [1, 2, 0, 0]) == {"accuracy": 0.5}
    assert QUORA.score_pairs([1, 0, 1], [1, 1, 1]) == {"accuracy": 2 / 3}
    assert SST.majority_accuracy([]) is None
    assert SST.majority_accuracy([3, 1, 3, 0, 3]) == 3 / 5  # three 3s of five
    assert SST.majority_accuracy([0, 1]) == 0.5 and SST.majority_accuracy([2]) == 1.0
    assert SONNETS.majority_accuracy(["a", "a"]) is None


def write_table(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n", encoding="utf-8")


@pytest.fixture()
def sst_data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    write_table(d / "ids-sst-dev.csv", ["", "id", "sentence", "sentiment"],
                [["0", "d1", "good", "4"], ["1", "d2", "bad", "0"], ["2", "d3", "meh", "2.0"], ["3", "d4", "x", "5"]])
    # test labels: t3's label is empty (a row with its id, unlabelled), one row too short (no id read)
    write_table(d / "ids-sst-test-labels.csv", ["id", "sentiment"],
                [["t1", "3"], ["t2", "1.0"], ["t3", ""], ["t4"], ["t5", "1"]])
    return d


def test_the_references_of_each_split(sst_data: Path):
    d = sst_data
    # dev: the dev file's labels (d4's 5 is no SST label: left out); "2.0" is 2
    assert SST.dev_labels(d) == {"d1": 4, "d2": 0, "d3": 2}
    assert SST.split_labels(d, "dev") == SST.references_by_id(d, "dev") == {"d1": 4, "d2": 0, "d3": 2}
    assert SST.reference_ids(d, "dev") == {"d1", "d2", "d3"}
    assert SST.label_table(d, "dev") is None and SST.unlabelled_rows(d, "dev") == []
    assert SST.references_file(d, "dev") == d / "ids-sst-dev.csv"
    assert SST.references_file(d, "train") is None  # no training file here
    # test: the labels file beside the data
    assert SST.references_file(d, "test") == d / "ids-sst-test-labels.csv"
    assert SST.split_labels(d, "test") == {"t1": 3, "t2": 1, "t5": 1}
    assert SST.reference_ids(d, "test") == {"t1", "t2", "t3", "t5"}  # t3 is listed, without a usable label
    assert [(m.line, m.id) for m in SST.unlabelled_rows(d, "test")] == [(4, "t3")]
    table = SST.label_table(d, "test")
    assert table is not None and table.path == d / "ids-sst-test-labels.csv" and len(table.rows) == 3
    # a references file named by the caller, for test or dev
    other = d / "mine.csv"
    write_table(other, ["id", "sentiment"], [["d1", "1"], ["zz", ""]])
    assert SST.split_labels(d, "dev", other) == {"d1": 1} and SST.references_by_id(d, "test", other) == {"d1": 1}
    assert SST.reference_ids(d, "dev", other) == {"d1", "zz"}
    assert [m.id for m in SST.unlabelled_rows(d, "dev", other)] == ["zz"]
    SST.write_predictions(d / "p.csv", ["d1"], [1])
    assert SST.split_scores(d / "p.csv", d, "dev", other) == {"accuracy": 1.0}  # the dev file says 4
    assert SST.split_scores(d / "p.csv", d, "dev") == {"accuracy": 0.0}
    with pytest.raises(DataError) as e:
        SST.split_labels(d, "test", d / "absent.csv")
    assert str(e.value) == f"{d / 'absent.csv'}: test labels file not found"
    # no test labels: None everywhere, and a split without references of its own
    (d / "ids-sst-test-labels.csv").unlink()
    assert SST.references_file(d, "test") is None and SST.label_table(d, "test") is None
    assert SST.split_labels(d, "test") is None is SST.reference_ids(d, "test") is SST.references_by_id(d, "test")
    assert SST.unlabelled_rows(d, "test") == [] and SST.split_labels(d, "train") is None


def test_split_pairs_match_predictions_to_labels_by_id(sst_data: Path):
    d, p = sst_data, sst_data / "pred.csv"
    SST.write_predictions(p, ["t5", "t3", "t1", "t2"], [1, 2, 0, 1])  # t3: listed without a label, skipped
    assert SST.split_pairs(p, d, "test") == ([1, 0, 1], [1, 3, 1])
    assert SST.split_scores(p, d, "test") == {"accuracy": 2 / 3}
    SST.write_predictions(p, ["d3", "d1"], [2, 3])
    assert SST.split_pairs(p, d, "dev") == ([2, 3], [2, 4]) and SST.split_scores(p, d, "dev") == {"accuracy": 0.5}
    SST.write_predictions(p, [], [])
    assert SST.split_pairs(p, d, "test") == ([], [])
    # ids the labels do not name: the first three, sorted
    SST.write_predictions(p, ["t1", "q4", "q2", "q3", "q1", "t3"], [0] * 6)
    with pytest.raises(DataError) as e:
        SST.split_pairs(p, d, "test")
    assert str(e.value) == f"{p}: id(s) ['q1', 'q2', 'q3'] have no label in {d / 'ids-sst-test-labels.csv'}"
    other = d / "mine.csv"
    write_table(other, ["id", "sentiment"], [["q1", "1"]])
    with pytest.raises(DataError) as e:
        SST.split_pairs(p, d, "test", other)
    assert str(e.value) == f"{p}: id(s) ['q2', 'q3', 'q4'] have no label in {other}"
    with pytest.raises(DataError) as e:
        SST.split_pairs(p, d, "dev")
    assert str(e.value) == f"{p}: id(s) ['q1', 'q2', 'q3'] have no label in {d / 'ids-sst-dev.csv'}"
    # every prediction on an unlabelled row: nothing to score is an error, not an accuracy of 0/0
    SST.write_predictions(p, ["t3", "t3"], [1, 1])
    with pytest.raises(DataError) as e:
        SST.split_pairs(p, d, "test")
    assert str(e.value) == (f"{d / 'ids-sst-test-labels.csv'}: none of the 1 predicted id(s) has a usable label; "
                            "expected labels in its 'sentiment' column")
    write_table(other, ["id", "sentiment"], [["t3", ""], ["t4", "x"]])
    SST.write_predictions(p, ["t3", "t4"], [1, 1])
    with pytest.raises(DataError) as e:
        SST.split_pairs(p, d, "dev", other)
    assert str(e.value) == (f"{other}: none of the 2 predicted id(s) has a usable label; "
                            "expected labels in its 'sentiment' column")
    (d / "ids-sst-test-labels.csv").unlink()
    assert SST.split_pairs(p, d, "test") is None and SST.split_scores(p, d, "test") is None


def test_quora_labels_are_read_from_its_own_columns(tmp_path: Path):
    write_table(tmp_path / "quora-dev.csv", ["", "id", "sentence1", "sentence2", "is_duplicate"],
                [["0", "a", "q", "r", "1.0"], ["1", "b", "q", "r", "0"], ["2", "c", "q", "r", "2"]])
    write_table(tmp_path / "quora-test-labels.csv", ["id", "is_duplicate"], [["x", "0"], ["y", "1"], ["z", "3"]])
    assert QUORA.split_labels(tmp_path, "dev") == {"a": 1, "b": 0}
    assert QUORA.split_labels(tmp_path, "test") == {"x": 0, "y": 1}
    assert [m.id for m in QUORA.unlabelled_rows(tmp_path, "test")] == ["z"]
    QUORA.write_predictions(tmp_path / "p.csv", ["y", "x"], [1, 1])
    assert QUORA.split_pairs(tmp_path / "p.csv", tmp_path, "test") == ([1, 1], [1, 0])
    write_table(tmp_path / "ids-cfimdb-dev.csv", ["id", "sentence", "sentiment"], [["a", "s", "1"], ["b", "s", "2"]])
    assert CFIMDB.dev_labels(tmp_path) == {"a": 1}  # 2 is no CFIMDB label
    write_table(tmp_path / "ids-sst-dev.csv", ["id", "sentiment"], [["a", "1"]])
    with pytest.raises(DataError, match=r"missing column\(s\) \['sentence'\]"):
        SST.dev_labels(tmp_path)


# ------------------------------------------------------------------------------------------------ sonnet files

def test_the_generated_sonnets_file_holds_the_course_bytes_and_reads_back(tmp_path: Path):
    p = tmp_path / "g.txt"
    write_sonnets(p, [(132, "A\n  B"), (7, "C")])
    assert SONNETS_HEADER == "--Generated Sonnets-- \n\n"
    assert p.read_bytes() == b"--Generated Sonnets-- \n\n\n132\nA\n  B\n\n\n7\nC\n\n"
    assert [(s.number, s.text) for s in read_generated(p)] == [(132, "A\n  B"), (7, "C")]
    write_sonnets(str(p), [])
    assert p.read_bytes() == b"--Generated Sonnets-- \n\n"
    # ids as the task gives them (strings), written as numbers
    SONNETS.write_predictions(p, ["007", "12"], ["x\ny", "z"])
    assert p.read_bytes() == b"--Generated Sonnets-- \n\n\n7\nx\ny\n\n\n12\nz\n\n"
    assert SONNETS.prediction_ids(p) == ["7", "12"]
    p.write_text("--Generated Sonnets--\n\n3\nq\n\n3\nr\n\n1\ns\n", encoding="utf-8")  # header without the space
    assert SONNETS.prediction_ids(p) == ["3", "1"]  # each once, in file order
    p.write_text("Generated Sonnets\n\n3\nq\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_generated(p)
    assert str(e.value) == f"{p}:1: expected the line '--Generated Sonnets--'"
    with pytest.raises(DataError, match=":1: expected the line"):
        SONNETS.prediction_ids(p)


def test_the_sonnet_format_is_named_and_scored_by_chrf():
    assert isinstance(SONNETS, CourseFormat) and SONNETS.name == "sonnet"
    assert SONNETS.files.dev_true == "TRUE_sonnets_held_out_dev.txt"
    assert SONNETS.output_name("dev", "full-model") == "generated_sonnets_dev.txt"
    assert SONNETS.output_name("test", "full-model") == "generated_sonnets.txt"
    hyps, refs = ["Shall I compare thee", "to a summer day"], ["Shall I compare you", "to a winter's day"]
    assert SONNETS.score_pairs(hyps, refs) == {"chrf": sacrebleu.corpus_chrf(hyps, [refs]).score}
    assert SONNETS.score_pairs(hyps, refs)["chrf"] != SONNETS.score_pairs(refs, hyps[::-1])["chrf"]


def write_true(path: Path, blocks: list[tuple[int, list[str]]]) -> None:
    path.write_bytes(sonnet_file(blocks, "\r\n"))


def test_the_true_sonnets_of_each_split_and_the_pairs(tmp_path: Path):
    d = tmp_path
    write_true(d / "TRUE_sonnets_held_out_dev.txt", [(5, ["five a", "five b"]), (9, ["nine a"])])
    write_true(d / "TRUE_sonnets_held_out.txt", [(20, ["twenty"])])
    assert SONNETS.references_file(d, "dev") == d / "TRUE_sonnets_held_out_dev.txt"
    assert SONNETS.references_file(d, "test") == d / "TRUE_sonnets_held_out.txt"
    assert SONNETS.split_references(d, "dev") == {5: "five a\nfive b", 9: "nine a"}
    assert SONNETS.references_by_id(d, "dev") == {"5": "five a\nfive b", "9": "nine a"}
    assert SONNETS.reference_ids(d, "dev") == {"5", "9"} and SONNETS.reference_ids(d, "test") == {"20"}
    assert SONNETS.unlabelled_rows(d, "dev") == []
    g = d / "g.txt"
    write_sonnets(g, [(9, "nine x"), (5, "five x")])
    assert SONNETS.split_pairs(g, d, "dev") == (["nine x", "five x"], ["nine a", "five a\nfive b"])
    hyps, refs = ["nine x", "five x"], ["nine a", "five a\nfive b"]
    assert SONNETS.split_scores(g, d, "dev") == {"chrf": sacrebleu.corpus_chrf(hyps, [refs]).score}
    # a references file named by the caller, for either split
    mine = d / "mine.txt"
    write_true(mine, [(9, ["other nine"]), (5, ["other five"]), (1, ["one"])])
    assert SONNETS.split_pairs(g, d, "test", mine) == (["nine x", "five x"], ["other nine", "other five"])
    assert SONNETS.split_scores(g, d, "dev", mine) == {
        "chrf": sacrebleu.corpus_chrf(["nine x", "five x"], [["other nine", "other five"]]).score}
    assert SONNETS.reference_ids(d, "dev", mine) == {"9", "5", "1"}
    # sonnets without a reference: named, sorted, with the file looked in
    write_sonnets(g, [(20, "t"), (9, "n"), (3, "s")])
    with pytest.raises(DataError) as e:
        SONNETS.split_pairs(g, d, "dev")
    assert str(e.value) == f"{g}: sonnet(s) [3, 20] have no reference in {d / 'TRUE_sonnets_held_out_dev.txt'}"
    with pytest.raises(DataError) as e:
        SONNETS.split_pairs(g, d, "dev", mine)
    assert str(e.value) == f"{g}: sonnet(s) [3, 20] have no reference in {mine}"
    # absent files: dev's true sonnets are required, the test ones optional, a named file must be there
    with pytest.raises(DataError) as e:
        SONNETS.split_references(d, "test", d / "absent.txt")
    assert str(e.value) == f"{d / 'absent.txt'}: true sonnets file not found"
    (d / "TRUE_sonnets_held_out.txt").unlink()
    assert SONNETS.references_file(d, "test") is None and SONNETS.split_references(d, "test") is None
    assert SONNETS.references_by_id(d, "test") is None is SONNETS.reference_ids(d, "test")
    assert SONNETS.split_pairs(g, d, "test") is None and SONNETS.split_scores(g, d, "test") is None
    (d / "TRUE_sonnets_held_out_dev.txt").unlink()
    assert SONNETS.references_file(d, "dev") is None
    with pytest.raises(DataError) as e:
        SONNETS.split_references(d, "dev")
    assert str(e.value) == f"{d / 'TRUE_sonnets_held_out_dev.txt'}: true sonnets file not found"

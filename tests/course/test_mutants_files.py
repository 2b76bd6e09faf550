"""course/files.py under mutmut: the course's file names per task and split, written out by hand here.

Every name below is the course's own (the files the CS 224N default project ships); a slip in a name, in which
file a split reads, or in which files a run needs, makes a run look for a file that is not there or score the
wrong one.
"""
from __future__ import annotations

import pytest

from course.files import COURSE_FILES, LABELLED_FILES, SONNET_FILES, TASKS, LabelledFiles, SonnetFiles

# task -> (train, dev, test inputs, test references), by hand from the course's data folder
LABELLED = {
    "sst": ("ids-sst-train.csv", "ids-sst-dev.csv", "ids-sst-test-student.csv", "ids-sst-test-labels.csv"),
    "cfimdb": ("ids-cfimdb-train.csv", "ids-cfimdb-dev.csv", "ids-cfimdb-test-student.csv",
               "ids-cfimdb-test-labels.csv"),
    "quora": ("quora-train.csv", "quora-dev.csv", "quora-test-student.csv", "quora-test-labels.csv"),
}
SONNETS = ("sonnets.txt", "sonnets_held_out_dev.txt", "TRUE_sonnets_held_out_dev.txt", "sonnets_held_out.txt",
           "TRUE_sonnets_held_out.txt")


def test_the_tasks_and_their_file_names_are_the_courses():
    assert TASKS == ("sst", "cfimdb", "quora", "sonnet")
    assert list(COURSE_FILES) == list(TASKS)
    assert set(LABELLED_FILES) == set(LABELLED)
    for task, names in LABELLED.items():
        files = COURSE_FILES[task]
        assert files is LABELLED_FILES[task] and isinstance(files, LabelledFiles)
        assert (files.train, files.dev, files.test, files.test_labels) == names
        assert files.all() == names  # what fetch writes: all four, in this order
    assert COURSE_FILES["sonnet"] is SONNET_FILES and isinstance(SONNET_FILES, SonnetFiles)
    s = SONNET_FILES
    assert (s.train, s.dev, s.dev_true, s.test, s.test_true) == SONNETS
    assert s.all() == SONNETS


@pytest.mark.parametrize("task", sorted(LABELLED))
def test_a_labelled_tasks_split_inputs_and_test_references(task):
    train, dev, test, labels = LABELLED[task]
    files = COURSE_FILES[task]
    assert [files.split(s) for s in ("train", "dev", "test")] == [train, dev, test]
    assert files.inputs() == (train, dev, test)  # the labels are optional: never required
    assert files.inputs(None) == (train, dev, test)
    assert files.inputs("train") == (train,)
    assert files.inputs("dev") == (dev,)
    assert files.inputs("test") == (test,)
    assert files.test_references == labels
    with pytest.raises(KeyError):
        files.split("labels")


def test_the_sonnet_tasks_split_inputs_and_test_references():
    s = SONNET_FILES
    assert [s.split(x) for x in ("train", "dev", "test")] == ["sonnets.txt", "sonnets_held_out_dev.txt",
                                                              "sonnets_held_out.txt"]
    # every run needs train, the dev prompts and their true sonnets (dev is scored), and the test prompts; the true
    # test sonnets are optional
    assert s.inputs() == ("sonnets.txt", "sonnets_held_out_dev.txt", "TRUE_sonnets_held_out_dev.txt",
                          "sonnets_held_out.txt")
    assert s.inputs("dev") == ("sonnets_held_out_dev.txt", "TRUE_sonnets_held_out_dev.txt")
    assert s.inputs("train") == ("sonnets.txt",)
    assert s.inputs("test") == ("sonnets_held_out.txt",)
    assert s.test_references == "TRUE_sonnets_held_out.txt"
    with pytest.raises(KeyError):
        s.split("dev_true")


def test_files_of_made_up_names_follow_their_fields():
    """The methods read the fields, not the course's names: distinct made-up names show which field went where."""
    lab = LabelledFiles("a", "b", "c", "d")
    assert (lab.split("train"), lab.split("dev"), lab.split("test")) == ("a", "b", "c")
    assert lab.inputs() == ("a", "b", "c") and lab.inputs("dev") == ("b",) and lab.all() == ("a", "b", "c", "d")
    son = SonnetFiles("t", "d", "D", "x", "X")
    assert son.inputs() == ("t", "d", "D", "x") and son.inputs("dev") == ("d", "D") and son.inputs("test") == ("x",)
    assert son.all() == ("t", "d", "D", "x", "X") and son.test_references == "X"

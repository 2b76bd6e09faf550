"""`tasks.get_task` and the registry: the four tasks by name, and the one line an unknown name gives
(docs/testing.md, "Automated mutants", "The front ends"). Expected values written out by hand."""

from __future__ import annotations

import pytest

import tasks
from minigpt2.errors import UserError, exits_on_user_error
from tasks import TASKS, UnknownTask, get_task
from tasks.paraphrase import ParaphraseTask
from tasks.sentiment import SentimentTask
from tasks.sonnet import SonnetTask

UNKNOWN = "unknown task {!r}; expected one of ['cfimdb', 'quora', 'sonnet', 'sst']"


def test_the_registry_holds_the_four_course_tasks():
    assert list(TASKS) == ["sst", "cfimdb", "quora", "sonnet"]
    kinds = {"sst": SentimentTask, "cfimdb": SentimentTask, "quora": ParaphraseTask, "sonnet": SonnetTask}
    for name, kind in kinds.items():
        task = get_task(name)
        assert task is TASKS[name] and type(task) is kind and task.name == name
    assert (get_task("sst").num_labels, get_task("cfimdb").num_labels) == (5, 2)  # SST's five classes, IMDB's two
    assert get_task("sst") is get_task("sst")  # one instance each


@pytest.mark.parametrize("name", ["poetry", "SST", "", " sst", "sonnets"])
def test_an_unknown_name_is_one_line_naming_the_choices(name):
    with pytest.raises(UnknownTask) as e:
        get_task(name)
    assert str(e.value) == UNKNOWN.format(name)
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)


def test_a_command_shows_it_as_one_error_line():
    @exits_on_user_error
    def main() -> int:
        get_task("poetry")
        return 0

    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == "error: unknown task 'poetry'; expected one of ['cfimdb', 'quora', 'sonnet', 'sst']"


def test_exports():
    assert set(tasks.__all__) == {"Example", "GenerativeTask", "Task", "TaskModel", "collate", "get_task", "TASKS"}

"""The course's tasks by name: `get_task("sst" | "cfimdb" | "quora" | "sonnet")`."""

from __future__ import annotations

from minigpt2.errors import UserError

from .base import Example, GenerativeTask, Task, TaskModel, collate
from .paraphrase import ParaphraseTask
from .sentiment import SentimentTask
from .sonnet import SonnetTask

TASKS: dict[str, Task] = {
    "sst": SentimentTask("sst", num_labels=5),
    "cfimdb": SentimentTask("cfimdb", num_labels=2),
    "quora": ParaphraseTask(),
    "sonnet": SonnetTask(),
}


class UnknownTask(UserError, ValueError):
    """A task name that is not registered."""


def get_task(name: str) -> Task:
    """The task registered under `name`."""
    if name not in TASKS:
        raise UnknownTask(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["Example", "GenerativeTask", "Task", "TaskModel", "collate", "get_task", "TASKS"]

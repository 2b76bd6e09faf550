"""The course's file names, per task: named fields instead of positions in a tuple."""

from __future__ import annotations

from dataclasses import astuple, dataclass

TASKS = ("sst", "cfimdb", "quora", "sonnet")


@dataclass(frozen=True)
class LabelledFiles:
    """A classification task's files: labelled train and dev, unlabelled test inputs, and the test labels (the
    course keeps these apart; `python -m course fetch` writes them beside the data)."""

    train: str
    dev: str
    test: str
    test_labels: str

    @property
    def test_references(self) -> str:
        """The file that scores the test split."""
        return self.test_labels

    def split(self, split: str) -> str:
        """The input file of `split` (train, dev, test)."""
        return {"train": self.train, "dev": self.dev, "test": self.test}[split]

    def inputs(self, split: str | None = None) -> tuple[str, ...]:
        """The files a run needs (of one split, or of all three); the test labels are optional."""
        return (self.split(split),) if split else (self.train, self.dev, self.test)

    def all(self) -> tuple[str, ...]:
        """Every file the task's data consists of (what `fetch` writes)."""
        return astuple(self)


@dataclass(frozen=True)
class SonnetFiles:
    """The sonnet task's files: training sonnets, dev prompts and their true sonnets, test prompts and theirs."""

    train: str
    dev: str
    dev_true: str
    test: str
    test_true: str

    @property
    def test_references(self) -> str:
        """The file that scores the test split."""
        return self.test_true

    def split(self, split: str) -> str:
        """The input file of `split` (train: the sonnets; dev, test: the prompts)."""
        return {"train": self.train, "dev": self.dev, "test": self.test}[split]

    def inputs(self, split: str | None = None) -> tuple[str, ...]:
        """The files a run needs (of one split, or of all): dev reads its true sonnets too; the true test
        sonnets are optional."""
        if split is None:
            return (self.train, self.dev, self.dev_true, self.test)
        return (self.dev, self.dev_true) if split == "dev" else (self.split(split),)

    def all(self) -> tuple[str, ...]:
        """Every file the task's data consists of (what `fetch` writes)."""
        return astuple(self)


CourseFiles = LabelledFiles | SonnetFiles

LABELLED_FILES: dict[str, LabelledFiles] = {
    "sst": LabelledFiles("ids-sst-train.csv", "ids-sst-dev.csv", "ids-sst-test-student.csv",
                         "ids-sst-test-labels.csv"),
    "cfimdb": LabelledFiles("ids-cfimdb-train.csv", "ids-cfimdb-dev.csv", "ids-cfimdb-test-student.csv",
                            "ids-cfimdb-test-labels.csv"),
    "quora": LabelledFiles("quora-train.csv", "quora-dev.csv", "quora-test-student.csv", "quora-test-labels.csv"),
}
SONNET_FILES = SonnetFiles("sonnets.txt", "sonnets_held_out_dev.txt", "TRUE_sonnets_held_out_dev.txt",
                           "sonnets_held_out.txt", "TRUE_sonnets_held_out.txt")
COURSE_FILES: dict[str, CourseFiles] = {**LABELLED_FILES, "sonnet": SONNET_FILES}

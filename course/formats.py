"""The course's prediction and reference files, one format object per task family: what a prediction file is
called and holds, where a split's references lie (the dev file's labels, the `*-test-labels.csv` file, the true
sonnets) and how a prediction file is scored against them.

    classification CSV   `id \\t <column>` then `<id>, <value>` lines     SST-5, CFIMDB (`SentimentFormat`)
                                                                     Quora (`ParaphraseFormat`: yes/no token ids)
    sonnet files         `--Generated Sonnets--`, then numbered sonnets  (`SonnetFormat`)

A task reaches its format as `task.format`; code that knows which family it holds takes it from `FORMATS` by
task name (`label_format(name)`, `SONNETS`). Nothing here knows a model: predictions come in as ids and values.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

from minigpt2.atomic import atomic_write

from .files import LABELLED_FILES, SONNET_FILES, LabelledFiles
from .readers import DataError, Malformed, Table, read_sonnets, read_table
from .sonnets import Sonnet


class CourseFormat(ABC):
    """The prediction and reference files of one task: what every caller may use without knowing the family."""

    name: str

    @abstractmethod
    def output_name(self, split: str, mode: str) -> str:
        """File name of a split's predictions, as the course names it (`mode`: full-model, last-linear-layer)."""

    @abstractmethod
    def write_predictions(self, path: Path, ids: Sequence[str], predictions: Sequence[Any]) -> None:
        """The course-format prediction file of (id, prediction) pairs, written atomically."""

    @abstractmethod
    def prediction_ids(self, path: Path) -> list[str]:
        """The ids of a prediction file, in its order (each once)."""

    @abstractmethod
    def score_pairs(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        """The metric(s) of predictions against references (as `split_pairs` returns them)."""

    @abstractmethod
    def references_file(self, folder: Path, split: str) -> Path | None:
        """Where the references of `split` lie in `folder` (the test labels, or true test sonnets, beside the data
        as `python -m course fetch` writes them); None when that file is absent."""

    @abstractmethod
    def split_pairs(self, predictions_file: Path, folder: Path, split: str, references: Path | None = None
                    ) -> tuple[list[Any], list[Any]] | None:
        """(predictions, references) of a split's prediction file, matched by id against the references in
        `folder` (or the file `references` names); None where the split has no references (test without labels)."""

    @abstractmethod
    def reference_ids(self, folder: Path, split: str, references: Path | None = None) -> set[str] | None:
        """The ids that the references of `split` name (as `split_pairs` matches them; a row listed without a
        usable label counts: it is skipped, see `unlabelled_rows`); None where there are none."""

    @abstractmethod
    def references_by_id(self, folder: Path, split: str, references: Path | None = None) -> dict[str, Any] | None:
        """id -> reference of `split` (a label, or a true sonnet's text); None where the split has none."""

    def unlabelled_rows(self, folder: Path, split: str, references: Path | None = None) -> list[Malformed]:
        """Rows of the references of `split` that name an id but hold no usable label (an empty cell, say): their
        predictions are written but not scored, and the caller warns about each, as for the dev file's."""
        return []

    def majority_accuracy(self, references: list[Any]) -> float | None:
        """Accuracy of always answering the most frequent reference (classification tasks); None otherwise."""
        return None

    def split_scores(self, predictions_file: Path, folder: Path, split: str, references: Path | None = None
                     ) -> dict[str, float] | None:
        """The metric(s) of a split's prediction file; None where the split has no references."""
        pairs = self.split_pairs(predictions_file, folder, split, references)
        return None if pairs is None else self.score_pairs(*pairs)


_INTEGER = re.compile(r"-?[0-9]+")


def read_id_values(path: str | Path, column: str) -> dict[str, int]:
    """id -> integer of a course-format prediction file, with the line of anything unexpected."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or [c.strip() for c in lines[0].split("\t")] != ["id", column]:
        raise DataError(f"{path}:1: expected the header 'id \\t {column}', got {lines[:1]}")
    out = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not _INTEGER.fullmatch(parts[1]):  # "--3" or "²" would pass str.isdigit
            raise DataError(f"{path}:{n}: expected '<id>, <integer>', got {line!r}")
        out[parts[0]] = int(parts[1])
    return out


class LabelFormat(CourseFormat):
    """One integer label per id, scored by accuracy and written as the course does: the header
    `id \\t <column>`, then `<id>, <value>` lines. References: the dev file's labels, and for test the
    `*-test-labels.csv` file beside the data (or a file the caller names)."""

    def __init__(self, name: str, files: LabelledFiles, column: str, label_column: str, label_values: set[int],
                 text_columns: Sequence[str]) -> None:
        self.name, self.files, self.column = name, files, column
        self.label_column = label_column  # the label's column in the data and in the `*-test-labels.csv` file
        self.label_values = label_values
        self.text_columns = list(text_columns)  # the data file's columns besides the label

    def file_value(self, prediction: int) -> int:
        """The value written for a prediction (the class id by default)."""
        return int(prediction)

    def write_predictions(self, path: Path, ids: Sequence[str], predictions: Sequence[int]) -> None:
        lines = [f"id \t {self.column} \n"] + [f"{i}, {self.file_value(p)} \n" for i, p in zip(ids, predictions)]
        atomic_write(path, "".join(lines))

    def read_predictions(self, path: str | Path) -> dict[str, int]:
        """id -> predicted label of a prediction file in the course's format."""
        return read_id_values(path, self.column)

    def prediction_ids(self, path: Path) -> list[str]:
        return list(self.read_predictions(path))

    def score_pairs(self, predictions: list[int], references: list[int]) -> dict[str, float]:
        from minigpt2.metrics import accuracy  # sacrebleu and numpy load only when something is scored

        return {"accuracy": accuracy(predictions, references)}

    def dev_labels(self, folder: Path) -> dict[str, int]:
        """id -> true label of the dev split."""
        table = read_table(folder / self.files.dev, self.text_columns, label=self.label_column,
                           label_values=self.label_values)
        return {r["id"]: int(r[self.label_column]) for r in table.rows}

    def majority_accuracy(self, references: list[int]) -> float | None:
        if not references:
            return None
        counts: dict[int, int] = {}
        for r in references:
            counts[int(r)] = counts.get(int(r), 0) + 1
        return max(counts.values()) / len(references)

    def references_file(self, folder: Path, split: str) -> Path | None:
        path = folder / (self.files.test_labels if split == "test" else self.files.split(split))
        return path if path.is_file() else None

    def label_table(self, folder: Path, split: str, references: Path | None = None) -> Table | None:
        """The labels file of `split` read as a table (test: the `*-test-labels.csv` file beside the data, or
        `references`); None for dev without `references` (its labels are the dev file's) or absent test labels."""
        if split != "test" and references is None:
            return None
        path = references or self.references_file(folder, split)
        if path is None:
            return None
        if not Path(path).is_file():
            raise DataError(f"{path}: test labels file not found")
        return read_table(Path(path), ["id"], label=self.label_column, label_values=self.label_values)

    def split_labels(self, folder: Path, split: str, references: Path | None = None) -> dict[str, int] | None:
        """id -> true label of `split` (test: the `*-test-labels.csv` file beside the data, or `references`);
        None when the test labels are absent. Rows without a usable label are left out (`unlabelled_rows`)."""
        table = self.label_table(folder, split, references)
        if table is None:
            return self.dev_labels(folder) if split == "dev" and references is None else None
        return {r["id"]: int(float(r[self.label_column])) for r in table.rows}

    def references_by_id(self, folder: Path, split: str, references: Path | None = None) -> dict[str, int] | None:
        return self.split_labels(folder, split, references)

    def unlabelled_rows(self, folder: Path, split: str, references: Path | None = None) -> list[Malformed]:
        table = self.label_table(folder, split, references)
        return [] if table is None else [m for m in table.malformed if m.id]

    def reference_ids(self, folder: Path, split: str, references: Path | None = None) -> set[str] | None:
        labels = self.split_labels(folder, split, references)
        if labels is None:
            return None
        return set(labels) | {m.id for m in self.unlabelled_rows(folder, split, references) if m.id}

    def split_pairs(self, predictions_file: Path, folder: Path, split: str, references: Path | None = None
                    ) -> tuple[list[int], list[int]] | None:
        """(predictions, labels) of the ids that have a label; a prediction whose row in the labels file has no
        usable label is skipped (the caller warns), one whose id is not there at all is an error."""
        labels = self.split_labels(folder, split, references)
        if labels is None:
            return None
        preds = self.read_predictions(predictions_file)
        unlabelled = {m.id for m in self.unlabelled_rows(folder, split, references)}
        missing = sorted(set(preds) - set(labels) - unlabelled)
        if missing:
            where = references or self.references_file(folder, split) or folder
            raise DataError(f"{predictions_file}: id(s) {missing[:3]} have no label in {where}")
        scored = [k for k in preds if k in labels]
        if preds and not scored:
            where = references or self.references_file(folder, split)
            raise DataError(f"{where}: none of the {len(preds)} predicted id(s) has a usable label; expected "
                            f"labels in its {self.label_column!r} column")
        return [preds[k] for k in scored], [labels[k] for k in scored]


SENTIMENT_COLUMN = "Predicted_Sentiment"


class SentimentFormat(LabelFormat):
    """SST-5 and CFIMDB: `<mode>-<task>-<split>-out.csv`, the predicted class per id."""

    def __init__(self, name: str, num_labels: int) -> None:
        super().__init__(name, LABELLED_FILES[name], SENTIMENT_COLUMN, "sentiment", set(range(num_labels)),
                         ["id", "sentence"])

    def output_name(self, split: str, mode: str) -> str:
        return f"{mode}-{self.name}-{split}-out.csv"


PARAPHRASE_COLUMN = "Predicted_Is_Paraphrase"
YES_ID, NO_ID = 8505, 3919  # "yes", "no" in GPT-2's vocabulary


class ParaphraseFormat(LabelFormat):
    """Quora: `para-<split>-output.csv`, the answer's GPT-2 token id per id (8505 = "yes" = paraphrase,
    3919 = "no"), as the course's argmax over the vocabulary produced it."""

    def __init__(self) -> None:
        super().__init__("quora", LABELLED_FILES["quora"], PARAPHRASE_COLUMN, "is_duplicate", {0, 1},
                         ["id", "sentence1", "sentence2"])

    def output_name(self, split: str, mode: str) -> str:
        return f"para-{split}-output.csv"

    def file_value(self, prediction: int) -> int:
        return YES_ID if prediction else NO_ID

    def read_predictions(self, path: str | Path) -> dict[str, int]:
        """id -> is_duplicate (1/0) of a course-format file; answer token ids are mapped back, 0/1 kept."""
        raw = read_id_values(path, self.column)
        to_label = {YES_ID: 1, NO_ID: 0, 1: 1, 0: 0}
        bad = {k: v for k, v in raw.items() if v not in to_label}
        if bad:
            raise DataError(f"{path}: unexpected prediction value(s) {dict(list(bad.items())[:3])}; "
                            f"expected {YES_ID}/{NO_ID} (or 1/0)")
        return {k: to_label[v] for k, v in raw.items()}


SONNETS_HEADER = "--Generated Sonnets-- \n\n"


def write_sonnets(path: str | Path, sonnets: list[tuple[int, str]]) -> None:
    """The course's generated-sonnets layout, written atomically."""
    atomic_write(path, SONNETS_HEADER + "".join(f"\n{number}\n{text}\n\n" for number, text in sonnets))


def read_generated(path: str | Path) -> list[Sonnet]:
    """Sonnets of a generated-sonnets file (the course's layout, under its `--Generated Sonnets--` line)."""
    return read_sonnets(path, first_line=SONNETS_HEADER.strip())[0]


class SonnetFormat(CourseFormat):
    """The sonnet task: `generated_sonnets{_dev}.txt` files scored by chrF against the true sonnets of the dev
    prompts (required) or of the test prompts (beside the data, optional)."""

    def __init__(self) -> None:
        self.name, self.files = "sonnet", SONNET_FILES

    def output_name(self, split: str, mode: str) -> str:
        return "generated_sonnets_dev.txt" if split == "dev" else "generated_sonnets.txt"

    def write_predictions(self, path: Path, ids: Sequence[str], predictions: Sequence[str]) -> None:
        write_sonnets(path, [(int(i), p) for i, p in zip(ids, predictions)])

    def prediction_ids(self, path: Path) -> list[str]:
        return list(dict.fromkeys(str(s.number) for s in read_generated(path)))  # as `split_pairs` matches them

    def score_pairs(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        from minigpt2.metrics import chrf

        return {"chrf": chrf(predictions, references)}

    def references_file(self, folder: Path, split: str) -> Path | None:
        path = folder / (self.files.dev_true if split == "dev" else self.files.test_true)
        return path if path.is_file() else None

    def split_references(self, folder: Path, split: str, references: Path | None = None) -> dict[int, str] | None:
        """number -> true sonnet of the dev or test prompts; None when the true test sonnets are absent."""
        path = references or self.references_file(folder, split)
        if path is None and split == "dev":
            path = folder / self.files.dev_true  # required: reading it names the missing file
        if path is None:
            return None
        if not Path(path).is_file():
            raise DataError(f"{path}: true sonnets file not found")
        return {s.number: s.text for s in read_sonnets(Path(path))[0]}

    def references_by_id(self, folder: Path, split: str, references: Path | None = None) -> dict[str, str] | None:
        refs = self.split_references(folder, split, references)
        return None if refs is None else {str(n): text for n, text in refs.items()}

    def reference_ids(self, folder: Path, split: str, references: Path | None = None) -> set[str] | None:
        refs = self.references_by_id(folder, split, references)
        return None if refs is None else set(refs)

    def split_pairs(self, predictions_file: Path, folder: Path, split: str, references: Path | None = None
                    ) -> tuple[list[str], list[str]] | None:
        refs = self.split_references(folder, split, references)
        if refs is None:
            return None
        hyps = {s.number: s.text for s in read_generated(predictions_file)}
        missing = sorted(set(hyps) - set(refs))
        if missing:
            raise DataError(f"{predictions_file}: sonnet(s) {missing} have no reference in "
                            f"{references or self.references_file(folder, split)}")
        return [hyps[k] for k in hyps], [refs[k] for k in hyps]


SONNETS = SonnetFormat()
LABEL_FORMATS: dict[str, LabelFormat] = {"sst": SentimentFormat("sst", 5), "cfimdb": SentimentFormat("cfimdb", 2),
                                         "quora": ParaphraseFormat()}
FORMATS: dict[str, CourseFormat] = {**LABEL_FORMATS, "sonnet": SONNETS}


def label_format(task: str) -> LabelFormat:
    """The format of a classification task (sst, cfimdb, quora) by name."""
    if task not in LABEL_FORMATS:
        raise DataError(f"task {task!r} has no labels; expected one of {sorted(LABEL_FORMATS)}")
    return LABEL_FORMATS[task]

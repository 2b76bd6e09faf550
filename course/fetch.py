"""Fetch the course's data from public sources and write it in the course's file formats.

| task   | source (fetched through `minigpt2.download`)                 | files written                              |
|--------|---------------------------------------------------------------|--------------------------------------------|
| sst    | hub dataset SetFit/sst5: train/dev/test.jsonl                 | ids-sst-{train,dev,test-student}.csv       |
| cfimdb | hub dataset tasksource/counterfactually-augmented-imdb: *.tsv | ids-cfimdb-{train,dev,test-student}.csv    |
| quora  | hub dataset nyu-mll/glue, qqp train + validation parquet      | quora-{train,dev,test-student}.csv         |
| sonnet | Project Gutenberg eBook 1041, plain text                      | sonnets.txt, sonnets_held_out{,_dev}.txt   |

Test-student files carry no labels, as in the course; the labels sit beside them in `*-test-labels.csv` (and the
full test sonnets in `TRUE_sonnets_held_out.txt`) so users can score themselves.
"""

from __future__ import annotations

from pathlib import Path

from minigpt2.download import DownloadError, HubFile, env_offline, fetch_hub_file, fetch_url

from .convert import convert_cfimdb, convert_quora, convert_sonnets, convert_sst
from .files import COURSE_FILES, TASKS

# Pinned sources. Revisions are the commits we could verify hold these files (SetFit/sst5: head of main, 3 commits;
# counterfactually-augmented-imdb: head of main, 4 commits; glue: the commit "Add qqp data files" that added the
# parquet files). The SST-5 sha256 values are those `datasets` recorded when downloading from that very revision.
# Where no sha256 is pinned, the hub's ETag is checked and the first download's sha256 is locked (see download.py).
SST5_REVISION = "e51bdcd8cd3a30da231967c1a249ba59361279a3"
SST5_SHA256 = {"train": "46bde4fb5abc93ffbadfa9a9f67de17c08a2f535cfb5756c59188d070434f433",
               "dev": "4369df4d4229e736fa734af49b342c7d6002c4d8514d9c206a5aa26edc620b79",
               "test": "1384216112a34f3d70b6fa210762f3399bb080410c0456ac6e54a5cb413f04b2"}
SST5 = {split: HubFile("SetFit/sst5", f"{split}.jsonl", "dataset", SST5_REVISION, sha)
        for split, sha in SST5_SHA256.items()}
CFIMDB = {split: HubFile("tasksource/counterfactually-augmented-imdb", f"{split}.tsv", "dataset",
                         "fd42efb815508d02beb7d478eae41a8a2e7100a3") for split in ("train", "dev", "test")}
QQP = {split: HubFile("nyu-mll/glue", f"qqp/{split}-00000-of-00001.parquet", "dataset",
                      "169a67d6d185e00f8e46409cc182dd6e741b54b7") for split in ("train", "validation")}
GUTENBERG_URL = "https://www.gutenberg.org/cache/epub/1041/pg1041.txt"


def fetch(task: str, data_dir: Path, offline: bool = False, cache: Path | None = None) -> list[Path]:
    """Download one task's sources (or all with task="all") and write its course-format files into `data_dir`."""
    tasks = TASKS if task == "all" else (task,)
    written: list[Path] = []
    data_dir = Path(data_dir)
    for t in tasks:
        if t == "sst":
            convert_sst({s: fetch_hub_file(f, cache, offline) for s, f in SST5.items()}, data_dir)
        elif t == "cfimdb":
            convert_cfimdb({s: fetch_hub_file(f, cache, offline) for s, f in CFIMDB.items()}, data_dir)
        elif t == "quora":
            convert_quora({s: fetch_hub_file(f, cache, offline) for s, f in QQP.items()}, data_dir)
        elif t == "sonnet":
            convert_sonnets(fetch_url(GUTENBERG_URL, "pg1041.txt", cache=cache, offline=offline), data_dir)
        else:
            raise ValueError(f"unknown task {t!r}; expected one of {', '.join(TASKS)} or all")
        written += [data_dir / name for name in COURSE_FILES[t].all()]
    return written


def missing_files(task: str, data_dir: Path) -> list[Path]:
    """The files of `task` (train, dev, test inputs) that are not in `data_dir`."""
    if task not in COURSE_FILES:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    needed = COURSE_FILES[task].inputs()
    return [Path(data_dir) / name for name in needed if not (Path(data_dir) / name).is_file()]


def ensure_task_data(task: str, data_dir: Path, offline: bool = False, cache: Path | None = None) -> None:
    """Make sure `task`'s files are in `data_dir`, fetching them (one line says so) unless `offline` (or
    HF_HUB_OFFLINE=1)."""
    missing = missing_files(task, data_dir)
    if not missing:
        return
    names = ", ".join(p.name for p in missing)
    if offline or env_offline():
        # name what turned downloads off: a user who never typed --offline has HF_HUB_OFFLINE=1 set
        off = " and ".join([*(["--offline"] if offline else []), *(["HF_HUB_OFFLINE=1"] if env_offline() else [])])
        raise DownloadError(f"missing in {data_dir}: {names}. Without {off} they are fetched automatically; "
                            f"or run `python -m course fetch --task {task} --data-dir {data_dir}` on a "
                            "machine with internet and copy the files here.")
    print(f"fetching {task} data into {data_dir} (missing: {names})", flush=True)
    fetch(task, data_dir, offline=False, cache=cache)

"""course/fetch.py under mutmut, against the local fake hub of test_data_fetch (127.0.0.1, never the network):
which files each task writes (names listed by hand), the cache a caller names, offline runs that send nothing,
the one-line errors, and nothing half-written after a 404 or a cut-off transfer."""
from __future__ import annotations

from pathlib import Path

import pytest

from course import fetch as fetch_module
from course.fetch import ensure_task_data, fetch, missing_files
from minigpt2.download import DownloadError
from tests.course import test_data_fetch
from tests.course.test_data_fetch import gutenberg_book

hub = test_data_fetch.hub  # the fake hub fixture (127.0.0.1), used by name

# what each task writes, in this order, by hand from the course's data folder
WRITES = {
    "sst": ["ids-sst-train.csv", "ids-sst-dev.csv", "ids-sst-test-student.csv", "ids-sst-test-labels.csv"],
    "cfimdb": ["ids-cfimdb-train.csv", "ids-cfimdb-dev.csv", "ids-cfimdb-test-student.csv",
               "ids-cfimdb-test-labels.csv"],
    "quora": ["quora-train.csv", "quora-dev.csv", "quora-test-student.csv", "quora-test-labels.csv"],
    "sonnet": ["sonnets.txt", "sonnets_held_out_dev.txt", "TRUE_sonnets_held_out_dev.txt", "sonnets_held_out.txt",
               "TRUE_sonnets_held_out.txt"],
}
GUTENBERG = "/cache/epub/1041/pg1041.txt"


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_fetch_all_into_a_named_cache_then_offline_from_it_alone(hub, tmp_path):
    out, cache = tmp_path / "a", tmp_path / "mine"
    written = fetch("all", out, cache=cache)
    assert written == [out / n for t in ("sst", "cfimdb", "quora", "sonnet") for n in WRITES[t]]
    assert sorted(p.name for p in out.iterdir()) == sorted(n for names in WRITES.values() for n in names)
    # the sources went to the cache given, none to the default one ($MINIGPT2_CACHE of the fixture)
    assert (cache / "url" / "pg1041.txt").read_bytes() == gutenberg_book().encode("utf-8")
    hub_files = files_under(cache / "hub")
    for source in ("train.jsonl", "dev.jsonl", "test.jsonl", "train.tsv", "dev.tsv", "test.tsv",
                   "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"):
        assert any(f.endswith("/" + source) for f in hub_files), source
    assert files_under(tmp_path / "cache" / "minigpt2") == []

    # offline, with the hub down: every task is made from the named cache alone, byte for byte the same
    hub.stop()
    n = len(hub.requests)
    again = fetch("all", str(tmp_path / "b"), offline=True, cache=cache)
    assert again == [tmp_path / "b" / p.name for p in written]
    for p in written:
        assert (tmp_path / "b" / p.name).read_bytes() == p.read_bytes()
    assert len(hub.requests) == n


@pytest.mark.parametrize("task", ["sst", "cfimdb", "quora", "sonnet"])
def test_fetch_one_task_offline_with_an_empty_cache_asks_nothing_and_writes_nothing(hub, tmp_path, task):
    out = tmp_path / "data"
    with pytest.raises(DownloadError, match="downloads are off"):
        fetch(task, out, offline=True, cache=tmp_path / "empty")
    assert hub.requests == [] and files_under(out) == []


def test_fetch_one_task_writes_its_files_only(hub, tmp_path):
    out = tmp_path / "data"
    assert fetch("sonnet", out) == [out / n for n in WRITES["sonnet"]]
    assert sorted(p.name for p in out.iterdir()) == sorted(WRITES["sonnet"])
    assert all(GUTENBERG in path for _, path, _ in hub.requests)  # no hub file was asked for
    assert (tmp_path / "cache" / "minigpt2" / "url" / "pg1041.txt").is_file()  # the default cache


def test_fetch_an_unknown_task_says_which_exist(hub, tmp_path):
    with pytest.raises(ValueError) as e:
        fetch("poems", tmp_path / "data")
    assert str(e.value) == "unknown task 'poems'; expected one of sst, cfimdb, quora, sonnet or all"
    assert hub.requests == [] and not (tmp_path / "data").exists()


def test_a_404_leaves_nothing_behind_and_a_cut_off_body_is_resumed(hub, tmp_path):
    hub.missing(GUTENBERG)
    out, cache = tmp_path / "data", tmp_path / "c"
    with pytest.raises(DownloadError, match=r"pg1041\.txt: HTTP 404 .*To place it by hand: download "):
        fetch("sonnet", out, cache=cache)
    assert files_under(out) == [] and files_under(cache / "url") == []  # no course file, no .part file

    hub._missing.clear()
    hub.cut_once(GUTENBERG)
    written = fetch("sonnet", out, cache=cache)
    ranges = [r for m, path, r in hub.requests if path == GUTENBERG and m == "GET"]
    assert len(ranges) == 3 and ranges[0] is None and ranges[2].startswith("bytes=")  # 404, cut, resumed
    assert files_under(cache / "url") == ["pg1041.txt"]
    assert (cache / "url" / "pg1041.txt").read_bytes() == gutenberg_book().encode("utf-8")
    clean = fetch("sonnet", tmp_path / "clean", cache=tmp_path / "c2")
    assert [p.read_bytes() for p in written] == [p.read_bytes() for p in clean]


def test_missing_files_lists_the_required_ones_not_there_in_order(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "sonnets.txt").write_text("x")
    (d / "TRUE_sonnets_held_out_dev.txt").write_text("x")
    (d / "sonnets_held_out.txt").mkdir()  # a folder is not the file
    # required: train, dev prompts, true dev sonnets, test prompts; the true test sonnets are optional
    assert missing_files("sonnet", d) == [d / "sonnets_held_out_dev.txt", d / "sonnets_held_out.txt"]
    assert missing_files("sonnet", str(d)) == [d / "sonnets_held_out_dev.txt", d / "sonnets_held_out.txt"]
    assert missing_files("quora", d) == [d / "quora-train.csv", d / "quora-dev.csv", d / "quora-test-student.csv"]
    for name in WRITES["sst"][:3]:
        (d / name).write_text("x")
    assert missing_files("sst", d) == []  # the test labels are not required
    with pytest.raises(ValueError) as e:
        missing_files("all", d)
    assert str(e.value) == "unknown task 'all'; expected one of sst, cfimdb, quora, sonnet"


def test_ensure_task_data_offline_by_environment_names_what_is_missing(hub, tmp_path, monkeypatch):
    d = tmp_path / "data"
    d.mkdir()
    for name in ("ids-sst-train.csv", "ids-sst-test-student.csv"):
        (d / name).write_text("x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as e:
        ensure_task_data("sst", d)  # offline=False, but HF_HUB_OFFLINE=1
    # the line names what turned downloads off (HF_HUB_OFFLINE=1 here, not --offline, which was not given)
    assert str(e.value) == (f"missing in {d}: ids-sst-dev.csv. Without HF_HUB_OFFLINE=1 they are fetched "
                            f"automatically; or run `python -m course fetch --task sst --data-dir {d}` on a machine "
                            "with internet and copy the files here.")
    with pytest.raises(DownloadError, match=r"ids-sst-dev\.csv\. Without --offline and HF_HUB_OFFLINE=1 they are "):
        ensure_task_data("sst", d, offline=True)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(DownloadError) as e:
        ensure_task_data("sonnet", d, offline=True)
    assert str(e.value).startswith(f"missing in {d}: sonnets.txt, sonnets_held_out_dev.txt, "
                                   "TRUE_sonnets_held_out_dev.txt, sonnets_held_out.txt. Without --offline they ")
    assert hub.requests == []


def test_ensure_task_data_fetches_into_the_named_cache(hub, tmp_path, capsys):
    d, cache = tmp_path / "data", tmp_path / "mine"
    ensure_task_data("sonnet", d, cache=cache)
    assert capsys.readouterr().out == (f"fetching sonnet data into {d} (missing: sonnets.txt, "
                                       "sonnets_held_out_dev.txt, TRUE_sonnets_held_out_dev.txt, "
                                       "sonnets_held_out.txt)\n")
    assert sorted(p.name for p in d.iterdir()) == sorted(WRITES["sonnet"])
    assert files_under(cache / "url") == ["pg1041.txt"] and files_under(tmp_path / "cache" / "minigpt2") == []


def test_the_pinned_sources():
    """The revisions and URL written down in fetch.py's comments (a slip would fetch another file or none)."""
    assert fetch_module.GUTENBERG_URL == "https://www.gutenberg.org/cache/epub/1041/pg1041.txt"
    assert [(f.repo_id, f.filename, f.repo_type) for f in fetch_module.SST5.values()] == [
        ("SetFit/sst5", "train.jsonl", "dataset"), ("SetFit/sst5", "dev.jsonl", "dataset"),
        ("SetFit/sst5", "test.jsonl", "dataset")]
    # the commits and SST-5 checksums as fetch.py's comment records them (the fake hub answers at any revision)
    assert {f.revision for f in fetch_module.SST5.values()} == {"e51bdcd8cd3a30da231967c1a249ba59361279a3"}
    assert [f.sha256 for f in fetch_module.SST5.values()] == [
        "46bde4fb5abc93ffbadfa9a9f67de17c08a2f535cfb5756c59188d070434f433",
        "4369df4d4229e736fa734af49b342c7d6002c4d8514d9c206a5aa26edc620b79",
        "1384216112a34f3d70b6fa210762f3399bb080410c0456ac6e54a5cb413f04b2"]
    assert [(s, f.repo_id, f.filename, f.repo_type, f.revision, f.sha256) for s, f in fetch_module.CFIMDB.items()] == [
        (s, "tasksource/counterfactually-augmented-imdb", f"{s}.tsv", "dataset",
         "fd42efb815508d02beb7d478eae41a8a2e7100a3", None) for s in ("train", "dev", "test")]
    assert [(s, f.repo_id, f.filename, f.repo_type, f.revision, f.sha256) for s, f in fetch_module.QQP.items()] == [
        (s, "nyu-mll/glue", f"qqp/{s}-00000-of-00001.parquet", "dataset", "169a67d6d185e00f8e46409cc182dd6e741b54b7",
         None) for s in ("train", "validation")]


def test_the_fetching_line_is_flushed_before_the_download_starts(tmp_path, monkeypatch):
    """The line is the only sign of life during a long download: it must reach a pipe or log file before it."""
    import io
    import sys

    class Stdout(io.StringIO):
        def __init__(self):
            super().__init__()
            self.flushed = []

        def flush(self):
            self.flushed.append(self.getvalue())
            super().flush()

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # .ci/run sets it; this test fetches (to a stand-in)
    out = Stdout()
    monkeypatch.setattr(sys, "stdout", out)
    seen = []
    monkeypatch.setattr(fetch_module, "fetch", lambda *a, **k: seen.append((a, k, list(out.flushed))))
    d = tmp_path / "data"
    ensure_task_data("quora", d, cache=tmp_path / "c")
    line = f"fetching quora data into {d} (missing: quora-train.csv, quora-dev.csv, quora-test-student.csv)\n"
    assert [(a, k["cache"], flushed) for a, k, flushed in seen] == [(("quora", d), tmp_path / "c", [line])]
    assert not seen[0][1].get("offline")  # it fetches (the offline case raised above)


def test_a_source_that_fails_its_pinned_checksum_is_deleted_and_no_course_file_is_written(hub, tmp_path):
    hub.corrupt("/datasets/SetFit/sst5/resolve/{rev}/test.jsonl")  # same size and ETag, first byte flipped
    out, cache = tmp_path / "data", tmp_path / "c"
    with pytest.raises(DownloadError, match=r"SetFit/sst5/test\.jsonl: checksum mismatch, expected sha256 "
                                            r"[0-9a-f]{64} but got [0-9a-f]{64}; the file was deleted"):
        fetch("sst", out, cache=cache)
    assert files_under(out) == []
    assert [f for f in files_under(cache / "hub") if f.endswith("test.jsonl")] == []
    assert len([f for f in files_under(cache / "hub") if f.endswith((".jsonl"))]) == 2  # train and dev kept

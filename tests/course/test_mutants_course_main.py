"""`python -m course fetch`: its flags and their defaults (MINIGPT2_DATA_DIR), what it prints, its exit codes and
its one `error:` line (docs/testing.md, "Automated mutants", "The front ends"). `fetch` itself is replaced by a
recorder: no download."""

from __future__ import annotations

from pathlib import Path

import pytest

import course.__main__ as cli
from course.convert import DataFormatError
from minigpt2.download import DownloadError
from tests.course.test_data_fetch import hub  # noqa: F401  (the fake hub, serving the sources' fixtures)

FETCH_USAGE = ("usage: python -m course fetch [-h] [--task {sst,cfimdb,quora,sonnet,all}] [--data-dir DATA_DIR]\n"
               "                              [--cache-dir CACHE_DIR] [--offline]\n")


@pytest.fixture
def calls(monkeypatch):
    """`fetch` recorded; it "writes" two files under the data folder."""
    log = []

    def fake_fetch(task, data_dir, offline=None, cache=None):
        log.append((task, data_dir, offline, cache))
        return [data_dir / "a.csv", data_dir / "b.txt"]

    monkeypatch.setattr(cli, "fetch", fake_fetch)
    monkeypatch.delenv("MINIGPT2_DATA_DIR", raising=False)
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps its usage and help at the terminal's width
    return log


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        rc = cli.main(list(argv))
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_defaults_fetch_every_task_into_data(calls, capsys):
    assert run(capsys, "fetch") == (0, "data/a.csv\ndata/b.txt\n", "")
    assert calls == [("all", Path("data"), False, None)]
    assert type(calls[0][1]) is type(Path("data"))


def test_the_data_folder_defaults_to_minigpt2_data_dir(calls, capsys, monkeypatch):
    monkeypatch.setenv("MINIGPT2_DATA_DIR", "/srv/course-data")
    assert run(capsys, "fetch", "--task", "sst") == (0, "/srv/course-data/a.csv\n/srv/course-data/b.txt\n", "")
    assert run(capsys, "fetch", "--data-dir", "here")[0] == 0  # the flag wins
    assert calls == [("sst", Path("/srv/course-data"), False, None), ("all", Path("here"), False, None)]


def test_an_empty_minigpt2_data_dir_is_unset_as_for_the_readers(calls, capsys, monkeypatch):
    """`finetune` and the other readers take MINIGPT2_DATA_DIR="" as unset (data/); fetch writes there too, not
    into the current folder."""
    monkeypatch.setenv("MINIGPT2_DATA_DIR", "")
    assert run(capsys, "fetch", "--task", "quora") == (0, "data/a.csv\ndata/b.txt\n", "")
    assert calls == [("quora", Path("data"), False, None)]


def test_every_flag_reaches_fetch(calls, capsys):
    for task in ("sst", "cfimdb", "quora", "sonnet", "all"):
        assert run(capsys, "fetch", "--task", task, "--data-dir", "d", "--cache-dir", "c", "--offline") == (
            0, "d/a.csv\nd/b.txt\n", "")
        assert calls.pop() == (task, Path("d"), True, Path("c"))
        assert run(capsys, "fetch", "--task", task, "--cache-dir", "/c")[0] == 0
        assert calls.pop() == (task, Path("data"), False, Path("/c"))


@pytest.mark.parametrize("error", [DownloadError("cannot reach huggingface.co (offline?)"),
                                   DataFormatError("sst train.jsonl line 3: no 'label'")])
def test_a_failed_download_or_bad_source_is_one_error_line_and_exit_1(calls, capsys, monkeypatch, error):
    monkeypatch.setattr(cli, "fetch", lambda *a, **k: (_ for _ in ()).throw(error))
    assert run(capsys, "fetch", "--task", "sst") == (1, "", f"error: {error}\n")


def test_bad_command_lines_exit_2_with_argparse_line(calls, capsys):
    rc, out, err = run(capsys)
    assert (rc, out) == (2, "")
    assert err == ("usage: python -m course [-h] {fetch} ...\n"
                   "python -m course: error: the following arguments are required: command\n")
    rc, out, err = run(capsys, "fetch", "--task", "imdb")
    assert (rc, out) == (2, "")
    assert err == FETCH_USAGE + ("python -m course fetch: error: argument --task: invalid choice: 'imdb' (choose "
                                 "from 'sst', 'cfimdb', 'quora', 'sonnet', 'all')\n")
    assert run(capsys, "pull")[0] == 2
    assert calls == []


def test_help_lists_every_flag_with_its_default(calls, capsys):
    assert run(capsys, "--help") == (0, """\
usage: python -m course [-h] {fetch} ...

Fetch the task data from public sources and write it in the course's file formats.

positional arguments:
  {fetch}
    fetch     download the public sources and write the course-format files

options:
  -h, --help  show this help message and exit
""", "")
    assert run(capsys, "fetch", "--help") == (0, FETCH_USAGE + """
options:
  -h, --help            show this help message and exit
  --task {sst,cfimdb,quora,sonnet,all}
                        which task's data to fetch (default all)
  --data-dir DATA_DIR   folder to write the files into (default $MINIGPT2_DATA_DIR, else ./data)
  --cache-dir CACHE_DIR
                        download cache (default $MINIGPT2_CACHE or ~/.cache/minigpt2)
  --offline             use only what is in the cache; fail with instructions instead of
                        downloading
""", "")
    assert calls == []


def test_a_data_folder_it_cannot_write_is_one_error_line_and_exit_1(hub, tmp_path, capsys):
    """Any UserError of the fetch (here minigpt2.atomic's WriteError: --data-dir names a file) is the one line,
    not a traceback."""
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    rc, out, err = run(capsys, "fetch", "--task", "cfimdb", "--data-dir", str(blocked))
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # the hub client logs warnings too
    assert (rc, out, len(errors)) == (1, "", 1) and "Traceback" not in err
    assert errors[0].startswith(f"error: {blocked}/ids-cfimdb-") and ": cannot write it (" in errors[0]


def test_other_user_errors_are_the_one_line_too(calls, capsys, monkeypatch):
    from minigpt2.errors import UserError

    monkeypatch.setattr(cli, "fetch", lambda *a, **k: (_ for _ in ()).throw(UserError("data: read-only")))
    assert run(capsys, "fetch") == (1, "", "error: data: read-only\n")

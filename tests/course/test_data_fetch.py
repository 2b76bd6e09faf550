"""`python -m course fetch` against a local fake hub serving fixtures in each source's real format."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest

from course import convert, fetch, jsonl
from course.__main__ import main
from course.convert import DataFormatError, parse_gutenberg_sonnets
from course.fetch import ensure_task_data
from course.files import COURSE_FILES
from minigpt2.download import DownloadError
from tests import FIXTURES
from tests.fakehub import FakeHub, point_client_at

FIXTURES = FIXTURES / "hub"

_NUMERAL = re.compile(r"^[IVXLC]+$")


def roman(n: int) -> str:
    out = ""
    for v, s in ((100, "C"), (90, "XC"), (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")):
        while n >= v:
            out, n = out + s, n - v
    return out


def gutenberg_book() -> str:
    """The excerpt fixture (real Gutenberg header, footer and a few real sonnets, including the 12-line 126),
    completed to all 154 sonnets with filler sonnets in the same layout, so the converter sees a whole book."""
    text = (FIXTURES / "gutenberg" / "pg1041-excerpt.txt").read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    head, rest = text.split("\nI\n", 1)
    body, tail = rest.split("\n*** END OF", 1)
    real = {}
    for block in re.split(r"\n\n(?=[IVXLC]+\n)", "I\n" + body):
        numeral, _, lines = block.partition("\n\n")
        real[convert.roman_to_int(numeral.strip())] = lines.strip("\n")
    blocks = []
    for n in range(1, 155):
        lines = real.get(n) or "\n".join([f"Filler line {k} of sonnet {n}," for k in range(1, 13)]
                                         + [f"    Couplet line {k} of sonnet {n}." for k in (1, 2)])
        blocks.append(f"{roman(n)}\n\n{lines}")
    return "\ufeff" + (head + "\n" + "\n\n".join(blocks) + "\n\n*** END OF" + tail).replace("\n", "\r\n")


def fixture_pins(monkeypatch) -> None:
    """Keep the pinned revisions, but pin the sha256 of our small fixtures instead of the real files'."""
    pinned = {split: replace(f, sha256=hashlib.sha256((FIXTURES / "sst5" / f.filename).read_bytes()).hexdigest())
              for split, f in fetch.SST5.items()}
    monkeypatch.setattr(fetch, "SST5", pinned)


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    h = FakeHub()
    point_client_at(h, monkeypatch, tmp_path / "cache")
    for files in (fetch.SST5, fetch.CFIMDB, fetch.QQP):  # the fake repos answer at the pinned revisions
        f = next(iter(files.values()))
        h.commits[f"datasets/{f.repo_id}"] = f.revision
    fixture_pins(monkeypatch)
    for split in ("train", "dev", "test"):
        h.add_repo_file("SetFit/sst5", f"{split}.jsonl", (FIXTURES / "sst5" / f"{split}.jsonl").read_bytes(),
                        repo_type="dataset")
        h.add_repo_file("tasksource/counterfactually-augmented-imdb", f"{split}.tsv",
                        (FIXTURES / "cfimdb" / f"{split}.tsv").read_bytes(), repo_type="dataset")
    for split in ("train", "validation"):
        name = f"qqp/{split}-00000-of-00001.parquet"
        h.add_repo_file("nyu-mll/glue", name, (FIXTURES / "glue" / name).read_bytes(), repo_type="dataset", lfs=True)
    h.add_url("/cache/epub/1041/pg1041.txt", gutenberg_book().encode("utf-8"))
    monkeypatch.setattr(fetch, "GUTENBERG_URL", h.url + "/cache/epub/1041/pg1041.txt")
    yield h
    if h._thread.is_alive():
        h.stop()


def read_tsv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t"))


def sonnet_blocks(path: Path) -> tuple[list[str], list[tuple[int, list[str]]], bytes]:
    """(header lines, [(number, lines)], bytes after the last line) of a course-layout sonnet file."""
    raw = path.read_bytes()
    assert b"\n" not in raw.replace(b"\r\n", b""), f"{path.name}: a line end that is not CRLF"
    text = raw.decode("utf-8")
    trailer = text[len(text.rstrip("\r\n")):]
    lines = text.rstrip("\r\n").split("\r\n")
    header, rest = lines[:11], lines[11:]
    blocks, i = [], 0
    while i < len(rest):
        assert rest[i].isdigit() and rest[i + 1] == "", f"{path.name}: block at line {12 + i} is not 'N', ''"
        j = i + 2
        while j < len(rest) and rest[j] != "":
            j += 1
        blocks.append((int(rest[i]), rest[i + 2:j]))
        i = j + 1
    return header, blocks, trailer.encode()


def test_fetch_all_writes_course_format_files(hub, tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["fetch", "--task", "all", "--data-dir", str(out)]) == 0

    # SST: labelled files keep the course header and a leading space on sentences; test-student has no labels.
    src = [json.loads(line) for line in (FIXTURES / "sst5" / "train.jsonl").read_text().splitlines()]
    train = read_tsv(out / "ids-sst-train.csv")
    assert (out / "ids-sst-train.csv").read_bytes().startswith(b"\tid\tsentence\tsentiment\n")
    assert [r[0] for r in train[1:]] == [str(i) for i in range(len(src))]
    assert [(r[2], int(r[3])) for r in train[1:]] == [(" " + s["text"], s["label"]) for s in src]
    assert all(re.fullmatch(r"[0-9a-f]{25}", r[1]) for r in train[1:])
    student = read_tsv(out / "ids-sst-test-student.csv")
    assert student[0] == ["0", "", "id", "sentence"] and student[1][:2] == ["1", "0.0"]
    assert {len(r) for r in student} == {4}
    labels = read_tsv(out / "ids-sst-test-labels.csv")
    assert labels[0] == ["id", "sentiment"] and [r[0] for r in labels[1:]] == [r[2] for r in student[1:]]
    assert [r[1] for r in labels[1:]] == ["2", "3", "0", "4"]

    # CFIMDB: quotes in reviews survive the csv round trip; Positive -> 1.
    cf = read_tsv(out / "ids-cfimdb-train.csv")
    assert cf[3][2] == ' "Disaster Movie" is not a movie, it is a disaster: no plot, no jokes, """nothing""".'
    assert [r[3] for r in cf[1:]] == ["0", "1", "0", "1"]
    assert len(read_tsv(out / "ids-cfimdb-dev.csv")) == 3 and len(read_tsv(out / "ids-cfimdb-test-student.csv")) == 4

    # Quora: CRLF, "0.0"/"1.0" labels, every GLUE pair in exactly one split, test labels kept apart.
    q = {s: read_tsv(out / f"quora-{s}.csv") for s in ("train", "dev", "test-student")}
    assert all(b"\n" not in (out / f"quora-{s}.csv").read_bytes().replace(b"\r\n", b"") for s in q)
    assert q["train"][0] == ["", "id", "sentence1", "sentence2", "is_duplicate"]
    assert q["test-student"][0] == ["", "id", "sentence1", "sentence2"]
    rows = q["train"][1:] + q["dev"][1:]
    assert {r[4] for r in rows} <= {"0.0", "1.0"}
    indices = [int(r[0]) for r in rows + q["test-student"][1:]]
    assert sorted(indices) == list(range(9)) + [convert.QQP_TRAIN_SIZE + i for i in range(3)]
    assert ['What are some books similar to "To Kill a Mockingbird"?'] == [r[2] for r in rows + q["test-student"][1:]
                                                                           if "Mockingbird" in r[2]]
    qlabels = read_tsv(out / "quora-test-labels.csv")
    assert [r[0] for r in qlabels[1:]] == [r[1] for r in q["test-student"][1:]]

    # Sonnets: course layout, Arabic numbers, the course's test numbering.
    _, train_blocks, trailer = sonnet_blocks(out / "sonnets.txt")
    assert [n for n, _ in train_blocks] == list(range(1, 132)) and trailer == b"\r\n\r\n"
    assert train_blocks[0][1][0] == "From fairest creatures we desire increase,"
    assert train_blocks[0][1][-2:] == ["  Pity the world, or else this glutton be,",
                                       "  To eat the world's due, by the grave and thee."]
    assert len(train_blocks[125][1]) == 12  # sonnet 126
    _, test_blocks, _ = sonnet_blocks(out / "sonnets_held_out.txt")
    assert [n for n, _ in test_blocks] == list(range(145, 157)) and {len(b) for _, b in test_blocks} == {3}
    _, truth, _ = sonnet_blocks(out / "TRUE_sonnets_held_out.txt")
    assert truth[10][1][0] == "When my love swears that she is made of truth,"  # 155 = sonnet 138
    assert truth[11][1][0] == "Two loves I have of comfort and despair,"  # 156 = sonnet 144
    assert truth[0][1][1] == "Breathed forth the sound that said 'I hate',"

    printed = capsys.readouterr().out.split()
    assert all(Path(p).is_file() for p in printed) and len(printed) == sum(len(v.all()) for v in COURSE_FILES.values())


def test_sonnet_parser_reads_both_gutenberg_layouts():
    new = parse_gutenberg_sonnets(gutenberg_book())
    # The older eBook 1041 text: every line indented two spaces, couplets four, straight quotes.
    old_text = "\n".join("  " + ln if ln.strip() else ln for ln in gutenberg_book().translate(
        {0x2019: "'", 0x2018: "'"}).splitlines())
    assert parse_gutenberg_sonnets(old_text) == new
    assert sorted(new) == list(range(1, 155)) and len(new[126]) == 12
    assert not any("\u2019" in ln or "\u2018" in ln for lines in new.values() for ln in lines)


def test_sonnet_parser_errors_name_the_line():
    book = gutenberg_book().replace("\r\nCXXXVIII\r\n", "\r\nCXXXIX\r\n")
    with pytest.raises(DataFormatError, match=r"pg1041.txt:\d+: heading 'CXXXIX' = 139, expected sonnet 138"):
        parse_gutenberg_sonnets(book)
    with pytest.raises(DataFormatError, match="found sonnets 1-131, expected 154"):
        parse_gutenberg_sonnets(book.split("CXXXII\r\n")[0])


def test_bad_source_files_give_clear_errors(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"text": "ok", "label": 1}\n{"sentence": "no", "label": 2}\n')
    with pytest.raises(DataFormatError, match=r"train.jsonl:2: expected keys 'text' and 'label'"):
        convert.sst5_rows(bad)
    bad.write_text('{"text": "ok", "label": 7}\n')
    with pytest.raises(DataFormatError, match=r"train.jsonl:1: label 7 is not one of 0-4"):
        convert.sst5_rows(bad)
    tsv = tmp_path / "train.tsv"
    tsv.write_text("label\treview\nPositive\tgood\n")
    with pytest.raises(DataFormatError, match=r"train.tsv:1: expected a header with columns 'Sentiment' and 'Text'"):
        convert.cfimdb_rows(tsv)
    tsv.write_text("Sentiment\tText\nPositive\tgood\textra\n")
    with pytest.raises(DataFormatError, match=r"train.tsv:2: expected 2 tab-separated fields"):
        convert.cfimdb_rows(tsv)
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "train.parquet"
    pq.write_table(pa.table({"question1": ["a"], "question2": ["b"], "idx": [0]}), parquet)
    with pytest.raises(DataFormatError, match=r"train.parquet: expected columns .* missing \['label'\]"):
        convert.qqp_rows(parquet)
    pq.write_table(pa.table({"question1": ["a"], "question2": ["b"], "label": [-1], "idx": [0]}), parquet)
    with pytest.raises(DataFormatError, match="label -1 is not 0 or 1"):
        convert.qqp_rows(parquet)


def test_ensure_task_data_fetches_once_and_offline_explains(hub, tmp_path, capsys):
    out = tmp_path / "data"
    with pytest.raises(DownloadError, match=r"missing in .*ids-sst-train.csv, ids-sst-dev.csv, ids-sst-test-student"
                                            r".*python -m course fetch --task sst"):
        ensure_task_data("sst", out, offline=True)
    assert hub.requests == []

    ensure_task_data("sst", out)
    assert capsys.readouterr().out.strip().splitlines() == [
        f"fetching sst data into {out} (missing: ids-sst-train.csv, ids-sst-dev.csv, ids-sst-test-student.csv)"]
    n = len(hub.requests)
    ensure_task_data("sst", out)  # all there: nothing fetched, nothing printed
    assert len(hub.requests) == n and capsys.readouterr().out == ""


def test_fetch_offline_uses_the_cache_only(hub, tmp_path):
    assert main(["fetch", "--task", "cfimdb", "--data-dir", str(tmp_path / "a")]) == 0
    hub.stop()
    assert main(["fetch", "--task", "cfimdb", "--data-dir", str(tmp_path / "b"), "--offline"]) == 0
    for name in COURSE_FILES["cfimdb"].all():
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_fetch_reports_a_missing_source_clearly(hub, tmp_path, capsys):
    hub.missing("/datasets/SetFit/sst5/resolve/{rev}/dev.jsonl")
    assert main(["fetch", "--task", "sst", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "SetFit/sst5/dev.jsonl" in err and "404" in err and "To place it by hand" in err
    assert not (tmp_path / "ids-sst-train.csv").exists()


def test_real_pins_refuse_other_bytes(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.undo()  # back to the real SST-5 sha256 pins (and to the real environment) ...
    point_client_at(hub, monkeypatch, tmp_path / "cache")  # ... but still against the fake hub
    assert main(["fetch", "--task", "sst", "--data-dir", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert "SetFit/sst5/train.jsonl: checksum mismatch, expected sha256 " + fetch.SST5_SHA256["train"] in err
    assert not (tmp_path / "data").exists()
    assert not [p for p in (tmp_path / "cache").rglob("train.jsonl") if p.is_file()]


def test_quora_split_is_deterministic_with_course_proportions():
    splits = [convert.quora_split("train", i) for i in range(20_000)]
    assert splits == [convert.quora_split("train", i) for i in range(20_000)]
    for name, share in (("train", 0.7), ("dev", 0.1), ("test", 0.2)):
        assert abs(splits.count(name) / len(splits) - share) < 0.015


@pytest.mark.shared_data
def test_written_files_match_the_layout_of_the_course_files(hub, tmp_path):
    out, real = tmp_path / "data", Path(os.environ["MINIGPT2_DATA_DIR"])
    assert main(["fetch", "--task", "all", "--data-dir", str(out)]) == 0
    for name in ("ids-sst-train.csv", "ids-sst-dev.csv", "ids-sst-test-student.csv", "ids-cfimdb-train.csv",
                 "ids-cfimdb-dev.csv", "ids-cfimdb-test-student.csv", "quora-train.csv", "quora-dev.csv",
                 "quora-test-student.csv"):
        ours, theirs = (out / name).read_bytes(), (real / name).read_bytes()
        assert ours.split(b"\n", 1)[0] == theirs.split(b"\n", 1)[0], f"{name}: header line differs"
        assert (b"\r\n" in ours) == (b"\r\n" in theirs), f"{name}: line ends differ"
        ncols = {len(r) for r in read_tsv(real / name)[1:]}
        assert {len(r) for r in read_tsv(out / name)[1:]} == ncols, name
        first_ours, first_theirs = read_tsv(out / name)[1], read_tsv(real / name)[1]
        assert re.fullmatch(r"\d+", first_ours[0]) and re.fullmatch(r"\d+", first_theirs[0])
        id_col = 2 if "test-student" in name and "quora" not in name else 1
        assert len(first_ours[id_col]) == len(first_theirs[id_col]) == 25, f"{name}: id width differs"
        if id_col == 2:
            assert first_ours[:2] == first_theirs[:2] == ["1", "0.0"]
    for name in ("sonnets.txt", "sonnets_held_out_dev.txt", "TRUE_sonnets_held_out_dev.txt",
                 "sonnets_held_out.txt"):
        ours, theirs = sonnet_blocks(out / name), sonnet_blocks(real / name)
        assert len(ours[0]) == len(theirs[0]) == 11 and ours[0][7:] == theirs[0][7:] == ["", "", "", ""]
        assert [n for n, _ in ours[1]] == [n for n, _ in theirs[1]], f"{name}: sonnet numbers differ"
        assert ours[2] == theirs[2], f"{name}: file ending differs"
        if "held_out" in name and "TRUE" not in name:
            assert [len(b) for _, b in ours[1]] == [len(b) for _, b in theirs[1]]


# ---- with the task readers and the fine-tune command -----------------------------------------------------------
def test_fetched_files_load_through_the_task_readers(hub, tmp_path):
    from minigpt2.tokenizer import Tokenizer
    from tasks import get_task

    out = tmp_path / "data"
    fetch.fetch("all", out)
    tok = Tokenizer()
    for name in ("sst", "cfimdb", "quora", "sonnet"):
        task = get_task(name)
        for split in ("train", "dev", "test"):
            examples, bad = task.load(out, split, tok, max_len=128)
            assert examples, f"{name}/{split}: no examples"
            # The one irregularity is real: sonnet 126 has 12 lines (the readers report it, as for the course file).
            assert [str(b) for b in bad] == ([f"{out / 'sonnets.txt'}:{b.line}: sonnet 126 has 12 lines, expected 14"
                                              for b in bad] if (name, split) == ("sonnet", "train") else []), bad
    sst_dev, _ = get_task("sst").load(out, "dev", tok, max_len=128)
    assert [e.label for e in sst_dev] == [3, 2, 0]


def test_finetune_fetches_missing_data_and_says_so(hub, tmp_path, capsys):
    from app import finetune

    out = tmp_path / "data"
    finetune.main(["--task", "sst", "--model", "tiny", "--data-dir", str(out), "--epochs", "1", "--max-train", "4",
                   "--max-eval", "2", "--batch-size", "2", "--max-length", "32", "--out-dir", str(tmp_path / "run"),
                   "--no-progress"])
    lines = capsys.readouterr().out.splitlines()
    assert [ln for ln in lines if ln.startswith("fetching")] == [
        f"fetching sst data into {out} (missing: ids-sst-train.csv, ids-sst-dev.csv, ids-sst-test-student.csv)"]
    assert (out / "ids-sst-train.csv").is_file() and (tmp_path / "run" / "metrics.json").is_file()


def test_finetune_offline_gives_the_clear_error_instead(hub, tmp_path):
    from app import finetune

    with pytest.raises(SystemExit, match=r"error: missing in .*quora-train.csv.*python -m course fetch "
                                         r"--task quora"):
        finetune.main(["--task", "quora", "--model", "tiny", "--data-dir", str(tmp_path), "--offline",
                       "--out-dir", str(tmp_path / "run")])
    assert hub.requests == []


def test_parse_jsonl_numbers_lines_and_tells_a_cut_off_last_line():
    assert jsonl.parse_jsonl('{"a": 1}\n\n[2]\n') == [(1, {"a": 1}), (3, [2])]
    with pytest.raises(jsonl.JsonLineError) as bad:
        jsonl.parse_jsonl('{"a": 1}\n{"a": \n[2]\n')
    assert (bad.value.lineno, bad.value.cut_off) == (2, False)
    with pytest.raises(jsonl.JsonLineError) as cut:
        jsonl.parse_jsonl('{"a": 1}\n{"a": ')  # no newline after it: an interrupted writer's tail
    assert (cut.value.lineno, cut.value.cut_off) == (2, True)


def test_fetch_into_a_cache_it_cannot_write_is_one_error_line_and_exit_1(hub, tmp_path, monkeypatch, capsys):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("MINIGPT2_CACHE", str(blocked))  # the download cache runs through a file
    assert main(["fetch", "--task", "cfimdb", "--data-dir", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # the hub client logs warnings too
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot write {blocked}/")
    assert "(Not a directory)" in errors[0] and "cannot reach" not in err and not (tmp_path / "data").exists()

"""Distillation under bad conditions, through the real google-genai SDK against the local fake server:
answers out of order, duplicated or damaged files, Retry-After, a black-holed endpoint, the wrong teacher,
and the generation summary beside the file."""
import json
import os
import re
import socket
import sys
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from distill import check, client as client_module, dedup as dedup_module, generate, records, summary, synthetic
from distill.client import AuthError, GeminiClient, GeminiError, TransientError
from distill.dedup import DedupIndex, load_held_out
from distill.generate import NotEnoughKept, TeacherMismatch, main, read_records, run
from distill.records import SyntheticFileError
from distill.summary import read_summary, summarize_file, summary_path, wilson_interval
from distill.synthetic import load_synthetic
from minigpt2.errors import UserError
from tests import ROOT
from tests.fakegemini import VALID_KEY, BlackHole, FakeGemini, make_sonnet

FIXTURES = ROOT / "tests" / "fixtures" / "distill"
MODEL = "gemini-2.5-flash"


def client(fake, sleeps=None, lines=None, **kw) -> GeminiClient:
    sleeps = sleeps if sleeps is not None else []
    lines = lines if lines is not None else []
    return GeminiClient(MODEL, VALID_KEY, base_url=fake.url, sleep=sleeps.append, log=lines.append, seed=0, **kw)


def dedup() -> DedupIndex:
    return DedupIndex(load_held_out(FIXTURES))


def cli(url, out, n=3, teacher=MODEL, extra=()):
    return ["--teacher", teacher, "--n", str(n), "--out", str(out), "--base-url", url,
            "--data-dir", str(FIXTURES), "--no-progress", *extra]


def rec(rid, text, status="kept", teacher=MODEL):
    return {"id": rid, "teacher": teacher, "status": status, "text": text, "reason": None if status == "kept"
            else "near-duplicate: jaccard 1.00 with 000000", "usage": {"prompt_tokens": 10, "output_tokens": 90}}


def write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().split("\n")
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# --- id order whatever the network timing -------------------------------------------------------------------


def test_answers_arriving_out_of_order_are_judged_and_written_in_id_order(tmp_path):
    # id 0 answers last; id 4's answer is an exact copy of id 3's and arrives before it. Written in completion
    # order, 4 would be kept and 3 rejected; in id order 3 is kept and 4 is its near-duplicate.
    delays, faults = {0: 0.8, 1: 0.6, 2: 0.4, 3: 0.3}, {4: "as:3"}
    out = tmp_path / "fast.jsonl"
    with FakeGemini(delays=delays, faults=faults) as fake:
        run(MODEL, 6, out, client(fake), dedup(), concurrency=6, progress=False)
        answered = list(fake.answered)
    assert answered.index(4) < answered.index(3) < answered.index(0) == 5  # really out of order; then id 6
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"{i:06d}" for i in range(7)]
    assert rows[3]["status"] == "kept" and rows[4]["status"] == "rejected"
    assert rows[4]["reason"].startswith("near-duplicate: jaccard 1.00 with 000003")

    # The same request one at a time, in order, gives the same file (timestamps aside) and the same subsets.
    calm = tmp_path / "calm.jsonl"
    with FakeGemini(faults=faults) as fake:
        run(MODEL, 6, calm, client(fake), dedup(), concurrency=1, progress=False)
    strip = [{k: v for k, v in r.items() if k != "timestamp"} for r in rows]
    assert strip == [{k: v for k, v in json.loads(line).items() if k != "timestamp"}
                     for line in calm.read_text().splitlines()]
    first_four = [make_sonnet(s, perfect=s % 5 != 0) for s in range(4)]  # the fake breaks seeds divisible by 5
    assert load_synthetic(out, n=4) == load_synthetic(calm, n=4) == first_four


def test_a_failure_behind_faster_answers_keeps_the_file_a_prefix_and_resumes(tmp_path):
    # id 1 fails for good while ids 2-3 have already answered: they are not written past the gap.
    out = tmp_path / "o.jsonl"
    with FakeGemini(faults={1: "500"}, delays={1: 0.3}) as fake:
        with pytest.raises(TransientError, match=r"2 answer\(s\) that arrived after the failed request were not "
                                                 r"written"):
            run(MODEL, 4, out, client(fake, retries=0), dedup(), concurrency=4, progress=False)
    assert [r["id"] for r in read_records(out)] == ["000000"]
    assert json.loads(summary_path(out).read_text())["last_run"]["complete"] is False
    with FakeGemini() as fake:
        run(MODEL, 4, out, client(fake), dedup(), concurrency=4, progress=False)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [f"{i:06d}" for i in range(4)]


# --- duplicates ---------------------------------------------------------------------------------------------


def test_repeated_ids_are_refused_with_both_lines(tmp_path):
    path = write(tmp_path / "o.jsonl", [rec("000000", make_sonnet(1)), rec("000001", make_sonnet(2)),
                                        rec("000001", make_sonnet(3))])
    for read in (lambda: read_records(path, MODEL), lambda: load_synthetic(path)):
        with pytest.raises(SyntheticFileError, match=r"o\.jsonl:3: id '000001' again \(first at line 2\)"):
            read()


def test_repeated_kept_texts_are_refused_but_a_rejected_copy_is_fine(tmp_path):
    copy = make_sonnet(1).replace("\n", "\n\n")  # the same words, other spacing
    path = write(tmp_path / "o.jsonl", [rec("000000", make_sonnet(1)), rec("000001", make_sonnet(2)),
                                        rec("000002", copy)])
    for read in (lambda: read_records(path, MODEL), lambda: load_synthetic(path)):
        with pytest.raises(SyntheticFileError, match=r"o\.jsonl:3: the same sonnet as line 1 \(id '000002'\); it "
                                                     r"would be counted and trained on twice"):
            read()
    write(path, [rec("000000", make_sonnet(1)), rec("000001", make_sonnet(1), status="rejected")])
    assert load_synthetic(path) == [make_sonnet(1)] and len(read_records(path, MODEL)) == 2


def test_a_duplicated_file_stops_the_command_before_any_request(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEMINI_API_KEY", VALID_KEY)
    out = write(tmp_path / "o.jsonl", [rec("000000", make_sonnet(1)), rec("000000", make_sonnet(1))])
    with FakeGemini() as fake:
        assert main(cli(fake.url, out)) == 1
        assert fake.requests == []
    assert "o.jsonl:2: id '000000' again (first at line 1)" in error_line(capsys)


def test_load_synthetic_takes_the_first_n_by_id_not_by_line(tmp_path):
    path = write(tmp_path / "o.jsonl", [rec("000010", make_sonnet(10)), rec("000002", make_sonnet(2)),
                                        rec("000009", make_sonnet(9))])
    assert load_synthetic(path, n=2) == [make_sonnet(2), make_sonnet(9)]
    assert records.id_order("t-10") > records.id_order("t-9") and records.id_order("1000000") > records.id_order(
        "999999")


# --- damaged or unreadable files ----------------------------------------------------------------------------


def damage(out: Path, how: str) -> str:
    """Damage `out` one way; the part of the error message that says so."""
    good = [json.dumps(rec(f"{i:06d}", make_sonnet(i + 1))) for i in range(3)]
    if how == "bad JSON in the middle":
        out.write_text(good[0] + "\n{oops\n" + good[2] + "\n")
        return ("o.jsonl:2: not valid JSON (Expecting property name enclosed in double quotes); only a cut-off last "
                "line is left by an interrupted run, so this file was edited or damaged: fix or delete that line")
    if how == "not UTF-8":
        out.write_bytes((good[0] + "\n").encode() + b'{"id": "x\xff"}\n')
        return "o.jsonl:2: not UTF-8 text (byte 0xff)"
    if how == "a folder":
        out.mkdir()
        return "o.jsonl: is a folder, not a generation output file"
    if how == "no 'teacher'":
        out.write_text(json.dumps({"id": "000000", "status": "kept", "text": make_sonnet(1)}) + "\n")
        return "o.jsonl:1: expected a string field 'teacher'"
    if how == "two teachers":
        out.write_text(json.dumps(rec("000000", make_sonnet(1))) + "\n"
                       + json.dumps(rec("000001", make_sonnet(2), teacher="gemini-2.5-pro")) + "\n")
        return "o.jsonl:2: teacher 'gemini-2.5-pro', but line 1 has 'gemini-2.5-flash'"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["bad JSON in the middle", "not UTF-8", "a folder", "no 'teacher'", "two teachers"])
def test_a_damaged_output_is_one_clear_error_before_any_request(tmp_path, monkeypatch, capsys, how):
    monkeypatch.setenv("GEMINI_API_KEY", VALID_KEY)
    out = tmp_path / "o.jsonl"
    expected = damage(out, how)
    with FakeGemini() as fake:
        assert main(cli(fake.url, out)) == 1
        assert fake.requests == []
    line = error_line(capsys)
    assert expected in line and "re-run" not in line  # re-running the same command could not help
    if how != "a folder":
        with pytest.raises(SyntheticFileError, match=re.escape(expected.split(" (")[0])):
            summarize_file(out)


def test_an_unreadable_output_says_to_fix_its_permissions(tmp_path, monkeypatch, capsys):
    # Tests may run as root, whom chmod does not stop: the refusal is simulated where the file is read.
    out = write(tmp_path / "o.jsonl", [rec("000000", make_sonnet(1))])
    real = Path.read_bytes

    def read_bytes(self):
        if self == out:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setenv("GEMINI_API_KEY", VALID_KEY)
    with FakeGemini() as fake:
        assert main(cli(fake.url, out)) == 1
        assert fake.requests == []
    assert "o.jsonl: no permission to read it; fix its permissions (chmod u+rw)" in error_line(capsys)
    with pytest.raises(SyntheticFileError, match="no permission to read it"):
        load_synthetic(out)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads and writes any file")
def test_a_file_without_permissions_is_refused(tmp_path):  # pragma: no cover - only as a normal user
    out = write(tmp_path / "o.jsonl", [rec("000000", make_sonnet(1))])
    out.chmod(0)
    with pytest.raises(SyntheticFileError, match="no permission to read it"):
        read_records(out, MODEL)


def test_a_torn_last_line_is_repaired_by_generate_and_explained_to_readers(tmp_path, capsys):
    out = write(tmp_path / "o.jsonl", [rec("000000", make_sonnet(1)), rec("000001", make_sonnet(2))])
    with open(out, "a") as f:
        f.write('{"id": "000002", "teach')
    with pytest.raises(SyntheticFileError, match=r"o\.jsonl:3: the last line is cut off .*re-run distill\.generate "
                                                 r"with the same --out to repair it"):
        load_synthetic(out)
    assert [r["id"] for r in read_records(out, MODEL)] == ["000000", "000001"]
    assert "dropped a partial last line" in capsys.readouterr().err
    assert load_synthetic(out) == [make_sonnet(1), make_sonnet(2)]


# --- network: retry lines, Retry-After, time limits ---------------------------------------------------------


def test_retry_after_seconds_is_waited_for_and_each_retry_is_one_line(capsys):
    with FakeGemini(script=["429", "ok"], retry_after="1") as fake:
        c = GeminiClient(MODEL, VALID_KEY, base_url=fake.url, seed=0)  # the real sleep and stderr
        start = time.monotonic()
        assert c.generate("p", seed=3).text == make_sonnet(3)
        waited = time.monotonic() - start
    assert waited >= 1.0
    err = capsys.readouterr().err.strip().split("\n")
    assert len(err) == 1 and re.fullmatch(r"generate_content on gemini-2\.5-flash: attempt 1/6 failed \(429 "
                                          r"RESOURCE_EXHAUSTED\); retrying in 1\.\d s as the server asked", err[0])


@pytest.mark.parametrize("form, low", [("seconds", 7.0), ("HTTP date", 25.0), ("RetryInfo", 3.0)])
def test_every_form_of_retry_after_sets_the_wait(form, low):
    kw = {"seconds": {"retry_after": "7"}, "RetryInfo": {"retry_delay": "3s"},
          "HTTP date": {"retry_after": formatdate(time.time() + 30, usegmt=True)}}[form]
    sleeps, lines = [], []
    with FakeGemini(script=["503", "ok"], **kw) as fake:
        client(fake, sleeps, lines).generate("p")
    assert len(sleeps) == 1 and low <= sleeps[0] <= (31 if form == "HTTP date" else low) * 1.1
    assert lines[0].endswith("as the server asked")


def test_a_retry_after_beyond_the_total_limit_gives_up_at_once_and_says_why():
    sleeps = []
    with FakeGemini(script=["429"] * 3, retry_after="120") as fake:
        with pytest.raises(TransientError, match=r"gave up after 1 of 6 attempts .*the next wait \(1\d\d\.\d s as the "
                                                 r"server asked\) would pass the total limit of 60 s per request "
                                                 r"\(--total-timeout\)"):
            client(fake, sleeps, total_timeout_s=60).generate("p")
        assert len(fake.generate_calls()) == 1
    assert sleeps == []


def test_a_black_holed_endpoint_is_reported_within_the_total_limit(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEMINI_API_KEY", VALID_KEY)
    with BlackHole() as hole:
        start = time.monotonic()
        code = main(cli(hole.url, tmp_path / "o.jsonl", extra=("--timeout", "0.4", "--total-timeout", "2")))
        took = time.monotonic() - start
        assert hole.connections >= 2  # it did connect: the silence is the server's
    assert code == 1 and took < 10
    err = capsys.readouterr().err.strip().split("\n")
    assert err[0].startswith("checking access to gemini-2.5-flash: attempt 1/6 failed (no answer within 0.4 s "
                             "(ReadTimeout)); retrying in")
    assert all(line.startswith("checking access") for line in err[:-1])
    assert err[-1].startswith("error: checking access to gemini-2.5-flash gave up after") and \
        "total limit of 2 s per request (--total-timeout)" in err[-1]


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping connections to a full listen queue")
def test_connecting_has_its_own_short_limit():
    # A listening socket whose queue is full: the kernel ignores new connections, as a dead host would.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        queued = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            queued.append(s)
        time.sleep(0.2)
        c = GeminiClient(MODEL, VALID_KEY, base_url=f"http://127.0.0.1:{port}", timeout_s=30, connect_timeout_s=0.3,
                         retries=0, log=lambda line: None)
        start = time.monotonic()
        with pytest.raises(TransientError, match=r"could not connect within 0\.3 s \(ConnectTimeout\)"):
            c.generate("p")
        assert time.monotonic() - start < 10  # the connect limit, not the 30 s read limit
        for s in queued:
            s.close()


def test_time_limits_must_be_positive():
    with pytest.raises(UserError, match="the connect timeout must be a positive number of seconds, got 0"):
        GeminiClient(MODEL, VALID_KEY, connect_timeout_s=0)


# --- the teacher ------------------------------------------------------------------------------------------


def test_another_teacher_for_an_existing_file_is_refused_naming_both(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEMINI_API_KEY", VALID_KEY)
    out = tmp_path / "o.jsonl"
    with FakeGemini() as fake:
        assert main(cli(fake.url, out, n=2)) == 0
        capsys.readouterr()
        before = len(fake.requests)
        assert main(cli(fake.url, out, n=4, teacher="gemini-2.5-pro")) == 1
        assert len(fake.requests) == before  # refused before any request, priced as nothing
    line = error_line(capsys)
    assert "holds sonnets from teacher 'gemini-2.5-flash', not --teacher 'gemini-2.5-pro'" in line
    assert json.loads(summary_path(out).read_text())["teacher"] == MODEL


# --- the generation summary -------------------------------------------------------------------------------


def test_the_summary_is_written_beside_the_file_and_recomputed_after_a_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEMINI_API_KEY", VALID_KEY)
    out = tmp_path / "o.jsonl"
    with FakeGemini(script=["leak", "ok", "503", "ok", "empty"], leak_text=load_held_out(FIXTURES)[0][1]) as fake:
        assert main(cli(fake.url, out, n=4, extra=("--concurrency", "1"))) == 0
    first = json.loads(summary_path(out).read_text())
    assert "summary written to" in capsys.readouterr().out
    assert first["schema"] == 1 and first["teacher"] == MODEL and first["model_versions"] == ["fake"]
    assert (first["requests"], first["kept"], first["rejected"]) == (6, 4, {"empty response": 1, "leak": 1})
    kept = [r for r in read_records(out) if r["status"] == "kept"]
    assert first["perfect"] == sum(check.is_perfect(r["text"]) for r in kept)
    lo, hi = first["perfect_ci95"]
    assert lo < first["perfect_rate"] < hi or first["perfect_rate"] in (0.0, 1.0)
    assert first["tokens"]["thinking"] == 7 * 6 and first["cost_usd"] > 0
    assert first["prices"]["date"] and first["prices"]["usd_per_1m_output"] == 2.5
    assert first["last_run"] == {"n": 4, "complete": True, "error": None}
    assert first["file"] == "o.jsonl" and read_summary(out) == first

    with FakeGemini() as fake:  # a second session resumes to 6: the summary covers the whole file
        assert main(cli(fake.url, out, n=6)) == 0
        assert len(fake.generate_calls()) == 2
    second = json.loads(summary_path(out).read_text())
    assert (second["requests"], second["kept"]) == (8, 6)
    assert {k: v for k, v in second.items() if k not in ("updated", "jsonl_sha256", "last_run", "file")} == \
        summarize_file(out)

    with open(out, "a") as f:  # the file changed after the summary: readers recompute rather than trust it
        f.write(json.dumps({**rec("000008", make_sonnet(77)), "teacher": MODEL}) + "\n")
    fresh = read_summary(out)
    assert fresh["kept"] == 7 and fresh["last_run"] is None


def test_a_stopped_run_still_writes_its_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEMINI_API_KEY", VALID_KEY)
    out = tmp_path / "o.jsonl"
    with FakeGemini(script=["ok", "ok"] + ["503"] * 20) as fake:
        assert main(cli(fake.url, out, n=5, extra=("--concurrency", "1", "--retries", "0"))) == 1
    printed = capsys.readouterr()
    assert "kept 2 of 2 requests" in printed.out
    err = printed.err.strip().split("\n")[-1]
    assert err.startswith("error: generate_content on gemini-2.5-flash still failing after 1 attempts") and \
        err.endswith(f"finished work is saved in {out}: re-run the same command to resume")
    saved = json.loads(summary_path(out).read_text())
    assert saved["kept"] == 2 and saved["last_run"]["complete"] is False and "503" in saved["last_run"]["error"]


def test_max_requests_is_a_user_error_without_a_resume_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEMINI_API_KEY", VALID_KEY)
    with FakeGemini(script=["empty"] * 5) as fake:
        assert main(cli(fake.url, tmp_path / "o.jsonl", n=2, extra=("--max-requests", "3"))) == 1
    err = capsys.readouterr().err.strip().split("\n")[-1]
    assert err.startswith("error: kept only 0 of 2 sonnets after 3 requests") and "re-run" not in err


def test_wilson_interval():
    assert wilson_interval(0, 0) is None
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)


# --- every error on purpose is a UserError, printed as one line ----------------------------------------------


def test_every_distill_error_is_a_user_error():
    for cls in (GeminiError, AuthError, TransientError, SyntheticFileError, TeacherMismatch, NotEnoughKept):
        assert issubclass(cls, UserError)
    # No bare built-in exceptions raised on purpose anywhere in distill.
    modules = (check, client_module, dedup_module, generate, records, summary, synthetic)
    for module in modules:
        source = Path(module.__file__).read_text()
        assert not re.findall(r"raise (ValueError|RuntimeError|FileNotFoundError|OSError|KeyError|TypeError)\(",
                              source), module.__name__


def test_bad_flags_are_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEMINI_API_KEY", VALID_KEY)
    with FakeGemini() as fake:
        assert main(cli(fake.url, tmp_path / "o.jsonl", n=0)) == 1
        assert main(cli(fake.url, tmp_path / "o.jsonl", extra=("--connect-timeout", "0"))) == 1
        assert fake.generate_calls() == []
    err = capsys.readouterr().err.strip().split("\n")
    assert err == ["error: --n and --concurrency must be at least 1, got 0 and 8",
                   "error: the connect timeout must be a positive number of seconds, got 0.0"]

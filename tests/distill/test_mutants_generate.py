"""Pins for `distill.generate` and `distill.client` where plausible one-line slips give other output.

Written against `tools/mutate.py --auto` survivors (docs/testing.md, "Automated mutants"). The generation run is
driven by a stand-in teacher (`Stub`: no network, answers fixed per request, fixed usage) so requests, token sums
and costs are worked by hand; the client's paths go through the real google-genai SDK against the local fake
server (tests/fakegemini.py) or straight through `_call` with an injected clock, sleep and log.
"""
from __future__ import annotations

import json
import random
import re
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from google.genai import errors

from distill import client as cl
from distill import generate as gen
from distill.client import AuthError, Completion, GeminiClient, GeminiError, TransientError
from distill.dedup import DedupIndex, load_held_out
from distill.records import SyntheticFileError
from distill.summary import summary_path
from minigpt2.errors import UserError
from tests import ROOT
from tests.fakegemini import VALID_KEY, FakeGemini, make_sonnet

FIXTURES = ROOT / "tests" / "fixtures" / "distill"
MODEL = "gemini-2.5-flash"
USAGE = {"prompt_tokens": 100, "output_tokens": 200, "thinking_tokens": 50, "total_tokens": 350}
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"  # UTC, to the second
PRICE_NOTE = "(2026-11-28, https://ai.google.dev/gemini-api/docs/pricing (via secondary pages; unverified))"


def ok(text: str, version: str | None = "v1") -> Completion:
    return Completion(text, "STOP", None, dict(USAGE), version)


class Stub:
    """A teacher that answers request k (in the order asked) with answers[k], else a fresh perfect sonnet."""

    def __init__(self, answers: dict | None = None) -> None:
        self.answers, self.calls, self._lock = dict(answers or {}), [], threading.Lock()

    def generate(self, prompt, seed=None, temperature=1.0, max_output_tokens=None, thinking_budget=None):
        with self._lock:
            k = len(self.calls)
            self.calls.append((prompt, seed, temperature, max_output_tokens, thinking_budget))
        a = self.answers.get(k, ok(make_sonnet(1000 + k)))
        if isinstance(a, BaseException):
            raise a
        return a() if callable(a) else a


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def rec(rid: str, text: str, status: str = "kept") -> dict:
    return {"id": rid, "teacher": MODEL, "status": status, "text": text,
            "reason": None if status == "kept" else "empty response (finish STOP)", "usage": dict(USAGE)}


def write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- the prompts, seeds and the cleaning of an answer ----------------------------------------------------------


def test_request_seeds_and_the_prompt_of_a_seed():
    # (base * 1,000,003 + index) mod 2^31, worked by hand: 3000 * 1000003 + 7 = 3,000,009,007 - 2^31 = 852,525,359
    assert gen.request_seed(0, 5) == 5 and gen.request_seed(1, 2) == 1_000_005
    assert gen.request_seed(3000, 7) == 852_525_359
    # random.Random(0) picks THEMES[24], VOICES[6], IMAGES[1]
    assert gen.make_prompt(0) == (
        "Write an original Shakespearean sonnet about the first telescope, as a praise of a rival poet, with imagery "
        "of coins and debts. Use exactly 14 lines of iambic pentameter rhyming ABAB CDCD EFEF GG, with true rhymes. "
        "Do not quote or paraphrase any existing poem, Shakespeare's included. Reply with the 14 lines only: no "
        "title, no numbering, no commentary.")
    rng = random.Random(0)
    assert [rng.randrange(50), rng.randrange(12), rng.randrange(20)] == [24, 6, 1]


def test_chat_wrapping_is_stripped_line_by_line():
    raw = "\r\n\n```text\r\n## The Tide\n  _Shall_ I **compare** thee *now*,  \n\nsecond line\n```\n\n"
    assert gen.strip_chat_wrapping(raw) == "Shall I compare thee now,\n\nsecond line"
    assert gen.strip_chat_wrapping("**A Title**\nline one\nline two") == "line one\nline two"
    assert gen.strip_chat_wrapping("SONNET XII\nline one") == "line one"
    assert gen.strip_chat_wrapping("line one\n## not a title here\n") == "line one\n## not a title here"
    assert gen.strip_chat_wrapping("line one\nline two") == "line one\nline two"  # no title: nothing dropped
    assert gen.strip_chat_wrapping("   \n\n") == ""


def test_an_answer_whose_lines_end_in_a_lone_cr_keeps_its_lines(tmp_path):
    # Was glued into one line ("\r" removed, not read as a line end): a perfect sonnet written as one line, imperfect.
    assert gen.strip_chat_wrapping("line one\rline two\r\rline three\r") == "line one\nline two\n\nline three"
    assert gen.strip_chat_wrapping("```\r\nline one\r\nline two\r\n```\r\n") == "line one\nline two"
    out = tmp_path / "o.jsonl"
    gen.run(MODEL, 1, out, Stub({0: ok(make_sonnet(1).replace("\n", "\r"))}), DedupIndex([]), progress=False)
    (row,) = lines(out)
    assert (row["text"], row["perfect"]) == (make_sonnet(1), True)


def test_a_record_keeps_the_time_its_answer_arrived():
    r = gen.make_record("000007", MODEL, "p", 7, ok(make_sonnet(1)), DedupIndex([]), "2026-01-02T03:04:05+00:00")
    assert r["timestamp"] == "2026-01-02T03:04:05+00:00"
    assert re.fullmatch(STAMP, gen.make_record("000008", MODEL, "p", 8, ok(""), DedupIndex([]))["timestamp"])


def test_a_record_is_one_utf8_json_line(tmp_path):
    path = tmp_path / "o.jsonl"
    with open(path, "a", encoding="utf-8") as f:
        gen.append_record(f, {"text": "O\u2019er th\u00e9 sea", "n": 1})
    assert path.read_bytes() == '{"text": "O\u2019er th\u00e9 sea", "n": 1}\n'.encode("utf-8")


# --- one run, record by record -------------------------------------------------------------------------------


def test_a_run_writes_each_record_whole_and_counts_requests_tokens_and_cost(tmp_path):
    out = tmp_path / "o.jsonl"
    wrapped = "```\n**The Tide**\n" + make_sonnet(2, perfect=False) + "\n```\n"
    stub = Stub({0: ok(make_sonnet(1)), 1: Completion("", None, "prompt blocked: SAFETY", dict(USAGE), None),
                 2: Completion("", "MAX_TOKENS", None, dict(USAGE), "v1"), 3: ok(make_sonnet(1)), 4: ok(wrapped, "v2")})
    summary = gen.run(MODEL, 2, out, stub, DedupIndex([]), concurrency=1, seed=7, temperature=0.5,
                      max_output_tokens=900, thinking_budget=0, progress=False)
    seeds = [7_000_021 + i for i in range(5)]  # 7 * 1,000,003 + index
    assert stub.calls == [(gen.make_prompt(s), s, 0.5, 900, 0) for s in seeds]
    rows = lines(out)
    for r in rows:
        assert re.fullmatch(STAMP, r.pop("timestamp"))
    common = {"teacher": MODEL, "usage": USAGE}
    assert rows == [
        {"id": "000000", **common, "model_version": "v1", "prompt": gen.make_prompt(seeds[0]), "seed": seeds[0],
         "text": make_sonnet(1), "status": "kept", "reason": None, "perfect": True, "finish_reason": "STOP"},
        {"id": "000001", **common, "model_version": None, "prompt": gen.make_prompt(seeds[1]), "seed": seeds[1],
         "text": "", "status": "rejected", "reason": "prompt blocked: SAFETY", "perfect": False,
         "finish_reason": None},
        {"id": "000002", **common, "model_version": "v1", "prompt": gen.make_prompt(seeds[2]), "seed": seeds[2],
         "text": "", "status": "rejected", "reason": "empty response (finish MAX_TOKENS)", "perfect": False,
         "finish_reason": "MAX_TOKENS"},
        {"id": "000003", **common, "model_version": "v1", "prompt": gen.make_prompt(seeds[3]), "seed": seeds[3],
         "text": make_sonnet(1), "status": "rejected", "reason": "near-duplicate: jaccard 1.00 with 000000",
         "perfect": True, "finish_reason": "STOP"},
        {"id": "000004", **common, "model_version": "v2", "prompt": gen.make_prompt(seeds[4]), "seed": seeds[4],
         "text": make_sonnet(2, perfect=False), "status": "kept", "reason": None, "perfect": False,
         "finish_reason": "STOP"},
    ]
    # 5 requests x (100 in, 200 out, 50 thinking): 500 / 1000 / 250; flash at $0.30 / $2.50 per 1M (thinking billed
    # as output): (500 * 0.30 + 1250 * 2.50) / 1e6 = (150 + 3125) / 1e6 = $0.003275
    assert (summary["requests"], summary["kept"], summary["perfect"]) == (5, 2, 1)
    assert summary["rejected"] == {"empty response": 1, "near-duplicate": 1, "prompt blocked": 1}
    assert summary["tokens"] == {"input": 500, "output": 1000, "thinking": 250, "total": 1750}
    assert summary["cost_usd"] == pytest.approx(0.003275, abs=1e-12)
    saved = json.loads(summary_path(out).read_text())
    assert saved["last_run"] == {"n": 2, "complete": True, "error": None} and saved["requests"] == 5


def test_a_resume_skips_every_id_in_the_file_and_rebuilds_the_index_from_kept_sonnets_only(tmp_path):
    out = write(tmp_path / "o.jsonl", [rec("000000", make_sonnet(1)), rec("000002", make_sonnet(3), "rejected")])
    # request 0 (id 1) repeats the kept id 0: a near-duplicate; id 2 is in the file; id 3 repeats the *rejected*
    # id 2's text, which is no duplicate of anything kept; id 4 is new.
    stub = Stub({0: ok(make_sonnet(1)), 1: ok(make_sonnet(3))})
    summary = gen.run(MODEL, 3, out, stub, DedupIndex([]), concurrency=1, progress=False)
    assert [c[1:] for c in stub.calls] == [(1, 1.0, None, None), (3, 1.0, None, None), (4, 1.0, None, None)]
    rows = lines(out)
    assert [(r["id"], r["status"]) for r in rows] == [("000000", "kept"), ("000002", "rejected"),
                                                      ("000001", "rejected"), ("000003", "kept"), ("000004", "kept")]
    assert rows[2]["reason"] == "near-duplicate: jaccard 1.00 with 000000"
    assert (summary["requests"], summary["kept"]) == (5, 3)
    # Run again: nothing to ask; a smaller --n asks nothing either.
    for n in (3, 1):
        again = Stub()
        gen.run(MODEL, n, out, again, DedupIndex([]), progress=False)
        assert again.calls == []


def test_max_requests_defaults_to_2n_plus_10_and_the_stop_says_why(tmp_path):
    empty = Completion("", "STOP", None, dict(USAGE), "v1")
    stub = Stub({k: empty for k in range(40)})
    with pytest.raises(gen.NotEnoughKept) as e:
        gen.run(MODEL, 1, tmp_path / "o.jsonl", stub, DedupIndex([]), concurrency=3, progress=False)
    assert len(stub.calls) == 12
    assert str(e.value) == ("kept only 0 of 1 sonnets after 12 requests (--max-requests 12); rejected: "
                            "{'empty response': 12}. Raise --max-requests, or vary the prompts/seed if most are "
                            "near-duplicates or leaks")
    saved = json.loads(summary_path(tmp_path / "o.jsonl").read_text())["last_run"]
    assert saved == {"n": 1, "complete": False, "error": str(e.value)}


def test_max_requests_counts_the_ids_already_in_the_file(tmp_path):
    out = write(tmp_path / "o.jsonl", [rec("000000", "", "rejected"), rec("000001", "", "rejected")])
    stub = Stub({k: Completion("", "STOP", None, dict(USAGE), "v1") for k in range(9)})
    with pytest.raises(gen.NotEnoughKept, match=r"^kept only 0 of 2 sonnets after 3 requests \(--max-requests 3\); "
                                                r"rejected: \{'empty response': 3\}\. Raise"):
        gen.run(MODEL, 2, out, stub, DedupIndex([]), max_requests=3, progress=False)
    assert [c[1] for c in stub.calls] == [2]
    # exactly enough: the cap is met with n kept, no error
    out2 = tmp_path / "p.jsonl"
    assert gen.run(MODEL, 2, out2, Stub(), DedupIndex([]), max_requests=2, progress=False)["kept"] == 2


def test_n_and_concurrency_below_one_are_refused(tmp_path):
    for n, c in ((0, 8), (1, 0)):
        with pytest.raises(UserError) as e:
            gen.run(MODEL, n, tmp_path / "o.jsonl", Stub(), DedupIndex([]), concurrency=c, progress=False)
        assert str(e.value) == f"--n and --concurrency must be at least 1, got {n} and {c}"
    assert not (tmp_path / "o.jsonl").exists()


def test_a_record_is_stamped_when_its_answer_arrived_not_when_it_was_judged(tmp_path, monkeypatch):
    ticks = iter(f"t{i}" for i in range(100))
    monkeypatch.setattr(gen, "_now", lambda: next(ticks))
    out = tmp_path / "o.jsonl"
    gen.run(MODEL, 2, out, Stub(), DedupIndex([]), concurrency=1, progress=False)
    assert [r["timestamp"] for r in lines(out)] == ["t0", "t1"]  # one clock reading per answer, none at judging


def test_eight_requests_are_in_flight_by_default(tmp_path):
    lock, active, most = threading.Lock(), [0], [0]

    def slow():
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.3)
        with lock:
            active[0] -= 1
        return ok(make_sonnet(1))  # never a near-duplicate at a Jaccard threshold above 1

    stub = Stub({k: slow for k in range(12)})
    gen.run(MODEL, 12, tmp_path / "o.jsonl", stub, DedupIndex([], dup_threshold=1.01), progress=False)
    assert most[0] == 8


def test_run_itself_refuses_another_teachers_file(tmp_path):
    out = write(tmp_path / "o.jsonl", [{**rec("000000", make_sonnet(1)), "teacher": "gemini-2.5-pro"}])
    stub = Stub()
    with pytest.raises(gen.TeacherMismatch, match="holds sonnets from teacher 'gemini-2.5-pro', not --teacher "
                                                  "'gemini-2.5-flash'"):
        gen.run(MODEL, 2, out, stub, DedupIndex([]), progress=False)
    assert stub.calls == []


def test_concurrency_issues_only_as_many_as_could_still_be_needed(tmp_path):
    stub = Stub()
    gen.run(MODEL, 3, tmp_path / "o.jsonl", stub, DedupIndex([]), concurrency=8, progress=False)
    assert sorted(c[1] for c in stub.calls) == [0, 1, 2]  # 3 kept: never a 4th request in flight


def test_a_failure_is_raised_as_it_is_or_names_the_answers_held_back(tmp_path):
    out = tmp_path / "o.jsonl"
    with pytest.raises(AuthError) as e:
        gen.run(MODEL, 3, out, Stub({1: AuthError("key gone")}), DedupIndex([]), concurrency=1, progress=False)
    assert str(e.value) == "key gone" and [r["id"] for r in lines(out)] == ["000000"]
    assert json.loads(summary_path(out).read_text())["last_run"] == {"n": 3, "complete": False, "error": "key gone"}

    out2 = tmp_path / "p.jsonl"
    two_done = threading.Event()

    def late_failure():
        two_done.wait(10)
        time.sleep(0.3)  # id 2's answer is collected before id 1 fails
        raise TransientError("503 for good")

    def two():
        two_done.set()
        return ok(make_sonnet(2))

    stub = Stub({1: late_failure, 2: two})
    with pytest.raises(TransientError) as e:
        gen.run(MODEL, 3, out2, stub, DedupIndex([]), concurrency=3, progress=False)
    assert str(e.value) == ("503 for good; 1 answer(s) that arrived after the failed request were not written, to "
                            "keep the file in id order (a re-run asks again)")
    assert [r["id"] for r in lines(out2)] == ["000000"] and len(stub.calls) == 3


def test_the_progress_bar_counts_kept_sonnets_and_rejections(tmp_path, capsys):
    out = write(tmp_path / "o.jsonl", [rec("000000", make_sonnet(1)), rec("000001", "", "rejected")])
    stub = Stub({0: Completion("", "STOP", None, dict(USAGE), "v1")})
    gen.run(MODEL, 2, out, stub, DedupIndex([]), concurrency=1)
    err = capsys.readouterr().err
    assert re.search(r"gemini-2\.5-flash kept:  50%\|[^|]*\| 1/2 \[", err)  # starts at the kept already in the file
    last = re.split(r"[\r\n]", err.strip())[-1]
    assert re.fullmatch(r"gemini-2\.5-flash kept: 100%\|█+\| 2/2 \[[^\]]*sonnet/s, rejected=2\]", last), last

    full = write(tmp_path / "f.jsonl", [rec(f"00000{i}", make_sonnet(i + 1)) for i in range(3)])
    gen.run(MODEL, 2, full, Stub(), DedupIndex([]))
    assert re.split(r"[\r\n]", capsys.readouterr().err.strip())[-1].startswith("gemini-2.5-flash kept: 100%|")
    gen.run(MODEL, 2, full, Stub(), DedupIndex([]), progress=False)
    assert capsys.readouterr().err == ""


# --- the file: repairs and refusals, each line whole ----------------------------------------------------------


def test_a_cut_off_last_line_is_dropped_and_said_so(tmp_path, capsys):
    good = json.dumps(rec("000000", make_sonnet(1))) + "\n"
    out = tmp_path / "o.jsonl"
    out.write_bytes(good.encode() + b'{"id": "00')
    assert [r["id"] for r in gen.read_records(out, MODEL)] == ["000000"]
    assert capsys.readouterr().err == f"{out}: dropped a partial last line (10 bytes) left by an interrupted run\n"
    assert out.read_bytes() == good.encode()
    out.write_bytes(b'{"id"')  # nothing but a cut-off line
    assert gen.read_records(out) == [] and out.read_bytes() == b""
    assert capsys.readouterr().err == f"{out}: dropped a partial last line (5 bytes) left by an interrupted run\n"
    assert gen.read_records(tmp_path / "none.jsonl") == []


def test_only_the_cut_off_tail_is_dropped_after_several_whole_lines(tmp_path, capsys):
    good = "".join(json.dumps(rec(f"00000{i}", make_sonnet(i + 1))) + "\n" for i in range(3))
    out = tmp_path / "o.jsonl"
    out.write_bytes(good.encode() + b'{"id": "000003", "te')
    assert [r["id"] for r in gen.read_records(out, MODEL)] == ["000000", "000001", "000002"]
    assert out.read_bytes() == good.encode()
    assert capsys.readouterr().err == f"{out}: dropped a partial last line (20 bytes) left by an interrupted run\n"


def test_a_file_that_cannot_be_read_names_itself_as_the_generation_output(tmp_path):
    cases = []
    folder = tmp_path / "o.jsonl"
    folder.mkdir()
    cases.append((folder, f"{folder}: is a folder, not a generation output file; give the path of a file"))
    link = tmp_path / "link.jsonl"
    link.symlink_to(tmp_path / "gone.jsonl")
    cases.append((link, f"{link}: no such generation output file"))
    twice = write(tmp_path / "twice.jsonl", [rec("000000", make_sonnet(1)), rec("000000", make_sonnet(2))])
    cases.append((twice, f"{twice}:2: id '000000' again (first at line 1)"))
    two = write(tmp_path / "two.jsonl", [rec("000000", make_sonnet(1)),
                                         {**rec("000001", make_sonnet(2)), "teacher": "gemini-2.5-pro"}])
    cases.append((two, f"{two}:2: teacher 'gemini-2.5-pro', but line 1 has 'gemini-2.5-flash'; one file holds one "
                       "teacher's sonnets"))
    for path, line in cases:
        with pytest.raises(SyntheticFileError) as e:
            gen.read_records(path, MODEL)
        assert str(e.value).startswith(line), (str(e.value), line)
    # read without a teacher to match, any one teacher's file is read; with one, another's is refused whole
    pro = write(tmp_path / "pro.jsonl", [{**rec("000000", make_sonnet(1)), "teacher": "gemini-2.5-pro"}])
    assert [r["teacher"] for r in gen.read_records(pro)] == ["gemini-2.5-pro"]
    assert [r["teacher"] for r in gen.read_records(pro, "gemini-2.5-pro")] == ["gemini-2.5-pro"]
    with pytest.raises(gen.TeacherMismatch) as e:
        gen.read_records(pro, MODEL)
    assert str(e.value) == (f"{pro}: holds sonnets from teacher 'gemini-2.5-pro', not --teacher 'gemini-2.5-flash': "
                            "resume it with --teacher gemini-2.5-pro, or give gemini-2.5-flash another --out")


def test_a_slow_request_does_not_hold_back_new_ones(tmp_path):
    stub = Stub()
    started = []

    def slow():
        time.sleep(0.6)
        started.append(len(stub.calls))  # how many requests had started when the first one answered
        return ok(make_sonnet(1))

    stub.answers[0] = slow
    gen.run(MODEL, 12, tmp_path / "o.jsonl", stub, DedupIndex([]), concurrency=8, progress=False)
    assert started == [12]  # ids 1-7 answered at once and made room for 8-11 (waiting for all 8 would give 8)


@pytest.mark.parametrize("exc, why", [(PermissionError(13, "Permission denied"), "Permission denied"),
                                      (OSError("disk gone"), "disk gone")])
def test_a_cut_off_line_that_cannot_be_repaired_is_one_line(tmp_path, monkeypatch, exc, why):
    out = tmp_path / "o.jsonl"
    out.write_bytes(b'{"id"')

    def refuse(*a, **k):
        raise exc

    monkeypatch.setattr(gen, "open", refuse, raising=False)
    with pytest.raises(SyntheticFileError) as e:
        gen.read_records(out, MODEL)
    assert str(e.value) == (f"{out}: cannot repair its cut-off last line ({why}); fix its permissions (chmod u+rw) "
                            "or use another --out")


def test_the_output_is_opened_for_appending_or_refused_in_one_line(tmp_path, monkeypatch):
    deep = tmp_path / "a" / "b" / "o.jsonl"
    with gen._open_output(deep) as f:
        f.write("\u2019\n")
    assert deep.read_bytes() == "\u2019\n".encode("utf-8")
    with gen._open_output(deep) as f:  # appends
        f.write("x\n")
    assert deep.read_text(encoding="utf-8") == "\u2019\nx\n"
    with pytest.raises(SyntheticFileError) as e:
        gen._open_output(tmp_path)
    assert str(e.value) == f"--out {tmp_path}: is a folder; give a file path such as {tmp_path / 'teacher.jsonl'}"
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SyntheticFileError) as e:
        gen._open_output(blocker / "o.jsonl")
    assert str(e.value) == f"--out {blocker / 'o.jsonl'}: cannot open it for appending (File exists); use another --out"

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(gen, "open", refuse, raising=False)
    with pytest.raises(SyntheticFileError) as e:
        gen._open_output(tmp_path / "p.jsonl")
    assert str(e.value) == (f"--out {tmp_path / 'p.jsonl'}: no permission to create or append to it; fix the "
                            "permissions (chmod u+rw) or use another --out")


@pytest.mark.parametrize("exc, why", [(PermissionError(13, "Permission denied"), "Permission denied"),
                                      (OSError("disk gone"), "disk gone")])
def test_a_summary_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, exc, why):
    def refuse(*a, **k):
        raise exc

    monkeypatch.setattr(gen, "write_summary", refuse)
    out = tmp_path / "o.jsonl"
    with pytest.raises(SyntheticFileError) as e:
        gen.run(MODEL, 1, out, Stub(), DedupIndex([]), progress=False)
    assert str(e.value) == (f"{out}.summary.json: cannot write the generation summary ({why}); fix the folder's "
                            "permissions and re-run the same command")
    assert len(lines(out)) == 1


# --- the command: flags handed on, what it prints -------------------------------------------------------------


class Recorder:
    """Stands in for GeminiClient in `main`: records how it was made and answers like Stub."""

    made: list = []
    answers: dict = {}
    fail_access: BaseException | None = None

    def __init__(self, model, api_key, **kw):
        Recorder.made.append((model, api_key, kw))
        self.stub = Stub(Recorder.answers)
        self.accessed = 0

    def check_access(self):
        if Recorder.fail_access is not None:
            raise Recorder.fail_access
        Recorder.made.append("access")

    def generate(self, *a, **k):
        Recorder.made.append(("generate",) + a + tuple(sorted(k.items())))
        return self.stub.generate(*a, **k)


@pytest.fixture
def recorder(monkeypatch):
    Recorder.made, Recorder.answers, Recorder.fail_access = [], {}, None
    monkeypatch.setattr(gen, "GeminiClient", Recorder)
    monkeypatch.setenv("GEMINI_API_KEY", "  the-key ")
    monkeypatch.delenv("GEMINI_BASE_URL", raising=False)
    return Recorder


def argv(out, n=2, *extra):
    return ["--teacher", MODEL, "--n", str(n), "--out", str(out), "--data-dir", str(FIXTURES), "--no-progress",
            *extra]


def test_the_command_prints_the_summary_and_where_it_went(tmp_path, recorder, capsys):
    out = tmp_path / "o.jsonl"
    assert gen.main(argv(out)) == 0
    model, key, kw = recorder.made[0]
    assert (model, key) == (MODEL, "the-key")
    assert kw == {"base_url": None, "timeout_s": 120.0, "connect_timeout_s": 10.0, "total_timeout_s": 300.0,
                  "retries": 5, "seed": 0, "log": gen._log}
    assert recorder.made[1] == "access"
    gens = recorder.made[2:]
    assert [g[2:] for g in gens] == [(("max_output_tokens", None), ("seed", s), ("temperature", 1.0),
                                      ("thinking_budget", None)) for s in (0, 1)]
    # 2 kept of 2; Wilson 95% at 2/2: (1 + z^2/4 - z sqrt(z^2/16)) / (1 + z^2/2) = 1 / (1 + z^2/2) = 34.2%;
    # tokens 200 / 400 / 100, total 700; (200 * 0.30 + 500 * 2.50) / 1e6 = $0.00131
    printed = capsys.readouterr()
    assert printed.out == (
        "gemini-2.5-flash: kept 2 of 2 requests; rejected: none\n"
        "perfect sonnets among kept: 2/2 (100.0%, 95% CI 34.2-100.0%)\n"
        "tokens: input 200, output 400, thinking 100, total 700\n"
        f"estimated cost: $0.0013 at 0.3/2.5 USD per 1M tokens in/out {PRICE_NOTE}\n"
        f"summary written to {out}.summary.json\n")
    assert printed.err == ""


def test_every_flag_reaches_the_client_the_filter_and_the_run(tmp_path, recorder, monkeypatch, capsys):
    made = []

    def index(held, **kw):
        made.append((held, kw))
        return DedupIndex(held, **kw)

    monkeypatch.setattr(gen, "DedupIndex", index)
    out = tmp_path / "o.jsonl"
    assert gen.main(argv(out, 1, "--base-url", "http://h", "--timeout", "30", "--connect-timeout", "2",
                         "--total-timeout", "90", "--retries", "3", "--seed", "4", "--temperature", "0.25",
                         "--max-output-tokens", "900", "--thinking-budget", "0", "--concurrency", "2",
                         "--dup-threshold", "0.7", "--leak-threshold", "0.6")) == 0
    assert recorder.made[0][2] == {"base_url": "http://h", "timeout_s": 30.0, "connect_timeout_s": 2.0,
                                   "total_timeout_s": 90.0, "retries": 3, "seed": 4, "log": gen._log}
    assert recorder.made[2][2:] == (("max_output_tokens", 900), ("seed", 4_000_012), ("temperature", 0.25),
                                    ("thinking_budget", 0))  # 4 * 1,000,003
    assert made == [(load_held_out(FIXTURES), {"dup_threshold": 0.7, "leak_threshold": 0.6})]
    capsys.readouterr()
    made.clear()
    assert gen.main(argv(tmp_path / "p.jsonl", 1, "--no-leak-filter")) == 0  # the held-out files not even read
    assert made == [([], {"dup_threshold": 0.5, "leak_threshold": 0.5})]
    capsys.readouterr()
    assert gen.main(["--teacher", MODEL, "--n", "1", "--out", str(tmp_path / "q.jsonl"),
                     "--data-dir", str(FIXTURES)]) == 0  # the bar is on by default
    assert "gemini-2.5-flash kept: 100%|" in capsys.readouterr().err


def test_the_base_url_and_data_dir_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GEMINI_BASE_URL", "http://env")
    monkeypatch.setenv("MINIGPT2_DATA_DIR", str(tmp_path))
    args = gen.build_parser().parse_args(["--teacher", MODEL, "--n", "1", "--out", "o"])
    assert args.base_url == "http://env" and args.data_dir == tmp_path
    monkeypatch.delenv("MINIGPT2_DATA_DIR")
    assert gen.build_parser().parse_args(["--teacher", MODEL, "--n", "1", "--out", "o"]).data_dir == Path("data")
    # Set but empty is unset, as for finetune and the readers (course.readers.data_dir), not the current folder.
    monkeypatch.setenv("MINIGPT2_DATA_DIR", "")
    assert gen.build_parser().parse_args(["--teacher", MODEL, "--n", "1", "--out", "o"]).data_dir == Path("data")


@pytest.mark.parametrize("extra, line", [
    (("--max-requests", "0"), "error: --max-requests must be at least 1, got 0"),
    (("--concurrency", "0"), "error: --n and --concurrency must be at least 1, got 2 and 0"),
])
def test_bad_flags_stop_before_the_client_is_made(tmp_path, recorder, capsys, extra, line):
    assert gen.main(argv(tmp_path / "o.jsonl", 2, *extra)) == 1
    assert capsys.readouterr() == ("", line + "\n") and recorder.made == []


def test_another_teachers_file_is_refused_before_the_client_is_made(tmp_path, recorder, capsys):
    out = write(tmp_path / "o.jsonl", [{**rec("000000", make_sonnet(1)), "teacher": "gemini-2.5-pro"}])
    assert gen.main(argv(out, 2)) == 1
    assert capsys.readouterr() == ("", f"error: {out}: holds sonnets from teacher 'gemini-2.5-pro', not --teacher "
                                       "'gemini-2.5-flash': resume it with --teacher gemini-2.5-pro, or give "
                                       "gemini-2.5-flash another --out\n")
    assert recorder.made == []


def test_max_requests_of_one_is_allowed(tmp_path, recorder, capsys):
    assert gen.main(argv(tmp_path / "o.jsonl", 1, "--max-requests", "1")) == 0


def test_no_held_out_sonnets_is_one_line_naming_the_files(tmp_path, recorder, capsys):
    assert gen.main(argv(tmp_path / "o.jsonl", 2, "--data-dir", str(tmp_path))) == 1
    assert capsys.readouterr().err == (
        f"error: no held-out sonnets in {tmp_path} (expected one of TRUE_sonnets_held_out_dev.txt, "
        "sonnets_held_out_dev.txt, sonnets_held_out.txt); pass --data-dir, or --no-leak-filter to skip the leak "
        "check\n")
    assert recorder.made == []


def test_a_stopped_run_shows_what_the_file_holds_and_hints_only_when_transient(tmp_path, recorder, capsys):
    out = tmp_path / "o.jsonl"
    summary_of_one = ("gemini-2.5-flash: kept 1 of 1 requests; rejected: none\n"
                      "perfect sonnets among kept: 1/1 (100.0%, 95% CI 20.7-100.0%)\n"
                      "tokens: input 100, output 200, thinking 50, total 350\n"
                      f"estimated cost: $0.0007 at 0.3/2.5 USD per 1M tokens in/out {PRICE_NOTE}\n")
    # Wilson at 1/1: 1 / (1 + z^2) = 1 / 4.8415 = 20.7%; (100 * 0.30 + 250 * 2.50) / 1e6 = $0.000655
    recorder.answers = {1: TransientError("503 for good")}
    assert gen.main(argv(out, 3, "--concurrency", "1")) == 1
    assert capsys.readouterr() == (summary_of_one, f"error: 503 for good; finished work is saved in {out}: re-run "
                                                   "the same command to resume\n")
    for exc in (AuthError("key gone"), GeminiError("400 bad")):
        recorder.answers = {0: exc}
        assert gen.main(argv(out, 3, "--concurrency", "1")) == 1
        assert capsys.readouterr() == (summary_of_one, f"error: {exc}\n")
    recorder.answers = {0: Completion("", "STOP", None, dict(USAGE), "v1")}
    assert gen.main(argv(out, 3, "--concurrency", "1", "--max-requests", "2")) == 1
    printed = capsys.readouterr()
    assert printed.out.startswith("gemini-2.5-flash: kept 1 of 2 requests; rejected: empty response: 1\n")
    assert printed.err.startswith("error: kept only 1 of 3 sonnets after 2 requests") and "re-run" not in printed.err
    # A first request that fails leaves nothing to show; an error that is not the network's or the filter's shows
    # nothing either.
    recorder.answers = {0: TransientError("503 again")}
    assert gen.main(argv(tmp_path / "new.jsonl", 3, "--concurrency", "1")) == 1
    assert capsys.readouterr() == ("", "error: 503 again\n")
    recorder.fail_access = UserError("no access")
    assert gen.main(argv(out, 3)) == 1
    assert capsys.readouterr() == ("", "error: no access\n")


def test_the_saved_work_note_survives_a_file_it_cannot_read(tmp_path, recorder, capsys, monkeypatch):
    out = write(tmp_path / "o.jsonl", [rec("000000", make_sonnet(1))])
    real = gen.read_records
    calls = []

    def read_records(path, teacher=None):
        calls.append(path)
        if len(calls) > 2:  # the check before the run and the run's own read pass; the note's read fails
            raise SyntheticFileError("damaged since")
        return real(path, teacher)

    monkeypatch.setattr(gen, "read_records", read_records)
    recorder.answers = {0: TransientError("503 for good")}
    assert gen.main(argv(out, 3, "--concurrency", "1")) == 1
    assert capsys.readouterr() == ("", "error: 503 for good\n") and len(calls) == 3


def test_a_retry_line_is_written_above_the_bar(capsys):
    gen._log("attempt 1/6 failed")
    assert capsys.readouterr() == ("", "attempt 1/6 failed\n")


# === distill.client ==========================================================================================


def api_error(code: int, status: str = "", message: str = "", details=None, headers=None) -> errors.APIError:
    err = {"code": code, "message": message, "status": status}
    if details is not None:
        err["details"] = details
    response = None if headers is None else type("R", (), {"headers": cl._httpx.Headers(headers)})()
    return errors.APIError(code, {"error": err}, response)


def retry_info(delay: str) -> dict:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


def test_the_key_comes_from_gemini_then_google_stripped(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "  k1 ")
    monkeypatch.setenv("GOOGLE_API_KEY", "k2")
    assert cl.api_key_from_env() == "k1"
    monkeypatch.setenv("GEMINI_API_KEY", "   ")
    assert cl.api_key_from_env() == "k2"
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("GOOGLE_API_KEY", " k3\n")
    assert cl.api_key_from_env() == "k3"
    monkeypatch.delenv("GOOGLE_API_KEY")
    with pytest.raises(AuthError) as e:
        cl.api_key_from_env()
    assert str(e.value) == "no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment"


def test_usage_maps_each_count_and_missing_ones_to_zero():
    from google.genai import types
    assert cl._usage(None) == {"prompt_tokens": 0, "output_tokens": 0, "thinking_tokens": 0, "total_tokens": 0}
    meta = types.GenerateContentResponseUsageMetadata(prompt_token_count=3, candidates_token_count=5,
                                                      thoughts_token_count=7, total_token_count=15)
    assert cl._usage(meta) == {"prompt_tokens": 3, "output_tokens": 5, "thinking_tokens": 7, "total_tokens": 15}
    meta = types.GenerateContentResponseUsageMetadata(candidates_token_count=5)
    assert cl._usage(meta) == {"prompt_tokens": 0, "output_tokens": 5, "thinking_tokens": 0, "total_tokens": 0}


def test_which_errors_are_a_rejected_key():
    assert cl._is_key_rejection(api_error(401, "UNAUTHENTICATED"))
    assert cl._is_key_rejection(api_error(403, "PERMISSION_DENIED"))
    assert cl._is_key_rejection(api_error(400, "INVALID_ARGUMENT", "api key not valid"))
    assert cl._is_key_rejection(api_error(400, "INVALID_ARGUMENT", "bad", [{"reason": "api_key_invalid"}]))
    assert not cl._is_key_rejection(api_error(400, "INVALID_ARGUMENT", "seed must be an integer"))
    assert not cl._is_key_rejection(api_error(404, "NOT_FOUND", "API key model"))
    assert not cl._is_key_rejection(api_error(402, "API_KEY"))


def test_retry_after_in_seconds_as_a_date_or_as_retry_info():
    now = datetime(2026, 12, 7, 10, 0, 0, tzinfo=timezone.utc)
    assert cl.retry_after_s(api_error(429, headers={"Retry-After": "7"})) == 7.0
    assert cl.retry_after_s(api_error(429, headers={"Retry-After": " 2.5 "})) == 2.5
    assert cl.retry_after_s(api_error(429, headers={"Retry-After": "-3"})) == 0.0
    assert cl.retry_after_s(api_error(429, headers={"Retry-After": "Mon, 07 Dec 2026 10:00:30 GMT"}), now) == 30.0
    assert cl.retry_after_s(api_error(429, headers={"Retry-After": "Mon, 07 Dec 2026 10:00:30 -0000"}), now) == 30.0
    assert cl.retry_after_s(api_error(429, headers={"Retry-After": "Mon, 07 Dec 2026 11:00:30 +0100"}), now) == 30.0
    assert cl.retry_after_s(api_error(429, headers={"Retry-After": "Mon, 07 Dec 2026 09:59:00 GMT"}), now) == 0.0
    soon = datetime.now(timezone.utc).timestamp() + 100
    from email.utils import formatdate
    assert 90 < cl.retry_after_s(api_error(429, headers={"Retry-After": formatdate(soon, usegmt=True)})) <= 101
    assert cl.retry_after_s(api_error(429, headers={"Retry-After": "soon"})) is None
    assert cl.retry_after_s(api_error(429, headers={})) is None
    assert cl.retry_after_s(api_error(429)) is None
    # Google's RetryInfo, after details of other types and non-dicts; the header first when both are given
    details = ["x", {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "retryDelay": "9s"}, retry_info("37s")]
    assert cl.retry_after_s(api_error(429, details=details)) == 37.0
    assert cl.retry_after_s(api_error(429, details=[retry_info(" 1.5s ")], headers={"Retry-After": ""})) == 1.5
    assert cl.retry_after_s(api_error(429, details=[retry_info("2.s")])) == 2.0
    assert cl.retry_after_s(api_error(429, details=[retry_info("4s")], headers={"Retry-After": "1"})) == 1.0
    for bad in ("37", "x37s", "37ms", "", "1.5.2s"):
        assert cl.retry_after_s(api_error(429, details=[retry_info(bad)])) is None, bad
    assert cl.retry_after_s(errors.APIError(429, {"details": [retry_info("5s")]})) == 5.0  # no "error" wrapper
    assert cl.retry_after_s(errors.APIError(429, {"error": {"details": None}})) is None
    assert cl.retry_after_s(errors.APIError(429, "Too Many Requests")) is None


def test_within_returns_raises_or_gives_up_on_a_daemon_thread():
    seen = []

    def fn():
        t = threading.current_thread()
        seen.append((t.name, t.daemon))
        return 5

    assert cl._within(fn, 5.0) == 5 and seen == [("gemini-attempt", True)]
    assert cl._within(lambda: None, 5.0) is None
    boom = ValueError("boom")
    with pytest.raises(ValueError) as e:
        cl._within(lambda: (_ for _ in ()).throw(boom), 5.0)
    assert e.value is boom
    with pytest.raises(cl._PastDeadline):
        cl._within(lambda: time.sleep(1.0), 0.05)


def test_a_bad_key_time_limit_or_retry_count_is_one_line():
    cases = [({"api_key": ""}, AuthError,
              "no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment"),
             ({"api_key": "ab\u201ccd"}, AuthError, "the Gemini API key holds a non-ASCII character (position 3 of 5); "
              "keys are plain ASCII: check GEMINI_API_KEY for a pasted quote or space"),
             ({"api_key": "\u00a0k"}, AuthError, "the Gemini API key holds a non-ASCII character (position 1 of 2); "
              "keys are plain ASCII: check GEMINI_API_KEY for a pasted quote or space"),
             ({"timeout_s": 0}, UserError, "the timeout must be a positive number of seconds, got 0"),
             ({"total_timeout_s": -1}, UserError, "the total timeout must be a positive number of seconds, got -1"),
             ({"connect_timeout_s": float("nan")}, UserError,
              "the connect timeout must be a positive number of seconds, got nan"),
             ({"retries": -1}, UserError, "retries must be >= 0, got -1")]
    for kw, cls, line in cases:
        kw = {"api_key": VALID_KEY, **kw}
        with pytest.raises(cls) as e:
            GeminiClient(MODEL, **kw)
        assert type(e.value) is cls and str(e.value) == line
    c = GeminiClient(MODEL, VALID_KEY, timeout_s=0.001, connect_timeout_s=0.001, total_timeout_s=0.001, retries=0)
    assert (c.timeout_s, c.connect_timeout_s, c.total_timeout_s, c.retries) == (0.001, 0.001, 0.001, 0)


def test_connecting_gets_the_shorter_of_the_two_limits():
    c = GeminiClient(MODEL, VALID_KEY, connect_timeout_s=10.0)

    def extensions(**ext):
        request = type("Q", (), {"extensions": dict(ext)})()
        c._short_connect(request)
        return request.extensions

    assert extensions(timeout={"connect": 30.0, "read": 30.0}) == {"timeout": {"connect": 10.0, "read": 30.0}}
    assert extensions(timeout={"connect": 2.0, "read": 30.0}) == {"timeout": {"connect": 2.0, "read": 30.0}}
    assert extensions(timeout={"connect": None}) == {"timeout": {"connect": 10.0}}
    assert extensions() == {"timeout": {"connect": 10.0}}
    assert extensions(timeout=None, other=1) == {"timeout": {"connect": 10.0}, "other": 1}


class Clock:
    """A clock that moves only when the client sleeps."""

    def __init__(self, t: float = 0.0) -> None:
        self.t, self.sleeps = t, []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


class Low:
    """An rng whose draws are the low end of each range: waits exactly as asked, or half the cap."""

    def uniform(self, a, b):
        return a


def client_with(clock: Clock, log: list, rng=None, **kw) -> GeminiClient:
    c = GeminiClient(MODEL, VALID_KEY, sleep=clock.sleep, clock=clock, log=log.append, seed=0, **kw)
    if rng is not None:
        c._rng = rng
    return c


def failing(*excs, then="done", timeouts=None):
    """fn for `_call`: raises each of excs in turn, then returns `then`; records each attempt's timeout."""
    left = list(excs)

    def fn(http):
        if timeouts is not None:
            timeouts.append(http.timeout)
        if left:
            raise left.pop(0)
        return then

    return fn


def test_each_retry_is_one_line_with_a_jittered_exponential_wait():
    clock, log, timeouts = Clock(), [], []
    c = client_with(clock, log, retries=4, backoff_s=1.0, max_backoff_s=3.0)
    fn = failing(api_error(429, "RESOURCE_EXHAUSTED"), api_error(500, "INTERNAL"), api_error(503, "UNAVAILABLE"),
                 api_error(408, "DEADLINE"), timeouts=timeouts)
    assert c._call(fn, "asking") == "done"
    rng = random.Random(0)  # the client's own seed: half to all of min(3, 1 * 2^(k - 1)), k = 1..4
    waits = [rng.uniform(0.5, 1.0), rng.uniform(1.0, 2.0), rng.uniform(1.5, 3.0), rng.uniform(1.5, 3.0)]
    assert clock.sleeps == waits
    why = ["429 RESOURCE_EXHAUSTED", "500 INTERNAL", "503 UNAVAILABLE", "408 DEADLINE"]
    assert log == [f"asking: attempt {k}/5 failed ({w}); retrying in {s:.1f} s" for k, (w, s) in
                   enumerate(zip(why, waits), 1)]
    assert timeouts == [120_000] * 5


def test_a_wait_the_server_asked_for_is_at_least_that_and_at_most_ten_percent_more():
    clock, log = Clock(), []
    c = client_with(clock, log, retries=2)
    c._call(failing(api_error(429, "RESOURCE_EXHAUSTED", headers={"Retry-After": "7"}),
                    api_error(503, "UNAVAILABLE", details=[retry_info("20s")])), "asking")
    rng = random.Random(0)
    waits = [7 * rng.uniform(1.0, 1.1), 20 * rng.uniform(1.0, 1.1)]
    assert clock.sleeps == waits and 7.0 <= waits[0] <= 7.7
    assert log == [f"asking: attempt 1/3 failed (429 RESOURCE_EXHAUSTED); retrying in {waits[0]:.1f} s as the "
                   "server asked",
                   f"asking: attempt 2/3 failed (503 UNAVAILABLE); retrying in {waits[1]:.1f} s as the server asked"]


def test_each_attempt_waits_only_as_long_as_the_total_limit_still_allows():
    clock, log, timeouts = Clock(), [], []
    c = client_with(clock, log, Low(), retries=3, timeout_s=5.0, total_timeout_s=10.5, backoff_s=8.0)
    # waits 4 (half the cap 8), then the clock stands at 4: 4 + 8 = 12 >= 10.5, so it gives up
    with pytest.raises(TransientError) as e:
        c._call(failing(api_error(500, "INTERNAL"), api_error(500, "INTERNAL"), timeouts=timeouts), "asking")
    assert timeouts == [5000, 5000] and clock.sleeps == [4.0]
    assert str(e.value) == ("asking gave up after 2 of 4 attempts in 4 s (last: 500 INTERNAL): the next wait (8.0 s) "
                            "would pass the total limit of 10.5 s per request (--total-timeout)")
    # 9 s already gone of 10.5: the attempt may wait 1.5 s; at 10.4995 s, 0.5 ms, sent as the 1 ms floor
    for start, sent in ((9.0, 1500), (10.4995, 1)):
        timeouts.clear()
        c2 = client_with(Clock(), log, Low(), retries=0, timeout_s=5.0, total_timeout_s=10.5)
        t = iter([0.0, start])
        c2._clock = lambda: next(t)
        c2._call(failing(timeouts=timeouts), "asking")
        assert timeouts == [sent]


def test_a_wait_that_just_reaches_the_total_limit_gives_up():
    clock, log = Clock(), []
    c = client_with(clock, log, Low(), retries=5, total_timeout_s=10.0)
    asked = api_error(429, "RESOURCE_EXHAUSTED", headers={"Retry-After": "4"})
    with pytest.raises(TransientError) as e:
        c._call(failing(asked, asked, asked), "asking")
    # waits 4, 4 (clock at 8), then 8 + 4 = 12 >= 10; and at 6 + 4 = 10 exactly it gives up too
    assert clock.sleeps == [4.0, 4.0]
    assert str(e.value) == ("asking gave up after 3 of 6 attempts in 8 s (last: 429 RESOURCE_EXHAUSTED): the next "
                            "wait (4.0 s as the server asked) would pass the total limit of 10 s per request "
                            "(--total-timeout)")
    clock = Clock()
    c = client_with(clock, log, Low(), retries=5, total_timeout_s=8.0)
    with pytest.raises(TransientError, match=r"gave up after 2 of 6 attempts in 4 s"):
        c._call(failing(asked, asked, asked), "asking")
    assert clock.sleeps == [4.0]


def test_the_last_failure_is_named_in_each_kind_of_stop():
    req = cl._httpx.Request("POST", "http://127.0.0.1/x")
    cases = [(errors.UnknownApiResponseError("cut"), "malformed JSON response"),
             (json.JSONDecodeError("Expecting value", "{", 1), "malformed JSON response"),
             (cl._httpx.ConnectTimeout("t", request=req), "could not connect within 2.5 s (ConnectTimeout)"),
             (cl._httpx.ReadTimeout("t", request=req), "no answer within 0.25 s (ReadTimeout)"),
             (cl._httpx.WriteTimeout("t", request=req), "no answer within 0.25 s (WriteTimeout)"),
             (cl._httpx.ConnectError("refused", request=req), "ConnectError"),
             (cl._httpx.RemoteProtocolError("eof", request=req), "RemoteProtocolError")]
    for exc, last in cases:
        clock, log = Clock(), []
        c = client_with(clock, log, Low(), retries=1, timeout_s=0.25, connect_timeout_s=2.5)
        with pytest.raises(TransientError) as e:
            c._call(failing(exc, exc), "asking")
        assert str(e.value) == f"asking still failing after 2 attempts (last: {last})"
        assert log == [f"asking: attempt 1/2 failed ({last}); retrying in 0.5 s"]
    clock, log = Clock(), []
    with pytest.raises(TransientError) as e:
        client_with(clock, log, retries=0)._call(failing(api_error(503, "UNAVAILABLE")), "asking")
    assert str(e.value) == "asking still failing after 1 attempts (last: 503 UNAVAILABLE)" and log == []


def test_errors_that_retrying_cannot_fix_end_the_call_at_once():
    for exc, cls, line in [
        (api_error(404, "NOT_FOUND", "models/gemini-9 is not found"), GeminiError,
         "asking failed: 404 NOT_FOUND: models/gemini-9 is not found"),
        (api_error(400, "INVALID_ARGUMENT", "seed must be an integer"), GeminiError,
         "asking failed: 400 INVALID_ARGUMENT: seed must be an integer"),
        (api_error(403, "PERMISSION_DENIED", "no"), AuthError,
         "Gemini rejected the API key (403 PERMISSION_DENIED) during asking"),
        (api_error(400, "INVALID_ARGUMENT", "API key not valid"), AuthError,
         "Gemini rejected the API key (400 INVALID_ARGUMENT) during asking"),
    ]:
        clock, log = Clock(), []
        attempts = []
        with pytest.raises(cls) as e:
            client_with(clock, log)._call(lambda http: attempts.append(1) or (_ for _ in ()).throw(exc), "asking")
        assert type(e.value) is cls and str(e.value) == line and attempts == [1] and log == []


def test_an_answer_past_the_wall_clock_limit_names_the_attempt():
    clock, log = Clock(), []
    c = client_with(clock, log, Low(), retries=5, total_timeout_s=0.3, backoff_s=0.1)
    slow = [api_error(503, "UNAVAILABLE")]

    def fn(http):
        if slow:
            raise slow.pop()
        time.sleep(2)

    with pytest.raises(TransientError) as e:
        c._call(fn, "asking")
    assert str(e.value) == ("asking gave up after 2 of 6 attempts: no complete answer within the total limit of "
                            "0.3 s per request (--total-timeout; the server may be sending its answer too slowly)")


def test_generate_sends_each_setting_and_names_its_calls(monkeypatch):
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")  # must not reroute an API-key client
    with FakeGemini(script=["ok", "ok", "503"]) as fake:
        c = GeminiClient(MODEL, VALID_KEY, base_url=fake.url, sleep=lambda s: None, log=lambda s: None, retries=0)
        out = c.generate("p", seed=9, temperature=0.25, max_output_tokens=900, thinking_budget=0)
        c.generate("p")
        with pytest.raises(TransientError) as e:
            c.generate("p")
        bodies = [call["body"]["generationConfig"] for call in fake.generate_calls()]
        assert len(bodies) == 3 and fake.keys_seen == [VALID_KEY] * 3  # the SDK does not retry the 503 itself
    assert bodies[0] == {"temperature": 0.25, "seed": 9, "maxOutputTokens": 900,
                         "thinkingConfig": {"thinking_budget": 0}}
    assert bodies[1] == {"temperature": 1.0}
    assert out.model_version == "fake" and out.text == make_sonnet(9)
    assert str(e.value) == "generate_content on gemini-2.5-flash still failing after 1 attempts (last: 503 UNAVAILABLE)"
    with FakeGemini(script=["503"], models=(MODEL,)) as fake:
        c = GeminiClient("gemini-9", VALID_KEY, base_url=fake.url, retries=0)
        with pytest.raises(GeminiError) as e:
            c.check_access()
    assert str(e.value) == ("checking access to gemini-9 failed: 404 NOT_FOUND: models/gemini-9 is not found for API "
                            "version v1beta")


def test_an_answer_is_read_into_text_finish_block_usage_and_version():
    from google.genai import types

    def answer(payload):
        c = GeminiClient(MODEL, VALID_KEY)
        c._call = lambda fn, what: types.GenerateContentResponse.model_validate(payload)
        return c.generate("p")

    usage = {"promptTokenCount": 3, "candidatesTokenCount": 5, "thoughtsTokenCount": 7, "totalTokenCount": 15}
    counts = {"prompt_tokens": 3, "output_tokens": 5, "thinking_tokens": 7, "total_tokens": 15}
    parts = [{"text": "plan", "thought": True}, {"text": "Shall I"}, {"text": ""}, {"inlineData": {"data": "AA=="}},
             {"text": " compare"}]
    got = answer({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "MAX_TOKENS"}],
                  "usageMetadata": usage, "modelVersion": "m-1"})
    assert got == Completion("Shall I compare", "MAX_TOKENS", None, counts, "m-1")
    for finish in ("SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY"):
        got = answer({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": finish}]})
        assert (got.text, got.blocked) == ("x", f"candidate blocked: {finish}")
    assert answer({"candidates": [{"finishReason": "OTHER"}]}) == Completion("", "OTHER", None, cl._usage(None), None)
    assert answer({"candidates": [{"content": {"role": "model"}, "finishReason": "STOP"}]}).text == ""
    assert answer({"usageMetadata": usage, "modelVersion": "m-2"}) == Completion("", None, None, counts, "m-2")
    assert answer({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "candidates": [
        {"content": {"parts": [{"text": "x"}]}, "finishReason": "STOP"}], "modelVersion": "m-3"}) == \
        Completion("", None, "prompt blocked: PROHIBITED_CONTENT", cl._usage(None), "m-3")
    assert answer({"promptFeedback": {}, "candidates": [{"content": {"parts": [{"text": "y"}]},
                                                          "finishReason": "STOP"}]}).text == "y"


def test_the_flags_as_help_shows_them(monkeypatch):
    monkeypatch.delenv("GEMINI_BASE_URL", raising=False)
    monkeypatch.delenv("MINIGPT2_DATA_DIR", raising=False)
    p = gen.build_parser()
    assert p.description == "Generate synthetic Shakespearean sonnets from a Gemini teacher."
    teachers = ("gemini-2.5-flash-lite", "gemini-2.5-flash", "gemini-2.5-pro")
    flags = {a.option_strings[0]: (a.type, a.default, a.required, a.choices, a.help) for a in p._actions[1:]}
    assert flags == {
        "--teacher": (None, None, True, teachers, "Gemini model to ask"),
        "--n": (int, None, True, None, "number of sonnets to keep (after filtering)"),
        "--out": (Path, None, True, None,
                  "JSONL output; re-running with it resumes; its summary goes to <out>.summary.json"),
        "--concurrency": (int, 8, False, None, "requests in flight at once"),
        "--max-requests": (int, None, False, None, "cap on ids used in all (default 2N+10)"),
        "--seed": (int, 0, False, None, "base seed for prompts and sampling"),
        "--temperature": (float, 1.0, False, None, "sampling temperature"),
        "--max-output-tokens": (int, None, False, None, "cap on output (thinking included)"),
        "--thinking-budget": (int, None, False, None, "thinking tokens allowed (0 turns thinking off on "
                              "flash/flash-lite; default: model's own)"),
        "--retries": (int, 5, False, None, "retries per request on 429/5xx/time-outs/malformed answers"),
        "--timeout": (float, 120.0, False, None, "seconds one attempt waits for its answer"),
        "--connect-timeout": (float, 10.0, False, None, "seconds one attempt may take to connect"),
        "--total-timeout": (float, 300.0, False, None,
                            "seconds one request may take in all, retries and waits included"),
        "--data-dir": (Path, Path("data"), False, None,
                       "folder with the held-out sonnet files (default $MINIGPT2_DATA_DIR or ./data)"),
        "--no-leak-filter": (None, False, False, None, "do not compare against held-out sonnets"),
        "--dup-threshold": (float, 0.5, False, None, "8-gram Jaccard that makes a near-duplicate"),
        "--leak-threshold": (float, 0.5, False, None, "8-gram overlap with a held-out sonnet that makes a leak"),
        "--base-url": (None, None, False, None,
                       "API endpoint override, e.g. a local fake server (default $GEMINI_BASE_URL or Google's)"),
        "--no-progress": (None, False, False, None, "hide the progress bar"),
    }
    args = p.parse_args(["--teacher", "gemini-2.5-pro", "--n", "3", "--out", "o", "--no-leak-filter", "--no-progress"])
    assert (args.no_leak_filter, args.no_progress, args.out) == (True, True, Path("o"))
    with pytest.raises(SystemExit):
        p.parse_args(["--teacher", "gemini-9", "--n", "3", "--out", "o"])


def test_retry_lines_go_to_stderr_by_default(capsys):
    c = GeminiClient(MODEL, VALID_KEY)
    assert c._log is cl._stderr and c._sleep is time.sleep and c._clock is time.monotonic
    cl._stderr("asking: attempt 1/6 failed")
    assert capsys.readouterr() == ("", "asking: attempt 1/6 failed\n")


def test_each_call_sends_the_attempts_own_time_limit():
    # The clock says 297.5 s of the 300 s total are gone when the attempt starts: it may wait 2.5 s, not 30 s.
    seen = []

    class Seen(GeminiClient):
        def _short_connect(self, request):
            seen.append(dict(request.extensions["timeout"]))
            super()._short_connect(request)

    with FakeGemini() as fake:
        for call in ("check_access", "generate"):
            ticks = iter([0.0, 297.5])
            c = Seen(MODEL, VALID_KEY, base_url=fake.url, timeout_s=30.0, connect_timeout_s=10.0, retries=0,
                     clock=lambda: next(ticks))
            getattr(c, call)(*(("p",) if call == "generate" else ()))
    assert seen == [{"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}] * 2


def test_the_client_defaults_six_attempts_waits_capped_at_60_s_and_300_s_in_all():
    clock, log = Clock(1000.0), []  # a monotonic clock far from 0: only differences count
    c = GeminiClient(MODEL, VALID_KEY, sleep=clock.sleep, clock=clock, log=log.append)
    c._rng = Low()
    with pytest.raises(TransientError) as e:
        c._call(failing(*[api_error(503, "UNAVAILABLE")] * 6), "asking")
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0]  # half of 1, 2, 4, 8, 16 s
    assert str(e.value) == "asking still failing after 6 attempts (last: 503 UNAVAILABLE)"
    asked = api_error(429, "RESOURCE_EXHAUSTED", headers={"Retry-After": "300"})
    with pytest.raises(TransientError, match=r"the next wait \(300\.0 s as the server asked\) would pass the total "
                                             r"limit of 300 s per request"):
        c._call(failing(asked), "asking")
    request = type("Q", (), {"extensions": {}})()
    c._short_connect(request)
    assert request.extensions == {"timeout": {"connect": 10.0}}
    clock = Clock(1000.0)
    c = client_with(clock, [], Low(), retries=7, total_timeout_s=1000.0)
    c._call(failing(*[api_error(503, "UNAVAILABLE")] * 7), "asking")
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]  # the 7th cap is min(60, 64) = 60


def test_time_is_measured_from_the_calls_start_on_any_clock():
    for start in (0.0, 5000.0):
        clock, timeouts = Clock(start), []
        c = client_with(clock, [], Low(), retries=1, timeout_s=5.0, total_timeout_s=10.5, backoff_s=8.0)
        c._call(failing(api_error(500, "INTERNAL"), timeouts=timeouts), "asking")
        assert clock.sleeps == [4.0] and timeouts == [5000, 5000], start  # 4 s of 10.5 gone: 5 s still allowed


def test_the_wall_clock_limit_counts_the_time_of_earlier_attempts():
    c = client_with(Clock(), [], Low(), retries=1, total_timeout_s=0.3, backoff_s=0.01)
    calls = []

    def fn(http):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.25)
            raise api_error(503, "UNAVAILABLE")
        time.sleep(0.4)  # 0.65 s in all: past the 0.3 s limit, though this attempt alone is not
        return "done"

    with pytest.raises(TransientError, match=r"gave up after 2 of 2 attempts: no complete answer within the total "
                                             r"limit of 0\.3 s"):
        c._call(fn, "asking")

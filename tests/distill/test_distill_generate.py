"""The real google-genai SDK against a local fake Gemini server: retries, faults, keys, resume after a kill."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.check import read_sonnet_texts
from distill.client import AuthError, GeminiClient, GeminiError, TransientError
from distill.dedup import DedupIndex, jaccard, load_held_out, normalize, overlap, shingles
from distill.generate import NotEnoughKept, TeacherMismatch, strip_chat_wrapping, main, make_prompt, read_records, run
from distill.records import SyntheticFileError
from distill.summary import summarize
from distill.prices import PRICES, estimate_cost
from tests import ROOT
from tests.fakegemini import VALID_KEY, FakeGemini, make_sonnet

FIXTURES = ROOT / "tests" / "fixtures" / "distill"
MODEL = "gemini-2.5-flash"


def held_out_sonnet() -> str:
    return read_sonnet_texts(FIXTURES / "TRUE_sonnets_held_out_dev.txt")[0][1]


def client(fake: FakeGemini, sleeps: list | None = None, **kw) -> GeminiClient:
    sleeps = sleeps if sleeps is not None else []
    return GeminiClient(MODEL, VALID_KEY, base_url=fake.url, sleep=sleeps.append, seed=0, **kw)


def dedup() -> DedupIndex:
    return DedupIndex(load_held_out(FIXTURES))


# --- the client over the SDK ----------------------------------------------------------------------------


def test_success_reads_text_finish_and_usage_with_thinking():
    with FakeGemini() as fake:
        out = client(fake).generate("write a sonnet", seed=11, temperature=0.7)
        call = fake.generate_calls()[0]
    assert call["path"] == f"/v1beta/models/{MODEL}:generateContent"
    assert call["body"]["generationConfig"] == {"temperature": 0.7, "seed": 11}
    assert out.text == make_sonnet(11) and "Planning" not in out.text  # the thought part is not the answer
    assert out.finish_reason == "STOP" and out.blocked is None
    assert out.usage == {"prompt_tokens": 3, "output_tokens": len(out.text.split()), "thinking_tokens": 7,
                         "total_tokens": 3 + len(out.text.split()) + 7}


def test_429_then_success_backs_off_with_jitter():
    sleeps = []
    with FakeGemini(script=["429", "503", "ok"]) as fake:
        out = client(fake, sleeps, backoff_s=1.0).generate("p", seed=3)
        assert len(fake.generate_calls()) == 3
    assert out.text == make_sonnet(3)
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0  # exponential cap, jittered within it


def test_persistent_500s_give_up_after_the_retries():
    sleeps = []
    with FakeGemini(script=["500"] * 10) as fake:
        with pytest.raises(TransientError, match=r"still failing after 3 attempts \(last: 500 INTERNAL\)"):
            client(fake, sleeps, retries=2).generate("p")
        assert len(fake.generate_calls()) == 3
    assert len(sleeps) == 2


def test_the_sdk_does_not_retry_on_its_own():
    # With our retries off, one 503 is exactly one request: the SDK's retry_options is set to one attempt.
    with FakeGemini(script=["503"]) as fake:
        with pytest.raises(TransientError):
            client(fake, retries=0).generate("p")
        assert len(fake.generate_calls()) == 1


def test_malformed_json_is_retried():
    with FakeGemini(script=["malformed", "ok"]) as fake:
        out = client(fake).generate("p", seed=4)
        assert len(fake.generate_calls()) == 2
    assert out.text == make_sonnet(4)


def test_empty_and_blocked_candidates_come_back_marked():
    with FakeGemini(script=["empty", "blocked", "safety"]) as fake:
        c = client(fake)
        empty, blocked, safety = c.generate("p"), c.generate("p"), c.generate("p")
        assert len(fake.generate_calls()) == 3  # not retried: they are answers, not failures
    assert empty.text == "" and empty.blocked is None and empty.finish_reason == "STOP"
    assert blocked.text == "" and blocked.blocked == "prompt blocked: SAFETY"
    assert safety.blocked == "candidate blocked: SAFETY"


@pytest.mark.parametrize("fault", ["401", "403"])
def test_rejected_key_mid_run_is_an_auth_error_without_retries(fault):
    with FakeGemini(script=[fault]) as fake:
        with pytest.raises(AuthError, match=f"rejected the API key \\({fault}"):
            client(fake).generate("p")
        assert len(fake.generate_calls()) == 1


def test_check_access_catches_a_bad_key_and_a_bad_model():
    with FakeGemini(models=(MODEL,)) as fake:
        client(fake).check_access()
        with pytest.raises(AuthError, match=r"rejected the API key \(400 INVALID_ARGUMENT\)"):
            GeminiClient(MODEL, "wrong-key", base_url=fake.url).check_access()
        with pytest.raises(GeminiError, match="404 NOT_FOUND"):
            GeminiClient("gemini-9", VALID_KEY, base_url=fake.url).check_access()
        assert fake.generate_calls() == []


# --- the generation run ------------------------------------------------------------------------------------


def test_run_keeps_exactly_n_and_records_rejections(tmp_path):
    out = tmp_path / "synth.jsonl"
    script = ["leak", "ok", "dup", "empty", "blocked", "429"]
    with FakeGemini(script=script, leak_text=held_out_sonnet()) as fake:
        summary = run(MODEL, 10, out, client(fake), dedup(), concurrency=1, progress=False)
        calls = len(fake.generate_calls())
    records = [json.loads(line) for line in out.read_text().splitlines()]
    kept = [r for r in records if r["status"] == "kept"]
    assert len(kept) == 10 and len({r["id"] for r in records}) == len(records) == 14
    reasons = sorted(r["reason"].split(":")[0] for r in records if r["status"] == "rejected")
    assert reasons == ["empty response (finish STOP)", "leak", "near-duplicate", "prompt blocked"]
    assert calls == 15  # 14 answers + one 429 retried
    assert summary["kept"] == 10 and summary["requests"] == 14 and summary["tokens"]["thinking"] == 7 * 14
    assert summary["perfect"] == sum(r["perfect"] for r in kept) and 0 < summary["perfect_rate"] < 1
    assert summary["cost_usd"] == pytest.approx(estimate_cost(
        MODEL, summary["tokens"]["input"], summary["tokens"]["output"], 7 * 14))
    assert [r["id"] for r in records] == [f"{i:06d}" for i in range(14)]  # id order, one request at a time too
    first = kept[0]
    assert set(first) >= {"id", "teacher", "prompt", "text", "usage", "timestamp", "perfect"}
    assert first["teacher"] == MODEL and first["prompt"] == make_prompt(first["seed"])

    # A second run with the same --n asks for nothing: rejected ids are not retried, kept ones not redone.
    with FakeGemini() as fake:
        run(MODEL, 10, out, client(fake), dedup(), progress=False)
        assert fake.generate_calls() == []
    # A larger --n resumes after the last id.
    with FakeGemini() as fake:
        run(MODEL, 12, out, client(fake), dedup(), concurrency=4, progress=False)
        assert len(fake.generate_calls()) == 2
    ids = [r["id"] for r in read_records(out)]
    assert len(ids) == len(set(ids)) == 16


def test_run_stops_at_max_requests_and_says_why(tmp_path):
    with FakeGemini(script=["leak"] * 20, leak_text=held_out_sonnet()) as fake:
        with pytest.raises(NotEnoughKept, match=r"kept only 0 of 3 sonnets after 5 requests.*'leak': 5"):
            run(MODEL, 3, tmp_path / "o.jsonl", client(fake), dedup(), max_requests=5, progress=False)


def test_persistent_failure_stops_the_run_and_keeps_finished_work(tmp_path):
    out = tmp_path / "o.jsonl"
    with FakeGemini(script=["ok", "ok"] + ["503"] * 50) as fake:
        with pytest.raises(TransientError):
            run(MODEL, 10, out, client(fake, retries=1), dedup(), concurrency=1, progress=False)
    assert [r["status"] for r in read_records(out)] == ["kept", "kept"]


def test_resume_rejects_a_file_from_another_teacher(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text(json.dumps({"id": "000000", "status": "kept", "teacher": "gemini-2.5-pro", "text": "x"}) + "\n")
    with pytest.raises(TeacherMismatch, match=r"o\.jsonl: holds sonnets from teacher 'gemini-2.5-pro', not --teacher "
                                              r"'gemini-2.5-flash': resume it with --teacher gemini-2.5-pro"):
        read_records(out, MODEL)
    out.write_text(json.dumps({"id": "000000", "text": "x"}) + "\n")
    with pytest.raises(SyntheticFileError, match=r"o\.jsonl:1: expected a JSON object with 'id', 'status'"):
        read_records(out, MODEL)


# --- the command line: keys --------------------------------------------------------------------------------


def cli(fake, out, n=3, extra=()):
    return ["--teacher", MODEL, "--n", str(n), "--out", str(out), "--base-url", fake.url,
            "--data-dir", str(FIXTURES), "--no-progress", *extra]


def test_no_key_fails_before_any_request(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with FakeGemini() as fake:
        assert main(cli(fake, tmp_path / "o.jsonl")) == 1
        assert fake.requests == []
    assert "no Gemini API key: set GEMINI_API_KEY" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_rejected_key_fails_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-not-a-real-key")
    with FakeGemini() as fake:
        assert main(cli(fake, tmp_path / "o.jsonl")) == 1
        assert [r["method"] for r in fake.requests] == ["GET"]  # the token-free models.get, nothing else
    err = capsys.readouterr().err
    assert "rejected the API key" in err and "AIza-not-a-real-key" not in err
    assert not (tmp_path / "o.jsonl").exists()


def test_key_is_sent_but_never_printed_or_written(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_API_KEY", VALID_KEY)
    out = tmp_path / "o.jsonl"
    with FakeGemini() as fake:
        assert main(cli(fake, out)) == 0
        assert set(fake.keys_seen) == {VALID_KEY}
    printed = capsys.readouterr()
    assert "kept 3 of 3" in printed.out and "thinking 21" in printed.out and "estimated cost: $" in printed.out
    assert VALID_KEY not in printed.out + printed.err + out.read_text()


def test_missing_held_out_data_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEMINI_API_KEY", VALID_KEY)
    with FakeGemini() as fake:
        args = cli(fake, tmp_path / "o.jsonl")
        args[args.index("--data-dir") + 1] = str(tmp_path)
        assert main(args) == 1
        assert fake.requests == []
    assert "no held-out sonnets in" in capsys.readouterr().err


# --- a kill midway, then resume -----------------------------------------------------------------------------


def test_killed_run_resumes_to_exactly_n_unique_records(tmp_path):
    out, n = tmp_path / "synth.jsonl", 30
    env = {**os.environ, "GEMINI_API_KEY": VALID_KEY, "PYTHONPATH": str(ROOT)}
    # ~10 answers a second: the kill after 8 lands well before 30, even on a slow machine.
    with FakeGemini(delay_s=0.2) as fake:
        cmd = [sys.executable, "-m", "distill.generate", *cli(fake, out, n=n, extra=("--concurrency", "2"))]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 8):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = out.read_text().count("\n")
        assert 8 <= before < n, "the kill should land midway"
        with open(out, "a") as f:  # what a kill in the middle of a write leaves behind
            f.write('{"id": "0000')
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "dropped a partial last line" in done.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == n
    assert all(r["status"] == "kept" for r in records)


# --- dedup, cleaning, prices -----------------------------------------------------------------------------


def test_dedup_scores():
    assert normalize("O'er the\nSEA,  love!") == "o er the sea love"
    a, b = shingles(make_sonnet(1)), shingles(make_sonnet(2))
    assert jaccard(a, b) < 0.1  # different seeds are different sonnets
    edited = make_sonnet(1).replace("day", "way").upper()
    assert jaccard(a, shingles(edited)) > 0.8
    prompt = read_sonnet_texts(FIXTURES / "sonnets_held_out.txt")[0][1]  # 3 lines only
    recital = prompt + "\n" + "\n".join(make_sonnet(3).split("\n")[3:])
    assert overlap(shingles(recital), shingles(prompt)) > 0.95 > 0.5 > jaccard(shingles(recital), shingles(prompt))
    index = dedup()
    assert index.reject_reason(recital).startswith("leak: overlap 1.00 with held-out sonnets_held_out.txt#")
    assert index.reject_reason(make_sonnet(1)) is None
    index.add("000001", make_sonnet(1))
    assert index.reject_reason(edited).startswith("near-duplicate: jaccard")


def test_clean_text_strips_chat_wrapping():
    raw = "```\n**Sonnet of the Tide**\n\n" + make_sonnet(2) + "\n```\n"
    assert strip_chat_wrapping(raw) == make_sonnet(2)
    assert strip_chat_wrapping("Sonnet 12\n" + make_sonnet(2)) == make_sonnet(2)


def test_prompts_vary_and_prices_count_thinking_as_output():
    assert len({make_prompt(s) for s in range(200)}) > 180
    assert set(PRICES) == {"gemini-2.5-flash-lite", "gemini-2.5-flash", "gemini-2.5-pro"}
    assert estimate_cost("gemini-2.5-pro", 1_000_000, 0, 1_000_000) == pytest.approx(1.25 + 10.0)
    assert estimate_cost("gemini-9", 1, 1, 1) is None


def test_summary_counts_rejections_by_kind():
    recs = [{"status": "kept", "text": make_sonnet(1), "usage": {"prompt_tokens": 1}},
            {"status": "rejected", "reason": "leak: overlap 0.9 with x", "usage": {}},
            {"status": "rejected", "reason": "near-duplicate: jaccard 0.7 with 1", "usage": {}}]
    s = summarize(recs, MODEL)
    assert s["rejected"] == {"leak": 1, "near-duplicate": 1} and s["perfect_rate"] == 1.0
    assert s["requests"] == 3 and s["kept"] == 1 and s["tokens"]["input"] == 1


def test_unreachable_server_is_retried_then_reported():
    with FakeGemini() as fake:
        url = fake.url  # the port is closed once the server stops
    sleeps = []
    c = GeminiClient(MODEL, VALID_KEY, base_url=url, sleep=sleeps.append, retries=2, timeout_s=5)
    with pytest.raises(TransientError, match=r"after 3 attempts \(last: ConnectError\)"):
        c.generate("p")
    assert len(sleeps) == 2

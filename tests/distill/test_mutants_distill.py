"""What the distillation's filter and file readers tell a user, pinned on small hand-made inputs where one-line
slips give other output (the survivors of `tools/mutate.py --auto` on distill/dedup.py, distill/records.py and
distill/summary.py). Expected values are worked out by hand in the comments."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill import dedup, records
from distill.dedup import DedupIndex, jaccard, load_held_out, normalize, overlap, shingles
from distill.records import SyntheticFileError

# ---------------------------------------------------------------------------------------------- dedup.py


def test_normalize_keeps_lower_case_letters_and_single_spaces():
    assert normalize("  O\u2019er the\r\nSEA,  love!! 42 x-y ") == "o er the sea love x y"
    assert normalize("...--") == ""
    assert normalize("Abc") == "abc"


def test_shingles_are_the_character_ngrams_of_the_normalised_text():
    # "ab, cdefghi" -> "ab cdefghi" (10 chars): default n = 8 gives the 3 windows at 0, 1, 2
    assert shingles("AB, cdefghi") == frozenset({"ab cdefg", "b cdefgh", " cdefghi"})
    assert shingles("abcde", 3) == frozenset({"abc", "bcd", "cde"})
    assert shingles("abcd", 4) == frozenset({"abcd"})  # exactly n: the text itself
    assert shingles("ab", 3) == frozenset({"ab"})  # shorter than n: the text itself
    assert shingles("!!", 3) == frozenset() and shingles("", 3) == frozenset()


def test_jaccard_and_overlap_by_hand():
    a, b = frozenset("abc"), frozenset("bcde")
    assert jaccard(a, b) == 2 / 5  # {b, c} of {a, b, c, d, e}
    assert overlap(a, b) == 2 / 3  # {b, c} of the smaller set, 3
    assert overlap(b, a) == 2 / 3
    assert jaccard(frozenset(), frozenset()) == 0.0
    assert jaccard(frozenset(), b) == 0.0
    assert overlap(frozenset(), b) == 0.0 and overlap(a, frozenset()) == 0.0
    assert overlap(frozenset(), frozenset()) == 0.0


def test_dedup_defaults_are_the_documented_thresholds():
    index = DedupIndex()
    assert (index.dup_threshold, index.leak_threshold, index.n, index.held_out) == (0.5, 0.5, 8, [])
    # the default n is 8 in the scores too: "abcdefghij" and "xbcdefghiy" share 8-grams only in "bcdefghi"
    index.add("k", "abcdefghij")
    # 8-grams: {abcdefgh, bcdefghi, cdefghij} vs {xbcdefgh, bcdefghi, cdefghiy}: 1 of 5 (n = 7 would give 2 of 6)
    assert index.reject_reason("xbcdefghiy") is None
    # "abcdefghijk" has 4 8-grams, the kept text's 3 among them: jaccard 3/4 = 0.75 (n = 9: 2/3, n = 7: 4/5)
    assert index.reject_reason("abcdefghijk") == "near-duplicate: jaccard 0.75 with k"


def test_reject_reason_at_exactly_the_thresholds_and_in_order():
    # n = 2: "abc" -> {ab, bc}; "abd" -> {ab, bd}: overlap 1/2 = 0.5 (a leak at >= 0.5), jaccard 1/3
    held = [("h1", "xyz"), ("h2", "ABD"), ("h3", "abc")]
    index = DedupIndex(held, n=2)
    assert index.reject_reason("abc") == "leak: overlap 0.50 with held-out h2"  # h2 comes first, h3 would be 1.00
    assert DedupIndex(held[:2], n=2, leak_threshold=0.51).reject_reason("abc") is None
    index = DedupIndex([("h", "qrs")], n=2)
    assert index.reject_reason("abcd") is None
    index.add("first", "abce")  # {ab, bc, ce} and {ab, bc, cd}: 2 of 4 = 0.5, a near-duplicate at >= 0.5
    index.add("second", "abcd")
    assert index.reject_reason("abcd") == "near-duplicate: jaccard 0.50 with first"
    assert DedupIndex(n=2, dup_threshold=0.51).reject_reason("abcd") is None
    index = DedupIndex(n=2, dup_threshold=0.51)
    index.add("first", "abce")
    assert index.reject_reason("abcd") is None
    # two thirds: the score is printed with 2 decimals
    index = DedupIndex([("h", "abcz")], n=2)  # {ab, bc, cz}; "abcd": {ab, bc, cd} -> 2/3
    assert index.reject_reason("ABCD!") == "leak: overlap 0.67 with held-out h"


def test_a_leak_is_reported_before_a_near_duplicate():
    index = DedupIndex([("h", "abd")], n=2)
    index.add("k", "abc")
    assert index.reject_reason("abc") == "leak: overlap 0.50 with held-out h"


def test_load_held_out_names_each_text_by_file_and_sonnet(tmp_path):
    (tmp_path / "sonnets_held_out.txt").write_text("header\n\n7\n\nOne line\nTwo line\n\n9\n\nThree\n")
    (tmp_path / "TRUE_sonnets_held_out_dev.txt").write_text("Alpha\nBeta\n\nGamma\n")
    (tmp_path / "sonnets_held_out_dev.txt").mkdir()  # a folder of that name is not read
    assert load_held_out(str(tmp_path)) == [
        ("TRUE_sonnets_held_out_dev.txt#1", "Alpha\nBeta"), ("TRUE_sonnets_held_out_dev.txt#2", "Gamma"),
        ("sonnets_held_out.txt#7", "One line\nTwo line"), ("sonnets_held_out.txt#9", "Three")]
    assert dedup.HELD_OUT_FILES == ("TRUE_sonnets_held_out_dev.txt", "sonnets_held_out_dev.txt",
                                    "sonnets_held_out.txt")
    assert load_held_out(tmp_path / "nothing") == []


# ---------------------------------------------------------------------------------------------- records.py


def test_read_file_bytes_refusals(tmp_path, monkeypatch):
    f = tmp_path / "a.jsonl"
    f.write_bytes(b"x")
    assert records.read_file_bytes(str(f)) == b"x"
    with pytest.raises(SyntheticFileError) as e:
        records.read_file_bytes(tmp_path)
    assert str(e.value) == f"{tmp_path}: is a folder, not a synthetic sonnet file; give the path of a file"
    with pytest.raises(SyntheticFileError) as e:
        records.read_file_bytes(tmp_path, "sonnet")
    assert str(e.value) == f"{tmp_path}: is a folder, not a sonnet file; give the path of a file"
    with pytest.raises(SyntheticFileError) as e:
        records.read_file_bytes(tmp_path / "gone.jsonl")
    assert str(e.value) == f"{tmp_path / 'gone.jsonl'}: no such synthetic sonnet file"
    with pytest.raises(SyntheticFileError) as e:
        records.read_file_bytes(tmp_path / "gone.txt", "sonnet")
    assert str(e.value) == f"{tmp_path / 'gone.txt'}: no such sonnet file"

    def raising(error):
        def read_bytes(self):
            raise error
        return read_bytes

    monkeypatch.setattr(Path, "read_bytes", raising(PermissionError(13, "Permission denied")))
    with pytest.raises(SyntheticFileError) as e:
        records.read_file_bytes(f)
    assert str(e.value) == (f"{f}: no permission to read it; fix its permissions (chmod u+rw) or use another file")
    monkeypatch.setattr(Path, "read_bytes", raising(OSError(5, "Input/output error")))
    with pytest.raises(SyntheticFileError) as e:
        records.read_file_bytes(f)
    assert str(e.value) == f"{f}: cannot read it (Input/output error)"
    monkeypatch.setattr(Path, "read_bytes", raising(OSError("disk on fire")))
    with pytest.raises(SyntheticFileError) as e:
        records.read_file_bytes(f)
    assert str(e.value) == f"{f}: cannot read it (disk on fire)"
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_decode_text_allows_a_bom_and_names_the_line_of_a_bad_byte():
    assert records.decode_text("f", "\ufeff{}\n".encode("utf-8")) == "{}\n"
    assert records.decode_text("f", "\u00e9\n".encode("utf-8")) == "\u00e9\n"
    with pytest.raises(SyntheticFileError) as e:
        records.decode_text("f.jsonl", b'{"a": 1}\n{"b": 2}\n{"c": "\xe9"}\n\xff')
    assert str(e.value) == ("f.jsonl:3: not UTF-8 text (byte 0xe9); distill writes UTF-8 JSONL, so this is another "
                            "kind of file or a damaged one: restore it or use another file")
    assert e.value.__cause__ is None and e.value.__suppress_context__
    with pytest.raises(SyntheticFileError, match=r"^g:1: not UTF-8 text \(byte 0xff\); "):
        records.decode_text("g", b"\xff\n")
    with pytest.raises(SyntheticFileError, match=r"^g:3: not UTF-8 text \(byte 0xfe\); "):
        records.decode_text("g", b"\n\n\xfe")  # blank lines before it count too


def test_read_jsonl_records_and_refusals(tmp_path):
    f = tmp_path / "o.jsonl"
    f.write_text('{"text": "a"}\n\n  \n{"text": "b", "id": 3}\n')
    assert records.read_jsonl(f) == [(1, {"text": "a"}), (4, {"text": "b", "id": 3})]
    assert records.read_jsonl("p", '{"id": 1}\n', fields=("id",)) == [(1, {"id": 1})]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "a"}\n{"text": "\xe9"}\n')
    with pytest.raises(SyntheticFileError, match=rf"^{bad}:2: not UTF-8 text \(byte 0xe9\); distill writes"):
        records.read_jsonl(bad)
    cases = {
        '{"text": "a"}\n{"text": 1}\n': "p:2: expected a JSON object with a string field 'text'",
        '{"text": "a"}\n[1]\n': "p:2: expected a JSON object with a string field 'text'",
        '\n"text"\n': "p:2: expected a JSON object with a string field 'text'",
    }
    for raw, line in cases.items():
        with pytest.raises(SyntheticFileError) as e:
            records.read_jsonl("p", raw)
        assert str(e.value) == line
    with pytest.raises(SyntheticFileError) as e:
        records.read_jsonl("p", '{"id": 1}\n{"status": "kept"}\n', fields=("id", "text"))
    assert str(e.value) == "p:1: expected a JSON object with 'id', a string field 'text'"
    with pytest.raises(SyntheticFileError) as e:
        records.read_jsonl("p", '{"id": 1, "text": "t"}\n{"text": "t"}\n', fields=("id", "text"))
    assert str(e.value) == "p:2: expected a JSON object with 'id', a string field 'text'"
    with pytest.raises(SyntheticFileError) as e:
        records.read_jsonl("p", '{"id": 1, "text": "t"}\n{"id": 2, "text": "t"}\n{"id": 3, "te')
    assert str(e.value) == ("p:3: the last line is cut off (Unterminated string starting at), as an interrupted "
                            "distill.generate run leaves it; re-run distill.generate with the same --out to repair it")
    with pytest.raises(SyntheticFileError) as e:
        records.read_jsonl("p", '{"text": "t"}\n{"te\n{"text": "u"}\n')
    assert str(e.value) == ("p:2: not valid JSON (Unterminated string starting at); only a cut-off last line is left "
                            "by an interrupted run, so this file was edited or damaged: fix or delete that line")
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_text_key_ignores_spacing_and_line_breaks():
    assert records.text_key("  a  b\r\n\tc \n") == "a b c"


def test_check_unique_names_both_lines():
    ok = [(1, {"id": "1", "text": "a b"}), (2, {"id": "2", "status": "rejected", "text": "a  b"}),
          (3, {"id": "3", "text": "  "}), (4, {"id": "4", "text": "  "}), (5, {"id": "5", "text": None}),
          (6, {"id": "6", "text": None}), (7, {"id": "7"}), (8, {"id": "8", "status": "rejected", "text": "c"}),
          (9, {"id": "9", "text": "c"})]
    records.check_unique("p", ok)
    with pytest.raises(SyntheticFileError) as e:
        records.check_unique("p", ok + [(12, {"id": 5, "text": "z"})])
    assert str(e.value) == ("p:12: id '5' again (first at line 5); each request is recorded once: delete the "
                            "repeated line")
    with pytest.raises(SyntheticFileError) as e:
        records.check_unique("p", ok + [(11, {"id": "x", "text": "a\nb"})])
    assert str(e.value) == ("p:11: the same sonnet as line 1 (id 'x'); it would be counted and trained on twice: "
                            "delete one of them")
    with pytest.raises(SyntheticFileError) as e:  # line 9 has no status: kept, so its text counts
        records.check_unique("p", ok + [(10, {"id": "y", "status": "kept", "text": "c "})])
    assert str(e.value) == ("p:10: the same sonnet as line 9 (id 'y'); it would be counted and trained on twice: "
                            "delete one of them")


def test_id_order_compares_digit_runs_as_numbers():
    assert records.id_order("x-10") == ("x-", 10, "")
    assert records.id_order(7) == ("", 7, "")
    assert records.id_order("ab") == ("ab",)
    assert sorted(["x-10", "x-9", "x-100", "w-11"], key=records.id_order) == ["w-11", "x-9", "x-10", "x-100"]


def test_load_records_sorts_by_id_and_checks(tmp_path):
    rows = [{"id": "000010", "status": "kept", "text": "c"}, {"id": "000002", "status": "rejected"},
            {"id": "000009", "status": "kept", "text": "a"}]
    f = tmp_path / "o.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert records.load_records(f) == [(2, rows[1]), (3, rows[2]), (1, rows[0])]
    assert records.load_records("elsewhere.jsonl", data=f.read_bytes()) == [(2, rows[1]), (3, rows[2]), (1, rows[0])]
    with pytest.raises(SyntheticFileError) as e:
        records.load_records(f, fields=("id", "text"))
    assert str(e.value) == f"{f}:2: expected a JSON object with 'id', a string field 'text'"
    with pytest.raises(SyntheticFileError) as e:  # "status" is required by default
        records.load_records("q", data=b'{"id": 1, "text": "t"}\n')
    assert str(e.value) == "q:1: expected a JSON object with 'id', 'status'"
    with pytest.raises(SyntheticFileError) as e:
        records.load_records("q", data=b'{"id": 1, "status": "kept"}\n{"id": 1, "status": "kept"}\n')
    assert str(e.value).startswith("q:2: id '1' again (first at line 1)")
    with pytest.raises(SyntheticFileError) as e:
        records.load_records("q", data=b'{"id": 1, "status": "kept"}\n\xff\n')
    assert str(e.value).startswith("q:2: not UTF-8 text (byte 0xff)")


def test_file_teacher_is_the_one_teacher_or_a_refusal():
    assert records.file_teacher("p", []) is None
    same = [(1, {"teacher": "t1"}), (2, {"teacher": "t1"})]
    assert records.file_teacher("p", same) == "t1"
    with pytest.raises(SyntheticFileError) as e:
        records.file_teacher("p", same + [(5, {"teacher": "t2"}), (6, {"teacher": "t3"})])
    assert str(e.value) == "p:5: teacher 't2', but line 1 has 't1'; one file holds one teacher's sonnets"
    for bad in ({}, {"teacher": ""}, {"teacher": 3}):
        with pytest.raises(SyntheticFileError) as e:
            records.file_teacher("p", same + [(4, bad)])
        assert str(e.value) == ("p:4: expected a string field 'teacher' (which Gemini model wrote this record)")


# ---------------------------------------------------------------------------------------------- summary.py

from distill import summary as sm  # noqa: E402
from distill.prices import PRICES_DATE, PRICES_SOURCE  # noqa: E402
from tests.app.test_measures import PERFECT  # noqa: E402

PERFECT_TOO = PERFECT.replace("the", "a", 1)  # another perfect sonnet (one syllable for another)
SOURCE = "https://ai.google.dev/gemini-api/docs/pricing (via secondary pages; unverified)"


def scipy_wilson(k: int, n: int) -> tuple[float, float]:
    from scipy import stats as sps

    ci = sps.binomtest(k, n).proportion_ci(method="wilson")
    return ci.low, ci.high


def test_reason_kind_is_the_text_before_a_colon_or_a_parenthesis():
    assert sm.reason_kind("leak: overlap 0.93 with x") == "leak"
    assert sm.reason_kind("empty response (finish STOP)") == "empty response"
    assert sm.reason_kind("blocked (safety): PROHIBITED") == "blocked"
    assert sm.reason_kind("timeout") == "timeout"
    assert sm.reason_kind("") == "?" and sm.reason_kind(None) == "?"


def test_summarize_counts_tokens_versions_and_rejections():
    recs = [{"status": "kept", "text": PERFECT, "model_version": "v2",
             "usage": {"prompt_tokens": 10.9, "output_tokens": 20, "thinking_tokens": 3, "total_tokens": 33,
                       "cached": "n/a"}},
            {"status": "kept", "text": "one line", "model_version": "v1", "usage": None},
            {"status": "kept", "text": PERFECT, "model_version": "v2", "usage": {"output_tokens": 7}},
            {"status": "kept", "text": PERFECT, "model_version": ""},
            {"status": "rejected", "reason": "near-duplicate: jaccard 0.61 with y", "usage": {"prompt_tokens": 5}},
            {"status": "rejected", "reason": "leak: overlap 0.9 with z"},
            {"status": "rejected", "reason": "leak: overlap 0.7 with z"},
            {"status": "failed", "reason": "x: y"}]
    s = sm.summarize(recs, "gemini-2.5-flash-lite")
    # tokens: input int(10.9) + 5 = 15, output 20 + 7 = 27, thinking 3, total 33; "n/a" is not a count
    assert s == {
        "schema": 1, "teacher": "gemini-2.5-flash-lite", "model_versions": ["v1", "v2"],
        "requests": 8, "kept": 4, "rejected": {"leak": 2, "near-duplicate": 1},
        "perfect": 3, "perfect_rate": 0.75, "perfect_ci95": pytest.approx(list(scipy_wilson(3, 4)), rel=1e-12),
        "tokens": {"input": 15, "output": 27, "thinking": 3, "total": 33},
        "cost_usd": pytest.approx((15 * 0.10 + (27 + 3) * 0.40) / 1e6, rel=1e-12),  # 1.35e-05
        "prices": {"usd_per_1m_input": 0.10, "usd_per_1m_output": 0.40, "date": "2026-11-28", "source": SOURCE}}
    assert list(s["rejected"]) == ["leak", "near-duplicate"]  # sorted by kind
    none = sm.summarize([{"status": "rejected", "reason": "leak: 1"}], "gemini-9")
    assert (none["perfect_rate"], none["perfect_ci95"], none["cost_usd"]) == (None, None, None)
    assert none["prices"] == {"usd_per_1m_input": None, "usd_per_1m_output": None, "date": PRICES_DATE,
                              "source": PRICES_SOURCE}


def test_format_summary_is_these_four_lines():
    s = {"teacher": "gemini-2.5-flash", "kept": 3, "requests": 7, "perfect": 2, "perfect_rate": 2 / 3,
         "perfect_ci95": [0.2077, 0.9385], "rejected": {"leak": 1, "near-duplicate": 3},
         "tokens": {"input": 400, "output": 800, "thinking": 110, "total": 1310}, "cost_usd": 0.002395,
         "prices": {"usd_per_1m_input": 0.3, "usd_per_1m_output": 2.5, "date": "2026-11-28", "source": "src"}}
    assert sm.format_summary(s) == (
        "gemini-2.5-flash: kept 3 of 7 requests; rejected: leak: 1, near-duplicate: 3\n"
        "perfect sonnets among kept: 2/3 (66.7%, 95% CI 20.8-93.8%)\n"
        "tokens: input 400, output 800, thinking 110, total 1310\n"
        "estimated cost: $0.0024 at 0.3/2.5 USD per 1M tokens in/out (2026-11-28, src)")


def test_summary_path_is_beside_the_file():
    assert sm.summary_path("a/b.jsonl") == Path("a/b.jsonl.summary.json")
    assert sm.summary_path(Path("x")) == Path("x.summary.json")


def test_write_summary_adds_the_files_name_hash_outcome_and_time(tmp_path):
    import datetime as dt
    import hashlib

    jsonl = tmp_path / "f.jsonl"
    jsonl.write_bytes(b'{"id": 1}\n')
    path = sm.write_summary(jsonl, {"schema": 1, "teacher": "t"}, {"n": 2, "complete": False, "error": "boom"})
    assert path == tmp_path / "f.jsonl.summary.json"
    back = json.loads(path.read_text(encoding="utf-8"))
    updated = back.pop("updated")
    assert back == {"schema": 1, "teacher": "t", "file": "f.jsonl",
                    "jsonl_sha256": hashlib.sha256(b'{"id": 1}\n').hexdigest(),
                    "last_run": {"n": 2, "complete": False, "error": "boom"}}
    when = dt.datetime.fromisoformat(updated)
    assert updated.endswith("+00:00") and when.microsecond == 0
    assert abs((dt.datetime.now(dt.timezone.utc) - when).total_seconds()) < 600
    gone = sm.write_summary(tmp_path / "gone.jsonl", {})  # no file (yet): no hash, no outcome
    payload = json.loads(gone.read_text(encoding="utf-8"))
    assert (payload["jsonl_sha256"], payload["last_run"], payload["file"]) == (None, None, "gone.jsonl")


def _generated(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _row(rid: str, status: str = "kept", text: str = PERFECT, teacher: str = "gemini-2.5-pro") -> dict:
    return {"id": rid, "teacher": teacher, "status": status, "text": text if status == "kept" else None,
            "reason": None if status == "kept" else "leak: overlap 0.90 with h",
            "usage": {"prompt_tokens": 10, "output_tokens": 90}}


def test_summarize_file_and_read_summary_recompute_unless_the_summary_matches(tmp_path):
    import hashlib

    jsonl = _generated(tmp_path / "p.jsonl", [_row("000002", text="one line"), _row("000001"),
                                               _row("000003", "rejected")])
    s = sm.summarize_file(jsonl)
    assert (s["teacher"], s["requests"], s["kept"], s["perfect"], s["rejected"]) == (
        "gemini-2.5-pro", 3, 2, 1, {"leak": 1})
    digest = hashlib.sha256(jsonl.read_bytes()).hexdigest()
    fresh = {**s, "file": "p.jsonl", "jsonl_sha256": digest, "last_run": None, "updated": None}
    assert sm.read_summary(jsonl) == fresh  # no summary beside it
    beside = sm.summary_path(jsonl)
    for damaged in (b"{not json", b"\xff\xfe", b"[1, 2]", json.dumps({**s, "schema": 2, "jsonl_sha256": digest,
                                                                        "teacher": "old"}).encode(),
                    json.dumps({**s, "jsonl_sha256": "0" * 64, "teacher": "old"}).encode(),
                    json.dumps({**s, "teacher": "old"}).encode()):
        beside.write_bytes(damaged)
        assert sm.read_summary(str(jsonl)) == fresh, damaged
    beside.write_text(json.dumps({"schema": 1, "jsonl_sha256": digest, "teacher": "as written"}), encoding="utf-8")
    assert sm.read_summary(jsonl) == {"schema": 1, "jsonl_sha256": digest, "teacher": "as written"}
    empty = _generated(tmp_path / "e.jsonl", [])
    with pytest.raises(SyntheticFileError) as e:
        sm.summarize_file(empty)
    assert str(e.value) == f"{empty}: holds no records yet, so no teacher to summarise"


def test_teacher_rates_measured_from_the_file_or_the_studys_assumed():
    assert sm.STUDY_PERFECT_RATES == {"gemini-2.5-flash-lite": 0.56, "gemini-2.5-flash": 0.72,
                                      "gemini-2.5-pro": 0.75}
    assert sm.teacher_rates("gemini-2.5-flash-lite", None) == (0.56, 1.0, "the study's perfect rate 56%, assumed")
    assert sm.teacher_rates("gemini-2.5-flash", None) == (0.72, 1.0, "the study's perfect rate 72%, assumed")


def test_teacher_rates_and_requests_needed_from_a_real_file(tmp_path):
    # 5 requests: 3 kept, of which 2 perfect -> 2/5 perfect and 3/5 kept per request
    jsonl = _generated(tmp_path / "m.jsonl", [_row("000001"), _row("000002", text="one line"), _row("000003", text=PERFECT_TOO),
                                              _row("000004", "rejected"), _row("000005", "rejected")])
    assert sm.teacher_rates("gemini-2.5-pro", jsonl) == (0.4, 0.6, "measured: 2 perfect of 5 requests")
    assert sm.requests_needed("gemini-2.5-pro", jsonl, perfect=3) == 8  # ceil(3 / 0.4) = ceil(7.5)
    assert sm.requests_needed("gemini-2.5-pro", jsonl, kept=4) == 7  # ceil(4 / 0.6) = ceil(6.67)
    assert sm.requests_needed("gemini-2.5-pro", jsonl, perfect=2, kept=4) == 7  # the larger of 5 and 7
    assert sm.requests_needed("gemini-2.5-pro", jsonl, perfect=4, kept=3) == 10  # the larger of 10 and 5
    # nothing kept: the study's rate, every request kept
    none_kept = _generated(tmp_path / "r.jsonl", [_row("000001", "rejected")])
    assert sm.teacher_rates("gemini-2.5-pro", none_kept) == (0.75, 1.0, "the study's perfect rate 75%, assumed")
    assert sm.teacher_rates("gemini-2.5-pro", tmp_path / "missing.jsonl") == (
        0.75, 1.0, "the study's perfect rate 75%, assumed")
    assert sm.teacher_rates("gemini-2.5-pro", tmp_path) == (0.75, 1.0, "the study's perfect rate 75%, assumed")
    assert sm.requests_needed("gemini-2.5-flash", None, perfect=18, kept=20) == 25  # 18 / 0.72 = 25 exactly
    assert sm.requests_needed("gemini-2.5-flash", None, perfect=19) == 27  # ceil(26.39)
    assert sm.requests_needed("nobody", None, perfect=3, kept=5) == 5


def test_a_file_that_kept_sonnets_but_no_perfect_one_falls_back_to_the_studys_perfect_rate(tmp_path):
    """3 requests, 2 kept, none perfect: a measured perfect rate of 0 would need infinitely many requests (it was
    a ZeroDivisionError in the dry run's Gemini bill and in a short arm's note); the study's rate is assumed."""
    rows = [_row("000001", text="one line"), _row("000002", text="two lines\nonly"), _row("000003", "rejected")]
    pro = _generated(tmp_path / "gemini-2.5-pro.jsonl", rows)
    assert sm.teacher_rates("gemini-2.5-pro", pro) == (
        0.75, 2 / 3, "measured: 0 perfect of 3 requests; the study's perfect rate 75%, assumed")
    assert sm.requests_needed("gemini-2.5-pro", pro, perfect=3) == 4  # ceil(3 / 0.75)
    assert sm.requests_needed("gemini-2.5-pro", pro, perfect=3, kept=4) == 6  # ceil(4 / (2/3))
    other = _generated(tmp_path / "other.jsonl", [{**r, "teacher": "gemini-9"} for r in rows])
    assert sm.teacher_rates("gemini-9", other) == (
        1.0, 2 / 3, "measured: 0 perfect of 3 requests; no perfect rate known: every request assumed perfect")
    assert sm.requests_needed("gemini-9", other, perfect=5) == 5

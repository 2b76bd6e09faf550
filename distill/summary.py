"""The generation summary: what a teacher's JSONL file holds and cost, as JSON beside it.

`distill.generate` rewrites `<file>.summary.json` (e.g. `synth/flash.jsonl.summary.json`) atomically at the end of
every run, recomputed from the whole file, so after any number of resumes it describes the file, not the last
session. Report code reads it with `read_summary`; the schema (version 1):

    {"schema": 1, "file": "flash.jsonl", "jsonl_sha256": "...", "teacher": "gemini-2.5-flash",
     "model_versions": ["gemini-2.5-flash"],           # what the API said answered, sorted
     "requests": 1012, "kept": 1000,                   # answered requests recorded in the file; kept ones
     "rejected": {"leak": 3, "near-duplicate": 9},     # rejected requests by reason kind
     "perfect": 720, "perfect_rate": 0.72,             # kept sonnets passing distill.check today
     "perfect_ci95": [0.691, 0.747],                   # Wilson 95% interval (null when nothing is kept)
     "tokens": {"input": ..., "output": ..., "thinking": ..., "total": ...},
     "cost_usd": 1.23,                                 # null for a model missing from distill.prices
     "prices": {"usd_per_1m_input": 0.3, "usd_per_1m_output": 2.5, "date": "2026-11-28", "source": "..."},
     "last_run": {"n": 1000, "complete": true, "error": null},
     "updated": "2026-11-29T17:00:00+00:00"}
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
import math
from datetime import datetime, timezone
from pathlib import Path

from distill.check import is_perfect
from distill.prices import PRICES, PRICES_DATE, PRICES_SOURCE, estimate_cost
from distill.records import SyntheticFileError, file_teacher, load_records, read_file_bytes
from minigpt2.atomic import atomic_write_json
from minigpt2.download import sha256_file
from minigpt2.metrics import wilson_interval

SCHEMA = 1


def reason_kind(reason: str | None) -> str:
    """"leak: overlap 0.93 with ..." -> "leak"; "empty response (finish STOP)" -> "empty response"."""
    return (reason or "?").split(":")[0].split(" (")[0]


def summarize(records: list[dict], teacher: str) -> dict:
    """Counts, perfect rate with its interval, tokens and cost of a file's records (see the module docstring)."""
    kept = [r for r in records if r["status"] == "kept"]
    tokens: Counter = Counter()
    for r in records:
        tokens.update({k: int(v) for k, v in (r.get("usage") or {}).items() if isinstance(v, (int, float))})
    perfect = sum(is_perfect(r["text"]) for r in kept)
    ci = wilson_interval(perfect, len(kept))
    price = PRICES.get(teacher)
    return {
        "schema": SCHEMA, "teacher": teacher,
        "model_versions": sorted({r["model_version"] for r in records if r.get("model_version")}),
        "requests": len(records), "kept": len(kept),
        "rejected": dict(sorted(Counter(reason_kind(r.get("reason")) for r in records
                                        if r["status"] == "rejected").items())),
        "perfect": perfect, "perfect_rate": perfect / len(kept) if kept else None,
        "perfect_ci95": list(ci) if ci else None,
        "tokens": {"input": tokens["prompt_tokens"], "output": tokens["output_tokens"],
                   "thinking": tokens["thinking_tokens"], "total": tokens["total_tokens"]},
        "cost_usd": estimate_cost(teacher, tokens["prompt_tokens"], tokens["output_tokens"],
                                  tokens["thinking_tokens"]),
        "prices": {"usd_per_1m_input": price[0] if price else None, "usd_per_1m_output": price[1] if price else None,
                   "date": PRICES_DATE, "source": PRICES_SOURCE},
    }


def format_summary(s: dict) -> str:
    """The summary as a few readable lines."""
    t, p = s["tokens"], s["prices"]
    cost = "n/a (model not in the price table)" if s["cost_usd"] is None else \
        f"${s['cost_usd']:.4f} at {p['usd_per_1m_input']}/{p['usd_per_1m_output']} USD per 1M tokens in/out " \
        f"({p['date']}, {p['source']})"
    rejected = ", ".join(f"{k}: {v}" for k, v in s["rejected"].items()) or "none"
    if s["perfect_rate"] is None:
        perfect = "perfect sonnets: none kept yet"
    else:
        lo, hi = s["perfect_ci95"]
        perfect = (f"perfect sonnets among kept: {s['perfect']}/{s['kept']} ({100 * s['perfect_rate']:.1f}%, "
                   f"95% CI {100 * lo:.1f}-{100 * hi:.1f}%)")
    return (f"{s['teacher']}: kept {s['kept']} of {s['requests']} requests; rejected: {rejected}\n{perfect}\n"
            f"tokens: input {t['input']}, output {t['output']}, thinking {t['thinking']}, total {t['total']}\n"
            f"estimated cost: {cost}")


def summary_path(jsonl: str | Path) -> Path:
    """Where the summary of a generated JSONL file lives: `<file>.summary.json` beside it."""
    jsonl = Path(jsonl)
    return jsonl.with_name(jsonl.name + ".summary.json")


def write_summary(jsonl: str | Path, summary: dict, last_run: dict | None = None) -> Path:
    """Write `summary` (plus the file's name and sha256, the last run's outcome, the time) beside `jsonl`."""
    jsonl = Path(jsonl)
    digest = sha256_file(jsonl) if jsonl.is_file() else None
    payload = {**summary, "file": jsonl.name, "jsonl_sha256": digest, "last_run": last_run,
               "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path = summary_path(jsonl)
    atomic_write_json(path, payload)
    return path


def summarize_file(jsonl: str | Path) -> dict:
    """The summary recomputed from a generated file alone (its teacher read from its records); no network."""
    records = load_records(jsonl)
    teacher = file_teacher(jsonl, records)
    if teacher is None:
        raise SyntheticFileError(f"{jsonl}: holds no records yet, so no teacher to summarise")
    return summarize([rec for _, rec in records], teacher)


def read_summary(jsonl: str | Path) -> dict:
    """The summary of a generated file for reports: the one written beside it when it matches the file's
    sha256, else recomputed from the file (then "last_run" is None: that run's outcome is unknown)."""
    jsonl = Path(jsonl)
    path = summary_path(jsonl)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None  # missing or damaged: the file itself is the record
    digest = hashlib.sha256(read_file_bytes(jsonl)).hexdigest()
    if isinstance(data, dict) and data.get("schema") == SCHEMA and data.get("jsonl_sha256") == digest:
        return data
    return {**summarize_file(jsonl), "file": jsonl.name, "jsonl_sha256": digest, "last_run": None,
            "updated": None}


# The study's perfect sonnets per request of each teacher: what a teacher's file is assumed to reach until its own
# summary measures it.
STUDY_PERFECT_RATES = {"gemini-2.5-flash-lite": 0.56, "gemini-2.5-flash": 0.72, "gemini-2.5-pro": 0.75}


def made_summary(jsonl: Path | None) -> dict | None:
    """`read_summary` of a generated file, None where there is none yet: no file, or a file with no record (made
    before its first request came back)."""
    return read_summary(jsonl) if jsonl is not None and jsonl.is_file() and load_records(jsonl) else None


def teacher_rates(teacher: str, path: Path | None) -> tuple[float, float, str]:
    """(perfect sonnets per request, kept sonnets per request, where from): the file's summary where it kept any,
    else the study's perfect rate with every request kept. A file that kept sonnets but no perfect one gives its
    kept rate and the study's perfect rate (a measured 0 would need infinitely many requests)."""
    summary = made_summary(path)
    rate = STUDY_PERFECT_RATES.get(teacher)
    assumed = "no perfect rate known: every request assumed perfect" if rate is None else \
        f"the study's perfect rate {rate:.0%}, assumed"
    if summary and summary.get("requests") and summary.get("kept"):
        kept = summary["kept"] / summary["requests"]
        measured = f"measured: {summary['perfect']} perfect of {summary['requests']} requests"
        if summary["perfect"]:
            return summary["perfect"] / summary["requests"], kept, measured
        return (1.0 if rate is None else rate), kept, f"{measured}; {assumed}"
    return (1.0, 1.0, assumed) if rate is None else (rate, 1.0, assumed)


def requests_needed(teacher: str, path: Path | None, perfect: int = 0, kept: int = 0) -> int:
    """Requests a teacher's file needs in all to hold `perfect` perfect and `kept` kept sonnets."""
    p, k, _ = teacher_rates(teacher, path)
    return max(math.ceil(perfect / p) if perfect else 0, math.ceil(kept / k) if kept else 0)

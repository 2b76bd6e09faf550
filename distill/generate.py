"""Generate synthetic sonnets from a Gemini teacher into a resumable JSONL file.

    GEMINI_API_KEY=... python -m distill.generate --teacher gemini-2.5-flash --n 1000 --out synth/flash.jsonl

Every request has an id ("000000", "000001", ...) that fixes its prompt and seed, and every answer becomes one
JSON line, appended, flushed and fsynced by the main thread alone:

    {"id", "teacher", "prompt", "seed", "text", "status": "kept"|"rejected", "reason", "perfect",
     "finish_reason", "usage": {"prompt_tokens", "output_tokens", "thinking_tokens", "total_tokens"}, "timestamp"}

Rejected answers (blocked, empty, a near-duplicate of a kept sonnet, or close to a held-out dev/test sonnet)
are written too, so a re-run never asks for the same id again. `--n N` counts *kept* sonnets: ids are issued
until N are kept, never more than N in flight beyond what is needed, and at most `--max-requests` ids in all
(default 2N + 10) so a teacher that keeps reciting cannot loop forever; if that cap is hit the run says how many
it kept and why the rest were rejected.

Re-running with the same --out resumes: ids already in the file are skipped, and a line cut off by a kill is
dropped (its id is asked again), so no result is lost or duplicated. A rejected key or a persistent 429/5xx
stops the run cleanly; what finished is kept.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from distill.check import check_sonnet, read_jsonl
from distill.client import AuthError, Completion, GeminiClient, GeminiError, TransientError, api_key_from_env
from distill.dedup import HELD_OUT_FILES, DedupIndex, load_held_out
from distill.prices import PRICES, PRICES_DATE, PRICES_SOURCE, estimate_cost

TEACHERS = ("gemini-2.5-flash-lite", "gemini-2.5-flash", "gemini-2.5-pro")

THEMES = [
    "a lighthouse keeper's last night", "first frost on a garden", "a letter never sent", "the tide at dawn",
    "an old violin", "a city after rain", "the patience of stone", "a child learning to read", "migrating geese",
    "a burned-down library", "the last apple on a tree", "a clockmaker's hands", "snow on a battlefield",
    "an abandoned orchard", "insomnia", "a friend's forgiveness", "the moon over a harbor", "a miner's lamp",
    "the smell of bread", "a mapmaker's error", "honeybees in winter", "a ship's figurehead", "grief and laundry",
    "a kite caught in a tree", "the first telescope", "a bridge between two towns", "a fading photograph",
    "a river that changed course", "a blacksmith's forge", "an owl at midnight", "exile", "a harvest festival",
    "a lost glove", "ambition", "a painter going blind", "the sound of bells", "wildfire", "a beekeeper's widow",
    "a cathedral under construction", "the fear of forgetting", "a chess game by candlelight", "spring floods",
    "a soldier's homecoming", "the wind in a wheat field", "a drowned village", "jealousy", "a comet's return",
    "an apprentice surpassing the master", "a winter market", "two rivals reconciled",
]
VOICES = [
    "addressed to a beloved", "spoken by an old sailor", "as a quarrel with Time", "in the voice of a gardener",
    "as advice to a young heir", "spoken by a prisoner", "as a praise of a rival poet", "as a plea for mercy",
    "in the voice of a widow", "as a vow", "as a complaint against Fortune", "as a lullaby turned elegy",
]
IMAGES = [
    "seasons", "coins and debts", "candles", "ships and storms", "mirrors", "gardens and weeds", "music",
    "law courts", "stars", "ink and paper", "hunting", "jewels", "the sea", "harvest", "birds", "fire and ash",
    "clocks", "roads", "masks", "rivers",
]
PROMPT = (
    "Write an original Shakespearean sonnet about {theme}, {voice}, with imagery of {image}. "
    "Use exactly 14 lines of iambic pentameter rhyming ABAB CDCD EFEF GG, with true rhymes. "
    "Do not quote or paraphrase any existing poem, Shakespeare's included. "
    "Reply with the 14 lines only: no title, no numbering, no commentary."
)


def make_prompt(seed: int) -> str:
    """A varied prompt (theme x voice x imagery: 12,000 combinations) fixed by the seed."""
    rng = random.Random(seed)
    return PROMPT.format(theme=rng.choice(THEMES), voice=rng.choice(VOICES), image=rng.choice(IMAGES))


_TITLE = re.compile(r"^(#+\s.*|\*\*[^*]+\*\*|sonnet\b[^a-z]*\w{0,20}[^a-z]*)$", re.IGNORECASE)


def clean_text(text: str) -> str:
    """Strip what chat models wrap poems in: code fences, a title line, markdown emphasis, outer blank lines."""
    lines = [ln.rstrip() for ln in text.replace("\r", "").split("\n") if not ln.strip().startswith("```")]
    while lines and not lines[0].strip():
        lines.pop(0)
    if lines and _TITLE.match(lines[0].strip()):
        lines.pop(0)
    text = "\n".join(ln.replace("**", "").replace("*", "").replace("_", "").strip() for ln in lines)
    return text.strip()


def request_seed(base_seed: int, index: int) -> int:
    return (base_seed * 1_000_003 + index) % 2**31


def read_records(path: Path, teacher: str | None = None) -> list[dict]:
    """Records already in `path`. A last line cut off by a kill is removed from the file (its id is redone)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
        print(f"{path}: dropped a partial last line ({len(data) - cut} bytes) left by an interrupted run",
              file=sys.stderr)
        data = data[:cut]
    records = []
    for lineno, rec in read_jsonl(path, data.decode("utf-8"), fields=("id", "status")):
        if teacher is not None and rec.get("teacher") != teacher:
            raise ValueError(f"{path}:{lineno}: holds sonnets from teacher {rec.get('teacher')!r}, not {teacher!r};"
                             " use another --out")
        records.append(rec)
    return records


def append_record(f, record: dict) -> None:
    """One JSON line, flushed and fsynced: after a kill the file holds whole lines (plus at most one partial)."""
    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def make_record(rid: str, teacher: str, prompt: str, seed: int, completion: Completion,
                dedup: DedupIndex) -> dict:
    """Judge one completion (blocked, empty, leak, near-duplicate, else kept) into a record."""
    text = clean_text(completion.text)
    reason = completion.blocked
    if reason is None and not text:
        reason = f"empty response (finish {completion.finish_reason})"
    if reason is None:
        reason = dedup.reject_reason(text)
    if reason is None:
        dedup.add(rid, text)
    return {
        "id": rid, "teacher": teacher, "prompt": prompt, "seed": seed, "text": text,
        "status": "kept" if reason is None else "rejected", "reason": reason,
        "perfect": bool(text) and check_sonnet(text).perfect, "finish_reason": completion.finish_reason,
        "usage": completion.usage, "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def summarize(records: list[dict], teacher: str) -> dict:
    """Totals over a whole output file: kept, rejections by kind, perfect rate, tokens, estimated cost."""
    kept = [r for r in records if r["status"] == "kept"]
    tokens = Counter()
    for r in records:
        tokens.update({k: int(v) for k, v in (r.get("usage") or {}).items()})
    rejected = Counter((r.get("reason") or "?").split(":")[0].split(" (")[0] for r in records
                       if r["status"] == "rejected")
    return {
        "teacher": teacher, "records": len(records), "kept": len(kept), "rejected": dict(rejected),
        "perfect": sum(bool(r.get("perfect")) for r in kept),
        "perfect_rate": sum(bool(r.get("perfect")) for r in kept) / len(kept) if kept else 0.0,
        "tokens": {k: tokens[k] for k in ("prompt_tokens", "output_tokens", "thinking_tokens", "total_tokens")},
        "estimated_cost_usd": estimate_cost(teacher, tokens["prompt_tokens"], tokens["output_tokens"],
                                            tokens["thinking_tokens"]),
        "prices": {"usd_per_1m": PRICES.get(teacher), "date": PRICES_DATE, "source": PRICES_SOURCE},
    }


def format_summary(s: dict) -> str:
    t = s["tokens"]
    cost = "n/a (model not in the price table)" if s["estimated_cost_usd"] is None else \
        f"${s['estimated_cost_usd']:.4f} at {s['prices']['usd_per_1m']} USD/1M in/out ({s['prices']['date']}, " \
        f"{s['prices']['source']})"
    rejected = ", ".join(f"{k}: {v}" for k, v in sorted(s["rejected"].items())) or "none"
    return (f"{s['teacher']}: kept {s['kept']} of {s['records']} records; rejected: {rejected}\n"
            f"perfect sonnets among kept: {s['perfect']}/{s['kept']} ({100 * s['perfect_rate']:.1f}%)\n"
            f"tokens: prompt {t['prompt_tokens']}, output {t['output_tokens']}, thinking {t['thinking_tokens']},"
            f" total {t['total_tokens']}\nestimated cost: {cost}")


def run(teacher: str, n: int, out: Path, client: GeminiClient, dedup: DedupIndex, concurrency: int = 8,
        max_requests: int | None = None, seed: int = 0, temperature: float = 1.0,
        max_output_tokens: int | None = None, thinking_budget: int | None = None,
        progress: bool = True) -> dict:
    """Generate until `n` sonnets are kept in `out` (resuming it); returns the file's summary.

    Raises AuthError / TransientError / GeminiError after writing whatever finished, and RuntimeError when
    `max_requests` ids were used without keeping `n`.
    """
    records = read_records(out, teacher)
    for r in records:  # rebuild the near-duplicate index in file order
        if r["status"] == "kept":
            dedup.add(r["id"], r["text"])
    done = {r["id"] for r in records}
    kept = sum(r["status"] == "kept" for r in records)
    max_requests = max_requests if max_requests is not None else 2 * n + 10
    out.parent.mkdir(parents=True, exist_ok=True)

    def ask(index: int) -> tuple[str, str, int, Completion]:
        s = request_seed(seed, index)
        prompt = make_prompt(s)
        return f"{index:06d}", prompt, s, client.generate(prompt, seed=s, temperature=temperature,
                                                          max_output_tokens=max_output_tokens,
                                                          thinking_budget=thinking_budget)

    failure: GeminiError | None = None
    index = 0
    inflight: set[Future] = set()
    bar = tqdm(total=n, initial=min(kept, n), desc=f"{teacher} kept", disable=not progress, unit="sonnet")
    with open(out, "a", encoding="utf-8") as f, ThreadPoolExecutor(max_workers=concurrency) as pool:
        while True:
            # Only as many requests in flight as could still be needed, so N kept never overshoots.
            while failure is None and kept + len(inflight) < n and len(inflight) < concurrency:
                while f"{index:06d}" in done:
                    index += 1
                if len(done) >= max_requests:
                    break
                done.add(f"{index:06d}")
                inflight.add(pool.submit(ask, index))
                index += 1
            if not inflight:
                break
            finished, inflight = wait(inflight, return_when=FIRST_COMPLETED)
            for fut in finished:
                try:
                    rid, prompt, s, completion = fut.result()
                except GeminiError as e:
                    failure = failure or e
                    continue
                record = make_record(rid, teacher, prompt, s, completion, dedup)
                append_record(f, record)
                records.append(record)
                if record["status"] == "kept":
                    kept += 1
                    bar.update(1)
                else:
                    bar.set_postfix(rejected=sum(r["status"] == "rejected" for r in records))
    bar.close()
    summary = summarize(records, teacher)
    if failure is not None:
        raise failure
    if kept < n:
        raise RuntimeError(f"kept only {kept} of {n} sonnets after {len(records)} requests (--max-requests "
                           f"{max_requests}); rejected: {summary['rejected']}. Raise --max-requests, or vary the "
                           "prompts/seed if most are near-duplicates or leaks.")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Generate synthetic Shakespearean sonnets from a Gemini teacher.")
    p.add_argument("--teacher", required=True, choices=TEACHERS, help="Gemini model to ask")
    p.add_argument("--n", type=int, required=True, help="number of sonnets to keep (after filtering)")
    p.add_argument("--out", type=Path, required=True, help="JSONL output; re-running with it resumes")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    p.add_argument("--max-requests", type=int, default=None, help="cap on ids used in all (default 2N+10)")
    p.add_argument("--seed", type=int, default=0, help="base seed for prompts and sampling")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--max-output-tokens", type=int, default=None, help="cap on output (thinking included)")
    p.add_argument("--thinking-budget", type=int, default=None,
                   help="thinking tokens allowed (0 turns thinking off on flash/flash-lite; default: model's own)")
    p.add_argument("--retries", type=int, default=5, help="retries per request on 429/5xx/malformed answers")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request")
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MINIGPT2_DATA_DIR", "data")),
                   help="folder with the held-out sonnet files (default $MINIGPT2_DATA_DIR or ./data)")
    p.add_argument("--no-leak-filter", action="store_true", help="do not compare against held-out sonnets")
    p.add_argument("--dup-threshold", type=float, default=0.5, help="8-gram Jaccard that makes a near-duplicate")
    p.add_argument("--leak-threshold", type=float, default=0.5, help="8-gram overlap with a held-out sonnet"
                   " that makes a leak")
    p.add_argument("--base-url", default=os.environ.get("GEMINI_BASE_URL"),
                   help="API endpoint override, e.g. a local fake server (default $GEMINI_BASE_URL or Google's)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    if args.n < 1 or args.concurrency < 1:
        p.error("--n and --concurrency must be at least 1")
    try:
        held_out = [] if args.no_leak_filter else load_held_out(args.data_dir)
        if not args.no_leak_filter and not held_out:
            raise ValueError(f"no held-out sonnets in {args.data_dir} (expected one of {', '.join(HELD_OUT_FILES)});"
                             " pass --data-dir, or --no-leak-filter to skip the leak check")
        client = GeminiClient(args.teacher, api_key_from_env(), base_url=args.base_url, timeout_s=args.timeout,
                              retries=args.retries, seed=args.seed)
        client.check_access()  # a bad key or model fails here, before any work
        dedup = DedupIndex(held_out, dup_threshold=args.dup_threshold, leak_threshold=args.leak_threshold)
        summary = run(args.teacher, args.n, args.out, client, dedup, concurrency=args.concurrency,
                      max_requests=args.max_requests, seed=args.seed, temperature=args.temperature,
                      max_output_tokens=args.max_output_tokens, thinking_budget=args.thinking_budget,
                      progress=not args.no_progress)
    except AuthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (GeminiError, RuntimeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        if args.out.exists():
            print("finished work is saved; re-run the same command to resume", file=sys.stderr)
            print(format_summary(summarize(read_records(args.out), args.teacher)), file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generate synthetic sonnets from a Gemini teacher into a resumable JSONL file.

    GEMINI_API_KEY=... python -m distill.generate --teacher gemini-2.5-flash --n 1000 --out synth/flash.jsonl

Every request has an id ("000000", "000001", ...) that fixes its prompt and seed, and every answer becomes one
JSON line, appended, flushed and fsynced by the main thread alone, in id order whatever order the answers
arrive in (an answer waits until every lower id is written):

    {"id", "teacher", "model_version", "prompt", "seed", "text", "status": "kept"|"rejected", "reason",
     "perfect", "finish_reason", "usage": {"prompt_tokens", "output_tokens", "thinking_tokens", "total_tokens"},
     "timestamp"}

Every record names its teacher, so a file holds one teacher's sonnets and a re-run with another --teacher is
refused. At the end of every run `<out>.summary.json` is rewritten from the whole file (see distill.summary).

Rejected answers (blocked, empty, a near-duplicate of a kept sonnet, or close to a held-out dev/test sonnet)
are written too, so a re-run never asks for the same id again. `--n N` counts *kept* sonnets: ids are issued
until N are kept, never more than N in flight beyond what is needed, and at most `--max-requests` ids in all
(default 2N + 10) so a teacher that keeps reciting cannot loop forever; if that cap is hit the run says how many
it kept and why the rest were rejected.

Re-running with the same --out resumes: ids already in the file are skipped, and a line cut off by a kill is
dropped (its id is asked again), so no result is lost or duplicated. A rejected key or a persistent 429/5xx
stops the run cleanly; what finished is kept. Answers held back behind a slower id are lost to a kill or a
stopped run (at most --concurrency - 1) and asked again on resume. Any other damage to the file (bad JSON
before its last line, a repeated id or sonnet, bytes that are not UTF-8) is refused with the line to fix.
Every error is one `error: ...` line and exit code 1.
"""
from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import re
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Callable

from tqdm import tqdm

from distill.check import check_sonnet
from distill.client import Completion, GeminiClient, GeminiError, TransientError, api_key_from_env
from distill.dedup import HELD_OUT_FILES, DedupIndex, load_held_out
from distill.records import SyntheticFileError, file_teacher, load_records, read_file_bytes
from distill.summary import format_summary, summarize, summary_path, write_summary
from minigpt2.errors import UserError

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


def strip_chat_wrapping(text: str) -> str:
    """Strip what chat models wrap poems in: code fences, a title line, markdown emphasis, outer blank lines.

    A line ends at LF, CRLF or a lone CR (as `distill.check.sonnet_lines` reads it)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [ln.rstrip() for ln in text.split("\n") if not ln.strip().startswith("```")]
    while lines and not lines[0].strip():
        lines.pop(0)
    if lines and _TITLE.match(lines[0].strip()):
        lines.pop(0)
    text = "\n".join(ln.replace("**", "").replace("*", "").replace("_", "").strip() for ln in lines)
    return text.strip()


def request_seed(base_seed: int, index: int) -> int:
    return (base_seed * 1_000_003 + index) % 2**31


class TeacherMismatch(SyntheticFileError):
    """--out holds another teacher's sonnets: resuming it would mix teachers and price them wrongly."""


class NotEnoughKept(UserError):
    """--max-requests ids were used without keeping --n sonnets."""


def read_records(path: Path, teacher: str | None = None) -> list[dict]:
    """The records already in `path`, in id order; [] when it does not exist yet.

    A last line cut off by a kill is removed from the file (its id is asked again). Anything else wrong is a
    `SyntheticFileError` that says what to do: a folder, an unreadable or non-UTF-8 file, bad JSON before the
    last line, a repeated id or kept text, records from two teachers, or (with `teacher`) another teacher's file.
    """
    if not path.exists() and not path.is_symlink():
        return []
    data = read_file_bytes(path, "generation output")
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        try:
            with open(path, "r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise SyntheticFileError(f"{path}: cannot repair its cut-off last line ({e.strerror or e}); fix its "
                                     "permissions (chmod u+rw) or use another --out") from None
        print(f"{path}: dropped a partial last line ({len(data) - cut} bytes) left by an interrupted run",
              file=sys.stderr)
        data = data[:cut]
    records = load_records(path, data=data)
    theirs = file_teacher(path, records)
    if teacher is not None and theirs is not None and theirs != teacher:
        raise TeacherMismatch(f"{path}: holds sonnets from teacher {theirs!r}, not --teacher {teacher!r}: resume "
                              f"it with --teacher {theirs}, or give {teacher} another --out")
    return [rec for _, rec in records]


def append_record(f, record: dict) -> None:
    """One JSON line, flushed and fsynced: after a kill the file holds whole lines (plus at most one partial)."""
    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def make_record(rid: str, teacher: str, prompt: str, seed: int, completion: Completion,
                dedup: DedupIndex, timestamp: str | None = None) -> dict:
    """Judge one completion (blocked, empty, leak, near-duplicate, else kept) into a record.

    `timestamp` is when the answer arrived (now if not given); judging waits for the ids before it.
    """
    text = strip_chat_wrapping(completion.text)
    reason = completion.blocked
    if reason is None and not text:
        reason = f"empty response (finish {completion.finish_reason})"
    if reason is None:
        reason = dedup.reject_reason(text)
    if reason is None:
        dedup.add(rid, text)
    return {
        "id": rid, "teacher": teacher, "model_version": completion.model_version, "prompt": prompt, "seed": seed,
        "text": text, "status": "kept" if reason is None else "rejected", "reason": reason,
        "perfect": bool(text) and check_sonnet(text).perfect, "finish_reason": completion.finish_reason,
        "usage": completion.usage, "timestamp": timestamp or _now(),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _open_output(out: Path):
    """Open --out for appending, or a SyntheticFileError saying why it cannot be and what to do."""
    if out.is_dir():
        raise SyntheticFileError(f"--out {out}: is a folder; give a file path such as {out / 'teacher.jsonl'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return open(out, "a", encoding="utf-8")
    except PermissionError:
        raise SyntheticFileError(f"--out {out}: no permission to create or append to it; fix the permissions "
                                 "(chmod u+rw) or use another --out") from None
    except OSError as e:
        raise SyntheticFileError(f"--out {out}: cannot open it for appending ({e.strerror or e}); use another "
                                 "--out") from None


def run(teacher: str, n: int, out: Path, client: GeminiClient, dedup: DedupIndex, concurrency: int = 8,
        max_requests: int | None = None, seed: int = 0, temperature: float = 1.0,
        max_output_tokens: int | None = None, thinking_budget: int | None = None,
        progress: bool = True) -> dict:
    """Generate until `n` sonnets are kept in `out` (resuming it); returns the file's summary.

    Answers are judged and written in id order, whatever order they arrive in: an answer waits until every
    lower id has been written, so the near-duplicate verdicts, the file, and "the first n kept" do not depend
    on network timing. Ids are issued while kept + outstanding < n, so the run asks for exactly the shortest
    prefix of ids that keeps n.

    The summary is written beside the file (`distill.summary`) at the end, also when the run stops early.
    Raises AuthError / TransientError / GeminiError after writing whatever finished (answers that arrived
    after the failed id are not written, to keep id order; a re-run asks for them again), and NotEnoughKept
    when `max_requests` ids were used without keeping `n`.
    """
    if n < 1 or concurrency < 1:
        raise UserError(f"--n and --concurrency must be at least 1, got {n} and {concurrency}")
    records = read_records(out, teacher)
    for r in records:  # rebuild the near-duplicate index in id order
        if r["status"] == "kept":
            dedup.add(r["id"], r["text"])
    max_requests = max_requests if max_requests is not None else 2 * n + 10

    def ask(index: int) -> tuple[str, int, Completion, str]:
        s = request_seed(seed, index)
        prompt = make_prompt(s)
        completion = client.generate(prompt, seed=s, temperature=temperature, max_output_tokens=max_output_tokens,
                                     thinking_budget=thinking_budget)
        return prompt, s, completion, _now()

    gen = _InIdOrder(teacher, n, max_requests, dedup, records)
    bar = tqdm(total=n, initial=min(gen.kept, n), desc=f"{teacher} kept", disable=not progress, unit="sonnet")
    try:
        with _open_output(out) as f, ThreadPoolExecutor(max_workers=concurrency) as pool:
            while True:
                gen.issue(pool, ask, concurrency)
                if not gen.futures:
                    break
                finished, _ = wait(gen.futures, return_when=FIRST_COMPLETED)
                gen.collect(finished)
                gen.write_ready(f, bar)
    finally:
        bar.close()
    summary = summarize(records, teacher)
    error = gen.error(summary)
    _write_summary(out, summary, {"n": n, "complete": error is None, "error": str(error) if error else None})
    if error is not None:
        raise error
    return summary


class _InIdOrder:
    """The bookkeeping of `run`: which ids are asked, which answers wait for a lower id, what is written."""

    def __init__(self, teacher: str, n: int, max_requests: int, dedup: DedupIndex, records: list[dict]) -> None:
        self.teacher, self.n, self.max_requests, self.dedup, self.records = teacher, n, max_requests, dedup, records
        self.done = {r["id"] for r in records}
        self.kept = sum(r["status"] == "kept" for r in records)
        self.index = 0
        self.outstanding: list[int] = []  # ids asked and not yet written (a heap: the lowest is written next)
        self.answers: dict[int, tuple[str, int, Completion, str]] = {}  # arrived, waiting for a lower id
        self.futures: dict[Future, int] = {}
        self.failure: GeminiError | None = None

    def issue(self, pool: ThreadPoolExecutor, ask: Callable[[int], tuple[str, int, Completion, str]],
              concurrency: int) -> None:
        """Ask for new ids: only as many outstanding as could still be needed, so N kept never overshoots."""
        while self.failure is None and self.kept + len(self.outstanding) < self.n and len(self.futures) < concurrency:
            while f"{self.index:06d}" in self.done:
                self.index += 1
            if len(self.done) >= self.max_requests:
                break
            self.done.add(f"{self.index:06d}")
            heapq.heappush(self.outstanding, self.index)
            self.futures[pool.submit(ask, self.index)] = self.index
            self.index += 1

    def collect(self, finished: set[Future]) -> None:
        """Keep the answers that arrived; the first failure stops new requests."""
        for fut in finished:
            i = self.futures.pop(fut)
            try:
                self.answers[i] = fut.result()
            except GeminiError as e:
                self.failure = self.failure or e

    def write_ready(self, f: IO[str], bar: tqdm) -> None:
        """Judge and append every answer whose lower ids are all written."""
        while self.outstanding and self.outstanding[0] in self.answers:
            i = heapq.heappop(self.outstanding)
            prompt, s, completion, arrived = self.answers.pop(i)
            record = make_record(f"{i:06d}", self.teacher, prompt, s, completion, self.dedup, arrived)
            append_record(f, record)
            self.records.append(record)
            if record["status"] == "kept":
                self.kept += 1
                bar.update(1)
            else:
                bar.set_postfix(rejected=sum(r["status"] == "rejected" for r in self.records))

    def error(self, summary: dict) -> UserError | None:
        """Why the run stopped short of `n` kept sonnets, or None when it did not."""
        if self.failure is not None:
            if not self.answers:
                return self.failure
            return type(self.failure)(f"{self.failure}; {len(self.answers)} answer(s) that arrived after the failed "
                                      "request were not written, to keep the file in id order (a re-run asks again)")
        if self.kept < self.n:
            return NotEnoughKept(
                f"kept only {self.kept} of {self.n} sonnets after {len(self.records)} requests (--max-requests "
                f"{self.max_requests}); rejected: {summary['rejected']}. Raise --max-requests, or vary the "
                "prompts/seed if most are near-duplicates or leaks")
        return None


def _write_summary(out: Path, summary: dict, last_run: dict) -> None:
    try:
        write_summary(out, summary, last_run)
    except OSError as e:
        raise SyntheticFileError(f"{summary_path(out)}: cannot write the generation summary ({e.strerror or e}); "
                                 "fix the folder's permissions and re-run the same command") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Generate synthetic Shakespearean sonnets from a Gemini teacher.")
    p.add_argument("--teacher", required=True, choices=TEACHERS, help="Gemini model to ask")
    p.add_argument("--n", type=int, required=True, help="number of sonnets to keep (after filtering)")
    p.add_argument("--out", type=Path, required=True,
                   help="JSONL output; re-running with it resumes; its summary goes to <out>.summary.json")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    p.add_argument("--max-requests", type=int, default=None, help="cap on ids used in all (default 2N+10)")
    p.add_argument("--seed", type=int, default=0, help="base seed for prompts and sampling")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--max-output-tokens", type=int, default=None, help="cap on output (thinking included)")
    p.add_argument("--thinking-budget", type=int, default=None,
                   help="thinking tokens allowed (0 turns thinking off on flash/flash-lite; default: model's own)")
    p.add_argument("--retries", type=int, default=5, help="retries per request on 429/5xx/time-outs/malformed answers")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one attempt waits for its answer")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds one attempt may take to connect")
    p.add_argument("--total-timeout", type=float, default=300.0,
                   help="seconds one request may take in all, retries and waits included")
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MINIGPT2_DATA_DIR") or "data"),
                   help="folder with the held-out sonnet files (default $MINIGPT2_DATA_DIR or ./data)")
    p.add_argument("--no-leak-filter", action="store_true", help="do not compare against held-out sonnets")
    p.add_argument("--dup-threshold", type=float, default=0.5, help="8-gram Jaccard that makes a near-duplicate")
    p.add_argument("--leak-threshold", type=float, default=0.5, help="8-gram overlap with a held-out sonnet"
                   " that makes a leak")
    p.add_argument("--base-url", default=os.environ.get("GEMINI_BASE_URL"),
                   help="API endpoint override, e.g. a local fake server (default $GEMINI_BASE_URL or Google's)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = generate_from_args(args)
    except UserError as e:
        print(f"error: {e}{_show_saved_work(e, args)}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(f"summary written to {summary_path(args.out)}")
    return 0


def generate_from_args(args: argparse.Namespace) -> dict:
    """The command's checks (before any request: the flags, the file, the held-out sonnets, the key), then `run`."""
    if args.n < 1 or args.concurrency < 1:
        raise UserError(f"--n and --concurrency must be at least 1, got {args.n} and {args.concurrency}")
    if args.max_requests is not None and args.max_requests < 1:
        raise UserError(f"--max-requests must be at least 1, got {args.max_requests}")
    read_records(args.out, args.teacher)  # a damaged file or another teacher's fails here, before any request
    held_out = [] if args.no_leak_filter else load_held_out(args.data_dir)
    if not args.no_leak_filter and not held_out:
        raise UserError(f"no held-out sonnets in {args.data_dir} (expected one of {', '.join(HELD_OUT_FILES)});"
                        " pass --data-dir, or --no-leak-filter to skip the leak check")
    client = GeminiClient(args.teacher, api_key_from_env(), base_url=args.base_url, timeout_s=args.timeout,
                          connect_timeout_s=args.connect_timeout, total_timeout_s=args.total_timeout,
                          retries=args.retries, seed=args.seed, log=_log)
    client.check_access()  # a bad key or model fails here, before any work
    dedup = DedupIndex(held_out, dup_threshold=args.dup_threshold, leak_threshold=args.leak_threshold)
    return run(args.teacher, args.n, args.out, client, dedup, concurrency=args.concurrency,
               max_requests=args.max_requests, seed=args.seed, temperature=args.temperature,
               max_output_tokens=args.max_output_tokens, thinking_budget=args.thinking_budget,
               progress=not args.no_progress)


def _show_saved_work(e: UserError, args: argparse.Namespace) -> str:
    """When the network or the filter stopped the run, print what the file holds; the hint that goes after the
    error line (how to resume, when the stop was transient)."""
    if not isinstance(e, (GeminiError, NotEnoughKept)):
        return ""
    try:
        records = read_records(args.out, args.teacher)
    except UserError:
        records = []
    if not records:
        return ""
    print(format_summary(summarize(records, args.teacher)))
    if isinstance(e, TransientError):
        return f"; finished work is saved in {args.out}: re-run the same command to resume"
    return ""


def _log(line: str) -> None:
    # tqdm.write keeps a retry notice from breaking the progress bar's line.
    tqdm.write(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

"""The one place that talks to Gemini: the `google-genai` SDK, our retry policy, and plain results.

Retries live here and only here. The SDK can retry by itself (`HttpOptions.retry_options`; in google-genai 3.x
it does not unless asked), so the client is built with `HttpRetryOptions(attempts=1)`: one SDK attempt per
call, and `GeminiClient.generate` retries 429, 5xx, time-outs, dropped connections and malformed JSON with
exponential backoff and jitter. Nothing is retried twice over.

Time limits, so that a dead endpoint is reported in minutes, not silently after a quarter of an hour:
- connecting gets `connect_timeout_s` (a few seconds: a reachable server accepts at once);
- each attempt waits at most `timeout_s` for the answer (thinking models can take a minute or more);
- one call, all attempts and waits included, gives up after `total_timeout_s` of wall-clock time, saying so
  (httpx's time-outs are per read: a server that trickles a byte every few seconds never trips them, so each
  attempt runs in a helper thread that the call stops waiting for at the deadline).
Each failed attempt that will be retried prints one line (attempt n/N, why, how long until the next), and a
server's `Retry-After` header (seconds or an HTTP date) or Google's `RetryInfo.retryDelay` sets that wait.

A rejected key ends everything at once (`AuthError`): 401/403, and Google's own answer to a bad key, which is
400 INVALID_ARGUMENT with reason API_KEY_INVALID. `check_access()` makes one cheap, token-free call
(`models.get`) so a bad key or a wrong model name fails before any work starts.

Tests aim `base_url` at a local fake server (tests/fakegemini.py); the key is never logged or written.
"""
from __future__ import annotations

import json
import os
import random
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Callable

from google import genai
from google.genai import errors, types

from minigpt2.errors import UserError

try:  # google-genai 3.x uses httpx2; older releases use httpx
    import httpx2 as _httpx
except ImportError:  # pragma: no cover
    import httpx as _httpx

API_VERSION = "v1beta"
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
BLOCKING_FINISH = ("SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY")


class GeminiError(UserError):
    """A Gemini call failed in a way that retrying will not fix (bad request, unknown model, ...)."""


class AuthError(GeminiError):
    """No API key, or the key was rejected: nothing can be done with this key."""


class TransientError(GeminiError):
    """429/5xx/time-outs/malformed responses that persisted through every retry or the total time limit."""


def api_key_from_env() -> str:
    """The API key from GEMINI_API_KEY, else GOOGLE_API_KEY; AuthError if neither is set."""
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        key = os.environ.get(name, "").strip()
        if key:
            return key
    raise AuthError("no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment")


@dataclass
class Completion:
    """One answer: the text (thought parts excluded), why it stopped, a block reason if any, token usage, and
    the model version the API says answered (e.g. a dated release behind the name asked for)."""

    text: str
    finish_reason: str | None
    blocked: str | None
    usage: dict[str, int] = field(default_factory=dict)
    model_version: str | None = None


def _usage(meta: types.GenerateContentResponseUsageMetadata | None) -> dict[str, int]:
    meta = meta or types.GenerateContentResponseUsageMetadata()
    return {
        "prompt_tokens": meta.prompt_token_count or 0,
        "output_tokens": meta.candidates_token_count or 0,
        "thinking_tokens": meta.thoughts_token_count or 0,
        "total_tokens": meta.total_token_count or 0,
    }


def _is_key_rejection(e: errors.APIError) -> bool:
    text = f"{e.status} {e.message} {e.details}".upper()
    return e.code in (401, 403) or (e.code == 400 and ("API_KEY" in text or "API KEY" in text))


def retry_after_s(e: errors.APIError, now: datetime | None = None) -> float | None:
    """How long the server asked us to wait: `Retry-After` (seconds or an HTTP date), else Google's
    `google.rpc.RetryInfo` detail (`"retryDelay": "37s"`); None when it did not say."""
    headers = getattr(getattr(e, "response", None), "headers", None)
    value = (headers.get("retry-after") or "").strip() if headers is not None else ""
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
            return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())
    body = e.details if isinstance(e.details, dict) else {}
    for detail in (body.get("error", body).get("details") or []):
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)s\s*", str(detail.get("retryDelay", "")))
            if m:
                return float(m.group(1))
    return None


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _PastDeadline(Exception):
    """An attempt still running when the call's wall-clock limit came."""


def _within(fn: Callable[[], object], seconds: float) -> object:
    """fn() if it returns (or raises) within `seconds` of wall-clock time, else _PastDeadline. The attempt is left
    to finish in its daemon thread (a socket read cannot be interrupted from outside); its result is dropped."""
    box: dict[str, object] = {}

    def attempt() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread as it is
            box["error"] = e

    thread = threading.Thread(target=attempt, daemon=True, name="gemini-attempt")
    thread.start()
    thread.join(max(0.0, seconds))
    if thread.is_alive():
        raise _PastDeadline
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


class GeminiClient:
    """A thin, retrying wrapper over `genai.Client` for one teacher model.

    `timeout_s` is how long one attempt waits for an answer, `connect_timeout_s` how long it may take to
    connect, `total_timeout_s` how long one call may take with all its attempts and waits. `log` receives the
    one-line retry notices (stderr by default); `sleep` and `clock` are injectable for tests.
    """

    def __init__(self, model: str, api_key: str, base_url: str | None = None, timeout_s: float = 120.0,
                 connect_timeout_s: float = 10.0, total_timeout_s: float = 300.0, retries: int = 5,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, log: Callable[[str], None] = _stderr,
                 seed: int | None = None) -> None:
        if not api_key:
            raise AuthError("no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment")
        if not api_key.isascii():  # an HTTP header cannot carry it; the key itself is never shown
            where = next(i for i, c in enumerate(api_key) if not c.isascii())
            raise AuthError(f"the Gemini API key holds a non-ASCII character (position {where + 1} of "
                            f"{len(api_key)}); keys are plain ASCII: check GEMINI_API_KEY for a pasted quote or space")
        for name, value in (("timeout", timeout_s), ("connect timeout", connect_timeout_s),
                            ("total timeout", total_timeout_s)):
            if not value > 0:
                raise UserError(f"the {name} must be a positive number of seconds, got {value}")
        if retries < 0:
            raise UserError(f"retries must be >= 0, got {retries}")
        self.model = model
        self.timeout_s, self.connect_timeout_s, self.total_timeout_s = timeout_s, connect_timeout_s, total_timeout_s
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self._sleep, self._clock, self._log = sleep, clock, log
        self._rng = random.Random(seed)
        options = types.HttpOptions(
            base_url=base_url,
            # Pinned: google-genai 3.x defaults to v1; v1beta is the version whose generateContent documents
            # thinkingConfig and thoughtsTokenCount, and the one the fake server speaks.
            api_version=API_VERSION,
            timeout=int(timeout_s * 1000),  # milliseconds; each attempt passes its own (see _call)
            retry_options=types.HttpRetryOptions(attempts=1),  # our retries, not the SDK's too
            client_args={"event_hooks": {"request": [self._short_connect]}},
        )
        # vertexai=False: a GOOGLE_GENAI_USE_VERTEXAI in the environment must not reroute an API-key client.
        self._client = genai.Client(vertexai=False, api_key=api_key, http_options=options)

    def _short_connect(self, request: _httpx.Request) -> None:
        # The SDK passes one number per request, which httpx applies to connecting and reading alike; a host
        # that is down should fail in seconds while a thinking model may take minutes to answer.
        timeout = dict(request.extensions.get("timeout") or {})
        connect = timeout.get("connect")
        timeout["connect"] = self.connect_timeout_s if connect is None else min(connect, self.connect_timeout_s)
        request.extensions["timeout"] = timeout

    def _call(self, fn: Callable[[types.HttpOptions], object], what: str) -> object:
        """Run fn(per-attempt http options), retrying transient failures with backoff, within the total limit."""
        attempts = self.retries + 1
        start = self._clock()
        wall_start = time.monotonic()  # the real clock, whatever clock and sleep tests inject
        for attempt in range(1, attempts + 1):
            # Each attempt may wait for its answer only as long as the total limit still allows.
            limit = min(self.timeout_s, self.total_timeout_s - (self._clock() - start))
            asked = None
            try:
                return _within(lambda: fn(types.HttpOptions(timeout=max(1, int(limit * 1000)))),
                               self.total_timeout_s - (time.monotonic() - wall_start))
            except _PastDeadline:
                raise TransientError(
                    f"{what} gave up after {attempt} of {attempts} attempts: no complete answer within the total "
                    f"limit of {self.total_timeout_s:g} s per request (--total-timeout; the server may be sending "
                    "its answer too slowly)") from None
            except errors.APIError as e:
                if _is_key_rejection(e):
                    raise AuthError(f"Gemini rejected the API key ({e.code} {e.status}) during {what}") from None
                if e.code not in RETRY_STATUS:
                    raise GeminiError(f"{what} failed: {e.code} {e.status}: {e.message}") from None
                last, asked = f"{e.code} {e.status}", retry_after_s(e)
            except (errors.UnknownApiResponseError, json.JSONDecodeError):
                # A 200 with a cut-off body reaches us as a bare JSONDecodeError from inside the SDK.
                last = "malformed JSON response"
            except _httpx.ConnectTimeout:
                last = f"could not connect within {self.connect_timeout_s:g} s (ConnectTimeout)"
            except _httpx.TimeoutException as e:
                last = f"no answer within {limit:.3g} s ({type(e).__name__})"
            except _httpx.TransportError as e:
                last = f"{type(e).__name__}"
            if attempt == attempts:
                break
            if asked is not None:
                # At least what the server asked, plus up to 10% so threads told the same do not return together.
                wait, why = asked * self._rng.uniform(1.0, 1.1), " as the server asked"
            else:
                # Jitter (half to all of the exponential cap) spreads out threads that failed together.
                cap = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                wait, why = self._rng.uniform(0.5 * cap, cap), ""
            elapsed = self._clock() - start
            if elapsed + wait >= self.total_timeout_s:
                raise TransientError(
                    f"{what} gave up after {attempt} of {attempts} attempts in {elapsed:.0f} s (last: {last}): the "
                    f"next wait ({wait:.1f} s{why}) would pass the total limit of {self.total_timeout_s:g} s "
                    "per request (--total-timeout)")
            self._log(f"{what}: attempt {attempt}/{attempts} failed ({last}); retrying in {wait:.1f} s{why}")
            self._sleep(wait)
        raise TransientError(f"{what} still failing after {attempts} attempts (last: {last})")

    def check_access(self) -> None:
        """One token-free call (models.get) so a bad key or model name fails before any work starts."""
        self._call(lambda http: self._client.models.get(model=self.model, config=types.GetModelConfig(
            http_options=http)), f"checking access to {self.model}")

    def generate(self, prompt: str, seed: int | None = None, temperature: float = 1.0,
                 max_output_tokens: int | None = None, thinking_budget: int | None = None) -> Completion:
        """Ask the teacher once (with retries); blocked or empty answers come back as a Completion, not an error."""
        def config(http: types.HttpOptions) -> types.GenerateContentConfig:
            return types.GenerateContentConfig(
                temperature=temperature, seed=seed, max_output_tokens=max_output_tokens, http_options=http,
                thinking_config=types.ThinkingConfig(thinking_budget=thinking_budget)
                if thinking_budget is not None else None,
            )

        response = self._call(
            lambda http: self._client.models.generate_content(model=self.model, contents=prompt,
                                                              config=config(http)),
            f"generate_content on {self.model}",
        )
        usage, version = _usage(response.usage_metadata), response.model_version
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            reason = getattr(feedback.block_reason, "value", feedback.block_reason)
            return Completion("", None, f"prompt blocked: {reason}", usage, version)
        if not response.candidates:
            return Completion("", None, None, usage, version)
        cand = response.candidates[0]
        finish = getattr(cand.finish_reason, "value", cand.finish_reason)
        parts = cand.content.parts if cand.content and cand.content.parts else []
        text = "".join(p.text for p in parts if p.text and not p.thought)
        blocked = f"candidate blocked: {finish}" if finish in BLOCKING_FINISH else None
        return Completion(text, finish, blocked, usage, version)

"""The one place that talks to Gemini: the `google-genai` SDK, our retry policy, and plain results.

Retries live here and only here. The SDK can retry by itself (`HttpOptions.retry_options`; in google-genai 3.x
it does not unless asked), so the client is built with `HttpRetryOptions(attempts=1)`: one SDK attempt per
call, and `GeminiClient.generate` retries 429, 5xx, time-outs, dropped connections and malformed JSON with
exponential backoff and jitter. Nothing is retried twice over.

A rejected key ends everything at once (`AuthError`): 401/403, and Google's own answer to a bad key, which is
400 INVALID_ARGUMENT with reason API_KEY_INVALID. `check_access()` makes one cheap, token-free call
(`models.get`) so a bad key or a wrong model name fails before any work starts.

Tests aim `base_url` at a local fake server (tests/fakegemini.py); the key is never logged or written.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
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


class GeminiError(UserError, RuntimeError):
    """A Gemini call failed in a way that retrying will not fix (bad request, unknown model, ...)."""


class AuthError(GeminiError):
    """No API key, or the key was rejected: nothing can be done with this key."""


class TransientError(GeminiError):
    """429/5xx/time-outs/malformed responses that persisted through every retry."""


def api_key_from_env() -> str:
    """The API key from GEMINI_API_KEY, else GOOGLE_API_KEY; AuthError if neither is set."""
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        key = os.environ.get(name, "").strip()
        if key:
            return key
    raise AuthError("no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment")


@dataclass
class Completion:
    """One answer: the text (thought parts excluded), why it stopped, a block reason if any, token usage."""

    text: str
    finish_reason: str | None
    blocked: str | None
    usage: dict[str, int] = field(default_factory=dict)


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


class GeminiClient:
    """A thin, retrying wrapper over `genai.Client` for one teacher model."""

    def __init__(self, model: str, api_key: str, base_url: str | None = None, timeout_s: float = 120.0,
                 retries: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep, seed: int | None = None) -> None:
        if not api_key:
            raise AuthError("no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment")
        self.model = model
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self._sleep = sleep
        self._rng = random.Random(seed)
        options = types.HttpOptions(
            base_url=base_url,
            # Pinned: google-genai 3.x defaults to v1; v1beta is the version whose generateContent documents
            # thinkingConfig and thoughtsTokenCount, and the one the fake server speaks.
            api_version=API_VERSION,
            timeout=int(timeout_s * 1000),  # milliseconds
            retry_options=types.HttpRetryOptions(attempts=1),  # our retries, not the SDK's too
        )
        # vertexai=False: a GOOGLE_GENAI_USE_VERTEXAI in the environment must not reroute an API-key client.
        self._client = genai.Client(vertexai=False, api_key=api_key, http_options=options)

    def _call(self, fn: Callable[[], object], what: str) -> object:
        """Run fn, retrying transient failures with exponential backoff and jitter."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except errors.APIError as e:
                if _is_key_rejection(e):
                    raise AuthError(f"Gemini rejected the API key ({e.code} {e.status}) during {what}") from None
                if e.code not in RETRY_STATUS:
                    raise GeminiError(f"{what} failed: {e.code} {e.status}: {e.message}") from None
                last = f"{e.code} {e.status}"
            except (errors.UnknownApiResponseError, json.JSONDecodeError):
                # A 200 with a cut-off body reaches us as a bare JSONDecodeError from inside the SDK.
                last = "malformed JSON response"
            except (_httpx.TimeoutException, _httpx.TransportError) as e:
                last = f"{type(e).__name__}"
            if attempt < self.retries:
                # Jitter (half to all of the exponential cap) spreads out threads that failed together.
                cap = min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
                self._sleep(self._rng.uniform(0.5 * cap, cap))
        raise TransientError(f"{what} still failing after {self.retries + 1} attempts (last: {last})")

    def check_access(self) -> None:
        """One token-free call (models.get) so a bad key or model name fails before any work starts."""
        self._call(lambda: self._client.models.get(model=self.model), f"checking access to {self.model}")

    def generate(self, prompt: str, seed: int | None = None, temperature: float = 1.0,
                 max_output_tokens: int | None = None, thinking_budget: int | None = None) -> Completion:
        """Ask the teacher once (with retries); blocked or empty answers come back as a Completion, not an error."""
        config = types.GenerateContentConfig(
            temperature=temperature, seed=seed, max_output_tokens=max_output_tokens,
            thinking_config=types.ThinkingConfig(thinking_budget=thinking_budget) if thinking_budget is not None
            else None,
        )
        response = self._call(
            lambda: self._client.models.generate_content(model=self.model, contents=prompt, config=config),
            f"generate_content on {self.model}",
        )
        usage = _usage(response.usage_metadata)
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            reason = getattr(feedback.block_reason, "value", feedback.block_reason)
            return Completion("", None, f"prompt blocked: {reason}", usage)
        if not response.candidates:
            return Completion("", None, None, usage)
        cand = response.candidates[0]
        finish = getattr(cand.finish_reason, "value", cand.finish_reason)
        parts = cand.content.parts if cand.content and cand.content.parts else []
        text = "".join(p.text for p in parts if p.text and not p.thought)
        blocked = f"candidate blocked: {finish}" if finish in BLOCKING_FINISH else None
        return Completion(text, finish, blocked, usage)

"""Gemini Developer API list prices, USD per 1M tokens (standard tier, prompts up to 200k tokens).

Thinking tokens are billed as output tokens, so cost = prompt * input + (output + thinking) * output.
Our prompts are ~100 tokens, far below gemini-2.5-pro's 200k-token threshold for its higher tier
($2.50 / $15.00), so only the first tier matters here.

Date and source: looked up 2026-11-28 with the project's search tool. Official page:
https://ai.google.dev/gemini-api/docs/pricing (not reachable from this machine, so UNVERIFIED against it);
the figures agree across secondary pages quoting it: deploybase.ai "Gemini 2.5 Pricing" (2026-01-08, pro and
flash), nicolalazzari.ai "Gemini API Pricing Explained" (flash, flash-lite), hivebook.wiki "Gemini 2.5" (all
three; thinking billed as output). Check the official page before relying on a cost estimate.
"""
from __future__ import annotations

PRICES_DATE = "2026-11-28"
PRICES_SOURCE = "https://ai.google.dev/gemini-api/docs/pricing (via secondary pages; unverified)"

# model: (input USD / 1M tokens, output USD / 1M tokens incl. thinking)
PRICES: dict[str, tuple[float, float]] = {
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-pro": (1.25, 10.00),
}


def estimate_cost(model: str, prompt_tokens: int, output_tokens: int, thinking_tokens: int) -> float | None:
    """Estimated USD for the given token counts, or None for a model not in the table."""
    if model not in PRICES:
        return None
    price_in, price_out = PRICES[model]
    return (prompt_tokens * price_in + (output_tokens + thinking_tokens) * price_out) / 1e6

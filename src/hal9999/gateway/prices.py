"""The shipped price table: USD per million tokens, each entry with its date and source.

``[gateway.prices."<model>"]`` in the user's config overrides or adds entries. A model is
matched exactly, then by the longest entry its name starts with (``claude-sonnet-4-5-2025...``
takes ``claude-sonnet-4-5``). A model with no price gets ``cost_usd = null``, never a guess.

An entry may also give ``max_output_tokens``, the most output tokens (thinking included) the
model emits in one call: a call that sets no output cap reserves that much under a budget
(see inflight.py), else ``[gateway] assumed_max_output_tokens``. It is no price: no cost uses
it.
"""

from __future__ import annotations

from collections.abc import Mapping

PRICES_AS_OF = "2026-11-01"
"""When the table below was last checked against the providers' public price pages."""

DEFAULT_PRICES: dict[str, dict[str, float]] = {
    # Anthropic, https://www.anthropic.com/pricing (API), checked 2026-11-01, and
    # https://platform.claude.com/docs/en/about-claude/pricing ("Model pricing"; cache_write
    # is the 5-minute write), checked 2026-11-26. Opus 4 and 4.1 ("claude-opus-4",
    # "claude-opus-4-1", "claude-opus-4-20250514"): $15/$75.
    "claude-opus-4": {"input": 15.0, "output": 75.0, "cache_read": 1.5, "cache_write": 18.75},
    # Opus 4.5 to 4.8 cost a third of that; the shorter prefix above would match them too.
    "claude-opus-4-5": {"input": 5.0, "output": 25.0, "cache_read": 0.5, "cache_write": 6.25},
    "claude-opus-4-6": {"input": 5.0, "output": 25.0, "cache_read": 0.5, "cache_write": 6.25},
    "claude-opus-4-7": {"input": 5.0, "output": 25.0, "cache_read": 0.5, "cache_write": 6.25},
    "claude-opus-4-8": {"input": 5.0, "output": 25.0, "cache_read": 0.5, "cache_write": 6.25},
    # Sonnet 4, 4.5 and 4.6, one price.
    "claude-sonnet-4": {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_write": 3.75},
    # Haiku 4.5, the only Haiku 4 ("claude-haiku-4-5").
    "claude-haiku-4": {"input": 1.0, "output": 5.0, "cache_read": 0.1, "cache_write": 1.25},
    # OpenAI, https://openai.com/api/pricing, checked 2026-11-01.
    "gpt-5": {"input": 1.25, "output": 10.0, "cache_read": 0.125},
    "gpt-5-mini": {"input": 0.25, "output": 2.0, "cache_read": 0.025},
    "gpt-4.1": {"input": 2.0, "output": 8.0, "cache_read": 0.5},
    # Google, https://ai.google.dev/gemini-api/docs/pricing, checked 2026-11-01.
    "gemini-2.5-pro": {"input": 1.25, "output": 10.0, "cache_read": 0.31},
    "gemini-2.5-flash": {"input": 0.3, "output": 2.5, "cache_read": 0.075},
}
"""Model name (or prefix) to USD per million input, output, cache-read and cache-write tokens."""

MAX_OUTPUT_TOKENS: dict[str, int] = {
    # The providers' model pages (OpenAI's, Google's Gemini models page). A prefix covers
    # every model it matches, later ones too, so only closed families are listed, each at the
    # largest of its models, and only those below the default (128000), which the others
    # reserve anyway. No Claude entry: Anthropic's Messages API requires max_tokens, so a Claude
    # call's cap is read, not assumed.
    "gpt-4.1": 32_768,
    "gemini-2.5-pro": 65_536,
    "gemini-2.5-flash": 65_536,
}
"""Model name (or prefix, matched as prices are) to the most output tokens it emits in one
call: the shipped ``max_output_tokens`` of the entries above."""


def _shipped() -> dict[str, dict[str, float]]:
    table = {name: dict(price) for name, price in DEFAULT_PRICES.items()}
    for name, most in MAX_OUTPUT_TOKENS.items():
        table[name]["max_output_tokens"] = most
    return table


SHIPPED = _shipped()
"""The shipped prices with their models' maximum output."""


def dearer(
    price: Mapping[str, float | None] | None, other: Mapping[str, float | None] | None
) -> dict[str, float | None] | None:
    """Field by field the dearer of two prices (None when either is unknown), for a call
    naming two models; the larger maximum output only when both know one (else the default
    applies)."""
    if price is None or other is None:
        return None
    merged: dict[str, float | None] = {
        name: max(price.get(name) or 0.0, other.get(name) or 0.0) for name in {*price, *other}
    }
    if not price.get("max_output_tokens") or not other.get("max_output_tokens"):
        merged.pop("max_output_tokens", None)
    return merged


def price_of(
    model: str | None, table: Mapping[str, Mapping[str, float]]
) -> dict[str, float] | None:
    """The price of ``model`` in ``table`` (exact, else the longest matching prefix)."""
    if not model:
        return None
    name = model.rpartition("/")[2]  # "openai/gpt-5" and "models/gemini-2.5-pro"
    if name in table:
        return dict(table[name])
    matches = [key for key in table if name.startswith(key)]
    return dict(table[max(matches, key=len)]) if matches else None


class PriceBook:
    """Prices looked up once per task and model, not once per call (the table is merged with
    the task's ``[gateway.prices]`` and searched by prefix)."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str | None], dict[str, float] | None] = {}

    def of(
        self, token: str, extra: Mapping[str, Mapping[str, float]], model: str | None
    ) -> dict[str, float] | None:
        """The price of ``model`` for the task holding ``token``."""
        key = (token, model)
        if key not in self._found:
            self._found[key] = price_of(model, {**SHIPPED, **extra})
        return self._found[key]

    def forget(self, token: str) -> None:
        """Drop a task's prices (withdrawn, or registered again with new settings)."""
        self._found = {k: v for k, v in self._found.items() if k[0] != token}

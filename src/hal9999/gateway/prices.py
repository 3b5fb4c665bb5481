"""Model prices: USD per million tokens.

A model's price is, in this order: ``[gateway.prices."<model>"]`` of the user's config, the
maintained price data of the ``genai-prices`` package (the providers' current models, updated
with each of its releases; imported at the first lookup, in the gateway alone), then the
table shipped here, each entry with its date and source. In a table a model is matched
exactly, then by the longest entry its name starts with (``claude-sonnet-4-5-2025...`` takes
``claude-sonnet-4-5``). A model with no price gets ``cost_usd = null``, never a guess.

An entry may also give ``max_output_tokens``, the most output tokens (thinking included) the
model emits in one call: a call that sets no output cap reserves that much under a budget
(see inflight.py), else ``[gateway] assumed_max_output_tokens``. It is no price: no cost uses
it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

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


MAINTAINED_FIELDS = {
    "input": "input_mtok",
    "output": "output_mtok",
    "cache_read": "cache_read_mtok",
    "cache_write": "cache_write_mtok",
}
"""hal's price fields and ``genai_prices``' names for them (USD per million tokens)."""


@functools.cache
def maintained_price(model: str) -> dict[str, float] | None:
    """``model``'s price in the ``genai-prices`` data (its provider found from the name),
    with the shipped ``max_output_tokens`` of its family; None when the data has no such
    model. A price in tiers by context length is taken at its first tier."""
    import genai_prices  # pydantic models and a large table: only where a call is priced

    try:
        found = genai_prices.calc_price(genai_prices.Usage(input_tokens=1), model_ref=model)
    except (LookupError, ValueError):
        return None
    price: dict[str, float] = {}
    for name, field in MAINTAINED_FIELDS.items():
        value: Any = getattr(found.model_price, field, None)
        value = getattr(value, "base", value)  # TieredPrices: the price below its first tier
        if value is not None:
            price[name] = float(value)
    if "input" not in price or "output" not in price:
        return None
    most = price_of(model, MAX_OUTPUT_TOKENS_TABLE)
    if most is not None:
        price["max_output_tokens"] = most["max_output_tokens"]
    return price


MAX_OUTPUT_TOKENS_TABLE = {name: {"max_output_tokens": float(most)}
                           for name, most in MAX_OUTPUT_TOKENS.items()}  # fmt: skip
""":data:`MAX_OUTPUT_TOKENS` as a price table, matched as prices are."""


def lookup(model: str | None, extra: Mapping[str, Mapping[str, float]]) -> dict[str, float] | None:
    """``model``'s price: ``extra`` (the task's ``[gateway.prices]``), else the maintained
    data, else the shipped table."""
    if not model:
        return None
    own = price_of(model, extra)
    if own is not None:
        return own
    try:
        maintained = maintained_price(model.rpartition("/")[2])
    except Exception:  # the package's data unreadable: the shipped table still prices
        logger.exception("gateway: the maintained prices could not be read")
        maintained = None
    return maintained if maintained is not None else price_of(model, SHIPPED)


class PriceBook:
    """Prices looked up once per task and model, not once per call (:func:`lookup`: the
    task's ``[gateway.prices]``, the maintained data, the shipped table)."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str | None], dict[str, float] | None] = {}

    def of(
        self, token: str, extra: Mapping[str, Mapping[str, float]], model: str | None
    ) -> dict[str, float] | None:
        """The price of ``model`` for the task holding ``token``."""
        key = (token, model)
        if key not in self._found:
            self._found[key] = lookup(model, extra)
        return self._found[key]

    def forget(self, token: str) -> None:
        """Drop a task's prices (withdrawn, or registered again with new settings)."""
        self._found = {k: v for k, v in self._found.items() if k[0] != token}

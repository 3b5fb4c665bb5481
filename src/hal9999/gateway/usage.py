"""Token usage read from an upstream's response, and its cost from the price table.

Every provider reports usage inside the body: Anthropic in ``message_start`` /
``message_delta`` (streaming) or ``usage`` (whole), OpenAI Chat and Responses in ``usage``
(the last stream chunk, or ``response.completed``), Gemini in ``usageMetadata`` of each chunk.
The counts a stream repeats are cumulative, so the meter keeps the largest value seen per field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_SCAN_LINE = 1 << 20
"""A stream line longer than this is not parsed for usage (it is still passed through)."""

_FIELDS: dict[str, str] = {
    # Anthropic
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_read_input_tokens": "cache_read",
    "cache_creation_input_tokens": "cache_write",
    # OpenAI Chat Completions
    "prompt_tokens": "input",
    "completion_tokens": "output",
    # Gemini
    "promptTokenCount": "input",
    "candidatesTokenCount": "output",
    "cachedContentTokenCount": "cache_read",
    "thoughtsTokenCount": "thoughts",
}


@dataclass
class CallUsage:
    """The tokens of one model call."""

    input: int = 0
    """Input tokens as the provider counts them (OpenAI and Gemini include cached ones)."""
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    thoughts: int = 0
    """Gemini's thinking tokens, billed as output."""
    separate_cache: bool = False
    """Anthropic counts cache reads and writes apart from ``input``; the others include them."""

    @property
    def total(self) -> int:
        """Every token of the call, as budgets count them."""
        extra = self.cache_read + self.cache_write if self.separate_cache else 0
        return self.input + self.output + self.thoughts + extra

    def merge(self, usage: dict[str, Any]) -> None:
        """Fold one ``usage`` object in (largest value per field: streams repeat totals)."""
        for key, value in usage.items():
            if isinstance(value, dict):
                # OpenAI's prompt_tokens_details / input_tokens_details carry cached tokens.
                cached = value.get("cached_tokens")
                if isinstance(cached, int) and key.endswith("tokens_details"):
                    self.cache_read = max(self.cache_read, cached)
                continue
            if key.startswith("cache_"):
                self.separate_cache = True
            name = _FIELDS.get(key)
            if name is not None and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, max(getattr(self, name), value))


class UsageMeter:
    """Reads usage and the model name out of a response body as it streams by."""

    def __init__(self) -> None:
        self.usage = CallUsage()
        self.model: str | None = None
        self._pending = b""
        self._whole = bytearray()
        self._streaming = False

    def feed(self, chunk: bytes) -> None:
        """Consume the next bytes of the body."""
        if not self._streaming and len(self._whole) < MAX_SCAN_LINE:
            self._whole += chunk
        data = self._pending + chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > MAX_SCAN_LINE:
            self._pending = b""
        for line in lines:
            self._line(line.strip())

    def close(self) -> CallUsage:
        """End of body: parse what is left; returns the call's usage."""
        self._line(self._pending.strip())
        if not self._streaming and self._whole:
            self._object(bytes(self._whole))
        return self.usage

    def _line(self, line: bytes) -> None:
        if line.startswith(b"data:"):
            self._streaming = True
            # Most events of a stream are text deltas: only those that can name the usage
            # or (until it is known) the model are parsed.
            if b"usage" in line or (self.model is None and b'"model' in line):
                self._object(line[5:].strip())
        elif self._streaming or not line.startswith((b"{", b"[")):
            return

    def _object(self, text: bytes) -> None:
        if not text or text[:1] not in (b"{", b"["):
            return
        try:
            value = json.loads(text)
        except ValueError:
            return
        self._walk(value, 0)

    def _walk(self, value: Any, depth: int) -> None:
        if depth > 4:
            return
        if isinstance(value, list):
            for item in value:
                self._walk(item, depth + 1)
            return
        if not isinstance(value, dict):
            return
        model = value.get("model") or value.get("modelVersion")
        if isinstance(model, str) and self.model is None:
            self.model = model
        for key in ("usage", "usageMetadata"):
            if isinstance(value.get(key), dict):
                self.usage.merge(value[key])
        for key in ("message", "response"):
            if isinstance(value.get(key), dict):
                self._walk(value[key], depth + 1)


def cost_usd(usage: CallUsage, price: Mapping[str, float | None] | None) -> float | None:
    """Dollars for ``usage`` at ``price`` (USD per million tokens: input, output, cache_read,
    cache_write); ``None`` when the model has no price."""
    if price is None:
        return None
    known = {name: value for name, value in price.items() if value is not None}
    plain_input = usage.input if usage.separate_cache else max(0, usage.input - usage.cache_read)
    total = (
        plain_input * known.get("input", 0.0)
        + (usage.output + usage.thoughts) * known.get("output", 0.0)
        + usage.cache_read * known.get("cache_read", known.get("input", 0.0))
        + usage.cache_write * known.get("cache_write", known.get("input", 0.0))
    )
    return round(total / 1_000_000, 8)

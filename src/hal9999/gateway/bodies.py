"""Stored request bodies (``[gateway] store_bodies = true``): masked before they touch disk.

A body is masked with the task's secret values, the real key and the placeholder token (each
with the encodings :class:`~hal9999.redact.SecretMasker` knows) and cut to
:data:`MAX_STORED_BODY` characters after masking, so a secret that straddles the cut is
masked whole first. Off by default: bodies are the conversation, code included.
"""

from __future__ import annotations

from hal9999.gateway.channel import Grant
from hal9999.redact import SecretMasker

MAX_STORED_BODY = 256 << 10
"""Characters of a request body kept (a long conversation is cut, not refused)."""


class StoredBodies:
    """One masker per registered task, made on its first stored body."""

    def __init__(self) -> None:
        self._maskers: dict[str, SecretMasker] = {}

    def stored(self, grant: Grant, body: bytes) -> str | None:
        """The text to store for ``body`` (None when the config keeps no bodies)."""
        if not grant.settings.get("store_bodies"):
            return None
        masker = self._maskers.get(grant.token)
        if masker is None:
            masker = SecretMasker([grant.key, grant.token, *grant.mask])
            self._maskers[grant.token] = masker
        # Enough beyond the cut that any occurrence starting before it is masked whole.
        text = body[: MAX_STORED_BODY + 4 * masker.max_len].decode("utf-8", "replace")
        return masker.mask(text)[:MAX_STORED_BODY]

    def forget(self, token: str) -> None:
        """Drop the masker of a withdrawn grant (its secrets leave memory with it)."""
        self._maskers.pop(token, None)

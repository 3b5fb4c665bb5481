"""A row of the ``gateway_requests`` table: one model call through the LLM gateway. The
table's SQL is :mod:`hal9999.store.gatewaytable`, which the store mixes in without this
model: a run that calls no model never defines it."""

# No `from __future__ import annotations` here: pydantic would then evaluate each field's
# annotation from its text, a compile each, on every run's path.
from pydantic import BaseModel, ConfigDict

from hal9999.store.gatewaytable import GatewayTable as GatewayTable  # re-exported


class GatewayRequest(BaseModel):
    """One model call as the gateway saw it (no body unless the config asks, then masked)."""

    model_config = ConfigDict(defer_build=True)  # built by the first run that reads one

    id: int | None = None
    task_id: str
    ts: float
    """When the call started (epoch seconds)."""
    method: str
    path: str
    model: str | None = None
    status: int
    """The HTTP status the agent got (a gateway refusal included); 0 for a call the gateway
    died in the middle of (error ``interrupted``)."""
    latency_ms: float
    """From the request to the end of the response body."""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = None
    error: str | None = None
    """A gateway error code (``budget_exceeded``, ``model_not_allowed``, ...) or None."""
    retries: int = 0
    """Upstream attempts the gateway retried (429/529/5xx) before this answer."""
    body: str | None = None

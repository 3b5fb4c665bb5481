"""Calls in flight under a budget: what each may spend at most, and when a new one waits, so
calls made at once cannot all pass a budget that none of them has spent yet.

A budget is checked against its recorded spend, and a call's spend is recorded when it ends.
Each call under a budget therefore *reserves* the most it can spend (:func:`reservation`) in
the budget's scope: its task for ``--max-tokens``/``--max-cost``, the UTC day for
``daily_max_tokens``/``daily_max_cost_usd`` (one :class:`InFlight` per kind of scope, keyed
by the task or the day). A call with no other call in flight in a scope goes whenever the
spend is under the budget, as before. One that arrives while others are in flight goes only
if the spend so far, the reservations in flight and its own all fit in the budget; otherwise
it waits until a call of that scope ends, and is checked again (the budget may be spent by
then: it is refused). So a scope spends at most its budget plus one call (the last that went
alone), the bound of an agent that calls one at a time, while calls that fit go in parallel;
plus, when calls without an output cap went together, what they emitted past the maximum
assumed for them (below).

The reservation is an upper bound: tokens are the request body's bytes (every input token is
at least one byte of the request's text; an image counts far fewer tokens than its base64
bytes) plus the request's output cap (``max_tokens``, ``max_completion_tokens``,
``max_output_tokens``, which include thinking and reasoning) for each answer the call asks
for (``n``, ``best_of``, Gemini's ``candidateCount``: each is billed); dollars are those
tokens at the model's dearest input price (input, cache write, cache read) and its output
price (the dearer of two models', when a Gemini or Azure path names another than the body).

A call whose cap the gateway does not read (none given, as OpenAI's Responses API allows
and agents such as Codex do; Gemini's ``generationConfig``; a body that is not JSON)
reserves its bytes plus the most its model emits in one call: the ``max_output_tokens`` of
its price entry (:data:`hal9999.gateway.prices.MAX_OUTPUT_TOKENS`,
``[gateway.prices."<model>"]``), else ``[gateway] assumed_max_output_tokens``
(:data:`ASSUMED_MAX_OUTPUT_TOKENS` by default). That bound is assumed, not read: a model
that emits more passes the budget by the excess. It lets uncapped calls go in parallel
while they fit (under a daily budget, one scope over every task, the calls of all tasks
would otherwise go one at a time). Only a call with no bound at all (under a cost budget,
a model with no price; a call bringing in input the upstream holds, such as an OpenAI
``previous_response_id``, whose bytes do not bound its input) goes alone.
A GET or HEAD without a body (a model listing) generates nothing: it is not held or counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

ASSUMED_MAX_OUTPUT_TOKENS = 128_000
"""The output tokens a call that sets no cap is assumed to emit at most, when neither its
model's entry nor ``[gateway] assumed_max_output_tokens`` says (a grant from a hal that
does not send the setting)."""


MAX_RESERVED_OUTPUT = 1 << 40
"""The most output tokens a call reserves, whatever cap it names (far past any model's)."""


@dataclass(frozen=True)
class Reservation:
    """The most one call may spend (None: no bound known, the call goes alone)."""

    tokens: int | None
    cost_usd: float | None


def reservation(
    size: int,
    output_cap: int | None,
    price: Mapping[str, float | None] | None,
    *,
    cost: bool,
    assumed_output: int = ASSUMED_MAX_OUTPUT_TOKENS,
    choices: int = 1,
) -> Reservation:
    """The reservation of a call with a body of ``size`` bytes and ``output_cap``, at
    ``price`` (USD per million tokens) when the task has a cost budget (``cost``). A call
    with no cap is assumed to emit its model's ``max_output_tokens``, else
    ``assumed_output``; a call that asks for several answers (``choices``), that much for
    each."""
    if output_cap is None:
        most = (price or {}).get("max_output_tokens")
        output_cap = int(most) if most else assumed_output
    # An agent's cap or count may be thousands of digits long: held to more than any call
    # emits, so its dollars stay a float (still no other call fits beside it).
    output_cap = min(output_cap * max(1, choices), MAX_RESERVED_OUTPUT)
    tokens = size + output_cap
    if not cost:
        return Reservation(tokens, 0.0)
    known = {name: value for name, value in (price or {}).items() if value is not None}
    if price is None or ("output" not in known and "input" not in known):
        return Reservation(tokens, None)
    dearest_input = max(known.get(name, 0.0) for name in ("input", "cache_write", "cache_read"))
    dollars = (size * dearest_input + output_cap * known.get("output", 0.0)) / 1_000_000
    return Reservation(tokens, dollars)


Limit = tuple[int | None, float | None]
"""A budget: the most tokens and dollars (None: no such budget)."""


@dataclass
class _Flight:
    """One scope's calls in flight."""

    calls: int = 0
    unbounded: int = 0
    """Of those, the ones with no bound (while one is in flight no other call goes)."""
    tokens: int = 0
    cost_usd: float = 0.0
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when one of the calls ends (then replaced)."""


class InFlight:
    """The reservations of the calls in flight under one kind of budget, by scope (a task,
    a day)."""

    def __init__(self) -> None:
        self._scopes: dict[str, _Flight] = {}

    def fits(self, scope: str, limit: Limit, spent: tuple[int, float], call: Reservation) -> bool:
        """Whether a call reserving ``call`` may go now under ``limit``, its ``scope`` having
        ``spent`` (tokens, dollars): alone always, else only within the budget with every
        call in flight."""
        flight = self._scopes.get(scope)
        if flight is None or flight.calls == 0:
            return True
        if flight.unbounded:
            return False
        tokens, dollars = spent
        max_tokens, max_cost_usd = limit
        if max_tokens is not None and (
            call.tokens is None or tokens + flight.tokens + call.tokens > max_tokens
        ):
            return False
        return max_cost_usd is None or (
            call.cost_usd is not None and dollars + flight.cost_usd + call.cost_usd <= max_cost_usd
        )

    async def ended(self, scope: str) -> None:
        """Wait until a call of ``scope`` in flight ends."""
        flight = self._scopes.get(scope)
        if flight is not None and flight.calls:
            await flight.ended.wait()

    def add(self, scope: str, call: Reservation) -> None:
        """A call of ``scope`` goes, reserving ``call``."""
        flight = self._scopes.setdefault(scope, _Flight())
        flight.calls += 1
        if call.tokens is None or call.cost_usd is None:
            flight.unbounded += 1
        else:
            flight.tokens += call.tokens
            flight.cost_usd += call.cost_usd

    def remove(self, scope: str, call: Reservation) -> None:
        """The call ended (its spend, if any, is counted by now): wake the scope's waiters."""
        flight = self._scopes[scope]
        flight.calls -= 1
        if call.tokens is None or call.cost_usd is None:
            flight.unbounded -= 1
        else:
            flight.tokens -= call.tokens
            flight.cost_usd -= call.cost_usd
        flight.ended.set()
        flight.ended = asyncio.Event()
        if not flight.calls:
            del self._scopes[scope]

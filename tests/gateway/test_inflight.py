"""Calls in flight under a task's budget: made at once they cannot all pass a budget none of
them has spent yet; the budget is passed by at most one call, and calls that fit go in
parallel."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from tests.gateway.test_proxy import call, client, gateway, grant_for, upstream
from tests.gateway.upstream import StormUpstream

from hal9999.gateway.proxy import Gateway

__all__ = ["gateway", "upstream"]
CALL_TOKENS = 23
"""What one call of the fake upstream spends (11 in, 7 out, 5 cache reads)."""
CALL_COST = (11 * 3 + 7 * 15 + 5 * 0.3) / 1e6
"""And what it costs, at the shipped Sonnet price."""


@pytest.mark.parametrize(
    ("budget", "limit", "per_call"),
    [({"max_tokens": 50}, 50, CALL_TOKENS), ({"max_cost_usd": 0.0003}, 0.0003, CALL_COST)],
    ids=["tokens", "cost"],
)
async def test_calls_made_at_once_pass_the_budget_by_at_most_one_call(
    gateway: tuple[Gateway, str], upstream: StormUpstream, budget: dict[str, float],
    limit: float, per_call: float,
) -> None:  # fmt: skip
    # Eight calls at once all passed the check (nothing spent yet) and all went out: eight
    # calls' spend on a budget of about two.
    gw, sock = gateway
    upstream.delay_s = 0.3
    grant = grant_for(upstream, **budget)
    gw.register(grant)
    async with client(sock) as http:
        answers = await asyncio.gather(*(call(http, grant.token) for _ in range(8)))
    await gw.drain()
    tokens, cost = gw.ledger.task_spent("t1")
    spent = tokens if "max_tokens" in budget else cost
    assert spent <= limit + per_call, "more than one call past the budget"
    # Each call's reservation (its bytes and max_tokens) does not fit beside another's: they
    # went one at a time while the budget lasted (three calls), the rest were refused.
    assert sorted(a.status_code for a in answers) == [200] * 3 + [400] * 5
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 400} == {
        "budget_exceeded"
    }
    assert len(upstream.seen) == 3 and upstream.peak == 1


@pytest.mark.parametrize(
    "budget", [{"max_tokens": 100_000}, {"max_cost_usd": 10.0}], ids=["tokens", "cost"]
)
async def test_calls_that_fit_the_budget_together_go_in_parallel(
    gateway: tuple[Gateway, str], upstream: StormUpstream, budget: dict[str, float]
) -> None:
    gw, sock = gateway
    upstream.delay_s = 0.5
    grant = grant_for(upstream, **budget)
    gw.register(grant)
    async with client(sock) as http:
        answers = await asyncio.gather(*(call(http, grant.token) for _ in range(4)))
    assert [a.status_code for a in answers] == [200] * 4
    assert upstream.peak == 4


async def test_a_call_with_no_output_cap_goes_alone(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    # No max_tokens: the most it can spend is unknown, so no other call of the task goes
    # beside it (and it waits for those in flight).
    gw, sock = gateway
    upstream.delay_s = 0.3
    grant = grant_for(upstream, max_tokens=100_000)
    gw.register(grant)
    body = {"model": "claude-sonnet-4-5", "messages": []}

    async def uncapped(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post("/v1/messages", json=body, headers={"x-api-key": grant.token})

    async with client(sock) as http:
        answers = await asyncio.gather(uncapped(http), call(http, grant.token), uncapped(http))
    assert [a.status_code for a in answers] == [200] * 3
    assert upstream.peak == 1
    assert gw.flights._scopes == {}, "every reservation was given back"
    # A GET with no body generates nothing: it does not wait for the call in flight.
    upstream.delay_s = 2.0
    async with client(sock) as http:
        slow = asyncio.ensure_future(uncapped(http))
        for _ in range(100):
            if gw.flights._scopes:
                break
            await asyncio.sleep(0.02)
        listed = await http.get("/v1/models", headers={"x-api-key": grant.token})
        assert not slow.done(), "the listing waited for the call in flight"
        assert listed.status_code == 501  # the fake upstream answers POST only
        assert (await slow).status_code == 200


@pytest.mark.parametrize(
    ("daily", "limit", "per_call"),
    [({"daily_max_tokens": 50}, 50, CALL_TOKENS),
     ({"daily_max_cost_usd": 0.0003}, 0.0003, CALL_COST)],
    ids=["tokens", "cost"],
)  # fmt: skip
async def test_calls_of_many_tasks_at_once_pass_the_daily_budget_by_at_most_one_call(
    gateway: tuple[Gateway, str], upstream: StormUpstream, daily: dict[str, float],
    limit: float, per_call: float,
) -> None:  # fmt: skip
    # Eight tasks calling at once all saw the day's spend under its budget and all went out:
    # eight calls' spend on a daily budget of about two.
    gw, sock = gateway
    upstream.delay_s = 0.3
    grants = [grant_for(upstream, f"t{n}", settings=dict(daily)) for n in range(8)]
    for grant in grants:
        gw.register(grant)
    async with client(sock) as http:
        answers = await asyncio.gather(*(call(http, g.token) for g in grants))
    await gw.drain()
    tokens, cost = gw.ledger.day_spent()
    assert (tokens if "daily_max_tokens" in daily else cost) <= limit + per_call, (
        "more than one call past the daily budget"
    )
    assert sorted(a.status_code for a in answers) == [200] * 3 + [400] * 5
    assert {a.json()["error"]["message"] for a in answers if a.status_code == 400} == {
        "hal gateway: today's budget for all tasks is spent"
    }
    assert len(upstream.seen) == 3 and upstream.peak == 1
    assert gw.day_flights._scopes == {}, "every reservation was given back"


async def test_calls_of_many_tasks_that_fit_the_daily_budget_go_in_parallel(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    gw, sock = gateway
    upstream.delay_s = 0.5
    grants = [grant_for(upstream, f"t{n}", settings={"daily_max_tokens": 100_000,
                                                     "daily_max_cost_usd": 10.0})
              for n in range(4)]  # fmt: skip
    for grant in grants:
        gw.register(grant)
    async with client(sock) as http:
        answers = await asyncio.gather(*(call(http, g.token) for g in grants))
    assert [a.status_code for a in answers] == [200] * 4
    assert upstream.peak == 4


async def test_a_call_naming_two_models_reserves_at_the_dearer_price(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    # Azure serves the deployment its path names, whatever model the body names: priced by
    # the body's (Haiku) its reservation was a fifteenth of the Opus deployment's, so calls
    # the budget could not hold at Opus prices went together.
    gw, sock = gateway
    upstream.delay_s = 0.3
    grant = grant_for(upstream, max_cost_usd=0.001)
    gw.register(grant)
    body = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": []}
    path = "/openai/deployments/claude-opus-4-1/chat/completions"

    async def azure(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(path, json=body, headers={"x-api-key": grant.token})

    async with client(sock) as http:
        answers = await asyncio.gather(azure(http), azure(http))
    assert [a.status_code for a in answers] == [200, 200]
    assert upstream.peak == 1, "two calls went together on reservations priced at Haiku's"

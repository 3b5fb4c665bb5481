"""Calls in flight under a task's budget: made at once they cannot all pass a budget none of
them has spent yet; the budget is passed by at most one call, and calls that fit go in
parallel, those with no output cap too (they reserve an assumed maximum output)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.gateway.upstream import StormUpstream
from tests.support.gateway import call, client, grant_for

from hal9999.config import load_config
from hal9999.errors import ConfigError
from hal9999.gateway.inflight import ASSUMED_MAX_OUTPUT_TOKENS
from hal9999.gateway.model import Unreadable, read_model
from hal9999.gateway.prices import dearer
from hal9999.gateway.proxy import Gateway

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


async def test_a_call_with_no_output_cap_reserves_the_assumed_maximum_output(
    gateway: tuple[Gateway, str], upstream: StormUpstream
) -> None:
    # No max_tokens: it reserves its bytes and the output assumed for a model the table does
    # not bound (128000), more than the budget, so no other call of the task goes beside it
    # (and it waits for those in flight).
    gw, sock = gateway
    upstream.delay_s = 0.3
    grant = grant_for(upstream, max_tokens=100_000)
    gw.register(grant)
    body = {"model": "gpt-5", "messages": []}

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


async def uncapped(http: httpx.AsyncClient, token: str, model: str = "gpt-5") -> httpx.Response:
    """A call of the Responses API with no ``max_output_tokens``, as Codex makes them; its
    body (17 bytes) is smaller than what the fake upstream spends (23 tokens), so only the
    output it reserves covers the spend."""
    body = json.dumps({"model": model}, separators=(",", ":"))
    headers = {"x-api-key": token, "content-type": "application/json"}
    return await http.post("/v1/responses", content=body, headers=headers)


@pytest.mark.parametrize(
    "daily", [{"daily_max_tokens": 10_000_000}, {"daily_max_cost_usd": 100.0}],
    ids=["tokens", "cost"],
)  # fmt: skip
async def test_uncapped_calls_of_many_tasks_under_a_large_daily_budget_go_in_parallel(
    gateway: tuple[Gateway, str], upstream: StormUpstream, daily: dict[str, float]
) -> None:
    # A call with no output cap had no bound, so it went alone in the day: every uncapped
    # call of every task of the HAL_HOME, one at a time. Each now reserves its bytes and the
    # assumed maximum output (128000 tokens, $1.28 at gpt-5's price): eight fit.
    gw, sock = gateway
    upstream.delay_s = 0.5
    grants = [grant_for(upstream, f"t{n}", settings=dict(daily)) for n in range(8)]
    for grant in grants:
        gw.register(grant)
    async with client(sock) as http:
        answers = await asyncio.gather(*(uncapped(http, g.token) for g in grants))
    assert [a.status_code for a in answers] == [200] * 8
    # All eight fit (eight went at once when the machine was idle); one at a time before.
    assert upstream.peak >= 4, "uncapped calls of different tasks went one at a time"
    assert gw.day_flights._scopes == {}, "every reservation was given back"


@pytest.mark.parametrize(
    ("daily", "limit"),
    [({"daily_max_tokens": 150}, 150), ({"daily_max_cost_usd": 0.0004}, 0.0004)],
    ids=["tokens", "cost"],
)
async def test_uncapped_calls_of_many_tasks_pass_a_small_daily_budget_by_at_most_one_call(
    gateway: tuple[Gateway, str], upstream: StormUpstream, daily: dict[str, Any], limit: float
) -> None:
    # Assumed to emit at most 10 tokens (the fake upstream emits 7), a few uncapped calls fit
    # in the budget together: they go in parallel, and the day's spend still ends at most one
    # call past the budget (reserving their bytes alone, all eight went at once: 184 tokens).
    gw, sock = gateway
    upstream.delay_s = 0.3
    settings = {**daily, "assumed_max_output_tokens": 10}
    grants = [grant_for(upstream, f"t{n}", settings=dict(settings)) for n in range(8)]
    for grant in grants:
        gw.register(grant)
    async with client(sock) as http:
        answers = await asyncio.gather(*(uncapped(http, g.token) for g in grants))
    await gw.drain()
    rows = [row for g in grants for row in gw.store.gateway_requests(g.task_id)]
    tokens, cost = gw.ledger.day_spent()
    cost_budget = "daily_max_cost_usd" in daily
    per_call = max((r.cost_usd or 0.0) if cost_budget else r.total_tokens for r in rows)
    assert (cost if cost_budget else tokens) <= limit + per_call, (
        "more than one call past the daily budget"
    )
    statuses = sorted(a.status_code for a in answers)
    assert 400 in statuses and 200 in statuses, statuses
    assert {a.json()["error"]["message"] for a in answers if a.status_code == 400} == {
        "hal gateway: today's budget for all tasks is spent"
    }
    assert upstream.peak >= 2, "the calls that fit the budget together went one at a time"
    assert gw.day_flights._scopes == {}, "every reservation was given back"


@pytest.mark.parametrize(
    ("model", "path", "settings", "output"),
    [("gpt-5", "/v1/responses", {}, 128_000),
     ("gpt-4.1", "/v1/responses", {}, 32_768),
     ("gpt-5", "/v1/responses", {"assumed_max_output_tokens": 1000}, 1000),
     ("gpt-4.1", "/v1/responses", {"assumed_max_output_tokens": 1000}, 32_768),
     ("my-model", "/v1/responses", {"prices": {"my-model": {
         "input": 1.0, "output": 2.0, "cache_read": None, "max_output_tokens": 1000}}}, 1000),
     ("gpt-4.1", "/openai/deployments/my-deployment/chat/completions", {}, 128_000)],
    ids=["default", "shipped-table", "setting", "table-wins", "price-entry", "two-models"],
)  # fmt: skip
def test_an_uncapped_call_reserves_its_models_maximum_output_else_the_setting(
    gateway: tuple[Gateway, str], upstream: StormUpstream, model: str, path: str,
    settings: dict[str, Any], output: int,
) -> None:  # fmt: skip
    gw, _ = gateway
    grant = grant_for(upstream, settings={"daily_max_tokens": 10_000_000, **settings})
    gw.register(grant)
    body = json.dumps({"model": model, "input": "hi"}).encode()
    wants = read_model("POST", path, [], body, strict=False)
    reserve = gw._reservation(grant, wants, "POST", len(body))
    assert reserve is not None and reserve.tokens == len(body) + output


GEMINI = "/v1beta/models/gemini-2.5-pro:generateContent"


@pytest.mark.parametrize(
    ("body", "output"),
    [({"generationConfig": {"maxOutputTokens": 1000}}, 1000),
     ({"generation_config": {"max_output_tokens": 1000}}, 1000),
     ({"generationConfig": {"maxOutputTokens": 1000, "candidateCount": 3}}, 3000),
     ({"generationConfig": {"temperature": 0.5}}, 65_536),
     ({"generationConfig": {"maxOutputTokens": -5}}, 65_536),
     ({"generationConfig": {"maxOutputTokens": 0}}, 65_536),
     ({"generationConfig": {"maxOutputTokens": "1000"}}, 65_536),
     ({"generationConfig": {"maxOutputTokens": 10.5}}, 65_536),
     ({"generationConfig": {"maxOutputTokens": True}}, 65_536),
     ({"generationConfig": {"maxOutputTokens": 1000, "candidateCount": "3"}}, 65_536),
     ({"generationConfig": [["maxOutputTokens", 1000]]}, 65_536),
     ({"generationConfig": {"maxOutputTokens": 1000, "max_output_tokens": 9}}, 65_536),
     ({"generationConfig": {"maxOutputTokens": 1000}, "max_tokens": 9}, 65_536)],
    ids=["capped", "proto-names", "candidates", "no-cap", "negative", "zero", "string",
         "float", "bool", "bad-count", "array", "named-twice", "two-caps"],
)  # fmt: skip
def test_a_gemini_calls_output_cap_bounds_its_reservation(
    gateway: tuple[Gateway, str], upstream: StormUpstream, body: dict[str, Any], output: int
) -> None:
    # Gemini's generateContent carries its cap in generationConfig.maxOutputTokens, which the
    # gateway did not read: a capped call reserved the model's whole maximum (65536).
    gw, _ = gateway
    grant = grant_for(upstream, settings={"daily_max_tokens": 10_000_000})
    gw.register(grant)
    raw = json.dumps({"contents": [], **body}).encode()
    wants = read_model("POST", GEMINI, [], raw, strict=True)
    reserve = gw._reservation(grant, wants, "POST", len(raw))
    assert reserve is not None and reserve.tokens == len(raw) + output


@pytest.mark.parametrize(
    ("path", "body", "output"),
    [("/v1/chat/completions", {"model": "gpt-5", "max_tokens": 100, "n": 4}, 400),
     ("/v1/completions", {"model": "gpt-5", "max_tokens": 100, "best_of": 5, "n": 2}, 500),
     ("/v1/chat/completions", {"model": "gpt-4.1", "n": 3}, 3 * 32_768),
     ("/v1/chat/completions", {"model": "gpt-5", "max_tokens": 100, "n": 1}, 100),
     ("/v1/chat/completions", {"model": "gpt-5", "max_tokens": 100, "n": None}, 100),
     (GEMINI, {"contents": [], "generationConfig": {"candidateCount": 2}}, 2 * 65_536)],
    ids=["n", "best_of", "uncapped-n", "one", "null", "gemini-uncapped-candidates"],
)  # fmt: skip
def test_a_call_asking_for_several_answers_reserves_each(
    gateway: tuple[Gateway, str], upstream: StormUpstream, path: str, body: dict[str, Any],
    output: int,
) -> None:  # fmt: skip
    # Each of a call's n answers may emit its cap, and each is billed; the reservation was
    # one answer's, so calls with n=8 going together could pass a budget eight times over.
    gw, _ = gateway
    grant = grant_for(upstream, settings={"daily_max_tokens": 10_000_000})
    gw.register(grant)
    raw = json.dumps(body).encode()
    for strict in (False, True):
        wants = read_model("POST", path, [], raw, strict=strict)
        reserve = gw._reservation(grant, wants, "POST", len(raw))
        assert reserve is not None and reserve.tokens == len(raw) + output


@pytest.mark.parametrize("n", ["3", 2.5, 0, -1, True])
def test_a_count_of_answers_that_is_not_a_whole_number_is_refused_under_a_strict_grant(
    n: object,
) -> None:
    raw = json.dumps({"model": "gpt-5", "max_tokens": 100, "n": n}).encode()
    with pytest.raises(Unreadable, match="n or best_of is not a whole number"):
        read_model("POST", "/v1/chat/completions", [], raw, strict=True)
    # Lenient (no allow-list, no cost budget): one answer, as an upstream that accepts it
    # at all would most likely read it.
    assert read_model("POST", "/v1/chat/completions", [], raw, strict=False).choices == 1


def test_a_gemini_cap_named_twice_in_one_config_counts_as_none() -> None:
    # A JSON reader keeps one of the two; which one the upstream keeps is its business.
    raw = b'{"contents":[],"generationConfig":{"maxOutputTokens":9,"maxOutputTokens":99999}}'
    assert read_model("POST", GEMINI, [], raw, strict=True).output_cap is None
    raw = b'{"generationConfig":{"maxOutputTokens":9},"generationConfig":{}}'
    assert read_model("POST", GEMINI, [], raw, strict=True).output_cap is None


def test_two_models_bound_the_output_only_when_both_know_theirs() -> None:
    # An Azure deployment with no maximum beside a body's model with one: the default
    # applies (the other's smaller maximum would not bound what the deployment emits).
    known = {"input": 1.0, "output": 2.0, "max_output_tokens": 1000.0}
    unknown: dict[str, float | None] = {"input": 3.0, "output": 1.0, "max_output_tokens": None}
    assert dearer(known, unknown) == {"input": 3.0, "output": 2.0}
    assert dearer(known, {**known, "max_output_tokens": 5000.0}) == {
        "input": 1.0, "output": 2.0, "max_output_tokens": 5000.0
    }  # fmt: skip
    assert dearer(known, None) is None


def test_the_assumed_maximum_output_is_a_checked_setting(tmp_path: Path) -> None:
    config_file = tmp_path / ".config" / "hal9999" / "config.toml"
    config_file.parent.mkdir(parents=True)
    env = {"HOME": str(tmp_path)}
    assert load_config(env, tmp_path).gateway.assumed_max_output_tokens == (
        ASSUMED_MAX_OUTPUT_TOKENS
    ) == 128_000  # fmt: skip
    config_file.write_text("[gateway]\nassumed_max_output_tokens = 200_000\n")
    assert load_config(env, tmp_path).gateway.assumed_max_output_tokens == 200_000
    for value, expected in [
        ("0", "expected a number greater than 0"),
        ("-5", "expected a number greater than 0"),
        ("1e12", "expected a whole number"),
        ("1_000_000_000", "expected a number at most 100000000"),
        ('"lots"', "expected a whole number"),
        ("1.5", "expected a whole number"),
        ("true", "expected a whole number"),
    ]:
        config_file.write_text(f"[gateway]\nassumed_max_output_tokens = {value}\n")
        with pytest.raises(ConfigError) as info:
            load_config(env, tmp_path)
        assert info.value.message == (
            f"{config_file}: gateway.assumed_max_output_tokens: {expected}"
        ), value
        assert info.value.hint == f"fix it in {config_file}"
    config_file.write_text('[gateway.prices."m"]\ninput = 1\noutput = 1\nmax_output_tokens = 0\n')
    with pytest.raises(ConfigError) as info:
        load_config(env, tmp_path)
    assert info.value.message == (
        f"{config_file}: gateway.prices.m.max_output_tokens: expected a number greater than 0"
    )


@pytest.mark.parametrize(
    "member",
    [{"previous_response_id": "resp_1"}, {"conversation": "conv_1"},
     {"Previous_Response_Id": "resp_1"}, {"cachedContent": "cachedContents/c1"}],
    ids=["previous-response", "conversation", "upper-case", "gemini-cache"],
)  # fmt: skip
async def test_a_call_bringing_in_input_the_upstream_holds_goes_alone(
    gateway: tuple[Gateway, str], upstream: StormUpstream, member: dict[str, str]
) -> None:
    # A 100-byte call naming an earlier response brings its whole context (up to a model's
    # window, 400k tokens) as input: it reserved its bytes, so many went together within a
    # budget each of them could pass alone.
    gw, sock = gateway
    upstream.delay_s = 0.2
    grant = grant_for(upstream, max_tokens=100_000)
    gw.register(grant)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [], **member}
    async with client(sock) as http:
        answers = await asyncio.gather(*(
            http.post("/v1/messages", json=body, headers={"x-api-key": grant.token})
            for _ in range(3)))  # fmt: skip
    assert [a.status_code for a in answers] == [200] * 3
    assert upstream.peak == 1, "calls whose input is not bounded by their size went together"
    wants = read_model("POST", "/v1/messages", [], json.dumps(body).encode(), strict=False)
    reserve = gw._reservation(grant, wants, "POST", 100)
    assert reserve is not None and reserve.tokens is None


@pytest.mark.parametrize("member", ["max_tokens", "n"])
async def test_a_cap_or_count_of_hundreds_of_digits_is_answered(
    gateway: tuple[Gateway, str], upstream: StormUpstream, member: str
) -> None:
    # Its reservation in dollars overflowed a float: OverflowError, a traceback in the
    # gateway's log and the agent's connection closed with no answer.
    gw, sock = gateway
    grant = grant_for(upstream, max_cost_usd=10.0)
    gw.register(grant)
    fields = {"max_tokens": 10, member: 10**400}
    data = json.dumps({"model": "claude-sonnet-4-5", "messages": [], **fields}).encode()
    async with client(sock) as http:
        answer = await http.post("/v1/messages", content=data,
                                 headers={"x-api-key": grant.token})  # fmt: skip
    assert answer.status_code == 200
    assert len(upstream.seen) == 1

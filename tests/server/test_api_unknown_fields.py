"""A request body with a name its route does not read is refused (400, the API's error shape)
naming the name and the ones it takes; what hal's own clients send is accepted."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from hal9999.server.api import build_router
from hal9999.server.app import ServerContext
from hal9999.server.routing import ApiRequest, Router, call_handler, starlette_routes
from hal9999.server.sse import EventFeed


def routes() -> Router:
    daemon: Any = SimpleNamespace(tasks=None, pool=None, store=None)
    ctx = ServerContext(home=Path("/x"), token="t", feed=EventFeed(None, None, lambda t: None))  # type: ignore[arg-type]
    return build_router(daemon, ctx)


def test_a_typo_in_a_body_is_a_400_naming_it_and_the_known_fields() -> None:
    called: list[ApiRequest] = []

    async def create(request: ApiRequest) -> Any:
        called.append(request)
        return {}

    router = Router()
    router.add("POST", "/v1/tasks", create, body={"type": "object", "properties": {
        "prompt": {"type": "string"}, "repo": {"type": "string"}}})  # fmt: skip
    client = TestClient(Starlette(routes=starlette_routes(router)))
    answer = client.post("/v1/tasks", content=json.dumps({"promt": "fix it", "repo": "."}))
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "usage"
    assert "'promt'" in error["message"]
    assert error["hint"] == "the fields it takes: prompt, repo"
    assert not called  # the handler never saw it
    assert client.post("/v1/tasks", content=b'{"prompt": "x"}').status_code == 200
    assert len(called) == 1


async def test_every_route_with_a_body_refuses_a_stray_name() -> None:
    with_body = [r for r in routes().routes if r.body is not None]
    assert {r.path for r in with_body} >= {"/v1/tasks", "/v1/hive/messages", "/v1/pool/warm"}
    for route in with_body:
        assert route.handler is not None
        body = json.dumps({"x" * 100: 1, "other": 2}).encode()
        request = ApiRequest(route.method, route.path, {}, {}, body, {"id": "t", "name": "a"})
        status, payload = await call_handler(route.handler, request, None, route.fields)
        assert status == 400, (route.path, payload)
        assert payload["error"]["message"] == (
            f"unknown field '{'x' * 64}...' in the request body (and 1 more)"
        )


@pytest.mark.parametrize("keys", [
    # hal9999.server.client.run_body and the thin hal run's body (cli/daemon_run.py)
    ["prompt", "repo", "ref", "agent", "provider", "process_manager", "timeout_s",
     "env_names", "env", "upstream_keys", "literal_env", "secret_names", "cwd", "priority",
     "retries",
     "max_tokens", "max_cost_usd", "egress", "egress_only", "config", "config_files",
     "config_origin", "config_sources"],
])  # fmt: skip
def test_what_hals_clients_send_to_create_a_task_is_known(keys: list[str]) -> None:
    from hal9999.server.client import run_body

    [create] = [r for r in routes().routes if r.path == "/v1/tasks" and r.method == "POST"]
    assert create.fields is not None
    assert set(run_body(dict.fromkeys(keys), {})) <= create.fields
    assert set(keys) <= create.fields


async def test_a_route_that_takes_no_body_refuses_a_name_in_one() -> None:
    # `{"provider": "docker"}` to POST /v1/pool/drain drained every provider's idle
    # sandboxes: a route that declares no body read none, and ignored what it was sent.
    called: list[ApiRequest] = []

    async def drain(request: ApiRequest) -> Any:
        called.append(request)
        return {}

    router = Router()
    router.add("POST", "/v1/pool/drain", drain)
    [route] = router.routes
    request = ApiRequest("POST", "/v1/pool/drain", {}, {}, b'{"provider": "docker"}')
    status, payload = await call_handler(drain, request, None, route.fields)
    assert (status, payload["error"]["code"]) == (400, "usage"), payload
    assert payload["error"]["message"] == "unknown field 'provider' in the request body"
    assert payload["error"]["hint"] == "the fields it takes: none"
    assert called == []
    for body in (b"", b"{}"):  # what hal's clients and the dashboard send
        request = ApiRequest("POST", "/v1/pool/drain", {}, {}, body)
        assert (await call_handler(drain, request, None, route.fields))[0] == 200
    assert len(called) == 2

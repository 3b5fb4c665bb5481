"""What a daemon's start leaves for later: its listeners load uvicorn's websocket
protocol at the first websocket (:mod:`websockets` is a visible share of a
daemon's start and stop), and its routes make the run body's JSON schema for the OpenAPI
document only. Counted, not timed, so load cannot make these pass or fail."""

from __future__ import annotations

import subprocess
import sys

import pytest

LISTENER = """
import sys
from uvicorn.server import ServerState
from hal9999.server.listen import Listener, ListenerLimits

async def app(scope, receive, send):
    pass

listener = Listener(app, ListenerLimits("unix"))
print("websockets" in sys.modules)
made = listener.config.ws_protocol_class(
    config=listener.config, server_state=ServerState(), app_state={}
)
print("websockets" in sys.modules, type(made).__name__)
"""


def test_the_websocket_protocol_loads_at_the_first_websocket() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LISTENER], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["False", "True", "WebSocketsSansIOProtocol"], done.stderr


def test_the_run_bodys_schema_is_made_for_the_openapi_document_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Building the daemon's routes makes no JSON schema of the run body (~2-3 % of a
    start); the fields the route checks are the schema's properties, and the OpenAPI
    document still has the schema."""
    from tests.support.server import daemon_router

    from hal9999.server import api
    from hal9999.server.openapi import openapi_schema
    from hal9999.tasks.request import RunRequest

    api.run_body_schema.cache_clear()
    made: list[int] = []
    real = RunRequest.model_json_schema
    monkeypatch.setattr(
        RunRequest, "model_json_schema", lambda **how: made.append(1) or real(**how)
    )
    router = daemon_router()
    assert made == []
    (create,) = [r for r in router.routes if (r.method, r.path) == ("POST", "/v1/tasks")]
    assert create.fields == frozenset(api.run_body_schema()["properties"])
    assert made == [1]
    body = openapi_schema(router)["paths"]["/v1/tasks"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == api.run_body_schema()
    api.run_body_schema.cache_clear()

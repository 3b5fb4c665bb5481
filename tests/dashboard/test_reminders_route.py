"""``GET /v1/hive/reminders``: pending and recently delivered reminders, hive-wide or of one
agent, without the host directory behind a reminder's file; in the OpenAPI schema."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.hive.conftest import make_agent

from hal9999.hive import reminders
from hal9999.hive.api import HiveAPI
from hal9999.server.hive_api import add_hive_routes
from hal9999.server.openapi import openapi_schema
from hal9999.server.routing import ApiRequest, Router, call_handler
from hal9999.store import Store


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[tuple[Router, Store]]:
    """The hive routes over a store with agents alice and bob."""
    with Store.open(tmp_path / "halhome") as store:
        make_agent(store, "alice")
        make_agent(store, "bob")
        router = Router()
        hive_api = HiveAPI(store, None, None, None, None)  # type: ignore[arg-type]
        add_hive_routes(router, SimpleNamespace(hive_api=hive_api))  # type: ignore[arg-type]
        yield router, store


def get(router: Router, **query: str) -> tuple[int, Any]:
    route = next(r for r in router.routes if r.path == "/v1/hive/reminders")
    assert route.handler is not None
    request = ApiRequest("GET", route.path, dict(query), {})
    return asyncio.run(call_handler(route.handler, request, None))


def test_lists_pending_then_recently_delivered_per_agent(
    routed: tuple[Router, Store], tmp_path: Path
) -> None:
    router, store = routed
    later = reminders.remind(store, agent="alice", text="check CI", in_s=3600)
    sooner = reminders.remind(store, agent="bob", text="rebase", in_s=60)
    work = tmp_path / "work"
    work.mkdir()
    due = reminders.remind(store, agent="alice", text="long note", at=time.time(),
                           file="notes/n.md", mounts=[("/workspace", work)])  # fmt: skip
    assert [r.id for r in reminders.fire_due(store)] == [due.id]

    status, listed = get(router)
    assert status == 200
    assert [r["id"] for r in listed] == [sooner.id, later.id, due.id]
    assert [r["state"] for r in listed] == ["pending", "pending", "delivered"]
    delivered = listed[2]
    assert delivered["file"] == "notes/n.md" and delivered["delivered"] is not None
    assert str(work) not in repr(listed)  # the host path behind the file is not shown

    status, alices = get(router, agent="alice")
    assert status == 200 and [r["id"] for r in alices] == [later.id, due.id]
    # Delivered longer ago than recent_s: left out.
    with store._write() as conn:
        conn.execute("UPDATE hive_reminders SET delivered = delivered - 7200 WHERE id = ?",
                     (due.id,))  # fmt: skip
    status, alices = get(router, agent="alice", recent_s="3600")
    assert status == 200 and [r["id"] for r in alices] == [later.id]


def test_bad_query_is_one_clear_error(routed: tuple[Router, Store]) -> None:
    router, _ = routed
    status, body = get(router, agent="nobody")
    assert status == 404, body
    status, body = get(router, recent_s="-1")
    assert status == 400 and "recent_s" in body["error"]["message"]
    status, body = get(router, recent_s="lots")
    assert status == 400 and "recent_s" in body["error"]["message"]


def test_in_the_openapi_schema(routed: tuple[Router, Store]) -> None:
    router, _ = routed
    schema = openapi_schema(router)
    operation = schema["paths"]["/v1/hive/reminders"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"agent", "recent_s"}

"""What an agent sends through its hive tools is masked with its task's secrets before the hive
keeps it (the secret sweep): otherwise a message, a question, a proposal goes into the store, the
dashboard and another agent's prompt as the agent wrote it."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.hive.mcp_client import call, connect

from hal9999.hive import broker
from hal9999.hive.mcp.server import McpHub
from hal9999.hive.mcp.tools import Hive
from hal9999.hive.mcp.wiring import agent_maskers
from hal9999.hive.store import AgentRecord, insert_agent, update_agent
from hal9999.redact import SecretMasker
from hal9999.store import Store, TaskRecord

SECRET = "hive-secret-8c41f0d7a2"
TOKEN = "hal-gw-hivetoken3b9e17c05d"


def _agents(store: Store, repo: Path) -> None:
    now = time.time()
    for name in ("alpha", "beta"):
        record = AgentRecord(
            name=name, agent="claude", provider="bwrap", repo=str(repo), kind="agent",
            created_at=now, updated_at=now,
        )  # fmt: skip
        insert_agent(store, record)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[tuple[Store, McpHub]]:
    store = Store.open(tmp_path / "home")
    _agents(store, tmp_path)
    maskers = {"alpha": SecretMasker([SECRET])}
    hub = McpHub(Hive(store=store, home=tmp_path / "home", masker_of=maskers.get))
    await hub.sync()
    yield store, hub
    await hub.close_all()
    store.close()


async def test_what_an_agent_sends_is_masked_before_the_hive_keeps_it(
    hub: tuple[Store, McpHub],
) -> None:
    store, mcp = hub
    encoded = base64.b64encode(SECRET.encode()).decode()
    async with connect(mcp.paths.socket("alpha")) as alpha:
        failed, _ = await call(alpha, "send", to="beta", body=f"key {SECRET} b64 {encoded}")
        assert not failed
        failed, _ = await call(alpha, "ask", question=f"is {SECRET} right?", to="beta")
        assert not failed
    bodies = [m.body for m in broker.inbox(store, "beta")]
    assert bodies and not [b for b in bodies if SECRET in b or encoded in b]
    assert [b for b in bodies if b.startswith("key [REDACTED] b64 [REDACTED]")]
    # Every row the hive keeps, read back as the dashboard and the API would.
    for table in ("hive_messages", "hive_questions"):
        rows = json.dumps([tuple(r) for r in store._query(f"SELECT * FROM {table}")])
        assert SECRET not in rows and encoded not in rows


async def test_an_agent_without_secrets_sends_as_written(hub: tuple[Store, McpHub]) -> None:
    store, mcp = hub
    async with connect(mcp.paths.socket("beta")) as beta:
        assert not (await call(beta, "send", to="alpha", body=f"{SECRET} is mine"))[0]
    assert [m.body for m in broker.inbox(store, "alpha")] == [f"{SECRET} is mine"]


def test_the_daemons_masker_of_an_agent_is_its_tasks_and_its_gateway_token(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "home")
    _agents(store, tmp_path)
    session = tmp_path / "session"
    (session / "run").mkdir(parents=True)
    (session / "run" / "gateway.json").write_text(json.dumps({"token": TOKEN, "port": 1}))
    task = TaskRecord(
        id="t0000001", prompt="p", agent="claude", provider="bwrap", process_manager="tmux",
        repo=str(tmp_path), repo_kind="local", branch="hal/t0000001", status="running",
        created_at=time.time(), session_dir=str(session),
    )  # fmt: skip
    store.insert_task(task)
    update_agent(store, "alpha", task_id=task.id)
    seen: list[Any] = []

    def masker(record: TaskRecord) -> SecretMasker:
        seen.append(record.id)
        return SecretMasker([SECRET])

    daemon = SimpleNamespace(store=store, service=SimpleNamespace(masker=masker))
    masker_of = agent_maskers(daemon)  # type: ignore[arg-type]
    try:
        found = masker_of("alpha")
        assert found is not None
        assert found.mask(f"{SECRET} {TOKEN}") == "[REDACTED] [REDACTED]"
        assert masker_of("alpha") is found and seen == [task.id]  # made once per turn
        assert masker_of("beta") is None  # no task yet: nothing it could hold
    finally:
        store.close()

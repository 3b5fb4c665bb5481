"""Fixtures of the hive's thread tests: a store with agents, a user's repository."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.hive.serve_helpers import commit_agent
from tests.support.hal import private_env
from tests.support.hive import AGENT, FakeTasks, World

from hal9999.hive.mcp.server import McpHub
from hal9999.hive.mcp.tools import Hive
from hal9999.hive.store import AgentRecord, insert_agent
from hal9999.store import Store

if TYPE_CHECKING:
    from hal9999.hive.mcp.server import McpHub


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` (as the user would) and return stdout."""
    return subprocess.run(
        ["git", "-c", "user.name=u", "-c", "user.email=u@u", *args],
        cwd=repo, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def local_hal(home: Path, cwd: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``hal ARGS...`` on ``home`` with the local provider, run in ``cwd`` (a private config
    directory beside it), to its end."""
    env = private_env(home, cwd / "xdg", HAL_PROVIDER="local")

    def hal(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hal9999", *args], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    return hal


def make_agent(store: Store, name: str) -> None:
    """Make ``name`` an agent of the hive (its record only: no sandbox, no turn)."""
    from hal9999.hive.store import AgentRecord, insert_agent

    now = time.time()
    insert_agent(store, AgentRecord(name=name, agent="custom", provider="local",
                                    created_at=now, updated_at=now))  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A fresh store with agents ``alice`` and ``bob``."""
    with Store.open(tmp_path / "halhome") as opened:
        make_agent(opened, "alice")
        make_agent(opened, "bob")
        yield opened


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The user's repository: ``main`` with two files, the user working on ``work``."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "app.py").write_text("def add(a, b):\n    return a - b\n")
    (path / "README").write_text("demo\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "initial")
    git(path, "checkout", "-q", "-b", "work")
    return path


def agent_commit(repo: Path, agent: str, files: dict[str, str], *, start: str = "main") -> str:
    """Commit ``files`` on the agent's branch (created from ``start``) without leaving the
    user's branch checked out elsewhere; returns the new head."""
    branch = f"hal/agent/{agent}"
    current = git(repo, "rev-parse", "--abbrev-ref", "HEAD")
    exists = subprocess.run(["git", "rev-parse", "--verify", "-q", f"refs/heads/{branch}"],
                            cwd=repo, capture_output=True).returncode == 0  # fmt: skip
    git(repo, "checkout", "-q", branch if exists else "-b", *([] if exists else [branch, start]))
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", "-A", *files)
    git(repo, "commit", "-qm", f"{agent}: change {', '.join(files)}")
    head = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", current)
    return head


def user_advances_main(repo: Path) -> str:
    """The user commits a file (NOTES) on main meanwhile and goes back to ``work``; returns
    main's new head."""
    git(repo, "checkout", "-q", "main")
    (repo / "NOTES").write_text("user's notes\n")
    git(repo, "add", "NOTES")
    git(repo, "commit", "-qm", "notes")
    head = git(repo, "rev-parse", "main")
    git(repo, "checkout", "-q", "work")
    return head


THREAD_EVENTS = {"approval_added", "approval_resolved", "question_asked", "question_answered",
                 "question_expired", "reminder_set", "reminder_due"}  # fmt: skip


def hive_events(store: Store) -> list[dict[str, object]]:
    """The hive events of approvals, questions and reminders, in ``gseq`` order."""
    from hal9999.hive.store import hive_events_after

    events = [event.model_dump() for event in hive_events_after(store, 0)]
    return [event for event in events if event["type"] in THREAD_EVENTS]


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[McpHub]:
    """An MCP hub on a fresh store (no agent records), every socket closed at the end."""
    from hal9999.hive.mcp.server import McpHub
    from hal9999.hive.mcp.tools import Hive

    store = Store.open(tmp_path / "home")
    hub = McpHub(Hive(store=store, home=tmp_path / "home"))
    yield hub
    await hub.close_all()
    store.close()


@pytest.fixture
def hive_repo(demo_repo: Path) -> Path:
    """The demo repository with the agent script committed."""
    commit_agent(demo_repo, AGENT)
    return demo_repo


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    home = tmp_path / "home"
    store = Store.open(home)
    now = time.time()
    for name, kind in (("alpha", "agent"), ("beta", "agent"), ("boss", "manager")):
        record = AgentRecord(
            name=name, agent="claude", provider="bwrap", repo=str(tmp_path), kind=kind,
            created_at=now, updated_at=now,
        )  # fmt: skip
        insert_agent(store, record)
    fake = FakeTasks()
    hub = McpHub(Hive(store=store, home=home, tasks=fake))
    await hub.sync()
    socks = {name: hub.paths.socket(name) for name in hub.served}
    yield World(store, hub, fake, socks)
    await hub.close_all()
    store.close()

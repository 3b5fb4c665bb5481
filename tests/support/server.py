"""The daemon's HTTP router and server in process, with its token."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hal9999.pool.settings import SchedulerSettings
from hal9999.server.api import build_router
from hal9999.server.app import ServerContext, build_app
from hal9999.server.listen import HalServer
from hal9999.server.routing import ApiRequest as Request
from hal9999.server.routing import Router
from hal9999.server.sse import EventFeed
from hal9999.tasks.scheduler import Scheduler
from hal9999.tasks.service import TaskService


def daemon_router() -> Any:
    """The daemon's real route table (handlers are bound, never called here)."""
    fake = SimpleNamespace(tasks=None, pool=None)
    ctx = ServerContext(home=Path("/x"), token="t", feed=EventFeed(None, None, lambda t: None))  # type: ignore[arg-type]
    return build_router(fake, ctx)  # type: ignore[arg-type]


TOKEN = "s3cret-token"


AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


def router() -> Router:
    """A router with one route, ``POST /v1/echo``, that reads the body's ``a``."""
    r = Router()

    async def echo(request: Request) -> Any:
        return {"body": request.json()}

    r.add("POST", "/v1/echo", echo, body_fields=frozenset({"a"}), body={})  # reads "a"
    return r


def http_server(r: Router, token: str, *, log_file: str | None = None, **limits: Any) -> HalServer:
    """The daemon's server stack serving ``r`` (no dashboard)."""
    ctx = ServerContext(home=Path("/nonexistent"), token=token, log_file=log_file)
    return HalServer(build_app(ctx, r, dashboard=False), **limits)


async def runs_dispatched_at(
    service: TaskService,
    monkeypatch: pytest.MonkeyPatch,
    write: str,
    act: Callable[[Scheduler], Awaitable[object]],
) -> list[tuple[dict[str, str], str | None]]:
    """The env and prompt each run started by ``act`` gets, when another task's end wakes
    the scheduler just as the store's ``write`` (in the acting thread) queued the task: that
    dispatch starts it, and the run begins, before ``act`` goes on (to submit it)."""
    scheduler = Scheduler(service, SchedulerSettings(), lambda name: 8)
    runs: list[tuple[dict[str, str], str | None]] = []

    async def run(task_id: str, *, given_env: Any = None, prompt: Any = None, **_: Any) -> Any:
        runs.append((dict(given_env or {}), prompt))
        return service.store.get_task(task_id)

    loop = asyncio.get_running_loop()
    written = getattr(service.store, write)

    def write_then_dispatch(*args: Any, **kw: Any) -> Any:
        done = written(*args, **kw)

        async def dispatch() -> None:
            assert scheduler.dispatch() == 1
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(dispatch(), loop).result()
        return done

    monkeypatch.setattr(service, "run", run)
    monkeypatch.setattr(service.store, write, write_then_dispatch)
    await act(scheduler)
    await asyncio.gather(*scheduler.running.values())
    return runs

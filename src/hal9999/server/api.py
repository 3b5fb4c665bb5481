"""The daemon's HTTP API: tasks, pool, sandboxes, status. JSON in, JSON out, under ``/v1``;
the event streams (server-sent events) of :mod:`hal9999.server.sse`."""

from __future__ import annotations

import asyncio
import functools
import os
from typing import TYPE_CHECKING, Any

from hal9999.errors import ConfigError
from hal9999.events.own import HAL_OWN
from hal9999.server.hive_api import add_hive_routes
from hal9999.server.routing import ApiRequest as Request
from hal9999.server.routing import Router
from hal9999.server.threads_api import add_thread_routes
from hal9999.spec import ArgvCommand
from hal9999.store import TaskRecord
from hal9999.tasks.branchmade import with_branch_made
from hal9999.tasks.pages import MAX_WAIT_S
from hal9999.tasks.request import RunRequest, check_env, wire_fields

if TYPE_CHECKING:
    from hal9999.server.app import ServerContext
    from hal9999.server.daemon import Daemon

LIMIT_MAX = 1_000_000
"""The most tasks one listing returns (``hal task list --limit``'s bound)."""
WARM_MAX = 1024
"""The most sandboxes one warm request creates (``hal pool warm COUNT``'s bound)."""
TASK = {"$ref": "#/components/schemas/TaskRecord"}
TASKS = {"type": "array", "items": TASK}
OBJECT: dict[str, Any] = {"type": "object"}
PAGE = {
    "type": "object",
    "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}},
}
TASK_PAGE = {
    "type": "object",
    "properties": {
        "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
        "status": {"type": "string"},
        "done": {"type": "boolean"},
        "task": {**TASK, "description": "The task's record, once done."},
    },
}
RESUME_BODY = {
    "type": "object",
    "properties": {
        "prompt": {"type": ["string", "null"]},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "upstream_keys": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
WARM_BODY = {
    "type": "object",
    "properties": {"count": {"type": "integer"}, "provider": {"type": "string"}},
}
EXEC_BODY = {
    "type": "object",
    "required": ["argv"],
    "properties": {
        "argv": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "timeout": {"type": ["number", "null"]},
    },
}


def task_json(task: TaskRecord) -> dict[str, Any]:
    """A task as the API returns it: its record's fields and ``branch_made``."""
    return with_branch_made(task.model_dump(mode="json"))


def _env(body: dict[str, Any], field: str = "env") -> dict[str, str]:
    env = body.get(field) or {}
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise ConfigError(f"{field} must map variable names to strings")
    return {str(k): v for k, v in env.items()}


def _int(value: Any, name: str, default: int) -> int:
    """A whole number, ``default`` when absent; an empty one is refused (``"count": ""``
    and ``?after_seq=`` were read as the default, and the request answered as if left out)."""
    if value is None:
        return default
    if value == "":
        raise ConfigError(f"{name} must be a whole number (it is empty)")
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: 1e400 is inf
        raise ConfigError(f"{name} must be a whole number") from exc


def _count(value: Any, name: str, default: int, top: int) -> int:
    """A whole number from 1 to ``top`` (the CLI's own bounds for the same option)."""
    number = _int(value, name, default)
    fraction = isinstance(value, float) and not value.is_integer()
    if isinstance(value, bool) or fraction or not 1 <= number <= top:
        raise ConfigError(f"{name} must be a whole number from 1 to {top}")
    return number


def _resume_body(body: dict[str, Any]) -> tuple[dict[str, str], str | None, dict[str, str]]:
    """A resume's variables, follow-up prompt and API keys, of the types and names a run
    takes (a prompt of another type reached the runner, which failed on it after the 200)."""
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ConfigError("prompt must be a string (or null)")
    check_env(body)
    return _env(body), prompt, _env(body, "upstream_keys")


def _position(value: str | None, name: str) -> int:
    """A sequence number to resume after (SQLite integers are 64-bit)."""
    position = _int(value, name, 0)
    if not 0 <= position < 2**63:
        raise ConfigError(f"{name} must be a sequence number (0 or more)")
    return position


def _quiet(wake: str | None) -> frozenset[str]:
    """The event types that do not end a follower's wait: with ``wake=agent``, hal's own
    (a follower that shows only the agent's events and the run's end)."""
    if wake in (None, ""):
        return frozenset()
    if wake != "agent":
        raise ConfigError("wake must be 'agent' (or left out)")
    return HAL_OWN - {"task_end"}


def _wait(value: str | None) -> float:
    try:
        wait = float(value) if value is not None else 0.0  # "" is refused
    except ValueError as exc:
        raise ConfigError("wait must be a number of seconds") from exc
    if not 0 <= wait <= MAX_WAIT_S:  # also refuses nan
        raise ConfigError(f"wait must be between 0 and {MAX_WAIT_S:g} seconds")
    return wait


def _timeout(value: Any) -> float | None:
    """An exec's timeout from a JSON body: none, or a positive, finite number of seconds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise ConfigError("timeout must be a positive number of seconds (or null)")
    return float(value)


@functools.cache
def run_body_schema() -> dict[str, Any]:
    """The JSON schema of ``POST /v1/tasks``' body (:class:`~hal9999.tasks.request.RunRequest`)."""
    return RunRequest.model_json_schema(ref_template="#/components/schemas/{model}")


def build_router(daemon: Daemon, ctx: ServerContext | None = None) -> Router:
    """Every route of the API, bound to ``daemon`` (the event streams need ``ctx``)."""
    router = Router()
    tasks, pool = daemon.tasks, daemon.pool

    # Store calls run in a thread: another process holding the database's write lock (for
    # up to the busy timeout) must never freeze the daemon's event loop.
    async def health(request: Request) -> Any:
        return {"ok": True, "pid": os.getpid()}

    async def status(request: Request) -> Any:
        return daemon.status(await tasks.queued())

    async def create(request: Request) -> Any:
        # Validated once, by the request's model, in the daemon's task API (the caller's
        # config, and the defaults from it or this daemon's); this daemon runs it.
        return task_json(await tasks.create(request.json()))

    async def list_tasks(request: Request) -> Any:
        wanted = request.query.get("status")
        limit = request.query.get("limit")
        found = await tasks.list(
            status=wanted.split(",") if wanted else None,
            limit=_count(limit, "limit", LIMIT_MAX, LIMIT_MAX) if limit is not None else None,
        )
        return [task_json(t) for t in found]

    async def show(request: Request) -> Any:
        return task_json(await tasks.get(request.params["id"]))

    async def task_events(request: Request) -> Any:
        page = await tasks.page(
            request.params["id"],
            after_seq=_position(request.query.get("after_seq"), "after_seq"),
            wait=_wait(request.query.get("wait")),
            quiet=_quiet(request.query.get("wake")),
        )
        record = page.pop("record", None)
        if record is not None:
            # The record as it ended, which a follower asks for next (one request fewer);
            # read with the page's status, after the run was over (no thread hop more).
            page["task"] = task_json(record)
        return page

    async def all_events(request: Request) -> Any:
        return await tasks.all_events(
            after=_position(request.query.get("after"), "after"),
            wait=_wait(request.query.get("wait")),
        )

    async def cancel(request: Request) -> Any:
        return task_json(await tasks.cancel(request.params["id"]))

    async def stop(request: Request) -> Any:
        return task_json(await tasks.stop(request.params["id"]))

    async def resume(request: Request) -> Any:
        env, prompt, keys = _resume_body(request.json())
        # A live agent whose runner died (a foreground `hal run` killed) is adopted.
        task = await tasks.resume(
            request.params["id"], prompt=prompt, env=env, detach=True, upstream_keys=keys
        )
        return task_json(task)

    async def remove(request: Request) -> Any:
        force = request.flag("force")
        return task_json(await tasks.remove(request.params["id"], force=force))

    async def pool_status(request: Request) -> Any:
        return await pool.full_status()

    async def warm(request: Request) -> Any:
        body = request.json()
        count = _count(body.get("count"), "count", 1, WARM_MAX)
        provider = body.get("provider")
        if provider is not None and (not isinstance(provider, str) or not provider.strip()):
            raise ConfigError("provider must be a provider's name (or left out for the defaults)")
        names = [provider] if provider is not None else daemon.warm_targets()
        created = {}
        for name in names:
            created[name] = await pool.warm(daemon.default_spec(name), count)
        return {"created": created, "pool": await pool.full_status()}

    async def drain(request: Request) -> Any:
        return {"destroyed": await pool.drain(), "pool": await pool.full_status()}

    async def sandboxes(request: Request) -> Any:
        return pool.sandboxes()

    async def sandbox_exec(request: Request) -> Any:
        body = request.json()
        argv = body.get("argv")
        # A NUL cannot cross into a program's arguments: refused here, not by exec's
        # ValueError deep in a provider.
        if (not isinstance(argv, list) or not argv
                or not all(isinstance(a, str) and "\0" not in a for a in argv)):  # fmt: skip
            raise ConfigError("argv must be a non-empty list of strings (without NUL)")
        timeout = _timeout(body.get("timeout"))
        provider = daemon.provider(request.params["provider"])
        sandbox = await provider.get(request.params["id"])
        result = await sandbox.exec(ArgvCommand(argv=tuple(argv)), timeout=timeout)
        return {
            "exit_code": result.exit_code,
            "stdout": result.stdout.decode("utf-8", "replace"),
            "stderr": result.stderr.decode("utf-8", "replace"),
        }

    async def sandbox_destroy(request: Request) -> Any:
        name, sandbox_id = request.params["provider"], request.params["id"]
        if not await pool.destroy_idle(name, sandbox_id):
            provider = daemon.provider(name)
            await provider.get(sandbox_id)  # SandboxNotFound when there is no such sandbox
            await provider.destroy(sandbox_id)
        return {"destroyed": sandbox_id}

    async def shutdown(request: Request) -> Any:
        asyncio.get_running_loop().call_soon(daemon.stopping.set)
        return {"stopping": True}

    add = router.add
    add("GET", "/v1/health", health, "Is the daemon up (and its pid).", response=OBJECT)
    add("GET", "/v1/status", status, "What the daemon is doing.", response=OBJECT)
    add(
        "GET",
        "/v1/events",
        all_events,
        "Every task's events after a gseq (long poll).",
        query=("after", "wait"),
        response=PAGE,
    )
    add(
        "GET",
        "/v1/tasks/{id}/events",
        task_events,
        "One task's events after a seq.",
        query=("after_seq", "wait", "wake"),
        response=TASK_PAGE,
    )
    # Its schema is made when the OpenAPI document is asked for, not at every daemon's
    # start and stop; the fields checked are the model's own.
    add("POST", "/v1/tasks", create, "Create a task and queue it.", body=run_body_schema,
        body_fields=wire_fields(), response=TASK)  # fmt: skip
    add(
        "GET",
        "/v1/tasks",
        list_tasks,
        "Tasks, newest first.",
        query=("status", "limit"),
        response=TASKS,
    )
    add("GET", "/v1/tasks/{id}", show, "One task by id or unique prefix.", response=TASK)
    add("POST", "/v1/tasks/{id}/cancel", cancel, "Cancel a task.", response=TASK)
    add("POST", "/v1/tasks/{id}/stop", stop, "Stop a task, keeping its files.", response=TASK)
    add(
        "POST",
        "/v1/tasks/{id}/resume",
        resume,
        "Resume a task (a follow-up prompt).",
        body=RESUME_BODY,
        response=TASK,
    )
    add(
        "DELETE",
        "/v1/tasks/{id}",
        remove,
        "Remove a finished task.",
        query=("force",),
        response=TASK,
    )
    add("GET", "/v1/pool", pool_status, "The warm pool per provider.", response=OBJECT)
    add("POST", "/v1/pool/warm", warm, "Warm sandboxes.", body=WARM_BODY, response=OBJECT)
    add("POST", "/v1/pool/drain", drain, "Destroy the idle warm sandboxes.", response=OBJECT)
    add("GET", "/v1/sandboxes", sandboxes, "Sandboxes the pool knows.", response=OBJECT)
    add(
        "POST",
        "/v1/sandboxes/{provider}/{id}/exec",
        sandbox_exec,
        "Run a command in a sandbox.",
        body=EXEC_BODY,
        response=OBJECT,
    )
    add(
        "DELETE",
        "/v1/sandboxes/{provider}/{id}",
        sandbox_destroy,
        "Destroy a sandbox.",
        response=OBJECT,
    )
    add("POST", "/v1/shutdown", shutdown, "Stop the daemon (agents keep running).", response=OBJECT)
    if ctx is not None and ctx.feed is not None:
        from hal9999.server.sse import add_stream_routes

        add_stream_routes(router, ctx)
    add_hive_routes(router, daemon)
    add_thread_routes(router, daemon)
    return router

"""A stand-in for the daemon's ``/v1`` JSON API with data a test controls (hostile data
included), so the dashboard's rendering and gate are tested without running agents."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

TOKEN = "fake-bearer-token"


def task(task_id: str, **fields: Any) -> dict[str, Any]:
    """A task record as the API returns it."""
    base = {
        "id": task_id, "prompt": "fix it", "agent": "claude", "provider": "bwrap",
        "process_manager": "tmux", "repo": "/src/repo", "repo_kind": "local", "ref": None,
        "base_commit": None, "branch": f"hal/{task_id}", "status": "running",
        "created_at": time.time(), "started_at": time.time(), "finished_at": None,
        "exit_code": None, "error_code": None, "error_message": None, "sandbox_id": "sb1",
        "runner_pid": 1, "session_dir": "/nonexistent", "agent_session_id": None,
        "timeout_s": None, "input_tokens": 10, "output_tokens": 20, "cost_usd": 0.0123,
        "files_changed": 0, "env_keys": [], "resumes": 0,
    }  # fmt: skip
    base.update(fields)
    return base


class FakeApi:
    """Tasks and events in memory; :meth:`emit` adds an event (from any thread)."""

    def __init__(self) -> None:
        self.hive: dict[str, list[dict[str, Any]]] = {
            "approvals": [], "questions": [], "agents": [], "messages": [], "reminders": [],
        }  # fmt: skip
        """The hive's records, as its routes return them."""
        self.tasks: dict[str, dict[str, Any]] = {}
        self.own_warm: dict[str, dict[str, Any]] = {}
        """What ``/v1/pool`` says providers keep warm themselves (kubernetes' free pods)."""
        self.events: list[dict[str, Any]] = []
        self.calls: list[tuple[str, str, Any]] = []
        self.header_names: list[set[str]] = []
        """The names of the headers each call in ``calls`` came with."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.changed: asyncio.Event | None = None
        """Set (and replaced by a new one) on every event: a stream waits on the one it saw
        before it looked at the events, so nothing lands unseen in between."""
        self.app = Starlette(routes=self._routes())

    def add_task(self, record: dict[str, Any]) -> None:
        """Put a task in the list."""
        self.tasks[record["id"]] = record

    def emit(self, **event: Any) -> dict[str, Any]:
        """Record an event with the next gseq and per-task seq, and wake the streams."""
        seq = 1 + sum(1 for e in self.events if e.get("task_id") == event["task_id"])
        full = {"seq": seq, "gseq": len(self.events) + 1, "ts": time.time(), **event}
        self.events.append(full)
        if self.loop is not None and self.changed is not None:
            self.loop.call_soon_threadsafe(self._notify)
        return full

    def emit_hive(self, **event: Any) -> dict[str, Any]:
        """Record a hive event: on the one stream, in gseq order with the task events, and
        without a task_id or seq (as the daemon's stream sends them)."""
        full = {"gseq": len(self.events) + 1, "ts": time.time(), "agent": "", **event}
        self.events.append(full)
        if self.loop is not None and self.changed is not None:
            self.loop.call_soon_threadsafe(self._notify)
        return full

    def _notify(self) -> None:
        # A Condition here failed under load ("cannot wait on un-acquired lock": its
        # wait_for timeout and the streams' yields inside the lock): an Event per change.
        assert self.changed is not None
        seen, self.changed = self.changed, asyncio.Event()
        seen.set()

    def _routes(self) -> list[Route]:
        def authed(handler: Any) -> Any:
            async def endpoint(request: Request) -> Response:
                if request.headers.get("authorization") != f"Bearer {TOKEN}":
                    return JSONResponse({"error": {"code": "unauthorized", "message": "no"}}, 401)
                if self.loop is None:
                    self.loop = asyncio.get_running_loop()
                    self.changed = asyncio.Event()
                body = await request.body()
                self.calls.append((request.method, request.url.path, body and json.loads(body)))
                self.header_names.append({name.lower() for name in request.headers})
                return await handler(request)  # type: ignore[no-any-return]

            return endpoint

        async def list_tasks(request: Request) -> Response:
            return JSONResponse(list(self.tasks.values()))

        async def show(request: Request) -> Response:
            found = self.tasks.get(request.path_params["id"])
            if found is None:
                return JSONResponse(
                    {"error": {"code": "task_not_found", "message": "no task"}}, 404
                )
            return JSONResponse(found)

        async def task_events(request: Request) -> Response:
            after = int(request.query_params.get("after_seq", "0"))
            tid = request.path_params["id"]
            page = [e for e in self.events if e.get("task_id") == tid and e["seq"] > after]
            return JSONResponse(
                {"events": page, "status": self.tasks[tid]["status"], "done": False}
            )

        async def control(request: Request) -> Response:
            return JSONResponse(self.tasks[request.path_params["id"]])

        async def status(request: Request) -> Response:
            return JSONResponse({"running": [], "queued": 0, "max_concurrent": 4,
                                 "pool": {"paused": False, "providers": {}}})  # fmt: skip

        async def empty_list(request: Request) -> Response:
            return JSONResponse([])

        async def pool(request: Request) -> Response:
            return JSONResponse({"paused": False, "providers": {}, "own_warm": self.own_warm})

        async def stream(request: Request) -> Response:
            last = int(request.headers.get("last-event-id") or 0) or len(self.events)
            assert self.changed is not None

            async def body() -> AsyncIterator[bytes]:
                sent = last
                yield b": hello\n\n"
                while True:
                    assert self.changed is not None
                    changed = self.changed
                    for event in self.events[sent:]:
                        yield f"id: {event['gseq']}\ndata: {json.dumps(event)}\n\n".encode()
                        sent = event["gseq"]
                    try:
                        await asyncio.wait_for(changed.wait(), 5)
                    except TimeoutError:
                        yield b": ping\n\n"

            return StreamingResponse(body(), media_type="text/event-stream")

        async def hive_list(request: Request) -> Response:
            kind = request.url.path.rsplit("/", 1)[-1]
            found = [
                r for r in self.hive[kind] if kind == "agents" or r["state"] in ("pending", "open")
            ]
            return JSONResponse(found)

        async def threads(request: Request) -> Response:
            pending = [a for a in self.hive["approvals"] if a["state"] == "pending"]
            open_ = [q for q in self.hive["questions"] if q["state"] == "open"]
            return JSONResponse({"approvals": pending, "questions": open_})

        async def approval(request: Request) -> Response:
            found = next(a for a in self.hive["approvals"] if a["id"] == request.path_params["id"])
            view = {"approval": found, "commits": "abc123 change", "diff": found.get("diff", "")}
            return JSONResponse({**view, "review": view["diff"]})

        async def decide(request: Request) -> Response:
            found = next(a for a in self.hive["approvals"] if a["id"] == request.path_params["id"])
            verb = request.path_params["verb"]
            found["state"] = "approved" if verb == "approve" else "denied"
            self.emit_hive(type="approval_resolved", approval_id=found["id"])
            return JSONResponse(found)

        async def answer(request: Request) -> Response:
            found = next(q for q in self.hive["questions"] if q["id"] == request.path_params["id"])
            found["state"], found["answer"] = "answered", (await request.json())["text"]
            self.emit_hive(type="question_answered", question_id=found["id"])
            return JSONResponse(found)

        async def stats(request: Request) -> Response:
            return JSONResponse({"turns": 3, "results": {"ok": 2, "error": 1}, "p50_ms": 1200,
                                 "p95_ms": 3000, "tool_calls": 7, "cost_usd": 0.5})  # fmt: skip

        async def inbox(request: Request) -> Response:
            shown = [dict(m) for m in self.hive["messages"]]
            if request.query_params.get("mark") in ("1", "true"):  # as the daemon does
                for m in self.hive["messages"]:
                    if m["recipient"] == "operator":
                        m["state"] = "read"
            return JSONResponse(shown)

        async def read(request: Request) -> Response:
            ids = (await request.json())["ids"]
            for m in self.hive["messages"]:
                if m["id"] in ids and m["recipient"] == "operator":
                    m["state"] = "read"
            return JSONResponse({"marked": ids})

        async def send(request: Request) -> Response:
            body = await request.json()
            message = {"id": f"m{len(self.hive['messages'])}", "sender": "operator",
                       "recipient": body["to"], "kind": "message", "body": body["body"],
                       "ref": None, "state": "sent", "created": time.time()}  # fmt: skip
            self.hive["messages"].append(message)
            return JSONResponse(message)

        async def reminders(request: Request) -> Response:
            return JSONResponse(self.hive["reminders"])

        return [
            Route("/v1/hive/threads", authed(threads)),
            Route("/v1/hive/approvals", authed(hive_list)),
            Route("/v1/hive/approvals/{id}", authed(approval)),
            Route("/v1/hive/approvals/{id}/{verb}", authed(decide), methods=["POST"]),
            Route("/v1/hive/questions", authed(hive_list)),
            Route("/v1/hive/questions/{id}/answer", authed(answer), methods=["POST"]),
            Route("/v1/hive/agents", authed(hive_list)),
            Route("/v1/hive/agents/{name}/stats", authed(stats)),
            Route("/v1/hive/inbox", authed(inbox)),
            Route("/v1/hive/inbox/read", authed(read), methods=["POST"]),
            Route("/v1/hive/messages", authed(send), methods=["POST"]),
            Route("/v1/hive/reminders", authed(reminders)),
            Route("/v1/tasks", authed(list_tasks)),
            Route("/v1/tasks/{id}", authed(show)),
            Route("/v1/tasks/{id}/events", authed(task_events)),
            Route("/v1/tasks/{id}/{action}", authed(control), methods=["POST"]),
            Route("/v1/status", authed(status)),
            Route("/v1/sandboxes", authed(empty_list)),
            Route("/v1/pool", authed(pool)),
            Route("/v1/events/stream", authed(stream)),
        ]

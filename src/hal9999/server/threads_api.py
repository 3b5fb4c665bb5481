"""The daemon's routes over the hive's open threads (``/v1/hive/approvals``, ``questions``,
``threads``), for the dashboard and any client holding the token.

Whoever holds the daemon's bearer token is the operator: decisions and answers made here are
the operator's (a body cannot name another decider). In this process, approved ``spawn`` and
``destroy`` proposals are carried out by the hive itself (:class:`~hal9999.hive.api.HiveAPI`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hal9999.errors import ConfigError
from hal9999.server.routing import ApiRequest as Request
from hal9999.server.routing import Router

if TYPE_CHECKING:
    from hal9999.server.daemon import Daemon


def _reason(body: dict[str, Any]) -> str | None:
    value = body.get("reason")
    if value is not None and not isinstance(value, str):
        raise ConfigError("reason must be a string")
    return value or None


def add_thread_routes(router: Router, daemon: Daemon) -> None:
    """Bind the approval, question and open-thread routes to ``daemon``'s hive API."""

    async def list_approvals(request: Request) -> Any:
        every = request.flag("all")
        found = await daemon.hive_api.approvals(every=every)
        return [a.model_dump(mode="json") for a in found]

    async def show_approval(request: Request) -> Any:
        return await daemon.hive_api.approval(request.params["id"])

    async def approve(request: Request) -> Any:
        reason = _reason(request.json())
        done = await daemon.hive_api.approve(request.params["id"], reason=reason)
        return done.model_dump(mode="json")

    async def deny(request: Request) -> Any:
        reason = _reason(request.json()) or "(no reason given)"
        done = await daemon.hive_api.deny(request.params["id"], reason=reason)
        return done.model_dump(mode="json")

    async def list_questions(request: Request) -> Any:
        every = request.flag("all")
        found = await daemon.hive_api.questions(every=every)
        return [q.model_dump(mode="json") for q in found]

    async def answer(request: Request) -> Any:
        text = request.json().get("text")
        if not isinstance(text, str):
            raise ConfigError("text must be a string")
        done = await daemon.hive_api.answer(request.params["id"], text)
        return done.model_dump(mode="json")

    async def threads(request: Request) -> Any:
        found = await daemon.hive_api.threads(request.name("agent"))
        return found.model_dump(mode="json")

    obj: dict[str, Any] = {"type": "object"}
    objs: dict[str, Any] = {"type": "array", "items": obj}
    reason = {"type": "object", "properties": {"reason": {"type": "string"}}}
    add = router.add
    add("GET", "/v1/hive/approvals", list_approvals, "Pending proposals (all: resolved too).",
        query=("all",), response=objs)  # fmt: skip
    add("GET", "/v1/hive/approvals/{id}", show_approval,
        "A proposal; for an apply, its commits and diff.", response=obj)  # fmt: skip
    add(
        "POST",
        "/v1/hive/approvals/{id}/approve",
        approve,
        "Approve and carry out a proposal (the proposer is told).",
        body=reason,
        response=obj,
    )
    add(
        "POST",
        "/v1/hive/approvals/{id}/deny",
        deny,
        "Deny a proposal; the reason reaches the proposer.",
        body=reason,
        response=obj,
    )
    add("GET", "/v1/hive/questions", list_questions, "Unanswered questions (all: every one).",
        query=("all",), response=objs)  # fmt: skip
    add("POST", "/v1/hive/questions/{id}/answer", answer, "Answer a question as the operator.",
        body={"type": "object", "required": ["text"],
              "properties": {"text": {"type": "string"}}}, response=obj)  # fmt: skip
    add("GET", "/v1/hive/threads", threads,
        "Open threads: pending proposals and unanswered questions (of one agent).",
        query=("agent",), response=obj)  # fmt: skip

"""The daemon's hive routes (``/v1/hive/...``): agents, messages, stats, vacuum, events.

Whoever holds the daemon's bearer token is the operator: a message sent through this API
is always from ``operator`` (a body cannot name another sender). Agents reach the hive
through their own channel (the MCP server), which attributes their calls by the socket.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

from hal9999.errors import ConfigError
from hal9999.hive.broker import OPERATOR
from hal9999.server.routing import ApiRequest as Request
from hal9999.server.routing import Router
from hal9999.tasks.pages import MAX_WAIT_S

if TYPE_CHECKING:
    from hal9999.server.daemon import Daemon


RECENT_MAX_S = 30 * 86400.0
"""The longest look back at delivered reminders."""
RECENT_MAX = 200
"""Delivered reminders listed at most (the newest)."""


def _text(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    """A string field; an optional one that is present must not be blank either (an empty
    ``agent`` or ``provider`` fell back to the default without a word)."""
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        left_out = "" if required else " (or left out for the default)"
        raise ConfigError(f"{name} must be a non-empty string{left_out}")
    return value


def _number(value: str | None, name: str, *, top: float) -> float:
    try:
        number = float(value) if value is not None else 0.0  # "" is refused
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number") from exc
    if not 0 <= number <= top:
        raise ConfigError(f"{name} must be between 0 and {top:.0f}")
    return number


def _gseq(value: str | None) -> int:
    """A hive event position to read after: a whole number (``1.5`` was read as 1)."""
    if value and not value.isdigit():
        raise ConfigError("after must be a whole number (a gseq, 0 or more)")
    return int(_number(value, "after", top=2**62))


def _flag(body: dict[str, Any], name: str) -> bool:
    """A JSON boolean field (``"false"``, a non-empty string, was true)."""
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false")
    return value


def _message(body: dict[str, Any]) -> str:
    """The message's text; an empty one is refused by the broker, in its own words."""
    value = body.get("body")
    if not isinstance(value, str):
        raise ConfigError("body must be a string (the message's text)")
    return value


def add_hive_routes(router: Router, daemon: Daemon) -> None:
    """Bind the hive routes to ``daemon``'s hive API."""
    # Read off the daemon at request time: the router is built before the daemon starts.

    async def spawn(request: Request) -> Any:
        body = request.json()
        kind: Literal["agent", "manager"] = "manager" if body.get("kind") == "manager" else "agent"
        if body.get("kind") not in (None, "agent", "manager"):
            raise ConfigError("kind must be agent or manager")
        record = await daemon.hive_api.spawn(
            str(_text(body, "name")),
            agent=_text(body, "agent", required=False),
            provider=_text(body, "provider", required=False),
            repo=_text(body, "repo", required=False), role=_text(body, "role", required=False),
            kind=kind, keep_warm=body.get("keep_warm"), warm_idle_s=body.get("warm_idle_s"),
        )  # fmt: skip
        return record.model_dump(mode="json")

    async def list_(request: Request) -> Any:
        return [a.model_dump(mode="json") for a in await daemon.hive_api.agents()]

    async def show(request: Request) -> Any:
        return await daemon.hive_api.agent(request.params["name"])

    async def stop(request: Request) -> Any:
        return (await daemon.hive_api.stop(request.params["name"])).model_dump(mode="json")

    async def start(request: Request) -> Any:
        return (await daemon.hive_api.start(request.params["name"])).model_dump(mode="json")

    async def remove(request: Request) -> Any:
        return (await daemon.hive_api.remove(request.params["name"])).model_dump(mode="json")

    async def agent_stats(request: Request) -> Any:
        return await daemon.hive_api.stats(request.params["name"])

    async def send(request: Request) -> Any:
        body = request.json()
        message = await daemon.hive_api.send(
            str(_text(body, "to")), _message(body), key=_text(body, "key", required=False)
        )
        return message.model_dump(mode="json")

    async def inbox(request: Request) -> Any:
        name = request.name("name") or OPERATOR
        every, mark = request.flag("all"), request.flag("mark")
        found = await daemon.hive_api.inbox(name, every=every, mark=mark)
        return [m.model_dump(mode="json") for m in found]

    async def read(request: Request) -> Any:
        # The dashboard marks read with this POST on the operator's click: its page load
        # only reads (a page on another port could open it in a popup; a GET changes nothing).
        ids = request.json().get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ConfigError("ids must be a list of message ids (strings)")
        return {"marked": await daemon.hive_api.mark_read(ids)}

    async def drop(request: Request) -> Any:
        name, message_id = request.params["name"], request.params["id"]
        return (await daemon.hive_api.drop_message(name, message_id)).model_dump(mode="json")

    async def run_vacuum(request: Request) -> Any:
        body = request.json()
        return await daemon.hive_api.vacuum(dry_run=_flag(body, "dry_run"))

    async def reminders(request: Request) -> Any:
        name = request.name("agent")
        recent = _number(request.query.get("recent_s", "86400"), "recent_s", top=RECENT_MAX_S)
        found = await daemon.hive_api.reminders(name)
        since = time.time() - recent
        pending = [r for r in found if r.state == "pending"]
        done = [r for r in found if r.state != "pending" and (r.delivered or 0) >= since]
        done.sort(key=lambda r: r.delivered or 0, reverse=True)
        # The host directory behind a reminder's file stays in the store: the sandbox path is
        # what the agent named and what the operator needs.
        return [
            {**r.model_dump(mode="json", exclude={"file_root", "file_rel", "file_shown"}),
             "file": r.file_shown}
            for r in [*pending, *done[:RECENT_MAX]]
        ]  # fmt: skip

    async def events(request: Request) -> Any:
        after = _gseq(request.query.get("after"))
        wait = _number(request.query.get("wait"), "wait", top=MAX_WAIT_S)
        page, last = await daemon.hive_api.events(after=after, wait=wait)
        return {"events": [e.model_dump(mode="json") for e in page], "last_gseq": last}

    obj: dict[str, Any] = {"type": "object"}
    objs: dict[str, Any] = {"type": "array", "items": obj}
    add = router.add
    add("POST", "/v1/hive/agents", spawn, "Spawn a named agent (asleep until mail).",
        body={"type": "object", "required": ["name"], "properties": {
            **{k: {"type": "string"}
               for k in ("name", "agent", "provider", "repo", "role", "kind")},
            "keep_warm": {"type": "boolean"}, "warm_idle_s": {"type": "number"},
        }}, response=obj)  # fmt: skip
    add("GET", "/v1/hive/agents", list_, "Every agent of the hive.", response=objs)
    add("GET", "/v1/hive/agents/{name}", show, "One agent, with recent turns.", response=obj)
    add("POST", "/v1/hive/agents/{name}/stop", stop, "Stop an agent.", response=obj)
    add("POST", "/v1/hive/agents/{name}/start", start, "Start a stopped agent.", response=obj)
    add("DELETE", "/v1/hive/agents/{name}", remove, "Remove an agent.", response=obj)
    add("GET", "/v1/hive/agents/{name}/stats", agent_stats, "Turn statistics of an agent.",
        response=obj)  # fmt: skip
    add("POST", "/v1/hive/messages", send, "Send a message as the operator.",
        body={"type": "object", "required": ["to", "body"], "properties": {
            "to": {"type": "string"}, "body": {"type": "string"},
            "key": {"type": "string", "description": "the sender's key of this send: the same"
                    " key again answers the message it sent (a retry sends nothing twice)"},
        }}, response=obj)  # fmt: skip
    add("GET", "/v1/hive/inbox", inbox, "A mailbox (the operator's by default).",
        query=("name", "all", "mark"), response=objs)  # fmt: skip
    add("POST", "/v1/hive/inbox/read", read,
        "Mark the operator's listed unread messages read (the others are left as they are).",
        body={"type": "object", "required": ["ids"], "properties": {
            "ids": {"type": "array", "items": {"type": "string"}}}}, response=obj)  # fmt: skip
    add("DELETE", "/v1/hive/agents/{name}/messages/{id}", drop,
        "Drop an unread message from an agent's mailbox (no turn gets it).",
        response=obj)  # fmt: skip
    add("POST", "/v1/hive/vacuum", run_vacuum, "Apply the hive's retention.",
        body={"type": "object", "properties": {"dry_run": {"type": "boolean"}}},
        response=obj)  # fmt: skip
    add("GET", "/v1/hive/reminders", reminders,
        "Reminders: pending (by due time), then delivered in the last recent_s seconds"
        " (default a day); of one agent with agent=.",
        query=("agent", "recent_s"), response=objs)  # fmt: skip
    add("GET", "/v1/hive/events", events, "Hive events after a gseq (long poll).",
        query=("after", "wait"), response=obj)  # fmt: skip

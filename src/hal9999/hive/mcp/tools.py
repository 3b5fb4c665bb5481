"""The hive's MCP tools: what each does for the calling agent, independent of the SDK.

A tool is an input model (pydantic: its JSON schema is what the agent CLI sees; keep the
descriptions short, every definition costs context in every turn) and an async function
``(Caller, args) -> str``. The caller is who the call's socket belongs to, never a name the
agent sends. Store access runs in a worker thread (SQLite is blocking I/O). A refusal is a
:class:`~hal9999.errors.HalError`: the server turns it into one line of MCP tool error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from hal9999.errors import HalError, HiveLimited, TaskStateError, UsageError
from hal9999.hive import broker, subtasks
from hal9999.hivesettings import HiveSettings
from hal9999.redact import SecretMasker
from hal9999.store import Store, TaskRecord
from hal9999.tasks.request import RunRequest, run_request

RECV_MAX_S = 40.0
"""A long-poll ``recv`` returns by then: MCP clients time a tool call out at about 60 s."""
RECV_POLL_S = 0.5
MAX_ACTIVE_SUBTASKS = 4
"""Sub-tasks one agent may have queued or running at once (a looping agent must not flood
the scheduler)."""
RESULT_PATCH_CHARS = 20_000
"""How much of a sub-task's patch ``task_result`` shows (the rest stays on its branch)."""
MAX_ANSWER_CHARS = 512 * 1024
"""The longest answer (its JSON) a tool gives. An answer waits in the daemon until the agent
reads it, and an agent has 8 connections of up to 16 calls each: 128 ``inbox`` answers of 50
messages of 64 KiB of control characters (each written as ``\\u0001``) held 3.5 GB of the
daemon for an agent that never read them. Lists are cut to fit (the rest on the next call);
one message always fits (64 Ki characters, six each at most)."""
ANSWER_ROOM = MAX_ANSWER_CHARS - 4096
"""What a list in an answer may take (the rest: its keys and a note)."""


class Lifecycle(Protocol):
    """Stopping and starting agents (the daemon's turn loop), for the manager's gated tools."""

    async def stop_agent(self, name: str, reason: str = ...) -> Any:
        """Stop agent ``name``."""
        ...

    async def start_agent(self, name: str) -> Any:
        """Start agent ``name`` again."""
        ...


class Delegate(Protocol):
    """How the MCP server starts and looks up sub-tasks (the daemon's task service)."""

    async def create(self, request: RunRequest) -> TaskRecord:
        """Create and queue a task."""
        ...

    async def get(self, task_id: str) -> TaskRecord:
        """One task by id."""
        ...

    async def shown_patch(self, task: TaskRecord, text: str) -> str:
        """``text`` of ``task``'s patch masked for a reader other than its caller (a
        TaskStateError when it cannot be)."""
        ...


@dataclass
class Hive:
    """What the tools act on (one per daemon)."""

    store: Store
    home: Path
    tasks: Delegate | None = None
    """Sub-task delegation; None: ``run_task`` and friends say it is unavailable."""
    request_defaults: Callable[[], dict[str, Any]] = field(default=dict)
    """Extra :class:`RunRequest` fields for sub-tasks (the daemon's process manager...)."""
    lifecycle: Lifecycle | None = None
    """The turn loop, for the manager's stop/restart (None: not available here)."""
    subtasks_per_day: int = HiveSettings.model_fields["subtasks_per_day"].default
    """Sub-tasks one agent may start in any 24 h (``[hive] subtasks_per_day``)."""
    over_budget: Callable[[], str | None] | None = None
    """Why the hive's daily budget is spent, or None (the turn loop's; blocking: it reads
    the store). While it is spent no sub-task starts, as no turn does."""
    starting: dict[str, asyncio.Lock] = field(default_factory=dict)
    """Per agent: held from counting its sub-tasks to recording a new one, so calls that
    overlap (one agent's calls run concurrently) cannot pass the bound together."""
    receiving: dict[str, asyncio.Lock] = field(default_factory=dict)
    """Per agent: held by the ``recv`` that polls the store for it; its other ``recv`` calls
    wait their turn without polling (one agent may have 128 calls in flight, each polling
    twice a second, on the daemon's threads)."""
    masker_of: Callable[[str], SecretMasker | None] | None = None
    """The masker of an agent's secrets, as its turns' output is masked (blocking: it reads
    the store); None: what an agent sends is kept as sent (no daemon, no secrets)."""
    applying: dict[str, asyncio.Lock] = field(default_factory=dict)
    """Per agent: held while an ``apply`` proposal resolves and pins its range (host git,
    several processes), so one agent runs one at a time, not as many as it has calls in
    flight (a hundred and more, each failing only after its git ran)."""

    async def db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking store call off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)


@dataclass(frozen=True)
class Caller:
    """The agent a call came from (by its socket) and what it may do."""

    hive: Hive
    agent: str
    manager: bool = False


class ToolArgs(BaseModel):
    """A tool's arguments: anything not declared is refused (no "as" or "sender")."""

    model_config = ConfigDict(extra="forbid")


class NoArgs(ToolArgs):
    """No arguments."""


class SendArgs(ToolArgs):
    """Send a message to an agent or the operator."""

    to: str = Field(description="agent name, or 'operator'")
    body: str = Field(description="the message")


class InboxArgs(ToolArgs):
    """Messages that came since your turn's prompt (each returned once)."""

    include_read: bool = Field(False, description="also the latest read ones")


class RecvArgs(ToolArgs):
    """Wait for a message."""

    wait_s: float = Field(RECV_MAX_S, ge=0, le=RECV_MAX_S, description="seconds to wait, max 40")


class RunTaskArgs(ToolArgs):
    """Delegate a sub-task to another sandbox."""

    prompt: str = Field(max_length=64 * 1024, description="what the sub-task's agent should do")
    ref: str | None = Field(None, description="branch or commit to start from (default: HEAD)")
    agent: str | None = Field(None, description="agent preset (default: yours)")


class TaskIdArgs(ToolArgs):
    """A sub-task you started."""

    id: str = Field(description="the id run_task returned")


Handler = Callable[[Caller, Any], Awaitable[str]]


@dataclass(frozen=True)
class Tool:
    """One MCP tool: its name, one-line description, input model and handler."""

    name: str
    description: str
    args: type[BaseModel]
    run: Handler
    manager_only: bool = False


def dump(value: Any) -> str:
    """A tool's JSON answer, compact (it lands in the agent's context)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _message_json(message: Any) -> dict[str, Any]:
    data = {"id": message.id, "from": message.sender, "kind": message.kind, "body": message.body}
    if message.ref:
        data["ref"] = message.ref
    return data


def fitting(items: list[dict[str, Any]], room: int = ANSWER_ROOM, *, one: bool = True) -> int:
    """How many of ``items``, from the first, fit in ``room`` characters of JSON (with
    ``one``, the first however long: it fits in an answer by itself)."""
    used = 0
    for n, item in enumerate(items):
        used += len(dump(item)) + 1
        if used > room and (n or not one):
            return n
    return len(items)


MORE = "more are waiting: call again for the rest"
"""The note of an answer whose list was cut to fit :data:`MAX_ANSWER_CHARS`."""


OLDER_LEFT_OUT = "older messages left out: an answer holds at most 512 Ki characters"
"""The note of an ``inbox(include_read)`` answer cut to its newest messages."""


def _messages(messages: list[Any], note: str | None) -> str:
    data: dict[str, Any] = {"messages": [_message_json(m) for m in messages]}
    if note:
        data["note"] = note
    return dump(data)


# -- messages ------------------------------------------------------------------------------
async def send(caller: Caller, args: SendArgs) -> str:
    """Send ``args.body`` to ``args.to`` as the caller."""
    message = await caller.hive.db(
        broker.send, caller.hive.store, sender=caller.agent, recipient=args.to, body=args.body
    )
    return dump({"sent": message.id, "to": args.to})


async def _take_unread(caller: Caller) -> tuple[list[Any], bool]:
    """The new messages this call took, and whether more are waiting (cut to fit)."""
    store = caller.hive.store
    found = await caller.hive.db(broker.inbox, store, caller.agent, limit=100)
    # A delivered message is in the current turn's prompt already: only new ones here.
    messages = [m for m in found if m.state == "sent"][:50]
    fit = fitting([_message_json(m) for m in messages])
    more, messages = fit < len(messages), messages[:fit]
    # Taken by the turn, read when it ends: a turn killed first gives them to the next one.
    # Only those this call moved: another call of the agent may have taken some meanwhile.
    taken = set(await caller.hive.db(broker.take, store, caller.agent, [m.id for m in messages]))
    return [m for m in messages if m.id in taken], more


async def inbox(caller: Caller, args: InboxArgs) -> str:
    """The caller's unread messages (taken by its turn); with ``include_read``, recent ones
    too (those of the turn's prompt stay its own: read when it ends)."""
    if args.include_read:
        store = caller.hive.store
        messages = await caller.hive.db(
            broker.inbox, store, caller.agent, include_read=True, limit=50
        )
        fit = fitting([_message_json(m) for m in reversed(messages)])  # the newest
        note = OLDER_LEFT_OUT if fit < len(messages) else None
        messages = messages[len(messages) - fit :]
        fresh = [m.id for m in messages if m.state == "sent"]
        await caller.hive.db(broker.take, store, caller.agent, fresh)
    else:
        messages, more = await _take_unread(caller)
        note = MORE if more else None
    return _messages(messages, note)


async def recv(caller: Caller, args: RecvArgs) -> str:
    """Unread messages as soon as there are any, or an empty answer after ``wait_s``."""
    deadline = time.monotonic() + min(args.wait_s, RECV_MAX_S)
    nothing = dump({"messages": [], "note": "nothing yet; call recv again to keep waiting"})
    polling = caller.hive.receiving.setdefault(caller.agent, asyncio.Lock())
    while polling.locked():  # another recv of this agent polls: wait, without a query
        if time.monotonic() >= deadline:
            return nothing
        await asyncio.sleep(RECV_POLL_S)
    async with polling:  # free: taken at once (nothing awaited since the check)
        while True:
            messages, more = await _take_unread(caller)
            if messages:
                return _messages(messages, MORE if more else None)
            if time.monotonic() >= deadline:
                return nothing
            await asyncio.sleep(RECV_POLL_S)


# -- sub-tasks -----------------------------------------------------------------------------
def _owned(hive: Hive, agent: str) -> list[str]:
    return subtasks.owned(hive.home, agent)


def _delegate(hive: Hive) -> Delegate:
    if hive.tasks is None:
        raise HalError("sub-tasks are not available here", hint="run the hive under `hal serve`")
    return hive.tasks


async def run_task(caller: Caller, args: RunTaskArgs) -> str:
    """Start a sub-task on the caller's repository; returns its id at once."""
    from hal9999.agents.registry import available_agents
    from hal9999.hive.store import get_agent
    from hal9999.tasks.state import ACTIVE

    hive = caller.hive
    tasks = _delegate(hive)
    record = await hive.db(get_agent, hive.store, caller.agent)
    if args.agent is not None and args.agent not in available_agents():
        raise UsageError(
            f"unknown agent {args.agent!r} for a sub-task",
            hint=f"one of: {', '.join(available_agents())}",
        )
    if record.repo is None:
        raise UsageError(
            f"agent {caller.agent!r} has no repository to run a sub-task on",
            hint="spawn the agent with --repo",
        )
    fields: dict[str, Any] = {
        "process_manager": "tmux",
        "timeout_s": None,
        **hive.request_defaults(),
    }
    request = run_request(
        {
            "prompt": args.prompt,
            "repo": record.repo,
            "ref": args.ref,
            "agent": args.agent or record.agent,
            "provider": record.provider,
            "cwd": Path(record.repo) if Path(record.repo).is_dir() else hive.home,
            **fields,
        },
        wire=False,
    )
    if hive.over_budget is not None and (why := await hive.db(hive.over_budget)):
        raise HiveLimited(f"{why}: no sub-task starts", hint="wait until it frees up")
    async with hive.starting.setdefault(caller.agent, asyncio.Lock()):
        # Under the lock: host git, one at a time per agent (a refused ref counts against
        # no bound, and one agent may have 128 calls in flight).
        if args.ref is not None and Path(record.repo).is_dir():
            request.ref = await _start_point(caller, args.ref)
        active = {s.value for s in ACTIVE}
        running = today = 0
        for task_id in await hive.db(_owned, hive, caller.agent):
            with contextlib.suppress(HalError):
                task = await tasks.get(task_id)
                running += task.status in active
                today += task.created_at > time.time() - 86400
        if today >= hive.subtasks_per_day:
            raise HiveLimited(
                f"you started {today} sub-tasks in the last 24 h "
                f"(at most {hive.subtasks_per_day}, [hive] subtasks_per_day)",
                hint="do the work in your own turn, or ask the operator",
            )
        if running >= MAX_ACTIVE_SUBTASKS:
            raise UsageError(
                f"you have {running} sub-tasks queued or running (at most {MAX_ACTIVE_SUBTASKS})",
                hint="wait for one with task_result first",
            )
        task = await tasks.create(request)
        await hive.db(subtasks.own, hive.home, caller.agent, task.id)
    return dump({"task": task.id, "status": task.status, "branch": task.branch})


async def _start_point(caller: Caller, ref: str) -> str:
    """The commit ``ref`` names in the caller's repository, when the caller may start a
    sub-task there: one its sandboxes were given (a branch or tag of the repository, not
    hal's), or on its own branch or a sub-task's of its own. A sub-task's checkout is cloned
    from the source whole, so ``hal/agent/<another>``, another task's ``hal/<id>`` or the
    operator's stash by its id (none of them in the snapshots sandboxes borrow) handed
    their files to the sub-task and, through its patch, to the agent. Every refusal reads
    the same: ``ref`` is resolved against all refs (``:/words``, an abbreviated id, a
    reflog entry), and "names no commit" against "not yours" told the agent, a guess at a
    time, the words and ids of others' commits."""
    from hal9999.hive.approvals import agent_branch
    from hal9999.hive.store import get_agent
    from hal9999.tasks.gitrepo import check_ref, git
    from hal9999.tasks.mirror import RESULTS

    hive = caller.hive
    repo = Path((await hive.db(get_agent, hive.store, caller.agent)).repo or "")
    check_ref(ref)
    refused = UsageError(
        f"ref {ref!r} is not yours to start from: no branch or tag of the repository (hal's "
        "result branches aside), your own branch or a sub-task's of yours holds a commit of "
        "that name",
        hint="name a branch or tag of the repository, or your own branch",
    )
    if ":/" in ref or "^{/" in ref:  # a message search: the agent's regex run by host git,
        raise refused  # over its own commits' messages too (a back-reference ran unbounded)
    try:
        commit = await git(
            ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"],
            cwd=repo,
        )
        holders = await git(
            ["for-each-ref", "--format=%(refname)", f"--contains={commit}", "refs/heads/",
             "refs/tags/"], cwd=repo,
        )  # fmt: skip
    except HalError:
        raise refused from None
    own = {f"refs/heads/{await hive.db(agent_branch, hive.store, caller.agent)}"}
    for task_id in await hive.db(_owned, hive, caller.agent):
        with contextlib.suppress(HalError):
            if branch := (await _own_task(caller, task_id)).branch:
                own.add(f"refs/heads/{branch}")
    for holder in holders.splitlines():
        if not holder.startswith(RESULTS) or holder in own:
            return commit  # the commit checked, not a name that may move before the clone
    raise refused


async def _own_task(caller: Caller, task_id: str) -> TaskRecord:
    from hal9999.hive.store import get_agent

    hive = caller.hive
    owned = await hive.db(_owned, hive, caller.agent)
    task = None
    if task_id in owned:  # another agent's or the operator's tasks stay theirs
        task = await _delegate(hive).get(task_id)
        # The list is by name and goes at the hub's next sync after the agent is removed:
        # an agent spawned again under the name before then did not start these.
        agent = await hive.db(get_agent, hive.store, caller.agent)
        if task.created_at < agent.created_at:
            task = None
    if task is None:
        raise UsageError(f"no sub-task {task_id!r} of yours", hint="use the id run_task returned")
    return task


def _status(task: TaskRecord) -> dict[str, Any]:
    """A sub-task's state as the CLI's ``--json`` says it (``branch_made``: whether its
    ``branch`` exists yet)."""
    from hal9999.tasks.branchmade import branch_made

    data: dict[str, Any] = {"task": task.id, "status": task.status, "branch": task.branch}
    data["branch_made"] = branch_made(task.repo_kind, task.session_dir)
    if task.error_message:
        data["error"] = task.error_message
    return data


async def task_status(caller: Caller, args: TaskIdArgs) -> str:
    """Where a sub-task of the caller's stands."""
    return dump(_status(await _own_task(caller, args.id)))


async def task_result(caller: Caller, args: TaskIdArgs) -> str:
    """A finished sub-task's outcome: status, branch and its patch (truncated)."""
    from hal9999.tasks.session import Session
    from hal9999.tasks.state import ACTIVE

    task = await _own_task(caller, args.id)
    data = _status(task)
    if task.status in {s.value for s in ACTIVE}:
        data["note"] = "still running; call task_result again later"
        return dump(data)
    patch = Session(Path(task.session_dir)).patch
    text = await caller.hive.db(_read_head, patch, RESULT_PATCH_CHARS)
    data["base_commit"] = task.base_commit
    try:  # the sub-task's secrets stay out of the caller's context like out of its log
        data["patch"] = await _delegate(caller.hive).shown_patch(task, text)
    except TaskStateError as exc:
        data["note"] = exc.message
    return dump(data)


def _read_head(path: Path, limit: int) -> str:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            text = handle.read(limit + 1)
    except OSError:
        return ""
    return text if len(text) <= limit else text[:limit] + "\n[... truncated: see the branch]"


# -- the manager ---------------------------------------------------------------------------
async def list_agents(caller: Caller, args: NoArgs) -> str:
    """Every agent of the hive with its state."""
    from hal9999.hive.store import list_agents as all_agents

    records = await caller.hive.db(all_agents, caller.hive.store)
    return dump(
        {
            "agents": [
                {"name": r.name, "agent": r.agent, "kind": r.kind, "state": r.state}
                | ({"detail": r.detail} if r.detail else {})
                for r in records
            ]
        }
    )


BASE_TOOLS: list[Tool] = [
    Tool("send", "Send a message to an agent or the operator.", SendArgs, send),
    Tool("inbox", "Your new messages (each returned once).", InboxArgs, inbox),
    Tool("recv", "Wait up to 40 s for messages; empty means call again.", RecvArgs, recv),
    Tool("run_task", "Hand a sub-task to a new sandbox; returns its id.", RunTaskArgs, run_task),
    Tool("task_status", "Status of a sub-task you started.", TaskIdArgs, task_status),
    Tool("task_result", "Outcome, branch and patch of a sub-task.", TaskIdArgs, task_result),
    Tool("list_agents", "Agents of the hive and their state.", NoArgs, list_agents, True),
]
"""The tools every agent has (``manager_only`` ones: the manager's)."""


def tools_for(manager: bool, extra: list[Tool] | None = None) -> dict[str, Tool]:
    """The tools one agent sees, by name."""
    chosen = [t for t in [*BASE_TOOLS, *(extra or [])] if manager or not t.manager_only]
    return {t.name: t for t in chosen}

"""The MCP tools over the hive's threads: questions, reminders, proposals (approvals) and
the open-threads view, plus the manager's gated lifecycle tools. Each acts as the caller
(the agent whose socket the call came in on)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from hal9999.errors import HalError, UsageError
from hal9999.hive import approvals, gates, questions, reminders, threads
from hal9999.hive.broker import OPERATOR
from hal9999.hive.mcp.tools import ANSWER_ROOM, MORE, Caller, NoArgs, Tool, ToolArgs, dump, fitting
from hal9999.hive.store import get_agent
from hal9999.store import Store
from hal9999.tasks.session import HOME_TARGET, WORKSPACE_TARGET, Session


class AskArgs(ToolArgs):
    """Ask the operator or another agent."""

    question: str = Field(description="the question")
    to: str = Field(OPERATOR, description="'operator' or an agent name")
    ttl_s: float | None = Field(None, description="seconds until it expires unanswered")


class AnswerArgs(ToolArgs):
    """Answer a question asked to you."""

    id: str = Field(description="the question id")
    text: str = Field(description="your answer")


class RemindArgs(ToolArgs):
    """Remind yourself later."""

    text: str = Field(description="what to remind you of")
    in_s: float | None = Field(None, description="seconds from now")
    at: float | None = Field(None, description="unix time (instead of in_s)")
    file: str | None = Field(None, description="a file of your workspace to attach")


class ProposeArgs(ToolArgs):
    """Propose an action for the operator's approval."""

    kind: Literal["apply", "spawn", "destroy"] = Field(
        description="apply: merge your branch; spawn: a new agent; destroy: an agent"
    )
    summary: str = Field(description="what and why")
    target: str = Field("main", description="apply: the branch to merge into")
    name: str | None = Field(None, description="spawn/destroy: the agent's name")
    agent: str | None = Field(None, description="spawn: agent preset (claude, codex...)")
    role: str | None = Field(None, description="spawn: the new agent's role prompt")


class SpawnArgs(ToolArgs):
    """Ask for a new agent (goes to approval)."""

    name: str = Field(description="the new agent's name")
    agent: str = Field(description="agent preset (claude, codex...)")
    role: str = Field(description="its role prompt")


class LifecycleArgs(ToolArgs):
    """Stop or restart an agent (goes to approval)."""

    name: str = Field(description="the agent")
    approval: str | None = Field(None, description="the approved proposal id, to carry it out")


async def ask(caller: Caller, args: AskArgs) -> str:
    """Queue a question; its answer arrives later in the caller's mailbox."""
    hive = caller.hive
    asked = await hive.db(
        questions.ask, hive.store, asker=caller.agent, question=args.question, to=args.to,
        ttl_s=args.ttl_s,
    )  # fmt: skip
    return dump({"question": asked.id, "to": asked.target, "note": "the answer comes by mail"})


async def answer(caller: Caller, args: AnswerArgs) -> str:
    """Answer a question the caller was asked."""
    hive = caller.hive
    done = await hive.db(questions.answer, hive.store, args.id, args.text, answerer=caller.agent)
    return dump({"answered": done.id, "to": done.asker})


def _mounts(store: Store, agent: str) -> list[tuple[str, Path]]:
    """The caller's sandbox directories and the session directories behind them."""
    record = get_agent(store, agent)
    if record.task_id is None:
        return []
    session = Session(Path(store.get_task(record.task_id).session_dir))
    return [(WORKSPACE_TARGET, session.workspace), (HOME_TARGET, session.home)]


async def remind(caller: Caller, args: RemindArgs) -> str:
    """Set a reminder for the caller."""
    hive = caller.hive
    mounts = await hive.db(_mounts, hive.store, caller.agent) if args.file else []
    set_ = await hive.db(
        reminders.remind, hive.store, agent=caller.agent, text=args.text, at=args.at,
        in_s=args.in_s, file=args.file, mounts=mounts,
    )  # fmt: skip
    return dump({"reminder": set_.id, "due": round(set_.due, 3)})


def _need(value: str | None, what: str, kind: str) -> str:
    if not value:
        raise UsageError(f"a {kind} proposal needs {what}")
    return value


async def propose(caller: Caller, args: ProposeArgs) -> str:
    """Queue a proposal for the operator; the decision arrives in the caller's mailbox."""
    hive = caller.hive
    if args.kind == "apply":
        record = await hive.db(get_agent, hive.store, caller.agent)
        if record.repo is None or not Path(record.repo).is_dir():
            raise UsageError("your work has no local repository to merge into")
        async with hive.applying.setdefault(caller.agent, asyncio.Lock()):
            made = await approvals.propose_apply(
                hive.store, proposer=caller.agent, repo=Path(record.repo), target=args.target,
                summary=args.summary,
            )  # fmt: skip
    elif args.kind == "spawn":
        name = _need(args.name, "a name", "spawn")
        payload = {"name": name, "agent": _need(args.agent, "an agent", "spawn"), "role": args.role}
        made = await hive.db(
            approvals.propose, hive.store, kind="spawn", proposer=caller.agent,
            title=f"spawn {name} ({args.agent}): {args.summary}", payload=payload,
        )  # fmt: skip
    else:
        name = _need(args.name, "a name", "destroy")
        made = await hive.db(
            approvals.propose, hive.store, kind="destroy", proposer=caller.agent,
            title=f"destroy {name}: {args.summary}", payload={"name": name},
        )  # fmt: skip
    return dump({"proposal": made.id, "title": made.title, "note": "the decision comes by mail"})


async def open_threads(caller: Caller, args: NoArgs) -> str:
    """Pending proposals and unanswered questions: the caller's, or hive-wide for the manager."""
    hive = caller.hive
    found = await hive.db(
        threads.open_threads, hive.store, None if caller.manager else caller.agent
    )
    approvals = [
        {"id": a.id, "kind": a.kind, "proposer": a.proposer, "title": a.title}
        for a in found.approvals
    ]
    asked = [
        {"id": q.id, "from": q.asker, "to": q.target, "question": q.question}
        for q in found.questions
    ]
    shown = approvals[: fitting(approvals)]  # questions: in what room the approvals left
    room = ANSWER_ROOM - sum(len(dump(a)) + 1 for a in shown)
    data: dict[str, Any] = {
        "approvals": shown,
        "questions": asked[: fitting(asked, room, one=not shown)],
    }
    if len(data["approvals"]) + len(data["questions"]) < len(approvals) + len(asked):
        data["note"] = MORE.replace("call again", "answer or resolve some")
    return dump(data)


async def request_spawn(caller: Caller, args: SpawnArgs) -> str:
    """The manager's spawn request: a spawn proposal."""
    spawn = ProposeArgs(
        kind="spawn", summary=f"requested by {caller.agent}", name=args.name, agent=args.agent,
        role=args.role,
    )  # fmt: skip
    return await propose(caller, spawn)


async def _lifecycle(
    caller: Caller, args: LifecycleArgs, action: Literal["stop", "restart"]
) -> str:
    """First call: a gated proposal. Once approved, the call with its id carries it out."""
    hive = caller.hive
    await hive.db(get_agent, hive.store, args.name)  # an unknown agent fails here
    if args.approval is None:
        made = await hive.db(
            approvals.propose, hive.store, kind="tool", proposer=caller.agent,
            title=f"{action} agent {args.name}", payload={"tool": action, "agent": args.name},
        )  # fmt: skip
        note = f"once approved, call {action} again with approval={made.id!r}"
        return dump({"proposal": made.id, "note": note})
    # Among the caller's own proposals only: another's full id, and whether a guessed prefix
    # matches any, are not the caller's to learn (the answer is that of no proposal at all).
    approval = await hive.db(approvals.get, hive.store, args.approval, proposer=caller.agent)
    wanted = {"tool": action, "agent": args.name}
    if approval.proposer != caller.agent or approval.kind != "tool" or approval.payload != wanted:
        raise UsageError(f"proposal {args.approval} is not your {action} of {args.name}")
    if approval.state != "approved":
        raise UsageError(f"proposal {args.approval} is {approval.state}, not approved")
    if hive.lifecycle is None:
        raise HalError("agents can only be stopped where the hive runs (`hal serve`)")
    await hive.db(gates.claim, hive.store, approval.id)  # one use: spent once done below
    try:
        await hive.lifecycle.stop_agent(args.name, f"{action} approved ({approval.id})")
        if action == "restart":
            await hive.lifecycle.start_agent(args.name)
    except BaseException:
        await asyncio.shield(hive.db(gates.release, hive.store, approval.id))
        raise
    await hive.db(gates.done, hive.store, approval.id)
    return dump({"done": action, "agent": args.name})


async def stop(caller: Caller, args: LifecycleArgs) -> str:
    """The manager's stop, gated by the operator's approval."""
    return await _lifecycle(caller, args, "stop")


async def restart(caller: Caller, args: LifecycleArgs) -> str:
    """The manager's restart, gated by the operator's approval."""
    return await _lifecycle(caller, args, "restart")


THREAD_TOOLS: list[Tool] = [
    Tool("ask", "Ask the operator or an agent; the answer comes by mail.", AskArgs, ask),
    Tool("answer", "Answer a question asked to you.", AnswerArgs, answer),
    Tool("remind", "Remind yourself later (in_s or at).", RemindArgs, remind),
    Tool("propose", "Ask the operator to approve: apply, spawn, destroy.", ProposeArgs, propose),
    Tool("open_threads", "Pending proposals and unanswered questions.", NoArgs, open_threads),
    Tool("request_spawn", "Ask for a new agent (approval).", SpawnArgs, request_spawn, True),
    Tool("stop", "Stop an agent (approval first).", LifecycleArgs, stop, True),
    Tool("restart", "Restart an agent (approval first).", LifecycleArgs, restart, True),
]
"""The tools over questions, reminders and approvals (``manager_only``: the manager's)."""

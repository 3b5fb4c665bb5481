"""The approval queue: proposals an agent makes and the operator approves or denies.

Kinds: ``spawn`` (a new agent), ``apply`` (merge the proposer's branch ``hal/agent/<name>``
into a branch of its repository; see :mod:`hal9999.hive.merge`), ``destroy`` (an agent) and
``tool`` (a tool call the operator gates). Every resolution (approved, denied with a reason,
expired) reaches the proposer as a message of kind ``approval`` from ``hal``, and is a hive
event. A resolution is compare-and-set on the row's state: of two processes resolving the
same proposal, one wins and the other is told it is no longer pending.

Store calls are synchronous; the async functions run theirs in a worker thread, and callers
on an event loop run the synchronous ones (:func:`deny`, :func:`propose`) in a thread too.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from hal9999.errors import HalError, ThreadStateError, UsageError
from hal9999.events.hive import ApprovalAdded, ApprovalResolved, HiveEvent
from hal9999.hive import broker, merge
from hal9999.hive.broker import OPERATOR, SYSTEM, Message
from hal9999.hive.store import hive_write, insert_hive_event
from hal9999.hive.threads import (
    Approval,
    ApprovalKind,
    agent_or_none,
    approval_of,
    check_participant,
    check_text,
    due_rows,
    find_row,
    new_id,
    notice,
    notify_deadline,
    select_rows,
)
from hal9999.store import Store
from hal9999.tasks.reviewdiff import review_text

DEFAULT_TTL_S = 7 * 86400.0
"""How long a proposal waits for a decision before it expires (and the proposer is told)."""
DIFF_LIMIT = 4 << 20
"""The most of a proposal's diff ``hal approvals show`` prints."""

MAX_PENDING = 20
"""Pending proposals one agent may have (a looping agent must not bury the operator)."""

Settle = Callable[[sqlite3.Connection, list[HiveEvent], dict[str, Any] | None], None]
"""Marks the proposal approved, with what was done (JSON-ready), inside the transaction that
commits the action; raises :class:`ThreadStateError`, rolling both back, when it is no
longer pending."""
Executor = Callable[[Approval, Settle], Awaitable[None]]
"""What carries out an approved proposal of one kind, settling it in the transaction that
commits what it did: a process killed at any moment leaves the proposal pending with
nothing done (approving again does it), or approved and done, never one without the other."""


def branch_of(agent: str) -> str:
    """The branch an agent's work lives on (unless the user took that name, see below)."""
    return f"hal/agent/{agent}"


def agent_branch(store: Store, agent: str) -> str:
    """Where the agent's work is in its repository: its task's branch, which collection
    records (``hal/agent/<name>``, or ``hal/agent/<name>-2`` when the user had moved that
    branch, so it was kept and the work landed beside it)."""
    from hal9999.errors import NotFoundError
    from hal9999.hive.store import get_agent

    try:
        task_id = get_agent(store, agent).task_id
        if task_id is not None:
            return store.get_task(task_id).branch or branch_of(agent)
    except NotFoundError:
        pass
    return branch_of(agent)


def _check_room(store: Store, proposer: str, conn: sqlite3.Connection | None = None) -> None:
    """UsageError when ``proposer`` has :data:`MAX_PENDING` proposals waiting; checked again
    in the insert's own transaction (``conn``): calls made at once all pass a check before."""
    sql = "SELECT COUNT(*) FROM hive_approvals WHERE proposer = ? AND state = 'pending'"
    (pending,) = (conn.execute(sql, (proposer,)).fetchone() if conn else
                  store._query(sql, (proposer,))[0])  # fmt: skip
    if proposer != OPERATOR and pending >= MAX_PENDING:
        raise UsageError(
            f"{proposer} already has {pending} proposals waiting for the operator",
            hint="wait for decisions (see open_threads) before proposing more",
        )


def _insert(store: Store, approval: Approval) -> Approval:
    event = ApprovalAdded(agent=agent_or_none(approval.proposer), approval_id=approval.id,
                          kind=approval.kind)  # fmt: skip
    with hive_write(store) as (conn, recorded):
        _check_room(store, approval.proposer, conn)
        conn.execute(
            "INSERT INTO hive_approvals (id, kind, proposer, title, payload, state, created,"
            " expires) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            (approval.id, approval.kind, approval.proposer, approval.title,
             json.dumps(approval.payload), approval.created, approval.expires),
        )  # fmt: skip
        recorded.append(insert_hive_event(conn, event))
    if approval.expires is not None:
        notify_deadline()
    return approval


def _new(kind: ApprovalKind, proposer: str, title: str, payload: dict[str, Any],
         ttl_s: float | None, approval_id: str | None = None) -> Approval:  # fmt: skip
    if ttl_s is not None and not 0 < ttl_s <= 365 * 86400:
        raise UsageError(f"a proposal's ttl must be above 0 and at most a year, not {ttl_s}")
    now = time.time()
    return Approval(
        id=approval_id or new_id("a"), kind=kind, proposer=proposer, title=title,
        payload=payload, state="pending", created=now,
        expires=now + ttl_s if ttl_s is not None else None,
    )  # fmt: skip


def propose(
    store: Store,
    *,
    kind: ApprovalKind,
    proposer: str,
    title: str,
    payload: dict[str, Any],
    ttl_s: float | None = DEFAULT_TTL_S,
) -> Approval:
    """Queue a ``spawn``, ``destroy`` or ``tool`` proposal (``apply`` has :func:`propose_apply`)."""
    if kind == "apply":
        raise UsageError("an apply proposal is made with propose_apply (it pins the commits)")
    check_participant(store, proposer, "the proposer")
    _check_room(store, proposer)
    title = check_text(title, "title")[:200]
    if len(json.dumps(payload)) > 16 * 1024:
        raise UsageError("the proposal's details are over 16 KiB", hint="keep them short")
    return _insert(store, _new(kind, proposer, title, payload, ttl_s))


async def propose_apply(
    store: Store,
    *,
    proposer: str,
    repo: Path,
    target: str,
    summary: str = "",
    ttl_s: float | None = DEFAULT_TTL_S,
) -> Approval:
    """Queue the proposer's own branch for merging into ``target`` of ``repo``: the range is
    resolved and its head pinned now, and that exact commit is what approval merges."""
    await asyncio.to_thread(check_participant, store, proposer, "the proposer")
    if proposer == OPERATOR:
        raise UsageError("an apply proposal is an agent's, for its own branch")
    if target.startswith("hal/"):  # another agent's work, a task's result: never a target
        raise UsageError(
            f"an apply proposal cannot merge onto {target}: it is one of hal's branches",
            hint="name a branch of the repository's own, like main",
        )
    await asyncio.to_thread(_check_room, store, proposer)
    if summary:
        check_text(summary, "summary")
    approval_id = new_id("a")
    branch = await asyncio.to_thread(agent_branch, store, proposer)
    await asyncio.to_thread(_remember_repo, store, repo)  # before the pin: see sweep_pins
    shown = await merge.pin(repo, branch, target, approval_id)
    plural = "s" if shown.commits != 1 else ""
    title = (f"apply {branch} onto {target}: {shown.commits} commit{plural}, "
             f"{shown.files} file{'s' if shown.files != 1 else ''}")  # fmt: skip
    payload = {**shown.payload(), "summary": summary}
    approval = _new("apply", proposer, title, payload, ttl_s, approval_id)
    try:
        return await asyncio.to_thread(_insert, store, approval)
    except BaseException:
        await merge.unpin(repo, approval_id)
        raise


def _remember_repo(store: Store, repo: Path) -> None:
    """Record ``repo`` among those :func:`sweep_pins` looks in (kept: a few rows ever)."""
    with store._write() as conn:
        conn.execute(
            "INSERT OR IGNORE INTO hive_pin_repos (repo, since) VALUES (?, ?)",
            (str(repo), time.time()),
        )


def get(store: Store, approval_id: str, *, proposer: str | None = None) -> Approval:
    """The approval with this id (or unique id prefix); with ``proposer``, among that
    agent's proposals only."""
    return approval_of(find_row(store, "approval", approval_id, proposer=proposer))


def list_approvals(
    store: Store, *, state: str | None = "pending", limit: int = 200
) -> list[Approval]:
    """The latest ``limit`` proposals, oldest first; only those in ``state`` unless None."""
    rows = select_rows(store, "hive_approvals", {"state": state}, "created DESC", limit)
    return [approval_of(row) for row in reversed(rows)]


async def show(store: Store, approval_id: str, *, limit: int = DIFF_LIMIT) -> dict[str, Any]:
    """The approval and, for ``apply``, its commits and unified diff as pinned."""
    approval = await asyncio.to_thread(get, store, approval_id)
    view: dict[str, Any] = {"approval": approval.model_dump()}
    if approval.kind == "apply":
        data = approval.payload
        try:
            log, diff, cut = await merge.shown(Path(data["repo"]), data["base"], data["head"],
                                               limit=limit)  # fmt: skip
        except (HalError, OSError) as exc:
            log, diff, cut = "", f"(the commits cannot be shown any more: {exc})", False
        # ``diff`` is git's bytes (decoded); ``review`` is what a reader is shown of it.
        view.update(commits=log, diff=diff, review=review_text(diff), diff_truncated=cut)
        if approval.state == "pending":
            try:
                view["preview"] = await merge.preview(_range(approval), approval.id)
            except (HalError, OSError) as exc:
                view["preview"] = {"refused": str(exc)}
    return view


def _range(approval: Approval) -> merge.ApplyRange:
    keys = ("repo", "branch", "target", "base", "head", "commits", "files")
    return merge.ApplyRange(**{key: approval.payload[key] for key in keys})


def _state_error(approval: Approval) -> ThreadStateError:
    by = f" by {approval.resolved_by}" if approval.resolved_by else ""
    return ThreadStateError(
        f"proposal {approval.id} is already {approval.state}{by}",
        hint="see `hal approvals list --all`",
    )


def _resolution(store: Store, approval: Approval, state: str, by: str, reason: str | None,
                body: str | None) -> tuple[Settle, Message | None]:  # fmt: skip
    """What moves a pending proposal to ``state`` (compare-and-set) inside a write
    transaction, recording it and telling the proposer ``body`` (unless None); and that
    message, whose recipient to wake once committed."""
    event = ApprovalResolved(agent=agent_or_none(approval.proposer), approval_id=approval.id,
                             kind=approval.kind, state=state, resolved_by=by)  # fmt: skip
    told = None
    if body is not None:
        told = notice(store, recipient=approval.proposer, body=body, kind="approval",
                      ref=approval.id)  # fmt: skip

    def settle(conn: sqlite3.Connection, recorded: list[HiveEvent],
               result: dict[str, Any] | None) -> None:  # fmt: skip
        changed = conn.execute(
            "UPDATE hive_approvals SET state = ?, reason = ?, result = ?, resolved = ?,"
            " resolved_by = ? WHERE id = ? AND state = 'pending'",
            (state, reason, json.dumps(result) if result is not None else None, time.time(),
             by, approval.id),
        ).rowcount  # fmt: skip
        if changed != 1:
            raise _state_error(get(store, approval.id))
        recorded.append(insert_hive_event(conn, event))
        if told is not None:  # in the same transaction: never resolved without it
            broker.commit(conn, recorded, told)

    return settle, told


def _resolve(store: Store, approval: Approval, state: str, by: str, reason: str | None,
             result: dict[str, Any] | None, body: str | None) -> Approval:  # fmt: skip
    """Move a pending proposal to ``state`` (compare-and-set), record it and tell the
    proposer ``body`` (unless None)."""
    settle, told = _resolution(store, approval, state, by, reason, body)
    with hive_write(store) as (conn, recorded):
        settle(conn, recorded, result)
    if told is not None:
        broker.wake(told.recipient)
    return get(store, approval.id)


def _pending(store: Store, approval_id: str) -> Approval:
    approval = get(store, approval_id)
    if approval.state != "pending":
        raise _state_error(approval)
    if approval.expires is not None and approval.expires <= time.time():
        _expire(store, approval)
        raise ThreadStateError(f"proposal {approval.id} has expired", hint="nothing was done")
    return approval


def _with_reason(text: str, reason: str | None) -> str:
    return f"{text} Reason: {reason}" if reason else text


async def approve(
    store: Store,
    approval_id: str,
    *,
    by: str = OPERATOR,
    reason: str | None = None,
    executors: Mapping[str, Executor] | None = None,
) -> Approval:
    """Carry out a pending proposal, then mark it approved and tell the proposer (a spawn
    or destroy: by its kind's ``executors``, the hive's where it runs, in the transaction
    that commits the agent's record, or its removal).

    When carrying it out is refused (a conflict, a moved branch), nothing changes and the
    proposal stays pending, so the operator can deny it with a reason or try again."""
    if reason:
        check_text(reason, "reason")
    approval = await asyncio.to_thread(_pending, store, approval_id)
    if approval.kind in ("spawn", "destroy"):
        return await _carry_out_agent(store, approval, by, reason, executors or {})
    result = await _carry_out(approval)
    what = _done(approval, result)
    body = _with_reason(f"Your proposal {approval.id} ({approval.title}) was approved by {by}"
                        f"{what}.", reason)  # fmt: skip
    resolved = await asyncio.to_thread(
        _resolve, store, approval, "approved", by, reason, result, body
    )
    if approval.kind == "apply":  # its pin, and any a killed resolve left in the repo
        await asyncio.to_thread(sweep_pins, store, Path(approval.payload["repo"]))
    return resolved


async def _carry_out(approval: Approval) -> dict[str, Any]:
    if approval.kind == "apply":  # a merge done already is found done again: idempotent
        return await merge.merge(_range(approval), approval.id)
    return {}  # a tool gate only records the decision; the tool's caller acts on it


async def _carry_out_agent(
    store: Store,
    approval: Approval,
    by: str,
    reason: str | None,
    executors: Mapping[str, Executor],
) -> Approval:
    executor = executors.get(approval.kind)
    if executor is None:
        raise ThreadStateError(
            f"a {approval.kind} proposal can only be carried out where the hive runs",
            hint="approve it again with `hal serve` running",
        )
    body = _with_reason(f"Your proposal {approval.id} ({approval.title}) was approved by {by}.",
                        reason)  # fmt: skip
    settle, told = _resolution(store, approval, "approved", by, reason, body)
    await executor(approval, settle)
    resolved = await asyncio.to_thread(get, store, approval.id)
    if resolved.state != "approved":  # an executor that did not settle: a bug in it
        raise HalError(f"carrying out proposal {approval.id} did not record it")
    if told is not None:
        broker.wake(told.recipient)
    return resolved


def _done(approval: Approval, result: dict[str, Any]) -> str:
    if approval.kind != "apply":
        return ""
    target, to = result["target"], str(result["to"])[:12]
    if result["how"] == "already-merged":
        return f"; {target} already held that work ({to})"
    return f"; {result['how']} of {approval.payload['branch']} into {target}, now at {to}"


def deny(store: Store, approval_id: str, *, by: str = OPERATOR, reason: str) -> Approval:
    """Refuse a pending proposal; the reason reaches the proposer."""
    check_text(reason, "reason")
    approval = _pending(store, approval_id)
    body = _with_reason(f"Your proposal {approval.id} ({approval.title}) was denied by {by}.",
                        reason)  # fmt: skip
    resolved = _resolve(store, approval, "denied", by, reason, None, body)
    _unpin_later(store, approval)
    return resolved


def _expire(store: Store, approval: Approval) -> Approval:
    body = (f"Your proposal {approval.id} ({approval.title}) expired without a decision; "
            "nothing was done. Propose again if it still matters.")  # fmt: skip
    resolved = _resolve(store, approval, "expired", SYSTEM, None, None, body)
    _unpin_later(store, approval)
    return resolved


def withdraw_all(store: Store, proposer: str, *, spare: str | None = None) -> int:
    """Close the pending proposals of an agent being removed (expired, nobody told), but
    ``spare`` (the approved proposal removing it, resolved with the removal)."""
    rows = store._query(
        "SELECT * FROM hive_approvals WHERE state = 'pending' AND proposer = ? AND id IS NOT ?",
        (proposer, spare),
    )
    closed = 0
    for row in rows:
        approval = approval_of(row)
        try:
            _resolve(store, approval, "expired", SYSTEM, f"{proposer} was removed", None, None)
        except ThreadStateError:
            continue
        _unpin_later(store, approval)
        closed += 1
    return closed


def expire_due(store: Store, now: float | None = None) -> list[Approval]:
    """Expire every pending proposal whose time is up; returns them."""
    now = time.time() if now is None else now
    rows = due_rows(store, "hive_approvals", "pending", now)
    expired: list[Approval] = []
    for row in rows:
        try:
            expired.append(_expire(store, approval_of(row)))
        except ThreadStateError:
            continue  # resolved by someone else meanwhile
    return expired


def _unpin_later(store: Store, approval: Approval) -> None:
    """Drop the pin of a denied or expired ``apply``, and any other pin of a settled
    proposal in its repository (sync code, so a plain git run)."""
    if approval.kind == "apply":
        sweep_pins(store, Path(approval.payload["repo"]))


def sweep_pins(store: Store, repo: Path | None = None, *, unknown: bool = False) -> int:
    """Remove the pins (``refs/hal-approvals/<id>``) of settled proposals from ``repo``, or
    from every repository an ``apply`` was proposed in (recorded before its pin); with
    ``unknown``, also those of proposals the store does not have (a propose killed between
    its pin and its record, or a settled one retention removed: only where no propose can
    be under way, the daemon's start). A process killed between resolving a proposal and
    dropping its pin left the ref, keeping its commits, for ever. Returns how many went."""
    if repo is None:
        rows = store._query("SELECT repo FROM hive_pin_repos ORDER BY repo")
        repos = [Path(str(row[0])) for row in rows if row[0]]
    else:
        repos = [repo]
    removed = 0
    for where in repos:
        pinned = merge.pins_sync(where)
        if not pinned:
            continue
        marks = ", ".join("?" * len(pinned))
        rows = store._query(
            f"SELECT id, state FROM hive_approvals WHERE id IN ({marks})", tuple(pinned)
        )
        states = {str(row[0]): str(row[1]) for row in rows}
        for approval_id in pinned:
            state = states.get(approval_id)
            if state == "pending" or (state is None and not unknown):
                continue
            merge.unpin_sync(where, approval_id)
            removed += 1
    return removed

"""How a run ends: the agent's work collected and brought back to the source repository,
and the errors that say why a run stopped early.

:func:`collect_result` runs once the agent has exited (status ``collecting``);
:func:`collect_leftovers` keeps what a run cut short by its timeout or disk limit (or an
agent that vanished) did. Both write to the task's record only through the runner's
``update`` (a thread, as every store write of a run).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from hal9999.errors import HalError, RepoError, SecretInResult, TaskTimeout
from hal9999.events.models import Message
from hal9999.process import pm2inside
from hal9999.providers import limits
from hal9999.providers.base import Provider, Sandbox
from hal9999.spec import ArgvCommand
from hal9999.store import TaskRecord
from hal9999.tasks import bringback, collect, gitrepo, resultscan
from hal9999.tasks.context import RunContext
from hal9999.tasks.landing import BroughtBack
from hal9999.tasks.state import TaskStatus

logger = logging.getLogger(__name__)

Update = Callable[..., Awaitable[TaskRecord]]
"""The runner's ``update(task_id, **fields)``."""
COLLECT_GRACE_S = 60.0
"""How long collecting may take after a timeout (the agent's work is still brought back)."""
COLLECT_ROOM = 3
"""How many times its disk limits a sandbox may hold while its result is collected: the
commit of leftovers, the bundle and the patch are copies of the work written there too.
The agent's code runs again then (a clean filter of its checkout's config, in `git add`),
and would write without any limit but the collection's time."""


def _watch(sandbox: Sandbox, home: Path) -> Callable[[], Awaitable[None]]:
    """The check a collection in ``sandbox`` makes while it runs (:func:`collect.collect`)."""
    disk = limits.DiskWatchdog(sandbox, home)
    return functools.partial(disk.check, room=COLLECT_ROOM)


async def quiet_ended(provider: Provider, sandbox: Sandbox) -> Sandbox:
    """The sandbox of an adopted run whose agent had already ended, with nothing left
    running in it: the runner that died may have been collecting, and its commands live on
    (a `git add` holding the checkout's index lock; two collections over one checkout) or
    were killed mid-way (a `git commit` leaves `HEAD.lock`). Restarted, so every process of
    it is gone, then the checkout's lock files dropped: no git holds one now. Call it only
    once this process has claimed the task (never under another's run)."""
    await provider.stop(sandbox.id)
    sandbox = await provider.start(sandbox.id)
    # Inside the sandbox: the checkout's paths are the agent's to point anywhere.
    stale = ArgvCommand(argv=("find", ".git", "-xdev", "-name", "*.lock", "-type", "f", "-delete"))
    try:
        result = await sandbox.exec(stale, timeout=60)
    except HalError as exc:
        logger.warning("sandbox %s: stale git locks: %s", sandbox.id, exc.one_line())
    else:
        if not result.ok:  # a checkout whose .git is no directory has none to drop
            said = result.stderr.decode(errors="replace").strip()[:200]
            logger.info("sandbox %s: stale git locks: %s", sandbox.id, said)
    return sandbox


async def end_leftovers(provider: Provider, sandbox: Sandbox) -> Sandbox:
    """``sandbox`` with nothing left running of an agent that exited, before its work is
    collected: what it left (a writer in the background) would go on acting past its end and
    change the checkout under the collection. A bwrap sandbox's pid namespace ended with the
    agent's command; a sandbox where daemons outlive their command (a container, a bare
    ssh host) ends them itself (``end_processes``), else, or when they would not settle, is
    restarted (:func:`quiet_ended`)."""
    if not pm2inside.hosts_daemons(sandbox):
        return sandbox
    end = getattr(sandbox, "end_processes", None)
    if end is None:
        return sandbox
    if await end():
        return sandbox
    logger.warning("sandbox %s: what the agent left would not end; restarting it", sandbox.id)
    return await quiet_ended(provider, sandbox)


async def collect_result(
    ctx: RunContext,
    sandbox: Sandbox,
    update: Update,
    *,
    unchecked: bool = False,
    home: Path | None = None,
) -> int:
    """Commit leftovers, write patch and bundle, bring the branch back; return files changed.
    ``unchecked``: the caller has removed the patch's marker (``patch_checked``) already.
    ``home``: hal's, whose disk (and the sandbox's use of it, up to :data:`COLLECT_ROOM`
    times its limits) is watched while the collection runs, as while the agent did.

    Work the branch cannot carry (nested repositories, submodules) fails the task loudly,
    with the work kept in the session; so does a result that holds a secret's value.
    """
    task, session = ctx.task, ctx.session
    assert task.base_commit is not None
    if ctx.checks_patch and not unchecked:  # until its scan clears it (TaskService.shown_patch)
        await asyncio.to_thread(session.patch_checked.unlink, missing_ok=True)
    base = task.base_commit
    landed: list[BroughtBack | None] = []

    async def land(result: collect.Collected) -> None:
        # Written with the final status (a failure from here on is recorded with it too).
        ctx.unsaved["files_changed"] = result.files_changed
        # Sizes, never the diff itself: a 300 MB patch stays in result.patch.
        sizes = f"patch {result.patch_bytes} bytes"
        if result.bundle_bytes is not None:
            sizes += f", bundle {result.bundle_bytes} bytes"
        count = result.files_changed
        files = f"{count} changed file{'' if count == 1 else 's'}"
        ctx.events.emit(Message(text=f"collected {files}; {sizes}"))
        if result.nested:
            raise RepoError(
                "the agent changed nested repositories or submodules whose work the branch "
                f"cannot carry: {', '.join(result.nested[:5])}; nothing was brought back",
                hint=collect.safe_in_session(session),
            )
        landed.append(
            await bringback.bring_back(
                gitrepo.RepoSource(task.repo_kind, task.repo),
                session,
                task_id=task.id,
                branch=task.branch,
                head=result.head,
                base=base,
                masker=ctx.masker,
                # The record of the move: written with the final status (ending.RunEnding._finish).
                owe=ctx.owed.append,
            )
        )

    # An unchanged result is brought back while its empty patch is written; a
    # changed one once its copies are made.
    ctx.collecting = True  # until its script ends by itself (see RunContext.collecting)
    result = await collect.collect(
        sandbox,
        session,
        base=base,
        branch=task.branch,
        task_id=task.id,
        full_bundle=task.repo_kind == "url",
        alongside=land,
        watch=None if home is None else _watch(sandbox, home),
        ended=functools.partial(setattr, ctx, "collecting", False),
    )
    if not landed:
        await land(result)
    brought = landed[0]
    if brought is None:  # a URL source: the session's bundle is the result, scan it too
        scan = resultscan.patch_holds_secret
        holder = await asyncio.to_thread(scan, session.patch, ctx.masker)
        if holder is not None:
            raise SecretInResult(
                f"the result holds the value of one of the task's secrets, in {holder}",
                hint=f"remove it from the branch's history; {collect.safe_in_session(session)}",
            )
    if ctx.checks_patch and not ctx.unknown:  # scanned clean: with the final status
        ctx.owed.append(session.patch_checked.touch)
    if brought is not None and brought.moved_aside:
        ctx.task = await update(task.id, branch=brought.branch)
        text = f"{brought.why}; the result is on {brought.branch}"
        ctx.events.emit(Message(level="warning", text=text))
    return result.files_changed


async def collect_quietly(
    ctx: RunContext, sandbox: Sandbox | None, update: Update, home: Path | None = None
) -> int:
    """Collect what a timed-out run left, reporting (not raising) a failure."""
    if sandbox is None or ctx.task.base_commit is None:
        return 0
    try:
        return await collect_result(ctx, sandbox, update, home=home)
    except HalError as exc:
        ctx.events.emit(Message(level="warning", text=f"collecting failed: {exc.one_line()}"))
        return 0


async def collect_leftovers(
    ctx: RunContext, update: Update, quiet: Provider | None = None, home: Path | None = None
) -> int:
    """After a timeout or a disk limit (which a watchdog enforces, so collection still has
    room to write), or an agent that vanished: keep what the agent did, within
    :data:`COLLECT_GRACE_S`. With ``quiet`` (the sandbox's provider) the sandbox is
    restarted first (:func:`quiet_ended`): an agent whose supervisor died is stopped by
    nothing else, nor is what an agent left running in a container or on a bare ssh host,
    and either would go on writing while its work is collected."""
    if ctx.pspec is None:
        return 0  # the agent never ran
    try:
        async with asyncio.timeout(COLLECT_GRACE_S):
            if quiet is not None and ctx.sandbox is not None:
                try:
                    ctx.sandbox = await quiet_ended(quiet, ctx.sandbox)
                except HalError as exc:
                    text = f"collecting failed: {exc.one_line()}"
                    ctx.events.emit(Message(level="warning", text=text))
                    return 0
            return await collect_quietly(ctx, ctx.sandbox, update, home)
    except TimeoutError:
        ctx.events.emit(Message(level="warning", text="collecting after the timeout took too long"))
        return 0


_PHASE_DOING = {
    TaskStatus.PROVISIONING: "acquiring a sandbox; the agent never started",
    TaskStatus.PREPARING: "preparing (cloning the repository); the agent never started",
    TaskStatus.RUNNING: "the agent was running",
    TaskStatus.COLLECTING: "collecting the results",
}


def timed_out(timeout_s: float | None, status: str) -> TaskTimeout:
    """The timeout error, saying what the run was doing when time ran out."""
    doing = _PHASE_DOING.get(TaskStatus(status), status)
    return TaskTimeout(
        f"task ran past its timeout of {timeout_s or 0:g}s while {doing}",
        hint="raise it with --timeout SECONDS",
    )


def cancel_reason(exc: asyncio.CancelledError) -> str:
    """Why the run was cancelled: the message given to ``cancel()`` (the CLI names SIGTERM),
    else Ctrl-C."""
    return str(exc.args[0]) if exc.args and exc.args[0] else "interrupted by the user"


def add_cost(a: float | None, b: float | None) -> float | None:
    """The sum of two costs, either of which may be unknown (None)."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b

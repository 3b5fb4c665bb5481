"""Bringing a task's branch back into a local source repository, from the verified bundle.

The bundle is the session's own copy (``result.bundle``, copied by fd out of the agent's
home), a plain file, so fetching from it cannot borrow objects from another repository the
way an agent-built repository with ``objects/info/alternates`` could. Before any branch of
the user's moves:

1. ``git bundle verify`` (prerequisites present), and its only head must be the task branch
   at the head collection reported;
2. the fetch goes into a private ref (``refs/hal-incoming/<id>``) with every transport but
   the bundle file refused and objects checked, so a branch named ``hal`` cannot break it;
3. every object new on the branch (file contents, commit messages) is scanned for the
   values of the task's secrets; a hit brings nothing back and says which file holds it;
4. ``result.patch`` is rewritten from the fetched objects, so it is exactly the branch's
   diff against the base;
5. the branch moves only from where hal last left it (compare-and-set): a branch the user
   changed is kept and the result lands on ``hal/<id>-<n>`` instead.

Steps 1-2 are :mod:`hal9999.tasks.incoming`, 3-4 :mod:`hal9999.tasks.resultscan`, 5
:mod:`hal9999.tasks.landing`; this module runs them in order and cleans up after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

from hal9999.errors import RepoError
from hal9999.redact import SecretMasker
from hal9999.tasks.collect import safe_in_session
from hal9999.tasks.gitrepo import RepoSource, git
from hal9999.tasks.incoming import QUARANTINE, SCANNED, fetch_verified, keep, quarantine_env
from hal9999.tasks.landing import BroughtBack, Drop, Owe, move_branch, note
from hal9999.tasks.resultscan import scan, write_patch
from hal9999.tasks.session import Session


async def bring_back(
    source: RepoSource,
    session: Session,
    *,
    task_id: str,
    branch: str,
    head: str,
    base: str,
    masker: SecretMasker,
    owe: Owe | None = None,
) -> BroughtBack | None:
    """Verify the bundle, scan it for secrets and move a branch of a local source to ``head``
    (the record of the move given to ``owe``, when set: :func:`landing._landed`)."""
    if source.kind != "local":
        return None
    repo = Path(source.location)
    safe = safe_in_session(session)
    if not (repo / ".git").exists() and not (repo / "HEAD").exists():
        raise RepoError(f"the source repository {repo} is gone or moved", hint=safe)
    incoming = f"refs/hal-incoming/{task_id}"
    # With secrets to look for, the bundle's objects go into a quarantine first (an object
    # directory of the session's that borrows the source's, and no ref): the bundle is the
    # agent's, and objects none of its commits reach are never scanned, so only what the scan
    # saw is copied into the source (whose later snapshots every sandbox reads).
    quarantine = session.root / QUARANTINE if head != base and masker else None
    # The private ref goes in the branch's own transaction, also when this run fetches
    # nothing into it (no change, or a quarantine): an earlier run of the task killed between
    # its fetch and its move left it, and this landing supersedes it (else it stayed for good).
    drop = Drop(incoming)
    fetched = head != base and quarantine is None
    landed = failed = False
    try:
        if head != base:
            env: dict[str, str] | None = None
            target = incoming
            if quarantine is not None:
                objects, env = await quarantine_env(repo, quarantine)
                target = head
            await fetch_verified(repo, session.bundle, branch, head, target, safe, env)
            listed = quarantine / SCANNED if quarantine is not None else None
            seen = await scan(repo, target, base, masker, safe, env, listed)
            await write_patch(repo, base, target, session.patch, env)
            if quarantine is not None and seen:
                await keep(repo, objects, quarantine, safe)
        brought = await move_branch(repo, session, branch, head, safe, drop, note(task_id), owe)
        landed = True
        return brought
    except BaseException:
        failed = True
        raise
    finally:
        if not drop.done and (fetched or landed):
            try:
                await git(["update-ref", "-d", incoming], cwd=repo, what="dropping the private ref")
            except RepoError:
                # Never in place of the error that cut the landing short, which says where
                # the work is safe: a read-only source failed both, and only this one was said.
                if not failed:
                    raise
        if quarantine is not None:
            await asyncio.to_thread(shutil.rmtree, quarantine, True)


async def forget_incoming(source: RepoSource, task_id: str) -> None:
    """Drop what a bring-back cut short (its ``hal`` killed between the fetch and the branch's
    move) left in a local source: ``refs/hal-incoming/<id>``, which keeps the fetched result's
    objects until the task is resumed (that lands them) or removed (this)."""
    repo = Path(source.location)
    if source.kind != "local" or not repo.is_dir():
        return
    with contextlib.suppress(RepoError):  # a source that is no repository now holds no ref
        await git(
            ["update-ref", "-d", f"refs/hal-incoming/{task_id}"],
            cwd=repo, what="dropping the private ref",
        )  # fmt: skip

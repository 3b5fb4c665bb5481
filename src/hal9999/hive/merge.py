"""Applying an agent's branch to a branch of the user's repository, without any working tree.

An ``apply`` proposal names a commit range: the agent's branch ``hal/agent/<name>`` (brought
into the repository by collection, from a verified bundle) from where it leaves the target
branch. :func:`pin` records the exact head commit the operator is shown and keeps it alive
under a private ref (``refs/hal-approvals/<id>``). :func:`merge`, on approval:

1. refuses when the agent's branch no longer points at the pinned commit (the operator
   approved what was shown, not what the agent committed since);
2. refuses when the target branch is checked out in any worktree (moving it would change
   the files under the user's feet without touching them: their next commit would undo it);
3. computes the merge with ``git merge-tree --write-tree`` (objects only; a conflict
   refuses, naming the files) and writes the merge commit with ``git commit-tree``;
4. moves the target compare-and-set: ``git update-ref <ref> <new> <old>``, so a commit the
   user made in between is never lost.

Host git runs only in the user's repository, with its hooks off (``core.hooksPath=/dev/null``,
also for ``update-ref``'s reference-transaction hook), no fsmonitor, no checkout, no
signing prompt and no external diff or textconv program.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
from asyncio.subprocess import DEVNULL, PIPE
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hal9999.errors import MergeRefused, RepoError
from hal9999.procs import kill_group_until_gone
from hal9999.tasks.gitrepo import _GIT_SAFE, git_message
from hal9999.tasks.reviewdiff import SHOW_OPTIONS

_ENV = {"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/"}
# The merge commit is hal's, made on the operator's approval; repository settings that would
# sign it (and ask for a passphrase) or renormalise files through a filter program are off.
_MERGE_SAFE = [
    "-c", "user.name=hal9999", "-c", "user.email=hal9999@localhost",
    "-c", "commit.gpgSign=false", "-c", "merge.renormalize=false",
]  # fmt: skip
_DIFF = ["diff", *SHOW_OPTIONS]
_CHANGED = re.compile(r"(\d+) files? changed")
LOG_LIMIT = 1 << 20
"""The most of a proposal's commit list shown: one commit's message can be gigabytes (a few
kilobytes in a bundle), and the list went whole into the daemon's memory."""
PIN_PREFIX = "refs/hal-approvals/"
"""Where pinned proposal heads live (outside branches and tags: never fetched or pushed)."""


@dataclass(frozen=True)
class ApplyRange:
    """The commits an ``apply`` proposal shows and, on approval, merges."""

    repo: str
    branch: str
    """The agent's branch (``hal/agent/<name>``)."""
    target: str
    """The branch of the repository it merges into."""
    base: str
    """Where the agent's work leaves the target (their merge base when proposed)."""
    head: str
    """The exact commit shown and approved."""
    commits: int
    files: int

    def payload(self) -> dict[str, Any]:
        """The form stored with the approval."""
        return asdict(self)


async def _git(repo: Path, args: list[str], *, ok: tuple[int, ...] = (0,)) -> tuple[int, str]:
    """Run host git in ``repo``: (status, stdout); any status outside ``ok`` is a RepoError."""
    proc = await asyncio.create_subprocess_exec(
        "git", *_GIT_SAFE, *args, cwd=repo, stdin=DEVNULL, stdout=PIPE, stderr=PIPE,
        env=_ENV, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = await proc.communicate()
    except BaseException:
        await kill_group_until_gone(proc)
        raise
    status = proc.returncode or 0
    if status not in ok:
        raise RepoError(f"git {args[0]} failed in {repo}: {git_message(err)}")
    return status, out.decode("utf-8", "replace").strip()


async def _ref(repo: Path, ref: str) -> str | None:
    status, out = await _git(repo, ["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                             ok=(0, 1))  # fmt: skip
    return out if status == 0 and out else None


async def check_branch_name(repo: Path, name: str, what: str) -> str:
    """``name`` if it is a valid branch name (never read as an option)."""
    if not name or name.startswith("-"):
        raise RepoError(f"invalid {what} {name!r}", hint="name a branch, like main")
    status, _ = await _git(repo, ["check-ref-format", f"refs/heads/{name}"], ok=(0, 1))
    if status != 0:
        raise RepoError(f"invalid {what} {name!r}: not a valid branch name")
    return name


async def check_repo(repo: Path) -> Path:
    """``repo`` if it is a local git repository hal can read."""
    if not repo.is_absolute() or not repo.is_dir():
        raise RepoError(
            f"the repository {repo} is not a local directory",
            hint="applying a branch needs the agent's repository on this host",
        )
    try:
        await _git(repo, ["rev-parse", "--git-dir"])
    except RepoError:
        raise RepoError(f"{repo} is not a git repository") from None
    return repo


async def pin(repo: Path, branch: str, target: str, approval_id: str) -> ApplyRange:
    """Resolve the range of ``branch`` not in ``target`` and pin its head under the proposal."""
    await check_repo(repo)
    await check_branch_name(repo, branch, "agent branch")
    await check_branch_name(repo, target, "target branch")
    head = await _ref(repo, f"refs/heads/{branch}")
    if head is None:
        raise RepoError(
            f"there is no branch {branch} in {repo}",
            hint="the agent's branch reaches the repository when its turn's work is collected",
        )
    at = await _ref(repo, f"refs/heads/{target}")
    if at is None:
        raise RepoError(f"there is no target branch {target} in {repo}", hint="name another")
    _, base = await _git(repo, ["merge-base", "--end-of-options", at, head], ok=(0,))
    if base == head:
        raise RepoError(f"{branch} has nothing {target} does not already have")
    _, count = await _git(repo, ["rev-list", "--count", f"{base}..{head}"])
    # One line, where --name-only listed every path: an agent's commit can touch millions.
    _, stat = await _git(repo, [*_DIFF, "--shortstat", base, head, "--"])
    await _git(repo, ["update-ref", "-m", f"hal: proposal {approval_id}", "--end-of-options",
                      f"{PIN_PREFIX}{approval_id}", head, "0" * 40])  # fmt: skip
    files = int(changed.group(1)) if (changed := _CHANGED.search(stat)) else 0
    return ApplyRange(str(repo), branch, target, base, head, int(count), files)


async def unpin(repo: Path, approval_id: str) -> None:
    """Drop a resolved proposal's private ref (its commits may then be collected)."""
    with contextlib.suppress(RepoError, OSError):
        await _git(repo, ["update-ref", "-d", f"{PIN_PREFIX}{approval_id}"])


def unpin_sync(repo: Path, approval_id: str) -> None:
    """:func:`unpin` for synchronous callers (never on an event loop)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["git", *_GIT_SAFE, "update-ref", "-d", f"{PIN_PREFIX}{approval_id}"], cwd=repo,
            env=_ENV, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False,
        )  # fmt: skip


def pins_sync(repo: Path) -> list[str]:
    """The ids of the proposals pinned in ``repo`` (none when it cannot be read)."""
    try:
        run = subprocess.run(
            ["git", *_GIT_SAFE, "for-each-ref", "--format=%(refname)", PIN_PREFIX], cwd=repo,
            env=_ENV, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    if run.returncode != 0:
        return []
    lines = run.stdout.decode("utf-8", "replace").splitlines()
    return [line.removeprefix(PIN_PREFIX) for line in lines if line.startswith(PIN_PREFIX)]


async def shown(repo: Path, base: str, head: str, *, limit: int) -> tuple[str, str, bool]:
    """What the operator sees: the commit list (at most :data:`LOG_LIMIT` bytes), the
    unified diff (at most ``limit`` bytes) and whether the diff was cut short."""
    await check_repo(repo)
    for commit in (base, head):  # _bounded says nothing of a failure: said here
        if await _ref(repo, commit) is None:
            raise RepoError(f"commit {commit[:12]} is no longer in {repo}")
    log, log_cut = await _bounded(
        repo, ["log", "--no-color", "--format=%h %an: %s", f"{base}..{head}"], LOG_LIMIT
    )
    log = log.strip()
    if log_cut:
        log += "\n... (the commit list goes on: see git log in the repository)"
    diff, cut = await _bounded(repo, [*_DIFF, "--stat", "--patch", base, head, "--"], limit)
    return log, diff, cut


async def _bounded(repo: Path, args: list[str], limit: int) -> tuple[str, bool]:
    """Git's output up to ``limit`` bytes (an agent can commit gigabytes of text)."""
    proc = await asyncio.create_subprocess_exec(
        "git", *_GIT_SAFE, *args, cwd=repo, stdin=DEVNULL, stdout=PIPE, stderr=DEVNULL,
        env=_ENV, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit and (chunk := await proc.stdout.read(1 << 16)):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        await kill_group_until_gone(proc)
        # What the pipe still holds (a pipe's buffer at most): read to its end, the
        # transport closes instead of being left for the garbage collector.
        with contextlib.suppress(OSError, ValueError):
            await proc.stdout.read()
    data = b"".join(chunks)
    return data[:limit].decode("utf-8", "replace"), size > limit


async def checked_out(repo: Path, branch: str) -> list[str]:
    """The worktrees of ``repo`` that have ``branch`` checked out."""
    # -z: one NUL after each field, so a worktree path with a newline cannot fake a line.
    _, listing = await _git(repo, ["worktree", "list", "--porcelain", "-z"])
    found: list[str] = []
    path = ""
    for line in listing.split("\0"):
        if line.startswith("worktree "):
            path = line[len("worktree ") :]
        elif line == f"branch refs/heads/{branch}":
            found.append(path)
    return found


async def _plan(proposal: ApplyRange, approval_id: str, *, write: bool) -> dict[str, Any]:
    """Steps 1-3 of the module: the checks, then ``how`` the target would move (``from``,
    ``to``); ``write`` makes the merge commit (else ``to`` is None for a merge)."""
    repo = await check_repo(Path(proposal.repo))
    target = proposal.target
    stale = "deny it and ask the agent for a new proposal"
    now = await _ref(repo, f"refs/heads/{proposal.branch}")
    if now != proposal.head:
        where = f"now at {now[:12]}" if now else "now deleted"
        raise MergeRefused(
            f"{proposal.branch} moved since the proposal was shown ({proposal.head[:12]}, "
            f"{where}); the approval is bound to the commit that was shown",
            hint=stale,
        )
    old = await _ref(repo, f"refs/heads/{target}")
    if old is None:
        raise MergeRefused(f"the target branch {target} no longer exists in {repo}", hint=stale)
    trees = await checked_out(repo, target)
    if trees:
        raise MergeRefused(
            f"{target} is checked out in {', '.join(trees)}; hal never moves a branch under "
            "a working tree",
            hint="switch that worktree to another branch (or detach it) and approve again",
        )
    plan: dict[str, Any] = {"target": target, "from": old}
    status, _ = await _git(repo, ["merge-base", "--is-ancestor", proposal.head, old], ok=(0, 1))
    if status == 0:
        return {**plan, "how": "already-merged", "to": old}
    status, _ = await _git(repo, ["merge-base", "--is-ancestor", old, proposal.head], ok=(0, 1))
    if status == 0:
        return {**plan, "how": "fast-forward", "to": proposal.head}
    tree = await _merge_tree(repo, proposal, old)
    new = await _merge_commit(repo, proposal, old, tree, approval_id) if write else None
    return {**plan, "how": "merge", "to": new}


async def preview(proposal: ApplyRange, approval_id: str) -> dict[str, Any]:
    """What approving would do now, without moving anything: the plan, or why it would be
    refused (``refused``)."""
    try:
        return await _plan(proposal, approval_id, write=False)
    except MergeRefused as exc:
        return {"refused": exc.one_line()}


async def merge(proposal: ApplyRange, approval_id: str) -> dict[str, Any]:
    """Merge the pinned head into the target branch (see the module's steps); returns what
    happened: ``how`` (fast-forward, merge, already-merged), ``from`` and ``to``."""
    plan = await _plan(proposal, approval_id, write=True)
    if plan["how"] == "already-merged":
        return plan
    ref = f"refs/heads/{proposal.target}"
    try:
        move = ["update-ref", "-m", f"hal: approval {approval_id}", "--end-of-options", ref,
                plan["to"], plan["from"]]  # fmt: skip
        await _git(Path(proposal.repo), move)
    except RepoError as exc:
        raise MergeRefused(
            f"{proposal.target} moved while the merge was made ({exc.message}); nothing was "
            "changed",
            hint="approve again to merge onto the new tip",
        ) from None
    return plan


async def _merge_tree(repo: Path, proposal: ApplyRange, old: str) -> str:
    """The merged tree (objects only, no index, no files); a conflict refuses."""
    status, out = await _git(
        repo,
        [*_MERGE_SAFE, "merge-tree", "--write-tree", "--name-only", "--no-messages", old,
         proposal.head],
        ok=(0, 1),
    )  # fmt: skip
    lines = out.splitlines()
    if status == 1:
        files = [line for line in lines[1:] if line][:20]
        raise MergeRefused(
            f"{proposal.branch} does not merge cleanly into {proposal.target}: conflict in "
            f"{', '.join(files) or 'some files'}",
            hint="deny it with a reason, so the agent rebases its work and proposes again",
        )
    return lines[0]


async def _merge_commit(
    repo: Path, proposal: ApplyRange, old: str, tree: str, approval_id: str
) -> str:
    message = (f"Merge {proposal.branch} into {proposal.target}\n\n"
               f"Approved in hal (proposal {approval_id}).\n")  # fmt: skip
    _, commit = await _git(
        repo, [*_MERGE_SAFE, "commit-tree", "--no-gpg-sign", tree, "-p", old, "-p",
               proposal.head, "-m", message],
    )  # fmt: skip
    return commit

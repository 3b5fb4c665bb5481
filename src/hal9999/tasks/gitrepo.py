"""Git work around a task: the source, the session checkout, and bringing the branch back.

Trust boundary: once an agent has run, the checkout is untrusted (its ``.git/config`` could
name hooks, filters or an fsmonitor that git would run). So everything that touches the
checkout after the agent runs happens *inside the sandbox*, and the host only reads the
result as a git bundle, a plain file that carries no configuration.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hal9999.errors import RepoError
from hal9999.procs import kill_group_until_gone
from hal9999.providers.base import Sandbox
from hal9999.spec import ArgvCommand

_URL = re.compile(r"^([a-z][a-z0-9+.-]*://|[\w.-]+@[\w.-]+:)", re.IGNORECASE)
# Host-side git never runs repository hooks and never prompts for credentials.
_GIT_SAFE = ["-c", "core.hooksPath=/dev/null", "-c", "protocol.file.allow=always"]
# `clone -c` writes these into the new checkout's config: the agent commits as hal9999.
_CLONE_IDENTITY = ["-c", "user.name=hal9999", "-c", "user.email=hal9999@localhost"]


@dataclass(frozen=True)
class RepoSource:
    """Where a task's repository comes from."""

    kind: Literal["local", "url"]
    location: str
    """An absolute path (the repository's top level) or a URL."""


@dataclass(frozen=True)
class Collected:
    """What collection produced."""

    head: str
    files_changed: int
    committed_leftovers: bool


async def git(args: Sequence[str], *, cwd: Path | None = None, what: str = "git") -> str:
    """Run host git; raise :class:`RepoError` with git's own message on failure."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        *_GIT_SAFE,
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/"},
        # Its own process group: git's helpers (git-remote-http, ssh) die with it.
        start_new_session=True,
    )
    try:
        out, err = await proc.communicate()
    except BaseException:
        # Cancelled (a timeout, Ctrl-C, SIGTERM): a clone stuck on the network must not
        # outlive the task.
        await kill_group_until_gone(proc)
        raise
    if proc.returncode != 0:
        detail = err.decode("utf-8", "replace").strip().splitlines()
        raise RepoError(f"{what} failed: {detail[-1] if detail else 'git exited with error'}")
    return out.decode("utf-8", "replace").strip()


async def resolve_source(repo: str | None, cwd: Path) -> RepoSource:
    """Turn ``--repo`` (a path, a URL, or nothing for the current directory) into a source."""
    if repo and _URL.match(repo):
        return RepoSource("url", repo)
    path = (cwd / repo).resolve() if repo else cwd.resolve()
    if not path.exists():
        raise RepoError(
            f"repository path does not exist: {path}",
            hint="pass --repo with a path to a git repository or a git URL",
        )
    try:
        top = await git(["rev-parse", "--show-toplevel"], cwd=path, what="finding the repository")
    except RepoError:
        raise RepoError(
            f"not a git repository: {path}",
            hint="run hal inside a git repository, or pass --repo PATH|URL",
        ) from None
    return RepoSource("local", top)


async def clone(source: RepoSource, ref: str | None, dest: Path, branch: str) -> str:
    """Clone ``source`` at ``ref`` into ``dest`` on a new ``branch``; return the base commit."""
    location = source.location
    await git(
        ["clone", "--quiet", "--no-hardlinks", *_CLONE_IDENTITY, location, str(dest)],
        what=f"cloning {location}",
    )
    if ref:
        for candidate in (ref, f"origin/{ref}"):
            try:
                await git(["checkout", "--quiet", "--detach", candidate], cwd=dest)
                break
            except RepoError:
                continue
        else:
            raise RepoError(
                f"ref {ref!r} not found in {location}",
                hint="pass --ref with an existing branch, tag or commit",
            )
    await git(["checkout", "--quiet", "-b", branch], cwd=dest, what="creating the branch")
    return await git(["rev-parse", "HEAD"], cwd=dest)


COLLECT_SCRIPT = r"""
set -eu
base=$1 branch=$2 message=$3 bundle=$4 full=$5
step() { echo "hal-step: $1" >&2; }
g() { git -c core.hooksPath=/dev/null -c user.name=hal9999 -c user.email=hal9999@localhost "$@"; }
committed=0
step "reading the changes"
changes=$(g status --porcelain)
if [ -n "$changes" ]; then
  step "staging leftover changes"; g add -A
  step "committing leftover changes"; g commit --quiet --no-verify -m "$message" >&2
  committed=1
fi
step "reading HEAD"; head=$(g rev-parse HEAD)
step "updating the branch"; g update-ref "refs/heads/$branch" "$head"
step "listing changes"; names=$(g diff --name-only --no-ext-diff "$base" "$head")
files=0
if [ -n "$names" ]; then files=$(printf '%s\n' "$names" | wc -l); fi
step "bundling the branch"
if [ "$full" = 1 ]; then g bundle create --quiet "$bundle" "$branch"
elif [ "$head" != "$base" ]; then g bundle create --quiet "$bundle" "$base..$branch"; fi
step "writing the patch"
printf '%s %s %s\n' "$head" "$committed" "$files"
g diff --binary --no-ext-diff --no-textconv "$base" "$head"
"""
"""Collection in one sandbox command (each exec costs a sandbox start; in a VM, much more).

A constant: everything variable is a positional argument. The first stdout line is
``HEAD COMMITTED FILES``; the patch follows. ``hal-step:`` lines on stderr say which step
a failure belongs to.
"""


async def collect(
    sandbox: Sandbox,
    *,
    base: str,
    branch: str,
    task_id: str,
    patch: Path,
    bundle_target: str,
    full_bundle: bool,
) -> Collected:
    """Inside the sandbox: commit leftovers, point ``branch`` at HEAD, write patch and bundle.

    ``bundle_target`` is a sandbox path on a writable bind; the caller moves the file.
    """
    message = f"hal: uncommitted changes left by task {task_id}"
    args = (base, branch, message, bundle_target, "1" if full_bundle else "0")
    command = ArgvCommand(
        argv=("sh", "-c", COLLECT_SCRIPT, "hal-collect", *args),
        cwd=sandbox.workdir,
        env={"GIT_TERMINAL_PROMPT": "0"},
    )
    result = await sandbox.exec(command, timeout=300)
    header, _, diff = result.stdout.partition(b"\n")
    fields = header.decode("utf-8", "replace").split()
    if not result.ok or len(fields) != 3:
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        steps = [line[len("hal-step: ") :] for line in lines if line.startswith("hal-step: ")]
        errors = [line for line in lines if not line.startswith("hal-step: ")]
        what = steps[-1] if steps else "collecting the result"
        raise RepoError(f"{what} failed: {errors[-1] if errors else 'git error'}")
    head, committed, files = fields
    patch.write_bytes(diff)
    return Collected(head=head, files_changed=int(files), committed_leftovers=committed == "1")


async def bring_back(
    source: RepoSource, *, bundle: Path, branch: str, head: str, base: str
) -> None:
    """Create or move ``branch`` in a local source repository to ``head``."""
    if source.kind != "local":
        return
    repo = Path(source.location)
    if head == base or not bundle.exists():
        await git(["branch", "--force", branch, base], cwd=repo, what="creating the branch")
        return
    await git(
        ["fetch", "--quiet", "--no-tags", str(bundle), f"+refs/heads/{branch}:refs/heads/{branch}"],
        cwd=repo,
        what=f"bringing {branch} back to {repo}",
    )

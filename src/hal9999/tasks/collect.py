"""Collection: inside the sandbox, commit what the agent left and write the patch and bundle;
on the host, copy both out of the agent's home by fd into the session.

The host never follows a path the agent can influence (see :mod:`hal9999.agentfs`): the
script writes into a fresh directory with a random name in the agent's home, and the host
opens it relative to the home's fd with ``O_NOFOLLOW``, accepts only regular files with one
link and a bounded size, and copies them into the session root, which no sandbox sees.
Nothing large passes through memory: the patch and bundle are files, stdout is one line.
"""

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

from hal9999 import agentfs
from hal9999.errors import CheckoutDamaged, DiskFull, HalError, RepoError, UnsafePath
from hal9999.providers.base import ExecResult, Sandbox
from hal9999.spec import ArgvCommand
from hal9999.tasks import mirror
from hal9999.tasks.gitrepo import git_message
from hal9999.tasks.reviewdiff import DIFF_OPTIONS
from hal9999.tasks.session import HOME_TARGET, Session

logger = logging.getLogger(__name__)

WATCH_S = 1.0
"""How often a running collection is looked at (its disk use, the disk's free space)."""
RESULT_LIMIT = 4 << 30
"""Largest patch or bundle hal copies out of a sandbox (bytes)."""
_NESTED_LIMIT = 64 << 10
_RESULT_LINE = re.compile(rb"\s*([0-9a-f]{40}|[0-9a-f]{64}) ([01]) ([0-9]{1,9})( unchanged)?\s*")
"""The script's one line. Its stdout is the agent's to forge (a clean filter of the checkout's
config runs inside the script's sandbox as the agent's uid, which may ptrace the script), so
anything else is refused, never parsed loosely
(whitespace around it is a transport's, say an exec channel's ``\\r``)."""

COLLECT_SCRIPT = r"""
set -eu
base=$1 branch=$2 message=$3 out=$4 full=$5 nolinks=$6
step() { echo "hal-step: $1" >&2; }
# --no-optional-locks: `status` reads the index without writing its refreshed stat data
# back (a checkout's index is racy, written the second its files were: a lock file and a
# rename a task); what it reports is the same, and add and commit still lock.
g() { git --no-optional-locks -c core.hooksPath=/dev/null -c core.fsmonitor=false \
  -c user.name=hal9999 -c user.email=hal9999@localhost "$@"; }
# The same git for a command substitution that is one git: the substitution's subshell
# becomes it (sh forks that subshell, then forks again for a function's command).
gx() { exec git --no-optional-locks -c core.hooksPath=/dev/null -c core.fsmonitor=false \
  -c user.name=hal9999 -c user.email=hal9999@localhost "$@"; }
nl='
'
step "reading the changes"
# One git for HEAD and every change, whatever the checkout's config hides (submodules,
# untracked files): when it lists none, nothing changed.
state=$(gx status --porcelain=v2 --branch --no-ahead-behind --untracked-files=normal \
  --ignore-submodules=none)
head=${state#"# branch.oid "}; head=${head%%"$nl"*}
dirty=
case $state in [!#]*|*"$nl"[!#]*) dirty=1 ;; esac
committed=0 changes=$dirty
case $state in *"$nl"[12u]\ ??\ S*)
  # A submodule changed: what is committed is what `status` shows under the checkout's
  # own submodule settings, as always.
  changes=$(gx status --porcelain) ;;
esac
if [ -n "$changes" ]; then
  step "staging leftover changes"; g add -A
  step "committing leftover changes"; g commit --quiet --no-verify -m "$message" >&2
  committed=1 head=
fi
case $head in *[!0-9a-f]*|'') step "reading HEAD"; head=$(gx rev-parse --verify HEAD) ;; esac
# HEAD a plain file naming the branch: the branch is HEAD already, nothing to move.
symbolic=
if [ -f .git/HEAD ] && [ ! -h .git/HEAD ]; then IFS= read -r symbolic < .git/HEAD || :; fi
if [ "$symbolic" != "ref: refs/heads/$branch" ]; then
  step "updating the branch"; g update-ref "refs/heads/$branch" "$head"
fi
if [ -z "$dirty" ] && [ "$head" = "$base" ] && [ "$full" = 0 ]; then
  # Nothing changed: no patch, no bundle, no result directory, unless a gitlink in the
  # index could hide files dropped into a submodule that was never checked out (the index
  # is the base's tree here: the host may know it has none).
  if [ "$nolinks" = 1 ]; then printf '%s 0 0 unchanged\n' "$head"; exit 0; fi
  step "checking nested repositories"
  case $(gx ls-files -s) in 160000\ *|*"$nl"160000\ *) ;; *)
    printf '%s 0 0 unchanged\n' "$head"; exit 0 ;;
  esac
fi
step "creating the result directory"; mkdir -m 700 -- "$out"
step "checking nested repositories"
: > "$out/nested"
# Work git cannot carry on this branch: a submodule or nested repository whose pointer moved,
# one with changes inside, and files dropped into a submodule that was never checked out.
# The raw diff's lines are also the count of files changed.
files=0
if [ "$head" != "$base" ]; then
  files=$(g diff --raw --no-abbrev "$base" "$head" | awk -F'\t' -v nested="$out/nested" '
    { n++; split($1, m, " "); if (m[1] == ":160000" || m[2] == "160000") print $2 >> nested }
    END { print n + 0 }')
fi
gitlinks=$(g ls-files -s | awk -F'\t' '{ split($1, m, " "); if (m[1] == "160000") print $2 }')
# Without gitlinks in the index no submodule setting can hide a change from `status`, so
# an empty status above is an empty status here.
if [ -n "$changes" ] || [ -n "$gitlinks" ]; then
  g status --porcelain --ignore-submodules=none | cut -c4- >> "$out/nested"
fi
if [ -n "$gitlinks" ]; then
  printf '%s\n' "$gitlinks" | while IFS= read -r path; do
    if [ -d "$path" ] && [ ! -e "$path/.git" ] && [ -n "$(ls -A -- "$path")" ]; then
      printf '%s\n' "$path" >> "$out/nested"
    fi
  done
fi
step "bundling the branch"
if [ "$full" = 1 ]; then g bundle create --quiet "$out/result.bundle" "$branch"
elif [ "$head" != "$base" ]; then g bundle create --quiet "$out/result.bundle" "$base..$branch"; fi
step "writing the patch"
if [ "$head" = "$base" ]; then : > "$out/result.patch"
else
  g diff @DIFF_OPTIONS@ "$base" "$head" > "$out/result.patch"
fi
printf '%s %s %s\n' "$head" "$committed" "$files"
"""
"""Collection in one sandbox command (each exec costs a sandbox start; in a VM, much more).

A constant: everything variable is a positional argument. Stdout is one line,
``HEAD COMMITTED FILES``; the patch, bundle and nested-work list are files in ``$out``.
When nothing changed (no change ``status`` shows with nothing hidden, HEAD still the base,
no gitlink in the index) it is ``HEAD 0 0 unchanged`` and there is no ``$out``: the script
runs one git when the base is its snapshot's HEAD, known to have no gitlinks, two otherwise
(no mkdir, no awk: each process is a cost on every task).
``hal-step:`` lines on stderr say which step a failure belongs to.
"""
COLLECT_SCRIPT = COLLECT_SCRIPT.replace("@DIFF_OPTIONS@", " ".join(DIFF_OPTIONS))


class Collected(NamedTuple):
    """What collection produced (the patch and bundle are in the session)."""

    head: str
    files_changed: int
    committed_leftovers: bool
    patch_bytes: int
    bundle_bytes: int | None
    """None when there was nothing to bundle."""
    nested: tuple[str, ...]
    """Paths of nested repositories or submodules whose work the branch does not carry."""


def drop_cut_locks(session: Session, branch: str) -> list[str]:
    """Remove the git lock files a collection that did not end by itself (cancelled, its
    sandbox destroyed under it) leaves in the session's checkout: :data:`COLLECT_LOCKS` and
    the branch's ref lock. Only for such a collection, once no git of the session can be
    alive (its sandbox is gone): the caller knows both. The checkout is the agent's: no link
    in it is followed, and only regular files go. Their names, relative to the checkout."""
    dropped = []
    try:
        with agentfs.AgentDir.open(session.workspace) as checkout:
            for name in (*COLLECT_LOCKS, f".git/refs/heads/{branch}.lock"):
                if checkout.kind(name) == "file" and checkout.remove(name):
                    dropped.append(name)
    except (HalError, OSError) as exc:  # the checkout gone or unreadable: no lock to drop
        logger.warning("session %s: stale git locks: %s", session.root.name, exc)
    return dropped


def safe_in_session(session: Session) -> str:
    """Where the work is when bringing it back fails, and how to get it by hand."""
    return (
        f"the work is safe in the session: {session.workspace} (the checkout), "
        f"{session.patch} and {session.bundle}; apply it by hand with `git am`/`git apply "
        f"{session.patch}` or `git fetch {session.bundle} <branch>`"
    )


async def collect(
    sandbox: Sandbox,
    session: Session,
    *,
    base: str,
    branch: str,
    task_id: str,
    full_bundle: bool,
    alongside: Callable[[Collected], Awaitable[object]] | None = None,
    watch: Callable[[], Awaitable[None]] | None = None,
    ended: Callable[[], object] | None = None,
) -> Collected:
    """Inside the sandbox: commit leftovers, point ``branch`` at HEAD, write patch and bundle;
    then copy both into the session (by fd, bounded, fsynced).

    ``alongside``, the caller's next step (the bring-back), is given an unchanged result
    (known once the script has said so) while the session's empty patch is written, and
    awaited with it; the patch's error comes first. It is not called for a changed result,
    whose copies come first. ``watch`` is called every :data:`WATCH_S` while the script runs
    (the agent's code runs in it: a clean filter of the checkout's config); what it raises
    ends the script. ``ended`` is called once the script has ended by itself (not killed:
    its git let go of every lock; else see :func:`drop_cut_locks`)."""
    out = f".hal-result-{secrets.token_hex(8)}"
    message = f"hal: uncommitted changes left by task {task_id}"
    args = (
        base,
        branch,
        message,
        f"{sandbox.path(HOME_TARGET)}/{out}",
        "1" if full_bundle else "0",
        # Two small reads of hal's own files: here, not a thread hop.
        "1" if mirror.base_without_gitlinks(session.root, base) else "0",
    )
    command = ArgvCommand(
        argv=("sh", "-c", COLLECT_SCRIPT, "hal-collect", *args),
        cwd=sandbox.workdir,
        env={"GIT_TERMINAL_PROMPT": "0"},
    )
    try:
        running = sandbox.exec(command, timeout=300)
        result = await (running if watch is None else _watched(running, watch))
        if ended is not None and 0 <= result.exit_code < 128:  # no signal ended it
            ended()
        line = _RESULT_LINE.fullmatch(result.stdout) if result.ok else None
        unchanged = line is not None and line[4] is not None
        # "Unchanged" is the base itself, with nothing committed, changed or to bundle.
        if line is None or (
            unchanged and (line.group(1, 2, 3) != (base.encode(), b"0", b"0") or full_bundle)
        ):
            raise _script_error(result.stderr, session)
        head, committed, files = (field.decode() for field in line.groups()[:3])
        if unchanged:  # no result directory: an empty patch, no bundle
            # Its two fsyncs in a thread while the bring-back's git moves the branch (they
            # touch nothing of each other's), not one after the other.
            writing = asyncio.ensure_future(asyncio.to_thread(_nothing, session, out))
            out = ""  # removed there, in the same thread hop
            try:
                await asyncio.sleep(0)  # handed to its thread before the bring-back's git
                if alongside is not None:
                    await alongside(Collected(head, 0, False, 0, None, ()))
            finally:
                patch_bytes, bundle_bytes, nested = await _copied(writing, session)
        else:
            copying = asyncio.to_thread(_copy_out, session, out)
            patch_bytes, bundle_bytes, nested = await _copied(copying, session)
    finally:
        if out:
            with contextlib.suppress(HalError, OSError):
                await asyncio.to_thread(_remove_out, session, out)
    return Collected(
        head=head,
        files_changed=int(files),
        committed_leftovers=committed == "1",
        patch_bytes=patch_bytes,
        bundle_bytes=bundle_bytes,
        nested=nested,
    )


async def _watched(
    running: Awaitable[ExecResult], watch: Callable[[], Awaitable[None]]
) -> ExecResult:
    """``running``'s result, ``watch`` called every :data:`WATCH_S` until it comes; what
    ``watch`` raises cancels ``running`` (its command killed) and is raised. A collection
    that ends within the first period costs no call."""
    script = asyncio.ensure_future(running)
    try:
        while not (await asyncio.wait({script}, timeout=WATCH_S))[0]:
            await watch()
        return script.result()
    finally:
        if not script.done():
            script.cancel()
            with contextlib.suppress(BaseException):  # its own end, not the caller's
                await script


async def _copied(
    copying: Awaitable[tuple[int, int | None, tuple[str, ...]]], session: Session
) -> tuple[int, int | None, tuple[str, ...]]:
    """What ``copying`` (:func:`_copy_out` or :func:`_nothing` in a thread) returns, its
    refusal of a tampered copy saying where the work still is."""
    try:
        return await copying
    except UnsafePath as exc:
        # The checkout itself is intact: only the copies the script made were tampered
        # with (or are too large), so say where the work still is.
        hint = f"the commits are in the session checkout {session.workspace}"
        raise UnsafePath(f"collecting the result: {exc.message}", hint=hint) from exc


COLLECT_LOCKS = (".git/index.lock", ".git/HEAD.lock")
"""The lock files the collection's git takes (``add``, ``commit``) besides its branch's."""
_DISK_FULL = ("no space left on device", "out of diskspace", "disk quota exceeded")
"""How git and the shell say a write found the disk full (ENOSPC, EDQUOT)."""


def _script_error(stderr: bytes, session: Session) -> RepoError | DiskFull:
    """The failed step and git's message; the hint names the checkout only: nothing of this
    run was copied out, and a patch or bundle left in the session is an earlier run's."""
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    steps = [line[len("hal-step: ") :] for line in lines if line.startswith("hal-step: ")]
    errors = "\n".join(line for line in lines if not line.startswith("hal-step: "))
    what = steps[-1] if steps else "collecting the result"
    message = f"{what} failed: {git_message(errors.encode())}"
    task_id = session.root.name
    again = f"`hal task resume {task_id}` runs its agent there again and collects what it leaves"
    hint = f"the work is safe in the session checkout {session.workspace}; {again}"
    if any(sign in errors.lower() for sign in _DISK_FULL):
        return DiskFull(
            f"the disk holding hal's home is full ({message})", hint=f"free space on it; {hint}"
        )
    return RepoError(message, hint=hint)


def _copy_out(session: Session, out: str) -> tuple[int, int | None, tuple[str, ...]]:
    """Copy patch and bundle from the agent's home into the session root."""
    with agentfs.AgentDir.open(session.home) as home, home.subdir(out) as results:
        patch = results.copy_out("result.patch", session.patch, limit=RESULT_LIMIT)
        bundle: int | None = None
        if results.kind("result.bundle") is None:
            # A bundle from an earlier run would describe another head.
            session.bundle.unlink(missing_ok=True)
        else:
            bundle = results.copy_out("result.bundle", session.bundle, limit=RESULT_LIMIT)
        listed = results.read_bytes("nested", limit=_NESTED_LIMIT).decode("utf-8", "replace")
    nested = tuple(dict.fromkeys(line for line in listed.splitlines() if line.strip()))
    return patch, bundle, nested


def _nothing(session: Session, out: str) -> tuple[int, None, tuple[str, ...]]:
    """What :func:`_copy_out` leaves for an unchanged checkout: an empty patch, no bundle;
    then :func:`_remove_out` (nothing should be there, but the agent's home is its own)."""
    agentfs.write_host_file(session.patch, iter(()))
    session.bundle.unlink(missing_ok=True)
    with contextlib.suppress(HalError, OSError):
        _remove_out(session, out)
    return 0, None, ()


def _remove_out(session: Session, out: str) -> None:
    with agentfs.AgentDir.open(session.home) as home:
        home.remove(out, recursive=True)


VERIFY_HEAD = (
    'git rev-parse --verify -q "HEAD^{commit}" >/dev/null && git cat-file -e "HEAD^{tree}"'
)
"""Inside the sandbox: whether the checkout's ``HEAD`` names a commit whose tree is there
(the agent's checkout is never read by host git)."""


async def verify_checkout(sandbox: Sandbox, task_id: str, workspace: Path) -> None:
    """Refuse to run again over a checkout whose ``HEAD`` commit or tree is missing (work
    that was not brought back whole): one line, :class:`CheckoutDamaged`, before any agent
    runs over it or hal says its work is safe."""
    command = ArgvCommand(argv=("sh", "-c", VERIFY_HEAD), cwd=sandbox.workdir,
                          env={"GIT_TERMINAL_PROMPT": "0"})  # fmt: skip
    result = await sandbox.exec(command, timeout=120)
    if result.ok:
        return
    said = git_message(result.stderr) or f"git exited with status {result.exit_code}"
    raise CheckoutDamaged(
        f"the session checkout of task {task_id} has no valid HEAD commit ({said}); "
        "its work did not come back whole",
        hint=f"what is left is in {workspace}; start again from the task's branch or prompt "
        f"with `hal run`, or forget it with `hal task rm {task_id}`",
    )

"""Git work around a task on the host: the source and the session checkout.

Trust boundary: once an agent has run, the checkout is untrusted (its ``.git/config`` could
name hooks, filters or an fsmonitor that git would run). So everything that touches the
checkout after the agent runs happens *inside the sandbox* (:mod:`hal9999.tasks.collect`),
and the host only reads the result as a git bundle, a plain file that carries no
configuration (:mod:`hal9999.tasks.bringback`). Before that, hal reads the source's and writes
the fresh checkout's ``.git`` itself where it can (:mod:`hal9999.tasks.gitdir`).
"""

import asyncio
import errno
import functools
import os
import re
import shutil
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple
from urllib.parse import urlsplit

from hal9999.envvars import is_text
from hal9999.errors import RepoError
from hal9999.procs import run_captured
from hal9999.providers.base import Sandbox
from hal9999.spec import ArgvCommand
from hal9999.tasks import gitdir
from hal9999.workdir import path_not_text

_URL = r"(?i)^([a-z][a-z0-9+.-]*://|[\w.-]+@[\w.-]+:)"  # a --repo URL; compiled on first use
# Host-side git never runs repository hooks and never prompts for credentials. No
# `protocol.file.allow=always`: a repository's `.gitmodules` must never make host git copy
# another host repository (git's default allows local paths only for the user's own command).
_GIT_SAFE = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"]
GIT_TERM_S = 2.0
"""How long a cancelled host git has to end on SIGTERM (removing its locks) before SIGKILL."""
# How much of git's stderr an error keeps: the whole relevant message, never megabytes.
_ERROR_LINES = 12
_ERROR_CHARS = 1500
# `clone -c` writes these into the new checkout's config: the agent commits as hal9999.
_CLONE_IDENTITY = ["-c", "user.name=hal9999", "-c", "user.email=hal9999@localhost"]


class RepoSource(NamedTuple):
    """Where a task's repository comes from."""

    kind: Literal["local", "url"]
    location: str
    """An absolute path (the repository's top level) or a URL."""


async def git(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    what: str = "git",
    hint: str | None = None,
    stdin: bytes | BinaryIO | None = None,
    env: Mapping[str, str] | None = None,
    heap: int | None = None,
    dies_with_hal: bool = False,
) -> str:
    """Run host git (with ``stdin`` as its input, bytes or an open file, ``env`` added to its
    environment, at most ``heap`` bytes of memory for it and its children: see
    :func:`bounded`; killed should this process die, with ``dies_with_hal``: see
    :func:`dying_with_hal`); raise :class:`RepoError` with git's own message on failure."""
    try:
        # Not asyncio's subprocess transports (less of the daemon's CPU
        # a git, two a task): see run_captured. Cancelled (a timeout, Ctrl-C,
        # SIGTERM), it kills git's group: a clone stuck on the network must not outlive the
        # task. SIGTERM first: a git killed in a ref's update left its lock in the user's
        # repository (`refs/heads/hal/ID.lock`; the resume's update then failed on it).
        returncode, out, err = await run_captured(
            [*(dying_with_hal() if dies_with_hal else ()), *bounded(heap), "git", *_GIT_SAFE,
             *args],
            cwd=cwd,
            stdin=stdin,
            env={
                "GIT_TERMINAL_PROMPT": "0",
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": "/",
                **(env or {}),
            },
            term_s=GIT_TERM_S,
        )  # fmt: skip
    except OSError as exc:
        # A directory that moved or vanished (the source repository, say) is a repository
        # problem with a clear message, not a traceback that leaves the task half-collected.
        place = f" in {cwd}" if cwd is not None else ""
        raise RepoError(
            f"{what} failed: cannot run git{place}: {exc.strerror or exc}",
            hint="check that the directory still exists; was the repository moved?",
        ) from exc
    if returncode != 0:
        raise RepoError(f"{what} failed: {git_message(err)}", hint=hint)
    return out.decode("utf-8", "replace").strip()


_STILL_OURS = '[ "$PPID" = "$1" ] || exit 137; shift; exec "$@"'
"""Run once the death signal is set: hal may have died before (its pid is ``$1``)."""


def dying_with_hal() -> tuple[str, ...]:
    """The prefix that makes the git it runs die when hal dies (``kill -9``, the OOM
    killer), where a cancelled run kills it itself. For git writing the task's checkout,
    which a resume empties and clones again: a clone left running would write into the new
    one. The signal is tied to the *thread* that spawned the process, which here is the
    event loop's, awaiting git to its end (:func:`git` kills it when cancelled); a hal that
    died before the signal was set is seen after it (its parent is no longer hal), and then
    nothing runs. git's own helpers (a URL's ``git-remote-https``, ``index-pack``) end on
    their broken pipes. The static launcher's ``--dies-with`` does all this in one exec;
    without a build that takes it, ``setpriv --pdeathsig KILL`` and an ``sh``
    that checks its parent; nothing where the host has neither (``setpriv`` is
    util-linux's)."""
    from hal9999.providers.host.exec import dies_with_helper

    helper = dies_with_helper()
    if helper is not None:
        return (helper, "--dies-with", str(os.getpid()), "--")
    found = _setpriv()
    if found is None:
        return ()
    return (found, "--pdeathsig", "KILL", "--", "/bin/sh", "-c", _STILL_OURS, "hal-git",
            str(os.getpid()))  # fmt: skip


@functools.cache
def _setpriv() -> str | None:
    return shutil.which("setpriv", path="/usr/local/bin:/usr/bin:/bin")


def bounded(heap: int | None, files: int | None = None) -> list[str]:
    """The ``prlimit`` that runs a host git with at most ``heap`` bytes of heap
    (``RLIMIT_DATA``, which its children inherit: the mapped packs do not count), and no
    file it writes past ``files`` bytes (``RLIMIT_FSIZE``), or nothing.
    For git reading an agent's objects: a blob or commit that inflates to gigabytes from a few
    kilobytes of bundle is allocated whole (by ``index-pack``, ``diff --binary``)."""
    if heap is None and files is None:
        return []
    limits = [f"--data={heap}"] if heap is not None else []
    return ["prlimit", *limits, *([f"--fsize={files}"] if files is not None else []), "--"]


def git_message(stderr: bytes) -> str:
    """Git's whole relevant message on one line (its last lines, bounded; hint lines kept)."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line][-_ERROR_LINES:]
    text = "; ".join(lines) or "git exited with an error and printed nothing"
    return text if len(text) <= _ERROR_CHARS else "..." + text[-_ERROR_CHARS:]


async def resolve_source(repo: str | None, cwd: Path) -> RepoSource:
    """Turn ``--repo`` (a path, a URL, or nothing for the current directory) into a source."""
    found = _source_or_path(repo, cwd)
    if isinstance(found, RepoSource):
        return found
    top = await asyncio.to_thread(gitdir.plain_top, found)
    return RepoSource("local", top) if top else await _git_top(found)


def resolve_source_blocking(repo: str | None, cwd: Path) -> RepoSource:
    """:func:`resolve_source` for a caller already in a worker thread (the daemon's create):
    the plain layout is read right here, without an event loop and a thread of its own."""
    found = _source_or_path(repo, cwd)
    if isinstance(found, RepoSource):
        return found
    top = gitdir.plain_top(found)
    return RepoSource("local", top) if top else asyncio.run(_git_top(found))


def _source_or_path(repo: str | None, cwd: Path) -> RepoSource | Path:
    """A URL's source, or the existing directory a local ``--repo`` (or ``cwd``) names."""
    if repo == "":  # `--repo "$REPO"` with REPO unset: the task ran on the current directory
        raise RepoError(
            "--repo is empty",
            hint="pass --repo with a path to a git repository or a git URL, or leave it out "
            "to use the current repository",
        )
    if repo and re.match(_URL, repo):
        _refuse_credentials(repo)
        return RepoSource("url", repo)
    try:
        path = (cwd / repo).resolve() if repo else cwd.resolve()
        mode = _mode(path)
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte, ...
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RepoError(
            f"cannot use --repo {repo or cwd}: {reason}",
            hint="pass --repo with a path to a git repository or a git URL",
        ) from exc
    if not is_text(str(path)):  # a link's target (argv and the directory are checked)
        raise path_not_text(str(path))
    if mode is None:
        raise RepoError(
            f"repository path does not exist: {path}",
            hint="pass --repo with a path to a git repository or a git URL",
        )
    if not stat.S_ISDIR(mode):
        raise RepoError(
            f"--repo names a file, not a repository: {path}",
            hint="pass --repo with the repository's directory or a git URL",
        )
    return path


_MISSING = frozenset((errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP))
"""What ``Path.exists`` takes for "not there" (any other error is raised)."""


def _mode(path: Path) -> int | None:
    """``path``'s mode, None when it is not there: one ``stat`` where ``exists`` and
    ``is_dir`` make two."""
    try:
        return path.stat().st_mode
    except OSError as exc:
        if exc.errno not in _MISSING:
            raise
        return None


_TOKEN_USERS = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "x-access-token")
"""User names that are tokens (GitHub's and GitLab's): ``https://TOKEN@host/...``."""


def _refuse_credentials(url: str) -> None:
    """RepoError for a URL that carries a password or a token: the task's record, its events,
    the dashboard and host git's command line would all show it."""
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:  # an invalid port or bracket: git says what is wrong with it
        return
    if password is None and not (user or "").lower().startswith(_TOKEN_USERS):
        return
    shown = f"{parts.scheme}://***@{parts.hostname or ''}{parts.path}"
    raise RepoError(
        f"--repo {shown} carries credentials in its URL, which hal would keep in the task's "
        "record and show in its events",
        hint="leave them out of the URL and set up a git credential helper, e.g. "
        "`git config --global credential.helper store`, or use an ssh URL",
    )


async def _git_top(path: Path) -> RepoSource:
    """The source at ``path`` as git finds its top level (any layout :func:`gitdir.plain_top`
    leaves to git)."""
    try:
        top = await git(["rev-parse", "--show-toplevel"], cwd=path, what="finding the repository")
    except RepoError as exc:
        if "dubious ownership" in str(exc):
            raise _foreign(path, str(exc)) from None
        if await _is_bare(path):
            raise RepoError(
                f"{path} is a bare repository (it has no working tree to start from)",
                hint=f"pass --repo file://{path} to work from a clone of it, or use a checkout",
            ) from None
        raise RepoError(
            f"not a git repository: {path}",
            hint="run hal inside a git repository, or pass --repo PATH|URL",
        ) from None
    return RepoSource("local", top)


def _foreign(path: Path, message: str) -> RepoError:
    """The error for a repository git refuses as another user's (``safe.directory``), named
    by the top level git names in ``message`` (else ``path``)."""
    found = re.search(_DUBIOUS, message)
    top = found.group(1) if found else str(path)
    return RepoError(
        f"{top} is another user's repository, and git reads no other user's repository "
        "(its config could run their commands)",
        hint=f'run hal as its owner, or make it yours: `chown -R "$(id -un)" {top}`',
    )


_DUBIOUS = r"dubious ownership in repository at '([^']*)'"  # an error's; compiled on first use


def check_ref(ref: str) -> str:
    """``ref`` if it can only ever be read as a revision (never as an option of git)."""
    if not ref:
        why = "it is empty"
    elif not ref.strip():  # no branch, tag or commit is blank: it made a task that failed
        why = "it is blank"
    elif ref.startswith("-"):
        why = "a ref is a branch, tag or commit and cannot start with '-'"
    elif any(ord(c) < 0x20 or c == "\x7f" for c in ref):
        why = "a ref cannot hold control characters"
    else:
        return ref
    raise RepoError(
        f"invalid --ref {ref!r}: {why}", hint="pass --ref with an existing branch, tag or commit"
    )


async def _is_bare(path: Path) -> bool:
    try:
        return await git(["rev-parse", "--is-bare-repository"], cwd=path) == "true"
    except RepoError:
        return False


async def clone(
    source: RepoSource,
    ref: str | None,
    dest: Path,
    branch: str,
    *,
    borrow: Path | None = None,
    alternates: str | None = None,
    auth_env: Mapping[str, str] | None = None,
) -> str:
    """Clone ``source`` at ``ref`` into ``dest`` on a new ``branch``; return the base commit.

    ``auth_env`` is added to the clone's environment only (a forge's token for a URL
    source, :func:`hal9999.forges.gitauth.git_auth_env`): the checkout keeps none of it.

    With ``borrow`` (a snapshot of the local source, :mod:`hal9999.tasks.mirror`) the clone
    is ``--shared`` from it: its objects stay in the snapshot (the caller points the
    checkout's alternates at the session's link; a ``.git`` hal writes itself names
    ``alternates`` there at once when given, a file fewer). The checkout keeps no host path: a local
    source's path is removed from the remote and from the reflog the clone wrote, so the
    agent does not learn where the host keeps it.
    """
    location = source.location
    if ref is not None:
        check_ref(ref)
    # A snapshot is hal's own bare clone in a form hal knows: its checkout's .git is written
    # here and one `read-tree` fills the index and work tree (`clone --shared` would
    # run git, sh and git-upload-pack), with git's clone for anything else.
    branched, head = False, None
    if borrow is not None and ref is None:  # the .git, the branch and its commit: one hop
        written, branched, head = await asyncio.to_thread(
            gitdir.write_branched_git_dir, borrow, dest, alternates, branch
        )
    else:
        written = borrow is not None and await asyncio.to_thread(
            gitdir.write_git_dir, borrow, dest, alternates
        )
    if not written:
        if borrow is not None:
            how, origin = "--shared", str(borrow)
        else:
            how, origin = "--no-hardlinks", location
        await git(
            ["clone", "--quiet", how, *_CLONE_IDENTITY, "--", origin, str(dest)],
            what=f"cloning {location}",
            dies_with_hal=True,
            env=auth_env if source.kind == "url" else None,
        )
    # dest itself may already belong to the sandbox's own uid (hal as root); what is in it
    # was just made by this clone, so host git may work there. By its real path, the one git
    # judges: a HAL_HOME behind a symlink made every task as root "dubious ownership".
    here = ["-c", f"safe.directory={os.path.realpath(dest)}"]
    if ref:
        for candidate in (ref, f"origin/{ref}"):
            try:
                commit = await git(
                    [
                        *here,
                        "rev-parse",
                        "--verify",
                        "--quiet",
                        "--end-of-options",
                        f"{candidate}^{{commit}}",
                    ],
                    cwd=dest,
                )
            except RepoError:
                continue
            if written:  # nothing is checked out yet: HEAD is only named
                await asyncio.to_thread(gitdir.rewrite_head, dest / ".git", f"{commit}\n")
                break
            await git(
                [*here, "checkout", "--quiet", "--detach", commit],
                cwd=dest,
                what=f"checking out {ref}",
                dies_with_hal=True,
            )
            break
        else:
            raise RepoError(
                f"ref {ref!r} not found in {location}",
                hint="pass --ref with an existing branch, tag or commit",
            )
    # The clone is host git's own, no agent has run: its config and refs are read and edited
    # here rather than by three more git processes, with git as the fallback for
    # anything not in the plain form this git writes.
    git_dir = dest / ".git"
    if not branched and not await asyncio.to_thread(gitdir.new_branch, git_dir, branch, written):
        await git([*here, "checkout", "--quiet", "-b", branch], cwd=dest,
                  what="creating the branch", dies_with_hal=True)  # fmt: skip
    if written:  # the index and the work tree of HEAD, the branch
        await git([*here, "read-tree", "-u", "--reset", "HEAD"], cwd=dest, what="checking out",
                  dies_with_hal=True)  # fmt: skip
    elif source.kind == "local" and not await asyncio.to_thread(gitdir.forget_origin_url, git_dir):
        await git(
            [*here, "config", "--unset-all", "remote.origin.url"],
            cwd=dest,
            what="hiding the source",
        )
    if borrow is None and source.kind == "local":  # a snapshot is left clean already
        from hal9999.tasks.unreached import hide_remote_results

        await hide_remote_results(dest, here)
    if not head:
        head = await asyncio.to_thread(gitdir.drop_reflogs, git_dir, branch)
    if head:
        return head
    try:
        return await git([*here, "rev-parse", "HEAD"], cwd=dest)
    except RepoError:  # cloned, on its new branch: only a HEAD with no commit has none
        listed = await git([*here, "for-each-ref", "--count=2", "--format=%(refname:lstrip=3)",
                            "refs/remotes/origin"], cwd=dest)  # fmt: skip
    others = [name for name in listed.splitlines() if name != "HEAD"]
    if others:  # `git checkout --orphan`, or a HEAD naming a branch never made
        raise RepoError(
            f"the current branch of {location} has no commits yet",
            hint=f"pass --ref with a branch that has them (such as {others[0]!r}), or commit "
            "on this one first",
        )
    raise RepoError(
        f"{location} has no commits yet",
        hint="commit something first: a task starts from the repository's last commit",
    )


SUBMODULES_SCRIPT = r"""
set -eu
[ -f .gitmodules ] || exit 0
git -c core.hooksPath=/dev/null -c protocol.file.allow=never -c protocol.ext.allow=never \
  submodule update --init --recursive >&2
"""
"""Submodules are fetched inside the sandbox, over the network it has: a repository controls
``.gitmodules``, and host git would copy any host repository it names (``file`` transport is
refused here too, so a local path names nothing)."""


async def init_submodules(sandbox: Sandbox) -> str | None:
    """Check out the repository's submodules inside the sandbox; a warning when that fails
    (the task goes on; work dropped into a missing submodule fails collection loudly)."""
    command = ArgvCommand(
        argv=("sh", "-c", SUBMODULES_SCRIPT, "hal-submodules"),
        cwd=sandbox.workdir,
        env={"GIT_TERMINAL_PROMPT": "0"},
    )
    result = await sandbox.exec(command, timeout=300)
    if result.ok:
        return None
    return (
        f"the repository's submodules could not be fetched inside the sandbox "
        f"({git_message(result.stderr)}); they stay empty, and files the agent writes into "
        "them cannot be brought back"
    )
